#!/bin/sh
# SPDX-License-Identifier: MIT
# check_version.sh - one version everywhere: the header's EEVP_VERSION_*
# macros (the one source of truth) against the shared object's file name and
# SONAME, the symlinks, the version script's node, eevp.pc and what the
# loaded library reports at run time.
#
# Usage: tests/abi/check_version.sh   (after `make all`; CC overrides cc)
set -u
cd "$(dirname "$0")/../.." || exit 2
CC=${CC:-cc}
LC_ALL=C
export LC_ALL

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "PASS: $1"; }
ko() { fail=$((fail + 1)); echo "FAIL: $1"; }

ver() { sed -n "s/^#define EEVP_VERSION_$1 \([0-9]*\).*/\1/p" include/eevp.h; }
MAJOR=$(ver MAJOR)
MINOR=$(ver MINOR)
PATCH=$(ver PATCH)
case "$MAJOR.$MINOR.$PATCH" in
*[!0-9.]* | .* | *..* | *.) ko "header version macros unreadable: '$MAJOR.$MINOR.$PATCH'"; exit 1 ;;
esac
V=$MAJOR.$MINOR.$PATCH
ok "include/eevp.h says $V"

so=lib/libeevp.so.$V
if [ -f "$so" ]; then ok "$so exists"; else ko "$so missing (ls lib: $(ls lib 2>/dev/null | tr '\n' ' '))"; fi
soname=$(readelf -d "$so" 2>/dev/null | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
if [ "$soname" = "libeevp.so.$MAJOR" ]; then ok "SONAME $soname"
else ko "SONAME '$soname', expected libeevp.so.$MAJOR"; fi
if [ "$(readlink lib/libeevp.so.$MAJOR)" = "libeevp.so.$V" ]; then ok "lib/libeevp.so.$MAJOR -> libeevp.so.$V"
else ko "lib/libeevp.so.$MAJOR -> '$(readlink lib/libeevp.so.$MAJOR)'"; fi
if [ "$(readlink lib/libeevp.so)" = "libeevp.so.$MAJOR" ]; then ok "lib/libeevp.so -> libeevp.so.$MAJOR"
else ko "lib/libeevp.so -> '$(readlink lib/libeevp.so)'"; fi

# Version script: one node per major, EEVP_MAJOR.x; every exported function
# carries a node of this major.
nodes=$(sed -n 's/^\(EEVP_[0-9][0-9.]*\) *{.*/\1/p' src/libeevp.vers)
bad=$(echo "$nodes" | grep -v "^EEVP_$MAJOR\." || true)
if [ -n "$nodes" ] && [ -z "$bad" ]; then ok "version script nodes: $(echo $nodes)"
else ko "version script nodes '$(echo $nodes)' are not all EEVP_$MAJOR.*"; fi
wrong=$(objdump -T "$so" 2>/dev/null | awk '/ eevp_/ && $0 !~ /EEVP_'"$MAJOR"'\./' || true)
if [ -z "$wrong" ]; then ok "exported symbols are versioned EEVP_$MAJOR.*"
else ko "symbols without an EEVP_$MAJOR.* version:"; echo "$wrong" | sed 's/^/    /'; fi

pcv=$(sed -n 's/^Version: *//p' eevp.pc 2>/dev/null)
if [ "$pcv" = "$V" ]; then ok "eevp.pc Version: $pcv"; else ko "eevp.pc Version: '$pcv', expected $V"; fi

# What the loaded library says.
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM
cat > "$tmp/v.c" <<'C'
#include <stdio.h>
#include "eevp.h"
int main(void)
{
    printf("%u %s %d %s\n", (unsigned)eevp_version_number(), eevp_version_string(),
           EEVP_VERSION_NUMBER, EEVP_VERSION_STRING);
    return 0;
}
C
if $CC -std=c99 -Iinclude -o "$tmp/v" "$tmp/v.c" -Llib -leevp -Wl,-rpath,"$PWD/lib" 2>"$tmp/err"; then
    got=$("$tmp/v")
    want="$((MAJOR * 10000 + MINOR * 100 + PATCH)) $V $((MAJOR * 10000 + MINOR * 100 + PATCH)) $V"
    if [ "$got" = "$want" ]; then ok "run time: eevp_version_number/string = $got"
    else ko "run time / header macros: '$got', expected '$want'"; fi
else
    ko "could not build the run-time probe: $(cat "$tmp/err")"
fi

echo "check_version: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
