"""The writer process (``writer="process"`` and ``"shared"``): its plumbing on both sides of the sockets.

``WriterProcess`` starts the child and hands it jobs, each thread on a socket
of its own; ``writer_main`` is what the child runs: a
``drengr.store.sqlite.writer.Writer`` fed from those sockets. The child dies
with its parent (it reads EOF); a child that dies fails the jobs it holds with
502 (a commit it made is caught as a duplicate when the client resends) and a
new one starts with the next job. A job it had not read whole when it died goes
to the new one: nothing of it was committed.

``writer="shared"`` (several processes on one file: gunicorn's workers): the
first process to need a writer starts one that also listens on a Unix socket
named after the database (Linux's abstract namespace: no file, gone with the
listener); the others connect to it instead of starting their own, so every
worker's jobs go to one writer, one dedup window and one group commit. It
stops when the last process connected to it has left. Imports no web framework.
"""

import contextlib
import errno
import gc
import hashlib
import logging
import marshal
import os
import resource
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import metrics
from ..._memory import return_large_blocks
from ...core.limits import DEFAULT_DEDUP_WINDOW_DAYS
from ...core.outcome import StoreOutcome
from ...logs import configure as configure_logs
from ...logs import current_format as current_log_format
from ..base import Job, StoreError
from .read_side import Summary, Sums
from .writer import Writer

log = logging.getLogger("drengr.store")
# Where this drengr is imported from (src/, or site-packages): the writer process imports the same one.
_CODE_ROOT = str(Path(__file__).resolve().parents[3])
_MERGE_MAX_BYTES = 4 << 20  # the writer process's groups: at most this many bytes of messages
_LENGTH = struct.Struct("!i")  # a message's frame: its length, then its marshal bytes
_INT = struct.Struct("i")  # a file descriptor, as SCM_RIGHTS carries it
_CREDENTIALS = struct.Struct("3i")  # SO_PEERCRED: the pid, uid and gid at the other end of a Unix socket
_TAKEN = b"a"  # a shared writer to a process that joins it: it is taken, not being let go of
_STOPPING = b"l"  # a shared writer to the last process that leaves it: it stops now
_JOIN_SECONDS = 30.0  # how long a process tries to join a shared writer that is starting or stopping
# The writer process's cyclic garbage collector runs after this many new objects, not 700: every
# job brings a tuple a row, and at 700 a collection every ~1,300 rows walked the rows still in
# flight and those the read side's builder holds (0.33 s of GC in 10 s of 100-event batches, ~0.4 µs
# an event; 3 ms at 50,000). Its objects hold no cycles but an exception's traceback now and then.
_GC_THRESHOLD = 50_000


class Undelivered(Exception):
    """The writer process was gone (its sockets closed) before it had the whole job: nothing of it
    was committed, and it may be sent again to a new writer."""


class WriterProcess:
    """The child that owns the write connection when ``writer="process"``: a socket per thread.

    A fresh interpreter (``subprocess``, never a fork of a process that runs
    threads) that puts SQLite in multi-thread mode (``drengr._sqlite_lib``)
    and imports only the store: not ``multiprocessing``'s spawn, which
    re-imports the server's ``__main__`` in the child and starts a
    resource-tracker process beside it (~19 MB between them).

    Each thread that writes gets a socket pair of its own, a ``_Channel``; the
    child's end goes to the child over the control socket (``SCM_RIGHTS``).
    A job leaves as ``(number, tenant_id, rows, received_at_ms, probe,
    deadline, summary)`` (``summary``: its rows' read-side counts, ``_summary``)
    and its answer comes back on the same socket as ``(number,
    outcome, error text, commits)``, each framed by its length and written
    with ``marshal`` (plain values only: about twice as fast as pickle, and
    both ends are this package). The thread that sent the job waits in
    ``recv`` for its answer, so the child's answer wakes the request itself:
    no receiver thread wakes it in turn, which cost a request ~50 µs of CPU
    in thread switches. The child commits every job waiting on any socket in
    one transaction (the group commit). Its exit is every socket's EOF.
    """

    def __init__(
        self,
        path: str,
        durability: str,
        busy_timeout_ms: int,
        cpus: tuple[int, ...] = (),
        window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,
        shared: bool = False,
        deadline: float | None = None,
    ) -> None:
        """``deadline`` (monotonic): when joining a shared writer, the first job's; a writer
        busy past it (its turn at the lock, a window being built) has not taken this process."""
        listener: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None  # None: a shared writer another process started
        self._shared = shared
        if shared:
            listener, joined, pid = _join_or_listen(shared_address(path), deadline)
            if joined is not None:  # another process's writer: its settings, its CPUs
                self._control, self.pid = joined, pid
        if not shared or listener is not None:
            self._control, self._process = _start(
                path, durability, busy_timeout_ms, cpus, window_days, listener
            )
            self.pid = self._process.pid
        self.owner = os.getpid()  # a process forked from this one (gunicorn --preload) makes its own
        self._control_lock = threading.Lock()
        self._local = threading.local()  # each thread's _Channel
        self._channels: weakref.WeakSet[_Channel] = weakref.WeakSet()  # all threads' (closed in a fork)
        _LIVE.add(self)
        self.failed: BaseException | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # no job in flight
        self.in_flight = 0  # jobs sent whose threads wait for their answers

    def submit(self, job: Job, committed: Callable[[int], None]) -> bool:
        """Send ``job`` and wait for its answer until ``job.deadline``; True once answered (its outcome
        or its error set). ``committed(n)``: the child committed ``n`` groups meanwhile.

        A child that does not take the message by the deadline is stalled: it is
        killed (its jobs fail) and the next job starts a new one. Not a shared
        writer, which other processes' jobs are in: this thread's socket is
        closed instead, and the writer drops the part of the message it got
        with the socket's EOF. A job not answered by the deadline is left: its
        request answers 502, and its late answer is dropped on this thread's
        next job. Raises ``Undelivered`` when the child never had the whole
        message (it acts on whole messages only): failed before this job, or
        gone as it was sent; the job may go to a new one.
        """
        if self.failed is not None:
            raise Undelivered(self.failed)  # nothing sent
        with self._lock:
            self.in_flight += 1
        try:
            try:
                channel = self._channel()
                channel.sent += 1
                number = channel.sent
                payload = marshal.dumps(
                    (number, job.tenant_id, job.rows, job.received_at_ms, job.probe, job.deadline,
                     _summary(job.rows))
                )  # fmt: skip
                _send(channel.sock, payload, job.deadline)
            except TimeoutError:
                raise
            except OSError as error:
                # Its end closed as we sent (EPIPE), or a socket closed under us (EBADF: another
                # thread replaced this writer meanwhile): the child has no whole message of it.
                self._failed(error)
                raise Undelivered(error) from error
            try:
                answer = channel.answer(number, job.deadline)
            except ConnectionResetError as error:
                # It closed with bytes of ours unread, so the end of this message (the last thing
                # we sent). Gone after reading it all is an EOF, not this: that job may be committed.
                self._failed(error)
                raise Undelivered(error) from error
        except TimeoutError as error:  # it took no job within the busy timeout
            if self._shared:
                log.error("shared writer process %d took no job within the busy timeout", self.pid)
                self._drop_channel()  # the next job of this thread sends on a new socket
                return fail_job(job, error)
            log.error("writer process %d took no job within the busy timeout: killed", self.pid)
            self._failed(error)
            self._kill()  # a stopped process dies too; its open transaction rolls back
            return fail_job(job, error)
        except Undelivered:
            raise
        except Exception as error:  # noqa: BLE001 - EOF or a broken socket: the child is gone
            self._failed(error)
            return fail_job(job, error)
        finally:
            with self._lock:
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.notify_all()
        if answer is None:
            return False  # not answered by the deadline: the store says so
        _number, outcome, text, commits = answer
        if commits:
            committed(commits)
        job.outcome = None if outcome is None else StoreOutcome(*outcome)
        job.error = None if text is None else StoreError(text)
        return True

    def _channel(self) -> "_Channel":
        """This thread's socket to the child, made and handed over at its first job."""
        channel: _Channel | None = getattr(self._local, "channel", None)
        if channel is None:
            ours, theirs = socket.socketpair()
            try:
                with self._control_lock:  # one byte and one descriptor: never waits on the child
                    self._control.sendmsg([b"c"], [_descriptor(theirs.fileno())], socket.MSG_DONTWAIT)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            channel = self._local.channel = _Channel(ours)
            self._channels.add(channel)
        return channel

    def _close_in_fork(self) -> None:
        """In a process forked from the owner: close the copies of the sockets to the writer, so that
        the writer sees the owner leave when it does (its EOF), not when the fork exits too."""
        self._control.close()
        for channel in list(self._channels):
            channel.sock.close()

    def _drop_channel(self) -> None:
        """Close this thread's socket: the writer drops a message half sent on it at its EOF."""
        channel: _Channel | None = getattr(self._local, "channel", None)
        if channel is not None:
            channel.sock.close()
            self._local.channel = None

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            if self.failed is None:
                log.error("writer process failed: %r", error)
                self.failed = error

    def running(self) -> bool:
        """Whether the writer process still runs (a shared one may, for others, after this one failed)."""
        if self._process is not None:
            return self._process.poll() is None
        if self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
        elif self.pid > 0:  # a shared writer another process started (never 0: this process group)
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def stop(self, until: float | None = None) -> None:
        """After the jobs in flight are answered (a minute at most): tell the child this process
        leaves, and wait until it has let go of our socket (a shared writer that others still use
        at once; else once it has saved its window and stopped), half a minute at most, or until
        ``until`` (monotonic: a request's deadline, replacing a failed writer). Reaps it if it is
        ours (killed, past the wait), or leaves a thread to."""
        deadline = time.monotonic() + 60
        with self._lock:
            while self.in_flight and self.failed is None and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            if self.failed is None:
                self.failed = StoreError("the writer process was stopped")
        deadline = time.monotonic() + 30
        if until is not None:
            deadline = min(deadline, until)
        with contextlib.suppress(OSError):
            self._control.send(b"s", socket.MSG_DONTWAIT)
        said = _read_to_eof(self._control, deadline)
        self._control.close()
        process = self._process
        if process is None:
            return  # another process's writer
        if self._shared and _STOPPING not in said:  # others still use it: reaped whenever it stops
            threading.Thread(target=process.wait, name="drengr-writer-reaper", daemon=True).start()
            return
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Every WriterProcess of this process. A fork (os.fork, multiprocessing's "fork") gets copies of
# their sockets: closed in the child at once (a store there starts or joins a writer of its own).
_LIVE: "weakref.WeakSet[WriterProcess]" = weakref.WeakSet()


def _close_forked_copies() -> None:
    for writer in list(_LIVE):
        writer._close_in_fork()
    _LIVE.clear()


os.register_at_fork(after_in_child=_close_forked_copies)


def shared_address(path: str) -> bytes:
    """The abstract Unix socket a database's shared writer listens on: one name per file (its device
    and inode, not its path: containers that share a network namespace can have different files at
    one path, or one file at different paths), user and pid namespace (a writer's pid must mean the
    same process to every process that joins it)."""
    try:
        found = os.stat(path)
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError as error:
        raise StoreError(f"cannot name the shared writer of {path}: {error}") from error
    identity = f"{found.st_dev}:{found.st_ino}:{namespace}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return f"\0drengr-writer-{os.getuid()}-{digest}".encode()


def _join_or_listen(
    address: bytes, deadline: float | None = None
) -> tuple[socket.socket | None, socket.socket | None, int]:
    """Listen at ``address`` (nobody does: this process starts the writer), or connect to the
    writer that does: (listener, None, 0) or (None, its control socket, its pid).

    A writer that is starting (named, not yet listening) refuses
    connections, and one that is stopping (its last process left) closes
    those it has not taken: tried again for up to half a minute, or until
    ``deadline`` (monotonic), the first job's. A process that joins waits for
    the writer's byte saying it is taken; the writer takes processes between
    its groups, so one that is busy past ``deadline`` has not taken it.
    """
    now = time.monotonic()
    deadline = now + _JOIN_SECONDS if deadline is None else min(deadline, now + _JOIN_SECONDS)
    while True:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(address)  # the name is ours; the child listens (its pid is what joiners see)
            return listener, None, 0
        except OSError as error:
            listener.close()
            if error.errno != errno.EADDRINUSE:
                raise
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            control.settimeout(max(0.1, deadline - time.monotonic()))
            control.connect(address)
            pid, uid, _gid = _CREDENTIALS.unpack(
                control.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
            )
            if uid != os.getuid():
                raise StoreError(
                    f"another user's process (pid {pid}) listens where this database's writer would"
                )
            # Taken (its byte), or reset: a writer that let go of its name as we came.
            taken = control.recv(1) == _TAKEN
            control.settimeout(None)
        except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError, TimeoutError):
            taken = False
        except BaseException:
            control.close()
            raise
        if taken:
            return None, control, pid
        control.close()
        if time.monotonic() > deadline:
            raise StoreError("the shared writer process did not take this process in time")
        time.sleep(0.01)


def _start(
    path: str,
    durability: str,
    busy_timeout_ms: int,
    cpus: tuple[int, ...],
    window_days: int,
    listener: socket.socket | None,
) -> tuple[socket.socket, "subprocess.Popen[bytes]"]:
    """Start the child: our end of its control socket, and the process. ``listener``: a shared
    writer's listening socket, which the child takes over."""
    try:
        ours, theirs = socket.socketpair()
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    fds = [theirs.fileno()] if listener is None else [theirs.fileno(), listener.fileno()]
    listen_fd = -1 if listener is None else listener.fileno()
    code = (
        f"import sys; sys.path.insert(0, {_CODE_ROOT!r}); "
        "from drengr._sqlite_lib import unlock_connections; unlock_connections(); "  # before sqlite3
        "from drengr.store.sqlite.process import writer_main; "
        f"writer_main({theirs.fileno()}, {path!r}, {durability!r}, {busy_timeout_ms!r}, {cpus!r}, "
        f"{current_log_format()!r}, {window_days!r}, {listen_fd!r})"
    )
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # not serve's stdout, where a new database's key is printed
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # the child's end lives in the child only: its exit is our EOF
        if listener is not None:
            listener.close()  # the child's only: its exit lets go of the name
    return ours, process


def _read_to_eof(sock: socket.socket, deadline: float) -> bytes:
    """What comes on ``sock`` (a control socket) until its end, or ``deadline``."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    said = b""
    while (left := deadline - time.monotonic()) > 0 and poller.poll(left * 1000):
        try:
            chunk = sock.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError:  # reset: the end all the same
            break
        if not chunk:
            break
        said += chunk
    return said


class _Channel:
    """One thread's end of its socket pair to the child, and the answers read so far."""

    __slots__ = ("__weakref__", "_buffer", "_poller", "sent", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.sent = 0  # the number of this thread's last job
        self._buffer = bytearray()
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def answer(self, number: int, deadline: float) -> tuple[Any, ...] | None:
        """The answer to job ``number``, or None at ``deadline`` (monotonic); older answers are dropped
        (their requests gave up). Raises EOFError when the child is gone, ConnectionResetError when it
        went with bytes of ours unread."""
        buffer = self._buffer
        while True:
            while (end := _message_end(buffer, 0)) > 0:
                answer = marshal.loads(memoryview(buffer)[4:end])
                del buffer[:end]
                if answer[0] == number:
                    return answer  # type: ignore[no-any-return]
            left = deadline - time.monotonic()
            if left <= 0 or not self._poller.poll(left * 1000):
                return None
            try:
                chunk = self.sock.recv(4096)  # answers are a few dozen bytes each
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError("the writer process closed its socket")
            buffer += chunk


def _message_end(buffer: bytearray, start: int) -> int:
    """Where the message framed at ``start`` of ``buffer`` ends, when the buffer holds it whole; else 0."""
    if len(buffer) - start < _LENGTH.size:
        return 0
    end = start + _LENGTH.size + _LENGTH.unpack_from(buffer, start)[0]
    return end if len(buffer) >= end else 0


def _send(sock: socket.socket, payload: bytes, deadline: float) -> None:
    """One framed message on a non-blocking socket, without waiting past ``deadline`` (monotonic)."""
    header = _LENGTH.pack(len(payload))
    try:
        sent = sock.sendmsg((header, payload))  # the length and the payload in one call, neither copied
    except BlockingIOError:
        sent = 0
    if sent == len(header) + len(payload):
        return
    parts = [memoryview(header), memoryview(payload)]
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while True:  # the rest, as the child makes room
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if not parts:
            return
        parts[0] = parts[0][sent:]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the writer process took no job in time")
        poller.poll(left * 1000)
        try:
            sent = sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0


_FD_SPACE = socket.CMSG_SPACE(_INT.size)  # one descriptor's ancillary data


def _descriptor(fd: int) -> tuple[int, int, bytes]:
    """The ancillary data that hands ``fd`` to the process at the other end (``SCM_RIGHTS``)."""
    return (socket.SOL_SOCKET, socket.SCM_RIGHTS, _INT.pack(fd))


def _descriptors(level: int, kind: int, data: bytes) -> list[int]:
    """The descriptors an ancillary item carries."""
    if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
        return []
    return [fd for (fd,) in _INT.iter_unpack(data[: len(data) - len(data) % _INT.size])]


def _summary(rows: list[tuple[Any, ...]]) -> Summary | None:
    """The read side's counts of a job's rows, added up by the request's thread as it sends them
    (``Job.summary``): the writer process, whose one thread sets the rate of a busy server, then
    adds a job's counts, not each row's (with 100-event batches of five measures the pass was ~0.2
    µs a row there; here it runs beside the other request threads, on the server's CPUs).
    None where the writer builds no read side, or for a probe; or should adding them up fail,
    and the writer adds up the rows itself, as it did before this was sent."""
    if not rows or not Writer.builds_read_side:
        return None
    try:
        sums = Sums()
        sums.add_rows(rows)
        return sums.summary()
    except Exception:  # noqa: BLE001 - (a MemoryError) not the job's failure: its counts come later
        log.warning("a job's read-side counts were not added up as it was sent (the writer adds them up)")
        return None


def fail_job(job: Job, error: BaseException) -> bool:
    """The job fails with the writer process (answered: True)."""
    job.outcome, job.error = None, StoreError(f"writer process failed: {error!r}")
    return True


def writer_main(
    fd: int,
    path: str,
    durability: str,
    busy_timeout_ms: int,
    cpus: tuple[int, ...] = (),
    log_format: str = "json",
    window_days: int = DEFAULT_DEDUP_WINDOW_DAYS,
    listen_fd: int = -1,
) -> None:
    """The writer process: take the jobs waiting on the threads' sockets, commit them with the thread
    writer's own ``Writer`` as one group, answer each on its socket. ``listen_fd``: a shared
    writer's listening socket, where other processes connect control sockets of their own."""
    return_large_blocks()  # the messages are large blocks: see _memory
    gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])
    _raise_descriptor_limit()
    # Python's GIL switch interval, 5 ms, not serve's 0.1 ms: here one thread does nearly all the
    # work, and at 0.1 ms it kept 0.91 of its rate (docs/performance.md, "Settings that matter").
    configure_logs("warning", log_format)  # its problems, on the same stderr, as serve's lines are
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
    inboxes = _Inboxes(socket.socket(fileno=fd), None if listen_fd < 0 else socket.socket(fileno=listen_fd))
    conn: sqlite3.Connection | None = None
    stop = False
    while not stop:
        # Every job already waiting joins this transaction (one commit for all of them), up to a
        # size: a few large batches already make a group, and each byte costs ~3 in rows.
        taken, stop = inboxes.take(_MERGE_MAX_BYTES, 0)
        writer.hand_over(later=bool(taken))  # the last group's: by its hand-over thread when busy
        if not taken and not stop:
            taken, stop = inboxes.take(_MERGE_MAX_BYTES, writer.idle_wait())
        if not taken:
            writer.idle()  # (or a control message came)
            continue
        jobs = [
            Job(tenant_id, rows, received_at_ms, probe=probe, deadline=deadline, summary=summary)
            for _inbox, (_number, tenant_id, rows, received_at_ms, probe, deadline, summary) in taken
        ]
        before = writer.group_commits
        conn = writer.commit_jobs(conn, jobs)
        commits = writer.group_commits - before  # said once, with the first answer
        for (inbox, message), job in zip(taken, jobs, strict=True):
            if not inbox.answer((message[0], *_answer(job), commits)):
                inboxes.drop(inbox)
            commits = 0
    writer.save_window()  # for the next writer on this database
    writer.release_window()
    writer.close()  # its read-side builder catches up first
    if conn is not None:
        conn.close()
    metrics.process_exited(os.getpid())  # its gauges stop counting (gunicorn's scrape)
    inboxes.close()


def _raise_descriptor_limit() -> None:
    """The soft limit of open descriptors up to the hard one: a shared writer holds a socket for every
    thread of every worker (8 workers of 128 threads pass the usual soft limit, 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Inbox:
    """The writer process's end of one thread's socket: the jobs read from it, whole or in part."""

    __slots__ = ("_buffer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def read(self, scratch: memoryview) -> bool:
        """Read the socket, by way of ``scratch``, until the buffer holds a whole message or the
        socket is empty (what is past that message waits in the socket, not in memory); False at
        EOF (the thread's socket was closed)."""
        while not self.waiting():
            try:
                size = self.sock.recv_into(scratch, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not size:
                return False
            self._buffer += scratch[:size]
        return True

    def jobs(self, room: int, first: bool) -> tuple[list[tuple[Any, ...]], int]:
        """The whole messages buffered, up to ``room`` bytes (``first``: at least one), and their
        bytes; the rest stays."""
        found: list[tuple[Any, ...]] = []
        buffer, start = self._buffer, 0
        while (end := _message_end(buffer, start)) > 0:
            size = end - start - 4
            if size > room and not (first and not found):
                break
            found.append(marshal.loads(memoryview(buffer)[start + 4 : end]))
            room -= size
            start = end
        if start == len(buffer):
            self._buffer = bytearray()  # lets go of a large message's memory
        else:
            del buffer[:start]
        return found, start

    def waiting(self) -> bool:
        """A whole message is buffered."""
        return _message_end(self._buffer, 0) > 0

    def answer(self, message: tuple[Any, ...]) -> bool:
        """An answer (a few dozen bytes) back to the thread, never waiting; False if it cannot go.

        The thread that waits for it reads its socket, so there is room; no
        room means answers of jobs whose requests gave up fill it, and the
        thread is not waiting: the socket is dropped (its thread takes the EOF
        for a failed writer process at its next job).
        """
        payload = marshal.dumps(message)
        frame = _LENGTH.pack(len(payload)) + payload
        try:
            return self.sock.send(frame, socket.MSG_DONTWAIT) == len(frame)
        except OSError:  # its thread is gone (or no room)
            return False


class _Inboxes:
    """The control sockets (new threads' sockets, "stop"), the threads' sockets and a shared
    writer's listening socket, polled as one."""

    def __init__(self, control: socket.socket, listener: socket.socket | None = None) -> None:
        self._poller = select.poll()
        self._controls: dict[int, socket.socket] = {}
        self._add_control(control)
        self._listener = listener
        if listener is not None:
            listener.listen(128)  # until now, a process that came to join was refused and tried again
            listener.setblocking(False)
            self._poller.register(listener, select.POLLIN)
        self._listening_again = 0.0  # after an accept failed, the listener rests until then (monotonic)
        self._inboxes: dict[int, _Inbox] = {}
        self._scratch = memoryview(bytearray(1 << 20))  # every socket is read through it

    def take(
        self, max_bytes: int, wait_seconds: float | None = None
    ) -> tuple[list[tuple[_Inbox, tuple[Any, ...]]], bool]:
        """Wait for jobs (at most ``wait_seconds``; None: until one comes); take every whole one
        waiting, up to ``max_bytes``. Also whether to stop (the last process's "stop", or its
        exit): the jobs taken with it are still committed."""
        left_over = any(inbox.waiting() for inbox in self._inboxes.values())
        stop = False
        if self._listening_again and time.monotonic() >= self._listening_again and self._listener is not None:
            self._listening_again = 0.0
            self._poller.register(self._listener, select.POLLIN)
        waits = [wait_seconds * 1000] if wait_seconds is not None else []
        if self._listening_again:
            waits.append(1000)
        for fd, _events in self._poller.poll(0 if left_over else min(waits, default=None)):
            if (control := self._controls.get(fd)) is not None:
                if self._read_control(control):
                    stop = self._left(control) or stop
            elif self._listener is not None and fd == self._listener.fileno():
                self._accept()
            elif (inbox := self._inboxes.get(fd)) is not None and not inbox.read(self._scratch):
                self._drop(fd)
        if stop:  # what the processes' threads sent before "stop" is read now
            for fd, inbox in list(self._inboxes.items()):
                if not inbox.read(self._scratch):
                    self._drop(fd)
        taken: list[tuple[_Inbox, tuple[Any, ...]]] = []
        room = max_bytes
        for inbox in self._inboxes.values():
            if room <= 0:
                break
            messages, used = inbox.jobs(room, first=not taken)
            taken.extend((inbox, message) for message in messages)
            room -= used
        return taken, stop

    def _add_control(self, control: socket.socket) -> None:
        self._controls[control.fileno()] = control
        self._poller.register(control, select.POLLIN)

    def _accept(self) -> None:
        """Processes that join a shared writer: their control sockets (only this user's)."""
        assert self._listener is not None
        while True:
            try:
                control, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of descriptors, say: it waits in the queue; tried in a second
                log.error("shared writer: cannot accept a process: %s", error)
                if not self._listening_again:  # not a busy loop on a listener that stays readable
                    self._poller.unregister(self._listener)
                self._listening_again = time.monotonic() + 1.0
                return
            _pid, uid, _gid = _CREDENTIALS.unpack(
                control.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
            )
            if uid != os.getuid():
                control.close()
                continue
            with contextlib.suppress(OSError):
                control.send(_TAKEN, socket.MSG_DONTWAIT)  # its process waits for it before its first job
            self._add_control(control)

    def _left(self, control: socket.socket) -> bool:
        """A process left (its "stop", or its exit): whether it was the last, and the writer stops.

        A shared writer lets go of its name before it stops, then takes any
        process that connected meanwhile: one that connects later starts a
        writer of its own.
        """
        self._poller.unregister(control)
        del self._controls[control.fileno()]
        if self._listener is not None and not self._controls:
            self._accept()
        if self._controls:  # others still use it: this one's socket is closed now, its EOF
            control.close()
            return False
        if self._listener is not None:
            if not self._listening_again:
                self._poller.unregister(self._listener)
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                control.send(_STOPPING, socket.MSG_DONTWAIT)
        self._controls[control.fileno()] = control  # closed as the writer exits: the process waits for that
        return True

    def _read_control(self, control: socket.socket) -> bool:
        """A process's new thread sockets (their first jobs may be there already), or its "stop" (or
        its exit: EOF): whether it left."""
        while True:
            try:
                # (socket.recv_fds and send_fds leave their flags out before Python 3.12)
                data, ancillary, flags, _address = control.recvmsg(1, _FD_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
            fds = [fd for level, kind, value in ancillary for fd in _descriptors(level, kind, value)]
            if data == b"c" and not fds and flags & socket.MSG_CTRUNC:
                # Out of descriptors: that thread's socket was dropped on the way, the process stays
                # (its thread's jobs go unanswered: 502s until its requests give up).
                log.error("writer process: out of file descriptors, a thread's socket was lost")
                continue
            if data != b"c" or not fds:
                for extra in fds:
                    os.close(extra)
                return True  # b"s", or b"" at EOF
            inbox = self._inboxes[fds[0]] = _Inbox(socket.socket(fileno=fds[0]))
            self._poller.register(fds[0], select.POLLIN)
            if not inbox.read(self._scratch):
                self._drop(fds[0])

    def _drop(self, fd: int) -> None:
        """A thread's socket at EOF: its thread is gone."""
        self._poller.unregister(fd)
        self._inboxes.pop(fd).sock.close()

    def drop(self, inbox: _Inbox) -> None:
        """A socket that took no answer."""
        fd = inbox.sock.fileno()
        if self._inboxes.get(fd) is inbox:
            self._drop(fd)

    def close(self) -> None:
        for inbox in self._inboxes.values():
            inbox.sock.close()
        for control in self._controls.values():
            control.close()
        if self._listener is not None:
            self._listener.close()


def _answer(job: Job) -> tuple[tuple[int, int, int] | None, str | None]:
    """A job's result as plain values for its socket: (stored, duplicates, over cap) or None, error text."""
    outcome = (
        None if job.outcome is None else (job.outcome.stored, job.outcome.duplicates, job.outcome.over_cap)
    )
    return outcome, None if job.error is None else str(job.error)
