"""Dedup does not trust the wall clock (docs/mapping.md "Deduplication when the clock is wrong").

The server's clock jumps ahead and back with ``drengr.clock.set_offset`` (the
one wall clock, shifted in this process only; the system clock is never
touched), against real SQLite files, at the store and over HTTP with
SDK-like senders and the ack ledger (tests/support/faults.py): a resend of an
event already stored is never a second row, whatever the clock did since. PostgreSQL's side (nodes
whose clocks are wrong) is in tests/test_postgres_store.py.
"""

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr import clock
from drengr.core.limits import DEFAULT_DEDUP_WINDOW_DAYS
from drengr.core.timestamps import format_ms
from drengr.settings import Config
from drengr.store import SQLiteStore
from drengr.store.sqlite import WRITERS
from drengr.web import create_app

from .support.faults import (
    Senders,
    assert_ledger,
    poster,
    report,
    resend_everything,
    serving,
)
from .support.realserver import TENANT, event_id_counts

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)

DAY_SECONDS = 86_400
IDS = [f"jump-{n:03d}" for n in range(200)]


def rows(ids: list[str], tenant: str = "acme") -> list[tuple[Any, ...]]:
    """Rows as the mapper makes them, received now by the shifted clock."""
    received = format_ms(clock.now_ms())
    return [
        (tenant, event_id, "e", "track", "u", "u", received, received, "{}", "{}", "analytics-python 2.4.0")
        for event_id in ids
    ]


def write(store: Any, ids: list[str]) -> int:
    """Stored rows (the rest were duplicates)."""
    outcome = store.write("acme", rows(ids), clock.now_ms())
    assert outcome.stored + outcome.duplicates == len(ids)
    return int(outcome.stored)


_BASE_OFFSET = clock.offset()  # DRENGR_CLOCK_OFFSET, when the suite runs far from today (test_any_date)


def jump(days: float) -> None:
    """The clock ``days`` from where it started (the offset the process was given, if any)."""
    clock.set_offset(_BASE_OFFSET + days * DAY_SECONDS)


@pytest.fixture(autouse=True)
def clock_restored() -> Iterator[None]:
    yield
    clock.set_offset(_BASE_OFFSET)


# The jumps: days ahead, then back to right (0), then behind; each one a step from the previous.
JOURNEYS = {
    "8-days-ahead-and-back": [8, 0],
    "15-days-ahead-and-back": [15, 0],
    "40-days-ahead-back-and-behind": [40, 0, -15],
    "15-days-behind-and-back": [-15, 0],
    "6-days-ahead-then-9-more-then-back": [6, 15, 0],
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("journey", list(JOURNEYS.values()), ids=list(JOURNEYS))
def test_sqlite_resends_are_never_stored_twice_whatever_the_clock_does(
    tmp_path: Path, writer: str, journey: list[int]
) -> None:
    db = str(tmp_path / "drengr.db")
    store = SQLiteStore(db, writer=writer)  # the default clock: drengr.clock, shifted below
    try:
        assert write(store, IDS[:100]) == 100
        sent = list(IDS[:100])
        for step, days in enumerate(journey):
            jump(days)
            assert write(store, sent) == 0, f"resends stored again after the jump to {days:+d} days"
            fresh = IDS[100 + 20 * step : 120 + 20 * step]
            assert write(store, fresh) == 20
            sent += fresh
    finally:
        store.close()
    # A restart with the clock still wrong, either way, loads the window back.
    for days in (journey[0], 0, -journey[0]):
        jump(days)
        again = SQLiteStore(db, writer=writer)
        try:
            assert write(again, sent) == 0, f"resends stored again after a restart at {days:+d} days"
        finally:
            again.close()


def test_sqlite_forgets_only_when_time_has_passed_too(tmp_path: Path) -> None:
    """A jump of three weeks forgets nothing; three weeks that pass by the monotonic clock do."""
    elapsed = [0.0]
    store = SQLiteStore(str(tmp_path / "drengr.db"), elapsed=lambda: elapsed[0])
    try:
        assert write(store, IDS[:10]) == 10
        jump(21)
        assert write(store, IDS[10:11]) == 1
        assert write(store, IDS[:10]) == 0  # a jump: the old generations are still there
        jump(42)  # three more weeks, and this time they pass
        elapsed[0] += 21 * DAY_SECONDS
        assert write(store, IDS[11:12]) == 1
        assert [len(index) for index in store._committer._window] == [1]  # noqa: SLF001 - the old generations went
        assert write(store, IDS[:10]) == 10  # beyond the window: stored again, as documented
    finally:
        store.close()


def test_sqlite_keeps_an_id_seven_days_on_a_correct_clock(tmp_path: Path) -> None:
    """Ids written on day 1 of a generation and nothing after: a resend 6.01 days later, just past the
    generation's boundary, is still a duplicate (the closed generation is timed from when it closed,
    not from its last row); two generations on, it is forgotten, as documented."""
    elapsed = [0.0]
    window_ms = DEFAULT_DEDUP_WINDOW_DAYS * DAY_SECONDS * 1000
    day_one = (clock.now_ms() // window_ms + 1) * window_ms + DAY_SECONDS * 1000  # a boundary + 1 day
    start = _BASE_OFFSET + (day_one - clock.now_ms()) / 1000

    def advance(days: float) -> None:  # a correct clock: wall and monotonic move together
        elapsed[0] += days * DAY_SECONDS
        clock.set_offset(start + elapsed[0])

    advance(0)
    store = SQLiteStore(str(tmp_path / "drengr.db"), elapsed=lambda: elapsed[0])
    try:
        assert write(store, IDS[:10]) == 10
        advance(6.01)  # 7.01 days into the generation: the next one has begun
        assert write(store, IDS[:10]) == 0, "forgotten 6.01 days after it was written"
        advance(6.9)  # 12.91 days after: still inside the previous generation
        assert write(store, IDS[:10]) == 0
        advance(1.1)  # the generation after: two boundaries past the write, beyond the window
        assert write(store, IDS[:10]) == 10
    finally:
        store.close()


def _day_of_a_generation(days: float) -> float:
    """The clock offset that puts now ``days`` into the next generation (a right clock from there)."""
    window_ms = DEFAULT_DEDUP_WINDOW_DAYS * DAY_SECONDS * 1000
    target = (clock.now_ms() // window_ms + 1) * window_ms + days * DAY_SECONDS * 1000
    return clock.offset() + (target - clock.now_ms()) / 1000


@pytest.mark.parametrize("writer", WRITERS)
def test_sqlite_builds_its_window_from_the_table_past_rows_stamped_by_a_clock_gone_back(
    tmp_path: Path, writer: str
) -> None:
    """The window built from the table (after a crash: no window file) starts at the first row
    received within it. Rows stamped 15 days back, then right again, lie after rows received
    minutes ago: the start is still found below them, and no resend of either is stored again."""
    db = str(tmp_path / "drengr.db")
    store = SQLiteStore(db, writer=writer)
    try:
        assert write(store, IDS[:10]) == 10
        jump(-15)
        assert write(store, IDS[10:110]) == 100
        jump(0)
        assert write(store, IDS[110:120]) == 10
    finally:
        store.close()
    Path(db + "-window").unlink()
    again = SQLiteStore(db, writer=writer)
    try:
        assert write(again, IDS[:120]) == 0, "resends stored again after a restart from the table"
    finally:
        again.close()


def test_sqlite_keeps_what_it_loads_from_the_table_a_whole_window_when_it_starts_with_its_clock_ahead(
    tmp_path: Path,
) -> None:
    """A server starts with its clock ten days ahead: a generation on from its newest row, so the
    clock looks right from there, and the window comes from the table. The ids it loads stay a
    whole window of real time from its start: a day later, when the wrong clock has crossed
    another boundary, a resend is still a duplicate."""
    elapsed = [0.0]
    db = str(tmp_path / "drengr.db")
    right = _day_of_a_generation(3)
    clock.set_offset(right)
    store = SQLiteStore(db, writer="thread", elapsed=lambda: elapsed[0])
    try:
        assert write(store, IDS[:10]) == 10
    finally:
        store.close()
    elapsed[0] += 60
    clock.set_offset(right + 60 + 10 * DAY_SECONDS)
    again = SQLiteStore(db, writer="thread", elapsed=lambda: elapsed[0])
    try:
        assert write(again, IDS[:10]) == 0
        assert not again._committer.window_from_file  # noqa: SLF001 - the path under test
        elapsed[0] += DAY_SECONDS + 3_600
        clock.set_offset(right + 60 + 11 * DAY_SECONDS + 3_600)
        assert write(again, IDS[:10]) == 0, "forgotten a real day after it was stored"
    finally:
        again.close()


def test_sqlite_keeps_what_it_reads_from_its_window_file_a_whole_window_when_it_starts_with_its_clock_ahead(
    tmp_path: Path,
) -> None:
    """Ids received late in a generation, a write early in the next (they are its previous one), a
    stop; the server starts with its clock five days ahead, still in that generation, and reads
    its window's file. Three real days later the wrong clock has crossed the next boundary: the
    ids, 3.2 days old, are still remembered."""
    elapsed = [0.0]
    db = str(tmp_path / "drengr.db")
    right = _day_of_a_generation(6.9)

    def at(days: float, ahead: float = 0) -> None:
        elapsed[0] = days * DAY_SECONDS
        clock.set_offset(right + (days + ahead) * DAY_SECONDS)

    at(0)
    store = SQLiteStore(db, writer="thread", elapsed=lambda: elapsed[0])
    try:
        assert write(store, IDS[:10]) == 10
        at(0.2)  # the next generation
        assert write(store, IDS[10:20]) == 10
    finally:
        store.close()
    at(0.21, ahead=5)
    again = SQLiteStore(db, writer="thread", elapsed=lambda: elapsed[0])
    try:
        assert write(again, IDS[:20]) == 0
        assert again._committer.window_from_file  # noqa: SLF001 - the path under test
        at(3.2, ahead=5)
        assert write(again, IDS[:20]) == 0, "forgotten 3.2 real days after it was stored"
    finally:
        again.close()


def test_sqlite_started_in_a_later_generation_loads_only_the_window(tmp_path: Path) -> None:
    """On a right clock, a server stopped in one generation and started in the next loads the ids
    of the window, not a generation more: an id received 20 days before (N = 7) is stored again."""
    elapsed = [0.0]
    db = str(tmp_path / "drengr.db")
    start = _day_of_a_generation(1 / 24)

    def advance(days: float) -> None:  # a right clock: wall and monotonic move together
        elapsed[0] += days * DAY_SECONDS
        clock.set_offset(start + elapsed[0])

    advance(0)
    store = SQLiteStore(db, writer="thread", elapsed=lambda: elapsed[0])
    try:
        assert write(store, IDS[:10]) == 10
        advance(7)
        assert write(store, IDS[10:20]) == 10
    finally:
        store.close()
    advance(7)
    again = SQLiteStore(db, writer="thread", elapsed=lambda: elapsed[0])
    try:
        assert write(again, IDS[10:20]) == 0  # 7 days old: inside the window
        advance(6)
        assert write(again, IDS[:10]) == 10, "an id 20 days old is still remembered"
    finally:
        again.close()


# --------------------------------------------------------------------------- over HTTP, with senders


JUMPS_DAYS = [15, 0, -15, 40, 8, 0]


# Received times of three runs of rows: ahead then put right, or gone back.
_T = 1_795_687_200_000  # 2026-11-26T10:00:00.000Z
_MINUTE = 60_000
CLOCK_STORIES = {
    # A, then B an hour ahead (the clock jumped), then C (put right), a batch every 10 s.
    "ahead-then-right": [(_T + i * 10_000, "a") for i in range(12)]
    + [(_T + 60 * _MINUTE + i * 10_000, "b") for i in range(12)]
    + [(_T + 2 * _MINUTE + 10_000 + i * 10_000, "c") for i in range(12)],
    # A for ten minutes, then B stamped ten minutes back (the clock stepped back).
    "back-ten-minutes": [(_T + i * 20_000, "a") for i in range(30)]
    + [(_T + i * 20_000, "b") for i in range(30)],
}


@pytest.mark.parametrize("story", list(CLOCK_STORIES))
def test_reads_by_time_find_every_row_whatever_order_the_clock_stamped_them(
    tmp_path: Path, story: str
) -> None:
    """/v1/events and /v1/stats by since and until, against a plain scan of the rows: the rows
    stamped out of order (a clock ahead then put right, or stepped back) are found; without the
    writer's notes the reader's binary search on received_at skipped them."""
    from drengr.store.reader import EventQuery, SQLiteReader, StatsQuery

    path = tmp_path / "drengr.db"
    store = SQLiteStore(str(path), writer="thread")
    try:
        for n, (received_ms, run) in enumerate(CLOCK_STORIES[story]):
            at = format_ms(received_ms)
            batch = [
                ("acme", f"{run}{n}-{i}", run, "track", "u", "u", at, at, "{}", "{}", None) for i in range(5)
            ]
            assert store.write("acme", batch, received_ms).stored == 5
    finally:
        store.close()
    times = sorted({ms for ms, _run in CLOCK_STORIES[story]})
    edges = [
        None,
        *(format_ms(ms + shift) for ms in times[:: max(1, len(times) // 8)] for shift in (0, 5_000)),
    ]
    conn = sqlite3.connect(path)
    reader = SQLiteReader(str(path))
    try:
        for since in edges:
            for until in edges:
                if since is not None and until is not None and until <= since:
                    continue
                where = "received_at >= ? AND received_at < ?"
                expected = sorted(
                    event_id
                    for (event_id,) in conn.execute(
                        f"SELECT event_id FROM semantic_events WHERE {where}",
                        (since or "", until or "\uffff"),
                    )
                )
                page = reader.events(EventQuery("acme", since=since, until=until, limit=1_000))
                assert sorted(event["event_id"] for event in page.events) == expected, (since, until)
                stats = reader.stats(
                    StatsQuery("acme", since=since or "2000-01-01T00:00:00.000Z", until=until)
                )
                assert stats.total == len(expected), (since, until)
    finally:
        reader.close()
        conn.close()


@pytest.mark.parametrize("writer", WRITERS)
def test_a_server_whose_clock_jumps_stores_no_resend_twice(tmp_path: Path, writer: str) -> None:
    """The issue's row: the server's clock jumps 8-40 days ahead and back under load; after each
    jump every acknowledged batch is sent again. The ledger: nothing lost, nothing twice."""
    db = tmp_path / "jumps.db"
    store = SQLiteStore(str(db), writer=writer)
    key = store.create_key(TENANT, "publishable")
    app = create_app(Config(db=str(db)), store=store)  # the default clocks: drengr.clock
    try:
        with serving(app) as port:
            post = poster([port], key)
            with Senders(post, f"jump-{writer}") as senders:
                for days in JUMPS_DAYS:
                    senders.wait_for_answers(20)
                    jump(days)
                    with senders.ledger.lock:
                        acked = set(senders.ledger.acked)
                    resend_everything(post, acked)
                senders.wait_for_answers(20)
    finally:
        store.close()
    counts = event_id_counts(db)
    assert_ledger(senders.ledger, counts)
    report(f"the server's clock jumps {JUMPS_DAYS} days ({writer} writer)", senders.ledger, counts)
