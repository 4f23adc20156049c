"""The PII allow-list: exact key names kept although they contain a fragment, per server and per tenant.

docs/operating.md "PII: what is left out, and keeping a key": the substring rule stays the contract; `--pii-allow`
(DRENGR_PII_ALLOW) names keys the server keeps anyway, and `drengr tenants set
NAME --pii-allow` adds a tenant's own, stored with the tenant (SQLite and
PostgreSQL). The table runs through the compiled mapper and its twin alike.
"""

import json
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from drengr.core.auth import hash_key
from drengr.core.limits import DEFAULT_PII_SUBSTRINGS
from drengr.core.timestamps import parse_ms
from drengr.mapping import _mapping_py
from drengr.store import open_store
from drengr.web import Config, create_app

from .support.app import ENGINES, TENANT, post, read_rows
from .support.mappers import MAPPERS

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)

RECEIVED_MS = parse_ms("2026-11-26T02:50:53.123Z")
# The "Product Viewed": every key holds a default fragment.
PRODUCT = ("name", "product_name", "username", "tokens_used", "card_type", "filename")

ALLOW_CASES = [  # (the server's allow-list, the tenant's, the keys kept of PRODUCT, at every depth)
    pytest.param((), (), (), id="nothing-allowed"),
    pytest.param(("product_name",), (), ("product_name",), id="server-one-name"),
    pytest.param((), ("product_name",), ("product_name",), id="tenant-one-name"),
    pytest.param(("product_name",), ("card_type", "filename"), ("product_name", "card_type", "filename"),
                 id="server-and-tenant-add-up"),
    pytest.param(("Product_Name",), (), (), id="exact-case-only"),
    pytest.param(("product",), (), (), id="a-fragment-of-the-name-is-not-the-name"),
    pytest.param(("product_name_x",), (), (), id="a-longer-name-is-not-the-name"),
    pytest.param(("plan",), (), (), id="allowing-a-non-pii-key-changes-nothing"),
    pytest.param(PRODUCT, (), PRODUCT, id="all-of-them"),
]  # fmt: skip


def mapped(module: ModuleType, server: tuple[str, ...], tenant: tuple[str, ...]) -> tuple[Any, Any, Any]:
    """(dims, measures, stripped) of one track with PRODUCT at the top, nested and in an array."""
    properties: dict[str, Any] = dict.fromkeys(PRODUCT, "v")
    properties["obj"] = dict.fromkeys(PRODUCT, 1)
    properties["list"] = [dict.fromkeys(PRODUCT, 2)]
    properties["plan"] = "pro"
    body = json.dumps({"type": "track", "event": "product_viewed", "userId": "u", "properties": properties})
    mapper = module.Mapper(DEFAULT_PII_SUBSTRINGS, server)
    rows, _, stripped = mapper.parse(body.encode()).map(None, RECEIVED_MS, TENANT, tenant)
    [row] = rows
    return json.loads(row[8]), json.loads(row[9]), stripped


@pytest.mark.parametrize("mapper_module", MAPPERS)
@pytest.mark.parametrize(("server", "tenant", "kept"), ALLOW_CASES)
def test_allowed_names_are_kept_at_every_depth(mapper_module, server, tenant, kept):
    dims, measures, stripped = mapped(mapper_module, server, tenant)
    kept_in_order = [key for key in PRODUCT if key in kept]
    assert dims == {
        **dict.fromkeys(kept_in_order, "v"),
        "list": json.dumps([dict.fromkeys(kept_in_order, 2)], separators=(",", ":")),
        "plan": "pro",
    }
    assert measures == {f"obj.{key}": 1 for key in kept_in_order}
    lost = [key for key in PRODUCT if key not in kept]
    if lost:
        names = tuple(dict.fromkeys([*lost, *(f"obj.{key}" for key in lost)]))[:5]
        assert stripped == {"pii_key_removed": (3 * len(lost), names)}
    else:
        assert stripped == {}


@pytest.mark.parametrize("mapper_module", MAPPERS)
def test_a_tenant_list_lasts_one_map_only(mapper_module):
    """The compiled mapper keeps the tenant's list per call: the next tenant's event does not inherit it."""
    assert mapped(mapper_module, (), ("username",))[0]["username"] == "v"
    assert "username" not in mapped(mapper_module, (), ())[0]


def test_twin_and_compiled_agree_on_allowed_non_ascii_names():
    compiled = MAPPERS[0].values[0]
    if compiled is None:
        pytest.skip(
            "drengr.mapping._mapping_c did not load: runs wherever it does, as in CI (test_fast_twin.py fails loudly)"
        )
    body = json.dumps(
        {"type": "track", "event": "e", "userId": "u", "properties": {"Straßenname": 1, "Émail": 2}}
    )
    results = [
        module.Mapper(("name", "mail"), ("Émail",)).parse(body.encode()).map(None, RECEIVED_MS, TENANT)
        for module in (compiled, _mapping_py)
    ]
    assert results[0] == results[1]
    assert json.loads(results[0][0][0][9]) == {"Émail": 2}


# ---------------------------------------------------------------- over HTTP, both stores


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_server_and_tenant_lists_over_http(db_path, store, receipt_ms):
    """The server keeps product_name for everyone; acme also keeps username; globex does not."""
    app = create_app(Config(db=str(db_path), pii_allow=("product_name",)), store=store, clock_ms=receipt_ms)
    client = app.test_client()
    acme, globex = store.create_key(TENANT), store.create_key("globex")
    store.set_pii_allow(TENANT, ("username", "tokens_used"))
    assert store.pii_allow(TENANT) == ("username", "tokens_used") and store.pii_allow("globex") == ()
    event = {
        "type": "track",
        "event": "product_viewed",
        "userId": "u",
        "properties": dict.fromkeys(PRODUCT, "v"),
    }
    try:
        for key in (acme, globex):
            assert post(client, "/v1/track", event, key).status_code == 200
    finally:
        app.extensions["drengr"].drops.close()
    dims = {row["tenant_id"]: row["dims"] for row in read_rows(db_path)}
    assert dims == {
        TENANT: {"product_name": "v", "username": "v", "tokens_used": "v"},
        "globex": {"product_name": "v"},
    }


def drengr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drengr", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_tenants_set_pii_allow_is_stored_with_the_tenant(db_path, engine):
    where = ["--db", str(db_path)] if engine == "sqlite" else ["--store", str(db_path)]
    created = drengr("keys", "create", "--tenant", TENANT, *where)
    assert created.returncode == 0, created.stderr
    result = drengr("tenants", "set", TENANT, "--pii-allow", "username, tokens_used,username", *where)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "Tenant 'acme': keys kept despite the PII list: username, tokens_used.\n"
    store = open_store(str(db_path))
    try:
        assert store.pii_allow(TENANT) == ("username", "tokens_used")
        record = store.lookup_key(hash_key(created.stdout.strip()))
        assert record is not None and record.pii_allow == ("username", "tokens_used")
    finally:
        store.close()
    cleared = drengr("tenants", "set", TENANT, "--pii-allow", "", *where)
    assert cleared.stderr == "Tenant 'acme': keys kept despite the PII list: none beyond the server's.\n"
    store = open_store(str(db_path))
    try:
        assert store.pii_allow(TENANT) == ()
    finally:
        store.close()


def test_serve_help_lists_the_default_fragments_and_the_allow_list():
    result = drengr("serve", "--help")
    text = " ".join(result.stdout.split())
    assert ",".join(DEFAULT_PII_SUBSTRINGS) in text
    assert "--pii-allow NAMES" in text and "DRENGR_PII_ALLOW" in text


# ---------------------------------------------------------------- which event lost which keys

STRIPPED_EVENT_CASES = [  # (the batch's items, the events named: (event_id, ((reason, key), ...)))
    pytest.param(
        [{"messageId": "m1", "properties": {"email": "a@b", "plan": "pro", "obj": {"Phone": 1}}},
         {"messageId": "m2", "properties": {"plan": "pro"}}],
        (("m1", (("pii_key_removed", "email"), ("pii_key_removed", "obj.Phone"))),),
        id="one-event-of-two",
    ),
    pytest.param(
        [{"messageId": "m1", "properties": {"email": "a"}}, {"messageId": "m2", "properties": {"email": "b"}}],
        (("m1", (("pii_key_removed", "email"),)), ("m2", (("pii_key_removed", "email"),))),
        id="the-same-key-in-each-event",
    ),
    pytest.param(
        [{"messageId": "gone", "properties": {"email": "a"}, "userId": None, "anonymousId": None},
         {"messageId": "m2", "properties": {"k" * 70: 1}}],
        (("m2", (("key_truncated", "k" * 64),)),),
        id="a-dropped-item-is-not-named-other-reasons-are",
    ),
    pytest.param(
        [{"messageId": f"m{i}", "properties": {"email": "a"}} for i in range(7)],
        tuple((f"m{i}", (("pii_key_removed", "email"),)) for i in range(5)),
        id="the-first-five-events",
    ),
    pytest.param(
        [{"messageId": "m1", "properties": {f"email{i}": i for i in range(7)}}],
        (("m1", tuple(("pii_key_removed", f"email{i}") for i in range(5))),),
        id="five-names-an-event",
    ),
]  # fmt: skip


@pytest.mark.parametrize("mapper_module", MAPPERS)
@pytest.mark.parametrize(("items", "named"), STRIPPED_EVENT_CASES)
def test_the_mappers_name_which_event_lost_which_keys(mapper_module, items, named):
    batch = [{"type": "track", "event": "e", "userId": "u", **item} for item in items]
    document = mapper_module.Mapper(DEFAULT_PII_SUBSTRINGS).parse(json.dumps({"batch": batch}).encode())
    document.map(None, RECEIVED_MS, TENANT)
    assert document.stripped_events == named


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_drops_name_the_event_and_its_keys_never_a_value(db_path, store, receipt_ms):
    app = create_app(Config(db=str(db_path)), store=store, clock_ms=receipt_ms)
    client = app.test_client()
    key, secret = store.create_key(TENANT), store.create_key(TENANT, "secret")
    batch = [
        {"type": "track", "event": "e", "userId": "u", "messageId": "m-kept", "properties": {"plan": "pro"}},
        {"type": "track", "event": "e", "userId": "u", "messageId": "m-lost",
         "properties": {"email": "VALUE-9d1", "username": "VALUE-9d1", "plan": "pro"}},
    ]  # fmt: skip
    try:
        assert post(client, "/v1/batch", {"batch": batch}, key).status_code == 200
        answer = client.get("/v1/drops", headers={"Authorization": f"Bearer {secret}"})
    finally:
        app.extensions["drengr"].drops.close()
    assert answer.status_code == 200 and "VALUE-9d1" not in answer.get_data(as_text=True)
    [sample] = [s for s in answer.get_json()["recent"] if s["reason"] == "pii_key_removed"]
    assert sample["keys"] == ["email", "username"]
    assert sample["events"] == [{"event_id": "m-lost", "keys": ["email", "username"]}]
