"""Parity cases for the box ops: the cxcywh <-> xyxy forms (DETR's
util/box_ops.py, re-created here), torchvision's box_iou and
generalized_box_iou, torchvision's generalized_box_iou_loss (eps 1e-7) and
DETR's 1 - diag(generalized_box_iou) (eps 0). The boxes share some corners
on purpose, so that the max/min ties take PyTorch's half-and-half rule."""
import torch
import torchvision.ops as tvo
from casekit import _grad_case, r


def cxcywh_to_xyxy(x):
    cx, cy, w, h = x.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(x):
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def xyxy(g, n):
    """n valid xyxy boxes in about [0, 1.5]^2, sizes 0.05 to 0.85."""
    lo = torch.rand(n, 2, generator=g) * 0.7
    wh = torch.rand(n, 2, generator=g) * 0.8 + 0.05
    return torch.cat([lo, lo + wh], dim=1)


def pair_sets(g, N, M):
    """boxes1 (N, 4), boxes2 (M, 4) with shared corners (ties), one box
    twice, and one pair far apart (IoU 0, GIoU < 0)."""
    a, b = xyxy(g, N), xyxy(g, M)
    b[0] = a[1]                      # identical boxes: every max/min ties
    # one shared x0 and one shared y1 (the box stays valid)
    b[1] = torch.stack([a[0, 0], a[2, 3] - 0.4, a[0, 0] + 0.3, a[2, 3]])
    b[2] = torch.tensor([2.0, 2.0, 2.5, 2.6])  # disjoint from everything
    return a, b


def giou_detr_loss(a, b):
    return (1 - torch.diag(tvo.generalized_box_iou(a, b))).sum()


def giou_tv_loss(reduction):
    return lambda a, b: tvo.generalized_box_iou_loss(a, b, reduction=reduction, eps=1e-7)


def rows(g, n):
    """paired rows: a few identical, a few disjoint, the rest random"""
    a, b = xyxy(g, n), xyxy(g, n)
    b[0] = a[0]
    b[1, :2] = a[1, :2]              # shared x0, y0
    b[1, 2:] = a[1, :2] + 0.25
    b[2] = a[2] + 3.0
    return a, b


CASES = {
    "box_cxcywh_to_xyxy": lambda g: _grad_case(g, cxcywh_to_xyxy, {"x": r(g, 3, 5, 4)}),
    "box_xyxy_to_cxcywh": lambda g: _grad_case(g, xyxy_to_cxcywh, {"x": r(g, 7, 4)}),
    "box_iou": lambda g: _grad_case(g, lambda a, b: tvo.box_iou(a, b),
                                    dict(zip(("a", "b"), pair_sets(g, 6, 5)))),
    "box_giou_pairwise": lambda g: _grad_case(g, lambda a, b: tvo.generalized_box_iou(a, b),
                                              dict(zip(("a", "b"), pair_sets(g, 5, 7)))),
    "giou_loss_detr": lambda g: _grad_case(g, giou_detr_loss, dict(zip(("a", "b"), rows(g, 9))),
                                           reduction="sum", eps=0.0),
}
for red in ("none", "sum", "mean"):
    CASES[f"giou_loss_tv_{red}"] = (lambda red: lambda g: _grad_case(
        g, giou_tv_loss(red), dict(zip(("a", "b"), rows(g, 8))), reduction=red, eps=1e-7))(red)
