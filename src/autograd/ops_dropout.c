/* ops_dropout.c - inverted dropout: y = x * mask, mask = 1 / (1 - p) with
 * probability 1 - p and 0 otherwise, seeded from the context RNG. */
#include "../kernels/attention.h"
#include "../qkv_internal.h"

#include <math.h>
#include <omp.h>

/* Below this many elements the multiply stays on one thread. */
#define PAR_WORK 8192

/* Element i is kept, as 1 / (1 - p), when the high 32 bits of hash(seed, i)
 * are >= p 2^32 (the counter-based hash of attention's dropout), with one
 * 64-bit draw of the context RNG as the seed. The mask is a function of
 * (seed, i): the forward and the backward each compute it in the same
 * vector loop as their multiply, and nothing is stored but the seed. */
typedef qkv__dropout_mask dropout_mask;

static inline float mask_at(uint64_t seed, uint64_t threshold, float keep, int64_t i)
{
    return (qkv_k_attn_hash(seed, (uint64_t)i) >> 32) >= threshold ? keep : 0.0f;
}

/* elements lo .. hi of y = x * mask, or y += x * mask if accumulate */
static void mask_range(float *restrict y, const float *restrict x, int64_t lo, int64_t hi,
                       uint64_t seed, uint64_t thr, float keep, bool accumulate)
{
    if (accumulate) {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            y[i] += x[i] * mask_at(seed, thr, keep, i);
    } else {
#pragma omp simd
        for (int64_t i = lo; i < hi; i++)
            y[i] = x[i] * mask_at(seed, thr, keep, i);
    }
}

void qkv__dropout_apply(float *y, const float *x, int64_t m, const dropout_mask *d,
                        bool accumulate)
{
    if (m <= PAR_WORK || qkv_threads() == 1) { /* no OpenMP region */
        mask_range(y, x, 0, m, d->seed, d->threshold, d->keep, accumulate);
        return;
    }
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        mask_range(y, x, m * t / nt, m * (t + 1) / nt, d->seed, d->threshold, d->keep,
                   accumulate);
    }
}

/* y = y * mask over elements lo .. hi (in place: y is also the input) */
static void mask_range_inplace(float *y, int64_t lo, int64_t hi, uint64_t seed, uint64_t thr,
                               float keep)
{
#pragma omp simd
    for (int64_t i = lo; i < hi; i++)
        y[i] *= mask_at(seed, thr, keep, i);
}

void qkv__dropout_apply_inplace(float *y, int64_t m, const dropout_mask *d)
{
    if (m <= PAR_WORK || qkv_threads() == 1) {
        mask_range_inplace(y, 0, m, d->seed, d->threshold, d->keep);
        return;
    }
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        mask_range_inplace(y, m * t / nt, m * (t + 1) / nt, d->seed, d->threshold, d->keep);
    }
}

/* y = x * mask: dx (+)= dy * mask; saved[0] is the mask's dropout_mask */
static void dropout_backward(qkv_ctx *ctx, qkv_node *n)
{
    bool acc;
    float *gx = qkv__grad_for_write(ctx, n->in[0], &acc);
    if (gx)
        qkv__dropout_apply(gx, n->out->grad, qkv_numel(n->out), n->saved[0], acc);
}

/* Whether x's values may be overwritten: an op's own contiguous output
 * that no recorded op has read yet, made by an op whose backward reads
 * only its inputs (linear, GELU, add, gelu_linear), not its output. */
static bool overwritable(const qkv_ctx *ctx, const qkv_tensor *x)
{
    const qkv_node *made = x->node;
    if (!made || made->out != x || !qkv_is_contiguous(x) ||
        (made->op != QKV_OP_LINEAR && made->op != QKV_OP_GELU && made->op != QKV_OP_ADD &&
         made->op != QKV_OP_GELU_LINEAR))
        return false;
    for (const qkv_node *n = ctx->tape; n && n != made; n = n->prev)
        for (int i = 0; i < n->n_in; i++)
            if (n->in[i] == x)
                return false;
    return true;
}

dropout_mask qkv__dropout_draw(qkv_ctx *ctx, float p)
{
    /* p == 1 drops everything: keep 0, as 1 / (1 - p) would make 0 * inf */
    return (dropout_mask){.seed = qkv_rng_u64(&ctx->rng), .threshold = qkv_k_attn_threshold(p),
                          .keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f};
}

static qkv_tensor *dropout(qkv_ctx *ctx, qkv_tensor *x, float p, bool inplace)
{
    QKV_INPUTS("dropout", x);
    if (!(p >= 0.0f && p <= 1.0f)) {
        qkv_set_error(QKV_ERR_ARG, "dropout: probability %g is outside [0, 1]", (double)p);
        return NULL;
    }
    if (!ctx->training || p == 0.0f)
        return x;
    inplace = inplace && overwritable(ctx, x);
    x = inplace ? x : qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    /* in place: a new tensor over x's memory, so that the tape keeps x
     * (the input) and y (the output) apart */
    qkv_tensor *y = inplace ? qkv_wrap(ctx, x->ndim, x->shape, x->data)
                            : qkv__tensor(ctx, x->ndim, x->shape);
    dropout_mask *d = qkv__alloc(ctx, sizeof *d);
    if (!y || !d)
        return NULL;
    *d = qkv__dropout_draw(ctx, p);
    if (inplace)
        qkv__dropout_apply_inplace(y->data, qkv_numel(x), d);
    else
        qkv__dropout_apply(y->data, x->data, qkv_numel(x), d, false);
    qkv_node *n = qkv__record(ctx, QKV_OP_DROPOUT, dropout_backward, y, 1, &x);
    if (n)
        n->saved[0] = d;
    return qkv__done(ctx, QKV_OP_DROPOUT, y);
}

qkv_tensor *qkv_dropout(qkv_ctx *ctx, qkv_tensor *x, float p)
{
    return dropout(ctx, x, p, false);
}

qkv_tensor *qkv_dropout_inplace(qkv_ctx *ctx, qkv_tensor *x, float p)
{
    return dropout(ctx, x, p, true);
}
