"""The dedup window's runs on disk (docs/operating.md "The dedup window: its length and its memory"):
a generation whose table is spilled answers as the table did, costs the memory the docs give, and its
runs survive a restart through the window's file, against real SQLite files."""

import json
import os
import random
import sqlite3
import zlib
from array import array
from pathlib import Path

import pytest

from drengr.core.limits import MS_PER_DAY
from drengr.store import SQLiteStore
from drengr.store.sqlite import window, window_file
from drengr.store.sqlite import writer as writer_module
from drengr.store.sqlite.writer import insert_events

from .support.stores import DAY0, Clock, row

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)


def keys_and_seqs(count: int, seed: int, first_seq: int = 1) -> list[tuple[int, int]]:
    """Random fingerprints, one in 7 sharing its tag (high 32 bits) with an earlier one."""
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    for seq in range(first_seq, first_seq + count):
        if pairs and seq % 7 == 0:
            key = (rng.choice(pairs)[0] & ~0xFFFFFFFF) | rng.randrange(2**32)
        else:
            key = rng.randrange(1, 2**64)
        pairs.append((key, seq))
    return pairs


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("first_seq", [1, 2**32 - 20_000])
def test_a_spilled_generation_answers_as_one_table(tmp_path, first_seq):
    """Ids spilled into runs of every size (one page, many pages, one id) give the same candidates and
    hits as a single table holding them all; seqs on both sides of 2**32 come back whole."""
    pairs = keys_and_seqs(40_000, seed=first_seq, first_seq=first_seq)
    whole = window.FingerprintIndex()
    spilled = window.Generation()
    for number, (key, seq) in enumerate(pairs):
        whole.add(key, seq)
        spilled.table.add(key, seq)
        if number in (0, 700, 15_000, 15_001, 31_000):
            spilled.spill(str(tmp_path))
    assert [run.count for run in spilled.runs] == [1, 700, 14_300, 1, 15_999]
    assert len(spilled) == len(whole) == 40_000 and len(spilled.table) == 8_999
    for key, _ in pairs[::13]:
        assert sorted(spilled.candidates(key)) == sorted(whole.candidates(key))
    strangers = [random.Random(5).randrange(1, 2**64) for _ in range(3_000)]
    probes = array("Q", [key for key, _ in pairs[::11]] + strangers)
    maybe = set(spilled.hits(probes))
    assert set(whole.hits(probes)) <= maybe  # never a miss
    assert len(maybe - set(whole.hits(probes))) < 40  # a false maybe is rare (5 runs × ~1/500 of 3,000)
    for position in maybe:
        assert sorted(spilled.candidates(probes[position])) == sorted(whole.candidates(probes[position]))
    spilled.close()


@pytest.mark.skipif(
    window.FingerprintIndex.__module__ != "drengr._index",
    reason="the pure twin's table is a dict of its own size (DRENGR_NO_EXTENSIONS=1, or the compiled index "
    "did not build): runs with the compiled index, as in CI",
)
def test_a_generation_holds_its_table_and_two_bytes_an_id_of_runs(tmp_path):
    """docs/operating.md: a run keeps a 16-bit-an-id filter and 8 bytes a page of 512 ids in memory."""
    generation = window.Generation()
    for key, seq in keys_and_seqs(100_000, seed=2):
        generation.table.add(key, seq)
    generation.spill(str(tmp_path))
    assert generation.table.memory_bytes == 8 * 2**14  # an empty table again
    (run,) = generation.runs
    assert run.memory_bytes == 100_000 * 2 + 8 * -(-100_000 // 512)
    assert generation.memory_bytes == run.memory_bytes + 8 * 2**14
    assert os.fstat(run._shared.file.fileno()).st_size == 8 * 100_000  # noqa: SLF001 - 8 bytes an id on disk
    generation.close()


def test_runs_let_go_of_their_files(tmp_path):
    """A spilled run's file has no name (nothing to leave behind) and is closed with its generation."""
    before = open_descriptors()
    generation = window.Generation()
    for key, seq in keys_and_seqs(3_000, seed=3):
        generation.table.add(key, seq)
        generation.spill_if_full(str(tmp_path), 1_000)
    assert [run.count for run in generation.runs] == [1_000, 1_000, 1_000]
    assert os.listdir(tmp_path) == []
    assert open_descriptors() == before + 3
    generation.close()
    assert open_descriptors() == before


def test_a_run_that_cannot_be_written_leaves_its_ids_in_a_table(tmp_path, caplog):
    """A full disk (here: the process's file size limit, RLIMIT_FSIZE, a real failing write): the
    spill is logged, the full table is still looked up, the next try waits for a quarter more ids,
    and ``settle`` puts a table whose spill failed back into the one table (for the window's file)."""
    import resource
    import signal

    pairs = keys_and_seqs(300_000, seed=4, first_seq=2**32 - 100_000)
    generation = window.Generation()
    for key, seq in pairs[:200_000]:
        generation.table.add(key, seq)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))  # 1 MB: the run needs 1.6 MB
    try:
        generation.spill_if_full(str(tmp_path), 150_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert generation.runs == [] and len(generation) == 200_000 and len(generation.table) == 0
    assert "cannot spill the dedup window's ids to disk" in caplog.text
    for key, seq in pairs[:200_000:97]:
        assert seq in generation.candidates(key)
    for key, seq in pairs[200_000:237_499]:
        generation.table.add(key, seq)
    generation.spill_if_full(str(tmp_path), 150_000)
    assert generation.runs == []  # 37,499 ids since: not yet a quarter of 150,000
    generation.table.add(*pairs[237_499])
    generation.spill_if_full(str(tmp_path), 150_000)
    assert [run.count for run in generation.runs] == [200_000] and len(generation.table) == 37_500
    for key, seq in pairs[:237_500:89]:
        assert seq in generation.candidates(key)
    generation.close()

    failed = window.Generation()
    for key, seq in pairs[:1_000]:
        failed.table.add(key, seq)
    missing = str(tmp_path / "gone")  # no such folder: the run's file cannot be made
    failed.spill_if_full(missing, 1_000)
    for key, seq in pairs[1_000:1_100]:
        failed.table.add(key, seq)
    failed.settle()
    assert failed.runs == [] and len(failed.table) == len(failed) == 1_100
    for key, seq in pairs[:1_100:7]:
        assert seq in failed.candidates(key)
    failed.close()


@pytest.mark.parametrize("seed", [5, 6])
def test_a_large_table_is_spilled_on_a_thread_while_its_ids_are_still_found(tmp_path, monkeypatch, seed):
    """A table of BACKGROUND_IDS or more is spilled on a thread of its own: meanwhile the frozen table
    answers and a new one takes ids; once done, its run answers, and ``settle`` waits for it."""
    monkeypatch.setattr(window, "BACKGROUND_IDS", 50_000)
    pairs = keys_and_seqs(130_000, seed=seed)
    generation = window.Generation()
    for key, seq in pairs[:60_000]:
        generation.table.add(key, seq)
    generation.spill_if_full(str(tmp_path), 60_000)
    assert generation._spilling is not None  # noqa: SLF001 - on its thread
    for key, seq in pairs[60_000:120_000]:
        generation.table.add(key, seq)
        if seq % 997 == 0:
            spot = pairs[seq % 60_000]
            assert spot[1] in generation.candidates(spot[0])
    generation.settle()  # the first run is in
    assert [run.count for run in generation.runs] == [60_000] and len(generation.table) == 60_000
    generation.spill_if_full(str(tmp_path), 60_000)  # the second, on its thread
    generation.settle()
    assert [run.count for run in generation.runs] == [60_000, 60_000] and len(generation.table) == 0
    for key, seq in pairs[120_000:]:
        generation.table.add(key, seq)
    assert len(generation) == 130_000
    for key, seq in pairs[::101]:
        assert seq in generation.candidates(key)
    probes = array("Q", [key for key, _ in pairs[::50]])
    assert set(range(len(probes))) <= set(generation.hits(probes))
    generation.close()


def spilling_store(db_path: Path, clock: Clock, **options) -> SQLiteStore:
    return SQLiteStore(str(db_path), clock=clock, elapsed=lambda: clock.ms / 1000, **options)


@pytest.fixture
def small_runs(monkeypatch):
    """Tables spilled at 100 ids, so that a few hundred events make runs (the writer thread reads it)."""
    monkeypatch.setattr(window, "SPILL_IDS", 100)


def window_of(store: SQLiteStore) -> list[window.Generation]:
    return store._committer._window  # noqa: SLF001 - the writer thread's window


def test_repeats_of_spilled_ids_are_caught_in_memory_and_after_a_restart(db_path, small_runs):
    """450 events in batches of 50: four runs and a table; every one resent is a duplicate, and a new
    one is stored. After a restart the window (runs too) comes from its file and still catches them,
    and so after a second restart, from the file the first one wrote with the runs it read."""
    clock = Clock(DAY0)
    store = spilling_store(db_path, clock)
    try:
        for start in range(0, 450, 50):
            assert store.write("acme", [row(str(i)) for i in range(start, start + 50)], clock.ms).stored == 50
        (current, _previous) = window_of(store)
        assert [run.count for run in current.runs] == [100, 100, 100, 100] and len(current.table) == 50
        outcome = store.write("acme", [row(str(i)) for i in range(0, 451, 3)], clock.ms)
        assert (outcome.stored, outcome.duplicates) == (1, 150)
    finally:
        store.close()
    again = spilling_store(db_path, clock)
    try:
        outcome = again.write("acme", [row(str(i)) for i in range(1, 452, 2)], clock.ms)
        assert (outcome.stored, outcome.duplicates) == (1, 225)
        assert again._committer.window_from_file  # noqa: SLF001
        assert sum(len(run_list.runs) for run_list in window_of(again)) == 4
    finally:
        again.close()  # its runs, read from the old file, are copied into a new one
    third = spilling_store(db_path, clock)
    try:
        outcome = third.write("acme", [row(str(i)) for i in range(0, 453, 4)], clock.ms)
        assert (outcome.stored, outcome.duplicates) == (1, 113)
        assert third._committer.window_from_file  # noqa: SLF001
    finally:
        third.close()
    conn = sqlite3.connect(db_path)
    stored = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM semantic_events").fetchone()
    assert stored == (453, 453)
    conn.close()


def test_a_window_built_from_the_table_spills_as_it_goes(db_path, small_runs, monkeypatch):
    """Rows of a killed writer (no window file): the next writer indexes them from the table, spilling
    as it goes; a closed generation's table, here of 2 ids or more, is spilled whole."""
    monkeypatch.setattr(writer_module, "_CLOSED_TABLE_IDS", 2)
    conn = sqlite3.connect(db_path, isolation_level=None)
    SQLiteStore(str(db_path), clock=Clock(DAY0)).close()
    insert_events(conn, [row(f"x{i}") for i in range(250)])
    conn.close()
    clock = Clock(DAY0)
    store = spilling_store(db_path, clock)
    try:
        outcome = store.write("acme", [row(f"x{i}") for i in range(0, 260, 5)], clock.ms)
        assert (outcome.stored, outcome.duplicates) == (2, 50)
        assert not store._committer.window_from_file  # noqa: SLF001
        current = window_of(store)[0]
        assert [run.count for run in current.runs] == [250] and len(current.table) == 2
        clock.ms += 7 * MS_PER_DAY  # the next generation: this one closes and is spilled whole
        assert store.write("acme", [row("y")], clock.ms).stored == 1
        closed = window_of(store)[1]
        assert len(closed.table) == 0 and sum(run.count for run in closed.runs) == 252
        outcome = store.write("acme", [row("x3"), row("x251")], clock.ms)  # x251 was never sent
        assert (outcome.stored, outcome.duplicates) == (1, 1)
    finally:
        store.close()


def test_a_closed_generation_spilled_on_a_thread_lets_go_of_its_table_at_the_next_write(db_path, monkeypatch):
    """At rotation the closed generation's table is spilled on a thread; the next write takes its run,
    so the full table is not held until the next rotation, and its ids are still caught."""
    monkeypatch.setattr(writer_module, "_CLOSED_TABLE_IDS", 1_000)
    monkeypatch.setattr(window, "BACKGROUND_IDS", 1_000)
    clock = Clock(DAY0)
    store = spilling_store(db_path, clock)
    try:
        for start in range(0, 3_000, 500):
            store.write("acme", [row(str(i)) for i in range(start, start + 500)], clock.ms)
        clock.ms += 7 * MS_PER_DAY  # the next generation: the closed one's 3,000 ids are spilled on a thread
        assert store.write("acme", [row("new")], clock.ms).stored == 1
        closed = window_of(store)[1]
        if closed._spilling is not None:  # noqa: SLF001 - let its thread finish, then write again
            closed._spilling.join()  # noqa: SLF001
        assert store.write("acme", [row("newer")], clock.ms).stored == 1
        assert closed._frozen is None and closed._spilling is None  # noqa: SLF001 - its table let go
        assert [run.count for run in closed.runs] == [3_000] and len(closed.table) == 0
        outcome = store.write("acme", [row("7"), row("2999"), row("3000")], clock.ms)
        assert (outcome.stored, outcome.duplicates) == (1, 2)
    finally:
        store.close()


def test_a_window_file_with_a_damaged_run_is_not_used(db_path, small_runs):
    clock = Clock(DAY0)
    store = spilling_store(db_path, clock)
    store.write("acme", [row(str(i)) for i in range(250)], clock.ms)
    store.close()
    path = Path(window_file.window_path(str(db_path)))
    data = bytearray(path.read_bytes())
    head_end = data.index(b"\n", data.index(b"\n") + 1) + 1
    header = json.loads(data[data.index(b"\n") + 1 : head_end])
    assert [len(entry["runs"]) for entry in header["generations"]] == [1, 0]
    current = header["generations"][0]
    slots = head_end + 8 * current["table"]["capacity"] + 64 * current["runs"][0]["blocks"]
    data[slots + 8 * 200 + 2] ^= 0x01  # a tag inside the run's slots
    path.write_bytes(bytes(data))
    again = spilling_store(db_path, clock)
    try:
        assert again.write("acme", [row("7"), row("new")], clock.ms).stored == 1
        assert not again._committer.window_from_file  # noqa: SLF001
    finally:
        again.close()


def test_a_window_file_of_the_older_format_is_read(db_path):
    """An older drengr's file, tables and no runs ("drengr dedup window 1"): read, not built again."""
    clock = Clock(DAY0)
    store = spilling_store(db_path, clock)
    store.write("acme", [row(str(i)) for i in range(30)], clock.ms)
    store.close()
    path = Path(window_file.window_path(str(db_path)))
    data = path.read_bytes()
    first_end = data.index(b"\n") + 1
    head_end = data.index(b"\n", first_end) + 1
    header = json.loads(data[first_end:head_end])
    assert all(entry["runs"] == [] for entry in header["generations"])
    header["indexes"] = [entry["table"] for entry in header.pop("generations")]
    head = b"drengr dedup window 1\n" + json.dumps(header).encode() + b"\n"
    body = data[head_end:-4]
    path.write_bytes(head + body + zlib.crc32(body, zlib.crc32(head)).to_bytes(4, "little"))
    again = spilling_store(db_path, clock)
    try:
        assert again.write("acme", [row("3"), row("new")], clock.ms).stored == 1
        assert again._committer.window_from_file  # noqa: SLF001
    finally:
        again.close()
