"""The SQLite store: WAL, BEGIN IMMEDIATE, group commit, windowed dedup.

Layout, and why (see ../shared/PERF-NOTES.md — the dedup index, not parsing,
is what costs at scale):

- ``semantic_events`` is append-only: a rowid table with no random-key index,
  so its write rate does not fall as it grows.
- Dedup keys live in ``event_ids_<week>`` tables (``WITHOUT ROWID``, a 16-byte
  BLAKE2b digest of tenant and event_id as the key), one per 7-day
  generation of *received* time. A write checks the current and the previous
  generation and inserts into the current one, so every repeat within 7 days
  is caught; older generations are dropped whole (no per-row delete).
- One writer thread per process owns the write connection and commits
  whatever requests are waiting in one transaction (group commit), so
  ``synchronous=FULL`` costs one fsync per group, not per request.
- Several processes share the file: every write transaction is
  ``BEGIN IMMEDIATE`` with a busy timeout, never a deferred upgrade.
- Daily-cap metering runs inside a savepoint and fails open.

sqlite-utils does schema and admin; the hot insert goes straight to
``executemany`` (``insert_all`` measured ~2× slower).
"""

import hashlib
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from ..core.auth import KEY_KINDS, KeyRecord, hash_key, new_key
from ..core.limits import DEDUP_WINDOW_DAYS, DEFAULT_DAILY_CAP_EVENTS, MS_PER_DAY
from ..core.machine import StoreOutcome
from ..core.timestamps import format_ms
from .base import KeyInfo, StoreError

log = logging.getLogger("drengr.store")

SCHEMA_VERSION = 1
GROUP_MAX_ROWS = 25_000  # one transaction takes at most this many rows' worth of requests
KEY_CACHE_SECONDS = 2.0  # a revoked key stops working within this long
KEY_CACHE_MAX = 10_000
_SQL_VARIABLES = 30_000  # below SQLite's 32,766 per statement
_EVENT_COLUMNS = (
    "tenant_id, event_id, event_name, event_type, external_id, install_id, "
    "occurred_at, received_at, dims, measures"
)
_INSERT_EVENTS = f"INSERT INTO semantic_events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"


def dedup_digest(tenant_id: str, event_id: str) -> bytes:
    material = f"{tenant_id}\x00{event_id}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(material, digest_size=16).digest()


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


class SQLiteStore:
    """Implements ``drengr.store.base.Store`` on one SQLite file."""

    def __init__(
        self,
        path: str,
        durability: str = "full",
        busy_timeout_ms: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")
        self.path = path
        self._synchronous = durability.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._clock = clock
        self._local = threading.local()
        self._key_cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._known_generations: set[int] = set()
        self.group_commits = 0  # transactions the writer has committed (group commit is visible in tests)
        self._migrate()

    # ------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self._busy_timeout_ms / 1000,
            check_same_thread=False,
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
            db = sqlite_utils.Database(conn)
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
            # Column types and NOT NULL exactly as the SPEC's table; no index (append-only).
            db.table("semantic_events").create(
                {
                    "tenant_id": str, "event_id": str, "event_name": str, "event_type": str,
                    "external_id": str, "install_id": str, "occurred_at": str,
                    "received_at": str, "dims": str, "measures": str,
                },
                not_null={
                    "tenant_id", "event_id", "event_name", "event_type", "install_id",
                    "occurred_at", "received_at", "dims", "measures",
                },
                if_not_exists=True,
            )  # fmt: skip
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
        now = self._clock()
        cached = self._key_cache.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = (
            self._reader()
            .execute(
                "SELECT key_hash, tenant_id, kind, revoked_at FROM api_keys WHERE key_hash = ?",
                (key_hash,),
            )
            .fetchone()
        )
        record = None if row is None else KeyRecord(row[0], row[1], row[2], row[3] is not None)
        if len(self._key_cache) >= KEY_CACHE_MAX:
            self._key_cache.clear()  # a flood of unknown keys cannot grow memory
        self._key_cache[key_hash] = (now + KEY_CACHE_SECONDS, record)
        return record

    def _admin(self) -> sqlite_utils.Database:
        return sqlite_utils.Database(self._reader())

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

    def revoke_key(self, key_or_id: str) -> bool:
        """Revoke by the key itself or by the key_id `keys list` shows."""
        digest = hash_key(key_or_id)
        with self._admin_transaction() as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE (key_hash = ? OR key_id = ?) AND revoked_at IS NULL",
                (self._now_text(), digest, key_or_id),
            )
            changed = cursor.rowcount > 0
        self._key_cache.clear()
        return changed

    def set_daily_cap(self, tenant_id: str, daily_cap: int) -> None:
        with self._admin_transaction() as conn:
            self._ensure_tenant(conn, tenant_id)
            conn.execute("UPDATE tenants SET daily_cap = ? WHERE tenant_id = ?", (daily_cap, tenant_id))

    def _admin_transaction(self) -> "_Transaction":
        return _Transaction(self._reader())

    # ------------------------------------------------------------ writes

    def write(self, tenant_id: str, rows: list[tuple[Any, ...]], received_at_ms: int) -> StoreOutcome:
        job = _Job(tenant_id, rows, received_at_ms)
        self._submit(job)
        if job.outcome is None:
            raise StoreError(str(job.error))
        return job.outcome

    def writable(self) -> bool:
        job = _Job("", [], int(self._clock() * 1000), probe=True)
        self._submit(job)
        return job.error is None

    def _submit(self, job: _Job) -> None:
        self._start_writer()
        self._queue.put(job)
        job.done.wait()

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
                self._queue.put(None)
                self._writer.join(timeout=30)
                self._writer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _write_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            first = self._queue.get()
            if first is None:
                break
            jobs = [first]
            rows = len(first.rows)
            stop = False
            while rows < GROUP_MAX_ROWS:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                rows += len(job.rows)
            try:
                if conn is None:
                    conn = self._connect()
                self._commit_group(conn, jobs)
            except Exception as error:  # the whole group failed: every request gets 502
                log.error("write transaction failed: %s", error)
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
            finally:
                for job in jobs:
                    job.done.set()
            if stop:
                break
        if conn is not None:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        if all(job.probe for job in jobs):
            conn.execute("ROLLBACK")
            return
        for job in jobs:
            if job.probe:
                continue
            conn.execute("SAVEPOINT job")
            try:
                job.outcome = self._apply(conn, job)
                conn.execute("RELEASE job")
            except sqlite3.Error as error:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                job.outcome, job.error = None, error
        conn.execute("COMMIT")
        self.group_commits += 1

    def _dedup_tables(self, conn: sqlite3.Connection, received_at_ms: int) -> tuple[str, str]:
        current = generation(received_at_ms)
        if current not in self._known_generations:
            conn.execute(f"CREATE TABLE IF NOT EXISTS event_ids_{current} (k BLOB PRIMARY KEY) WITHOUT ROWID")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS event_ids_{current - 1} (k BLOB PRIMARY KEY) WITHOUT ROWID"
            )
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'event\\_ids\\_%' ESCAPE '\\'"
            ).fetchall():
                if int(name.rsplit("_", 1)[1]) < current - 1:
                    conn.execute(f"DROP TABLE {name}")  # older than the window: dropped whole
            self._known_generations = {current}
        return f"event_ids_{current}", f"event_ids_{current - 1}"

    def _apply(self, conn: sqlite3.Connection, job: _Job) -> StoreOutcome:
        current, previous = self._dedup_tables(conn, job.received_at_ms)
        tenant_id = job.tenant_id
        digests = [dedup_digest(tenant_id, row[1]) for row in job.rows]
        seen: set[bytes] = set()
        for start in range(0, len(digests), _SQL_VARIABLES // 2):
            chunk = digests[start : start + _SQL_VARIABLES // 2]
            marks = ",".join("?" * len(chunk))
            seen.update(
                found
                for (found,) in conn.execute(
                    f"SELECT k FROM {current} WHERE k IN ({marks}) "
                    f"UNION ALL SELECT k FROM {previous} WHERE k IN ({marks})",
                    chunk + chunk,
                )
            )
        fresh_rows: list[tuple[Any, ...]] = []
        fresh_keys: list[tuple[bytes]] = []
        for row, digest in zip(job.rows, digests, strict=True):
            if digest in seen:
                continue
            seen.add(digest)  # repeats inside one request are stored once too
            fresh_rows.append(row)
            fresh_keys.append((digest,))
        duplicates = len(job.rows) - len(fresh_rows)
        allowed = self._meter(conn, tenant_id, job.received_at_ms // MS_PER_DAY, len(fresh_rows))
        if allowed < len(fresh_rows):
            del fresh_rows[allowed:], fresh_keys[allowed:]
        conn.executemany(_INSERT_EVENTS, fresh_rows)
        conn.executemany(f"INSERT INTO {current} (k) VALUES (?)", fresh_keys)
        return StoreOutcome(
            stored=len(fresh_rows), duplicates=duplicates, over_cap=len(digests) - duplicates - allowed
        )

    def _meter(self, conn: sqlite3.Connection, tenant_id: str, day: int, wanted: int) -> int:
        """How many of ``wanted`` new events fit under today's cap; counts them. Fails open."""
        if wanted == 0:
            return 0
        conn.execute("SAVEPOINT meter")
        try:
            cap_row = conn.execute(
                "SELECT daily_cap FROM tenants WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
            cap = DEFAULT_DAILY_CAP_EVENTS if cap_row is None else cap_row[0]
            used_row = conn.execute(
                "SELECT events FROM daily_usage WHERE tenant_id = ? AND day = ?", (tenant_id, day)
            ).fetchone()
            used = 0 if used_row is None else used_row[0]
            allowed = max(0, min(wanted, cap - used))
            conn.execute(
                "INSERT INTO daily_usage (tenant_id, day, events) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant_id, day) DO UPDATE SET events = events + excluded.events",
                (tenant_id, day, allowed),
            )
            conn.execute("RELEASE meter")
            return allowed
        except sqlite3.Error as error:
            conn.execute("ROLLBACK TO meter")
            conn.execute("RELEASE meter")
            log.warning("metering failed, ingesting anyway (fail open): %s", error)
            return wanted


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
