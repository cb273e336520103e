#!/bin/sh
# bench/run-redis-tls.sh -- what TLS costs the redis storage plugin: one
# redis-server with a plain port and a TLS port (a throwaway CA made with the
# openssl CLI), measured four ways, one after the other, on loopback:
#   redis-benchmark  SET and GET, one connection (-c 1), plain vs --tls: the
#                    cost of TLS itself, without rhemad
#   rhemad redis     wrk PUT of new 1 KiB sessions (bench/put_session.lua),
#                    then wrk GET of one of them, plain vs tls = true: TLS
#                    plus the relay thread (plugins/storage/redis_tls.c)
# appendonly no: the transport is measured, not the disk.  A benchmark, not
# a test: never part of `make check`.
# Environment: BENCH_SECONDS (default 5), BENCH_CONNS (wrk connections,
# default 8), BENCH_WORKERS (rhemad workers, default 2), top_builddir.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${top_builddir:=$(cd "$here/.." && pwd)}"
SECS=${BENCH_SECONDS:-5}
CONNS=${BENCH_CONNS:-8}
WORKERS=${BENCH_WORKERS:-2}
RHEMAD=$top_builddir/rhemad
PLUGIN_DIR=$top_builddir/plugins/.libs
die() { echo "run-redis-tls.sh: $*" >&2; exit 99; }
for c in redis-server redis-benchmark openssl wrk curl; do
    command -v $c >/dev/null 2>&1 || die "$c not found"
done
[ -f "$PLUGIN_DIR/storage_redis.so" ] || die "the redis plugin is not built in $PLUGIN_DIR"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rhema-redistls.XXXXXX") || exit 99
pids=
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cd "$tmp" || exit 99
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out ca.pem -days 2 -subj /CN=bench-ca >/dev/null 2>&1 || die "openssl: CA"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >srv.ext
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr \
    -subj /CN=127.0.0.1 >/dev/null 2>&1 &&
    openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem \
        -days 2 -extfile srv.ext >/dev/null 2>&1 || die "openssl: server certificate"

port=$(free_port)
tport=$(free_port)
redis-server --bind 127.0.0.1 --port "$port" --tls-port "$tport" --tls-cert-file srv.pem \
    --tls-key-file srv.key --tls-ca-cert-file ca.pem --tls-auth-clients no --save '' \
    --appendonly no --dir "$tmp" --logfile "$tmp/redis.log" &
pids="$pids $!"
i=0
until redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; do
    i=$((i + 1)); [ $i -lt 100 ] || die "redis-server did not start"; sleep 0.1
done
echo "machine: $(nproc) cores; $(redis-server --version | cut -d' ' -f3); appendonly no"

n=$((SECS * 10000))
for t in SET GET; do
    lc=$(echo $t | tr A-Z a-z)
    p=$(redis-benchmark -p "$port" -c 1 -n $n -t $lc -q 2>/dev/null | tr '\r' '\n' | grep "^$t" | tail -n 1)
    s=$(redis-benchmark -p "$tport" --tls --cacert ca.pem -c 1 -n $n -t $lc -q 2>/dev/null |
        tr '\r' '\n' | grep "^$t" | tail -n 1)
    echo "redis-benchmark -c 1 $t: plain: ${p#*: }   tls: ${s#*: }"
done

# rhemad on the redis backend: $1 = name, then -o settings
bench_rhemad() {
    name=$1
    shift
    hport=$(free_port)
    "$RHEMAD" -f -P "$PLUGIN_DIR" -o service.data_directory="$tmp" -o persistence.backend=redis \
        -o persistence.redis.host=127.0.0.1 -o persistence.redis.prefix="$name:" "$@" \
        -o service.listen=127.0.0.1:"$hport" -o service.workers="$WORKERS" \
        >"$tmp/rhemad-$name.log" 2>&1 &
    rpid=$!
    pids="$pids $rpid"
    base=http://127.0.0.1:$hport
    i=0
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health/ready")" = 200 ]; do
        i=$((i + 1))
        [ $i -lt 150 ] && kill -0 "$rpid" 2>/dev/null || { cat "$tmp/rhemad-$name.log" >&2; die "rhemad ($name) did not start"; }
        sleep 0.1
    done
    BENCH_PREFIX=b wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$here/put_session.lua" "$base" >"$tmp/put-$name" 2>&1
    code=$(curl -s -o /dev/null -w '%{http_code}' "$base/v1/sessions/b-1-2")
    [ "$code" = 200 ] || die "rhemad ($name): the PUT run left no session b-1-2 ($code)"
    wrk -t1 -c"$CONNS" -d"${SECS}s" "$base/v1/sessions/b-1-2" >"$tmp/get-$name" 2>&1
    for f in put get; do
        if grep -q "Non-2xx\|Socket errors" "$tmp/$f-$name"; then
            cat "$tmp/$f-$name" >&2; die "rhemad ($name): errors in the $f run"
        fi
    done
    echo "rhemad $name (wrk -t1 -c$CONNS, $WORKERS workers): PUT $(awk '/Requests\/sec/ {print $2}' "$tmp/put-$name") req/s, GET $(awk '/Requests\/sec/ {print $2}' "$tmp/get-$name") req/s"
    kill "$rpid"
    wait "$rpid" 2>/dev/null
}
bench_rhemad plain -o persistence.redis.port="$port"
bench_rhemad tls -o persistence.redis.port="$tport" -o persistence.redis.tls=true \
    -o persistence.redis.tls_ca_file="$tmp/ca.pem"
