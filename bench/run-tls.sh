#!/bin/sh
# bench/run-tls.sh -- the cost of TLS on a GET, in one run on this machine.
# A benchmark, not a test: never part of `make check`.
#
# GET /v1/sessions/{id} (memory backend, a 1 KiB session), keep-alive
# connections (wrk's default), on two daemons of the same configuration:
#   plain   service.tls off
#   tls     service.tls on: an ECDSA P-256 certificate made here with the
#           openssl CLI (a throwaway CA); TLS 1.3, OpenSSL's default suites
# The runs alternate, plain first and last (BENCH_ROUNDS rounds of plain
# then tls, and plain once more); the ratio is of the medians.  Target (issue 9): TLS >= 0.75x plain.  The handshakes are in
# the warm-up: what is measured is the record layer on kept connections.
#
# Environment: BENCH_SECONDS (10), BENCH_THREADS (2), BENCH_CONNS (32),
# BENCH_WORKERS (nproc), BENCH_WARMUP (2), BENCH_ROUNDS (2), top_builddir,
# WRK, OPENSSL.
# Exit status: 0 when the target is met, 1 when not, 99 on a setup error.

set -u

BENCH_NAME=run-tls.sh
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
ROUNDS=${BENCH_ROUNDS:-2}
OPENSSL=${OPENSSL:-openssl}

bench_need_tools
command -v "$OPENSSL" >/dev/null 2>&1 || die "openssl not found (set OPENSSL=)"
[ -x "$RHEMAD" ] || die "$RHEMAD not built"
bench_tmpdir rhema-bench-tls

# measure OUT URL: requests/s (warm-up, measurement, check); dies when wrk
# saw a non-2xx or an error.  It runs in a command substitution, where die
# ends only that subshell: every caller adds `|| exit 99`.
measure() {
    bench_measure "$1" "$2" || die "wrk reported errors"
}
# start NAME CONFIG SCHEME [curl args]: pid in $rpid, URL in $base
start() {
    name=$1
    conf=$2
    scheme=$3
    shift 3
    port=$(free_port)
    "$RHEMAD" -f -c "$conf" -P "$PLUGIN_DIR" -o service.listen=127.0.0.1:"$port" \
        -o service.workers="$WORKERS" -o service.data_directory="$tmp" >"$tmp/$name.log" 2>&1 &
    rpid=$!
    pids="$pids $rpid"
    base=$scheme://127.0.0.1:$port
    wait_ready "$rpid" "$base/health/ready" "$@" ||
        { cat "$tmp/$name.log" >&2; die "rhemad ($name) did not start"; }
}
put_session() { # base [curl args]
    b=$1
    shift
    pad=$(printf '%0900d' 0 | tr 0 x)
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' "$@" \
        -d "{\"topic\":\"$pad\",\"participants\":[\"agent-1\",\"agent-2\",\"agent-3\"],\"status\":\"Active\"}" \
        "$b/v1/sessions/bench-get")
    [ "$code" = 201 ] || die "PUT of the session answered $code"
}

(
    cd "$tmp" &&
        "$OPENSSL" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
            -out ca.pem -days 1 -subj "/CN=rhema bench CA" &&
        "$OPENSSL" req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
            -out server.csr -subj "/CN=127.0.0.1" &&
        printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext &&
        "$OPENSSL" x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out server.pem -days 1 -extfile server.ext
) >"$tmp/openssl.log" 2>&1 || { cat "$tmp/openssl.log" >&2; die "openssl could not make the certificates"; }

echo "machine: $(nproc) cores; wrk -t$THREADS -c$CONNS -d${SECONDS_}s (keep-alive); $WORKERS workers"
echo "$("$OPENSSL" version); $(pkg-config --modversion libevent_openssl 2>/dev/null | sed 's/^/libevent_openssl /')"

printf 'persistence: { backend = "memory"; };\n' >"$tmp/plain.conf"
cat >"$tmp/tls.conf" <<CONF
persistence: { backend = "memory"; };
service: { tls: { enabled = true; cert_file = "$tmp/server.pem"; key_file = "$tmp/server.key"; }; };
CONF

start plain "$tmp/plain.conf" http
plain_pid=$rpid
plain_base=$base
put_session "$plain_base"
start tls "$tmp/tls.conf" https --cacert "$tmp/ca.pem"
tls_pid=$rpid
tls_base=$base
put_session "$tls_base" --cacert "$tmp/ca.pem"

# ROUNDS rounds of plain then TLS, and plain once more: on a shared machine
# the load moves between runs, so each TLS run sits between two plain ones
# and the ratio is of the medians
plains=
tlss=
i=1
while [ $i -le "$ROUNDS" ]; do
    echo "round $i: GET, plain HTTP ..."
    v=$(measure "$tmp/wrk-plain$i" "$plain_base/v1/sessions/bench-get") || exit 99
    plains="$plains $v"
    echo "round $i: GET, HTTPS ..."
    v=$(measure "$tmp/wrk-tls$i" "$tls_base/v1/sessions/bench-get") || exit 99
    tlss="$tlss $v"
    i=$((i + 1))
done
echo "GET, plain HTTP (last) ..."
v=$(measure "$tmp/wrk-plain-last" "$plain_base/v1/sessions/bench-get") || exit 99
plains="$plains $v"
stop "$tls_pid"
stop "$plain_pid"

median() {
    printf '%s\n' $1 | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
plain=$(median "$plains")
tls=$(median "$tlss")
ratio=$(awk -v a="$tls" -v b="$plain" 'BEGIN { printf "%.3f", a / b }')
verdict=$(awk -v v="$ratio" 'BEGIN { print (v >= 0.75 ? "PASS" : "FAIL") }')

echo
printf '%-48s %s\n' "GET /v1/sessions/{id}, plain HTTP, req/s:" "$plains"
printf '%-48s %s\n' "GET /v1/sessions/{id}, HTTPS keep-alive, req/s:" "$tlss"
printf '%-48s %s\n' "median plain / median HTTPS:" "$plain / $tls"
echo
echo "TLS / plain = $ratio  (target >= 0.75)  $verdict"
[ "$verdict" = PASS ]
