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

One job a module: ``model`` (queries, pages, stats, shared helpers), ``queries``
(seq look-ups, counts and sums, export bounds), ``events`` (the paths of an
event page), ``engines`` (SQLite and PostgreSQL). Imports no web framework;
knows nothing of keys (the caller passes the tenant).
"""

from pathlib import Path
from typing import Any

from ..base import StoreError
from .engines import PostgresReader, SQLiteReader
from .model import (
    BUCKET_PREFIX_CHARS,
    BUCKET_SUFFIX,
    EVENT_SELECT,
    EXPORT_COLUMNS,
    MAX_MEASURES_PER_QUERY,
    ORDERS,
    RECEIVED_ORDER_SLACK_MS,
    TIME_FIELDS,
    EventPage,
    EventQuery,
    Reader,
    Stats,
    StatsQuery,
    check_measure_name,
    parse_time,
)

__all__ = [
    "BUCKET_PREFIX_CHARS",
    "BUCKET_SUFFIX",
    "EVENT_SELECT",
    "EXPORT_COLUMNS",
    "MAX_MEASURES_PER_QUERY",
    "ORDERS",
    "RECEIVED_ORDER_SLACK_MS",
    "TIME_FIELDS",
    "EventPage",
    "EventQuery",
    "PostgresReader",
    "Reader",
    "SQLiteReader",
    "Stats",
    "StatsQuery",
    "check_measure_name",
    "open_reader",
    "parse_time",
    "reader_for_location",
]


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
    from .. import is_postgres_url

    if is_postgres_url(location):
        return PostgresReader(location.strip())
    return SQLiteReader(location)
