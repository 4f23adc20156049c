"""The per-event hot path in pure Python: the oracle twin of ``_mapping_c.pyx``.

Same names, same output, byte for byte. It serves bodies simdjson refuses
(integers beyond 64 bits, exponents beyond double range, lone surrogates),
runs where the extension is missing, and is what the property tests hold
the compiled module to. docs/mapping.md "Event mapping" is implemented here, row by
row. Imports only the standard library and ``drengr.core``.

A parsed body is a ``Document``; a ``Mapper`` (built once, from the PII
list) parses bodies and maps documents to rows:

    row = (tenant_id, event_id, event_name, event_type, external_id,
           install_id, occurred_at, received_at, dims_json, measures_json,
           library)

``library`` is ``context.library`` as "name version" (an extra column, see
docs/mapping.md "The semantic_events table"), so a user can see which SDK
sent a row. ``map`` also reports what it left out: items dropped, and keys
stripped from the items it kept (``Strips``).
"""

import hashlib
import itertools
import json
import math
import re
import sys
from typing import Any, NamedTuple

from ..core.errors import InvalidJSON
from ..core.limits import (
    ECOMMERCE_NUMERIC_KEYS,
    MAX_DIM_KEY_CHARS,
    MAX_DIM_VALUE_CHARS,
    MAX_DIMS,
    MAX_EVENT_NAME_CHARS,
    MAX_LIBRARY_CHARS,
    MAX_MEASURES,
    MAX_STRIPPED_EVENTS,
    MAX_STRIPPED_KEY_NAMES,
    PRIORITY_MEASURES,
)
from ..core.routes import canonical_type
from ..core.timestamps import format_ms, occurred_at_ms, parse_ms

ECOMMERCE_EVENTS = frozenset(
    {
        "products_searched", "product_list_viewed", "product_list_filtered",
        "promotion_viewed", "promotion_clicked", "product_clicked", "product_viewed",
        "product_added", "product_removed", "cart_viewed", "checkout_started",
        "checkout_step_viewed", "checkout_step_completed", "payment_info_entered",
        "order_updated", "order_completed", "order_refunded", "order_cancelled",
        "coupon_entered", "coupon_applied", "coupon_denied", "coupon_removed",
        "product_added_to_wishlist", "product_removed_from_wishlist",
        "wishlist_product_added_to_cart", "product_shared", "cart_shared",
        "product_reviewed",
    }
)  # fmt: skip

TYPE_EVENT_NAMES = {
    "page": "page_viewed",
    "screen": "screen_viewed",
    "identify": "identify",
    "group": "group",
    "alias": "alias",
}

# Drop reasons, counted per request (the keys of the `dropped` dict).
DROP_NOT_OBJECT = "not_an_object"
DROP_UNKNOWN_TYPE = "unknown_type"
DROP_MISSING_ID = "missing_id"
DROP_NO_EVENT_NAME = "no_event_name"

# Strip reasons: keys left out of a row that was stored (the keys of `stripped`).
STRIP_PII_KEY = "pii_key_removed"  # at any depth, in what the row would have shown
STRIP_KEY_TRUNCATED = "key_truncated"  # a flattened property key over 64 characters
STRIP_VALUE_TRUNCATED = "value_truncated"  # a dim value over 256 characters
STRIP_OVER_DIMS = "over_dim_cap"  # a property past the 40 dims
STRIP_OVER_MEASURES = "over_measure_cap"  # a number past the 20 measures
STRIP_REASONS = (
    STRIP_PII_KEY,
    STRIP_KEY_TRUNCATED,
    STRIP_VALUE_TRUNCATED,
    STRIP_OVER_DIMS,
    STRIP_OVER_MEASURES,
)

_NON_ALNUM_RUN = re.compile(r"[\W_]+")  # \W is Unicode-aware on str
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", re.ASCII)
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what simdjson represents
MAX_DEPTH = 1024  # simdjson's default; deeper bodies are Invalid JSON in both parsers

# json.loads recurses in C once per nesting level and stops at the recursion
# limit (~990 levels with the default 1,000); simdjson accepts 1,024.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_DEPTH))


class BigLiteral(str):
    """A JSON number simdjson cannot hold (beyond 64 bits or double range): its literal text."""


class Refused(ValueError):
    """simdjson refused the body; the Python parser decides whether it is JSON."""


# ---------------------------------------------------------------- helpers
# Shared with _mapping_c.pyx, which calls them on its rare paths (non-ASCII names
# and keys, ecommerce strings, messageId fallback), so both agree by construction.


def normalize_event_name(raw: str) -> str:
    """Lowercase; runs of non-letters/digits → one `_`; strip `_`; cut to 64 (then strip again)."""
    name = _NON_ALNUM_RUN.sub("_", raw.lower()).strip("_")
    return name[:MAX_EVENT_NAME_CHARS].rstrip("_")


def is_pii_key(key: str, pii: tuple[str, ...]) -> bool:
    lowered = key.lower()
    return any(fragment in lowered for fragment in pii)


class PiiRule(NamedTuple):
    """Which keys are left out: those containing a fragment (any case), unless named exactly in ``allow``.

    ``allow`` holds exact key names (case matters), met at any depth: the
    server's ``--pii-allow`` plus the tenant's (`drengr tenants set NAME --pii-allow`).
    """

    fragments: tuple[str, ...]
    allow: frozenset[str] = frozenset()

    def drops(self, key: str) -> bool:
        return is_pii_key(key, self.fragments) and key not in self.allow


def coerce_number_text(text: str) -> str | None:
    """An ecommerce field sent as a string ("9.99") → its JSON number text, else None."""
    text = text.strip(" \t\r\n")
    match = _JSON_NUMBER.fullmatch(text)
    if match is None:
        return None
    if match.group(1) is None and match.group(2) is None:
        # An integer beyond 64 bits stays a dim, as it would in properties.
        if len(text) > 21 or not _INT_MIN <= int(text) <= _INT_MAX:
            return None
        return str(int(text))
    value = float(text)
    return repr(value) if math.isfinite(value) else None


def fallback_event_id(who: str, event_name: str, raw_timestamp: str) -> str:
    """docs/mapping.md "Event mapping": a stable hash of (userId or anonymousId, event name, timestamp)."""
    material = "\x1f".join((who, event_name, raw_timestamp)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(material).hexdigest()[:32]


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # simdjson's object lookup returns the first of duplicated keys; so do we.
    result: dict[str, Any] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def _parse_int(text: str) -> int | BigLiteral:
    if len(text) > 21:  # beyond 64 bits for sure (and int() refuses past 4,300 digits)
        return BigLiteral(text)
    value = int(text)
    return value if _INT_MIN <= value <= _INT_MAX else BigLiteral(text)


def _parse_float(text: str) -> float | BigLiteral:
    value = float(text)
    return value if math.isfinite(value) else BigLiteral(text)


def _refuse_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")  # Python accepts NaN/Infinity; RFC 8259 does not


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _number_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


class Strips:
    """Keys left out of the rows of one request: a count, and the first few names, by reason.

    Names are key names (cut to 64 characters), never values. The compiled
    module counts the same keys, in the same order, so both report the same.
    ``events`` names the first few stored events that lost keys: (event_id,
    ((reason, key name), …)), for the debugger.
    """

    __slots__ = ("counts", "events", "item", "names")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.names: dict[str, list[str]] = {}
        self.item: list[tuple[str, str]] | None = None  # this item's, while events has room
        self.events: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    def start_item(self) -> None:
        self.item = [] if len(self.events) < MAX_STRIPPED_EVENTS else None

    def end_item(self, event_id: str) -> None:
        """The item became a row: name it if it lost keys, by reason (in STRIP_REASONS' order)."""
        if self.item:
            self.events.append((event_id, tuple(sorted(self.item, key=_reason_order))))

    def note(self, reason: str, key: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.item is not None:  # up to 5 names a reason: the mappers meet reasons in different orders
            pair = (reason, _clean(key[:MAX_DIM_KEY_CHARS]))
            if pair not in self.item and sum(r == reason for r, _ in self.item) < MAX_STRIPPED_KEY_NAMES:
                self.item.append(pair)
        names = self.names.setdefault(reason, [])
        if len(names) < MAX_STRIPPED_KEY_NAMES:
            name = _clean(key[:MAX_DIM_KEY_CHARS])
            if name not in names:
                names.append(name)

    def add(self, reason: str, count: int) -> None:
        """Keys counted without names (measures cut when the row is finished)."""
        self.counts[reason] = self.counts.get(reason, 0) + count
        self.names.setdefault(reason, [])

    def result(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        return {reason: (n, tuple(self.names[reason])) for reason, n in self.counts.items()}


def _reason_order(pair: tuple[str, str]) -> int:
    return STRIP_REASONS.index(pair[0])


def json_text(value: Any, pii: PiiRule | None, strips: Strips | None = None) -> str:
    """Compact JSON of a parsed value; PII keys dropped at every depth when ``pii`` is given.

    An explicit stack of iterators, not recursion: bodies up to simdjson's 1,024
    levels must not run out of Python frames. Members are visited in order, so
    a dropped key is noted in ``strips`` where it is met, as the compiled module does.
    """
    out: list[str] = []
    stack: list[tuple[Any, bool, list[bool]]] = []  # (iterator, is_object, [first])
    while True:
        if isinstance(value, dict):
            out.append("{")
            stack.append((iter(value.items()), True, [True]))
        elif isinstance(value, list):
            out.append("[")
            stack.append((iter(value), False, [True]))
        else:
            out.append(_scalar_json(value))
        while stack:  # the next value to write, closing the containers that are done
            members, is_object, first = stack[-1]
            if is_object:
                for member_key, member_value in members:
                    if pii is not None and pii.drops(member_key):
                        if strips is not None:
                            strips.note(STRIP_PII_KEY, member_key)
                        continue
                    out.append(("," if not first[0] else "") + _json_string(member_key) + ":")
                    first[0] = False
                    value = member_value
                    break
                else:
                    out.append("}")
                    stack.pop()
                    continue
                break
            for element in members:
                if not first[0]:
                    out.append(",")
                first[0] = False
                value = element
                break
            else:
                out.append("]")
                stack.pop()
                continue
            break
        if not stack:
            return "".join(out)


def _scalar_json(item: Any) -> str:
    if isinstance(item, BigLiteral):
        return str.__str__(item)
    if isinstance(item, str):
        return _json_string(item)
    if item is True:
        return "true"
    if item is False:
        return "false"
    if item is None:
        return "null"
    return _number_text(item)


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _text_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON text (the root object is 1).

    Measured on the text, not the parsed value: a duplicated key that the
    first-wins rule drops still counts, as it does for simdjson.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0  # cannot be too deep
    brackets = [c for c in _JSON_STRING.sub("", text) if c in "[]{}"]
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def scalar_text(value: Any, pii: PiiRule, strips: Strips | None = None) -> str | None:
    """A value as dim text: strings as-is, booleans true/false, numbers as text, nulls absent."""
    if value is None:
        return None
    if isinstance(value, str):  # BigLiteral included: its literal text
        return str.__str__(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return _number_text(value)
    return json_text(value, pii, strips)


def id_text(value: Any) -> str | None:
    """userId / anonymousId / messageId: strings as-is, numbers as text; null and "" absent."""
    if isinstance(value, str):
        return str.__str__(value) or None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return _number_text(value)
    return None


def _clean(text: str) -> str:
    # Only the Python parser lets lone surrogates through; SQLite wants UTF-8.
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


# ---------------------------------------------------------------- the mapper


class Mapper:
    """Parses bodies and maps them to rows, with the PII list and the server's allow-list fixed at start-up."""

    def __init__(self, pii_substrings: tuple[str, ...], pii_allow: tuple[str, ...] = ()) -> None:
        self.pii = tuple(fragment.lower() for fragment in pii_substrings)
        self.allow = frozenset(pii_allow)
        self.rule = PiiRule(self.pii, self.allow)

    def rule_for(self, tenant_allow: tuple[str, ...]) -> PiiRule:
        """The rule for one request: the server's allow-list plus the tenant's."""
        if not tenant_allow:
            return self.rule
        return PiiRule(self.pii, self.allow.union(tenant_allow))

    def parse(self, body: bytes) -> "Document":
        if body.startswith(b"\xef\xbb\xbf"):  # simdjson skips a UTF-8 BOM; so do we
            body = body[3:]
        try:
            text = body.decode("utf-8")
            root = json.loads(
                text,
                object_pairs_hook=_first_wins,
                parse_int=_parse_int,
                parse_float=_parse_float,
                parse_constant=_refuse_constant,
            )
        except (ValueError, RecursionError):
            raise InvalidJSON() from None
        if not isinstance(root, dict) or _text_depth(text) > MAX_DEPTH:
            raise InvalidJSON()
        return Document(self, root)


class Document:
    """One parsed request body."""

    def __init__(self, mapper: Mapper, root: dict[str, Any]) -> None:
        self._mapper = mapper
        self._root = root
        key = root.get("writeKey")
        self.write_key: str | None = _clean(key) if isinstance(key, str) and key else None
        # After map: the first few stored events that lost keys, (event_id, ((reason, key name), …)).
        self.stripped_events: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def _items(self, single_type: str | None) -> list[Any]:
        batch = self._root.get("batch")
        if single_type is None and isinstance(batch, list):
            return batch
        return [self._root]

    def item_count(self, single_type: str | None) -> int:
        return len(self._items(single_type))

    def has_oversized_item(self, single_type: str | None, limit: int) -> bool:
        return any(
            len(json_text(item, None).encode("utf-8", "surrogatepass")) > limit
            for item in self._items(single_type)
        )

    def map(
        self, single_type: str | None, received_at_ms: int, tenant_id: str, pii_allow: tuple[str, ...] = ()
    ) -> tuple[list[tuple[Any, ...]], dict[str, int], dict[str, tuple[int, tuple[str, ...]]]]:
        """Rows for every accepted item; dropped items by reason; stripped keys by reason.

        ``stripped`` maps a reason to (how many keys, the first few key names).
        ``pii_allow``: the tenant's exact key names kept although they hold a PII fragment.
        """
        pii = self._mapper.rule_for(pii_allow)
        batch_sent_at = parse_ms(self._root.get("sentAt"))
        received_at = format_ms(received_at_ms)
        rows: list[tuple[Any, ...]] = []
        dropped: dict[str, int] = {}
        strips = Strips()
        for item in self._items(single_type):
            strips.start_item()
            result = _map_item(item, single_type, batch_sent_at, received_at_ms, pii, strips)
            if isinstance(result, str):
                dropped[result] = dropped.get(result, 0) + 1
                continue
            event_id, event_name, event_type, external_id, install_id, occurred, dims, measures, library = (
                result
            )
            rows.append(
                (
                    tenant_id, _clean(event_id), event_name, event_type,
                    None if external_id is None else _clean(external_id),
                    _clean(install_id), format_ms(occurred), received_at,
                    _clean(dims), _clean(measures),
                    None if library is None else _clean(library),
                )
            )  # fmt: skip
            strips.end_item(rows[-1][1])
        self.stripped_events = tuple(strips.events)
        return rows, dropped, strips.result()


def _get_object(parent: Any, key: str) -> dict[str, Any] | None:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else None


def _map_item(
    item: Any,
    single_type: str | None,
    batch_sent_at: int | None,
    received_at_ms: int,
    pii: PiiRule,
    strips: Strips,
) -> tuple[Any, ...] | str:
    if not isinstance(item, dict):
        return DROP_NOT_OBJECT
    event_type = single_type or canonical_type(item.get("type"))
    if event_type is None:
        return DROP_UNKNOWN_TYPE
    external_id = id_text(item.get("userId"))
    install_id = id_text(item.get("anonymousId")) or external_id
    if install_id is None:
        return DROP_MISSING_ID

    reserved: dict[str, str] = {}
    source: dict[str, Any] | None = None
    if event_type == "track":
        raw_name = item.get("event")
        if not isinstance(raw_name, str) or isinstance(raw_name, BigLiteral):
            return DROP_NO_EVENT_NAME  # a number is not an event name
        event_name = normalize_event_name(raw_name)
        if not event_name:
            return DROP_NO_EVENT_NAME
        if event_name != raw_name:
            reserved["_source_event_name"] = raw_name
        source = _get_object(item, "properties")
    else:
        event_name = TYPE_EVENT_NAMES[event_type]
        if event_type in ("page", "screen"):
            _set_reserved(reserved, "name", item.get("name"), pii, strips)
            source = _get_object(item, "properties")
            if "name" not in reserved and source is not None:
                # @jitsu/js sends a page's name only as properties.name
                _set_reserved(reserved, "name", source.get("name"), pii, strips)
        elif event_type in ("identify", "group"):
            source = _get_object(item, "traits") or _get_object(_get_object(item, "context"), "traits")
            if event_type == "group":
                _set_reserved(reserved, "group_id", item.get("groupId"), pii, strips)
        else:
            _set_reserved(reserved, "previous_id", item.get("previousId"), pii, strips)

    context = _get_object(item, "context")
    _set_reserved(reserved, "app_version", _get_path(context, "app", "version"), pii, strips)
    os_parts = [
        text
        for text in (
            scalar_text(_get_path(context, "os", "name"), pii, strips),
            scalar_text(_get_path(context, "os", "version"), pii, strips),
        )
        if text  # an empty name or version is absent (RudderStack's browser SDKs send both empty)
    ]
    if os_parts:
        reserved["os"] = " ".join(os_parts)
    _set_reserved(reserved, "device_model", _get_path(context, "device", "model"), pii, strips)

    dims, measures = _dims_and_measures(
        source, reserved, event_type == "track" and event_name in ECOMMERCE_EVENTS, pii, strips
    )

    timestamp = item.get("timestamp")
    original = item.get("originalTimestamp")
    sent_at = parse_ms(item.get("sentAt"))
    if sent_at is None:
        sent_at = batch_sent_at
    occurred = occurred_at_ms(parse_ms(timestamp), sent_at, parse_ms(original), received_at_ms)

    event_id = id_text(item.get("messageId"))
    if event_id is None:
        raw_timestamp = (
            timestamp if isinstance(timestamp, str)
            else original if isinstance(original, str)
            else format_ms(received_at_ms)
        )  # fmt: skip
        event_id = fallback_event_id(external_id or install_id, event_name, raw_timestamp)
    library = _library(context)
    return event_id, event_name, event_type, external_id, install_id, occurred, dims, measures, library


def _library(context: dict[str, Any] | None) -> str | None:
    """``context.library`` as "name version" (version only when it is a string), cut to 64."""
    library = _get_object(context, "library")
    name = None if library is None else library.get("name")
    if not isinstance(name, str) or isinstance(name, BigLiteral) or not name:
        return None
    version = library.get("version")  # type: ignore[union-attr]
    if isinstance(version, str) and not isinstance(version, BigLiteral) and version:
        name = name + " " + version
    return name[:MAX_LIBRARY_CHARS]


def _get_path(obj: dict[str, Any] | None, first: str, second: str) -> Any:
    parent = _get_object(obj, first)
    return None if parent is None else parent.get(second)


def _set_reserved(reserved: dict[str, str], key: str, value: Any, pii: PiiRule, strips: Strips) -> None:
    text = scalar_text(value, pii, strips)
    if text is not None:
        reserved[key] = text


def _dims_and_measures(
    source: dict[str, Any] | None,
    reserved: dict[str, str],
    ecommerce: bool,
    pii: PiiRule,
    strips: Strips,
) -> tuple[str, str]:
    dims: dict[str, str] = {}
    for key, value in reserved.items():
        if len(value) > MAX_DIM_VALUE_CHARS:
            strips.note(STRIP_VALUE_TRUNCATED, key)
        dims[key] = value[:MAX_DIM_VALUE_CHARS]
    n_dims = 0
    priority: dict[str, str] = {}
    others: dict[str, str] = {}

    def emit(key: str, value: Any) -> None:
        nonlocal n_dims
        if value is None:
            return
        if len(key) > MAX_DIM_KEY_CHARS:
            key = key[:MAX_DIM_KEY_CHARS]
            strips.note(STRIP_KEY_TRUNCATED, key)
        if key in dims or key in priority or key in others:
            return
        number: str | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = _number_text(value)
        elif ecommerce and isinstance(value, str) and key in ECOMMERCE_NUMERIC_KEYS:
            number = None if isinstance(value, BigLiteral) else coerce_number_text(value)
        if number is not None:
            if key in PRIORITY_MEASURES:
                priority[key] = number
            elif len(others) < MAX_MEASURES:
                others[key] = number
            else:
                strips.note(STRIP_OVER_MEASURES, key)
            return
        if n_dims >= MAX_DIMS:
            strips.note(STRIP_OVER_DIMS, key)
            return
        text = scalar_text(value, pii, strips)
        assert text is not None
        if len(text) > MAX_DIM_VALUE_CHARS:
            strips.note(STRIP_VALUE_TRUNCATED, key)
        dims[key] = text[:MAX_DIM_VALUE_CHARS]
        n_dims += 1

    for key, value in (source or {}).items():
        if pii.drops(key):
            strips.note(STRIP_PII_KEY, key)
            continue
        if isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if pii.drops(sub_key):
                    strips.note(STRIP_PII_KEY, key + "." + sub_key)
                else:
                    emit(key + "." + sub_key, sub_value)
        else:
            emit(key, value)

    measures = [(key, priority[key]) for key in PRIORITY_MEASURES if key in priority]
    room = MAX_MEASURES - len(measures)
    if len(others) > room:  # priority measures came after others had filled up
        strips.add(STRIP_OVER_MEASURES, len(others) - room)
    measures += list(others.items())[:room]
    dims_json = "{" + ",".join(_json_string(k) + ":" + _json_string(v) for k, v in dims.items()) + "}"
    measures_json = "{" + ",".join(_json_string(k) + ":" + v for k, v in measures) + "}"
    return dims_json, measures_json
