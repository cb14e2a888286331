/*
 * l2norm.h - L2 normalisation along one axis (torch.nn.functional.normalize
 * with p = 2), forward and backward.
 *
 * Shapes: x seen as (R, C, S): R every axis before the normalised one
 * merged, C the normalised axis, S every axis after it merged (1 when the
 * last axis is normalised). Each of the R S vectors of C elements is
 * divided by max(||v||, eps).
 */
#ifndef QKV_KERNELS_L2NORM_H
#define QKV_KERNELS_L2NORM_H

#include <stdint.h>

/* y (R, C, S) = x / max(||x||, eps); norm (R, S) receives that divisor of
 * each vector (its squares summed in double) and clamped (R, S) whether it
 * is eps (||x|| <= eps). */
void qkv_k_l2_normalize_forward(float *y, float *norm, unsigned char *clamped, const float *x,
                                int64_t R, int64_t C, int64_t S, float eps);
/* The backward of y = x / max(||x||, eps) from dy (R, C, S), y and the
 * divisor norm (R, S): dx (R, C, S) += (dy - y (y . dy)) / norm where
 * ||x|| > eps, dy / eps where the norm was clamped (then the divisor is a
 * constant), as the forward's clamped (R, S) says. */
void qkv_k_l2_normalize_backward(float *dx, const float *dy, const float *y, const float *norm,
                                 const unsigned char *clamped, int64_t R, int64_t C, int64_t S);

#endif
