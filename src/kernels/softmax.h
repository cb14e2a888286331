/*
 * softmax.h - softmax and log-softmax over the last axis, and the exp they
 * share with other row kernels.
 *
 * Shapes: N rows (every leading axis merged), C the softmax axis.
 * Backward kernels accumulate (+=) into dx, or write it (=) when
 * `accumulate` is false: a fresh gradient then needs no zeroing pass.
 */
#ifndef QKV_KERNELS_SOFTMAX_H
#define QKV_KERNELS_SOFTMAX_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* Largest float whose exp is finite; exp of anything below -104 rounds to 0. */
#define QKV_EXPF_MAX 0x1.62e42ep+6f
#define QKV_EXPF_MIN -104.0f

/* expf(x) within 2 ulp of libm over the whole float range (subnormal
 * results included, tested against expf), written without branches or
 * table lookups so that gcc vectorises a loop that calls it: libm's expf
 * would make every softmax loop scalar.
 *
 * exp(x) = 2^n exp(r) with n = round(x / ln2) and |r| <= ln2 / 2, where the
 * Taylor series to r^7 is exact to float precision (the next term is
 * < 1e-8 relative). 2^n is built from the exponent bits in two halves so
 * that results down to the smallest subnormal come out of one rounding. */
static inline float qkv_k_expf(float x)
{
    float xc = x < QKV_EXPF_MIN ? QKV_EXPF_MIN : x; /* NaN passes through */
    xc = xc > QKV_EXPF_MAX ? QKV_EXPF_MAX : xc;
    /* adding 1.5 * 2^23 rounds x / ln2 to an integer held in the low bits */
    const float shift = 0x1.8p23f;
    float t = fmaf(xc, 0x1.715476p+0f, shift);
    float n = t - shift;
    float r = fmaf(n, -0x1.63p-1f, xc);  /* ln2 split in a short high part */
    r = fmaf(n, 0x1.bd0106p-13f, r);     /* and the rest (Cody-Waite)      */
    float p = 1.0f / 5040;
    p = fmaf(p, r, 1.0f / 720);
    p = fmaf(p, r, 1.0f / 120);
    p = fmaf(p, r, 1.0f / 24);
    p = fmaf(p, r, 1.0f / 6);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t tb, shb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&shb, &shift, sizeof shb);
    int32_t ni = tb - shb, n1 = ni / 2, n2 = ni - n1; /* n in [-150, 128] */
    uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    float y = p * s1 * s2;
    return x > QKV_EXPF_MAX ? INFINITY : y;
}

/* y (N, C) = softmax(x (N, C)) along C. */
void qkv_k_softmax_forward(float *y, const float *x, int64_t N, int64_t C);
/* dx (N, C) (+)= y * (dy - sum_C(dy * y)): the backward of y = softmax(x),
 * from y (N, C) and dy (N, C). */
void qkv_k_softmax_backward(float *dx, const float *y, const float *dy, int64_t N, int64_t C,
                            bool accumulate);

/* y (N, C) = x - max - log(sum exp(x - max)) along C. */
void qkv_k_log_softmax_forward(float *y, const float *x, int64_t N, int64_t C);
/* dx (N, C) (+)= dy - exp(y) * sum_C(dy): the backward of y = log_softmax(x). */
void qkv_k_log_softmax_backward(float *dx, const float *y, const float *dy, int64_t N,
                                int64_t C, bool accumulate);

/* Plain scalar versions (libm expf, double throughout) that the tests hold
 * the fast kernels to. */
void qkv_k_softmax_forward_ref(float *y, const float *x, int64_t N, int64_t C);
void qkv_k_log_softmax_forward_ref(float *y, const float *x, int64_t N, int64_t C);

#endif
