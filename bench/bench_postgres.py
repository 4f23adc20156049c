"""PostgreSQL write path: rows/s of PostgresStore.write next to SQLiteStore.write and a bare COPY floor.

Run (a server with fsync on, as in production; the test session's own server has fsync off):

    export DRENGR_TEST_POSTGRES_DSN="$(PG_EXTRA_OPTS= .ci/postgres.sh start)"
    python -m pytest bench/bench_postgres.py --benchmark-only --benchmark-columns=mean,ops,rounds
    .ci/postgres.sh stop

``ops`` is batches/s; multiply by 2,500 for rows/s (``extra_info.rows_per_batch``).
Every case writes 2,500-row batches of new events for one tenant, one call at a
time (one request's worth: no group commit across requests). Under
--benchmark-disable (CI) each case runs once, on a small table, to stay correct.
"""

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.core.limits import MS_PER_DAY
from drengr.core.timestamps import format_ms, parse_ms
from drengr.store import SQLiteStore

from .bench_http import cpu_seconds

try:
    import psycopg

    from drengr.store.postgres import PostgresStore
    from drengr.store.postgres.statements import _COPY_EVENTS
    from tests.support.postgres import server_dsn, with_schema
except ImportError as error:  # pragma: no cover - psycopg is in the `test` extra
    if os.environ.get("CI"):
        raise
    pytest.skip(f"the PostgreSQL benchmarks need psycopg and tests/ ({error})", allow_module_level=True)

ROWS_PER_BATCH = 2_500
ROUNDS = 20
NOW_MS = parse_ms("2026-11-26T12:00:00.000Z") or 0
# event_ids already holding this many ids of the current window (the dedup index PostgreSQL must probe).
PREFILL_IDS = int(os.environ.get("DRENGR_BENCH_PG_PREFILL", "1000000"))


def make_rows(n: int, received_at: str) -> list[tuple[Any, ...]]:
    """The rows of bench/bench_store.py: uuid4 event ids, five dims, two measures."""
    dims = json.dumps(
        {"currency": "USD", "plan": "pro", "path": "/pricing", "os": "iOS 17.4", "app_version": "3.2.1"}
    )
    return [
        ("acme", str(uuid.uuid4()), "order_completed", "track", f"user_{i % 5000}", f"anon_{i % 7000}",
         received_at, received_at, dims, json.dumps({"revenue": 42.5, "quantity": i % 9}), "analytics-python 2.4.0")
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture
def schema_dsn() -> Iterator[str]:
    schema = "bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield with_schema(server_dsn(), schema)
    with psycopg.connect(server_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def batches() -> Iterator[list[tuple[Any, ...]]]:
    while True:
        yield make_rows(ROWS_PER_BATCH, format_ms(NOW_MS))


def run_rounds(benchmark: Any, write: Any, dsn: str | None = None) -> None:
    source = batches()
    benchmark.extra_info["rows_per_batch"] = ROWS_PER_BATCH
    if dsn is not None:
        with psycopg.connect(dsn) as conn:
            benchmark.extra_info["fsync"] = conn.execute("SHOW fsync").fetchone()[0]  # type: ignore[index]
    benchmark.pedantic(write, setup=lambda: ((next(source),), {}), rounds=ROUNDS, iterations=1)


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM semantic_events").fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("durability", ["full", "normal"])
def bench_postgres_write_empty(benchmark: Any, schema_dsn: str, durability: str) -> None:
    """PostgresStore.write, 2,500 new rows per call, on empty tables."""
    store = PostgresStore(schema_dsn, durability=durability, clock=lambda: NOW_MS / 1000)
    run_rounds(benchmark, lambda rows: store.write("acme", rows, NOW_MS), schema_dsn)
    store.close()
    assert count(schema_dsn) == ROWS_PER_BATCH * (1 if benchmark.disabled else ROUNDS)


def bench_postgres_write_window(benchmark: Any, schema_dsn: str) -> None:
    """PostgresStore.write (synchronous_commit on) when event_ids already holds PREFILL_IDS ids of the window."""
    store = PostgresStore(schema_dsn, clock=lambda: NOW_MS / 1000)
    ids = 10_000 if benchmark.disabled else PREFILL_IDS
    with psycopg.connect(schema_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO event_ids (tenant_id, event_id, gen) "
            "SELECT 'acme', gen_random_uuid()::text, %s FROM generate_series(1, %s)",
            (NOW_MS // MS_PER_DAY, ids),
        )
        conn.execute("VACUUM ANALYZE event_ids")
    benchmark.extra_info["prefilled_ids"] = ids
    run_rounds(benchmark, lambda rows: store.write("acme", rows, NOW_MS), schema_dsn)
    store.close()


def bench_postgres_floor_copy(benchmark: Any, schema_dsn: str) -> None:
    """The floor: one transaction, COPY of the same rows into the same table; no dedup, no cap."""
    PostgresStore(schema_dsn).close()  # the schema
    conn = psycopg.connect(schema_dsn)

    def write(rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur, cur.copy(_COPY_EVENTS) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()

    run_rounds(benchmark, write, schema_dsn)
    conn.close()
    assert count(schema_dsn) == ROWS_PER_BATCH * (1 if benchmark.disabled else ROUNDS)


def bench_sqlite_write_same_run(benchmark: Any, tmp_path: Path) -> None:
    """SQLiteStore.write (synchronous=FULL), 2,500 new rows per call: the same rows, in the same run."""
    store = SQLiteStore(str(tmp_path / "s.db"), clock=lambda: NOW_MS / 1000)
    run_rounds(benchmark, lambda rows: store.write("acme", rows, NOW_MS))
    store.close()


BUILD_ROWS = int(os.environ.get("DRENGR_BENCH_PG_BUILD_ROWS", "160000"))


@pytest.mark.parametrize("users", [50_000, 100], ids=["50,000 users", "100 users"])
def bench_postgres_read_side_builder(
    benchmark: Any, schema_dsn: str, monkeypatch: pytest.MonkeyPatch, users: int
) -> None:
    """The read side's builder (``build_read_side``) over BUILD_ROWS rows stored without it: wall time and
    PostgreSQL's CPU a row (its backend's, from /proc: a server on this machine), steps as it takes them.
    ``bench_read.py``'s rows, received a second apart every 100, their users among 50,000 (nearly all
    different in a step) or the same 100."""
    from drengr.store.postgres import store as pg_store

    from .bench_read import synthetic_rows

    monkeypatch.setattr(pg_store.PostgresStore, "builds_read_side", False)  # the writes alone first
    store = pg_store.PostgresStore(schema_dsn, clock=lambda: NOW_MS / 1000)
    total = 5_000 if benchmark.disabled else BUILD_ROWS
    rows = synthetic_rows(0, total)
    for first in range(0, total, ROWS_PER_BATCH):
        # Received a second apart every 100 rows, as bench_read.py's ingest rounds stamp their batches.
        batch = [(*row[:4], f"u{n % users}", row[5], *[format_ms(NOW_MS + n // 100 * 1_000)] * 2, *row[8:])
                 for n, row in enumerate(rows[first : first + ROWS_PER_BATCH], start=first)]  # fmt: skip
        store.write("acme", batch, NOW_MS)
    store.close()
    conn = psycopg.connect(schema_dsn, autocommit=True)
    backend = conn.info.backend_pid
    local = Path(f"/proc/{backend}").exists()  # a server on this machine: its CPU is read from /proc
    before = cpu_seconds(backend) if local else 0.0
    built = benchmark.pedantic(lambda: pg_store.build_read_side(conn), rounds=1, iterations=1)
    used = cpu_seconds(backend) - before if local else None
    conn.close()
    assert built == total
    benchmark.extra_info["rows"] = total
    benchmark.extra_info["backend_cpu_us_a_row"] = None if used is None else round(used / total * 1e6, 2)
    if not benchmark.disabled:
        cpu = "" if used is None else f"; PostgreSQL's CPU {used / total * 1e6:.2f} µs a row"
        print(f"\nthe builder, {total:,} rows, {users:,} users: "
              f"{benchmark.stats.stats.mean / total * 1e6:.2f} µs a row{cpu}")  # fmt: skip


READ_ROWS = int(os.environ.get("DRENGR_BENCH_PG_READ_ROWS", "2000000"))


@pytest.mark.parametrize("index", ["tenant_seq", "none"])
def bench_postgres_read_newest_page(benchmark: Any, schema_dsn: str, index: str) -> None:
    """The read API's newest page (50 rows) of a tenant holding 1 row in 10, with the (tenant_id, seq) index and without."""
    from drengr.store.reader import EventQuery, PostgresReader

    PostgresStore(schema_dsn).close()  # the schema, with its index
    rows = 20_000 if benchmark.disabled else READ_ROWS
    with psycopg.connect(schema_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO semantic_events (tenant_id, event_id, event_name, event_type, install_id,"
            " occurred_at, received_at, dims, measures) "
            "SELECT CASE WHEN g %% 10 = 0 THEN 'small' ELSE 'big' END, 'e' || g, 'order_completed', 'track',"
            " 'u', '2026-11-26T00:00:00.000Z', '2026-11-26T00:00:00.000Z', '{}', '{\"revenue\": 1}'"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        if index == "none":
            conn.execute("DROP INDEX semantic_events_tenant_seq")
        conn.execute("VACUUM ANALYZE semantic_events")
    reader = PostgresReader(schema_dsn)
    benchmark.extra_info["rows"] = rows
    page = benchmark(lambda: reader.events(EventQuery("small", limit=50)))
    reader.close()
    assert [event["event_id"] for event in page.events] == [f"e{n}" for n in range(rows, rows - 500, -10)]
