#!/bin/sh
# bench/run-reads.sh -- reads that never wait on writes (issue 14): for every
# backend, in one run, one after the other:
#   PUT    wrk of new 1 KiB sessions (bench/put_session.lua): req/s, p99
#   GET    wrk of BENCH_GET_SESSIONS of those sessions at random
#          (bench/get_session.lua; access counting on, the default): req/s, p99
#   MIXED  90% GET of those, 10% PUT of new ones (bench/mixed_session.lua):
#          the PUT rate it kept, against the PUT-only rate scaled by 10%
# Targets (printed PASS/FAIL, counted in the exit status):
#   GET on sqlite (normal and full) >= 0.85x GET on memory;
#   GET p99 <= 5 ms on every durable backend;
#   MIXED: PUTs/s >= 0.9 x (PUT-only req/s x the PUT share);
#   PUT on memory >= PUT on sqlite-normal.
# BENCH_BACKENDS: the backends (default "memory sqlite-normal sqlite-full file
# postgres redis"); PostgreSQL (fsync=on, synchronous_commit=on) and Redis
# (appendonly yes, appendfsync always) are started in the temporary directory
# on free loopback ports (bench/lib.sh).  BENCH_PUT_PERCENT (default 10);
# BENCH_REPS (default 1): each measurement taken that many times in a row,
# the best req/s and the best p99 kept (the fair estimate on a shared
# machine, for every backend alike);
# the rest as in bench/lib.sh (BENCH_SECONDS, BENCH_CONNS ...).
# A benchmark, never part of make check.  Exit status: targets missed; 99 on
# a setup error.
set -e
BENCH_NAME=run-reads.sh
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
bench_need_tools
bench_tmpdir rhema-reads
BACKENDS=${BENCH_BACKENDS:-memory sqlite-normal sqlite-full file postgres redis}
GET_SESSIONS=${BENCH_GET_SESSIONS:-1000}
PCT=${BENCH_PUT_PERCENT:-10}
REPS=${BENCH_REPS:-1}

for b in $BACKENDS; do
    case $b in
    memory | sqlite-normal | sqlite-full | file) ;;
    postgres) [ -n "$pg_started" ] || bench_pg_start ;;
    redis) [ -n "$redis_pid" ] || bench_redis_start ;;
    *) die "unknown backend '$b'" ;;
    esac
done

# p99 of a wrk --latency output, in ms
wrk_p99_ms() {
    awk '$1 == "99%" { v = $2
        if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); v = v + 0 }
        else if (v ~ /m$/) { sub(/m$/, "", v); v = v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
        printf "%.2f", v }' "$1"
}
settle() { sync; sleep 1; }
best_max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 > a + 0) ? b : a }'; }
best_min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }'; }

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg);" \
    "wrk -t$THREADS -c$CONNS -d${SECONDS_}s --latency, best of $REPS; $WORKERS workers"
[ -n "$pg_started" ] && echo "postgres $pg_version: fsync=on, synchronous_commit=on"
[ -n "$redis_pid" ] && echo "redis $redis_version: appendonly yes, appendfsync always"

missed=0
rows=
# target LABEL OK(0/1): print the line, count a miss (not in a subshell)
target() {
    if [ "$2" = 1 ]; then echo "  $1: PASS"; else
        missed=$((missed + 1))
        echo "  $1: FAIL"
    fi
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN { print (a >= b) ? 1 : 0 }'; }

for b in $BACKENDS; do
    case $b in
    memory) set -- -o persistence.backend=memory ;;
    sqlite-*)
        mkdir -p "$tmp/$b"
        set -- -o persistence.backend=sqlite -o persistence.sqlite.path="$tmp/$b/rhema.db" \
            -o persistence.sqlite.synchronous="${b#sqlite-}"
        ;;
    file) set -- -o persistence.backend=file -o persistence.file.directory="$tmp/files" ;;
    postgres) set -- -o persistence.backend=postgres -o persistence.postgres.conninfo="$pg_conninfo" ;;
    redis) set -- -o persistence.backend=redis -o persistence.redis.host=127.0.0.1 \
        -o persistence.redis.port="$redis_port" ;;
    esac
    settle
    bench_start "$b" -o service.data_directory="$tmp" "$@"
    prefix=r$$$(date +%s)
    echo "$b: PUT ..."
    put= put99=
    r=1
    while [ $r -le "$REPS" ]; do # round r writes sessions <prefix>[r]-<thread>-<n>
        p=$prefix
        [ $r -gt 1 ] && p=$prefix$r
        BENCH_PREFIX=$p wrk_run "$tmp/put-$b" "$base" --latency -s "$here/put_session.lua"
        wrk_check "$tmp/put-$b" || die "$b: PUT failed"
        put=$(best_max "$put" "$(wrk_rps "$tmp/put-$b")")
        put99=$(best_min "$put99" "$(wrk_p99_ms "$tmp/put-$b")")
        r=$((r + 1))
    done
    # the sessions to read: n in 2..m for every wrk thread; fewer when the
    # PUT run of a slow backend (file: ~300/s) made fewer, halved until
    # every thread has made them
    m=$(((GET_SESSIONS + THREADS - 1) / THREADS + 1))
    while :; do
        t=1
        while [ $t -le "$THREADS" ]; do
            code=$(curl -sS -o /dev/null -w '%{http_code}' "$base/v1/sessions/$prefix-$t-$m")
            [ "$code" = 200 ] || break
            t=$((t + 1))
        done
        [ $t -gt "$THREADS" ] && break
        [ $m -gt 3 ] || die "$b: the PUT run made fewer than 3 sessions per thread"
        m=$((m / 2 + 1))
    done
    [ $(((m - 1) * THREADS)) -ge "$GET_SESSIONS" ] ||
        echo "$b: GET reads $(((m - 1) * THREADS)) sessions (the PUT run made fewer than $GET_SESSIONS)"
    echo "$b: GET ..."
    export BENCH_PREFIX=$prefix BENCH_GET_THREADS=$THREADS BENCH_GET_N=$m BENCH_PUT_PERCENT=$PCT
    wrk_warmup "$base" -s "$here/get_session.lua"
    get= get99= mix= mix99= mixput=
    r=1
    while [ $r -le "$REPS" ]; do
        wrk_run "$tmp/get-$b" "$base" --latency -s "$here/get_session.lua"
        wrk_check "$tmp/get-$b" || die "$b: GET failed"
        get=$(best_max "$get" "$(wrk_rps "$tmp/get-$b")")
        get99=$(best_min "$get99" "$(wrk_p99_ms "$tmp/get-$b")")
        r=$((r + 1))
    done
    echo "$b: MIXED ..."
    r=1
    while [ $r -le "$REPS" ]; do
        wrk_run "$tmp/mixed-$b" "$base" --latency -s "$here/mixed_session.lua"
        wrk_check "$tmp/mixed-$b" || die "$b: MIXED failed"
        mix=$(best_max "$mix" "$(wrk_rps "$tmp/mixed-$b")")
        mix99=$(best_min "$mix99" "$(wrk_p99_ms "$tmp/mixed-$b")")
        mixput=$(best_max "$mixput" "$(awk -v s="$SECONDS_" '$1 == "mixed:" { printf "%.0f", $3 / s }' "$tmp/mixed-$b")")
        r=$((r + 1))
    done
    unset BENCH_PREFIX BENCH_GET_THREADS BENCH_GET_N BENCH_PUT_PERCENT
    stop "$rpid"
    eval "put_$(echo "$b" | tr - _)=$put get_$(echo "$b" | tr - _)=$get"
    mixratio=$(awk -v a="$mixput" -v p="$put" -v s="$PCT" 'BEGIN { printf "%.3f", a / (p * s / 100) }')
    rows="$rows
$(printf '%-14s %9s %7s %9s %7s %9s %7s %8s %7s' "$b" "$put" "$put99" "$get" "$get99" "$mix" "$mix99" "$mixput" "$mixratio")"
done

echo
echo "req/s and p99 (ms) at $CONNS connections; MIXED = ${PCT}% PUT; mixPUT/s over PUT-only x ${PCT}%"
printf '%-14s %9s %7s %9s %7s %9s %7s %8s %7s\n' backend PUT p99 GET p99 MIXED p99 mixPUT/s ratio
echo "$rows" | sed '/^$/d'
echo
echo "targets:"
for b in $BACKENDS; do
    v=$(echo "$rows" | awk -v b="$b" '$1 == b')
    get99=$(echo "$v" | awk '{ print $5 }')
    mixratio=$(echo "$v" | awk '{ print $9 }')
    [ "$b" = memory ] || target "$b: GET p99 $get99 ms <= 5" "$(ge 5 "$get99")"
    target "$b: MIXED PUT ratio $mixratio >= 0.9" "$(ge "$mixratio" 0.9)"
done
if [ -n "${get_memory:-}" ]; then
    for b in sqlite_normal sqlite_full; do
        eval "g=\${get_$b:-}"
        [ -n "$g" ] || continue
        r=$(awk -v a="$g" -v b="$get_memory" 'BEGIN { printf "%.3f", a / b }')
        target "$b: GET / memory GET $r >= 0.85" "$(ge "$r" 0.85)"
    done
    if [ -n "${put_sqlite_normal:-}" ]; then
        r=$(awk -v a="$put_memory" -v b="$put_sqlite_normal" 'BEGIN { printf "%.3f", a / b }')
        target "memory PUT / sqlite-normal PUT $r >= 1" "$(ge "$r" 1)"
    fi
fi
echo "targets missed: $missed"
exit $missed
