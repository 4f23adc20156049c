"""Store write path: rows/s of SQLiteStore.write for 2,500-row batches next to the bare-executemany floor.

Run: python -m pytest bench/bench_store.py --benchmark-only --benchmark-columns=mean,ops,rounds
(`ops` is batches/s; multiply by 2,500 for rows/s — `extra_info.rows_per_batch` says so).
Under --benchmark-disable (CI) each case runs once on a small table, to stay correct.
"""

import itertools
import os
import sqlite3
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.core.limits import MS_PER_DAY
from drengr.core.timestamps import format_ms, parse_ms
from drengr.mapping import BodyMapper
from drengr.store import SQLiteStore
from drengr.store.sqlite import read_side
from drengr.store.sqlite.writer import _INSERT_EVENTS

from .payloads import batch_body

ROWS_PER_BATCH = 2_500
ROUNDS = 20
NOW_MS = parse_ms("2026-11-26T12:00:00.000Z") or 0
# A table that "already holds N rows": received long before the dedup window (history),
# or inside it (the window then holds N fingerprints in memory).
PREFILL_ROWS = int(os.environ.get("DRENGR_BENCH_PREFILL", "10000000"))


_MAPPER = BodyMapper()
_seeds = itertools.count(1_000)


def make_rows(n: int, received_at: str) -> list[tuple[Any, ...]]:
    """The rows our mapper makes of n realistic analytics-python events (bench/payloads.py), fresh ids."""
    rows = _MAPPER.parse(batch_body(n, seed=next(_seeds))).map(None, NOW_MS, "acme")[0]
    return [(*row[:1], str(uuid.uuid4()), *row[2:7], received_at, *row[8:]) for row in rows]


def fresh_db(path: Path) -> Path:
    SQLiteStore(str(path)).close()
    return path


def prefill(path: Path, rows: int, received_ms: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    chunk = 50_000
    template = make_rows(ROWS_PER_BATCH, format_ms(received_ms))
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            _INSERT_EVENTS,
            (
                (*template[i % ROWS_PER_BATCH][:1], f"pre-{start + i}", *template[i % ROWS_PER_BATCH][2:])
                for i in range(n)
            ),
        )
        conn.execute("COMMIT")
    # The read side as the writer's builder leaves it (else the timed writes would count the backlog).
    read_side.catch_up(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


@pytest.fixture(scope="module")
def prefilled(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Path]]:
    """Two databases holding PREFILL_ROWS rows each: history (outside the window) and in-window."""
    disabled = request.config.getoption("benchmark_disable", False)
    rows = 10_000 if disabled else PREFILL_ROWS
    folder = tmp_path_factory.mktemp("prefilled")
    history = fresh_db(folder / "history.db")
    prefill(history, rows, NOW_MS - 30 * MS_PER_DAY)
    window = fresh_db(folder / "window.db")
    prefill(window, min(rows, 1_000_000), NOW_MS - MS_PER_DAY)
    yield {"history": history, "window": window}


def batches() -> Iterator[list[tuple[Any, ...]]]:
    while True:
        yield make_rows(ROWS_PER_BATCH, format_ms(NOW_MS))


def run_rounds(benchmark: Any, write: Any) -> None:
    source = batches()
    benchmark.extra_info["rows_per_batch"] = ROWS_PER_BATCH
    benchmark.pedantic(write, setup=lambda: ((next(source),), {}), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("durability", ["full", "normal"])
def bench_store_write_empty(benchmark: Any, tmp_path: Path, durability: str) -> None:
    """SQLiteStore.write, 2,500 new rows per call, on an empty table."""
    store = SQLiteStore(str(tmp_path / "s.db"), durability=durability, clock=lambda: NOW_MS / 1000)
    run_rounds(benchmark, lambda rows: store.write("acme", rows, NOW_MS))
    store.close()
    assert count(tmp_path / "s.db") == ROWS_PER_BATCH * (1 if benchmark.disabled else ROUNDS)


@pytest.mark.parametrize("durability", ["full", "normal"])
def bench_floor_executemany_empty(benchmark: Any, tmp_path: Path, durability: str) -> None:
    """The floor: BEGIN IMMEDIATE; executemany of the same rows into the same schema; COMMIT."""
    path = fresh_db(tmp_path / "f.db")
    conn = floor_connection(path, durability)
    run_rounds(benchmark, lambda rows: floor_write(conn, rows))
    conn.close()
    assert count(path) == ROWS_PER_BATCH * (1 if benchmark.disabled else ROUNDS)


def floor_connection(path: Path, durability: str = "full") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA synchronous = {durability.upper()}")
    return conn


def floor_write(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """The floor's one batch: BEGIN IMMEDIATE; executemany; COMMIT."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_INSERT_EVENTS, rows)
    conn.execute("COMMIT")


def floor_rows_per_second(folder: Path, rounds: int = ROUNDS) -> float:
    """The floor measured outside pytest-benchmark (bench_http's same-run ratio): median of ``rounds`` batches."""
    path = fresh_db(folder / f"floor-{next(_seeds)}.db")
    conn = floor_connection(path)
    source = batches()
    times = []
    for _ in range(rounds):
        rows = next(source)
        start = time.perf_counter()
        floor_write(conn, rows)
        times.append(time.perf_counter() - start)
    conn.close()
    return ROWS_PER_BATCH / statistics.median(times)


@pytest.mark.timeout(3600)  # the 10M-row prefill (and its read side) takes minutes to build
@pytest.mark.parametrize("table", ["history", "window"])
def bench_store_write_prefilled(benchmark: Any, prefilled: dict[str, Path], table: str) -> None:
    """SQLiteStore.write (synchronous=FULL), 2,500 new rows per call, on a table that already holds many rows."""
    path = prefilled[table]
    before = count(path)
    # Its first write loads the dedup window, outside the timer: from the table (10M ids for the
    # history table, whose newest rows are its window), or from the file the last writer left.
    store = SQLiteStore(str(path), clock=lambda: NOW_MS / 1000, busy_timeout_ms=3_600_000)
    store.write("acme", make_rows(1, format_ms(NOW_MS)), NOW_MS)
    benchmark.extra_info["prefilled_rows"] = before
    benchmark.extra_info["window_fingerprints"] = sum(len(index) for index in store._committer._window)  # noqa: SLF001
    run_rounds(benchmark, lambda rows: store.write("acme", rows, NOW_MS))
    store.close()
    assert count(path) == before + 1 + ROWS_PER_BATCH * (1 if benchmark.disabled else ROUNDS)


@pytest.mark.timeout(3600)
def bench_store_first_write_after_a_restart(benchmark: Any, prefilled: dict[str, Path]) -> None:
    """The first write of a writer that just started, its dedup window holding the in-window table's
    ids (1M): read from the window's file the last writer left, against built from the table."""
    path = prefilled["window"]
    rounds = 1 if benchmark.disabled else 5
    times: dict[str, list[float]] = {"file": [], "table": []}
    ids: list[int] = []

    def restart(source: str) -> None:
        if source == "table":
            Path(f"{path}-window").unlink(missing_ok=True)
        store = SQLiteStore(str(path), clock=lambda: NOW_MS / 1000, busy_timeout_ms=600_000)
        rows = make_rows(1, format_ms(NOW_MS))
        started = time.perf_counter()
        first = store.write("acme", rows, NOW_MS)
        times[source].append(time.perf_counter() - started)
        again = store.write("acme", rows, NOW_MS)  # its window holds the id now: a duplicate
        assert (first.stored, again.duplicates) == (1, 1)
        assert store._committer.window_from_file == (source == "file")  # noqa: SLF001
        ids.append(sum(len(index) for index in store._committer._window))  # noqa: SLF001
        store.close()  # and leaves its window's file

    def rounds_alternating() -> None:
        for round_ in range(rounds):  # the file's rounds follow a writer that stopped, as on a restart
            for source in ("table", "file") if round_ % 2 == 0 else ("file", "table"):
                restart(source)

    benchmark.pedantic(rounds_alternating, rounds=1, iterations=1)
    from_file, from_table = (statistics.median(times[source]) for source in ("file", "table"))
    size = Path(f"{path}-window").stat().st_size
    print(f"\nfirst write after a restart, {max(ids):,} ids in the dedup window: {from_file * 1000:,.0f} ms "
          f"with the window's file ({size / 2**20:,.0f} MB), {from_table * 1000:,.0f} ms built from the table "
          f"(medians of {rounds}; {from_table / from_file:,.0f}x)")  # fmt: skip


def count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM semantic_events").fetchone()[0]
    finally:
        conn.close()


LOOKUP_IDS = int(os.environ.get("DRENGR_BENCH_LOOKUP_IDS", "10000000"))


@pytest.mark.timeout(1800)
def bench_dedup_lookup_tables_against_runs(benchmark: Any, tmp_path: Path) -> None:
    """The dedup window's look-up of 2,500 new ids (a batch), its LOOKUP_IDS ids held in one table in
    memory, against the same ids spilled into runs on disk as the writer spills them (window.SPILL_IDS
    a run): the filters' probes are what runs add to every write. Rounds alternate; medians. Then the
    window's file of those runs, written and read back."""
    import random
    from array import array

    from drengr.store.sqlite import window, window_file

    ids = 50_000 if benchmark.disabled else LOOKUP_IDS
    spill = 10_000 if benchmark.disabled else window.SPILL_IDS
    rng = random.Random(7)
    table, spilled = window.FingerprintIndex(), window.Generation()
    holds: list[float] = []  # how long the writer's call that starts a spill, or takes its run, took
    for start in range(0, ids, 65_536):
        keys = array("Q", [rng.randrange(1, 2**64) for _ in range(min(65_536, ids - start))])
        seqs = array("q", range(start + 1, start + 1 + len(keys)))
        table.add_many(keys, seqs)
        spilled.add_many(keys, seqs)
        before = (len(spilled.runs), len(spilled.table))
        started = time.perf_counter()
        spilled.spill_if_full(str(tmp_path), spill)
        if (len(spilled.runs), len(spilled.table)) != before:
            holds.append(time.perf_counter() - started)
    started = time.perf_counter()
    spilled.settle()  # the last spill's thread, done
    settled = time.perf_counter() - started
    batches = [array("Q", [rng.randrange(1, 2**64) for _ in range(2_500)]) for _ in range(200)]
    times: dict[str, list[float]] = {"table": [], "runs": []}

    def look_up() -> None:
        for number, batch in enumerate(batches):
            for name, index in (
                (("table", table), ("runs", spilled)) if number % 2 else (("runs", spilled), ("table", table))
            ):
                started = time.perf_counter()
                index.hits(batch)
                times[name].append(time.perf_counter() - started)

    benchmark.pedantic(look_up, rounds=1, iterations=1)
    table_us, runs_us = (statistics.median(times[name]) / 2_500 * 1e6 for name in ("table", "runs"))
    print(f"\nlook-up of a new id among {ids:,} ids: one table {table_us:.3f} µs "
          f"({table.memory_bytes / 2**20:,.0f} MB); {len(spilled.runs)} runs and a table of {len(spilled.table):,} "
          f"{runs_us:.3f} µs ({spilled.memory_bytes / 2**20:,.0f} MB in memory); runs ÷ table {runs_us / table_us:.2f}")  # fmt: skip
    database = str(tmp_path / "window.db")
    header = {"database_id": "bench", "last_seq": ids, "last_row": 1, "generation": 0, "window_days": 7}
    saving, reading = [], []
    for _ in range(3):
        started = time.perf_counter()
        window_file.save(database, header, [spilled, window.Generation()])
        saving.append(time.perf_counter() - started)
        started = time.perf_counter()
        loaded = window_file.load(database)  # from the file cache, as right after a stop
        reading.append(time.perf_counter() - started)
        assert loaded is not None and sum(len(part) for part in loaded[1]) == ids
        for part in loaded[1]:
            part.close()
    size = Path(window_file.window_path(database)).stat().st_size
    print(f"the window's file: {size / 2**20:,.0f} MB, written in {statistics.median(saving):.2f} s, "
          f"read back in {statistics.median(reading):.2f} s (medians of 3)")  # fmt: skip
    print(f"spills of {spill:,} ids held the writer {statistics.median(holds) * 1000:,.1f} ms (median of "
          f"{len(holds)} calls that started one or took its run; longest {max(holds) * 1000:,.1f} ms); "
          f"waiting for the last one to finish took {settled * 1000:,.0f} ms")  # fmt: skip
    spilled.close()
