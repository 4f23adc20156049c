"""What the server prints: one JSON object per line (or one text line), with time, level and logger.

``configure`` installs the one handler of a `drengr serve` process (and of
its writer process): every record — the access lines, start-up and shutdown,
waitress' own, a store's warnings — goes through ``JsonFormatter`` (the
default) or ``TextFormatter`` (``--log-format text``, for a person at a
terminal). A structured line is logged as a ``Fields`` dict, so the JSON
formatter merges its fields without parsing anything; any other message
becomes ``"message"``. Both formatters keep a record on one line whatever it
holds: a line break a client smuggled into a path or header is an escape.
What a client chose (a path, a User-Agent) goes through ``redact_keys`` before
it is logged or kept (the access log, the drop samples).

Imports nothing of drengr (a leaf).
"""

import json
import logging
import re
import sys
import time
from typing import Any

FORMATS = ("json", "text")
_current = {"format": "json", "level": "info"}

# str.splitlines() breaks at all of these, and so do some log shippers.
_LINE_BREAKS = {ord(c): f"\\x{ord(c):02x}" for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85"} | {
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


# Anything shaped like one of our keys (drengr_pk_…, drengr_sk_…): cut out of what a client chose.
_KEY_SHAPE = re.compile(r"drengr_[a-z]{2}_[A-Za-z0-9_\-]*")
_REDACTED = "drengr_[redacted]"


def redact_keys(text: str) -> str:
    """``text`` with every key-shaped run replaced: a key sent in a path or a User-Agent is never written down."""
    return _KEY_SHAPE.sub(_REDACTED, text)


class Fields(dict[str, Any]):
    """A structured log line: the JSON formatter merges these fields; anything else shows them as JSON."""

    __slots__ = ()

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=True)


def _utc(created: float) -> str:
    seconds = int(created)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """``{"time": …, "level": …, "logger": …, <the fields or "message">}``, ASCII, one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, Fields) and not record.args:
            line.update(record.msg)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True)  # escapes every line break: one line


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER message`` for a terminal; line breaks inside a record are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{_utc(record.created)} {record.levelname.lower():<7} {record.name} {record.getMessage()}"
        if record.exc_info:
            text += " " + self.formatException(record.exc_info)
        return text.translate(_LINE_BREAKS)


def configure(level: str = "info", log_format: str = "json") -> None:
    """One stderr handler for every logger of this process, at ``level``, in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Start-up and shutdown lines are not per request: shown at every level.
    logging.getLogger("drengr.server").setLevel(min(logging.INFO, logging.getLevelName(level.upper())))
    _current.update(format=log_format, level=level)


def current_format() -> str:
    """What ``configure`` chose (the writer process logs the same way)."""
    return _current["format"]
