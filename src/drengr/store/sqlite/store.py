"""The SQLite store's facade: ``SQLiteStore``, what the web shell and the CLI hold.

It opens and migrates the file (``schema/sqlite.sql``), answers the admin verbs
(``drengr.store.admin``, on a connection per thread), prunes, and hands every
write to the writer: a thread of its own running ``drengr.store.sqlite.writer``
(``writer="thread"``), or the writer process (``writer="process"``,
``drengr.store.sqlite.process``), to which each request sends its rows straight;
``writer="shared"``: one writer process for every process on the file.
Imports no web framework; sqlite-utils never (the writer process stays small).
"""

import contextlib
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ... import metrics
from ...clock import now as clock_now
from ...core.limits import DEFAULT_DEDUP_WINDOW_DAYS, MS_PER_DAY
from ...core.outcome import StoreOutcome
from ...core.timestamps import format_ms
from ..admin import Admin
from ..base import (
    GROUP_MAX_ROWS,
    PRUNE_BATCH_ROWS,
    Job,
    KeyCache,
    StoreError,
    prune_in_batches,
    schema_statements,
    take_group,
)
from . import read_side
from .connect import Transaction, connect
from .locks import WriterLock
from .process import Undelivered, WriterProcess, fail_job
from .writer import Writer

T = TypeVar("T")
log = logging.getLogger("drengr.store")

WRITERS = ("thread", "process", "shared")
SCHEMA_VERSION = 5  # 2: semantic_events.library, drop_counts; 3: tenants.pii_allow; 4: hourly rollups;
# 5: the read side built off the writer's path (meta.read_side_seq)
# The thread writer's queue holds at most this many jobs. A request waits for room (within its busy
# timeout), so it never binds while the writer keeps up (each request thread has one job in flight);
# while the writer is stalled, it keeps the jobs of requests that already answered 502 from piling up.
_QUEUE_MAX_JOBS = 64

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


# How long warm()'s probe waits for the writer to build its window (35M ids take ~45 s).
WARM_UP_SECONDS = 300.0


class SQLiteStore(Admin):
    """Implements ``drengr.store.base.Store`` on one SQLite file."""

    def __init__(
        self,
        path: str,
        durability: str = "full",
        busy_timeout_ms: int = 5_000,
        clock: Callable[[], float] = clock_now,
        writer: str = "thread",
        writer_cpus: tuple[int, ...] = (),  # the CPUs the writer process may run on; empty: any
        migrate: bool = True,  # False: the file is known to be ready
        elapsed: Callable[[], float] = time.monotonic,  # how long generations stayed (never jumps)
        dedup_window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,  # the dedup window (--dedup-window-days)
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")
        if writer not in WRITERS:
            raise ValueError(f"writer must be one of {WRITERS}")
        if writer == "shared" and (path == ":memory:" or not sys.platform.startswith("linux")):
            raise StoreError(
                "a shared writer needs "
                + ("a database file (each process has its own :memory:)" if path == ":memory:" else "Linux")
                + ": use the thread writer (DRENGR_WRITER=thread, --writer thread)"
            )
        self.path = path
        self._writer_kind = writer
        self._writer_cpus = tuple(writer_cpus)
        self._durability = durability
        self._synchronous = durability.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._clock = clock
        self._local = threading.local()
        self._keys = KeyCache(clock)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=_QUEUE_MAX_JOBS)
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._turns = WriterLock(path)  # writers of this file take turns (see there)
        # The thread writer's state: the dedup window, its turn, the checkpointer.
        self.dedup_window_days = dedup_window_days  # a generation's length: ids are kept one to two
        self._committer = Writer(
            path, self._synchronous, busy_timeout_ms, elapsed, self._turns, window_days=dedup_window_days
        )
        self._child_commits = 0  # groups the writer process committed for this store
        self._child: WriterProcess | None = None  # writer="process" or "shared"
        self._child_lock = threading.Lock()  # one thread at a time starts or replaces the child
        self._commits_lock = threading.Lock()
        if migrate:
            self._migrate()
        # A shared writer starts with the first write or warm(): not where the store is made, which
        # under gunicorn --preload is the master, before it forks the workers.
        if writer == "process":
            try:  # now, not on the first request: the child takes ~0.1 s to start
                self._child = self._start_child()
            except Exception as error:  # noqa: BLE001 - tried again with the first write
                log.error("cannot start the writer process: %s", error)

    def _start_child(self, deadline: float | None = None) -> WriterProcess:
        """A writer process of this store's own, or (shared) the file's: joined by ``deadline``."""
        return WriterProcess(
            self.path,
            self._durability,
            self._busy_timeout_ms,
            self._writer_cpus,
            self.dedup_window_days,
            shared=self._writer_kind == "shared",
            deadline=deadline,
        )

    @property
    def group_commits(self) -> int:
        """Transactions the writer (thread or process) has committed: group commit is visible in tests."""
        return self._committer.group_commits + self._child_commits

    # ------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, self._busy_timeout_ms, self._synchronous)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _migrate(self) -> None:
        """Make what is missing (schema/sqlite.sql) and bring older files up to date, in one transaction."""
        try:
            conn = self._connect()
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the database at {self.path}: {error}") from error
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for statement in schema_statements("sqlite"):
                conn.execute(statement)
            meta = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            top = conn.execute("SELECT coalesce(max(seq), 0) FROM semantic_events").fetchone()[0]
            if "event_rollups" not in tables:
                # Rows already here are not in the read side yet: the reader scans until a backfill.
                conn.execute(meta, ("rollups_from_seq", str(top + 1)))
            elif "hourly_event_rollups" not in tables:  # a file from before the hourly grain
                for statement in read_side.HOURLY_FROM_MINUTES:  # the minutes' rows, added up by hour
                    conn.execute(statement)
            if "user_index" in tables:  # version 4 kept the user index here: its own file builds it again
                conn.execute("DROP TABLE user_index")
                conn.execute("DROP TABLE daily_users")
                conn.execute("DELETE FROM meta WHERE key = 'user_index_blocks'")
            if conn.execute("SELECT 1 FROM meta WHERE key = 'read_side_seq'").fetchone() is None:
                conn.execute(meta, ("read_side_seq", str(top)))  # what is there is counted, or older
            if conn.execute("SELECT 1 FROM meta WHERE key = 'database_id'").fetchone() is None:
                conn.execute(meta, ("database_id", uuid.uuid4().hex))  # what the users file indexes
            # Version 1 files lack `library` (context.library, an extra column): older rows keep NULL
            # there; version 2 files lack the tenant's PII allow-list.
            for table, column in (("semantic_events", "library"), ("tenants", "pii_allow")):
                if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
            conn.execute(meta, ("schema_version", str(SCHEMA_VERSION)))
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"cannot prepare the database at {self.path}: {error}") from error
        finally:
            conn.close()

    # ------------------------------------------------------------ admin (drengr.store.admin)

    def _query(self, sql: str, params: Sequence[Any] = (), what: str = "") -> list[tuple[Any, ...]]:
        if not what:
            return self._reader().execute(sql, params).fetchall()
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise StoreError(f"{what}: {error}") from error

    def _transact(self, work: Callable[[Any], T], what: str = "") -> T:
        with Transaction(self._reader()) as conn:
            return work(conn)

    # ------------------------------------------------------------ retention

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

            def delete_batch(after_seq: int) -> tuple[int, int]:
                with self._turn(conn):
                    batch = conn.execute(
                        "SELECT seq, received_at < ? FROM semantic_events WHERE seq > ? ORDER BY seq LIMIT ?",
                        (cutoff, after_seq, batch_rows),
                    ).fetchall()
                    old = [seq for seq, is_old in batch if is_old]
                    if old:
                        # The read side forgets them in the same transaction.
                        read_side.remove_from_rollups(conn, old)
                        conn.execute(
                            f"DELETE FROM semantic_events WHERE seq IN ({','.join('?' * len(old))})", old
                        )
                return len(old), batch[-1][0] if batch else after_seq

            deleted = prune_in_batches(delete_batch, progress, total)
            day = before_ms // MS_PER_DAY
            with self._turn(conn):
                conn.execute("DELETE FROM daily_usage WHERE day < ?", (day,))
                conn.execute("DELETE FROM drop_counts WHERE day < ?", (day,))
                read_side.tidy_rollups(conn)
            read_side.prune_users(self.path, cutoff[:10], self._busy_timeout_ms)
            return deleted
        except sqlite3.Error as error:
            raise StoreError(f"prune failed: {error}") from error
        finally:
            conn.close()

    @contextlib.contextmanager
    def _turn(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One short write transaction, in the writers' turn (as the writer's own groups are)."""
        with self._turns.turn(self._busy_timeout_ms / 1000):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------ writes

    def write(self, tenant_id: str, rows: list[tuple[Any, ...]], received_at_ms: int) -> StoreOutcome:
        job = Job(tenant_id, rows, received_at_ms)
        if not self._submit(job, self._busy_timeout_ms / 1000):
            raise StoreError("the writer did not answer within the busy timeout")
        if job.outcome is None:
            raise StoreError(str(job.error))
        return job.outcome

    def writable(self, timeout: float | None = None) -> bool:
        """Whether a write would go through now: the writer takes the write lock within ``timeout``
        (at most the busy timeout) and the file system has room (``MIN_FREE_BYTES``)."""
        limit = self._busy_timeout_ms / 1000
        job = Job("", [], int(self._clock() * 1000), probe=True)
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

    def warm(self) -> None:
        """Have the writer start now and build its dedup window before the first request comes
        (``drengr serve`` and deploy/gunicorn.conf.py's workers call it as they start): a probe, sent from a thread of its
        own and not waited for. Left to the first request, a window of many rows (~1.4 s a million)
        is built while that request and those behind it wait; under gunicorn, a worker whose first
        request came late held its own requests that long."""
        job = Job("", [], int(self._clock() * 1000), probe=True)
        threading.Thread(
            target=self._submit, args=(job, WARM_UP_SECONDS), name="drengr-warm-up", daemon=True
        ).start()

    def _submit(self, job: Job, timeout: float) -> bool:
        """Hand ``job`` to the writer; True once it is answered, False if ``timeout`` s passed first.

        Every wait here is bounded: a stalled writer (stopped, an fsync that
        hangs) costs its requests a 502 after the busy timeout, not a hang. A job
        answered late is harmless: the client was told 502 and resends, and a
        resend of what was committed is a duplicate.
        """
        deadline = job.deadline = time.monotonic() + timeout
        if self._writer_kind != "thread":
            # Straight to the child on this thread's socket, no hop through a thread: the child
            # commits every job waiting on any socket in one transaction, which is the group commit.
            # A child found gone as the job is sent (killed while idle: no job of ours failed with
            # it) never had the job: a new one takes it, once.
            for attempt in range(2):
                if not self._child_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    return False
                try:
                    child = self._ready_child(deadline)
                finally:
                    self._child_lock.release()
                if child is None:
                    return False
                try:
                    return child.submit(job, self._committed)  # answered, or left at the deadline
                except Undelivered as error:
                    if attempt:
                        fail_job(job, error)
            return True
        self._start_writer()
        done = job.done = threading.Event()
        try:
            self._queue.put(job, timeout=timeout)
        except queue.Full:  # a stalled writer, its queue full of jobs whose requests gave up
            return False
        return done.wait(max(0.0, deadline - time.monotonic()))

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
                if not self._writer.is_alive():  # its last group is done: the window is whole
                    self._committer.save_window()
                    self._committer.release_window()
                self._writer = None
            self._committer.close()
            self._turns.close()  # the writer thread is done with it
        with self._child_lock:
            if self._child is not None and self._child.owner == os.getpid():
                self._child.stop()
            self._child = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid (``writer="process"`` or ``"shared"``), None while there is none."""
        child = self._child
        return None if child is None else child.pid

    def _write_loop(self) -> None:
        """The writer thread (``writer="thread"``): take what is waiting, commit it as one group."""
        conn: sqlite3.Connection | None = None
        while True:
            try:
                first = self._queue.get_nowait()
                self._committer.hand_over(later=True)  # the last group's, by its hand-over thread: busy
            except queue.Empty:
                self._committer.hand_over()
                try:
                    first = self._queue.get(timeout=self._committer.idle_wait())
                except queue.Empty:
                    self._committer.idle()
                    continue
            if first is None:
                break
            jobs, stop = take_group(self._queue, first, GROUP_MAX_ROWS)
            try:
                conn = self._committer.commit_jobs(conn, jobs)
            finally:
                for job in jobs:
                    if job.done is not None:
                        job.done.set()
            if stop:
                break
        if conn is not None:
            conn.close()

    def _ready_child(self, deadline: float | None = None) -> WriterProcess | None:
        """A live writer process; None if none can start (or join, by ``deadline``). A dead or
        broken one (its jobs already failed: 502) is replaced."""
        if self._child is not None and self._child.owner != os.getpid():
            self._child = None  # a forked process's copy: that process's writer, not ours to stop
        if self._child is not None and self._child.failed:
            self._child.stop(deadline)  # a request waits for it no longer than for its answer
            if not self._child.running():  # a dead writer's gauges stop counting
                metrics.process_exited(self._child.pid)
            self._child = None
        if self._child is None:
            try:
                self._child = self._start_child(deadline)
            except Exception as error:  # noqa: BLE001 - this job fails, the next tries again
                log.error("cannot start the writer process: %s", error)
                return None
        return self._child

    def _committed(self, commits: int) -> None:
        with self._commits_lock:  # request threads add, each the commits its answer reported
            self._child_commits += commits
