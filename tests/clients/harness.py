"""What the live client suite shares: a real `drengr serve`, its access log, the rows, a store outage.

The server is the real thing (waitress, a real SQLite file, 127.0.0.1, a free
port), started by tests/support/realserver.py's ``launch`` like every other real
server, with `--log-level info` so every request leaves one JSON line from
logger ``drengr.access`` on stderr; a thread reads them, so the tests can count
what a library sent (retries included) from the server's side. Nothing here
talks to anything but 127.0.0.1.
"""

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drengr import clock
from tests.support.app import read_rows
from tests.support.realserver import Server, launch

ROOT = Path(__file__).parents[2]
SDKS_PAGE = ROOT / "docs" / "sdks.md"
NODE_DIR = Path(__file__).parent / "node"
CHROMIUM = "/usr/bin/chromium"

# The placeholders the snippets of docs/sdks.md use; the tests
# swap in the live server's URL and a fresh key and run the snippet verbatim.
SNIPPET_KEY = "drengr_pk_…"
SNIPPET_HOST = "http://127.0.0.1:8080"

# docs/mapping.md "Storage and durability": the store gives up on a locked database
# after its busy timeout and the request gets 502. A short one (`drengr serve` reads DRENGR_BUSY_TIMEOUT_MS, as
# --busy-timeout-ms) keeps the outage tests fast.
BUSY_TIMEOUT_ENV = {"DRENGR_BUSY_TIMEOUT_MS": "1500"}


# The columns of docs/mapping.md "The semantic_events table" (names and meanings fixed there).


def require(condition: bool, why: str) -> None:
    """Skip when a client's runtime is missing locally; in CI (.ci/run installs it) that is a failure."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (.ci/run should have installed it)")
    pytest.skip(why)


def require_node() -> None:
    require(shutil.which("node") is not None, "Node.js is not installed: apt-get install nodejs npm")
    require(
        (NODE_DIR / "node_modules").is_dir(), "the Node SDKs are not installed: npm ci in tests/clients/node"
    )


@dataclass
class LiveServer(Server):
    """A `drengr serve` on a new database; its access log, read as it comes, in ``access``.

    ``key`` is the `default` tenant's publishable key, printed on a new database;
    ``lines`` holds every stderr line, for failure messages.
    """

    access: list[dict[str, Any]] = field(default_factory=list)  # access-log lines, in order

    def _stderr_line(self, line: str) -> None:
        with self._changed:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and "status" in entry:
                        self.access.append(entry)
            super()._stderr_line(line)

    def requests(self, method: str | None = "POST") -> list[dict[str, Any]]:
        """Access-log lines so far (POSTs by default: preflights and GETs are not deliveries)."""
        with self._changed:
            return [e for e in self.access if method is None or e["method"] == method]

    def statuses(self, method: str | None = "POST") -> list[int]:
        return [e["status"] for e in self.requests(method)]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str) -> None:
        """Block until ``predicate(access log)`` holds; fail with the server's stderr if it never does."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.access):
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"timed out waiting for {what}; server stderr:\n{tail}")
                self._changed.wait(min(left, 0.5))

    def wait_quiet(self, seconds: float) -> None:
        """Wait until no request has arrived for ``seconds`` (a library still retrying would show)."""
        while True:
            with self._changed:
                count = len(self.access)
            time.sleep(seconds)
            with self._changed:
                if len(self.access) == count:
                    return

    def create_key(self, tenant: str, kind: str = "publishable") -> str:
        """`drengr keys create`, the documented way, against the running server's database."""
        result = subprocess.run(
            [sys.executable, "-m", "drengr", "keys", "create", "--db", str(self.db), "--tenant", tenant,
             "--kind", kind],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return result.stdout.strip()

    def rows(self) -> list[dict[str, Any]]:
        return read_rows(self.db)


@contextlib.contextmanager
def live_server(
    tmp_path: Path, env: dict[str, str] | None = None, *, prefix: str = "", cwd: Path | None = None
) -> Iterator[LiveServer]:
    """`drengr serve --log-level info` on a new database in ``tmp_path``; stopped (by its PID) after.

    ``env`` is added to the environment; ``prefix`` is `--prefix` (``url`` stays the root).
    """
    server = launch(
        tmp_path / "live.db", None, log_level="info", prefix=prefix, env=env, cwd=cwd,
        pipe_stderr=True, server_class=LiveServer,
    )  # fmt: skip
    assert isinstance(server, LiveServer)
    try:
        yield server
    finally:
        server.stop()


class StoreOutage:
    """Another process holds SQLite's write lock, so the server's writes fail (502) for real.

    ``BEGIN EXCLUSIVE`` from a second connection is what a backup tool or a
    long migration does; the store waits out its busy timeout, gives up, and
    the request gets ``502 Ingest failed``. ``end()`` releases the lock so a
    retry that is waiting on it (or comes later) lands.
    """

    def __init__(self, db: Path) -> None:
        self._conn: sqlite3.Connection | None = sqlite3.connect(db, isolation_level=None, timeout=30)
        self._conn.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


@contextlib.contextmanager
def store_outage(db: Path) -> Iterator[StoreOutage]:
    outage = StoreOutage(db)
    try:
        yield outage
    finally:
        outage.end()


def first_502_then_200(log: list[dict[str, Any]]) -> bool:
    statuses = [e["status"] for e in log if e["method"] == "POST"]
    return 502 in statuses and 200 in statuses[statuses.index(502) :]


def sdk_snippet(language: str, containing: str) -> str:
    """The one ```language block of docs/sdks.md that contains ``containing``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", SDKS_PAGE.read_text(), re.S)
    matches = [block for block in blocks if containing in block]
    assert len(matches) == 1, f"expected one ```{language} block with {containing!r}, found {len(matches)}"
    return matches[0]


def personalise(snippet: str, server: LiveServer, key: str) -> str:
    assert SNIPPET_KEY in snippet and SNIPPET_HOST in snippet, snippet
    return snippet.replace(SNIPPET_KEY, key).replace(SNIPPET_HOST, server.url)


def start_node(script: Path | str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a node script from tests/clients/node, with its node_modules; see finish_node.

    ``script`` as a str is code (e.g. a docs/sdks.md snippet): it runs from a temporary
    file, finding the suite's packages through NODE_PATH, as `require` would in a project.
    """
    if isinstance(script, str):
        fd, name = tempfile.mkstemp(prefix="drengr-snippet-", suffix=".js")
        with os.fdopen(fd, "w") as file:
            file.write(script)
        path = Path(name)
    else:
        path = script
    process = subprocess.Popen(
        ["node", str(path), *args], cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules"), **(env or {})},
    )  # fmt: skip
    process.snippet = path if isinstance(script, str) else None  # type: ignore[attr-defined]
    return process


def finish_node(process: subprocess.Popen[str], timeout: float = 60) -> Any:
    """Wait for the script to exit 0 and return its last stdout line, parsed as JSON when it is."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"node ran over {timeout} s:\n{out}\n{err}") from None
    finally:
        if getattr(process, "snippet", None):
            process.snippet.unlink(missing_ok=True)  # type: ignore[attr-defined]
    assert process.returncode == 0, f"node failed ({process.returncode}):\n{out}\n{err}"
    last = out.strip().splitlines()[-1] if out.strip() else "null"
    try:
        return json.loads(last)
    except ValueError:
        return last


def run_node(script: Path | str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    return finish_node(start_node(script, *args, env=env), timeout)


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (e.g. a docs/sdks.md snippet) in a fresh interpreter: the SDKs keep module-level state."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"snippet failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


ANALYTICS_NEXT_UMD = NODE_DIR / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"


class PageServer:
    """A static site on its own 127.0.0.1 port (another origin than drengr's, so CORS is real).

    ``/`` and any other path in ``pages`` answer that HTML; a path in ``files``
    answers that file as JavaScript (a library from node_modules);
    ``/analytics-next/…`` serves analytics-next's UMD build from node_modules,
    as a site that self-hosts the library would.
    """

    def __init__(self, pages: dict[str, str], files: dict[str, Path] | None = None) -> None:
        import http.server

        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/favicon.ico":
                    self._send(204, "image/x-icon", b"")
                elif path in site.pages:
                    self._send(200, "text/html; charset=utf-8", site.pages[path].encode())
                elif path in site.files:
                    self._send(200, "application/javascript", site.files[path].read_bytes())
                elif path.startswith("/analytics-next/") and "/.." not in path:
                    file = ANALYTICS_NEXT_UMD / path.removeprefix("/analytics-next/")
                    if file.is_file():
                        self._send(200, "application/javascript", file.read_bytes())
                    else:
                        self._send(404, "text/plain", b"not found")
                else:
                    self._send(404, "text/plain", b"not found")
                site.requested.append(path)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.pages = pages
        self.files = dict(files or {})
        self.requested: list[str] = []
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="page-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class Browser:
    """tests/clients/node/browser.js: Debian's Chromium under playwright-core, one page, driven over stdin."""

    SCRIPT = "browser.js"  # a driver in tests/clients/node that speaks this protocol

    def __init__(self, url: str, close_grace_ms: int = 500) -> None:
        """``close_grace_ms``: how long Chromium stays up once the page is closed, for what the page
        sent from ``pagehide`` (a beacon) to leave it."""
        import queue

        self._lines: queue.Queue[str | None] = queue.Queue()
        env = {**os.environ, "CHROMIUM": CHROMIUM, "CLOSE_GRACE_MS": str(close_grace_ms)}
        self.process = subprocess.Popen(
            ["node", self.SCRIPT, url], cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        self.console: list[str] = []
        self.requests: list[dict[str, Any]] = []
        first = self._next(60)
        if first.get("loaded") is not True:
            self.kill()
            raise AssertionError(f"browser did not load {url}: {first}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        import queue

        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the browser driver said nothing in time") from None
        if line is None:
            err = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"the browser driver ended: {err}")
        answer = json.loads(line)
        if "fatal" in answer:
            raise AssertionError(answer["fatal"])
        return answer

    def _send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def eval(self, expression: str, timeout: float = 30) -> Any:
        """Evaluate ``expression`` in the page (awaiting a promise) and return its JSON value."""
        self._send({"eval": expression})
        answer = self._next(timeout)
        if "error" in answer:
            raise AssertionError(f"in the page: {answer['error']}")
        return answer.get("result")  # undefined has no JSON

    def close(self) -> list[str]:
        """Close the page (pagehide fires), then Chromium; return the page's console lines."""
        self._send({"close": True})
        answer = self._next(60)
        self.console = answer.get("console", [])
        self.requests = answer.get("requests", [])
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        return self.console

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# What the docs/sdks.md snippets send, as docs/mapping.md "Event mapping" must store it: event_name →
# (event_type, dims, measures). Every snippet makes the same calls (where the
# library has them): identify with an email (a PII key: dropped), a plain
# track, an ecommerce track with string prices, page, screen, group, alias.
CANONICAL: dict[str, tuple[str, dict[str, str], dict[str, float]]] = {
    "identify": ("identify", {"plan": "pro"}, {"logins": 5}),
    "article_read": ("track", {"_source_event_name": "Article Read", "section": "news"}, {"words": 1200}),
    "order_completed": (
        "track",
        {"_source_event_name": "Order Completed", "order_id": "o_1", "currency": "USD"},
        {"revenue": 9.99, "price": 9.99, "quantity": 2},  # "9.99" coerced: an ecommerce event
    ),
    "page_viewed": ("page", {"name": "Pricing", "plan": "pro"}, {}),
    "screen_viewed": ("screen", {"name": "Home", "tab": "feed"}, {}),
    "group": ("group", {"group_id": "acme_inc", "plan": "enterprise"}, {"seats": 20}),
    "alias": ("alias", {"previous_id": "anon_42"}, {}),
}


def utc_ms(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def assert_canonical_rows(
    server: LiveServer,
    tenant: str,
    started: float,
    *,
    expected: dict[str, tuple[str, dict[str, str], dict[str, float]]] | None = None,
    install_id: str | None = "user_123",
    extra_dims: dict[str, set[str]] | None = None,
) -> list[dict[str, Any]]:
    """The rows are exactly the snippet's calls, mapped per docs/mapping.md, for ``tenant``, each stored once.

    ``install_id`` None means "the library's own anonymousId": one non-empty
    value shared by every row. ``extra_dims`` names dims a library adds on its
    own (analytics-next's page url, path, …), allowed beside the expected ones.
    """
    expected = CANONICAL if expected is None else expected
    finished = clock.now()
    rows = server.rows()
    by_name = {row["event_name"]: row for row in rows}
    assert sorted(row["event_name"] for row in rows) == sorted(expected), rows
    assert len({row["event_id"] for row in rows}) == len(rows), "an event_id was stored twice"
    installs = {row["install_id"] for row in rows}
    if install_id is None:
        assert len(installs) == 1 and "" not in installs and "user_123" not in installs, installs
    else:
        assert installs == {install_id}
    window = (utc_ms(started - 2), utc_ms(finished + 1))
    for name, (event_type, dims, measures) in expected.items():
        row = by_name[name]
        assert row["tenant_id"] == tenant
        assert row["event_type"] == event_type
        assert row["external_id"] == "user_123"
        assert row["measures"] == measures, (name, row)
        assert row["dims"].items() >= dims.items(), (name, row)
        allowed = set(dims) | (extra_dims or {}).get(name, set())
        assert set(row["dims"]) <= allowed, (name, row)
        assert window[0] <= row["occurred_at"] <= window[1], (name, row["occurred_at"], window)
        assert window[0] <= row["received_at"] <= window[1], (name, row["received_at"], window)
        assert "ada@example.com" not in json.dumps(row), "a PII value was stored"
    posts = server.requests()
    assert posts and all(e["status"] == 200 for e in posts), posts
    assert sum(e["stored"] for e in posts) == len(rows)
    assert sum(e["duplicates"] for e in posts) == 0
    return rows
