#!/usr/bin/env bash
# make demo: the seed's experiments, short. Pictures and metrics go to runs/demo/.
set -euo pipefail
BUILD=${1:-build}
QKV="$BUILD/qkv"
OUT=runs/demo
mkdir -p "$OUT"
export QKV_THREADS=${QKV_THREADS:-2}

has() { "$QKV" --help 2>/dev/null | grep -q "^  $1 "; }

echo "== 1. attention pooling: Nadaraya-Watson kernel regression (d2l r0.17)"
"$QKV" kernel-regression --out-dir "$OUT/kernel-regression"

if has train && "$QKV" train --help 2>/dev/null | grep -q transformer; then
    echo
    echo "== 2. Transformer: English-French translation (short run)"
    "$QKV" train transformer --epochs 30 --out-dir "$OUT/transformer"
    "$QKV" translate --model "$OUT/transformer/model.safetensors" "he's calm ." \
        --attention "$OUT/transformer/attention.png"
fi

if has train && "$QKV" train --help 2>/dev/null | grep -q vit; then
    echo
    echo "== 3. ViT on Fashion-MNIST (short run)"
    "$QKV" train vit --epochs 1 --limit 6000 --out-dir "$OUT/vit"
fi

echo
echo "pictures and metrics are in $OUT/"
