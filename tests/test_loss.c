/* test_loss.c - cross entropy (class weights, ignore_index, label
 * smoothing, every reduction) and MSE, L1, smooth L1: gradient checks (a
 * reduced loss is one float32 whose rounding, ~1e-7 of it, is divided by
 * the step h = 1e-3: atol ~1e-4 of noise on gradients of 0.03 to 4), PyTorch
 * parity, forward and backward, and the errors. */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* ---- cross entropy ---- */

typedef struct {
    const int64_t *target;
    qkv_ce_opts opts;
    bool transposed; /* logits given as (K, N) */
} ce_args;

static qkv_tensor *f_ce(qkv_ctx *c, qkv_tensor **t, void *u)
{
    ce_args *a = u;
    qkv_tensor *x = a->transposed ? qkv_transpose(c, t[0], 0, 1) : t[0];
    return qkv_cross_entropy(c, x, a->target, &a->opts);
}

TEST(gradcheck_cross_entropy)
{
    qkv_rng r;
    qkv_rng_seed(&r, 31);
    const int64_t target[6] = {0, 3, 2, 3, 1, 4};
    const float weight[5] = {0.5f, 1.5f, 1.0f, 0.3f, 2.0f};
    gc_input in[1] = {gc_rand(&r, 2, SHAPE(6, 5), -1.5f, 1.5f, true)};
    ce_args plain = {target, {.ignore_index = QKV_NO_IGNORE}, false};
    CHECK_GRAD(f_ce, 1, in, &plain, 5e-5, 1e-3);
    for (int red = QKV_REDUCE_MEAN; red <= QKV_REDUCE_NONE; red++) {
        test_note("reduction %d", red);
        ce_args full = {target,
                        {.class_weight = weight, .ignore_index = 3, .label_smoothing = 0.15f,
                         .reduction = (qkv_reduction)red},
                        false};
        CHECK_GRAD(f_ce, 1, in, &full, 1e-4, 1e-3);
    }
    gc_free(1, in);
    /* logits (5, 6) used as their (6, 5) transpose */
    gc_input tin[1] = {gc_rand(&r, 2, SHAPE(5, 6), -1.5f, 1.5f, true)};
    ce_args tr = {target, {.ignore_index = QKV_NO_IGNORE, .label_smoothing = 0.1f}, true};
    CHECK_GRAD(f_ce, 1, tin, &tr, 5e-5, 1e-3);
    gc_free(1, tin);
}

TEST(cross_entropy_by_hand)
{
    /* one sample, K = 3, smoothing eps: (1 - eps) (lse - x_t) + eps/K sum_c (lse - x_c) */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_from_data(ctx, 2, SHAPE(1, 3), (float[]){1.0f, 2.0f, 0.5f});
    double lse = log(exp(1.0) + exp(2.0) + exp(0.5)), eps = 0.2;
    double want = (1 - eps) * (lse - 1.0) + eps / 3 * (3 * lse - 3.5);
    qkv_tensor *l = qkv_cross_entropy(ctx, x, (int64_t[]){0},
                                      &(qkv_ce_opts){.ignore_index = QKV_NO_IGNORE,
                                                     .label_smoothing = 0.2f});
    REQUIRE(l && l->ndim == 0, "%s", qkv_error());
    CHECK_SCALAR(l->data[0], want, 2e-8, 5e-7);
    /* opts NULL: mean, no weights, nothing ignored (not even -100) */
    l = qkv_cross_entropy(ctx, x, (int64_t[]){1}, NULL);
    REQUIRE(l, "%s", qkv_error());
    CHECK_SCALAR(l->data[0], lse - 2.0, 5e-9, 5e-7);
    qkv_ctx_free(ctx);
}

TEST(cross_entropy_all_ignored_is_nan)
{
    /* the mean divides by a total weight of 0, as PyTorch: NaN */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_randn(ctx, 2, SHAPE(2, 3), 0, 1);
    qkv_tensor *l = qkv_cross_entropy(ctx, x, (int64_t[]){-100, -100},
                                      &(qkv_ce_opts){.ignore_index = -100});
    REQUIRE(l, "%s", qkv_error());
    CHECK(isnan(l->data[0]), "all ignored: %g", l->data[0]);
    l = qkv_cross_entropy(ctx, x, (int64_t[]){-100, -100},
                          &(qkv_ce_opts){.ignore_index = -100, .reduction = QKV_REDUCE_SUM});
    REQUIRE(l, "%s", qkv_error());
    CHECK(l->data[0] == 0.0f, "all ignored, sum: %g", l->data[0]);
    qkv_ctx_free(ctx);
}

TEST(cross_entropy_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 2, SHAPE(3, 4));
    CHECK(!qkv_cross_entropy(ctx, x, (int64_t[]){0, 4, 1}, NULL) &&
              strstr(qkv_error(), "cross_entropy") && strstr(qkv_error(), "target[1] = 4") &&
              strstr(qkv_error(), "4 classes"),
          "%s", qkv_error());
    /* -100 is only ignored when asked */
    CHECK(!qkv_cross_entropy(ctx, x, (int64_t[]){0, -100, 1}, NULL) &&
              strstr(qkv_error(), "target[1] = -100"),
          "%s", qkv_error());
    CHECK(qkv_cross_entropy(ctx, x, (int64_t[]){0, -100, 1},
                            &(qkv_ce_opts){.ignore_index = -100}),
          "%s", qkv_error());
    CHECK(!qkv_cross_entropy(ctx, qkv_zeros(ctx, 1, SHAPE(4)), (int64_t[]){0}, NULL) &&
              strstr(qkv_error(), "(N, K)"),
          "%s", qkv_error());
    CHECK(!qkv_cross_entropy(ctx, x, (int64_t[]){0, 1, 1},
                             &(qkv_ce_opts){.ignore_index = QKV_NO_IGNORE,
                                            .label_smoothing = 1.5f}),
          "smoothing 1.5 accepted");
    qkv_ctx_free(ctx);
}

/* ---- the output layer and cross entropy, fused ---- */

typedef struct {
    const int64_t *target;
    qkv_ce_opts opts;
    bool bias;
} lce_args;

/* x (2, 3, 4) [6 rows], w (5, 4), bias (5) */
static qkv_tensor *f_lce(qkv_ctx *c, qkv_tensor **t, void *u)
{
    lce_args *a = u;
    return qkv_linear_cross_entropy(c, t[0], t[1], a->bias ? t[2] : NULL, a->target, &a->opts);
}

TEST(gradcheck_linear_cross_entropy)
{
    qkv_rng r;
    qkv_rng_seed(&r, 33);
    const int64_t target[6] = {0, 3, 2, 3, 1, 4};
    const float weight[5] = {0.5f, 1.5f, 1.0f, 0.3f, 2.0f};
    gc_input in[3] = {gc_rand(&r, 3, SHAPE(2, 3, 4), -1.5f, 1.5f, true),
                      gc_rand(&r, 2, SHAPE(5, 4), -1.0f, 1.0f, true),
                      gc_rand(&r, 1, SHAPE(5), -1.0f, 1.0f, true)};
    lce_args plain = {target, {.ignore_index = QKV_NO_IGNORE}, true};
    CHECK_GRAD(f_lce, 3, in, &plain, 5e-5, 1e-3);
    for (int red = QKV_REDUCE_MEAN; red <= QKV_REDUCE_NONE; red++) {
        test_note("reduction %d", red);
        lce_args full = {target,
                         {.class_weight = weight, .ignore_index = 3, .label_smoothing = 0.15f,
                          .reduction = (qkv_reduction)red},
                         true};
        CHECK_GRAD(f_lce, 3, in, &full, 1e-4, 1e-3);
    }
    lce_args nobias = {target, {.ignore_index = 2, .reduction = QKV_REDUCE_SUM}, false};
    CHECK_GRAD(f_lce, 2, in, &nobias, 5e-5, 1e-3);
    gc_free(3, in);
}

/* The fused op against the two ops over several blocks of rows (8 MiB
 * blocks, K 8192: 256 rows a block, 600 rows): the same loss and
 * gradients, in less memory than one (R, K) logits tensor; without
 * gradients the forward alone, no node. */
extern size_t qkv__lce_block_bytes;
TEST(linear_cross_entropy_equals_the_two_ops)
{
    enum { R = 600, IN = 8, K = 8192 };
    size_t block = qkv__lce_block_bytes;
    qkv__lce_block_bytes = (size_t)8 << 20;
    qkv_rng r;
    qkv_rng_seed(&r, 34);
    int64_t *target = malloc(R * sizeof *target);
    REQUIRE(target, "malloc");
    for (int i = 0; i < R; i++)
        target[i] = i % 7 == 3 ? 5 : (int64_t)qkv_rng_below(&r, K);
    for (int red = QKV_REDUCE_MEAN; red <= QKV_REDUCE_SUM; red++) {
        test_note("reduction %d", red);
        qkv_ce_opts o = {.ignore_index = 5, .label_smoothing = 0.1f,
                         .reduction = (qkv_reduction)red};
        qkv_ctx *c[2] = {qkv_ctx_new(), qkv_ctx_new()}; /* the two ops, fused */
        qkv_tensor *x[2], *w[2], *b[2], *loss[2];
        size_t grew[2];
        for (int fused = 0; fused < 2; fused++) {
            qkv_rng_seed(qkv_ctx_rng(c[fused]), 35);
            x[fused] = qkv_requires_grad(qkv_randn(c[fused], 2, SHAPE(R, IN), 0, 1));
            w[fused] = qkv_requires_grad(qkv_randn(c[fused], 2, SHAPE(K, IN), 0, 0.5f));
            b[fused] = qkv_requires_grad(qkv_randn(c[fused], 1, SHAPE(K), 0, 0.5f));
            /* an op before, so that x's gradient flows on */
            qkv_tensor *h = qkv_tanh(c[fused], x[fused]);
            qkv_arena *a = qkv_ctx_arena(c[fused]);
            size_t before = qkv_arena_used(a);
            loss[fused] = fused ? qkv_linear_cross_entropy(c[fused], h, w[fused], b[fused], target,
                                                           &o)
                                : qkv_cross_entropy(c[fused],
                                                    qkv_linear(c[fused], h, w[fused], b[fused]),
                                                    target, &o);
            REQUIRE(loss[fused], "%s", qkv_error());
            REQUIRE(qkv_backward(c[fused], qkv_scale(c[fused], loss[fused], 0.75f)) == QKV_OK,
                    "%s", qkv_error());
            grew[fused] = qkv_arena_peak(a) - before;
        }
        /* w's and b's gradients sum 600 rows in other orders (blocks):
         * float32 rounding of ~sqrt(600) 6e-8 of terms up to 1 (the sum),
         * divided by the ~510 targets' weight (the mean) */
        double at = red == QKV_REDUCE_SUM ? 2e-6 : 5e-9;
        CHECK_CLOSE(loss[1], loss[0], 0, 2e-6);
        CHECK_CLOSE_GRAD(x[1], qkv_wrap(c[0], 2, SHAPE(R, IN), x[0]->grad), 1e-7, 1e-5);
        CHECK_CLOSE_GRAD(w[1], qkv_wrap(c[0], 2, SHAPE(K, IN), w[0]->grad), at, 1e-5);
        CHECK_CLOSE_GRAD(b[1], qkv_wrap(c[0], 1, SHAPE(K), b[0]->grad), at, 1e-5);
        size_t logits = (size_t)R * K * sizeof(float);
        CHECK(grew[1] < logits && grew[0] > 2 * logits,
              "fused %zu bytes, two ops %zu, one logits tensor %zu", grew[1], grew[0], logits);
        qkv_ctx_free(c[0]);
        qkv_ctx_free(c[1]);
    }
    qkv_ctx *ctx = qkv_ctx_new();
    /* gradients off: the loss alone, recorded nowhere */
    qkv_tensor *x = qkv_requires_grad(qkv_randn(ctx, 2, SHAPE(R, IN), 0, 1));
    qkv_tensor *w = qkv_requires_grad(qkv_randn(ctx, 2, SHAPE(K, IN), 0, 0.5f));
    qkv_tensor *want = qkv_cross_entropy(ctx, qkv_linear(ctx, x, w, NULL), target, NULL);
    int old = qkv_set_grad_enabled(ctx, 0);
    qkv_tensor *got = qkv_linear_cross_entropy(ctx, x, w, NULL, target, NULL);
    qkv_set_grad_enabled(ctx, old);
    REQUIRE(got && want, "%s", qkv_error());
    CHECK(!got->requires_grad, "a node was recorded without gradients");
    CHECK_CLOSE(got, want, 0, 2e-6);
    free(target);
    qkv_ctx_free(ctx);
    qkv__lce_block_bytes = block;
}

TEST(linear_cross_entropy_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 2, SHAPE(3, 4)), *w = qkv_zeros(ctx, 2, SHAPE(5, 4));
    CHECK(!qkv_linear_cross_entropy(ctx, x, qkv_zeros(ctx, 2, SHAPE(5, 3)), NULL,
                                    (int64_t[]){0, 1, 2}, NULL) &&
              strstr(qkv_error(), "linear_cross_entropy") && strstr(qkv_error(), "(5, 3)"),
          "%s", qkv_error());
    CHECK(!qkv_linear_cross_entropy(ctx, x, w, qkv_zeros(ctx, 1, SHAPE(4)), (int64_t[]){0, 1, 2},
                                    NULL) &&
              strstr(qkv_error(), "bias"),
          "%s", qkv_error());
    CHECK(!qkv_linear_cross_entropy(ctx, x, w, NULL, (int64_t[]){0, 5, 2}, NULL) &&
              strstr(qkv_error(), "target[1] = 5") && strstr(qkv_error(), "5 classes"),
          "%s", qkv_error());
    CHECK(!qkv_linear_cross_entropy(ctx, x, w, NULL, NULL, NULL) &&
              strstr(qkv_error(), "target is NULL"),
          "%s", qkv_error());
    CHECK(!qkv_linear_cross_entropy(ctx, NULL, w, NULL, (int64_t[]){0, 1, 2}, NULL),
          "NULL x accepted");
    /* REDUCE_NONE: the two ops, a loss per row */
    qkv_tensor *l = qkv_linear_cross_entropy(ctx, x, w, NULL, (int64_t[]){0, 1, 2},
                                             &(qkv_ce_opts){.ignore_index = QKV_NO_IGNORE,
                                                            .reduction = QKV_REDUCE_NONE});
    REQUIRE(l, "%s", qkv_error());
    CHECK(l->ndim == 1 && l->shape[0] == 3, "REDUCE_NONE: ndim %d", l->ndim);
    qkv_ctx_free(ctx);
}

/* ---- pointwise losses ---- */

typedef struct {
    int kind; /* 0 mse, 1 l1, 2 smooth l1 */
    qkv_reduction r;
} pw_args;

static qkv_tensor *f_pointwise(qkv_ctx *c, qkv_tensor **t, void *u)
{
    pw_args *a = u;
    qkv_tensor *p = qkv_transpose(c, t[0], 0, 1); /* a strided pred */
    switch (a->kind) {
    case 0: return qkv_mse_loss(c, p, t[1], a->r);
    case 1: return qkv_l1_loss(c, p, t[1], a->r);
    default: return qkv_smooth_l1_loss(c, p, t[1], 0.7f, a->r);
    }
}

TEST(gradcheck_pointwise_losses)
{
    qkv_rng r;
    qkv_rng_seed(&r, 32);
    /* targets get no gradient; differences spread over both sides of
     * smooth L1's beta */
    gc_input in[2] = {gc_rand(&r, 2, SHAPE(4, 3), -2, 2, true),
                      gc_rand(&r, 2, SHAPE(3, 4), -2, 2, false)};
    for (int kind = 0; kind < 3; kind++)
        for (int red = QKV_REDUCE_MEAN; red <= QKV_REDUCE_NONE; red++) {
            pw_args a = {kind, (qkv_reduction)red};
            test_note("kind %d, reduction %d", kind, red);
            CHECK_GRAD(f_pointwise, 2, in, &a, 2e-4, 1e-3);
        }
    gc_free(2, in);
}

TEST(pointwise_loss_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_zeros(ctx, 2, SHAPE(2, 3)), *b = qkv_zeros(ctx, 2, SHAPE(3, 2));
    CHECK(!qkv_mse_loss(ctx, a, b, QKV_REDUCE_MEAN) && strstr(qkv_error(), "mse_loss") &&
              strstr(qkv_error(), "(2, 3)") && strstr(qkv_error(), "(3, 2)"),
          "%s", qkv_error());
    CHECK(!qkv_smooth_l1_loss(ctx, a, a, -1.0f, QKV_REDUCE_MEAN) &&
              strstr(qkv_error(), "smooth_l1_loss"),
          "%s", qkv_error());
    CHECK(!qkv_l1_loss(ctx, a, a, (qkv_reduction)7) && strstr(qkv_error(), "reduction"),
          "%s", qkv_error());
    qkv_ctx_free(ctx);
}

/* ---- parity with PyTorch ---- */

static qkv_reduction reduction_of(const qkv_st_file *fx)
{
    const char *s = qkv_st_meta(fx, "reduction");
    return !s || !strcmp(s, "mean") ? QKV_REDUCE_MEAN
           : !strcmp(s, "sum")      ? QKV_REDUCE_SUM
                                    : QKV_REDUCE_NONE;
}

/* logits x (N, K), or (K, N) used transposed; target, weight and the
 * options from the fixture */
static void parity_ce(const char *name, bool transposed)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *in = transposed ? qkv_transpose(ctx, x, 0, 1) : x;
    int64_t ti = qkv_st_find(fx, "target"), N = in->shape[0];
    int64_t *target = calloc((size_t)N, sizeof *target);
    REQUIRE(ti >= 0 && qkv_st_numel(fx, ti) == N && qkv_st_read_i64(fx, ti, target) == QKV_OK,
            "%s: target", name);
    const char *ig = qkv_st_meta(fx, "ignore_index"), *sm = qkv_st_meta(fx, "smoothing");
    qkv_tensor *w = qkv_st_find(fx, "weight") >= 0 ? fixture_get(ctx, fx, "weight") : NULL;
    qkv_ce_opts o = {.class_weight = w ? w->data : NULL,
                     .ignore_index = ig && strcmp(ig, "none") ? atoll(ig) : QKV_NO_IGNORE,
                     .label_smoothing = sm ? strtof(sm, NULL) : 0.0f,
                     .reduction = reduction_of(fx)};
    qkv_tensor *out = qkv_cross_entropy(ctx, in, target, &o);
    free(target); /* the op keeps its own copy for the backward */
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 2e-7, 5e-7);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK)
        CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 2e-7, 5e-7);
    else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_cross_entropy)
{
    parity_ce("ce_plain_mean", false);
    parity_ce("ce_transposed_sum", true);
    parity_ce("ce_ignore_neg_mean", false);
    parity_ce("ce_smooth_mean", false);
    parity_ce("ce_full_mean", false);
    parity_ce("ce_full_sum", false);
    parity_ce("ce_full_none", false);
}

/* x (2, N/2, IN), w (K, IN), b (K) if in the fixture, target, class
 * weights and options from it: qkv_linear_cross_entropy against
 * F.cross_entropy(F.linear(x, w, b)) */
static void parity_lce(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *w = qkv_requires_grad(fixture_get(ctx, fx, "w"));
    qkv_tensor *b = qkv_st_find(fx, "b") >= 0 ? qkv_requires_grad(fixture_get(ctx, fx, "b")) : NULL;
    int64_t ti = qkv_st_find(fx, "target"), N = x->shape[0] * x->shape[1];
    int64_t *target = calloc((size_t)N, sizeof *target);
    REQUIRE(ti >= 0 && qkv_st_numel(fx, ti) == N && qkv_st_read_i64(fx, ti, target) == QKV_OK,
            "%s: target", name);
    const char *ig = qkv_st_meta(fx, "ignore_index"), *sm = qkv_st_meta(fx, "smoothing");
    qkv_tensor *cw = qkv_st_find(fx, "weight") >= 0 ? fixture_get(ctx, fx, "weight") : NULL;
    qkv_ce_opts o = {.class_weight = cw ? cw->data : NULL,
                     .ignore_index = ig && strcmp(ig, "none") ? atoll(ig) : QKV_NO_IGNORE,
                     .label_smoothing = sm ? strtof(sm, NULL) : 0.0f,
                     .reduction = reduction_of(fx)};
    qkv_tensor *out = qkv_linear_cross_entropy(ctx, x, w, b, target, &o);
    free(target); /* the forward is done with it */
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 1e-6, 2e-6);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK) {
        CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 1e-6, 2e-5);
        CHECK_CLOSE_GRAD(w, fixture_get(ctx, fx, "grad_w"), 1e-6, 2e-5);
        if (b)
            CHECK_CLOSE_GRAD(b, fixture_get(ctx, fx, "grad_b"), 1e-6, 2e-5);
    } else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_linear_cross_entropy)
{
    parity_lce("lce_plain_mean");
    parity_lce("lce_full_sum");
    parity_lce("lce_nobias_mean");
}

typedef qkv_tensor *(*loss_fn)(qkv_ctx *, qkv_tensor *, qkv_tensor *, qkv_reduction);

static qkv_tensor *smooth_l1_half(qkv_ctx *c, qkv_tensor *p, qkv_tensor *t, qkv_reduction r)
{
    return qkv_smooth_l1_loss(c, p, t, 0.5f, r);
}

static void parity_pointwise(const char *name, loss_fn f, bool transposed)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *pred = qkv_requires_grad(fixture_get(ctx, fx, "pred"));
    qkv_tensor *target = fixture_get(ctx, fx, "target");
    qkv_tensor *in = transposed ? qkv_transpose(ctx, pred, 0, 1) : pred;
    qkv_tensor *out = f(ctx, in, target, reduction_of(fx)), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 5e-7, 5e-7);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK)
        CHECK_CLOSE_GRAD(pred, fixture_get(ctx, fx, "grad_pred"), 2e-7, 5e-7);
    else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_pointwise_losses)
{
    const char *red[] = {"mean", "sum", "none"};
    char name[64];
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "mse_%s", red[i]);
        parity_pointwise(name, qkv_mse_loss, false);
        snprintf(name, sizeof name, "l1_%s", red[i]);
        parity_pointwise(name, qkv_l1_loss, true);
        snprintf(name, sizeof name, "smooth_l1_%s", red[i]);
        parity_pointwise(name, smooth_l1_half, false);
    }
}
