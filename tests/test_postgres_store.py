"""The store contract against a real PostgreSQL server, and SQLite ⇄ PostgreSQL parity.

The server (tests/support/postgres.py): ``DRENGR_TEST_POSTGRES_DSN`` when set,
otherwise one the session starts with ``.ci/postgres.sh``; without PostgreSQL
these tests skip with one line saying what to install — and under ``CI``
(``CI=true``) they fail instead.

Every test gets a schema of its own (``search_path`` in the DSN), dropped after.
"""

import base64
import gzip
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drengr import clock as drengr_clock
from drengr.core.auth import hash_key
from drengr.core.limits import MS_PER_DAY
from drengr.core.outcome import StoreOutcome
from drengr.store import SQLiteStore, StoreError, open_store
from drengr.store.base import Job
from drengr.web import Config, create_app

from .support.app import TENANT, post, read_rows
from .support.stores import DAY0, Clock, row

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)

IN_CI = bool(os.environ.get("CI"))

try:
    import psycopg

    from drengr.store.migrate import import_sqlite
    from drengr.store.postgres import PostgresStore, clean_json, clean_rows

    from .support.postgres import (
        admin,
        count,
        pg_database,  # noqa: F401 (a fixture)
        pg_dsn,  # noqa: F401 (a fixture)
        pg_rows,
        query,
        server_dsn,
        with_schema,
    )
except ImportError as error:  # pragma: no cover - psycopg is in the `test` extra
    if IN_CI:
        raise
    pytest.skip(f"psycopg is not installed ({error}): pip install '.[test]'", allow_module_level=True)

SUCCESS = b'{"success": true}'
# A generous hang guard, not a speed limit (speed is bench/'s): a wait that never ends
# fails the test after this long instead of hanging the suite.
HANG_GUARD_SECONDS = 60


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_dsn, clock=Clock(DAY0))
    yield store
    store.close()


# --------------------------------------------------------------------------- schema and migrations


def test_the_server_is_there() -> None:
    """Under CI this fails (never skips) when no server could be started."""
    assert query(server_dsn(), "SELECT 1") == [(1,)]


def test_semantic_events_has_the_spec_columns(pg: PostgresStore, pg_dsn: str) -> None:
    columns = query(
        pg_dsn,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'semantic_events' AND table_schema = current_schema() ORDER BY ordinal_position",
    )
    assert columns[:10] == [
        ("tenant_id", "text", "NO"), ("event_id", "text", "NO"), ("event_name", "text", "NO"),
        ("event_type", "text", "NO"), ("external_id", "text", "YES"), ("install_id", "text", "NO"),
        ("occurred_at", "text", "NO"), ("received_at", "text", "NO"), ("dims", "jsonb", "NO"),
        ("measures", "jsonb", "NO"),
    ]  # fmt: skip
    assert ("library", "text", "YES") in columns  # an extra column: the sending SDK
    # Append-only: no unique index (dedup lives in event_ids); one B-tree for the read API's pages,
    # a BRIN index the read side's builder finds new rows with.
    schema = query(pg_dsn, "SELECT current_schema()")[0][0]
    assert query(pg_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'semantic_events' "
                 "AND schemaname = current_schema() ORDER BY indexname") == [  # fmt: skip
        (f"CREATE INDEX semantic_events_seq ON {schema}.semantic_events USING brin (seq)",),
        (f"CREATE INDEX semantic_events_tenant_seq ON {schema}.semantic_events USING btree (tenant_id, seq)",),
    ]  # fmt: skip


def test_a_version_1_database_gets_the_library_column(pg_dsn: str) -> None:
    """A database made before `library` existed: migrating adds it, old rows read NULL, new rows have it."""
    PostgresStore(pg_dsn, clock=Clock(DAY0)).close()
    query(pg_dsn, "DROP INDEX semantic_events_tenant_seq")
    query(pg_dsn, "ALTER TABLE semantic_events DROP COLUMN library")
    query(pg_dsn, "ALTER TABLE tenants DROP COLUMN pii_allow")  # version 3's
    query(pg_dsn, "DROP TABLE event_rollups, measure_rollups")  # version 4's
    query(pg_dsn, "DROP TABLE hourly_event_rollups, hourly_measure_rollups")  # version 5's
    query(pg_dsn, "DROP INDEX semantic_events_seq")  # version 6's
    query(pg_dsn, "DROP TABLE user_index, name_blocks")
    query(
        pg_dsn,
        "DELETE FROM drengr_meta WHERE key IN ('rollups_from_seq', 'read_side_seq', 'indexes_from_seq')",
    )
    query(pg_dsn, "UPDATE drengr_meta SET value = '1' WHERE key = 'schema_version'")
    query(pg_dsn, "INSERT INTO semantic_events (tenant_id, event_id, event_name, event_type, install_id,"
                  " occurred_at, received_at, dims, measures) VALUES ('acme', 'old', 'e', 'track', 'u',"
                  " '2026-11-26T00:00:00.000Z', '2026-11-26T00:00:00.000Z', '{}', '{}')")  # fmt: skip
    store = PostgresStore(pg_dsn, clock=Clock(DAY0))
    try:
        assert store.write("acme", [row("new")], DAY0).stored == 1
    finally:
        store.close()
    assert [(r["event_id"], r["library"]) for r in pg_rows(pg_dsn)] == [
        ("old", None), ("new", "analytics-python 2.4.0")
    ]  # fmt: skip
    assert query(pg_dsn, "SELECT value FROM drengr_meta WHERE key = 'schema_version'") == [("7",)]
    assert query(pg_dsn, "SELECT pii_allow FROM tenants") == []  # the column is back (no tenant yet)
    # The rollups begin after the old row (seq 1): only the new one is counted, stats scan meanwhile.
    assert query(pg_dsn, "SELECT value FROM drengr_meta WHERE key = 'rollups_from_seq'") == [("2",)]
    assert query(pg_dsn, "SELECT event_name, events FROM event_rollups") == [("e", 1)]
    # The user and name indexes too (from indexes_from_seq on), built as the store closed.
    assert query(pg_dsn, "SELECT key, value FROM drengr_meta WHERE key IN ('read_side_seq', 'indexes_from_seq') "
                         "ORDER BY key") == [("indexes_from_seq", "2"), ("read_side_seq", "2")]  # fmt: skip
    assert query(pg_dsn, "SELECT event_name, block, first_seq, last_seq FROM name_blocks") == [("e", 0, 2, 2)]


def test_a_migration_outlasts_the_statement_timeout(pg_database: str) -> None:
    """Version 7 rewrites event_ids once: minutes with tens of millions of ids, longer than the statement
    timeout every other statement keeps. Here the rewrite waits 1.5 s for a lock another session holds,
    against a 500 ms timeout, and the node still starts (before: it failed at every start).

    A database of its own: the migration's advisory lock is the database's, and this test holds it
    1.5 s, so another run of it on the same database (tests/test_any_date.py runs the suite twice at
    once, its clock shifted) would wait for it past its 500 ms."""
    pg_dsn = pg_database
    PostgresStore(pg_dsn, clock=Clock(DAY0)).close()
    query(pg_dsn, "INSERT INTO event_ids (tenant_id, event_id, gen) VALUES ('acme', 'old', 2970)")
    query(pg_dsn, "UPDATE drengr_meta SET value = '6' WHERE key = 'schema_version'")
    with psycopg.connect(pg_dsn) as holder:  # a transaction of its own, until the timer commits it
        holder.execute("LOCK TABLE event_ids IN SHARE MODE")  # the rewrite's UPDATE waits for it
        release = threading.Timer(1.5, holder.commit)
        release.start()
        try:
            PostgresStore(pg_dsn, clock=Clock(DAY0), statement_timeout_ms=500).close()
        finally:
            release.join()
    assert query(pg_dsn, "SELECT gen FROM event_ids") == [(2970 * 7 + 6,)]


def test_migrations_are_idempotent_and_safe_when_nodes_start_together(pg_dsn: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            PostgresStore(pg_dsn, clock=Clock(DAY0)).close()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = PostgresStore(pg_dsn, clock=Clock(DAY0))  # and once more on a migrated database
    assert store.is_new()
    store.close()
    assert query(pg_dsn, "SELECT value FROM drengr_meta WHERE key = 'schema_version'") == [("7",)]


def test_a_node_starting_beside_a_serving_one_takes_no_table_lock(pg_dsn: str) -> None:
    """On a database already at this version, migrate() runs no DDL: a node that starts while another
    holds a table in a transaction neither waits for it nor deadlocks with it (it did: ALTER TABLE …
    IF NOT EXISTS takes an exclusive lock)."""
    PostgresStore(pg_dsn, clock=Clock(DAY0)).close()
    holder = psycopg.connect(pg_dsn)
    try:
        holder.execute("SELECT count(*) FROM semantic_events")  # a transaction holding the table
        started: list[float] = []

        def start() -> None:
            PostgresStore(pg_dsn, clock=Clock(DAY0)).close()
            started.append(time.monotonic())

        thread = threading.Thread(target=start)
        thread.start()
        thread.join(timeout=20)
        assert started, "the second node waited for the table lock"
    finally:
        holder.rollback()
        holder.close()
        thread.join()


def test_open_store_picks_the_engine_by_url(pg_dsn: str, tmp_path: Path) -> None:
    uri = with_schema(server_dsn(), query(pg_dsn, "SELECT current_schema()")[0][0])
    store = open_store(uri)
    assert isinstance(store, PostgresStore)
    store.close()
    lite = open_store(str(tmp_path / "x.db"))
    assert isinstance(lite, SQLiteStore)
    lite.close()


def test_an_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot connect"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout=2)


# --------------------------------------------------------------------------- keys


def test_keys_are_stored_hashed(pg: PostgresStore, pg_dsn: str) -> None:
    assert pg.is_new()
    key = pg.create_key("acme", "publishable")
    secret = pg.create_key("acme", "secret")
    assert not pg.is_new()
    stored = query(pg_dsn, "SELECT key_hash, key_id, kind FROM api_keys ORDER BY kind")
    assert stored == [
        (hash_key(key), hash_key(key)[:12], "publishable"),
        (hash_key(secret), hash_key(secret)[:12], "secret"),
    ]
    dump = json.dumps(query(pg_dsn, "SELECT * FROM api_keys"))
    assert key not in dump and secret not in dump and key[10:] not in dump
    record = pg.lookup_key(hash_key(key))
    assert record is not None and (record.tenant_id, record.kind, record.revoked) == (
        "acme",
        "publishable",
        False,
    )
    assert pg.lookup_key(hash_key("drengr_pk_unknown")) is None
    listed = {(info.key_id, info.tenant_id, info.kind, info.revoked_at) for info in pg.list_keys()}
    assert listed == {
        (hash_key(key)[:12], "acme", "publishable", None),
        (hash_key(secret)[:12], "acme", "secret", None),
    }
    assert pg.revoke_key(hash_key(key)[:12]) is True
    assert pg.revoke_key(key) is False  # already revoked
    record = pg.lookup_key(hash_key(key))
    assert record is not None and record.revoked


def test_revoked_and_secret_keys_do_not_ingest(pg: PostgresStore) -> None:
    app = create_app(Config(db="unused"), store=pg)
    client = app.test_client()
    key, secret = pg.create_key(TENANT), pg.create_key(TENANT, "secret")
    event = {"type": "track", "event": "x", "userId": "u"}
    assert post(client, "/v1/track", event, key).status_code == 200
    assert post(client, "/v1/track", event, secret).status_code == 401
    pg.revoke_key(key)
    assert post(client, "/v1/track", event, key).status_code == 401


# --------------------------------------------------------------------------- dedup


def test_dedup_survives_restart_and_is_shared_by_nodes(pg_dsn: str) -> None:
    first = PostgresStore(pg_dsn, clock=Clock(DAY0))
    first.write("acme", [row("a")], DAY0)
    first.close()
    second, third = PostgresStore(pg_dsn, clock=Clock(DAY0)), PostgresStore(pg_dsn, clock=Clock(DAY0))
    assert second.write("acme", [row("a")], DAY0 + 1000).stored == 0
    assert second.write("acme", [row("b")], DAY0).stored == 1
    assert third.write("acme", [row("b"), row("c")], DAY0).stored == 1
    second.close()
    third.close()
    assert count(pg_dsn) == 3


@pytest.mark.parametrize("days", [1, 7])
def test_old_event_ids_are_pruned(pg_dsn: str, days: int) -> None:
    """By the database's clock and the window's length: an id received ``days`` days ago is kept, one
    received 2 × ``days`` + 2 days ago is forgotten (an id lives one to two windows, and a day)."""
    store = PostgresStore(pg_dsn, clock=Clock(DAY0), dedup_window_days=days)
    # Not the writer's own prune after a group: late under load, it forgot the old ids before these did.
    store._next_prune = math.inf
    try:
        store.write("acme", [row(str(i)) for i in range(100)], DAY0)
        assert store.prune() == 0
        [(today,)] = query(pg_dsn, "SELECT floor(extract(epoch FROM statement_timestamp()) / 86400)::int")
        query(pg_dsn, "UPDATE event_ids SET gen = %s WHERE event_id::int < 60", (today - days,))
        assert store.prune() == 0  # inside the window
        query(pg_dsn, "UPDATE event_ids SET gen = %s WHERE event_id::int < 60", (today - 2 * days - 2,))
        assert store.prune() == 60
        assert query(pg_dsn, "SELECT count(*) FROM event_ids") == [(40,)]
        # Beyond the window a repeat may be stored again (docs/mapping.md "Storage and durability").
        assert store.write("acme", [row("0"), row("99")], DAY0).stored == 1
    finally:
        store.close()


def test_a_version_6_database_gets_days_for_its_generations(pg_dsn: str) -> None:
    """event_ids.gen held 7-day generations before version 7: each becomes its generation's last day
    (no id is forgotten sooner), once; days written since are left alone."""
    PostgresStore(pg_dsn, clock=Clock(DAY0)).close()
    week = DAY0 // MS_PER_DAY // 7
    query(pg_dsn, "INSERT INTO event_ids (tenant_id, event_id, gen) VALUES ('acme', 'old', %s), "
                  "('acme', 'older', %s), ('acme', 'day', %s)", (week, week - 1, DAY0 // MS_PER_DAY))  # fmt: skip
    query(pg_dsn, "UPDATE drengr_meta SET value = '6' WHERE key = 'schema_version'")
    for _ in range(2):  # a second start finds version 7 and changes nothing
        store = PostgresStore(pg_dsn, clock=Clock(DAY0))
        store.close()
        assert query(pg_dsn, "SELECT event_id, gen FROM event_ids ORDER BY event_id") == [
            ("day", DAY0 // MS_PER_DAY), ("old", week * 7 + 6), ("older", week * 7 - 1)
        ]  # fmt: skip
    assert query(pg_dsn, "SELECT value FROM drengr_meta WHERE key = 'schema_version'") == [("7",)]


@pytest.mark.parametrize("days", [15, -15, 40], ids=lambda d: f"{d:+d}-days")
def test_a_node_with_a_wrong_clock_never_makes_a_resend_a_second_row(pg_dsn: str, days: int) -> None:
    """docs/mapping.md "Deduplication when the clock is wrong": the database's clock prunes, no node's."""
    now_ms = drengr_clock.now_ms()
    right, wrong = Clock(now_ms), Clock(now_ms + days * MS_PER_DAY)
    nodes = {right: PostgresStore(pg_dsn, clock=right), wrong: PostgresStore(pg_dsn, clock=wrong)}

    def write(node_clock: Clock, ids: list[str]) -> int:
        return nodes[node_clock].write("acme", [row(i) for i in ids], node_clock.ms).stored

    try:
        assert write(right, [str(i) for i in range(100)]) == 100
        assert write(wrong, [str(i) for i in range(100, 150)]) == 50
        assert nodes[wrong].prune() == 0  # its clock says weeks have passed; the database's does not
        assert nodes[right].prune() == 0  # and its ids, stamped behind, are not old either
        assert write(right, [str(i) for i in range(150)]) == 0
        assert write(wrong, [str(i) for i in range(150)]) == 0
    finally:
        for store in nodes.values():
            store.close()
    assert count(pg_dsn) == 150


def _hammer(
    stores: list[PostgresStore], batches: list[list[tuple[str, ...]]], threads_per_store: int
) -> list[Any]:
    """Every thread of every store writes every batch (in its own order); returns the outcomes."""
    outcomes: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(store: PostgresStore, offset: int) -> None:
        for i in range(len(batches)):
            batch = batches[(i + offset) % len(batches)]
            try:
                outcome = store.write("acme", list(reversed(batch)) if offset % 2 else batch, DAY0)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                continue
            with lock:
                outcomes.append(outcome)

    threads = [
        threading.Thread(target=work, args=(store, n * threads_per_store + t))
        for n, store in enumerate(stores)
        for t in range(threads_per_store)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return outcomes


def test_dedup_is_exact_across_nodes_under_concurrency(pg_dsn: str) -> None:
    """Three nodes × four threads send the same overlapping batches at once: every id stored once, no error."""
    stores = [PostgresStore(pg_dsn, clock=Clock(DAY0)) for _ in range(3)]
    ids = [f"id-{i}" for i in range(600)]
    batches = [[row(event_id) for event_id in ids[start : start + 60]] for start in range(0, 600, 30)]
    outcomes = _hammer(stores, batches, 4)
    for store in stores:
        store.close()
    assert sum(o.stored for o in outcomes) == 600
    assert count(pg_dsn) == 600
    assert query(pg_dsn, "SELECT count(DISTINCT event_id) FROM semantic_events") == [(600,)]


def test_deployments_in_two_schemas_of_one_database_never_wait_for_each_others_locks(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Advisory locks are the database's: the writers' and the builder's keys carry this schema's table,
    so a builder at work in another schema (its lock held) and a write under way there (its turn held
    shared) neither stop this schema's builder nor its writes."""
    from drengr.store.postgres.statements import _WRITE_TURN, BUILDER_LOCK, LOCK_KEY, WRITE_TURN_LOCK
    from drengr.store.postgres.store import build_read_side

    from .support.postgres import fresh_schema

    monkeypatch.setattr(PostgresStore, "builds_read_side", False)  # built below, by hand
    with fresh_schema() as other_dsn:
        PostgresStore(other_dsn, clock=Clock(DAY0)).close()  # its tables, its semantic_events
        store = PostgresStore(pg_dsn, clock=Clock(DAY0))
        store.write("acme", [row(str(i)) for i in range(20)], DAY0)
        with (
            psycopg.connect(other_dsn, autocommit=True) as other,
            psycopg.connect(pg_dsn, autocommit=True) as ours,
        ):
            assert other.execute(f"SELECT pg_try_advisory_lock({LOCK_KEY})", (BUILDER_LOCK,)).fetchone()[0]
            with other.transaction():
                other.execute(_WRITE_TURN, (WRITE_TURN_LOCK,))  # the other schema's write, under way
                ours.execute("SET lock_timeout = '5s'")  # a hang guard: waiting on theirs fails
                assert build_read_side(ours) == 20
                assert store.write("acme", [row("more")], DAY0).stored == 1
            other.execute(f"SELECT pg_advisory_unlock({LOCK_KEY})", (BUILDER_LOCK,))
        store.close()
    assert query(pg_dsn, "SELECT count(*) FROM user_index") == [(20,)]


def test_a_step_whose_seq_the_user_index_holds_already_is_built_all_the_same(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The builder inserts a step's users without looking for them first (one builder at a time, past
    every seq indexed); one found there all the same (a backfill that overlapped, a hand's insert)
    takes the step again, leaving those alone: the read side moves on, each entry once."""
    from drengr.store.postgres.store import build_read_side

    monkeypatch.setattr(PostgresStore, "builds_read_side", False)  # built below, by hand
    store = PostgresStore(pg_dsn, clock=Clock(DAY0))
    store.write("acme", [row(str(i)) for i in range(20)], DAY0)
    store.close()
    [(low, high)] = query(pg_dsn, "SELECT min(seq), max(seq) FROM semantic_events")
    query(pg_dsn, "INSERT INTO user_index (tenant_id, external_id, seq) VALUES ('acme', 'u', %s)", (low + 5,))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert build_read_side(conn) == 20
    assert query(pg_dsn, "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM user_index") == [
        (20, 20, low, high)
    ]
    assert query(pg_dsn, "SELECT value FROM drengr_meta WHERE key = 'read_side_seq'") == [(str(high),)]
    assert query(pg_dsn, "SELECT sum(events) FROM event_rollups") == [(20,)]


# --------------------------------------------------------------------------- the daily cap


def test_cap_is_exact_across_nodes_under_concurrency(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn, clock=Clock(DAY0)) for _ in range(3)]
    stores[0].set_daily_cap("acme", 1_000)
    batches = [[row(f"b{b}-{i}") for i in range(25)] for b in range(40)]  # 1,000 distinct ids, sent by all
    batches += [[row(f"x{b}-{i}") for i in range(25)] for b in range(20)]  # 500 more
    outcomes = _hammer(stores, batches, 3)
    for store in stores:
        store.close()
    assert sum(o.stored for o in outcomes) == 1_000
    assert count(pg_dsn) == 1_000
    assert query(pg_dsn, "SELECT events FROM daily_usage") == [(1_000,)]
    # Over the cap: not stored and not remembered as seen.
    assert query(pg_dsn, "SELECT count(*) FROM event_ids") == [(1_000,)]


def test_an_id_over_one_days_cap_is_a_new_event_the_next_day_in_the_same_group(
    pg: PostgresStore, pg_dsn: str
) -> None:
    """One group holds a copy of X received at 23:59:59 (the day's cap of 1 is taken) and another
    at 00:00:00 (the next day, with room): the first is over the cap, the second is stored, not
    answered as a duplicate of a copy that was never stored."""
    pg.set_daily_cap("acme", 1)
    assert pg.write("acme", [row("A")], DAY0).stored == 1
    next_day = (DAY0 // MS_PER_DAY + 1) * MS_PER_DAY
    jobs = [Job("acme", [row("X")], next_day - 1_000), Job("acme", [row("X")], next_day)]
    conn = pg._connect()
    try:
        outcomes = pg._commit_group(conn, jobs)  # as the writer commits what waits in its queue
    finally:
        conn.close()
    assert outcomes == [StoreOutcome(0, over_cap=1), StoreOutcome(1)]
    assert query(pg_dsn, "SELECT count(*) FROM semantic_events WHERE event_id = 'X'") == [(1,)]


def test_measures_whose_sum_is_past_the_largest_double_do_not_stop_the_read_side(pg_dsn: str) -> None:
    """Two measures of 1.7e308 in one minute, then a plain one: their sum is past the largest
    double. The builder counts every row (its sums saturate at Infinity), and the rollups of the
    other measures are exact."""
    store = PostgresStore(pg_dsn, clock=Clock(DAY0))
    try:
        for n, measures in enumerate(('{"m": 1.7e308}', '{"m": 1.7e308}', '{"k": 2}', '{"k": 3}')):
            assert store.write("acme", [(*row(f"huge-{n}")[:9], measures, *row("")[10:])], DAY0).stored == 1
    finally:
        store.close()  # its builder counts what was written, then stops
    assert query(pg_dsn, "SELECT value FROM drengr_meta WHERE key = 'read_side_seq'") == [("4",)]
    totals = dict(query(pg_dsn, "SELECT measure, total FROM measure_rollups"))
    assert totals == {"m": float("inf"), "k": 5.0}


def test_metering_fails_open_over_http(pg_dsn: str, tmp_path: Path) -> None:
    """`drengr serve --store`: the cap holds while it can be counted; once counting fails, 200 and stored."""
    from .support.realserver import batch, launch

    setup = PostgresStore(pg_dsn)
    try:
        key = setup.create_key(TENANT, "publishable")
        setup.set_daily_cap(TENANT, 2)
    finally:
        setup.close()
    server = launch(tmp_path / "unused.db", key, "--store", pg_dsn, log_level="warning")
    try:
        reply = server.post("/v1/batch", batch(["capped-1", "capped-2", "capped-3"]))
        assert (reply.status, reply.body) == (200, SUCCESS)
        assert count(pg_dsn) == 2  # metering works: the third is over the cap
        query(pg_dsn, "DROP TABLE daily_usage")  # counting is now impossible
        reply = server.post("/v1/batch", batch(["open-1", "open-2", "open-3"]))  # a working cap drops all
        assert (reply.status, reply.body) == (200, SUCCESS)
        assert count(pg_dsn, "event_id LIKE 'open-%%'") == 3
        assert server.healthy()
    finally:
        assert server.stop() == 0


# --------------------------------------------------------------------------- what PostgreSQL refuses


def test_nul_and_lone_surrogates_never_reach_the_database(pg: PostgresStore, pg_dsn: str) -> None:
    """Raw NUL, the JSON escape \\u0000 (refused by jsonb) and lone surrogates all become U+FFFD."""
    bad = (
        "acme", "id\x00x", "e\x00", "track", "u\x00\ud800", "i\udfff",
        "2026-11-26T00:00:00.000Z", "2026-11-26T00:00:00.000Z",
        json.dumps({"k\x00": "v\x00", "s": "\ud800x", "pair": "\U0001f600", "esc": "a\\u0000b"}, ensure_ascii=False),
        json.dumps({"n\x00": 1}),
        "lib\x00 1.0",
    )  # fmt: skip
    assert pg.write("acme", [bad, row("fine")], DAY0).stored == 2
    stored = pg_rows(pg_dsn)[0]
    assert (stored["event_id"], stored["event_name"], stored["external_id"], stored["install_id"]) == (
        "id\ufffdx", "e\ufffd", "u\ufffd\ufffd", "i\ufffd"
    )  # fmt: skip
    # A backslash followed by "u0000" in the text itself is left alone; an escaped pair is one emoji.
    assert stored["dims"] == {"k\ufffd": "v\ufffd", "s": "\ufffdx", "pair": "\U0001f600", "esc": "a\\u0000b"}
    assert stored["measures"] == {"n\ufffd": 1}
    assert stored["library"] == "lib\ufffd 1.0"
    assert clean_json('{"a": "\\ud83d\\ude00", "b": "\\ud83d"}') == '{"a": "\U0001f600", "b": "\ufffd"}'
    rows = [row("x")]
    assert clean_rows(rows) is rows  # the usual case costs no copy
    # A NUL beside a None, and beside a value that is not a string, is found all the same.
    odd = (*row("y")[:4], None, "i\x00", *row("y")[6:])
    assert clean_rows([odd])[0][4:6] == (None, "i\ufffd")
    assert clean_rows([(*odd[:10], 7)])[0][5:] == ("i\ufffd", *odd[6:10], 7)


def test_nul_and_surrogates_through_the_app_are_200(pg: PostgresStore, pg_dsn: str) -> None:
    client = create_app(Config(db="unused"), store=pg).test_client()
    key = pg.create_key(TENANT)
    body = (
        b'{"batch": ['
        b'{"type": "track", "event": "Bad\\u0000Name", "userId": "u\\u0000", "messageId": "m\\u00001",'
        b' "properties": {"k\\u0000": "v\\u0000", "lone": "\\ud800", "nested": {"x": "\\u0000"}}},'
        b'{"type": "identify", "userId": "\\udfff", "messageId": "m2", "traits": {"plan": "p\\u0000"}}'
        b"]}"
    )
    response = post(client, "/v1/batch", body, key)
    assert (response.status_code, response.data) == (200, SUCCESS)
    rows = pg_rows(pg_dsn)
    assert len(rows) == 2
    text = json.dumps(rows, ensure_ascii=False)
    assert "\x00" not in text and "\\u0000" not in text
    assert rows[0]["event_id"] == "m\ufffd1" and rows[0]["external_id"] == "u\ufffd"
    assert rows[0]["dims"]["k\ufffd"] == "v\ufffd" and rows[0]["dims"]["lone"] == "\ufffd"
    assert rows[1]["external_id"] == "\ufffd" and rows[1]["dims"]["plan"] == "p\ufffd"


# --------------------------------------------------------------------------- failures


def test_a_failing_database_is_502_then_recovers(pg_database: str) -> None:
    """Connections cut and refused: 502 Ingest failed and /health 503; back: 200, the retry stored once."""
    store = PostgresStore(pg_database, connect_timeout=2, clock=Clock(DAY0))
    client = create_app(Config(db="unused"), store=store).test_client()
    key = store.create_key(TENANT)
    first = {"type": "track", "event": "one", "userId": "u", "messageId": "m1"}
    second = {"type": "track", "event": "two", "userId": "u", "messageId": "m2"}
    assert post(client, "/v1/track", first, key).status_code == 200
    assert client.get("/health").status_code == 200
    name = pg_database.rsplit("/", 1)[1]
    with admin() as conn:
        conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    failed = post(client, "/v1/track", second, key)
    assert failed.status_code == 502
    store._keys.clear()  # noqa: SLF001 - a key look-up that cannot reach the database: 502, never 401
    assert post(client, "/v1/track", second, key).status_code == 502
    assert json.loads(failed.data)["error"] == "Ingest failed"
    assert client.get("/health").status_code == 503
    with admin() as conn:
        conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    assert post(client, "/v1/track", second, key).status_code == 200  # the client's retry
    assert post(client, "/v1/track", second, key).status_code == 200  # and a duplicate of it
    assert client.get("/health").status_code == 200
    store.close()
    assert [r[0] for r in query(pg_database, "SELECT event_id FROM semantic_events ORDER BY seq")] == [
        "m1",
        "m2",
    ]


def test_a_stuck_database_is_502_after_the_statement_timeout(pg_database: str) -> None:
    # A database of its own: its 500 ms covers the advisory locks too, which are the database's
    # (another run of the suite beside this one, tests/test_any_date.py, takes them on the shared one).
    pg_dsn = pg_database
    store = PostgresStore(pg_dsn, clock=Clock(DAY0), statement_timeout_ms=500)
    store.write("acme", [row("warm-up")], DAY0)
    holder = psycopg.connect(pg_dsn)
    holder.execute("LOCK TABLE semantic_events IN ACCESS EXCLUSIVE MODE")
    # The hang guard: were the timeout ignored, the lock goes at last and the write succeeds (and fails
    # the test) instead of waiting for ever. The lock is never released before then otherwise.
    guard = threading.Timer(HANG_GUARD_SECONDS, holder.rollback)
    guard.start()
    try:
        with pytest.raises(StoreError, match="statement timeout"):
            store.write("acme", [row("a")], DAY0)
    finally:
        guard.cancel()
    holder.rollback()
    holder.close()
    assert store.write("acme", [row("a")], DAY0).stored == 1  # not remembered by the failed attempt
    store.close()


# --------------------------------------------------------------------------- parity with SQLite


def _decoded_number(value: Any) -> Any:
    """JSON numbers compared as numbers: jsonb writes 1e+23 out as 100000000000000000000000."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**r, "measures": {k: _decoded_number(v) for k, v in r["measures"].items()}, "dims": dict(r["dims"])}
        for r in rows
    ]


EXTRA_REQUESTS: list[tuple[str, Any]] = [
    ("/v1/track", {"type": "track", "event": "Order Completed", "userId": 42, "messageId": "x1",
                   "properties": {"revenue": "9.99", "quantity": 2, "big": 123456789012345678901234567890,
                                  "tiny": 1e-7, "huge": 1e23, "neg": -0.5, "ok": True, "none": None,
                                  "deep": {"a": {"b": [1, {"c": "d"}]}}, "émoji": "\U0001f600 ü"},
                   "context": {"os": {"name": "iOS", "version": "17.4"}, "app": {"version": "3.2.1"}},
                   "timestamp": "2026-11-26T02:50:53.123456+02:00"}),
    ("/v1/page", {"type": "page", "name": "Pricing", "anonymousId": "a1", "properties": {"plan": "pro"}}),
    ("/v1/batch", {"batch": [{"type": "identify", "userId": "u", "traits": {"plan": "pro", "logins": 5}},
                             {"type": "alias", "userId": "u", "previousId": "p"},
                             {"type": "track", "event": "x", "userId": "u", "messageId": "x1"}]}),
]  # fmt: skip


def test_sqlite_and_postgresql_store_the_same_rows(pg: PostgresStore, pg_dsn: str, tmp_path: Path) -> None:
    """Every captured client request (tests/data/wire) plus a few tricky ones, through both stores: same rows."""
    from .support.wire import POSTS, send

    clock_ms = lambda: DAY0  # noqa: E731 - one time of receipt for both, so fallback ids agree
    lite_path = tmp_path / "parity.db"
    lite = SQLiteStore(str(lite_path))
    apps = [
        create_app(Config(db=str(lite_path)), store=lite, clock_ms=clock_ms).test_client(),
        create_app(Config(db="unused"), store=pg, clock_ms=clock_ms).test_client(),
    ]
    keys = [lite.create_key(TENANT), pg.create_key(TENANT)]
    assert len(POSTS) > 100, "the golden wire captures are missing"
    for capture in POSTS:
        answers = [send(client, capture, key) for client, key in zip(apps, keys, strict=True)]
        assert answers[0].status_code == answers[1].status_code, capture.id
        assert answers[0].data == answers[1].data, capture.id
    for path, body in EXTRA_REQUESTS:
        for client, key in zip(apps, keys, strict=True):
            token = base64.b64encode(f"{key}:".encode()).decode()
            data = gzip.compress(json.dumps(body).encode())
            headers = {"Authorization": f"Basic {token}", "Content-Encoding": "gzip"}
            assert client.post(path, data=data, headers=headers).status_code == 200
    lite.close()
    sqlite_rows, postgres_rows = read_rows(lite_path), pg_rows(pg_dsn)
    assert len(sqlite_rows) > 200
    assert comparable(postgres_rows) == comparable(sqlite_rows)
    # jsonb keeps the values but not the key order of the JSON text (shorter keys first):
    order = [list(r["dims"]) for r in postgres_rows] != [list(r["dims"]) for r in sqlite_rows]
    assert order, "jsonb reorders keys; the docs say so — update them if this ever changes"


def test_an_import_reads_the_file_at_its_path_whatever_characters_it_holds(
    pg: PostgresStore, pg_dsn: str, tmp_path: Path
) -> None:
    """A % in the path is no URI escape (c%41d is not cAd, where another database lies), a # no
    fragment; and the same file named two ways is the same import (nothing copied twice)."""
    for folder, events in (("c%41d #1", 5), ("cAd", 2)):
        (tmp_path / folder).mkdir()
        lite = SQLiteStore(str(tmp_path / folder / "old.db"))
        lite.write(TENANT, [("acme", f"{folder}-{i}", "e", "track", "u", "u", *[
            "2026-11-26T10:00:00.000Z"] * 2, "{}", "{}", None) for i in range(events)], 0)  # fmt: skip
        lite.close()
    assert import_sqlite(pg, str(tmp_path / "c%41d #1" / "old.db"))["events"] == 5
    assert import_sqlite(pg, str(tmp_path / "c%41d #1" / ".." / "c%41d #1" / "old.db"))["events"] == 0
    assert count(pg_dsn) == 5


def test_sqlite_data_moves_over_to_postgresql(pg: PostgresStore, pg_dsn: str, tmp_path: Path) -> None:
    """drengr.store.migrate.import_sqlite: rows, tenants, hashed keys and usage; run twice, copies once; dedup holds."""
    from .support.wire import POSTS, send

    lite_path = tmp_path / "old.db"
    lite = SQLiteStore(str(lite_path))
    key, revoked = lite.create_key(TENANT), lite.create_key(TENANT)
    lite.revoke_key(revoked)
    lite.set_daily_cap(TENANT, 123_456)
    client = create_app(Config(db=str(lite_path)), store=lite).test_client()
    for capture in POSTS[:60]:
        send(client, capture, key)
    lite.close()
    counts = import_sqlite(pg, str(lite_path), chunk_rows=7)
    before = read_rows(lite_path)
    assert counts["events"] == len(before) > 50
    assert comparable(pg_rows(pg_dsn)) == comparable(before)
    assert import_sqlite(pg, str(lite_path))["events"] == 0  # resumable: nothing new, nothing twice
    assert count(pg_dsn) == len(before)
    assert query(pg_dsn, "SELECT daily_cap FROM tenants WHERE tenant_id = %s", (TENANT,)) == [(123_456,)]
    pg_client = create_app(Config(db="unused"), store=pg).test_client()
    assert send(pg_client, POSTS[0], key).status_code == 200  # the same key works; the retry is a duplicate
    assert (
        post(pg_client, "/v1/track", {"type": "track", "event": "x", "userId": "u"}, revoked).status_code
        == 401
    )
    assert count(pg_dsn) == len(before)
