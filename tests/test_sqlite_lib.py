"""The writer process's SQLite settings (``drengr._sqlite_lib``), checked in fresh interpreters."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="libsqlite3.so.0 is Linux's: runs on Linux, as in CI"
)

PROGRAM = """
import ctypes, sys
from drengr import _sqlite_lib
unlocked = _sqlite_lib.unlock_connections() if sys.argv[1] == "unlock" else None
import sqlite3
conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE t (x)")
conn.executemany("INSERT INTO t VALUES (?)", [("x" * 100,)] * 1000)
lib = ctypes.CDLL(_sqlite_lib.LIBRARY)
current, highest = ctypes.c_int(), ctypes.c_int()
lib.sqlite3_status(0, ctypes.byref(current), ctypes.byref(highest), 0)  # SQLITE_STATUS_MEMORY_USED
again = lib.sqlite3_config(_sqlite_lib.SQLITE_CONFIG_MEMSTATUS, ctypes.c_int(0))
print(unlocked, current.value > 0, again)
"""


def run(mode: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.split()


def test_unlocked_before_import_the_library_python_uses_keeps_no_statistics():
    # 21 = SQLITE_MISUSE: the library we configured is the one sqlite3 then initialized.
    assert run("unlock") == ["True", "False", "21"]
    assert run("default") == ["None", "True", "21"]  # statistics on: what the setting turns off


def test_too_late_once_sqlite3_is_imported():
    program = "import sqlite3; from drengr._sqlite_lib import unlock_connections; print(unlock_connections())"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False"], result.stderr
