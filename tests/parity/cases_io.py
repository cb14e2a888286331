"""Parity cases for src/io: safetensors dtypes written by PyTorch, float
narrowing as PyTorch rounds it, the d2l r0.17 English-French arrays, and
bilinear resizing as torch.nn.functional.interpolate.

Run as a script, it also checks a file that qkv wrote:
    python3 cases_io.py check-st FILE
exits 0 when every tensor of FILE matches what tests/test_io_safetensors.c
meant to write (see st_check below), 1 otherwise.
"""
import collections
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


# ---- safetensors ----

def _ints(n, lo, hi):
    """n integers spread over [lo, hi], both ends included (C recomputes
    them with the same formula: lo + (k * (hi - lo)) // (n - 1))."""
    return [lo + (k * (hi - lo)) // (n - 1) for k in range(n)]


def st_dtypes(g):
    """One tensor of each dtype, as PyTorch writes them; C checks the values
    against the formula of _ints and against the F64 copy `ref`."""
    ref = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 10
    t = {
        "ref": ref,
        "f32": ref.float(),
        "f16": ref.half(),
        "bf16": ref.bfloat16(),
        "i64": torch.tensor(_ints(7, -2**62, 2**62), dtype=torch.int64),
        "i32": torch.tensor(_ints(7, -2**31, 2**31 - 1), dtype=torch.int32),
        "i8": torch.tensor(_ints(7, -128, 127), dtype=torch.int8),
        "u8": torch.tensor(_ints(7, 0, 255), dtype=torch.uint8),
        "bool": torch.tensor([True, False, False, True, True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    return t, {"note": "qkv reads PyTorch", "ünï": "côdé"}


def st_halves(g):
    """Every F16 and BF16 bit pattern with its float32 value, and float32
    values (ties, subnormals, overflow) with their F16/BF16 roundings."""
    bits = np.arange(65536, dtype=np.uint16)
    f16 = torch.from_numpy(bits.view(np.float16).copy())
    bf16 = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)
    x = torch.cat([
        torch.randn(2000, generator=g) * 100,
        torch.randn(1000, generator=g) * 1e-5,       # f16 subnormals
        torch.randn(500, generator=g) * 1e-40,       # f32 subnormals
        torch.randn(500, generator=g) * 7e4,         # around f16 overflow
        torch.randn(500, generator=g) * 3e38,        # around bf16 overflow
        torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 65504.0, 65519.0,
                      65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26]),
    ])
    # exact ties between two F16 and two BF16 values: round half to even
    k = torch.arange(1, 300, dtype=torch.float64)
    ties = torch.cat([(1 + (2 * k + 1) * 2.0**-11), (1 + (2 * k + 1) * 2.0**-8)]).float()
    x = torch.cat([x, ties, -ties])
    return {
        "f16": f16, "f16_f32": f16.float(),
        "bf16": bf16, "bf16_f32": bf16.float(),
        "x": x, "x_f16": x.half().float(), "x_bf16": x.bfloat16().float(),
    }, {}


def st_check(path):
    """What test_io_safetensors.c writes: `ref` (F32, 3 x 4) and its copies
    narrowed to F16 and BF16, its transpose (written from a strided view),
    integers of every width and a metadata map."""
    from stio import load
    t, meta = load(path)
    ref = t["ref"]
    problems = []

    def same(name, want, exact=True):
        got = t.get(name)
        if got is None or got.dtype != want.dtype or got.shape != want.shape:
            problems.append(f"{name}: got {None if got is None else (got.dtype, got.shape)}, "
                            f"want {(want.dtype, want.shape)}")
        elif not torch.equal(got, want):
            problems.append(f"{name}: values differ: {got} vs {want}")

    same("f16", ref.half())
    same("bf16", ref.bfloat16())
    same("ref_t", ref.t().contiguous())
    same("i64", torch.tensor(_ints(9, -2**62, 2**62), dtype=torch.int64))
    same("i32", torch.tensor(_ints(9, -2**31, 2**31 - 1), dtype=torch.int32))
    same("i8", torch.tensor(_ints(9, -128, 127), dtype=torch.int8))
    same("u8", torch.tensor(_ints(9, 0, 255), dtype=torch.uint8))
    same("bool", torch.tensor([k % 3 == 0 for k in range(9)]))
    same("scalar", torch.tensor(-2.25))
    if meta != {"epoch": "7", "model": "qkv \"test\"\n"}:
        problems.append(f"metadata: {meta}")
    for p in problems:
        print("check-st:", p)
    return 1 if problems else 0


# ---- English-French, as d2l r0.17 (machine-translation-and-dataset) ----

def _preprocess(text):
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    out = [" " + c if i > 0 and c in ",.!?" and text[i - 1] != " " else c
           for i, c in enumerate(text)]
    return "".join(out)


def _tokenize(text, num_examples):
    source, target = [], []
    for i, line in enumerate(text.split("\n")):
        if num_examples and i > num_examples:  # d2l's bound: num_examples + 1 lines
            break
        parts = line.split("\t")
        if len(parts) == 2:
            source.append(parts[0].split(" "))
            target.append(parts[1].split(" "))
    return source, target


def _vocab(lines, min_freq, reserved):
    counts = collections.Counter(tok for line in lines for tok in line)
    itos = ["<unk>"] + reserved
    for tok, freq in sorted(counts.items(), key=lambda kv: kv[1], reverse=True):
        if freq >= min_freq and tok not in itos:
            itos.append(tok)
    return itos


def _array(lines, itos, num_steps):
    stoi = {t: i for i, t in enumerate(itos)}
    pad = stoi["<pad>"]
    rows = []
    for line in lines:
        ids = [stoi.get(t, 0) for t in line] + [stoi["<eos>"]]
        rows.append(ids[:num_steps] + [pad] * (num_steps - len(ids)))
    a = torch.tensor(rows)
    return a, (a != pad).sum(1)


def nmt(num_examples, num_steps, every=1):
    """The arrays of load_data_nmt (every `every`-th row, to keep the fixture
    of the whole file small) and both vocabularies."""
    path = os.path.join(ROOT, "..", "shared", "data", "fra-eng", "fra.txt")
    with open(path, encoding="utf-8") as f:
        text = _preprocess(f.read())
    src, tgt = _tokenize(text, num_examples)
    sv = _vocab(src, 2, ["<pad>", "<bos>", "<eos>"])
    tv = _vocab(tgt, 2, ["<pad>", "<bos>", "<eos>"])
    sa, sl = _array(src, sv, num_steps)
    ta, tl = _array(tgt, tv, num_steps)
    # the tokens themselves, NUL-separated, so that C can compare vocabularies
    sbytes = torch.tensor(list("\0".join(sv).encode()), dtype=torch.uint8)
    tbytes = torch.tensor(list("\0".join(tv).encode()), dtype=torch.uint8)
    sa, sl, ta, tl = sa[::every], sl[::every], ta[::every], tl[::every]
    return {"src": sa, "src_valid": sl, "tgt": ta, "tgt_valid": tl,
            "src_vocab": sbytes, "tgt_vocab": tbytes}, {
        "num_examples": str(num_examples), "num_steps": str(num_steps), "every": str(every),
        "n": str(len(src)),
        "src_vocab_size": str(len(sv)), "tgt_vocab_size": str(len(tv))}


# ---- bilinear resize ----

def resize(g, c, h, w, oh, ow):
    x = torch.rand(c, h, w, generator=g)
    y = torch.nn.functional.interpolate(x[None], size=(oh, ow), mode="bilinear",
                                        align_corners=False)[0]
    return {"x": x, "out": y}, {"oh": str(oh), "ow": str(ow)}


# ---- images, decoded as PIL's convert() + torchvision's ToTensor ----

def images(g):
    from PIL import Image
    data = os.path.join(ROOT, "tests", "data")
    t = {}
    for name, mode in [("rgb.png", "RGB"), ("rgba.png", "RGB"), ("palette.png", "RGB"),
                       ("interlaced.png", "RGB"), ("rgb.jpg", "RGB"), ("gray.png", "L"),
                       ("gray.jpg", "L"), ("bits.png", "L"), ("gray16.png", None)]:
        im = Image.open(os.path.join(data, name))
        if mode is None:  # 16 bits: scaled by 65535 (PIL's "L" would clip)
            a = torch.from_numpy(np.asarray(im).astype(np.int64))[None].float() / 65535
        else:
            a = torch.from_numpy(np.asarray(im.convert(mode)).copy())
            a = (a[None] if a.ndim == 2 else a.permute(2, 0, 1)).float().div(255)
        t[name.replace(".", "_")] = a.contiguous()
    return t, {}


CASES = {
    "io_images": images,
    "io_st_dtypes": st_dtypes,
    "io_st_halves": st_halves,
    "io_nmt_600": lambda g: nmt(600, 8),
    "io_nmt_all": lambda g: nmt(0, 10, every=997),
    "io_resize_down": lambda g: resize(g, 3, 17, 23, 7, 9),
    "io_resize_up": lambda g: resize(g, 2, 5, 4, 13, 11),
    "io_resize_mixed": lambda g: resize(g, 1, 6, 31, 19, 8),
}


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    if len(sys.argv) == 3 and sys.argv[1] == "check-st":
        sys.exit(st_check(sys.argv[2]))
    print(__doc__)
    sys.exit(2)
