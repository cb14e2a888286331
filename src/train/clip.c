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

/* Calls f(entry, block, lo, hi, k, arg) for block `block` = [lo, hi) of
 * every trainable entry, k counting the blocks in entry and block order. */
typedef void (*block_fn)(const qkv__param *e, int64_t lo, int64_t hi, int64_t k, void *arg);

static int64_t each_block(const qkv_params *ps, block_fn f, void *arg)
{
    int64_t k = 0;
    for (int64_t i = 0; i < ps->count; i++) {
        const qkv__param *e = &ps->at[i];
        if (!qkv__param_trainable(e))
            continue;
        int64_t nb, per;
        entry_blocks(e->numel, &nb, &per);
        for (int64_t b = 0; b < nb; b++, k++)
            if (f)
                f(e, b * per, (b + 1) * per < e->numel ? (b + 1) * per : e->numel, k, arg);
    }
    return k;
}

typedef struct {
    const qkv_params *ps;
    int t, nt;
} squares_arg;

/* block k's sum of squares, by the thread it is dealt to (round-robin) */
static void block_part(const qkv__param *e, int64_t lo, int64_t hi, int64_t k, void *arg)
{
    squares_arg *a = arg;
    if (k % a->nt == a->t)
        a->ps->norm_parts[k] = block_squares(a->ps->grads + e->offset + lo, hi - lo);
}

typedef struct {
    const double *parts;
    const qkv__param *entry; /* the entry whose blocks s sums */
    double s, ss;
} order_arg;

/* the block sums added per entry, the entries' sums in order */
static void add_in_order(const qkv__param *e, int64_t lo, int64_t hi, int64_t k, void *arg)
{
    (void)lo, (void)hi;
    order_arg *a = arg;
    if (e != a->entry) {
        a->ss += a->s;
        a->s = 0;
        a->entry = e;
    }
    a->s += a->parts[k];
}

/* Sum of squares of every trainable entry's gradient: each block's sum by
 * whichever thread (blocks dealt round-robin over all entries, so that a
 * model of many small entries keeps every thread busy), then added in
 * entry and block order: per entry, then the entries' sums. */
static double sum_squares(qkv_params *ps)
{
    int64_t nparts = each_block(ps, NULL, NULL);
    if (nparts > ps->n_norm_parts) { /* once per store */
        qkv__free(ps->norm_parts);
        ps->norm_parts = qkv__malloc((size_t)nparts * sizeof(double));
        ps->n_norm_parts = ps->norm_parts ? nparts : 0;
        if (!ps->norm_parts) {
            qkv_set_error(QKV_ERR_NOMEM, "clip_grad_norm: out of memory");
            return NAN;
        }
    }
    int threads = ps->total > 32768 ? qkv_threads() : 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        squares_arg a = {.ps = ps, .t = 0, .nt = 1};
#ifdef _OPENMP
        a.t = omp_get_thread_num(), a.nt = omp_get_num_threads();
#endif
        each_block(ps, block_part, &a);
    }
    order_arg o = {.parts = ps->norm_parts};
    each_block(ps, add_in_order, &o);
    return o.ss + o.s;
}

/* Buffers and frozen entries are left out: they are not updated, and their
 * gradients are not computed. A NaN or infinite norm is returned without
 * touching the gradients, so the caller can skip the step. */
float qkv_clip_grad_norm(qkv_params *ps, float max_norm)
{
    if (!ps || !ps->grads || !(max_norm >= 0)) {
        qkv_set_error(QKV_ERR_ARG, "clip_grad_norm: %s",
                      !ps ? "the store is NULL"
                      : !ps->values ? "qkv_params_alloc has not been called"
                      : !ps->grads  ? "the store has no gradients (qkv_params_alloc_inference)"
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
        int64_t lo, hi, a, b;
        qkv__flat_slice(total, part, parts, &lo, &hi);
        for (int64_t i = 0; i < ps->count; i++)
            if (qkv__param_in(&ps->at[i], lo, hi, &a, &b) && qkv__param_trainable(&ps->at[i]))
                for (int64_t k = a; k < b; k++)
                    ps->grads[k] *= coef;
    }
    return norm;
}
