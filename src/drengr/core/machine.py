"""One ingest request, start to finish, as a generator the shell drives.

The machine yields what it needs from the outside world — the request
body, the owner of a key, a durable store — and the shell sends back the
answer; it returns the Response. Checks run in the order of docs/mapping.md
"Limits and responses": size from Content-Length, header auth,
decompression/size, JSON, body writeKey auth (else the query string's
``writeKey``), batch count, per-item size, mapping, store. Every IngestError
becomes its response here, at one boundary. No I/O, no clock: ``received_at_ms`` is
passed in.
"""

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .auth import MALFORMED, KeyRecord, key_from_headers, key_from_query, may_ingest
from .body import decode_body
from .control_plane import source_config_document
from .errors import (
    SUCCESS_BODY,
    BatchTooLarge,
    IngestError,
    IngestFailed,
    InvalidJSON,
    MessageTooLarge,
    MethodNotAllowed,
    RequestTooLarge,
    Unauthorized,
)
from .limits import CORS_MAX_AGE_SECONDS, MAX_BATCH_ITEMS, MAX_BODY_BYTES, MAX_ITEM_BYTES
from .outcome import StoreOutcome
from .routes import Route, classify, is_source_config

DEFAULT_ALLOW_HEADERS = ("authorization", "content-type", "x-write-key")


class BodyParser(Protocol):
    """Parses a body into a document that maps itself to rows (``drengr.mapping.BodyMapper``).

    The core names only this shape: which mapper runs, compiled or its twin,
    is chosen outside it.
    """

    def parse(self, body: bytes) -> Any:
        """The document; raises InvalidJSON."""
        ...


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # relative to the mount point
    headers: Mapping[str, str]  # lower-case names
    content_length: int | None
    received_at_ms: int
    # The raw query string. It may hold a write key (``?writeKey=``), so it is
    # read for that and nothing else, and never logged.
    query: str = ""


@dataclass(frozen=True, slots=True)
class ReadBody:
    """Send back the body: at most ``limit + 1`` bytes, so "too large" can be seen."""

    limit: int


@dataclass(frozen=True, slots=True)
class LookupKey:
    """Send back the KeyRecord for ``key`` (looked up by its digest), or None."""

    key: str


@dataclass(frozen=True, slots=True)
class StoreRows:
    """Store durably; send back a StoreOutcome, or None when the store failed."""

    tenant_id: str
    rows: list[tuple[Any, ...]]
    received_at_ms: int


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # What happened, for the access log (counts and reasons, never values).
    tenant_id: str | None = None
    error_code: str | None = None
    items: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # items, by reason
    # keys left out of stored rows: reason -> (count, the first few key names)
    stripped: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    # the first few stored events that lost keys: (event_id, ((reason, key name), ...)), names only
    stripped_events: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    outcome: StoreOutcome | None = None
    # a 401's kind, for the log only (Unauthorized.FAILURES); the answer is the same for all
    auth_failure: str | None = None


Need = ReadBody | LookupKey | StoreRows


def cors_headers(origin: str | None) -> list[tuple[str, str]]:
    """On every ingest response, errors included (docs/mapping.md "CORS")."""
    headers = [
        ("Access-Control-Allow-Origin", origin or "*"),
        ("Access-Control-Expose-Headers", "Retry-After"),
        ("Vary", "Origin"),
    ]
    if origin:
        # Clients that fetch with credentials: "include" need this to read the answer.
        headers.append(("Access-Control-Allow-Credentials", "true"))
    return headers


def preflight(request: Request, methods: str = "POST, OPTIONS") -> Response:
    # Echo what the browser asks for, and always allow the three headers our
    # clients send (docs/mapping.md "CORS").
    requested = [h.strip() for h in request.headers.get("access-control-request-headers", "").split(",")]
    allowed = [h for h in requested if h]
    lowered = {h.lower() for h in allowed}
    allowed += [h for h in DEFAULT_ALLOW_HEADERS if h not in lowered]
    headers = cors_headers(request.headers.get("origin")) + [
        ("Access-Control-Allow-Methods", methods),
        ("Access-Control-Allow-Headers", ", ".join(allowed)),
        ("Access-Control-Max-Age", str(CORS_MAX_AGE_SECONDS)),
    ]
    return Response(204, headers, b"")


def json_response(status: int, body: bytes, origin: str | None) -> Response:
    return Response(status, [("Content-Type", "application/json"), *cors_headers(origin)], body)


def error_response(error: IngestError, origin: str | None) -> Response:
    response = json_response(error.status, error.body(), origin)
    response.error_code = error.code
    if isinstance(error, Unauthorized):
        response.auth_failure = error.failure
    return response


def handle(request: Request, mapper: BodyParser) -> Generator[Need, Any, Response]:
    """Drive with ``send``: each yielded Need gets its answer; the return value is the Response."""
    origin = request.headers.get("origin")
    if request.method == "OPTIONS":
        # /sourceConfig is fetched with GET (and Basic auth: a preflighted request).
        methods = "GET, HEAD, POST, OPTIONS" if is_source_config(request.path) else "POST, OPTIONS"
        return preflight(request, methods)
    if request.method != "POST":
        return error_response(MethodNotAllowed(), origin)
    route, single_type = classify(request.path)
    if route is Route.METRICS:
        return json_response(200, SUCCESS_BODY, origin)  # analytics-next telemetry: nothing to keep
    tenant_id: str | None = None
    pii_allow: tuple[str, ...] = ()
    try:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise RequestTooLarge()
        header_key = key_from_headers(
            request.headers.get("authorization"), request.headers.get("x-write-key")
        )
        if header_key is MALFORMED:
            raise Unauthorized("malformed")
        if header_key is not None:
            tenant_id, pii_allow = yield from _authorize(str(header_key))

        raw = yield ReadBody(MAX_BODY_BYTES)
        body = decode_body(raw, request.headers.get("content-encoding"))
        document = _parse(mapper, body)
        if tenant_id is None:
            # The body's key, else the query string's (sendBeacon cannot set a header).
            body_key = document.write_key
            key = body_key if body_key is not None else key_from_query(request.query)
            if key is None:
                raise Unauthorized("missing")
            tenant_id, pii_allow = yield from _authorize(key)

        items = document.item_count(single_type)
        if items > MAX_BATCH_ITEMS:
            raise BatchTooLarge()
        if document.has_oversized_item(single_type, MAX_ITEM_BYTES):
            raise MessageTooLarge()
        rows, dropped, stripped = document.map(single_type, request.received_at_ms, tenant_id, pii_allow)
        outcome: StoreOutcome | None = None
        if rows:
            outcome = yield StoreRows(tenant_id, rows, request.received_at_ms)
            if outcome is None:
                raise IngestFailed()
    except IngestError as error:
        response = error_response(error, origin)
        response.tenant_id = tenant_id
        return response
    response = json_response(200, SUCCESS_BODY, origin)
    response.tenant_id = tenant_id
    response.items = items
    response.dropped = dropped
    response.stripped = stripped
    response.stripped_events = document.stripped_events
    response.outcome = outcome
    return response


def handle_source_config(request: Request) -> Generator[Need, Any, Response]:
    """``GET /sourceConfig``: RudderStack's control-plane answer, for an active publishable key.

    The key comes from Basic auth (the mobile SDKs, and the browser SDKs'
    XHR), else ``?writeKey=`` (the browser SDKs put it there too). Any
    failure is the ingest routes' uniform 401: no SDK needs another status
    (Android and iOS retry a few times and then give up; the browser SDKs
    log the failed fetch), and a uniform answer tells a key prober nothing.
    """
    origin = request.headers.get("origin")
    header_key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-write-key"))
    key = header_key if header_key is not None else key_from_query(request.query)
    try:
        if key is None or key is MALFORMED:
            raise Unauthorized("missing" if key is None else "malformed")
        tenant_id, _ = yield from _authorize(str(key))
    except IngestError as error:
        return error_response(error, origin)
    response = json_response(200, source_config_document(str(key)), origin)
    response.tenant_id = tenant_id
    return response


def _parse(mapper: BodyParser, body: bytes) -> Any:
    try:
        return mapper.parse(body)
    except RecursionError:  # nesting our parsers cannot follow is not a server fault
        raise InvalidJSON() from None


def _authorize(key: str) -> Generator[Need, Any, tuple[str, tuple[str, ...]]]:
    """The tenant of a key that may send, and the tenant's PII allow-list."""
    record: KeyRecord | None = yield LookupKey(key)
    if record is None:
        raise Unauthorized("unknown_key")
    if not may_ingest(key, record):
        failure = (
            "revoked" if record.revoked else "secret_key" if record.kind != "publishable" else "unknown_key"
        )
        raise Unauthorized(failure)
    return record.tenant_id, record.pii_allow


def run(request: Request, mapper: BodyParser, answer: Any) -> Response:
    """Drive ``handle`` with ``answer(need)`` — a convenience for shells and tests."""
    return drive(handle(request, mapper), answer)


def drive(machine: Generator[Need, Any, Response], answer: Any) -> Response:
    """Run any of this module's handlers to its Response, answering each Need with ``answer(need)``."""
    try:
        need = next(machine)
        while True:
            need = machine.send(answer(need))
    except StopIteration as stop:
        return stop.value
