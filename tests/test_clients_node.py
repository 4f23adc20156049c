"""Live: @segment/analytics-node, @rudderstack/rudder-sdk-node and @jitsu/js (under Node) against `drengr serve`.

The snippets of docs/sdks.md run verbatim under node (the packages pinned in
tests/clients/node/package.json, installed by .ci/run with `npm ci`); the rows
are checked per docs/mapping.md. tests/clients/node/send-one.js sends one event for the
wrong-key and store-outage cases; requests are counted from the server's
access log.
"""

import pytest

from drengr import clock
from tests.clients.harness import (
    BUSY_TIMEOUT_ENV,
    CANONICAL,
    NODE_DIR,
    assert_canonical_rows,
    finish_node,
    live_server,
    personalise,
    require_node,
    run_node,
    sdk_snippet,
    start_node,
    store_outage,
)

pytestmark = [pytest.mark.clients, pytest.mark.usefixtures("node")]

SEND_ONE = NODE_DIR / "send-one.js"
UNKNOWN_KEY = "drengr_pk_" + "0" * 32  # well-formed, never issued
# A generous hang guard, not a speed limit (speed is bench/'s): a client that never
# finishes fails after this long instead of hanging the suite.
HANG_GUARD_SECONDS = 60

JITSU_EXPECTED = {
    name: shape
    for name, shape in CANONICAL.items()
    if name not in ("screen_viewed", "alias")  # @jitsu/js has neither
}


@pytest.fixture
def node() -> None:
    require_node()


@pytest.mark.parametrize(
    ("tell", "options"),
    [
        pytest.param("@segment/analytics-node", {}, id="segment-analytics-node"),
        pytest.param("@rudderstack/rudder-sdk-node", {}, id="rudder-sdk-node"),
        pytest.param(
            "@jitsu/js",
            {"expected": JITSU_EXPECTED, "install_id": None},
            id="jitsu-js",
        ),
    ],
)
def test_sdk_snippet_lands_every_call_once(tmp_path, tell, options):
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        started = clock.now()
        run_node(personalise(sdk_snippet("js", tell), server, key))
        server.wait_quiet(0.3)
        assert_canonical_rows(server, "acme", started, **options)


def test_jitsu_page_name_lands(tmp_path):
    """@jitsu/js sends `page('Pricing', …)` as properties.name only: the mapper takes it from there."""
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        run_node(personalise(sdk_snippet("js", "@jitsu/js"), server, key))
        server.wait_quiet(0.3)
        [page] = [row for row in server.rows() if row["event_name"] == "page_viewed"]
        assert page["dims"].get("name") == "Pricing", page


@pytest.mark.parametrize("client", ["segment-node", "rudder-node", "jitsu", "jitsu-s2s"])
def test_wrong_key_gets_one_401_and_no_retry(tmp_path, client):
    key = UNKNOWN_KEY + (":x" if client.startswith("jitsu") else "")
    with live_server(tmp_path) as server:
        # run_node returns once the library has given up: a retry would be in statuses by then.
        env = {"DRENGR_HOST": server.url, "DRENGR_KEY": key}
        report = run_node(SEND_ONE, client, env=env, timeout=HANG_GUARD_SECONDS)
        server.wait_quiet(1.5)
        assert server.statuses() == [401], report
        assert report["errors"], report  # the library told its caller
        assert server.rows() == []


@pytest.mark.parametrize("client", ["segment-node", "rudder-node"])
def test_store_outage_502_is_retried_and_stored_once(tmp_path, client):
    with live_server(tmp_path, BUSY_TIMEOUT_ENV) as server:
        key = server.create_key("acme")
        env = {"DRENGR_HOST": server.url, "DRENGR_KEY": key, "MESSAGE_ID": "m-outage"}
        with store_outage(server.db):
            sending = start_node(SEND_ONE, client, env=env)
            server.wait_for(
                lambda log: any(e["method"] == "POST" for e in log), 40, "the first attempt's answer"
            )
            assert server.statuses() == [502]  # the store gave up on the lock
        report = finish_node(sending, 60)
        server.wait_quiet(1.0)
        statuses = server.statuses()
        assert statuses[0] == 502 and statuses[-1] == 200 and set(statuses) == {200, 502}, statuses
        assert report["errors"] == [], report
        [row] = server.rows()
        assert (row["tenant_id"], row["event_id"]) == ("acme", "m-outage")
        assert row["event_name"] == "order_completed"
        assert row["measures"] == {"revenue": 19.99} and row["dims"]["order_id"] == "o_2"


def test_jitsu_does_not_retry_a_502(tmp_path):
    """@jitsu/js has no retry at all: an event sent during a store outage is lost (docs/sdks.md says so)."""
    with live_server(tmp_path, BUSY_TIMEOUT_ENV) as server:
        key = server.create_key("acme") + ":x"
        env = {"DRENGR_HOST": server.url, "DRENGR_KEY": key}
        with store_outage(server.db):
            sending = start_node(SEND_ONE, "jitsu-s2s", env=env)
            server.wait_for(
                lambda log: any(e["method"] == "POST" for e in log), 40, "the first attempt's answer"
            )
            assert server.statuses() == [502]
        report = finish_node(sending, 30)
        server.wait_quiet(1.5)
        assert server.statuses() == [502]
        assert report["statuses"] == [502] and "502" in report["errors"][0], report
        assert server.rows() == []
