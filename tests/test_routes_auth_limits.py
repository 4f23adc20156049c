"""docs/mapping.md "Routes", "Auth" and "Limits and responses", through the real app and SQLite file."""

import base64
import functools
import gzip
import json
import tracemalloc
import zlib
from typing import Any

import pytest

import drengr.core.body
from drengr.core.limits import MAX_BODY_BYTES
from drengr.store import SQLiteStore
from drengr.web import Config, create_app

from .support.app import ENGINES, basic, post, read_rows

# The whole contract runs against both stores (tests/conftest.py).
pytestmark = [pytest.mark.parametrize("engine", ENGINES, indirect=True), pytest.mark.dated]

SUCCESS = b'{"success": true}'
UNAUTHORIZED = b'{"error": "Unauthorized", "code": "unauthorized", "message": "Unauthorized"}'


def error(text: str, code: str) -> bytes:
    return json.dumps({"error": text, "code": code, "message": text}).encode()


def item(**fields: Any) -> dict[str, Any]:
    return {"userId": "u1", "messageId": "m1", "event": "Clicked", **fields}


# ---------------------------------------------------------------- routes

PATH_ROWS = [
    ("/v1/track", {"type": "identify"}, "track"),
    ("/track", {}, "track"),
    ("/v1/identify", {"type": "track"}, "identify"),
    ("/v1/page", {}, "page"),
    ("/v1/screen", {}, "screen"),
    ("/v1/group", {}, "group"),
    ("/v1/alias", {}, "alias"),
    ("/v1/t", {}, "track"),
    ("/v1/i", {}, "identify"),
    ("/v1/p", {}, "page"),
    ("/v1/s", {}, "screen"),
    ("/v1/g", {}, "group"),
    ("/v1/a", {}, "alias"),
    ("/api/s/track", {}, "track"),
    ("/api/s/s2s/identify", {}, "identify"),
    ("/api/s/p", {}, "page"),
    ("/custom/deep/path/track", {}, "track"),
    ("/v1/track/", {}, "track"),
    ("/", {"type": "page"}, "page"),
    ("/v1", {"type": "screen"}, "screen"),
    ("/v1/x", {"type": "group"}, "group"),
    ("/v1/x", {"type": "t"}, "track"),
]


@pytest.mark.parametrize("path, extra, event_type", PATH_ROWS, ids=[f"{p}-{t}" for p, _, t in PATH_ROWS])
def test_single_event_type_from_path_or_body(client, key, db_path, path, extra, event_type):
    response = post(client, path, item(**extra), key)
    assert (response.status_code, response.data) == (200, SUCCESS)
    [row] = read_rows(db_path)
    assert row["event_type"] == event_type


@pytest.mark.parametrize(
    "path", ["/v1/batch", "/batch", "/v1/b", "/v1/import", "/api/s/s2s/batch", "/", "/v1/x"]
)
def test_batch_routes(client, key, db_path, path):
    batch = {
        "batch": [
            item(type="track", messageId="1"),
            item(type="page", messageId="2"),
            item(type="i", messageId="3"),
        ]
    }
    assert post(client, path, batch, key).data == SUCCESS
    assert [row["event_type"] for row in read_rows(db_path)] == ["track", "page", "identify"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(item(type="checkout"), id="unknown-type"),
        pytest.param(item(), id="no-type"),
        pytest.param({"batch": [item(type="nope"), 5, "x", None]}, id="batch-of-unknowns"),
    ],
)
def test_unrecognised_type_dropped_still_200(client, key, db_path, body):
    assert post(client, "/v1/x", body, key).data == SUCCESS
    assert read_rows(db_path) == []


def test_metrics_endpoint_answers_200_without_auth_and_stores_nothing(client, db_path):
    body = b'{"series":[{"type":"Counter","metric":"analytics_js.invoke","value":1,"tags":{}}]}'
    response = client.post("/v1/m", data=body, headers={"Content-Type": "text/plain"})
    assert (response.status_code, response.data) == (200, SUCCESS)
    assert read_rows(db_path) == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded", None]
)
def test_content_type_is_ignored(client, key, db_path, content_type):
    headers = {**basic(key), **({"Content-Type": content_type} if content_type else {})}
    response = client.post("/v1/track", data=json.dumps(item()), headers=headers)
    assert response.data == SUCCESS
    assert len(read_rows(db_path)) == 1


ENCODINGS = [
    pytest.param("gzip", gzip.compress, id="gzip"),
    pytest.param("deflate", zlib.compress, id="deflate-zlib"),
    pytest.param("deflate", lambda data: zlib.compress(data)[2:-4], id="deflate-raw"),
    pytest.param("identity", lambda data: data, id="identity"),
]


@pytest.mark.parametrize("encoding, compress", ENCODINGS)
def test_content_encoding(client, key, db_path, encoding, compress):
    body = compress(json.dumps({"batch": [item(type="track")]}).encode())
    response = client.post("/v1/batch", data=body, headers={**basic(key), "Content-Encoding": encoding})
    assert response.data == SUCCESS
    assert len(read_rows(db_path)) == 1


def test_prefix_mount(db_path, store, key):
    app = create_app(Config(db=str(db_path), prefix="/segment-ingest"), store=store)
    client = app.test_client()
    assert post(client, "/segment-ingest/v1/track", item(), key).data == SUCCESS
    assert (
        post(client, "/segment-ingest/v1/batch", {"batch": [item(type="page", messageId="2")]}, key).data
        == SUCCESS
    )
    assert client.get("/segment-ingest/health").status_code == 200
    outside = post(client, "/v1/track", item(messageId="3"), key)
    app.extensions["drengr"].drops.close()
    assert outside.status_code == 404
    assert [row["event_type"] for row in read_rows(db_path)] == ["track", "page"]


def test_script_name_mount(client, key, db_path):
    """Behind nginx + a WSGI server setting SCRIPT_NAME, routes work relative to it and URLs name it.

    werkzeug splits each full URL at the mount point as a WSGI server would
    (SCRIPT_NAME ``/segment-ingest``, PATH_INFO the rest); test_server.py has
    gunicorn split real requests.
    """
    mounted = {"base_url": "http://ingest.example/segment-ingest/"}
    response = client.post("/v1/t", data=json.dumps(item()), headers=basic(key), **mounted)
    assert response.request.environ["SCRIPT_NAME"] == "/segment-ingest"
    assert response.request.url == "http://ingest.example/segment-ingest/v1/t"
    assert response.data == SUCCESS
    assert client.get("/health", **mounted).status_code == 200
    settings = client.get(f"/v1/projects/{key}/settings", **mounted).get_json()
    assert settings["integrations"]["Segment.io"]["apiHost"] == "ingest.example/segment-ingest/v1"
    assert [row["event_type"] for row in read_rows(db_path)] == ["track"]


@pytest.mark.parametrize("path", ["//v1//track", "/v1/track/", "/v1/track//"])
def test_never_a_redirect(client, key, path):
    response = post(client, path, item(), key)
    assert response.status_code == 200


# ---------------------------------------------------------------- CORS


def test_preflight(client):
    response = client.options(
        "/v1/t",
        headers={
            "Origin": "http://shop.example:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-custom",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://shop.example:3000"
    assert response.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert (
        response.headers["Access-Control-Allow-Headers"]
        == "authorization, content-type, x-custom, x-write-key"
    )
    assert int(response.headers["Access-Control-Max-Age"]) > 0


def test_preflight_without_origin_or_requested_headers(client):
    response = client.options("/api/s/s2s/track")
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-write-key"} <= allowed


@pytest.mark.parametrize(
    "key_kind, body, status",
    [("good", item(), 200), ("bad", item(), 401), ("good", b"{nope", 400), ("good", b"[]", 400)],
    ids=["success", "unauthorized", "invalid-json", "not-object"],
)
def test_every_ingest_response_carries_cors(client, key, key_kind, body, status):
    use = key if key_kind == "good" else "drengr_pk_wrong"
    response = post(client, "/v1/t", body, use, Origin="http://a.example")
    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == "http://a.example"
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"


# ---------------------------------------------------------------- settings and health


def test_settings_point_back_at_this_server(client, key):
    response = client.get(f"/v1/projects/{key}/settings", headers={"Host": "ingest.example:8080"})
    assert response.status_code == 200
    settings = response.get_json()
    segment = settings["integrations"]["Segment.io"]
    assert (segment["apiKey"], segment["apiHost"], segment["protocol"]) == (
        key,
        "ingest.example:8080/v1",
        "http",
    )
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_settings_unknown_key_is_404(client):
    assert client.get("/v1/projects/drengr_pk_unknown/settings").status_code == 404


def test_health_ok_when_writable(client):
    response = client.get("/health")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


# ---------------------------------------------------------------- auth


def test_basic_auth_with_empty_password(client, key, db_path):
    assert post(client, "/v1/track", item(), key).data == SUCCESS
    assert read_rows(db_path)[0]["tenant_id"] == "acme"


def test_basic_auth_password_ignored(client, key):
    headers = basic(key, "anything:with:colons")
    assert client.post("/v1/track", data=json.dumps(item()), headers=headers).data == SUCCESS


def test_x_write_key_header(client, key):
    assert (
        client.post("/api/s/s2s/track", data=json.dumps(item()), headers={"X-Write-Key": key}).data == SUCCESS
    )


def test_x_write_key_with_jitsu_secret_part(client, key):
    """@jitsu/js refuses keys without `id:secret`; the part before the first `:` is the key."""
    response = client.post("/api/s/s2s/track", data=json.dumps(item()), headers={"X-Write-Key": key + ":x"})
    assert response.data == SUCCESS


def test_body_write_key(client, key):
    assert client.post("/v1/track", data=json.dumps(item(writeKey=key))).data == SUCCESS


def test_body_write_key_in_batch(client, key, db_path):
    body = {"writeKey": key, "batch": [item(type="track")]}
    assert client.post("/v1/batch", data=json.dumps(body)).data == SUCCESS
    assert len(read_rows(db_path)) == 1


def test_first_place_with_a_key_decides(client, key, store):
    secret = store.create_key("acme", "secret")
    # Basic has a bad key; a good X-Write-Key and body key do not rescue it.
    bad_basic = {**basic("drengr_pk_bad"), "X-Write-Key": key}
    assert client.post("/v1/track", data=json.dumps(item(writeKey=key)), headers=bad_basic).status_code == 401
    # Empty Basic username has no key: X-Write-Key decides.
    empty_basic = {"Authorization": "Basic " + base64.b64encode(b":").decode(), "X-Write-Key": key}
    assert client.post("/v1/track", data=json.dumps(item()), headers=empty_basic).data == SUCCESS
    # X-Write-Key decides over the body.
    headers = {"X-Write-Key": secret}
    assert (
        client.post(
            "/v1/track", data=json.dumps(item(writeKey=key, messageId="2")), headers=headers
        ).status_code
        == 401
    )


def _auth_failures(store: SQLiteStore, key: str) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    secret = store.create_key("acme", "secret")
    revoked = store.create_key("acme", "publishable")
    store.revoke_key(revoked)
    return {
        "no-key": ({}, item()),
        "unknown-key": (basic("drengr_pk_doesnotexist"), item()),
        "revoked-key": (basic(revoked), item()),
        "secret-key": (basic(secret), item()),
        "secret-key-x-write-key": ({"X-Write-Key": secret}, item()),
        "secret-key-in-body": ({}, item(writeKey=secret)),
        "masked-body-key": ({}, item(writeKey="2kd8f:***")),
        "not-basic": ({"Authorization": f"Bearer {key}"}, item()),
        "bad-base64": ({"Authorization": "Basic %%%"}, item()),
        "non-utf8-credentials": (
            {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:").decode()},
            item(),
        ),
        "body-key-not-string": ({}, item(writeKey=12)),
        "prefix-of-real-key": (basic(key[:-1]), item()),
    }


def test_every_auth_failure_is_the_same_401(client, store, key, db_path):
    responses = {}
    for name, (headers, body) in _auth_failures(store, key).items():
        response = client.post(
            "/v1/track", data=json.dumps(body), headers={"Origin": "http://o.example", **headers}
        )
        responses[name] = (response.status_code, response.data, sorted(response.headers.items()))
    first = next(iter(responses.values()))
    assert first[0] == 401 and first[1] == UNAUTHORIZED
    assert {name: r == first for name, r in responses.items()} == {name: True for name in responses}
    assert read_rows(db_path) == []


# ---------------------------------------------------------------- limits and responses


def _batch_of(n: int) -> dict[str, Any]:
    return {"batch": [{"type": "track", "event": "e", "userId": "u", "messageId": str(i)} for i in range(n)]}


def test_request_too_large_from_content_length(client, key):
    body = b" " * 512_001
    response = client.post("/v1/batch", data=body, headers=basic(key))
    assert (response.status_code, response.data) == (400, error("Request too large", "request_too_large"))


def test_request_exactly_at_limit_is_read(client, key, db_path):
    body = json.dumps(_batch_of(1)).encode()
    body = body[:-1] + b" " * (512_000 - len(body)) + b"}"
    assert len(body) == 512_000
    assert post(client, "/v1/batch", body, key).data == SUCCESS


def test_request_too_large_decompressed(client, key):
    body = gzip.compress(b'{"batch": [' + b" " * 600_000 + b"]}")
    assert len(body) < 10_000
    response = client.post("/v1/batch", data=body, headers={**basic(key), "Content-Encoding": "gzip"})
    assert (response.status_code, response.data) == (400, error("Request too large", "request_too_large"))


class CountingZlib:
    """``zlib`` as ``drengr.core.body`` sees it: the real one, counting every byte it inflates."""

    def __init__(self) -> None:
        self.inflated = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(zlib, name)

    def decompress(self, *args: Any, **kwargs: Any) -> bytes:
        return self._count(zlib.decompress(*args, **kwargs))

    def decompressobj(self, *args: Any, **kwargs: Any) -> Any:
        counter, inflater = self, zlib.decompressobj(*args, **kwargs)

        class Counted:
            def __getattr__(self, name: str) -> Any:  # eof, unconsumed_tail, …
                return getattr(inflater, name)

            def decompress(self, *args: Any, **kwargs: Any) -> bytes:
                return counter._count(inflater.decompress(*args, **kwargs))

            def flush(self, *args: Any) -> bytes:
                return counter._count(inflater.flush(*args))

        return Counted()

    def _count(self, data: bytes) -> bytes:
        self.inflated += len(data)
        return data


@functools.cache
def bomb(encoding_id: str) -> bytes:
    """50 MB of zeros, compressed to about 50 KB (100 times the 512,000-byte limit)."""
    zeros = b"0" * 50_000_000
    if encoding_id == "deflate-raw":
        return zlib.compress(zeros, 9)[2:-4]
    if encoding_id == "deflate-zlib":
        return zlib.compress(zeros, 9)
    return gzip.compress(zeros, compresslevel=9)


BOMBS = [  # (Content-Encoding, how the bomb is compressed, the route)
    pytest.param("gzip", "gzip", "/v1/batch", id="gzip-batch"),
    pytest.param("x-gzip", "gzip", "/v1/batch", id="x-gzip-batch"),
    pytest.param("gzip", "gzip", "/v1/track", id="gzip-single"),
    pytest.param("deflate", "deflate-zlib", "/v1/batch", id="deflate-zlib-batch"),
    pytest.param("deflate", "deflate-raw", "/v1/batch", id="deflate-raw-batch"),
]


@pytest.mark.parametrize(("encoding", "compressed", "path"), BOMBS)
def test_gzip_bomb_is_refused_without_inflating_it(client, key, monkeypatch, encoding, compressed, path):
    """Inflation stops just past the limit: the bytes inflated are counted, and so is the memory."""
    counting = CountingZlib()
    monkeypatch.setattr(drengr.core.body, "zlib", counting)
    data = bomb(compressed)
    tracemalloc.start()
    try:
        response = client.post(path, data=data, headers={**basic(key), "Content-Encoding": encoding})
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (response.status_code, response.data) == (400, error("Request too large", "request_too_large"))
    # The limit is 512,000 bytes; inflating in steps may pass it by one step, never by the bomb.
    assert MAX_BODY_BYTES < counting.inflated <= 2 * MAX_BODY_BYTES, counting.inflated
    assert peak_bytes < 4 * MAX_BODY_BYTES, peak_bytes  # nothing else inflated it either


def test_message_too_large(client, key):
    big = {"type": "track", "event": "e", "userId": "u", "properties": {"blob": "x" * 33_000}}
    response = post(client, "/v1/batch", {"batch": [big]}, key)
    assert (response.status_code, response.data) == (400, error("Message too large", "message_too_large"))
    single = post(client, "/v1/track", big, key)
    assert (single.status_code, single.data) == (400, error("Message too large", "message_too_large"))


def test_item_just_under_32kb_is_accepted(client, key, db_path):
    small = {"type": "track", "event": "e", "userId": "u", "properties": {"blob": "x" * 32_000}}
    assert post(client, "/v1/batch", {"batch": [small, small]}, key).data == SUCCESS


def test_batch_too_large(client, key, db_path):
    response = post(client, "/v1/batch", _batch_of(2_501), key)
    assert (response.status_code, response.data) == (400, error("Batch too large", "batch_too_large"))
    assert read_rows(db_path) == []


def test_batch_of_2500_is_accepted(client, key, db_path):
    assert post(client, "/v1/batch", _batch_of(2_500), key).data == SUCCESS
    assert len(read_rows(db_path)) == 2_500


INVALID_JSON = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"not json", id="text"),
    pytest.param(b"[1, 2]", id="array"),
    pytest.param(b'"string"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param(b'{"a": Infinity}', id="infinity"),
    pytest.param(b'{"a": "\xff"}', id="invalid-utf8"),
    pytest.param(b'{"a": 1} trailing', id="trailing-garbage"),
    pytest.param(b"\x1f\x8b\x08garbage", id="gzip-magic-without-header"),
]


@pytest.mark.parametrize("body", INVALID_JSON)
def test_invalid_json(client, key, body):
    response = post(client, "/v1/track", body, key)
    assert (response.status_code, response.data) == (400, error("Invalid JSON", "invalid_json"))


def test_corrupt_gzip_is_invalid_json(client, key):
    response = client.post(
        "/v1/batch", data=b"\x1f\x8b\x08\x00nonsense", headers={**basic(key), "Content-Encoding": "gzip"}
    )
    assert (response.status_code, response.data) == (400, error("Invalid JSON", "invalid_json"))


def test_unsupported_encoding_is_invalid_json(client, key):
    response = client.post("/v1/batch", data=b"{}", headers={**basic(key), "Content-Encoding": "br"})
    assert response.status_code == 400


# ---------------------------------------------------------------- order of checks


ORDER_ROWS = [
    pytest.param({"Content-Length-Over": True, "auth": "bad"}, 400, "request_too_large", id="size-before-header-auth"),
    pytest.param({"auth": "bad", "body": b"{nope"}, 401, "unauthorized", id="header-auth-before-json"),
    pytest.param({"auth": "none", "body": b"{nope"}, 400, "invalid_json", id="json-before-body-auth"),
    pytest.param({"auth": "body-bad", "batch": 2_501}, 401, "unauthorized", id="body-auth-before-batch-count"),
    pytest.param({"auth": "good", "batch": 2_501, "big_item": True}, 400, "batch_too_large", id="count-before-item-size"),
]  # fmt: skip


@pytest.mark.parametrize("case, status, code", ORDER_ROWS)
def test_checks_run_in_spec_order(client, key, case, status, code):
    headers: dict[str, str] = {}
    if case.get("auth") == "bad":
        headers.update(basic("drengr_pk_nope"))
    elif case.get("auth") == "good":
        headers.update(basic(key))
    body_obj: dict[str, Any] = _batch_of(case.get("batch", 1))
    if case.get("big_item"):
        body_obj["batch"][0]["properties"] = {"blob": "x" * 40_000}
    if case.get("auth") == "body-bad":
        body_obj["writeKey"] = "drengr_pk_nope"
    body = case.get("body", json.dumps(body_obj).encode())
    if case.get("Content-Length-Over"):
        body = b" " * 600_000
    response = client.post("/v1/batch", data=body, headers=headers)
    assert response.status_code == status
    assert response.get_json()["code"] == code
