"""The suite passes on any date: its date-dependent parts run again with the
server's clock shifted far from today.

The date-dependent tests are the modules marked ``dated`` (``pytestmark``):
those that stamp rows with a fixed date, move a clock, or compare times of
receipt. ``DRENGR_CLOCK_OFFSET`` moves ``drengr.clock`` (every time of receipt, the
key cache, the dedup window) for the test process and the servers and writer
processes it starts; the system clock is never touched. A test that stamps
rows with a fixed date and lets the store read the real clock fails here.

Both shifted runs start together as soon as the suite is collected, one
``pytest`` process each at niceness 10 (tests/conftest.py), so they run beside
the rest of the suite on what it leaves of the machine; the tests here come
last and each waits for its own run. Nothing the runs share can collide. Every server takes a free port of its own, every file is
under the run's own ``tmp_path``, every PostgreSQL schema or database has a
random name; without ``DRENGR_TEST_POSTGRES_DSN`` this process starts the one
server both use (``tests/support/postgres.py``) instead of each starting its
own; nginx and the fault tests' clusters are not ``dated``.

The reruns map with one twin (``DRENGR_TEST_ONE_MAPPER=1``: the ``mapper_twin``
fixture of tests/conftest.py takes the compiled mapper, or the pure one when the
compiled one is not in use): the twins read no clock, and the unshifted run
holds both to the same contract.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAY_SECONDS = 86_400
OFFSETS_DAYS = [400, -400]
SHIFTED = bool(os.environ.get("DRENGR_CLOCK_OFFSET"))  # an inner run: not again
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
        from .support import postgres
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


@pytest.fixture
def shifted_runs(request: pytest.FixtureRequest) -> dict[int, ShiftedRun]:
    """The runs tests/conftest.py started when the suite was collected."""
    from .conftest import SHIFTED_RUNS

    return request.config.stash[SHIFTED_RUNS]


@pytest.mark.slow
@pytest.mark.timeout(1_260)  # a hang guard for the whole inner run, above the project's 300 s per test
@pytest.mark.skipif(SHIFTED, reason="already running with a shifted clock")
@pytest.mark.parametrize("days", OFFSETS_DAYS, ids=lambda days: f"{days:+d}-days")
def test_the_dated_tests_pass_with_the_clock_far_from_today(
    days: int, shifted_runs: dict[int, ShiftedRun]
) -> None:
    run = shifted_runs[days]
    returncode = run.wait()
    output = run.stdout.read_text(encoding="utf-8", errors="replace")
    tail = "\n".join(output.splitlines()[-40:])
    errors = run.stderr.read_text(encoding="utf-8", errors="replace")
    assert returncode == 0, f"with the clock {days:+d} days from today:\n{tail}\n{errors[-2000:]}"
    assert " passed" in tail and " failed" not in tail, tail
