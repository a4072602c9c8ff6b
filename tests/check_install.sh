#!/bin/sh
# SPDX-License-Identifier: MIT
# check_install.sh - the installed tree as a user meets it, through CMake and
# pkg-config (run by `make check-cmake`, after a staged install):
#   1. examples/cmake configured with CMAKE_PREFIX_PATH in the staged tree,
#      built, hello run on eevp::eevp (from the staged libdir) and on
#      eevp::eevp_static (no libeevp.so at run time);
#   2. find_package version requests against eevpConfigVersion.cmake: the
#      same major version at or below this one is found, others are not;
#   3. the staged tree moved elsewhere: `pkg-config --define-prefix` gives
#      the moved paths (hello builds and runs with them), and the CMake
#      package follows the move too.
#
# Usage: tests/check_install.sh WORK PREFIX LIBDIR INCLUDEDIR VERSION
#   with `make install DESTDIR=WORK/stage` done (the Makefile's paths);
#   CMAKE, CC and PKG_CONFIG override cmake, cc and pkg-config.
set -u
cd "$(dirname "$0")/.." || exit 2
[ $# -eq 5 ] || { echo "usage: $0 WORK PREFIX LIBDIR INCLUDEDIR VERSION"; exit 2; }
work=$1 prefix=$2 libdir=$3 includedir=$4 version=$5
CMAKE=${CMAKE:-cmake}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
LC_ALL=C
export LC_ALL CC
unset PKG_CONFIG_SYSROOT_DIR eevp_DIR eevp_ROOT

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "PASS: $1"; }
ko() { fail=$((fail + 1)); echo "FAIL: $1"; }
finish() { echo "check_install: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }

if ! command -v "$CMAKE" >/dev/null 2>&1; then
    ko "no $CMAKE (Debian's cmake package: make deps-check installs it)"
    finish
fi
major=${version%%.*}
minor=${version#*.}
minor=${minor%%.*}
stage=$work/stage
cfgdir=$stage$libdir/cmake/eevp
if [ -f "$cfgdir/eevpConfig.cmake" ] && [ -f "$cfgdir/eevpConfigVersion.cmake" ]; then
    ok "installed $libdir/cmake/eevp/eevpConfig.cmake and eevpConfigVersion.cmake"
else
    ko "no CMake package in $cfgdir"
    finish
fi
if grep -q "^set(PACKAGE_VERSION \"$version\")" "$cfgdir/eevpConfigVersion.cmake"; then
    ok "eevpConfigVersion.cmake says $version"
else
    ko "eevpConfigVersion.cmake does not say $version"
fi

# cache_value BUILD_DIR NAME: a variable of a configured CMake build
cache_value() { sed -n "s/^$2:[A-Z]*=//p" "$1/CMakeCache.txt"; }

# hello_cmake NAME PREFIX_PATH LIBDIR: configure, build and run examples/cmake
hello_cmake() {
    b=$work/$1
    if ! "$CMAKE" -S examples/cmake -B "$b" -DCMAKE_PREFIX_PATH="$2" \
        -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >"$b.log" 2>&1 ||
        ! "$CMAKE" --build "$b" >>"$b.log" 2>&1; then
        ko "$1: examples/cmake does not configure and build against $2:"
        sed 's/^/    /' "$b.log"
        return
    fi
    d=$(cache_value "$b" eevp_DIR)
    if [ "$d" = "$3/cmake/eevp" ]; then ok "$1: find_package(eevp) took $d"
    else ko "$1: find_package(eevp) took '$d', expected $3/cmake/eevp"; fi
    out=$(LD_LIBRARY_PATH=$3 "$b/hello" 2>&1)
    case $out in
    "libeevp $version: "*) ok "$1: hello on eevp::eevp: $out" ;;
    *) ko "$1: hello on eevp::eevp printed '$out'" ;;
    esac
    so=$(LD_LIBRARY_PATH=$3 ldd "$b/hello" | sed -n "s/^[[:space:]]*libeevp\.so\.$major => \([^ ]*\) .*/\1/p")
    if [ "$so" = "$3/libeevp.so.$major" ]; then ok "$1: hello loads $so"
    else ko "$1: hello loads '$so', expected $3/libeevp.so.$major"; fi
    out=$("$b/hello_static" 2>&1)
    case $out in
    "libeevp $version: "*) ok "$1: hello_static on eevp::eevp_static: $out" ;;
    *) ko "$1: hello_static printed '$out'" ;;
    esac
    if ldd "$b/hello_static" | grep -q libeevp; then ko "$1: hello_static needs libeevp.so"
    else ok "$1: hello_static needs no libeevp.so"; fi
}

rel_lib=${libdir#"$prefix"/}
rel_inc=${includedir#"$prefix"/}
if [ "$rel_lib" = "$libdir" ] || [ "$rel_inc" = "$includedir" ]; then
    # The config holds such a directory as an absolute path, which a staged
    # tree does not have.
    for v in libdir:"$libdir":"$rel_lib" includedir:"$includedir":"$rel_inc"; do
        name=${v%%:*} v=${v#*:} dir=${v%%:*} rel=${v#*:}
        [ "$rel" = "$dir" ] || continue
        if grep -q "^set(_eevp_$name \"$dir\")" "$cfgdir/eevpConfig.cmake"; then
            ok "$name $dir outside the prefix: eevpConfig.cmake holds it as it is"
        else
            ko "$name $dir outside the prefix, but eevpConfig.cmake does not hold it"
        fi
    done
    echo "SKIP: an install with a directory outside its prefix works only where it was installed"
    finish
fi

# 1. In place, in the staged tree.
hello_cmake hello "$stage$prefix" "$stage$libdir"

# 2. Version requests.  A project without languages that searches the staged
# package's directory only.
mkdir -p "$work/probe"
cat >"$work/probe/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.19)
project(probe NONE)
find_package(eevp ${REQ} REQUIRED CONFIG PATHS "${STAGE}" NO_DEFAULT_PATH)
message(STATUS "probe: eevp ${eevp_VERSION} in ${eevp_DIR}")
EOF
n=0
probe() { # REQUEST (a CMake list) EXPECTED (found|refused)
    n=$((n + 1))
    if "$CMAKE" -S "$work/probe" -B "$work/probe-$n" -DREQ="$1" -DSTAGE="$cfgdir" \
        >"$work/probe-$n.log" 2>&1; then
        got=found
    else
        got=refused
    fi
    if [ "$got" = "$2" ]; then ok "find_package(eevp $(echo "$1" | tr ';' ' ')): $got"
    else ko "find_package(eevp $(echo "$1" | tr ';' ' ')): $got, expected $2"
        sed 's/^/    /' "$work/probe-$n.log"; fi
}
probe "" found
probe "$major.0" found
probe "$version;EXACT" found
probe "$major.0...<$((major + 1))" found
probe "$((major + 1)).0" refused
probe "$((major - 1)).9" refused
probe "$major.$((minor + 1))" refused
probe "$major.0;EXACT" refused
probe "$major.0;COMPONENTS;shared;nonesuch" refused

# 3. Moved: the staged prefix renamed to WORK/moved.
moved=$work/moved
rm -rf "$moved"
mv "$stage$prefix" "$moved" || { ko "could not move $stage$prefix"; finish; }
export PKG_CONFIG_PATH="$moved/$rel_lib/pkgconfig"
if [ "$rel_lib" = lib ]; then
    # --define-prefix takes the prefix as the directory above lib/pkgconfig
    how="--define-prefix"
else
    # deeper libdirs: pkg-config cannot guess the prefix, name it
    how="--define-variable=prefix=$moved"
fi
# (--cflags also lists OpenBLAS's include directory, from Requires.private)
cflags=$(echo $("$PKG_CONFIG" $how --cflags eevp))
libs=$(echo $("$PKG_CONFIG" $how --libs eevp))
if [ "${cflags%% *}" = "-I$moved/$rel_inc" ] && [ "$libs" = "-L$moved/$rel_lib -leevp" ]; then
    ok "moved: pkg-config $how --cflags --libs eevp: $cflags $libs"
else
    ko "moved: pkg-config $how gives '$cflags' '$libs', expected -I$moved/$rel_inc ... -L$moved/$rel_lib -leevp"
fi
if "$CC" -std=c99 -Wall -Wextra -Werror -o "$work/hello-pc" examples/hello.c $cflags $libs \
    2>"$work/hello-pc.log"; then
    out=$(LD_LIBRARY_PATH=$moved/$rel_lib "$work/hello-pc" 2>&1)
    case $out in
    "libeevp $version: "*) ok "moved: hello built with pkg-config $how: $out" ;;
    *) ko "moved: hello built with pkg-config printed '$out'" ;;
    esac
else
    ko "moved: hello does not build with pkg-config $how: $(cat "$work/hello-pc.log")"
fi
hello_cmake hello-moved "$moved" "$moved/$rel_lib"
finish
