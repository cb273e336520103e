#!/bin/sh
# Run the fault-injection and crash-safety tests (pytest, tests/fault) and
# report them as TAP on stdout for automake's tap-driver; pytest's own output
# (with a summary of cycles, acknowledged writes and recovery times) goes to
# stderr (the .log).
#
# The tests start their own PostgreSQL (initdb as the postgres user when run
# as root) and Redis on free loopback ports in pytest's temporary
# directories, stop and restart them, and stop them at the end.  A backend
# whose plugin was not built or whose server binaries are missing is skipped.
#
# Environment (set by Makefile.am): top_srcdir, top_builddir, RHEMA_PLUGIN_DIR.
# RHEMA_CRASH_CYCLES: SIGKILL cycles per backend (default 5; the full run is
# RHEMA_CRASH_CYCLES=50 sh tests/fault/run-fault.sh).  RHEMA_CRASH_SEED
# replays the random choices of a run (the summary prints the seed).

PYTHON=/usr/bin/python3

if ! "$PYTHON" -c 'import pytest' >/dev/null 2>&1; then
    echo "1..0 # SKIP pytest not installed for $PYTHON"
    exit 0
fi

here=$(cd "$(dirname "$0")" && pwd)
: "${top_srcdir:=$(cd "$here/../.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
: "${RHEMA_PLUGIN_DIR:=$top_builddir/plugins/.libs}"
export top_srcdir top_builddir RHEMA_PLUGIN_DIR

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/rhema-fault.XXXXXX") || exit 99
trap 'rm -rf "$tmpdir"' EXIT
trap 'exit 130' INT TERM HUP

RHEMA_TAP_FILE=$tmpdir/results.tap
PYTHONDONTWRITEBYTECODE=1
export RHEMA_TAP_FILE PYTHONDONTWRITEBYTECODE

# The source tree may be read-only (make distcheck): no cache, no bytecode,
# pytest's temporary directories under $tmpdir.  (tests/fault/conftest.py
# loads tests/integration/conftest.py, whose hook writes the TAP file.)
(cd "$top_srcdir" &&
    "$PYTHON" -m pytest -q -p no:cacheprovider --basetemp="$tmpdir/t" \
        tests/fault) 1>&2
rc=$?

if [ -s "$RHEMA_TAP_FILE" ] && grep -q '^1\.\.' "$RHEMA_TAP_FILE"; then
    cat "$RHEMA_TAP_FILE"
    exit 0
fi
echo "Bail out! pytest exited with status $rc before reporting (see the log)"
exit 1
