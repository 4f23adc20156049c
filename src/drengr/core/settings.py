"""The analytics.js settings document that points analytics-next back at us.

analytics-next fetches ``{cdnURL}/v1/projects/{writeKey}/settings`` and sends
events to ``{protocol}://{apiHost}/{t,p,i,…}``; with cdnURL set to this
server, a page needs no inline settings. Pure: host and scheme are passed in.
"""

import json


def settings_document(write_key: str, host: str, scheme: str, script_name: str) -> bytes:
    api_host = f"{host}{script_name.rstrip('/')}/v1"
    document = {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": scheme,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"componentTypes": []},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        # analytics-next's own telemetry: we would only throw it away (/v1/m stores nothing,
        # docs/mapping.md "Routes").
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
    return json.dumps(document).encode()
