"""Pure-Python twin of ``_measures.pyx``: the measures' sums of the rollups, from the stored rows.

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
