-- wrk script: POST Segment events with unique messageIds.
-- EVENTS (env) events per request: 1 → /v1/track single events, N > 1 → /v1/batch of N.
local events = tonumber(os.getenv("EVENTS") or "100")
local key = os.getenv("WRITE_KEY") or ""
local counter = 0

local threads = {}

local template = [[{"type":"track","event":"Order Completed","userId":"user_%d","anonymousId":"anon-%s-%d",]] ..
  [["messageId":"%s-%d-%d","timestamp":"2026-11-26T02:50:53.123Z",]] ..
  [["properties":{"revenue":42.5,"currency":"USD","order_id":"o-%d","products":[{"sku":"sku-1","price":"9.99"}],]] ..
  [["coupon":"WINTER","shipping":4.5,"tax":3.1,"discount":0,"category":"games","plan":"pro","step":3,]] ..
  [["referrer":{"type":"search","name":"google"},"email":"x@example.com","is_first_order":true}, ]] ..
  [["context":{"library":{"name":"analytics-python","version":"2.4.0"},"ip":"203.0.113.9",]] ..
  [["app":{"name":"shop","version":"3.2.1"},"os":{"name":"iOS","version":"17.4"},]] ..
  [["device":{"model":"iPhone15,2"},"locale":"en-US","timezone":"Europe/Oslo"}}]]

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 100 + thread_id)
  prefix = string.format("%d-%d", thread_id, math.random(1, 1000000000))
  auth = "Basic " .. base64(key .. ":")
end

function base64(data)
  local b = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return ((data:gsub(".", function(x)
    local r, byte = "", x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

function request()
  counter = counter + 1
  local headers = { ["Content-Type"] = "application/json", ["Authorization"] = auth }
  if events == 1 then
    local body = string.format(template, counter, prefix, counter, prefix, counter, 0, counter)
    return wrk.format("POST", "/v1/track", headers, body)
  end
  local parts = {}
  for i = 1, events do
    parts[i] = string.format(template, i, prefix, counter, prefix, counter, i, counter)
  end
  return wrk.format("POST", "/v1/batch", headers, '{"batch":[' .. table.concat(parts, ",") .. "]}")
end
