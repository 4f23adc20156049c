"""The PostgreSQL store: the same interface and the same ``semantic_events`` as SQLite, for several nodes.

Several stateless ingest nodes (``drengr serve --store postgresql://…``, or
gunicorn workers) share one PostgreSQL database. Everything that must be exact
across nodes is decided by PostgreSQL itself, inside the write transaction:

- ``semantic_events`` has the ten fixed columns (``dims``/``measures`` as
  ``jsonb``; ``occurred_at``/``received_at`` as ``text`` holding exactly
  ``2026-11-26T02:50:53.123Z``, so they read back byte for byte as SQLite's and
  sort in time order) plus ``library`` (``context.library``, as SQLite's) and
  ``seq``, an identity column. It is append-only, written with ``COPY``: no
  random-key index on it at all; its one index, ``(tenant_id, seq)``, grows
  at its right edge (seq only increases) and serves the read API's newest-first
  pages and cursors.
- Dedup is a side table ``event_ids (tenant_id, event_id, gen)`` whose primary
  key is ``(tenant_id, event_id)``. A write inserts the batch's ids with
  ``INSERT … ON CONFLICT DO NOTHING RETURNING``: what comes back is new, the
  rest are duplicates. Two nodes inserting the same id at once are serialised
  by the unique index (the second waits for the first to commit or roll back),
  so dedup is exact across nodes. ``gen`` is the 7-day generation of receipt
  by the database's clock (or the node's, when that is later); generations
  older than the previous one (less a day of clock margin) by the database's
  clock are deleted by ``prune()`` (found through a BRIN index on ``gen``),
  which a writer runs every ``PRUNE_EVERY_SECONDS``: the dedup index holds
  7–15 days of ids, not all of history, so its size — and the write rate —
  stays flat. No node's clock decides what is forgotten: a node whose clock
  runs ahead or behind neither prunes others' ids early nor stamps its own
  to be pruned early (docs/mapping.md "Deduplication when the clock is wrong").
- Daily-cap metering locks the group's ``daily_usage`` rows, one (tenant, day)
  at a time (``SELECT … FOR UPDATE``), adds what fits and releases the locks at
  COMMIT: exact across nodes. An item dropped over the cap is also taken out of
  ``event_ids``, so a later resend is not mistaken for a duplicate. It runs in a savepoint and fails open (an error there
  rolls back only the metering; the events are stored).
- Lock order is fixed — event ids sorted by ``(tenant_id, event_id)``, then
  usage rows sorted by ``(tenant_id, day)`` — so concurrent writers cannot
  deadlock each other; a deadlock or serialization failure is retried anyway.
- Group commit: ``writers`` threads (each with its own connection) take
  whatever requests are waiting and write them in one transaction.

Citus: every table that grows is keyed by ``tenant_id`` (``event_ids`` and
``daily_usage`` have it first in their primary keys; ``semantic_events`` has
no unique key), so ``semantic_events``, ``event_ids`` and ``daily_usage`` can be
distributed by ``tenant_id`` and co-located, with ``tenants`` and ``api_keys``
(looked up by key digest, not by tenant) as reference tables; each metering
statement then touches one shard. (Designed for, not run against Citus here.)

``import_sqlite()`` copies a SQLite store over (``drengr db import-sqlite``).

Strings PostgreSQL refuses are dealt with before the database (never a 502):
``text`` cannot hold U+0000 and no column can hold a lone surrogate, and
``jsonb`` refuses the escape ``\\u0000``. Every such character — a NUL in any
text column or inside dims/measures (keys and values), a lone surrogate
anywhere — becomes U+FFFD (the replacement character), as the mapper already
does for lone surrogates. ``jsonb`` also reorders object keys (shorter keys
first) and normalises spacing: read dims/measures as JSON, not as text.
"""

import itertools
import json
import logging
import queue
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from .. import metrics
from ..clock import now as clock_now
from ..core.auth import KEY_KINDS, KeyRecord, hash_key, new_key
from ..core.limits import DEDUP_WINDOW_DAYS, DEFAULT_DAILY_CAP_EVENTS, MS_PER_DAY
from ..core.outcome import StoreOutcome
from ..core.timestamps import format_ms, parse_ms
from .base import PRUNE_BATCH_ROWS, KeyCache, KeyInfo, StoreError, allow_names, allow_text, take_group
from .sqlite import hourly, rollup_rows

log = logging.getLogger("drengr.store")

# 2: semantic_events.library, index (tenant_id, seq), drop_counts; 3: tenants.pii_allow; 4: rollups;
# 5: hourly rollups, indexes (tenant_id, external_id, seq) and (tenant_id, event_name, seq)
SCHEMA_VERSION = 5
GROUP_MAX_ROWS = 25_000  # one transaction takes at most this many rows' worth of requests
PRUNE_EVERY_SECONDS = 600.0
PRUNE_CHUNK = 50_000  # ids deleted per statement, so pruning never holds long locks
RETRIES = 3  # attempts of a group on deadlock / serialization failure / a dropped connection
_MIGRATION_LOCK = 0x64726E67  # pg_advisory_xact_lock key: nodes starting together migrate one at a time

EVENT_COLUMNS = (
    "tenant_id",
    "event_id",
    "event_name",
    "event_type",
    "external_id",
    "install_id",
    "occurred_at",
    "received_at",
    "dims",
    "measures",
    "library",
)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS drengr_meta (
        key text PRIMARY KEY,
        value text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tenants (
        tenant_id text PRIMARY KEY,
        daily_cap bigint NOT NULL,
        created_at text NOT NULL
    )""",
    # Keys are stored only as SHA-256 digests; key_id is the digest's first 12 hex digits.
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_hash text PRIMARY KEY,
        key_id text NOT NULL,
        tenant_id text NOT NULL REFERENCES tenants (tenant_id),
        kind text NOT NULL,
        created_at text NOT NULL,
        revoked_at text
    )""",
    """CREATE TABLE IF NOT EXISTS daily_usage (
        tenant_id text NOT NULL,
        day integer NOT NULL,
        events bigint NOT NULL,
        PRIMARY KEY (tenant_id, day)
    )""",
    """CREATE TABLE IF NOT EXISTS semantic_events (
        tenant_id text NOT NULL,
        event_id text NOT NULL,
        event_name text NOT NULL,
        event_type text NOT NULL,
        external_id text,
        install_id text NOT NULL,
        occurred_at text NOT NULL,
        received_at text NOT NULL,
        dims jsonb NOT NULL,
        measures jsonb NOT NULL,
        library text,
        seq bigint GENERATED BY DEFAULT AS IDENTITY
    )""",
    "ALTER TABLE semantic_events ADD COLUMN IF NOT EXISTS library text",  # version 1 databases
    # The tenant's PII allow-list (tenants set --pii-allow): a JSON array of exact key names.
    "ALTER TABLE tenants ADD COLUMN IF NOT EXISTS pii_allow text",  # version 2 databases
    "CREATE INDEX IF NOT EXISTS semantic_events_tenant_seq ON semantic_events (tenant_id, seq)",
    # What was accepted but not stored, by tenant, UTC day and reason (drengr.drops).
    """CREATE TABLE IF NOT EXISTS drop_counts (
        tenant_id text NOT NULL,
        day integer NOT NULL,
        reason text NOT NULL,
        count bigint NOT NULL,
        PRIMARY KEY (tenant_id, day, reason)
    )""",
    """CREATE TABLE IF NOT EXISTS event_ids (
        tenant_id text NOT NULL,
        event_id text NOT NULL,
        gen integer NOT NULL,
        PRIMARY KEY (tenant_id, event_id)
    )""",
    # BRIN, not a B-tree: ids arrive in generation order, so block ranges summarise well, and
    # the index costs next to nothing to keep up; prune() finds an old generation through it.
    "CREATE INDEX IF NOT EXISTS event_ids_gen ON event_ids USING brin (gen)",
    # The read side's rollups, as SQLite's (drengr.store.sqlite ROLLUP_TABLES): kept in the write
    # transaction, read by /v1/stats. A database with rows before them is read by scanning; its
    # rollups_from_seq is past those rows (the scalar subquery runs only when the row is new).
    """CREATE TABLE IF NOT EXISTS event_rollups (
        tenant_id text NOT NULL,
        minute text NOT NULL,
        event_name text NOT NULL,
        event_type text NOT NULL,
        events bigint NOT NULL,
        PRIMARY KEY (tenant_id, minute, event_name, event_type)
    )""",
    """CREATE TABLE IF NOT EXISTS measure_rollups (
        tenant_id text NOT NULL,
        minute text NOT NULL,
        event_name text NOT NULL,
        measure text NOT NULL,
        total double precision NOT NULL,
        PRIMARY KEY (tenant_id, minute, event_name, measure)
    )""",
    """INSERT INTO drengr_meta (key, value)
    SELECT 'rollups_from_seq', (SELECT coalesce(max(seq), 0) + 1 FROM semantic_events)::text
    WHERE NOT EXISTS (SELECT 1 FROM drengr_meta WHERE key = 'rollups_from_seq')""",
    # The same per received hour (a week is ~2,000 rows to add up, not ~120,000); a database from
    # before them gets its minutes added up by hour, once (the tables are new and empty then).
    """CREATE TABLE IF NOT EXISTS hourly_event_rollups (
        tenant_id text NOT NULL,
        hour text NOT NULL,
        event_name text NOT NULL,
        event_type text NOT NULL,
        events bigint NOT NULL,
        PRIMARY KEY (tenant_id, hour, event_name, event_type)
    )""",
    """CREATE TABLE IF NOT EXISTS hourly_measure_rollups (
        tenant_id text NOT NULL,
        hour text NOT NULL,
        event_name text NOT NULL,
        measure text NOT NULL,
        total double precision NOT NULL,
        PRIMARY KEY (tenant_id, hour, event_name, measure)
    )""",
    """INSERT INTO hourly_event_rollups (tenant_id, hour, event_name, event_type, events)
    SELECT tenant_id, substr(minute, 1, 13), event_name, event_type, sum(events) FROM event_rollups
    WHERE NOT EXISTS (SELECT 1 FROM hourly_event_rollups) GROUP BY 1, 2, 3, 4""",
    """INSERT INTO hourly_measure_rollups (tenant_id, hour, event_name, measure, total)
    SELECT tenant_id, substr(minute, 1, 13), event_name, measure, sum(total) FROM measure_rollups
    WHERE NOT EXISTS (SELECT 1 FROM hourly_measure_rollups) GROUP BY 1, 2, 3, 4""",
    # One user's events, one name's (/v1/events?external_id=, ?event_name=): B-trees PostgreSQL keeps
    # beside the rows.
    "CREATE INDEX IF NOT EXISTS semantic_events_tenant_user ON semantic_events (tenant_id, external_id, seq) "
    "WHERE external_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS semantic_events_tenant_name ON semantic_events (tenant_id, event_name, seq)",
]
# Sorted rows, so concurrent writers (several nodes) take the rollup rows' locks in one order.
# One statement for both grains and both tables, its rows as arrays (one round trip, as
# _INSERT_IDS): an executemany of a dozen upserts cost half the rate of 100-event batches.
_GRAINS = (("", "minute", 16), ("hourly_", "hour", 13))  # as drengr.store.sqlite ROLLUP_GRAINS


def _upsert_cte(prefix: str, column: str, measures: bool) -> str:
    table, other, value, cast = (
        ("measure_rollups", "measure", "total", "float8")
        if measures
        else ("event_rollups", "event_type", "events", "bigint")
    )
    return (
        f"INSERT INTO {prefix}{table} (tenant_id, {column}, event_name, {other}, {value}) "
        f"SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::{cast}[]) ORDER BY 1, 2, 3, 4 "
        f"ON CONFLICT (tenant_id, {column}, event_name, {other}) "
        f"DO UPDATE SET {value} = {prefix}{table}.{value} + excluded.{value}"
    )


_UPSERT_ROLLUPS = (
    "WITH "
    + ", ".join(
        f"u{n} AS ({_upsert_cte(prefix, column, measures)})"
        for n, (measures, (prefix, column, _)) in enumerate(
            (measures, grain) for measures in (False, True) for grain in _GRAINS
        )
    )
    + " SELECT 1"
)


def _add_to_rollups(cur: Any, requests: list[list[tuple[Any, ...]]]) -> None:
    """Count the rows just copied in (one list a request, as rollup_rows takes them) into the rollups."""
    events, measures = rollup_rows(requests)
    if events:
        measures = [(*key, float(total)) for *key, total in measures]
        parameters: list[list[Any]] = []
        for rollups in (events, hourly(events), measures, hourly(measures)):
            parameters += [list(column) for column in zip(*rollups, strict=True)] or [[]] * 5
        cur.execute(_UPSERT_ROLLUPS, parameters)


def _count_rows_sql(where: str, sign: str = "") -> list[str]:
    """INSERT … SELECT statements counting the rows ``where`` selects into every grain (a backfill, a prune)."""
    statements = []
    for prefix, column, width in _GRAINS:
        statements.append(
            f"INSERT INTO {prefix}event_rollups (tenant_id, {column}, event_name, event_type, events) "
            f"SELECT tenant_id, substr(received_at, 1, {width}), event_name, event_type, {sign}count(*) "
            f"FROM semantic_events WHERE {where} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
            f"ON CONFLICT (tenant_id, {column}, event_name, event_type) "
            f"DO UPDATE SET events = {prefix}event_rollups.events + excluded.events"
        )
        statements.append(
            f"INSERT INTO {prefix}measure_rollups (tenant_id, {column}, event_name, measure, total) "
            f"SELECT e.tenant_id, substr(e.received_at, 1, {width}), e.event_name, m.key, "
            f"{sign}sum(m.value::text::double precision) "
            "FROM semantic_events AS e, jsonb_each(e.measures) AS m "
            f"WHERE {where.replace('tenant_id', 'e.tenant_id').replace('seq', 'e.seq')} "
            "AND jsonb_typeof(m.value) = 'number' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
            f"ON CONFLICT (tenant_id, {column}, event_name, measure) "
            f"DO UPDATE SET total = {prefix}measure_rollups.total + excluded.total"
        )
    return statements


_BACKFILL_ROLLUPS = _count_rows_sql("tenant_id = %s AND seq >= %s AND seq < %s")
_REMOVE_ROLLUPS = _count_rows_sql("tenant_id = %s AND seq = ANY(%s)", sign="-")

_COPY_EVENTS = f"COPY semantic_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
# %b: binary parameters; psycopg dumps a text array in binary without escaping each element (~5x faster).
_INSERT_IDS = """
    INSERT INTO event_ids (tenant_id, event_id, gen)
    SELECT k.t, k.e, k.g FROM unnest(%b::text[], %b::text[], %b::int[]) AS k(t, e, g) ORDER BY k.t, k.e
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, event_id"""
_DELETE_IDS = """
    DELETE FROM event_ids
    WHERE (tenant_id, event_id) IN (SELECT k.t, k.e FROM unnest(%s::text[], %s::text[]) AS k(t, e))"""
# Metering, one (tenant, day) at a time in sorted order: each statement touches one row of one
# tenant (a single-shard "router" query once Citus distributes daily_usage by tenant_id).
_ENSURE_USAGE = """
    INSERT INTO daily_usage (tenant_id, day, events) VALUES (%s, %s, 0) ON CONFLICT DO NOTHING"""
_LOCK_USAGE = """
    SELECT events FROM daily_usage WHERE tenant_id = %s AND day = %s FOR UPDATE"""
_CAP = "SELECT daily_cap FROM tenants WHERE tenant_id = %s"
_ADD_USAGE = """
    UPDATE daily_usage SET events = events + %s WHERE tenant_id = %s AND day = %s"""
# The database's 7-day generation, as ``generation()`` numbers them (whole days since the epoch / 7).
_DB_GENERATION = "(floor(extract(epoch FROM statement_timestamp()) / 86400)::bigint / 7)::int"
# The write path's ids: stamped with the later of the node's generation of receipt and the database's.
_INSERT_NEW_IDS = f"""
    INSERT INTO event_ids (tenant_id, event_id, gen)
    SELECT k.t, k.e, greatest(%b::int, {_DB_GENERATION})
    FROM unnest(%b::text[], %b::text[]) AS k(t, e) ORDER BY k.t, k.e
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, event_id"""
# What the database's clock says is older than the previous generation, less a day of margin.
_PRUNE = """
    DELETE FROM event_ids
    WHERE (tenant_id, event_id) IN (
        SELECT tenant_id, event_id FROM event_ids
        WHERE gen < (floor(extract(epoch FROM statement_timestamp()) / 86400 - 1)::bigint / 7)::int - 1
        LIMIT %s
    )"""

# Characters PostgreSQL refuses in text: U+0000 and lone surrogates (they cannot be UTF-8).
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
# ... and in JSON text also the escapes jsonb refuses: \u0000 and surrogate escapes (checked precisely below).
_BAD_IN_ROW = re.compile(r"[\x00\ud800-\udfff]|\\u0000|\\u[dD][89abAB]")


def generation(received_at_ms: int) -> int:
    """The 7-day generation of a moment (the same numbering as the SQLite store)."""
    return received_at_ms // MS_PER_DAY // DEDUP_WINDOW_DAYS


def clean_text(value: Any) -> Any:
    """U+0000 and lone surrogates → U+FFFD; anything else (None included) unchanged."""
    if isinstance(value, str) and _BAD_CHARS.search(value):
        return _BAD_CHARS.sub("\ufffd", value)
    return value


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(key): _clean_value(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_clean_value(inner) for inner in value]
    return value


def clean_json(text: str) -> str:
    """JSON text that jsonb accepts: NUL and lone surrogates (raw or escaped) in keys and values → U+FFFD."""
    if not _BAD_IN_ROW.search(text):
        return text
    try:
        # strict=False: a raw control character in a string is read, not refused. Escaped surrogate
        # pairs are joined; lone ones come back as lone surrogates, and are replaced below.
        value = json.loads(text, strict=False)
    except ValueError:  # the mapper always writes valid JSON; if not, let jsonb say so (502)
        return _BAD_CHARS.sub("\ufffd", text)
    return json.dumps(_clean_value(value), ensure_ascii=False)


def _suspect(text: str) -> bool:
    """Cheap test: might ``text`` hold something PostgreSQL refuses? (False: certainly not.)

    ``in`` and ``encode`` run at memory speed: a NUL, a backslash-u escape (the
    mapper writes one only for control characters), or a lone surrogate (the
    UTF-8 encoder refuses it).
    """
    if "\x00" in text or "\\u" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    if not _BAD_IN_ROW.search("\x1f".join(v for v in row if isinstance(v, str))):
        return row
    return (
        *(clean_text(v) for v in row[:8]),
        clean_json(row[8]),
        clean_json(row[9]),
        *map(clean_text, row[10:]),
    )


def clean_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows, with what PostgreSQL would refuse replaced (see the module docstring). Usually the same list.

    The whole batch is tested at once (one join, memory-speed scans); only a
    suspect batch is looked at row by row.
    """
    if not _suspect("\x1f".join(map(str, itertools.chain.from_iterable(rows)))):
        return rows
    return [_clean_row(row) for row in rows]


@dataclass(eq=False)
class _Job:
    tenant_id: str
    rows: list[tuple[Any, ...]]
    received_at_ms: int
    done: threading.Event = field(default_factory=threading.Event)
    outcome: StoreOutcome | None = None
    error: BaseException | None = None


class PostgresStore:
    """Implements ``drengr.store.base.Store`` on a PostgreSQL database (psycopg 3).

    ``dsn`` is a libpq connection string or URI (``postgresql://user@host/db``);
    the tables are created if missing (idempotent, safe when nodes start together).
    ``durability="normal"`` sets ``synchronous_commit = off`` for this store's
    writes (a server crash may lose the last acknowledged commits); ``"full"``
    leaves the server's setting (by default ``on``: a 200 is flushed to the WAL).
    """

    def __init__(
        self,
        dsn: str,
        durability: str = "full",
        writers: int = 2,
        connect_timeout: int = 5,
        statement_timeout_ms: int = 30_000,
        clock: Callable[[], float] = clock_now,
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
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []  # every reader connection, for close()
        self._connections_lock = threading.Lock()
        self._keys = KeyCache(clock)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writers: list[threading.Thread] = []
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
            raise StoreError(f"cannot connect to PostgreSQL: {_first_line(error)}") from error
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (str(self._statement_timeout_ms),)
            )
            if self.durability == "normal":
                conn.execute("SELECT set_config('synchronous_commit', 'off', false)")
        except psycopg.Error as error:
            conn.close()
            raise StoreError(f"cannot set up the PostgreSQL session: {_first_line(error)}") from error
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
                    log.warning("a PostgreSQL connection was lost (%s): reconnecting", _first_line(error))
                    continue
                raise StoreError(_first_line(error)) from error
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
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO drengr_meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
        except psycopg.Error as error:
            raise StoreError(f"cannot prepare the PostgreSQL database: {_first_line(error)}") from error
        finally:
            conn.close()

    # ------------------------------------------------------------ keys and admin

    def lookup_key(self, key_hash: str) -> KeyRecord | None:
        return self._keys.get(key_hash, self._load_key)

    def _load_key(self, key_hash: str) -> KeyRecord | None:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT k.key_hash, k.tenant_id, k.kind, k.revoked_at, t.pii_allow "
                "FROM api_keys k LEFT JOIN tenants t USING (tenant_id) WHERE k.key_hash = %s",
                (key_hash,),
            ).fetchone(),
            read_only=True,
        )
        return (
            None
            if row is None
            else KeyRecord(row[0], row[1], row[2], row[3] is not None, allow_names(row[4]))
        )

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

    def is_new(self) -> bool:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM tenants) AND NOT EXISTS (SELECT 1 FROM api_keys)"
            ).fetchone(),
            read_only=True,
        )
        return bool(row[0])

    def _now_text(self) -> str:
        return format_ms(int(self._clock() * 1000))

    def create_key(self, tenant_id: str, kind: str = "publishable") -> str:
        if kind not in KEY_KINDS:
            raise ValueError(f"kind must be one of {', '.join(KEY_KINDS)}")
        key = new_key(kind, secrets.token_bytes(24))
        digest = hash_key(key)
        now = self._now_text()

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO tenants (tenant_id, daily_cap, created_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (tenant_id, DEFAULT_DAILY_CAP_EVENTS, now),
                )
                conn.execute(
                    "INSERT INTO api_keys (key_hash, key_id, tenant_id, kind, created_at) VALUES (%s,%s,%s,%s,%s)",
                    (digest, digest[:12], tenant_id, kind, now),
                )

        self._run(work)
        return key

    def list_keys(self) -> list[KeyInfo]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT key_id, tenant_id, kind, created_at, revoked_at FROM api_keys "
                "ORDER BY created_at, key_id"
            ).fetchall(),
            read_only=True,
        )
        return [KeyInfo(*row) for row in rows]

    def tenants(self) -> list[str]:
        rows = self._run(
            lambda conn: conn.execute("SELECT tenant_id FROM tenants ORDER BY tenant_id").fetchall(),
            read_only=True,
        )
        return [row[0] for row in rows]

    def revoke_key(self, key_or_id: str) -> bool:
        """Revoke by the key itself or by the key_id `keys list` shows."""
        digest = hash_key(key_or_id)
        cursor = self._run(
            lambda conn: conn.execute(
                "UPDATE api_keys SET revoked_at = %s "
                "WHERE (key_hash = %s OR key_id = %s) AND revoked_at IS NULL",
                (self._now_text(), digest, key_or_id),
            )
        )
        self._keys.clear()
        return bool(cursor.rowcount > 0)

    @staticmethod
    def _rollups_from_seq(conn: psycopg.Connection[Any]) -> int:
        found = conn.execute("SELECT value FROM drengr_meta WHERE key = 'rollups_from_seq'").fetchone()
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
            total = max(0, self._rollups_from_seq(conn) - floor)
            done = 0
            while True:
                with conn.transaction():
                    # One backfill at a time (and no migration meanwhile).
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    high = self._rollups_from_seq(conn)
                    if high <= floor:
                        conn.execute("UPDATE drengr_meta SET value = '1' WHERE key = 'rollups_from_seq'")
                        return done
                    low = max(floor, high - chunk_rows)
                    for tenant_id in tenants:
                        for statement in _BACKFILL_ROLLUPS:
                            conn.execute(statement, (tenant_id, low, high))
                    conn.execute(
                        "UPDATE drengr_meta SET value = %s WHERE key = 'rollups_from_seq'", (str(low),)
                    )
                done += high - low
                if progress is not None:
                    progress(done, total)

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
            deleted = 0
            for tenant_id in tenants:
                last_seq = -1
                while True:
                    with conn.transaction():
                        batch = conn.execute(
                            "SELECT seq, received_at < %s FROM semantic_events WHERE tenant_id = %s AND seq > %s "
                            "ORDER BY seq LIMIT %s",
                            (cutoff, tenant_id, last_seq, batch_rows),
                        ).fetchall()
                        old = [seq for seq, is_old in batch if is_old]
                        if old:
                            # The read side forgets them in the same transaction (rows it counted).
                            from_seq = self._rollups_from_seq(conn)
                            rolled = [seq for seq in old if seq >= from_seq]
                            if rolled:
                                for statement in _REMOVE_ROLLUPS:
                                    conn.execute(statement, (tenant_id, rolled))
                            conn.execute(
                                "DELETE FROM semantic_events WHERE tenant_id = %s AND seq = ANY(%s)",
                                (tenant_id, old),
                            )
                    deleted += len(old)
                    if progress is not None:
                        progress(deleted, max(total, deleted))
                    if not old:
                        break
                    last_seq = batch[-1][0]
            day = before_ms // MS_PER_DAY
            with conn.transaction():
                conn.execute("DELETE FROM daily_usage WHERE day < %s", (day,))
                conn.execute("DELETE FROM drop_counts WHERE day < %s", (day,))
                for prefix, column, _ in _GRAINS:  # minutes and hours the prune emptied
                    conn.execute(f"DELETE FROM {prefix}event_rollups WHERE events <= 0")
                    conn.execute(
                        f"DELETE FROM {prefix}measure_rollups AS m WHERE NOT EXISTS (SELECT 1 FROM "
                        f"{prefix}event_rollups AS e WHERE e.tenant_id = m.tenant_id AND e.{column} = m.{column} "
                        "AND e.event_name = m.event_name)"
                    )
            return deleted

        return int(self._run(work))

    def set_pii_allow(self, tenant_id: str, names: tuple[str, ...]) -> None:
        self._run(
            lambda conn: conn.execute(
                "UPDATE tenants SET pii_allow = %s WHERE tenant_id = %s", (allow_text(names), tenant_id)
            )
        )
        self._keys.clear()

    def pii_allow(self, tenant_id: str) -> tuple[str, ...]:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT pii_allow FROM tenants WHERE tenant_id = %s", (tenant_id,)
            ).fetchone(),
            read_only=True,
        )
        return () if row is None else allow_names(row[0])

    def set_daily_cap(self, tenant_id: str, daily_cap: int) -> None:
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO tenants (tenant_id, daily_cap, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (tenant_id) DO UPDATE SET daily_cap = excluded.daily_cap",
                (tenant_id, daily_cap, self._now_text()),
            )
        )

    def add_drop_counts(self, counts: dict[tuple[str, int, str], int]) -> None:
        """Add to drop_counts by (tenant_id, day, reason); keys in order, so nodes never deadlock."""

        def add(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO drop_counts (tenant_id, day, reason, count) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (tenant_id, day, reason) DO UPDATE SET count = drop_counts.count + excluded.count",
                    [(*map(clean_text, key), count) for key, count in sorted(counts.items())],
                )

        self._run(add)

    def drop_counts(self, tenant_id: str) -> dict[str, int]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT reason, sum(count) FROM drop_counts WHERE tenant_id = %s GROUP BY reason",
                (tenant_id,),
            ).fetchall(),
            read_only=True,
        )
        return {reason: int(total) for reason, total in rows}

    def prune(self) -> int:
        """Forget event ids older than the dedup window needs, by the database's clock; returns how many."""
        deleted = 0
        while True:
            cursor = self._run(lambda conn: conn.execute(_PRUNE, (PRUNE_CHUNK,)))
            deleted += max(cursor.rowcount, 0)
            if cursor.rowcount < PRUNE_CHUNK:
                return deleted

    def import_sqlite(
        self, path: str, chunk_rows: int = 10_000, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, int]:
        """Copy a SQLite store (``drengr.db``) into this database; safe to run again, resumes where it stopped.

        Tenants, keys (their digests), daily usage and every ``semantic_events``
        row, in ``seq`` order, ``chunk_rows`` a transaction. Each chunk records
        the last SQLite ``seq`` it copied in ``drengr_meta`` in the same
        transaction, so a second run copies only what is new. The event ids go
        into the dedup table with the generation of their ``received_at``: a
        client retry that reaches PostgreSQL after the move is still caught.
        No cap applies, and nothing is counted as today's usage. ``progress(done, total)``
        after each chunk: rows of this run copied or skipped, of those it found to copy.
        """
        try:
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open {path}: {error}") from error
        marker = f"sqlite_import_last_seq:{path}"
        try:  # a file from before `library` (schema version 1) gives NULL for it
            source_has = {row[1] for row in source.execute("PRAGMA table_info(semantic_events)")}
            tenants_have = {row[1] for row in source.execute("PRAGMA table_info(tenants)")}
            tenant_columns = "tenant_id, daily_cap, created_at" + (
                ", pii_allow" if "pii_allow" in tenants_have else ""
            )
        except sqlite3.Error as error:
            source.close()
            raise StoreError(f"cannot read {path}: {error}") from error
        source_columns = ", ".join(c if c in source_has else f"NULL AS {c}" for c in EVENT_COLUMNS)
        counts = {"tenants": 0, "api_keys": 0, "daily_usage": 0, "events": 0, "duplicates": 0}
        try:
            conn = self._reader()
            with conn.transaction(), conn.cursor() as cur:
                for table, columns, conflict in (
                    ("tenants", tenant_columns, "DO NOTHING"),
                    ("api_keys", "key_hash, key_id, tenant_id, kind, created_at, revoked_at",
                     "(key_hash) DO UPDATE SET revoked_at = coalesce(api_keys.revoked_at, excluded.revoked_at)"),
                    ("daily_usage", "tenant_id, day, events",
                     "(tenant_id, day) DO UPDATE SET events = greatest(daily_usage.events, excluded.events)"),
                ):  # fmt: skip
                    rows = source.execute(f"SELECT {columns} FROM {table}").fetchall()
                    marks = ", ".join(["%s"] * len(columns.split(",")))
                    cur.executemany(
                        f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT {conflict}", rows
                    )
                    counts[table] = len(rows)
            found = conn.execute("SELECT value FROM drengr_meta WHERE key = %s", (marker,)).fetchone()
            total = source.execute(
                "SELECT count(*) FROM semantic_events WHERE seq > ?", (int(found[0]) if found else 0,)
            ).fetchone()[0]
            done = 0
            while True:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT value FROM drengr_meta WHERE key = %s FOR UPDATE", (marker,))
                    found = cur.fetchone()
                    last_seq = int(found[0]) if found else 0
                    chunk = source.execute(
                        f"SELECT {source_columns}, seq FROM semantic_events WHERE seq > ? ORDER BY seq LIMIT ?",
                        (last_seq, chunk_rows),
                    ).fetchall()
                    if not chunk:
                        return counts
                    rows = clean_rows([row[:-1] for row in chunk])
                    first: dict[tuple[str, str], tuple[Any, ...]] = {}
                    for row in rows:  # a repeat SQLite kept (beyond its window) is kept once here
                        first.setdefault((row[0], row[1]), row)
                    rows = list(first.values())
                    gens = [generation(parse_ms(row[7]) or 0) for row in rows]
                    cur.execute(_INSERT_IDS, ([r[0] for r in rows], [r[1] for r in rows], gens))
                    new = set(cur.fetchall())
                    fresh = [row for row in rows if (row[0], row[1]) in new]
                    with cur.copy(_COPY_EVENTS) as copy:
                        for row in fresh:
                            copy.write_row(row)
                    _add_to_rollups(cur, [[row] for row in fresh])  # rows of many times of receipt
                    cur.execute(
                        "INSERT INTO drengr_meta (key, value) VALUES (%s, %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (marker, str(chunk[-1][-1])),
                    )
                    counts["events"] += len(fresh)
                    counts["duplicates"] += len(rows) - len(fresh)
                done += len(chunk)
                if progress is not None:
                    progress(done, max(total, done))
        except (psycopg.Error, sqlite3.Error) as error:
            raise StoreError(f"import from {path} failed: {_first_line(error)}") from error
        finally:
            source.close()

    # ------------------------------------------------------------ writes

    def write(self, tenant_id: str, rows: list[tuple[Any, ...]], received_at_ms: int) -> StoreOutcome:
        job = _Job(tenant_id, clean_rows(rows), received_at_ms)
        self._start_writers()
        self._queue.put(job)
        # Bounded: a connection attempt and a statement's worth (the writer's own limits). A job
        # answered later is harmless: the client was told 502, and its resend is a duplicate.
        if not job.done.wait(self._connect_timeout + self._statement_timeout_ms / 1000):
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

    def close(self) -> None:
        with self._writer_lock:
            for _ in self._writers:
                self._queue.put(None)
            for thread in self._writers:
                thread.join(timeout=30)
            self._writers = []
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
        self, conn: psycopg.Connection[Any] | None, jobs: list[_Job]
    ) -> psycopg.Connection[Any] | None:
        """Write ``jobs`` in one transaction; every job gets its outcome or its error. Returns the connection."""
        try:
            conn = self._commit_with_retries(conn, jobs)
        except Exception as error:
            log.error("write transaction failed (%d request(s)): %s", len(jobs), _first_line(error))
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
                job.done.set()
        return conn

    def _commit_with_retries(
        self, conn: psycopg.Connection[Any] | None, jobs: list[_Job]
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
                log.warning("write transaction retried: %s", _first_line(error))
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

    def _commit_group(self, conn: psycopg.Connection[Any], jobs: list[_Job]) -> list[StoreOutcome]:
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
        with conn.transaction(), conn.cursor() as cur:
            inserted: set[tuple[str, str]] = set()
            if first_job:
                tenants, ids = zip(*first_job, strict=True)
                latest = generation(max(job.received_at_ms for job in jobs))
                cur.execute(_INSERT_NEW_IDS, (latest, list(tenants), list(ids)))
                inserted = set(cur.fetchall())
            fresh = [
                [row for row in mine if (job.tenant_id, row[1]) in inserted]
                for job, mine in zip(jobs, candidates, strict=True)
            ]
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
                _add_to_rollups(cur, [rows[:n] for rows, n in zip(fresh, allowed, strict=True)])
        outcomes: list[StoreOutcome] = []
        for job, n in zip(jobs, allowed, strict=True):
            duplicates = len(job.rows) - len(fresh[len(outcomes)])
            outcomes.append(
                StoreOutcome(stored=n, duplicates=duplicates, over_cap=len(job.rows) - duplicates - n)
            )
        return outcomes

    def _meter(
        self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], jobs: list[_Job], wanted: list[int]
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
            log.warning("metering failed, ingesting anyway (fail open): %s", _first_line(error))
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
