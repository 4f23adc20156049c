"""What every `drengr` command shares: user mistakes, the database checks, the version, whole numbers."""

import argparse
import os
import re
from importlib import metadata


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
