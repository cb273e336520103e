#!/bin/sh
# Run the libFuzzer harnesses of a build configured with --enable-fuzzing.
#
#     sh ../tests/fuzz/run.sh SECONDS [HARNESS...]      (from the build directory)
#
# Each harness (default: every one built) runs for SECONDS, one after the
# other, one process each (-jobs=1: the machines are shared), starting from
# its seeds in tests/fuzz/corpus/<harness>/, which it only reads; what it
# adds goes to fuzz-work/<harness>/ in the build directory, kept between
# runs so that long runs build on each other.  A crash, a sanitizer report,
# a leak or a timeout (10 s per input) fails the harness; the input is
# saved as fuzz-work/<harness>-crash-*, and the log as fuzz-work/<harness>.log.
# One line per harness, "PASS: name" or "FAIL: name", then
# "fuzz: harnesses passed N, failed N"; the exit status is 0 only when none failed.
# Extra libFuzzer options go in FUZZ_ARGS (e.g. FUZZ_ARGS=-jobs=2 for a
# long run on a free machine); doc/hacking.md, "Fuzzing" says more.
set -u
if [ $# -lt 1 ]; then
    echo "usage: run.sh SECONDS [HARNESS...]" >&2
    exit 2
fi
secs=$1
shift
src=$(cd "$(dirname "$0")" && pwd)
build=$PWD
if [ ! -d "$build/tests/fuzz" ]; then
    echo "run.sh: no tests/fuzz here: run it from a build directory configured with --enable-fuzzing" >&2
    exit 2
fi
if [ $# -eq 0 ]; then
    set --
    for h in "$build"/tests/fuzz/fuzz_*; do
        case $h in *.o) continue ;; esac
        [ -x "$h" ] && set -- "$@" "$(basename "$h")"
    done
fi
export RHEMA_PLUGIN_DIR="${RHEMA_PLUGIN_DIR:-$build/plugins/.libs}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$src/../lsan.supp:print_suppressions=0}"
work=$build/fuzz-work
mkdir -p "$work"
passed=0
failed=0
for h in "$@"; do
    exe=$build/tests/fuzz/$h
    if [ ! -x "$exe" ]; then
        echo "FAIL: $h (not built)"
        failed=$((failed + 1))
        continue
    fi
    mkdir -p "$work/$h"
    seeds=$src/corpus/$h
    [ -d "$seeds" ] || seeds=
    # shellcheck disable=SC2086
    if "$exe" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/$h-" ${FUZZ_ARGS:-} "$work/$h" $seeds >"$work/$h.log" 2>&1; then
        echo "PASS: $h ($(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$work/$h.log" |
            grep -o '[0-9]*$') runs in ${secs}s)"
        passed=$((passed + 1))
    else
        echo "FAIL: $h (log: $work/$h.log)"
        grep -aE '^(==[0-9]+==ERROR|SUMMARY|.*invariant broken|.*runtime error)' "$work/$h.log" | head -5
        ls "$work/$h"-* 2>/dev/null | head -3
        failed=$((failed + 1))
    fi
done
echo "fuzz: harnesses passed $passed, failed $failed"
[ "$failed" = 0 ]
