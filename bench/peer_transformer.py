"""peer_transformer.py - PyTorch's side of bench/bench_transformer.c: one
training step of the same translation model built on nn.Transformer,
eager or compiled:

    /usr/bin/python3 bench/peer_transformer.py tf_book_full|tf_large_full [--threads N]
    .venv/bin/python bench/peer_transformer.py tf_large_full --compile

(tf_book and tf_large name the same step: PyTorch's model computes every
position, padding included, like qkv's *_full cases.)

The model: nn.Embedding * sqrt(E) plus d2l's sinusoidal positions (float32),
dropout, nn.Transformer (post-norm, ReLU, batch first; the same widths,
heads, blocks and dropout as qkv), nn.Linear to the target vocabulary. The
masks are what qkv applies: source padding (from the valid lengths) on the
encoder's self-attention and the decoder's cross-attention, causal on the
decoder's self-attention, passed with tgt_is_causal=True (without it
nn.Transformer inspects the mask with .item(), a graph break that leaves
torch.compile at eager speed). The step: forward with teacher forcing,
r0.17's masked cross-entropy (sum over the batch of each sequence's CE /
T), backward, clip_grad_norm_ to 1 and Adam, both foreach. nn.Transformer
differs from d2l's blocks (which qkv builds) in biases on the attention
projections, dropout inside the FFN and a final LayerNorm after each
stack: a little more work on this side. Random tokens, as on the qkv side."""
import inspect
import math

from peer_util import Peer

BOOK = (32, 64, 64, 10, 184, 201, 0.005, 2, 31)
LARGE = (256, 1024, 128, 35, 10012, 17851, 0.001, 1, 3)
CASES = {  # width, FFN, batch, steps, source and target vocabularies, lr, warm-up and timed steps
    "tf_book": BOOK, "tf_book_full": BOOK, "tf_large": LARGE, "tf_large_full": LARGE,
}
HEADS, BLOCKS, DROPOUT = 4, 2, 0.1
PAD, BOS, EOS = 1, 2, 3


def main():
    peer = Peer(CASES)
    torch = peer.torch
    nn = torch.nn
    peer.start()
    E, F, B, T, Vs, Vt, lr, warmup, reps = CASES[peer.case]
    # torch 2.x: say that the mask is causal (Debian's 1.13 has no such flag)
    causal_kw = ({"tgt_is_causal": True}
                 if "tgt_is_causal" in inspect.signature(nn.Transformer.forward).parameters
                 else {})

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_embedding = nn.Embedding(Vs, E)
            self.tgt_embedding = nn.Embedding(Vt, E)
            # d2l's PositionalEncoding, computed in float32
            i = torch.arange(1000, dtype=torch.float32).reshape(-1, 1)
            angle = i / torch.pow(10000, torch.arange(0, E, 2, dtype=torch.float32) / E)
            P = torch.zeros(1000, E)
            P[:, 0::2], P[:, 1::2] = torch.sin(angle), torch.cos(angle)
            self.register_buffer("P", P)
            self.dropout = nn.Dropout(DROPOUT)
            self.transformer = nn.Transformer(E, HEADS, BLOCKS, BLOCKS, F, DROPOUT,
                                              batch_first=True)
            self.dense = nn.Linear(E, Vt)

        def embed(self, emb, ids):
            return self.dropout(emb(ids) * math.sqrt(E) + self.P[: ids.shape[1]])

        def forward(self, src, src_pad, dec_in, causal):
            y = self.transformer(self.embed(self.src_embedding, src),
                                 self.embed(self.tgt_embedding, dec_in), tgt_mask=causal,
                                 src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad,
                                 **causal_kw)
            return self.dense(y)

    def random_batch(V):
        n = torch.randint(1, T + 1, (B,))
        pos = torch.arange(T).expand(B, T)
        ids = torch.randint(4, V, (B, T))
        ids[pos == (n - 1).unsqueeze(1)] = EOS
        ids[pos >= n.unsqueeze(1)] = PAD
        return ids, pos >= n.unsqueeze(1)

    m = Seq2Seq()
    params = list(m.parameters())
    opt = torch.optim.Adam(params, lr=lr, foreach=True)
    src, src_pad = random_batch(Vs)
    target, _ = random_batch(Vt)
    dec_in = torch.cat([torch.full((B, 1), BOS), target[:, :-1]], 1)
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    ce = nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum")
    clip_kw = peer.foreach(nn.utils.clip_grad_norm_)

    def loss(src, src_pad, dec_in, causal, target):
        logits = m(src, src_pad, dec_in, causal)
        return ce(logits.reshape(-1, Vt), target.reshape(-1)) / T

    loss_of = peer.compile(loss)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(src, src_pad, dec_in, causal, target).backward()
        nn.utils.clip_grad_norm_(params, 1.0, **clip_kw)
        opt.step()

    ms = peer.time_steps(step, warmup, reps)
    peer.report(peer.case, ms, params, opt)
    print(f"{peer.case}_tokens {B * T}")


if __name__ == "__main__":
    main()
