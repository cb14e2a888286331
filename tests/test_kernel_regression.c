/* test_kernel_regression.c - Nadaraya-Watson kernel regression: the data,
 * nonparametric pooling, the parametric model's gradient, and the book's
 * training run against PyTorch (tests/parity/cases_kreg.py). */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

TEST(kreg_data_is_the_books)
{
    qkv_rng r;
    qkv_rng_seed(&r, 7);
    qkv_kreg_data d;
    REQUIRE(qkv_kreg_data_make(&d, &r, 50, 0.5f) == QKV_OK, "%s", qkv_error());
    CHECK(d.n_train == 50 && d.n_test == 50, "sizes %lld %lld", (long long)d.n_train,
          (long long)d.n_test);
    double noise2 = 0.0;
    for (int64_t i = 0; i < d.n_train; i++) {
        CHECK(d.x_train[i] >= 0.0f && d.x_train[i] < 5.0f, "x_train[%lld] = %g", (long long)i,
              d.x_train[i]);
        CHECK(i == 0 || d.x_train[i - 1] <= d.x_train[i], "x_train not sorted at %lld",
              (long long)i);
        double e = d.y_train[i] - qkv_kreg_f(d.x_train[i]);
        noise2 += e * e;
    }
    /* 50 draws of N(0, 0.25): the sample variance is within [0.12, 0.45]
     * with probability far above 1 - 1e-4. */
    CHECK(noise2 / 50 > 0.12 && noise2 / 50 < 0.45, "noise variance %g", noise2 / 50);
    for (int64_t i = 0; i < d.n_test; i++) {
        CHECK_SCALAR(d.x_test[i], 0.1 * (double)i, 5e-8, 5e-7);
        CHECK_SCALAR(d.y_truth[i], 2 * sin(d.x_test[i]) + pow(d.x_test[i], 0.8), 5e-7, 5e-7);
    }
    qkv_kreg_data_free(&d);
    qkv_rng_seed(&r, 7);
    CHECK(qkv_kreg_data_make(&d, &r, 1, 0.5f) != QKV_OK && strstr(qkv_error(), "n_train"),
          "n_train 1 accepted: %s", qkv_error());
}

TEST(kreg_pool_by_hand)
{
    /* Two keys at 0 and 1, values 2 and 4, a query at 0: the Gaussian gives
     * weights 1 / (1 + e^-0.5) and e^-0.5 / (1 + e^-0.5). */
    const float keys[] = {0.0f, 1.0f}, values[] = {2.0f, 4.0f}, q[] = {0.0f, 3.0f};
    float y[2], w[4];
    REQUIRE(qkv_kreg_pool(y, w, q, 2, keys, values, 2, QKV_KERNEL_GAUSSIAN, 1.0f) == QKV_OK,
            "%s", qkv_error());
    double a = 1.0 / (1.0 + exp(-0.5));
    CHECK_SCALAR(w[0], a, 1e-8, 5e-7);
    CHECK_SCALAR(w[1], 1 - a, 5e-9, 5e-7);
    CHECK_SCALAR(y[0], 2 * a + 4 * (1 - a), 5e-8, 5e-7);
    /* sigma 0.01 puts a query at 3 some 2e4 widths from both keys: the
     * softmax form still weighs the nearer key fully instead of 0/0. */
    REQUIRE(qkv_kreg_pool(y, w, q, 2, keys, values, 2, QKV_KERNEL_GAUSSIAN, 0.01f) == QKV_OK,
            "%s", qkv_error());
    CHECK_SCALAR(y[1], 4.0, 0, 5e-7);
    /* Epanechnikov, width 2: the query at 0 sees 1 and 0.5. */
    REQUIRE(qkv_kreg_pool(y, w, q, 1, keys, values, 2, QKV_KERNEL_EPANECHNIKOV, 2.0f) == QKV_OK,
            "%s", qkv_error());
    CHECK_SCALAR(y[0], (2 * 1.0 + 4 * 0.5) / 1.5, 5e-8, 5e-7);
    /* No key within the boxcar of the query at 3: NaN, as k / k.sum(0). */
    REQUIRE(qkv_kreg_pool(y, w, q, 2, keys, values, 2, QKV_KERNEL_BOXCAR, 1.0f) == QKV_OK, "%s",
            qkv_error());
    CHECK(y[0] == 2.0f && isnan(y[1]), "boxcar: %g %g", y[0], y[1]);
    CHECK(qkv_kreg_pool(y, w, q, 2, keys, values, 2, QKV_KERNEL_GAUSSIAN, 0.0f) != QKV_OK &&
              strstr(qkv_error(), "sigma"),
          "sigma 0 accepted: %s", qkv_error());
    CHECK(qkv_kernel_parse("epanechnikov") == QKV_KERNEL_EPANECHNIKOV &&
              qkv_kernel_parse("cosine") == -1 &&
              !strcmp(qkv_kernel_name(QKV_KERNEL_BOXCAR), "boxcar"),
          "kernel names");
}

static qkv_tensor *f_kreg(qkv_ctx *ctx, qkv_tensor **in, void *ud)
{
    return qkv_kreg_forward(ctx, in[0], in[1], in[2], in[3], NULL);
}

TEST(kreg_forward_gradcheck)
{
    qkv_rng r;
    qkv_rng_seed(&r, 11);
    /* w in [0.5, 1.5] keeps the softmax soft enough that a step of 1e-3
     * moves it smoothly; the tolerance is the suite's usual 2e-2. */
    gc_input in[4] = {gc_rand(&r, 1, SHAPE(4), 0, 5, true), gc_rand(&r, 2, SHAPE(4, 5), 0, 5, true),
                      gc_rand(&r, 2, SHAPE(4, 5), -2, 2, true),
                      gc_rand(&r, 1, SHAPE(1), 0.5f, 1.5f, true)};
    CHECK_GRAD(f_kreg, 4, in, NULL, 5e-5, 1e-3);
    gc_free(4, in);
}

TEST(kreg_forward_shape_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *q = qkv_zeros(ctx, 1, SHAPE(3)), *k = qkv_zeros(ctx, 2, SHAPE(4, 5)),
               *v = qkv_zeros(ctx, 2, SHAPE(4, 5)), *w = qkv_zeros(ctx, 1, SHAPE(1));
    CHECK(!qkv_kreg_forward(ctx, q, k, v, w, NULL) && strstr(qkv_error(), "kreg_forward") &&
              strstr(qkv_error(), "(3)") && strstr(qkv_error(), "(4, 5)"),
          "N mismatch: %s", qkv_error());
    q = qkv_zeros(ctx, 1, SHAPE(4));
    CHECK(!qkv_kreg_forward(ctx, q, k, qkv_zeros(ctx, 2, SHAPE(4, 6)), w, NULL) &&
              strstr(qkv_error(), "(4, 6)"),
          "values mismatch: %s", qkv_error());
    CHECK(!qkv_kreg_forward(ctx, q, k, v, qkv_zeros(ctx, 1, SHAPE(2)), NULL) &&
              strstr(qkv_error(), "scalar"),
          "w of two: %s", qkv_error());
    qkv_ctx_free(ctx);
}

/* d2l's NWKernelRegression.forward with its gradients; keys arrive as a
 * transposed (non-contiguous) view. */
TEST(parity_kreg_forward)
{
    qkv_st_file *fx = fixture_open("kreg_forward");
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *q = qkv_requires_grad(fixture_get(ctx, fx, "q"));
    qkv_tensor *keys_t = qkv_requires_grad(fixture_get(ctx, fx, "keys_t"));
    qkv_tensor *values = qkv_requires_grad(fixture_get(ctx, fx, "values"));
    qkv_tensor *w = qkv_requires_grad(fixture_get(ctx, fx, "w"));
    qkv_tensor *keys = qkv_transpose(ctx, keys_t, 0, 1);
    REQUIRE(keys && !qkv_is_contiguous(keys), "the keys view should be strided");
    qkv_tensor *out = qkv_kreg_forward(ctx, q, keys, values, w, NULL);
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 2e-7, 5e-7);
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    REQUIRE(out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK, "%s", qkv_error());
    CHECK_CLOSE_GRAD(q, fixture_get(ctx, fx, "grad_q"), 5e-7, 5e-7);
    CHECK_CLOSE_GRAD(keys_t, fixture_get(ctx, fx, "grad_keys_t"), 5e-8, 5e-7);
    CHECK_CLOSE_GRAD(values, fixture_get(ctx, fx, "grad_values"), 5e-8, 5e-7);
    CHECK_CLOSE_GRAD(w, fixture_get(ctx, fx, "grad_w"), 2e-8, 5e-7);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

/* The book's training run on PyTorch's data: every epoch's loss, the final
 * w, and the test predictions and attention weights, to 1e-5. */
static void parity_train(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    test_note("%s", name);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = fixture_get(ctx, fx, "x_train"), *y = fixture_get(ctx, fx, "y_train");
    qkv_tensor *xt = fixture_get(ctx, fx, "x_test"), *w0 = fixture_get(ctx, fx, "w0");
    qkv_tensor *want_losses = fixture_get(ctx, fx, "losses");
    const char *epochs_s = qkv_st_meta(fx, "epochs"), *lr_s = qkv_st_meta(fx, "lr");
    REQUIRE(x && y && xt && w0 && want_losses && epochs_s && lr_s, "fixture %s incomplete", name);
    int epochs = atoi(epochs_s);
    float lr = strtof(lr_s, NULL), w = w0->data[0];
    int64_t n = qkv_numel(x), nq = qkv_numel(xt);
    qkv_tensor *losses = qkv_new(ctx, 1, SHAPE(epochs));
    REQUIRE(qkv_kreg_train(&w, x->data, y->data, n, epochs, lr, losses->data) == QKV_OK, "%s",
            qkv_error());
    CHECK_CLOSE(losses, want_losses, 5e-5, 5e-7);
    qkv_tensor *wt = qkv_from_data(ctx, 1, SHAPE(1), &w);
    CHECK_CLOSE(wt, fixture_get(ctx, fx, "w"), 1e-7, 5e-7);
    qkv_tensor *y_hat = qkv_new(ctx, 1, SHAPE(nq)), *attn = qkv_new(ctx, 2, SHAPE(nq, n));
    REQUIRE(qkv_kreg_predict(y_hat->data, attn->data, xt->data, nq, x->data, y->data, n, w) ==
                QKV_OK,
            "%s", qkv_error());
    CHECK_CLOSE(y_hat, fixture_get(ctx, fx, "y_hat"), 2e-6, 5e-7);
    CHECK_CLOSE(attn, fixture_get(ctx, fx, "attention"), 5e-7, 5e-7);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_kreg_train)
{
    parity_train("kreg_train");          /* w goes from 0.065 to 4.4 */
    parity_train("kreg_train_collapse"); /* w drifts through 0 */
    parity_train("kreg_train_small");    /* 12 points, 8 epochs, lr 0.1 */
}

/* v1.0.3's nadaraya_watson (k / k.sum(0), y_train @ weights) for each kernel
 * and the four Gaussian widths, to 1e-5. */
TEST(parity_kreg_pool)
{
    qkv_st_file *fx = fixture_open("kreg_pool");
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = fixture_get(ctx, fx, "x_train"), *y = fixture_get(ctx, fx, "y_train");
    qkv_tensor *xt = fixture_get(ctx, fx, "x_test");
    REQUIRE(x && y && xt, "fixture incomplete");
    int64_t n = qkv_numel(x), nq = qkv_numel(xt);
    struct {
        const char *name;
        qkv_kernel k;
        float sigma;
    } cases[] = {{"gaussian", QKV_KERNEL_GAUSSIAN, 1.0f},
                 {"boxcar", QKV_KERNEL_BOXCAR, 1.0f},
                 {"constant", QKV_KERNEL_CONSTANT, 1.0f},
                 {"epanechnikov", QKV_KERNEL_EPANECHNIKOV, 1.0f},
                 {"gaussian_0.1", QKV_KERNEL_GAUSSIAN, 0.1f},
                 {"gaussian_0.2", QKV_KERNEL_GAUSSIAN, 0.2f},
                 {"gaussian_0.5", QKV_KERNEL_GAUSSIAN, 0.5f},
                 {"gaussian_1", QKV_KERNEL_GAUSSIAN, 1.0f}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        qkv_tensor *y_hat = qkv_new(ctx, 1, SHAPE(nq)), *attn = qkv_new(ctx, 2, SHAPE(nq, n));
        REQUIRE(qkv_kreg_pool(y_hat->data, attn->data, xt->data, nq, x->data, y->data, n,
                              cases[c].k, cases[c].sigma) == QKV_OK,
                "%s", qkv_error());
        char want[64];
        snprintf(want, sizeof want, "y_hat_%s", cases[c].name);
        qkv_tensor *y_want = fixture_get(ctx, fx, want);
        snprintf(want, sizeof want, "attention_%s", cases[c].name);
        qkv_tensor *a_want = fixture_get(ctx, fx, want);
        test_note("%s", cases[c].name);
        CHECK_CLOSE(y_hat, y_want, 5e-6, 5e-7);
        CHECK_CLOSE(attn, a_want, 5e-7, 5e-7);
    }
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

/* The book's claim: the learned width beats the fixed Gaussian (sigma 1).
 * Seeds 0-9 all show it; it fails on about 1 seed in 10 (12, 20, 23 of
 * 0-29), where w starts near 0, the stationary point of the constant
 * estimator, and stays there. */
TEST(kreg_parametric_beats_gaussian)
{
    for (uint64_t seed = 0; seed < 10; seed++) {
        qkv_rng r;
        qkv_rng_seed(&r, seed);
        qkv_kreg_data d;
        REQUIRE(qkv_kreg_data_make(&d, &r, 50, 0.5f) == QKV_OK, "%s", qkv_error());
        float w = (float)qkv_rng_uniform(&r), losses[5];
        float y_np[50], y_p[50];
        REQUIRE(qkv_kreg_train(&w, d.x_train, d.y_train, 50, 5, 0.5f, losses) == QKV_OK, "%s",
                qkv_error());
        CHECK(losses[4] < losses[0], "seed %llu: loss %g -> %g", (unsigned long long)seed,
              losses[0], losses[4]);
        REQUIRE(qkv_kreg_pool(y_np, NULL, d.x_test, 50, d.x_train, d.y_train, 50,
                              QKV_KERNEL_GAUSSIAN, 1.0f) == QKV_OK &&
                    qkv_kreg_predict(y_p, NULL, d.x_test, 50, d.x_train, d.y_train, 50, w) ==
                        QKV_OK,
                "%s", qkv_error());
        double e_np = 0, e_p = 0;
        for (int i = 0; i < 50; i++) {
            e_np += (y_np[i] - d.y_truth[i]) * (y_np[i] - d.y_truth[i]) / 50;
            e_p += (y_p[i] - d.y_truth[i]) * (y_p[i] - d.y_truth[i]) / 50;
        }
        CHECK(e_p < e_np, "seed %llu: parametric MSE %g >= Gaussian %g (w %g)",
              (unsigned long long)seed, e_p, e_np, w);
        qkv_kreg_data_free(&d);
    }
}
