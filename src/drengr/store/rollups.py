"""The read side's rollups, the same for both engines.

The rollups (docs/performance.md "Reading at 10M rows") count, per tenant,
received minute (`2026-11-26T02:50`), event name and type, the events stored,
and per measure its sum; and the same per received hour (`2026-11-26T02`).
Each engine's builder counts the committed rows into them off the write path
(``drengr.store.sqlite.read_side``, ``drengr.store.postgres.store``).
"""

ROLLUP_GRAINS = (("", "minute", 16), ("hourly_", "hour", 13))  # table prefix, column, text width
# name_blocks (both engines): where each event name is, per tenant and block of 2**NAME_BLOCK_BITS seqs.
NAME_BLOCK_BITS = 10
