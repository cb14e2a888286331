"""table_models.py - the models part of `make bench`'s report, from the
"key value" files bench/run.sh leaves in one directory per thread count
(qkv.txt, eager.txt, compile.txt, ort.txt, debian.txt, load.txt):

    table_models.py [--export FILE] DIR [DIR...]

Per thread count, a speed table and a memory table, then one table of the
one-off costs (compiling, exporting, building a session) that the step
times leave out.

Each side of each case ran in several rounds (fresh processes, interleaved
with the other sides); a side's figure is the median of its rounds and the
range their minimum and maximum. Rows are on equal work (qkv's *_full
cases, which compute what the peers compute); a row of qkv's trick
(packed rows, the class token alone in the last block) follows its
equal-work row, against the same peers, with the trick's gain. The ratio
is qkv's speed over the fastest peer's (peer time / qkv time: above 1,
qkv is faster), with its range (slowest peer round / fastest qkv round
... fastest / slowest); when the two sides' ranges overlap the row is a
tie, not a win or a loss. Memory: each side's peak RSS over its timed
steps minus its base (the RSS after its imports and a tiny warm-up step),
median of the rounds; qkv's ratio is against the smallest peer."""
import os
import sys

# key (qkv's equal-work case, which the peers run too), label, qkv's trick
# case or None, the trick's label
CASES = [
    ("mha_small", "MHA self-attention fwd+bwd, batch 32, len 128, width 256, 8 heads",
     None, None),
    ("mha_large", "MHA self-attention fwd+bwd, batch 4, len 1024, width 512, 8 heads",
     None, None),
    ("tf_book_full", "Transformer train step, book r0.17 (E 32, batch 64 x 10), padding computed",
     "tf_book", "qkv packing the rows that reach the loss (padding skipped)"),
    ("tf_large_full", "Transformer train step, E 256, FFN 1024, batch 128 x 35, vocab "
     "10012/17851, padding computed", "tf_large", "qkv packing the rows (padding skipped)"),
    ("vit_train_full", "ViT train step, book (96x96x1, patch 16, E 512, 2 blocks, batch 128, "
     "SGD), every token", "vit_train", "qkv computing the class token alone in the last block"),
    ("vitb16_b1_full", "ViT-B/16 inference, 224x224, batch 1, every token", "vitb16_b1",
     "qkv computing the class token alone in the last block"),
    ("vitb16_b8_full", "ViT-B/16 inference, 224x224, batch 8, every token", "vitb16_b8",
     "qkv computing the class token alone in the last block"),
    ("moco_v2_full", "MoCo v2 train step, `qkv train moco`'s default (ResNet-18 of width 16, "
     "small-image stem, 28x28x1, MLP head, batch 256, K 4096, shuffle BN in 8 groups, SGD)",
     None, None),
    ("moco_vit_full", "MoCo v2 train step, ViT 28x28x1 (patch 4, E 96, 4 blocks), MLP head, "
     "batch 256, K 4096, AdamW, every token", "moco_vit",
     "qkv computing the class token alone in the last block"),
    ("detr_r50_full", "DETR-R50 inference, 800x1066, batch 1 (frozen BN, 6 + 6 layers, "
     "100 queries)", None, None),
    ("detr_train_full", "DETR train step, `qkv train detr`'s default (ResNet-18 "
     "of width 32, 128x128x1, "
     "batch 16, E 128, 3 + 3 layers, 20 queries; matching, set loss, AdamW)", None, None),
]
# the peers' files, in column order
PEERS = [("eager", "PyTorch eager"), ("compile", "torch.compile"), ("ort", "ONNX Runtime"),
         ("debian", "Debian PyTorch")]


def load(path):
    """key -> every value the file gives it (each round repeats its keys)."""
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().partition(" ")
                if key:
                    rows.setdefault(key, []).append(value)
    return rows


def numbers(rows, key):
    out = []
    for v in rows.get(key, []):
        try:
            out.append(float(v))
        except ValueError:
            pass
    return out


def median(v):
    v = sorted(v)
    n = len(v)
    return None if not n else v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def stats(rows, key):
    """(median, min, max) of a key's rounds, or None."""
    v = numbers(rows, key)
    return (median(v), min(v), max(v)) if v else None


def ms_cell(s):
    if s is None:
        return "n/a"
    f = (lambda x: f"{x:.2f}") if s[0] < 10 else (lambda x: f"{x:.1f}") if s[0] < 1000 \
        else (lambda x: f"{x:.0f}")
    return f"{f(s[0])} [{f(s[1])}-{f(s[2])}]"


def ratio_cell(q, p):
    """qkv's speed over the peer's with its range; a tie when the ranges
    overlap."""
    if q is None or p is None:
        return "n/a"
    r, lo, hi = p[0] / q[0], p[1] / q[2], p[2] / q[1]
    cell = f"{r:.2f}x [{lo:.2f}-{hi:.2f}]"
    return f"tie ({cell})" if lo <= 1 <= hi else cell


def mib(v):
    return "n/a" if v is None else f"{v:.1f}" if v < 10 else f"{v:.0f}"


def above_base(rows, key):
    """Median over the rounds of the timed steps' peak RSS minus the base,
    and of the peak itself."""
    peak, base = numbers(rows, f"{key}_peak_mib"), numbers(rows, f"{key}_base_mib")
    if not peak or len(peak) != len(base):
        return None, None
    return median([p - b for p, b in zip(peak, base)]), median(peak)


def speed_table(d, impls, peers, threads):
    rounds = max((len(numbers(impls["qkv"], f"{c[0]}_ms")) for c in CASES), default=0)
    head = [f"{threads} thread{'s' if threads != '1' else ''}: ms a step, median [min-max] "
            f"of {rounds} rounds", "qkv"] + [label for _, label in peers] + \
           ["fastest peer", "qkv speed / fastest peer", "load (1 min) before the rounds"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    loads = load(os.path.join(d, "load.txt"))
    for key, label, trick, trick_label in CASES:
        q = stats(impls["qkv"], f"{key}_ms")
        ps = [stats(impls[name], f"{key}_ms") for name, _ in peers]
        if q is None and all(p is None for p in ps):
            continue
        have = [(p, lab) for p, (_, lab) in zip(ps, peers) if p is not None]
        best = min(have, key=lambda x: x[0][0]) if have else (None, "n/a")
        ld = numbers(loads, key)
        load_cell = "n/a" if not ld else f"{min(ld):.2f}" if min(ld) == max(ld) \
            else f"{min(ld):.2f}-{max(ld):.2f}"
        out.append("| " + " | ".join([label, ms_cell(q)] + [ms_cell(p) for p in ps] +
                                     [best[1], ratio_cell(q, best[0]), load_cell]) + " |")
        t = stats(impls["qkv"], f"{trick}_ms") if trick else None
        if t is not None:
            gain = f"{q[0] / t[0]:.2f}x" if q else "n/a"
            out.append("| " + " | ".join(
                [f"  the same, {trick_label} (trick, not equal work; its gain: {gain})",
                 ms_cell(t)] +
                ["" for _ in peers] + [best[1], ratio_cell(t, best[0]), ""]) + " |")
    return out


def memory_table(impls, peers, threads):
    head = [f"peak memory, MiB above each side's base ({threads} thread"
            f"{'s' if threads != '1' else ''}; the whole peak in brackets)", "qkv: arena + params + optimizer", "qkv"] + \
           [label for _, label in peers] + ["qkv / smallest peer"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    q = impls["qkv"]
    for key, label, trick, _ in CASES:
        for k, lab in ((key, label), (trick, "  the same, with qkv's trick")):
            if not k or f"{k}_ms" not in q:
                continue
            a, p, o = (median(numbers(q, f"{k}_{x}_mib")) for x in ("arena", "params", "optim"))
            own = "n/a" if None in (a, p, o) else f"{mib(a)} + {mib(p)} + {mib(o)} = {mib(a + p + o)}"
            mine, whole = above_base(q, k)
            cells = [lab, own, f"{mib(mine)} ({mib(whole)})"]
            theirs = []
            for name, _ in peers:
                x, w = above_base(impls[name], key)  # the peers ran the equal-work case
                cells.append("" if x is None else f"{mib(x)} ({mib(w)})")
                if x is not None:
                    theirs.append(x)
            cells.append("n/a" if mine is None or not theirs or min(theirs) <= 0
                         else f"{mine / min(theirs):.2f}")
            out.append("| " + " | ".join(cells) + " |")
    return out


def oneoff_table(first, export):
    """torch.compile's compile time (round 1, with Inductor's cache empty;
    later rounds, the cache warm), its graphs and graph breaks and its whole
    process's peak; ONNX Runtime's export and session build."""
    c, o = first.get("compile", {}), first.get("ort", {})
    head = ["one-off costs (not in the step times)", "torch.compile: compile s, round 1 "
            "(cold cache)", "later rounds (warm cache), median", "graphs / graph breaks",
            "torch.compile: whole process's peak, MiB above base (compiling included)",
            "ONNX: torch.onnx.export s", "ONNX Runtime: session build s, median"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, _, _ in CASES:
        comp = numbers(c, f"{key}_compile_s")
        exp = numbers(export, f"{key}_export_s")
        sess = numbers(o, f"{key}_session_s")
        if not comp and not exp and not sess:
            continue
        graphs = numbers(c, f"{key}_graphs")
        breaks = numbers(c, f"{key}_graph_breaks")
        rss, base = numbers(c, f"{key}_rss_mib"), numbers(c, f"{key}_base_mib")
        whole = median([r - b for r, b in zip(rss, base)]) if rss and len(rss) == len(base) \
            else None
        out.append("| " + " | ".join([
            label,
            f"{comp[0]:.1f}" if comp else "",
            f"{median(comp[1:]):.1f}" if len(comp) > 1 else "",
            f"{max(graphs):.0f} / {max(breaks):.0f}" if graphs and breaks else "",
            mib(whole) if whole is not None else "",
            f"{exp[0]:.1f}" if exp else "",
            f"{median(sess):.1f}" if sess else ""]) + " |")
    return out


def main(argv):
    export = {}
    if len(argv) >= 2 and argv[0] == "--export":
        export, argv = load(argv[1]), argv[2:]
    out, first = [], None
    for d in argv:
        impls = {"qkv": load(os.path.join(d, "qkv.txt"))}
        for name, _ in PEERS:
            impls[name] = load(os.path.join(d, f"{name}.txt"))
        peers = [(name, label) for name, label in PEERS if impls[name]]
        threads = impls["qkv"].get("threads", ["?"])[0]
        names = [impls["qkv"].get("impl", ["qkv"])[0]] + \
                [impls[n].get("impl", [lab])[0] for n, lab in peers]
        out += [f"### Models, {threads} thread{'s' if threads != '1' else ''}", "",
                "Sides: " + "; ".join(names) + ".", ""]
        out += speed_table(d, impls, peers, threads) + [""]
        out += memory_table(impls, peers, threads) + [""]
        if first is None:
            first = impls
    if first is not None:
        out += ["### One-off costs", ""] + oneoff_table(first, export)
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
