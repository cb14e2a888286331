/* test_knn.c - the kNN monitor against the MoCo demo's knn_predict in
 * PyTorch (scores rtol 1e-5: float32 similarities, exp in double here),
 * k beyond the bank, bad labels; principal components of data with known
 * axes. */
#include "test.h"

TEST(parity_knn_monitor)
{
    qkv_st_file *fx = fixture_open("knn_monitor");
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *q = fixture_get(ctx, fx, "queries"), *bank = fixture_get(ctx, fx, "bank");
    qkv_tensor *lab = fixture_get(ctx, fx, "labels"), *want = fixture_get(ctx, fx, "scores");
    qkv_tensor *pred_want = fixture_get(ctx, fx, "pred");
    REQUIRE(q && bank && lab && want && pred_want, "fixture incomplete");
    int64_t nq = q->shape[0], nb = bank->shape[0], dim = q->shape[1];
    int64_t k = atoi(qkv_st_meta(fx, "k")), classes = atoi(qkv_st_meta(fx, "classes"));
    float T = strtof(qkv_st_meta(fx, "T"), NULL);
    int64_t *labels = malloc((size_t)nb * sizeof *labels), *pred = malloc((size_t)nq * sizeof *pred);
    for (int64_t i = 0; i < nb; i++)
        labels[i] = (int64_t)lab->data[i];
    qkv_tensor *scores = qkv_new(ctx, 2, want->shape);
    REQUIRE(qkv_knn_predict(pred, scores->data, q->data, nq, bank->data, labels, nb, dim, k, T,
                            classes) == QKV_OK, "%s", qkv_error());
    CHECK_CLOSE(scores, want, 1e-4, 1e-5);
    for (int64_t i = 0; i < nq; i++)
        CHECK(pred[i] == (int64_t)pred_want->data[i], "query %lld: class %lld, PyTorch %g",
              (long long)i, (long long)pred[i], (double)pred_want->data[i]);
    /* k beyond the bank: every row votes */
    REQUIRE(qkv_knn_predict(pred, scores->data, q->data, 1, bank->data, labels, 5, dim, 50, T,
                            classes) == QKV_OK, "%s", qkv_error());
    double total = 0, expect = 0;
    for (int64_t c = 0; c < classes; c++)
        total += scores->data[c];
    for (int64_t j = 0; j < 5; j++) {
        double s = 0;
        for (int64_t d = 0; d < dim; d++)
            s += (double)q->data[d] * bank->data[j * dim + d];
        expect += exp(s / T);
    }
    CHECK_SCALAR(total, expect, 0, 1e-5);
    labels[3] = classes; /* a label out of range */
    CHECK(qkv_knn_predict(pred, NULL, q->data, nq, bank->data, labels, nb, dim, k, T, classes) ==
              QKV_ERR_ARG && strstr(qkv_error(), "row 3"),
          "a bad label accepted: %s", qkv_error());
    free(labels);
    free(pred);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(pca_finds_the_axes_of_largest_variance)
{
    /* points along e1 with std 3 and along (e2 + e3)/sqrt 2 with std 1,
     * noise 0.01, shifted by a mean: the components are those axes */
    int64_t n = 2000, d = 5;
    float *x = malloc((size_t)(n * d) * sizeof(float)), out[2 * 2000], comp[2 * 5];
    qkv_rng r;
    qkv_rng_seed(&r, 4);
    for (int64_t i = 0; i < n; i++) {
        double a = 3.0 * qkv_rng_normal(&r), b = qkv_rng_normal(&r);
        for (int64_t j = 0; j < d; j++)
            x[i * d + j] = (float)(0.01 * qkv_rng_normal(&r) + 5.0 + j);
        x[i * d + 0] += (float)a;
        x[i * d + 1] += (float)(b / sqrt(2.0));
        x[i * d + 2] += (float)(b / sqrt(2.0));
    }
    REQUIRE(qkv_pca(out, comp, x, n, d, 2) == QKV_OK, "%s", qkv_error());
    CHECK_SCALAR(fabs(comp[0]), 1.0, 1e-3, 0);
    CHECK_SCALAR(fabs(comp[5 + 1]), 1.0 / sqrt(2.0), 1e-3, 0);
    CHECK_SCALAR(fabs(comp[5 + 2]), 1.0 / sqrt(2.0), 1e-3, 0);
    /* the projections have the variances 9 and 1, and mean zero */
    double m0 = 0, v0 = 0, v1 = 0;
    for (int64_t i = 0; i < n; i++)
        m0 += out[2 * i], v0 += (double)out[2 * i] * out[2 * i],
            v1 += (double)out[2 * i + 1] * out[2 * i + 1];
    CHECK_SCALAR(m0 / n, 0.0, 1e-4, 0);
    CHECK_SCALAR(v0 / n, 9.0, 0, 0.1);
    CHECK_SCALAR(v1 / n, 1.0, 0, 0.1);
    CHECK(qkv_pca(out, NULL, x, 1, d, 2) == QKV_ERR_ARG, "one row accepted");
    CHECK(qkv_pca(out, NULL, x, n, d, 6) == QKV_ERR_ARG, "k > d accepted");
    free(x);
}
