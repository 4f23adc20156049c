#!/bin/sh
# Regenerates the debugger screenshots in docs/ (docs/reading.md shows them): the live Chromium
# tests of tests/test_debugger.py save them as they run. Needs Chromium and Node, as .ci/run installs.
set -eu
cd "$(git rev-parse --show-toplevel)"
DRENGR_SCREENSHOT=docs/debugger.png DRENGR_SCREENSHOT_DIR=docs PYTHONPATH=src \
    python -m pytest -p no:cacheprovider --benchmark-disable -q tests/test_debugger.py \
    -k "test_events_appear_at_the_next_poll or test_an_event_opens"
