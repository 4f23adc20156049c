"""Live: segment-analytics-python and rudder-sdk-python against a real `drengr serve`.

Each snippet of docs/sdks.md runs verbatim (fresh interpreter, real key and port) and
the rows are checked; then, per library, a wrong key (one 401, no retry) and a
real store outage (SQLite's write lock held by another connection: 502, the
library retries, the retry is stored once). Requests are counted from the
server's access log.
"""

import threading
from collections.abc import Callable
from typing import Any

import pytest

from drengr import clock
from tests.clients.harness import (
    BUSY_TIMEOUT_ENV,
    assert_canonical_rows,
    live_server,
    personalise,
    run_python,
    sdk_snippet,
    store_outage,
)

pytestmark = pytest.mark.clients

UNKNOWN_KEY = "drengr_pk_" + "0" * 32  # well-formed, never issued


def segment_client(key: str, host: str, errors: list[Any], **options: Any) -> Any:
    from segment.analytics import Client

    return Client(write_key=key, host=host, on_error=lambda e, batch: errors.append(e), **options)


def rudder_client(key: str, host: str, errors: list[Any], **options: Any) -> Any:
    from rudderstack.analytics import Client

    return Client(key, host=host, on_error=lambda e, batch: errors.append(e), **options)


# id, the snippet's tell-tale line, how to build the library's Client
CLIENTS = [
    pytest.param("import segment.analytics as analytics", segment_client, id="segment-analytics-python"),
    pytest.param("import rudderstack.analytics as rudder_analytics", rudder_client, id="rudder-sdk-python"),
]


def flush_within(client: Any, seconds: float) -> None:
    """client.flush() blocks until the library delivered or gave up; it must do one or the other in time."""
    flushing = threading.Thread(target=client.flush, daemon=True)
    flushing.start()
    flushing.join(seconds)
    assert not flushing.is_alive(), f"the library was still sending after {seconds} s"


@pytest.mark.parametrize(("snippet", "make_client"), CLIENTS)
def test_sdk_snippet_lands_every_call_once(tmp_path, snippet: str, make_client: Callable[..., Any]):
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        started = clock.now()
        run_python(personalise(sdk_snippet("python", snippet), server, key))
        server.wait_quiet(0.3)
        rows = assert_canonical_rows(server, "acme", started)
    assert all(len(row["event_id"]) == 36 for row in rows)  # the library's messageId, a UUID


@pytest.mark.parametrize(("snippet", "make_client"), CLIENTS)
def test_wrong_key_gets_one_401_and_no_retry(tmp_path, snippet: str, make_client: Callable[..., Any]):
    with live_server(tmp_path) as server:
        errors: list[Any] = []
        client = make_client(UNKNOWN_KEY, server.url, errors)
        client.track(user_id="user_123", event="Order Completed", properties={"revenue": "9.99"})
        flush_within(client, 20)
        server.wait_quiet(1.5)
        assert server.statuses() == [401]
        assert [getattr(e, "status", None) for e in errors] == [401]
        assert server.rows() == []
        client.shutdown()


@pytest.mark.parametrize(("snippet", "make_client"), CLIENTS)
def test_store_outage_502_is_retried_and_stored_once(tmp_path, snippet: str, make_client: Callable[..., Any]):
    with live_server(tmp_path, BUSY_TIMEOUT_ENV) as server:
        key = server.create_key("acme")
        errors: list[Any] = []
        client = make_client(key, server.url, errors, max_retries=3)
        with store_outage(server.db):
            client.track(
                user_id="user_123", event="Order Completed", message_id="m-outage",
                properties={"order_id": "o_2", "revenue": "19.99", "currency": "EUR"},
            )  # fmt: skip
            flushing = threading.Thread(target=client.flush, daemon=True)
            flushing.start()
            server.wait_for(
                lambda log: any(e["method"] == "POST" for e in log), 40, "the first attempt's answer"
            )
            assert server.statuses() == [502]  # the store gave up on the lock
        # The lock is gone: the library's retry (already waiting on it, or soon) lands.
        flushing.join(30)
        assert not flushing.is_alive()
        server.wait_quiet(1.0)
        statuses = server.statuses()
        assert statuses[0] == 502 and statuses[-1] == 200 and set(statuses) == {200, 502}, statuses
        [row] = server.rows()
        assert (row["tenant_id"], row["event_id"]) == ("acme", "m-outage")
        assert row["event_name"] == "order_completed"
        assert row["measures"] == {"revenue": 19.99}
        assert errors == []
        client.shutdown()


def test_rudder_python_batches_over_500kb_get_400_unless_upload_size_is_capped(tmp_path):
    """rudder-sdk-python packs up to 100 events / 4 MB a request; drengr caps a body at 500 KB (decompressed).

    The default loses the batch (400 is not retried: one request); docs/sdks.md's
    `Client(..., upload_size=15)` keeps every request under the cap.
    """
    blob = "x" * 20_000  # 40 of these: ~800 KB of JSON, tiny once gzipped
    with live_server(tmp_path) as server:
        key = server.create_key("acme")
        errors: list[Any] = []
        default = rudder_client(key, server.url, errors)
        for n in range(40):
            default.track("user_123", "Note Saved", {"n": n, "body": blob})
        flush_within(default, 20)
        server.wait_quiet(1.0)
        # One batch, refused whole (should the batch window split it, the big part still is).
        refused = [e for e in server.requests() if e["status"] == 400]
        assert refused and all(e["error"] == "request_too_large" for e in refused), server.requests()
        assert 400 in [getattr(e, "status", None) for e in errors] and len(server.rows()) < 40
        default.shutdown()
        sent = len(server.requests())

        namespace: dict[str, Any] = {}
        snippet_line = personalise(sdk_snippet("python", "upload_size="), server, key)
        exec(snippet_line, namespace)
        capped = namespace["client"]
        for n in range(40):
            capped.track("user_123", "Note Saved", {"n": 100 + n, "body": blob})
        flush_within(capped, 30)
        server.wait_quiet(0.5)
        later = server.requests()[sent:]
        assert len(later) >= 3 and all(e["status"] == 200 for e in later), later
        rows = [row for row in server.rows() if row["measures"]["n"] >= 100]
        assert sorted(row["measures"]["n"] for row in rows) == list(range(100, 140))
        assert all(row["dims"]["body"] == blob[:256] for row in rows)  # a dim is cut to 256 characters
        capped.shutdown()
