/* clip.c - gradient clipping by global L2 norm, as
 * torch.nn.utils.clip_grad_norm_(params, max_norm). */
#include "params.h"

#include <math.h>

/* Sum of squares in double. The terms go to LANES running sums, added in a
 * fixed order at the end: a vector loop, and the same bits every run. */
#define LANES 16

static double block_squares(const float *g, int64_t n)
{
    double acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += (double)g[i + j] * g[i + j];
    for (; i < n; i++)
        acc[i % LANES] += (double)g[i] * g[i];
    double s = 0;
    for (int j = 0; j < LANES; j++)
        s += acc[j];
    return s;
}

/* Large entries in fixed blocks whose sums are added in order, so the norm
 * is the same bits for any thread count (an OpenMP reduction would add the
 * threads' sums in whatever order they finish). */
#define BLOCK 65536
#define MAX_BLOCKS 64

static double sum_squares(const float *g, int64_t n)
{
    int64_t nb = (n + BLOCK - 1) / BLOCK;
    if (nb > MAX_BLOCKS)
        nb = MAX_BLOCKS;
    if (nb <= 1)
        return block_squares(g, n);
    double part[MAX_BLOCKS];
    int64_t per = (n + nb - 1) / nb;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * per, hi = lo + per < n ? lo + per : n;
        part[b] = block_squares(g + lo, hi - lo);
    }
    double s = 0;
    for (int64_t b = 0; b < nb; b++)
        s += part[b];
    return s;
}

/* Buffers and frozen entries are left out: they are not updated, and their
 * gradients are not computed. A NaN or infinite norm is returned without
 * touching the gradients, so the caller can skip the step. */
float qkv_clip_grad_norm(qkv_params *ps, float max_norm)
{
    if (!ps || !ps->grads || !(max_norm >= 0)) {
        qkv_set_error(QKV_ERR_ARG, "clip_grad_norm: %s",
                      !ps ? "the store is NULL"
                      : !ps->grads ? "qkv_params_alloc has not been called"
                                   : "max_norm must be >= 0");
        return NAN;
    }
    double ss = 0;
    for (int64_t i = 0; i < ps->count; i++)
        if (qkv__param_trainable(&ps->at[i]))
            ss += sum_squares(ps->grads + ps->at[i].offset, ps->at[i].numel);
    float norm = (float)sqrt(ss);
    /* PyTorch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1 */
    float coef = max_norm / (norm + 1e-6f);
    if (!(coef < 1.0f))
        return norm;
    for (int64_t i = 0; i < ps->count; i++) {
        const qkv__param *e = &ps->at[i];
        if (!qkv__param_trainable(e))
            continue;
        float *g = ps->grads + e->offset;
        int64_t n = e->numel;
#pragma omp parallel for if (n > 32768) schedule(static)
        for (int64_t k = 0; k < n; k++)
            g[k] *= coef;
    }
    return norm;
}
