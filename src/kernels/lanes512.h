/*
 * lanes512.h - loads and stores of 16 float lanes for the AVX-512 row
 * kernels (softmax.c, norm.c, attention.c): all 16, or the first lanes of a
 * mask; and the exp of softmax.h on 16 lanes.
 *
 * A row loop runs full vectors with k = QKV_ALL, which these inline
 * helpers turn into plain loads and stores (masked stores are slow on some
 * CPUs), then one masked step for the tail of C % 16 lanes.
 */
#ifndef QKV_KERNELS_LANES512_H
#define QKV_KERNELS_LANES512_H

#include <immintrin.h>
#include <stdint.h>

#include "softmax.h"

#define QKV_ALL ((__mmask16)0xffff)

/* The first n (< 16) lanes. */
static inline __mmask16 qkv_lanes(int64_t n) { return (__mmask16)((1u << n) - 1u); }

/* p[0..15] where k is set, 0 elsewhere */
static inline __m512 qkv_load16(const float *p, __mmask16 k)
{
    return k == QKV_ALL ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(k, p);
}

/* p[0..15] = v where k is set */
static inline void qkv_store16(float *p, __mmask16 k, __m512 v)
{
    if (k == QKV_ALL)
        _mm512_storeu_ps(p, v);
    else
        _mm512_mask_storeu_ps(p, k, v);
}

/* qkv_k_expf on 16 lanes for x <= 0 or NaN (softmax's x - max): the same
 * clamp, reduction and polynomial, with scalef doing the 2^n scaling in
 * one rounding (as the split scaling does). Nothing overflows, so the
 * upper clamp and the test for it, a fifth of the work, are left out. */
static inline __m512 exp16_nonpositive(__m512 x)
{
    /* max returns its second operand for NaN: NaN passes through */
    __m512 xc = _mm512_max_ps(_mm512_set1_ps(QKV_EXPF_MIN), x);
    const __m512 shift = _mm512_set1_ps(0x1.8p23f);
    __m512 t = _mm512_fmadd_ps(xc, _mm512_set1_ps(0x1.715476p+0f), shift);
    __m512 n = _mm512_sub_ps(t, shift);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0x1.63p-1f), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(0x1.bd0106p-13f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

#endif
