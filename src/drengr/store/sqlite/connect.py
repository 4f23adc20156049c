"""Connections to the SQLite file, and the write transaction every part of the SQLite store uses.

Imports only the standard library and ``drengr.store.base``.
"""

import sqlite3
from typing import Any

from ..base import StoreError


def connect(path: str, busy_timeout_ms: int, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), with the store's busy timeout."""
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        timeout=busy_timeout_ms / 1000,
        check_same_thread=False,
        cached_statements=256,  # the multi-row INSERTs of every size up to 100
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


class Transaction:
    """``with`` block: BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error; StoreError out.

    ``Transaction(conn, "DEFERRED")`` is a read snapshot (its first read starts it).
    """

    def __init__(self, conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> None:
        self._conn = conn
        self._begin = f"BEGIN {mode}"

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._conn.execute(self._begin)
        except sqlite3.Error as error:
            raise StoreError(str(error)) from error
        return self._conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.Error as error:
                self._conn.execute("ROLLBACK")
                raise StoreError(str(error)) from error
        self._conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(str(exc)) from exc
