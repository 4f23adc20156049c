"""Prometheus metrics (``GET /metrics``), through prometheus_client, correct across processes.

Every process that counts — a `drengr serve` process, its writer process,
each gunicorn worker — writes to prometheus_client's multiprocess files when
``PROMETHEUS_MULTIPROC_DIR`` is set, and ``/metrics`` adds them all up
(``MultiProcessCollector``). `drengr serve` sets it to a folder of its own
when it is not set (``use_private_folder``), so the writer process's commits
are in the same scrape; under gunicorn the operator sets it (docs/deploying.md).
Without it, a process reports its own counts.

prometheus_client picks its multiprocess mode when it is first imported, so
it is imported here lazily, at the first metric: after `serve` has chosen
the folder. The hot path costs a dict look-up and a counter increment (the
label children are cached); nothing here takes a lock of its own.

Imports nothing of drengr (a leaf).
"""

import atexit
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from typing import Any

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: a commit of a group of requests (SQLite's fsync, PostgreSQL's round trips).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GROUP_BUCKETS = (1, 10, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000)  # rows a commit

_metrics: dict[str, Any] = {}
_children: dict[tuple[str, tuple[str, ...]], Any] = {}
_building = threading.Lock()  # taken once, at the first metric: two threads must not both register


def use_private_folder() -> str | None:
    """For `drengr serve`: a multiprocess folder of its own unless one is set; removed at exit."""
    if os.environ.get(MULTIPROC_VARIABLE):
        return None
    folder = tempfile.mkdtemp(prefix="drengr-metrics-")
    os.environ[MULTIPROC_VARIABLE] = folder  # the writer process inherits it
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _build() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

    disable_created_metrics()  # the *_created series: noise for every counter and histogram
    return {
        "requests": Counter(
            "drengr_http_requests", "HTTP requests answered, by route and status.", ("route", "status")
        ),
        "body_bytes": Counter("drengr_http_request_body_bytes", "Request body bytes received (as sent).", ()),
        "stored": Counter("drengr_events_stored", "Events stored.", ()),
        "dropped": Counter(
            "drengr_events_dropped",
            "Events accepted with a 200 but not stored, by reason (duplicate, over_daily_cap, missing_id, ...).",
            ("reason",),
        ),
        "stripped": Counter(
            "drengr_keys_stripped",
            "Keys left out of stored events, by reason (pii_key_removed, key_truncated, ...).",
            ("reason",),
        ),
        "auth_failures": Counter(
            "drengr_auth_failures", "Requests refused with 401, by kind of failure.", ("failure",)
        ),
        "commit_seconds": Histogram(
            "drengr_store_commit_seconds", "Time to commit one group of requests.", (), buckets=COMMIT_BUCKETS
        ),
        "group_rows": Histogram(
            "drengr_store_commit_group_rows", "Rows in one committed group.", (), buckets=GROUP_BUCKETS
        ),
        "dedup_ids": Gauge(
            "drengr_dedup_window_ids",
            "Event ids in a SQLite writer's in-memory dedup window (the largest of the live writers).",
            (),
            multiprocess_mode="livemax",
        ),
        "dedup_bytes": Gauge(
            "drengr_dedup_window_bytes",
            "Memory a SQLite writer's dedup window takes, in bytes (the largest of the live writers).",
            (),
            multiprocess_mode="livemax",
        ),
        "store_errors": Counter(
            "drengr_store_errors", "Store operations that failed, by operation.", ("operation",)
        ),
        "key_cache": Counter(
            "drengr_key_cache_lookups", "Write-key look-ups, answered from the cache (hit) or the store (miss).",
            ("result",),
        ),
    }  # fmt: skip


# Label values known in advance start at 0, so a scrape lists them before the first one happens.
_KNOWN_LABELS = {
    "store_errors": ("write", "key_lookup"),
    "key_cache": ("hit", "miss"),
    "auth_failures": ("missing", "malformed", "unknown_key", "revoked", "secret_key"),
    "dropped": (
        "duplicate",
        "over_daily_cap",
        "missing_id",
        "no_event_name",
        "unknown_type",
        "not_an_object",
    ),
    "stripped": ("pii_key_removed", "key_truncated", "value_truncated", "over_dim_cap", "over_measure_cap"),
}


def _ensure_built() -> None:
    if not _metrics:
        with _building:
            if not _metrics:
                built = _build()
                for name, values in _KNOWN_LABELS.items():
                    for label in values:
                        built[name].labels(label)
                _metrics.update(built)


def metric(name: str, *labels: str) -> Any:
    """The metric (or its child for ``labels``), created at first use."""
    child = _children.get((name, labels))
    if child is None:
        _ensure_built()
        found = _metrics[name]
        child = found.labels(*labels) if labels else found
        _children[(name, labels)] = child
    return child


def count(name: str, *labels: str, amount: float = 1) -> None:
    if amount:
        metric(name, *labels).inc(amount)


def count_all(name: str, by_label: Iterable[tuple[str, float]]) -> None:
    for label, amount in by_label:
        if amount:
            metric(name, label).inc(amount)


def exposition() -> tuple[bytes, str]:
    """The scrape: every process's metrics (multiprocess mode) or this one's; body and content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    _ensure_built()  # so a scrape before any request lists every metric
    if os.environ.get(MULTIPROC_VARIABLE):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """A worker's live gauges stop counting (gunicorn's ``child_exit`` hook; the writer process's end)."""
    if os.environ.get(MULTIPROC_VARIABLE):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
