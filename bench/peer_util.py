"""peer_util.py - what the PyTorch sides of the model benchmarks
(peer_mha.py, peer_transformer.py, peer_vit.py) share; the twin of
bench/bench_util.h, with the same method, printed as "key value" lines:

- base: the resident memory after every import and one tiny step of the
  runtime (eager: a (8, 8) product forward and backward; --compile: the
  same through torch.compile, so that Inductor and its compiler are
  loaded), before the case builds anything;
- `warmup` untimed steps (with --compile the first ones compile: their
  time beyond the steady steps' is printed as compile time, apart); then
  the peak-RSS mark is reset (/proc/self/clear_refs) and `reps` steps are
  timed: their median, and the timed steps' peak RSS (VmHWM).

Peers: eager PyTorch as an expert would run it (torch.set_num_threads equal
to qkv's, Adam and clipping in their foreach forms, no graph breaks), and
--compile: torch.compile in its default mode (Inductor, CPU) over the
step's forward and loss, whose backward AOTAutograd compiles too; the
optimizer and clipping run eagerly, foreach. tracemalloc cannot see tensor
memory, hence RSS."""
import argparse
import inspect
import os
import resource
import time


def rss_now_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576


def hwm_mib():
    """VmHWM, the peak resident memory since the last reset, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_hwm():
    """Resets VmHWM to the resident memory now (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


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


class Peer:
    """The parsed command line, torch, and the mode's helpers."""

    def __init__(self, cases):
        ap = argparse.ArgumentParser()
        ap.add_argument("case", choices=sorted(cases))
        ap.add_argument("--threads", type=int,
                        default=int(os.environ.get("QKV_THREADS", "2") or 2))
        ap.add_argument("--compile", action="store_true",
                        help="torch.compile (default mode, Inductor on CPU)")
        args = ap.parse_args()
        import torch  # after the environment holds the thread counts
        self.torch, self.case, self.threads = torch, args.case, args.threads
        self.compiling = args.compile
        torch.set_num_threads(args.threads)
        torch.manual_seed(1)
        impl = f"torch {torch.__version__} ({blas_of_torch(torch)})"
        if self.compiling:
            impl = f"torch.compile {torch.__version__} (Inductor, CPU)"
        print(f"impl {impl}")
        print(f"threads {torch.get_num_threads()}")
        self.base = 0.0
        self.cpu_ms = None

    def compile(self, fn):
        """fn itself when eager, else torch.compile(fn) (default mode)."""
        return self.torch.compile(fn) if self.compiling else fn

    def start(self):
        """Call after every import: one tiny step of the runtime, then the
        base memory and a reset of the peak mark."""
        torch = self.torch
        a = torch.full((8, 8), 0.5, requires_grad=True)
        f = self.compile(lambda x: (x @ x).relu().sum())
        f(a).backward()
        with torch.no_grad():
            f(a)
        if self.compiling:  # the case's graphs and breaks counted from here
            torch._dynamo.utils.counters.clear()
        self.base = rss_now_mib()
        reset_hwm()

    def foreach(self, fn):
        """{'foreach': True} if fn takes it (torch 2.x clipping; Debian's
        1.13 has no foreach clip_grad_norm_), else {}."""
        return {"foreach": True} if "foreach" in inspect.signature(fn).parameters else {}

    def time_steps(self, step, warmup, reps):
        """Median milliseconds of `reps` calls of step() after `warmup`
        calls, and their median CPU time in self.cpu_ms; with --compile
        also the compile time (the warm-up calls' time beyond as many
        steady steps), in seconds."""
        if self.compiling:  # the first call compiles, the second may still
            warmup = max(warmup, 2)
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        warm = time.perf_counter() - t0
        reset_hwm()
        ms, cpu = [], []
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            step()
            ms.append(1e3 * (time.perf_counter() - t))
            cpu.append(1e3 * (time.process_time() - c))
        ms.sort()
        cpu.sort()
        med = ms[len(ms) // 2]
        self.cpu_ms = cpu[len(cpu) // 2]
        self.compile_s = max(0.0, warm - warmup * med * 1e-3)
        return med

    def report(self, key, ms, params=(), optim=None):
        """The same keys as bench_report in bench_util.h."""
        peak = hwm_mib()
        n = sum(p.numel() for p in params)
        grads = sum(p.numel() for p in params if p.grad is not None)
        state = 0
        if optim is not None:
            for s in optim.state.values():
                state += sum(v.numel() for v in s.values() if hasattr(v, "numel") and v.dim() > 0)
        print(f"{key}_ms {ms:.3f}")
        if self.cpu_ms is not None:  # user + sys of every thread, as bench_util.h
            print(f"{key}_cpu_ms {self.cpu_ms:.3f}")
        print(f"{key}_peak_mib {peak:.1f}")
        print(f"{key}_params_mib {4 * (n + grads) / 1048576:.1f}")
        print(f"{key}_optim_mib {4 * state / 1048576:.1f}")
        print(f"{key}_rss_mib {peak_rss_mib():.1f}")
        print(f"{key}_base_mib {self.base:.1f}")
        if self.compiling:
            print(f"{key}_compile_s {self.compile_s:.1f}")
            c = self.torch._dynamo.utils.counters
            print(f"{key}_graphs {c['stats']['unique_graphs']}")
            print(f"{key}_graph_breaks {sum(c['graph_break'].values())}")
        print(flush=True, end="")
