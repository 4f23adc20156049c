"""`drengr`: serve, keys, tenants, db, tail, stats, export, datasette. Options are drengr.settings' (each reads DRENGR_<NAME>).

A user mistake gets one sentence that says what to do, and exit status 2;
never a traceback. A command checks every value before it creates anything,
and prints nothing it would have to take back: `serve` binds its port before
it opens (or creates) the database and prints a new database's key. Only
`serve`, `keys create`, `db init` and `tenants set --create` may create a
database; the others need one to be there.
"""

import argparse
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import cli_export, cli_read, settings
from .cli_common import (
    Parser,
    ProgressBar,
    UsageError,
    add_version,
    check_can_create,
    check_exists,
    check_tenant_name,
    older_layout,
    require_postgres_tables,
)
from .cli_common import redact_url as _redact_url
from .core.limits import WAITRESS_MAX_BODY_BYTES
from .settings import Config, SettingError
from .store import SQLiteStore, Store, StoreError, is_postgres_url, open_store
from .web.state import open_configured_store, state_of


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="drengr", description="Self-hosted, Segment-compatible analytics endpoint.")
    add_version(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(group: Any, name: str, help: str, settings_command: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help, description=help + ".")
        add_version(sub)
        settings.add_options(sub, settings_command)
        return sub

    def group(name: str, help: str, dest: str) -> Any:
        sub = commands.add_parser(name, help=help, description=help + ".")
        add_version(sub)
        actions = sub.add_subparsers(dest=dest, metavar="ACTION")
        actions.required = True
        return actions

    command(commands, "serve", "run the ingest server (waitress)", settings.SERVE)

    key_commands = group("keys", "create, list and revoke write keys", "keys_command")
    command(key_commands, "create", "create a key (and its tenant, if new)", settings.KEYS_CREATE)
    command(key_commands, "list", "list keys (never the keys themselves)", settings.KEYS_LIST)
    revoke = command(key_commands, "revoke", "revoke a key", settings.KEYS_REVOKE)
    revoke.add_argument("key", help="the key, or its id from `drengr keys list`")

    db_commands = group("db", "database set-up and moves", "db_command")
    command(
        db_commands, "init", "create the tables if missing (idempotent; serve does it too)", settings.DB_INIT
    )
    move = command(
        db_commands, "import-sqlite", "copy a SQLite database into the --store PostgreSQL", settings.DB_IMPORT
    )
    move.add_argument("sqlite_file", help="the SQLite database to copy (read only; resumes if run again)")
    move.add_argument("--quiet", action="store_true", help="no progress bar, even on a terminal")
    backfill = command(
        db_commands, "backfill-rollups", "count older rows into the read side's rollups (resumable)",
        settings.DB_BACKFILL,
    )  # fmt: skip
    backfill.add_argument("--quiet", action="store_true", help="no progress line, even on a terminal")

    tenant_commands = group("tenants", "tenant settings", "tenants_command")
    set_tenant = command(tenant_commands, "set", "change a tenant's settings", settings.TENANTS_SET)
    set_tenant.add_argument("name", help="tenant name (one that exists, unless --create)")
    set_tenant.add_argument(
        "--create",
        action="store_true",
        help="add the tenant if there is none of that name (and the database)",
    )
    set_tenant.add_argument(
        "--pii-allow",
        metavar="NAMES",
        type=settings.key_names,
        help="comma-separated exact key names this tenant keeps although they contain a PII fragment, "
        "on top of the server's --pii-allow (replaces the tenant's list; \"\" clears it)",
    )
    pruning = command(
        commands, "prune", "delete the events received before an age, in short batches", settings.PRUNE
    )
    pruning.add_argument(
        "--before",
        required=True,
        metavar="AGE",
        help="how old an event must be to go: 90d, 12w (at least twice --dedup-window-days and a day: 15d by default)",
    )
    pruning.add_argument("--quiet", action="store_true", help="no progress bar, even on a terminal")
    cli_read.add_commands(commands)
    cli_export.add_commands(commands)
    return parser


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The command line, every setting filled in (option, variable or default) and checked."""
    args = build_parser().parse_args(argv)
    settings.resolve(args, environ)
    return args


def _open_store(config: Config, create: bool, migrate: bool = False) -> Store:
    """The store at ``config.store`` or ``config.db``; a missing SQLite file is created only if
    ``create``. ``migrate``: an existing file of an older drengr is brought up to date first (a
    command that writes into it: prune, tenants set, keys revoke)."""
    if config.store:
        if not create:
            require_postgres_tables(config.store)
        return _open_postgres(config.store, config.durability)
    if create:
        check_can_create(config.db)
    else:
        check_exists(config.db)
        # A command that only reads the file never writes tables into it; one that writes brings
        # an older layout up to date first, and a current one as it is (no write of its own).
        if not (migrate and older_layout(config.db)):
            return SQLiteStore(config.db, busy_timeout_ms=config.busy_timeout_ms, migrate=False)
    try:
        return open_configured_store(config)  # config.store is empty: SQLite at config.db
    except StoreError as error:
        raise UsageError(
            f"Cannot use {config.db} as the database ({error}): pass a writable --db path."
        ) from None


def _admin_config(args: argparse.Namespace) -> Config:
    """An admin command's store settings: its own --db and --store, a thread writer."""
    return Config(db=getattr(args, "db", Config.db), store=args.store, writer="thread")


def _open_postgres(url: str, durability: str = "full") -> Store:
    if not is_postgres_url(url):
        raise UsageError("--store takes a postgresql://user@host/db URL (for a SQLite file, use --db).")
    try:
        return open_store(url, durability=durability)
    except StoreError as error:
        raise UsageError(
            f"Cannot use the PostgreSQL store at {_redact_url(url)} ({error}): check --store."
        ) from None


def _where(args: argparse.Namespace | Config) -> str:
    return f"store {_redact_url(args.store)}" if args.store else f"database {args.db}"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
        if args.command in ("export", "prune", "db"):
            _stop_on_sigterm()
        if args.command in cli_read.COMMANDS:
            return cli_read.run(args)
        if args.command in cli_export.COMMANDS:
            return cli_export.run(args)
        if args.command == "serve":
            return serve(args)
        if args.command == "keys":
            return keys(args)
        if args.command == "db":
            return db(args)
        if args.command == "prune":
            return prune(args)
        return tenants(args)
    except (UsageError, SettingError) as error:
        print(f"drengr: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (_stop_on_sigterm): what is committed stays
        print("drengr: Stopped; run the same command again to go on.", file=sys.stderr)
        return 130


def _stop_on_sigterm() -> None:
    """SIGTERM stops a long command (export, prune, a backfill) as Ctrl-C does: its clean-up runs
    (an export's temporary file is removed) instead of the process dying where it stands."""

    def stop(_signal: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _not_a_database(path: str, error: sqlite3.Error) -> UsageError:
    return UsageError(
        f"Cannot use {path} as the database ({error}): pass the file `drengr serve` writes with --db."
    )


@contextlib.contextmanager
def _admin_errors(args: argparse.Namespace, store: Store) -> Iterator[None]:
    """An admin command's store errors as one sentence each; the store closed whatever happens."""
    try:
        yield
    except sqlite3.Error as error:
        raise _not_a_database(args.db, error) from None
    except StoreError as error:
        raise UsageError(
            f"The {_where(args)} failed ({error}): check it and run the command again."
        ) from None
    finally:
        store.close()


def keys(args: argparse.Namespace) -> int:
    creating = args.keys_command == "create"
    if creating and not args.tenant:
        raise UsageError("Say which tenant the key is for: drengr keys create --tenant NAME.")
    config = _admin_config(args)
    # A key made in a new file works on no running server: said, since a second terminal in
    # another folder makes one there quietly otherwise.
    new_file = creating and not config.store and not os.path.exists(config.db)
    if new_file:
        check_tenant_name(args.tenant)  # before the file is made
    store = _open_store(config, create=creating, migrate=args.keys_command == "revoke")
    with _admin_errors(args, store):
        if creating:
            if args.tenant not in store.tenants():  # a new tenant's name is checked, not an old one's
                check_tenant_name(args.tenant)
            key = store.create_key(args.tenant, args.kind)
            if new_file:
                print(
                    f"No database was at {config.db}: made a new one. A server using another "
                    "--db will not know this key.",
                    file=sys.stderr,
                )
            print(
                f"Created a {args.kind} key for tenant {args.tenant!r}; it is shown only now:",
                file=sys.stderr,
            )
            print(key)
        elif args.keys_command == "list":
            rows = store.list_keys()
            if not rows:
                print("No keys yet: create one with drengr keys create --tenant NAME.", file=sys.stderr)
            print(f"{'KEY_ID':<14}{'TENANT':<20}{'KIND':<13}{'CREATED':<26}REVOKED")
            for info in rows:
                print(
                    f"{info.key_id:<14}{info.tenant_id:<20}{info.kind:<13}{info.created_at:<26}{info.revoked_at or '-'}"
                )
        else:
            if not store.revoke_key(args.key):
                raise UsageError("No active key matches that: check it with drengr keys list.")
            print("Revoked.", file=sys.stderr)
    return 0


def db(args: argparse.Namespace) -> int:
    if args.db_command == "backfill-rollups":
        return cli_export.backfill(args)
    if args.db_command == "init":
        _open_store(_admin_config(args), create=True).close()  # opening a store creates what is missing
        print(f"Ready: {_where(args)}.", file=sys.stderr)
        return 0
    if not args.store:
        raise UsageError("Say where to copy to: drengr db import-sqlite FILE --store postgresql://….")
    if not os.path.isfile(args.sqlite_file):
        raise UsageError(f"There is no file {args.sqlite_file}: pass the SQLite database to copy.")
    store = _open_postgres(args.store)
    from .store.migrate import import_sqlite  # psycopg, which the store just opened needs too

    bar = ProgressBar("Copying events", "rows", quiet=args.quiet)
    try:
        counts = import_sqlite(store, args.sqlite_file, progress=bar.update)
    except StoreError as error:
        raise UsageError(f"The copy stopped ({error}); run the same command again to resume.") from None
    finally:
        bar.close()
        store.close()
    print(
        f"Copied {counts['events']:,} events ({counts['duplicates']:,} already there), "
        f"{counts['tenants']} tenants, {counts['api_keys']} keys to {_redact_url(args.store)}.",
        file=sys.stderr,
    )
    return 0


def prune(args: argparse.Namespace) -> int:
    """`drengr prune --before AGE`: beside a running server too (each batch is a short transaction)."""
    from . import clock
    from .core.timestamps import format_ms

    try:
        seconds = settings.age(args.before)
    except SettingError as error:
        raise UsageError(f"--before {args.before} {error}.") from None
    try:
        settings.check_retention(seconds, args.dedup_window_days, f"--before {args.before}")
    except SettingError as error:
        raise UsageError(str(error)) from None
    before_ms = clock.now_ms() - seconds * 1000
    store = _open_store(_admin_config(args), create=False, migrate=True)  # its rollups as they are now
    bar = ProgressBar("Pruning events", "rows", quiet=args.quiet)
    try:
        deleted = store.prune_events(before_ms, progress=bar.update)  # type: ignore[attr-defined]
    except sqlite3.Error as error:
        raise _not_a_database(args.db, error) from None
    except StoreError as error:
        raise UsageError(f"Pruning stopped ({error}); run the same command again to go on.") from None
    finally:
        bar.close()
        store.close()
    print(
        f"Deleted {deleted:,} events received before {format_ms(before_ms)} from the {_where(args)}.",
        file=sys.stderr,
    )
    return 0


def tenants(args: argparse.Namespace) -> int:
    """`tenants set NAME`: a name that is not a tenant is a typo unless --create says otherwise."""
    if args.daily_cap is None and args.pii_allow is None:
        raise UsageError("Say what to change: drengr tenants set NAME --daily-cap N or --pii-allow NAMES.")
    config = _admin_config(args)
    if args.create and not config.store and not os.path.exists(config.db):
        check_tenant_name(args.name)  # before the file is made
    store = _open_store(config, create=args.create, migrate=True)
    with _admin_errors(args, store):
        known = store.tenants()
        if args.create and args.name not in known:
            check_tenant_name(args.name)
        if args.name not in known and not args.create:
            listed = f"the tenants are {', '.join(known)}" if known else "there are no tenants yet"
            raise UsageError(
                f"There is no tenant {args.name!r} in the {_where(args)} ({listed}): "
                "check the name, or pass --create to add it."
            )
        if args.daily_cap is not None:
            store.set_daily_cap(args.name, int(args.daily_cap))
        if args.pii_allow is not None:
            store.set_pii_allow(args.name, args.pii_allow)
    if args.daily_cap is not None:
        print(f"Tenant {args.name!r}: daily cap {int(args.daily_cap):,} events.", file=sys.stderr)
    if args.pii_allow is not None:
        kept = ", ".join(args.pii_allow) or "none beyond the server's"
        print(f"Tenant {args.name!r}: keys kept despite the PII list: {kept}.", file=sys.stderr)
    return 0


@dataclass
class Prepared:
    """What `serve` runs: bound, opened and wired, not yet answering."""

    server: Any  # waitress' server (TcpWSGIServer, or MultiSocketServer for several addresses)
    app: Any  # the Flask app
    store: Store
    new_key: str | None  # the key made for a new database, to print once everything has worked

    def close(self) -> None:
        """Undo ``prepare`` (serve's own shutdown is ``_run_until_stopped``)."""
        from waitress import wasyncore

        state_of(self.app).drops.close()
        self.store.close()
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        wasyncore.close_all(self.server.map if hasattr(self.server, "map") else self.server._map)


def prepare(config: Config) -> Prepared:
    """Everything `serve` builds from ``config``, in an order where a failure leaves nothing behind.

    The port is bound first (a port in use fails before the database exists),
    then the store is opened (and created, with its first key), then the app
    and the server are wired to the bound sockets.
    """
    import waitress

    from .web import create_app

    if not config.store:
        check_can_create(config.db)
    sockets = _listen(config.host, config.port)
    try:
        store = _open_store(config, create=True)
        try:
            app = create_app(config, store=store)
            _answer_unreadable_requests_in_4xx()
            server = waitress.create_server(
                app,
                sockets=sockets,
                threads=config.threads,
                max_request_body_size=WAITRESS_MAX_BODY_BYTES,
                connection_limit=config.connection_limit,
                channel_timeout=config.channel_timeout,
                # Close idle connections within channel_timeout + 5 s, not + 30 s (waitress' default sweep).
                cleanup_interval=5,
                # poll(), not select(): select() cannot watch a descriptor numbered 1024 or more, so with
                # a --connection-limit past ~1,000 a connection flood killed the server (ValueError).
                asyncore_use_poll=True,
                recv_bytes=65536,
                expose_tracebacks=False,
                # Keep X-Forwarded-For and Forwarded (waitress drops them when no proxy is trusted): the
                # app reads no address from them, but a request that came through a proxy is not local,
                # and GET /metrics then wants a secret key.
                clear_untrusted_proxy_headers=False,
                ident="drengr",
            )
            new_key = store.create_key("default", "publishable") if store.is_new() else None
        except BaseException:
            store.close()
            raise
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return Prepared(server, app, store, new_key)


def _answer_unreadable_requests_in_4xx() -> None:
    """Two of waitress's answers to a request it reads itself, made those of the contract:

    - a Transfer-Encoding it does not know (anything but chunked) is a 400, not its 501 (RFC
      9112 suggests 501; Segment's and RudderStack's clients resend a 5xx forever, and nothing
      a client sends gets one here);
    - a chunk whose size alone goes past the body's limit is a 413 at once, as a Content-Length
      past it is, not a connection held until the client stops sending (or the channel's timeout).
    """
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.utilities import BadRequest, RequestEntityTooLarge, ServerNotImplemented

    class Parser(HTTPRequestParser):  # type: ignore[misc]
        def received(self, data: bytes) -> int:
            consumed: int = super().received(data)
            error: Any = self.error  # type: ignore[has-type]
            if isinstance(error, ServerNotImplemented):
                self.error = BadRequest(error.body)
            elif error is None and self.chunked and not self.completed:  # type: ignore[has-type]
                limit = self.adj.max_request_body_size
                if self.body_bytes_received + self.body_rcv.chunk_remainder >= limit:
                    self.error = RequestEntityTooLarge(f"exceeds max_body of {limit}")
                    self.completed = True
            return consumed

    if HTTPChannel.parser_class is HTTPRequestParser:  # else done already (serve run twice in a process)
        HTTPChannel.parser_class = Parser


def _listen(host: str, port: int) -> list[socket.socket]:
    """The listening sockets for host:port, bound (waitress listens on them): a port in use fails here."""
    from waitress.adjustments import Adjustments

    try:
        addresses = Adjustments(host=host, port=port).listen  # waitress' own reading of host and port
    except ValueError:
        raise UsageError(
            f"Cannot listen on {host}: it is not an address of this machine; pass --host 127.0.0.1 or 0.0.0.0."
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in addresses:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as waitress does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as error:
        for sock in sockets:
            sock.close()
        if error.errno == errno.EADDRINUSE:
            hint = "another program is listening there: stop it or pick another --port"
        elif error.errno == errno.EACCES:
            hint = "ports below 1024 need root: pick a --port from 1024 up"
        else:
            hint = f"{error.strerror}: check --host and --port"
        raise UsageError(f"Cannot listen on {host}:{port} ({hint}).") from None
    return sockets


def serve_config(args: argparse.Namespace) -> Config:
    """What `serve` builds everything from: every setting it took (``parse`` filled them all in)."""
    return Config.from_values(vars(args))


def placed(config: Config) -> Config:
    """``--placement auto``: this process (the server's threads) on one CPU, the writer process on another.

    Request threads take turns at Python's GIL; floating over two cores, each turn
    moves from one core's caches to the other's, and 100-event batches lost up to a
    third of their rate (docs/performance.md "Where the server runs").
    Only with SQLite's writer in a process, and two CPUs or more to choose from;
    returns ``config`` with the writer's CPUs filled in.
    """
    if config.placement != "auto" or config.store or config.writer == "thread":
        return config
    allowed = sorted(os.sched_getaffinity(0))
    writer = list(config.writer_cpus) or allowed[-1:]
    server = [cpu for cpu in allowed if cpu not in writer]
    if not server:  # one CPU, or only the writer's: nothing to choose
        return config
    os.sched_setaffinity(0, server[-1:])
    return replace(config, writer_cpus=tuple(writer))


def serve(args: argparse.Namespace) -> int:
    from . import logs, metrics
    from ._memory import return_large_blocks

    config = placed(serve_config(args))  # before any thread starts: they all inherit the server's CPU
    return_large_blocks()  # before any thread has a heap of its own: see _memory
    # Before the first metric: the writer process counts its commits into the same scrape.
    metrics.use_private_folder()
    # One record, one line (JSON unless --log-format text): a newline a client put in a path or
    # header can never forge a log line.
    logs.configure(config.log_level, config.log_format)
    # "Task queue depth is N" costs ~6 % and can wedge a server whose stderr nobody reads.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server_log = logging.getLogger("drengr.server")
    prepared = prepare(config)
    prepared.store.warm()  # its writer builds the dedup window now, not in the first request
    if prepared.new_key:
        server_log.info("New database: created tenant 'default'; its publishable key is on stdout.")
        sys.stderr.flush()
        print(prepared.new_key, flush=True)
    gc.freeze()  # the start-up objects never need collecting; keeps GC pauses off the hot path
    # A thread waiting for the GIL (the writer after each SQLite call, a request whose commit is
    # done) waits up to this long for a busy one to let go: 5 ms by default. 0.1 ms halves p99
    # with --writer process (~140 -> ~60 ms on 100-event batches); throughput within noise.
    sys.setswitchinterval(settings.SWITCH_INTERVAL_S)
    server_log.info(
        "Listening on http://%s:%d%s/  (%s)", config.host, config.port, config.prefix, _where(config)
    )
    if config.writer != "thread" and not config.store:
        server_log.info(
            "The server's threads run on CPUs %s, the writer process on CPUs %s (--placement %s)",
            ",".join(map(str, sorted(os.sched_getaffinity(0)))),
            ",".join(map(str, config.writer_cpus)) or "any",
            config.placement,
        )
    try:
        _run_until_stopped(prepared.server)
    finally:
        state_of(prepared.app).drops.close()  # the last drop counts, while the store is open
        prepared.store.close()  # after the last response: the writer thread finishes what it was given
    return 0


SHUTDOWN_GRACE_SECONDS = 10.0  # docker stop and Kubernetes send SIGKILL 10 s / 30 s after SIGTERM


def _run_until_stopped(server: Any) -> None:
    """waitress' loop, until SIGTERM or SIGINT; then stop accepting and finish what is in flight.

    ``server.run()`` would stop the loop at once on a signal: requests already
    being handled would get no answer (their rows may be stored, their client
    retries) and queued ones would be dropped. Instead the listening socket is
    closed (new connections are refused, so clients and load balancers retry
    elsewhere) and the loop keeps going until every request that had started
    arriving is answered and flushed, for at most SHUTDOWN_GRACE_SECONDS.
    Idle keep-alive connections are closed as soon as they are idle, so a busy
    client cannot keep the process alive by sending on an old connection.
    """
    from waitress import wasyncore
    from waitress.server import BaseWSGIServer

    stopping: list[int] = []

    def request_stop(signum: int, frame: Any) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    socket_map = server.map if hasattr(server, "map") else server._map
    use_poll = server.adj.asyncore_use_poll
    try:
        while not stopping and socket_map:
            # A signal does not cut poll() short (PEP 475): a short timeout notices it within 0.25 s.
            wasyncore.loop(timeout=0.25, use_poll=use_poll, map=socket_map, count=1)
        for listener in [d for d in socket_map.values() if isinstance(d, BaseWSGIServer)]:
            # The dispatcher's own close: BaseWSGIServer.close() would also close the trigger
            # that wakes this loop when a worker thread has an answer ready.
            wasyncore.dispatcher.close(listener)
        channels = [d for d in socket_map.values() if hasattr(d, "requests")]
        busy = sum(1 for channel in channels if _in_flight(channel))
        logging.getLogger("drengr.server").info(
            "Stopping: no longer accepting connections; finishing %d request(s) in flight.", busy
        )
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while True:
            wasyncore.loop(timeout=0.05, use_poll=use_poll, map=socket_map, count=1)  # read what came
            channels = [d for d in list(socket_map.values()) if hasattr(d, "requests")]
            for channel in channels:
                if not _in_flight(channel):
                    channel.handle_close()  # answered, or never asked: the client reconnects elsewhere
            if not any(_in_flight(channel) for channel in channels) or time.monotonic() >= deadline:
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=SHUTDOWN_GRACE_SECONDS)
        wasyncore.close_all(socket_map, ignore_all=True)


def _in_flight(dispatcher: Any) -> bool:
    """A connection with a request arriving, queued, being handled, or an answer not yet sent."""
    if not hasattr(dispatcher, "requests"):
        return False  # the listener or the trigger
    return bool(
        dispatcher.requests
        or dispatcher.total_outbufs_len
        or getattr(dispatcher, "request", None) is not None
    )


if __name__ == "__main__":
    sys.exit(main())
