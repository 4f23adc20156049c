"""What a store answers for one request's rows (its own module: the writer process imports no more)."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    stored: int
    duplicates: int = 0
    over_cap: int = 0
