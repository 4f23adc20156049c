// Drives Debian's Chromium (never a downloaded browser) with playwright-core
// for tests/test_debugger.py: browser.js's protocol plus real typing and a screenshot.
//
//   node debugger.js URL
//
// Opens URL (viewport 1280×900), says {"loaded": true}, then answers one JSON
// line per command read from stdin:
//   {"eval": "JS expression"}                 -> {"result": <awaited value>} or {"error": "..."}
//   {"fill": "#selector", "value": "text"}    -> {"result": null}  (types into the field)
//   {"click": "#selector"}                    -> {"result": null}
//   {"screenshot": "/path.png"}               -> {"result": "/path.png"}  (the full page)
//   {"close": true}                           -> {"closed": true, "console": [...]}
'use strict'

const fs = require('fs')
const os = require('os')
const path = require('path')
const readline = require('readline')
const { chromium } = require('playwright-core')

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
// As browser.js: without the background-networking flags Chromium keeps dialling Google's hosts.
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
    viewport: { width: 1280, height: 900 },
  })
  const messages = []
  const page = context.pages()[0] || (await context.newPage())
  page.on('console', (m) => messages.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => messages.push(`pageerror: ${e.message}`))
  await page.goto(url, { waitUntil: 'load' })
  say({ loaded: true })

  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.trim()) continue
    const command = JSON.parse(line)
    if (command.close) break
    try {
      if (command.eval !== undefined) say({ result: await page.evaluate(command.eval) })
      else if (command.fill !== undefined) say({ result: await page.fill(command.fill, command.value) })
      else if (command.click !== undefined) say({ result: await page.click(command.click) })
      else if (command.screenshot !== undefined) {
        await page.screenshot({ path: command.screenshot, fullPage: true })
        say({ result: command.screenshot })
      } else say({ error: 'unknown command' })
    } catch (error) {
      say({ error: String(error && error.message ? error.message : error) })
    }
  }
  await context.close()
  fs.rmSync(profile, { recursive: true, force: true })
  say({ closed: true, console: messages })
  process.exit(0)
}

main().catch((error) => {
  say({ fatal: String(error && error.stack ? error.stack : error) })
  process.exit(1)
})
