"""The SQLite store: WAL, BEGIN IMMEDIATE, group commit, an in-memory dedup window.

Layout, and why (the dedup index, not parsing, is what costs at scale, as
``bench/bench_store.py`` shows):

- ``semantic_events`` is append-only: its only key is ``seq INTEGER PRIMARY KEY
  AUTOINCREMENT`` (always increasing, never reused), so its write rate does not
  fall as it grows. There is no random-key index on disk at all.
- Dedup is exact and lives in memory (``_index.FingerprintIndex``): 64-bit
  fingerprints of (tenant_id, event_id) → seq, for rows received in the
  current and the previous 7-day generation (so every repeat within 7 days is
  caught; older generations are dropped whole). On start the index is built
  from those rows of the table; before every write, under the write lock, it
  reads the rows other processes committed since (``seq > last_seq``); every
  fingerprint hit is verified against the row it points to.
- The wall clock is not trusted to forget (docs/mapping.md "Deduplication
  when the clock is wrong"): a generation is dropped only when the clock has
  moved on *and* the process's monotonic clock agrees that most of a
  generation has passed since it closed (``_DROP_AFTER_SECONDS``). A clock
  that jumps ahead closes the current generation but drops nothing; a clock
  that goes back changes nothing; a restart loads the window back from the
  older of the clock and the newest stored row.
- One writer thread per process owns the write connection and commits
  whatever requests are waiting in one transaction (group commit), so
  ``synchronous=FULL`` costs one fsync per group, not per request.
- ``writer="process"`` (``drengr serve --writer process``) moves that work —
  the connection, the dedup window, the metering — into a child process of
  its own; each request hands its rows straight to it through a pipe, and the
  child commits every job waiting there in one transaction. SQLite's CPU time
  then no longer competes for the request threads' GIL, and a second core
  can run it. The child dies with its parent (it reads EOF); a child that dies
  fails the jobs it holds with 502 (a commit it made is caught as a duplicate
  when the client resends) and a new one starts with the next job.
- Several processes share the file: every write transaction is
  ``BEGIN IMMEDIATE`` with a busy timeout, never a deferred upgrade, and
  their writers take turns at an OS lock (``_WriterLock``).
- Daily-cap metering: one read and one upsert per tenant and day a group; it fails open.
- WAL checkpoints run in a background thread (``_Checkpointer``), not in the writer's commits.

sqlite-utils does schema and admin; the hot insert goes straight to
``executemany`` (``insert_all`` measured ~2× slower).
"""

import collections
import contextlib
import fcntl
import functools
import itertools
import json
import logging
import marshal
import operator
import os
import queue
import secrets
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import metrics
from .._imports import without_numpy
from .._memory import return_large_blocks
from ..logs import configure as configure_logs
from ..logs import current_format as current_log_format

if TYPE_CHECKING:
    import sqlite_utils

from ..clock import now as clock_now
from ..core.auth import KEY_KINDS, KeyRecord, hash_key, new_key
from ..core.limits import DEDUP_WINDOW_DAYS, DEFAULT_DAILY_CAP_EVENTS, MS_PER_DAY
from ..core.outcome import StoreOutcome
from ..core.timestamps import format_ms, parse_ms
from .base import PRUNE_BATCH_ROWS, KeyCache, KeyInfo, StoreError, allow_names, allow_text, take_group

try:
    from .._index import FingerprintIndex, fingerprint, fingerprints  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the extension did not build; the twin is exact, only slower
    from .._index_py import FingerprintIndex, fingerprint, fingerprints

log = logging.getLogger("drengr.store")
# Where this drengr is imported from: the writer process imports the same one.
_CODE_ROOT = str(Path(__file__).resolve().parents[2])

WRITERS = ("thread", "process")
SCHEMA_VERSION = 4  # 2: semantic_events.library, drop_counts; 3: tenants.pii_allow; 4: hourly rollups
GROUP_MAX_ROWS = 25_000  # one transaction takes at most this many rows' worth of requests
# The thread writer's queue holds at most this many jobs. A request waits for room (within its busy
# timeout), so it never binds while the writer keeps up (each request thread has one job in flight);
# while the writer is stalled, it keeps the jobs of requests that already answered 502 from piling up.
_QUEUE_MAX_JOBS = 64
_MERGE_MAX_BYTES = 4 << 20  # the writer process's groups: at most this many bytes of messages
# Errors one job's rows can cause (the others are written without it). Any other error (a
# read-only or full disk, I/O, a lock) fails the whole group, and the connection is reopened.
_JOB_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
# Background WAL checkpoints (see _Checkpointer): one every ~1,000 rows written (~150 pages); the
# writer finishes the log once it holds 4,000 frames (16 MB), so it starts over; its own
# auto-checkpoint only past 20,000 (80 MB), should the checkpoint thread fall behind.
_CHECKPOINT_EVERY_ROWS = 1_000
_WAL_RESTART_FRAMES = 4_000
_CHECKPOINT_FALLBACK_PAGES = 20_000
_EVENT_COLUMNS = (
    "tenant_id, event_id, event_name, event_type, external_id, install_id, "
    "occurred_at, received_at, dims, measures, library"
)
_INSERT_EVENTS = f"INSERT INTO semantic_events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
# The read side's rollups (docs/performance.md "Reading at 10M rows"): per tenant, received minute
# (`2026-11-26T02:50`), event name and type, the events stored; per measure, its sum; and the same
# per received hour (`2026-11-26T02`), so that a week is ~2,000 rows to add, not ~120,000. Kept in
# the transaction that inserts the rows, from the rows just inserted: /v1/stats, the debugger's
# chart and the analyst queries read these instead of scanning semantic_events.
# `meta.rollups_from_seq` is the first seq they cover: a database made before them has older rows
# until `drengr db backfill-rollups` runs.
# The writer counts the rows it holds in Python (a few dict updates a row) and upserts one row per
# tenant, minute (hour) and name: an INSERT … SELECT … GROUP BY over the rows just written cost 40 %
# of the rate of 100-event batches (bench/bench_read.py), this costs a few µs a batch. The backfill
# uses the SQL.
ROLLUP_GRAINS = (("", "minute", 16), ("hourly_", "hour", 13))  # table prefix, column, text width


def _rollup_tables(prefix: str, column: str) -> tuple[str, str]:
    return (
        f"""CREATE TABLE IF NOT EXISTS {prefix}event_rollups (
        tenant_id TEXT NOT NULL,
        {column} TEXT NOT NULL,
        event_name TEXT NOT NULL,
        event_type TEXT NOT NULL,
        events INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, {column}, event_name, event_type)
    ) WITHOUT ROWID""",
        f"""CREATE TABLE IF NOT EXISTS {prefix}measure_rollups (
        tenant_id TEXT NOT NULL,
        {column} TEXT NOT NULL,
        event_name TEXT NOT NULL,
        measure TEXT NOT NULL,
        total REAL NOT NULL,
        PRIMARY KEY (tenant_id, {column}, event_name, measure)
    ) WITHOUT ROWID""",
    )


ROLLUP_TABLES = tuple(sql for prefix, column, _ in ROLLUP_GRAINS for sql in _rollup_tables(prefix, column))
HOURLY_FROM_MINUTES = (
    "INSERT INTO hourly_event_rollups (tenant_id, hour, event_name, event_type, events) "
    "SELECT tenant_id, substr(minute, 1, 13), event_name, event_type, sum(events) FROM event_rollups "
    "GROUP BY 1, 2, 3, 4",
    "INSERT INTO hourly_measure_rollups (tenant_id, hour, event_name, measure, total) "
    "SELECT tenant_id, substr(minute, 1, 13), event_name, measure, sum(total) FROM measure_rollups "
    "GROUP BY 1, 2, 3, 4",
)


def _rollup_sql(where: str, sign: str = "") -> list[tuple[str, bool]]:
    """INSERT … SELECT statements counting the rows ``where`` selects into every grain: (sql, is_measure)."""
    statements = []
    for prefix, column, width in ROLLUP_GRAINS:
        statements.append((
            f"INSERT INTO {prefix}event_rollups (tenant_id, {column}, event_name, event_type, events) "
            f"SELECT tenant_id, substr(received_at, 1, {width}), event_name, event_type, {sign}count(*) "
            f"FROM semantic_events WHERE {where} GROUP BY 1, 2, 3, 4 "
            "ON CONFLICT DO UPDATE SET events = events + excluded.events",
            False,
        ))  # fmt: skip
        statements.append((
            f"INSERT INTO {prefix}measure_rollups (tenant_id, {column}, event_name, measure, total) "
            f"SELECT e.tenant_id, substr(e.received_at, 1, {width}), e.event_name, m.key, {sign}sum(m.value) "
            f"FROM semantic_events AS e, json_each(e.measures) AS m "
            f"WHERE {where.replace('seq', 'e.seq')} AND e.measures != '{{}}' AND m.type IN ('integer', 'real') "
            "GROUP BY 1, 2, 3, 4 ON CONFLICT DO UPDATE SET total = total + excluded.total",
            True,
        ))  # fmt: skip
    return statements


ROLLUP_RANGE = _rollup_sql("seq >= ? AND seq <= ?")


@functools.cache
def _upsert_template(prefix: str, column: str, measures: bool) -> str:
    if measures:
        return (
            f"INSERT INTO {prefix}measure_rollups (tenant_id, {column}, event_name, measure, total) "
            "VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET total = total + excluded.total"
        )
    return (
        f"INSERT INTO {prefix}event_rollups (tenant_id, {column}, event_name, event_type, events) "
        "VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET events = events + excluded.events"
    )


_NAME, _TYPE, _NAME_TYPE = operator.itemgetter(2), operator.itemgetter(3), operator.itemgetter(2, 3)
_TENANT_RECEIVED = operator.itemgetter(0, 7)


def _by_receipt(requests: list[list[tuple[Any, ...]]]) -> Iterator[list[tuple[Any, ...]]]:
    """Each list as it is when its first and last rows share tenant and time of receipt (a request's
    rows), else split where they change (rows of many requests, in order of receipt)."""
    for rows in requests:
        if rows and (rows[0][0], rows[0][7]) == (rows[-1][0], rows[-1][7]):
            yield rows
        elif rows:
            yield from (list(group) for _, group in itertools.groupby(rows, key=_TENANT_RECEIVED))


def rollup_rows(requests: list[list[tuple[Any, ...]]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What the rows of ``requests`` (semantic_events tuples, seq aside) add to event_rollups and measure_rollups.

    One list a request: its rows share a tenant and a time of receipt, so they are
    counted by name in C (Counter; by name and type when types differ), and only the
    few keys found get a minute. Measures are parsed only where a row has some.
    """
    counts: dict[tuple[str, str, str, str], int] = {}
    sums: dict[tuple[str, str, str, str], float] = {}
    for rows in _by_receipt(requests):
        tenant_id, minute = rows[0][0], rows[0][7][:16]  # received_at, `2026-11-26T02:50`
        types = set(map(_TYPE, rows))
        if len(types) == 1:
            (type_,) = types
            named = ((name, type_, n) for name, n in collections.Counter(map(_NAME, rows)).items())
        else:
            named = ((name, t, n) for (name, t), n in collections.Counter(map(_NAME_TYPE, rows)).items())
        for name, type_, n in named:
            key = (tenant_id, minute, name, type_)
            counts[key] = counts.get(key, 0) + n
        for row in rows:
            if row[9] != "{}":  # most events carry no measure: no JSON to parse
                for measure, value in json.loads(row[9]).items():
                    if type(value) in (int, float):  # numbers only, as json_each's 'integer'/'real'
                        key = (tenant_id, minute, row[2], measure)
                        # REAL: a float sum, as SQLite stores it (an int may pass int64)
                        sums[key] = sums.get(key, 0.0) + value
    return [(*k, n) for k, n in counts.items()], [(*k, v) for k, v in sums.items()]


def hourly(rollups: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Minute rollup rows (tenant, minute, name, type or measure, value) added up by hour."""
    added: dict[tuple[Any, ...], Any] = {}
    for tenant_id, minute, name, other, value in rollups:
        key = (tenant_id, minute[:13], name, other)
        added[key] = added.get(key, 0) + value
    return [(*k, v) for k, v in added.items()]


@functools.cache
def _upsert_statement(template: str, rows: int) -> str:
    """``template`` with ``rows`` rows of VALUES: one statement, one step (see insert_events)."""
    head, tail = template.split(" VALUES (?,?,?,?,?) ")
    return f"{head} VALUES " + ",".join(["(?,?,?,?,?)"] * rows) + " " + tail


def _upsert(conn: sqlite3.Connection, template: str, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), 512):  # 2,560 parameters a statement at most
        part = rows[start : start + 512]
        conn.execute(_upsert_statement(template, len(part)), list(itertools.chain.from_iterable(part)))


def add_to_rollups(conn: sqlite3.Connection, requests: list[list[tuple[Any, ...]]]) -> None:
    """Count the rows just inserted, one list a request, into both grains (inside the caller's transaction)."""
    events, measures = rollup_rows(requests)
    _upsert(conn, _upsert_template("", "minute", False), events)
    _upsert(conn, _upsert_template("hourly_", "hour", False), hourly(events))
    if measures:
        _upsert(conn, _upsert_template("", "minute", True), measures)
        _upsert(conn, _upsert_template("hourly_", "hour", True), hourly(measures))


def remove_from_rollups(conn: sqlite3.Connection, seqs: list[int]) -> None:
    """Take the stored rows ``seqs``, about to be deleted (a prune), out of the rollups (same transaction).

    Only rows the rollups counted (seq at or after ``meta.rollups_from_seq``). A count
    that reaches 0 stays until ``tidy_rollups``; the reader skips it.
    """
    found = conn.execute("SELECT value FROM meta WHERE key = 'rollups_from_seq'").fetchone()
    counted = [seq for seq in seqs if found is not None and seq >= int(found[0])]
    if not counted:
        return
    marks = ",".join("?" * len(counted))
    for statement, _ in _rollup_sql(f"seq IN ({marks})", sign="-"):
        conn.execute(statement, counted)


def tidy_rollups(conn: sqlite3.Connection) -> None:
    """Drop the rollup rows a prune emptied (a count of 0, and the measure sums of those minutes)."""
    for prefix, column, _ in ROLLUP_GRAINS:
        conn.execute(f"DELETE FROM {prefix}event_rollups WHERE events <= 0")
        conn.execute(
            f"DELETE FROM {prefix}measure_rollups WHERE NOT EXISTS (SELECT 1 FROM {prefix}event_rollups AS e "
            f"WHERE e.tenant_id = {prefix}measure_rollups.tenant_id AND e.{column} = {prefix}measure_rollups.{column} "
            f"AND e.event_name = {prefix}measure_rollups.event_name)"
        )


def add_stored_to_rollups(conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
    """Count the stored rows with first_seq <= seq <= last_seq into the rollups (the backfill)."""
    for statement, _ in ROLLUP_RANGE:
        conn.execute(statement, (first_seq, last_seq))


# The user index (docs/performance.md "Reading at 10M rows"): one row per stored event with an
# external_id, so that one user's events are found without walking back through the table. Kept off
# the hot path: the writer indexes a block of 16,384 seqs once the table has moved past it, in a
# transaction of its own, when it has nothing else to do (and at once when it is two blocks behind).
# Keyed by block first, the entries of a block are appended at the end of the tree (no page of an
# older block is touched again); a look-up is one seek per block. The rows past the last indexed block
# are read from the table. Entries of pruned rows stay until their block is gone: the reader fetches
# rows by seq, and a deleted row is simply not there.
USER_INDEX_BLOCK_BITS = 14
USER_INDEX_BEHIND_BLOCKS = 2  # index at once, even with jobs waiting, when this many blocks are due
USER_INDEX_TABLES = (
    """CREATE TABLE IF NOT EXISTS user_index (
    block INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (block, tenant_id, external_id, seq)
) WITHOUT ROWID""",
    # The users seen per tenant and received UTC day, filled with the same blocks: "distinct users"
    # (the Datasette query) adds up a few rows per user and day instead of reading every event.
    """CREATE TABLE IF NOT EXISTS daily_users (
    tenant_id TEXT NOT NULL,
    day TEXT NOT NULL,
    external_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, day, external_id)
) WITHOUT ROWID""",
)


def indexed_blocks(conn: sqlite3.Connection) -> int:
    """How many blocks the user index covers: every seq below ``blocks << USER_INDEX_BLOCK_BITS``."""
    found = conn.execute("SELECT value FROM meta WHERE key = 'user_index_blocks'").fetchone()
    return int(found[0]) if found else 0


def index_users(conn: sqlite3.Connection, top_seq: int, max_blocks: int = 1) -> int:
    """Index up to ``max_blocks`` complete blocks (inside the caller's write transaction); the blocks now covered.

    A block is complete once a row past it exists (``top_seq``, the newest seq): seqs
    only grow, and the caller holds the write lock.
    """
    blocks = indexed_blocks(conn)
    done = 0
    while done < max_blocks and top_seq >= (blocks + 1) << USER_INDEX_BLOCK_BITS:
        conn.execute(
            "INSERT INTO user_index (block, tenant_id, external_id, seq) "
            "SELECT ?, tenant_id, external_id, seq FROM semantic_events "
            "WHERE seq >= ? AND seq < ? AND external_id IS NOT NULL ORDER BY tenant_id, external_id, seq",
            (blocks, blocks << USER_INDEX_BLOCK_BITS, (blocks + 1) << USER_INDEX_BLOCK_BITS),
        )
        conn.execute(
            # No DISTINCT … ORDER BY: sorting the block cost 2.6 µs a row here, the plain insert 1.
            "INSERT OR IGNORE INTO daily_users (tenant_id, day, external_id) "
            "SELECT tenant_id, substr(received_at, 1, 10), external_id FROM semantic_events "
            "WHERE seq >= ? AND seq < ? AND external_id IS NOT NULL",
            (blocks << USER_INDEX_BLOCK_BITS, (blocks + 1) << USER_INDEX_BLOCK_BITS),
        )
        blocks += 1
        done += 1
    if done:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('user_index_blocks', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(blocks),),
        )
    return blocks


def backfill_rollups(
    path: str,
    chunk_rows: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
    busy_timeout_ms: int = 5_000,
) -> int:
    """Count the rows older than the rollups into them, newest first, ``chunk_rows`` a transaction.

    Runs beside a serving process: each chunk holds the write lock briefly (the
    server's writer waits for it, within its busy timeout), and a stopped
    backfill resumes where it stopped (``meta.rollups_from_seq`` moves down
    with each chunk). ``progress(done, total)`` after each chunk. Returns the
    rows counted.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        with _Transaction(conn):
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'semantic_events'").fetchone() is None:
                raise StoreError(f"{path} has no semantic_events table: is it drengr's database?")
            for statement in ROLLUP_TABLES:
                conn.execute(statement)
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            found = conn.execute("SELECT value FROM meta WHERE key = 'rollups_from_seq'").fetchone()
            if found is None:  # tables made just now: every row is older than them
                top = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM semantic_events").fetchone()[0]
                conn.execute("INSERT INTO meta (key, value) VALUES ('rollups_from_seq', ?)", (str(top),))
            from_seq = int(found[0]) if found else top
            lowest = conn.execute("SELECT coalesce(min(seq), 1) FROM semantic_events").fetchone()[0]
        total = max(0, from_seq - lowest)
        done = 0
        while True:
            with _Transaction(conn):
                from_seq = int(
                    conn.execute("SELECT value FROM meta WHERE key = 'rollups_from_seq'").fetchone()[0]
                )
                if from_seq <= lowest:
                    break
                low = max(lowest, from_seq - chunk_rows)
                add_stored_to_rollups(conn, low, from_seq - 1)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'rollups_from_seq'", (str(low),))
            done += from_seq - low
            if progress is not None:
                progress(done, total)
        return done
    except sqlite3.Error as error:
        raise StoreError(f"cannot backfill the rollups of {path}: {error}") from error
    finally:
        conn.close()


_ROWS_PER_STATEMENT = 512  # 5,632 parameters a statement, below SQLite's 32,766
# A closed generation is dropped at a later rotation only once it has been closed this long by the
# monotonic clock: a generation, less a day for a first write that came late after its boundary. On a
# correct clock it closed at its boundary and a rotation comes at a boundary: every id is kept 7 days.
_DROP_AFTER_SECONDS = (DEDUP_WINDOW_DAYS - 1) * 86_400


@functools.cache
def _insert_statement(rows: int) -> str:
    return f"INSERT INTO semantic_events ({_EVENT_COLUMNS}) VALUES " + ",".join(
        ["(?,?,?,?,?,?,?,?,?,?,?)"] * rows
    )


def insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> int:
    """Multi-row INSERTs; returns the last row's seq.

    Faster than executemany on its own (~1.9 vs ~2.6 µs a row here), and above
    all it steps SQLite once per statement, not once per row: the sqlite3
    module drops the GIL at every step, and under load each retake waits
    behind the request threads. Statements take 512, 256, …, 1 rows (at most
    ten prepared statements, all cached), so 800 rows are three steps.
    """
    cursor = conn.cursor()
    start = 0
    while start < len(rows):
        size = min(_ROWS_PER_STATEMENT, 1 << ((len(rows) - start).bit_length() - 1))
        cursor.execute(
            _insert_statement(size), list(itertools.chain.from_iterable(rows[start : start + size]))
        )
        start += size
    return cursor.lastrowid or 0


def _sqlite_utils() -> Any:
    """sqlite-utils, imported on first use: the writer process never needs it (~8 MB less there)."""
    with without_numpy():  # sqlite-utils imports numpy if installed (to map numpy column types): 12 MB
        import sqlite_utils

    return sqlite_utils


# /health answers 503 with less room than this beside the database: a full disk fails every write
# that needs a new page (ENOSPC, "database or disk is full") while a write lock is still granted.
MIN_FREE_BYTES = 1 << 20


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use on the database's file system (None: unknown)."""
    if path == ":memory:":
        return None
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def generation(received_at_ms: int) -> int:
    return received_at_ms // MS_PER_DAY // DEDUP_WINDOW_DAYS


@dataclass(eq=False)
class _Job:
    tenant_id: str
    rows: list[tuple[Any, ...]]
    received_at_ms: int
    done: threading.Event = field(default_factory=threading.Event)
    outcome: StoreOutcome | None = None
    error: BaseException | None = None
    probe: bool = False  # no rows: BEGIN IMMEDIATE + ROLLBACK proves we can write
    # When its request stops waiting (time.monotonic(), the same clock in every process of the
    # machine): a job not begun by then is not written, since its client was told 502.
    deadline: float = float("inf")


class SQLiteStore:
    """Implements ``drengr.store.base.Store`` on one SQLite file."""

    def __init__(
        self,
        path: str,
        durability: str = "full",
        busy_timeout_ms: int = 5_000,
        clock: Callable[[], float] = clock_now,
        writer: str = "thread",
        writer_cpus: tuple[int, ...] = (),  # the CPUs the writer process may run on; empty: any
        migrate: bool = True,  # False: the file is known to be ready (the writer process's own store)
        elapsed: Callable[[], float] = time.monotonic,  # how long generations stayed (never jumps)
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")
        if writer not in WRITERS:
            raise ValueError(f"writer must be one of {WRITERS}")
        self.path = path
        self._writer_kind = writer
        self._writer_cpus = tuple(writer_cpus)
        self._durability = durability
        self._synchronous = durability.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._clock = clock
        self._local = threading.local()
        self._keys = KeyCache(clock)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=_QUEUE_MAX_JOBS)
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        # The dedup window, owned by the writer thread (see the module docstring).
        self._elapsed = elapsed
        self._generation = -1  # the latest generation the window has rotated to
        self._window: list[Any] = [FingerprintIndex(), FingerprintIndex()]  # current, then closed ones
        self._closed_at: list[float] = [elapsed()]  # when each closed one last took a row (self._elapsed)
        self._current_touched = elapsed()  # when the current one last took a row
        self._last_seq = -1  # -1: not loaded yet
        self._indexed_blocks = 0  # the user index's blocks, as this writer last saw them
        self._index_paused_until = 0.0  # after a failed index step (monotonic)
        self.group_commits = 0  # transactions the writer has committed (group commit is visible in tests)
        self._child: _WriterProcess | None = None  # writer="process"
        self._child_lock = threading.Lock()  # one request at a time hands its job to the child
        self._checkpointer: _Checkpointer | None = None  # started with the first write
        self._turns = _WriterLock(path)  # writers of this file take turns (see there)
        if migrate:
            self._migrate()
        if writer == "process":
            try:  # now, not on the first request: the child takes ~0.1 s to start
                self._child = _WriterProcess(
                    self.path, self._durability, self._busy_timeout_ms, self._writer_cpus
                )
            except Exception as error:  # noqa: BLE001 - tried again with the first write
                log.error("cannot start the writer process: %s", error)

    # ------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self._busy_timeout_ms / 1000,
            check_same_thread=False,
            cached_statements=256,  # the multi-row INSERTs of every size up to 100
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _migrate(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the database at {self.path}: {error}") from error
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            db = _sqlite_utils().Database(conn)
            db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
            db.table("tenants").create(
                {"tenant_id": str, "daily_cap": int, "created_at": str},
                pk="tenant_id",
                not_null={"daily_cap", "created_at"},
                if_not_exists=True,
            )
            db.table("api_keys").create(
                {
                    "key_hash": str, "key_id": str, "tenant_id": str, "kind": str,
                    "created_at": str, "revoked_at": str,
                },
                pk="key_hash",
                not_null={"key_id", "tenant_id", "kind", "created_at"},
                foreign_keys=[("tenant_id", "tenants", "tenant_id")],
                if_not_exists=True,
            )  # fmt: skip
            db.table("daily_usage").create(
                {"tenant_id": str, "day": int, "events": int},
                pk=("tenant_id", "day"),
                not_null={"events"},
                if_not_exists=True,
            )
            # Column types and NOT NULL as docs/mapping.md "The semantic_events table", plus `seq`: an
            # always-increasing key the dedup window points at (no other index).
            conn.execute(
                """CREATE TABLE IF NOT EXISTS semantic_events (
                    tenant_id TEXT NOT NULL,
                    event_id TEXT NOT NULL,
                    event_name TEXT NOT NULL,
                    event_type TEXT NOT NULL,
                    external_id TEXT,
                    install_id TEXT NOT NULL,
                    occurred_at TEXT NOT NULL,
                    received_at TEXT NOT NULL,
                    dims TEXT NOT NULL,
                    measures TEXT NOT NULL,
                    library TEXT,
                    seq INTEGER PRIMARY KEY AUTOINCREMENT
                )"""
            )
            tables = db.table_names()
            if "event_rollups" not in tables:
                for statement in ROLLUP_TABLES:
                    conn.execute(statement)
                # Rows already here are not in the rollups yet: the reader scans until a backfill.
                first = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM semantic_events").fetchone()[0]
                db.table("meta").upsert({"key": "rollups_from_seq", "value": str(first)}, pk="key")
            elif "hourly_event_rollups" not in tables:  # a file from before the hourly grain
                for statement in ROLLUP_TABLES:
                    conn.execute(statement)
                for statement in HOURLY_FROM_MINUTES:  # the minutes' rows, added up by hour
                    conn.execute(statement)
            if "user_index" not in tables:  # rows already here are indexed by the writer, block by block
                for statement in USER_INDEX_TABLES:
                    conn.execute(statement)
                first = conn.execute("SELECT coalesce(min(seq), 0) FROM semantic_events").fetchone()[0]
                db.table("meta").upsert(
                    {"key": "user_index_blocks", "value": str(first >> USER_INDEX_BLOCK_BITS)}, pk="key"
                )
            # What was accepted but not stored, by tenant, UTC day and reason (drengr.drops).
            db.table("drop_counts").create(
                {"tenant_id": str, "day": int, "reason": str, "count": int},
                pk=("tenant_id", "day", "reason"),
                not_null={"count"},
                if_not_exists=True,
            )
            # Version 1 files lack `library` (context.library, an extra column): older
            # rows keep NULL there.
            if "library" not in db.table("semantic_events").columns_dict:
                conn.execute("ALTER TABLE semantic_events ADD COLUMN library TEXT")
            # The tenant's PII allow-list (tenants set --pii-allow): a JSON array of exact key names.
            if "pii_allow" not in db.table("tenants").columns_dict:
                conn.execute("ALTER TABLE tenants ADD COLUMN pii_allow TEXT")
            db.table("meta").upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key")
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"cannot prepare the database at {self.path}: {error}") from error
        finally:
            conn.close()

    # ------------------------------------------------------------ keys

    def lookup_key(self, key_hash: str) -> KeyRecord | None:
        return self._keys.get(key_hash, self._load_key)

    def _load_key(self, key_hash: str) -> KeyRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT k.key_hash, k.tenant_id, k.kind, k.revoked_at, t.pii_allow "
                "FROM api_keys k LEFT JOIN tenants t USING (tenant_id) WHERE k.key_hash = ?",
                (key_hash,),
            )
            .fetchone()
        )
        return (
            None
            if row is None
            else KeyRecord(row[0], row[1], row[2], row[3] is not None, allow_names(row[4]))
        )

    def _admin(self) -> "sqlite_utils.Database":
        return _sqlite_utils().Database(self._reader())

    def is_new(self) -> bool:
        db = self._admin()
        return db.table("tenants").count == 0 and db.table("api_keys").count == 0

    def _ensure_tenant(self, conn: sqlite3.Connection, tenant_id: str) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO tenants (tenant_id, daily_cap, created_at) VALUES (?, ?, ?)",
            (tenant_id, DEFAULT_DAILY_CAP_EVENTS, self._now_text()),
        )

    def _now_text(self) -> str:
        return format_ms(int(self._clock() * 1000))

    def create_key(self, tenant_id: str, kind: str = "publishable") -> str:
        if kind not in KEY_KINDS:
            raise ValueError(f"kind must be one of {', '.join(KEY_KINDS)}")
        key = new_key(kind, secrets.token_bytes(24))
        digest = hash_key(key)
        with self._admin_transaction() as conn:
            self._ensure_tenant(conn, tenant_id)
            conn.execute(
                "INSERT INTO api_keys (key_hash, key_id, tenant_id, kind, created_at) VALUES (?,?,?,?,?)",
                (digest, digest[:12], tenant_id, kind, self._now_text()),
            )
        return key

    def list_keys(self) -> list[KeyInfo]:
        rows = self._reader().execute(
            "SELECT key_id, tenant_id, kind, created_at, revoked_at FROM api_keys ORDER BY created_at, key_id"
        )
        return [KeyInfo(*row) for row in rows]

    def tenants(self) -> list[str]:
        return [row[0] for row in self._reader().execute("SELECT tenant_id FROM tenants ORDER BY tenant_id")]

    def revoke_key(self, key_or_id: str) -> bool:
        """Revoke by the key itself or by the key_id `keys list` shows."""
        digest = hash_key(key_or_id)
        with self._admin_transaction() as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE (key_hash = ? OR key_id = ?) AND revoked_at IS NULL",
                (self._now_text(), digest, key_or_id),
            )
            changed = cursor.rowcount > 0
        self._keys.clear()
        return changed

    def prune_events(
        self,
        before_ms: int,
        batch_rows: int = PRUNE_BATCH_ROWS,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Delete the events received before ``before_ms``, ``batch_rows`` a transaction; returns how many.

        Walks ``seq`` upwards (rows arrive in time order) and stops at the first
        batch with nothing old in it. Each batch takes the writers' turn and a
        ``BEGIN IMMEDIATE`` of its own, so a server writing meanwhile waits for
        one batch at most. Daily usage and drop counts of the days before the
        cut-off go too (the cap counts only today). Freed pages are reused by
        new rows; the file does not shrink (docs/operating.md "Retention").
        """
        cutoff = format_ms(before_ms)
        conn = self._connect()
        try:
            total = conn.execute(
                "SELECT count(*) FROM semantic_events WHERE received_at < ?", (cutoff,)
            ).fetchone()[0]
            deleted = last_seq = 0
            while True:
                with self._turn(conn):
                    batch = conn.execute(
                        "SELECT seq, received_at < ? FROM semantic_events WHERE seq > ? ORDER BY seq LIMIT ?",
                        (cutoff, last_seq, batch_rows),
                    ).fetchall()
                    old = [seq for seq, is_old in batch if is_old]
                    if old:
                        remove_from_rollups(conn, old)  # the read side forgets them in the same transaction
                        conn.execute(
                            f"DELETE FROM semantic_events WHERE seq IN ({','.join('?' * len(old))})", old
                        )
                deleted += len(old)
                if progress is not None:
                    progress(deleted, max(total, deleted))
                if not old:
                    break
                last_seq = batch[-1][0]
            day = before_ms // MS_PER_DAY
            with self._turn(conn):
                conn.execute("DELETE FROM daily_usage WHERE day < ?", (day,))
                conn.execute("DELETE FROM drop_counts WHERE day < ?", (day,))
                tidy_rollups(conn)
                conn.execute("DELETE FROM daily_users WHERE day < ?", (cutoff[:10],))
                # The user index's blocks below the oldest row left hold only pruned rows.
                conn.execute(
                    f"DELETE FROM user_index WHERE block < "
                    f"(SELECT coalesce(min(seq), 0) FROM semantic_events) >> {USER_INDEX_BLOCK_BITS}"
                )
            return deleted
        except sqlite3.Error as error:
            raise StoreError(f"prune failed: {error}") from error
        finally:
            conn.close()

    @contextlib.contextmanager
    def _turn(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One short write transaction, in the writers' turn (as the writer's own groups are)."""
        turn = self._turns.acquire(self._busy_timeout_ms / 1000)
        if turn is None:
            raise StoreError("another writer held the database's writer lock past the busy timeout")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            self._turns.release(turn)

    def set_pii_allow(self, tenant_id: str, names: tuple[str, ...]) -> None:
        with self._admin_transaction() as conn:
            self._ensure_tenant(conn, tenant_id)
            conn.execute(
                "UPDATE tenants SET pii_allow = ? WHERE tenant_id = ?", (allow_text(names), tenant_id)
            )
        self._keys.clear()

    def pii_allow(self, tenant_id: str) -> tuple[str, ...]:
        row = (
            self._reader()
            .execute("SELECT pii_allow FROM tenants WHERE tenant_id = ?", (tenant_id,))
            .fetchone()
        )
        return () if row is None else allow_names(row[0])

    def set_daily_cap(self, tenant_id: str, daily_cap: int) -> None:
        with self._admin_transaction() as conn:
            self._ensure_tenant(conn, tenant_id)
            conn.execute("UPDATE tenants SET daily_cap = ? WHERE tenant_id = ?", (daily_cap, tenant_id))

    def add_drop_counts(self, counts: dict[tuple[str, int, str], int]) -> None:
        """Add to drop_counts by (tenant_id, day, reason): one short write transaction."""
        try:
            with self._admin_transaction() as conn:
                conn.executemany(
                    "INSERT INTO drop_counts (tenant_id, day, reason, count) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (tenant_id, day, reason) DO UPDATE SET count = count + excluded.count",
                    [(*key, count) for key, count in counts.items()],
                )
        except sqlite3.Error as error:
            raise StoreError(f"cannot save drop counts: {error}") from error

    def drop_counts(self, tenant_id: str) -> dict[str, int]:
        try:
            rows = self._reader().execute(
                "SELECT reason, sum(count) FROM drop_counts WHERE tenant_id = ? GROUP BY reason", (tenant_id,)
            )
            return {reason: int(total) for reason, total in rows}
        except sqlite3.Error as error:
            raise StoreError(f"cannot read drop counts: {error}") from error

    def _admin_transaction(self) -> "_Transaction":
        return _Transaction(self._reader())

    # ------------------------------------------------------------ writes

    def write(self, tenant_id: str, rows: list[tuple[Any, ...]], received_at_ms: int) -> StoreOutcome:
        job = _Job(tenant_id, rows, received_at_ms)
        if not self._submit(job, self._busy_timeout_ms / 1000):
            raise StoreError("the writer did not answer within the busy timeout")
        if job.outcome is None:
            raise StoreError(str(job.error))
        return job.outcome

    def writable(self, timeout: float | None = None) -> bool:
        """Whether a write would go through now: the writer takes the write lock within ``timeout``
        (at most the busy timeout) and the file system has room (``MIN_FREE_BYTES``)."""
        limit = self._busy_timeout_ms / 1000
        job = _Job("", [], int(self._clock() * 1000), probe=True)
        if not self._submit(job, limit if timeout is None else min(timeout, limit)):
            log.warning("store not writable: the writer did not answer the probe in time")
            return False
        if job.error is not None:
            return False
        free = free_bytes(self.path)
        if free is not None and free < MIN_FREE_BYTES:
            log.warning("store not writable: %d bytes free beside %s", free, self.path)
            return False
        return True

    def _submit(self, job: _Job, timeout: float) -> bool:
        """Hand ``job`` to the writer; True once it is answered, False if ``timeout`` s passed first.

        Every wait here is bounded: a stalled writer (stopped, an fsync that
        hangs) costs its requests a 502 after the busy timeout, not a hang. A job
        answered late is harmless: the client was told 502 and resends, and a
        resend of what was committed is a duplicate.
        """
        deadline = job.deadline = time.monotonic() + timeout
        if self._writer_kind == "process":
            # Straight into the pipe, no hop through a thread: the child commits every job
            # already waiting there in one transaction, which is the group commit.
            if not self._child_lock.acquire(timeout=timeout):
                return False
            try:
                child = self._ready_child(deadline)
                if child is None:
                    return False
                child.submit([job], self._committed, deadline)  # its answer completes the job
            finally:
                self._child_lock.release()
        else:
            self._start_writer()
            try:
                self._queue.put(job, timeout=timeout)
            except queue.Full:  # a stalled writer, its queue full of jobs whose requests gave up
                return False
        return job.done.wait(max(0.0, deadline - time.monotonic()))

    def _start_writer(self) -> None:
        if self._writer is not None:
            return
        with self._writer_lock:
            if self._writer is None:
                thread = threading.Thread(target=self._write_loop, name="drengr-writer", daemon=True)
                thread.start()
                self._writer = thread

    def close(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                with contextlib.suppress(queue.Full):  # a stalled writer: the join below gives up too
                    self._queue.put(None, timeout=30)
                self._writer.join(timeout=30)
                self._writer = None
            if self._checkpointer is not None:
                self._checkpointer.stop()
                self._checkpointer = None
            self._turns.close()  # the writer thread is done with it
        with self._child_lock:
            if self._child is not None:
                self._child.stop()
                self._child = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid (``writer="process"``), None while there is none."""
        child = self._child
        return None if child is None else child.pid

    def _write_loop(self) -> None:
        """The writer thread (``writer="thread"``): take what is waiting, commit it as one group."""
        conn: sqlite3.Connection | None = None
        while True:
            if self._users_due() > 0 and self._queue.empty():
                conn = self._index_step(conn)  # nothing waiting: one block of the user index
                continue
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = take_group(self._queue, first, GROUP_MAX_ROWS)
            try:
                conn = self._commit_jobs(conn, jobs)
            finally:
                for job in jobs:
                    job.done.set()
            if stop:
                break
        if conn is not None:
            conn.close()

    def _ready_child(self, deadline: float) -> "_WriterProcess | None":
        """A live writer process with room for one more job (reserved); None if none can start
        or none has room before ``deadline`` (monotonic).

        A dead or broken one (its groups already failed: 502) is replaced.
        """
        while time.monotonic() < deadline:
            if self._child is not None and self._child.failed:
                self._child.stop()
                self._child = None
            if self._child is None:
                try:
                    self._child = _WriterProcess(
                        self.path, self._durability, self._busy_timeout_ms, self._writer_cpus
                    )
                except Exception as error:  # noqa: BLE001 - this group fails, the next tries again
                    log.error("cannot start the writer process: %s", error)
                    return None
            if self._child.reserve(deadline):
                return self._child
            if self._child.failed is None:
                return None  # no room before the deadline: a stalled writer
        return None

    def _committed(self, commits: int) -> None:
        self.group_commits += commits  # only the writer process's receiver thread adds

    def _commit_jobs(self, conn: sqlite3.Connection | None, jobs: list[_Job]) -> sqlite3.Connection | None:
        """One group in one transaction; on failure every job gets the error. Returns the connection to reuse."""
        try:
            if conn is None:
                conn = self._connect()
                conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_FALLBACK_PAGES}")
            turn = self._turns.acquire(self._busy_timeout_ms / 1000)
            if turn is None:
                raise StoreError("another writer held the database's writer lock past the busy timeout")
            try:
                self._commit_group(conn, jobs)
            finally:
                self._turns.release(turn)
            if self._checkpointer is None:
                self._checkpointer = _Checkpointer(self._connect)
            self._checkpointer.wrote(conn, sum(len(job.rows) for job in jobs))
            if self._users_due() >= USER_INDEX_BEHIND_BLOCKS:  # never busy enough to be idle
                conn = self._index_step(conn)
        except Exception as error:  # the whole group failed: every request gets 502
            log.error("write transaction failed: %s", error)
            metrics.count("store_errors", "write")
            for job in jobs:
                job.outcome, job.error = None, error
            if conn is not None:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                conn.close()
                conn = None  # reconnect next time: the file may have changed under us
        return conn

    def _users_due(self) -> int:
        """Complete blocks of rows the user index has not taken yet, as far as this writer knows."""
        if self._last_seq < 0 or time.monotonic() < self._index_paused_until:
            return 0
        return (self._last_seq >> USER_INDEX_BLOCK_BITS) - self._indexed_blocks

    def _index_step(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Index the next complete block of the user index, in a transaction of its own."""
        try:
            if conn is None:
                conn = self._connect()
                conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_FALLBACK_PAGES}")
            turn = self._turns.acquire(self._busy_timeout_ms / 1000)
            if turn is None:
                raise StoreError("another writer held the database's writer lock past the busy timeout")
            try:
                before = self._indexed_blocks
                with _Transaction(conn):
                    top = conn.execute("SELECT coalesce(max(seq), 0) FROM semantic_events").fetchone()[0]
                    self._indexed_blocks = index_users(conn, top)
                if self._indexed_blocks <= before:  # nothing was due after all (rows deleted under us)
                    self._index_paused_until = time.monotonic() + 5
            finally:
                self._turns.release(turn)
        except (sqlite3.Error, StoreError) as error:
            log.warning("cannot index users now (tried again in 5 s): %s", error)
            self._index_paused_until = time.monotonic() + 5
        return conn

    def _commit_group(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        """One transaction for the whole group, in as few statements as possible.

        Every statement drops and retakes the GIL; under load each retake waits
        behind the request threads, so the writer states the group at once: one
        metering read and write per tenant and day, and multi-row INSERTs for all
        its rows. Should a statement fail because of a job's rows, the group
        starts over with one savepoint a job, so that job fails alone.
        """
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")  # may wait in SQLite's busy handler, past some jobs' deadlines
        now = time.monotonic()
        for job in jobs:
            # Its request has answered 502 already: written now, it would be a surprise.
            if job.deadline <= now:
                job.outcome, job.error = None, StoreError("not written: its request stopped waiting")
        work = [job for job in jobs if not job.probe and job.deadline > now]
        if not work:
            conn.execute("ROLLBACK")
            return
        self._catch_up(conn, max(job.received_at_ms for job in work))
        try:
            additions = self._apply_group(conn, work, {})
        except _JOB_ERRORS as error:
            log.warning("a group write failed (%s); writing its jobs one by one", error)
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            additions = self._apply_each(conn, work)
        conn.execute("COMMIT")
        self.group_commits += 1
        current = self._window[0]
        for fps, first_seq in additions:
            current.add_many(fps, array("q", range(first_seq, first_seq + len(fps))))
            self._last_seq = max(self._last_seq, first_seq + len(fps) - 1)
        metrics.metric("commit_seconds").observe(time.perf_counter() - started)
        metrics.metric("group_rows").observe(sum(len(job.rows) for job in work))
        metrics.metric("dedup_ids").set(sum(len(index) for index in self._window))

    def _apply_group(
        self, conn: sqlite3.Connection, jobs: list[_Job], staged: dict[str, set[str]]
    ) -> list[tuple[array, int]]:
        """Dedup and meter every job in order, then insert all their rows; (fingerprints, first seq) a job.

        ``staged`` holds, per tenant, the event ids written earlier in this transaction; it is updated.
        """
        meter = _Meter(conn)
        planned = []
        for job in jobs:
            fresh, ids, keys, duplicates = self._fresh(conn, job, staged)
            allowed = meter.take(job.tenant_id, job.received_at_ms // MS_PER_DAY, len(fresh))
            if allowed < len(fresh):
                fresh, ids, keys = fresh[:allowed], ids[:allowed], keys[:allowed]
            job.outcome = StoreOutcome(
                stored=len(fresh), duplicates=duplicates, over_cap=len(job.rows) - duplicates - len(fresh)
            )
            if fresh:
                staged.setdefault(job.tenant_id, set()).update(ids)
                planned.append((fresh, keys))
        meter.save()
        rows = [row for fresh, _keys in planned for row in fresh]
        if not rows:
            return []
        last = insert_events(conn, rows)
        seq = last - len(rows) + 1  # AUTOINCREMENT under our write lock: consecutive
        add_to_rollups(conn, [fresh for fresh, _keys in planned])
        additions = []
        for fresh, keys in planned:
            additions.append((keys, seq))
            seq += len(fresh)
        return additions

    def _apply_each(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[array, int]]:
        """The slow path: one savepoint a job, so a failing job gets its error and the others are written."""
        additions = []
        staged: dict[str, set[str]] = {}
        for job in jobs:
            attempt = {tenant_id: set(ids) for tenant_id, ids in staged.items()}
            conn.execute("SAVEPOINT job")
            try:
                added = self._apply_group(conn, [job], attempt)
                conn.execute("RELEASE job")
            except _JOB_ERRORS as error:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                job.outcome, job.error = None, error
                continue
            staged = attempt
            additions += added
        return additions

    def _catch_up(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Bring the window up to date: load it on first use, rotate it, read others' rows.

        ``now_ms`` is the group's latest time of receipt: the window follows the
        clock that stamps the rows, the one that ``received_at`` shows.
        """
        current_generation = generation(now_ms)
        if self._last_seq < 0:
            self._load_window(conn, now_ms)
        elif current_generation > self._generation:
            self._rotate(current_generation, now_ms)
        # A clock gone back (current_generation < self._generation) changes nothing: its rows join
        # the current generation, and nothing is forgotten until the clock passes it again.
        self._current_touched = self._elapsed()
        current = self._window[0]
        for seq, tenant_id, event_id in conn.execute(
            "SELECT seq, tenant_id, event_id FROM semantic_events WHERE seq > ? ORDER BY seq",
            (self._last_seq,),
        ):
            current.add(fingerprint(tenant_id, event_id), seq)
            self._last_seq = seq

    def _rotate(self, current_generation: int, now_ms: int) -> None:
        """The clock entered a later generation: close the current one; drop those closed long ago.

        Whole generations are dropped, and only those closed ``_DROP_AFTER_SECONDS``
        ago by the monotonic clock. The one closing now closed when the clock
        says its generation ended, but never before it took its last row: ids
        written on its first day and nothing after are still caught a week
        later, and a wall clock that jumps ahead drops nothing.
        """
        now = self._elapsed()
        ended_ms = (self._generation + 1) * DEDUP_WINDOW_DAYS * MS_PER_DAY
        closing = max(self._current_touched, now - (now_ms - ended_ms) / 1000)
        kept = [
            (index, closed_at)
            for index, closed_at in zip(self._window, [closing, *self._closed_at], strict=True)
            if now - closed_at < _DROP_AFTER_SECONDS
        ]
        self._window = [FingerprintIndex(), *(index for index, _ in kept)]
        self._closed_at = [closed_at for _, closed_at in kept]
        self._generation = current_generation

    def _load_window(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Index the rows received in the current and previous generation (start-up).

        "Current" is the clock's, unless the newest stored row is older: a clock
        that runs ahead at start-up still loads the rows received before it jumped.
        """
        window_ms = DEDUP_WINDOW_DAYS * MS_PER_DAY
        current_generation = generation(now_ms)
        newest = conn.execute("SELECT received_at FROM semantic_events ORDER BY seq DESC LIMIT 1").fetchone()
        newest_ms = parse_ms(newest[0]) if newest else None
        newest_generation = current_generation if newest_ms is None else generation(newest_ms)
        boundary = format_ms(current_generation * window_ms)
        # A day of margin: processes' clocks and commit order may disagree by a little.
        start = format_ms((min(current_generation, newest_generation) - 1) * window_ms - MS_PER_DAY)
        first_seq = self._first_seq_received_since(conn, start)
        current, previous = FingerprintIndex(), FingerprintIndex()
        last = 0
        for seq, tenant_id, event_id, received_at in conn.execute(
            "SELECT seq, tenant_id, event_id, received_at FROM semantic_events WHERE seq >= ? ORDER BY seq",
            (first_seq,),
        ):
            (current if received_at >= boundary else previous).add(fingerprint(tenant_id, event_id), seq)
            last = seq
        top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'semantic_events'").fetchone()
        now = self._elapsed()
        if current_generation - newest_generation in (0, 1):
            # The clock agrees with the table: the previous generation closed at its boundary.
            closed_at = now - (now_ms - current_generation * window_ms) / 1000
        else:  # the clock disagrees with the table: trust only the time this process will see
            closed_at = now
        self._window = [current, previous]
        self._closed_at = [closed_at]
        self._current_touched = now
        self._generation = current_generation
        self._last_seq = max(last, top[0] if top else 0)

    @staticmethod
    def _first_seq_received_since(conn: sqlite3.Connection, since: str) -> int:
        """Binary search on seq: rows are appended in (nearly) received order."""
        low_row = conn.execute("SELECT min(seq), max(seq) FROM semantic_events").fetchone()
        low, high = low_row if low_row[0] is not None else (1, 0)
        while low <= high:
            middle = (low + high) // 2
            row = conn.execute(
                "SELECT seq, received_at FROM semantic_events WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)
            ).fetchone()
            if row[1] < since:
                low = row[0] + 1
            else:
                high = middle - 1
        return low

    def _is_stored(self, conn: sqlite3.Connection, key: int, tenant_id: str, event_id: str) -> bool:
        for index in self._window:
            for seq in index.candidates(key):
                found = conn.execute(
                    "SELECT tenant_id, event_id FROM semantic_events WHERE seq = ?", (seq,)
                ).fetchone()
                if found == (tenant_id, event_id):
                    return True
        return False

    def _fresh(
        self, conn: sqlite3.Connection, job: _Job, staged: dict[str, set[str]]
    ) -> tuple[list[tuple[Any, ...]], list[str], array, int]:
        """The job's rows not yet stored (nor written earlier in this transaction): rows, ids, fingerprints, duplicates."""
        tenant_id, rows = job.tenant_id, job.rows
        keys = fingerprints(tenant_id, rows, 1)
        hits = set(itertools.chain.from_iterable(index.hits(keys) for index in self._window))
        ids = [row[1] for row in rows]
        already = staged.get(tenant_id)
        if not hits and len(set(ids)) == len(ids) and (not already or already.isdisjoint(ids)):
            return rows, ids, keys, 0  # the usual case: nothing to drop
        seen: set[str] = set(already or ())
        positions = []
        for position, event_id in enumerate(ids):
            if event_id in seen:
                continue  # repeated inside this transaction
            if position in hits and self._is_stored(conn, keys[position], tenant_id, event_id):
                continue
            seen.add(event_id)
            positions.append(position)
        return (
            [rows[p] for p in positions],
            [ids[p] for p in positions],
            array("Q", [keys[p] for p in positions]),
            len(rows) - len(positions),
        )


class _WriterLock:
    """Writers of one database file take turns at an OS lock, not in SQLite's busy handler.

    Each transaction of the writer (thread or process) holds ``flock`` on
    ``<database>-writer.lock``. Without it, a writer that finds SQLite's write
    lock taken (gunicorn's other worker, another ``serve`` on the file) sleeps
    in SQLite's busy handler, 1, 2, 5, … then 25-100 ms between tries, while
    the holder, its next group already waiting, takes the lock again
    microseconds after releasing it: two gunicorn workers answered 100-event
    batches with a p99 of 0.9-3.1 s. ``flock`` queues the waiter in the kernel
    and wakes it at the release: p99 0.18-0.27 s (docs/performance.md).

    The wait stays bounded by the busy timeout (then the group fails with
    ``502``, as a busy SQLite lock would): it happens on a helper thread, which
    hands the lock over if its writer still wants it and gives it back if not.
    Where the lock file cannot be opened (a read-only directory, ``:memory:``)
    writers fall back to SQLite's busy handler alone.
    """

    _NONE = -1  # the "turn" of a writer without a lock file

    def __init__(self, database: str) -> None:
        self._path = None if database == ":memory:" else database + "-writer.lock"
        self._fd: int | None = None  # opened once: the uncontended turn is two flock calls
        self._state = threading.Lock()
        self._waiter = False  # a helper thread is blocked in flock
        self._wanted = False  # and our writer is waiting for what it gets
        self._granted: int | None = None
        self._ready = threading.Event()

    def acquire(self, timeout: float) -> int | None:
        """A turn to write (give it to ``release``), or None if the lock stayed taken ``timeout`` s."""
        with self._state:
            if not self._waiter:
                if self._fd is None:
                    self._fd = self._open()
                    if self._fd is None:
                        return self._NONE
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return self._fd
                except BlockingIOError:  # taken: wait in the kernel's queue, on a helper thread
                    pass
                fd = self._open()  # a description of its own: the lock it gets is its writer's
                if fd is None:
                    return self._NONE
                self._ready.clear()
                helper = threading.Thread(
                    target=self._wait, args=(fd,), name="drengr-writer-lock", daemon=True
                )
                try:
                    helper.start()  # it takes self._state before anything else: after we let go
                except BaseException:
                    os.close(fd)
                    raise
                self._waiter = True
            self._wanted = True
        self._ready.wait(timeout)
        with self._state:
            self._wanted = False
            fd, self._granted = self._granted, None
        return fd

    def release(self, turn: int) -> None:
        if turn == self._fd:
            fcntl.flock(turn, fcntl.LOCK_UN)
        elif turn != self._NONE:
            os.close(turn)  # a helper's description: closing it releases its flock

    def close(self) -> None:
        with self._state:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self) -> int | None:
        if self._path is None:
            return None
        try:
            return os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            log.warning("no writer lock (%s): writers wait in SQLite's busy handler", error)
            self._path = None
            return None

    def _wait(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            with self._state:
                self._waiter = False
                self._ready.set()  # nothing granted: its writer fails now, not at the timeout
            return
        with self._state:
            self._waiter = False
            if self._wanted:
                self._granted = fd
                self._ready.set()
                return
        os.close(fd)  # its writer gave up meanwhile: give the lock back


class _Checkpointer:
    """Copies the WAL back into the database from a thread of its own, off the writer's path.

    A checkpoint is one sqlite3 call, so it runs without the GIL: on a second
    core it costs the writer nothing (inline, SQLite's auto-checkpoint took
    ~20 % of the write path's time). PASSIVE: it never blocks the writer or a
    reader. But beside a busy writer it never finishes the whole log, and only
    a finished log starts over, so once the log holds ``_WAL_RESTART_FRAMES``
    the writer itself checkpoints after its next commit: it copies the few
    pages left, and its next transaction starts the log over. The writer
    connection keeps an auto-checkpoint at a much larger WAL size, should this
    thread fall behind.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._pending = 0
        self._restart = False  # the log is long: the writer finishes it after its next commit
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="drengr-checkpoint", daemon=True)
        self._thread.start()

    def wrote(self, conn: sqlite3.Connection, rows: int) -> None:
        """The writer, after each commit: count rows; finish the log itself when it is long."""
        self._pending += rows
        if self._pending >= _CHECKPOINT_EVERY_ROWS:
            self._pending = 0
            self._wake.set()
        if self._restart:
            # Copies only what the thread has not (a few pages), and completes: nobody else
            # writes meanwhile. The next transaction then starts the log over. The group is
            # committed already: a failure here must not turn its answers into 502s.
            try:
                _busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as error:
                log.warning("checkpoint after commit failed: %s", error)
                return
            self._restart = done < frames  # the thread held the checkpoint lock: next commit

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                if conn is None:
                    conn = self._connect()
                _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self._restart = frames >= _WAL_RESTART_FRAMES
            except sqlite3.Error as error:  # the writer's fallback auto-checkpoint covers us
                log.warning("background checkpoint failed: %s", error)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)


class _Meter:
    """Daily caps for one transaction: each (tenant, day) read once, counted in order, saved once. Fails open."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._left: dict[tuple[str, int], int | None] = {}  # None: cannot be metered, let through
        self._taken: dict[tuple[str, int], int] = {}

    def take(self, tenant_id: str, day: int, wanted: int) -> int:
        """How many of ``wanted`` new events fit under the day's cap; counts them."""
        if wanted == 0:
            return 0
        key = (tenant_id, day)
        if key not in self._left:
            self._left[key] = self._read(tenant_id, day)
        left = self._left[key]
        if left is None:
            return wanted
        allowed = max(0, min(wanted, left))
        self._left[key] = left - allowed
        self._taken[key] = self._taken.get(key, 0) + allowed
        return allowed

    def _read(self, tenant_id: str, day: int) -> int | None:
        try:
            cap_row = self._conn.execute(
                "SELECT daily_cap, (SELECT events FROM daily_usage WHERE tenant_id = ?1 AND day = ?2) "
                "FROM tenants WHERE tenant_id = ?1",
                (tenant_id, day),
            ).fetchone()
            if cap_row is None:  # a tenant without a row: the default cap, today's usage still counted
                used_row = self._conn.execute(
                    "SELECT events FROM daily_usage WHERE tenant_id = ? AND day = ?", (tenant_id, day)
                ).fetchone()
                cap_row = (DEFAULT_DAILY_CAP_EVENTS, None if used_row is None else used_row[0])
        except sqlite3.Error as error:
            log.warning("metering failed, ingesting anyway (fail open): %s", error)
            return None
        cap, used = cap_row
        return cap - (used or 0)

    def save(self) -> None:
        """Add what was taken to ``daily_usage``; on failure the events stay (fail open)."""
        if not any(self._taken.values()):
            return
        self._conn.execute("SAVEPOINT meter")
        try:
            self._conn.executemany(
                "INSERT INTO daily_usage (tenant_id, day, events) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant_id, day) DO UPDATE SET events = events + excluded.events",
                [(tenant_id, day, taken) for (tenant_id, day), taken in self._taken.items() if taken],
            )
            self._conn.execute("RELEASE meter")
        except sqlite3.Error as error:
            self._conn.execute("ROLLBACK TO meter")
            self._conn.execute("RELEASE meter")
            log.warning("metering failed, ingesting anyway (fail open): %s", error)


class _WriterProcess:
    """The child that owns the write connection when ``writer="process"``: one job a message.

    A fresh interpreter (``subprocess``, never a fork of a process that runs
    threads) that puts SQLite in multi-thread mode (``drengr._sqlite_lib``)
    and imports only this module, talking over one end of a socket
    pair: not ``multiprocessing``'s spawn, which re-imports the server's
    ``__main__`` in the child and starts a resource-tracker process beside
    it (~19 MB between them). The socket carries ``[(tenant_id, rows,
    received_at_ms, probe, deadline), …]`` one way and ``([[(outcome, error text), …],
    …], commits)`` back, in order, as ``marshal`` bytes framed by
    ``multiprocessing.connection`` (plain values only: about twice as fast as
    pickle, and both ends are this module). Up to ``IN_FLIGHT`` messages are
    in flight; the child commits every message already waiting in one
    transaction and answers them in one message, which a receiver thread
    here completes.
    """

    IN_FLIGHT = 64

    def __init__(self, path: str, durability: str, busy_timeout_ms: int, cpus: tuple[int, ...] = ()) -> None:
        ours, theirs = socket.socketpair()
        code = (
            f"import sys; sys.path.insert(0, {_CODE_ROOT!r}); "
            "from drengr._sqlite_lib import unlock_connections; unlock_connections(); "  # before sqlite3
            "from drengr.store.sqlite import _writer_main; "
            f"_writer_main({theirs.fileno()}, {path!r}, {durability!r}, {busy_timeout_ms!r}, {cpus!r}, "
            f"{current_log_format()!r})"
        )
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # not serve's stdout, where a new database's key is printed
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child's end lives in the child only: its exit is our EOF
        # Answers arrive through a Connection (blocking reads, on the receiver thread); jobs leave
        # through the socket itself, written without blocking (_send), so a stalled child cannot
        # hold a request past its deadline. Both are the same socket: the child's exit is our EOF.
        self._socket = ours
        self._pipe = Connection(os.dup(ours.fileno()))
        self.pid = self._process.pid
        self.failed: BaseException | None = None
        self._in_flight: collections.deque[tuple[list[_Job], Callable[[int], None]]] = collections.deque()
        self._lock = threading.Lock()
        self._room = threading.Semaphore(self.IN_FLIGHT)
        self._receiver = threading.Thread(target=self._receive, name="drengr-writer-answers", daemon=True)
        self._receiver.start()

    def reserve(self, deadline: float) -> bool:
        """Wait for room for one more group until ``deadline`` (monotonic); False if the child
        failed meanwhile or no room came (room not kept)."""
        while not self._room.acquire(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
            if self.failed is not None or time.monotonic() >= deadline:
                return False
        if self.failed is not None:
            self._room.release()
            return False
        return True

    def submit(self, jobs: list[_Job], committed: Callable[[int], None], deadline: float) -> None:
        """Send jobs (after ``reserve``, one sender at a time); completed (outcome or error, then ``done``) when answered.

        A child that does not take the message by ``deadline`` (monotonic) is
        stalled: it is killed (a half-sent message cannot be taken back) and its
        jobs fail; the next job starts a new one.
        """
        with self._lock:
            if self.failed is not None:
                self._room.release()
                _fail(jobs, self.failed)
                return
            self._in_flight.append((jobs, committed))
        try:
            self._send(
                marshal.dumps(
                    [(job.tenant_id, job.rows, job.received_at_ms, job.probe, job.deadline) for job in jobs]
                ),
                deadline,
            )
        except TimeoutError as error:
            log.error("writer process %d took no job within the busy timeout: killed", self.pid)
            self._fail_all(error)
            self._process.kill()  # a stopped process dies too; its open transaction rolls back
        except Exception as error:  # noqa: BLE001 - the child is gone: fail what it holds
            self._fail_all(error)

    def _send(self, payload: bytes, deadline: float) -> None:
        """One message, framed as ``Connection.send_bytes`` frames it, without blocking past ``deadline``."""
        poller = select.poll()
        poller.register(self._socket, select.POLLOUT)
        for part in (struct.pack("!i", len(payload)), payload):
            view = memoryview(part)
            while view:
                try:
                    sent = self._socket.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the writer process took no job in time") from None
                    poller.poll(left * 1000)
                    continue
                view = view[sent:]

    def _receive(self) -> None:
        while True:
            try:
                answers, commits = marshal.loads(self._pipe.recv_bytes())
            except Exception as error:  # noqa: BLE001 - EOF: the child died (or stop() closed the pipe)
                self._fail_all(error)
                return
            with self._lock:
                groups = [self._in_flight.popleft() for _ in answers]
            groups[0][1](int(commits))
            for (jobs, _committed), results in zip(groups, answers, strict=True):
                for job, (outcome, text) in zip(jobs, results, strict=True):
                    job.outcome = None if outcome is None else StoreOutcome(*outcome)
                    job.error = None if text is None else StoreError(text)
                    job.done.set()
                self._room.release()

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            if self.failed is None:
                log.error("writer process failed: %r", error)
                self.failed = error
            groups = list(self._in_flight)
            self._in_flight.clear()
        for jobs, _committed in groups:
            _fail(jobs, error)
            self._room.release()

    def stop(self) -> None:
        """After the jobs in flight are answered (a minute at most): close the pipe, let the child exit, reap it."""
        deadline = time.monotonic() + 60
        for _ in range(self.IN_FLIGHT):
            self._room.acquire(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self.failed is None:
                self.failed = StoreError("the writer process was stopped")
        # "exit": not EOF, while our receiver still reads the socket.
        with contextlib.suppress(OSError, ValueError, TimeoutError):
            self._send(marshal.dumps(None), time.monotonic() + 5)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._receiver.join(timeout=30)  # it reads EOF now that the child is gone
        self._pipe.close()
        self._socket.close()


def _fail(jobs: list[_Job], error: BaseException) -> None:
    for job in jobs:
        job.outcome, job.error = None, StoreError(f"writer process failed: {error!r}")
        job.done.set()


def _writer_main(
    fd: int,
    path: str,
    durability: str,
    busy_timeout_ms: int,
    cpus: tuple[int, ...] = (),
    log_format: str = "json",
) -> None:
    """The writer process: receive a group, commit it with the thread writer's own code, answer."""
    return_large_blocks()  # the messages are large blocks: see _memory
    configure_logs("warning", log_format)  # its problems, on the same stderr, as serve's lines are
    pipe = Connection(fd)
    # A terminal's Ctrl-C or a service manager's SIGTERM reaches the whole process group: the
    # parent answers it (it finishes what is in flight, then sends "stop"); this child exits on
    # that message or at the parent's EOF, never halfway through a group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cpus:  # --writer-cpus (drengr.settings checked they exist)
        os.sched_setaffinity(0, set(cpus))
    store = SQLiteStore(path, durability=durability, busy_timeout_ms=busy_timeout_ms, migrate=False)
    conn: sqlite3.Connection | None = None
    while True:
        if store._users_due() > 0 and not pipe.poll():
            conn = store._index_step(conn)  # nothing waiting: one block of the user index
            continue
        try:
            received = pipe.recv_bytes()
            messages = [marshal.loads(received)]
            # Every group already waiting joins this transaction (one commit for all of them), up
            # to a size: a few large batches already make a group, and each byte costs ~3 in rows.
            size = len(received)
            while messages[-1] is not None and size < _MERGE_MAX_BYTES and pipe.poll():
                received = pipe.recv_bytes()
                messages.append(marshal.loads(received))
                size += len(received)
        except (EOFError, OSError):
            break  # the parent died
        stop = messages[-1] is None  # the parent's stop()
        groups = [
            [
                _Job(tenant_id, rows, received_at_ms, probe=probe, deadline=deadline)
                for tenant_id, rows, received_at_ms, probe, deadline in message
            ]
            for message in messages
            if message is not None
        ]
        if groups:
            before = store.group_commits
            conn = store._commit_jobs(conn, [job for jobs in groups for job in jobs])
            answers = [[_answer(job) for job in jobs] for jobs in groups]
            try:
                pipe.send_bytes(marshal.dumps((answers, store.group_commits - before)))
            except OSError:
                break
        if stop:
            break
    if conn is not None:
        conn.close()


def _answer(job: _Job) -> tuple[tuple[int, int, int] | None, str | None]:
    """A job's result as plain values for the pipe: (stored, duplicates, over cap) or None, error text."""
    outcome = (
        None if job.outcome is None else (job.outcome.stored, job.outcome.duplicates, job.outcome.over_cap)
    )
    return outcome, None if job.error is None else str(job.error)


class _Transaction:
    """``with`` block: BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error; StoreError out."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(str(error)) from error
        return self._conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.Error as error:
                self._conn.execute("ROLLBACK")
                raise StoreError(str(error)) from error
        self._conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(str(exc)) from exc
