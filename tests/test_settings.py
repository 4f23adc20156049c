"""docs/operating.md "Settings": one registry (drengr.settings), and every entry point honours all of it.

For each setting, a value other than its default, set in the environment
only, is seen in what `drengr serve` and wsgi.py build: the waitress server,
the store's SQLite connection, the writer process's CPUs, the app's routes
and what it stores. `serve` is built in this process by the same
``cli.parse``, ``cli.serve_config`` and ``cli.prepare`` that `drengr serve`
runs, and run for real as a subprocess for what only a process shows (log
level, clock offset, writer CPUs); wsgi.py is imported in a subprocess, as
gunicorn imports it.
The docs' table is the registry's, verbatim.
"""

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drengr import cli
from drengr.cli_common import UsageError
from drengr.settings import (
    SERVE,
    SETTINGS,
    WSGI,
    Config,
    Setting,
    SettingError,
    for_command,
    load,
    markdown_table,
)

from .support.app import basic
from .support.observe import ALLOW_PROBE, PROBE_KEYS, observe, stripped
from .support.realserver import child_env

ROOT = Path(__file__).resolve().parents[1]
OPERATING = ROOT / "docs" / "operating.md"
HANG_GUARD_SECONDS = 60  # a server that never answers fails the test instead of hanging it
DAY_SECONDS = 86_400
ANALYTICS_JS = "/* analytics-next, as this test's folder holds it */"
# Examples that name something of the machine (a folder, a CPU): the docs show them, a test makes its own.
MACHINE_EXAMPLES = {"analytics_js", "writer_cpus"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def non_default(setting: Setting, command: str, tmp_path: Path) -> str:
    """A valid value of ``setting`` other than its default under ``command``, as the variable's text."""
    if setting.name == "analytics_js":
        (tmp_path / "umd").mkdir(exist_ok=True)
        (tmp_path / "umd" / "standalone.js").write_text(ANALYTICS_JS)
    special = {
        "db": str(tmp_path / "elsewhere.db"),
        "port": str(free_port()),
        "writer_cpus": str(max(os.sched_getaffinity(0))),
        "analytics_js": str(tmp_path / "umd"),
    }
    if setting.name in special:
        return special[setting.name]
    if setting.choices:
        return next(choice for choice in setting.choices if choice != setting.default_for(command))
    assert setting.example != setting.default_for(command)
    return setting.example


def expected_stripped(fragments: tuple[str, ...]) -> list[str]:
    return [key for key in PROBE_KEYS if any(fragment in key.lower() for fragment in fragments)]


def expected_allowed(names: tuple[str, ...]) -> list[str]:
    assert ALLOW_PROBE in names, "the example of pii_allow names the probe key"
    return [ALLOW_PROBE]


# ---------------------------------------------------------------- the registry


def test_each_setting_declared_once_with_a_valid_default_and_example():
    for attribute in ("name", "option", "variable"):
        values = [getattr(s, attribute) for s in SETTINGS if getattr(s, attribute)]
        assert len(values) == len(set(values)), attribute
    for setting in SETTINGS:
        assert setting.variable.startswith("DRENGR_")
        assert setting.help.endswith(".") and setting.commands
        for command in setting.commands:
            setting.value(setting.default_for(command), "default")
        assert setting.example != setting.default, setting.name
        if setting.name not in MACHINE_EXAMPLES:
            example, default = (
                setting.value(setting.example, "example"),
                setting.value(setting.default, "default"),
            )
            assert example != default, setting.name


def test_config_has_a_field_per_setting_of_serve_and_wsgi():
    fields = set(Config.__dataclass_fields__)
    assert fields == {s.name for s in for_command(SERVE)} | {s.name for s in for_command(WSGI)}


BAD_VALUES = [
    # (setting, text, what the message says)
    ("port", "99999", "is not a port: pass one from 1 to 65535"),
    ("port", "0", "is not a port"),
    ("port", "80x", "is not a whole number"),
    ("threads", "0", "is less than 1: pass 1 to 1,024"),
    ("threads", "5000", "is more than 1,024: pass 1 to 1,024"),
    ("busy_timeout_ms", "4000000", "is more than 3,600,000: pass 0 to 3,600,000"),
    ("busy_timeout_ms", "-1", "must not be negative"),
    ("channel_timeout", "soon", "is not a whole number"),
    ("durability", "fast", "is not one of full, normal"),
    ("writer", "fork", "is not one of process, thread"),
    ("prefix", "/a b", "is not a URL path"),
    ("store", "mysql://x/y", "is not a postgresql:// URL"),
    ("writer_cpus", "99999", "names a CPU this machine does not give us"),
    ("writer_cpus", "one", "is not a list of CPU numbers"),
    ("db", "", "is empty"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_VALUES, ids=[f"{n}={t}" for n, t, _ in BAD_VALUES])
def test_bad_values_are_one_sentence_naming_their_source(name, text, message):
    setting = next(s for s in SETTINGS if s.name == name)
    with pytest.raises(SettingError) as from_env:
        load(setting.commands[0], {setting.variable: text})
    assert str(from_env.value).startswith(f"{setting.variable}=") and message in str(from_env.value)
    assert str(from_env.value).endswith(".") and "\n" not in str(from_env.value)
    if SERVE in setting.commands:
        with pytest.raises(SettingError) as from_option:
            cli.parse(["serve", f"{setting.option}={text}"], environ={})
        assert str(from_option.value).startswith(f"{setting.option} ") and message in str(from_option.value)


def test_an_option_wins_over_its_variable():
    args = cli.parse(["serve", "--port", "9001"], environ={"DRENGR_PORT": "9002", "DRENGR_THREADS": "3"})
    assert (args.port, args.threads) == (9001, 3)


# ---------------------------------------------------------------- the docs


def test_docs_settings_table_is_the_registry_verbatim():
    printed = subprocess.run(
        [sys.executable, "-m", "drengr.settings", "--markdown"],
        capture_output=True, text=True, env=child_env({}), timeout=HANG_GUARD_SECONDS, check=True,
    ).stdout  # fmt: skip
    assert printed == markdown_table()
    assert printed in OPERATING.read_text(), "docs/operating.md: paste `python -m drengr.settings --markdown`"
    for setting in SETTINGS:  # and so every variable is on the page
        assert f"`{setting.variable}`" in printed


# ---------------------------------------------------------------- serve


SERVE_IN_PROCESS = {
    "db", "prefix", "durability", "writer", "busy_timeout_ms", "pii_substrings", "pii_allow", "retention",
    "host", "port", "threads", "connection_limit", "channel_timeout", "analytics_js", "dedup_window_days",
}  # fmt: skip
SERVE_AS_A_PROCESS = {
    "writer_cpus", "placement", "log_level", "log_format", "clock_offset", "pii_substrings", "prefix", "port", "db",
}  # fmt: skip
STORE_UNREACHABLE = "postgresql://drengr@127.0.0.1:1/nowhere"  # nothing listens on port 1


def test_every_setting_of_serve_and_wsgi_is_checked_here():
    taken = {s.name for s in SETTINGS if {SERVE, WSGI} & set(s.commands)}
    seen_for_serve = SERVE_IN_PROCESS | SERVE_AS_A_PROCESS | {"store"}
    assert seen_for_serve == {s.name for s in SETTINGS if SERVE in s.commands}
    assert WSGI_SEEN | {"store"} == {s.name for s in SETTINGS if WSGI in s.commands}
    assert seen_for_serve | WSGI_SEEN | {"store"} == taken


def test_serve_honours_every_variable(tmp_path, monkeypatch):
    """`drengr serve` with each of its settings away from the default, in the environment only."""
    monkeypatch.chdir(tmp_path)
    settings = {s.name: s for s in for_command(SERVE) if s.name in SERVE_IN_PROCESS}
    texts = {name: non_default(s, SERVE, tmp_path) for name, s in settings.items()}
    expected = {name: settings[name].value(text, "test") for name, text in texts.items()}
    args = cli.parse(["serve"], environ={settings[name].variable: text for name, text in texts.items()})
    config = cli.serve_config(args)
    prepared = cli.prepare(config)
    try:
        server = prepared.server
        seen = observe(prepared.app)
        seen |= {
            "host": server.effective_host,
            "port": int(server.effective_port),
            "threads": len(server.task_dispatcher.threads),
            "connection_limit": server.adj.connection_limit,
            "channel_timeout": server.adj.channel_timeout,
            "db": os.path.abspath(seen["db"]),
        }
    finally:
        prepared.close()
    expected["db"] = str(tmp_path / "elsewhere.db")
    expected["pii_substrings"] = expected_stripped(expected["pii_substrings"])
    expected["pii_allow"] = expected_allowed(expected["pii_allow"])
    expected["analytics_js"] = ANALYTICS_JS
    assert {name: seen[name] for name in SERVE_IN_PROCESS} == expected
    for name in SERVE_IN_PROCESS - {
        "pii_substrings",
        "pii_allow",
        "analytics_js",
    }:  # (compared as seen, above)
        assert expected[name] != settings[name].value(settings[name].default_for(SERVE), "default"), name


def test_serve_honours_variables_as_a_process(tmp_path):
    """The real `drengr serve`, configured by variables alone: PII keys, log level, clock, writer CPUs."""
    port, cpu, offset_days = free_port(), max(os.sched_getaffinity(0)), 40
    env = child_env({
        "DRENGR_DB": str(tmp_path / "process.db"),
        "DRENGR_PORT": str(port),
        "DRENGR_PREFIX": "/segment-ingest",
        "DRENGR_PII_KEYS": "secretish",
        "DRENGR_LOG_LEVEL": "warning",
        "DRENGR_LOG_FORMAT": "text",
        "DRENGR_WRITER_CPUS": str(cpu),
        "DRENGR_PLACEMENT": "none",
        "DRENGR_CLOCK_OFFSET": str(offset_days * DAY_SECONDS),
    })  # fmt: skip
    with _serve(tmp_path, env) as (process, log, key):
        event = {
            "type": "track",
            "event": "Probe",
            "userId": "u",
            "properties": dict.fromkeys(PROBE_KEYS, "x"),
        }
        status = _post(port, "/segment-ingest/v1/track", event, key)
        assert status == 200, log.read_text()
        assert _post(port, "/v1/track", event, key) == 404  # nothing outside the prefix
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        writer_cpus = [sorted(os.sched_getaffinity(int(pid))) for pid in children]
        server_cpus = sorted(os.sched_getaffinity(process.pid))
    conn = sqlite3.connect(tmp_path / "process.db")
    [(dims, received_at)] = conn.execute("SELECT dims, received_at FROM semantic_events").fetchall()
    conn.close()
    output = log.read_text()
    assert stripped(set(json.loads(dims))) == [
        "secretish_v"
    ]  # DRENGR_PII_KEYS replaces the list: email is kept
    assert writer_cpus == [[cpu]]  # one writer process, on the CPU named
    assert server_cpus == sorted(os.sched_getaffinity(0))  # --placement none: the server where it started
    assert "Listening on" in output and '"method": "POST"' not in output  # warning: no access lines
    assert output.split()[1:3] == ["info", "drengr.server"]  # text: TIME LEVEL LOGGER message, not JSON
    shifted = datetime.strptime(received_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert abs(shifted - (datetime.now(UTC).timestamp() + offset_days * DAY_SECONDS)) < DAY_SECONDS / 2


TWO_CPUS = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2,
    reason="placement needs two CPUs or more: runs on such a machine, as in CI",
)


def _placed_in_a_thread(config: Config, cpus: set[int] | None = None) -> tuple[Config, list[int]]:
    """cli.placed(config) on a thread of its own (affinity is per thread; this one's stays): what it
    returned, and the CPUs the thread may run on afterwards."""
    result: list[Any] = []

    def place() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        result.append(cli.placed(config))
        result.append(sorted(os.sched_getaffinity(0)))

    thread = threading.Thread(target=place)
    thread.start()
    thread.join()
    return result[0], result[1]


@TWO_CPUS
def test_placement_auto_puts_the_server_and_its_writer_process_on_cpus_of_their_own(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    config = Config(db=str(tmp_path / "d.db"), writer="process")
    assert config.placement == "auto"  # serve's default (its writer default is process)
    placed, server = _placed_in_a_thread(config)
    assert placed.writer_cpus == (allowed[-1],) and server == [allowed[-2]]
    # --writer-cpus chosen: the server takes another CPU
    placed, server = _placed_in_a_thread(replace(config, writer_cpus=(allowed[0],)))
    assert placed.writer_cpus == (allowed[0],) and server == [allowed[-1]]


@TWO_CPUS
@pytest.mark.parametrize(
    "change",
    [{"placement": "none"}, {"writer": "thread"}, {"store": "postgresql://drengr@127.0.0.1/x"}],
    ids=["placement none", "writer thread", "PostgreSQL"],
)
def test_placement_leaves_the_server_where_it_is(tmp_path, change):
    config = replace(Config(db=str(tmp_path / "d.db"), writer="process"), **change)
    assert _placed_in_a_thread(config) == (config, sorted(os.sched_getaffinity(0)))


@TWO_CPUS
def test_placement_with_one_cpu_to_choose_from_places_nothing(tmp_path):
    only = max(os.sched_getaffinity(0))
    config = Config(db=str(tmp_path / "d.db"), writer="process")
    assert _placed_in_a_thread(config, {only}) == (config, [only])
    # and the writer's CPU as the only one: nothing left for the server
    writer_there = replace(config, writer_cpus=(only,))
    assert _placed_in_a_thread(writer_there, {only}) == (writer_there, [only])


@TWO_CPUS
def test_serve_places_itself_and_its_writer_process(tmp_path):
    """The real `drengr serve` with the defaults: its threads on one CPU, its writer process on another."""
    port = free_port()
    env = child_env({"DRENGR_DB": str(tmp_path / "placed.db"), "DRENGR_PORT": str(port)})
    with _serve(tmp_path, env) as (process, log, key):
        event = {"type": "track", "event": "Placed", "userId": "u"}
        assert _post(port, "/v1/track", event, key) == 200, log.read_text()
        [child] = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        writer_cpus = sorted(os.sched_getaffinity(int(child)))
        server_cpus = _threads_cpus(process.pid)
        # The writer's threads: itself and its checkpointer on its CPU; the read side's builder,
        # started by the first commit, on every CPU (it builds in their idle time).
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while len(child_cpus := _threads_cpus(int(child))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    allowed = sorted(os.sched_getaffinity(0))
    assert writer_cpus == [allowed[-1]]
    assert server_cpus == {(allowed[-2],)}  # every thread of the server, waitress' too
    assert child_cpus == {(allowed[-1],), tuple(allowed)}
    assert "writer process on CPUs" in log.read_text()


@contextlib.contextmanager
def _serve(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
    """The real `drengr serve` on a new database, configured by ``env``: (process, its log, the key it
    printed); stopped with SIGTERM afterwards."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "drengr", "serve"], cwd=tmp_path, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        key = process.stdout.readline().decode().strip()  # a new database: its key, once bound
        assert key.startswith("drengr_pk_"), log.read_text()
        yield process, log, key
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=HANG_GUARD_SECONDS)


def _threads_cpus(pid: int) -> set[tuple[int, ...]]:
    """The CPU sets a process's threads may run on: those still running once listed (a thread that
    ends in between, such as the drop counts' flusher, which comes and goes, has none)."""
    cpus = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpus.add(tuple(sorted(os.sched_getaffinity(int(task.name)))))
        except ProcessLookupError:
            continue
    return cpus


def _post(port: int, path: str, body: dict[str, Any], key: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_SECONDS)
    try:
        headers = {"Content-Type": "application/json", **basic(key)}
        conn.request("POST", path, json.dumps(body).encode(), headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_serve_and_wsgi_honour_the_store_variable(tmp_path, monkeypatch):
    """DRENGR_STORE takes rows to PostgreSQL: here an unreachable one, so both fail naming it, and no SQLite file."""
    monkeypatch.chdir(tmp_path)
    args = cli.parse(["serve", "--port", str(free_port())], environ={"DRENGR_STORE": STORE_UNREACHABLE})
    with pytest.raises(UsageError, match="PostgreSQL store at postgresql://drengr@127.0.0.1:1/nowhere"):
        cli.prepare(cli.serve_config(args))
    result = _import_wsgi(tmp_path, {"DRENGR_STORE": STORE_UNREACHABLE}, "print('built')")
    assert result.returncode != 0 and "PostgreSQL" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- wsgi.py


WSGI_SEEN = {
    "db", "prefix", "durability", "writer", "writer_cpus", "busy_timeout_ms", "pii_substrings", "clock_offset",
    "analytics_js", "pii_allow", "retention", "dedup_window_days", "log_level", "log_format",
}  # fmt: skip


def _import_wsgi(tmp_path: Path, env: dict[str, str], then: str) -> subprocess.CompletedProcess[str]:
    program = f"import json, wsgi\nfrom tests.support.observe import observe\n{then}"
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path,
        env=child_env(env), timeout=HANG_GUARD_SECONDS,
    )  # fmt: skip


def test_wsgi_honours_every_variable(tmp_path):
    settings = {s.name: s for s in for_command(WSGI) if s.name in WSGI_SEEN}
    texts = {name: non_default(s, WSGI, tmp_path) for name, s in settings.items()}
    offset_days = -30
    env = {settings[name].variable: text for name, text in texts.items()}
    env["DRENGR_CLOCK_OFFSET"] = str(offset_days * DAY_SECONDS)
    result = _import_wsgi(
        tmp_path, env,
        "app = wsgi.application\nprint(json.dumps(observe(app)))\napp.extensions['drengr'].store.close()",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    expected = {name: settings[name].value(text, "test") for name, text in texts.items()}
    expected["pii_substrings"] = expected_stripped(expected["pii_substrings"])
    expected["pii_allow"] = expected_allowed(expected["pii_allow"])
    expected["writer_cpus"] = list(expected["writer_cpus"])
    expected["analytics_js"] = ANALYTICS_JS
    assert {name: seen[name] for name in settings} == expected
    assert expected["writer"] == "process" != Config().writer  # wsgi.py's default is thread
    shifted = datetime.strptime(seen["received_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert abs(shifted - (datetime.now(UTC).timestamp() + offset_days * DAY_SECONDS)) < DAY_SECONDS / 2


def test_wsgi_keeps_the_logging_its_host_set_up(tmp_path):
    """A WSGI server that set up logging itself (gunicorn's logconfig_dict, uwsgi, an app mounting
    drengr) keeps its handlers: drengr's lines go there, at its level, not to a stderr of drengr's."""
    program = (
        "import logging\n"
        "host = logging.FileHandler('host.log')\n"
        "logging.basicConfig(level=logging.INFO, handlers=[host])\n"
        "import drengr.wsgi as wsgi\n"
        "assert logging.getLogger().handlers == [host], logging.getLogger().handlers\n"
        "logging.getLogger('drengr.access').info('through the host')\n"
        "wsgi.application.extensions['drengr'].store.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path,
        env=child_env({"DRENGR_DB": str(tmp_path / "d.db")}), timeout=HANG_GUARD_SECONDS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "through the host" in (tmp_path / "host.log").read_text()


def test_wsgi_refuses_a_bad_variable_in_one_sentence(tmp_path):
    result = _import_wsgi(tmp_path, {"DRENGR_DURABILITY": "fast"}, "print('built')")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "drengr: DRENGR_DURABILITY=fast is not one of full, normal: pick one.\n"
    assert list(tmp_path.iterdir()) == []


def test_settings_not_taken_by_an_entry_point_are_not_read_there():
    """A serve-only variable means nothing to wsgi.py (gunicorn binds): a bad one is not an error there."""
    assert Config.from_env({"DRENGR_PORT": "99999"}).port == Config().port


def test_retention_must_outlast_the_dedup_window():
    """Retention keeps twice the dedup window and a day (a resent event must find its first copy)."""
    with pytest.raises(SettingError, match=r"^DRENGR_RETENTION=10d is shorter than 15 days: a 7-day dedup"):
        Config.from_env({"DRENGR_RETENTION": "10d"})
    config = Config.from_env({"DRENGR_RETENTION": "3d", "DRENGR_DEDUP_WINDOW_DAYS": "1"})
    assert (config.retention, config.dedup_window_days) == (3 * DAY_SECONDS, 1)
    with pytest.raises(SettingError, match=r"^--retention 2d is shorter than 3 days: a 1-day dedup"):
        cli.parse(["serve", "--retention", "2d", "--dedup-window-days", "1"], environ={})
