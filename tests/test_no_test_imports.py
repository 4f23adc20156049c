"""Tests are not a library: no module under tests/ or bench/ imports a test module or the conftest.

What tests and benchmarks share lives in ``tests/support/`` (real servers, the
PostgreSQL server and its schemas, the captured requests, the senders of the
fault tests) and in ``tests/clients/harness.py``; fixtures reach a test through
``tests/conftest.py``, never through an import of it. A test module imported by
another runs its module-level code twice over (under two names when one import
is relative and the other absolute) and ties the two together. Bench modules
may import each other (``from .bench_postgres import schema_dsn``).

Also caught: a program handed to a child Python as a string (``python -c``)
that imports one. The detector is tested first on a table of lines.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tests", "bench")
# A test module (test_*.py anywhere under tests/) or the conftest, named as a module.
TEST_MODULE = re.compile(r"(^|\.)(test_\w+|conftest)$")
# `from x import y` / `import x` inside a string (a program for `python -c`).
IMPORT_IN_TEXT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\s+([\w, ]+)|import\s+([\w., ]+))", re.MULTILINE)


def is_test_module(module: str) -> bool:
    return module.startswith("tests.") and bool(TEST_MODULE.search(module))


def imported_modules(source: str, module: str) -> list[str]:
    """Every module ``source`` (the module named ``module``) imports, absolute, by name."""
    package = module.rpartition(".")[0]
    found: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(part for part in (base, node.module or "") if part)
            found += [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for source_module, names, plain in IMPORT_IN_TEXT.findall(node.value):
                if plain:
                    found += [name.strip() for name in plain.split(",")]
                else:
                    found += [source_module, *(f"{source_module}.{n.strip()}" for n in names.split(","))]
    return found


def imports_of_test_modules(path: Path, module: str) -> list[str]:
    return sorted({target for target in imported_modules(path.read_text(), module) if is_test_module(target)})


@pytest.mark.parametrize(
    ("module", "line", "flagged"),
    [
        ("tests.test_a", "from .conftest import post", True),
        ("tests.test_a", "from tests.conftest import post", True),
        ("tests.test_a", "from .test_b import helper", True),
        ("tests.test_a", "from . import test_b", True),
        ("tests.test_a", "from . import test_b as b", True),
        ("tests.test_a", "import tests.test_b", True),
        ("tests.clients.harness", "from ..test_b import helper", True),
        ("bench.bench_x", "from tests.test_settings import child_env", True),
        ("tests.test_a", "program = 'import json, wsgi\\nfrom tests.test_settings import observe'", True),
        ("tests.test_a", "from .support.app import post", False),
        ("tests.test_a", "from .support import postgres", False),
        ("tests.test_a", "from tests.clients.harness import launch", False),
        ("bench.bench_x", "from .bench_postgres import schema_dsn", False),
        ("bench.bench_x", "from tests.support.realserver import launch", False),
        ("tests.test_a", "import pytest", False),
        ("tests.test_a", "# from .test_b import helper: a comment", False),
    ],
)
def test_the_detector(module: str, line: str, flagged: bool) -> None:
    found = [target for target in imported_modules(line, module) if is_test_module(target)]
    assert bool(found) is flagged, found


def python_files() -> list[Path]:
    files = [
        path
        for folder in FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "node_modules" not in path.parts
        and "__pycache__" not in path.parts
        and path != Path(__file__).resolve()  # its table above holds the imports it looks for, as text
    ]
    assert len(files) > 50, "found almost nothing: the walk is wrong"
    return files


def test_no_module_imports_a_test_module_or_the_conftest() -> None:
    offenders = {}
    for path in python_files():
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if found := imports_of_test_modules(path, module):
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, (
        f"these import a test module or the conftest; move what they share to tests/support/: {offenders}"
    )
