"""Keys, tenants, PII allow-lists, daily caps and drop counts: written once for both engines.

``Admin`` holds the statements (``?`` placeholders, upserts both SQLite and
PostgreSQL accept); each store supplies the small part that differs, as
``drengr.store.reader`` does for reads: its placeholder (``mark``), how to
read (``_query``) and how to run statements in one write transaction
(``_transact``, given a cursor-like object with ``execute``/``executemany``).
Imports no database driver.
"""

import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..core.auth import KEY_KINDS, KeyRecord, hash_key, new_key
from ..core.limits import DEFAULT_DAILY_CAP_EVENTS
from ..core.timestamps import format_ms
from .base import KeyCache, KeyInfo, allow_names, allow_text

T = TypeVar("T")

_ENSURE_TENANT = (
    "INSERT INTO tenants (tenant_id, daily_cap, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
)


class Admin:
    """The admin verbs of ``drengr.store.base.Store`` on the tables both engines share."""

    mark = "?"
    _clock: Callable[[], float]
    _keys: KeyCache

    # ------------------------------------------------------------ the per-database part

    def _query(self, sql: str, params: Sequence[Any] = (), what: str = "") -> list[tuple[Any, ...]]:
        """The rows of one read-only statement (``?`` placeholders already in this dialect)."""
        raise NotImplementedError

    def _transact(self, work: Callable[[Any], T], what: str = "") -> T:
        """``work(cursor)`` in one write transaction; a database error → StoreError."""
        raise NotImplementedError

    def _clean(self, text: str) -> str:
        """Text as the database can hold it (PostgreSQL refuses U+0000)."""
        return text

    # ------------------------------------------------------------ shared

    def _sql(self, text: str) -> str:
        return text if self.mark == "?" else text.replace("?", self.mark)

    def _now_text(self) -> str:
        return format_ms(int(self._clock() * 1000))

    def lookup_key(self, key_hash: str) -> KeyRecord | None:
        return self._keys.get(key_hash, self._load_key)

    def _load_key(self, key_hash: str) -> KeyRecord | None:
        rows = self._query(
            self._sql(
                "SELECT k.key_hash, k.tenant_id, k.kind, k.revoked_at, t.pii_allow "
                "FROM api_keys k LEFT JOIN tenants t USING (tenant_id) WHERE k.key_hash = ?"
            ),
            (key_hash,),
        )
        if not rows:
            return None
        row = rows[0]
        return KeyRecord(row[0], row[1], row[2], row[3] is not None, allow_names(row[4]))

    def is_new(self) -> bool:
        rows = self._query(
            "SELECT NOT EXISTS (SELECT 1 FROM tenants) AND NOT EXISTS (SELECT 1 FROM api_keys)"
        )
        return bool(rows[0][0])

    def create_key(self, tenant_id: str, kind: str = "publishable") -> str:
        if kind not in KEY_KINDS:
            raise ValueError(f"kind must be one of {', '.join(KEY_KINDS)}")
        key = new_key(kind, secrets.token_bytes(24))
        digest = hash_key(key)
        now = self._now_text()

        def work(cur: Any) -> None:
            cur.execute(self._sql(_ENSURE_TENANT), (tenant_id, DEFAULT_DAILY_CAP_EVENTS, now))
            cur.execute(
                self._sql(
                    "INSERT INTO api_keys (key_hash, key_id, tenant_id, kind, created_at) VALUES (?,?,?,?,?)"
                ),
                (digest, digest[:12], tenant_id, kind, now),
            )

        self._transact(work)
        return key

    def list_keys(self) -> list[KeyInfo]:
        rows = self._query(
            "SELECT key_id, tenant_id, kind, created_at, revoked_at FROM api_keys ORDER BY created_at, key_id"
        )
        return [KeyInfo(*row) for row in rows]

    def tenants(self) -> list[str]:
        """Every tenant's name, in order."""
        return [row[0] for row in self._query("SELECT tenant_id FROM tenants ORDER BY tenant_id")]

    def revoke_key(self, key_or_id: str) -> bool:
        """Revoke by the key itself or by the key_id `keys list` shows."""
        digest = hash_key(key_or_id)

        def work(cur: Any) -> bool:
            cursor = cur.execute(
                self._sql(
                    "UPDATE api_keys SET revoked_at = ? WHERE (key_hash = ? OR key_id = ?) AND revoked_at IS NULL"
                ),
                (self._now_text(), digest, key_or_id),
            )
            return bool(cursor.rowcount > 0)

        changed = self._transact(work)
        self._keys.clear()
        return changed

    def set_daily_cap(self, tenant_id: str, daily_cap: int) -> None:
        self._transact(
            lambda cur: cur.execute(
                self._sql(
                    "INSERT INTO tenants (tenant_id, daily_cap, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET daily_cap = excluded.daily_cap"
                ),
                (tenant_id, daily_cap, self._now_text()),
            )
        )

    def set_pii_allow(self, tenant_id: str, names: tuple[str, ...]) -> None:
        """The tenant's exact key names kept although they hold a PII fragment (replaces the list)."""
        now = self._now_text()

        def work(cur: Any) -> None:
            cur.execute(self._sql(_ENSURE_TENANT), (tenant_id, DEFAULT_DAILY_CAP_EVENTS, now))
            cur.execute(
                self._sql("UPDATE tenants SET pii_allow = ? WHERE tenant_id = ?"),
                (allow_text(names), tenant_id),
            )

        self._transact(work)
        self._keys.clear()

    def pii_allow(self, tenant_id: str) -> tuple[str, ...]:
        rows = self._query(self._sql("SELECT pii_allow FROM tenants WHERE tenant_id = ?"), (tenant_id,))
        return () if not rows else allow_names(rows[0][0])

    def add_drop_counts(self, counts: dict[tuple[str, int, str], int]) -> None:
        """Add to drop_counts by (tenant_id, day, reason): one short write transaction, keys in order
        (nodes sharing a PostgreSQL database never deadlock); raises StoreError."""
        rows = [(self._clean(tenant_id), day, self._clean(reason), count)
                for (tenant_id, day, reason), count in sorted(counts.items())]  # fmt: skip
        self._transact(
            lambda cur: cur.executemany(
                self._sql(
                    "INSERT INTO drop_counts (tenant_id, day, reason, count) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (tenant_id, day, reason) DO UPDATE SET count = drop_counts.count + excluded.count"
                ),
                rows,
            ),
            "cannot save drop counts",
        )

    def drop_counts(self, tenant_id: str) -> dict[str, int]:
        """A tenant's drop counts by reason, every day summed; raises StoreError."""
        rows = self._query(
            self._sql("SELECT reason, sum(count) FROM drop_counts WHERE tenant_id = ? GROUP BY reason"),
            (tenant_id,),
            "cannot read drop counts",
        )
        return {reason: int(total) for reason, total in rows}
