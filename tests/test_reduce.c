/* test_reduce.c - sum, mean, max over axes: shapes, ties and errors,
 * gradient checks (central differences, float32 op, loss in double) over
 * the first, a middle and the last axis, keepdim on and off, several axes,
 * everything and a transposed view; PyTorch parity (forward and backward;
 * argmax exactly). Each check states atol and rtol. */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

enum { R_SUM, R_MEAN, R_MAX, R_SUM_AXES, R_MEAN_AXES, R_SUM_ALL, R_MEAN_ALL };

/* one reduction call; transposed: applied to x.transpose(0, 2) */
typedef struct {
    int kind;
    int naxes;
    int axes[3];
    int keepdim;
    bool transposed;
} reduce_case;

static qkv_tensor *apply(qkv_ctx *c, qkv_tensor *x, const reduce_case *rc, int64_t *argmax)
{
    if (rc->transposed)
        x = qkv_transpose(c, x, 0, 2);
    switch (rc->kind) {
    case R_SUM: return qkv_sum(c, x, rc->axes[0], rc->keepdim);
    case R_MEAN: return qkv_mean(c, x, rc->axes[0], rc->keepdim);
    case R_MAX: return qkv_max(c, x, rc->axes[0], rc->keepdim, argmax);
    case R_SUM_AXES: return qkv_sum_axes(c, x, rc->naxes, rc->axes, rc->keepdim);
    case R_MEAN_AXES: return qkv_mean_axes(c, x, rc->naxes, rc->axes, rc->keepdim);
    case R_SUM_ALL: return qkv_sum_all(c, x);
    default: return qkv_mean_all(c, x);
    }
}

static qkv_tensor *f_reduce(qkv_ctx *c, qkv_tensor **t, void *u) { return apply(c, t[0], u, NULL); }

TEST(gradcheck_reductions)
{
    static const reduce_case cases[] = {
        {R_SUM, 1, {0}, 0, false},       {R_SUM, 1, {1}, 1, false},
        {R_SUM, 1, {-1}, 0, false},      {R_SUM, 1, {-1}, 1, true},
        {R_MEAN, 1, {0}, 1, false},      {R_MEAN, 1, {1}, 0, false},
        {R_MEAN, 1, {-1}, 0, true},      {R_MAX, 1, {0}, 0, false},
        {R_MAX, 1, {1}, 1, false},       {R_MAX, 1, {-1}, 0, false},
        {R_MAX, 1, {1}, 0, true},        {R_SUM_AXES, 2, {0, 2}, 0, false},
        {R_SUM_AXES, 2, {-1, 1}, 1, true}, {R_MEAN_AXES, 2, {0, -1}, 1, false},
        {R_MEAN_AXES, 3, {2, 0, 1}, 0, true}, {R_SUM_ALL, 0, {0}, 0, false},
        {R_MEAN_ALL, 0, {0}, 0, true},
    };
    qkv_rng r;
    qkv_rng_seed(&r, 21);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        gc_input in[1] = {gc_rand(&r, 3, SHAPE(2, 3, 4), -1, 1, true)};
        test_note("case %zu (kind %d)", k, cases[k].kind);
        CHECK_GRAD(f_reduce, 1, in, (void *)&cases[k], 5e-6, 1e-3);
        gc_free(1, in);
    }
}

TEST(reduce_shapes)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_randn(ctx, 3, SHAPE(2, 3, 4), 0, 1);
    qkv_tensor *a = qkv_sum(ctx, x, 1, 0), *b = qkv_mean(ctx, x, -1, 1);
    qkv_tensor *c = qkv_sum_axes(ctx, x, 2, (int[]){0, -1}, 1), *d = qkv_mean_all(ctx, x);
    REQUIRE(a && b && c && d, "%s", qkv_error());
    CHECK(a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 4, "sum(1) shape");
    CHECK(b->ndim == 3 && b->shape[2] == 1 && b->shape[1] == 3, "mean(-1, keepdim) shape");
    CHECK(c->ndim == 3 && c->shape[0] == 1 && c->shape[1] == 3 && c->shape[2] == 1,
          "sum_axes keepdim shape");
    CHECK(d->ndim == 0 && qkv_numel(d) == 1, "mean_all: ndim %d", d->ndim);
    double s = 0;
    for (int i = 0; i < 24; i++)
        s += x->data[i];
    CHECK_SCALAR(d->data[0], s / 24, 2e-9, 5e-7);
    qkv_ctx_free(ctx);
}

TEST(max_ties_and_nan)
{
    /* the first maximum wins and alone gets the gradient; NaN is the max */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(
        qkv_from_data(ctx, 2, SHAPE(2, 4), (float[]){1, 3, 3, 2, 5, NAN, 1, NAN}));
    int64_t arg[2] = {-1, -1};
    qkv_tensor *m = qkv_max(ctx, x, 1, 0, arg);
    REQUIRE(m, "%s", qkv_error());
    CHECK(m->data[0] == 3 && arg[0] == 1, "max [1,3,3,2]: %g at %lld", m->data[0],
          (long long)arg[0]);
    CHECK(isnan(m->data[1]) && arg[1] == 1, "max with NaN: %g at %lld", m->data[1],
          (long long)arg[1]);
    REQUIRE(qkv_backward_with(ctx, m, (float[]){1, 1}) == QKV_OK, "%s", qkv_error());
    float want[8] = {0, 1, 0, 0, 0, 1, 0, 0};
    for (int i = 0; i < 8; i++)
        CHECK(x->grad[i] == want[i], "grad[%d] = %g, want %g", i, x->grad[i], want[i]);
    qkv_ctx_free(ctx);
}

TEST(reduce_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 2, SHAPE(2, 3));
    qkv_clear_error();
    CHECK(!qkv_sum(ctx, x, 2, 0) && strstr(qkv_error(), "sum") && strstr(qkv_error(), "(2, 3)"),
          "axis out of range: %s", qkv_error());
    qkv_clear_error();
    CHECK(!qkv_mean_axes(ctx, x, 2, (int[]){1, -1}, 0) && strstr(qkv_error(), "twice"),
          "repeated axis: %s", qkv_error());
    qkv_clear_error();
    qkv_tensor *empty = qkv_zeros(ctx, 2, SHAPE(2, 0));
    CHECK(!qkv_max(ctx, empty, 1, 0, NULL) && strstr(qkv_error(), "empty"), "empty max: %s",
          qkv_error());
    qkv_clear_error();
    qkv_tensor *s = qkv_sum(ctx, empty, 1, 0);
    CHECK(s && s->data[0] == 0 && s->data[1] == 0, "sum over an empty axis is 0");
    CHECK(!qkv_max(ctx, NULL, 0, 0, NULL), "max(NULL)");
    qkv_clear_error();
    qkv_ctx_free(ctx);
}

/* ---- parity with PyTorch: the fixtures of tests/parity/cases_reduce.py ---- */

static void parity_reduce(const char *fixture, reduce_case rc)
{
    qkv_st_file *fx = fixture_open(fixture);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    int64_t arg[64];
    qkv_tensor *out = x ? apply(ctx, x, &rc, arg) : NULL;
    qkv_tensor *want = fixture_get(ctx, fx, "out"), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, want, 2e-6, 5e-7);
    if (rc.kind == R_MAX && out) {
        int64_t idx[64], m = qkv_numel(out);
        int64_t i = qkv_st_find(fx, "idx");
        REQUIRE(i >= 0 && m <= 64 && qkv_st_read_i64(fx, i, idx) == QKV_OK, "%s: idx", fixture);
        for (int64_t k = 0; k < m; k++)
            CHECK(arg[k] == idx[k], "%s: argmax[%lld] = %lld, want %lld", fixture, (long long)k,
                  (long long)arg[k], (long long)idx[k]);
    }
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK)
        CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 0, 5e-7);
    else
        CHECK(0, "%s: %s", fixture, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_reductions)
{
    parity_reduce("reduce_sum_0", (reduce_case){R_SUM, 1, {0}, 0, false});
    parity_reduce("reduce_sum_1_keep_t", (reduce_case){R_SUM, 1, {1}, 1, true});
    parity_reduce("reduce_sum_m1", (reduce_case){R_SUM, 1, {-1}, 0, false});
    parity_reduce("reduce_mean_1", (reduce_case){R_MEAN, 1, {1}, 0, false});
    parity_reduce("reduce_mean_m1_keep_t", (reduce_case){R_MEAN, 1, {-1}, 1, true});
    parity_reduce("reduce_max_0", (reduce_case){R_MAX, 1, {0}, 0, false});
    parity_reduce("reduce_max_m1_keep_t", (reduce_case){R_MAX, 1, {-1}, 1, true});
    parity_reduce("reduce_sum_axes_0_2_t", (reduce_case){R_SUM_AXES, 2, {0, 2}, 0, true});
    parity_reduce("reduce_sum_axes_m1_1_keep", (reduce_case){R_SUM_AXES, 2, {-1, 1}, 1, false});
    parity_reduce("reduce_mean_axes_0_m1", (reduce_case){R_MEAN_AXES, 2, {0, -1}, 0, false});
    parity_reduce("reduce_sum_all_t", (reduce_case){R_SUM_ALL, 0, {0}, 0, true});
    parity_reduce("reduce_mean_all", (reduce_case){R_MEAN_ALL, 0, {0}, 0, false});
}
