#!/usr/bin/env python3
"""Writes the PyTorch fixtures that the C parity tests compare against.

Usage: gen.py OUTDIR [CASE-SUBSTRING ...]

Every module cases_*.py beside this file defines CASES, a dict from a case
name to a function taking a torch.Generator and returning (tensors, meta):
tensors a dict of name -> torch.Tensor (inputs, outputs, gradients), meta a
dict of str -> str (the op's arguments). Each case is written to
OUTDIR/<name>.safetensors. Runs on Debian's python3-torch (/usr/bin/python3).
"""
import importlib.util
import os
import sys
import zlib

import torch

from stio import save

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    out = sys.argv[1]
    only = sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    n = 0
    for fn in sorted(os.listdir(HERE)):
        if not (fn.startswith("cases_") and fn.endswith(".py")):
            continue
        spec = importlib.util.spec_from_file_location(fn[:-3], os.path.join(HERE, fn))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for name, make in mod.CASES.items():
            if only and not any(s in name for s in only):
                continue
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()) % (2**31))
            tensors, meta = make(g)
            save(os.path.join(out, name + ".safetensors"), tensors, meta)
            n += 1
    print(f"parity fixtures: {n} cases written to {out}")


if __name__ == "__main__":
    main()
