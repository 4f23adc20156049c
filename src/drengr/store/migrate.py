"""``drengr db import-sqlite``: a SQLite store's tenants, keys, usage and events copied into PostgreSQL.

Imports psycopg (through ``drengr.store.postgres``): loaded only by that command.
"""

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ..core.limits import MS_PER_DAY
from ..core.timestamps import parse_ms
from .base import Store, StoreError, first_line
from .postgres import PostgresStore
from .postgres.statements import _COPY_EVENTS, _INSERT_IDS, _WRITE_TURN, EVENT_COLUMNS, WRITE_TURN_LOCK
from .postgres.store import build_read_side
from .postgres.text import clean_rows


def import_sqlite(
    store: Store,
    path: str,
    chunk_rows: int = 10_000,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Copy a SQLite store (``drengr.db``) into ``store``'s database; safe to run again, resumes where it stopped.

    Tenants, keys (their digests), daily usage and every ``semantic_events``
    row, in ``seq`` order, ``chunk_rows`` a transaction. Each chunk records
    the last SQLite ``seq`` it copied in ``drengr_meta`` in the same
    transaction, so a second run copies only what is new. The event ids go
    into the dedup table with the day of their ``received_at``: a
    client retry that reaches PostgreSQL after the move is still caught.
    No cap applies, and nothing is counted as today's usage. ``progress(done, total)``
    after each chunk: rows of this run copied or skipped, of those it found to copy.
    """
    if not isinstance(store, PostgresStore):
        raise StoreError("import-sqlite copies into a PostgreSQL store (--store postgresql://…)")
    where = Path(path).resolve()  # as a URI: a % or # in the path is the file's, not the URI's
    try:
        source = sqlite3.connect(f"{where.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open {path}: {error}") from error
    marker = f"sqlite_import_last_seq:{where}"
    try:  # a file from before `library` (schema version 1) gives NULL for it
        source_has = {row[1] for row in source.execute("PRAGMA table_info(semantic_events)")}
        tenants_have = {row[1] for row in source.execute("PRAGMA table_info(tenants)")}
        tenant_columns = "tenant_id, daily_cap, created_at" + (
            ", pii_allow" if "pii_allow" in tenants_have else ""
        )
    except sqlite3.Error as error:
        source.close()
        raise StoreError(f"cannot read {path}: {error}") from error
    source_columns = ", ".join(c if c in source_has else f"NULL AS {c}" for c in EVENT_COLUMNS)
    counts = {"tenants": 0, "api_keys": 0, "daily_usage": 0, "events": 0, "duplicates": 0}
    try:
        conn = store._reader()  # noqa: SLF001 - the store's connection for this thread
        with conn.transaction(), conn.cursor() as cur:
            for table, columns, conflict in (
                ("tenants", tenant_columns, "DO NOTHING"),
                ("api_keys", "key_hash, key_id, tenant_id, kind, created_at, revoked_at",
                 "(key_hash) DO UPDATE SET revoked_at = coalesce(api_keys.revoked_at, excluded.revoked_at)"),
                ("daily_usage", "tenant_id, day, events",
                 "(tenant_id, day) DO UPDATE SET events = greatest(daily_usage.events, excluded.events)"),
            ):  # fmt: skip
                rows = source.execute(f"SELECT {columns} FROM {table}").fetchall()
                marks = ", ".join(["%s"] * len(columns.split(",")))
                cur.executemany(
                    f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT {conflict}", rows
                )
                counts[table] = len(rows)
        found = conn.execute("SELECT value FROM drengr_meta WHERE key = %s", (marker,)).fetchone()
        total = source.execute(
            "SELECT count(*) FROM semantic_events WHERE seq > ?", (int(found[0]) if found else 0,)
        ).fetchone()[0]
        done = 0
        while True:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT value FROM drengr_meta WHERE key = %s FOR UPDATE", (marker,))
                found = cur.fetchone()
                last_seq = int(found[0]) if found else 0
                chunk = source.execute(
                    f"SELECT {source_columns}, seq FROM semantic_events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last_seq, chunk_rows),
                ).fetchall()
                if not chunk:
                    break
                rows = clean_rows([row[:-1] for row in chunk])
                first: dict[tuple[str, str], tuple[Any, ...]] = {}
                for row in rows:  # a repeat SQLite kept (beyond its window) is kept once here
                    first.setdefault((row[0], row[1]), row)
                rows = list(first.values())
                days = [(parse_ms(row[7]) or 0) // MS_PER_DAY for row in rows]
                cur.execute(_INSERT_IDS, ([r[0] for r in rows], [r[1] for r in rows], days))
                new = set(cur.fetchall())
                fresh = [row for row in rows if (row[0], row[1]) in new]
                cur.execute(_WRITE_TURN, (WRITE_TURN_LOCK,))  # a serving node's builder waits for this chunk
                with cur.copy(_COPY_EVENTS) as copy:
                    for row in fresh:
                        copy.write_row(row)
                cur.execute(
                    "INSERT INTO drengr_meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (marker, str(chunk[-1][-1])),
                )
                counts["events"] += len(fresh)
                counts["duplicates"] += len(rows) - len(fresh)
            done += len(chunk)
            if progress is not None:
                progress(done, max(total, done))
        build_read_side(conn)  # the rows it copied, into the rollups and the user index
        return counts
    except (psycopg.Error, sqlite3.Error) as error:
        raise StoreError(f"import from {path} failed: {first_line(error)}") from error
    finally:
        source.close()
