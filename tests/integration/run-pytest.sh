#!/bin/sh
# Run the black-box tests (pytest) and report them as TAP on stdout for
# automake's tap-driver; pytest's own output goes to stderr (the .log).
#
# Environment (set by Makefile.am): top_srcdir, top_builddir, RHEMA_PLUGIN_DIR.

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

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/rhema-pytest.XXXXXX") || exit 99
trap 'rm -rf "$tmpdir"' EXIT
trap 'exit 130' INT TERM HUP

RHEMA_TAP_FILE=$tmpdir/results.tap
PYTHONDONTWRITEBYTECODE=1
export RHEMA_TAP_FILE PYTHONDONTWRITEBYTECODE

# The source tree may be read-only (make distcheck): no cache, no bytecode,
# pytest's temporary directories under $tmpdir.
(cd "$top_srcdir" &&
    "$PYTHON" -m pytest -q -p no:cacheprovider --basetemp="$tmpdir/t" \
        tests/integration) 1>&2
rc=$?

if [ -s "$RHEMA_TAP_FILE" ] && grep -q '^1\.\.' "$RHEMA_TAP_FILE"; then
    cat "$RHEMA_TAP_FILE"
    exit 0
fi
echo "Bail out! pytest exited with status $rc before reporting (see the log)"
exit 1
