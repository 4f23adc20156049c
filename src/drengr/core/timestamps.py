"""ISO-8601 timestamps as integer milliseconds: parse, skew-correct, clamp, format.

The row `timestamp → occurred_at` of docs/mapping.md "Event mapping".
Integer arithmetic only (no datetime, no clock): the time of receipt is
always passed in. ``drengr/mapping/_helpers.hpp`` carries a
C++ twin of ``parse_ms`` and ``format_ms``; the two must agree.
"""

import re

from .limits import MAX_FUTURE_MS, MIN_OCCURRED_AT_MS

# 2026-11-26T02:50:53.123456789+01:00 — `T`, `t` or a space between date and
# time; 0–9 fractional digits; `Z`, `±hh:mm`, `±hhmm` or no offset (UTC).
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?",
    re.ASCII,
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 (Howard Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = year_of_era + era * 400 + (month <= 2)
    return year, month, day


def parse_ms(text: object) -> int | None:
    """Milliseconds since the epoch, or None when ``text`` is not a timestamp we accept."""
    if not isinstance(text, str):
        return None
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and day >= 1 and hour <= 23 and minute <= 59 and second <= 59):
        return None
    if day > _DAYS_IN_MONTH[month - 1] + (month == 2 and _is_leap(year)):
        return None
    fraction = match.group(7) or ""
    millis = int((fraction + "000")[:3])
    offset_minutes = 0
    if match.group(9):
        off_hour, off_minute = int(match.group(10)), int(match.group(11))
        if off_hour > 23 or off_minute > 59:
            return None
        offset_minutes = off_hour * 60 + off_minute
        if match.group(9) == "-":
            offset_minutes = -offset_minutes
    seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_minutes * 60) * 1000 + millis


def format_ms(ms: int) -> str:
    """``2026-11-26T02:50:53.123Z``."""
    days, ms_of_day = divmod(ms, 86_400_000)
    year, month, day = civil_from_days(days)
    seconds, millis = divmod(ms_of_day, 1000)
    hour, rest = divmod(seconds, 3600)
    minute, second = divmod(rest, 60)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def occurred_at_ms(
    timestamp: int | None,
    sent_at: int | None,
    original_timestamp: int | None,
    received_at: int,
) -> int:
    """docs/mapping.md "Event mapping": the precedence, then the clamp to [2000-01-01, received_at + 1 day].

    ``sent_at`` is the item's sentAt, else the batch's; all inputs are
    already-parsed milliseconds (None when absent or unparseable).
    """
    if timestamp is not None:
        occurred = timestamp
    elif sent_at is not None and original_timestamp is not None:
        # The client's clock may be off; its own sentAt - originalTimestamp
        # is the event's age, which our clock can trust.
        occurred = received_at - (sent_at - original_timestamp)
    elif original_timestamp is not None:
        occurred = original_timestamp
    else:
        occurred = received_at
    return min(max(occurred, MIN_OCCURRED_AT_MS), received_at + MAX_FUTURE_MS)
