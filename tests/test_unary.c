/* test_unary.c - elementwise unary ops: the vectorised erf and GELU kernels
 * against libm, gradient checks (central differences, float32 op, loss in
 * double) and PyTorch parity on transposed views (forward and backward),
 * each at its stated atol and rtol. */
#include "test.h"

#include "kernels/unary.h"
#include "qkv_internal.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

typedef qkv_tensor *(*unary_fn)(qkv_ctx *, qkv_tensor *);

static qkv_tensor *u_affine(qkv_ctx *c, qkv_tensor *x) { return qkv_affine(c, x, 1.5f, -0.25f); }
static qkv_tensor *u_scale(qkv_ctx *c, qkv_tensor *x) { return qkv_scale(c, x, -2.0f); }
static qkv_tensor *u_pow3(qkv_ctx *c, qkv_tensor *x) { return qkv_pow(c, x, 3.0f); }
static qkv_tensor *u_pow2_5(qkv_ctx *c, qkv_tensor *x) { return qkv_pow(c, x, 2.5f); }
static qkv_tensor *u_pow_m0_5(qkv_ctx *c, qkv_tensor *x) { return qkv_pow(c, x, -0.5f); }
static qkv_tensor *u_leaky(qkv_ctx *c, qkv_tensor *x) { return qkv_leaky_relu(c, x, 0.1f); }
static qkv_tensor *u_softplus(qkv_ctx *c, qkv_tensor *x) { return qkv_softplus(c, x, 1.0f, 20.0f); }
static qkv_tensor *u_softplus_beta(qkv_ctx *c, qkv_tensor *x)
{
    return qkv_softplus(c, x, 2.0f, 5.0f);
}

/* name (the fixture is unary_<name>), op, input range for the gradient check,
 * and whether the op has a kink at 0 that finite differences must avoid */
static const struct {
    const char *name;
    unary_fn f;
    float lo, hi;
    bool kink;
} OPS[] = {
    {"affine", u_affine, -2, 2, false},
    {"scale", u_scale, -2, 2, false},
    {"neg", qkv_neg, -2, 2, false},
    {"exp", qkv_exp, -2, 2, false},
    {"log", qkv_log, 0.2f, 3, false},
    {"sqrt", qkv_sqrt, 0.2f, 3, false},
    {"pow3", u_pow3, -2, 2, false},
    {"pow2_5", u_pow2_5, 0.2f, 3, false},
    {"pow_m0_5", u_pow_m0_5, 0.2f, 3, false},
    {"abs", qkv_abs, -2, 2, true},
    {"tanh", qkv_tanh, -2, 2, false},
    {"sigmoid", qkv_sigmoid, -4, 4, false},
    {"relu", qkv_relu, -2, 2, true},
    {"leaky_relu", u_leaky, -2, 2, true},
    {"gelu", qkv_gelu, -4, 4, false},
    {"gelu_tanh", qkv_gelu_tanh, -4, 4, false},
    {"silu", qkv_silu, -4, 4, false},
    {"softplus", u_softplus, -4, 4, false},
    {"softplus_beta", u_softplus_beta, -4, 4, false}, /* crosses beta x = 5 */
};
#define N_OPS (int)(sizeof OPS / sizeof OPS[0])

static qkv_tensor *f_op(qkv_ctx *c, qkv_tensor **t, void *u) { return OPS[*(int *)u].f(c, t[0]); }

TEST(gradcheck_unary_ops)
{
    qkv_rng r;
    qkv_rng_seed(&r, 11);
    for (int k = 0; k < N_OPS; k++) {
        gc_input in[1] = {gc_rand(&r, 2, SHAPE(3, 5), OPS[k].lo, OPS[k].hi, true)};
        if (OPS[k].kink) /* keep |x| >= 0.1 so no difference straddles 0 */
            for (int i = 0; i < 15; i++)
                in[0].data[i] += in[0].data[i] < 0 ? -0.1f : 0.1f;
        test_note("%s", OPS[k].name);
        CHECK_GRAD(f_op, 1, in, &k, 1e-5, 1e-3);
        gc_free(1, in);
    }
}

static qkv_tensor *f_gelu_view(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_gelu(c, qkv_transpose(c, t[0], 0, 1));
}

TEST(gradcheck_gelu_transposed_and_reused)
{
    /* the input reaches gelu through a view and feeds a second op, so the
     * second gradient must add to the first */
    qkv_rng r;
    qkv_rng_seed(&r, 12);
    gc_input in[1] = {gc_rand(&r, 2, SHAPE(4, 3), -3, 3, true)};
    CHECK_GRAD(f_gelu_view, 1, in, NULL, 2e-6, 1e-3);
    gc_free(1, in);
}

static qkv_tensor *f_tanh_twice(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_mul(c, qkv_tanh(c, t[0]), qkv_sigmoid(c, t[0]));
}

TEST(gradcheck_unary_accumulates)
{
    qkv_rng r;
    qkv_rng_seed(&r, 13);
    gc_input in[1] = {gc_rand(&r, 2, SHAPE(2, 3), -2, 2, true)};
    CHECK_GRAD(f_tanh_twice, 1, in, NULL, 1e-6, 1e-3);
    gc_free(1, in);
}

/* The derivative PyTorch uses at x = 0 for each kink op. */
TEST(unary_kinks_follow_pytorch)
{
    qkv_ctx *ctx = qkv_ctx_new();
    struct { unary_fn f; float want; } kinks[] = {{qkv_relu, 0}, {qkv_abs, 0}, {u_leaky, 0.1f}};
    for (int k = 0; k < 3; k++) {
        qkv_tensor *x = qkv_requires_grad(qkv_zeros(ctx, 1, SHAPE(1)));
        qkv_tensor *y = kinks[k].f(ctx, x);
        REQUIRE(y && qkv_backward(ctx, y) == QKV_OK, "%s", qkv_error());
        CHECK(x->grad[0] == kinks[k].want, "kink %d: grad %g, want %g", k, x->grad[0],
              kinks[k].want);
    }
    qkv_tensor *nan = qkv_full(ctx, 1, SHAPE(1), NAN);
    CHECK(isnan(qkv_relu(ctx, nan)->data[0]), "relu(NaN) is not NaN");
    CHECK(isnan(qkv_gelu(ctx, nan)->data[0]), "gelu(NaN) is not NaN");
    qkv_ctx_free(ctx);
}

TEST(unary_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_clear_error();
    CHECK(qkv_exp(ctx, NULL) == NULL && strstr(qkv_error(), "exp"), "exp(NULL): %s",
          qkv_error());
    qkv_clear_error();
    qkv_tensor *x = qkv_zeros(ctx, 1, SHAPE(3));
    CHECK(qkv_softplus(ctx, x, 0.0f, 20.0f) == NULL && strstr(qkv_error(), "softplus"),
          "softplus beta 0: %s", qkv_error());
    qkv_clear_error();
    qkv_ctx_free(ctx);
}

/* ---- the vectorised erf and GELU against libm ---- */

static float *dense_range(int64_t n, float lo, float hi)
{
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)((double)i / (double)(n - 1));
    return x;
}

TEST(erf_matches_libm)
{
    /* measured: max |erf - erff| = 2.3e-7 with gcc, 3.8e-7 with clang (2-3
     * ulp of 1) over [-10, 10], an absolute error (the polynomial's), so
     * rtol 0 */
    int64_t n = 2000001;
    float *x = dense_range(n, -10, 10), *y = malloc((size_t)n * sizeof *y);
    float *want = malloc((size_t)n * sizeof *want);
    qkv_k_erf(y, x, n);
    for (int64_t i = 0; i < n; i++)
        want[i] = erff(x[i]);
    CHECK_CLOSE_N(y, want, n, 6e-7, 0);
    free(x);
    free(y);
    free(want);
}

TEST(gelu_kernel_matches_reference)
{
    /* measured over [-14, 14]: the forward's relative error is 4.1e-7
     * wherever Phi(x) = y / x is a normal float (the tail Phi(x) for x << 0
     * keeps relative accuracy; below that Phi is denormal and only absolute
     * error means anything: 6.5e-39); backward within 2.3e-7 + 1e-6 |ref|
     * with g in [-3, 3] (Phi near 0 carries ~4 ulp from the division and the
     * Horner sum). Odd n covers the vector tail. */
    int64_t n = 1000003;
    float *x = dense_range(n, -14, 14), *y = malloc((size_t)n * sizeof *y);
    float *g = malloc((size_t)n * sizeof *g), *dx = malloc((size_t)n * sizeof *dx);
    float *ref = malloc((size_t)n * sizeof *ref);
    double *want = malloc((size_t)n * sizeof *want);
    qkv_k_gelu(y, x, n);
    for (int64_t i = 0; i < n; i++)
        want[i] = x[i] * 0.5 * erfc(-x[i] * M_SQRT1_2);
    test_note("forward");
    CHECK_CLOSE_N(y, want, n, 2e-38, 1e-6);
    for (int64_t i = 0; i < n; i++)
        g[i] = (float)(i % 7) - 3.0f;
    qkv_k_gelu_backward(dx, g, x, n, false);
    qkv_k_gelu_backward_ref(ref, g, x, n);
    test_note("backward");
    CHECK_CLOSE_N(dx, ref, n, 5e-7, 1e-6);
    /* accumulate adds to what is there, rounding exactly as 1 + store */
    for (int64_t i = 0; i < n; i++)
        ref[i] = dx[i] + 1.0f;
    for (int64_t i = 0; i < n; i++)
        dx[i] = 1.0f;
    qkv_k_gelu_backward(dx, g, x, n, true);
    test_note("backward, accumulating");
    CHECK_CLOSE_N(dx, ref, n, 0, 0);
    free(want);
    free(x);
    free(y);
    free(g);
    free(dx);
    free(ref);
}

/* ---- parity with PyTorch ---- */

static void parity_unary(const char *fixture, unary_fn f, bool transposed)
{
    qkv_st_file *fx = fixture_open(fixture);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *in = transposed ? qkv_transpose(ctx, x, -1, -2) : x;
    qkv_tensor *out = f(ctx, in);
    qkv_tensor *want = fixture_get(ctx, fx, "out"), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, want, 5e-6, 5e-7);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK)
        CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 1e-5, 5e-7);
    else
        CHECK(0, "%s: %s", fixture, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_unary_transposed)
{
    for (int k = 0; k < N_OPS; k++) {
        char name[64];
        snprintf(name, sizeof name, "unary_%s", OPS[k].name);
        parity_unary(name, OPS[k].f, true);
    }
}

TEST(parity_gelu_large)
{
    /* contiguous, 38829 elements: two threads and a vector tail */
    parity_unary("unary_gelu_large", qkv_gelu, false);
}

TEST(sigmoid_family_matches_reference)
{
    /* sigmoid, SiLU and GELU-tanh use the vectorised exp. Measured over
     * [-100, 100] against double: within 1e-6 relative everywhere, the
     * denormal tails (sigmoid(-100) = 3.7e-44) within 6e-39 and 5e-37, and
     * GELU-tanh's cancellation near 0 within 2.4e-10. Extremes saturate and
     * NaN propagates. */
    int64_t n = 400001;
    float *x = dense_range(n, -100, 100), *y = malloc((size_t)n * sizeof *y);
    double *want = malloc((size_t)n * sizeof *want);
    static const struct { qkv_unop op; double atol, rtol; } ops[] = {
        {QKV_UN_SIGMOID, 2e-38, 1.5e-6}, {QKV_UN_SILU, 2e-36, 1.5e-6},
        {QKV_UN_GELU_TANH, 1e-9, 1.5e-6}};
    for (int k = 0; k < 3; k++) {
        qkv_k_unary(ops[k].op, y, x, n, 0, 0);
        for (int64_t i = 0; i < n; i++) {
            double v = x[i], s = 1 / (1 + exp(-v));
            want[i] = ops[k].op == QKV_UN_SIGMOID ? s
                      : ops[k].op == QKV_UN_SILU
                          ? v * s
                          : 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
        }
        test_note("op %d", (int)ops[k].op);
        CHECK_CLOSE_N(y, want, n, ops[k].atol, ops[k].rtol);
        float nan = NAN, out;
        qkv_k_unary(ops[k].op, &out, &nan, 1, 0, 0);
        CHECK(isnan(out), "op %d: NaN in, %g out", (int)ops[k].op, out);
    }
    free(want);
    free(x);
    free(y);
}

/* qkv__relu_inplace (ResNet's ReLU(inplace=True)) over an add's output:
 * the result shares the add's storage, equals qkv_relu's values, and the
 * gradients through it equal those through qkv_relu exactly (both rules
 * read only the output); a gradient check through it besides. */
static qkv_tensor *f_relu_inplace(qkv_ctx *c, qkv_tensor **t, void *u)
{
    (void)u;
    return qkv__relu_inplace(c, qkv_add(c, t[0], t[1]));
}

TEST(relu_inplace_equals_relu_in_place)
{
    qkv_tensor *got[2][3] = {{0}};
    qkv_ctx *ctx[2];
    for (int k = 0; k < 2; k++) {
        ctx[k] = qkv_ctx_new();
        qkv_rng_seed(qkv_ctx_rng(ctx[k]), 21);
        qkv_tensor *a = qkv_requires_grad(qkv_randn(ctx[k], 2, SHAPE(6, 7), 0, 1));
        qkv_tensor *b = qkv_requires_grad(qkv_randn(ctx[k], 2, SHAPE(6, 7), 0, 1));
        qkv_tensor *s = qkv_add(ctx[k], a, b);
        qkv_tensor *y = k ? qkv__relu_inplace(ctx[k], s) : qkv_relu(ctx[k], s);
        qkv_tensor *g = qkv_randn(ctx[k], 2, SHAPE(6, 7), 0, 1);
        REQUIRE(y && g, "%s", qkv_error());
        CHECK(y->ndim == 2 && y->shape[0] == 6 && y->shape[1] == 7, "shape");
        if (k)
            CHECK(y->data == s->data, "in place: the add's storage");
        REQUIRE(qkv_backward_with(ctx[k], y, g->data) == QKV_OK, "%s", qkv_error());
        got[k][0] = y;
        got[k][1] = qkv_wrap(ctx[k], 2, a->shape, a->grad);
        got[k][2] = qkv_wrap(ctx[k], 2, b->shape, b->grad);
    }
    for (int j = 0; j < 3; j++)
        CHECK_CLOSE(got[1][j], got[0][j], 0, 0);
    for (int k = 0; k < 2; k++)
        qkv_ctx_free(ctx[k]);

    qkv_rng r;
    qkv_rng_seed(&r, 22);
    gc_input in[2] = {gc_rand(&r, 2, SHAPE(3, 4), -2, 2, true),
                      gc_rand(&r, 2, SHAPE(3, 4), -2, 2, true)};
    for (int i = 0; i < 12; i++) { /* keep the sum away from the kink */
        float s = in[0].data[i] + in[1].data[i];
        if (fabsf(s) < 0.1f)
            in[0].data[i] += s < 0 ? -0.2f : 0.2f;
    }
    CHECK_GRAD(f_relu_inplace, 2, in, NULL, 1e-5, 1e-3);
    gc_free(2, in);
}

/* ---- gelu_linear: linear(dropout(gelu(x))), the hidden layer recomputed ---- */

static qkv_tensor *f_gelu_linear(qkv_ctx *c, qkv_tensor **t, void *u)
{
    /* x through a view; dropout 0.3 (the harness reseeds the RNG, so every
     * evaluation draws the same mask) */
    return qkv_gelu_linear(c, qkv_transpose(c, t[0], 0, 1), 0.3f, t[1], t[2]);
}

TEST(gradcheck_gelu_linear)
{
    qkv_rng r;
    qkv_rng_seed(&r, 29);
    gc_input in[3] = {gc_rand(&r, 3, SHAPE(6, 4, 5), -3, 3, true),
                      gc_rand(&r, 2, SHAPE(3, 5), -1, 1, true),
                      gc_rand(&r, 1, SHAPE(3), -1, 1, true)};
    /* the loss is linear in w and b, so their numeric gradient is float32's
     * rounding of the 24 outputs over a step: a step of 1e-2 keeps that
     * near 1e-5, while GELU's curvature over x's step stays inside rtol */
    CHECK_GRAD_STEP(f_gelu_linear, 3, in, NULL, 1e-2, 2e-5, 1e-3);
    gc_free(3, in);
}

/* y and the gradients of x, w, b (copied into keep) of the fused op, or of
 * qkv_linear(qkv_dropout(qkv_gelu(x))), on inputs drawn from seed 3 */
static void gelu_linear_run(qkv_ctx *keep, bool fused, float p, qkv_tensor *res[4])
{
    const int64_t R = 300, in = 96, out = 40;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), 3);
    qkv_tensor *x = qkv_requires_grad(qkv_randn(ctx, 3, SHAPE(3, R / 3, in), 0, 2));
    qkv_tensor *w = qkv_requires_grad(qkv_randn(ctx, 2, SHAPE(out, in), 0, 0.1f));
    qkv_tensor *b = qkv_requires_grad(qkv_randn(ctx, 1, SHAPE(out), 0, 1));
    qkv_tensor *g = qkv_randn(ctx, 3, SHAPE(3, R / 3, out), 0, 1);
    qkv_tensor *y = fused ? qkv_gelu_linear(ctx, x, p, w, b)
                          : qkv_linear(ctx, qkv_dropout(ctx, qkv_gelu(ctx, x), p), w, b);
    bool ok = y && qkv_backward_with(ctx, y, g->data) == QKV_OK;
    CHECK(ok, "%s", qkv_error());
    res[0] = ok ? qkv_from_data(keep, y->ndim, y->shape, y->data) : NULL;
    res[1] = ok ? qkv_from_data(keep, x->ndim, x->shape, x->grad) : NULL;
    res[2] = ok ? qkv_from_data(keep, w->ndim, w->shape, w->grad) : NULL;
    res[3] = ok ? qkv_from_data(keep, b->ndim, b->shape, b->grad) : NULL;
    qkv_ctx_free(ctx);
}

TEST(gelu_linear_equals_the_composition)
{
    /* training, dropout 0.25, a size that takes both threads: the fused op
     * against the composition from the same RNG state, outputs and the
     * three gradients (the same kernels in the same order: equal to
     * rounding) */
    qkv_ctx *keep = qkv_ctx_new();
    qkv_tensor *got[4], *want[4], *nodrop[4];
    gelu_linear_run(keep, true, 0.25f, got);
    gelu_linear_run(keep, false, 0.25f, want);
    gelu_linear_run(keep, true, 0.0f, nodrop);
    for (int i = 0; i < 4; i++)
        if (!CHECK_CLOSE(got[i], want[i], 1e-6, 1e-6))
            break;
    /* and the dropout acted: without it the output moves */
    double moved = 0;
    for (int64_t i = 0; got[0] && nodrop[0] && i < qkv_numel(got[0]); i++)
        moved = fmax(moved, fabs((double)nodrop[0]->data[i] - got[0]->data[i]));
    CHECK(moved > 1e-2, "dropout 0.25 moved the output by only %g", moved);
    qkv_ctx_free(keep);
}

TEST(gelu_linear_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 2, SHAPE(4, 5)), *w = qkv_zeros(ctx, 2, SHAPE(3, 6));
    CHECK(!qkv_gelu_linear(ctx, x, 0.1f, w, NULL) && strstr(qkv_error(), "gelu_linear"),
          "in 5 against a weight's 6 is not refused: %s", qkv_error());
    w = qkv_zeros(ctx, 2, SHAPE(3, 5));
    CHECK(!qkv_gelu_linear(ctx, x, 1.5f, w, NULL) && strstr(qkv_error(), "probability"),
          "p 1.5 is not refused: %s", qkv_error());
    CHECK(!qkv_gelu_linear(ctx, x, 0.1f, w, qkv_zeros(ctx, 1, SHAPE(4))),
          "a bias of 4 for 3 outputs is not refused");
    qkv_ctx_free(ctx);
}

TEST(parity_gelu_linear)
{
    /* F.linear(F.gelu(x), w, b) (no dropout: PyTorch's mask is its own) */
    qkv_st_file *fx = fixture_open("gelu_linear");
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *w = qkv_requires_grad(fixture_get(ctx, fx, "w"));
    qkv_tensor *b = qkv_requires_grad(fixture_get(ctx, fx, "b"));
    qkv_tensor *out = qkv_gelu_linear(ctx, x, 0.0f, w, b);
    qkv_tensor *want = fixture_get(ctx, fx, "out"), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, want, 1e-5, 1e-5);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK) {
        CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 1e-5, 1e-5);
        CHECK_CLOSE_GRAD(w, fixture_get(ctx, fx, "grad_w"), 1e-5, 1e-5);
        CHECK_CLOSE_GRAD(b, fixture_get(ctx, fx, "grad_b"), 1e-5, 1e-5);
    } else
        CHECK(0, "gelu_linear: %s", qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}
