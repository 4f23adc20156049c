"""`drengr`: serve, keys, tenants. Every option also reads DRENGR_<OPTION>.

A user mistake gets one sentence that says what to do, and exit status 2;
never a traceback.
"""

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

from .core.limits import WAITRESS_MAX_BODY_BYTES
from .store import SQLiteStore, StoreError


class UsageError(Exception):
    """A mistake the user can fix; the message says how."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("DRENGR_" + name.upper().replace("-", "_"), default)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


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

    tenants = commands.add_parser("tenants", help="tenant settings")
    tenant_commands = tenants.add_subparsers(dest="tenants_command", metavar="ACTION")
    tenant_commands.required = True
    set_tenant = tenant_commands.add_parser("set", help="change a tenant's settings")
    with_db(set_tenant)
    set_tenant.add_argument("name", help="tenant name")
    set_tenant.add_argument(
        "--daily-cap", type=_positive_int, default=_env("daily_cap"), help="events per UTC day"
    )
    return parser


def _open_store(path: str, durability: str = "full") -> SQLiteStore:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"The folder {folder} does not exist: create it or pass another --db path.")
    try:
        return SQLiteStore(path, durability=durability)
    except StoreError as error:
        raise UsageError(f"Cannot use {path} as the database ({error}): pass a writable --db path.") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "keys":
            return keys(args)
        return tenants(args)
    except UsageError as error:
        print(f"drengr: {error}", file=sys.stderr)
        return 2


def keys(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
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


def tenants(args: argparse.Namespace) -> int:
    if args.daily_cap is None:
        raise UsageError("Say what to change: drengr tenants set NAME --daily-cap N.")
    store = _open_store(args.db)
    try:
        store.set_daily_cap(args.name, int(args.daily_cap))
    finally:
        store.close()
    print(f"Tenant {args.name!r}: daily cap {int(args.daily_cap):,} events.", file=sys.stderr)
    return 0


def serve(args: argparse.Namespace) -> int:
    import waitress

    from .web import Config, create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(message)s", stream=sys.stderr)
    # "Task queue depth is N" costs ~6 % and can wedge a server whose stderr nobody reads.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    store = _open_store(args.db, args.durability)
    if store.is_new():
        key = store.create_key("default", "publishable")
        print("New database: created tenant 'default' with this publishable key:", file=sys.stderr)
        print(key, flush=True)
    prefix = "/" + args.prefix.strip("/") if args.prefix.strip("/") else ""
    config = Config(db=args.db, durability=args.durability, prefix=prefix)
    app = create_app(config, store=store)
    gc.freeze()  # the start-up objects never need collecting; keeps GC pauses off the hot path
    print(
        f"Listening on http://{args.host}:{args.port}{prefix}/  (database {args.db})",
        file=sys.stderr,
        flush=True,
    )
    try:
        waitress.serve(
            app,
            host=args.host,
            port=int(args.port),
            threads=int(args.threads),
            max_request_body_size=WAITRESS_MAX_BODY_BYTES,
            connection_limit=int(args.connection_limit),
            channel_timeout=int(args.channel_timeout),
            recv_bytes=65536,
            expose_tracebacks=False,
            ident="drengr",
            _quiet=True,
        )
    except OSError as error:
        raise UsageError(
            f"Cannot listen on {args.host}:{args.port} ({error.strerror}): pick another --port."
        ) from None
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
