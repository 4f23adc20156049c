"""Import helpers."""

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def without_numpy() -> Iterator[None]:
    """Imports inside see numpy as not installed, unless something already imported it.

    sqlite-utils imports numpy, when it is installed, only to map numpy column
    types; we never write numpy values, and numpy holds ~12 MB of a server's
    memory. Only imports inside the block are affected: ``import numpy`` works
    again after it.
    """
    if "numpy" in sys.modules:
        yield
        return
    sys.modules["numpy"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules["numpy"]
