#!/bin/sh
# bench/run-balancers.sh -- the balancing strategy plugins, through rhema's
# loader, on this machine, in one run.  A benchmark, not a test: never part
# of `make check`.
#
#   ns per pick of round_robin, least_connections, weighted_round_robin,
#   least_response_time, random and ip_hash at 10, 100 and 1000 endpoints
#   (weights 1 .. 4) on one and two threads; target: under 200 ns per pick
#   at 1000 endpoints.  The key disruption of ip_hash when 1 of 100
#   endpoints leaves (1M keys); target: at most 1.5%.
#
# Environment:
#   BENCH_CELL_SECONDS  time each cell runs (default 0.3)
#   BENCH_REPS          cells per measurement, the best counts (default 3)
#   top_builddir        where rhema_build.h and plugins/.libs are (default:
#                       the source tree)
#   RHEMA_PLUGIN_DIR    the plugins to load (default $top_builddir/plugins/.libs)
#   CC, PKG_CONFIG
# Exit status: the number of targets missed (0: all met); 99 on a setup error.

set -u

here=$(cd "$(dirname "$0")" && pwd)
top_srcdir=$(cd "$here/.." && pwd)
: "${top_builddir:=$top_srcdir}"
CELL=${BENCH_CELL_SECONDS:-0.3}
REPS=${BENCH_REPS:-3}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
PLUGIN_DIR=${RHEMA_PLUGIN_DIR:-$top_builddir/plugins/.libs}

die() { echo "run-balancers.sh: $*" >&2; exit 99; }

[ -f "$top_builddir/rhema_build.h" ] || die "$top_builddir/rhema_build.h missing (run configure)"
for p in round_robin least_connections weighted_round_robin least_response_time random ip_hash; do
    [ -f "$PLUGIN_DIR/balancer_$p.so" ] || die "$PLUGIN_DIR/balancer_$p.so not built (make)"
done

libflags() { # pkg-name fallback
    $PKG_CONFIG --cflags --libs "$1" 2>/dev/null || echo "$2"
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rhema-bench-balancers.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM HUP

CFLAGS_="-O2 -g -std=c11 -D_GNU_SOURCE -I$top_srcdir/include -I$top_srcdir/core -I$top_builddir"
CFLAGS_="$CFLAGS_ -DPLUGINDIR=\"$PLUGIN_DIR\""
CORE="$top_srcdir/core/plugin.c $top_srcdir/core/config.c $top_srcdir/core/log.c $top_srcdir/core/util.c"

echo "building bench/balancer_bench in $tmp"
# shellcheck disable=SC2046,SC2086
"$CC" $CFLAGS_ -o "$tmp/balancer_bench" "$here/balancer_bench.c" $CORE \
    $(libflags libconfig -lconfig) $(libflags jansson -ljansson) -ldl -lpthread ||
    die "cannot build balancer_bench"

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null); plugins from $PLUGIN_DIR"
"$tmp/balancer_bench" -P "$PLUGIN_DIR" -t "$CELL" -r "$REPS" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -ne 99 ] || { cat "$tmp/out" "$tmp/err" >&2; die "balancer_bench failed"; }

echo
awk '
$1 == "ROW" { ns[$2, $3, $4] = $5; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 }
              if ($7 != "-") res[$2, $4] = $7 }
$1 == "DISRUPTION" { d = $0 }
END {
    printf "%-22s %9s %9s %9s %9s %9s %9s  %s\n", "ns per pick", "10 x1", "10 x2", "100 x1",
        "100 x2", "1000 x1", "1000 x2", "target <= 200 ns at 1000"
    for (i = 1; i <= n; i++) {
        s = order[i]
        printf "%-22s %9s %9s %9s %9s %9s %9s  %s %s\n", s, ns[s, 10, 1], ns[s, 10, 2],
            ns[s, 100, 1], ns[s, 100, 2], ns[s, 1000, 1], ns[s, 1000, 2], res[s, 1], res[s, 2]
    }
    if (d != "") {
        split(d, f, " ")
        printf "\nip_hash: 1 of 100 endpoints leaves: %.2f%% of 1M keys move (ideal 1.00%%, target <= %.1f%%) %s\n",
            100 * f[2], 100 * f[3], f[4]
    }
}' "$tmp/out"
missed=$(awk '($1 == "ROW" || $1 == "DISRUPTION") && $NF == "FAIL" { n++ } END { print n + 0 }' "$tmp/out")
total=$(awk '($1 == "ROW" || $1 == "DISRUPTION") && ($NF == "FAIL" || $NF == "PASS") { n++ } END { print n + 0 }' "$tmp/out")
echo
if [ "$missed" -eq 0 ]; then
    echo "all $total targets met"
else
    echo "$missed of $total targets missed"
fi
exit "$missed"
