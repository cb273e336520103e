#!/bin/sh
# The out-of-tree example plugin (doc/examples/kvfile_storage.c), end to end,
# as a plugin author would meet it:
#   1. it builds with nothing but `pkg-config --cflags rhema-plugin`;
#   2. it exports rhema_plugin_init and nothing else;
#   3. `rhemactl plugin check` runs the conformance suite on it and passes;
#   4. `rhemad -t` accepts a configuration that loads it;
#   5-7. rhemad loads it from plugins.load, serves a session through it
#      (PUT, GET) and lists it under /v1/plugins;
#   8. rhemad stops on SIGTERM with status 0;
#   9. a restarted rhemad still has the session (the plugin's log).
# TAP on stdout for automake's tap-driver; details as "#" lines.
#
# Environment (set by Makefile.am): top_srcdir, top_builddir, RHEMA_PLUGIN_DIR.

here=$(cd "$(dirname "$0")" && pwd)
: "${top_srcdir:=$(cd "$here/../.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
: "${RHEMA_PLUGIN_DIR:=$top_builddir/plugins/.libs}"
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
RHEMAD=$top_builddir/rhemad
RHEMACTL=$top_builddir/rhemactl
SOURCE=$top_srcdir/doc/examples/kvfile_storage.c

if ! command -v "$PKG_CONFIG" >/dev/null 2>&1; then
    echo "1..0 # SKIP pkg-config not found"
    exit 0
fi
if ! command -v curl >/dev/null 2>&1; then
    echo "1..0 # SKIP curl not found"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rhema-example.XXXXXX") || exit 99
tmp=$(cd "$tmp" && pwd -P) # the loader reports real paths
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

echo "1..10"
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
# Show a file as TAP diagnostics.
diag() { sed 's/^/# /' "$1"; }
# Skip every test from the next one to 9, with a reason.
skip_rest() {
    while [ "$n" -lt 9 ]; do skip "not run" "$1"; done
    exit 1
}

# A free loopback port: bind to port 0 and ask which one we got.
free_port() {
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1; then
            "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' && return
        fi
    done
    # no python: a port derived from our pid, in the dynamic range
    echo $((49152 + $$ % 16000))
}

# ---- 1. build with only the pkg-config flags ----
so=$tmp/storage_kvfile.so
cflags=$(PKG_CONFIG_PATH=$top_builddir "$PKG_CONFIG" --cflags rhema-plugin 2>"$tmp/pkg.err")
if [ $? -ne 0 ]; then
    diag "$tmp/pkg.err"
    not_ok "pkg-config --cflags rhema-plugin (PKG_CONFIG_PATH=$top_builddir)"
    skip_rest "no pkg-config flags"
fi
echo "# cflags: $cflags"
# shellcheck disable=SC2086 # cflags is a list of words
if "$CC" $cflags -std=c11 -Wall -Wextra -pthread -fPIC -fvisibility=hidden -shared \
    -o "$so" "$SOURCE" >"$tmp/cc.log" 2>&1; then
    ok "doc/examples/kvfile_storage.c builds with only pkg-config --cflags rhema-plugin"
else
    diag "$tmp/cc.log"
    not_ok "doc/examples/kvfile_storage.c builds with only pkg-config --cflags rhema-plugin"
    skip_rest "the plugin did not build"
fi
[ -s "$tmp/cc.log" ] && diag "$tmp/cc.log"

# ---- 2. exports ----
exports=$(nm -D --defined-only "$so" | awk 'NF >= 3 { print $3 }' | sort | tr '\n' ' ')
if [ "$exports" = "rhema_plugin_init " ]; then
    ok "the plugin exports rhema_plugin_init only"
else
    echo "# exported: $exports"
    not_ok "the plugin exports rhema_plugin_init only"
fi

# ---- 3. the conformance suite ----
if "$RHEMACTL" plugin check "$so" -o persistence.kvfile.path="$tmp/check.log" \
    >"$tmp/check.out" 2>&1; then
    echo "# $(tail -n 1 "$tmp/check.out")"
    ok "rhemactl plugin check passes"
else
    diag "$tmp/check.out"
    not_ok "rhemactl plugin check passes"
fi

# ---- 4. rhemad -t ----
cat >"$tmp/rhemad.conf" <<EOF
plugins: {
  directory = "$RHEMA_PLUGIN_DIR";
  load = ( "$so" );
};
persistence: {
  backend = "kvfile";
  kvfile = { path = "$tmp/data.log"; sync = true; };
};
EOF
if "$RHEMAD" -t -c "$tmp/rhemad.conf" >"$tmp/t.out" 2>&1 &&
    grep -q "storage 'kvfile' is not opened (-t creates nothing); its group is valid" "$tmp/t.out" &&
    [ ! -e "$tmp/data.log" ]; then
    ok "rhemad -t accepts a configuration that loads the plugin, through its check(), creating nothing"
else
    diag "$tmp/t.out"
    not_ok "rhemad -t accepts a configuration that loads the plugin, through its check(), creating nothing"
fi
# the keys check() did not read are refused with their file:line (line 7)
sed 's/sync = true;/sync = true; compress = 1;/' "$tmp/rhemad.conf" >"$tmp/bad.conf"
if ! "$RHEMAD" -t -c "$tmp/bad.conf" >"$tmp/t.out" 2>&1 &&
    grep -q "$tmp/bad.conf:7: unknown key 'persistence.kvfile.compress' for plugin 'kvfile'" "$tmp/t.out" &&
    [ ! -e "$tmp/data.log" ]; then
    ok "rhemad -t refuses a key of the plugin's group it does not read"
else
    diag "$tmp/t.out"
    not_ok "rhemad -t refuses a key of the plugin's group it does not read"
fi

# ---- start rhemad with the plugin, from the command line ----
# Starts rhemad on a free port; sets pid and base.  Returns 1 if it never
# became ready (a few attempts, in case another process took the port).
start_rhemad() {
    attempt=0
    while [ $attempt -lt 3 ]; do
        attempt=$((attempt + 1))
        port=$(free_port)
        base=http://127.0.0.1:$port
        "$RHEMAD" -f -P "$RHEMA_PLUGIN_DIR" \
            -o service.data_directory="$tmp" \
            -o "plugins.load=[\"$so\"]" \
            -o persistence.backend=kvfile \
            -o persistence.kvfile.path="$tmp/data.log" \
            -o service.listen=127.0.0.1:"$port" \
            -o service.workers=2 \
            >>"$tmp/rhemad.log" 2>&1 &
        pid=$!
        i=0
        while [ $i -lt 100 ]; do # 10 s at most
            if ! kill -0 "$pid" 2>/dev/null; then
                wait "$pid" 2>/dev/null
                pid=
                break
            fi
            if curl -fsS -o /dev/null --max-time 1 "$base/health/ready" 2>/dev/null; then
                return 0
            fi
            sleep 0.1
            i=$((i + 1))
        done
        if [ -n "$pid" ]; then # alive but never ready: give up
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            pid=
            return 1
        fi
    done
    return 1
}

# Stop rhemad with SIGTERM; its exit status in $status (124: did not stop).
stop_rhemad() {
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null
        status=124
    else
        wait "$pid"
        status=$?
    fi
    pid=
}

if ! start_rhemad; then
    diag "$tmp/rhemad.log"
    not_ok "rhemad starts with the plugin and PUTs a session"
    skip_rest "rhemad did not become ready"
fi

# ---- 5, 6. a session through the plugin ----
body='{"topic":"example plugin","participants":["agent-a","agent-b"],"status":"Active"}'
code=$(curl -sS -o "$tmp/put.out" -w '%{http_code}' --max-time 5 -X PUT \
    -H 'Content-Type: application/json' -d "$body" "$base/v1/sessions/kv-1")
if [ "$code" = 201 ]; then
    ok "PUT /v1/sessions/kv-1 through the plugin: 201"
else
    diag "$tmp/put.out"
    not_ok "PUT /v1/sessions/kv-1 through the plugin: got $code, want 201"
fi

code=$(curl -sS -o "$tmp/get.out" -w '%{http_code}' --max-time 5 "$base/v1/sessions/kv-1")
if [ "$code" = 200 ] && grep -q '"topic":"example plugin"' "$tmp/get.out" &&
    grep -q '"id":"kv-1"' "$tmp/get.out"; then
    ok "GET /v1/sessions/kv-1 returns the session"
else
    diag "$tmp/get.out"
    not_ok "GET /v1/sessions/kv-1 returns the session (status $code)"
fi

# ---- 7. /v1/plugins ----
code=$(curl -sS -o "$tmp/plugins.out" -w '%{http_code}' --max-time 5 "$base/v1/plugins")
if [ "$code" = 200 ] && grep -q '"name":"kvfile"' "$tmp/plugins.out" &&
    grep -q "\"path\":\"$so\"" "$tmp/plugins.out"; then
    ok "/v1/plugins lists kvfile loaded from $so"
else
    diag "$tmp/plugins.out"
    not_ok "/v1/plugins lists kvfile (status $code)"
fi

# ---- 8. SIGTERM ----
stop_rhemad
if [ "$status" -eq 0 ]; then
    ok "rhemad exits 0 on SIGTERM"
else
    diag "$tmp/rhemad.log"
    not_ok "rhemad exits 0 on SIGTERM (status $status)"
fi

# ---- 9. the plugin's log carries the session across a restart ----
if start_rhemad; then
    code=$(curl -sS -o "$tmp/get2.out" -w '%{http_code}' --max-time 5 "$base/v1/sessions/kv-1")
    if [ "$code" = 200 ] && grep -q '"topic":"example plugin"' "$tmp/get2.out"; then
        ok "the session survives a restart (the plugin's log)"
    else
        diag "$tmp/get2.out"
        not_ok "the session survives a restart (status $code)"
    fi
    stop_rhemad
else
    diag "$tmp/rhemad.log"
    not_ok "the session survives a restart: rhemad did not restart"
fi

[ $failed -eq 0 ]
