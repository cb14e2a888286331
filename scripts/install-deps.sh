#!/usr/bin/env bash
# Installs the Debian packages qkv needs to build and test, when missing; and
# PyPI's pycocotools in .venv (the COCO evaluation tests' reference).
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(build-essential pkg-config libopenblas-dev libcjson-dev zlib1g-dev libpng-dev
      libjpeg-dev python3-torch python3-torchvision python3-numpy python3-scipy
      dataset-fashion-mnist clang libclang-rt-14-dev python3-venv
      libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# pycocotools from PyPI (Debian has none) into .venv, quick when it is there;
# the lock keeps two installs (scripts/bench-setup.sh too) from racing.
if ! .venv/bin/python -c 'import pycocotools, numpy' 2>/dev/null; then
    exec 9>"${TMPDIR:-/tmp}/qkv-bench-setup.lock"
    flock 9
    if ! .venv/bin/python -c 'import pycocotools, numpy' 2>/dev/null; then
        echo "installing pycocotools into .venv"
        [ -x .venv/bin/python ] || python3 -m venv .venv
        .venv/bin/python -m pip install --quiet pycocotools numpy
    fi
fi
