/* loss.c - cross entropy and pointwise losses, forward and backward. */
#include "loss.h"
#include "softmax.h"

#include <math.h>
#include <string.h>

/* Below this many elements in total a kernel stays on one thread. */
#define PAR_WORK 8192

/* ---- cross entropy ---- */

/* loss (N), lse (N) from x (N, K), target (N), w (K) or NULL */
void qkv_k_cross_entropy_forward(float *loss, float *lse, const float *x, const int64_t *target,
                                 const float *w, int64_t ignore, float eps, int64_t N,
                                 int64_t K)
{
#pragma omp parallel for if (N * K > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * K;
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int64_t c = 0; c < K; c++)
            m = xi[c] > m ? xi[c] : m;
        /* the sum in float lanes (each lane adds K / lanes terms, as the
         * softmax kernels): a double per term would keep it from vectorising */
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < K; c++)
            s += qkv_k_expf(xi[c] - m);
        double l = m + log((double)s);
        lse[i] = (float)l;
        int64_t t = target[i];
        if (t == ignore) {
            loss[i] = 0.0f;
            continue;
        }
        /* -log p_t = lse - x_t; the smoothing term spreads eps over all K */
        double nll = (w ? w[t] : 1.0) * (l - xi[t]), smooth = 0;
        if (eps != 0.0f) {
            for (int64_t c = 0; c < K; c++)
                smooth += (w ? w[c] : 1.0) * (l - xi[c]);
        }
        loss[i] = (float)((1.0 - eps) * nll + eps / (double)K * smooth);
    }
}

/* dx (N, K) from dloss (N, strided), x (N, K), lse (N), target (N) */
void qkv_k_cross_entropy_backward(float *dx, const float *dloss, int64_t stride, const float *x,
                                  const float *lse, const int64_t *target, const float *w,
                                  int64_t ignore, float eps, int64_t N, int64_t K)
{
    double wsum = 0;
    for (int64_t c = 0; c < K; c++)
        wsum += w ? w[c] : 1.0;
#pragma omp parallel for if (N * K > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        int64_t t = target[i];
        if (t == ignore)
            continue;
        const float *xi = x + i * K;
        float *di = dx + i * K;
        float g = dloss[i * stride], li = lse[i];
        /* d/dx_c [(1 - eps) w_t (lse - x_t)] = (1 - eps) w_t (p_c - [c == t])
         * d/dx_c [eps/K sum_k w_k (lse - x_k)] = eps/K (sum(w) p_c - w_c) */
        float a = g * (1.0f - eps) * (w ? w[t] : 1.0f);
        float e = g * eps / (float)K, ew = e * (float)wsum;
        if (w) {
#pragma omp simd
            for (int64_t c = 0; c < K; c++)
                di[c] += (a + ew) * qkv_k_expf(xi[c] - li) - e * w[c];
        } else {
#pragma omp simd
            for (int64_t c = 0; c < K; c++)
                di[c] += (a + ew) * qkv_k_expf(xi[c] - li) - e;
        }
        di[t] -= a;
    }
}

void qkv_k_cross_entropy_grad(float *dx, float dloss, const float *x, const float *lse,
                              const int64_t *target, const float *w, int64_t ignore, float eps,
                              int64_t N, int64_t K)
{
    double wsum = 0;
    for (int64_t c = 0; c < K; c++)
        wsum += w ? w[c] : 1.0;
#pragma omp parallel for if (N * K > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        int64_t t = target[i];
        const float *xi = x + i * K;
        float *di = dx + i * K;
        if (t == ignore) {
            memset(di, 0, (size_t)K * sizeof(float));
            continue;
        }
        /* the backward's terms and order (0 + v is v) */
        float g = dloss, li = lse[i];
        float a = g * (1.0f - eps) * (w ? w[t] : 1.0f);
        float e = g * eps / (float)K, ew = e * (float)wsum;
        if (w) {
#pragma omp simd
            for (int64_t c = 0; c < K; c++)
                di[c] = (a + ew) * qkv_k_expf(xi[c] - li) - e * w[c];
        } else {
#pragma omp simd
            for (int64_t c = 0; c < K; c++)
                di[c] = (a + ew) * qkv_k_expf(xi[c] - li) - e;
        }
        di[t] -= a;
    }
}

/* ---- pointwise losses ---- */

static inline float loss_of(qkv_k_loss kind, float d, float beta)
{
    float ad = fabsf(d);
    switch (kind) {
    case QKV_K_MSE: return d * d;
    case QKV_K_L1: return ad;
    default: return ad < beta ? 0.5f * d * d / beta : ad - 0.5f * beta;
    }
}

static inline float slope_of(qkv_k_loss kind, float d, float beta)
{
    float sign = (float)((d > 0) - (d < 0));
    switch (kind) {
    case QKV_K_MSE: return 2.0f * d;
    case QKV_K_L1: return sign;
    default: return fabsf(d) < beta ? d / beta : sign;
    }
}

/* out (n) from pred (n), target (n) */
void qkv_k_pointwise_loss(float *out, qkv_k_loss kind, const float *pred, const float *target,
                          float beta, int64_t n)
{
#pragma omp parallel for simd if (n > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < n; i++)
        out[i] = loss_of(kind, pred[i] - target[i], beta);
}

/* One thread: an OpenMP reduction over more than two threads adds their
 * parts in whatever order they finish, and the loss must not change from
 * run to run. */
double qkv_k_pointwise_loss_sum(qkv_k_loss kind, const float *pred, const float *target,
                                float beta, int64_t n)
{
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++)
        s += loss_of(kind, pred[i] - target[i], beta);
    return s;
}

/* dpred (n) from dloss (n, strided), pred (n), target (n) */
void qkv_k_pointwise_loss_backward(float *dpred, qkv_k_loss kind, const float *dloss,
                                   int64_t stride, const float *pred, const float *target,
                                   float beta, int64_t n)
{
#pragma omp parallel for simd if (n > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < n; i++)
        dpred[i] += dloss[i * stride] * slope_of(kind, pred[i] - target[i], beta);
}
