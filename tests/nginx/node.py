"""One ingest node for tests/test_postgres_nginx.py: drengr's app on waitress, rows to PostgreSQL.

Stands in for ``drengr serve --store postgresql://… --prefix /segment-ingest``
until cli.py has ``--store``; the test uses the real command when it has.

    python tests/nginx/node.py --store postgresql://… --port 8081 --prefix /segment-ingest
"""

import argparse

import waitress

from drengr.core.limits import WAITRESS_MAX_BODY_BYTES
from drengr.store.postgres import PostgresStore
from drengr.web import Config, create_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    store = PostgresStore(args.store)
    app = create_app(Config(db=args.store, prefix=args.prefix), store=store)
    waitress.serve(
        app,
        host="127.0.0.1",
        port=args.port,
        threads=args.threads,
        max_request_body_size=WAITRESS_MAX_BODY_BYTES,
        recv_bytes=65536,
        ident="drengr",
        _quiet=True,
    )


if __name__ == "__main__":
    main()
