/* softmax.c - softmax and log-softmax over rows, forward and backward.
 *
 * Each row is read from memory once: at C floats it stays in L1 between the
 * passes over it (max, then exp and sum, then scale). Rows are independent
 * and run in parallel, one static share of rows per thread.
 *
 * The passes over a row are row primitives below, written twice: with
 * AVX-512 intrinsics (16 lanes, masked tails, the exp evaluated 16 at a time
 * with the same steps as qkv_k_expf, so the same results), and as plain
 * loops (sums in double) for other machines. The vector sums run in
 * float over 4 x 16 lanes, each summing C / 64 values before the lanes are
 * added as a tree: a few roundings per value, well inside the tests'
 * bounds, where converting every term to double would cost as much as the
 * sum itself. */
#include "softmax.h"

/* Rows below this many elements in total stay on one thread. */
#define PAR_WORK 32768

#ifdef __AVX512F__
#include "lanes512.h"

/* qkv_k_expf on 16 lanes, any x */
static inline __m512 exp16(__m512 x)
{
    /* min returns its second operand for NaN: NaN passes through */
    __m512 y = exp16_nonpositive(_mm512_min_ps(_mm512_set1_ps(QKV_EXPF_MAX), x));
    __mmask16 over = _mm512_cmp_ps_mask(x, _mm512_set1_ps(QKV_EXPF_MAX), _CMP_GT_OQ);
    return _mm512_mask_mov_ps(y, over, _mm512_set1_ps(INFINITY));
}

/* The 4 partial sums added as a tree. */
static inline double sum4(__m512 s0, __m512 s1, __m512 s2, __m512 s3)
{
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static float row_max(const float *x, int64_t C)
{
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    int64_t j = 0;
    /* x second: a NaN in x is skipped, as the scalar `x > m ? x : m` */
    for (; j + 32 <= C; j += 32) {
        m0 = _mm512_max_ps(qkv_load16(x + j, QKV_ALL), m0);
        m1 = _mm512_max_ps(qkv_load16(x + j + 16, QKV_ALL), m1);
    }
    for (; j < C; j += 16) {
        __mmask16 k = C - j >= 16 ? QKV_ALL : qkv_lanes(C - j);
        m0 = _mm512_max_ps(_mm512_mask_loadu_ps(m0, k, x + j), m0);
    }
    return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

/* sum_j exp(x_j - m), and y (C) = exp(x - m) unless y is NULL; m is the
 * row's max (x - m <= 0) */
static double exp_sum(float *y, const float *x, float m, int64_t C)
{
    __m512 vm = _mm512_set1_ps(m), z = _mm512_setzero_ps();
    __m512 s[4] = {z, z, z, z};
    int64_t j = 0;
    for (; j + 64 <= C; j += 64)
        for (int u = 0; u < 4; u++) {
            __m512 e = exp16_nonpositive(_mm512_sub_ps(qkv_load16(x + j + 16 * u, QKV_ALL), vm));
            if (y)
                qkv_store16(y + j + 16 * u, QKV_ALL, e);
            s[u] = _mm512_add_ps(s[u], e);
        }
    for (int u = 0; j < C; j += 16, u++) {
        __mmask16 k = C - j >= 16 ? QKV_ALL : qkv_lanes(C - j);
        __m512 e = exp16_nonpositive(_mm512_sub_ps(qkv_load16(x + j, k), vm));
        if (y)
            qkv_store16(y + j, k, e);
        s[u] = _mm512_mask_add_ps(s[u], k, s[u], e);
    }
    return sum4(s[0], s[1], s[2], s[3]);
}

/* sum_j a_j b_j, or sum_j a_j when b is NULL */
static double row_dot(const float *a, const float *b, int64_t C)
{
    __m512 z = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    __m512 s[4] = {z, z, z, z};
    int64_t j = 0;
    for (; j + 64 <= C; j += 64)
        for (int u = 0; u < 4; u++) {
            __m512 bv = b ? qkv_load16(b + j + 16 * u, QKV_ALL) : one;
            s[u] = _mm512_fmadd_ps(qkv_load16(a + j + 16 * u, QKV_ALL), bv, s[u]);
        }
    for (int u = 0; j < C; j += 16, u++) {
        __mmask16 k = C - j >= 16 ? QKV_ALL : qkv_lanes(C - j);
        __m512 bv = b ? qkv_load16(b + j, k) : one;
        s[u] = _mm512_fmadd_ps(qkv_load16(a + j, k), bv, s[u]);
    }
    return sum4(s[0], s[1], s[2], s[3]);
}

/* y (C) *= s */
static void row_scale(float *y, float s, int64_t C)
{
    __m512 vs = _mm512_set1_ps(s);
    int64_t j = 0;
    for (; j + 16 <= C; j += 16)
        qkv_store16(y + j, QKV_ALL, _mm512_mul_ps(qkv_load16(y + j, QKV_ALL), vs));
    __mmask16 k = qkv_lanes(C - j);
    if (j < C)
        qkv_store16(y + j, k, _mm512_mul_ps(qkv_load16(y + j, k), vs));
}

/* y (C) = x - shift */
static void row_shift(float *y, const float *x, float shift, int64_t C)
{
    __m512 vs = _mm512_set1_ps(shift);
    int64_t j = 0;
    for (; j + 16 <= C; j += 16)
        qkv_store16(y + j, QKV_ALL, _mm512_sub_ps(qkv_load16(x + j, QKV_ALL), vs));
    __mmask16 k = qkv_lanes(C - j);
    if (j < C)
        qkv_store16(y + j, k, _mm512_sub_ps(qkv_load16(x + j, k), vs));
}

/* 16 lanes of softmax_row_backward */
static inline void softmax16(float *dx, const float *y, const float *dy, __m512 d,
                             bool accumulate, __mmask16 k)
{
    __m512 v = _mm512_mul_ps(qkv_load16(y, k), _mm512_sub_ps(qkv_load16(dy, k), d));
    qkv_store16(dx, k, accumulate ? _mm512_add_ps(qkv_load16(dx, k), v) : v);
}

/* softmax backward of a row: dx (C) (+)= y * (dy - d) */
static void softmax_row_backward(float *dx, const float *y, const float *dy, float d, int64_t C,
                                 bool accumulate)
{
    __m512 vd = _mm512_set1_ps(d);
    int64_t j = 0;
    if (accumulate) {
        for (; j + 16 <= C; j += 16)
            softmax16(dx + j, y + j, dy + j, vd, true, QKV_ALL);
    } else {
        for (; j + 16 <= C; j += 16)
            softmax16(dx + j, y + j, dy + j, vd, false, QKV_ALL);
    }
    if (j < C)
        softmax16(dx + j, y + j, dy + j, vd, accumulate, qkv_lanes(C - j));
}

/* 16 lanes of log_softmax_row_backward */
static inline void log_softmax16(float *dx, const float *y, const float *dy, __m512 s,
                                 bool accumulate, __mmask16 k)
{
    __m512 v = _mm512_fnmadd_ps(exp16(qkv_load16(y, k)), s, qkv_load16(dy, k));
    qkv_store16(dx, k, accumulate ? _mm512_add_ps(qkv_load16(dx, k), v) : v);
}

/* log-softmax backward of a row: dx (C) (+)= dy - exp(y) * s */
static void log_softmax_row_backward(float *dx, const float *y, const float *dy, float s,
                                     int64_t C, bool accumulate)
{
    __m512 vs = _mm512_set1_ps(s);
    int64_t j = 0;
    if (accumulate) {
        for (; j + 16 <= C; j += 16)
            log_softmax16(dx + j, y + j, dy + j, vs, true, QKV_ALL);
    } else {
        for (; j + 16 <= C; j += 16)
            log_softmax16(dx + j, y + j, dy + j, vs, false, QKV_ALL);
    }
    if (j < C)
        log_softmax16(dx + j, y + j, dy + j, vs, accumulate, qkv_lanes(C - j));
}

#else /* portable row primitives; sums in double */

static float row_max(const float *x, int64_t C)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < C; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

static double row_dot(const float *a, const float *b, int64_t C)
{
    double s = 0;
    if (b) {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < C; j++)
            s += a[j] * b[j];
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < C; j++)
            s += a[j];
    }
    return s;
}

/* The exp and the sum in separate loops: gcc does not vectorise a loop
 * that both calls the inlined exp and sums in double. Without y the exps
 * go through a small buffer on the stack. */
static double exp_sum(float *y, const float *x, float m, int64_t C)
{
    float buf[256];
    double s = 0;
    for (int64_t j0 = 0; j0 < C; j0 += 256) {
        int64_t n = C - j0 < 256 ? C - j0 : 256;
        float *e = y ? y + j0 : buf;
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            e[j] = qkv_k_expf(x[j0 + j] - m);
        s += row_dot(e, NULL, n);
    }
    return s;
}

static void row_scale(float *y, float s, int64_t C)
{
#pragma omp simd
    for (int64_t j = 0; j < C; j++)
        y[j] *= s;
}

static void row_shift(float *y, const float *x, float shift, int64_t C)
{
#pragma omp simd
    for (int64_t j = 0; j < C; j++)
        y[j] = x[j] - shift;
}

static void softmax_row_backward(float *dx, const float *y, const float *dy, float d, int64_t C,
                                 bool accumulate)
{
    if (accumulate) {
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dx[j] += y[j] * (dy[j] - d);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dx[j] = y[j] * (dy[j] - d);
    }
}

static void log_softmax_row_backward(float *dx, const float *y, const float *dy, float s,
                                     int64_t C, bool accumulate)
{
    if (accumulate) {
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dx[j] += dy[j] - qkv_k_expf(y[j]) * s;
    } else {
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dx[j] = dy[j] - qkv_k_expf(y[j]) * s;
    }
}

#endif

/* y (N, C) = softmax(x (N, C)) */
void qkv_k_softmax_forward(float *y, const float *x, int64_t N, int64_t C)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        /* a row of -inf has max -inf and gives NaN, as PyTorch */
        float m = row_max(x + i * C, C);
        double s = exp_sum(y + i * C, x + i * C, m, C);
        row_scale(y + i * C, (float)(1.0 / s), C);
    }
}

/* y = softmax(x): dx (N, C) (+)= y * (dy - sum_j dy_j y_j),
 * y (N, C), dy (N, C) */
void qkv_k_softmax_backward(float *dx, const float *y, const float *dy, int64_t N, int64_t C,
                            bool accumulate)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        float d = (float)row_dot(dy + i * C, y + i * C, C);
        softmax_row_backward(dx + i * C, y + i * C, dy + i * C, d, C, accumulate);
    }
}

/* y (N, C) = log_softmax(x (N, C)) = x - max - log(sum exp(x - max)) */
void qkv_k_log_softmax_forward(float *y, const float *x, int64_t N, int64_t C)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        float m = row_max(x + i * C, C);
        float shift = m + (float)log(exp_sum(NULL, x + i * C, m, C));
        row_shift(y + i * C, x + i * C, shift, C);
    }
}

/* y = log_softmax(x): dx (N, C) (+)= dy - exp(y) * sum_j dy_j,
 * y (N, C), dy (N, C) */
void qkv_k_log_softmax_backward(float *dx, const float *y, const float *dy, int64_t N,
                                int64_t C, bool accumulate)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        float s = (float)row_dot(dy + i * C, NULL, C);
        log_softmax_row_backward(dx + i * C, y + i * C, dy + i * C, s, C, accumulate);
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
