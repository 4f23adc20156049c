"""The one answer of RudderStack's control plane a data plane needs: a source config.

Every RudderStack SDK but the server-side ones fetches
``GET {controlPlaneUrl}/sourceConfig`` before it sends anything, and only
sends once the answer parses. This module writes the smallest answer every
one of them accepts: an enabled source with no destinations, so each SDK
sends every call to its data plane (this server) and loads nothing else.
Pure: no clock (``updatedAt`` is a constant), the key and its owner are
passed in.

Fields, and the SDK whose source requires each:

- ``source.id`` (non-null), ``source.config`` (an object) and
  ``source.destinations`` (an array): @rudderstack/analytics-js v3
  (``isValidSourceConfig``) and rudder-sdk-js v2 (``processResponse`` reads
  ``source.config`` for error reporting and walks ``source.destinations``).
- ``source.enabled`` true: rudder-sdk-android and rudder-sdk-ios stop
  sending when it is false (and read a missing one as false).
- ``source.id``, ``name``, ``writeKey``, ``workspaceId``, ``updatedAt``
  (non-null strings) and ``enabled``: the Kotlin and Swift SDKs' decoders
  (``RudderServerConfigSource``) fail without any of them.
- ``source.config.statsCollection`` with errors and metrics disabled: the
  SDKs would otherwise report their own errors and metrics to RudderStack's
  cloud; a self-hosted data plane sends nothing anywhere else.
- ``source.dataplanes`` empty: the SDK keeps the data-plane URL it was
  configured with (v3's ``resolveDataPlaneUrl``, Android's residency
  lookup) instead of a cloud region's.

The Flutter and React Native SDKs wrap the Android, iOS and JavaScript
SDKs and fetch the same document.
"""

import json

from .auth import hash_key

# The SDKs only store and compare it; a fixed instant keeps this module clock-free.
UPDATED_AT = "2000-01-01T00:00:00.000Z"
WORKSPACE_ID = "drengr"


def source_id(write_key: str) -> str:
    """A stable id for the key's source that says nothing the key does not (not the tenant's name)."""
    return "drengr_src_" + hash_key(write_key)[:20]


def source_config_document(write_key: str) -> bytes:
    """The ``/sourceConfig`` answer for an active publishable ``write_key``."""
    document = {
        "isHosted": False,
        "source": {
            "id": source_id(write_key),
            "name": "drengr",
            "writeKey": write_key,
            "workspaceId": WORKSPACE_ID,
            "enabled": True,
            "deleted": False,
            "updatedAt": UPDATED_AT,
            "config": {
                "statsCollection": {
                    "errors": {"enabled": False},
                    "metrics": {"enabled": False},
                },
            },
            "dataplanes": {},
            "destinations": [],
        },
    }
    return json.dumps(document).encode()
