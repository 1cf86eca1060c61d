#!/bin/sh
# The README's second command: install what is missing, build, and run every
# test twice: in the release build (build/) and in a build with
# AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/).
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh --test
sh scripts/build.sh
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPK_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
echo "== release build"
(cd build && ctest --output-on-failure --timeout 1800)
echo "== sanitizer build (ASan + UBSan)"
(cd build-asan && ctest --output-on-failure --timeout 1800)
