"""What docs/deploying.md tells an operator to run works as written.

- ``deploy/nginx.conf`` passes ``nginx -t`` as it is (the PostgreSQL fault
  tests run the same file in front of two nodes);
- ``pip install '.[postgres,deploy]'`` brings gunicorn, and the installed
  entry point ``drengr.wsgi:application`` serves from a directory that is not a
  clone (the top-level ``wsgi.py`` is tests/test_server.py's).
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from .support.realserver import Server, create_db, free_port

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
HANG_GUARD_SECONDS = 60  # a generous hang guard, not a speed limit


def test_deploy_nginx_conf_passes_nginx_t_as_it_is() -> None:
    from .support.nginx import nginx_binary

    nginx = nginx_binary()
    if not os.access("/var/log/nginx", os.W_OK) and not IN_CI:
        pytest.skip("nginx -t opens the file's logs in /var/log/nginx: run as root (CI does)")
    result = subprocess.run(
        [nginx, "-t", "-c", str(ROOT / "deploy" / "nginx.conf")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_the_deploy_extra_brings_gunicorn_and_postgres_the_driver() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("gunicorn") for requirement in extras["deploy"])
    assert any(requirement.startswith("psycopg") for requirement in extras["postgres"])
    assert "pip install '.[postgres,deploy]'" in (ROOT / "docs" / "deploying.md").read_text()


@pytest.mark.skipif(
    importlib.util.find_spec("gunicorn") is None and not IN_CI,
    reason="gunicorn is in the deploy and test extras: pip install '.[deploy]'",
)
def test_gunicorn_serves_the_installed_entry_point_outside_a_clone(tmp_path: Path) -> None:
    db = tmp_path / "installed.db"
    key = create_db(db)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    # Only the package on the path, as an install has it: not the clone's top, where wsgi.py is.
    env = {**os.environ, "DRENGR_DB": str(db), "PYTHONPATH": str(ROOT / "src")}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "1",
        "-b",
        f"127.0.0.1:{port}",
        "drengr.wsgi:application",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
        )
    server = Server(port, key, db, log, process)
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not server.healthy():
            assert server.alive() and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        body = {"type": "track", "event": "Installed", "userId": "u"}
        assert server.post("/v1/t", body).body == b'{"success": true}'
    finally:
        assert server.stop() == 0, log.read_text()[-2000:]
    # drengr's access line, as `drengr serve` prints it (DRENGR_LOG_LEVEL and _FORMAT apply here too).
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "drengr.access" and line["path"] == "/v1/t"]
    assert [(line["status"], line["stored"]) for line in access] == [(200, 1)], log.read_text()[-2000:]
    assert key not in log.read_text()
    assert not (tmp_path / "wsgi.py").exists()
    # The worker closed its store as it exited: its writer left the dedup window's file.
    assert Path(f"{db}-window").stat().st_size > 0, log.read_text()[-2000:]


# --------------------------------------------------------------------------- nginx and a node's time


def drengr_longest_answer_seconds() -> float:
    """The longest a node takes to answer an ingest request when its store does not answer: on
    PostgreSQL a key look-up and a write, each at most the connect and the statement timeout; on
    SQLite the busy timeout."""
    import inspect

    from drengr.settings import Config
    from drengr.store.postgres import PostgresStore

    defaults = inspect.signature(PostgresStore.__init__).parameters
    postgres = 2 * (defaults["connect_timeout"].default + defaults["statement_timeout_ms"].default / 1000)
    return max(postgres, Config().busy_timeout_ms / 1000)


def test_nginx_waits_longer_for_a_node_than_the_node_waits_for_its_store() -> None:
    """Clients get the node's own answer, not nginx's timeout, whatever the store does."""
    from .support.nginx import SHIPPED

    (line,) = [
        line for line in SHIPPED.read_text().splitlines() if line.strip().startswith("proxy_read_timeout ")
    ]
    proxy_read_timeout = float(line.split()[1].rstrip(";").removesuffix("s"))
    assert proxy_read_timeout > drengr_longest_answer_seconds()


def test_nginx_never_hands_a_post_a_node_took_to_another_node(tmp_path: Path) -> None:
    """Two nodes that take a POST and never answer, behind the shipped file (its proxy_read_timeout
    shortened to 1 s): nginx answers drengr's JSON 502 and the POST reached one node only. The node
    may still commit it; a second node would write it at the same time."""
    import socket
    import threading

    from .support.nginx import nginx_binary, shipped_nginx_conf

    nginx = nginx_binary()
    received: list[bytes] = []
    held: list[socket.socket] = []
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]

    def silent_node(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # never answered, never closed until the test ends
            received.append(conn.recv(65536))

    for listener in listeners:
        threading.Thread(target=silent_node, args=(listener,), daemon=True).start()
    port = free_port()
    nodes = [listener.getsockname()[1] for listener in listeners]
    (tmp_path / "nginx.conf").write_text(shipped_nginx_conf(tmp_path, {port: nodes}, proxy_read_timeout="1s"))
    process = subprocess.Popen(
        [nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        guard = time.monotonic() + 30  # hang guard: nginx starts
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < guard, (tmp_path / "error.log").read_text()
                time.sleep(0.05)
        import http.client

        client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        client.request(
            "POST", "/segment-ingest/v1/batch", b'{"batch": []}', {"Content-Type": "application/json"}
        )
        reply = client.getresponse()
        body = reply.read()
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
        for sock in [*listeners, *held]:
            sock.close()
    assert reply.status == 502 and b'"code": "ingest_failed"' in body, (reply.status, body)
    posts = [request for request in received if request.startswith(b"POST ")]
    assert len(posts) == 1, f"the POST reached {len(posts)} nodes"


def test_the_wsgi_entry_point_loads_no_command_line_code(tmp_path: Path) -> None:
    """Every gunicorn worker imports drengr.wsgi: argparse, export and the CLI stay out of it."""
    env = {**os.environ, "DRENGR_DB": str(tmp_path / "w.db"), "PYTHONPATH": str(ROOT / "src")}
    code = "import sys, drengr.wsgi; print(sorted(m for m in sys.modules if m.startswith('drengr.cli')))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
