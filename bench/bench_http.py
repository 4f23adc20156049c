"""End to end over HTTP with wrk: events/s and p50/p99 of our server next to the server floors, in one run.

Run: python -m pytest bench/bench_http.py --benchmark-enable -s   (prints the table; see bench/README.md)
Servers are pinned to core 0 and wrk to core 1 (taskset), except gunicorn's two workers; with
``--writer process`` (the "drengr-wproc" rows) our SQLite writer process runs on core 1 beside wrk.
Under --benchmark-disable (CI) it runs one short, small load against our server and checks rows = acks.
"""

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
LUA = Path(__file__).with_name("wrk_post.lua")
SECONDS = int(os.environ.get("DRENGR_BENCH_SECONDS", "5"))
RESULTS = Path(os.environ.get("DRENGR_BENCH_RESULTS", str(ROOT / ".benchmarks" / "http.json")))

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is installed by .ci/run (apt-get install wrk)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_up(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not come up")


def pinned(core: int) -> list[str]:
    return (
        ["taskset", "-c", str(core)]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else []
    )  # type: ignore[operator]


@contextmanager
def server(kind: str, tmp: Path) -> Iterator[tuple[int, str, Path, subprocess.Popen[bytes]]]:
    """Start one kind of server; yield (port, write key, db path, process)."""
    port = free_port()
    db = tmp / f"{kind}-{port}.db"
    key = ""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if kind in ("drengr", "drengr-wproc", "gunicorn"):
        created = subprocess.run(
            [sys.executable, "-m", "drengr", "keys", "create", "--tenant", "bench", "--db", str(db)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = created.stdout.strip()
    if kind in ("drengr", "drengr-wproc"):
        args = [*pinned(0), sys.executable, "-m", "drengr", "serve", "--db", str(db), "--port", str(port),
                "--threads", os.environ.get("DRENGR_BENCH_THREADS", "8"), "--log-level", "warning"]  # fmt: skip
        if kind == "drengr-wproc":
            args += ["--writer", "process"]
            if pinned(1):  # the writer process runs on the other core (beside wrk), not on core 0
                env["DRENGR_WRITER_CPUS"] = "1"
    elif kind == "gunicorn":
        env["DRENGR_DB"] = str(db)
        args = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8",
                "-b", f"127.0.0.1:{port}", "--log-level", "warning", "wsgi:application"]  # fmt: skip
    else:
        app = {"bare-wsgi": "bench.bare_apps:bare", "bare-flask": "bench.bare_apps:flask_app"}[kind]
        args = [*pinned(0), sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--threads=8",
                "--recv-bytes=65536", app]  # fmt: skip
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(port, process)
        yield port, key, db, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wrk(port: int, key: str, events: int, connections: int, seconds: int) -> dict[str, Any]:
    threads = min(connections, 2)
    env = {**os.environ, "EVENTS": str(events), "WRITE_KEY": key}
    args = [*pinned(1), "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
            "-s", str(LUA), f"http://127.0.0.1:{port}"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=seconds + 60).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    latency = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {
        "requests": requests,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
        "req_per_s": rate,
        "events_per_s": rate * events,
        "p50_ms": latency.get("50"),
        "p99_ms": latency.get("99"),
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def stored(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM semantic_events").fetchone()[0]
    finally:
        conn.close()


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of the server and its children (the writer process), summed: an upper bound."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    total = 0
    for each in pids:
        status = Path(f"/proc/{each}/status").read_text()
        total += int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return total / 1024


def bench_http_smoke_rows_equal_acks(benchmark: Any, tmp_path: Path) -> None:
    """Correctness of the load path: every acknowledged event is stored once (runs in CI too)."""
    seconds = 1 if benchmark.disabled else SECONDS
    with server("drengr", tmp_path) as (port, key, db, _):
        batch, single = benchmark.pedantic(
            lambda: (wrk(port, key, 100, 4, seconds), wrk(port, key, 1, 4, seconds)), rounds=1, iterations=1
        )
    acked = 100 * (batch["requests"] - batch["non_2xx"]) + (single["requests"] - single["non_2xx"])
    assert batch["non_2xx"] == single["non_2xx"] == 0
    # wrk stops counting at its deadline: requests still in flight then (at most one per
    # connection) were stored but never counted as acknowledged.
    assert acked <= stored(db) <= acked + 4 * 100 + 4


@pytest.mark.slow
def bench_http_matrix(benchmark: Any, tmp_path: Path) -> None:
    """The full matrix (skipped under --benchmark-disable): ours vs floors, batches and singles, c=1/8/32."""
    if benchmark.disabled:
        pytest.skip("timed run only: python -m pytest bench/bench_http.py --benchmark-enable -s")
    results: list[dict[str, Any]] = []

    def measure(kind: str, events: int, connections: int, label: str | None = None) -> dict[str, Any]:
        with server(kind, tmp_path) as (port, key, db, process):
            row = {"server": label or kind, "events": events, "c": connections,
                   **wrk(port, key, events, connections, SECONDS)}  # fmt: skip
            if kind != "bare-wsgi" and kind != "bare-flask":
                row["stored"] = stored(db)
            if label == "drengr-500KB":
                row["peak_rss_mb"] = peak_rss_mb(process.pid)
        results.append(row)
        return row

    for kind in ("drengr", "bare-wsgi", "bare-flask"):
        for events in (100, 1):
            for connections in (1, 8, 32):
                measure(kind, events, connections)
    measure("drengr", 700, 8, label="drengr-500KB")
    for connections in (1, 8, 32):
        measure("drengr-wproc", 100, connections)
    measure("drengr-wproc", 1, 32)
    if shutil.which("gunicorn") or _importable("gunicorn"):
        for connections in (8, 32):
            measure("gunicorn", 100, connections, label="gunicorn-2w")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print()
    print(
        f"{'server':<14}{'events':>7}{'c':>4}{'req/s':>10}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non2xx':>8}"
    )
    for r in results:
        print(f"{r['server']:<14}{r['events']:>7}{r['c']:>4}{r['req_per_s']:>10.0f}{r['events_per_s']:>11.0f}"
              f"{r['p50_ms'] or 0:>9.2f}{r['p99_ms'] or 0:>9.2f}{r['non_2xx']:>8}")  # fmt: skip
    for r in results:
        assert r["non_2xx"] == 0, r
        if "stored" in r:  # every ack stored; at most one in-flight request per connection beyond
            assert r["events"] * r["requests"] <= r["stored"] <= r["events"] * (r["requests"] + r["c"]), r


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
