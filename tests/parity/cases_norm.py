"""Parity cases for layer norm and batch norm (training with the running
statistics it updates, eval, frozen as DETR's FrozenBatchNorm2d)."""
import torch
import torch.nn.functional as F
from casekit import _grad_case, r


def layer_norm(g, shape, affine, transposed=False, eps=1e-5):
    C = shape[0] if transposed else shape[-1]
    inputs = {"x": r(g, *shape) * 3 + 1}
    if affine:
        inputs["w"], inputs["b"] = r(g, C), r(g, C)

    def fn(x, w=None, b=None):
        return F.layer_norm(x.t() if transposed else x, (C,), w, b, eps)
    return _grad_case(g, fn, inputs, eps=eps)


def batch_norm(g, shape, training, permuted=False, momentum=0.1, eps=1e-5):
    """x (B, C, ...); with `permuted`, x is stored (B, S, C) and used as
    x.permute(0, 2, 1). The running statistics before and after the call
    are running_mean / running_var and running_mean_after / _after."""
    C = shape[-1] if permuted else shape[1]
    rm, rv = r(g, C) * 0.5, torch.rand(C, generator=g) + 0.5
    inputs = {"x": r(g, *shape) * 2 + 0.5, "w": r(g, C), "b": r(g, C)}
    m, v = rm.clone(), rv.clone()

    def fn(x, w, b):
        return F.batch_norm(x.permute(0, 2, 1) if permuted else x, m, v, w, b, training,
                            momentum, eps)
    t, meta = _grad_case(g, fn, inputs, momentum=momentum, eps=eps, training=int(training))
    t.update(running_mean=rm, running_var=rv, running_mean_after=m, running_var_after=v)
    return t, meta


def grouped_batch_norm(g, shape, groups, momentum=0.1, eps=1e-5):
    """Shuffle BN on one machine: the batch cut into `groups` runs of rows,
    each normalised by its own F.batch_norm call in training mode, the
    running statistics (and a num_batches_tracked count) updated by each
    call in turn; out is the runs' outputs concatenated."""
    C = shape[1]
    rm, rv = r(g, C) * 0.5, torch.rand(C, generator=g) + 0.5
    inputs = {"x": r(g, *shape) * 2 + 0.5, "w": r(g, C), "b": r(g, C)}
    m, v = rm.clone(), rv.clone()

    def fn(x, w, b):
        return torch.cat([F.batch_norm(part, m, v, w, b, True, momentum, eps)
                          for part in x.chunk(groups)])
    t, meta = _grad_case(g, fn, inputs, momentum=momentum, eps=eps, groups=groups)
    t.update(running_mean=rm, running_var=rv, running_mean_after=m, running_var_after=v)
    return t, meta


def frozen_batch_norm(g, shape, eps=1e-5):
    """DETR's FrozenBatchNorm2d: scale = w rsqrt(rv + eps), y = x scale +
    (b - rm scale); the gradient reaches x only."""
    C = shape[1]
    rm, rv = r(g, C) * 0.5, torch.rand(C, generator=g) + 0.5
    w, b = r(g, C), r(g, C)

    def fn(x):
        scale = (w * (rv + eps).rsqrt()).reshape(1, -1, 1, 1)
        return x * scale + (b.reshape(1, -1, 1, 1) - rm.reshape(1, -1, 1, 1) * scale)
    t, meta = _grad_case(g, fn, {"x": r(g, *shape)}, eps=eps)
    t.update(w=w, b=b, running_mean=rm, running_var=rv)
    return t, meta


CASES = {
    "layer_norm_affine": lambda g: layer_norm(g, (2, 3, 40), True),
    "layer_norm_plain": lambda g: layer_norm(g, (4, 33), False, eps=1e-6),
    "layer_norm_transposed": lambda g: layer_norm(g, (24, 5), True, transposed=True),
    "batch_norm_train_4d": lambda g: batch_norm(g, (4, 3, 5, 2), True),
    "batch_norm_train_2d": lambda g: batch_norm(g, (6, 4), True, momentum=0.3),
    "batch_norm_train_permuted": lambda g: batch_norm(g, (3, 7, 4), True, permuted=True),
    "batch_norm_eval_4d": lambda g: batch_norm(g, (4, 3, 5, 2), False),
    "batch_norm_frozen": lambda g: frozen_batch_norm(g, (2, 3, 4, 5)),
    "batch_norm_groups": lambda g: grouped_batch_norm(g, (6, 3, 4, 2), 3),
    # SyncBatchNorm over p ranks is batch norm over the ranks' rows
    # concatenated (torch.nn.SyncBatchNorm's definition); the C test gives
    # rank r of p its rows of this batch (test_distributed.c)
    "batch_norm_sync_whole": lambda g: batch_norm(g, (6, 3, 4, 2), True),
}
