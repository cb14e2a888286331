/* ops_dropout.c - inverted dropout: y = x * mask, mask = 1 / (1 - p) with
 * probability 1 - p and 0 otherwise, seeded from the context RNG. The mask
 * is saved as floats so that forward and backward are one multiply each. */
#include "../kernels/attention.h"
#include "../qkv_internal.h"

#include <math.h>

/* Below this many elements the multiply stays on one thread. */
#define PAR_WORK 32768

/* y = x * mask: dx += dy * mask; saved[0] is the mask (numel of x) */
static void dropout_backward(qkv_ctx *ctx, qkv_node *n)
{
    bool acc;
    float *gx = qkv__grad_for_write(ctx, n->in[0], &acc);
    if (!gx)
        return;
    const float *mask = n->saved[0], *gy = n->out->grad;
    int64_t m = qkv_numel(n->out);
    if (acc) {
#pragma omp parallel for simd if (m > PAR_WORK) schedule(static)
        for (int64_t i = 0; i < m; i++)
            gx[i] += gy[i] * mask[i];
    } else {
#pragma omp parallel for simd if (m > PAR_WORK) schedule(static)
        for (int64_t i = 0; i < m; i++)
            gx[i] = gy[i] * mask[i];
    }
}

/* mask (m) of 0 and 1 / (1 - p), 0 < p < 1: element i is kept when the high
 * 32 bits of hash(seed, i) are >= p 2^32, with one 64-bit draw of the
 * context RNG as the seed (the counter-based hash of attention's dropout):
 * the mask depends only on the seed and vectorises, where a sequential
 * generator would cost a dependent chain of updates per element. */
static void draw_mask(float *mask, int64_t m, float p, qkv_rng *rng)
{
    uint64_t threshold = qkv_k_attn_threshold(p), seed = qkv_rng_u64(rng);
    float keep = 1.0f / (1.0f - p);
#pragma omp simd
    for (int64_t i = 0; i < m; i++)
        mask[i] = (qkv_k_attn_hash(seed, (uint64_t)i) >> 32) >= threshold ? keep : 0.0f;
}

qkv_tensor *qkv_dropout(qkv_ctx *ctx, qkv_tensor *x, float p)
{
    QKV_INPUTS("dropout", x);
    if (!(p >= 0.0f && p <= 1.0f)) {
        qkv_set_error(QKV_ERR_ARG, "dropout: probability %g is outside [0, 1]", (double)p);
        return NULL;
    }
    if (!ctx->training || p == 0.0f)
        return x;
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    int64_t m = qkv_numel(x);
    qkv_tensor *y = qkv__tensor(ctx, x->ndim, x->shape);
    float *mask = qkv__floats(ctx, m);
    if (!y || !mask)
        return NULL;
    if (p == 1.0f) /* everything dropped; 1 / (1 - p) would make 0 * inf */
        memset(mask, 0, (size_t)m * sizeof(float));
    else
        draw_mask(mask, m, p, &ctx->rng);
    const float *xd = x->data;
    float *yd = y->data;
#pragma omp parallel for simd if (m > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < m; i++)
        yd[i] = xd[i] * mask[i];
    qkv_node *n = qkv__record(ctx, QKV_OP_DROPOUT, dropout_backward, y, 1, &x);
    if (n)
        n->saved[0] = mask;
    return qkv__done(ctx, QKV_OP_DROPOUT, y);
}
