// Sends ONE track event ("Order Completed") through a real Node client and
// waits until the library has given up or delivered, for the wrong-key and
// store-outage tests in tests/test_clients_node.py.
//
//   DRENGR_HOST=http://127.0.0.1:PORT DRENGR_KEY=drengr_pk_… MESSAGE_ID=m-1 node send-one.js CLIENT
//
// CLIENT is segment-node | rudder-node | jitsu | jitsu-s2s. Prints one JSON
// line: {"statuses": [HTTP statuses the library saw, where it tells], "errors": [what it reported]}.
// The server's access log, not this, is what the tests count.
'use strict'

const host = process.env.DRENGR_HOST
const key = process.env.DRENGR_KEY
const messageId = process.env.MESSAGE_ID
const event = {
  userId: 'user_123',
  messageId,
  event: 'Order Completed',
  properties: { order_id: 'o_2', revenue: '19.99', currency: 'EUR' },
}
const statuses = []
const errors = []

async function segmentNode() {
  const { Analytics } = require('@segment/analytics-node')
  // The store's busy timeout is 10 s (not configurable yet) and this library's
  // default request timeout is also 10 s: without more headroom it would abort
  // just as the server answers 502, and count a timeout instead.
  const analytics = new Analytics({ writeKey: key, host, httpRequestTimeout: 30000, maxRetries: 3 })
  analytics.on('http_response', (r) => statuses.push(r.status))
  analytics.on('error', (e) => errors.push(String(e.reason || e.code || e)))
  analytics.track(event)
  await analytics.closeAndFlush({ timeout: 60000 })
}

async function rudderNode() {
  const Analytics = require('@rudderstack/rudder-sdk-node')
  // (axios-retry replays responses through interceptors, so the statuses it
  // saw are not collected here: the server's access log counts them.)
  const client = new Analytics(key, { dataPlaneUrl: host, logLevel: 'error' })
  client.track(event)
  try {
    await client.flush()
  } catch (e) {
    errors.push(String(e.message || e))
  }
}

async function jitsu(s2s) {
  const { jitsuAnalytics } = require('@jitsu/js')
  const analytics = jitsuAnalytics({
    host,
    writeKey: key,
    s2s,
    errorPolicy: (message) => errors.push(message),
    fetch: async (url, init) => {
      const response = await fetch(url, init)
      statuses.push(response.status)
      return response
    },
  })
  await analytics.track(event.event, event.properties, { userId: event.userId })
}

const clients = {
  'segment-node': segmentNode,
  'rudder-node': rudderNode,
  jitsu: () => jitsu(false),
  'jitsu-s2s': () => jitsu(true),
}

clients[process.argv[2]]()
  .then(() => {
    process.stdout.write(JSON.stringify({ statuses, errors }) + '\n')
    process.exit(0)
  })
  .catch((e) => {
    process.stdout.write(JSON.stringify({ statuses, errors: [...errors, `threw: ${e && e.message}`] }) + '\n')
    process.exit(0)
  })
