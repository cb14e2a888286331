"""`qkv forward` against PyTorch: for each case, random module weights and
inputs go to safetensors files, `$QKV_BIN forward` runs on them, and every
output it writes must have the PyTorch module's shape and match it element
by element, |got - want| <= atol + rtol |want| (a handful of float32 GEMMs
and one softmax; TOL below, from the measured worst; a tolerance under
which zeros would pass fails too). Cases: torch.nn.MultiheadAttention (self and cross
attention, kdim/vdim, bias on and off, batch_first both ways, bool and
float masks of both kinds, a uint8 attn_mask, weights averaged, per head and not asked
for, heads from --heads and from __metadata__, unbatched inputs), d2l
r0.17's AdditiveAttention and DotProductAttention (re-created here) with
valid lengths 1-D and 2-D, integer and float, torch.nn.Transformer (float and
bool masks mixed as PyTorch's tutorial mixes them, post- and pre-norm, ReLU and
GELU, from __metadata__ or from --norm-first and --activation, sequence and
batch first) and torchvision's VisionTransformer.

Usage: forward_cli.py [QKV_BIN] (else $QKV_BIN, else build/qkv). Prints one
line per case; exits 1 if any case fails."""
import math
import os
import subprocess
import sys
import tempfile
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stio  # noqa: E402
from d2l_ref import AdditiveAttention, DotProductAttention  # noqa: E402

# (atol, rtol) per output: values of a few units; attention weights in [0, 1].
# The worst measured |got - want| / (atol + rtol |want|) is 0.2 for both.
TOL = {"default": (1e-6, 1e-6), "weights": (1e-7, 1e-6)}


def r(g, *shape):
    return torch.randn(*shape, generator=g)


def fill(g, module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.6)


# ---- d2l r0.17 (d2l/torch.py), re-created ----

# ---- cases: each returns (weights, meta, inputs, args, expected outputs) ----

def mha(g, E=8, H=2, B=2, N=5, M=5, kdim=None, vdim=None, bias=True, batch_first=False,
        self_attn=False, kpm=None, mask=None, need_weights=True, average=True,
        heads_in_meta=False, unbatched=False):
    """kpm: None, "bool" or "float" (1.13 refuses uint8); mask: None, "bool2", "float2",
    "bool3" (B*H, N, M) or "uint8"."""
    m = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim,
                              batch_first=batch_first).eval()
    fill(g, m)
    kd, vd = kdim or E, vdim or E
    if unbatched:
        seq = lambda n, c: (n, c)  # noqa: E731
    elif batch_first:
        seq = lambda n, c: (B, n, c)  # noqa: E731
    else:
        seq = lambda n, c: (n, B, c)  # noqa: E731
    if self_attn:
        q = k = v = r(g, *seq(N, E))
    else:
        q, k, v = r(g, *seq(N, E)), r(g, *seq(M, kd)), r(g, *seq(M, vd))
    inputs = {"query": q, "key": k, "value": v}
    kw = {}
    nb = 1 if unbatched else B
    if kpm:
        # every query keeps at least key 0, so no row is fully masked
        p = torch.rand(nb, M, generator=g) < 0.4
        p[:, 0] = False
        if unbatched:
            p = p[0]
        kw["key_padding_mask"] = p if kpm == "bool" else p.float() * -3.0
    if mask:
        shape = (nb * H, N, M) if mask == "bool3" else (N, M)
        a = torch.rand(*shape, generator=g) < 0.4
        a[..., 0] = False
        kw["attn_mask"] = {"bool2": a, "bool3": a, "uint8": a.to(torch.uint8),
                           "float2": torch.where(a, torch.tensor(float("-inf")),
                                                 r(g, *shape))}[mask]
    inputs.update(kw)
    with torch.no_grad():
        out, w = m(q, k, v, need_weights=need_weights, average_attn_weights=average, **kw)
    expected = {"attn_output": out}
    if need_weights:
        expected["attn_weights"] = w
    args = []
    meta = {"num_heads": H} if heads_in_meta else None
    if not heads_in_meta:
        args += ["--heads", str(H)]
    if batch_first:
        args.append("--batch-first")
    if not need_weights:
        args.append("--no-weights")
    if not average:
        args.append("--per-head-weights")
    return m.state_dict(), meta, inputs, args, expected


def d2l(g, arch, lens=None, B=2, N=4, M=6, qs=5, ks=3, h=7, Dv=4):
    if arch == "additive":
        m = AdditiveAttention(ks, qs, h, 0.0).eval()
        fill(g, m)
    else:
        m = DotProductAttention(0.0).eval()
        qs = ks = 5
    q, k, v = r(g, B, N, qs), r(g, B, M, ks), r(g, B, M, Dv)
    inputs = {"queries": q, "keys": k, "values": v}
    if lens is not None:
        inputs["valid_lens"] = lens
    with torch.no_grad():
        out = m(q, k, v, None if lens is None else lens.clone())
    expected = {"output": out, "attention_weights": m.attention_weights}
    return m.state_dict(), None, inputs, [], expected


def transformer(g, E=8, H=2, ffn=16, enc=2, dec=2, B=2, S=5, T=4, norm_first=False,
                activation="relu", batch_first=False, masks="tutorial", flags=False):
    """torch.nn.Transformer with random weights (layer norms too). masks
    "tutorial": PyTorch's tutorial mix, a float causal tgt_mask
    (generate_square_subsequent_mask) with bool key padding masks; "mixed":
    float src_mask and memory_mask, bool tgt_mask and padding masks. flags:
    --norm-first and --activation on the command line instead of the
    weights' __metadata__. The output is computed with gradients on, so that
    PyTorch takes its reference path (its inference fast path zeroes padded
    rows)."""
    m = nn.Transformer(E, H, enc, dec, ffn, dropout=0.0, activation=activation,
                       norm_first=norm_first, batch_first=batch_first)
    fill(g, m)
    seq = (lambda n: (B, n, E)) if batch_first else (lambda n: (n, B, E))
    src, tgt = r(g, *seq(S)), r(g, *seq(T))
    pad_src = torch.zeros(B, S, dtype=torch.bool)
    pad_src[1, S - 2:] = True
    pad_tgt = torch.zeros(B, T, dtype=torch.bool)
    pad_tgt[1, T - 1] = True
    kw = {"src_key_padding_mask": pad_src, "tgt_key_padding_mask": pad_tgt,
          "memory_key_padding_mask": pad_src.clone()}
    if masks == "tutorial":
        kw["tgt_mask"] = nn.Transformer.generate_square_subsequent_mask(T)
    else:
        kw["src_mask"] = r(g, S, S)
        kw["memory_mask"] = r(g, T, S)
        kw["tgt_mask"] = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    out = m(src, tgt, **kw).detach()
    meta = {"num_heads": str(H)}
    args = []
    if flags:
        args += ["--activation", activation] + (["--norm-first"] if norm_first else [])
    else:
        meta.update(norm_first=str(int(norm_first)), activation=activation)
    if batch_first:
        args.append("--batch-first")
    return m.state_dict(), meta, dict(src=src, tgt=tgt, **kw), args, {"output": out}


def vit(g, channels=3, image=16, patch=4, layers=2, hidden=16, heads=4, mlp=32, classes=5,
        heads_in_meta=True):
    """torchvision's VisionTransformer with random weights (its head starts at zero, so
    every parameter is refilled); one-channel models replace conv_proj as docs/vit.md says."""
    from torchvision.models.vision_transformer import VisionTransformer
    m = VisionTransformer(image, patch, layers, heads, hidden, mlp, num_classes=classes).eval()
    if channels != 3:
        m.conv_proj = nn.Conv2d(channels, hidden, patch, patch)
    fill(g, m)
    x = r(g, 2, channels, image, image)
    with torch.no_grad():
        logits = m(x)
    meta = {"num_heads": str(heads)} if heads_in_meta else None
    args = [] if heads_in_meta else ["--heads", str(heads)]
    return m.state_dict(), meta, {"x": x}, args, {"logits": logits}


CASES = {
    "transformer_tutorial_masks": ("transformer", lambda g: transformer(g)),
    "transformer_mixed_masks_flags_batch_first": (
        "transformer", lambda g: transformer(g, enc=1, dec=2, norm_first=True, activation="gelu",
                                             batch_first=True, masks="mixed", flags=True)),
    "transformer_tutorial_masks_prenorm_meta": (
        "transformer", lambda g: transformer(g, H=4, norm_first=True, activation="gelu")),
    "vit_rgb_meta_heads": ("vit", lambda g: vit(g)),
    "vit_gray_flag_heads": ("vit", lambda g: vit(g, channels=1, image=12, patch=3, layers=1,
                                                 heads=2, heads_in_meta=False)),
    "mha_self_seq_first": ("mha", lambda g: mha(g, self_attn=True)),
    "mha_self_batch_first_kpm": ("mha", lambda g: mha(g, self_attn=True, batch_first=True,
                                                      kpm="bool")),
    "mha_cross_batch_first_per_head": ("mha", lambda g: mha(g, N=3, M=6, batch_first=True,
                                                            kpm="bool", average=False)),
    "mha_kdim_vdim_float_mask": ("mha", lambda g: mha(g, E=8, H=4, N=4, M=7, kdim=5, vdim=3,
                                                      mask="float2")),
    "mha_no_bias_bool3_mask_kpm": ("mha", lambda g: mha(g, bias=False, N=3, M=4, mask="bool3",
                                                        kpm="bool", average=False)),
    "mha_uint8_mask_no_weights": ("mha", lambda g: mha(g, mask="uint8", kpm="bool",
                                                       need_weights=False)),
    "mha_float_kpm_meta_heads": ("mha", lambda g: mha(g, H=4, kpm="float",
                                                      heads_in_meta=True)),
    "mha_unbatched": ("mha", lambda g: mha(g, N=3, M=4, unbatched=True, mask="bool3",
                                           kpm="bool", average=False)),
    "additive_no_lens": ("additive", lambda g: d2l(g, "additive")),
    "additive_lens1_int": ("additive", lambda g: d2l(g, "additive", torch.tensor([2, 6]))),
    "additive_lens2_float": ("additive", lambda g: d2l(
        g, "additive", torch.tensor([[1.0, 6.0, 2.5, 0.0], [4.0, 5.0, 3.0, 2.0]]))),
    "dot_no_lens": ("dot", lambda g: d2l(g, "dot")),
    "dot_lens1_int32_zero": ("dot", lambda g: d2l(g, "dot", torch.tensor([0, 3],
                                                                          dtype=torch.int32))),
    "dot_lens2_int": ("dot", lambda g: d2l(g, "dot", torch.tensor([[1, 6, 2, 3],
                                                                   [4, 5, 3, 2]]))),
}


def closeness(name, got, want):
    """max |got - want| / (atol + rtol |want|), inf for another shape or a NaN
    and when zeros would pass (then the tolerance says nothing)."""
    atol, rtol = TOL["weights" if name.endswith("weights") else "default"]
    if tuple(got.shape) != tuple(want.shape):
        return math.inf
    if not want.numel():
        return 0.0
    g, w = got.double(), want.double()
    r = ((g - w).abs() / (atol + rtol * w.abs())).max().item()
    largest = w.abs().max().item()
    if math.isnan(r) or (largest > 0 and largest * (1 - rtol) <= atol):
        return math.inf
    return r


def run_case(qkv, tmp, name, arch, fn, seed):
    """The worst relative difference of the outputs, or a message (str)."""
    g = torch.Generator().manual_seed(seed)
    weights, meta, inputs, args, expected = fn(g)
    wpath, ipath, opath = (os.path.join(tmp, f"{name}.{x}.safetensors")
                           for x in ("weights", "input", "output"))
    cmd = [qkv, "forward", "--arch", arch, "--input", ipath, "--output", opath] + args
    if weights:
        stio.save(wpath, weights, meta)
        cmd += ["--weights", wpath]
    stio.save(ipath, inputs)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return f"exit {p.returncode}: {' '.join(cmd)}\n{p.stdout}{p.stderr}"
    got, _ = stio.load(opath)
    if set(got) != set(expected):
        return f"outputs {sorted(got)}, expected {sorted(expected)}"
    parts = ", ".join(f"{k} {closeness(k, got[k], expected[k]):.3g}" for k in sorted(expected))
    if not max(closeness(k, got[k], expected[k]) for k in expected) <= 1:
        return f"|got - want| / (atol + rtol |want|) > 1: {parts}"
    return "ok " + parts


def main():
    warnings.filterwarnings("ignore", message="Byte tensor")
    qkv = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("QKV_BIN") or "build/qkv"
    failed = 0
    with tempfile.TemporaryDirectory(prefix="qkv-forward-") as tmp:
        for seed, (name, (arch, fn)) in enumerate(CASES.items()):
            err = run_case(qkv, tmp, name, arch, fn, 1000 + seed)
            ok = err.startswith("ok ")
            print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f" ({err[3:]})" if ok else f": {err}"))
            failed += not ok
    print(f"{len(CASES) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
