#!/bin/sh
# bench/run.sh -- rhemad against the raw libraries it is built on, on this
# machine, in one run.  A benchmark, not a test: never part of `make check`.
#
#   1. GET /v1/sessions/{id} on rhemad (memory backend) against a bare
#      libevent evhttp server (bench/bare_evhttp.c) returning the same bytes
#      with the same threading; target: rhemad >= 70% of the bare server.
#   2. PUT of a 1 KiB session on rhemad (sqlite backend, synchronous=normal)
#      against one SQLite connection doing autocommit inserts of the same
#      rows into the plugin's table (bench/sqlite_raw.c -a): the session
#      record, its status and participant index entries and its access
#      record, each an autocommit insert; target: rhemad >= 100% of raw
#      SQLite.  Printed beside it, to read the ratio by:
#        - one 1 KiB row per session, autocommit (a stricter reading of the
#          target: the session record alone, no index);
#        - the same rows, one transaction per session (-a -g 1);
#        - the same rows, 16 sessions per transaction (-a -g 16): about the
#          least SQLite needs for them, with group commit, on its own core;
#        - PUT on rhemad with the memory backend: the HTTP and JSON path
#          with no storage cost, the most any backend could give.
#   3. Idle RSS of rhemad (VmRSS after start and a few requests); target
#      under 16 MiB.
#
# Environment:
#   BENCH_SECONDS  duration of each measurement (default 10)
#   BENCH_THREADS  wrk threads (default 2)       BENCH_CONNS  wrk connections (default 32)
#   BENCH_WORKERS  worker threads of rhemad and the bare server (default: nproc)
#   BENCH_WARMUP   seconds of warm-up before each GET measurement (default 2)
#   top_builddir   where rhemad and plugins/.libs are (default: the source tree)
#   CC, WRK, PKG_CONFIG
# Exit status: the number of targets missed (0: all met); 99 on a setup error.

set -u

BENCH_NAME=run.sh
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}

bench_need_tools
[ -x "$RHEMAD" ] || die "$RHEMAD not built (make rhemad)"
[ -f "$PLUGIN_DIR/storage_memory.so" ] || die "$PLUGIN_DIR/storage_memory.so not built"
[ -f "$PLUGIN_DIR/storage_sqlite.so" ] || die "$PLUGIN_DIR/storage_sqlite.so not built"

bench_tmpdir rhema-bench

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# ---- build the baselines ----
echo "building bench/bare_evhttp and bench/sqlite_raw in $tmp"
# shellcheck disable=SC2046
"$CC" -O2 -g -pthread $($PKG_CONFIG --cflags libevent libevent_pthreads) -o "$tmp/bare_evhttp" \
    "$here/bare_evhttp.c" $($PKG_CONFIG --libs libevent libevent_pthreads) ||
    die "cannot build bare_evhttp"
# shellcheck disable=SC2046
"$CC" -O2 -g $($PKG_CONFIG --cflags sqlite3) -o "$tmp/sqlite_raw" "$here/sqlite_raw.c" \
    $($PKG_CONFIG --libs sqlite3) || die "cannot build sqlite_raw"

echo "machine: $(nproc) cores; wrk -t$THREADS -c$CONNS -d${SECONDS_}s; $WORKERS workers"

# ---- 1. GET: rhemad (memory) ----
bench_start memory -o service.data_directory="$tmp" -o persistence.backend=memory
pad=$(printf '%0900d' 0 | tr 0 x)
code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
    -d "{\"topic\":\"$pad\",\"participants\":[\"agent-1\",\"agent-2\",\"agent-3\"],\"status\":\"Active\"}" \
    "$base/v1/sessions/bench-get")
[ "$code" = 201 ] || die "PUT of the GET benchmark's session answered $code"
for i in 1 2 3 4 5; do
    curl -sS -o /dev/null "$base/v1/sessions/bench-get"
done
sleep 1
rss_idle=$(rss_kib "$rpid")
# the exact bytes (body and ETag) rhemad answers, for the bare server
curl -sS -D "$tmp/get.headers" -o "$tmp/get.body" "$base/v1/sessions/bench-get"
etag=$(awk 'tolower($1) == "etag:" { sub(/\r$/, "", $2); print $2 }' "$tmp/get.headers")
body_bytes=$(wc -c <"$tmp/get.body")

echo "GET rhemad (memory) ..."
get_rhemad=$(bench_measure "$tmp/wrk-get-rhemad" "$base/v1/sessions/bench-get") ||
    die "GET on rhemad failed"
rss_after_get=$(rss_kib "$rpid")
echo "PUT rhemad (memory) ..."
wrk_run "$tmp/wrk-put-memory" "$base" -s "$here/put_session.lua"
wrk_check "$tmp/wrk-put-memory" || die "PUT on rhemad (memory) failed"
put_memory=$(wrk_rps "$tmp/wrk-put-memory")
stop "$rpid"

# ---- 1'. GET: the bare evhttp server, same bytes ----
port=$(free_port)
"$tmp/bare_evhttp" -l 127.0.0.1:"$port" -t "$WORKERS" -b "$tmp/get.body" -e "${etag:-\"1\"}" \
    >"$tmp/bare.log" 2>&1 &
bpid=$!
pids="$pids $bpid"
bbase=http://127.0.0.1:$port
wait_ready "$bpid" "$bbase/v1/sessions/bench-get" || { cat "$tmp/bare.log" >&2; die "bare_evhttp did not start"; }
curl -sS -D "$tmp/bare.headers" -o "$tmp/bare.body" "$bbase/v1/sessions/bench-get"
echo "GET bare evhttp ..."
get_bare=$(bench_measure "$tmp/wrk-get-bare" "$bbase/v1/sessions/bench-get") ||
    die "GET on bare_evhttp failed"
stop "$bpid"

# ---- 2. PUT: rhemad (sqlite, synchronous=normal) ----
mkdir -p "$tmp/sqlite"
bench_start sqlite -o service.data_directory="$tmp" -o persistence.backend=sqlite \
    -o persistence.sqlite.path="$tmp/sqlite/rhema.db" -o persistence.sqlite.synchronous=normal
for i in 1 2 3 4 5; do
    curl -sS -o /dev/null "$base/health"
done
sleep 1
rss_idle_sqlite=$(rss_kib "$rpid")
echo "PUT rhemad (sqlite) ..."
wrk_run "$tmp/wrk-put-rhemad" "$base" -s "$here/put_session.lua"
wrk_check "$tmp/wrk-put-rhemad" || die "PUT on rhemad failed"
put_rhemad=$(wrk_rps "$tmp/wrk-put-rhemad")
stop "$rpid"

# ---- 2'. raw SQLite ----
# Each run starts from an empty file.  raw_run OUT ARGS...: the rate printed.
raw_run() {
    out=$1
    shift
    rm -f "$tmp"/raw.db*
    "$tmp/sqlite_raw" -d "$tmp/raw.db" -s "$SECONDS_" -b 1024 "$@" >"$out" 2>&1 || {
        cat "$out" >&2
        die "sqlite_raw $* failed"
    }
    awk '{ print $6 }' "$out"
}
echo "INSERT raw sqlite ..."
# the target: every row rhemad writes for a session (record, status and
# participant index entries, access record), each an autocommit insert
put_raw_all=$(raw_run "$tmp/raw-all.out" -a)
put_raw=$(raw_run "$tmp/raw.out")
put_raw_tx=$(raw_run "$tmp/raw-tx.out" -a -g 1)
put_raw_g16=$(raw_run "$tmp/raw-g16.out" -a -g 16)

# ---- report ----
verdict() { # value op target
    if awk -v v="$1" -v t="$3" "BEGIN { exit !(v $2 t) }"; then echo PASS; else echo FAIL; fi
}
get_ratio=$(awk -v a="$get_rhemad" -v b="$get_bare" 'BEGIN { printf "%.3f", a / b }')
put_ratio=$(awk -v a="$put_rhemad" -v b="$put_raw_all" 'BEGIN { printf "%.3f", a / b }')
put_ratio_one=$(awk -v a="$put_rhemad" -v b="$put_raw" 'BEGIN { printf "%.3f", a / b }')
put_ratio_tx=$(awk -v a="$put_rhemad" -v b="$put_raw_tx" 'BEGIN { printf "%.3f", a / b }')
rss_mib=$(awk -v k="$rss_idle" 'BEGIN { printf "%.1f", k / 1024 }')
v_get=$(verdict "$get_ratio" ">=" 0.70)
v_put=$(verdict "$put_ratio" ">=" 1.00)
v_rss=$(verdict "$rss_idle" "<" 16384)

echo
echo "GET response: $body_bytes bytes of body, ETag $etag"
printf '%-54s %12s\n' "measurement" "value"
printf '%-54s %12s\n' "GET /v1/sessions/{id}, rhemad memory (req/s)" "$get_rhemad"
printf '%-54s %12s\n' "GET, bare evhttp, same bytes (req/s)" "$get_bare"
printf '%-54s %12s\n' "PUT 1 KiB session, rhemad sqlite (req/s)" "$put_rhemad"
printf '%-54s %12s\n' "raw SQLite, the same rows, autocommit (sessions/s)" "$put_raw_all"
printf '%-54s %12s\n' "raw SQLite, one 1 KiB row per session (rows/s)" "$put_raw"
printf '%-54s %12s\n' "raw SQLite, same rows, 1 tx per session (sessions/s)" "$put_raw_tx"
printf '%-54s %12s\n' "raw SQLite, same rows, 16 sessions per tx (sessions/s)" "$put_raw_g16"
printf '%-54s %12s\n' "PUT 1 KiB session, rhemad memory (req/s)" "$put_memory"
printf '%-54s %9s KiB\n' "rhemad idle RSS, memory backend" "$rss_idle"
printf '%-54s %9s KiB\n' "rhemad RSS after the GET run" "$rss_after_get"
printf '%-54s %9s KiB\n' "rhemad idle RSS, sqlite backend" "$rss_idle_sqlite"
echo
echo "GET ratio rhemad/bare   = $get_ratio  (target >= 0.70)  $v_get"
echo "PUT ratio rhemad/sqlite = $put_ratio  (target >= 1.00)  $v_put   (the same rows, autocommit)"
echo "PUT ratio vs one 1 KiB row per session = $put_ratio_one; vs the same rows in 1 tx per session = $put_ratio_tx (for reference)"
echo "idle RSS                = $rss_mib MiB (target < 16 MiB) $v_rss"

missed=0
for v in $v_get $v_put $v_rss; do
    [ "$v" = PASS ] || missed=$((missed + 1))
done
exit $missed
