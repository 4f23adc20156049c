"""What every `drengr` command shares: user mistakes, the database checks, the version, whole numbers."""

import argparse
import os
import re
import sqlite3
import unicodedata
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from . import clock
from .store import is_postgres_url
from .store.base import first_line
from .store.reader import parse_time


class UsageError(Exception):
    """A mistake the user can fix; the message says how."""


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    try:
        return metadata.version("drengr-ingest")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"drengr {version()}")


def check_can_create(path: str) -> None:
    """Before a command that may create the SQLite database at ``path``: its folder is there and writable.

    SQLite writes its -wal and -shm files beside the database, so the folder
    must be writable even when the file exists.
    """
    if path == ":memory:":
        return
    if os.path.isdir(path):
        raise UsageError(
            f"{path} is a folder: pass a file in it with --db, e.g. {os.path.join(path, 'drengr.db')}."
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"The folder {folder} does not exist: create it or pass another --db path.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"The folder {folder} is not writable: pass a --db path in a folder you can write to."
        )
    check_not_anothers(path)


def older_layout(path: str) -> bool:
    """Whether the database at ``path`` is of an older drengr's layout, to be brought up to date
    before a command writes into it (prune, tenants set, keys revoke, a backfill). A file that is
    not drengr's (an empty one included: those commands never make drengr's tables) is refused."""
    from .store.sqlite.store import SCHEMA_VERSION

    check_not_anothers(path)  # another application's file, locked or not: its own sentence
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            found = None
            if "meta" in tables:
                found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as error:
        raise UsageError(f"Cannot use {path} as the database ({first_line(error)}): pass the file `drengr serve` "
                         "writes with --db.") from None  # fmt: skip
    if "semantic_events" not in tables:
        raise UsageError(
            f"{path} is not a drengr database (it is empty): pass the file `drengr serve` writes with --db."
        )
    return found is None or int(found[0]) < SCHEMA_VERSION


def check_not_anothers(path: str) -> None:
    """A SQLite file already there is drengr's (or empty): drengr's tables are never written into
    another application's database, nor its journal mode turned to WAL."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            return  # not a SQLite file: opening it as the store says so in its own sentence
        # Locked past the wait by another program's write (a rollback journal), or unreadable: not
        # known to be drengr's, so not written into.
        raise UsageError(f"Cannot read {path} ({error}): check that it is drengr's database.") from None
    if tables and "semantic_events" not in tables:
        raise UsageError(
            f"{path} is another application's SQLite database (it has no semantic_events table): "
            "pass another --db path."
        )


def check_exists(path: str) -> None:
    """Before a command that only uses a database: never create one where the user made a typo."""
    if not os.path.isfile(path):
        raise UsageError(f"No database at {path}: pass the file `drengr serve` writes with --db.")


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


class ProgressBar:
    """A tqdm bar on stderr for long work (`db import-sqlite`, `prune`): shown on a terminal only.

    ``update(done, total)`` is the store's progress callback. Off a terminal
    (a pipe, a log file, cron), or with ``quiet``, it prints nothing at all.
    """

    def __init__(self, description: str, unit: str, quiet: bool = False) -> None:
        from tqdm import tqdm

        # disable=None: tqdm's own "not a terminal" test on the stream it writes to.
        self._bar = tqdm(
            desc=description, unit=unit, unit_scale=True, disable=True if quiet else None, leave=True
        )

    def update(self, done: int, total: int) -> None:
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def require_postgres_tables(url: str) -> None:
    """A command that only uses a PostgreSQL database never creates drengr's tables in it."""
    if not is_postgres_url(url):
        return  # _open_postgres says what --store takes
    try:
        import psycopg
    except ImportError:
        return  # _open_postgres says what to install
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT to_regclass('api_keys') IS NOT NULL").fetchone()
    except psycopg.Error as error:
        first = first_line(error)
        raise UsageError(
            f"Cannot use the PostgreSQL store at {redact_url(url)} ({first}): check --store."
        ) from None
    if not (row and row[0]):
        raise UsageError(
            f"No drengr tables at {redact_url(url)}: check --store, or create them with `drengr db init --store URL`."
        )


def check_tenant_name(name: str) -> None:
    """A new tenant's name: what keys list, the logs and the read API show as it is."""
    if (
        not name
        or name != name.strip()
        or len(name) > 64
        or any(unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") for c in name)
    ):
        raise UsageError(
            f"{name!r} is not a tenant name: give 1 to 64 characters without control characters "
            "or spaces at either end, like acme."
        )


def check_read_scope(reader: Any, tenant: str | None, since: str | None, until: str | None) -> None:
    """A read command's scope is not empty by mistake: a tenant the database has (else a typo, as
    ``tenants set`` takes it), an --until after the --since (both as the user gave them)."""
    if since is not None and until is not None:
        now_ms = clock.now_ms()
        first, last = parse_time(since, now_ms), parse_time(until, now_ms)
        if first is not None and last is not None and last <= first:
            raise UsageError(
                f"--until {until} is not after --since {since}: pass an earlier --since or a later --until."
            )
    if tenant is not None:
        known = reader.tenants()
        try:
            found = tenant in known or reader.has_rows_of(tenant)  # rows the store API wrote alone
        except UnicodeEncodeError:  # bytes that are no UTF-8 (a name no row can have)
            found = False
        if not found:
            shown = ", ".join(known[:10]) + (f" and {len(known) - 10:,} more" if len(known) > 10 else "")
            listed = f"the tenants are {shown}" if known else "there are no tenants yet"
            raise UsageError(f"There is no tenant {tenant!r} ({listed}): check --tenant.")


def check_where(args: Any) -> str:
    """What to check when a read command cannot read its database: the option it came from."""
    return "check --store (or DRENGR_STORE)" if getattr(args, "store", None) else "check the --db path"


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes (an unknown option, a bad value) are one line as every other
    drengr mistake, naming the --help that lists the options, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"drengr: {message[:1].upper()}{message[1:]}: see {self.prog} --help.\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but options no command takes name the --help of the command given."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            given = [getattr(parsed, dest, None) for dest in _COMMAND_DESTS]
            command = " ".join([self.prog, *(name for name in given if name)])
            self.exit(2, f"drengr: Unrecognized arguments: {' '.join(extras)}: see {command} --help.\n")
        return parsed


# Where the parser of `drengr` keeps the command and a group's action (cli.build_parser).
_COMMAND_DESTS = ("command", "keys_command", "db_command", "tenants_command")
