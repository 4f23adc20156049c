"""What an app built from settings does with them, seen from outside Config.

tests/test_settings.py runs ``observe`` on apps the CLI builds, and in a child
process on the app wsgi.py builds from ``DRENGR_*`` (so this module imports
nothing of the tests but tests/support).
"""

import json
import logging
import os
import sqlite3
from typing import Any

from drengr.logs import JsonFormatter

from .app import post

PROBE_KEYS = ("secretish_v", "email", "plan")  # the property keys an event is sent with
ALLOW_PROBE = "email_opt_in"  # sent too: stripped by the default and the example fragments, unless allowed


def stripped(keys_kept: set[str]) -> list[str]:
    return [key for key in PROBE_KEYS if key not in keys_kept]


def observe(app: Any) -> dict[str, Any]:
    """What the built app does with its settings, seen from outside Config (wsgi.py's test runs this too)."""
    store = app.extensions["drengr"].store
    config = app.extensions["drengr"].config
    client = app.test_client()
    key = store.create_key("observer", "publishable")
    prefixes = {prefix for prefix in ("", config.prefix) if client.get(prefix + "/health").status_code == 200}
    properties = dict.fromkeys((*PROBE_KEYS, ALLOW_PROBE), "x")
    event = {"type": "track", "event": "Probe", "userId": "u", "properties": properties}
    prefix = prefixes.pop() if len(prefixes) == 1 else "(several)"
    assert post(client, prefix + "/v1/track", event, key).status_code == 200
    conn = sqlite3.connect(store.path)
    [(dims, received_at)] = conn.execute(
        "SELECT dims, received_at FROM semantic_events WHERE tenant_id = 'observer'"
    ).fetchall()
    conn.close()
    library = client.get(f"{prefix}/analytics.js/v1/{key}/analytics.min.js")
    reader = store._reader()
    writer_pid = store.writer_pid
    return {
        "db": store.path,
        "prefix": prefix,
        "durability": {2: "full", 1: "normal"}[reader.execute("PRAGMA synchronous").fetchone()[0]],
        "writer": "process" if writer_pid else "thread",
        "writer_cpus": sorted(os.sched_getaffinity(writer_pid)) if writer_pid else None,
        "busy_timeout_ms": reader.execute("PRAGMA busy_timeout").fetchone()[0],
        "dedup_window_days": store.dedup_window_days,
        "pii_substrings": stripped(set(json.loads(dims))),
        "pii_allow": [ALLOW_PROBE] if ALLOW_PROBE in json.loads(dims) else [],
        "retention": retention._age_ms // 1000 if (retention := app.extensions["drengr"].retention) else None,
        "analytics_js": library.get_data(as_text=True) if library.status_code == 200 else None,
        "received_at": received_at,
        # The process's logging as drengr set it up (wsgi.py; serve's own run is a process of its own).
        "log_level": logging.getLevelName(logging.getLogger().level).lower(),
        "log_format": "json"
        if any(isinstance(handler.formatter, JsonFormatter) for handler in logging.getLogger().handlers)
        else "text",
    }
