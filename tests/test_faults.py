"""Faults of a real deployment, each with a real server, real senders and an ack ledger.

Senders behave as the SDKs do: a batch answered with anything but 200 (or not
answered) is sent again with the same messageIds until it is acknowledged.
Every test then checks the ledger against the rows: nothing acknowledged is
missing, nothing is stored twice. What clients saw is measured as the longest
outage — from the first failed answer after a success to the next success —
and printed (``-s``) for docs/failure-modes.md; only a generous hang guard is
asserted about time.

PostgreSQL faults (a restart under load, nginx in front of two nodes) live in
tests/test_postgres_faults.py; clock jumps in tests/test_clock_jumps.py.
"""

import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drengr.store import SQLiteStore, StoreError

from .support.disk import fill, small_tmpfs
from .support.faults import HANG_GUARD_SECONDS, Senders, assert_ledger, health, http_post, report
from .support.realserver import (
    INGEST_FAILED,
    Server,
    batch,
    create_db,
    event_id_counts,
    integrity,
    launch,
    no_stray_servers,  # noqa: F401 (an autouse fixture)
)

BUSY_TIMEOUT_MS = 1000  # the servers here give up on a stalled writer after this long


def writer_child(server: Server) -> int:
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not server.children():
        assert time.monotonic() < deadline, "hang guard: no writer process"
        time.sleep(0.02)
    (child,) = server.children()
    return child


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[Server]:
    db = tmp_path / "faults.db"
    server = launch(
        db, create_db(db), "--writer", "process", "--busy-timeout-ms", str(BUSY_TIMEOUT_MS),
        log_level="warning", log=tmp_path / "faults.log",
    )  # fmt: skip
    yield server
    if server.alive():
        assert server.stop() == 0
    assert integrity(db) == "ok"


# --------------------------------------------------------------------------- a stalled writer


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(20, id="small-batches"),
        # 400-event batches fill the socket to the stopped child: the sender that cannot hand its
        # job over in time kills it, and a new writer serves the rest of the stop.
        pytest.param(400, id="batches-that-fill-the-pipe"),
    ],
)
def test_a_stopped_writer_gives_502_and_an_unhealthy_health_then_recovers(
    sqlite_server: Server, size: int
) -> None:
    """SIGSTOP of the writer child: requests are answered (502) and /health says 503 while it is
    stopped, instead of hanging; after SIGCONT every batch lands once."""
    server = sqlite_server
    child = writer_child(server)
    health_during: list[int] = []
    with Senders(http_post(lambda: server), f"stop{size}", size=size) as senders:
        senders.wait_for_answers(40)
        os.kill(child, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            # Three busy timeouts: long enough that a request waiting on the writer would show.
            deadline = stopped_at + 3 * BUSY_TIMEOUT_MS / 1000
            while time.monotonic() < deadline:
                health_during.append(health(server))
                time.sleep(0.2)
        finally:
            resumed_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):  # killed as stalled: nothing to resume
                os.kill(child, signal.SIGCONT)
        senders.wait_for_answers(40)
    during = senders.ledger.answers_between(stopped_at, resumed_at)
    assert during and set(during) - {200} == {502}, f"while stopped, answers were {sorted(set(during))}"
    assert 503 in health_during and not set(health_during) - {200, 503}, health_during
    assert health(server) == 200
    counts = event_id_counts(server.db)
    assert_ledger(senders.ledger, counts)
    report(f"SIGSTOP of the writer child for 3 s ({size}-event batches)", senders.ledger, counts)


def test_a_writer_thread_that_hangs_in_its_commit_fails_its_requests_in_time(tmp_path: Path) -> None:
    """An fsync that hangs, on the thread writer: write() raises and writable() says False within
    the busy timeout; once the commit returns, writes go through and nothing late is written."""
    db = tmp_path / "hang.db"
    store = SQLiteStore(str(db), writer="thread", busy_timeout_ms=300)
    release = threading.Event()
    real_commit = store._committer._commit_group  # noqa: SLF001 - the commit is where an fsync would hang

    def hanging_commit(conn: sqlite3.Connection, jobs: list) -> None:
        assert release.wait(HANG_GUARD_SECONDS), "hang guard: never released"
        real_commit(conn, jobs)

    row = ("acme", "e", "e", "track", "u", "u", "2026-11-26T00:00:00.000Z", "2026-11-26T00:00:00.000Z",
           "{}", "{}", None)  # fmt: skip
    try:
        store.write("acme", [row[:1] + ("before",) + row[2:]], 0)
        store._committer._commit_group = hanging_commit  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="busy timeout"):
            store.write("acme", [row[:1] + ("during",) + row[2:]], 0)
        assert store.writable() is False
        release.set()
        store._committer._commit_group = real_commit  # type: ignore[method-assign]
        assert store.write("acme", [row[:1] + ("after",) + row[2:]], 0).stored == 1
        assert store.writable() is True
        # The resend: stored now, or a duplicate if the released commit wrote it after its 502.
        resent = store.write("acme", [row[:1] + ("during",) + row[2:]], 0)
        assert resent.stored + resent.duplicates == 1
    finally:
        release.set()
        store.close()
    assert event_id_counts(db) == {"before": 1, "during": 1, "after": 1}


def test_a_job_not_begun_by_its_deadline_is_not_written(tmp_path: Path) -> None:
    """Job B waits in the thread writer's queue behind a commit (of A) that hangs before its
    BEGIN until both requests have answered 502: a job whose request stopped waiting before the
    writer took the write lock for it is not written (its client resends)."""
    db = tmp_path / "late.db"
    store = SQLiteStore(str(db), writer="thread", busy_timeout_ms=300)
    entered, release = threading.Event(), threading.Event()
    real_commit = store._committer._commit_group  # noqa: SLF001 - where job A hangs, past its deadline check

    def hanging_commit(conn: sqlite3.Connection, jobs: list) -> None:
        entered.set()
        assert release.wait(HANG_GUARD_SECONDS), "hang guard: never released"
        real_commit(conn, jobs)

    def rows(event_id: str) -> list[tuple[Any, ...]]:
        return [("acme", event_id, "e", "track", "u", "u", "2026-11-26T00:00:00.000Z",
                 "2026-11-26T00:00:00.000Z", "{}", "{}", None)]  # fmt: skip

    errors: list[BaseException] = []

    def write_a() -> None:
        try:
            store.write("acme", rows("A"), 0)
        except StoreError as error:
            errors.append(error)

    try:
        store.write("acme", rows("before"), 0)
        store._committer._commit_group = hanging_commit  # type: ignore[method-assign]
        first = threading.Thread(target=write_a)
        first.start()
        assert entered.wait(HANG_GUARD_SECONDS), "hang guard: job A never reached its commit"
        with pytest.raises(StoreError, match="busy timeout"):
            store.write("acme", rows("B"), 0)  # queued behind A until its request gave up
        release.set()
        first.join(HANG_GUARD_SECONDS)
        store._committer._commit_group = real_commit  # type: ignore[method-assign]
        assert store.write("acme", rows("after"), 0).stored == 1  # after B in the queue: B was handled
    finally:
        release.set()
        store.close()
    assert (
        len(errors) == 1
    )  # A's request gave up too: it gets the write lock only after, so neither is written
    assert event_id_counts(db) == {"before": 1, "after": 1}


def test_a_stalled_thread_writer_holds_a_bounded_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the writer hangs in a commit, every request still answers 502 in time, and the rows of
    those requests are not kept piling up behind it: the queue holds at most its bound (then a
    request is 502 at once); after it resumes, none of them is written."""
    import drengr.store.sqlite.store as sqlite_store

    monkeypatch.setattr(sqlite_store, "_QUEUE_MAX_JOBS", 8, raising=False)
    db = tmp_path / "bounded.db"
    store = SQLiteStore(str(db), writer="thread", busy_timeout_ms=50)
    entered, release = threading.Event(), threading.Event()
    real_commit = store._committer._commit_group  # noqa: SLF001 - where an fsync would hang

    def hanging_commit(conn: sqlite3.Connection, jobs: list) -> None:
        entered.set()
        assert release.wait(HANG_GUARD_SECONDS), "hang guard: never released"
        real_commit(conn, jobs)

    def rows(event_id: str) -> list[tuple[Any, ...]]:
        return [("acme", event_id, "e", "track", "u", "u", "2026-11-26T00:00:00.000Z",
                 "2026-11-26T00:00:00.000Z", "{}", "{}", None)]  # fmt: skip

    first = threading.Thread(target=lambda: pytest.raises(StoreError, store.write, "acme", rows("A"), 0))  # noqa: PT011
    try:
        store._committer._commit_group = hanging_commit  # type: ignore[method-assign]
        first.start()
        assert entered.wait(HANG_GUARD_SECONDS), "hang guard: job A never reached its commit"
        for n in range(20):
            with pytest.raises(StoreError, match="busy timeout"):
                store.write("acme", rows(f"stalled-{n}"), 0)
        assert store._queue.qsize() <= 8  # noqa: SLF001 - 20 requests gave up, 8 jobs at most wait
        assert store.writable() is False
        release.set()
        first.join(HANG_GUARD_SECONDS)
        store._committer._commit_group = real_commit  # type: ignore[method-assign]
        assert store.write("acme", rows("after"), 0).stored == 1
    finally:
        release.set()
        store.close()
    assert event_id_counts(db) == {"after": 1}  # A and the 20 were late when the writer got to them


# --------------------------------------------------------------------------- crashes


def new_writer(server: Server, killed: list[int]) -> int:
    """The pid of the server's writer child that has not been killed yet (the senders make one start)."""
    guard = time.monotonic() + HANG_GUARD_SECONDS
    while time.monotonic() < guard:
        fresh = [pid for pid in server.children() if pid not in killed]  # a killed one may be unreaped
        if fresh:
            return fresh[0]
        time.sleep(0.005)
    pytest.fail(f"hang guard: no new writer child in {HANG_GUARD_SECONDS} s (killed so far: {len(killed)})")


@pytest.mark.parametrize(
    "kills, pause",
    [pytest.param(4, None, id="4x-under-load"), pytest.param(25, 0.15, id="25x-0.15-s-apart")],
)
def test_the_writer_child_killed_again_and_again_loses_nothing(
    sqlite_server: Server, kills: int, pause: float | None
) -> None:
    server = sqlite_server
    killed: list[int] = []
    with Senders(http_post(lambda: server), f"kill-writer-{kills}") as senders:
        for _ in range(kills):
            if pause is None:
                senders.wait_for_answers(30)
            else:
                time.sleep(pause)
            writer = new_writer(server, killed)
            os.kill(writer, signal.SIGKILL)
            killed.append(writer)
        senders.wait_for_answers(30)
    assert len(set(killed)) == kills  # every round killed a writer, a new one each time
    counts = event_id_counts(server.db)
    assert_ledger(senders.ledger, counts)
    report(f"SIGKILL of the writer child, {kills}x", senders.ledger, counts)


def test_the_whole_server_killed_and_restarted_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    key = create_db(db)
    current = [launch(db, key, log_level="warning", log=tmp_path / "restart.log")]
    port = current[0].port
    with Senders(http_post(lambda: current[0]), "kill-server") as senders:
        for _ in range(3):
            senders.wait_for_answers(30)
            current[0].kill()
            current[0] = launch(db, key, log_level="warning", log=tmp_path / "restart.log", port=port)
        senders.wait_for_answers(30)
    assert current[0].stop() == 0
    counts = event_id_counts(db)
    assert_ledger(senders.ledger, counts)
    assert integrity(db) == "ok"
    report("SIGKILL of the whole server, 3x, restarted", senders.ledger, counts)


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_is_unhealthy_and_502_then_recovers_when_freed(tmp_path: Path) -> None:
    """Under SDK-like load: /health 503 and exactly drengr's 502 while full, nothing of a failed
    batch kept; once freed, that batch and a client retry of it are stored once, nothing lost."""
    ids = [f"full-{n}" for n in range(300)]
    with small_tmpfs(tmp_path / "small", "64m") as disk:
        db = disk / "full.db"
        server = launch(
            db, create_db(db), "--busy-timeout-ms", str(BUSY_TIMEOUT_MS), log_level="warning",
            log=tmp_path / "full.log",
        )  # fmt: skip
        try:
            with Senders(http_post(lambda: server), "full") as senders:
                senders.wait_for_answers(30)
                fill(disk / "filler")
                full_at = time.monotonic()
                hang_guard = full_at + HANG_GUARD_SECONDS
                while not senders.ledger.failures_between(full_at, time.monotonic()):
                    assert time.monotonic() < hang_guard, "hang guard: writes kept succeeding on a full disk"
                    time.sleep(0.05)
                health_full = health(server)
                failed = server.post("/v1/batch", batch(ids))
                freed_at = time.monotonic()
                (disk / "filler").unlink()  # the operator frees space
                senders.wait_for_answers(30)
            assert health_full == 503
            assert (failed.status, failed.json()) == (502, INGEST_FAILED), failed.body
            assert 502 in senders.ledger.failures_between(full_at, freed_at)
            assert not set(ids) & event_id_counts(db).keys()  # nothing of the failed batch was kept
            assert health(server) == 200
            for _ in range(2):  # the SDK's resend, and a retry of that: stored once
                resent = server.post("/v1/batch", batch(ids))
                assert (resent.status, resent.body) == (200, b'{"success": true}')
        finally:
            assert server.stop() == 0
        counts = event_id_counts(db)
        assert all(counts.get(event_id) == 1 for event_id in ids)
        assert_ledger(senders.ledger, {k: v for k, v in counts.items() if k not in ids})
        assert integrity(db) == "ok"
        assert "write transaction failed" in (tmp_path / "full.log").read_text()
    report("disk full on a 64 MB tmpfs, then freed", senders.ledger, counts)
