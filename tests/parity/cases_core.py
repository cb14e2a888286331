"""Parity cases for the core ops written in the first commit: broadcasting
arithmetic, matmul with transpose flags and strided views, linear."""
import torch
from casekit import _grad_case, r


CASES = {
    "add_broadcast": lambda g: _grad_case(g, lambda a, b: a + b,
                                          {"a": r(g, 2, 3, 4), "b": r(g, 3, 1)}),
    "sub_broadcast": lambda g: _grad_case(g, lambda a, b: a - b,
                                          {"a": r(g, 4), "b": r(g, 2, 3, 4)}),
    "mul_broadcast": lambda g: _grad_case(g, lambda a, b: a * b,
                                          {"a": r(g, 2, 1, 4), "b": r(g, 1, 3, 1)}),
    "div_broadcast": lambda g: _grad_case(g, lambda a, b: a / b,
                                          {"a": r(g, 2, 3, 4), "b": r(g, 3, 4).abs() + 0.5}),
    "matmul_tt": lambda g: _grad_case(g, lambda a, b: a.transpose(-1, -2) @ b.transpose(-1, -2),
                                      {"a": r(g, 2, 5, 3), "b": r(g, 2, 4, 5)}, ta=1, tb=1),
    "matmul_batch_broadcast": lambda g: _grad_case(g, lambda a, b: a @ b,
                                                   {"a": r(g, 2, 3, 4, 5), "b": r(g, 5, 6)}),
    "linear": lambda g: _grad_case(g, lambda x, w, b: torch.nn.functional.linear(x, w, b),
                                   {"x": r(g, 2, 3, 5), "w": r(g, 4, 5), "b": r(g, 4)}),
}
