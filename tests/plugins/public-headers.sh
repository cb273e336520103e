#!/bin/sh
# The installed headers as a third-party plugin author meets them:
#   - each header compiles on its own as C11 (-Wall -Wextra -Werror
#     -pedantic), and as C99 -pedantic but balancer.h (C11 atomics);
#   - each compiles on its own as C++11, when a C++ compiler is here;
#   - compiler attributes only through RHEMA_PRINTF_LIKE / RHEMA_EXPORT,
#     which expand to nothing for a compiler that is not GCC or clang;
#   - the structs a plugin shares with the host have the same size and
#     member offsets in C and in C++ (a C++ plugin against a C host).
# TAP on stdout for automake's tap-driver; compiler output as "#" lines.
#
# Environment (set by Makefile.am): top_srcdir, CC; CXX optional.

here=$(cd "$(dirname "$0")" && pwd)
: "${top_srcdir:=$(cd "$here/../.." && pwd)}"
CC=${CC:-cc}
INC=$top_srcdir/include
headers=$(cd "$INC/rhema" && ls *.h)

if [ -z "${CXX:-}" ]; then
    for c in c++ g++ clang++; do
        if command -v "$c" >/dev/null 2>&1; then
            CXX=$c
            break
        fi
    done
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rhema-headers.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT

n=0
count=0
for h in $headers; do count=$((count + 3)); done
echo "1..$((count + 3))"

ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() {
    n=$((n + 1))
    echo "not ok $n - $1"
    sed 's/^/# /' "$tmp/out"
}
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }

for h in $headers; do
    printf '#include <rhema/%s>\nint rhema_header_test;\n' "$h" >"$tmp/one.c"
    if $CC -std=c11 -pedantic -Wall -Wextra -Werror -fsyntax-only -I"$INC" "$tmp/one.c" \
        >"$tmp/out" 2>&1; then
        ok "$h compiles alone as C11"
    else
        notok "$h compiles alone as C11"
    fi
    if [ "$h" = balancer.h ]; then
        skip "$h compiles alone as C99" "needs C11 atomics (stdatomic.h)"
    elif $CC -std=c99 -pedantic -Wall -Wextra -Werror -fsyntax-only -I"$INC" "$tmp/one.c" \
        >"$tmp/out" 2>&1; then
        ok "$h compiles alone as C99"
    else
        notok "$h compiles alone as C99"
    fi
    if [ -z "${CXX:-}" ]; then
        skip "$h compiles alone as C++11" "no C++ compiler"
        continue
    fi
    cp "$tmp/one.c" "$tmp/one.cc"
    if $CXX -std=c++11 -Wall -Wextra -Werror -fsyntax-only -I"$INC" "$tmp/one.cc" >"$tmp/out" 2>&1; then
        ok "$h compiles alone as C++11"
    else
        notok "$h compiles alone as C++11"
    fi
done

# Attributes: none but the two guarded macros of plugin.h ...
if grep -n '__attribute__' "$INC"/rhema/*.h | grep -v 'define RHEMA_PRINTF_LIKE\|define RHEMA_EXPORT' \
    >"$tmp/out"; then
    notok "__attribute__ only inside RHEMA_PRINTF_LIKE / RHEMA_EXPORT"
else
    ok "__attribute__ only inside RHEMA_PRINTF_LIKE / RHEMA_EXPORT"
fi
# ... and they vanish for a compiler that is neither GCC nor clang.
cat >"$tmp/nognu.c" <<'EOF'
#undef __GNUC__
#undef __clang__
#include <rhema/plugin.h>
#define STR_(x) #x
#define STR(x) STR_(x)
typedef char rhema_attributes_vanish[sizeof(STR(RHEMA_EXPORT RHEMA_PRINTF_LIKE(1, 2))) == 1 ? 1 : -1];
int rhema_header_test;
EOF
if $CC -std=c11 -Wall -Wextra -Werror -fsyntax-only -I"$INC" "$tmp/nognu.c" >"$tmp/out" 2>&1; then
    ok "RHEMA_PRINTF_LIKE and RHEMA_EXPORT expand to nothing without GCC or clang"
else
    notok "RHEMA_PRINTF_LIKE and RHEMA_EXPORT expand to nothing without GCC or clang"
fi

# Layouts: one program prints sizes and offsets; built as C and as C++.
cat >"$tmp/layout.c" <<'EOF'
#include <stddef.h>
#include <stdio.h>
#include <rhema/plugin.h>
#include <rhema/storage.h>
#include <rhema/compress.h>
#include <rhema/cipher.h>
#include <rhema/balancer.h>
#define S(T) printf("sizeof %s %zu\n", #T, sizeof(T))
#define O(T, m) printf("offsetof %s.%s %zu\n", #T, #m, offsetof(T, m))
int main(void)
{
    S(struct rhema_plugin);
    S(struct rhema_host);
    S(struct rhema_storage_plugin);
    S(struct rhema_compress_plugin);
    S(struct rhema_cipher_plugin);
    S(struct rhema_balancer_plugin);
    S(struct rhema_endpoint_load);
    O(struct rhema_endpoint_load, inflight);
    O(struct rhema_endpoint_load, ewma_ns);
    O(struct rhema_endpoint_load, samples);
    O(struct rhema_endpoint_load, failures);
    S(struct rhema_endpoint);
    O(struct rhema_endpoint, id);
    O(struct rhema_endpoint, load);
    S(struct rhema_pick_ctx);
    O(struct rhema_pick_ctx, random);
    O(struct rhema_balancer_plugin, feedback);
    return 0;
}
EOF
if [ -z "${CXX:-}" ]; then
    skip "C and C++ agree on the shared structs" "no C++ compiler"
    exit 0
fi
cp "$tmp/layout.c" "$tmp/layout.cc"
if $CC -std=c11 -I"$INC" -o "$tmp/layout-c" "$tmp/layout.c" >"$tmp/out" 2>&1 &&
    $CXX -std=c++11 -I"$INC" -o "$tmp/layout-cxx" "$tmp/layout.cc" >>"$tmp/out" 2>&1 &&
    "$tmp/layout-c" >"$tmp/c.txt" && "$tmp/layout-cxx" >"$tmp/cxx.txt"; then
    if diff "$tmp/c.txt" "$tmp/cxx.txt" >"$tmp/out" 2>&1; then
        ok "C and C++ agree on the shared structs ($(wc -l <"$tmp/c.txt") sizes and offsets)"
    else
        notok "C and C++ agree on the shared structs"
    fi
else
    notok "C and C++ agree on the shared structs (build)"
fi
