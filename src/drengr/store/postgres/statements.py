"""The PostgreSQL store's statements: the schema (``schema/postgres.sql``) and the write path's SQL.

Plain SQL text, and the one function that upserts a group's rollup rows.
"""

from typing import Any

from ..base import schema_statements
from ..rollups import ROLLUP_GRAINS, hourly, rollup_rows

# 2: semantic_events.library, index (tenant_id, seq), drop_counts; 3: tenants.pii_allow; 4: rollups;
# 5: hourly rollups, indexes (tenant_id, external_id, seq) and (tenant_id, event_name, seq)
SCHEMA_VERSION = 5

EVENT_COLUMNS = (
    "tenant_id",
    "event_id",
    "event_name",
    "event_type",
    "external_id",
    "install_id",
    "occurred_at",
    "received_at",
    "dims",
    "measures",
    "library",
)

SCHEMA = schema_statements("postgres")  # schema/postgres.sql
# Sorted rows, so concurrent writers (several nodes) take the rollup rows' locks in one order.
# One statement for both grains and both tables, its rows as arrays (one round trip, as
# _INSERT_IDS): an executemany of a dozen upserts cost half the rate of 100-event batches.


def _upsert_cte(prefix: str, column: str, measures: bool) -> str:
    table, other, value, cast = (
        ("measure_rollups", "measure", "total", "float8")
        if measures
        else ("event_rollups", "event_type", "events", "bigint")
    )
    return (
        f"INSERT INTO {prefix}{table} (tenant_id, {column}, event_name, {other}, {value}) "
        f"SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::{cast}[]) ORDER BY 1, 2, 3, 4 "
        f"ON CONFLICT (tenant_id, {column}, event_name, {other}) "
        f"DO UPDATE SET {value} = {prefix}{table}.{value} + excluded.{value}"
    )


_UPSERT_ROLLUPS = (
    "WITH "
    + ", ".join(
        f"u{n} AS ({_upsert_cte(prefix, column, measures)})"
        for n, (measures, (prefix, column, _)) in enumerate(
            (measures, grain) for measures in (False, True) for grain in ROLLUP_GRAINS
        )
    )
    + " SELECT 1"
)


def _add_to_rollups(cur: Any, requests: list[list[tuple[Any, ...]]]) -> None:
    """Count the rows just copied in (one list a request, as rollup_rows takes them) into the rollups."""
    events, measures = rollup_rows(requests)
    if events:
        measures = [(*key, float(total)) for *key, total in measures]
        parameters: list[list[Any]] = []
        for rollups in (events, hourly(events), measures, hourly(measures)):
            parameters += [list(column) for column in zip(*rollups, strict=True)] or [[]] * 5
        cur.execute(_UPSERT_ROLLUPS, parameters)


def _count_rows_sql(where: str, sign: str = "") -> list[str]:
    """INSERT … SELECT statements counting the rows ``where`` selects into every grain (a backfill, a prune)."""
    statements = []
    for prefix, column, width in ROLLUP_GRAINS:
        statements.append(
            f"INSERT INTO {prefix}event_rollups (tenant_id, {column}, event_name, event_type, events) "
            f"SELECT tenant_id, substr(received_at, 1, {width}), event_name, event_type, {sign}count(*) "
            f"FROM semantic_events WHERE {where} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
            f"ON CONFLICT (tenant_id, {column}, event_name, event_type) "
            f"DO UPDATE SET events = {prefix}event_rollups.events + excluded.events"
        )
        statements.append(
            f"INSERT INTO {prefix}measure_rollups (tenant_id, {column}, event_name, measure, total) "
            f"SELECT e.tenant_id, substr(e.received_at, 1, {width}), e.event_name, m.key, "
            f"{sign}sum(m.value::text::double precision) "
            "FROM semantic_events AS e, jsonb_each(e.measures) AS m "
            f"WHERE {where.replace('tenant_id', 'e.tenant_id').replace('seq', 'e.seq')} "
            "AND jsonb_typeof(m.value) = 'number' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
            f"ON CONFLICT (tenant_id, {column}, event_name, measure) "
            f"DO UPDATE SET total = {prefix}measure_rollups.total + excluded.total"
        )
    return statements


_BACKFILL_ROLLUPS = _count_rows_sql("tenant_id = %s AND seq >= %s AND seq < %s")
_REMOVE_ROLLUPS = _count_rows_sql("tenant_id = %s AND seq = ANY(%s)", sign="-")

_COPY_EVENTS = f"COPY semantic_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
# %b: binary parameters; psycopg dumps a text array in binary without escaping each element (~5x faster).
_INSERT_IDS = """
    INSERT INTO event_ids (tenant_id, event_id, gen)
    SELECT k.t, k.e, k.g FROM unnest(%b::text[], %b::text[], %b::int[]) AS k(t, e, g) ORDER BY k.t, k.e
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, event_id"""
_DELETE_IDS = """
    DELETE FROM event_ids
    WHERE (tenant_id, event_id) IN (SELECT k.t, k.e FROM unnest(%s::text[], %s::text[]) AS k(t, e))"""
# Metering, one (tenant, day) at a time in sorted order: each statement touches one row of one
# tenant (a single-shard "router" query once Citus distributes daily_usage by tenant_id).
_ENSURE_USAGE = """
    INSERT INTO daily_usage (tenant_id, day, events) VALUES (%s, %s, 0) ON CONFLICT DO NOTHING"""
_LOCK_USAGE = """
    SELECT events FROM daily_usage WHERE tenant_id = %s AND day = %s FOR UPDATE"""
_CAP = "SELECT daily_cap FROM tenants WHERE tenant_id = %s"
_ADD_USAGE = """
    UPDATE daily_usage SET events = events + %s WHERE tenant_id = %s AND day = %s"""
# The database's 7-day generation, as ``generation()`` numbers them (whole days since the epoch / 7).
_DB_GENERATION = "(floor(extract(epoch FROM statement_timestamp()) / 86400)::bigint / 7)::int"
# The write path's ids: stamped with the later of the node's generation of receipt and the database's.
_INSERT_NEW_IDS = f"""
    INSERT INTO event_ids (tenant_id, event_id, gen)
    SELECT k.t, k.e, greatest(%b::int, {_DB_GENERATION})
    FROM unnest(%b::text[], %b::text[]) AS k(t, e) ORDER BY k.t, k.e
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, event_id"""
# What the database's clock says is older than the previous generation, less a day of margin.
_PRUNE = """
    DELETE FROM event_ids
    WHERE (tenant_id, event_id) IN (
        SELECT tenant_id, event_id FROM event_ids
        WHERE gen < (floor(extract(epoch FROM statement_timestamp()) / 86400 - 1)::bigint / 7)::int - 1
        LIMIT %s
    )"""
