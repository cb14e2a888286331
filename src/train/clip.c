/* clip.c - gradient clipping by global L2 norm, as
 * torch.nn.utils.clip_grad_norm_(params, max_norm). */
#include "params.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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
 * threads' sums in whatever order they finish). Entry e's blocks: nb of
 * `per` elements (the last shorter). */
#define BLOCK 65536
#define MAX_BLOCKS 64

static void entry_blocks(int64_t n, int64_t *nb, int64_t *per)
{
    *nb = (n + BLOCK - 1) / BLOCK;
    if (*nb > MAX_BLOCKS)
        *nb = MAX_BLOCKS;
    if (*nb < 1)
        *nb = 1;
    *per = (n + *nb - 1) / *nb;
}

/* Sum of squares of every trainable entry's gradient: each block's sum by
 * whichever thread (blocks dealt round-robin over all entries, so that a
 * model of many small entries keeps every thread busy), then all added in
 * entry and block order. */
static double sum_squares(const qkv_params *ps)
{
    enum { MAX_PARTS = 4096 };
    double part[MAX_PARTS];
    int64_t nparts = 0;
    for (int64_t i = 0; i < ps->count; i++) {
        int64_t nb, per;
        entry_blocks(ps->at[i].numel, &nb, &per);
        nparts += qkv__param_trainable(&ps->at[i]) ? nb : 0;
    }
    if (nparts > MAX_PARTS) { /* a store of thousands of entries: in turn */
        double ss = 0;
        for (int64_t i = 0; i < ps->count; i++) {
            if (!qkv__param_trainable(&ps->at[i]))
                continue;
            int64_t nb, per, n = ps->at[i].numel;
            entry_blocks(n, &nb, &per);
            double s = 0;
            for (int64_t b = 0; b < nb; b++) {
                int64_t lo = b * per, hi = lo + per < n ? lo + per : n;
                s += block_squares(ps->grads + ps->at[i].offset + lo, hi - lo);
            }
            ss += s;
        }
        return ss;
    }
    int64_t total = ps->total;
    int threads = total > 32768 ? qkv_threads() : 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        int t = 0, nt = 1;
#endif
        int64_t k = 0;
        for (int64_t i = 0; i < ps->count; i++) {
            if (!qkv__param_trainable(&ps->at[i]))
                continue;
            int64_t nb, per, n = ps->at[i].numel;
            entry_blocks(n, &nb, &per);
            for (int64_t b = 0; b < nb; b++, k++)
                if (k % nt == t) {
                    int64_t lo = b * per, hi = lo + per < n ? lo + per : n;
                    part[k] = block_squares(ps->grads + ps->at[i].offset + lo, hi - lo);
                }
        }
    }
    double ss = 0;
    int64_t k = 0;
    for (int64_t i = 0; i < ps->count; i++) {
        if (!qkv__param_trainable(&ps->at[i]))
            continue;
        int64_t nb, per;
        entry_blocks(ps->at[i].numel, &nb, &per);
        double s = 0;
        for (int64_t b = 0; b < nb; b++)
            s += part[k++];
        ss += s;
    }
    return ss;
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
    float norm = (float)sqrt(sum_squares(ps));
    /* PyTorch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1 */
    float coef = max_norm / (norm + 1e-6f);
    if (!(coef < 1.0f))
        return norm;
    /* elementwise: the threads take equal slices of the flat buffer, entry
     * by entry within a slice */
    int64_t total = ps->total;
    int parts = total > 32768 ? qkv_threads() : 1;
#pragma omp parallel for if (parts > 1) schedule(static)
    for (int part = 0; part < parts; part++) {
        int64_t blocks = (total + 15) / 16;
        int64_t lo = 16 * (blocks * part / parts), hi = 16 * (blocks * (part + 1) / parts);
        for (int64_t i = 0; i < ps->count; i++) {
            const qkv__param *e = &ps->at[i];
            int64_t a = e->offset > lo ? e->offset : lo;
            int64_t b = e->offset + e->numel < hi ? e->offset + e->numel : hi;
            if (a >= b || !qkv__param_trainable(e))
                continue;
            float *g = ps->grads;
            for (int64_t k = a; k < b; k++)
                g[k] *= coef;
        }
    }
    return norm;
}
