"""The real thing: `drengr serve` (waitress) on 127.0.0.1, a real SQLite file, real HTTP."""

import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients.harness import require
from .support.realserver import Server, create_db, free_port, launch, no_stray_servers  # noqa: F401 (an autouse fixture)

ROOT = Path(__file__).parents[1]  # the README quickstart runs in tests/test_docs.py
HANG_GUARD_SECONDS = 60  # a server that never answers fails here instead of hanging the suite
pytestmark = pytest.mark.slow


def start_server(tmp_path: Path, *extra: str, prefix: str = "") -> Server:
    """`drengr serve` on a new database (it prints the key), answering /health."""
    return launch(tmp_path / "serve.db", None, *extra, log_level="warning", prefix=prefix)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path)
    yield server
    server.stop()


def rows(db: Path) -> list[tuple[str, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT event_name, external_id, dims, measures, tenant_id FROM semantic_events"
        ).fetchall()
    finally:
        conn.close()


def test_serve_prints_a_key_only_for_a_new_database(tmp_path):
    first = start_server(tmp_path)  # fails unless a new database's key is printed
    assert first.stop() == 0
    port = free_port()
    out = tmp_path / "again.out"
    with open(out, "wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "drengr", "serve", "--db", str(first.db), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
        )  # fmt: skip
    again = Server(port, first.key, first.db, out, process)
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not again.healthy():  # seen answering, so it is past the point where a key is printed
            assert again.alive() and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        reply = again.post("/v1/track", {"type": "track", "event": "Again", "userId": "u"})
        assert (reply.status, reply.body) == (200, b'{"success": true}')  # the first key still works
    finally:
        assert again.stop() == 0
    printed = out.read_text()
    assert "drengr_pk_" not in printed, printed
    assert [name for name, *_ in rows(first.db)] == ["again"]


def test_bodies_over_4mib_are_refused_by_waitress_and_between_get_our_400(server):
    reply = server.request("POST", "/v1/batch", b" " * 1_000_000, {"Authorization": "Basic eDo="})
    assert reply.status == 400 and reply.json()["error"] == "Request too large"
    # Only the head is sent: waitress answers from Content-Length without reading the body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 * 1024 * 1024 + 1)
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 413")


def test_prefix_over_http(tmp_path):
    server = start_server(tmp_path, prefix="/segment-ingest")
    try:
        body = json.dumps({"type": "track", "event": "Hi", "userId": "u", "writeKey": server.key}).encode()
        reply = server.request("POST", "/v1/t", body)
        assert (reply.status, reply.body) == (200, b'{"success": true}')
        assert server.request("POST", "/api/s/s2s/track", body, {"X-Write-Key": server.key}).status == 200
        server.prefix = ""
        assert server.request("POST", "/v1/t", body).status == 404
    finally:
        server.stop()
    assert len(rows(server.db)) == 2


def test_script_name_split_by_gunicorn(tmp_path):
    """nginx passes the full path, gunicorn (``SCRIPT_NAME`` set) splits it: routes answer below the
    mount point, and the URLs the app writes name it."""
    require(
        importlib.util.find_spec("gunicorn") is not None,
        "gunicorn is in the test extra: pip install '.[test]'",
    )
    db = tmp_path / "mounted.db"
    key = create_db(db)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DRENGR_DB": str(db),
        "SCRIPT_NAME": "/segment-ingest",  # gunicorn's setting: requests arrive with the full path
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "wsgi:application"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=env, cwd=ROOT)  # fmt: skip
    server = Server(port, key, db, log, process, prefix="/segment-ingest")  # every path sent in full
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not server.healthy():  # GET /segment-ingest/health
            assert server.alive() and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        body = {"type": "track", "event": "Mounted", "userId": "u"}
        assert server.post("/v1/t", body).body == b'{"success": true}'
        assert server.post("/v1/batch", {"batch": [{**body, "type": "page"}]}).body == b'{"success": true}'
        reply = server.request("GET", f"/v1/projects/{key}/settings")
        assert reply.status == 200
        assert reply.json()["integrations"]["Segment.io"]["apiHost"] == f"127.0.0.1:{port}/segment-ingest/v1"
    finally:
        assert server.stop() == 0, log.read_text()[-2000:]
    assert sorted(name for name, *_ in rows(db)) == ["mounted", "page_viewed"]


def test_wsgi_entry_point_reads_environment(tmp_path):
    """Configured from DRENGR_*, with serve's GIL switch interval (0.1 ms, not Python's 5 ms)."""
    program = "import sys, wsgi; print(type(wsgi.application).__name__, round(sys.getswitchinterval() * 1e6))"
    env = {
        **os.environ,
        "DRENGR_DB": str(tmp_path / "w.db"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.stdout.split() == ["Flask", "100"], result.stderr  # µs
    assert (tmp_path / "w.db").exists()
