"""table.py - merges the "key value" files of bench_ops and peer_ops.py into
one Markdown table. The first file is qkv, the others its peers.

GEMM rows are in GFLOP/s (2 n^3 / time, higher is better), the other rows
in ms per forward+backward iteration (lower is better). The last column is
qkv's speed over the fastest peer's: above 1, qkv is faster.
"""
import sys


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if key:
                rows[key] = value
    return rows


def number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def main(paths):
    qkv, peers = load(paths[0]), [load(p) for p in paths[1:]]
    head = ["", qkv["impl"]] + [p["impl"] for p in peers] + ["qkv / fastest torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, ours, theirs, higher_is_better, unit):
        best = [t for t in theirs if t is not None]
        best = (max(best) if higher_is_better else min(best)) if best else None
        cells = [label, fmt(ours, unit)] + [fmt(t, unit) for t in theirs]
        if ours is not None and best:
            cells.append(f"{(ours / best if higher_is_better else best / ours):.2f}x")
        else:
            cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")

    def fmt(v, unit):
        return "n/a" if v is None else f"{v:.1f} {unit}" if unit == "GFLOP/s" else f"{v:.2f} {unit}"

    def gflops(ms, n):
        return None if ms is None else 2.0 * n**3 / (ms * 1e-3) / 1e9

    for n in (256, 1024, 2048):
        theirs = [gflops(number(p.get(f"matmul_{n}")), n) for p in peers]
        row(f"matmul {n}x{n} (grads off)", gflops(number(qkv.get(f"matmul_{n}")), n), theirs,
            True, "GFLOP/s")
    for n in (256, 1024, 2048):
        theirs = [gflops(number(p.get(f"matmul_{n}")), n) for p in peers]
        row(f"  qkv built-in GEMM {n} (BLAS=none)", gflops(number(qkv.get(f"gemm_builtin_{n}")), n),
            theirs, True, "GFLOP/s")
    for key, label in (("softmax", "softmax (4096, 1024) fwd+bwd"),
                       ("layer_norm", "layer norm (4096, 1024) +w+b fwd+bwd"),
                       ("gelu", "GELU (4096, 1024) fwd+bwd")):
        row(label, number(qkv.get(key)), [number(p.get(key)) for p in peers], False, "ms")
    rss = [number(qkv.get("peak_rss_mb"))] + [number(p.get("peak_rss_mb")) for p in peers]
    lines.append("| peak RSS of the process | " + " | ".join(fmt(r, "MB") for r in rss) + " | |")
    lines.append("| threads | " + " | ".join([qkv["threads"]] + [p["threads"] for p in peers]) + " | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
