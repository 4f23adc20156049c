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

import pytest

from .support.shifted_runs import OFFSETS_DAYS, SHIFTED, SHIFTED_RUNS, ShiftedRun


@pytest.fixture
def shifted_runs(request: pytest.FixtureRequest) -> dict[int, ShiftedRun]:
    """The runs tests/conftest.py started when the suite was collected."""
    return request.config.stash[SHIFTED_RUNS]


@pytest.mark.slow
@pytest.mark.timeout(1_260)  # a hang guard for the whole inner run, above the project's 300 s per test
@pytest.mark.skipif(
    SHIFTED,
    reason="this is the inner run it starts, already shifted: it runs once, in the outer run (every CI run)",
)
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
