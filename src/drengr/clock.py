"""The one wall clock of the server: every time of receipt, key-cache expiry
and dedup generation is read here.

``DRENGR_CLOCK_OFFSET`` (seconds, may be negative) shifts it for a whole
process and the processes it starts (the writer process inherits the
environment). It exists for tests: the suite runs its date-dependent parts
far from today with it, and the fault suite makes a server's clock jump with
``set_offset``, without touching the system clock. Monotonic time (waits,
timeouts) is never shifted.
"""

import math
import os
import sys
import time

VARIABLE = "DRENGR_CLOCK_OFFSET"  # declared with the other settings in drengr.settings


def parse_offset(text: str) -> float:
    """Seconds, finite, may be negative; "" is 0. ValueError says what is wrong."""
    try:
        value = float(text.strip()) if text.strip() else 0.0
    except ValueError:
        raise ValueError("is not a number of seconds") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number of seconds")
    return value


def _offset_from_env() -> float:
    text = os.environ.get(VARIABLE, "")
    try:
        return parse_offset(text)
    except ValueError as error:  # read as drengr is imported: before any command can answer it
        print(f"drengr: {VARIABLE}={text!r} {error}: unset it.", file=sys.stderr)
        raise SystemExit(2) from None


_offset = _offset_from_env()


def set_offset(seconds: float) -> None:
    """Shift this process's clock by ``seconds`` from the system's (a jump, for tests)."""
    global _offset
    _offset = seconds


def offset() -> float:
    return _offset


def now() -> float:
    """Seconds since the epoch, like ``time.time``."""
    return time.time() + _offset


def now_ms() -> int:
    """Milliseconds since the epoch, an integer (the unit of every stored time)."""
    return time.time_ns() // 1_000_000 + int(_offset * 1000)
