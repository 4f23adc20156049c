"""Pages of events (``/v1/events``, ``drengr tail``): by cursor, by user through the user index, by name.

The paths a page can take, newest first or oldest first, in one read snapshot:
the rows between two seqs; one user's rows through the SQLite user index
(``drengr.store.sqlite.read_side``); an event name's rows nearest the cursor,
then through the rollups' minutes that hold it. Imports no database driver.
"""

from collections.abc import Callable
from typing import Any

from .. import rollups
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


NAME_BLOCKS_AT_ONCE = 64  # name_blocks rows a page's look-up fetches at a time, at most


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
            indexes = (
                (query.external_id, self._user_index_covers, self._user_rows),
                (query.event_name, self._name_index_covers, self._name_rows),
            )
            for sought, covers, through in indexes:  # a user first, then a name
                if sought is not None and query.tenant_id is not None:
                    covered = covers(execute)
                    if covered is not None:
                        return self._events_through_index(execute, query, low, high, covered, through), top
            if (
                query.event_name is not None
                and query.tenant_id is not None
                and high - low > NAME_SCAN_ROWS
                and self._rollups_cover(execute)
            ):
                return self._events_by_name(execute, query, low, high), top
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

    def _user_index_covers(self, execute: Callable[..., Any]) -> tuple[int, int] | None:
        """The seqs (first, last) whose rows the user index holds, or None (no user index)."""
        return None

    def _user_rows(
        self, execute: Callable[..., Any], query: EventQuery, low: int, high: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """Up to ``limit`` rows of ``query``'s user with low <= seq <= high, through the user index, in order."""
        raise NotImplementedError

    def _name_index_covers(self, execute: Callable[..., Any]) -> tuple[int, int] | None:
        """The seqs (first, last) whose rows an event-name index holds, or None (names go through the rollups)."""
        return None

    name_blocks = "name_blocks"  # the table (SQLite: in the users file)

    def _name_rows(
        self, execute: Callable[..., Any], query: EventQuery, low: int, high: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """Up to ``limit`` rows of ``query``'s event name with low <= seq <= high, in order, through
        ``name_blocks``: the name's blocks in order, each read only between the first and last seq the
        name has there, with every filter of the query applied."""
        bits = rollups.NAME_BLOCK_BITS
        rows: list[tuple[Any, ...]] = []
        order = query.order.upper()
        find = self._sql(
            f"SELECT block, first_seq, last_seq FROM {self.name_blocks} WHERE tenant_id = ? AND event_name = ? "
            f"AND block >= ? AND block <= ? ORDER BY block {order} LIMIT ?"
        )
        lowest, highest = low >> bits, high >> bits
        at_once = (
            1  # a common name's first block fills its page; a rare name's take more, 4 times more each time
        )
        while len(rows) < limit and lowest <= highest:
            blocks = execute(find, [query.tenant_id, query.event_name, lowest, highest, at_once]).fetchall()
            ranges = [(max(low, first), min(high, last)) for _, first, last in blocks]
            rows.extend(self._rows_in_ranges(execute, query, ranges, limit - len(rows)))
            if len(blocks) < at_once:
                break
            at_once = min(NAME_BLOCKS_AT_ONCE, 4 * at_once)
            if order == "DESC":
                highest = blocks[-1][0] - 1
            else:
                lowest = blocks[-1][0] + 1
        return rows

    def _rows_in_ranges(
        self, execute: Callable[..., Any], query: EventQuery, ranges: list[tuple[int, int]], limit: int
    ) -> list[tuple[Any, ...]]:
        """The first ``limit`` rows of ``query`` in these seq ranges (disjoint, in the query's order)."""
        rows: list[tuple[Any, ...]] = []
        for first, last in ranges:  # as far as the page needs: a common name's first block fills it
            if len(rows) >= limit:
                break
            rows.extend(self._events_between(execute, query, first, last, limit - len(rows)))
        return rows

    def _events_through_index(
        self,
        execute: Callable[..., Any],
        query: EventQuery,
        low: int,
        high: int,
        covered: tuple[int, int],
        through: Callable[[Callable[..., Any], EventQuery, int, int, int], list[tuple[Any, ...]]],
    ) -> list[tuple[Any, ...]]:
        """One user's (or one name's) page through an index that holds the seqs ``covered`` (first,
        last): the rows past it from the table, then through the index (``through``: ``_user_rows``,
        ``_name_rows``), then any rows older than it (the table again)."""
        descending = query.order == "desc"
        rows: list[tuple[Any, ...]] = []

        def table(part_low: int, part_high: int) -> None:
            if part_low <= part_high and len(rows) < query.limit:
                rows.extend(
                    self._events_between(execute, query, part_low, part_high, query.limit - len(rows))
                )

        def indexed(part_low: int, part_high: int) -> None:
            if part_low <= part_high and len(rows) < query.limit:
                rows.extend(through(execute, query, part_low, part_high, query.limit - len(rows)))

        first, last = covered
        parts = [
            (table, low, min(high, first - 1)),  # older than the index (a backfill not run yet)
            (indexed, max(low, first), min(high, last)),
            (table, max(low, last + 1), high),  # not indexed yet
        ]
        for part, part_low, part_high in reversed(parts) if descending else parts:
            part(part_low, part_high)
        return rows[: query.limit]

    def _events_by_name(
        self, execute: Callable[..., Any], query: EventQuery, low: int, high: int
    ) -> list[tuple[Any, ...]]:
        """An event name's page: the rows nearest the cursor first (a common name fills its page
        there), then only the minutes whose rollups hold the name; the rows the read side has not
        counted yet (past ``_built_to``) are read from the table, in their place in the order."""
        built = self._built_to(execute)
        if query.order == "desc":
            near = (max(low, min(high - NAME_SCAN_ROWS, built + 1)), high)
            rows = self._events_between(execute, query, *near, query.limit)
            if len(rows) < query.limit:
                rest = _with_limit(query, query.limit - len(rows))
                rows += self._events_by_minutes(rest, execute, low, near[0] - 1)
            return rows
        near = (low, min(high, low + NAME_SCAN_ROWS))
        rows = self._events_between(execute, query, *near, query.limit)
        if len(rows) < query.limit:
            rest = _with_limit(query, query.limit - len(rows))
            rows += self._events_by_minutes(rest, execute, near[1] + 1, min(high, built))
        tail = (max(near[1], built) + 1, high)
        if len(rows) < query.limit:
            rows += self._events_between(execute, query, *tail, query.limit - len(rows))
        return rows

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
        if low > high:
            return rows
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
                above = self._seq_above(execute, end, query.tenant_id)
                seq_high = high if above is None else min(high, above - 1)
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
