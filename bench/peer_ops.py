"""peer_ops.py - PyTorch's side of `make bench`: the same measurements as
bench/bench_ops.c (same shapes, warm-up, median of timed batches), printed
as "key value" lines for bench/table.py.

    python peer_ops.py [--threads N]     (default: $QKV_THREADS, else 2)
"""
import argparse
import os
import resource
import time

import torch
import torch.nn.functional as F

WARMUP = 3
REPEATS = 7
BATCH_SECONDS = 0.15
ROWS, COLS = 4096, 1024


def time_ms(run):
    t0 = time.perf_counter()
    for _ in range(WARMUP):
        run()
    per = (time.perf_counter() - t0) / WARMUP
    iters = max(1, int(BATCH_SECONDS / per)) if per > 0 else 1
    ms = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(iters):
            run()
        ms.append(1e3 * (time.perf_counter() - t) / iters)
    ms.sort()
    return ms[REPEATS // 2]


def blas_of_torch():
    """The BLAS torch multiplies with, from its build configuration."""
    config = torch.__config__.show()
    if "Math Kernel Library" in config or "BLAS_INFO=mkl" in config:
        return "MKL"
    if "BLAS_INFO=open" in config:
        return "OpenBLAS"
    if "BLAS_INFO=generic" in config:  # Debian: the system libblas.so.3
        try:
            return "system BLAS: " + os.path.realpath("/etc/alternatives/libblas.so.3-x86_64-linux-gnu")
        except OSError:
            return "system BLAS"
    return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QKV_THREADS", "2") or 2))
    threads = ap.parse_args().threads
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    print(f"impl torch {torch.__version__} ({blas_of_torch()})")
    print(f"threads {torch.get_num_threads()}")

    with torch.no_grad():
        for n in (256, 1024, 2048):
            a, b = torch.randn(n, n), torch.randn(n, n)
            print(f"matmul_{n} {time_ms(lambda: torch.matmul(a, b)):.4f}", flush=True)

    x = torch.randn(ROWS, COLS)
    gout = torch.randn(ROWS, COLS)
    w = torch.randn(COLS)
    b = torch.randn(COLS)
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)

    def fwd_bwd(f):
        def run():
            x.grad = w.grad = b.grad = None
            f().backward(gout)
        return run

    ops = {
        "softmax": lambda: torch.softmax(x, -1),
        "layer_norm": lambda: F.layer_norm(x, (COLS,), w, b, 1e-5),
        "gelu": lambda: F.gelu(x),
    }
    for name, f in ops.items():
        print(f"{name} {time_ms(fwd_bwd(f)):.4f}", flush=True)

    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


if __name__ == "__main__":
    main()
