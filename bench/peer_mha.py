"""peer_mha.py - PyTorch's side of bench/bench_mha.c: nn.MultiheadAttention
self-attention, forward + backward, sequence first, bias, no dropout,
need_weights=False, loss mean(y). Runs under either peer:

    /usr/bin/python3 bench/peer_mha.py mha_small [--threads N]
    .venv/bin/python bench/peer_mha.py mha_large

One case per process, so that the peak RSS is the case's own; method and
keys as bench/peer_util.py."""
from peer_util import report, start, time_steps

SHAPES = {  # batch, length, width, heads, timed steps
    "mha_small": (32, 128, 256, 8, 15),
    "mha_large": (4, 1024, 512, 8, 7),
}


def main():
    torch, case = start(SHAPES)
    B, N, E, H, reps = SHAPES[case]
    m = torch.nn.MultiheadAttention(E, H, bias=True)
    x0 = torch.randn(N, B, E)

    def step():
        m.zero_grad(set_to_none=False)
        x = x0.clone().requires_grad_()
        y, _ = m(x, x, x, need_weights=False)
        y.mean().backward()

    report(case, time_steps(step, 2, reps), list(m.parameters()))


if __name__ == "__main__":
    main()
