"""Pure-Python twin of ``_index.pyx``: same fingerprints, same answers, slower and larger.

Used where the extension did not build, and as the oracle in tests.
"""

from array import array
from typing import Any

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return x


def _fnv(data: bytes, h: int) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def fingerprint(tenant_id: str, event_id: str) -> int:
    h = _fnv(tenant_id.encode("utf-8", "surrogatepass"), _FNV_OFFSET)
    h = (h * _FNV_PRIME) & _MASK  # the 0 separator
    h = _mix(_fnv(event_id.encode("utf-8", "surrogatepass"), h))
    return h or 1


def index_rows(
    rows: list[tuple[Any, ...]],
    current: "FingerprintIndex",
    previous: "FingerprintIndex | None" = None,
    boundary: str | None = None,
) -> int:
    seq = -1
    for row in rows:
        seq = row[0]
        into = previous if previous is not None and row[3] < boundary else current
        into.add(fingerprint(row[1], row[2]), seq)
    return seq


def _tag(key: int) -> int:
    return (key >> 32) or 1  # the compiled index keeps only a fingerprint's high 32 bits


def fingerprints(tenant_id: str, rows: list[tuple[Any, ...]], column: int) -> array:
    return array("Q", [fingerprint(tenant_id, row[column]) for row in rows])


class FingerprintIndex:
    def __init__(self, capacity: int = 1 << 14) -> None:
        self._map: dict[int, list[int]] = {}
        self._count = 0
        self._top = 0

    def __len__(self) -> int:
        return self._count

    @property
    def memory_bytes(self) -> int:
        return self._count * 100  # roughly: a dict entry, a list and two ints

    def add(self, key: int, value: int) -> None:
        if key == 0:
            raise ValueError("fingerprints are never 0")
        if value < 0:
            raise ValueError("seqs are never negative")
        self._map.setdefault(_tag(key), []).append(value)
        self._count += 1
        self._top = max(self._top, value)

    @property
    def top_seq(self) -> int:
        return self._top

    def sorted_slots(self) -> bytearray:
        values = sorted(tag << 32 | seq & 0xFFFFFFFF for tag, seqs in self._map.items() for seq in seqs)
        return bytearray(array("Q", values).tobytes())

    def add_many(self, keys: Any, values: Any) -> None:
        for key, value in zip(keys, values, strict=True):
            self.add(key, value)

    def candidates(self, key: int) -> list[int]:
        return list(self._map.get(_tag(key), ()))

    def hits(self, keys: Any) -> list[int]:
        return [i for i, key in enumerate(keys) if _tag(key) in self._map]

    def dump(self) -> tuple[int, int, int, memoryview]:
        """The compiled index's table for these entries (the same window file)."""
        capacity = 1024
        while self._count * 20 > capacity * 17:
            capacity *= 2
        table = array("Q", bytes(8 * capacity))
        top = max((seq for seqs in self._map.values() for seq in seqs), default=0)
        for tag, seqs in self._map.items():
            for seq in seqs:
                slot = tag & (capacity - 1)
                while table[slot]:
                    slot = (slot + 1) & (capacity - 1)
                table[slot] = tag << 32 | seq & 0xFFFFFFFF
        return capacity, self._count, top, memoryview(table).cast("B").toreadonly()

    @staticmethod
    def load(capacity: int, count: int, top: int, fill: Any) -> "FingerprintIndex":
        if capacity < 1024 or capacity & (capacity - 1) or count * 20 > capacity * 17 or top < 0:
            raise ValueError("not a dedup window's table")
        table = array("Q", bytes(8 * capacity))
        fill(memoryview(table).cast("B"))
        index = FingerprintIndex()
        for value in table:
            if value:
                seq = (top & ~0xFFFFFFFF) | (value & 0xFFFFFFFF)  # as the compiled index reads it back
                index.add(value & ~0xFFFFFFFF, seq - (1 << 32) if seq > top else seq)
        if index._count != count:
            raise ValueError("the table holds another count of entries")
        return index


_BITS_PER_ID = 16


def _bloom_hash(tag: int) -> int:
    return _mix(tag ^ 0x9E3779B97F4A7C15)


class Bloom:
    """The compiled filter's very bits (the same window file), in an array."""

    def __init__(self, ids: int) -> None:
        self.blocks = max(1, (ids * _BITS_PER_ID + 511) // 512)
        self._words = array("Q", bytes(64 * self.blocks))

    @property
    def memory_bytes(self) -> int:
        return 64 * self.blocks

    def _places(self, tag: int) -> list[tuple[int, int]]:
        h = _bloom_hash(tag)
        first = ((h >> 32) * self.blocks >> 32) * 8
        bits = _mix(h)
        places = []
        for i in range(7):
            position = (bits >> (9 * i)) & 511
            places.append((first + (position >> 6), 1 << (position & 63)))
        return places

    def add_slots(self, slots: Any) -> None:
        for value in memoryview(slots).cast("Q"):
            for word, bit in self._places(value >> 32):
                self._words[word] |= bit

    def maybe(self, key: int) -> bool:
        return all(self._words[word] & bit for word, bit in self._places(_tag(key)))

    def hits(self, keys: Any) -> list[int]:
        return [i for i, key in enumerate(keys) if self.maybe(key)]

    def dump(self) -> memoryview:
        return memoryview(self._words).cast("B").toreadonly()

    @staticmethod
    def load(blocks: int, fill: Any) -> "Bloom":
        if blocks < 1:
            raise ValueError("not a dedup window's filter")
        bloom = Bloom(blocks * 512 // _BITS_PER_ID)
        fill(memoryview(bloom._words).cast("B"))
        return bloom


def any_hits(blooms: list[Bloom], keys: Any) -> list[int]:
    return [i for i, key in enumerate(keys) if any(bloom.maybe(key) for bloom in blooms)]
