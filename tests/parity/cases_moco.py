"""Parity cases for MoCo: two training steps of a PyTorch re-creation, in
double precision, of facebookresearch/moco moco/builder.py (v1, v2) and of facebookresearch/moco-v3
moco/builder.py (v3), on one process (shuffle BN off: _batch_shuffle_ddp and
concat_all_gather are the identity there), with small ViT encoders.

Each case holds the model's state dict before the first step under the
official names, the two steps' views x1_<i> and x2_<i>, their losses
loss_<i>, the query encoder's gradients grad<i>.<name> of each step, and
the whole state dict after the two steps (after.<name>: parameters, the key
encoder after its momentum updates, batch-norm buffers, queue, queue_ptr).
The official order inside a step: q = f_q(x1); the key encoder's momentum
update; k = f_k(x2); logits; enqueue; then backward and the optimizer."""
import math
from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock
from torchvision.models.vision_transformer import VisionTransformer


# ---- v1, v2: moco/builder.py on one process ----

class MoCo(nn.Module):
    def __init__(self, base_encoder, dim, K, m, T, mlp):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if mlp:  # the head's input width F becomes an MLP F -> F -> dim
            for enc in (self.encoder_q, self.encoder_k):
                if hasattr(enc, "heads"):  # a ViT's head
                    fc = enc.heads.head
                    enc.heads.head = nn.Sequential(nn.Linear(fc.weight.shape[1],
                                                             fc.weight.shape[1]), nn.ReLU(), fc)
                else:  # a ResNet's fc, as moco's builder
                    dim_mlp = enc.fc.weight.shape[1]
                    enc.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), enc.fc)
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.data.copy_(pq.data)
            pk.requires_grad = False
        self.register_buffer("queue", torch.randn(dim, K))
        self.queue = F.normalize(self.queue, dim=0)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.data = pk.data * self.m + pq.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        n = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % n == 0
        self.queue[:, ptr:ptr + n] = keys.T
        self.queue_ptr[0] = (ptr + n) % self.K

    def forward(self, im_q, im_k):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = F.normalize(self.encoder_k(im_k), dim=1)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        self._dequeue_and_enqueue(k)
        return logits, labels


def grey_vit(image, patch, layers, heads, hidden, mlp):
    def make(num_classes):
        v = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers,
                              num_heads=heads, hidden_dim=hidden, mlp_dim=mlp,
                              num_classes=num_classes)
        v.conv_proj = nn.Conv2d(1, hidden, kernel_size=patch, stride=patch)
        return v
    return make


class SmallResNet(nn.Module):
    """torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2], its module names)
    with `width` planes in layer1 instead of 64, a grey 3x3 stride-1 stem and
    no max pool (MoCo's CIFAR variant)."""
    def __init__(self, width, num_classes):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, 2, 1)
        self.layer2 = self._make_layer(2 * width, 2, 2)
        self.layer3 = self._make_layer(4 * width, 2, 2)
        self.layer4 = self._make_layer(8 * width, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes, blocks, stride):
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- v3: moco-v3 moco/builder.py (MoCo_ViT) with vits.py's timm ViT ----

class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5
        return self.proj((a.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmViT(nn.Module):
    """timm's VisionTransformer as moco-v3's vits.py uses it (class token,
    no dropout, LayerNorm eps 1e-6), grey input."""
    def __init__(self, image, patch, layers, heads, hidden, mlp, num_classes):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, hidden))
        self.blocks = nn.Sequential(*[Block(hidden, heads, mlp) for _ in range(layers)])
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    mlp = []
    for l in range(num_layers):
        dim1 = input_dim if l == 0 else mlp_dim
        dim2 = output_dim if l == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if l < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


class MoCoV3(nn.Module):
    def __init__(self, base_encoder, dim, mlp_dim, T, resnet=False):
        super().__init__()
        self.T = T
        self.base_encoder = base_encoder(num_classes=mlp_dim)
        self.momentum_encoder = base_encoder(num_classes=mlp_dim)
        if resnet:  # MoCo_ResNet: fc replaced by a 2-layer projector
            hidden_dim = self.base_encoder.fc.weight.shape[1]
            del self.base_encoder.fc, self.momentum_encoder.fc
            self.base_encoder.fc = build_mlp(2, hidden_dim, mlp_dim, dim)
            self.momentum_encoder.fc = build_mlp(2, hidden_dim, mlp_dim, dim)
        else:  # MoCo_ViT: head replaced by a 3-layer projector
            hidden_dim = self.base_encoder.head.weight.shape[1]
            del self.base_encoder.head, self.momentum_encoder.head
            self.base_encoder.head = build_mlp(3, hidden_dim, mlp_dim, dim)
            self.momentum_encoder.head = build_mlp(3, hidden_dim, mlp_dim, dim)
        self.predictor = build_mlp(2, dim, mlp_dim, dim, False)
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.data.copy_(pb.data)
            pm.requires_grad = False

    @torch.no_grad()
    def _update_momentum_encoder(self, m):
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.data = pm.data * m + pb.data * (1.0 - m)

    def contrastive_loss(self, q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = torch.einsum("nc,mc->nm", [q, k]) / self.T
        labels = torch.arange(logits.shape[0], dtype=torch.long)
        return nn.CrossEntropyLoss()(logits, labels) * (2 * self.T)

    def forward(self, x1, x2, m):
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self._update_momentum_encoder(m)
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        return self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)


# ---- the cases ----

def _redraw(g, model, scale=0.5):
    """Every parameter and buffer of the query side redrawn from g (none
    zero), the key side copied, as the builders copy it."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("encoder_k.", "momentum_encoder.")):
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * scale)
        pairs = (("encoder_q.", "encoder_k."), ("base_encoder.", "momentum_encoder."))
        state = model.state_dict()
        for name, p in model.named_parameters():
            for a, b in pairs:
                if name.startswith(b):
                    p.copy_(state[a + name[len(b):]])


def _state(model, prefix=""):
    return OrderedDict((prefix + k, v.detach().clone()) for k, v in model.state_dict().items())


def _steps(g, model, opt, B, image, run):
    t = _state(model)
    for i in range(2):
        x1 = torch.randn(B, 1, image, image, generator=g).double()
        x2 = torch.randn(B, 1, image, image, generator=g).double()
        loss = run(i, x1, x2)
        opt.zero_grad()
        loss.backward()
        t[f"x1_{i}"], t[f"x2_{i}"], t[f"loss_{i}"] = x1, x2, loss.detach().reshape(1)
        for name, p in model.named_parameters():
            if p.grad is not None:
                t[f"grad{i}.{name}"] = p.grad.clone()
        opt.step()
    t.update(_state(model, "after."))
    return t


def moco_v12(g, version, resnet=False):
    torch.manual_seed(0)
    T = 0.07 if version == 1 else 0.2
    B, K, dim, m, image = (16 if resnet else 4), 32, 8, 0.9, (16 if resnet else 8)
    base = (lambda num_classes: SmallResNet(8, num_classes)) if resnet else \
        grey_vit(image, 4, 2, 2, 8, 12)
    model = MoCo(base, dim, K, m, T, mlp=version == 2)
    _redraw(g, model)
    with torch.no_grad():  # the queue as the builder makes it, from g
        model.queue.copy_(F.normalize(torch.randn(dim, K, generator=g), dim=0))
    model.double()
    opt = torch.optim.SGD(model.parameters(), 0.03, momentum=0.9, weight_decay=1e-4)

    def run(i, x1, x2):
        logits, labels = model(x1, x2)
        return nn.CrossEntropyLoss()(logits, labels)
    t = _steps(g, model, opt, B, image, run)
    return t, {"version": str(version), "T": str(T), "m": str(m), "K": str(K), "dim": str(dim),
               "B": str(B), "image": str(image), "patch": "4", "layers": "2", "heads": "2",
               "hidden": "8", "mlp": "12", "lr": "0.03", "arch": "resnet" if resnet else "vit",
               "width": "8", "depth": "18"}


def moco_v3(g, resnet=False):
    torch.manual_seed(0)
    T, B, dim, mlp_dim, image = 0.2, (16 if resnet else 8), 8, 16, (16 if resnet else 8)
    if resnet:
        base = lambda num_classes: SmallResNet(8, num_classes)
    else:
        base = lambda num_classes: TimmViT(image, 4, 2, 2, 8, 12, num_classes)
    model = MoCoV3(base, dim, mlp_dim, T, resnet)
    _redraw(g, model)
    for enc in () if resnet else (model.base_encoder, model.momentum_encoder):
        # vits.py's stop-grad parts
        enc.patch_embed.proj.weight.requires_grad = False
        enc.patch_embed.proj.bias.requires_grad = False
        enc.pos_embed.requires_grad = False
    model.double()
    # SGD rather than moco-v3's AdamW: Adam's step divides by the gradient's
    # size, so parameters whose gradient is zero but for rounding (the key
    # part of a qkv bias, a bias before a batch norm) would move by the
    # rounding's sign
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=1e-4)
    ms = [0.99, 0.9]  # the momentum of each step (the first acts on equal weights)
    t = _steps(g, model, opt, B, image, lambda i, x1, x2: model(x1, x2, ms[i]))
    return t, {"version": "3", "T": str(T), "m0": str(ms[0]), "m1": str(ms[1]), "dim": str(dim),
               "mlp_dim": str(mlp_dim), "B": str(B), "image": str(image), "patch": "4",
               "layers": "2", "heads": "2", "hidden": "8", "mlp": "12", "lr": "0.05",
               "arch": "resnet" if resnet else "vit", "width": "8", "depth": "18"}


CASES = {
    "moco_v1_step": lambda g: moco_v12(g, 1),
    "moco_v2_step": lambda g: moco_v12(g, 2),
    "moco_v3_step": moco_v3,
    "moco_v1_resnet_step": lambda g: moco_v12(g, 1, resnet=True),
    "moco_v2_resnet_step": lambda g: moco_v12(g, 2, resnet=True),
    "moco_v3_resnet_step": lambda g: moco_v3(g, resnet=True),
}
