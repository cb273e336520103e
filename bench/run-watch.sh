#!/bin/sh
# bench/run-watch.sh -- the change feed's costs (issue 12, "Performance"):
#   1. event latency, a write's 2xx to a watcher on the same node
#      (bench/watch_latency.py: p50 / p99; target p99 <= 5 ms on SQLite);
#   2. the PUT rate of new sessions (bench/put_session.lua) with
#      coordination.change_feed on and off, and their ratio (target >= 0.9).
# BENCH_BACKEND: memory or sqlite (default sqlite); BENCH_WATCH_N: the
# number of writes of 1 (default 1000); the rest as in bench/lib.sh.
set -e
BENCH_NAME=run-watch.sh
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
bench_need_tools
bench_tmpdir rhema-watch
backend=${BENCH_BACKEND:-sqlite}
n=${BENCH_WATCH_N:-1000}

start() { # NAME FEED
    set -- "$1" -o service.data_directory="$tmp" -o persistence.backend="$backend" \
        -o coordination.change_feed="$2"
    [ "$backend" = sqlite ] && set -- "$@" -o persistence.sqlite.path="$tmp/$1.db"
    bench_start "$@"
}

echo "machine: $(nproc) cores; backend $backend; wrk -t$THREADS -c$CONNS -d${SECONDS_}s; $WORKERS workers"

start latency true
echo "event latency, write 2xx -> watcher, same node ($n writes):"
python3 "$here/watch_latency.py" "$base" "$n" || die "the latency run failed"
stop "$rpid"

start feed-on true
on=$(bench_measure "$tmp/wrk-on" "$base" -s "$here/put_session.lua") || die "PUT with the feed failed"
stop "$rpid"
start feed-off false
off=$(bench_measure "$tmp/wrk-off" "$base" -s "$here/put_session.lua") || die "PUT without the feed failed"
stop "$rpid"
echo "PUT /v1/sessions: feed on $on/s, off $off/s, ratio $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.3f", a / b }')"
