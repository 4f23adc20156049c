"""What docs/deploying.md tells an operator to run works as written.

- ``deploy/nginx.conf`` passes ``nginx -t`` as it is (the PostgreSQL fault
  tests run the same file in front of two nodes);
- ``pip install '.[postgres,deploy]'`` brings gunicorn, and the installed
  entry point ``drengr.wsgi:application`` serves from a directory that is not a
  clone (the top-level ``wsgi.py`` is tests/test_server.py's).
"""

import importlib.util
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from .realserver import Server, create_db, free_port

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
HANG_GUARD_SECONDS = 60  # a generous hang guard, not a speed limit


def test_deploy_nginx_conf_passes_nginx_t_as_it_is() -> None:
    from .test_postgres_nginx import nginx_binary

    nginx = nginx_binary()
    if not os.access("/var/log/nginx", os.W_OK) and not IN_CI:
        pytest.skip("nginx -t opens the file's logs in /var/log/nginx: run as root (CI does)")
    result = subprocess.run(
        [nginx, "-t", "-c", str(ROOT / "deploy" / "nginx.conf")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_the_deploy_extra_brings_gunicorn_and_postgres_the_driver() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("gunicorn") for requirement in extras["deploy"])
    assert any(requirement.startswith("psycopg") for requirement in extras["postgres"])
    assert "pip install '.[postgres,deploy]'" in (ROOT / "docs" / "deploying.md").read_text()


@pytest.mark.skipif(
    importlib.util.find_spec("gunicorn") is None and not IN_CI,
    reason="gunicorn is in the deploy and test extras: pip install '.[deploy]'",
)
def test_gunicorn_serves_the_installed_entry_point_outside_a_clone(tmp_path: Path) -> None:
    db = tmp_path / "installed.db"
    key = create_db(db)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    # Only the package on the path, as an install has it: not the clone's top, where wsgi.py is.
    env = {**os.environ, "DRENGR_DB": str(db), "PYTHONPATH": str(ROOT / "src")}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "1",
        "-b",
        f"127.0.0.1:{port}",
        "drengr.wsgi:application",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
        )
    server = Server(port, key, db, log, process)
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not server.healthy():
            assert server.alive() and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        body = {"type": "track", "event": "Installed", "userId": "u"}
        assert server.post("/v1/t", body).body == b'{"success": true}'
    finally:
        assert server.stop() == 0, log.read_text()[-2000:]
    assert not (tmp_path / "wsgi.py").exists()
