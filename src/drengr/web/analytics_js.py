"""analytics.js from this server: a user-supplied analytics-next build, at the paths Segment's CDN uses.

Segment's snippet loads ``{_cdn}/analytics.js/v1/{writeKey}/analytics.min.js``
(analytics-next's ``standalone.js``); the library then fetches its settings
from ``{cdn}/v1/projects/{writeKey}/settings`` (``health``) and its lazy chunks
(``auto-track`` for ``trackLink``/``trackForm``, ``queryString``, …) from
``{cdn}/analytics-next/bundles/{file}``, where ``cdn`` is the origin of the
script it was loaded from. With ``--analytics-js DIR`` (the ``dist/umd``
folder of the npm package ``@segment/analytics-next``) those paths are
served from DIR; drengr ships no copy of the library. Without it they
answer a JSON 404 that says how to turn them on.

Cache headers: chunk names carry a content hash, so a chunk never changes
(a year, immutable); ``analytics.min.js`` and the unhashed files are the
library's current version, which a new DIR replaces (five minutes, then
revalidated with the ETag). Shell side: reads files; the key in the path
is neither checked nor logged (the library is public; the settings route
decides who may send).
"""

import re
import time
from pathlib import Path

from flask import Flask, Response, request, send_from_directory
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from ..core.errors import NotFound
from . import access_log
from .errors import NotServed, response

STANDALONE = "standalone.js"  # what Segment's CDN serves as analytics.min.js
HASHED = re.compile(r"\.[0-9a-f]{16,}\.js(\.map)?$")  # webpack's [name].bundle.[contenthash].js
IMMUTABLE = 365 * 24 * 3600
SHORT = 300
NOT_SERVED = (
    "analytics.js is not served here: start drengr serve with --analytics-js DIR "
    "(the dist/umd folder of @segment/analytics-next)"
)


def register(app: Flask, folder: str) -> None:
    """The two routes; ``folder`` is a checked folder (drengr.settings) or "" (answer 404)."""
    root = Path(folder) if folder else None

    def serve(name: str, logged_path: str) -> Response:
        started = time.perf_counter()
        answer = _file(root, name)
        access_log.route_line(request.method, logged_path, answer.status_code, None, started)
        return answer

    @app.get("/analytics.js/v1/<write_key>/analytics.min.js")
    def analytics_min_js(write_key: str) -> Response:
        return serve(STANDALONE, "/analytics.js/v1/{writeKey}/analytics.min.js")

    @app.get("/analytics-next/bundles/<name>")
    def analytics_next_bundle(name: str) -> Response:
        return serve(name, "/analytics-next/bundles/" + _printable(name))


def _file(root: Path | None, name: str) -> Response:
    if root is None:
        return response(NotServed(NOT_SERVED))
    if not name.endswith((".js", ".js.map")):
        return response(NotFound())
    max_age = IMMUTABLE if HASHED.search(name) else SHORT
    try:
        # send_from_directory refuses any name that would leave root (.., absolute, NUL).
        sent = send_from_directory(root, name, max_age=max_age, conditional=True, etag=True)
    except WerkzeugNotFound:
        return response(NotFound())
    sent.headers["Content-Type"] = (
        "application/json" if name.endswith(".map") else "application/javascript; charset=utf-8"
    )
    sent.headers["Access-Control-Allow-Origin"] = "*"
    sent.cache_control.public = True
    if max_age == IMMUTABLE:
        sent.cache_control.immutable = True
    return sent


def _printable(name: str) -> str:
    return name.encode("ascii", "backslashreplace").decode()[:120]
