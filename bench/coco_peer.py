#!/usr/bin/env python3
"""The peers of `qkv coco-eval` in make bench (bench/coco_bench.py): one
whole evaluation as a user runs it, load, evaluate, accumulate, summarize.

Usage: coco_peer.py pycocotools|faster-coco-eval GT.json DT.json STATS.json
"""
import json
import sys

which, gt_path, dt_path, out = sys.argv[1:5]
if which == "pycocotools":
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO(gt_path)
    dt = gt.loadRes(dt_path)
    e = COCOeval(gt, dt, "bbox")
elif which == "faster-coco-eval":
    from faster_coco_eval import COCO, COCOeval_faster
    gt = COCO(gt_path)
    dt = gt.loadRes(dt_path)
    e = COCOeval_faster(gt, dt, "bbox", print_function=print)
else:
    sys.exit("coco_peer.py: unknown peer " + which)
e.evaluate()
e.accumulate()
e.summarize()
with open(out, "w") as f:
    json.dump({"stats": [float(x) for x in e.stats]}, f)
