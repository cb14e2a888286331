"""Parity cases for conv2d and pooling. Options go in the metadata as
"h,w" pairs (stride, pad, dil, kernel) and integers (groups, out); inputs
named x_nhwc are stored channels-last and used as x_nhwc.permute(0, 3, 1, 2),
a non-contiguous NCHW view on the C side too."""
import torch
import torch.nn.functional as F
from casekit import r


def _grad_case(g, fn, inputs, **meta):
    """Runs fn on leaf copies of inputs, backward with a random upstream
    gradient `gout`; returns inputs, out, gout and grad_<name> of each."""
    leaves = {k: v.clone().requires_grad_(v.dtype.is_floating_point) for k, v in inputs.items()}
    out = fn(**leaves)
    gout = torch.randn(out.shape, generator=g)
    out.backward(gout)
    t = dict(inputs)
    t["out"] = out.detach()
    t["gout"] = gout
    for k, v in leaves.items():
        if v.requires_grad and v.grad is not None:
            t["grad_" + k] = v.grad
    return t, {k: str(v) for k, v in meta.items()}


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _hw(v):
    v = _pair(v)
    return f"{v[0]},{v[1]}"


def _conv(g, xshape, wshape, bias=True, stride=1, pad=0, dil=1, groups=1, nhwc=False):
    inputs = {}
    if nhwc:
        B, C, H, W = xshape
        inputs["x_nhwc"] = r(g, B, H, W, C)
    else:
        inputs["x"] = r(g, *xshape)
    inputs["w"] = r(g, *wshape)
    if bias:
        inputs["b"] = r(g, wshape[0])

    def fn(w, b=None, x=None, x_nhwc=None):
        xin = x if x is not None else x_nhwc.permute(0, 3, 1, 2)
        return F.conv2d(xin, w, b, _pair(stride), _pair(pad), _pair(dil), groups)

    return _grad_case(g, fn, inputs, stride=_hw(stride), pad=_hw(pad), dil=_hw(dil),
                      groups=groups)


def _pool(g, kind, xshape, k, stride=None, pad=0, out=None, nhwc=False, ties=False):
    B, C, H, W = xshape
    if ties:
        x = torch.randint(0, 3, (B, H, W, C) if nhwc else xshape, generator=g).float()
    else:
        x = r(g, *((B, H, W, C) if nhwc else xshape))
    name = "x_nhwc" if nhwc else "x"

    def fn(**kw):
        xin = kw[name].permute(0, 3, 1, 2) if nhwc else kw[name]
        if kind == "max":
            return F.max_pool2d(xin, k, stride if stride else k, pad)
        if kind == "avg":
            return F.avg_pool2d(xin, k, stride if stride else k, pad)
        return F.adaptive_avg_pool2d(xin, out)

    meta = {"out": _hw(out)} if kind == "adaptive" else {
        "kernel": _hw(k), "stride": _hw(stride if stride else 0), "pad": _hw(pad)}
    return _grad_case(g, fn, {name: x}, **meta)


CASES = {
    "conv2d_basic": lambda g: _conv(g, (2, 3, 7, 6), (4, 3, 3, 3)),
    "conv2d_stride2_pad1": lambda g: _conv(g, (2, 3, 8, 7), (4, 3, 3, 3), stride=2, pad=1),
    "conv2d_dil2": lambda g: _conv(g, (1, 2, 9, 9), (3, 2, 3, 3), pad=2, dil=2),
    "conv2d_groups2": lambda g: _conv(g, (2, 4, 6, 6), (6, 2, 3, 3), stride=(2, 1), pad=1,
                                      groups=2),
    "conv2d_depthwise": lambda g: _conv(g, (2, 3, 6, 5), (6, 1, 3, 3), pad=1, groups=3),
    # one image: the 1x1 path that skips im2col
    "conv2d_depthwise_s2_dil2": lambda g: _conv(g, (2, 4, 9, 8), (4, 1, 3, 3), bias=False,
                                                stride=2, pad=(1, 2), dil=(1, 2), groups=4),
    "conv2d_1x1_nobias": lambda g: _conv(g, (1, 5, 4, 4), (3, 5, 1, 1), bias=False),
    "conv2d_1x1_stride2": lambda g: _conv(g, (2, 5, 5, 4), (3, 5, 1, 1), stride=2),
    "conv2d_patch": lambda g: _conv(g, (1, 3, 8, 8), (5, 3, 4, 4), stride=4),
    # 192 output pixels: GEMMs over chunks of 3 images, then 2
    "conv2d_chunks": lambda g: _conv(g, (5, 4, 12, 16), (6, 2, 3, 3), pad=1, groups=2),
    "conv2d_nhwc": lambda g: _conv(g, (2, 3, 6, 5), (4, 3, 2, 3), stride=(1, 2), pad=(1, 0),
                                   nhwc=True),
    "max_pool2d_k3s2p1": lambda g: _pool(g, "max", (2, 3, 7, 8), 3, 2, 1),
    "max_pool2d_ties": lambda g: _pool(g, "max", (1, 2, 5, 6), 3, 1, 1, ties=True),
    "max_pool2d_nhwc": lambda g: _pool(g, "max", (2, 3, 6, 6), 2, nhwc=True),
    "avg_pool2d_k3s2p1": lambda g: _pool(g, "avg", (2, 2, 7, 6), 3, 2, 1),
    "avg_pool2d_rect_nhwc": lambda g: _pool(g, "avg", (1, 3, 6, 7), (3, 2), (1, 2), (1, 1),
                                            nhwc=True),
    "adaptive_avg_pool2d_down": lambda g: _pool(g, "adaptive", (2, 3, 7, 5), None, out=(3, 4)),
    "adaptive_avg_pool2d_up_nhwc": lambda g: _pool(g, "adaptive", (1, 2, 2, 3), None,
                                                   out=(4, 5), nhwc=True),
}
