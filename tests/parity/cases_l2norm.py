"""Parity cases for L2 normalisation (F.normalize, p = 2) along one axis,
forward and backward, including a vector whose norm is clamped to eps."""
import torch
import torch.nn.functional as F
from casekit import _grad_case, r


def normalize(g, shape, dim, eps=1e-12, zero_row=False):
    x = r(g, *shape) * 2
    if zero_row:  # a vector below eps: divided by eps, gradient dy / eps
        x[0].mul_(1e-9)
    return _grad_case(g, lambda x: F.normalize(x, p=2.0, dim=dim, eps=eps), {"x": x},
                      dim=dim, eps=eps)


CASES = {
    "l2_normalize_rows": lambda g: normalize(g, (8, 16), 1),
    "l2_normalize_middle": lambda g: normalize(g, (3, 5, 4), 1),
    "l2_normalize_first": lambda g: normalize(g, (6, 7), 0),
    "l2_normalize_clamped": lambda g: normalize(g, (3, 4), 1, eps=1e-6, zero_row=True),
}
