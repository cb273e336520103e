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
#   d. Streaming at one connection: time to the first byte of the body of
#      a "stream": true chat completion (bench/first_byte.c; the fake
#      upstream in -s mode answers an SSE stream whose first event is its
#      first chunk), direct and through rhemad, p50 and p99; the added
#      milliseconds.  Target: first chunk added <= 0.5 ms (p50 and p99).
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
#   BENCH_RT       1: run b. and d. (the fake upstreams, rhemad and the
#                  client) under SCHED_FIFO (chrt -f 50; needs root), so that
#                  other work on a shared machine cannot preempt the three
#                  processes in the middle of a request and a latency tail
#                  measures rhemad, not the scheduler.  Both sides of each
#                  comparison run the same way.  Default 0.
#   BENCH_AI_FB_N  requests of each run of d. (default 20000)
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
"$CC" -O2 -g -o "$tmp/first_byte" "$here/first_byte.c" || die "cannot build first_byte"
RT=${BENCH_RT:-0}
FB_N=${BENCH_AI_FB_N:-20000}
# rt CMD...: CMD under SCHED_FIFO when BENCH_RT=1
rt() { if [ "$RT" = 1 ]; then chrt -f 50 "$@"; else "$@"; fi; }
# rt_pid PID: every thread of PID under SCHED_FIFO when BENCH_RT=1
rt_pid() { [ "$RT" != 1 ] || chrt -f -a -p 50 "$1" >/dev/null || die "chrt failed (BENCH_RT=1 needs root)"; }
cat >"$tmp/completion.json" <<'JSON'
{"id":"chatcmpl-bench","object":"chat.completion","created":1733400000,"model":"fake-model","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":10,"total_tokens":19}}
JSON
uport=$(free_port)
"$tmp/upstream" -l 127.0.0.1:"$uport" -t "$UP_THREADS" -b "$tmp/completion.json" >"$tmp/upstream.log" 2>&1 &
upid=$!
pids="$pids $upid"
direct=http://127.0.0.1:$uport/v1/chat/completions
wait_ready "$upid" "$direct" || { cat "$tmp/upstream.log" >&2; die "the fake upstream did not start"; }
# the streaming upstream of d.: one event per chunk, the first one alone
printf '%s\n\n%s\n\n%s\n\n' \
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1733400000,"model":"fake-model","choices":[{"index":0,"delta":{"role":"assistant","content":"The"},"finish_reason":null}]}' \
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1733400000,"model":"fake-model","choices":[{"index":0,"delta":{"content":" quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}]}' \
    'data: [DONE]' >"$tmp/stream.sse"
sport=$(free_port)
"$tmp/upstream" -s -l 127.0.0.1:"$sport" -t "$UP_THREADS" -b "$tmp/stream.sse" >"$tmp/supstream.log" 2>&1 &
spid=$!
pids="$pids $spid"
wait_ready "$spid" "http://127.0.0.1:$sport/v1/chat/completions" ||
    { cat "$tmp/supstream.log" >&2; die "the streaming fake upstream did not start"; }
printf '{"model":"%s","stream":true,"messages":[{"role":"user","content":"hello"}]}' gpt-stream \
    >"$tmp/stream-via.json"
printf '{"model":"%s","stream":true,"messages":[{"role":"user","content":"hello"}]}' fake-model \
    >"$tmp/stream-direct.json"

# start_ai NAME CACHE(true|false): rhemad in front of the fake upstream; $rpid $base
start_ai() {
    cat >"$tmp/$1.conf" <<CONF
persistence: { backend = "memory"; };
ai_service: {
  enabled = true;
  upstreams = ( { name = "fake"; base_url = "http://127.0.0.1:$uport/v1"; },
                { name = "fake-stream"; base_url = "http://127.0.0.1:$sport/v1"; } );
  models = ( { name = "gpt"; upstream_model = "fake-model"; upstream = "fake"; },
             { name = "gpt-stream"; upstream_model = "fake-model"; upstream = "fake-stream"; } );
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
[ "$RT" = 1 ] && echo "b. and d. under SCHED_FIFO (BENCH_RT=1)"
rt_pid "$upid"
rt_pid "$spid"
rt_pid "$nocache_pid"
echo "b. latency at one connection ..."
rt "$WRK" -t1 -c1 -d"${WARMUP}s" -s "$LUA" "$direct" >/dev/null 2>&1
rt "$WRK" -t1 -c1 -d"${SECONDS_}s" --latency -s "$LUA" "$direct" >"$tmp/lat-direct" 2>&1
wrk_check "$tmp/lat-direct" || die "latency run (direct) failed"
rt "$WRK" -t1 -c1 -d"${WARMUP}s" -s "$LUA" "$nocache" >/dev/null 2>&1
rt "$WRK" -t1 -c1 -d"${SECONDS_}s" --latency -s "$LUA" "$nocache" >"$tmp/lat-through" 2>&1
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

# ---- d. streaming: the first byte of the body, at one connection ----
echo "d. streaming, first byte of the body at one connection ($FB_N requests each) ..."
nport=${nocache#http://127.0.0.1:}
nport=${nport%%/*}
fb() { # fb ADDR BODY: "p50 p99" in ms
    rt "$tmp/first_byte" -a "$1" -p /v1/chat/completions -b "$2" -n "$FB_N" >"$tmp/fb.out" ||
        die "first_byte against $1 failed"
    awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
           printf "%.3f %.3f\n", v["p50_us"] / 1000, v["p99_us"] / 1000 }' "$tmp/fb.out"
}
set -- $(fb 127.0.0.1:"$sport" "$tmp/stream-direct.json") $(fb 127.0.0.1:"$nport" "$tmp/stream-via.json")
s50=$(awk -v a="$3" -v b="$1" 'BEGIN { printf "%.3f", a - b }')
s99=$(awk -v a="$4" -v b="$2" 'BEGIN { printf "%.3f", a - b }')
echo "   first byte p50 direct $1 ms, through $3 ms: added $s50 ms (target <= 0.5)"
echo "   first byte p99 direct $2 ms, through $4 ms: added $s99 ms (target <= 0.5)"
awk -v v="$s50" 'BEGIN { exit !(v <= 0.5) }' || missed=$((missed + 1))
awk -v v="$s99" 'BEGIN { exit !(v <= 0.5) }' || missed=$((missed + 1))
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
