/* test_l2norm.c - L2 normalisation along an axis: unit norms, gradient
 * checks (central differences of float32 ops, atol 2e-5, rtol 1e-3: the
 * measured noise), PyTorch parity of output and gradient (F.normalize;
 * atol 1e-6, rtol 1e-5), the clamped case, and the errors. */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

static qkv_tensor *f_l2_last(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_l2_normalize(c, t[0], -1, 1e-12f);
}
static qkv_tensor *f_l2_middle(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_l2_normalize(c, t[0], 1, 1e-12f);
}
static qkv_tensor *f_l2_transposed(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_l2_normalize(c, qkv_transpose(c, t[0], 0, 1), 1, 1e-12f);
}

TEST(gradcheck_l2_normalize)
{
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    gc_input a = gc_rand(&r, 2, SHAPE(4, 6), -2, 2, true);
    CHECK_GRAD(f_l2_last, 1, &a, NULL, 2e-5, 1e-3);
    gc_free(1, &a);
    gc_input b = gc_rand(&r, 3, SHAPE(2, 5, 3), -2, 2, true);
    CHECK_GRAD(f_l2_middle, 1, &b, NULL, 2e-5, 1e-3);
    gc_free(1, &b);
    gc_input c = gc_rand(&r, 2, SHAPE(5, 3), -2, 2, true);
    CHECK_GRAD(f_l2_transposed, 1, &c, NULL, 2e-5, 1e-3);
    gc_free(1, &c);
}

TEST(l2_normalize_gives_unit_vectors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_randn(ctx, 3, SHAPE(3, 7, 5), 0.5f, 3.0f);
    qkv_tensor *y = qkv_l2_normalize(ctx, x, 1, 1e-12f);
    REQUIRE(y, "%s", qkv_error());
    for (int64_t i = 0; i < 3; i++)
        for (int64_t s = 0; s < 5; s++) {
            double n = 0;
            for (int64_t c = 0; c < 7; c++) {
                double v = y->data[(i * 7 + c) * 5 + s];
                n += v * v;
                /* the same direction: y = x / ||x|| keeps each sign */
                CHECK((v > 0) == (x->data[(i * 7 + c) * 5 + s] > 0), "sign changed");
            }
            CHECK_SCALAR(sqrt(n), 1.0, 1e-6, 0);
        }
    qkv_ctx_free(ctx);
}

static void parity_l2(const char *name, int axis, float eps)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *y = qkv_l2_normalize(ctx, x, axis, eps), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(y, fixture_get(ctx, fx, "out"), 1e-6, 1e-5);
    if (y && gout && qkv_backward_with(ctx, y, gout->data) == QKV_OK)
        CHECK_CLOSE_BUF(x->grad, fixture_get(ctx, fx, "grad_x"), 1e-6, 1e-5);
    else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_l2_normalize)
{
    parity_l2("l2_normalize_rows", 1, 1e-12f);
    parity_l2("l2_normalize_middle", 1, 1e-12f);
    parity_l2("l2_normalize_first", 0, 1e-12f);
    /* a vector of norm below eps: divided by eps, as PyTorch's clamp_min */
    parity_l2("l2_normalize_clamped", 1, 1e-6f);
}

TEST(l2_normalize_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_randn(ctx, 2, SHAPE(2, 3), 0, 1);
    CHECK(!qkv_l2_normalize(ctx, x, 2, 1e-12f) && qkv_error_status() == QKV_ERR_ARG,
          "axis 2 of a 2-D tensor accepted");
    CHECK(strstr(qkv_error(), "l2_normalize"), "message does not name the op: %s", qkv_error());
    CHECK(!qkv_l2_normalize(ctx, x, 1, -1.0f), "negative eps accepted");
    CHECK(!qkv_l2_normalize(ctx, NULL, 1, 1e-12f), "NULL accepted");
    qkv_ctx_free(ctx);
}
