"""Parity cases for src/io/detection.c: DETR's box transforms
(facebookresearch/detr datasets/transforms.py: hflip, resize with max_size,
crop dropping emptied boxes, normalize to cxcywh / (w, h)), re-created here
from their definitions, applied in one chain; the image goes through the
same chain with torch.flip, F.interpolate (bilinear, as qkv_image_resize)
and slicing."""
import torch
import torch.nn.functional as F


def _size(h, w, size, max_size):
    # the shorter side to size unless the longer would pass max_size
    if max_size is not None:
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * size > max_size:
            size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def det_chain(g):
    H, W = 100, 150
    img = torch.rand(3, H, W, generator=g)
    n = 7
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W - 10.0, H - 10.0])
    wh = 2 + torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(W), float(H)]))], 1)
    labels = torch.arange(n) * 3 + 1
    t = {"image": img, "boxes": boxes, "labels": labels}
    # hflip
    img = img.flip(-1)
    boxes = boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor([W, 0.0, W, 0])
    t["boxes_flip"] = boxes
    # resize: shorter side 80, longer at most 110
    oh, ow = _size(H, W, 80, 110)
    rw, rh = ow / W, oh / H
    img = F.interpolate(img[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
    boxes = boxes * torch.tensor([rw, rh, rw, rh])
    t["boxes_resize"] = boxes
    # crop (top 5, left 10, 50 x 70)
    i, j, h, w = 5, 10, 50, 70
    img = img[:, i:i + h, j:j + w]
    c = torch.min((boxes - torch.tensor([float(j), i, j, i])).reshape(-1, 2, 2),
                  torch.tensor([float(w), float(h)])).clamp(min=0)
    keep = torch.all(c[:, 1, :] > c[:, 0, :], dim=1)
    boxes = c.reshape(-1, 4)[keep]
    t["boxes_crop"] = boxes
    t["labels_crop"] = labels[keep]
    # normalize: cxcywh / (w, h)
    x0, y0, x1, y1 = boxes.unbind(-1)
    t["boxes_final"] = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1) / \
        torch.tensor([float(w), h, w, h])
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    t["image_final"] = (img - mean[:, None, None]) / std[:, None, None]
    return t, {"resized": f"{oh} {ow}"}


CASES = {"det_chain": det_chain}
