/* test_harness.c - the harness cannot be fooled: each check below must fail
 * (EXPECT_FAIL counts its failures apart). A result of zeros against tiny
 * values, equal counts in different shapes, a NaN, a tolerance that admits
 * zeros, and a zero or halved backward all fail, in CHECK_CLOSE and in the
 * gradient check alike. */
#include "test.h"

#include "qkv_internal.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

TEST(harness_close_fails_zeros_shapes_and_nan)
{
    qkv_ctx *ctx = qkv_ctx_new();
    /* gradients of ~1e-6: zeros pass an absolute 1e-5, as the old
     * max(1, |want|) scale did, but not a tolerance stated below them */
    float tiny[4] = {3e-6f, -2e-6f, 1e-6f, 4e-6f}, zero[4] = {0};
    qkv_tensor *want = qkv_from_data(ctx, 1, SHAPE(4), tiny);
    qkv_tensor *zeros = qkv_from_data(ctx, 1, SHAPE(4), zero);
    EXPECT_FAIL(CHECK_CLOSE(zeros, want, 1e-5, 1e-5)); /* zeros would pass: vacuous */
    EXPECT_FAIL(CHECK_CLOSE(zeros, want, 1e-7, 1e-5)); /* outside the tolerance */
    EXPECT_FAIL(CHECK_CLOSE_BUF(zero, want, 1e-5, 0));
    EXPECT_FAIL(CHECK_SCALAR(0.0, 2e-6, 1e-5, 0));
    CHECK_CLOSE(want, want, 1e-7, 1e-5);
    /* an all-zero want is a real check: got must be zero */
    CHECK_CLOSE(zeros, zeros, 1e-7, 0);
    EXPECT_FAIL(CHECK_CLOSE(want, zeros, 1e-7, 0));
    /* same count, other shape */
    qkv_tensor *a = qkv_randn(ctx, 2, SHAPE(2, 3), 0, 1);
    qkv_tensor *b = qkv_reshape(ctx, a, 2, SHAPE(3, 2));
    EXPECT_FAIL(CHECK_CLOSE(a, b, 1e-6, 1e-6));
    qkv_tensor *g = qkv_requires_grad(qkv_randn(ctx, 2, SHAPE(2, 3), 0, 1));
    REQUIRE(qkv_backward(ctx, qkv_sum_all(ctx, g)) == QKV_OK, "%s", qkv_error());
    CHECK_CLOSE_GRAD(g, qkv_full(ctx, 2, SHAPE(2, 3), 1.0f), 0, 0);
    EXPECT_FAIL(CHECK_CLOSE_GRAD(g, qkv_full(ctx, 2, SHAPE(3, 2), 1.0f), 1, 0));
    /* NaN anywhere, on either side */
    float with_nan[4] = {3e-6f, NAN, 1e-6f, 4e-6f};
    EXPECT_FAIL(CHECK_CLOSE(qkv_from_data(ctx, 1, SHAPE(4), with_nan), want, 1, 0.5));
    EXPECT_FAIL(CHECK_CLOSE(want, qkv_from_data(ctx, 1, SHAPE(4), with_nan), 1e-6, 0.5));
    EXPECT_FAIL(CHECK_SCALAR(NAN, 1.0, 1, 0.5));
    /* tolerances that cannot mean anything */
    EXPECT_FAIL(CHECK_SCALAR(1.0, 1.0, -1, 0));
    EXPECT_FAIL(CHECK_SCALAR(1.0, 1.0, 0, 1));
    /* arrays of float and double */
    double wd[4] = {3e-6, -2e-6, 1e-6, 4e-6};
    CHECK_CLOSE_N(tiny, wd, 4, 1e-12, 1e-6);
    EXPECT_FAIL(CHECK_CLOSE_N(zero, wd, 4, 1e-5, 0));
    qkv_ctx_free(ctx);
}

/* out = scale * x^2, with a backward that is right, zero, or half of it */
typedef struct {
    float scale;
    int kind; /* 0 right, 1 zero, 2 half */
} square_args;

static void square_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = s x^2: dx += g * 2 s x */
    float s = n->farg[0], f = n->farg[1];
    float *gx = qkv__grad(ctx, n->in[0]);
    for (int64_t i = 0; i < qkv_numel(n->in[0]); i++)
        gx[i] += n->out->grad[i] * f * s * n->in[0]->data[i];
}

static qkv_tensor *f_square(qkv_ctx *c, qkv_tensor **t, void *u)
{
    qkv_tensor *x = t[0], *out = qkv_new(c, x->ndim, x->shape);
    const square_args *a = u;
    for (int64_t i = 0; i < qkv_numel(x); i++)
        out->data[i] = a->scale * x->data[i] * x->data[i];
    qkv_node *n = qkv__record(c, QKV_OP_CUSTOM, square_backward, out, 1, &x);
    if (n) {
        n->farg[0] = a->scale;
        n->farg[1] = a->kind == 1 ? 0.0f : a->kind == 2 ? 1.0f : 2.0f;
    }
    return out;
}

TEST(harness_gradcheck_fails_zero_and_halved_backward)
{
    qkv_rng r;
    qkv_rng_seed(&r, 6);
    gc_input in[1] = {gc_rand(&r, 2, SHAPE(3, 4), 0.5f, 1.5f, true)};
    /* gradients 2e-6 x R, all below 3e-6: the old score passed zeros */
    square_args right = {1e-6f, 0}, zero = {1e-6f, 1}, half = {1e-6f, 2};
    CHECK_GRAD(f_square, 1, in, &right, 1e-11, 1e-3);
    gc_result z = gradcheck_run(f_square, 1, in, &zero, 1e-3, 1e-11, 1e-3);
    CHECK(!z.ok && !z.vacuous && z.analytic == 0, "a zero backward passed");
    gc_result h = gradcheck_run(f_square, 1, in, &half, 1e-3, 1e-11, 1e-3);
    CHECK(!h.ok && fabs(2 * h.analytic - h.numeric) <= 1e-3 * fabs(h.numeric),
          "a halved backward passed (analytic %g, numeric %g)", h.analytic, h.numeric);
    /* an atol above every gradient is refused, whatever the backward */
    gc_result v = gradcheck_run(f_square, 1, in, &right, 1e-3, 1e-5, 1e-3);
    CHECK(!v.ok && v.vacuous, "a tolerance that admits zeros was accepted");
    EXPECT_FAIL(CHECK_GRAD(f_square, 1, in, &zero, 1e-5, 1e-3));
    gc_free(1, in);
}
