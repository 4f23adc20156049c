"""Read queries on ``semantic_events``: pages of events by cursor, counts and sums over an interval.

Used by the read API (``drengr.read_api``), the debugger page and ``drengr tail``
/ ``drengr stats``. Never writes: SQLite is opened through a read-only
connection of its own (one per thread, ``mode=ro``), so a long read never holds
the writer's lock and WAL lets it run beside the writer. PostgreSQL uses plain
autocommit connections with the same queries in its dialect.

The cursor is ``seq``, the always-increasing key both stores give every row:
rows are appended in (nearly) received order, so ``seq`` is what "newer than
what I have seen" means, and paging by it never skips or repeats a row.
Timestamps are compared as text: every stored time has the one format
``2026-11-26T02:50:53.123Z``, which sorts in time order.

Imports no web framework; knows nothing of keys (the caller passes the tenant).
"""

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .base import StoreError

TIME_FIELDS = ("received_at", "occurred_at")
ORDERS = ("asc", "desc")
# The width of a bucket in the stored text: `2026-11-26T02:50` is a minute.
BUCKET_PREFIX_CHARS = {"minute": 16, "hour": 13, "day": 10}
BUCKET_SUFFIX = {"minute": ":00.000Z", "hour": ":00:00.000Z", "day": "T00:00:00.000Z"}
MAX_MEASURES_PER_QUERY = 10
# Rows are appended in received order only nearly (clocks of several processes,
# group commits): the seq found by binary search on received_at starts this much earlier.
RECEIVED_ORDER_SLACK_MS = 60_000
# /v1/events by event_name reads this many rows nearest the cursor before it turns to the rollups.
NAME_SCAN_ROWS = 4_096
_SAFE_MEASURE = re.compile(r'[^"\\\x00-\x1f]{1,64}')

EVENT_SELECT = (
    "seq, tenant_id, event_id, event_name, event_type, external_id, install_id, "
    "occurred_at, received_at, dims, measures, library"
)
# What `drengr export` writes, in this order: the columns of semantic_events, seq first.
EXPORT_COLUMNS = (
    "seq", "tenant_id", "event_id", "event_name", "event_type", "external_id", "install_id",
    "occurred_at", "received_at", "dims", "measures", "library",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which rows of ``semantic_events`` to read. ``tenant_id`` None means every tenant (the CLI)."""

    tenant_id: str | None
    since: str | None = None  # inclusive, stored-time text
    until: str | None = None  # exclusive
    time_field: str = "received_at"  # which time since/until compare against
    event_name: str | None = None
    event_type: str | None = None
    external_id: str | None = None
    install_id: str | None = None
    cursor: int | None = None  # seq: asc → rows after it, desc → rows before it
    order: str = "desc"
    limit: int = 50


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[dict[str, Any]]
    next_cursor: int | None  # the same query with cursor=next_cursor gives the next page
    latest_cursor: int  # the newest seq when answered: order=asc from here follows new rows only


@dataclass(frozen=True, slots=True)
class StatsQuery:
    tenant_id: str | None
    since: str | None = None
    until: str | None = None
    time_field: str = "received_at"
    event_name: str | None = None
    measures: tuple[str, ...] = ()
    interval: str | None = None  # "minute" | "hour" | "day": also count per bucket


@dataclass(slots=True)
class Stats:
    total: int
    by_event: list[dict[str, Any]]  # {event_name, count, sums: {measure: number}}, most frequent first
    sums: dict[str, float | int]  # every measure summed over all events
    series: list[dict[str, Any]] = field(default_factory=list)  # {bucket, event_name, count}


class Reader(Protocol):
    def events(self, query: EventQuery) -> EventPage: ...

    def stats(self, query: StatsQuery) -> Stats: ...

    def export(self, query: EventQuery, chunk_rows: int) -> Iterator[tuple[list[tuple[Any, ...]], float]]: ...

    def close(self) -> None: ...


_DURATION = re.compile(r"(\d{1,9})([smhd])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_time(text: str, now_ms: int) -> str | None:
    """Stored-time text for an ISO-8601 timestamp, or for a duration ago (``90s``, ``15m``, ``2h``, ``7d``).

    None when ``text`` is neither. The result compares as text with stored times.
    """
    from ..core.timestamps import format_ms, parse_ms

    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        return format_ms(max(0, now_ms - int(duration.group(1)) * _UNIT_MS[duration.group(2)]))
    if len(text) == 10 and text[4:5] == "-" and text[7:8] == "-":
        text += "T00:00:00Z"  # a bare date is its midnight, UTC
    ms = parse_ms(text)
    return None if ms is None else format_ms(ms)


def check_measure_name(name: str) -> bool:
    """A measure name the queries can carry: 1–64 characters, no quote, backslash or control character."""
    return bool(_SAFE_MEASURE.fullmatch(name))


def _row_to_event(row: tuple[Any, ...]) -> dict[str, Any]:
    (
        seq,
        tenant_id,
        event_id,
        event_name,
        event_type,
        external_id,
        install_id,
        occ,
        rec,
        dims,
        measures,
        library,
    ) = row
    return {
        "seq": int(seq),
        "tenant_id": tenant_id,
        "event_id": event_id,
        "event_name": event_name,
        "event_type": event_type,
        "external_id": external_id,
        "install_id": install_id,
        "occurred_at": occ,
        "received_at": rec,
        # SQLite keeps JSON text; PostgreSQL's jsonb arrives already decoded.
        "dims": json.loads(dims) if isinstance(dims, str) else dims,
        "measures": json.loads(measures) if isinstance(measures, str) else measures,
        "library": library,  # context.library "name version", the SDK that sent it
    }


def _export_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as export writes it: seq an int, dims and measures JSON text (as SQLite keeps them)."""
    return (int(row[0]), *row[1:])


def _with_limit(query: EventQuery, limit: int) -> EventQuery:
    from dataclasses import replace

    return replace(query, limit=limit)


def _replace_stats(query: StatsQuery, **changes: Any) -> StatsQuery:
    from dataclasses import replace

    return replace(query, **changes)


def _number(value: Any) -> float | int:
    """A sum as JSON can carry it: integers stay integers (PostgreSQL hands back Decimal)."""
    if value is None:
        return 0
    if isinstance(value, int | float):
        return value
    as_float = float(value)
    return int(value) if as_float.is_integer() and abs(as_float) < 2**53 else as_float


class _SQLBuilder:
    """WHERE clauses for one dialect: ``?`` (sqlite3) or ``%s`` (psycopg) placeholders."""

    def __init__(self, mark: str) -> None:
        self.mark = mark
        self.clauses: list[str] = []
        self.params: list[Any] = []

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause.replace("?", self.mark))
        self.params.extend(params)

    def where(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


def _filters(sql: _SQLBuilder, query: EventQuery | StatsQuery) -> None:
    if query.time_field not in TIME_FIELDS:
        raise ValueError(f"time_field must be one of {TIME_FIELDS}")
    if query.tenant_id is not None:
        sql.add("tenant_id = ?", query.tenant_id)
    if query.since is not None:
        sql.add(f"{query.time_field} >= ?", query.since)
    if query.until is not None:
        sql.add(f"{query.time_field} < ?", query.until)
    if query.event_name is not None:
        sql.add("event_name = ?", query.event_name)
    if isinstance(query, EventQuery):
        for column in ("event_type", "external_id", "install_id"):
            value = getattr(query, column)
            if value is not None:
                sql.add(f"{column} = ?", value)


def _page(rows: list[tuple[Any, ...]], query: EventQuery, top: int) -> EventPage:
    events = [_row_to_event(row) for row in rows]
    full = len(events) == query.limit
    if query.order == "asc":
        # A short page has read everything up to `top`: the next poll starts there.
        next_cursor = events[-1]["seq"] if full else max(top, query.cursor or 0)
    else:
        next_cursor = events[-1]["seq"] if full else None
    return EventPage(events, next_cursor, top)


def _stats(rows: list[tuple[Any, ...]], series: list[tuple[Any, ...]], query: StatsQuery) -> Stats:
    by_event = []
    totals: dict[str, float | int] = dict.fromkeys(query.measures, 0)
    for row in rows:
        sums = {name: _number(value) for name, value in zip(query.measures, row[2:], strict=True)}
        for name, value in sums.items():
            totals[name] += value
        by_event.append({"event_name": row[0], "count": int(row[1]), "sums": sums})
    suffix = BUCKET_SUFFIX.get(query.interval or "", "")
    return Stats(
        total=sum(item["count"] for item in by_event),
        by_event=by_event,
        sums={name: _number(value) for name, value in totals.items()},
        series=[
            {"bucket": bucket + suffix, "event_name": name, "count": int(n)} for bucket, name, n in series
        ],
    )


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
    names_through_rollups = True  # False: an index on (tenant_id, event_name, seq) finds them

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

    def _top(self, execute: Callable[..., Any], tenant_id: str | None) -> int:
        """The newest seq (of the tenant, where seq look-ups are per tenant)."""
        if tenant_id is None or not self.seq_per_tenant:
            return int(execute("SELECT coalesce(max(seq), 0) FROM semantic_events").fetchone()[0])
        found = execute(
            self._sql("SELECT coalesce(max(seq), 0) FROM semantic_events WHERE tenant_id = ?"), [tenant_id]
        ).fetchone()
        return int(found[0])

    def _seq_floor(self, execute: Callable[..., Any], since: str, tenant_id: str | None) -> int:
        """The first seq that may have been received at or after ``since`` (binary search on seq).

        Rows are appended in received order only nearly, so the search aims
        ``RECEIVED_ORDER_SLACK_MS`` earlier; the exact ``received_at`` filter
        still applies. Each probe is one step down an index on seq.
        """
        from ..core.timestamps import format_ms, parse_ms

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
        while low <= high:
            middle = (low + high) // 2
            row = execute(probe, [middle, *extra]).fetchone()
            if row[1] < target:
                low = row[0] + 1
            else:
                high = middle - 1
        return int(low)

    def events(self, query: EventQuery) -> EventPage:
        if query.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}")

        def work(execute: Callable[..., Any]) -> tuple[list[tuple[Any, ...]], int]:
            top = self._top(execute, query.tenant_id)  # one snapshot: `top` and the rows agree
            low, high = 0, top  # the seqs that may match: low <= seq <= high
            if query.cursor is not None:
                if query.order == "asc":
                    low = max(low, query.cursor + 1)
                else:
                    high = min(high, query.cursor - 1)
            if query.time_field == "received_at":
                if query.since is not None:
                    low = max(low, self._seq_floor(execute, query.since, query.tenant_id))
                ceiling = self._seq_ceiling(execute, query)
                if ceiling is not None:
                    high = min(high, ceiling - 1)
            if low > high:
                return [], top
            if query.external_id is not None and query.tenant_id is not None:
                blocks = self._indexed_blocks(execute)
                if blocks is not None:
                    return self._events_by_user(execute, query, low, high, blocks), top
            if (
                self.names_through_rollups
                and query.event_name is not None
                and query.tenant_id is not None
                and high - low > NAME_SCAN_ROWS
                and self._rollups_cover(execute)
            ):
                # The rows nearest the cursor first (a common name fills its page there), then
                # only the minutes that hold the name.
                near = (
                    (max(low, high - NAME_SCAN_ROWS), high)
                    if query.order == "desc"
                    else (low, low + NAME_SCAN_ROWS)
                )
                rows = self._events_between(execute, query, *near, query.limit)
                if len(rows) == query.limit:
                    return rows, top
                rest = (low, near[0] - 1) if query.order == "desc" else (near[1] + 1, high)
                more = self._events_by_minutes(_with_limit(query, query.limit - len(rows)), execute, *rest)
                return rows + more, top
            return self._events_between(execute, query, low, high, query.limit), top

        rows, top = self._snapshot(work, "events")
        return _page(rows, query, top)

    def _events_between(
        self, execute: Callable[..., Any], query: EventQuery, low: int, high: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """The first ``limit`` rows matching ``query`` with low <= seq <= high, in the query's order."""
        sql = _SQLBuilder(self.mark)
        sql.add("seq >= ?", low)
        sql.add("seq <= ?", high)
        _filters(sql, query)
        rows: list[tuple[Any, ...]] = execute(
            f"SELECT {EVENT_SELECT} FROM semantic_events{sql.where()} "
            f"ORDER BY seq {query.order.upper()} LIMIT {self.mark}",
            [*sql.params, limit],
        ).fetchall()
        return rows

    def _indexed_blocks(self, execute: Callable[..., Any]) -> int | None:
        """The blocks the user index covers (every seq below ``blocks << USER_INDEX_BLOCK_BITS``), or None."""
        return None

    def _events_by_user(
        self, execute: Callable[..., Any], query: EventQuery, low: int, high: int, blocks: int
    ) -> list[tuple[Any, ...]]:
        """One user's page through the user index: the rows past it, then block by block.

        Each block is one seek into the index for (block, tenant, external_id); the
        rows are then read by seq with every filter of the query applied.
        """
        from .sqlite import USER_INDEX_BLOCK_BITS as BITS

        boundary = blocks << BITS  # seqs from here on are not indexed yet
        descending = query.order == "desc"
        rows: list[tuple[Any, ...]] = []

        def tail() -> None:
            if high >= boundary and len(rows) < query.limit:
                rows.extend(
                    self._events_between(execute, query, max(low, boundary), high, query.limit - len(rows))
                )

        def indexed() -> None:
            first, last = low >> BITS, min(high, boundary - 1) >> BITS
            order = range(last, first - 1, -1) if descending else range(first, last + 1)
            find = self._sql(
                "SELECT seq FROM user_index WHERE block = ? AND tenant_id = ? AND external_id = ? "
                f"AND seq >= ? AND seq <= ? ORDER BY seq {query.order.upper()}"
            )
            for block in order:
                if len(rows) >= query.limit:
                    return
                seqs = [
                    row[0] for row in execute(find, [block, query.tenant_id, query.external_id, low, high])
                ]
                if not seqs:
                    continue
                sql = _SQLBuilder(self.mark)
                sql.add(f"seq IN ({','.join([self.mark] * len(seqs))})", *seqs)
                _filters(sql, query)
                rows.extend(
                    execute(
                        f"SELECT {EVENT_SELECT} FROM semantic_events{sql.where()} "
                        f"ORDER BY seq {query.order.upper()} LIMIT {self.mark}",
                        [*sql.params, query.limit - len(rows)],
                    ).fetchall()
                )

        for part in (tail, indexed) if descending else (indexed, tail):
            part()
        return rows[: query.limit]

    def _events_by_minutes(
        self, query: EventQuery, execute: Callable[..., Any], low: int, high: int
    ) -> list[tuple[Any, ...]]:
        """An event name's page through the rollups: only the received minutes that hold the name are read.

        The hourly rollups say which hours hold the name, the minute rollups which
        minutes of those hours; each run of such minutes becomes a seq range (the
        binary search on received_at), read newest first (or oldest, for asc).
        """
        from ..core.timestamps import format_ms, parse_ms

        descending = query.order == "desc"
        rows: list[tuple[Any, ...]] = []
        # Only the hours the seq bounds can reach (a cursor deep in the past skips the newer ones).
        scoped = " AND tenant_id = ?" if self.seq_per_tenant else ""
        extra = [query.tenant_id] if self.seq_per_tenant else []
        edge = self._sql(
            f"SELECT received_at FROM semantic_events WHERE seq {{}} ?{scoped} ORDER BY seq {{}} LIMIT 1"
        )
        newest = execute(edge.format("<=", "DESC"), [high, *extra]).fetchone()
        oldest = execute(edge.format(">=", "ASC"), [low, *extra]).fetchone()
        if newest is None or oldest is None:
            return rows
        from_hour = format_ms((parse_ms(oldest[0]) or 0) - 2 * RECEIVED_ORDER_SLACK_MS)[:13]
        to_hour = format_ms((parse_ms(newest[0]) or 0) + 2 * RECEIVED_ORDER_SLACK_MS)[:13]
        hours = [
            row[0]
            for row in execute(
                self._sql(
                    "SELECT DISTINCT hour FROM hourly_event_rollups WHERE tenant_id = ? AND hour >= ? "
                    f"AND hour <= ? AND event_name = ? AND events > 0 ORDER BY hour {query.order.upper()}"
                ),
                [query.tenant_id, from_hour, to_hour, query.event_name],
            ).fetchall()
        ]
        minute_sql = self._sql(
            "SELECT DISTINCT minute FROM event_rollups WHERE tenant_id = ? AND minute >= ? AND minute < ? "
            f"AND event_name = ? AND events > 0 ORDER BY minute {query.order.upper()}"
        )
        for hour in hours:
            hour_ms = parse_ms(hour + ":00:00Z") or 0
            starts = sorted(
                parse_ms(minute + ":00Z") or 0
                for (minute,) in execute(
                    minute_sql,
                    [
                        query.tenant_id,
                        format_ms(hour_ms)[:16],
                        format_ms(hour_ms + 3_600_000)[:16],
                        query.event_name,
                    ],
                ).fetchall()
            )
            # Minutes a few apart share one seq range (their ranges would overlap by the slack).
            runs: list[list[int]] = []
            for start in starts:
                if runs and start <= runs[-1][1] + 3 * RECEIVED_ORDER_SLACK_MS:
                    runs[-1][1] = start + 60_000
                else:
                    runs.append([start, start + 60_000])
            for start, end in reversed(runs) if descending else runs:
                seq_low = max(low, self._seq_floor(execute, format_ms(start), query.tenant_id))
                seq_high = min(
                    high,
                    self._seq_floor(execute, format_ms(end + 2 * RECEIVED_ORDER_SLACK_MS), query.tenant_id)
                    - 1,
                )
                if rows:  # ranges may overlap by the slack: a row already read is not read twice
                    if descending:
                        seq_high = min(seq_high, int(rows[-1][0]) - 1)
                    else:
                        seq_low = max(seq_low, int(rows[-1][0]) + 1)
                if seq_low > seq_high:
                    continue
                rows.extend(self._events_between(execute, query, seq_low, seq_high, query.limit - len(rows)))
                if len(rows) >= query.limit:
                    return rows
        return rows

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
        self, execute: Callable[..., Any], query: StatsQuery, seq_below: int | None = None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Counts and sums read from the rows themselves: (event_name, count, *sums), (bucket, name, count)."""
        sums = "".join(", " + self.sum_expression for _ in query.measures)
        sql = _SQLBuilder(self.mark)
        if query.since is not None and query.time_field == "received_at":
            sql.add("seq >= ?", self._seq_floor(execute, query.since, query.tenant_id))
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
        """True when the rollups count every row (a new database, or one whose backfill finished)."""
        return False

    def _stats_from_rollups(
        self, execute: Callable[..., Any], query: StatsQuery
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The same answer as ``_scan_stats``, from the rollups for whole minutes and the rows at the edges.

        The rollups count by received minute; a ``since`` or ``until`` inside a minute
        takes that minute's part from the rows (found by seq, a few thousand at most).
        """
        from ..core.timestamps import format_ms, parse_ms

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
        for edge in edges:
            rows, edge_series = self._scan_stats(execute, edge, self._seq_ceiling(execute, edge))
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
        from ..core.timestamps import format_ms, parse_ms

        until_ms = parse_ms(query.until) if query.until is not None else None
        if until_ms is None:
            return None
        return self._seq_floor(execute, format_ms(until_ms + 2 * RECEIVED_ORDER_SLACK_MS), query.tenant_id)

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


class SQLiteReader(_QueryReader):
    """Read-only queries on a SQLite store's file (WAL: reads never wait for the writer)."""

    sum_expression = "coalesce(sum(json_extract(measures, ?)), 0)"

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

    def _indexed_blocks(self, execute: Callable[..., Any]) -> int | None:
        try:
            found = execute("SELECT value FROM meta WHERE key = 'user_index_blocks'").fetchone()
        except sqlite3.OperationalError:  # a file made before drengr had a meta table
            return None
        return None if found is None else int(found[0])

    def _rollups_cover(self, execute: Callable[..., Any]) -> bool:
        try:
            found = execute("SELECT value FROM meta WHERE key = 'rollups_from_seq'").fetchone()
        except sqlite3.OperationalError:  # a file made before drengr had a meta table
            return False
        if found is None:
            return False
        older = execute("SELECT 1 FROM semantic_events WHERE seq < ? LIMIT 1", [int(found[0])]).fetchone()
        return older is None

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

    def _snapshot(self, work: Callable[[Callable[..., Any]], Any], what: str) -> Any:
        try:
            conn = self._conn()
            conn.execute("BEGIN")  # a read transaction: one snapshot for every statement
            try:
                return work(conn.execute)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreError(f"cannot read {what}: {error}") from error


class PostgresReader(_QueryReader):
    """The same queries on a PostgreSQL store, through its index on ``(tenant_id, seq)``."""

    mark = "%s"
    sum_expression = "sum((measures ->> %s)::numeric)"
    seq_per_tenant = True
    names_through_rollups = False

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


def open_reader(store: Any) -> Reader:
    """A Reader on the same database as ``store`` (a SQLiteStore's ``path`` or a PostgresStore's ``dsn``)."""
    path = getattr(store, "path", None)
    if isinstance(path, str | Path):
        return SQLiteReader(str(path))
    dsn = getattr(store, "dsn", None)
    if isinstance(dsn, str):
        return PostgresReader(dsn)
    raise StoreError(f"no reader for a store of type {type(store).__name__}")


def reader_for_location(location: str) -> Reader:
    """A Reader on a SQLite path or a ``postgresql://`` URI (the CLI's ``--db``)."""
    from . import is_postgres_url

    if is_postgres_url(location):
        return PostgresReader(location.strip())
    return SQLiteReader(location)
