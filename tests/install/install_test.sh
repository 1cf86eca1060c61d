#!/bin/sh
# The installed pathkernel, used as a user would (CTest "install"): install
# the build into a fresh temporary prefix, then
#   - check the files are there (libraries with their SONAME, header,
#     pkg-config file, CMake package, CLI, MPI module, demo data);
#   - build examples/quickstart.c with `pkg-config --cflags --libs pathkernel`
#     and run it against the installed shared library (LD_LIBRARY_PATH);
#   - build it again against libpathkernel.a with `pkg-config --static`;
#   - build it from a small CMake project with find_package(pathkernel),
#     against pathkernel::pathkernel and pathkernel::pathkernel_static;
#   - run the installed `pathkernel demo --out D` from a directory outside the
#     source and build trees, which must find the installed data.
# usage: install_test.sh SOURCE_DIR BUILD_DIR LIBDIR [CMAKE]
# Exit status 77 (CTest: skipped) when pkg-config or a C compiler is missing.
set -eu
src=$1
build=$2
libdir=$3
cmake=${4:-cmake}
CC=${CC:-cc}
if ! command -v pkg-config >/dev/null 2>&1; then
    echo "skipped: pkg-config not found (apt-get install pkg-config)"
    exit 77
fi
if ! command -v "$CC" >/dev/null 2>&1; then
    echo "skipped: no C compiler ($CC)"
    exit 77
fi

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
step() {
    echo "== $*"
}
# `quickstart` output must end with the check line, and the program exit 0.
run_quickstart() {
    what=$1
    shift
    rc=0
    "$@" >"$tmp/out" 2>&1 || rc=$?
    [ "$rc" = 0 ] || { cat "$tmp/out"; fail "$what: exit status $rc"; }
    grep -q "^check: pred .* relative error" "$tmp/out" || { cat "$tmp/out"; fail "$what: no check line"; }
    grep "^check:" "$tmp/out"
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pk-install-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM
P=$tmp/prefix
L=$P/$libdir
data=$P/share/pathkernel/digits.csv.gz
unset PATHKERNEL_DATA PATHKERNEL_LIB LD_LIBRARY_PATH

step "cmake --install $build --prefix $P"
"$cmake" --install "$build" --prefix "$P" >"$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install"; }
for f in bin/pathkernel include/pathkernel.h "$libdir/libpathkernel.so" "$libdir/libpathkernel.so.0" \
         "$libdir/libpathkernel.a" "$libdir/pkgconfig/pathkernel.pc" \
         "$libdir/cmake/pathkernel/pathkernelConfig.cmake" "$libdir/cmake/pathkernel/pathkernelConfigVersion.cmake" \
         "$libdir/cmake/pathkernel/pathkernelTargets.cmake" share/pathkernel/digits.csv.gz; do
    [ -e "$P/$f" ] || fail "$P/$f was not installed"
done
if [ -e "$build/libpathkernel-mpi.so" ] && [ ! -e "$L/pathkernel/libpathkernel-mpi.so" ]; then
    fail "the MPI module was not installed into $L/pathkernel"
fi
cmp -s "$data" "$src/data/digits.csv.gz" || fail "$data differs from data/digits.csv.gz"
if command -v readelf >/dev/null 2>&1; then
    readelf -d "$L/libpathkernel.so" | grep -q 'SONAME.*\[libpathkernel\.so\.0\]' || fail "no SONAME libpathkernel.so.0"
    for f in "$L/libpathkernel.so" "$P/bin/pathkernel"; do
        ! readelf -d "$f" | grep -E 'R(UN)?PATH' | grep -q "$build" || fail "$f keeps the build tree in its RUNPATH"
    done
fi
! grep -q "$src/data" "$P/bin/pathkernel" || fail "the installed CLI has the source tree's data path compiled in"
grep pathkernel.pc "$tmp/install.log"

export PKG_CONFIG_PATH="$L/pkgconfig"
step "pkg-config: $(pkg-config --cflags --libs pathkernel)"
[ "$(pkg-config --modversion pathkernel)" = "$(sed -n 's/^#define PK_VERSION "\(.*\)"$/\1/p' "$src/include/pathkernel.h")" ] ||
    fail "pkg-config --modversion differs from PK_VERSION"
mkdir "$tmp/work"
cd "$tmp/work"
# shellcheck disable=SC2046  # word splitting of pkg-config's flags is meant
"$CC" -o quickstart "$src/examples/quickstart.c" $(pkg-config --cflags --libs pathkernel)
LD_LIBRARY_PATH=$L ldd ./quickstart | grep -q "libpathkernel.so.0 => $L/" || fail "quickstart does not load $L/libpathkernel.so.0"
run_quickstart "quickstart (shared)" env LD_LIBRARY_PATH="$L" ./quickstart "$data" run-shared

step "pkg-config --static: $(pkg-config --static --libs pathkernel)"
# -l:libpathkernel.a: the archive even where the .so lies beside it
libs=""
for w in $(pkg-config --static --libs pathkernel); do
    [ "$w" = -lpathkernel ] && w=-l:libpathkernel.a
    libs="$libs $w"
done
# shellcheck disable=SC2046,SC2086
"$CC" -o quickstart-static "$src/examples/quickstart.c" $(pkg-config --cflags pathkernel) $libs
if command -v readelf >/dev/null 2>&1; then
    ! readelf -d quickstart-static | grep -q libpathkernel || fail "quickstart-static needs libpathkernel.so"
fi
run_quickstart "quickstart (static)" ./quickstart-static "$data" run-static

step "find_package(pathkernel) in a CMake project"
"$cmake" -S "$src/tests/install/consumer" -B consumer -DCMAKE_PREFIX_PATH="$P" \
    -DQUICKSTART="$src/examples/quickstart.c" >"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "configure"; }
grep -q "pathkernel_DIR=$L/cmake/pathkernel" "$tmp/consumer.log" || { cat "$tmp/consumer.log"; fail "found another pathkernel"; }
"$cmake" --build consumer >"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "build"; }
ldd consumer/quickstart | grep -q "libpathkernel.so.0 => $L/" || fail "consumer/quickstart does not load $L/libpathkernel.so.0"
run_quickstart "consumer/quickstart (pathkernel::pathkernel)" consumer/quickstart "$data" run-cmake
run_quickstart "consumer/quickstart_static (pathkernel::pathkernel_static)" consumer/quickstart_static "$data" run-cmake-static

step "$P/bin/pathkernel demo, from $tmp/elsewhere"
mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
"$P/bin/pathkernel" demo --out D >"$tmp/demo.log" 2>&1 || { cat "$tmp/demo.log"; fail "pathkernel demo"; }
grep -q "^== train: .* on $data " "$tmp/demo.log" || { cat "$tmp/demo.log"; fail "the demo did not read $data"; }
[ -s D/report.html ] || fail "no D/report.html"
tail -n 1 "$tmp/demo.log"
echo "install test passed"
