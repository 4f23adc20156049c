"""`drengr tail` and `drengr stats` (drengr.cli_read), run as real processes on a real SQLite file.

Until drengr/cli.py wires them in, the commands run as ``python -m
drengr.cli_read``, which builds the same subcommands with ``add_commands``.
``tail`` is always bounded here (``--count``, ``--timeout`` or a signal).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drengr import cli_read
from drengr.store import SQLiteStore
from drengr.web import Config, create_app

from .support.app import post

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)

SRC = Path(__file__).resolve().parents[1] / "src"
# A generous hang guard, not a speed limit (speed is bench/'s): a command that never
# exits fails after this long instead of hanging the suite.
HANG_GUARD_SECONDS = 60
T0 = 1_795_687_200_000  # 2026-11-26T10:00:00.000Z


@pytest.fixture
def db(tmp_path: Path) -> Any:
    """A database with three rows of tenant acme and one of tenant other, received a minute apart."""
    path = tmp_path / "drengr.db"
    store = SQLiteStore(str(path))
    clock = [T0]
    app = create_app(Config(db=str(path)), store=store, clock_ms=lambda: clock[0])
    client = app.test_client()
    acme, other = store.create_key("acme", "publishable"), store.create_key("other", "publishable")
    sends = [
        (acme, {"type": "track", "event": "Order Completed", "userId": "u1", "properties": {"revenue": 10}}),
        (other, {"type": "track", "event": "Secret Thing", "userId": "u1", "properties": {"revenue": 99}}),
        (
            acme,
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "u2",
                "properties": {"revenue": 2.5},
                "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
            },
        ),
        (acme, {"type": "track", "event": "Signed Up", "anonymousId": "a1", "properties": {"plan": "pro"}}),
    ]
    for minute, (key, body) in enumerate(sends):
        clock[0] = T0 + minute * 60_000
        assert post(client, "/v1/track", body, key).status_code == 200
    store.close()

    class Db:
        pass

    handle = Db()
    handle.path, handle.acme, handle.other = path, acme, other  # type: ignore[attr-defined]
    return handle


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def drengr(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drengr.cli_read", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
    )


def ingest(db_path: Path, key: str, *events: dict[str, Any]) -> None:
    store = SQLiteStore(str(db_path))
    try:
        client = create_app(Config(db=str(db_path)), store=store).test_client()
        for event in events:
            assert post(client, "/v1/track", event, key).status_code == 200
    finally:
        store.close()


# ------------------------------------------------------------------ stats


def test_stats_text(db: Any) -> None:
    result = drengr(
        "stats", "--db", str(db.path), "--tenant", "acme", "--since", "2026-11-26", "--measure", "revenue"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "3 events, tenant 'acme', received_at from 2026-11-26T00:00:00.000Z to now"
    assert lines[1].split() == ["EVENT", "COUNT", "revenue"]
    assert lines[2].split() == ["order_completed", "2", "12.50"]
    assert lines[3].split() == ["signed_up", "1", "0"]
    assert lines[4].split() == ["TOTAL", "3", "12.50"]


STATS_JSON = [
    ("all-tenants", ["--since", "2026-11-26"], 4, {"revenue": 111.5}),
    ("tenant", ["--since", "2026-11-26", "--tenant", "other"], 1, {"revenue": 99}),
    ("until", ["--since", "2026-11-26", "--until", "2026-11-26T10:02:00Z"], 2, {"revenue": 109}),
    ("event-name", ["--since", "2026-11-26", "--event-name", "signed_up"], 1, {"revenue": 0}),
    ("occurred", ["--since", "2026-11-26T10:03:00Z", "--occurred"], 1, {"revenue": 0}),
]


@pytest.mark.parametrize(
    ("args", "total", "sums"), [s[1:] for s in STATS_JSON], ids=[s[0] for s in STATS_JSON]
)
def test_stats_json(db: Any, args: list[str], total: int, sums: dict[str, float]) -> None:
    result = drengr("stats", "--db", str(db.path), "--json", "--measure", "revenue", *args)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["total"], body["sums"]) == (total, sums)


def test_stats_per_minute(db: Any) -> None:
    result = drengr("stats", "--db", str(db.path), "--json", "--tenant", "acme", "--since", "2026-11-26",
                    "--interval", "minute")  # fmt: skip
    assert [p["bucket"][11:16] for p in json.loads(result.stdout)["series"]] == ["10:00", "10:02", "10:03"]


MISTAKES = [
    ("no-database", ["stats", "--db", "/nonexistent/drengr.db"], "No database at /nonexistent/drengr.db"),
    ("bad-since", ["stats", "--since", "yesterday"], "--since 'yesterday' is not a time"),
    ("bad-measure", ["stats", "--measure", 'a"b'], "is not a measure name"),
    ("tail-no-database", ["tail", "--db", "/nonexistent/x.db"], "No database at"),
]


@pytest.mark.parametrize(("args", "message"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_user_mistakes_are_one_sentence(db: Any, args: list[str], message: str) -> None:
    if "--db" not in args:
        args = [*args, "--db", str(db.path)]
    result = drengr(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------ tail


def test_tail_no_follow_prints_the_last_rows_oldest_first(db: Any) -> None:
    result = drengr("tail", "--db", str(db.path), "--no-follow", "-n", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:4] == ["2026-11-26T10:02:00.000Z", "acme", "track", "order_completed"]
    assert lines[1].split()[:4] == ["2026-11-26T10:03:00.000Z", "acme", "track", "signed_up"]
    assert 'dims={"_source_event_name":"Signed Up","plan":"pro"}' in lines[1]
    assert lines[0].endswith("library=analytics-python 2.4.0")  # the SDK that sent it, when it said
    assert "library=" not in lines[1]


def test_tail_tenant_filter_json(db: Any) -> None:
    result = drengr("tail", "--db", str(db.path), "--no-follow", "--tenant", "acme", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event_name"] for e in events] == ["order_completed", "order_completed", "signed_up"]
    assert {e["tenant_id"] for e in events} == {"acme"}
    assert events[0]["measures"] == {"revenue": 10}
    assert [e["library"] for e in events] == [None, "analytics-python 2.4.0", None]


def test_tail_follows_new_rows_until_count(db: Any) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "drengr.cli_read", "tail", "--db", str(db.path), "--tenant", "acme", "--json",
         "-n", "1", "--count", "3"],  # no --timeout: only --count ends it (or the hang guard)
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["event_name"] == "signed_up"
        ingest(db.path, db.other, {"type": "track", "event": "Not Yours", "userId": "x"})
        ingest(db.path, db.acme, {"type": "track", "event": "Live One", "userId": "u"},
               {"type": "track", "event": "Live Two", "userId": "u"})  # fmt: skip
        out, err = process.communicate(timeout=HANG_GUARD_SECONDS)  # it exits on its own after --count 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert [json.loads(line)["event_name"] for line in out.splitlines()] == ["live_one", "live_two"]


def test_tail_stops_after_timeout(db: Any) -> None:
    # A tail that ignored --timeout would follow until the hang guard kills it (TimeoutExpired).
    result = drengr("tail", "--db", str(db.path), "-n", "0", "--timeout", "0.5", timeout=HANG_GUARD_SECONDS)
    assert result.returncode == 0 and result.stdout == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_tail_stops_cleanly_on_a_signal(db: Any, sig: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "drengr.cli_read", "tail", "--db", str(db.path), "-n", "1", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert "signed_up" in process.stdout.readline()  # following now
        process.send_signal(sig)
        out, err = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "Traceback" not in err and err == ""


def test_add_commands_plugs_into_a_parser(db: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """What cli.py does: add the subcommands to its own parser and dispatch by name."""
    parser = argparse.ArgumentParser(prog="drengr")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve")
    cli_read.add_commands(commands)
    args = parser.parse_args(["stats", "--db", str(db.path), "--since", "2026-11-26", "--json"])
    assert args.command in cli_read.COMMANDS
    assert cli_read.run(args) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 4
