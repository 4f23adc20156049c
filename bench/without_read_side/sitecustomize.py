"""Switches the read side off in every Python process that has this folder on its path.

``bench_http.py`` puts it first on ``PYTHONPATH`` for the rounds "without the read side" of
``bench_http_read_side`` and ``bench_http_postgres``: the server and its writer process (a fresh
interpreter, which a patch made in the server would not reach) then run SQLite's ``Writer`` and
``PostgresStore`` with ``builds_read_side`` False, as ``bench_read.py`` sets it in-process. It
patches each module as it is imported, not before: the writer process must set up SQLite
(``drengr._sqlite_lib``) before anything imports ``sqlite3``.
"""

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

# The modules whose class builds the read side, by name.
BUILDERS = {"drengr.store.sqlite.writer": "Writer", "drengr.store.postgres.store": "PostgresStore"}


class _SwitchOff(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in BUILDERS:
            return None
        # The real finders find it; this only wraps their loader.
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, run = spec.loader, spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            getattr(module, BUILDERS[name]).builds_read_side = False

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _SwitchOff())
