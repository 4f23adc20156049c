"""Golden wire tests: RudderStack's mobile SDKs, whose requests are built here from their source.

The Android, iOS, Kotlin and Swift SDKs (and Flutter and React Native, which
wrap them) cannot run in this suite. What they send is fixed by their source,
and rebuilt here field for field:

* rudder-sdk-android 1.x (``RudderMessage``, ``FlushUtils``): ``POST
  {dataPlaneUrl}/v1/batch``, Basic auth, an ``AnonymousId`` header (base64),
  ``{"sentAt": …, "batch": [...]}``; each message has ``messageId``
  ("<ms>-<uuid>"), ``channel`` "mobile", ``originalTimestamp``,
  ``anonymousId``, ``integrations`` {"All": true}, and ``context`` with
  ``app``, ``device``, ``library`` (com.rudderstack.android.sdk.core),
  ``os``, ``screen``, ``network``, ``locale``, ``timezone`` and ``traits``.
  An identify carries its traits only in ``context.traits`` (``id`` is the
  user id), a screen its name as ``event`` and ``properties.name``.
  1.x sends gzip (``Content-Encoding: gzip``) from 1.20 on.
* rudder-sdk-ios 1.x (``RSMessage``): the same shape, library
  rudder-ios-library, ``os`` iOS, a UUID ``messageId``, not gzipped.
* the Kotlin and Swift SDKs 1.x: the same shape, gzip by default, library
  com.rudderstack.android.sdk / rudder-ios-library.

Their source-config fetch is tests/test_source_config.py's. The expected rows
are written out by hand from docs/mapping.md.
"""

import base64
import calendar
import gzip
import json
import time
from typing import Any

import pytest

from .support.app import ENGINES, basic, read_rows

pytestmark = [
    pytest.mark.parametrize("engine", ENGINES, indirect=True),
    pytest.mark.usefixtures("mapper_twin"),  # the compiled mapper and the pure twin
    pytest.mark.dated,
]

RECEIVED = "2026-12-05T10:00:05.000Z"
ORIGINAL = "2026-12-05T10:00:00.000Z"  # when the app made the calls
SENT = "2026-12-05T10:00:02.000Z"  # when the SDK flushed: the device clock is 3 s behind ours
OCCURRED = "2026-12-05T10:00:03.000Z"  # received - (sent - original): docs/mapping.md "Event mapping"
ANONYMOUS_ID = "8d872292709c6fbe"


@pytest.fixture
def receipt_ms() -> Any:
    when = calendar.timegm(time.strptime(RECEIVED, "%Y-%m-%dT%H:%M:%S.000Z")) * 1000
    return lambda: when


def context(library: str, version: str, os_name: str, traits: dict[str, Any]) -> dict[str, Any]:
    return {
        "app": {"build": "42", "name": "Shop", "namespace": "com.example.shop", "version": "3.2.1"},
        "device": {"id": ANONYMOUS_ID, "manufacturer": "Google", "model": "Pixel 8", "name": "husky"},
        "library": {"name": library, "version": version},
        "locale": "en-US",
        "network": {"carrier": "", "bluetooth": False, "cellular": False, "wifi": True},
        "os": {"name": os_name, "version": "14" if os_name == "Android" else "17.4"},
        "screen": {"density": 420, "height": 2205, "width": 1080},
        "timezone": "Europe/Oslo",
        "traits": traits,
        "sessionId": 1733392800,
    }


def messages(library: str, version: str, os_name: str, uuid_ids: bool) -> list[dict[str, Any]]:
    """The calls an app makes after ``identify``, as the SDK queues them."""
    traits = {"anonymousId": ANONYMOUS_ID, "id": "user_123", "email": "ada@example.com", "plan": "pro"}
    ctx = context(library, version, os_name, traits)

    def message(n: int, **fields: Any) -> dict[str, Any]:
        message_id = f"6b0c3e2a-0000-4000-8000-00000000000{n}" if uuid_ids else f"1764928800000-{n}"
        return {
            "messageId": message_id, "channel": "mobile", "context": ctx, "originalTimestamp": ORIGINAL,
            "anonymousId": ANONYMOUS_ID, "userId": "user_123", "integrations": {"All": True}, **fields,
        }  # fmt: skip

    return [
        message(1, type="identify", event="identify"),  # traits only in context.traits
        message(2, type="track", event="Order Completed",
                properties={"order_id": "o_1", "revenue": 9.99, "currency": "USD"}),
        message(3, type="screen", event="Home", properties={"name": "Home", "tab": "feed"}),
        message(4, type="group", groupId="acme_inc", traits={"plan": "enterprise", "seats": 20}),
        message(5, type="alias", previousId="anon_42"),
    ]  # fmt: skip


# SDK -> (library name, version, os, uuid message ids, gzip)
SDKS = {
    "rudder-sdk-android-1": ("com.rudderstack.android.sdk.core", "1.27.1", "Android", False, True),
    "rudder-sdk-ios-1": ("rudder-ios-library", "1.31.1", "iOS", True, False),
    "rudder-sdk-kotlin": ("com.rudderstack.android.sdk", "1.0.0", "Android", True, True),
    "rudder-sdk-swift": ("rudder-ios-library", "1.0.0", "iOS", True, True),
}

# event_name -> (event_type, dims, measures); every row also gets the context's app and os.
EXPECTED = {
    # From context.traits, flattened like any traits: email is PII; the SDK's own anonymousId and id stay.
    "identify": ("identify", {"plan": "pro", "anonymousId": ANONYMOUS_ID, "id": "user_123"}, {}),
    "order_completed": ("track", {"_source_event_name": "Order Completed", "order_id": "o_1", "currency": "USD"},
                        {"revenue": 9.99}),
    "screen_viewed": ("screen", {"name": "Home", "tab": "feed"}, {}),
    "group": ("group", {"group_id": "acme_inc", "plan": "enterprise"}, {"seats": 20}),
    "alias": ("alias", {"previous_id": "anon_42"}, {}),
}  # fmt: skip


@pytest.mark.parametrize("sdk", list(SDKS))
def test_mobile_batch_lands_as_the_mapping_says(client, key, db_path, sdk):
    library, version, os_name, uuid_ids, gzipped = SDKS[sdk]
    body = json.dumps({"sentAt": SENT, "batch": messages(library, version, os_name, uuid_ids)}).encode()
    headers = {
        **basic(key),
        "Content-Type": "application/json; charset=utf-8",
        "AnonymousId": base64.b64encode(ANONYMOUS_ID.encode()).decode(),
    }
    if gzipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    response = client.post("/v1/batch", data=body, headers=headers)
    assert (response.status_code, response.data) == (200, b'{"success": true}')

    rows = read_rows(db_path)
    assert [row["event_name"] for row in rows] == list(EXPECTED)
    os_text = f"{os_name} {'14' if os_name == 'Android' else '17.4'}"
    for row in rows:
        event_type, dims, measures = EXPECTED[row["event_name"]]
        assert row["event_type"] == event_type
        assert (row["tenant_id"], row["external_id"], row["install_id"]) == ("acme", "user_123", ANONYMOUS_ID)
        assert row["dims"] == {**dims, "app_version": "3.2.1", "os": os_text, "device_model": "Pixel 8"}, row
        assert row["measures"] == measures
        assert row["library"] == f"{library} {version}"
        assert (row["occurred_at"], row["received_at"]) == (OCCURRED, RECEIVED)
        assert "ada@example.com" not in json.dumps(row)


@pytest.mark.parametrize("sdk", list(SDKS))
def test_mobile_batch_resent_after_a_lost_answer_is_stored_once(client, key, db_path, sdk):
    """A flush whose answer was lost is sent again whole (the SDKs keep the rows until a 200)."""
    library, version, os_name, uuid_ids, _gzipped = SDKS[sdk]
    body = json.dumps({"sentAt": SENT, "batch": messages(library, version, os_name, uuid_ids)}).encode()
    for _attempt in range(2):
        assert client.post("/v1/batch", data=body, headers=basic(key)).status_code == 200
    assert len(read_rows(db_path)) == len(EXPECTED)
