"""docs/mapping.md "Storage and durability" and the daily cap, against real SQLite files."""

import contextlib
import fcntl
import importlib.util
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

import pytest

from drengr.core.limits import DEFAULT_DEDUP_WINDOW_DAYS, MS_PER_DAY
from drengr.core.outcome import StoreOutcome
from drengr.store import SQLiteStore, StoreError
from drengr.store.base import Job
from drengr.store.sqlite import WRITERS
from drengr.store.sqlite.writer import insert_events

from .support.stores import DAY0, Clock, row

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)


@pytest.fixture(params=WRITERS)
def writer(request: pytest.FixtureRequest) -> str:
    """Where SQLite writes run: a thread of this process, or a writer process of their own."""
    return str(request.param)


@pytest.fixture
def store(db_path, writer):
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer=writer)
    yield store
    store.close()


def count(path: Path, where: str = "1") -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT count(*) FROM semantic_events WHERE {where}").fetchone()[0]
    finally:
        conn.close()


def test_database_is_in_wal_mode(store, db_path):
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.parametrize("durability, level", [("full", 2), ("normal", 1)])
def test_durability_sets_synchronous(db_path, durability, level):
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), durability=durability)
    conn = store._connect()  # noqa: SLF001 - the writer's connections are made here
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
    conn.close()
    store.close()


def test_a_version_1_file_gets_the_library_column(db_path):
    """A file made before `library` existed: opening it adds the column; old rows read NULL."""
    SQLiteStore(str(db_path), clock=Clock(DAY0)).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("ALTER TABLE semantic_events DROP COLUMN library")
    conn.execute("ALTER TABLE tenants DROP COLUMN pii_allow")  # version 3's
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.execute(
        "INSERT INTO semantic_events (tenant_id, event_id, event_name, event_type, install_id, occurred_at,"
        " received_at, dims, measures) VALUES ('acme', 'old', 'e', 'track', 'u', 'x', 'x', '{}', '{}')"
    )
    conn.close()
    store = SQLiteStore(str(db_path), clock=Clock(DAY0))
    try:
        assert store.write("acme", [row("new")], DAY0).stored == 1
    finally:
        store.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT event_id, library FROM semantic_events ORDER BY seq").fetchall() == [
        ("old", None), ("new", "analytics-python 2.4.0")
    ]  # fmt: skip
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("5",)
    assert "pii_allow" in {column[1] for column in conn.execute("PRAGMA table_info(tenants)")}
    conn.close()


def test_dedup_survives_restart(db_path, writer):
    first = SQLiteStore(str(db_path), clock=Clock(DAY0), writer=writer)
    first.write("acme", [row("a")], DAY0)
    first.close()
    second = SQLiteStore(str(db_path), clock=Clock(DAY0), writer=writer)
    assert second.write("acme", [row("a")], DAY0 + 1000).stored == 0
    second.close()
    assert count(db_path) == 1


def test_old_generations_are_dropped_whole(db_path):
    """Three weeks pass (by the wall clock and by the monotonic one): the old ids are forgotten."""
    clock = Clock(DAY0)
    store = SQLiteStore(str(db_path), clock=clock, elapsed=lambda: clock.ms / 1000)
    store.write("acme", [row(str(i)) for i in range(100)], DAY0)
    clock.ms = DAY0 + 21 * MS_PER_DAY
    store.write("acme", [row("b")], clock.ms)
    assert [len(index) for index in store._committer._window] == [1]  # noqa: SLF001 - memory stays bounded
    # Beyond the window a repeat may be stored again (docs/mapping.md "Storage and durability").
    assert store.write("acme", [row("0")], clock.ms).stored == 1
    store.close()


@pytest.mark.parametrize("writer", WRITERS)
def test_a_one_day_window_catches_a_repeat_for_a_day_then_forgets_it(db_path, writer):
    """--dedup-window-days 1: generations a day long. A repeat a day after the first copy is caught
    (in memory and after a restart); three days on (by both clocks), the old ids are dropped whole and
    a repeat is stored again; the window holds one generation's ids, not a week's."""
    clock = Clock(DAY0 + MS_PER_DAY - 1)  # the last millisecond of a day: its generation closes next
    store = SQLiteStore(
        str(db_path), clock=clock, elapsed=lambda: clock.ms / 1000, writer=writer, dedup_window_days=1
    )
    try:
        assert store.write("acme", [row(str(i)) for i in range(100)], clock.ms).stored == 100
        clock.ms += MS_PER_DAY  # a day later, in the next generation
        assert store.write("acme", [row("0"), row("b")], clock.ms).stored == 1
    finally:
        store.close()
    again = SQLiteStore(
        str(db_path), clock=clock, elapsed=lambda: clock.ms / 1000, writer=writer, dedup_window_days=1
    )
    try:
        assert again.write("acme", [row("1")], clock.ms).stored == 0
        clock.ms += 2 * MS_PER_DAY
        assert again.write("acme", [row("c")], clock.ms).stored == 1
        if writer == "thread":  # its monotonic clock is the test's: two days passed
            assert [len(index) for index in again._committer._window] == [1]  # noqa: SLF001 - only "c" is held
            assert again.write("acme", [row("1")], clock.ms).stored == 1  # beyond the window: stored again
        else:  # the writer process's monotonic clock is its own: to it the wall clock jumped, which drops nothing
            assert again.write("acme", [row("1")], clock.ms).duplicates == 1
    finally:
        again.close()


@pytest.mark.parametrize("days", [1, 7])
def test_an_idle_server_keeps_ids_for_the_whole_window_across_a_boundary(db_path, days):
    """The last write an hour before a generation's boundary, then nothing for most of a window (a
    night, for a one-day window): the first write after closes that generation, and its ids, younger
    than the window, are still caught; at the next boundary, a window after its last row, it goes."""
    hour, window_ms = 3_600_000, days * MS_PER_DAY
    boundary = (DAY0 // window_ms + 1) * window_ms
    clock = Clock(boundary - hour)
    store = SQLiteStore(str(db_path), clock=clock, elapsed=lambda: clock.ms / 1000, dedup_window_days=days)
    try:
        assert store.write("acme", [row("a")], clock.ms).stored == 1
        clock.ms = boundary + window_ms - 3 * hour  # idle until then: this write closes "a"'s generation
        assert store.write("acme", [row("b")], clock.ms).stored == 1
        clock.ms += hour  # "a" is a window less an hour old
        assert store.write("acme", [row("a")], clock.ms).duplicates == 1
        clock.ms = boundary + window_ms + 60_000  # the next boundary: "a" is a window and an hour old
        assert store.write("acme", [row("c")], clock.ms).stored == 1
        assert [len(index) for index in store._committer._window] == [1, 1]  # noqa: SLF001 - "c", then "b"
        assert store.write("acme", [row("a")], clock.ms).stored == 1  # beyond the window: stored again
    finally:
        store.close()


def test_fingerprint_collisions_never_drop_a_distinct_event(db_path, monkeypatch):
    """Every id gets the same fingerprint: dedup must still be exact (hits are verified)."""
    import drengr.store.sqlite.writer as sqlite_writer

    monkeypatch.setattr(
        sqlite_writer, "fingerprints", lambda tenant, rows, column: array("Q", [7] * len(rows))
    )
    monkeypatch.setattr(sqlite_writer, "fingerprint", lambda tenant, event_id: 7)
    store = SQLiteStore(str(db_path), clock=Clock(DAY0))
    assert store.write("acme", [row("a"), row("b")], DAY0).stored == 2
    assert store.write("acme", [row("c"), row("a"), row("b")], DAY0).stored == 1
    store.close()
    restarted = SQLiteStore(str(db_path), clock=Clock(DAY0))
    assert restarted.write("acme", [row("a"), row("d")], DAY0).stored == 1
    restarted.close()
    assert count(db_path) == 4


def test_window_sees_rows_another_process_wrote(db_path):
    one, two = SQLiteStore(str(db_path), clock=Clock(DAY0)), SQLiteStore(str(db_path), clock=Clock(DAY0))
    assert one.write("acme", [row("a")], DAY0).stored == 1  # `one` loads its window here
    assert two.write("acme", [row("b")], DAY0).stored == 1
    assert one.write("acme", [row("b"), row("c")], DAY0).stored == 1  # caught up before writing
    assert two.write("acme", [row("a"), row("c")], DAY0).stored == 0
    one.close()
    two.close()


def window_file(db_path: Path) -> Path:
    return Path(f"{db_path}-window")


def reopened(
    db_path: Path, writer: str = "thread", clock_ms: int = DAY0, window_days: int = DEFAULT_DEDUP_WINDOW_DAYS
) -> SQLiteStore:
    return SQLiteStore(str(db_path), clock=Clock(clock_ms), writer=writer, dedup_window_days=window_days)


def test_a_window_file_from_before_the_length_setting_is_read_as_seven_days(db_path):
    """A file written before --dedup-window-days existed has no length in its header: 7 days, the
    only length then, so a 7-day writer reads it and a 1-day writer builds its window from the table."""
    from drengr.store.sqlite import window_file as window_files

    store = reopened(db_path)
    store.write("acme", [row("a")], DAY0)
    store.close()
    loaded = window_files.load(str(db_path))
    assert loaded is not None
    header, indexes = loaded
    del header["window_days"]
    window_files.save(str(db_path), header, indexes)
    for days, from_file in ((1, False), (7, True)):
        again = reopened(db_path, window_days=days)
        try:
            assert again.write("acme", [row("a")], DAY0).duplicates == 1
            assert again._committer.window_from_file is from_file  # noqa: SLF001
        finally:
            again._committer.save_window = lambda: None  # type: ignore[method-assign]  # the old file stays
            again.close()


def test_a_restart_reads_the_window_from_its_file(db_path, writer):
    """A writer that stops writes its window beside the database; the next one starts from it, not from
    the table, and every id in it is still caught."""
    store = reopened(db_path, writer)
    assert store.write("acme", [row("a"), row("b")], DAY0).stored == 2
    store.close()
    assert window_file(db_path).stat().st_size > 0
    again = reopened(db_path, writer)
    try:
        outcome = again.write("acme", [row("a"), row("b"), row("c")], DAY0)
        assert (outcome.stored, outcome.duplicates) == (1, 2)
        if writer == "thread":  # the writer process's Writer is in its own process
            assert again._committer.window_from_file  # noqa: SLF001
    finally:
        again.close()
    assert count(db_path) == 3


def test_rows_written_after_the_window_file_are_read_from_the_table(db_path):
    """Another process's rows after the file (one that was killed, say, and never wrote its own)."""
    store = reopened(db_path)
    store.write("acme", [row("a")], DAY0)
    store.close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    insert_events(conn, [row("b"), row("c", tenant="other")])
    conn.close()
    again = reopened(db_path)
    try:
        assert again.write("acme", [row("a"), row("b"), row("d")], DAY0).stored == 1
        assert again.write("other", [row("c", tenant="other")], DAY0).stored == 0
        assert again._committer.window_from_file  # noqa: SLF001
    finally:
        again.close()


def _another_database(db_path: Path) -> None:
    other = db_path.with_name("other.db")
    SQLiteStore(str(other), clock=Clock(DAY0)).close()
    os.replace(window_file(db_path), window_file(other))
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db_path}{suffix}").exists():
            os.replace(f"{db_path}{suffix}", f"{other}.moved{suffix}")
    os.replace(other, db_path)  # a database of its own id, the old one's window file beside it
    os.replace(window_file(other), window_file(db_path))


def _backup_restored(db_path: Path) -> None:
    # The database as a copy taken before "x" was written (and before the window file), then a
    # different row written to it: the file's last row is no longer there.
    restored = db_path.with_name("restored.db")
    os.replace(restored, db_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    insert_events(conn, [row("y")])
    conn.close()


def _damaged(db_path: Path) -> None:
    data = bytearray(window_file(db_path).read_bytes())
    data[len(data) // 2] ^= 0x40
    window_file(db_path).write_bytes(bytes(data))


def _cut_short(db_path: Path) -> None:
    data = window_file(db_path).read_bytes()
    window_file(db_path).write_bytes(data[: len(data) - 100])


@pytest.mark.parametrize(
    "change, clock_ms, window_days",
    [
        (_another_database, DAY0, 7),
        (_backup_restored, DAY0, 7),
        (_damaged, DAY0, 7),
        (_cut_short, DAY0, 7),
        (lambda db_path: None, DAY0 + 7 * MS_PER_DAY, 7),
        (lambda db_path: None, DAY0, 3),
    ],
    ids=[
        "another database",
        "a backup restored",
        "damaged",
        "cut short",
        "the next generation",
        "another length",
    ],
)
def test_a_window_file_that_does_not_fit_is_not_used(db_path, change, clock_ms, window_days):
    """The window is built from the table then, and dedup stays exact."""
    store = reopened(db_path)
    store.write("acme", [row("a")], DAY0)
    store.close()
    with sqlite3.connect(db_path) as source, sqlite3.connect(db_path.with_name("restored.db")) as copy:
        source.backup(copy)  # a backup, for the case that restores one
    store = reopened(db_path)
    store.write("acme", [row("x")], DAY0)
    store.close()
    change(db_path)
    again = reopened(db_path, clock_ms=clock_ms, window_days=window_days)
    try:
        stored = {event_id: count(db_path, f"event_id = '{event_id}'") for event_id in ("a", "x", "y")}
        outcome = again.write("acme", [row("a"), row("x"), row("y"), row("new")], clock_ms)
        assert outcome.stored == 1 + sum(1 for n in stored.values() if n == 0)  # "new", and any id not there
        assert not again._committer.window_from_file  # noqa: SLF001
    finally:
        again.close()


def test_a_dead_writer_process_fails_its_group_and_is_replaced(db_path):
    """The writer process killed: that write fails (the client gets 502 and resends), the next
    starts a new process, and what the dead one had committed is caught as a duplicate."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer="process")
    try:
        assert store.write("acme", [row("a"), row("b")], DAY0).stored == 2
        first = store.writer_pid
        assert first is not None and first != os.getpid()
        os.kill(first, signal.SIGKILL)
        try:  # sent before the death is noticed: fails (502); after: a new writer process takes it
            landed = store.write("acme", [row("c")], DAY0).stored
        except StoreError as error:
            assert "writer process failed" in str(error)
            landed = 0
        again = store.write("acme", [row("a"), row("b"), row("c")], DAY0)  # the client's resends
        assert (again.stored, again.duplicates) == (1 - landed, 2 + landed)
        assert store.writer_pid not in (None, first)
        assert store.writable()
    finally:
        store.close()
    assert count(db_path) == 3


def test_a_writer_process_that_died_idle_costs_no_request_a_502(db_path):
    """Killed between jobs (the OOM killer, an operator): the next job finds its socket closed
    before the child had any of it, and a new writer process takes it."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer="process")
    try:
        assert store.write("acme", [row("a")], DAY0).stored == 1
        first = store.writer_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline  # dead, not yet reaped: its sockets are closed
            time.sleep(0.01)
        assert store.write("acme", [row("a"), row("b")], DAY0) == StoreOutcome(1, duplicates=1)
        assert store.writer_pid not in (None, first)
    finally:
        store.close()
    assert count(db_path) == 2


@pytest.mark.parametrize("writer", ["process", "shared"])
def test_threads_that_all_meet_a_writer_killed_idle_all_land(db_path, writer):
    """Sixteen threads write at once right after the writer was killed idle: the first to find it
    gone replaces it while the others hold the dead one (or a socket closed under them by the
    replacement). None of their jobs was in it, so none fails: each goes to the new writer."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer=writer)
    failures: list[BaseException] = []

    def write(tag: str) -> None:
        try:
            store.write("acme", [row(tag)], DAY0)
        except StoreError as error:
            failures.append(error)

    try:
        for round_ in range(3):
            for tag in (f"{round_}-first", f"{round_}-after"):
                start = threading.Barrier(16)

                def at_once(i: int, tag: str = tag, start: threading.Barrier = start) -> None:
                    start.wait()
                    write(f"{tag}-{i}")

                threads = [threading.Thread(target=at_once, args=(i,)) for i in range(16)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=60)
                if tag.endswith("first"):  # every thread has written once: killed idle
                    dead = store.writer_pid or 0
                    os.kill(dead, signal.SIGKILL)
                    deadline = time.monotonic() + 10
                    while Path(f"/proc/{dead}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                        assert time.monotonic() < deadline
                        time.sleep(0.01)
    finally:
        store.close()
    assert failures == []
    assert count(db_path) == 3 * 2 * 16


def test_a_group_in_flight_when_the_writer_process_dies_fails(db_path):
    """The child dies holding a group (blocked on a lock): that write fails, never a false 200."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer="process", busy_timeout_ms=30_000)
    try:
        store.write("acme", [row("a")], DAY0)
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        errors: list[BaseException] = []

        def send() -> None:
            try:
                store.write("acme", [row("b")], DAY0)
            except StoreError as error:
                errors.append(error)

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 10
        while store._queue.qsize() and time.monotonic() < deadline:  # noqa: SLF001 - sent to the child
            time.sleep(0.01)
        time.sleep(0.2)  # the child is in BEGIN IMMEDIATE, waiting for the holder
        os.kill(store.writer_pid or 0, signal.SIGKILL)
        sender.join(timeout=30)
        holder.execute("ROLLBACK")
        holder.close()
        assert len(errors) == 1 and "writer process failed" in str(errors[0])
        assert store.write("acme", [row("b")], DAY0).stored == 1  # the resend, in a new writer process
    finally:
        store.close()
    assert count(db_path) == 2


def test_a_writer_builds_its_first_window_without_holding_up_the_other_writers(db_path):
    """A second writer of the file (a gunicorn worker's) builds its dedup window before its first
    turn: the first writer goes on writing meanwhile, and what it writes then is still caught."""
    first = SQLiteStore(str(db_path), clock=Clock(DAY0), busy_timeout_ms=2_000)
    second = SQLiteStore(str(db_path), clock=Clock(DAY0), busy_timeout_ms=30_000)
    loading, go_on = threading.Event(), threading.Event()
    load = second._committer._load_window  # noqa: SLF001

    def slow_load(conn: sqlite3.Connection, now_ms: int) -> None:
        load(conn, now_ms)
        loading.set()  # the window holds the rows so far; writing the next ones must not wait
        assert go_on.wait(10)

    second._committer._load_window = slow_load  # type: ignore[method-assign]  # noqa: SLF001
    outcomes: list[StoreOutcome] = []
    try:
        first.write("acme", [row(str(i)) for i in range(100)], DAY0)
        writing = threading.Thread(
            target=lambda: outcomes.append(second.write("acme", [row("x"), row("y")], DAY0))
        )
        writing.start()
        assert loading.wait(10)
        try:
            assert first.write("acme", [row("x")], DAY0) == StoreOutcome(1)  # within its 2 s: not held up
        finally:
            go_on.set()
        writing.join(timeout=30)
        assert outcomes == [StoreOutcome(1, duplicates=1)]  # "x", written meanwhile, is caught
    finally:
        go_on.set()
        first.close()
        second.close()
    assert count(db_path) == 102


def test_a_job_larger_than_its_socket_buffer_goes_in_parts(db_path):
    """Two writes of 6,000 rows with long dims (several MB each), through the writer process: each
    message is sent as the child makes room, and both are stored whole, the second beside a small one."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer="process")
    big = [(*row(f"big-{i}")[:8], json.dumps({"note": f"{i:300}"}), *row("")[9:]) for i in range(6_000)]
    try:
        assert store.write("acme", big[:3_000] + big[:3_000], DAY0) == StoreOutcome(3_000, duplicates=3_000)
        small = threading.Thread(target=store.write, args=("acme", [row("small")], DAY0))
        small.start()
        assert store.write("acme", big[3_000:] + big[3_000:], DAY0) == StoreOutcome(3_000, duplicates=3_000)
        small.join(timeout=30)
    finally:
        store.close()
    assert count(db_path) == 6_001


def test_a_late_answer_is_not_taken_for_the_next_job(db_path):
    """A job its request gave up on is answered late on the thread's socket: the thread's next job
    takes its own answer, not that one."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer="process", busy_timeout_ms=300)
    try:
        started = time.monotonic()
        while True:  # this thread's socket, and a warm child
            try:
                store.write("acme", [row("a")], DAY0)
                break
            except StoreError:  # the child's start (a fresh interpreter) took more than 300 ms: again
                assert time.monotonic() - started < 30  # a hang guard
        pid = store.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreError, match="did not answer"):
                store.write("acme", [row("b"), row("c")], DAY0)
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.3)  # the child answers the abandoned job (too late: not written) meanwhile
        assert store.write("acme", [row("d")], DAY0) == StoreOutcome(1)
        assert store.write("acme", [row("b"), row("c")], DAY0) == StoreOutcome(2)  # the resend
        assert store.writer_pid == pid  # slow, not dead: never replaced
    finally:
        store.close()
    assert count(db_path) == 4


def test_the_sockets_of_ended_threads_are_closed_in_the_writer_process(db_path):
    """Each thread that writes has a socket to the writer process; once the thread ends, the child
    closes its end: 40 threads that wrote and ended leave no descriptors behind."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer="process")
    try:
        store.write("acme", [row("first")], DAY0)
        pid = store.writer_pid
        assert pid is not None
        assert _sockets(pid) == 2  # the store's control socket, this thread's
        for i in range(40):
            thread = threading.Thread(target=store.write, args=("acme", [row(f"t{i}")], DAY0))
            thread.start()
            thread.join()
        deadline = time.monotonic() + 10
        while _sockets(pid) > 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _sockets(pid) == 2
        assert store.write("acme", [row("last")], DAY0) == StoreOutcome(1)
    finally:
        store.close()
    assert count(db_path) == 42


def _sockets(pid: int) -> int:
    """The sockets a process holds open."""
    folder = Path(f"/proc/{pid}/fd")
    found = 0
    for fd in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            found += os.readlink(fd).startswith("socket:")
    return found


def test_the_writer_process_ends_with_the_store(db_path):
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer="process")
    store.write("acme", [row("a")], DAY0)
    pid = store.writer_pid
    assert pid is not None
    store.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # joined: gone, not a zombie


def _writer_process(path: str, worker: int, batches: int) -> None:
    store = SQLiteStore(path)
    for b in range(batches):
        store.write("acme", [row(f"w{worker}-b{b}-{i}") for i in range(50)], DAY0)
        store.write("acme", [row(f"shared-{b}-{i}") for i in range(10)], DAY0)  # every process sends these
    store.close()


def test_several_processes_share_one_file(db_path):
    """BEGIN IMMEDIATE + busy timeout: no "database is locked", every row once, dedup across processes."""
    SQLiteStore(str(db_path), clock=Clock(DAY0)).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer_process, args=(str(db_path), w, 20)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert count(db_path, "event_id LIKE 'w%'") == 4 * 20 * 50
    assert count(db_path, "event_id LIKE 'shared-%'") == 20 * 10
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def hold_writer_lock(db_path: Path) -> int:
    """Another writer's transaction, as far as the writer lock goes: an fd holding it (close to release)."""
    fd = os.open(f"{db_path}-writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_writer_waits_its_turn_at_the_writer_lock(db_path, writer):
    """Writers of one file queue at an OS lock (no SQLite busy-handler sleeps): each write waits for its turn."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer=writer, busy_timeout_ms=10_000)
    try:
        assert store.write("acme", [row("first")], DAY0).stored == 1
        held = hold_writer_lock(db_path)
        outcome: list[StoreOutcome] = []
        waiting = threading.Thread(target=lambda: outcome.append(store.write("acme", [row("second")], DAY0)))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and count(db_path) == 1  # its turn has not come
        os.close(held)  # the other writer's transaction ends
        waiting.join(timeout=10)
        assert outcome == [StoreOutcome(stored=1)] and count(db_path) == 2
    finally:
        store.close()


def resend_until_answered(store: SQLiteStore, message_id: str, limit: float = 10.0) -> StoreOutcome:
    """One row written as a client would: resent after a 502 until it is answered. On a loaded
    machine the writer's catch-up after a lock is let go can outlast a 300 ms busy timeout; a
    resend of a write that was committed late is then a duplicate, and the outcome says so."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return store.write("acme", [row(message_id)], DAY0)
        except StoreError:
            if time.monotonic() > deadline:
                raise


def test_a_writer_lock_held_past_the_busy_timeout_fails_the_write_then_recovers(db_path, writer):
    store = SQLiteStore(str(db_path), clock=Clock(DAY0), writer=writer, busy_timeout_ms=300)
    try:
        held = hold_writer_lock(db_path)
        with pytest.raises(StoreError):
            store.write("acme", [row("a")], DAY0)  # 502, as a busy SQLite lock would give
        with pytest.raises(StoreError):
            store.write("acme", [row("b")], DAY0)  # its helper is still queued: this one waits on it
        os.close(held)
        # stored, or a duplicate where a try that timed out was committed late
        once = (StoreOutcome(stored=1), StoreOutcome(stored=0, duplicates=1))
        assert resend_until_answered(store, "c") in once
        assert count(db_path) == 1  # "a" and "b" failed: neither was stored
        assert resend_until_answered(store, "a") in once
        assert count(db_path) == 2
        free = os.open(f"{db_path}-writer.lock", os.O_RDWR)
        fcntl.flock(free, fcntl.LOCK_EX | fcntl.LOCK_NB)  # given back: nothing of ours still holds it
        os.close(free)
    finally:
        store.close()


def _usage(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT coalesce(sum(events), 0) FROM daily_usage").fetchone()[0]
    finally:
        conn.close()


def test_a_group_is_deduplicated_metered_and_indexed_as_its_jobs_arrived(db_path):
    """Three jobs in one transaction: repeats across jobs, the cap in arrival order, and each job's
    fingerprints pointing at its own rows (a repeat of any of them later is caught)."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0))
    store.set_daily_cap("acme", 5)
    jobs = [
        Job("acme", [row("1"), row("2")], DAY0),
        Job("globex", [row("1", "globex"), row("9", "globex")], DAY0),
        Job("acme", [row("2"), row("3"), row("4"), row("5"), row("6")], DAY0),
    ]
    conn = store._committer.commit_jobs(None, jobs)  # noqa: SLF001 - one group, as the writer would take it
    assert conn is not None
    conn.close()
    assert [job.outcome for job in jobs] == [
        StoreOutcome(stored=2), StoreOutcome(stored=2), StoreOutcome(stored=3, duplicates=1, over_cap=1)
    ]  # fmt: skip
    assert store.group_commits == 1
    assert count(db_path) == 7
    assert _usage(db_path) == 7
    again = store.write("acme", [row(str(i)) for i in range(1, 7)], DAY0)
    assert again == StoreOutcome(stored=0, duplicates=5, over_cap=1)
    assert store.write("globex", [row("9", "globex")], DAY0).duplicates == 1
    store.close()


def test_a_job_that_cannot_be_written_fails_alone(db_path):
    """A statement fails inside a group: the group is written again job by job, and only that job
    fails; the others are stored once, repeats across them and the cap still hold."""
    store = SQLiteStore(str(db_path), clock=Clock(DAY0))
    store.set_daily_cap("acme", 3)
    broken = ("acme", "broken", None, *row("x")[3:])  # event_name NULL: the INSERT fails
    jobs = [
        Job("acme", [row("1"), row("2")], DAY0),
        Job("acme", [broken], DAY0),
        Job("acme", [row("2"), row("3"), row("4")], DAY0),
    ]
    conn = store._committer.commit_jobs(None, jobs)  # noqa: SLF001
    assert conn is not None
    conn.close()
    assert jobs[0].outcome == StoreOutcome(stored=2)
    assert jobs[1].outcome is None and isinstance(jobs[1].error, sqlite3.IntegrityError)
    assert jobs[2].outcome == StoreOutcome(stored=1, duplicates=1, over_cap=1)
    assert count(db_path) == 3 and count(db_path, "event_id = 'broken'") == 0
    assert _usage(db_path) == 3  # the failed job's metering was rolled back with it
    store.close()


@pytest.mark.parametrize("writer", WRITERS)
def test_checkpoints_run_beside_the_writer_and_the_log_starts_over(tmp_path, writer):
    """The writer no longer checkpoints (its auto-checkpoint waits for an 80 MB log): a background
    thread copies the WAL into the database as rows arrive, and restarts the log past 16 MB."""
    path = tmp_path / "ck.db"
    store = SQLiteStore(str(path), writer=writer)
    rows = 0
    for batch in range(150):
        store.write("acme", [row(f"{batch}-{i}-" + "x" * 400) for i in range(1_000)], DAY0)
        rows += 1_000
    deadline = time.monotonic() + 30
    while path.stat().st_size < 16 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.05)
    database, log = path.stat().st_size, Path(f"{path}-wal").stat().st_size
    store.close()
    assert count(path) == rows
    data = rows * 500  # each row holds at least ~500 bytes
    assert database >= 16 * 2**20, (database, log)  # copied in while the store was open
    assert log < data * 0.7, (database, log)  # the log started over instead of holding every row


@pytest.mark.skipif(
    importlib.util.find_spec("numpy") is None,
    reason="numpy is not installed here, so nothing could import it: runs wherever it is (the test extra brings it with pyarrow and pandas, as in CI)",
)
def test_the_server_does_not_load_numpy():
    """sqlite-utils would import numpy (~12 MB of the server's memory) when it is installed."""
    probe = "import sys, drengr.cli, drengr.web, drengr.store.sqlite; print('numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_window_file_left_half_written_by_a_killed_writer_is_removed(db_path):
    """A writer killed while it saved leaves its ``.partial`` file; the next save removes it (its
    process is gone), not one of a live process."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    abandoned = Path(f"{db_path}-window.{dead.stdout.strip()}.partial")
    live = Path(f"{db_path}-window.{os.getppid()}.partial")
    abandoned.write_bytes(b"half")
    live.write_bytes(b"half")
    store = reopened(db_path)
    store.write("acme", [row("a")], DAY0)
    store.close()
    assert not abandoned.exists() and live.exists()
    assert window_file(db_path).exists()


def test_a_window_file_whose_header_lies_about_its_size_is_not_read(db_path):
    """A damaged header (a table of 128 GB) neither fails the write nor is used: the window comes from the table."""
    store = reopened(db_path)
    store.write("acme", [row("a")], DAY0)
    store.close()
    data = window_file(db_path).read_bytes()
    magic_end = data.index(b"\n") + 1
    head_end = data.index(b"\n", magic_end) + 1
    header = json.loads(data[magic_end:head_end])
    # A table of 128 GB: a power of two, refused by its size.
    header["generations"][0]["table"]["capacity"] = 2**34
    window_file(db_path).write_bytes(data[:magic_end] + json.dumps(header).encode() + b"\n" + data[head_end:])
    again = reopened(db_path)
    try:
        assert again.write("acme", [row("a"), row("b")], DAY0).stored == 1
        assert not again._committer.window_from_file  # noqa: SLF001
    finally:
        again.close()
