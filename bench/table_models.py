"""table_models.py - merges the "key value" files of the model benchmarks
(bench_mha, bench_transformer, bench_vit and their peer_*.py twins) into two
Markdown tables: speed, then memory. The first file is qkv, the others its
peers, one file per implementation holding all its cases.

Speed ratios are qkv's speed over the peer's (peer time / qkv time): above
1, qkv is faster. Memory ratios compare what each process needed above its
runtime's resident memory before the benchmark built anything (peak RSS -
base): below 1, qkv needed less. A case run in several rounds (bench/run.sh
repeats the short ones, interleaved with the peers) counts by the median
of its rounds."""
import sys

# case, label, short label (memory table), unit: ms (per step), tokens/s, images/s
CASES = [
    ("mha_small", "MHA self-attention fwd+bwd, batch 32, len 128, width 256, 8 heads",
     "MHA (32, 128, 256)", "ms"),
    ("mha_large", "MHA self-attention fwd+bwd, batch 4, len 1024, width 512, 8 heads",
     "MHA (4, 1024, 512)", "ms"),
    ("tf_book", "Transformer train step, r0.17 book config (E 32, batch 64 x 10)",
     "Transformer, book", "tokens/s"),
    ("tf_book_full", "  the same, qkv computing the padding too (as PyTorch does)",
     "Transformer, book, padding computed", "tokens/s"),
    ("tf_large", "Transformer train step, E 256, FFN 1024, batch 128 x 35, vocab 10012/17851",
     "Transformer, large", "tokens/s"),
    ("vit_train", "ViT train step, book config (96x96x1, patch 16, E 512, 2 blocks, batch 128, SGD)",
     "ViT train, book", "images/s"),
    ("vitb16_b1", "ViT-B/16 inference, 224x224, batch 1", "ViT-B/16 inference, batch 1", "ms"),
    ("vitb16_b8", "ViT-B/16 inference, 224x224, batch 8", "ViT-B/16 inference, batch 8", "ms"),
]


def load(path):
    """key -> every value the file gives it (a case run in several rounds
    repeats its keys)."""
    rows = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if key:
                rows.setdefault(key, []).append(value)
    return rows


def number(rows, key):
    """The median of the key's numeric values (one round: its value)."""
    vals = []
    for v in rows.get(key, []):
        try:
            vals.append(float(v))
        except ValueError:
            pass
    if not vals:
        return None
    vals.sort()
    n = len(vals)
    return vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])


def rate(rows, case, unit):
    """(the figure in the row's unit, ms per step) or (None, None)."""
    ms = number(rows, f"{case}_ms")
    if ms is None or ms <= 0:
        return None, None
    if unit == "tokens/s":
        return number(rows, f"{case}_tokens") / (ms * 1e-3), ms
    if unit == "images/s":
        return number(rows, f"{case}_images") / (ms * 1e-3), ms
    return ms, ms


def fmt(v, unit):
    if v is None:
        return "n/a"
    return f"{v:.1f} ms" if unit == "ms" else f"{v:,.0f} {unit}"


def mib(v):
    return f"{v:.1f}" if v < 10 else f"{v:.0f}"


def main(paths):
    impls = [load(p) for p in paths]
    qkv, peers = impls[0], impls[1:]
    names = [i.get("impl", ["?"])[0] for i in impls]
    head = ["", *names] + [f"qkv speed / {p.split(' (')[0]}" for p in names[1:]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case, label, _, unit in CASES:
        figs = [rate(i, case, unit) for i in impls]
        cells = [label] + [fmt(f, unit) for f, _ in figs]
        q_ms = figs[0][1]
        for _, p_ms in figs[1:]:
            cells.append("n/a" if q_ms is None or p_ms is None else f"{p_ms / q_ms:.2f}x")
        out.append("| " + " | ".join(cells) + " |")
    out.append("| threads | " + " | ".join(i.get("threads", ["?"])[0] for i in impls)
               + " |" + " |" * len(peers))

    out.append("")
    head = ["peak memory, MiB", "qkv: arena + params&grads + optimizer = sum",
            *[f"{n.split(' (')[0]}: peak RSS (above base)" for n in names]]
    head += [f"qkv / {n.split(' (')[0]} (above base)" for n in names[1:]]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case, _, short, _ in CASES:
        a, p, o = (number(qkv, f"{case}_{k}_mib") for k in ("arena", "params", "optim"))
        own = "n/a" if None in (a, p, o) else f"{mib(a)} + {mib(p)} + {mib(o)} = {mib(a + p + o)}"
        cells = [short, own]
        above = []
        for i in impls:
            rss, base = number(i, f"{case}_rss_mib"), number(i, f"{case}_base_mib")
            if rss is None or number(i, f"{case}_ms") is None:
                cells.append("n/a")
                above.append(None)
            else:
                cells.append(f"{mib(rss)} ({mib(rss - base)})")
                above.append(rss - base)
        for x in above[1:]:
            cells.append("n/a" if above[0] is None or not x else f"{above[0] / x:.2f}")
        out.append("| " + " | ".join(cells) + " |")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
