"""Errors the contract names, each with its status and exact wire text.

Everything the client can get wrong is one of these; they are turned into
responses at one boundary (``machine``). Anything else escaping is a bug.
Imports only the standard library's ``json``.
"""

import json


class IngestError(Exception):
    """A request the contract refuses. Subclasses fix status, text and code."""

    status: int = 400
    text: str = "Bad request"
    code: str = "bad_request"

    def body(self) -> bytes:
        # RudderStack's Python SDK retries a 4xx forever when the body lacks
        # `code` and `message`, so every error carries all three.
        return error_body(self.text, self.code)


class RequestTooLarge(IngestError):
    text, code = "Request too large", "request_too_large"


class MessageTooLarge(IngestError):
    text, code = "Message too large", "message_too_large"


class BatchTooLarge(IngestError):
    text, code = "Batch too large", "batch_too_large"


class InvalidJSON(IngestError):
    text, code = "Invalid JSON", "invalid_json"


class Unauthorized(IngestError):
    """Every failure gets the same answer (a prober learns nothing); ``failure`` is for the log only."""

    status, text, code = 401, "Unauthorized", "unauthorized"
    FAILURES = ("missing", "malformed", "unknown_key", "revoked", "secret_key")

    def __init__(self, failure: str = "unknown_key") -> None:
        super().__init__(failure)
        self.failure = failure


class IngestFailed(IngestError):
    """The store could not write: the only 5xx, and never the client's fault."""

    status, text, code = 502, "Ingest failed", "ingest_failed"


class MethodNotAllowed(IngestError):
    status, text, code = 405, "Method not allowed", "method_not_allowed"


class NotFound(IngestError):
    status, text, code = 404, "Not found", "not_found"


def error_body(text: str, code: str) -> bytes:
    return json.dumps({"error": text, "code": code, "message": text}).encode()


SUCCESS_BODY = b'{"success": true}'
UNAUTHORIZED_BODY = Unauthorized().body()
