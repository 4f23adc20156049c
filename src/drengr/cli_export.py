"""`drengr export` and `drengr datasette`: ``semantic_events`` out to files and tools for analysis.

``export`` streams the rows a tenant and a time range select to Parquet
(through pyarrow, the ``export`` extra), CSV or NDJSON, a chunk at a time:
memory holds one chunk, whatever the table's size. It writes to a hidden
temporary name beside the output and renames it at the end, so a failed or
interrupted export leaves no partial file. A progress line goes to stderr
when stderr is a terminal, nothing otherwise.

``dims`` and ``measures`` stay JSON text, one column each (docs/reading.md
"Export for analysis" says why): DuckDB, pandas and SQLite read them with
their JSON functions.

``db backfill-rollups`` (``backfill``, wired in ``drengr.cli``'s ``db`` group)
counts an older database's rows into the read side's rollups.

``datasette`` runs Datasette on the SQLite file with the metadata shipped in
this package (``datasette.json``: titles, descriptions, facets, the analyst
queries, ``api_keys`` hidden), or prints that metadata for ``datasette
--metadata``.

Reads through ``drengr.store.reader`` (read-only), so both run beside a
serving process. A user mistake prints one sentence and returns 2.
"""

import argparse
import contextlib
import csv
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TextIO

from . import clock, settings
from .cli_common import (
    UsageError,
    add_version,
    check_read_scope,
    check_where,
    older_layout,
    redact_url,
    require_postgres_tables,
)
from .settings import SettingError
from .store import is_postgres_url
from .store.base import StoreError, first_line
from .store.reader import EXPORT_COLUMNS, EventQuery, Reader, parse_time, reader_for_location
from .store.sqlite.read_side import users_path

COMMANDS = ("export", "datasette")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}
CHUNK_ROWS = 50_000  # one Parquet row group; ~40 MB of Python objects at the largest rows the contract allows
TIME_COLUMNS = ("occurred_at", "received_at")
JSON_COLUMNS = ("dims", "measures")
METADATA = "datasette.json"


def _chunk_rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to 1000000")
    return value


def add_commands(subparsers: Any) -> None:
    """Add `export` and `datasette` to `drengr`'s subcommands."""
    help = "write events to Parquet, CSV or NDJSON for analysis, by tenant and time"
    export = subparsers.add_parser("export", help=help, description=help + ".")
    add_version(export)
    settings.add_options(export, settings.EXPORT)  # --db, --store, --tenant
    export.add_argument(
        "output",
        metavar="FILE",
        help="the file to write: .parquet, .csv or .ndjson; - for stdout (with --format)",
    )
    export.add_argument(
        "--format", choices=sorted(set(FORMATS.values())), help="the file's format (default: from its name)"
    )
    export.add_argument("--since", help="ISO-8601 time, date, or a duration ago: 90s, 15m, 2h, 7d")
    export.add_argument("--until", help="exclusive end, same forms as --since (default: now)")
    export.add_argument(
        "--occurred", action="store_true", help="compare times with occurred_at, not received_at"
    )
    export.add_argument("--event-name", help="only this (stored, normalised) event name")
    export.add_argument("--force", action="store_true", help="replace FILE if it exists")
    export.add_argument("--quiet", action="store_true", help="no progress line, even on a terminal")
    export.add_argument(
        "--chunk-rows",
        type=_chunk_rows,
        default=CHUNK_ROWS,
        help=f"rows read and written at a time ({CHUNK_ROWS:,})",
    )

    help = "browse the SQLite database in Datasette with drengr's metadata (titles, facets, queries)"
    datasette = subparsers.add_parser("datasette", help=help, description=help + ".")
    add_version(datasette)
    settings.add_options(datasette, settings.DATASETTE)  # --db
    datasette.add_argument(
        "--print-metadata",
        action="store_true",
        help="print the metadata JSON for datasette --metadata and stop",
    )
    datasette.add_argument(
        "datasette_args",
        nargs=argparse.REMAINDER,
        metavar="-- ...",
        help="what follows -- goes to `datasette serve` (-- --port 8001 --host 0.0.0.0)",
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run `export` or `datasette`; 0 on success, 2 (and one sentence on stderr) for a user mistake."""
    out = out or sys.stdout
    try:
        if not getattr(args, "settings_resolved", False):
            settings.resolve(args)
        if args.command == "export":
            return export(args, out)
        return datasette(args, out)
    except (UsageError, SettingError) as error:
        print(f"drengr: {error}", file=sys.stderr)
        return 2
    except StoreError as error:
        where = redact_url(getattr(args, "store", None) or args.db)
        print(f"drengr: Cannot read {where} ({first_line(error)}): {check_where(args)}.", file=sys.stderr)
        return 2
    except OSError as error:  # export's output: a folder not ours to write, a name too long, a full disk
        if args.command != "export":
            raise
        reason = error.strerror or str(error)
        print(
            f"drengr: Cannot write {args.output} ({reason}): choose a path you can write to.", file=sys.stderr
        )
        return 2


# ---------------------------------------------------------------- export


def export_format(output: str, given: str | None) -> str:
    if given:
        return given
    found = FORMATS.get(Path(output).suffix.lower())
    if found is None:
        raise UsageError(
            f"Cannot tell the format of {output!r} from its name: end it in .parquet, .csv or .ndjson, "
            "or pass --format."
        )
    return found


def export_query(args: argparse.Namespace, now_ms: int) -> EventQuery:
    times: dict[str, str | None] = {}
    for name in ("since", "until"):
        raw = getattr(args, name)
        if raw is None:
            times[name] = None
            continue
        times[name] = parse_time(raw, now_ms)
        if times[name] is None:
            raise UsageError(f"--{name} {raw!r} is not a time: give 2026-11-26T02:50:53Z, 2026-11-26 or 15m.")
    return EventQuery(
        tenant_id=args.tenant,
        since=times["since"],
        until=times["until"],
        time_field="occurred_at" if args.occurred else "received_at",
        event_name=args.event_name,
        order="asc",
    )


class _Writer(Protocol):
    def write(self, rows: list[tuple[Any, ...]]) -> None: ...

    def close(self) -> None: ...


def _text_file(path: str | int, newline: str | None = None) -> TextIO:
    """The export's file, or a descriptor (stdout) left open when it is closed."""
    return open(path, "w", newline=newline, encoding="utf-8", closefd=isinstance(path, str))  # noqa: SIM115


class CSVWriter:
    """A header, then the rows as stored: times as their text, dims and measures as JSON text."""

    def __init__(self, path: str | int) -> None:
        self._file = _text_file(path, newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(EXPORT_COLUMNS)

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        self._csv.writerows(rows)

    def close(self) -> None:
        self._file.close()


class NDJSONWriter:
    """One JSON object a line, the columns in order; dims and measures are objects, not strings."""

    _SPLIT = EXPORT_COLUMNS.index("dims")

    def __init__(self, path: str | int) -> None:
        self._file = _text_file(path)
        self._keys = [json.dumps(name) + ":" for name in EXPORT_COLUMNS]

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        lines = []
        for row in rows:
            # dims and measures are already JSON text (SQLite's own, or PostgreSQL's jsonb as text):
            # written as they are, not parsed and dumped again.
            parts = [
                key + (value if column in JSON_COLUMNS else json.dumps(value, ensure_ascii=False))
                for key, column, value in zip(self._keys, EXPORT_COLUMNS, row, strict=True)
            ]
            lines.append("{" + ",".join(parts) + "}\n")
        self._file.write("".join(lines))

    def close(self) -> None:
        self._file.close()


class ParquetWriter:
    """A row group per chunk, zstd; times as UTC timestamps (ms), the rest as stored."""

    def __init__(self, path: str | int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        time_type = pa.timestamp("ms", tz="UTC")
        self.schema = pa.schema(
            [
                pa.field(name, pa.int64() if name == "seq" else time_type if name in TIME_COLUMNS else pa.string(),
                         nullable=name in ("external_id", "library"))
                for name in EXPORT_COLUMNS
            ]
        )  # fmt: skip
        # A descriptor (stdout): written as a stream, its footer last; nothing needs to seek.
        where = path if isinstance(path, str) else open(path, "wb", closefd=False)  # noqa: SIM115
        self._writer = pq.ParquetWriter(where, self.schema, compression="zstd")

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        pa = self._pa
        columns = []
        for index, field in enumerate(self.schema):
            values = [row[index] for row in rows]
            if field.name in TIME_COLUMNS:
                # Stored times are one ISO-8601 form (`2026-11-26T02:50:53.123Z`): Arrow parses it.
                columns.append(pa.array(values, pa.string()).cast(field.type))
            else:
                columns.append(pa.array(values, field.type))
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


WRITERS: dict[str, type[CSVWriter] | type[NDJSONWriter] | type[ParquetWriter]] = {
    "csv": CSVWriter,
    "ndjson": NDJSONWriter,
    "parquet": ParquetWriter,
}


class Progress:
    """`  12,345 rows  48%` rewritten in place on a terminal; silent anywhere else."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.shown = False

    def update(self, rows: int, done: float, what: str = "export") -> None:
        if self.enabled:
            self.stream.write(f"\r  {what}: {rows:,} rows  {min(done, 1.0):4.0%}")
            self.stream.flush()
            self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


STDOUT = "-"  # `drengr export -`: the rows on stdout, for a pipe


def export(args: argparse.Namespace, out: TextIO) -> int:
    if args.output == STDOUT and not args.format:
        raise UsageError("Say the format of what goes to stdout: --format csv, ndjson or parquet.")
    kind = export_format(args.output, args.format)
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError(
                "Parquet export needs pyarrow: pip install 'drengr-ingest[export]', or pass --format csv "
                "or --format ndjson."
            ) from None
    to_stdout = args.output == STDOUT  # the rows as they are read, for a pipe: no file swapped in
    if to_stdout and kind == "parquet" and sys.stdout.isatty():
        raise UsageError("Parquet is binary: send stdout to a file or a pipe, or pass --format ndjson.")
    target = Path(args.output)
    if not to_stdout:
        if target.is_dir():
            raise UsageError(
                f"{args.output} is a folder: give a file name, e.g. {target / 'events.parquet'}."
            )
        if not target.parent.is_dir():
            raise UsageError(f"No folder {target.parent}: create it first, or write elsewhere.")
        if target.exists() and not args.force:
            raise UsageError(f"{args.output} exists: pass --force to replace it.")
    query = export_query(args, clock.now_ms())
    location = args.store or args.db
    if not is_postgres_url(location) and not os.path.isfile(location):
        raise UsageError(f"No database at {location}: pass the file `drengr serve` writes with --db.")
    if not to_stdout and not is_postgres_url(location) and _is_one_of_the_databases_files(target, location):
        raise UsageError(f"{args.output} is one of the database's own files: write the export elsewhere.")
    reader = reader_for_location(location)
    progress = Progress(sys.stderr, sys.stderr.isatty() and not args.quiet)
    try:
        check_read_scope(reader, args.tenant, args.since, args.until)
        if to_stdout:
            sys.stdout.flush()
            written = write_export(
                reader, query, WRITERS[kind](sys.stdout.fileno()), args.chunk_rows, progress
            )
        else:
            with _replaced_at_the_end(target) as temporary:
                written = write_export(reader, query, WRITERS[kind](temporary), args.chunk_rows, progress)
    except BrokenPipeError:
        if not to_stdout:
            raise
        # The reader went (`| head`): nothing more to say, and nothing left for Python to flush there.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        progress.finish()
        reader.close()
    if to_stdout:
        print(f"{written:,} events written to stdout ({kind})", file=sys.stderr)
    else:
        out.write(f"{written:,} events written to {args.output} ({kind})\n")
    return 0


def write_export(
    reader: Reader, query: EventQuery, writer: _Writer, chunk_rows: int, progress: Progress | None = None
) -> int:
    """Every row of ``query`` through ``writer`` (closed at the end, or on failure); the count."""
    written = 0
    try:
        for rows, done in reader.export(query, chunk_rows):
            writer.write(rows)
            written += len(rows)
            if progress is not None:
                progress.update(written, done)
    finally:
        writer.close()
    return written


# What SQLite and drengr keep beside a database (and its users file), named after it.
_BESIDE = ("", "-wal", "-shm", "-journal", "-window", "-writer.lock", "-builder.lock")


def _is_one_of_the_databases_files(target: Path, db: str) -> bool:
    """Whether ``target`` is the database at ``db``, its users file, or a file of either that SQLite
    or drengr keeps beside it: --force would replace it. drengr names its files after the path as
    given, SQLite after the file's real path (a symlink's target), so both count."""
    own = [db, users_path(db)]
    if target.exists() and any(os.path.exists(path) and os.path.samefile(target, path) for path in own):
        return True  # the file itself, by any name (a hard link too)
    places = {
        (named.parent.resolve(), named.name + suffix)
        for path in own
        for named in (Path(path), Path(os.path.realpath(path)))
        for suffix in _BESIDE
    }
    return any(
        (named.parent.resolve(), named.name) in places for named in (target, Path(os.path.realpath(target)))
    )


@contextlib.contextmanager
def _replaced_at_the_end(target: Path) -> Iterator[str]:
    """A temporary path beside ``target``, renamed to it on success and removed on any failure."""
    temporary = str(target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        # Created as open() would create it (the umask decides), not mkstemp's owner-only mode; inside
        # the try: a Ctrl-C just after it is made removes it too (its name is this process's alone).
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


# ---------------------------------------------------------------- db backfill-rollups


def backfill(args: argparse.Namespace) -> int:
    """`drengr db backfill-rollups`: count a database's older rows into its rollups, with progress."""
    from .store import SQLiteStore, open_store
    from .store.sqlite import backfill_rollups

    where = redact_url(args.store) if args.store else args.db
    if not args.store and not os.path.isfile(args.db):
        raise UsageError(f"No database at {args.db}: pass the file `drengr serve` writes with --db.")
    shown = Progress(sys.stderr, sys.stderr.isatty() and not args.quiet)

    def progress(done: int, total: int) -> None:
        shown.update(done, done / max(1, total), "backfill")

    try:
        if args.store:
            require_postgres_tables(args.store)  # never drengr's tables made in another database
            store = open_store(args.store)
            try:
                counted = store.backfill_rollups(progress=progress)  # type: ignore[attr-defined]
            finally:
                store.close()
        else:
            if older_layout(args.db):  # an older layout brought up to date first
                SQLiteStore(args.db, migrate=True).close()
            counted = backfill_rollups(args.db, progress=progress)
    except StoreError as error:
        raise UsageError(
            f"Cannot backfill {where} ({error}); run the same command again to resume."
        ) from None
    finally:
        shown.finish()
    print(f"Counted {counted:,} older events into the rollups of {where}.", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- datasette


def datasette_metadata(database: str) -> dict[str, Any]:
    """The shipped metadata with the database and its users file named as Datasette names them (the files' stems)."""
    shipped = json.loads(resources.files("drengr").joinpath(METADATA).read_text(encoding="utf-8"))
    shipped["databases"] = {
        Path(database).stem: shipped["databases"]["drengr"],
        Path(users_path(database)).stem: shipped["databases"]["drengr-users"],
    }
    return shipped


def datasette(args: argparse.Namespace, out: TextIO) -> int:
    if not os.path.isfile(args.db):
        raise UsageError(f"No database at {args.db}: pass the file `drengr serve` writes with --db.")
    passed = list(args.datasette_args)
    if passed and passed[0] == "--":
        passed = passed[1:]
    elif passed:
        raise UsageError(f"Put -- before what goes to datasette: drengr datasette -- {' '.join(passed)}")
    metadata = datasette_metadata(args.db)
    if args.print_metadata:
        out.write(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
        return 0
    try:
        import datasette as _  # noqa: F401
    except ImportError:
        raise UsageError("drengr datasette needs Datasette: pip install datasette.") from None
    with tempfile.TemporaryDirectory(prefix="drengr-datasette-") as folder:
        path = Path(folder) / "metadata.json"
        path.write_text(json.dumps(metadata), encoding="utf-8")
        # The user index's file too, once the server has made it (distinct users per day).
        users = [users_path(args.db)] if os.path.isfile(users_path(args.db)) else []
        command = [sys.executable, "-m", "datasette", "serve", args.db, *users, "--metadata", str(path),
                   *DATASETTE_SETTINGS, *passed]  # fmt: skip
        process = subprocess.Popen(command)
        stopped: list[int] = []

        def stop(signum: int, _frame: Any) -> None:
            stopped.append(signum)
            process.terminate()

        # A SIGTERM (systemd, a test, kill) goes on to datasette: it must not outlive this command,
        # and a stop asked for is a clean exit (0), not datasette's death by that signal (-15).
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            code = process.wait()
            return 0 if stopped else code
        except KeyboardInterrupt:
            return 0  # Ctrl-C reached datasette too (same process group): it stops on its own
        finally:
            signal.signal(signal.SIGTERM, previous)
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# Facets on event_name and event_type count a group over the filtered rows: give them time at
# 10M rows (Datasette's default is 200 ms, after which it drops the facet).
DATASETTE_SETTINGS = ("--setting", "facet_time_limit_ms", "30000", "--setting", "sql_time_limit_ms", "30000")
