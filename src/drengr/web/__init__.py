"""The web layer: the Flask app around the Sans-IO core, built by ``create_app(config)``.

``app`` wires the parts; ``ingest`` is the WSGI fast path (environ ⇄ machine ⇄
store); ``health`` and ``read_api`` are the blueprints of the other routes,
``analytics_js`` serves the library's files, ``access_log`` writes every
request's line, ``errors`` is the one vocabulary of their errors, ``state`` the
app's typed state, ``prefix`` the mount point, ``retention`` the pruning
thread. The page of the debugger is ``drengr.debugger``.

``create_app`` is loaded on first use: ``drengr.cli`` opens its stores through
``state`` without importing Flask. ``Config`` is ``drengr.settings``'.
"""

from typing import TYPE_CHECKING, Any

from ..settings import Config

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["Config", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
