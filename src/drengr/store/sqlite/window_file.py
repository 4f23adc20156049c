"""The dedup window's file, ``<database>-window``: a writer's window as it closed, to start from again.

Built from the table, the window takes its time: about 2 µs an id, so a writer
holding a few million ids keeps its first requests after a start waiting,
those past the busy timeout until they get 502. A writer that stops writes its
window here (``save``), and the next one to start on the same file reads it
back (``load``, at disk speed), then only the rows written after it from the
table.

The file is derived, and trusted only when it fits the table (the caller
checks what ``load`` returns): the database it was written for
(``meta.database_id``), the last row it had seen still there with the same
event id, and the same generation. A file that does not fit, is damaged
(a CRC-32 over all of it) or is missing means the window is built from the
table. Deleting it is always safe.

Layout: a first line naming the format, a line of JSON (the header: what
``Writer`` keeps beside the indexes, and each index's capacity, count and top
seq), each index's table (``FingerprintIndex.dump``, native byte order), and
the CRC-32 of all that before it, 4 bytes little-endian. Written to a
``.partial`` file of the writer's own, then renamed over the old one: a
reader sees a whole file or none. Imports only the standard library.
"""

import contextlib
import json
import logging
import os
import sys
import zlib
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("drengr.store")

MAGIC = b"drengr dedup window 1\n"
_MAX_HEADER_BYTES = 65_536


def window_path(database: str) -> str:
    return database + "-window"


def save(database: str, header: dict[str, Any], indexes: Sequence[Any]) -> None:
    """Write ``indexes`` (``FingerprintIndex``) and ``header`` to the database's window file.

    OSError when it cannot be written (nothing is left behind then).
    """
    path = window_path(database)
    partial = f"{path}.{os.getpid()}.partial"
    _remove_abandoned(path)
    dumps = [index.dump() for index in indexes]
    head = MAGIC + json.dumps({
        **header,
        "byteorder": sys.byteorder,
        "indexes": [{"capacity": capacity, "count": count, "top": top} for capacity, count, top, _ in dumps],
    }).encode() + b"\n"  # fmt: skip
    try:
        with open(partial, "wb") as out:
            crc = zlib.crc32(head)
            out.write(head)
            for *_, table in dumps:
                crc = zlib.crc32(table, crc)
                out.write(table)
            out.write(crc.to_bytes(4, "little"))
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _remove_abandoned(path: str) -> None:
    """``.partial`` files of writers that are gone (killed while saving): nobody will finish them."""
    folder, name = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    for found in names:
        pid = found[len(name) + 1 : -len(".partial")]
        if found.startswith(name + ".") and found.endswith(".partial") and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, found))
            except OSError:  # alive (another user's, say): not ours to remove
                pass


def load(database: str, index_type: Any) -> tuple[dict[str, Any], list[Any]] | None:
    """The header and the indexes (``index_type.load``) in the database's window file; None when
    there is none, or it is damaged or of another format (logged)."""
    path = window_path(database)
    try:
        source = open(path, "rb")  # noqa: SIM115 - closed below, whatever happens
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cannot read the dedup window's file (%s): building the window from the table", error)
        return None
    with source:
        try:
            return _read(source, index_type)
        except (OSError, ValueError, KeyError, TypeError, MemoryError) as error:
            log.warning("the dedup window's file %s is not usable (%s): building the window from the table",
                        path, error)  # fmt: skip
            return None


def _read(source: Any, index_type: Any) -> tuple[dict[str, Any], list[Any]]:
    magic = source.read(len(MAGIC))
    if magic != MAGIC:
        raise ValueError("another format")
    line = source.readline(_MAX_HEADER_BYTES)
    if not line.endswith(b"\n"):
        raise ValueError("no header")
    header = json.loads(line)
    if header["byteorder"] != sys.byteorder:
        raise ValueError("written on a machine of another byte order")
    size = len(magic) + len(line) + sum(8 * int(entry["capacity"]) for entry in header["indexes"]) + 4
    if os.fstat(source.fileno()).st_size != size:  # before allocating what a damaged header says
        raise ValueError("its size is not what its header says")
    crc = zlib.crc32(line, zlib.crc32(magic))

    def fill(view: memoryview) -> None:  # FingerprintIndex.load's: its table, straight from the file
        nonlocal crc
        _read_exactly(source, view)
        crc = zlib.crc32(view, crc)

    indexes = [
        index_type.load(int(entry["capacity"]), int(entry["count"]), int(entry["top"]), fill)
        for entry in header["indexes"]
    ]
    if source.read(5) != crc.to_bytes(4, "little"):  # and nothing after it
        raise ValueError("damaged (its checksum differs)")
    return header, indexes


def _read_exactly(source: Any, view: memoryview) -> None:
    done = 0
    while done < len(view):
        got = source.readinto(view[done:])
        if not got:
            raise ValueError("cut short")
        done += got
