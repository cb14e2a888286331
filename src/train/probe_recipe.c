/*
 * probe_recipe.c - linear evaluation of a self-supervised encoder (`qkv
 * probe`; MoCo's main_lincls.py): the encoder frozen in eval mode, a new
 * linear classifier trained on its features by the library's trainer.
 *
 * The features are computed once, without augmentation, so that an epoch
 * is one (n, F) x (F, 10) product instead of n forwards of the encoder
 * (MoCo crops and flips each epoch). Optionally they are standardised with
 * the training set's per-dimension mean and deviation, which lets plain
 * SGD converge in a few epochs (docs/moco.md). With a grid the features are
 * the encoder's last map pooled to grid x grid cells rather than one: a
 * linear classifier on more of what the frozen encoder computed.
 */
#include "train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void qkv_probe_recipe_default(qkv_probe_recipe *r)
{
    qkv_probe_recipe keep = *r;
    /* main_lincls.py: SGD lr 30 (moco-v3's for a ViT: 3; lr 0 picks by the
     * encoder), momentum 0.9, no weight decay, batch 256, 100 epochs (its
     * steps at 60 and 80 replaced by a cosine) */
    *r = (qkv_probe_recipe){.epochs = 100, .batch_size = 256, .lr = 0.0, .momentum = 0.9f};
    r->model = keep.model, r->data_dir = keep.data_dir, r->out_dir = keep.out_dir;
    r->seed = keep.seed, r->threads = keep.threads, r->quiet = keep.quiet;
    r->limit = keep.limit, r->eval_limit = keep.eval_limit;
    r->standardize = keep.standardize, r->grid = keep.grid;
}

typedef struct {
    const qkv_probe_recipe *r;
    int64_t F, n_train, n_test;
    float *train_x, *test_x;      /* (n, F) features                 */
    int64_t *train_y, *test_y;
    qkv_params *ps;
    qkv_nn_linear fc;
    double test_acc, train_acc;
} probe_run;

/* A batch: features (B, F), then labels (B) */
static qkv_status fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    const probe_run *v = user;
    float *x = batch;
    int64_t *y = (int64_t *)(void *)(x + v->r->batch_size * v->F);
    for (int64_t i = 0; i < n; i++) {
        memcpy(x + i * v->F, v->train_x + idx[i] * v->F, (size_t)v->F * sizeof(float));
        y[i] = v->train_y[idx[i]];
    }
    (void)rng;
    return QKV_OK;
}

static int64_t argmax_row(const float *row, int64_t K)
{
    int64_t best = 0;
    for (int64_t k = 1; k < K; k++)
        if (row[k] > row[best])
            best = k;
    return best;
}

static qkv_tensor *loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user)
{
    const probe_run *v = user;
    const float *x = b->batch;
    const int64_t *y = (const int64_t *)(const void *)(x + v->r->batch_size * v->F) + b->lo;
    qkv_tensor *logits = qkv_nn_linear_forward(
        ctx, &v->fc, qkv_wrap(ctx, 2, (int64_t[]){b->hi - b->lo, v->F}, (float *)x + b->lo * v->F));
    qkv_tensor *l = qkv_cross_entropy(ctx, logits, y, &(qkv_ce_opts){
                                                          .ignore_index = QKV_NO_IGNORE,
                                                          .reduction = QKV_REDUCE_SUM});
    if (!l)
        return NULL;
    for (int64_t r = 0; r < b->hi - b->lo; r++)
        b->stats[0] += argmax_row(logits->data + r * 10, 10) == y[r];
    return qkv_scale(ctx, l, 1.0f / (float)b->n_global);
}

/* Test images classified right */
static int64_t test_right(qkv_ctx *ctx, const probe_run *v)
{
    int64_t right = 0;
    for (int64_t at = 0; at < v->n_test; at += 1000) {
        int64_t n = v->n_test - at < 1000 ? v->n_test - at : 1000;
        qkv_ctx_reset(ctx);
        qkv_tensor *logits = qkv_nn_linear_forward(
            ctx, &v->fc, qkv_wrap(ctx, 2, (int64_t[]){n, v->F}, v->test_x + at * v->F));
        if (!logits)
            return -1;
        for (int64_t i = 0; i < n; i++)
            right += argmax_row(logits->data + i * 10, 10) == v->test_y[at + i];
    }
    qkv_ctx_reset(ctx);
    return right;
}

static qkv_status evaluate(qkv_trainer *t, qkv_train_epoch *e, void *user)
{
    probe_run *v = user;
    int64_t right = test_right(qkv_trainer_eval_ctx(t), v);
    if (right < 0)
        return qkv_error_status();
    v->test_acc = (double)right / (double)v->n_test;
    v->train_acc = e->examples ? e->stats[0] / (double)e->examples : NAN;
    qkv_status st = qkv_train_epoch_put(e, "train_acc", v->train_acc);
    return st ? st : qkv_train_epoch_put(e, "test_acc", v->test_acc);
}

/* x (n, F) -= mean, /= std, both of the training features */
static void standardize(float *train, int64_t n, float *test, int64_t nt, int64_t F)
{
    for (int64_t f = 0; f < F; f++) {
        double s = 0.0, ss = 0.0;
        for (int64_t i = 0; i < n; i++)
            s += train[i * F + f];
        double mean = s / (double)n;
        for (int64_t i = 0; i < n; i++)
            ss += (train[i * F + f] - mean) * (train[i * F + f] - mean);
        float inv = (float)(1.0 / sqrt(ss / (double)n + 1e-12));
        for (int64_t i = 0; i < n; i++)
            train[i * F + f] = (float)(train[i * F + f] - mean) * inv;
        for (int64_t i = 0; i < nt; i++)
            test[i * F + f] = (float)(test[i * F + f] - mean) * inv;
    }
}

qkv_status qkv_probe_train(const qkv_probe_recipe *r, qkv_probe_result *res)
{
    if (!r || !r->model || r->epochs < 0 || r->batch_size < 1 || r->grid < 0)
        return qkv_set_error(QKV_ERR_ARG, "probe_train: %s",
                             !r || !r->model ? "no model"
                                             : "need epochs >= 0, a batch >= 1 and a grid >= 0");
    int64_t grid = r->grid > 1 ? r->grid : 1;
    probe_run v = {.r = r, .test_acc = NAN, .train_acc = NAN};
    qkv_moco m = {0};
    qkv_mnist train = {0}, test = {0};
    qkv_trainer *t = NULL;
    qkv_ctx *ctx = NULL;
    qkv_shards *sh = NULL;
    qkv_status st = qkv_moco_open(&m, r->model);
    if (!st)
        st = qkv_mnist_load(&train, r->data_dir, 1);
    if (!st)
        st = qkv_mnist_load(&test, r->data_dir, 0);
    if (st)
        goto done;
    v.F = m.features * grid * grid;
    v.n_train = r->limit > 0 && r->limit < train.n ? r->limit : train.n;
    v.n_test = r->eval_limit > 0 && r->eval_limit < test.n ? r->eval_limit : test.n;
    v.train_x = qkv__malloc((size_t)(v.n_train * v.F) * sizeof(float));
    v.test_x = qkv__malloc((size_t)(v.n_test * v.F) * sizeof(float));
    v.train_y = qkv__malloc((size_t)v.n_train * sizeof(int64_t));
    v.test_y = qkv__malloc((size_t)v.n_test * sizeof(int64_t));
    if (!(ctx = qkv_ctx_new()) || !v.train_x || !v.test_x || !v.train_y || !v.test_y) {
        st = qkv_set_error(QKV_ERR_NOMEM, "probe_train: out of memory");
        goto done;
    }
    double t0 = qkv_now();
    if (!(sh = qkv_shards_new(m.ps, r->threads))) {
        st = qkv_error_status();
        goto done;
    }
    if ((st = qkv_moco_embed_grid(NULL, sh, &m, &train, v.n_train, 0, grid, v.train_x)) ||
        (st = qkv_moco_embed_grid(NULL, sh, &m, &test, v.n_test, 0, grid, v.test_x)))
        goto done;
    for (int64_t i = 0; i < v.n_train; i++)
        v.train_y[i] = train.labels[i];
    for (int64_t i = 0; i < v.n_test; i++)
        v.test_y[i] = test.labels[i];
    if (r->standardize)
        standardize(v.train_x, v.n_train, v.test_x, v.n_test, v.F);
    if (!r->quiet) {
        printf("features of %lld training and %lld test images (F %lld%s) in %.1f s\n",
               (long long)v.n_train, (long long)v.n_test, (long long)v.F,
               grid > 1 ? ", the last map pooled to a grid" : "", qkv_now() - t0);
        fflush(stdout);
    }
    /* the classifier: main_lincls.py's fc, N(0, 0.01) and zero */
    if (!(v.ps = qkv_params_new()) || (st = qkv_nn_linear_init(&v.fc, v.ps, "fc", v.F, 10, 1)) ||
        (st = qkv_params_alloc(v.ps))) {
        st = st ? st : qkv_error_status();
        goto done;
    }
    qkv_rng init;
    qkv_rng_seed(&init, r->seed + 2);
    qkv_init_normal(&init, v.fc.weight, 0.0f, 0.01f);
    qkv_init_constant(v.fc.bias, 0.0f);
    int64_t B = r->batch_size < v.n_train ? r->batch_size : v.n_train;
    qkv_probe_recipe rb = *r;
    rb.batch_size = B;
    if (!(rb.lr > 0.0))
        rb.lr = r->standardize ? 0.1 : m.cfg.arch == QKV_MOCO_VIT ? 3.0 : 30.0;
    if (!r->quiet) {
        printf("linear probe: SGD lr %g, momentum %g, weight decay %g, %lld epochs of %lld%s\n",
               rb.lr, (double)r->momentum, r->weight_decay, (long long)r->epochs, (long long)B,
               r->standardize ? ", standardised features" : "");
        fflush(stdout);
    }
    v.r = &rb;
    static const char *const curves[] = {"loss", "train_acc", "test_acc", NULL};
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = v.ps, .loss = loss, .user = &v, .epochs = r->epochs,
        .data = {.n_examples = v.n_train, .batch_size = B, .shuffle = 1, .seed = r->seed + 1,
                 .batch_bytes = (size_t)(B * v.F) * sizeof(float) + (size_t)B * sizeof(int64_t),
                 .fill = fill, .user = &v},
        .optim = {.kind = QKV_SGD, .lr = (float)rb.lr, .momentum = r->momentum,
                  .weight_decay = (float)r->weight_decay},
        .schedule = {.kind = QKV_LR_COSINE}, .threads = 1, .seed = r->seed,
        .evaluate = evaluate, .out_dir = r->out_dir, .label = "probe",
        .print_every = r->quiet ? -1 : (r->epochs > 20 ? 10 : 1), .curves = curves,
        .title = "Linear probe on frozen MoCo features", .save_every = r->epochs});
    if (!t || (st = qkv_trainer_run(t)) != QKV_OK) {
        st = st ? st : qkv_error_status();
        goto done;
    }
    if (!isfinite(v.test_acc)) {
        int64_t right = test_right(ctx, &v);
        v.test_acc = right < 0 ? NAN : (double)right / (double)v.n_test;
    }
    if (res)
        *res = (qkv_probe_result){.test_accuracy = v.test_acc, .train_accuracy = v.train_acc};
done:
    qkv_trainer_free(t);
    qkv_shards_free(sh);
    qkv_ctx_free(ctx);
    qkv_params_free(v.ps);
    qkv_moco_free(&m);
    qkv_mnist_free(&train);
    qkv_mnist_free(&test);
    qkv__free(v.train_x), qkv__free(v.test_x), qkv__free(v.train_y), qkv__free(v.test_y);
    return st;
}
