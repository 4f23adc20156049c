"""The systemd units in deploy/ pass ``systemd-analyze verify``, and the SQLite one can write its database.

``deploy/drengr.service`` (SQLite: ``StateDirectory=drengr`` makes
/var/lib/drengr writable under ``ProtectSystem=strict``) is the one
docs/deploying.md shows; ``deploy/drengr-postgres.service`` is a node of the
PostgreSQL store, with nothing to write. ``systemd-analyze verify`` checks
every directive and that ``ExecStart`` is executable, so the test points
ExecStart at a real file; it does not need systemd running.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "deploy").glob("*.service"))
IN_CI = bool(os.environ.get("CI"))
INSTALLED_AT = "/opt/drengr/venv/bin/drengr"
HANG_GUARD_SECONDS = 60


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if IN_CI:
            pytest.fail("systemd-analyze is missing (CI is set: .ci/run installs Debian's systemd)")
        pytest.skip("systemd-analyze is missing: apt-get install systemd to check the units in deploy/")
    return found


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name.strip(), []).append(value.strip())
    return found


def test_both_units_are_there():
    assert [unit.name for unit in UNITS] == ["drengr-postgres.service", "drengr.service"]


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_systemd_analyze_verify_accepts_the_unit(unit, tmp_path):
    analyze = systemd_analyze()
    text = unit.read_text()
    assert f"ExecStart={INSTALLED_AT} serve" in text
    # The install path does not exist here: the same unit with ExecStart on this Python.
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_AT, sys.executable))
    result = subprocess.run(
        [analyze, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
        cwd=tmp_path,
    )
    # An unknown or misspelt directive is only a warning ("Unknown key …, ignoring"): none may be printed.
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr


def test_the_sqlite_unit_writes_its_database_in_its_state_directory():
    found = directives(ROOT / "deploy" / "drengr.service")
    assert found["StateDirectory"] == ["drengr"] and found["ProtectSystem"] == ["strict"]
    [database] = [value for value in found["Environment"] if value.startswith("DRENGR_DB=")]
    assert database == "DRENGR_DB=/var/lib/drengr/drengr.db"  # inside StateDirectory's /var/lib/drengr


def test_the_postgres_unit_takes_the_store_and_no_state():
    found = directives(ROOT / "deploy" / "drengr-postgres.service")
    assert any(value.startswith("DRENGR_STORE=postgresql://") for value in found["Environment"])
    assert "StateDirectory" not in found and ":" not in found["Environment"][0].split("//")[1].split("@")[0]


def test_deploying_md_shows_the_sqlite_unit_verbatim():
    page = (ROOT / "docs" / "deploying.md").read_text()
    assert "```ini\n" + (ROOT / "deploy" / "drengr.service").read_text() + "```" in page
