"""Parity cases for softmax and log-softmax over the last axis: plain,
through a transposed (non-contiguous) view, with -inf entries, and with
large logits that overflow a naive exp."""
import torch
from casekit import _grad_case, r


def with_neg_inf(g):
    """Rows where some entries are -inf (a mask), none where all are."""
    x = r(g, 4, 9)
    x[0, 3] = x[1, 0] = x[1, 8] = x[3, 2] = x[3, 5] = float("-inf")
    return x


CASES = {
    "softmax_lastdim": lambda g: _grad_case(g, lambda x: torch.softmax(x, -1),
                                            {"x": r(g, 3, 4, 37)}),
    # x (5, 33) is used as x.t(): a (33, 5) view whose rows are strided
    "softmax_transposed": lambda g: _grad_case(g, lambda x: torch.softmax(x.t(), -1),
                                               {"x": r(g, 5, 33)}),
    "softmax_neg_inf": lambda g: _grad_case(g, lambda x: torch.softmax(x, -1),
                                            {"x": with_neg_inf(g)}),
    "softmax_large": lambda g: _grad_case(g, lambda x: torch.softmax(x, -1),
                                          {"x": r(g, 6, 130) * 60}),
    "log_softmax_lastdim": lambda g: _grad_case(g, lambda x: torch.log_softmax(x, -1),
                                                {"x": r(g, 3, 4, 37)}),
    "log_softmax_transposed": lambda g: _grad_case(g, lambda x: torch.log_softmax(x.t(), -1),
                                                   {"x": r(g, 5, 33)}),
    "log_softmax_large": lambda g: _grad_case(g, lambda x: torch.log_softmax(x, -1),
                                              {"x": r(g, 6, 130) * 60}),
}
