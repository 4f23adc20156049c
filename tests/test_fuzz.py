"""Fuzzing the Sans-IO core: bytes in, response and rows out, invariants checked.

Issue 5, point 6. One fuzz input is ``selector byte + body``: the selector
picks the route, where the key comes from and the Content-Encoding (the
harness compresses the body itself, so the fuzzer spends its time on JSON,
not on zlib internals). Every input goes through ``machine.run`` twice —
with the compiled ``drengr.mapping._mapping_c`` (and its fallback, as in production) and
with the pure-Python twin alone — and must satisfy:

- nothing escapes ``machine.run`` (an escaping exception is a 502 for client input);
- the status is one of the contract's (200, 400, 401 for a POST), with its exact body;
- every stored row is valid UTF-8; ``dims`` is a JSON object of strings and
  ``measures`` one of finite numbers, within the counts and lengths of docs/mapping.md "Event mapping";
- no key containing a PII fragment survives, at any depth of the JSON text
  stored for nested values (reserved dims the mapper sets are exempt);
- the compiled module and the twin give the same response and the same rows.

In CI: hypothesis, a bounded number of examples (``DRENGR_FUZZ_EXAMPLES``,
default 300 — a few seconds), plus every file of ``tests/fuzz_corpus/`` as
a regression test. For a long run with coverage guidance, atheris (if it is
installed) drives the same harness and grows the corpus::

    pip install atheris
    PYTHONPATH=src python tests/test_fuzz.py tests/fuzz_corpus -max_total_time=300

then keep the inputs worth keeping (``-merge=1`` into a fresh folder picks
a minimal set) with readable names.
"""

import base64
import gzip
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from drengr.core import machine
from drengr.core.auth import KeyRecord, hash_key
from drengr.core.errors import SUCCESS_BODY
from drengr.core.limits import (
    DEFAULT_PII_SUBSTRINGS,
    MAX_DIM_KEY_CHARS,
    MAX_DIM_VALUE_CHARS,
    MAX_DIMS,
    MAX_EVENT_NAME_CHARS,
    MAX_LIBRARY_CHARS,
    MAX_MEASURES,
    MAX_STRIPPED_KEY_NAMES,
    MIN_OCCURRED_AT_MS,
)
from drengr.core.timestamps import parse_ms
from drengr.mapping import BodyMapper, _mapping_py

CORPUS = Path(__file__).with_name("fuzz_corpus")
KEY = "drengr_pk_fuzzfuzzfuzzfuzzfuzzfuzzfuzzfu"
TENANT = "fuzz"
RECEIVED_MS = 1_795_000_000_000  # 2026-11-18
# What a server has: importing drengr.mapping._mapping_py raises CPython's default 1,000 to this, so
# json.loads can follow the 1,024 levels simdjson accepts.
PRODUCTION_RECURSION_LIMIT = max(1_000, 4 * _mapping_py.MAX_DEPTH)
RECORDS = {hash_key(KEY): KeyRecord(hash_key(KEY), TENANT, "publishable")}

ROUTES = ["/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias",
          "/v1/b", "/v1/t", "/", "/v1", "/api/s/s2s/batch", "/api/s/track", "/v1/import", "/v1/m", "/v1/x"]  # fmt: skip
AUTH_MODES = ["basic", "x-write-key", "body", "unknown-basic"]
ENCODINGS = [None, "gzip", "deflate", "raw-deflate"]

CONTRACT_ERRORS = {
    400: {"Request too large", "Message too large", "Batch too large", "Invalid JSON"},
    401: {"Unauthorized"},
}
EVENT_TYPES = {"track", "identify", "page", "screen", "group", "alias"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
EVENT_NAME = re.compile(r"[^\W_]+(?:_[^\W_]+)*")  # letters/digits, single `_` between runs
# Reserved dims the mapper sets itself, per event type, that contain a PII fragment.
RESERVED_PII_LOOKING = {"page": {"name"}, "screen": {"name"}, "track": {"_source_event_name"}}
RESERVED = {"name", "group_id", "previous_id", "_source_event_name", "app_version", "os", "device_model"}


# ---------------------------------------------------------------- the harness


def decode_input(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Selector byte → (path, headers, body on the wire)."""
    selector, body = (data[0], data[1:]) if data else (0, b"")
    path = ROUTES[selector & 15]
    auth = AUTH_MODES[(selector >> 4) & 3]
    encoding = ENCODINGS[selector >> 6]
    headers: dict[str, str] = {"content-type": "application/json"}
    if auth == "basic":
        headers["authorization"] = "Basic " + base64.b64encode(KEY.encode() + b":").decode()
    elif auth == "x-write-key":
        headers["x-write-key"] = KEY
    elif auth == "unknown-basic":
        headers["authorization"] = "Basic " + base64.b64encode(b"drengr_pk_unknown:").decode()
    if encoding == "gzip":
        body = gzip.compress(body, mtime=0)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "raw-deflate":
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = packer.compress(body) + packer.flush()
    if encoding is not None:
        headers["content-encoding"] = "deflate" if encoding == "raw-deflate" else encoding
    return path, headers, body


def run_core(data: bytes, mapper: Any) -> tuple[machine.Response, list[tuple[Any, ...]]]:
    path, headers, body = decode_input(data)
    stored: list[tuple[Any, ...]] = []

    def answer(need: Any) -> Any:
        if isinstance(need, machine.ReadBody):
            return body[: need.limit + 1]
        if isinstance(need, machine.LookupKey):
            return RECORDS.get(hash_key(need.key))
        stored.extend(need.rows)
        return machine.StoreOutcome(stored=len(need.rows))

    request = machine.Request("POST", path, headers, len(body), RECEIVED_MS)
    # On a fresh worker thread with CPython's default recursion limit, as under waitress: how
    # deep the twin can recurse depends on both, and pytest's stack and hypothesis' raised
    # limit would each change the outcome for deeply nested bodies.
    return _WORKER.submit(
        _with_default_recursion_limit, machine.run, request, mapper, answer
    ).result(), stored


def _with_default_recursion_limit(function: Any, *args: Any) -> Any:
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(PRODUCTION_RECURSION_LIMIT)  # the main thread waits meanwhile
    try:
        return function(*args)
    finally:
        sys.setrecursionlimit(previous)


_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuzz-worker")
_PRODUCTION = BodyMapper(DEFAULT_PII_SUBSTRINGS)  # compiled, twin for what simdjson refuses
_TWIN = _mapping_py.Mapper(DEFAULT_PII_SUBSTRINGS)  # the pure-Python twin alone


def check_input(data: bytes) -> int:
    """Run ``data`` through both mappers and assert every invariant. Returns the status."""
    response, rows = run_core(data, _PRODUCTION)
    check_response(response, rows)
    for row in rows:
        check_row(row)
    twin_response, twin_rows = run_core(data, _TWIN)
    assert (twin_response.status, twin_response.body) == (response.status, response.body), "twin disagrees"
    assert twin_rows == rows, "twin maps differently"
    assert twin_response.dropped == response.dropped
    assert twin_response.stripped == response.stripped
    check_stripped(response.stripped)
    return response.status


def check_stripped(stripped: dict[str, tuple[int, tuple[str, ...]]]) -> None:
    """Counts are positive; only a few names are kept, each a key name cut to 64, never repeated."""
    for reason, (count, names) in stripped.items():
        assert reason in _mapping_py.STRIP_REASONS
        assert count >= len(names) and count > 0
        assert len(names) <= MAX_STRIPPED_KEY_NAMES and len(set(names)) == len(names)
        assert all(isinstance(n, str) and len(n) <= MAX_DIM_KEY_CHARS for n in names)
        for name in names:
            name.encode("utf-8")


def check_response(response: machine.Response, rows: list[tuple[Any, ...]]) -> None:
    assert response.status in (200, 400, 401), response.status
    if response.status == 200:
        assert response.body == SUCCESS_BODY
        return
    assert not rows
    error = json.loads(response.body)
    assert error["error"] in CONTRACT_ERRORS[response.status]
    assert error["message"] == error["error"] and re.fullmatch(r"[a-z_]+", error["code"])


def _no_nan(text: str) -> None:
    raise ValueError(f"{text} in stored JSON")


def check_row(row: tuple[Any, ...]) -> None:
    (
        tenant,
        event_id,
        event_name,
        event_type,
        external_id,
        install_id,
        occurred,
        received,
        dims,
        measures,
        library,
    ) = row
    if library is not None:
        assert isinstance(library, str) and 0 < len(library) <= MAX_LIBRARY_CHARS
        library.encode("utf-8")
    for text in (tenant, event_id, event_name, event_type, install_id, occurred, received, dims, measures):
        assert isinstance(text, str)
        text.encode("utf-8")  # strict: no lone surrogates reach SQLite
    if external_id is not None:
        assert isinstance(external_id, str) and external_id
        external_id.encode("utf-8")
    assert tenant == TENANT and event_id and install_id
    assert event_type in EVENT_TYPES
    assert 0 < len(event_name) <= MAX_EVENT_NAME_CHARS and EVENT_NAME.fullmatch(event_name), event_name
    assert event_name == event_name.lower()
    assert TIMESTAMP.fullmatch(occurred) and TIMESTAMP.fullmatch(received)
    occurred_ms = parse_ms(occurred)
    assert occurred_ms is not None and MIN_OCCURRED_AT_MS <= occurred_ms <= RECEIVED_MS + 86_400_000

    dim_map = json.loads(dims, parse_constant=_no_nan)
    measure_map = json.loads(measures, parse_constant=_no_nan)
    assert isinstance(dim_map, dict) and isinstance(measure_map, dict)
    assert all(isinstance(v, str) for v in dim_map.values())
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in measure_map.values())
    assert all(math.isfinite(v) for v in measure_map.values())
    assert len([k for k in dim_map if k not in RESERVED]) <= MAX_DIMS
    assert len(measure_map) <= MAX_MEASURES
    assert all(len(k) <= MAX_DIM_KEY_CHARS for k in [*dim_map, *measure_map])
    assert all(len(v) <= MAX_DIM_VALUE_CHARS for v in dim_map.values())

    exempt = RESERVED_PII_LOOKING.get(event_type, set())
    for key in [*dim_map, *measure_map]:
        assert key in exempt or not is_pii(key), f"PII key {key!r} stored"
    for key, value in dim_map.items():
        if key not in RESERVED and value[:1] in "{[":
            for nested in json_keys(value):
                assert not is_pii(nested), f"PII key {nested!r} stored inside {key!r}"


def is_pii(key: str) -> bool:
    lowered = key.lower()
    return any(fragment in lowered for fragment in DEFAULT_PII_SUBSTRINGS)


def json_keys(text: str) -> Iterator[str]:
    """Every object key in ``text``, when it is (untruncated) JSON text; nothing otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        return
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            yield from value
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


# ---------------------------------------------------------------- generated inputs

PII_KEYS = ["email", "Email", "user_email", "PHONE", "first_name", "address", "password", "Token", "ssn", "card_number",
            "cvv", "billing.addressLine", "to\u212aen", "E\u0301mail", "naMe"]  # fmt: skip
ODD_KEYS = ["", " ", "a.b", "'; DROP TABLE semantic_events; --", "k\\u0000", "\\ud800", "\\udfff\\ud800", "é", "名前",
            "😀", "\\n", "revenue", "price", "quantity", "total", "tax", "x" * 70, "é" * 65]  # fmt: skip
NUMBER_TEXTS = ["0", "-0", "1", "-1", "9.99", "1e15", "1e400", "-1e400", "1e-400", "18446744073709551615",
                "18446744073709551616", "-9223372036854775809", "123456789012345678901234567890",
                "9" * 4301, "1." + "5" * 400, "1E+2", "0.000001"]  # fmt: skip
STRING_TEXTS = ["", "x", "9.99", " 12 ", "NaN", "1,000", "$5", "\\u0000", "\\ud800", "a\\udc00b", "\\n{\\\"status\\\": 200}",
                "\\u2028", "é", "名前", "😀", "\\\\", "x" * 300, "2026-11-26T02:50:53.123Z", "2026-11-26 02:50:53+01:00",
                "9" * 4400]  # fmt: skip
TYPES = ["track", "identify", "page", "screen", "group", "alias", "TRACK", "t", "batch", "x", ""]
TOP_KEYS = ["type", "event", "userId", "anonymousId", "messageId", "properties", "traits", "context", "name",
            "groupId", "previousId", "timestamp", "originalTimestamp", "sentAt", "writeKey", "batch"]  # fmt: skip


def quoted(text: str) -> str:
    return '"' + text + '"'  # the texts above are already JSON-escaped where they need to be


keys = st.one_of(st.sampled_from(PII_KEYS + ODD_KEYS), st.text(max_size=8).map(lambda t: json.dumps(t)[1:-1]))
scalars = st.one_of(
    st.sampled_from(NUMBER_TEXTS),
    st.sampled_from(STRING_TEXTS).map(quoted),
    st.text(max_size=12).map(json.dumps),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["true", "false", "null"]),
)


def obj(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{quoted(k)}:{v}" for k, v in members) + "}"


values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(st.tuples(keys, inner), max_size=6).map(obj),
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
    ),
    max_leaves=12,
)
# Nesting: shallow values, and just past simdjson's 1,024 levels (Invalid JSON in both parsers).
# The range between is in the corpus (the twin once ran out of recursion there; fixed).
nested_deep = st.tuples(st.one_of(st.integers(1, 200), st.integers(1_025, 1_100)), scalars).map(
    lambda d: "[" * d[0] + d[1] + "]" * d[0]
)


@st.composite
def items(draw: Any) -> str:
    members = []
    for top in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=10)):
        if top == "type":
            value = quoted(draw(st.sampled_from(TYPES)))
        elif top in ("properties", "traits", "context"):
            value = draw(
                st.one_of(
                    st.lists(st.tuples(keys, st.one_of(values, nested_deep)), max_size=8).map(obj), values
                )
            )
        elif top == "writeKey":
            value = draw(st.sampled_from([quoted(KEY), '"id:***"', '"drengr_sk_x"', "null", "1"]))
        else:
            value = draw(st.one_of(scalars, st.just(quoted("user-1"))))
        members.append((top, value))
    return obj(members)


@st.composite
def bodies(draw: Any) -> bytes:
    if draw(st.booleans()):
        text = draw(items())
    else:
        batch = "[" + ",".join(draw(st.lists(items(), max_size=5))) + "]"
        extra = [("writeKey", quoted(KEY))] if draw(st.booleans()) else []
        text = obj([("batch", batch), *extra, ("sentAt", draw(scalars))])
    raw = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 3))):  # byte-level damage, sometimes
        position = draw(st.integers(0, len(raw)))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            raw = (
                raw[:position]
                + draw(
                    st.sampled_from(
                        [
                            b"\xff",
                            b"\xc0\xaf",
                            b"\xed\xa0\x80",
                            b"\x00",
                            b"{",
                            b"[",
                            b'"',
                            b"}",
                            b",",
                            b"NaN",
                            b"\\u",
                        ]
                    )
                )
                + raw[position:]
            )
        elif kind == 1:
            raw = raw[:position] + raw[position + draw(st.integers(1, 8)) :]
        elif kind == 2:
            raw = raw[:position]
        else:
            raw = draw(st.sampled_from([b"\xef\xbb\xbf", b" \n", b""])) + raw
    return raw


FUZZ = settings(
    max_examples=int(os.environ.get("DRENGR_FUZZ_EXAMPLES", "300")),
    deadline=None,
    # Shrinking a deep or long input can take minutes; CI prints the failing input as found.
    phases=list(Phase) if os.environ.get("DRENGR_FUZZ_SHRINK") else [Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,  # no .hypothesis folder in a clean clone; failures print their input
)


@FUZZ
@given(st.integers(0, 255), bodies())
def test_generated_inputs_keep_the_invariants(selector, body):
    check_input(bytes([selector]) + body)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_keep_the_invariants(data):
    assert check_input(data) in (200, 400, 401)


# ---------------------------------------------------------------- the corpus, as regression tests


def corpus_files() -> list[Any]:
    files = sorted(p for p in CORPUS.iterdir() if p.is_file() and not p.name.startswith("."))
    return [pytest.param(p, id=p.name) for p in files]


@pytest.mark.parametrize("path", corpus_files())
def test_corpus_input(path):
    check_input(path.read_bytes())


def test_corpus_is_there():
    assert len(corpus_files()) >= 20


# ---------------------------------------------------------------- atheris


def _atheris_main() -> None:  # pragma: no cover - a developer's long run, not CI
    import atheris

    def one_input(data: bytes) -> None:
        check_input(data)

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    _atheris_main()
