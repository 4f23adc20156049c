"""Where rows go. One small interface (``base.Store``); SQLite by default, PostgreSQL for several nodes.

``PostgresStore`` needs psycopg (``pip install 'drengr-ingest[postgres]'``); it is
imported on first use, so the SQLite store works without it.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..clock import now
from ..core.limits import DEFAULT_DEDUP_WINDOW_DAYS
from .base import KeyInfo, Store, StoreError
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = ["KeyInfo", "PostgresStore", "SQLiteStore", "Store", "StoreError", "is_postgres_url", "open_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str) -> bool:
    """True for a PostgreSQL URI (``postgresql://…``, ``postgres://…``); anything else is a SQLite path."""
    return location.strip().lower().startswith(POSTGRES_SCHEMES)


def open_store(
    location: str,
    durability: str = "full",
    clock: Callable[[], float] = now,
    dedup_window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,
) -> Store:
    """A PostgresStore for a ``postgresql://`` URI, else a SQLiteStore on the file ``location``.

    ``clock`` (seconds, like ``time.time``) is the store's own: key-cache expiry,
    the times of admin rows, and when PostgreSQL forgets old event ids.
    """
    if is_postgres_url(location):
        return _postgres_class()(
            location.strip(), durability=durability, clock=clock, dedup_window_days=dedup_window_days
        )
    return SQLiteStore(location, durability=durability, clock=clock, dedup_window_days=dedup_window_days)


def _postgres_class() -> Any:
    try:
        from .postgres import PostgresStore
    except ImportError as error:
        raise StoreError(
            f"the PostgreSQL store needs psycopg: pip install 'drengr-ingest[postgres]' ({error})"
        ) from None
    return PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        return _postgres_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
