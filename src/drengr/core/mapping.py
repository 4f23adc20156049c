"""Bodies → documents → rows, through the compiled module when it loaded.

``_fast`` (Cython over simdjson's DOM) is used for every body it accepts;
a body simdjson refuses is handed to the pure-Python twin, which is the
arbiter of what is JSON (RFC 8259 allows integers beyond 64 bits, huge
exponents and lone surrogates, which simdjson does not).
"""

from typing import Any

from .. import _fast_py
from .limits import DEFAULT_PII_SUBSTRINGS

try:
    from .. import _fast  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - the build failed; tests/test_fast_twin.py fails loudly
    _fast = None

COMPILED = _fast is not None


class BodyMapper:
    """Parses request bodies; the returned document maps itself to rows."""

    def __init__(
        self, pii_substrings: tuple[str, ...] = DEFAULT_PII_SUBSTRINGS, pii_allow: tuple[str, ...] = ()
    ) -> None:
        self._python = _fast_py.Mapper(pii_substrings, pii_allow)
        self._compiled = _fast.Mapper(pii_substrings, pii_allow) if _fast is not None else None

    def parse(self, body: bytes) -> Any:
        """A Document (compiled or twin); raises InvalidJSON."""
        if self._compiled is not None:
            try:
                return self._compiled.parse(body)
            except _fast.Refused:
                pass
        return self._python.parse(body)
