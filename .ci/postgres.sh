#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: no systemd, loopback only.
#
#   .ci/postgres.sh start [DIR]   initdb a cluster in DIR (default: a new temp dir), start it on
#                                 127.0.0.1 on a free port, create the database `drengr`; prints
#                                 the DSN on stdout (and nothing else) and writes it to DIR/dsn
#   .ci/postgres.sh stop  [DIR]   stop the server started in DIR and remove DIR
#   .ci/postgres.sh restart DIR [MODE]   restart it (pg_ctl -m MODE: smart, fast (default) or
#                                 immediate), same port and options; returns once it accepts
#                                 connections again (the fault tests: tests/test_postgres_faults.py)
#   .ci/postgres.sh halt DIR      stop it and keep DIR (restart starts it again)
#
# Without DIR, `start` makes one and records it in $DRENGR_PG_STATE (default
# /tmp/drengr-postgres.state) so that a bare `stop` finds it again. To export:
#
#   export DRENGR_TEST_POSTGRES_DSN="$(.ci/postgres.sh start)"
#   ...
#   .ci/postgres.sh stop
#
# The cluster trusts connections from 127.0.0.1 (it listens nowhere else) and
# runs as the `postgres` user when started by root (initdb refuses root).
# PG_EXTRA_OPTS adds server options, e.g. "-c fsync=off" for faster test runs.
#
# When PostgreSQL is not installed, `start` installs Debian's postgresql only in
# CI (CI set, or DRENGR_PG_INSTALL=1 as .ci/run passes); anywhere else it says
# what to install on one line of stderr and exits 3 (the tests then skip).
set -euo pipefail

STATE="${DRENGR_PG_STATE:-/tmp/drengr-postgres.state}"

find_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

install_postgres() {
    echo "postgres.sh: installing postgresql from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
}

as_owner() {  # run a command as the cluster's owner
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    local dir="${1:-}"
    local bindir
    if ! bindir="$(find_bindir)"; then
        if [ -z "${CI:-}" ] && [ "${DRENGR_PG_INSTALL:-}" != 1 ]; then
            echo "PostgreSQL is not installed (no initdb, pg_ctl): apt-get install postgresql" >&2
            exit 3
        fi
        install_postgres
        bindir="$(find_bindir)" || {
            echo "postgres.sh: no initdb/pg_ctl even after installing postgresql" >&2
            exit 1
        }
    fi
    if [ -z "$dir" ]; then
        dir="$(mktemp -d /tmp/drengr-pg.XXXXXX)"
        echo "$dir" >"$STATE"
    fi
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /bin/sh postgres
        chown postgres "$dir"
        chmod 755 "$dir"
    fi
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    local port attempt
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 ${PG_EXTRA_OPTS:-}" \
            start >&2; then
            break
        fi
        port=""
        tail -5 "$dir/server.log" >&2 || true
    done
    [ -n "$port" ] || { echo "postgres.sh: the server did not start" >&2; exit 1; }
    local psql="$bindir/psql"
    [ -x "$psql" ] || psql="$(command -v psql)"
    "$psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE drengr" >&2
    local dsn="postgresql://postgres@127.0.0.1:$port/drengr"
    echo "$dsn" >"$dir/dsn"
    echo "$dsn"
}

stop() {
    local dir="${1:-}"
    if [ -z "$dir" ]; then
        [ -f "$STATE" ] || { echo "postgres.sh: nothing to stop ($STATE is missing)" >&2; return 0; }
        dir="$(cat "$STATE")"
        rm -f "$STATE"
    fi
    [ -d "$dir/data" ] || { echo "postgres.sh: no cluster in $dir" >&2; return 0; }
    local bindir
    bindir="$(find_bindir)"
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
    case "$dir" in
        /tmp/drengr-pg.*) rm -rf "$dir" ;;
        *) rm -rf "$dir/data" ;;
    esac
}

restart() {
    local dir="$1" mode="${2:-fast}" bindir
    bindir="$(find_bindir)"
    if as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m "$mode" -w -t 60 restart >&2
    else  # halted: start it with the options it last ran with
        as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "$(sed -e 's/^[^ ]* //' -e 's/"//g' "$dir/data/postmaster.opts")" start >&2
    fi
}

halt() {
    local bindir
    bindir="$(find_bindir)"
    as_owner "$bindir/pg_ctl" -D "$1/data" -m fast -w -t 60 stop >&2
}

case "${1:-}" in
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    restart) restart "$2" "${3:-fast}" ;;
    halt) halt "$2" ;;
    *)
        echo "usage: $0 start [DIR] | stop [DIR] | restart DIR [MODE] | halt DIR" >&2
        exit 2
        ;;
esac
