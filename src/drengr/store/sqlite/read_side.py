"""The SQLite store's read-side tables: the rollups' statements, the user index, the backfill.

The rollups (drengr.store.rollups counts what a group adds) are kept in the
transaction that inserts the rows; the user index is filled by the writer off
the hot path (``index_users``); ``backfill_rollups`` counts the rows older than
the rollups into them, beside a serving process. Imports only the standard
library and ``drengr.store``.
"""

import functools
import itertools
import re
import sqlite3
from collections.abc import Callable
from typing import Any

from ..base import StoreError, schema_statements
from ..rollups import ROLLUP_GRAINS, hourly, rollup_rows
from .connect import Transaction

# The rollups' tables alone (the backfill makes them in a file that has none yet).
ROLLUP_TABLES = tuple(
    statement
    for statement in schema_statements("sqlite")
    if re.search(r"CREATE TABLE IF NOT EXISTS \w*_rollups ", statement)
)
# The read side's rollups (docs/performance.md "Reading at 10M rows"): per tenant, received minute
# (`2026-11-26T02:50`), event name and type, the events stored; per measure, its sum; and the same
# per received hour (`2026-11-26T02`), so that a week is ~2,000 rows to add, not ~120,000. Kept in
# the transaction that inserts the rows, from the rows just inserted: /v1/stats, the debugger's
# chart and the analyst queries read these instead of scanning semantic_events.
# `meta.rollups_from_seq` is the first seq they cover: a database made before them has older rows
# until `drengr db backfill-rollups` runs.
# The writer counts the rows it holds in Python (a few dict updates a row) and upserts one row per
# tenant, minute (hour) and name: an INSERT … SELECT … GROUP BY over the rows just written cost 40 %
# of the rate of 100-event batches (bench/bench_read.py), this costs a few µs a batch. The backfill
# uses the SQL.
HOURLY_FROM_MINUTES = (
    "INSERT INTO hourly_event_rollups (tenant_id, hour, event_name, event_type, events) "
    "SELECT tenant_id, substr(minute, 1, 13), event_name, event_type, sum(events) FROM event_rollups "
    "GROUP BY 1, 2, 3, 4",
    "INSERT INTO hourly_measure_rollups (tenant_id, hour, event_name, measure, total) "
    "SELECT tenant_id, substr(minute, 1, 13), event_name, measure, sum(total) FROM measure_rollups "
    "GROUP BY 1, 2, 3, 4",
)


def _rollup_sql(where: str, sign: str = "") -> list[tuple[str, bool]]:
    """INSERT … SELECT statements counting the rows ``where`` selects into every grain: (sql, is_measure)."""
    statements = []
    for prefix, column, width in ROLLUP_GRAINS:
        statements.append((
            f"INSERT INTO {prefix}event_rollups (tenant_id, {column}, event_name, event_type, events) "
            f"SELECT tenant_id, substr(received_at, 1, {width}), event_name, event_type, {sign}count(*) "
            f"FROM semantic_events WHERE {where} GROUP BY 1, 2, 3, 4 "
            "ON CONFLICT DO UPDATE SET events = events + excluded.events",
            False,
        ))  # fmt: skip
        statements.append((
            f"INSERT INTO {prefix}measure_rollups (tenant_id, {column}, event_name, measure, total) "
            f"SELECT e.tenant_id, substr(e.received_at, 1, {width}), e.event_name, m.key, {sign}sum(m.value) "
            f"FROM semantic_events AS e, json_each(e.measures) AS m "
            f"WHERE {where.replace('seq', 'e.seq')} AND e.measures != '{{}}' AND m.type IN ('integer', 'real') "
            "GROUP BY 1, 2, 3, 4 ON CONFLICT DO UPDATE SET total = total + excluded.total",
            True,
        ))  # fmt: skip
    return statements


ROLLUP_RANGE = _rollup_sql("seq >= ? AND seq <= ?")


@functools.cache
def _upsert_template(prefix: str, column: str, measures: bool) -> str:
    if measures:
        return (
            f"INSERT INTO {prefix}measure_rollups (tenant_id, {column}, event_name, measure, total) "
            "VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET total = total + excluded.total"
        )
    return (
        f"INSERT INTO {prefix}event_rollups (tenant_id, {column}, event_name, event_type, events) "
        "VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET events = events + excluded.events"
    )


@functools.cache
def _upsert_statement(template: str, rows: int) -> str:
    """``template`` with ``rows`` rows of VALUES: one statement, one step (see insert_events)."""
    head, tail = template.split(" VALUES (?,?,?,?,?) ")
    return f"{head} VALUES " + ",".join(["(?,?,?,?,?)"] * rows) + " " + tail


def _upsert(conn: sqlite3.Connection, template: str, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), 512):  # 2,560 parameters a statement at most
        part = rows[start : start + 512]
        conn.execute(_upsert_statement(template, len(part)), list(itertools.chain.from_iterable(part)))


def add_to_rollups(conn: sqlite3.Connection, requests: list[list[tuple[Any, ...]]]) -> None:
    """Count the rows just inserted, one list a request, into both grains (inside the caller's transaction)."""
    events, measures = rollup_rows(requests)
    _upsert(conn, _upsert_template("", "minute", False), events)
    _upsert(conn, _upsert_template("hourly_", "hour", False), hourly(events))
    if measures:
        _upsert(conn, _upsert_template("", "minute", True), measures)
        _upsert(conn, _upsert_template("hourly_", "hour", True), hourly(measures))


def remove_from_rollups(conn: sqlite3.Connection, seqs: list[int]) -> None:
    """Take the stored rows ``seqs``, about to be deleted (a prune), out of the rollups (same transaction).

    Only rows the rollups counted (seq at or after ``meta.rollups_from_seq``). A count
    that reaches 0 stays until ``tidy_rollups``; the reader skips it.
    """
    found = conn.execute("SELECT value FROM meta WHERE key = 'rollups_from_seq'").fetchone()
    counted = [seq for seq in seqs if found is not None and seq >= int(found[0])]
    if not counted:
        return
    marks = ",".join("?" * len(counted))
    for statement, _ in _rollup_sql(f"seq IN ({marks})", sign="-"):
        conn.execute(statement, counted)


def tidy_rollups(conn: sqlite3.Connection) -> None:
    """Drop the rollup rows a prune emptied (a count of 0, and the measure sums of those minutes)."""
    for prefix, column, _ in ROLLUP_GRAINS:
        conn.execute(f"DELETE FROM {prefix}event_rollups WHERE events <= 0")
        conn.execute(
            f"DELETE FROM {prefix}measure_rollups WHERE NOT EXISTS (SELECT 1 FROM {prefix}event_rollups AS e "
            f"WHERE e.tenant_id = {prefix}measure_rollups.tenant_id AND e.{column} = {prefix}measure_rollups.{column} "
            f"AND e.event_name = {prefix}measure_rollups.event_name)"
        )


def add_stored_to_rollups(conn: sqlite3.Connection, first_seq: int, last_seq: int) -> None:
    """Count the stored rows with first_seq <= seq <= last_seq into the rollups (the backfill)."""
    for statement, _ in ROLLUP_RANGE:
        conn.execute(statement, (first_seq, last_seq))


# The user index (docs/performance.md "Reading at 10M rows"): one row per stored event with an
# external_id, so that one user's events are found without walking back through the table. Kept off
# the hot path: the writer indexes a block of 16,384 seqs once the table has moved past it, in a
# transaction of its own, when it has nothing else to do (and at once when it is two blocks behind).
# Keyed by block first, the entries of a block are appended at the end of the tree (no page of an
# older block is touched again); a look-up is one seek per block. The rows past the last indexed block
# are read from the table. Entries of pruned rows stay until their block is gone: the reader fetches
# rows by seq, and a deleted row is simply not there.
USER_INDEX_BLOCK_BITS = 14
USER_INDEX_BEHIND_BLOCKS = 2  # index at once, even with jobs waiting, when this many blocks are due


def indexed_blocks(conn: sqlite3.Connection) -> int:
    """How many blocks the user index covers: every seq below ``blocks << USER_INDEX_BLOCK_BITS``."""
    found = conn.execute("SELECT value FROM meta WHERE key = 'user_index_blocks'").fetchone()
    return int(found[0]) if found else 0


def index_users(conn: sqlite3.Connection, top_seq: int, max_blocks: int = 1) -> int:
    """Index up to ``max_blocks`` complete blocks (inside the caller's write transaction); the blocks now covered.

    A block is complete once a row past it exists (``top_seq``, the newest seq): seqs
    only grow, and the caller holds the write lock.
    """
    blocks = indexed_blocks(conn)
    done = 0
    while done < max_blocks and top_seq >= (blocks + 1) << USER_INDEX_BLOCK_BITS:
        conn.execute(
            "INSERT INTO user_index (block, tenant_id, external_id, seq) "
            "SELECT ?, tenant_id, external_id, seq FROM semantic_events "
            "WHERE seq >= ? AND seq < ? AND external_id IS NOT NULL ORDER BY tenant_id, external_id, seq",
            (blocks, blocks << USER_INDEX_BLOCK_BITS, (blocks + 1) << USER_INDEX_BLOCK_BITS),
        )
        conn.execute(
            # No DISTINCT … ORDER BY: sorting the block cost 2.6 µs a row here, the plain insert 1.
            "INSERT OR IGNORE INTO daily_users (tenant_id, day, external_id) "
            "SELECT tenant_id, substr(received_at, 1, 10), external_id FROM semantic_events "
            "WHERE seq >= ? AND seq < ? AND external_id IS NOT NULL",
            (blocks << USER_INDEX_BLOCK_BITS, (blocks + 1) << USER_INDEX_BLOCK_BITS),
        )
        blocks += 1
        done += 1
    if done:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('user_index_blocks', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(blocks),),
        )
    return blocks


def backfill_rollups(
    path: str,
    chunk_rows: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
    busy_timeout_ms: int = 5_000,
) -> int:
    """Count the rows older than the rollups into them, newest first, ``chunk_rows`` a transaction.

    Runs beside a serving process: each chunk holds the write lock briefly (the
    server's writer waits for it, within its busy timeout), and a stopped
    backfill resumes where it stopped (``meta.rollups_from_seq`` moves down
    with each chunk). ``progress(done, total)`` after each chunk. Returns the
    rows counted.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        with Transaction(conn):
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'semantic_events'").fetchone() is None:
                raise StoreError(f"{path} has no semantic_events table: is it drengr's database?")
            for statement in ROLLUP_TABLES:
                conn.execute(statement)
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            found = conn.execute("SELECT value FROM meta WHERE key = 'rollups_from_seq'").fetchone()
            if found is None:  # tables made just now: every row is older than them
                top = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM semantic_events").fetchone()[0]
                conn.execute("INSERT INTO meta (key, value) VALUES ('rollups_from_seq', ?)", (str(top),))
            from_seq = int(found[0]) if found else top
            lowest = conn.execute("SELECT coalesce(min(seq), 1) FROM semantic_events").fetchone()[0]
        total = max(0, from_seq - lowest)
        done = 0
        while True:
            with Transaction(conn):
                from_seq = int(
                    conn.execute("SELECT value FROM meta WHERE key = 'rollups_from_seq'").fetchone()[0]
                )
                if from_seq <= lowest:
                    break
                low = max(lowest, from_seq - chunk_rows)
                add_stored_to_rollups(conn, low, from_seq - 1)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'rollups_from_seq'", (str(low),))
            done += from_seq - low
            if progress is not None:
                progress(done, total)
        return done
    except sqlite3.Error as error:
        raise StoreError(f"cannot backfill the rollups of {path}: {error}") from error
    finally:
        conn.close()
