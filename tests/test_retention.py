"""Retention: `drengr prune --before AGE` and `serve --retention AGE`, on SQLite and PostgreSQL.

Events received before the cut-off go, in bounded batches (each its own
transaction); newer ones stay; a resend of a kept event is still caught as a
repeat; the daily usage and drop counts of the days before the cut-off go,
today's stay. The shortest age is 15 days (the SQLite dedup window's rows).
"""

import subprocess
import sys
import time
from typing import Any

import pytest

from drengr.core.limits import MS_PER_DAY
from drengr.core.timestamps import format_ms
from drengr.store import open_store

from .support.app import ENGINES, read_rows
from .support.realserver import create_db, launch, no_stray_servers  # noqa: F401 (an autouse fixture)

NOW_MS = 1_796_000_000_000  # 2026-11-30; the stores run on this clock
HANG_GUARD_SECONDS = 60


def event(event_id: str, received_ms: int) -> tuple[Any, ...]:
    at = format_ms(received_ms)
    return ("acme", event_id, "e", "track", "u", "u", at, at, "{}", "{}", None)


@pytest.fixture
def receipt_ms():
    return lambda: NOW_MS


def fill(store: Any, old: int, new: int) -> None:
    """``old`` events received 40 days ago (in several writes), ``new`` ones 1 day ago."""
    for start in range(0, old, 10):
        ids = range(start, min(start + 10, old))
        store.write("acme", [event(f"old{i}", NOW_MS - 40 * MS_PER_DAY + i) for i in ids], NOW_MS)
    store.write("acme", [event(f"new{i}", NOW_MS - MS_PER_DAY) for i in range(new)], NOW_MS)


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_prune_deletes_in_batches_and_keeps_dedup_and_todays_counts(db_path, store):
    fill(store, old=23, new=4)
    store.add_drop_counts({("acme", NOW_MS // MS_PER_DAY - 40, "missing_id"): 3,
                           ("acme", NOW_MS // MS_PER_DAY, "missing_id"): 2})  # fmt: skip
    seen: list[tuple[int, int]] = []
    deleted = store.prune_events(
        NOW_MS - 30 * MS_PER_DAY, batch_rows=5, progress=lambda d, t: seen.append((d, t))
    )
    assert deleted == 23
    assert seen[-1] == (23, 23) and len(seen) >= 5  # at least 23 / 5 batches, each reported
    assert sorted(row["event_id"] for row in read_rows(db_path)) == [f"new{i}" for i in range(4)]
    # A resend of a kept event is still a repeat (the dedup window is untouched).
    outcome = store.write("acme", [event("new0", NOW_MS), event("fresh", NOW_MS)], NOW_MS)
    assert (outcome.stored, outcome.duplicates) == (1, 1)
    assert store.drop_counts("acme") == {"missing_id": 2}  # the 40-day-old day went
    assert store.prune_events(NOW_MS - 30 * MS_PER_DAY) == 0  # nothing more: idempotent


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_prune_goes_past_rows_a_clock_that_ran_ahead_stamped_later(db_path, store):
    """Old rows, then more than a batch of rows stamped 60 days ahead (a clock that ran ahead), then
    old rows again (the clock put right, then stepped back): every old row goes, the others stay."""
    for start in range(0, 12, 4):
        store.write(
            "acme", [event(f"old{i}", NOW_MS - 40 * MS_PER_DAY) for i in range(start, start + 4)], NOW_MS
        )
    store.write("acme", [event(f"ahead{i}", NOW_MS + 60 * MS_PER_DAY) for i in range(12)], NOW_MS)
    store.write("acme", [event(f"late{i}", NOW_MS - 40 * MS_PER_DAY) for i in range(7)], NOW_MS)
    assert store.prune_events(NOW_MS - 30 * MS_PER_DAY, batch_rows=5) == 19
    assert sorted(row["event_id"] for row in read_rows(db_path)) == sorted(f"ahead{i}" for i in range(12))


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_drengr_prune_from_the_command_line(db_path, engine, tmp_path):
    where = ["--db", str(db_path)] if engine == "sqlite" else ["--store", str(db_path)]
    store = open_store(str(db_path), clock=lambda: NOW_MS / 1000)
    try:
        store.create_key("acme")
        fill(store, old=12, new=3)
    finally:
        store.close()
    offset = str((NOW_MS / 1000) - time.time())  # the command runs at NOW_MS too
    env = {"DRENGR_CLOCK_OFFSET": offset}
    result = drengr("prune", "--before", "30d", *where, env=env)
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr.startswith("Deleted 12 events received before 2026-10-31T")
        and "Traceback" not in result.stderr
    )
    assert len(read_rows(db_path)) == 3
    short = drengr("prune", "--before", "7d", *where, env=env)
    assert short.returncode == 2 and short.stderr.startswith("drengr: --before 7d is shorter than 15 days")
    assert len(read_rows(db_path)) == 3
    # A 3-day dedup window keeps 6 days of rows and a day: 7d is long enough then, 6d is not.
    window = drengr("prune", "--before", "6d", "--dedup-window-days", "3", *where, env=env)
    assert window.returncode == 2 and window.stderr.startswith("drengr: --before 6d is shorter than 7 days")
    window = drengr("prune", "--before", "7d", *where, env={**env, "DRENGR_DEDUP_WINDOW_DAYS": "3"})
    assert window.returncode == 0 and window.stderr.startswith("Deleted 0 events"), window.stderr
    nonsense = drengr("prune", "--before", "soon", *where, env=env)
    assert nonsense.returncode == 2 and "is not an age" in nonsense.stderr


def drengr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from .support.realserver import child_env

    return subprocess.run(
        [sys.executable, "-m", "drengr", *args], capture_output=True, text=True, env=child_env(env),
        timeout=HANG_GUARD_SECONDS,
    )  # fmt: skip


def test_serve_with_retention_prunes_at_start(tmp_path):
    db = tmp_path / "retention.db"
    key = create_db(db)
    real_now = int(time.time() * 1000)
    store = open_store(str(db))
    store.write("acme", [event(f"old{i}", real_now - 100 * MS_PER_DAY) for i in range(7)], real_now)
    store.write("acme", [event("recent", real_now - 10 * MS_PER_DAY)], real_now)
    store.close()
    server = launch(db, key, "--retention", "90d")
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS  # a hang guard: the first pass runs at start
        while len(read_rows(db)) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.post("/v1/track", {"event": "x", "userId": "u", "messageId": "after"}).status == 200
    finally:
        assert server.stop() == 0
    assert sorted(row["event_id"] for row in read_rows(db)) == ["after", "recent"]
    assert "retention: deleted 7 events" in server.log_text()
