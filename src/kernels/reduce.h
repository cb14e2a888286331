/*
 * reduce.h - sums, means and maxima over axes of a strided array.
 *
 * x is read through its strides (in elements), so transposed views need no
 * copy. `reduce[d]` marks the axes summed over. The output holds the kept
 * axes in order, contiguous (row-major); keepdim is only a matter of shape
 * and is the caller's. Sums accumulate in double.
 */
#ifndef QKV_KERNELS_REDUCE_H
#define QKV_KERNELS_REDUCE_H

#include <stdbool.h>
#include <stdint.h>

/* out (kept axes of shape) = sum of x (shape, x_stride) over the reduced
 * axes, divided by `divisor` (1 for a sum, the count for a mean). */
void qkv_k_sum(float *out, const float *x, const int64_t *x_stride, int ndim,
               const int64_t *shape, const bool *reduce, double divisor);
/* out = x summed: dx (shape, contiguous) (+)= g / divisor, g read through
 * g_stride (0 on the reduced axes, the output's strides elsewhere). */
void qkv_k_sum_backward(float *dx, const float *g, const int64_t *g_stride, int ndim,
                        const int64_t *shape, double divisor, bool accumulate);

/* out (shape without `axis`), arg (same) = max of x (shape, x_stride) over
 * axis and the position of its first maximum along it; NaN counts as the
 * largest (as torch.max). shape[axis] must be at least 1. */
void qkv_k_max(float *out, int64_t *arg, const float *x, const int64_t *x_stride, int ndim,
               const int64_t *shape, int axis);
/* out = max over axis: dx (shape, contiguous) += g (shape without axis) at
 * the positions arg (shape without axis). */
void qkv_k_max_backward(float *dx, const float *g, const int64_t *arg, int ndim,
                        const int64_t *shape, int axis);

#endif
