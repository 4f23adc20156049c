"""RFC 9110 §15.5.6: every 405 carries an ``Allow`` header naming what the path does take.

Every method but GET and HEAD goes to the Sans-IO machine, which takes POST
and OPTIONS on any path (docs/mapping.md "Routes": any POST path under the mount
is ingest) and answers the contract's JSON 405 to the rest. A GET or HEAD that no read route
serves reaches the ingest route, which asks the machine too. So on an ingest
path ``Allow`` is ``POST, OPTIONS``; on a path a read route also serves
(``/health``, ``/v1/events``, the debugger, …) it is ``GET, HEAD, POST, OPTIONS``.
"""

import json

import pytest

from drengr.web import Config, create_app

from .support.app import basic, post, read_rows

METHOD_NOT_ALLOWED = json.dumps(
    {"error": "Method not allowed", "code": "method_not_allowed", "message": "Method not allowed"}
).encode()
INGEST_ALLOW = "POST, OPTIONS"
READ_ALLOW = "GET, HEAD, POST, OPTIONS"

INGEST_PATHS = ["/v1/batch", "/v1/track", "/v1/identify", "/v1/t", "/batch", "/api/s/s2s/batch", "/", "/v1/x"]
READ_PATHS = [
    "/health",
    "/v1/events",
    "/v1/stats",
    "/v1/drops",
    "/debugger",
    "/debugger/app.js",
    "/debugger/style.css",
    "/v1/openapi.yaml",
    "/v1/projects/drengr_pk_whatever/settings",
]
# The methods the ingest route was registered for, and a few no route names (werkzeug
# used to answer those with its own HTML 405 and an Allow listing PUT, PATCH and DELETE).
WRONG_METHODS = ["PUT", "DELETE", "PATCH", "TRACE", "PROPFIND", "FOO"]


def methods(allow: str) -> list[str]:
    return [m.strip() for m in allow.split(",")]


@pytest.mark.parametrize("method", ["GET", *WRONG_METHODS])
@pytest.mark.parametrize("path", INGEST_PATHS)
def test_wrong_method_on_ingest_path(client, path, method):
    response = client.open(path, method=method, headers={"Origin": "http://shop.example"})
    assert response.status_code == 405
    assert response.headers["Allow"] == INGEST_ALLOW
    assert response.data == METHOD_NOT_ALLOWED  # the contract's JSON body, not werkzeug's HTML page
    assert response.headers["Content-Type"] == "application/json"
    # An ingest error like any other: it carries the CORS headers (docs/mapping.md "CORS").
    assert response.headers["Access-Control-Allow-Origin"] == "http://shop.example"
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert response.headers.getlist("Allow") == [INGEST_ALLOW]  # one header, not two


@pytest.mark.parametrize("path", INGEST_PATHS)
def test_head_on_ingest_path(client, path):
    response = client.head(path)
    assert response.status_code == 405
    assert response.headers["Allow"] == INGEST_ALLOW
    assert response.data == b""


@pytest.mark.parametrize("method", WRONG_METHODS)
@pytest.mark.parametrize("path", READ_PATHS)
def test_wrong_method_on_read_path(client, path, method):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == READ_ALLOW
    assert response.data == METHOD_NOT_ALLOWED


@pytest.mark.parametrize("path", ["/health", "/v1/events"])
def test_post_on_a_read_path_is_ingest_not_405(client, key, db_path, path):
    """docs/mapping.md "Routes": a POST to any path falls back to the body; so ``Allow`` lists POST."""
    assert client.post(path, data=b"{}").status_code == 401  # no key: the ingest 401, not a 405
    body = {"type": "track", "event": "Clicked", "userId": "u1", "messageId": path}
    assert post(client, path, body, key).status_code == 200
    assert [row["event_id"] for row in read_rows(db_path)] == [path]


@pytest.mark.parametrize("path", INGEST_PATHS[:3] + READ_PATHS)
def test_every_method_allow_names_is_not_405(client, path):
    """``Allow`` does not advertise a method the path refuses (nor leave out one it takes)."""
    allow = client.open(path, method="PUT").headers["Allow"]
    for method in methods(allow):
        assert client.open(path, method=method).status_code != 405, (path, method)
    for method in {"GET", "HEAD", "POST", "OPTIONS"} - set(methods(allow)):
        assert client.open(path, method=method).status_code == 405, (path, method)


def test_wrong_method_stores_nothing(client, key, db_path):
    body = json.dumps({"type": "track", "event": "Clicked", "userId": "u1"})
    for method in ["GET", "PUT", "PATCH", "DELETE"]:
        response = client.open("/v1/track", method=method, data=body, headers=basic(key))
        assert (response.status_code, response.headers["Allow"]) == (405, INGEST_ALLOW)
    assert read_rows(db_path) == []


@pytest.mark.parametrize(
    "path, allow",
    [("/v1/batch", INGEST_ALLOW), ("/", INGEST_ALLOW), ("/health", READ_ALLOW), ("/v1/events", READ_ALLOW)],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_allow_behind_a_prefix(db_path, store, path, allow, method):
    """``--prefix``: the read routes are found under the mount point, so the answer is the same."""
    app = create_app(Config(db=str(db_path), prefix="/segment-ingest"), store=store)
    response = app.test_client().open("/segment-ingest" + path, method=method)
    app.extensions["drengr"].drops.close()
    if method == "GET" and allow == READ_ALLOW:
        assert response.status_code != 405
        return
    assert (response.status_code, response.headers["Allow"]) == (405, allow)
    assert response.data == METHOD_NOT_ALLOWED
