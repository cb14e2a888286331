"""Transformer parity: torch.nn.Transformer (post-norm and pre-norm, bool
and float masks, key padding), the book's translation model written
from d2l's definitions (valid lengths, -1e6 masking, sqrt(E) embeddings,
sinusoidal positions) and DETR's transformer written from
facebookresearch/detr's definitions (positional terms on queries and keys,
every decoder layer's output through the final norm, a padding mask). Each case stores the parameters under their
state_dict names, the inputs, the output, an upstream gradient `gout` and
the gradients of the inputs (grad_<name>) and of every parameter
(grad.<state_dict name>).

Parameters and inputs are float32, what qkv computes with; the output and
the gradients are computed in float64 from those very values, so that the
reference's own rounding (~1e-16) is nil and the C test measures qkv's
float32 error alone: the model's gradient check, far sharper than central
differences of a float32 forward four blocks deep (docs/testing.md)."""
import copy
import math

import torch
from torch import nn

D_MODEL, HEADS, FFN, LAYERS = 8, 2, 16, 2


def _backward_case(g, model, run, inputs, **meta):
    """Runs run(model64, **leaves) on a float64 copy of the model with
    float64 leaf copies of the float inputs, backward with a random float32
    `gout`; returns the float32 inputs and parameters, and out, gout and
    every gradient in float64."""
    model64 = copy.deepcopy(model).double()
    leaves = {k: (v.double() if v.dtype.is_floating_point else v.clone()).requires_grad_(
        v.dtype.is_floating_point and not k.endswith("mask")) for k, v in inputs.items()}
    out = run(model64, **leaves)
    gout = torch.randn(out.shape, generator=g)
    out.backward(gout.double())
    t = dict(inputs)
    t["out"] = out.detach()
    t["gout"] = gout
    for k, v in leaves.items():
        if v.requires_grad:
            t["grad_" + k] = v.grad
    for (k, p), p64 in zip(model.named_parameters(), model64.parameters()):
        t[k] = p.detach().clone()
        t["grad." + k] = p64.grad
    return t, {k: str(v) for k, v in meta.items()}


def _randomise(model, g):
    """Parameters drawn away from their defaults (layer norms not 1 and 0),
    so that a wrong name or transpose cannot pass."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            ln_weight = name.endswith("weight") and ("norm" in name or ".ln." in name)
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if ln_weight else 0.0))


def _torch_case(g, norm_first, float_masks):
    model = nn.Transformer(d_model=D_MODEL, nhead=HEADS, num_encoder_layers=LAYERS,
                           num_decoder_layers=LAYERS, dim_feedforward=FFN, dropout=0.0,
                           batch_first=True, norm_first=norm_first)
    _randomise(model, g)
    B, S, T = 2, 5, 4
    # src given sequence first: the C test reads it through a permuted view
    inputs = {"src_sbe": torch.randn(S, B, D_MODEL, generator=g),
              "tgt": torch.randn(B, T, D_MODEL, generator=g)}
    pad_src = torch.tensor([[0, 0, 0, 0, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    pad_tgt = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    if float_masks:
        inputs["src_mask"] = torch.randn(S, S, generator=g)
        inputs["tgt_mask"] = torch.zeros(T, T).masked_fill(causal, float("-inf"))
        inputs["memory_mask"] = torch.randn(T, S, generator=g)
        # no key padding here: PyTorch 1.13 merges a float key_padding_mask
        # into a float attn_mask with masked_fill(float mask), which is not
        # the sum its documentation promises; bool key padding is the
        # other cases' business
    else:
        inputs["tgt_mask"] = causal
        inputs["src_key_padding_mask"] = pad_src
        inputs["tgt_key_padding_mask"] = pad_tgt
        inputs["memory_key_padding_mask"] = pad_src.clone()

    def run(m, src_sbe, tgt, **masks):
        return m(src_sbe.transpose(0, 1), tgt, **masks)

    t, meta = _backward_case(g, model, run, inputs, norm_first=int(norm_first),
                             float_masks=int(float_masks))
    for k in list(t):
        if t[k].dtype == torch.bool:
            t[k] = t[k].float()
    return t, meta


# ---- the book's model, from d2l's definitions ----

def _masked_softmax(x, valid_lens):
    if valid_lens is None:
        return torch.softmax(x, dim=-1)
    shape = x.shape
    lens = torch.repeat_interleave(valid_lens, shape[1]) if valid_lens.dim() == 1 \
        else valid_lens.reshape(-1)
    flat = x.reshape(-1, shape[-1])
    keep = torch.arange(shape[-1])[None, :] < lens[:, None]
    flat = flat.masked_fill(~keep, -1e6)
    return torch.softmax(flat.reshape(shape), dim=-1)


class _MHA(nn.Module):
    def __init__(self, e, h):
        super().__init__()
        self.h = h
        self.W_q, self.W_k = nn.Linear(e, e, bias=False), nn.Linear(e, e, bias=False)
        self.W_v, self.W_o = nn.Linear(e, e, bias=False), nn.Linear(e, e, bias=False)

    def split(self, x):
        b, n, e = x.shape
        return x.reshape(b, n, self.h, e // self.h).permute(0, 2, 1, 3).reshape(b * self.h, n, -1)

    def forward(self, q, k, v, valid_lens):
        b, n, e = q.shape
        q, k, v = self.split(self.W_q(q)), self.split(self.W_k(k)), self.split(self.W_v(v))
        if valid_lens is not None:
            valid_lens = torch.repeat_interleave(valid_lens, repeats=self.h, dim=0)
        w = _masked_softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), valid_lens)
        o = (w @ v).reshape(b, self.h, n, -1).permute(0, 2, 1, 3).reshape(b, n, e)
        return self.W_o(o)


class _AddNorm(nn.Module):
    def __init__(self, e):
        super().__init__()
        self.ln = nn.LayerNorm(e)

    def forward(self, x, y):
        return self.ln(y + x)


class _FFN(nn.Module):
    def __init__(self, e, f):
        super().__init__()
        self.dense1, self.dense2 = nn.Linear(e, f), nn.Linear(f, e)

    def forward(self, x):
        return self.dense2(torch.relu(self.dense1(x)))


class _EncBlock(nn.Module):
    def __init__(self, e, f, h):
        super().__init__()
        self.attention, self.addnorm1 = _MHA(e, h), _AddNorm(e)
        self.ffn, self.addnorm2 = _FFN(e, f), _AddNorm(e)

    def forward(self, x, valid_lens):
        y = self.addnorm1(x, self.attention(x, x, x, valid_lens))
        return self.addnorm2(y, self.ffn(y))


class _DecBlock(nn.Module):
    def __init__(self, e, f, h):
        super().__init__()
        self.attention1, self.addnorm1 = _MHA(e, h), _AddNorm(e)
        self.attention2, self.addnorm2 = _MHA(e, h), _AddNorm(e)
        self.ffn, self.addnorm3 = _FFN(e, f), _AddNorm(e)

    def forward(self, x, enc, enc_valid):
        b, t, _ = x.shape
        dec_valid = torch.arange(1, t + 1).repeat(b, 1)  # training: causal
        y = self.addnorm1(x, self.attention1(x, x, x, dec_valid))
        z = self.addnorm2(y, self.attention2(y, enc, enc, enc_valid))
        return self.addnorm3(z, self.ffn(z))


def _positions(t, e, dtype):
    x = torch.arange(t, dtype=dtype).reshape(-1, 1) / torch.pow(
        10000, torch.arange(0, e, 2, dtype=dtype) / e)
    p = torch.zeros(t, e, dtype=dtype)
    p[:, 0::2], p[:, 1::2] = torch.sin(x), torch.cos(x)
    return p


class _Coder(nn.Module):
    def __init__(self, vocab, e, f, h, n, dec):
        super().__init__()
        self.e = e
        self.embedding = nn.Embedding(vocab, e)
        self.blks = nn.Sequential()
        for i in range(n):
            self.blks.add_module("block" + str(i), (_DecBlock if dec else _EncBlock)(e, f, h))
        if dec:
            self.dense = nn.Linear(e, vocab)

    def embed(self, ids):
        x = self.embedding(ids) * math.sqrt(self.e)
        return x + _positions(ids.shape[1], self.e, x.dtype)


class _Book(nn.Module):
    def __init__(self, vs, vt, e, f, h, n):
        super().__init__()
        self.encoder, self.decoder = _Coder(vs, e, f, h, n, False), _Coder(vt, e, f, h, n, True)

    def forward(self, src, src_valid, dec_in):
        x = self.encoder.embed(src)
        for b in self.encoder.blks:
            x = b(x, src_valid)
        y = self.decoder.embed(dec_in)
        for b in self.decoder.blks:
            y = b(y, x, src_valid)
        return self.decoder.dense(y)


def _book_case(g):
    vs, vt, B, S, T = 11, 13, 3, 6, 5
    model = _Book(vs, vt, D_MODEL, FFN, HEADS, LAYERS)
    _randomise(model, g)
    src = torch.randint(0, vs, (B, S), generator=g)
    src_valid = torch.tensor([6, 3, 1])
    dec_in = torch.randint(0, vt, (B, T), generator=g)
    t, meta = _backward_case(g, model, lambda m: m(src, src_valid, dec_in), {})
    t.update(src=src, src_valid=src_valid, dec_in=dec_in)
    return t, meta


# ---- DETR's transformer, from facebookresearch/detr's definitions ----
# Its layers take positional terms: the encoder adds pos to the queries and
# keys of its self-attention (values are the plain input), the decoder adds
# query_pos to its self-attention's queries and keys and to the
# cross-attention's queries, and pos to the cross-attention's keys. Pre-norm
# layers add them to the normalised input. The encoder ends in a norm only
# in pre-norm; the decoder always, and returns every layer's output through
# it. Layout (S, B, E), as DETR's.

def _pos(x, p):
    return x + p


class _DetrEncLayer(nn.Module):
    def __init__(self, e, h, f, pre):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(e, h, dropout=0.0)
        self.linear1, self.linear2 = nn.Linear(e, f), nn.Linear(f, e)
        self.norm1, self.norm2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.pre = pre

    def forward(self, x, pad, pos):
        ffn = lambda y: self.linear2(torch.relu(self.linear1(y)))  # noqa: E731
        if self.pre:
            y = self.norm1(x)
            x = x + self.self_attn(_pos(y, pos), _pos(y, pos), y, key_padding_mask=pad)[0]
            return x + ffn(self.norm2(x))
        x = self.norm1(x + self.self_attn(_pos(x, pos), _pos(x, pos), x,
                                          key_padding_mask=pad)[0])
        return self.norm2(x + ffn(x))


class _DetrDecLayer(nn.Module):
    def __init__(self, e, h, f, pre):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(e, h, dropout=0.0)
        self.multihead_attn = nn.MultiheadAttention(e, h, dropout=0.0)
        self.linear1, self.linear2 = nn.Linear(e, f), nn.Linear(f, e)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(e), nn.LayerNorm(e), nn.LayerNorm(e)
        self.pre = pre

    def forward(self, x, memory, pad, pos, qpos):
        ffn = lambda y: self.linear2(torch.relu(self.linear1(y)))  # noqa: E731
        cross = lambda y: self.multihead_attn(_pos(y, qpos), _pos(memory, pos), memory,  # noqa: E731
                                              key_padding_mask=pad)[0]
        if self.pre:
            y = self.norm1(x)
            x = x + self.self_attn(_pos(y, qpos), _pos(y, qpos), y)[0]
            x = x + cross(self.norm2(x))
            return x + ffn(self.norm3(x))
        x = self.norm1(x + self.self_attn(_pos(x, qpos), _pos(x, qpos), x)[0])
        x = self.norm2(x + cross(x))
        return self.norm3(x + ffn(x))


class _DetrStack(nn.Module):
    def __init__(self, layer, n, e, norm):
        super().__init__()
        self.layers = nn.ModuleList([layer() for _ in range(n)])
        if norm:
            self.norm = nn.LayerNorm(e)


class _DetrTransformer(nn.Module):
    def __init__(self, e, h, f, n_enc, n_dec, pre):
        super().__init__()
        self.encoder = _DetrStack(lambda: _DetrEncLayer(e, h, f, pre), n_enc, e, pre)
        self.decoder = _DetrStack(lambda: _DetrDecLayer(e, h, f, pre), n_dec, e, True)

    def forward(self, src, pad, query_embed, pos):
        """src, pos (S, B, E); pad (B, S) True on padding; query_embed (T, E)
        -> hs (L, B, T, E), memory (S, B, E)"""
        x = src
        for layer in self.encoder.layers:
            x = layer(x, pad, pos)
        memory = self.encoder.norm(x) if hasattr(self.encoder, "norm") else x
        qpos = query_embed.unsqueeze(1).repeat(1, src.shape[1], 1)
        y, hs = torch.zeros_like(qpos), []
        for layer in self.decoder.layers:
            y = layer(y, memory, pad, pos, qpos)
            hs.append(self.decoder.norm(y))
        return torch.stack(hs).transpose(1, 2), memory


class _Detr(nn.Module):
    """DETR's names: transformer.encoder.layers.N..., transformer.decoder.norm"""
    def __init__(self, *args):
        super().__init__()
        self.transformer = _DetrTransformer(*args)


def _detr_case(g, pre):
    E, H, F, n_enc, n_dec, B, S, T = 16, 4, 32, 2, 3, 2, 6, 5
    model = _Detr(E, H, F, n_enc, n_dec, pre)
    _randomise(model, g)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, 4:] = True  # the second image is padded: its last 2 positions
    inputs = {"src": torch.randn(B, S, E, generator=g), "pos": torch.randn(B, S, E, generator=g),
              "query_embed": torch.randn(T, E, generator=g)}
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    hs, memory = model.transformer(leaves["src"].transpose(0, 1), pad, leaves["query_embed"],
                                   leaves["pos"].transpose(0, 1))
    memory = memory.transpose(0, 1)
    gout, gmem = torch.randn(hs.shape, generator=g), torch.randn(memory.shape, generator=g)
    ((hs * gout).sum() + (memory * gmem).sum()).backward()
    t = dict(inputs, mask=pad.float(), hs=hs.detach(), memory=memory.detach(), gout=gout,
             gmem=gmem)
    for k, v in leaves.items():
        t["grad_" + k] = v.grad
    for k, p in model.named_parameters():
        t[k] = p.detach().clone()
        t["grad." + k] = p.grad
    return t, {"norm_first": str(int(pre)), "d_model": str(E), "n_heads": str(H),
               "d_ffn": str(F), "n_enc": str(n_enc), "n_dec": str(n_dec)}


# ---- `qkv forward --arch transformer`: a weights file and an input file ----

def _forward_model():
    """One pre-norm model shared by the two files (its own fixed seed)."""
    g = torch.Generator().manual_seed(1234)
    model = nn.Transformer(d_model=D_MODEL, nhead=HEADS, num_encoder_layers=LAYERS,
                           num_decoder_layers=1, dim_feedforward=FFN, dropout=0.0,
                           norm_first=True)
    _randomise(model, g)
    return model, g


def _forward_weights(g):
    model, _ = _forward_model()
    meta = {"num_heads": str(HEADS), "norm_first": "1"}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, meta


def _forward_input(g):
    model, g = _forward_model()
    S, T, B = 5, 3, 2
    src, tgt = torch.randn(S, B, D_MODEL, generator=g), torch.randn(T, B, D_MODEL, generator=g)
    masks = {"tgt_mask": torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1),
             "src_key_padding_mask": torch.tensor([[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]],
                                                  dtype=torch.bool)}
    masks["memory_key_padding_mask"] = masks["src_key_padding_mask"].clone()
    # with gradients on: PyTorch's inference fast path (nested tensors) would
    # zero the padded rows
    out = model(src, tgt, **masks).detach()
    return dict(src=src, tgt=tgt, want_output=out, **masks), {}


CASES = {
    "transformer_forward_weights": _forward_weights,
    "transformer_forward_input": _forward_input,
    "transformer_post_bool_masks": lambda g: _torch_case(g, False, False),
    "transformer_pre_bool_masks": lambda g: _torch_case(g, True, False),
    "transformer_post_float_masks": lambda g: _torch_case(g, False, True),
    "transformer_pre_float_masks": lambda g: _torch_case(g, True, True),
    "transformer_book_seq2seq": _book_case,
    "transformer_detr_post": lambda g: _detr_case(g, False),
    "transformer_detr_pre": lambda g: _detr_case(g, True),
}
