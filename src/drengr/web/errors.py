"""Every error a route answers, in one vocabulary: a class with its status, text and code.

The ingest errors are ``drengr.core.errors``' (the machine turns them into
responses, CORS and all). The other routes raise or return the same classes —
``NotFound``, ``Unauthorized`` — and the ones here, which add a sentence of
their own as ``message`` (a bad query parameter says which and why): the
contract's shape, ``{"error", "code", "message"}``, on every route. ``/health``'s
503 is the one other shape (``Unhealthy``: load balancers and docs/operating.md
read ``{"status": "unavailable", "error": why}``). ``response`` is the one way
a Flask route answers an error; before Flask (the prefix middleware) the body
is sent as it is.
"""

import json
from collections.abc import Sequence

from flask import Response

from ..core.errors import IngestError
from ..core.errors import NotFound as NotFound
from ..core.errors import Unauthorized as Unauthorized

JSON = (("Content-Type", "application/json"),)


class RouteError(IngestError):
    """An error of a route other than ingest, its ``message`` a sentence of its own (else its text)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.message = message or self.text

    def body(self) -> bytes:
        # As sent, not \u-escaped: a sentence may quote what the client gave (a parameter's value).
        fields = {"error": self.text, "code": self.code, "message": self.message}
        return json.dumps(fields, ensure_ascii=False).encode()


class InvalidQuery(RouteError):
    """A query parameter a read route cannot use; the message says which and what to give instead."""

    text, code = "Invalid query", "invalid_query"


class StoreUnavailable(RouteError):
    """A read the store could not answer (the read routes; ingest's store failure is a 502)."""

    status, text, code = 503, "Store unavailable", "store_unavailable"


class NotServed(RouteError):
    """``NotFound``, saying how to turn the route on (analytics.js without --analytics-js)."""

    status, text, code = NotFound.status, NotFound.text, NotFound.code


class Refused(RouteError):
    """``Unauthorized``, saying what would be let in (``/metrics`` from another machine)."""

    status, text, code = Unauthorized.status, Unauthorized.text, Unauthorized.code


class Unhealthy(RouteError):
    """``GET /health``'s 503: the probe's own shape, ``{"status": "unavailable", "error": why}``."""

    status, text, code = 503, "unavailable", "unavailable"

    def body(self) -> bytes:
        return json.dumps({"status": self.text, "error": self.message}).encode()


def response(error: IngestError, headers: Sequence[tuple[str, str]] = JSON) -> Response:
    """The Flask answer to ``error``: its status, its body, ``headers`` (JSON unless told)."""
    return Response(error.body(), status=error.status, headers=list(headers))
