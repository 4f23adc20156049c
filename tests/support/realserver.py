"""Helpers for the tests that run the real thing: `drengr serve` (waitress) on 127.0.0.1.

Each server is a child process started with ``python -m drengr serve`` on a
free port and a real SQLite file (every test that starts one does it with
``launch``); its stderr (the access log) goes to a file, or to a pipe that a
thread reads line by line, never to an unread pipe (a full pipe wedges a
logging server). Only processes started here are signalled or killed, always
by their own PID.
"""

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import drengr as package
from drengr.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
CODE_ROOT = Path(package.__file__).resolve().parents[1]  # the drengr these tests import (src/)
PREFIX = "/segment-ingest"  # `drengr serve --prefix`, as docs/deploying.md's nginx example mounts it
TENANT = "acme"
INGEST_FAILED = {"error": "Ingest failed", "code": "ingest_failed", "message": "Ingest failed"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_db(path: Path, tenant: str = TENANT, kind: str = "publishable") -> str:
    """A database with one tenant and one key (so `serve` finds it not new and prints nothing)."""
    store = SQLiteStore(str(path))
    try:
        return store.create_key(tenant, kind)
    finally:
        store.close()


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    port: int
    key: str
    db: Path
    log: Path | None  # the file stderr goes to; None when it is piped (see ``lines``)
    process: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)
    prefix: str = ""  # `--prefix`: ``request`` puts it before every path
    lines: list[str] = field(default_factory=list)  # piped stderr, one entry a line
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.getheaders(), response.read())
        finally:
            conn.close()

    def post(
        self, path: str, body: Any, key: str | None = None, timeout: float = 30, **headers: str
    ) -> Reply:
        """POST a dict as JSON (bytes as-is) with Basic auth (the server's key unless ``key`` is given)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **basic(self.key if key is None else key)}
        all_headers.update({name.replace("_", "-"): value for name, value in headers.items()})
        return self.request("POST", path, data, all_headers, timeout)

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/health", timeout=15).status == 200
        except OSError:
            return False

    def alive(self) -> bool:
        return self.process.poll() is None

    def status_kib(self, field_name: str) -> int:
        """A memory figure from /proc/PID/status, in KiB (VmRSS now, VmHWM the peak)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise KeyError(field_name)

    def children(self) -> list[int]:
        """The pids of the server's child processes (its SQLite writer process)."""
        found: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                found += [int(pid) for pid in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
                continue
        return found

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; SIGKILL if it will not go. Returns the exit status."""
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def log_text(self) -> str:
        if self.log is not None:
            return self.log.read_text(encoding="utf-8", errors="replace")
        if self._reader is not None and not self.alive():
            self._reader.join(timeout=5)  # the last lines of a server that has exited
        with self._changed:
            return "\n".join(self.lines)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self._stderr_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def _stderr_line(self, line: str) -> None:
        """One line of piped stderr (the reader thread's); a subclass may look at it too."""
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()


_LAUNCHED: list[Server] = []


@pytest.fixture(autouse=True)
def no_stray_servers() -> Iterator[None]:
    """Import into a test module: a server a failed test left running is killed (by its PID).

    Only servers launched during the test itself: a module-scoped fixture's
    server is set up before this runs, and stopped by its own teardown.
    """
    before = len(_LAUNCHED)
    yield
    while len(_LAUNCHED) > before:
        server = _LAUNCHED.pop()
        if server.alive():
            server.kill()


def launch(
    db: Path,
    key: str | None,
    *extra: str,
    log_level: str = "info",
    log: Path | None = None,
    port: int | None = None,
    prefix: str = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    pipe_stderr: bool = False,
    server_class: type[Server] = Server,
) -> Server:
    """Start `drengr serve` on ``db`` and wait until /health answers 200.

    ``key`` None means a new database: the publishable key `serve` prints for
    it on stdout becomes the server's. ``prefix`` is passed as ``--prefix``
    (and /health is asked under it); ``env`` is added to this process's
    environment. Stderr goes to ``log`` (a file beside ``db`` by default), or
    with ``pipe_stderr`` to a thread that hands each line to the server
    (``lines``; ``server_class`` may be a subclass that reads them too).
    """
    port = port or free_port()
    log = None if pipe_stderr else log or db.with_name(f"{db.stem}-{port}.log")
    args = [
        sys.executable, "-m", "drengr", "serve", "--db", str(db), "--port", str(port),
        "--log-level", log_level, *(["--prefix", prefix] if prefix else []), *extra,
    ]  # fmt: skip
    with contextlib.ExitStack() as files:
        stderr = subprocess.PIPE if log is None else files.enter_context(open(log, "ab"))
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if key is None else subprocess.DEVNULL,
            stderr=stderr, env=None if env is None else {**os.environ, **env}, cwd=cwd,
        )  # fmt: skip
    server = server_class(port, key or "", db, log, process, args, prefix)
    _LAUNCHED.append(server)
    if log is None:
        server._reader = threading.Thread(target=server._read_stderr, name="drengr-stderr", daemon=True)
        server._reader.start()
    if key is None:
        assert process.stdout is not None
        server.key = process.stdout.readline().decode().strip()
        if not server.key.startswith("drengr_pk_"):
            server.kill()
            raise AssertionError(f"no key printed: {server.key!r}\n{server.log_text()[-2000:]}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"server exited with {process.returncode}: {server.log_text()[-2000:]}")
        if server.healthy():
            return server
        time.sleep(0.05)
    server.kill()
    raise AssertionError("server did not come up: " + server.log_text()[-2000:])


def track(message_id: str, **extra: Any) -> dict[str, Any]:
    item = {"type": "track", "event": "Order Completed", "userId": "u-1", "messageId": message_id}
    item["properties"] = {"revenue": 9.5, "plan": "pro"}
    item.update(extra)
    return item


def batch(message_ids: list[str], **extra: Any) -> dict[str, Any]:
    return {"batch": [track(m, **extra) for m in message_ids]}


def event_id_counts(db: Path, tenant: str = TENANT) -> dict[str, int]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return dict(
            conn.execute(
                "SELECT event_id, count(*) FROM semantic_events WHERE tenant_id = ? GROUP BY event_id",
                (tenant,),
            ).fetchall()
        )
    finally:
        conn.close()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


# --------------------------------------------------------------------------- child processes


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any DRENGR_ variable, plus ``extra``; children import our drengr."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DRENGR_")}
    env["PYTHONPATH"] = os.pathsep.join(
        str(p) for p in (CODE_ROOT, ROOT, os.environ.get("PYTHONPATH", "")) if p
    )
    return {**env, **extra}


def node_env() -> dict[str, str]:
    """This environment, with the clone's src/ first on PYTHONPATH (a node, a CLI command)."""
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_node(store_uri: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`drengr serve` on ``store_uri`` (PostgreSQL) under ``PREFIX``, as a node behind nginx."""
    command = [sys.executable, "-m", "drengr", "serve", "--store", store_uri, "--port", str(port),
               "--prefix", PREFIX, "--threads", "4", "--log-level", "warning"]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=node_env())


def wait_for(port: int, path: str, deadline_s: float = 30) -> None:
    """Until ``path`` on 127.0.0.1:``port`` answers 200 (fails after ``deadline_s``)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"nothing healthy on 127.0.0.1:{port}{path}")
