/*
 * kernel_regression.c - attention pooling as Nadaraya-Watson kernel
 * regression, the first experiment of d2l's attention chapter (r0.17
 * "nadaraya-watson"; the kernels and widths of v1.0.3 "attention-pooling").
 *
 * Queries are test inputs x, keys the training inputs x_i, values the
 * training targets y_i. The nonparametric model pools with fixed kernel
 * weights; the parametric one learns the single width w by autograd.
 *
 * Shapes: N queries, M keys (and values) per query.
 */
#include "../qkv_internal.h"

#include <math.h>
#include <stdlib.h>

#define KREG_X_MAX 5.0  /* x_train = U[0,1) * 5, x_test in [0, 5) */
#define KREG_X_STEP 0.1 /* x_test = 0, 0.1, .., 4.9 */

/* ---------------------------------------------------------------- data --- */

float qkv_kreg_f(float x) { return 2.0f * sinf(x) + powf(x, 0.8f); }

static int ascending(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void qkv_kreg_data_free(qkv_kreg_data *d)
{
    if (!d)
        return;
    qkv__free(d->x_train);
    qkv__free(d->y_train);
    qkv__free(d->x_test);
    qkv__free(d->y_truth);
    memset(d, 0, sizeof *d);
}

qkv_status qkv_kreg_data_make(qkv_kreg_data *d, qkv_rng *r, int64_t n_train, float noise)
{
    if (!d || !r)
        return qkv_set_error(QKV_ERR_ARG, "kreg_data_make: NULL argument");
    memset(d, 0, sizeof *d);
    if (n_train < 2 || !(noise >= 0) || !isfinite(noise))
        return qkv_set_error(QKV_ERR_ARG,
                             "kreg_data_make: need n_train >= 2 and a finite noise >= 0, "
                             "got n_train %lld, noise %g",
                             (long long)n_train, (double)noise);
    d->n_train = n_train;
    d->n_test = (int64_t)ceil(KREG_X_MAX / KREG_X_STEP - 1e-9);
    d->x_train = qkv__malloc((size_t)n_train * sizeof(float));
    d->y_train = qkv__malloc((size_t)n_train * sizeof(float));
    d->x_test = qkv__malloc((size_t)d->n_test * sizeof(float));
    d->y_truth = qkv__malloc((size_t)d->n_test * sizeof(float));
    if (!d->x_train || !d->y_train || !d->x_test || !d->y_truth) {
        qkv_kreg_data_free(d);
        return qkv_set_error(QKV_ERR_NOMEM, "kreg_data_make: out of memory");
    }
    /* The book draws every x, sorts them, and only then draws the noise. */
    for (int64_t i = 0; i < n_train; i++)
        d->x_train[i] = (float)qkv_rng_uniform(r) * (float)KREG_X_MAX;
    qsort(d->x_train, (size_t)n_train, sizeof(float), ascending);
    for (int64_t i = 0; i < n_train; i++)
        d->y_train[i] = qkv_kreg_f(d->x_train[i]) + (float)(noise * qkv_rng_normal(r));
    for (int64_t i = 0; i < d->n_test; i++) {
        d->x_test[i] = (float)((double)i * KREG_X_STEP); /* torch.arange's start + i*step */
        d->y_truth[i] = qkv_kreg_f(d->x_test[i]);
    }
    return QKV_OK;
}

/* ------------------------------------------------- nonparametric pooling --- */

static const char *const kernel_names[] = {"gaussian", "boxcar", "constant", "epanechnikov"};
#define N_KERNELS ((int)(sizeof kernel_names / sizeof kernel_names[0]))

const char *qkv_kernel_name(qkv_kernel k)
{
    return (int)k >= 0 && (int)k < N_KERNELS ? kernel_names[k] : "unknown";
}

int qkv_kernel_parse(const char *name)
{
    for (int k = 0; name && k < N_KERNELS; k++)
        if (!strcmp(name, kernel_names[k]))
            return k;
    return -1;
}

/* K(u) for the kernels without an exponential; the Gaussian goes through a
 * softmax in pool_row. */
static double kernel_value(qkv_kernel k, double u)
{
    switch (k) {
    case QKV_KERNEL_BOXCAR: return fabs(u) < 1.0 ? 1.0 : 0.0;
    case QKV_KERNEL_CONSTANT: return 1.0;
    case QKV_KERNEL_EPANECHNIKOV: return fmax(0.0, 1.0 - fabs(u));
    case QKV_KERNEL_GAUSSIAN: break;
    }
    return 0.0;
}

/* One query: w (M) = normalised kernel weights; returns sum_j w_j v_j. */
static double pool_row(float *w, double q, const float *keys, const float *values, int64_t M,
                       qkv_kernel kernel, double sigma)
{
    double total = 0.0, y = 0.0;
    if (kernel == QKV_KERNEL_GAUSSIAN) {
        /* exp(-u^2/2) / sum = softmax(-u^2/2): subtracting the largest score
         * keeps a query far from every key (narrow sigma) from giving 0/0. */
        double top = -INFINITY;
        for (int64_t j = 0; j < M; j++) {
            double u = (q - keys[j]) / sigma;
            w[j] = (float)(-u * u / 2.0);
            top = fmax(top, w[j]);
        }
        for (int64_t j = 0; j < M; j++)
            total += (w[j] = (float)exp(w[j] - top));
    } else {
        for (int64_t j = 0; j < M; j++)
            total += (w[j] = (float)kernel_value(kernel, (q - keys[j]) / sigma));
    }
    for (int64_t j = 0; j < M; j++) {
        w[j] = (float)(w[j] / total); /* total 0: no key in reach, NaN as in PyTorch */
        y += (double)w[j] * values[j];
    }
    return y;
}

qkv_status qkv_kreg_pool(float *y_hat, float *weights, const float *queries, int64_t n_q,
                         const float *keys, const float *values, int64_t n_k, qkv_kernel kernel,
                         float sigma)
{
    /* y_hat (N), weights (N, M) or NULL, queries (N), keys (M), values (M) */
    if (!y_hat || !queries || !keys || !values)
        return qkv_set_error(QKV_ERR_ARG, "kreg_pool: NULL argument");
    if (n_q < 0 || n_k < 1 || (int)kernel < 0 || (int)kernel >= N_KERNELS ||
        !(sigma > 0) || !isfinite(sigma))
        return qkv_set_error(QKV_ERR_ARG,
                             "kreg_pool: need n_q >= 0, n_k >= 1, a known kernel and a finite "
                             "sigma > 0, got %lld, %lld, kernel %d, sigma %g",
                             (long long)n_q, (long long)n_k, (int)kernel, (double)sigma);
    float *row = weights ? NULL : qkv__malloc((size_t)n_k * sizeof(float));
    if (!weights && !row)
        return qkv_set_error(QKV_ERR_NOMEM, "kreg_pool: out of memory");
    for (int64_t i = 0; i < n_q; i++) {
        float *w = weights ? weights + i * n_k : row;
        y_hat[i] = (float)pool_row(w, queries[i], keys, values, n_k, kernel, sigma);
    }
    qkv__free(row);
    return QKV_OK;
}

/* ---------------------------------------------------- parametric pooling --- */

qkv_tensor *qkv_kreg_forward(qkv_ctx *ctx, qkv_tensor *queries, qkv_tensor *keys,
                             qkv_tensor *values, qkv_tensor *w, qkv_tensor **attention)
{
    /* queries (N), keys (N, M), values (N, M), w (1) -> (N) */
    QKV_INPUTS("kreg_forward", queries, keys, values, w);
    if (queries->ndim != 1 || keys->ndim != 2 || keys->shape[0] != queries->shape[0])
        return qkv__shape_error("kreg_forward", queries, keys,
                                "queries (N) and keys (N, M) must agree on N");
    if (!qkv_same_shape(keys, values))
        return qkv__shape_error("kreg_forward", keys, values,
                                "keys and values must both be (N, M)");
    if (qkv_numel(w) != 1)
        return qkv__shape_error("kreg_forward", w, keys, "w must be one scalar");
    int64_t N = keys->shape[0], M = keys->shape[1];
    /* d2l repeats each query M times; broadcasting the column (N, 1) gives
     * the same differences. */
    qkv_tensor *q = qkv_reshape(ctx, queries, 2, (int64_t[]){N, 1});
    qkv_tensor *scaled = qkv_mul(ctx, qkv_sub(ctx, q, keys), w);
    /* -((q - k) w)^2 / 2 */
    qkv_tensor *scores = qkv_scale(ctx, qkv_pow(ctx, scaled, 2.0f), -0.5f);
    qkv_tensor *attn = qkv_softmax(ctx, scores);
    if (attention)
        *attention = attn;
    /* bmm(attn (N, 1, M), values (N, M, 1)) -> (N, 1, 1) */
    qkv_tensor *y = qkv_matmul(ctx, qkv_reshape(ctx, attn, 3, (int64_t[]){N, 1, M}),
                               qkv_reshape(ctx, values, 3, (int64_t[]){N, M, 1}), 0, 0);
    return qkv_reshape(ctx, y, 1, (int64_t[]){N});
}

/* keys, values (n, n - 1): row i holds every training pair except pair i, so
 * that no point can explain itself (the book's `1 - eye` mask). */
void qkv_kreg_leave_one_out(float *keys, float *values, const float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0, c = 0; j < n; j++)
            if (j != i) {
                keys[i * (n - 1) + c] = x[j];
                values[i * (n - 1) + c++] = y[j];
            }
}

qkv_status qkv_kreg_predict(float *y_hat, float *weights, const float *queries, int64_t n_q,
                            const float *keys, const float *values, int64_t n_k, float w)
{
    /* y_hat (N), weights (N, M) or NULL, queries (N), keys (M), values (M) */
    if (!y_hat || !queries || !keys || !values)
        return qkv_set_error(QKV_ERR_ARG, "kreg_predict: NULL argument");
    if (n_q < 1 || n_k < 1)
        return qkv_set_error(QKV_ERR_ARG, "kreg_predict: need n_q >= 1 and n_k >= 1, got %lld, %lld",
                             (long long)n_q, (long long)n_k);
    qkv_ctx *ctx = qkv_ctx_new();
    if (!ctx)
        return qkv_error_status();
    qkv_set_grad_enabled(ctx, 0);
    const int64_t nm[2] = {n_q, n_k};
    qkv_tensor *k = qkv_new(ctx, 2, nm), *v = qkv_new(ctx, 2, nm);
    qkv_status st = QKV_OK;
    if (k && v) {
        /* The book repeats the training pairs for every test query. */
        for (int64_t i = 0; i < n_q; i++) {
            memcpy(k->data + i * n_k, keys, (size_t)n_k * sizeof(float));
            memcpy(v->data + i * n_k, values, (size_t)n_k * sizeof(float));
        }
    }
    qkv_tensor *attn = NULL;
    qkv_tensor *y = qkv_kreg_forward(ctx, qkv_from_data(ctx, 1, &n_q, queries), k, v,
                                     qkv_from_data(ctx, 1, (int64_t[]){1}, &w), &attn);
    if (y) {
        memcpy(y_hat, y->data, (size_t)n_q * sizeof(float));
        if (weights)
            memcpy(weights, attn->data, (size_t)(n_q * n_k) * sizeof(float));
    } else {
        st = qkv_error_status();
    }
    qkv_ctx_free(ctx);
    return st;
}
