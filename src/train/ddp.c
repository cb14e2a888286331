/*
 * ddp.c - data parallelism over processes: the gradients of every rank
 * summed by all-reduce in buckets, each started as soon as backward has
 * finished with its gradients, while backward goes on with the rest (the
 * scheme of PyTorch's DistributedDataParallel).
 *
 * A bucket is a run of consecutive trainable entries of the flat gradient
 * buffer, at most bucket_bytes (an entry larger than that is a bucket of
 * its own); bucket 0 holds the store's last entries, whose gradients a
 * forward-ordered model finishes first. Before backward, the tape says
 * when each bucket is final: after the backward of the oldest node that
 * takes one of its parameters (or a view into their gradients) as input.
 * The context's backward hook then starts bucket after bucket, in bucket
 * order whatever the tape (collectives must start in the same order on
 * every rank), and polls the ones under way so that MPI moves them on.
 * What backward has not hidden is waited for at the end.
 */
#include "train_internal.h"

#include <stdio.h>

typedef struct {
    int64_t lo, hi;   /* floats of the flat gradients */
    int64_t final_at; /* tape place after whose backward no gradient in it
                         changes; -1: no node touches it */
    int req;          /* the all-reduce under way, -1 if none */
    double started;   /* this step: seconds after backward began */
    double frac_sum;  /* over steps: started / backward's length (1 after it) */
} ddp_bucket;

struct qkv__ddp {
    qkv_comm *comm;
    qkv_params *ps;
    ddp_bucket *b;
    int nb;
    int next;            /* buckets b[0 .. next) started this step */
    int oldest;          /* the first of them not known to be done */
    qkv_status failed;   /* a start that failed inside the backward hook */
    char msg[768];
    double last_poll;
    double bwd_t0;       /* when the watched backward began */
    qkv_train_comm_stats stats;
};

void qkv__ddp_free(qkv__ddp *d)
{
    if (!d)
        return;
    qkv__free(d->b);
    qkv__free(d);
}

qkv__ddp *qkv__ddp_new(qkv_params *ps, qkv_comm *comm, size_t bucket_bytes)
{
    qkv__ddp *d = qkv__calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->comm = comm, d->ps = ps;
    int64_t cap = (int64_t)(bucket_bytes / sizeof(float));
    if (cap < 16)
        cap = 16;
    /* at most one bucket per entry */
    d->b = qkv__calloc((size_t)(ps->count > 0 ? ps->count : 1), sizeof *d->b);
    if (!d->b) {
        qkv__ddp_free(d);
        return NULL;
    }
    ddp_bucket *cur = NULL;
    for (int64_t i = ps->count - 1; i >= 0; i--) {
        const qkv__param *e = &ps->at[i];
        if (!qkv__param_trainable(e) || e->numel == 0) {
            cur = NULL; /* a run of trainable entries ends here */
            continue;
        }
        int64_t end = e->offset + e->numel;
        if (cur && cur->hi - e->offset <= cap) {
            cur->lo = e->offset;
            continue;
        }
        cur = &d->b[d->nb++];
        *cur = (ddp_bucket){.lo = e->offset, .hi = end, .req = -1};
    }
    for (int k = 0; k < d->nb; k++)
        d->stats.bytes += (d->b[k].hi - d->b[k].lo) * (int64_t)sizeof(float);
    d->stats.buckets = d->nb;
    return d;
}

/* The bucket holding flat offset `off` (buckets lie highest first), -1. */
static int find_bucket(const qkv__ddp *d, int64_t off)
{
    int lo = 0, hi = d->nb - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (off >= d->b[mid].hi)
            hi = mid - 1;
        else if (off < d->b[mid].lo)
            lo = mid + 1;
        else
            return mid;
    }
    return -1;
}

static void start_bucket(qkv__ddp *d, int k)
{
    ddp_bucket *b = &d->b[k];
    if (d->failed)
        return;
    b->started = qkv_now() - d->bwd_t0;
    b->req = qkv_comm_iallreduce(d->comm, d->ps->grads + b->lo, b->hi - b->lo, QKV_DT_F32);
    if (b->req < 0) {
        d->failed = qkv_error_status();
        snprintf(d->msg, sizeof d->msg, "%s", qkv_error());
    }
}

/* Moves the oldest transfers on (MPI progresses every transfer under way
 * inside any of its calls), at most every 20 us. */
static void poll(qkv__ddp *d)
{
    double now = qkv_now();
    if (now - d->last_poll < 20e-6 || d->failed)
        return;
    d->last_poll = now;
    while (d->oldest < d->next) {
        int done = 0;
        ddp_bucket *b = &d->b[d->oldest];
        if (b->req >= 0 && qkv_comm_test(d->comm, b->req, &done) != QKV_OK) {
            b->req = -1;
            d->failed = qkv_error_status();
            snprintf(d->msg, sizeof d->msg, "%s", qkv_error());
            return;
        }
        if (!done)
            return;
        b->req = -1;
        d->oldest++;
    }
}

static void after_node(void *user, int64_t place)
{
    qkv__ddp *d = user;
    while (d->next < d->nb && d->b[d->next].final_at <= place)
        start_bucket(d, d->next++);
    poll(d);
}

void qkv__ddp_watch(qkv__ddp *d, qkv_ctx *ctx)
{
    const float *g = d->ps->grads, *end = g + d->ps->total;
    for (int k = 0; k < d->nb; k++)
        d->b[k].final_at = -1;
    int64_t place = 0;
    for (qkv_node *n = ctx->tape; n; n = n->prev, place++)
        for (int i = 0; i < n->n_in; i++) {
            const qkv_tensor *x = n->in[i];
            if (!x || !x->grad || x->grad < g || x->grad >= end)
                continue;
            int k = find_bucket(d, x->grad - g);
            if (k >= 0)
                d->b[k].final_at = place; /* the oldest node is the last */
        }
    qkv__ctx_set_backward_hook(ctx, after_node, d);
    d->bwd_t0 = qkv_now();
}

void qkv__ddp_begin(qkv__ddp *d)
{
    d->next = d->oldest = 0;
    d->failed = QKV_OK;
    d->msg[0] = '\0';
}

qkv_status qkv__ddp_finish(qkv__ddp *d, qkv_ctx *ctx, double *scalars, int n_scalars,
                           int skew_first)
{
    if (ctx)
        qkv__ctx_set_backward_hook(ctx, NULL, NULL);
    d->stats.started_in_backward += d->next;
    double t0 = qkv_now(), length = t0 - d->bwd_t0;
    for (int k = 0; k < d->nb; k++) /* where in backward each bucket could start */
        d->b[k].frac_sum += k < d->next && length > 0 ? d->b[k].started / length : 1.0;
    if (skew_first && !d->next) { /* the wait for the slowest rank, apart */
        if (qkv_comm_barrier(d->comm) != QKV_OK) {
            d->failed = qkv_error_status();
            snprintf(d->msg, sizeof d->msg, "%s", qkv_error());
        }
        double t1 = qkv_now();
        d->stats.skew_seconds += t1 - t0;
        d->stats.skew_steps++;
        t0 = t1;
    }
    while (d->next < d->nb)
        start_bucket(d, d->next++);
    int sreq = d->failed ? -1 : qkv_comm_iallreduce(d->comm, scalars, n_scalars, QKV_DT_F64);
    if (sreq < 0 && !d->failed) {
        d->failed = qkv_error_status();
        snprintf(d->msg, sizeof d->msg, "%s", qkv_error());
    }
    for (int k = d->oldest; k < d->nb && !d->failed; k++)
        if (d->b[k].req >= 0 && qkv_comm_wait(d->comm, d->b[k].req) != QKV_OK) {
            d->failed = qkv_error_status();
            snprintf(d->msg, sizeof d->msg, "%s", qkv_error());
        }
    if (!d->failed && qkv_comm_wait(d->comm, sreq) != QKV_OK) {
        d->failed = qkv_error_status();
        snprintf(d->msg, sizeof d->msg, "%s", qkv_error());
    }
    for (int k = 0; k < d->nb; k++)
        d->b[k].req = -1;
    d->stats.exposed_seconds += qkv_now() - t0;
    d->stats.steps++;
    return d->failed ? qkv_set_error(d->failed, "%s", d->msg) : QKV_OK;
}

qkv_train_comm_stats *qkv__ddp_stats(qkv__ddp *d) { return &d->stats; }

const char *qkv__ranks_note(const qkv_comm *c)
{
    static _Thread_local char note[64];
    if (qkv_comm_size(c) < 2)
        return "";
    snprintf(note, sizeof note, " on each of %d ranks (%s)", qkv_comm_size(c),
             qkv_comm_backend(c));
    return note;
}

void qkv__print_comm_summary(qkv_trainer *t)
{
    qkv_train_comm_stats c;
    qkv_trainer_comm_stats(t, &c);
    if (c.steps == 0)
        return;
    printf("all-reduce: %d buckets of %.2f MB in all per step; %.1f of them started while "
           "backward ran; %.3f s waited after backward over %lld steps (backward %.1f s)",
           c.buckets, (double)c.bytes / 1e6, (double)c.started_in_backward / (double)c.steps,
           c.exposed_seconds, (long long)c.steps, c.backward_seconds);
    if (c.skew_steps)
        printf(", %.3f s of it before, waiting for the slowest rank", c.skew_seconds);
    printf("\n");
    const qkv__ddp *d = qkv__trainer_ddp(t);
    if (d && c.started_in_backward) {
        printf("  buckets (KB) and where in backward each started:");
        for (int k = 0; k < d->nb; k++)
            printf(" %.0f@%.0f%%", (double)(d->b[k].hi - d->b[k].lo) * 4 / 1024,
                   100 * d->b[k].frac_sum / (double)c.steps);
        printf("\n");
    }
    fflush(stdout);
}
