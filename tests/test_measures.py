"""The read side's compiled passes over stored rows: the measures' sums (compiled, twin and SQLite's
``json_each`` + ``sum()`` agree), and the users file's part (``UserRows``, as the builder's SQL)."""

import itertools
import json
import math
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drengr import _measures_py

try:
    from drengr import _measures
except ImportError:  # pragma: no cover - the extension did not build
    _measures = None

IMPLEMENTATIONS = [_measures_py] + ([_measures] if _measures is not None else [])
ids = pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])

# What the read side counted before: SQLite's own JSON functions (the oracle).
SQL = (
    "SELECT e.tenant_id, e.minute, e.event_name, m.key, sum(m.value) FROM rows AS e, json_each(e.measures) AS m "
    "WHERE m.type IN ('integer', 'real') GROUP BY 1, 2, 3, 4"
)


def by_sqlite(rows):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE rows (tenant_id, minute, event_name, measures)")
    conn.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", rows)
    found = conn.execute(SQL).fetchall()
    conn.close()
    return found


def same(found, expected):
    """The same groups; integers equal and of the same type, reals within rounding (the order of addition)."""
    assert sorted(g[:4] for g in found) == sorted(g[:4] for g in expected)
    want = {g[:4]: g[4] for g in expected}
    for *group, total in found:
        other = want[tuple(group)]
        assert type(total) is type(other), (group, total, other)
        assert total == other or math.isclose(total, other, rel_tol=1e-12), (group, total, other)


WRITTEN = [  # as the mapper writes them, and as other writers might
    ("acme", "2026-12-05T10:00", "order_completed", '{"revenue":42.5,"items":2,"tax":3.1}'),
    ("acme", "2026-12-05T10:00", "order_completed", '{"revenue":7.25,"items":1,"tax":0.1}'),
    ("acme", "2026-12-05T10:01", "order_completed", '{"items":3,"revenue":1e3}'),
    ("acme", "2026-12-05T10:01", "signed_up", '{"step":-4,"zero":-0,"small":-1.5E-3,"big":2.5e+300}'),
    ("other", "2026-12-05T10:01", "signed_up", ' { "step" : 1 , "weird key ü" : 2 } '),
    ("acme", "2026-12-05T10:02", "a", '{"twice":1,"twice":2}'),  # json_each lists both
    ("acme", "2026-12-05T10:02", "a", '{"esc\\"aped":5,"line\\nbreak":1}'),  # escapes: the twin reads them
    ("acme", "2026-12-05T10:02", "a", '{"text":"12","flag":true,"none":null,"list":[1],"obj":{"x":1},"n":4}'),
    ("acme", "2026-12-05T10:02", "a", '{"long":123456789012345678901234567890,"fits":9223372036854775807}'),
    ("acme", "2026-12-05T10:02", "a", '{"neg":-9223372036854775808}'),
    ("acme", "2026-12-05T10:03", "b", "{}"),
]


@ids
def test_sums_of_rows_as_written_agree_with_sqlite(module):
    same(module.sum_measures(WRITTEN), by_sqlite(WRITTEN))


@ids
def test_integers_stay_integers_until_a_real_or_64_bits(module):
    rows = [
        ("t", "m", "n", '{"a":9223372036854775807,"b":1,"c":1}'),
        ("t", "m", "n", '{"a":1,"b":2,"c":0.5}'),
    ]
    sums = {key: total for *_, key, total in module.sum_measures(rows)}
    assert sums["b"] == 3 and type(sums["b"]) is int
    assert sums["c"] == 1.5 and type(sums["c"]) is float
    # Past 64 bits SQLite's sum() stops with "integer overflow"; the rollups keep a real instead.
    assert sums["a"] == pytest.approx(9.223372036854775808e18) and type(sums["a"]) is float


@ids
@pytest.mark.parametrize(
    "measures",
    ["not json", "[1,2]", "3", '"text"', '{"a":1', '{"a":01}', '{"a":1,}', '{"a":NaN}', '{"a":Infinity}',
     '{"a":1}x', '{"a":-}', '{"a":1.}', '{"a":1e}', '{"a\x01":1}', None, b'{"a":1}', '{"\ud800":1}'],
)  # fmt: skip
def test_rows_that_are_not_an_object_of_numbers_add_nothing_of_theirs(module, measures):
    """Text no JSON parser takes, or one that is not an object, adds nothing (and fails nothing)."""
    rows = [("t", "m", "n", '{"a":1}'), ("t", "m", "n", measures)]
    found = module.sum_measures(rows)
    if measures == b'{"a":1}':  # bytes: read as the JSON text they are
        assert found == [("t", "m", "n", "a", 2)]
    elif measures == '{"\ud800":1}':  # a lone surrogate is a key like any other
        assert sorted(found) == [("t", "m", "n", "a", 1), ("t", "m", "n", "\ud800", 1)]
    else:
        assert found == [("t", "m", "n", "a", 1)]


@pytest.mark.skipif(
    _measures is None,
    reason="the compiled module did not build: runs wherever it does (pip install ., as in CI, where test_fast_twin fails if it did not)",
)
def test_keys_are_not_reused_across_rows_where_their_bytes_differ():
    """The compiled reader keeps the key objects of the row before of the same name where the bytes
    agree, and their sums at hand; never otherwise."""
    rows = [
        ("t", "m", "n", '{"ab":1,"cd":2}'),
        ("t", "m", "n", '{"ab":1,"ce":2}'),
        ("t", "m", "n", '{"a":1,"cd":2,"x":3}'),
        ("t", "m", "n", '{"cd":5}'),
        ("t", "m", "o", '{"cd":5,"ab":1}'),  # another name: keys of its own
        ("t", "m", "n", '{"cd":5,"ab":1}'),
        ("t", "m", "n", '{"cd":5,"ab":1,"ab":2}'),
        ("t", "m", "n", "{}"),
        ("t", "m", "n", '{"cd":5}'),
    ]
    assert sorted(_measures.sum_measures(rows)) == sorted(_measures_py.sum_measures(rows))


numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
objects = st.lists(st.tuples(st.sampled_from(["revenue", "items", "tax", "é", "k"]), numbers), max_size=6)


def text(pairs, spaced):
    sep, colon = (" , ", " : ") if spaced else (",", ":")
    return "{" + sep.join(json.dumps(key) + colon + json.dumps(value) for key, value in pairs) + "}"


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["t1", "t2"]), st.sampled_from(["m1", "m2"]), objects, st.booleans())
    )
)
def test_compiled_and_twin_agree_exactly(rows):
    """The same sums, bit for bit (both add in row order), over random objects of numbers."""
    stored = [(tenant, minute, "n", text(pairs, spaced)) for tenant, minute, pairs, spaced in rows]
    expected = sorted(_measures_py.sum_measures(stored), key=repr)
    for module in IMPLEMENTATIONS:
        found = sorted(module.sum_measures(stored), key=repr)
        assert [g[:4] for g in found] == [g[:4] for g in expected]
        for (*_, total), (*_, other) in zip(found, expected, strict=True):
            assert type(total) is type(other) and (
                total == other or (math.isnan(total) and math.isnan(other))
            )


def fresh(text):
    """An equal str that is another object (as rows unmarshalled from several requests hold)."""
    return (text + "\x00")[:-1]


# A stored row's parts the passes read: tenant, time of receipt (two minutes), event name, type, measures.
ROW_PARTS = (
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(["2026-12-05T10:00:59.999Z", "2026-12-05T10:01:00.000Z"]),
    st.sampled_from(["n", "o"]),
    st.sampled_from(["track", "page"]),
    objects,
)


def same_sums(found, wanted):
    """The same measure sums, bit for bit: the same groups, each total of the same type and value."""
    found, wanted = sorted(found, key=repr), sorted(wanted, key=repr)
    assert [g[:4] for g in found] == [g[:4] for g in wanted]
    for (*group, total), (*_, other) in zip(found, wanted, strict=True):
        equal = total == other or (math.isnan(total) and math.isnan(other))
        assert type(total) is type(other) and equal, (group, total, other)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(*ROW_PARTS, st.booleans())))
def test_stored_rows_counted_compiled_and_twin_agree_exactly(rows):
    """Whole stored rows (``add_rows``, the writer's hand-over): the same events and sums, bit for bit,
    whatever the run of names, types, minutes and keys (the compiled one keeps the last of each at
    hand), and whether equal values are one object or several."""
    stored = [
        (fresh(tenant) if copy else tenant, "id", fresh(name) if copy else name, type_, None, None, "",
         fresh(received) if copy else received, "{}", text(pairs, False) if pairs or copy else "{}", None)
        for tenant, received, name, type_, pairs, copy in rows
    ]  # fmt: skip
    expected = _measures_py.Sums()
    expected.add_rows(stored)
    for module in IMPLEMENTATIONS:
        sums = module.Sums()
        for start in range(0, len(stored), 7):  # in groups, as the writer hands them over
            sums.add_rows(stored[start : start + 7])
        assert sorted(sums.event_counts()) == sorted(expected.event_counts())
        same_sums(sums.measure_sums(), expected.measure_sums())


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(*ROW_PARTS)), size=st.integers(min_value=1, max_value=9))
def test_counts_added_up_per_job_add_up_to_what_the_rows_give(rows, size):
    """A job's counts added up as it is sent (``summary``) and added by the writer (``add_summary``):
    the events the rows give, and the sums, compiled and twin alike, bit for bit (per job, then
    job after job: another order of addition than row after row, so reals may round otherwise)."""
    stored = [
        (tenant, "id", name, type_, None, None, "", received, "{}",
         text(pairs, False) if pairs else "{}", None)
        for tenant, received, name, type_, pairs in rows
    ]  # fmt: skip
    each_row = _measures_py.Sums()
    each_row.add_rows(stored)
    found = {}
    for module in IMPLEMENTATIONS:
        sums = module.Sums()
        for start in range(0, len(stored), size):
            job = module.Sums()
            job.add_rows(stored[start : start + size])
            sums.add_summary(job.summary())
        assert sorted(sums.event_counts()) == sorted(each_row.event_counts())
        assert sums.rows == len(stored)
        found[module] = sums.measure_sums()
    twin = found[_measures_py]
    assert sorted(g[:4] for g in twin) == sorted(g[:4] for g in each_row.measure_sums())
    for sums in found.values():
        same_sums(sums, twin)


decimals = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}{fraction}{exponent}",
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.integers(min_value=1, max_value=10**20).map(str)),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=20).map(lambda d: "." + d)),
    st.one_of(
        st.just(""),
        st.builds(lambda e, sign, n: f"{e}{sign}{n}", st.sampled_from("eE"), st.sampled_from(["", "+", "-"]),
                  st.integers(min_value=0, max_value=340)),
    ),
).filter(lambda text: any(mark in text for mark in ".eE"))  # a real, not a whole number  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(number=st.one_of(decimals, st.sampled_from([
    "0.1", "-0.0", "0e5", "9007199254740992.5", "9007199254740993.0", "900719925474099.3", "1e22", "1e23",
    "1e-22", "1e-23", "123456789012345678.9", "4.9e-324", "1.7976931348623157e308", "2.2250738585072014e-308",
    # Mantissas past 53 bits, where rounding it first and then dividing or multiplying is wrong:
    "42077747796906774.0", "4308656.462953460874", "5605168566771514869e9",
])))  # fmt: skip
def test_a_real_reads_as_the_double_python_reads(number):
    """Every JSON real, short or long, near or far, is the very double ``float()`` makes of its text
    (the sign of a zero too): the compiled reader's exact shortcut never rounds otherwise."""
    rows = [("t", "m", "n", f'{{"a":{number},"b":1.5}}')]
    want = float(number)
    for module in IMPLEMENTATIONS:
        (_, _, _, _, found), _ = sorted(module.sum_measures(rows), key=lambda group: group[3])
        if math.isinf(want):  # past the largest double: both read infinity
            assert math.isinf(found) and found == want
            continue
        assert found.hex() == want.hex(), (number, found)  # the sign of a zero too: -0x0.0p+0


# The users file's part of the rows (UserRows): what the builder's SQL makes of the same rows.
USERS_SQL = (
    "SELECT seq >> 3, tenant_id, external_id, group_concat(seq) FROM rows WHERE external_id IS NOT NULL GROUP BY 1, 2, 3",
    "SELECT DISTINCT tenant_id, substr(received_at, 1, 10), external_id FROM rows WHERE external_id IS NOT NULL",
    "SELECT tenant_id, event_name, seq >> 2, min(seq), max(seq) FROM rows GROUP BY 1, 2, 3",
)


def users_by_sqlite(first_seq, rows):
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE rows (seq INTEGER PRIMARY KEY, tenant_id, event_name, external_id, received_at)"
    )
    conn.executemany(
        "INSERT INTO rows VALUES (?, ?, ?, ?, ?)",
        [(seq, row[0], row[2], row[4], row[7]) for seq, row in enumerate(rows, first_seq)],
    )
    seqs, days, names = (conn.execute(sql).fetchall() for sql in USERS_SQL)
    conn.close()
    listed = {(block, tenant, user): sorted(map(int, text.split(","))) for block, tenant, user, text in seqs}
    return listed, sorted(days), sorted(names)


@settings(max_examples=200, deadline=None)
@given(
    first_seq=st.integers(min_value=1, max_value=2**40),
    rows=st.lists(
        st.tuples(
            st.sampled_from(["t1", "t2"]),
            st.sampled_from(["open", "buy", "é"]),
            st.sampled_from([None, "u1", "u2", "ü"]),
            st.sampled_from(["2026-12-05T23:59:59.999Z", "2026-12-06T00:00:00.000Z"]),
        ),
        max_size=40,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=4),
)
def test_user_rows_index_as_the_builders_sql_does(first_seq, rows, cuts):
    """Per block (8 seqs here), tenant and user, the seqs in order; the users of each day; per name and
    block (4 seqs), the first and last seq: as SQL gives them, compiled and twin, the rows in groups."""
    stored = [
        (tenant, "id", name, "track", user, None, at, at, "{}", "{}", None) for tenant, name, user, at in rows
    ]
    expected_seqs, expected_days, expected_names = users_by_sqlite(first_seq, stored)
    bounds = sorted({0, len(stored), *(cut for cut in cuts if cut <= len(stored))})
    for module in IMPLEMENTATIONS:
        index = module.UserRows(3, 2)
        for start, end in itertools.pairwise(bounds):  # committed as groups, one after the other
            index.add(first_seq + start, stored[start:end])
        assert index.rows == len(stored)
        listed = {}
        for block, tenant, user, first, text in index.user_seqs():
            seqs = [int(seq) for seq in text.split(",")]
            assert seqs == sorted(seqs) and first == seqs[0] and (block, tenant, user) not in listed
            listed[block, tenant, user] = seqs
        assert listed == expected_seqs
        assert sorted(index.daily_users()) == expected_days
        assert sorted(index.name_blocks()) == expected_names
