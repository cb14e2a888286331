#!/usr/bin/env bash
# Installs the Debian packages qkv needs to build and test, when missing; and
# in .venv from PyPI: pycocotools (the COCO evaluation tests' reference),
# torch, transformers and timm (Hugging Face's DETR, the reference of
# tests/test_detr.c).
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

# Hugging Face's DetrForObjectDetection with a timm backbone (tests/hf/gen.py);
# found, not imported (importing transformers takes seconds)
have_hf() {
    .venv/bin/python -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("torch", "transformers", "timm", "safetensors")))' \
        2>/dev/null
}
if ! have_hf; then
    exec 9>"${TMPDIR:-/tmp}/qkv-bench-setup.lock"
    flock 9
    if ! have_hf; then
        echo "installing torch, transformers and timm into .venv"
        [ -x .venv/bin/python ] || python3 -m venv .venv
        .venv/bin/python -c 'import torch' 2>/dev/null ||
            .venv/bin/python -m pip install --quiet torch
        .venv/bin/python -m pip install --quiet transformers timm safetensors
    fi
fi
