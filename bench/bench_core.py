"""Parse and map cost per request body: compiled module vs Python twin vs simdjson parse alone.

Bodies come from ``payloads.py`` (seeded analytics-python batches of 1, 100
and 2,500 events, and the largest batch under the 500 KB body cap). Each
benchmark times one body end to end; the body is built outside the timer and
the result is checked after. Claim speed from the ratios within one run (the
machines are shared): ``pytest bench/bench_core.py --benchmark-only``.
"""

from typing import Any

import pytest
import simdjson

from drengr.core.limits import DEFAULT_PII_SUBSTRINGS
from drengr.mapping import _mapping_py

from .payloads import RECEIVED_AT_MS, batch_body, body_of_size

try:
    from drengr.mapping import _mapping_c
except ImportError:  # tests/test_fast_twin.py fails loudly; here the compiled rows just fail
    _mapping_c = None

TENANT = "bench"
SIZES = {"1": batch_body(1), "100": batch_body(100), "2500": batch_body(2_500)}
SIZES["500KB"], _ = body_of_size()
EVENTS = {name: _mapping_py.Mapper(()).parse(body).item_count(None) for name, body in SIZES.items()}


def expected_rows(body: bytes) -> int:
    rows, dropped, _stripped = (
        _mapping_py.Mapper(DEFAULT_PII_SUBSTRINGS).parse(body).map(None, RECEIVED_AT_MS, TENANT)
    )
    assert not dropped
    return len(rows)


ROWS = {name: expected_rows(body) for name, body in SIZES.items()}


def compiled() -> Any:
    assert _mapping_c is not None, "drengr.mapping._mapping_c did not load"
    return _mapping_c


def record(benchmark: Any, size: str) -> None:
    benchmark.group = f"{size} events" if size != "500KB" else f"500KB ({EVENTS[size]} events)"
    benchmark.extra_info["events"] = EVENTS[size]
    benchmark.extra_info["body_bytes"] = len(SIZES[size])


@pytest.mark.parametrize("size", SIZES)
def test_simdjson_parse_only(benchmark, size):
    """pysimdjson's own Parser.parse of the body: the floor any simdjson path pays."""
    record(benchmark, size)
    parser, body = simdjson.Parser(), SIZES[size]
    benchmark(lambda: parser.parse(body) is not None)
    assert len(parser.parse(body)["batch"]) == EVENTS[size]


@pytest.mark.parametrize("size", SIZES)
def test_compiled_parse_only(benchmark, size):
    """drengr.mapping._mapping_c Mapper.parse alone (simdjson DOM + the writeKey lookup), no mapping."""
    record(benchmark, size)
    mapper, body = compiled().Mapper(DEFAULT_PII_SUBSTRINGS), SIZES[size]
    document = benchmark(mapper.parse, body)
    assert document.item_count(None) == EVENTS[size]


@pytest.mark.parametrize("size", SIZES)
def test_compiled_parse_and_map(benchmark, size):
    """drengr.mapping._mapping_c: parse the body and map every item to its row."""
    record(benchmark, size)
    mapper, body = compiled().Mapper(DEFAULT_PII_SUBSTRINGS), SIZES[size]
    rows, dropped, _stripped = benchmark(lambda: mapper.parse(body).map(None, RECEIVED_AT_MS, TENANT))
    assert len(rows) == ROWS[size] and not dropped


@pytest.mark.parametrize("size", SIZES)
def test_twin_parse_and_map(benchmark, size):
    """drengr.mapping._mapping_py (the pure-Python oracle): parse the body and map every item to its row."""
    record(benchmark, size)
    mapper, body = _mapping_py.Mapper(DEFAULT_PII_SUBSTRINGS), SIZES[size]
    rows, dropped, _stripped = benchmark(lambda: mapper.parse(body).map(None, RECEIVED_AT_MS, TENANT))
    assert len(rows) == ROWS[size] and not dropped
