"""Parity cases for DETR's pieces outside the model: scipy's
linear_sum_assignment on many cost matrices, the Hungarian matcher and set
criterion (facebookresearch/detr models/matcher.py and models/detr.py,
re-created here from their definitions), and the 2-D sine positional
encoding (models/position_encoding.py, PositionEmbeddingSine)."""
import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.ops as tvo
from scipy.optimize import linear_sum_assignment

# ---- linear sum assignment ----


def _lsa_matrices(g):
    """(name, cost) pairs: square, wide, tall, integer ties, a huge dynamic
    range, values near 1e15, +inf entries (feasible or not), empty sides."""
    def rand(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64)

    def size(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    out = []
    for _ in range(40):
        n = size(1, 12)
        out.append(("square", rand(n, n) * 10 - 5))
    for _ in range(30):
        n, m = size(1, 20), size(1, 40)
        out.append(("wide", rand(min(n, m), max(n, m))))
        out.append(("tall", rand(max(n, m), min(n, m)) * 100))
    for _ in range(40):
        n, m = size(1, 15), size(1, 15)
        out.append(("ties", torch.randint(0, 4, (n, m), generator=g).double()))
    for _ in range(20):
        n, m = size(2, 15), size(2, 15)
        mag = torch.randint(-6, 13, (n, m), generator=g).double()
        out.append(("range", (rand(n, m) * 2 - 1) * 10.0 ** mag))
    for _ in range(10):
        n, m = size(2, 12), size(2, 12)
        out.append(("huge", 1e15 + torch.randint(0, 1000, (n, m), generator=g).double()))
    for _ in range(20):
        n, m = size(2, 10), size(2, 10)
        c = rand(n, m)
        c[rand(n, m) < 0.3] = math.inf
        out.append(("inf", c))
    out.append(("inf_row", torch.tensor([[1.0, 2.0], [math.inf, math.inf], [3.0, 1.0]])))
    out.append(("inf_cols", torch.tensor([[1.0, math.inf, math.inf], [2.0, math.inf, math.inf]])))
    out.append(("empty_rows", torch.zeros(0, 3, dtype=torch.float64)))
    out.append(("empty_cols", torch.zeros(4, 0, dtype=torch.float64)))
    out.append(("one", torch.tensor([[7.5]])))
    return out


def lsa_cases(g):
    """Each cost matrix is stored as float32 (exactly what qkv reads, turned
    into doubles), solved by scipy on the same doubles. Tensors: costs (all
    matrices flat), shapes (n_cases, 2), status (n_cases: 0 solved, 1
    infeasible), rows and cols (scipy's pairs of the solved ones, flat)."""
    costs, shapes, status, rows, cols = [], [], [], [], []
    for _, c in _lsa_matrices(g):
        c32 = c.float()
        costs.append(c32.reshape(-1))
        shapes.append(list(c.shape))
        try:
            ri, ci = linear_sum_assignment(c32.double().numpy())
            status.append(0)
            rows.append(torch.from_numpy(ri.astype(np.int64)))
            cols.append(torch.from_numpy(ci.astype(np.int64)))
        except ValueError:
            status.append(1)
    return {"costs": torch.cat(costs), "shapes": torch.tensor(shapes, dtype=torch.int64),
            "status": torch.tensor(status, dtype=torch.int64),
            "rows": torch.cat(rows), "cols": torch.cat(cols)}, {}

# ---- DETR's matcher and set criterion, from their definitions ----


def box_cxcywh_to_xyxy(x):
    cx, cy, w, h = x.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def generalized_box_iou(a, b):
    assert (a[:, 2:] >= a[:, :2]).all() and (b[:, 2:] >= b[:, :2]).all()
    return tvo.generalized_box_iou(a, b)


@torch.no_grad()
def hungarian_match(logits, boxes, targets, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0):
    """logits (B, Q, C), boxes (B, Q, 4) -> per image (query idx, target idx)"""
    B, Q = logits.shape[:2]
    if sum(len(t["labels"]) for t in targets) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return [(empty, empty) for _ in targets]
    prob = logits.flatten(0, 1).softmax(-1)
    out_bbox = boxes.flatten(0, 1)
    labels = torch.cat([t["labels"] for t in targets])
    tboxes = torch.cat([t["boxes"] for t in targets])
    c = (cost_bbox * torch.cdist(out_bbox, tboxes, p=1) - cost_class * prob[:, labels]
         - cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(out_bbox),
                                           box_cxcywh_to_xyxy(tboxes)))
    c = c.view(B, Q, -1)
    sizes = [len(t["boxes"]) for t in targets]
    out = []
    for b, cb in enumerate(c.split(sizes, -1)):
        i, j = linear_sum_assignment(cb[b].numpy())
        out.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
    return out


def set_criterion(logits, boxes, targets, eos_coef=0.1, weights=(1.0, 5.0, 2.0), aux=True):
    """logits (L, B, Q, C), boxes (L, B, Q, 4) -> total, per-layer terms
    (L', 3), matches (L', B, Q), class_error and cardinality_error of the
    last layer; L' = L with aux, else 1."""
    L, B, Q, C = logits.shape
    empty_weight = torch.ones(C)
    empty_weight[-1] = eos_coef
    num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    total, terms, matches = 0, [], []
    for l in range(0 if aux else L - 1, L):
        lg, bx = logits[l], boxes[l]
        idx = hungarian_match(lg, bx, targets)
        m = torch.full((B, Q), -1, dtype=torch.int64)
        for b, (i, j) in enumerate(idx):
            m[b, i] = j
        matches.append(m)
        bi = torch.cat([torch.full_like(i, b) for b, (i, _) in enumerate(idx)])
        si = torch.cat([i for i, _ in idx])
        cls_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, idx)])
        tc = torch.full((B, Q), C - 1, dtype=torch.int64)
        tc[bi, si] = cls_o
        ce = F.cross_entropy(lg.transpose(1, 2), tc, empty_weight)
        src = bx[bi, si]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, idx)], dim=0)
        l1 = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = (1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src),
                                                   box_cxcywh_to_xyxy(tgt)))).sum() / num_boxes
        terms.append(torch.stack([ce, l1, giou]).detach())
        total = total + weights[0] * ce + weights[1] * l1 + weights[2] * giou
        if l == L - 1:
            with torch.no_grad():
                if cls_o.numel() == 0:
                    class_error = 100.0
                else:
                    acc = (lg[bi, si].argmax(-1) == cls_o).float().mean() * 100
                    class_error = float(100 - acc)
                card = (lg.argmax(-1) != C - 1).sum(1).float()
                n_t = torch.tensor([float(len(t["labels"])) for t in targets])
                card_err = float(F.l1_loss(card, n_t))
    return total, torch.stack(terms), torch.stack(matches), class_error, card_err, num_boxes


def detr_case(g, L, B, Q, K, sizes, aux=True, stacked=True):
    """Random logits and sigmoid boxes; targets with the given sizes (labels
    in [0, K), boxes cxcywh inside the unit square)."""
    logits = torch.randn(L, B, Q, K + 1, generator=g) * 2
    boxes = torch.sigmoid(torch.randn(L, B, Q, 4, generator=g))
    targets = []
    for n in sizes:
        wh = torch.rand(n, 2, generator=g) * 0.5 + 0.05
        c = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
        targets.append({"labels": torch.randint(0, K, (n,), generator=g),
                        "boxes": torch.cat([c, wh], dim=1)})
    lg, bx = logits.clone().requires_grad_(True), boxes.clone().requires_grad_(True)
    total, terms, matches, class_error, card_err, num_boxes = set_criterion(lg, bx, targets,
                                                                            aux=aux)
    total.backward()
    t = {"logits": logits if stacked else logits[0], "boxes": boxes if stacked else boxes[0],
         "labels": torch.cat([x["labels"] for x in targets]),
         "tboxes": torch.cat([x["boxes"] for x in targets]).reshape(-1, 4),
         "sizes": torch.tensor(sizes, dtype=torch.int64),
         "out": total.detach().reshape(()), "terms": terms, "matches": matches,
         "grad_logits": lg.grad if stacked else lg.grad[0],
         "grad_boxes": bx.grad if stacked else bx.grad[0]}
    meta = {"aux": int(aux), "class_error": repr(class_error),
            "cardinality_error": repr(card_err), "num_boxes": repr(num_boxes)}
    return t, meta

# ---- the 2-D sine positional encoding ----


def position_embedding_sine(mask, num_pos_feats=128, temperature=10000, normalize=True,
                            scale=2 * math.pi):
    """PositionEmbeddingSine.forward on a padding mask (B, H, W), True on
    padding -> (B, 2 num_pos_feats, H, W)"""
    not_mask = ~mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    if normalize:
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def sine_case(g, mask, **kw):
    out = position_embedding_sine(mask, **kw)
    meta = {"num_pos_feats": kw.get("num_pos_feats", 128),
            "temperature": kw.get("temperature", 10000),
            "normalize": int(kw.get("normalize", True))}
    return {"mask": mask.float(), "out": out}, meta


def padded_mask():
    """images of 7x9, 5x9, 7x6 and 4x3 pixels padded to 7x9 (bottom, right)"""
    m = torch.zeros(4, 7, 9, dtype=torch.bool)
    m[1, 5:] = True
    m[2, :, 6:] = True
    m[3, 4:] = True
    m[3, :, 3:] = True
    return m


CASES = {
    "lsa_scipy": lsa_cases,
    "detr_loss_aux": lambda g: detr_case(g, 3, 4, 7, 5, [3, 0, 9, 1]),
    "detr_loss_noaux": lambda g: detr_case(g, 2, 3, 6, 4, [2, 5, 1], aux=False),
    "detr_loss_one_layer": lambda g: detr_case(g, 1, 2, 10, 7, [4, 2], stacked=False),
    "detr_loss_no_targets": lambda g: detr_case(g, 2, 3, 5, 3, [0, 0, 0]),
    "posenc_sine2d_detr": lambda g: sine_case(g, padded_mask()),
    "posenc_sine2d_plain": lambda g: sine_case(
        g, torch.rand(2, 5, 6, generator=g) < 0.3, num_pos_feats=16, temperature=20,
        normalize=False),
    "posenc_sine2d_random": lambda g: sine_case(g, torch.rand(2, 6, 5, generator=g) < 0.4,
                                                num_pos_feats=32),
}
