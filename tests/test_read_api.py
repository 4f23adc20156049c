"""The read API (GET /v1/events, /v1/stats, /v1/drops): every filter, pagination, auth, drops, OpenAPI.

Runs against both stores (SQLite and PostgreSQL, ``ENGINES``). The time of
receipt is a fixed clock the test moves, so ``received_at`` is known exactly;
``occurred_at`` comes from each event's ``timestamp``. The OpenAPI file is
checked by schemathesis against the app (SQLite), with real rows and drops in it.
"""

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from drengr.core.errors import UNAUTHORIZED_BODY
from drengr.core.machine import Response
from drengr.core.timestamps import parse_ms
from drengr.drops import DropLog
from drengr.store import SQLiteStore, open_store
from drengr.web import Config, create_app

from .support.app import ENGINES, basic, post
from .support.read_wiring import wire

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every test that reads rows runs on both stores (overrides conftest's SQLite-only default)."""
    return str(request.param)


OPENAPI = Path(__file__).resolve().parents[1] / "src" / "drengr" / "openapi.yaml"
T0 = parse_ms("2026-11-26T10:00:00.000Z") or 0
MINUTE = 60_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# The rows, each received one minute after the last (the clock moves); occurred_at out of order on purpose.
#   id   received  occurred  type      event              userId  anonymousId  measures
SEED = [
    ("e1", 0, "2026-11-26T09:00:00.000Z", "track", "Order Completed", "u1", "a1", {"revenue": 10, "quantity": 1}),
    ("e2", 1, "2026-11-26T09:30:00.000Z", "track", "Order Completed", "u2", "a2", {"revenue": 5.5}),
    ("e3", 2, "2026-11-26T08:00:00.000Z", "page", "Pricing", "u1", "a1", {}),
    ("e4", 3, None, "identify", None, None, "a3", {"logins": 3}),
]  # fmt: skip
OTHER_TENANT = ("x1", 1, "2026-11-26T09:00:00.000Z", "track", "Secret Thing", "u1", "a1", {"revenue": 1000})


def item(seed: tuple[Any, ...]) -> dict[str, Any]:
    message_id, _, timestamp, event_type, name, user_id, anonymous_id, measures = seed
    body: dict[str, Any] = {"type": event_type, "messageId": message_id, "anonymousId": anonymous_id}
    if event_type == "track":  # the sending SDK, as analytics-python puts it
        body["context"] = {"library": {"name": "analytics-python", "version": "2.4.0"}}
    if timestamp:
        body["timestamp"] = timestamp
    if user_id:
        body["userId"] = user_id
    if event_type == "track":
        body["event"] = name
        body["properties"] = {**measures, "currency": "USD"}
    elif event_type == "page":
        body["name"] = name
    else:
        body["traits"] = {**measures, "email": "ada@example.com"}
    return body


@pytest.fixture
def receipt_ms() -> Clock:
    """The app's and the store's clock, moved by the tests."""
    return Clock(T0)


@pytest.fixture
def api(
    db_path: Any,
    store: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    receipt_ms: Clock,
) -> Any:
    """The app with the read API wired, four rows of tenant acme and one of tenant other; clock at 10:10."""
    clock = receipt_ms
    app = create_app(Config(db=str(db_path)), store=store, clock_ms=clock)
    request.addfinalizer(app.extensions["drengr"].drops.close)
    drops = wire(app, store, monkeypatch, clock_ms=clock)
    client = app.test_client()
    pk, sk = store.create_key("acme", "publishable"), store.create_key("acme", "secret")
    other_pk, other_sk = store.create_key("other", "publishable"), store.create_key("other", "secret")
    for seed in SEED:
        clock.ms = T0 + seed[1] * MINUTE
        assert post(client, f"/v1/{seed[3]}", item(seed), pk).status_code == 200
        if seed[0] == "e2":
            assert post(client, "/v1/track", item(OTHER_TENANT), other_pk).status_code == 200
    clock.ms = T0 + 10 * MINUTE

    class Api:
        pass

    api = Api()
    api.app, api.client, api.clock, api.drops, api.store = app, client, clock, drops, store  # type: ignore[attr-defined]
    api.pk, api.sk, api.other_pk, api.other_sk = pk, sk, other_pk, other_sk  # type: ignore[attr-defined]
    return api


def get(api: Any, path: str, key: str | None = None, **params: Any) -> Any:
    return api.client.get(path, query_string=params, headers=bearer(key or api.sk))


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.data
    return [event["event_id"] for event in response.get_json()["events"]]


# ------------------------------------------------------------------ filters

FILTERS = [
    ("none", {}, ["e4", "e3", "e2", "e1"]),
    ("since", {"since": "2026-11-26T10:01:00Z"}, ["e4", "e3", "e2"]),
    ("since-offset", {"since": "2026-11-26T11:01:00+01:00"}, ["e4", "e3", "e2"]),
    ("since-date", {"since": "2026-11-26"}, ["e4", "e3", "e2", "e1"]),
    ("since-next-date", {"since": "2026-11-27"}, []),
    ("since-duration", {"since": "8m"}, ["e4", "e3"]),  # clock 10:10 → 10:02
    ("until-exclusive", {"until": "2026-11-26T10:02:00.000Z"}, ["e2", "e1"]),
    ("since-until", {"since": "2026-11-26T10:01:00Z", "until": "2026-11-26T10:03:00Z"}, ["e3", "e2"]),
    ("occurred-since", {"time_field": "occurred_at", "since": "2026-11-26T09:00:00Z"}, ["e4", "e2", "e1"]),
    ("occurred-until", {"time_field": "occurred_at", "until": "2026-11-26T09:00:00Z"}, ["e3"]),
    ("received-explicit", {"time_field": "received_at", "until": "2026-11-26T10:01:00Z"}, ["e1"]),
    ("event_name", {"event_name": "order_completed"}, ["e2", "e1"]),
    ("event_name-raw-is-not-stored-name", {"event_name": "Order Completed"}, []),
    ("event_type", {"event_type": "page"}, ["e3"]),
    ("external_id", {"external_id": "u1"}, ["e3", "e1"]),
    ("install_id", {"install_id": "a3"}, ["e4"]),
    ("combined", {"external_id": "u1", "event_name": "page_viewed"}, ["e3"]),
    ("order-asc", {"order": "asc"}, ["e1", "e2", "e3", "e4"]),
    ("limit", {"limit": "2"}, ["e4", "e3"]),
    ("other-tenant-name", {"event_name": "secret_thing"}, []),
    # Past year 9999 by its offset: the end of time, not a text that sorts before every stored one.
    ("since-past-year-9999", {"since": "9999-12-31T23:00:00-05:00"}, []),
    ("until-past-year-9999", {"until": "9999-12-31T23:00:00-05:00"}, ["e4", "e3", "e2", "e1"]),
    ("since-before-year-0", {"since": "0000-01-01T00:00:00+01:00"}, ["e4", "e3", "e2", "e1"]),
]


@pytest.mark.parametrize(("params", "expected"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
def test_event_filters(api: Any, params: dict[str, str], expected: list[str]) -> None:
    assert ids(get(api, "/v1/events", **params)) == expected


def test_event_shape_is_the_stored_row(api: Any) -> None:
    event = get(api, "/v1/events", event_name="order_completed", limit="1").get_json()["events"][0]
    assert event == {
        "seq": event["seq"],
        "event_id": "e2",
        "event_name": "order_completed",
        "event_type": "track",
        "external_id": "u2",
        "install_id": "a2",
        "occurred_at": "2026-11-26T09:30:00.000Z",
        "received_at": "2026-11-26T10:01:00.000Z",
        "dims": {"_source_event_name": "Order Completed", "currency": "USD"},
        "measures": {"revenue": 5.5},
        "library": "analytics-python 2.4.0",
    }
    identify = get(api, "/v1/events", install_id="a3").get_json()["events"][0]
    assert identify["external_id"] is None and identify["library"] is None
    assert "ada@example.com" not in json.dumps(identify)


def test_other_tenant_sees_only_its_own(api: Any) -> None:
    assert ids(get(api, "/v1/events", api.other_sk)) == ["x1"]
    assert ids(get(api, "/v1/events", api.other_sk, external_id="u1")) == ["x1"]


def test_desc_pagination_by_cursor(api: Any) -> None:
    first = get(api, "/v1/events", limit="3").get_json()
    assert [e["event_id"] for e in first["events"]] == ["e4", "e3", "e2"]
    second = get(api, "/v1/events", limit="3", cursor=first["next_cursor"]).get_json()
    assert [e["event_id"] for e in second["events"]] == ["e1"]
    assert second["next_cursor"] is None  # a short page: nothing older


def test_asc_follow_from_latest_cursor(api: Any) -> None:
    """What the debugger and `drengr tail` do: start at latest_cursor, then only new rows, never a repeat."""
    cursor = get(api, "/v1/events", limit="1").get_json()["latest_cursor"]
    empty = get(api, "/v1/events", order="asc", cursor=cursor).get_json()
    assert empty["events"] == [] and empty["next_cursor"] == cursor
    post(api.client, "/v1/track", {"type": "track", "event": "New One", "userId": "u9"}, api.pk)
    post(api.client, "/v1/track", {"type": "track", "event": "Not Mine", "userId": "u9"}, api.other_pk)
    page = get(api, "/v1/events", order="asc", cursor=cursor).get_json()
    assert [e["event_name"] for e in page["events"]] == ["new_one"]
    if isinstance(api.store, SQLiteStore):
        # The other tenant's newer row moved the cursor past it: the next poll does not scan it again.
        assert int(page["next_cursor"]) == int(page["latest_cursor"]) > page["events"][0]["seq"]
    else:  # PostgreSQL reads the tenant's own index range: its cursor is its own newest row
        assert int(page["next_cursor"]) == int(page["latest_cursor"]) == page["events"][0]["seq"]
    assert get(api, "/v1/events", order="asc", cursor=page["next_cursor"]).get_json()["events"] == []


def test_asc_pages_are_full_then_follow(api: Any) -> None:
    first = get(api, "/v1/events", order="asc", limit="2").get_json()
    second = get(api, "/v1/events", order="asc", limit="2", cursor=first["next_cursor"]).get_json()
    third = get(api, "/v1/events", order="asc", limit="2", cursor=second["next_cursor"]).get_json()
    assert [e["event_id"] for e in first["events"] + second["events"]] == ["e1", "e2", "e3", "e4"]
    assert third["events"] == [] and third["next_cursor"] is not None


INVALID = [
    ("unknown-parameter", "/v1/events", {"evnt_name": "x"}, "Unknown parameter 'evnt_name'"),
    ("limit-zero", "/v1/events", {"limit": "0"}, "limit must be a whole number from 1 to 1000"),
    ("limit-over-max", "/v1/events", {"limit": "1001"}, "limit must be a whole number from 1 to 1000"),
    ("limit-text", "/v1/events", {"limit": "ten"}, "limit must be"),
    ("cursor-text", "/v1/events", {"cursor": "abc"}, "cursor must be"),
    ("since-text", "/v1/events", {"since": "yesterday"}, "since='yesterday' is not a time"),
    ("until-bad-date", "/v1/events", {"until": "2026-02-30"}, "is not a time"),
    ("order", "/v1/events", {"order": "up"}, "order must be one of asc, desc"),
    ("time_field", "/v1/events", {"time_field": "sent_at"}, "time_field must be one of"),
    ("twice", "/v1/events", {"event_name": ["a", "b"]}, "event_name was given 2 times"),
    ("measure-quote", "/v1/stats", {"measure": 'a"b'}, "is not a measure name"),
    ("interval", "/v1/stats", {"interval": "week"}, "interval must be one of"),
    ("too-many-buckets", "/v1/stats", {"since": "2000-01-01", "interval": "minute"}, "buckets"),
    ("drops-limit", "/v1/drops", {"limit": "101"}, "limit must be a whole number from 0 to 100"),
]


@pytest.mark.parametrize(("path", "params", "message"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_invalid_query_is_a_400_sentence(api: Any, path: str, params: dict[str, Any], message: str) -> None:
    response = get(api, path, **params)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "Invalid query" and body["code"] == "invalid_query"
    assert message in body["message"]


# ------------------------------------------------------------------ stats


def test_stats_counts_and_sums(api: Any) -> None:
    body = get(api, "/v1/stats", since="2026-11-26", measure=["revenue", "quantity", "missing"]).get_json()
    assert body["total"] == 4
    assert body["by_event"] == [
        {"event_name": "order_completed", "count": 2, "sums": {"revenue": 15.5, "quantity": 1, "missing": 0}},
        {"event_name": "identify", "count": 1, "sums": {"revenue": 0, "quantity": 0, "missing": 0}},
        {"event_name": "page_viewed", "count": 1, "sums": {"revenue": 0, "quantity": 0, "missing": 0}},
    ]
    assert body["sums"] == {"revenue": 15.5, "quantity": 1, "missing": 0}  # not the other tenant's 1000
    assert body["since"] == "2026-11-26T00:00:00.000Z" and body["until"] is None


def test_a_sum_past_the_largest_double_reads_as_null_in_valid_json(api: Any) -> None:
    """Two revenues of 1e308: their sum is infinite, which JSON cannot say; the answer stays valid
    JSON (Python's parser would take `Infinity`, a strict one would not), the sum null."""
    for n in range(2):
        event = {"type": "track", "messageId": f"huge-{n}", "anonymousId": "a9", "event": "Whale"}
        event["properties"] = {"revenue": 1e308}
        assert post(api.client, "/v1/track", event, api.pk).status_code == 200
    response = get(api, "/v1/stats", since="2026-11-26", measure="revenue", event_name="whale")
    assert response.status_code == 200
    body = json.loads(response.data, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert body["total"] == 2 and body["sums"] == {"revenue": None}


STATS_WINDOWS = [
    ("default-24h", {}, 4),
    ("since", {"since": "2026-11-26T10:01:00Z"}, 3),
    ("until", {"until": "2026-11-26T10:01:00Z"}, 1),
    ("occurred", {"time_field": "occurred_at", "since": "2026-11-26T09:00:00Z", "until": "2026-11-26T10:00:00Z"}, 2),
    ("event_name", {"event_name": "order_completed"}, 2),
    ("duration", {"since": "9m"}, 3),
]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "total"), [w[1:] for w in STATS_WINDOWS], ids=[w[0] for w in STATS_WINDOWS]
)
def test_stats_interval(api: Any, params: dict[str, str], total: int) -> None:
    assert get(api, "/v1/stats", **params).get_json()["total"] == total


def test_stats_times_at_the_ends_of_the_range(api: Any) -> None:
    """1970-01-01 is a time like any other (not "now"), and a since past year 9999 is answered in
    the OpenAPI's time format."""
    epoch = get(api, "/v1/stats", since="1969-12-31T00:00:00Z", until="1970-01-01T00:00:00Z", interval="hour")
    assert epoch.status_code == 200, epoch.data
    assert epoch.get_json()["total"] == 0 and len(epoch.get_json()["series"]) == 0
    late = get(api, "/v1/stats", since="9999-12-31T23:00:00-05:00", interval="day")
    assert late.status_code == 200, late.data
    assert late.get_json()["since"] == "9999-12-31T23:59:59.999Z" and late.get_json()["total"] == 0


def test_stats_series_per_minute_and_hour(api: Any) -> None:
    body = get(api, "/v1/stats", since="30m", interval="minute").get_json()
    assert body["series"] == [
        {"bucket": "2026-11-26T10:00:00.000Z", "event_name": "order_completed", "count": 1},
        {"bucket": "2026-11-26T10:01:00.000Z", "event_name": "order_completed", "count": 1},
        {"bucket": "2026-11-26T10:02:00.000Z", "event_name": "page_viewed", "count": 1},
        {"bucket": "2026-11-26T10:03:00.000Z", "event_name": "identify", "count": 1},
    ]
    hourly = get(api, "/v1/stats", since="2026-11-26", interval="hour", time_field="occurred_at").get_json()
    assert hourly["series"] == [
        {"bucket": "2026-11-26T08:00:00.000Z", "event_name": "page_viewed", "count": 1},
        {"bucket": "2026-11-26T09:00:00.000Z", "event_name": "order_completed", "count": 2},
        {"bucket": "2026-11-26T10:00:00.000Z", "event_name": "identify", "count": 1},
    ]


# ------------------------------------------------------------------ drops


def test_drops_by_reason_with_key_names_never_values(api: Any) -> None:
    before = get(api, "/v1/drops").get_json()["counts"]
    assert before == {"pii_key_removed": 1}  # the seeded identify's traits.email
    batch = {
        "batch": [
            {
                "type": "track",
                "event": "Fine",
                "userId": "u1",
                "properties": {"contact": {"phone": "555"}, "k" * 70: 1},
            },
            {"type": "track", "event": "No Ids", "properties": {"email": "ada@example.com"}},
            {"type": "track", "event": "No Ids Either"},
            {"type": "track", "userId": "u1"},
            {"type": "purchase", "userId": "u1"},
            "not an object",
        ]
    }
    path = f"/v1/batch?writeKey={api.pk}"  # a key in the path is cut out of the sample
    response = post(api.client, path, batch, api.pk, User_Agent="analytics-python/2.4.0")
    assert response.status_code == 200
    body = get(api, "/v1/drops").get_json()
    assert body["counts"] == {
        "missing_id": 2, "no_event_name": 1, "not_an_object": 1, "unknown_type": 1,  # items
        "pii_key_removed": 2, "key_truncated": 1,  # keys of the stored event (and the seeded one)
    }  # fmt: skip
    assert body["total"] == 8
    by_reason: dict[str, Any] = {}
    for sample in body["recent"]:  # newest first
        by_reason.setdefault(sample["reason"], sample)
    assert by_reason["pii_key_removed"]["keys"] == [
        "contact.phone"
    ]  # the dropped item's email is not counted
    assert by_reason["key_truncated"]["keys"] == ["k" * 64]
    assert by_reason["key_truncated"]["description"] == "a property key was cut to 64 characters"
    assert by_reason["missing_id"]["keys"] == ["userId", "anonymousId"]
    assert by_reason["missing_id"]["count"] == 2
    assert by_reason["missing_id"]["description"] == "userId and anonymousId both missing"
    assert by_reason["missing_id"]["library"] == "analytics-python/2.4.0"
    assert by_reason["missing_id"]["path"] == "/v1/batch"  # the query string is not part of the path
    text = json.dumps(body)
    assert "ada@example.com" not in text and api.pk not in text
    assert get(api, "/v1/drops", api.other_sk).get_json() == {**body, "counts": {}, "total": 0, "recent": []}


def test_drops_over_cap_duplicates_and_refused_requests(api: Any) -> None:
    api.store.set_daily_cap("acme", 5)  # 4 stored today already
    batch = {
        "batch": [{"type": "track", "event": "A", "userId": "u", "messageId": f"m{i}"} for i in range(3)]
    }
    post(api.client, "/v1/batch", batch, api.pk)  # 1 fits, 2 over the cap
    post(api.client, "/v1/track", item(SEED[0]), api.pk)  # e1 again: a duplicate
    assert post(api.client, "/v1/track", b"{not json", api.pk).status_code == 400
    assert post(api.client, "/v1/track", {"type": "track"}, "drengr_pk_unknown").status_code == 401
    counts = get(api, "/v1/drops").get_json()["counts"]
    assert counts == {"duplicate": 1, "invalid_json": 1, "over_daily_cap": 2, "pii_key_removed": 1}


def test_drop_counts_survive_a_restart_and_are_shared(db_path: Any, store: Any) -> None:
    """Counts persist in drop_counts: a second app on the same store (another worker, a restart) reads them."""
    first = create_app(Config(db=str(db_path)), store=store)
    pk, sk = store.create_key("acme", "publishable"), store.create_key("acme", "secret")
    batch = {"batch": [{"type": "track", "event": "No Ids"}, {"type": "track", "event": "E", "userId": "u",
                                                               "properties": {"email": "x"}}]}  # fmt: skip
    assert post(first.test_client(), "/v1/batch", batch, pk).status_code == 200
    first.extensions["drengr"].drops.flush()
    second = create_app(Config(db=str(db_path)), store=open_store(str(db_path)))
    try:
        body = second.test_client().get("/v1/drops", headers=bearer(sk)).get_json()
        assert body["counts"] == {"missing_id": 1, "pii_key_removed": 1}
        assert body["recent"] == []  # samples are this process's own
        assert post(second.test_client(), "/v1/batch", batch, pk).status_code == 200
        # not flushed yet: this process adds what it holds to what the table says
        body = second.test_client().get("/v1/drops", headers=bearer(sk)).get_json()
        assert body["counts"] == {"missing_id": 2, "pii_key_removed": 2}
    finally:
        second.extensions["drengr"].drops.close()
        second.extensions["drengr"].store.close()
    assert first.test_client().get("/v1/drops", headers=bearer(sk)).get_json()["counts"] == {
        "missing_id": 2, "pii_key_removed": 2
    }  # fmt: skip
    first.extensions["drengr"].drops.close()


def test_drop_counts_wait_out_a_locked_store(tmp_path: Path) -> None:
    """A flush that meets a locked SQLite file keeps its counts and saves them once the lock is gone."""
    path = tmp_path / "drengr.db"
    store = SQLiteStore(str(path), busy_timeout_ms=50)
    log = DropLog(sink=store, flush_seconds=3600)  # flushed by hand below
    try:
        log.record(Response(200, [], b"", tenant_id="acme", dropped={"missing_id": 3}), "/v1/batch", None)
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        assert log.flush() is False
        assert log.counts("acme") == {"missing_id": 3}  # still counted, from memory
        locker.execute("ROLLBACK")
        locker.close()
        assert log.flush() is True
        assert store.drop_counts("acme") == {"missing_id": 3}
        assert log.counts("acme") == {"missing_id": 3}  # not twice
    finally:
        log.close()
        store.close()


def test_drop_log_is_bounded() -> None:
    from drengr.core.machine import Response
    from drengr.drops import DropLog

    log = DropLog(max_tenants=3, samples_per_tenant=4)
    for n in range(10):
        response = Response(200, [], b"", tenant_id=f"t{n % 5}", dropped={"missing_id": 1})
        log.record(response, "/v1/t" + "x" * 500, "ua\n" * 100)
    assert len(log.tenants()) == 3
    assert all(len(log.samples(t)) <= 4 for t in log.tenants())
    sample = log.samples(log.tenants()[0])[0]
    assert len(sample.path) == 200 and len(sample.library) == 80 and "\n" not in sample.library


# ------------------------------------------------------------------ auth

AUTH_FAILURES = [
    ("no-header", {}),
    ("bearer-publishable", "pk-bearer"),
    ("basic-publishable", "pk-basic"),
    ("bearer-unknown-secret", {"Authorization": "Bearer drengr_sk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    ("bearer-empty", {"Authorization": "Bearer "}),
    ("bearer-not-a-key", {"Authorization": "Bearer hello"}),
    ("other-scheme", "sk-token-scheme"),
    ("basic-malformed", {"Authorization": "Basic %%%"}),
    ("basic-empty-username", {"Authorization": "Basic " + base64.b64encode(b":secret").decode()}),
    ("x-write-key-secret", "sk-x-write-key"),
    ("revoked-secret", "revoked"),
]


def auth_headers(api: Any, spec: Any) -> dict[str, str]:
    if isinstance(spec, dict):
        return spec
    if spec == "pk-bearer":
        return bearer(api.pk)
    if spec == "pk-basic":
        return basic(api.pk)
    if spec == "sk-token-scheme":
        return {"Authorization": f"Token {api.sk}"}
    if spec == "sk-x-write-key":
        return {"X-Write-Key": api.sk}
    assert spec == "revoked"
    assert api.store.revoke_key(api.sk)
    return bearer(api.sk)


@pytest.mark.parametrize("route", ["/v1/events", "/v1/stats", "/v1/drops"])
@pytest.mark.parametrize("spec", [a[1] for a in AUTH_FAILURES], ids=[a[0] for a in AUTH_FAILURES])
def test_auth_failures_are_the_ingest_401(api: Any, route: str, spec: Any) -> None:
    response = api.client.get(route, headers=auth_headers(api, spec))
    assert response.status_code == 401
    assert response.data == UNAUTHORIZED_BODY  # byte for byte the ingest API's
    assert response.headers["Cache-Control"] == "no-store"
    assert "Basic" not in response.headers.get("WWW-Authenticate", "")  # no browser password dialog


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda sk: bearer(sk), id="bearer"),
        pytest.param(lambda sk: basic(sk), id="basic"),
        pytest.param(lambda sk: basic(sk, "any-password"), id="basic-with-password"),
        pytest.param(lambda sk: {"Authorization": f"bearer  {sk} "}, id="bearer-lowercase-spaces"),
    ],
)
def test_secret_key_reads(api: Any, headers: Any) -> None:
    for route in ("/v1/events", "/v1/stats", "/v1/drops"):
        response = api.client.get(route, headers=headers(api.sk))
        assert response.status_code == 200, (route, response.data)
        assert response.headers["Cache-Control"] == "no-store"


def test_ingest_still_refuses_secret_keys(api: Any) -> None:
    response = post(api.client, "/v1/track", {"type": "track", "event": "x", "userId": "u"}, api.sk)
    assert response.status_code == 401 and response.data == UNAUTHORIZED_BODY


def test_post_to_a_read_path_is_still_ingest(api: Any) -> None:
    """The read routes are GET only: a POST to /v1/events falls back to the body (docs/mapping.md "Routes")."""
    response = post(api.client, "/v1/events", {"type": "track", "event": "Via Events", "userId": "u"}, api.pk)
    assert response.status_code == 200
    assert ids(get(api, "/v1/events", event_name="via_events")) != []


def test_openapi_file_is_served(api: Any) -> None:
    response = api.client.get("/v1/openapi.yaml")
    assert response.status_code == 200 and response.data == OPENAPI.read_bytes()
