"""What the parity case files share: a gradient case and random inputs."""
import torch


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
        if v.requires_grad:
            t["grad_" + k] = v.grad
    return t, {k: str(v) for k, v in meta.items()}


def r(g, *shape):
    return torch.randn(*shape, generator=g)
