"""The access log: one line a request, the same fields on every route, never a key or a value.

``request_line`` writes the line of an ingest request from the machine's
Request and Response (counts and reasons only); ``route_line`` the line of
every other route — health, the settings, the read API, analytics.js,
``/sourceConfig`` — through the same builder, its counts zero. The path and
the User-Agent are what the client chose: cut to length, with anything
shaped like a key cut out (``logs.redact_keys``). A line is a ``logs.Fields``:
JSON with ``ensure_ascii``, so a newline (or U+2028) a client put in the path
or a header is an escape and cannot start a line. ``unexpected`` is the one
line of a bug, on the ``drengr`` logger.
"""

import logging
import time
import traceback
from pathlib import Path

from flask import request

from ..core import machine
from ..logs import Fields, redact_keys

access_log = logging.getLogger("drengr.access")
log = logging.getLogger("drengr")

PATH_CHARS = 200
LIBRARY_CHARS = 80


def request_line(
    req: machine.Request, result: machine.Response, seconds: float, level: int = logging.INFO
) -> None:
    """The line of one request: what came (method, path, size, library), what was answered and kept."""
    if not access_log.isEnabledFor(level):
        return
    outcome = result.outcome
    line = {
        "method": req.method,
        "path": redact_keys(req.path)[:PATH_CHARS],
        "status": result.status,
        "error": result.error_code,
        "tenant": result.tenant_id,
        "items": result.items,
        "stored": outcome.stored if outcome else 0,
        "duplicates": outcome.duplicates if outcome else 0,
        "over_cap": outcome.over_cap if outcome else 0,
        "dropped": result.dropped,
        "stripped": {reason: count for reason, (count, _names) in result.stripped.items()},
        "bytes": req.content_length,
        "library": redact_keys(req.headers.get("user-agent", ""))[:LIBRARY_CHARS],
        "ms": round(seconds * 1000, 2),
        "auth_failure": result.auth_failure,  # a 401's kind: missing, malformed, unknown_key, revoked, secret_key
    }
    access_log.log(level, Fields(line))


def route_line(
    method: str,
    path: str,
    status: int,
    tenant_id: str | None,
    started: float,
    auth_failure: str | None = None,
    level: int = logging.INFO,
) -> None:
    """The line of a Flask route (``started``: its ``time.perf_counter()``); ``path`` never holds a key."""
    if not access_log.isEnabledFor(level):
        return
    seconds = time.perf_counter() - started
    headers = {"user-agent": request.headers.get("User-Agent", "")}
    req = machine.Request(method, path, headers, content_length=None, received_at_ms=0)
    request_line(req, machine.Response(status, [], b"", tenant_id, auth_failure=auth_failure), seconds, level)


def unexpected(req: machine.Request, error: Exception) -> None:
    """A bug: where it happened, one line, without the exception's message.

    The message of an exception raised while mapping may quote the body (a
    property value, a key); the type and the frames are enough to find the bug.
    """
    frames = [
        f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in traceback.extract_tb(error.__traceback__)
    ]
    line = {
        "unexpected_error": type(error).__name__,
        "method": req.method,
        "path": redact_keys(req.path)[:PATH_CHARS],
        "frames": frames if len(frames) <= 12 else [*frames[:4], "…", *frames[-7:]],  # a deep recursion
    }
    log.error(Fields(line))
