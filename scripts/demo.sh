#!/bin/sh
# The README's first command: install what is missing (the packages the
# build needs, nothing the tests need: scripts/deps.sh), build, and run the
# main job on the embedded data set (UCI/sklearn 8x8 digits, data/digits.csv.gz):
# `pathkernel demo` trains a tanh MLP with sgd, checks that the network is
# exactly a kernel machine over its 1,797 training examples (error of each
# quadrature rule), prints one prediction's strongest proponents and
# opponents, and writes demo-run/report.html (open it in a browser).
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh >/dev/null
./build/pathkernel demo --out demo-run
