// Debian's Chromium (never a downloaded browser) under playwright-core, for
// browser.js and debugger.js: one page in a fresh profile, its console kept,
// and the protocol both speak (JSON commands a line on stdin, JSON answers on stdout).
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

// Starts Chromium (``options`` go to launchPersistentContext, e.g. a viewport)
// and returns {context, page, messages, close}: ``messages`` collects the
// page's console lines and errors; ``close()`` ends the browser and removes the profile.
async function launch(options = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'drengr-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    ...options,
  })
  const messages = []
  const page = context.pages()[0] || (await context.newPage())
  page.on('console', (m) => messages.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => messages.push(`pageerror: ${e.message}`))
  async function close() {
    await context.close()
    fs.rmSync(profile, { recursive: true, force: true })
  }
  return { context, page, messages, close }
}

// One JSON answer a line on stdout.
function say(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

// Opens ``url`` in ``page``, says {"loaded": true}, then yields each command
// read from stdin (one JSON object a line; blank lines skipped).
async function* commands(page, url) {
  await page.goto(url, { waitUntil: 'load' })
  say({ loaded: true })
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.trim()) continue
    yield JSON.parse(line)
  }
}

// Runs a driver's main(); a failure is one {"fatal": ...} line and exit status 1.
function run(main) {
  main().catch((error) => {
    say({ fatal: String(error && error.stack ? error.stack : error) })
    process.exit(1)
  })
}

module.exports = { launch, commands, say, run }
