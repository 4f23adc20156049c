"""Stubs of the compiled mapper (``_mapping_c.pyx``): the same names as ``_mapping_py``."""

from typing import Any

from . import _mapping_py

BigLiteral = _mapping_py.BigLiteral
ECOMMERCE_EVENTS = _mapping_py.ECOMMERCE_EVENTS
TYPE_EVENT_NAMES = _mapping_py.TYPE_EVENT_NAMES
DROP_NOT_OBJECT = _mapping_py.DROP_NOT_OBJECT
DROP_UNKNOWN_TYPE = _mapping_py.DROP_UNKNOWN_TYPE
DROP_MISSING_ID = _mapping_py.DROP_MISSING_ID
DROP_NO_EVENT_NAME = _mapping_py.DROP_NO_EVENT_NAME
STRIP_REASONS = _mapping_py.STRIP_REASONS
normalize_event_name = _mapping_py.normalize_event_name
is_pii_key = _mapping_py.is_pii_key
coerce_number_text = _mapping_py.coerce_number_text
fallback_event_id = _mapping_py.fallback_event_id

class Refused(_mapping_py.Refused):
    """simdjson refused the body; the Python twin decides whether it is JSON."""

class Mapper:
    def __init__(self, pii_substrings: tuple[str, ...], pii_allow: tuple[str, ...] = ()) -> None: ...
    def parse(self, body: bytes) -> Document:
        """The parsed body; raises Refused (the twin decides) or InvalidJSON."""

class Document:
    """One parsed request body, valid until its thread's parser parses another."""

    @property
    def write_key(self) -> str | None: ...
    @property
    def stripped_events(self) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]: ...
    def item_count(self, single_type: str | None) -> int: ...
    def has_oversized_item(self, single_type: str | None, limit: int) -> bool: ...
    def map(
        self, single_type: str | None, received_at_ms: int, tenant_id: str, pii_allow: tuple[str, ...] = ()
    ) -> tuple[list[tuple[Any, ...]], dict[str, int], dict[str, tuple[int, tuple[str, ...]]]]: ...
