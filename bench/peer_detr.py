"""peer_detr.py - PyTorch's side of bench/bench_detr.c: facebookresearch/
detr's model re-created from its definitions (tests/parity/cases_detr_model.py:
torchvision's ResNet as DETR's backbone, its Transformer, heads) and its set
criterion with the Hungarian matcher on scipy (tests/parity/cases_detr.py):

    .venv/bin/python bench/peer_detr.py detr_r50_full|detr_train_full [--threads N] [--compile]

detr_r50: DETR-R50 (FrozenBatchNorm2d, width 256, 8 heads, 6 + 6 layers, FFN
2048, 100 queries, 91 classes) in eval mode under torch.inference_mode(),
one 800x1066 image, every decoder layer's logits and boxes. detr_train: 16
grey 128x128 images with 1-5 random boxes, ResNet-18 of width 32
(torchvision's with 32 channels where it has 64) with BatchNorm2d in
training mode, stem and layer1 frozen, width 128, 8 heads, 3 + 3 layers,
FFN 512, 20 queries, 11 classes; forward, matching and loss on every
decoder layer, backward, clip_grad_norm_(0.1), AdamW (foreach) with the
backbone at a quarter of the rate. Random weights and images (the same
sizes as qkv's, not the same numbers)."""
import os
import sys

from peer_util import Peer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "parity"))
CASES = {"detr_r50_full": 1, "detr_train_full": 16}


def main():
    peer = Peer(CASES)
    torch, case = peer.torch, peer.case
    try:
        import torchvision  # noqa: F401
        import scipy  # noqa: F401
        import cases_detr as C
        import cases_detr_model as D
        import cases_resnet as R
        from detr_export import NarrowResNet
    except ImportError as e:  # scripts/bench-setup.sh installs torchvision and scipy
        sys.exit(f"peer_detr: {e} (scripts/bench-setup.sh installs torchvision and scipy)")
    from torch import nn
    from torchvision.models import resnet18, resnet50
    peer.start()
    if case == "detr_r50_full":
        net = resnet50(norm_layer=R.FrozenBatchNorm2d)
        net.fc = nn.Identity()
        m = D.DETR(net, 256, 8, 2048, 6, 6, 100, 91)
        m.input_proj = nn.Conv2d(2048, 256, kernel_size=1)
        m.eval()
        x = torch.randn(1, 3, 800, 1066)
        mask = torch.zeros(1, 800, 1066, dtype=torch.bool)
        forward = peer.compile(m)

        def step():
            with torch.inference_mode():
                forward(x, mask)

        ms = peer.time_steps(step, 1, 3)
        peer.report(case, ms, list(m.parameters()) + list(m.buffers()))
    else:
        B = 16
        from torchvision.models.resnet import BasicBlock
        net = NarrowResNet(BasicBlock, [2, 2, 2, 2], 32, nn.BatchNorm2d)
        net.conv1 = nn.Conv2d(1, 32, 7, 2, 3, bias=False)
        m = D.DETR(net, 128, 8, 512, 3, 3, 20, 11).train()
        m.input_proj = nn.Conv2d(256, 128, kernel_size=1)
        for n, p in m.named_parameters():  # DETR's Backbone: layer2..4 train
            if n.startswith("backbone.") and not any(f"layer{k}" in n for k in (2, 3, 4)):
                p.requires_grad_(False)
        backbone = [p for n, p in m.named_parameters() if n.startswith("backbone.") and p.requires_grad]
        rest = [p for n, p in m.named_parameters() if not n.startswith("backbone.")]
        opt = torch.optim.AdamW([{"params": rest}, {"params": backbone, "lr": 5e-5}], lr=2e-4,
                                weight_decay=1e-4, foreach=True)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(B, 1, 128, 128)
        mask = torch.zeros(B, 128, 128, dtype=torch.bool)
        targets = []
        for _ in range(B):
            k = int(torch.randint(1, 6, (1,), generator=g))
            wh = 0.1 + 0.3 * torch.rand(k, 2, generator=g)
            c = wh / 2 + (1 - wh) * torch.rand(k, 2, generator=g)
            targets.append({"labels": torch.randint(1, 11, (k,), generator=g),
                            "boxes": torch.cat([c, wh], 1)})
        forward = peer.compile(m)
        params = [p for p in m.parameters() if p.requires_grad]

        def step():
            opt.zero_grad(set_to_none=True)
            logits, boxes = forward(x, mask)
            C.set_criterion(logits, boxes, targets)[0].backward()
            torch.nn.utils.clip_grad_norm_(params, 0.1, **peer.foreach(torch.nn.utils.clip_grad_norm_))
            opt.step()

        ms = peer.time_steps(step, 1, 5)
        peer.report(case, ms, params, opt)
    print(f"{case}_images {CASES[case]}")


if __name__ == "__main__":
    main()
