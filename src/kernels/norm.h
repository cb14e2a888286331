/*
 * norm.h - layer norm over rows and batch norm over channels, forward and
 * backward.
 *
 * Shapes: N rows and C the normalised axis (layer norm); B batch, C
 * channels and S every axis after the channels merged (batch norm: x is
 * (B, C, S), S = H * W for images, 1 for (B, C)). Weight and bias are (C);
 * layer norm needs them (ones and zeros for none), batch norm takes NULL.
 * Backward kernels accumulate (+=) into every gradient that is not NULL,
 * except where an `accumulate` flag says the buffer is fresh.
 */
#ifndef QKV_KERNELS_NORM_H
#define QKV_KERNELS_NORM_H

#include <stdbool.h>
#include <stdint.h>

/* y (N, C) = (x - mean) * rstd * w + b per row, mean and rstd (N) saved,
 * rstd = 1 / sqrt(var + eps) with the biased variance. w, b (C). */
void qkv_k_layer_norm_forward(float *y, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int64_t N, int64_t C, float eps);
/* The backward of the above from dy (N, C), x, mean, rstd and w:
 * dx (N, C), dw (C), db (C); dx is written, not added to, when accumulate
 * is false (a fresh buffer). The rows are cut into `nblocks` runs that run
 * in parallel, each summing its dw, db into its own part of scratch
 * (QKV_K_LAYER_NORM_SCRATCH doubles); the parts are then added in order,
 * so the result depends on nblocks but not on thread timing. */
#define QKV_K_LAYER_NORM_SCRATCH(nblocks, C)                                                 \
    ((int64_t)(nblocks) * (2 * QKV_K_LN_DOUBLES(C) + QKV_K_LN_FLOATS(C)))
/* A block's four sums (dw and db in double, their running parts in float)
 * start 1 KiB apart modulo 4 KiB: arrays that share their low 12 address
 * bits make the CPU stall on false store-to-load conflicts. */
#define QKV_K_LN_DOUBLES(C) (((int64_t)(C) + 511) / 512 * 512 + 128)
#define QKV_K_LN_FLOATS(C) (((int64_t)(C) + 1023) / 1024 * 1024 + 256)
void qkv_k_layer_norm_backward(float *dx, float *dw, float *db, double *scratch, int nblocks,
                               const float *dy, const float *x, const float *mean,
                               const float *rstd, const float *w, int64_t N, int64_t C,
                               bool accumulate);

/* Moments of x (B, C, S) cut into G groups of B/G rows (B divisible by
 * G): mean (G, C) and m2 (G, C) = sum (x - mean)^2 over each group's rows
 * and S, two passes, summed in double. */
void qkv_k_batch_norm_moments(double *mean, double *m2, const float *x, int64_t B, int64_t C,
                              int64_t S, int64_t G);
/* The moments of a set of na values per channel (mean_a, m2_a (C)) and of
 * nb more (mean_b, m2_b (C)) become those of all na + nb, written over
 * mean_a and m2_a (Chan, Golub and LeVeque's pairwise update):
 *   d = mean_b - mean_a, mean_a += d nb / n, m2_a += m2_b + d^2 na nb / n */
void qkv_k_moments_merge(double *mean_a, double *m2_a, int64_t na, const double *mean_b,
                         const double *m2_b, int64_t nb, int64_t C);
/* PyTorch's running update from the moments of a batch of n > 1 values per
 * channel, in double, rounded once:
 *   rm (C) = (1 - momentum) rm + momentum mean
 *   rv (C) = (1 - momentum) rv + momentum m2 / (n - 1)   (unbiased)
 * rm or rv may be NULL. */
void qkv_k_batch_norm_update(float *rm, float *rv, const double *mean, const double *m2,
                             int64_t n, int64_t C, double momentum);
/* y (B, C, S) = x * scale[c] + shift[c]. */
void qkv_k_channel_affine(float *y, const float *x, const float *scale, const float *shift,
                          int64_t B, int64_t C, int64_t S);
/* The backward of y = (x - mean) * rstd * w + b, x (B, C, S), from dy:
 * dw (C) += sum dy * xhat, db (C) += sum dy, and dx (B, C, S) +=
 *   w rstd (dy - mean(dy) - xhat mean(dy xhat))  if batch_stats (mean and
 *                                                rstd came from x itself),
 *   w rstd dy                                    otherwise (running stats).
 * xhat = (x - mean) * rstd; means are over B and S. */
void qkv_k_batch_norm_backward(float *dx, float *dw, float *db, const float *dy,
                               const float *x, const float *mean, const float *rstd,
                               const float *w, int64_t B, int64_t C, int64_t S,
                               bool batch_stats);
/* The same backward in two halves, for statistics over several processes
 * (synchronised batch norm), whose sums are added between them:
 *   sg (C) = sum dy, sgx (C) = sum dy * xhat over B and S (written);
 *   dx (B, C, S) += w rstd (dy - gm - xhat gxm), gm and gxm (C) the means
 *   of dy and dy xhat over every process's rows. */
void qkv_k_batch_norm_grad_sums(double *sg, double *sgx, const float *dy, const float *x,
                                const float *mean, const float *rstd, int64_t B, int64_t C,
                                int64_t S);
void qkv_k_batch_norm_backward_dx(float *dx, const float *dy, const float *x, const float *mean,
                                  const float *rstd, const float *w, const double *gm,
                                  const double *gxm, int64_t B, int64_t C, int64_t S);

#endif
