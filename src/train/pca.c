/* pca.c - principal components of a set of rows (for pictures of an
 * embedding): the covariance in double, its leading eigenvectors by power
 * iteration with deflation. */
#include "../qkv_internal.h"

#include <math.h>

#define ITERS 1000

qkv_status qkv_pca(float *out, float *components, const float *x, int64_t n, int64_t d, int64_t k)
{
    if (!out || !x || n < 2 || d < 1 || k < 1 || k > d)
        return qkv_set_error(QKV_ERR_ARG, "pca: need at least 2 rows and 1 <= k <= d (got n "
                             "%lld, d %lld, k %lld)", (long long)n, (long long)d, (long long)k);
    double *mean = qkv__calloc((size_t)d, sizeof *mean);
    double *cov = qkv__calloc((size_t)(d * d), sizeof *cov);
    double *v = qkv__malloc((size_t)(k * d) * sizeof *v), *w = qkv__malloc((size_t)d * sizeof *w);
    if (!mean || !cov || !v || !w) {
        qkv__free(mean), qkv__free(cov), qkv__free(v), qkv__free(w);
        return qkv_set_error(QKV_ERR_NOMEM, "pca: out of memory for a %lld x %lld covariance",
                             (long long)d, (long long)d);
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t a = 0; a < d; a++)
            mean[a] += x[i * d + a];
    for (int64_t a = 0; a < d; a++)
        mean[a] /= (double)n;
    /* the upper triangle, then mirrored */
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t a = 0; a < d; a++)
        for (int64_t i = 0; i < n; i++) {
            double xa = x[i * d + a] - mean[a];
            for (int64_t b = a; b < d; b++)
                cov[a * d + b] += xa * (x[i * d + b] - mean[b]);
        }
    for (int64_t a = 0; a < d; a++)
        for (int64_t b = 0; b < a; b++)
            cov[a * d + b] = cov[b * d + a];
    for (int64_t c = 0; c < k; c++) {
        double *u = v + c * d;
        for (int64_t a = 0; a < d; a++) /* a start no eigenvector is orthogonal to */
            u[a] = 1.0 + 0.01 * (double)((a * 7919 + c * 104729) % 97);
        double lambda = 0.0;
        for (int it = 0; it < ITERS; it++) {
            for (int64_t a = 0; a < d; a++) {
                double s = 0.0;
                for (int64_t b = 0; b < d; b++)
                    s += cov[a * d + b] * u[b];
                w[a] = s;
            }
            double norm = 0.0, dot = 0.0;
            for (int64_t a = 0; a < d; a++)
                norm += w[a] * w[a];
            norm = sqrt(norm);
            if (norm == 0.0)
                break;
            for (int64_t a = 0; a < d; a++) {
                dot += (w[a] / norm) * u[a];
                u[a] = w[a] / norm;
            }
            lambda = norm;
            if (fabs(fabs(dot) - 1.0) < 1e-13)
                break;
        }
        /* the sign that makes the largest entry positive */
        int64_t big = 0;
        for (int64_t a = 1; a < d; a++)
            if (fabs(u[a]) > fabs(u[big]))
                big = a;
        if (u[big] < 0)
            for (int64_t a = 0; a < d; a++)
                u[a] = -u[a];
        for (int64_t a = 0; a < d; a++) /* deflate */
            for (int64_t b = 0; b < d; b++)
                cov[a * d + b] -= lambda * u[a] * u[b];
        if (components)
            for (int64_t a = 0; a < d; a++)
                components[c * d + a] = (float)u[a];
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < k; c++) {
            double s = 0.0;
            for (int64_t a = 0; a < d; a++)
                s += (x[i * d + a] - mean[a]) * v[c * d + a];
            out[i * k + c] = (float)s;
        }
    qkv__free(mean), qkv__free(cov), qkv__free(v), qkv__free(w);
    return QKV_OK;
}
