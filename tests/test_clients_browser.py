"""Live: analytics.js 2.0 (@segment/analytics-next) in Debian's headless Chromium against `drengr serve`.

The page is served from its own 127.0.0.1 port (another origin: every ingest
request is a real cross-origin request with its preflight), loads the
library's UMD build from that site, and loads analytics-next with `cdnURL`
pointing at drengr, so its settings come from GET /v1/projects/{key}/settings
(no inline settings). Chromium is driven by playwright-core with
executablePath=/usr/bin/chromium (tests/clients/node/browser.js); no browser
is ever downloaded.
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
    BUSY_TIMEOUT_ENV,
    CHROMIUM,
    Browser,
    LiveServer,
    PageServer,
    assert_canonical_rows,
    live_server,
    personalise,
    require,
    require_node,
    sdk_snippet,
    store_outage,
)

pytestmark = [pytest.mark.clients, pytest.mark.usefixtures("chromium")]

PAGE_DIMS = {"path", "referrer", "search", "title", "url"}  # analytics-next adds these to every page call
PREFLIGHT_PATHS = {"/v1/i", "/v1/t", "/v1/p", "/v1/s", "/v1/g", "/v1/a"}


@pytest.fixture
def chromium() -> None:
    require_node()
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")


def posts(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Event deliveries: POSTs, less analytics-next's sampled /v1/m metrics."""
    return [e for e in log if e["method"] == "POST" and e["path"] != "/v1/m"]


def statuses(server: LiveServer) -> list[int]:
    return [e["status"] for e in posts(server.requests())]


def page(body_html: str, script: str = "") -> str:
    return (
        "<!doctype html>\n<html>\n<head>\n<title>Pricing</title>\n"
        f"{body_html}\n<script>\n{script}\n</script>\n</head>\n<body>Pricing</body>\n</html>\n"
    )


@pytest.fixture
def site() -> Iterator[PageServer]:
    pages = PageServer({})
    yield pages
    pages.close()


@pytest.fixture
def browser_pages() -> Iterator[list[Browser]]:
    opened: list[Browser] = []
    yield opened
    for browser in opened:
        browser.kill()


def open_sdk_page(server: LiveServer, site: PageServer, key: str, opened: list[Browser]) -> Browser:
    """The analytics-next snippet of docs/sdks.md, verbatim, as a page on the site's origin; wait for its 7 calls."""
    site.pages["/"] = page(personalise(sdk_snippet("html", "AnalyticsBrowser.load"), server, key))
    browser = Browser(site.url + "/")
    opened.append(browser)
    server.wait_for(lambda log: len(posts(log)) >= 7, 30, "the page's 7 calls")
    return browser


def revoke(server: LiveServer, key: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "drengr", "keys", "revoke", key, "--db", str(server.db)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def test_sdk_page_lands_every_call_once_across_origins(tmp_path, site, browser_pages):
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        started = clock.now()
        browser = open_sdk_page(server, site, key, browser_pages)
        browser.close()
        server.wait_quiet(0.3)
        rows = assert_canonical_rows(
            server, "acme", started, install_id=None, extra_dims={"page_viewed": PAGE_DIMS}
        )
        assert site.url != server.url  # two origins: the page's and drengr's
        [viewed] = [row for row in rows if row["event_name"] == "page_viewed"]
        assert viewed["dims"]["url"] == site.url + "/" and viewed["dims"]["title"] == "Pricing"
        assert all(row["event_id"].startswith("ajs-next-") for row in rows)
        # Settings came from drengr, and every ingest path was preflighted (CORS really exercised).
        settings = [r for r in browser.requests if r["url"] == f"{server.url}/v1/projects/{key}/settings"]
        assert [r["status"] for r in settings] == [200], browser.requests
        preflights = {e["path"] for e in server.requests("OPTIONS") if e["status"] == 204}
        assert preflights >= PREFLIGHT_PATHS
        assert {e["path"] for e in server.requests()} <= PREFLIGHT_PATHS | {"/v1/m"}
        errors = [line for line in browser.console if line.startswith(("error", "pageerror"))]
        assert not errors, browser.console


def test_batching_mode_sends_one_v1_b_when_the_page_is_hidden(tmp_path, site, browser_pages):
    """deliveryStrategy batching holds events (size 10, 5 s); closing the page flushes them with keepalive."""
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        load = personalise(sdk_snippet("js", "deliveryStrategy"), server, key)
        html = sdk_snippet("html", "AnalyticsBrowser.load")
        calls = [line.strip() for line in html.splitlines() if line.strip().startswith("analytics.")]
        sent = "window.sent = Promise.all([\n  " + ",\n  ".join(calls) + ",\n])"
        site.pages["/"] = page('<script src="/analytics-next/index.js"></script>', load + "\n" + sent)
        started = clock.now()
        browser = Browser(site.url + "/")
        browser_pages.append(browser)
        assert browser.eval("window.sent.then(() => 'queued')") == "queued"
        time.sleep(0.5)
        assert posts(server.requests()) == []  # still held in the batch
        browser.close()  # pagehide: analytics-next flushes the batch
        server.wait_for(lambda log: any(e["method"] == "POST" for e in log), 10, "the batch")
        server.wait_quiet(0.3)
        assert [(e["path"], e["status"], e["items"]) for e in posts(server.requests())] == [("/v1/b", 200, 7)]
        assert_canonical_rows(server, "acme", started, install_id=None, extra_dims={"page_viewed": PAGE_DIMS})


def test_revoked_key_gets_one_401_and_no_retry(tmp_path, site, browser_pages):
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        browser = open_sdk_page(server, site, key, browser_pages)
        revoke(server, key)
        time.sleep(2.2)  # the server caches key look-ups for 2 s
        browser.eval("analytics.track('After Revoke', { n: 1 }).then(() => true)")
        server.wait_for(lambda log: len(posts(log)) >= 8, 15, "the 401")
        server.wait_quiet(3.0)  # analytics-next's first retry would come within ~1 s
        assert statuses(server)[7:] == [401]
        assert len(server.rows()) == 7
        browser.close()


def test_store_outage_502_is_retried_and_stored_once(tmp_path, site, browser_pages):
    with live_server(tmp_path, BUSY_TIMEOUT_ENV) as server:
        key = server.create_key("acme")
        browser = open_sdk_page(server, site, key, browser_pages)
        with store_outage(server.db):
            browser.eval(
                "void analytics.track('Order Completed', { order_id: 'o_2', revenue: '19.99', currency: 'EUR' })"
            )
            server.wait_for(lambda log: len(posts(log)) >= 8, 40, "the first attempt")
            assert statuses(server)[7:] == [502]  # the store gave up on the lock
        server.wait_for(lambda log: posts(log)[-1]["status"] == 200, 30, "the retry")
        server.wait_quiet(1.5)
        answers = statuses(server)[7:]
        assert answers[0] == 502 and answers[-1] == 200 and set(answers) == {200, 502}, answers
        orders = [row for row in server.rows() if row["dims"].get("order_id") == "o_2"]
        assert len(orders) == 1 and orders[0]["measures"] == {"revenue": 19.99}
        assert orders[0]["tenant_id"] == "acme"
        browser.close()
