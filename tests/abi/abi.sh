#!/bin/sh
# SPDX-License-Identifier: MIT
# abi.sh - the ABI gate (docs/ABI.md), with Debian's abi-dumper and
# abi-compliance-checker.
#
#   tests/abi/abi.sh dump HEADER_DIR OUT.dump  build the library with the
#                                              public header from HEADER_DIR
#                                              and dump its ABI
#   tests/abi/abi.sh check      the built library against the committed
#                               baseline of the first release of this major
#                               version, tests/abi/libeevp-MAJOR.0.0.dump:
#                               fails on any binary or source problem
#   tests/abi/abi.sh selftest   the gate itself: a field inserted in the
#                               middle of a public struct must fail it; a
#                               field appended to a struct that carries
#                               struct_size (what a minor release may do)
#                               must pass it
#   tests/abi/abi.sh baseline   regenerate the committed baseline (only when
#                               a release is cut: docs/ABI.md)
#
# The library is built for the dump with -g -gdwarf-4 -Og (abi-dumper reads
# DWARF 4; gcc 12 writes DWARF 5 by default), from the same sources and
# version script as the real one.  Environment: CC (gcc), BLAS_CFLAGS,
# BLAS_LIBS (from the Makefile), ABI_BUILD (build/abi).
set -eu
cd "$(dirname "$0")/../.." || exit 2

CC=${CC:-gcc}
BLAS_CFLAGS=${BLAS_CFLAGS-$(pkg-config --cflags openblas 2>/dev/null || true)}
BLAS_LIBS=${BLAS_LIBS-$(pkg-config --libs openblas 2>/dev/null || echo -lopenblas)}
OUT=${ABI_BUILD:-build/abi}

ver() { sed -n "s/^#define EEVP_VERSION_$1 \([0-9]*\).*/\1/p" include/eevp.h; }
MAJOR=$(ver MAJOR)
MINOR=$(ver MINOR)
PATCH=$(ver PATCH)
VERSION=$MAJOR.$MINOR.$PATCH
BASELINE=tests/abi/libeevp-$MAJOR.0.0.dump

for tool in abi-dumper abi-compliance-checker; do
    command -v $tool >/dev/null || { echo "abi.sh: $tool missing (make deps)"; exit 2; }
done

# dump HEADER_DIR OUT.dump [VERSION]
dump() {
    hdir=$1
    out=$2
    v=${3:-$VERSION}
    work=$(mktemp -d)
    # shellcheck disable=SC2086
    $CC -std=c99 -D_POSIX_C_SOURCE=200809L -shared -fPIC -fvisibility=hidden \
        -g -gdwarf-4 -Og -I"$hdir" -Isrc $BLAS_CFLAGS \
        -Wl,-soname,libeevp.so.$MAJOR -Wl,--version-script=src/libeevp.vers \
        -o "$work/libeevp.so.$v" src/*.c $BLAS_LIBS -lm
    dlog="$OUT/$(basename "$out").log"
    if ! abi-dumper "$work/libeevp.so.$v" -o "$out" -lver "$v" -public-headers "$hdir" \
        > "$dlog" 2>&1; then
        cat "$dlog"
        rm -rf "$work"
        return 1
    fi
    rm -rf "$work"
}

# compare OLD NEW NAME: 0 when compatible, 1 with the report's summary.
compare() {
    rep="$OUT/$3.html"
    log="$OUT/$3.log"
    set +e
    abi-compliance-checker -l eevp -old "$1" -new "$2" -report-path "$rep" \
        -logging-mode n > "$log" 2>&1
    rc=$?
    set -e
    # The tool's own exit code stays 0 for some binary problems: count them.
    bin=$(sed -n 's/^Total binary compatibility problems: \([0-9]*\).*/\1/p' "$log")
    src=$(sed -n 's/^Total source compatibility problems: \([0-9]*\).*/\1/p' "$log")
    if [ "$rc" -ne 0 ] || [ -z "$bin" ] || [ -z "$src" ] || [ "$bin" -ne 0 ] || [ "$src" -ne 0 ]; then
        sed 's/^/    /' "$log"
        echo "    report: $rep"
        return 1
    fi
    grep -E '^(Binary|Source) compatibility' "$log" | sed 's/^/    /'
    return 0
}

mkdir -p "$OUT"
case "${1:-}" in
dump)
    [ $# -eq 3 ] || { echo "usage: $0 dump HEADER_DIR OUT.dump"; exit 2; }
    dump "$2" "$3"
    ;;
check)
    [ -f "$BASELINE" ] || { echo "abi.sh: no baseline $BASELINE"; exit 1; }
    dump include "$OUT/current.dump"
    if compare "$BASELINE" "$OUT/current.dump" check; then
        echo "PASS: libeevp $VERSION is ABI/API compatible with $BASELINE"
    else
        echo "FAIL: libeevp $VERSION breaks the ABI/API of $BASELINE (docs/ABI.md)"
        exit 1
    fi
    ;;
selftest)
    dump include "$OUT/self-base.dump"
    # 1. A field inserted in the middle of eevp_result: must fail.
    mkdir -p "$OUT/inserted" "$OUT/appended"
    perl -0pe 's/(    int32_t reason; [^\n]*\n)/$1    int32_t inserted_by_abi_selftest;\n/ or die "no eevp_result.reason\n"' \
        include/eevp.h > "$OUT/inserted/eevp.h"
    dump "$OUT/inserted" "$OUT/self-inserted.dump"
    if compare "$OUT/self-base.dump" "$OUT/self-inserted.dump" self-inserted > /dev/null; then
        echo "FAIL: the gate accepted a field inserted in the middle of eevp_result"
        exit 1
    fi
    echo "PASS: the gate rejects a field inserted in the middle of eevp_result"
    # 2. A field appended to eevp_stats (which the caller sizes with
    # struct_size): must pass.
    perl -0pe 's/(typedef struct eevp_stats \{.*?)(\n\} eevp_stats;)/$1\n    int64_t appended_by_abi_selftest;$2/s or die "no eevp_stats\n"' \
        include/eevp.h > "$OUT/appended/eevp.h"
    dump "$OUT/appended" "$OUT/self-appended.dump"
    if ! compare "$OUT/self-base.dump" "$OUT/self-appended.dump" self-appended; then
        echo "FAIL: the gate rejected a field appended to eevp_stats"
        exit 1
    fi
    echo "PASS: the gate accepts a field appended to eevp_stats"
    ;;
baseline)
    dump include "$BASELINE"
    echo "wrote $BASELINE (libeevp $VERSION); commit it with the release"
    ;;
*)
    echo "usage: $0 dump HEADER_DIR OUT.dump | check | selftest | baseline"
    exit 2
    ;;
esac
