#!/usr/bin/env bash
# bench-setup.sh - the PyPI peer of `make bench`: a virtual environment .venv
# with the newest torch and numpy from PyPI. Does nothing if .venv already
# imports torch; waits if another bench-setup is installing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>"${TMPDIR:-/tmp}/qkv-bench-setup.lock"
flock 9
if .venv/bin/python -c 'import torch, numpy' 2>/dev/null; then
    echo ".venv has torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
    exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch numpy
echo ".venv has torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
