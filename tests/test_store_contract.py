"""The store contract both engines keep (docs/mapping.md "Storage and durability", the daily cap).

One suite, three ways to write: SQLite with the writer thread, SQLite with the
writer process, and PostgreSQL (a schema of its own on the session's server,
tests/support/postgres.py; without PostgreSQL those skip, under CI they fail).
What only one engine does is tested beside it: tests/test_store.py (SQLite),
tests/test_postgres_store.py (PostgreSQL).
"""

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.core.limits import MS_PER_DAY
from drengr.store import SQLiteStore, Store
from drengr.store.base import generation

from .support.stores import DAY0, Clock, row

pytestmark = [
    pytest.mark.dated,  # run again with the clock far from today (tests/test_any_date.py)
    pytest.mark.parametrize(
        ("engine", "writer"),
        [
            pytest.param("sqlite", "thread", id="sqlite-thread"),
            pytest.param("sqlite", "process", id="sqlite-process"),
            pytest.param("sqlite", "shared", id="sqlite-shared"),
            pytest.param("postgresql", "threads", id="postgresql"),
        ],
        indirect=["engine"],
    ),
]

GENERATION_MS = 7 * MS_PER_DAY


def open_at(location: Any, writer: str, clock: Callable[[], float], **options: Any) -> Any:
    """The engine's store on ``location`` (a SQLite path or a PostgreSQL URI)."""
    if isinstance(location, Path):
        return SQLiteStore(str(location), clock=clock, writer=writer, **options)
    from .support.postgres import PostgresStore

    return PostgresStore(location, clock=clock, **options)


def execute(location: Any, sql: str) -> None:
    """One statement on the database, from outside the store."""
    if isinstance(location, Path):
        conn = sqlite3.connect(location)
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    from .support.postgres import query

    query(location, sql)


def count(location: Any) -> int:
    if isinstance(location, Path):
        conn = sqlite3.connect(location)
        try:
            return int(conn.execute("SELECT count(*) FROM semantic_events").fetchone()[0])
        finally:
            conn.close()
    from .support.postgres import count as pg_count

    return pg_count(location)


def forget_by_then(store: Any) -> None:
    """Whatever forgetting of old event ids would have run by now (PostgreSQL prunes event_ids)."""
    prune = getattr(store, "prune", None)
    if prune is not None:
        prune()


@pytest.fixture
def store(db_path: Any, writer: str) -> Iterator[Store]:
    store = open_at(db_path, writer, Clock(DAY0))
    yield store
    store.close()


def test_write_reports_stored_and_duplicates(store: Store, db_path: Any) -> None:
    outcome = store.write("acme", [row("a"), row("b"), row("a")], DAY0)
    assert (outcome.stored, outcome.duplicates, outcome.over_cap) == (2, 1, 0)
    again = store.write("acme", [row("a"), row("c")], DAY0)
    assert (again.stored, again.duplicates) == (1, 1)
    assert count(db_path) == 3


def test_dedup_is_per_tenant(store: Store, db_path: Any) -> None:
    store.write("acme", [row("a")], DAY0)
    store.write("globex", [row("a", "globex")], DAY0)
    assert count(db_path) == 2


@pytest.mark.parametrize(
    ("first_ms", "repeat_after_ms"),
    [
        pytest.param(DAY0, 1, id="same-moment"),
        pytest.param(DAY0, 7 * MS_PER_DAY, id="seven-days-later"),
        # The last millisecond of a 7-day generation, repeated 7 days later: two generations on.
        pytest.param((generation(DAY0, 7) + 1) * GENERATION_MS - 1, 7 * MS_PER_DAY, id="end-of-generation"),
        pytest.param(
            generation(DAY0, 7) * GENERATION_MS, 7 * MS_PER_DAY + MS_PER_DAY - 1, id="start-of-generation"
        ),
    ],
)
def test_repeat_within_seven_days_is_never_stored_twice(
    db_path: Any, writer: str, first_ms: int, repeat_after_ms: int
) -> None:
    clock = Clock(first_ms)
    store = open_at(db_path, writer, clock)
    assert store.write("acme", [row("a")], first_ms).stored == 1
    clock.ms = first_ms + repeat_after_ms
    forget_by_then(store)
    assert store.write("acme", [row("a")], clock.ms).stored == 0
    store.close()
    # And after a restart (SQLite: the window is rebuilt from the table).
    again = open_at(db_path, writer, clock)
    assert again.write("acme", [row("a")], clock.ms).stored == 0
    again.close()
    assert count(db_path) == 1


def test_daily_cap_drops_items_over_it(store: Store, db_path: Any) -> None:
    store.set_daily_cap("acme", 3)
    outcome = store.write("acme", [row(str(i)) for i in range(5)], DAY0)
    assert (outcome.stored, outcome.over_cap) == (3, 2)
    assert store.write("acme", [row("x")], DAY0 + 1).over_cap == 1
    # Duplicates do not count against the cap; a new UTC day starts afresh.
    assert store.write("acme", [row("0")], DAY0 + MS_PER_DAY).duplicates == 1
    assert store.write("acme", [row("y"), row("z")], DAY0 + MS_PER_DAY).stored == 2
    # An item dropped over the cap is not remembered: sent again (here, under a raised cap), it is stored.
    outcome = store.write("acme", [row("4"), row("w")], DAY0 + MS_PER_DAY)  # "4": day 1's over-cap item
    assert (outcome.stored, outcome.over_cap) == (1, 1)
    store.set_daily_cap("acme", 10)
    assert store.write("acme", [row("w")], DAY0 + MS_PER_DAY).stored == 1
    assert count(db_path) == 7


def test_cap_is_per_tenant(store: Store) -> None:
    store.set_daily_cap("acme", 1)
    store.write("acme", [row("1"), row("2")], DAY0)
    assert store.write("globex", [row("1", "globex"), row("2", "globex")], DAY0).stored == 2


def test_metering_fails_open(store: Store, db_path: Any) -> None:
    store.set_daily_cap("acme", 1)
    assert store.write("acme", [row("0")], DAY0).stored == 1
    execute(db_path, "DROP TABLE daily_usage")  # counting is now impossible
    outcome = store.write("acme", [row("1"), row("2"), row("3")], DAY0)
    assert outcome.stored == 3
    assert count(db_path) == 4


@contextlib.contextmanager
def writes_held(location: Any) -> Iterator[None]:
    """Every write waits while this is open: SQLite's write lock, PostgreSQL's lock on event_ids."""
    if isinstance(location, Path):
        holder = sqlite3.connect(location, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    import psycopg

    with psycopg.connect(location) as conn:
        conn.execute("LOCK TABLE event_ids IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def waiting(store: Any) -> int:
    """Jobs waiting behind the ones a writer holds: in its queue, or sent to the writer process."""
    child = getattr(store, "_child", None)
    return store._queue.qsize() + (child.in_flight - 1 if child else 0)  # noqa: SLF001


def test_concurrent_requests_share_commits(db_path: Any, writer: str) -> None:
    """Ten requests arrive while writes are held: they go out in at most two transactions a writer
    (SQLite has one writer, the PostgreSQL store two)."""
    postgres = not isinstance(db_path, Path)
    options = {"writers": 2} if postgres else {"busy_timeout_ms": 30_000}
    store = open_at(db_path, writer, Clock(DAY0), **options)
    store.write("acme", [row("warm-up")], DAY0)
    before = store.group_commits
    with writes_held(db_path):
        threads = [
            threading.Thread(target=store.write, args=("acme", [row(f"t{i}")], DAY0)) for i in range(10)
        ]
        for thread in threads:
            thread.start()
        # The writers hold the first job(s), blocked; wait until the rest wait too. A writer may have
        # taken more than one job already, so the count can stay below its aim: stop waiting after a while.
        aim, patience = (8, 10) if postgres else (9, 3)
        deadline = time.monotonic() + patience
        while waiting(store) < aim and time.monotonic() < deadline:
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join()
    store.close()
    assert count(db_path) == 11
    assert store.group_commits - before <= (4 if postgres else 2)
