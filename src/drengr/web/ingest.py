"""The ingest routes: WSGI environ ⇄ the Sans-IO machine (``drengr.core.machine``) ⇄ the store.

``Ingest`` is the WSGI app in front of Flask (``app.wsgi_app``). Every method
but GET and HEAD goes straight to the machine: no Flask request or response
object, no routing (~0.1 ms a request, a third of a single-event request's
cost). PUT, DELETE, TRACE, … come here too, for the machine's JSON 405, never
werkzeug's HTML one. GET and HEAD go on to Flask, whose routes here
(``add_routes``) hand back to the machine an ingest path (its 405), RudderStack's
``/sourceConfig`` and Segment's pixel. Each request: one access line
(``access_log``), its counters (``metrics``), its drops (``drops.DropLog``).

Everything here is I/O glue: read the clock, read the body, look keys up,
write rows. The decisions are the machine's. ``drive`` runs any of its
handlers (or one shaped like them: ``health.settings``), and is where a key
look-up that met a store outage becomes the plain 502, and a bug a logged 502.
"""

import logging
import time
from collections.abc import Callable, Generator, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, PathConverter

from .. import metrics
from ..core import machine
from ..core.auth import hash_key
from ..core.errors import IngestFailed
from ..core.pixel import handle_pixel
from ..core.routes import Route, classify, is_source_config
from ..mapping import BodyMapper
from ..store import Store, StoreError
from . import access_log
from .state import AppState

log = logging.getLogger("drengr")

# The request headers the machine reads, as WSGI spells them.
_INGEST_HEADERS = [
    ("HTTP_AUTHORIZATION", "authorization"),
    ("HTTP_X_WRITE_KEY", "x-write-key"),
    ("HTTP_CONTENT_ENCODING", "content-encoding"),
    ("HTTP_ORIGIN", "origin"),
    ("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "access-control-request-headers"),
    ("HTTP_USER_AGENT", "user-agent"),
]
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
# Flask sees GET and HEAD only (HEAD is added to every GET rule); every other method
# goes straight to the machine, which answers POST and OPTIONS on any path and 405
# to the rest: werkzeug never answers 405 with its own HTML page.
FLASK_METHODS = ("GET", "HEAD")
INGEST_ENDPOINTS = ("ingest", "ingest_root")
# RFC 9110: a 405 names what the resource does take. The machine takes POST and
# OPTIONS on every path; a path a read route also serves takes GET and HEAD too.
ALLOW_INGEST = "POST, OPTIONS"
ALLOW_READ_AND_INGEST = "GET, HEAD, POST, OPTIONS"
# machine.handle, or a handler shaped like it (the pixel's).
Handler = Callable[[machine.Request, BodyMapper], Generator[machine.Need, Any, machine.Response]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Ingest:
    """The fast path in front of ``flask_app``, and the GET routes that end in the machine."""

    __slots__ = ("_clock_ms", "_drops", "_flask", "_mapper", "_store", "_url_map")

    def __init__(self, state: AppState, url_map: Map, flask_app: WSGIApp) -> None:
        self._store = state.store
        self._drops = state.drops
        self._clock_ms = state.clock_ms
        self._mapper = BodyMapper(state.config.pii_substrings, state.config.pii_allow)
        self._url_map = url_map  # for the Allow of a 405
        self._flask = flask_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in FLASK_METHODS:
            return self._flask(environ, start_response)
        result = self.run(environ)
        metrics.count("requests", _ingest_route(environ.get("PATH_INFO") or "/"), str(result.status))
        headers = [*result.headers, ("Content-Length", str(len(result.body)))]
        start_response(_STATUS_LINES.get(result.status) or str(result.status), headers)
        return [result.body]

    def run(self, environ: dict[str, Any], handler: Handler = machine.handle) -> machine.Response:
        """One ingest request, from the WSGI environ to ``handler``'s Response (counted and logged)."""
        started = time.perf_counter()
        length = environ.get("CONTENT_LENGTH")
        content_length = int(length) if length and length.isdigit() else None
        stream = environ["wsgi.input"]
        store = self._store

        def answer(need: Any) -> Any:
            if isinstance(need, machine.ReadBody):
                wanted = need.limit + 1
                body = stream.read(wanted if content_length is None else min(wanted, content_length))
                metrics.count("body_bytes", amount=len(body))
                return body
            if isinstance(need, machine.LookupKey):
                return store.lookup_key(hash_key(need.key))
            try:
                return store.write(need.tenant_id, need.rows, need.received_at_ms)
            except StoreError:
                metrics.count("store_errors", "write")
                return None  # the machine answers 502 Ingest failed

        req = machine_request(environ, content_length, self._clock_ms())
        result = drive(req, handler(req, self._mapper), answer)
        if result.status == 405:
            result.headers = [*result.headers, ("Allow", self._allowed_methods(environ))]
        self._drops.record(result, req.path, req.headers.get("user-agent"))
        _count_ingest(result)
        access_log.request_line(req, result, time.perf_counter() - started)
        return result

    def _allowed_methods(self, environ: dict[str, Any]) -> str:
        """The ``Allow`` of a 405 on this path: GET and HEAD too when a read route serves it."""
        try:
            endpoint, _ = self._url_map.bind_to_environ(environ).match(method="GET")
        except HTTPException:  # no rule takes GET on this path: only the machine's methods
            return ALLOW_INGEST
        return ALLOW_INGEST if endpoint in INGEST_ENDPOINTS else ALLOW_READ_AND_INGEST

    # ------------------------------------------------------------ GET and HEAD, through Flask

    def add_routes(self, app: Flask) -> None:
        """A GET on an ingest path (the machine's 405), ``/sourceConfig`` and the pixel, on ``app``."""
        app.url_map.converters["anypath"] = AnyPathConverter
        rules: list[tuple[str, str, Callable[..., Response]]] = [
            ("/", "ingest_root", self.ingest),
            ("/<anypath:path>", "ingest", self.ingest),
            ("/sourceConfig", "source_config", self.source_config),
            ("/sourceConfig/", "source_config", self.source_config),
            ("/v1/pixel/<any(track, page, identify, group, alias, screen):event_type>", "pixel", self.pixel),
        ]
        for rule, endpoint, view in rules:
            app.add_url_rule(rule, endpoint, view, methods=["GET"], provide_automatic_options=False)

    def ingest(self, path: str = "") -> Response:
        """A GET or HEAD no read route serves: the machine answers 405."""
        if is_source_config(request.environ.get("PATH_INFO") or "/"):
            return self.source_config()  # `//sourceConfig`: an SDK that doubled the slash
        return flask_response(self.run(request.environ))

    def pixel(self, event_type: str) -> Response:
        """Segment's Pixel API (``drengr.core.pixel``): a 1x1 GIF whatever happened; the query is never logged."""
        return flask_response(self.run(request.environ, handle_pixel))

    def source_config(self) -> Response:
        """RudderStack's ``GET /sourceConfig`` (``drengr.core.control_plane``); the query is never logged."""
        started = time.perf_counter()
        req = machine_request(request.environ, None, self._clock_ms())
        result = drive(req, machine.handle_source_config(req), key_owner(self._store))
        if result.auth_failure:
            metrics.count("auth_failures", result.auth_failure)
        access_log.route_line(
            req.method, "/sourceConfig", result.status, result.tenant_id, started, result.auth_failure
        )
        return flask_response(result)


def machine_request(
    environ: dict[str, Any], content_length: int | None, received_at_ms: int
) -> machine.Request:
    """What the machine reads of a request: method, path under the mount point, its headers, the query."""
    return machine.Request(
        method=environ.get("REQUEST_METHOD", ""),
        path=environ.get("PATH_INFO") or "/",
        headers={name: environ[key] for key, name in _INGEST_HEADERS if key in environ},
        content_length=content_length,
        received_at_ms=received_at_ms,
        query=environ.get("QUERY_STRING", ""),
    )


def key_owner(store: Store) -> Callable[[machine.LookupKey], Any]:
    """The answer to a handler that only looks keys up (``/sourceConfig``, the settings)."""
    return lambda need: store.lookup_key(hash_key(need.key))


def drive(
    req: machine.Request, steps: Generator[machine.Need, Any, machine.Response], answer: Any
) -> machine.Response:
    """``machine.drive``, where a store outage at a key look-up and a bug each become the plain 502."""
    try:
        return machine.drive(steps, answer)
    except StoreError as error:  # the key look-up met a store outage: a plain 502, logged as one
        log.warning("key look-up failed: %s", error)
        metrics.count("store_errors", "key_lookup")
    except Exception as error:  # a bug, not the client's doing: log it, never show a traceback
        access_log.unexpected(req, error)
    return machine.error_response(IngestFailed(), req.headers.get("origin"))


def flask_response(result: machine.Response) -> Response:
    return Response(result.body, status=result.status, headers=result.headers)


def _ingest_route(path: str) -> str:
    """A bounded label for an ingest path: the event type, batch, the body's choice, or telemetry."""
    route, single_type = classify(path)
    if route is Route.SINGLE:
        return single_type or "single"
    if is_source_config(path):
        return "source_config"
    return route.value


def _count_ingest(result: machine.Response) -> None:
    """What one ingest request did, into the counters: stored, dropped and stripped by reason, 401s."""
    outcome = result.outcome
    if outcome is not None:
        metrics.count("stored", amount=outcome.stored)
        metrics.count("dropped", "duplicate", amount=outcome.duplicates)
        metrics.count("dropped", "over_daily_cap", amount=outcome.over_cap)
    if result.dropped:
        metrics.count_all("dropped", result.dropped.items())
    if result.stripped:
        metrics.count_all("stripped", ((reason, n) for reason, (n, _names) in result.stripped.items()))
    if result.auth_failure:
        metrics.count("auth_failures", result.auth_failure)


class AnyPathConverter(PathConverter):
    """``path``, newlines included: werkzeug's ``.`` stops at one, and the request got Flask's HTML 404."""

    regex = r"[^/][\s\S]*?"
