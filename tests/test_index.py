"""The dedup window's index, compiled and twin: the same answers, 12 bytes a slot when compiled."""

import random
from array import array

import pytest

from drengr import _index_py

try:
    from drengr import _index  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - the extension did not build
    _index = None

IMPLEMENTATIONS = [_index_py] + ([_index] if _index is not None else [])


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@pytest.mark.parametrize("first_seq", [1, 2**32 - 3_000, 2**40])
def test_candidates_return_every_seq_added(module, first_seq):
    """Seqs on both sides of 2**32 come back whole, with colliding fingerprints and through growth."""
    rng = random.Random(first_seq)
    index = module.FingerprintIndex(capacity=1024)
    added: dict[int, list[int]] = {}
    for seq in range(first_seq, first_seq + 6_000):
        key = rng.randrange(1, 2_000) if seq % 3 == 0 else rng.randrange(1, 2**64)  # some collide
        index.add(key, seq)
        added.setdefault(key, []).append(seq)
    assert len(index) == 6_000
    for key, seqs in added.items():
        assert sorted(index.candidates(key)) == seqs
    probes = [*added, *(rng.randrange(2**63, 2**64) for _ in range(500))]  # then keys never added
    assert index.hits(array("Q", probes)) == list(range(len(added)))


@pytest.mark.skipif(_index is None, reason="the compiled index did not build")
def test_a_slot_takes_12_bytes():
    index = _index.FingerprintIndex(capacity=1 << 16)
    assert index.memory_bytes == 12 * (1 << 16)


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_zero_fingerprints_and_negative_seqs_are_refused(module):
    index = module.FingerprintIndex()
    with pytest.raises(ValueError):
        index.add(0, 1)
    with pytest.raises(ValueError):
        index.add(1, -1)
