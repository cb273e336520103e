#!/bin/sh
# bench/run-codecs.sh -- the compression and cipher plugins, through rhema's
# loader, frame and envelope, against the raw libraries, on this machine, in
# one run.  A benchmark, not a test: never part of `make check`.
#
#   1. bench/codec_bench.c: lz4, zstd, gzip, snappy at their default levels,
#      rhema_frame_compress / rhema_frame_decompress against the library
#      calls the plugins make, on generated coordination-style JSON messages
#      of 256 B and 4 KiB; targets: rhema >= 0.95x raw at 4 KiB and >= 0.90x
#      at 256 B, compress and decompress.
#      zstd with a 16 KiB dictionary trained on a disjoint part of the corpus
#      against zstd alone on messages of 200 .. 1023 B; target: the
#      compression ratio with the dictionary >= 1.5x the ratio without.
#   2. bench/cipher_bench.c: each cipher plugin through the keyring envelope
#      against raw libsodium on 64 B, 1 KiB, 64 KiB; target: >= 0.90x at
#      1 KiB, encrypt and decrypt.
#
# Environment:
#   BENCH_CELL_SECONDS  time each side of a cell runs at least (default 0.5)
#   BENCH_REPS          cells per measurement (default 3)
#   BENCH_SLICE         the alternating slices a cell is made of (default 0.02 s);
#                       the best slice of each side counts
#   top_builddir        where rhema_build.h and plugins/.libs are (default:
#                       the source tree)
#   RHEMA_PLUGIN_DIR    the plugins to load (default $top_builddir/plugins/.libs)
#   CC, PKG_CONFIG
# Exit status: the number of targets missed (0: all met); 99 on a setup error.

set -u

here=$(cd "$(dirname "$0")" && pwd)
top_srcdir=$(cd "$here/.." && pwd)
: "${top_builddir:=$top_srcdir}"
CELL=${BENCH_CELL_SECONDS:-0.5}
REPS=${BENCH_REPS:-3}
SLICE=${BENCH_SLICE:-0.02}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
PLUGIN_DIR=${RHEMA_PLUGIN_DIR:-$top_builddir/plugins/.libs}

die() { echo "run-codecs.sh: $*" >&2; exit 99; }

[ -f "$top_builddir/rhema_build.h" ] || die "$top_builddir/rhema_build.h missing (run configure)"
for p in lz4 zstd gzip snappy; do
    [ -f "$PLUGIN_DIR/compress_$p.so" ] || die "$PLUGIN_DIR/compress_$p.so not built (make)"
done
[ -f "$PLUGIN_DIR/cipher_chacha20poly1305.so" ] || die "$PLUGIN_DIR/cipher_*.so not built (make)"

# flags of a library: pkg-config, else plain -l (snappy ships no .pc on some systems)
libflags() { # pkg-name fallback
    $PKG_CONFIG --cflags --libs "$1" 2>/dev/null || echo "$2"
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rhema-bench-codecs.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM HUP

CFLAGS_="-O2 -g -std=c11 -D_GNU_SOURCE -I$top_srcdir/include -I$top_srcdir/core -I$top_builddir"
CFLAGS_="$CFLAGS_ -DPLUGINDIR=\"$PLUGIN_DIR\""
CORE="$top_srcdir/core/plugin.c $top_srcdir/core/config.c $top_srcdir/core/log.c $top_srcdir/core/util.c"

echo "building bench/codec_bench and bench/cipher_bench in $tmp"
# shellcheck disable=SC2046,SC2086
"$CC" $CFLAGS_ -o "$tmp/codec_bench" "$here/codec_bench.c" $CORE "$top_srcdir/core/codec.c" \
    $(libflags libconfig -lconfig) $(libflags liblz4 -llz4) $(libflags libzstd -lzstd) \
    $(libflags zlib -lz) $(libflags snappy -lsnappy) -ldl -lpthread ||
    die "cannot build codec_bench"
# shellcheck disable=SC2046,SC2086
"$CC" $CFLAGS_ -o "$tmp/cipher_bench" "$here/cipher_bench.c" $CORE "$top_srcdir/core/keyring.c" \
    $(libflags libconfig -lconfig) $(libflags libsodium -lsodium) -ldl -lpthread ||
    die "cannot build cipher_bench"

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null); plugins from $PLUGIN_DIR"
echo "codecs ..."
"$tmp/codec_bench" -P "$PLUGIN_DIR" -t "$CELL" -r "$REPS" -S "$SLICE" -d "$tmp" >"$tmp/codec.out" 2>"$tmp/codec.err"
rc=$?
[ $rc -ne 99 ] || { cat "$tmp/codec.out" "$tmp/codec.err" >&2; die "codec_bench failed"; }
echo "ciphers ..."
"$tmp/cipher_bench" -P "$PLUGIN_DIR" -t "$CELL" -r "$REPS" -S "$SLICE" -d "$tmp" >"$tmp/cipher.out" 2>"$tmp/cipher.err"
rc=$?
[ $rc -ne 99 ] || { cat "$tmp/cipher.out" "$tmp/cipher.err" >&2; die "cipher_bench failed"; }

echo
grep -h '^# ' "$tmp/codec.out" "$tmp/cipher.out" | grep -v '^# targets'
echo
cat "$tmp/codec.out" "$tmp/cipher.out" | awk '
BEGIN {
    printf "%-18s %6s %-10s %11s %11s %8s %7s %7s %7s %s\n", "plugin", "size", "op",
        "rhema MB/s", "raw MB/s", "rhema/", "ratio", "ratio", "target", "result"
    printf "%-18s %6s %-10s %11s %11s %8s %7s %7s %7s %s\n", "", "bytes", "", "", "", "raw",
        "frame", "raw", "", ""
}
$1 == "ROW" {
    size = $4
    if (size == 65536) size = "64Ki"; else if (size == 4096) size = "4Ki"; else if (size == 1024) size = "1Ki"
    if (last != "" && last != $2) print ""
    last = $2
    printf "%-18s %6s %-10s %11s %11s %8s %7s %7s %7s %s\n", $3, size, $5, $6, $7, $8, $9, $10,
        ($11 == "-" ? "" : ">=" $11), ($12 == "-" ? "" : $12)
}
$1 == "RATIO" {
    dict = sprintf("zstd-3 on messages < 1 KiB, ratio of the frames: %.3f alone, %.3f with the 16 KiB dictionary: %.2fx (target >= %.1fx) %s\n(library output alone, without the frame header: %.2fx)", $3, $4, $5, $7, $8, $6)
}
END { if (dict != "") { print ""; print dict } }'

missed=$(cat "$tmp/codec.out" "$tmp/cipher.out" | awk '($1 == "ROW" || $1 == "RATIO") && $NF == "FAIL" { n++ } END { print n + 0 }')
total=$(cat "$tmp/codec.out" "$tmp/cipher.out" | awk '($1 == "ROW" || $1 == "RATIO") && ($NF == "FAIL" || $NF == "PASS") { n++ } END { print n + 0 }')
echo
if [ "$missed" -eq 0 ]; then
    echo "all $total targets met"
else
    echo "$missed of $total targets missed:"
    cat "$tmp/codec.out" "$tmp/cipher.out" | awk '$1 == "ROW" && $NF == "FAIL" { printf "  %s %s B %s: %s (target >= %s)\n", $3, $4, $5, $8, $11 }
        $1 == "RATIO" && $NF == "FAIL" { printf "  zstd dictionary ratio gain: %s (target >= %s)\n", $5, $7 }'
fi
exit "$missed"
