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
``Writer`` keeps beside its window, and for each generation its table's
capacity, count and top seq and each run's count, top seq and filter size),
then each generation's table (``FingerprintIndex.dump``, native byte order)
followed by each of its runs (its filter's bits, then its sorted slots), and
the CRC-32 of all that before it, 4 bytes little-endian. Written to a
``.partial`` file of the writer's own, then renamed over the old one: a
reader sees a whole file or none. A file of the first format (tables only,
from an older drengr) is read too.

The runs read back are not loaded into memory: they stay in the file, which
is kept open while they are used (a later save renames a new file over it;
the open one lives on until its last run is closed).
"""

import contextlib
import json
import logging
import os
import sys
import zlib
from collections.abc import Sequence
from typing import Any

from .window import Bloom, FingerprintIndex, Generation, Run, SharedFile, bloom_blocks

log = logging.getLogger("drengr.store")

MAGIC = b"drengr dedup window 2\n"
_MAGIC_TABLES_ONLY = b"drengr dedup window 1\n"  # an older drengr's: the tables, no runs
_MAX_HEADER_BYTES = 65_536


def window_path(database: str) -> str:
    return database + "-window"


def save(database: str, header: dict[str, Any], generations: Sequence[Generation]) -> None:
    """Write ``generations`` and ``header`` to the database's window file.

    OSError when it cannot be written, ValueError when a run cannot be read
    back (nothing is left behind then).
    """
    path = window_path(database)
    partial = f"{path}.{os.getpid()}.partial"
    _remove_abandoned(path)
    tables = [generation.table.dump() for generation in generations]
    described = [
        {
            "table": {"capacity": capacity, "count": count, "top": top},
            "runs": [
                {"count": run.count, "top": run.top, "blocks": run.bloom.blocks} for run in generation.runs
            ],
        }
        for (capacity, count, top, _), generation in zip(tables, generations, strict=True)
    ]
    head = (
        MAGIC + json.dumps({**header, "byteorder": sys.byteorder, "generations": described}).encode() + b"\n"
    )
    try:
        with open(partial, "wb") as out:
            crc = zlib.crc32(head)
            out.write(head)
            for (*_, table), generation in zip(tables, generations, strict=True):
                crc = zlib.crc32(table, crc)
                out.write(table)
                for run in generation.runs:
                    for data in (run.bloom.dump(), *run.chunks()):
                        crc = zlib.crc32(data, crc)
                        out.write(data)
            out.write(crc.to_bytes(4, "little"))
        os.replace(partial, path)
    except BaseException:  # OSError; ValueError: a run cut short under it
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


def load(database: str) -> tuple[dict[str, Any], list[Generation]] | None:
    """The header and the generations in the database's window file; None when there is none,
    or it is damaged or of another format (logged)."""
    path = window_path(database)
    try:
        source = open(path, "rb")  # noqa: SIM115 - kept open by the runs read from it, else closed below
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cannot read the dedup window's file (%s): building the window from the table", error)
        return None
    shared = SharedFile(source)
    try:
        return _read(shared)
    except (OSError, ValueError, KeyError, TypeError, MemoryError) as error:
        log.warning("the dedup window's file %s is not usable (%s): building the window from the table",
                    path, error)  # fmt: skip
        return None
    finally:
        shared.release()  # the runs read from it hold it open


def _read(shared: SharedFile) -> tuple[dict[str, Any], list[Generation]]:
    source = shared.file
    magic = source.read(len(MAGIC))
    if magic not in (MAGIC, _MAGIC_TABLES_ONLY):
        raise ValueError("another format")
    line = source.readline(_MAX_HEADER_BYTES)
    if not line.endswith(b"\n"):
        raise ValueError("no header")
    header = json.loads(line)
    if header["byteorder"] != sys.byteorder:
        raise ValueError("written on a machine of another byte order")
    if magic == _MAGIC_TABLES_ONLY:
        header["generations"] = [{"table": table, "runs": []} for table in header.pop("indexes")]
    described = header["generations"]
    size = len(magic) + len(line) + 4
    for entry in described:
        size += 8 * int(entry["table"]["capacity"])
        size += sum(64 * int(run["blocks"]) + 8 * int(run["count"]) for run in entry["runs"])
    if os.fstat(source.fileno()).st_size != size:  # before allocating what a damaged header says
        raise ValueError("its size is not what its header says")
    crc = zlib.crc32(line, zlib.crc32(magic))

    def fill(view: memoryview) -> None:  # a table's or a filter's bytes, straight from the file
        nonlocal crc
        _read_exactly(source, view)
        crc = zlib.crc32(view, crc)

    def checked(chunk: bytes) -> None:  # a run's bytes, read where they lie
        nonlocal crc
        crc = zlib.crc32(chunk, crc)

    generations = []
    try:
        for entry in described:
            table = entry["table"]
            generation = Generation(
                FingerprintIndex.load(int(table["capacity"]), int(table["count"]), int(table["top"]), fill)
            )
            generations.append(generation)
            for run in entry["runs"]:
                count, top, blocks = int(run["count"]), int(run["top"]), int(run["blocks"])
                if count < 1 or top < 0 or blocks != bloom_blocks(count):
                    raise ValueError("not a dedup window's run")
                bloom = Bloom.load(blocks, fill)
                generation.runs.append(Run.read(shared, source.tell(), count, top, bloom, each=checked))
                source.seek(8 * count, os.SEEK_CUR)
        if source.read(5) != crc.to_bytes(4, "little"):  # and nothing after it
            raise ValueError("damaged (its checksum differs)")
    except BaseException:
        for generation in generations:
            generation.close()
        raise
    return header, generations


def _read_exactly(source: Any, view: memoryview) -> None:
    done = 0
    while done < len(view):
        got = source.readinto(view[done:])
        if not got:
            raise ValueError("cut short")
        done += got
