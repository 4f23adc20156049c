"""Segment's Pixel API: ``GET /v1/pixel/{type}?data=<base64 JSON, writeKey inside>`` (docs/mapping.md "Routes").

A good call is stored exactly like a POST of its JSON and answers a 1x1 GIF.
A bad one answers the same GIF with the status the POST would have had (the
uniform 401, 400 for data that is not base64 of JSON) and stores nothing.
"""

import base64
import json
import logging
from typing import Any
from urllib.parse import quote

import pytest

from drengr.core.pixel import GIF, decode_data

from .support.app import ENGINES, basic, read_rows

both_stores = pytest.mark.parametrize("engine", ENGINES, indirect=True)


def encode(call: dict[str, Any], alphabet: str = "standard", padding: bool = True) -> str:
    raw = json.dumps(call).encode()
    text = (base64.urlsafe_b64encode if alphabet == "urlsafe" else base64.b64encode)(raw).decode()
    return text if padding else text.rstrip("=")


def call(key: str, **fields: Any) -> dict[str, Any]:
    return {"writeKey": key, "userId": "u1", "messageId": "px-1", **fields}


# path type, the call's own fields -> (event_type, event_name, dims)
PIXEL_CALLS = [
    ("track", {"event": "Email Opened", "properties": {"campaign": "winter"}},
     ("track", "email_opened", {"_source_event_name": "Email Opened", "campaign": "winter"})),
    ("page", {"name": "Newsletter"}, ("page", "page_viewed", {"name": "Newsletter"})),
    ("screen", {"name": "Inbox"}, ("screen", "screen_viewed", {"name": "Inbox"})),
    ("identify", {"traits": {"plan": "pro"}}, ("identify", "identify", {"plan": "pro"})),
    ("group", {"groupId": "g1"}, ("group", "group", {"group_id": "g1"})),
    ("alias", {"previousId": "anon"}, ("alias", "alias", {"previous_id": "anon"})),
    # The path's type wins over the body's, as on POST routes.
    ("track", {"type": "identify", "event": "clicked"}, ("track", "clicked", {})),
]  # fmt: skip


@both_stores
@pytest.mark.parametrize(
    "path_type, fields, expected", PIXEL_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(PIXEL_CALLS)]
)
def test_each_pixel_call_is_stored_once_and_answers_a_gif(client, key, db_path, path_type, fields, expected):
    response = client.get(f"/v1/pixel/{path_type}?data={quote(encode(call(key, **fields)))}")
    assert response.status_code == 200
    assert response.data == GIF and response.headers["Content-Type"] == "image/gif"
    assert "no-store" in response.headers["Cache-Control"]
    [row] = read_rows(db_path)
    event_type, event_name, dims = expected
    assert (row["event_type"], row["event_name"], row["tenant_id"]) == (event_type, event_name, "acme")
    assert row["dims"] == dims and row["external_id"] == "u1"


# How the data may arrive in a URL: every form decodes to the same call.
ENCODINGS = {
    "standard-percent-encoded": lambda text: quote(text, safe=""),
    "standard-raw": lambda text: text,  # '+' arrives as a space, '/' and '=' as themselves
    "urlsafe-unpadded": None,
}


@both_stores
@pytest.mark.parametrize("form", list(ENCODINGS))
def test_data_in_every_base64_form(client, key, db_path, form):
    # Properties chosen so the standard alphabet has '+' and '/' and needs padding.
    fields = {"event": "Opened", "properties": {"k": ">>>???"}}
    if form == "urlsafe-unpadded":
        data = encode(call(key, **fields), "urlsafe", padding=False)
    else:
        data = ENCODINGS[form](encode(call(key, **fields)))
    assert client.get(f"/v1/pixel/track?data={data}").status_code == 200
    assert [row["event_name"] for row in read_rows(db_path)] == ["opened"]


@both_stores
def test_a_key_outside_the_data(client, key, db_path):
    """Basic auth (a server fetching the pixel) and ?writeKey= work too, in the ingest routes' order."""
    data = quote(encode({"userId": "u1", "event": "A", "messageId": "1"}))
    assert client.get(f"/v1/pixel/track?data={data}", headers=basic(key)).status_code == 200
    assert client.get(f"/v1/pixel/track?data={data}&writeKey={key}").status_code == 200
    assert len(read_rows(db_path)) == 1  # the same messageId: stored once


def test_a_content_encoding_on_the_get_does_not_apply_to_the_data(client, key, db_path):
    """The call is the decoded JSON: a stray Content-Encoding on the GET describes no body of it."""
    data = quote(encode(call(key, event="Opened", messageId="ce-1")))
    response = client.get(f"/v1/pixel/track?data={data}", headers={"Content-Encoding": "gzip"})
    assert (response.status_code, response.data) == (200, GIF)
    assert [row["event_id"] for row in read_rows(db_path)] == ["ce-1"]


@both_stores
def test_bad_calls_answer_the_gif_with_their_status_and_store_nothing(client, store, key, db_path, caplog):
    caplog.set_level(logging.INFO, logger="drengr.access")
    secret = store.create_key("acme", "secret")
    good = {"event": "Opened"}
    cases = {
        "unknown-key": (f"data={quote(encode(call('drengr_pk_nope', **good)))}", 401, "unauthorized"),
        "secret-key": (f"data={quote(encode(call(secret, **good)))}", 401, "unauthorized"),
        "no-key": (f"data={quote(encode({'userId': 'u1', 'event': 'x'}))}", 401, "unauthorized"),
        "no-data": ("", 400, "invalid_json"),
        "empty-data": ("data=", 400, "invalid_json"),
        "not-base64": ("data=%%%25", 400, "invalid_json"),
        "base64-of-not-json": (f"data={base64.b64encode(b'hello').decode()}", 400, "invalid_json"),
        "too-large": ("data=" + "A" * 700_000, 400, "request_too_large"),
    }
    answers = {}
    for name, (query, status, _code) in cases.items():
        response = client.get(f"/v1/pixel/track?{query}")
        answers[name] = (response.status_code, response.data, response.headers["Content-Type"])
        assert answers[name] == (status, GIF, "image/gif"), name
    assert read_rows(db_path) == []
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "drengr.access"]
    assert [(line["path"], line["status"], line["error"]) for line in lines] == [
        ("/v1/pixel/track", status, code) for _query, status, code in cases.values()
    ]
    assert "drengr_pk_nope" not in caplog.text and secret not in caplog.text and "data=" not in caplog.text


@both_stores
def test_head_answers_the_image_and_stores_nothing(client, key, db_path):
    response = client.head(f"/v1/pixel/track?data={quote(encode(call(key, event='Opened')))}")
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/gif"
    assert read_rows(db_path) == []


@both_stores
def test_unknown_pixel_type_is_not_a_pixel(client, key):
    assert client.get(f"/v1/pixel/purchase?data={quote(encode(call(key)))}").status_code == 405


def test_gif_is_one_transparent_pixel():
    assert GIF[:6] == b"GIF89a" and GIF[6:10] == b"\x01\x00\x01\x00" and GIF.endswith(b";")
    assert len(GIF) == 43


DATA = [
    ("data=eyJhIjogMX0=", b'{"a": 1}'),
    ("data=eyJhIjogMX0", b'{"a": 1}'),
    ("x=1&data=eyJhIjogMX0%3D", b'{"a": 1}'),
]


@pytest.mark.parametrize("query, expected", DATA)
def test_decode_data(query, expected):
    assert decode_data(query) == expected


@both_stores
def test_other_methods_on_a_pixel_path_get_the_json_405_naming_get(client):
    response = client.delete("/v1/pixel/track")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert response.get_json()["code"] == "method_not_allowed"
