"""Stubs of the compiled measures' sums (``_measures.pyx``): the same names as ``_measures_py``."""

from collections.abc import Iterable
from typing import Any

def sum_measures(
    rows: Iterable[tuple[str, str, str, Any]],
) -> list[tuple[str, str, str, str, int | float]]: ...
