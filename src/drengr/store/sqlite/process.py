"""The writer process (``writer="process"``): its plumbing on both sides of the pipe.

``WriterProcess`` starts the child and hands it jobs; ``writer_main`` is what
the child runs: a ``drengr.store.sqlite.writer.Writer`` fed from the pipe. The
child dies with its parent (it reads EOF); a child that dies fails the jobs it
holds with 502 (a commit it made is caught as a duplicate when the client
resends) and a new one starts with the next job. Imports no web framework.
"""

import collections
import contextlib
import logging
import marshal
import os
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from ..._memory import return_large_blocks
from ...core.limits import DEFAULT_DEDUP_WINDOW_DAYS
from ...core.outcome import StoreOutcome
from ...logs import configure as configure_logs
from ...logs import current_format as current_log_format
from ..base import Job, StoreError
from .writer import Writer

log = logging.getLogger("drengr.store")
# Where this drengr is imported from (src/, or site-packages): the writer process imports the same one.
_CODE_ROOT = str(Path(__file__).resolve().parents[3])
_MERGE_MAX_BYTES = 4 << 20  # the writer process's groups: at most this many bytes of messages


class WriterProcess:
    """The child that owns the write connection when ``writer="process"``: one job a message.

    A fresh interpreter (``subprocess``, never a fork of a process that runs
    threads) that puts SQLite in multi-thread mode (``drengr._sqlite_lib``)
    and imports only the store, talking over one end of a socket
    pair: not ``multiprocessing``'s spawn, which re-imports the server's
    ``__main__`` in the child and starts a resource-tracker process beside
    it (~19 MB between them). The socket carries ``[(tenant_id, rows,
    received_at_ms, probe, deadline), …]`` one way and ``([[(outcome, error text), …],
    …], commits)`` back, in order, as ``marshal`` bytes framed by
    ``multiprocessing.connection`` (plain values only: about twice as fast as
    pickle, and both ends are this package). Up to ``IN_FLIGHT`` messages are
    in flight; the child commits every message already waiting in one
    transaction and answers them in one message, which a receiver thread
    here completes.
    """

    IN_FLIGHT = 64

    def __init__(
        self,
        path: str,
        durability: str,
        busy_timeout_ms: int,
        cpus: tuple[int, ...] = (),
        window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,
    ) -> None:
        ours, theirs = socket.socketpair()
        code = (
            f"import sys; sys.path.insert(0, {_CODE_ROOT!r}); "
            "from drengr._sqlite_lib import unlock_connections; unlock_connections(); "  # before sqlite3
            "from drengr.store.sqlite.process import writer_main; "
            f"writer_main({theirs.fileno()}, {path!r}, {durability!r}, {busy_timeout_ms!r}, {cpus!r}, "
            f"{current_log_format()!r}, {window_days!r})"
        )
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # not serve's stdout, where a new database's key is printed
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child's end lives in the child only: its exit is our EOF
        # Answers arrive through a Connection (blocking reads, on the receiver thread); jobs leave
        # through the socket itself, written without blocking (_send), so a stalled child cannot
        # hold a request past its deadline. Both are the same socket: the child's exit is our EOF.
        self._socket = ours
        self._pipe = Connection(os.dup(ours.fileno()))
        self.pid = self._process.pid
        self.failed: BaseException | None = None
        self._in_flight: collections.deque[tuple[list[Job], Callable[[int], None]]] = collections.deque()
        self._lock = threading.Lock()
        self._room = threading.Semaphore(self.IN_FLIGHT)
        self._receiver = threading.Thread(target=self._receive, name="drengr-writer-answers", daemon=True)
        self._receiver.start()

    def reserve(self, deadline: float) -> bool:
        """Wait for room for one more group until ``deadline`` (monotonic); False if the child
        failed meanwhile or no room came (room not kept)."""
        while not self._room.acquire(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
            if self.failed is not None or time.monotonic() >= deadline:
                return False
        if self.failed is not None:
            self._room.release()
            return False
        return True

    def submit(self, jobs: list[Job], committed: Callable[[int], None], deadline: float) -> None:
        """Send jobs (after ``reserve``, one sender at a time); completed (outcome or error, then ``done``) when answered.

        A child that does not take the message by ``deadline`` (monotonic) is
        stalled: it is killed (a half-sent message cannot be taken back) and its
        jobs fail; the next job starts a new one.
        """
        with self._lock:
            if self.failed is not None:
                self._room.release()
                _fail(jobs, self.failed)
                return
            self._in_flight.append((jobs, committed))
        try:
            self._send(
                marshal.dumps(
                    [(job.tenant_id, job.rows, job.received_at_ms, job.probe, job.deadline) for job in jobs]
                ),
                deadline,
            )
        except TimeoutError as error:
            log.error("writer process %d took no job within the busy timeout: killed", self.pid)
            self._fail_all(error)
            self._process.kill()  # a stopped process dies too; its open transaction rolls back
        except Exception as error:  # noqa: BLE001 - the child is gone: fail what it holds
            self._fail_all(error)

    def _send(self, payload: bytes, deadline: float) -> None:
        """One message, framed as ``Connection.send_bytes`` frames it, without blocking past ``deadline``."""
        poller = select.poll()
        poller.register(self._socket, select.POLLOUT)
        for part in (struct.pack("!i", len(payload)), payload):
            view = memoryview(part)
            while view:
                try:
                    sent = self._socket.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the writer process took no job in time") from None
                    poller.poll(left * 1000)
                    continue
                view = view[sent:]

    def _receive(self) -> None:
        while True:
            try:
                answers, commits = marshal.loads(self._pipe.recv_bytes())
            except Exception as error:  # noqa: BLE001 - EOF: the child died (or stop() closed the pipe)
                self._fail_all(error)
                return
            with self._lock:
                groups = [self._in_flight.popleft() for _ in answers]
            groups[0][1](int(commits))
            for (jobs, _committed), results in zip(groups, answers, strict=True):
                for job, (outcome, text) in zip(jobs, results, strict=True):
                    job.outcome = None if outcome is None else StoreOutcome(*outcome)
                    job.error = None if text is None else StoreError(text)
                    job.done.set()
                self._room.release()

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            if self.failed is None:
                log.error("writer process failed: %r", error)
                self.failed = error
            groups = list(self._in_flight)
            self._in_flight.clear()
        for jobs, _committed in groups:
            _fail(jobs, error)
            self._room.release()

    def stop(self) -> None:
        """After the jobs in flight are answered (a minute at most): close the pipe, let the child exit, reap it."""
        deadline = time.monotonic() + 60
        for _ in range(self.IN_FLIGHT):
            self._room.acquire(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self.failed is None:
                self.failed = StoreError("the writer process was stopped")
        # "exit": not EOF, while our receiver still reads the socket.
        with contextlib.suppress(OSError, ValueError, TimeoutError):
            self._send(marshal.dumps(None), time.monotonic() + 5)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._receiver.join(timeout=30)  # it reads EOF now that the child is gone
        self._pipe.close()
        self._socket.close()


def _fail(jobs: list[Job], error: BaseException) -> None:
    for job in jobs:
        job.outcome, job.error = None, StoreError(f"writer process failed: {error!r}")
        job.done.set()


def writer_main(
    fd: int,
    path: str,
    durability: str,
    busy_timeout_ms: int,
    cpus: tuple[int, ...] = (),
    log_format: str = "json",
    window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,
) -> None:
    """The writer process: receive groups, commit them with the thread writer's own ``Writer``, answer."""
    return_large_blocks()  # the messages are large blocks: see _memory
    configure_logs("warning", log_format)  # its problems, on the same stderr, as serve's lines are
    pipe = Connection(fd)
    # A terminal's Ctrl-C or a service manager's SIGTERM reaches the whole process group: the
    # parent answers it (it finishes what is in flight, then sends "stop"); this child exits on
    # that message or at the parent's EOF, never halfway through a group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    builder_cpus: frozenset[int] = frozenset()
    if cpus:  # --writer-cpus, or serve's placement (drengr.settings checked they exist)
        builder_cpus = frozenset(os.sched_getaffinity(0) | set(cpus))  # the server's CPUs too
        os.sched_setaffinity(0, set(cpus))
    # The file is ready: its parent migrated it.
    writer = Writer(
        path, durability.upper(), busy_timeout_ms, builder_cpus=builder_cpus, window_days=window_days
    )
    conn: sqlite3.Connection | None = None
    while True:
        try:
            received = pipe.recv_bytes()
            messages = [marshal.loads(received)]
            # Every group already waiting joins this transaction (one commit for all of them), up
            # to a size: a few large batches already make a group, and each byte costs ~3 in rows.
            size = len(received)
            while messages[-1] is not None and size < _MERGE_MAX_BYTES and pipe.poll():
                received = pipe.recv_bytes()
                messages.append(marshal.loads(received))
                size += len(received)
        except (EOFError, OSError):
            break  # the parent died
        stop = messages[-1] is None  # the parent's stop()
        groups = [
            [
                Job(tenant_id, rows, received_at_ms, probe=probe, deadline=deadline)
                for tenant_id, rows, received_at_ms, probe, deadline in message
            ]
            for message in messages
            if message is not None
        ]
        if groups:
            before = writer.group_commits
            conn = writer.commit_jobs(conn, [job for jobs in groups for job in jobs])
            answers = [[_answer(job) for job in jobs] for jobs in groups]
            try:
                pipe.send_bytes(marshal.dumps((answers, writer.group_commits - before)))
            except OSError:
                break
        if stop:
            break
    writer.save_window()  # for the next writer on this database
    writer.release_window()
    writer.close()  # its read-side builder catches up first
    if conn is not None:
        conn.close()


def _answer(job: Job) -> tuple[tuple[int, int, int] | None, str | None]:
    """A job's result as plain values for the pipe: (stored, duplicates, over cap) or None, error text."""
    outcome = (
        None if job.outcome is None else (job.outcome.stored, job.outcome.duplicates, job.outcome.over_cap)
    )
    return outcome, None if job.error is None else str(job.error)
