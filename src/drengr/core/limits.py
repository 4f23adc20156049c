"""Every number of the contract (docs/mapping.md "Limits and responses", "Event mapping"), with its unit.

Pure constants: imports nothing.
"""

MAX_BODY_BYTES = 512_000  # on the wire and decompressed
MAX_ITEM_BYTES = 32_768  # one item's compact JSON
MAX_BATCH_ITEMS = 2_500
WAITRESS_MAX_BODY_BYTES = 4 * 1024 * 1024  # waitress refuses larger bodies unread

MAX_EVENT_NAME_CHARS = 64
MAX_MEASURES = 20
MAX_DIMS = 40
MAX_DIM_KEY_CHARS = 64
MAX_DIM_VALUE_CHARS = 256
MAX_LIBRARY_CHARS = 64  # context.library "name version", an extra column (not one of the ten fixed ones)
MAX_STRIPPED_KEY_NAMES = 5  # names kept per strip reason and request, for the drop samples
MAX_STRIPPED_EVENTS = 5  # events named per request that lost keys (each with up to 5 names), for the debugger

PRIORITY_MEASURES = ("revenue", "total", "price", "quantity")
ECOMMERCE_NUMERIC_KEYS = ("revenue", "total", "price", "quantity", "tax", "shipping", "discount")
DEFAULT_PII_SUBSTRINGS = ("email", "phone", "name", "address", "password", "token", "ssn", "card", "cvv")

# Timestamps are handled as integer milliseconds since the Unix epoch.
MIN_OCCURRED_AT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_MS = 86_400_000  # received_at + 1 day
MS_PER_DAY = 86_400_000

DEFAULT_DAILY_CAP_EVENTS = 5_000_000
# --dedup-window-days: repeats inside it are always caught (docs/operating.md "The dedup window: its length and its memory")
DEFAULT_DEDUP_WINDOW_DAYS = 7


def min_retention_days(window_days: int) -> int:
    """The shortest retention that keeps every row the dedup window may point at: its two
    generations and a day of margin (a resent event must find its first copy)."""
    return 2 * window_days + 1


CORS_MAX_AGE_SECONDS = 86_400
