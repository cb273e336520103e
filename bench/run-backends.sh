#!/bin/sh
# bench/run-backends.sh -- session PUT and GET through rhemad against the
# same operation done directly by a small C client of the backend on one
# connection, for every durable backend, on this machine, in one run.
# A benchmark, not a test: never part of `make check`.
#
# Backends (each measured one after the other, never concurrently):
#   sqlite-normal  rhemad sqlite, synchronous=normal   vs bench/sqlite_rw.c -S normal
#   sqlite-full    rhemad sqlite, synchronous=full     vs bench/sqlite_rw.c -S full
#   postgres       rhemad postgres                     vs bench/pg_raw.c (libpq)
#   redis          rhemad redis                        vs bench/redis_raw.c (hiredis)
# PostgreSQL (fsync=on, synchronous_commit=on) and Redis (appendonly yes,
# appendfsync always) -- the durable configurations -- are started here on
# free loopback ports in a temporary directory, and stopped at the end.
#
# For each backend: rhemad on it; wrk PUT of new 1 KiB sessions
# (bench/put_session.lua) and wrk GET of sessions that PUT created
# (bench/get_session.lua), req/s and p99 (wrk --latency); then the direct
# client: autocommit inserts of 1 KiB session rows / entries on one
# connection, then primary-key reads of them, ops/s and p99.  For sqlite the
# direct PUT that the target compares with is the same operation as rhemad's
# (bench/sqlite_rw.c -a: the record, its index entries and its access record
# in one transaction per session); the one-row rate is printed as PUT1.
# PostgreSQL's and Redis's direct clients store one row per session, a
# stricter baseline.
# Target: PUT ratio rhemad/direct >= 1.00 on every backend (GET: reported).
#
# Environment:
#   BENCH_SECONDS  duration of each measurement (default 10)
#   BENCH_THREADS  wrk threads (default 2)       BENCH_CONNS  wrk connections (default 32)
#   BENCH_WORKERS  worker threads of rhemad (default: nproc)
#   BENCH_WARMUP   seconds of unmeasured load before each GET run (default 2)
#   BENCH_BACKENDS the backends to run (default "sqlite-normal sqlite-full postgres redis")
#   BENCH_GET_SESSIONS  distinct sessions (of those the PUT run created) the
#                  GET run reads, at random (default 1000)
#   top_builddir   where rhemad and plugins/.libs are (default: the source tree)
#   CC, WRK, PKG_CONFIG, PG_BIN (default: the newest /usr/lib/postgresql/*/bin)
# Exit status: the number of PUT targets missed (0: all met); 99 on a setup error.

set -u

here=$(cd "$(dirname "$0")" && pwd)
top_srcdir=$(cd "$here/.." && pwd)
: "${top_builddir:=$top_srcdir}"
SECONDS_=${BENCH_SECONDS:-10}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNS:-32}
WORKERS=${BENCH_WORKERS:-$(nproc 2>/dev/null || echo 2)}
WARMUP=${BENCH_WARMUP:-2}
BACKENDS=${BENCH_BACKENDS:-sqlite-normal sqlite-full postgres redis}
GET_SESSIONS=${BENCH_GET_SESSIONS:-1000}
CC=${CC:-cc}
WRK=${WRK:-wrk}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
RHEMAD=$top_builddir/rhemad
PLUGIN_DIR=$top_builddir/plugins/.libs
: "${PG_BIN:=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
# the server starts (bench_pg_start, bench_redis_start, bench_servers_stop);
# the definitions below replace lib.sh's others
BENCH_NAME=run-backends.sh
. "$here/lib.sh"

die() { echo "run-backends.sh: $*" >&2; exit 99; }

command -v "$WRK" >/dev/null 2>&1 || die "wrk not found (set WRK=)"
command -v curl >/dev/null 2>&1 || die "curl not found"
[ -x "$RHEMAD" ] || die "$RHEMAD not built (make rhemad)"

need_pg= need_redis=
for b in $BACKENDS; do
    case $b in
    sqlite-normal | sqlite-full) so=storage_sqlite ;;
    postgres) so=storage_postgres need_pg=1 ;;
    redis) so=storage_redis need_redis=1 ;;
    *) die "unknown backend '$b'" ;;
    esac
    [ -f "$PLUGIN_DIR/$so.so" ] || die "$PLUGIN_DIR/$so.so not built"
done
if [ -n "$need_pg" ]; then
    [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL server binaries (set PG_BIN=)"
fi
if [ -n "$need_redis" ]; then
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rhema-bench-backends.XXXXXX") || die "mktemp failed"
chmod 755 "$tmp"
pids=
cleanup() {
    for p in $pids; do
        kill -TERM "$p" 2>/dev/null
    done
    for p in $pids; do
        wait "$p" 2>/dev/null
    done
    bench_servers_stop
    [ -n "${BENCH_KEEP:-}" ] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((49152 + ($$ + $(date +%N 2>/dev/null | cut -c1-4 || echo 0)) % 16000))
}

# Wait until URL answers 2xx (10 s at most) while process $1 lives.
wait_ready() {
    i=0
    while [ $i -lt 100 ]; do
        kill -0 "$1" 2>/dev/null || return 1
        curl -fsS -o /dev/null --max-time 1 "$2" 2>/dev/null && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# Stop process $1 (SIGTERM, then wait) and forget it.
stop() {
    kill -TERM "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    rest=
    for p in $pids; do [ "$p" = "$1" ] || rest="$rest $p"; done
    pids=$rest
}

wrk_rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
wrk_requests() { awk '/ requests in / { print $1 }' "$1"; }
# p99 of a wrk --latency output, in ms
wrk_p99_ms() {
    awk '$1 == "99%" {
        v = $2
        if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); v = v + 0 }
        else if (v ~ /m$/) { sub(/m$/, "", v); v = v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
        printf "%.2f", v
    }' "$1"
}
wrk_check() {
    if grep -q 'Non-2xx or 3xx responses' "$1" || grep -q 'Socket errors' "$1" ||
        ! awk '/^Requests\/sec:/ { ok = $2 > 0 } END { exit !ok }' "$1"; then
        echo "run-backends.sh: wrk reported errors or no requests:" >&2
        cat "$1" >&2
        return 1
    fi
    return 0
}
wrk_run() { # output-file url [wrk args...]
    out=$1
    url=$2
    shift 2
    "$WRK" -t"$THREADS" -c"$CONNS" -d"${SECONDS_}s" --latency "$@" "$url" >"$out" 2>&1
}

# Write back what earlier runs left dirty, so that it does not slow the
# fsyncs of the next measurement (each side of a ratio starts the same way).
settle() {
    sync
    sleep 1
}

# "tid ticks" for every thread of process $1 (utime + stime, clock ticks)
thread_ticks() {
    for f in /proc/"$1"/task/*/stat; do
        awk '{ sub(/^.*\) /, ""); print FILENAME, $12 + $13 }' "$f" 2>/dev/null
    done | sed 's|^/proc/[0-9]*/task/\([0-9]*\)/stat|\1|' | sort
}
# CPU of each thread between two thread_ticks files, in % of one core over
# $3 seconds; the threads in creation order are main, committer, workers.
thread_cpu() {
    hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
    join "$1" "$2" | sort -n | awk -v hz="$hz" -v s="$3" '
        { pct = ($3 - $2) / hz / s * 100
          name = NR == 1 ? "main" : NR == 2 ? "committer" : "worker" (NR - 2)
          printf "%s%s %.0f%%", sep, name, pct; sep = ", " }
        END { print "" }'
}

# ---- build the direct clients ----
echo "building the direct clients in $tmp"
# shellcheck disable=SC2046
"$CC" -O2 -g $($PKG_CONFIG --cflags sqlite3) -o "$tmp/sqlite_rw" "$here/sqlite_rw.c" \
    $($PKG_CONFIG --libs sqlite3) || die "cannot build sqlite_rw"
if [ -n "$need_pg" ]; then
    # shellcheck disable=SC2046
    "$CC" -O2 -g $($PKG_CONFIG --cflags libpq) -o "$tmp/pg_raw" "$here/pg_raw.c" \
        $($PKG_CONFIG --libs libpq) || die "cannot build pg_raw"
fi
if [ -n "$need_redis" ]; then
    # shellcheck disable=SC2046
    "$CC" -O2 -g $($PKG_CONFIG --cflags hiredis) -o "$tmp/redis_raw" "$here/redis_raw.c" \
        $($PKG_CONFIG --libs hiredis) || die "cannot build redis_raw"
fi

# ---- PostgreSQL: initdb in a temp dir (bench/lib.sh; as the postgres user when we are root) ----
if [ -n "$need_pg" ]; then
    bench_pg_start
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres raw >/dev/null 2>&1 ||
        die "createdb failed"
fi

# ---- Redis: appendonly yes, appendfsync always (the durable configuration; bench/lib.sh) ----
if [ -n "$need_redis" ]; then
    bench_redis_start
fi

echo "machine: $(nproc) cores; wrk -t$THREADS -c$CONNS -d${SECONDS_}s --latency; $WORKERS workers"
[ -n "$need_pg" ] && echo "postgres $pg_version: fsync=on, synchronous_commit=on"
[ -n "$need_redis" ] && echo "redis $redis_version: appendonly yes, appendfsync always"

rows= # the table, one line per measurement
notes=
missed=0

# bench_backend NAME rhemad-overrides... -- run rhemad on it, then the direct client
bench_backend() {
    name=$1
    shift
    port=$(free_port)
    # shellcheck disable=SC2086
    "$RHEMAD" -f -P "$PLUGIN_DIR" -o service.data_directory="$tmp" "$@" \
        -o service.listen=127.0.0.1:"$port" -o service.workers="$WORKERS" \
        >"$tmp/rhemad-$name.log" 2>&1 &
    rpid=$!
    pids="$pids $rpid"
    base=http://127.0.0.1:$port
    wait_ready "$rpid" "$base/health/ready" || {
        cat "$tmp/rhemad-$name.log" >&2
        die "rhemad ($name) did not start"
    }

    # PUT
    echo "$name: PUT rhemad ..."
    settle
    prefix=p$$$(date +%s)
    thread_ticks "$rpid" >"$tmp/ticks0"
    t0=$(date +%s.%N)
    BENCH_PREFIX=$prefix wrk_run "$tmp/wrk-put-$name" "$base" -s "$here/put_session.lua"
    t1=$(date +%s.%N)
    thread_ticks "$rpid" >"$tmp/ticks1"
    wrk_check "$tmp/wrk-put-$name" || die "PUT on rhemad ($name) failed"
    put_r=$(wrk_rps "$tmp/wrk-put-$name")
    put_r99=$(wrk_p99_ms "$tmp/wrk-put-$name")
    cpu=$(thread_cpu "$tmp/ticks0" "$tmp/ticks1" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")

    # GET of sessions the PUT created: n in 2..M for every wrk thread, M
    # checked to exist for each thread
    total=$(wrk_requests "$tmp/wrk-put-$name")
    m=$((total / THREADS / 2))
    cap=$(((GET_SESSIONS + THREADS - 1) / THREADS + 1))
    [ "$m" -le "$cap" ] || m=$cap
    ok=
    while [ "$m" -gt 2 ]; do
        ok=1
        t=1
        while [ $t -le "$THREADS" ]; do
            code=$(curl -sS -o /dev/null -w '%{http_code}' "$base/v1/sessions/$prefix-$t-$m")
            [ "$code" = 200 ] || { ok=; break; }
            t=$((t + 1))
        done
        [ -n "$ok" ] && break
        m=$((m / 2))
    done
    [ -n "$ok" ] || die "$name: no session of the PUT run to GET"
    echo "$name: GET rhemad ($(((m - 1) * THREADS)) distinct sessions) ..."
    BENCH_PREFIX=$prefix BENCH_GET_THREADS=$THREADS BENCH_GET_N=$m \
        "$WRK" -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" -s "$here/get_session.lua" "$base" >/dev/null 2>&1
    BENCH_PREFIX=$prefix BENCH_GET_THREADS=$THREADS BENCH_GET_N=$m \
        wrk_run "$tmp/wrk-get-$name" "$base" -s "$here/get_session.lua"
    if wrk_check "$tmp/wrk-get-$name"; then
        get_r=$(wrk_rps "$tmp/wrk-get-$name")
        get_r99=$(wrk_p99_ms "$tmp/wrk-get-$name")
    else # reported, not fatal: the PUT rows still count
        get_r=$(wrk_rps "$tmp/wrk-get-$name")
        get_r99=ERR
        notes="$notes
$name: GET run had errors or timeouts: $(grep -E 'requests in|Non-2xx|Socket errors' "$tmp/wrk-get-$name" | tr -s ' ' | tr '\n' ';')"
    fi
    stop "$rpid"
    commits=$(grep -o '[0-9]* writes in [0-9]* group commits' "$tmp/rhemad-$name.log" |
        tail -n 1 | awk '{ print $1, $4 }')

    # the direct client
    echo "$name: direct client ..."
    settle
    case $name in
    sqlite-normal) "$tmp/sqlite_rw" -d "$tmp/direct-normal.db" -s "$SECONDS_" -S normal -r ;;
    sqlite-full) "$tmp/sqlite_rw" -d "$tmp/direct-full.db" -s "$SECONDS_" -S full -r ;;
    postgres) "$tmp/pg_raw" -c "host=127.0.0.1 port=$pg_port dbname=raw user=postgres" -s "$SECONDS_" -r ;;
    redis) "$tmp/redis_raw" -h 127.0.0.1 -p "$redis_port" -s "$SECONDS_" -r ;;
    esac >"$tmp/direct-$name.out" 2>&1 || {
        cat "$tmp/direct-$name.out" >&2
        die "direct client of $name failed"
    }
    put_d=$(awk '$1 == "put" { print $7 }' "$tmp/direct-$name.out")
    put_d99=$(awk '$1 == "put" { printf "%.2f", $11 / 1000 }' "$tmp/direct-$name.out")
    get_d=$(awk '$1 == "get" { print $7 }' "$tmp/direct-$name.out")
    get_d99=$(awk '$1 == "get" { printf "%.2f", $11 / 1000 }' "$tmp/direct-$name.out")
    # sqlite: the target's direct PUT stores the same rows as rhemad (record,
    # index entries, access record) in one transaction per session; the row
    # of one 1 KiB record per session stays printed as PUT1
    put_one=
    case $name in
    sqlite-*)
        settle
        "$tmp/sqlite_rw" -d "$tmp/direct-$name-rows.db" -s "$SECONDS_" -S "${name#sqlite-}" -a \
            >"$tmp/direct-$name-rows.out" 2>&1 || {
            cat "$tmp/direct-$name-rows.out" >&2
            die "direct client of $name (-a) failed"
        }
        put_one=$put_d
        put_one99=$put_d99
        put_d=$(awk '$1 == "put" { print $7 }' "$tmp/direct-$name-rows.out")
        put_d99=$(awk '$1 == "put" { printf "%.2f", $11 / 1000 }' "$tmp/direct-$name-rows.out")
        ;;
    esac

    put_ratio=$(awk -v a="$put_r" -v b="$put_d" 'BEGIN { printf "%.3f", a / b }')
    get_ratio=$(awk -v a="$get_r" -v b="$get_d" 'BEGIN { printf "%.3f", a / b }')
    if awk -v v="$put_ratio" 'BEGIN { exit !(v >= 1.00) }'; then
        v=PASS
    else
        v=FAIL
        missed=$((missed + 1))
    fi
    rows="$rows
$(printf '%-14s %-4s %12s %9s %12s %9s %7s  %s' "$name" PUT "$put_r" "$put_r99" "$put_d" "$put_d99" "$put_ratio" "$v")
$(printf '%-14s %-4s %12s %9s %12s %9s %7s  %s' "$name" GET "$get_r" "$get_r99" "$get_d" "$get_d99" "$get_ratio" "-")"
    if [ -n "$put_one" ]; then
        rows="$rows
$(printf '%-14s %-4s %12s %9s %12s %9s %7s  %s' "$name" PUT1 "$put_r" "$put_r99" "$put_one" "$put_one99" \
            "$(awk -v a="$put_r" -v b="$put_one" 'BEGIN { printf "%.3f", a / b }')" "-")"
    fi
    group=
    if [ -n "$commits" ]; then
        group=$(echo "$commits" | awk '{ printf "; %d writes in %d group commits (%.1f per commit)", $1, $2, $2 ? $1 / $2 : 0 }')
    fi
    notes="$notes
$name: rhemad threads during PUT (% of one core): $cpu$group"
}

for b in $BACKENDS; do
    case $b in
    sqlite-normal)
        mkdir -p "$tmp/sqlite-normal"
        bench_backend "$b" -o persistence.backend=sqlite \
            -o persistence.sqlite.path="$tmp/sqlite-normal/rhema.db" -o persistence.sqlite.synchronous=normal
        ;;
    sqlite-full)
        mkdir -p "$tmp/sqlite-full"
        bench_backend "$b" -o persistence.backend=sqlite \
            -o persistence.sqlite.path="$tmp/sqlite-full/rhema.db" -o persistence.sqlite.synchronous=full
        ;;
    postgres)
        bench_backend "$b" -o persistence.backend=postgres \
            -o "persistence.postgres.conninfo=host=127.0.0.1 port=$pg_port dbname=rhema user=postgres"
        ;;
    redis)
        bench_backend "$b" -o persistence.backend=redis \
            -o persistence.redis.host=127.0.0.1 -o persistence.redis.port="$redis_port"
        ;;
    esac
done

echo
echo "session PUT (new 1 KiB session) and GET (existing session), rhemad vs one direct connection"
printf '%-14s %-4s %12s %9s %12s %9s %7s  %s\n' backend op "rhemad op/s" "p99 ms" "direct op/s" "p99 ms" ratio "PUT>=1.0"
echo "$rows" | sed '/^$/d'
echo "$notes" | sed '/^$/d'
echo "sqlite PUT: direct = the same rows as rhemad stores per session, one transaction each;"
echo "            PUT1: direct = one 1 KiB record per session (no index), for reference"
echo
echo "PUT targets missed: $missed"
exit $missed
