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

Its errors are the one vocabulary's (``errors``): a bad parameter raises
``InvalidQuery`` (400, with a sentence saying which and why), a store that
cannot answer is ``StoreUnavailable`` (503). ``create_app`` registers
``blueprint``; the routes read the app's ``AppState`` (the store, the clock,
the ``DropLog`` the ingest routes feed, the reader opened on the first read).
"""

import hmac
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, request

from .. import debugger
from ..core.auth import SECRET_PREFIX, hash_key, key_from_headers
from ..core.errors import NotFound, Unauthorized
from ..core.timestamps import parse_ms
from ..drops import DEFAULT_SAMPLES_PER_TENANT, REASONS
from ..store.base import StoreError
from ..store.reader import (
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
from . import access_log
from .errors import InvalidQuery, RouteError, StoreUnavailable, response
from .state import state_of

DEFAULT_EVENTS_LIMIT = 50
MAX_EVENTS_LIMIT = 1_000
DEFAULT_STATS_SINCE = "24h"
MAX_SERIES_BUCKETS = 10_080  # a week of minutes
BUCKET_MS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
OPENAPI_PATH = Path(__file__).parent.parent / "openapi.yaml"

# Read responses hold a tenant's data: never cached, never sniffed, never framed.
NO_STORE = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
]
JSON_NO_STORE = [("Content-Type", "application/json"), *NO_STORE]
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


# ---------------------------------------------------------------- helpers


def _reader() -> Reader:
    state = state_of(current_app)
    if state.reader is None:
        state.reader = open_reader(state.store)
    return state.reader


def _json(status: int, body: Any) -> Response:
    try:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
    except ValueError:  # a sum that overflowed a double: JSON has no Infinity, so null
        text = json.dumps(_finite(body), ensure_ascii=False)
    return Response(text, status=status, headers=JSON_NO_STORE)


def _finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(inner) for inner in value]
    return value


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
    return state_of(current_app).clock_ms()


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
    """Secret-key auth, then ``handler(tenant_id)``; bad parameters → 400, store trouble → 503.

    The access line has the path without its query (filters may hold ids).
    """

    def route() -> Response:
        started = time.perf_counter()
        store = state_of(current_app).store
        tenant_id = secret_tenant(store, request.headers.get("Authorization"))
        failure = None
        if tenant_id is None:
            failure = why_unauthorized(store, request.headers.get("Authorization"))
            answer = response(Unauthorized(failure), UNAUTHORIZED_HEADERS)
        else:
            try:
                answer = handler(tenant_id)
            except RouteError as error:
                answer = response(error, JSON_NO_STORE)
            except StoreError:
                answer = response(StoreUnavailable(), JSON_NO_STORE)
        access_log.route_line(request.method, request.path, answer.status_code, tenant_id, started, failure)
        return answer

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
        end_ms = _now_ms() if until is None else parse_ms(until)  # 1970-01-01 is 0, not "now"
        start_ms = parse_ms(since)
        assert end_ms is not None and start_ms is not None  # parse_time wrote them
        span = end_ms - start_ms
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
    drop_log = state_of(current_app).drops
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
        return response(NotFound(), JSON_NO_STORE)
    return Response(body, status=200, headers=[("Content-Type", "application/yaml; charset=utf-8")])


debugger.add_routes(blueprint)
