"""Drop accounting: what was accepted with a 200 but not stored, by tenant and reason.

The contract makes drops silent (SPEC "Limits and responses": 200 even when
every item was dropped), so a user cannot tell "not sent" from "sent and
dropped" without this. Fed once per ingest request from the machine's
Response (``dropped`` {reason: count}, the store's ``outcome``) by the web
shell; read by ``GET /v1/drops`` and the debugger page.

Bounded, in process memory: counters for at most ``max_tenants`` tenants (the
least recently dropped-for tenant is forgotten first) and a ring of the last
``samples_per_tenant`` samples each. A sample holds the reason, the request
path and the client library (User-Agent), with anything shaped like one of
our keys cut out, and the *names* of the keys the reason is about — never a
value, never PII. Each process keeps its own (several gunicorn workers: each
shows what it handled); nothing survives a restart.

Imports only the standard library; no web framework, no store.
"""

import re
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .core.timestamps import format_ms

DEFAULT_MAX_TENANTS = 1_000
DEFAULT_SAMPLES_PER_TENANT = 100
MAX_PATH_CHARS = 200
MAX_LIBRARY_CHARS = 80

# Reasons, with the sentence a user reads and the names of the keys involved.
# The first four are the mapper's (drengr.core.mapping DROP_*); the store adds
# the next two; a refused request (4xx/502 after the key was known) is counted
# under its error code.
REASONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "missing_id": ("userId and anonymousId both missing", ("userId", "anonymousId")),
    "no_event_name": ("a track call with no usable event name", ("event",)),
    "unknown_type": ("the type is not one of track, identify, page, screen, group, alias", ("type",)),
    "not_an_object": ("a batch item is not a JSON object", ()),
    "over_daily_cap": ("over the tenant's daily cap of events", ()),
    "duplicate": ("a repeat of an event already stored (same messageId)", ("messageId",)),
    "request_too_large": ("the whole request was refused: body over 500 KB", ()),
    "message_too_large": ("the whole request was refused: one item over 32 KB", ()),
    "batch_too_large": ("the whole request was refused: more than 2,500 items", ()),
    "invalid_json": ("the whole request was refused: the body is not a JSON object", ()),
    "ingest_failed": ("the whole request failed: the store could not write (the client retries)", ()),
}

_KEY_PATTERN = re.compile(r"drengr_[a-z]{2}_[A-Za-z0-9_\-]*")
_REDACTED = "drengr_[redacted]"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def describe(reason: str) -> str:
    return REASONS.get(reason, (reason.replace("_", " "), ()))[0]


def _clean(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return _CONTROL.sub("?", _KEY_PATTERN.sub(_REDACTED, text))[:limit]


@dataclass(frozen=True, slots=True)
class DropSample:
    at: str  # when the request was handled, UTC
    reason: str
    count: int  # items of this request dropped for this reason
    path: str
    library: str  # the User-Agent, cut
    keys: tuple[str, ...]  # the names of the keys involved, never their values

    def as_json(self) -> dict[str, Any]:
        sample = asdict(self)
        sample["keys"] = list(self.keys)
        sample["description"] = describe(self.reason)
        return sample


class _Tenant:
    __slots__ = ("counts", "samples")

    def __init__(self, samples: int) -> None:
        self.counts: Counter[str] = Counter()
        self.samples: deque[DropSample] = deque(maxlen=samples)


class DropLog:
    """Thread-safe, bounded counters and samples of drops, by tenant."""

    def __init__(
        self,
        max_tenants: int = DEFAULT_MAX_TENANTS,
        samples_per_tenant: int = DEFAULT_SAMPLES_PER_TENANT,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.max_tenants = max_tenants
        self.samples_per_tenant = samples_per_tenant
        self._clock_ms = clock_ms
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, response: Any, request_path: str, user_agent: str | None) -> None:
        """Count what the machine's Response says was not stored. Never raises into the request."""
        tenant_id = getattr(response, "tenant_id", None)
        if not tenant_id:
            return  # no tenant (an auth failure, a preflight): nobody to show it to
        reasons: dict[str, int] = dict(getattr(response, "dropped", None) or {})
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
        at = format_ms(self._clock_ms())
        path = _clean(request_path, MAX_PATH_CHARS)
        library = _clean(user_agent, MAX_LIBRARY_CHARS)
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None:
                tenant = self._tenants[tenant_id] = _Tenant(self.samples_per_tenant)
                while len(self._tenants) > self.max_tenants:
                    self._tenants.popitem(last=False)
            else:
                self._tenants.move_to_end(tenant_id)
            for reason, count in sorted(reasons.items()):
                tenant.counts[reason] += count
                keys = REASONS.get(reason, ("", ()))[1]
                tenant.samples.append(DropSample(at, reason, count, path, library, keys))

    def counts(self, tenant_id: str) -> dict[str, int]:
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            return dict(sorted(tenant.counts.items())) if tenant else {}

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
