"""SQLite library settings for the writer process, made before ``sqlite3`` is imported.

Python's ``sqlite3`` runs SQLite in serialized mode with memory statistics
on: every API call (every bound parameter, eleven a row) takes the
connection's mutex, and every allocation a global one; the writer process
spent ~9 % of its CPU time locking them. It uses each connection from one
thread only (the writer's from its main thread, the checkpointer's from its
own), which is all SQLite's multi-thread mode asks, and nothing reads
SQLite's memory statistics. Both off, the default server took 5-8 % more
100-event batches (docs/performance.md, "Settings that matter"). They can only be set before the
library initializes, which ``import sqlite3`` does: the writer process calls
this first. Imports nothing of ours, and not ``sqlite3``.
"""

import ctypes
import sys

SQLITE_CONFIG_MULTITHREAD = 2
SQLITE_CONFIG_MEMSTATUS = 9
LIBRARY = "libsqlite3.so.0"  # the soname Python's _sqlite3 links to on Linux: the loader shares one copy


def unlock_connections() -> bool:
    """Multi-thread mode, no memory statistics; False if sqlite3 was already imported or there is no such library."""
    if "_sqlite3" in sys.modules:
        return False
    try:
        config = ctypes.CDLL(LIBRARY).sqlite3_config
    except (OSError, AttributeError):  # no shared SQLite library (not Linux, or a static build)
        return False
    config.restype = ctypes.c_int
    multithread = config(SQLITE_CONFIG_MULTITHREAD) == 0
    return config(SQLITE_CONFIG_MEMSTATUS, ctypes.c_int(0)) == 0 and multithread
