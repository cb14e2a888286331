"""peer_transformer.py - PyTorch's side of bench/bench_transformer.c: one
training step of the same translation model built on nn.Transformer.

    /usr/bin/python3 bench/peer_transformer.py tf_book|tf_book_full|tf_large [--threads N]

The model: nn.Embedding * sqrt(E) plus d2l's sinusoidal positions (float32),
dropout, nn.Transformer (post-norm, ReLU, batch first; the same widths,
heads, blocks and dropout as qkv), nn.Linear to the target vocabulary. The
masks are what qkv applies: source padding (from the valid lengths) on the
encoder's self-attention and the decoder's cross-attention, causal on the
decoder's self-attention. The step: forward with teacher forcing, r0.17's
masked cross-entropy (sum over the batch of each sequence's CE / T),
backward, clip_grad_norm_ to 1, Adam. nn.Transformer differs from d2l's
blocks (which qkv builds) in biases on the attention projections, dropout
inside the FFN and a final LayerNorm after each stack: a little more work on
this side. Random tokens, as on the qkv side."""
import math

from peer_util import report, start, time_steps

CASES = {  # width, FFN, batch, steps, source and target vocabularies, lr, timed steps
    "tf_book": (32, 64, 64, 10, 184, 201, 0.005, 31),
    # qkv's tf_book without skipping the padding; PyTorch always computes it
    "tf_book_full": (32, 64, 64, 10, 184, 201, 0.005, 31),
    "tf_large": (256, 1024, 128, 35, 10012, 17851, 0.001, 5),
}
HEADS, BLOCKS, DROPOUT = 4, 2, 0.1
PAD, BOS, EOS = 1, 2, 3


def main():
    torch, case = start(CASES)
    nn = torch.nn
    E, F, B, T, Vs, Vt, lr, reps = CASES[case]

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
                                 src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad)
            return self.dense(y)

    def random_batch(V):
        n = torch.randint(1, T + 1, (B,))
        pos = torch.arange(T).expand(B, T)
        ids = torch.randint(4, V, (B, T))
        ids[pos == (n - 1).unsqueeze(1)] = EOS
        ids[pos >= n.unsqueeze(1)] = PAD
        return ids, pos >= n.unsqueeze(1)

    m = Seq2Seq()
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    src, src_pad = random_batch(Vs)
    target, _ = random_batch(Vt)
    dec_in = torch.cat([torch.full((B, 1), BOS), target[:, :-1]], 1)
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum")

    def step():
        logits = m(src, src_pad, dec_in, causal)
        loss = loss_fn(logits.reshape(-1, Vt), target.reshape(-1)) / T
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    report(case, time_steps(step, 2, reps), list(m.parameters()), opt)
    print(f"{case}_tokens {B * T}")


if __name__ == "__main__":
    main()
