"""Drop accounting: what was accepted with a 200 but not stored, by tenant and reason.

The contract makes drops silent (docs/mapping.md "What lands where": 200 even when
every item was dropped), so a user cannot tell "not sent" from "sent and
dropped" without this. Fed once per ingest request from the machine's
Response (``dropped`` items {reason: count}, ``stripped`` keys {reason:
(count, names)}, the store's ``outcome``) by the web shell; read by
``GET /v1/drops`` and the debugger page. Items and keys are counted under
different reasons: an item is a whole event not stored, a key is one
property (or nested key) left out of an event that was stored.

Counts: given a ``sink`` (the store: ``add_drop_counts`` / ``drop_counts``),
they are added to the ``drop_counts`` table by (tenant, UTC day, reason) once
a second by a background thread, so they survive restarts and every process
(several gunicorn workers, several nodes on PostgreSQL) reads the same totals:
what the table holds plus what this process has not flushed yet. A failed
flush is kept and retried (up to ``MAX_PENDING`` counters; past that, the
oldest are given up and logged). Without a sink — and for the samples
always — everything is in process memory: counters for at most
``max_tenants`` tenants (the least recently dropped-for tenant is forgotten
first) and a ring of the last ``samples_per_tenant`` samples each. Samples
are per process and do not survive a restart.

A sample holds the reason, the request path and the client library
(User-Agent), with anything shaped like one of our keys cut out, and the
*names* of the keys the reason is about — never a value, never PII.

Imports only the standard library; no web framework, no store.
"""

import functools
import logging
import re
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from . import clock
from .core.limits import MS_PER_DAY
from .core.timestamps import format_ms
from .logs import redact_keys

log = logging.getLogger("drengr.drops")

DEFAULT_MAX_TENANTS = 1_000
DEFAULT_SAMPLES_PER_TENANT = 100
MAX_PATH_CHARS = 200
MAX_LIBRARY_CHARS = 80
MAX_KEY_NAME_CHARS = 64
MAX_EVENT_ID_CHARS = 128
FLUSH_SECONDS = 1.0
MAX_PENDING = 100_000  # unflushed (tenant, day, reason) counters kept while the store refuses them
MAX_FAILURES = 60  # flushes in a row that fail before the flusher rests until the next drop


class DropSink(Protocol):
    """Where counts persist: the store."""

    def add_drop_counts(self, counts: dict[tuple[str, int, str], int]) -> None:
        """Add to ``drop_counts`` by (tenant_id, day since the epoch, reason); raises on failure."""
        ...

    def drop_counts(self, tenant_id: str) -> dict[str, int]:
        """Every count of the tenant, by reason, all days."""
        ...


# Reasons, with the sentence a user reads and the names of the keys involved.
# The first four are the mapper's (drengr.mapping's DROP_*); the store adds
# the next two; a refused request (4xx/502 after the key was known) is counted
# under its error code.
REASONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "missing_id": ("userId and anonymousId both missing", ("userId", "anonymousId")),
    "no_event_name": ("a track call with no usable event name", ("event",)),
    "unknown_type": ("the type is not one of track, identify, page, screen, group, alias", ("type",)),
    "not_an_object": ("a batch item is not a JSON object", ()),
    "over_daily_cap": ("over the tenant's daily cap of events", ()),
    # Keys left out of events that were stored (the mapper's STRIP_*): names come with each request.
    "pii_key_removed": ("a key that looks like personal data was removed (the PII list)", ()),
    "key_truncated": ("a property key was cut to 64 characters", ()),
    "value_truncated": ("a dim value was cut to 256 characters", ()),
    "over_dim_cap": ("a property past the first 40 dims was not stored", ()),
    "over_measure_cap": ("a number past the first 20 measures was not stored", ()),
    "duplicate": ("a repeat of an event already stored (same messageId)", ("messageId",)),
    "request_too_large": ("the whole request was refused: body over 500 KB", ()),
    "message_too_large": ("the whole request was refused: one item over 32 KB", ()),
    "batch_too_large": ("the whole request was refused: more than 2,500 items", ()),
    "invalid_json": ("the whole request was refused: the body is not a JSON object", ()),
    "ingest_failed": ("the whole request failed: the store could not write (the client retries)", ()),
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def describe(reason: str) -> str:
    return REASONS.get(reason, (reason.replace("_", " "), ()))[0]


def _clean(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return _CONTROL.sub("?", redact_keys(text))[:limit]


_clean_cached = functools.lru_cache(maxsize=4096)(_clean)


def _clean_repeated(text: str | None, limit: int) -> str:
    """``_clean`` for what repeats from one request to the next (paths, User-Agents, key names; not
    event ids): each is cleaned once. Bounded: 4,096 texts of up to 256 characters are kept, and a
    client that sends new ones each time only evicts older ones."""
    if text and len(text) <= 256:
        return _clean_cached(text, limit)
    return _clean(text, limit)


@dataclass(frozen=True, slots=True)
class DropSample:
    at_ms: int  # when the request was handled (shown as UTC by ``at``)
    reason: str
    count: int  # items (or keys, for a strip reason) of this request dropped for this reason
    path: str
    library: str  # the User-Agent, cut
    keys: tuple[str, ...]  # the names of the keys involved, never their values
    # For a strip reason: which stored events lost which keys, (event_id, key names), the first few.
    events: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def at(self) -> str:
        """When the request was handled, UTC: formatted when shown, not for every drop."""
        return format_ms(self.at_ms)

    def as_json(self) -> dict[str, Any]:
        sample = {"at": self.at, **asdict(self)}
        del sample["at_ms"]
        sample["keys"] = list(self.keys)
        sample["events"] = [{"event_id": event_id, "keys": list(keys)} for event_id, keys in self.events]
        sample["description"] = describe(self.reason)
        return sample


class _Tenant:
    __slots__ = ("counts", "samples")

    def __init__(self, samples: int) -> None:
        self.counts: Counter[str] = Counter()  # without a sink only
        self.samples: deque[DropSample] = deque(maxlen=samples)


class DropLog:
    """Thread-safe, bounded counters and samples of drops, by tenant."""

    def __init__(
        self,
        max_tenants: int = DEFAULT_MAX_TENANTS,
        samples_per_tenant: int = DEFAULT_SAMPLES_PER_TENANT,
        clock_ms: Callable[[], int] = clock.now_ms,
        sink: DropSink | None = None,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.max_tenants = max_tenants
        self.samples_per_tenant = samples_per_tenant
        self._clock_ms = clock_ms
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        self._lock = threading.Lock()
        self._sink = sink
        self._flush_seconds = flush_seconds
        self._pending: Counter[tuple[str, int, str]] = Counter()  # not yet in the sink
        self._flush_lock = threading.Lock()  # a read of the sink never sees a flush half done
        self._wake = threading.Event()
        self._closed = False
        self._flusher: threading.Thread | None = None

    def record(self, response: Any, request_path: str, user_agent: str | None) -> None:
        """Count what the machine's Response says was not stored. Never raises into the request."""
        tenant_id = getattr(response, "tenant_id", None)
        if not tenant_id:
            return  # no tenant (an auth failure, a preflight): nobody to show it to
        reasons: dict[str, int] = dict(getattr(response, "dropped", None) or {})
        names: dict[str, tuple[str, ...]] = {}
        for reason, (count, keys) in (getattr(response, "stripped", None) or {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
            names[reason] = tuple(_clean_repeated(key, MAX_KEY_NAME_CHARS) for key in keys)
        events: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for event_id, pairs in getattr(response, "stripped_events", None) or ():
            by_reason: dict[str, list[str]] = {}
            for reason, key in pairs:
                by_reason.setdefault(reason, []).append(_clean_repeated(key, MAX_KEY_NAME_CHARS))
            for reason, keys in by_reason.items():
                events.setdefault(reason, []).append((_clean(event_id, MAX_EVENT_ID_CHARS), tuple(keys)))
        outcome = getattr(response, "outcome", None)
        if outcome is not None:
            if outcome.over_cap:
                reasons["over_daily_cap"] = reasons.get("over_daily_cap", 0) + outcome.over_cap
            if outcome.duplicates:
                reasons["duplicate"] = reasons.get("duplicate", 0) + outcome.duplicates
        error_code = getattr(response, "error_code", None)
        if error_code and getattr(response, "status", 200) != 401:
            reasons[error_code] = reasons.get(error_code, 0) + 1
        reasons = {reason: n for reason, n in reasons.items() if n > 0}
        if not reasons:
            return
        now_ms = self._clock_ms()
        path = _clean_repeated(request_path, MAX_PATH_CHARS)
        library = _clean_repeated(user_agent, MAX_LIBRARY_CHARS)
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None:
                tenant = self._tenants[tenant_id] = _Tenant(self.samples_per_tenant)
                while len(self._tenants) > self.max_tenants:
                    self._tenants.popitem(last=False)
            else:
                self._tenants.move_to_end(tenant_id)
            for reason, count in sorted(reasons.items()):
                if self._sink is None:
                    tenant.counts[reason] += count
                else:  # counted in the sink: pending here until the next flush
                    self._pending[(tenant_id, now_ms // MS_PER_DAY, reason)] += count
                keys = names.get(reason) or REASONS.get(reason, ("", ()))[1]
                tenant.samples.append(
                    DropSample(now_ms, reason, count, path, library, keys, tuple(events.get(reason, ())))
                )
            if self._sink is not None and self._flusher is None and not self._closed:
                self._flusher = threading.Thread(target=self._flush_loop, name="drengr-drops", daemon=True)
                self._flusher.start()

    def counts(self, tenant_id: str) -> dict[str, int]:
        """All counts of the tenant, by reason: the sink's plus what is not flushed yet."""
        if self._sink is None:
            with self._lock:
                tenant = self._tenants.get(tenant_id)
                return dict(sorted(tenant.counts.items())) if tenant else {}
        with self._flush_lock:
            totals = Counter(self._sink.drop_counts(tenant_id))
            with self._lock:
                for (pending_tenant, _day, reason), count in self._pending.items():
                    if pending_tenant == tenant_id:
                        totals[reason] += count
        return dict(sorted(totals.items()))

    def flush(self) -> bool:
        """Write what is pending to the sink now; on failure it stays pending. Never raises.

        True when nothing is left pending.
        """
        if self._sink is None:
            return True
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, Counter()
            if not batch:
                return True
            try:
                self._sink.add_drop_counts(dict(batch))
                return True
            except Exception as error:  # noqa: BLE001 - the store is down: keep the counts, retry
                with self._lock:
                    batch.update(self._pending)
                    self._pending = batch
                    over = len(self._pending) - MAX_PENDING
                    if over > 0:  # oldest days first
                        for key in sorted(self._pending, key=lambda k: k[1])[:over]:
                            del self._pending[key]
                log.warning("drop counts not saved yet (%s); retrying", type(error).__name__)
                return False

    def close(self) -> None:
        """Stop the flusher after a last flush (before the store closes)."""
        with self._lock:
            self._closed = True
            flusher = self._flusher
        self._wake.set()
        if flusher is not None:
            flusher.join(timeout=10)
        self.flush()

    def _flush_loop(self) -> None:
        """Flush every ``flush_seconds`` while there is something to flush, then end.

        The thread (and the store connection it opened) does not outlive the
        drops: the next ``record`` starts another. After ``MAX_FAILURES`` failed
        flushes in a row it ends too, keeping the counts for the next one.
        """
        failures = 0
        while not self._closed and failures < MAX_FAILURES:
            self._wake.wait(self._flush_seconds)
            if self._closed:
                break
            failures = 0 if self.flush() else failures + 1
            with self._lock:
                if not self._pending:
                    self._flusher = None
                    return
        with self._lock:
            if self._flusher is threading.current_thread():
                self._flusher = None

    def samples(self, tenant_id: str, limit: int = DEFAULT_SAMPLES_PER_TENANT) -> list[DropSample]:
        """The most recent samples first."""
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None or limit <= 0:
                return []
            return list(tenant.samples)[::-1][:limit]

    def tenants(self) -> list[str]:
        with self._lock:
            return list(self._tenants)
