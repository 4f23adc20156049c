"""`drengr tail` and `drengr stats`: read ``semantic_events`` straight from the database.

``tail`` prints the last rows, then follows new ones as they are committed
(like ``tail -f``), polling by ``seq``; it stops cleanly on Ctrl-C or SIGTERM
(exit 0, no traceback), after ``--count`` rows or ``--timeout`` seconds.
``stats`` prints counts by event name over an interval, with sums of measures.
Both read through ``drengr.store.reader`` (read-only), so they can run beside
a serving process on the same file. No secret key is involved: whoever can
open the database file can read it anyway.

Wire into ``drengr.cli``: ``add_commands(subparsers)`` in ``build_parser``, and
``run(args)`` for ``args.command in COMMANDS`` in ``main``. A user mistake
prints one sentence and returns 2, like the other commands.
"""

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import clock, settings
from .cli_common import UsageError, add_version, check_read_scope, check_where, redact_url
from .cli_common import non_negative_int as _non_negative_int
from .settings import SettingError
from .store.base import StoreError, first_line
from .store.reader import (
    BUCKET_PREFIX_CHARS,
    MAX_MEASURES_PER_QUERY,
    EventQuery,
    Reader,
    StatsQuery,
    check_measure_name,
    parse_time,
    reader_for_location,
)

COMMANDS = ("tail", "stats")
POLL_SECONDS = 0.25
PAGE_ROWS = 500


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def add_commands(subparsers: Any) -> None:
    """Add `tail` and `stats` to `drengr`'s subcommands."""

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=help + ".")
        add_version(sub)
        settings.add_options(sub, name)  # --db, --store, --tenant
        sub.add_argument("--json", action="store_true", help="one JSON object per line")
        return sub

    tail = command("tail", "print the latest events, then follow new ones (like tail -f)")
    tail.add_argument(
        "-n", "--lines", type=_non_negative_int, default=10, help="rows to show first (default 10)"
    )
    tail.add_argument("--event-name", help="only this (stored, normalised) event name")
    tail.add_argument("--no-follow", action="store_true", help="print the last rows and stop")
    tail.add_argument("--count", type=_non_negative_int, help="stop after printing this many rows in all")
    tail.add_argument("--timeout", type=_seconds, help="stop after this many seconds")
    tail.add_argument("--interval", type=_seconds, default=POLL_SECONDS, help="seconds between polls (0.25)")

    stats = command("stats", "counts by event name over an interval, sums of measures")
    stats.add_argument(
        "--since", default="24h", help="ISO-8601 time, date, or a duration ago: 90s, 15m, 2h, 7d"
    )
    stats.add_argument("--until", help="exclusive end, same forms as --since (default: now)")
    stats.add_argument(
        "--occurred", action="store_true", help="compare times with occurred_at, not received_at"
    )
    stats.add_argument("--event-name", help="only this event name")
    stats.add_argument("--measure", action="append", default=[], help="sum this measure (repeatable)")
    stats.add_argument(
        "--interval", choices=tuple(BUCKET_PREFIX_CHARS), help="also count per minute/hour/day"
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run `tail` or `stats`; 0 on success, 2 (and one sentence on stderr) for a user mistake."""
    out = out or sys.stdout
    try:
        if not getattr(args, "settings_resolved", False):
            settings.resolve(args)
        reader = _open(args.store or args.db)
        try:
            if args.command == "tail":
                return tail(args, reader, out)
            return stats(args, reader, out)
        finally:
            reader.close()
    except (UsageError, SettingError) as error:
        print(f"drengr: {error}", file=sys.stderr)
        return 2
    except StoreError as error:
        where = redact_url(args.store or args.db)
        print(f"drengr: Cannot read {where} ({first_line(error)}): {check_where(args)}.", file=sys.stderr)
        return 2


def _open(location: str) -> Reader:
    if "://" not in location and not os.path.isfile(location):
        raise UsageError(f"No database at {location}: pass the file `drengr serve` writes with --db.")
    return reader_for_location(location)


# ---------------------------------------------------------------- tail


class _Stop:
    """Set by SIGTERM/SIGINT; the loop notices it within one poll."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.stopped = True


def format_event(event: dict[str, Any], as_json: bool, show_tenant: bool) -> str:
    if as_json:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    parts = [event["received_at"]]
    if show_tenant:
        parts.append(event["tenant_id"])
    parts += [event["event_type"], event["event_name"], f"user={event['external_id'] or '-'}",
              f"install={event['install_id']}"]  # fmt: skip
    if event["dims"]:
        parts.append("dims=" + json.dumps(event["dims"], ensure_ascii=False, separators=(",", ":")))
    if event["measures"]:
        parts.append("measures=" + json.dumps(event["measures"], separators=(",", ":")))
    if event.get("library"):
        parts.append(f"library={event['library']}")
    # One line per event whatever a client put in a name or a dim.
    return "  ".join(parts).replace("\n", "\\n").replace("\r", "\\r")


def tail(args: argparse.Namespace, reader: Reader, out: TextIO) -> int:
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = time.monotonic() + args.timeout if args.timeout else None
    printed = 0
    limit = args.count

    def emit(events: list[dict[str, Any]]) -> bool:
        """Print; True when --count is reached."""
        nonlocal printed
        for event in events:
            out.write(format_event(event, args.json, args.tenant is None) + "\n")
            printed += 1
            if limit is not None and printed >= limit:
                out.flush()
                return True
        out.flush()
        return False

    try:
        check_read_scope(reader, args.tenant, None, None)
        base = EventQuery(tenant_id=args.tenant, event_name=args.event_name)
        first = reader.events(_replace(base, order="desc", limit=max(args.lines, 1)))
        if emit(list(reversed(first.events))[-args.lines :] if args.lines else []) or args.no_follow:
            return 0
        cursor = first.latest_cursor
        while not stop.stopped:
            if deadline is not None and time.monotonic() >= deadline:
                break
            page = reader.events(_replace(base, order="asc", cursor=cursor, limit=PAGE_ROWS))
            cursor = page.next_cursor if page.next_cursor is not None else cursor
            if emit(page.events):
                break
            if len(page.events) < PAGE_ROWS:
                _sleep(args.interval, stop, deadline)
    except BrokenPipeError:
        # `drengr tail | head`: the reader went away, which is a normal way to stop.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit-time flush quiet
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _replace(query: EventQuery, **changes: Any) -> EventQuery:
    from dataclasses import replace

    return replace(query, **changes)


def _sleep(seconds: float, stop: _Stop, deadline: float | None) -> None:
    end = time.monotonic() + seconds
    if deadline is not None:
        end = min(end, deadline)
    while not stop.stopped and time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


# ---------------------------------------------------------------- stats


def stats(args: argparse.Namespace, reader: Reader, out: TextIO) -> int:
    now_ms = clock.now_ms()
    since = parse_time(args.since, now_ms)
    if since is None:
        raise UsageError(
            f"--since {args.since!r} is not a time: give 2026-11-26T02:50:53Z, 2026-11-26 or 15m."
        )
    until = None
    if args.until:
        until = parse_time(args.until, now_ms)
        if until is None:
            raise UsageError(
                f"--until {args.until!r} is not a time: give 2026-11-26T02:50:53Z, 2026-11-26 or 15m."
            )
    check_read_scope(reader, args.tenant, args.since, args.until)
    measures = tuple(dict.fromkeys(args.measure))
    if len(measures) > MAX_MEASURES_PER_QUERY:
        raise UsageError(f"At most {MAX_MEASURES_PER_QUERY} --measure options.")
    for name in measures:
        if not check_measure_name(name):
            raise UsageError(f"--measure {name!r} is not a measure name (1–64 characters, no quotes).")
    query = StatsQuery(
        tenant_id=args.tenant,
        since=since,
        until=until,
        time_field="occurred_at" if args.occurred else "received_at",
        event_name=args.event_name,
        measures=measures,
        interval=args.interval,
    )
    result = reader.stats(query)
    if args.json:
        body = {"since": since, "until": until, "time_field": query.time_field, "total": result.total,
                "sums": result.sums, "by_event": result.by_event, "series": result.series}  # fmt: skip
        out.write(json.dumps(body, ensure_ascii=False) + "\n")
        return 0
    field = "occurred_at" if args.occurred else "received_at"
    scope = f"tenant {args.tenant!r}" if args.tenant else "all tenants"
    out.write(f"{result.total:,} events, {scope}, {field} from {since} to {until or 'now'}\n")
    width = max([len("EVENT")] + [len(item["event_name"]) for item in result.by_event])
    header = f"{'EVENT':<{width}}  {'COUNT':>10}" + "".join(f"  {name:>14}" for name in measures)
    out.write(header + "\n")
    for item in result.by_event:
        sums = "".join(f"  {_show(item['sums'][name]):>14}" for name in measures)
        out.write(f"{item['event_name']:<{width}}  {item['count']:>10,}{sums}\n")
    if measures:
        out.write(f"{'TOTAL':<{width}}  {result.total:>10,}" + "".join(
            f"  {_show(result.sums[name]):>14}" for name in measures) + "\n")  # fmt: skip
    for point in result.series:
        out.write(f"{point['bucket']}  {point['event_name']}  {point['count']}\n")
    return 0


def _show(value: float | int) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m drengr.cli_read tail|stats …`: the two commands on their own (until cli.py wires them)."""
    parser = argparse.ArgumentParser(prog="drengr", description="Read semantic_events.")
    add_version(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    add_commands(commands)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
