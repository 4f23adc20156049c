"""The dedup window's generations: the newest ids in a table in memory, the others in runs on disk.

A generation's table (``FingerprintIndex``) takes 8 bytes a slot and is at
most 85 % full: 9.4 to 18.8 bytes an id. Kept whole, a window of 35M ids
would take half a gigabyte. So once a generation's table holds
``SPILL_IDS`` ids, they are *spilled*: sorted by tag into a run, a file of
8-byte slots beside the database, on a thread of its own, while a new table
takes ids and the full one is still looked up (``Generation``). In memory a
run keeps only

- a Bloom filter of its tags, 2 bytes an id (``Bloom``), which answers
  "surely not here" for all but about 1 in 500 new ids, and
- the first slot of each 4 KB page, 8 bytes a page of 512 ids,

so a window of *n* ids takes at most one table of ``SPILL_IDS`` ids
(32 MB) per generation plus about 2 bytes an id. A look-up asks the table,
then each run's filter; only a "maybe" reads a page of the run (one
``pread``), and every seq found there is verified against the table's row
as before: dedup stays exact.

Runs live in files of the writer's own, without a name, next to the
database (``tempfile.TemporaryFile``): the system removes them when the
writer's process ends, however it ends. A run read back from the window's
file (``window_file``) reads from that file, kept open. Imports nothing of
ours outside the compiled index and its twin.
"""

import bisect
import contextlib
import logging
import os
import tempfile
import threading
from array import array
from collections.abc import Iterator
from typing import Any, BinaryIO

try:
    if os.environ.get("DRENGR_NO_EXTENSIONS"):  # the pure twin, by request (as drengr.mapping)
        raise ImportError("DRENGR_NO_EXTENSIONS=1")
    from ..._index import Bloom, FingerprintIndex, any_hits, fingerprint, fingerprints, index_rows
except ImportError:  # the extension did not build (or is not wanted); the twin is exact, only slower
    from ..._index_py import (  # type: ignore[assignment]
        Bloom,
        FingerprintIndex,
        any_hits,
        fingerprint,
        fingerprints,
        index_rows,
    )

__all__ = [
    "Bloom",
    "FingerprintIndex",
    "Generation",
    "Run",
    "SharedFile",
    "bloom_blocks",
    "fingerprint",
    "fingerprints",
    "index_rows",
]

log = logging.getLogger("drengr.store")

# A table is spilled when it holds this many ids: below 85 % of 2**22 slots (3,565,158), so it
# never doubles to 64 MB, with room for the 65,536 rows the writer indexes at a time.
SPILL_IDS = 3_400_000
# A table this large is spilled on a thread of its own (~3 ms a 100,000 ids); a smaller one at once.
BACKGROUND_IDS = 262_144
PAGE_SLOTS = 512  # 4 KB: a page of a run read at a time
_SLOT = 8


def bloom_blocks(ids: int) -> int:
    """How many 64-byte blocks ``Bloom(ids)`` takes: 16 bits an id."""
    return max(1, (ids * 16 + 511) // 512)


class SharedFile:
    """A file that runs read from: closed when the last of its holders lets go."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self._holders = 1  # whoever opened it

    def take(self) -> "SharedFile":
        self._holders += 1
        return self

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self.file.close()


def _fences(slots: Any) -> array:
    """The first slot of each page in ``slots`` (a run's bytes from a page's start)."""
    return array("Q", memoryview(slots).cast("Q")[::PAGE_SLOTS])


def _seq(top: int, low: int) -> int:
    """A seq from its low 32 bits and the highest seq beside it (as ``FingerprintIndex`` reads it)."""
    seq = (top & ~0xFFFFFFFF) | low
    return seq - (1 << 32) if seq > top else seq


class Run:
    """Ids spilled from a table: ``count`` slots sorted by tag, at ``offset`` in a file."""

    def __init__(
        self, shared: SharedFile, offset: int, count: int, top: int, bloom: Any, fences: array
    ) -> None:
        self._shared = shared  # held until ``close``
        self._open = True
        self.offset, self.count, self.top = offset, count, top
        self.bloom = bloom
        self._fences = fences  # the first slot of each page

    @classmethod
    def read(
        cls, shared: SharedFile, offset: int, count: int, top: int, bloom: Any, each: Any = None
    ) -> "Run":
        """A run stored at ``offset`` in ``shared``'s file (the window's); ``each(chunk)`` sees its bytes."""
        fences = array("Q")
        for chunk in cls._chunks(shared.file, offset, count):
            if each is not None:
                each(chunk)
            fences.extend(_fences(chunk))
        return cls(shared.take(), offset, count, top, bloom, fences)

    @staticmethod
    def _chunks(file: BinaryIO, offset: int, count: int) -> Iterator[bytes]:
        """The run's bytes, 1 MB (a whole number of pages) at a time."""
        size, done = count * _SLOT, 0
        while done < size:
            chunk = os.pread(file.fileno(), min(size - done, 256 * PAGE_SLOTS * _SLOT), offset + done)
            if not chunk:
                raise ValueError("a run of the dedup window is cut short")
            yield chunk
            done += len(chunk)

    def chunks(self) -> Iterator[bytes]:
        return self._chunks(self._shared.file, self.offset, self.count)

    @property
    def memory_bytes(self) -> int:
        return int(self.bloom.memory_bytes) + len(self._fences) * _SLOT

    def candidates(self, key: int) -> list[int]:
        """Every seq stored under ``key``'s tag: a page or two of the run read, when its filter says maybe."""
        if not self.bloom.maybe(key):
            return []
        tag = (key >> 32) or 1
        first = max(bisect.bisect_left(self._fences, tag << 32) - 1, 0)
        last = bisect.bisect_right(self._fences, tag << 32 | 0xFFFFFFFF)
        size = min((last - first) * PAGE_SLOTS, self.count - first * PAGE_SLOTS) * _SLOT
        data = os.pread(self._shared.file.fileno(), size, self.offset + first * PAGE_SLOTS * _SLOT)
        if len(data) != size:  # its file was cut under it (the window's file, overwritten in place)
            raise OSError(f"a run of the dedup window is cut short ({len(data)} of {size} bytes)")
        return [
            _seq(self.top, value & 0xFFFFFFFF)
            for value in memoryview(data)[: len(data) // _SLOT * _SLOT].cast("Q")
            if value >> 32 == tag
        ]

    def close(self) -> None:
        if self._open:
            self._open = False
            self._shared.release()


def _make_run(table: Any, folder: str | None) -> "Run | OSError | MemoryError":
    """``table``'s ids as a run in a new file in ``folder``; the error instead when one cannot be made
    (a full disk, no memory for the sort or the filter). ``table`` is left as it was."""
    top, count, file = table.top_seq, len(table), None
    try:
        slots = memoryview(table.sorted_slots())
        file = tempfile.TemporaryFile(dir=folder, buffering=0)  # noqa: SIM115 - the run's, closed with it
        written = 0
        while written < len(slots):  # unbuffered: a full disk fails here, and closing cannot
            written += file.write(slots[written:]) or 0
        bloom = Bloom(count)
        bloom.add_slots(slots)
        return Run(SharedFile(file), 0, count, top, bloom, _fences(slots))
    except (OSError, MemoryError) as error:
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        return error


class Generation:
    """One generation of the dedup window: ``table`` for its newest ids, ``runs`` for the rest.

    A full table is *frozen* (it takes no more ids, a new one does) and spilled;
    until its run is made it is looked up as before. A large one is spilled on a
    thread of its own (``BACKGROUND_IDS``), whose sort and filter run without the
    GIL, so the writer goes on meanwhile; ``settle`` waits for it.
    """

    def __init__(self, table: Any = None, runs: list[Run] | None = None) -> None:
        self.table = FingerprintIndex() if table is None else table
        self.runs: list[Run] = [] if runs is None else runs
        self._frozen: Any = None  # a full table being spilled, or whose spill failed: still looked up
        self._spilling: threading.Thread | None = None
        self._made: list[Run | OSError | MemoryError] = []  # what the spill's thread made
        self._retry_at = 0  # after a spill that failed: the size of the table to try again at

    def _tables(self) -> list[Any]:
        return [self.table] if self._frozen is None else [self.table, self._frozen]

    def __len__(self) -> int:
        return sum(len(table) for table in self._tables()) + sum(run.count for run in self.runs)

    @property
    def memory_bytes(self) -> int:
        tables = sum(int(table.memory_bytes) for table in self._tables())
        return tables + sum(run.memory_bytes for run in self.runs)

    def add_many(self, keys: Any, values: Any) -> None:
        self.table.add_many(keys, values)

    def hits(self, keys: Any) -> list[int]:
        """Positions in ``keys`` that may be stored (candidates to verify); may repeat one."""
        found = [position for table in self._tables() for position in table.hits(keys)]
        if self.runs:
            found += any_hits([run.bloom for run in self.runs], keys)
        return found

    def candidates(self, key: int) -> list[int]:
        tables = (seq for table in self._tables() for seq in table.candidates(key))
        return [*tables, *(seq for run in self.runs for seq in run.candidates(key))]

    def spill_if_full(self, folder: str | None, spill_ids: int = SPILL_IDS) -> None:
        """Spill the table into a run once it holds ``spill_ids`` ids; after a spill that failed, try
        that one again once the table holds a quarter of ``spill_ids`` more. Never raises for the disk
        nor for memory: a run that cannot be made is logged, and its ids stay in memory."""
        self._take_made(spill_ids)
        if self._spilling is not None:
            return
        if self._frozen is None and len(self.table) >= max(spill_ids, self._retry_at):
            self._frozen, self.table = self.table, FingerprintIndex()
        elif self._frozen is None or len(self.table) < self._retry_at:
            return
        frozen = self._frozen
        if len(frozen) >= BACKGROUND_IDS:
            self._spilling = threading.Thread(
                target=lambda: self._made.append(_make_run(frozen, folder)), name="drengr-spill", daemon=True
            )
            self._spilling.start()
        else:
            self._made.append(_make_run(frozen, folder))
            self._take_made(spill_ids)

    def take_finished(self) -> None:
        """The run of a spill that has finished (a closed generation's, which takes no more ids: its
        full table is let go then, not at the next rotation)."""
        self._take_made(SPILL_IDS)

    def _take_made(self, spill_ids: int, wait: bool = False) -> None:
        """The frozen table's run, once its spill is done (``wait``: wait for it)."""
        if self._spilling is not None:
            if not wait and self._spilling.is_alive():
                return
            self._spilling.join()
            self._spilling = None
        if not self._made:
            return
        made = self._made.pop()
        if isinstance(made, Run):
            self.runs.append(made)
            self._frozen = None
            self._retry_at = 0
        else:
            self._retry_at = len(self.table) + max(spill_ids // 4, 1)
            log.warning("cannot spill the dedup window's ids to disk (they stay in memory): %s", made)

    def spill(self, folder: str | None) -> None:
        """The table's ids into a run of their own now (nothing for an empty table), and ``settle``."""
        if len(self.table):
            self.spill_if_full(folder, 1)
        self.settle()

    def settle(self) -> None:
        """Wait for a spill under way; a frozen table whose spill failed goes back into the table (for
        the window's file, which holds one table a generation)."""
        self._take_made(SPILL_IDS, wait=True)
        if self._frozen is not None:
            frozen, top = memoryview(self._frozen.sorted_slots()).cast("Q"), self._frozen.top_seq
            self.table.add_many(
                array("Q", [value & ~0xFFFFFFFF for value in frozen]),
                array("q", [_seq(top, value & 0xFFFFFFFF) for value in frozen]),
            )
            self._frozen = None

    def close(self) -> None:
        if self._spilling is not None:
            self._spilling.join()
            self._spilling = None
        for made in self._made:
            if isinstance(made, Run):
                made.close()
        self._made.clear()
        for run in self.runs:
            run.close()
