/*
 * box.h - bounding boxes: the two coordinate forms, IoU and generalized
 * IoU (pairwise and row by row), forward and backward.
 *
 * Shapes: n, N, M boxes of 4 floats, contiguous. xyxy = (x0, y0, x1, y1)
 * corners; cxcywh = (cx, cy, w, h). Backward kernels accumulate (+=); a
 * NULL gradient buffer is skipped.
 *
 * Gradients follow PyTorch's rules at the kinks, so that parity holds
 * there too: max(x, y) and min(x, y) send half the gradient to each side
 * when x == y, and clamp(d, min = 0) passes it where d >= 0.
 */
#ifndef QKV_KERNELS_BOX_H
#define QKV_KERNELS_BOX_H

#include <stdbool.h>
#include <stdint.h>

/* y (n, 4) = (cx - w/2, cy - h/2, cx + w/2, cy + h/2), x (n, 4) cxcywh */
void qkv_k_box_cxcywh_to_xyxy(float *y, const float *x, int64_t n);
/* dx (n, 4) += J^T dy (n, 4) */
void qkv_k_box_cxcywh_to_xyxy_backward(float *dx, const float *dy, int64_t n);
/* y (n, 4) = ((x0 + x1)/2, (y0 + y1)/2, x1 - x0, y1 - y0), x (n, 4) xyxy */
void qkv_k_box_xyxy_to_cxcywh(float *y, const float *x, int64_t n);
void qkv_k_box_xyxy_to_cxcywh_backward(float *dx, const float *dy, int64_t n);

/* For boxes a, b (xyxy): I = clamp(min(a1,b1) - max(a0,b0), 0) x (same in y),
 * U = area(a) + area(b) - I, IoU = I / (U + eps); with `generalized`,
 * E = the area of the smallest box holding both,
 * GIoU = IoU - (E - U) / (E + eps). area(a) = (x1 - x0)(y1 - y0). */

/* out (N, M) = IoU or GIoU of a[i] (N, 4) with b[j] (M, 4), eps = 0
 * (torchvision's box_iou, DETR's generalized_box_iou). */
void qkv_k_box_iou_pairwise(float *out, const float *a, const float *b, int64_t N, int64_t M,
                            bool generalized);
/* da (N, 4) += sum_j g[i,j] d out[i,j] / d a[i]; db (M, 4) likewise;
 * g (N, M). */
void qkv_k_box_iou_pairwise_backward(float *da, float *db, const float *g, const float *a,
                                     const float *b, int64_t N, int64_t M, bool generalized);

/* out (n) = 1 - GIoU(a[i], b[i]) with eps; a, b (n, 4). */
void qkv_k_giou_loss(float *out, const float *a, const float *b, int64_t n, float eps);
/* sum_i (1 - GIoU(a[i], b[i])) in double. */
double qkv_k_giou_loss_sum(const float *a, const float *b, int64_t n, float eps);
/* da, db (n, 4) += g[i * stride] d(1 - GIoU) / d a[i], d b[i]. */
void qkv_k_giou_loss_backward(float *da, float *db, const float *g, int64_t stride,
                              const float *a, const float *b, int64_t n, float eps);

#endif
