"""Shared fixtures: a real SQLite file, the real app, and helpers to post and read rows."""

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr import clock
from drengr.store import is_postgres_url, open_store
from drengr.web import Config, create_app

TENANT = "acme"
COLUMNS = "tenant_id, event_id, event_name, event_type, external_id, install_id, occurred_at, received_at, dims, measures, library"


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The store engine: SQLite unless a module parametrizes it (``ENGINES`` below, indirect)."""
    return getattr(request, "param", "sqlite")


# A contract module runs against both stores with:
#     pytestmark = pytest.mark.parametrize("engine", ENGINES, indirect=True)
ENGINES = ["sqlite", "postgresql"]


@pytest.fixture
def db_path(tmp_path: Path, engine: str) -> Iterator[Any]:
    """Where the rows are: a SQLite file, or a PostgreSQL URI with a fresh schema of its own."""
    if engine == "sqlite":
        yield tmp_path / "drengr.db"
        return
    from .test_postgres_store import fresh_schema

    with fresh_schema("c_") as dsn:
        yield dsn


@pytest.fixture
def receipt_ms() -> Callable[[], int]:
    """The clock of receipt (ms) that the app stamps rows with and the store runs on.

    A module that fixes or moves the time overrides this fixture, so that the
    store (which forgets old event ids by its clock) sees the same time as the rows.
    """
    return clock.now_ms


@pytest.fixture
def store(db_path: Any, receipt_ms: Callable[[], int]) -> Iterator[Any]:
    store = open_store(str(db_path), clock=lambda: receipt_ms() / 1000)
    yield store
    store.close()


@pytest.fixture
def key(store: Any) -> str:
    return store.create_key(TENANT, "publishable")


@pytest.fixture
def app(db_path: Any, store: Any, receipt_ms: Callable[[], int]) -> Iterator[Any]:
    app = create_app(Config(db=str(db_path)), store=store, clock_ms=receipt_ms)
    yield app
    app.extensions["drengr.drops"].close()  # its last drop counts, before the store closes


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


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
        from .test_postgres_store import pg_rows

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
