"""Strings PostgreSQL refuses, replaced before the database (never a 502); its errors in one line.

``text`` cannot hold U+0000 and no column can hold a lone surrogate, and
``jsonb`` refuses the escape ``\\u0000``: each becomes U+FFFD (see ``drengr.store.postgres``).
"""

import itertools
import json
import re
from typing import Any

# Characters PostgreSQL refuses in text: U+0000 and lone surrogates (they cannot be UTF-8).
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
# ... and in JSON text also the escapes jsonb refuses: \u0000 and surrogate escapes (checked precisely below).
_BAD_IN_ROW = re.compile(r"[\x00\ud800-\udfff]|\\u0000|\\u[dD][89abAB]")


def clean_text(value: Any) -> Any:
    """U+0000 and lone surrogates → U+FFFD; anything else (None included) unchanged."""
    if isinstance(value, str) and _BAD_CHARS.search(value):
        return _BAD_CHARS.sub("\ufffd", value)
    return value


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(key): _clean_value(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_clean_value(inner) for inner in value]
    return value


def clean_json(text: str) -> str:
    """JSON text that jsonb accepts: NUL and lone surrogates (raw or escaped) in keys and values → U+FFFD."""
    if not _BAD_IN_ROW.search(text):
        return text
    try:
        # strict=False: a raw control character in a string is read, not refused. Escaped surrogate
        # pairs are joined; lone ones come back as lone surrogates, and are replaced below.
        value = json.loads(text, strict=False)
    except ValueError:  # the mapper always writes valid JSON; if not, let jsonb say so (502)
        return _BAD_CHARS.sub("\ufffd", text)
    return json.dumps(_clean_value(value), ensure_ascii=False)


def _suspect(text: str) -> bool:
    """Cheap test: might ``text`` hold something PostgreSQL refuses? (False: certainly not.)

    ``in`` and ``encode`` run at memory speed: a NUL, a backslash-u escape (the
    mapper writes one only for control characters), or a lone surrogate (the
    UTF-8 encoder refuses it).
    """
    if "\x00" in text or "\\u" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    if not _BAD_IN_ROW.search("\x1f".join(v for v in row if isinstance(v, str))):
        return row
    return (
        *(clean_text(v) for v in row[:8]),
        clean_json(row[8]),
        clean_json(row[9]),
        *map(clean_text, row[10:]),
    )


def clean_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows, with what PostgreSQL would refuse replaced (see the module docstring). Usually the same list.

    The whole batch is tested at once (one join, memory-speed scans); only a
    suspect batch is looked at row by row.
    """
    try:  # their strings (None and "" left out: nothing to replace there)
        text = "\x1f".join(filter(None, itertools.chain.from_iterable(rows)))
    except TypeError:  # a value that is not a string
        text = "\x1f".join(map(str, itertools.chain.from_iterable(rows)))
    if not _suspect(text):
        return rows
    return [_clean_row(row) for row in rows]
