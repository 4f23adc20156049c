"""The OS lock writers of one file take turns at, and the thread that checkpoints the WAL.

Imports only the standard library and ``drengr.store.base``.
"""

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator

from ..base import StoreError

log = logging.getLogger("drengr.store")

# Background WAL checkpoints (see Checkpointer): one every ~1,000 rows written (~150 pages); the
# writer finishes the log once it holds 4,000 frames (16 MB), so it starts over; its own
# auto-checkpoint only past 20,000 (80 MB), should the checkpoint thread fall behind.
CHECKPOINT_EVERY_ROWS = 1_000
WAL_RESTART_FRAMES = 4_000
CHECKPOINT_FALLBACK_PAGES = 20_000


class WriterLock:
    """Writers of one database file take turns at an OS lock, not in SQLite's busy handler.

    Each transaction of the writer (thread or process) holds ``flock`` on
    ``<database>-writer.lock``. Without it, a writer that finds SQLite's write
    lock taken (gunicorn's other worker, another ``serve`` on the file) sleeps
    in SQLite's busy handler, 1, 2, 5, … then 25-100 ms between tries, while
    the holder, its next group already waiting, takes the lock again
    microseconds after releasing it: two gunicorn workers answered 100-event
    batches with a p99 of 0.9-3.1 s. ``flock`` queues the waiter in the kernel
    and wakes it at the release: p99 0.18-0.27 s (docs/performance.md).

    The wait stays bounded by the busy timeout (then the group fails with
    ``502``, as a busy SQLite lock would): it happens on a helper thread, which
    hands the lock over if its writer still wants it and gives it back if not.
    Where the lock file cannot be opened (a read-only directory, ``:memory:``)
    writers fall back to SQLite's busy handler alone.
    """

    _NONE = -1  # the "turn" of a writer without a lock file

    def __init__(self, database: str) -> None:
        self._path = None if database == ":memory:" else database + "-writer.lock"
        self._fd: int | None = None  # opened once: the uncontended turn is two flock calls
        self._state = threading.Lock()
        self._waiter = False  # a helper thread is blocked in flock
        self._wanted = False  # and our writer is waiting for what it gets
        self._granted: int | None = None
        self._ready = threading.Event()

    def acquire(self, timeout: float) -> int | None:
        """A turn to write (give it to ``release``), or None if the lock stayed taken ``timeout`` s."""
        with self._state:
            if not self._waiter:
                if self._fd is None:
                    self._fd = self._open()
                    if self._fd is None:
                        return self._NONE
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return self._fd
                except BlockingIOError:  # taken: wait in the kernel's queue, on a helper thread
                    pass
                fd = self._open()  # a description of its own: the lock it gets is its writer's
                if fd is None:
                    return self._NONE
                self._ready.clear()
                helper = threading.Thread(
                    target=self._wait, args=(fd,), name="drengr-writer-lock", daemon=True
                )
                try:
                    helper.start()  # it takes self._state before anything else: after we let go
                except BaseException:
                    os.close(fd)
                    raise
                self._waiter = True
            self._wanted = True
        self._ready.wait(timeout)
        with self._state:
            self._wanted = False
            fd, self._granted = self._granted, None
        return fd

    @contextlib.contextmanager
    def turn(self, timeout: float) -> Iterator[None]:
        """``with`` block holding a turn; StoreError when the lock stayed taken ``timeout`` s."""
        turn = self.acquire(timeout)
        if turn is None:
            raise StoreError("another writer held the database's writer lock past the busy timeout")
        try:
            yield
        finally:
            self.release(turn)

    def release(self, turn: int) -> None:
        if turn == self._fd:
            fcntl.flock(turn, fcntl.LOCK_UN)
        elif turn != self._NONE:
            os.close(turn)  # a helper's description: closing it releases its flock

    def close(self) -> None:
        with self._state:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self) -> int | None:
        if self._path is None:
            return None
        fd = open_lock_file(self._path, "no writer lock (%s): writers wait in SQLite's busy handler")
        if fd is None:
            self._path = None
        return fd

    def _wait(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            with self._state:
                self._waiter = False
                self._ready.set()  # nothing granted: its writer fails now, not at the timeout
            return
        with self._state:
            self._waiter = False
            if self._wanted:
                self._granted = fd
                self._ready.set()
                return
        os.close(fd)  # its writer gave up meanwhile: give the lock back


def open_lock_file(path: str, otherwise: str) -> int | None:
    """A lock file beside the database, opened (made if missing); None, with ``otherwise`` logged, where
    it cannot be (a read-only folder)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        log.warning(otherwise, error)
        return None


class Checkpointer:
    """Copies the WAL back into the database from a thread of its own, off the writer's path.

    A checkpoint is one sqlite3 call, so it runs without the GIL: on a second
    core it costs the writer nothing (inline, SQLite's auto-checkpoint took
    ~20 % of the write path's time). PASSIVE: it never blocks the writer or a
    reader. But beside a busy writer it never finishes the whole log, and only
    a finished log starts over, so once the log holds ``WAL_RESTART_FRAMES``
    the writer itself checkpoints after its next commit: it copies the few
    pages left, and its next transaction starts the log over. The writer
    connection keeps an auto-checkpoint at a much larger WAL size, should this
    thread fall behind.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._pending = 0
        self._restart = False  # the log is long: the writer finishes it after its next commit
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="drengr-checkpoint", daemon=True)
        self._thread.start()

    def wrote(self, conn: sqlite3.Connection, rows: int) -> None:
        """The writer, after each commit: count rows; finish the log itself when it is long."""
        self._pending += rows
        if self._pending >= CHECKPOINT_EVERY_ROWS:
            self._pending = 0
            self._wake.set()
        if self._restart:
            # Copies only what the thread has not (a few pages), and completes: nobody else
            # writes meanwhile. The next transaction then starts the log over. The group is
            # committed already: a failure here must not turn its answers into 502s.
            try:
                _busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as error:
                log.warning("checkpoint after commit failed: %s", error)
                return
            self._restart = done < frames  # the thread held the checkpoint lock: next commit

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                if conn is None:
                    conn = self._connect()
                _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self._restart = frames >= WAL_RESTART_FRAMES
            except sqlite3.Error as error:  # the writer's fallback auto-checkpoint covers us
                log.warning("background checkpoint failed: %s", error)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)
