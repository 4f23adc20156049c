"""Pages of events (``/v1/events``, ``drengr tail``): by cursor, by user through the user index, by name.

The paths a page can take, newest first or oldest first, in one read snapshot:
the rows between two seqs; one user's rows through the SQLite user index
(``drengr.store.sqlite.read_side``); an event name's rows nearest the cursor,
then through the rollups' minutes that hold it. Imports no database driver.
"""

from collections.abc import Callable
from typing import Any

from .model import (
    EVENT_SELECT,
    ORDERS,
    RECEIVED_ORDER_SLACK_MS,
    EventPage,
    EventQuery,
    _filters,
    _page,
    _SQLBuilder,
    _with_limit,
)
from .queries import _QueryReader

# /v1/events by event_name reads this many rows nearest the cursor before it turns to the rollups.
NAME_SCAN_ROWS = 4_096


class _PagedReader(_QueryReader):
    """``events``: the shared queries plus the paths of a page."""

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
        from ..sqlite.read_side import USER_INDEX_BLOCK_BITS as BITS

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
        from ...core.timestamps import format_ms, parse_ms

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
