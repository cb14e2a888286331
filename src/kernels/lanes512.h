/*
 * lanes512.h - loads and stores of 16 float lanes for the AVX-512 row
 * kernels (softmax.c, norm.c): all 16, or the first lanes of a mask.
 *
 * A row loop runs full vectors with k = QKV_ALL, which these inline
 * helpers turn into plain loads and stores (masked stores are slow on some
 * CPUs), then one masked step for the tail of C % 16 lanes.
 */
#ifndef QKV_KERNELS_LANES512_H
#define QKV_KERNELS_LANES512_H

#include <immintrin.h>
#include <stdint.h>

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

#endif
