/*
 * params.h - the layout of a qkv_params store, shared by the optimizers and
 * gradient clipping so that they can walk the flat buffers entry by entry.
 *
 * Every entry owns the range [offset, offset + numel) of both flat buffers;
 * offsets are multiples of 16 floats (64 bytes), the gaps between entries are
 * zero. Optimizer moments use the same offsets.
 */
#ifndef QKV_TRAIN_PARAMS_H
#define QKV_TRAIN_PARAMS_H

#include "../qkv_internal.h"

typedef struct {
    qkv_tensor *t;  /* allocated on its own, so the pointer never moves */
    int64_t offset; /* in floats, into values and grads */
    int64_t numel;
    int flags;      /* QKV_PARAM_* */
    int group;      /* optimizer group (lr scale) */
} qkv__param;

struct qkv_params {
    qkv__param *at;  /* count entries in declaration order */
    int64_t count, cap;
    float *values;   /* NULL until qkv_params_alloc */
    float *grads;
    void *grads_mem; /* the allocation grads lies in (grads is it, 64-byte aligned) */
    int64_t total;   /* floats in each flat buffer, gaps included */
    double *norm_parts; /* clip.c's per-block sums, made on first use */
    int64_t n_norm_parts;
    char prefix[128]; /* put in front of names declared (qkv_params_set_prefix) */
};

/* Updated by the optimizer and touched by clipping: not a buffer, not frozen. */
static inline bool qkv__param_trainable(const qkv__param *p)
{
    return !(p->flags & (QKV_PARAM_BUFFER | QKV_PARAM_FROZEN));
}

/* Slice `part` of `parts` of the flat buffers (total floats): [lo, hi) in
 * whole 16-float blocks, as the entries start on one. Elementwise work
 * (optimizers, clipping, summing shards) splits by these, whatever the
 * entries' sizes. */
static inline void qkv__flat_slice(int64_t total, int part, int parts, int64_t *lo, int64_t *hi)
{
    int64_t blocks = (total + 15) / 16;
    *lo = 16 * (blocks * part / parts);
    *hi = 16 * (blocks * (part + 1) / parts);
    if (*hi > total)
        *hi = total;
}

/* The part [*a, *b) of entry e inside [lo, hi); false if empty. */
static inline bool qkv__param_in(const qkv__param *e, int64_t lo, int64_t hi, int64_t *a,
                                 int64_t *b)
{
    *a = e->offset > lo ? e->offset : lo;
    *b = e->offset + e->numel < hi ? e->offset + e->numel : hi;
    return *a < *b;
}

#endif
