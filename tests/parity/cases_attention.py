"""Parity cases for attention: d2l's masked_softmax (valid lengths, -1e6
fill), scaled dot-product attention with every mask kind (additive float
with -inf, boolean, key padding, causal, d2l valid lengths) and a
non-contiguous query, and d2l's AdditiveAttention and DotProductAttention
modules (r0.17 `d2l/torch.py`, re-created here)."""
import math

import torch
from torch import nn
from casekit import r
from d2l_ref import AdditiveAttention, DotProductAttention, masked_softmax


def _grad_case(g, fn, inputs, **meta):
    """Runs fn on leaf copies of inputs, backward with a random upstream
    gradient `gout`; returns inputs, out, gout and grad_<name> of each."""
    leaves = {k: v.clone().requires_grad_(v.dtype.is_floating_point and not k.startswith("mask")
                                          and k != "kpm")
              for k, v in inputs.items()}
    out = fn(**leaves)
    gout = torch.randn(out.shape, generator=g)
    out.backward(gout)
    t = dict(inputs)
    t["out"] = out.detach()
    t["gout"] = gout
    for k, v in leaves.items():
        if v.requires_grad:
            t["grad_" + k] = v.grad
    return t, {k: str(v) for k, v in meta.items()}


# ---- d2l r0.17, re-created ----

def sdpa(q, k, v, scale=None, mask_add=None, mask_bool=None, kpm=None, causal=False,
         lens=None):
    """q (B, H, N, D): masks in qkv's order; lens as d2l (replace by -1e6)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    N, M = s.shape[-2:]
    if mask_add is not None:
        s = s + mask_add
    if mask_bool is not None:
        s = s.masked_fill(mask_bool.bool(), float("-inf"))
    if kpm is not None:
        s = s.masked_fill(kpm.bool().view(kpm.shape[0], *([1] * (s.dim() - 2)), M), float("-inf"))
    if causal:
        s = s.masked_fill(torch.ones(N, M).triu(1).bool(), float("-inf"))
    if lens is not None:
        L = lens.view(lens.shape[0], *([1] * (s.dim() - 2)), 1) if lens.dim() == 1 else \
            lens.view(lens.shape[0], *([1] * (s.dim() - 3)), N, 1)
        s = torch.where(torch.arange(M) < L, s, torch.tensor(-1e6))
    return torch.softmax(s, -1) @ v


def add_mask(g, *shape):
    m = r(g, *shape)
    m[torch.rand(*shape, generator=g) < 0.25] = float("-inf")
    m[..., 0] = 0.0  # never a whole row
    return m


def sdpa_case(g, B=2, H=3, N=5, M=7, D=4, Dv=6, q_t=True, **kw):
    """q is stored (B, N, H, D) and used transposed: a non-contiguous view."""
    q = r(g, B, N, H, D) if q_t else r(g, B, H, N, D)
    k, v = r(g, B, H, M, D), r(g, B, H, M, Dv)
    extra = {}
    if kw.pop("additive", False):
        extra["mask_add"] = add_mask(g, N, M)
    if kw.pop("boolean", False):
        extra["mask_bool"] = (torch.rand(B, 1, N, M, generator=g) < 0.3).float()
        extra["mask_bool"][..., 0] = 0
    if kw.pop("padding", False):
        extra["kpm"] = torch.zeros(B, M)
        extra["kpm"][0, M - 2:] = 1
        extra["kpm"][1, 1:3] = 1
    lens = kw.pop("lens", None)
    meta = dict(q_t=int(q_t), causal=int(kw.get("causal", False)), scale=kw.get("scale", 0))

    def fn(q, k, v, **m):
        qq = q.transpose(1, 2) if q_t else q
        return sdpa(qq, k, v, kw.get("scale"), m.get("mask_add"), m.get("mask_bool"),
                    m.get("kpm"), kw.get("causal", False), lens)
    t, meta = _grad_case(g, fn, dict(q=q, k=k, v=v, **extra), **meta)
    if lens is not None:
        t["lens"] = lens
    return t, meta


def masked_softmax_case(g, lens):
    t, meta = _grad_case(g, lambda x: masked_softmax(x.clone(), lens), {"x": r(g, 2, 3, 5)})
    t["lens"] = lens
    return t, meta


def d2l_dot_case(g, lens):
    q, k, v = r(g, 2, 3, 4), r(g, 2, 6, 4), r(g, 2, 6, 5)
    att = DotProductAttention(0.0).eval()
    t, meta = _grad_case(g, lambda q, k, v: att(q, k, v, lens), dict(q=q, k=k, v=v))
    t["lens"] = lens
    return t, meta


def d2l_additive_case(g, lens):
    att = AdditiveAttention(key_size=3, query_size=5, num_hiddens=8, dropout=0.0).eval()
    with torch.no_grad():  # torch's default init, but from this case's generator
        for p in att.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
    q, k, v = r(g, 2, 4, 5), r(g, 2, 6, 3), r(g, 2, 6, 7)
    t, meta = _grad_case(g, lambda q, k, v: att(q, k, v, lens), dict(q=q, k=k, v=v))
    for name, p in att.named_parameters():
        t[name] = p.detach().clone()
        t["grad_" + name] = p.grad.clone()
    t["lens"] = lens
    return t, meta


CASES = {
    "attn_plain": lambda g: sdpa_case(g),
    "attn_scale_contiguous": lambda g: sdpa_case(g, q_t=False, scale=0.7),
    "attn_additive": lambda g: sdpa_case(g, additive=True),
    "attn_bool": lambda g: sdpa_case(g, boolean=True),
    "attn_padding_causal": lambda g: sdpa_case(g, N=7, M=7, padding=True, causal=True),
    "attn_lens1": lambda g: sdpa_case(g, lens=torch.tensor([3, 0])),
    "attn_lens2": lambda g: sdpa_case(g, N=3, lens=torch.tensor([[1, 7, 2], [4, 0, 5]])),
    "attn_long_causal": lambda g: sdpa_case(g, B=1, H=2, N=150, M=150, D=8, Dv=8, causal=True),
    "masked_softmax_lens1": lambda g: masked_softmax_case(g, torch.tensor([2, 3])),
    "masked_softmax_lens2": lambda g: masked_softmax_case(
        g, torch.tensor([[1, 3, 0], [2, 4, 5]])),
    "d2l_dot_attention": lambda g: d2l_dot_case(g, torch.tensor([2, 6])),
    "d2l_additive_attention": lambda g: d2l_additive_case(g, torch.tensor([2, 6])),
    "d2l_additive_attention_lens2": lambda g: d2l_additive_case(
        g, torch.tensor([[1, 2, 3, 4], [6, 5, 0, 3]])),
}
