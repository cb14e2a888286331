/*
 * kreg_recipe.c - the book's learnable Nadaraya-Watson regression trained
 * through the library's trainer (d2l r0.17 "nadaraya-watson"): one scalar
 * width w, every training point a query whose keys and values are the other
 * points, the sum of squared errors, SGD, one full batch an epoch.
 */
#include "train_internal.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    const float *x, *y;
    float *keys, *values; /* (n, n - 1) each: leave one out */
    int64_t n;
    qkv_tensor *w;
    float *losses;
} kreg_run;

/* a batch: the query indices */
static qkv_status fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    memcpy(batch, idx, (size_t)n * sizeof *idx);
    (void)user, (void)rng;
    return QKV_OK;
}

/* queries [lo, hi) (in order: the batch is the whole set, unshuffled) */
static qkv_tensor *loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user)
{
    const kreg_run *k = user;
    int64_t m = b->hi - b->lo, kv[2] = {m, k->n - 1};
    int64_t first = ((const int64_t *)b->batch)[b->lo];
    qkv_tensor *y_hat = qkv_kreg_forward(ctx, qkv_from_data(ctx, 1, &m, k->x + first),
                                         qkv_wrap(ctx, 2, kv, k->keys + first * (k->n - 1)),
                                         qkv_wrap(ctx, 2, kv, k->values + first * (k->n - 1)),
                                         k->w, NULL);
    /* MSELoss(reduction='none') then .sum(), as the book: the sum of
     * squared errors, not their mean, so lr 0.5 means what it says there */
    return qkv_mse_loss(ctx, y_hat, qkv_from_data(ctx, 1, &m, k->y + first), QKV_REDUCE_SUM);
}

static qkv_status record(qkv_trainer *t, qkv_train_epoch *e, void *user)
{
    kreg_run *k = user;
    if (k->losses)
        k->losses[e->epoch - 1] = (float)e->loss;
    (void)t;
    return QKV_OK;
}

qkv_status qkv_kreg_train(float *w, const float *x_train, const float *y_train, int64_t n,
                          int epochs, float lr, float *losses)
{
    if (!w || !x_train || !y_train)
        return qkv_set_error(QKV_ERR_ARG, "kreg_train: NULL argument");
    if (n < 2 || epochs < 0 || !isfinite(lr))
        return qkv_set_error(QKV_ERR_ARG,
                             "kreg_train: need n >= 2, epochs >= 0 and a finite lr, got n "
                             "%lld, epochs %d, lr %g",
                             (long long)n, epochs, (double)lr);
    kreg_run k = {.x = x_train, .y = y_train, .n = n, .losses = losses};
    qkv_params *ps = qkv_params_new();
    k.keys = qkv__malloc(2 * (size_t)n * (size_t)(n - 1) * sizeof(float));
    k.w = ps ? qkv_params_add(ps, "w", 1, (int64_t[]){1}, 0) : NULL;
    qkv_trainer *t = NULL;
    qkv_status st = QKV_OK;
    if (!k.keys || !k.w || qkv_params_alloc(ps) != QKV_OK) {
        st = qkv_error_status() ? qkv_error_status()
                                : qkv_set_error(QKV_ERR_NOMEM, "kreg_train: out of memory");
        goto done;
    }
    k.values = k.keys + n * (n - 1);
    qkv_kreg_leave_one_out(k.keys, k.values, x_train, y_train, n);
    k.w->data[0] = *w;
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = ps, .loss = loss, .user = &k, .epochs = epochs, .threads = 1,
        .data = {.n_examples = n, .batch_size = n, .batch_bytes = (size_t)n * sizeof(int64_t),
                 .fill = fill},
        .optim = {.kind = QKV_SGD, .lr = lr}, .evaluate = record, .print_every = -1});
    if (!t || (st = qkv_trainer_run(t)) != QKV_OK) {
        st = st ? st : qkv_error_status();
        goto done;
    }
    *w = k.w->data[0];
done:
    qkv_trainer_free(t);
    qkv_params_free(ps);
    qkv__free(k.keys);
    return st;
}
