"""peer_vit.py - PyTorch's side of bench/bench_vit.c, with torchvision's
VisionTransformer (the layout qkv_vit follows, parameter for parameter),
eager or compiled:

    /usr/bin/python3 bench/peer_vit.py vit_train_full|vitb16_b1_full|vitb16_b8_full [--threads N]
    .venv/bin/python bench/peer_vit.py vitb16_b8_full --compile

torchvision computes every token in the last block, as qkv's *_full cases
do (the names without _full are accepted and run the same model).
vit_train: VisionTransformer(96, patch 16, 2 blocks, 8 heads, width 512,
MLP 2048, dropout and attention dropout 0.1, 10 classes) with conv_proj
replaced by Conv2d(1, 512, 16, 16) for grayscale; batch 128, forward,
cross-entropy, backward, SGD lr 0.1 (foreach). vitb16_b*: vit_b_16(
weights=None) in eval mode under torch.inference_mode(), batch 1 or 8.
Random images."""
from peer_util import Peer

CASES = {}
for _name, _b in (("vit_train", 128), ("vitb16_b1", 1), ("vitb16_b8", 8)):
    CASES[_name] = CASES[_name + "_full"] = _b


def main():
    peer = Peer(CASES)
    torch, case = peer.torch, peer.case
    B = CASES[case]
    try:
        import torchvision
    except ImportError:  # scripts/bench-setup.sh installs it into .venv
        print(f"{case}_ms n/a")
        return
    peer.start()
    if case.startswith("vit_train"):
        m = torchvision.models.VisionTransformer(96, 16, 2, 8, 512, 2048, dropout=0.1,
                                                 attention_dropout=0.1, num_classes=10)
        m.conv_proj = torch.nn.Conv2d(1, 512, 16, 16)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, foreach=True)
        x = torch.rand(B, 1, 96, 96)
        y = torch.randint(0, 10, (B,))
        loss_of = peer.compile(lambda x, y: torch.nn.functional.cross_entropy(m(x), y))

        def step():
            opt.zero_grad(set_to_none=True)
            loss_of(x, y).backward()
            opt.step()

        ms = peer.time_steps(step, 1, 3)
        peer.report(case, ms, list(m.parameters()), opt)
    else:
        m = torchvision.models.vit_b_16(weights=None).eval()
        x = torch.rand(B, 3, 224, 224)
        forward = peer.compile(m)

        def step():
            with torch.inference_mode():
                forward(x)

        warmup, reps = (2, 7) if B == 1 else (1, 3)
        ms = peer.time_steps(step, warmup, reps)
        peer.report(case, ms, list(m.parameters()))
    print(f"{case}_images {B}")


if __name__ == "__main__":
    main()
