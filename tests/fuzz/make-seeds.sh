#!/bin/sh
# Regenerate the seeds that only the code can make, with the code itself:
# the keyring fixture (fixtures/), envelopes, key backups, frames, API keys
# and audit logs (gen_seeds) and Shamir shares of the fixture's master key
# (rhemactl keys split).
# The JSON, config and request seeds are plain files kept by hand.
# Usage, from a build directory configured with --enable-fuzzing:
#     make && sh ../tests/fuzz/make-seeds.sh
# It replaces the keyring fixture: commit fixtures/ and corpus/ together.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=$PWD
export RHEMA_PLUGIN_DIR="${RHEMA_PLUGIN_DIR:-$build/plugins/.libs}"
"$build/tests/fuzz/gen_seeds" "$here"
if [ -x "$build/tests/fuzz/fuzz_shares" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp "$here/fixtures/master.key" "$tmp/master.key"
    chmod 600 "$tmp/master.key"
    mkdir -p "$here/corpus/fuzz_shares"
    "$build/rhemactl" keys split --shares 3 --threshold 2 \
        -o "advanced_features.key_management.key_file=\"$tmp/master.key\"" \
        -o "advanced_features.key_management.keyring_path=\"$tmp/keyring\"" >"$tmp/shares"
    # byte 0 is the harness's mode (even: as given); then the share file
    { printf '\000'; cat "$tmp/shares"; } >"$here/corpus/fuzz_shares/split-3-of-2"
    { printf '\000'; sed -n 1,2p "$tmp/shares"; } >"$here/corpus/fuzz_shares/two-of-3"
    { printf '\000'; sed -n 3p "$tmp/shares"; } >"$here/corpus/fuzz_shares/one-of-3"
    # byte 0 odd: the harness recomputes each line's check before parsing
    { printf '\001'; cat "$tmp/shares"; } >"$here/corpus/fuzz_shares/split-3-of-2-fixed"
    { printf '\001'; sed -n 2,3p "$tmp/shares"; } >"$here/corpus/fuzz_shares/two-of-3-fixed"
fi
echo "make-seeds: seeds written under $here/corpus, the keyring fixture under $here/fixtures"
