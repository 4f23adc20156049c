"""Pure-Python twin of ``_measures.pyx``: the measures' sums of the rollups and the users file's part, from the stored rows.

Used where the extension did not build, and as the oracle in tests. Imports
nothing of ours.
"""

import json
from collections.abc import Iterable
from typing import Any

_INT64 = (-(1 << 63), (1 << 63) - 1)


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object's (key, value) pairs, in order, duplicates kept."""


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _number(value: Any) -> int | float | None:
    """A JSON value as SQLite's ``json_each`` types it: integer, real, or None (anything else)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        return float(value)  # past 64 bits SQLite reads the number as a real
    return value


def add_total(total: int | float, value: int | float) -> int | float:
    """``total + value`` as SQLite's ``sum()`` keeps it: integers while they fit in 64 bits, then reals."""
    added = total + value
    if isinstance(added, int) and not _INT64[0] <= added <= _INT64[1]:
        return float(total) + float(value)
    return added


def numeric_pairs(measures: Any) -> list[tuple[str, int | float]]:
    """A stored row's ``measures`` → its (measure, number) pairs, in order, a key given twice listed twice
    (as ``json_each`` lists them); other values, and a text that is not a JSON object, give none."""
    try:
        pairs = json.loads(measures, object_pairs_hook=_Pairs, parse_constant=_no_constant)
    except (ValueError, TypeError, RecursionError):
        return []
    if not isinstance(pairs, _Pairs):
        return []
    numbers = []
    for key, raw in pairs:
        value = _number(raw)
        if value is not None:
            numbers.append((key, value))
    return numbers


# The stored row's columns (store/sqlite/writer.py's _EVENT_COLUMNS) that Sums.add_rows reads.
TENANT, NAME, TYPE, RECEIVED, MEASURES = 0, 2, 3, 7, 9


# What a ``Sums`` holds, as plain tuples (a job's, sent along with it): its event counts and measure sums.
Summary = tuple[list[tuple[str, str, str, str, int]], list[tuple[str, str, str, str, int | float]]]


class Sums:
    """The rollups' counts of some rows: events per (tenant_id, minute, event_name, event_type), and
    the measures' sums per (tenant_id, minute, event_name, measure), as SQLite's ``count(*)``,
    ``json_each`` and ``sum()`` give them."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], int] = {}
        self.sums: dict[tuple[str, str, str, str], int | float] = {}
        self.rows = 0

    def add_measures(self, rows: Iterable[tuple[str, str, str, Any]]) -> None:
        """(tenant_id, minute, event_name, measures) rows: their measures only."""
        for tenant_id, minute, event_name, measures in rows:
            for key, value in numeric_pairs(measures):
                group = (tenant_id, minute, event_name, key)
                self.sums[group] = add_total(self.sums[group], value) if group in self.sums else value

    def add_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Stored rows (the writer's tuples): each is an event of its minute, and its measures are added."""
        for row in rows:
            minute = row[RECEIVED][:16]
            key = (row[TENANT], minute, row[NAME], row[TYPE])
            self.counts[key] = self.counts.get(key, 0) + 1
            if row[MEASURES] != "{}":
                self.add_measures([(row[TENANT], minute, row[NAME], row[MEASURES])])
        self.rows += len(rows)

    def add_summary(self, summary: "Summary") -> None:
        """Another ``Sums``'s counts and sums (its ``summary()``: the request's process adds up a
        job's rows as it sends them), added to these."""
        events, measures = summary
        for tenant_id, minute, event_name, event_type, events_of_type in events:
            key = (tenant_id, minute, event_name, event_type)
            self.counts[key] = self.counts.get(key, 0) + events_of_type
            self.rows += events_of_type
        for tenant_id, minute, event_name, measure, value in measures:
            group = (tenant_id, minute, event_name, measure)
            self.sums[group] = add_total(self.sums[group], value) if group in self.sums else value

    def summary(self) -> "Summary":
        """(``event_counts()``, ``measure_sums()``), for ``add_summary``."""
        return self.event_counts(), self.measure_sums()

    @property
    def entries(self) -> int:
        """The counts and sums it holds (a measure of its memory)."""
        return len(self.counts) + len(self.sums)

    def event_counts(self) -> list[tuple[str, str, str, str, int]]:
        """[(tenant_id, minute, event_name, event_type, events)]"""
        return [(*key, events) for key, events in self.counts.items()]

    def measure_sums(self) -> list[tuple[str, str, str, str, int | float]]:
        """[(tenant_id, minute, event_name, measure, sum)]"""
        return [(*group, total) for group, total in self.sums.items()]


def sum_measures(rows: Iterable[tuple[str, str, str, Any]]) -> list[tuple[str, str, str, str, int | float]]:
    """(tenant_id, minute, event_name, measures) rows → [(tenant_id, minute, event_name, measure, sum)]."""
    sums = Sums()
    sums.add_measures(rows)
    return sums.measure_sums()


EXTERNAL_ID = 4  # the stored row's column UserRows reads beside the others


class UserRows:
    """The users file's part of rows committed in order (``drengr.store.sqlite.read_side``): per
    block of ``2**user_bits`` seqs, tenant and external_id, the seqs; the (tenant, UTC day,
    external_id) seen; and per tenant, event name and block of ``2**name_bits`` seqs, the first
    and last seq. With ``users`` false, the name blocks alone."""

    def __init__(self, user_bits: int, name_bits: int, users: bool = True) -> None:
        self.user_bits, self.name_bits, self.users = user_bits, name_bits, users
        self.seqs: dict[tuple[int, str, str], list[int]] = {}
        self.days: set[tuple[str, str, str]] = set()
        self.names: dict[tuple[str, str, int], list[int]] = {}
        self.rows = 0

    def add(self, first_seq: int, rows: list[tuple[Any, ...]]) -> None:
        """Stored rows (the writer's tuples), the first of them at ``first_seq``, the others after it."""
        for seq, row in enumerate(rows, first_seq):
            name = (row[TENANT], row[NAME], seq >> self.name_bits)
            if name in self.names:
                self.names[name][1] = seq
            else:
                self.names[name] = [seq, seq]
            external_id = row[EXTERNAL_ID]
            if external_id is not None and self.users:
                self.seqs.setdefault((seq >> self.user_bits, row[TENANT], external_id), []).append(seq)
                self.days.add((row[TENANT], row[RECEIVED][:10], external_id))
        self.rows += len(rows)

    @property
    def name_entries(self) -> int:
        """The (tenant, block, name) spans it holds."""
        return len(self.names)

    def user_entries(self) -> int:
        """How many rows ``user_seqs`` gives: one per block, tenant and external_id."""
        return len(self.seqs)

    def user_seqs(self) -> list[tuple[int, str, str, int, str]]:
        """[(block, tenant_id, external_id, first seq, the seqs comma-separated)]"""
        return [(*key, seqs[0], ",".join(map(str, seqs))) for key, seqs in self.seqs.items()]

    def daily_users(self) -> list[tuple[str, str, str]]:
        """[(tenant_id, day, external_id)]"""
        return list(self.days)

    def name_blocks(self) -> list[tuple[str, str, int, int, int]]:
        """[(tenant_id, event_name, block, first seq, last seq)]"""
        return [(*key, first, last) for key, (first, last) in self.names.items()]
