"""The Flask shell: WSGI request ⇄ the Sans-IO machine ⇄ the store.

Everything here is I/O glue: read the clock, read the body, look keys up,
write rows, log one line. The decisions are ``drengr.core.machine``'s.
"""

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from . import analytics_js, clock, metrics, read_api
from .core import machine
from .core.auth import PUBLISHABLE_PREFIX, hash_key
from .core.errors import IngestFailed, NotFound
from .core.mapping import BodyMapper
from .core.pixel import handle_pixel
from .core.routes import Route, classify, is_source_config
from .core.settings import settings_document
from .core.timestamps import format_ms
from .drops import DropLog
from .health import HealthCheck
from .logs import Fields, redact_keys
from .settings import Config
from .store import SQLiteStore, Store, StoreError, open_store

access_log = logging.getLogger("drengr.access")
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
# goes straight to the machine (``dispatch``), which answers POST and OPTIONS on any
# path and 405 to the rest: werkzeug never answers 405 with its own HTML page.
FLASK_METHODS = ("GET", "HEAD")
INGEST_ENDPOINTS = ("ingest", "ingest_root")
# RFC 9110: a 405 names what the resource does take. The machine takes POST and
# OPTIONS on every path; a path a read route also serves takes GET and HEAD too.
ALLOW_INGEST = "POST, OPTIONS"
ALLOW_READ_AND_INGEST = "GET, HEAD, POST, OPTIONS"
# machine.handle, or a handler shaped like it (the pixel's).
Handler = Callable[[machine.Request, BodyMapper], Generator[machine.Need, Any, machine.Response]]


def create_app(
    config: Config | None = None, store: Store | None = None, clock_ms: Callable[[], int] = clock.now_ms
) -> Flask:
    """The WSGI app. ``store`` defaults to a SQLiteStore on ``config.db``; ``clock_ms`` is the time of receipt."""
    config = config or Config.from_env()
    if store is None and config.store:
        store = open_store(config.store, durability=config.durability)
    store = (
        store
        if store is not None
        else SQLiteStore(
            config.db,
            durability=config.durability,
            busy_timeout_ms=config.busy_timeout_ms,
            writer=config.writer,
            writer_cpus=config.writer_cpus,
        )
    )
    mapper = BodyMapper(config.pii_substrings, config.pii_allow)
    app = Flask("drengr")
    app.url_map.merge_slashes = False  # `//v1/t` must not redirect: a 3xx counts as delivered
    app.url_map.strict_slashes = False
    app.url_map.converters["anypath"] = AnyPathConverter
    app.extensions["drengr.store"] = store
    app.extensions["drengr.config"] = config
    # What was dropped, by tenant and reason, for the debugger and /v1/drops; counts
    # persist in the store (drop_counts) once a second, samples stay in this process.
    drop_log = DropLog(clock_ms=clock_ms, sink=store)
    app.extensions["drengr.drops"] = drop_log

    def run_ingest(environ: dict[str, Any], handler: Handler = machine.handle) -> machine.Response:
        """One ingest request, from the WSGI environ to ``handler``'s Response (logged)."""
        started = time.perf_counter()
        headers = {name: environ[key] for key, name in _INGEST_HEADERS if key in environ}
        length = environ.get("CONTENT_LENGTH")
        content_length = int(length) if length and length.isdigit() else None
        stream = environ["wsgi.input"]

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

        req = machine.Request(
            method=environ.get("REQUEST_METHOD", ""),
            path=environ.get("PATH_INFO") or "/",
            headers=headers,
            content_length=content_length,
            received_at_ms=clock_ms(),
            query=environ.get("QUERY_STRING", ""),
        )
        try:
            result = machine.drive(handler(req, mapper), answer)
        except StoreError as error:  # the key look-up met a store outage: a plain 502, logged as one
            log.warning("key look-up failed: %s", error)
            metrics.count("store_errors", "key_lookup")
            result = machine.error_response(IngestFailed(), headers.get("origin"))
        except Exception as error:  # a bug, not the client's doing: log it, never show a traceback
            _log_unexpected(req, error)
            result = machine.error_response(IngestFailed(), headers.get("origin"))
        if result.status == 405:
            result.headers = [*result.headers, ("Allow", allowed_methods(environ))]
        drop_log.record(result, req.path, headers.get("user-agent"))
        _count_ingest(result)
        _log_request(req, result, time.perf_counter() - started)
        return result

    def allowed_methods(environ: dict[str, Any]) -> str:
        """The ``Allow`` of a 405 on this path: GET and HEAD too when a read route serves it."""
        try:
            endpoint, _ = app.url_map.bind_to_environ(environ).match(method="GET")
        except HTTPException:  # no rule takes GET on this path: only the machine's methods
            return ALLOW_INGEST
        return ALLOW_INGEST if endpoint in INGEST_ENDPOINTS else ALLOW_READ_AND_INGEST

    def ingest(path: str = "") -> Response:
        """A GET or HEAD no read route serves: the machine answers 405."""
        if is_source_config(request.environ.get("PATH_INFO") or "/"):
            return source_config()  # `//sourceConfig`: an SDK that doubled the slash
        result = run_ingest(request.environ)
        return Response(result.body, status=result.status, headers=result.headers)

    def source_config() -> Response:
        """RudderStack's ``GET /sourceConfig`` (``drengr.core.control_plane``); the query is never logged."""
        started = time.perf_counter()
        environ = request.environ
        headers = {name: environ[key] for key, name in _INGEST_HEADERS if key in environ}
        req = machine.Request(
            method=environ.get("REQUEST_METHOD", ""),
            path=environ.get("PATH_INFO") or "/",
            headers=headers,
            content_length=None,
            received_at_ms=clock_ms(),
            query=environ.get("QUERY_STRING", ""),
        )
        try:
            result = machine.drive(
                machine.handle_source_config(req), lambda need: store.lookup_key(hash_key(need.key))
            )
        except StoreError as error:  # a store outage: a plain 502, logged as one
            log.warning("key look-up failed: %s", error)
            result = machine.error_response(IngestFailed(), headers.get("origin"))
        except Exception as error:  # a bug: logged, never a traceback
            _log_unexpected(req, error)
            result = machine.error_response(IngestFailed(), headers.get("origin"))
        if result.auth_failure:
            metrics.count("auth_failures", result.auth_failure)
        _log_line(
            req.method,
            "/sourceConfig",
            result.status,
            result.tenant_id,
            time.perf_counter() - started,
            result.auth_failure,
        )
        return Response(result.body, status=result.status, headers=result.headers)

    def ingest_fast_path(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # POST and OPTIONS skip Flask's request/response objects and routing: ~0.1 ms
        # a request, a third of a single-event request's cost. PUT, DELETE, TRACE, …
        # come here too: the machine's JSON 405, never werkzeug's HTML one.
        result = run_ingest(environ)
        metrics.count("requests", _ingest_route(environ.get("PATH_INFO") or "/"), str(result.status))
        headers = [*result.headers, ("Content-Length", str(len(result.body)))]
        start_response(_STATUS_LINES.get(result.status) or str(result.status), headers)
        return [result.body]

    app.add_url_rule("/", "ingest_root", ingest, methods=["GET"], provide_automatic_options=False)
    app.add_url_rule("/<anypath:path>", "ingest", ingest, methods=["GET"], provide_automatic_options=False)
    for rule in ("/sourceConfig", "/sourceConfig/"):
        app.add_url_rule(
            rule, "source_config", source_config, methods=["GET"], provide_automatic_options=False
        )

    health_check = HealthCheck(store)

    @app.get("/health")
    def health() -> Response:
        started = time.perf_counter()
        ok, why_not = health_check.check()
        body = {"status": "ok"} if ok else {"status": "unavailable", "error": why_not}
        status = 200 if ok else 503
        # Probes come every few seconds: at debug, unless unhealthy (then a warning worth seeing).
        level = logging.DEBUG if ok else logging.WARNING
        _log_line("GET", "/health", status, None, time.perf_counter() - started, level=level)
        return Response(json.dumps(body), status=status, mimetype="application/json")

    @app.get("/v1/pixel/<any(track, page, identify, group, alias, screen):event_type>")
    def pixel(event_type: str) -> Response:
        """Segment's Pixel API (``drengr.core.pixel``): a 1x1 GIF whatever happened; the query is never logged."""
        result = run_ingest(request.environ, handle_pixel)
        return Response(result.body, status=result.status, headers=result.headers)

    @app.get("/v1/projects/<write_key>/settings")
    def settings(write_key: str) -> Response:
        started = time.perf_counter()
        origin = request.headers.get("Origin")
        path = "/v1/projects/{writeKey}/settings"  # the key in the path is never logged
        try:
            record = store.lookup_key(hash_key(write_key))
        except StoreError as error:  # a store outage: the JSON 502, as on the ingest routes
            log.warning("key look-up failed: %s", error)
            result = machine.error_response(IngestFailed(), origin)
            _log_line("GET", path, result.status, None, time.perf_counter() - started)
            return Response(result.body, status=result.status, headers=result.headers)
        if not write_key.startswith(PUBLISHABLE_PREFIX) or record is None or record.revoked:
            result = machine.error_response(NotFound(), origin)
            _log_line("GET", path, result.status, None, time.perf_counter() - started)
            return Response(result.body, status=result.status, headers=result.headers)
        body = settings_document(write_key, request.host, request.scheme, request.script_root)
        _log_line("GET", path, 200, record.tenant_id, time.perf_counter() - started)
        return Response(body, status=200, headers=machine.cors_headers(origin), mimetype="application/json")

    @app.get("/metrics")
    def metrics_route() -> Response:
        """Prometheus' scrape: open from this machine, from elsewhere only with a secret key."""
        if (
            not _from_loopback(request.environ)
            and read_api.secret_tenant(store, request.headers.get("Authorization")) is None
        ):
            refused = json.dumps({"error": "Unauthorized", "code": "unauthorized", "message": METRICS_401})
            return Response(refused, status=401, mimetype="application/json")
        scrape, content_type = metrics.exposition()
        return Response(scrape, status=200, headers={"Content-Type": content_type})

    @app.after_request
    def count_flask_request(response: Response) -> Response:
        # Flask's routes (reads, health, settings, pixel, ...): the endpoint names the route.
        metrics.count("requests", request.endpoint or "not_found", str(response.status_code))
        return response

    if config.retention:
        app.extensions["drengr.retention"] = Retention(store, config.retention, clock_ms)
    read_api.register(app, store, clock_ms=clock_ms)
    analytics_js.register(app, config.analytics_js, _log_line)
    flask_wsgi_app = app.wsgi_app

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in FLASK_METHODS:
            return ingest_fast_path(environ, start_response)
        return flask_wsgi_app(environ, start_response)

    app.wsgi_app = dispatch  # type: ignore[method-assign]
    if config.prefix.strip("/"):
        app.wsgi_app = PrefixMiddleware(app.wsgi_app, config.prefix)  # type: ignore[method-assign]
    return app


RETENTION_EVERY_SECONDS = 3_600.0


class Retention:
    """``--retention AGE``: a daemon thread deletes what is older, at start and every hour after.

    The store deletes in short batches (``prune_events``), each its own
    transaction, so requests wait for one batch at most. A failure is
    logged and tried again at the next turn.
    """

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


METRICS_401 = (
    "GET /metrics answers requests from this machine; from elsewhere, send a secret key "
    "(Authorization: Bearer drengr_sk_...)."
)
_LOOPBACK = ("127.", "::1", "::ffff:127.")
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _from_loopback(environ: dict[str, Any]) -> bool:
    """From this machine, and not through a proxy on it (nginx's requests come from 127.0.0.1 too)."""
    address = environ.get("REMOTE_ADDR") or ""
    return address.startswith(_LOOPBACK) and not any(header in environ for header in _PROXY_HEADERS)


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


class PrefixMiddleware:
    """Serve the app under ``prefix`` (``--prefix``), as nginx `location /p/` would."""

    def __init__(self, app: Callable[..., Iterable[bytes]], prefix: str) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.prefix or path.startswith(self.prefix + "/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
            environ["PATH_INFO"] = path[len(self.prefix) :]
            return self.app(environ, start_response)
        body = NotFound().body()
        start_response(
            "404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]


def _redact(text: str, limit: int) -> str:
    return redact_keys(text)[:limit]


def _log_request(req: machine.Request, result: machine.Response, seconds: float) -> None:
    """One structured line per request: counts and reasons only, never a key or a value.

    The line is JSON with ``ensure_ascii``: a newline (or U+2028) the client put
    in the path or a header is written as an escape, so it cannot start a line.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    outcome = result.outcome
    line = {
        "method": req.method,
        "path": _redact(req.path, 200),
        "status": result.status,
        "error": result.error_code,
        "tenant": result.tenant_id,
        "items": result.items,
        "stored": outcome.stored if outcome else 0,
        "duplicates": outcome.duplicates if outcome else 0,
        "over_cap": outcome.over_cap if outcome else 0,
        "dropped": result.dropped,
        "stripped": {reason: count for reason, (count, _names) in result.stripped.items()},
        "bytes": req.content_length,
        "library": _redact(req.headers.get("user-agent", ""), 80),
        "ms": round(seconds * 1000, 2),
        "auth_failure": result.auth_failure,  # a 401's kind: missing, malformed, unknown_key, revoked, secret_key
    }
    access_log.info(Fields(line))


def _log_line(
    method: str,
    path: str,
    status: int,
    tenant_id: str | None,
    seconds: float,
    auth_failure: str | None = None,
    level: int = logging.INFO,
) -> None:
    """The access line of the routes that are not ingest (health, settings): same shape."""
    if not access_log.isEnabledFor(level):
        return
    line = {
        "method": method,
        "path": path,
        "status": status,
        "error": None,
        "tenant": tenant_id,
        "items": 0,
        "stored": 0,
        "duplicates": 0,
        "over_cap": 0,
        "dropped": {},
        "stripped": {},
        "bytes": None,
        "library": _redact(request.headers.get("User-Agent", ""), 80),
        "ms": round(seconds * 1000, 2),
        "auth_failure": auth_failure,
    }
    access_log.log(level, Fields(line))


def _log_unexpected(req: machine.Request, error: Exception) -> None:
    """A bug: where it happened, one line, without the exception's message.

    The message of an exception raised while mapping may quote the body (a
    property value, a key); the type and the frames are enough to find the bug.
    """
    frames = [
        f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in traceback.extract_tb(error.__traceback__)
    ]
    line = {
        "unexpected_error": type(error).__name__,
        "method": req.method,
        "path": _redact(req.path, 200),
        "frames": frames if len(frames) <= 12 else [*frames[:4], "…", *frames[-7:]],  # a deep recursion
    }
    log.error(Fields(line))
