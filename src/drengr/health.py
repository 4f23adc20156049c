"""``GET /health``'s question — can the store take a write now? — answered within its own timeout.

A load balancer's health check must get an answer even when the store does
not give one (a stopped writer, an fsync that hangs, a database that does not
answer): the store's ``writable()`` runs on a thread of its own, at most one
at a time, and a probe that has not answered after ``HEALTH_TIMEOUT_SECONDS``
is an unhealthy store. Imports the store interface only.
"""

import logging
import threading

from .store.base import Store

log = logging.getLogger("drengr.health")

# Shorter than load balancers' own check timeouts (nginx Plus, HAProxy and cloud balancers
# default to 2-10 s), so that they see our 503 rather than their own timeout.
HEALTH_TIMEOUT_SECONDS = 2.0


class HealthCheck:
    """``check()`` → (healthy, why not); never waits longer than ``timeout`` seconds."""

    def __init__(self, store: Store, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        self._store = store
        self._timeout = timeout
        self._lock = threading.Lock()
        self._probe: threading.Thread | None = None
        self._answer: bool | None = None

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if self._probe is not None and self._probe.is_alive():
                # The last probe is still waiting on the store: asking again would pile up threads.
                return False, "the store has not answered the last health probe"
            self._answer = None
            probe = self._probe = threading.Thread(target=self._run, name="drengr-health", daemon=True)
            probe.start()
        probe.join(self._timeout)
        if probe.is_alive():
            log.warning("health probe: the store did not answer within %.1f s", self._timeout)
            return False, "the store did not answer in time"
        if not self._answer:
            return False, "the store cannot write"
        return True, ""

    def _run(self) -> None:
        try:
            self._answer = bool(self._store.writable())
        except Exception as error:  # noqa: BLE001 - an unhealthy store, whatever it raised
            log.warning("health probe failed: %s", error)
            self._answer = False
