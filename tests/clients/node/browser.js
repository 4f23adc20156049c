// Drives Debian's Chromium (never a downloaded browser; see chromium.js) with playwright-core
// for tests/test_clients_browser.py.
//
//   node browser.js URL
//
// Opens URL in a fresh profile, then reads commands from stdin, one JSON
// object a line, and answers each with one JSON line on stdout:
//   {"eval": "JS expression"}  -> {"result": <awaited value>} or {"error": "..."}
//   {"close": true}            -> closes the page (so `pagehide` fires and
//                                 analytics-next flushes its batch), then the
//                                 browser; prints {"closed": true, "console": [...],
//                                 "requests": [{method, url, status}, ...]}
// The page's console messages and failed requests are collected so a
// failing test can show what the library said.
'use strict'

const { launch, commands, say, run } = require('./chromium')

async function main() {
  const url = process.argv[2]
  const { page, messages, close } = await launch()
  page.on('requestfailed', (r) => messages.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`))
  // What the page fetched, as the browser saw it (preflights are not page requests in Chromium).
  // A status is taken from the `response` event, which comes before `requestfinished`: asking the
  // finished request for its response instead answered null now and then.
  const requests = []
  const statuses = new Map()
  page.on('response', (response) => statuses.set(response.request(), response.status()))
  page.on('requestfinished', (r) => {
    requests.push({ method: r.method(), url: r.url(), status: statuses.has(r) ? statuses.get(r) : null })
  })
  for await (const command of commands(page, url)) {
    if (command.eval !== undefined) {
      try {
        say({ result: await page.evaluate(command.eval) })
      } catch (error) {
        say({ error: String(error && error.message ? error.message : error) })
      }
    } else if (command.close) {
      break
    }
  }
  await page.close({ runBeforeUnload: true })
  // Give a keepalive request sent from `pagehide` a moment to leave the browser.
  await new Promise((resolve) => setTimeout(resolve, Number(process.env.CLOSE_GRACE_MS || 500)))
  await close()
  say({ closed: true, console: messages, requests })
  process.exit(0) // stdin may still be open
}

run(main)
