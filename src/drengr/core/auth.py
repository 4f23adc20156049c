"""Where a write key comes from, what kind it is, and how it is stored.

The contract (docs/mapping.md "Auth"): Basic username, then ``X-Write-Key``, then a
top-level ``writeKey`` in the body, then ``?writeKey=`` in the query string;
the first place that has a key decides. Keys are kept only as SHA-256
digests. Pure: randomness is passed in.
"""

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qsl

PUBLISHABLE_PREFIX = "drengr_pk_"
SECRET_PREFIX = "drengr_sk_"
KEY_KINDS = {"publishable": PUBLISHABLE_PREFIX, "secret": SECRET_PREFIX}

# Returned by key_from_headers when an Authorization header is present but
# cannot be read: that is an auth failure like any other.
MALFORMED = object()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store knows about a key, looked up by its digest."""

    key_hash: str
    tenant_id: str
    kind: str  # "publishable" | "secret"
    revoked: bool = False
    # The tenant's exact key names kept although they hold a PII fragment (tenants set --pii-allow).
    pii_allow: tuple[str, ...] = ()


def key_from_headers(authorization: str | None, x_write_key: str | None) -> object:
    """The key from Basic auth or X-Write-Key: a str, None (no key there) or MALFORMED."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return MALFORMED
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return MALFORMED
        username = decoded.split(":", 1)[0]
        if username:
            return username
    if x_write_key:
        # @jitsu/js refuses a key without a ":secret" part, so split like Basic.
        return x_write_key.strip().split(":", 1)[0] or None
    return None


def key_from_query(query: str) -> str | None:
    """The first non-empty ``writeKey`` of a raw query string, or None.

    RudderStack's browser SDKs put the key there when they cannot send a
    header: ``navigator.sendBeacon`` (``/beacon/v1/batch?writeKey=``) and the
    source-config fetch. Undecodable bytes stay as surrogates: an unknown key.
    """
    if "writeKey" not in query:  # the common case: no query, or none of ours
        return None
    for name, value in parse_qsl(query, errors="surrogateescape"):
        if name == "writeKey" and value:
            return value
    return None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(kind: str, random_bytes: bytes) -> str:
    """A fresh key of ``kind`` from at least 24 bytes the caller drew from a CSPRNG."""
    if len(random_bytes) < 24:
        raise ValueError("a key needs at least 24 random bytes")
    return KEY_KINDS[kind] + base64.urlsafe_b64encode(random_bytes).decode().rstrip("=")


def may_ingest(key: str, record: KeyRecord | None) -> bool:
    """True only for a known, unrevoked, publishable key (secret keys never ingest)."""
    if record is None:
        return False
    # The lookup was by digest; compare again in constant time so a wrong
    # record can never pass on a partial match.
    same = hmac.compare_digest(record.key_hash, hash_key(key))
    return same and not record.revoked and record.kind == "publishable"
