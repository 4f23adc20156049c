"""PostgreSQL faults under load: a restart (fast and immediate), a database that is down.

These restart and stop PostgreSQL, so they run on a cluster of their own
(``.ci/postgres.sh start/restart/halt``), never the session's shared server;
each test gets a fresh database in it. Senders and the ack ledger are
tests/test_faults.py's: acknowledged events are never lost nor stored twice,
and no request sent after PostgreSQL accepts connections again fails.
"""

import contextlib
import http.client
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.store import StoreError
from drengr.store.base import KEY_CACHE_SECONDS

from .support.faults import HANG_GUARD_SECONDS, Senders, assert_ledger, health, http_post, report
from .support.postgres import IN_CI, SCRIPT, PostgresStore, psycopg
from .support.realserver import INGEST_FAILED, Server, basic, batch, free_port, launch, no_stray_servers  # noqa: F401 (an autouse fixture)

TENANT = "acme"
INGEST_FAILED_BODY = json.dumps(INGEST_FAILED).encode()


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


# --------------------------------------------------------------------------- behind nginx

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/segment-ingest"
ORIGIN = "https://shop.example"


def test_a_postgres_restart_behind_the_shipped_nginx_stays_a_blip(cluster: Cluster, tmp_path: Path) -> None:
    """Two `serve` nodes behind deploy/nginx.conf, one PostgreSQL restarted under load: clients see
    only drengr's JSON errors with CORS (never nginx's HTML page), no node is set aside, and no
    request sent after PostgreSQL is back fails."""
    from .support.nginx import nginx_binary, shipped_nginx_conf
    from .support.realserver import start_node, wait_for

    nginx = nginx_binary()
    dsn = cluster.fresh_database()
    setup = PostgresStore(dsn)
    try:
        key = setup.create_key(TENANT, "publishable")
    finally:
        setup.close()
    folder = tmp_path / "nginx"
    folder.mkdir()
    os.chmod(folder, 0o755)
    node_ports = [free_port(), free_port()]
    nodes = [start_node(dsn, port, folder / f"node{n}.log") for n, port in enumerate(node_ports)]
    port = free_port()
    (folder / "nginx.conf").write_text(shipped_nginx_conf(folder, {port: node_ports}))
    proxy = subprocess.Popen(
        [nginx, "-c", str(folder / "nginx.conf"), "-p", str(folder), "-e", str(folder / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wrong: list[tuple[int, bytes, str | None]] = []

    def post(ids: list[str]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_SECONDS)
        try:
            headers = {**basic(key), "Content-Type": "application/json", "Origin": ORIGIN}
            conn.request("POST", f"{PREFIX}/v1/batch", body=json.dumps(batch(ids)).encode(), headers=headers)
            reply = conn.getresponse()
            body = reply.read()
            if reply.status != 200 and (
                body != INGEST_FAILED_BODY or reply.getheader("Access-Control-Allow-Origin") != ORIGIN
            ):
                wrong.append((reply.status, body[:200], reply.getheader("Content-Type")))
            return reply.status
        except OSError:
            return 0
        finally:
            conn.close()

    try:
        for node_port in node_ports:
            wait_for(node_port, f"{PREFIX}/health")
        wait_for(port, f"{PREFIX}/health")
        with Senders(post, "nginx") as senders:
            senders.wait_for_answers(40)
            restarted_at = time.monotonic()
            cluster.ctl("restart", "fast")
            back_at = time.monotonic()
            while time.monotonic() < back_at + 2 * KEY_CACHE_SECONDS + 0.5:
                senders.wait_for_answers(10)
        assert not wrong, f"answers that are not drengr's JSON error with CORS: {wrong[:5]}"
        late = senders.ledger.failures_sent_after(back_at)
        assert not late, f"failed after PostgreSQL was back (s after, status): {late[:10]}"
        assert "no live upstreams" not in (folder / "error.log").read_text()
        # nginx's own answers are drengr's JSON too: no node to reach, a body past client_max_body_size.
        for process in nodes:
            process.terminate()
            process.wait(timeout=HANG_GUARD_SECONDS)
        attempted = len(senders.ledger.attempted)
        assert post(["no-node"]) == 502 and not wrong, wrong
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_SECONDS)
        conn.request("POST", f"{PREFIX}/v1/batch", body=b"x" * (5 << 20), headers={"Origin": ORIGIN})
        too_large = conn.getresponse()
        assert (too_large.status, json.loads(too_large.read())["code"]) == (400, "request_too_large")
        assert too_large.getheader("Access-Control-Allow-Origin") == ORIGIN
        conn.close()
        assert len(senders.ledger.attempted) == attempted
    finally:
        proxy.send_signal(signal.SIGQUIT)
        for process in [*nodes, proxy]:
            if process.poll() is None:
                process.terminate()
        for process in [*nodes, proxy]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    counts = rows_by_id(dsn)
    assert_ledger(senders.ledger, counts)
    report(
        f"two nodes behind deploy/nginx.conf, PostgreSQL restart -m fast (down {back_at - restarted_at:.2f} s)",
        senders.ledger,
        counts,
    )


# --------------------------------------------------------------------------- a node with a wrong clock


@pytest.mark.parametrize("days", [15, -15], ids=lambda d: f"{d:+d}-days")
def test_a_node_whose_clock_is_off_makes_no_resend_a_second_row(cluster: Cluster, days: int) -> None:
    """Two nodes on one database, one with its clock ``days`` off (each prunes right after its first
    write, as a node does); senders meet both in turn and resend everything acknowledged."""
    from drengr import clock
    from drengr.settings import Config
    from drengr.web import create_app

    from .support.faults import poster, resend_everything, serving

    dsn = cluster.fresh_database()

    def node_app(offset_days: int) -> Any:
        shift = offset_days * 86_400
        store = PostgresStore(dsn, clock=lambda: clock.now() + shift)
        return store, create_app(Config(), store=store, clock_ms=lambda: clock.now_ms() + shift * 1000)

    (right, right_app), (wrong, wrong_app) = node_app(0), node_app(days)
    key = right.create_key(TENANT, "publishable")
    try:
        with serving(right_app) as right_port, serving(wrong_app) as wrong_port:
            post = poster([right_port, wrong_port], key)
            with Senders(post, f"clock{days:+d}") as senders:
                for _ in range(3):
                    senders.wait_for_answers(40)
                    with senders.ledger.lock:
                        acked = set(senders.ledger.acked)
                    resend_everything(post, acked)
                    assert wrong.prune() == 0 and right.prune() == 0
    finally:
        right.close()
        wrong.close()
    counts = rows_by_id(dsn)
    assert_ledger(senders.ledger, counts)
    report(f"one PostgreSQL node's clock {days:+d} days off", senders.ledger, counts)


# --------------------------------------------------------------------------- connections: none leaked, no write twice


def backends(dsn: str) -> int:
    """Client connections to ``dsn``'s database, other than the one asking."""
    database = dsn.rsplit("/", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_health_checks_leave_the_connection_count_flat(cluster: Cluster) -> None:
    """Each probe asks the store on the health check's one worker thread: 30 checks hold one
    connection, not 30 (a thread per probe left its connection open behind it)."""
    from drengr.web.health import HealthCheck

    dsn = cluster.fresh_database()
    store = PostgresStore(dsn)
    try:
        check = HealthCheck(store)
        assert check.check() == (True, "")
        after_one = backends(dsn)
        for _ in range(30):
            assert check.check() == (True, "")
        assert backends(dsn) == after_one <= 1
    finally:
        store.close()
    assert backends(dsn) == 0


class CommitCutter:
    """A TCP relay to PostgreSQL that, when armed, cuts the connection right after the server
    committed a transaction, before the client hears so: the commit happened, the client sees a
    dead connection."""

    COMMITTED = b"C\x00\x00\x00\x0bCOMMIT\x00"  # CommandComplete, tag COMMIT

    def __init__(self, host: str, port: int) -> None:
        import socket

        self.target = (host, port)
        self.armed = threading.Event()
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: Any, sink: Any, from_server: bool) -> None:
        import socket

        try:
            while data := source.recv(65536):
                if from_server and self.COMMITTED in data and self.armed.is_set():
                    self.armed.clear()
                    self.cuts += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_write_whose_connection_dies_after_its_commit_is_not_done_twice(cluster: Cluster) -> None:
    """A reused connection that dies after the database committed an admin write: the caller gets
    the error (the outcome is unknown to the node), and the write is not run again on a fresh
    connection (drop counts added twice, a key revoked and then reported as not found)."""
    from psycopg.conninfo import conninfo_to_dict

    dsn = cluster.fresh_database()
    params = conninfo_to_dict(dsn)
    cutter = CommitCutter(str(params["host"]), int(params["port"]))
    relayed = f"postgresql://{params.get('user', 'postgres')}@127.0.0.1:{cutter.port}/{params['dbname']}?sslmode=disable"
    store = PostgresStore(relayed)
    try:
        assert store.drop_counts(TENANT) == {}  # this thread's connection is open: the next one reuses it
        cutter.armed.set()
        with pytest.raises(StoreError):
            store.add_drop_counts({(TENANT, 20_000, "too_large"): 1})
        assert cutter.cuts == 1
        assert store.drop_counts(TENANT) == {"too_large": 1}, "the write was repeated"
        # A read on a connection that died is still retried at once.
        cutter.armed.clear()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (params["dbname"],),
            )
        assert store.drop_counts(TENANT) == {"too_large": 1}
    finally:
        store.close()
        cutter.close()
