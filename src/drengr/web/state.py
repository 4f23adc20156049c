"""What one app holds, in one typed object: ``app.extensions["drengr"]`` is an ``AppState``.

``create_app`` builds it; the routes reach it through ``state_of(current_app)``
and ``Ingest`` takes what it needs once, when it is built. ``open_configured_store``
is the one place a store is built from a ``Config`` (``create_app`` without a
store, and `drengr serve` through ``cli``).

Imports no Flask at run time: ``drengr.cli`` opens stores through this module
without loading the web framework.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..drops import DropLog
from ..settings import Config
from ..store import SQLiteStore, Store, open_store

if TYPE_CHECKING:
    from ..store.reader import Reader
    from .health import HealthCheck
    from .retention import Retention

EXTENSION = "drengr"


@dataclass(slots=True, eq=False)
class AppState:
    """The app's parts. ``clock_ms`` is the time of receipt and the read API's "now"."""

    config: Config
    store: Store
    # What was dropped, by tenant and reason, for the debugger and /v1/drops; counts persist in the
    # store (drop_counts) once a second, samples stay in this process.
    drops: DropLog
    clock_ms: Callable[[], int]
    health: "HealthCheck"
    retention: "Retention | None" = None  # --retention: the thread that prunes old rows
    reader: "Reader | None" = None  # opened on the first read: ingest-only apps never open one


def state_of(app: Any) -> AppState:
    """The state of a Flask app ``create_app`` built (in a route: ``state_of(current_app)``)."""
    state: AppState = app.extensions[EXTENSION]
    return state


def open_configured_store(config: Config) -> Store:
    """The store ``config`` names: PostgreSQL at ``config.store``, else SQLite at ``config.db``."""
    if config.store:
        return open_store(
            config.store, durability=config.durability, dedup_window_days=config.dedup_window_days
        )
    return SQLiteStore(
        config.db,
        durability=config.durability,
        busy_timeout_ms=config.busy_timeout_ms,
        dedup_window_days=config.dedup_window_days,
        writer=config.writer,
        writer_cpus=config.writer_cpus,
    )
