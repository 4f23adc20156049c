"""Every setting of drengr, declared once: name, parser, default, DRENGR_ variable, help, commands.

The `drengr` options (argparse), ``Config`` (what `drengr serve` and wsgi.py
build the app from) and the settings table of docs/operating.md all come
from ``SETTINGS``; ``python -m drengr.settings --markdown`` prints that table.
A value is parsed and checked here, before a command creates anything: a bad
one raises ``SettingError``, whose message names where the value came from
(the option or the variable) and says what to do.

A setting is read, in order, from its option, its ``DRENGR_`` variable, or
its default. Per-run arguments that are not settings (`tail --lines`,
`tenants set --create`, a key to revoke) stay with their command in the CLI.

Shell side: reads the environment, which the core never does. Imports no
web framework and no store.
"""

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from . import clock
from .core.limits import DEFAULT_DEDUP_WINDOW_DAYS, DEFAULT_PII_SUBSTRINGS, min_retention_days

# Who takes a setting: the commands (as typed after `drengr`) and wsgi.py, gunicorn's entry point.
SERVE = "serve"
WSGI = "wsgi.py"
KEYS_CREATE = "keys create"
KEYS_LIST = "keys list"
KEYS_REVOKE = "keys revoke"
TENANTS_SET = "tenants set"
DB_INIT = "db init"
DB_IMPORT = "db import-sqlite"
DB_BACKFILL = "db backfill-rollups"
TAIL = "tail"
STATS = "stats"
EXPORT = "export"
DATASETTE = "datasette"
PRUNE = "prune"
KEYS = (KEYS_CREATE, KEYS_LIST, KEYS_REVOKE)
READERS = (TAIL, STATS, EXPORT)
COMMANDS = (SERVE, *KEYS, TENANTS_SET, DB_INIT, DB_IMPORT, DB_BACKFILL, *READERS, DATASETTE, PRUNE)
EVERY = (*COMMANDS, WSGI)


# Not a setting: the GIL switch interval `drengr serve` and drengr.wsgi both run with
# (docs/operating.md "The writer: process, thread or shared").
SWITCH_INTERVAL_S = 0.0001


class SettingError(ValueError):
    """A value that cannot be used; the message says where it came from and what to do."""


# ---------------------------------------------------------------- parsers
# Each takes the text (an option's or a variable's) and returns the value, or raises
# SettingError with the rest of a sentence that starts with the option and the text.


def text(raw: str) -> str:
    return raw


def optional_text(raw: str) -> str | None:
    return raw or None


def file_path(raw: str) -> str:
    if not raw.strip():
        raise SettingError("is empty: give a file path")
    return raw


def _whole(raw: str, hint: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise SettingError(f"is not a whole number: {hint}") from None


def port(raw: str) -> int:
    number = _whole(raw, "pass a port from 1 to 65535")
    if not 1 <= number <= 65535:
        raise SettingError("is not a port: pass one from 1 to 65535")
    return number


def at_least(minimum: int) -> Callable[[str], int]:
    hint = "pass 0 or more" if minimum == 0 else f"pass {minimum} or more"

    def parse(raw: str) -> int:
        number = _whole(raw, hint)
        if number < minimum:
            raise SettingError(
                ("must not be negative: " if minimum == 0 else f"is less than {minimum}: ") + hint
            )
        return number

    return parse


def between(minimum: int, maximum: int) -> Callable[[str], int]:
    """A whole number from ``minimum`` to ``maximum``: past it, a value no machine or SQLite can honour
    (a timeout past SQLite's 32-bit milliseconds is 0 to it; a hundred million threads never start)."""
    hint = f"pass {minimum:,} to {maximum:,}"

    def parse(raw: str) -> int:
        number = _whole(raw, hint)
        if number < minimum:
            raise SettingError(
                ("must not be negative: " if minimum == 0 else f"is less than {minimum}: ") + hint
            )
        if number > maximum:
            raise SettingError(f"is more than {maximum:,}: {hint}")
        return number

    return parse


def optional_count(raw: str) -> int | None:
    return None if raw == "" else at_least(0)(raw)


def clock_offset(raw: str) -> float:
    try:
        return clock.parse_offset(raw)
    except ValueError as error:
        raise SettingError(str(error)) from None


def url_path(raw: str) -> str:
    """A mount point, as "" or "/a/b": the slashes a user may add or leave out do not matter."""
    inner = raw.strip().strip("/")
    if any(char.isspace() or char in "?#%" for char in inner) or "//" in inner:
        raise SettingError("is not a URL path: pass one like /segment-ingest")
    return "/" + inner if inner else ""


def analytics_js_folder(raw: str) -> str:
    """Empty (not served), or a folder holding analytics-next's UMD build (its standalone.js)."""
    if not raw.strip():
        return ""
    folder = os.path.abspath(raw.strip())
    if not os.path.isfile(os.path.join(folder, "standalone.js")):
        raise SettingError(
            "is not a folder with analytics-next's standalone.js: pass the dist/umd folder of the npm "
            "package @segment/analytics-next"
        )
    return folder


def postgres_url(raw: str) -> str:
    if raw and not raw.strip().lower().startswith(("postgresql://", "postgres://")):
        raise SettingError(
            "is not a postgresql:// URL: pass postgresql://user@host/db (for a SQLite file, use --db)"
        )
    return raw.strip()


def fragments(raw: str) -> tuple[str, ...]:
    """Comma-separated key fragments, matched without regard to case; empty: strip nothing."""
    return tuple(part.strip().lower() for part in raw.split(",") if part.strip())


MAX_THREADS = 1_024
MAX_BUSY_TIMEOUT_MS = 3_600_000  # an hour: a request waits no longer for the lock

_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 7 * 86_400}


_LONGEST_AGE_SECONDS = 1_000 * 366 * 86_400


def age(raw: str) -> int:
    """An age as seconds: a whole number and a unit, 90d, 12w, 2160h (``check_retention`` bounds it)."""
    text = raw.strip().lower()
    if len(text) < 2 or text[-1] not in _UNITS or not text[:-1].isdigit():
        raise SettingError("is not an age: pass a whole number and a unit (s, m, h, d, w), like 90d")
    seconds = int(text[:-1]) * _UNITS[text[-1]]
    if seconds > _LONGEST_AGE_SECONDS:  # past any clock's dates (and SQLite's integers)
        raise SettingError("is longer than 1,000 years: pass a shorter age, like 90d")
    return seconds


def check_retention(seconds: int, window_days: int, where: str) -> None:
    """A retention (``seconds``) must keep the rows the dedup window may point at: 2 × the window + a day.

    ``where`` ("--retention 7d", "DRENGR_RETENTION=7d") starts the error message.
    """
    shortest = min_retention_days(window_days)
    if seconds < shortest * 86_400:
        raise SettingError(
            f"{where} is shorter than {shortest} days: a {window_days}-day dedup window keeps the last "
            f"{2 * window_days} days' events (a resent event must find its first copy); pass {shortest}d or "
            "more, or a shorter --dedup-window-days."
        )


def optional_age(raw: str) -> int | None:
    return age(raw) if raw.strip() else None


def key_names(raw: str) -> tuple[str, ...]:
    """Comma-separated exact key names (case kept); empty: none."""
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def cpus(raw: str) -> tuple[int, ...]:
    """Comma-separated CPU numbers of this machine; empty: any.

    Checked against the machine's CPUs, not this process's affinity: the server
    may itself be pinned elsewhere (``taskset -c 0 drengr serve --writer-cpus 1``).
    """
    wanted: list[int] = []
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        if not part.isdigit():
            raise SettingError("is not a list of CPU numbers: pass one like 1 or 2,3")
        wanted.append(int(part))
    allowed = set(range(os.cpu_count() or 1))
    missing = sorted(set(wanted) - allowed)
    if missing:
        usable = ",".join(str(cpu) for cpu in sorted(allowed))
        raise SettingError(f"names a CPU this machine does not give us ({missing[0]}): pick from {usable}")
    return tuple(sorted(set(wanted)))


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Setting:
    name: str  # the Config field and argparse dest
    default: str  # as text, parsed like any value; what the docs show
    help: str
    commands: tuple[str, ...]
    example: (
        str  # a valid value other than the default (the docs, and the test that every entry point reads it)
    )
    parse: Callable[[str], Any] = text
    choices: tuple[str, ...] = ()  # then the value is one of these (any case)
    option: str | None = ""  # "" means --name-with-dashes; None: no option (the variable only)
    variable: str = ""  # "" means DRENGR_NAME
    metavar: str = ""
    defaults: Mapping[str, str] = field(default_factory=dict)  # a command's own default
    testing: bool = False  # for the test suite, not for users

    def __post_init__(self) -> None:
        if self.option == "":
            object.__setattr__(self, "option", "--" + self.name.replace("_", "-"))
        if not self.variable:
            object.__setattr__(self, "variable", "DRENGR_" + self.name.upper())

    def default_for(self, command: str) -> str:
        return self.defaults.get(command, self.default)

    def value(self, raw: str, where: str) -> Any:
        """The parsed value of ``raw``; ``where`` ("--port", "DRENGR_PORT=") starts the error message."""
        try:
            if self.choices:
                if raw.strip().lower() not in self.choices:
                    raise SettingError(f"is not one of {', '.join(self.choices)}: pick one")
                return raw.strip().lower()
            return self.parse(raw)
        except SettingError as error:
            shown = shlex.quote(raw)
            raise SettingError(f"{where}{'' if where.endswith('=') else ' '}{shown} {error}.") from None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        name="db",
        default="drengr.db",
        help="The SQLite database file. Commands that may create it (serve, keys create, db init, "
        "tenants set --create) need its folder to exist and be writable; the others need the file. "
        "tail, stats and export also take a postgresql:// URL here.",
        commands=(SERVE, WSGI, *KEYS, TENANTS_SET, DB_INIT, DB_BACKFILL, *READERS, DATASETTE, PRUNE),
        example="/var/lib/drengr/drengr.db",
        parse=file_path,
        metavar="PATH",
    ),
    Setting(
        name="store",
        default="",
        help="A postgresql://user@host/db URL: rows, keys and tenants go to PostgreSQL instead of --db "
        "(needs pip install 'drengr-ingest[postgres]'). Keep the password out of the command line: "
        "use the variable, ~/.pgpass or PGPASSWORD.",
        commands=(SERVE, WSGI, *KEYS, TENANTS_SET, DB_INIT, DB_IMPORT, DB_BACKFILL, *READERS, PRUNE),
        example="postgresql://drengr@db.internal/drengr",
        parse=postgres_url,
        metavar="URL",
    ),
    Setting(
        name="host",
        default="127.0.0.1",
        help="The address to listen on; 0.0.0.0 for every interface.",
        commands=(SERVE,),
        example="0.0.0.0",
    ),
    Setting(
        name="port",
        default="8080",
        help="The TCP port to listen on, 1 to 65535.",
        commands=(SERVE,),
        example="8081",
        parse=port,
        metavar="N",
    ),
    Setting(
        name="threads",
        default="8",
        help="Worker threads answering requests.",
        commands=(SERVE,),
        example="16",
        parse=between(1, MAX_THREADS),
        metavar="N",
    ),
    Setting(
        name="prefix",
        default="",
        help="The mount point: every route is served under it (/segment-ingest/v1/batch), as behind a "
        "proxy's location /segment-ingest/.",
        commands=(SERVE, WSGI),
        example="/segment-ingest",
        parse=url_path,
        metavar="PATH",
    ),
    Setting(
        name="durability",
        default="full",
        help="full: a 200 survives a power cut; normal: it survives a crash of the process, and writes are faster.",
        commands=(SERVE, WSGI),
        example="normal",
        choices=("full", "normal"),
    ),
    Setting(
        name="writer",
        default="process",
        help="Where SQLite's writes run: process, a child process of their own that can use a second core; "
        "thread, a thread of the server, which needs less memory; shared, one writer process for every "
        "server process on the database file (gunicorn's workers), started by the first and stopped "
        "after the last (Linux).",
        commands=(SERVE, WSGI),
        example="thread",
        choices=("process", "thread", "shared"),
        defaults={WSGI: "shared"},
    ),
    Setting(
        name="writer_cpus",
        default="",
        help="The CPU numbers the writer process may run on, comma-separated (empty: any).",
        commands=(SERVE, WSGI),
        example="1",
        parse=cpus,
        metavar="CPUS",
    ),
    Setting(
        name="placement",
        default="auto",
        help="auto: with the writer in a process of its own and two CPUs or more to run on, the server's threads "
        "keep to one CPU and the writer process to another (the --writer-cpus, else the last); none: the system "
        "places both.",
        commands=(SERVE,),
        example="none",
        choices=("auto", "none"),
    ),
    Setting(
        name="busy_timeout_ms",
        default="5000",
        help="Milliseconds a write waits for another process's lock on the SQLite file before the request gets 502.",
        commands=(SERVE, WSGI),
        example="1500",
        parse=between(0, MAX_BUSY_TIMEOUT_MS),
        metavar="MS",
    ),
    Setting(
        name="dedup_window_days",
        default=str(DEFAULT_DEDUP_WINDOW_DAYS),
        help="Days within which a repeated event id is always caught (stored once); ids are forgotten after "
        "one to two windows. SQLite holds the newest 3.4M ids in the writer's memory, 9-19 bytes each, "
        "and the others on disk with 2 bytes each in memory; "
        'PostgreSQL in its event_ids table (docs/operating.md "The dedup window: its length and its memory").',
        commands=(SERVE, WSGI, PRUNE),
        example="1",
        parse=at_least(1),
        metavar="DAYS",
    ),
    Setting(
        name="connection_limit",
        default="1000",
        help="The most simultaneous connections.",
        commands=(SERVE,),
        example="2000",
        parse=at_least(1),
        metavar="N",
    ),
    Setting(
        name="channel_timeout",
        default="30",
        help="Seconds an idle connection is kept open.",
        commands=(SERVE,),
        example="60",
        parse=at_least(1),
        metavar="SECONDS",
    ),
    Setting(
        name="log_level",
        default="info",
        help="info logs one line per request (health probes at debug; start-up and shutdown always); "
        "warning and error only problems.",
        commands=(SERVE, WSGI),
        example="warning",
        choices=("debug", "info", "warning", "error"),
    ),
    Setting(
        name="log_format",
        default="json",
        help="json: every line serve prints on stderr is one JSON object with time, level and logger; "
        "text: one plain line each, for a terminal.",
        commands=(SERVE, WSGI),
        example="text",
        choices=("json", "text"),
    ),
    Setting(
        name="pii_substrings",
        default=",".join(DEFAULT_PII_SUBSTRINGS),
        help="Comma-separated fragments: a property or trait whose key contains one (in any case) is not "
        "stored. Empty: keep every key.",
        commands=(SERVE, WSGI),
        example="email,secretish",
        parse=fragments,
        option="--pii-keys",
        variable="DRENGR_PII_KEYS",
        metavar="LIST",
    ),
    Setting(
        name="pii_allow",
        default="",
        help="Comma-separated exact key names kept although they contain a PII fragment (product_name, "
        "username): matched at any depth, case and all. A tenant adds its own with tenants set NAME "
        "--pii-allow.",
        commands=(SERVE, WSGI),
        example="product_name,email_opt_in",
        parse=key_names,
        metavar="NAMES",
    ),
    Setting(
        name="analytics_js",
        default="",
        help="A folder holding analytics-next's UMD build (dist/umd of the npm package "
        "@segment/analytics-next, which drengr does not ship): served at the paths Segment's snippet and "
        "the library ask for when analytics._cdn points here (/analytics.js/v1/KEY/analytics.min.js, "
        "/analytics-next/bundles/...). Empty: not served.",
        commands=(SERVE, WSGI),
        example="node_modules/@segment/analytics-next/dist/umd",
        parse=analytics_js_folder,
        metavar="DIR",
    ),
    Setting(
        name="retention",
        default="",
        help="Keep events this long (90d, 12w; at least twice the dedup window and a day: 15d by default): "
        "older ones are deleted every hour, in "
        "batches of 2,000 rows, with their days' usage and drop counts. Empty: keep everything.",
        commands=(SERVE, WSGI),
        example="90d",
        parse=optional_age,
        metavar="AGE",
    ),
    Setting(
        name="tenant",
        default="",
        help="The tenant: keys create makes the key for it (and the tenant, if new); tail, stats and export "
        "show only its events (empty: every tenant).",
        commands=(KEYS_CREATE, *READERS),
        example="acme",
        parse=optional_text,
        metavar="NAME",
    ),
    Setting(
        name="kind",
        default="publishable",
        help="publishable keys send events; secret keys read events and drop counts.",
        commands=(KEYS_CREATE,),
        example="secret",
        choices=("publishable", "secret"),
    ),
    Setting(
        name="daily_cap",
        default="",
        help="Events a tenant may store per UTC day (tenants set).",
        commands=(TENANTS_SET,),
        example="50000",
        parse=optional_count,
        metavar="N",
    ),
    Setting(
        name="clock_offset",
        default="0",
        help="Testing only: seconds added to the clock every time of receipt is read from (may be negative); "
        "the test suite runs its dated tests far from today with it.",
        commands=EVERY,
        example="3456000",
        parse=clock_offset,
        option=None,
        testing=True,
    ),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def for_command(command: str) -> list[Setting]:
    """The settings ``command`` reads, the testing ones aside (drengr.clock reads DRENGR_CLOCK_OFFSET)."""
    return [s for s in SETTINGS if command in s.commands and not s.testing]


# ---------------------------------------------------------------- reading them


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """``command``'s options; ``resolve`` then fills in the variables and defaults and checks every value."""
    for setting in for_command(command):
        if setting.option is None:
            continue
        shown = setting.default_for(command)
        choices = "|".join(setting.choices)
        parser.add_argument(
            setting.option,
            dest=setting.name,
            default=None,
            metavar=choices or setting.metavar or "TEXT",
            help=f"{setting.help} ({setting.variable}; default {shown or 'none'})".replace("%", "%%"),
        )
    parser.set_defaults(settings_command=command)


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting of ``args.settings_command``: option, else variable, else default; parsed into ``args``."""
    env = os.environ if environ is None else environ
    command = args.settings_command
    values: dict[str, Any] = {}
    given: dict[str, str] = {}  # where each value came from, as an error message starts: "--port 80"
    for setting in for_command(command):
        raw = getattr(args, setting.name, None)
        if raw is not None:
            value = setting.value(raw, str(setting.option))
            given[setting.name] = f"{setting.option} {shlex.quote(raw)}"
        elif setting.variable in env:
            value = setting.value(env[setting.variable], setting.variable + "=")
            given[setting.name] = f"{setting.variable}={shlex.quote(env[setting.variable])}"
        else:
            value = setting.value(setting.default_for(command), "the default of " + str(setting.option))
        values[setting.name] = value
        setattr(args, setting.name, value)
    if values.get("retention") is not None:
        check_retention(values["retention"], values["dedup_window_days"], given["retention"])
    args.settings_resolved = True  # `drengr tail` resolves in cli_read.run, `python -m drengr.cli_read` too
    return values


def load(command: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting of ``command`` from the environment alone (wsgi.py has no command line)."""
    args = argparse.Namespace(settings_command=command)
    return resolve(args, environ)


def _default(name: str) -> Any:
    setting = BY_NAME[name]
    return setting.value(setting.default_for(WSGI), "the default of " + str(setting.option))


@dataclass
class Config:
    """What the app is built from: one field per setting of `drengr serve` and wsgi.py.

    Built by ``from_env`` (wsgi.py) or from serve's options (``from_values``),
    never field by field, so no setting can be left out. Fields only serve
    takes (host … log_level) configure its waitress server and logging. Its
    defaults are wsgi.py's (``writer`` is ``thread`` there).
    """

    db: str = _default("db")
    store: str = _default("store")
    host: str = _default("host")
    port: int = _default("port")
    threads: int = _default("threads")
    prefix: str = _default("prefix")
    durability: str = _default("durability")
    writer: str = _default("writer")
    writer_cpus: tuple[int, ...] = _default("writer_cpus")
    placement: str = _default("placement")
    busy_timeout_ms: int = _default("busy_timeout_ms")
    dedup_window_days: int = _default("dedup_window_days")
    connection_limit: int = _default("connection_limit")
    channel_timeout: int = _default("channel_timeout")
    log_level: str = _default("log_level")
    log_format: str = _default("log_format")
    pii_substrings: tuple[str, ...] = _default("pii_substrings")
    pii_allow: tuple[str, ...] = _default("pii_allow")
    retention: int | None = _default("retention")
    analytics_js: str = _default("analytics_js")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Config":
        """wsgi.py's: every DRENGR_ variable it takes, checked (a bad one raises SettingError)."""
        return cls.from_values(load(WSGI, environ))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Config":
        return cls(**{name: values[name] for name in _CONFIG_FIELDS if name in values})


_CONFIG_FIELDS = tuple(f.name for f in fields(Config))
_APP_SETTINGS = {s.name for s in SETTINGS if not s.testing and {SERVE, WSGI} & set(s.commands)}
if set(_CONFIG_FIELDS) != _APP_SETTINGS:  # a setting of serve or wsgi.py that the app would never see
    raise RuntimeError(
        f"Config's fields differ from the settings: {sorted(set(_CONFIG_FIELDS) ^ _APP_SETTINGS)}"
    )


# ---------------------------------------------------------------- the docs' table


def _commands_text(commands: Iterable[str]) -> str:
    taken = list(commands)
    if set(taken) == set(EVERY):
        return "every command, wsgi.py"
    if set(KEYS) <= set(taken):
        taken = [c for c in taken if c not in KEYS[1:]]
        taken[taken.index(KEYS_CREATE)] = "keys"
    return ", ".join(taken)


def _default_text(setting: Setting) -> str:
    shown = f"`{setting.default}`" if setting.default else "none"
    for command, default in setting.defaults.items():
        shown += f" (`{default}` under {command})"
    return shown


def markdown_table() -> str:
    """The settings table of docs/operating.md, exactly (a test checks the page contains it)."""
    lines = [
        "| Option | Variable | Default | Taken by | What it sets |",
        "|---|---|---|---|---|",
    ]
    for setting in sorted(SETTINGS, key=lambda s: s.testing):
        option = (
            f"`{setting.option} {setting.choices and '|'.join(setting.choices) or setting.metavar or 'TEXT'}`"
        )
        cells = [
            option.replace("|", "\\|") if setting.option else "(none)",
            f"`{setting.variable}`",
            _default_text(setting),
            _commands_text(setting.commands),
            setting.help.replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drengr.settings", description="drengr's settings.")
    parser.add_argument(
        "--markdown", action="store_true", help="print the settings table of docs/operating.md"
    )
    parser.parse_args(argv)
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
