"""``create_app(config)``: the Flask app, wired from its parts, and nothing more.

The parts: ``AppState`` (``state``), what every route reads; ``Ingest``
(``ingest``), the WSGI fast path in front of Flask, and its GET routes; the
blueprints of the service routes (``health``: /health, the analytics.js
settings, /metrics) and of the read API (``read_api``: /v1/events, /v1/stats,
/v1/drops, the debugger); analytics.js' files (``analytics_js``); the mount
point (``prefix``); ``--retention``'s thread (``retention``). The requests
metric counts every Flask route here, by endpoint; ``Ingest`` counts its own.
"""

from collections.abc import Callable

from flask import Flask, Response, request

from .. import clock, metrics
from ..drops import DropLog
from ..settings import Config
from ..store import Store
from . import analytics_js, health, read_api
from .ingest import Ingest
from .prefix import PrefixMiddleware
from .retention import Retention
from .state import EXTENSION, AppState, open_configured_store


def create_app(
    config: Config | None = None, store: Store | None = None, clock_ms: Callable[[], int] = clock.now_ms
) -> Flask:
    """The WSGI app. ``store`` defaults to the one ``config`` names; ``clock_ms`` is the time of receipt."""
    config = config or Config.from_env()
    store = store if store is not None else open_configured_store(config)
    app = Flask("drengr")
    app.url_map.merge_slashes = False  # `//v1/t` must not redirect: a 3xx counts as delivered
    app.url_map.strict_slashes = False
    state = AppState(
        config=config,
        store=store,
        drops=DropLog(clock_ms=clock_ms, sink=store),
        clock_ms=clock_ms,
        health=health.HealthCheck(store),
    )
    app.extensions[EXTENSION] = state
    if config.retention:
        state.retention = Retention(store, config.retention, clock_ms)

    ingest = Ingest(state, app.url_map, app.wsgi_app)
    ingest.add_routes(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(read_api.blueprint)
    analytics_js.register(app, config.analytics_js)
    app.after_request(_count_request)
    app.wsgi_app = ingest  # type: ignore[method-assign]
    if config.prefix.strip("/"):
        app.wsgi_app = PrefixMiddleware(app.wsgi_app, config.prefix)  # type: ignore[method-assign]
    return app


def _count_request(response: Response) -> Response:
    """A Flask route's request (reads, health, settings, pixel, …), labelled by its endpoint.

    The service blueprint's routes keep the names they had as the app's own
    (``health``, not ``drengr_service.health``); the read API's carry theirs.
    """
    endpoint = request.endpoint or "not_found"
    if request.blueprint == health.blueprint.name:
        endpoint = endpoint.partition(".")[2]
    metrics.count("requests", endpoint, str(response.status_code))
    return response
