#!/usr/bin/env bash
# make demo: the seed's experiments, short. Pictures, metrics and models go to
# runs/demo/. Each step prints what it measured.
set -euo pipefail
BUILD=${1:-build}
QKV="$BUILD/qkv"
OUT=runs/demo
mkdir -p "$OUT"
export QKV_THREADS=${QKV_THREADS:-2}

echo "== 1. Attention pooling: Nadaraya-Watson kernel regression (d2l r0.17)"
"$QKV" kernel-regression --out-dir "$OUT/kernel-regression"

echo
echo "== 2. Transformer: English-French translation (d2l r0.17 setup, 600 pairs)"
"$QKV" train transformer --out-dir "$OUT/transformer"
"$QKV" translate --model "$OUT/transformer/model.safetensors" --attention "$OUT/transformer/attention.png" \
    "he's calm ."

echo
echo "== 3. ViT on Fashion-MNIST (--preset demo: 3 epochs on 12000 images, about a minute)"
"$QKV" train vit --preset demo --out-dir "$OUT/vit"
"$QKV" classify --model "$OUT/vit" --attention "$OUT/vit/rollout.png" \
    tests/data/fashion-0-ankle-boot.png tests/data/fashion-1-pullover.png

echo
echo "== 4. DETR on the scenes (--preset demo: the backbone pretrained on 10000 Fashion-MNIST"
echo "   images, then 3 epochs on 1000 scenes; data/scenes is made first if absent). After"
echo "   186 steps DETR is still on its first plateau (scores near the class prior, about"
echo "   0.1), so the pictures keep detections above 0.12: the pipeline, not a detector"
"$QKV" train detr --preset demo --out-dir "$OUT/detr"
"$QKV" detect --model "$OUT/detr" --threshold 0.12 --out "$OUT/detr/boxes.png" \
    --attention "$OUT/detr/attention.png" data/scenes/val/000001.png

echo
echo "pictures, metrics and models are in $OUT/"
