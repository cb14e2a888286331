"""peer_resnet.py - PyTorch's side of bench/bench_resnet.c, with
torchvision's resnet18/resnet50 (the layout qkv_resnet follows).

    python bench/peer_resnet.py r50_detr_infer|r18_train|r18_moco_train [--threads N]

r50_detr_infer: resnet50 with DETR's FrozenBatchNorm2d, eval mode under
torch.inference_mode(), one 3x800x1066 image to C5. r18_train: resnet18
(1000 classes), batch 32 of 3x224x224, forward, cross-entropy, backward,
SGD momentum 0.9, weight decay 1e-4. r18_moco_train: resnet18 with a 3x3
stride-1 grey stem, no max pool and MoCo v2's MLP head to 128, batch 64 of
1x28x28, the same step. Random weights and images."""
from peer_util import report, start, time_steps

CASES = {"r50_detr_infer": 1, "r18_train": 32, "r18_moco_train": 64}


def main():
    torch, case = start(CASES)
    B = CASES[case]
    import torchvision
    from torch import nn
    if case == "r50_detr_infer":
        class FrozenBatchNorm2d(nn.Module):
            def __init__(self, n):
                super().__init__()
                for k, v in (("weight", 1), ("bias", 0), ("running_mean", 0),
                             ("running_var", 1)):
                    self.register_buffer(k, torch.full((n,), float(v)))

            def forward(self, x):
                scale = self.weight * (self.running_var + 1e-5).rsqrt()
                shift = self.bias - self.running_mean * scale
                return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

        m = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d).eval()
        x = torch.rand(B, 3, 800, 1066)

        def step():
            with torch.inference_mode():
                y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
                m.layer4(m.layer3(m.layer2(m.layer1(y))))

        report(case, time_steps(step, 1, 3), list(m.parameters()))
    else:
        if case == "r18_train":
            m = torchvision.models.resnet18(num_classes=1000)
            x = torch.rand(B, 3, 224, 224)
        else:
            m = torchvision.models.resnet18(num_classes=128)
            m.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
            m.maxpool = nn.Identity()
            m.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), m.fc)
            x = torch.rand(B, 1, 28, 28)
        n_cls = 1000 if case == "r18_train" else 128
        y = torch.randint(0, n_cls, (B,))
        opt = torch.optim.SGD(m.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)

        def step():
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        report(case, time_steps(step, 1, 3 if case == "r18_train" else 5),
               list(m.parameters()), opt)
    print(f"{case}_images {B}")


if __name__ == "__main__":
    main()
