"""PostgreSQL faults under load: a restart (fast and immediate), a database that is down.

These restart and stop PostgreSQL, so they run on a cluster of their own
(``.ci/postgres.sh start/restart/halt``), never the session's shared server;
each test gets a fresh database in it. Senders and the ack ledger are
tests/test_faults.py's: acknowledged events are never lost nor stored twice,
and no request sent after PostgreSQL accepts connections again fails.
"""

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.store.base import KEY_CACHE_SECONDS

from .realserver import Server, basic, batch, launch, no_stray_servers  # noqa: F401 (an autouse fixture)
from .test_faults import HANG_GUARD_SECONDS, Senders, assert_ledger, health, http_post, report
from .test_postgres_store import IN_CI, SCRIPT, PostgresStore, psycopg

TENANT = "acme"


class Cluster:
    """A PostgreSQL cluster of this module's own, in ``folder``."""

    def __init__(self, folder: Path, dsn: str) -> None:
        self.folder, self.dsn = folder, dsn

    def ctl(self, verb: str, *args: str) -> None:
        subprocess.run(
            ["bash", str(SCRIPT), verb, str(self.folder), *args],
            check=True, capture_output=True, timeout=HANG_GUARD_SECONDS,
        )  # fmt: skip

    def fresh_database(self) -> str:
        name = "fault_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    folder = Path(tempfile.mkdtemp(prefix="drengr-pg.", dir="/tmp"))
    env = {**os.environ, "PG_EXTRA_OPTS": "-c fsync=off"}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=600, env=env
    )
    if started.returncode != 0:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
        message = (started.stderr.strip().splitlines() or ["no message"])[-1]
        if IN_CI or started.returncode != 3:
            pytest.fail(f"{SCRIPT.name} start: {message}")
        pytest.skip(message)
    try:
        yield Cluster(folder, started.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)


def rows_by_id(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(
            conn.execute("SELECT event_id, count(*) FROM semantic_events GROUP BY event_id").fetchall()
        )


def node(cluster: Cluster, tmp_path: Path) -> tuple[Server, str]:
    """A `drengr serve --store` node on a fresh database; (server, its database URI)."""
    dsn = cluster.fresh_database()
    setup = PostgresStore(dsn)
    try:
        key = setup.create_key(TENANT, "publishable")
    finally:
        setup.close()
    server = launch(
        tmp_path / "unused.db", key, "--store", dsn, log_level="warning", log=tmp_path / "node.log"
    )
    return server, dsn


def no_tracebacks(server: Server) -> None:
    text = server.log_text()
    assert "unexpected_error" not in text and "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_postgres_restart_under_load_heals_at_once(cluster: Cluster, tmp_path: Path, mode: str) -> None:
    """502s while it restarts; none for a request sent after it accepts connections again (every
    connection the restart killed, readers and writers, is replaced on first use)."""
    server, dsn = node(cluster, tmp_path)
    try:
        with Senders(http_post(lambda: server), f"restart-{mode}") as senders:
            senders.wait_for_answers(40)
            restarted_at = time.monotonic()
            cluster.ctl("restart", mode)  # returns once PostgreSQL accepts connections again
            back_at = time.monotonic()
            # Past two key-cache lifetimes: every request thread's look-up connection, killed by
            # the restart, is then used again (a look-up path that did not heal would fail here).
            while time.monotonic() < back_at + 2 * KEY_CACHE_SECONDS + 0.5:
                senders.wait_for_answers(10)
        late = senders.ledger.failures_sent_after(back_at)
        assert not late, f"failed after PostgreSQL was back (s after, status): {late[:10]}"
        no_tracebacks(server)
    finally:
        assert server.stop() == 0
    counts = rows_by_id(dsn)
    assert_ledger(senders.ledger, counts)
    report(f"PostgreSQL restart -m {mode} (down {back_at - restarted_at:.2f} s)", senders.ledger, counts)


def test_a_database_that_is_down_is_a_plain_502_and_unhealthy(cluster: Cluster, tmp_path: Path) -> None:
    """Key look-ups and writes get the JSON 502 (CORS and all), /health 503, the log one line each, no
    traceback; once it is back, the same requests succeed."""
    server, dsn = node(cluster, tmp_path)
    unknown = "drengr_pk_" + "0" * 40  # never cached: its look-up must reach the database
    requests: list[tuple[str, str, bytes, dict[str, Any]]] = [
        ("batch, the node's key", "/v1/batch", b"", basic(server.key)),
        ("batch, a key never seen", "/v1/batch", b"", basic(unknown)),
        ("sourceConfig", "/sourceConfig", b"", basic(server.key)),
    ]
    try:
        time.sleep(2.5)  # the node's key cache (2 s) forgets the key: its look-up reaches the database
        cluster.ctl("halt")
        try:
            assert health(server) == 503
            for name, path, _, headers in requests:
                method = "GET" if path == "/sourceConfig" else "POST"
                body = (
                    b"" if method == "GET" else b'{"batch": [{"type": "track", "event": "e", "userId": "u"}]}'
                )
                reply = server.request(
                    method,
                    path,
                    body,
                    {**headers, "Origin": "https://shop.example", "Content-Type": "application/json"},
                )
                assert reply.status == 502, (name, reply.status, reply.body)
                assert reply.json()["code"] == "ingest_failed", name
                assert dict(reply.headers)["Access-Control-Allow-Origin"] == "https://shop.example", name
        finally:
            cluster.ctl("restart")
        assert health(server) == 200
        assert server.post("/v1/batch", batch(["after-1"])).status == 200
        assert server.request("GET", "/sourceConfig", b"", basic(server.key)).status == 200
        no_tracebacks(server)
        assert "key look-up failed" in server.log_text()
    finally:
        assert server.stop() == 0
    assert rows_by_id(dsn) == {"after-1": 1}
