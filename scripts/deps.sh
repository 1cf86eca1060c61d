#!/bin/sh
# Install the Debian 12 packages pathkernel needs, when any is missing.
# Run as root (apt-get); does nothing when everything is present.
set -eu
PKGS="gcc make cmake libopenblas-openmp-dev zlib1g-dev libcjson-dev libisal-dev
      python3 python3-numpy python3-torch python3-pytest python3-setuptools python3-venv python3-pip dataset-fashion-mnist libsvm-tools
      libpng-dev chromium openmpi-bin libopenmpi-dev"
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
    apt-get install -y -q --no-install-recommends $missing
fi
