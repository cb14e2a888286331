/* ctx.c - the context: step arena, tape, modes; making step tensors. */
#include "../qkv_internal.h"

#include <stdio.h>
#include <time.h>

#include <math.h>
#include <stdlib.h>

#define QKV__NAME(e, s) s,
const char *const qkv_op_names[QKV_OP_COUNT] = {QKV_OP_LIST(QKV__NAME)};
#undef QKV__NAME

/* ---- the op profiler (QKV_PROFILE=1) ----
 * Forward time of an op is the time from the previous recorded op (or the
 * reset) to its record, so it holds whatever ran in between; backward time
 * is its backward rule's; its memory is the arena bytes taken in the same
 * stretch (what the forward keeps for the backward, by op). At qkv_ctx_free
 * the totals are printed to stderr, heaviest first, per step (steps =
 * resets with a tape). */
struct qkv_profile {
    double last, fwd[QKV_OP_COUNT], bwd[QKV_OP_COUNT];
    int64_t calls[QKV_OP_COUNT], steps;
    size_t last_used;          /* the arena's use at the previous record */
    double bytes[QKV_OP_COUNT]; /* arena bytes taken up to each record */
};

static double prof_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void prof_print(const struct qkv_profile *p)
{
    double steps = p->steps > 0 ? (double)p->steps : 1, total = 0;
    int order[QKV_OP_COUNT], n = 0;
    for (int op = 0; op < QKV_OP_COUNT; op++) {
        total += p->fwd[op] + p->bwd[op];
        if (p->calls[op])
            order[n++] = op;
    }
    for (int i = 1; i < n; i++) /* insertion sort, heaviest first */
        for (int j = i; j > 0 && p->fwd[order[j]] + p->bwd[order[j]] >
                                     p->fwd[order[j - 1]] + p->bwd[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    fprintf(stderr, "qkv profile: %lld steps, %.3f ms a step in recorded ops\n"
                    "%-20s %8s %10s %10s %6s %9s\n", (long long)p->steps, 1e3 * total / steps,
            "op", "calls", "fwd ms", "bwd ms", "share", "fwd MiB");
    for (int i = 0; i < n; i++) {
        int op = order[i];
        fprintf(stderr, "%-20s %8.1f %10.3f %10.3f %5.1f%% %9.1f\n", qkv_op_names[op],
                (double)p->calls[op] / steps, 1e3 * p->fwd[op] / steps, 1e3 * p->bwd[op] / steps,
                100 * (p->fwd[op] + p->bwd[op]) / (total > 0 ? total : 1),
                p->bytes[op] / steps / 1048576.0);
    }
}

qkv_ctx *qkv_ctx_new(void)
{
    qkv__threads_init();
    qkv_ctx *ctx = qkv__calloc(1, sizeof *ctx);
    if (!ctx)
        return NULL;
    ctx->arena = qkv_arena_new(0);
    if (!ctx->arena) {
        qkv__free(ctx);
        return NULL;
    }
    ctx->grad_enabled = 1;
    ctx->training = 1;
    const char *nan = getenv("QKV_CHECK_NAN");
    ctx->check_nan = nan && *nan && *nan != '0';
    const char *prof = getenv("QKV_PROFILE");
    if (prof && *prof && *prof != '0') {
        ctx->prof = qkv__calloc(1, sizeof *ctx->prof);
        if (ctx->prof)
            ctx->prof->last = prof_now();
    }
    qkv_rng_seed(&ctx->rng, 0);
    return ctx;
}

void qkv_ctx_free(qkv_ctx *ctx)
{
    if (!ctx)
        return;
    if (ctx->prof) {
        prof_print(ctx->prof);
        qkv__free(ctx->prof);
    }
    qkv_arena_free(ctx->arena);
    if (ctx->bn_arena)
        qkv_arena_free(ctx->bn_arena);
    qkv__free(ctx);
}

void qkv_ctx_reset(qkv_ctx *ctx)
{
    if (ctx->prof) {
        ctx->prof->steps += ctx->tape != NULL;
        ctx->prof->last = prof_now();
        ctx->prof->last_used = 0;
    }
    qkv_arena_reset(ctx->arena);
    ctx->tape = NULL;
    ctx->n_nodes = 0;
    qkv__bn_clear(ctx);
}

/* here, not beside batch norm: the context owns the list and its arena */
void qkv__bn_clear(qkv_ctx *ctx)
{
    ctx->bn_first = ctx->bn_last = NULL;
    if (ctx->bn_arena)
        qkv_arena_reset(ctx->bn_arena);
}

qkv_arena *qkv_ctx_arena(qkv_ctx *ctx) { return ctx->arena; }

void qkv__ctx_redirect_grads(qkv_ctx *ctx, const float *lo, int64_t n, float *to)
{
    ctx->grad_lo = to ? lo : NULL;
    ctx->grad_n = to ? n : 0;
    ctx->grad_to = to;
}

void qkv__ctx_set_backward_hook(qkv_ctx *ctx, void (*fn)(void *user, int64_t k), void *user)
{
    ctx->after_node = fn;
    ctx->after_user = fn ? user : NULL;
}

int qkv_set_grad_enabled(qkv_ctx *ctx, int enabled)
{
    int old = ctx->grad_enabled;
    ctx->grad_enabled = enabled != 0;
    return old;
}

int qkv_grad_enabled(const qkv_ctx *ctx) { return ctx->grad_enabled; }

int qkv_set_training(qkv_ctx *ctx, int training)
{
    int old = ctx->training;
    ctx->training = training != 0;
    return old;
}

int qkv_training(const qkv_ctx *ctx) { return ctx->training; }

qkv_rng *qkv_ctx_rng(qkv_ctx *ctx) { return &ctx->rng; }

void qkv_set_check_nan(qkv_ctx *ctx, int on) { ctx->check_nan = on != 0; }

void *qkv__alloc(qkv_ctx *ctx, size_t bytes) { return qkv_arena_alloc(ctx->arena, bytes); }

float *qkv__floats(qkv_ctx *ctx, int64_t n)
{
    return qkv_arena_alloc(ctx->arena, (size_t)(n > 0 ? n : 1) * sizeof(float));
}

void qkv__floats_done(qkv_ctx *ctx, float *p, int64_t n)
{
    if (p)
        qkv__arena_release(ctx->arena, p, (size_t)(n > 0 ? n : 1) * sizeof(float));
}

static bool shape_ok(int ndim, const int64_t *shape, const char *op)
{
    if (ndim < 0 || ndim > QKV_MAX_DIMS) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: %d dimensions (at most %d)", op, ndim, QKV_MAX_DIMS);
        return false;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            qkv_set_error(QKV_ERR_SHAPE, "%s: negative size %lld in dimension %d", op,
                          (long long)shape[i], i);
            return false;
        }
    return true;
}

qkv_tensor *qkv__tensor(qkv_ctx *ctx, int ndim, const int64_t *shape)
{
    if (!shape_ok(ndim, shape, "tensor"))
        return NULL;
    qkv_tensor *t = qkv__alloc(ctx, sizeof *t);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    int64_t n = qkv__contig_strides(ndim, shape, t->stride);
    t->data = qkv__floats(ctx, n);
    return t->data ? t : NULL;
}

qkv_tensor *qkv__view(qkv_ctx *ctx, qkv_tensor *x, int ndim, const int64_t *shape,
                      const int64_t *stride, int64_t offset)
{
    qkv_tensor *t = qkv__alloc(ctx, sizeof *t);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->stride[i] = stride[i];
    }
    t->data = x->data + offset;
    return t;
}

qkv_tensor *qkv_new(qkv_ctx *ctx, int ndim, const int64_t *shape)
{
    return qkv__tensor(ctx, ndim, shape);
}

qkv_tensor *qkv_full(qkv_ctx *ctx, int ndim, const int64_t *shape, float value)
{
    qkv_tensor *t = qkv__tensor(ctx, ndim, shape);
    if (!t)
        return NULL;
    int64_t n = qkv_numel(t);
    for (int64_t i = 0; i < n; i++)
        t->data[i] = value;
    return t;
}

qkv_tensor *qkv_zeros(qkv_ctx *ctx, int ndim, const int64_t *shape)
{
    return qkv_full(ctx, ndim, shape, 0.0f);
}

qkv_tensor *qkv_from_data(qkv_ctx *ctx, int ndim, const int64_t *shape, const float *data)
{
    if (!data) {
        qkv_set_error(QKV_ERR_ARG, "from_data: data is NULL");
        return NULL;
    }
    qkv_tensor *t = qkv__tensor(ctx, ndim, shape);
    if (t)
        memcpy(t->data, data, (size_t)qkv_numel(t) * sizeof(float));
    return t;
}

qkv_tensor *qkv_wrap(qkv_ctx *ctx, int ndim, const int64_t *shape, float *data)
{
    if (!data) {
        qkv_set_error(QKV_ERR_ARG, "wrap: data is NULL");
        return NULL;
    }
    if (!shape_ok(ndim, shape, "wrap"))
        return NULL;
    qkv_tensor *t = qkv__alloc(ctx, sizeof *t);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    qkv__contig_strides(ndim, shape, t->stride);
    t->data = data;
    return t;
}

qkv_tensor *qkv_rand(qkv_ctx *ctx, int ndim, const int64_t *shape, float lo, float hi)
{
    qkv_tensor *t = qkv__tensor(ctx, ndim, shape);
    if (!t)
        return NULL;
    int64_t n = qkv_numel(t);
    for (int64_t i = 0; i < n; i++)
        t->data[i] = lo + (hi - lo) * (float)qkv_rng_uniform(&ctx->rng);
    return t;
}

qkv_tensor *qkv_randn(qkv_ctx *ctx, int ndim, const int64_t *shape, float mean, float std)
{
    qkv_tensor *t = qkv__tensor(ctx, ndim, shape);
    if (!t)
        return NULL;
    int64_t n = qkv_numel(t);
    for (int64_t i = 0; i < n; i++)
        t->data[i] = mean + std * (float)qkv_rng_normal(&ctx->rng);
    return t;
}

qkv_tensor *qkv_requires_grad(qkv_tensor *t)
{
    if (t)
        t->requires_grad = 1;
    return t;
}

qkv_tensor *qkv_detach(qkv_ctx *ctx, qkv_tensor *x)
{
    QKV_INPUTS("detach", x);
    qkv_tensor *t = qkv__view(ctx, x, x->ndim, x->shape, x->stride, 0);
    return t;
}

bool qkv__null_input(const char *op, int n, qkv_tensor *const *in)
{
    for (int i = 0; i < n; i++)
        if (!in[i]) {
            /* keep the first error of a chain; name the op if there is none */
            if (qkv_error_status() == QKV_OK)
                qkv_set_error(QKV_ERR_ARG, "%s: input %d is NULL", op, i);
            return true;
        }
    return false;
}

qkv_node *qkv__record(qkv_ctx *ctx, qkv_op op, qkv_backward_fn backward, qkv_tensor *out,
                      int n_in, qkv_tensor *const *in)
{
    if (!ctx->grad_enabled || !out)
        return NULL;
    bool any = false;
    for (int i = 0; i < n_in; i++)
        if (in[i] && in[i]->requires_grad)
            any = true;
    if (!any)
        return NULL;
    qkv_node *n = qkv__alloc(ctx, sizeof *n);
    if (!n)
        return NULL;
    memset(n, 0, sizeof *n);
    n->op = op;
    n->backward = backward;
    n->out = out;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++)
        n->in[i] = in[i];
    n->prev = ctx->tape;
    ctx->tape = n;
    ctx->n_nodes++;
    n->first_of_out = out->node == NULL;
    out->requires_grad = 1;
    out->node = n;
    if (ctx->prof) {
        double t = prof_now();
        size_t used = qkv_arena_used(ctx->arena);
        ctx->prof->fwd[op] += t - ctx->prof->last;
        ctx->prof->calls[op]++;
        ctx->prof->last = t;
        if (used > ctx->prof->last_used)
            ctx->prof->bytes[op] += (double)(used - ctx->prof->last_used);
        ctx->prof->last_used = used;
    }
    return n;
}

float *qkv__grad(qkv_ctx *ctx, qkv_tensor *t)
{
    if (!t->grad) {
        int64_t n = qkv_numel(t);
        t->grad = qkv__floats(ctx, n);
        if (t->grad)
            memset(t->grad, 0, (size_t)n * sizeof(float));
    }
    return qkv__grad_target(ctx, t);
}

void qkv__pass_grad(qkv_ctx *ctx, qkv_node *n, qkv_tensor *t)
{
    float *g = n->out->grad;
    if (!t->grad && !n->grad_lent && n->first_of_out && n->out->node == n &&
        g != ctx->seed_grad) { /* the output's one node: no other reads g */
        t->grad = g;
        n->grad_lent = 1;
        return;
    }
    bool acc;
    float *gt = qkv__grad_for_write(ctx, t, &acc);
    if (!gt)
        return;
    int64_t m = qkv_numel(t);
    if (!acc) {
        memcpy(gt, g, (size_t)m * sizeof(float));
        return;
    }
    if (gt == g) { /* add(a, a): both sides are the same tensor */
#pragma omp parallel for simd if (m > 65536) schedule(static)
        for (int64_t i = 0; i < m; i++)
            gt[i] *= 2.0f;
        return;
    }
#pragma omp parallel for simd if (m > 65536) schedule(static)
    for (int64_t i = 0; i < m; i++)
        gt[i] += g[i];
}

float *qkv__grad_for_write(qkv_ctx *ctx, qkv_tensor *t, bool *accumulate)
{
    *accumulate = t->grad != NULL;
    if (!t->grad)
        t->grad = qkv__floats(ctx, qkv_numel(t));
    return qkv__grad_target(ctx, t);
}

qkv_tensor *qkv__done(qkv_ctx *ctx, qkv_op op, qkv_tensor *out)
{
    if (!out || !ctx->check_nan)
        return out;
    int64_t n = qkv_numel(out);
    for (int64_t i = 0; i < n; i++) {
        float v = qkv_get(out, i);
        if (!isfinite(v)) {
            char s[128];
            qkv_set_error(QKV_ERR_NAN, "%s: output %s holds %f at flat index %lld",
                          qkv_op_names[op], qkv_shape_str(out, s, sizeof s), (double)v,
                          (long long)i);
            return NULL;
        }
    }
    return out;
}

/* The node's backward, and with NaN checks on, a look at each gradient it
 * wrote. */
static qkv_status node_backward(qkv_ctx *ctx, qkv_node *n)
{
    double t0 = ctx->prof ? prof_now() : 0;
    n->backward(ctx, n);
    if (ctx->prof)
        ctx->prof->bwd[n->op] += prof_now() - t0;
    qkv_status failed = qkv_error_status(); /* a rule can fail only so */
    if (failed == QKV_ERR_NOMEM || failed == QKV_ERR_COMM)
        return failed;
    if (ctx->check_nan)
        for (int i = 0; i < n->n_in; i++) {
            qkv_tensor *in = n->in[i];
            if (!in || !in->grad)
                continue;
            const float *g = qkv__grad_target(ctx, in);
            int64_t m = qkv_numel(in);
            for (int64_t k = 0; k < m; k++)
                if (!isfinite(g[k]))
                    return qkv_set_error(QKV_ERR_NAN, "%s backward: gradient of input %d holds %f",
                                         qkv_op_names[n->op], i, (double)g[k]);
        }
    return QKV_OK;
}

static qkv_status run_backward(qkv_ctx *ctx)
{
    int64_t place = 0; /* on the tape, 0 the newest */
    for (qkv_node *n = ctx->tape; n; n = n->prev, place++) {
        if (n->out->grad) { /* a node no gradient reached is skipped */
            qkv_status st = node_backward(ctx, n);
            if (st)
                return st;
            /* After the first node made for the output (the last to run)
             * its gradient is used up: every op that read the output came
             * later on the tape and has run. Unless it became an input's
             * gradient, or is the caller's seed, it goes back to the arena
             * for the next gradients to reuse, as PyTorch frees a
             * non-leaf's. */
            if (n->first_of_out) {
                if (!n->grad_lent && n->out->grad != ctx->seed_grad)
                    qkv__arena_release(ctx->arena, n->out->grad,
                                       (size_t)qkv_numel(n->out) * sizeof(float));
                n->out->grad = NULL;
            }
        }
        if (ctx->after_node)
            ctx->after_node(ctx->after_user, place);
    }
    return QKV_OK;
}

qkv_status qkv_backward_with(qkv_ctx *ctx, qkv_tensor *out, const float *grad)
{
    /* a clean start: the rules report failure through the thread's status,
     * which must not hold an earlier, handled error of the caller's */
    qkv_clear_error();
    if (!out || !grad)
        return qkv_set_error(QKV_ERR_ARG, "backward: %s is NULL", out ? "grad" : "output");
    if (!out->requires_grad)
        return qkv_set_error(QKV_ERR_STATE,
                             "backward: the output does not depend on anything that "
                             "requires a gradient (or gradients were off)");
    int64_t n = qkv_numel(out);
    if (!out->grad && out->node && out->node == ctx->tape) {
        /* The newest op made `out`, so no recorded op reads it and nothing
         * will add into its gradient: backward rules only read an output's
         * gradient, so the caller's buffer serves as it is, without a copy
         * (and is never lent on as an input's gradient). */
        out->grad = (float *)grad;
        ctx->seed_grad = grad;
        qkv_status st = run_backward(ctx);
        ctx->seed_grad = NULL;
        out->grad = NULL;
        return st;
    }
    if (!out->grad) { /* a fresh buffer: copy the seed, no zeroing pass */
        out->grad = qkv__floats(ctx, n);
        if (!out->grad)
            return QKV_ERR_NOMEM;
        memcpy(out->grad, grad, (size_t)n * sizeof(float));
    } else
        for (int64_t i = 0; i < n; i++)
            out->grad[i] += grad[i];
    return run_backward(ctx);
}

qkv_status qkv_backward(qkv_ctx *ctx, qkv_tensor *loss)
{
    if (!loss)
        return qkv_set_error(qkv_error_status() ? qkv_error_status() : QKV_ERR_ARG,
                             "%s", qkv_error()[0] ? qkv_error() : "backward: loss is NULL");
    if (qkv_numel(loss) != 1) {
        char s[128];
        return qkv_set_error(QKV_ERR_SHAPE, "backward: loss must have one element, has shape %s",
                             qkv_shape_str(loss, s, sizeof s));
    }
    float one = 1.0f;
    return qkv_backward_with(ctx, loss, &one);
}
