/* bench_transformer.c - one training step of the book's Transformer for
 * translation (qkv_seq2seq: embeddings * sqrt(E), sinusoidal positions,
 * dropout, post-norm blocks, the dense layer to the target vocabulary):
 * forward with teacher forcing, r0.17's masked cross-entropy, backward,
 * gradient clipping to norm 1, Adam; as `qkv train transformer` does it.
 * bench/peer_transformer.py is the PyTorch side. One case per process:
 *
 *   bench_transformer tf_book|tf_book_full|tf_large|tf_large_full [--threads N]
 *
 * The *_full cases are the equal-work ones: every position computed,
 * padding included, as the PyTorch model does (the decoder through
 * qkv_seq2seq_hidden, then the output layer and the loss fused by
 * qkv_linear_cross_entropy: the same products, without the (B T, V)
 * logits and their gradient, which PyTorch keeps). tf_book and tf_large are qkv_seq2seq_loss's step, which packs the
 * rows that reach the loss and skips the padding's dead work: exactly the
 * same loss and gradients with dropout off (every dropout rate 0; tested
 * by transformer_seq2seq_loss_skips_padding_exactly); with dropout on, the
 * same in distribution but from other random masks, as the positions that
 * draw them differ. A PyTorch user could pack the rows too; the tables
 * show this trick's gain beside the equal-work rows.
 *
 * tf_book: the r0.17 configuration (vocabularies 184/201, as the 600-pair
 * fra.txt gives; width 32, FFN 64, 4 heads, 2+2 blocks, dropout 0.1,
 * batch 64, 10 steps). tf_large: width 256, FFN 1024, 4 heads, 2+2 blocks,
 * dropout 0.1, batch 128, 35 steps, vocabularies 10012/17851 (the whole
 * corpus). The tokens are random, the valid lengths random in 1..T and the
 * rest padding, so that the comparison is about compute, not data. */
#include "bench_util.h"

#define PAD 1
#define BOS 2
#define EOS 3

typedef struct {
    qkv_seq2seq m;
    qkv_params *ps;
    qkv_optim *opt;
    qkv_shards *sh;
    int full; /* *_full: logits of every position, padding included */
    int64_t B, T;
    int64_t *src, *valid, *dec_in, *target;
} tf_state;

/* One shard of the batch: forward with teacher forcing, r0.17's
 * MaskedSoftmaxCELoss summed over the sequences (qkv_seq2seq_loss: the
 * padding's dead work skipped), backward. */
static qkv_status tf_shard(qkv_ctx *ctx, int i, int n, void *p)
{
    tf_state *s = p;
    int64_t lo, hi, T = s->T;
    qkv_shard_rows(s->B, i, n, &lo, &hi);
    qkv_tensor *ce;
    if (s->full) { /* as PyTorch computes it: every position */
        qkv_tensor *h = qkv_seq2seq_hidden(ctx, &s->m, s->src + lo * T, s->valid + lo, hi - lo,
                                           T, s->dec_in + lo * T, T, NULL);
        /* the output layer and the loss in one op: the same products,
         * without the (B T, V) logits and their gradient */
        ce = qkv_linear_cross_entropy(ctx, h, s->m.dense.weight, s->m.dense.bias,
                                      s->target + lo * T,
                                      &(qkv_ce_opts){.ignore_index = PAD,
                                                     .reduction = QKV_REDUCE_SUM});
    } else {
        ce = qkv_seq2seq_loss(ctx, &s->m, s->src + lo * T, s->valid + lo, hi - lo, T,
                              s->dec_in + lo * T, s->target + lo * T, T, PAD);
    }
    qkv_tensor *loss = qkv_scale(ctx, ce, 1.0f / (float)T);
    return loss ? qkv_backward(ctx, loss) : qkv_error_status();
}

/* The step: the shards (one per thread), clipping, Adam. */
static int tf_step(qkv_ctx *ctx, void *p)
{
    (void)ctx; /* the shards have their own */
    tf_state *s = p;
    if (qkv_shards_run(s->sh, tf_shard, s) != QKV_OK)
        return 1;
    qkv_clip_grad_norm(s->ps, 1.0f);
    if (qkv_optim_step(s->opt) != QKV_OK)
        return 1;
    qkv_params_zero_grad(s->ps);
    return 0;
}

/* Random ids in [4, V) up to a random valid length ending in <eos>, then
 * padding: one (B, T) batch. */
static void random_batch(qkv_rng *r, int64_t *ids, int64_t *valid, int64_t B, int64_t T,
                         int64_t V)
{
    for (int64_t b = 0; b < B; b++) {
        int64_t n = 1 + (int64_t)qkv_rng_below(r, (uint64_t)T);
        for (int64_t t = 0; t < T; t++)
            ids[b * T + t] = t < n - 1 ? 4 + (int64_t)qkv_rng_below(r, (uint64_t)(V - 4))
                             : t == n - 1 ? EOS
                                          : PAD;
        if (valid)
            valid[b] = n;
    }
}

int main(int argc, char **argv)
{
    bench_start(argc, argv);
    const char *name = bench_case(argc, argv);
    qkv_tf_config cfg = {.layout = QKV_TF_D2L, .n_heads = 4, .n_enc = 2, .n_dec = 2,
                         .dropout = 0.1f, .activation = QKV_ACT_RELU};
    int64_t B, T, Vs, Vt;
    int warmup, reps, full = 0;
    float lr;
    if (name && (!strcmp(name, "tf_book_full") || !strcmp(name, "tf_large_full")))
        full = 1; /* padding computed */
    if (name && (!strcmp(name, "tf_book") || !strcmp(name, "tf_book_full"))) {
        cfg.d_model = 32, cfg.d_ffn = 64, B = 64, T = 10, Vs = 184, Vt = 201, lr = 0.005f;
        warmup = 2, reps = 31;
    } else if (name && (!strcmp(name, "tf_large") || !strcmp(name, "tf_large_full"))) {
        cfg.d_model = 256, cfg.d_ffn = 1024, B = 128, T = 35, Vs = 10012, Vt = 17851, lr = 0.001f;
        warmup = 1, reps = 3;
    } else {
        fprintf(stderr, "usage: bench_transformer tf_book|tf_book_full|tf_large|tf_large_full "
                        "[--threads N]\n");
        return 2;
    }

    tf_state s = {.ps = qkv_params_new(), .B = B, .T = T, .full = full};
    if (qkv_seq2seq_init(&s.m, s.ps, &cfg, Vs, Vt) != QKV_OK || qkv_params_alloc(s.ps) != QKV_OK) {
        fprintf(stderr, "bench_transformer: %s\n", qkv_error());
        return 1;
    }
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    qkv_seq2seq_reset(&s.m, &r);
    s.opt = qkv_optim_new(s.ps, &(qkv_optim_config){.kind = QKV_ADAM, .lr = lr});
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(3 * B * T + B));
    s.src = ids, s.dec_in = ids + B * T, s.target = ids + 2 * B * T, s.valid = ids + 3 * B * T;
    random_batch(&r, s.src, s.valid, B, T, Vs);
    random_batch(&r, s.target, NULL, B, T, Vt);
    for (int64_t b = 0; b < B; b++) {
        s.dec_in[b * T] = BOS;
        memcpy(s.dec_in + b * T + 1, s.target + b * T, (size_t)(T - 1) * sizeof(int64_t));
    }
    s.sh = qkv_shards_new(s.ps, 0);
    if (!s.sh) {
        fprintf(stderr, "bench_transformer: %s\n", qkv_error());
        return 1;
    }
    qkv_ctx *ctx = qkv_shards_ctx(s.sh, 0);

    printf("impl qkv %s\nthreads %d\n", QKV_VERSION, qkv_threads());
    bench_result res = bench_time(ctx, tf_step, &s, warmup, reps);
    res.arena_peak = 0; /* all the shards' arenas */
    for (int i = 0; i < qkv_shards_count(s.sh); i++)
        res.arena_peak += qkv_arena_peak(qkv_ctx_arena(qkv_shards_ctx(s.sh, i)));
    bench_report(name, res, s.ps, s.opt);
    printf("%s_tokens %lld\n", name, (long long)(B * T));
    free(ids);
    qkv_shards_free(s.sh);
    qkv_optim_free(s.opt);
    qkv_params_free(s.ps);
    return res.ms < 0;
}
