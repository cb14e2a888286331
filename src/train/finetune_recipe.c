/*
 * finetune_recipe.c - transfer learning (`qkv finetune`, docs/moco.md): a
 * classifier made of a MoCo model's query encoder and a new linear layer,
 * trained end to end on a small labelled part of Fashion-MNIST (1% or 10%
 * of each class), or the same network from a random start on the same
 * images, for comparison. Through the library's trainer: a fill
 * (augmented images of the labelled subset and their labels), a loss
 * callback (cross-entropy of a shard's rows), an evaluation callback (test
 * accuracy every few epochs and after the last).
 */
#include "train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void qkv_finetune_recipe_default(qkv_finetune_recipe *r)
{
    qkv_finetune_recipe keep = *r;
    /* the supervised ViT's recipe (`qkv train vit`): AdamW with warmup and a
     * cosine, label smoothing, crops of 2 pixels and flips */
    *r = (qkv_finetune_recipe){.fraction = 0.01, .epochs = 100, .batch_size = 128,
                               .optimizer = QKV_ADAMW, .lr = 1e-3, .weight_decay = 0.05,
                               .warmup_epochs = 5, .label_smoothing = 0.1,
                               .aug = {.crop = 2, .flip = 1}, .eval_every = 10,
                               .encoder_lr = 1.0};
    r->model = keep.model, r->scratch = keep.scratch, r->data_dir = keep.data_dir;
    r->out_dir = keep.out_dir, r->seed = keep.seed, r->threads = keep.threads;
    r->quiet = keep.quiet, r->eval_limit = keep.eval_limit;
    if (keep.fraction > 0)
        r->fraction = keep.fraction;
}

int64_t qkv_label_subset(int64_t *out, const uint8_t *labels, int64_t n, int64_t classes,
                         double fraction, uint64_t seed)
{
    if (!out || !labels || n < 1 || classes < 1 || !(fraction > 0.0) || fraction > 1.0) {
        qkv_set_error(QKV_ERR_ARG, "label_subset: bad arguments (fraction %g)", fraction);
        return -1;
    }
    int64_t *order = qkv__malloc((size_t)n * sizeof *order);
    if (!order) {
        qkv_set_error(QKV_ERR_NOMEM, "label_subset: out of memory");
        return -1;
    }
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    qkv_rng r;
    qkv_rng_seed(&r, seed);
    qkv_rng_shuffle(&r, order, n);
    int64_t m = 0;
    for (int64_t c = 0; c < classes; c++) {
        int64_t count = 0;
        for (int64_t i = 0; i < n; i++)
            count += labels[i] == c;
        int64_t want = (int64_t)floor(fraction * (double)count + 0.5);
        if (want < 1 && count > 0)
            want = 1;
        for (int64_t i = 0, took = 0; i < n && took < want; i++)
            if (labels[order[i]] == c)
                out[m + took++] = order[i];
        m += want;
    }
    /* in the order of the data set, so that the subset reads as a list */
    for (int64_t i = 1; i < m; i++)
        for (int64_t j = i; j > 0 && out[j] < out[j - 1]; j--) {
            int64_t t = out[j];
            out[j] = out[j - 1], out[j - 1] = t;
        }
    qkv__free(order);
    return m;
}

typedef struct {
    const qkv_finetune_recipe *r;
    qkv_model *model;     /* the classifier: a ViT model, or */
    qkv_vit *vit;
    qkv_params *ps;       /* a ResNet in a store of its own */
    qkv_resnet resnet;
    qkv_mnist train, test;
    int64_t *subset, n_subset, n_test, B, S;
    qkv_ce_opts ce;
    double test_acc, train_acc;
} ft_run;

/* A batch: images (B, 1, S, S), then labels (B) */
static qkv_status fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    const ft_run *v = user;
    int64_t P = v->S * v->S, *y = (int64_t *)(void *)((float *)batch + v->B * P);
    const qkv_view_aug *view = v->r->view.crop_max > 0 ? &v->r->view : NULL;
    float src[64 * 64], scratch[64 * 64]; /* S <= 64 with a view (checked) */
    for (int64_t i = 0; i < n; i++) {
        int64_t at = v->subset[idx[i]];
        float *dst = (float *)batch + i * P;
        y[i] = v->train.labels[at];
        qkv_status st = view ? qkv_mnist_image(src, &v->train, at, v->S, NULL, NULL)
                             : qkv_mnist_image(dst, &v->train, at, v->S, rng, &v->r->aug);
        if (!st && view)
            st = qkv_augment_view(dst, v->S, v->S, src, 1, v->S, v->S, view, rng, scratch);
        if (st)
            return st;
    }
    return QKV_OK;
}

static qkv_tensor *loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user)
{
    const ft_run *v = user;
    int64_t P = v->S * v->S;
    const int64_t *y = (const int64_t *)(const void *)((const float *)b->batch + v->B * P) + b->lo;
    qkv_tensor *x = qkv_wrap(ctx, 4, (int64_t[]){b->hi - b->lo, 1, v->S, v->S},
                             (float *)b->batch + b->lo * P);
    qkv_tensor *logits = v->vit ? qkv_vit_forward(ctx, v->vit, x, NULL)
                                : qkv_resnet_forward(ctx, &v->resnet, x, QKV_RESNET_LOGITS, 1);
    qkv_tensor *l = logits ? qkv_cross_entropy(ctx, logits, y, &v->ce) : NULL;
    if (!l)
        return NULL;
    for (int64_t r = 0; r < b->hi - b->lo; r++) {
        const float *row = logits->data + r * 10;
        int64_t best = 0;
        for (int64_t k = 1; k < 10; k++)
            if (row[k] > row[best])
                best = k;
        b->stats[0] += best == y[r];
    }
    return qkv_scale(ctx, l, 1.0f / (float)b->n_global);
}

/* Test images a ResNet classifier gets right (eval mode), or -1 */
static int64_t resnet_right(qkv_ctx *ctx, const ft_run *v)
{
    int64_t right = 0, P = v->S * v->S;
    int was = qkv_set_training(ctx, 0), had = qkv_set_grad_enabled(ctx, 0);
    for (int64_t at = 0; at < v->n_test && right >= 0; at += 500) {
        int64_t b = v->n_test - at < 500 ? v->n_test - at : 500;
        qkv_ctx_reset(ctx);
        qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){b, 1, v->S, v->S});
        for (int64_t i = 0; x && i < b; i++)
            if (qkv_mnist_image(x->data + i * P, &v->test, at + i, v->S, NULL, NULL))
                x = NULL;
        qkv_tensor *logits = x ? qkv_resnet_forward(ctx, &v->resnet, x, QKV_RESNET_LOGITS, 1)
                               : NULL;
        if (!logits) {
            right = -1;
            break;
        }
        for (int64_t i = 0; i < b; i++) {
            const float *row = logits->data + i * 10;
            int64_t best = 0;
            for (int64_t k = 1; k < 10; k++)
                if (row[k] > row[best])
                    best = k;
            right += best == v->test.labels[at + i];
        }
    }
    qkv_ctx_reset(ctx);
    qkv_set_training(ctx, was), qkv_set_grad_enabled(ctx, had);
    return right;
}

/* The encoder's lr multiple after epoch `epoch` (0: before the first) */
static float encoder_scale(const qkv_finetune_recipe *r, int64_t epoch)
{
    if (r->scratch)
        return 1.0f;
    return epoch < r->head_epochs ? 0.0f : (float)r->encoder_lr;
}

static qkv_status evaluate(qkv_trainer *t, qkv_train_epoch *e, void *user)
{
    ft_run *v = user;
    qkv_optim_set_group_scale(qkv_trainer_optim(t), 1, encoder_scale(v->r, e->epoch));
    v->train_acc = e->examples ? e->stats[0] / (double)e->examples : NAN;
    qkv_status st = qkv_train_epoch_put(e, "train_acc", v->train_acc);
    int every = v->r->eval_every > 0 ? v->r->eval_every : 1;
    if (st || (e->epoch % every && e->epoch != e->epochs))
        return st;
    int64_t right = v->vit ? qkv_vit_evaluate(qkv_trainer_eval_ctx(t), v->vit, &v->test,
                                              v->n_test, NULL)
                           : resnet_right(qkv_trainer_eval_ctx(t), v);
    if (right < 0)
        return qkv_error_status();
    v->test_acc = (double)right / (double)v->n_test;
    return qkv_train_epoch_put(e, "test_acc", v->test_acc);
}

static qkv_status save_model(qkv_trainer *t, const char *dir, void *user)
{
    ft_run *v = user;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    (void)t;
    return v->model ? qkv_model_save(v->model, path) : qkv_params_save(v->ps, path, QKV_DT_F32);
}

/* The classifier's encoder entries from the MoCo query encoder: entry
 * "X" of the classifier is "<prefix>X" of the MoCo store; the head is new */
static qkv_status copy_encoder(qkv_params *dst, const qkv_moco *m)
{
    const char *prefix = m->cfg.version == 3 ? "base_encoder." : "encoder_q.";
    char name[600];
    int64_t copied = 0;
    for (int64_t i = 0; i < qkv_params_count(dst); i++) {
        qkv_tensor *t = qkv_params_at(dst, i);
        if (!strncmp(t->name, "heads.", 6) || !strncmp(t->name, "fc.", 3))
            continue;
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        qkv_tensor *s = qkv_params_find(m->ps, name);
        if (!s || qkv_numel(s) != qkv_numel(t))
            return qkv_set_error(QKV_ERR_FORMAT, "finetune: the MoCo model has no %s of %lld "
                                 "values", name, (long long)qkv_numel(t));
        memcpy(t->data, s->data, (size_t)qkv_numel(t) * sizeof(float));
        copied++;
    }
    return copied ? QKV_OK : qkv_set_error(QKV_ERR_FORMAT, "finetune: no encoder entry copied");
}

qkv_status qkv_finetune_train(const qkv_finetune_recipe *r, qkv_finetune_result *res)
{
    if (!r || !r->model || r->epochs < 0 || r->batch_size < 1)
        return qkv_set_error(QKV_ERR_ARG, "finetune_train: %s",
                             !r || !r->model ? "no MoCo model" : "need epochs >= 0 and a batch "
                                                                 ">= 1");
    ft_run v = {.r = r, .test_acc = NAN, .train_acc = NAN,
                .ce = {.ignore_index = QKV_NO_IGNORE, .label_smoothing = (float)r->label_smoothing,
                       .reduction = QKV_REDUCE_SUM}};
    qkv_moco m = {0};
    qkv_trainer *t = NULL;
    qkv_status st = qkv_moco_open(&m, r->model);
    if (!st)
        st = qkv_mnist_load(&v.train, r->data_dir, 1);
    if (!st)
        st = qkv_mnist_load(&v.test, r->data_dir, 0);
    if (st)
        goto done;
    v.n_test = r->eval_limit > 0 && r->eval_limit < v.test.n ? r->eval_limit : v.test.n;
    if (!(v.subset = qkv__malloc((size_t)v.train.n * sizeof(int64_t))) ||
        (v.n_subset = qkv_label_subset(v.subset, v.train.labels, v.train.n, 10, r->fraction,
                                       r->seed + 5)) < 1) {
        st = qkv_error_status() ? qkv_error_status() : QKV_ERR_NOMEM;
        goto done;
    }
    qkv_rng init;
    qkv_rng_seed(&init, r->seed + 2);
    v.S = qkv_moco_image_size(&m);
    if (r->view.crop_max > 0 && v.S > 64) {
        st = qkv_set_error(QKV_ERR_ARG, "finetune: random views of images up to 64 pixels "
                           "only, not %lld", (long long)v.S);
        goto done;
    }
    if (m.cfg.arch == QKV_MOCO_VIT) {
        qkv_vit_config vc = m.cfg.vit;
        vc.num_classes = 10;
        vc.dropout = vc.attention_dropout = 0.0f;
        if (!(v.model = qkv_model_new_vit(&vc))) {
            st = qkv_error_status();
            goto done;
        }
        v.vit = qkv_model_vit(v.model);
        v.ps = qkv_model_params(v.model);
        qkv_vit_reset(v.vit, &init); /* the head; and all of it from scratch */
    } else {
        qkv_resnet_config rc = m.q.resnet.cfg;
        rc.num_classes = 10, rc.fc_hidden = 0;
        if (!(v.ps = qkv_params_new()) || (st = qkv_resnet_init(&v.resnet, v.ps, "", &rc)) ||
            (st = qkv_params_alloc(v.ps))) {
            st = st ? st : qkv_error_status();
            goto done;
        }
        qkv_resnet_reset(&v.resnet, &init);
    }
    if (!r->scratch && (st = copy_encoder(v.ps, &m)))
        goto done;
    for (int64_t i = 0; i < qkv_params_count(v.ps); i++) { /* the encoder: group 1 */
        const char *name = qkv_params_at(v.ps, i)->name;
        if (strncmp(name, "heads.", 6) && strncmp(name, "fc.", 3))
            qkv_params_set_group(v.ps, i, 1);
    }
    v.B = r->batch_size < v.n_subset ? r->batch_size : v.n_subset;
    static const char *const curves[] = {"loss", "train_acc", "test_acc", NULL};
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = v.ps, .loss = loss, .user = &v, .epochs = r->epochs,
        .data = {.n_examples = v.n_subset, .batch_size = v.B, .shuffle = 1, .drop_last = 1,
                 .seed = r->seed + 1,
                 .batch_bytes = (size_t)(v.B * v.S * v.S) * sizeof(float) +
                                (size_t)v.B * sizeof(int64_t),
                 .fill = fill, .user = &v},
        .optim = {.kind = r->optimizer, .lr = (float)r->lr, .momentum = 0.9f,
                  .weight_decay = (float)r->weight_decay},
        .schedule = {.kind = QKV_LR_COSINE, .warmup_epochs = r->warmup_epochs},
        .clip = 1.0f, .threads = r->threads, .seed = r->seed, .evaluate = evaluate,
        .save_model = save_model, .out_dir = r->out_dir, .label = r->scratch ? "scratch" : "finetune",
        .print_every = r->quiet ? -1 : (int)(r->eval_every > 0 ? r->eval_every : 1),
        .curves = curves, .title = r->scratch ? "From scratch" : "Fine-tuned from MoCo",
        .save_every = r->epochs});
    if (!t) {
        st = qkv_error_status();
        goto done;
    }
    qkv_optim_set_group_scale(qkv_trainer_optim(t), 1, encoder_scale(r, 0));
    if (!r->quiet) {
        printf("%s on %lld labelled images (%.3g%% of each class), %lld steps of %lld\n",
               r->scratch ? "from scratch" : "fine-tuning the MoCo encoder",
               (long long)v.n_subset, 100.0 * r->fraction,
               (long long)(qkv_trainer_steps_per_epoch(t) * r->epochs), (long long)v.B);
        if (!r->scratch && (r->head_epochs > 0 || r->encoder_lr != 1.0))
            printf("the head alone for %lld epochs, then the encoder at %g times the lr\n",
                   (long long)r->head_epochs, r->encoder_lr);
        fflush(stdout);
    }
    if ((st = qkv_trainer_run(t)) != QKV_OK)
        goto done;
    if (res)
        *res = (qkv_finetune_result){.test_accuracy = v.test_acc, .train_accuracy = v.train_acc,
                                     .labels = v.n_subset};
done:
    qkv_trainer_free(t);
    if (v.model)
        qkv_model_free(v.model);
    else
        qkv_params_free(v.ps);
    qkv_moco_free(&m);
    qkv_mnist_free(&v.train);
    qkv_mnist_free(&v.test);
    qkv__free(v.subset);
    return st;
}
