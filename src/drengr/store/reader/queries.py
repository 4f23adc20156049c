"""The queries both engines share: seq look-ups, counts and sums (from the rows or the rollups), export bounds.

``_QueryReader`` is written once; ``drengr.store.reader.events`` adds the
event pages, and ``drengr.store.reader.engines`` the two small engine parts
(connection, snapshot, dialect). Imports no database driver.
"""

import threading
from collections.abc import Callable, Iterator
from typing import Any

from .model import (
    BUCKET_PREFIX_CHARS,
    LAST_MS,
    RECEIVED_ORDER_SLACK_MS,
    EventQuery,
    Stats,
    StatsQuery,
    _filters,
    _number,
    _replace_stats,
    _SQLBuilder,
    _stats,
    check_measure_name,
)

EVERY_ROW = 1 << 62  # _built_to of a read side kept in the write transaction


# Where the clock went back (SQLite: the writer notes a group received more than the slack before
# the newest row, at its first and its last seq, with that newest time).
_NEWEST_NOTED_BEFORE = "SELECT newest_before FROM clock_backsteps WHERE seq <= ? ORDER BY seq DESC LIMIT 1"
_NOTED_FROM = "SELECT 1 FROM clock_backsteps WHERE seq >= ? LIMIT 1"
# Whether a tenant has any row: a seek on (tenant_id, seq) on PostgreSQL, a scan on SQLite.
TENANT_ANY_ROW = "SELECT 1 FROM semantic_events WHERE tenant_id = ? LIMIT 1"


class _QueryReader:
    """``events`` and ``stats`` written once; each engine supplies its connection and dialect.

    An engine says how to run ``work(execute)`` in one read snapshot
    (``_snapshot``), its placeholder, how to sum one JSON measure, and
    whether its seq look-ups should be per tenant (PostgreSQL: an index on
    ``(tenant_id, seq)``) or over the whole table (SQLite: seq is the rowid).
    """

    mark = "?"
    sum_expression = ""
    seq_per_tenant = False

    def __init__(self) -> None:
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()

    def _remember(self, conn: Any) -> Any:
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _snapshot(self, work: Callable[[Callable[..., Any]], Any], what: str) -> Any:
        raise NotImplementedError

    def _measure_param(self, name: str) -> str:
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text.replace("?", self.mark)

    def tenants(self) -> list[str]:
        """Every tenant's name, in order."""
        rows = self._snapshot(
            lambda execute: execute("SELECT tenant_id FROM tenants ORDER BY 1").fetchall(), "tenants"
        )
        return [str(name) for (name,) in rows]

    def has_rows_of(self, tenant_id: str) -> bool:
        """Whether any row is the tenant's (PostgreSQL: a seek on ``(tenant_id, seq)``; SQLite's reader
        asks its rollups first)."""
        sql = self._sql(TENANT_ANY_ROW)
        return bool(self._snapshot(lambda execute: execute(sql, [tenant_id]).fetchone(), "tenants"))

    def _top(self, execute: Callable[..., Any], tenant_id: str | None) -> int:
        """The newest seq (of the tenant, where seq look-ups are per tenant)."""
        if tenant_id is None or not self.seq_per_tenant:
            return int(execute("SELECT coalesce(max(seq), 0) FROM semantic_events").fetchone()[0])
        found = execute(
            self._sql("SELECT coalesce(max(seq), 0) FROM semantic_events WHERE tenant_id = ?"), [tenant_id]
        ).fetchone()
        return int(found[0])

    def _backsteps(self, execute: Callable[..., Any]) -> bool:
        """Whether the store noted a clock gone back (``clock_backsteps``): rows there are out of
        received order by more than ``RECEIVED_ORDER_SLACK_MS``. Only SQLite's writer notes them."""
        return False

    def _seq_floor(self, execute: Callable[..., Any], since: str, tenant_id: str | None) -> int:
        """The first seq that may have been received at or after ``since`` (binary search on seq).

        Rows are appended in received order only nearly, so the search aims
        ``RECEIVED_ORDER_SLACK_MS`` earlier; the exact ``received_at`` filter
        still applies. Each probe is one step down an index on seq. Where the
        clock went back (``_backsteps``), a row's time is read as the latest of
        its own and the newest noted before it, which never falls by more than
        the slack from one row to the next.
        """
        from ...core.timestamps import format_ms, parse_ms

        since_ms = parse_ms(since)
        if since_ms is None:
            return 0
        target = format_ms(max(0, since_ms - RECEIVED_ORDER_SLACK_MS))
        scoped = tenant_id is not None and self.seq_per_tenant
        tenant = " AND tenant_id = ?" if scoped else ""
        extra = [tenant_id] if scoped else []
        # Two statements: SQLite answers a lone min() or max() with one step down the key, but
        # min() and max() together with a scan of the whole table.
        low = execute(
            self._sql(f"SELECT min(seq) FROM semantic_events WHERE true{tenant}"), extra
        ).fetchone()[0]
        high = execute(
            self._sql(f"SELECT max(seq) FROM semantic_events WHERE true{tenant}"), extra
        ).fetchone()[0]
        if low is None:
            return 0
        probe = self._sql(
            f"SELECT seq, received_at FROM semantic_events WHERE seq >= ?{tenant} ORDER BY seq LIMIT 1"
        )
        noted = self._backsteps(execute)
        while low <= high:
            middle = (low + high) // 2
            seq, received = execute(probe, [middle, *extra]).fetchone()
            if noted:
                before = execute(_NEWEST_NOTED_BEFORE, [seq]).fetchone()
                if before is not None and before[0] > received:
                    received = before[0]
            if received < target:
                low = seq + 1
            else:
                high = middle - 1
        return int(low)

    def _seq_above(self, execute: Callable[..., Any], until_ms: int, tenant_id: str | None) -> int | None:
        """A seq above every row received before ``until_ms``, or None (every row may be).

        The floor of ``until_ms`` plus twice the slack: the rows past it were
        received at ``until_ms`` or later, but for rows of a clock gone back
        (noted from their group's first seq to its last): when any lie past
        it, there is no such seq.
        """
        from ...core.timestamps import format_ms

        if until_ms + 2 * RECEIVED_ORDER_SLACK_MS > LAST_MS:
            return None  # past the last time a row can have: every row is below it
        above = self._seq_floor(execute, format_ms(until_ms + 2 * RECEIVED_ORDER_SLACK_MS), tenant_id)
        if self._backsteps(execute) and execute(_NOTED_FROM, [above]).fetchone() is not None:
            return None
        return above

    def stats(self, query: StatsQuery) -> Stats:
        for name in query.measures:
            if not check_measure_name(name):
                raise ValueError(f"not a measure name: {name!r}")

        def work(execute: Callable[..., Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            if query.time_field == "received_at" and self._rollups_cover(execute):
                return self._stats_from_rollups(execute, query)
            return self._scan_stats(execute, query)

        rows, series = self._snapshot(work, "stats")
        return _stats(rows, series, query)

    def _scan_stats(
        self,
        execute: Callable[..., Any],
        query: StatsQuery,
        seq_below: int | None = None,
        seq_above: int | None = None,
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Counts and sums read from the rows themselves: (event_name, count, *sums), (bucket, name, count)."""
        sums = "".join(", " + self.sum_expression for _ in query.measures)
        sql = _SQLBuilder(self.mark)
        if query.since is not None and query.time_field == "received_at":
            floor = self._seq_floor(execute, query.since, query.tenant_id)
            sql.add("seq >= ?", floor if seq_above is None else max(floor, seq_above + 1))
        elif seq_above is not None:
            sql.add("seq > ?", seq_above)
        if seq_below is not None:
            sql.add("seq < ?", seq_below)
        _filters(sql, query)
        rows = execute(
            f"SELECT event_name, count(*){sums} FROM semantic_events{sql.where()} "
            "GROUP BY event_name ORDER BY count(*) DESC, event_name",
            [*(self._measure_param(name) for name in query.measures), *sql.params],
        ).fetchall()
        series: list[tuple[Any, ...]] = []
        if query.interval is not None:
            width = BUCKET_PREFIX_CHARS[query.interval]
            series = execute(
                f"SELECT substr({query.time_field}, 1, {width}) AS bucket, event_name, count(*) "
                f"FROM semantic_events{sql.where()} GROUP BY bucket, event_name ORDER BY bucket, event_name",
                sql.params,
            ).fetchall()
        return rows, series

    def _rollups_cover(self, execute: Callable[..., Any]) -> bool:
        """True when the rollups count every row up to ``_built_to`` (a new database, or one whose backfill finished)."""
        return False

    def _built_to(self, execute: Callable[..., Any]) -> int:
        """The seq up to which the read side holds every row; the rows past it are read from the table.

        ``EVERY_ROW``: the rollups are kept in the write transaction (a database before its builder).
        """
        return EVERY_ROW

    def _stats_from_rollups(
        self, execute: Callable[..., Any], query: StatsQuery
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The same answer as ``_scan_stats``, from the rollups for whole minutes and the rows at the edges.

        The rollups count by received minute; a ``since`` or ``until`` inside a minute
        takes that minute's part from the rows (found by seq, a few thousand at most).
        The rows the read side has not counted yet (past ``_built_to``) are read too.
        """
        from ...core.timestamps import format_ms, parse_ms

        since_ms = parse_ms(query.since) if query.since is not None else None
        until_ms = parse_ms(query.until) if query.until is not None else None
        edges: list[StatsQuery] = []
        m_start = h_start = m_end = h_end = None  # whole minutes and whole hours inside the range
        if since_ms is not None:
            m_start, h_start = -(-since_ms // 60_000) * 60_000, -(-since_ms // 3_600_000) * 3_600_000
            if m_start != since_ms:
                edges.append(_replace_stats(query, until=format_ms(m_start)))
        if until_ms is not None:
            m_end, h_end = until_ms // 60_000 * 60_000, until_ms // 3_600_000 * 3_600_000
            if m_end != until_ms:
                edges.append(_replace_stats(query, since=format_ms(m_end)))
        if m_start is not None and m_end is not None and m_start >= m_end:
            return self._scan_stats(execute, query, self._seq_ceiling(execute, query))  # within a minute
        built = self._built_to(execute)
        # The whole hours from the hourly rollups, the minutes around them from the minute ones
        # (a series by minute reads minutes only).
        parts: list[tuple[str, str, int | None, int | None]] = []  # table prefix, column, from, to
        if query.interval != "minute" and (h_start is None or h_end is None or h_start < h_end):
            if m_start is not None and h_start is not None and m_start < h_start:
                parts.append(("", "minute", m_start, h_start))
            parts.append(("hourly_", "hour", h_start, h_end))
            if h_end is not None and m_end is not None and h_end < m_end:
                parts.append(("", "minute", h_end, m_end))
        else:
            parts.append(("", "minute", m_start, m_end))
        counts: dict[str, list[Any]] = {}
        series: dict[tuple[str, str], int] = {}
        for prefix, column, low, high in parts:
            width = BUCKET_PREFIX_CHARS[column]
            sql = _SQLBuilder(self.mark)
            if query.tenant_id is not None:
                sql.add("tenant_id = ?", query.tenant_id)
            if low is not None:
                sql.add(f"{column} >= ?", format_ms(low)[:width])
            if high is not None:
                sql.add(f"{column} < ?", format_ms(high)[:width])
            if query.event_name is not None:
                sql.add("event_name = ?", query.event_name)
            for name, count in execute(
                f"SELECT event_name, sum(events) FROM {prefix}event_rollups{sql.where()} GROUP BY event_name "
                "HAVING sum(events) > 0",  # a prune may leave a count of 0 until it tidies up
                sql.params,
            ).fetchall():
                counts.setdefault(name, [0, *([0] * len(query.measures))])[0] += int(count)
            if query.measures:
                marks = ",".join([self.mark] * len(query.measures))
                for name, measure, total in execute(
                    f"SELECT event_name, measure, sum(total) FROM {prefix}measure_rollups{sql.where()}"
                    f"{' AND' if sql.clauses else ' WHERE'} measure IN ({marks}) GROUP BY event_name, measure",
                    [*sql.params, *query.measures],
                ).fetchall():
                    if name in counts:
                        counts[name][1 + query.measures.index(measure)] += _number(total)
            if query.interval is not None:
                bucket_width = BUCKET_PREFIX_CHARS[query.interval]
                for bucket, name, count in execute(
                    f"SELECT substr({column}, 1, {bucket_width}) AS bucket, event_name, sum(events) "
                    f"FROM {prefix}event_rollups{sql.where()} GROUP BY bucket, event_name HAVING sum(events) > 0",
                    sql.params,
                ).fetchall():
                    series[(bucket, name)] = series.get((bucket, name), 0) + int(count)
        counts = {name: values for name, values in counts.items() if values[0] > 0}
        # From the rows themselves: the ragged edges the rollups counted (seq <= built), and every
        # row of the range past what the read side has counted yet (seq > built).
        scans: list[tuple[StatsQuery, int | None, int | None]] = []  # the query, seq below, seq above
        for edge in edges:
            ceiling = self._seq_ceiling(execute, edge)
            scans.append((edge, built + 1 if ceiling is None else min(ceiling, built + 1), None))
        if built < EVERY_ROW:  # (always, but for an older PostgreSQL database: no max(seq) there)
            scans.append((query, self._seq_ceiling(execute, query), built))
        for edge, below, above in scans:
            rows, edge_series = self._scan_stats(execute, edge, below, above)
            for name, count, *sums in rows:
                counts.setdefault(name, [0, *([0] * len(query.measures))])
                counts[name][0] += int(count)
                for index, value in enumerate(sums):
                    counts[name][1 + index] += _number(value)
            for bucket, name, count in edge_series:
                series[(bucket, name)] = series.get((bucket, name), 0) + int(count)
        ordered = sorted(counts.items(), key=lambda item: (-item[1][0], item[0]))
        return [(name, *values) for name, values in ordered], [
            (bucket, name, count) for (bucket, name), count in sorted(series.items())
        ]

    def _seq_ceiling(self, execute: Callable[..., Any], query: StatsQuery | EventQuery) -> int | None:
        """A seq above every row received before ``query.until`` (the edge scan stops there), or None."""
        from ...core.timestamps import parse_ms

        until_ms = parse_ms(query.until) if query.until is not None else None
        return None if until_ms is None else self._seq_above(execute, until_ms, query.tenant_id)

    def _export_bounds(self, query: EventQuery) -> tuple[int, int]:
        """(floor, top): an export walks the rows with floor < seq <= top, top fixed when it starts."""

        def work(execute: Callable[..., Any]) -> tuple[int, int]:
            top = self._top(execute, query.tenant_id)
            floor = 0
            if query.since is not None and query.time_field == "received_at":
                floor = max(0, self._seq_floor(execute, query.since, query.tenant_id) - 1)
            return floor, top

        bounds: tuple[int, int] = self._snapshot(work, "export")
        return bounds

    def _export_sql(self, query: EventQuery, floor: int, top: int) -> _SQLBuilder:
        sql = _SQLBuilder(self.mark)
        sql.add("seq > ?", floor)
        sql.add("seq <= ?", top)
        _filters(sql, query)
        return sql

    def export(self, query: EventQuery, chunk_rows: int) -> Iterator[tuple[list[tuple[Any, ...]], float]]:
        """Every row ``query`` matches (its cursor, order and limit aside), oldest first, in chunks.

        Yields ``(rows, done)``: at most ``chunk_rows`` tuples in ``EXPORT_COLUMNS``
        order, dims and measures as JSON text, and the fraction of the seq range
        walked so far (for a progress bar). Rows that arrive meanwhile are not
        included: the export is of the table as it was when it started.
        """
        raise NotImplementedError
