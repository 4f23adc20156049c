"""What the store tests share: the moment they start at, a settable clock, a row of semantic_events."""

from drengr.core.timestamps import parse_ms

DAY0: int = parse_ms("2026-11-26T12:00:00.000Z") or 0
assert DAY0


class Clock:
    """A settable clock for the store (seconds, like time.time)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def row(event_id: str, tenant: str = "acme") -> tuple[str, ...]:
    """A semantic_events row (seq aside) of ``tenant`` with the event id ``event_id``."""
    return (tenant, event_id, "e", "track", "u", "u", "2026-11-26T00:00:00.000Z",
            "2026-11-26T00:00:00.000Z", "{}", "{}", "analytics-python 2.4.0")  # fmt: skip
