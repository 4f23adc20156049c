"""``GET /health``'s question — can the store take a write now? — answered within its own timeout.

A load balancer's health check must get an answer even when the store does
not give one (a stopped writer, an fsync that hangs, a database that does not
answer): the store's ``writable()`` runs on one long-lived worker thread, one
probe at a time, and a probe that has not answered after
``HEALTH_TIMEOUT_SECONDS`` is an unhealthy store. One thread, not one per probe:
a store keeps a connection per thread (PostgreSQL's look-up connections), and
a thread per probe left one open behind each. Imports the store interface only.
"""

import logging
import queue
import threading

from .store.base import Store

log = logging.getLogger("drengr.health")

# Shorter than load balancers' own check timeouts (nginx Plus, HAProxy and cloud balancers
# default to 2-10 s), so that they see our 503 rather than their own timeout.
HEALTH_TIMEOUT_SECONDS = 2.0


class _Probe:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer = False


class HealthCheck:
    """``check()`` → (healthy, why not); never waits longer than ``timeout`` seconds."""

    def __init__(self, store: Store, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        self._store = store
        self._timeout = timeout
        self._lock = threading.Lock()
        self._probes: queue.SimpleQueue[_Probe] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._last: _Probe | None = None

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if self._last is not None and not self._last.done.is_set():
                # The last probe is still waiting on the store: asking again would pile up probes.
                return False, "the store has not answered the last health probe"
            probe = self._last = _Probe()
            self._probes.put(probe)
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="drengr-health", daemon=True)
                self._worker.start()
        if not probe.done.wait(self._timeout):
            log.warning("health probe: the store did not answer within %.1f s", self._timeout)
            return False, "the store did not answer in time"
        if not probe.answer:
            return False, "the store cannot write"
        return True, ""

    def _serve(self) -> None:
        while True:
            probe = self._probes.get()
            try:
                probe.answer = bool(self._store.writable())
            except Exception as error:  # noqa: BLE001 - an unhealthy store, whatever it raised
                log.warning("health probe failed: %s", error)
                probe.answer = False
            probe.done.set()
