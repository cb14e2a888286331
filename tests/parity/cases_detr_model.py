"""Parity cases for the whole DETR (Debian's torch 1.13, torchvision 0.14):
a re-creation of facebookresearch/detr's model from its definitions
(models/detr.py DETR and MLP, backbone.py's Joiner with FrozenBatchNorm2d,
stem and layer1 frozen, position_encoding.py's PositionEmbeddingSine,
transformer.py's Transformer: cases_transformer.py's re-creation), with a
tiny transformer on a ResNet-18, under the official state_dict names.

  detr_model_r18   two images of 64x96, the second padded to 64x64 (its
                   mask), every decoder layer's pred_logits and pred_boxes,
                   and for a random upstream gradient of both the gradient
                   of every trainable tensor outside the backbone and of
                   four of its convolutions (layer2's first and its
                   downsample, layer3's last, layer4's downsample).

Weights are torchvision's and DETR's initialisation, batch-norm constants
redrawn and everything rounded to bfloat16 (cases_resnet.py's helpers,
which also settle every ReLU of the backbone clear of its kink so that the
backbone's gradients are comparable, and check it during the forward for
layers 2-4, the ones gradients pass through).
"""
import math

import torch
from torch import nn
from torchvision.models import resnet18

import cases_resnet as R
import cases_transformer as T


class PositionEmbeddingSine(nn.Module):
    """DETR's, normalize=True, scale 2 pi, on the padding mask (True on
    padding)."""

    def __init__(self, num_pos_feats, temperature=10000):
        super().__init__()
        self.num_pos_feats, self.temperature, self.scale = num_pos_feats, temperature, 2 * math.pi

    def forward(self, mask):
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class MLP(nn.Module):
    def __init__(self, i, h, o, n):
        super().__init__()
        dims = [h] * (n - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([i] + dims, dims + [o]))

    def forward(self, x):
        for k, layer in enumerate(self.layers):
            x = torch.relu(layer(x)) if k < len(self.layers) - 1 else layer(x)
        return x


class Body(nn.Module):
    """IntermediateLayerGetter(resnet, {'layer4': '0'}): the stem and layers."""

    def __init__(self, m):
        super().__init__()
        for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, k, getattr(m, k))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Backbone(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.body = Body(m)


class Joiner(nn.Sequential):
    def __init__(self, backbone, pos):
        super().__init__(backbone, pos)


class DETR(nn.Module):
    def __init__(self, resnet, E, H, F, n_enc, n_dec, Q, K, pre=False):
        super().__init__()
        self.backbone = Joiner(Backbone(resnet), PositionEmbeddingSine(E // 2))
        self.input_proj = nn.Conv2d(512, E, kernel_size=1)
        self.transformer = T._DetrTransformer(E, H, F, n_enc, n_dec, pre)
        self.query_embed = nn.Embedding(Q, E)
        self.class_embed = nn.Linear(E, K + 1)
        self.bbox_embed = MLP(E, E, 4, 3)

    def forward(self, x, mask):
        """x (B, 3, H, W); mask (B, H, W) True on padding -> every layer's
        logits (L, B, Q, K + 1) and boxes (L, B, Q, 4)"""
        feat = self.backbone[0].body(x)
        m = nn.functional.interpolate(mask[None].float(), size=feat.shape[-2:]).to(torch.bool)[0]
        pos = self.backbone[1](m)
        src = self.input_proj(feat)
        hs, _ = self.transformer(src.flatten(2).permute(2, 0, 1), m.flatten(1),
                                 self.query_embed.weight, pos.flatten(2).permute(2, 0, 1))
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()


def make_detr(g, E, H, F, n_enc, n_dec, Q, K, x):
    """A random official-layout DETR with bfloat16 weights and its backbone's
    kinks settled for x."""
    R._seed_torch(g)
    resnet = resnet18(norm_layer=R.FrozenBatchNorm2d)
    resnet.fc = nn.Identity()
    R._randomise(g, resnet)
    R._settle_kinks(g, resnet, x)
    model = DETR(resnet, E, H, F, n_enc, n_dec, Q, K)
    for p in model.transformer.parameters():  # DETR's _reset_parameters
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not n.startswith("backbone."):
                if p.dim() == 1 and "norm" in n:  # layer norms: not 1 and 0
                    p.copy_((torch.rand(p.shape, generator=g) * 0.6 + 0.7) if n.endswith("weight")
                            else (torch.rand(p.shape, generator=g) - 0.5) * 0.4)
                elif p.dim() == 1:  # biases DETR zeroes: some of each
                    p.add_((torch.rand(p.shape, generator=g) - 0.5) * 0.2)
                p.copy_(p.to(torch.bfloat16).float())
    # the random frozen batch norms leave C5 some 400 times larger than a
    # trained backbone's; scaled back by input_proj, the first encoder
    # layer's attention is not saturated (a saturated softmax's gradient is
    # a difference of large numbers: float32 noise on both sides)
    with torch.no_grad():
        scale = model.backbone[0].body(x).std()
        model.input_proj.weight.div_(scale)
        model.input_proj.weight.copy_(model.input_proj.weight.to(torch.bfloat16).float())
    for n, p in model.named_parameters():  # DETR's Backbone: layer2..4 train
        if n.startswith("backbone.") and not any(f"layer{k}" in n for k in (2, 3, 4)):
            p.requires_grad_(False)
    return model


BACKBONE_GRADS = ["backbone.0.body.layer2.0.conv1.weight",
                  "backbone.0.body.layer2.0.downsample.0.weight",
                  "backbone.0.body.layer3.1.conv2.weight",
                  "backbone.0.body.layer4.0.downsample.0.weight"]


def _model_case(g):
    E, H, F, n_enc, n_dec, Q, K = 16, 4, 32, 2, 3, 5, 4
    x = torch.randn(2, 3, 64, 96, generator=g)
    x[1, :, :, 64:] = 0  # the second image is 64x64, padded on the right
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 64:] = True
    model = make_detr(g, E, H, F, n_enc, n_dec, Q, K, x)
    # gradients flow down to layer2 only (the stem and layer1 are frozen and
    # the image needs none): the ReLUs of layers 2-4 must be clear of their
    # kinks; the padding's constant region ties max-pool windows harmlessly
    body = model.backbone[0].body
    checks = [R._KinkCheck(layer, "detr_model_r18") for layer in (body.layer2, body.layer3,
                                                                 body.layer4)]
    logits, boxes = model(x, mask)
    for c in checks:
        c.remove()
    g_logits, g_boxes = torch.randn(logits.shape, generator=g), torch.randn(boxes.shape, generator=g)
    ((logits * g_logits).sum() + (boxes * g_boxes).sum()).backward()
    t = {k: (v.to(torch.bfloat16) if v.dtype.is_floating_point else v).clone()
         for k, v in model.state_dict().items()}
    t.update({"__pixel_values": x, "__pixel_mask": (~mask).float(), "__logits": logits.detach(),
              "__boxes": boxes.detach(), "__g_logits": g_logits, "__g_boxes": g_boxes})
    # every trainable tensor's gradient but the backbone's, of which four
    # convolutions (one per stage and a downsample) keep the fixture small
    for n, p in model.named_parameters():
        if p.requires_grad and (not n.startswith("backbone.") or n in BACKBONE_GRADS):
            t["__grad." + n] = p.grad
    return t, {"num_heads": str(H)}


CASES = {
    "detr_model_r18": _model_case,
}
