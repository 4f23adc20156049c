"""STYLE: the core opens no socket, file or database, and reads no clock, env or randomness."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).parents[1] / "src" / "drengr" / "core"
BLOCKED = ["flask", "werkzeug", "sqlite3", "_sqlite3", "sqlite_utils", "waitress", "socket", "random", "secrets",
           "datetime", "drengr.web", "drengr.store", "drengr.cli"]  # fmt: skip


def test_core_imports_with_io_modules_blocked():
    program = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in {BLOCKED!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import drengr.core.machine, drengr.core.settings, drengr.core.pixel
from drengr.mapping import BodyMapper, COMPILED, _mapping_py
print("ok", COMPILED)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_core_does_not_pick_the_mapper():
    """drengr.mapping picks compiled or twin (and reads DRENGR_NO_EXTENSIONS): the core takes any BodyParser."""
    modules = [f"drengr.core.{p.stem}" for p in sorted(CORE.glob("*.py"))]
    program = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "drengr.mapping" or name.startswith("drengr.mapping."):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
for name in {modules!r}:
    importlib.import_module(name)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


@pytest.mark.parametrize("module", sorted(p.name for p in CORE.glob("*.py")))
def test_core_module_names_no_clock_env_or_io(module):
    tree = ast.parse((CORE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint(
        {"os", "time", "random", "secrets", "socket", "sqlite3", "flask", "waitress", "io"}
    )
    source = (CORE / module).read_text()
    assert "open(" not in source
