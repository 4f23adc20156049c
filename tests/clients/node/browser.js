// Drives Debian's Chromium (never a downloaded browser) with playwright-core
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

const fs = require('fs')
const os = require('os')
const path = require('path')
const readline = require('readline')
const { chromium } = require('playwright-core')

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
// Without the background-networking flags Chromium keeps dialling Google's
// hosts, which this closed network refuses; --disable-quic keeps it on TCP.
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
]

function say(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

async function main() {
  const url = process.argv[2]
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'drengr-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
  })
  const messages = []
  const page = context.pages()[0] || (await context.newPage())
  page.on('console', (m) => messages.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => messages.push(`pageerror: ${e.message}`))
  page.on('requestfailed', (r) => messages.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`))
  // What the page fetched, as the browser saw it (preflights are not page requests in Chromium).
  const requests = []
  page.on('requestfinished', async (r) => {
    const response = await r.response().catch(() => null)
    requests.push({ method: r.method(), url: r.url(), status: response ? response.status() : null })
  })
  await page.goto(url, { waitUntil: 'load' })
  say({ loaded: true })

  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.trim()) continue
    const command = JSON.parse(line)
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
  await context.close()
  fs.rmSync(profile, { recursive: true, force: true })
  say({ closed: true, console: messages, requests })
  process.exit(0) // stdin may still be open
}

main().catch((error) => {
  say({ fatal: String(error && error.stack ? error.stack : error) })
  process.exit(1)
})
