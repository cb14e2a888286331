/*
 * loss.h - cross entropy over class logits and the pointwise regression
 * losses (MSE, L1, smooth L1), forward and backward.
 *
 * Shapes: N samples, K classes; n elements for the pointwise losses.
 * Backward kernels accumulate (+=) into the gradient. The upstream gradient
 * is read as dloss[i * stride]: stride 1 for unreduced losses, 0 for a
 * reduced one (one value, already divided by the mean's denominator).
 */
#ifndef QKV_KERNELS_LOSS_H
#define QKV_KERNELS_LOSS_H

#include <stdint.h>

/* Per sample i with target t = target[i] != ignore, eps the label smoothing:
 *   loss[i] = (1 - eps) w[t] (lse_i - x[i,t]) + eps / K sum_c w[c] (lse_i - x[i,c])
 * and 0 where t == ignore; lse (N) = logsumexp of each row, saved.
 * x (N, K), target (N) in [0, K) (checked by the caller), w (K) or NULL. */
void qkv_k_cross_entropy_forward(float *loss, float *lse, const float *x, const int64_t *target,
                                 const float *w, int64_t ignore, float eps, int64_t N,
                                 int64_t K);
/* dx (N, K) += dloss_i ((1 - eps) w[t] (p - onehot(t)) + eps / K (sum(w) p - w)),
 * p = exp(x - lse) the softmax of row i; ignored rows get nothing. */
void qkv_k_cross_entropy_backward(float *dx, const float *dloss, int64_t stride, const float *x,
                                  const float *lse, const int64_t *target, const float *w,
                                  int64_t ignore, float eps, int64_t N, int64_t K);
/* The same gradient written, not accumulated, for one upstream value
 * dloss (ignored rows get zeros): dx may be x itself (each element is read
 * before it is written), so that a block of logits becomes its gradient in
 * place. With dloss g it equals the backward above into zeros, bit for bit. */
void qkv_k_cross_entropy_grad(float *dx, float dloss, const float *x, const float *lse,
                              const int64_t *target, const float *w, int64_t ignore, float eps,
                              int64_t N, int64_t K);

typedef enum { QKV_K_MSE, QKV_K_L1, QKV_K_SMOOTH_L1 } qkv_k_loss;

/* out (n) = f(pred - target) elementwise: d^2, |d|, or for smooth L1
 * 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (beta > 0). */
void qkv_k_pointwise_loss(float *out, qkv_k_loss kind, const float *pred, const float *target,
                          float beta, int64_t n);
/* sum_i f(pred_i - target_i) in double, for the mean and sum reductions. */
double qkv_k_pointwise_loss_sum(qkv_k_loss kind, const float *pred, const float *target,
                                float beta, int64_t n);
/* dpred (n) += dloss[i * stride] f'(pred - target): 2 d, sign(d) (0 at 0, as
 * PyTorch), d / beta where |d| < beta else sign(d). */
void qkv_k_pointwise_loss_backward(float *dpred, qkv_k_loss kind, const float *dloss,
                                   int64_t stride, const float *pred, const float *target,
                                   float beta, int64_t n);

#endif
