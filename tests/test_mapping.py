"""docs/mapping.md "Event mapping": one table per row, through the real app into the real SQLite file."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.core.timestamps import parse_ms
from drengr.store import SQLiteStore
from drengr.web import Config, create_app

from .support.app import ENGINES, TENANT, post, read_rows

# The whole contract runs against both stores (tests/conftest.py).
# Every row on both stores and both mappers (the compiled one, and the pure twin for every body).
pytestmark = [
    pytest.mark.parametrize("engine", ENGINES, indirect=True),
    pytest.mark.usefixtures("mapper_twin"),
    pytest.mark.dated,
]

RECEIVED = "2026-11-26T02:50:53.123Z"
RECEIVED_MS = parse_ms(RECEIVED)


@pytest.fixture
def receipt_ms() -> Callable[[], int]:
    """The clock fixed at RECEIVED (the app's and the store's), so occurred_at is predictable."""
    assert RECEIVED_MS is not None
    return lambda: RECEIVED_MS


@pytest.fixture
def client(db_path: Path, store: SQLiteStore, receipt_ms: Callable[[], int]) -> Iterator[Any]:
    app = create_app(Config(db=str(db_path)), store=store, clock_ms=receipt_ms)
    yield app.test_client()
    app.extensions["drengr"].drops.close()  # its last drop counts, before the store closes


def ingest_one(
    client: Any, key: str, db_path: Path, item: dict[str, Any], path: str = "/v1/batch"
) -> list[dict[str, Any]]:
    body = {"batch": [item]} if path.endswith("batch") else item
    response = post(client, path, body, key)
    assert response.status_code == 200, response.data
    assert response.data == b'{"success": true}'
    return read_rows(db_path)


def track(event: Any = "Signed Up", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": "u1", "messageId": "m1", **fields}


# ---------------------------------------------------------------- event → event_name

EVENT_NAMES = [
    pytest.param("signed_up", "signed_up", None, id="already-normal"),
    pytest.param("Order Completed", "order_completed", "Order Completed", id="spaces-and-case"),
    pytest.param("  Hello -- World!! ", "hello_world", "  Hello -- World!! ", id="runs-collapse-and-strip"),
    pytest.param("Café Ordered", "café_ordered", "Café Ordered", id="unicode-letters-kept"),
    pytest.param("ÜBER Größe", "über_größe", "ÜBER Größe", id="unicode-lowercased"),
    pytest.param("日本語 イベント", "日本語_イベント", "日本語 イベント", id="cjk"),
    pytest.param("step_2 (done)", "step_2_done", "step_2 (done)", id="digits-kept"),
    pytest.param("a" * 70, "a" * 64, "a" * 70, id="cut-to-64"),
    pytest.param("a" * 63 + " b", "a" * 63, "a" * 63 + " b", id="cut-then-trailing-underscore-stripped"),
]


@pytest.mark.parametrize("event, name, source", EVENT_NAMES)
def test_track_event_name_is_normalised(client, key, db_path, event, name, source):
    [row] = ingest_one(client, key, db_path, track(event))
    assert row["event_name"] == name
    assert row["event_type"] == "track"
    assert row["dims"].get("_source_event_name") == source


@pytest.mark.parametrize(
    "event",
    [
        pytest.param("!!!", id="only-punctuation"),
        pytest.param("", id="empty"),
        pytest.param(None, id="null"),
        pytest.param(42, id="number"),
        pytest.param({"x": 1}, id="object"),
    ],
)
def test_track_without_usable_event_is_dropped(client, key, db_path, event):
    assert ingest_one(client, key, db_path, track(event)) == []


def test_track_with_no_event_key_is_dropped_but_batch_goes_on(client, key, db_path):
    batch = {"batch": [{"type": "track", "userId": "u1"}, track("Kept", messageId="m2")]}
    assert post(client, "/v1/batch", batch, key).status_code == 200
    assert [row["event_name"] for row in read_rows(db_path)] == ["kept"]


# ---------------------------------------------------------------- type → event_name, reserved dims

TYPE_ROWS = [
    pytest.param(
        {"type": "page", "name": "Home", "properties": {"path": "/"}},
        "page", "page_viewed", {"name": "Home", "path": "/"}, id="page-name",
    ),
    pytest.param(
        {"type": "screen", "name": "Settings"}, "screen", "screen_viewed", {"name": "Settings"}, id="screen-name",
    ),
    pytest.param({"type": "page"}, "page", "page_viewed", {}, id="page-without-name"),
    pytest.param(
        {"type": "page", "properties": {"name": "Pricing", "path": "/p"}},
        "page", "page_viewed", {"name": "Pricing", "path": "/p"}, id="page-name-from-properties",
    ),
    pytest.param(
        {"type": "screen", "name": "Top", "properties": {"name": "Props"}},
        "screen", "screen_viewed", {"name": "Top"}, id="top-level-name-wins",
    ),
    pytest.param(
        {"type": "identify", "traits": {"plan": "pro", "email": "a@b.c"}},
        "identify", "identify", {"plan": "pro"}, id="identify-traits",
    ),
    pytest.param(
        {"type": "group", "groupId": "g-9", "traits": {"industry": "retail"}},
        "group", "group", {"group_id": "g-9", "industry": "retail"}, id="group-groupId",
    ),
    pytest.param(
        {"type": "alias", "previousId": "anon-1"}, "alias", "alias", {"previous_id": "anon-1"}, id="alias-previousId",
    ),
    pytest.param(
        {"type": "group", "groupId": 77}, "group", "group", {"group_id": "77"}, id="numeric-groupId-as-text",
    ),
]  # fmt: skip


@pytest.mark.parametrize("item, event_type, event_name, dims", TYPE_ROWS)
def test_type_sets_event_name_and_reserved_dims(client, key, db_path, item, event_type, event_name, dims):
    [row] = ingest_one(client, key, db_path, {"userId": "u1", "messageId": "m1", **item})
    assert (row["event_type"], row["event_name"], row["dims"], row["measures"]) == (
        event_type, event_name, dims, {},
    )  # fmt: skip


@pytest.mark.parametrize(
    "item, dims",
    [
        pytest.param(
            {"type": "identify", "context": {"traits": {"plan": "pro", "email": "x"}}},
            {"plan": "pro"}, id="context-traits-when-no-top-level",
        ),
        pytest.param(
            {"type": "identify", "traits": {"plan": "top"}, "context": {"traits": {"plan": "ctx"}}},
            {"plan": "top"}, id="top-level-traits-win",
        ),
        pytest.param(
            {"type": "group", "groupId": "g", "context": {"traits": {"seats": "10"}}},
            {"group_id": "g", "seats": "10"}, id="group-context-traits",
        ),
        pytest.param(
            {"type": "track", "event": "x", "traits": {"plan": "pro"}}, {}, id="track-ignores-traits",
        ),
        pytest.param(
            {"type": "identify", "properties": {"plan": "pro"}}, {}, id="identify-ignores-properties",
        ),
    ],
)  # fmt: skip
def test_traits_source(client, key, db_path, item, dims):
    [row] = ingest_one(client, key, db_path, {"userId": "u1", "messageId": "m1", **item})
    assert row["dims"] == dims


# ---------------------------------------------------------------- properties → dims and measures

PROPERTY_ROWS = [
    pytest.param({"plan": "pro", "count": 3}, {"plan": "pro"}, {"count": 3}, id="string-dim-number-measure"),
    pytest.param({"ratio": 0.25, "neg": -7}, {}, {"ratio": 0.25, "neg": -7}, id="floats-and-negatives"),
    pytest.param({"ok": True, "bad": False}, {"ok": "true", "bad": "false"}, {}, id="booleans-as-text"),
    pytest.param({"gone": None, "kept": "x"}, {"kept": "x"}, {}, id="nulls-omitted"),
    pytest.param({"a": {"b": 1, "c": "two"}}, {"a.c": "two"}, {"a.b": 1}, id="flattened-one-level"),
    pytest.param({"a": {"b": {"c": 1}}}, {"a.b": '{"c":1}'}, {}, id="deeper-as-json-text"),
    pytest.param({"tags": ["x", 2, None]}, {"tags": '["x",2,null]'}, {}, id="array-as-json-text"),
    pytest.param({"a": {}}, {}, {}, id="empty-object-adds-nothing"),
    pytest.param({"k" * 70: "v"}, {"k" * 64: "v"}, {}, id="key-cut-to-64"),
    pytest.param({"v": "é" * 300}, {"v": "é" * 256}, {}, id="value-cut-to-256-characters"),
    pytest.param({"q": 'say "hi"\n'}, {"q": 'say "hi"\n'}, {}, id="escapes-round-trip"),
    pytest.param({"n": 123456789012345678901234567890}, {"n": "123456789012345678901234567890"}, {},
                 id="integer-beyond-64-bits-is-literal-dim"),
    pytest.param({"big": 18446744073709551615}, {}, {"big": 18446744073709551615}, id="uint64-max-is-measure"),
]  # fmt: skip


@pytest.mark.parametrize("properties, dims, measures", PROPERTY_ROWS)
def test_properties_become_dims_and_measures(client, key, db_path, properties, dims, measures):
    [row] = ingest_one(client, key, db_path, track("signed_up", properties=properties))
    assert row["dims"] == dims
    assert row["measures"] == measures


def test_huge_exponent_is_stored_as_literal_text(client, key, db_path):
    body = b'{"type":"track","event":"e","userId":"u","messageId":"m","properties":{"x":1e400,"y":2}}'
    assert post(client, "/v1/track", body, key).status_code == 200
    [row] = read_rows(db_path)
    assert row["dims"] == {"x": "1e400"}
    assert row["measures"] == {"y": 2}


def in_order(keys: Any, engine: str) -> list[str]:
    """Key order as stored: PostgreSQL's jsonb keeps none (documented), so compare sorted there."""
    return list(keys) if engine == "sqlite" else sorted(keys)


def test_measures_keep_priority_keys_first_then_input_order_up_to_20(client, key, db_path, engine):
    properties = {f"m{i:02d}": i for i in range(25)}
    properties.update({"quantity": 2, "tax": 1.5, "revenue": 10, "price": 5, "total": 20})
    [row] = ingest_one(client, key, db_path, track("x", properties=properties))
    expected = ["revenue", "total", "price", "quantity"] + [f"m{i:02d}" for i in range(16)]
    assert in_order(row["measures"], engine) == in_order(expected, engine)


def test_dims_capped_at_40_reserved_not_counted(client, key, db_path, engine):
    properties = {f"d{i:02d}": "v" for i in range(45)}
    item = {"type": "page", "name": "Home", "userId": "u", "messageId": "m", "properties": properties,
            "context": {"os": {"name": "iOS"}, "app": {"version": "1"}, "device": {"model": "X"}}}  # fmt: skip
    [row] = ingest_one(client, key, db_path, item)
    expected = ["name", "app_version", "os", "device_model"] + [f"d{i:02d}" for i in range(40)]
    assert in_order(row["dims"], engine) == in_order(expected, engine)


def test_reserved_dims_win_over_same_named_properties(client, key, db_path):
    item = track("x", properties={"os": "from-properties", "app_version": "p", "device_model": "p"},
                 context={"os": {"name": "Android", "version": "14"}, "app": {"version": "2.0"}})  # fmt: skip
    [row] = ingest_one(client, key, db_path, item)
    assert row["dims"] == {"app_version": "2.0", "os": "Android 14", "device_model": "p"}


# ---------------------------------------------------------------- PII keys

PII_ROWS = [
    pytest.param({"email": "a@b.c", "plan": "pro"}, {"plan": "pro"}, {}, id="email"),
    pytest.param({"userEmail": "x", "PHONE_number": "1", "Full Name": "x", "home_address": "x"}, {}, {},
                 id="substring-any-case"),
    pytest.param({"password": "x", "apiToken": "x", "ssn": "x", "card_last4": 1234, "CVV": 1}, {}, {},
                 id="numbers-too"),
    pytest.param({"user": {"name": "x", "tier": "gold"}}, {"user.tier": "gold"}, {}, id="nested-key"),
    pytest.param({"contact": {"email": "x"}}, {}, {}, id="parent-emptied"),
    pytest.param({"a": {"b": [{"password": "x", "keep": 1}]}}, {"a.b": '[{"keep":1}]'}, {},
                 id="inside-json-text"),
    pytest.param({"cardinal": "bird"}, {}, {}, id="substring-match-is-blunt"),
]  # fmt: skip


@pytest.mark.parametrize("properties, dims, measures", PII_ROWS)
def test_pii_keys_dropped_at_every_depth(client, key, db_path, properties, dims, measures):
    [row] = ingest_one(client, key, db_path, track("signed_up", properties=properties))
    assert (row["dims"], row["measures"]) == (dims, measures)
    stored = json.dumps(read_rows(db_path))
    for secret in ("a@b.c", "password", "apiToken"):
        assert secret not in stored


def test_pii_list_is_configurable(db_path, store, key):
    app = create_app(Config(db=str(db_path), pii_substrings=("secret",)), store=store)
    properties = {"email": "kept@example.com", "my_secret": "x"}
    response = post(app.test_client(), "/v1/track", track("e", properties=properties), key)
    app.extensions["drengr"].drops.close()
    assert response.status_code == 200
    assert read_rows(db_path)[0]["dims"] == {"email": "kept@example.com"}


# ---------------------------------------------------------------- ids

ID_ROWS = [
    pytest.param({"userId": "u1", "anonymousId": "a1"}, "u1", "a1", id="both"),
    pytest.param({"userId": "u1"}, "u1", "u1", id="install-falls-back-to-user"),
    pytest.param({"anonymousId": "a1"}, None, "a1", id="anonymous-only"),
    pytest.param({"userId": 42, "anonymousId": "a1"}, "42", "a1", id="numeric-user-id-as-text"),
    pytest.param({"userId": None, "anonymousId": "a1"}, None, "a1", id="null-user-is-absent"),
    pytest.param({"userId": "", "anonymousId": "a1"}, None, "a1", id="empty-user-is-absent"),
    pytest.param({"userId": "u1", "anonymousId": ""}, "u1", "u1", id="empty-anonymous-falls-back"),
    pytest.param({"userId": "u1", "anonymousId": None}, "u1", "u1", id="null-anonymous-falls-back"),
]


@pytest.mark.parametrize("ids, external_id, install_id", ID_ROWS)
def test_user_and_anonymous_ids(client, key, db_path, ids, external_id, install_id):
    item = {"type": "track", "event": "e", "messageId": "m", **ids}
    [row] = ingest_one(client, key, db_path, item)
    assert (row["external_id"], row["install_id"]) == (external_id, install_id)


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param({}, id="both-missing"),
        pytest.param({"userId": None, "anonymousId": None}, id="both-null"),
        pytest.param({"userId": "", "anonymousId": ""}, id="both-empty"),
        pytest.param({"userId": {"id": 1}}, id="object-is-not-an-id"),
    ],
)
def test_item_without_ids_is_dropped_rest_of_batch_succeeds(client, key, db_path, ids):
    batch = {
        "batch": [
            {"type": "track", "event": "dropped", "messageId": "m1", **ids},
            track("kept", messageId="m2"),
        ]
    }
    response = post(client, "/v1/batch", batch, key)
    assert (response.status_code, response.data) == (200, b'{"success": true}')
    assert [row["event_name"] for row in read_rows(db_path)] == ["kept"]


# ---------------------------------------------------------------- context

CONTEXT_ROWS = [
    pytest.param({"app": {"version": "3.2.1", "name": "x"}}, {"app_version": "3.2.1"}, id="app-version"),
    pytest.param({"os": {"name": "iOS", "version": "17.4"}}, {"os": "iOS 17.4"}, id="os-name-and-version"),
    pytest.param({"os": {"name": "Android"}}, {"os": "Android"}, id="os-name-only"),
    pytest.param({"os": {"version": "17.4"}}, {"os": "17.4"}, id="os-version-only"),
    pytest.param({"os": {"name": "", "version": ""}}, {}, id="os-empty-is-absent"),
    pytest.param({"os": {"name": "", "version": "17.4"}}, {"os": "17.4"}, id="os-empty-name"),
    pytest.param({"os": {"name": "iOS", "version": ""}}, {"os": "iOS"}, id="os-empty-version"),
    pytest.param({"device": {"model": "iPhone15,2"}}, {"device_model": "iPhone15,2"}, id="device-model"),
    pytest.param({"app": {"version": 3}}, {"app_version": "3"}, id="numeric-version-as-text"),
    pytest.param({"app": "not-an-object", "os": None}, {}, id="malformed-context-ignored"),
]


@pytest.mark.parametrize("context, dims", CONTEXT_ROWS)
def test_context_dims(client, key, db_path, context, dims):
    [row] = ingest_one(client, key, db_path, track("signed_up", context=context))
    assert row["dims"] == dims


# ---------------------------------------------------------------- timestamps

TIMESTAMP_ROWS = [
    pytest.param({"timestamp": "2026-11-25T10:00:00.000Z"}, None, "2026-11-25T10:00:00.000Z", id="item-timestamp"),
    pytest.param({"timestamp": "2026-11-25T10:00:00+02:00"}, None, "2026-11-25T08:00:00.000Z", id="offset-to-utc"),
    pytest.param({"timestamp": "2026-11-25T10:00:00-05:30"}, None, "2026-11-25T15:30:00.000Z", id="negative-offset"),
    pytest.param({"timestamp": "2026-11-25T10:00:00.123456789Z"}, None, "2026-11-25T10:00:00.123Z", id="nine-digits"),
    pytest.param({"timestamp": "2026-11-25T10:00:00.5Z"}, None, "2026-11-25T10:00:00.500Z", id="one-digit"),
    pytest.param({"timestamp": "2026-11-25T10:00:00Z", "originalTimestamp": "2026-11-20T00:00:00Z",
                  "sentAt": "2026-11-20T00:00:01Z"}, None, "2026-11-25T10:00:00.000Z", id="timestamp-wins"),
    pytest.param({"originalTimestamp": "2030-01-01T00:00:00.000Z", "sentAt": "2030-01-01T00:00:05.000Z"},
                 None, "2026-11-26T02:50:48.123Z", id="skew-corrected-item-sentAt"),
    pytest.param({"originalTimestamp": "2030-01-01T00:00:00.000Z"}, "2030-01-01T00:01:00.000Z",
                 "2026-11-26T02:49:53.123Z", id="skew-corrected-batch-sentAt"),
    pytest.param({"originalTimestamp": "2026-11-26T01:00:00.000Z"}, None, "2026-11-26T01:00:00.000Z",
                 id="original-without-sentAt"),
    pytest.param({}, None, RECEIVED, id="nothing-means-received"),
    pytest.param({"timestamp": "yesterday"}, None, RECEIVED, id="unparseable-is-absent"),
    pytest.param({"timestamp": "2026-02-30T00:00:00Z"}, None, RECEIVED, id="impossible-date-is-absent"),
    pytest.param({"timestamp": "2026-11-25T10:00:00.Z"}, None, RECEIVED, id="dot-without-digits"),
    pytest.param({"timestamp": 1764100000000}, None, RECEIVED, id="number-is-not-a-timestamp"),
    pytest.param({"timestamp": "1999-12-31T23:59:59Z"}, None, "2000-01-01T00:00:00.000Z", id="clamped-low"),
    pytest.param({"timestamp": "2027-01-01T00:00:00Z"}, None, "2026-11-27T02:50:53.123Z", id="clamped-high"),
    pytest.param({"timestamp": "2026-11-27T02:50:53.123Z"}, None, "2026-11-27T02:50:53.123Z",
                 id="exactly-one-day-ahead"),
]  # fmt: skip


@pytest.mark.parametrize("fields, batch_sent_at, occurred_at", TIMESTAMP_ROWS)
def test_occurred_at(client, key, db_path, fields, batch_sent_at, occurred_at):
    body: dict[str, Any] = {"batch": [track("e", **fields)]}
    if batch_sent_at:
        body["sentAt"] = batch_sent_at
    assert post(client, "/v1/batch", body, key).status_code == 200
    [row] = read_rows(db_path)
    assert row["occurred_at"] == occurred_at
    assert row["received_at"] == RECEIVED


# ---------------------------------------------------------------- messageId → event_id, dedup


def test_message_id_is_event_id(client, key, db_path):
    [row] = ingest_one(client, key, db_path, track("e", messageId="ajs-next-abc"))
    assert row["event_id"] == "ajs-next-abc"


def test_missing_message_id_hashes_stably(client, key, db_path):
    item = {"type": "track", "event": "Clicked", "userId": "u1", "timestamp": "2026-11-25T10:00:00Z"}
    for _ in range(2):
        assert post(client, "/v1/batch", {"batch": [item]}, key).status_code == 200
    other = {**item, "timestamp": "2026-11-25T10:00:01Z"}
    assert post(client, "/v1/batch", {"batch": [other]}, key).status_code == 200
    rows = read_rows(db_path)
    assert len(rows) == 2  # the repeat was the same event
    assert rows[0]["event_id"] != rows[1]["event_id"]
    assert all(len(row["event_id"]) == 32 for row in rows)


def test_repeated_event_id_stored_once_per_tenant(client, key, store, db_path):
    other_key = store.create_key("globex", "publishable")
    item = track("e", messageId="same")
    assert post(client, "/v1/batch", {"batch": [item, item]}, key).status_code == 200
    assert post(client, "/v1/track", item, key).status_code == 200
    assert post(client, "/v1/track", item, other_key).status_code == 200
    assert sorted((row["tenant_id"], row["event_id"]) for row in read_rows(db_path)) == [
        ("acme", "same"), ("globex", "same"),
    ]  # fmt: skip


# ---------------------------------------------------------------- ecommerce coercion

ECOMMERCE_ROWS = [
    pytest.param("Order Completed", {"revenue": "9.99", "currency": "USD"}, {"currency": "USD"},
                 {"revenue": 9.99}, id="string-revenue"),
    pytest.param("Product Added", {"price": "19", "quantity": "2"}, {}, {"price": 19, "quantity": 2},
                 id="string-integers"),
    pytest.param("order completed", {"tax": "1.5e1", "shipping": "0", "discount": "-2.50"}, {},
                 {"tax": 15.0, "shipping": 0, "discount": -2.5}, id="matched-after-normalisation"),
    pytest.param("Checkout Step Completed", {"total": "n/a"}, {"total": "n/a"}, {}, id="non-number-stays-dim"),
    pytest.param("Order Completed", {"revenue": "NaN", "total": " 12 "}, {"revenue": "NaN"}, {"total": 12},
                 id="nan-is-not-a-number"),
    pytest.param("Order Completed", {"coupon": "10"}, {"coupon": "10"}, {}, id="other-keys-untouched"),
    pytest.param("Signed Up", {"revenue": "9.99"}, {"revenue": "9.99"}, {}, id="not-an-ecommerce-event"),
    pytest.param("Product Reviewed", {"price": True}, {"price": "true"}, {}, id="boolean-stays-dim"),
]  # fmt: skip


@pytest.mark.parametrize("event, properties, dims, measures", ECOMMERCE_ROWS)
def test_ecommerce_fields_coerced(client, key, db_path, event, properties, dims, measures):
    [row] = ingest_one(client, key, db_path, track(event, properties=properties))
    dims = {**dims, "_source_event_name": event} if row["event_name"] != event else dims
    assert (row["dims"], row["measures"]) == (dims, measures)


# ---------------------------------------------------------------- the row itself


def test_row_matches_spec_example(client, key, db_path):
    """docs/mapping.md "An example" (without its email), field by field."""
    body = {
        "type": "track", "event": "Order Completed", "userId": "user_123",
        "properties": {"revenue": 42.50, "currency": "USD"},
        "context": {"app": {"name": "com.example.myapp", "version": "3.2.1"}, "os": {"name": "iOS", "version": "17.4"}},
    }  # fmt: skip
    [row] = ingest_one(client, key, db_path, body, path="/v1/track")
    assert {k: v for k, v in row.items() if k != "event_id"} == {
        "tenant_id": TENANT, "event_name": "order_completed", "event_type": "track",
        "external_id": "user_123", "install_id": "user_123",
        "occurred_at": RECEIVED, "received_at": RECEIVED,
        "dims": {"_source_event_name": "Order Completed", "app_version": "3.2.1", "os": "iOS 17.4", "currency": "USD"},
        "measures": {"revenue": 42.5}, "library": None,
    }  # fmt: skip
