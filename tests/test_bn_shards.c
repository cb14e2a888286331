/* test_bn_shards.c - batch norm's running statistics under qkv_shards:
 * written once after the shards join, from the whole batch's statistics,
 * they equal one context's over the whole batch at 1, 2 and 3 shards, for
 * a plain batch norm and for a grouped one (shuffle BN); mismatched calls
 * are refused. */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

enum { B = 12, CIN = 2, C = 3, H = 5, W = 4, ROWS_PER_GROUP = 2 };

typedef struct {
    qkv_params *ps;
    qkv_tensor *conv, *w1, *b1, *rm1, *rv1, *nbt1, *rm2, *rv2, *nbt2;
    float x[B * CIN * H * W];
    int skip_second; /* a shard that leaves out the second batch norm */
} net;

/* On rows [lo, hi): y = conv 3x3 (x), then relu(bn1(y)) + relu(bn2(y)),
 * bn2 in groups of two rows; backward of the sum. Both batch norms read y,
 * which no batch norm has touched: under shards each shard normalises its
 * rows with their own statistics, so a batch norm after another would see
 * other inputs than one context's (docs/resnet.md). */
static qkv_status net_rows(qkv_ctx *ctx, net *m, int64_t lo, int64_t hi, bool second)
{
    int64_t n = hi - lo;
    qkv_tensor *x = qkv_from_data(ctx, 4, SHAPE(n, CIN, H, W), m->x + lo * CIN * H * W);
    qkv_tensor *y = qkv_conv2d(ctx, x, m->conv, NULL, &(qkv_conv2d_opts){.pad_h = 1, .pad_w = 1});
    qkv_tensor *a = qkv_batch_norm_ext(
        ctx, y, m->w1, m->b1,
        &(qkv_bn_opts){.running_mean = m->rm1, .running_var = m->rv1,
                       .num_batches_tracked = m->nbt1, .momentum = 0.1, .eps = 1e-5f});
    a = qkv_relu(ctx, a);
    if (second) {
        qkv_tensor *b = qkv_batch_norm_ext(
            ctx, y, NULL, NULL,
            &(qkv_bn_opts){.running_mean = m->rm2, .running_var = m->rv2,
                           .num_batches_tracked = m->nbt2, .momentum = 0.3, .eps = 1e-5f,
                           .groups = n / ROWS_PER_GROUP});
        a = qkv_add(ctx, a, qkv_relu(ctx, b));
    }
    qkv_tensor *loss = qkv_sum_all(ctx, a);
    return loss ? qkv_backward(ctx, loss) : qkv_error_status();
}

static qkv_status shard_fn(qkv_ctx *ctx, int i, int n, void *arg)
{
    net *m = arg;
    int64_t lo, hi;
    qkv_shard_rows(B / ROWS_PER_GROUP, i, n, &lo, &hi); /* whole groups per shard */
    return net_rows(ctx, m, lo * ROWS_PER_GROUP, hi * ROWS_PER_GROUP,
                    !(m->skip_second && i == n - 1));
}

static bool net_make(net *m)
{
    memset(m, 0, sizeof *m);
    m->ps = qkv_params_new();
    int buf = QKV_PARAM_BUFFER;
    m->conv = qkv_params_add(m->ps, "conv.weight", 4, SHAPE(C, CIN, 3, 3), 0);
    m->w1 = qkv_params_add(m->ps, "bn1.weight", 1, SHAPE(C), 0);
    m->b1 = qkv_params_add(m->ps, "bn1.bias", 1, SHAPE(C), 0);
    m->rm1 = qkv_params_add(m->ps, "bn1.running_mean", 1, SHAPE(C), buf);
    m->rv1 = qkv_params_add(m->ps, "bn1.running_var", 1, SHAPE(C), buf);
    m->nbt1 = qkv_params_add(m->ps, "bn1.num_batches_tracked", 0, NULL, buf);
    m->rm2 = qkv_params_add(m->ps, "bn2.running_mean", 1, SHAPE(C), buf);
    m->rv2 = qkv_params_add(m->ps, "bn2.running_var", 1, SHAPE(C), buf);
    m->nbt2 = qkv_params_add(m->ps, "bn2.num_batches_tracked", 0, NULL, buf);
    if (!m->nbt2 || qkv_params_alloc(m->ps) != QKV_OK)
        return false;
    qkv_rng r;
    qkv_rng_seed(&r, 31);
    qkv_init_uniform(&r, m->conv, -0.5f, 0.5f);
    qkv_init_uniform(&r, m->w1, 0.5f, 1.5f);
    qkv_init_uniform(&r, m->b1, -0.5f, 0.5f);
    qkv_init_constant(m->rv1, 1.0f);
    qkv_init_constant(m->rv2, 1.0f);
    for (int i = 0; i < B * CIN * H * W; i++)
        m->x[i] = (float)(2.0 * qkv_rng_normal(&r) + 0.5);
    return true;
}

/* the running statistics, in order: rm1, rv1, nbt1, rm2, rv2, nbt2 */
static void stats_copy(net *m, float *out)
{
    qkv_tensor *t[] = {m->rm1, m->rv1, m->nbt1, m->rm2, m->rv2, m->nbt2};
    for (int k = 0, at = 0; k < 6; k++) {
        memcpy(out + at, t[k]->data, (size_t)qkv_numel(t[k]) * sizeof(float));
        at += (int)qkv_numel(t[k]);
    }
}

static void stats_reset(net *m)
{
    qkv_init_constant(m->rm1, 0.0f);
    qkv_init_constant(m->rv1, 1.0f);
    qkv_init_constant(m->nbt1, 0.0f);
    qkv_init_constant(m->rm2, 0.0f);
    qkv_init_constant(m->rv2, 1.0f);
    qkv_init_constant(m->nbt2, 0.0f);
}

enum { NSTATS = 4 * C + 2 };

TEST(batch_norm_statistics_under_shards_equal_one_context)
{
    net m;
    REQUIRE(net_make(&m), "%s", qkv_error());
    /* two steps of one context over the whole batch */
    float want[2][NSTATS], got[NSTATS];
    qkv_ctx *ctx = qkv_ctx_new();
    for (int step = 0; step < 2; step++) {
        qkv_ctx_reset(ctx);
        REQUIRE(net_rows(ctx, &m, 0, B, true) == QKV_OK, "%s", qkv_error());
        stats_copy(&m, want[step]);
    }
    qkv_ctx_free(ctx);
    qkv_ctx *wctx = qkv_ctx_new();
    CHECK(want[1][2 * C] == 2.0f && want[1][NSTATS - 1] == 12.0f,
          "one context: num_batches_tracked %g and %g after two steps (want 2 and 12)",
          want[1][2 * C], want[1][NSTATS - 1]);
    for (int shards = 1; shards <= 3; shards++) {
        stats_reset(&m);
        qkv_shards *sh = qkv_shards_new(m.ps, shards);
        REQUIRE(sh, "%s", qkv_error());
        for (int step = 0; step < 2; step++) {
            qkv_params_zero_grad(m.ps);
            REQUIRE(qkv_shards_run(sh, shard_fn, &m) == QKV_OK, "%d shards: %s", shards,
                    qkv_error());
            stats_copy(&m, got);
            /* tol: the merged moments are the whole batch's to double
             * rounding, then rounded to float once, as one context's */
            qkv_tensor *gt = qkv_from_data(wctx, 1, SHAPE(NSTATS), got);
            qkv_tensor *wt_step = qkv_from_data(wctx, 1, SHAPE(NSTATS), want[step]);
            CHECK(CHECK_CLOSE(gt, wt_step, 0, 1e-7), "%d shards, step %d", shards, step);
        }
        /* a shard that skips a batch norm: refused, statistics untouched */
        if (shards > 1) {
            m.skip_second = 1;
            stats_copy(&m, got);
            CHECK(qkv_shards_run(sh, shard_fn, &m) == QKV_ERR_STATE &&
                      strstr(qkv_error(), "fewer calls"),
                  "%d shards, one skipping a batch norm: %s", shards, qkv_error());
            float after[NSTATS];
            stats_copy(&m, after);
            CHECK(!memcmp(after, got, sizeof got), "a refused step changed the statistics");
            m.skip_second = 0;
        }
        qkv_shards_free(sh);
    }
    qkv_ctx_free(wctx);
    qkv_params_free(m.ps);
}
