#!/usr/bin/env python3
"""State_dict interop for test_checkpoint.c.

  state_dict_io.py write PATH        writes nn.Sequential(Linear(3,4), Tanh(),
                                     Linear(4,2))'s state_dict plus a probe input
                                     __x and its output __y
  state_dict_io.py check TORCH QKV   loads QKV's file into a fresh model with
                                     strict=True and checks it equals TORCH's
"""
import sys

import torch

from stio import load, save


def model():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def main():
    torch.manual_seed(0)
    if sys.argv[1] == "write":
        m = model()
        x = torch.randn(5, 3)
        t = dict(m.state_dict())
        t["__x"] = x
        t["__y"] = m(x).detach()
        save(sys.argv[2], t)
        return 0
    ref, _ = load(sys.argv[2])
    got, _ = load(sys.argv[3])
    m = model()
    m.load_state_dict(got, strict=True)
    with torch.no_grad():
        y = m(ref["__x"])
    err = (y - ref["__y"]).abs().max().item()
    print(f"state_dict_io: max abs diff {err:.3g}")
    return 0 if err <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
