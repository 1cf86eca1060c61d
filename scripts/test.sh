#!/bin/sh
# The README's second command: install what is missing, build, run every test.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh
cd build
ctest --output-on-failure --timeout 1800
