"""Parity cases for the Vision Transformer: a small random torchvision
VisionTransformer (torchvision 0.14 from Debian) in eval mode, its logits,
and the gradients of the input and of every parameter under the state_dict
names. Parameters are redrawn from the case's generator so that none is
zero (torchvision zeroes the head). One case takes a grey image (conv_proj
replaced by a 1-channel Conv2d, as qkv's Fashion-MNIST models) stored
channels-last, which the C test reads through a permuted view."""
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
    x = torch.randn(B, channels, image, image, generator=g).requires_grad_()
    out = m(x)
    gout = torch.randn(out.shape, generator=g)
    (out * gout).sum().backward()
    t = {"out": out.detach(), "gout": gout}
    if transposed:
        t["x_t"] = x.detach().transpose(2, 3).contiguous()
        t["grad_x_t"] = x.grad.transpose(2, 3).contiguous()
    else:
        t["x"], t["grad_x"] = x.detach(), x.grad
    for name, p in m.named_parameters():
        t[name] = p.detach().clone()
        t["grad_" + name] = p.grad
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
