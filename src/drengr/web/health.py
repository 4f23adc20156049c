"""``GET /health``, the analytics.js settings and ``GET /metrics``: the service routes' blueprint.

Beside the read API's (``read_api``), mounted the same way; the requests
metric labels these routes by their own names (``health``, ``settings``,
``metrics_route``), without the blueprint's.

``/health`` asks the store whether it can take a write now, within its own
timeout. A load balancer's health check must get an answer even when the
store does not give one (a stopped writer, an fsync that hangs, a database
that does not answer): the store's ``writable()`` runs on one long-lived worker
thread (``HealthCheck``), one probe at a time, and a probe that has not
answered after ``HEALTH_TIMEOUT_SECONDS`` is an unhealthy store. One thread, not
one per probe: a store keeps a connection per thread (PostgreSQL's look-up
connections), and a thread per probe left one open behind each.

``/v1/projects/{writeKey}/settings`` is what analytics-next fetches first
(``drengr.core.settings``): the answer for an active publishable key, else the
ingest routes' JSON 404; the key in the path is never logged. ``/metrics`` is
Prometheus' scrape (``drengr.metrics``): open from this machine, from
elsewhere only with a secret key.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from flask import Blueprint, Response, current_app, request

from .. import metrics
from ..core import machine
from ..core.auth import PUBLISHABLE_PREFIX
from ..core.errors import NotFound
from ..core.settings import settings_document
from ..store.base import Store
from . import access_log
from .errors import JSON, Refused, Unhealthy, response
from .ingest import drive, flask_response, key_owner, machine_request
from .read_api import secret_tenant
from .state import state_of

log = logging.getLogger("drengr.health")
blueprint = Blueprint("drengr_service", __name__)

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


# ---------------------------------------------------------------- routes

OK_BODY = b'{"status": "ok"}'
SETTINGS_PATH = "/v1/projects/{writeKey}/settings"  # as logged: the key in the path never is
METRICS_401 = (
    "GET /metrics answers requests from this machine; from elsewhere, send a secret key "
    "(Authorization: Bearer drengr_sk_...)."
)
_LOOPBACK = ("127.", "::1", "::ffff:127.")
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


@blueprint.get("/health")
def health() -> Response:
    started = time.perf_counter()
    ok, why_not = state_of(current_app).health.check()
    answer = Response(OK_BODY, status=200, headers=list(JSON)) if ok else response(Unhealthy(why_not))
    # Probes come every few seconds: at debug, unless unhealthy (then a warning worth seeing).
    level = logging.DEBUG if ok else logging.WARNING
    access_log.route_line("GET", "/health", answer.status_code, None, started, level=level)
    return answer


@blueprint.get("/v1/projects/<write_key>/settings")
def settings(write_key: str) -> Response:
    started = time.perf_counter()
    state = state_of(current_app)
    req = machine_request(request.environ, None, state.clock_ms())
    steps = handle_settings(
        req,
        write_key,
        lambda: settings_document(write_key, request.host, request.scheme, request.script_root),
    )
    result = drive(req, steps, key_owner(state.store))
    access_log.route_line("GET", SETTINGS_PATH, result.status, result.tenant_id, started)
    return flask_response(result)


def handle_settings(
    req: machine.Request, write_key: str, document: Callable[[], bytes]
) -> Generator[machine.Need, Any, machine.Response]:
    """Driven like ``core.machine``'s handlers: ``document()`` for an active publishable key, else a 404."""
    origin = req.headers.get("origin")
    record = yield machine.LookupKey(write_key)
    if not write_key.startswith(PUBLISHABLE_PREFIX) or record is None or record.revoked:
        return machine.error_response(NotFound(), origin)
    headers = [*machine.cors_headers(origin), ("Content-Type", "application/json")]
    return machine.Response(200, headers, document(), tenant_id=record.tenant_id)


@blueprint.get("/metrics")
def metrics_route() -> Response:
    """Prometheus' scrape: open from this machine, from elsewhere only with a secret key."""
    store = state_of(current_app).store
    if (
        not _from_loopback(request.environ)
        and secret_tenant(store, request.headers.get("Authorization")) is None
    ):
        return response(Refused(METRICS_401))
    scrape, content_type = metrics.exposition()
    return Response(scrape, status=200, headers={"Content-Type": content_type})


def _from_loopback(environ: dict[str, Any]) -> bool:
    """From this machine, and not through a proxy on it (nginx's requests come from 127.0.0.1 too)."""
    address = environ.get("REMOTE_ADDR") or ""
    return address.startswith(_LOOPBACK) and not any(header in environ for header in _PROXY_HEADERS)
