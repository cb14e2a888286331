/*
 * pool.h - 2-D max, average and adaptive average pooling, forward and
 * backward, over N independent planes (N = B C of an NCHW tensor).
 *
 * Legend (outermost first): N planes, (H, W) input, (Ho, Wo) output,
 * (kh, kw) window, (sh, sw) stride, (ph, pw) padding. Window (oh, ow) covers
 * rows oh sh - ph .. + kh and columns ow sw - pw .. + kw, as PyTorch's.
 */
#ifndef QKV_KERNELS_POOL_H
#define QKV_KERNELS_POOL_H

#include <stdint.h>

typedef struct {
    int64_t H, W, Ho, Wo;
    int kh, kw, sh, sw, ph, pw;
} qkv_pool_geom;

/* out (N, Ho, Wo) = max of x (N, H, W) over each window, padding counting as
 * -inf; arg (N, Ho, Wo) = the flat index ih W + iw of the first maximum (a
 * NaN wins, as in PyTorch). */
void qkv_k_max_pool2d(float *out, int64_t *arg, const float *x, int64_t N,
                      const qkv_pool_geom *g);
/* dx (N, H, W) += dout (N, Ho, Wo) at arg. */
void qkv_k_max_pool2d_backward(float *dx, const float *dout, const int64_t *arg, int64_t N,
                               const qkv_pool_geom *g);

/* out (N, Ho, Wo) = sum of x (N, H, W) over each window / (kh kw): padding
 * counts in the divisor (count_include_pad=True). */
void qkv_k_avg_pool2d(float *out, const float *x, int64_t N, const qkv_pool_geom *g);
/* dx (N, H, W) += dout (N, Ho, Wo) / divisor over each window. */
void qkv_k_avg_pool2d_backward(float *dx, const float *dout, int64_t N,
                               const qkv_pool_geom *g);

/* out (N, Ho, Wo) = mean of x (N, H, W) over bin (i, j): rows
 * floor(i H / Ho) .. ceil((i + 1) H / Ho), columns likewise. */
void qkv_k_adaptive_avg_pool2d(float *out, const float *x, int64_t N, int64_t H, int64_t W,
                               int64_t Ho, int64_t Wo);
/* dx (N, H, W) += dout (N, Ho, Wo) / bin size over each bin. */
void qkv_k_adaptive_avg_pool2d_backward(float *dx, const float *dout, int64_t N, int64_t H,
                                        int64_t W, int64_t Ho, int64_t Wo);

#endif
