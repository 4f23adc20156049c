"""The dedup window's index, compiled and twin: the same answers, 8 bytes a slot when compiled."""

import random
from array import array

import pytest

from drengr import _index_py

try:
    from drengr import _index
except ImportError:  # pragma: no cover - the extension did not build
    _index = None

IMPLEMENTATIONS = [_index_py] + ([_index] if _index is not None else [])
COMPILED_ONLY = pytest.mark.skipif(
    _index is None,
    reason="the compiled index did not build: runs wherever it does (pip install ., as in CI, where "
    "test_fast_twin fails if it did not)",
)


def tag(key: int) -> int:
    return (key >> 32) or 1


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("first_seq", [1, 2**32 - 3_000, 2**40])
def test_candidates_return_every_seq_added_under_the_tag(module, first_seq):
    """Seqs on both sides of 2**32 come back whole, with keys sharing a tag (or all 64 bits), through growth."""
    rng = random.Random(first_seq)
    index = module.FingerprintIndex(capacity=1024)
    added: dict[int, list[int]] = {}
    for seq in range(first_seq, first_seq + 6_000):
        if seq % 5 == 0:  # some share their whole fingerprint, some their high 32 bits (or have none: tag 1)
            key = rng.choice([rng.randrange(1, 2_000), rng.randrange(1, 500) << 32 | rng.randrange(2**32)])
        else:
            key = rng.randrange(1, 2**64)
        index.add(key, seq)
        added.setdefault(key, []).append(seq)
    assert len(index) == 6_000
    under_tag: dict[int, list[int]] = {}
    for key, seqs in added.items():
        under_tag.setdefault(tag(key), []).extend(seqs)
    assert len(under_tag) < len(added)  # the test does exercise shared tags
    for key in added:
        assert sorted(index.candidates(key)) == sorted(under_tag[tag(key)])
    probes = [*added, *(rng.randrange(2**63, 2**64) for _ in range(500))]  # then keys never added
    assert index.hits(array("Q", probes)) == list(range(len(added)))
    assert index.candidates(probes[-1]) == []


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_a_key_differing_only_in_its_low_bits_is_a_candidate_to_verify(module):
    index = module.FingerprintIndex()
    index.add(0xABCDEF01_00000001, 42)
    assert index.candidates(0xABCDEF01_FFFFFFFF) == [42]
    assert index.hits(array("Q", [0xABCDEF02_00000001, 0xABCDEF01_12345678])) == [1]


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("seed", range(40))
def test_runs_that_wrap_around_the_end_survive_doubling(module, seed):
    """Many homes in the last slots of a 1,024-slot table: their run wraps past slot 0, then the table doubles."""
    rng = random.Random(seed)
    index = module.FingerprintIndex(capacity=1024)
    crowded = rng.randrange(2, 40)  # how many of the last slots the crowd's homes fall in
    keys = []
    for seq in range(1, 1_000):  # the table doubles at 871 keys
        home = 1024 - rng.randrange(1, crowded) if rng.random() < 0.4 else rng.randrange(1024)
        key = (rng.randrange(2**22) << 10 | home) << 32 | rng.randrange(2**32)  # the 11th bit splits them
        index.add(key, seq)
        keys.append(key)
    for seq, key in enumerate(keys, start=1):
        assert seq in index.candidates(key)
    assert index.hits(array("Q", keys)) == list(range(len(keys)))


@COMPILED_ONLY
def test_a_slot_takes_8_bytes():
    index = _index.FingerprintIndex(capacity=1 << 16)
    assert index.memory_bytes == 8 * (1 << 16)


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_zero_fingerprints_and_negative_seqs_are_refused(module):
    index = module.FingerprintIndex()
    with pytest.raises(ValueError):
        index.add(0, 1)
    with pytest.raises(ValueError):
        index.add(1, -1)


@pytest.mark.parametrize("reader", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("writer", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_a_dumped_table_loads_back_with_the_same_answers(writer, reader):
    """The window file's tables: what one implementation dumps, either loads, seqs past 2**32 whole."""
    rng = random.Random(7)
    index = writer.FingerprintIndex()
    added = {rng.randrange(1, 2**64): seq for seq in range(2**32 - 2_000, 2**32 + 3_000)}
    for key, seq in added.items():
        index.add(key, seq)
    capacity, count, top, table = index.dump()
    assert (count, top) == (5_000, 2**32 + 2_999) and len(table) == 8 * capacity
    saved = bytes(table)
    loaded = reader.FingerprintIndex.load(
        capacity, count, top, lambda view: view.__setitem__(slice(None), saved)
    )
    assert len(loaded) == count
    for key, seq in added.items():
        assert seq in loaded.candidates(key)
    assert loaded.hits(array("Q", [1, 2, 3])) == [i for i, key in enumerate([1, 2, 3]) if tag(key) in
                                                   {tag(k) for k in added}]  # fmt: skip


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize(
    "change",
    ["not a power of two", "fuller than 85 %", "another count", "a slot emptied"],
)
def test_a_table_that_cannot_be_a_dump_is_refused(module, change):
    index = module.FingerprintIndex()
    index.add(12345 << 32, 7)
    capacity, count, top, table = index.dump()
    saved = bytearray(table)
    if change == "not a power of two":
        capacity, saved = capacity - 8, saved[:-64]
    elif change == "fuller than 85 %":
        count = capacity
    elif change == "another count":
        count = 2
    else:  # its count still says one
        start = saved.index(b"\x07")
        saved[start : start + 8] = bytes(8)
    with pytest.raises(ValueError):
        module.FingerprintIndex.load(
            capacity, count, top, lambda view: view.__setitem__(slice(None), bytes(saved))
        )


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_index_rows_adds_each_row_by_its_time_of_receipt(module):
    """The window's load in bulk: each (seq, tenant, event id, received) row's fingerprint, into the
    current index from ``boundary`` on, else the previous one; ids with lone surrogates and non-ASCII too."""
    ids = ["a", "é-ü", "\ud800lone", "x" * 300, ""]
    rows = [(seq, "acme" if seq % 2 else "other", event_id, "2026-11-20T00:00:00.000Z" if seq < 3 else "2026-11-27")
            for seq, event_id in enumerate(ids, start=1)]  # fmt: skip
    current, previous = module.FingerprintIndex(), module.FingerprintIndex()
    assert module.index_rows(rows, current, previous, "2026-11-26") == len(ids)
    for seq, tenant, event_id, _ in rows:
        key = module.fingerprint(tenant, event_id)
        assert key == _index_py.fingerprint(tenant, event_id)  # the same fingerprint as one at a time
        into, other = (previous, current) if seq < 3 else (current, previous)
        assert seq in into.candidates(key) and seq not in other.candidates(key)
    only = module.FingerprintIndex()
    assert module.index_rows([row[:3] for row in rows], only) == len(ids)  # no boundary: all in one
    assert len(only) == len(ids)
    assert module.index_rows([], only) == -1


@COMPILED_ONLY
def test_a_generation_takes_the_memory_the_docs_give():
    """docs/operating.md "The dedup window: its length and its memory": 8 bytes × the smallest power
    of two, 16,384 or more, that is at least n / 0.85 — on both sides of two doublings."""

    def documented(n: int) -> int:
        slots = 1 << 14
        while slots * 0.85 < n:
            slots *= 2
        return 8 * slots

    index = _index.FingerprintIndex()  # as the writer makes one for each generation
    rng = random.Random(3)
    for n in range(1, 27_854):  # 13,926 ids fill 2**14 slots to 85 %, 27,852 fill 2**15
        index.add(rng.randrange(1, 2**64), n)
        if n in (1, 13_926, 13_927, 27_852, 27_853):
            assert index.memory_bytes == documented(n), n


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("count", [0, 1, 5_000])
def test_sorted_slots_are_every_entry_sorted_by_tag_and_leave_the_table_as_it_was(module, count):
    """``sorted_slots``: every entry once, as ``tag << 32 | seq``'s low 32 bits, sorted by tag (a run
    on disk), tags sharing their top byte or all of it among them; the table still answers."""
    rng = random.Random(11)
    index = module.FingerprintIndex()
    added = []
    for seq in range(2**32 - 1_000, 2**32 - 1_000 + count):
        key = rng.randrange(1, 2**64) if seq % 3 else (rng.randrange(1, 64) << 56 | rng.randrange(2**40))
        if seq % 11 == 0 and added:
            key = added[-1][0]
        index.add(key, seq)
        added.append((key, seq))
    assert index.top_seq == (added[-1][1] if added else 0)
    slots = array("Q")
    slots.frombytes(index.sorted_slots())
    assert sorted(slots) == sorted(tag(key) << 32 | seq & 0xFFFFFFFF for key, seq in added)
    assert [value >> 32 for value in slots] == sorted(value >> 32 for value in slots)
    for key, seq in added[::7]:
        assert seq in index.candidates(key)
    assert len(index) == count


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_the_filter_never_misses_a_tag_and_rarely_says_maybe_for_another(module):
    """16 bits an id: every tag added is a hit; about 1 key in 500 not added is a false maybe."""
    rng = random.Random(12)
    index = module.FingerprintIndex()
    for seq in range(1, 20_001):
        index.add(rng.randrange(1, 2**64), seq)
    slots = index.sorted_slots()
    bloom = module.Bloom(20_000)
    bloom.add_slots(slots)
    assert bloom.memory_bytes == 64 * bloom.blocks == 40_000
    added = array("Q", memoryview(slots).cast("Q"))
    assert bloom.hits(added) == list(range(20_000))
    strangers = array("Q", [rng.randrange(1, 2**64) for _ in range(50_000)])
    false_maybes = len(bloom.hits(strangers))
    assert 20 <= false_maybes <= 250  # 1 in 500 expected: 100
    assert [bloom.maybe(key) for key in strangers[:300]] == [
        i in bloom.hits(strangers[:300]) for i in range(300)
    ]


@COMPILED_ONLY
def test_the_twin_filter_sets_the_compiled_ones_bits():
    """One window file for both: the twin's filter is the compiled one's, bit for bit, and loads back."""
    rng = random.Random(13)
    compiled, twin = _index.FingerprintIndex(), _index_py.FingerprintIndex()
    for seq in range(1, 3_001):
        key = rng.randrange(1, 2**64)
        compiled.add(key, seq)
        twin.add(key, seq)
    filters = []
    for module, index in ((_index, compiled), (_index_py, twin)):
        bloom = module.Bloom(3_000)
        bloom.add_slots(index.sorted_slots())
        filters.append(bytes(bloom.dump()))
    assert filters[0] == filters[1]
    for module in IMPLEMENTATIONS:
        loaded = module.Bloom.load(
            len(filters[0]) // 64, lambda view: view.__setitem__(slice(None), filters[0])
        )
        assert bytes(loaded.dump()) == filters[0]


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_any_hits_is_every_filters_hits_together(module):
    """``any_hits``, one hashing for all of a generation's filters: the union of each one's ``hits``
    (keys in one filter or another, and strangers), for batches on both sides of its 32-key chunks."""
    rng = random.Random(14)
    blooms, added = [], []
    for size in (1, 40, 3_000):
        index = module.FingerprintIndex()
        for seq in range(1, size + 1):
            key = rng.randrange(1, 2**64)
            index.add(key, seq)
            added.append(key)
        bloom = module.Bloom(size)
        bloom.add_slots(index.sorted_slots())
        blooms.append(bloom)
    for length in (0, 1, 31, 32, 33, 2_500):
        keys = array(
            "Q", [rng.choice(added) if rng.random() < 0.3 else rng.randrange(1, 2**64) for _ in range(length)]
        )
        expected = sorted(set().union(*(bloom.hits(keys) for bloom in blooms)))
        assert module.any_hits(blooms, keys) == expected
        assert module.any_hits([], keys) == []
    assert len(expected) > 700  # the test does find keys in the filters (30 % of 2,500)
