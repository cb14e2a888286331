#!/usr/bin/env bash
# Installs the Debian packages qkv needs to build and test, when missing.
set -euo pipefail
pkgs=(build-essential pkg-config libopenblas-dev libcjson-dev zlib1g-dev libpng-dev
      libjpeg-dev python3-torch python3-torchvision python3-numpy python3-scipy
      dataset-fashion-mnist clang libclang-rt-14-dev)
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
