/*
 * trainer.c - the one training loop (qkv_trainer, include/qkv.h).
 *
 * A model brings a loss callback and hooks; everything else is here: the
 * loader, the shards, the update, the schedule, the epoch's metrics, the
 * checkpoints and their exact resume, the NaN guard and the signals.
 *
 * Where a run stands is (epoch, batch, step): `epoch` epochs are done,
 * `batch` batches of the next one, `step` optimizer steps in all. A
 * checkpoint holds these, the epoch's running sums, the curves so far and
 * every extra store, so that a run stopped at any step boundary goes on as
 * if it had not stopped. No random stream carries state from one step to
 * the next: shard i of step s draws from a stream seeded by (seed, s, i),
 * and the loader seeds its order and its batches from (seed, epoch, batch).
 *
 * Over several ranks (a communicator) every rank runs this loop on its
 * rows of each global batch; rank 0's state is broadcast when a run
 * starts, the gradients and the step's sums are all-reduced (ddp.c) and
 * batch norm's running statistics merged from every rank's (shards.c),
 * the buffers broadcast after each step, so that all ranks stay equal and
 * everything they print or write is the global batch's. Only rank 0
 * writes files. A failing rank abandons the communicator so that it does
 * not wait for the others on its way out.
 */
#include "train_internal.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_STATES 8
#define PATH 4096

struct qkv_trainer {
    qkv_trainer_config cfg;
    qkv_optim *opt;
    qkv_shards *sh;
    qkv_loader *loader;
    qkv_ctx *eval;
    int n_shards;
    int64_t spe; /* steps (batches) per epoch */
    /* where the run stands */
    int64_t epoch, batch, step;
    int64_t saved_epoch; /* of the last checkpoint written or read, -1 none */
    /* the epoch's sums so far */
    double loss_sum, stats[QKV_TRAIN_STATS], seconds;
    int64_t examples, steps;
    /* this step, per shard */
    double *shard_loss;
    double (*shard_stats)[QKV_TRAIN_STATS];
    const void *cur;
    int64_t cur_n, cur_n_global;
    /* curves: history[e * n_curves + c] for epochs 1..epoch */
    int n_curves;
    float *history, *epochs_x;
    /* extra stores kept in checkpoints */
    struct {
        char prefix[64];
        qkv_params *ps;
    } state[MAX_STATES];
    int n_states;
    qkv_st_file *resumed; /* the checkpoint resumed from, until run */
    qkv_metrics *metrics;
    char dir[PATH], ckpt[PATH + 32];
    int interrupt;
    /* over several ranks */
    qkv_comm *comm;      /* NULL or a world of one: nothing to all-reduce */
    int rank, world;
    qkv__ddp *ddp;
    int rerun;           /* the NaN guard's second look: no collectives */
    double cur_weight;
    float *bufs;         /* (n_bufs) every buffer entry, for one broadcast */
    int64_t n_bufs;
    qkv_train_comm_stats cstats;
    int no_overlap;      /* cfg.no_overlap or $QKV_DDP_OVERLAP=0 */
    int fault_kind, fault_rank; /* $QKV_TEST_FAULT */
    int64_t fault_step;
};

/* ---- small helpers ---- */

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool writer(const qkv_trainer *t) { return t->cfg.out_dir && t->rank == 0; }

/* Ranks summing gradients through the communicator. */
static bool distributed(const qkv_trainer *t) { return t->ddp != NULL; }

qkv_status qkv_train_epoch_put(qkv_train_epoch *e, const char *name, double value)
{
    if (!e || !name)
        return qkv_set_error(QKV_ERR_ARG, "train_epoch_put: NULL argument");
    for (int i = 0; i < e->n_metrics; i++)
        if (!strcmp(e->names[i], name)) {
            e->values[i] = value;
            return QKV_OK;
        }
    if (e->n_metrics >= QKV_TRAIN_METRICS)
        return qkv_set_error(QKV_ERR_ARG, "train_epoch_put: more than %d metrics (adding %s)",
                             QKV_TRAIN_METRICS, name);
    e->names[e->n_metrics] = name;
    e->values[e->n_metrics++] = value;
    return QKV_OK;
}

double qkv_train_epoch_get(const qkv_train_epoch *e, const char *name)
{
    for (int i = 0; e && name && i < e->n_metrics; i++)
        if (!strcmp(e->names[i], name))
            return e->values[i];
    return NAN;
}

float qkv_trainer_lr_at(const qkv_trainer *t, int64_t step)
{
    const qkv_lr_schedule *s = &t->cfg.schedule;
    float base = t->cfg.optim.lr;
    int64_t total = t->spe * t->cfg.epochs;
    int64_t warmup = (int64_t)(s->warmup_epochs * (double)t->spe);
    switch (s->kind) {
    case QKV_LR_COSINE:
        return qkv_lr_cosine(base, step, warmup, total, s->min_lr);
    case QKV_LR_STEP: {
        int64_t every = (int64_t)(s->step_epochs * (double)t->spe);
        return qkv_lr_step_decay(base, step, every > 0 ? every : 1,
                                 s->gamma > 0 ? s->gamma : 0.1f);
    }
    case QKV_LR_INVERSE_SQRT:
        return base * qkv_lr_inverse_sqrt(s->d_model, step, warmup > 0 ? warmup : 1);
    case QKV_LR_CONSTANT:
        break;
    }
    return base;
}

/* ---- signals ---- */

static volatile sig_atomic_t g_signal;

static void on_signal(int sig) { g_signal = sig; }

typedef struct {
    struct sigaction intr, term;
} saved_handlers;

static void catch_signals(saved_handlers *old)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    g_signal = 0;
    sigaction(SIGINT, &sa, &old->intr);
    sigaction(SIGTERM, &sa, &old->term);
}

static void release_signals(const saved_handlers *old)
{
    sigaction(SIGINT, &old->intr, NULL);
    sigaction(SIGTERM, &old->term, NULL);
}

/* ---- checkpoints ---- */

#define STATE_PREFIX "__state__."
#define HISTORY_NAME "__trainer__.history"

static qkv_status save_checkpoint(qkv_trainer *t)
{
    if (!writer(t))
        return QKV_OK;
    qkv_st_writer *w = qkv_st_writer_new();
    if (!w)
        return qkv_error_status();
    qkv_checkpoint_info info = {.step = t->step, .epoch = t->epoch,
                                .config = t->cfg.config_json};
    qkv_status st = qkv__checkpoint_add(w, t->cfg.params, t->opt, &info);
    char name[512];
    for (int s = 0; s < t->n_states && !st; s++)
        for (int64_t i = 0; i < qkv_params_count(t->state[s].ps) && !st; i++) {
            qkv_tensor *x = qkv_params_at(t->state[s].ps, i);
            snprintf(name, sizeof name, STATE_PREFIX "%s.%s", t->state[s].prefix, x->name);
            st = qkv_st_add_tensor(w, name, x);
        }
    if (!st && t->epoch > 0 && t->n_curves > 0)
        st = qkv_st_add_f32(w, HISTORY_NAME, QKV_DT_F32, 2,
                            (int64_t[]){t->epoch, t->n_curves}, t->history);
    /* the epoch's running sums, exact (hexadecimal floats) */
    char meta[1024];
    int k = snprintf(meta, sizeof meta,
                     "batch=%lld examples=%lld steps=%lld shards=%d loss=%a seconds=%a stats=",
                     (long long)t->batch, (long long)t->examples, (long long)t->steps,
                     t->n_shards * t->world, t->loss_sum, t->seconds);
    for (int i = 0; i < QKV_TRAIN_STATS; i++)
        k += snprintf(meta + k, sizeof meta - (size_t)k, "%s%a", i ? "," : "", t->stats[i]);
    if (!st)
        st = qkv_st_set_meta(w, "trainer", meta);
    if (!st)
        st = qkv_st_write(w, t->ckpt);
    qkv_st_writer_free(w);
    if (!st)
        t->saved_epoch = t->epoch;
    return st;
}

static qkv_status parse_trainer_meta(qkv_trainer *t, const char *meta)
{
    long long batch, examples, steps;
    int shards, used = 0;
    char loss[64], secs[64];
    if (!meta || sscanf(meta, "batch=%lld examples=%lld steps=%lld shards=%d loss=%63s "
                              "seconds=%63s stats=%n",
                        &batch, &examples, &steps, &shards, loss, secs, &used) != 6 ||
        !used)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: the trainer's state is missing or malformed "
                             "(was it written by qkv_trainer?)", t->ckpt);
    if (batch < 0 || batch > t->spe)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: stopped at batch %lld of an epoch of %lld "
                             "batches: were the batch size or the data changed?",
                             t->ckpt, batch, (long long)t->spe);
    t->batch = batch, t->examples = examples, t->steps = steps;
    t->loss_sum = strtod(loss, NULL), t->seconds = strtod(secs, NULL);
    const char *p = meta + used;
    for (int i = 0; i < QKV_TRAIN_STATS; i++) {
        char *end;
        t->stats[i] = strtod(p, &end);
        p = *end == ',' ? end + 1 : end;
    }
    int global = t->n_shards * t->world;
    if (shards != global)
        fprintf(stderr, "qkv: note: %s was written with %d shards (threads times ranks), this "
                "run has %d: it goes on, but not bit for bit as the first run would have\n",
                t->ckpt, shards, global);
    return QKV_OK;
}

static qkv_status resume(qkv_trainer *t)
{
    qkv_st_file *f = qkv_st_open(t->ckpt);
    if (!f) { /* the message is copied: printing a buffer into itself is undefined */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        return qkv_set_error(qkv_error_status(), "cannot resume: %s", msg);
    }
    qkv_checkpoint_info info;
    qkv_status st = qkv__checkpoint_read(f, t->ckpt, t->cfg.params, t->opt, &info);
    if (!st)
        st = parse_trainer_meta(t, qkv_st_meta(f, "trainer"));
    if (!st) {
        t->epoch = info.epoch, t->step = info.step, t->saved_epoch = info.epoch;
        int64_t h = qkv_st_find(f, HISTORY_NAME), shape[QKV_MAX_DIMS];
        if (h >= 0 && t->n_curves > 0 && qkv_st_shape(f, h, shape) == 2 &&
            shape[0] == t->epoch && shape[0] <= t->cfg.epochs && shape[1] == t->n_curves)
            st = qkv_st_read_f32(f, h, t->history);
        else /* other curves than the first run's: the earlier epochs are not drawn */
            for (int64_t i = 0; i < t->epoch * t->n_curves && i < t->cfg.epochs * t->n_curves;
                 i++)
                t->history[i] = NAN;
    }
    if (st) {
        qkv_st_close(f);
        return st;
    }
    t->resumed = f;
    return QKV_OK;
}

qkv_status qkv_trainer_add_state(qkv_trainer *t, const char *prefix, qkv_params *ps)
{
    if (!t || !prefix || !ps)
        return qkv_set_error(QKV_ERR_ARG, "trainer_add_state: NULL argument");
    if (t->n_states >= MAX_STATES || strlen(prefix) >= sizeof t->state[0].prefix)
        return qkv_set_error(QKV_ERR_ARG, "trainer_add_state: %s",
                             t->n_states >= MAX_STATES ? "too many stores" : "prefix too long");
    for (int64_t i = 0; t->resumed && i < qkv_params_count(ps); i++) {
        qkv_tensor *x = qkv_params_at(ps, i);
        char name[512];
        snprintf(name, sizeof name, STATE_PREFIX "%s.%s", prefix, x->name);
        int64_t k = qkv_st_find(t->resumed, name);
        int64_t shape[QKV_MAX_DIMS];
        int nd = k >= 0 ? qkv_st_shape(t->resumed, k, shape) : -1;
        bool same = nd == x->ndim;
        for (int d = 0; same && d < nd; d++)
            same = shape[d] == x->shape[d];
        if (!same)
            return qkv_set_error(QKV_ERR_FORMAT, "%s: state %s is %s", t->ckpt, name,
                                 k < 0 ? "missing" : "of another shape than the model's");
        qkv_status st = qkv_st_read_f32(t->resumed, k, x->data);
        if (st)
            return st;
    }
    snprintf(t->state[t->n_states].prefix, sizeof t->state[0].prefix, "%s", prefix);
    t->state[t->n_states++].ps = ps;
    return QKV_OK;
}

/* ---- making and freeing ---- */

static int count_curves(const qkv_trainer_config *c)
{
    int n = 0;
    if (!c->curves)
        return 1;
    while (c->curves[n])
        n++;
    return n;
}

void qkv_trainer_free(qkv_trainer *t)
{
    if (!t)
        return;
    qkv_loader_free(t->loader);
    qkv_shards_free(t->sh);
    qkv_optim_free(t->opt);
    qkv_ctx_free(t->eval);
    qkv_st_close(t->resumed);
    qkv_metrics_close(t->metrics);
    qkv__free(t->shard_loss);
    qkv__free(t->shard_stats);
    qkv__free(t->history);
    qkv__free(t->epochs_x);
    qkv__ddp_free(t->ddp);
    qkv__free(t->bufs);
    qkv__free(t);
}

/* $QKV_TEST_FAULT=kill:RANK:STEP or hang:RANK:STEP (tests only): rank RANK
 * kills itself (SIGKILL, as the kernel's OOM killer would) or stops
 * answering when it reaches optimizer step STEP. */
enum { FAULT_NONE, FAULT_KILL, FAULT_HANG };

static void parse_fault(qkv_trainer *t)
{
    const char *f = getenv("QKV_TEST_FAULT");
    char kind[8];
    int rank;
    long long step;
    if (!f || sscanf(f, "%7[a-z]:%d:%lld", kind, &rank, &step) != 3)
        return;
    t->fault_kind = !strcmp(kind, "kill") ? FAULT_KILL : !strcmp(kind, "hang") ? FAULT_HANG
                                                                                : FAULT_NONE;
    t->fault_rank = rank, t->fault_step = step;
}

qkv_trainer *qkv_trainer_new(const qkv_trainer_config *cfg)
{
    if (!cfg || !cfg->params || !cfg->loss) {
        qkv_set_error(QKV_ERR_ARG, "trainer_new: %s is NULL",
                      !cfg ? "the config" : !cfg->params ? "params" : "the loss callback");
        return NULL;
    }
    if (!qkv_params_values(cfg->params, NULL)) {
        qkv_set_error(QKV_ERR_STATE, "trainer_new: the parameters are not allocated "
                                     "(qkv_params_alloc)");
        return NULL;
    }
    if (cfg->epochs < 0 || cfg->clip < 0 || !(cfg->optim.lr >= 0) || cfg->world < 0 ||
        cfg->rank < 0 || (cfg->world > 0 && cfg->rank >= cfg->world)) {
        qkv_set_error(QKV_ERR_ARG, "trainer_new: need epochs >= 0, clip >= 0, lr >= 0 and "
                                   "0 <= rank < world; got %lld, %g, %g, rank %d of %d",
                      (long long)cfg->epochs, (double)cfg->clip, (double)cfg->optim.lr,
                      cfg->rank, cfg->world);
        return NULL;
    }
    if (cfg->resume && !cfg->out_dir) {
        qkv_set_error(QKV_ERR_ARG, "trainer_new: resume needs out_dir (the checkpoint's)");
        return NULL;
    }
    qkv_trainer *t = qkv__calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->cfg = *cfg;
    t->saved_epoch = -1;
    t->comm = cfg->comm;
    t->rank = cfg->comm ? qkv_comm_rank(cfg->comm) : cfg->rank;
    t->world = cfg->comm ? qkv_comm_size(cfg->comm) : cfg->world > 0 ? cfg->world : 1;
    t->cfg.rank = t->rank, t->cfg.world = t->world;
    parse_fault(t);
    qkv_loader_config lc = cfg->data;
    lc.rank = t->rank, lc.world = t->world;
    t->n_curves = count_curves(cfg);
    int64_t E = cfg->epochs > 0 ? cfg->epochs : 1;
    if (!(t->opt = qkv_optim_new(cfg->params, &cfg->optim)) ||
        !(t->sh = qkv_shards_new(cfg->params, cfg->threads)) || !(t->loader = qkv_loader_new(&lc)) ||
        !(t->eval = qkv_ctx_new()))
        goto fail;
    t->n_shards = qkv_shards_count(t->sh);
    if (t->comm && t->world > 1) {
        size_t bucket = cfg->bucket_bytes;
        const char *kb = getenv("QKV_BUCKET_KB");
        if (!bucket)
            bucket = kb && atol(kb) > 0 ? (size_t)atol(kb) << 10 : (size_t)256 << 10;
        const char *ov = getenv("QKV_DDP_OVERLAP");
        t->no_overlap = cfg->no_overlap || (ov && !strcmp(ov, "0"));
        if (!(t->ddp = qkv__ddp_new(cfg->params, t->comm, bucket)))
            goto fail;
        for (int64_t i = 0; i < qkv_params_count(cfg->params); i++)
            if (qkv_params_flags(cfg->params, i) & QKV_PARAM_BUFFER)
                t->n_bufs += qkv_numel(qkv_params_at(cfg->params, i));
        if (t->n_bufs && !(t->bufs = qkv__malloc((size_t)t->n_bufs * sizeof(float))))
            goto fail;
        /* batch norm's running statistics from every rank's rows, as one
         * process's (buffers: the model may have batch norms) */
        if (t->n_bufs)
            qkv__shards_defer_bn_to_ranks(t->sh, t->comm);
    }
    t->spe = qkv_loader_batches(t->loader);
    t->shard_loss = qkv__calloc((size_t)t->n_shards, sizeof *t->shard_loss);
    t->shard_stats = qkv__calloc((size_t)t->n_shards, sizeof *t->shard_stats);
    t->history = qkv__calloc((size_t)(E * t->n_curves), sizeof *t->history);
    t->epochs_x = qkv__calloc((size_t)E, sizeof *t->epochs_x);
    if (!t->shard_loss || !t->shard_stats || !t->history || !t->epochs_x)
        goto fail;
    for (int64_t e = 0; e < E; e++)
        t->epochs_x[e] = (float)(e + 1);
    qkv_set_grad_enabled(t->eval, 0);
    qkv_set_training(t->eval, 0);
    qkv_shards_set_training(t->sh, 1);
    if (cfg->out_dir) {
        if (snprintf(t->dir, sizeof t->dir, "%s", cfg->out_dir) >= (int)sizeof t->dir - 32) {
            qkv_set_error(QKV_ERR_ARG, "trainer_new: out_dir is too long");
            goto fail;
        }
        snprintf(t->ckpt, sizeof t->ckpt, "%s/checkpoint.safetensors", t->dir);
        if (t->rank == 0 && qkv_make_dirs(t->dir) != QKV_OK)
            goto fail;
    }
    /* over ranks, rank 0 alone reads the checkpoint (the others may not
     * see its disk) and broadcasts it when the run starts */
    if (cfg->resume && (!distributed(t) || t->rank == 0) && resume(t) != QKV_OK)
        goto fail;
    return t;
fail:
    if (!qkv_error_status())
        qkv_set_error(QKV_ERR_NOMEM, "trainer_new: out of memory");
    if (t->world > 1)
        qkv_comm_abandon(t->comm); /* the others must not wait for this rank */
    qkv_trainer_free(t);
    return NULL;
}

/* ---- a step ---- */

/* Shard i of rank r draws as shard r S + i of one process would. */
static void seed_shards(qkv_trainer *t)
{
    for (int i = 0; i < t->n_shards; i++) {
        uint64_t global = (uint64_t)t->rank * (uint64_t)t->n_shards + (uint64_t)i;
        qkv_rng_seed(qkv_ctx_rng(qkv_shards_ctx(t->sh, i)),
                     mix(mix(mix(t->cfg.seed) ^ (uint64_t)t->step) ^ global));
    }
}

/* Shard i: the loss callback on its rows, then backward. */
static qkv_status shard_step(qkv_ctx *ctx, int i, int n, void *arg)
{
    qkv_trainer *t = arg;
    qkv_train_batch b = {.batch = t->cur, .n = t->cur_n, .n_global = t->cur_n_global,
                         .weight_global = t->cur_weight, .shard = i, .n_shards = n,
                         .step = t->step, .epoch = t->epoch, .stats = t->shard_stats[i]};
    qkv_shard_rows(t->cur_n, i, n, &b.lo, &b.hi);
    memset(t->shard_stats[i], 0, sizeof t->shard_stats[i]);
    t->shard_loss[i] = 0.0;
    if (b.hi == b.lo)
        return QKV_OK;
    qkv_clear_error();
    qkv_tensor *loss = t->cfg.loss(ctx, &b, t->cfg.user);
    if (!loss)
        return qkv_error_status() ? qkv_error_status()
                                  : qkv_set_error(QKV_ERR_STATE, "the loss callback returned "
                                                                 "NULL without an error");
    if (qkv_numel(loss) != 1) {
        char s[96];
        return qkv_set_error(QKV_ERR_SHAPE, "the loss callback returned %s, not a scalar",
                             qkv_shape_str(loss, s, sizeof s));
    }
    t->shard_loss[i] = qkv_get(loss, 0);
    /* one shard per rank: each bucket's all-reduce starts as soon as
     * backward is done with it; with several, after they are summed */
    bool watch = distributed(t) && n == 1 && !t->no_overlap && !t->rerun;
    if (watch)
        qkv__ddp_watch(t->ddp, ctx);
    double t0 = qkv_now();
    qkv_status st = qkv_backward(ctx, loss);
    if (watch) /* the hook goes with the step */
        qkv__ctx_set_backward_hook(ctx, NULL, NULL);
    if (i == 0)
        t->cstats.backward_seconds += qkv_now() - t0;
    return st;
}

/* A step whose loss or gradient norm is not finite: run it again with NaN
 * checks on every op to find the first one that made it, and stop. */
static qkv_status nan_stop(qkv_trainer *t, double loss, double norm)
{
    qkv_params_zero_grad(t->cfg.params);
    for (int i = 0; i < t->n_shards; i++)
        qkv_set_check_nan(qkv_shards_ctx(t->sh, i), 1);
    seed_shards(t);
    char found[768];
    t->rerun = 1; /* this rank's rows alone: no collective */
    if (qkv_shards_run(t->sh, shard_step, t) != QKV_OK)
        snprintf(found, sizeof found, "the first non-finite value: %s", qkv_error());
    else
        snprintf(found, sizeof found, "no op's output or gradient held one when the step ran "
                 "again%s%s", t->cfg.grad_hook ? " (the gradient hook may have made it)" : "",
                 distributed(t) ? " on this rank's rows (another rank's may hold it)" : "");
    t->rerun = 0;
    qkv__shards_drop_bn(t->sh);
    for (int i = 0; i < t->n_shards; i++)
        qkv_set_check_nan(qkv_shards_ctx(t->sh, i), 0);
    qkv_params_zero_grad(t->cfg.params);
    char kept[PATH + 96] = "no checkpoint was written yet";
    if (t->saved_epoch >= 0)
        snprintf(kept, sizeof kept, "the last good checkpoint is %s (epoch %lld)", t->ckpt,
                 (long long)t->saved_epoch);
    return qkv_set_error(QKV_ERR_NAN,
                         "step %lld (epoch %lld, batch %lld of %lld): the %s is %g; %s. The "
                         "step was not applied; %s. A lower learning rate or clipping may help",
                         (long long)t->step + 1, (long long)t->epoch + 1, (long long)t->batch + 1,
                         (long long)t->spe, isfinite(loss) ? "gradient norm" : "loss",
                         isfinite(loss) ? norm : loss, found, kept);
}

/* $QKV_TEST_FAULT reached: this rank dies or stops answering. */
static qkv_status inject_fault(qkv_trainer *t)
{
    fprintf(stderr, "qkv: rank %d: $QKV_TEST_FAULT: %s at step %lld\n", t->rank,
            t->fault_kind == FAULT_KILL ? "killing this rank" : "this rank stops answering",
            (long long)t->step);
    if (t->fault_kind == FAULT_KILL)
        raise(SIGKILL);
    while (!g_signal)
        pause();
    return qkv_set_error(QKV_ERR_INTERRUPTED, "$QKV_TEST_FAULT: rank %d hung at step %lld "
                         "until signal %d", t->rank, (long long)t->step, (int)g_signal);
}

/* Rank 0's buffers (batch norm's running statistics) to every rank, as
 * DistributedDataParallel broadcasts them before each forward: gathered
 * into one array, one broadcast. */
static void copy_buffers(qkv_trainer *t, int out)
{
    qkv_params *ps = t->cfg.params;
    int64_t at = 0;
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *x = qkv_params_at(ps, i);
        if (!(qkv_params_flags(ps, i) & QKV_PARAM_BUFFER))
            continue;
        size_t bytes = (size_t)qkv_numel(x) * sizeof(float);
        if (out)
            memcpy(x->data, t->bufs + at, bytes);
        else
            memcpy(t->bufs + at, x->data, bytes);
        at += qkv_numel(x);
    }
}

static qkv_status broadcast_buffers(qkv_trainer *t)
{
    if (!t->n_bufs)
        return QKV_OK;
    copy_buffers(t, 0);
    qkv_status st = qkv_comm_broadcast(t->comm, t->bufs, (size_t)t->n_bufs * sizeof(float), 0);
    if (!st)
        copy_buffers(t, 1);
    return st;
}

/* The step's sums over the rank's shards: loss, stats, rows. */
enum { SUM_LOSS, SUM_STATS, SUM_ROWS = SUM_STATS + QKV_TRAIN_STATS, N_SUMS };

static qkv_status train_step(qkv_trainer *t)
{
    if (t->fault_kind && t->fault_rank == t->rank && t->fault_step == t->step)
        return inject_fault(t);
    int64_t n = 0;
    const void *data = qkv_loader_next(t->loader, &n);
    if (!data)
        return qkv_error_status() ? qkv_error_status()
                                  : qkv_set_error(QKV_ERR_STATE, "the loader ended the epoch "
                                                  "after %lld of %lld batches",
                                                  (long long)t->batch, (long long)t->spe);
    int64_t B = t->cfg.data.batch_size, left = t->cfg.data.n_examples - t->batch * B;
    t->cur = data, t->cur_n = n, t->cur_n_global = left < B ? left : B;
    qkv_status st = QKV_OK;
    t->cur_weight = 0.0;
    if (t->cfg.batch_weight) {
        t->cur_weight = t->cfg.batch_weight(data, n, t->cfg.user);
        if (distributed(t) &&
            (st = qkv_comm_allreduce(t->comm, &t->cur_weight, 1, QKV_DT_F64)) != QKV_OK)
            return st;
    }
    qkv_optim_set_lr(t->opt, qkv_trainer_lr_at(t, t->step));
    if (t->cfg.pre_step && (st = t->cfg.pre_step(t, t->cfg.user)) != QKV_OK)
        return st;
    seed_shards(t);
    if (distributed(t))
        qkv__ddp_begin(t->ddp);
    st = qkv_shards_run(t->sh, shard_step, t);
    if (st) /* a ddp step under way ends with this rank abandoning the run */
        return st;
    double sums[N_SUMS] = {0};
    for (int i = 0; i < t->n_shards; i++) {
        sums[SUM_LOSS] += t->shard_loss[i];
        for (int k = 0; k < QKV_TRAIN_STATS; k++)
            sums[SUM_STATS + k] += t->shard_stats[i][k];
    }
    sums[SUM_ROWS] = (double)n;
    if (distributed(t) &&
        (st = qkv__ddp_finish(t->ddp, t->n_shards == 1 ? qkv_shards_ctx(t->sh, 0) : NULL, sums,
                              N_SUMS, t->no_overlap)) != QKV_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        return qkv_set_error(st, "step %lld, summing the gradients over ranks: %s",
                             (long long)t->step + 1, msg);
    }
    if (distributed(t) && t->n_bufs && (st = qkv__shards_merge_bn_ranks(t->sh)) != QKV_OK)
        return st;
    double loss = sums[SUM_LOSS];
    if (t->cfg.grad_hook && (st = t->cfg.grad_hook(t, t->cfg.user)) != QKV_OK)
        return st;
    /* with no clipping the norm is still taken: the NaN guard reads it */
    float norm = qkv_clip_grad_norm(t->cfg.params, t->cfg.clip > 0 ? t->cfg.clip : INFINITY);
    if (!isfinite(loss) || !isfinite(norm))
        return nan_stop(t, loss, norm);
    if ((st = qkv_optim_step(t->opt)) != QKV_OK)
        return st;
    if (t->cfg.post_step && (st = t->cfg.post_step(t, t->cfg.user)) != QKV_OK)
        return st;
    if (distributed(t) && (st = broadcast_buffers(t)) != QKV_OK)
        return st;
    qkv_params_zero_grad(t->cfg.params);
    t->loss_sum += loss;
    for (int k = 0; k < QKV_TRAIN_STATS; k++)
        t->stats[k] += sums[SUM_STATS + k];
    t->examples += (int64_t)sums[SUM_ROWS];
    t->steps++, t->batch++, t->step++;
    return QKV_OK;
}

/* ---- an epoch ---- */

static void fmt_value(char *buf, size_t n, double v)
{
    if (fabs(v) >= 1e4 || (v == floor(v) && fabs(v) >= 1))
        snprintf(buf, n, "%.0f", v);
    else
        snprintf(buf, n, "%.4g", v);
}

static bool is_rate(const char *name)
{
    return !strcmp(name, "examples_per_s") || !strcmp(name, "seconds") || !strcmp(name, "lr");
}

static void print_epoch(const qkv_trainer *t, const qkv_train_epoch *e)
{
    printf("epoch %lld/%lld:", (long long)e->epoch, (long long)e->epochs);
    for (int i = 0; i < e->n_metrics; i++) {
        if (is_rate(e->names[i]))
            continue;
        char v[32];
        fmt_value(v, sizeof v, e->values[i]);
        printf("%s %s %s", i ? "," : "", e->names[i], v);
    }
    printf(" (%.0f examples/s, %.1f s)\n", e->seconds > 0 ? (double)e->examples / e->seconds : 0.0,
           e->seconds);
    fflush(stdout);
    (void)t;
}

/* curves.png: each curve's history against the epoch (columns gathered,
 * as a series reads contiguous values). */
static qkv_status draw_curves(qkv_trainer *t)
{
    char path[PATH + 16];
    snprintf(path, sizeof path, "%s/curves.png", t->dir);
    int n = t->n_curves < 16 ? t->n_curves : 16;
    float *cols = qkv__malloc((size_t)(n * t->epoch + 1) * sizeof(float));
    if (!cols)
        return qkv_error_status();
    qkv_series s[16];
    for (int c = 0; c < n; c++) {
        for (int64_t e = 0; e < t->epoch; e++)
            cols[c * t->epoch + e] = t->history[e * t->n_curves + c];
        s[c] = (qkv_series){.name = t->cfg.curves ? t->cfg.curves[c] : "loss",
                            .x = t->epochs_x, .y = cols + c * t->epoch, .n = t->epoch};
    }
    qkv_status st = qkv_plot_lines(path, n, s, &(qkv_plot_opts){.title = t->cfg.title});
    qkv__free(cols);
    return st;
}

static qkv_status end_epoch(qkv_trainer *t)
{
    qkv_train_epoch e = {.epoch = t->epoch + 1, .epochs = t->cfg.epochs, .step = t->step,
                         .examples = t->examples, .seconds = t->seconds,
                         .loss = t->steps ? t->loss_sum / (double)t->steps : NAN};
    memcpy(e.stats, t->stats, sizeof e.stats);
    qkv_train_epoch_put(&e, "loss", e.loss);
    for (int i = 0; i < QKV_TRAIN_STATS; i++)
        if (t->cfg.stat_names[i])
            qkv_train_epoch_put(&e, t->cfg.stat_names[i], e.stats[i]);
    qkv_status st = QKV_OK;
    if (t->cfg.evaluate) {
        qkv_ctx_reset(t->eval);
        st = t->cfg.evaluate(t, &e, t->cfg.user);
        qkv_ctx_reset(t->eval);
        if (st)
            return st;
    }
    qkv_train_epoch_put(&e, "examples_per_s",
                        e.seconds > 0 ? (double)e.examples / e.seconds : NAN);
    qkv_train_epoch_put(&e, "seconds", e.seconds);
    qkv_train_epoch_put(&e, "lr", qkv_optim_lr(t->opt));
    for (int c = 0; c < t->n_curves; c++)
        t->history[t->epoch * t->n_curves + c] =
            (float)qkv_train_epoch_get(&e, t->cfg.curves ? t->cfg.curves[c] : "loss");
    t->epoch++, t->batch = 0;
    t->loss_sum = t->seconds = 0.0;
    memset(t->stats, 0, sizeof t->stats);
    t->examples = t->steps = 0;
    int every = t->cfg.print_every > 0 ? t->cfg.print_every : 1;
    if (t->cfg.rank == 0 && t->cfg.print_every >= 0 &&
        (e.epoch % every == 0 || e.epoch == 1 || e.epoch == e.epochs))
        print_epoch(t, &e);
    if (!writer(t))
        return QKV_OK;
    if (t->metrics && (st = qkv_metrics_write(t->metrics, e.epoch, e.n_metrics, e.names,
                                              e.values)) != QKV_OK)
        return st;
    /* the picture with the checkpoint: a short epoch would spend more time
     * drawing than training */
    int64_t save_every = t->cfg.save_every > 0 ? t->cfg.save_every : 1;
    if (e.epoch % save_every == 0 || e.epoch == e.epochs) {
        if ((st = draw_curves(t)) != QKV_OK || (st = save_checkpoint(t)) != QKV_OK)
            return st;
        if (t->cfg.save_model && (st = t->cfg.save_model(t, t->dir, t->cfg.user)) != QKV_OK)
            return st;
    }
    return QKV_OK;
}

static qkv_status interrupted(qkv_trainer *t)
{
    qkv_status st = save_checkpoint(t);
    if (st)
        return st;
    return qkv_set_error(QKV_ERR_INTERRUPTED,
                         "interrupted at epoch %lld, batch %lld of %lld (step %lld)%s%s%s",
                         (long long)t->epoch + 1, (long long)t->batch, (long long)t->spe,
                         (long long)t->step, writer(t) ? "; checkpoint written to " : "",
                         writer(t) ? t->ckpt : "", writer(t) ? ": resume to go on" : "");
}

static qkv_status run_epoch(qkv_trainer *t)
{
    qkv_status st = QKV_OK;
    if (t->cfg.epoch_start && (st = t->cfg.epoch_start(t, t->epoch, t->cfg.user)) != QKV_OK)
        return st;
    if ((st = qkv_loader_start_epoch_at(t->loader, t->epoch, t->batch)) != QKV_OK)
        return st;
    qkv_progress bar;
    char label[64], extra[96] = "";
    snprintf(label, sizeof label, "%s %lld/%lld", t->cfg.label ? t->cfg.label : "epoch",
             (long long)t->epoch + 1, (long long)t->cfg.epochs);
    qkv_progress_start(&bar, t->spe, label);
    bar.enabled = bar.enabled && t->cfg.rank == 0;
    double t0 = qkv_now(), seconds0 = t->seconds;
    while (t->batch < t->spe) {
        if (g_signal || t->interrupt) {
            t->seconds = seconds0 + (qkv_now() - t0);
            qkv_progress_finish(&bar, extra);
            return interrupted(t);
        }
        if ((st = train_step(t)) != QKV_OK) {
            qkv_progress_finish(&bar, extra);
            return st;
        }
        double el = seconds0 + (qkv_now() - t0);
        snprintf(extra, sizeof extra, "loss %.4g %.0f ex/s", t->loss_sum / (double)t->steps,
                 el > 0 ? (double)t->examples / el : 0.0);
        qkv_progress_update(&bar, t->batch, extra);
    }
    t->seconds = seconds0 + (qkv_now() - t0);
    qkv_progress_finish(&bar, extra);
    return end_epoch(t);
}

/* Everything a run's state holds, from rank 0 to the others: where the
 * run stands and its sums, the parameters and buffers, the optimizer's
 * moments and step count, the curves and every extra store. On a fresh
 * run this makes the initial weights equal whatever each rank drew; on a
 * resumed one it hands the checkpoint rank 0 read to the rest. */
static qkv_status broadcast_state(qkv_trainer *t)
{
    struct {
        int64_t epoch, batch, step, saved_epoch, examples, steps, optim_steps;
        double loss_sum, seconds, stats[QKV_TRAIN_STATS];
    } pos = {t->epoch, t->batch, t->step, t->saved_epoch, t->examples, t->steps,
             qkv_optim_steps(t->opt), t->loss_sum, t->seconds, {0}};
    memcpy(pos.stats, t->stats, sizeof pos.stats);
    qkv_status st = qkv_comm_broadcast(t->comm, &pos, sizeof pos, 0);
    if (st)
        return st;
    t->epoch = pos.epoch, t->batch = pos.batch, t->step = pos.step;
    t->saved_epoch = pos.saved_epoch, t->examples = pos.examples, t->steps = pos.steps;
    t->loss_sum = pos.loss_sum, t->seconds = pos.seconds;
    memcpy(t->stats, pos.stats, sizeof t->stats);
    qkv_optim_set_steps(t->opt, pos.optim_steps);
    int64_t n = 0;
    float *v = qkv_params_values(t->cfg.params, &n);
    if ((st = qkv_comm_broadcast(t->comm, v, (size_t)n * sizeof(float), 0)) != QKV_OK)
        return st;
    for (int which = 0; which < 2; which++) {
        float *m = qkv_optim_state(t->opt, which, &n);
        if (m && (st = qkv_comm_broadcast(t->comm, m, (size_t)n * sizeof(float), 0)) != QKV_OK)
            return st;
    }
    int64_t E = t->cfg.epochs > 0 ? t->cfg.epochs : 1;
    if ((st = qkv_comm_broadcast(t->comm, t->history,
                                 (size_t)(E * t->n_curves) * sizeof(float), 0)) != QKV_OK)
        return st;
    for (int k = 0; k < t->n_states; k++) {
        v = qkv_params_values(t->state[k].ps, &n);
        if (v && (st = qkv_comm_broadcast(t->comm, v, (size_t)n * sizeof(float), 0)) != QKV_OK)
            return st;
    }
    return QKV_OK;
}

qkv_status qkv_trainer_run(qkv_trainer *t)
{
    if (!t)
        return qkv_set_error(QKV_ERR_ARG, "trainer_run: the trainer is NULL");
    qkv_st_close(t->resumed);
    t->resumed = NULL;
    if (writer(t) && !t->metrics) {
        char path[PATH + 16];
        snprintf(path, sizeof path, "%s/metrics.jsonl", t->dir);
        t->metrics = t->cfg.resume ? qkv_metrics_append(path) : qkv_metrics_open(path);
        if (!t->metrics)
            return qkv_error_status();
    }
    saved_handlers old;
    catch_signals(&old);
    qkv__comm_set_cancel(t->comm, &g_signal);
    qkv_status st = distributed(t) ? broadcast_state(t) : QKV_OK;
    while (t->epoch < t->cfg.epochs && st == QKV_OK)
        st = run_epoch(t);
    /* epochs 0: the model as initialised (a baseline to evaluate) */
    if (st == QKV_OK && t->cfg.epochs == 0 && writer(t) && t->cfg.save_model)
        st = t->cfg.save_model(t, t->dir, t->cfg.user);
    qkv__comm_set_cancel(t->comm, NULL);
    release_signals(&old);
    t->interrupt = 0;
    if (st && distributed(t)) { /* the others must not wait for this rank */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        qkv_comm_abandon(t->comm);
        qkv_set_error(st, "%s", msg);
    }
    return st;
}

/* ---- accessors ---- */

qkv_optim *qkv_trainer_optim(qkv_trainer *t) { return t ? t->opt : NULL; }
qkv_params *qkv_trainer_params(qkv_trainer *t) { return t ? t->cfg.params : NULL; }
qkv_ctx *qkv_trainer_eval_ctx(qkv_trainer *t) { return t ? t->eval : NULL; }
qkv_shards *qkv_trainer_shards(qkv_trainer *t) { return t ? t->sh : NULL; }
const void *qkv_trainer_batch(const qkv_trainer *t, int64_t *n, int64_t *n_global)
{
    if (n)
        *n = t && t->cur ? t->cur_n : 0;
    if (n_global)
        *n_global = t && t->cur ? t->cur_n_global : 0;
    return t ? t->cur : NULL;
}
qkv_comm *qkv_trainer_comm(const qkv_trainer *t) { return t ? t->comm : NULL; }
qkv__ddp *qkv__trainer_ddp(qkv_trainer *t) { return t ? t->ddp : NULL; }

void qkv_trainer_comm_stats(qkv_trainer *t, qkv_train_comm_stats *s)
{
    if (!s)
        return;
    *s = (qkv_train_comm_stats){0};
    if (!t || !t->ddp)
        return;
    *s = *qkv__ddp_stats(t->ddp);
    s->backward_seconds = t->cstats.backward_seconds;
}
int64_t qkv_trainer_epoch(const qkv_trainer *t) { return t ? t->epoch : 0; }
int64_t qkv_trainer_step(const qkv_trainer *t) { return t ? t->step : 0; }
int64_t qkv_trainer_steps_per_epoch(const qkv_trainer *t) { return t ? t->spe : 0; }
void qkv_trainer_interrupt(qkv_trainer *t)
{
    if (t)
        t->interrupt = 1;
}
