"""Parity cases for the Vision Transformer: a small random torchvision
VisionTransformer (torchvision 0.14 from Debian) in eval mode, its logits,
and the gradients of the input and of every parameter under the state_dict
names. Parameters are redrawn from the case's generator so that none is
zero (torchvision zeroes the head). One case takes a grey image (conv_proj
replaced by a 1-channel Conv2d, as qkv's Fashion-MNIST models) stored
channels-last, which the C test reads through a permuted view.

Inputs and parameters are float32 (what qkv computes with); the logits and
gradients are computed in float64 from those very values, so that the
reference's own rounding (~1e-16) is nil and the C test measures qkv's
float32 error alone. This is the ViT's gradient check: central differences
of a float32 forward this deep carry ~1e-4 of noise, the float64 reference
none."""
import copy

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer


def _fill_params(g, module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.5)


def _vit_case(g, image=8, patch=4, layers=2, heads=2, hidden=8, mlp=12, classes=5, B=3,
              channels=3, transposed=False):
    m = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers,
                          num_heads=heads, hidden_dim=hidden, mlp_dim=mlp,
                          num_classes=classes)
    if channels != 3:
        m.conv_proj = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)
    m.eval()
    _fill_params(g, m)
    x = torch.randn(B, channels, image, image, generator=g)
    m64 = copy.deepcopy(m).double()
    x64 = x.double().requires_grad_()
    out = m64(x64)
    gout = torch.randn(out.shape, generator=g)
    (out * gout.double()).sum().backward()
    t = {"out": out.detach(), "gout": gout}
    if transposed:
        t["x_t"] = x.transpose(2, 3).contiguous()
        t["grad_x_t"] = x64.grad.transpose(2, 3).contiguous()
    else:
        t["x"], t["grad_x"] = x, x64.grad
    for (name, p), p64 in zip(m.named_parameters(), m64.parameters()):
        t[name] = p.detach().clone()
        t["grad_" + name] = p64.grad
    return t, {"num_heads": str(heads), "transposed": str(int(transposed))}


def _torchvision_strict(g):
    """A torchvision model's state_dict as torchvision initialises it (the
    zero head redrawn, so that logits differ between classes), which qkv
    must load with strict=True; probe input and logits under "__" keys,
    which are never model keys."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    m = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=4,
                          hidden_dim=16, mlp_dim=32, num_classes=10).eval()
    with torch.no_grad():
        m.heads.head.weight.normal_(0, 0.5)
        m.heads.head.bias.normal_(0, 0.5)
    x = torch.randn(4, 3, 16, 16, generator=g)
    with torch.no_grad():
        out = m(x)
    t = {k: v.detach().clone() for k, v in m.state_dict().items()}
    t["__x"], t["__out"] = x, out
    return t, {"num_heads": "4"}


CASES = {
    "vit_rgb": lambda g: _vit_case(g),
    "vit_gray_transposed": lambda g: _vit_case(g, image=12, patch=3, layers=3, heads=4, hidden=16,
                                         mlp=20, classes=10, B=2, channels=1,
                                         transposed=True),
    "vit_torchvision_strict": _torchvision_strict,
}
