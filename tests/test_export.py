"""`drengr export` and `drengr datasette` (drengr.cli_export), run as real processes on real databases.

Every file an export writes is read back by DuckDB and pandas (and CSV by the
csv module): the rows, their types and their JSON must come back as stored.
Datasette runs for real on the shipped metadata.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from drengr import cli_export
from drengr.store import SQLiteStore, open_store
from drengr.store.reader import EXPORT_COLUMNS, EventQuery, SQLiteReader

from .support.realserver import free_port

pytestmark = pytest.mark.dated  # run again with the clock far from today (tests/test_any_date.py)

duckdb = pytest.importorskip("duckdb", reason="pip install '.[test]' (duckdb reads the exports back)")
pd = pytest.importorskip("pandas", reason="pip install '.[test]' (pandas reads the exports back)")
pytest.importorskip("pyarrow", reason="pip install '.[test]' (pyarrow writes Parquet)")

SRC = Path(__file__).resolve().parents[1] / "src"
HANG_GUARD_SECONDS = 60  # a generous hang guard, not a speed limit
RECEIVED_MS = (
    1_795_660_000_000  # what the store is told the batch was received at (rows carry their own times)
)


def row(i: int) -> tuple[Any, ...]:
    """Event i: tenant acme (globex every third), one minute apart, a dim with a comma and quotes."""
    return (
        "globex" if i % 3 == 0 else "acme",
        f"e{i}",
        "order_completed" if i % 2 else "signed_up",
        "track",
        None if i % 5 == 0 else f"u{i % 7}",
        f"a{i}",
        f"2026-11-26T00:{i % 60:02d}:00.000Z",
        f"2026-11-26T01:{i % 60:02d}:30.250Z",
        json.dumps({"plan": 'pro, "annual"', "n": str(i)}, separators=(",", ":")),
        json.dumps({"revenue": i + 0.5}, separators=(",", ":")),
        None if i % 4 == 0 else "analytics-python 2.4.0",
    )


ROWS = [row(i) for i in range(1, 60)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "drengr.db"
    store = SQLiteStore(str(path))
    assert store.write("acme", ROWS, RECEIVED_MS).stored == len(ROWS)
    store.close()
    return path


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return {k: v for k, v in env.items() if not k.startswith("DRENGR_") or k == "DRENGR_CLOCK_OFFSET"}


def drengr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = _env()
    return subprocess.run(
        [sys.executable, "-m", "drengr", *args], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=HANG_GUARD_SECONDS,
    )  # fmt: skip


def expected(selected: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The rows as an export should give them back: seq is the position in ROWS (the store's order)."""
    out = []
    for tuple_ in selected:
        seq = ROWS.index(tuple_) + 1
        item = dict(zip(EXPORT_COLUMNS, (seq, *tuple_), strict=True))
        item["dims"], item["measures"] = json.loads(item["dims"]), json.loads(item["measures"])
        out.append(item)
    return out


def read_back(path: Path, kind: str) -> list[dict[str, Any]]:
    """The file as DuckDB reads it: times as stored text, dims and measures parsed from its JSON."""
    source = {"parquet": "read_parquet", "csv": "read_csv", "ndjson": "read_json"}[kind]
    options = {"parquet": "", "csv": ", all_varchar=true", "ndjson": ", format='newline_delimited'"}[kind]
    relation = duckdb.sql(f"select * from {source}('{path}'{options}) order by cast(seq as bigint)")
    result = []
    for values in relation.fetchall():
        item = dict(zip(relation.columns, values, strict=True))
        for name in ("occurred_at", "received_at"):
            if not isinstance(item[name], str):  # Parquet: a UTC timestamp
                item[name] = (
                    item[name].strftime("%Y-%m-%dT%H:%M:%S.") + f"{item[name].microsecond // 1000:03d}Z"
                )
        for name in ("dims", "measures"):
            text = item[name] if isinstance(item[name], str) else json.dumps(item[name])
            item[name] = json.loads(text)
        item["seq"] = int(item["seq"])
        for name in ("external_id", "library"):
            if item[name] == "":  # CSV has no NULL: an empty field
                item[name] = None
        result.append(item)
    return result


FORMATS = [
    pytest.param("events.parquet", "parquet", id="parquet"),
    pytest.param("events.csv", "csv", id="csv"),
    pytest.param("events.ndjson", "ndjson", id="ndjson"),
    pytest.param("events.jsonl", "ndjson", id="jsonl-is-ndjson"),
]

FILTERS = [
    pytest.param([], ROWS, id="everything"),
    pytest.param(["--tenant", "acme"], [r for r in ROWS if r[0] == "acme"], id="one-tenant"),
    pytest.param(
        ["--since", "2026-11-26T01:10:00Z", "--until", "2026-11-26T01:20:00Z"],
        [r for r in ROWS if "2026-11-26T01:10" <= r[7] < "2026-11-26T01:20"],
        id="received-window",
    ),
    pytest.param(
        ["--occurred", "--since", "2026-11-26T00:50:00Z", "--tenant", "globex"],
        [r for r in ROWS if r[6] >= "2026-11-26T00:50" and r[0] == "globex"],
        id="occurred-since-and-tenant",
    ),
    pytest.param(["--event-name", "signed_up"], [r for r in ROWS if r[2] == "signed_up"], id="event-name"),
]


@pytest.mark.parametrize(("name", "kind"), FORMATS)
@pytest.mark.parametrize(("options", "selected"), FILTERS)
def test_export_reads_back_as_stored(
    db: Path, tmp_path: Path, name: str, kind: str, options: list[str], selected: list[tuple[Any, ...]]
) -> None:
    output = tmp_path / name
    # 7 rows a chunk: every export here spans several chunks (and Parquet row groups).
    done = drengr("export", "--db", str(db), str(output), "--chunk-rows", "7", *options)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{len(selected)} events written to {output} ({kind})\n"
    assert done.stderr == ""  # not a terminal: no progress line
    assert read_back(output, kind) == expected(selected)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_pandas_reads_each_format_with_its_types(db: Path, tmp_path: Path) -> None:
    for name in ("e.parquet", "e.csv", "e.ndjson"):
        assert drengr("export", "--db", str(db), str(tmp_path / name)).returncode == 0
    parquet = pd.read_parquet(tmp_path / "e.parquet")
    assert list(parquet.columns) == list(EXPORT_COLUMNS)
    assert str(parquet["received_at"].dtype) == "datetime64[ms, UTC]"
    assert str(parquet["seq"].dtype) == "int64"
    assert parquet["received_at"].iloc[0] == pd.Timestamp("2026-11-26T01:01:30.250Z")
    frame = pd.read_csv(tmp_path / "e.csv")
    assert frame["measures"].map(lambda text: json.loads(text)["revenue"]).sum() == sum(
        i + 0.5 for i in range(1, 60)
    )
    lines = pd.read_json(tmp_path / "e.ndjson", lines=True)
    assert lines["dims"].iloc[0] == {"plan": 'pro, "annual"', "n": "1"}  # an object, not a string
    assert len(parquet) == len(frame) == len(lines) == len(ROWS)


def test_parquet_has_a_row_group_per_chunk(db: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    output = tmp_path / "e.parquet"
    assert drengr("export", "--db", str(db), str(output), "--chunk-rows", "10").returncode == 0
    assert [pq.ParquetFile(output).metadata.row_group(i).num_rows for i in range(6)] == [10] * 5 + [9]


def test_an_interrupted_export_leaves_no_file(db: Path, tmp_path: Path) -> None:
    """Ctrl-C after the first chunk: neither the file nor its temporary name remains."""

    class CtrlCAfterFirstChunk(cli_export.Progress):
        def update(self, rows: int, done: float) -> None:
            raise KeyboardInterrupt

    reader = SQLiteReader(str(db))
    output = tmp_path / "e.csv"
    with pytest.raises(KeyboardInterrupt), cli_export._replaced_at_the_end(output) as temporary:
        cli_export.write_export(
            reader, EventQuery(None, order="asc"), cli_export.CSVWriter(temporary), 5,
            CtrlCAfterFirstChunk(sys.stderr, True),
        )  # fmt: skip
    reader.close()
    # The database's own files (its user index's, its dedup window's), no e.csv nor a temporary one.
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith("drengr-users.db")} == {
        "drengr.db", "drengr.db-shm", "drengr.db-wal", "drengr.db-writer.lock", "drengr.db-builder.lock",
        "drengr.db-window",
    }  # fmt: skip


def many_rows(path: Path, count: int) -> Path:
    """A database of ``count`` rows (ROWS over and over, each id its own), written 1,000 at a time."""
    store = SQLiteStore(str(path))
    for first in range(0, count, 1_000):
        rows = [(*row[:1], f"{first}-{n}", *row[2:]) for n, row in enumerate(ROWS * (1_000 // len(ROWS) + 1))]
        assert store.write("acme", rows[:1_000], RECEIVED_MS).stored == 1_000
    store.close()
    return path


def test_a_stop_just_as_the_temporary_file_is_made_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands right after the export's temporary file is made (CI caught one, the file
    left behind) removes it as any later one does."""
    from drengr import cli_export

    def close_then_stop(fd: int) -> None:
        os_close(fd)
        raise KeyboardInterrupt

    os_close = os.close
    monkeypatch.setattr(cli_export.os, "close", close_then_stop)
    with pytest.raises(KeyboardInterrupt), cli_export._replaced_at_the_end(tmp_path / "e.csv"):
        pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_export_stopped_by_a_signal_says_so_and_leaves_no_file(tmp_path: Path, stop: int) -> None:
    """Ctrl-C or a service manager's SIGTERM in the middle of an export (a chunk a row, so it is
    still running): one sentence, status 130, neither the file nor its temporary one left."""
    many_rows(tmp_path / "drengr.db", 60_000)
    # A suite started with Ctrl-C ignored (a background job of a shell) would pass that on to the
    # export, which then keeps it ignored, as programs do: caught here while the export starts, it
    # starts at its default.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        export = subprocess.Popen(
            [sys.executable, "-m", "drengr", "export", "e.csv", "--chunk-rows", "1", "--quiet"],
            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        deadline = time.monotonic() + 30
        while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and export.poll() is None
            time.sleep(0.01)
        export.send_signal(stop)  # (its 60,000 chunks take it a second or more)
        out, err = export.communicate(timeout=30)
    finally:
        if export.poll() is None:
            export.kill()
            export.wait()
    assert (export.returncode, out, err) == (
        130,
        "",
        "drengr: Stopped; run the same command again to go on.\n",
    )
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".e.csv", "e.csv"))]


@pytest.mark.parametrize("kind", ["ndjson", "csv", "parquet"])
def test_export_to_stdout_is_the_same_rows(db: Path, tmp_path: Path, kind: str) -> None:
    """`drengr export - --format …`: the rows on stdout (for a pipe), what it did on stderr."""
    import io

    done = subprocess.run(
        [sys.executable, "-m", "drengr", "export", "-", "--format", kind, "--db", str(db), "--quiet"],
        capture_output=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode() == f"{len(ROWS)} events written to stdout ({kind})\n"
    assert not (tmp_path / "-").exists() and not (db.parent / "-").exists()
    to_file = drengr("export", "--db", str(db), str(tmp_path / f"e.{kind}"))
    assert to_file.returncode == 0, to_file.stderr
    if kind == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(io.BytesIO(done.stdout)).equals(pq.read_table(tmp_path / f"e.{kind}"))
    else:
        assert done.stdout == (tmp_path / f"e.{kind}").read_bytes()


def test_export_to_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`drengr export - --format ndjson | head -1`: one line read, the pipe closed; no traceback."""
    path = many_rows(tmp_path / "drengr.db", 20_000)
    export = subprocess.Popen(
        [sys.executable, "-m", "drengr", "export", "-", "--format", "ndjson", "--db", str(path), "--chunk-rows", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    assert export.stdout is not None and export.stderr is not None
    assert json.loads(export.stdout.readline())["seq"] == 1
    export.stdout.close()
    assert export.wait(timeout=60) == 0
    assert export.stderr.read() == b""


def test_a_failed_export_keeps_the_old_file(tmp_path: Path) -> None:
    """A file that is not drengr's database fails the export; what --force would replace stays as it was."""
    other = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(other).execute("create table t (x)").connection.commit()
    output = tmp_path / "e.parquet"
    output.write_text("yesterday's export")
    failed = drengr("export", "--db", str(other), str(output), "--force")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "semantic_events" in failed.stderr
    assert output.read_text() == "yesterday's export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet", "other.db"]


MISTAKES = [
    pytest.param(["events.xlsx"], "end it in .parquet, .csv or .ndjson", id="unknown-suffix"),
    pytest.param(["exists.csv"], "exists: pass --force", id="exists"),
    pytest.param(["nowhere/e.csv"], "No folder nowhere", id="no-folder"),
    pytest.param(["e.csv", "--since", "yesterday"], "--since 'yesterday' is not a time", id="bad-time"),
    pytest.param(["e.csv", "--db", "typo.db"], "No database at typo.db", id="no-database"),
    pytest.param(
        ["-"], "Say the format of what goes to stdout: --format csv, ndjson or parquet.", id="stdout-format"
    ),
    pytest.param(["e.csv", "--chunk-rows", "0"], "must be from 1 to 1000000", id="chunk-rows"),
    pytest.param(
        ["x" * 300 + ".csv"], "(File name too long): choose a path you can write to", id="name-too-long"
    ),
    pytest.param(["/proc/e.csv"], "Cannot write /proc/e.csv", id="not-writable"),
    # --force over the database itself, its users file or a file beside it would replace them.
    *(
        pytest.param([name, "--format", "csv", "--force"], "one of the database's own files", id=name)
        for name in ("drengr.db", "./drengr-users.db", "drengr.db-window")
    ),
]


def test_export_refuses_the_files_sqlite_keeps_beside_a_database_reached_through_a_symlink(
    db: Path, tmp_path: Path
) -> None:
    """SQLite names the WAL after the file a symlink points at: through a link elsewhere, its -wal
    is still the database's, and --force must not replace it."""
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "link.db"
    link.symlink_to(db)
    wal = db.parent / f"{db.name}-wal"
    wal.write_bytes(b"")  # (as a server holding the database open has it)
    for target in (wal, db.parent / f"{db.name}-shm", link):
        done = drengr("export", "--db", str(link), str(target), "--format", "ndjson", "--force")
        assert done.returncode == 2 and "one of the database's own files" in done.stderr, (
            target,
            done.stderr,
        )
    assert wal.read_bytes() == b""


def test_export_takes_names_that_only_begin_like_the_databases(db: Path) -> None:
    """Only the files SQLite and drengr keep beside the database are refused, not every name that
    begins with its own: drengr.db-2026-12.csv, or ev-2026-12.csv beside a database named ev."""
    bare = db.parent / "ev"
    db.rename(bare)
    for name in ("ev-2026-12.csv", "ev.db-2026-12.csv", "ev-users-2026.csv"):
        done = drengr("export", "--db", "ev", name, cwd=db.parent)
        assert done.returncode == 0, (name, done.stderr)
        assert (db.parent / name).exists()


@pytest.mark.parametrize(("args", "says"), MISTAKES)
def test_mistakes_are_one_sentence_and_create_nothing(db: Path, args: list[str], says: str) -> None:
    (db.parent / "exists.csv").write_text("keep")
    before = sorted(p.name for p in db.parent.iterdir())
    done = drengr("export", "--db", db.name, *args, cwd=db.parent)
    assert done.returncode == 2, done.stdout
    assert says in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in db.parent.iterdir()) == before
    assert (db.parent / "exists.csv").read_text() == "keep"


def test_export_from_postgresql(tmp_path: Path) -> None:
    from .support import postgres as pg

    with pg.fresh_schema() as dsn:
        schema = pg.query(dsn, "SELECT current_schema()")[0][0]
        uri = pg.with_schema(pg.server_dsn(), schema)
        store = open_store(uri)
        try:
            assert store.write("acme", ROWS, RECEIVED_MS).stored == len(ROWS)
        finally:
            store.close()
        first_seq = pg.query(dsn, "SELECT min(seq) FROM semantic_events")[0][0]
        for kind in ("parquet", "csv", "ndjson"):
            output = tmp_path / f"e.{kind}"
            done = drengr("export", "--store", uri, str(output), "--tenant", "acme", "--chunk-rows", "4")
            assert done.returncode == 0, done.stderr
            got = read_back(output, kind)
            want = expected([r for r in ROWS if r[0] == "acme"])
            for item in want:  # PostgreSQL numbers its rows from its own sequence
                item["seq"] += first_seq - 1
            assert got == want


# ---------------------------------------------------------------- datasette


def test_datasette_metadata_names_the_database_and_hides_keys(db: Path) -> None:
    done = drengr("datasette", "--db", str(db), "--print-metadata")
    assert done.returncode == 0, done.stderr
    metadata = json.loads(done.stdout)
    tables = metadata["databases"]["drengr"]["tables"]  # the file is drengr.db: Datasette names it drengr
    assert tables["api_keys"] == {"hidden": True}
    assert tables["semantic_events"]["facets"] == ["event_type", "event_name"]
    assert set(tables["semantic_events"]["columns"]) == set(EXPORT_COLUMNS)
    assert {"event_rollups", "measure_rollups"} <= set(tables)
    renamed = db.parent / "events-2026.db"
    db.rename(renamed)
    again = json.loads(drengr("datasette", "--db", str(renamed), "--print-metadata").stdout)
    assert list(again["databases"]) == ["events-2026", "events-2026-users"]  # and its user index's file
    assert set(again["databases"]["events-2026-users"]["queries"]) == {"distinct_users"}


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status, body[:300])
        return json.loads(body)
    finally:
        conn.close()


def start_datasette(db: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`drengr datasette` on a free port, once Datasette itself answers there (its /-/versions.json).

    A port found free can be taken by another test's server before Datasette binds it: Datasette
    then exits, and it starts again on another port (three tries).
    """
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for _ in range(3):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "drengr", "datasette", "--db", str(db), "--", "--port", str(port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while process.poll() is None:
            try:
                if "datasette" in get_json(port, "/-/versions.json"):
                    return process, port
            except (OSError, AssertionError):  # not up yet, or another server on the port
                pass
            if time.monotonic() > deadline:
                process.terminate()
                process.wait(timeout=HANG_GUARD_SECONDS)
                raise AssertionError(f"datasette did not answer ({HANG_GUARD_SECONDS} s hang guard)")
            time.sleep(0.2)
        output = process.stdout.read().decode() if process.stdout else ""
        if "address already in use" not in output.lower():
            raise AssertionError(f"datasette exited: {output[-2000:]}")
    raise AssertionError("datasette found its port taken three times")


def test_drengr_datasette_serves_facets_hidden_keys_and_the_analyst_queries(tmp_path: Path) -> None:
    pytest.importorskip("datasette", reason="pip install '.[test]' (Datasette)")
    # The canned queries look back 30 days from SQLite's `now` (the system clock, which no test
    # offsets): these rows are received today by that clock.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    db = tmp_path / "drengr.db"
    store = SQLiteStore(str(db))
    rows = [(*r[:6], today + r[6][10:], today + r[7][10:], *r[8:]) for r in ROWS]
    assert store.write("acme", rows, RECEIVED_MS).stored == len(ROWS)
    store.close()
    process, port = start_datasette(db)
    try:
        listing = get_json(port, "/drengr.json")
        hidden = {t["name"]: t["hidden"] for t in listing["tables"]}
        assert hidden["api_keys"] is True and hidden["semantic_events"] is False
        table = get_json(port, "/drengr/semantic_events.json?_size=1")
        facets = table["facet_results"]
        counts = {r["value"]: r["count"] for r in facets["event_name"]["results"]}
        assert counts == {"order_completed": 30, "signed_up": 29}
        assert [r["count"] for r in facets["event_type"]["results"]] == [59]
        by_day = get_json(port, "/drengr/revenue_by_day.json?_shape=array")
        assert by_day == [{"day": today, "revenue": sum(i + 0.5 for i in range(1, 60))}]
        users = get_json(port, "/drengr-users/distinct_users.json?_shape=array")
        assert users == [
            {"tenant_id": tenant, "day": today, "users": len({r[4] for r in ROWS if r[0] == tenant and r[4]})}
            for tenant in ("acme", "globex")
        ]
        assert users[0]["users"] == 7
        per_day = get_json(port, "/drengr/events_per_day_by_name.json?_shape=array")
        assert per_day == [
            {"day": today, "event_name": "order_completed", "events": 30},
            {"day": today, "event_name": "signed_up", "events": 29},
        ]
    finally:
        process.terminate()
        process.wait(timeout=HANG_GUARD_SECONDS)
    assert process.returncode == 0  # a stop asked for (systemd's SIGTERM): a clean exit
    with pytest.raises(OSError):  # datasette, its child, went with it: nothing answers on the port
        get_json(port, "/drengr.json")
