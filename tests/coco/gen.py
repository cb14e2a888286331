#!/usr/bin/env python3
"""Random COCO evaluation cases scored by pycocotools, for the parity test
of qkv's evaluator (tests/test_coco.c).

Usage: gen.py OUTDIR [--cases N] [--seed S]

Writes, for each case i, OUTDIR/case_<i>.gt.json and .dt.json (the files),
.want.json (pycocotools' 12 stats, the 12 lines summarize() printed, the
category ids and the AP of each category as detectron2 computes it from the
precision array) and .want.f64 (pycocotools' precision (T, R, K, A, M) then
recall (T, K, A, M), float64 little-endian, C order). Runs on the PyPI
pycocotools in the project's .venv (scripts/install-deps.sh installs it).
Different seeds give cases the tests never saw (tests/coco/check_cli.py).
"""
import argparse
import contextlib
import io
import json
import os
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import coco_random  # noqa: E402


def case_params(rng, i):
    """Sizes vary from case to case; a few cases take a special shape."""
    p = dict(n_images=int(rng.integers(1, 30)), n_cats=int(rng.integers(1, 6)),
             gt_per_image=float(rng.uniform(0.5, 6)), dt_per_image=int(rng.integers(1, 40)),
             crowd_p=float(rng.choice([0.0, 0.05, 0.2])),
             heavy_images=int(rng.integers(1, 3)) if i % 4 == 0 else 0,
             empty_cats=int(rng.integers(0, 3)))
    if i % 13 == 5:   # no ground truth at all: every number is -1
        p["gt_per_image"] = 0.0
    return p


def evaluate(gt_path, dt_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gt = COCO(gt_path)
        dt = gt.loadRes(dt_path)
        e = COCOeval(gt, dt, "bbox")
        e.evaluate()
        e.accumulate()
    lines = io.StringIO()
    with contextlib.redirect_stdout(lines):
        e.summarize()
    return e, lines.getvalue().splitlines()


def make(seed, i):
    """Case i of a seed: (gt, dt) ready to write."""
    rng = np.random.default_rng([seed, i])
    p = case_params(rng, i)
    gt, dt = coco_random.make_case(rng, **p)
    if i % 7 == 3 and gt["annotations"]:
        # pycocotools stores the matched ground truth's id as "matched": a
        # detection matched to annotation id 0 counts as a false positive
        gt["annotations"][int(rng.integers(0, len(gt["annotations"])))]["id"] = 0
    if not dt:  # loadRes cannot take an empty list
        img = gt["images"][0]["id"]
        dt = [{"image_id": img, "category_id": gt["categories"][0]["id"],
               "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]
    return gt, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=20261203)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for i in range(a.cases):
        gt, dt = make(a.seed, i)
        base = os.path.join(a.out, "case_%03d" % i)
        with open(base + ".gt.json", "w") as f:
            json.dump(gt, f)
        with open(base + ".dt.json", "w") as f:
            json.dump(dt, f)
        e, lines = evaluate(base + ".gt.json", base + ".dt.json")
        prec, rec = e.eval["precision"], e.eval["recall"]
        cat_ap = []
        for k in range(prec.shape[2]):
            s = prec[:, :, k, 0, -1]
            s = s[s > -1]
            cat_ap.append(float(np.mean(s)) if s.size else -1.0)
        want = {"stats": [float(x) for x in e.stats], "lines": lines,
                "category_ids": [int(c) for c in e.params.catIds], "category_ap": cat_ap,
                "shape": list(prec.shape)}
        with open(base + ".want.json", "w") as f:
            json.dump(want, f)
        with open(base + ".want.f64", "wb") as f:
            f.write(np.ascontiguousarray(prec, dtype="<f8").tobytes())
            f.write(np.ascontiguousarray(rec, dtype="<f8").tobytes())
    print("coco: %d cases in %s" % (a.cases, a.out))


if __name__ == "__main__":
    main()
