"""Long CLI work shows a tqdm progress bar on a terminal, and prints nothing extra anywhere else.

`drengr db import-sqlite` (and `drengr prune`) write the bar to stderr only
when stderr is a terminal: a pipe, a log file or cron gets the one summary
line, and ``--quiet`` silences the bar on a terminal too.
"""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from drengr.store import SQLiteStore

from .support import postgres
from .support.postgres import query, server_dsn, with_schema
from .support.realserver import node_env

pg_dsn = postgres.pg_dsn  # the fixture: a fresh schema

HANG_GUARD_SECONDS = 120


def sqlite_with_events(path: Path, count: int) -> None:
    store = SQLiteStore(str(path))
    rows = [("acme", f"e{i}", "e", "track", "u", "u", "2026-11-26T00:00:00.000Z", "2026-11-26T00:00:00.000Z",
             "{}", "{}", None) for i in range(count)]  # fmt: skip
    store.write("acme", rows, 1_795_660_000_000)
    store.close()


def run_on_a_terminal(args: list[str]) -> tuple[int, str]:
    """``args`` with stderr on a pseudo-terminal; returns the exit status and what the terminal showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower, env=node_env()
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return process.wait(timeout=HANG_GUARD_SECONDS), shown.decode(errors="replace")


def test_import_sqlite_shows_a_bar_on_a_terminal_only(pg_dsn: str, tmp_path: Path) -> None:
    schema = query(pg_dsn, "SELECT current_schema()")[0][0]
    uri = with_schema(server_dsn(), schema)
    source = tmp_path / "old.db"
    sqlite_with_events(source, 25_000)
    command = [sys.executable, "-m", "drengr", "db", "import-sqlite", str(source), "--store", uri]

    status, shown = run_on_a_terminal(command)
    assert status == 0, shown
    assert "Copying events: 100%" in shown and "25.0k/25.0k" in shown, shown  # tqdm's bar, ended full
    assert "Copied 25,000 events" in shown

    source_more = tmp_path / "more.db"
    sqlite_with_events(source_more, 30)
    piped = subprocess.run(
        [*command[:5], str(source_more), *command[6:]], capture_output=True, text=True, env=node_env(),
        timeout=HANG_GUARD_SECONDS,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr.splitlines() == [piped.stderr.strip()] and piped.stderr.startswith(
        "Copied "
    )  # one line

    status, shown = run_on_a_terminal([*command, "--quiet"])
    assert status == 0 and "Copying events" not in shown and "Copied 0 events" in shown, shown
