"""The store interface every engine implements, what it returns, and what both engines share.

The web shell needs three things of a store — who owns a key, write rows
durably, and whether it can write at all; the CLI needs the admin verbs.
Both engines write jobs (one request's rows) in groups of at most
``GROUP_MAX_ROWS``, number the dedup window's generations with ``generation``,
and remember key look-ups in a ``KeyCache``. Imports no database driver.
"""

import importlib.resources
import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import metrics
from ..core.auth import KeyRecord
from ..core.limits import MS_PER_DAY
from ..core.outcome import StoreOutcome


def schema_statements(engine: str) -> list[str]:
    """The statements of ``schema/<engine>.sql`` (package data), in order, comments kept.

    A statement ends with a semicolon at the end of a line.
    """
    text = importlib.resources.files(__package__).joinpath("schema", f"{engine}.sql").read_text("utf-8")
    statements, lines = [], []
    for line in text.splitlines():
        lines.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(lines).strip().removesuffix(";"))
            lines = []
    return statements


class StoreError(Exception):
    """The store could not do what was asked; the request gets 502 Ingest failed."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as `drengr keys list` shows it: never the key itself."""

    key_id: str  # the first 12 hex digits of its digest
    tenant_id: str
    kind: str
    created_at: str
    revoked_at: str | None


class Store(Protocol):
    def lookup_key(self, key_hash: str) -> KeyRecord | None: ...

    def write(self, tenant_id: str, rows: list[tuple[Any, ...]], received_at_ms: int) -> StoreOutcome:
        """Store rows durably (deduplicated, capped); raises StoreError."""
        ...

    def writable(self) -> bool: ...

    def warm(self) -> None:
        """Get ready for the first request without waiting for it (a server starting: `serve`, a gunicorn worker)."""
        ...

    def is_new(self) -> bool: ...

    def create_key(self, tenant_id: str, kind: str) -> str: ...

    def list_keys(self) -> list[KeyInfo]: ...

    def tenants(self) -> list[str]: ...  # every tenant's name, in order

    def revoke_key(self, key_or_id: str) -> bool: ...

    def set_daily_cap(self, tenant_id: str, daily_cap: int) -> None: ...

    def prune_events(
        self, before_ms: int, batch_rows: int = ..., progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Delete the events received before ``before_ms`` in short batches; returns how many (retention)."""
        ...

    def set_pii_allow(self, tenant_id: str, names: tuple[str, ...]) -> None:
        """The tenant's exact key names kept although they hold a PII fragment (replaces the list)."""
        ...

    def pii_allow(self, tenant_id: str) -> tuple[str, ...]: ...

    def add_drop_counts(self, counts: dict[tuple[str, int, str], int]) -> None:
        """Add to the drop counts by (tenant_id, day, reason) (drengr.drops); raises StoreError."""
        ...

    def drop_counts(self, tenant_id: str) -> dict[str, int]:
        """A tenant's drop counts by reason, every day summed; raises StoreError."""
        ...

    def close(self) -> None: ...


def allow_text(names: tuple[str, ...]) -> str | None:
    """A tenant's PII allow-list as stored (tenants.pii_allow): a JSON array, or NULL when empty."""
    return json.dumps(list(names)) if names else None


def allow_names(stored: str | None) -> tuple[str, ...]:
    return tuple(json.loads(stored)) if stored else ()


# Retention (drengr prune, serve --retention): rows received before a cut-off are deleted, this
# many a transaction, so a writer waits for one short batch at most. The shortest retention
# (core.limits.min_retention_days) keeps the dedup window's rows: a resent event is still caught as a repeat,
# never stored twice because its first copy was pruned.
PRUNE_BATCH_ROWS = 2_000


def prune_in_batches(
    delete_batch: Callable[[int], tuple[int, int]],
    progress: Callable[[int, int], None] | None,
    total: int,
    deleted: int = 0,
    after_seq: int = 0,
) -> int:
    """Retention's walk up ``seq`` (rows arrive in time order), batch by batch.

    ``delete_batch(after_seq)`` deletes the old rows of the next batch past
    ``after_seq`` in a transaction of its own and returns (how many, the batch's
    last seq). The walk stops at the first batch with none once ``total`` (the
    old rows counted before it began) are gone, or at the end of the table: a
    clock that ran ahead leaves rows received "later" before older ones, and
    the walk goes past them. Returns ``deleted`` plus what it deleted;
    ``progress(done, total)`` after each batch.
    """
    while True:
        old, last_seq = delete_batch(after_seq)
        deleted += old
        if progress is not None:
            progress(deleted, max(total, deleted))
        if not old and (deleted >= total or last_seq == after_seq):
            return deleted
        after_seq = last_seq


KEY_CACHE_SECONDS = 2.0  # a revoked key stops working within this long
KEY_CACHE_MAX = 10_000


class KeyCache:
    """Key look-ups remembered for ``KEY_CACHE_SECONDS``, unknown keys too, at most ``KEY_CACHE_MAX``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, KeyRecord | None]] = {}

    def get(self, key_hash: str, load: Callable[[str], KeyRecord | None]) -> KeyRecord | None:
        now = self._clock()
        cached = self._entries.get(key_hash)
        if cached is not None and cached[0] > now:
            metrics.count("key_cache", "hit")
            return cached[1]
        metrics.count("key_cache", "miss")
        record = load(key_hash)
        if len(self._entries) >= KEY_CACHE_MAX:
            self._entries.clear()  # a flood of unknown keys cannot grow memory
        self._entries[key_hash] = (now + KEY_CACHE_SECONDS, record)
        return record

    def clear(self) -> None:
        self._entries.clear()


GROUP_MAX_ROWS = 25_000  # one transaction takes at most this many rows' worth of requests


def generation(received_at_ms: int, window_days: int) -> int:
    """The dedup generation of a moment: whole days since the epoch / the window's length in days."""
    return received_at_ms // MS_PER_DAY // window_days


@dataclass(eq=False)
class Job:
    """One request's rows on their way to a writer, and its answer once written."""

    tenant_id: str
    rows: list[tuple[Any, ...]]
    received_at_ms: int
    # Set once answered, for a request waiting in another thread than the writer's (the thread
    # writer's, PostgreSQL's); None where the answer comes back to the request's own thread.
    done: threading.Event | None = None
    outcome: StoreOutcome | None = None
    error: BaseException | None = None
    probe: bool = False  # no rows: BEGIN IMMEDIATE + ROLLBACK proves we can write (SQLite)
    # When its request stops waiting (time.monotonic(), the same clock in every process of the
    # machine): a job not begun by then is not written, since its client was told 502 (SQLite).
    deadline: float = float("inf")
    # The read side's counts of its rows (``Sums.summary()``), made by the request's process as it
    # sends the job to a writer process (SQLite's); None: the writer adds up its rows itself.
    summary: Any = None


def take_group(
    waiting: "queue.SimpleQueue[Any] | queue.Queue[Any]", first: Any, max_rows: int
) -> tuple[list[Any], bool]:
    """Group commit: ``first`` plus whatever jobs are already waiting, up to ``max_rows`` rows.

    Returns the jobs and whether the stop sentinel (None) was met.
    """
    jobs = [first]
    rows = len(first.rows)
    while rows < max_rows:
        try:
            job = waiting.get_nowait()
        except queue.Empty:
            return jobs, False
        if job is None:
            return jobs, True
        jobs.append(job)
        rows += len(job.rows)
    return jobs, False


def first_line(error: BaseException) -> str:
    """An error's first line (PostgreSQL's add the statement and a caret): a sentence stays one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
