"""The PostgreSQL store: the same interface and the same ``semantic_events`` as SQLite, for several nodes.

Several stateless ingest nodes (``drengr serve --store postgresql://…``, or
gunicorn workers) share one PostgreSQL database. Everything that must be exact
across nodes is decided by PostgreSQL itself, inside the write transaction:

- ``semantic_events`` has the ten fixed columns (``dims``/``measures`` as
  ``jsonb``; ``occurred_at``/``received_at`` as ``text`` holding exactly
  ``2026-11-26T02:50:53.123Z``, so they read back byte for byte as SQLite's and
  sort in time order) plus ``library`` (``context.library``, as SQLite's) and
  ``seq``, an identity column. It is append-only, written with ``COPY``: no
  random-key index on it at all; its one index, ``(tenant_id, seq)``, grows
  at its right edge (seq only increases) and serves the read API's newest-first
  pages and cursors.
- Dedup is a side table ``event_ids (tenant_id, event_id, gen)`` whose primary
  key is ``(tenant_id, event_id)``. A write copies the group's ids into it
  (``COPY``, in a savepoint), as if all were new: usually they are, and a COPY
  costs about half of an ``INSERT … ON CONFLICT DO NOTHING``, which looks each
  id up before inserting it. When one is there already, the key refuses the
  COPY, the savepoint is rolled back, and ``INSERT … ON CONFLICT DO NOTHING
  RETURNING`` inserts the ids again: what comes back is new, the rest are
  duplicates. Two nodes inserting the same id at once are serialised by the
  unique index (the second waits for the first to commit or roll back), so
  dedup is exact across nodes. ``gen`` is the day of receipt by the
  database's clock (or the node's, when that is later); ids older than the
  previous generation of the window (less a day of clock margin) by the
  database's clock are deleted by ``prune()`` (found through a BRIN index on
  ``gen``), which a writer runs every ``PRUNE_EVERY_SECONDS``: the dedup index
  holds one to two windows of ids, not all of history, so its size — and the
  write rate — stays flat. No node's clock decides what is forgotten: a node
  whose clock runs ahead or behind neither prunes others' ids early nor stamps
  its own to be pruned early (docs/mapping.md "Deduplication when the clock is
  wrong").
- Daily-cap metering locks the group's ``daily_usage`` rows, one (tenant, day)
  at a time (``SELECT … FOR UPDATE``), adds what fits and releases the locks at
  COMMIT: exact across nodes. An item dropped over the cap is also taken out of
  ``event_ids``, so a later resend is not mistaken for a duplicate. It runs in a savepoint and fails open (an error there
  rolls back only the metering; the events are stored).
- Lock order is fixed — event ids sorted by ``(tenant_id, event_id)``, then
  usage rows sorted by ``(tenant_id, day)`` — so concurrent writers do not
  deadlock each other (the COPY sorts by code point, the INSERT by the
  column's collation: under a collation other than ``C`` or ``C.UTF-8`` a
  group with a duplicate may, rarely, meet another in the other order); a
  deadlock or serialization failure is retried.
- Group commit: ``writers`` threads (each with its own connection) take
  whatever requests are waiting and write them in one transaction.

Citus: every table that grows is keyed by ``tenant_id`` (``event_ids`` and
``daily_usage`` have it first in their primary keys; ``semantic_events`` has
no unique key), so ``semantic_events``, ``event_ids`` and ``daily_usage`` can be
distributed by ``tenant_id`` and co-located, with ``tenants`` and ``api_keys``
(looked up by key digest, not by tenant) as reference tables; each metering
statement then touches one shard. (Designed for, not run against Citus here.)

One job a module: ``store`` (``PostgresStore``: connections, admin, prune, the
writer threads and their group commit), ``statements`` (the schema version and
every statement of the write path), ``text`` (what PostgreSQL refuses, replaced);
``drengr.store.migrate`` copies a SQLite store over (``drengr db import-sqlite``).

Strings PostgreSQL refuses are dealt with before the database (never a 502):
``text`` cannot hold U+0000 and no column can hold a lone surrogate, and
``jsonb`` refuses the escape ``\\u0000``. Every such character — a NUL in any
text column or inside dims/measures (keys and values), a lone surrogate
anywhere — becomes U+FFFD (the replacement character), as the mapper already
does for lone surrogates. ``jsonb`` also reorders object keys (shorter keys
first) and normalises spacing: read dims/measures as JSON, not as text.
"""

from .statements import EVENT_COLUMNS, SCHEMA_VERSION
from .store import PostgresStore
from .text import clean_json, clean_rows, clean_text

__all__ = ["EVENT_COLUMNS", "SCHEMA_VERSION", "PostgresStore", "clean_json", "clean_rows", "clean_text"]
