/* softmax.c - softmax and log-softmax over rows, forward and backward.
 *
 * Each row is read once from memory: at C floats it stays in L1 between the
 * passes over it (max, then exp and sum, then scale). Rows are independent
 * and run in parallel. Sums accumulate in double; `omp simd` lets the
 * compiler split max and sum reductions across vector lanes. */
#include "softmax.h"

/* Rows below this many elements in total stay on one thread. */
#define PAR_WORK 32768

static float row_max(const float *x, int64_t C)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < C; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

/* y (C) = exp(x (C) - m). Kept apart from the sum: gcc does not
 * vectorise a loop that both calls the inlined exp and sums in double. */
static void exp_shifted(float *restrict y, const float *restrict x, float m, int64_t C)
{
#pragma omp simd
    for (int64_t j = 0; j < C; j++)
        y[j] = qkv_k_expf(x[j] - m);
}

static double row_sum(const float *x, int64_t C)
{
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < C; j++)
        s += x[j];
    return s;
}

/* y (N, C) = softmax(x (N, C)) */
void qkv_k_softmax_forward(float *y, const float *x, int64_t N, int64_t C)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C;
        float *yi = y + i * C;
        /* a row of -inf has max -inf and gives NaN, as PyTorch */
        float m = row_max(xi, C);
        exp_shifted(yi, xi, m, C);
        float inv = (float)(1.0 / row_sum(yi, C));
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            yi[j] *= inv;
    }
}

/* y = softmax(x): dx (N, C) (+)= y * (dy - sum_j dy_j y_j),
 * y (N, C), dy (N, C) */
void qkv_k_softmax_backward(float *dx, const float *y, const float *dy, int64_t N, int64_t C,
                            bool accumulate)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *yi = y + i * C, *gi = dy + i * C;
        float *di = dx + i * C;
        double dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < C; j++)
            dot += gi[j] * yi[j];
        float d = (float)dot;
        if (accumulate) {
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                di[j] += yi[j] * (gi[j] - d);
        } else {
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                di[j] = yi[j] * (gi[j] - d);
        }
    }
}

/* y (N, C) = log_softmax(x (N, C)) = x - max - log(sum exp(x - max)) */
void qkv_k_log_softmax_forward(float *y, const float *x, int64_t N, int64_t C)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C;
        float *yi = y + i * C;
        float m = row_max(xi, C);
        exp_shifted(yi, xi, m, C); /* y holds exp(x - m) until the last pass */
        float shift = m + (float)log(row_sum(yi, C));
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            yi[j] = xi[j] - shift;
    }
}

/* y = log_softmax(x): dx (N, C) (+)= dy - exp(y) * sum_j dy_j,
 * y (N, C), dy (N, C) */
void qkv_k_log_softmax_backward(float *dx, const float *y, const float *dy, int64_t N,
                                int64_t C, bool accumulate)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *yi = y + i * C, *gi = dy + i * C;
        float *di = dx + i * C;
        float sf = (float)row_sum(gi, C);
        if (accumulate) {
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                di[j] += gi[j] - qkv_k_expf(yi[j]) * sf;
        } else {
#pragma omp simd
            for (int64_t j = 0; j < C; j++)
                di[j] = gi[j] - qkv_k_expf(yi[j]) * sf;
        }
    }
}

/* ---- reference kernels for the tests: one element at a time, libm exp ---- */

void qkv_k_softmax_forward_ref(float *y, const float *x, int64_t N, int64_t C)
{
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C;
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < C; j++)
            m = xi[j] > m ? xi[j] : m;
        for (int64_t j = 0; j < C; j++)
            s += exp((double)xi[j] - m);
        for (int64_t j = 0; j < C; j++)
            y[i * C + j] = (float)(exp((double)xi[j] - m) / s);
    }
}

void qkv_k_log_softmax_forward_ref(float *y, const float *x, int64_t N, int64_t C)
{
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C;
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < C; j++)
            m = xi[j] > m ? xi[j] : m;
        for (int64_t j = 0; j < C; j++)
            s += exp((double)xi[j] - m);
        for (int64_t j = 0; j < C; j++)
            y[i * C + j] = (float)((double)xi[j] - m - log(s));
    }
}
