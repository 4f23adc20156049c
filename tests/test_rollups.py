"""The read side's rollups (SQLite): kept with the rows, read by stats, backfilled for older databases.

The oracle is the scan the rollups replace: every query of the table below is
answered from the rollups (with the rows at a range's ragged edges) and from
a full scan of semantic_events, and the two must agree exactly. Rows go in
through the real app and both writers (thread and process), received in
order, as a server stamps them.
"""

import contextlib
import math
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.store import SQLiteStore, open_store
from drengr.store.reader import ORDERS, EventQuery, PostgresReader, SQLiteReader, StatsQuery
from drengr.store.reader.model import _stats
from drengr.store.rollups import NAME_BLOCK_BITS
from drengr.store.sqlite import backfill_rollups, read_side
from drengr.store.sqlite.read_side import USERS_LAYOUT, users_path
from drengr.store.sqlite.writer import Writer
from drengr.web import Config, create_app

from .support.app import post

SRC = Path(__file__).resolve().parents[1] / "src"
T0 = 1_795_687_200_000  # 2026-11-26T10:00:00.000Z
STEP_MS = 17_000  # 17 s between events: minutes hold 3 or 4 of them, and ranges cut through minutes
EVENTS = 240  # about 68 minutes


def event(i: int) -> dict[str, Any]:
    names = ("Order Completed", "Signed Up", "Page Viewed")
    body: dict[str, Any] = {"type": "track", "event": names[i % 3], "userId": f"u{i % 11}"}
    if i % 3 == 0:
        body["properties"] = {"revenue": (i % 7) * 0.25 + 1, "items": i % 4}
    elif i % 3 == 1:
        body["properties"] = {"plan": "pro", "seats": i % 5}
    if i % 10 == 9:
        body = {"type": "page", "name": "Home", "anonymousId": f"a{i}"}
    return body


def fill(path: Path | str, writer: str) -> dict[str, str]:
    """EVENTS events through the app, two tenants, 17 s apart; the keys by tenant."""
    store = open_store(path) if writer == "postgresql" else SQLiteStore(str(path), writer=writer)
    clock = [T0]
    app = create_app(Config(db=str(path)), store=store, clock_ms=lambda: clock[0])
    client = app.test_client()
    keys = {tenant: store.create_key(tenant, "publishable") for tenant in ("acme", "globex")}
    try:
        for i in range(EVENTS):
            clock[0] = T0 + i * STEP_MS
            key = keys["globex" if i % 4 == 3 else "acme"]
            body = {**event(i), "messageId": f"m{i}"}
            route = "/v1/track" if body["type"] == "track" else "/v1/page"
            # Every 50th is sent twice: the duplicate is stored once and counted once.
            for _ in range(2 if i % 50 == 0 else 1):
                assert post(client, route, body, key).status_code == 200
    finally:
        app.extensions[
            "drengr"
        ].drops.close()  # its last drop counts (the duplicates), before the store closes
        store.close()
    return keys


def user_index(conn: sqlite3.Connection, schema: str = "") -> list[tuple[str, str, int]]:
    """The users file's user index as (tenant_id, external_id, seq) entries, sorted, a seq listed twice kept twice."""
    entries = []
    for block, tenant_id, external_id, first_seq, seqs in conn.execute(f"SELECT * FROM {schema}user_seqs"):
        listed = [int(seq) for seq in seqs.split(",")]
        assert first_seq == min(listed) and all(
            seq >> read_side.USER_INDEX_BLOCK_BITS == block for seq in listed
        )
        entries.extend((tenant_id, external_id, seq) for seq in listed)
    return sorted(entries)


def assert_users_file_as_scanned(
    conn: sqlite3.Connection, built: int, name_bits: int = NAME_BLOCK_BITS
) -> None:
    """The users file (attached to ``conn`` as ``users``) holds the rows up to seq ``built``, as the table
    gives them: every user's seqs once, the users of each day, the first and last seq of each name's blocks."""
    assert user_index(conn, "users.") == sorted(
        conn.execute(
            "SELECT tenant_id, external_id, seq FROM semantic_events WHERE external_id IS NOT NULL AND seq <= ?",
            (built,),
        ).fetchall()
    )
    assert sorted(
        conn.execute("SELECT tenant_id, day, external_id FROM users.daily_users").fetchall()
    ) == sorted(
        conn.execute(
            "SELECT DISTINCT tenant_id, substr(received_at, 1, 10), external_id FROM semantic_events "
            "WHERE external_id IS NOT NULL AND seq <= ?",
            (built,),
        ).fetchall()
    )
    assert sorted(conn.execute("SELECT * FROM users.name_blocks").fetchall()) == sorted(
        conn.execute(
            "SELECT tenant_id, event_name, seq >> ?, min(seq), max(seq) FROM semantic_events WHERE seq <= ? "
            "GROUP BY 1, 2, 3",
            (name_bits, built),
        ).fetchall()
    )


def at(ms: int) -> str:
    from drengr.core.timestamps import format_ms

    return format_ms(ms)


MINUTE = 60_000
QUERIES = [
    pytest.param(StatsQuery(None), id="everything"),
    pytest.param(StatsQuery("acme", measures=("revenue", "items", "seats")), id="tenant-measures"),
    pytest.param(StatsQuery(None, since=at(T0 + 5 * MINUTE), until=at(T0 + 20 * MINUTE)), id="whole-minutes"),
    pytest.param(
        StatsQuery(
            None,
            since=at(T0 + 5 * MINUTE + 12_345),
            until=at(T0 + 41 * MINUTE + 7_001),
            measures=("revenue",),
            interval="minute",
        ),
        id="ragged-both-ends-by-minute",
    ),  # fmt: skip
    pytest.param(
        StatsQuery("globex", since=at(T0 + 90_500), interval="hour", measures=("seats",)),
        id="ragged-since-by-hour",
    ),
    pytest.param(
        StatsQuery(None, until=at(T0 + 33 * MINUTE + 40_000), interval="day"), id="ragged-until-by-day"
    ),
    pytest.param(
        StatsQuery(None, since=at(T0 + 7 * MINUTE + 10_000), until=at(T0 + 7 * MINUTE + 50_000)),
        id="inside-one-minute",
    ),
    pytest.param(
        StatsQuery(
            "acme",
            event_name="order_completed",
            since=at(T0 - 86_400_000),
            measures=("revenue",),
            interval="minute",
        ),
        id="event-name-since-yesterday",
    ),  # fmt: skip
    pytest.param(StatsQuery(None, since=at(T0 + 500 * MINUTE)), id="after-everything"),
    # A whole hour from the hourly rollups, minutes on both sides, rows at the ragged ends.
    pytest.param(
        StatsQuery(
            None,
            since=at(T0 - 3 * MINUTE + 4_000),
            until=at(T0 + 63 * MINUTE + 5_000),
            measures=("revenue", "seats"),
            interval="hour",
        ),
        id="minutes-hour-minutes-by-hour",
    ),  # fmt: skip
    pytest.param(
        StatsQuery(
            "acme", event_name="page_viewed", since=at(T0), until=at(T0 + 61 * MINUTE), interval="day"
        ),
        id="whole-hour-and-a-minute-by-day",
    ),
]


@pytest.fixture(scope="module", params=["thread", "process"])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(request.param) / "drengr.db"
    fill(path, request.param)
    return path


def scanned(reader: SQLiteReader | PostgresReader, query: StatsQuery) -> Any:
    rows, series = reader._snapshot(lambda execute: reader._scan_stats(execute, query), "stats")
    return _stats(rows, series, query)


def assert_stats_as_scanned(reader: SQLiteReader | PostgresReader, query: StatsQuery) -> None:
    """``reader.stats`` (the rollups, and the rows around and past them) equals a scan of the rows."""
    from_rollups, from_rows = reader.stats(query), scanned(reader, query)
    assert (from_rollups.by_event, from_rollups.series, from_rollups.total) == (
        from_rows.by_event, from_rows.series, from_rows.total
    ), query  # fmt: skip
    assert from_rollups.sums == pytest.approx(from_rows.sums)


def assert_file_stats_as_scanned(path: Path, query: StatsQuery) -> None:
    """On the SQLite file at ``path``, whose rollups cover every row: stats as a scan of the rows."""
    reader = SQLiteReader(str(path))
    try:
        assert reader._snapshot(reader._rollups_cover, "stats") is True
        assert_stats_as_scanned(reader, query)
    finally:
        reader.close()


@pytest.mark.parametrize("query", QUERIES)
def test_rollups_answer_as_the_scan_does(filled: Path, query: StatsQuery) -> None:
    assert_file_stats_as_scanned(filled, query)


def test_rollups_match_the_rows_written_out(filled: Path) -> None:
    """The totals, written out: 240 events (the duplicates stored once), acme three in four."""
    conn = sqlite3.connect(filled)
    assert conn.execute("SELECT count(*) FROM semantic_events").fetchone() == (240,)
    by_tenant = dict(conn.execute("SELECT tenant_id, sum(events) FROM event_rollups GROUP BY 1").fetchall())
    assert by_tenant == {"acme": 180, "globex": 60}
    revenue = conn.execute("SELECT sum(total) FROM measure_rollups WHERE measure = 'revenue'").fetchone()[0]
    assert revenue == sum((i % 7) * 0.25 + 1 for i in range(EVENTS) if i % 3 == 0 and i % 10 != 9)
    conn.close()


def strip_rollups(path: Path) -> None:
    """The database as a version without rollups left it (its rows, no rollup tables)."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE event_rollups")
    conn.execute("DROP TABLE measure_rollups")
    conn.execute("DROP TABLE hourly_event_rollups")
    conn.execute("DROP TABLE hourly_measure_rollups")
    conn.execute("DELETE FROM meta WHERE key = 'rollups_from_seq'")
    conn.commit()
    conn.close()


def test_an_older_database_is_scanned_until_backfilled_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "drengr.db"
    fill(path, "thread")
    strip_rollups(path)
    # Opened by this version (as serve does), it gets empty rollups starting after its rows...
    store = SQLiteStore(str(path))
    keys_client = create_app(Config(db=str(path)), store=store, clock_ms=lambda: T0 + EVENTS * STEP_MS)
    key = store.create_key("acme", "publishable")
    assert (
        post(keys_client.test_client(), "/v1/track", event(0), key).status_code == 200
    )  # a new row: rolled up
    store.close()
    reader = SQLiteReader(str(path))
    query = StatsQuery(None, measures=("revenue",), interval="minute")
    try:
        # ... so stats scans, and is right, until the backfill has counted the older rows.
        assert reader._snapshot(reader._rollups_cover, "stats") is False
        expected = scanned(reader, query)
        assert reader.stats(query).total == expected.total == 241

        seen: list[tuple[int, int]] = []

        def stop_after_two_chunks(done: int, total: int) -> None:
            seen.append((done, total))
            if len(seen) == 2:
                raise KeyboardInterrupt  # Ctrl-C: the chunks committed so far stay counted

        with pytest.raises(KeyboardInterrupt):
            backfill_rollups(str(path), chunk_rows=50, progress=stop_after_two_chunks)
        assert seen == [(50, 240), (100, 240)]
        assert reader._snapshot(reader._rollups_cover, "stats") is False
        done = subprocess.run(
            [sys.executable, "-m", "drengr", "db", "backfill-rollups", "--db", str(path)],
            capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": ""}, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stderr == f"Counted 140 older events into the rollups of {path}.\n"
        assert reader._snapshot(reader._rollups_cover, "stats") is True
        got = reader.stats(query)
        assert (got.by_event, got.series, got.total) == (expected.by_event, expected.series, expected.total)
        assert got.sums == pytest.approx(expected.sums)
    finally:
        reader.close()


def as_version_4(path: Path) -> None:
    """The database as version 4 left it: rollups counted by the writer up to its last row (no
    read_side_seq), the user index inside the database."""
    Path(users_path(str(path))).unlink()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE key IN ('read_side_seq', 'database_id')")
    conn.execute("INSERT INTO meta (key, value) VALUES ('user_index_blocks', '0')")
    conn.execute(
        "CREATE TABLE user_index (block, tenant_id, external_id, seq, PRIMARY KEY (block, tenant_id, external_id, seq))"
    )
    conn.execute(
        "CREATE TABLE daily_users (tenant_id, day, external_id, PRIMARY KEY (tenant_id, day, external_id))"
    )
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


def test_a_file_whose_writer_counted_the_rollups_is_taken_up_whole(tmp_path: Path) -> None:
    """A version-4 file: rollups counted by the writer up to its last row, the user index inside the
    database. Opened now, its rollups cover every row, the user index moves to its own file (built
    again), and reads agree with the rows."""
    path = tmp_path / "drengr.db"
    keys = fill(path, "thread")
    as_version_4(path)
    store = SQLiteStore(str(path))
    try:
        client = create_app(
            Config(db=str(path)), store=store, clock_ms=lambda: T0 + EVENTS * STEP_MS
        ).test_client()
        assert post(client, "/v1/track", {**event(1), "messageId": "after"}, keys["acme"]).status_code == 200
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        assert (meta["read_side_seq"], meta["schema_version"]) == (
            "241",
            "5",
        ) and "user_index_blocks" not in meta
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert not tables & {"user_index", "daily_users"}
        with_users = conn.execute(
            "SELECT count(*) FROM semantic_events WHERE external_id IS NOT NULL"
        ).fetchone()
    finally:
        conn.close()
    users = sqlite3.connect(users_path(str(path)))
    try:
        assert (len(user_index(users)),) == with_users
        assert dict(users.execute("SELECT key, value FROM meta").fetchall()) == {
            "users_seq": "241", "users_row": "after", "database_id": meta["database_id"], "layout": USERS_LAYOUT
        }  # fmt: skip
    finally:
        users.close()
    reader = SQLiteReader(str(path))
    try:
        for query in [p.values[0] for p in QUERIES]:
            assert_stats_as_scanned(reader, query)
        query = EventQuery("acme", external_id="u3", limit=500)
        assert [event["seq"] for event in reader.events(query).events] == oracle_page(path, query)
    finally:
        reader.close()


def test_two_stores_writing_one_file_build_one_read_side(tmp_path: Path) -> None:
    """Two stores on one file (two gunicorn workers), each with its builder, writing at once: the
    rollups count every row once, and the user index holds every row once."""
    import threading

    from drengr.core.timestamps import format_ms

    path = str(tmp_path / "drengr.db")
    stores = [SQLiteStore(path), SQLiteStore(path)]

    def write(number: int) -> None:
        for batch in range(40):
            received = format_ms(T0 + batch * 7_000)
            rows = [
                ("acme", f"{number}-{batch}-{i}", f"e{i % 3}", "track", f"u{i % 7}", "a", received, received,
                 "{}", '{"n": 2}' if i % 2 else "{}", None)
                for i in range(50)
            ]  # fmt: skip
            assert stores[number].write("acme", rows, T0).stored == 50

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for store in stores:
        store.close()
    conn = sqlite3.connect(path)
    conn.execute("ATTACH DATABASE ? AS users", (users_path(path),))
    try:
        assert conn.execute("SELECT count(*), max(seq) FROM semantic_events").fetchone() == (4_000, 4_000)
        assert conn.execute("SELECT value FROM meta WHERE key = 'read_side_seq'").fetchone() == ("4000",)
        assert conn.execute("SELECT value FROM users.meta WHERE key = 'users_seq'").fetchone() == ("4000",)
        counted = "SELECT {0}, event_name, sum({1}) FROM {2} GROUP BY 1, 2 ORDER BY 1, 2"
        assert (
            conn.execute(counted.format("minute", "events", "event_rollups")).fetchall()
            == conn.execute(counted.format("substr(received_at, 1, 16)", "1", "semantic_events")).fetchall()
        )
        assert (
            conn.execute(counted.format("hour", "total", "hourly_measure_rollups")).fetchall()
            == conn.execute(
                counted.format(
                    "substr(received_at, 1, 13)", "json_extract(measures, '$.n')", "semantic_events"
                ).replace(" GROUP BY", " WHERE measures != '{}' GROUP BY")
            ).fetchall()
        )
        assert_users_file_as_scanned(conn, 4_000)
    finally:
        conn.close()


def test_the_builders_of_one_file_take_turns_instead_of_counting_the_same_rows(tmp_path: Path) -> None:
    """40,000 rows past the read side, and two stores whose builders wake at the same moment: each row
    is counted by one of them (their lock on `<database>-builder.lock`), not by both."""
    from drengr.core.timestamps import format_ms

    path = str(tmp_path / "drengr.db")

    def rows(prefix: str, n: int) -> list[tuple[Any, ...]]:
        received = format_ms(T0)
        return [("acme", f"{prefix}{i}", "e", "track", f"u{i % 7}", "a", received, received, "{}", "{}", None)
                for i in range(n)]  # fmt: skip

    with pytest.MonkeyPatch.context() as held:
        held.setattr(Writer, "builds_read_side", False)
        store = SQLiteStore(path)
        for batch in range(20):
            assert store.write("acme", rows(f"b{batch}-", 2_000), T0).stored == 2_000
        store.close()
    stores = [SQLiteStore(path), SQLiteStore(path)]
    for number, store in enumerate(stores):
        assert store.write("acme", rows(f"s{number}-", 1), T0).stored == 1
    builders = [store._committer._builder for store in stores]
    assert all(builders)
    for builder in builders:
        builder._wake.set()  # both at once: each finds 40,000 rows to count
    for store in stores:
        store.close()
    # From a copy of the table, or (a store's own row, where the other had counted up to it) from memory.
    assert sum(builder.counted_rows + builder.counted_from_memory for builder in builders) == 40_002
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'read_side_seq'").fetchone() == ("40002",)
        assert conn.execute("SELECT sum(events) FROM event_rollups").fetchone() == (40_002,)
    finally:
        conn.close()


def _marks(path: str) -> tuple[int, int]:
    """The read side's marks of the database at ``path``: (read_side_seq, users_seq); -1: not there yet."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        built = conn.execute("SELECT value FROM meta WHERE key = 'read_side_seq'").fetchone()
        if not Path(read_side.users_path(path)).exists():
            return int(built[0]) if built else -1, -1
        conn.execute("ATTACH DATABASE ? AS users", (f"file:{read_side.users_path(path)}?mode=ro",))
        try:
            found = conn.execute("SELECT value FROM users.meta WHERE key = 'users_seq'").fetchone()
        except sqlite3.OperationalError:  # the file being made
            found = None
    return int(built[0]) if built else -1, int(found[0]) if found else -1


def test_the_end_of_a_burst_is_built_once_the_writer_is_idle_not_at_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the writer has had no group for ``WRITER_IDLE_SECONDS``, the builder builds the rows
    waiting at once, when they are ``BUILD_WHEN_IDLE_ROWS`` or more, and adds their counts itself (the
    idle writer has no group to add them in: offered, they would wait ``HAND_OVER_SECONDS``); fewer
    wait for its tick (here never: only the stopping step builds them)."""
    import time

    monkeypatch.setattr(read_side, "BUILD_EVERY_SECONDS", 600.0)
    monkeypatch.setattr(read_side, "HAND_OVER_SECONDS", 60.0)
    path = str(tmp_path / "drengr.db")
    store = SQLiteStore(path, writer="thread")
    try:
        for batch in range(3):  # 1,500 rows: past BUILD_WHEN_IDLE_ROWS, short of BUILD_AFTER_ROWS
            assert store.write("acme", _rows(f"b{batch}-", 500, T0), T0).stored == 500
        deadline = time.monotonic() + 10
        while _marks(path) != (1_500, 1_500) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _marks(path) == (1_500, 1_500)
        assert store.write("acme", _rows("few-", 500, T0), T0).stored == 500
        time.sleep(0.5)  # 25 times the idle wait
        assert _marks(path) == (1_500, 1_500)
    finally:
        store.close()
    assert _marks(path) == (2_000, 2_000)
    _rollups_as_scanned(path)


def test_the_writer_process_adds_the_counts_sent_with_a_job_and_adds_up_the_rows_of_one_it_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request's process adds up a job's rows as it sends them to the writer process
    (``Job.summary``), which adds those counts to the read side instead of reading each row's; a job
    of which the writer dropped a row (a duplicate) has its fresh rows added up there. Told apart
    by counts sent ten times too high."""
    from drengr.store.sqlite import process

    sent = process._summary

    def ten_times(rows: list[tuple[Any, ...]]) -> Any:
        events, measures = sent(rows)
        return [(*key, count * 10) for *key, count in events], measures

    monkeypatch.setattr(process, "_summary", ten_times)
    path = str(tmp_path / "drengr.db")
    store = SQLiteStore(path, writer="process")
    try:
        assert store.write("acme", _rows("a", 30, T0), T0).stored == 30  # whole: as sent
        cut = _rows("a", 3, T0) + _rows("b", 20, T0)  # three rows stored already
        assert store.write("acme", cut, T0).stored == 20
    finally:
        store.close()  # its builder catches up first
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM semantic_events").fetchone() == (50,)
        assert conn.execute("SELECT sum(events) FROM event_rollups").fetchone() == (30 * 10 + 20,)
        assert conn.execute(
            "SELECT measure, sum(total) FROM measure_rollups GROUP BY 1 ORDER BY 1"
        ).fetchall() == [
            ("n", 2.0 * (15 + 10)),
            ("x", 0.5 * (15 + 10)),
        ]


def test_a_job_whose_counts_could_not_be_added_up_as_it_was_sent_is_stored_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding up a job's counts in the request's process is not the job's failure: should it raise,
    the job goes without them, is stored, and the writer process adds up its rows itself."""
    from drengr.store.sqlite import process

    class Failing:
        def add_rows(self, rows: list[tuple[Any, ...]]) -> None:
            raise MemoryError

    monkeypatch.setattr(process, "Sums", Failing)
    path = str(tmp_path / "drengr.db")
    store = SQLiteStore(path, writer="process")
    try:
        assert store.write("acme", _rows("a", 30, T0), T0).stored == 30
    finally:
        store.close()
    _rollups_as_scanned(path)


def test_counts_sent_with_the_jobs_make_the_read_side_a_scan_gives(tmp_path: Path) -> None:
    """Through the writer process, each job's counts added up by the request's process: the rollups
    equal a scan of the table, over batches of several minutes, names and measures."""
    path = str(tmp_path / "drengr.db")
    store = SQLiteStore(path, writer="process")
    try:
        for batch in range(12):
            received = T0 + batch * 25_000  # a new minute every few batches
            assert store.write("acme", _rows(f"b{batch}-", 100, received), received).stored == 100
    finally:
        store.close()
    _rollups_as_scanned(path)


def _rows(prefix: str, n: int, received_ms: int) -> list[tuple[Any, ...]]:
    from drengr.core.timestamps import format_ms

    received = format_ms(received_ms)
    return [("acme", f"{prefix}{i}", f"e{i % 3}", "track", f"u{i % 7}", "a", received, received, "{}",
             '{"n":2,"x":0.5}' if i % 2 else "{}", None) for i in range(n)]  # fmt: skip


def _rollups_as_scanned(path: str) -> None:
    """Every row counted once: the minute rollups equal a scan of the table, events and measures."""
    conn = sqlite3.connect(path)
    try:
        top = conn.execute("SELECT coalesce(max(seq), 0) FROM semantic_events").fetchone()[0]
        assert conn.execute("SELECT value FROM meta WHERE key = 'read_side_seq'").fetchone() == (str(top),)
        assert (
            conn.execute(
                "SELECT tenant_id, minute, event_name, event_type, events FROM event_rollups WHERE events > 0 "
                "ORDER BY 1, 2, 3, 4"
            ).fetchall()
            == conn.execute(
                "SELECT tenant_id, substr(received_at, 1, 16), event_name, event_type, count(*) FROM semantic_events "
                "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
            ).fetchall()
        )
        assert (
            conn.execute(
                "SELECT r.tenant_id, r.minute, r.event_name, r.measure, r.total FROM measure_rollups AS r "
                "JOIN event_rollups AS e USING (tenant_id, minute, event_name) WHERE e.events > 0 ORDER BY 1, 2, 3, 4"
            ).fetchall()
            == conn.execute(
                "SELECT e.tenant_id, substr(e.received_at, 1, 16), e.event_name, m.key, sum(m.value) "
                "FROM semantic_events AS e, json_each(e.measures) AS m GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
            ).fetchall()
        )
    finally:
        conn.close()


def _read_side_as_scanned(path: str, built: int) -> None:
    """The users file up to seq ``built`` and the rollups are what a scan of the table gives."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("ATTACH DATABASE ? AS users", (read_side.users_path(path),))
        assert_users_file_as_scanned(conn, built)
    _rollups_as_scanned(path)


def write_without_read_side(path: str, batches: list[list[tuple[Any, ...]]]) -> None:
    """The batches through a store whose writer builds no read side (every row past its marks)."""
    with pytest.MonkeyPatch.context() as held:
        held.setattr(Writer, "builds_read_side", False)
        store = SQLiteStore(path, writer="thread")
        try:
            for batch in batches:
                assert store.write("acme", batch, T0).stored == len(batch)
        finally:
            store.close()


def add_counted_now(conn: sqlite3.Connection, counted: Any) -> bool:
    """``add_counted`` in a write transaction of its own, as the writer's next group adds a step's counts."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        return read_side.add_counted(conn, counted)
    finally:
        conn.execute("COMMIT")


def test_whether_a_tenant_has_rows_is_answered_without_a_scan(tmp_path: Path) -> None:
    """A read command's check of --tenant (``has_rows_of``) reads the rollups and the rows past their
    mark, not the table: a tenant with rows only past the mark is found, a mistyped one is not, and
    both take a small part of what a scan of the same table takes (SQLite's steps, counted)."""
    path = str(tmp_path / "drengr.db")
    store = SQLiteStore(path, writer="thread")
    try:
        for batch in range(20):
            assert store.write("acme", _rows(f"b{batch}-", 1_000, T0 + batch * 9_000), T0).stored == 1_000
    finally:
        store.close()  # its builder counts them all as it stops
    with pytest.MonkeyPatch.context() as held:
        held.setattr(Writer, "builds_read_side", False)
        late = SQLiteStore(path, writer="thread")
        try:
            assert late.write("late", [("late", *row[1:]) for row in _rows("late-", 10, T0)], T0).stored == 10
        finally:
            late.close()
    reader = SQLiteReader(path)
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0  # (go on)

    try:
        reader._conn().set_progress_handler(step, 100)
        scan = reader._snapshot(
            lambda execute: execute(
                "SELECT 1 FROM semantic_events WHERE tenant_id = ? LIMIT 1", ["acmee"]
            ).fetchone(),
            "tenants",
        )
        assert scan is None
        scanned, steps[0] = steps[0], 0
        assert scanned > 200  # 20,010 rows: SQLite steps through each
        found = [reader.has_rows_of(tenant) for tenant in ("acme", "late", "acmee")]
        assert found == [True, True, False]
        assert steps[0] * 20 < scanned, (steps[0], scanned)
    finally:
        reader.close()


def test_the_builder_indexes_its_writers_rows_from_memory_and_copies_only_the_rest(tmp_path: Path) -> None:
    """``index_committed``: the rows handed over as committed go into the users file as a copy from the
    table would put them; a new file for a table with rows below those held is the table's; where rows
    not in memory come first (another process's), the table is copied up to them; a run partly indexed
    already is let go, and copied."""
    path = str(tmp_path / "drengr.db")
    batches = [_rows(f"b{b}-", 50, T0 + b * 9_000) for b in range(6)]  # seqs 1 + 50 b .. 50 (b + 1)
    write_without_read_side(path, batches)
    users = read_side.open_users(path)
    conn = sqlite3.connect(path, isolation_level=None)

    def add(counted: Any) -> None:
        assert add_counted_now(conn, counted)

    try:
        committed = read_side.Committed()
        committed.add([(51, batches[1], None)])  # 1..50 are not held (another process's)
        assert read_side.index_committed(users, committed) == (0, None, True, None)  # a new file: the table's
        committed.add([(1 + 50 * b, batches[b], None) for b in (0, 1, 3)])  # batch 2 is not held
        committed.add([(1 + 50 * b, batches[b], None) for b in (4, 5)])  # runs: 1..100 and 151..300
        step = read_side.copy_step(users, max_rows=70)
        assert step is not None and (step.low, step.high) == (0, 70) and read_side.index_users(users, step)
        add(step.counted)
        # 71..100 of the run 1..100 are not indexed, but it cannot be cut: let go, copied up to 150.
        assert read_side.index_committed(users, committed)[:2] == (0, 150)
        assert read_side.copy_step(users, below=70) is None  # nothing left up to 70
        step = read_side.copy_step(users, below=150)
        assert step is not None and (step.low, step.high) == (70, 150) and read_side.index_users(users, step)
        add(step.counted)
        memory = read_side.index_committed(users, committed)  # batches 3, 4 and 5 at once
        assert memory[:2] == (150, None) and memory.counted is not None
        assert (memory.counted.low, memory.counted.high) == (150, 300)
        add(memory.counted)
        assert read_side.index_committed(users, committed)[:2] == (0, None)  # none held
        users.execute("ATTACH DATABASE ? AS users", (read_side.users_path(path),))
        assert_users_file_as_scanned(users, 300)
        assert users.execute("SELECT value FROM meta WHERE key = 'users_seq'").fetchone() == ("300",)
    finally:
        conn.close()
        users.close()
    _rollups_as_scanned(path)


def test_a_new_databases_users_file_is_made_from_the_rows_held(tmp_path: Path) -> None:
    """Where the runs held begin at the table's first row (a new database, its writer's rows all in
    memory), ``index_committed`` makes the new users file and indexes and counts them from memory: a
    new server's first rows are not copied back from the table."""
    path = str(tmp_path / "drengr.db")
    batches = [_rows(f"b{b}-", 50, T0 + b * 9_000) for b in range(2)]
    write_without_read_side(path, batches)
    users = read_side.open_users(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        committed = read_side.Committed()
        committed.add([(1, batches[0], None), (51, batches[1], None)])
        memory = read_side.index_committed(users, committed)
        assert memory[:2] == (100, None) and memory.counted is not None
        assert (memory.counted.low, memory.counted.high) == (0, 100)
        assert add_counted_now(conn, memory.counted)
        users.execute("ATTACH DATABASE ? AS users", (read_side.users_path(path),))
        assert_users_file_as_scanned(users, 100)
        meta = dict(users.execute("SELECT key, value FROM users.meta").fetchall())
        database_id = users.execute("SELECT value FROM events.meta WHERE key = 'database_id'").fetchone()[0]
        assert (meta["users_seq"], meta["database_id"], meta["layout"]) == ("100", database_id, USERS_LAYOUT)
        assert read_side.copy_step(users) is None  # nothing left to copy
    finally:
        conn.close()
        users.close()
    _rollups_as_scanned(path)


def test_committed_rows_past_the_memory_bound_are_left_to_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Committed`` holds about ``HELD_BYTES`` at most: a group past it is not held, the group after it
    starts a run of its own, and the builder is told to copy up to it; rows indexed already are let go."""
    batches = [_rows(f"b{b}-", 50, T0) for b in range(5)]
    two = read_side.Held(1, True)
    assert two.add(1, batches[0]) + two.add(51, batches[1]) == two.bytes > 100 * read_side.HELD_ROW_BYTES
    monkeypatch.setattr(read_side, "HELD_BYTES", two.bytes)  # two batches: full
    committed = read_side.Committed()
    committed.add([(1, batches[0], None), (51, batches[1], None), (101, batches[2], None)])

    def spans(runs: list[Any]) -> list[tuple[int, int, int]]:
        return [(run.first, run.last, run.sums.rows) for run in runs]

    runs, below = committed.take(0)
    assert (spans(runs), below) == ([(1, 100, 100)], None)
    committed.add([(151, batches[3], None), (201, batches[4], None)])  # room again
    assert committed.take(100) == ([], 150)  # 101..150 were not held: the table's
    runs, below = committed.take(150)
    assert (spans(runs), below) == ([(151, 250, 100)], None)
    assert committed.take(250) == ([], None)
    committed.add([(251, batches[0], None)])
    assert committed.take(260) == ([], None)  # 251..260 indexed from the table: the run is let go
    committed.add([(301, batches[1], None)])  # a new run: the one it followed is gone
    runs, below = committed.take(300)
    assert (spans(runs), below) == ([(301, 350, 50)], None)


def test_rows_being_committed_or_copied_are_left_to_one_of_memory_and_table() -> None:
    """A copy of the table stops below the rows the writer is committing (``expect``: they are coming
    to memory), and a run a copy reached is let go at once, so that the writer's next group starts a
    run the builder can take rather than one let go too."""
    batches = [_rows(f"b{b}-", 50, T0) for b in range(2)]
    committed = read_side.Committed()
    committed.expect(1)
    assert committed.take(0) == ([], 0)  # 1.. are being committed: copy nothing past 0
    committed.add([(1, batches[0], None)])
    committed.copied(30)  # (the builder of a new users file copied them anyway)
    committed.add([(51, batches[1], None)])
    runs, below = committed.take(50)
    assert ([(run.first, run.last) for run in runs], below) == ([(51, 100)], None)
    committed.expect(101)
    committed.expect(None)  # that group failed: nothing is coming
    assert committed.take(100) == ([], None)


def _builder_over(path: str, batches: int, writer: Any = None) -> tuple[list[Any], read_side.Builder]:
    """``batches`` batches of 100 rows written without the read side, 9 s apart, and a
    builder of the file (with ``writer``, the writer that adds its counts)."""
    written = [_rows(f"b{b}-", 100, T0 + b * 9_000) for b in range(batches)]
    write_without_read_side(path, written)  # (the table's rows; those handed to it come from memory)
    return written, read_side.Builder(
        path,
        lambda: sqlite3.connect(path, isolation_level=None),
        contextlib.nullcontext,
        5_000,
        writer=writer,
    )


def _noting_who_adds(patch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """``Held.add`` patched to note each group it adds up, by its first seq, and the thread adding it."""
    import threading

    add = read_side.Held.add
    adders: list[tuple[int, str]] = []

    def add_noting_the_thread(run: Any, first_seq: int, rows: list[Any], summary: Any = None) -> int:
        adders.append((first_seq, threading.current_thread().name))
        return add(run, first_seq, rows, summary)

    patch.setattr(read_side.Held, "add", add_noting_the_thread)
    return adders


def test_groups_handed_over_wait_in_order_and_copies_of_the_table_stop_below_them() -> None:
    """The writer hands its groups over (``hand``) and the hand-over thread adds them up later
    (``settle``): till then a copy of the table stops below the first of them, as below rows
    coming; settled, they are one run, in the order they came."""
    batches = [_rows(f"b{b}-", 50, T0) for b in range(3)]
    committed = read_side.Committed()
    committed.expect(1)
    assert committed.hand([(1, batches[0], None)]) == 50  # the rows waiting to be added up
    committed.expect(51)
    assert committed.hand([(51, batches[1], None), (101, [], None)]) == 100
    committed.expect(101)
    assert committed.take(0) == ([], 0)  # 1.. handed over, not added up: copy nothing past 0
    assert committed.settle() and committed.first() == 1  # 1..50 added up; 51.. still handed over
    assert committed.settle() and not committed.settle()
    committed.hand([(101, batches[2], None)])
    committed.add([])  # (adds up what was handed over before it)
    runs, below = committed.take(0)
    assert ([(run.first, run.last) for run in runs], below) == ([(1, 150)], None)


def test_a_busy_writer_hands_a_group_to_the_hand_over_thread_an_idle_one_adds_it_up_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With jobs waiting as it has answered a group, the writer goes on to them and the builder's
    hand-over thread adds up the group's rows (the writer's loop sets the rate where its core is
    full); with none waiting, the writer adds them up itself, in time it would wait anyway. The
    read side is what the table gives either way."""
    import threading
    import time

    monkeypatch.setattr(read_side, "WAKE_ROWS", 100)  # (the thread is woken for a group of 100)
    path = str(tmp_path / "drengr.db")
    store = SQLiteStore(path, writer="thread")
    commit_group = Writer._commit_group
    writes: list[threading.Thread] = []

    def commit_with_a_job_waiting(writer: Writer, conn: Any, jobs: Any) -> Any:
        if not writes:  # the first group: a second job comes in meanwhile
            writes.append(threading.Thread(target=store.write, args=("acme", _rows("b1-", 100, T0), T0)))
            writes[0].start()
            deadline = time.monotonic() + 10
            while store._queue.empty() and time.monotonic() < deadline:
                time.sleep(0.001)
        return commit_group(writer, conn, jobs)

    try:
        with pytest.MonkeyPatch.context() as patch:
            adders = _noting_who_adds(patch)
            patch.setattr(Writer, "_commit_group", commit_with_a_job_waiting)
            assert store.write("acme", _rows("b0-", 100, T0), T0).stored == 100
            writes[0].join(10)
            deadline = time.monotonic() + 10
            while len(adders) < 2 and time.monotonic() < deadline:  # (before the store's stop comes)
                time.sleep(0.001)
            builder = store._committer._builder
    finally:
        store.close()
    assert sorted(adders) == [(1, "drengr-hand-over"), (101, "drengr-writer")]
    assert builder is not None and builder.indexed_from_memory == builder.counted_from_memory == 200
    _read_side_as_scanned(path, 200)


def test_the_hand_over_thread_is_woken_once_enough_rows_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy writer's groups wait for the hand-over thread until ``WAKE_ROWS`` rows do (a thread
    woken for each small group cost more than its pass); then it adds them all up, in order."""
    import time

    monkeypatch.setattr(read_side, "WAKE_ROWS", 250)
    monkeypatch.setattr(read_side, "BUILD_EVERY_SECONDS", 600.0)  # no step but the stopping one
    adders = _noting_who_adds(monkeypatch)
    path = str(tmp_path / "drengr.db")
    batches, builder = _builder_over(path, 3)
    waiting = []
    try:
        for b, batch in enumerate(batches):
            builder.wrote(100, [(1 + 100 * b, batch, None)], later=True)
            time.sleep(0.2)  # (time for a thread woken to add them up)
            waiting.append(builder.committed._handed_rows)
        added_by = time.monotonic() + 10
        while len(adders) < 3 and time.monotonic() < added_by:
            time.sleep(0.01)
    finally:
        builder.stop()
    assert waiting[:2] == [100, 200]  # (the third: 300, or fewer once the thread is at them)
    assert adders == [(1, "drengr-hand-over"), (101, "drengr-hand-over"), (201, "drengr-hand-over")]
    assert builder.indexed_from_memory == builder.counted_from_memory == 300
    _read_side_as_scanned(path, 300)


def test_counts_offered_to_a_writer_that_goes_idle_are_given_back_and_added_by_the_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's counts offered to the writer wait for its next group; should it go idle first (no
    group for ``WRITER_IDLE_SECONDS``), it gives them back and the builder adds them at once, not
    after ``HAND_OVER_SECONDS``."""
    import time

    monkeypatch.setattr(read_side, "HAND_OVER_SECONDS", 60.0)
    monkeypatch.setattr(read_side, "BUILD_EVERY_SECONDS", 0.05)
    path = str(tmp_path / "drengr.db")
    writer = Writer(path)  # not writing: its builder's counts wait for a group that does not come
    _batches, builder = _builder_over(path, 1, writer)  # (a copy of the table counts the rows)
    writer._builder = builder  # (as its first group would make it)
    try:
        offered_by = time.monotonic() + 10
        while writer._offered is None and time.monotonic() < offered_by:
            time.sleep(0.005)
        assert writer._offered is not None and _marks(path)[0] == 0
        assert writer.idle_wait() == read_side.WRITER_IDLE_SECONDS  # (no group came: it says so)
        writer.idle()
        given_back = time.monotonic()
        while _marks(path) != (100, 100) and time.monotonic() < given_back + 10:
            time.sleep(0.005)
        assert _marks(path) == (100, 100) and writer._offered is None
    finally:
        writer._builder = None
        builder.stop()
    _read_side_as_scanned(path, 100)


def test_past_the_rows_that_may_wait_the_writer_adds_them_up_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its hand-over thread held up, a busy writer keeps at most ``HANDED_ROWS`` rows waiting
    for it (each row's tuple is held there): past them it adds up what waits itself, in order."""
    import threading

    monkeypatch.setattr(read_side, "HANDED_ROWS", 150)
    monkeypatch.setattr(read_side, "BUILD_EVERY_SECONDS", 600.0)  # no step but the stopping one
    held_up = threading.Event()
    settle = read_side.Builder._settle_handed

    def settle_once_let_go(builder: Any) -> None:
        held_up.wait(30)
        settle(builder)

    monkeypatch.setattr(read_side.Builder, "_settle_handed", settle_once_let_go)
    path = str(tmp_path / "drengr.db")
    batches, builder = _builder_over(path, 5)
    waiting = []
    try:
        for b, batch in enumerate(batches):
            builder.wrote(100, [(1 + 100 * b, batch, None)], later=True)
            waiting.append(builder.committed._handed_rows)
    finally:
        held_up.set()
        builder.stop()
    assert waiting == [100, 0, 100, 0, 100]  # 200 would wait: the writer added both up
    assert builder.indexed_from_memory == builder.counted_from_memory == 500
    _read_side_as_scanned(path, 500)


def test_a_stopping_builder_builds_the_rows_held_after_the_rows_it_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At its stop the builder holds rows past some it must copy from the table (another process's):
    it copies those, then takes the held ones, and leaves the read side whole (it used to stop after
    the copy, the held rows never built)."""
    path = str(tmp_path / "drengr.db")
    batches = [_rows(f"b{b}-", 50, T0 + b * 9_000) for b in range(3)]  # seqs 1..150
    write_without_read_side(path, batches)
    users = read_side.open_users(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        step = read_side.copy_step(users, max_rows=50)
        assert step is not None and read_side.index_users(users, step)
        assert add_counted_now(conn, step.counted)  # both marks at 50
    finally:
        conn.close()
        users.close()
    monkeypatch.setattr(read_side, "BUILD_EVERY_SECONDS", 600.0)  # no step but the stopping one
    builder = read_side.Builder(
        path, lambda: sqlite3.connect(path, isolation_level=None), contextlib.nullcontext, 5_000
    )
    builder.committed.add([(101, batches[2], None)])  # 51..100 are not held: another process's
    builder.stop()
    assert (builder.counted_rows, builder.counted_from_memory) == (50, 50)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("ATTACH DATABASE ? AS users", (read_side.users_path(path),))
        assert read_side.built_to(conn) == 150
        assert_users_file_as_scanned(conn, 150)
    _rollups_as_scanned(path)


@pytest.mark.parametrize("shape", ["names", "measures", "users"])
def test_what_a_run_holds_is_counted_against_its_memory_bound(shape: str) -> None:
    """``Held.add``'s account of its memory is at least what tracemalloc sees it take, whatever the
    rows bring new: an event name each (names sent with an id in them), a measure each, a user each
    (it counted 16 bytes a row and 256 a user: new names took some 50 times that)."""
    import tracemalloc

    from drengr.core.timestamps import format_ms

    received = format_ms(T0)
    rows = [
        ("acme", f"id{i}", f"Viewed product {i}" if shape == "names" else "viewed", "track",
         f"user-{i}" if shape == "users" else "u", "a", received, received, "{}",
         f'{{"m{i}":1,"n{i}":2.5}}' if shape == "measures" else '{"n":1}', None)
        for i in range(2_000)
    ]  # fmt: skip
    run = read_side.Held(1, True)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        accounted = sum(run.add(1 + start, rows[start : start + 100]) for start in range(0, len(rows), 100))
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert accounted == run.bytes >= taken > 0


def test_a_run_that_failed_to_take_a_group_is_let_go_and_the_writer_goes_on(tmp_path: Path) -> None:
    """Should adding a group up fail (a MemoryError), the run holding part of it is let go (its rows
    are read back from the table, not counted twice), nothing is left expected, and the writer
    answers the next write: the read side ends as the table gives it."""
    path = str(tmp_path / "drengr.db")
    store = SQLiteStore(path, writer="thread")
    add = read_side.Held.add
    failures = [1]

    def add_then_fail(run: Any, first_seq: int, rows: list[Any], summary: Any = None) -> int:
        if failures and first_seq > 300:
            failures.pop()
            run.users.add(first_seq, rows)  # part of the group, then no memory
            raise MemoryError
        return add(run, first_seq, rows, summary)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(read_side.Held, "add", add_then_fail)
            for batch in range(8):
                assert store.write("acme", _rows(f"b{batch}-", 100, T0 + batch * 9_000), T0).stored == 100
            builder = store._committer._builder
            assert builder is not None
            builder._settle()  # what its hand-over thread has not added up yet, still patched
        assert not failures
        assert builder.committed._coming is None
    finally:
        store.close()
    _read_side_as_scanned(path, 800)


def test_a_users_seqs_survive_a_failed_allocation() -> None:
    """``UserRows`` whose buffer for a user's seqs could not grow (a MemoryError) takes that user's
    next seq into a buffer that did: it used to count the failed growth as done, and wrote past
    the buffer it had (a crash). Each allocation of a user's first add fails in turn, in a process
    of its own."""
    pytest.importorskip(
        "_testcapi", reason="CPython's _testcapi fails chosen allocations: a CPython build with its tests"
    )
    script = """
import sys, _testcapi
from drengr._measures import UserRows
row = ("t", "id", "n", "track", "user-1", "i", "o", "2026-01-01T00:00:00.000Z", "{}", "{}", None)
for start in range(1, 12):
    rows = UserRows(14, 10, True)
    _testcapi.set_nomemory(start, start + 1)
    try:
        rows.add(1, [row])
    except MemoryError:
        pass
    finally:
        _testcapi.remove_mem_hooks()
    rows.add(2, [row] * 40)
    print(start, rows.user_seqs()[-1][-1].count(",") + 1)
"""
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr[-2_000:]
    counts = [int(line.split()[1]) for line in found.stdout.split("\n") if line.strip()]
    assert len(counts) == 11 and all(count in (40, 41) for count in counts)


def test_a_writers_rows_are_indexed_and_counted_from_memory(tmp_path: Path) -> None:
    """A store's own writes, from a new database's first on, are indexed and counted by its builder
    from the writer's rows in memory: none is read back from the table, and the users file and the
    rollups are what the table gives."""
    import time

    path = str(tmp_path / "drengr.db")
    store = SQLiteStore(path)
    try:
        assert store.write("acme", _rows("first-", 300, T0), T0).stored == 300
        deadline = time.monotonic() + 30
        while _marks(path) != (300, 300) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _marks(path) == (300, 300)  # the users file made, and the rollups counted, from memory
        builder = store._committer._builder
        assert builder is not None and (builder.indexed_from_memory, builder.counted_from_memory) == (
            300,
            300,
        )
        assert builder.counted_rows == 0
        for batch in range(59):
            assert store.write("acme", _rows(f"b{batch}-", 300, T0 + batch * 9_000), T0).stored == 300
    finally:
        store.close()  # its builder indexes and counts the last rows as it stops
    assert (builder.indexed_from_memory, builder.counted_from_memory, builder.counted_rows) == (
        18_000,
        18_000,
        0,
    )
    _read_side_as_scanned(path, 18_000)


def test_a_users_file_of_an_older_layout_is_not_read_and_is_built_again(tmp_path: Path) -> None:
    """An older drengr's users file (a `user_index` row per event, no `layout`) indexing this very
    database: reads do not use it (their pages are still the table's), and a store builds it again."""
    path = tmp_path / "drengr.db"
    fill(path, "thread")
    conn = sqlite3.connect(path)
    database_id, top = conn.execute(
        "SELECT value, (SELECT max(seq) FROM semantic_events) FROM meta WHERE key = 'database_id'"
    ).fetchone()
    conn.close()
    Path(users_path(str(path))).unlink()
    old = sqlite3.connect(users_path(str(path)))
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
        "CREATE TABLE user_index (block, tenant_id, external_id, seq, PRIMARY KEY (block, tenant_id, external_id, seq));"
        "CREATE TABLE daily_users (tenant_id, day, external_id, PRIMARY KEY (tenant_id, day, external_id));"
        "CREATE TABLE name_blocks (tenant_id, event_name, block, first_seq, last_seq, PRIMARY KEY (tenant_id, event_name, block));"
    )
    old.executemany("INSERT INTO meta VALUES (?, ?)", [("users_seq", str(top)), ("database_id", database_id)])
    old.commit()
    old.close()
    query = EventQuery("acme", external_id="u3", limit=500)
    reader = SQLiteReader(str(path))
    try:
        statements: list[str] = []
        reader._conn().set_trace_callback(statements.append)
        assert [event["seq"] for event in reader.events(query).events] == oracle_page(path, query)
        assert not any("users.user_seqs" in sql for sql in statements)
    finally:
        reader.close()
    store = SQLiteStore(str(path))
    try:
        assert store.write("acme", _rows("later-", 5, T0), T0).stored == 5
    finally:
        store.close()  # its builder catches up as it closes
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("ATTACH DATABASE ? AS users", (users_path(str(path)),))
        tables = {row[0] for row in conn.execute("SELECT name FROM users.sqlite_master WHERE type = 'table'")}
        assert "user_index" not in tables
        assert conn.execute("SELECT value FROM users.meta WHERE key = 'layout'").fetchone() == (USERS_LAYOUT,)
        assert_users_file_as_scanned(conn, top + 5)


@contextlib.contextmanager
def first_counted_two_held(path: str) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection, Any]]:
    """Three batches of 100 written without the read side, a minute and more apart; the first counted
    and indexed from the table (both marks at 100), the other two held in memory (``Committed``) as
    a writer hands them to its builder. Yields the users file's connection, the database's, and
    those held rows."""
    batches = [_rows(f"b{b}-", 100, T0 + ms) for b, ms in enumerate((0, 1_000, 120_000))]
    write_without_read_side(path, batches)
    users = read_side.open_users(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        step = read_side.copy_step(users, max_rows=100)
        assert step is not None and step.counted is not None and read_side.index_users(users, step)
        assert add_counted_now(conn, step.counted)
        committed = read_side.Committed()
        committed.add([(101, batches[1], None), (201, batches[2], None)])
        yield users, conn, committed
    finally:
        conn.close()
        users.close()


def prune_the_first_two(path: str) -> None:
    """Retention deletes the batches received before T0 + 1 minute: the counted one and the first held."""
    store = SQLiteStore(path, writer="thread")
    try:
        assert store.prune_events(T0 + 60_000) == 200
    finally:
        store.close()


def test_counts_made_from_memory_are_dropped_when_a_prune_came_first(tmp_path: Path) -> None:
    """Rows deleted after the builder counted them from memory and before the counts were added (a
    prune, a tenant deleted) are not counted: the prune moves the read side's epoch, the counts are
    refused, and a step counts the rows left from the table."""
    path = str(tmp_path / "drengr.db")
    with first_counted_two_held(path) as (users, conn, committed):
        memory = read_side.index_committed(users, committed)
        assert memory.rows == 200 and memory.counted is not None
        assert (memory.counted.low, memory.counted.high) == (100, 300)
        prune_the_first_two(path)
        assert not add_counted_now(conn, memory.counted)
    read_side.catch_up(path)
    _rollups_as_scanned(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT sum(events) FROM event_rollups").fetchone() == (100,)


def test_a_group_committed_as_the_builder_takes_its_rows_is_still_taken_from_memory(tmp_path: Path) -> None:
    """The writer commits a group and hands it over just as a step takes what is held: the step's
    snapshot of the database holds it (a snapshot begun before the take did not, and the rows
    looked deleted by a prune: counted from the table instead, under load)."""
    path = str(tmp_path / "drengr.db")
    with first_counted_two_held(path) as (users, _conn, committed):
        late = _rows("late-", 100, T0 + 180_000)
        take = committed.take

        def committed_meanwhile(indexed: int) -> Any:
            write_without_read_side(path, [late])  # seqs 301..400, committed, then handed over
            committed.add([(301, late, None)])
            return take(indexed)

        committed.take = committed_meanwhile  # type: ignore[method-assign]
        memory = read_side.index_committed(users, committed)
        assert memory.rows == 300 and memory.counted is not None
        assert (memory.counted.low, memory.counted.high) == (100, 400)


def test_rows_a_prune_deleted_before_the_builder_took_them_from_memory_are_not_counted(
    tmp_path: Path,
) -> None:
    """A prune that deletes rows the writer committed while they still wait in memory for the
    builder (recent rows of an old time of receipt, or a clock gone wrong): the builder does not
    count them from memory with the epoch the prune left; the step counts from the table."""
    path = str(tmp_path / "drengr.db")
    with first_counted_two_held(path) as (users, _conn, committed):
        prune_the_first_two(path)  # batch 1 still in memory
        memory = read_side.index_committed(users, committed)
        assert (memory.rows, memory.counted) == (0, None)  # not from memory: batch 1 is gone
    read_side.catch_up(path)
    _rollups_as_scanned(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT sum(events) FROM event_rollups").fetchone() == (100,)


def test_a_backup_restored_under_its_users_file_is_indexed_again(tmp_path: Path) -> None:
    """The database goes back to a backup (fewer rows, the same database id) and its users file
    stays; the first group written after it reaches past the users file's mark. The file is
    built again, not continued: pages by user and by name find every row."""
    path = tmp_path / "drengr.db"

    def write(name: str, user: str, n: int) -> None:
        store = SQLiteStore(str(path), writer="thread")
        try:
            rows = [
                ("acme", f"{name}{i}", name, "track", user, "a", at(T0), at(T0), "{}", "{}", None)
                for i in range(n)
            ]
            assert store.write("acme", rows, T0).stored == n
        finally:
            store.close()  # its builder catches up: the users file at the last row

    write("a", "u0", 100)
    backup = tmp_path / "backup.db"
    with (
        contextlib.closing(sqlite3.connect(path)) as conn,
        contextlib.closing(sqlite3.connect(backup)) as copy,
    ):
        conn.backup(copy)
    write("b", "u9", 100)  # seqs 101-200 in the users file
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    backup.rename(path)
    write("c", "u1", 150)  # seqs 101-250, one group past the users file's 200
    reader = SQLiteReader(str(path))
    try:
        for query in (
            EventQuery("acme", external_id="u1", limit=500),
            EventQuery("acme", event_name="c", limit=500),
        ):
            assert len(reader.events(query).events) == 150
    finally:
        reader.close()


def test_measure_sums_past_64_bits_neither_stop_the_read_side_nor_fail_a_write(tmp_path: Path) -> None:
    """Five events of 2**62, a minute apart: the hour's sum is past a 64-bit integer. Every write is
    stored, the builder counts them all, the sums read as floats by either time, and a prune takes
    them out."""
    path = tmp_path / "drengr.db"
    store = SQLiteStore(str(path), writer="thread")
    try:
        for i in range(5):
            received = at(T0 + i * MINUTE)
            row = (
                "acme",
                f"big{i}",
                "buy",
                "track",
                "u",
                "a",
                received,
                received,
                "{}",
                '{"m":4611686018427387904}',
                None,
            )
            assert store.write("acme", [row], T0).stored == 1
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'read_side_seq'").fetchone() == ("5",)
    reader = SQLiteReader(str(path))
    try:
        for time_field in ("received_at", "occurred_at"):
            stats = reader.stats(StatsQuery("acme", time_field=time_field, measures=("m",)))
            assert stats.sums == {"m": pytest.approx(5 * 2**62)}
    finally:
        reader.close()
    store = SQLiteStore(str(path), writer="thread")
    try:
        assert store.prune_events(T0 + 5 * MINUTE) == 5
    finally:
        store.close()


def test_sums_past_the_largest_double_both_ways_do_not_stop_the_read_side(tmp_path: Path) -> None:
    """Two events of 1e308 (their minute's sum: +inf), then four of -1e308 in the same minute, in
    another step: +inf plus -inf is NaN, which the column cannot hold. The builder counts on (every
    later row is in the rollups), and the sum reads null, as any sum past the largest double."""
    path = tmp_path / "drengr.db"

    def write(first: int, value: str, n: int) -> None:
        store = SQLiteStore(str(path), writer="thread")
        try:
            rows = [
                (
                    "acme",
                    f"e{first + i}",
                    "buy",
                    "track",
                    "u",
                    "a",
                    at(T0),
                    at(T0),
                    "{}",
                    f'{{"m":{value}}}',
                    None,
                )
                for i in range(n)
            ]
            assert store.write("acme", rows, T0).stored == n
        finally:
            store.close()  # its builder has counted them

    write(0, "1e308", 2)
    write(2, "-1e308", 4)
    write(6, "5", 1)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'read_side_seq'").fetchone() == ("7",)
    reader = SQLiteReader(str(path))
    try:
        stats = reader.stats(StatsQuery("acme", measures=("m",)))
        assert stats.total == 7
        assert math.isinf(stats.sums["m"])  # null in JSON (read_api)
    finally:
        reader.close()


def drengr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drengr", *args],
        capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": ""}, timeout=60,
    )  # fmt: skip


def rollup_totals(path: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT (SELECT coalesce(sum(events), 0) FROM event_rollups), "
            "(SELECT coalesce(sum(events), 0) FROM hourly_event_rollups)"
        ).fetchone()


def test_a_prune_of_a_file_of_an_older_layout_brings_it_up_to_date_first(tmp_path: Path) -> None:
    """A version-4 file pruned before any server opened it: its rollups lose the rows it deletes
    (read as version 4, without read_side_seq, they kept every row counted for good)."""
    path = tmp_path / "drengr.db"
    fill(path, "thread")
    as_version_4(path)
    done = drengr("prune", "--before", "3d", "--dedup-window-days", "1", "--db", str(path))
    assert done.returncode == 0, done.stderr
    assert rollup_totals(path) == (0, 0)
    reader = SQLiteReader(str(path))
    try:
        assert reader.stats(StatsQuery(None, since="2026-01-01T00:00:00Z")).total == 0
    finally:
        reader.close()


def test_a_backfill_of_a_file_from_before_the_hourly_rollups_fills_them(tmp_path: Path) -> None:
    """The minutes' rollups there, the hours' not: the backfill brings the file up to date first,
    which adds the minutes up by hour (made empty by the backfill, they stayed empty)."""
    path = tmp_path / "drengr.db"
    fill(path, "thread")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE hourly_event_rollups")
        conn.execute("DROP TABLE hourly_measure_rollups")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        conn.commit()
    done = drengr("db", "backfill-rollups", "--db", str(path))
    assert done.returncode == 0, done.stderr
    assert rollup_totals(path) == (EVENTS, EVENTS)


def test_backfill_mistakes_are_one_sentence(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table t (x)").connection.commit()
    for args, says in (
        (["--db", str(tmp_path / "typo.db")], "No database at"),
        (["--db", str(other)], "has no semantic_events table"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "drengr", "db", "backfill-rollups", *args],
            capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": ""}, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "typo.db").exists()


def test_a_prune_takes_its_rows_out_of_the_rollups(tmp_path: Path) -> None:
    """Retention deletes rows: the rollups lose the same rows in the same transactions, and answer as the scan."""
    path = tmp_path / "drengr.db"
    fill(path, "thread")
    store = SQLiteStore(str(path))
    try:
        pruned = store.prune_events(T0 + 30 * MINUTE + 5_000, batch_rows=25)  # cuts through a minute
    finally:
        store.close()
    assert pruned == 107  # the events received before 10:30:05: 17 s apart from 10:00
    reader = SQLiteReader(str(path))
    try:
        for query in [p.values[0] for p in QUERIES]:
            assert_stats_as_scanned(reader, query)
    finally:
        reader.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT min(minute) FROM event_rollups").fetchone() == ("2026-11-26T10:30",)
    assert conn.execute("SELECT count(*) FROM event_rollups WHERE events <= 0").fetchone() == (0,)
    assert conn.execute("SELECT sum(events) FROM event_rollups").fetchone() == (EVENTS - 107,)
    conn.close()


def test_postgresql_keeps_the_same_rollups_and_prunes_them() -> None:
    """The PostgreSQL store: rollups in the write transaction, stats from them as from the scan, a prune."""
    from .support import postgres as pg

    with pg.fresh_schema() as dsn:
        schema = pg.query(dsn, "SELECT current_schema()")[0][0]
        uri = pg.with_schema(pg.server_dsn(), schema)
        fill(uri, "postgresql")
        reader = PostgresReader(uri)
        try:
            assert reader._snapshot(reader._rollups_cover, "stats") is True
            for prune in (False, True):
                if prune:
                    store = open_store(uri)
                    try:
                        assert store.prune_events(T0 + 30 * MINUTE + 5_000, batch_rows=25) == 107
                    finally:
                        store.close()
                for query in [p.values[0] for p in QUERIES]:
                    assert_stats_as_scanned(reader, query)
        finally:
            reader.close()
        assert pg.query(
            dsn, "SELECT sum(events)::int, count(*) FILTER (WHERE events <= 0)::int FROM event_rollups"
        ) == [(EVENTS - 107, 0)]

        # A database whose rows predate its rollups and indexes: scanned until `db backfill-rollups --store`.
        pg.query(dsn, "TRUNCATE event_rollups, measure_rollups, hourly_event_rollups, hourly_measure_rollups")
        pg.query(dsn, "TRUNCATE user_index, name_blocks")
        pg.query(
            dsn, "UPDATE drengr_meta SET value = '1000' WHERE key IN ('rollups_from_seq', 'indexes_from_seq')"
        )
        reader = PostgresReader(uri)
        try:
            assert reader._snapshot(reader._rollups_cover, "stats") is False
            done = subprocess.run(
                [sys.executable, "-m", "drengr", "db", "backfill-rollups", "--store", uri],
                capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": ""}, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert (
                "Counted" in done.stderr and "older events into the rollups of postgresql://" in done.stderr
            )
            assert reader._snapshot(reader._rollups_cover, "stats") is True
            for query in [p.values[0] for p in QUERIES]:
                assert_stats_as_scanned(reader, query)
        finally:
            reader.close()
        assert sorted(pg.query(dsn, "SELECT * FROM name_blocks")) == sorted(
            pg.query(
                dsn,
                f"SELECT tenant_id, event_name, seq >> {NAME_BLOCK_BITS}, min(seq), max(seq) FROM semantic_events "
                "GROUP BY 1, 2, 3",
            )
        )
        assert sorted(pg.query(dsn, "SELECT tenant_id, external_id, seq FROM user_index")) == sorted(
            pg.query(
                dsn, "SELECT tenant_id, external_id, seq FROM semantic_events WHERE external_id IS NOT NULL"
            )
        )


# ---------------------------------------------------------------- /v1/events without a scan

BLOCK_BITS = 4  # 16-row blocks of the user index and name blocks, so that 240 events make fifteen of them


def write_past_the_read_side(store: Any, location: str, keys: dict[str, str]) -> None:
    """40 more events through the app after fill()'s, into ``store`` (its builder held back); closes it."""
    clock = [T0 + EVENTS * STEP_MS]
    client = create_app(Config(db=location), store=store, clock_ms=lambda: clock[0]).test_client()
    try:
        for i in range(EVENTS, EVENTS + 40):
            clock[0] = T0 + i * STEP_MS
            body = {"type": "track", "event": "Signed Up", "userId": f"u{i % 3 + 3}", "messageId": f"m{i}"}
            assert post(client, "/v1/track", body, keys["acme"]).status_code == 200
    finally:
        store.close()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A database filled by the thread writer with 16-row user-index blocks (the reader sees the same size)."""
    from drengr.store import rollups
    from drengr.store.reader import events as reader_events

    patch = pytest.MonkeyPatch()
    patch.setattr(read_side, "USER_INDEX_BLOCK_BITS", BLOCK_BITS)
    patch.setattr(read_side, "NAME_BLOCK_BITS", BLOCK_BITS)  # name blocks of 16 rows too, built
    patch.setattr(rollups, "NAME_BLOCK_BITS", BLOCK_BITS)  # and read,
    patch.setattr(reader_events, "NAME_BLOCKS_AT_ONCE", 2)  # two at a time
    # And 8 rows near the cursor before an event name is sought through the rollups (4,096 in use).
    patch.setattr(reader_events, "NAME_SCAN_ROWS", 8)
    path = tmp_path_factory.mktemp("indexed") / "drengr.db"
    keys = fill(path, "thread")
    # Then 40 more events with the read side's builder held back: the newest rows (over two blocks'
    # worth) are past the rollups and the index, as on a server whose builder has not caught up yet.
    with pytest.MonkeyPatch.context() as held:
        held.setattr(Writer, "builds_read_side", False)
        write_past_the_read_side(SQLiteStore(str(path), writer="thread"), str(path), keys)
    yield path
    patch.undo()


def oracle_page(path: Path | list[tuple[Any, ...]], query: EventQuery) -> list[int]:
    """The seqs of the page ``query`` asks for, chosen in Python from every row of the table (or these rows)."""
    if isinstance(path, Path):
        conn = sqlite3.connect(path)
        rows = conn.execute(f"SELECT {ORACLE_COLUMNS} FROM semantic_events").fetchall()
        conn.close()
    else:
        rows = path
    chosen = [
        seq
        for seq, tenant_id, name, external_id, received_at in rows
        if tenant_id == query.tenant_id
        and (query.external_id is None or external_id == query.external_id)
        and (query.event_name is None or name == query.event_name)
        and (query.since is None or received_at >= query.since)
        and (query.until is None or received_at < query.until)
        and (query.cursor is None or (seq > query.cursor if query.order == "asc" else seq < query.cursor))
    ]
    return sorted(chosen, reverse=query.order == "desc")[: query.limit]


ORACLE_COLUMNS = "seq, tenant_id, event_name, external_id, received_at"
EVENT_QUERIES = [
    pytest.param(EventQuery("acme", external_id="u3", limit=5), id="user-newest"),
    pytest.param(EventQuery("acme", external_id="u3", order="asc", limit=5), id="user-oldest"),
    pytest.param(EventQuery("acme", external_id="u5", cursor=150, limit=4), id="user-before-cursor"),
    pytest.param(
        EventQuery("acme", external_id="u5", cursor=40, order="asc", limit=4), id="user-after-cursor"
    ),
    pytest.param(EventQuery("globex", external_id="u3", limit=50), id="user-every-event"),
    pytest.param(
        EventQuery("acme", external_id="u7", since=at(T0 + 10 * MINUTE), until=at(T0 + 50 * MINUTE + 9_000)),
        id="user-in-a-time-range",
    ),
    pytest.param(EventQuery("acme", external_id="u7", event_name="signed_up", limit=3), id="user-and-name"),
    pytest.param(EventQuery("acme", external_id="nobody"), id="unknown-user"),
    pytest.param(EventQuery("acme", event_name="signed_up", limit=7), id="name-newest"),
    pytest.param(EventQuery("acme", event_name="home", limit=3), id="rare-name"),
    pytest.param(
        EventQuery("acme", event_name="signed_up", cursor=100, order="asc", limit=6), id="name-after-cursor"
    ),
    pytest.param(
        EventQuery("acme", event_name="order_completed", cursor=200, limit=6), id="name-before-cursor"
    ),
    pytest.param(
        EventQuery(
            "globex", event_name="page_viewed", since=at(T0 + 20 * MINUTE), until=at(T0 + 40 * MINUTE)
        ),
        id="name-in-a-time-range",
    ),
    pytest.param(EventQuery("acme", event_name="signed_up", limit=200), id="name-across-hours"),
    pytest.param(
        EventQuery("acme", event_name="page_viewed", order="asc", limit=60), id="name-across-hours-oldest"
    ),
    pytest.param(EventQuery("acme", event_name="no_such_event"), id="unknown-name"),
    pytest.param(
        EventQuery("acme", since=at(T0 + 10 * MINUTE + 500), until=at(T0 + 20 * MINUTE), limit=10),
        id="time-range",
    ),
    pytest.param(
        EventQuery("acme", since=at(T0 + 10 * MINUTE), until=at(T0 + 20 * MINUTE), order="asc", limit=10),
        id="time-range-oldest",
    ),
]


def read_page(path: Path, query: EventQuery) -> Any:
    reader = SQLiteReader(str(path))
    try:
        return reader.events(query)
    finally:
        reader.close()


@pytest.fixture(scope="module")
def indexed_alone(indexed: Path) -> Path:
    """The same database copied without its users file: names go through the rollups, users through the table."""
    alone = indexed.parent / "alone" / "drengr.db"
    alone.parent.mkdir()
    source, copy = sqlite3.connect(indexed), sqlite3.connect(alone)
    source.backup(copy)
    source.close(), copy.close()
    return alone


@pytest.mark.parametrize("query", EVENT_QUERIES)
@pytest.mark.parametrize("users_file", ["with-users-file", "without"])
def test_filtered_pages_equal_the_rows_chosen_one_by_one(
    indexed: Path, indexed_alone: Path, query: EventQuery, users_file: str
) -> None:
    path = indexed if users_file == "with-users-file" else indexed_alone
    assert Path(users_path(str(path))).exists() == (users_file == "with-users-file")
    page = read_page(path, query)
    expected = oracle_page(indexed, query)
    assert [event["seq"] for event in page.events] == expected
    if query.external_id == "u3" and query.tenant_id == "acme":
        assert expected  # the table has what the query looks for
    if len(expected) == query.limit:
        assert page.next_cursor == expected[-1]


@pytest.mark.parametrize("order", ORDERS)
def test_a_users_page_joins_the_rows_past_the_index_to_those_in_it(indexed: Path, order: str) -> None:
    conn = sqlite3.connect(indexed)
    tenant_id, user = conn.execute(
        "SELECT tenant_id, external_id FROM semantic_events WHERE external_id IS NOT NULL ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    conn.close()
    query = EventQuery(tenant_id, external_id=user, order=order, limit=100)
    page = read_page(indexed, query)
    expected = oracle_page(indexed, query)
    assert len(expected) > 5
    assert [event["seq"] for event in page.events] == expected


def test_the_builder_indexes_users_and_reads_use_the_index(indexed: Path) -> None:
    conn = sqlite3.connect(indexed)
    conn.execute("ATTACH DATABASE ? AS users", (users_path(str(indexed)),))
    top = conn.execute("SELECT max(seq) FROM semantic_events").fetchone()[0]
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    users_meta = dict(conn.execute("SELECT key, value FROM users.meta").fetchall())
    # Every row before the builder was held back is in the read side (the store caught up as it
    # closed); the 40 rows after it are not.
    built = int(meta["read_side_seq"])
    assert built == int(users_meta["users_seq"]) == top - 40
    assert users_meta["database_id"] == meta["database_id"]
    assert_users_file_as_scanned(conn, built, BLOCK_BITS)
    assert conn.execute("SELECT sum(events) FROM event_rollups").fetchone()[0] == built
    conn.close()
    reader = SQLiteReader(str(indexed))
    try:
        statements: list[str] = []
        reader._conn().set_trace_callback(statements.append)
        assert reader.events(EventQuery("acme", external_id="u3", order="asc", limit=3)).events
        assert any("FROM users.user_seqs" in sql for sql in statements)
        # No statement on the events reads them without a bound on seq (a walk through the table).
        reads = [sql for sql in statements if "FROM semantic_events" in sql and "external_id =" in sql]
        assert reads and all("seq IN (" in sql or "seq >=" in sql for sql in reads)
        statements.clear()
        assert reader.events(EventQuery("acme", event_name="signed_up", order="asc", limit=3)).events
        assert any("FROM users.name_blocks" in sql for sql in statements)
        reads = [sql for sql in statements if "FROM semantic_events" in sql and "event_name =" in sql]
        assert reads and all("seq >=" in sql and "seq <=" in sql for sql in reads)
    finally:
        reader.close()


def test_without_its_users_file_a_name_is_found_through_the_rollups(indexed_alone: Path) -> None:
    reader = SQLiteReader(str(indexed_alone))
    try:
        statements: list[str] = []
        reader._conn().set_trace_callback(statements.append)
        assert reader.events(EventQuery("acme", event_name="signed_up", order="asc", limit=3)).events
        assert any("FROM hourly_event_rollups" in sql for sql in statements)
    finally:
        reader.close()


@pytest.mark.parametrize("query", QUERIES)
def test_stats_count_the_rows_past_the_read_side(indexed: Path, query: StatsQuery) -> None:
    """Stats on a table whose newest rows the builder has not counted yet: the same as the scan."""
    assert_file_stats_as_scanned(indexed, query)


def test_the_distinct_users_query_counts_every_user_of_a_day(filled: Path) -> None:
    """The Datasette query on the users file, once the builder has caught up: as counted one by one."""
    import json

    metadata = json.loads((SRC / "drengr" / "datasette.json").read_text())
    sql = metadata["databases"]["drengr-users"]["queries"]["distinct_users"]["sql"]
    users = sqlite3.connect(users_path(str(filled)))
    conn = sqlite3.connect(filled)
    try:
        got = users.execute(sql.replace("'now'", f"'{at(T0)[:19]}'")).fetchall()
        expected = conn.execute(
            "SELECT tenant_id, substr(received_at, 1, 10) AS day, count(DISTINCT external_id) FROM semantic_events "
            "WHERE external_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    finally:
        users.close()
        conn.close()
    assert got == expected and len(expected) >= 2


def test_postgresql_pages_and_stats_equal_the_rows_chosen_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same pages on PostgreSQL (through user_index and name_blocks) and the same stats,
    with the newest 40 rows past the read side (its builder held back)."""
    from drengr.store import rollups
    from drengr.store.postgres import PostgresStore
    from drengr.store.postgres import store as pg_store
    from drengr.store.postgres.statements import _build_step_sql
    from drengr.store.reader import events as reader_events

    from .support import postgres as pg

    # Name blocks of 16 rows, built and read, so that a page crosses several.
    monkeypatch.setattr(pg_store, "_BUILD_STEP", _build_step_sql(BLOCK_BITS))
    monkeypatch.setattr(pg_store, "_BUILD_STEP_AGAIN", _build_step_sql(BLOCK_BITS, new=False))
    monkeypatch.setattr(rollups, "NAME_BLOCK_BITS", BLOCK_BITS)
    monkeypatch.setattr(reader_events, "NAME_BLOCKS_AT_ONCE", 2)
    with pg.fresh_schema() as dsn:
        schema = pg.query(dsn, "SELECT current_schema()")[0][0]
        uri = pg.with_schema(pg.server_dsn(), schema)
        keys = fill(uri, "postgresql")
        monkeypatch.setattr(PostgresStore, "builds_read_side", False)
        write_past_the_read_side(open_store(uri), uri, keys)
        rows = [
            (int(seq), *rest) for seq, *rest in pg.query(dsn, f"SELECT {ORACLE_COLUMNS} FROM semantic_events")
        ]
        built = int(pg.query(dsn, "SELECT value FROM drengr_meta WHERE key = 'read_side_seq'")[0][0])
        assert built == max(row[0] for row in rows) - 40
        assert sorted(pg.query(dsn, "SELECT * FROM name_blocks")) == sorted(
            pg.query(
                dsn,
                "SELECT tenant_id, event_name, seq >> %s, min(seq), max(seq) FROM semantic_events "
                "WHERE seq <= %s GROUP BY 1, 2, 3",
                (BLOCK_BITS, built),
            )
        )
        reader = PostgresReader(uri)
        try:
            for query in [p.values[0] for p in EVENT_QUERIES]:
                page = reader.events(query)
                assert [event["seq"] for event in page.events] == oracle_page(rows, query), query
            for query in [p.values[0] for p in QUERIES]:
                assert_stats_as_scanned(reader, query)
        finally:
            reader.close()
