#!/usr/bin/env python3
"""State_dict interop for test_resnet.c: does torchvision accept what qkv
saved?

  resnet_state_dict.py MODEL PROBE DEPTH CLASSES FROZEN

loads qkv's file MODEL into torchvision's resnet<DEPTH>(num_classes=CLASSES)
(FROZEN 1: built with DETR's FrozenBatchNorm2d and no fc) with
load_state_dict(strict=True), runs it in eval mode on PROBE's __x and
compares with PROBE's __out (qkv's output: logits, or C5 when FROZEN).
Exits 0 when the largest difference is within 1e-4 of the largest |out|.
"""
import sys

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50

from cases_resnet import FrozenBatchNorm2d
from stio import load


def main():
    model, probe, depth, classes, frozen = sys.argv[1:6]
    make = {"18": resnet18, "34": resnet34, "50": resnet50}[depth]
    if frozen == "1":
        m = make(norm_layer=FrozenBatchNorm2d)
        m.fc = nn.Identity()
    else:
        m = make(num_classes=int(classes))
    sd, _ = load(model)
    m.load_state_dict(sd, strict=True)
    p, _ = load(probe)
    m.eval()
    with torch.no_grad():
        if frozen == "1":
            x = p["__x"]
            y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            out = m.layer4(m.layer3(m.layer2(m.layer1(y))))
        else:
            out = m(p["__x"])
    err = (out - p["__out"]).abs().max().item()
    scale = p["__out"].abs().max().item()
    print(f"resnet_state_dict: {len(sd)} keys loaded strictly, max abs diff {err:.3g} "
          f"(largest |out| {scale:.3g})")
    return 0 if err <= 1e-4 * scale else 1


if __name__ == "__main__":
    sys.exit(main())
