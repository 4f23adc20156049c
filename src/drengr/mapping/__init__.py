"""Bodies → documents → rows: the compiled mapper when it loaded, else its pure twin.

Two modules with the same names and the same output, byte for byte, paired
the way yarl and multidict pair theirs:

- ``_mapping_c`` (``_mapping_c.pyx``, C++ over simdjson's DOM, stubs in
  ``_mapping_c.pyi``) maps every body simdjson accepts;
- ``_mapping_py``, the pure-Python twin, maps the bodies simdjson refuses
  (RFC 8259 allows integers beyond 64 bits, huge exponents and lone
  surrogates, which simdjson does not) and is the oracle the property tests
  hold the compiled module to.

``DRENGR_NO_EXTENSIONS=1`` (any non-empty value, as yarl reads its own;
read once, at import) makes the twin serve everything, as on a machine
where the extension did not build; the store's dedup index reads it too. A
built module that fails to load falls back silently here, but not in the
tests (``tests/test_fast_twin.py::test_compiled_modules_are_loaded``).

Imports ``drengr.core`` and its own twins; the core never imports this
package (it takes any object with ``parse``: ``core.machine.BodyParser``).
"""

import os
from types import ModuleType
from typing import Any

from ..core.limits import DEFAULT_PII_SUBSTRINGS
from . import _mapping_py

NO_EXTENSIONS = bool(os.environ.get("DRENGR_NO_EXTENSIONS"))

# Not named _mapping_c: importing that submodule (as the twin tests do) binds the
# package's attribute of that name, which would undo DRENGR_NO_EXTENSIONS.
_compiled: ModuleType | None = None
if not NO_EXTENSIONS:
    try:
        from . import _mapping_c as _compiled
    except ImportError:  # pragma: no cover - not built; tests/test_fast_twin.py fails loudly
        _compiled = None

COMPILED = _compiled is not None


class BodyMapper:
    """Parses request bodies; the returned document maps itself to rows.

    Takes the compiled module as it is when the mapper is built, so a test
    can make one mapper pure by setting ``drengr.mapping._compiled`` to None.
    """

    def __init__(
        self, pii_substrings: tuple[str, ...] = DEFAULT_PII_SUBSTRINGS, pii_allow: tuple[str, ...] = ()
    ) -> None:
        self._python = _mapping_py.Mapper(pii_substrings, pii_allow)
        compiled = _compiled
        self._compiled = compiled.Mapper(pii_substrings, pii_allow) if compiled is not None else None
        self._refused: type[Exception] = compiled.Refused if compiled is not None else _mapping_py.Refused

    @property
    def compiled(self) -> bool:
        """Whether bodies go to the compiled mapper first."""
        return self._compiled is not None

    def parse(self, body: bytes) -> Any:
        """A Document (compiled or twin); raises InvalidJSON."""
        if self._compiled is not None:
            try:
                return self._compiled.parse(body)
            except self._refused:
                pass
        return self._python.parse(body)
