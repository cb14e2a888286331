/* shards.c - data parallelism inside one training step.
 *
 * A batch is cut into one shard per thread. Each shard runs forward and
 * backward on a context of its own, on its own thread, with no barrier
 * between its ops; the only synchronisation is at the end, where the
 * shards' gradients are summed. Shard 0's context adds into the parameter
 * store's gradients; shard i > 0's context is redirected
 * (qkv__ctx_redirect_grads) to a private buffer laid out as the store's.
 * After every shard is done, each thread adds a slice of the private
 * buffers into the store, in shard order, and zeroes them for the next
 * step. Inside the parallel region qkv_threads() is 1, so a shard's
 * kernels open no parallel regions of their own.
 *
 * Batch norm in training mode normalises each shard's rows with their own
 * statistics; its running statistics are not written by the shards (they
 * would race) but listed by each context, and applied once after the join,
 * from the shards' moments merged (qkv__bn_apply_deferred): the same
 * update as one context over the whole batch.
 */
#include "params.h"
#include "train_internal.h"

#include <stdio.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MSG 512

struct qkv_shards {
    qkv_params *ps;
    int n;
    qkv_ctx **ctx;        /* n contexts */
    float *own;           /* (n - 1) * ps->total floats, zero between runs */
    qkv_status *status;   /* n */
    char (*msg)[MSG];     /* n: a failed shard's message */
    qkv_comm *ranks;      /* running statistics merged over these ranks
                             (qkv__shards_merge_bn_ranks), not at the join */
};

void qkv_shard_rows(int64_t B, int i, int n, int64_t *lo, int64_t *hi)
{
    int64_t per = n > 0 ? B / n : B, extra = n > 0 ? B % n : 0;
    *lo = i * per + (i < extra ? i : extra);
    *hi = *lo + per + (i < extra);
}

void qkv_shards_free(qkv_shards *s)
{
    if (!s)
        return;
    for (int i = 0; s->ctx && i < s->n; i++)
        qkv_ctx_free(s->ctx[i]);
    qkv__free(s->ctx);
    qkv__free(s->own);
    qkv__free(s->status);
    qkv__free(s->msg);
    qkv__free(s);
}

qkv_shards *qkv_shards_new(qkv_params *ps, int n)
{
    if (!ps || !ps->grads) {
        qkv_set_error(QKV_ERR_STATE, "shards_new: the parameter store is %s",
                      !ps           ? "NULL"
                      : !ps->values ? "not allocated yet (qkv_params_alloc)"
                                    : "without gradients (qkv_params_alloc_inference)");
        return NULL;
    }
    if (n <= 0)
        n = qkv_threads();
    qkv_shards *s = qkv__calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ps = ps;
    s->n = n;
    s->ctx = qkv__calloc((size_t)n, sizeof *s->ctx);
    s->status = qkv__calloc((size_t)n, sizeof *s->status);
    s->msg = qkv__calloc((size_t)n, sizeof *s->msg);
    if (n > 1)
        s->own = qkv__aligned_alloc((size_t)(n - 1) * (size_t)ps->total * sizeof(float));
    if (!s->ctx || !s->status || !s->msg || (n > 1 && !s->own)) {
        qkv_shards_free(s);
        qkv_set_error(QKV_ERR_NOMEM, "shards_new: out of memory for %d shards", n);
        return NULL;
    }
    if (n > 1)
        memset(s->own, 0, (size_t)(n - 1) * (size_t)ps->total * sizeof(float));
    for (int i = 0; i < n; i++) {
        s->ctx[i] = qkv_ctx_new();
        if (!s->ctx[i]) {
            qkv_shards_free(s);
            qkv_set_error(QKV_ERR_NOMEM, "shards_new: out of memory for %d contexts", n);
            return NULL;
        }
        qkv_rng_seed(qkv_ctx_rng(s->ctx[i]), (uint64_t)i + 1);
        /* batch norm's running statistics: written once, after the join */
        s->ctx[i]->bn_defer = n > 1;
        if (i > 0)
            qkv__ctx_redirect_grads(s->ctx[i], ps->grads, ps->total,
                                    s->own + (size_t)(i - 1) * (size_t)ps->total);
    }
    return s;
}

int qkv_shards_count(const qkv_shards *s) { return s ? s->n : 0; }

qkv_ctx *qkv_shards_ctx(qkv_shards *s, int i)
{
    if (!s || i < 0 || i >= s->n) {
        qkv_set_error(QKV_ERR_ARG, "shards_ctx: no shard %d (there are %d)", i, s ? s->n : 0);
        return NULL;
    }
    return s->ctx[i];
}

void qkv_shards_set_training(qkv_shards *s, int training)
{
    for (int i = 0; s && i < s->n; i++)
        qkv_set_training(s->ctx[i], training);
}

/* Shard i's work on the calling thread; its status and message kept. */
static void run_one(qkv_shards *s, int i, qkv_shard_fn fn, void *arg)
{
    qkv_ctx_reset(s->ctx[i]);
    qkv_status st = fn(s->ctx[i], i, s->n, arg);
    s->status[i] = st;
    if (st != QKV_OK)
        snprintf(s->msg[i], MSG, "%s", qkv_error());
}

/* grads[lo, hi) += own_1 + ... + own_{n-1} over the same range, in shard
 * order; the private buffers are left zero. */
static void sum_into_store(qkv_shards *s, int64_t lo, int64_t hi)
{
    float *g = s->ps->grads;
    for (int k = 1; k < s->n; k++) {
        float *o = s->own + (size_t)(k - 1) * (size_t)s->ps->total;
#pragma omp simd
        for (int64_t j = lo; j < hi; j++) {
            g[j] += o[j];
            o[j] = 0.0f;
        }
    }
}

qkv_status qkv_shards_run(qkv_shards *s, qkv_shard_fn fn, void *arg)
{
    if (!s || !fn)
        return qkv_set_error(QKV_ERR_ARG, "shards_run: %s is NULL", s ? "fn" : "shards");
    if (s->n == 1) {
        run_one(s, 0, fn, arg);
        return s->status[0];
    }
    int64_t total = s->ps->total;
#pragma omp parallel num_threads(s->n)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        omp_set_num_threads(1); /* no nested teams, even where nesting is on */
#else
        int t = 0, nt = 1;
#endif
        /* a team smaller than asked for runs the rest in turn */
        for (int i = t; i < s->n; i += nt)
            run_one(s, i, fn, arg);
#pragma omp barrier
        int64_t lo, hi;
        qkv__flat_slice(total, t, nt, &lo, &hi);
        sum_into_store(s, lo, hi);
    }
    for (int i = 0; i < s->n; i++)
        if (s->status[i] != QKV_OK)
            return qkv_set_error(s->status[i], "shard %d of %d: %s", i, s->n, s->msg[i]);
    return s->ranks ? QKV_OK : qkv__bn_apply_deferred(s->ctx, s->n);
}

void qkv__shards_defer_bn_to_ranks(qkv_shards *s, qkv_comm *c)
{
    bool on = qkv_comm_size(c) > 1;
    s->ranks = on ? c : NULL;
    for (int i = 0; i < s->n; i++)
        s->ctx[i]->bn_defer = s->n > 1 ? 1 : on ? 2 : 0;
}

qkv_status qkv__shards_merge_bn_ranks(qkv_shards *s)
{
    if (!s->ranks)
        return QKV_OK;
    qkv_status st = qkv__bn_apply_deferred_ranks(s->ctx, s->n, s->ranks);
    if (st) {
        char msg[900];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        return qkv_set_error(st, "merging batch norm's running statistics over ranks: %s", msg);
    }
    return QKV_OK;
}

void qkv__shards_drop_bn(qkv_shards *s)
{
    for (int i = 0; i < s->n; i++)
        qkv__bn_clear(s->ctx[i]);
}
