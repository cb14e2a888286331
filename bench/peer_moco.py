"""peer_moco.py - PyTorch's side of bench/bench_moco.c: a MoCo v2 training
step as facebookresearch/moco's builder.py takes it on one process (shuffle
BN off: the ViT has no batch norm), over torchvision's VisionTransformer
(28x28 grey via a 1-channel conv_proj, patch 4, width 96, 4 blocks, 4
heads, MLP 192) with v2's MLP head in place of heads.head; batch 256, K
4096, T 0.2, m 0.99, AdamW (foreach):

    .venv/bin/python bench/peer_moco.py moco_v2_full [--threads N] [--compile]

q = normalize(f_q(x1)); the momentum update (foreach); k = normalize(f_k(x2))
under no_grad; logits [q.k, q queue] / T; cross-entropy; backward; AdamW;
the enqueue. Random images."""
from peer_util import Peer

CASES = {"moco_v2": 256, "moco_v2_full": 256}


def main():
    peer = Peer(CASES)
    torch, case = peer.torch, peer.case
    B, K, dim, T, m = CASES[case], 4096, 128, 0.2, 0.99
    try:
        import torchvision
    except ImportError:  # scripts/bench-setup.sh installs it into .venv
        print(f"{case}_ms n/a")
        return
    nn, F = torch.nn, torch.nn.functional
    peer.start()

    def encoder():
        v = torchvision.models.VisionTransformer(28, 4, 4, 4, 96, 192, num_classes=dim)
        v.conv_proj = nn.Conv2d(1, 96, 4, 4)
        v.heads.head = nn.Sequential(nn.Linear(96, 96), nn.ReLU(), v.heads.head)
        return v

    f_q, f_k = encoder(), encoder()
    pq, pk = list(f_q.parameters()), list(f_k.parameters())
    with torch.no_grad():
        for a, b in zip(pq, pk):
            b.copy_(a)
            b.requires_grad = False
    queue = F.normalize(torch.randn(dim, K), dim=0)
    ptr = [0]
    opt = torch.optim.AdamW(pq, lr=1e-3, weight_decay=0.05, foreach=True)
    x1, x2 = torch.randn(B, 1, 28, 28), torch.randn(B, 1, 28, 28)
    labels = torch.zeros(B, dtype=torch.long)
    query = peer.compile(lambda x: F.normalize(f_q(x), dim=1))
    key = peer.compile(lambda x: F.normalize(f_k(x), dim=1))

    def step():
        opt.zero_grad(set_to_none=True)
        q = query(x1)
        with torch.no_grad():
            torch._foreach_mul_(pk, m)
            torch._foreach_add_(pk, pq, alpha=1 - m)
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
