"""The SQLite writer: group commit, the dedup window and metering, on the one write connection.

Run by the store's writer thread (``writer="thread"``) or directly by the
writer process (``drengr.store.sqlite.process``): a ``Writer`` owns what the
write path keeps between groups, and ``commit_jobs`` writes one group.

- Dedup is exact and lives in memory (``FingerprintIndex``, from ``drengr._index``
  or its pure twin, with older ids spilled to runs on disk: ``window``): 64-bit
  fingerprints of (tenant_id, event_id) → seq, for
  rows received in the current and the previous generation, each as long as
  the window (``window_days``, 7 by default: every repeat within it is caught;
  older generations are dropped whole). The
  window is built from those rows of the table on the first write; before every
  write, under the write lock, it reads the rows other processes committed since
  (``seq > last_seq``); every fingerprint hit is verified against the row it
  points to.
- The wall clock is not trusted to forget (docs/mapping.md "Deduplication
  when the clock is wrong"): a generation is dropped only when the clock has
  moved on *and* the process's monotonic clock agrees that most of a
  generation has passed since it closed (``_drop_after_seconds``) and a whole
  window since its last row. A clock
  that jumps ahead closes the current generation but drops nothing; a clock
  that goes back changes nothing; a restart loads the window back from the
  older of the clock and the newest stored row.
- Daily-cap metering (``Meter``): one read and one upsert per tenant and day a group; it fails open.
- Every group is one ``BEGIN IMMEDIATE`` transaction taken in the writers' turn
  (``drengr.store.sqlite.locks``); the WAL is checkpointed off this path.
- The read side: the writer hands the rows it committed to its builder (``read_side.Builder``,
  a thread of its own), which indexes and counts them from memory, never in this transaction;
  the rollup counts come back to be added in the next group's transaction (``offer``): a few
  upserts, no transaction of their own.

The hot insert goes straight to multi-row INSERTs (sqlite-utils' ``insert_all``
measured ~2× slower). Imports no web framework and not sqlite-utils.
"""

import bisect
import functools
import itertools
import logging
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

from ... import metrics
from ...core.limits import DEFAULT_DAILY_CAP_EVENTS, DEFAULT_DEDUP_WINDOW_DAYS, MS_PER_DAY
from ...core.outcome import StoreOutcome
from ...core.timestamps import format_ms, parse_ms
from ..base import Job, StoreError, generation, schema_statements
from ..reader.model import RECEIVED_ORDER_SLACK_MS
from . import read_side, window, window_file
from .connect import connect
from .locks import CHECKPOINT_FALLBACK_PAGES, Checkpointer, WriterLock
from .window import FingerprintIndex, Generation, fingerprint, fingerprints, index_rows

__all__ = ["FingerprintIndex", "Writer", "insert_events"]

log = logging.getLogger("drengr.store")

# Errors one job's rows can cause (the others are written without it). Any other error (a
# read-only or full disk, I/O, a lock) fails the whole group, and the connection is reopened.
_JOB_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
_EVENT_COLUMNS = (
    "tenant_id, event_id, event_name, event_type, external_id, install_id, "
    "occurred_at, received_at, dims, measures, library"
)
_INSERT_EVENTS = f"INSERT INTO semantic_events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_ROWS_PER_STATEMENT = 512  # 5,632 parameters a statement, below SQLite's 32,766
_LOAD_ROWS = 65_536  # rows read from the table at a time into the window (its load, others' rows)
# A closed generation takes no more ids: its table is spilled once it holds this many (4 MB or more).
_CLOSED_TABLE_IDS = 400_000
_RECEIVED = 7  # a row's received_at
# A group with a row received this long before the newest row stored is a clock gone back: noted in
# clock_backsteps at its first and its last seq, so that a window built from the table still finds
# where its rows begin (``_first_seq_received_since``, whose margin is a day) and readers find the
# rows of a time range (drengr.store.reader, which count on received order within the slack).
_BACKSTEP_MS = RECEIVED_ORDER_SLACK_MS
_NOTE_BACKSTEP = "INSERT OR IGNORE INTO clock_backsteps (seq, newest_before) VALUES (?, ?)"
_CLOCK_BACKSTEPS = next(
    statement
    for statement in schema_statements("sqlite")
    if "TABLE IF NOT EXISTS clock_backsteps" in statement
)


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


def _database_id(conn: sqlite3.Connection) -> str | None:
    """``meta.database_id``: which database a window's file was written for."""
    found = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
    return None if found is None else str(found[0])


def _row_fingerprint(conn: sqlite3.Connection, seq: int) -> int | None:
    """The fingerprint of the row at ``seq`` (the last a window's file saw); None: no such row."""
    found = conn.execute("SELECT tenant_id, event_id FROM semantic_events WHERE seq = ?", (seq,)).fetchone()
    return None if found is None else fingerprint(found[0], found[1])


class Writer:
    """What the write path keeps between groups (the dedup window, the writers' turn, the
    checkpointer), and the group commit itself. Used by one thread at a time."""

    builds_read_side = True  # False: no rollups nor user index kept (benchmarks "without the read side")

    def __init__(
        self,
        path: str,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5_000,
        elapsed: Callable[[], float] = time.monotonic,  # how long generations stayed (never jumps)
        turns: WriterLock | None = None,  # the store's, shared with its prune; else one of its own
        builder_cpus: frozenset[int] = frozenset(),  # where the read side's builder runs; empty: here
        window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,  # a generation's length (--dedup-window-days)
        spill_ids: int | None = None,  # spill a table to a run on disk at this many ids (window.SPILL_IDS)
    ) -> None:
        self._spill_ids = window.SPILL_IDS if spill_ids is None else spill_ids
        # Runs go beside the database (its disk, not a small /tmp); the system's temporary folder for ":memory:".
        self._spill_folder = None if path == ":memory:" else os.path.dirname(os.path.abspath(path))
        self._builder_cpus = builder_cpus
        self.window_days = window_days
        self._window_ms = window_days * MS_PER_DAY  # a generation's length
        # A closed generation is dropped at a later rotation only once it has been closed this long by
        # the monotonic clock: a generation, less a day for a first write that came late after its
        # boundary (half a day for a one-day window). On a correct clock it closed at its boundary and
        # a rotation comes at a boundary: every id is kept for the whole window.
        self._drop_after_seconds = max(window_days - 1, 0.5) * 86_400
        self.path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._elapsed = elapsed
        self._generation = -1  # the latest generation the window has rotated to
        self._window: list[Generation] = [Generation(), Generation()]  # current, then closed ones
        # Each closed one's times (self._elapsed): when it closed (its boundary, or its last row if
        # later) and when it last took a row.
        self._closed: list[tuple[float, float]] = [(elapsed(), elapsed())]
        self._current_touched = elapsed()  # when the current one last took a row
        self._last_seq = -1  # -1: not loaded yet
        # The latest time of receipt stored (by any writer of the file), and the line a day before
        # it below which a group's rows are noted as a clock gone back.
        self._newest_received = ""
        self._backstep_line = ""
        self.window_from_file = False  # the window was read from its file (window_file), not the table
        self.group_commits = 0  # transactions committed (group commit is visible in tests)
        self._turns = WriterLock(path) if turns is None else turns  # writers of this file take turns
        self._checkpointer: Checkpointer | None = None  # started with the first write
        self._builder: read_side.Builder | None = None  # the read side's, too
        self._builder_lock: WriterLock | None = None
        self._offered: read_side.Counted | None = None  # a builder step's counts, for the next group
        # The last group's rows, committed, for the builder once its requests are answered (hand_over).
        self._handed: tuple[int, list[read_side.Group]] | None = None
        self._offered_lock = threading.Lock()  # guards _offered (the builder's thread sets it)
        # No group came within idle_wait and none since (``idle``): the builder adds its counts itself.
        self.idle_now = False

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, self._busy_timeout_ms, self._synchronous)

    def _write_connection(self, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        """``conn``, or a new write connection (SQLite's own auto-checkpoint only as a fallback)."""
        if conn is None:
            conn = self._connect()
            conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_FALLBACK_PAGES}")
        return conn

    def release_window(self) -> None:
        """Let go of the window (its runs' files): once no group is being written, after
        ``save_window``. A writer used again after loads its window again."""
        for kept in self._window:
            kept.close()
        self._window = [Generation(), Generation()]
        self._last_seq = -1

    def close(self) -> None:
        """Stop the checkpointer (the caller closes the connection it was given back)."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._builder is not None:
            self.hand_over()
            self._builder.stop()
            self._builder = None
        if self._builder_lock is not None:
            self._builder_lock.close()
            self._builder_lock = None

    def commit_jobs(self, conn: sqlite3.Connection | None, jobs: list[Job]) -> sqlite3.Connection | None:
        """One group in one transaction; on failure every job gets the error. Returns the connection to
        reuse. The caller answers the jobs, then calls ``hand_over``."""
        self.hand_over()  # (if the caller did not)
        self.idle_now = False
        try:
            conn = self._write_connection(conn)
            if self._last_seq < 0:
                self._load_window_outside_the_turn(conn, max(job.received_at_ms for job in jobs))
            with self._turns.turn(self._busy_timeout_ms / 1000):
                committed = self._commit_group(conn, jobs)
            if self._checkpointer is None:
                self._checkpointer = Checkpointer(self._connect)
            if self._builder is None and self.builds_read_side:
                self._builder = read_side.Builder(
                    self.path,
                    self._connect,
                    self._builder_turn,
                    self._busy_timeout_ms,
                    writer=self,
                    cpus=self._builder_cpus,
                )
            rows = sum(len(job.rows) for job in jobs)
            self._checkpointer.wrote(conn, rows)
            if self._builder is not None:
                self._handed = (rows, committed)
        except Exception as error:  # the whole group failed: every request gets 502
            log.error("write transaction failed: %s", error)
            if self._builder is not None:
                self._builder.committed.expect(None)
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

    def hand_over(self, later: bool = False) -> None:
        """Give the read side's builder the rows of the group just committed, once its requests are
        answered: their part it needs is added up here (``read_side.Committed``, ~0.3 µs a row), or
        ``later`` by its hand-over thread, while this thread commits the jobs waiting already."""
        handed, self._handed = self._handed, None
        if handed is not None and self._builder is not None:
            try:
                self._builder.wrote(*handed, later=later)
            except Exception as error:  # noqa: BLE001 - (a MemoryError) the builder copies them from the table
                log.warning(
                    "the read side's builder was not handed the rows just written (read back instead): %r",
                    error,
                )

    def idle_wait(self) -> float | None:
        """How long to wait for the next group before saying the writer is idle (``idle``); None: no need."""
        builder = self._builder
        waiting = builder is not None and (builder.waiting or self._offered is not None)
        return read_side.WRITER_IDLE_SECONDS if waiting else None

    def idle(self) -> None:
        """No group came within ``idle_wait``: the builder builds what waits now, and adds its counts
        itself (an offer waiting is given back: no group is coming to add it)."""
        self.idle_now = True
        with self._offered_lock:
            counted, self._offered = self._offered, None
        if counted is not None:
            counted.done.set()  # (``added`` still None: not added)
        if self._builder is not None:
            self._builder.idle()

    def offer(self, counted: read_side.Counted) -> None:
        """The builder's counts, to add in the next group's transaction (``counted.done`` is set then)."""
        with self._offered_lock:
            self._offered = counted

    def take_back(self, counted: read_side.Counted) -> bool:
        """False when the writer has taken ``counted`` already (its group is being committed)."""
        with self._offered_lock:
            if self._offered is not counted:
                return False
            self._offered = None
            return True

    def _add_offered(self, conn: sqlite3.Connection) -> read_side.Counted | None:
        """Add the builder's counts waiting for a group, in a savepoint (a failure there fails nothing else)."""
        with self._offered_lock:
            counted, self._offered = self._offered, None
        if counted is not None:
            counted.added = read_side.add_in_savepoint(conn, counted)
        return counted

    def _builder_turn(self) -> Any:
        """The writers' turn for the read side's builder: a lock description of its own (``flock``
        is per description: sharing the writer's would let both in at once)."""
        if self._builder_lock is None:
            self._builder_lock = WriterLock(self.path)
        return self._builder_lock.turn(self._busy_timeout_ms / 1000)

    def _commit_group(self, conn: sqlite3.Connection, jobs: list[Job]) -> list[read_side.Group]:
        """One transaction for the whole group, in as few statements as possible; the rows it
        committed, ``(first seq, rows, their counts)`` in order (``read_side.Group``).

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
            return []
        self._catch_up(conn, max(job.received_at_ms for job in work))
        try:
            additions = self._apply_group(conn, work, {})
        except _JOB_ERRORS as error:
            log.warning("a group write failed (%s); writing its jobs one by one", error)
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            additions = self._apply_each(conn, work)
        counted = self._add_offered(conn)
        if self._builder is not None and additions:  # its copies of the table stop below these rows
            self._builder.committed.expect(min(seq for _fps, seq, _rows, _summary in additions))
        try:
            conn.execute("COMMIT")
        except BaseException:
            if counted is not None:
                counted.added = False
            raise
        finally:
            if counted is not None:
                counted.done.set()
        self.group_commits += 1
        current = self._window[0]
        for fps, first_seq, _rows, _summary in additions:
            current.add_many(fps, array("q", range(first_seq, first_seq + len(fps))))
            self._last_seq = max(self._last_seq, first_seq + len(fps) - 1)
        current.spill_if_full(self._spill_folder, self._spill_ids)
        for closed in self._window[1:]:
            closed.take_finished()
        metrics.metric("commit_seconds").observe(time.perf_counter() - started)
        metrics.metric("group_rows").observe(sum(len(job.rows) for job in work))
        self._report_window()
        return [(seq, rows, summary) for _fps, seq, rows, summary in additions]

    def _apply_group(
        self, conn: sqlite3.Connection, jobs: list[Job], staged: dict[str, set[str]]
    ) -> list[tuple[array, int, list[tuple[Any, ...]], read_side.Summary | None]]:
        """Dedup and meter every job in order, then insert all their rows; (fingerprints, first seq,
        rows, their counts or None) a job.

        ``staged`` holds, per tenant, the event ids written earlier in this transaction; it is updated.
        """
        meter = Meter(conn)
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
                # Its counts, added up as it was sent, hold while none of its rows was dropped.
                planned.append((fresh, keys, job.summary if fresh is job.rows else None))
        meter.save()
        rows = [row for fresh, _keys, _summary in planned for row in fresh]
        if not rows:
            return []
        last = insert_events(conn, rows)
        seq = last - len(rows) + 1  # AUTOINCREMENT under our write lock: consecutive
        self._note_backstep(conn, rows, seq)
        additions = []
        for fresh, keys, summary in planned:
            additions.append((keys, seq, fresh, summary))
            seq += len(fresh)
        return additions

    def _apply_each(
        self, conn: sqlite3.Connection, jobs: list[Job]
    ) -> list[tuple[array, int, list[tuple[Any, ...]], read_side.Summary | None]]:
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

    def _saw_received(self, newest: str) -> None:
        """``newest``, a time of receipt stored, may be the latest yet."""
        if newest > self._newest_received:
            self._newest_received = newest
            newest_ms = parse_ms(newest)
            self._backstep_line = "" if newest_ms is None else format_ms(newest_ms - _BACKSTEP_MS)

    def _note_backstep(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]], first_seq: int) -> None:
        """Rows about to be committed from ``first_seq`` on: if one was received more than the slack
        before the newest row stored (these rows included), the clock has gone back; noted with
        that newest time at the first and the last of them, in the same transaction."""
        received = {row[_RECEIVED] for row in rows}  # a request's rows share theirs: a set is cheaper
        self._saw_received(max(received))
        if self._backstep_line and min(received) < self._backstep_line:
            conn.execute(_CLOCK_BACKSTEPS)  # a file made before the table, opened without migrating
            for seq in (first_seq, first_seq + len(rows) - 1):
                conn.execute(_NOTE_BACKSTEP, (seq, self._newest_received))

    def _catch_up(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Bring the window up to date: load it on first use, rotate it, read others' rows.

        ``now_ms`` is the group's latest time of receipt: the window follows the
        clock that stamps the rows, the one that ``received_at`` shows.
        """
        current_generation = generation(now_ms, self.window_days)
        if self._last_seq < 0:
            self._load_window(conn, now_ms)
        elif current_generation > self._generation:
            self._rotate(current_generation, now_ms)
        # A clock gone back (current_generation < self._generation) changes nothing: its rows join
        # the current generation, and nothing is forgotten until the clock passes it again.
        self._current_touched = self._elapsed()
        cursor = conn.execute(
            "SELECT seq, tenant_id, event_id, received_at FROM semantic_events WHERE seq > ? ORDER BY seq",
            (self._last_seq,),
        )
        while rows := cursor.fetchmany(_LOAD_ROWS):  # other writers' rows
            self._last_seq = index_rows(rows, self._window[0].table)
            self._window[0].spill_if_full(self._spill_folder, self._spill_ids)
            self._saw_received(max(row[3] for row in rows))

    def _rotate(self, current_generation: int, now_ms: int) -> None:
        """The clock entered a later generation: close the current one; drop those closed long ago.

        Whole generations are dropped, and only those closed ``_drop_after_seconds``
        ago by the monotonic clock whose last row is a whole window old by it too.
        The one closing now closed when the clock says its generation ended, but
        never before it took its last row: ids written on its first day and
        nothing after are still caught a week later, and a wall clock that jumps
        ahead drops nothing. Its last row's age keeps a server that was idle
        across a boundary (a night, for a one-day window) from dropping ids
        younger than the window at its first write after.
        """
        now = self._elapsed()
        ended_ms = (self._generation + 1) * self._window_ms
        closing = max(self._current_touched, now - (now_ms - ended_ms) / 1000)
        kept, dropped = [], []
        for index, (closed_at, last_row_at) in zip(
            self._window, [(closing, self._current_touched), *self._closed], strict=True
        ):
            if now - closed_at < self._drop_after_seconds or now - last_row_at < self._window_ms / 1000:
                kept.append((index, (closed_at, last_row_at)))
            else:
                dropped.append(index)
        for index in dropped:
            index.close()
        if all(index is not self._window[0] for index in dropped):  # it takes no more ids: spill a big table
            self._window[0].spill_if_full(self._spill_folder, min(self._spill_ids, _CLOSED_TABLE_IDS))
        self._window = [Generation(), *(index for index, _ in kept)]
        self._closed = [times for _, times in kept]
        self._generation = current_generation

    def save_window(self) -> None:
        """Write the window to the database's window file for the next writer to start from
        (``window_file``); after the last group. A failure is logged: the next start reads the table."""
        if self._last_seq < 0 or self.path == ":memory:":
            return  # nothing loaded, nothing to keep
        try:
            conn = self._connect()
            try:
                database_id, last_row = _database_id(conn), _row_fingerprint(conn, self._last_seq)
            finally:
                conn.close()
            if database_id is None or last_row is None:
                return  # nothing to check the file against at the next start
            for kept in self._window:
                kept.settle()  # a spill under way, done; one that failed, back in its table
            header = {
                "database_id": database_id,
                "last_seq": self._last_seq,
                "last_row": last_row,
                "generation": self._generation,
                "window_days": self.window_days,
                "newest_received": self._newest_received,
            }
            window_file.save(self.path, header, self._window)
        except (OSError, ValueError, MemoryError, sqlite3.Error) as error:
            log.warning("cannot save the dedup window (the next start builds it from the table): %s", error)

    def _restore_window(self, conn: sqlite3.Connection, now_ms: int) -> bool:
        """The window from the database's window file, when it fits this table and generation."""
        found = window_file.load(self.path)
        if found is None:
            return False
        header, indexes = found
        current_generation = generation(now_ms, self.window_days)
        last_seq = int(header["last_seq"])
        last_row = _row_fingerprint(conn, last_seq)
        newest = conn.execute("SELECT received_at FROM semantic_events ORDER BY seq DESC LIMIT 1").fetchone()
        if header["database_id"] != _database_id(conn):
            why = "it was written for another database"
        elif last_row is None or header["last_row"] != last_row:
            why = "the last row it saw is not in the table"  # a backup restored, then written to
        elif header.get("window_days", 7) != self.window_days:  # files from before the setting: 7 days
            why = "the dedup window's length has changed"
        elif header["generation"] != current_generation or (
            newest is not None and generation(parse_ms(newest[0]) or 0, self.window_days) > current_generation
        ):
            why = "the clock is in another generation"
        else:
            why = ""
        if why:
            log.info("the dedup window's file is not used (%s): building the window from the table", why)
            for index in indexes:
                index.close()
            return False
        # The clock agrees with the table: the previous generation closed at its boundary (as
        # _load_window has it), and any older one a generation before. Their last rows are taken
        # to be as late as this start (_load_window says why).
        now = self._elapsed()
        window_s = self._window_ms / 1000
        closed_at = now - (now_ms / 1000 - current_generation * window_s)
        self._window = indexes
        self._closed = [
            (at, now) for at in (closed_at - older * window_s for older in range(len(indexes) - 1))
        ]
        self._saw_received(max(str(header.get("newest_received", "")), _newest_noted(conn)))
        self._current_touched = now
        self._generation = current_generation
        self._last_seq = last_seq
        self.window_from_file = True
        log.info(
            "dedup window read from its file: %d ids (the rows after seq %d from the table)",
            sum(len(index) for index in indexes),
            last_seq,
        )
        return True

    def _load_window_outside_the_turn(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """This writer's first window, built before its first turn: other writers of the file (a
        gunicorn worker's) go on writing meanwhile, instead of waiting for it (~1.4 s a million rows
        from the table). One read transaction makes every read of it one snapshot, so the last seq
        it records is the last row it indexed; the turn then reads the rows written since
        (``_catch_up``)."""
        conn.execute("BEGIN")  # deferred: a snapshot at the first read, no lock
        try:
            self._load_window(conn, now_ms)
        finally:
            conn.execute("ROLLBACK")  # it only read
        self._report_window()

    def _report_window(self) -> None:
        metrics.metric("dedup_ids").set(sum(len(index) for index in self._window))
        metrics.metric("dedup_bytes").set(sum(index.memory_bytes for index in self._window))

    def _load_window(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Index the rows received in the current and previous generation (start-up), or read
        them from the window's file when it fits (``_restore_window``).

        "Current" is the clock's, unless the newest stored row is older: a clock
        that runs ahead at start-up still loads the rows received before it jumped.
        """
        if self._restore_window(conn, now_ms):
            return
        window_ms = self._window_ms
        current_generation = generation(now_ms, self.window_days)
        newest = conn.execute("SELECT received_at FROM semantic_events ORDER BY seq DESC LIMIT 1").fetchone()
        newest_ms = parse_ms(newest[0]) if newest else None
        newest_generation = (
            current_generation if newest_ms is None else generation(newest_ms, self.window_days)
        )
        boundary = format_ms(current_generation * window_ms)
        # The generation before the current one (the clock's, or the newest row's when that is
        # older: a clock that runs ahead, or a server that took nothing for a generation or more).
        # A day of margin: processes' clocks and commit order may disagree by a little.
        agrees = current_generation - newest_generation in (0, 1)
        base = current_generation if agrees else min(current_generation, newest_generation)
        start = format_ms((base - 1) * window_ms - MS_PER_DAY)
        first_seq = self._first_seq_received_since(conn, start)
        current, previous = Generation(), Generation()
        last = 0
        cursor = conn.execute(
            "SELECT seq, tenant_id, event_id, received_at FROM semantic_events WHERE seq >= ? ORDER BY seq",
            (first_seq,),
        )
        while rows := cursor.fetchmany(_LOAD_ROWS):
            last = index_rows(rows, current.table, previous.table, boundary)
            for loaded in (current, previous):
                loaded.spill_if_full(self._spill_folder, self._spill_ids)
            self._saw_received(max(row[3] for row in rows))
        previous.spill_if_full(self._spill_folder, min(self._spill_ids, _CLOSED_TABLE_IDS))
        top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'semantic_events'").fetchone()
        now = self._elapsed()
        if agrees:  # the previous generation closed at its boundary, by the clock
            closed_at = now - (now_ms - current_generation * window_ms) / 1000
        else:  # the clock disagrees with the table: trust only the time this process will see
            closed_at = now
        self._window = [current, previous]
        # Its last row is taken to be as late as this start: kept a whole window of this process's
        # time. A clock that runs ahead by less than a generation looks right from here, and how
        # long the server was down nobody can tell; so ids loaded now are kept at least N days from
        # the start, up to 3N days after their receipt.
        self._closed = [(closed_at, now)]
        self._saw_received(_newest_noted(conn))
        self._current_touched = now
        self._generation = current_generation
        self._last_seq = max(last, top[0] if top else 0)

    @staticmethod
    def _first_seq_received_since(conn: sqlite3.Connection, since: str) -> int:
        """Binary search on seq for the first row received at ``since`` or later.

        Rows are appended in nearly received order: within a day, the load's margin, or
        else a clock gone back, noted in ``clock_backsteps``. A row's time is read as
        the latest of its own and those noted at or before its seq, which never falls
        by more than a day from one row to the next: so no row received at ``since``
        plus a day or later lies below the seq found.
        """
        steps: list[int] = []
        ceilings: list[str] = []
        for seq, newest_before in _backsteps(conn):
            steps.append(seq)
            ceilings.append(max(newest_before, ceilings[-1]) if ceilings else newest_before)
        low_row = conn.execute("SELECT min(seq), max(seq) FROM semantic_events").fetchone()
        low, high = low_row if low_row[0] is not None else (1, 0)
        while low <= high:
            middle = (low + high) // 2
            seq, received = conn.execute(
                "SELECT seq, received_at FROM semantic_events WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)
            ).fetchone()
            noted = bisect.bisect_right(steps, seq)
            if (max(received, ceilings[noted - 1]) if noted else received) < since:
                low = seq + 1
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
        self, conn: sqlite3.Connection, job: Job, staged: dict[str, set[str]]
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


def _backsteps(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """The clock's steps back noted in the file, by seq (none in a file made before the table)."""
    try:
        return conn.execute("SELECT seq, newest_before FROM clock_backsteps ORDER BY seq").fetchall()
    except sqlite3.OperationalError:
        return []


def _newest_noted(conn: sqlite3.Connection) -> str:
    """The latest time of receipt the file shows without a scan: its last row's, or one noted
    before a step back."""
    last = conn.execute("SELECT received_at FROM semantic_events ORDER BY seq DESC LIMIT 1").fetchone()
    return max([last[0] if last else "", *(newest_before for _seq, newest_before in _backsteps(conn))])


class Meter:
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
