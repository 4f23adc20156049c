"""The PostgreSQL store's statements: the schema (``schema/postgres.sql``) and the write path's SQL.

Plain SQL text.
"""

from ..base import schema_statements
from ..rollups import NAME_BLOCK_BITS, ROLLUP_GRAINS

# 2: semantic_events.library, index (tenant_id, seq), drop_counts; 3: tenants.pii_allow; 4: rollups;
# 5: hourly rollups, indexes (tenant_id, external_id, seq) and (tenant_id, event_name, seq);
# 6: the read side built off the write path (read_side_seq, user_index, name_blocks, a BRIN index on seq), the two
# indexes of 5 dropped; 7: event_ids.gen holds the day of receipt, not its 7-day generation (the window's length
# became a setting)
SCHEMA_VERSION = 7

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

# The rollups' sums are double precision, whose + raises "value out of range" past the largest
# double: one minute's measures of 1e308 would stop the builder for the whole schema. Sums are
# added up as numeric and stored saturated (±Infinity past the largest double); two totals are
# added as numeric unless one is already infinite (numeric holds no infinity before PostgreSQL 14).
_LARGEST_DOUBLE = "1.7976931348623157e308"


def _saturated(numeric: str) -> str:
    """A numeric expression as double precision, ±Infinity past the largest double."""
    return (
        f"(CASE WHEN {numeric} > {_LARGEST_DOUBLE} THEN 'Infinity'::float8 "
        f"WHEN {numeric} < -{_LARGEST_DOUBLE} THEN '-Infinity'::float8 ELSE ({numeric})::float8 END)"
    )


def _add_totals(table: str) -> str:
    """The upsert's ``total``: the stored one and the new one added, never out of range."""
    stored, new = f"{table}.total", "excluded.total"
    infinite = "'Infinity'::float8, '-Infinity'::float8, 'NaN'::float8"
    return (
        f"total = CASE WHEN {stored} IN ({infinite}) OR {new} IN ({infinite}) THEN {stored} + {new} "
        f"ELSE {_saturated(f'({stored}::numeric + {new}::numeric)')} END"
    )


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
            f"{_saturated(f'{sign}sum(m.value::text::numeric)')} "
            "FROM semantic_events AS e, jsonb_each(e.measures) AS m "
            f"WHERE {where.replace('tenant_id', 'e.tenant_id').replace('seq', 'e.seq')} "
            "AND jsonb_typeof(m.value) = 'number' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
            f"ON CONFLICT (tenant_id, {column}, event_name, measure) "
            f"DO UPDATE SET {_add_totals(f'{prefix}measure_rollups')}"
        )
    return statements


# A name's block seen again (a later step, a backfill): its seqs widen to cover both.
_MERGE_BLOCKS = (
    "ON CONFLICT (tenant_id, event_name, block) DO UPDATE SET "
    "first_seq = least(name_blocks.first_seq, excluded.first_seq), "
    "last_seq = greatest(name_blocks.last_seq, excluded.last_seq)"
)
_BACKFILL_ROLLUPS = _count_rows_sql("tenant_id = %s AND seq >= %s AND seq < %s")


def _index_rows_sql(
    source: str, where: str, name_block_bits: int = NAME_BLOCK_BITS, new: bool = False
) -> tuple[str, str]:
    """The user index's and the name blocks' inserts of the rows of ``source`` that ``where`` selects
    (the name blocks in sorted order: one order of locks). ``new``: the rows' seqs are not in the user
    index yet, and each goes in as it comes (``ON CONFLICT`` and the sort cost ~3.4 µs of ~8.8 a row
    of a builder's step); otherwise those already there are left alone."""
    users = f"INSERT INTO user_index (tenant_id, external_id, seq) SELECT tenant_id, external_id, seq FROM {source} "
    return (
        users
        + f"WHERE {where} AND external_id IS NOT NULL"
        + ("" if new else " ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING"),
        "INSERT INTO name_blocks (tenant_id, event_name, block, first_seq, last_seq) "
        f"SELECT tenant_id, event_name, seq >> {name_block_bits}, min(seq), max(seq) FROM {source} "
        f"WHERE {where} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 " + _MERGE_BLOCKS,
    )


_BACKFILL_INDEXES = _index_rows_sql("semantic_events", "tenant_id = %s AND seq >= %s AND seq < %s")


def _build_step_sql(name_block_bits: int = NAME_BLOCK_BITS, new: bool = True) -> str:
    """The builder's step (low < seq <= high) as one statement: the step's rows are read once, counted
    by minute (the hours added up from the minutes), and indexed; the rollups' and name blocks' rows go
    in sorted (one order of locks). ``new``: as ``_index_rows_sql``'s."""
    users, names = _index_rows_sql("step", "true", name_block_bits, new)
    upserts = []
    for prefix, column, width in ROLLUP_GRAINS:
        upserts.append(
            f"{prefix}counted AS (INSERT INTO {prefix}event_rollups (tenant_id, {column}, event_name, event_type, events) "
            f"SELECT tenant_id, substr(minute, 1, {width}), event_name, event_type, sum(events) FROM events "
            f"GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 ON CONFLICT (tenant_id, {column}, event_name, event_type) "
            f"DO UPDATE SET events = {prefix}event_rollups.events + excluded.events)"
        )
        upserts.append(
            f"{prefix}summed AS (INSERT INTO {prefix}measure_rollups (tenant_id, {column}, event_name, measure, total) "
            f"SELECT tenant_id, substr(minute, 1, {width}), event_name, measure, {_saturated('sum(total)')} "
            f"FROM measures GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
            f"ON CONFLICT (tenant_id, {column}, event_name, measure) "
            f"DO UPDATE SET {_add_totals(f'{prefix}measure_rollups')})"
        )
    return (
        "WITH step AS MATERIALIZED (SELECT seq, tenant_id, substr(received_at, 1, 16) AS minute, event_name, "
        "event_type, external_id, measures FROM semantic_events WHERE seq > %(low)s AND seq <= %(high)s), "
        "events AS MATERIALIZED (SELECT tenant_id, minute, event_name, event_type, count(*) AS events "
        "FROM step GROUP BY 1, 2, 3, 4), "
        "measures AS MATERIALIZED (SELECT s.tenant_id, s.minute, s.event_name, m.key AS measure, "
        "sum(m.value::text::numeric) AS total FROM step AS s, jsonb_each(s.measures) AS m "
        "WHERE jsonb_typeof(m.value) = 'number' GROUP BY 1, 2, 3, 4), "
        + ", ".join(upserts)
        + f", users AS ({users}) {names}"
    )


# A step's seqs are past every seq the user index holds (one builder at a time, and a backfill
# stays below indexes_from_seq): ``_BUILD_STEP``; should one be there all the same, the step is
# taken again with ``_BUILD_STEP_AGAIN``.
_BUILD_STEP = _build_step_sql()
_BUILD_STEP_AGAIN = _build_step_sql(new=False)
# Writers hold this advisory lock shared in every write transaction; the builder takes it exclusive
# for a moment, when no write is under way, to read the newest seq: every row at or below it is then
# committed (seqs are handed out before commit, and writers commit out of seq order).
WRITE_TURN_LOCK = 0x64726E68
BUILDER_LOCK = 0x64726E69  # one node's builder at a time
# Advisory locks are the database's, not a schema's: each key is one of those above in its high 32 bits
# and the oid of this schema's semantic_events in its low 32, so that deployments in two schemas of one
# database (a search_path each) never wait for each other's writers or builder.
LOCK_KEY = "((%s::bigint << 32) | 'semantic_events'::regclass::oid::bigint)"
_WRITE_TURN = f"SELECT pg_advisory_xact_lock_shared({LOCK_KEY})"
# The user index's entries of rows a prune deletes (before the rows themselves go). Each statement on a
# prune's seqs takes (tenant, seqs as bigint[], lowest, highest): the range keeps the planner on the
# (tenant_id, seq) index without statistics, and a bigint[] is hashed (a smallint[] is searched
# linearly for every row: 20,000 rows took 48 s to prune).
_REMOVE_USERS = """
    DELETE FROM user_index AS u USING semantic_events AS e
    WHERE e.tenant_id = %s AND e.seq = ANY(%s::bigint[]) AND e.seq BETWEEN %s AND %s AND e.external_id IS NOT NULL
    AND u.tenant_id = e.tenant_id AND u.external_id = e.external_id AND u.seq = e.seq"""
# After a prune, per tenant: the name blocks wholly below its oldest row (a block the prune cut keeps
# its seqs: reading a deleted row finds nothing).
_REMOVE_NAME_BLOCKS = (
    "DELETE FROM name_blocks WHERE tenant_id = %(tenant)s AND last_seq < "
    "coalesce((SELECT min(seq) FROM semantic_events WHERE tenant_id = %(tenant)s), 9223372036854775807)"
)
_REMOVE_ROLLUPS = _count_rows_sql(
    "tenant_id = %s AND seq = ANY(%s::bigint[]) AND seq BETWEEN %s AND %s", sign="-"
)

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
# The database's day: whole days since the epoch, by its clock.
_DB_DAY = "floor(extract(epoch FROM statement_timestamp()) / 86400)::int"
# The write path's ids, stamped (event_ids.gen) with the later of the node's day of receipt and the
# database's: each group starts with ``_TURN_AND_DAY`` (the writers' turn, ``_WRITE_TURN``, taken
# before the group's first seq; ``_DAY`` without the read side), then copies its ids in (``_COPY_IDS``,
# in a savepoint). Only when one of them is there already does ``_INSERT_NEW_IDS`` say which.
_TURN_AND_DAY = f"SELECT pg_advisory_xact_lock_shared({LOCK_KEY}), {_DB_DAY}"
_DAY = f"SELECT {_DB_DAY}"
_COPY_IDS = "COPY event_ids (tenant_id, event_id, gen) FROM STDIN"
_INSERT_NEW_IDS = """
    INSERT INTO event_ids (tenant_id, event_id, gen)
    SELECT k.t, k.e, %b::int FROM unnest(%b::text[], %b::text[]) AS k(t, e) ORDER BY k.t, k.e
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, event_id"""
# Ids received before the previous generation began, by the database's clock less a day of margin:
# generations are the window's length (%(days)s) long, numbered as ``generation()`` does (day / days),
# so an id is kept for at least the window and at most twice it, and a day.
_PRUNE = f"""
    DELETE FROM event_ids
    WHERE (tenant_id, event_id) IN (
        SELECT tenant_id, event_id FROM event_ids
        WHERE gen < (({_DB_DAY} - 1) / %(days)s - 1) * %(days)s
        LIMIT %(limit)s
    )"""
