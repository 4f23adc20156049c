"""RudderStack's control-plane subset: ``GET /sourceConfig`` (docs/mapping.md "Routes").

Every RudderStack SDK but the server-side ones fetches a source config before
it sends anything. The requests below are built the way each SDK's source
builds them (URL, query, headers); the answer is checked against the fields
each SDK's model requires (``drengr.core.control_plane`` cites them). The
browser SDKs also run for real in Chromium (tests/test_clients_rudderstack_browser.py).
"""

import json
from typing import Any

import pytest

from drengr.core.control_plane import source_config_document

from .support.app import ENGINES, basic, read_rows

both_stores = pytest.mark.parametrize("engine", ENGINES, indirect=True)

UNAUTHORIZED = b'{"error": "Unauthorized", "code": "unauthorized", "message": "Unauthorized"}'
ORIGIN = "http://shop.example"


# SDK -> how its source asks: (path and query, headers). KEY is replaced by the key.
SDK_REQUESTS = {
    # ConfigManager.getConfig with configUrl set: `${configUrl}/sourceConfig/?p=npm&v=…&build=modern&writeKey=…`,
    # Basic auth set on the XHR too (HttpClient.setAuthHeader), from another origin.
    "analytics-js-v3": (
        "/sourceConfig/?p=npm&v=3.34.1&build=modern&writeKey=KEY&lockIntegrationsVersion=false"
        "&lockPluginsVersion=false",
        {"Origin": ORIGIN, "basic": "KEY"},
    ),
    # rudder-sdk-js 2.x: `${configUrl}/sourceConfig/?p=npm&v=2.52.21&writeKey=KEY`, Basic auth too.
    "rudder-sdk-js-v2": ("/sourceConfig/?p=npm&v=2.52.21&writeKey=KEY", {"Origin": ORIGIN, "basic": "KEY"}),
    # RudderServerConfigManager.downloadConfig: addEndPoint(controlPlaneUrl, "sourceConfig?p=android&v=…&bv=…").
    "rudder-sdk-android-1": ("/sourceConfig?p=android&v=1.27.1&bv=34", {"basic": "KEY"}),
    # RSServerConfigManager: `${controlPlaneUrl}/sourceConfig?p=ios&v=…`, Basic base64("KEY:").
    "rudder-sdk-ios-1": ("/sourceConfig?p=ios&v=1.31.1", {"basic": "KEY"}),
    # The Kotlin and Swift SDKs (2.x): the same path, p=android / p=ios, Basic auth.
    "rudder-sdk-kotlin": ("/sourceConfig?p=android&v=1.0.0&bv=34", {"basic": "KEY"}),
    "rudder-sdk-swift": ("/sourceConfig?p=ios&v=1.0.0", {"basic": "KEY"}),
}

# What each SDK's model needs of the answer: JSON path -> the type it must have.
REQUIRED = {
    "analytics-js-v3": {"source.id": str, "source.config": dict, "source.destinations": list},
    "rudder-sdk-js-v2": {"source.id": str, "source.config": dict, "source.destinations": list},
    "rudder-sdk-android-1": {"source.id": str, "source.name": str, "source.enabled": bool,
                             "source.updatedAt": str, "source.destinations": list},
    "rudder-sdk-ios-1": {"source.id": str, "source.name": str, "source.enabled": bool, "source.updatedAt": str,
                         "source.destinations": list},
    "rudder-sdk-kotlin": {"source.id": str, "source.name": str, "source.writeKey": str, "source.enabled": bool,
                          "source.workspaceId": str, "source.updatedAt": str},
    "rudder-sdk-swift": {"source.id": str, "source.name": str, "source.writeKey": str, "source.enabled": bool,
                         "source.workspaceId": str, "source.updatedAt": str},
}  # fmt: skip


def build(key: str, sdk: str) -> tuple[str, dict[str, str]]:
    url, spec = SDK_REQUESTS[sdk]
    headers: dict[str, str] = {}
    for name, value in spec.items():
        if name == "basic":
            headers.update(basic(value.replace("KEY", key)))
        else:
            headers[name] = value
    return url.replace("KEY", key), headers


def at(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        value = value[part]
    return value


@both_stores
@pytest.mark.parametrize("sdk", list(SDK_REQUESTS))
def test_each_sdk_gets_a_config_it_accepts(client, key, sdk):
    url, headers = build(key, sdk)
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"] == "application/json"
    document = json.loads(response.data)
    for path, kind in REQUIRED[sdk].items():
        assert isinstance(at(document, path), kind), (sdk, path)
    source = document["source"]
    assert source["enabled"] is True  # Android and iOS send nothing for a disabled source
    assert source["destinations"] == []  # nothing loaded in the page or app: every call comes here
    assert source["dataplanes"] == {}  # the SDK keeps the data-plane URL it was given
    assert source["config"]["statsCollection"] == {
        "errors": {"enabled": False},
        "metrics": {"enabled": False},
    }
    assert source["writeKey"] == key
    assert "acme" not in response.data.decode()  # the tenant's name is not the key holder's business
    if "Origin" in headers:
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert response.headers["Access-Control-Allow-Credentials"] == "true"


# Path variants relative to the mount (the SDKs add or drop the slash) x where the key is.
PATHS = ["/sourceConfig", "/sourceConfig/", "//sourceConfig"]


@both_stores
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("where", ["basic", "query", "x-write-key"])
def test_paths_and_key_places(client, key, path, where):
    headers = basic(key) if where == "basic" else {"X-Write-Key": key} if where == "x-write-key" else {}
    query = f"writeKey={key}" if where == "query" else "p=android"
    # PATH_INFO set directly: the test client would read `//sourceConfig` as a host name.
    response = client.get("/", headers=headers, environ_overrides={"PATH_INFO": path, "QUERY_STRING": query})
    assert response.status_code == 200, response.data
    assert json.loads(response.data)["source"]["id"].startswith("drengr_src_")


@both_stores
def test_the_source_id_is_stable_per_key_and_differs_between_keys(client, store, key):
    other = store.create_key("acme", "publishable")
    first, again, second = (
        json.loads(client.get(f"/sourceConfig?writeKey={k}").data)["source"]["id"] for k in (key, key, other)
    )
    assert first == again != second


@both_stores
def test_every_bad_key_is_the_uniform_401_and_stores_nothing(client, store, key, db_path):
    secret = store.create_key("acme", "secret")
    revoked = store.create_key("acme", "publishable")
    store.revoke_key(revoked)
    requests = {
        "no-key": ("", {}),
        "unknown-query": ("writeKey=drengr_pk_nope", {}),
        "unknown-basic": ("", basic("drengr_pk_nope")),
        "revoked": ("", basic(revoked)),
        "secret": (f"writeKey={secret}", {}),
        "not-basic": ("", {"Authorization": f"Bearer {key}"}),
        "bad-base64": ("", {"Authorization": "Basic %%%"}),
        # Basic is read first: a good key in the query does not rescue a bad header.
        "basic-bad-query-good": (f"writeKey={key}", basic("drengr_pk_nope")),
    }
    answers = {}
    for name, (query, headers) in requests.items():
        response = client.get(f"/sourceConfig/?{query}", headers={"Origin": ORIGIN, **headers})
        answers[name] = (response.status_code, response.data, sorted(response.headers.items()))
    ingest = client.post("/v1/track", data=b"{}", headers={"Origin": ORIGIN})
    first = answers["no-key"]
    assert first[:2] == (401, UNAUTHORIZED)
    assert (ingest.status_code, ingest.data) == first[:2]  # the very same 401 as on the ingest routes
    assert {name: answer == first for name, answer in answers.items()} == {name: True for name in answers}
    assert read_rows(db_path) == []


@both_stores
def test_preflight_allows_get_with_basic_auth(client):
    response = client.options(
        "/sourceConfig/",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"},
    )  # fmt: skip
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "GET" in response.headers["Access-Control-Allow-Methods"].split(", ")
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].split(", ")
    assert int(response.headers["Access-Control-Max-Age"]) > 0


@both_stores
def test_head_probe_of_analytics_js(client, key):
    """v3's ad-block probe: ``HEAD {sourceConfigUrl}?view=ad`` with its Basic header."""
    response = client.head("/sourceConfig/?view=ad", headers=basic(key))
    assert (response.status_code, response.data) == (200, b"")


@both_stores
def test_under_a_prefix(store, key, db_path):
    from drengr.web import Config, create_app

    app = create_app(Config(db=str(db_path), prefix="/rudder"), store=store)
    try:
        client = app.test_client()
        assert client.get(f"/rudder/sourceConfig/?writeKey={key}").status_code == 200
        assert client.get(f"/sourceConfig/?writeKey={key}").status_code == 404  # outside the mount
    finally:
        app.extensions["drengr"].drops.close()


@both_stores
def test_the_key_in_the_query_is_not_logged(client, key, caplog):
    caplog.set_level("INFO", logger="drengr.access")
    assert client.get(f"/sourceConfig/?p=npm&writeKey={key}").status_code == 200
    assert client.get("/sourceConfig/?writeKey=drengr_pk_guess").status_code == 401
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "drengr.access"]
    assert [(line["path"], line["status"], line["tenant"]) for line in lines] == [
        ("/sourceConfig", 200, "acme"),
        ("/sourceConfig", 401, None),
    ]
    assert key not in caplog.text and "drengr_pk_guess" not in caplog.text


def test_document_is_pure_and_names_the_key():
    document = json.loads(source_config_document("drengr_pk_x"))
    assert document == json.loads(source_config_document("drengr_pk_x"))
    assert document["source"]["writeKey"] == "drengr_pk_x"
    assert document["source"]["updatedAt"].endswith("Z")


@both_stores
@pytest.mark.parametrize("path", ["/sourceConfig", "/sourceConfig/"])
def test_other_methods_get_the_json_405_naming_get(client, path):
    response = client.put(path, data=b"{}")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert response.get_json()["code"] == "method_not_allowed"
