// Drives Debian's Chromium (never a downloaded browser; see chromium.js) with playwright-core
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
//   {"viewport": [width, height]}             -> {"result": null}  (resizes the page)
//   {"close": true}                           -> {"closed": true, "console": [...]}
'use strict'

const { launch, commands, say, run } = require('./chromium')

async function main() {
  const url = process.argv[2]
  const { page, messages, close } = await launch({ viewport: { width: 1280, height: 900 } })
  for await (const command of commands(page, url)) {
    if (command.close) break
    try {
      if (command.eval !== undefined) say({ result: await page.evaluate(command.eval) })
      else if (command.fill !== undefined) say({ result: await page.fill(command.fill, command.value) })
      else if (command.click !== undefined) say({ result: await page.click(command.click) })
      else if (command.viewport !== undefined) {
        await page.setViewportSize({ width: command.viewport[0], height: command.viewport[1] })
        say({ result: null })
      }
      else if (command.screenshot !== undefined) {
        await page.screenshot({ path: command.screenshot, fullPage: true })
        say({ result: command.screenshot })
      } else say({ error: 'unknown command' })
    } catch (error) {
      say({ error: String(error && error.message ? error.message : error) })
    }
  }
  await close()
  say({ closed: true, console: messages })
  process.exit(0)
}

run(main)
