"""Live: the debugger page in Debian's headless Chromium against a real `drengr serve`.

The server is `drengr serve` (waitress, a real SQLite file, 127.0.0.1) with the
read API and drop feeding wired in by create_app. Chromium is driven by
playwright-core with executablePath=/usr/bin/chromium (tests/clients/node/debugger.js): the test
types a key into the page, sends events with curl, and waits for the page to
show them. ``DRENGR_SCREENSHOT=docs/debugger.png`` also saves the screenshot
docs/reading.md shows (otherwise it goes to the test's temporary folder).
"""

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from drengr import debugger
from drengr.store import SQLiteStore
from drengr.web import Config, create_app
from tests.clients.harness import (
    CHROMIUM,
    Browser,
    LiveServer,
    live_server,
    require,
    require_node,
)

pytestmark = [pytest.mark.clients]

ROOT = Path(__file__).resolve().parents[1]
# A generous hang guard, not a speed limit (how fast rows appear is bench/'s business): a page
# that never shows what it waits for fails after this long instead of hanging the suite.
HANG_GUARD_MS = 30_000
# Counts the page's polls of /v1/events (its own fetch, wrapped), so a test can say "at the next poll".
COUNT_EVENT_POLLS = """(() => {
    window.eventPolls = 0
    const fetchNext = window.fetch
    window.fetch = (url, options) => {
        if (String(url).includes('/v1/events?')) window.eventPolls += 1
        return fetchNext(url, options)
    }
    return true
})()"""
PREFIX = "/segment-ingest"  # `drengr serve --prefix`, as docs/deploying.md's nginx example mounts it


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with serve(tmp_path) as live:
        yield live


@pytest.fixture
def prefixed_server(tmp_path: Path) -> Iterator[LiveServer]:
    with serve(tmp_path, PREFIX) as live:
        yield live


@contextlib.contextmanager
def serve(tmp_path: Path, prefix: str = "") -> Iterator[LiveServer]:
    require_node()
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    require(shutil.which("curl") is not None, "curl is not installed: apt-get install curl")
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    with live_server(tmp_path, env, prefix=prefix, cwd=ROOT) as live:
        yield live


class DebuggerPage(Browser):
    """tests/clients/node/debugger.js: harness.Browser's protocol, plus typing and screenshots."""

    SCRIPT = "debugger.js"

    def command(self, command: dict[str, Any], timeout: float = 30) -> Any:
        self._send(command)
        answer = self._next(timeout)
        assert "error" not in answer, answer["error"]
        return answer.get("result")

    def sign_in(self, key: str) -> None:
        self.command({"fill": "#key", "value": key})
        self.command({"click": "#open"})

    def wait_ms(self, condition: str, timeout_ms: int = 5_000) -> int:
        """Milliseconds until the JS ``condition`` holds in the page (fails after ``timeout_ms``)."""
        elapsed = self.eval(
            f"""(async () => {{
                const start = performance.now()
                while (!({condition})) {{
                    if (performance.now() - start > {timeout_ms}) return -1
                    await new Promise((r) => setTimeout(r, 20))
                }}
                return Math.round(performance.now() - start)
            }})()""",
            timeout=timeout_ms / 1000 + 30,
        )
        assert elapsed >= 0, (
            f"timed out waiting for {condition}; console: {self.eval('document.body.innerText')}"
        )
        return int(elapsed)

    def text(self, selector: str) -> str:
        return str(self.eval(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''"))


@pytest.fixture
def page(server: LiveServer) -> Iterator[DebuggerPage]:
    with open_page(server.url + "/debugger") as browser:
        yield browser


@pytest.fixture
def prefixed_page(prefixed_server: LiveServer) -> Iterator[DebuggerPage]:
    with open_page(prefixed_server.url + PREFIX + "/debugger") as browser:
        yield browser


@contextlib.contextmanager
def open_page(url: str) -> Iterator[DebuggerPage]:
    browser = DebuggerPage(url)
    try:
        yield browser
    finally:
        try:
            if browser.process.stdin is not None and not browser.process.stdin.closed:
                browser.close()
        finally:
            browser.kill()


def curl(
    server: LiveServer, key: str, body: Any, path: str = "/v1/batch", agent: str = "curl/drengr-test"
) -> None:
    result = subprocess.run(
        ["curl", "-sS", "-u", f"{key}:", "-A", agent, "-H", "Content-Type: application/json",
         "--data-binary", json.dumps(body), server.url + path],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0 and json.loads(result.stdout) == {"success": True}, result


def rows_named(name: str) -> str:
    return f"document.querySelector('#events tbody tr[data-event-name=\"{name}\"]')"


def test_publishable_key_is_refused(server: LiveServer, page: DebuggerPage) -> None:
    page.sign_in(server.key)
    page.wait_ms("document.getElementById('status').textContent.startsWith('Refused')")
    assert "publishable key" in page.text("#status")
    assert page.eval("document.getElementById('live').hidden") is True
    # The same refusal for a made-up secret key; the page never shows data.
    page.sign_in("drengr_sk_not_a_real_key")
    page.wait_ms("document.getElementById('status').textContent.includes('not an active secret key')")
    assert page.eval("document.querySelectorAll('#events tbody tr').length") == 0


def test_events_appear_at_the_next_poll_and_drops_show_their_reason(
    server: LiveServer, page: DebuggerPage, tmp_path: Path
) -> None:
    secret = server.create_key("default", "secret")
    curl(server, server.key, {"batch": [{"type": "track", "event": "Signed Up", "userId": "user_1"}]})
    page.eval(COUNT_EVENT_POLLS)
    page.sign_in(secret)
    page.wait_ms("!document.getElementById('live').hidden")
    assert page.eval(f"!!{rows_named('signed_up')}")  # what was there before signing in

    # Live: each event shows up at the first poll that starts after its 200 (one in flight may miss it).
    polls_until_shown = []
    for n, name in enumerate(["Checkout Started", "Order Completed", "Product Viewed"]):
        properties = {"revenue": 19.99 + n, "currency": "EUR", "sku": f"sku_{n}"}
        library = {"name": "analytics-python", "version": "2.4.0"}
        curl(server, server.key, {"batch": [{"type": "track", "event": name, "userId": f"user_{n}",
                                             "properties": properties, "context": {"library": library}}]})  # fmt: skip
        polls_before = page.eval("window.eventPolls")
        page.wait_ms(rows_named(name.lower().replace(" ", "_")), HANG_GUARD_MS)
        polls_until_shown.append(page.eval("window.eventPolls") - polls_before)
    assert all(1 <= polls <= 2 for polls in polls_until_shown), polls_until_shown
    row = page.text("#events tbody tr[data-event-name='order_completed']")
    assert "user_1" in row and "currency: EUR" in row and "revenue: 20.99" in row
    library = "#events tbody tr[data-event-name='{}'] td.library"
    assert page.text(library.format("order_completed")) == "analytics-python 2.4.0"  # the sending SDK
    assert page.text(library.format("signed_up")) == "—"  # sent without context.library

    # A dropped event: no userId, no anonymousId. The page names the reason and the keys, never values.
    curl(server, server.key, {"batch": [
        {"type": "track", "event": "Lost", "properties": {"email": "ada@example.com"}},
        {"type": "page", "userId": "user_1", "name": "Pricing", "properties": {"user_email": "ada@example.com"}},
    ]}, agent="analytics-python/2.4.0")  # fmt: skip
    page.wait_ms("document.querySelector('#drops tbody tr[data-reason=\"missing_id\"]')")
    drop = page.text("#drops tbody tr[data-reason='missing_id']")
    assert "userId and anonymousId both missing" in drop
    assert "userId, anonymousId" in drop and "analytics-python/2.4.0" in drop
    # A stored event with a PII key stripped: the reason and the key's name, never its value.
    page.wait_ms("document.querySelector('#drops tbody tr[data-reason=\"pii_key_removed\"]')")
    stripped = page.text("#drops tbody tr[data-reason='pii_key_removed']")
    assert "looks like personal data" in stripped and "user_email" in stripped
    assert "ada@example.com" not in page.eval("document.body.innerText")
    assert page.eval("document.querySelector('#drop-counts li[data-reason=\"missing_id\"]').textContent") == (
        "missing_id: 1"
    )

    # The chart has bars for what landed, and says so in words.
    page.wait_ms(
        "document.querySelector('#chart svg title')?.textContent.startsWith('5 events in the last')", 8_000
    )
    assert page.eval("document.querySelectorAll('#chart svg rect').length") >= 5

    # Accessibility basics: labelled key field, status region, table headers.
    assert page.eval("document.querySelector('label[for=key]').textContent") == "Secret key"
    assert page.eval("document.getElementById('status').getAttribute('role')") == "status"
    assert page.eval("document.querySelectorAll('#events th[scope=col]').length") == 8

    screenshot = Path(os.environ.get("DRENGR_SCREENSHOT") or tmp_path / "debugger.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.command({"screenshot": str(screenshot.resolve())})
    assert screenshot.stat().st_size > 10_000
    console = page.close()
    assert not [line for line in console if line.startswith(("pageerror", "error"))], console


def test_revoked_key_stops_the_page(server: LiveServer, page: DebuggerPage) -> None:
    secret = server.create_key("default", "secret")
    page.sign_in(secret)
    page.wait_ms("!document.getElementById('live').hidden")
    subprocess.run(
        [sys.executable, "-m", "drengr", "keys", "revoke", "--db", str(server.db), secret],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    # The server caches key look-ups for 2 s; the next poll after that is refused.
    page.wait_ms("document.getElementById('live').hidden", 8_000)
    assert page.text("#status").startswith("Refused")


# ---------------------------------------------------------------- behind `--prefix`
# The page is served at PREFIX/debugger; everything it loads and calls must be
# under PREFIX too (a call to /v1/events gets the prefix middleware's 404).
API_PATHS = {"/v1/events", "/v1/drops", "/v1/stats"}


def test_page_works_behind_a_prefix(prefixed_server: LiveServer, prefixed_page: DebuggerPage) -> None:
    server, page = prefixed_server, prefixed_page
    base = server.url + PREFIX
    secret = server.create_key("default", "secret")
    curl(server, server.key, {"batch": [{"type": "track", "event": "Signed Up", "userId": "user_1"}]},
         path=PREFIX + "/v1/batch")  # fmt: skip
    page.sign_in(secret)
    page.wait_ms("!document.getElementById('live').hidden")
    assert page.eval(f"!!{rows_named('signed_up')}")  # the first /v1/events answered

    # Live polling (/v1/events with a cursor), the drop feed (/v1/drops) and the chart (/v1/stats).
    curl(server, server.key, {"batch": [
        {"type": "track", "event": "Order Completed", "userId": "user_2"},
        {"type": "track", "event": "Lost", "properties": {"plan": "pro"}},
    ]}, path=PREFIX + "/v1/batch")  # fmt: skip
    page.wait_ms(rows_named("order_completed"))
    page.wait_ms("document.querySelector('#drops tbody tr[data-reason=\"missing_id\"]')")
    page.wait_ms(
        "document.querySelector('#chart svg title')?.textContent.startsWith('2 events in the last')", 8_000
    )
    assert not page.text("#status").startswith("Refused")

    # What the page loaded and called, as the browser saw it: all under the prefix, all 200.
    fetched = page.eval("performance.getEntriesByType('resource').map((e) => [e.name, e.responseStatus])")
    outside = [(url, status) for url, status in fetched if not url.startswith(base + "/")]
    assert not outside, outside
    failed = [(url, status) for url, status in fetched if status != 200]
    assert not failed, failed
    paths = {url.removeprefix(base).split("?")[0] for url, _ in fetched}
    assert paths >= API_PATHS | {"/debugger/app.js"}, paths

    # The server agrees: the read API was asked under the mount point and answered 200.
    reads = [e for e in server.requests("GET") if e["path"] in API_PATHS]
    assert {e["path"] for e in reads} == API_PATHS
    assert {e["status"] for e in reads} == {200}, reads
    console = page.close()
    assert not [line for line in console if line.startswith(("pageerror", "error"))], console


@pytest.mark.parametrize("page_path", ["/debugger", "/debugger/"])
def test_page_urls_resolve_under_a_prefix(tmp_path: Path, page_path: str) -> None:
    """Without a browser: the URLs the page will load and call, resolved as a browser would."""
    store = SQLiteStore(str(tmp_path / "drengr.db"))
    try:
        secret = store.create_key("acme", "secret")
        client = create_app(Config(db=str(tmp_path / "drengr.db"), prefix=PREFIX), store=store).test_client()
        page_url = "http://localhost" + PREFIX + page_path
        response = client.get(page_url)
        assert response.status_code == 200
        page = response.get_data(as_text=True)

        scripts = [urljoin(page_url, unescape(src)) for src in re.findall(r'<script src="([^"]+)"', page)]
        assert scripts == ["http://localhost" + PREFIX + "/debugger/app.js"]
        script = client.get(scripts[0])
        assert script.status_code == 200 and script.mimetype == "text/javascript"

        # app.js calls api(path) with fetch(root + path), root being <main data-root>.
        [root] = [unescape(value) for value in re.findall(r'<main id="main" data-root="([^"]*)"', page)]
        js = script.get_data(as_text=True)
        assert "fetch(root + path" in js
        calls = set(re.findall(r"api\('([^'?]+)", js))
        assert calls == API_PATHS, calls
        bearer = {"Authorization": f"Bearer {secret}"}
        for path in sorted(calls):
            url = urljoin(page_url, root + path)
            assert url.startswith("http://localhost" + PREFIX + "/"), url
            answer = client.get(url, headers=bearer)
            assert (answer.status_code, answer.mimetype) == (200, "application/json"), (url, answer.data)
            # Without the prefix the same call is the middleware's 404: the prefix is what made it work.
            assert client.get(path, headers=bearer).status_code == 404
    finally:
        store.close()


def test_the_page_is_a_template_its_files_package_data(tmp_path: Path) -> None:
    """index.html rendered with autoescaping (a mount point is text, never markup); app.js and style.css as files."""
    hostile = '/p"<b>'
    store = SQLiteStore(str(tmp_path / "drengr.db"))
    try:
        client = create_app(Config(db=str(tmp_path / "drengr.db"), prefix=hostile), store=store).test_client()
        page = client.get(hostile + "/debugger").get_data(as_text=True)
        assert '<main id="main" data-root="/p&#34;&lt;b&gt;">' in page and "<b>" not in page
        files = Path(debugger.__file__).parent
        for name, mimetype in [("app.js", "text/javascript"), ("style.css", "text/css")]:
            assert f'"/p&#34;&lt;b&gt;/debugger/{name}"' in page
            answer = client.get(hostile + "/debugger/" + name)
            assert (answer.status_code, answer.mimetype) == (200, mimetype)
            assert answer.data == (files / name).read_bytes()
            assert answer.headers["Cache-Control"] == "no-cache"
    finally:
        store.close()


def no_sideways_scroll(page: DebuggerPage) -> list[str]:
    """What is wider than its box: the page itself, or a table's scrolling region."""
    return list(
        page.eval("""[document.documentElement, ...document.querySelectorAll('.scroll, #detail')]
            .filter((node) => node.offsetParent !== null || node === document.documentElement)
            .filter((node) => node.scrollWidth > node.clientWidth + 1)
            .map((node) => (node.id || node.getAttribute('aria-labelledby') || node.tagName) +
                 ' ' + node.scrollWidth + '>' + node.clientWidth)""")
    )


def test_an_event_opens_filters_pause_local_time_and_both_widths(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open a row, filter by user, pause with "N new", local time, a y-axis of thousands, 800 and 1,400 px."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30 all year: local time differs from UTC
    secret = server.create_key("default", "secret")
    order = {"type": "track", "event": "Order Completed", "userId": "user_7",
             "properties": {"revenue": 1234.5, "currency": "EUR", "email": "ada@example.com",
                            "note": "a long note " * 12},
             "context": {"library": {"name": "analytics-python", "version": "2.4.0"}}}  # fmt: skip
    curl(server, server.key, {"batch": [order, {"type": "track", "event": "Signed Up", "userId": "user_8"}]})
    with open_page(server.url + "/debugger") as page:
        page.sign_in(secret)
        page.wait_ms("!document.getElementById('live').hidden")
        page.wait_ms("document.querySelector('#drops tbody tr[data-reason=\"pii_key_removed\"]')")

        # Open the event: its stored row as a table, and what was left out of it and why.
        page.command({"click": "#events tbody tr[data-event-name='order_completed'] button.open"})
        page.wait_ms("!document.getElementById('detail').hidden")
        fields = page.text("#detail-fields")
        assert "User id (external_id)\tuser_7" in fields and "Library\tanalytics-python 2.4.0" in fields
        assert "currency\tEUR" in page.text("#detail-dims")
        assert "revenue\t1,234.5" in page.text("#detail-measures")
        stripped = page.text("#detail-stripped")
        assert "email (pii_key_removed:" in stripped and "ada@example.com" not in page.eval(
            "document.body.innerText"
        )
        assert page.eval("document.activeElement.id") == "detail"

        # Filter by user id: the newest page and the polls after it carry only that user's events.
        page.command({"fill": "#f-user", "value": "user_8"})
        page.command({"click": "#apply"})
        page.wait_ms(
            "document.querySelectorAll('#events tbody tr').length === 1 && " + rows_named("signed_up")
        )
        curl(server, server.key, {"batch": [{"type": "track", "event": "Other User", "userId": "user_9"},
                                            {"type": "track", "event": "Came Back", "userId": "user_8"}]})  # fmt: skip
        page.wait_ms(rows_named("came_back"), HANG_GUARD_MS)
        assert not page.eval(f"!!{rows_named('other_user')}")
        page.command({"fill": "#f-user", "value": ""})
        page.command({"click": "#apply"})
        page.wait_ms(rows_named("other_user"))

        # Pause: new events are counted, not shown, until Resume.
        page.command({"click": "#pause"})
        curl(
            server,
            server.key,
            {"batch": [{"type": "track", "event": f"Paused {n}", "userId": "u"} for n in range(3)]},
        )
        page.wait_ms("document.getElementById('pending').textContent === '3 new'", HANG_GUARD_MS)
        assert not page.eval(f"!!{rows_named('paused_0')}")
        page.command({"click": "#pause"})
        page.wait_ms(rows_named("paused_2"))
        assert page.text("#pending") == ""

        # Local time: the browser's zone (+05:30 here), in the table and its caption.
        utc = page.eval("document.querySelector('#events tbody tr button.open').textContent")
        page.eval(
            "(() => { const s = document.getElementById('tz'); s.value = 'local'; s.dispatchEvent(new Event('change')); return true })()"
        )
        local = page.eval("document.querySelector('#events tbody tr button.open').textContent")
        hours, minutes = (int(part) for part in utc[:5].split(":"))
        shifted = (hours * 60 + minutes + 330) % 1440
        assert local[:5] == f"{shifted // 60:02d}:{shifted % 60:02d}" and local[5:] == utc[5:]
        assert "local (Asia/" in page.text("#events caption")

        # 12,000 events in a minute: the y-axis says 12,0xx with separators, and fits in the chart.
        for b in range(6):  # too large for curl's command line: sent from here
            bulk = [
                {"type": "track", "event": "Bulk", "userId": "u", "messageId": f"bulk-{b}-{n}"}
                for n in range(2_000)
            ]
            body = json.dumps({"batch": bulk}).encode()
            auth = base64.b64encode(f"{server.key}:".encode()).decode()
            request = urllib.request.Request(server.url + "/v1/batch", data=body, headers={
                "Authorization": "Basic " + auth, "Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=30) as response:
                assert json.loads(response.read()) == {"success": True}
        page.wait_ms(
            "/^1[0-9],[0-9]{3}$/.test(document.querySelector('#chart .y-peak')?.textContent)", HANG_GUARD_MS
        )
        assert page.eval("document.querySelector('#chart .y-peak').getBBox().x") >= 0

        # Readable at 800 and 1,400 px: nothing scrolls sideways, the drops table's last column included.
        page.command({"fill": "#f-user", "value": "user_7"})
        page.command({"click": "#apply"})
        page.wait_ms("document.querySelectorAll('#events tbody tr').length === 1")
        page.command({"click": "#events tbody tr[data-event-name='order_completed'] button.open"})
        for width in (800, 1400):
            page.command({"viewport": [width, 900]})
            assert no_sideways_scroll(page) == [], width
            shot = Path(os.environ.get("DRENGR_SCREENSHOT_DIR") or tmp_path) / f"debugger-{width}.png"
            page.command({"screenshot": str(shot.resolve())})
            assert shot.stat().st_size > 10_000
        console = page.close()
        assert not [line for line in console if line.startswith(("pageerror", "error"))], console
