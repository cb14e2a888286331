"""peer_vit.py - PyTorch's side of bench/bench_vit.c, with torchvision's
VisionTransformer (the layout qkv_vit follows, parameter for parameter).

    /usr/bin/python3 bench/peer_vit.py vit_train|vitb16_b1|vitb16_b8 [--threads N]

vit_train: VisionTransformer(96, patch 16, 2 blocks, 8 heads, width 512,
MLP 2048, dropout and attention dropout 0.1, 10 classes) with conv_proj
replaced by Conv2d(1, 512, 16, 16) for grayscale; batch 128, forward,
cross-entropy, backward, SGD lr 0.1. vitb16_b*: vit_b_16(weights=None) in
eval mode under torch.inference_mode(), batch 1 or 8. Random images."""
from peer_util import report, start, time_steps

CASES = {"vit_train": 128, "vitb16_b1": 1, "vitb16_b8": 8}


def main():
    torch, case = start(CASES)
    B = CASES[case]
    try:
        import torchvision
    except ImportError:  # scripts/bench-setup.sh installs it into .venv
        print(f"{case}_ms n/a")
        return
    if case == "vit_train":
        m = torchvision.models.VisionTransformer(96, 16, 2, 8, 512, 2048, dropout=0.1,
                                                 attention_dropout=0.1, num_classes=10)
        m.conv_proj = torch.nn.Conv2d(1, 512, 16, 16)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        x = torch.rand(B, 1, 96, 96)
        y = torch.randint(0, 10, (B,))

        def step():
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        report(case, time_steps(step, 2, 5), list(m.parameters()), opt)
    else:
        m = torchvision.models.vit_b_16(weights=None).eval()
        x = torch.rand(B, 3, 224, 224)

        def step():
            with torch.inference_mode():
                m(x)

        warmup, reps = (2, 11) if B == 1 else (1, 5)
        report(case, time_steps(step, warmup, reps), list(m.parameters()))
    print(f"{case}_images {B}")


if __name__ == "__main__":
    main()
