#!/usr/bin/env python3
"""The cost model of data-parallel training in docs/distributed.md.

A step of p ranks all-reduces S bytes of gradients in n_b buckets over a
ring (the algorithm NCCL and OpenMPI use for large messages):

    T_ar = 2 (p - 1) / p * S / beta + 2 (p - 1) * alpha * n_b

(each bucket: p - 1 reduce-scatter and p - 1 all-gather steps, each moving
S / (n_b p) bytes and paying the latency alpha). With the overlap, bucket k
may start once backward has finished with it; if the buckets become final
evenly through backward (a stack of equal blocks), the link serves them in
turn and the time left after backward is

    exposed = max(T_ar / n_b, T_ar - T_bwd (1 - 1 / n_b))

(the last bucket's transfer, or what the link could not catch up). The
efficiency against one rank's step without communication is
T_c / (T_c + exposed), T_c = forward + backward. `exposed_profile` is the
same with the buckets' measured sizes and start points (the trainer prints
them), which the runs with an injected link on this machine check.

Usage: scripts/ddp_cost_model.py           (the tables of the docs)
"""
import math

GB = 1e9


def t_allreduce(p, size, beta, alpha, n_b):
    if p <= 1:
        return 0.0
    return 2 * (p - 1) / p * size / beta + 2 * (p - 1) * alpha * n_b


def exposed_even(t_ar, t_bwd, n_b):
    return max(t_ar / n_b, t_ar - t_bwd * (1 - 1 / n_b))


def exposed_profile(t_bwd, sizes_bytes, starts_frac, p, beta, alpha):
    """Buckets of the given sizes, final at the given fractions of backward,
    served in order by the link: when the last one is done, after backward."""
    done = 0.0
    for s, f in zip(sizes_bytes, starts_frac):
        ready = f * t_bwd
        done = max(done, ready) + t_allreduce(p, s, beta, alpha, 1)
    return max(0.0, done - t_bwd)


MODELS = {
    # name: (gradient bytes, per-rank batch, seconds of forward + backward
    # per image on a 2-core qkv rank, how that time was found)
    "ViT-B/16": (86.6e6 * 4, 32, 3 * 1.402 / 8,
                 "3 x the measured inference, 1.40 s per batch of 8 (BENCHMARKS.md)"),
    "DETR-R50": (41.3e6 * 4, 4, 3 * 1.402 / 8 * 86 / 17.6,
                 "ViT-B/16's by FLOPs: 86 against 17.6 GFLOPs per image"),
}
NETWORKS = {"25 Gb/s": (25 / 8 * GB, 25e-6), "100 Gb/s": (100 / 8 * GB, 5e-6)}
BUCKET = 25 * 2**20  # DDP's default bucket, QKV_BUCKET_KB=25600
RANKS = (8, 64, 512)


def min_compute_for(eff, p, size, beta, alpha, n_b):
    """The smallest T_c (backward 2/3 of it) at which the overlapped step
    reaches efficiency eff."""
    lo, hi = 1e-4, 1e4
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        t_ar = t_allreduce(p, size, beta, alpha, n_b)
        e = mid / (mid + exposed_even(t_ar, 2 / 3 * mid, n_b))
        lo, hi = (lo, mid) if e >= eff else (mid, hi)
    return hi


def main():
    print("| model | network | ranks | all-reduce | exposed, overlapped | efficiency "
          "(no overlap) | efficiency (overlap) | T_c for 90% |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (size, batch, per_img, _) in MODELS.items():
        t_c = batch * per_img
        n_b = math.ceil(size / BUCKET)
        for net, (beta, alpha) in NETWORKS.items():
            for p in RANKS:
                t_ar = t_allreduce(p, size, beta, alpha, n_b)
                ex = exposed_even(t_ar, 2 / 3 * t_c, n_b)
                need = min_compute_for(0.9, p, size, beta, alpha, n_b)
                print(f"| {name} | {net} | {p} | {t_ar * 1e3:.0f} ms | {ex * 1e3:.0f} ms | "
                      f"{t_c / (t_c + t_ar):.3f} | {t_c / (t_c + ex):.3f} | "
                      f"{need * 1e3:.0f} ms |")
    for name, (size, batch, per_img, how) in MODELS.items():
        print(f"\n{name}: {size / 1e6:.0f} MB of gradients in "
              f"{math.ceil(size / BUCKET)} buckets of 25 MiB; T_c = {batch} x "
              f"{per_img:.2f} s = {batch * per_img:.1f} s per step ({how})")


if __name__ == "__main__":
    main()
