#!/usr/bin/env python3
"""`qkv coco-eval` against pycocotools and faster-coco-eval (PyPI) on one
large random set, the whole command each (load, evaluate, print), as part
of make bench (bench/run.sh). Run with the project's .venv.

Usage: coco_bench.py [--build build] [--images 5000] [--dets 100]
                     [--rounds 3] [--threads 2]

The set (tests/coco/coco_random.make_large: COCO's 80 category ids, ~7
ground truths and 100 detections per image, float32 coordinates and scores
as detectors write them) is made once into BUILD/coco-bench/. Each round runs
qkv, pycocotools and faster-coco-eval one after the other, so that all three
see the same load; the table gives each one's median wall time, and how far
each one's 12 numbers are from pycocotools'. The report is printed and
written to BUILD/coco-bench.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "coco"))


def make_set(out, images, dets):
    gt_path, dt_path = os.path.join(out, "gt.json"), os.path.join(out, "dt.json")
    stamp = os.path.join(out, "params.json")
    params = {"images": images, "dets": dets, "seed": 0, "version": 1}
    try:
        with open(stamp) as f:
            if json.load(f) == params and os.path.exists(gt_path) and os.path.exists(dt_path):
                return gt_path, dt_path
    except (OSError, ValueError):
        pass
    import coco_random
    print("coco bench: making %d images x %d detections ..." % (images, dets), file=sys.stderr)
    gt, dt = coco_random.make_large(0, images, dets)
    os.makedirs(out, exist_ok=True)
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    with open(dt_path, "w") as f:
        json.dump(dt, f)
    with open(stamp, "w") as f:
        json.dump(params, f)
    return gt_path, dt_path


def version(pkg):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QKV_THREADS", "2")))
    a = ap.parse_args()
    out = os.path.join(a.build, "coco-bench")
    gt, dt = make_set(out, a.images, a.dets)
    with open(gt) as f:
        g = json.load(f)
    n_anns, n_imgs = len(g["annotations"]), len(g["images"])
    del g
    py = sys.executable
    peer = os.path.join(HERE, "coco_peer.py")
    tools = [("qkv coco-eval", "qkv",
              [os.path.join(a.build, "qkv"), "coco-eval", "--gt", gt, "--dt", dt,
               "--threads", str(a.threads), "--json", os.path.join(out, "qkv.json")])]
    for name in ("pycocotools", "faster-coco-eval"):
        if version(name):
            tools.append((name, name, [py, peer, name, gt, dt, os.path.join(out, name + ".json")]))
        else:
            print("coco bench: %s is not installed: left out" % name, file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads), QKV_THREADS=str(a.threads))
    times = {t[0]: [] for t in tools}
    load_before = os.getloadavg()[0]
    for r in range(a.rounds):
        for label, _, cmd in tools:
            print("coco bench: round %d of %d: %s ..." % (r + 1, a.rounds, label), file=sys.stderr)
            t0 = time.perf_counter()
            p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
            t = time.perf_counter() - t0
            if p.returncode != 0:
                sys.exit("coco bench: %s failed:\n%s%s" % (label, p.stdout, p.stderr))
            times[label].append(t)
    load_after = os.getloadavg()[0]
    stats = {}
    for label, key, _ in tools:
        with open(os.path.join(out, ("qkv" if key == "qkv" else key) + ".json")) as f:
            stats[label] = json.load(f)["stats"]
    ref = stats.get("pycocotools")
    qkv_med = statistics.median(times["qkv coco-eval"])
    lines = []
    lines.append("COCO box evaluation, the whole command (load both files, evaluate, print): "
                 "%d images, %d ground-truth boxes, %d detections, 80 categories; "
                 "%d threads for qkv; %d rounds, interleaved; load average (1 min) %.2f before, "
                 "%.2f after." % (n_imgs, n_anns, n_imgs * a.dets, a.threads, a.rounds,
                                  load_before, load_after))
    lines.append("")
    lines.append("| tool | version | wall time, median (s) | all runs (s) | qkv's speed over it "
                 "| max \\|stat - pycocotools'\\| |")
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for label, key, _ in tools:
        med = statistics.median(times[label])
        ver = "this tree" if key == "qkv" else version(key)
        diff = max(abs(x - y) for x, y in zip(stats[label], ref)) if ref else float("nan")
        lines.append("| %s | %s | %.2f | %s | %s | %.3g |" % (
            label, ver, med, ", ".join("%.2f" % t for t in times[label]),
            "1" if key == "qkv" else "%.1fx" % (med / qkv_med), diff))
    report = "\n".join(lines)
    print(report)
    with open(os.path.join(a.build, "coco-bench.md"), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
