#!/bin/sh
# check-examples.sh -- every sample configuration of etc/examples passes
# "rhemad -t" (TAP, for automake's tap-driver), and the check can fail: a
# copy of each with an out-of-range value is refused.
#
# What -t checks: the file's syntax, every key of rhemad's own schema with
# its type and range, the plugins the file names (loaded), and the data
# directory's usability, and the storage plugin's own group
# (persistence.postgres, persistence.redis: its check(), storage minor 4).
# It creates nothing and does not connect to a storage backend, so no
# PostgreSQL or Redis is needed here (tools/cluster-demo starts the
# cluster-node files against a real PostgreSQL).  A password_env an
# example names is set to a dummy value, as the operator's environment
# would set it: the plugin's check refuses an unset one, as the start does.  The paths the examples name for an
# installed system (/var/lib/rhema, /etc/rhema/master.key) are redirected
# into a temporary directory with -o, as they need not exist here.
srcdir=${top_srcdir:-$(dirname "$0")/..}
builddir=${top_builddir:-$srcdir}
plugins=${RHEMA_PLUGIN_DIR:-$builddir/plugins/.libs}
rhemad=$builddir/rhemad
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rhema-examples.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
head -c 32 /dev/urandom > "$tmp/master.key" && chmod 0400 "$tmp/master.key"

set -- "$srcdir"/etc/examples/*.conf
echo "1..$(($# * 2))"
n=0
status=0
for conf in "$@"; do
    name=$(basename "$conf")
    n=$((n + 1))
    # shellcheck disable=SC2046 # one NAME=value word per password_env
    out=$(env $(sed -n 's/^ *password_env *= *"\([A-Za-z_][A-Za-z0-9_]*\)".*/\1=example-only/p' "$conf") \
        "$rhemad" -t -c "$conf" -P "$plugins" -o "service.data_directory=$tmp" \
        $(grep -q '^ *key_file' "$conf" && echo "-o advanced_features.key_management.key_file=$tmp/master.key") \
        2>&1)
    if [ $? -eq 0 ] && printf '%s\n' "$out" | grep -q 'test is successful'; then
        echo "ok $n - rhemad -t accepts $name"
    else
        echo "not ok $n - rhemad -t refuses $name"
        printf '%s\n' "$out" | sed 's/^/# /'
        status=1
    fi
    n=$((n + 1))
    # the same file with service.listen's port out of range must be refused
    sed 's/^\( *listen = "[^"]*:\)[0-9]*"/\170000"/' "$conf" > "$tmp/bad-$name"
    out=$("$rhemad" -t -c "$tmp/bad-$name" -P "$plugins" -o "service.data_directory=$tmp" 2>&1)
    if [ $? -ne 0 ] && printf '%s\n' "$out" | grep -q 'listen'; then
        echo "ok $n - rhemad -t refuses $name with a bad listen port"
    else
        echo "not ok $n - rhemad -t accepted $name with a bad listen port"
        printf '%s\n' "$out" | sed 's/^/# /'
        status=1
    fi
done
exit $status
