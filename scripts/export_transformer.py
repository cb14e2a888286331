#!/usr/bin/env python3
"""Loads a qkv translation model (model.safetensors from `qkv train
transformer`) into an equivalent PyTorch model and translates greedily.

    export_transformer.py MODEL [SENTENCE ...] [--save-pt FILE]

The model file holds the weights under d2l's state_dict names
(encoder.embedding.weight, encoder.blks.block0.attention.W_q.weight, ...,
decoder.dense.bias) and, in the safetensors metadata, "config" (JSON) and
"src_vocab" / "tgt_vocab" (tokens, one per line, id = line number).
docs/transformer.md describes the layout. With no sentence it translates
the book's four. Each line printed is "english => french", as `qkv
translate` prints it. Decoding recomputes the whole decoder at every step
under a causal mask, so it checks qkv's cached incremental decoding too.
"""
import json
import math
import struct
import sys

import torch
from torch import nn

BOOK = ["go .", "i lost .", "he's calm .", "i'm home ."]


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file, float32 tensors only."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    sizes = {"F32": 4, "F16": 2, "BF16": 2}
    tensors = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[h["dtype"]]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=dtype)
        assert t.numel() * sizes[h["dtype"]] == b - a
        tensors[name] = t.reshape(h["shape"]).float()
    return tensors, meta


class MultiHeadAttention(nn.Module):
    """d2l's: W_q, W_k, W_v, W_o without bias; keys at or beyond a valid
    length get the score -1e6; a causal mask hides later keys."""

    def __init__(self, e, heads):
        super().__init__()
        self.heads = heads
        self.W_q, self.W_k = nn.Linear(e, e, bias=False), nn.Linear(e, e, bias=False)
        self.W_v, self.W_o = nn.Linear(e, e, bias=False), nn.Linear(e, e, bias=False)

    def split(self, x):
        b, n, e = x.shape
        return x.reshape(b, n, self.heads, e // self.heads).transpose(1, 2)

    def forward(self, q, k, v, valid_lens=None, causal=False):
        b, n, e = q.shape
        q, k, v = self.split(self.W_q(q)), self.split(self.W_k(k)), self.split(self.W_v(v))
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        m = k.shape[2]
        if causal:
            s = s.masked_fill(torch.ones(n, m, dtype=torch.bool).triu(1), float("-inf"))
        if valid_lens is not None:
            hide = torch.arange(m)[None, :] >= valid_lens[:, None]  # (B, M)
            s = s.masked_fill(hide[:, None, None, :], -1e6)
        o = torch.softmax(s, dim=-1) @ v
        return self.W_o(o.transpose(1, 2).reshape(b, n, e))


class AddNorm(nn.Module):
    def __init__(self, e):
        super().__init__()
        self.ln = nn.LayerNorm(e)

    def forward(self, x, y):
        return self.ln(y + x)


class PositionWiseFFN(nn.Module):
    def __init__(self, e, f):
        super().__init__()
        self.dense1, self.dense2 = nn.Linear(e, f), nn.Linear(f, e)

    def forward(self, x):
        return self.dense2(torch.relu(self.dense1(x)))


class EncoderBlock(nn.Module):
    def __init__(self, e, f, h):
        super().__init__()
        self.attention, self.addnorm1 = MultiHeadAttention(e, h), AddNorm(e)
        self.ffn, self.addnorm2 = PositionWiseFFN(e, f), AddNorm(e)

    def forward(self, x, valid_lens):
        y = self.addnorm1(x, self.attention(x, x, x, valid_lens))
        return self.addnorm2(y, self.ffn(y))


class DecoderBlock(nn.Module):
    def __init__(self, e, f, h):
        super().__init__()
        self.attention1, self.addnorm1 = MultiHeadAttention(e, h), AddNorm(e)
        self.attention2, self.addnorm2 = MultiHeadAttention(e, h), AddNorm(e)
        self.ffn, self.addnorm3 = PositionWiseFFN(e, f), AddNorm(e)

    def forward(self, x, memory, valid_lens):
        y = self.addnorm1(x, self.attention1(x, x, x, causal=True))
        z = self.addnorm2(y, self.attention2(y, memory, memory, valid_lens))
        return self.addnorm3(z, self.ffn(z))


def positions(t, e):
    """d2l's sinusoid, built in float32 as d2l builds it."""
    x = torch.arange(t, dtype=torch.float32).reshape(-1, 1) / torch.pow(
        10000, torch.arange(0, e, 2, dtype=torch.float32) / e)
    p = torch.zeros(t, e)
    p[:, 0::2], p[:, 1::2] = torch.sin(x), torch.cos(x)
    return p


class Coder(nn.Module):
    def __init__(self, vocab, e, f, h, n, decoder):
        super().__init__()
        self.e = e
        self.embedding = nn.Embedding(vocab, e)
        self.blks = nn.Sequential()
        for i in range(n):
            self.blks.add_module("block" + str(i),
                                 (DecoderBlock if decoder else EncoderBlock)(e, f, h))
        if decoder:
            self.dense = nn.Linear(e, vocab)

    def embed(self, ids):
        return self.embedding(ids) * math.sqrt(self.e) + positions(ids.shape[1], self.e)


class Seq2Seq(nn.Module):
    """d2l's EncoderDecoder(TransformerEncoder, TransformerDecoder)."""

    def __init__(self, cfg):
        super().__init__()
        e, f, h = cfg["d_model"], cfg["d_ffn"], cfg["n_heads"]
        self.encoder = Coder(cfg["src_vocab"], e, f, h, cfg["n_enc"], False)
        self.decoder = Coder(cfg["tgt_vocab"], e, f, h, cfg["n_dec"], True)

    def encode(self, src, valid):
        x = self.encoder.embed(src)
        for b in self.encoder.blks:
            x = b(x, valid)
        return x

    def decode(self, ids, memory, valid):
        y = self.decoder.embed(ids)
        for b in self.decoder.blks:
            y = b(y, memory, valid)
        return self.decoder.dense(y)


def preprocess(s):
    """fra_eng's: U+202F and U+00A0 to spaces, lowercase, a space before
    , . ! ? not preceded by one."""
    s = s.replace("\u202f", " ").replace("\xa0", " ").lower()
    return "".join(" " + c if i > 0 and c in ",.!?" and s[i - 1] != " " else c
                   for i, c in enumerate(s))


def load(path):
    tensors, meta = read_safetensors(path)
    cfg = json.loads(meta["config"])
    src_vocab, tgt_vocab = meta["src_vocab"].split("\n"), meta["tgt_vocab"].split("\n")
    model = Seq2Seq(cfg)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model, cfg, src_vocab, tgt_vocab


@torch.no_grad()
def translate(model, cfg, src_vocab, tgt_vocab, sentence):
    steps = cfg["num_steps"]
    sid = {t: i for i, t in enumerate(src_vocab)}
    ids = [sid.get(t, 0) for t in preprocess(sentence).split(" ")] + [sid["<eos>"]]
    ids = ids[:steps]
    valid = len(ids)
    ids += [sid["<pad>"]] * (steps - valid)
    memory = model.encode(torch.tensor([ids]), torch.tensor([valid]))
    bos, eos = tgt_vocab.index("<bos>"), tgt_vocab.index("<eos>")
    out = [bos]
    for _ in range(steps):
        logits = model.decode(torch.tensor([out]), memory, torch.tensor([valid]))
        nxt = int(logits[0, -1].argmax())
        if nxt == eos:
            break
        out.append(nxt)
    return " ".join(tgt_vocab[i] for i in out[1:])


def main(argv):
    args, save_pt = [], None
    it = iter(argv[1:])
    for a in it:
        if a == "--save-pt":
            save_pt = next(it)
        else:
            args.append(a)
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    model, cfg, src_vocab, tgt_vocab = load(args[0])
    if save_pt:
        torch.save(model.state_dict(), save_pt)
    for s in args[1:] or BOOK:
        print(f"{s} => {translate(model, cfg, src_vocab, tgt_vocab, s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
