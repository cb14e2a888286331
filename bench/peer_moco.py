"""peer_moco.py - PyTorch's side of bench/bench_moco.c: a MoCo v2 training
step as facebookresearch/moco's builder.py takes it on one process, with its
CIFAR demo's split batch norm standing in for shuffle BN across GPUs:

    .venv/bin/python bench/peer_moco.py moco_v2_full|moco_vit_full [--threads N] [--compile]

moco_v2_full (`qkv train moco`'s default): torchvision's resnet18 with a 3x3
stride-1 grey conv1, no max pool, width 16 (16/32/64/128 planes: its
BasicBlocks built by torchvision's ResNet with `width_per_group` and the
stage widths of a width-16 net), v2's MLP head (128 -> 128 -> 128) in
place of fc, every batch norm split into 8 groups of rows (the batch seen
as (B/8, 8 C, H, W) while training, as the demo's SplitBatchNorm), the
key encoder's batch shuffled before and put back after (the demo's
single-GPU batch shuffle); batch 256, K 4096, T 0.2, m 0.99, SGD lr 0.03,
momentum 0.9, weight decay 5e-4 (foreach).

moco_vit_full: the ViT encoder of `qkv train moco --arch vit`:
torchvision's VisionTransformer (28x28 grey via a 1-channel conv_proj,
patch 4, width 96, 4 blocks, 4 heads, MLP 192) with v2's MLP head in place
of heads.head; AdamW (foreach); no batch norm, so no shuffle.

q = normalize(f_q(x1)); the momentum update (foreach, parameters only);
k = normalize(f_k(x2)) under no_grad; logits [q.k, q queue] / T;
cross-entropy; backward; the optimizer; the enqueue. Random images."""
from peer_util import Peer

CASES = {"moco_v2_full": 256, "moco_vit_full": 256}


def main():
    peer = Peer(CASES)
    torch, case = peer.torch, peer.case
    B, K, dim, T, m, splits = CASES[case], 4096, 128, 0.2, 0.99, 8
    try:
        import torchvision
    except ImportError:  # scripts/bench-setup.sh installs it into .venv
        print(f"{case}_ms n/a")
        return
    nn, F = torch.nn, torch.nn.functional
    peer.start()

    class SplitBN(nn.BatchNorm2d):
        """Batch statistics per group of rows while training; the running
        statistics the mean of the groups'."""

        def forward(self, x):
            if not self.training:
                return super().forward(x)
            n, c, h, w = x.shape
            rm = self.running_mean.repeat(splits)
            rv = self.running_var.repeat(splits)
            y = F.batch_norm(x.view(n // splits, c * splits, h, w), rm, rv,
                             self.weight.repeat(splits), self.bias.repeat(splits),
                             True, self.momentum, self.eps).view(n, c, h, w)
            with torch.no_grad():
                self.running_mean.copy_(rm.view(splits, c).mean(0))
                self.running_var.copy_(rv.view(splits, c).mean(0))
            return y

    def resnet():
        width = 16
        # torchvision's ResNet with BasicBlocks of width 16 * 2^l: its
        # constructor fixes the planes at 64 .. 512, so the stages are
        # rebuilt with its own _make_layer at the smaller widths
        r = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock,
                                             [2, 2, 2, 2], num_classes=dim,
                                             norm_layer=SplitBN)
        r.inplanes = width
        r.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        r.bn1 = SplitBN(width)
        r.maxpool = nn.Identity()
        block = torchvision.models.resnet.BasicBlock
        r.layer1 = r._make_layer(block, width, 2)
        r.layer2 = r._make_layer(block, 2 * width, 2, stride=2)
        r.layer3 = r._make_layer(block, 4 * width, 2, stride=2)
        r.layer4 = r._make_layer(block, 8 * width, 2, stride=2)
        r.fc = nn.Sequential(nn.Linear(8 * width, 8 * width), nn.ReLU(),
                             nn.Linear(8 * width, dim))
        return r

    def vit():
        v = torchvision.models.VisionTransformer(28, 4, 4, 4, 96, 192, num_classes=dim)
        v.conv_proj = nn.Conv2d(1, 96, 4, 4)
        v.heads.head = nn.Sequential(nn.Linear(96, 96), nn.ReLU(), v.heads.head)
        return v

    encoder = resnet if case == "moco_v2_full" else vit
    f_q, f_k = encoder(), encoder()
    pq, pk = list(f_q.parameters()), list(f_k.parameters())
    with torch.no_grad():
        f_k.load_state_dict(f_q.state_dict())
        for p in pk:
            p.requires_grad = False
    f_q.train(), f_k.train()
    queue = F.normalize(torch.randn(dim, K), dim=0)
    ptr = [0]
    if case == "moco_v2_full":
        opt = torch.optim.SGD(pq, lr=0.03, momentum=0.9, weight_decay=5e-4, foreach=True)
    else:
        opt = torch.optim.AdamW(pq, lr=1e-3, weight_decay=0.05, foreach=True)
    x1, x2 = torch.randn(B, 1, 28, 28), torch.randn(B, 1, 28, 28)
    labels = torch.zeros(B, dtype=torch.long)
    query = peer.compile(lambda x: F.normalize(f_q(x), dim=1))
    key = peer.compile(lambda x: F.normalize(f_k(x), dim=1))
    shuffle = case == "moco_v2_full"

    def step():
        opt.zero_grad(set_to_none=True)
        q = query(x1)
        with torch.no_grad():
            torch._foreach_mul_(pk, m)
            torch._foreach_add_(pk, pq, alpha=1 - m)
            if shuffle:
                idx = torch.randperm(B)
                k = key(x2[idx])[torch.argsort(idx)]
            else:
                k = key(x2)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / T
        F.cross_entropy(logits, labels).backward()
        opt.step()
        with torch.no_grad():
            queue[:, ptr[0]:ptr[0] + B] = k.T
            ptr[0] = (ptr[0] + B) % K

    ms = peer.time_steps(step, 2, 5)
    peer.report(case, ms, pq, opt)
    print(f"{case}_images {B}")


if __name__ == "__main__":
    main()
