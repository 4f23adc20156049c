"""Segment's Pixel API: ``GET /v1/pixel/{type}?data=<base64 of one call>`` answers a 1x1 GIF.

Used where no script runs (an e-mail's ``<img>``): the call, ``writeKey``
inside, is the base64 of its JSON in the ``data`` query parameter. Once
decoded it is exactly a ``POST /v1/{type}`` of that JSON, so it runs through
``machine.handle`` unchanged: the same auth order (a header, the body's
``writeKey``, then ``?writeKey=``), limits, mapping and store. Only the
answer differs: always the same transparent GIF, never cached, with the
status the POST would have had (200, the uniform 401, 400 for ``data`` that
is missing, not base64 of JSON or too large, 502 when the store fails). An image client ignores the status and
shows nothing either way; the status and the access log's ``error`` tell an
operator what went wrong. Nothing is stored from a refused call. ``HEAD``
answers the image's headers and stores nothing: mail scanners and link
previewers probe with it.

Pure: the decoded body is handed to the machine here, never read from the shell.
"""

import base64
import binascii
from collections.abc import Generator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

from .errors import IngestError, InvalidJSON, RequestTooLarge
from .limits import MAX_BODY_BYTES
from .machine import BodyParser, Need, ReadBody, Request, Response, handle

PIXEL_TYPES = ("track", "page", "identify", "group", "alias", "screen")

# The smallest transparent GIF: 1x1, one transparent colour.
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
GIF_HEADERS = [
    ("Content-Type", "image/gif"),
    # Every open of the e-mail is a request; no proxy or client may answer from a cache.
    ("Cache-Control", "no-store, no-cache, must-revalidate, max-age=0"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
]
_MAX_DATA_CHARS = (MAX_BODY_BYTES + 2) // 3 * 4  # base64 of the largest body


def decode_data(query: str) -> bytes:
    """The JSON bytes in ``?data=``: standard or URL-safe base64, padding optional.

    A ``+`` left unescaped in the URL arrives as a space and is put back.
    Raises InvalidJSON when there is no such data and RequestTooLarge past the body limit.
    """
    data = next((value for name, value in parse_qsl(query) if name == "data"), "")
    text = data.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    if len(text) > _MAX_DATA_CHARS:
        raise RequestTooLarge()
    if not text:
        raise InvalidJSON()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidJSON() from None


def gif_response(status: int, error_code: str | None = None) -> Response:
    response = Response(status, list(GIF_HEADERS), GIF)
    response.error_code = error_code
    return response


def handle_pixel(request: Request, mapper: BodyParser) -> Generator[Need, Any, Response]:
    """Drive like ``machine.handle``; ``request.path`` ends in one of PIXEL_TYPES."""
    if request.method == "HEAD":
        return gif_response(200)
    try:
        body = decode_data(request.query)
    except IngestError as error:
        return gif_response(error.status, error.code)
    # The call is the decoded JSON itself: a header the GET happened to carry does not describe it.
    headers = {name: value for name, value in request.headers.items() if name != "content-encoding"}
    post = replace(request, method="POST", headers=headers, content_length=len(body))
    machine = handle(post, mapper)
    try:
        need = next(machine)
        while True:
            answer = body[: need.limit + 1] if isinstance(need, ReadBody) else (yield need)
            need = machine.send(answer)
    except StopIteration as stop:
        result: Response = stop.value
    result.headers = list(GIF_HEADERS)
    result.body = GIF
    return result
