"""docs/operating.md: the drengr command, run as a user would run it."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import drengr as package
from drengr.core.auth import hash_key

# The commands run the drengr these tests import: PYTHONPATH=src is relative, and a command run
# in a temporary folder would otherwise import whatever drengr is installed.
CODE_ROOT = str(Path(package.__file__).resolve().parents[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (CODE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return env


def drengr(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drengr", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=child_env(env),
    )  # fmt: skip


def test_keys_create_prints_the_key_alone_on_a_line(tmp_path):
    db = str(tmp_path / "d.db")
    result = drengr("keys", "create", "--tenant", "acme", "--db", db)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert result.stdout == key + "\n"
    assert key.startswith("drengr_pk_") and len(key) > 40
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT tenant_id, kind FROM api_keys WHERE key_hash = ?", (hash_key(key),)).fetchone() == (
        "acme", "publishable",
    )  # fmt: skip
    assert conn.execute("SELECT count(*) FROM tenants WHERE tenant_id = 'acme'").fetchone() == (1,)
    conn.close()


def test_secret_key_kind(tmp_path):
    result = drengr("keys", "create", "--tenant", "acme", "--kind", "secret", "--db", str(tmp_path / "d.db"))
    assert result.stdout.startswith("drengr_sk_")


def test_keys_list_shows_no_secrets_and_revoke_works(tmp_path):
    db = str(tmp_path / "d.db")
    key = drengr("keys", "create", "--tenant", "acme", "--db", db).stdout.strip()
    listing = drengr("keys", "list", "--db", db)
    assert listing.returncode == 0
    assert key not in listing.stdout and key[10:] not in listing.stdout
    assert "acme" in listing.stdout and "publishable" in listing.stdout
    key_id = hash_key(key)[:12]
    assert key_id in listing.stdout
    assert drengr("keys", "revoke", key, "--db", db).returncode == 0
    assert drengr("keys", "list", "--db", db).stdout.splitlines()[1].split()[-1] != "-"  # revoked at …
    again = drengr("keys", "revoke", key_id, "--db", db)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "drengr keys list" in again.stderr


def test_revoke_by_key_id(tmp_path):
    db = str(tmp_path / "d.db")
    key = drengr("keys", "create", "--tenant", "acme", "--db", db).stdout.strip()
    assert drengr("keys", "revoke", hash_key(key)[:12], "--db", db).returncode == 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT revoked_at IS NOT NULL FROM api_keys").fetchone() == (1,)
    conn.close()


def test_tenants_set_daily_cap(tmp_path):
    db = str(tmp_path / "d.db")
    result = drengr("tenants", "set", "acme", "--daily-cap", "1000", "--create", "--db", db)
    assert result.returncode == 0, result.stderr
    again = drengr("tenants", "set", "acme", "--daily-cap", "2000", "--db", db)  # the tenant exists now
    assert again.returncode == 0, again.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT daily_cap FROM tenants WHERE tenant_id = 'acme'").fetchone() == (2000,)
    conn.close()


def test_options_read_environment_variables(tmp_path):
    db = str(tmp_path / "env.db")
    result = drengr(
        "keys", "create", env={"DRENGR_DB": db, "DRENGR_TENANT": "envco", "DRENGR_KIND": "secret"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("drengr_sk_")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT tenant_id FROM tenants").fetchall() == [("envco",)]
    conn.close()


@pytest.mark.parametrize(
    "args, hint",
    [
        pytest.param(["keys", "create"], "--tenant", id="missing-tenant"),
        pytest.param(
            ["keys", "create", "--tenant", "x", "--db", "/no/such/folder/d.db"], "--db", id="bad-db-folder"
        ),
        pytest.param(
            ["keys", "revoke", "drengr_pk_nope"], "No database at drengr.db", id="revoke-without-db"
        ),
        pytest.param(["tenants", "set", "acme"], "--daily-cap", id="nothing-to-set"),
        pytest.param(["serve", "--port", "80x"], "not a whole number", id="bad-port"),
        pytest.param(
            ["tenants", "set", "acme", "--daily-cap", "-5"], "must not be negative", id="negative-cap"
        ),
    ],
)
def test_user_mistakes_get_one_sentence_no_traceback(tmp_path, args, hint):
    result = drengr(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert hint in result.stderr
    assert result.stdout == ""


def test_a_file_that_is_not_a_database(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("this is not sqlite, just notes\n" * 100)
    result = drengr("keys", "list", "--db", str(bogus))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--db" in result.stderr
