"""The compiled module ``drengr.mapping._mapping_c`` and its Python twin agree, byte for byte.

Hypothesis writes Segment-like bodies as JSON *text* (so duplicate keys, escapes,
odd number literals and whitespace reach both parsers as a client would send
them) and every public result is compared: ``write_key``, ``item_count``,
``has_oversized_item`` and the rows and drop counts of ``map``. The twin is the
oracle; the tables below pin which bodies the compiled module hands back to it
(``Refused``) and which it rejects itself (``InvalidJSON``).
"""

import base64
import gzip
import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drengr.core.errors import InvalidJSON
from drengr.core.limits import DEFAULT_PII_SUBSTRINGS, MAX_ITEM_BYTES
from drengr.core.routes import classify
from drengr.core.timestamps import parse_ms
from drengr.mapping import NO_EXTENSIONS, _mapping_py

try:
    from drengr.mapping import _mapping_c
except ImportError:  # test_compiled_module_is_loaded fails loudly
    _mapping_c = None

PROPERTY = settings(  # DRENGR_FUZZ_EXAMPLES=5000 for a longer soak
    max_examples=int(os.environ.get("DRENGR_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RECEIVED_MS = parse_ms("2026-11-26T02:50:53.123Z")
TENANT = "acme"


def compiled() -> Any:
    if _mapping_c is None and NO_EXTENSIONS:
        pytest.skip(
            "DRENGR_NO_EXTENSIONS=1 and the compiled mapper is not built: runs without that variable, as in CI"
        )
    assert _mapping_c is not None, (
        "drengr.mapping._mapping_c did not load: see test_compiled_modules_are_loaded"
    )
    return _mapping_c


# The compiled twins and the selector that must have picked each; a built module that fails to
# import would otherwise fall back to its pure twin silently (yarl and multidict test the same).
COMPILED_MODULES = [
    pytest.param("drengr.mapping._mapping_c", "drengr.mapping", "_compiled", id="mapping"),
    pytest.param("drengr._index", "drengr.store.sqlite.writer", "FingerprintIndex", id="index"),
    pytest.param("drengr._measures", "drengr.store.sqlite.read_side", "sum_measures", id="measures"),
]


@pytest.mark.skipif(
    NO_EXTENSIONS,
    reason="DRENGR_NO_EXTENSIONS=1: the pure twins serve, by request; runs without that variable, as in CI",
)
@pytest.mark.parametrize(("name", "user", "attribute"), COMPILED_MODULES)
def test_compiled_modules_are_loaded(name, user, attribute):
    """Fails when an extension did not build or import, or its user took the twin anyway."""
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), module.__file__
    chosen = getattr(importlib.import_module(user), attribute)
    assert chosen is module or chosen is getattr(module, attribute), f"{user} did not take {name}"


def test_no_extensions_makes_the_pure_twin_serve():
    """DRENGR_NO_EXTENSIONS=1 (read at import) leaves the compiled mapper unused, built or not.

    Importing the compiled module itself, as the twin tests do, does not undo it.
    """
    program = (
        "import drengr.mapping as m\n"
        "try:\n"
        "    import drengr.mapping._mapping_c\n"
        "except ImportError:\n"
        "    pass\n"
        "print(m.COMPILED, m.BodyMapper().compiled)"
    )
    env = {**os.environ, "DRENGR_NO_EXTENSIONS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- JSON text with duplicate keys


@dataclass(frozen=True)
class Obj:
    """A JSON object as its member list, so a key may appear twice."""

    pairs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Num:
    """A number written exactly as ``text`` (``1e15``, ``-0``, ``0.1E+2`` …)."""

    text: str


def dump(value: Any, ascii_only: bool, spaced: bool) -> str:
    if isinstance(value, Obj):
        sep = ", " if spaced else ","
        colon = ": " if spaced else ":"
        members = (dump(k, ascii_only, spaced) + colon + dump(v, ascii_only, spaced) for k, v in value.pairs)
        return "{" + sep.join(members) + "}"
    if isinstance(value, list):
        return ("[\n " if spaced else "[") + ",".join(dump(v, ascii_only, spaced) for v in value) + "]"
    if isinstance(value, Num):
        return value.text
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def documents(draw: Any, root: Any) -> bytes:
    text = dump(draw(root), draw(st.booleans()), draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        text = "\ufeff \t\r\n" + text + "\n"  # a BOM and whitespace around
    return text.encode("utf-8")


# ---------------------------------------------------------------- values


@st.composite
def mostly(draw: Any, usual: Any, odd: Any) -> Any:
    """``usual`` about four times in five, so most generated items map to rows."""
    return draw(odd if draw(st.integers(0, 4)) == 0 else usual)


INT64_EDGES = [-(2**63), -(2**63) + 1, -1, 0, 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
ints = st.one_of(st.integers(-1000, 1000), st.sampled_from(INT64_EDGES), st.integers(-(2**63), 2**64 - 1))
floats = st.floats(allow_nan=False, allow_infinity=False)
NUMBER_TEXTS = ["1e15", "1e16", "-1e15", "1E5", "0.1e1", "-0", "-0.0", "1e-400", "123456789012345678.5",
                "9007199254740993", "0.0001", "0.00001", "1e22", "1.5"]  # fmt: skip
number_literals = st.builds(
    lambda sign, whole, frac, exp: Num(sign + whole + frac + exp),
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,16}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,12}", fullmatch=True)),
    st.one_of(
        st.just(""),
        st.from_regex(r"[eE][+-]?[0-9]{1,2}", fullmatch=True),
        st.sampled_from(["e-330", "E+280"]),
    ),
) | st.sampled_from([Num(text) for text in NUMBER_TEXTS])
STRINGS = ["", " ", 'a"b\\c', "line\nbreak\ttab\r\x08\x0c", "\x00\x01\x1f\x7f", "\u2028\u2029", "é", "名前", "😀",
           "true", "null", "9.99"]  # fmt: skip
strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(STRINGS),
    st.text(alphabet="aé名😀\n", min_size=250, max_size=270),  # the 256-character cut, multi-byte
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, number_literals, strings)

PII_KEYS = ["email", "Email", "userEmail", "PHONE_number", "first_name", "naMe", "ssn", "card_no", "cvv", "Token",
            "address", "password", "e\u0301mail", "ЕМAIL", "to\u212aen", "Stra\u00dfe"]  # fmt: skip
RESERVED_KEYS = ["name", "os", "app_version", "device_model", "_source_event_name", "group_id", "previous_id"]
ECOMMERCE_KEYS = ["revenue", "total", "price", "quantity", "tax", "shipping", "discount"]
PLAIN_KEYS = [
    "plan",
    "url",
    "path",
    "category",
    "sku",
    "a",
    "a.b",
    "",
    " ",
    'k"q',
    "\x01",
    "ключ",
    "clé",
    "😀",
]
keys = st.one_of(
    st.sampled_from(PII_KEYS + RESERVED_KEYS + ECOMMERCE_KEYS + PLAIN_KEYS),
    st.text(max_size=10),
    st.text(alphabet="kéy", min_size=60, max_size=70),  # the 64-character cut
)


@st.composite
def objects(draw: Any, children: Any, max_size: int = 6) -> Obj:
    """Objects whose keys often repeat: a null, an object or a full dims list first decides."""
    pairs = draw(st.lists(st.tuples(keys, children), max_size=max_size))
    if pairs and draw(st.booleans()):
        key = pairs[draw(st.integers(0, len(pairs) - 1))][0]
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(st.one_of(st.none(), children))))
    return Obj(tuple(pairs))


values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=3) | objects(children), max_leaves=8
)


def wide_properties() -> Any:
    """More than 40 dims and 20 measures; every 7th key collides with another after the 64-character cut."""
    return st.lists(st.one_of(strings, st.booleans(), ints, floats), min_size=85, max_size=100).map(
        lambda members: Obj(
            tuple((("k" * 64 if i % 7 == 0 else "p") + str(i), v) for i, v in enumerate(members))
        )
    )


properties = st.one_of(
    objects(values, max_size=12),
    objects(st.one_of(scalars, objects(values)), max_size=8),  # one level of nesting, flattened to a.b
    wide_properties(),
    values,  # not an object: ignored
)

# ---------------------------------------------------------------- timestamps


OFFSETS = [
    "",
    "Z",
    "z",
    "+01:00",
    "-05:30",
    "+0530",
    "-0000",
    "+23:59",
    "+24:00",
    "-00:60",
    "+1:00",
    "+01:0",
    "+01:000",
]


@st.composite
def iso_timestamps(draw: Any) -> str:
    """The twin's grammar and its edges: Tt or space, 0–10 fraction digits, offsets, junk after."""
    year = draw(st.one_of(st.sampled_from([1999, 2000, 2024, 2026, 2027]), st.integers(0, 9999)))
    month = draw(st.one_of(st.integers(1, 12), st.sampled_from([0, 1, 2, 12, 13])))
    day = draw(st.one_of(st.integers(1, 28), st.sampled_from([0, 29, 30, 31, 32])))
    hour = draw(st.one_of(st.integers(0, 23), st.sampled_from([0, 23, 24])))
    minute = draw(st.one_of(st.integers(0, 59), st.sampled_from([0, 59, 60])))
    second = draw(st.one_of(st.integers(0, 59), st.sampled_from([0, 59, 60])))
    sep = draw(st.sampled_from("Tt "))
    fraction = draw(st.one_of(st.just(""), st.from_regex(r"\.[0-9]{0,10}", fullmatch=True)))
    offset = draw(st.sampled_from(OFFSETS))
    tail = draw(st.sampled_from([""] * 8 + [" ", "x", "\n"]))
    return (
        f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}{tail}"
    )


USUAL_TIMESTAMPS = ["2026-11-25T10:00:00.000Z", "2026-11-26T02:50:53Z", "2026-11-26T03:50:53.1234+01:00",
                    "2026-11-25 23:00:00"]  # fmt: skip
ODD_TIMESTAMPS = ["", "2024-01-01", "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "2026-11-26T02:50:53.123Z",
                  "２０２４-01-01T00:00:00Z", "2024-01-01T00:00:00.Z", "1700000000000"]  # fmt: skip
timestamps = mostly(
    st.sampled_from(USUAL_TIMESTAMPS),
    st.one_of(
        iso_timestamps(), st.sampled_from(ODD_TIMESTAMPS), st.integers(0, 2_000_000_000_000), st.none()
    ),
)

# ---------------------------------------------------------------- items and bodies

TYPES = ["track", "identify", "page", "screen", "group", "alias", "t", "i", "p", "s", "g", "a", "TRACK", "Page",
         "b", "batch", "import", "x", "", "trac\u212a", "\u0130dentify"]  # fmt: skip
EVENT_NAMES = ["Order Completed", "order_completed", "ORDER COMPLETED!!", "Order Completed ✓", "Product Added to Wishlist",
               "Signed Up", "  __Signed--Up__  ", "", "!!!", "Ördér Cömpleted", "名前 登録", "x" * 70, "a_" * 40,
               "Order\u212aompleted", "Cart Viewed"]  # fmt: skip


ids = mostly(
    st.sampled_from(["user-1", "anon-1", "ユーザー", 'u"1']),
    st.one_of(strings, ints, floats, st.none(), st.booleans(), st.just(""), objects(scalars, 2)),
)
names = mostly(st.sampled_from(EVENT_NAMES), st.one_of(st.text(max_size=20), ints, st.none()))


LIBRARY_NAMES = ["analytics-python", "@segment/analytics-node", "analytics.js", "", "é" * 70, "名前"]


@st.composite
def contexts(draw: Any) -> Any:
    """context.app.version, .os, .device.model, .library, .traits, and other members; sometimes not an object."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values)
    pairs = list(draw(st.lists(st.tuples(keys, values), max_size=2)))
    parts = {
        "app": ("version", mostly(st.sampled_from(["4.2.0", "1.0"]), values)),
        "os": ("name", mostly(st.sampled_from(["iOS", "Android"]), values)),
        "device": ("model", mostly(st.sampled_from(["iPhone15,2", "Pixel 8"]), values)),
        "library": ("name", mostly(st.sampled_from(LIBRARY_NAMES), values)),
    }
    for part, (key, value) in parts.items():
        if draw(st.integers(0, 3)) == 0:
            continue
        if draw(st.integers(0, 9)) == 0:
            pairs.append((part, draw(values)))  # not an object: ignored
            continue
        members = list(draw(objects(values, 2)).pairs)
        if draw(st.integers(0, 3)):
            members.insert(0, (key, draw(value)))
        if part in ("os", "library") and draw(st.booleans()):
            members.append(
                ("version", draw(mostly(st.sampled_from(["17.4", "2.4.0", "npm:next-1.84.3"]), values)))
            )
        pairs.append((part, Obj(tuple(members))))
    if draw(st.booleans()):
        pairs.append(("traits", draw(properties)))
    return Obj(tuple(draw(st.permutations(pairs))))


@st.composite
def items(draw: Any) -> Any:
    """One Segment message (sometimes not an object at all)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)
    members = [  # (key, value strategy, how often it is present out of 10)
        (
            "type",
            mostly(
                st.sampled_from(["track"] * 5 + TYPES[1:6] + ["trac\u212a"]),
                st.one_of(st.sampled_from(TYPES), ints, st.none()),
            ),
            10,
        ),
        ("event", names, 9),
        ("userId", ids, 7),
        ("anonymousId", ids, 7),
        ("messageId", mostly(st.uuids().map(str), ids), 7),
        ("properties", properties, 8),
        ("traits", st.one_of(properties, st.just(Obj(()))), 4),
        ("context", contexts(), 6),
        ("name", st.one_of(names, values), 4),
        ("groupId", ids, 4),
        ("previousId", ids, 4),
        ("timestamp", timestamps, 5),
        ("originalTimestamp", timestamps, 5),
        ("sentAt", timestamps, 5),
        ("integrations", values, 2),
    ]
    pairs = [(key, draw(strategy)) for key, strategy, tenths in members if draw(st.integers(0, 9)) < tenths]
    pairs = draw(st.permutations(pairs))
    if pairs and draw(st.integers(0, 3)) == 0:  # a duplicated key: the first one wins
        key = pairs[draw(st.integers(0, len(pairs) - 1))][0]
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(values)))
    return Obj(tuple(pairs))


@st.composite
def bodies(draw: Any) -> Any:
    """A single message or a batch, with the batch-level members clients send."""
    extra = []
    if draw(st.booleans()):
        extra.append(
            (
                "writeKey",
                draw(st.one_of(st.sampled_from(["drengr_pk_x", "", "id:***"]), strings, ints, st.none())),
            )
        )
    if draw(st.booleans()):
        extra.append(("sentAt", draw(timestamps)))
    if draw(st.integers(0, 2)) == 0:
        item = draw(items())
        base = item.pairs if isinstance(item, Obj) else ()
        return Obj(tuple(draw(st.permutations(list(base) + extra))))
    batch = draw(mostly(st.lists(items(), max_size=6), values))
    pairs = draw(st.permutations([("batch", batch), ("context", draw(contexts())), *extra]))
    if draw(st.integers(0, 5)) == 0:
        pairs.append(("batch", draw(st.lists(items(), max_size=2))))  # ignored: the first batch wins
    return Obj(tuple(pairs))


PII_LISTS = [DEFAULT_PII_SUBSTRINGS, ("EMAIL", "e"), ("straße", "ß", "名"), ("",), ()]
single_types = st.sampled_from([None, None, None, "track", "identify", "page", "screen", "group", "alias"])
received = st.one_of(
    st.just(RECEIVED_MS),
    st.integers(946_684_800_000 - 10 * 86_400_000, 2_000_000_000_000),
    st.sampled_from([0, 900_000_000_000, -62_135_596_800_000, 253_402_300_799_999]),
)


def both(pii: tuple[str, ...], body: bytes) -> tuple[Any, Any]:
    """Parse with both; the generators only write JSON simdjson accepts, so neither may refuse."""
    twin = _mapping_py.Mapper(pii).parse(body)
    fast = compiled().Mapper(pii).parse(body)
    return fast, twin


# ---------------------------------------------------------------- properties


@PROPERTY
@given(documents(bodies()), st.sampled_from(PII_LISTS), single_types, received)
def test_compiled_maps_like_the_twin(body, pii, single_type, received_at_ms):
    fast, twin = both(pii, body)
    assert fast.write_key == twin.write_key
    assert fast.item_count(single_type) == twin.item_count(single_type)
    assert fast.map(single_type, received_at_ms, TENANT) == twin.map(single_type, received_at_ms, TENANT)
    assert fast.stripped_events == twin.stripped_events


def largest_item_bytes(document: Any, single_type: str | None, body: bytes) -> int:
    """The smallest limit no item exceeds, found through ``has_oversized_item`` alone."""
    low, high = 0, 4 * len(body)  # compact text is at most ~4 × its source
    assert not document.has_oversized_item(single_type, high)
    while low < high:
        middle = (low + high) // 2
        if document.has_oversized_item(single_type, middle):
            low = middle + 1
        else:
            high = middle
    return low


@PROPERTY
@given(documents(bodies()), single_types, st.sampled_from([0, 10, 100, 300, 1000, 5000, MAX_ITEM_BYTES]))
def test_compiled_sizes_items_like_the_twin(body, single_type, limit):
    fast, twin = both(DEFAULT_PII_SUBSTRINGS, body)
    assert fast.has_oversized_item(single_type, limit) == twin.has_oversized_item(single_type, limit)
    assert largest_item_bytes(fast, single_type, body) == largest_item_bytes(twin, single_type, body)


@PROPERTY
@given(st.lists(st.one_of(floats, number_literals, ints), min_size=1, max_size=8), st.booleans())
def test_numbers_are_written_like_python(numbers, ecommerce_strings):
    """repr(float) and str(int) in measures, dims (inside arrays) and ids; ecommerce strings coerced."""
    props = [(f"m{i}", n) for i, n in enumerate(numbers)] + [("list", numbers)]
    if ecommerce_strings:
        props += [(key, dump(n, True, False)) for key, n in zip(ECOMMERCE_KEYS, numbers, strict=False)]
    first = numbers[0]
    body = Obj(
        (
            ("type", "track"),
            ("event", "Order Completed"),
            ("userId", first),
            ("messageId", first),
            ("properties", Obj(tuple(props))),
        )
    )
    fast, twin = both(DEFAULT_PII_SUBSTRINGS, dump(body, True, False).encode())
    assert fast.map(None, RECEIVED_MS, TENANT) == twin.map(None, RECEIVED_MS, TENANT)
    assert fast.has_oversized_item(None, 0) == twin.has_oversized_item(None, 0)


@PROPERTY
@given(
    st.one_of(iso_timestamps(), timestamps.filter(lambda t: isinstance(t, str)), st.text(max_size=30)),
    received,
)
def test_timestamps_parse_like_the_twin(timestamp, received_at_ms):
    """occurred_at from `timestamp` alone, so every accepted grammar detail shows."""
    body = Obj((("type", "track"), ("event", "x"), ("userId", "u"), ("timestamp", timestamp)))
    fast, twin = both((), dump(body, False, False).encode())
    assert fast.map(None, received_at_ms, TENANT) == twin.map(None, received_at_ms, TENANT)


# ---------------------------------------------------------------- edges: duplicate keys, caps, the cut, traits


def track(properties: str, extra: str = "") -> bytes:
    return ('{"type":"track","event":"e","userId":"u"' + extra + ',"properties":' + properties + "}").encode()


EDGES = [
    pytest.param(track('{"a":null,"a":1}'), id="properties-null-first"),
    pytest.param(track('{"a":1,"a":null}'), id="properties-null-second"),
    pytest.param(track('{"a":{"b":1},"a":2}'), id="properties-object-first"),
    pytest.param(track('{"a":2,"a":{"b":1}}'), id="properties-object-second"),
    pytest.param(track('{"a":{"b":null,"b":1}}'), id="sub-object-null-first"),
    pytest.param(track('{"a":{"b":"x","b":2,"c":3}}'), id="sub-object-string-first"),
    pytest.param(track('{"a":[{"k":1,"k":2}]}'), id="inside-json-text"),
    pytest.param(track('{"a":{"b":{"k":1,"email":2,"k":3}}}'), id="inside-json-text-with-pii"),
    pytest.param(
        track("{" + ",".join(f'"d{i}":"v"' for i in range(40)) + ',"x":null,"x":5}'),
        id="dims-full-null-first",
    ),
    pytest.param(
        track("{" + ",".join(f'"m{i}":{i}' for i in range(20)) + ',"y":1,"y":"s"}'),
        id="measures-full-then-string",
    ),
    pytest.param(
        track("{" + ",".join(f'"d{i}":"v"' for i in range(41)) + ',"d0":"again"}'), id="dims-41-of-40"
    ),
    pytest.param(
        track("{" + ",".join(f'"m{i}":{i}' for i in range(20)) + f',"{"k" * 64}1":1,"{"k" * 64}2":"dim"}}'),
        id="measure-21-not-kept-so-cut-key-is-free",
    ),
    pytest.param(track('{"a":1}', ',"userId":"second","event":"second"'), id="item-members"),
    pytest.param(track('{"a":1}', ',"context":{"os":{"name":"iOS","name":"Android"},"os":{}}'), id="context"),
    pytest.param(
        b'{"type":"identify","userId":"u","traits":{},"context":{"traits":{"plan":"pro"}}}',
        id="empty-traits-fall-through-to-context-traits",
    ),
    pytest.param(
        b'{"type":"group","userId":"u","traits":"x","context":{"traits":{"plan":"pro"},"traits":{}}}',
        id="traits-not-an-object",
    ),
    pytest.param(
        b'{"batch":[{"type":"track","event":"e","userId":"u"}],"batch":[],"writeKey":"k","writeKey":"j"}',
        id="root",
    ),
]


@pytest.mark.parametrize("body", EDGES)
def test_edges_map_alike(body):
    fast, twin = both(DEFAULT_PII_SUBSTRINGS, body)
    assert fast.write_key == twin.write_key
    assert fast.map(None, RECEIVED_MS, TENANT) == twin.map(None, RECEIVED_MS, TENANT)
    assert largest_item_bytes(fast, None, body) == largest_item_bytes(twin, None, body)


LONG_KEY = "k" * 70
STRIPS = [  # (properties or a whole body, the expected `stripped` of map)
    pytest.param(track('{"plan":"pro"}'), {}, id="nothing-stripped"),
    pytest.param(
        track(
            '{"email":"a@b","user":{"phone":"1","plan":"x"},"list":[{"token":"t","ok":1}],"email":"again"}'
        ),
        {"pii_key_removed": (3, ("email", "user.phone", "token"))},
        id="pii-at-every-depth-duplicate-once",
    ),
    pytest.param(
        track("{" + ",".join(f'"e{i}_email":1' for i in range(7)) + "}"),
        {"pii_key_removed": (7, ("e0_email", "e1_email", "e2_email", "e3_email", "e4_email"))},
        id="pii-names-kept-are-five",
    ),
    pytest.param(
        track(f'{{"{LONG_KEY}":"v","{LONG_KEY}2":"w"}}'),
        {"key_truncated": (2, ("k" * 64,))},
        id="key-cut-twice-second-collides",
    ),
    pytest.param(
        track('{"long":"' + "x" * 257 + '","ok":"' + "y" * 256 + '","obj":{"deep":["' + "z" * 300 + '"]}}'),
        {"value_truncated": (2, ("long", "obj.deep"))},
        id="values-over-256-characters",
    ),
    pytest.param(
        ('{"type":"track","userId":"u","event":"' + "Ü" * 300 + '"}').encode(),
        {"value_truncated": (1, ("_source_event_name",))},
        id="reserved-value-cut",
    ),
    pytest.param(
        track("{" + ",".join(f'"d{i}":"v"' for i in range(43)) + "}"),
        {"over_dim_cap": (3, ("d40", "d41", "d42"))},
        id="dims-over-40",
    ),
    pytest.param(
        track("{" + ",".join(f'"m{i}":{i}' for i in range(22)) + "}"),
        {"over_measure_cap": (2, ("m20", "m21"))},
        id="measures-over-20",
    ),
    pytest.param(
        track("{" + ",".join(f'"m{i}":{i}' for i in range(20)) + ',"revenue":1,"price":2}'),
        {"over_measure_cap": (2, ())},
        id="priority-measures-push-two-out-unnamed",
    ),
    pytest.param(
        b'{"type":"track","event":"e","properties":{"email":"x"}}',
        {},
        id="a-dropped-item-strips-nothing",
    ),
    pytest.param(
        b'{"type":"page","userId":"u","name":{"email":"x"},"context":{"os":{"name":{"phone":1}}}}',
        {"pii_key_removed": (2, ("email", "phone"))},
        id="pii-inside-reserved-values",
    ),
]


@pytest.mark.parametrize(("body", "expected"), STRIPS)
def test_stripped_keys_are_counted_alike(body, expected):
    """Every stripped key counted by reason, with the first five names, in both implementations."""
    fast, twin = both(DEFAULT_PII_SUBSTRINGS, body)
    twin_result = twin.map(None, RECEIVED_MS, TENANT)
    assert twin_result[2] == expected
    assert fast.map(None, RECEIVED_MS, TENANT) == twin_result


LIBRARIES = [
    pytest.param(
        {"name": "analytics-python", "version": "2.4.0"}, "analytics-python 2.4.0", id="name-version"
    ),
    pytest.param({"name": "analytics.js"}, "analytics.js", id="name-only"),
    pytest.param({"name": "x", "version": 2}, "x", id="version-not-a-string"),
    pytest.param({"version": "1.0"}, None, id="no-name"),
    pytest.param({"name": ""}, None, id="empty-name"),
    pytest.param({"name": 7}, None, id="name-not-a-string"),
    pytest.param({"name": "é" * 70, "version": "1"}, "é" * 64, id="cut-to-64"),
    pytest.param("analytics", None, id="not-an-object"),
]


@pytest.mark.parametrize(("library", "expected"), LIBRARIES)
def test_library_column_alike(library, expected):
    body = json.dumps(
        {"batch": [{"type": "track", "event": "e", "userId": "u", "context": {"library": library}}] * 3}
    ).encode()
    fast, twin = both(DEFAULT_PII_SUBSTRINGS, body)
    rows = twin.map(None, RECEIVED_MS, TENANT)[0]
    assert [row[10] for row in rows] == [expected] * 3
    assert fast.map(None, RECEIVED_MS, TENANT)[0] == rows


def test_remembered_pii_answers_never_mix_up_look_alike_keys():
    """Thousands of 12-byte keys sharing their first 8 bytes, some PII: the compiled
    module's answer cache (keyed by length, first and last 8 bytes) must keep them apart."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    pii = [f"prefix__ssn{c}" for c in alphabet] + [f"prefix__{c}ssn" for c in alphabet]
    plain = [f"prefix__{a}{b}{c}{d}" for a in "qwx" for b in alphabet for c in "yz" for d in alphabet]
    keys = [key for pair in zip(plain, pii * 100, strict=False) for key in pair]
    items = [
        {"type": "track", "event": "e", "userId": "u", "properties": {key: 1 for key in keys[i : i + 6]}}
        for i in range(0, len(keys), 6)
    ]
    body = json.dumps({"batch": items}).encode()
    fast, twin = both(DEFAULT_PII_SUBSTRINGS, body)
    assert fast.map(None, RECEIVED_MS, TENANT) == twin.map(None, RECEIVED_MS, TENANT)


# ---------------------------------------------------------------- requests captured from real clients

WIRE_DIR = Path(os.environ.get("DRENGR_WIRE_DIR", Path(__file__).resolve().parent / "data" / "wire"))


def captured_bodies() -> list[Any]:
    """(path, JSON text) of every capture in tests/data/wire, decompressed as the server sees it."""
    params = []
    for path in sorted(WIRE_DIR.glob("*/[0-9][0-9][0-9].json")):
        raw = json.loads(path.read_text())
        if "body_raw_b64" in raw:
            body = base64.b64decode(raw["body_raw_b64"])
        elif "body_raw_gzip_b64" in raw:
            body = gzip.decompress(base64.b64decode(raw["body_raw_gzip_b64"]))
        else:
            body = raw.get("body_text", "").encode()
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        params.append(pytest.param(raw["path"], body, id=f"{path.parent.name}/{path.stem}"))
    return params


@pytest.mark.parametrize(("path", "body"), captured_bodies())
def test_captured_requests_map_alike(path, body):
    _, single_type = classify(path.split("?")[0])
    try:
        twin = _mapping_py.Mapper(DEFAULT_PII_SUBSTRINGS).parse(body)
    except InvalidJSON:
        with pytest.raises(InvalidJSON):
            compiled().Mapper(DEFAULT_PII_SUBSTRINGS).parse(body)
        return
    fast = compiled().Mapper(DEFAULT_PII_SUBSTRINGS).parse(body)
    assert fast.write_key == twin.write_key
    assert fast.item_count(single_type) == twin.item_count(single_type)
    assert fast.has_oversized_item(single_type, MAX_ITEM_BYTES) == twin.has_oversized_item(
        single_type, MAX_ITEM_BYTES
    )
    assert fast.map(single_type, RECEIVED_MS, TENANT) == twin.map(single_type, RECEIVED_MS, TENANT)


def test_captures_are_there():
    assert len(captured_bodies()) >= 200, f"no captures in {WIRE_DIR}"


# ---------------------------------------------------------------- who decides what is JSON

# simdjson refuses some valid RFC 8259 JSON (docs/mapping.md "Event mapping": still accepted): the
# compiled module raises Refused and the twin decides. It also says Refused for
# bodies simdjson finds malformed (`nul`, trailing junk, raw control characters,
# NaN): the twin is the arbiter and says InvalidJSON; a second parse of a bad
# body is cheap and keeps one judge. The compiled module answers InvalidJSON
# itself only where both must agree anyway: invalid UTF-8, an empty body,
# nesting past 1,024 levels (the root object is level 1), a root that is not an
# object.
REFUSED = "refused"
TABLE = [
    pytest.param(b'{"a":123456789012345678901234567890}', REFUSED, "ok", id="integer-beyond-64-bits"),
    pytest.param(b'{"a":-9223372036854775809}', REFUSED, "ok", id="integer-below-int64"),
    pytest.param(b'{"a":1e400}', REFUSED, "ok", id="exponent-beyond-double"),
    pytest.param(b'{"a":"\\ud800"}', REFUSED, "ok", id="lone-surrogate-escape"),
    pytest.param(b"nul", REFUSED, "invalid", id="truncated-literal"),
    pytest.param(b'{"a":1} x', REFUSED, "invalid", id="trailing-junk"),
    pytest.param(b'{"a":"x\x01"}', REFUSED, "invalid", id="raw-control-character"),
    pytest.param(b'{"a":NaN}', REFUSED, "invalid", id="nan"),
    pytest.param(b'{"a":"\xff"}', "invalid", "invalid", id="invalid-utf8"),
    pytest.param(b'{"a":"\xed\xa0\x80"}', "invalid", "invalid", id="utf8-encoded-surrogate"),
    pytest.param(b"[1]", "invalid", "invalid", id="array-root"),
    pytest.param(b'"writeKey"', "invalid", "invalid", id="string-root"),
    pytest.param(b"", "invalid", "invalid", id="empty"),
    pytest.param(b" \r\n\t", "invalid", "invalid", id="whitespace-only"),
    pytest.param(b"\xef\xbb\xbf", "invalid", "invalid", id="bom-only"),
    pytest.param(b'{"a":' * 1023 + b"[]" + b"}" * 1023, "ok", "ok", id="nesting-1024-levels"),
    pytest.param(b'{"a":' * 1024 + b"[]" + b"}" * 1024, "invalid", "invalid", id="nesting-1025-levels"),
    pytest.param(b'{"a":' + b"9" * 5000 + b"}", REFUSED, "ok", id="integer-5000-digits"),
    pytest.param(b'\xef\xbb\xbf{"a":1}', "ok", "ok", id="bom-then-object"),
    pytest.param(b'{"a":18446744073709551615,"b":-9223372036854775808}', "ok", "ok", id="64-bit-extremes"),
]


def outcome(parse: Any, body: bytes) -> str:
    try:
        parse(body)
    except InvalidJSON:
        return "invalid"
    except compiled().Refused:
        return REFUSED
    return "ok"


@pytest.mark.parametrize(("body", "compiled_says", "twin_says"), TABLE)
def test_refused_or_invalid(body, compiled_says, twin_says):
    assert outcome(compiled().Mapper(DEFAULT_PII_SUBSTRINGS).parse, body) == compiled_says
    assert outcome(_mapping_py.Mapper(DEFAULT_PII_SUBSTRINGS).parse, body) == twin_says


def test_refused_is_the_twins_refused():
    assert issubclass(compiled().Refused, _mapping_py.Refused)
    assert issubclass(compiled().Refused, ValueError)


# ---------------------------------------------------------------- one parser per thread


def test_a_document_goes_stale_when_its_thread_parses_again():
    mapper = compiled().Mapper(DEFAULT_PII_SUBSTRINGS)
    first = mapper.parse(b'{"type":"track","event":"a","userId":"u"}')
    second = mapper.parse(b'{"type":"track","event":"b","userId":"u"}')
    with pytest.raises(RuntimeError, match="stale"):
        first.map(None, RECEIVED_MS, TENANT)
    with pytest.raises(RuntimeError, match="stale"):
        first.item_count(None)
    assert second.map(None, RECEIVED_MS, TENANT)[0][0][2] == "b"


def test_a_document_stays_on_its_thread():
    mapper = compiled().Mapper(DEFAULT_PII_SUBSTRINGS)
    document = mapper.parse(b'{"type":"track","event":"a","userId":"u"}')
    errors: list[BaseException] = []

    def use() -> None:
        try:
            document.map(None, RECEIVED_MS, TENANT)
        except RuntimeError as error:
            errors.append(error)
        mapper.parse(b'{"other":"thread"}')  # its own parser: ours stays valid

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert document.map(None, RECEIVED_MS, TENANT)[0][0][2] == "a"
