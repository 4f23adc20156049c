"""`drengr`: serve, keys, tenants. Every option also reads DRENGR_<OPTION>.

A user mistake gets one sentence that says what to do, and exit status 2;
never a traceback.
"""

import argparse
import gc
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import cli_read
from .cli_common import UsageError
from .cli_common import env as _env
from .cli_common import non_negative_int as _positive_int
from .core.limits import WAITRESS_MAX_BODY_BYTES
from .store import SQLiteStore, Store, StoreError, is_postgres_url, open_store

SWITCH_INTERVAL_S = 0.0001  # sys.setswitchinterval for `serve` (see there)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drengr", description="Self-hosted, Segment-compatible analytics endpoint."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def with_db(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--db",
            default=_env("db", "drengr.db"),
            help="SQLite database file (DRENGR_DB; default ./drengr.db)",
        )
        sub.add_argument(
            "--store",
            default=_env("store", ""),
            help="postgresql://user@host/db: rows, keys and tenants go to PostgreSQL instead of --db "
            "(DRENGR_STORE; needs pip install 'drengr-ingest[postgres]')",
        )

    serve = commands.add_parser("serve", help="run the ingest server (waitress)")
    with_db(serve)
    serve.add_argument("--host", default=_env("host", "127.0.0.1"), help="address to listen on (DRENGR_HOST)")
    serve.add_argument("--port", type=_positive_int, default=_env("port", "8080"), help="port (DRENGR_PORT)")
    serve.add_argument(
        "--threads", type=_positive_int, default=_env("threads", "8"), help="worker threads (DRENGR_THREADS)"
    )
    serve.add_argument("--prefix", default=_env("prefix", ""), help="mount point, e.g. /segment-ingest")
    serve.add_argument(
        "--durability",
        choices=["full", "normal"],
        default=_env("durability", "full"),
        help="full: a 200 survives a power cut (default); normal: survives a crash, faster",
    )
    serve.add_argument(
        "--writer",
        choices=["process", "thread"],
        default=_env("writer", "process"),
        help="where SQLite writes run: a process of their own, which can use a second core (default), "
        "or a thread of the server, which needs less memory (DRENGR_WRITER)",
    )
    serve.add_argument(
        "--busy-timeout-ms",
        type=_positive_int,
        default=_env("busy_timeout_ms", "5000"),
        help="how long a write waits for another process's lock before answering 502 (DRENGR_BUSY_TIMEOUT_MS)",
    )
    serve.add_argument(
        "--connection-limit", type=_positive_int, default=_env("connection_limit", "1000"),
        help="most simultaneous connections (DRENGR_CONNECTION_LIMIT)",
    )  # fmt: skip
    serve.add_argument(
        "--channel-timeout", type=_positive_int, default=_env("channel_timeout", "30"),
        help="seconds an idle connection is kept (DRENGR_CHANNEL_TIMEOUT)",
    )  # fmt: skip
    serve.add_argument(
        "--log-level", default=_env("log_level", "info"), choices=["debug", "info", "warning", "error"],
        help="info logs one line per request (DRENGR_LOG_LEVEL)",
    )  # fmt: skip

    keys = commands.add_parser("keys", help="create, list and revoke write keys")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    key_commands.required = True
    create = key_commands.add_parser("create", help="create a key (and its tenant, if new)")
    with_db(create)
    create.add_argument("--tenant", default=_env("tenant"), help="tenant name (DRENGR_TENANT)")
    create.add_argument(
        "--kind", choices=["publishable", "secret"], default=_env("kind", "publishable"),
        help="publishable keys ingest; secret keys read and administer",
    )  # fmt: skip
    listing = key_commands.add_parser("list", help="list keys (never the secrets)")
    with_db(listing)
    revoke = key_commands.add_parser("revoke", help="revoke a key")
    with_db(revoke)
    revoke.add_argument("key", help="the key, or its id from `drengr keys list`")

    db = commands.add_parser("db", help="database set-up and moves")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_commands.required = True
    init = db_commands.add_parser("init", help="create the tables if missing (idempotent; serve does it too)")
    with_db(init)
    move = db_commands.add_parser("import-sqlite", help="copy a SQLite database into the --store PostgreSQL")
    move.add_argument("sqlite_file", help="the SQLite database to copy (read only; resumes if run again)")
    move.add_argument("--store", default=_env("store", ""), help="postgresql://… (DRENGR_STORE)")

    tenants = commands.add_parser("tenants", help="tenant settings")
    tenant_commands = tenants.add_subparsers(dest="tenants_command", metavar="ACTION")
    tenant_commands.required = True
    set_tenant = tenant_commands.add_parser("set", help="change a tenant's settings")
    with_db(set_tenant)
    set_tenant.add_argument("name", help="tenant name")
    set_tenant.add_argument(
        "--daily-cap", type=_positive_int, default=_env("daily_cap"), help="events per UTC day"
    )
    cli_read.add_commands(commands)
    return parser


def _open_store(
    path: str,
    durability: str = "full",
    busy_timeout_ms: int = 5_000,
    store_url: str = "",
    writer: str = "thread",
) -> Store:
    if store_url:
        return _open_postgres(store_url, durability)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"The folder {folder} does not exist: create it or pass another --db path.")
    try:
        return SQLiteStore(path, durability=durability, busy_timeout_ms=busy_timeout_ms, writer=writer)
    except StoreError as error:
        raise UsageError(f"Cannot use {path} as the database ({error}): pass a writable --db path.") from None


def _open_postgres(url: str, durability: str = "full") -> Store:
    if not is_postgres_url(url):
        raise UsageError("--store takes a postgresql://user@host/db URL (for a SQLite file, use --db).")
    try:
        return open_store(url, durability=durability)
    except StoreError as error:
        raise UsageError(
            f"Cannot use the PostgreSQL store at {_redact_url(url)} ({error}): check --store."
        ) from None


def _redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _where(args: argparse.Namespace) -> str:
    return f"store {_redact_url(args.store)}" if args.store else f"database {args.db}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in cli_read.COMMANDS:
            return cli_read.run(args)
        if args.command == "serve":
            return serve(args)
        if args.command == "keys":
            return keys(args)
        if args.command == "db":
            return db(args)
        return tenants(args)
    except UsageError as error:
        print(f"drengr: {error}", file=sys.stderr)
        return 2


def keys(args: argparse.Namespace) -> int:
    store = _open_store(args.db, store_url=args.store)
    try:
        if args.keys_command == "create":
            if not args.tenant:
                raise UsageError("Say which tenant the key is for: drengr keys create --tenant NAME.")
            key = store.create_key(args.tenant, args.kind)
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
    finally:
        store.close()
    return 0


def db(args: argparse.Namespace) -> int:
    if args.db_command == "init":
        _open_store(args.db, store_url=args.store).close()  # opening a store creates what is missing
        print(f"Ready: {_where(args)}.", file=sys.stderr)
        return 0
    if not args.store:
        raise UsageError("Say where to copy to: drengr db import-sqlite FILE --store postgresql://….")
    if not os.path.isfile(args.sqlite_file):
        raise UsageError(f"There is no file {args.sqlite_file}: pass the SQLite database to copy.")
    store = _open_postgres(args.store)
    try:
        counts = store.import_sqlite(args.sqlite_file)  # type: ignore[attr-defined]
    except StoreError as error:
        raise UsageError(f"The copy stopped ({error}); run the same command again to resume.") from None
    finally:
        store.close()
    print(
        f"Copied {counts['events']:,} events ({counts['duplicates']:,} already there), "
        f"{counts['tenants']} tenants, {counts['api_keys']} keys to {_redact_url(args.store)}.",
        file=sys.stderr,
    )
    return 0


def tenants(args: argparse.Namespace) -> int:
    if args.daily_cap is None:
        raise UsageError("Say what to change: drengr tenants set NAME --daily-cap N.")
    store = _open_store(args.db, store_url=args.store)
    try:
        store.set_daily_cap(args.name, int(args.daily_cap))
    finally:
        store.close()
    print(f"Tenant {args.name!r}: daily cap {int(args.daily_cap):,} events.", file=sys.stderr)
    return 0


def serve(args: argparse.Namespace) -> int:
    import waitress

    from ._memory import return_large_blocks
    from .web import Config, OneLineFormatter, create_app

    return_large_blocks()  # before any thread has a heap of its own: see _memory
    handler = logging.StreamHandler(sys.stderr)
    # One record, one line: a newline a client put in a path or header can never forge a log line.
    handler.setFormatter(OneLineFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    # "Task queue depth is N" costs ~6 % and can wedge a server whose stderr nobody reads.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    store = _open_store(args.db, args.durability, int(args.busy_timeout_ms), args.store, args.writer)
    if store.is_new():
        key = store.create_key("default", "publishable")
        print("New database: created tenant 'default' with this publishable key:", file=sys.stderr)
        print(key, flush=True)
    prefix = "/" + args.prefix.strip("/") if args.prefix.strip("/") else ""
    config = Config(
        db=args.db,
        store=args.store,
        durability=args.durability,
        prefix=prefix,
        busy_timeout_ms=int(args.busy_timeout_ms),
    )
    app = create_app(config, store=store)
    try:
        server = waitress.create_server(
            app,
            host=args.host,
            port=int(args.port),
            threads=int(args.threads),
            max_request_body_size=WAITRESS_MAX_BODY_BYTES,
            connection_limit=int(args.connection_limit),
            channel_timeout=int(args.channel_timeout),
            # Close idle connections within channel_timeout + 5 s, not + 30 s (waitress' default sweep).
            cleanup_interval=5,
            # poll(), not select(): select() cannot watch a descriptor numbered 1024 or more, so with
            # a --connection-limit past ~1,000 a connection flood killed the server (ValueError).
            asyncore_use_poll=True,
            recv_bytes=65536,
            expose_tracebacks=False,
            ident="drengr",
        )
    except OSError as error:
        store.close()
        raise UsageError(
            f"Cannot listen on {args.host}:{args.port} ({error.strerror}): pick another --port."
        ) from None
    gc.freeze()  # the start-up objects never need collecting; keeps GC pauses off the hot path
    # A thread waiting for the GIL (the writer after each SQLite call, a request whose commit is
    # done) waits up to this long for a busy one to let go: 5 ms by default. 0.1 ms halves p99
    # with --writer process (~140 -> ~60 ms on 100-event batches); throughput within noise.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    print(
        f"Listening on http://{args.host}:{args.port}{prefix}/  ({_where(args)})",
        file=sys.stderr,
        flush=True,
    )
    try:
        _run_until_stopped(server)
    finally:
        app.extensions["drengr.drops"].close()  # the last drop counts, while the store is open
        store.close()  # after the last response: the writer thread finishes what it was given
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
        logging.getLogger("drengr").warning(
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
