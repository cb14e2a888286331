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
};

/* Updated by the optimizer and touched by clipping: not a buffer, not frozen. */
static inline bool qkv__param_trainable(const qkv__param *p)
{
    return !(p->flags & (QKV_PARAM_BUFFER | QKV_PARAM_FROZEN));
}

#endif
