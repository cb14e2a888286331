"""Parity cases for training: five steps of each optimizer on given
parameters and per-step gradients, gradient clipping, and learning-rate
schedules read from torch.optim.lr_scheduler."""
import math

import torch
from casekit import r

SHAPES = {"w": (3, 4), "b": (4,), "k": (2, 3, 5)}
STEPS = 5


def _optim_case(g, make, scale_b=1.0, **meta):
    """Runs `make(groups)` for STEPS steps with random gradients; returns the
    initial values `<name>`, gradients `g<step>_<name>` and values after each
    step `p<step>_<name>`. Parameter b is in its own group with lr * scale_b."""
    params = {n: r(g, *s).requires_grad_() for n, s in SHAPES.items()}
    lr = float(meta["lr"])
    opt = make([{"params": [params["w"], params["k"]]},
                {"params": [params["b"]], "lr": lr * scale_b}])
    t = {n: p.detach().clone() for n, p in params.items()}
    for step in range(STEPS):
        for n, p in params.items():
            p.grad = r(g, *p.shape)
            t[f"g{step}_{n}"] = p.grad.clone()
        opt.step()
        for n, p in params.items():
            t[f"p{step}_{n}"] = p.detach().clone()
    meta["scale_b"] = scale_b
    return t, {k: str(v) for k, v in meta.items()}


def _clip_case(g):
    grads = {n: r(g, *s) for n, s in SHAPES.items()}
    t = {"g_" + n: v.clone() for n, v in grads.items()}
    params = []
    for n, v in grads.items():
        p = torch.zeros(v.shape, requires_grad=True)
        p.grad = v.clone()
        params.append((n, p))
    max_norm = 1.5
    t["norm"] = torch.nn.utils.clip_grad_norm_([p for _, p in params], max_norm).reshape(1)
    for n, p in params:
        t["clipped_" + n] = p.grad
    return t, {"max_norm": str(max_norm)}


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return torch.tensor(out, dtype=torch.float64)


def _schedule_case(g):
    def fresh(lr):
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)

    t = {}
    opt = fresh(0.1)
    t["step_decay"] = _lrs(torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5), opt, 20)

    base, warmup, total, min_lr = 1e-3, 5, 20, 1e-5

    def cosine(s):
        if s < warmup:
            return s / warmup
        if s >= total:
            return min_lr / base
        p = (s - warmup) / (total - warmup)
        return (min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * p))) / base

    opt = fresh(base)
    t["cosine"] = _lrs(torch.optim.lr_scheduler.LambdaLR(opt, cosine), opt, 25)

    d_model, nwarm = 64, 10

    def noam(s):
        s += 1
        return d_model ** -0.5 * min(s ** -0.5, s * nwarm ** -1.5)

    opt = fresh(1.0)
    t["inverse_sqrt"] = _lrs(torch.optim.lr_scheduler.LambdaLR(opt, noam), opt, 30)
    meta = {"step_size": 3, "gamma": 0.5, "base": base, "warmup": warmup, "total": total,
            "min_lr": min_lr, "d_model": d_model, "noam_warmup": nwarm}
    return t, {k: str(v) for k, v in meta.items()}


CASES = {
    "train_sgd": lambda g: _optim_case(
        g, lambda ps: torch.optim.SGD(ps, lr=0.1), kind="sgd", lr=0.1),
    "train_sgd_nesterov": lambda g: _optim_case(
        g, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                      weight_decay=0.01),
        kind="sgd", lr=0.05, momentum=0.9, nesterov=1, weight_decay=0.01),
    "train_sgd_dampening": lambda g: _optim_case(
        g, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, dampening=0.25),
        scale_b=2.0, kind="sgd", lr=0.05, momentum=0.8, dampening=0.25),
    "train_adam": lambda g: _optim_case(
        g, lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                                       weight_decay=0.01),
        kind="adam", lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01),
    "train_adamw": lambda g: _optim_case(
        g, lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                        weight_decay=0.1),
        scale_b=0.5, kind="adamw", lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6,
        weight_decay=0.1),
    "train_clip_grad_norm": _clip_case,
    "train_schedules": _schedule_case,
}
