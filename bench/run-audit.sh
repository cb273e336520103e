#!/bin/sh
# bench/run-audit.sh -- the cost of the audit log (security.audit): rhemad
# with it off and on, in one run, on this machine.  A benchmark, not a
# test: never part of `make check`.
#
#   1. GET /v1/sessions/{id} (memory backend): audit off, then on (one end
#      record per request, batched, fdatasync per batch).  Issue 9 asks
#      that a GET with authentication, authorization, rate limiting and
#      auditing all on stay >= 0.85x the same GET with them off; this
#      measures the audit's share of that budget alone.
#   2. PUT of a 1 KiB session (memory backend): off, then on.  Each write
#      waits for its begin record to be durable before its handler runs,
#      so this is the worst case: no storage cost to hide the sync behind.
#   3. PUT of a 1 KiB session (sqlite backend, synchronous=normal): off,
#      then on.
# Printed too: the CPU time rhemad spends per GET (user + system, from
# /proc), off and on -- less at the mercy of other load than req/s, since
# it counts only rhemad's own work.
# Each pair runs one after the other against fresh daemons, BENCH_REPS
# times (default 2) alternating off and on; the best of each side counts
# (on a machine shared with other work, load comes and goes between two
# runs), and the ratio is best on / best off.  The audit log is written under BENCH_AUDIT_DIR
# (default: the temporary directory), whose file system is printed: on
# tmpfs fdatasync is free and the numbers flatter the audit.
#
# Environment: BENCH_SECONDS (default 10), BENCH_REPS (2), BENCH_THREADS (2),
# BENCH_CONNS (32), BENCH_WORKERS (nproc), BENCH_WARMUP (2), BENCH_AUDIT_DIR,
# top_builddir, WRK.
# Exit status: 0 when the GET ratio is >= 0.85, 1 otherwise; 99 on a setup
# error.

set -u

BENCH_NAME=run-audit.sh
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
REPS=${BENCH_REPS:-2}

bench_need_tools
[ -x "$RHEMAD" ] || die "$RHEMAD not built (make rhemad)"
[ -f "$PLUGIN_DIR/storage_memory.so" ] || die "$PLUGIN_DIR/storage_memory.so not built"

bench_tmpdir rhema-bench-audit
AUDIT_DIR=${BENCH_AUDIT_DIR:-$tmp}

# start NAME AUDIT(on|off) BACKEND-ARGS...: sets rpid and base
start() {
    name=$1
    audit=$2
    shift 2
    if [ "$audit" = on ]; then
        rm -f "$AUDIT_DIR/$name.audit.log" "$AUDIT_DIR/$name.audit.log.key"
        set -- "$@" -o security.audit.enabled=true -o security.audit.file="$AUDIT_DIR/$name.audit.log"
    fi
    bench_start "$name" "$@"
}

pad=$(printf '%0900d' 0 | tr 0 x)

# CPU time (user + system, clock ticks) rhemad $1 used so far
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

# get_run NAME AUDIT: "req/s cpu-us-per-request" of GET on one session
get_run() {
    start "$1" "$2" -o persistence.backend=memory
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
        -d "{\"topic\":\"$pad\",\"participants\":[\"agent-1\",\"agent-2\"],\"status\":\"Active\"}" \
        "$base/v1/sessions/bench-get")
    [ "$code" = 201 ] || die "PUT of the GET benchmark's session answered $code"
    wrk_warmup "$base/v1/sessions/bench-get"
    t0=$(cpu_ticks "$rpid")
    wrk_run "$tmp/wrk-$1" "$base/v1/sessions/bench-get"
    t1=$(cpu_ticks "$rpid")
    wrk_check "$tmp/wrk-$1" || die "GET ($1) failed"
    stop "$rpid"
    n=$(awk '/requests in/ { print $1 }' "$tmp/wrk-$1")
    echo "$(wrk_rps "$tmp/wrk-$1") $(awk -v t="$((t1 - t0))" -v n="$n" -v hz="$HZ" \
        'BEGIN { printf "%.2f", t * 1e6 / hz / n }')"
}

# put_run NAME AUDIT BACKEND-ARGS...: req/s of PUT of new sessions
put_run() {
    n=$1
    start "$@"
    wrk_run "$tmp/wrk-$n" "$base" -s "$here/put_session.lua"
    wrk_check "$tmp/wrk-$n" || die "PUT ($n) failed"
    stop "$rpid"
    wrk_rps "$tmp/wrk-$n"
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$THREADS -c$CONNS -d${SECONDS_}s; $WORKERS workers; best of $REPS"
echo "audit log on $(stat -f -c %T "$AUDIT_DIR") ($AUDIT_DIR)"

best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }
least() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }'; }

cpu_off= cpu_on=
get_off=0 get_on=0 put_mem_off=0 put_mem_on=0 put_sql_off=0 put_sql_on=0
have_sqlite=0
[ -f "$PLUGIN_DIR/storage_sqlite.so" ] && have_sqlite=1
rep=1
while [ $rep -le "$REPS" ]; do
    echo "round $rep of $REPS: GET, audit off / on ..."
    v=$(get_run get-off off) || exit 99
    get_off=$(best "$get_off" "${v% *}")
    cpu_off=$(least "$cpu_off" "${v#* }")
    v=$(get_run get-on on) || exit 99
    get_on=$(best "$get_on" "${v% *}")
    cpu_on=$(least "$cpu_on" "${v#* }")
    echo "round $rep of $REPS: PUT memory, audit off / on ..."
    v=$(put_run put-mem-off off -o persistence.backend=memory) || exit 99
    put_mem_off=$(best "$put_mem_off" "$v")
    v=$(put_run put-mem-on on -o persistence.backend=memory) || exit 99
    put_mem_on=$(best "$put_mem_on" "$v")
    if [ $have_sqlite = 1 ]; then
        echo "round $rep of $REPS: PUT sqlite, audit off / on ..."
        rm -rf "$tmp/off" "$tmp/on"
        mkdir -p "$tmp/off" "$tmp/on"
        v=$(put_run put-sql-off off -o persistence.backend=sqlite \
            -o persistence.sqlite.path="$tmp/off/rhema.db" -o persistence.sqlite.synchronous=normal) || exit 99
        put_sql_off=$(best "$put_sql_off" "$v")
        v=$(put_run put-sql-on on -o persistence.backend=sqlite \
            -o persistence.sqlite.path="$tmp/on/rhema.db" -o persistence.sqlite.synchronous=normal) || exit 99
        put_sql_on=$(best "$put_sql_on" "$v")
    fi
    rep=$((rep + 1))
done

# the logs written must verify: a fast run that wrote a broken log is no result
for f in "$AUDIT_DIR"/get-on.audit.log "$AUDIT_DIR"/put-mem-on.audit.log; do
    if [ -x "$RHEMACTL" ]; then
        "$RHEMACTL" audit verify "$f" >"$tmp/verify.out" 2>&1 || { cat "$tmp/verify.out" >&2; die "$f does not verify"; }
        lines=$(wc -l <"$f")
        echo "$(basename "$f"): $lines records, $(head -n1 "$tmp/verify.out")"
    fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
get_ratio=$(ratio "$get_on" "$get_off")
echo
printf '%-44s %12s %12s %8s\n' "measurement (req/s)" "audit off" "audit on" "on/off"
printf '%-44s %12s %12s %8s\n' "GET /v1/sessions/{id}, memory" "$get_off" "$get_on" "$get_ratio"
printf '%-44s %12s %12s %8s\n' "PUT 1 KiB session, memory" "$put_mem_off" "$put_mem_on" \
    "$(ratio "$put_mem_on" "$put_mem_off")"
printf '%-44s %12s %12s %8s\n' "rhemad CPU per GET (us, user+sys; lowest)" "$cpu_off" "$cpu_on" \
    "$(ratio "$cpu_on" "$cpu_off")"
if [ $have_sqlite = 1 ]; then
    printf '%-44s %12s %12s %8s\n' "PUT 1 KiB session, sqlite (normal)" "$put_sql_off" "$put_sql_on" \
        "$(ratio "$put_sql_on" "$put_sql_off")"
fi
echo
if awk -v r="$get_ratio" 'BEGIN { exit !(r >= 0.85) }'; then
    echo "GET ratio audit on/off = $get_ratio (issue 9's budget for every security stage together: >= 0.85)  PASS"
    exit 0
fi
echo "GET ratio audit on/off = $get_ratio (issue 9's budget for every security stage together: >= 0.85)  FAIL"
exit 1
