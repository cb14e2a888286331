"""A DETR that qkv trained, loaded into PyTorch's DETR (the re-creation of
facebookresearch/detr in cases_detr_model.py) with load_state_dict(strict=
True), run on the images of an input file: the check that qkv's model files
are the official layout.

Usage: detr_export.py MODEL.safetensors INPUT.safetensors OUTPUT.safetensors

INPUT holds pixel_values (N, C, H, W) and pixel_mask (N, H, W) (1 on image
pixels); OUTPUT gets logits (L, N, Q, K + 1) and boxes (L, N, Q, 4), every
decoder layer's, in eval mode. The configuration comes from the shapes and
the heads from the file's metadata; a backbone that qkv trained with batch
statistics loads into DETR's FrozenBatchNorm2d, which drops the batch
counts when it loads (as DETR's own _load_from_state_dict does) and in eval
mode computes what a batch norm does. Runs on Debian's torch 1.13."""
import os
import re
import sys

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases_resnet as R  # noqa: E402
import cases_detr_model as D  # noqa: E402
import stio  # noqa: E402


class NarrowResNet(ResNet):
    """torchvision's ResNet with `width` channels in the stem and planes in
    layer1 instead of 64 (doubled at each layer, the names unchanged): what
    qkv_resnet_config.width builds."""

    def __init__(self, block, layers, width, norm_layer):
        nn.Module.__init__(self)
        self._norm_layer = norm_layer
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()


def build(sd, meta):
    E = sd["input_proj.weight"].shape[0]
    F = sd["transformer.encoder.layers.0.linear1.weight"].shape[0]
    n_enc = len({m.group(1) for k in sd for m in [re.match(r"transformer\.encoder\.layers\.(\d+)\.", k)] if m})
    n_dec = len({m.group(1) for k in sd for m in [re.match(r"transformer\.decoder\.layers\.(\d+)\.", k)] if m})
    Q = sd["query_embed.weight"].shape[0]
    K = sd["class_embed.weight"].shape[0] - 1
    blocks = [len({m.group(1) for k in sd for m in [re.match(rf"backbone\.0\.body\.layer{i}\.(\d+)\.", k)] if m})
              for i in range(1, 5)]
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in sd
    depth = {(2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34, (3, 4, 6, 3, True): 50,
             (3, 4, 23, 3, True): 101}[tuple(blocks) + (bottleneck,)]
    width, cin = sd["backbone.0.body.conv1.weight"].shape[:2]
    if width == 64:
        net = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}[depth](
            norm_layer=R.FrozenBatchNorm2d)
    else:
        layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
        net = NarrowResNet(Bottleneck if bottleneck else BasicBlock, layers, width,
                           R.FrozenBatchNorm2d)
    if cin != 3:
        net.conv1 = nn.Conv2d(cin, width, 7, 2, 3, bias=False)
    net.fc = nn.Identity()
    model = D.DETR(net, E, int(meta["num_heads"]), F, n_enc, n_dec, Q, K)
    features = sd["input_proj.weight"].shape[1]
    if features != 512:
        model.input_proj = nn.Conv2d(features, E, kernel_size=1)
    return model.eval()


def main():
    sd, meta = stio.load(sys.argv[1])
    sd = {k: v.float() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model = build(sd, meta)
    model.load_state_dict(sd, strict=True)
    inp, _ = stio.load(sys.argv[2])
    with torch.no_grad():
        logits, boxes = model(inp["pixel_values"].float(), inp["pixel_mask"] == 0)
    stio.save(sys.argv[3], {"logits": logits, "boxes": boxes})


if __name__ == "__main__":
    main()
