"""The SQLite store: WAL, BEGIN IMMEDIATE, group commit, an in-memory dedup window.

Layout, and why (the dedup index, not parsing, is what costs at scale, as
``bench/bench_store.py`` shows):

- ``semantic_events`` is append-only: its only key is ``seq INTEGER PRIMARY KEY
  AUTOINCREMENT`` (always increasing, never reused), so its write rate does not
  fall as it grows. There is no random-key index on disk at all; dedup lives in
  memory (``writer``).
- One writer per process owns the write connection and commits whatever
  requests are waiting in one transaction (group commit), so
  ``synchronous=FULL`` costs one fsync per group, not per request.
- ``writer="process"`` (``drengr serve --writer process``) moves that work —
  the connection, the dedup window, the metering — into a child process of
  its own (``process``); SQLite's CPU time then no longer competes for the
  request threads' GIL, and a second core can run it.
- Several processes share the file: every write transaction is
  ``BEGIN IMMEDIATE`` with a busy timeout, never a deferred upgrade, and
  their writers take turns at an OS lock (``locks.WriterLock``).
- WAL checkpoints run in a background thread (``locks.Checkpointer``), not in the writer's commits.

One job a module:

- ``store``: ``SQLiteStore``, the facade (migration, admin, prune, handing writes over);
- ``writer``: ``Writer``, the group commit, the dedup window and metering, which the
  writer thread and the writer process both run;
- ``process``: the writer process's plumbing, both ends of its pipe;
- ``locks``: the writers' OS lock and the WAL checkpointer;
- ``read_side``: the rollups' statements, the user index, the rollups' backfill;
- ``connect``: a connection with the store's pragmas, the write transaction.

The tables are ``drengr/store/schema/sqlite.sql``.
"""

from .read_side import backfill_rollups
from .store import WRITERS, SQLiteStore

__all__ = ["WRITERS", "SQLiteStore", "backfill_rollups"]
