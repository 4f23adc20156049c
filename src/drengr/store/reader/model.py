"""What the read side asks and answers: queries, pages, stats, and the helpers every engine shares.

Plain values and SQL text only: no connection, no database driver.
"""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

TIME_FIELDS = ("received_at", "occurred_at")
ORDERS = ("asc", "desc")
# The width of a bucket in the stored text: `2026-11-26T02:50` is a minute.
BUCKET_PREFIX_CHARS = {"minute": 16, "hour": 13, "day": 10}
BUCKET_SUFFIX = {"minute": ":00.000Z", "hour": ":00:00.000Z", "day": "T00:00:00.000Z"}
MAX_MEASURES_PER_QUERY = 10
# Rows are appended in received order only nearly (clocks of several processes,
# group commits): the seq found by binary search on received_at starts this much earlier.
RECEIVED_ORDER_SLACK_MS = 60_000
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

    def tenants(self) -> list[str]: ...

    def has_rows_of(self, tenant_id: str) -> bool: ...

    def close(self) -> None: ...


_DURATION = re.compile(r"(\d{1,9})([smhd])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


FIRST_MS = -62_167_219_200_000  # 0000-01-01T00:00:00.000Z
LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def parse_time(text: str, now_ms: int) -> str | None:
    """Stored-time text for an ISO-8601 timestamp, or for a duration ago (``90s``, ``15m``, ``2h``, ``7d``).

    None when ``text`` is neither. The result compares as text with stored times: a time past
    year 9999 or before year 0 is read as the last or first millisecond of that range.
    """
    from ...core.timestamps import format_ms, parse_ms

    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        return format_ms(max(0, now_ms - int(duration.group(1)) * _UNIT_MS[duration.group(2)]))
    if len(text) == 10 and text[4:5] == "-" and text[7:8] == "-":
        text += "T00:00:00Z"  # a bare date is its midnight, UTC
    ms = parse_ms(text)
    # Within the years stored times can have (0000–9999): an offset can carry a time past either
    # end, where its text would neither sort with stored times nor parse back.
    return None if ms is None else format_ms(min(max(ms, FIRST_MS), LAST_MS))


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
