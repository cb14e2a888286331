"""Parity cases for ResNet (torchvision 0.14 from Debian, random init):
each fixture is a torchvision state_dict (qkv loads it with strict=True)
plus, under "__" keys (never model keys), the input, the outputs, the
upstream gradient and the gradients of the input and of every parameter.

Weights and buffers are torchvision's initialisation redrawn where it is
constant (batch norm weights, biases and running statistics), so that each
one matters, and rounded to bfloat16 and stored so (the C side reads them
exactly): half the size of float32, for fixtures of tens of millions of
parameters. Gradients and outputs are float32.

ReLU kinks. Two float32 implementations of a deep network agree to about
1e-7 of each activation's scale, and among a million ReLU inputs some lie
that close to zero: there the two take different sides, and the gradient
through that element differs by its whole value (one such element moved a
layer1 gradient of ResNet-18 by 4% of its largest entry). Forward outputs
are continuous and do not care; gradients do. So the cases that check
gradients make every ReLU decision clear-cut: walking the network in order,
each batch norm (or Linear) in front of a ReLU has its bias shifted per
channel so that the ReLU's input keeps one sign over the whole batch, at
least a tenth of its standard deviation from zero (three channels in four
stay on, one is off); the fixture's own forward then asserts that every
ReLU input lies at least 1e-4 of its largest value from zero, and that no
max-pool window has two leading values that close. The weights stay
random; only which side of each kink every element is on is settled.

  resnet18        train mode (out, gradients, running statistics after),
                  eval mode out from the same state
  resnet18_eval   eval mode (out, gradients), kinks settled in eval mode
  resnet50        train mode in full; eval mode out
  resnet50_detr   DETR's backbone: FrozenBatchNorm2d everywhere (re-created
                  here as DETR defines it), stem and layer1 frozen, C5 out,
                  train mode, no gradient to the image
  resnet18_moco_gray  MoCo's CIFAR-style encoder on Fashion-MNIST-sized
                  grey images: 1 input channel, 3x3 stride-1 stem, no max
                  pool, fc replaced by MoCo v2's MLP head; shuffle BN in two
                  groups, which equals running the network on each half in
                  turn (every op but batch norm acts per image)
  resnet_mask_nearest  DETR's mask resize: F.interpolate(mode="nearest")
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet50


class FrozenBatchNorm2d(nn.Module):
    """DETR's frozen batch norm: four buffers, no batch count, and
    y = x scale + (b - rm scale) with scale = w rsqrt(rv + 1e-5)."""

    def __init__(self, n):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def _seed_torch(g):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))


def _randomise(g, m):
    """Batch norms' constants redrawn; everything rounded to bfloat16."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                C = mod.weight.shape[0]
                mod.weight.copy_(torch.rand(C, generator=g) * 0.6 + 0.7)
                mod.bias.copy_((torch.rand(C, generator=g) - 0.5) * 0.4)
                mod.running_mean.copy_(torch.randn(C, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(C, generator=g) + 0.5)
        for t in list(m.parameters()) + list(m.buffers()):
            if t.dtype.is_floating_point:
                t.copy_(t.to(torch.bfloat16).float())


def _bn_call(bn, t, groups):
    return torch.cat([bn(c) for c in t.chunk(groups)]) if groups > 1 else bn(t)


def _settle_kinks(g, m, x, groups=1, margin=0.1, p_on=0.75):
    """Shifts the bias in front of every ReLU (see the top of the file), in
    the mode m is in; the running statistics are left as they were."""
    keep = {k: v.clone() for k, v in m.state_dict().items()
            if "running" in k or "num_batches" in k}

    def site(owner, out, extra=0):
        pre = out + extra
        C = pre.shape[1]
        flat = pre.transpose(0, 1).reshape(C, -1)
        lo, hi, gap = flat.min(1).values, flat.max(1).values, margin * pre.std()
        on = torch.rand(C, generator=g) < p_on
        d = torch.where(on, (gap - lo).clamp(min=0), (-gap - hi).clamp(max=0))
        owner.bias += d
        shape = (1, -1) + (1,) * (pre.dim() - 2)
        return out + d.reshape(shape)

    def bnr(bn, t, extra=0):
        return F.relu(site(bn, _bn_call(bn, t, groups), extra) + extra)

    with torch.no_grad():
        y = bnr(m.bn1, m.conv1(x))
        y = m.maxpool(y)
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            for b in layer:
                idn = y if b.downsample is None else _bn_call(b.downsample[1],
                                                              b.downsample[0](y), groups)
                t = bnr(b.bn1, b.conv1(y))
                last, conv = b.bn2, b.conv2
                if hasattr(b, "bn3"):
                    t = bnr(b.bn2, b.conv2(t))
                    last, conv = b.bn3, b.conv3
                y = F.relu(site(last, _bn_call(last, conv(t), groups), idn) + idn)
        if isinstance(getattr(m, "fc", None), nn.Sequential):
            site(m.fc[0], m.fc[0](torch.flatten(m.avgpool(y), 1)))
        for k, v in m.state_dict().items():
            if k in keep:
                v.copy_(keep[k])
            elif k.endswith("bias") and v.dtype.is_floating_point:
                v.copy_(v.to(torch.bfloat16).float())


class _KinkCheck:
    """Hooks asserting, during the fixture's own forward, that every ReLU
    input is at least 1e-4 of its largest |value| away from zero and that
    each max-pool window's maximum leads the runner-up by 3e-6 of the
    largest value (six times the two implementations' disagreement)."""

    def __init__(self, m, name):
        self.name, self.hooks = name, []
        for mod in m.modules():
            if isinstance(mod, nn.ReLU):
                self.hooks.append(mod.register_forward_pre_hook(self.relu))
            if isinstance(mod, nn.MaxPool2d):
                self.hooks.append(mod.register_forward_pre_hook(self.pool))

    def relu(self, mod, inp):
        v = inp[0].detach()
        close = (v.abs() < 1e-4 * v.abs().max()).sum().item()
        assert close == 0, f"{self.name}: {close} ReLU inputs near the kink"

    def pool(self, mod, inp):
        v = inp[0].detach()
        cols = F.unfold(F.pad(v, (1, 1, 1, 1), value=-1e30), 3, stride=2)
        top = cols.reshape(v.shape[0], v.shape[1], 9, -1).topk(2, dim=2).values
        lead, second = top[:, :, 0], top[:, :, 1]
        close = ((lead > 0) & (lead - second < 3e-6 * v.abs().max())).sum().item()
        assert close == 0, f"{self.name}: {close} max-pool windows with a near tie"

    def remove(self):
        for h in self.hooks:
            h.remove()


def _prepare(g, make, x_shape, name, train=True, groups=1, tries=30):
    """A random model (made by make()) with its kinks settled for an input
    x drawn here, in the given mode; x is redrawn until no max-pool window
    has a near tie (bias shifts cannot settle those; a few percent of
    draws have none)."""
    _seed_torch(g)
    base = make()
    _randomise(g, base)
    for _ in range(tries):
        m = copy.deepcopy(base).train(train)
        x = torch.randn(*x_shape, generator=g)
        _settle_kinks(g, m, x, groups=groups)
        check = _KinkCheck(m, name)
        try:
            with torch.no_grad():
                keep = copy.deepcopy(m.state_dict())
                for part in x.chunk(groups):
                    m(part)
                m.load_state_dict(keep)
            return m, x
        except AssertionError:
            pass
        finally:
            check.remove()
    raise AssertionError(f"{name}: no input without max-pool near ties in {tries} draws")


def _state(m):
    return {k: (v.to(torch.bfloat16) if v.dtype.is_floating_point else v).clone()
            for k, v in m.state_dict().items()}


def _run(m, x, gout_g, prefix, t, param_grads=True, forward=None):
    """forward + backward with a random upstream gradient; results under
    __<prefix>out, __<prefix>grad_x, __<prefix>grad.<name>."""
    for p in m.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(x.requires_grad)
    out = (forward or m)(x)
    gout = torch.randn(out.shape, generator=gout_g)
    out.backward(gout)
    t["__" + prefix + "out"] = out.detach()
    t["__" + prefix + "gout"] = gout
    if x.requires_grad:
        t["__" + prefix + "grad_x"] = x.grad
    if param_grads:
        for name, p in m.named_parameters():
            if p.requires_grad:
                t["__" + prefix + "grad." + name] = p.grad


def _after(m, t):
    for name, v in m.state_dict().items():
        if "running" in name or "num_batches" in name:
            t["__after." + name] = v.clone()


def _classifier_case(g, make, x_shape, name, mode="train", **meta):
    """mode "train": gradients in training mode, running statistics after,
    and the eval-mode output; "eval": gradients in eval mode."""
    m, x = _prepare(g, make, x_shape, name, train=mode == "train")
    t = _state(m)
    t["__x"] = x
    x.requires_grad_()
    m_eval = copy.deepcopy(m).eval()
    check = _KinkCheck(m, name)
    if mode == "train":
        _run(m, x, g, "", t)
        _after(m, t)
        with torch.no_grad():
            t["__eval_out"] = m_eval(x)
    else:
        _run(m, x, g, "eval_", t)
    check.remove()
    return t, {k: str(v) for k, v in meta.items()}


def _detr_case(g):
    """torchvision's resnet50 built with DETR's norm layer, body up to
    layer4; trainable only layer2..4, as DETR's Backbone sets it."""
    def make():
        m = resnet50(norm_layer=FrozenBatchNorm2d)
        m.fc = nn.Identity()  # DETR keeps the body up to layer4
        return m
    m, x = _prepare(g, make, (2, 3, 64, 96), "resnet50_detr")
    for name, p in m.named_parameters():
        if "layer2" not in name and "layer3" not in name and "layer4" not in name:
            p.requires_grad_(False)
    t = _state(m)
    t["__x"] = x

    def body(inp):
        y = m.maxpool(m.relu(m.bn1(m.conv1(inp))))
        return m.layer4(m.layer3(m.layer2(m.layer1(y))))
    check = _KinkCheck(m, "resnet50_detr")
    _run(m, x, g, "", t, forward=body)
    check.remove()
    return t, {"depth": "50", "frozen_bn": "1", "frozen_stages": "2", "num_classes": "0"}


def _moco_gray():
    m = resnet18(num_classes=128)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    m.maxpool = nn.Identity()
    m.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), m.fc)
    return m


def _moco_case(g, groups=2):
    m, x = _prepare(g, _moco_gray, (4, 1, 28, 28), "resnet18_moco_gray", groups=groups)
    t = _state(m)
    t["__x"] = x
    x.requires_grad_()
    check = _KinkCheck(m, "resnet18_moco_gray")
    _run(m, x, g, "", t, forward=lambda inp: torch.cat([m(part) for part in inp.chunk(groups)]))
    check.remove()
    _after(m, t)
    return t, {"depth": "18", "in_channels": "1", "small_stem": "1", "num_classes": "128",
               "fc_hidden": "512", "groups": str(groups)}


def _mask_case(g):
    """Random padding masks (B, H, W) and F.interpolate's nearest resize
    to several sizes (DETR: mask[None].float() -> interpolate -> bool)."""
    t = {}
    sizes = [((800, 1066), (25, 34)), ((37, 53), (5, 7)), ((10, 12), (20, 24)),
             ((9, 9), (9, 9)), ((7, 30), (3, 11)), ((5, 4), (13, 9))]
    for k, ((H, W), (h, w)) in enumerate(sizes):
        mask = torch.rand(2, H, W, generator=g) < 0.5
        out = F.interpolate(mask[None].float(), size=(h, w)).to(torch.bool)[0]
        t[f"mask{k}"] = mask.to(torch.uint8)
        t[f"out{k}"] = out.to(torch.uint8)
    return t, {"count": str(len(sizes))}


CASES = {
    "resnet18": lambda g: _classifier_case(g, lambda: resnet18(num_classes=10), (2, 3, 64, 64),
                                           "resnet18", depth=18, num_classes=10),
    "resnet18_eval": lambda g: _classifier_case(g, lambda: resnet18(num_classes=10),
                                                (2, 3, 64, 64), "resnet18_eval", "eval",
                                                depth=18, num_classes=10),
    "resnet50": lambda g: _classifier_case(g, lambda: resnet50(num_classes=10), (2, 3, 64, 64),
                                           "resnet50", depth=50, num_classes=10),
    "resnet50_detr": _detr_case,
    "resnet18_moco_gray": _moco_case,
    "resnet_mask_nearest": _mask_case,
}
