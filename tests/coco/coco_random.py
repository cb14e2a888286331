"""Random COCO ground truth and detection results, for the parity tests of
`qkv coco-eval` against pycocotools (tests/coco/gen.py) and for its
benchmark (bench/coco_bench.sh).

make_case(rng, ...) returns (gt, dt): gt a COCO ground-truth dict (images,
annotations, categories), dt a COCO results list. Every feature of
pycocotools' box evaluation gets exercised: non-contiguous and unsorted
image and category ids, categories and images without ground truth, crowds,
the `area` field differing from w*h (and sitting exactly on the 32^2 and
96^2 range ends), boxes of all three area ranges, IoUs exactly on a
threshold (integer coordinates), score ties within and across images, more
than 100 detections of a category on an image, and zero-width boxes.
"""
import numpy as np

# COCO's 80 category ids (1..90 with gaps)
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
            23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
            46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
            65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88,
            89, 90]


def _num(x, integer):
    """A coordinate as a JSON number: an int, or a float32 value written as
    Python writes a float (what detectors' .tolist() gives)."""
    return int(x) if integer else float(np.float32(x))


def _box(rng, integer, size_scale):
    # log-uniform sizes so that small (< 32^2), medium and large (> 96^2)
    # boxes all occur
    w = np.exp(rng.uniform(np.log(2), np.log(400))) * size_scale
    h = w * np.exp(rng.uniform(-0.7, 0.7))
    x, y = rng.uniform(0, 600), rng.uniform(0, 400)
    if integer:
        return [int(x), int(y), max(1, int(round(w))), max(1, int(round(h)))]
    return [_num(v, False) for v in (x, y, w, h)]


def _jitter(rng, b, integer, amount):
    x, y, w, h = b
    if integer:
        # integer shifts of integer boxes: IoUs land exactly on thresholds
        d = rng.integers(-2, 3, size=4)
        return [x + int(d[0]), y + int(d[1]), max(0, w + int(d[2])), max(0, h + int(d[3]))]
    d = rng.normal(0, amount, size=4)
    return [_num(x + d[0] * w, False), _num(y + d[1] * h, False),
            _num(max(0.0, w * (1 + d[2])), False), _num(max(0.0, h * (1 + d[3])), False)]


def make_case(rng, n_images, n_cats, gt_per_image=6.0, dt_per_image=30, crowd_p=0.05,
              integer=None, score_levels=None, coco_ids=False, heavy_images=0,
              empty_cats=0):
    """One random (gt, dt) pair; see the module's docstring."""
    if integer is None:
        integer = bool(rng.integers(0, 2))
    if score_levels is None:  # ties: scores on a coarse grid half the time
        score_levels = int(rng.choice([0, 5, 20])) if rng.integers(0, 2) else 0
    if coco_ids:
        cat_ids = list(COCO_IDS[:n_cats])
        gt_cats = cat_ids
    else:  # `empty_cats` more categories that no annotation uses
        cat_ids = sorted(int(c) for c in
                         rng.choice(np.arange(1, 1000), size=n_cats + empty_cats, replace=False))
        gt_cats = [int(c) for c in rng.permutation(cat_ids)[:n_cats]]
    img_ids = rng.choice(np.arange(1, 10 * n_images + 10), size=n_images, replace=False)
    images = [{"id": int(i), "width": 640, "height": 480, "file_name": "%012d.jpg" % i}
              for i in img_ids]
    anns, dets = [], []
    next_ann = int(rng.integers(1, 1000))
    scale = 1.0
    for img in images:
        n_gt = int(rng.poisson(gt_per_image)) if rng.uniform() > 0.15 else 0
        boxes = []
        for _ in range(n_gt):
            b = _box(rng, integer, scale)
            c = int(rng.choice(gt_cats))
            w, h = b[2], b[3]
            r = rng.uniform()
            if r < 0.1:    # exactly on a range end
                area = float(rng.choice([32 ** 2, 96 ** 2]))
            elif r < 0.2:  # the area field equal to w*h
                area = float(w * h)
            else:          # a mask inside the box: smaller than w*h
                area = float(np.float32(w * h * rng.uniform(0.3, 1.0)))
            crowd = int(rng.uniform() < crowd_p)
            ann = {"id": next_ann, "image_id": img["id"], "category_id": c,
                   "bbox": b, "area": area, "iscrowd": crowd,
                   "segmentation": [[b[0], b[1], b[0] + w, b[1], b[0] + w, b[1] + h]]}
            if rng.uniform() < 0.05:
                ann["ignore"] = int(rng.integers(0, 2))
            anns.append(ann)
            next_ann += int(rng.integers(1, 4))
            boxes.append((b, c, crowd))
        # detections: jittered copies of the ground truth (sometimes of the
        # wrong category, several for a crowd), then random boxes
        for b, c, crowd in boxes:
            for _ in range(int(rng.integers(0, 4 if crowd else 3))):
                cc = c if rng.uniform() > 0.1 else int(rng.choice(cat_ids))
                dets.append((img["id"], cc, _jitter(rng, b, integer, 0.08)))
        n_rand = int(rng.poisson(dt_per_image * 0.3))
        for _ in range(n_rand):
            dets.append((img["id"], int(rng.choice(cat_ids)), _box(rng, integer, scale)))
    # images with more than 100 detections of one category
    for _ in range(heavy_images):
        img = images[int(rng.integers(0, n_images))]
        c = int(rng.choice(gt_cats))
        base = [a["bbox"] for a in anns if a["image_id"] == img["id"]] or [_box(rng, integer, 1)]
        for _ in range(int(rng.integers(101, 160))):
            b = base[int(rng.integers(0, len(base)))]
            dets.append((img["id"], c, _jitter(rng, b, integer, 0.15)))
    order = rng.permutation(len(dets))
    dt = []
    for i in order:
        im, c, b = dets[i]
        s = rng.uniform()
        s = round(s * score_levels) / score_levels if score_levels else _num(s, False)
        dt.append({"image_id": im, "category_id": c, "bbox": b, "score": s})
    rng.shuffle(images)
    rng.shuffle(anns)
    cats = [{"id": int(c), "name": "cat%d" % c, "supercategory": "thing"} for c in cat_ids]
    rng.shuffle(cats)
    gt = {"info": {"description": "random"}, "images": images, "annotations": anns,
          "categories": cats}
    return gt, dt


def make_large(seed=0, n_images=5000, dt_per_image=100):
    """The benchmark's set: COCO's 80 category ids, ~7 ground truths and
    `dt_per_image` detections per image, float32 coordinates and scores."""
    rng = np.random.default_rng(seed)
    gt, dt = make_case(rng, n_images, 80, gt_per_image=7.3, dt_per_image=0, crowd_p=0.01,
                       integer=False, score_levels=0, coco_ids=True)
    # top up every image to dt_per_image detections (random boxes)
    per = {}
    for d in dt:
        per[d["image_id"]] = per.get(d["image_id"], 0) + 1
    extra = []
    for img in gt["images"]:
        for _ in range(max(0, dt_per_image - per.get(img["id"], 0))):
            extra.append({"image_id": img["id"], "category_id": int(rng.choice(COCO_IDS)),
                          "bbox": _box(rng, False, 1.0),
                          "score": _num(rng.uniform() ** 3, False)})
    dt.extend(extra)
    order = rng.permutation(len(dt))
    return gt, [dt[i] for i in order]
