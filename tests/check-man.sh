#!/bin/sh
# check-man.sh -- every man page in doc/ renders without a warning from
# man --warnings (groff's), at 80 columns.  Prints TAP for automake's
# tap-driver (so a missing man is a TAP skip, "1..0 # SKIP", which the
# driver counts as skipped; exit 77 would read as an error there).
# Needs man-db (tools/install-deps installs it).
srcdir=${top_srcdir:-$(dirname "$0")/..}
if ! command -v man >/dev/null 2>&1; then
    echo "1..0 # SKIP man not installed (Debian: man-db)"
    exit 0
fi
set -- "$srcdir"/doc/*.[0-9]
echo "1..$#"
n=0
status=0
for page in "$@"; do
    n=$((n + 1))
    name=$(basename "$page")
    # man's own pager and formatting choices are kept out of the way
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 MANPAGER=cat PAGER=cat \
        man --warnings -l "$page" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -eq 0 ] && [ -z "$warnings" ]; then
        echo "ok $n - $name renders without warnings"
    else
        echo "not ok $n - $name: man exited $rc"
        printf '%s\n' "$warnings" | sed 's/^/# /'
        status=1
    fi
done
exit $status
