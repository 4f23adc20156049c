"""Golden wire tests: every request captured from six real client libraries, replayed byte for byte.

The captures live in ``tests/data/wire/<client>/NNN.json`` (see its INDEX.md):
segment-analytics-python, rudder-sdk-python, segment-analytics-node,
rudder-sdk-node, jitsu-js-node and segment-analytics-next-browser. Each holds
the method, path, headers and the exact body bytes one client sent (gzip
included). Write keys in them are placeholders; the replay swaps in a real
publishable key wherever a placeholder sits (Basic auth, ``X-Write-Key``, the
body's ``writeKey``) and changes nothing else. Jitsu's masked body key
(``id:***``) is left as it is: the header key decides.

What is asserted comes from docs/mapping.md, worked out here in the test:

* ``spec_rows`` — a small model of docs/mapping.md "Event mapping" (route →
  type, event name normalisation, ids, dims/measures, the occurred_at rule).
  Every captured request is checked against it.
* ``GOLDEN_ROWS`` — the full expected rows for representative requests of
  each client, written out by hand from that page.

Captures whose original answer was a retry status (500, 429, …) are valid
requests all the same: this server must accept them. Point
``DRENGR_WIRE_DIR`` elsewhere to replay another capture set.
"""

import calendar
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drengr import clock
from drengr.store import SQLiteStore

from .support.app import TENANT, read_rows
from .support.wire import BY_ID, CAPTURES, POSTS, PREFLIGHTS, Capture, replay_request, send

# Both mappers (the compiled one, and the pure twin for every body); `dated`: run again with the
# clock far from today (tests/test_any_date.py).
pytestmark = [pytest.mark.usefixtures("mapper_twin"), pytest.mark.dated]

# Requests per client, as INDEX.md lists them: every one of them is replayed.
CLIENT_REQUEST_COUNTS = {
    "jitsu-js-node": 16,
    "rudder-sdk-node": 24,
    "rudder-sdk-python": 46,
    "segment-analytics-next-browser": 67,
    "segment-analytics-node": 35,
    "segment-analytics-python": 36,
}

SUCCESS = b'{"success": true}'
UNAUTHORIZED = b'{"error": "Unauthorized", "code": "unauthorized", "message": "Unauthorized"}'
ISO_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

# No skip when the captures are missing: the completeness test below fails instead.


# --------------------------------------------------------------------------- captures


def capture_params(captures: list[Capture]) -> list[Any]:
    return [pytest.param(capture, id=capture.id) for capture in captures]


# The captures were recorded on 2026-11-26 between 02:50 and 03:02 UTC. They are
# replayed as received shortly after, whatever today's date: the contract clamps
# an occurred_at later than a day after receipt, which would rewrite the
# captures' own timestamps once today is a day before them (a clock set back).
CAPTURED_AT_MS = 1_795_662_000_000  # 2026-11-26T03:00:00.000Z
_SHIFT_MS = CAPTURED_AT_MS - clock.now_ms()


def now_ms() -> int:
    """The time of receipt of this module's app and store: the real clock, moved back to the captures' day."""
    return clock.now_ms() + _SHIFT_MS


@pytest.fixture
def receipt_ms() -> Any:
    return now_ms


# --------------------------------------------------------------------------- the contract, as a model

ITEM_TYPES = ("track", "identify", "page", "screen", "group", "alias")
SHORT_TYPES = {
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
    "b": "batch",
}
PII = ("email", "phone", "name", "address", "password", "token", "ssn", "card", "cvv")
MEASURES_FIRST = ("revenue", "total", "price", "quantity")
ECOMMERCE_NUMBERS = ("revenue", "total", "price", "quantity", "tax", "shipping", "discount")
ECOMMERCE_EVENTS = """Products Searched, Product List Viewed, Product List Filtered, Promotion Viewed,
Promotion Clicked, Product Clicked, Product Viewed, Product Added, Product Removed, Cart Viewed,
Checkout Started, Checkout Step Viewed, Checkout Step Completed, Payment Info Entered, Order Updated,
Order Completed, Order Refunded, Order Cancelled, Coupon Entered, Coupon Applied, Coupon Denied,
Coupon Removed, Product Added to Wishlist, Product Removed from Wishlist, Wishlist Product Added to Cart,
Product Shared, Cart Shared, Product Reviewed"""
MAX_BODY_BYTES = 512_000
MAX_ITEM_BYTES = 32_768
MIN_OCCURRED_AT_MS = calendar.timegm((2000, 1, 1, 0, 0, 0)) * 1000
DAY_MS = 86_400_000

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)


def ts_ms(text: Any) -> int | None:
    """An ISO-8601 timestamp as epoch milliseconds (sub-millisecond digits cut), None if unparseable."""
    match = _TIMESTAMP.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    try:
        moment = datetime(*(int(part) for part in match.group(1, 2, 3, 4, 5, 6)), tzinfo=UTC)
    except ValueError:
        return None
    offset = 0
    if match.group(9):
        offset = (int(match.group(10)) * 60 + int(match.group(11))) * (-1 if match.group(9) == "-" else 1)
    millis = int(((match.group(7) or "") + "000")[:3])
    return (calendar.timegm(moment.timetuple()) - offset * 60) * 1000 + millis


def iso_ms(ms: int) -> str:
    """``2026-11-26T02:50:53.123Z``."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def normalise_event(name: str) -> str:
    """Lowercase, each run of non-letters/digits (Unicode-aware) → `_`, strip `_`, cut to 64."""
    return re.sub(r"[\W_]+", "_", name.lower()).strip("_")[:64]


ECOMMERCE = {normalise_event(name) for name in ECOMMERCE_EVENTS.replace("\n", " ").split(",")}


def route_type(path: str) -> str | None:
    """The last path segment names the type (`/v1/t`, `/api/s/s2s/track`, `/custom/batch`)."""
    last = path.split("?")[0].rstrip("/").rsplit("/", 1)[-1].lower()
    kind = "batch" if last == "import" else SHORT_TYPES.get(last, last)
    return kind if kind in (*ITEM_TYPES, "batch") else None


def items_of(capture: Capture) -> tuple[list[dict[str, Any]], Any]:
    """The items a body carries, and the batch-level sentAt (None for single events)."""
    body, kind = capture.body, route_type(capture.path)
    if kind == "batch" or (kind is None and isinstance(body.get("batch"), list)):
        return [item for item in body["batch"] if isinstance(item, dict)], body.get("sentAt")
    return [body], None


def as_id(value: Any) -> str | None:
    """userId/anonymousId: strings as-is, numbers as text; null and "" are absent."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    if isinstance(value, int | float):
        return str(value)
    return value if isinstance(value, str) else None


def is_pii(key: str) -> bool:
    return any(word in key.lower() for word in PII)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def spec_occurred_at(item: dict[str, Any], batch_sent_at: Any, received_ms: int) -> str:
    """Item timestamp; else received_at - (sentAt - originalTimestamp); else originalTimestamp; else received."""
    timestamp = ts_ms(item.get("timestamp"))
    sent_at = ts_ms(item.get("sentAt")) if ts_ms(item.get("sentAt")) is not None else ts_ms(batch_sent_at)
    original = ts_ms(item.get("originalTimestamp"))
    if timestamp is not None:
        occurred = timestamp
    elif sent_at is not None and original is not None:
        occurred = received_ms - (sent_at - original)
    elif original is not None:
        occurred = original
    else:
        occurred = received_ms
    return iso_ms(min(max(occurred, MIN_OCCURRED_AT_MS), received_ms + DAY_MS))


def spec_dims_measures(kind: str, item: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]] | None:
    """dims and measures per the contract's table; None when the item needs a JSON-text value (format unspecified)."""
    if kind in ("track", "page", "screen"):
        source = item.get("properties")
    elif kind in ("identify", "group"):
        source = item["traits"] if "traits" in item else (item.get("context") or {}).get("traits")
    else:
        source = None
    flat: list[tuple[str, Any]] = []
    for key, value in (source if isinstance(source, dict) else {}).items():
        if is_pii(key):
            continue
        if isinstance(value, dict):
            for inner_key, inner in value.items():
                if is_pii(inner_key):
                    continue
                if isinstance(inner, dict | list):
                    return None
                flat.append((f"{key}.{inner_key}", inner))
        elif isinstance(value, list):
            return None
        else:
            flat.append((key, value))

    ecommerce = kind == "track" and normalise_event(str(item.get("event", ""))) in ECOMMERCE
    numbers: list[tuple[str, Any]] = []
    dims: dict[str, str] = {}
    for key, value in flat:
        if value is None:
            continue
        if ecommerce and key in ECOMMERCE_NUMBERS and isinstance(value, str):
            with contextlib.suppress(ValueError):  # "a string that is not a number stays a dim"
                value = float(value)
        if is_number(value):
            numbers.append((key, value))
        elif len(dims) < 40:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            dims.setdefault(key[:64], text[:256])
    numbers.sort(key=lambda pair: MEASURES_FIRST.index(pair[0]) if pair[0] in MEASURES_FIRST else 4)
    measures = dict(numbers[:20])

    context = item.get("context") if isinstance(item.get("context"), dict) else {}
    reserved: dict[str, str] = {}
    if kind == "track" and normalise_event(item["event"]) != item["event"]:
        reserved["_source_event_name"] = item["event"]
    if kind in ("page", "screen") and isinstance(item.get("name"), str):
        reserved["name"] = item["name"]
    if kind in ("identify", "group", "alias"):
        if item.get("groupId") is not None:
            reserved["group_id"] = str(item["groupId"])
        if item.get("previousId") is not None:
            reserved["previous_id"] = str(item["previousId"])
    app, os_, device = (context.get(part) or {} for part in ("app", "os", "device"))
    if app.get("version") is not None:
        reserved["app_version"] = str(app["version"])
    os_text = " ".join(str(os_[part]) for part in ("name", "version") if os_.get(part) is not None)
    if os_text:
        reserved["os"] = os_text
    if device.get("model") is not None:
        reserved["device_model"] = str(device["model"])
    return {**dims, **{key: value[:256] for key, value in reserved.items()}}, measures


@dataclass(frozen=True)
class SpecRow:
    """What the contract says one stored row holds (occurred_at is worked out against the row's received_at)."""

    event_id: str
    event_type: str
    event_name: str
    external_id: str | None
    install_id: str
    item: dict[str, Any]
    batch_sent_at: Any

    @property
    def dims_measures(self) -> tuple[dict[str, str], dict[str, Any]] | None:
        return spec_dims_measures(self.event_type, self.item)


def spec_rows(capture: Capture) -> list[SpecRow]:
    """The rows the contract's mapping makes of this request (before dedup against earlier requests)."""
    items, batch_sent_at = items_of(capture)
    kind = route_type(capture.path)
    rows: dict[str, SpecRow] = {}
    for item in items:
        event_type = kind if kind in ITEM_TYPES else SHORT_TYPES.get(str(item.get("type")), item.get("type"))
        if event_type not in ITEM_TYPES:
            continue  # unrecognised type: dropped
        external_id = as_id(item.get("userId"))
        install_id = as_id(item.get("anonymousId")) or external_id
        if install_id is None:
            continue  # neither userId nor anonymousId: dropped
        if event_type == "track":
            event_name = normalise_event(item["event"]) if isinstance(item.get("event"), str) else ""
            if not event_name:
                continue  # a track with no usable event: dropped
        else:
            event_name = {"page": "page_viewed", "screen": "screen_viewed"}.get(event_type, event_type)
        assert item.get("messageId"), f"{capture.id}: every captured item carries a messageId"
        row = SpecRow(item["messageId"], event_type, event_name, external_id, install_id, item, batch_sent_at)
        rows.setdefault(row.event_id, row)  # a repeated messageId is stored once
    return list(rows.values())


def spec_rejection(capture: Capture) -> str | None:
    """The contract's 400 for this body, if any: "Request too large" / "Message too large"."""
    if len(capture.wire) > MAX_BODY_BYTES or len(capture.text) > MAX_BODY_BYTES:
        return "Request too large"
    items, _ = items_of(capture)
    if any(len(json.dumps(item, ensure_ascii=False).encode()) > MAX_ITEM_BYTES for item in items):
        return "Message too large"
    return None


# The two captures the contract's limits turn away (the recording server had answered 200):
# a 1.2 MB batch (> 500 KB) and a batch holding one 40 KB item (> 32 KB).
CONTRACT_REJECTIONS = {
    "rudder-sdk-python/045-size_60x20KB": "Request too large",
    "rudder-sdk-python/046-size_single_40KB": "Message too large",
}


# --------------------------------------------------------------------------- assertions


def assert_cors(response: Any, capture: Capture) -> None:
    origin = capture.header("Origin")
    assert response.headers.get("Access-Control-Allow-Origin") in ({origin, "*"} if origin else {"*"})
    exposed = response.headers.get("Access-Control-Expose-Headers", "")
    assert "retry-after" in {token.strip().lower() for token in exposed.split(",")}


def assert_row_follows_spec(row: dict[str, Any], spec: SpecRow, window: tuple[int, int]) -> None:
    """One stored row against the contract's model."""
    assert row["tenant_id"] == TENANT
    assert row["event_id"] == spec.event_id
    assert row["event_type"] == spec.event_type
    assert row["event_name"] == spec.event_name
    assert row["external_id"] == spec.external_id
    assert row["install_id"] == spec.install_id
    assert ISO_MS.fullmatch(row["received_at"]), row["received_at"]
    received_ms = ts_ms(row["received_at"])
    assert received_ms is not None and window[0] <= received_ms <= window[1]
    assert ISO_MS.fullmatch(row["occurred_at"]), row["occurred_at"]
    assert row["occurred_at"] == spec_occurred_at(spec.item, spec.batch_sent_at, received_ms)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in row["dims"].items())
    assert all(isinstance(k, str) and is_number(v) for k, v in row["measures"].items())
    expected = spec.dims_measures
    if expected is not None:
        assert (row["dims"], row["measures"]) == expected


def assert_rows_follow_spec(capture: Capture, rows: list[dict[str, Any]], window: tuple[int, int]) -> None:
    specs = spec_rows(capture)
    assert sorted(row["event_id"] for row in rows) == sorted(spec.event_id for spec in specs)
    by_id = {row["event_id"]: row for row in rows}
    for spec in specs:
        assert_row_follows_spec(by_id[spec.event_id], spec, window)


# --------------------------------------------------------------------------- the set itself


def test_every_captured_request_is_replayed() -> None:
    counts = {client: sum(c.client == client for c in CAPTURES) for client in CLIENT_REQUEST_COUNTS}
    assert counts == CLIENT_REQUEST_COUNTS
    assert {c.id for c in POSTS if spec_rejection(c)} == set(CONTRACT_REJECTIONS)


# --------------------------------------------------------------------------- every request


@pytest.mark.parametrize("capture", capture_params(POSTS))
def test_post_is_accepted_and_stored_as_the_spec_maps_it(
    capture: Capture, client: Any, key: str, db_path: Path
) -> None:
    started = now_ms()
    response = send(client, capture, key)
    finished = now_ms()
    assert_cors(response, capture)

    if capture.path.endswith("/v1/m"):  # analytics-next's metrics: 200, nothing stored
        assert response.status_code == 200
        assert read_rows(db_path) == []
        return

    if capture.id in CONTRACT_REJECTIONS:
        error = CONTRACT_REJECTIONS[capture.id]
        assert spec_rejection(capture) == error
        assert response.status_code == 400, response.data
        body = json.loads(response.data)
        assert (body["error"], body["message"]) == (error, error)
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", body["code"])
        assert read_rows(db_path) == []
        return

    assert (response.status_code, response.data) == (200, SUCCESS)
    rows = read_rows(db_path)
    assert len(rows) == len(spec_rows(capture))
    assert_rows_follow_spec(capture, rows, (started, finished))

    # The same request again (a client retry): accepted, nothing new stored.
    again = send(client, capture, key)
    assert (again.status_code, again.data) == (200, SUCCESS)
    assert read_rows(db_path) == rows


@pytest.mark.parametrize("capture", capture_params(PREFLIGHTS))
def test_preflight_answers_cors(capture: Capture, client: Any, key: str, db_path: Path) -> None:
    response = send(client, capture, key)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] in (capture.header("Origin"), "*")
    methods = {m.strip().upper() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"POST", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    requested = {
        h.strip().lower() for h in (capture.header("Access-Control-Request-Headers") or "").split(",")
    }
    assert requested - {""} <= allowed  # echoes what the browser asks for (e.g. x-custom, x-retry-count)
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "retry-after" in response.headers.get("Access-Control-Expose-Headers", "").lower()
    assert read_rows(db_path) == []


def test_preflight_allows_at_least_the_spec_headers(client: Any, key: str) -> None:
    """docs/mapping.md "CORS": Allow-Headers echoes the request's list plus the three headers clients send.

    One test over every captured preflight (they all ask for a subset, e.g. just `authorization`).
    """
    missing = {}
    for capture in PREFLIGHTS:
        response = send(client, capture, key)
        allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
        lacking = {"authorization", "content-type", "x-write-key"} - allowed
        if lacking:
            missing[capture.id] = sorted(lacking)
    assert missing == {}


def scenarios() -> Iterator[Any]:
    groups: dict[tuple[str, str], list[Capture]] = {}
    for capture in CAPTURES:
        groups.setdefault((capture.client, capture.scenario), []).append(capture)
    for (client_name, scenario), captures in groups.items():
        yield pytest.param(captures, id=f"{client_name}/{scenario}")


@pytest.mark.parametrize("captures", list(scenarios()))
def test_scenario_replayed_in_order_stores_each_message_once(
    captures: list[Capture], client: Any, key: str, db_path: Path
) -> None:
    """A client's whole conversation (first try, retries, preflights) into one database."""
    expected: dict[str, SpecRow] = {}
    for capture in captures:
        response = send(client, capture, key)
        if capture.method == "OPTIONS":
            assert response.status_code == 204
        elif capture.id in CONTRACT_REJECTIONS:
            assert response.status_code == 400
        else:
            assert response.status_code == 200, (capture.id, response.data)
            if not capture.path.endswith("/v1/m"):
                for spec in spec_rows(capture):
                    expected.setdefault(spec.event_id, spec)
    rows = read_rows(db_path)
    assert sorted(row["event_id"] for row in rows) == sorted(expected)
    for row in rows:
        spec = expected[row["event_id"]]
        assert (row["event_type"], row["event_name"], row["external_id"], row["install_id"]) == (
            spec.event_type,
            spec.event_name,
            spec.external_id,
            spec.install_id,
        )


# --------------------------------------------------------------------------- auth

UNAUTHORIZED_CAPTURES = [
    "segment-analytics-python/002-gzip_true",  # Basic + body writeKey, gzip
    "rudder-sdk-python/002-gzip_false",  # Basic only
    "segment-analytics-node/001-defaults_closeAndFlush",  # Basic + body writeKey
    "rudder-sdk-node/001-defaults",  # Basic, gzip, form-urlencoded
    "jitsu-js-node/007-s2s",  # X-Write-Key + masked body writeKey
    "segment-analytics-next-browser/006-standard_cdnSettings_apiHost",  # Basic + body writeKey, text/plain
]


@pytest.mark.parametrize("variant", ["no key", "placeholder key", "secret key"])
@pytest.mark.parametrize("capture_id", UNAUTHORIZED_CAPTURES)
def test_request_without_a_valid_key_is_refused(
    capture_id: str, variant: str, client: Any, store: SQLiteStore, db_path: Path
) -> None:
    capture = BY_ID[capture_id]
    store.create_key(TENANT, "publishable")  # a real key exists; these requests just do not carry it
    if variant == "no key":
        headers, body = replay_request(capture, None)
    elif variant == "placeholder key":  # the capture untouched: its placeholder is an unknown key
        headers = [(k, v) for k, v in capture.headers if k.lower() not in ("host", "content-length")]
        body = capture.wire
    else:  # secret keys administrate, they never ingest
        headers, body = replay_request(capture, store.create_key(TENANT, "secret"))
    response = client.open(capture.path, method="POST", headers=headers, data=body)
    assert (response.status_code, response.data) == (401, UNAUTHORIZED)
    assert_cors(response, capture)
    assert read_rows(db_path) == []


# --------------------------------------------------------------------------- golden rows


@dataclass(frozen=True)
class ReceivedMinus:
    """occurred_at = the row's received_at minus ``ms`` (docs/mapping.md "Event mapping": clock skew)."""

    ms: int


def golden(
    event_id: str,
    event_type: str,
    event_name: str,
    external_id: str | None,
    install_id: str,
    occurred_at: str | ReceivedMinus,
    dims: dict[str, str] | None = None,
    measures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "tenant_id": TENANT,
        "event_id": event_id,
        "event_type": event_type,
        "event_name": event_name,
        "external_id": external_id,
        "install_id": install_id,
        "occurred_at": occurred_at,
        "dims": dims or {},
        "measures": measures or {},
    }


# fmt: off  (the golden tables stay tabular)
DOCS_URL = "https://example.com/docs"
ORDER_DIMS = {"currency": "USD", "_source_event_name": "Order Completed"}  # email/name keys never appear
ORDER_MEASURES = {"revenue": 12.5}
AJS_ANON = "6966ac19-2720-4e68-885c-a5072b01ebe3"
AJS_ANON_BATCH = "d3dda789-28ee-41f3-8063-8a62ef8423aa"
AJS_PAGE_DIMS = {
    "path": "/static/index.html",
    "referrer": "",
    "search": "",
    "title": "ajs wire test",
    "url": "http://127.0.0.1:18734/static/index.html",
}
JITSU_ANON = "218d01e8-6e39-4ac5-a867-7e95384db702"
SKEW_304 = ReceivedMinus(304)  # rudder-sdk-node: sentAt 02:56:55.226Z - originalTimestamp 02:56:54.922Z

GOLDEN_ROWS: dict[str, list[dict[str, Any]]] = {
    # identify drops `email`, group drops traits.name (PII); page name → dims.name;
    # `category` (top level) is not in the mapping; anonymousId null → install_id falls back to userId.
    "segment-analytics-python/002-gzip_true": [
        golden(
            "e3872a89-ff53-4ccf-ba5b-ec6db1236572",
            "identify",
            "identify",
            "user-1",
            "user-1",
            "2026-11-26T02:53:45.305Z",
            {"plan": "pro"},
        ),
        golden(
            "d86514c2-81eb-4dca-a46f-6a6a9d1fd72a",
            "track",
            "order_completed",
            "user-1",
            "user-1",
            "2026-11-26T02:53:45.306Z",
            ORDER_DIMS,
            ORDER_MEASURES,
        ),
        golden(
            "9f40f03e-7071-44e1-8168-7514cc1275a3",
            "page",
            "page_viewed",
            "user-1",
            "user-1",
            "2026-11-26T02:53:45.306Z",
            {"url": DOCS_URL, "name": "Getting Started"},
        ),
        golden(
            "f7491b42-7f64-4ce7-b70b-4bd3872e9dce",
            "screen",
            "screen_viewed",
            "user-1",
            "user-1",
            "2026-11-26T02:53:45.306Z",
            {"name": "Welcome"},
            {"step": 1},
        ),
        golden(
            "dcb994c4-e10c-475e-82c0-581294287e8c",
            "group",
            "group",
            "user-1",
            "user-1",
            "2026-11-26T02:53:45.306Z",
            {"group_id": "group-42"},
        ),
        golden(
            "bb464d73-d1d0-4c46-9520-f792cd557d3a",
            "alias",
            "alias",
            "user-1",
            "user-1",
            "2026-11-26T02:53:45.306Z",
            {"previous_id": "anon-previous"},
        ),
        golden(
            "7db228e5-7d51-4e02-bb9a-be4177028974",
            "track",
            "anon_event_gzip",
            None,
            "anon-7",
            "2024-01-02T03:04:05.678Z",
            {"_source_event_name": "Anon Event gzip"},
        ),
    ],
    # identify has no top-level traits: context.traits is used. Microsecond timestamps keep
    # their milliseconds (".025678" → ".025").
    "rudder-sdk-python/001-module_api_default": [
        golden(
            "967d1601-43b0-422b-9e76-b3c0799abd9a",
            "identify",
            "identify",
            "user-1",
            "user-1",
            "2026-11-26T02:54:24.025Z",
            {"plan": "pro"},
        ),
        golden(
            "3c90a03b-d4df-48ef-bc9d-f0e50c992426",
            "track",
            "order_completed",
            "user-1",
            "user-1",
            "2026-11-26T02:54:24.025Z",
            ORDER_DIMS,
            ORDER_MEASURES,
        ),
        golden(
            "7a221a69-3465-46f5-a1bd-50e5d9a093ed",
            "page",
            "page_viewed",
            "user-1",
            "user-1",
            "2026-11-26T02:54:24.025Z",
            {"url": DOCS_URL, "name": "Getting Started"},
        ),
        golden(
            "4fd0c4a9-d933-47e5-8710-7239ca12b407",
            "screen",
            "screen_viewed",
            "user-1",
            "user-1",
            "2026-11-26T02:54:24.025Z",
            {"name": "Welcome"},
            {"step": 1},
        ),
        golden(
            "9dcf828d-7286-4de5-8540-0b7c0c201a06",
            "group",
            "group",
            "user-1",
            "user-1",
            "2026-11-26T02:54:24.025Z",
            {"group_id": "group-42"},
        ),
        golden(
            "c6826606-5be7-4498-a8fe-93a182376255",
            "alias",
            "alias",
            "user-1",
            "user-1",
            "2026-11-26T02:54:24.025Z",
            {"previous_id": "anon-previous"},
        ),
        golden(
            "c087da7c-2ead-41fa-9aa9-97c47998b2bf",
            "track",
            "anon_event_module",
            None,
            "anon-7",
            "2024-01-02T03:04:05.678Z",
            {"_source_event_name": "Anon Event module"},
        ),
    ],
    # The page's properties.category is a property like any other.
    "segment-analytics-node/001-defaults_closeAndFlush": [
        golden(
            "node-next-1795661752039-efa4d56f-9347-48b9-a919-085485145833",
            "identify",
            "identify",
            "user-1",
            "user-1",
            "2026-11-26T02:55:52.039Z",
            {"plan": "pro"},
        ),
        golden(
            "node-next-1795661752040-d56f9347-88b9-4919-8854-85145833b1e3",
            "track",
            "order_completed",
            "user-1",
            "user-1",
            "2026-11-26T02:55:52.040Z",
            ORDER_DIMS,
            ORDER_MEASURES,
        ),
        golden(
            "node-next-1795661752040-934788b9-6919-4854-8514-5833b1e368f1",
            "page",
            "page_viewed",
            "user-1",
            "user-1",
            "2026-11-26T02:55:52.040Z",
            {"url": DOCS_URL, "category": "Docs", "name": "Getting Started"},
        ),
        golden(
            "node-next-1795661752040-88b96919-0854-4514-9833-b1e368f18c0d",
            "screen",
            "screen_viewed",
            "user-1",
            "user-1",
            "2026-11-26T02:55:52.040Z",
            {"name": "Welcome"},
            {"step": 1},
        ),
        golden(
            "node-next-1795661752040-69190854-8514-4833-b1e3-68f18c0da32f",
            "group",
            "group",
            "user-1",
            "user-1",
            "2026-11-26T02:55:52.040Z",
            {"group_id": "group-42"},
        ),
        golden(
            "node-next-1795661752041-08548514-5833-41e3-a8f1-8c0da32fa036",
            "alias",
            "alias",
            "user-1",
            "user-1",
            "2026-11-26T02:55:52.041Z",
            {"previous_id": "anon-previous"},
        ),
        golden(
            "node-next-1795661752045-85145833-b1e3-48f1-8c0d-a32fa036ba5b",
            "track",
            "anon_event_defaults",
            None,
            "anon-7",
            "2024-01-02T03:04:05.678Z",
            {"_source_event_name": "Anon Event defaults"},
        ),
    ],
    # gzip + application/x-www-form-urlencoded. No item timestamp: occurred_at is
    # received_at - (sentAt - originalTimestamp); here sentAt == originalTimestamp.
    "rudder-sdk-node/001-defaults": [
        golden(
            "30359021-60a1-4661-8f11-c45c77dde9b5",
            "identify",
            "identify",
            "user-1",
            "user-1",
            ReceivedMinus(0),
            {"plan": "pro"},
        ),
    ],
    # Same, 304 ms between originalTimestamp and sentAt; the anonymous track has a timestamp.
    "rudder-sdk-node/002-defaults": [
        golden(
            "6a0ce975-66f6-44c3-a080-238027d90778",
            "track",
            "order_completed",
            "user-1",
            "user-1",
            SKEW_304,
            ORDER_DIMS,
            ORDER_MEASURES,
        ),
        golden(
            "22785c8f-8b52-4fe0-907d-2e1ff1cfc7a6",
            "page",
            "page_viewed",
            "user-1",
            "user-1",
            SKEW_304,
            {"url": DOCS_URL, "name": "Getting Started"},
        ),
        golden(
            "92327306-4512-420d-b2ce-2136e87fbee5",
            "screen",
            "screen_viewed",
            "user-1",
            "user-1",
            SKEW_304,
            {"name": "Welcome"},
            {"step": 1},
        ),
        golden(
            "4c32cef1-feaf-4a25-ba59-4e7db697df29",
            "group",
            "group",
            "user-1",
            "user-1",
            SKEW_304,
            {"group_id": "group-42"},
        ),
        golden(
            "457c0112-9e7e-4419-9f09-dcbe5545aa0c",
            "alias",
            "alias",
            "user-1",
            "user-1",
            SKEW_304,
            {"previous_id": "anon-previous"},
        ),
        golden(
            "0884d5a0-1c9e-41c9-a72f-b2b20534036d",
            "track",
            "anon_event_defaults",
            None,
            "anon-7",
            "2024-01-02T03:04:05.678Z",
            {"_source_event_name": "Anon Event defaults"},
        ),
    ],
    # Jitsu: X-Write-Key decides (the body's "wkid123:***" is masked); /api/s/{type} names the type.
    "jitsu-js-node/001-default_api_s": [
        golden(
            "8myn5or0hu1kydkomr6z5",
            "identify",
            "identify",
            "user-1",
            JITSU_ANON,
            "2026-11-26T02:57:29.523Z",
            {"plan": "pro"},
        ),
    ],
    "jitsu-js-node/002-default_api_s": [
        golden(
            "1ius0xalrlz2p6oo2y7pf",
            "track",
            "order_completed",
            "user-1",
            JITSU_ANON,
            "2026-11-26T02:57:29.531Z",
            ORDER_DIMS,
            ORDER_MEASURES,
        ),
    ],
    "jitsu-js-node/003-default_api_s": [  # a page with no name: no dims.name
        golden(
            "23ll7w6kmgo15ltaxye2pj", "page", "page_viewed", "user-1", JITSU_ANON, "2026-11-26T02:57:29.574Z"
        ),
    ],
    "jitsu-js-node/004-default_api_s": [
        golden(
            "xtovm2nde4iyf6zu750f",
            "group",
            "group",
            "user-1",
            JITSU_ANON,
            "2026-11-26T02:57:29.579Z",
            {"group_id": "group-42"},
        ),
    ],
    "jitsu-js-node/012-legacy_key": [  # X-Write-Key without a secret part, body key "***"
        golden(
            "2a2mkf6alp7e2lf60a7di",
            "track",
            "legacy_key_event",
            "user-1",
            "eeaf1c1f-0876-4341-a3a1-1ea5b2a81128",
            "2026-11-26T02:57:29.872Z",
            {"_source_event_name": "Legacy key event"},
        ),
    ],
    # analytics-next in a browser: text/plain single events on /v1/{p,i,t,s,g,a}.
    # properties.name is PII-dropped; dims.name comes from the page's own name.
    "segment-analytics-next-browser/002-standard_cdnSettings_apiHost": [
        golden(
            "ajs-next-1795662007024-b46966ac-1927-407e-a888-5ca5072b01eb",
            "page",
            "page_viewed",
            None,
            AJS_ANON,
            "2026-11-26T03:00:07.024Z",
            {**AJS_PAGE_DIMS, "category": "Docs", "name": "Getting Started"},
            {"custom": 1},
        ),
    ],
    "segment-analytics-next-browser/004-standard_cdnSettings_apiHost": [
        golden(
            "ajs-next-1795662007075-ac192720-7e68-485c-a507-2b01ebe3aa7b",
            "identify",
            "identify",
            "user-1",
            AJS_ANON,
            "2026-11-26T03:00:07.075Z",
            {"plan": "pro"},
        ),
    ],
    "segment-analytics-next-browser/006-standard_cdnSettings_apiHost": [
        golden(
            "ajs-next-1795662007096-27207e68-885c-4507-ab01-ebe3aa7b1da2",
            "track",
            "order_completed",
            "user-1",
            AJS_ANON,
            "2026-11-26T03:00:07.096Z",
            ORDER_DIMS,
            ORDER_MEASURES,
        ),
    ],
    "segment-analytics-next-browser/008-standard_cdnSettings_apiHost": [
        golden(
            "ajs-next-1795662007138-7e68885c-a507-4b01-abe3-aa7b1da288a5",
            "screen",
            "screen_viewed",
            "user-1",
            AJS_ANON,
            "2026-11-26T03:00:07.138Z",
            {"name": "Welcome"},
            {"step": 1},
        ),
    ],
    "segment-analytics-next-browser/010-standard_cdnSettings_apiHost": [
        golden(
            "ajs-next-1795662007164-885ca507-2b01-4be3-aa7b-1da288a507e1",
            "group",
            "group",
            "user-1",
            AJS_ANON,
            "2026-11-26T03:00:07.164Z",
            {"group_id": "group-42"},
        ),
    ],
    "segment-analytics-next-browser/012-standard_cdnSettings_apiHost": [
        golden(
            "ajs-next-1795662007194-a5072b01-ebe3-4a7b-9da2-88a507e1c84c",
            "alias",
            "alias",
            "user-1",
            AJS_ANON,
            "2026-11-26T03:00:07.194Z",
            {"previous_id": "anon-previous"},
        ),
    ],
    "segment-analytics-next-browser/018-batching_size3_timeout1000": [  # /v1/b
        golden(
            "ajs-next-1795662008222-f7d3dda7-8928-4ee1-b380-638a62ef8423",
            "page",
            "page_viewed",
            "user-1",
            AJS_ANON_BATCH,
            "2026-11-26T03:00:08.222Z",
            AJS_PAGE_DIMS,
        ),
        golden(
            "ajs-next-1795662008234-a78928ee-e1f3-4063-8a62-ef8423aa8a47",
            "identify",
            "identify",
            "user-1",
            AJS_ANON_BATCH,
            "2026-11-26T03:00:08.234Z",
        ),
        golden(
            "ajs-next-1795662008238-28eee1f3-8063-4a62-af84-23aa8a47ea1d",
            "track",
            "batched_0",
            "user-1",
            AJS_ANON_BATCH,
            "2026-11-26T03:00:08.238Z",
            {"_source_event_name": "Batched 0"},
            {"i": 0},
        ),
    ],
}


# fmt: on


@pytest.mark.parametrize("capture_id", list(GOLDEN_ROWS))
def test_golden_rows(capture_id: str, client: Any, key: str, db_path: Path) -> None:
    capture = BY_ID[capture_id]
    response = send(client, capture, key)
    assert (response.status_code, response.data) == (200, SUCCESS)
    columns = (
        "tenant_id",
        "event_name",
        "event_type",
        "external_id",
        "install_id",
        "occurred_at",
        "received_at",
        "dims",
        "measures",
    )  # the extra columns (library, seq): ignored
    stored = {row["event_id"]: {name: row[name] for name in columns} for row in read_rows(db_path)}
    expected = {row["event_id"]: dict(row) for row in GOLDEN_ROWS[capture_id]}
    assert sorted(stored) == sorted(expected)
    for event_id, row in stored.items():
        want = expected[event_id]
        want.pop("event_id")
        received_ms = ts_ms(row.pop("received_at"))
        assert received_ms is not None
        if isinstance(want["occurred_at"], ReceivedMinus):
            want["occurred_at"] = iso_ms(received_ms - want["occurred_at"].ms)
        assert row == want, event_id
