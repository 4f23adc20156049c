"""The SQLite engine under the shell: real lock contention → 503/502 and recovery; keys at rest."""

import json
import sqlite3
from typing import Any

from drengr.store import SQLiteStore
from drengr.web import Config, create_app

from .support.app import post, read_rows

SUCCESS = b'{"success": true}'


def error(text: str, code: str) -> bytes:
    return json.dumps({"error": text, "code": code, "message": text}).encode()


def item(**fields: Any) -> dict[str, Any]:
    return {"userId": "u1", "messageId": "m1", "event": "Clicked", **fields}


def test_health_503_when_store_cannot_write(tmp_path):
    path = tmp_path / "ro.db"
    store = SQLiteStore(str(path), busy_timeout_ms=50)
    app = create_app(Config(db=str(path)), store=store)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        assert app.test_client().get("/health").status_code == 503
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert app.test_client().get("/health").status_code == 200
    store.close()


def test_store_that_cannot_write_gives_502_then_recovers(db_path, key):
    """Another process holds the write lock past the busy timeout: 502, then the resend lands once."""
    store = SQLiteStore(str(db_path), busy_timeout_ms=100)
    client = create_app(Config(db=str(db_path)), store=store).test_client()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        response = post(client, "/v1/track", item(), key)
        assert (response.status_code, response.data) == (502, error("Ingest failed", "ingest_failed"))
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for _ in range(2):
        assert post(client, "/v1/track", item(), key).data == SUCCESS
    assert len(read_rows(db_path)) == 1
    store.close()


def test_keys_stored_hashed_never_in_clear(store, key, db_path):
    store.create_key("acme", "secret")
    raw = b"".join(p.read_bytes() for p in db_path.parent.glob("drengr.db*"))
    assert key.encode() not in raw
    assert key.split("_pk_")[1].encode() not in raw


def test_semantic_events_columns_exactly_as_specified(store, db_path):
    conn = sqlite3.connect(db_path)
    columns = [(c[1], c[2], bool(c[3])) for c in conn.execute("PRAGMA table_info(semantic_events)")]
    conn.close()
    assert columns == [
        ("tenant_id", "TEXT", True), ("event_id", "TEXT", True), ("event_name", "TEXT", True),
        ("event_type", "TEXT", True), ("external_id", "TEXT", False), ("install_id", "TEXT", True),
        ("occurred_at", "TEXT", True), ("received_at", "TEXT", True), ("dims", "TEXT", True),
        ("measures", "TEXT", True), ("library", "TEXT", False), ("seq", "INTEGER", False),
    ]  # fmt: skip  # the ten fixed columns, then two extra: the sending SDK, and the append order
