-- The SQLite store's user index and name blocks, in a file of its own beside the database (`drengr.db` →
-- `drengr-users.db`; drengr.store.sqlite.read_side). Derived from semantic_events alone: deleted,
-- it is built again. Kept apart so that building it never holds the database's write lock.
-- Statements end with a semicolon at the end of a line.

-- `users_seq`: every row of semantic_events with seq at or below it is indexed; `database_id`:
-- the database it indexes (its meta.database_id); `layout`: the layout of this file's tables
-- (read_side.USERS_LAYOUT): a file of another layout is built again.
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);

-- One user's events: per block of 16,384 seqs, tenant and external_id, the seqs of one step of the
-- builder, comma-separated (a row per user and step, not per event). Keyed by block first, so that
-- a step's rows go near the end of the tree and a look-up is one seek per block.
CREATE TABLE IF NOT EXISTS user_seqs (
    block INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    seqs TEXT NOT NULL,
    PRIMARY KEY (block, tenant_id, external_id, first_seq)
) WITHOUT ROWID;

-- The users seen per tenant and received UTC day: "distinct users" (the Datasette query) adds up
-- a few rows per user and day instead of reading every event.
CREATE TABLE IF NOT EXISTS daily_users (
    tenant_id TEXT NOT NULL,
    day TEXT NOT NULL,
    external_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, day, external_id)
) WITHOUT ROWID;

-- Where each event name is, per block of 1,024 seqs: its first and last seq there. One name's
-- events (/v1/events?event_name=) are read block by block between those two seqs, so a rare name
-- is found without walking the table, and a common one fills its page from the first block.
CREATE TABLE IF NOT EXISTS name_blocks (
    tenant_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    block INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, event_name, block)
) WITHOUT ROWID;
