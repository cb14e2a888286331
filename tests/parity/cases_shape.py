"""Parity cases for the shape ops: concat, slice, index_select, embedding,
masked_fill, where. Each family has one input that the C test turns into a
non-contiguous view (named *_t or *_p: stored transposed or permuted)."""
import torch
import torch.nn.functional as F
from casekit import r


def _grad_case(g, fn, inputs, **meta):
    """Runs fn on leaf copies of inputs, backward with a random upstream
    gradient `gout`; returns inputs, out, gout and grad_<name> of each."""
    leaves = {k: v.clone().requires_grad_(v.dtype.is_floating_point) for k, v in inputs.items()}
    out = fn(**leaves)
    gout = torch.randn(out.shape, generator=g)
    out.backward(gout)
    t = dict(inputs)
    t["out"] = out.detach()
    t["gout"] = gout
    for k, v in leaves.items():
        if v.requires_grad and v.grad is not None:
            t["grad_" + k] = v.grad
    return t, {k: str(v) for k, v in meta.items()}


def _index_case(g, fn, inputs, idx, **meta):
    t, m = _grad_case(g, lambda **kw: fn(idx=idx, **kw), inputs, **meta)
    t["idx"] = idx
    return t, m


def _masked_fill(g):
    mask = (torch.rand(3, 1, generator=g) > 0.5).float()
    mask[0, 0], mask[1, 0] = 1.0, 0.0  # both branches appear
    return _grad_case(g, lambda x_p, mask: x_p.permute(2, 1, 0).masked_fill(mask != 0, -1.5),
                      {"x_p": r(g, 4, 3, 2), "mask": mask}, value=-1.5)


def _where(g):
    cond = (torch.rand(2, 1, 4, generator=g) > 0.5).float()
    cond[0, 0, 0], cond[0, 0, 1] = 1.0, 0.0
    return _grad_case(g, lambda cond, a_t, b: torch.where(cond != 0, a_t.t(), b),
                      {"cond": cond, "a_t": r(g, 4, 3), "b": r(g, 2, 3, 1)})


CASES = {
    # axis 1 of (2,3,4), (2,2,4) [a transposed view], (2,1,4)
    "concat_axis1": lambda g: _grad_case(
        g, lambda a, b_t, c: torch.cat([a, b_t.transpose(1, 2), c], 1),
        {"a": r(g, 2, 3, 4), "b_t": r(g, 2, 4, 2), "c": r(g, 2, 1, 4)}, axis=1),
    # x[:, -6:100:2, :]: negative start, end clamped, step 2
    "slice_neg_step": lambda g: _grad_case(g, lambda x: x[:, -6:100:2, :],
                                           {"x": r(g, 4, 7, 3)}),
    # x_t.t()[1:-1:3] on a transposed view
    "slice_view": lambda g: _grad_case(g, lambda x_t: x_t.t()[1:-1:3], {"x_t": r(g, 5, 8)}),
    # x_p.permute(1, 2, 0) is (4,5,3); rows along axis 1 with repeats
    "index_select_dup": lambda g: _index_case(
        g, lambda x_p, idx: x_p.permute(1, 2, 0).index_select(1, idx),
        {"x_p": r(g, 3, 4, 5)}, torch.tensor([4, 0, 4, 2, 4])),
    "embedding_dup": lambda g: _index_case(
        g, lambda w, idx: F.embedding(idx, w), {"w": r(g, 7, 4)},
        torch.tensor([3, 0, 6, 3, 3, 1, 0, 5, 2, 3])),
    # packed rows of a (B, T) = (3, 4) batch: rows 0, 1, 4, 5, 6, 8 kept;
    # x_p is stored (T, B, C) and permuted to (B, T, C) in C
    "rows_pack": lambda g: _index_case(
        g, lambda x_p, idx: x_p.permute(1, 0, 2).reshape(12, 5).index_select(0, idx),
        {"x_p": r(g, 4, 3, 5)}, torch.tensor([0, 1, 4, 5, 6, 8])),
    # the kept rows back into (B, T, C), zeros elsewhere
    "rows_unpack": lambda g: _index_case(
        g, lambda x, idx: torch.zeros(12, 5).index_copy(0, idx, x).reshape(3, 4, 5),
        {"x": r(g, 6, 5)}, torch.tensor([0, 1, 4, 5, 6, 8])),
    "masked_fill_broadcast": _masked_fill,
    "where_broadcast": _where,
}
