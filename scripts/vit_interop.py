#!/usr/bin/env python3
"""ViT state dicts between qkv and torchvision, both ways, with the same logits.

  vit_interop.py [--lib build/libqkv.so] [--model runs/vit] [--n 500]

1. torchvision -> qkv: a torchvision VisionTransformer as torchvision
   initialises it (its zero head redrawn) is saved as safetensors; qkv loads
   it strictly and its logits on random images are compared.
2. qkv -> torchvision: a model from `qkv train vit` (--model, a file or a run
   directory) is loaded into torchvision's VisionTransformer, its conv_proj
   replaced by a 1-channel Conv2d (Fashion-MNIST is grey), with
   load_state_dict(strict=True); both give logits for the first --n test
   images, which are compared, and both accuracies are printed.

qkv runs in-process through ctypes on libqkv.so (`make` builds it). Runs on
Debian's python3-torch and python3-torchvision. Exit status 0 when every
logit agrees within 1e-4 relative to max(1, max|logit|).
"""
import argparse
import ctypes
import gzip
import os
import sys
import tempfile

import numpy as np
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "parity"))
from stio import load, save  # noqa: E402

TOL = 1e-4
MNIST = "/usr/share/datasets/fashion-mnist"


class VitConfig(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in (
        "image_size", "patch_size", "in_channels", "hidden_dim", "mlp_dim", "num_heads",
        "num_layers", "num_classes")] + [
        ("dropout", ctypes.c_float), ("attention_dropout", ctypes.c_float),
        ("ln_eps", ctypes.c_float)]


class Qkv:
    """Just enough of the C API to load a ViT file and run it."""

    def __init__(self, lib):
        L = self.L = ctypes.CDLL(lib)
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        for name, res, args in [
            ("qkv_error", ctypes.c_char_p, []),
            ("qkv_st_open", vp, [ctypes.c_char_p]),
            ("qkv_st_close", None, [vp]),
            ("qkv_params_new", vp, []),
            ("qkv_params_alloc", ctypes.c_int, [vp]),
            ("qkv_params_load_file", ctypes.c_int, [vp, vp, ctypes.c_char_p, ctypes.c_int]),
            ("qkv_vit_config_from_file", ctypes.c_int, [ctypes.POINTER(VitConfig), vp]),
            ("qkv_vit_init", ctypes.c_int, [vp, vp, ctypes.POINTER(VitConfig)]),
            ("qkv_vit_forward", vp, [vp, vp, vp, vp]),
            ("qkv_ctx_new", vp, []),
            ("qkv_ctx_reset", None, [vp]),
            ("qkv_set_training", ctypes.c_int, [vp, ctypes.c_int]),
            ("qkv_set_grad_enabled", ctypes.c_int, [vp, ctypes.c_int]),
            ("qkv_from_data", vp, [vp, ctypes.c_int, ctypes.POINTER(i64),
                                   ctypes.POINTER(ctypes.c_float)]),
        ]:
            f = getattr(L, name)
            f.restype, f.argtypes = res, args

    def fail(self, what):
        raise SystemExit(f"qkv: {what}: {self.L.qkv_error().decode()}")

    def open_vit(self, path):
        """Loads a ViT state dict strictly; returns (model, config)."""
        f = self.L.qkv_st_open(path.encode())
        if not f:
            self.fail(path)
        cfg = VitConfig()
        # the model struct is opaque here: a generous buffer holds it
        self.model_buf = ctypes.create_string_buffer(1 << 16)
        ps = self.L.qkv_params_new()
        if (self.L.qkv_vit_config_from_file(ctypes.byref(cfg), f)
                or self.L.qkv_vit_init(self.model_buf, ps, ctypes.byref(cfg))
                or self.L.qkv_params_alloc(ps)
                or self.L.qkv_params_load_file(ps, f, path.encode(), 1)):
            self.fail(path)
        self.L.qkv_st_close(f)
        self.ps = ps
        return self.model_buf, cfg

    def logits(self, model, x, batch=500):
        """x (B, C, H, W) float32 numpy -> logits (B, K) numpy, eval mode."""
        ctx = self.L.qkv_ctx_new()
        self.L.qkv_set_training(ctx, 0)
        self.L.qkv_set_grad_enabled(ctx, 0)
        outs = []
        for at in range(0, len(x), batch):
            xb = np.ascontiguousarray(x[at:at + batch], dtype=np.float32)
            shape = (ctypes.c_int64 * 4)(*xb.shape)
            t = self.L.qkv_from_data(ctx, 4, shape,
                                     xb.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            out = self.L.qkv_vit_forward(ctx, model, t, None)
            if not out:
                self.fail("forward")
            # qkv_tensor starts with its float *data; the logits are contiguous (B, K)
            data = ctypes.cast(ctypes.c_void_p.from_address(out).value,
                               ctypes.POINTER(ctypes.c_float))
            K = ctypes.c_int64.from_address(out + 2 * 8 + 8).value  # shape[1]
            outs.append(np.ctypeslib.as_array(data, shape=(len(xb), K)).copy())
            self.L.qkv_ctx_reset(ctx)
        return np.concatenate(outs)


def rel_diff(a, b):
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


def torchvision_to_qkv(q, tmp):
    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4,
                          hidden_dim=64, mlp_dim=128, num_classes=10).eval()
    with torch.no_grad():
        m.heads.head.weight.normal_(0, 0.2)
        m.heads.head.bias.normal_(0, 0.2)
    path = os.path.join(tmp, "torchvision_vit.safetensors")
    save(path, dict(m.state_dict()), {"num_heads": 4})
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        want = m(x).numpy()
    model, _ = q.open_vit(path)
    got = q.logits(model, x.numpy())
    d = rel_diff(got, want)
    print(f"torchvision -> qkv: strict load of {len(m.state_dict())} tensors, "
          f"logits of 16 images differ by {d:.2e} (max rel)")
    return d <= TOL


def mnist_test(n):
    with gzip.open(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read()[8:], np.uint8)[:n]
    return x.astype(np.float32) / 255.0, y


def qkv_to_torchvision(q, path, n):
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    sd, meta = load(path)
    sd = {k: v for k, v in sd.items() if not k.startswith("__")}
    w = sd["conv_proj.weight"]
    hidden, chans, patch = w.shape[0], w.shape[1], w.shape[2]
    seq = sd["encoder.pos_embedding"].shape[1] - 1
    image = int(round(seq ** 0.5)) * patch
    layers = sum(1 for k in sd if k.endswith(".ln_1.weight"))
    m = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers,
                          num_heads=int(meta["num_heads"]), hidden_dim=hidden,
                          mlp_dim=sd["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0],
                          num_classes=sd["heads.head.weight"].shape[0])
    if chans != 3:
        m.conv_proj = nn.Conv2d(chans, hidden, kernel_size=patch, stride=patch)
    m.load_state_dict(sd, strict=True)
    m.eval()
    x, y = mnist_test(n)
    if image != 28:
        x = nn.functional.interpolate(torch.from_numpy(x), size=(image, image),
                                      mode="bilinear", align_corners=False).numpy()
    with torch.no_grad():
        want = torch.cat([m(torch.from_numpy(x[i:i + 500])) for i in range(0, n, 500)]).numpy()
    model, _ = q.open_vit(path)
    got = q.logits(model, x)
    d = rel_diff(got, want)
    acc_t = float((want.argmax(1) == y).mean())
    acc_q = float((got.argmax(1) == y).mean())
    print(f"qkv -> torchvision: {path} loads with strict=True ({len(sd)} tensors); "
          f"logits of {n} test images differ by {d:.2e} (max rel); accuracy torchvision "
          f"{acc_t:.4f}, qkv {acc_q:.4f}")
    return d <= TOL


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.path.join(HERE, "..", "build", "libqkv.so"))
    ap.add_argument("--model", default="runs/vit",
                    help="a model from `qkv train vit` (file or run directory)")
    ap.add_argument("--n", type=int, default=500, help="test images compared")
    a = ap.parse_args()
    torch.set_num_threads(1)
    q = Qkv(a.lib)
    with tempfile.TemporaryDirectory() as tmp:
        ok = torchvision_to_qkv(q, tmp)
    ok = qkv_to_torchvision(q, a.model, a.n) and ok
    print("interop:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
