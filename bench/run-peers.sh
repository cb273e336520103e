#!/bin/sh
# bench/run-peers.sh -- rhemad against its peer in the same run (issue 14
# item 4): etcd (Debian's etcd-server: one member on loopback, its data in
# the temporary directory, fsync'd WAL, the defaults) and rhemad (SQLite,
# synchronous=normal: durable across a crash of the process, as
# doc/storage.md defines it), one after the other, with the same wrk
# settings (BENCH_THREADS, BENCH_CONNS, BENCH_SECONDS):
#   PUT  etcd: POST /v3/kv/put of new keys, 512 B values (bench/etcd_kv.lua)
#        rhemad: PUT of new 1 KiB sessions (bench/put_session.lua)
#   GET  etcd: POST /v3/kv/range of keys the put run wrote (linearizable)
#        rhemad: GET of sessions the PUT run created (bench/get_session.lua)
# Each measurement is taken BENCH_REPS times (default 3), alternating the
# two servers, and the best req/s and the best p99 of each are kept: on a
# shared machine the best of several is the fair estimate of each side.
# A third row, for context and not a target: rhemad PUT on the memory
# backend (no storage at all) -- the most rhemad's HTTP and JSON path does
# on this machine, which bounds what any durable backend can reach.
# Targets: rhemad PUT >= 3x etcd put; rhemad GET >= 5x etcd get; rhemad's
# p99 below etcd's for both.  Without etcd (ETCD, default etcd) the script
# says so and exits 77.  Exit status: targets missed; 99 on a setup error.
set -e
BENCH_NAME=run-peers.sh
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
bench_need_tools
ETCD=${ETCD:-etcd}
REPS=${BENCH_REPS:-3}
GET_SESSIONS=${BENCH_GET_SESSIONS:-1000}
command -v "$ETCD" >/dev/null 2>&1 || { echo "run-peers.sh: etcd not installed ($ETCD): nothing to compare with"; exit 77; }
bench_tmpdir rhema-peers

wrk_p99_ms() {
    awk '$1 == "99%" { v = $2
        if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); v = v + 0 }
        else if (v ~ /m$/) { sub(/m$/, "", v); v = v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
        printf "%.2f", v }' "$1"
}
best_max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b > a) ? b : a }'; }
best_min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b < a) ? b : a }'; }

# etcd, one member
ec=$(free_port)
ep=$(free_port)
"$ETCD" --name bench --data-dir "$tmp/etcd" \
    --listen-client-urls "http://127.0.0.1:$ec" --advertise-client-urls "http://127.0.0.1:$ec" \
    --listen-peer-urls "http://127.0.0.1:$ep" --initial-advertise-peer-urls "http://127.0.0.1:$ep" \
    --initial-cluster "bench=http://127.0.0.1:$ep" >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!
pids="$pids $etcd_pid"
wait_ready "$etcd_pid" "http://127.0.0.1:$ec/health" || {
    tail -n 20 "$tmp/etcd.log" >&2
    die "etcd did not start"
}
ebase=http://127.0.0.1:$ec
etcd_version=$("$ETCD" --version | awk '/^etcd Version/ { print $3 }')

# rhemad on SQLite, synchronous=normal
mkdir -p "$tmp/sqlite"
bench_start rhemad -o service.data_directory="$tmp" -o persistence.backend=sqlite \
    -o persistence.sqlite.path="$tmp/sqlite/rhema.db" -o persistence.sqlite.synchronous=normal
sqlite_pid=$rpid sqlite_base=$base
# rhemad on memory: the ceiling row
mkdir -p "$tmp/mem"
bench_start rhemad-memory -o service.data_directory="$tmp/mem" -o persistence.backend=memory
mem_pid=$rpid mem_base=$base
base=$sqlite_base

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$THREADS -c$CONNS" \
    "-d${SECONDS_}s --latency, best of $REPS; rhemad $WORKERS workers; etcd $etcd_version"

m=$(((GET_SESSIONS + THREADS - 1) / THREADS + 1)) # keys 2..m of every thread are read
e_put= e_put99= r_put= r_put99= e_get= e_get99= r_get= r_get99= m_put= m_put99=
rep=1
while [ "$rep" -le "$REPS" ]; do
    prefix=p$$r$rep
    echo "round $rep: PUT etcd, PUT rhemad, PUT rhemad on memory ..."
    sync
    BENCH_ETCD_OP=put BENCH_PREFIX=$prefix wrk_run "$tmp/e-put" "$ebase" --latency -s "$here/etcd_kv.lua"
    wrk_check "$tmp/e-put" || die "etcd put failed"
    sync
    BENCH_PREFIX=$prefix wrk_run "$tmp/r-put" "$base" --latency -s "$here/put_session.lua"
    wrk_check "$tmp/r-put" || die "rhemad PUT failed"
    BENCH_PREFIX=$prefix wrk_run "$tmp/m-put" "$mem_base" --latency -s "$here/put_session.lua"
    wrk_check "$tmp/m-put" || die "rhemad PUT (memory) failed"
    m_put=$(best_max "$m_put" "$(wrk_rps "$tmp/m-put")")
    m_put99=$(best_min "$m_put99" "$(wrk_p99_ms "$tmp/m-put")")
    e_put=$(best_max "$e_put" "$(wrk_rps "$tmp/e-put")")
    e_put99=$(best_min "$e_put99" "$(wrk_p99_ms "$tmp/e-put")")
    r_put=$(best_max "$r_put" "$(wrk_rps "$tmp/r-put")")
    r_put99=$(best_min "$r_put99" "$(wrk_p99_ms "$tmp/r-put")")
    # the keys the GETs read exist on both sides
    t=1
    while [ "$t" -le "$THREADS" ]; do
        k=$(printf '%s' "$prefix-$t-$m" | base64 -w0)
        curl -fsS -X POST -d "{\"key\":\"$k\"}" "$ebase/v3/kv/range" | grep -q '"kvs"' ||
            die "etcd: the put run wrote fewer than $m keys per thread"
        [ "$(curl -sS -o /dev/null -w '%{http_code}' "$base/v1/sessions/$prefix-$t-$m")" = 200 ] ||
            die "rhemad: the PUT run created fewer than $m sessions per thread"
        t=$((t + 1))
    done
    echo "round $rep: GET etcd, GET rhemad ..."
    export BENCH_PREFIX=$prefix BENCH_GET_THREADS=$THREADS BENCH_GET_N=$m
    BENCH_ETCD_OP=get wrk_warmup "$ebase" -s "$here/etcd_kv.lua"
    BENCH_ETCD_OP=get wrk_run "$tmp/e-get" "$ebase" --latency -s "$here/etcd_kv.lua"
    wrk_check "$tmp/e-get" || die "etcd get failed"
    wrk_warmup "$base" -s "$here/get_session.lua"
    wrk_run "$tmp/r-get" "$base" --latency -s "$here/get_session.lua"
    wrk_check "$tmp/r-get" || die "rhemad GET failed"
    unset BENCH_PREFIX BENCH_GET_THREADS BENCH_GET_N
    e_get=$(best_max "$e_get" "$(wrk_rps "$tmp/e-get")")
    e_get99=$(best_min "$e_get99" "$(wrk_p99_ms "$tmp/e-get")")
    r_get=$(best_max "$r_get" "$(wrk_rps "$tmp/r-get")")
    r_get99=$(best_min "$r_get99" "$(wrk_p99_ms "$tmp/r-get")")
    rep=$((rep + 1))
done
stop "$sqlite_pid"
stop "$mem_pid"
stop "$etcd_pid" || true # etcd exits non-zero on SIGTERM

missed=0
target() { # LABEL OK(0/1)
    if [ "$2" = 1 ]; then echo "  $1: PASS"; else
        missed=$((missed + 1))
        echo "  $1: FAIL"
    fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b) ? 1 : 0 }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { print (a >= b) ? 1 : 0 }'; }
echo
printf '%-32s %10s %9s\n' "" "req/s" "p99 ms"
printf '%-32s %10s %9s\n' "etcd $etcd_version put (512 B)" "$e_put" "$e_put99"
printf '%-32s %10s %9s\n' "rhemad PUT session (sqlite)" "$r_put" "$r_put99"
printf '%-32s %10s %9s   (%sx etcd put: the ceiling, not a target)\n' \
    "rhemad PUT session (memory)" "$m_put" "$m_put99" "$(ratio "$m_put" "$e_put")"
printf '%-32s %10s %9s\n' "etcd get (linearizable)" "$e_get" "$e_get99"
printf '%-32s %10s %9s\n' "rhemad GET session (sqlite)" "$r_get" "$r_get99"
echo
echo "targets:"
pr=$(ratio "$r_put" "$e_put")
gr=$(ratio "$r_get" "$e_get")
target "PUT rhemad / etcd $pr >= 3" "$(ge "$pr" 3)"
target "GET rhemad / etcd $gr >= 5" "$(ge "$gr" 5)"
target "PUT p99 rhemad $r_put99 ms < etcd $e_put99 ms" "$(lt "$r_put99" "$e_put99")"
target "GET p99 rhemad $r_get99 ms < etcd $e_get99 ms" "$(lt "$r_get99" "$e_get99")"
echo "targets missed: $missed"
exit $missed
