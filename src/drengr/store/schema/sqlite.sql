-- The SQLite store's tables (drengr.store.sqlite.store migrates: every statement runs on every
-- start, inside one BEGIN IMMEDIATE; the columns added since version 1 are added to older files
-- there, with the rows the new tables need). Statements end with a semicolon at the end of a line.

CREATE TABLE IF NOT EXISTS "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);

CREATE TABLE IF NOT EXISTS "tenants" (
   "tenant_id" TEXT PRIMARY KEY,
   "daily_cap" INTEGER NOT NULL,
   "created_at" TEXT NOT NULL,
   -- The tenant's PII allow-list (tenants set --pii-allow): a JSON array of exact key names.
   pii_allow TEXT
);

-- Keys are stored only as SHA-256 digests; key_id is the digest's first 12 hex digits.
CREATE TABLE IF NOT EXISTS "api_keys" (
   "key_hash" TEXT PRIMARY KEY,
   "key_id" TEXT NOT NULL,
   "tenant_id" TEXT NOT NULL REFERENCES "tenants"("tenant_id"),
   "kind" TEXT NOT NULL,
   "created_at" TEXT NOT NULL,
   "revoked_at" TEXT
);

CREATE TABLE IF NOT EXISTS "daily_usage" (
   "tenant_id" TEXT,
   "day" INTEGER,
   "events" INTEGER NOT NULL,
   PRIMARY KEY ("tenant_id", "day")
);

-- Column types and NOT NULL as docs/mapping.md "The semantic_events table", plus `seq`: an
-- always-increasing key the dedup window points at (no other index). `library` is
-- context.library, an extra column (version 1 files lack it: older rows keep NULL there).
CREATE TABLE IF NOT EXISTS semantic_events (
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    event_type TEXT NOT NULL,
    external_id TEXT,
    install_id TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    dims TEXT NOT NULL,
    measures TEXT NOT NULL,
    library TEXT,
    seq INTEGER PRIMARY KEY AUTOINCREMENT
);

-- The read side's rollups (drengr.store.rollups): per tenant, received minute, event name and
-- type, the events stored; per measure, its sum; the same per received hour.
CREATE TABLE IF NOT EXISTS event_rollups (
    tenant_id TEXT NOT NULL,
    minute TEXT NOT NULL,
    event_name TEXT NOT NULL,
    event_type TEXT NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, minute, event_name, event_type)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS measure_rollups (
    tenant_id TEXT NOT NULL,
    minute TEXT NOT NULL,
    event_name TEXT NOT NULL,
    measure TEXT NOT NULL,
    total REAL NOT NULL,
    PRIMARY KEY (tenant_id, minute, event_name, measure)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS hourly_event_rollups (
    tenant_id TEXT NOT NULL,
    hour TEXT NOT NULL,
    event_name TEXT NOT NULL,
    event_type TEXT NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, hour, event_name, event_type)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS hourly_measure_rollups (
    tenant_id TEXT NOT NULL,
    hour TEXT NOT NULL,
    event_name TEXT NOT NULL,
    measure TEXT NOT NULL,
    total REAL NOT NULL,
    PRIMARY KEY (tenant_id, hour, event_name, measure)
) WITHOUT ROWID;

-- What was accepted but not stored, by tenant, UTC day and reason (drengr.drops).
CREATE TABLE IF NOT EXISTS "drop_counts" (
   "tenant_id" TEXT,
   "day" INTEGER,
   "reason" TEXT,
   "count" INTEGER NOT NULL,
   PRIMARY KEY ("tenant_id", "day", "reason")
);

-- Where the clock went back: a group committed from seq on held a row received more than a day
-- before newest_before, the latest time of receipt stored until then. A window built from the
-- table (the dedup window, after a crash) finds its first row with them (drengr.store.sqlite.writer).
CREATE TABLE IF NOT EXISTS clock_backsteps (
    seq INTEGER PRIMARY KEY,
    newest_before TEXT NOT NULL
);
