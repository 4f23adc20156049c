"""``--analytics-js DIR``: analytics-next's UMD build served at Segment's CDN paths (docs/sdks.md).

The folder here is a stand-in with the layout of ``dist/umd`` (the real
build runs in Chromium in tests/test_clients_browser_snippet.py).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from drengr.settings import Config, SettingError
from drengr.store import open_store
from drengr.web import create_app

CHUNK = "auto-track.bundle.f131ce01a05e3a33a8c1.js"


@pytest.fixture
def umd(tmp_path: Path) -> Path:
    folder = tmp_path / "umd"
    folder.mkdir()
    (folder / "standalone.js").write_text("/* standalone */ window.loaded = true;\n")
    (folder / "index.js").write_text("/* index */\n")
    (folder / CHUNK).write_text("/* auto-track */\n")
    (folder / (CHUNK + ".map")).write_text("{}\n")
    (folder / "README.txt").write_text("not a script\n")
    (tmp_path / "secret.js").write_text("/* outside the folder */\n")
    return folder


@pytest.fixture
def served(tmp_path: Path, umd: Path):
    store = open_store(str(tmp_path / "a.db"))
    app = create_app(Config(db=str(tmp_path / "a.db"), analytics_js=str(umd)), store=store)
    yield app.test_client()
    app.extensions["drengr"].drops.close()
    store.close()


# path -> (status, the file's first bytes, Cache-Control)
PATHS = [
    ("/analytics.js/v1/drengr_pk_any/analytics.min.js", 200, b"/* standalone */", "public, max-age=300"),
    (f"/analytics-next/bundles/{CHUNK}", 200, b"/* auto-track */", "public, max-age=31536000, immutable"),
    (f"/analytics-next/bundles/{CHUNK}.map", 200, b"{}", "public, max-age=31536000, immutable"),
    ("/analytics-next/bundles/index.js", 200, b"/* index */", "public, max-age=300"),
    ("/analytics-next/bundles/missing.bundle.0123456789abcdef0123.js", 404, b'{"error": "Not found"', None),
    ("/analytics-next/bundles/README.txt", 404, b'{"error": "Not found"', None),  # scripts and maps only
    (
        "/analytics-next/bundles/..%2Fsecret.js",
        405,
        b'{"error": "Method not allowed"',
        None,
    ),  # never leaves DIR
    ("/analytics-next/bundles/%2E%2E/secret.js", 405, b'{"error": "Method not allowed"', None),
]


@pytest.mark.parametrize("path, status, start, cache", PATHS, ids=[p[0].rsplit("/", 1)[-1] for p in PATHS])
def test_paths(served, path, status, start, cache):
    response = served.get(path)
    assert response.status_code == status
    assert response.data.startswith(start)
    assert response.headers.get("Cache-Control") == cache
    if status == 200 and path.endswith(".js"):
        assert response.headers["Content-Type"] == "application/javascript; charset=utf-8"


def test_revalidation_with_the_etag(served):
    first = served.get("/analytics.js/v1/k/analytics.min.js")
    again = served.get(
        "/analytics.js/v1/k/analytics.min.js", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert (again.status_code, again.data) == (304, b"")


def test_the_key_in_the_path_is_not_logged(served, caplog):
    caplog.set_level("INFO", logger="drengr.access")
    assert served.get("/analytics.js/v1/drengr_pk_SeCrEt123/analytics.min.js").status_code == 200
    assert "drengr_pk_SeCrEt123" not in caplog.text
    assert "/analytics.js/v1/{writeKey}/analytics.min.js" in caplog.text


def test_without_the_setting_the_paths_say_how_to_turn_them_on(tmp_path):
    store = open_store(str(tmp_path / "a.db"))
    app = create_app(Config(db=str(tmp_path / "a.db")), store=store)
    try:
        response = app.test_client().get("/analytics.js/v1/k/analytics.min.js")
    finally:
        app.extensions["drengr"].drops.close()
        store.close()
    assert response.status_code == 404
    assert "--analytics-js DIR" in response.get_json()["message"]


def test_the_variable_is_read_and_checked(umd, tmp_path):
    assert Config.from_env({"DRENGR_ANALYTICS_JS": str(umd)}).analytics_js == str(umd)
    assert Config.from_env({}).analytics_js == ""
    with pytest.raises(SettingError, match="DRENGR_ANALYTICS_JS=.* standalone.js"):
        Config.from_env({"DRENGR_ANALYTICS_JS": str(tmp_path)})


def test_serve_refuses_a_folder_without_the_build_and_creates_nothing(tmp_path):
    db = tmp_path / "new.db"
    result = subprocess.run(
        [sys.executable, "-m", "drengr", "serve", "--db", str(db), "--analytics-js", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--analytics-js" in result.stderr and "dist/umd" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()


def test_under_a_prefix_as_behind_nginx(tmp_path, umd):
    """``analytics._cdn = 'https://host/segment-ingest'``: every path the library asks for is under the mount."""
    store = open_store(str(tmp_path / "a.db"))
    app = create_app(
        Config(db=str(tmp_path / "a.db"), analytics_js=str(umd), prefix="/segment-ingest"), store=store
    )
    try:
        client = app.test_client()
        assert client.get("/segment-ingest/analytics.js/v1/k/analytics.min.js").status_code == 200
        assert client.get(f"/segment-ingest/analytics-next/bundles/{CHUNK}").status_code == 200
        assert client.get("/analytics.js/v1/k/analytics.min.js").status_code == 404  # outside the mount
    finally:
        app.extensions["drengr"].drops.close()
        store.close()
