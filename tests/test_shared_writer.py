"""``writer="shared"`` (wsgi.py's default): one writer process for every process on a SQLite file.

The first process that writes starts it; the others connect to it on a Unix
socket named after the database, in Linux's abstract namespace. It stays
while any process uses it and stops after the last. Real stores, real
processes, a real gunicorn with two workers.
"""

import contextlib
import fcntl
import http.client
import json
import logging
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from drengr.core.outcome import StoreOutcome
from drengr.store import SQLiteStore, StoreError
from drengr.store.sqlite.process import shared_address

from .support.realserver import ROOT, basic, child_env, create_db, free_port
from .support.stores import DAY0, Clock, row

HANG_GUARD_SECONDS = 30


def shared(path: Path, **options: object) -> SQLiteStore:
    return SQLiteStore(str(path), clock=Clock(DAY0), writer="shared", **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def two_stores(db: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two shared stores on ``db`` (two workers', as far as the writer goes), closed in that order."""
    first, second = shared(db), shared(db, migrate=False)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM semantic_events").fetchone()[0])
    finally:
        conn.close()


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child not yet reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def writer_processes(parents: set[int] | None = None, db: Path | None = None) -> set[int]:
    """The running writer processes (``writer_main``) whose parent is one of ``parents`` (this
    process), or, given ``db``, those of that file whoever their parent is now (a worker that
    started one may have exited since)."""
    parents = {os.getpid()} if parents is None and db is None else parents
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
        if (
            b"writer_main(" in command
            and (parents is None or parent in parents)
            and (db is None or repr(str(db)).encode() in command)
            and running(int(entry.name))
        ):
            found.add(int(entry.name))
    return found


def until(condition, seconds: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def write_until_answered(store: SQLiteStore, rows: list[tuple[str, ...]]) -> StoreOutcome:
    """As a client does: resent after a 502 (a writer that died) until answered."""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while True:
        try:
            return store.write("acme", rows, DAY0)
        except StoreError:
            assert time.monotonic() < deadline


def test_stores_on_one_file_share_one_writer_process(tmp_path):
    """The second store joins the first one's writer: one process, one dedup window for both."""
    db = tmp_path / "drengr.db"
    with two_stores(db) as (first, second):
        assert first.write("acme", [row("a"), row("b")], DAY0) == StoreOutcome(2)
        assert second.write("acme", [row("b"), row("c")], DAY0) == StoreOutcome(1, duplicates=1)
        assert first.writer_pid == second.writer_pid
        assert writer_processes() == {first.writer_pid}
    assert count(db) == 3


def test_other_files_have_writers_of_their_own(tmp_path):
    one, other = shared(tmp_path / "one.db"), shared(tmp_path / "other.db")
    try:
        one.write("acme", [row("a")], DAY0)
        other.write("acme", [row("a")], DAY0)
        assert one.writer_pid != other.writer_pid
    finally:
        one.close()
        other.close()
    assert count(tmp_path / "one.db") == count(tmp_path / "other.db") == 1


def test_the_writers_name_is_the_files_not_its_paths(tmp_path):
    """One file by any path (a link, another mount of it) has one writer; another file at the same
    path (another container's volume, a file restored in its place) has another."""
    db = tmp_path / "one.db"
    SQLiteStore(str(db)).close()
    name = shared_address(str(db))
    os.link(db, tmp_path / "linked.db")
    (tmp_path / "symlinked.db").symlink_to(db)
    assert (
        shared_address(str(tmp_path / "linked.db")) == shared_address(str(tmp_path / "symlinked.db")) == name
    )
    db.rename(tmp_path / "moved.db")
    SQLiteStore(str(db)).close()
    assert shared_address(str(db)) != name
    assert shared_address(str(tmp_path / "moved.db")) == name


def test_the_writer_outlives_the_process_that_started_it_and_stops_after_the_last(tmp_path):
    db = tmp_path / "drengr.db"
    starter, joiner = shared(db), shared(db, migrate=False)
    starter.write("acme", [row("a")], DAY0)
    joiner.write("acme", [row("b")], DAY0)
    pid = starter.writer_pid
    assert pid is not None
    starter.close()
    assert running(pid)  # the joiner still uses it
    assert joiner.write("acme", [row("c"), row("a")], DAY0) == StoreOutcome(1, duplicates=1)
    assert joiner.writer_pid == pid
    joiner.close()
    assert until(lambda: not Path(f"/proc/{pid}").exists())  # the last one left: it stopped, and was reaped
    again = shared(db, migrate=False)  # and let go of its name: a new one starts
    try:
        assert again.write("acme", [row("d"), row("c")], DAY0) == StoreOutcome(1, duplicates=1)
        assert again.writer_pid not in (None, pid)
    finally:
        again.close()
    assert count(db) == 4


def _join_from_a_process(db: Path) -> subprocess.Popen[str]:
    """Another process that writes through the shared writer, says its pid, and closes its store
    when told to (a line on stdin)."""
    code = (
        "import sys; from drengr.store import SQLiteStore; from tests.support.stores import DAY0, row; "
        f"store = SQLiteStore({str(db)!r}, writer='shared', migrate=False); "
        "store.write('acme', [row('from-the-other')], DAY0); print(store.writer_pid, flush=True); "
        "sys.stdin.readline(); store.close()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=child_env({}), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_process_joins_and_the_writer_stays_for_it(tmp_path):
    """Two processes: the one that started the writer closes its store, the other goes on through
    the same writer, and the writer stops when that one closes too."""
    db = tmp_path / "drengr.db"
    starter = shared(db)
    starter.write("acme", [row("a")], DAY0)
    pid = starter.writer_pid
    other = _join_from_a_process(db)
    try:
        assert other.stdout is not None
        assert int(other.stdout.readline()) == pid
        starter.close()
        assert running(pid)
        assert other.stdin is not None
        other.stdin.write("close\n")
        other.stdin.flush()
        assert other.wait(timeout=HANG_GUARD_SECONDS) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert until(lambda: not running(pid))
    assert count(db) == 2


def test_a_killed_shared_writer_is_replaced_once_for_every_process(tmp_path):
    """SIGKILL of an idle writer: each store's next write lands in the new writer (no job was in
    the dead one: none fails), which one of them started and the other joined; what the dead one
    committed is caught as a duplicate."""
    db = tmp_path / "drengr.db"
    with two_stores(db) as (first, second):
        first.write("acme", [row("a")], DAY0)
        second.write("acme", [row("b")], DAY0)
        dead = first.writer_pid
        assert dead is not None and second.writer_pid == dead
        os.kill(dead, signal.SIGKILL)
        assert until(lambda: not running(dead))
        assert first.write("acme", [row("a"), row("c")], DAY0) == StoreOutcome(1, duplicates=1)
        assert second.write("acme", [row("b"), row("c"), row("d")], DAY0) == StoreOutcome(1, duplicates=2)
        assert first.writer_pid == second.writer_pid not in (None, dead)
        assert writer_processes() == {first.writer_pid}
    assert count(db) == 4


def test_a_shared_writer_may_hold_a_socket_for_every_thread_of_every_worker(tmp_path):
    """Its descriptors' soft limit is raised to the hard one (1,024 is 8 workers of 128 threads)."""
    store = shared(tmp_path / "drengr.db")
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, ours[1]), ours[1]))  # the writer inherits it
    try:
        store.write("acme", [row("a")], DAY0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, ours)
    try:
        limits = Path(f"/proc/{store.writer_pid}/limits").read_text().splitlines()
        soft, hard = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
        assert (soft, hard) == (str(ours[1]), str(ours[1]))
    finally:
        store.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _taken(sock: socket.socket, seconds: float) -> bool:
    """Whether the writer took this connection (its first byte) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b"a"
    except TimeoutError:
        return False


def test_a_shared_writer_out_of_descriptors_rests_its_listener_and_takes_the_queue_later(tmp_path):
    """Processes that come to join while the writer has no descriptor left wait in the listener's
    queue: the writer neither spins on the listener (readable all along) nor dies, and takes them
    once it has descriptors again."""
    db = tmp_path / "drengr.db"
    store = shared(db)
    store.write("acme", [row("a")], DAY0)
    pid = store.writer_pid
    assert pid is not None
    limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    joiners: list[socket.socket] = []
    try:
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 1, limit[1]))  # room for one more
        for _ in range(6):
            joiner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            joiner.connect(shared_address(str(db)))  # queued, as a joining process's control socket
            joiners.append(joiner)
        waiting = [joiner for joiner in joiners if not _taken(joiner, 0.5)]
        assert waiting  # no descriptor for them
        before = _cpu_seconds(pid)
        time.sleep(2)
        assert _cpu_seconds(pid) - before < 0.5  # resting, not polling a readable listener in a loop
        assert running(pid)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
        assert all(_taken(joiner, HANG_GUARD_SECONDS) for joiner in waiting)
        assert store.write("acme", [row("b")], DAY0).stored == 1
        assert store.writer_pid == pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # the writer's descriptors back, to close it
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
        for joiner in joiners:
            joiner.close()
        store.close()
    assert count(db) == 2


@contextlib.contextmanager
def writer_busy(db: Path, starter: SQLiteStore) -> Iterator[threading.Thread]:
    """The shared writer inside a group for as long as this lasts: the writers' lock held here (as
    a `drengr prune` holds its turns), and a job of ``starter``'s waiting in the writer for it.
    The thread that sent that job is yielded; its write lands once the lock is let go."""
    lock = os.open(f"{db}-writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    waiting = threading.Thread(target=starter.write, args=("acme", [row("waits-for-its-turn")], DAY0))
    try:
        waiting.start()
        time.sleep(0.3)  # the writer has taken that job and waits for its turn
        yield waiting
    finally:
        os.close(lock)
        waiting.join(timeout=HANG_GUARD_SECONDS)


@contextlib.contextmanager
def starter_and_late(db: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    """The store that starts the writer (a busy timeout of 20 s, the writer's), having written
    one row, and another with a busy timeout of 1 s; closed in that order."""
    starter = shared(db, busy_timeout_ms=20_000)
    starter.write("acme", [row("a")], DAY0)
    late = shared(db, busy_timeout_ms=1_000, migrate=False)
    try:
        yield starter, late
    finally:
        late.close()
        starter.close()


def fails_in_its_own_time(store: SQLiteStore, rows: list[tuple[str, ...]]) -> None:
    """A write that fails (502) after the store's busy timeout of 1 s, not the writer's 20 s."""
    started = time.monotonic()
    with pytest.raises(StoreError):
        store.write("acme", rows, DAY0)
    assert time.monotonic() - started < 5  # its 1 s, and the store's own steps


def test_a_process_that_joins_a_busy_writer_gives_up_at_its_busy_timeout(tmp_path):
    """The writer takes joining processes between its groups. While it waits in one (its turn at
    the lock, 20 s with the starter's settings), a process with a busy timeout of 1 s gets its 502
    after about 1 s, not when the writer is done; and joins once it is."""
    db = tmp_path / "drengr.db"
    with starter_and_late(db) as (starter, late):
        with writer_busy(db, starter):
            fails_in_its_own_time(late, [row("b")])
        assert write_until_answered(late, [row("b")]) == StoreOutcome(1)
        assert late.writer_pid == starter.writer_pid
    assert count(db) == 3  # a, b and the starter's job that waited for its turn


def test_a_job_a_busy_shared_writer_cannot_take_in_time_is_taken_back_and_the_writer_stays(tmp_path):
    """A job larger than the socket's buffer, sent while the writer waits in a group past the
    job's busy timeout: its socket is closed (the writer drops what it got of it), not the
    writer killed with the other processes' jobs in it. The one waiting in it lands."""
    db = tmp_path / "drengr.db"
    with starter_and_late(db) as (starter, other):
        other.write("acme", [row("b")], DAY0)
        pid = starter.writer_pid
        assert pid is not None and other.writer_pid == pid
        big = [(*row(f"big-{i}")[:8], json.dumps({"pad": "x" * 1_000}), *row("")[9:]) for i in range(3_000)]
        with writer_busy(db, starter) as waiting:
            fails_in_its_own_time(other, big)  # ~3 MB: the writer reads none of it meanwhile
            assert running(pid)
        assert not waiting.is_alive()
        assert other.write("acme", [row("c")], DAY0) == StoreOutcome(1)
        assert other.write("acme", big, DAY0) == StoreOutcome(3_000)  # the client's resend
        assert starter.writer_pid == other.writer_pid == pid
    assert count(db) == 3_004  # a, b, c, the starter's job and the big one's resend, each once


def test_a_request_that_replaces_a_failed_writer_waits_no_longer_than_its_busy_timeout(tmp_path):
    """A store whose writer failed (a socket that broke) lets go of it at its next request before
    it joins again; the writer, busy in a group, reads that goodbye only after the group, and
    the request waits for it no longer than its own busy timeout."""
    db = tmp_path / "drengr.db"
    with starter_and_late(db) as (starter, late):
        late.write("acme", [row("b")], DAY0)
        child = late._child
        assert child is not None
        with writer_busy(db, starter):
            child.failed = StoreError("its socket broke")  # what submit() records when one does
            fails_in_its_own_time(late, [row("c")])
        assert write_until_answered(late, [row("c")]) == StoreOutcome(1)
        assert late.writer_pid == starter.writer_pid
    assert count(db) == 4  # a, b, c and the starter's job that waited for its turn


def test_a_fork_does_not_keep_its_parents_writer_alive(tmp_path):
    """A process that writes through the shared writer forks (a helper of its own, say) and is
    killed: the writer sees it leave and stops, while the fork, which never wrote, lives on."""
    db = tmp_path / "drengr.db"
    create_db(db)
    code = (
        "import os, sys, time; from drengr.store import SQLiteStore; from tests.support.stores import DAY0, row; "
        f"store = SQLiteStore({str(db)!r}, writer='shared', migrate=False); "
        "store.write('acme', [row('a')], DAY0); fork = os.fork(); "
        "fork or (time.sleep(60), os._exit(0)); "
        "print(store.writer_pid, fork, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=child_env({}), stdout=subprocess.PIPE, text=True
    )
    fork = 0
    try:
        assert parent.stdout is not None
        writer, fork = map(int, parent.stdout.readline().split())
        parent.kill()
        parent.wait()
        assert until(lambda: not running(writer), seconds=15)
        assert running(fork)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if fork:
            with contextlib.suppress(ProcessLookupError):
                os.kill(fork, signal.SIGKILL)
    assert count(db) == 1


def test_a_shared_writer_needs_a_file():
    with pytest.raises(StoreError, match="needs a database file"):
        SQLiteStore(":memory:", writer="shared")


def test_gunicorn_on_an_in_memory_database_says_what_to_set(tmp_path):
    """wsgi.py's default writer cannot serve :memory:: the worker stops with one sentence."""
    done = subprocess.run(
        [sys.executable, "-c", "import drengr.wsgi"], cwd=tmp_path, env=child_env({"DRENGR_DB": ":memory:"}),
        capture_output=True, text=True, timeout=HANG_GUARD_SECONDS,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "drengr: a shared writer needs a database file (each process has its own :memory:): use the thread writer (DRENGR_WRITER=thread, --writer thread)"
    ]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root, to run a process as another user (CI runs as root)")
def test_another_users_process_can_neither_join_nor_stand_in_for_the_writer(tmp_path, caplog):
    """Anyone on the machine can reach an abstract socket: the writer closes another user's
    connection, and a store refuses a listener of another user's at its writer's name."""
    db = tmp_path / "drengr.db"
    store = shared(db)  # the file, which the name is of
    address = shared_address(str(db))

    def squat(said: Callable[[bytes], None]) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(address)
        listener.listen(8)
        said(b"ready\n")
        control, _ = listener.accept()
        control.settimeout(20)
        said(repr(control.recv(100)).encode() + b"\n")

    def intrude(said: Callable[[bytes], None]) -> None:
        control = socket.socket(socket.AF_UNIX)
        control.connect(address)
        control.settimeout(20)
        said(repr(control.recv(100)).encode() + b"\n")

    # A squatter that holds the name first: the store's write fails, nothing is sent to it.
    squatter, lines = as_nobody(squat)
    try:
        assert lines.readline() == b"ready\n"
        with caplog.at_level(logging.ERROR, logger="drengr.store"), pytest.raises(StoreError):
            store.write("acme", [row("a")], DAY0)
        assert f"another user's process (pid {squatter}) listens" in caplog.text
        assert lines.readline() == b"b''\n"  # connected to, and closed: not a byte was sent to it
    finally:
        reap(squatter)
        lines.close()

    # The real writer: another user's connection is closed at once.
    try:
        assert write_until_answered(store, [row("a")]) == StoreOutcome(1)
        intruder, lines = as_nobody(intrude)
        try:
            assert lines.readline() == b"b''\n"
        finally:
            reap(intruder)
            lines.close()
        assert store.write("acme", [row("b")], DAY0) == StoreOutcome(1)
    finally:
        store.close()
    assert count(db) == 2


def as_nobody(action: Callable[[Callable[[bytes], None]], None]) -> tuple[int, BinaryIO]:
    """Fork a child that runs ``action`` as the user nobody; it says lines on a pipe, read from the
    file returned. Only sockets and a pipe in the child, then ``os._exit``."""
    read_end, write_end = os.pipe()

    def say(line: bytes) -> None:
        os.write(write_end, line)

    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            action(say)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, os.fdopen(read_end, "rb")


def reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@contextlib.contextmanager
def gunicorn(tmp_path: Path, db: Path, *extra: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """gunicorn with two workers on ``db`` (wsgi.py's settings: a shared writer), until its writer
    runs; stopped with SIGTERM, its graceful stop."""
    pytest.importorskip(
        "gunicorn", reason="gunicorn is in the deploy and test extras: pip install '.[deploy]'"
    )
    port = free_port()
    env = child_env({"DRENGR_DB": str(db), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "4",
               "-b", f"127.0.0.1:{port}", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), *extra,
               "wsgi:application"]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        assert until(lambda: len(_workers(process.pid)) == 2 and len(writers_of(db)) == 1, 30), (
            log.read_text()
        )
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=HANG_GUARD_SECONDS)


def writers_of(db: Path) -> set[int]:
    return writer_processes(db=db)


def post_batch(port: int, key: str, ids: list[str]) -> int:
    """One batch on a connection of its own (gunicorn's workers take turns); its status, 0 for a
    connection the server dropped."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_SECONDS)
    body = {"batch": [{"type": "track", "event": "e", "userId": "u", "messageId": m} for m in ids]}
    try:
        conn.request(
            "POST", "/v1/batch", json.dumps(body), {"Content-Type": "application/json", **basic(key)}
        )
        return conn.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def post_until_stored(port: int, key: str, ids: list[str]) -> int:
    """As a client does: resent after a 502 (or a dropped connection) until answered 200; how many
    sends it took."""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    sends = 1
    while (status := post_batch(port, key, ids)) != 200:
        assert status in (0, 502, 503) and time.monotonic() < deadline, status
        sends += 1
        time.sleep(0.05)
    return sends


def stored_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [event_id for (event_id,) in conn.execute("SELECT event_id FROM semantic_events")]
    finally:
        conn.close()


def test_gunicorn_workers_write_through_one_writer_process(tmp_path):
    """wsgi.py's default: two gunicorn workers, one writer process between them; gunicorn's stop
    ends it, and every event acknowledged is stored once."""
    db = tmp_path / "gunicorn.db"
    key = create_db(db)
    with gunicorn(tmp_path, db) as (port, process):
        (writer,) = writers_of(db)
        assert writer in writer_processes(_workers(process.pid))  # a worker's child
        statuses = [post_batch(port, key, [f"m{i}-{j}" for j in range(5)]) for i in range(40)]
        assert statuses == [200] * 40
        assert writers_of(db) == {writer}  # still the one
    assert until(lambda: not running(writer))
    assert sorted(stored_ids(db)) == sorted(f"m{i}-{j}" for i in range(40) for j in range(5))


def test_gunicorn_workers_that_restart_keep_writing_through_one_writer(tmp_path):
    """Workers restarted every few requests (--max-requests): the ones that come join the writer;
    never two at once, and every event a client sent until it got its 200 is stored once."""
    db = tmp_path / "gunicorn.db"
    key = create_db(db)
    seen: set[int] = set()
    with gunicorn(tmp_path, db, "--max-requests", "4") as (port, process):
        first = _workers(process.pid)
        for i in range(40):
            post_until_stored(port, key, [f"m{i}-{j}" for j in range(5)])
            writers = writers_of(db)
            assert len(writers) <= 1, writers
            seen |= writers
        assert not first & _workers(process.pid)  # both first workers were replaced meanwhile
    assert sorted(stored_ids(db)) == sorted(f"m{i}-{j}" for i in range(40) for j in range(5))
    assert seen and until(lambda: not any(running(pid) for pid in seen))


def test_a_shared_writer_killed_under_load_loses_no_acknowledged_event(tmp_path):
    """Four clients send batches to gunicorn's two workers; the writer is killed in the middle of a
    group (waiting for a lock another connection holds). The batches it had read get 502 and are
    resent; those still unread on its sockets go to the new writer, which both workers use; every
    event is stored exactly once."""
    db = tmp_path / "gunicorn.db"
    key = create_db(db)
    with gunicorn(tmp_path, db) as (port, _process):
        (dead,) = writers_of(db)
        resent: list[int] = []
        sent: list[str] = []
        killed = threading.Event()

        def client(c: int) -> None:
            # Until 10 batches past the kill: every client has one in flight as the writer dies (a
            # fixed count could all be answered before the lock was taken, the writer idle).
            after = 0
            for i in range(2_000):
                ids = [f"c{c}-{i}-{j}" for j in range(20)]
                resent.append(post_until_stored(port, key, ids) - 1)
                sent.extend(ids)
                after += killed.is_set()
                if after >= 10:
                    break

        clients = [threading.Thread(target=client, args=(c,)) for c in range(4)]
        for thread in clients:
            thread.start()
        assert until(lambda: len(resent) >= 20)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the writer's next group waits for this lock...
        time.sleep(0.3)
        os.kill(dead, signal.SIGKILL)  # ...and its batches fail with it
        killed.set()
        holder.execute("ROLLBACK")
        holder.close()
        for thread in clients:
            thread.join(timeout=HANG_GUARD_SECONDS * 2)
        assert not any(thread.is_alive() for thread in clients) and sum(resent) >= 1
        (writer,) = writers_of(db)
        assert writer != dead
        assert post_batch(port, key, ["after"]) == post_batch(port, key, ["after-too"]) == 200
        assert writers_of(db) == {writer}
    stored = stored_ids(db)
    assert len(stored) == len(set(stored)) and sorted(stored) == sorted([*sent, "after", "after-too"])


def _workers(master: int) -> set[int]:
    return set(map(int, Path(f"/proc/{master}/task/{master}/children").read_text().split()))
