#!/bin/sh
# Run the storage conformance suite (test_storage) against every storage
# backend: memory, file and sqlite in temporary directories, and postgres
# and redis against real servers this script starts on free loopback ports
# in temporary directories, and stops afterwards.  TAP on stdout.
#
# A backend whose plugin was not built (configure found no library) or
# whose server binaries are missing is left out, with a diagnostic line.
# Environment (set by the automake harness): top_builddir, RHEMA_PLUGIN_DIR.
set -u
: "${top_builddir:=.}"
: "${RHEMA_PLUGIN_DIR:=$top_builddir/plugins/.libs}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rhema-backends.XXXXXX") || exit 99
chmod 755 "$tmp"
pg_started=
redis_pid=
as_pg=

cleanup() {
    if [ -n "$pg_started" ]; then
        $as_pg "$PG_BIN/pg_ctl" -D "$tmp/pg" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

backends="memory file"
overrides="persistence.file.directory=$tmp/files"
if [ -f "$RHEMA_PLUGIN_DIR/storage_sqlite.so" ]; then
    backends="$backends sqlite"
    overrides="$overrides;persistence.sqlite.path=$tmp/sqlite/conf.db"
fi

# ---- PostgreSQL: initdb in a temp dir (as the postgres user when we are root) ----
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ ! -f "$RHEMA_PLUGIN_DIR/storage_postgres.so" ]; then
    echo "# postgres: plugin not built; left out" >&2
elif [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    echo "# postgres: no server binaries (apt-get install postgresql); left out" >&2
else
    if [ "$(id -u)" = 0 ]; then
        as_pg="runuser -u postgres --"
        mkdir -p "$tmp/pg" && chown postgres "$tmp/pg"
    fi
    pg_port=$(free_port)
    if $as_pg "$PG_BIN/initdb" -D "$tmp/pg" -U postgres --auth=trust -E UTF8 --no-locale \
            >"$tmp/initdb.log" 2>&1 &&
        $as_pg "$PG_BIN/pg_ctl" -D "$tmp/pg" -w -t 30 -l "$tmp/pg/server.log" \
            -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$tmp/pg -c fsync=on" \
            start >/dev/null 2>&1; then
        pg_started=1
        if "$PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres rhema >/dev/null 2>&1; then
            backends="$backends postgres"
            overrides="$overrides;persistence.postgres.conninfo=host=127.0.0.1 port=$pg_port dbname=rhema user=postgres"
        else
            echo "# postgres: createdb failed; left out" >&2
        fi
    else
        echo "# postgres: the server did not start; left out" >&2
        cat "$tmp/initdb.log" "$tmp/pg/server.log" 2>/dev/null | tail -n 20 >&2
    fi
fi

# ---- Redis: a server with appendonly on (the durable configuration) ----
if [ ! -f "$RHEMA_PLUGIN_DIR/storage_redis.so" ]; then
    echo "# redis: plugin not built; left out" >&2
elif ! command -v redis-server >/dev/null 2>&1; then
    echo "# redis: no redis-server (apt-get install redis-server); left out" >&2
else
    redis_port=$(free_port)
    mkdir -p "$tmp/redis"
    redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$tmp/redis" --save '' \
        --appendonly yes --appendfsync always --daemonize no --logfile "$tmp/redis/log" &
    redis_pid=$!
    i=0
    while [ $i -lt 100 ]; do
        if redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
            break
        fi
        i=$((i + 1))
        sleep 0.1
    done
    if [ $i -lt 100 ]; then
        backends="$backends redis"
        overrides="$overrides;persistence.redis.host=127.0.0.1;persistence.redis.port=$redis_port"
    else
        echo "# redis: the server did not answer; left out" >&2
    fi
fi

echo "# backends: $backends" >&2
RHEMA_CONFORMANCE_BACKENDS=$backends RHEMA_CONFORMANCE_OVERRIDES=$overrides \
    "$top_builddir/tests/conformance/test_storage"
