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


def sum_measures(rows: Iterable[tuple[str, str, str, Any]]) -> list[tuple[str, str, str, str, int | float]]:
    """(tenant_id, minute, event_name, measures) rows → (tenant_id, minute, event_name, measure, sum).

    Each number of a row's ``measures`` (``numeric_pairs``) is added to its
    measure's sum, as SQLite's ``sum()`` adds (``add_total``).
    """
    sums: dict[tuple[str, str, str, str], int | float] = {}
    for tenant_id, minute, event_name, measures in rows:
        for key, value in numeric_pairs(measures):
            group = (tenant_id, minute, event_name, key)
            sums[group] = add_total(sums[group], value) if group in sums else value
    return [(*group, total) for group, total in sums.items()]
