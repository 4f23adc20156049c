"""Senders that behave as the SDKs do, their ack ledger, and the checks every fault test makes of it.

A batch answered with anything but 200 (or not answered) is sent again with the
same messageIds until it is acknowledged; the ledger then says what must be
stored, exactly once. Shared by tests/test_faults.py, test_clock_jumps.py and
test_postgres_faults.py.
"""

import contextlib
import http.client
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from waitress.server import create_server

from .realserver import Server, basic, batch

# Generous hang guards, not speed limits: a wait that never ends fails the test instead of the suite.
HANG_GUARD_SECONDS = 60


@dataclass
class Ledger:
    """What the senders were told, and when (time.monotonic())."""

    acked: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)
    answers: list[tuple[float, int]] = field(default_factory=list)  # (when, status; 0: no answer)
    sent: list[float] = field(default_factory=list)  # when each of those requests was sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, sent: float, when: float, status: int, ids: list[str]) -> None:
        with self.lock:
            self.answers.append((when, status))
            self.sent.append(sent)
            if status == 200:
                self.acked.update(ids)

    def failures_sent_after(self, start: float) -> list[tuple[float, int]]:
        """(seconds after ``start`` it was sent, status) of each failed request sent after ``start``."""
        with self.lock:
            return [
                (round(sent - start, 3), status)
                for sent, (_, status) in zip(self.sent, self.answers, strict=True)
                if sent > start and status != 200
            ]

    def failures_between(self, start: float, end: float) -> list[int]:
        with self.lock:
            return [status for when, status in self.answers if start <= when <= end and status != 200]

    def answers_between(self, start: float, end: float) -> list[int]:
        with self.lock:
            return [status for when, status in self.answers if start <= when <= end]

    def longest_outage(self) -> float:
        """Seconds from the first failed answer after a success (or the start) to the next success."""
        with self.lock:
            answers = sorted(self.answers)
        longest, failing_since = 0.0, None
        for when, status in answers:
            if status != 200:
                failing_since = when if failing_since is None else failing_since
            elif failing_since is not None:
                longest = max(longest, when - failing_since)
                failing_since = None
        if failing_since is not None:
            longest = max(longest, answers[-1][0] - failing_since)
        return longest


class Senders:
    """``threads`` SDK-like senders, each sending batches of fresh ids until told to stop.

    ``post(ids)`` sends one batch and returns the status (0: no answer). A
    batch not acknowledged is resent, same ids, after a short pause; on
    ``stop`` every sender finishes the batch it holds (resending until 200).
    """

    def __init__(self, post: Callable[[list[str]], int], run: str, threads: int = 4, size: int = 20) -> None:
        self.ledger = Ledger()
        self._post = post
        self._stop = threading.Event()
        self._numbers = itertools.count()
        self._run, self._size = run, size
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._send, name=f"sender-{n}", daemon=True) for n in range(threads)
        ]

    def __enter__(self) -> "Senders":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sent(self) -> int:
        with self.ledger.lock:
            return len(self.ledger.answers)

    def wait_for_answers(self, more: int) -> None:
        """Until ``more`` answers beyond those so far have come in (the load is under way)."""
        target = self.sent() + more
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while self.sent() < target:
            assert time.monotonic() < deadline, "hang guard: the senders got no answers"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(HANG_GUARD_SECONDS)
            assert not thread.is_alive(), "hang guard: a sender never got its batch acknowledged"
        assert not self._errors, self._errors

    def _send(self) -> None:
        try:
            while not self._stop.is_set():
                number = next(self._numbers)
                ids = [f"{self._run}-{number}-{n}" for n in range(self._size)]
                with self.ledger.lock:
                    self.ledger.attempted.update(ids)
                deadline = time.monotonic() + HANG_GUARD_SECONDS
                while True:
                    sent = time.monotonic()
                    status = self._post(ids)
                    self.ledger.record(sent, time.monotonic(), status, ids)
                    if status == 200:
                        break
                    assert time.monotonic() < deadline, f"hang guard: batch {number} never acknowledged"
                    time.sleep(0.05)  # an SDK backs off a little before it resends
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self._errors.append(error)


def http_post(server_port: Callable[[], Server]) -> Callable[[list[str]], int]:
    """Post a batch to whatever server ``server_port()`` returns now (it may be restarted)."""

    def post(ids: list[str]) -> int:
        try:
            return server_port().post("/v1/batch", batch(ids), timeout=HANG_GUARD_SECONDS).status
        except (OSError, http.client.HTTPException):  # refused, reset, cut mid-answer: the server is down
            return 0

    return post


def assert_ledger(ledger: Ledger, counts: dict[str, int]) -> None:
    """Every acknowledged id stored once; no id stored twice; nothing stored that was never sent."""
    missing = sorted(ledger.acked - counts.keys())
    twice = sorted(event_id for event_id, n in counts.items() if n > 1)
    strangers = sorted(counts.keys() - ledger.attempted)
    assert not missing, f"{len(missing)} acknowledged ids lost, e.g. {missing[:5]}"
    assert not twice, f"{len(twice)} ids stored twice, e.g. {twice[:5]}"
    assert not strangers, strangers[:5]
    assert ledger.acked, "nothing was acknowledged at all"


def report(fault: str, ledger: Ledger, counts: dict[str, int]) -> None:
    failed = sum(1 for _, status in ledger.answers if status != 200)
    print(
        f"\n{fault}: acked {len(ledger.acked)}, stored {len(counts)}, lost 0, twice 0; "
        f"{failed} failed answers of {len(ledger.answers)}; longest outage {ledger.longest_outage():.2f} s"
    )


def health(server: Server) -> int:
    try:
        return server.request("GET", "/health", timeout=HANG_GUARD_SECONDS).status
    except OSError:
        return 0


# --------------------------------------------------------------------------- in this process, over HTTP


@contextlib.contextmanager
def serving(app: Any) -> Iterator[int]:
    """``app`` on waitress in this process (so ``set_offset`` moves its clock); yields the port."""
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    closing = threading.Event()

    def run() -> None:
        try:
            server.run()
        except OSError:  # its select() met the socket close() below had just closed (EBADF)
            if not closing.is_set():
                raise

    thread = threading.Thread(target=run, name="waitress", daemon=True)
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        closing.set()
        server.close()
        server.task_dispatcher.shutdown()
        thread.join(HANG_GUARD_SECONDS)


def poster(ports: list[int], key: str) -> Callable[[list[str]], int]:
    """Post a batch to one of ``ports`` in turn (a client behind a balancer meets each node)."""
    turn = itertools.count()

    def post(ids: list[str]) -> int:
        port = ports[next(turn) % len(ports)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_SECONDS)
        try:
            headers = {**basic(key), "Content-Type": "application/json"}
            conn.request("POST", "/v1/batch", body=json.dumps(batch(ids)).encode(), headers=headers)
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    return post


def resend_everything(post: Callable[[list[str]], int], ids: set[str]) -> None:
    """A client whose acknowledgements were lost sends it all again: each batch must be a 200."""
    ordered = sorted(ids)
    for start in range(0, len(ordered), 100):
        assert post(ordered[start : start + 100]) == 200
