#!/bin/sh
# bench/run-metrics.sh -- what GET /metrics costs (issue 11), on this machine,
# in one run.  A benchmark, not a test: never part of `make check`.
#
#   1. GET /v1/sessions/{id} on rhemad (memory backend) with
#      monitoring.enabled true and false, against the bare libevent evhttp
#      server (bench/bare_evhttp.c) returning the same bytes with the same
#      threading, as bench/run.sh does, in alternating rounds (medians);
#      target: rhemad with metrics on >= 90% of the bare server.
#      Beside it, the counting alone in a loop (bench/metrics_bench.c): the
#      nanoseconds a worker spends per reply and per storage call.
#   2. One scrape of /metrics from rhemad on sqlite in a one-node cluster,
#      after every route line of the route tables (core/api/*.c) was called
#      a few ways, so that the exposition holds over 1000 series: the series count and the time of a scrape (curl's
#      time_total over BENCH_SCRAPES scrapes: mean, median and best; and
#      wrk's mean on one kept-alive connection); target: median under 5 ms.
#
# Environment:
#   BENCH_SECONDS  duration of each GET measurement (default 10)
#   BENCH_THREADS  wrk threads (default 2)       BENCH_CONNS  wrk connections (default 32)
#   BENCH_WORKERS  worker threads of rhemad and the bare server (default: nproc)
#   BENCH_WARMUP   seconds of warm-up before each GET measurement (default 2)
#   BENCH_ROUNDS   rounds of the three GET measurements (default 3; medians compared)
#   BENCH_SCRAPES  scrapes timed in 2. (default 200)
#   top_builddir   where rhemad and plugins/.libs are (default: the source tree)
#   CC, WRK, PKG_CONFIG
# Exit status: the number of targets missed (0: all met); 99 on a setup error.

set -u

BENCH_NAME=run-metrics.sh
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
SCRAPES=${BENCH_SCRAPES:-200}
ROUNDS=${BENCH_ROUNDS:-3}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}

bench_need_tools
[ -x "$RHEMAD" ] || die "$RHEMAD not built (make rhemad)"
[ -f "$PLUGIN_DIR/storage_memory.so" ] || die "$PLUGIN_DIR/storage_memory.so not built"

bench_tmpdir rhema-bench-metrics
wrk_get() { # output-file url
    "$WRK" -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "$2" >/dev/null 2>&1
    "$WRK" -t"$THREADS" -c"$CONNS" -d"${SECONDS_}s" "$2" >"$1" 2>&1
    wrk_check "$1"
}

echo "building bench/bare_evhttp in $tmp"
# shellcheck disable=SC2046
"$CC" -O2 -g -pthread $($PKG_CONFIG --cflags libevent libevent_pthreads) -o "$tmp/bare_evhttp" \
    "$here/bare_evhttp.c" $($PKG_CONFIG --libs libevent libevent_pthreads) ||
    die "cannot build bare_evhttp"
# the counting alone, in a loop: stable on a loaded machine, unlike the GETs
micro=
if [ -f "$top_builddir/.libs/librhemacore.a" ]; then
    # shellcheck disable=SC2046
    "$CC" -O2 -std=c11 -D_GNU_SOURCE -I"$top_srcdir/core" -I"$top_srcdir/include" -I"$top_builddir" \
        -o "$tmp/metrics_bench" "$here/metrics_bench.c" "$top_builddir/.libs/librhemacore.a" \
        -lpthread && micro=$("$tmp/metrics_bench")
fi
echo "machine: $(nproc) cores; wrk -t$THREADS -c$CONNS -d${SECONDS_}s; $WORKERS workers"

pad=$(printf '%0900d' 0 | tr 0 x)
# start_rhemad NAME ENABLED [-o setting ...]: rhemad (memory backend unless the
# settings say otherwise), its session made; sets $rpid $base
start_rhemad() {
    port=$(free_port)
    name=$1
    enabled=$2
    shift 2
    [ $# -gt 0 ] || set -- -o persistence.backend=memory
    "$RHEMAD" -f -P "$PLUGIN_DIR" -o service.data_directory="$tmp" "$@" \
        -o service.listen=127.0.0.1:"$port" \
        -o service.workers="$WORKERS" -o monitoring.enabled="$enabled" -o logging.access_log=false \
        >"$tmp/rhemad-$name.log" 2>&1 &
    rpid=$!
    pids="$pids $rpid"
    base=http://127.0.0.1:$port
    wait_ready "$rpid" "$base/health/ready" || { cat "$tmp/rhemad-$name.log" >&2; die "rhemad did not start"; }
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
        -d "{\"topic\":\"$pad\",\"participants\":[\"agent-1\",\"agent-2\",\"agent-3\"],\"status\":\"Active\"}" \
        "$base/v1/sessions/bench-get")
    [ "$code" = 201 ] || die "PUT of the benchmark's session answered $code"
}

# ---- 1. GET with metrics on, off, and the bare server ----
# The three servers run side by side and are measured in turn, ROUNDS times
# (off, on, bare, off, on, bare ...): on a shared machine the load moves
# between runs, and the median of each is what is compared.
start_rhemad off false
off_pid=$rpid
off_url=$base/v1/sessions/bench-get
[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/metrics")" = 404 ] || die "metrics off still answers"
start_rhemad on true
on_pid=$rpid
on_base=$base
on_url=$base/v1/sessions/bench-get
curl -sS -D "$tmp/get.headers" -o "$tmp/get.body" "$on_url"
etag=$(awk 'tolower($1) == "etag:" { sub(/\r$/, "", $2); print $2 }' "$tmp/get.headers")
port=$(free_port)
"$tmp/bare_evhttp" -l 127.0.0.1:"$port" -t "$WORKERS" -b "$tmp/get.body" -e "${etag:-\"1\"}" \
    >"$tmp/bare.log" 2>&1 &
bpid=$!
pids="$pids $bpid"
bare_url=http://127.0.0.1:$port/v1/sessions/bench-get
wait_ready "$bpid" "$bare_url" || { cat "$tmp/bare.log" >&2; die "bare_evhttp did not start"; }
: >"$tmp/rps-off"
: >"$tmp/rps-on"
: >"$tmp/rps-bare"
r=1
while [ $r -le "$ROUNDS" ]; do
    for which in off on bare; do
        case $which in
        off) url=$off_url ;;
        on) url=$on_url ;;
        *) url=$bare_url ;;
        esac
        echo "GET round $r/$ROUNDS: $which ..."
        wrk_get "$tmp/wrk-$which" "$url" || die "GET ($which) failed"
        wrk_rps "$tmp/wrk-$which" >>"$tmp/rps-$which"
    done
    r=$((r + 1))
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
get_off=$(median "$tmp/rps-off")
get_on=$(median "$tmp/rps-on")
get_bare=$(median "$tmp/rps-bare")
counted=$(curl -sS "$on_base/metrics" |
    awk '/^rhema_http_requests_total\{route="\/v1\/sessions\/\{id\}",method="GET",code="200"\}/ { print $2 }')
stop "$off_pid"
stop "$on_pid"
stop "$bpid"

# ---- 2. one scrape with every route template called ----
# sqlite and a one-node cluster: the storage, group commit and cluster
# families too, and writes fenced (409) by an old X-Rhema-Epoch
[ -f "$PLUGIN_DIR/storage_sqlite.so" ] || die "$PLUGIN_DIR/storage_sqlite.so not built"
start_rhemad scrape true -o persistence.backend=sqlite -o persistence.sqlite.path="$tmp/scrape.db" \
    -o distributed.enabled=true -o distributed.node.node_id=bench
i=0
until curl -s "$base/v1/cluster/leader" | grep -q '"is_leader":true'; do
    i=$((i + 1))
    [ $i -lt 100 ] || die "the one-node cluster elected no leader"
    sleep 0.1
done
# every route line of the tables: method and template ({param} -> an id)
sed -n 's/.*{RHEMA_M_\([A-Z]*\), *"\([^"]*\)".*/\1 \2/p' "$top_srcdir"/core/api/*.c |
    sed 's/{[a-z_]*}/b1/' | sort -u >"$tmp/routes"
nroutes=$(wc -l <"$tmp/routes")
while read -r method path; do
    # each a few ways, for several (method, code) series per route: twice
    # (201 then 200, 404 then 200 ...), HEAD, a bad query, a body not JSON
    for _ in 1 2; do
        if [ "$method" = GET ]; then
            curl -s -o /dev/null "$base$path"
        else
            curl -s -o /dev/null -X "$method" -H 'Content-Type: application/json' -d '{}' \
                "$base$path"
        fi
    done
    if [ "$method" = GET ]; then
        curl -s -o /dev/null -I "$base$path"
        curl -s -o /dev/null "$base$path?no_such_parameter=1"
    else
        curl -s -o /dev/null -X "$method" -H 'Content-Type: text/plain' -d 'x' "$base$path"
        curl -s -o /dev/null -X "$method" -H 'X-Rhema-Epoch: 0' -d '{}' "$base$path" # 409 fenced
        curl -s -o /dev/null -X "$method" -H 'If-Match: "999"' -H 'Content-Type: application/json' \
            -d '{}' "$base$path"
    fi
done <"$tmp/routes"
curl -sS -o "$tmp/scrape.txt" "$base/metrics"
series=$(grep -vc '^#' "$tmp/scrape.txt")
bytes=$(wc -c <"$tmp/scrape.txt")
i=0
: >"$tmp/times"
while [ $i -lt "$SCRAPES" ]; do
    curl -sS -o /dev/null -w '%{time_total}\n' "$base/metrics" >>"$tmp/times"
    i=$((i + 1))
done
scrape_mean=$(awk '{ s += $1 } END { printf "%.3f", s / NR * 1000 }' "$tmp/times")
scrape_best=$(sort -n "$tmp/times" | head -1 | awk '{ printf "%.3f", $1 * 1000 }')
scrape_median=$(sort -n "$tmp/times" | awk '{ t[NR] = $1 } END { printf "%.3f", t[int((NR + 1) / 2)] * 1000 }')
# and one connection kept open, scraping for 5 s (no connect per scrape)
"$WRK" -t1 -c1 -d5s "$base/metrics" >"$tmp/wrk-scrape" 2>&1
scrape_wrk=$(awk '/^ +Latency/ { print $2 }' "$tmp/wrk-scrape")
if command -v promtool >/dev/null 2>&1; then
    promtool check metrics <"$tmp/scrape.txt" >"$tmp/promtool.out" 2>&1 &&
        promtool_says=ok || promtool_says="FAILED: $(head -3 "$tmp/promtool.out")"
else
    promtool_says="not installed"
fi
stop "$rpid"

# ---- report ----
missed=0
ratio_on=$(awk -v a="$get_on" -v b="$get_bare" 'BEGIN { printf "%.3f", a / b }')
ratio_off=$(awk -v a="$get_off" -v b="$get_bare" 'BEGIN { printf "%.3f", a / b }')
on_off=$(awk -v a="$get_on" -v b="$get_off" 'BEGIN { printf "%.3f", a / b }')
echo
echo "GET /v1/sessions/{id}, requests/s (median of $ROUNDS rounds; each: $(tr '\n' ' ' <"$tmp/rps-off")/ $(tr '\n' ' ' <"$tmp/rps-on")/ $(tr '\n' ' ' <"$tmp/rps-bare")for off / on / bare):"
echo "  bare evhttp          $get_bare"
echo "  rhemad, metrics off  $get_off   (ratio to bare $ratio_off)"
echo "  rhemad, metrics on   $get_on   (ratio to bare $ratio_on; on/off $on_off)"
echo "  counted by /metrics  ${counted:-?} GET 200 replies of the route (warm-up included)"
if awk -v r="$ratio_on" 'BEGIN { exit !(r >= 0.9) }'; then
    echo "  target ratio >= 0.9 with metrics on: met"
else
    echo "  target ratio >= 0.9 with metrics on: MISSED"
    missed=$((missed + 1))
fi
echo "  counting cost alone (bench/metrics_bench.c): ${micro:-not built (no librhemacore.a)}"
echo
echo "GET /metrics after $nroutes route lines were called: $series series, $bytes bytes"
echo "  scrape time over $SCRAPES scrapes: mean $scrape_mean ms, median $scrape_median ms, best $scrape_best ms (curl time_total)"
echo "  scrape time on one kept-alive connection for 5 s (wrk -c1): mean ${scrape_wrk:-?}"
echo "  promtool check metrics: $promtool_says"
[ "$series" -ge 1000 ] || echo "  (fewer than 1000 series: the target is for 1000)"
if awk -v t="$scrape_median" 'BEGIN { exit !(t < 5) }'; then
    echo "  target < 5 ms (median): met"
else
    echo "  target < 5 ms (median): MISSED"
    missed=$((missed + 1))
fi
exit $missed
