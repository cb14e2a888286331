"""peer_mha.py - PyTorch's side of bench/bench_mha.c: nn.MultiheadAttention
self-attention, forward + backward, sequence first, bias, no dropout,
need_weights=False, loss mean(y). Runs under either peer, eager or
compiled:

    /usr/bin/python3 bench/peer_mha.py mha_small [--threads N]
    .venv/bin/python bench/peer_mha.py mha_large [--compile]

One case per process, so that the peak RSS is the case's own; method and
keys as bench/peer_util.py."""
from peer_util import Peer

SHAPES = {  # batch, length, width, heads, timed steps
    "mha_small": (32, 128, 256, 8, 9),
    "mha_large": (4, 1024, 512, 8, 5),
}


def main():
    peer = Peer(SHAPES)
    torch = peer.torch
    peer.start()
    B, N, E, H, reps = SHAPES[peer.case]
    m = torch.nn.MultiheadAttention(E, H, bias=True)
    x0 = torch.randn(N, B, E)
    loss_of = peer.compile(lambda x: m(x, x, x, need_weights=False)[0].mean())

    def step():
        m.zero_grad(set_to_none=False)
        x = x0.clone().requires_grad_()
        loss_of(x).backward()

    ms = peer.time_steps(step, 2, reps)
    peer.report(peer.case, ms, list(m.parameters()))


if __name__ == "__main__":
    main()
