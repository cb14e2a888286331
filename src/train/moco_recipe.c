/*
 * moco_recipe.c - MoCo pretraining on Fashion-MNIST's training images
 * without their labels, through the library's trainer: what `qkv train
 * moco` runs (docs/moco.md).
 *
 * The model's part: a fill that makes two augmented views of each image
 * on the loader's thread; a pre-step hook that computes the key encoder's
 * outputs for the whole batch (sharded, no gradients; in a shuffled order
 * for shuffle BN); a loss callback (qkv_moco_loss of a shard's rows, as its
 * share of the batch's mean); a post-step hook (the momentum update, the
 * enqueue); the key encoder and the queue kept in checkpoints; and an
 * evaluation callback, the kNN monitor on the test set.
 *
 * Over several ranks (docs/distributed.md) each rank holds B / p images of
 * each global batch of B, and the keys are the global batch's on every
 * rank, as facebookresearch/moco's DDP: with shuffle BN every rank's
 * second views are all-gathered, a permutation of the B images is drawn
 * from (seed, step) by every rank alike, rank r's key encoder runs on
 * positions [r B / p, (r + 1) B / p) of it, and the keys, all-gathered,
 * are put back in order (_batch_shuffle_ddp, _batch_unshuffle_ddp); without
 * it each rank encodes its own images and the keys are all-gathered
 * (concat_all_gather). Every rank then enqueues the same B keys, and v3's
 * negatives are all B.
 */
#include "train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define EVAL_BATCH 500
#define QKV_MAX_EMBED_SHARDS 256

/* ---- features and the kNN monitor ---- */

/* Features of images [lo, hi) of d into out rows lo.. on one context */
static qkv_status embed_rows(qkv_ctx *ctx, const qkv_moco *m, const qkv_mnist *d, int64_t lo,
                             int64_t hi, int normalize, int64_t grid, float *out)
{
    int64_t S = qkv_moco_image_size(m), P = S * S, F = m->features * grid * grid;
    qkv_status st = QKV_OK;
    for (int64_t at = lo; at < hi && !st; at += EVAL_BATCH) {
        int64_t b = hi - at < EVAL_BATCH ? hi - at : EVAL_BATCH;
        qkv_ctx_reset(ctx);
        qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){b, 1, S, S});
        if (!x)
            return qkv_error_status();
        for (int64_t i = 0; i < b && !st; i++)
            st = qkv_mnist_image(x->data + i * P, d, at + i, S, NULL, NULL);
        qkv_tensor *f = st ? NULL : qkv_moco_features_grid(ctx, m, x, grid);
        if (f && normalize)
            f = qkv_l2_normalize(ctx, f, 1, 1e-12f);
        if (!st && !f)
            st = qkv_error_status();
        if (!st)
            memcpy(out + at * F, f->data, (size_t)(b * F) * sizeof(float));
    }
    qkv_ctx_reset(ctx);
    return st;
}

typedef struct {
    const qkv_moco *m;
    const qkv_mnist *d;
    int64_t lo, n;
    int normalize;
    int64_t grid;
    float *out;
} embed_job;

static qkv_status embed_shard(qkv_ctx *ctx, int i, int n, void *arg)
{
    const embed_job *j = arg;
    int64_t lo, hi;
    qkv_shard_rows(j->n, i, n, &lo, &hi);
    return embed_rows(ctx, j->m, j->d, j->lo + lo, j->lo + hi, j->normalize, j->grid, j->out);
}

/* Features of images [lo, hi) of d into out rows lo..: qkv_moco_embed's
 * work on part of the images */
static qkv_status embed_range(qkv_ctx *ctx, qkv_shards *sh, const qkv_moco *m,
                              const qkv_mnist *d, int64_t lo, int64_t hi, int normalize,
                              int64_t grid, float *out);

qkv_status qkv_moco_embed(qkv_ctx *ctx, qkv_shards *sh, const qkv_moco *m, const qkv_mnist *d,
                          int64_t n, int normalize, float *out)
{
    return qkv_moco_embed_grid(ctx, sh, m, d, n, normalize, 1, out);
}

qkv_status qkv_moco_embed_grid(qkv_ctx *ctx, qkv_shards *sh, const qkv_moco *m,
                               const qkv_mnist *d, int64_t n, int normalize, int64_t grid,
                               float *out)
{
    if ((!ctx && !sh) || !m || !d || !out || n < 0 || n > d->n || grid < 1)
        return qkv_set_error(QKV_ERR_ARG, "moco_embed: bad arguments");
    return embed_range(ctx, sh, m, d, 0, n, normalize, grid, out);
}

static qkv_status embed_range(qkv_ctx *ctx, qkv_shards *sh, const qkv_moco *m,
                              const qkv_mnist *d, int64_t lo, int64_t hi, int normalize,
                              int64_t grid, float *out)
{
    int shards = sh ? qkv_shards_count(sh) : 1;
    int was[QKV_MAX_EMBED_SHARDS][2];
    if (shards > QKV_MAX_EMBED_SHARDS)
        return qkv_set_error(QKV_ERR_ARG, "moco_embed: more than %d shards",
                             QKV_MAX_EMBED_SHARDS);
    for (int i = 0; i < shards; i++) {
        qkv_ctx *c = sh ? qkv_shards_ctx(sh, i) : ctx;
        was[i][0] = qkv_set_training(c, 0), was[i][1] = qkv_set_grad_enabled(c, 0);
    }
    embed_job job = {m, d, lo, hi - lo, normalize, grid, out};
    qkv_status st = sh ? qkv_shards_run(sh, embed_shard, &job)
                       : embed_rows(ctx, m, d, lo, hi, normalize, grid, out);
    for (int i = 0; i < shards; i++) {
        qkv_ctx *c = sh ? qkv_shards_ctx(sh, i) : ctx;
        qkv_set_training(c, was[i][0]), qkv_set_grad_enabled(c, was[i][1]);
    }
    return st;
}

/* ---- presets ---- */

qkv_status qkv_moco_recipe_preset(qkv_moco_recipe *r, const char *name)
{
    if (!r || !name)
        return qkv_set_error(QKV_ERR_ARG, "moco_recipe_preset: NULL argument");
    qkv_moco_recipe keep = *r;
    /* the encoder: the ViT of `qkv train vit` (28x28 in patches of 4, width
     * 96, 4 blocks) */
    qkv_vit_config vit = {.image_size = 28, .patch_size = 4, .in_channels = 1, .hidden_dim = 96,
                          .mlp_dim = 192, .num_heads = 4, .num_layers = 4};
    /* MoCo v2's views for 28x28 grey images: the blur's sigma scaled from
     * 224 pixels to 28 */
    qkv_view_aug v2aug = {.crop_min = 0.2f, .crop_max = 1.0f, .jitter = 0.8f,
                          .brightness = 0.4f, .contrast = 0.4f, .blur = 0.5f,
                          .blur_sigma_min = 0.1f, .blur_sigma_max = 1.0f, .flip = 0.5f};
    if (!strcmp(name, "default")) /* what `qkv train moco` runs with no options */
        name = "v2-resnet";
    if (!strcmp(name, "v2") || !strcmp(name, "v1") || !strcmp(name, "demo")) {
        bool v1 = !strcmp(name, "v1");
        *r = (qkv_moco_recipe){
            .model = {.version = v1 ? 1 : 2, .arch = QKV_MOCO_VIT, .vit = vit, .dim = 128,
                      .K = 4096, .T = v1 ? 0.07f : 0.2f, .bn_splits = 1},
            .epochs = 40, .batch_size = 256, .optimizer = QKV_ADAMW, .lr = 1e-3,
            .weight_decay = 0.05, .warmup_epochs = 2, .cosine = 1, .momentum = 0.99f,
            .aug = v2aug, .knn_k = 200, .knn_t = 0.1f, .knn_every = 1};
        if (v1)
            r->aug.blur = 0.0f;
        if (!strcmp(name, "demo")) {
            r->epochs = 2, r->limit = 6000, r->eval_limit = 2000, r->knn_bank = 6000;
            r->warmup_epochs = 0.2;
        }
    } else if (!strcmp(name, "v3")) {
        /* moco-v3's ViT recipe: AdamW, no queue, momentum 0.99 up to 1 on a
         * cosine, T 0.2, a projector and predictor of hidden width 4 F */
        *r = (qkv_moco_recipe){
            .model = {.version = 3, .arch = QKV_MOCO_VIT, .vit = vit, .dim = 128,
                      .mlp_dim = 384, .T = 0.2f, .bn_splits = 1, .vit_v3_init = 1},
            .epochs = 30, .batch_size = 256, .optimizer = QKV_ADAMW, .lr = 1e-3,
            .weight_decay = 0.1, .warmup_epochs = 2, .cosine = 1, .momentum = 0.99f,
            .momentum_cosine = 1, .aug = v2aug, .knn_k = 200, .knn_t = 0.1f, .knn_every = 1};
    } else if (!strcmp(name, "v1-resnet") || !strcmp(name, "v2-resnet") ||
               !strcmp(name, "v3-resnet")) {
        /* MoCo's CIFAR demo: ResNet-18 with a 3x3 stem and no max pool,
         * shuffle BN in 8 groups, SGD lr 0.06 (batch 512 there, 256 here,
         * so 0.03), momentum 0.9, weight decay 5e-4, m 0.99, K 4096, T 0.1
         * (v2's 0.2 probed 1.5 points lower after 3 epochs), cosine; sized
         * for an hour on two cores (`qkv train moco` with no options):
         * width 16 (16 .. 128 planes), 16 epochs, the kNN monitor's bank
         * the first 10000 training images (docs/moco.md) */
        int version = name[1] - '0';
        *r = (qkv_moco_recipe){
            .model = {.version = version, .arch = QKV_MOCO_RESNET, .image_size = 28,
                      .resnet = {.depth = 18, .width = 16, .in_channels = 1, .small_stem = 1},
                      .dim = 128, .mlp_dim = version == 3 ? 1024 : 0,
                      .K = version == 3 ? 0 : 4096,
                      .T = version == 1 ? 0.07f : version == 2 ? 0.1f : 1.0f,
                      .bn_splits = version == 3 ? 1 : 8},
            .epochs = 16, .batch_size = 256, .optimizer = QKV_SGD, .lr = 0.03,
            .sgd_momentum = 0.9f, .weight_decay = 5e-4, .cosine = 1, .momentum = 0.99f,
            .momentum_cosine = version == 3, .aug = v2aug, .knn_k = 200, .knn_t = 0.1f,
            .knn_every = 1, .knn_bank = 10000};
        if (version == 1)
            r->aug.blur = 0.0f;
    } else
        return qkv_set_error(QKV_ERR_ARG, "moco: unknown preset '%s' (default, v1, v2, v3, "
                             "demo, v1-resnet, v2-resnet, v3-resnet)", name);
    r->data_dir = keep.data_dir, r->out_dir = keep.out_dir, r->seed = keep.seed;
    r->resume = keep.resume, r->threads = keep.threads, r->quiet = keep.quiet;
    r->comm = keep.comm, r->sync_bn = keep.sync_bn;
    if (keep.limit)
        r->limit = keep.limit;
    if (keep.eval_limit)
        r->eval_limit = keep.eval_limit;
    return QKV_OK;
}

/* ---- the model's part ---- */

typedef struct {
    const qkv_moco_recipe *r;
    qkv_moco m;
    qkv_mnist train, test;
    int64_t n_train, n_test, n_bank, B, S, P, D;
    qkv_comm *comm;         /* NULL: one process                            */
    int rank, world;
    float *k1, *k2;         /* (B, D) the global batch's keys (pre_step)    */
    int64_t *perm;          /* (B) the key encoder's order                  */
    qkv_moco_batch batch;   /* the step's, for the loss                     */
    qkv_moco_batch kb;      /* the key encoder's batch...                   */
    int64_t key_lo, key_n;  /* ...and its rows this rank encodes            */
    qkv_shards *keys;       /* the key encoder's shards                     */
    float *x2_all;          /* (B, P) every rank's second views (shuffle BN) */
    float *send, *gather;   /* all-gathers: (B / p, D) and (B, D) keys; the
                               kNN bank's (per, F) and (p per, F)           */
    int64_t gather_floats;
    float *bank, *queries;  /* kNN: features (n_bank, F), (n_test, F)       */
    int64_t *bank_labels, *pred;
    double knn_acc;
    uint64_t seed;
} moco_run;

/* A batch: the first views (B, 1, S, S), then the second ones; each
 * image's views from a stream of its own (the loader's rng_per_example),
 * so that a rank's images are augmented as in one process */
static qkv_status fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    const moco_run *v = user;
    float *x1 = batch, *x2 = x1 + v->B * v->P;
    float src[64 * 64], scratch[64 * 64];
    for (int64_t i = 0; i < n; i++) {
        qkv_rng mine;
        qkv_rng_split(&mine, rng, (uint64_t)idx[i]);
        qkv_status st = qkv_mnist_image(src, &v->train, idx[i], v->S, NULL, NULL);
        if (!st)
            st = qkv_augment_view(x1 + i * v->P, v->S, v->S, src, 1, v->S, v->S, &v->r->aug,
                                  &mine, scratch);
        if (!st)
            st = qkv_augment_view(x2 + i * v->P, v->S, v->S, src, 1, v->S, v->S, &v->r->aug,
                                  &mine, scratch);
        if (st)
            return st;
    }
    return QKV_OK;
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static qkv_status key_shard(qkv_ctx *ctx, int i, int n, void *arg)
{
    moco_run *v = arg;
    int64_t lo, hi;
    qkv_shard_rows(v->key_n, i, n, &lo, &hi);
    return qkv_moco_keys(ctx, &v->m, &v->kb, v->key_lo + lo, v->key_lo + hi);
}

/* rows [lo, lo + n) of the (B, D) keys k, every rank's, into k on every
 * rank (the ranks' rows in rank order) */
static qkv_status gather_keys(moco_run *v, float *k, int64_t lo, int64_t n)
{
    size_t bytes = (size_t)(n * v->D) * sizeof(float);
    memcpy(v->send, k + lo * v->D, bytes);
    return qkv_comm_allgather(v->comm, v->send, bytes, k);
}

static qkv_status keys_of_batch(qkv_trainer *t, moco_run *v);

/* The key encoder on the global batch, before the shards' losses read it:
 * every rank ends with the same keys k2 (and v3's k1) of all B images, in
 * the global batch's order. Over ranks an error names the step. */
static qkv_status pre_step(qkv_trainer *t, void *user)
{
    moco_run *v = user;
    qkv_status st = keys_of_batch(t, v);
    if (st && v->world > 1) {
        char msg[900];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        return qkv_set_error(st, "step %lld, the keys of the global batch: %s",
                             (long long)qkv_trainer_step(t) + 1, msg);
    }
    return st;
}

static qkv_status keys_of_batch(qkv_trainer *t, moco_run *v)
{
    int64_t n, ng;
    const float *x = qkv_trainer_batch(t, &n, &ng);
    int p = v->world;
    if (n * p != ng || ng != v->B)
        return qkv_set_error(QKV_ERR_STATE, "moco: rank %d holds %lld of a batch of %lld "
                             "(equal shares of %lld expected)", v->rank, (long long)n,
                             (long long)ng, (long long)v->B);
    int64_t splits = v->m.cfg.bn_splits, row0 = (int64_t)v->rank * n;
    /* each shard of each rank is bn_splits / (ranks x shards) of the
     * original's GPUs, for the queries as for the keys */
    int64_t parts = (int64_t)p * qkv_shards_count(v->keys);
    int64_t groups = splits / parts > 1 ? splits / parts : 1;
    const float *x2 = x + v->B * v->P;
    v->batch = (qkv_moco_batch){.x1 = x, .x2 = x2, .B = n, .k1 = v->k1, .k2 = v->k2,
                                .groups = groups, .row0 = row0, .n_keys = ng};
    bool shuffle = splits > 1 && v->r->model.version < 3;
    qkv_status st = QKV_OK;
    if (shuffle) {
        /* shuffle BN: a random order of the global batch from (seed, step),
         * the same on every rank; rank r encodes its part of that order */
        qkv_rng rng;
        qkv_rng_seed(&rng, mix(v->seed ^ mix((uint64_t)qkv_trainer_step(t))));
        for (int64_t i = 0; i < ng; i++)
            v->perm[i] = i;
        qkv_rng_shuffle(&rng, v->perm, ng);
        const float *x2_all = x2;
        if (p > 1) {
            x2_all = v->x2_all;
            st = qkv_comm_allgather(v->comm, x2, (size_t)(n * v->P) * sizeof(float),
                                    v->x2_all);
        }
        v->kb = (qkv_moco_batch){.x2 = x2_all, .B = ng, .k2 = v->k2, .perm = v->perm,
                                 .groups = groups, .n_keys = ng};
        v->key_lo = row0, v->key_n = n;
    } else {
        v->kb = v->batch;
        v->key_lo = 0, v->key_n = n;
    }
    if (!st)
        st = qkv_shards_run(v->keys, key_shard, v);
    if (!st)
        st = qkv__shards_merge_bn_ranks(v->keys);
    if (st || p == 1)
        return st;
    if (!shuffle) { /* each rank's keys of its own images */
        st = gather_keys(v, v->k2, row0, n);
        return st || v->r->model.version < 3 ? st : gather_keys(v, v->k1, row0, n);
    }
    /* the keys of positions [row0, row0 + n) of the order, every rank's,
     * in the order's positions; then back to their images' rows */
    for (int64_t j = 0; j < n; j++)
        memcpy(v->send + j * v->D, v->k2 + v->perm[row0 + j] * v->D,
               (size_t)v->D * sizeof(float));
    if ((st = qkv_comm_allgather(v->comm, v->send, (size_t)(n * v->D) * sizeof(float),
                                 v->gather)))
        return st;
    for (int64_t j = 0; j < ng; j++)
        memcpy(v->k2 + v->perm[j] * v->D, v->gather + j * v->D, (size_t)v->D * sizeof(float));
    return QKV_OK;
}

static qkv_tensor *loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user)
{
    moco_run *v = user;
    return qkv_scale(ctx, qkv_moco_loss(ctx, &v->m, &v->batch, b->lo, b->hi),
                     1.0f / (float)b->n_global);
}

static float momentum_after(const moco_run *v, const qkv_trainer *t)
{
    if (!v->r->momentum_cosine)
        return v->r->momentum;
    int64_t total = qkv_trainer_steps_per_epoch(t) * v->r->epochs;
    return qkv_moco_momentum_at(v->r->momentum, qkv_trainer_step(t) + 1, total);
}

static qkv_status post_step(qkv_trainer *t, void *user)
{
    moco_run *v = user;
    qkv_moco_momentum_update(&v->m, momentum_after(v, t));
    return v->m.queue ? qkv_moco_enqueue(&v->m, v->k2, v->batch.n_keys) : QKV_OK;
}

static qkv_status epoch_start(qkv_trainer *t, int64_t epoch, void *user)
{
    moco_run *v = user;
    if (v->r->stop_after > 0 && epoch >= v->r->stop_after)
        qkv_trainer_interrupt(t);
    return QKV_OK;
}

static qkv_status evaluate(qkv_trainer *t, qkv_train_epoch *e, void *user)
{
    moco_run *v = user;
    qkv_status st = qkv_train_epoch_put(e, "m", momentum_after(v, t));
    int every = v->r->knn_every > 0 ? v->r->knn_every : 1;
    if (st || v->r->knn_every < 0 || (e->epoch % every && e->epoch != e->epochs))
        return st;
    /* over ranks each embeds its part of the bank (all-gathered: every
     * rank holds the whole bank) and classifies its part of the test
     * images; the counts of right answers are summed */
    qkv_shards *sh = qkv_trainer_shards(t);
    int p = v->world;
    int64_t F = v->m.features, lo, hi, qlo, qhi, per = (v->n_bank + p - 1) / p;
    qkv_shard_rows(v->n_bank, v->rank, p, &lo, &hi);
    qkv_shard_rows(v->n_test, v->rank, p, &qlo, &qhi);
    if ((st = embed_range(NULL, sh, &v->m, &v->train, lo, hi, 1, 1, v->bank)))
        return st;
    if (p > 1) {
        float *mine = v->gather + (int64_t)p * per * F;
        memset(mine, 0, (size_t)(per * F) * sizeof(float));
        memcpy(mine, v->bank + lo * F, (size_t)((hi - lo) * F) * sizeof(float));
        if ((st = qkv_comm_allgather(v->comm, mine, (size_t)(per * F) * sizeof(float),
                                     v->gather)))
            return st;
        for (int q = 0; q < p; q++) {
            int64_t a, b;
            qkv_shard_rows(v->n_bank, q, p, &a, &b);
            memcpy(v->bank + a * F, v->gather + (int64_t)q * per * F,
                   (size_t)((b - a) * F) * sizeof(float));
        }
    }
    if ((st = embed_range(NULL, sh, &v->m, &v->test, qlo, qhi, 1, 1, v->queries)) ||
        (qhi > qlo && (st = qkv_knn_predict(v->pred + qlo, NULL, v->queries + qlo * F, qhi - qlo,
                                            v->bank, v->bank_labels, v->n_bank, F,
                                            v->r->knn_k, v->r->knn_t, 10))))
        return st;
    int64_t right = 0;
    for (int64_t i = qlo; i < qhi; i++)
        right += v->pred[i] == v->test.labels[i];
    if ((st = qkv_comm_allreduce(v->comm, &right, 1, QKV_DT_I64)))
        return st;
    v->knn_acc = (double)right / (double)v->n_test;
    return qkv_train_epoch_put(e, "knn_acc", v->knn_acc);
}

static qkv_status save_model(qkv_trainer *t, const char *dir, void *user)
{
    moco_run *v = user;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    (void)t;
    return qkv_moco_save(&v->m, path);
}

static const char *const class_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                            "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                            "Bag",         "Ankle boot"};

qkv_status qkv_plot_embedding(const char *path, const float *features, const int64_t *labels,
                              int64_t n, int64_t F, const char *title)
{
    if (!path || !features || !labels || n < 2 || F < 2)
        return qkv_set_error(QKV_ERR_ARG, "plot_embedding: bad arguments (%lld rows of %lld)",
                             (long long)n, (long long)F);
    float *xy = qkv__malloc((size_t)(2 * n) * sizeof(float));
    float *cols = qkv__malloc((size_t)(2 * n) * sizeof(float));
    qkv_status st = xy && cols ? qkv_pca(xy, NULL, features, n, F, 2)
                               : qkv_set_error(QKV_ERR_NOMEM, "plot_embedding: out of memory");
    qkv_series s[10];
    int64_t at = 0;
    for (int c = 0; c < 10 && !st; c++) { /* each class's points, x then y */
        int64_t k = 0;
        for (int64_t i = 0; i < n; i++)
            if (labels[i] == c)
                cols[at + k++] = xy[2 * i];
        for (int64_t i = 0, j = 0; i < n; i++)
            if (labels[i] == c)
                cols[at + k + j++] = xy[2 * i + 1];
        s[c] = (qkv_series){.name = class_names[c], .x = cols + at, .y = cols + at + k, .n = k,
                            .points = 1};
        at += 2 * k;
    }
    if (!st)
        st = qkv_plot_lines(path, 10, s, &(qkv_plot_opts){.xlabel = "PC 1", .ylabel = "PC 2",
                                                          .title = title});
    qkv__free(xy);
    qkv__free(cols);
    return st;
}

static void run_free(moco_run *v)
{
    qkv_shards_free(v->keys);
    qkv_moco_free(&v->m);
    qkv_mnist_free(&v->train);
    qkv_mnist_free(&v->test);
    qkv__free(v->k1), qkv__free(v->k2), qkv__free(v->perm);
    qkv__free(v->x2_all), qkv__free(v->send), qkv__free(v->gather);
    qkv__free(v->bank), qkv__free(v->queries), qkv__free(v->bank_labels), qkv__free(v->pred);
}

qkv_status qkv_moco_train(const qkv_moco_recipe *r, qkv_moco_result *res)
{
    if (!r || r->epochs < 0 || r->batch_size < 2)
        return qkv_set_error(QKV_ERR_ARG, "moco_train: %s", r ? "need epochs >= 0 and a batch "
                             "of at least 2" : "the recipe is NULL");
    int64_t cin = r->model.arch == QKV_MOCO_VIT ? r->model.vit.in_channels
                                                : r->model.resnet.in_channels;
    if (cin > 1)
        return qkv_set_error(QKV_ERR_ARG, "moco_train: Fashion-MNIST has 1 channel, the "
                             "encoder takes %lld", (long long)cin);
    moco_run v = {.r = r, .knn_acc = NAN, .seed = r->seed + 3, .comm = r->comm,
                  .rank = qkv_comm_rank(r->comm), .world = qkv_comm_size(r->comm)};
    bool quiet = r->quiet || v.rank != 0;
    qkv_trainer *t = NULL;
    qkv_status st = qkv_mnist_load(&v.train, r->data_dir, 1);
    if (!st)
        st = qkv_mnist_load(&v.test, r->data_dir, 0);
    /* SyncBatchNorm over the ranks in place of shuffle BN (moco-v3's) */
    qkv_moco_config mc = r->model;
    if (r->sync_bn)
        mc.sync_bn = r->comm, mc.bn_splits = 1;
    if (!st)
        st = qkv_moco_init(&v.m, &mc);
    if (st)
        goto done;
    v.n_train = r->limit > 0 && r->limit < v.train.n ? r->limit : v.train.n;
    v.n_test = r->eval_limit > 0 && r->eval_limit < v.test.n ? r->eval_limit : v.test.n;
    v.n_bank = r->knn_bank > 0 && r->knn_bank < v.n_train ? r->knn_bank : v.n_train;
    v.B = r->batch_size < v.n_train ? r->batch_size : v.n_train;
    v.S = qkv_moco_image_size(&v.m), v.P = v.S * v.S, v.D = r->model.dim;
    if (v.S > 64) {
        st = qkv_set_error(QKV_ERR_ARG, "moco_train: images of at most 64 pixels a side");
        goto done;
    }
    if (v.B % v.world) {
        st = qkv_set_error(QKV_ERR_ARG, "moco_train: the batch of %lld does not split into "
                           "%d equal shares, one a rank", (long long)v.B, v.world);
        goto done;
    }
    if (v.m.queue && r->model.K % v.B) {
        st = qkv_set_error(QKV_ERR_ARG, "moco_train: the queue (K %lld) must be a multiple of "
                           "the batch (%lld)", (long long)r->model.K, (long long)v.B);
        goto done;
    }
    int64_t F = v.m.features;
    v.k1 = qkv__malloc((size_t)(v.B * v.D) * sizeof(float));
    v.k2 = qkv__malloc((size_t)(v.B * v.D) * sizeof(float));
    v.perm = qkv__malloc((size_t)v.B * sizeof(int64_t));
    v.bank = qkv__malloc((size_t)(v.n_bank * F) * sizeof(float));
    v.queries = qkv__malloc((size_t)(v.n_test * F) * sizeof(float));
    v.bank_labels = qkv__malloc((size_t)v.n_bank * sizeof(int64_t));
    v.pred = qkv__malloc((size_t)v.n_test * sizeof(int64_t));
    if (v.world > 1) {
        int64_t per = (v.n_bank + v.world - 1) / v.world, keys = v.B * v.D;
        v.gather_floats = (v.world + 1) * per * F > keys ? (v.world + 1) * per * F : keys;
        v.x2_all = qkv__malloc((size_t)(v.B * v.P) * sizeof(float));
        v.send = qkv__malloc((size_t)(v.B * v.D) * sizeof(float));
        v.gather = qkv__malloc((size_t)v.gather_floats * sizeof(float));
    }
    if (!v.k1 || !v.k2 || !v.perm || !v.bank || !v.queries || !v.bank_labels || !v.pred ||
        (v.world > 1 && (!v.x2_all || !v.send || !v.gather))) {
        st = qkv_set_error(QKV_ERR_NOMEM, "moco_train: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < v.n_bank; i++)
        v.bank_labels[i] = v.train.labels[i];
    qkv_rng init;
    qkv_rng_seed(&init, r->seed + 2);
    qkv_moco_reset(&v.m, &init);
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"version\": %d, \"epochs\": %lld, \"batch\": %lld, \"lr\": %g, "
             "\"K\": %lld, \"limit\": %lld, \"seed\": %llu}", r->model.version,
             (long long)r->epochs, (long long)v.B, r->lr, (long long)r->model.K,
             (long long)v.n_train, (unsigned long long)r->seed);
    static const char *const curves[] = {"loss", "knn_acc", NULL};
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = v.m.ps, .loss = loss, .user = &v, .epochs = r->epochs,
        .data = {.n_examples = v.n_train, .batch_size = v.B, .shuffle = 1, .drop_last = 1,
                 .seed = r->seed + 1, .batch_bytes = (size_t)(2 * v.B * v.P) * sizeof(float),
                 .fill = fill, .user = &v, .rng_per_example = 1},
        .optim = {.kind = r->optimizer, .lr = (float)r->lr, .momentum = r->sgd_momentum,
                  .weight_decay = (float)r->weight_decay},
        .schedule = {.kind = r->cosine ? QKV_LR_COSINE : QKV_LR_CONSTANT,
                     .warmup_epochs = r->warmup_epochs},
        .threads = r->threads, .seed = r->seed, .comm = r->comm, .pre_step = pre_step,
        .post_step = post_step,
        .epoch_start = epoch_start,
        .evaluate = evaluate, .save_model = save_model, .out_dir = r->out_dir,
        .config_json = cfg, .resume = r->resume, .label = "moco",
        .print_every = quiet ? -1 : 1, .curves = curves, .title = "MoCo on Fashion-MNIST"});
    if (!t) {
        st = qkv_error_status();
        goto done;
    }
    if (!(v.keys = qkv_shards_new(v.m.ps_k, qkv_shards_count(qkv_trainer_shards(t))))) {
        st = qkv_error_status();
        goto done;
    }
    /* the key encoder's running statistics from every rank's rows, as the
     * trainer keeps the query encoder's */
    qkv__shards_defer_bn_to_ranks(v.keys, v.comm);
    if (r->sync_bn && qkv_shards_count(v.keys) > 1) {
        st = qkv_set_error(QKV_ERR_ARG, "moco_train: batch norm synchronised over ranks needs "
                           "one thread per rank (--threads 1), not %d",
                           qkv_shards_count(v.keys));
        goto done;
    }
    if ((st = qkv_trainer_add_state(t, "key", v.m.ps_k)) ||
        (v.m.queue && (st = qkv_trainer_add_state(t, "queue", v.m.ps_queue))))
        goto done;
    if (!quiet) {
        const qkv_vit_config *c = &r->model.vit;
        char enc[160];
        if (r->model.arch == QKV_MOCO_VIT)
            snprintf(enc, sizeof enc, "ViT %lldx%lld patch %lld, width %lld, %lld blocks",
                     (long long)c->image_size, (long long)c->image_size,
                     (long long)c->patch_size, (long long)c->hidden_dim,
                     (long long)c->num_layers);
        else
            snprintf(enc, sizeof enc, "ResNet-%d%s, width %lld", r->model.resnet.depth,
                     r->model.resnet.small_stem ? " (small stem)" : "",
                     (long long)v.m.q.resnet.cfg.width);
        printf("MoCo v%d, %s: %lld parameters\n"
               "training on %lld images without labels, %lld steps of %lld, K %lld, T %g, "
               "m %g, %d threads%s%s\n", r->model.version, enc,
               (long long)qkv_params_numel(v.m.ps),
               (long long)v.n_train, (long long)qkv_trainer_steps_per_epoch(t), (long long)v.B,
               (long long)(v.m.queue ? r->model.K : 0), (double)r->model.T,
               (double)r->momentum, qkv_shards_count(qkv_trainer_shards(t)),
               qkv__ranks_note(r->comm), r->sync_bn ? ", batch norm synchronised" : "");
        if (r->resume)
            printf("resumed at epoch %lld, step %lld\n", (long long)qkv_trainer_epoch(t),
                   (long long)qkv_trainer_step(t));
        fflush(stdout);
    }
    if ((st = qkv_trainer_run(t)) != QKV_OK)
        goto done;
    if (!quiet)
        qkv__print_comm_summary(t);
    if (r->out_dir && v.rank == 0) { /* the test set's embedding, 2000 images */
        int64_t n = v.n_test < 2000 ? v.n_test : 2000, *labels = v.pred;
        char path[4200];
        snprintf(path, sizeof path, "%s/embedding.png", r->out_dir);
        if ((st = qkv_moco_embed(NULL, qkv_trainer_shards(t), &v.m, &v.test, n, 1, v.queries)))
            goto done;
        for (int64_t i = 0; i < n; i++)
            labels[i] = v.test.labels[i];
        if ((st = qkv_plot_embedding(path, v.queries, labels, n, F,
                                     "MoCo features of test images (PCA)")))
            goto done;
    }
    if (res)
        *res = (qkv_moco_result){.knn_accuracy = v.knn_acc};
done:
    qkv_trainer_free(t);
    run_free(&v);
    return st;
}
