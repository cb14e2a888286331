/*
 * loader.c - mini-batches of a shuffled order, prepared one ahead by a
 * worker thread.
 *
 * Two batch buffers (slots): batch b lives in slot b % 2. While the caller
 * works on batch b, the worker fills b + 1 into the other slot, then sleeps:
 * it may not fill b + 2 before the caller has let go of b, which it does by
 * asking for the next batch. Everything the two threads share is guarded by
 * one mutex, and each side sleeps on its own condition variable: the worker
 * on `to_worker` (a slot came free, an epoch began, quit), the caller on
 * `to_caller` (a batch is ready, a fill failed, the worker went idle).
 *
 * What a batch holds depends on (seed, epoch, batch index) only, never on
 * timing: the order of epoch e and the rng passed to the fill for batch b are
 * seeded from those numbers. Over several processes (world > 1), every rank
 * shuffles the same order and prepares its own rows of each global batch;
 * its fill's rng is also seeded from its rank.
 */
#include "io_internal.h"

#include <pthread.h>
#include <stdio.h>

struct qkv_loader {
    qkv_loader_config cfg; /* read-only after creation */
    int64_t n_batches;     /* per epoch */
    int64_t *order;        /* (n_examples) this epoch's order; the worker
                              reads it only while busy, the caller writes it
                              only while the worker is not */
    void *slot[2];         /* (batch_bytes) each */

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t to_worker, to_caller;

    /* guarded by mu */
    int64_t epoch;        /* -1 before the first qkv_loader_start_epoch */
    int64_t filled;       /* batches of this epoch ready (0..filled-1) */
    int64_t taken;        /* batches handed to the caller this epoch */
    int64_t slot_n[2];    /* examples in each slot */
    int busy;             /* the worker is inside cfg.fill */
    int quit;
    qkv_status failed;    /* the failed fill's status; batch `filled` failed */
    char msg[1024];       /* its message, copied off the worker's thread */
};

/* splitmix64's finaliser: nearby inputs give unrelated outputs. */
static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Stream 0 of an epoch shuffles its order; stream b + 1 is batch b's rng. */
static void seed_stream(qkv_rng *r, uint64_t seed, int64_t epoch, int64_t stream)
{
    qkv_rng_seed(r, mix(mix(mix(seed) ^ (uint64_t)epoch) ^ (uint64_t)stream));
}

/* Batch `filled` may go into its slot once the caller has taken the batch
 * before it, i.e. has let go of the one two back that shares the slot. */
static int worker_has_work(const qkv_loader *l)
{
    return l->epoch >= 0 && l->failed == QKV_OK && l->filled < l->n_batches &&
           l->filled <= l->taken;
}

static void *worker_main(void *arg)
{
    qkv_loader *l = arg;
    const qkv_loader_config *c = &l->cfg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->quit && !worker_has_work(l))
            pthread_cond_wait(&l->to_worker, &l->mu);
        if (l->quit)
            break;
        int64_t b = l->filled, epoch = l->epoch;
        int64_t first = b * c->batch_size;
        int64_t n = c->n_examples - first < c->batch_size ? c->n_examples - first
                                                           : c->batch_size;
        if (c->world > 1) { /* this rank's rows, as qkv_shard_rows cuts them */
            int64_t per = n / c->world, extra = n % c->world;
            first += c->rank * per + (c->rank < extra ? c->rank : extra);
            n = per + (c->rank < extra);
        }
        l->busy = 1;
        pthread_mutex_unlock(&l->mu);

        qkv_rng rng;
        seed_stream(&rng, c->seed, epoch, b + 1);
        if (c->world > 1 && !c->rng_per_example)
            qkv_rng_seed(&rng, mix(qkv_rng_u64(&rng) ^ (uint64_t)c->rank));
        qkv_clear_error(); /* so that a fill failing silently is told apart */
        qkv_status s = c->fill(c->user, l->order + first, n, &rng, l->slot[b % 2]);

        pthread_mutex_lock(&l->mu);
        l->busy = 0;
        if (s == QKV_OK) {
            l->slot_n[b % 2] = n;
            l->filled = b + 1;
        } else {
            l->failed = s;
            snprintf(l->msg, sizeof l->msg, "data loader: epoch %lld, batch %lld: %s",
                     (long long)epoch, (long long)b,
                     qkv_error()[0] ? qkv_error() : "the fill callback failed");
        }
        pthread_cond_broadcast(&l->to_caller);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

qkv_loader *qkv_loader_new(const qkv_loader_config *cfg)
{
    if (!cfg || !cfg->fill) {
        qkv_set_error(QKV_ERR_ARG, "qkv_loader_new: %s is NULL", cfg ? "fill" : "cfg");
        return NULL;
    }
    if (cfg->world < 0 || cfg->rank < 0 || (cfg->world > 0 && cfg->rank >= cfg->world)) {
        qkv_set_error(QKV_ERR_ARG, "qkv_loader_new: rank %d of world %d: need 0 <= rank < world",
                      cfg->rank, cfg->world);
        return NULL;
    }
    if (cfg->n_examples <= 0 || cfg->batch_size <= 0 || cfg->batch_bytes == 0 ||
        (uint64_t)cfg->n_examples > SIZE_MAX / sizeof(int64_t)) {
        qkv_set_error(QKV_ERR_ARG,
                      "qkv_loader_new: need n_examples > 0, batch_size > 0, batch_bytes > 0; "
                      "got %lld, %lld, %zu",
                      (long long)cfg->n_examples, (long long)cfg->batch_size, cfg->batch_bytes);
        return NULL;
    }
    qkv_loader *l = qkv__calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->cfg = *cfg;
    l->n_batches = cfg->drop_last ? cfg->n_examples / cfg->batch_size
                                  : (cfg->n_examples + cfg->batch_size - 1) / cfg->batch_size;
    l->epoch = -1;
    l->order = qkv__malloc((size_t)cfg->n_examples * sizeof(int64_t));
    l->slot[0] = l->order ? qkv__aligned_alloc(cfg->batch_bytes) : NULL;
    l->slot[1] = l->slot[0] ? qkv__aligned_alloc(cfg->batch_bytes) : NULL;
    if (!l->slot[1]) {
        qkv__free(l->slot[0]);
        qkv__free(l->order);
        qkv__free(l);
        return NULL;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->to_worker, NULL);
    pthread_cond_init(&l->to_caller, NULL);
    int rc = pthread_create(&l->thread, NULL, worker_main, l);
    if (rc != 0) {
        qkv_set_error(QKV_ERR_NOMEM, "qkv_loader_new: cannot start a thread: %s", strerror(rc));
        pthread_cond_destroy(&l->to_caller);
        pthread_cond_destroy(&l->to_worker);
        pthread_mutex_destroy(&l->mu);
        qkv__free(l->slot[1]);
        qkv__free(l->slot[0]);
        qkv__free(l->order);
        qkv__free(l);
        return NULL;
    }
    return l;
}

qkv_status qkv_loader_start_epoch(qkv_loader *l, int64_t epoch)
{
    return qkv_loader_start_epoch_at(l, epoch, 0);
}

qkv_status qkv_loader_start_epoch_at(qkv_loader *l, int64_t epoch, int64_t first)
{
    if (!l || epoch < 0)
        return qkv_set_error(QKV_ERR_ARG, "qkv_loader_start_epoch: %s",
                             l ? "epoch is negative" : "loader is NULL");
    if (first < 0 || first > l->n_batches)
        return qkv_set_error(QKV_ERR_ARG,
                             "qkv_loader_start_epoch: batch %lld is outside the epoch's %lld",
                             (long long)first, (long long)l->n_batches);
    pthread_mutex_lock(&l->mu);
    /* A fill of the old epoch may still be reading the order. */
    while (l->busy)
        pthread_cond_wait(&l->to_caller, &l->mu);
    for (int64_t i = 0; i < l->cfg.n_examples; i++)
        l->order[i] = i;
    if (l->cfg.shuffle) {
        qkv_rng rng;
        seed_stream(&rng, l->cfg.seed, epoch, 0);
        qkv_rng_shuffle(&rng, l->order, l->cfg.n_examples);
    }
    l->epoch = epoch;
    l->filled = l->taken = first;
    l->failed = QKV_OK;
    l->msg[0] = '\0';
    pthread_cond_signal(&l->to_worker);
    pthread_mutex_unlock(&l->mu);
    return QKV_OK;
}

const void *qkv_loader_next(qkv_loader *l, int64_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!l) {
        qkv_set_error(QKV_ERR_ARG, "qkv_loader_next: loader is NULL");
        return NULL;
    }
    const void *batch = NULL;
    pthread_mutex_lock(&l->mu);
    int64_t b = l->taken;
    if (l->epoch < 0) {
        qkv_set_error(QKV_ERR_STATE, "qkv_loader_next: no epoch started "
                                     "(call qkv_loader_start_epoch first)");
    } else {
        while (b < l->n_batches && l->filled <= b && l->failed == QKV_OK)
            pthread_cond_wait(&l->to_caller, &l->mu);
        if (b < l->filled) {
            batch = l->slot[b % 2];
            if (n_out)
                *n_out = l->slot_n[b % 2];
            l->taken = b + 1; /* frees batch b - 1's slot for batch b + 1 */
            pthread_cond_signal(&l->to_worker);
        } else if (l->failed != QKV_OK) {
            qkv_set_error(l->failed, "%s", l->msg);
        } else {
            qkv_clear_error(); /* the end of the epoch is not an error */
        }
    }
    pthread_mutex_unlock(&l->mu);
    return batch;
}

int64_t qkv_loader_batches(const qkv_loader *l) { return l ? l->n_batches : 0; }

void qkv_loader_free(qkv_loader *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->quit = 1;
    pthread_cond_signal(&l->to_worker);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    pthread_cond_destroy(&l->to_caller);
    pthread_cond_destroy(&l->to_worker);
    pthread_mutex_destroy(&l->mu);
    qkv__free(l->slot[1]);
    qkv__free(l->slot[0]);
    qkv__free(l->order);
    qkv__free(l);
}
