"""What rows add to the read side's rollups: counted in Python, the same for both engines.

The rollups (docs/performance.md "Reading at 10M rows") count, per tenant,
received minute (`2026-11-26T02:50`), event name and type, the events stored,
and per measure its sum; and the same per received hour (`2026-11-26T02`).
Each engine upserts these rows in the transaction that stores the events
(``drengr.store.sqlite.read_side``, ``drengr.store.postgres``). Imports no database driver.
"""

import collections
import itertools
import json
import operator
from collections.abc import Iterator
from typing import Any

ROLLUP_GRAINS = (("", "minute", 16), ("hourly_", "hour", 13))  # table prefix, column, text width

_NAME, _TYPE, _NAME_TYPE = operator.itemgetter(2), operator.itemgetter(3), operator.itemgetter(2, 3)
_TENANT_RECEIVED = operator.itemgetter(0, 7)


def _by_receipt(requests: list[list[tuple[Any, ...]]]) -> Iterator[list[tuple[Any, ...]]]:
    """Each list as it is when its first and last rows share tenant and time of receipt (a request's
    rows), else split where they change (rows of many requests, in order of receipt)."""
    for rows in requests:
        if rows and (rows[0][0], rows[0][7]) == (rows[-1][0], rows[-1][7]):
            yield rows
        elif rows:
            yield from (list(group) for _, group in itertools.groupby(rows, key=_TENANT_RECEIVED))


def rollup_rows(requests: list[list[tuple[Any, ...]]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What the rows of ``requests`` (semantic_events tuples, seq aside) add to event_rollups and measure_rollups.

    One list a request: its rows share a tenant and a time of receipt, so they are
    counted by name in C (Counter; by name and type when types differ), and only the
    few keys found get a minute. Measures are parsed only where a row has some.
    """
    counts: dict[tuple[str, str, str, str], int] = {}
    sums: dict[tuple[str, str, str, str], float] = {}
    for rows in _by_receipt(requests):
        tenant_id, minute = rows[0][0], rows[0][7][:16]  # received_at, `2026-11-26T02:50`
        types = set(map(_TYPE, rows))
        if len(types) == 1:
            (type_,) = types
            named = ((name, type_, n) for name, n in collections.Counter(map(_NAME, rows)).items())
        else:
            named = ((name, t, n) for (name, t), n in collections.Counter(map(_NAME_TYPE, rows)).items())
        for name, type_, n in named:
            key = (tenant_id, minute, name, type_)
            counts[key] = counts.get(key, 0) + n
        for row in rows:
            if row[9] != "{}":  # most events carry no measure: no JSON to parse
                for measure, value in json.loads(row[9]).items():
                    if type(value) in (int, float):  # numbers only, as json_each's 'integer'/'real'
                        key = (tenant_id, minute, row[2], measure)
                        # REAL: a float sum, as SQLite stores it (an int may pass int64)
                        sums[key] = sums.get(key, 0.0) + value
    return [(*k, n) for k, n in counts.items()], [(*k, v) for k, v in sums.items()]


def hourly(rollups: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Minute rollup rows (tenant, minute, name, type or measure, value) added up by hour."""
    added: dict[tuple[Any, ...], Any] = {}
    for tenant_id, minute, name, other, value in rollups:
        key = (tenant_id, minute[:13], name, other)
        added[key] = added.get(key, 0) + value
    return [(*k, v) for k, v in added.items()]
