#!/bin/sh
# bench/run-ai.sh -- the AI gateway's overhead and memory (issue 10,
# "Performance" and item 7), on this machine, in one run.  A benchmark, not
# a test: never part of `make check`.
#
# The fake upstream is bench/bare_evhttp.c answering every request with a
# fixed chat completion (a C libevent server: the Python fake of
# tests/integration/fake_openai.py serves a few hundred requests a second
# and would measure itself, not rhemad).  rhemad runs on the memory
# backend, access log off, one model on that upstream.
#
#   a. Throughput, keep-alive, wrk -c$BENCH_CONNS: POST /v1/chat/completions
#      direct to the upstream, and through rhemad (cache off: every request
#      goes upstream); the ratio.  Target >= 0.35.  Beside it, through
#      rhemad with the cache on and one body (every request a hit).
#   b. Latency at one connection (wrk -t1 -c1 --latency), p50 and p99
#      direct and through rhemad (cache off); the added milliseconds.
#      Targets: p50 <= 0.3 ms, p99 <= 1 ms.
#   c. Memory: rhemad with the cache on (max_size_bytes BENCH_AI_CACHE_BYTES)
#      and every request a different prompt (a miss that stores an entry:
#      the cache fills to its bound and then evicts).  VmRSS after start
#      (cache empty; target <= 20 MB), after N requests and after 2N
#      (target: within 5% of RSS after N), in runs of 10 s until each half
#      reached N.  N is BENCH_AI_N: 1000000 for the documented long run
#      (2 x 1e6 requests: about 10 minutes here), e.g. BENCH_AI_N=50000
#      for a quick run.
#
# Environment:
#   BENCH_SECONDS  duration of each measurement of a. and b. (default 10)
#   BENCH_THREADS  wrk threads (default 2)       BENCH_CONNS  wrk connections (default 32)
#   BENCH_WORKERS  worker threads of rhemad (default: nproc)
#   BENCH_WARMUP   seconds of warm-up before each measurement (default 2)
#   BENCH_AI_UPSTREAM_THREADS  threads of the fake upstream (default 1)
#   BENCH_AI_N     requests per half of c. (default 1000000)
#   BENCH_AI_CACHE_BYTES  ai_service.caching.max_size_bytes in c. (default 8388608)
#   top_builddir   where rhemad and plugins/.libs are (default: the source tree)
#   CC, WRK, PKG_CONFIG
# Exit status: the number of targets missed (0: all met); 99 on a setup error.

set -u

BENCH_NAME=run-ai.sh
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
N=${BENCH_AI_N:-1000000}
UP_THREADS=${BENCH_AI_UPSTREAM_THREADS:-1}
CACHE_BYTES=${BENCH_AI_CACHE_BYTES:-8388608}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
LUA=$here/ai_chat.lua

bench_need_tools
[ -x "$RHEMAD" ] || die "$RHEMAD not built (make rhemad)"
[ -f "$PLUGIN_DIR/storage_memory.so" ] || die "$PLUGIN_DIR/storage_memory.so not built"
bench_tmpdir rhema-bench-ai

echo "building bench/bare_evhttp (the fake upstream) in $tmp"
# shellcheck disable=SC2046
"$CC" -O2 -g -pthread $($PKG_CONFIG --cflags libevent libevent_pthreads) -o "$tmp/upstream" \
    "$here/bare_evhttp.c" $($PKG_CONFIG --libs libevent libevent_pthreads) ||
    die "cannot build bare_evhttp"
cat >"$tmp/completion.json" <<'JSON'
{"id":"chatcmpl-bench","object":"chat.completion","created":1733400000,"model":"fake-model","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":10,"total_tokens":19}}
JSON
uport=$(free_port)
"$tmp/upstream" -l 127.0.0.1:"$uport" -t "$UP_THREADS" -b "$tmp/completion.json" >"$tmp/upstream.log" 2>&1 &
upid=$!
pids="$pids $upid"
direct=http://127.0.0.1:$uport/v1/chat/completions
wait_ready "$upid" "$direct" || { cat "$tmp/upstream.log" >&2; die "the fake upstream did not start"; }

# start_ai NAME CACHE(true|false): rhemad in front of the fake upstream; $rpid $base
start_ai() {
    cat >"$tmp/$1.conf" <<CONF
persistence: { backend = "memory"; };
ai_service: {
  enabled = true;
  upstreams = ( { name = "fake"; base_url = "http://127.0.0.1:$uport/v1"; } );
  models = ( { name = "gpt"; upstream_model = "fake-model"; } );
  caching: { enabled = $2; max_size_bytes = $CACHE_BYTES; max_entry_bytes = 65536; max_entries = 100000000; };
};
CONF
    bench_start "$1" -c "$tmp/$1.conf" -o service.data_directory="$tmp" -o logging.access_log=false
    code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
        -d '{"model":"gpt","messages":[{"role":"user","content":"hello"}]}' "$base/v1/chat/completions")
    [ "$code" = 200 ] || die "rhemad ($1): a chat completion answered $code"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# lat_ms OUT PCT: the percentile line of wrk --latency, in ms
lat_ms() {
    awk -v p="$2%" '$1 == p {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000;
        printf "%.3f\n", v }' "$1"
}

echo "machine: $(nproc) cores (shared: load $(cut -d' ' -f1-3 /proc/loadavg)); wrk -t$THREADS -c$CONNS -d${SECONDS_}s; rhemad $WORKERS workers; upstream $UP_THREADS thread(s)"
missed=0

# ---- a. throughput ----
start_ai nocache false
nocache_pid=$rpid
nocache=$base/v1/chat/completions
start_ai cache true
cache_pid=$rpid
cached=$base/v1/chat/completions
echo "a. throughput ..."
rps_direct=$(bench_measure "$tmp/wrk-direct" "$direct" -s "$LUA") || die "direct run failed"
rps_through=$(bench_measure "$tmp/wrk-through" "$nocache" -s "$LUA") || die "run through rhemad failed"
rps_hits=$(bench_measure "$tmp/wrk-hits" "$cached" -s "$LUA") || die "run of cache hits failed"
ratio=$(awk -v a="$rps_through" -v b="$rps_direct" 'BEGIN { printf "%.3f", a / b }')
echo "   direct $rps_direct req/s; through rhemad $rps_through req/s (ratio $ratio, target >= 0.35); cache hits $rps_hits req/s"
awk -v r="$ratio" 'BEGIN { exit !(r >= 0.35) }' || missed=$((missed + 1))

# ---- b. latency at one connection ----
echo "b. latency at one connection ..."
"$WRK" -t1 -c1 -d"${WARMUP}s" -s "$LUA" "$direct" >/dev/null 2>&1
"$WRK" -t1 -c1 -d"${SECONDS_}s" --latency -s "$LUA" "$direct" >"$tmp/lat-direct" 2>&1
wrk_check "$tmp/lat-direct" || die "latency run (direct) failed"
"$WRK" -t1 -c1 -d"${WARMUP}s" -s "$LUA" "$nocache" >/dev/null 2>&1
"$WRK" -t1 -c1 -d"${SECONDS_}s" --latency -s "$LUA" "$nocache" >"$tmp/lat-through" 2>&1
wrk_check "$tmp/lat-through" || die "latency run (through rhemad) failed"
d50=$(lat_ms "$tmp/lat-direct" 50)
d99=$(lat_ms "$tmp/lat-direct" 99)
t50=$(lat_ms "$tmp/lat-through" 50)
t99=$(lat_ms "$tmp/lat-through" 99)
a50=$(awk -v a="$t50" -v b="$d50" 'BEGIN { printf "%.3f", a - b }')
a99=$(awk -v a="$t99" -v b="$d99" 'BEGIN { printf "%.3f", a - b }')
echo "   p50 direct $d50 ms, through $t50 ms: added $a50 ms (target <= 0.3)"
echo "   p99 direct $d99 ms, through $t99 ms: added $a99 ms (target <= 1)"
awk -v v="$a50" 'BEGIN { exit !(v <= 0.3) }' || missed=$((missed + 1))
awk -v v="$a99" 'BEGIN { exit !(v <= 1) }' || missed=$((missed + 1))
stop "$nocache_pid"
stop "$cache_pid"

# ---- c. memory: empty, after N, after 2N ----
echo "c. memory over 2 x $N requests, each a new prompt (cache max_size_bytes $CACHE_BYTES) ..."
start_ai rss true
rss_pid=$rpid
rss0=$(rss_kb "$rss_pid")
# half OUT: runs of 10 s (each with prompts of its own) until N more requests were answered
seed=0
sent=0
half() {
    goal=$((sent + N))
    while [ "$sent" -lt "$goal" ]; do
        seed=$((seed + 1))
        BENCH_AI_UNIQUE=1 BENCH_AI_SEED=$seed "$WRK" -t"$THREADS" -c"$CONNS" -d10s \
            -s "$LUA" "$base/v1/chat/completions" >"$1" 2>&1
        wrk_check "$1" || die "memory run failed"
        sent=$((sent + $(awk '/requests in/ { print $1 }' "$1")))
    done
}
half "$tmp/wrk-n1"
sent1=$sent
rss1=$(rss_kb "$rss_pid")
half "$tmp/wrk-n2"
rss2=$(rss_kb "$rss_pid")
growth=$(awk -v a="$rss2" -v b="$rss1" 'BEGIN { printf "%.2f", (a - b) * 100 / b }')
echo "   RSS with the cache empty $((rss0 / 1024)) MB ($rss0 kB; target <= 20 MB)"
echo "   RSS after N=$N ($sent1 requests): $rss1 kB; after 2N ($sent): $rss2 kB (growth $growth%, target within 5%)"
[ "$rss0" -le 20480 ] || missed=$((missed + 1))
awk -v g="$growth" 'BEGIN { exit !(g <= 5 && g >= -5) }' || missed=$((missed + 1))
stop "$rss_pid"
echo "targets missed: $missed"
exit "$missed"
