/*
 * vit_recipe.c - a Vision Transformer trained on Fashion-MNIST through the
 * library's trainer: what `qkv train vit` runs (docs/vit.md).
 *
 * The model's part is small: a batch layout and its fill (augmented images
 * and labels, on the loader's thread), a loss callback (the cross-entropy of
 * a shard's rows, with label smoothing, as its share of the batch's mean),
 * and an evaluation callback (test accuracy). The trainer does the rest.
 */
#include "train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Images per forward when evaluating: training and `qkv eval vit` use the
 * same, so that both sum in the same order and agree to the last image. */
#define EVAL_BATCH 500

int64_t qkv_vit_evaluate(qkv_ctx *ctx, const qkv_vit *m, const qkv_mnist *d, int64_t n,
                         int64_t *confusion)
{
    if (!ctx || !m || !d || n < 0 || n > d->n) {
        qkv_set_error(QKV_ERR_ARG, "vit_evaluate: bad arguments");
        return -1;
    }
    int64_t size = m->cfg.image_size, K = m->cfg.num_classes, right = 0;
    int was_training = qkv_set_training(ctx, 0), had_grad = qkv_set_grad_enabled(ctx, 0);
    if (confusion)
        memset(confusion, 0, (size_t)(K * K) * sizeof *confusion);
    for (int64_t at = 0; at < n && right >= 0; at += EVAL_BATCH) {
        int64_t b = n - at < EVAL_BATCH ? n - at : EVAL_BATCH;
        qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){b, m->cfg.in_channels, size, size});
        for (int64_t i = 0; x && i < b; i++)
            if (m->cfg.in_channels != 1 ||
                qkv_mnist_image(x->data + i * size * size, d, at + i, size, NULL, NULL) != QKV_OK)
                x = NULL;
        qkv_tensor *logits = x ? qkv_vit_forward(ctx, m, x, NULL) : NULL;
        if (!logits) {
            if (m->cfg.in_channels != 1)
                qkv_set_error(QKV_ERR_SHAPE, "vit_evaluate: the model takes %lld channels; "
                              "Fashion-MNIST has 1", (long long)m->cfg.in_channels);
            right = -1;
            break;
        }
        for (int64_t i = 0; i < b; i++) {
            const float *row = logits->data + i * K;
            int64_t best = 0;
            for (int64_t k = 1; k < K; k++)
                if (row[k] > row[best])
                    best = k;
            int64_t truth = d->labels[at + i];
            right += best == truth;
            if (confusion && truth < K)
                confusion[truth * K + best]++;
        }
        qkv_ctx_reset(ctx);
    }
    qkv_set_training(ctx, was_training);
    qkv_set_grad_enabled(ctx, had_grad);
    return right;
}

qkv_status qkv_vit_recipe_preset(qkv_vit_recipe *r, const char *name)
{
    if (!r || !name)
        return qkv_set_error(QKV_ERR_ARG, "vit_recipe_preset: NULL argument");
    qkv_vit_recipe keep = *r; /* the run's options stay */
    if (!strcmp(name, "d2l")) {
        /* d2l v1.0.3: Resize 96, patch 16, 512 wide, MLP 2048, 8 heads, 2
         * blocks, dropouts 0.1, plain SGD 0.1, batch 128, 10 epochs */
        *r = (qkv_vit_recipe){.model = {.image_size = 96, .patch_size = 16, .in_channels = 1,
                                        .hidden_dim = 512, .mlp_dim = 2048, .num_heads = 8,
                                        .num_layers = 2, .num_classes = 10, .dropout = 0.1f,
                                        .attention_dropout = 0.1f},
                              .epochs = 10, .batch_size = 128, .lr = 0.1,
                              .optimizer = QKV_SGD};
    } else if (!strcmp(name, "default") || !strcmp(name, "demo")) {
        /* 28x28 in 7x7 patches of 4 pixels: 50 tokens, small enough for two
         * cores; AdamW with warmup and cosine decay, label smoothing, random
         * crops (padding 2) and flips, the last 6 epochs without crops:
         * 0.9181 after 34 epochs, 23 minutes on two cores. Crops to the end
         * underfit (0.9096 after 30 epochs); flips alone overfit (0.902).
         * docs/vit.md has the runs. */
        *r = (qkv_vit_recipe){.model = {.image_size = 28, .patch_size = 4, .in_channels = 1,
                                        .hidden_dim = 96, .mlp_dim = 192, .num_heads = 4,
                                        .num_layers = 4, .num_classes = 10},
                              .epochs = 34, .batch_size = 128, .lr = 2e-3, .weight_decay = 0.05,
                              .label_smoothing = 0.1, .warmup_epochs = 1, .clip = 1.0,
                              .optimizer = QKV_ADAMW, .cosine = 1,
                              .aug = {.crop = 2, .flip = 1}, .plain_epochs = 6};
        if (!strcmp(name, "demo")) {
            /* a minute's run for `make demo`: the default model, 3 epochs on
             * 12000 images without crops (docs/vit.md: demo preset) */
            r->epochs = 3, r->plain_epochs = 0, r->aug.crop = 0;
            r->limit = 12000, r->eval_limit = 2000;
            r->warmup_epochs = 0.3;
        }
    } else {
        return qkv_set_error(QKV_ERR_ARG, "vit: unknown preset '%s' (default, d2l, demo)", name);
    }
    r->data_dir = keep.data_dir, r->out_dir = keep.out_dir, r->seed = keep.seed;
    r->resume = keep.resume, r->threads = keep.threads, r->quiet = keep.quiet;
    r->comm = keep.comm;
    if (keep.limit)
        r->limit = keep.limit;
    if (keep.eval_limit)
        r->eval_limit = keep.eval_limit;
    return QKV_OK;
}

/* ---- the model's part ---- */

typedef struct {
    const qkv_vit_recipe *r;
    int quiet;           /* the recipe's, or a rank other than 0 */
    qkv_model *model;
    qkv_vit *m;
    qkv_mnist train, test;
    int64_t n_train, n_test, B, size;
    qkv_augment aug;     /* this epoch's: the fill reads it, epoch_start sets it */
    qkv_ce_opts ce;
    double test_acc, train_acc;
    int64_t test_right;
} vit_run;

/* A batch: images (B, 1, size, size), then labels (B) as int64. */
static size_t batch_bytes(const vit_run *v)
{
    return (size_t)(v->B * v->size * v->size) * sizeof(float) + (size_t)v->B * sizeof(int64_t);
}

static int64_t *batch_labels(const vit_run *v, const void *batch)
{
    return (int64_t *)(void *)((float *)batch + v->B * v->size * v->size);
}

static qkv_status fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    const vit_run *v = user;
    int64_t *y = batch_labels(v, batch), px = v->size * v->size;
    for (int64_t i = 0; i < n; i++) {
        y[i] = v->train.labels[idx[i]];
        qkv_status s = qkv_mnist_image((float *)batch + i * px, &v->train, idx[i], v->size, rng,
                                       &v->aug);
        if (s != QKV_OK)
            return s;
    }
    return QKV_OK;
}

/* rows [lo, hi): their cross-entropy summed, / the global batch; stats[0]
 * counts the rows classified right. */
static qkv_tensor *loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user)
{
    const vit_run *v = user;
    int64_t px = v->size * v->size, K = v->m->cfg.num_classes;
    const int64_t *y = batch_labels(v, b->batch) + b->lo;
    qkv_tensor *x = qkv_wrap(ctx, 4, (int64_t[]){b->hi - b->lo, 1, v->size, v->size},
                             (float *)b->batch + b->lo * px);
    qkv_tensor *logits = x ? qkv_vit_forward(ctx, v->m, x, NULL) : NULL;
    qkv_tensor *l = logits ? qkv_cross_entropy(ctx, logits, y, &v->ce) : NULL;
    if (!l)
        return NULL;
    for (int64_t r = 0; r < b->hi - b->lo; r++) {
        const float *row = logits->data + r * K;
        int64_t best = 0;
        for (int64_t k = 1; k < K; k++)
            if (row[k] > row[best])
                best = k;
        b->stats[0] += best == y[r];
    }
    return qkv_scale(ctx, l, 1.0f / (float)b->n_global);
}

static qkv_status epoch_start(qkv_trainer *t, int64_t e, void *user)
{
    vit_run *v = user;
    const qkv_vit_recipe *r = v->r;
    int64_t plain_from = r->epochs - r->plain_epochs > 0 ? r->epochs - r->plain_epochs : 0;
    v->aug = r->aug;
    if (e >= plain_from)
        v->aug.crop = 0;
    if (r->aug.crop > 0 && r->plain_epochs > 0 && e == plain_from && !v->quiet)
        printf("no random crops from epoch %lld on\n", (long long)e + 1);
    (void)t;
    return QKV_OK;
}

/* The test images right: each rank classifies its share of them. */
static int64_t test_right(qkv_ctx *ctx, const vit_run *v)
{
    qkv_comm *c = v->r->comm;
    int64_t lo, hi, px = v->test.rows * v->test.cols;
    qkv_shard_rows(v->n_test, qkv_comm_rank(c), qkv_comm_size(c), &lo, &hi);
    qkv_mnist part = v->test;
    part.n = hi - lo, part.images += lo * px, part.labels += lo;
    int64_t right = qkv_vit_evaluate(ctx, v->m, &part, part.n, NULL);
    if (right < 0) {
        qkv_comm_abandon(c);
        return -1;
    }
    return qkv_comm_allreduce(c, &right, 1, QKV_DT_I64) == QKV_OK ? right : -1;
}

static qkv_status evaluate(qkv_trainer *t, qkv_train_epoch *e, void *user)
{
    vit_run *v = user;
    int64_t right = test_right(qkv_trainer_eval_ctx(t), v);
    if (right < 0)
        return qkv_error_status();
    v->test_right = right;
    v->test_acc = (double)right / (double)v->n_test;
    v->train_acc = e->examples ? e->stats[0] / (double)e->examples : NAN;
    qkv_status st = qkv_train_epoch_put(e, "train_acc", v->train_acc);
    return st ? st : qkv_train_epoch_put(e, "test_acc", v->test_acc);
}

static qkv_status save_model(qkv_trainer *t, const char *dir, void *user)
{
    vit_run *v = user;
    char path[4200], acc[32];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(acc, sizeof acc, "%.4f", v->test_acc);
    qkv_status st = isfinite(v->test_acc) ? qkv_model_set_meta(v->model, "test_accuracy", acc)
                                          : QKV_OK;
    (void)t;
    return st ? st : qkv_model_save(v->model, path);
}

qkv_status qkv_vit_train(const qkv_vit_recipe *r, qkv_vit_result *res)
{
    if (!r || r->epochs < 0 || r->batch_size < 1)
        return qkv_set_error(QKV_ERR_ARG, "vit_train: %s", r ? "need epochs >= 0 and a batch "
                             "size >= 1" : "the recipe is NULL");
    vit_run v = {.r = r, .quiet = r->quiet || qkv_comm_rank(r->comm) != 0, .test_acc = NAN,
                 .train_acc = NAN, .size = r->model.image_size,
                 .ce = {.ignore_index = QKV_NO_IGNORE, .label_smoothing = (float)r->label_smoothing,
                        .reduction = QKV_REDUCE_SUM}};
    qkv_trainer *t = NULL;
    qkv_status st = qkv_mnist_load(&v.train, r->data_dir, 1);
    if (!st)
        st = qkv_mnist_load(&v.test, r->data_dir, 0);
    if (!st && r->model.in_channels != 1)
        st = qkv_set_error(QKV_ERR_ARG, "vit_train: Fashion-MNIST has 1 channel, the model "
                           "takes %lld", (long long)r->model.in_channels);
    if (st)
        goto done;
    v.n_train = r->limit > 0 && r->limit < v.train.n ? r->limit : v.train.n;
    v.n_test = r->eval_limit > 0 && r->eval_limit < v.test.n ? r->eval_limit : v.test.n;
    v.B = r->batch_size < v.n_train ? r->batch_size : v.n_train;
    if (!(v.model = qkv_model_new_vit(&r->model))) {
        st = qkv_error_status();
        goto done;
    }
    v.m = qkv_model_vit(v.model);
    qkv_rng init;
    qkv_rng_seed(&init, r->seed + 2);
    qkv_vit_reset(v.m, &init);
    char cfg[512];
    snprintf(cfg, sizeof cfg,
             "{\"epochs\": %lld, \"batch\": %lld, \"lr\": %g, \"limit\": %lld, \"seed\": %llu}",
             (long long)r->epochs, (long long)v.B, r->lr, (long long)v.n_train,
             (unsigned long long)r->seed);
    static const char *const curves[] = {"loss", "train_acc", "test_acc", NULL};
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = qkv_model_params(v.model), .loss = loss, .user = &v, .epochs = r->epochs,
        .data = {.n_examples = v.n_train, .batch_size = v.B, .shuffle = 1, .drop_last = 1,
                 .seed = r->seed + 1, .batch_bytes = batch_bytes(&v), .fill = fill, .user = &v},
        .optim = {.kind = r->optimizer, .lr = (float)r->lr,
                  .weight_decay = (float)r->weight_decay},
        .schedule = {.kind = r->cosine ? QKV_LR_COSINE : QKV_LR_CONSTANT,
                     .warmup_epochs = r->warmup_epochs},
        .clip = (float)r->clip, .threads = r->threads, .seed = r->seed, .comm = r->comm,
        .epoch_start = epoch_start, .evaluate = evaluate, .save_model = save_model,
        .out_dir = r->out_dir, .config_json = cfg, .resume = r->resume, .label = "epoch",
        .print_every = r->quiet ? -1 : 1, .curves = curves, .title = "ViT on Fashion-MNIST"});
    if (!t) {
        st = qkv_error_status();
        goto done;
    }
    const qkv_vit_config *mc = &r->model;
    if (!v.quiet) {
        printf("ViT %lldx%lld patch %lld, width %lld, MLP %lld, %lld heads, %lld blocks: %lld "
               "parameters\ntraining on %lld images, %lld steps of %lld, %s lr %g, %d threads%s\n",
               (long long)mc->image_size, (long long)mc->image_size, (long long)mc->patch_size,
               (long long)mc->hidden_dim, (long long)mc->mlp_dim, (long long)mc->num_heads,
               (long long)mc->num_layers, (long long)qkv_params_numel(qkv_model_params(v.model)),
               (long long)v.n_train, (long long)qkv_trainer_steps_per_epoch(t), (long long)v.B,
               r->optimizer == QKV_ADAMW ? "AdamW" : r->optimizer == QKV_ADAM ? "Adam" : "SGD",
               r->lr, qkv_shards_count(qkv_trainer_shards(t)), qkv__ranks_note(r->comm));
        if (r->resume)
            printf("resumed at epoch %lld, step %lld\n", (long long)qkv_trainer_epoch(t),
                   (long long)qkv_trainer_step(t));
        fflush(stdout);
    }
    if ((st = qkv_trainer_run(t)) != QKV_OK)
        goto done;
    if (!v.quiet)
        qkv__print_comm_summary(t);
    if (!isfinite(v.test_acc)) { /* nothing left to train: the model as it stands */
        int64_t right = test_right(qkv_trainer_eval_ctx(t), &v);
        if (right < 0) {
            st = qkv_error_status();
            goto done;
        }
        v.test_right = right;
        v.test_acc = (double)right / (double)v.n_test;
    }
    if (res)
        *res = (qkv_vit_result){.test_accuracy = v.test_acc, .train_accuracy = v.train_acc,
                                .test_right = v.test_right, .test_n = v.n_test};
done:
    qkv_trainer_free(t);
    qkv_model_free(v.model);
    qkv_mnist_free(&v.train);
    qkv_mnist_free(&v.test);
    return st;
}
