"""The any-date reruns of tests/test_any_date.py: two ``pytest -m dated`` processes with the clock
shifted far from today, started by tests/conftest.py as soon as the suite is collected."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAY_SECONDS = 86_400
OFFSETS_DAYS = [400, -400]
SHIFTED = bool(os.environ.get("DRENGR_CLOCK_OFFSET"))  # an inner run: not again
SHIFTED_RUNS = pytest.StashKey[dict[int, "ShiftedRun"]]()  # the config's: the runs started
INNER_TIMEOUT_S = 1_200  # per inner run, from its start (when the suite is collected): a hang guard
RUN_NICENESS = 10  # the rest of the suite goes first


@dataclass
class ShiftedRun:
    """One ``pytest -m dated`` process with the clock ``days`` from today; its output goes to files."""

    days: int
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    started: float  # time.monotonic()

    def wait(self) -> int:
        """The exit status; killed (by its PID) when it is still running ``INNER_TIMEOUT_S`` after its start."""
        try:
            return self.process.wait(timeout=max(0.0, self.started + INNER_TIMEOUT_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def _shared_postgres_dsn() -> str | None:
    """The PostgreSQL URI both runs get: the given one, or a server this process starts once.

    None when there is none here (the runs skip their PostgreSQL tests); under CI,
    ``server_dsn()`` fails the test instead, as the runs would.
    """
    given = os.environ.get("DRENGR_TEST_POSTGRES_DSN")
    if given:
        return given
    try:
        from . import postgres
    except pytest.skip.Exception:  # no psycopg: the runs skip (or, under CI, fail) as this one would
        return None
    try:
        return postgres.server_dsn()
    except pytest.skip.Exception:
        return None


def start_shifted_runs() -> dict[int, ShiftedRun]:
    """Both runs, started together (by tests/conftest.py once the suite is collected), their output in a
    folder of their own that ``stop_shifted_runs`` removes."""
    folder = Path(tempfile.mkdtemp(prefix="drengr-any-date-"))
    dsn = _shared_postgres_dsn()
    runs: dict[int, ShiftedRun] = {}
    for days in OFFSETS_DAYS:
        env = {**os.environ, "DRENGR_CLOCK_OFFSET": str(days * DAY_SECONDS), "DRENGR_TEST_ONE_MAPPER": "1"}
        if dsn is not None:
            env["DRENGR_TEST_POSTGRES_DSN"] = dsn
        stdout, stderr = folder / f"{days:+d}-days.out", folder / f"{days:+d}-days.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                 "-x", "-m", "dated", "tests"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                preexec_fn=lambda: os.nice(RUN_NICENESS),
            )  # fmt: skip
        runs[days] = ShiftedRun(days, process, stdout, stderr, time.monotonic())
    return runs


def stop_shifted_runs(runs: dict[int, ShiftedRun]) -> None:
    """At the end of the suite: a run still going (its test failed, or never ran) is killed, by its PID."""
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
    if runs:
        shutil.rmtree(next(iter(runs.values())).stdout.parent, ignore_errors=True)
