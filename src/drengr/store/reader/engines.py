"""The two engines of the read side: SQLite (a read-only connection a thread) and PostgreSQL.

Each supplies its connection, its read snapshot, its placeholder and how it
sums a JSON measure; everything else is ``drengr.store.reader.events``.
psycopg is imported on first use.
"""

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..base import StoreError
from ..sqlite import read_side
from ..sqlite.read_side import USERS_LAYOUT, users_path
from .events import _PagedReader
from .model import EVENT_SELECT, EventQuery, _export_row, _filters, _SQLBuilder
from .queries import TENANT_ANY_ROW

_SEQS_AT_ONCE = 500  # one user's rows read by seq at a time (a block can list 16,384)
# Whether a tenant has rows (``has_rows_of``): counted in the rollups (a count of 0: pruned), or past
# their mark, or anywhere (the rollups do not cover the table).
_TENANT_COUNTED = "SELECT 1 FROM event_rollups WHERE tenant_id = ? AND events > 0 LIMIT 1"
_TENANT_PAST = "SELECT 1 FROM semantic_events WHERE seq > ? AND tenant_id = ? LIMIT 1"


class SQLiteReader(_PagedReader):
    """Read-only queries on a SQLite store's file (WAL: reads never wait for the writer)."""

    # total(), not sum(): a float, as the rollups hold sums, and never an integer overflow (a 503).
    sum_expression = "total(json_extract(measures, ?))"

    def __init__(self, path: str, busy_timeout_ms: int = 5_000) -> None:
        super().__init__()
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            uri = Path(self.path).resolve().as_uri() + "?mode=ro"
            try:
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False,
                    timeout=self._busy_timeout_ms / 1000,
                )  # fmt: skip
                conn.execute("PRAGMA query_only = 1")
            except sqlite3.Error as error:
                raise StoreError(f"cannot open {self.path} for reading: {error}") from error
            self._remember(conn)
        return conn

    def _measure_param(self, name: str) -> str:
        return '$."' + name + '"'

    def _meta(self, execute: Callable[..., Any], key: str) -> int | None:
        try:
            found = execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        except sqlite3.OperationalError:  # a file made before drengr had a meta table
            return None
        return None if found is None else int(found[0])

    def _built_to(self, execute: Callable[..., Any]) -> int:
        return self._meta(execute, "read_side_seq") or 0

    def _user_index_covers(self, execute: Callable[..., Any]) -> tuple[int, int] | None:
        """(0, users_seq) from the users file, when it indexes this database (its database_id) in
        this drengr's layout."""
        if not getattr(self._local, "users", False):
            return None
        try:
            found = dict(execute("SELECT key, value FROM users.meta").fetchall())
            ours = execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
        except sqlite3.OperationalError:  # a users file being made, or a database older than it
            return None
        if ours is None or found.get("database_id") != ours[0] or found.get("layout") != USERS_LAYOUT:
            return None
        if "users_seq" not in found:
            return None
        return 0, int(found["users_seq"])

    def _user_rows(
        self, execute: Callable[..., Any], query: EventQuery, low: int, high: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """Block by block: each is one seek into the index for (block, tenant, external_id), whose
        lists of seqs give the rows, read by seq with every filter of the query applied."""
        bits = read_side.USER_INDEX_BLOCK_BITS  # looked up here: tests make the blocks smaller
        rows: list[tuple[Any, ...]] = []
        first, last = low >> bits, high >> bits
        order = range(last, first - 1, -1) if query.order == "desc" else range(first, last + 1)
        find = "SELECT seqs FROM users.user_seqs WHERE block = ? AND tenant_id = ? AND external_id = ?"
        for block in order:
            if len(rows) >= limit:
                break
            found = execute(find, [block, query.tenant_id, query.external_id]).fetchall()
            seqs = sorted(
                (seq for (listed,) in found for seq in map(int, listed.split(",")) if low <= seq <= high),
                reverse=query.order == "desc",
            )
            for start in range(0, len(seqs), _SEQS_AT_ONCE):
                if len(rows) >= limit:
                    break
                part = seqs[start : start + _SEQS_AT_ONCE]
                sql = _SQLBuilder(self.mark)
                sql.add(f"seq IN ({','.join('?' * len(part))})", *part)
                _filters(sql, query)
                rows.extend(
                    execute(
                        f"SELECT {EVENT_SELECT} FROM semantic_events{sql.where()} ORDER BY seq {query.order.upper()} LIMIT ?",
                        [*sql.params, limit - len(rows)],
                    ).fetchall()
                )
        return rows

    _name_index_covers = _user_index_covers  # name_blocks: the same file, built in the same steps
    name_blocks = "users.name_blocks"

    def _attach_users(self, conn: sqlite3.Connection) -> None:
        """The users file (drengr.store.sqlite.read_side), read-only, once it exists."""
        if getattr(self._local, "users", False):
            return
        users = Path(users_path(self.path))
        if users.exists():
            conn.execute("ATTACH DATABASE ? AS users", (users.resolve().as_uri() + "?mode=ro",))
            self._local.users = True

    def _rollups_cover(self, execute: Callable[..., Any]) -> bool:
        first = self._meta(execute, "rollups_from_seq")
        if first is None or self._meta(execute, "read_side_seq") is None:
            return False
        return execute(read_side.ROWS_BELOW.format(schema=""), [first]).fetchone() is None

    def has_rows_of(self, tenant_id: str) -> bool:
        """Whether any row is the tenant's: in the rollups, or among the newest rows past their mark
        (found by seq): a mistyped --tenant gets its answer at once at 10M rows. A scan of the table
        only where the rollups do not cover it (an older database not backfilled)."""

        def work(execute: Callable[..., Any]) -> bool:
            if not self._rollups_cover(execute):
                return execute(TENANT_ANY_ROW, [tenant_id]).fetchone() is not None
            if execute(_TENANT_COUNTED, [tenant_id]).fetchone() is not None:
                return True
            return execute(_TENANT_PAST, [self._built_to(execute), tenant_id]).fetchone() is not None

        return bool(self._snapshot(work, "tenants"))

    def export(self, query: EventQuery, chunk_rows: int) -> Iterator[tuple[list[tuple[Any, ...]], float]]:
        # One short read transaction per chunk, keyed on seq (the rowid): a long export never holds
        # a snapshot that would stop the writer's checkpoints from emptying the WAL.
        floor, top = self._export_bounds(query)
        after = floor
        while after < top:

            def work(execute: Callable[..., Any], after: int = after) -> list[tuple[Any, ...]]:
                sql = self._export_sql(query, after, top)
                rows: list[tuple[Any, ...]] = execute(
                    f"SELECT {EVENT_SELECT} FROM semantic_events{sql.where()} ORDER BY seq LIMIT ?",
                    [*sql.params, chunk_rows],
                ).fetchall()
                return rows

            rows = self._snapshot(work, "export")
            if len(rows) < chunk_rows:
                yield [_export_row(row) for row in rows], 1.0
                return
            after = int(rows[-1][0])
            yield [_export_row(row) for row in rows], (after - floor) / max(1, top - floor)

    def _backsteps(self, execute: Callable[..., Any]) -> bool:
        try:
            return execute("SELECT 1 FROM clock_backsteps LIMIT 1").fetchone() is not None
        except sqlite3.OperationalError:  # a file from before the table, read without migrating
            return False

    def _snapshot(self, work: Callable[[Callable[..., Any]], Any], what: str) -> Any:
        try:
            conn = self._conn()
            self._attach_users(conn)
            conn.execute("BEGIN")  # a read transaction: one snapshot for every statement
            try:
                return work(conn.execute)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreError(f"cannot read {what}: {error}") from error


class PostgresReader(_PagedReader):
    """The same queries on a PostgreSQL store, through its index on ``(tenant_id, seq)``."""

    mark = "%s"
    sum_expression = "sum((measures ->> %s)::numeric)"
    seq_per_tenant = True

    def _built_to(self, execute: Callable[..., Any]) -> int:
        found = execute("SELECT value FROM drengr_meta WHERE key = 'read_side_seq'").fetchone()
        return super()._built_to(execute) if found is None else int(found[0])  # before 6: in the writes

    def _user_index_covers(self, execute: Callable[..., Any]) -> tuple[int, int] | None:
        found = dict(
            execute(
                "SELECT key, value FROM drengr_meta WHERE key IN ('indexes_from_seq', 'read_side_seq')"
            ).fetchall()
        )
        if len(found) < 2:
            return None
        return int(found["indexes_from_seq"]), int(found["read_side_seq"])

    _name_index_covers = _user_index_covers  # the builder keeps user_index and name_blocks together

    def _user_rows(
        self, execute: Callable[..., Any], query: EventQuery, low: int, high: int, limit: int
    ) -> list[tuple[Any, ...]]:
        return self._indexed_rows(execute, query, low, high, limit, "user_index", "external_id")

    def _indexed_rows(
        self,
        execute: Callable[..., Any],
        query: EventQuery,
        low: int,
        high: int,
        limit: int,
        index: str,
        column: str,
    ) -> list[tuple[Any, ...]]:
        """The index's seqs in order, each row then found on ``(tenant_id, seq)`` with every filter applied."""
        sql = _SQLBuilder(self.mark)
        _filters(sql, query)  # the tenant among them: never an empty WHERE
        rows: list[tuple[Any, ...]] = execute(
            f"SELECT e.* FROM (SELECT seq FROM {index} WHERE tenant_id = %s AND {column} = %s "
            "AND seq >= %s AND seq <= %s) AS u "
            f"CROSS JOIN LATERAL (SELECT {EVENT_SELECT} FROM semantic_events{sql.where()} AND seq = u.seq) AS e "
            f"ORDER BY u.seq {query.order.upper()} LIMIT %s",
            [query.tenant_id, getattr(query, column), low, high, *sql.params, limit],
        ).fetchall()
        return rows

    def _rows_in_ranges(
        self, execute: Callable[..., Any], query: EventQuery, ranges: list[tuple[int, int]], limit: int
    ) -> list[tuple[Any, ...]]:
        """All the ranges in one round trip: each read on ``(tenant_id, seq)`` with every filter applied."""
        if not ranges:
            return []
        order = query.order.upper()
        sql = _SQLBuilder(self.mark)
        _filters(sql, query)  # the tenant among them: never an empty WHERE
        rows: list[tuple[Any, ...]] = execute(
            "SELECT e.* FROM unnest(%s::bigint[], %s::bigint[]) AS r(first_seq, last_seq) "
            f"CROSS JOIN LATERAL (SELECT {EVENT_SELECT} FROM semantic_events{sql.where()} "
            f"AND seq >= r.first_seq AND seq <= r.last_seq ORDER BY seq {order} LIMIT %s) AS e "
            f"ORDER BY e.seq {order} LIMIT %s",
            [[first for first, _ in ranges], [last for _, last in ranges], *sql.params, limit, limit],
        ).fetchall()
        return rows

    def _rollups_cover(self, execute: Callable[..., Any]) -> bool:
        # No index on seq alone to look for older rows: the rollups cover the table when they began
        # with it (rollups_from_seq 1: the database was empty when they were made).
        found = execute("SELECT value FROM drengr_meta WHERE key = 'rollups_from_seq'").fetchone()
        return found is not None and found[0] == "1"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn

    def _conn(self) -> Any:
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                conn.execute("SET default_transaction_read_only = on")
                # Every read here touches a few rows through an index, but a plan over seq ranges
                # known only at run time is costed high enough to be compiled: 15-55 ms of JIT for a
                # query that then runs in under 1 ms.
                conn.execute("SET jit = off")
            except psycopg.Error as error:
                raise StoreError(f"cannot connect to PostgreSQL for reading: {error}") from error
            self._remember(conn)
        return conn

    def _measure_param(self, name: str) -> str:
        return name

    def export(self, query: EventQuery, chunk_rows: int) -> Iterator[tuple[list[tuple[Any, ...]], float]]:
        # One server-side cursor in one snapshot: PostgreSQL streams it, chunk by chunk (MVCC: the
        # writers are not held up; only vacuum waits for the export to end).
        import psycopg

        floor, top = self._export_bounds(query)
        sql = self._export_sql(query, floor, top)
        select = EVENT_SELECT.replace("dims, measures", "dims::text, measures::text")
        conn = self._conn()
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                with conn.cursor(name="drengr_export") as cursor:
                    cursor.itersize = chunk_rows
                    cursor.execute(
                        f"SELECT {select} FROM semantic_events{sql.where()} ORDER BY seq", sql.params
                    )
                    while True:
                        rows = cursor.fetchmany(chunk_rows)
                        if not rows:
                            return
                        done = (int(rows[-1][0]) - floor) / max(1, top - floor)
                        yield [_export_row(row) for row in rows], done
        except psycopg.Error as error:
            if conn.broken or conn.closed:
                self._local.conn = None
            raise StoreError(f"cannot read export: {error}") from error

    def _snapshot(self, work: Callable[[Callable[..., Any]], Any], what: str) -> Any:
        import psycopg

        conn = self._conn()
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot, as SQLite's
                return work(conn.execute)
        except psycopg.Error as error:
            if conn.broken or conn.closed:
                self._local.conn = None
            raise StoreError(f"cannot read {what}: {error}") from error
