"""Parity cases for the losses: cross entropy with class weights,
ignore_index and label smoothing under each reduction, and MSE, L1 and
smooth L1 under each reduction."""
import torch
import torch.nn.functional as F
from casekit import _grad_case, r


def ce(g, N, K, reduction, weight=False, ignore=None, smoothing=0.0, transposed=False):
    """Targets include `ignore` (when given) in a few places. The meta
    ignore_index is 'none' when nothing is ignored. With `transposed`, the
    logits are stored (K, N) and used as x.t()."""
    target = torch.randint(0, K, (N,), generator=g)
    if ignore is not None:
        target[1] = target[N - 2] = ignore
    inputs = {"x": r(g, K, N) if transposed else r(g, N, K) * 2, "target": target}
    w = torch.rand(K, generator=g) + 0.2 if weight else None

    def fn(x, target):
        return F.cross_entropy(x.t() if transposed else x, target, weight=w,
                               ignore_index=-100 if ignore is None else ignore,
                               reduction=reduction, label_smoothing=smoothing)
    t, meta = _grad_case(g, fn, inputs, reduction=reduction, smoothing=smoothing,
                         ignore_index="none" if ignore is None else ignore)
    if weight:
        t["weight"] = w
    return t, meta


def linear_ce(g, N, IN, K, reduction, bias=True, weight=False, ignore=None, smoothing=0.0):
    """F.cross_entropy(F.linear(x, w, b), target): x (2, N / 2, IN) so that
    the leading axes fold into rows; the inputs of qkv_linear_cross_entropy."""
    target = torch.randint(0, K, (N,), generator=g)
    if ignore is not None:
        target[1] = target[N - 2] = ignore
    inputs = {"x": r(g, 2, N // 2, IN), "w": r(g, K, IN) * 0.5, "target": target}
    if bias:
        inputs["b"] = r(g, K) * 0.5
    w = torch.rand(K, generator=g) + 0.2 if weight else None

    def fn(x, w, target, b=None):
        return F.cross_entropy(F.linear(x, w, b).reshape(-1, K), target, weight=w_cls,
                               ignore_index=-100 if ignore is None else ignore,
                               reduction=reduction, label_smoothing=smoothing)
    w_cls = w
    t, meta = _grad_case(g, fn, inputs, reduction=reduction, smoothing=smoothing,
                         ignore_index="none" if ignore is None else ignore)
    if weight:
        t["weight"] = w
    return t, meta


def pointwise(g, fn, reduction, transposed=False):
    """pred (4, 6) used as pred.t() when `transposed`; the differences span
    both sides of smooth L1's beta and include exact zeros for L1."""
    pred, target = r(g, 4, 6), r(g, 6, 4) if transposed else r(g, 4, 6)
    target.view(-1)[:3] = (pred.t() if transposed else pred).reshape(-1)[:3]
    return _grad_case(g, lambda pred, target: fn(pred.t() if transposed else pred, target,
                                                 reduction=reduction),
                      {"pred": pred, "target": target}, reduction=reduction)


def _smooth(p, t, reduction):
    return F.smooth_l1_loss(p, t, reduction=reduction, beta=0.5)


CASES = {
    "ce_plain_mean": lambda g: ce(g, 7, 5, "mean"),
    "ce_transposed_sum": lambda g: ce(g, 6, 9, "sum", transposed=True),
    "ce_ignore_neg_mean": lambda g: ce(g, 8, 4, "mean", ignore=-100),
    "ce_smooth_mean": lambda g: ce(g, 8, 5, "mean", smoothing=0.2, ignore=3),
}
for red in ("mean", "sum", "none"):
    CASES[f"ce_full_{red}"] = (lambda red: lambda g: ce(g, 9, 6, red, weight=True, ignore=2,
                                                        smoothing=0.1))(red)
    CASES[f"mse_{red}"] = (lambda red: lambda g: pointwise(g, F.mse_loss, red))(red)
    CASES[f"l1_{red}"] = (lambda red: lambda g: pointwise(g, F.l1_loss, red, True))(red)
    CASES[f"smooth_l1_{red}"] = (lambda red: lambda g: pointwise(g, _smooth, red))(red)
CASES["lce_plain_mean"] = lambda g: linear_ce(g, 8, 6, 11, "mean")
CASES["lce_full_sum"] = lambda g: linear_ce(g, 10, 5, 7, "sum", weight=True, ignore=2,
                                            smoothing=0.1)
CASES["lce_nobias_mean"] = lambda g: linear_ce(g, 6, 4, 9, "mean", bias=False, ignore=0,
                                               smoothing=0.2)
