#!/bin/sh
# bench/run-watch.sh -- the change feed's costs (issue 12, "Performance"):
#   1. event latency, a write's 2xx to a watcher on the same node
#      (bench/watch_latency.py: p50 / p99 / max; target p99 <= 5 ms on SQLite);
#   2. on a shared backend (sqlite, postgres, redis): the same to a watcher on
#      another node -- node A writes, node B watches (target p99 <= 20 ms on
#      PostgreSQL and Redis);
#   3. the anchor, when etcd is installed: one etcd on loopback in the
#      temporary directory, put -> watch latency the same way (the v3 JSON
#      gateway), and the ratio of rhema's cross-node p99 (same-node on
#      memory) to etcd's; skipped, and said so, without etcd;
#   4. the PUT rate of new sessions (bench/put_session.lua) with
#      coordination.change_feed on and off, and their ratio (target >= 0.9).
# BENCH_BACKEND: memory, sqlite, postgres or redis (default sqlite); PostgreSQL
# (fsync=on, synchronous_commit=on) and Redis (appendonly yes, appendfsync
# always) are started in the temporary directory on free loopback ports
# (bench/lib.sh); BENCH_WATCH_N: the number of writes of 1-3 (default 1000);
# ETCD: the etcd binary (default etcd); BENCH_REPS: rounds of 4 (default 1);
# the rest as in bench/lib.sh.
set -e
BENCH_NAME=run-watch.sh
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
bench_need_tools
bench_tmpdir rhema-watch
backend=${BENCH_BACKEND:-sqlite}
n=${BENCH_WATCH_N:-1000}
ETCD=${ETCD:-etcd}

case $backend in
memory | sqlite) ;;
postgres) bench_pg_start ;;
redis) bench_redis_start ;;
*) die "BENCH_BACKEND: '$backend' is not memory, sqlite, postgres or redis" ;;
esac

start() { # NAME FEED [DB]: DB names the SQLite file (default NAME's)
    set -- "$1" "$2" "${3:-$1}"
    db=$3
    set -- "$1" -o service.data_directory="$tmp" -o persistence.backend="$backend" \
        -o coordination.change_feed="$2"
    case $backend in
    sqlite) set -- "$@" -o persistence.sqlite.path="$tmp/$db.db" ;;
    postgres) set -- "$@" -o persistence.postgres.conninfo="$pg_conninfo" ;;
    redis) set -- "$@" -o persistence.redis.host=127.0.0.1 -o persistence.redis.port="$redis_port" ;;
    esac
    bench_start "$@"
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); backend $backend;" \
    "wrk -t$THREADS -c$CONNS -d${SECONDS_}s; $WORKERS workers"
[ "$backend" = postgres ] && echo "postgres $pg_version: fsync=on, synchronous_commit=on"
[ "$backend" = redis ] && echo "redis $redis_version: appendonly yes, appendfsync always"

start latency true
a_pid=$rpid
a_url=$base
echo "event latency, write 2xx -> watcher, same node ($n writes):"
same=$(python3 "$here/watch_latency.py" "$a_url" "$a_url" "$n") || die "the latency run failed"
echo "  $same"
p99=$(echo "$same" | awk '{ print $5 }')
what="same-node"
if [ "$backend" != memory ]; then
    start latency-b true latency
    b_pid=$rpid
    echo "event latency, write 2xx on node A -> watcher on node B ($n writes):"
    cross=$(python3 "$here/watch_latency.py" "$a_url" "$base" "$n") || die "the cross-node latency run failed"
    echo "  $cross"
    p99=$(echo "$cross" | awk '{ print $5 }')
    what="cross-node"
    stop "$b_pid"
fi
stop "$a_pid"

if command -v "$ETCD" >/dev/null 2>&1; then
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
    echo "anchor: etcd $("$ETCD" --version | awk '/^etcd Version/ { print $3 }'), put -> watch, one member ($n puts):"
    anchor=$(python3 "$here/watch_latency.py" --etcd "http://127.0.0.1:$ec" "$n") || die "the etcd run failed"
    echo "  $anchor"
    e99=$(echo "$anchor" | awk '{ print $5 }')
    echo "p99 ratio rhema $what / etcd: $(awk -v a="$p99" -v b="$e99" 'BEGIN { printf "%.2f", a / b }')"
    stop "$etcd_pid" || true # etcd exits non-zero on SIGTERM
else
    echo "anchor: etcd not installed ($ETCD), skipped"
fi

# BENCH_REPS rounds (default 1) alternating on and off, each on a fresh
# database; the best of each side is kept (on a shared machine the best of
# several is the fair estimate, for both sides alike)
on= off=
r=1
while [ "$r" -le "${BENCH_REPS:-1}" ]; do
    start feed-on true "feed-on-$r"
    v=$(bench_measure "$tmp/wrk-on" "$base" -s "$here/put_session.lua") || die "PUT with the feed failed"
    stop "$rpid"
    on=$(awk -v a="$on" -v b="$v" 'BEGIN { print (a == "" || b + 0 > a + 0) ? b : a }')
    start feed-off false "feed-off-$r"
    v=$(bench_measure "$tmp/wrk-off" "$base" -s "$here/put_session.lua") || die "PUT without the feed failed"
    stop "$rpid"
    off=$(awk -v a="$off" -v b="$v" 'BEGIN { print (a == "" || b + 0 > a + 0) ? b : a }')
    echo "round $r: PUT feed on $on/s, off $off/s (best so far)"
    r=$((r + 1))
done
echo "PUT /v1/sessions (best of ${BENCH_REPS:-1}): feed on $on/s, off $off/s, ratio $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.3f", a / b }')"
