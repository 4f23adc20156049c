"""`drengr … --store postgresql://…`: keys, tenants, `db init` and `db import-sqlite` against PostgreSQL."""

import subprocess
import sys
from pathlib import Path

import pytest

from drengr.store import SQLiteStore

from .support import postgres
from .support.postgres import count, query, server_dsn, with_schema
from .support.realserver import node_env

pg_dsn = postgres.pg_dsn  # the fixture: a fresh schema

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)


def drengr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drengr", *args], capture_output=True, text=True, env=node_env()
    )


def test_admin_commands_and_moving_a_sqlite_database(pg_dsn: str, tmp_path: Path) -> None:
    schema = query(pg_dsn, "SELECT current_schema()")[0][0]
    uri = with_schema(server_dsn(), schema)
    assert drengr("db", "init", "--store", uri).returncode == 0
    created = drengr("keys", "create", "--tenant", "acme", "--store", uri)
    assert created.returncode == 0 and created.stdout.strip().startswith("drengr_pk_")
    assert "acme" in drengr("keys", "list", "--store", uri).stdout
    assert drengr("tenants", "set", "acme", "--daily-cap", "7", "--store", uri).returncode == 0
    assert query(pg_dsn, "SELECT daily_cap FROM tenants WHERE tenant_id = 'acme'") == [(7,)]

    old = tmp_path / "old.db"
    lite = SQLiteStore(str(old))
    rows = [("globex", f"e{i}", "e", "track", "u", "u", "2026-11-26T00:00:00.000Z", "2026-11-26T00:00:00.000Z",
             "{}", "{}", None) for i in range(25)]  # fmt: skip
    lite.write("globex", rows, 1_795_660_000_000)
    lite.create_key("globex")
    lite.close()
    moved = drengr("db", "import-sqlite", str(old), "--store", uri)
    assert moved.returncode == 0, moved.stderr
    assert "Copied 25 events" in moved.stderr
    assert "Copied 0 events" in drengr("db", "import-sqlite", str(old), "--store", uri).stderr
    assert count(pg_dsn) == 25
    # The copied rows are counted into the rollups /v1/stats reads (once: the second run copied none).
    assert query(pg_dsn, "SELECT tenant_id, minute, event_name, events FROM event_rollups") == [
        ("globex", "2026-11-26T00:00", "e", 25)
    ]
    assert query(pg_dsn, "SELECT hour, events FROM hourly_event_rollups") == [("2026-11-26T00", 25)]


def test_store_mistakes_are_one_sentence(tmp_path: Path) -> None:
    wrong = drengr("keys", "list", "--store", "mysql://x/y")
    assert wrong.returncode == 2 and "postgresql://" in wrong.stderr and "Traceback" not in wrong.stderr
    down = drengr("keys", "list", "--store", "postgresql://u:secret@127.0.0.1:1/x")
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert "secret" not in down.stderr and "u:***@" in down.stderr


def test_commands_that_only_use_a_database_create_no_tables_in_it(pg_dsn: str) -> None:
    schema = query(pg_dsn, "SELECT current_schema()")[0][0]
    uri = with_schema(server_dsn(), schema)
    for args in (
        ["keys", "list"],
        ["keys", "revoke", "drengr_pk_x"],
        ["tenants", "set", "acme", "--daily-cap", "5"],
    ):
        result = drengr(*args, "--store", uri)
        assert result.returncode == 2, (args, result.stderr)
        assert "No drengr tables at" in result.stderr and "drengr db init" in result.stderr, result.stderr
        assert result.stdout == ""
    tables = query(
        pg_dsn, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    assert tables == [(0,)]


def test_a_read_of_a_database_without_drengrs_tables_is_one_line(pg_dsn: str, tmp_path: Path) -> None:
    """PostgreSQL's error adds the statement and a caret on lines of their own: the sentence keeps
    the first, and names --store, where the database came from."""
    schema = query(pg_dsn, "SELECT current_schema()")[0][0]
    uri = with_schema(server_dsn(), schema)  # a fresh schema: no drengr tables
    for args in (["stats"], ["tail", "--no-follow"], ["export", str(tmp_path / "e.csv")]):
        done = drengr(*args, "--store", uri)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, (args, done.stderr)
        assert done.stderr.startswith("drengr: Cannot read ") and "Traceback" not in done.stderr
        assert done.stderr.endswith(": check --store (or DRENGR_STORE).\n"), done.stderr
