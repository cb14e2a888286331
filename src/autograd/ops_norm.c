/* ops_norm.c - layer norm over the last axis; batch norm over the channel
 * axis in training, eval and frozen form. Each saves its mean and rstd
 * (1 / sqrt(var + eps)) for the backward. */
#include "../kernels/norm.h"
#include "../qkv_internal.h"

#include <math.h>
#include <stdio.h>

/* A 1-D parameter of size C, or NULL. Returns false (error set) if the
 * shape is wrong. */
static bool check_vec(const char *op, const char *what, qkv_tensor *x, qkv_tensor *v, int64_t C)
{
    if (!v || (v->ndim == 1 && v->shape[0] == C))
        return true;
    char sx[128], sv[128];
    qkv_set_error(QKV_ERR_SHAPE, "%s: %s must be (%lld) for input %s, has shape %s", op, what,
                  (long long)C, qkv_shape_str(x, sx, sizeof sx), qkv_shape_str(v, sv, sizeof sv));
    return false;
}

/* x, weight and bias made contiguous (weight and bias may be NULL); false
 * if out of memory */
static bool contiguous_inputs(qkv_ctx *ctx, qkv_tensor **x, qkv_tensor **weight,
                              qkv_tensor **bias)
{
    *x = qkv_contiguous(ctx, *x);
    if (*weight && !(*weight = qkv_contiguous(ctx, *weight)))
        return false;
    if (*bias && !(*bias = qkv_contiguous(ctx, *bias)))
        return false;
    return *x != NULL;
}

/* ---- layer norm ---- */

/* y (R, C) = layer_norm(x (R, C)) * w (C) + b (C); saved: mean (R),
 * rstd (R), the w the forward used (ones when weight is NULL) */
static void layer_norm_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* y = (x - mean) rstd w + b: the kernel's dx, dw, db */
    qkv_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2], *y = n->out;
    int64_t C = y->shape[y->ndim - 1], R = C ? qkv_numel(y) / C : 0;
    bool acc = true;
    float *dx = qkv__wants(n, 0) ? qkv__grad_for_write(ctx, x, &acc) : NULL;
    float *dw = w && qkv__wants(n, 1) ? qkv__grad(ctx, w) : NULL;
    float *db = b && qkv__wants(n, 2) ? qkv__grad(ctx, b) : NULL;
    int nblocks = qkv_threads();
    double *scratch = NULL;
    if (dw || db) {
        scratch = qkv__alloc(ctx, (size_t)QKV_K_LAYER_NORM_SCRATCH(nblocks, C) * sizeof(double));
        if (!scratch)
            return;
    }
    if ((qkv__wants(n, 0) && !dx) || (w && qkv__wants(n, 1) && !dw) ||
        (b && qkv__wants(n, 2) && !db))
        return; /* out of memory, error set */
    qkv_k_layer_norm_backward(dx, dw, db, scratch, nblocks, y->grad, x->data, n->saved[0],
                              n->saved[1], n->saved[2], R, C, acc);
}

qkv_tensor *qkv_layer_norm(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight, qkv_tensor *bias,
                           float eps)
{
    QKV_INPUTS("layer_norm", x);
    if (x->ndim < 1) {
        char s[64];
        qkv_set_error(QKV_ERR_SHAPE, "layer_norm: input must have at least one dimension, "
                      "has shape %s", qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    int64_t C = x->shape[x->ndim - 1], R = C ? qkv_numel(x) / C : 0;
    if (!check_vec("layer_norm", "weight", x, weight, C) ||
        !check_vec("layer_norm", "bias", x, bias, C))
        return NULL;
    if (!contiguous_inputs(ctx, &x, &weight, &bias))
        return NULL;
    qkv_tensor *y = qkv__tensor(ctx, x->ndim, x->shape);
    float *mean = qkv__floats(ctx, R), *rstd = qkv__floats(ctx, R);
    float *w = weight ? weight->data : qkv__floats(ctx, C);
    float *b = bias ? bias->data : qkv__floats(ctx, C);
    if (!y || !mean || !rstd || !w || !b)
        return NULL;
    /* the kernel always scales and shifts: by one and zero without params */
    if (!weight)
        for (int64_t j = 0; j < C; j++)
            w[j] = 1.0f;
    if (!bias)
        memset(b, 0, (size_t)C * sizeof(float));
    qkv_k_layer_norm_forward(y->data, mean, rstd, x->data, w, b, R, C, eps);
    qkv_node *n = qkv__record(ctx, QKV_OP_LAYER_NORM, layer_norm_backward, y, 3,
                              (qkv_tensor *[]){x, weight, bias});
    if (n) {
        n->saved[0] = mean;
        n->saved[1] = rstd;
        n->saved[2] = w;
    }
    return qkv__done(ctx, QKV_OP_LAYER_NORM, y);
}

/* ---- batch norm ---- */

/* x (B, C, S..) -> y, normalised per channel and group: rows [g B/G,
 * (g + 1) B/G) with mean (G, C), rstd (G, C): y = (x - mean) rstd w + b.
 * iarg[0]: whether mean and rstd are x's own batch statistics (then they
 * depend on x); iarg[1]: G. saved: mean, rstd, w (or NULL) */
/* Synchronised: the sums of dy and dy xhat of this rank's rows go to the
 * parameters, and summed over the ranks (iarg[2] rows in all, saved[3] the
 * communicator) into the input's gradient. */
static void batch_norm_sync_backward(qkv_ctx *ctx, qkv_node *n, float *dx, float *dw, float *db)
{
    qkv_tensor *x = n->in[0];
    int64_t B = x->shape[0], C = x->shape[1], S = B * C != 0 ? qkv_numel(x) / (B * C) : 0;
    const float *mean = n->saved[0], *rstd = n->saved[1];
    double *s = qkv__alloc(ctx, (size_t)(4 * C) * sizeof(double)), N = (double)n->iarg[2];
    if (!s)
        return;
    double *all = s + 2 * C; /* sg, sgx of every rank */
    qkv_k_batch_norm_grad_sums(s, s + C, n->out->grad, x->data, mean, rstd, B, C, S);
    memcpy(all, s, (size_t)(2 * C) * sizeof(double));
    for (int64_t c = 0; c < C; c++) {
        if (dw)
            dw[c] += (float)s[C + c];
        if (db)
            db[c] += (float)s[c];
    }
    if (!dx)
        return;
    if (qkv_comm_allreduce(n->saved[3], all, 2 * C, QKV_DT_F64) != QKV_OK)
        return; /* the error (QKV_ERR_COMM) stops backward */
    for (int64_t k = 0; k < 2 * C; k++)
        all[k] /= N;
    qkv_k_batch_norm_backward_dx(dx, n->out->grad, x->data, mean, rstd, n->saved[2], all,
                                 all + C, B, C, S);
}

static void batch_norm_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *x = n->in[0], *y = n->out;
    qkv_tensor *w = n->n_in > 1 ? n->in[1] : NULL, *b = n->n_in > 2 ? n->in[2] : NULL;
    int64_t B = x->shape[0], C = x->shape[1], S = B * C != 0 ? qkv_numel(x) / (B * C) : 0;
    int64_t G = n->iarg[1], rows = B / G, step = rows * C * S;
    float *dx = qkv__wants(n, 0) ? qkv__grad(ctx, x) : NULL;
    float *dw = w && qkv__wants(n, 1) ? qkv__grad(ctx, w) : NULL;
    float *db = b && qkv__wants(n, 2) ? qkv__grad(ctx, b) : NULL;
    if (n->saved[3]) {
        batch_norm_sync_backward(ctx, n, dx, dw, db);
        return;
    }
    const float *mean = n->saved[0], *rstd = n->saved[1];
    /* each group is a batch norm of its own; dw and db add up over them */
    for (int64_t g = 0; g < G; g++)
        qkv_k_batch_norm_backward(dx ? dx + g * step : NULL, dw, db, y->grad + g * step,
                                  x->data + g * step, mean + g * C, rstd + g * C, n->saved[2],
                                  rows, C, S, n->iarg[0] != 0);
}

/* Checks the options against x (B, C, ...); false with the error set. */
static bool bn_check(const char *op, qkv_tensor *x, qkv_tensor *weight, qkv_tensor *bias,
                     const qkv_bn_opts *o, bool batch_stats)
{
    char s[128];
    if (x->ndim < 2) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: input must be (B, C, ...), has shape %s", op,
                      qkv_shape_str(x, s, sizeof s));
        return false;
    }
    int64_t B = x->shape[0], C = x->shape[1], S = B * C != 0 ? qkv_numel(x) / (B * C) : 0;
    if (!check_vec(op, "weight", x, weight, C) || !check_vec(op, "bias", x, bias, C) ||
        !check_vec(op, "running_mean", x, o->running_mean, C) ||
        !check_vec(op, "running_var", x, o->running_var, C))
        return false;
    if (!batch_stats && (!o->running_mean || !o->running_var)) {
        qkv_set_error(QKV_ERR_ARG, "%s: running_mean and running_var are needed %s", op,
                      o->frozen ? "when frozen" : "outside training mode");
        return false;
    }
    if ((o->running_mean && o->running_mean->stride[0] != 1) ||
        (o->running_var && o->running_var->stride[0] != 1)) {
        qkv_set_error(QKV_ERR_ARG, "%s: running statistics must be contiguous", op);
        return false;
    }
    if (o->num_batches_tracked && qkv_numel(o->num_batches_tracked) != 1) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: num_batches_tracked must hold one value, has shape %s",
                      op, qkv_shape_str(o->num_batches_tracked, s, sizeof s));
        return false;
    }
    int64_t G = o->groups > 1 ? o->groups : 1;
    if (o->groups < 0 || B % G) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: a batch of %lld cannot be cut into %lld groups of "
                      "equal size (input %s)", op, (long long)B, (long long)o->groups,
                      qkv_shape_str(x, s, sizeof s));
        return false;
    }
    if (batch_stats && (B / G) * S <= 1) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: expected more than 1 value per channel when "
                      "training, got input of shape %s%s", op, qkv_shape_str(x, s, sizeof s),
                      G > 1 ? " in groups" : "");
        return false;
    }
    return true;
}

/* The running statistics' update of one call: applied now, or listed for
 * qkv_shards_run when the context defers them. false if out of memory. */
static bool bn_update(qkv_ctx *ctx, const qkv_bn_opts *o, double *mean, double *m2, int64_t G,
                      int64_t C, int64_t count, bool synced)
{
    float *rm = o->running_mean ? o->running_mean->data : NULL;
    float *rv = o->running_var ? o->running_var->data : NULL;
    float *nbt = o->num_batches_tracked ? o->num_batches_tracked->data : NULL;
    if (!rm && !rv && !nbt)
        return true;
    if (ctx->bn_defer && !synced) { /* synchronised moments are every rank's already */
        if (!ctx->bn_arena && !(ctx->bn_arena = qkv_arena_new(0)))
            return false;
        qkv__bn_update *u = qkv_arena_alloc(ctx->bn_arena, sizeof *u);
        double *keep = qkv_arena_alloc(ctx->bn_arena, (size_t)(2 * G * C) * sizeof(double));
        if (!u || !keep)
            return false;
        memcpy(keep, mean, (size_t)(G * C) * sizeof(double));
        memcpy(keep + G * C, m2, (size_t)(G * C) * sizeof(double));
        *u = (qkv__bn_update){rm, rv, nbt, C, G, count, o->momentum, keep, keep + G * C, NULL};
        if (ctx->bn_last)
            ctx->bn_last->next = u;
        else
            ctx->bn_first = u;
        ctx->bn_last = u;
        return true;
    }
    /* each group updates as a call of its own would, in order */
    for (int64_t g = 0; g < G; g++)
        qkv_k_batch_norm_update(rm, rv, mean + g * C, m2 + g * C, count, C, o->momentum);
    if (nbt)
        *nbt += (float)G;
    return true;
}

/* Applies n lists of deferred updates (at[i]: list i's first; the k-th of
 * each belongs to the same call) in call order, as qkv__bn_apply_deferred
 * describes; `what` names a list in messages ("shard"). Nothing is applied
 * if the lists' calls differ. */
static qkv_status apply_lists(qkv__bn_update **at, int n, const char *what)
{
    /* first check that every list holds the same calls */
    int64_t calls = 0;
    for (qkv__bn_update *u = at[0]; u; u = u->next)
        calls++;
    for (int i = 1; i < n; i++) {
        int64_t k = 0;
        qkv__bn_update *u0 = at[0], *u = at[i];
        for (; u && u0; u = u->next, u0 = u0->next, k++)
            if (u->running_mean != u0->running_mean || u->running_var != u0->running_var ||
                u->num_batches_tracked != u0->num_batches_tracked || u->C != u0->C ||
                (u->groups > 1) != (u0->groups > 1))
                return qkv_set_error(QKV_ERR_STATE, "batch norm: %s %d's call %lld is not "
                                     "%s 0's (another layer or grouping); running "
                                     "statistics left as they were", what, i, (long long)k,
                                     what);
        if (u || u0)
            return qkv_set_error(QKV_ERR_STATE, "batch norm: %s %d made %s calls in "
                                 "training mode than %s 0 (%lld); running statistics left "
                                 "as they were", what, i, u ? "more" : "fewer", what,
                                 (long long)calls);
    }
    while (at[0]) {
        qkv__bn_update *u = at[0];
        float *nbt = u->num_batches_tracked;
        if (u->groups == 1) {
            /* the whole batch's moments from the lists', then one update */
            int64_t count = u->count;
            for (int i = 1; i < n; i++) {
                qkv_k_moments_merge(u->mean, u->m2, count, at[i]->mean, at[i]->m2,
                                    at[i]->count, u->C);
                count += at[i]->count;
            }
            qkv_k_batch_norm_update(u->running_mean, u->running_var, u->mean, u->m2, count,
                                    u->C, u->momentum);
            if (nbt)
                *nbt += 1.0f;
        } else
            /* whole groups in each list: every group's update, list order */
            for (int i = 0; i < n; i++)
                for (int64_t g = 0; g < at[i]->groups; g++) {
                    qkv_k_batch_norm_update(u->running_mean, u->running_var,
                                            at[i]->mean + g * u->C, at[i]->m2 + g * u->C,
                                            at[i]->count, u->C, u->momentum);
                    if (nbt)
                        *nbt += 1.0f;
                }
        for (int i = 0; i < n; i++)
            at[i] = at[i]->next;
    }
    return QKV_OK;
}

qkv_status qkv__bn_apply_deferred(qkv_ctx *const *ctx, int n)
{
    qkv__bn_update **at = qkv__alloc(ctx[0], (size_t)n * sizeof *at);
    if (!at)
        return qkv_error_status();
    for (int i = 0; i < n; i++)
        at[i] = ctx[i]->bn_first;
    qkv_status st = apply_lists(at, n, "shard");
    for (int i = 0; i < n; i++)
        qkv__bn_clear(ctx[i]);
    return st;
}

/* One update as it travels between ranks: count, groups, C, then the
 * (groups, C) means and m2s. */
static int64_t packed_doubles(const qkv__bn_update *u) { return 3 + 2 * u->groups * u->C; }

qkv_status qkv__bn_apply_deferred_ranks(qkv_ctx *const *ctx, int n, qkv_comm *c)
{
    int p = qkv_comm_size(c);
    int64_t mine = 0, calls = 0;
    for (int i = 0; i < n; i++)
        for (qkv__bn_update *u = ctx[i]->bn_first; u; u = u->next)
            mine += packed_doubles(u);
    for (qkv__bn_update *u = ctx[0]->bn_first; u; u = u->next)
        calls++;
    int64_t *sizes = qkv__alloc(ctx[0], (size_t)p * sizeof *sizes);
    double *send = qkv__alloc(ctx[0], (size_t)(mine + 1) * sizeof *send);
    double *all = qkv__alloc(ctx[0], (size_t)(p * mine + 1) * sizeof *all);
    qkv__bn_update *nodes = qkv__alloc(ctx[0], (size_t)(p * n * calls + 1) * sizeof *nodes);
    qkv__bn_update **at = qkv__alloc(ctx[0], (size_t)(p * n) * sizeof *at);
    qkv__bn_update **local = qkv__alloc(ctx[0], (size_t)(calls + 1) * sizeof *local);
    if (!sizes || !send || !all || !nodes || !at || !local)
        return qkv_error_status();
    qkv_status st = qkv_comm_allgather(c, &mine, sizeof mine, sizes);
    for (int r = 0; r < p && !st; r++)
        if (sizes[r] != mine)
            st = qkv_set_error(QKV_ERR_STATE, "batch norm: rank %d's running-statistics "
                               "updates take %lld values, this rank's %lld (another model or "
                               "grouping)", r, (long long)sizes[r], (long long)mine);
    int64_t k = 0, j = 0;
    for (qkv__bn_update *u = ctx[0]->bn_first; u; u = u->next)
        local[j++] = u;
    for (int i = 0; i < n && !st; i++)
        for (qkv__bn_update *u = ctx[i]->bn_first; u; u = u->next) {
            int64_t gc = u->groups * u->C;
            send[k] = (double)u->count, send[k + 1] = (double)u->groups;
            send[k + 2] = (double)u->C;
            memcpy(send + k + 3, u->mean, (size_t)gc * sizeof(double));
            memcpy(send + k + 3 + gc, u->m2, (size_t)gc * sizeof(double));
            k += packed_doubles(u);
        }
    if (!st && mine)
        st = qkv_comm_allgather(c, send, (size_t)mine * sizeof(double), all);
    /* rank r's shard i as list r n + i of one process of p n shards; each
     * update aims at this rank's statistics of the same call */
    for (int r = 0, q = 0; r < p && !st; r++) {
        double *src = all + (int64_t)r * mine;
        for (int i = 0; i < n; i++, q++) {
            at[q] = NULL;
            qkv__bn_update *prev = NULL;
            for (int64_t m = 0; m < calls; m++) {
                qkv__bn_update *u = &nodes[(int64_t)q * calls + m];
                *u = *local[m];
                u->count = (int64_t)src[0], u->groups = (int64_t)src[1];
                u->C = (int64_t)src[2];
                u->mean = src + 3, u->m2 = src + 3 + u->groups * u->C;
                u->next = NULL;
                src += 3 + 2 * u->groups * u->C;
                if (prev)
                    prev->next = u;
                else
                    at[q] = u;
                prev = u;
            }
        }
    }
    if (!st)
        st = apply_lists(at, p * n, "rank's shard");
    for (int i = 0; i < n; i++)
        qkv__bn_clear(ctx[i]);
    return st;
}

/* Every rank's count, mean (C) and m2 (C) gathered and merged in rank
 * order into mean, m2 and *count: the same numbers on every rank. */
static bool sync_moments(qkv_ctx *ctx, qkv_comm *c, double *mean, double *m2, int64_t *count,
                         int64_t C)
{
    int p = qkv_comm_size(c);
    size_t per = (size_t)(1 + 2 * C);
    double *mine = qkv__alloc(ctx, per * sizeof(double));
    double *all = qkv__alloc(ctx, (size_t)p * per * sizeof(double));
    if (!mine || !all)
        return false;
    mine[0] = (double)*count;
    memcpy(mine + 1, mean, (size_t)C * sizeof(double));
    memcpy(mine + 1 + C, m2, (size_t)C * sizeof(double));
    if (qkv_comm_allgather(c, mine, per * sizeof(double), all) != QKV_OK) {
        char msg[900];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        qkv_set_error(qkv_error_status(), "batch_norm (synchronised): %s", msg);
        return false;
    }
    int64_t n = (int64_t)all[0];
    memcpy(mean, all + 1, (size_t)C * sizeof(double));
    memcpy(m2, all + 1 + C, (size_t)C * sizeof(double));
    for (int r = 1; r < p; r++) {
        const double *at = all + (size_t)r * per;
        qkv_k_moments_merge(mean, m2, n, at + 1, at + 1 + C, (int64_t)at[0], C);
        n += (int64_t)at[0];
    }
    *count = n;
    return true;
}

qkv_tensor *qkv_batch_norm_ext(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight,
                               qkv_tensor *bias, const qkv_bn_opts *opts)
{
    const char *op = opts && opts->frozen ? "batch_norm_frozen" : "batch_norm";
    QKV_INPUTS(op, x);
    qkv_bn_opts o = opts ? *opts : (qkv_bn_opts){.eps = 1e-5f};
    bool batch_stats = qkv_training(ctx) && !o.frozen;
    if (!bn_check(op, x, weight, bias, &o, batch_stats))
        return NULL;
    if (batch_stats && o.sync && (o.groups > 1 || ctx->bn_defer == 1)) {
        qkv_set_error(QKV_ERR_ARG, "%s: synchronised over ranks %s", op,
                      o.groups > 1 ? "and in groups (shuffle BN) at once"
                                   : "in a shard's context: it needs one shard per rank "
                                     "(--threads 1)");
        return NULL;
    }
    if (!contiguous_inputs(ctx, &x, &weight, &bias))
        return NULL;
    int64_t B = x->shape[0], C = x->shape[1], S = B * C != 0 ? qkv_numel(x) / (B * C) : 0;
    int64_t G = batch_stats && o.groups > 1 ? o.groups : 1, rows = B / G;
    qkv_tensor *y = qkv__tensor(ctx, x->ndim, x->shape);
    float *mean = qkv__floats(ctx, G * C), *rstd = qkv__floats(ctx, G * C);
    float *scale = qkv__floats(ctx, G * C), *shift = qkv__floats(ctx, G * C);
    if (!y || !mean || !rstd || !scale || !shift)
        return NULL;
    bool sync = batch_stats && o.sync;
    int64_t count = rows * S; /* values per channel (and group) */
    if (batch_stats) {
        double *dmean = qkv__alloc(ctx, (size_t)(2 * G * C) * sizeof(double));
        if (!dmean)
            return NULL;
        double *m2 = dmean + G * C;
        qkv_k_batch_norm_moments(dmean, m2, x->data, B, C, S, G);
        if (sync && !sync_moments(ctx, o.sync, dmean, m2, &count, C))
            return NULL;
        for (int64_t k = 0; k < G * C; k++) {
            mean[k] = (float)dmean[k];
            rstd[k] = (float)(1.0 / sqrt(m2[k] / (double)count + o.eps)); /* biased */
        }
        if (!bn_update(ctx, &o, dmean, m2, G, C, count, sync))
            return NULL;
    } else
        for (int64_t c = 0; c < C; c++) {
            mean[c] = o.running_mean->data[c];
            rstd[c] = (float)(1.0 / sqrt((double)o.running_var->data[c] + o.eps));
        }
    /* y = x scale + shift with scale = w rstd and shift = b - mean scale:
     * one fma per element, as PyTorch and DETR's FrozenBatchNorm2d */
    for (int64_t k = 0; k < G * C; k++) {
        int64_t c = k % C;
        scale[k] = (weight ? weight->data[c] : 1.0f) * rstd[k];
        shift[k] = (bias ? bias->data[c] : 0.0f) - mean[k] * scale[k];
    }
    for (int64_t g = 0; g < G; g++)
        qkv_k_channel_affine(y->data + g * rows * C * S, x->data + g * rows * C * S,
                             scale + g * C, shift + g * C, rows, C, S);
    qkv_node *nd = qkv__record(ctx, QKV_OP_BATCH_NORM, batch_norm_backward, y,
                               o.frozen ? 1 : 3, (qkv_tensor *[]){x, weight, bias});
    if (nd) {
        nd->saved[0] = mean;
        nd->saved[1] = rstd;
        nd->saved[2] = weight ? weight->data : NULL;
        nd->iarg[0] = batch_stats;
        nd->iarg[1] = G;
        nd->iarg[2] = count;
        nd->saved[3] = sync ? o.sync : NULL;
    }
    return qkv__done(ctx, QKV_OP_BATCH_NORM, y);
}

qkv_tensor *qkv_batch_norm(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight, qkv_tensor *bias,
                           qkv_tensor *running_mean, qkv_tensor *running_var, float momentum,
                           float eps)
{
    return qkv_batch_norm_ext(ctx, x, weight, bias,
                              &(qkv_bn_opts){.running_mean = running_mean,
                                             .running_var = running_var,
                                             .momentum = momentum, .eps = eps});
}

qkv_tensor *qkv_batch_norm_frozen(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight,
                                  qkv_tensor *bias, qkv_tensor *running_mean,
                                  qkv_tensor *running_var, float eps)
{
    return qkv_batch_norm_ext(ctx, x, weight, bias,
                              &(qkv_bn_opts){.running_mean = running_mean,
                                             .running_var = running_var, .eps = eps,
                                             .frozen = 1});
}
