"""Talking to the app in-process: post with Basic auth, read back every stored row (either engine).

The fixtures that build the app and its store are in tests/conftest.py; these
are the plain helpers tests and bench/ import.
"""

import base64
import json
import sqlite3
from typing import Any

from drengr.store import is_postgres_url

TENANT = "acme"
COLUMNS = "tenant_id, event_id, event_name, event_type, external_id, install_id, occurred_at, received_at, dims, measures, library"
# A contract module runs against both stores with:
#     pytestmark = pytest.mark.parametrize("engine", ENGINES, indirect=True)
ENGINES = ["sqlite", "postgresql"]


def basic(key: str, password: str = "") -> dict[str, str]:
    token = base64.b64encode(f"{key}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def post(client: Any, path: str, body: Any, key: str | None = None, **headers: str) -> Any:
    """POST ``body`` (dict → JSON, bytes as-is) with Basic auth when ``key`` is given."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(basic(key) if key else {})}
    all_headers.update({name.replace("_", "-"): value for name, value in headers.items()})
    return client.post(path, data=data, headers=all_headers)


def read_rows(db_path: Any) -> list[dict[str, Any]]:
    """Every semantic_events row, in insertion order, with dims/measures decoded (either engine)."""
    if is_postgres_url(str(db_path)):
        from .postgres import pg_rows

        return pg_rows(str(db_path))
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in conn.execute(f"SELECT {COLUMNS} FROM semantic_events ORDER BY seq")]
    finally:
        conn.close()
    for row in rows:
        row["dims"] = json.loads(row["dims"])
        row["measures"] = json.loads(row["measures"])
    return rows
