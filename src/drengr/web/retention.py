"""``--retention AGE``: a daemon thread deletes the rows older than AGE, at start and every hour after.

The store deletes in short batches (``prune_events``), each its own
transaction, so requests wait for one batch at most. A failure is logged and
tried again at the next turn. ``create_app`` starts one when the config asks.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..core.timestamps import format_ms

log = logging.getLogger("drengr")

RETENTION_EVERY_SECONDS = 3_600.0


class Retention:
    """The pruning thread, started when built; ``stop()`` ends it at its next turn."""

    def __init__(self, store: Any, age_seconds: int, clock_ms: Callable[[], int]) -> None:
        self._store = store
        self._age_ms = age_seconds * 1000
        self._clock_ms = clock_ms
        self.passes = 0  # finished prunes (tests wait for one)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drengr-retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            before_ms = self._clock_ms() - self._age_ms
            try:
                deleted = self._store.prune_events(before_ms)
                if deleted:
                    log.info("retention: deleted %d events received before %s", deleted, format_ms(before_ms))
            except Exception as error:  # noqa: BLE001 - a store outage: the next turn tries again
                log.warning("retention: pruning failed (%s); trying again in an hour", error)
            self.passes += 1
            self._stop.wait(RETENTION_EVERY_SECONDS)

    def stop(self) -> None:
        self._stop.set()
