"""The suite passes on any date: its date-dependent parts run again with the
server's clock shifted far from today.

The date-dependent tests are the modules marked ``dated`` (``pytestmark``):
those that stamp rows with a fixed date, move a clock, or compare times of
receipt. ``DRENGR_CLOCK_OFFSET`` moves ``drengr.clock`` (every time of receipt, the
key cache, the dedup window) for the test process and the servers and writer
processes it starts; the system clock is never touched. A test that stamps
rows with a fixed date and lets the store read the real clock fails here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAY_SECONDS = 86_400


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hang guard for the whole inner run, above the project's 300 s per test
@pytest.mark.skipif(os.environ.get("DRENGR_CLOCK_OFFSET"), reason="already running with a shifted clock")
@pytest.mark.parametrize("days", [400, -400], ids=lambda days: f"{days:+d}-days")
def test_the_dated_tests_pass_with_the_clock_far_from_today(days: int) -> None:
    env = {**os.environ, "DRENGR_CLOCK_OFFSET": str(days * DAY_SECONDS)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
         "-x", "-m", "dated", "tests"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    tail = "\n".join(result.stdout.splitlines()[-40:])
    assert result.returncode == 0, (
        f"with the clock {days:+d} days from today:\n{tail}\n{result.stderr[-2000:]}"
    )
    assert " passed" in tail and " failed" not in tail, tail
