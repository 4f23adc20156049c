"""The mapper's two twins as the tests name them (drengr.mapping): the compiled one and the pure one.

``MAPPERS``: the two modules as pytest params, for a table run against each
(the compiled one skips when it did not load: tests/test_fast_twin.py fails
loudly then). ``MAPPER_TWINS`` and ``mapper_env``: which one an app in this
process uses (the ``mapper_twin`` fixture of tests/conftest.py) or a
``drengr serve`` child runs.
"""

import pytest

try:
    from drengr.mapping import _mapping_c
except ImportError:  # test_fast_twin.py::test_compiled_modules_are_loaded fails loudly
    _mapping_c = None
from drengr.mapping import _mapping_py

MAPPERS = [
    pytest.param(
        _mapping_c,
        id="compiled",
        marks=pytest.mark.skipif(
            _mapping_c is None,
            reason="drengr.mapping._mapping_c did not load: runs wherever it does, as in CI (test_fast_twin.py fails loudly)",
        ),
    ),
    pytest.param(_mapping_py, id="twin"),
]

MAPPER_TWINS = ["compiled", "pure"]


def mapper_env(twin: str) -> dict[str, str]:
    """What a `drengr serve` process's environment adds to run ``twin``."""
    return {"DRENGR_NO_EXTENSIONS": "1"} if twin == "pure" else {}
