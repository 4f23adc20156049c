"""``PostgresStore``: connections, migration, admin (``drengr.store.admin``), prune, and the writer threads.

What must be exact across nodes is decided inside the write transaction (see
``drengr.store.postgres``); the statements are ``statements``. Imports psycopg.
"""

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from ... import metrics
from ...clock import now as clock_now
from ...core.limits import DEFAULT_DAILY_CAP_EVENTS, DEFAULT_DEDUP_WINDOW_DAYS, MS_PER_DAY
from ...core.outcome import StoreOutcome
from ...core.timestamps import format_ms
from ..admin import Admin
from ..base import (
    GROUP_MAX_ROWS,
    PRUNE_BATCH_ROWS,
    Job,
    KeyCache,
    StoreError,
    first_line,
    prune_in_batches,
    take_group,
)
from ..rollups import ROLLUP_GRAINS
from .statements import (
    _ADD_USAGE,
    _BACKFILL_INDEXES,
    _BACKFILL_ROLLUPS,
    _BUILD_STEP,
    _BUILD_STEP_AGAIN,
    _CAP,
    _COPY_EVENTS,
    _COPY_IDS,
    _DAY,
    _DELETE_IDS,
    _ENSURE_USAGE,
    _INSERT_NEW_IDS,
    _LOCK_USAGE,
    _PRUNE,
    _REMOVE_NAME_BLOCKS,
    _REMOVE_ROLLUPS,
    _REMOVE_USERS,
    _TURN_AND_DAY,
    BUILDER_LOCK,
    LOCK_KEY,
    SCHEMA,
    SCHEMA_VERSION,
    WRITE_TURN_LOCK,
)
from .text import clean_rows, clean_text

T = TypeVar("T")
log = logging.getLogger("drengr.store")

PRUNE_EVERY_SECONDS = 600.0
PRUNE_CHUNK = 50_000  # ids deleted per statement, so pruning never holds long locks
RETRIES = 3  # attempts of a group on deadlock / serialization failure / a dropped connection
_MIGRATION_LOCK = 0x64726E67  # pg_advisory_xact_lock key: nodes starting together migrate one at a time
BUILD_EVERY_SECONDS = 0.5  # how often the read side's builder looks for new rows
BUILD_STEP_ROWS = 16_384  # rows a builder transaction counts at most


def build_read_side(conn: psycopg.Connection[Any]) -> int:
    """Count the committed rows past ``read_side_seq`` into the rollups and the user index; how many seqs.

    The read side is built off the write path (docs/performance.md "Reading at 10M
    rows"): writers only insert rows. One node's builder at a time (``BUILDER_LOCK``).
    The horizon is read with the writers' lock held exclusive for a moment: then no
    write is under way, so every row at or below the newest seq is committed.
    Each step of ``BUILD_STEP_ROWS`` is a transaction of its own; the meta row it
    moves is locked, so a prune (which takes the same lock) never overlaps a step.
    """
    sequence = conn.execute("SELECT pg_get_serial_sequence('semantic_events', 'seq')").fetchone()[0]  # type: ignore[index]
    newest = f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}"
    built = int(conn.execute("SELECT value FROM drengr_meta WHERE key = 'read_side_seq'").fetchone()[0])  # type: ignore[index]
    if int(conn.execute(newest).fetchone()[0]) <= built:  # type: ignore[index]
        return 0  # nothing new: no need to stop the writers
    if not conn.execute(f"SELECT pg_try_advisory_lock({LOCK_KEY})", (BUILDER_LOCK,)).fetchone()[0]:  # type: ignore[index]
        return 0  # another node's builder is at it
    try:
        with conn.transaction():
            conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_KEY})", (WRITE_TURN_LOCK,))
            horizon = int(conn.execute(newest).fetchone()[0])  # type: ignore[index]
        done = 0
        while True:
            with conn.transaction():
                low = int(
                    conn.execute(
                        "SELECT value FROM drengr_meta WHERE key = 'read_side_seq' FOR UPDATE"
                    ).fetchone()[0]  # type: ignore[index]
                )
                high = min(horizon, low + BUILD_STEP_ROWS)
                if high <= low:
                    return done
                # Derived: a step lost to a crash is counted again (with its mark, in the same
                # transaction), so its commit does not wait for the disk.
                conn.execute("SET LOCAL synchronous_commit = off")
                try:
                    with conn.transaction():  # a savepoint
                        conn.execute(_BUILD_STEP, {"low": low, "high": high})
                except pg_errors.UniqueViolation:  # a seq the user index holds already
                    conn.execute(_BUILD_STEP_AGAIN, {"low": low, "high": high})
                conn.execute("UPDATE drengr_meta SET value = %s WHERE key = 'read_side_seq'", (str(high),))
            done += high - low
    finally:
        conn.execute(f"SELECT pg_advisory_unlock({LOCK_KEY})", (BUILDER_LOCK,))


class PostgresStore(Admin):
    """Implements ``drengr.store.base.Store`` on a PostgreSQL database (psycopg 3).

    ``dsn`` is a libpq connection string or URI (``postgresql://user@host/db``);
    the tables are created if missing (idempotent, safe when nodes start together).
    ``durability="normal"`` sets ``synchronous_commit = off`` for this store's
    writes (a server crash may lose the last acknowledged commits); ``"full"``
    leaves the server's setting (by default ``on``: a 200 is flushed to the WAL).
    """

    mark = "%s"
    builds_read_side = True  # False: no rollups nor user index kept (benchmarks "without the read side")

    def __init__(
        self,
        dsn: str,
        durability: str = "full",
        writers: int = 2,
        connect_timeout: int = 5,
        statement_timeout_ms: int = 30_000,
        clock: Callable[[], float] = clock_now,
        dedup_window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,  # the dedup window (--dedup-window-days)
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")
        if writers < 1:
            raise ValueError("writers must be at least 1")
        self.dsn = dsn
        self.durability = durability
        self._writers_wanted = writers
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._clock = clock
        self.dedup_window_days = dedup_window_days  # how long event_ids keeps an id: one to two of it
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []  # every reader connection, for close()
        self._connections_lock = threading.Lock()
        self._keys = KeyCache(clock)
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._writers: list[threading.Thread] = []
        self._builder: threading.Thread | None = None
        self._stop_building = threading.Event()
        self._writer_lock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._next_prune = 0.0
        self.group_commits = 0  # transactions the writers have committed (group commit is visible in tests)
        self.migrate()

    # ------------------------------------------------------------ connections

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self._connect_timeout)
        except psycopg.Error as error:
            raise StoreError(f"cannot connect to PostgreSQL: {first_line(error)}") from error
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (str(self._statement_timeout_ms),)
            )
            if self.durability == "normal":
                conn.execute("SELECT set_config('synchronous_commit', 'off', false)")
        except psycopg.Error as error:
            conn.close()
            raise StoreError(f"cannot set up the PostgreSQL session: {first_line(error)}") from error
        return conn

    def _reader(self) -> psycopg.Connection[Any]:
        """This thread's connection (autocommit) for key look-ups and admin; made on first use."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
            with self._connections_lock:
                self._connections = [c for c in self._connections if not c.closed]
                self._connections.append(conn)
        return conn

    def _drop_reader(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _run(self, work: Callable[[psycopg.Connection[Any]], Any], *, read_only: bool = False) -> Any:
        """``work(conn)`` on this thread's connection; a database error → StoreError (and a fresh connection).

        When ``work`` only reads, a connection that was already open and turns
        out dead (a server restart or failover killed it while idle) is replaced
        and ``work`` tried once more: the caller should not pay for a restart
        that is already over. A write is never run twice: the connection may
        have died after the database committed it (a revoke would then report
        "not found", drop counts would be added twice), so its caller gets the
        error and decides.
        """
        reused = getattr(self._local, "conn", None) is not None
        for attempt in range(2):
            conn = self._reader()
            try:
                return work(conn)
            except psycopg.Error as error:
                dead = conn.broken or conn.closed
                if dead or isinstance(error, psycopg.OperationalError):
                    self._drop_reader()
                if dead and reused and read_only and attempt == 0:
                    log.warning("a PostgreSQL connection was lost (%s): reconnecting", first_line(error))
                    continue
                raise StoreError(first_line(error)) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def migrate(self) -> None:
        """Create what is missing (idempotent; concurrent starts wait on an advisory lock).

        A database already at this version gets no DDL at all: ``ALTER TABLE … IF NOT
        EXISTS`` still takes an exclusive table lock, and nodes started together
        deadlocked with the one that had migrated first and was already serving.
        """
        conn = self._connect()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                exists = conn.execute("SELECT to_regclass('drengr_meta') IS NOT NULL").fetchone()
                if exists and exists[0]:
                    row = conn.execute(
                        "SELECT value FROM drengr_meta WHERE key = 'schema_version'"
                    ).fetchone()
                    if row is not None and row[0] == str(SCHEMA_VERSION):
                        return
                    log.info("bringing the PostgreSQL database up to schema version %d", SCHEMA_VERSION)
                # The migration itself runs as long as it needs (version 7 rewrites event_ids once:
                # minutes with tens of millions of ids); a node waiting for it above stays bounded.
                conn.execute("SET LOCAL statement_timeout = 0")
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO drengr_meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
        except psycopg.Error as error:
            raise StoreError(f"cannot prepare the PostgreSQL database: {first_line(error)}") from error
        finally:
            conn.close()

    # ------------------------------------------------------------ admin (drengr.store.admin)

    def _query(self, sql: str, params: Sequence[Any] = (), what: str = "") -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._run(
            lambda conn: conn.execute(sql, params).fetchall(), read_only=True
        )
        return rows

    def _transact(self, work: Callable[[Any], T], what: str = "") -> T:
        def run(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction(), conn.cursor() as cur:
                return work(cur)

        result: T = self._run(run)
        return result

    def _clean(self, text: str) -> str:
        return str(clean_text(text))

    def warm(self) -> None:
        """Nothing to build before the first request: the dedup window is the database's table."""

    def writable(self) -> bool:
        """True when the database answers and is not a read-only standby."""
        try:
            row = self._run(
                lambda conn: conn.execute("SELECT NOT pg_is_in_recovery()").fetchone(), read_only=True
            )
        except StoreError as error:
            log.warning("store not writable: %s", error)
            return False
        return bool(row and row[0])

    @staticmethod
    def _from_seq(conn: psycopg.Connection[Any], key: str = "rollups_from_seq") -> int:
        found = conn.execute("SELECT value FROM drengr_meta WHERE key = %s", (key,)).fetchone()
        return int(found[0]) if found else 2**62

    def backfill_rollups(
        self, chunk_rows: int = 20_000, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Count the rows older than the rollups into them, newest first, a seq window a transaction.

        Each window is read tenant by tenant on the ``(tenant_id, seq)`` index;
        ``rollups_from_seq`` moves down with each window (a stopped backfill
        resumes) and becomes 1 at the end, when /v1/stats starts reading the
        rollups. Returns the rows counted.
        """

        def work(conn: psycopg.Connection[Any]) -> int:
            tenants = [row[0] for row in conn.execute("SELECT tenant_id FROM tenants ORDER BY 1")]
            lowest = [
                conn.execute("SELECT min(seq) FROM semantic_events WHERE tenant_id = %s", (t,)).fetchone()
                for t in tenants
            ]
            floor = min([int(row[0]) for row in lowest if row and row[0] is not None], default=1)
            # The rollups, then the user and name indexes: each has the first seq it covers.
            parts = (("rollups_from_seq", _BACKFILL_ROLLUPS), ("indexes_from_seq", _BACKFILL_INDEXES))
            total = sum(max(0, self._from_seq(conn, key) - floor) for key, _ in parts)
            done = 0
            for key, statements in parts:
                while True:
                    with conn.transaction():
                        # One backfill at a time (and no migration meanwhile).
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                        high = self._from_seq(conn, key)
                        if high <= floor:
                            conn.execute("UPDATE drengr_meta SET value = '1' WHERE key = %s", (key,))
                            break
                        low = max(floor, high - chunk_rows)
                        for tenant_id in tenants:
                            for statement in statements:
                                conn.execute(statement, (tenant_id, low, high))
                        conn.execute("UPDATE drengr_meta SET value = %s WHERE key = %s", (str(low), key))
                    done += high - low
                    if progress is not None:
                        progress(done, total)
            return done

        return int(self._run(work))

    def prune_events(
        self,
        before_ms: int,
        batch_rows: int = PRUNE_BATCH_ROWS,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Delete the events received before ``before_ms``, ``batch_rows`` a transaction; returns how many.

        Tenant by tenant (each batch a single-tenant statement on the
        ``(tenant_id, seq)`` index, as Citus wants), walking ``seq`` upwards and
        stopping at the first batch with nothing old in it. Dedup lives in
        ``event_ids`` with its own pruning: untouched. Daily usage and drop
        counts of the days before the cut-off go too. Autovacuum makes the
        space reusable.
        """
        cutoff = format_ms(before_ms)

        def work(conn: psycopg.Connection[Any]) -> int:
            counted = conn.execute("SELECT count(*) FROM semantic_events WHERE received_at < %s", (cutoff,))
            total = int(counted.fetchone()[0])  # type: ignore[index]
            tenants = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT tenant_id FROM semantic_events WHERE received_at < %s ORDER BY 1",
                    (cutoff,),
                )
            ]

            def delete_batch(tenant_id: str, after_seq: int) -> tuple[int, int]:
                with conn.transaction():
                    batch = conn.execute(
                        "SELECT seq, received_at < %s FROM semantic_events WHERE tenant_id = %s AND seq > %s "
                        "ORDER BY seq LIMIT %s",
                        (cutoff, tenant_id, after_seq, batch_rows),
                    ).fetchall()
                    old = [seq for seq, is_old in batch if is_old]
                    if old:
                        # The read side forgets them in the same transaction (the rows it counted);
                        # the builder's lock first, so that no step is counting them meanwhile.
                        built = int(
                            conn.execute(
                                "SELECT value FROM drengr_meta WHERE key = 'read_side_seq' FOR UPDATE"
                            ).fetchone()[0]  # type: ignore[index]
                        )
                        from_seq = self._from_seq(conn)
                        rolled = [seq for seq in old if from_seq <= seq <= built]
                        if rolled:
                            for statement in (*_REMOVE_ROLLUPS, _REMOVE_USERS):
                                conn.execute(statement, (tenant_id, rolled, rolled[0], rolled[-1]))
                        conn.execute(
                            "DELETE FROM semantic_events WHERE tenant_id = %s AND seq = ANY(%s::bigint[]) "
                            "AND seq BETWEEN %s AND %s",
                            (tenant_id, old, old[0], old[-1]),
                        )
                return len(old), batch[-1][0] if batch else after_seq

            deleted = 0
            for tenant_id in tenants:
                batch_of = functools.partial(delete_batch, tenant_id)
                deleted = prune_in_batches(batch_of, progress, total, deleted, after_seq=-1)
            day = before_ms // MS_PER_DAY
            with conn.transaction():
                for tenant_id in tenants:
                    conn.execute(_REMOVE_NAME_BLOCKS, {"tenant": tenant_id})
                conn.execute("DELETE FROM daily_usage WHERE day < %s", (day,))
                conn.execute("DELETE FROM drop_counts WHERE day < %s", (day,))
                for prefix, column, _ in ROLLUP_GRAINS:  # minutes and hours the prune emptied
                    conn.execute(f"DELETE FROM {prefix}event_rollups WHERE events <= 0")
                    conn.execute(
                        f"DELETE FROM {prefix}measure_rollups AS m WHERE NOT EXISTS (SELECT 1 FROM "
                        f"{prefix}event_rollups AS e WHERE e.tenant_id = m.tenant_id AND e.{column} = m.{column} "
                        "AND e.event_name = m.event_name)"
                    )
            return deleted

        return int(self._run(work))

    def prune(self) -> int:
        """Forget event ids older than the dedup window needs, by the database's clock; returns how many."""
        deleted = 0
        while True:
            cursor = self._run(
                lambda conn: conn.execute(_PRUNE, {"days": self.dedup_window_days, "limit": PRUNE_CHUNK})
            )
            deleted += max(cursor.rowcount, 0)
            if cursor.rowcount < PRUNE_CHUNK:
                return deleted

    # ------------------------------------------------------------ writes

    def write(self, tenant_id: str, rows: list[tuple[Any, ...]], received_at_ms: int) -> StoreOutcome:
        done = threading.Event()
        job = Job(tenant_id, clean_rows(rows), received_at_ms, done=done)
        self._start_writers()
        self._queue.put(job)
        # Bounded: a connection attempt and a statement's worth (the writer's own limits). A job
        # answered later is harmless: the client was told 502, and its resend is a duplicate.
        if not done.wait(self._connect_timeout + self._statement_timeout_ms / 1000):
            raise StoreError("the database did not answer within the statement timeout")
        if job.outcome is None:
            raise StoreError(str(job.error))
        return job.outcome

    def _start_writers(self) -> None:
        if self._writers:
            return
        with self._writer_lock:
            if not self._writers:
                for number in range(self._writers_wanted):
                    thread = threading.Thread(
                        target=self._write_loop, name=f"drengr-pg-writer-{number}", daemon=True
                    )
                    thread.start()
                    self._writers.append(thread)
                if self.builds_read_side:
                    self._stop_building.clear()
                    self._builder = threading.Thread(
                        target=self._build_loop, name="drengr-pg-read-side", daemon=True
                    )
                    self._builder.start()

    def _build_loop(self) -> None:
        """The read side's builder (``build_read_side``) every ``BUILD_EVERY_SECONDS``; once more when stopped."""
        conn: psycopg.Connection[Any] | None = None
        pause = BUILD_EVERY_SECONDS
        while True:
            stopping = self._stop_building.wait(pause)
            pause = BUILD_EVERY_SECONDS
            try:
                if conn is None:
                    conn = self._connect()
                build_read_side(conn)
            except (psycopg.Error, StoreError) as error:
                log.warning("cannot build the read side now (tried again in 5 s): %s", first_line(error))
                pause = 5.0
                if conn is not None:
                    conn.close()
                conn = None
            if stopping:
                break
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._writer_lock:
            for _ in self._writers:
                self._queue.put(None)
            for thread in self._writers:
                thread.join(timeout=30)
            self._writers = []
            if self._builder is not None:  # it builds what the writers committed, then stops
                self._stop_building.set()
                self._builder.join(timeout=60)
                self._builder = None
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections = []
        self._local = threading.local()

    def _write_loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while True:
            try:
                first = self._queue.get(timeout=PRUNE_EVERY_SECONDS)
            except queue.Empty:
                self._maybe_prune()
                continue
            if first is None:
                break
            jobs, stop = take_group(self._queue, first, GROUP_MAX_ROWS)
            conn = self._write_group(conn, jobs)
            if stop:
                break
            self._maybe_prune()
        if conn is not None:
            conn.close()

    def _write_group(
        self, conn: psycopg.Connection[Any] | None, jobs: list[Job]
    ) -> psycopg.Connection[Any] | None:
        """Write ``jobs`` in one transaction; every job gets its outcome or its error. Returns the connection."""
        try:
            conn = self._commit_with_retries(conn, jobs)
        except Exception as error:
            log.error("write transaction failed (%d request(s)): %s", len(jobs), first_line(error))
            metrics.count("store_errors", "write")
            if conn is not None and (conn.broken or conn.closed):
                conn.close()
                conn = None
            # One bad request must not fail the others: each alone. Not when the database itself is
            # the trouble (unreachable, statement timeout): every job would wait for it again.
            if (
                len(jobs) > 1
                and conn is not None
                and not isinstance(error, (psycopg.OperationalError, StoreError))
            ):
                for job in jobs:
                    conn = self._write_group(conn, [job])
                return conn
            for job in jobs:
                job.outcome, job.error = None, error
        finally:
            for job in jobs:
                if job.outcome is None and job.error is None:  # never leave a request waiting
                    job.error = StoreError("the write was not attempted")
                if job.done is not None:
                    job.done.set()
        return conn

    def _commit_with_retries(
        self, conn: psycopg.Connection[Any] | None, jobs: list[Job]
    ) -> psycopg.Connection[Any]:
        for attempt in range(RETRIES):
            reused = conn is not None
            if conn is None:
                conn = self._connect()
            started = time.perf_counter()
            try:
                outcomes = self._commit_group(conn, jobs)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as error:
                if attempt == RETRIES - 1:
                    raise
                log.warning("write transaction retried: %s", first_line(error))
                continue
            except psycopg.OperationalError:
                # A connection that died while idle (server restart, failover, idle timeout):
                # reconnect once and try again. Nothing was committed by the failed attempt.
                if not reused or attempt == RETRIES - 1 or not (conn.broken or conn.closed):
                    raise
                conn.close()
                conn = None
                continue
            for job, outcome in zip(jobs, outcomes, strict=True):
                job.outcome = outcome
            self.group_commits += 1
            metrics.metric("commit_seconds").observe(time.perf_counter() - started)
            metrics.metric("group_rows").observe(sum(len(job.rows) for job in jobs))
            return conn
        raise AssertionError("unreachable")  # pragma: no cover

    def _commit_group(self, conn: psycopg.Connection[Any], jobs: list[Job]) -> list[StoreOutcome]:
        """``jobs`` in one transaction, a day of receipt at a time (in queue order): an id whose first
        copy went over one day's cap is then a new event on the next day, not a duplicate of nothing."""
        outcomes: list[StoreOutcome] = []
        with conn.transaction(), conn.cursor() as cur:
            start = 0
            while start < len(jobs):
                day = jobs[start].received_at_ms // MS_PER_DAY
                end = start + 1
                while end < len(jobs) and jobs[end].received_at_ms // MS_PER_DAY == day:
                    end += 1
                outcomes += self._commit_day(conn, cur, jobs[start:end])
                start = end
        return outcomes

    def _commit_day(
        self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], jobs: list[Job]
    ) -> list[StoreOutcome]:
        # Candidates: the first occurrence of each (tenant, event_id) in the group, in queue order.
        first_job: dict[tuple[str, str], int] = {}
        candidates: list[list[tuple[Any, ...]]] = []
        for number, job in enumerate(jobs):
            mine = []
            for row in job.rows:
                key = (job.tenant_id, row[1])
                if key not in first_job:
                    first_job[key] = number
                    mine.append(row)
            candidates.append(mine)
        inserted: set[tuple[str, str]] | None = set()
        if first_job:
            latest = max(job.received_at_ms for job in jobs) // MS_PER_DAY
            inserted = self._remember_ids(conn, cur, first_job, latest)
        fresh = (
            candidates
            if inserted is None
            else [
                [row for row in mine if (job.tenant_id, row[1]) in inserted]
                for job, mine in zip(jobs, candidates, strict=True)
            ]
        )
        allowed = self._meter(conn, cur, jobs, [len(rows) for rows in fresh])
        dropped = [
            (job.tenant_id, row[1])
            for job, rows, n in zip(jobs, fresh, allowed, strict=True)
            for row in rows[n:]
        ]
        if dropped:  # over the cap: not stored, so not remembered either (a retry tomorrow is stored)
            cur.execute(_DELETE_IDS, ([t for t, _ in dropped], [e for _, e in dropped]))
        if any(allowed):
            with cur.copy(_COPY_EVENTS) as copy:
                for rows, n in zip(fresh, allowed, strict=True):
                    for row in rows[:n]:
                        copy.write_row(row)
        outcomes: list[StoreOutcome] = []
        for job, rows, n in zip(jobs, fresh, allowed, strict=True):
            duplicates = len(job.rows) - len(rows)
            outcomes.append(
                StoreOutcome(stored=n, duplicates=duplicates, over_cap=len(job.rows) - duplicates - n)
            )
        return outcomes

    def _remember_ids(
        self,
        conn: psycopg.Connection[Any],
        cur: psycopg.Cursor[Any],
        first_job: dict[tuple[str, str], int],
        latest: int,
    ) -> set[tuple[str, str]] | None:
        """Insert the group's ids into event_ids; which of them were new (None: all of them).

        First as a COPY, in a savepoint, as if none of them were there yet (a duplicate is
        rare): a COPY costs half what an INSERT … ON CONFLICT does, which checks each id
        before it inserts it. A duplicate makes the COPY fail on the key (once any other
        writer inserting it has committed); the savepoint is then rolled back, and
        ``_INSERT_NEW_IDS`` inserts the new ones and says which they are.
        """
        if self.builds_read_side:  # the builder reads its horizon only between writes (build_read_side)
            cur.execute(_TURN_AND_DAY, (WRITE_TURN_LOCK,))
        else:
            cur.execute(_DAY)
        day = int(cur.fetchone()[-1])  # type: ignore[index]
        gen = max(latest, day)
        try:
            with conn.transaction(), cur.copy(_COPY_IDS) as copy:
                # Sorted, as ``_INSERT_NEW_IDS`` inserts them: writers that insert the same ids
                # wait for each other in one order, never in a circle.
                for tenant, event_id in sorted(first_job):
                    copy.write_row((tenant, event_id, gen))
            return None
        except pg_errors.UniqueViolation:
            pass
        tenants, ids = zip(*first_job, strict=True)
        cur.execute(_INSERT_NEW_IDS, (gen, list(tenants), list(ids)))
        return set(cur.fetchall())

    def _meter(
        self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], jobs: list[Job], wanted: list[int]
    ) -> list[int]:
        """How many of each job's new events fit under today's cap; counts them. Fails open."""
        days = [job.received_at_ms // MS_PER_DAY for job in jobs]
        keys = sorted({(job.tenant_id, day) for job, day, n in zip(jobs, days, wanted, strict=True) if n})
        if not keys:
            return list(wanted)
        try:
            with conn.transaction():  # a savepoint: a failure here rolls back only the metering
                room: dict[tuple[str, int], int] = {}
                caps: dict[str, int] = {}
                for tenant, day in keys:  # sorted: one lock order for every writer, so no deadlock
                    cur.execute(_ENSURE_USAGE, (tenant, day))
                    cur.execute(_LOCK_USAGE, (tenant, day))
                    used = cur.fetchone()
                    if tenant not in caps:
                        cur.execute(_CAP, (tenant,))
                        cap = cur.fetchone()
                        caps[tenant] = DEFAULT_DAILY_CAP_EVENTS if cap is None else int(cap[0])
                    room[(tenant, day)] = caps[tenant] - (int(used[0]) if used else 0)
                allowed = []
                for job, day, n in zip(jobs, days, wanted, strict=True):
                    left = room.get((job.tenant_id, day), n)
                    fits = max(0, min(n, left))
                    if n:
                        room[(job.tenant_id, day)] = left - fits
                    allowed.append(fits)
                added: dict[tuple[str, int], int] = {}
                for job, day, fits in zip(jobs, days, allowed, strict=True):
                    if fits:
                        added[(job.tenant_id, day)] = added.get((job.tenant_id, day), 0) + fits
                for (tenant, day), n in added.items():
                    cur.execute(_ADD_USAGE, (n, tenant, day))
                return allowed
        except psycopg.Error as error:
            if conn.broken or conn.closed:
                raise
            log.warning("metering failed, ingesting anyway (fail open): %s", first_line(error))
            return list(wanted)

    def _maybe_prune(self) -> None:
        now = time.monotonic()  # how often is not the wall clock's to say either
        if now < self._next_prune or not self._prune_lock.acquire(blocking=False):
            return
        try:
            self._next_prune = now + PRUNE_EVERY_SECONDS
            deleted = self.prune()
            if deleted:
                log.info("forgot %d event ids older than the dedup window", deleted)
        except StoreError as error:
            log.warning("pruning old event ids failed (will try again): %s", error)
        finally:
            self._prune_lock.release()
