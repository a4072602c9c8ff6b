#!/bin/sh
# SPDX-License-Identifier: MIT
# check_symbols.sh - the library exports exactly the public API.
#
#  (a) the EEVP_API functions declared in include/eevp.h == tests/symbols.txt
#  (b) the defined dynamic symbols of lib/libeevp.so == tests/symbols.txt,
#      all functions, nothing else exported (the version node aside)
#  (c) every global symbol defined in lib/libeevp.a is eevp_* or eevpi_*
#      (the private prefix), and every public function is there
#
# Usage: tests/check_symbols.sh   (from anywhere; EEVP_SO, EEVP_AR, NM override)
set -u
cd "$(dirname "$0")/.." || exit 2

HEADER=include/eevp.h
LIST=tests/symbols.txt
SO=${EEVP_SO:-lib/libeevp.so}
AR=${EEVP_AR:-lib/libeevp.a}
NM=${NM:-nm}

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "PASS: $1"; }
ko() { fail=$((fail + 1)); echo "FAIL: $1"; }

tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM

LC_ALL=C
export LC_ALL

# The list itself: sorted, unique, eevp_ names only.
if [ ! -s "$LIST" ]; then
    ko "$LIST missing or empty"
else
    sort -u "$LIST" > "$tmp/list"
    if cmp -s "$LIST" "$tmp/list"; then ok "$LIST is sorted and unique"
    else ko "$LIST is not sorted/unique"; fi
    if grep -v '^eevp_[a-z0-9_]*$' "$LIST" > "$tmp/badnames"; then
        ko "$LIST has names outside eevp_*:"; sed 's/^/    /' "$tmp/badnames"
    else ok "$LIST names are all eevp_*"; fi
fi

# (a) header declarations (comments and preprocessor lines stripped, so a
# declaration split over lines is still found).
if [ ! -f "$HEADER" ]; then
    ko "$HEADER missing"
else
    perl -0777 -ne '
        s{/\*.*?\*/}{ }gs;
        s{//[^\n]*}{}g;
        s{^[ \t]*#[^\n]*(?:\\\n[^\n]*)*}{}mg;
        while (/\bEEVP_API\b[^;{}()]*?\b([A-Za-z_]\w*)\s*\(/g) { print "$1\n"; }
    ' "$HEADER" | sort > "$tmp/header"
    if [ ! -s "$tmp/header" ]; then
        ko "no EEVP_API declarations found in $HEADER"
    elif diff -u "$tmp/list" "$tmp/header" > "$tmp/d"; then
        ok "(a) $HEADER declares exactly $LIST ($(wc -l < "$tmp/header") functions)"
    else
        ko "(a) $HEADER vs $LIST (- list, + header):"; sed 's/^/    /' "$tmp/d"
    fi
fi

# (b) the shared object.
if [ ! -f "$SO" ]; then
    ko "(b) $SO not found (build it first)"
else
    # "addr TYPE name[@@VERSION]"; A marks the version node(s).
    "$NM" -D --defined-only "$SO" > "$tmp/so.raw" 2>&1 || { ko "(b) $NM -D failed"; cat "$tmp/so.raw"; }
    awk 'NF >= 3 && $2 != "A" { n = $3; sub(/@.*/, "", n); print $2, n }' "$tmp/so.raw" \
        | sort -k2 > "$tmp/so.typed"
    awk '{ print $2 }' "$tmp/so.typed" | sort -u > "$tmp/so"
    if diff -u "$tmp/list" "$tmp/so" > "$tmp/d"; then
        ok "(b) $SO exports exactly $LIST"
    else
        ko "(b) $SO exports differ from $LIST (- list, + exported):"; sed 's/^/    /' "$tmp/d"
    fi
    if awk '$1 != "T" { bad = 1; print "    " $0 } END { exit bad ? 1 : 0 }' \
        "$tmp/so.typed" > "$tmp/nontext"; then
        ok "(b) every exported symbol of $SO is a function"
    else
        ko "(b) $SO exports non-function symbols:"; cat "$tmp/nontext"
    fi
fi

# (c) the static archive.
if [ ! -f "$AR" ]; then
    ko "(c) $AR not found (build it first)"
else
    "$NM" -g --defined-only "$AR" > "$tmp/ar.raw" 2>&1 || { ko "(c) $NM failed"; cat "$tmp/ar.raw"; }
    awk 'NF >= 3 { print $3 }' "$tmp/ar.raw" | sort -u > "$tmp/ar"
    if grep -v -E '^eevpi?_' "$tmp/ar" > "$tmp/foreign"; then
        ko "(c) $AR defines global symbols outside eevp_*/eevpi_*:"; sed 's/^/    /' "$tmp/foreign"
    else
        ok "(c) $AR defines only eevp_*/eevpi_* globals ($(wc -l < "$tmp/ar") symbols)"
    fi
    grep -E '^eevp_' "$tmp/ar" | sort -u > "$tmp/ar.pub"
    if diff -u "$tmp/list" "$tmp/ar.pub" > "$tmp/d"; then
        ok "(c) $AR's eevp_* globals are exactly $LIST"
    else
        ko "(c) $AR's eevp_* globals differ from $LIST (- list, + archive):"
        sed 's/^/    /' "$tmp/d"
    fi
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
