"""Live: RudderStack's browser SDKs in Debian's headless Chromium, set up as a self-hoster does.

The snippet of docs/sdks.md "RudderStack" runs as written (a
real key and port swapped in) with @rudderstack/analytics-js 3.x, and with
rudder-sdk-js 2.x as that page says (the global itself), each from
tests/clients/node, on a page of another origin with ``configUrl`` and the
data-plane URL both pointed at `drengr serve`: the SDK fetches ``GET /sourceConfig/``
(preflighted: Basic auth), then sends in its delivery mode:

* XHR (the default): one preflighted ``POST /v1/{type}`` per call;
* batch (v3 ``queueOptions.batch``): ``POST /v1/batch`` when the flush
  interval passes (an XHR cannot outlive the page: at unload v3 keeps the
  batch in localStorage for the next visit);
* beacon (``useBeacon: true``): ``navigator.sendBeacon`` to
  ``POST /beacon/v1/batch?writeKey=…`` (``text/plain``, no auth header, no
  preflight), flushed by the page unload.

Every call must land once, mapped per docs/mapping.md, and the key that sat
in URLs must appear in no line the server logged.
"""

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr import clock
from tests.clients.harness import (
    CANONICAL,
    CHROMIUM,
    NODE_DIR,
    SNIPPET_HOST,
    Browser,
    LiveServer,
    PageServer,
    assert_canonical_rows,
    live_server,
    personalise,
    require,
    require_node,
    sdk_snippet,
)

pytestmark = [pytest.mark.clients, pytest.mark.usefixtures("chromium")]

MODULES = NODE_DIR / "node_modules"
V3_CONSTRUCT = "const analytics = new rudderanalytics.RudderAnalytics()"
LIBRARIES = {
    # The npm package's UMD build with its plugins bundled (the page loads no plugin from a CDN).
    "analytics-js-v3": (
        MODULES
        / "@rudderstack"
        / "analytics-js"
        / "dist"
        / "npm"
        / "modern"
        / "bundled"
        / "umd"
        / "index.js",
        V3_CONSTRUCT,
    ),
    "rudder-sdk-js-v2": (
        MODULES / "rudder-sdk-js" / "dist" / "npm" / "index.js",
        "const analytics = rudderanalytics",
    ),
}
LOAD_OPTIONS = f"{{ configUrl: '{SNIPPET_HOST}' }}"  # the docs' load options, before personalising
MODES = {
    "xhr": "",
    "batch": "queueOptions: { batch: { enabled: true, flushInterval: 2000 } }",
    "beacon": "useBeacon: true",
}
CASES = [
    ("analytics-js-v3", "xhr"),
    ("analytics-js-v3", "batch"),
    ("analytics-js-v3", "beacon"),
    ("rudder-sdk-js-v2", "xhr"),
    ("rudder-sdk-js-v2", "beacon"),
]
# The browser SDKs have no screen call.
EXPECTED = {name: row for name, row in CANONICAL.items() if name != "screen_viewed"}
# What the SDKs add on their own: every call's context.app.version and context.os; a page's location.
LIBRARY_DIMS = {"app_version", "os"}
PAGE_DIMS = {"path", "referrer", "referring_domain", "search", "title", "url", "tab_url", "initial_referrer",
             "initial_referring_domain"}  # fmt: skip
EXTRA_DIMS = {name: LIBRARY_DIMS | (PAGE_DIMS if name == "page_viewed" else set()) for name in EXPECTED}
SINGLE_PATHS = ["/v1/alias", "/v1/group", "/v1/identify", "/v1/page", "/v1/track", "/v1/track"]


@pytest.fixture
def chromium() -> None:
    require_node()
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    for library, _ in LIBRARIES.values():
        require(library.is_file(), f"{library.name} is missing: run `npm ci` in tests/clients/node")


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in things:
        (thing.kill if isinstance(thing, Browser) else thing.close)()


def page(server: LiveServer, key: str, library: str, options: str) -> PageServer:
    """docs/sdks.md's snippet as a page on its own origin, ``library`` served there, ``options`` added to load."""
    path, construct = LIBRARIES[library]
    snippet = sdk_snippet("html", V3_CONSTRUCT)
    assert snippet.count(LOAD_OPTIONS) == 1, snippet
    if options:
        snippet = snippet.replace(LOAD_OPTIONS, LOAD_OPTIONS[:-2] + f", {options} }}")
    snippet = personalise(snippet.replace(V3_CONSTRUCT, construct), server, key)
    html = f"<!doctype html>\n<html>\n<head>\n<title>Pricing</title>\n{snippet}</head>\n<body>Pricing</body>\n</html>\n"
    return PageServer({"/": html}, {"/rudderstack/index.js": path})


def posts(server: LiveServer) -> list[tuple[str, int, int]]:
    return sorted((e["path"], e["status"], e["items"]) for e in server.requests())


@pytest.mark.parametrize("library, mode", CASES, ids=[f"{lib}-{mode}" for lib, mode in CASES])
def test_every_call_lands_once(tmp_path, opened, library, mode):
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        site = page(server, key, library, MODES[mode])
        opened.append(site)
        started = clock.now()
        # A beacon leaves from pagehide as the page closes; Chromium stays up a while for it (CI, busy
        # with the dated reruns beside the suite, once saw no beacon at all: see below too).
        browser = Browser(site.url + "/", close_grace_ms=3_000 if mode == "beacon" else 500)
        opened.append(browser)
        server.wait_for(lambda log: any(e["path"] == "/sourceConfig" for e in log), 30, "the source config")
        if mode == "xhr":
            server.wait_for(lambda log: len([e for e in log if e["method"] == "POST"]) >= 6, 30, "six calls")
        elif mode == "batch":
            server.wait_for(
                lambda log: sum(e["items"] for e in log if e["method"] == "POST") >= 6, 30, "the batch"
            )
        else:
            # The SDK set up (its beacon queue holds the calls) before the page closes, however busy
            # the machine: ready() calls back at once when it is.
            browser.eval("new Promise((done) => analytics.ready(() => done(true)))")
            time.sleep(1.0)
            assert server.requests() == [], "a beacon left before the page was closed"
        browser.close()  # pagehide / beforeunload: the beacon queue flushes
        if mode == "beacon":
            server.wait_for(lambda log: any(e["method"] == "POST" for e in log), 15, "the beacon on unload")
        server.wait_quiet(0.5)

        if mode == "xhr":
            assert posts(server) == [(path, 200, 1) for path in SINGLE_PATHS]
        else:  # every call in batches, one request unless the interval fell between the calls
            path = "/v1/batch" if mode == "batch" else "/beacon/v1/batch"
            assert {(p, status) for p, status, _items in posts(server)} == {(path, 200)}
            assert sum(items for _p, _status, items in posts(server)) == 6
        rows = assert_canonical_rows(
            server, "acme", started, expected=EXPECTED, install_id=None, extra_dims=EXTRA_DIMS
        )
        [viewed] = [row for row in rows if row["event_name"] == "page_viewed"]
        assert viewed["dims"]["url"] == site.url + "/" and viewed["dims"]["title"] == "Pricing"

        # The source config came from drengr; a beacon is never preflighted, XHRs always are.
        configs = [r for r in browser.requests if "/sourceConfig" in r["url"]]
        assert [r["status"] for r in configs] == [200], browser.requests
        assert (
            configs[0]["url"].startswith(f"{server.url}/sourceConfig/?")
            and f"writeKey={key}" in configs[0]["url"]
        )
        preflighted = {e["path"] for e in server.requests("OPTIONS") if e["status"] == 204}
        assert "/sourceConfig/" in preflighted
        assert ("/beacon/v1/batch" in preflighted) is False
        # The key sat in the URLs of the config fetch (and the beacon): no logged line has it.
        assert not [line for line in server.lines if key in line]


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_a_revoked_key_gets_no_config_and_sends_nothing(tmp_path, opened, library):
    """A bad key: one uniform 401 on /sourceConfig, no retry storm, no event sent, nothing stored."""
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        server.create_key("acme")  # the tenant keeps another, working key
        subprocess.run([sys.executable, "-m", "drengr", "keys", "revoke", key, "--db", str(server.db)],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        site = page(server, key, library, "")
        opened.append(site)
        browser = Browser(site.url + "/")
        opened.append(browser)
        server.wait_for(lambda log: any(e["path"] == "/sourceConfig" for e in log), 30, "the source config")
        server.wait_quiet(3.0)
        browser.close()
        server.wait_quiet(0.5)
        fetches = [e for e in server.access if e["method"] == "GET" and e["path"] == "/sourceConfig"]
        assert [e["status"] for e in fetches] == [401]
        assert server.requests() == [] and server.rows() == []
