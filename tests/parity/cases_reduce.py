"""Parity cases for the reductions: sum, mean and max over one axis (first,
middle, last; keepdim on and off), sum and mean over several axes and over
everything. Cases named *_t reduce a transposed view x.transpose(0, 2), so
the C side reads x through strides. The axes must match tests/test_reduce.c."""
import torch
from casekit import _grad_case


def _x(g):
    return torch.randn(3, 4, 5, generator=g)


def _case(fn, transposed=False):
    if transposed:
        return lambda g: _grad_case(g, lambda x: fn(x.transpose(0, 2)), {"x": _x(g)})
    return lambda g: _grad_case(g, fn, {"x": _x(g)})


def _max_case(dim, keepdim, transposed):
    def make(g):
        # small integers: many ties, which must resolve to the first maximum
        x = torch.round(2 * torch.randn(3, 4, 5, generator=g))
        view = (lambda v: v.transpose(0, 2)) if transposed else (lambda v: v)
        t, meta = _grad_case(g, lambda x: torch.max(view(x), dim, keepdim)[0], {"x": x})
        t["idx"] = torch.max(view(x), dim, keepdim)[1]
        return t, meta
    return make


CASES = {
    "reduce_sum_0": _case(lambda x: x.sum(0)),
    "reduce_sum_1_keep_t": _case(lambda x: x.sum(1, keepdim=True), transposed=True),
    "reduce_sum_m1": _case(lambda x: x.sum(-1)),
    "reduce_mean_1": _case(lambda x: x.mean(1)),
    "reduce_mean_m1_keep_t": _case(lambda x: x.mean(-1, keepdim=True), transposed=True),
    "reduce_max_0": _max_case(0, False, False),
    "reduce_max_m1_keep_t": _max_case(-1, True, True),
    "reduce_sum_axes_0_2_t": _case(lambda x: x.sum((0, 2)), transposed=True),
    "reduce_sum_axes_m1_1_keep": _case(lambda x: x.sum((-1, 1), keepdim=True)),
    "reduce_mean_axes_0_m1": _case(lambda x: x.mean((0, -1))),
    "reduce_sum_all_t": _case(lambda x: x.sum(), transposed=True),
    "reduce_mean_all": _case(lambda x: x.mean()),
}
