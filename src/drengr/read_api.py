"""The read API and the live debugger page: a Flask Blueprint, signed in with a tenant's secret key.

Routes (relative to the mount point, like ingest; documented in ``openapi.yaml``):

- ``GET /v1/events``  rows of ``semantic_events``, newest first or oldest first, by cursor
- ``GET /v1/stats``   counts by event_name over an interval, sums of named measures, per-bucket counts
- ``GET /v1/drops``   what was accepted but not stored (``drengr.drops``), by reason, and recent samples
- ``GET /v1/openapi.yaml``  the description of these routes
- ``GET /debugger`` (+ ``app.js``, ``style.css``)  the live debugger page (``drengr.debugger``), which calls the three above

Auth: ``Authorization: Bearer drengr_sk_…`` or HTTP Basic with the secret key as
username. Publishable keys are public (they sit in every web page that loads
analytics.js), so they never read: any failure gets the ingest API's 401, byte
for byte. A key reads only its own tenant's rows and drops.

Wire it with ``register(app, store)``; ``app.extensions["drengr.drops"]`` is the
DropLog the ingest route feeds (created here when the app has none).
"""

import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from . import clock, debugger
from .core.auth import SECRET_PREFIX, hash_key, key_from_headers
from .core.errors import UNAUTHORIZED_BODY, error_body
from .drops import DEFAULT_SAMPLES_PER_TENANT, REASONS, DropLog
from .logs import Fields
from .store.base import StoreError
from .store.reader import (
    BUCKET_PREFIX_CHARS,
    MAX_MEASURES_PER_QUERY,
    ORDERS,
    TIME_FIELDS,
    EventQuery,
    Reader,
    StatsQuery,
    check_measure_name,
    open_reader,
    parse_time,
)

access_log = logging.getLogger("drengr.access")

DEFAULT_EVENTS_LIMIT = 50
MAX_EVENTS_LIMIT = 1_000
DEFAULT_STATS_SINCE = "24h"
MAX_SERIES_BUCKETS = 10_080  # a week of minutes
BUCKET_MS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")

# Read responses hold a tenant's data: never cached, never sniffed, never framed.
NO_STORE = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
]
UNAUTHORIZED_HEADERS = [
    ("Content-Type", "application/json"),
    # A Bearer challenge, not Basic: Basic would make a browser pop its own password dialog.
    ("WWW-Authenticate", 'Bearer realm="drengr"'),
    *NO_STORE,
]

EVENTS_PARAMS = frozenset(
    {"since", "until", "time_field", "event_name", "event_type", "external_id", "install_id", "cursor",
     "order", "limit"}
)  # fmt: skip
STATS_PARAMS = frozenset({"since", "until", "time_field", "event_name", "measure", "interval"})
DROPS_PARAMS = frozenset({"limit"})

# Its templates are the debugger page's files (drengr/debugger/index.html).
blueprint = Blueprint("drengr_read", __name__, template_folder=debugger.FILES)


class InvalidQuery(Exception):
    """A query parameter we cannot use; the message is the sentence the user reads."""


def register(
    app: Flask,
    store: Any,
    drops: DropLog | None = None,
    clock_ms: Callable[[], int] | None = None,
    reader: Reader | None = None,
) -> DropLog:
    """Add the read API and the debugger to ``app``; returns the DropLog the ingest route should feed."""
    drop_log = drops or app.extensions.get("drengr.drops") or DropLog()
    app.extensions["drengr.drops"] = drop_log
    app.extensions["drengr.read_store"] = store
    app.extensions["drengr.reader"] = reader  # opened on first use: ingest-only apps never open one
    app.extensions["drengr.read_clock"] = clock_ms or clock.now_ms
    app.register_blueprint(blueprint)
    return drop_log


# ---------------------------------------------------------------- helpers


def _reader() -> Reader:
    reader: Reader | None = current_app.extensions["drengr.reader"]
    if reader is None:
        reader = current_app.extensions["drengr.reader"] = open_reader(
            current_app.extensions["drengr.read_store"]
        )
    return reader


def _json(status: int, body: Any) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False),
        status=status,
        headers=[("Content-Type", "application/json"), *NO_STORE],
    )


def _unauthorized() -> Response:
    return Response(UNAUTHORIZED_BODY, status=401, headers=UNAUTHORIZED_HEADERS)


def _invalid(message: str) -> Response:
    body = json.loads(error_body("Invalid query", "invalid_query"))
    body["message"] = message
    return _json(400, body)


def key_from_authorization(authorization: str | None) -> str | None:
    """A secret key from ``Bearer KEY`` or Basic (key as username); None for anything else."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        key: object = credentials.strip()
    elif scheme.lower() == "basic":
        key = key_from_headers(authorization, None)
    else:
        return None
    return key if isinstance(key, str) and key else None


def secret_tenant(store: Any, authorization: str | None) -> str | None:
    """The tenant of a known, unrevoked secret key in ``authorization``; None for any failure."""
    key = key_from_authorization(authorization)
    if key is None or not key.startswith(SECRET_PREFIX):
        return None
    digest = hash_key(key)
    try:
        record = store.lookup_key(digest)
    except StoreError:
        return None
    if record is None:
        return None
    same = hmac.compare_digest(record.key_hash, digest)
    return record.tenant_id if same and record.kind == "secret" and not record.revoked else None


def _now_ms() -> int:
    clock: Callable[[], int] = current_app.extensions["drengr.read_clock"]
    return clock()


def _one(name: str) -> str | None:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidQuery(f"{name} was given {len(values)} times: give it once.")
    return values[0] if values else None


def _check_known(allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise InvalidQuery(
            f"Unknown parameter {unknown[0]!r}: this route takes {', '.join(sorted(allowed))}."
        )


def _time(name: str, default: str | None = None) -> str | None:
    text = _one(name)
    if text is None:
        text = default
    if text is None:
        return None
    value = parse_time(text, _now_ms())
    if value is None:
        raise InvalidQuery(
            f"{name}={text!r} is not a time: give an ISO-8601 timestamp (2026-11-26T02:50:53Z), "
            "a date (2026-11-26) or a duration ago (90s, 15m, 2h, 7d)."
        )
    return value


def _choice(name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    value = _one(name)
    if value is None:
        return default
    if value not in choices:
        raise InvalidQuery(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
    return value


def _int(name: str, default: int, low: int, high: int) -> int:
    text = _one(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise InvalidQuery(f"{name} must be a whole number from {low} to {high}, not {text!r}.")
    return int(text)


def _cursor() -> int | None:
    text = _one("cursor")
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise InvalidQuery("cursor must be a next_cursor or latest_cursor from an earlier answer.")
    return int(text)


def _text(name: str) -> str | None:
    value = _one(name)
    if value is not None and len(value) > 1024:
        raise InvalidQuery(f"{name} is longer than 1,024 characters.")
    return value


def _log(status: int, tenant_id: str | None, started: float, auth_failure: str | None = None) -> None:
    """The access line, same shape as ingest's; the path without its query (filters may hold ids)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = {
        "method": request.method, "path": request.path[:200], "status": status, "error": None,
        "tenant": tenant_id, "items": 0, "stored": 0, "duplicates": 0, "over_cap": 0, "dropped": {}, "stripped": {},
        "bytes": None, "library": request.headers.get("User-Agent", "")[:80],
        "ms": round((time.perf_counter() - started) * 1000, 2), "auth_failure": auth_failure,
    }  # fmt: skip
    access_log.info(Fields(line))


def why_unauthorized(store: Any, authorization: str | None) -> str:
    """Why ``secret_tenant`` said no, for the log (the answer is the same 401 for every kind)."""
    if not authorization:
        return "missing"
    key = key_from_authorization(authorization)
    if key is None:
        return "malformed"
    try:
        record = store.lookup_key(hash_key(key))  # remembered for 2 s: the look-up just made
    except StoreError:
        return "unknown_key"
    if record is None:
        return "unknown_key"
    return "revoked" if record.revoked else "publishable_key" if record.kind != "secret" else "unknown_key"


def _authorized_route(handler: Callable[[str], Response]) -> Callable[[], Response]:
    """Secret-key auth, then ``handler(tenant_id)``; bad parameters → 400, store trouble → 503."""

    def route() -> Response:
        started = time.perf_counter()
        store = current_app.extensions["drengr.read_store"]
        tenant_id = secret_tenant(store, request.headers.get("Authorization"))
        failure = None
        if tenant_id is None:
            failure = why_unauthorized(store, request.headers.get("Authorization"))
            response = _unauthorized()
        else:
            try:
                response = handler(tenant_id)
            except InvalidQuery as error:
                response = _invalid(str(error))
            except StoreError:
                body = json.loads(error_body("Store unavailable", "store_unavailable"))
                response = _json(503, body)
        _log(response.status_code, tenant_id, started, failure)
        return response

    route.__name__ = handler.__name__
    return route


# ---------------------------------------------------------------- routes


def events(tenant_id: str) -> Response:
    _check_known(EVENTS_PARAMS)
    query = EventQuery(
        tenant_id=tenant_id,
        since=_time("since"),
        until=_time("until"),
        time_field=_choice("time_field", TIME_FIELDS, "received_at") or "received_at",
        event_name=_text("event_name"),
        event_type=_text("event_type"),
        external_id=_text("external_id"),
        install_id=_text("install_id"),
        cursor=_cursor(),
        order=_choice("order", ORDERS, "desc") or "desc",
        limit=_int("limit", DEFAULT_EVENTS_LIMIT, 1, MAX_EVENTS_LIMIT),
    )
    reader = _reader()
    page = reader.events(query)
    for event in page.events:
        del event["tenant_id"]  # always the key's own
    return _json(
        200,
        {
            "events": page.events,
            "next_cursor": None if page.next_cursor is None else str(page.next_cursor),
            "latest_cursor": str(page.latest_cursor),
        },
    )


def stats(tenant_id: str) -> Response:
    _check_known(STATS_PARAMS)
    measures = request.args.getlist("measure")
    if len(measures) > MAX_MEASURES_PER_QUERY:
        raise InvalidQuery(f"At most {MAX_MEASURES_PER_QUERY} measure parameters.")
    for name in measures:
        if not check_measure_name(name):
            raise InvalidQuery(f"measure={name!r} is not a measure name (1–64 characters, no quotes).")
    since = _time("since", DEFAULT_STATS_SINCE)
    until = _time("until")
    interval = _choice("interval", tuple(BUCKET_PREFIX_CHARS), None)
    if interval is not None and since is not None:
        from .core.timestamps import parse_ms

        end_ms = (parse_ms(until) if until else None) or _now_ms()
        span = end_ms - (parse_ms(since) or 0)
        if span // BUCKET_MS[interval] > MAX_SERIES_BUCKETS:
            raise InvalidQuery(
                f"interval={interval} over that range is more than {MAX_SERIES_BUCKETS:,} buckets: "
                "narrow since/until or pick a coarser interval."
            )
    query = StatsQuery(
        tenant_id=tenant_id,
        since=since,
        until=until,
        time_field=_choice("time_field", TIME_FIELDS, "received_at") or "received_at",
        event_name=_text("event_name"),
        measures=tuple(dict.fromkeys(measures)),
        interval=interval,
    )
    reader = _reader()
    result = reader.stats(query)
    return _json(
        200,
        {
            "since": query.since,
            "until": query.until,
            "time_field": query.time_field,
            "total": result.total,
            "sums": result.sums,
            "by_event": result.by_event,
            "interval": interval,
            "series": result.series,
        },
    )


def drops(tenant_id: str) -> Response:
    _check_known(DROPS_PARAMS)
    limit = _int("limit", 50, 0, DEFAULT_SAMPLES_PER_TENANT)
    drop_log: DropLog = current_app.extensions["drengr.drops"]
    counts = drop_log.counts(tenant_id)
    return _json(
        200,
        {
            "counts": counts,
            "total": sum(counts.values()),
            "recent": [sample.as_json() for sample in drop_log.samples(tenant_id, limit)],
            "reasons": {reason: text for reason, (text, _) in REASONS.items()},
        },
    )


blueprint.add_url_rule("/v1/events", "events", _authorized_route(events), methods=["GET"])
blueprint.add_url_rule("/v1/stats", "stats", _authorized_route(stats), methods=["GET"])
blueprint.add_url_rule("/v1/drops", "drops", _authorized_route(drops), methods=["GET"])


@blueprint.get("/v1/openapi.yaml")
def openapi() -> Response:
    try:
        body = OPENAPI_PATH.read_bytes()
    except OSError:
        return _json(404, json.loads(error_body("Not found", "not_found")))
    return Response(body, status=200, headers=[("Content-Type", "application/yaml; charset=utf-8")])


debugger.add_routes(blueprint)
