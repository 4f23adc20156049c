"""End to end over HTTP with wrk: events/s and p50/p99 of our server next to the server floors, in one run.

Run: python -m pytest bench/bench_http.py --benchmark-enable -s   (prints the table; see bench/README.md)
Servers are pinned to core 0 and wrk to core 1 (taskset), except gunicorn's two workers; with
``--writer process`` (the "drengr-process" rows) our SQLite writer process runs on core 1 beside wrk.
Every server gets the same worker threads (8, serve's default; DRENGR_BENCH_THREADS). The bare
``executemany`` floor (bench_store.py's, 2,500-row batches, FULL) is measured in the same run, before
and after the loads, and every batch row is reported as a share of it.
Under --benchmark-disable (CI) it runs one short, small load against our server and checks rows = acks.
"""

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import drengr

from .bench_store import floor_rows_per_second, prefill

ROOT = Path(__file__).parents[1]
LUA = Path(__file__).with_name("wrk_post.lua")
SECONDS = int(os.environ.get("DRENGR_BENCH_SECONDS", "8"))
WARMUP_SECONDS = int(os.environ.get("DRENGR_BENCH_WARMUP_SECONDS", "2"))  # same load, not counted
THREADS = os.environ.get("DRENGR_BENCH_THREADS", "8")
WRITERS = {"drengr-thread": "thread", "drengr-process": "process"}
WINDOW_IDS = int(os.environ.get("DRENGR_BENCH_WINDOW_IDS", "35000000"))  # bench_http_dedup_window_memory
RESULTS = Path(os.environ.get("DRENGR_BENCH_RESULTS", str(ROOT / ".benchmarks" / "http.json")))


@pytest.fixture(autouse=True)
def wrk_installed() -> None:
    """Skip on a machine without wrk; under CI (.ci/run installs it) that is a failure."""
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed: apt-get install wrk (.ci/run does; CI is set: this must run)")
        pytest.skip("wrk is not installed: apt-get install wrk")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_up(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:  # an HTTP answer, not just a listening socket: gunicorn's workers boot after its master
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /nowhere HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                if sock.recv(16).startswith(b"HTTP/"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not come up")


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


@contextmanager
def server(
    kind: str,
    tmp: Path,
    pin: bool = True,
    extra: tuple[str, ...] = (),
    read_side: bool = True,
    before: Callable[[Path], None] | None = None,
    environ: dict[str, str] | None = None,
) -> Iterator[tuple[int, str, Path, subprocess.Popen[bytes]]]:
    """Start one kind of server (``pin``: on core 0, as the module says; ``extra``: more options of
    serve; ``read_side`` False: its SQLite read side off, ``without_read_side/``; ``before(db)``:
    run on its database once its key is made, before it starts; ``environ``: more variables, as
    DRENGR_WRITER for gunicorn); yield (port, write key, db path, process)."""
    port = free_port()
    db = tmp / f"{kind}-{port}.db"
    key = ""
    # The servers run the drengr this process imports (an installed one, or src/ on PYTHONPATH).
    code = str(Path(drengr.__file__).parents[1])
    env = {**os.environ, **(environ or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), code, os.environ.get("PYTHONPATH", "")])
    if not read_side:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).with_name("without_read_side")), env["PYTHONPATH"]]
        )
    on_postgres = "--store" in extra  # its rows go there (serve takes it from extra), else to db
    store = ("--store", extra[extra.index("--store") + 1]) if on_postgres else ("--db", str(db))
    if kind in (*WRITERS, "gunicorn"):
        created = subprocess.run(
            [sys.executable, "-m", "drengr", "keys", "create", "--tenant", "bench", *store],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = created.stdout.strip()
        if before is not None:
            before(db)
    if kind in WRITERS:
        args = [*(pinned(0) if pin else []), sys.executable, "-m", "drengr", "serve", *(() if on_postgres else store),
                "--port", str(port), "--threads", THREADS, "--writer", WRITERS[kind], "--log-level", "warning",
                *extra]  # fmt: skip
        if kind == "drengr-process" and pin and pinned(1):  # the writer process beside wrk, not on core 0
            env["DRENGR_WRITER_CPUS"] = "1"
    elif kind == "gunicorn":
        env["DRENGR_DB"] = str(db)
        args = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", THREADS,
                "-b", f"127.0.0.1:{port}", "--log-level", "warning", "-c", "deploy/gunicorn.conf.py",
                "wsgi:application"]  # fmt: skip
    else:
        app = {"bare-wsgi": "bench.bare_apps:bare", "bare-flask": "bench.bare_apps:flask_app"}[kind]
        args = [*pinned(0), sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", f"--threads={THREADS}",
                "--recv-bytes=65536", app]  # fmt: skip
    log = tmp / f"{kind}-{port}.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        try:
            wait_up(port, process)
        except AssertionError as error:
            raise AssertionError(f"{kind}: {error}; its log ends:\n{log.read_text()[-3000:]}") from None
        yield port, key, db, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # A cell's database can reach a GB: not left for the next (nor its user index's file).
        for path in [*tmp.glob(f"{db.name}*"), *tmp.glob(f"{db.stem}-users{db.suffix}*")]:
            path.unlink()


def wrk(
    port: int, key: str, events: int, connections: int, seconds: int, pin: bool = True, core: int = 1
) -> dict[str, Any]:
    """``pin``: wrk on ``core`` (1, beside the writer process, as the module says)."""
    threads = min(connections, 2)
    env = {**os.environ, "EVENTS": str(events), "WRITE_KEY": key}
    args = [*(pinned(core) if pin else []), "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
            "-s", str(LUA), f"http://127.0.0.1:{port}"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=seconds + 60).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # wrk pads a figure to its column: "1.63s " (seconds) ends in a space
    latency = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M)}
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


def peak_rss_mb_each(pid: int) -> list[float]:
    """Peak RSS (VmHWM) of the server, then of each of its children (the writer process), in MB."""
    found = []
    for each in [pid, *_children(pid)]:
        status = Path(f"/proc/{each}/status").read_text()
        found.append(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024)  # type: ignore[union-attr]
    return found


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of the server and its children (the writer process), summed: an upper bound."""
    return sum(peak_rss_mb_each(pid))


@pytest.mark.parametrize("kind", list(WRITERS))
def bench_http_smoke_rows_equal_acks(benchmark: Any, tmp_path: Path, kind: str) -> None:
    """Correctness of the load path, with each writer: every acknowledged event is stored once (runs in CI too)."""
    seconds = 1 if benchmark.disabled else SECONDS
    with server(kind, tmp_path) as (port, key, db, _):
        batch, single = benchmark.pedantic(
            lambda: (wrk(port, key, 100, 4, seconds), wrk(port, key, 1, 4, seconds)), rounds=1, iterations=1
        )
        rows = stored(db)
    acked = 100 * (batch["requests"] - batch["non_2xx"]) + (single["requests"] - single["non_2xx"])
    assert batch["non_2xx"] == single["non_2xx"] == 0
    assert None not in (batch["p50_ms"], batch["p99_ms"], single["p50_ms"], single["p99_ms"])
    # wrk stops counting at its deadline: requests still in flight then (at most one per
    # connection) were stored but never counted as acknowledged.
    assert acked <= rows <= acked + 4 * 100 + 4


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 28 cells of 10 s and more
def bench_http_matrix(benchmark: Any, tmp_path: Path) -> None:
    """The full matrix (skipped under --benchmark-disable): ours vs floors, batches and singles, c=1/8/32."""
    if benchmark.disabled:
        pytest.skip("timed run only: python -m pytest bench/bench_http.py --benchmark-enable -s")
    results: list[dict[str, Any]] = []

    def measure(kind: str, events: int, connections: int, label: str | None = None) -> dict[str, Any]:
        with server(kind, tmp_path) as (port, key, db, process):
            # A warm-up first (caches, prepared statements, the dedup window's first resizes):
            # the figures are of a running server, not of its first seconds.
            warm = wrk(port, key, events, connections, WARMUP_SECONDS)
            row = {"server": label or kind, "events": events, "c": connections,
                   **wrk(port, key, events, connections, SECONDS)}  # fmt: skip
            row["warmup_requests"] = warm["requests"]
            assert warm["non_2xx"] == warm["socket_errors"] == 0, warm
            if kind != "bare-wsgi" and kind != "bare-flask":
                row["stored"] = stored(db)
            if label and label.endswith("-500KB"):
                row["peak_rss_mb"] = peak_rss_mb(process.pid)
        results.append(row)
        return row

    floors = [floor_rows_per_second(tmp_path)]
    for kind in ("drengr-process", "drengr-thread", "bare-wsgi", "bare-flask"):
        for events in (100, 1):
            for connections in (1, 8, 32):
                measure(kind, events, connections)
        if kind in WRITERS:
            measure(kind, 700, 8, label=f"{kind}-500KB")
    if shutil.which("gunicorn") or _importable("gunicorn"):
        for connections in (8, 32):
            measure("gunicorn", 100, connections, label="gunicorn-2w")
    floors.append(floor_rows_per_second(tmp_path))
    floor = statistics.mean(floors)
    for r in results:
        if r["events"] > 1:
            r["share_of_floor"] = r["events_per_s"] / floor
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"floor_rows_per_s": floors, "cells": results}, indent=1))
    print()
    print(
        f"bare executemany floor (2,500-row batches, FULL): {floors[0]:,.0f} rows/s before, {floors[1]:,.0f} after"
    )
    print(
        f"{'server':<21}{'events':>7}{'c':>4}{'req/s':>10}{'events/s':>11}{'÷floor':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'non2xx':>8}{'RSS MB':>8}"
    )
    for r in results:
        share = f"{r['share_of_floor']:.0%}" if "share_of_floor" in r else ""
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else ""
        print(f"{r['server']:<21}{r['events']:>7}{r['c']:>4}{r['req_per_s']:>10.0f}{r['events_per_s']:>11.0f}"
              f"{share:>8}{r['p50_ms'] or 0:>9.2f}{r['p99_ms'] or 0:>9.2f}{r['non_2xx']:>8}{rss:>8}")  # fmt: skip
    for r in results:
        assert r["requests"] > 0 and r["non_2xx"] == r["socket_errors"] == 0, r
        assert r["p50_ms"] is not None and r["p99_ms"] is not None, r  # wrk's output was read
        if "stored" in r:  # every ack stored; at most one in-flight request per connection per load beyond
            acked = r["requests"] + r["warmup_requests"]
            assert r["events"] * acked <= r["stored"] <= r["events"] * (acked + 2 * r["c"]), r


@pytest.mark.slow
@pytest.mark.timeout(1800)
def bench_http_postgres(benchmark: Any, tmp_path: Path) -> None:
    """`drengr serve --store postgresql://…` (its defaults) under 100-event batches at c=8 and c=32,
    the server on core 0 and wrk on core 1 (PostgreSQL where the system puts it), against its floor:
    a COPY of the very rows it stored, in the order it stored them, into a copy of its table (the same
    indexes), 2,500 rows a transaction, measured right after each load; and the same server without
    its read side (``without_read_side/``), in pairs whose order alternates, a rate counting the
    builder's catch-up after the load as ``bench_http_read_side`` does. Each ratio is read within its
    round. Needs a server: DRENGR_TEST_POSTGRES_DSN, or ``.ci/postgres.sh`` (fsync on:
    ``PG_EXTRA_OPTS=`` empty)."""
    if benchmark.disabled:
        pytest.skip("timed run only: python -m pytest bench/bench_http.py -k postgres --benchmark-enable -s")
    try:
        import psycopg

        from tests.support.postgres import server_dsn, with_schema
    except ImportError as error:  # pragma: no cover - psycopg is in the `test` extra
        pytest.skip(f"needs psycopg and tests/ ({error})")
    rounds = int(os.environ.get("DRENGR_BENCH_PG_ROUNDS", "3"))
    # (connections, read side) → per round: (wrk's events/s, the floor's rows/s, rows/s counting the catch-up)
    found: dict[tuple[int, bool], list[tuple[float, float, float]]] = {}

    def cells() -> None:
        for round_ in range(rounds):
            for connections in (8, 32):
                for read_side in (True, False) if round_ % 2 == 0 else (False, True):
                    schema = f"bench_{uuid.uuid4().hex[:12]}"
                    with psycopg.connect(server_dsn(), autocommit=True) as conn:
                        conn.execute(f"CREATE SCHEMA {schema}")
                    dsn = with_schema(server_dsn(), schema)
                    try:
                        with server(
                            "drengr-process", tmp_path, extra=("--store", dsn), read_side=read_side
                        ) as (
                            port,
                            key,
                            _,
                            _,
                        ):
                            warm = wrk(port, key, 100, connections, WARMUP_SECONDS)
                            cell = wrk(port, key, 100, connections, SECONDS)
                            catching_up = _postgres_caught_up(dsn) if read_side else 0.0
                        assert warm["non_2xx"] == cell["non_2xx"] == cell["socket_errors"] == 0, cell
                        rows = _postgres_rows(dsn)
                        acked = cell["requests"] + warm["requests"]
                        assert 100 * acked <= len(rows) <= 100 * (acked + 2 * connections)
                        whole = len(rows) / (WARMUP_SECONDS + SECONDS + catching_up)
                        found.setdefault((connections, read_side), []).append(
                            (cell["events_per_s"], _copy_floor(dsn, rows), whole)
                        )
                    finally:
                        with psycopg.connect(server_dsn(), autocommit=True) as conn:
                            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    benchmark.pedantic(cells, rounds=1, iterations=1)
    print(f"\n`drengr serve --store postgresql://…`, 100-event batches, {rounds} rounds, against a COPY "
          "of the same rows in 2,500-row transactions, and with its read side ÷ without:")  # fmt: skip
    for connections in (8, 32):
        for read_side in (True, False):
            pairs = found[connections, read_side]
            ratios = ", ".join(f"{rate / floor:.2f}" for rate, floor, _ in pairs)
            print(f"c={connections}, {'with' if read_side else 'without'} the read side: "
                  f"{statistics.median(r for r, _, _ in pairs):,.0f} events/s, floor "
                  f"{statistics.median(f for _, f, _ in pairs):,.0f} rows/s (medians); round by round {ratios}")  # fmt: skip
        sides = zip(found[connections, True], found[connections, False], strict=True)
        print(f"c={connections}, with ÷ without the read side, round by round (rates counting the builder's "
              f"catch-up): {', '.join(f'{w[2] / wo[2]:.2f}' for w, wo in sides)}")  # fmt: skip


def _postgres_caught_up(dsn: str, limit_seconds: float = 120.0) -> float:
    """Seconds until a running server's read side holds every row it stored, polled every 20 ms."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.perf_counter() - started < limit_seconds:
            top, built = conn.execute(
                "SELECT (SELECT coalesce(max(seq), 0) FROM semantic_events), "
                "(SELECT value::bigint FROM drengr_meta WHERE key = 'read_side_seq')"
            ).fetchone()  # type: ignore[misc]
            if built >= top:
                return time.perf_counter() - started
            time.sleep(0.02)
    raise AssertionError(f"the read side did not catch up in {limit_seconds} s")


def _postgres_rows(dsn: str) -> list[tuple[Any, ...]]:
    """The rows a server stored, in the order of their seq, as it handed them to COPY."""
    import psycopg

    from drengr.store.postgres.statements import EVENT_COLUMNS

    columns = ", ".join(f"{c}::text" if c in ("dims", "measures") else c for c in EVENT_COLUMNS)
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT {columns} FROM semantic_events ORDER BY seq").fetchall()


def _copy_floor(dsn: str, rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of a bare COPY of ``rows`` into an empty copy of ``semantic_events``, 2,500 a transaction."""
    import psycopg

    from drengr.store.postgres.statements import EVENT_COLUMNS

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE floor_events (LIKE semantic_events INCLUDING ALL)")
        copy_sql = f"COPY floor_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
        started = time.perf_counter()
        for first in range(0, len(rows), 2_500):
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for row in rows[first : first + 2_500]:
                    copy.write_row(row)
        elapsed = time.perf_counter() - started
        copied = conn.execute("SELECT count(*) FROM floor_events").fetchone()[0]  # type: ignore[index]
    assert copied == len(rows)
    return len(rows) / elapsed


Cells = dict[tuple[int, int], dict[str, list[dict[str, Any]]]]  # (events, c) → placement → wrk's results


@pytest.mark.slow
@pytest.mark.timeout(1800)
def bench_http_gunicorn_writers(benchmark: Any, tmp_path: Path) -> None:
    """gunicorn's two workers on one SQLite file, 100-event batches at c=32: through one writer process
    they share (DRENGR_WRITER=shared, wsgi.py's default) against a writer thread in each, with
    `drengr serve` beside them, in turns (the order alternates); wrk on core 1, the servers unpinned."""
    if benchmark.disabled:
        pytest.skip(
            "timed run only: python -m pytest bench/bench_http.py -k gunicorn_writers --benchmark-enable -s"
        )
    if not (shutil.which("gunicorn") or _importable("gunicorn")):
        pytest.skip("needs gunicorn: pip install '.[deploy]'")
    servers = {
        "gunicorn, shared writer": ("gunicorn", {"DRENGR_WRITER": "shared"}),
        "gunicorn, writer threads": ("gunicorn", {"DRENGR_WRITER": "thread"}),
        "drengr serve": ("drengr-process", {}),
    }
    rounds = int(os.environ.get("DRENGR_BENCH_GUNICORN_ROUNDS", "3"))
    cells: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}

    def measure() -> None:
        for round_ in range(rounds):
            for name in list(servers)[:: 1 if round_ % 2 == 0 else -1]:
                kind, environ = servers[name]
                with server(kind, tmp_path, environ=environ) as (port, key, db, _):
                    warm = wrk(port, key, 100, 32, WARMUP_SECONDS)
                    cell = wrk(port, key, 100, 32, SECONDS)
                    assert warm["non_2xx"] == cell["non_2xx"] == cell["socket_errors"] == 0, cell
                    acked = cell["requests"] + warm["requests"]
                    assert 100 * acked <= stored(db) <= 100 * (acked + 2 * 32)  # every ack stored
                cells[name].append(cell)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    print(f"\n100-event batches, c=32, {rounds} rounds; requests/s and p99 ms, round by round:")
    for name, measured in cells.items():
        rates = ", ".join(f"{cell['req_per_s']:,.0f}" for cell in measured)
        p99s = ", ".join(f"{cell['p99_ms']:.1f}" for cell in measured)
        print(f"{name:<26} {rates}   p99 {p99s}")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def bench_http_placement(benchmark: Any, tmp_path: Path) -> None:
    """`drengr serve` with nothing pinned by its user (wrk floats too): --placement auto, the default,
    against --placement none and a bare Flask app on waitress, in turns; 100-event batches at c=8
    (also as a share of the floor, measured before and after) and single events at c=32."""
    if benchmark.disabled:
        pytest.skip("timed run only: python -m pytest bench/bench_http.py -k placement --benchmark-enable -s")
    servers = {
        "auto": ("drengr-process", ()),
        "none": ("drengr-process", ("--placement", "none")),
        "bare Flask": ("bare-flask", ()),
    }
    rounds = int(os.environ.get("DRENGR_BENCH_PLACEMENT_ROUNDS", "4"))
    floors = [floor_rows_per_second(tmp_path)]
    cells: Cells = {}
    benchmark.pedantic(lambda: _placement_cells(tmp_path, servers, rounds, cells), rounds=1, iterations=1)
    floors.append(floor_rows_per_second(tmp_path))
    floor = statistics.mean(floors)
    print(f"\nbare executemany floor: {floors[0]:,.0f} rows/s before, {floors[1]:,.0f} after; nothing pinned, "
          f"{rounds} rounds of each, medians:")  # fmt: skip
    for (events, connections), by_server in cells.items():
        rates = {name: [cell["events_per_s"] for cell in by_server[name]] for name in servers}
        figures = ", ".join(
            f"{name} {statistics.median(rates[name]):,.0f}"
            + (
                f" ({statistics.median(rates[name]) / floor:.0%} of the floor)"
                if events > 1 and name != "bare Flask"
                else ""
            )
            + f" p99 {statistics.median(cell['p99_ms'] for cell in by_server[name]):.0f} ms"
            for name in servers
        )
        rounds_text = ", ".join(f"{a / n:.2f}" for a, n in zip(rates["auto"], rates["none"], strict=True))
        flask = ", ".join(f"{a / f:.2f}" for a, f in zip(rates["auto"], rates["bare Flask"], strict=True))
        print(f"{events} event(s) a request, c={connections}, events/s: {figures}; round by round, "
              f"auto ÷ none {rounds_text}; auto ÷ bare Flask {flask}")  # fmt: skip


def _placement_cells(
    tmp_path: Path, servers: dict[str, tuple[str, tuple[str, ...]]], rounds: int, cells: Cells
) -> None:
    for events, connections in ((100, 8), (1, 32)):
        by_server = cells[events, connections] = {name: [] for name in servers}
        for round_ in range(rounds):
            for name in list(servers)[:: 1 if round_ % 2 == 0 else -1]:  # the order alternates
                kind, extra = servers[name]
                with server(kind, tmp_path, pin=False, extra=extra) as (port, key, db, _):
                    warm = wrk(port, key, events, connections, WARMUP_SECONDS, pin=False)
                    cell = wrk(port, key, events, connections, SECONDS, pin=False)
                    assert warm["non_2xx"] == cell["non_2xx"] == cell["socket_errors"] == 0, cell
                    if kind != "bare-flask":  # every ack stored
                        acked = cell["requests"] + warm["requests"]
                        assert events * acked <= stored(db) <= events * (acked + 2 * connections)
                by_server[name].append(cell)


# Where the read side's benchmarks put the servers and wrk: by the name DRENGR_BENCH_BURST_PLACEMENT
# takes, (the label printed, the servers pinned to core 0, wrk's core where pinned). Pinned, wrk is
# beside the writer processes; "wrk-on-server" leaves the writer's core to it, as where the load
# comes from other machines; unpinned, the system and serve's --placement auto place them.
PLACEMENTS = {
    "pinned": ("pinned", True, 1),
    "wrk-on-server": ("wrk on the server's core", True, 0),
    "unpinned": ("nothing pinned", False, 1),
}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def bench_http_read_side(benchmark: Any, tmp_path: Path) -> None:
    """What the read side costs a server's ingest: `drengr serve` (its defaults) with its SQLite read
    side and without, in pairs whose order alternates; 100-event batches at c=8 and c=32, pinned as
    the module says, with wrk on the server's core instead (the writer's core left to the writer
    process, as where no load generator shares the box), and with nothing pinned. A server's rate
    here is every row it stored (the requests wrk left in flight too, ``_settled``) over the whole
    load and, with the read side, the time its builder took past the table's last row to catch up
    with them (under a load that keeps both cores busy it falls behind, and counts the rest as the
    load stops). The ratio is read pair by pair: this machine's rate moves by a tenth and more from
    one minute to the next."""
    if benchmark.disabled:
        pytest.skip(
            "timed run only: python -m pytest bench/bench_http.py "
            '-k "read_side and not bursts" --benchmark-enable -s'
        )
    pairs = int(os.environ.get("DRENGR_BENCH_READ_SIDE_PAIRS", "6"))
    cells: dict[tuple[int, str], dict[bool, list[float]]] = {}
    cpus: dict[tuple[int, str], dict[bool, list[tuple[float, float]]]] = {}
    lags: list[tuple[int, float]] = []
    benchmark.pedantic(lambda: _read_side_cells(tmp_path, pairs, cells, cpus, lags), rounds=1, iterations=1)
    print(f"\n`drengr serve`, 100-event batches, {pairs} pairs a cell (with the read side ÷ without); as "
          f"each load ended the builder was behind by a median of {statistics.median(n for n, _ in lags):,.0f} "
          f"rows (most {max(n for n, _ in lags):,}), caught up in {statistics.median(t for _, t in lags):.2f} s "
          f"(most {max(t for _, t in lags):.2f} s)")  # fmt: skip
    for (connections, placement), rates in cells.items():
        ratios = sorted(w / wo for w, wo in zip(rates[True], rates[False], strict=True))
        low, median, high = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else (ratios[0],) * 3
        server_cpu, writer_cpu = ({side: statistics.median(cpu[part] for cpu in cpus[connections, placement][side])
                                   for side in (True, False)} for part in (0, 1))  # fmt: skip
        print(f"c={connections}, {placement}: median {median:.2f} (quartiles "
              f"{low:.2f}–{high:.2f}; each {', '.join(f'{r:.2f}' for r in ratios)}); events/s, medians: "
              f"{statistics.median(rates[True]):,.0f} with, {statistics.median(rates[False]):,.0f} without; "
              f"CPU µs an event, medians, with ÷ without: the server process {server_cpu[True]:.1f} ÷ "
              f"{server_cpu[False]:.1f}, the writer process {writer_cpu[True]:.1f} ÷ {writer_cpu[False]:.1f}")  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(3600)
def bench_http_read_side_bursts(benchmark: Any, tmp_path: Path) -> None:
    """The read side's cost to a server's ingest, read in bursts taken in turn: pairs of `drengr serve`,
    one with its SQLite read side and one without, both up at once and pinned as the module says;
    each round gives each a burst of wrk (``DRENGR_BENCH_BURST_SECONDS``, 2; the order alternating),
    and a burst's rate is the rows it stored (the requests wrk left in flight too, ``_settled``) over
    the burst and, with the read side, its builder's catch-up past the table's last row. Bursts
    seconds apart share the machine's speed far better than loads a minute apart (``-k read_side``).
    ``DRENGR_BENCH_BURST_PLACEMENT``: one of ``PLACEMENTS``, ``pinned`` by default.

    Each pair of servers runs a few rounds (``DRENGR_BENCH_BURST_ROUNDS``, 4, after one that warms
    up), then a new pair starts (``DRENGR_BENCH_BURST_PAIRS``, 10 a cell): two servers of the same
    code and settings differed by up to 6 % over 16 rounds, the same in every round
    (each process's own hash seed and memory layout), so the rounds of one pair measure that pair.
    A pair's ratio is the median of its rounds'; the cell's, the median of its pairs'."""
    if benchmark.disabled:
        pytest.skip("timed run only: python -m pytest bench/bench_http.py -k bursts --benchmark-enable -s")
    pairs = int(os.environ.get("DRENGR_BENCH_BURST_PAIRS", "10"))
    rounds = int(os.environ.get("DRENGR_BENCH_BURST_ROUNDS", "4"))
    seconds = int(os.environ.get("DRENGR_BENCH_BURST_SECONDS", "2"))
    placement = os.environ.get("DRENGR_BENCH_BURST_PLACEMENT", "pinned")
    if placement not in PLACEMENTS:
        pytest.fail(f"DRENGR_BENCH_BURST_PLACEMENT is one of {', '.join(PLACEMENTS)}, not {placement!r}")
    label, pin, core = PLACEMENTS[placement]
    found: dict[int, list[list[float]]] = {8: [], 32: []}  # per cell, each pair's rounds' ratios
    caught_up: dict[int, list[float]] = {8: [], 32: []}  # per cell, the catch-up after each burst

    def cells() -> None:
        for pair, connections in itertools.product(range(pairs), found):
            with contextlib.ExitStack() as started:
                servers = {}
                for read_side in (True, False) if pair % 2 == 0 else (False, True):  # who starts first
                    servers[read_side] = started.enter_context(
                        server("drengr-process", tmp_path, pin=pin, read_side=read_side)
                    )
                rates: dict[bool, list[float]] = {True: [], False: []}
                for turn in range(rounds + 1):
                    for read_side in (True, False) if turn % 2 == 0 else (False, True):
                        port, key, db, _process = servers[read_side]
                        before = _newest(db)
                        cell = wrk(port, key, 100, connections, seconds, pin=pin, core=core)
                        assert cell["non_2xx"] == cell["socket_errors"] == 0, cell
                        newest, catching_up = _settled(db, read_side)
                        if turn:
                            rates[read_side].append((newest - before) / (seconds + catching_up))
                            if read_side:
                                caught_up[connections].append(catching_up)
                assert _marks(servers[False][2])[1:] == (0, 0), "the read side was built"
            found[connections].append([w / wo for w, wo in zip(rates[True], rates[False], strict=True)])

    benchmark.pedantic(cells, rounds=1, iterations=1)
    print(f"\n`drengr serve` with its read side ÷ without, 100-event batches, {label}, {pairs} pairs "
          f"of servers a cell, {rounds} rounds of a {seconds}-s burst each:")  # fmt: skip
    for connections, each in found.items():
        medians = sorted(statistics.median(ratios) for ratios in each)
        every = [ratio for ratios in each for ratio in ratios]
        low, median, high = statistics.quantiles(medians, n=4)
        listed = ", ".join(f"{m:.2f}" for m in medians)
        print(f"c={connections}: median of the pairs {median:.3f} (quartiles {low:.3f}–{high:.3f}; "
              f"each: {listed}); every round: median {statistics.median(every):.3f}, "
              f"{sum(r < 1 for r in every)} of {len(every)} below 1; the read side's catch-up after a "
              f"burst: median {statistics.median(caught_up[connections]):.3f} s, "
              f"at most {max(caught_up[connections]):.3f} s")  # fmt: skip


def _newest(db: Path) -> int:
    """The newest seq of a running server's table (rows are never deleted here: the rows stored so far)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM semantic_events").fetchone()[0])
    finally:
        conn.close()


def _marks(db: Path) -> tuple[int, int, int]:
    """(the last seq, the rollups' mark, the users file's mark), read from a running server's files."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        top, built = conn.execute(
            "SELECT (SELECT max(seq) FROM semantic_events), (SELECT value FROM meta WHERE key = 'read_side_seq')"
        ).fetchone()
        users_file = db.with_name(f"{db.stem}-users{db.suffix}")
        if not users_file.exists():
            return int(top or 0), int(built or 0), 0
        conn.execute("ATTACH DATABASE ? AS users", (f"file:{users_file}?mode=ro",))
        users = conn.execute("SELECT value FROM users.meta WHERE key = 'users_seq'").fetchone()
        return int(top or 0), int(built or 0), int(users[0]) if users else 0
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a running process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended (the drop counts' flusher)
            continue
    return found


QUIET_SECONDS = 0.2  # a table that has not grown for this long has stored what wrk left in flight


def _settled(db: Path, read_side: bool, limit_seconds: float = 120.0) -> tuple[int, float]:
    """Once wrk has stopped: the newest seq once the table stops growing (the requests wrk left in
    flight are still stored, for ~50 ms at c=32, with or without the read side), and the seconds the
    read side took past the table's last row to hold every row (its catch-up; 0 without it, or when
    it held them as they came), both polled every 5 ms."""
    started = time.perf_counter()
    last_top, grew_at, whole_at = -1, started, None
    while True:
        now = time.perf_counter()
        top, built, users = _marks(db)
        if top != last_top:
            last_top, grew_at, whole_at = top, now, None
        if read_side and whole_at is None and min(built, users) >= top:
            whole_at = now
        if now - grew_at >= QUIET_SECONDS and (whole_at is not None or not read_side):
            return top, 0.0 if whole_at is None else whole_at - grew_at
        assert now - started < limit_seconds, (
            f"the table or its read side did not settle in {limit_seconds} s"
        )
        time.sleep(0.005)


def _read_side_cells(
    tmp_path: Path,
    pairs: int,
    cells: dict[tuple[int, str], dict[bool, list[float]]],
    cpus: dict[tuple[int, str], dict[bool, list[tuple[float, float]]]],
    lags: list[tuple[int, float]],
) -> None:
    """Fills ``cells`` (events/s) and ``cpus`` (µs of CPU an event: the server process's, its writer
    process's, over the load and the catching up) by cell and read side (True: with it)."""
    for (placement, pin, core), connections in itertools.product(PLACEMENTS.values(), (8, 32)):
        rates = cells[connections, placement] = {True: [], False: []}
        cpu = cpus[connections, placement] = {True: [], False: []}
        for pair in range(pairs):
            for read_side in (True, False) if pair % 2 == 0 else (False, True):
                with server("drengr-process", tmp_path, pin=pin, read_side=read_side) as (
                    port,
                    key,
                    db,
                    process,
                ):
                    writer = _children(process.pid)
                    used = (cpu_seconds(process.pid), sum(cpu_seconds(pid) for pid in writer))
                    warm = wrk(port, key, 100, connections, WARMUP_SECONDS, pin=pin, core=core)
                    cell = wrk(port, key, 100, connections, SECONDS, pin=pin, core=core)
                    assert warm["non_2xx"] == cell["non_2xx"] == cell["socket_errors"] == 0, cell
                    top, *marks = _marks(db)  # (rows may still come in: requests in flight)
                    _newest_seq, catching_up = _settled(db, read_side)
                    rows = stored(db)
                    acked = cell["requests"] + warm["requests"]
                    assert 100 * acked <= rows <= 100 * (acked + 2 * connections)
                    if read_side:
                        lags.append((top - min(marks), catching_up))
                    else:
                        assert marks == [0, 0], "the read side was built"
                    server_cpu = cpu_seconds(process.pid) - used[0]
                    writer_cpu = sum(cpu_seconds(pid) for pid in writer) - used[1]
                    cpu[read_side].append((server_cpu / rows * 1e6, writer_cpu / rows * 1e6))
                rates[read_side].append(rows / (WARMUP_SECONDS + SECONDS + catching_up))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _first_acknowledged(port: int, key: str, limit_seconds: float = 1800.0) -> float:
    """Seconds until a one-event batch is acknowledged: the writer builds its window at its first write,
    answering 502 to requests that wait past the busy timeout meanwhile."""
    auth = "Basic " + b64encode(f"{key}:".encode()).decode()
    started = time.perf_counter()
    while time.perf_counter() - started < limit_seconds:
        body = json.dumps(
            {"batch": [{"type": "track", "event": "first", "userId": "u", "messageId": str(uuid.uuid4())}]}
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/batch", data=body.encode(), method="POST",
            headers={"Authorization": auth, "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except urllib.error.HTTPError as error:
            assert error.code == 502, error.code  # still building the window
        time.sleep(0.5)
    raise AssertionError(f"no event acknowledged in {limit_seconds} s")


def _dedup_gauges(port: int) -> tuple[float, float]:
    """``drengr_dedup_window_ids`` and ``drengr_dedup_window_bytes`` from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    ids, size = (
        float(re.search(rf"^drengr_dedup_window_{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        for name in ("ids", "bytes")
    )
    return ids, size


@pytest.mark.slow
@pytest.mark.timeout(5400)  # 35M rows written, the read side built, then the window built from them
def bench_http_dedup_window_memory(benchmark: Any, tmp_path: Path) -> None:
    """Peak RSS of `drengr serve` (server and writer process) with WINDOW_IDS ids in its dedup window,
    against the same server with an empty window, under the same load (100-event batches, c=8)."""
    ids = 20_000 if benchmark.disabled else WINDOW_IDS
    seconds = 1 if benchmark.disabled else SECONDS
    now_ms = int(time.time() * 1000)  # the server's clock: the rows are in its current window
    results = {}

    def cell(filled: bool) -> None:
        fill = (lambda db: prefill(db, ids, now_ms)) if filled else None
        with server("drengr-process", tmp_path, pin=False, before=fill) as (port, key, db, process):
            first = _first_acknowledged(port, key)
            load = wrk(port, key, 100, 8, seconds, pin=False)
            assert load["non_2xx"] == load["socket_errors"] == 0, load
            window_ids, window_bytes = _dedup_gauges(port)
            results[filled] = {"first_s": first, "rss": peak_rss_mb_each(process.pid), "ids": window_ids,
                               "bytes": window_bytes, "rows": stored(db)}  # fmt: skip

    benchmark.pedantic(lambda: [cell(filled) for filled in (False, True)], rounds=1, iterations=1)
    empty, full = results[False], results[True]
    assert full["ids"] >= ids and full["rows"] >= ids
    added = sum(full["rss"]) - sum(empty["rss"])
    print(
        f"\ndedup window of {full['ids']:,.0f} ids: {full['bytes'] / 2**20:,.1f} MB by its gauge "
        f"({full['bytes'] / full['ids']:.2f} B an id); first write built it from the table in {full['first_s']:,.1f} s"
    )
    for name, found in (("empty window", empty), ("filled window", full)):
        print(f"  {name}: peak RSS server {found['rss'][0]:,.0f} MB + writer process "
              f"{sum(found['rss'][1:]):,.0f} MB = {sum(found['rss']):,.0f} MB")  # fmt: skip
    print(f"  the window's ids added {added:,.0f} MB of peak RSS: {added * 2**20 / full['ids']:.2f} B an id")
