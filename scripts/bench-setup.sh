#!/usr/bin/env bash
# bench-setup.sh - the PyPI peers of `make bench`: a virtual environment .venv
# with the newest torch and numpy from PyPI (eager and torch.compile, whose
# Inductor compiles C++ with the system's g++), torchvision (with pillow)
# for the ViT benchmarks, and onnxruntime with onnx and onnxscript (what
# torch.onnx.export needs) for the ONNX Runtime peer, pycocotools and
# faster-coco-eval for the COCO one, scipy for the DETR one (its Hungarian
# matching: scipy.optimize.linear_sum_assignment). Does nothing if .venv already imports
# all of them; waits if another bench-setup is installing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>"${TMPDIR:-/tmp}/qkv-bench-setup.lock"
flock 9
mods=torch,numpy,torchvision,onnxruntime,onnx,onnxscript,pycocotools,faster_coco_eval,scipy
if .venv/bin/python -c "import $mods" 2>/dev/null; then
    echo ".venv has torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
    exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c 'import torch, numpy' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet torch numpy
fi
# torchvision with the torch already there: a constraint keeps pip from
# replacing torch by the version torchvision was built against
pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
.venv/bin/python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' >"$pin"
.venv/bin/python -m pip install --quiet --constraint "$pin" torchvision pillow ||
    echo "bench-setup: no torchvision for this torch: the PyPI peer's ViT rows read n/a" >&2
# ONNX Runtime, and what torch.onnx's exporter needs, with torch held too
.venv/bin/python -m pip install --quiet --constraint "$pin" onnxruntime onnx onnxscript ||
    echo "bench-setup: no onnxruntime: the ONNX Runtime rows read n/a" >&2
.venv/bin/python -c 'import pycocotools, faster_coco_eval' 2>/dev/null ||
    .venv/bin/python -m pip install --quiet pycocotools faster-coco-eval ||
    echo "bench-setup: no pycocotools or faster-coco-eval: the COCO rows read n/a" >&2
.venv/bin/python -c 'import scipy' 2>/dev/null || .venv/bin/python -m pip install --quiet scipy ||
    echo "bench-setup: no scipy: the DETR rows' PyTorch side fails" >&2
echo ".venv has torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
