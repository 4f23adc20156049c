"""Retention: the worst added p99 of 100-event batches on a real server while `drengr prune` deletes 1M rows.

Run: DRENGR_BENCH_PRUNE_ROWS=1000000 python -m pytest bench/bench_retention.py --benchmark-enable -s
(PostgreSQL too: export DRENGR_TEST_POSTGRES_DSN="$(PG_EXTRA_OPTS= .ci/postgres.sh start)").

Setup, outside what is measured: a store prefilled with DRENGR_BENCH_PRUNE_ROWS
rows received 100 days ago, and a `drengr serve` on it. Then one client sends
100-event batches back to back, first alone (the baseline), then while
`drengr prune --before 30d` runs beside the server; the table gives p50, p99
and the worst batch of each phase and the p99 added by pruning (one run, the
same machine: a difference, not an absolute claim). Checked: every batch got
200 and was stored, and the prune deleted exactly the prefilled rows. Under
--benchmark-disable (CI) it runs once on a small table, to stay correct.
"""

import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from drengr.core.limits import MS_PER_DAY
from drengr.core.timestamps import format_ms
from drengr.store import SQLiteStore, open_store
from drengr.store.sqlite.writer import _INSERT_EVENTS
from tests.support.app import read_rows
from tests.support.realserver import child_env, create_db, launch, no_stray_servers  # noqa: F401 (an autouse fixture)

from .payloads import batch_body

ROWS = int(os.environ.get("DRENGR_BENCH_PRUNE_ROWS", "1000000"))
SMALL_ROWS = 20_000  # under --benchmark-disable
BASELINE_BATCHES = 300
ENGINES = ["sqlite", "postgresql"]


def old_rows(count: int, received_ms: int) -> list[tuple[Any, ...]]:
    at = format_ms(received_ms)
    return [
        ("acme", uuid.uuid4().hex, "e", "track", "u", "u", at, at, '{"plan":"pro"}', "{}", None)
        for _ in range(count)
    ]


def prefill_sqlite(path: Path, rows: int, received_ms: int) -> None:
    SQLiteStore(str(path)).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    for start in range(0, rows, 50_000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT_EVENTS, old_rows(min(50_000, rows - start), received_ms))
        conn.execute("COMMIT")
    conn.close()


def prefill_postgres(uri: str, rows: int, received_ms: int) -> None:
    store = open_store(uri)
    try:
        for start in range(0, rows, 25_000):
            store.write("acme", old_rows(min(25_000, rows - start), received_ms), received_ms)
    finally:
        store.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def send_batches(server: Any, until: threading.Event | None, count: int) -> list[float]:
    """100-event batches back to back: ``count`` of them, or until ``until`` is set; each one's seconds."""
    took = []
    seed = 0
    while (until is None and len(took) < count) or (until is not None and not until.is_set()):
        seed += 1
        body = batch_body(100, seed=seed + (0 if until is None else 1_000_000))
        started = time.perf_counter()
        reply = server.request(
            "POST", "/v1/batch", body, {"Content-Type": "application/json", **auth(server.key)}
        )
        took.append(time.perf_counter() - started)
        assert reply.status == 200, reply.body
    return took


def auth(key: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.mark.parametrize("engine", ENGINES)
def bench_p99_added_by_pruning(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    small = request.config.getoption("benchmark_disable", False)
    rows = SMALL_ROWS if small else ROWS
    received_ms = int(time.time() * 1000) - 100 * MS_PER_DAY
    db = tmp_path / "prune.db"
    key = create_db(db)
    where: list[str]
    if engine == "sqlite":
        prefill_sqlite(db, rows, received_ms)
        where = ["--db", str(db)]
        extra: list[str] = []
    else:
        uri = request.getfixturevalue("_bench_pg_uri")
        store = open_store(uri)
        key = store.create_key("acme")
        store.close()
        prefill_postgres(uri, rows, received_ms)
        where = ["--store", uri]
        extra = ["--store", uri]
    server = launch(db, key, *extra, log_level="warning")
    try:
        baseline = send_batches(server, None, 20 if small else BASELINE_BATCHES)
        done = threading.Event()
        during: list[float] = []
        sender = threading.Thread(target=lambda: during.extend(send_batches(server, done, 0)))
        sender.start()
        started = time.perf_counter()
        pruned = subprocess.run(
            [sys.executable, "-m", "drengr", "prune", "--before", "30d", "--quiet", *where],
            capture_output=True, text=True, env=child_env({}),
        )  # fmt: skip
        prune_seconds = time.perf_counter() - started
        done.set()
        sender.join()
    finally:
        assert server.stop() == 0
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stderr.startswith(f"Deleted {rows:,} events"), pruned.stderr
    assert during, "no batch was sent while pruning"
    stored = read_rows(db if engine == "sqlite" else where[1])
    assert len(stored) == 100 * (len(baseline) + len(during))  # every batch stored, no old row left
    added = percentile(during, 0.99) - percentile(baseline, 0.99)
    print(
        f"\n{engine}: pruned {rows:,} rows in {prune_seconds:.1f} s; 100-event batches "
        f"baseline p50 {statistics.median(baseline) * 1000:.1f} ms p99 {percentile(baseline, 0.99) * 1000:.1f} ms "
        f"max {max(baseline) * 1000:.1f} ms ({len(baseline)}); while pruning p50 "
        f"{statistics.median(during) * 1000:.1f} ms p99 {percentile(during, 0.99) * 1000:.1f} ms "
        f"max {max(during) * 1000:.1f} ms ({len(during)}); p99 added {added * 1000:+.1f} ms"
    )


@pytest.fixture
def _bench_pg_uri() -> Any:
    from tests.support.postgres import fresh_schema

    with fresh_schema("b_") as dsn:
        yield dsn
