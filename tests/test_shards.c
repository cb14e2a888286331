/* test_shards.c - data parallelism inside a step (qkv_shards): the shards'
 * gradients add up to the whole batch's, the private buffers are clean
 * between runs, and a failing shard's message reaches the caller. */
#include "test.h"

#include <math.h>
#include <string.h>

enum { B = 13, T = 10 };

typedef struct {
    qkv_seq2seq m;
    const int64_t *src, *valid, *tgt;
    int64_t dec_in[B * T];
    int64_t pad;
    int fail_shard; /* this shard returns an error; -1: none */
} state;

/* Rows [lo, hi) of the batch: the book's loss, backward. */
static qkv_status rows_loss(qkv_ctx *ctx, state *s, int64_t lo, int64_t hi)
{
    qkv_ce_opts ce = {.ignore_index = s->pad, .reduction = QKV_REDUCE_SUM};
    qkv_tensor *logits = qkv_seq2seq_forward(ctx, &s->m, s->src + lo * T, s->valid + lo, hi - lo,
                                             T, s->dec_in + lo * T, T, NULL);
    qkv_tensor *loss = qkv_cross_entropy(
        ctx, qkv_reshape(ctx, logits, 2, (int64_t[]){(hi - lo) * T, s->m.tgt_vocab}),
        s->tgt + lo * T, &ce);
    return loss ? qkv_backward(ctx, loss) : qkv_error_status();
}

static qkv_status shard_fn(qkv_ctx *ctx, int i, int n, void *arg)
{
    state *s = arg;
    if (i == s->fail_shard)
        return qkv_set_error(QKV_ERR_ARG, "made to fail");
    int64_t lo, hi;
    qkv_shard_rows(B, i, n, &lo, &hi);
    return rows_loss(ctx, s, lo, hi);
}

/* The book's model (weights from seed, dropout as given) and the batch of
 * the corpus' rows row0 .. row0 + B, teacher forcing; NULL (test failed)
 * on error. */
static state *book_batch(qkv_nmt_data *d, qkv_params **ps, float dropout, uint64_t seed,
                         int64_t row0)
{
    state *s = calloc(1, sizeof *s);
    if (!s || !test_book_seq2seq(d, &s->m, ps, dropout, seed)) {
        free(s);
        return NULL;
    }
    int64_t bos = qkv_vocab_id(d->tgt_vocab, "<bos>");
    s->src = d->src + row0 * T, s->valid = d->src_valid + row0, s->tgt = d->tgt + row0 * T;
    s->pad = qkv_vocab_id(d->tgt_vocab, "<pad>");
    s->fail_shard = -1;
    for (int i = 0; i < B; i++) {
        s->dec_in[i * T] = bos;
        memcpy(s->dec_in + i * T + 1, s->tgt + i * T, (T - 1) * sizeof(int64_t));
    }
    return s;
}

TEST(shards_gradients_add_up_to_the_batch)
{
    qkv_nmt_data d = {0};
    qkv_params *ps;
    state *s = book_batch(&d, &ps, 0.0f, 5, 100);
    if (!s)
        return;
    test_seq2seq_gelu(&s->m);
    int64_t n;
    float *g = qkv_params_grads(ps, &n);
    float *want = malloc((size_t)n * sizeof *want);

    /* the whole batch on one context */
    qkv_ctx *ctx = qkv_ctx_new();
    REQUIRE(rows_loss(ctx, s, 0, B) == QKV_OK, "%s", qkv_error());
    memcpy(want, g, (size_t)n * sizeof *want);
    qkv_ctx_free(ctx);
    double scale = test_max_abs(want, n); /* sums in another order: 1e-5 of it */

    for (int shards = 1; shards <= 3; shards++) {
        qkv_shards *sh = qkv_shards_new(ps, shards);
        REQUIRE(sh && qkv_shards_count(sh) == shards, "%s", qkv_error());
        for (int run = 0; run < 2; run++) { /* the second run finds clean buffers */
            qkv_params_zero_grad(ps);
            REQUIRE(qkv_shards_run(sh, shard_fn, s) == QKV_OK, "%s", qkv_error());
            test_note("%d shards, run %d", shards, run);
            CHECK_CLOSE_N(g, want, n, 1e-5 * scale, 2e-6);
        }
        if (shards > 1) {
            s->fail_shard = shards - 1;
            CHECK(qkv_shards_run(sh, shard_fn, s) == QKV_ERR_ARG, "a failing shard is reported");
            char want_msg[64];
            snprintf(want_msg, sizeof want_msg, "shard %d of %d: made to fail", shards - 1, shards);
            CHECK(!strcmp(qkv_error(), want_msg), "message: '%s'", qkv_error());
            s->fail_shard = -1;
        }
        qkv_shards_free(sh);
    }
    /* the rows are cut as evenly as they go, the larger pieces first */
    int64_t lo, hi, at = 0;
    for (int i = 0; i < 5; i++) {
        qkv_shard_rows(B, i, 5, &lo, &hi);
        CHECK(lo == at && hi - lo == (i < 3 ? 3 : 2), "shard %d of 5: [%lld, %lld)", i,
              (long long)lo, (long long)hi);
        at = hi;
    }
    CHECK(!qkv_shards_new(NULL, 2) && strstr(qkv_error(), "NULL"), "%s", qkv_error());
    free(want);
    free(s);
    qkv_params_free(ps);
    qkv_nmt_free(&d);
}

/* The training step of `qkv train transformer` (two shards, the loss over
 * kept rows, clipping, Adam) allocates nothing once warm: the shards'
 * arenas keep their peak, clipping its block sums, each thread its GEMM
 * workspace. */
static qkv_status loss_shard(qkv_ctx *ctx, int i, int n, void *arg)
{
    state *s = arg;
    int64_t lo, hi;
    qkv_shard_rows(B, i, n, &lo, &hi);
    qkv_tensor *loss = qkv_seq2seq_loss(ctx, &s->m, s->src + lo * T, s->valid + lo, hi - lo, T,
                                        s->dec_in + lo * T, s->tgt + lo * T, T, s->pad);
    return loss ? qkv_backward(ctx, loss) : qkv_error_status();
}

TEST(shards_step_allocates_nothing_when_warm)
{
    qkv_nmt_data d = {0};
    qkv_params *ps;
    state *s = book_batch(&d, &ps, 0.1f, 7, 200);
    if (!s)
        return;
    qkv_optim *opt = qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_ADAM, .lr = 0.005f});
    qkv_shards *sh = qkv_shards_new(ps, 2);
    REQUIRE(opt && sh, "%s", qkv_error());
    uint64_t before = 0;
    for (int step = 0; step < 4; step++) {
        if (step == 2)
            before = qkv_malloc_count();
        REQUIRE(qkv_shards_run(sh, loss_shard, s) == QKV_OK, "%s", qkv_error());
        qkv_clip_grad_norm(ps, 1.0f);
        REQUIRE(qkv_optim_step(opt) == QKV_OK, "%s", qkv_error());
        qkv_params_zero_grad(ps);
    }
    CHECK(qkv_malloc_count() == before, "%llu allocations in two warm steps",
          (unsigned long long)(qkv_malloc_count() - before));
    qkv_shards_free(sh);
    qkv_optim_free(opt);
    free(s);
    qkv_params_free(ps);
    qkv_nmt_free(&d);
}
