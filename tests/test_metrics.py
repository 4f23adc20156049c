"""GET /metrics: Prometheus text through prometheus_client, summed over every process that counts.

A real `drengr serve` (its writer in a process of its own) and gunicorn with
two workers (PROMETHEUS_MULTIPROC_DIR, as docs/deploying.md says) take a
mixed load; the scrape must add up to exactly what was sent, whichever
process answered or committed. Open from loopback; through a proxy or from
elsewhere only with a secret key.
"""

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drengr.store import SQLiteStore

from .support.realserver import basic, child_env, create_db, free_port, launch, no_stray_servers  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
try:  # the writer's dedup window is the compiled index (8 bytes a slot), as the server's writer will have it
    from drengr import _index  # noqa: F401

    COMPILED_INDEX = not os.environ.get("DRENGR_NO_EXTENSIONS")
except ImportError:  # pragma: no cover - the extension did not build: the pure twin
    COMPILED_INDEX = False
HANG_GUARD_SECONDS = 30


def scrape(port: int, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_SECONDS)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the scrape by (name, sorted labels); the parser fails on anything not Prometheus text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def post(port: int, path: str, body: Any, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_SECONDS)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **headers},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def mixed_load(port: int, key: str) -> dict[str, int]:
    """What was sent, counted as the scrape should count it."""
    batch = {"batch": [
        {"type": "track", "event": "Viewed", "userId": "u", "messageId": "m1", "properties": {"email": "x", "plan": "a"}},
        {"type": "track", "event": "Viewed", "userId": "u", "messageId": "m1"},  # a duplicate within the batch
        {"type": "track", "event": "Nobody"},  # missing_id
    ]}  # fmt: skip
    statuses = [post(port, "/v1/batch", batch, basic(key)) for _ in range(3)]  # resent twice: duplicates
    statuses += [
        post(port, "/v1/track", {"event": "x", "userId": "u", "messageId": f"t{i}"}, basic(key))
        for i in range(5)
    ]
    statuses += [post(port, "/v1/track", {"event": "x", "userId": "u"}, {}) for _ in range(2)]  # no key
    assert statuses == [200] * 8 + [401] * 2
    return {"batch_200": 3, "track_200": 5, "track_401": 2, "stored": 1 + 5, "duplicate": 2 + 3, "missing_id": 3,
            "pii": 3}  # fmt: skip


def check_counts(found: dict[Any, float], sent: dict[str, int]) -> None:
    assert value(found, "drengr_http_requests_total", route="batch", status="200") == sent["batch_200"]
    assert value(found, "drengr_http_requests_total", route="track", status="200") == sent["track_200"]
    assert value(found, "drengr_http_requests_total", route="track", status="401") == sent["track_401"]
    assert value(found, "drengr_events_stored_total") == sent["stored"]
    assert value(found, "drengr_events_dropped_total", reason="duplicate") == sent["duplicate"]
    assert value(found, "drengr_events_dropped_total", reason="missing_id") == sent["missing_id"]
    assert value(found, "drengr_keys_stripped_total", reason="pii_key_removed") == sent["pii"]
    assert value(found, "drengr_auth_failures_total", failure="missing") == sent["track_401"]
    assert value(found, "drengr_http_request_body_bytes_total") > 0
    assert (
        value(found, "drengr_key_cache_lookups_total", result="hit")
        + value(found, "drengr_key_cache_lookups_total", result="miss")
        >= 8
    )
    # Commits happened in the writer (a process of its own under serve): their histograms are here.
    assert value(found, "drengr_store_commit_seconds_count") >= 1
    assert value(found, "drengr_store_commit_group_rows_sum") >= sent["stored"]


def test_serve_counts_across_its_writer_process_and_guards_the_scrape(tmp_path):
    db = tmp_path / "metrics.db"
    key = create_db(db)
    store = SQLiteStore(str(db))
    secret = store.create_key("acme", "secret")
    store.close()
    server = launch(db, key)  # --writer process, the default
    try:
        sent = mixed_load(server.port, key)
        status, content_type, text = scrape(server.port)
        proxied = scrape(server.port, {"X-Forwarded-For": "203.0.113.9"})
        proxied_with_secret = scrape(
            server.port, {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {secret}"}
        )
        proxied_with_publishable = scrape(server.port, {"X-Forwarded-For": "203.0.113.9", **basic(key)})
    finally:
        assert server.stop() == 0
    assert status == 200 and content_type.startswith("text/plain; version=")
    found = samples(text)
    check_counts(found, sent)
    assert value(found, "drengr_dedup_window_ids") == sent["stored"]
    if COMPILED_INDEX:  # two generations' tables at their smallest (docs/operating.md, the dedup window)
        assert value(found, "drengr_dedup_window_bytes") == 2 * 8 * 16_384
    else:  # the pure twin's estimate
        assert value(found, "drengr_dedup_window_bytes") > 0
    assert proxied[0] == 401 and "secret key" in json.loads(proxied[2])["message"]
    assert proxied_with_secret[0] == 200 and "drengr_events_stored_total" in proxied_with_secret[2]
    assert proxied_with_publishable[0] == 401
    assert key not in server.log_text() and secret not in server.log_text()


def test_names_follow_prometheus_conventions(tmp_path):
    db = tmp_path / "names.db"
    server = launch(db, create_db(db))
    try:
        _, _, text = scrape(server.port)
    finally:
        assert server.stop() == 0
    families = {
        family.name: family
        for family in text_string_to_metric_families(text)
        if family.name.startswith("drengr_")
    }
    assert set(families) >= {
        "drengr_http_requests", "drengr_http_request_body_bytes", "drengr_events_stored", "drengr_events_dropped",
        "drengr_keys_stripped", "drengr_auth_failures", "drengr_store_commit_seconds",
        "drengr_store_commit_group_rows", "drengr_dedup_window_ids", "drengr_dedup_window_bytes", "drengr_store_errors",
        "drengr_key_cache_lookups",
    }  # fmt: skip
    for name, family in families.items():
        assert family.documentation, name
        if family.type == "counter":
            assert f"# TYPE {name}_total counter" in text or f"# TYPE {name} counter" in text
            assert all(sample.name.endswith("_total") for sample in family.samples), name
        assert not name.endswith(("_ms", "_milliseconds", "_kb", "_mb")), name  # base units


def _stored_now(db: Path, count: int) -> None:
    """``count`` rows received now (in the dedup window's current generation), written before any server starts."""
    from drengr import clock
    from drengr.core.timestamps import format_ms

    now_ms = clock.now_ms()
    received = format_ms(now_ms)
    rows = [
        ("acme", f"early-{i}", "e", "track", "u", "u", received, received, "{}", "{}", None)
        for i in range(count)
    ]
    store = SQLiteStore(str(db))
    try:
        assert store.write("acme", rows, now_ms).stored == count
    finally:
        store.close()


def _window_ids_without_a_request(
    port: int, process: subprocess.Popen[bytes], log: Path, want: float
) -> float:
    """Scrape /metrics (it never touches the store: no probe, no write) until the dedup window holds
    ``want`` ids, within the hang guard; what it held last."""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    held = -1.0
    while held != want and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            status, _, text = scrape(port)
            held = value(samples(text), "drengr_dedup_window_ids") if status == 200 else held
        except OSError:  # not listening yet
            pass
        time.sleep(0.1)
    return held


@pytest.mark.parametrize("server", ["serve", "gunicorn", "gunicorn --preload"])
def test_a_starting_server_builds_its_dedup_window_before_any_request(tmp_path, server):
    """serve (its writer in a process) and each gunicorn worker (a writer thread; with
    deploy/gunicorn.conf.py, and --preload too: the app made in the master, the writer in each worker)
    have their writer build the dedup window as they start, from the rows already stored: not in the
    first request, which would wait for it (and under gunicorn, every request behind it in that
    worker). Then they write."""
    db = tmp_path / "warm.db"
    key = create_db(db)
    _stored_now(db, 300)
    port = free_port()
    log = tmp_path / f"{server}.log"
    if server == "serve":
        command = [sys.executable, "-m", "drengr", "serve", "--db", str(db), "--port", str(port)]
        env = child_env({})
    else:
        folder = tmp_path / "prometheus"
        folder.mkdir()
        command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "2",
                   "-b", f"127.0.0.1:{port}", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "wsgi:application",
                   *server.split()[1:]]  # fmt: skip
        env = child_env({"DRENGR_DB": str(db), "PROMETHEUS_MULTIPROC_DIR": str(folder)})
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        held = _window_ids_without_a_request(port, process, log, 300)
        bodies = [{"event": "after", "userId": "u", "messageId": f"after-{i}"} for i in range(8)]
        assert [post(port, "/v1/track", body, basic(key)) for body in bodies] == [200] * 8
    finally:
        process.terminate()
        process.wait(timeout=HANG_GUARD_SECONDS)
    assert held == 300, log.read_text()
    assert key not in log.read_text()


def test_gunicorn_workers_add_up_in_one_scrape(tmp_path):
    """Two gunicorn workers share PROMETHEUS_MULTIPROC_DIR: every scrape (whichever worker answers) sums both."""
    db = tmp_path / "gunicorn.db"
    key = create_db(db)
    folder = tmp_path / "prometheus"
    folder.mkdir()
    port = free_port()
    env = child_env(
        {"DRENGR_DB": str(db), "PROMETHEUS_MULTIPROC_DIR": str(folder), "DRENGR_LOG_LEVEL": "warning"}
    )
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "2",
               "-b", f"127.0.0.1:{port}", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "wsgi:application"]  # fmt: skip
    with open(tmp_path / "gunicorn.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS  # a hang guard for the start
        while True:
            try:
                if scrape(port)[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "gunicorn.log"
            ).read_text()
            time.sleep(0.1)
        sent = mixed_load(port, key)  # each request on a new connection: both workers take some
        for round_ in range(20):  # more, until both workers have counted (the kernel picks who accepts)
            if (
                len({name.rsplit("_", 1)[-1] for name in os.listdir(folder) if name.startswith("counter_")})
                >= 2
            ):
                break
            bodies = [{"event": "y", "userId": "u", "messageId": f"x{round_}-{i}"} for i in range(20)]
            assert [post(port, "/v1/track", body, basic(key)) for body in bodies] == [200] * 20
            sent = {**sent, "track_200": sent["track_200"] + 20, "stored": sent["stored"] + 20}
        found = [samples(scrape(port)[2]) for _ in range(6)]  # whichever worker answers
        worker_files = {name.rsplit("_", 1)[-1] for name in os.listdir(folder) if name.startswith("counter_")}
    finally:
        process.terminate()
        process.wait(timeout=HANG_GUARD_SECONDS)
    assert len(worker_files) >= 2, os.listdir(folder)  # both workers counted something
    for scraped in found:
        check_counts(scraped, sent)
