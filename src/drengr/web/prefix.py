"""``--prefix PATH``: the app under a mount point, as nginx's ``location /p/`` would serve it.

A request under the prefix goes on with the prefix moved from ``PATH_INFO`` to
``SCRIPT_NAME`` (so every route, and ``request.script_root``, sees the mount
point); any other gets the ingest routes' JSON 404, sent before Flask.
"""

from collections.abc import Callable, Iterable
from typing import Any

from ..core.errors import NotFound
from .errors import JSON
from .ingest import WSGIApp


class PrefixMiddleware:
    """Serve ``app`` under ``prefix``."""

    def __init__(self, app: WSGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.prefix or path.startswith(self.prefix + "/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
            environ["PATH_INFO"] = path[len(self.prefix) :]
            return self.app(environ, start_response)
        body = NotFound().body()
        start_response("404 Not Found", [*JSON, ("Content-Length", str(len(body)))])
        return [body]
