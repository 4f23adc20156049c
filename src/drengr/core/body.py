"""Bounded decompression of request bodies (docs/mapping.md "Routes": gzip and deflate, no bombs).

Decompression stops as soon as the output passes the limit. Imports only
``zlib`` and the core's own errors.
"""

import zlib

from .errors import InvalidJSON, RequestTooLarge
from .limits import MAX_BODY_BYTES

_CHUNK = 64 * 1024


def decode_body(raw: bytes, content_encoding: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body as JSON bytes, decompressed when the header says so.

    Raises RequestTooLarge past ``limit`` (on the wire or decompressed) and
    InvalidJSON for a corrupt stream or an encoding we do not speak.
    """
    if len(raw) > limit:
        raise RequestTooLarge()
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip"):
        return _inflate(raw, zlib.MAX_WBITS | 16, limit)
    if encoding == "deflate":
        # RFC 9110 deflate is zlib-wrapped; some clients send raw deflate.
        try:
            return _inflate(raw, zlib.MAX_WBITS, limit)
        except InvalidJSON:
            return _inflate(raw, -zlib.MAX_WBITS, limit)
    raise InvalidJSON()


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    data = raw
    try:
        while True:
            chunk = inflater.decompress(data, _CHUNK)
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge()
            parts.append(chunk)
            data = inflater.unconsumed_tail
            # A full chunk with no input left may still have output pending.
            if inflater.eof or (not data and len(chunk) < _CHUNK):
                break
    except zlib.error:
        raise InvalidJSON() from None
    if not inflater.eof:
        raise InvalidJSON()  # truncated stream
    return b"".join(parts)
