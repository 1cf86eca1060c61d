#!/bin/sh
# Install the Debian 12 packages pathkernel needs, when any is missing.
#   sh scripts/deps.sh          what building and running it needs (scripts/demo.sh)
#   sh scripts/deps.sh --test   that and what the test suite needs (scripts/test.sh)
# Run as root (apt-get); does nothing when everything is present.
set -eu
# The build (CMakeLists.txt): compiler, CMake, OpenBLAS (OpenMP build, with
# LAPACK), zlib, cJSON, ISA-L, libpng; pkg-config, for programs that link
# the library (README.md, "Install").
BUILD_PKGS="gcc make cmake pkg-config libopenblas-openmp-dev zlib1g-dev libcjson-dev libisal-dev libpng-dev"
# The tests: pytest (and pytest-xdist: test files on every core) with numpy,
# PyTorch and pandas (the references; pandas'
# read_csv for the CSV reader), scikit-learn (its iris data), venv/pip/setuptools
# (the Python package's install), Fashion-MNIST, LIBSVM's tools, Chromium (the
# report), OpenMPI (the MPI module and mpirun).
TEST_PKGS="python3 python3-numpy python3-torch python3-pandas python3-sklearn python3-pytest python3-pytest-xdist python3-setuptools python3-venv python3-pip
           dataset-fashion-mnist libsvm-tools chromium openmpi-bin libopenmpi-dev"
case "${1-}" in
    "") PKGS=$BUILD_PKGS ;;
    --test) PKGS="$BUILD_PKGS $TEST_PKGS" ;;
    *) echo "usage: sh scripts/deps.sh [--test]" >&2; exit 2 ;;
esac
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    if [ "$(id -u)" != 0 ]; then
        echo "error: missing packages and not root: run as root, or apt-get install$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y -q --no-install-recommends $missing
fi
