"""Parity cases for multi-head attention: torch.nn.MultiheadAttention (self
and cross attention, unequal query/key lengths, kdim/vdim, batch_first both
ways, bias on/off, key padding and attention masks, weights averaged and per
head) and d2l r0.17's MultiHeadAttention re-created here. Eval mode (no
dropout). Parameters are drawn from the case's generator and saved under
their state_dict names, with their gradients as grad_<name>."""
import math

import torch
from torch import nn
from casekit import r
from d2l_ref import DotProductAttention


def _fill_params(g, module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.6)


def _finish(g, module, inputs, outs, meta):
    """outs: (out, weights or None). Loss sum(out gout) + sum(w gw)."""
    out, w = outs
    t = {k: v.detach().clone() for k, v in inputs.items()}
    t["out"], t["gout"] = out.detach(), torch.randn(out.shape, generator=g)
    loss = (out * t["gout"]).sum()
    if w is not None:
        t["weights"], t["gw"] = w.detach(), torch.randn(w.shape, generator=g)
        loss = loss + (w * t["gw"]).sum()
    loss.backward()
    for k, v in inputs.items():
        if v.requires_grad:
            t["grad_" + k] = v.grad
    for name, p in module.named_parameters():
        t[name] = p.detach().clone()
        t["grad_" + name] = p.grad
    return t, {k: str(int(v) if isinstance(v, bool) else v) for k, v in meta.items()}


def torch_mha(g, E=8, H=2, B=2, N=5, M=5, kdim=None, vdim=None, bias=True, batch_first=False,
              self_attn=False, kpm=False, mask=None, need_weights=True, average=True,
              causal=False):
    m = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim,
                              batch_first=batch_first).eval()
    _fill_params(g, m)
    kd, vd = kdim or E, vdim or E
    seq = (lambda n, c: (B, n, c)) if batch_first else (lambda n, c: (n, B, c))
    if self_attn:
        x = r(g, *seq(N, E)).requires_grad_()
        inputs, q, k, v = {"x": x}, x, x, x
    else:
        q = r(g, *seq(N, E)).requires_grad_()
        k = r(g, *seq(M, kd)).requires_grad_()
        v = r(g, *seq(M, vd)).requires_grad_()
        inputs = {"q": q, "k": k, "v": v}
    extra, kw = {}, {}
    if kpm:
        p = torch.zeros(B, M, dtype=torch.bool)
        p[0, -2:] = True
        p[1, 0] = True
        kw["key_padding_mask"] = p
        extra["kpm"] = p.float()
    if mask == "float2d":
        am = r(g, N, M)
        am[torch.rand(N, M, generator=g) < 0.25] = float("-inf")
        am[:, 1] = 0.0
        kw["attn_mask"], extra["attn_mask"] = am, am
    elif mask == "bool3d":
        am = torch.rand(B * H, N, M, generator=g) < 0.3
        am[..., 2] = False
        kw["attn_mask"], extra["attn_mask"] = am, am.float()
    if causal:
        kw["attn_mask"] = torch.ones(N, M, dtype=torch.bool).triu(1)
    out = m(q, k, v, need_weights=need_weights, average_attn_weights=average, **kw)
    meta = dict(E=E, H=H, kdim=kd, vdim=vd, bias=bias, batch_first=batch_first,
                self_attn=self_attn, need_weights=need_weights, average=average,
                causal=causal, mask_bool=mask == "bool3d")
    t, meta = _finish(g, m, inputs, out, meta)
    t.update(extra)
    return t, meta


# ---- d2l r0.17 MultiHeadAttention, re-created ----

def transpose_qkv(X, num_heads):
    X = X.reshape(X.shape[0], X.shape[1], num_heads, -1)
    X = X.permute(0, 2, 1, 3)
    return X.reshape(-1, X.shape[2], X.shape[3])


def transpose_output(X, num_heads):
    X = X.reshape(-1, num_heads, X.shape[1], X.shape[2])
    X = X.permute(0, 2, 1, 3)
    return X.reshape(X.shape[0], X.shape[1], -1)


class MultiHeadAttention(nn.Module):
    def __init__(self, key_size, query_size, value_size, num_hiddens, num_heads, dropout,
                 bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.attention = DotProductAttention(dropout)
        self.W_q = nn.Linear(query_size, num_hiddens, bias=bias)
        self.W_k = nn.Linear(key_size, num_hiddens, bias=bias)
        self.W_v = nn.Linear(value_size, num_hiddens, bias=bias)
        self.W_o = nn.Linear(num_hiddens, num_hiddens, bias=bias)

    def forward(self, queries, keys, values, valid_lens):
        queries = transpose_qkv(self.W_q(queries), self.num_heads)
        keys = transpose_qkv(self.W_k(keys), self.num_heads)
        values = transpose_qkv(self.W_v(values), self.num_heads)
        if valid_lens is not None:
            valid_lens = torch.repeat_interleave(valid_lens, repeats=self.num_heads, dim=0)
        output = self.attention(queries, keys, values, valid_lens)
        return self.W_o(transpose_output(output, self.num_heads))


def d2l_mha(g, lens, bias=False, N=4, M=6):
    m = MultiHeadAttention(3, 5, 4, 8, 2, 0.0, bias=bias).eval()
    _fill_params(g, m)
    q = r(g, 2, N, 5).requires_grad_()
    k = r(g, 2, M, 3).requires_grad_()
    v = r(g, 2, M, 4).requires_grad_()
    out = m(q, k, v, lens)
    t, meta = _finish(g, m, {"q": q, "k": k, "v": v}, (out, None), dict(bias=bias))
    t["lens"] = lens
    return t, meta


CASES = {
    "mha_self": lambda g: torch_mha(g, self_attn=True),
    "mha_cross_masks": lambda g: torch_mha(g, N=4, M=6, kpm=True, mask="float2d", average=False),
    "mha_kvdim_batch_first": lambda g: torch_mha(g, N=3, M=7, kdim=5, vdim=6, batch_first=True,
                                                 mask="bool3d"),
    "mha_nobias_causal": lambda g: torch_mha(g, E=12, H=3, N=6, M=6, bias=False,
                                             batch_first=True, self_attn=True, causal=True,
                                             need_weights=False),
    "mha_kpm_no_weights": lambda g: torch_mha(g, N=3, M=6, kpm=True, need_weights=False),
    "mha_d2l_lens1": lambda g: d2l_mha(g, torch.tensor([3, 2])),
    "mha_d2l_lens2_bias": lambda g: d2l_mha(g, torch.tensor([[1, 6, 2, 0], [4, 5, 3, 2]]),
                                            bias=True),
}
