"""PyTorch side of bench/bench_mha.c: nn.MultiheadAttention self-attention,
forward + backward, sequence first, bias, no dropout, need_weights=False.

    /usr/bin/python3 bench/peer_mha.py            # both shapes, 2 threads

Time: median of the steps after one warm-up. Memory: each shape runs in a
fresh process and reports the growth of peak RSS (resource.getrusage
ru_maxrss) over the warm-up and timed steps, above the RSS after the model
and input were built. tracemalloc cannot see tensor memory; peak RSS also
counts allocator caching, so it is an upper bound on live tensor memory,
comparable to (not the same as) qkv's arena peak."""
import resource
import subprocess
import sys
import time

SHAPES = [(32, 128, 256, 8, 10), (4, 1024, 512, 8, 5)]


def one(B, N, E, H, reps):
    import torch
    torch.set_num_threads(2)
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(E, H, bias=True)
    x0 = torch.randn(N, B, E)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for it in range(reps + 1):
        t0 = time.perf_counter()
        x = x0.clone().requires_grad_()
        y, _ = m(x, x, x, need_weights=False)
        y.mean().backward()
        dt = time.perf_counter() - t0
        m.zero_grad(set_to_none=False)
        if it:
            times.append(dt)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(f"torch {torch.__version__} mha B={B} N={N} E={E} H={H} threads=2: "
          f"{times[len(times) // 2] * 1e3:.2f} ms/step, peak RSS growth {peak / 1024:.1f} MiB")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        one(*map(int, sys.argv[1:]))
    else:
        for s in SHAPES:
            subprocess.run([sys.executable, __file__, *map(str, s)], check=True)
