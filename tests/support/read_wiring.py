"""The read API's clock for the tests; ``create_app`` wires the read API and drop feeding itself."""

from collections.abc import Callable
from typing import Any

from drengr.drops import DropLog


def wire(app: Any, store: Any, monkeypatch: Any, clock_ms: Callable[[], int] | None = None) -> DropLog:
    """The app's DropLog; with ``clock_ms``, the read API's "now" (for `since=15m`) follows it too."""
    if clock_ms is not None:
        # The ingest routes took the app's clock when the app was built: only the reads follow this one.
        monkeypatch.setattr(app.extensions["drengr"], "clock_ms", clock_ms)
    drop_log: DropLog = app.extensions["drengr"].drops
    return drop_log
