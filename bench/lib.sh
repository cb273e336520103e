# bench/lib.sh -- what the benchmark scripts (bench/run.sh, run-auth.sh,
# run-audit.sh, run-security.sh, run-metrics.sh, run-tls.sh, run-watch.sh;
# run-backends.sh for the server starts) share, sourced by them (not run):
#
#     BENCH_NAME=run-auth.sh
#     here=$(cd "$(dirname "$0")" && pwd)
#     . "$here/lib.sh"
#
# It reads the common environment into SECONDS_ (BENCH_SECONDS, default 10),
# THREADS (BENCH_THREADS, 2), CONNS (BENCH_CONNS, 32), WORKERS
# (BENCH_WORKERS, nproc), WARMUP (BENCH_WARMUP, 2), WRK (wrk), and names
# top_srcdir, top_builddir (default: the source tree), RHEMAD, RHEMACTL and
# PLUGIN_DIR.  Then:
#   die MSG...              "$BENCH_NAME: MSG" on stderr, stop the daemon in
#                           $rpid (also from inside a $(...)), exit 99
#   bench_need_tools        die unless wrk and curl are there
#   bench_tmpdir PREFIX     a scratch directory in $tmp, removed at exit with
#                           every process still listed in $pids
#   bench_start NAME ARG... start rhemad -f -P PLUGIN_DIR ARG... on a free
#                           loopback port with WORKERS workers, its log in
#                           $tmp/NAME.log; wait until /health/ready answers
#                           (die "rhemad (NAME) did not start" otherwise);
#                           its pid in $rpid, its URL in $base
#   wait_ready PID URL [CURL-ARG...]  0 once URL answers 2xx, 1 when PID
#                           died or 10 s passed
#   stop PID                SIGTERM, wait, forget it
#   wrk_run OUT URL [ARG...]   one measurement of SECONDS_ into OUT
#   wrk_warmup URL [ARG...]    WARMUP seconds of load, output dropped
#   wrk_check OUT           0, or print OUT and 1 when wrk saw a non-2xx, a
#                           socket error or no request
#   wrk_rps OUT             the requests/s of OUT
#   bench_measure OUT URL [ARG...]  warm up, measure, check: prints the
#                           requests/s, or fails (status 1)
#   bench_pg_start          initdb and start a PostgreSQL server (fsync=on,
#                           synchronous_commit=on) in $tmp/pg on a free loopback
#                           port (as the postgres user when we are root), with
#                           a database rhema: sets pg_port, pg_version,
#                           pg_conninfo (of rhema); needs PG_BIN (default: the
#                           newest /usr/lib/postgresql/*/bin)
#   bench_redis_start [ARG...]  start redis-server in $tmp/redis on a free
#                           loopback port with the durable configuration
#                           (appendonly yes, appendfsync always) and ARG...:
#                           sets redis_port, redis_version
#   bench_servers_stop      stop the servers those two started (bench_cleanup
#                           does it at exit)

# shellcheck disable=SC2034 # the variables are the scripts'
here=${here:-$(cd "$(dirname "$0")" && pwd)}
top_srcdir=$(cd "$here/.." && pwd)
: "${top_builddir:=$top_srcdir}"
SECONDS_=${BENCH_SECONDS:-10}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNS:-32}
WORKERS=${BENCH_WORKERS:-$(nproc 2>/dev/null || echo 2)}
WARMUP=${BENCH_WARMUP:-2}
WRK=${WRK:-wrk}
RHEMAD=$top_builddir/rhemad
RHEMACTL=$top_builddir/rhemactl
PLUGIN_DIR=$top_builddir/plugins/.libs

: "${PG_BIN:=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"

rpid=
pids=
tmp=
pg_started=
redis_pid=
as_pg=

die() {
    echo "$BENCH_NAME: $*" >&2
    [ -n "$rpid" ] && kill -TERM "$rpid" 2>/dev/null
    exit 99
}

bench_need_tools() {
    command -v "$WRK" >/dev/null 2>&1 || die "wrk not found (set WRK=)"
    command -v curl >/dev/null 2>&1 || die "curl not found"
}

bench_cleanup() {
    set +e # a script with set -e: every step of the cleanup still runs
    for p in $pids; do kill -TERM "$p" 2>/dev/null; done
    for p in $pids; do wait "$p" 2>/dev/null; done
    bench_servers_stop
    [ -n "$tmp" ] && rm -rf "$tmp"
}

bench_pg_start() {
    [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL server binaries (set PG_BIN=)"
    if [ "$(id -u)" = 0 ]; then
        as_pg="runuser -u postgres --"
        chmod 755 "$tmp"
        mkdir -p "$tmp/pg" && chown postgres "$tmp/pg"
    fi
    pg_port=$(free_port)
    $as_pg "$PG_BIN/initdb" -D "$tmp/pg" -U postgres --auth=trust -E UTF8 --no-locale \
        >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
    $as_pg "$PG_BIN/pg_ctl" -D "$tmp/pg" -w -t 30 -l "$tmp/pg/server.log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$tmp/pg -c fsync=on -c synchronous_commit=on -c full_page_writes=on" \
        start >/dev/null 2>&1 || { tail -n 20 "$tmp/pg/server.log" >&2; die "PostgreSQL did not start"; }
    pg_started=1
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres rhema >/dev/null 2>&1 ||
        die "createdb failed"
    pg_version=$("$PG_BIN/postgres" --version | awk '{ print $3 }')
    pg_conninfo="host=127.0.0.1 port=$pg_port dbname=rhema user=postgres"
}

bench_redis_start() {
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found"
    redis_port=$(free_port)
    mkdir -p "$tmp/redis"
    redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$tmp/redis" --save '' \
        --appendonly yes --appendfsync always --daemonize no --logfile "$tmp/redis/log" "$@" &
    redis_pid=$!
    i=0
    while [ $i -lt 100 ]; do
        redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
        i=$((i + 1))
        sleep 0.1
    done
    [ $i -lt 100 ] || die "redis-server did not answer"
    redis_version=$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')
}

bench_servers_stop() {
    if [ -n "$pg_started" ]; then
        $as_pg "$PG_BIN/pg_ctl" -D "$tmp/pg" -m fast -w stop >/dev/null 2>&1
        pg_started=
    fi
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
        redis_pid=
    fi
}

bench_tmpdir() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX") || die "mktemp failed"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM HUP
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((49152 + ($$ + $(date +%N 2>/dev/null | cut -c1-4 || echo 0)) % 16000))
}

# Wait until URL $2 answers 2xx (10 s at most) while process $1 lives;
# further arguments go to curl (--cacert for an https URL).
wait_ready() {
    wr_pid=$1
    wr_url=$2
    shift 2
    i=0
    while [ $i -lt 100 ]; do
        kill -0 "$wr_pid" 2>/dev/null || return 1
        curl -fsS -o /dev/null --max-time 1 "$@" "$wr_url" 2>/dev/null && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

stop() {
    kill -TERM "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    [ "$rpid" = "$1" ] && rpid=
    rest=
    for p in $pids; do [ "$p" = "$1" ] || rest="$rest $p"; done
    pids=$rest
}

bench_start() {
    bench_start_name=$1
    shift
    port=$(free_port)
    "$RHEMAD" -f -P "$PLUGIN_DIR" "$@" -o service.listen=127.0.0.1:"$port" \
        -o service.workers="$WORKERS" >"$tmp/$bench_start_name.log" 2>&1 &
    rpid=$!
    pids="$pids $rpid"
    base=http://127.0.0.1:$port
    wait_ready "$rpid" "$base/health/ready" || {
        cat "$tmp/$bench_start_name.log" >&2
        die "rhemad ($bench_start_name) did not start"
    }
}

wrk_run() {
    wrk_out=$1
    wrk_url=$2
    shift 2
    "$WRK" -t"$THREADS" -c"$CONNS" -d"${SECONDS_}s" "$@" "$wrk_url" >"$wrk_out" 2>&1
}

wrk_warmup() {
    wrk_url=$1
    shift
    "$WRK" -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "$@" "$wrk_url" >/dev/null 2>&1
}

wrk_rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }

wrk_check() {
    if grep -q 'Non-2xx or 3xx responses' "$1" || grep -q 'Socket errors' "$1" ||
        ! awk '/^Requests\/sec:/ { ok = $2 > 0 } END { exit !ok }' "$1"; then
        echo "$BENCH_NAME: wrk reported errors or no requests:" >&2
        cat "$1" >&2
        return 1
    fi
    return 0
}

bench_measure() {
    m_out=$1
    m_url=$2
    shift 2
    wrk_warmup "$m_url" "$@"
    wrk_run "$m_out" "$m_url" "$@"
    wrk_check "$m_out" || return 1
    wrk_rps "$m_out"
}
