"""The read side at 10M rows: each read as a fraction of one full scan of the same table; ingest with vs without rollups; export's peak RSS.

Run (the lead's machine, not a shared one):
    DRENGR_BENCH_READ_ROWS=10000000 python -m pytest bench/bench_read.py --benchmark-enable -s
DRENGR_BENCH_READ_TABLE=PATH makes the table there, or uses the one there.
Under --benchmark-disable (CI) each case runs once on a small table (DRENGR_BENCH_READ_ROWS, 20,000
by default), checks its answers, and reports without judging: the targets are read off the table
it prints (docs/performance.md "Reading at 10M rows"), every read under 5 % of the scan.
"""

import contextlib
import json
import operator
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drengr.core.timestamps import format_ms, parse_ms
from drengr.store import SQLiteStore
from drengr.store.reader import EventQuery, SQLiteReader, StatsQuery
from drengr.store.reader.model import _stats
from drengr.store.sqlite import read_side
from drengr.store.sqlite.writer import Writer, insert_events

ROWS = int(os.environ.get("DRENGR_BENCH_READ_ROWS", "20000"))
NOW_MS = parse_ms("2026-11-26T12:00:00.000Z") or 0
SPAN_MS = 8 * 86_400_000  # the rows arrive evenly over the 8 days before NOW_MS
NAMES = [f"event_{n:02d}" for n in range(12)]
CHUNK = 50_000
RECEIPT = operator.itemgetter(0, 7)  # tenant, received_at
SRC = Path(__file__).resolve().parents[1] / "src"
# DRENGR_BENCH_READ_INGEST_DIR=/dev/shm: the with/without rounds' files there (a RAM disk takes the
# disk's fsyncs, which vary by tens of % from second to second here, out of the comparison).
INGEST_DIR = (
    Path(os.environ["DRENGR_BENCH_READ_INGEST_DIR"])
    if os.environ.get("DRENGR_BENCH_READ_INGEST_DIR")
    else None
)


def synthetic_rows(start: int, n: int) -> list[tuple[Any, ...]]:
    """Rows start…start+n, received in order over SPAN_MS, twelve names (and a rare one), 50,000 users, ~180-byte dims."""
    rows = []
    for i in range(start, start + n):
        received = format_ms(NOW_MS - SPAN_MS + i * SPAN_MS // ROWS)
        dims = json.dumps({"path": f"/products/{i % 997}", "plan": "pro", "referrer": "https://example.com/a/b",
                           "campaign": f"winter_{i % 13}", "locale": "en-GB"}, separators=(",", ":"))  # fmt: skip
        measures = json.dumps({"revenue": (i % 400) / 4, "items": i % 5}) if i % 6 == 0 else "{}"
        name = "refund_issued" if i % 99_991 == 99_990 else NAMES[i % 12]  # one rare name: ~100 in 10M
        rows.append(("acme", f"e{i}", name, "track", f"u{i % 50_000}", f"a{i % 80_000}",
                     received, received, dims, measures, "analytics-python 2.4.0"))  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROWS rows with their rollups and user index, as the writer and its builder leave them.

    ``DRENGR_BENCH_READ_TABLE=PATH`` keeps the table at PATH and uses it again when it is
    there (10M rows take a few minutes to make; the benches after the reads add rows).
    """
    kept = os.environ.get("DRENGR_BENCH_READ_TABLE")
    if kept and Path(kept).exists():
        return Path(kept)
    path = Path(kept) if kept else tmp_path_factory.mktemp("read") / "drengr.db"
    SQLiteStore(str(path)).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    for start in range(0, ROWS, CHUNK):
        rows = synthetic_rows(start, min(CHUNK, ROWS - start))
        conn.execute("BEGIN IMMEDIATE")
        insert_events(conn, rows)
        conn.execute("COMMIT")
    read_side.catch_up(str(path))  # as the writer's read-side builder does, a step at a time
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def median_seconds(work: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def api_reads(reader: Any) -> dict[str, Callable[[], Any]]:
    """The read API's queries both engines are timed on."""
    since_7d = format_ms(NOW_MS - 7 * 86_400_000)
    return {
        "/v1/stats 7d by day": lambda: reader.stats(StatsQuery("acme", since=since_7d, interval="day")),
        "/v1/stats 7d by event name, revenue": lambda: reader.stats(
            StatsQuery("acme", since=since_7d, measures=("revenue",))
        ),
        "/v1/events first page": lambda: reader.events(EventQuery("acme")),
        "/v1/events by event_name": lambda: reader.events(EventQuery("acme", event_name="event_07")),
        "/v1/events by a rare event_name": lambda: reader.events(
            EventQuery("acme", event_name="refund_issued")
        ),
        "/v1/events by external_id": lambda: reader.events(EventQuery("acme", external_id="u4242")),
        "/v1/events by time range": lambda: reader.events(
            EventQuery(
                "acme", since=format_ms(NOW_MS - 3 * 86_400_000), until=format_ms(NOW_MS - 2 * 86_400_000)
            )
        ),
    }


def report_reads(reader: Any, reads: dict[str, Callable[[], Any]], scan_s: float, rounds: int) -> None:
    """Each read's median time and its fraction of the scan; then the stats from the rollups
    are checked against the scan (the answer, not only the time)."""
    print(f"{'read':<42} {'ms':>10} {'of scan':>9}")
    for name, read in reads.items():
        seconds, _ = median_seconds(read, rounds)
        print(f"{name:<42} {seconds * 1000:>10.2f} {seconds / scan_s:>8.1%}")
    since_7d = format_ms(NOW_MS - 7 * 86_400_000)
    query = StatsQuery("acme", since=since_7d, interval="day", measures=("revenue",))
    rows, series = reader._snapshot(lambda execute: reader._scan_stats(execute, query), "stats")
    oracle, got = _stats(rows, series, query), reader.stats(query)
    assert (got.by_event, got.series, got.total) == (oracle.by_event, oracle.series, oracle.total)


def bench_reads_as_a_fraction_of_one_scan(table: Path, request: pytest.FixtureRequest) -> None:
    rounds = 1 if request.config.getoption("benchmark_disable", False) else 5
    reader = SQLiteReader(str(table))
    conn = sqlite3.connect(f"file:{table}?mode=ro", uri=True)
    users = sqlite3.connect(f"file:{read_side.users_path(str(table))}?mode=ro", uri=True)
    one_hour = format_ms(NOW_MS - 3_600_000)

    def analyst(name: str, database: str = "drengr") -> Callable[[], Any]:
        """A canned query of the shipped Datasette metadata, on the database Datasette runs it on."""
        metadata = json.loads((SRC / "drengr" / "datasette.json").read_text())
        sql = metadata["databases"][database]["queries"][name]["sql"].replace(
            "'now'", f"'{NOW_MS // 1000}', 'unixepoch'"
        )
        on = users if database == "drengr-users" else conn
        return lambda: on.execute(sql).fetchall()

    reads: dict[str, Callable[[], Any]] = {
        **api_reads(reader),
        "debugger chart (last hour by minute)": lambda: reader.stats(
            StatsQuery("acme", since=one_hour, interval="minute")
        ),
        "analyst: events per day by name": analyst("events_per_day_by_name"),
        "analyst: distinct users": analyst("distinct_users", "drengr-users"),
        "analyst: revenue by day": analyst("revenue_by_day"),
        # What Datasette runs for the facets of the semantic_events page (its facet query).
        "Datasette facet event_name": lambda: conn.execute(
            "select event_name as value, count(*) as count from semantic_events "
            "group by event_name order by count desc, value limit 31"
        ).fetchall(),
        "Datasette facet event_type": lambda: conn.execute(
            "select event_type as value, count(*) as count from semantic_events "
            "group by event_type order by count desc, value limit 31"
        ).fetchall(),
    }
    scan_s, scanned = median_seconds(
        lambda: conn.execute("select count(*), sum(length(dims)) from semantic_events").fetchone(),
        max(1, rounds // 2),
    )
    assert scanned[0] >= ROWS  # a kept table has the rows later benches added
    print(f"\n{ROWS:,} rows; one full scan (count(*), sum(length(dims))): {scan_s * 1000:,.1f} ms")
    report_reads(reader, reads, scan_s, rounds)
    reader.close()
    conn.close()
    users.close()


def bench_debugger_through_the_app(table: Path, request: pytest.FixtureRequest) -> None:
    """The debugger's first paint (its page, two files and the three reads it makes before painting) and
    one periodic poll, through the WSGI app on the ROWS-row table (no network, no browser)."""
    from drengr.web import Config, create_app

    rounds = 1 if request.config.getoption("benchmark_disable", False) else 5
    store = SQLiteStore(str(table))
    key = store.create_key("acme", "secret")
    client = create_app(Config(db=str(table)), store=store, clock_ms=lambda: NOW_MS).test_client()
    auth = {"Authorization": f"Bearer {key}", "Accept": "application/json"}

    def get(path: str, **headers: str) -> Any:
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.status_code)
        return response

    def first_paint() -> int:
        get("/debugger"), get("/debugger/app.js"), get("/debugger/style.css")
        page = get("/v1/events?order=desc&limit=50", **auth).get_json()
        get("/v1/drops?limit=50", **auth), get("/v1/stats?since=30m&interval=minute", **auth)
        return int(page["latest_cursor"])

    try:
        paint_s, cursor = median_seconds(first_paint, rounds)
        poll_s, _ = median_seconds(
            lambda: (
                get(f"/v1/events?order=asc&limit=500&cursor={cursor}", **auth),
                get("/v1/drops?limit=50", **auth),
                get("/v1/stats?since=30m&interval=minute", **auth),
            ),
            rounds,
        )
    finally:
        store.close()
    print(f"\ndebugger on {ROWS:,} rows, through the app: first paint's requests {paint_s * 1000:,.1f} ms, "
          f"one poll (three reads) {poll_s * 1000:,.1f} ms")  # fmt: skip


def ingest_rounds(request: pytest.FixtureRequest) -> int:
    """Rounds of the with/without benchmarks: 2 (one pair) under --benchmark-disable; timed, 16 (eight
    pairs), or DRENGR_BENCH_READ_INGEST_ROUNDS (a multiple of 4)."""
    if request.config.getoption("benchmark_disable", False):
        return 2
    return int(os.environ.get("DRENGR_BENCH_READ_INGEST_ROUNDS", "16"))


def pair_ratios(results: dict[str, list[float]]) -> str:
    """ "with ÷ without": the median of the pairs' ratios, their quartiles and every ratio, lowest first."""
    pairs = sorted(w / wo for w, wo in zip(results["with rollups"], results["without"], strict=True))
    if len(pairs) < 4:
        return f"with ÷ without, pair by pair: {', '.join(f'{pair:.1%}' for pair in pairs)}"
    low, median, high = statistics.quantiles(pairs, n=4)
    return (f"with ÷ without: median of {len(pairs)} pairs {median:.1%} (quartiles {low:.1%}–{high:.1%}; "
            f"each: {', '.join(f'{pair:.0%}' for pair in pairs)})")  # fmt: skip


@pytest.mark.parametrize("users", [50_000, 100], ids=["50,000 users", "100 users"])
@pytest.mark.parametrize("writers", [1, 8], ids=["one writer", "8 writers"])
def bench_ingest_with_and_without_rollups(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: Any, writers: int, users: int
) -> None:
    """100-event batches through SQLiteStore.write, rounds in pairs with and without the read side.

    One thread writing batch after batch leaves the builder a core; eight at once (as a
    server's request threads do) keep both busy, so the builder's work competes with theirs.
    Each round is timed until its store has closed: the read side's builder has then
    counted every row (its work is in the figure, not left behind). The users: 50,000, each
    step's rows nearly all different ones (the builder indexes a row per event), or the same
    100 in every batch, as the HTTP benchmark sends them (a row per user and step).
    """
    # 2,000 batches a round: a few seconds, so that the builder's last step (in the round, as the
    # store closes) weighs what it would in a long run.
    batches = 20 if request.config.getoption("benchmark_disable", False) else 2_000
    rows_per_round = synthetic_rows(0, batches * 100)
    results: dict[str, list[float]] = {"with rollups": [], "without": []}
    cpu: dict[str, list[float]] = {"with rollups": [], "without": []}  # the process's CPU µs a row

    def write(store: SQLiteStore, round_: int, first: int) -> None:
        for b in range(first, batches, writers):
            # One time of receipt a batch, as the server stamps a request's rows (a second apart).
            received = format_ms(NOW_MS + b * 1_000)
            batch = [(row[0], f"{round_}-{row[1]}", *row[2:4], row[4] if users == 50_000 else f"u{i}", row[5],
                      received, received, *row[8:])
                     for i, row in enumerate(rows_per_round[b * 100 : b * 100 + 100])]  # fmt: skip
            assert store.write("acme", batch, NOW_MS).stored == 100

    # The disk's fsyncs vary by tens of % from one second to the next here: rounds in pairs, one of
    # each, the pair's order alternating (with-without, then without-with), and the ratio is read
    # pair by pair.
    for round_ in range(ingest_rounds(request)):
        label = "with rollups" if round_ % 4 in (0, 3) else "without"
        monkeypatch.setattr(Writer, "builds_read_side", label == "with rollups")
        path = INGEST_DIR / f"r{round_}.db" if INGEST_DIR else tmp_path / f"r{round_}.db"
        store = SQLiteStore(str(path))
        threads = [threading.Thread(target=write, args=(store, round_, first)) for first in range(writers)]
        started, cpu_started = time.perf_counter(), time.process_time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store.close()
        results[label].append(batches * 100 / (time.perf_counter() - started))
        cpu[label].append((time.process_time() - cpu_started) / (batches * 100) * 1e6)
        conn = sqlite3.connect(path)
        stored, built = conn.execute(
            "SELECT (SELECT count(*) FROM semantic_events), value FROM meta WHERE key = 'read_side_seq'"
        ).fetchone()
        conn.close()
        assert stored == batches * 100  # every writer's batches went in
        assert int(built) == (batches * 100 if label == "with rollups" else 0)
        if INGEST_DIR:
            for done in INGEST_DIR.glob(f"r{round_}*.db*"):
                done.unlink()
    with_rate, without_rate = (statistics.median(results[k]) for k in ("with rollups", "without"))
    with_cpu, without_cpu = (statistics.median(cpu[k]) for k in ("with rollups", "without"))
    print(f"\n100-event batches, {writers} writing, {users:,} users: {with_rate:,.0f} rows/s with the read side, "
          f"{without_rate:,.0f} without (medians); {pair_ratios(results)}; the process's CPU a row, "
          f"medians: {with_cpu:.1f} µs with, {without_cpu:.1f} µs without")  # fmt: skip


def bench_export_peak_rss(table: Path, tmp_path: Path) -> None:
    """drengr export of the whole table to Parquet, in its own process: its peak RSS against the table's size."""
    pytest.importorskip("pyarrow", reason="pip install '.[export]'")
    output = tmp_path / "events.parquet"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-m", "drengr", "export", "--db", str(table), str(output)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{ROWS:,} events written")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nexport of {ROWS:,} rows to Parquet: peak RSS {peak_mb:,.0f} MB "
          f"(table {table.stat().st_size / 2**20:,.0f} MB, Parquet {output.stat().st_size / 2**20:,.0f} MB)")  # fmt: skip


def full_against_empty(stores: dict[str, Any], batches: int, engine: str) -> None:
    """Prints the rows/s of 100-event batches into stores["full table"] against stores["empty"], rounds
    alternating, then closes both.

    Each store first takes one batch untimed (the full SQLite table loads its dedup window then).
    """
    try:
        empty, full = _full_against_empty(stores, batches)
    finally:
        for store in stores.values():
            store.close()
    print(f"\n{engine}100-event batches: {full:,.0f} rows/s into the {ROWS:,}-row table, {empty:,.0f} into "
          f"an empty one: {full / empty:.1%} of the empty table's rate")  # fmt: skip


def _full_against_empty(stores: dict[str, Any], batches: int) -> tuple[float, float]:
    template = synthetic_rows(0, 100)

    def batch(tag: str, b: int) -> list[tuple[Any, ...]]:
        received = format_ms(NOW_MS + b * 1_000)
        return [(row[0], f"{tag}-{b}-{row[1]}", *row[2:6], received, received, *row[8:]) for row in template]

    results: dict[str, list[float]] = {label: [] for label in stores}
    for label, store in stores.items():
        assert store.write("acme", batch(f"warm-{label}", 0), NOW_MS).stored == 100
    for round_ in range(6):
        label = "empty" if round_ % 2 == 0 else "full table"
        started = time.perf_counter()
        for b in range(batches):
            assert stores[label].write("acme", batch(f"r{round_}", b), NOW_MS).stored == 100
        results[label].append(batches * 100 / (time.perf_counter() - started))
    empty, full = (statistics.median(results[k]) for k in ("empty", "full table"))
    return empty, full


def bench_ingest_into_the_full_table_against_an_empty_one(
    table: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """100-event batches through SQLiteStore.write into the ROWS-row table and into an empty one, alternating.

    Runs after the reads (it adds rows to the table). Each store first takes one batch
    untimed: the full table's dedup window loads seven days of ids then.
    """
    batches = 20 if request.config.getoption("benchmark_disable", False) else 300
    # A long busy timeout: the full table's first write loads seven days of ids into the window first.
    stores = {label: SQLiteStore(str(path), busy_timeout_ms=300_000)
              for label, path in (("empty", tmp_path / "empty.db"), ("full table", table))}  # fmt: skip
    full_against_empty(stores, batches, "")


def bench_postgres_ingest_with_and_without_rollups(request: pytest.FixtureRequest, monkeypatch: Any) -> None:
    """PostgreSQL: 100-event batches through PostgresStore.write, in pairs with and without the read side
    (the builder of the rollups and the user index, the writers' lock it reads its horizon under, the BRIN
    index it finds new rows with). Each round is timed until its store has closed: the builder has then
    counted every row.

    Needs a server: DRENGR_TEST_POSTGRES_DSN, as bench/bench_postgres.py says (fsync on for real figures).
    """
    pytest.importorskip("psycopg", reason="pip install '.[test]'")
    import psycopg

    from drengr.store import postgres as pg_store

    from .bench_postgres import schema_dsn

    batches = 20 if request.config.getoption("benchmark_disable", False) else 1_000
    rows = synthetic_rows(0, batches * 100)
    results: dict[str, list[float]] = {"with rollups": [], "without": []}
    for round_ in range(ingest_rounds(request)):  # in pairs, as bench_ingest_with_and_without_rollups
        label = "with rollups" if round_ % 4 in (0, 3) else "without"
        monkeypatch.setattr(pg_store.PostgresStore, "builds_read_side", label == "with rollups")
        with contextlib.contextmanager(schema_dsn.__wrapped__)() as dsn:  # type: ignore[attr-defined]
            store = pg_store.PostgresStore(dsn)
            if label == "without":
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("DROP INDEX semantic_events_seq")
            started = time.perf_counter()
            for b in range(batches):
                received = format_ms(NOW_MS + b * 1_000)  # one time of receipt a batch, as the server's
                batch = [(row[0], f"{round_}-{row[1]}", *row[2:6], received, received, *row[8:])
                         for row in rows[b * 100 : b * 100 + 100]]  # fmt: skip
                assert store.write("acme", batch, NOW_MS).stored == 100
            store.close()
            results[label].append(batches * 100 / (time.perf_counter() - started))
            with psycopg.connect(dsn, autocommit=True) as conn:
                built = conn.execute("SELECT value FROM drengr_meta WHERE key = 'read_side_seq'").fetchone()
            assert built is not None and (int(built[0]) == batches * 100) == (label == "with rollups")
    with_rate, without_rate = (statistics.median(results[k]) for k in ("with rollups", "without"))
    print(f"\nPostgreSQL, 100-event batches: {with_rate:,.0f} rows/s with the read side, {without_rate:,.0f} without "
          f"(medians); {pair_ratios(results)}")  # fmt: skip


@pytest.fixture(scope="module")
def pg_table() -> Any:
    """ROWS rows in a fresh PostgreSQL schema (COPY), the indexes built, the read side built: a DSN.

    ``DRENGR_BENCH_READ_PG_SCHEMA=NAME`` keeps the schema NAME and uses it again when it is there.
    """
    psycopg = pytest.importorskip("psycopg", reason="pip install '.[test]'")
    import uuid

    from drengr.store import postgres as pg_store
    from drengr.store.postgres import statements as pg_statements
    from drengr.store.postgres.store import build_read_side as pg_build_read_side

    from .bench_postgres import server_dsn, with_schema

    kept = os.environ.get("DRENGR_BENCH_READ_PG_SCHEMA")
    schema = kept or "bench_read_" + uuid.uuid4().hex[:8]
    dsn = with_schema(server_dsn(), schema)
    with psycopg.connect(server_dsn(), autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = 'drengr_meta'",
            (schema,),
        ).fetchone()
        if kept and found:
            yield dsn
            return
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    try:
        pg_store.PostgresStore(dsn).close()  # the schema, as drengr makes it
        with psycopg.connect(dsn) as conn:
            # Its indexes are built after the COPY (quicker than keeping them up row by row).
            indexes = [row[0] for row in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'semantic_events' "
                "AND schemaname = current_schema() AND indexdef NOT LIKE '%UNIQUE%'"
            )]  # fmt: skip
            for definition in indexes:
                conn.execute("DROP INDEX " + definition.split(" INDEX ", 1)[1].split(" ON ", 1)[0])
            for start in range(0, ROWS, CHUNK):
                with conn.cursor().copy(pg_statements._COPY_EVENTS) as copy:
                    for row in synthetic_rows(start, min(CHUNK, ROWS - start)):
                        copy.write_row(row)
                conn.commit()
            for definition in indexes:
                conn.execute(definition)
            conn.commit()
        with psycopg.connect(dsn, autocommit=True) as conn:
            pg_build_read_side(conn)  # as the store's builder does, a step at a time
            conn.execute("VACUUM ANALYZE")
        yield dsn
    finally:
        if not kept:
            with psycopg.connect(server_dsn(), autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.timeout(3600)  # the 10M-row table takes minutes to build
def bench_postgres_reads_as_a_fraction_of_one_scan(pg_table: str, request: pytest.FixtureRequest) -> None:
    """The API's reads on PostgreSQL, each as a fraction of one full scan of the same table."""
    import psycopg

    from drengr.store.reader import PostgresReader

    rounds = 1 if request.config.getoption("benchmark_disable", False) else 5
    reader = PostgresReader(pg_table)
    reads: dict[str, Callable[[], Any]] = {
        **api_reads(reader),
        "debugger chart (last 30 min by minute)": lambda: reader.stats(
            StatsQuery("acme", since=format_ms(NOW_MS - 1_800_000), interval="minute")
        ),
    }
    with psycopg.connect(pg_table, autocommit=True) as conn:
        scan_s, scanned = median_seconds(
            lambda: conn.execute("select count(*), sum(length(dims::text)) from semantic_events").fetchone(),
            max(1, rounds // 2),
        )
    assert scanned[0] >= ROWS  # a kept table has the rows later benches added
    print(
        f"\nPostgreSQL, {ROWS:,} rows; one full scan (count(*), sum(length(dims::text))): {scan_s * 1000:,.1f} ms"
    )
    try:
        report_reads(reader, reads, scan_s, rounds)
    finally:
        reader.close()


@pytest.mark.timeout(3600)  # the 10M-row table takes minutes to build
def bench_postgres_ingest_into_the_full_table_against_an_empty_one(
    pg_table: str, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL: 100-event batches into the ROWS-row table and into an empty schema, alternating."""
    from drengr.store import postgres as pg_store

    from .bench_postgres import schema_dsn

    batches = 20 if request.config.getoption("benchmark_disable", False) else 300

    with contextlib.contextmanager(schema_dsn.__wrapped__)() as empty_dsn:  # type: ignore[attr-defined]
        stores = {"empty": pg_store.PostgresStore(empty_dsn), "full table": pg_store.PostgresStore(pg_table)}
        full_against_empty(stores, batches, "PostgreSQL, ")
