/* test_norm.c - layer norm, batch norm (training, eval, frozen) and
 * dropout: the layer-norm kernels against a reference in double, gradient
 * checks (central differences of float32 ops, loss in double), PyTorch
 * parity (forward, backward and the updated running statistics), dropout's
 * mask statistics, and the errors. Each check states atol and rtol. */
#include "test.h"

#include "kernels/norm.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* ---- layer norm ---- */

static qkv_tensor *f_ln_affine(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_layer_norm(c, t[0], t[1], t[2], 1e-5f);
}
static qkv_tensor *f_ln_plain(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_layer_norm(c, t[0], NULL, NULL, 1e-5f);
}
static qkv_tensor *f_ln_transposed(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_layer_norm(c, qkv_transpose(c, t[0], 0, 1), t[1], t[2], 1e-5f);
}

TEST(gradcheck_layer_norm)
{
    qkv_rng r;
    qkv_rng_seed(&r, 21);
    gc_input in[3] = {gc_rand(&r, 3, SHAPE(2, 3, 6), -2, 2, true),
                      gc_rand(&r, 1, SHAPE(6), 0.5f, 1.5f, true),
                      gc_rand(&r, 1, SHAPE(6), -1, 1, true)};
    CHECK_GRAD(f_ln_affine, 3, in, NULL, 2e-4, 1e-3);
    CHECK_GRAD(f_ln_plain, 1, in, NULL, 5e-5, 1e-3);
    gc_free(3, in);
    /* x (6, 4) normalised as its (4, 6) transpose: strided rows */
    gc_input tin[3] = {gc_rand(&r, 2, SHAPE(6, 4), -2, 2, true),
                       gc_rand(&r, 1, SHAPE(6), 0.5f, 1.5f, true),
                       gc_rand(&r, 1, SHAPE(6), -1, 1, true)};
    CHECK_GRAD(f_ln_transposed, 3, tin, NULL, 5e-4, 1e-3);
    gc_free(3, tin);
}

TEST(layer_norm_parallel_rows_match_serial)
{
    /* enough rows to take the threaded path, where dw and db are summed per
     * block of rows: compare with a one-thread run */
    int64_t R = 600, C = 96, sizes[3] = {R * C, C, C};
    float *grads[2][3];
    int threads = qkv_threads();
    for (int run = 0; run < 2; run++) {
        qkv_set_threads(run == 0 ? 1 : 2);
        qkv_ctx *ctx = qkv_ctx_new();
        qkv_tensor *x = qkv_requires_grad(qkv_randn(ctx, 2, SHAPE(R, C), 1, 2));
        qkv_tensor *w = qkv_requires_grad(qkv_randn(ctx, 1, SHAPE(C), 1, 0.2f));
        qkv_tensor *b = qkv_requires_grad(qkv_randn(ctx, 1, SHAPE(C), 0, 1));
        qkv_tensor *g = qkv_randn(ctx, 2, SHAPE(R, C), 0, 1);
        qkv_tensor *y = qkv_layer_norm(ctx, x, w, b, 1e-5f);
        REQUIRE(y && qkv_backward_with(ctx, y, g->data) == QKV_OK, "%s", qkv_error());
        qkv_tensor *ts[3] = {x, w, b};
        for (int k = 0; k < 3; k++) {
            grads[run][k] = malloc((size_t)sizes[k] * sizeof(float));
            memcpy(grads[run][k], ts[k]->grad, (size_t)sizes[k] * sizeof(float));
        }
        qkv_ctx_free(ctx);
    }
    qkv_set_threads(threads);
    /* dw and db are carried in float over runs of 16 rows, and the runs
     * start at other rows when the blocks differ: a few float roundings */
    for (int k = 0; k < 3; k++) {
        test_note("input %d", k);
        CHECK_CLOSE_N(grads[1][k], grads[0][k], sizes[k], 1e-5, 5e-7);
        free(grads[0][k]);
        free(grads[1][k]);
    }
}

TEST(layer_norm_kernels_match_reference)
{
    /* the vector kernels against layer norm in double, for row lengths
     * around the vector width; rows off-centre (mean 3, std 2) so that the
     * mean matters. dx fresh (NaN-filled first) and added to; dw, db added
     * to; and dx alone, without dw and db. */
    const int64_t Cs[] = {1, 3, 15, 16, 17, 64, 100, 1000};
    qkv_rng r;
    qkv_rng_seed(&r, 21);
    for (size_t k = 0; k < sizeof Cs / sizeof Cs[0]; k++) {
        int64_t N = 37, C = Cs[k], n = N * C;
        test_note("C = %lld", (long long)C);
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *dy = malloc(n * sizeof *dy);
        float *dx = malloc(n * sizeof *dx), *w = malloc(C * sizeof *w), *b = malloc(C * sizeof *b);
        float *dw = malloc(C * sizeof *dw), *db = malloc(C * sizeof *db);
        float *mean = malloc(N * sizeof *mean), *rstd = malloc(N * sizeof *rstd);
        double *ref_dx = malloc(n * sizeof *ref_dx), *ref_dw = calloc(C, sizeof *ref_dw);
        double *ref_db = calloc(C, sizeof *ref_db), *ref_y = malloc(n * sizeof *ref_y);
        double *ref_mean = malloc(N * sizeof *ref_mean), *ref_rstd = malloc(N * sizeof *ref_rstd);
        double *want = malloc(n * sizeof *want), *want_w = malloc(C * sizeof *want_w);
        double *want_b = malloc(C * sizeof *want_b);
        double *scratch = malloc(QKV_K_LAYER_NORM_SCRATCH(3, C) * sizeof *scratch);
        for (int64_t i = 0; i < n; i++) {
            x[i] = (float)(3 + 2 * qkv_rng_normal(&r));
            dy[i] = (float)qkv_rng_normal(&r);
        }
        for (int64_t j = 0; j < C; j++) {
            w[j] = (float)(1 + 0.3 * qkv_rng_normal(&r));
            b[j] = (float)qkv_rng_normal(&r);
        }
        qkv_k_layer_norm_forward(y, mean, rstd, x, w, b, N, C, 1e-5f);
        double mu_rs_w = 0; /* the largest |mu rs w| */
        for (int64_t i = 0; i < N; i++) {
            const float *xi = x + i * C;
            double mu = 0, var = 0, a = 0, c = 0;
            for (int64_t j = 0; j < C; j++)
                mu += xi[j];
            mu /= (double)C;
            for (int64_t j = 0; j < C; j++)
                var += (xi[j] - mu) * (xi[j] - mu);
            double rs = 1 / sqrt(var / (double)C + 1e-5);
            ref_mean[i] = mu;
            ref_rstd[i] = rs;
            for (int64_t j = 0; j < C; j++) {
                double xh = (xi[j] - mu) * rs, g = dy[i * C + j];
                ref_y[i * C + j] = xh * w[j] + b[j];
                mu_rs_w = fmax(mu_rs_w, fabs(mu * rs * w[j]));
                a += g * w[j];
                c += g * w[j] * xh;
                ref_dw[j] += g * xh;
                ref_db[j] += g;
            }
            for (int64_t j = 0; j < C; j++) {
                double xh = (xi[j] - mu) * rs;
                ref_dx[i * C + j] = rs * ((double)dy[i * C + j] * w[j] - a / C - xh * c / C);
            }
        }
        /* float sums over a row and the stored mean and rstd rounded to
         * float; y = (x rs - mu rs) w + b, as PyTorch: the rounding of
         * mu rs shows where rs is large (C = 1: a row of one value) */
        CHECK_CLOSE_N(mean, ref_mean, N, 5e-7, 5e-7);
        CHECK_CLOSE_N(rstd, ref_rstd, N, 5e-6, 5e-7);
        CHECK_CLOSE_N(y, ref_y, n, 5e-7 + mu_rs_w * 0x1p-23, 5e-7);
        for (int run = 0; run < 3; run++) {
            /* run 0: fresh dx, 1: added to 0.5, 2: no dw, db (left as they were) */
            test_note("C = %lld, run %d", (long long)C, run);
            float base = run == 1 ? 0.5f : 0.0f;
            for (int64_t i = 0; i < n; i++)
                dx[i] = run == 1 ? base : NAN;
            for (int64_t j = 0; j < C; j++)
                dw[j] = db[j] = 0.25f;
            qkv_k_layer_norm_backward(dx, run == 2 ? NULL : dw, run == 2 ? NULL : db, scratch, 3,
                                      dy, x, mean, rstd, w, N, C, run == 1);
            for (int64_t i = 0; i < n; i++)
                want[i] = base + ref_dx[i];
            for (int64_t j = 0; j < C; j++) {
                want_w[j] = 0.25 + (run < 2 ? ref_dw[j] : 0.0);
                want_b[j] = 0.25 + (run < 2 ? ref_db[j] : 0.0);
            }
            CHECK_CLOSE_N(dx, want, n, 5e-6, 5e-7);
            CHECK_CLOSE_N(dw, want_w, C, 1e-5, 5e-7);
            CHECK_CLOSE_N(db, want_b, C, 5e-6, 5e-7);
        }
        free(x), free(y), free(dy), free(dx), free(w), free(b), free(dw), free(db);
        free(mean), free(rstd), free(ref_dx), free(ref_dw), free(ref_db), free(scratch);
        free(ref_y), free(ref_mean), free(ref_rstd), free(want), free(want_w), free(want_b);
    }
}

TEST(layer_norm_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 2, SHAPE(3, 4)), *w = qkv_zeros(ctx, 1, SHAPE(5));
    CHECK(!qkv_layer_norm(ctx, x, w, NULL, 1e-5f) && strstr(qkv_error(), "layer_norm") &&
              strstr(qkv_error(), "(3, 4)") && strstr(qkv_error(), "(5)"),
          "%s", qkv_error());
    qkv_ctx_free(ctx);
}

/* ---- batch norm ---- */

typedef struct {
    float *running_mean, *running_var; /* (C) */
    int64_t C;
    bool training, frozen;
} bn_args;

static qkv_tensor *f_bn(qkv_ctx *c, qkv_tensor **t, void *u)
{
    bn_args *a = u;
    qkv_tensor *rm = qkv_wrap(c, 1, &a->C, a->running_mean);
    qkv_tensor *rv = qkv_wrap(c, 1, &a->C, a->running_var);
    if (a->frozen)
        return qkv_batch_norm_frozen(c, t[0], t[1], t[2], rm, rv, 1e-5f);
    qkv_set_training(c, a->training);
    qkv_tensor *y = qkv_batch_norm(c, t[0], t[1], t[2], rm, rv, 0.1f, 1e-5f);
    qkv_set_training(c, 1);
    return y;
}

static void gradcheck_bn(int ndim, const int64_t *shape, bool training, bool frozen)
{
    test_note("batch norm %dd, training %d, frozen %d", ndim, training, frozen);
    qkv_rng r;
    qkv_rng_seed(&r, 22);
    int64_t C = shape[1];
    float rm[8], rv[8];
    for (int64_t c = 0; c < C; c++) {
        rm[c] = (float)(qkv_rng_uniform(&r) - 0.5);
        rv[c] = (float)(qkv_rng_uniform(&r) + 0.5);
    }
    bn_args a = {rm, rv, C, training, frozen};
    gc_input in[3] = {gc_rand(&r, ndim, shape, -2, 2, true),
                      gc_rand(&r, 1, SHAPE(C), 0.5f, 1.5f, !frozen),
                      gc_rand(&r, 1, SHAPE(C), -1, 1, !frozen)};
    CHECK_GRAD(f_bn, 3, in, &a, 5e-4, 1e-3);
    gc_free(3, in);
}

TEST(gradcheck_batch_norm)
{
    gradcheck_bn(4, SHAPE(3, 2, 2, 3), true, false);
    gradcheck_bn(2, SHAPE(5, 3), true, false);
    gradcheck_bn(4, SHAPE(3, 2, 2, 3), false, false);
    gradcheck_bn(4, SHAPE(2, 3, 2, 2), false, true);
}

TEST(batch_norm_modes)
{
    /* training updates the running statistics; eval and frozen do not,
     * and frozen records no gradient for weight and bias */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_randn(ctx, 3, SHAPE(4, 2, 3), 1, 2);
    qkv_tensor *w = qkv_requires_grad(qkv_full(ctx, 1, SHAPE(2), 1.0f));
    qkv_tensor *rm = qkv_zeros(ctx, 1, SHAPE(2)), *rv = qkv_full(ctx, 1, SHAPE(2), 1.0f);
    qkv_set_training(ctx, 0);
    REQUIRE(qkv_batch_norm(ctx, x, w, NULL, rm, rv, 0.1f, 1e-5f), "%s", qkv_error());
    CHECK(rm->data[0] == 0.0f && rv->data[0] == 1.0f, "eval mode changed the running stats");
    qkv_tensor *y = qkv_batch_norm_frozen(ctx, x, w, NULL, rm, rv, 1e-5f);
    CHECK(y && !y->requires_grad, "frozen batch norm recorded a gradient for its weight");
    qkv_set_training(ctx, 1);
    REQUIRE(qkv_batch_norm_frozen(ctx, x, w, NULL, rm, rv, 1e-5f), "%s", qkv_error());
    CHECK(rm->data[0] == 0.0f, "frozen batch norm changed the running stats in training");
    REQUIRE(qkv_batch_norm(ctx, x, w, NULL, rm, rv, 0.1f, 1e-5f), "%s", qkv_error());
    CHECK(rm->data[0] != 0.0f && rv->data[0] != 1.0f, "training left the running stats");
    /* running statistics may be NULL in training mode */
    CHECK(qkv_batch_norm(ctx, x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f), "%s", qkv_error());
    qkv_ctx_free(ctx);
}

TEST(batch_norm_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 4, SHAPE(2, 3, 2, 2)), *w = qkv_zeros(ctx, 1, SHAPE(4));
    CHECK(!qkv_batch_norm(ctx, x, w, NULL, NULL, NULL, 0.1f, 1e-5f) &&
              strstr(qkv_error(), "batch_norm") && strstr(qkv_error(), "(2, 3, 2, 2)") &&
              strstr(qkv_error(), "(4)"),
          "%s", qkv_error());
    qkv_set_training(ctx, 0);
    CHECK(!qkv_batch_norm(ctx, x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f) &&
              strstr(qkv_error(), "running"),
          "eval without running stats: %s", qkv_error());
    qkv_set_training(ctx, 1);
    qkv_tensor *one = qkv_zeros(ctx, 2, SHAPE(1, 3));
    CHECK(!qkv_batch_norm(ctx, one, NULL, NULL, NULL, NULL, 0.1f, 1e-5f) &&
              strstr(qkv_error(), "more than 1 value"),
          "one value per channel: %s", qkv_error());
    qkv_ctx_free(ctx);
}

/* ---- parity with PyTorch ---- */

static void parity_layer_norm(const char *name, bool affine, bool transposed, float eps)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *w = affine ? qkv_requires_grad(fixture_get(ctx, fx, "w")) : NULL;
    qkv_tensor *b = affine ? qkv_requires_grad(fixture_get(ctx, fx, "b")) : NULL;
    qkv_tensor *in = transposed ? qkv_transpose(ctx, x, 0, 1) : x;
    qkv_tensor *out = qkv_layer_norm(ctx, in, w, b, eps), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 1e-6, 5e-7);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK) {
        CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 5e-7, 5e-7);
        if (affine) {
            CHECK_CLOSE_GRAD(w, fixture_get(ctx, fx, "grad_w"), 2e-6, 5e-7);
            CHECK_CLOSE_GRAD(b, fixture_get(ctx, fx, "grad_b"), 5e-7, 5e-7);
        }
    } else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_layer_norm)
{
    parity_layer_norm("layer_norm_affine", true, false, 1e-5f);
    parity_layer_norm("layer_norm_plain", false, false, 1e-6f);
    parity_layer_norm("layer_norm_transposed", true, true, 1e-5f);
}

typedef enum { BN_TRAIN, BN_EVAL, BN_FROZEN } bn_mode;

/* x stored (B, S, C) when permuted, used as its (B, C, S) permutation */
static void parity_batch_norm(const char *name, bn_mode mode, bool permuted, float momentum)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    bool params = mode != BN_FROZEN;
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *w = fixture_get(ctx, fx, "w"), *b = fixture_get(ctx, fx, "b");
    if (params) {
        qkv_requires_grad(w);
        qkv_requires_grad(b);
    }
    qkv_tensor *rm = fixture_get(ctx, fx, "running_mean");
    qkv_tensor *rv = fixture_get(ctx, fx, "running_var");
    qkv_tensor *in = permuted ? qkv_permute(ctx, x, (int[]){0, 2, 1}) : x;
    qkv_set_training(ctx, mode == BN_TRAIN);
    qkv_tensor *out = mode == BN_FROZEN
                          ? qkv_batch_norm_frozen(ctx, in, w, b, rm, rv, 1e-5f)
                          : qkv_batch_norm(ctx, in, w, b, rm, rv, momentum, 1e-5f);
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 5e-7, 5e-7);
    if (params) {
        CHECK_CLOSE(rm, fixture_get(ctx, fx, "running_mean_after"), 2e-8, 5e-7);
        CHECK_CLOSE(rv, fixture_get(ctx, fx, "running_var_after"), 5e-8, 5e-7);
    }
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK) {
        CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 5e-7, 5e-7);
        if (params) {
            CHECK_CLOSE_GRAD(w, fixture_get(ctx, fx, "grad_w"), 2e-6, 5e-7);
            CHECK_CLOSE_GRAD(b, fixture_get(ctx, fx, "grad_b"), 5e-6, 5e-7);
        }
    } else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_batch_norm)
{
    parity_batch_norm("batch_norm_train_4d", BN_TRAIN, false, 0.1f);
    parity_batch_norm("batch_norm_train_2d", BN_TRAIN, false, 0.3f);
    parity_batch_norm("batch_norm_train_permuted", BN_TRAIN, true, 0.1f);
    parity_batch_norm("batch_norm_eval_4d", BN_EVAL, false, 0.1f);
    parity_batch_norm("batch_norm_frozen", BN_FROZEN, false, 0.0f);
}

/* Shuffle BN on one machine: three groups of two rows, each normalised with
 * its own statistics, the running ones updated by each group in turn, as
 * three F.batch_norm calls (tol: the ops' 1e-5 relative, 1e-6 for the
 * running statistics, which are a few float roundings deep). */
TEST(parity_batch_norm_groups)
{
    qkv_st_file *fx = fixture_open("batch_norm_groups");
    REQUIRE(fx, "no fixture");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *w = qkv_requires_grad(fixture_get(ctx, fx, "w"));
    qkv_tensor *b = qkv_requires_grad(fixture_get(ctx, fx, "b"));
    qkv_tensor *rm = fixture_get(ctx, fx, "running_mean");
    qkv_tensor *rv = fixture_get(ctx, fx, "running_var");
    qkv_tensor *nbt = qkv_zeros(ctx, 0, NULL);
    qkv_bn_opts o = {.running_mean = rm, .running_var = rv, .num_batches_tracked = nbt,
                     .momentum = 0.1, .eps = 1e-5f, .groups = 3};
    qkv_tensor *out = qkv_batch_norm_ext(ctx, x, w, b, &o);
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 1e-5, 1e-5);
    CHECK_CLOSE(rm, fixture_get(ctx, fx, "running_mean_after"), 1e-6, 1e-6);
    CHECK_CLOSE(rv, fixture_get(ctx, fx, "running_var_after"), 1e-6, 1e-6);
    CHECK(nbt && nbt->data[0] == 3.0f, "num_batches_tracked %g after three groups",
          nbt ? nbt->data[0] : -1.0f);
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    REQUIRE(out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK, "%s", qkv_error());
    CHECK_CLOSE_BUF(x->grad, fixture_get(ctx, fx, "grad_x"), 1e-5, 1e-5);
    CHECK_CLOSE_BUF(w->grad, fixture_get(ctx, fx, "grad_w"), 1e-5, 1e-5);
    CHECK_CLOSE_BUF(b->grad, fixture_get(ctx, fx, "grad_b"), 1e-5, 1e-5);
    /* eval mode ignores the groups: the running statistics for all rows */
    qkv_set_training(ctx, 0);
    qkv_tensor *ye = qkv_batch_norm_ext(ctx, x, w, b, &o);
    qkv_tensor *y1 = qkv_batch_norm(ctx, x, w, b, rm, rv, 0.1f, 1e-5f);
    CHECK_CLOSE(ye, y1, 0, 0);
    CHECK(nbt->data[0] == 3.0f, "eval mode counted a batch");
    qkv_set_training(ctx, 1);
    o.groups = 4;
    CHECK(!qkv_batch_norm_ext(ctx, x, w, b, &o) && strstr(qkv_error(), "4 groups") &&
              strstr(qkv_error(), "(6, 3, 4, 2)"),
          "6 rows in 4 groups: %s", qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

static qkv_tensor *f_bn_groups(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_batch_norm_ext(c, t[0], t[1], t[2], &(qkv_bn_opts){.eps = 1e-5f, .groups = 2});
}

TEST(gradcheck_batch_norm_groups)
{
    qkv_rng r;
    qkv_rng_seed(&r, 23);
    gc_input in[3] = {gc_rand(&r, 4, SHAPE(4, 3, 2, 2), -2, 2, true),
                      gc_rand(&r, 1, SHAPE(3), 0.5f, 1.5f, true),
                      gc_rand(&r, 1, SHAPE(3), -1, 1, true)};
    CHECK_GRAD(f_bn_groups, 3, in, NULL, 5e-4, 1e-3);
    gc_free(3, in);
}

/* ---- dropout ---- */

static qkv_tensor *f_dropout(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_dropout(c, qkv_transpose(c, t[0], 0, 1), 0.3f);
}

TEST(gradcheck_dropout)
{
    /* the harness reseeds the context RNG before every evaluation, so each
     * sees the same mask */
    qkv_rng r;
    qkv_rng_seed(&r, 23);
    gc_input in[1] = {gc_rand(&r, 2, SHAPE(5, 7), -2, 2, true)};
    CHECK_GRAD(f_dropout, 1, in, NULL, 5e-6, 1e-3);
    gc_free(1, in);
}

TEST(dropout_statistics_and_mask)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), 5);
    const int64_t n = 200001; /* odd: the last element takes half a draw */
    const float p = 0.3f, keep = 1.0f / (1.0f - p);
    qkv_tensor *x = qkv_requires_grad(qkv_rand(ctx, 1, &n, 0.5f, 1.5f));
    qkv_rng_seed(qkv_ctx_rng(ctx), 6);
    qkv_tensor *y = qkv_dropout(ctx, x, p);
    REQUIRE(y, "%s", qkv_error());
    float *ones = malloc(n * sizeof *ones);
    for (int64_t i = 0; i < n; i++)
        ones[i] = 1.0f;
    REQUIRE(qkv_backward_with(ctx, y, ones) == QKV_OK, "%s", qkv_error());
    int64_t kept = 0, bad = 0;
    double sx = 0, sy = 0;
    for (int64_t i = 0; i < n; i++) {
        bool k = y->data[i] != 0.0f;
        kept += k;
        sx += x->data[i];
        sy += y->data[i];
        /* kept elements are scaled by exactly 1 / (1 - p); the gradient is
         * the same mask */
        if ((k && y->data[i] != x->data[i] * keep) || x->grad[i] != (k ? keep : 0.0f))
            bad++;
    }
    free(ones);
    /* 5 standard deviations of a binomial(n, 1 - p) */
    double frac = (double)kept / n, sd = sqrt(p * (1 - p) / n);
    CHECK(fabs(frac - (1 - p)) < 5 * sd, "kept %.4f, expected %.2f", frac, 1 - p);
    CHECK(fabs(sy / sx - 1) < 0.01, "mean moved: %.4f", sy / sx);
    CHECK(bad == 0, "%lld elements with a wrong scale or gradient", (long long)bad);
    /* same seed, same mask; another seed, another mask */
    qkv_rng_seed(qkv_ctx_rng(ctx), 6);
    qkv_tensor *y2 = qkv_dropout(ctx, x, p), *y3 = qkv_dropout(ctx, x, p);
    REQUIRE(y2 && y3, "%s", qkv_error());
    CHECK(!memcmp(y->data, y2->data, n * sizeof(float)), "same seed, different mask");
    CHECK(memcmp(y->data, y3->data, n * sizeof(float)), "the RNG did not advance");
    qkv_ctx_free(ctx);
}

static qkv_tensor *f_dropout_inplace(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_dropout_inplace(c, qkv_linear(c, t[0], t[1], NULL), 0.3f);
}

TEST(gradcheck_dropout_inplace)
{
    qkv_rng r;
    qkv_rng_seed(&r, 24);
    gc_input in[2] = {gc_rand(&r, 2, SHAPE(5, 4), -2, 2, true),
                      gc_rand(&r, 2, SHAPE(6, 4), -1, 1, true)};
    CHECK_GRAD(f_dropout_inplace, 2, in, NULL, 5e-6, 1e-3);
    gc_free(2, in);
}

/* In place on a linear's output: the same values and gradients as
 * qkv_dropout, over the linear's memory; a leaf, an output whose op's
 * backward reads it (tanh) or one already read by an op get the copy and
 * keep their values. */
TEST(dropout_inplace_reuses_the_input)
{
    enum { R = 64, IN = 32, OUT = 48 };
    qkv_ctx *c[2] = {qkv_ctx_new(), qkv_ctx_new()};
    qkv_tensor *x[2], *w[2], *y[2];
    float *ones = malloc(R * OUT * sizeof *ones);
    REQUIRE(ones, "malloc");
    for (int i = 0; i < R * OUT; i++)
        ones[i] = (float)(i % 5) - 2.0f;
    for (int k = 0; k < 2; k++) {
        qkv_rng_seed(qkv_ctx_rng(c[k]), 7);
        x[k] = qkv_requires_grad(qkv_randn(c[k], 2, SHAPE(R, IN), 0, 1));
        w[k] = qkv_requires_grad(qkv_randn(c[k], 2, SHAPE(OUT, IN), 0, 1));
        qkv_tensor *h = qkv_linear(c[k], x[k], w[k], NULL);
        REQUIRE(h, "%s", qkv_error());
        size_t before = qkv_arena_used(qkv_ctx_arena(c[k]));
        y[k] = k ? qkv_dropout_inplace(c[k], h, 0.4f) : qkv_dropout(c[k], h, 0.4f);
        REQUIRE(y[k], "%s", qkv_error());
        size_t took = qkv_arena_used(qkv_ctx_arena(c[k])) - before;
        if (k)
            CHECK(y[k]->data == h->data && took < 1024, "in place took %zu bytes", took);
        else
            CHECK(y[k]->data != h->data && took >= R * OUT * sizeof(float), "copy took %zu", took);
        REQUIRE(qkv_backward_with(c[k], y[k], ones) == QKV_OK, "%s", qkv_error());
    }
    CHECK(!memcmp(y[0]->data, y[1]->data, R * OUT * sizeof(float)), "values differ");
    CHECK(!memcmp(x[0]->grad, x[1]->grad, R * IN * sizeof(float)), "x's gradients differ");
    CHECK(!memcmp(w[0]->grad, w[1]->grad, OUT * IN * sizeof(float)), "w's gradients differ");
    free(ones);
    qkv_ctx *ctx = c[0];
    qkv_ctx_reset(ctx);
    qkv_tensor *leaf = qkv_requires_grad(qkv_full(ctx, 2, SHAPE(8, 8), 1.0f));
    qkv_tensor *t = qkv_tanh(ctx, leaf);
    qkv_tensor *l = qkv_linear(ctx, leaf, leaf, NULL);
    qkv_tensor *read = qkv_mul(ctx, l, l); /* l is read by an op already */
    qkv_tensor *cases[3] = {leaf, t, l};
    REQUIRE(t && l && read, "%s", qkv_error());
    for (int i = 0; i < 3; i++) {
        float was[64];
        memcpy(was, cases[i]->data, sizeof was);
        qkv_tensor *d = qkv_dropout_inplace(ctx, cases[i], 0.5f);
        REQUIRE(d, "%s", qkv_error());
        CHECK(d->data != cases[i]->data, "case %d: overwritten", i);
        CHECK(!memcmp(was, cases[i]->data, sizeof was), "case %d: the input changed", i);
    }
    qkv_ctx_free(c[0]);
    qkv_ctx_free(c[1]);
}

TEST(dropout_edge_cases)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(qkv_randn(ctx, 2, SHAPE(3, 4), 0, 1));
    CHECK(qkv_dropout(ctx, x, 0.0f) == x, "p = 0 is not the identity");
    qkv_set_training(ctx, 0);
    CHECK(qkv_dropout(ctx, x, 0.5f) == x, "eval mode is not the identity");
    qkv_set_training(ctx, 1);
    qkv_tensor *z = qkv_dropout(ctx, x, 1.0f);
    REQUIRE(z, "%s", qkv_error());
    float g[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    REQUIRE(qkv_backward_with(ctx, z, g) == QKV_OK, "%s", qkv_error());
    for (int i = 0; i < 12; i++)
        CHECK(z->data[i] == 0.0f && x->grad[i] == 0.0f, "p = 1: element %d kept", i);
    CHECK(!qkv_dropout(ctx, x, 1.5f) && strstr(qkv_error(), "dropout"), "%s", qkv_error());
    CHECK(!qkv_dropout(ctx, x, NAN), "p = NaN accepted");
    qkv_ctx_free(ctx);
}
