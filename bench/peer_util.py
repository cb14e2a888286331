"""peer_util.py - what the PyTorch sides of the model benchmarks
(peer_mha.py, peer_transformer.py, peer_vit.py) share; the twin of
bench/bench_util.h, with the same method: `warmup` untimed steps, then the
median of `reps` timed steps, printed as "key value" lines.

Memory: peak RSS of the process (getrusage ru_maxrss; each case runs in a
fresh process), and the RSS right after `import torch`, before the model or
data exist (base), so that peak - base is what the benchmark itself needed:
parameters, gradients, optimizer state, activations and whatever the
allocator keeps cached. tracemalloc cannot see tensor memory."""
import argparse
import os
import resource
import time


def rss_now_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def blas_of_torch(torch):
    """The BLAS torch multiplies with, from its build configuration."""
    config = torch.__config__.show()
    if "Math Kernel Library" in config or "BLAS_INFO=mkl" in config:
        return "MKL"
    if "BLAS_INFO=open" in config:
        return "OpenBLAS"
    if "BLAS_INFO=generic" in config:  # Debian: the system libblas.so.3
        return "OpenBLAS via libblas.so.3"
    return "unknown BLAS"


def start(cases):
    """Parses `CASE [--threads N]`, imports torch with that many threads and
    prints the header lines. Returns (torch, case)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=sorted(cases))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QKV_THREADS", "2") or 2))
    args = ap.parse_args()
    import torch  # after the environment holds the thread counts
    global _base
    _base = rss_now_mib()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    print(f"impl torch {torch.__version__} ({blas_of_torch(torch)})")
    print(f"threads {torch.get_num_threads()}")
    return torch, args.case


_base = 0.0


def time_steps(step, warmup, reps):
    """Median milliseconds of `reps` calls of step() after `warmup` calls."""
    ms = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        step()
        t = time.perf_counter() - t0
        if i >= warmup:
            ms.append(1e3 * t)
    ms.sort()
    return ms[len(ms) // 2]


def report(key, ms, params=(), optim=None):
    """The same keys as bench_report in bench_util.h."""
    n = sum(p.numel() for p in params)
    grads = sum(p.numel() for p in params if p.grad is not None)
    state = 0
    if optim is not None:
        for s in optim.state.values():
            state += sum(v.numel() for v in s.values() if hasattr(v, "numel") and v.dim() > 0)
    print(f"{key}_ms {ms:.3f}")
    print(f"{key}_params_mib {4 * (n + grads) / 1048576:.1f}")
    print(f"{key}_optim_mib {4 * state / 1048576:.1f}")
    print(f"{key}_rss_mib {peak_rss_mib():.1f}")
    print(f"{key}_base_mib {_base:.1f}", flush=True)
