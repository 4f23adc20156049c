"""The PostgreSQL server the tests and bench/ share, a schema of their own on it, and reading it back.

The server: ``DRENGR_TEST_POSTGRES_DSN`` (a ``postgresql://`` URI of a database
the tests may create schemas and databases in) when set; otherwise the session
starts one with ``.ci/postgres.sh`` and stops it at the end. That script
installs Debian's ``postgresql`` only under CI; on any other machine without
PostgreSQL the tests that ask for it skip with one line saying what to install —
and under ``CI`` (``CI=true``) they fail instead. Without psycopg, a module that
imports this one is skipped (under CI: fails).

A test module takes the fixtures ``pg_dsn`` (a fresh schema, dropped after) and
``pg_database`` (a database of its own) by importing them.
"""

import atexit
import contextlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.store import is_postgres_url

from .app import COLUMNS

IN_CI = bool(os.environ.get("CI"))

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from drengr.store.postgres import EVENT_COLUMNS, PostgresStore  # noqa: F401 (importers take PostgresStore)
except ImportError as error:  # pragma: no cover - psycopg is in the `test` extra
    if IN_CI:
        raise
    pytest.skip(f"psycopg is not installed ({error}): pip install '.[test]'", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "postgres.sh"

_server: dict[str, Any] = {}


def server_dsn() -> str:
    """A PostgreSQL URI for the whole session; skips (or, under CI, fails) when none can be had."""
    if "dsn" not in _server and "error" not in _server:
        _server.update(_find_or_start_server())
    if "error" in _server:
        message = f"{_server['error']} (or set DRENGR_TEST_POSTGRES_DSN to a server's URI)"
        if IN_CI:
            pytest.fail(f"{message}; CI is set: these tests must run. {_server.get('detail', '')}")
        pytest.skip(message)
    return str(_server["dsn"])


def _find_or_start_server() -> dict[str, Any]:
    given = os.environ.get("DRENGR_TEST_POSTGRES_DSN")
    if given:
        return _check(given)
    folder = tempfile.mkdtemp(prefix="drengr-pg.", dir="/tmp")
    env = {**os.environ, "PG_EXTRA_OPTS": os.environ.get("PG_EXTRA_OPTS", "-c fsync=off")}
    try:
        started = subprocess.run(
            ["bash", str(SCRIPT), "start", folder], capture_output=True, text=True, timeout=600, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": f"{SCRIPT.name} start: {error}"}
    if started.returncode != 0:
        last_line = (started.stderr.strip().splitlines() or ["no message"])[-1]
        if started.returncode == 3:  # not installed, and not CI: the script says what to install
            return {"error": last_line}
        return {"error": f"{SCRIPT.name} start failed: {last_line}", "detail": started.stderr.strip()[-500:]}
    atexit.register(subprocess.run, ["bash", str(SCRIPT), "stop", folder], capture_output=True, timeout=120)
    return _check(started.stdout.strip().splitlines()[-1])


def _check(dsn: str) -> dict[str, Any]:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return {"error": f"cannot connect to {dsn}: {' '.join(str(error).split())}"}
    return {"dsn": dsn}


def admin() -> "psycopg.Connection[Any]":
    return psycopg.connect(server_dsn(), autocommit=True)


def with_schema(dsn: str, schema: str) -> str:
    """``dsn`` whose connections use ``schema`` (kept a postgresql:// URI, as --store wants one)."""
    options = f"-c search_path={schema}"
    if is_postgres_url(dsn):
        separator = "&" if "?" in dsn else "?"
        return f"{dsn}{separator}options={options.replace(' ', '%20').replace('=', '%3D')}"
    return make_conninfo(dsn, options=options)


@contextlib.contextmanager
def fresh_schema(prefix: str = "t_") -> Iterator[str]:
    """A URI whose connections use a fresh, empty schema on the session's server, dropped after."""
    schema = prefix + uuid.uuid4().hex[:12]
    with admin() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(server_dsn(), schema)
    finally:
        with admin() as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh, empty schema on the session's server."""
    with fresh_schema() as dsn:
        yield dsn


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh database of its own (for tests that cut connections to it)."""
    name = "drengr_t_" + uuid.uuid4().hex[:12]
    with admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    params = conninfo_to_dict(server_dsn())
    params["dbname"] = name
    yield f"postgresql://{params.get('user', 'postgres')}@{params['host']}:{params['port']}/{name}"
    with admin() as conn:
        conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def count(dsn: str, where: str = "true") -> int:
    return int(query(dsn, f"SELECT count(*) FROM semantic_events WHERE {where}")[0][0])


def pg_rows(dsn: str) -> list[dict[str, Any]]:
    """Every semantic_events row in insertion order; dims/measures are dicts already (jsonb)."""
    return [
        dict(zip(EVENT_COLUMNS, r, strict=True))
        for r in query(dsn, f"SELECT {COLUMNS} FROM semantic_events ORDER BY seq")
    ]
