#!/bin/sh
# bench/run-auth.sh -- the cost of API keys on a GET, in one run on this
# machine.  A benchmark, not a test: never part of `make check`.
#
# GET /v1/sessions/{id} (memory backend, a 1 KiB session) on:
#   off       rhemad with security.api_keys.enabled = false (loopback client)
#   runtime   keys on, a runtime key (POST /v1/auth/keys) with a role that
#             grants sessions:read: the per-worker cache path, which reads
#             the key's record again from the backend every 500 ms
#   static    keys on, a static key from the config file
# "off" runs before and after the two others; the ratios are against the
# mean of its two runs.  Target (issue 9): everything on >= 0.85x of off.
# Rate limiting and the audit log (other parts of issue 9) are not in this
# measurement until they exist.
#
# Environment: BENCH_SECONDS (10), BENCH_THREADS (2), BENCH_CONNS (32),
# BENCH_WORKERS (nproc), BENCH_WARMUP (2), top_builddir, WRK.
# Exit status: 0 when the target is met, 1 when not, 99 on a setup error.

set -u

BENCH_NAME=run-auth.sh
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

bench_need_tools
[ -x "$RHEMAD" ] || die "$RHEMAD not built"
[ -x "$RHEMACTL" ] || die "$RHEMACTL not built"

bench_tmpdir rhema-bench-auth

# start NAME CONFIG: the daemon's pid in $rpid, its URL in $base
start() { bench_start "$1" -c "$2"; }
# measure OUT URL [wrk args]: requests/s; dies when wrk saw a non-2xx or an error
measure() { bench_measure "$@" || die "wrk reported errors"; }
put_session() { # base [curl args]
    b=$1
    shift
    pad=$(printf '%0900d' 0 | tr 0 x)
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' "$@" \
        -d "{\"topic\":\"$pad\",\"participants\":[\"agent-1\",\"agent-2\",\"agent-3\"],\"status\":\"Active\"}" \
        "$b/v1/sessions/bench-get")
    [ "$code" = 201 ] || die "PUT of the session answered $code"
}

echo "machine: $(nproc) cores; wrk -t$THREADS -c$CONNS -d${SECONDS_}s; $WORKERS workers"

printf 'persistence: { backend = "memory"; };\n' >"$tmp/off.conf"
out=$("$RHEMACTL" auth new-key --name bench-admin --roles admin) || die "rhemactl auth new-key failed"
admin_key=$(echo "$out" | sed -n 1p)
admin_group=$(echo "$out" | sed -n 2p)
cat >"$tmp/on.conf" <<CONF
persistence: { backend = "memory"; };
security: {
  api_keys: { enabled = true; keys = ( $admin_group ); };
  roles = ( { name = "admin"; permissions = [ "*" ]; },
            { name = "agent"; permissions = [ "sessions:read", "agents:read" ]; } );
  rules = ( { path_prefix = "/v1/keys"; action = "deny"; roles = [ "agent" ]; } );
};
CONF

start off "$tmp/off.conf"
off_pid=$rpid
off_base=$base
put_session "$off_base"
echo "GET, keys off ..."
off1=$(measure "$tmp/wrk-off1" "$off_base/v1/sessions/bench-get") || exit 99

start on "$tmp/on.conf"
on_pid=$rpid
on_base=$base
put_session "$on_base" -H "Authorization: Bearer $admin_key"
runtime_key=$(curl -sS -X POST -H "Authorization: Bearer $admin_key" -H 'Content-Type: application/json' \
    -d '{"name":"bench-agent","roles":["agent"]}' "$on_base/v1/auth/keys" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])') || die "POST /v1/auth/keys failed"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$on_base/v1/sessions/bench-get")
[ "$code" = 401 ] || die "GET without a key answered $code, not 401"
echo "GET, keys on, runtime key ..."
runtime=$(measure "$tmp/wrk-runtime" "$on_base/v1/sessions/bench-get" -H "Authorization: Bearer $runtime_key") || exit 99
echo "GET, keys on, static key ..."
static=$(measure "$tmp/wrk-static" "$on_base/v1/sessions/bench-get" -H "X-API-Key: $admin_key") || exit 99
stop "$on_pid"

echo "GET, keys off (again) ..."
off2=$(measure "$tmp/wrk-off2" "$off_base/v1/sessions/bench-get") || exit 99
stop "$off_pid"

off=$(awk -v a="$off1" -v b="$off2" 'BEGIN { printf "%.2f", (a + b) / 2 }')
r_runtime=$(awk -v a="$runtime" -v b="$off" 'BEGIN { printf "%.3f", a / b }')
r_static=$(awk -v a="$static" -v b="$off" 'BEGIN { printf "%.3f", a / b }')
worst=$(awk -v a="$r_runtime" -v b="$r_static" 'BEGIN { print (a < b ? a : b) }')
verdict=$(awk -v v="$worst" 'BEGIN { print (v >= 0.85 ? "PASS" : "FAIL") }')

echo
printf '%-52s %12s\n' "measurement" "req/s"
printf '%-52s %12s\n' "GET /v1/sessions/{id}, keys off (run 1)" "$off1"
printf '%-52s %12s\n' "GET /v1/sessions/{id}, keys off (run 2)" "$off2"
printf '%-52s %12s\n' "GET, keys on, runtime key (backend + cache)" "$runtime"
printf '%-52s %12s\n' "GET, keys on, static key (config)" "$static"
echo
echo "ratio runtime key / off = $r_runtime"
echo "ratio static key / off  = $r_static"
echo "auth on / off (worst)   = $worst  (target >= 0.85)  $verdict"
[ "$verdict" = PASS ]
