"""The live debugger page: its routes here, the page itself as files beside this module.

``index.html`` (a Jinja template, autoescaped), ``app.js`` and ``style.css`` are
package data: no build step, nothing from a CDN. ``add_routes`` puts them on the
read API's blueprint (``drengr.web.read_api``) at ``/debugger``, ``/debugger/app.js``
and ``/debugger/style.css``, so they sit under the mount point like every read
route and keep their endpoint names (``drengr_read.debugger``: the ``route``
label of ``drengr_http_requests_total``); that blueprint's ``template_folder`` is
this folder, and the app has no templates of its own for ``index.html`` to meet.
The page's URLs start at ``request.script_root``, so ``/p/debugger`` and
``/p/debugger/`` both work behind a prefix.

The page asks for a secret key, keeps it in memory only (never in storage or
the URL) and sends it as ``Authorization: Bearer`` to the read API:
``/v1/events`` every second (cursor ``order=asc``, so each poll returns only
what landed since), ``/v1/drops`` every second and
``/v1/stats?interval=minute`` every five for the chart (inline SVG; /v1/stats
reads the rollups, docs/performance.md "Reading at 10M rows"). A row opens into
its stored fields, dims, measures and what the drop samples say was left out of
it; the filters go to ``/v1/events`` as its own parameters; a pause keeps
polling and counts what arrived. Everything a client sent is put in the page
with ``textContent``, never as HTML: event names and dims come from publishable
keys, which are public.

Imports Flask and nothing of drengr (``drengr.web.read_api`` imports this module).
"""

from functools import cache
from pathlib import Path

from flask import Blueprint, Response, render_template, request

FILES = Path(__file__).parent  # the blueprint's template_folder too: index.html is rendered from here

# Its own script and stylesheet only, talks only to this origin, never framed. (The chart
# legend's swatches set a style attribute from the script: hence 'unsafe-inline' for styles.)
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", PAGE_CSP),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    # Like every read response: never cached, never sniffed.
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
]
# The script and stylesheet: revalidated on every load, so a new version shows without a hard reload.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def add_routes(blueprint: Blueprint) -> None:
    """The page and its two files on ``blueprint``, whose ``template_folder`` is ``FILES``."""
    blueprint.add_url_rule("/debugger", "debugger", page, methods=["GET"])
    blueprint.add_url_rule("/debugger/app.js", "debugger_js", lambda: asset("app.js"), methods=["GET"])
    blueprint.add_url_rule("/debugger/style.css", "debugger_css", lambda: asset("style.css"), methods=["GET"])


def page() -> Response:
    # Absolute URLs from the mount point; the template escapes it (Flask autoescapes .html).
    body = render_template("index.html", root=request.script_root)
    return Response(body, status=200, headers=PAGE_HEADERS)


def asset(name: str) -> Response:
    headers = [
        ("Content-Type", ASSETS[name]),
        ("Cache-Control", "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    return Response(_read(name), status=200, headers=headers)


@cache
def _read(name: str) -> bytes:
    return (FILES / name).read_bytes()
