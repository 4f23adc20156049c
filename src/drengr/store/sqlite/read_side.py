"""The SQLite store's read side: the rollups, the user index and ``daily_users``, kept beside the writes.

``Builder`` (a thread beside the writer) indexes the users file and counts the
rollups: of the rows its writer committed from memory (``Committed``,
``index_committed``), of any other from a copy of the table (``copy_step``,
``index_users``); its counts are added in the writer's next transaction. Every row
up to ``meta.read_side_seq`` is in the rollups; readers take the rows past it from the table.
A prune takes its rows out of the rollups in its own transaction
(``remove_from_rollups``). ``backfill_rollups`` counts the rows older than the
rollups into them, beside a serving process. Imports only the standard library
and ``drengr.store``.
"""

import collections
import contextlib
import fcntl
import itertools
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..base import StoreError, schema_statements
from ..rollups import NAME_BLOCK_BITS, ROLLUP_GRAINS
from .connect import Transaction
from .locks import open_lock_file

try:
    if os.environ.get("DRENGR_NO_EXTENSIONS"):  # the pure twin, by request (as drengr.mapping)
        raise ImportError("DRENGR_NO_EXTENSIONS=1")
    from ..._measures import Sums, UserRows, sum_measures
except ImportError:  # the extension did not build (or is not wanted); the twin gives the same sums
    from ..._measures_py import Sums, UserRows, sum_measures  # type: ignore[assignment]
from ..._measures_py import Summary

log = logging.getLogger("drengr.store")

# The rollups' tables alone (the backfill makes them in a file that has none yet).
ROLLUP_TABLES = tuple(
    statement
    for statement in schema_statements("sqlite")
    if re.search(r"CREATE TABLE IF NOT EXISTS \w*_rollups ", statement)
)
# The read side's rollups (docs/performance.md "Reading at 10M rows"): per tenant, received minute
# (`2026-11-26T02:50`), event name and type, the events stored; per measure, its sum; and the same
# per received hour (`2026-11-26T02`), so that a week is ~2,000 rows to add, not ~120,000.
# /v1/stats, the debugger's chart and the analyst queries read these instead of scanning
# semantic_events. `meta.rollups_from_seq` is the first seq they cover: a database made before them
# has older rows until `drengr db backfill-rollups` runs.
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
            f"SELECT e.tenant_id, substr(e.received_at, 1, {width}), e.event_name, m.key, {sign}total(m.value) "
            f"FROM semantic_events AS e, json_each(e.measures) AS m "
            f"WHERE {where.replace('seq', 'e.seq')} AND e.measures != '{{}}' AND m.type IN ('integer', 'real') "
            # total(), not sum(): a float, never an integer overflow. An infinite sum less itself is
            # NaN, which the column cannot hold: 0 then (the rows that made it are gone).
            "GROUP BY 1, 2, 3, 4 ON CONFLICT DO UPDATE SET total = coalesce(total + excluded.total, 0.0)",
            True,
        ))  # fmt: skip
    return statements


ROLLUP_RANGE = _rollup_sql("seq >= ? AND seq <= ?")
# Whether the table holds a row below a seq (``schema``: "events." where the database is attached).
ROWS_BELOW = "SELECT 1 FROM {schema}semantic_events WHERE seq < ? LIMIT 1"


def remove_from_rollups(conn: sqlite3.Connection, seqs: list[int]) -> None:
    """Take the stored rows ``seqs``, about to be deleted (a prune), out of the rollups (same transaction).

    Only rows the rollups counted (``rollups_from_seq`` <= seq <= ``read_side_seq``);
    should any row past ``read_side_seq`` go, a step counting it now is dropped
    (``mark_pruned``). A count that reaches 0 stays until ``tidy_rollups``; the
    reader skips it.
    """
    found = conn.execute("SELECT value FROM meta WHERE key = 'rollups_from_seq'").fetchone()
    built = built_to(conn)
    if any(seq > built for seq in seqs):
        mark_pruned(conn)
    if seqs:  # the builder's rows in memory: any at or below it are looked for in the table
        conn.execute(_META, ("pruned_seq", str(max(max(seqs), _meta_int(conn, "pruned_seq")))))
    counted = [seq for seq in seqs if found is not None and int(found[0]) <= seq <= built]
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


# The read side follows the table from a thread of its own (``Builder``), off the writer's path.
# Counting in the write transaction cost ~25 % of the rate of 100-event batches
# (bench/bench_read.py): the writer holds SQLite's write lock for every µs of it.
#
# - The rollups: every row with seq <= `meta.read_side_seq` (and >= `meta.rollups_from_seq`) is
#   counted; readers take the rows past it from the table (a few thousand at most). A step counts
#   the new rows (from memory, or from a copy of the table: no lock), then hands the counts (a few
#   dozen rows) to the writer, which adds them and moves `read_side_seq` in its next transaction,
#   only if nobody moved it (or pruned, `read_side_epoch`) meanwhile. Counting in the writer's
#   transactions held the write lock for every µs of it: ~0.7 µs a row of five measures.
# - The user index (`user_seqs`: a row per user and step, its seqs in a list) and `daily_users` (a
#   row per user and day) live in a file of their own beside the database (`drengr-users.db`,
#   schema/sqlite-users.sql), written by the builder with the database attached and only read:
#   the writer never waits for them. Every row with seq <= its `users_seq` is indexed; readers
#   take the rows past it from the table. The file is derived: deleted, found indexing another
#   database (`database_id`) or laid out otherwise (`layout`), it is built again.
# - The rows its own writer committed, the builder indexes and counts from memory (`Committed`,
#   `index_committed`), without reading them back from the table: once a group's requests are
#   answered, what the builder needs of its rows is added up (`Held`: each user's seqs, each name's
#   span, the counts and sums; ~0.3 µs a row, compiled), by the writer, or by the builder's
#   hand-over thread while the writer commits jobs that wait already (`HANDED_ROWS`), and the builder
#   writes a few rows per run (a new database's users file is made from them too). It copies from
#   the table only what is not there: other processes' rows, a file built again for rows stored
#   before it, a writer that ran past `HELD_BYTES`.
# - `name_blocks`, in the same file and step: per tenant, event name and block of 1,024 seqs, the
#   first and last seq of the name there (a few rows per block), which take a page of a rare name
#   straight to its rows.
#
# Entries of pruned rows stay in the user index and name blocks until their block is gone: the
# reader fetches rows by seq, and a deleted row is simply not there.
USER_INDEX_BLOCK_BITS = 14
BUILD_STEP_ROWS = 16_384  # rows a step counts at most
BUILD_EVERY_SECONDS = 0.25  # how often the builder looks for rows (other processes' too)
# And at once after the writer committed this many: a step's writes cost about the same for 4,096
# rows as for 16,384 (a users file row per user, a commit): under load, steps of 4,096 cost the
# writer process 0.2–0.8 µs an event more than steps of 16,384 (100-event batches, c=8).
BUILD_AFTER_ROWS = 16_384
# And once the writer has had no group for WRITER_IDLE_SECONDS with this many waiting: the end of
# a burst is built at once, not at the next tick; fewer wait for the tick (a row per user and
# step in the users file, which a step every few hundred events would multiply).
BUILD_WHEN_IDLE_ROWS = 1_024
WRITER_IDLE_SECONDS = 0.02
# The builder thread's niceness: where it competes for a core with the writer or the request
# threads, they go first (it catches up when they wait: for the disk, for requests).
BUILDER_NICENESS = 10
# How long a step's counts wait for the writer's next group to add them (then the builder does); an
# idle writer (``Writer.idle``: no group for WRITER_IDLE_SECONDS) is not waited for.
HAND_OVER_SECONDS = 0.05
# Builders of one database (one per writing process or store) take turns at an OS lock on
# `<database>-builder.lock`: a turn builds what is there, and a builder that finds the lock taken
# leaves those rows to the holder instead of counting them too. A stopping builder waits for its
# turn this long, to catch up before its store closes.
STOP_WAIT_SECONDS = 20.0

# A step copies its rows out of the database inside a read snapshot as short as it can be, then
# counts and indexes them from the copy: a snapshot held while counting kept the WAL checkpoints
# from finishing under load, and the log grew past 50 MB instead of starting over. One copy serves
# the rollups and the users file (it starts at the lower of their two marks), and one GROUP BY
# serves the rollups' minutes and the name blocks: name first, where SQLite's sort compares the
# fewest bytes (about a third faster than tenant first).
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS step_rows "
    "(seq, tenant_id, received_at, event_name, event_type, measures, external_id)",
    "CREATE TEMP TABLE IF NOT EXISTS step_groups "
    "(event_name, block, minute, event_type, tenant_id, fresh, events, first_seq, last_seq)",
)
_COPY = (
    "INSERT INTO temp.step_rows SELECT seq, tenant_id, received_at, event_name, event_type, measures, external_id "
    "FROM events.semantic_events WHERE seq > :low AND seq <= :high"
)
# `fresh`: past the rollups' mark (rows the users file alone still lacks are copied too, not counted).
_GROUP = (
    "INSERT INTO temp.step_groups SELECT event_name, seq >> :name_bits, substr(received_at, 1, 16), event_type, "
    "tenant_id, seq > :built, count(*), min(seq), max(seq) FROM temp.step_rows GROUP BY 1, 2, 3, 4, 5, 6"
)
_COUNT_EVENTS = (
    "SELECT tenant_id, minute, event_name, event_type, sum(events) FROM temp.step_groups WHERE fresh "
    "GROUP BY 1, 2, 3, 4"
)
# The measures are added up by `sum_measures` (compiled): `json_each` in this step's GROUP BY took
# ~7.5 µs a row of five measures, ten times as long, and two thirds of the whole step.
_MEASURED_ROWS = (
    "SELECT tenant_id, substr(received_at, 1, 16), event_name, measures FROM temp.step_rows "
    "WHERE seq > :built AND measures != '{}'"
)
_UPSERTS = (
    ("event_rollups", "minute", "event_type", "events"),
    ("hourly_event_rollups", "hour", "event_type", "events"),
    ("measure_rollups", "minute", "measure", "total"),
    ("hourly_measure_rollups", "hour", "measure", "total"),
)
# The users file's part of a step: the user index and daily_users from the rows of {source} past
# `users_seq` (:indexed; a copy may hold older ones, for the rollups' sake), a row each (SQLite
# runs these without the GIL, ~1.5 µs a row together); the name blocks from the copy's groups.
_INDEX_EACH = (
    "INSERT OR IGNORE INTO user_seqs SELECT seq >> :bits, tenant_id, external_id, seq, seq FROM {source} "
    "WHERE external_id IS NOT NULL AND seq > :indexed AND seq <= :high",
    "INSERT OR IGNORE INTO daily_users SELECT tenant_id, substr(received_at, 1, 10), external_id FROM {source} "
    "WHERE external_id IS NOT NULL AND seq > :indexed AND seq <= :high",
)
_ADD_NAME_BLOCK = (
    " ON CONFLICT DO UPDATE SET first_seq = min(first_seq, excluded.first_seq), "
    "last_seq = max(last_seq, excluded.last_seq)"
)
_INDEX_USERS = (
    *(statement.format(source="temp.step_rows") for statement in _INDEX_EACH),
    "INSERT INTO name_blocks SELECT tenant_id, event_name, block, min(first_seq), max(last_seq) "
    "FROM temp.step_groups WHERE true GROUP BY 1, 2, 3" + _ADD_NAME_BLOCK,
)
# From the rows in memory (`UserRows`): a row per user and step, and the users of the step's days
# (~2 µs a row each from Python); where a step's rows hold many users, `_INDEX_EACH` from the table.
_INDEX_COMMITTED = (
    "INSERT OR IGNORE INTO user_seqs VALUES (?, ?, ?, ?, ?)",
    "INSERT OR IGNORE INTO daily_users VALUES (?, ?, ?)",
    "INSERT INTO name_blocks VALUES (?, ?, ?, ?, ?)" + _ADD_NAME_BLOCK,
)
# A step's rows hold few users when they give at most one user_seqs row per this many rows; after
# a step of many, the next ones index a row each from the table, and look again every few steps.
FEW_USERS = 4
MANY_USERS_STEPS = 8
# The users file's layout: one of another (an older drengr's `user_index`, a row per event) is built again.
USERS_LAYOUT = "2"
# At most about this much memory of what the builder needs of the rows its writer committed waits
# for it (``Held``, measured with tracemalloc: ~11 bytes a row; ~250 a user and run where its users
# are counted, ~340 with the pure twin; ~800 a new event name, ~130 a new measure of one, in a
# minute: some 1M rows of the same 100 users and names, 40,000 of as many users); past it, the
# builder copies them from the table, which costs several times as much. A builder behind the load
# (its thread yields its core to the request threads) catches up in larger steps, cheaper a row.
HELD_BYTES = 16 << 20
HELD_ROW_BYTES, HELD_USER_BYTES, HELD_ENTRY_BYTES = 16, 384, 320  # an entry: a name's count, span or sum
# Where jobs wait already as the writer has answered a group, it hands the group to a thread of the
# builder's (``Committed.hand``), which adds it up (``settle``) while the writer commits those jobs:
# SQLite lets go of the GIL for the commit's write and fdatasync, and the writer's loop, which sets
# the rate where its core is full, no longer waits for the pass (~4 % of it). Where none wait, the
# writer adds it up itself, with any waiting before it, in time it would wait for jobs.
# Past this many rows waiting for that thread (held up), the writer adds them up itself: the rows'
# own tuples wait there, ~1 KB a row.
HANDED_ROWS = 16_384
# The thread is woken once this many rows wait for it, not for each group (at c=8, a batch or two):
# each wake-up is the thread's and the GIL's back and forth on the writer's core (pinned, c=8, the
# thread ran 0.04 of that core instead of 0.05).
WAKE_ROWS = 1_024
_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_INFINITY = "9e999"  # SQLite's literal for +inf


def users_path(path: str) -> str:
    """The user index's file beside the database: ``drengr.db`` → ``drengr-users.db``."""
    database = Path(path)
    return str(database.with_name(f"{database.stem}-users{database.suffix}"))


def _meta_int(conn: sqlite3.Connection, key: str, default: int = 0, table: str = "meta") -> int:
    found = conn.execute(f"SELECT value FROM {table} WHERE key = ?", (key,)).fetchone()
    return int(found[0]) if found else default


def built_to(conn: sqlite3.Connection) -> int:
    """``read_side_seq``: every row with seq at or below it is in the rollups."""
    return _meta_int(conn, "read_side_seq")


def mark_pruned(conn: sqlite3.Connection) -> None:
    """A prune deleted rows the builder may be counting now (inside the prune's transaction)."""
    conn.execute(_META, ("read_side_epoch", str(_meta_int(conn, "read_side_epoch") + 1)))


class Counted:
    """What one step counted: the rows ``low < seq <= high`` as rollup rows, to be added in a write
    transaction (``add_counted``), by the writer in its next group or by the builder itself."""

    def __init__(
        self, low: int, high: int, epoch: int, events: list[tuple[Any, ...]], measures: list[tuple[Any, ...]]
    ):
        self.low, self.high, self.epoch = low, high, epoch
        self.events, self.measures = events, measures
        self.added: bool | None = None  # set by whoever tried to add it
        self.done = threading.Event()


class Step:
    """What one step copied (the rows ``low < seq <= high``): the rollups' counts of the rows past
    their mark (``counted``, None: none), and whether the users file lacks some of them."""

    def __init__(
        self, low: int, high: int, counted: Counted | None, users: tuple[int, Any, Any, bool] | None
    ) -> None:
        self.low, self.high, self.counted = low, high, counted
        # (users_seq as read, the database_id it indexes, the database's, built again?); None: the
        # users file lacks none of these rows.
        self.users = users


def copy_step(
    users: sqlite3.Connection, max_rows: int = BUILD_STEP_ROWS, below: int | None = None
) -> Step | None:
    """Copy up to ``max_rows`` rows past the lower of the two marks in a read snapshot of both files,
    and count the rollups' part of them; None: nothing new.

    ``users`` comes from ``open_users`` (the database attached as ``events``), not in a transaction.
    ``below``: the last seq to copy at most (the rows past it are in memory: ``index_committed``).
    """
    for statement in _STAGING:
        users.execute(statement)
    for table in ("step_rows", "step_groups"):
        users.execute(f"DELETE FROM temp.{table}")
    with Transaction(users, "DEFERRED"):  # a read snapshot of both files, for the copy alone
        built = _meta_int(users, "read_side_seq", table="events.meta")
        epoch = _meta_int(users, "read_side_epoch", table="events.meta")
        found = users.execute("SELECT value FROM events.meta WHERE key = 'database_id'").fetchone()
        indexes = users.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
        layout = users.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()
        seen, top = _meta_int(users, "users_seq", -1), _top(users, "events.")
        noted = users.execute("SELECT value FROM meta WHERE key = 'users_row'").fetchone()
        # Another database's, one cut back (a backup restored under it, written to since or not), or
        # another layout: built again.
        again = (
            found is None
            or indexes != found
            or seen > top
            or _users_row_moved(users, seen, None if noted is None else noted[0])
            or layout != (USERS_LAYOUT,)
        )
        indexed = 0 if again else seen
        low = min(built, indexed)
        high = min(top, low + max_rows, top if below is None else below)
        if high <= low:
            return None
        users.execute(_COPY, {"low": low, "high": high})
    users.execute(_GROUP, {"name_bits": NAME_BLOCK_BITS, "built": built})
    counted = None
    if high > built:
        events = users.execute(_COUNT_EVENTS).fetchall()
        measures = sum_measures(users.execute(_MEASURED_ROWS, {"built": built}))
        counted = Counted(built, high, epoch, events, measures)
    return Step(low, high, counted, (seen, indexes, found, again) if high > indexed else None)


def add_counted(conn: sqlite3.Connection, counted: Counted) -> bool:
    """Add ``counted`` to the rollups and move ``read_side_seq`` (inside the caller's write transaction).

    False, and nothing done, when another builder or a prune moved first (it is counted again).
    """
    if built_to(conn) != counted.low or _meta_int(conn, "read_side_epoch") != counted.epoch:
        return False
    # As the rollups hold sums (total REAL): a Python int past 64 bits would not bind at all.
    measures = [(*key, float(total)) for *key, total in counted.measures]
    for (table, column, other, value), rows in zip(
        _UPSERTS,
        (counted.events, _hourly(counted.events), measures, _hourly(measures)),
        strict=True,
    ):
        added = f"{value} + excluded.{value}"
        if value == "total":
            # A sum past the largest double either way (+inf plus -inf: NaN, which SQLite stores as
            # NULL, and the column refuses) stays past it: infinite, which the API answers null.
            rows = [(*key, math.inf if math.isnan(total) else total) for *key, total in rows]
            added = f"coalesce({added}, {_INFINITY})"
        for start in range(0, len(rows), 500):  # 2,500 parameters a statement at most
            part = rows[start : start + 500]
            conn.execute(
                f"INSERT INTO {table} (tenant_id, {column}, event_name, {other}, {value}) VALUES "
                + ",".join(["(?,?,?,?,?)"] * len(part))
                + f" ON CONFLICT DO UPDATE SET {value} = {added}",
                list(itertools.chain.from_iterable(part)),
            )
    conn.execute(_META, ("read_side_seq", str(counted.high)))
    return True


def add_in_savepoint(conn: sqlite3.Connection, counted: Counted) -> bool:
    """``add_counted`` inside the writer's transaction, in a savepoint: a failure there fails nothing
    else of the group. False when nothing was added (the mark moved, or an error: counted again)."""
    conn.execute("SAVEPOINT read_side")
    try:
        added = add_counted(conn, counted)
        conn.execute("RELEASE read_side")
    except (sqlite3.Error, OverflowError, ValueError) as error:
        conn.execute("ROLLBACK TO read_side")
        conn.execute("RELEASE read_side")
        log.warning("the read side's counts were not added (counted again): %s", error)
        return False
    return added


def _hourly(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Minute rollup rows (tenant, minute, name, type or measure, value) added up by hour."""
    added: dict[tuple[Any, ...], Any] = {}
    for tenant_id, minute, name, other, value in rows:
        key = (tenant_id, minute[:13], name, other)
        added[key] = added.get(key, 0) + value
    return [(*key, value) for key, value in added.items()]


def open_users(path: str, busy_timeout_ms: int = 5_000) -> sqlite3.Connection:
    """A connection to the users file of the database at ``path`` (made if missing), the database attached as ``events``."""
    conn = sqlite3.connect(
        users_path(path), isolation_level=None, timeout=busy_timeout_ms / 1000, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # derived: a step lost to a crash is built again
        conn.execute("PRAGMA temp_store = MEMORY")  # a step's copy
        for statement in schema_statements("sqlite-users"):
            conn.execute(statement)
        conn.execute("ATTACH DATABASE ? AS events", (path,))
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def index_users(users: sqlite3.Connection, step: Step) -> bool:
    """Index ``step``'s copy in the users file (``users`` from ``open_users``) and move ``users_seq``.

    False, and nothing done, when another builder moved first (it is indexed again later).
    """
    if step.users is None:
        return False
    seen, indexes, found, again = step.users
    with Transaction(users, "DEFERRED"):  # IMMEDIATE would lock the attached database too
        # The users file's write lock, then: nobody moved meanwhile.
        users.execute("INSERT INTO meta (key, value) VALUES ('users_seq', '-1') ON CONFLICT (key) DO NOTHING")
        if (
            _meta_int(users, "users_seq") != seen
            or users.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone() != indexes
        ):
            return False
        if again:
            users.execute("DROP TABLE IF EXISTS user_index")  # an older drengr's layout
            for table in ("user_seqs", "daily_users", "name_blocks"):
                users.execute(f"DELETE FROM {table}")
            users.execute(_META, ("database_id", None if found is None else found[0]))
            users.execute(_META, ("layout", USERS_LAYOUT))
        for statement in _INDEX_USERS:
            users.execute(
                statement,
                {"bits": USER_INDEX_BLOCK_BITS, "indexed": -1 if again else seen, "high": step.high},
            )
        _mark_users(users, step.high)
    return True


# A group of rows a writer committed: its first seq, the rows, and their counts added up already
# (``Job.summary``; None: added up from the rows).
Group = tuple[int, list[Any], Summary | None]


class Held:
    """A run of rows its writer committed with no other rows between (seqs ``first`` to ``last``), as
    its builder's parts of them, added up as each group was committed: the users file's
    (``UserRows``; its users counted or not, as the builder asked) and the rollups' (``Sums``)."""

    def __init__(self, first: int, count_users: bool) -> None:
        self.first, self.last, self.count_users = first, first - 1, count_users
        self.users = UserRows(USER_INDEX_BLOCK_BITS, NAME_BLOCK_BITS, count_users)
        self.sums = Sums()
        self.bytes = 0  # about the memory it holds

    def add(self, first_seq: int, rows: list[Any], summary: Summary | None = None) -> int:
        """Add a group right after it (``summary``: its rows' counts, added up already); about the
        memory that took. Should it raise, the run holds part of the group: it is to be let go."""
        users, entries = self.users.user_entries(), self.users.name_entries + self.sums.entries
        self.users.add(first_seq, rows)
        if summary is None:
            self.sums.add_rows(rows)
        else:
            self.sums.add_summary(summary)
        self.last += len(rows)
        size = (
            HELD_ROW_BYTES * len(rows)
            + HELD_USER_BYTES * (self.users.user_entries() - users)
            + HELD_ENTRY_BYTES * (self.users.name_entries + self.sums.entries - entries)
        )
        self.bytes += size
        return size


class Committed:
    """The rows a writer committed, as runs (``Held``) in order, for its builder to index and count
    from memory (``index_committed``): ``HELD_BYTES`` at most, the later ones left to the table.

    A busy writer hands each group over (``hand``: a list appended, nothing added up); the
    builder's hand-over thread adds them up in order (``settle``) while the writer commits the next.
    """

    def __init__(self) -> None:
        self._runs: collections.deque[Held] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()  # the writer hands over, the hand-over thread adds, the builder takes
        self.count_users = True  # whether new runs count their users (the builder says)
        self._coming: int | None = None  # the first seq of the rows being committed, not handed over yet
        # The groups handed over and not added up yet: (their first seq, their rows, the groups), and
        # the rows of all of them.
        self._handed: collections.deque[tuple[int, int, list[Group]]] = collections.deque()
        self._handed_rows = 0

    def expect(self, first_seq: int | None) -> None:
        """The writer is about to commit rows from ``first_seq`` on, and hand them over once its
        requests are answered (None: it did not commit them): till then a copy of the table stops
        below them."""
        with self._lock:
            self._coming = first_seq

    def hand(self, groups: list[Group]) -> int:
        """The groups a writer just committed, ``(first seq, rows, summary)`` (``Held.add``), to be
        added up by ``settle``;
        the rows waiting for it now (past ``HANDED_ROWS``, the caller settles them itself)."""
        with self._lock:
            self._coming = None
            firsts = [first_seq for first_seq, rows, _summary in groups if rows]
            if firsts:
                count = sum(len(rows) for _first_seq, rows, _summary in groups)
                self._handed.append((min(firsts), count, groups))
                self._handed_rows += count
            return self._handed_rows

    def settle(self) -> bool:
        """Add up the oldest groups handed over; False: none waits. Their rows stay the table's
        should it raise (a MemoryError). One caller at a time: they are added in order."""
        with self._lock:
            if not self._handed:
                return False
            _first_seq, count, groups = self._handed[0]
            try:
                self._add(groups)
            finally:
                self._handed.popleft()
                self._handed_rows -= count
        return True

    def add(self, groups: list[Group]) -> None:
        """The groups a writer just committed, ``(first seq, rows, summary)``, added up now (after
        any handed over before them)."""
        self.hand(groups)
        while self.settle():
            pass

    def _add(self, groups: list[Group]) -> None:
        """Add each group to the last run where it follows it, or as a new one (holding the lock).
        Past ``HELD_BYTES`` a group is not held (copied from the table)."""
        for first_seq, rows, summary in groups:
            if not rows:
                continue
            if self._bytes >= HELD_BYTES:
                continue  # the next group held starts a run of its own: this one is not in it
            run = self._runs[-1] if self._runs and self._runs[-1].last + 1 == first_seq else None
            if run is None:
                run = Held(first_seq, self.count_users)
                self._runs.append(run)
            try:
                self._bytes += run.add(first_seq, rows, summary)
            except BaseException:
                # (a MemoryError) it holds part of a group: its rows are the table's
                self._runs.pop()
                self._bytes -= run.bytes
                raise

    def copied(self, high: int) -> None:
        """A copy of the table reached seq ``high``: the runs that begin at or below it are let go (the
        writer's next group starts a new one, not one that would be let go too)."""
        with self._lock:
            while self._runs and self._runs[0].first <= high:
                self._bytes -= self._runs.popleft().bytes

    def first(self) -> int | None:
        """The first seq held, or None."""
        with self._lock:
            return self._runs[0].first if self._runs else None

    def take(self, indexed: int) -> tuple[list[Held], int | None]:
        """The runs right past seq ``indexed`` with no other rows between, and None; or no runs, and
        the seq below the first one held, handed over or coming (the rows up to it are not here: another
        process's, or a run cut by a copy of the table, which is let go), or None (none is)."""
        taken: list[Held] = []
        with self._lock:
            while self._runs and self._runs[0].first <= indexed + 1:
                run = self._runs.popleft()
                self._bytes -= run.bytes
                if run.first == indexed + 1:
                    taken.append(run)
                    indexed = run.last
                # otherwise some of its rows, or all, were indexed from the table: let go
            below = self._runs[0].first - 1 if self._runs and not taken else None
            if not taken:  # rows handed over or coming: a copy of them would let their run go
                for first_seq in (self._handed[0][0] if self._handed else None, self._coming):
                    if first_seq is not None:
                        below = first_seq - 1 if below is None else min(below, first_seq - 1)
        return taken, below


class FromMemory(NamedTuple):
    """What ``index_committed`` did."""

    rows: int  # the rows it indexed
    below: int | None  # none indexed: copy the table up to this seq first (the rows past it are held)
    few: bool  # their users were counted, and few
    counted: Counted | None  # their rollups, to add, when the rollups' mark was where the users file's was


def index_committed(users: sqlite3.Connection, committed: Committed) -> FromMemory:
    """Index in the users file (``users`` from ``open_users``) the runs ``committed`` holds right past
    its ``users_seq``, from memory, move ``users_seq`` past them, and give their rollups' counts when
    the rollups' mark is the same.

    Their users are indexed from memory when they are few (``FEW_USERS``), otherwise a row
    each from the table (``_INDEX_EACH``), as when a run did not count them. A new file is made
    here when the runs held begin at the table's first row (a new database: its writer's rows are
    all in memory); any other file to be built again is left to ``copy_step``.
    """
    with Transaction(users, "DEFERRED"):
        # The users file's write lock first: nobody moves users_seq meanwhile.
        users.execute("INSERT INTO meta (key, value) VALUES ('users_seq', '-1') ON CONFLICT (key) DO NOTHING")
        meta = dict(users.execute("SELECT key, value FROM meta").fetchall())
        indexed = int(meta["users_seq"])
        # A new file: made here if the runs held begin at the table's first row (checked below).
        first = committed.first() if indexed < 0 and "database_id" not in meta else None
        if first is not None:
            indexed = first - 1
        # The runs before the database's snapshot begins (its first read, just below): each group was
        # committed before its writer handed it over, so the snapshot holds every row taken. Taken
        # after it, a group committed in between looked like rows a prune had deleted.
        runs, below = committed.take(indexed)
        found = dict(users.execute("SELECT key, value FROM events.meta").fetchall())
        if first is not None and runs and "database_id" in found and not _rows_below(users, first):
            users.execute(_META, ("database_id", found["database_id"]))
            users.execute(_META, ("layout", USERS_LAYOUT))
            meta.update(database_id=found["database_id"], layout=USERS_LAYOUT)
        if meta.get("database_id") != found.get("database_id", "") or meta.get("layout") != USERS_LAYOUT:
            return FromMemory(0, None, True, None)  # (the rows taken: copied from the table)
        # A backup restored under it (copy_step builds it again):
        if indexed > _top(users, "events.") or _users_row_moved(users, indexed, meta.get("users_row")):
            return FromMemory(0, None, True, None)
        if not runs:
            return FromMemory(0, below, True, None)
        low, high = runs[0].first, runs[-1].last
        # A prune deleted some of them since (it notes the highest seq it deleted): counted from the table.
        if int(found.get("pruned_seq", 0)) >= low:
            stored = users.execute(
                "SELECT count(*) FROM events.semantic_events WHERE seq BETWEEN ? AND ?", (low, high)
            ).fetchone()[0]
            if stored != high - low + 1:
                return FromMemory(0, None, True, None)
        user_seqs, daily_users, name_blocks = _INDEX_COMMITTED
        entries = sum(run.users.user_entries() for run in runs)
        few = all(run.count_users for run in runs) and entries * FEW_USERS <= high - low + 1
        if few:
            for run in runs:
                users.executemany(user_seqs, run.users.user_seqs())
                users.executemany(daily_users, run.users.daily_users())
        else:
            bounds = {"bits": USER_INDEX_BLOCK_BITS, "indexed": indexed, "high": high}
            for statement in _INDEX_EACH:
                users.execute(statement.format(source="events.semantic_events"), bounds)
        for run in runs:
            users.executemany(name_blocks, run.users.name_blocks())
        _mark_users(users, high)
    counted = None
    if int(found.get("read_side_seq", 0)) == indexed:
        epoch = int(found.get("read_side_epoch", 0))
        events = [row for run in runs for row in run.sums.event_counts()]
        measures = [row for run in runs for row in run.sums.measure_sums()]
        counted = Counted(indexed, high, epoch, events, measures)
    return FromMemory(high - low + 1, None, few, counted)


def prune_users(path: str, before_day: str, busy_timeout_ms: int = 5_000) -> None:
    """After a prune: the users file forgets the days before ``before_day`` and the blocks below the oldest row."""
    if not os.path.exists(users_path(path)):
        return
    conn = open_users(path, busy_timeout_ms)
    try:
        with Transaction(conn, "DEFERRED"):
            conn.execute("DELETE FROM daily_users WHERE day < ?", (before_day,))
            oldest = conn.execute("SELECT coalesce(min(seq), 0) FROM events.semantic_events").fetchone()[0]
            conn.execute("DELETE FROM user_seqs WHERE block < ?", (oldest >> USER_INDEX_BLOCK_BITS,))
            conn.execute("DELETE FROM name_blocks WHERE block < ?", (oldest >> NAME_BLOCK_BITS,))
    finally:
        conn.close()


def catch_up(path: str, busy_timeout_ms: int = 5_000) -> None:
    """Build the read side of the database at ``path`` until it holds every row (benchmarks, tests)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    users = open_users(path, busy_timeout_ms)
    try:
        while (step := copy_step(users)) is not None:
            index_users(users, step)
            if step.counted is not None:
                with Transaction(conn):
                    add_counted(conn, step.counted)
    finally:
        users.close()
        conn.close()


def _rows_below(users: sqlite3.Connection, seq: int) -> bool:
    """Whether the database holds a row below ``seq``."""
    return users.execute(ROWS_BELOW.format(schema="events."), (seq,)).fetchone() is not None


def _mark_users(users: sqlite3.Connection, seq: int) -> None:
    """Move ``users_seq`` to ``seq``, with the event id of the row there (``users_row``): a backup of
    the database restored under the users file has other rows, or none, at that seq."""
    users.execute(_META, ("users_seq", str(seq)))
    users.execute(_META, ("users_row", _event_id_at(users, seq)))


def _event_id_at(users: sqlite3.Connection, seq: int) -> str:
    found = users.execute("SELECT event_id FROM events.semantic_events WHERE seq = ?", (seq,)).fetchone()
    return "" if found is None else str(found[0])


def _users_row_moved(users: sqlite3.Connection, seen: int, noted: str | None) -> bool:
    """Whether another row stands at ``users_seq`` than the one the users file noted: a backup
    restored, then written to (None: a file from before the note, nothing to tell). No row there
    is a prune's doing, not a restore's (a restored file not written to yet ends below the mark)."""
    if noted is None or seen <= 0:
        return False
    there = _event_id_at(users, seen)
    return there != "" and there != noted


def _top(conn: sqlite3.Connection, schema: str = "") -> int:
    return int(conn.execute(f"SELECT coalesce(max(seq), 0) FROM {schema}semantic_events").fetchone()[0])


class Builder:
    """Keeps the read side up with the table, from a thread of its own (``copy_step``, ``index_users``).

    The writer tells it how many rows it committed (``wrote``); it wakes at
    ``BUILD_AFTER_ROWS`` of them, when the writer goes idle with some waiting
    (``idle``), or every ``BUILD_EVERY_SECONDS`` (rows other processes wrote),
    and builds until it has caught up; ``stop`` catches up
    once more. A failed step is logged and tried again 5 s later: readers stay
    exact meanwhile (they take the rows past what is built from the table),
    only slower.
    """

    def __init__(
        self,
        path: str,
        connect: Callable[[], sqlite3.Connection],
        turn: Callable[[], Any],
        busy_timeout_ms: int,
        writer: Any = None,  # offer(counted), take_back(counted), idle_now: the writer adds a step's counts
        cpus: frozenset[int] = frozenset(),  # where its thread may run; empty: where the writer may
    ) -> None:
        self._path = path
        self._cpus = cpus
        self._connect = connect
        self._turn = turn
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = writer
        self._pending = 0
        self._wake = threading.Event()
        self._stopping = False
        self.counted_rows = 0  # the seqs it counted from a copy of the table, added or not (tests)
        self.committed = Committed()  # the writer's committed rows, to index from memory
        self.indexed_from_memory = 0  # the rows it indexed from there (tests)
        self.counted_from_memory = 0  # and counted the rollups of, added or not (tests)
        self._steps = 0
        self._thread = threading.Thread(target=self._run, name="drengr-read-side", daemon=True)
        self._thread.start()
        # The hand-over thread: at the writer's niceness and on its CPUs (it inherits them), not the
        # builder's thread, which yields its core to others and could do so holding the GIL.
        self._handing = threading.Lock()  # released: the hand-over thread has rows to add up
        self._handing.acquire()
        self._handing_stops = False
        self._hand_over = threading.Thread(target=self._settle_handed, name="drengr-hand-over", daemon=True)
        self._hand_over.start()

    def wrote(self, rows: int, committed: list[Group] | None = None, later: bool = False) -> None:
        """The writer committed ``rows`` rows; ``committed``: they are these, ``(first seq, rows,
        summary)``, added up now, or ``later`` by the hand-over thread (here when too many wait for it)."""
        if committed and not later:
            self.committed.add(committed)
        elif committed:
            waiting = self.committed.hand(committed)
            if waiting > HANDED_ROWS:
                self._settle()
            elif waiting >= WAKE_ROWS:
                self._wake_hand_over()
        self._pending += rows
        if self._pending >= BUILD_AFTER_ROWS:
            self._pending = 0
            self._wake.set()

    @property
    def waiting(self) -> bool:
        """Whether enough rows wait for a step that the writer tells the builder when it is idle (``idle``)."""
        return self._pending >= BUILD_WHEN_IDLE_ROWS

    def idle(self) -> None:
        """The writer has had no group for ``WRITER_IDLE_SECONDS``: what waits is built now."""
        if self.waiting:
            self._pending = 0
            self._wake.set()

    def _wake_hand_over(self) -> None:
        with contextlib.suppress(RuntimeError):  # (woken already)
            self._handing.release()

    def _settle_handed(self) -> None:
        """The hand-over thread: adds up what the writer hands over, until ``stop``."""
        while True:
            self._handing.acquire()
            stops = self._handing_stops  # (set before the wake: what came before it is added up too)
            self._settle()
            if stops:
                return

    def _settle(self) -> None:
        """Add up every group handed over; one that fails to be (a MemoryError) is the table's."""
        while True:
            try:
                if not self.committed.settle():
                    return
            except Exception as error:  # noqa: BLE001 - the next groups are still added up
                log.warning(
                    "the read side's builder could not hold rows just written (read back instead): %r", error
                )

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # below the writer and the request threads
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BUILDER_NICENESS)
            if self._cpus:  # the writer process's thread, placed on a CPU of its own: it builds in
                os.sched_setaffinity(0, self._cpus)  # the idle time of the server's CPUs too
        conn: sqlite3.Connection | None = None
        users: sqlite3.Connection | None = None
        pause = BUILD_EVERY_SECONDS
        # Without it (a read-only folder) every builder builds, and the marks sort them out.
        lock = open_lock_file(
            self._path + "-builder.lock", "no builder lock (%s): every writer's builder counts"
        )
        while True:
            self._wake.wait(pause)
            self._wake.clear()
            stopping, pause = self._stopping, BUILD_EVERY_SECONDS
            if lock is not None and not _take(lock, STOP_WAIT_SECONDS if stopping else 0.0):
                if stopping:
                    break
                continue  # another process's builder (or another store's) is at it: it counts these
            try:
                if conn is None:
                    # The rollups' own writes, when the writer does not add them; derived: a step
                    # lost to a crash is counted again.
                    conn = self._connect()
                    conn.execute("PRAGMA synchronous = NORMAL")
                if users is None:
                    users = open_users(self._path, self._busy_timeout_ms)
                # A full step: more may wait. Stopping: until nothing is left (a step that copied the
                # table up to the rows held leaves those to the next), or others' writes outlast the wait.
                stop_by = time.monotonic() + STOP_WAIT_SECONDS
                while (covered := self._step(conn, users, stopping)) == BUILD_STEP_ROWS or (
                    stopping and covered and time.monotonic() < stop_by
                ):
                    pass
            except Exception as error:  # noqa: BLE001 - a thread that died would build nothing again
                if isinstance(error, (sqlite3.Error, StoreError)):
                    log.warning("cannot build the read side now (tried again in 5 s): %s", error)
                else:
                    log.exception("the read side's builder failed (tried again in 5 s)")
                pause = 5.0
                for held in (conn, users):
                    if held is not None:
                        held.close()
                conn = users = None
            finally:
                if lock is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            if stopping:
                break
        for held in (conn, users):
            if held is not None:
                held.close()
        if lock is not None:
            os.close(lock)

    def _step(self, conn: sqlite3.Connection, users: sqlite3.Connection, stopping: bool) -> int:
        """One step; the seqs it covered, or 0 when it moved neither mark.

        The rows the writer holds for it are indexed and counted from memory
        (``index_committed``); the table is copied (``copy_step``) for what is
        not there, and for the rollups when their mark was not the users file's.
        """
        self._steps += 1
        memory = index_committed(users, self.committed)
        self.indexed_from_memory += memory.rows
        if memory.rows:  # the runs the writer holds next count their users while they are few
            self.committed.count_users = memory.few or self._steps % MANY_USERS_STEPS == 0
        if memory.counted is not None:
            self.counted_from_memory += memory.rows
            self._add(conn, memory.counted, stopping, offered=False)
            if not stopping:
                return memory.rows  # a stopping builder copies what is not in memory too
        step = copy_step(users, below=memory.below)
        if step is None:
            return memory.rows
        self.committed.copied(step.high)
        counted = step.counted
        offered = (
            counted is not None and self._writer is not None and not stopping and not self._writer.idle_now
        )
        if offered:
            self._writer.offer(counted)  # added by the writer while the users file is indexed
        moved = index_users(users, step)
        if counted is not None:
            self.counted_rows += counted.high - counted.low
            moved = self._add(conn, counted, stopping, offered) or moved
        return step.high - step.low if moved else 0

    def _add(self, conn: sqlite3.Connection, counted: Counted, stopping: bool, offered: bool) -> bool:
        """Add a step's rollup counts: the writer adds them in its next group's transaction (a few
        upserts, no transaction nor lock of their own); when it has no group to write soon (it is
        idle, or gives them back as it goes idle), or is stopping, the builder adds them itself in
        the writers' turn. ``offered``: to the writer already. Whether they were added."""
        if self._writer is not None and not stopping and (offered or not self._writer.idle_now):
            if not offered:
                self._writer.offer(counted)
            if not counted.done.wait(HAND_OVER_SECONDS) and not self._writer.take_back(counted):
                counted.done.wait(60)  # the writer took it meanwhile: its group is being committed
        if not counted.done.is_set() or counted.added is None:  # (given back: done, not added)
            with self._turn(), Transaction(conn):
                counted.added = add_counted(conn, counted)
        return bool(counted.added)

    def stop(self) -> None:
        """Build what the writer committed, then stop (the read side is whole when a store closes)."""
        self._handing_stops = True
        self._wake_hand_over()
        self._hand_over.join(timeout=30)
        self._settle()  # (what came after its last look)
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)


def _take(lock: int, wait_seconds: float) -> bool:
    """The builders' lock, within ``wait_seconds`` (0: only if it is free now)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


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
