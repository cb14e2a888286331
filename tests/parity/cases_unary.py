"""Parity cases for the elementwise unary ops. Every case but gelu_large
applies the op to a transposed view x.transpose(-1, -2), so the C side
exercises the non-contiguous path; kink ops get exact zeros in x to pin
PyTorch's gradient convention there. The scalars must match
tests/test_unary.c."""
import torch
import torch.nn.functional as F
from casekit import _grad_case


def _x(g, positive=False, zeros=False):
    x = 2 * torch.randn(3, 4, 5, generator=g)
    if positive:
        x = x.abs() + 0.1
    if zeros:
        x[0, 0, 0] = 0
        x[1, 2, 3] = 0
        x[2, 3, 1] = 0
    return x


def _t(op, positive=False, zeros=False):
    return lambda g: _grad_case(g, lambda x: op(x.transpose(-1, -2)),
                                {"x": _x(g, positive, zeros)})


CASES = {
    "unary_affine": _t(lambda x: x * 1.5 + -0.25),
    "unary_scale": _t(lambda x: x * -2.0),
    "unary_neg": _t(lambda x: -x),
    "unary_exp": _t(torch.exp),
    "unary_log": _t(torch.log, positive=True),
    "unary_sqrt": _t(torch.sqrt, positive=True),
    "unary_pow3": _t(lambda x: x.pow(3.0)),
    "unary_pow2_5": _t(lambda x: x.pow(2.5), positive=True),
    "unary_pow_m0_5": _t(lambda x: x.pow(-0.5), positive=True),
    "unary_abs": _t(torch.abs, zeros=True),
    "unary_tanh": _t(torch.tanh),
    "unary_sigmoid": _t(torch.sigmoid),
    "unary_relu": _t(torch.relu, zeros=True),
    "unary_leaky_relu": _t(lambda x: F.leaky_relu(x, 0.1), zeros=True),
    "unary_gelu": _t(F.gelu),
    "unary_gelu_tanh": _t(lambda x: F.gelu(x, approximate="tanh")),
    "unary_silu": _t(F.silu),
    "unary_softplus": _t(F.softplus),
    "unary_softplus_beta": _t(lambda x: F.softplus(x, beta=2.0, threshold=5.0)),
    # contiguous and above the kernels' threshold for two threads, odd length
    "unary_gelu_large": lambda g: _grad_case(g, F.gelu, {"x": 3 * torch.randn(301, 129, generator=g)}),
    # qkv_gelu_linear: F.linear(F.gelu(x), w, b), x (2, 7, 24) -> (2, 7, 10)
    "gelu_linear": lambda g: _grad_case(
        g, lambda x, w, b: F.linear(F.gelu(x), w, b),
        {"x": 2 * torch.randn(2, 7, 24, generator=g), "w": 0.2 * torch.randn(10, 24, generator=g),
         "b": torch.randn(10, generator=g)}),
}
