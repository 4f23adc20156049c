"""Shared fixtures: a real SQLite file, the real app (helpers to post and read rows: tests/support/app.py)."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import drengr.mapping
from drengr import clock
from drengr.store import open_store
from drengr.web import Config, create_app

from .support.app import TENANT
from .support.mappers import MAPPER_TWINS
from .support.shifted_runs import SHIFTED_RUNS, start_shifted_runs, stop_shifted_runs


# tests/test_any_date.py: its two reruns of the dated tests start as soon as the suite is collected
# and run beside it; its tests, which wait for them, run last.
@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they do
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reruns = [item for item in items if item.path.name == "test_any_date.py"]
    if not reruns or os.environ.get("DRENGR_CLOCK_OFFSET") or config.option.collectonly:
        return
    items[:] = [item for item in items if item.path.name != "test_any_date.py"] + reruns
    config.stash[SHIFTED_RUNS] = start_shifted_runs()


def pytest_unconfigure(config: pytest.Config) -> None:
    if SHIFTED_RUNS in config.stash:
        stop_shifted_runs(config.stash[SHIFTED_RUNS])


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The store engine: SQLite unless a module parametrizes it (``tests.support.app.ENGINES``, indirect)."""
    return getattr(request, "param", "sqlite")


# The mapper's two twins (drengr.mapping): a contract suite runs on both with
#     pytestmark = pytest.mark.usefixtures("mapper_twin")
# and a module that starts `drengr serve` passes mapper_env(twin) to it (tests/support/mappers.py).
# DRENGR_TEST_ONE_MAPPER=1 runs it on one twin, the one in use (tests/test_any_date.py's reruns:
# the clock is what they move, and the twins read none).
ONE_MAPPER = bool(os.environ.get("DRENGR_TEST_ONE_MAPPER"))


@pytest.fixture(params=["compiled" if drengr.mapping.COMPILED else "pure"] if ONE_MAPPER else MAPPER_TWINS)
def mapper_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which mapper the apps built in this test use: the compiled one, or the pure twin for every body.

    Set before the app fixtures run (a ``usefixtures`` mark comes first): a
    ``BodyMapper`` takes the compiled module as it is when it is built.
    """
    if request.param == "pure":
        monkeypatch.setattr(drengr.mapping, "_compiled", None)
    elif not drengr.mapping.COMPILED:
        pytest.skip(
            "the compiled mapper is not in use (DRENGR_NO_EXTENSIONS=1, or it did not load): runs wherever it is, as in CI"
        )
    return str(request.param)


@pytest.fixture
def db_path(tmp_path: Path, engine: str) -> Iterator[Any]:
    """Where the rows are: a SQLite file, or a PostgreSQL URI with a fresh schema of its own."""
    if engine == "sqlite":
        yield tmp_path / "drengr.db"
        return
    from .support.postgres import fresh_schema

    with fresh_schema("c_") as dsn:
        yield dsn


@pytest.fixture
def receipt_ms() -> Callable[[], int]:
    """The clock of receipt (ms) that the app stamps rows with and the store runs on.

    A module that fixes or moves the time overrides this fixture, so that the
    store (which forgets old event ids by its clock) sees the same time as the rows.
    """
    return clock.now_ms


@pytest.fixture
def store(db_path: Any, receipt_ms: Callable[[], int]) -> Iterator[Any]:
    store = open_store(str(db_path), clock=lambda: receipt_ms() / 1000)
    yield store
    store.close()


@pytest.fixture
def key(store: Any) -> str:
    return store.create_key(TENANT, "publishable")


@pytest.fixture
def app(db_path: Any, store: Any, receipt_ms: Callable[[], int]) -> Iterator[Any]:
    app = create_app(Config(db=str(db_path)), store=store, clock_ms=receipt_ms)
    yield app
    app.extensions["drengr"].drops.close()  # its last drop counts, before the store closes


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()
