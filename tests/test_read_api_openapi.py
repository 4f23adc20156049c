"""The read API answers as src/drengr/openapi.yaml says: schemathesis generates requests from the file.

The schema is loaded from the app itself (``GET /v1/openapi.yaml``), so the
served file is the one checked. The app has rows and drops in it, so the
answers have something to be wrong about. Every generated request is sent
with a secret key; schemathesis also checks that leaving the key out is refused.

The cases are driven here, one table row per documented operation (not
through schemathesis' pytest plugin, whose collection breaks on newer pytest):
each row counts the requests it sent and the answers that were checked
against the schema, and a last test proves the checks bite by serving an
answer the schema does not allow.
"""

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is in the test extra: pip install '.[test]'"
)
import yaml  # noqa: E402 (schemathesis requires PyYAML)
from hypothesis import HealthCheck, given, settings  # noqa: E402

import drengr  # noqa: E402
from drengr.store import SQLiteStore  # noqa: E402
from drengr.web import Config, create_app  # noqa: E402

from .support.app import post  # noqa: E402
from .support.read_wiring import wire  # noqa: E402

EXAMPLES = 40  # generated requests per operation
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
DOCUMENTED = yaml.safe_load((Path(drengr.__file__).parent / "openapi.yaml").read_text())
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in DOCUMENTED["paths"].items()
    for method in item
    if method in HTTP_METHODS
)
BATCH = [
    {"type": "track", "event": "Order Completed", "userId": "u1", "properties": {"revenue": "9.99", "plan": "pro"}},
    {"type": "page", "name": "Pricing", "anonymousId": "a1", "properties": {"flag": True, "n": 3}},
    {"type": "identify", "userId": 42, "traits": {"age": 40}},
    {"type": "track", "event": "No Ids"},
    {"type": "zap", "userId": "u1"},
]  # fmt: skip


def excluded_checks(case: Any) -> list[Any]:
    # Other methods on these paths reach the ingest route (any POST path falls back to the body;
    # other methods get ingest's 405), which is not this file's to describe.
    excluded = [schemathesis.checks.unsupported_method]
    if (case.query or {}).get("interval"):
        # "more than 10,080 buckets" depends on since/until together, which a schema cannot say.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    return excluded


def loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrap: Callable[[Any], Any] | None = None) -> Any:
    """The app with rows and drops, its schema (as served) and its secret key."""
    store = SQLiteStore(str(tmp_path / "drengr.db"))
    app = create_app(Config(db=str(tmp_path / "drengr.db")), store=store)
    wire(app, store, monkeypatch)
    publishable = store.create_key("acme", "publishable")
    secret = store.create_key("acme", "secret")
    assert post(app.test_client(), "/v1/batch", {"batch": BATCH}, publishable).status_code == 200
    if wrap is not None:
        app.wsgi_app = wrap(app.wsgi_app)
    return app, store, schemathesis.openapi.from_wsgi("/v1/openapi.yaml", app), secret


@pytest.fixture
def read_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    app, store, schema, secret = loaded(tmp_path, monkeypatch)
    yield schema, secret
    app.extensions["drengr"].drops.close()
    store.close()


def test_the_served_schema_is_the_documented_one(read_app):
    """The table below is read from the package's file: it must be what the app serves, and not empty."""
    schema, _ = read_app
    served = sorted(
        (operation.ok().method.upper(), operation.ok().path) for operation in schema.get_all_operations()
    )
    assert served == OPERATIONS
    assert ("GET", "/v1/events") in OPERATIONS


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_read_api_conforms_to_openapi(read_app, method, path):
    schema, secret = read_app
    operation = schema[path][method]
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def conforms(case: Any) -> None:
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {secret}"}, excluded_checks=excluded_checks(case)
        )
        statuses[response.status_code] += 1

    conforms()
    # Hypothesis ran the operation (a strategy that generates nothing would pass silently),
    # and answers of both kinds were checked against their schemas.
    assert sum(statuses.values()) >= EXAMPLES // 2, statuses
    assert statuses[200] > 0, statuses
    assert set(statuses) <= {200, 400}, statuses


def _events_without_next_cursor(wsgi_app: Any) -> Callable[..., Iterable[bytes]]:
    """A read API whose /v1/events page lacks ``next_cursor``, which the schema requires."""

    def broken(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/v1/events":
            return wsgi_app(environ, start_response)
        answered: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> None:
            answered["status"], answered["headers"] = status, headers

        body = b"".join(wsgi_app(environ, keep))
        if answered["status"].startswith("200"):
            page = json.loads(body)
            del page["next_cursor"]
            body = json.dumps(page).encode()
        headers = [(n, v) for n, v in answered["headers"] if n.lower() != "content-length"]
        start_response(answered["status"], [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return broken


def test_an_answer_the_schema_forbids_is_caught(tmp_path, monkeypatch):
    """The checks above bite: the same request fails validation once the answer breaks the schema."""
    app, store, schema, secret = loaded(tmp_path, monkeypatch, wrap=_events_without_next_cursor)
    try:
        case = schema["/v1/events"]["GET"].Case(query={"limit": 1})
        with pytest.raises(schemathesis.checks.FailureGroup) as caught:
            case.call_and_validate(headers={"Authorization": f"Bearer {secret}"})
        assert '"next_cursor" is a required property' in str(caught.value)
        assert case.call(headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    finally:
        app.extensions["drengr"].drops.close()
        store.close()
