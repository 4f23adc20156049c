"""docs/operating.md: the drengr command, run as a user would run it."""

import argparse
import os
import socket
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import drengr as package
from drengr.cli import build_parser
from drengr.core.auth import hash_key
from drengr.store import SQLiteStore

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


def test_existing_tenants_keep_their_names_whatever_the_check_of_new_ones(tmp_path):
    """Names an older drengr took (70 characters, a trailing space) still get keys and settings;
    only a new tenant's name is checked, and a name with a C1 control character is refused."""
    store = SQLiteStore(str(tmp_path / "drengr.db"))
    for name in ("t" * 70, "acme "):
        store.create_key(name, "publishable")
    store.close()
    for name in ("t" * 70, "acme "):
        assert drengr("keys", "create", "--tenant", name, cwd=tmp_path).returncode == 0
        done = drengr("tenants", "set", name, "--create", "--daily-cap", "5", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    refused = drengr("keys", "create", "--tenant", "a\u0085b", cwd=tmp_path)
    assert refused.returncode == 2 and "is not a tenant name" in refused.stderr


@pytest.mark.parametrize(
    "args",
    [["keys", "revoke", "drengr_pk_x"], ["prune", "--before", "30d"], ["tenants", "set", "acme", "--daily-cap", "5"],
     ["db", "backfill-rollups"]],
    ids=["keys-revoke", "prune", "tenants-set", "backfill"],
)  # fmt: skip
def test_commands_that_write_into_a_database_never_make_one_of_an_empty_file(tmp_path, args):
    (tmp_path / "e.db").write_bytes(b"")
    result = drengr(*args, "--db", "e.db", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "drengr: e.db is not a drengr database (it is empty): pass the file `drengr serve` writes with --db.\n"
    )
    assert (tmp_path / "e.db").read_bytes() == b"" and sorted(p.name for p in tmp_path.iterdir()) == ["e.db"]


def test_a_write_into_a_current_database_does_not_migrate_it(tmp_path):
    """A prune of a database of this layout takes no write lock to migrate it: held elsewhere, the
    prune's own batches wait for it (and say so), not a migration that calls the path unwritable."""
    store = SQLiteStore(str(tmp_path / "drengr.db"))
    store.create_key("acme", "publishable")
    store.close()
    holder = sqlite3.connect(tmp_path / "drengr.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = drengr("tenants", "set", "acme", "--daily-cap", "5", cwd=tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 2 and "writable --db path" not in result.stderr, result.stderr


def test_keys_create_says_when_it_made_the_database(tmp_path):
    """A second terminal in another folder would make a database of its own there: said on stderr,
    once; a key made in an existing database says nothing of the sort."""
    first = drengr("keys", "create", "--tenant", "acme", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "No database was at drengr.db: made a new one." in first.stderr
    assert (tmp_path / "drengr.db").exists()
    again = drengr("keys", "create", "--tenant", "acme", cwd=tmp_path)
    assert again.returncode == 0 and "No database" not in again.stderr


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
        pytest.param(
            ["prune", "--before", "100000000000000000000d"], "longer than 1,000 years", id="age-past-any-date"
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


# A command that fails creates nothing and prints nothing it would have to take back: one sentence
# on stderr, status 2, and the folder it ran in as it was (empty, or holding the database of tenant
# acme). {tmp} stands for that folder.
NO_DATABASE = "drengr: No database at typo.db: pass the file `drengr serve` writes with --db.\n"
MISTAKES = [
    # (id, arguments, environment, a database there first, stderr)
    ("port-above-65535", ["serve", "--port", "99999"], {}, False,
     "drengr: --port 99999 is not a port: pass one from 1 to 65535.\n"),
    ("port-0-from-env", ["serve"], {"DRENGR_PORT": "0"}, False,
     "drengr: DRENGR_PORT=0 is not a port: pass one from 1 to 65535.\n"),
    ("threads-0", ["serve", "--threads", "0"], {}, False, "drengr: --threads 0 is less than 1: pass 1 to 1,024.\n"),
    ("threads-past-any-machine", ["serve", "--threads", "100000000"], {}, False,
     "drengr: --threads 100000000 is more than 1,024: pass 1 to 1,024.\n"),
    ("busy-timeout-past-sqlite", ["serve"], {"DRENGR_BUSY_TIMEOUT_MS": "99999999999999999"}, False,
     "drengr: DRENGR_BUSY_TIMEOUT_MS=99999999999999999 is more than 3,600,000: pass 0 to 3,600,000.\n"),
    ("durability-from-env", ["serve"], {"DRENGR_DURABILITY": "fast"}, False,
     "drengr: DRENGR_DURABILITY=fast is not one of full, normal: pick one.\n"),
    ("prefix", ["serve", "--prefix", "a b"], {}, False,
     "drengr: --prefix 'a b' is not a URL path: pass one like /segment-ingest.\n"),
    ("writer-cpus", ["serve", "--writer-cpus", "4096"], {}, False,
     "drengr: --writer-cpus 4096 names a CPU this machine does not give us (4096): pick from {cpus}.\n"),
    ("serve-db-folder-missing", ["serve", "--db", "no/such/d.db"], {}, False,
     "drengr: The folder {tmp}/no/such does not exist: create it or pass another --db path.\n"),
    ("db-is-a-folder", ["keys", "create", "--tenant", "x", "--db", "."], {}, False,
     "drengr: . is a folder: pass a file in it with --db, e.g. ./drengr.db.\n"),
    ("kind", ["keys", "create", "--tenant", "x", "--kind", "admin"], {}, False,
     "drengr: --kind admin is not one of publishable, secret: pick one.\n"),
    ("store-not-postgres", ["keys", "list", "--store", "mysql://x/y"], {}, False,
     "drengr: --store mysql://x/y is not a postgresql:// URL: pass postgresql://user@host/db "
     "(for a SQLite file, use --db).\n"),
    ("keys-list-typo", ["keys", "list", "--db", "typo.db"], {}, True, NO_DATABASE),
    ("keys-revoke-typo", ["keys", "revoke", "drengr_pk_x", "--db", "typo.db"], {}, True, NO_DATABASE),
    ("tenants-set-typo-db", ["tenants", "set", "acme", "--daily-cap", "5", "--db", "typo.db"], {}, True,
     NO_DATABASE),
    ("tail-typo", ["tail", "--db", "typo.db", "--no-follow"], {}, True, NO_DATABASE),
    ("stats-typo", ["stats", "--db", "typo.db"], {}, True, NO_DATABASE),
    ("tenant-name-empty", ["tenants", "set", "", "--create", "--daily-cap", "5"], {}, True,
     "drengr: '' is not a tenant name: give 1 to 64 characters without control characters or spaces at "
     "either end, like acme.\n"),
    ("tenant-name-spaces", ["keys", "create", "--tenant", "   "], {}, True,
     "drengr: '   ' is not a tenant name: give 1 to 64 characters without control characters or spaces at "
     "either end, like acme.\n"),
    ("tenant-name-line-break", ["keys", "create", "--tenant", "a\nb"], {}, True,
     "drengr: 'a\\nb' is not a tenant name: give 1 to 64 characters without control characters or spaces "
     "at either end, like acme.\n"),
    ("clock-offset-not-a-number", ["stats"], {"DRENGR_CLOCK_OFFSET": "abc"}, True,
     "drengr: DRENGR_CLOCK_OFFSET='abc' is not a number of seconds: unset it.\n"),
    ("tenants-set-typo-tenant", ["tenants", "set", "acme2", "--daily-cap", "5"], {}, True,
     "drengr: There is no tenant 'acme2' in the database drengr.db (the tenants are acme): "
     "check the name, or pass --create to add it.\n"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "with_db", "stderr"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_a_failed_command_creates_nothing_and_says_what_to_do(tmp_path, args, env, with_db, stderr):
    if with_db:
        store = SQLiteStore(str(tmp_path / "drengr.db"))
        store.create_key("acme", "publishable")
        store.close()
    before = _snapshot(tmp_path)
    result = drengr(*args, env=env, cwd=tmp_path)
    cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == stderr.format(tmp=tmp_path, cpus=cpus)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--tenant", "x"],
        ["db", "init"],
        ["tenants", "set", "x", "--create", "--daily-cap", "5"],
        ["serve", "--port", "1"],  # refused before it listens (port 1 would be refused after)
    ],
    ids=["keys-create", "db-init", "tenants-set-create", "serve"],
)
def test_another_applications_sqlite_file_is_never_written_into(tmp_path, args):
    """The commands that may create the database refuse a SQLite file of something else: no
    drengr tables in it, its journal mode left alone."""
    app = tmp_path / "app.db"
    conn = sqlite3.connect(app)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = app.read_bytes()
    result = drengr(*args, "--db", "app.db", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "drengr: app.db is another application's SQLite database (it has no semantic_events table): "
        "pass another --db path.\n"
    )
    assert app.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (["serve", "--bogus"], "drengr: Unrecognized arguments: --bogus: see drengr serve --help.\n"),
        (
            ["keys", "create", "--bogus"],
            "drengr: Unrecognized arguments: --bogus: see drengr keys create --help.\n",
        ),
        (
            ["tail", "-n", "x"],
            "drengr: Argument -n/--lines: 'x' is not a whole number: see drengr tail --help.\n",
        ),
        (["keys"], "drengr: The following arguments are required: ACTION: see drengr keys --help.\n"),
    ],
    ids=["unknown-option", "unknown-option-of-an-action", "bad-value", "no-action"],
)
def test_argparse_mistakes_are_one_line_too(tmp_path, args, stderr):
    """What argparse itself refuses (options that are no setting) is one line as well, not the usage block."""
    result = drengr(*args, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", stderr)
    assert list(tmp_path.iterdir()) == []


READ_SCOPE_MISTAKES = [
    (["stats", "--tenant", "acmee"], "There is no tenant 'acmee' (the tenants are acme): check --tenant."),
    (["tail", "--tenant", "acmee", "--no-follow"], "There is no tenant 'acmee' (the tenants are acme): check --tenant."),
    (["export", "e.csv", "--tenant", "acmee"], "There is no tenant 'acmee' (the tenants are acme): check --tenant."),
    (["stats", "--since", "1h", "--until", "2h"],
     "--until 2h is not after --since 1h: pass an earlier --since or a later --until."),
    (["stats", "--until", "2d"],  # --since's default, 24h
     "--until 2d is not after --since 24h: pass an earlier --since or a later --until."),
    (["export", "e.csv", "--since", "2026-12-01", "--until", "2026-11-01"],
     "--until 2026-11-01 is not after --since 2026-12-01: pass an earlier --since or a later --until."),
    ([b"stats", b"--tenant", b"\xff"], "There is no tenant '\\udcff' (the tenants are acme): check --tenant."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    READ_SCOPE_MISTAKES,
    ids=["stats-tenant", "tail-tenant", "export-tenant", "stats-until", "stats-until-default-since",
         "export-until", "tenant-not-utf8"],
)  # fmt: skip
def test_a_read_whose_scope_is_empty_by_mistake_says_so(tmp_path, args, says):
    """A tenant the database lacks (a typo, as tenants set takes it) or an --until before the --since:
    one sentence, not an empty answer (or an empty export file)."""
    store = SQLiteStore(str(tmp_path / "drengr.db"))
    store.create_key("acme", "publishable")
    store.close()
    result = drengr(*args, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"drengr: {says}\n")
    assert not (tmp_path / "e.csv").exists()


def test_an_applications_file_locked_by_its_writer_is_not_taken_for_drengrs(tmp_path):
    """Its exclusive lock (a rollback journal's write) outlasts the look at its tables: refused, not
    taken for a database to make drengr's tables in once the lock goes."""
    app = tmp_path / "app.db"
    conn = sqlite3.connect(app, isolation_level=None)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.execute("BEGIN EXCLUSIVE")
    try:
        result = drengr("keys", "create", "--tenant", "x", "--db", "app.db", cwd=tmp_path)
    finally:
        conn.execute("ROLLBACK")
    assert (result.returncode, result.stdout) == (2, "")
    assert (
        result.stderr
        == "drengr: Cannot read app.db (database is locked): check that it is drengr's database.\n"
    )
    assert [name for (name,) in conn.execute("SELECT name FROM sqlite_master")] == ["users"]
    conn.close()


def _snapshot(folder: Path) -> dict[str, Any]:
    """Every file under ``folder`` and, for a database, its tenants: what a failed command must not change."""
    files: dict[str, Any] = {str(p.relative_to(folder)): None for p in folder.rglob("*")}
    if (folder / "drengr.db").exists():
        conn = sqlite3.connect(folder / "drengr.db")
        files["tenants"] = conn.execute("SELECT tenant_id, daily_cap FROM tenants").fetchall()
        conn.close()
    return files


def test_serve_on_a_port_in_use_creates_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = drengr("serve", "--port", str(port), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")  # no key printed for a database never made
    assert result.stderr == (
        f"drengr: Cannot listen on 127.0.0.1:{port} (another program is listening there: "
        "stop it or pick another --port).\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_tenants_set_create_adds_a_tenant_only_when_asked(tmp_path):
    db = str(tmp_path / "d.db")
    assert drengr("keys", "create", "--tenant", "acme", "--db", db).returncode == 0
    result = drengr("tenants", "set", "globex", "--daily-cap", "5", "--create", "--db", db)
    assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT tenant_id, daily_cap FROM tenants ORDER BY 1").fetchall()[1] == ("globex", 5)
    conn.close()


def _command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command line prefix the parser takes: drengr, drengr keys, drengr keys create, …"""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _command_paths(sub, (*path, name))
    return found


def test_version_on_drengr_and_every_subcommand():
    paths = _command_paths(build_parser())
    assert ("keys", "create") in paths and ("export",) in paths and ("prune",) in paths and len(paths) == 17
    expected = f"drengr {metadata.version('drengr-ingest')}\n"
    for path in paths:
        result = drengr(*path, "--version")
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, ""), path
