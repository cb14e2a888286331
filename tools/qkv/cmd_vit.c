/*
 * cmd_vit.c - the Vision Transformer on Fashion-MNIST from the command line:
 *   qkv train vit     trains (d2l v1.0.3's config with --preset d2l, else a
 *                     small ViT for 28x28 sized for 2 cores: 0.91 in 25 min)
 *   qkv eval vit      accuracy and confusion matrix of a saved model
 *   qkv classify      top classes of PNG/JPEG images, attention rollout map
 * Models are torchvision VisionTransformer state dicts (docs/vit.md).
 */
#include "args.h"
#include "cli_util.h"
#include "commands.h"
#include "qkv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char *const class_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                            "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                            "Bag",         "Ankle boot"};

/* Images per forward when evaluating; training and `eval vit` use the same,
 * so that both sum in the same order and agree to the last image. */
#define EVAL_BATCH 500

static void join(char *buf, size_t n, const char *dir, const char *file)
{
    snprintf(buf, n, "%s/%s", dir, file);
}

/* ---- images into a batch ---- */

/* How a training image is augmented: a random crop of the image padded by
 * `crop` zero pixels (a shift of up to crop pixels each way), and with
 * `flip` a horizontal flip half the time. */
typedef struct {
    int64_t crop;
    int flip;
} augment;

/* Image i of d as floats in [0, 1] (ToTensor), resized to size x size
 * (bilinear, as F.interpolate) when the model does not take 28x28. aug
 * (NULL: none): an image takes three draws of rng (shift y, shift x, flip)
 * whichever of crop and flip is on. dst: size * size floats. */
static qkv_status load_image(float *dst, const qkv_mnist *d, int64_t i, int64_t size,
                             qkv_rng *rng, const augment *aug)
{
    int64_t R = d->rows, C = d->cols;
    const uint8_t *src = d->images + i * R * C;
    int64_t dy = 0, dx = 0;
    int flip = 0;
    if (aug && (aug->crop > 0 || aug->flip)) {
        dy = (int64_t)qkv_rng_below(rng, (uint64_t)(2 * aug->crop + 1)) - aug->crop;
        dx = (int64_t)qkv_rng_below(rng, (uint64_t)(2 * aug->crop + 1)) - aug->crop;
        flip = qkv_rng_below(rng, 2) == 1 && aug->flip;
    }
    qkv_image img = {.c = 1, .h = R, .w = C, .data = size == R && size == C ? dst : NULL};
    if (!img.data && !(img.data = malloc((size_t)(R * C) * sizeof(float))))
        return qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t y = 0; y < R; y++)
        for (int64_t x = 0; x < C; x++) {
            int64_t sy = y + dy, sx = (flip ? C - 1 - x : x) + dx;
            img.data[y * C + x] =
                sy < 0 || sy >= R || sx < 0 || sx >= C ? 0.0f : src[sy * C + sx] / 255.0f;
        }
    if (img.data == dst)
        return QKV_OK;
    qkv_image big;
    qkv_status s = qkv_image_resize(&big, &img, size, size);
    free(img.data);
    if (s != QKV_OK)
        return s;
    memcpy(dst, big.data, (size_t)(size * size) * sizeof(float));
    qkv_image_free(&big);
    return QKV_OK;
}

/* A prepared batch: images (B, 1, size, size) then labels (B). The loader's
 * worker thread fills the next one while the current one trains. */
typedef struct {
    const qkv_mnist *d;
    int64_t batch, size;
    augment aug;
} feed;

static size_t feed_bytes(const feed *f)
{
    return (size_t)(f->batch * f->size * f->size) * sizeof(float) +
           (size_t)f->batch * sizeof(int64_t);
}

static qkv_status fill_batch(void *user, const int64_t *idx, int64_t n, qkv_rng *rng,
                             void *batch)
{
    const feed *f = user;
    float *x = batch;
    int64_t *y = (int64_t *)(void *)(x + f->batch * f->size * f->size);
    for (int64_t i = 0; i < n; i++) {
        y[i] = f->d->labels[idx[i]];
        qkv_status s = load_image(x + i * f->size * f->size, f->d, idx[i], f->size, rng,
                                  &f->aug);
        if (s != QKV_OK)
            return s;
    }
    return QKV_OK;
}

/* ---- a model on disk ---- */

/* The state dict, with the heads (which shapes do not tell) in the
 * metadata; torchvision loads it as it is (scripts/vit_interop.py). */
static qkv_status save_model(const char *path, qkv_params *ps, const qkv_vit_config *c,
                             double test_acc)
{
    qkv_st_writer *w = qkv_st_writer_new();
    if (!w)
        return qkv_error_status();
    qkv_status s = QKV_OK;
    for (int64_t i = 0; i < qkv_params_count(ps) && s == QKV_OK; i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        s = qkv_st_add_tensor(w, t->name, t);
    }
    char v[64];
    snprintf(v, sizeof v, "%lld", (long long)c->num_heads);
    if (s == QKV_OK)
        s = qkv_st_set_meta(w, "num_heads", v);
    snprintf(v, sizeof v, "%.4f", test_acc);
    if (s == QKV_OK && test_acc >= 0)
        s = qkv_st_set_meta(w, "test_accuracy", v);
    if (s == QKV_OK)
        s = qkv_st_set_meta(w, "format", "torchvision.models.VisionTransformer state_dict");
    if (s == QKV_OK)
        s = qkv_st_write(w, path);
    qkv_st_writer_free(w);
    return s;
}

typedef struct {
    qkv_params *ps;
    qkv_vit m;
} model;

/* path: a model file, or a directory holding model.safetensors. heads: 0
 * to take them from the file's metadata. */
static int open_model(model *md, const char *path, int64_t heads)
{
    char buf[4096];
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        join(buf, sizeof buf, path, "model.safetensors");
        path = buf;
    }
    qkv_st_file *f = qkv_st_open(path);
    if (!f) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
        return 1;
    }
    qkv_vit_config cfg = {.num_heads = heads};
    md->ps = qkv_params_new();
    qkv_status s = qkv_vit_config_from_file(&cfg, f);
    if (s == QKV_OK)
        s = qkv_vit_init(&md->m, md->ps, &cfg);
    if (s == QKV_OK)
        s = qkv_params_alloc(md->ps);
    if (s == QKV_OK)
        s = qkv_params_load_file(md->ps, f, path, 1);
    qkv_st_close(f);
    if (s != QKV_OK) {
        fprintf(stderr, "qkv: %s: %s\n", path, qkv_error());
        qkv_params_free(md->ps);
        return 1;
    }
    return 0;
}

/* ---- evaluation ---- */

/* Accuracy on the first n images of d in eval mode; confusion (K*K, rows
 * the true class) is filled if not NULL. Returns the number right, or -1. */
static int64_t evaluate(qkv_ctx *ctx, const qkv_vit *m, const qkv_mnist *d, int64_t n,
                        int64_t *confusion)
{
    int64_t size = m->cfg.image_size, K = m->cfg.num_classes, right = 0;
    int was_training = qkv_set_training(ctx, 0), had_grad = qkv_set_grad_enabled(ctx, 0);
    if (confusion)
        memset(confusion, 0, (size_t)(K * K) * sizeof *confusion);
    for (int64_t at = 0; at < n && right >= 0; at += EVAL_BATCH) {
        int64_t b = n - at < EVAL_BATCH ? n - at : EVAL_BATCH;
        qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){b, 1, size, size});
        for (int64_t i = 0; x && i < b; i++)
            if (load_image(x->data + i * size * size, d, at + i, size, NULL, NULL) != QKV_OK)
                x = NULL;
        qkv_tensor *logits = x ? qkv_vit_forward(ctx, m, x, NULL) : NULL;
        if (!logits) {
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

/* ---- training ---- */

typedef struct {
    const char *preset, *data, *out_dir;
    int64_t epochs, batch, limit, eval_limit, crop, plain_epochs;
    double lr;
    uint64_t seed;
    int resume, no_augment;
} train_options;

/* What a preset fixes beyond the model. */
typedef struct {
    qkv_vit_config model;
    int64_t epochs, batch;
    double lr, weight_decay, label_smoothing, warmup_epochs, clip;
    int adamw, cosine;
    augment aug;
    int64_t plain_epochs; /* the last epochs without random crops (flips stay) */
} recipe;

static recipe recipe_for(const char *preset)
{
    if (!strcmp(preset, "d2l"))
        /* d2l v1.0.3: Resize 96, patch 16, 512 wide, MLP 2048, 8 heads, 2
         * blocks, dropouts 0.1, plain SGD 0.1, batch 128, 10 epochs */
        return (recipe){.model = {.image_size = 96, .patch_size = 16, .in_channels = 1,
                                  .hidden_dim = 512, .mlp_dim = 2048, .num_heads = 8,
                                  .num_layers = 2, .num_classes = 10, .dropout = 0.1f,
                                  .attention_dropout = 0.1f},
                        .epochs = 10, .batch = 128, .lr = 0.1};
    /* 28x28 in 7x7 patches of 4 pixels: 50 tokens, small enough for two
     * cores; AdamW with warmup and cosine decay, label smoothing, random
     * crops (padding 2) and flips, the last 6 epochs without crops: 0.9181
     * after 34 epochs, 23 minutes on two cores. Crops to the end underfit
     * (0.9096 after 30 epochs); flips alone overfit (0.902). docs/vit.md
     * has the runs. */
    return (recipe){.model = {.image_size = 28, .patch_size = 4, .in_channels = 1,
                              .hidden_dim = 96, .mlp_dim = 192, .num_heads = 4,
                              .num_layers = 4, .num_classes = 10},
                    .epochs = 34, .batch = 128, .lr = 2e-3, .weight_decay = 0.05,
                    .label_smoothing = 0.1, .warmup_epochs = 1, .clip = 1.0, .adamw = 1,
                    .cosine = 1, .aug = {.crop = 2, .flip = 1}, .plain_epochs = 6};
}

typedef struct {
    float *loss, *train_acc, *test_acc, *epoch;
} curves;

static void plot_curves(const char *dir, const curves *c, int64_t n)
{
    char path[4096];
    join(path, sizeof path, dir, "curves.png");
    qkv_series s[3] = {{.name = "train loss", .x = c->epoch, .y = c->loss, .n = n},
                       {.name = "train acc", .x = c->epoch, .y = c->train_acc, .n = n},
                       {.name = "test acc", .x = c->epoch, .y = c->test_acc, .n = n}};
    if (qkv_plot_lines(path, 3, s, &(qkv_plot_opts){.title = "ViT on Fashion-MNIST"}) != QKV_OK)
        fprintf(stderr, "qkv: %s\n", qkv_error());
}

/* One training batch as the shards see it. */
typedef struct {
    const qkv_vit *m;
    float *xs;          /* (B, 1, size, size) */
    const int64_t *y;   /* (B) */
    int64_t B, size, K;
    qkv_ce_opts ce;     /* reduction QKV_REDUCE_SUM: each shard's sum over B */
    double *loss;       /* per shard: its part of the batch's mean loss */
    int64_t *right;     /* per shard: images classified right */
} vit_batch;

/* Shard i's images: forward, its part of the batch's mean cross-entropy
 * (sum / B, so that the shards' gradients add up to the mean's), backward. */
static qkv_status train_shard(qkv_ctx *ctx, int i, int n, void *arg)
{
    vit_batch *bt = arg;
    int64_t lo, hi, px = bt->size * bt->size;
    qkv_shard_rows(bt->B, i, n, &lo, &hi);
    bt->loss[i] = 0.0, bt->right[i] = 0;
    if (hi == lo)
        return QKV_OK;
    qkv_tensor *x = qkv_wrap(ctx, 4, (int64_t[]){hi - lo, 1, bt->size, bt->size}, bt->xs + lo * px);
    qkv_tensor *logits = x ? qkv_vit_forward(ctx, bt->m, x, NULL) : NULL;
    qkv_tensor *loss = qkv_scale(ctx, logits ? qkv_cross_entropy(ctx, logits, bt->y + lo, &bt->ce)
                                             : NULL,
                                 1.0f / (float)bt->B);
    if (!loss)
        return qkv_error_status();
    bt->loss[i] = loss->data[0];
    for (int64_t r = 0; r < hi - lo; r++) {
        const float *row = logits->data + r * bt->K;
        int64_t best = 0;
        for (int64_t k = 1; k < bt->K; k++)
            if (row[k] > row[best])
                best = k;
        bt->right[i] += best == bt->y[lo + r];
    }
    return qkv_backward(ctx, loss);
}

static int train(const train_options *o)
{
    recipe rc = recipe_for(o->preset);
    if (o->crop >= 0)
        rc.aug.crop = o->crop;
    if (o->plain_epochs >= 0)
        rc.plain_epochs = o->plain_epochs;
    if (o->no_augment)
        rc.aug = (augment){0};
    int64_t epochs = o->epochs >= 0 ? o->epochs : rc.epochs;
    int64_t B = o->batch > 0 ? o->batch : rc.batch;
    double lr = o->lr > 0 ? o->lr : rc.lr;
    qkv_mnist tr = {0}, te = {0};
    if (qkv_mnist_load(&tr, o->data, 1) != QKV_OK || qkv_mnist_load(&te, o->data, 0) != QKV_OK) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
        qkv_mnist_free(&tr);
        return 1;
    }
    int64_t n_train = o->limit > 0 && o->limit < tr.n ? o->limit : tr.n;
    int64_t n_test = o->eval_limit > 0 && o->eval_limit < te.n ? o->eval_limit : te.n;
    if (B > n_train)
        B = n_train;
    int64_t steps_per_epoch = n_train / B; /* the last partial batch is dropped */
    int64_t total_steps = steps_per_epoch * epochs;
    int64_t warmup = (int64_t)(rc.warmup_epochs * (double)steps_per_epoch);
    int status = 1;

    model md = {.ps = qkv_params_new()};
    qkv_ctx *ctx = qkv_ctx_new(); /* evaluation */
    qkv_shards *sh = NULL;        /* training: one shard of each batch per thread */
    double shard_loss[64];
    int64_t shard_right[64];
    qkv_optim *opt = NULL;
    qkv_metrics *metrics = NULL;
    qkv_loader *loader = NULL;
    curves cv = {malloc((size_t)(epochs + 1) * sizeof(float)),
                 malloc((size_t)(epochs + 1) * sizeof(float)),
                 malloc((size_t)(epochs + 1) * sizeof(float)),
                 malloc((size_t)(epochs + 1) * sizeof(float))};
    char path[4096], ckpt[4096], cfg_json[1024];
    if (!md.ps || !ctx || !cv.loss || !cv.train_acc || !cv.test_acc || !cv.epoch) {
        fprintf(stderr, "qkv: out of memory\n");
        goto done;
    }
    if (cli_make_dirs(o->out_dir) != 0) {
        fprintf(stderr, "qkv: cannot create %s: %s\n", o->out_dir, strerror(errno));
        goto done;
    }
    qkv_vit_config *mc = &rc.model;
    if (qkv_vit_init(&md.m, md.ps, mc) != QKV_OK || qkv_params_alloc(md.ps) != QKV_OK ||
        !(sh = qkv_shards_new(md.ps, qkv_threads() < 64 ? qkv_threads() : 64))) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
        goto done;
    }
    qkv_checkpoint_info info = {0};
    qkv_rng_seed(&info.rng[0], o->seed);     /* dropout: each epoch seeds the shards' */
    qkv_rng_seed(&info.rng[1], o->seed + 1); /* unused: the loader's order and
                                                  augmentation come from (seed, epoch) */
    qkv_rng init;
    qkv_rng_seed(&init, o->seed + 2);
    qkv_vit_reset(&md.m, &init);
    opt = qkv_optim_new(md.ps, &(qkv_optim_config){
                                   .kind = rc.adamw ? QKV_ADAMW : QKV_SGD, .lr = (float)lr,
                                   .weight_decay = (float)rc.weight_decay});
    if (!opt) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
        goto done;
    }
    snprintf(cfg_json, sizeof cfg_json,
             "{\"preset\": \"%s\", \"epochs\": %lld, \"batch\": %lld, \"lr\": %g, "
             "\"limit\": %lld, \"seed\": %llu}",
             o->preset, (long long)epochs, (long long)B, lr, (long long)n_train,
             (unsigned long long)o->seed);
    info.config = cfg_json;
    join(ckpt, sizeof ckpt, o->out_dir, "checkpoint.safetensors");
    int64_t first_epoch = 0, step = 0;
    if (o->resume) {
        if (qkv_checkpoint_load(ckpt, md.ps, opt, &info) != QKV_OK) {
            fprintf(stderr, "qkv: --resume: %s\n", qkv_error());
            goto done;
        }
        first_epoch = info.epoch;
        step = info.step;
        info.config = cfg_json;
        printf("resumed from %s at epoch %lld\n", ckpt, (long long)first_epoch);
    }
    join(path, sizeof path, o->out_dir, o->resume ? "metrics.resumed.jsonl" : "metrics.jsonl");
    if (!(metrics = qkv_metrics_open(path))) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
        goto done;
    }
    printf("ViT %lldx%lld patch %lld, width %lld, MLP %lld, %lld heads, %lld blocks: %lld "
           "parameters\ntraining on %lld images, %lld steps of %lld, %s lr %g, %d threads\n",
           (long long)mc->image_size, (long long)mc->image_size, (long long)mc->patch_size,
           (long long)mc->hidden_dim, (long long)mc->mlp_dim, (long long)mc->num_heads,
           (long long)mc->num_layers, (long long)qkv_params_numel(md.ps), (long long)n_train,
           (long long)steps_per_epoch, (long long)B, rc.adamw ? "AdamW" : "SGD", lr,
           qkv_threads());
    fflush(stdout);
    int64_t size = mc->image_size, K = mc->num_classes;
    qkv_ce_opts ce = {.ignore_index = QKV_NO_IGNORE, .label_smoothing = (float)rc.label_smoothing,
                      .reduction = QKV_REDUCE_SUM};
    feed fd = {.d = &tr, .batch = B, .size = size, .aug = rc.aug};
    loader = qkv_loader_new(&(qkv_loader_config){
        .n_examples = n_train, .batch_size = B, .shuffle = 1, .drop_last = 1,
        .seed = o->seed + 1, .batch_bytes = feed_bytes(&fd), .fill = fill_batch, .user = &fd});
    if (!loader) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
        goto done;
    }
    double t_run = cli_now();
    int64_t n_points = 0;
    for (int64_t e = first_epoch; e < epochs; e++) {
        /* the loader is idle between epochs: its fills read fd.aug again
         * only after qkv_loader_start_epoch */
        int64_t plain_from = epochs - rc.plain_epochs > 0 ? epochs - rc.plain_epochs : 0;
        fd.aug.crop = e >= plain_from ? 0 : rc.aug.crop;
        if (rc.aug.crop > 0 && rc.plain_epochs > 0 && e == plain_from)
            printf("no random crops from epoch %lld on\n", (long long)e + 1);
        if (qkv_loader_start_epoch(loader, e) != QKV_OK) {
            fprintf(stderr, "qkv: %s\n", qkv_error());
            goto done;
        }
        for (int i = 0; i < qkv_shards_count(sh); i++)
            qkv_rng_seed(qkv_ctx_rng(qkv_shards_ctx(sh, i)), qkv_rng_u64(&info.rng[0]));
        double t0 = cli_now(), loss_sum = 0.0;
        int64_t right = 0, seen = 0;
        qkv_progress bar;
        char label[48], extra[96];
        snprintf(label, sizeof label, "epoch %lld/%lld", (long long)e + 1, (long long)epochs);
        qkv_progress_start(&bar, steps_per_epoch, label);
        for (int64_t s = 0; s < steps_per_epoch; s++, step++) {
            if (rc.cosine)
                qkv_optim_set_lr(opt, qkv_lr_cosine((float)lr, step, warmup, total_steps, 0.0f));
            int64_t got = 0;
            float *xs = (float *)qkv_loader_next(loader, &got);
            if (!xs || got != B) {
                fprintf(stderr, "\nqkv: %s\n", xs ? "short batch" : qkv_error());
                goto done;
            }
            vit_batch bt = {.m = &md.m, .xs = xs, .B = B, .size = size, .K = K, .ce = ce,
                            .y = (const int64_t *)(const void *)(xs + B * size * size),
                            .loss = shard_loss, .right = shard_right};
            if (qkv_shards_run(sh, train_shard, &bt) != QKV_OK) {
                fprintf(stderr, "\nqkv: %s\n", qkv_error());
                goto done;
            }
            double step_loss = 0;
            for (int i = 0; i < qkv_shards_count(sh); i++) {
                step_loss += shard_loss[i];
                right += shard_right[i];
            }
            if (!isfinite(step_loss)) {
                fprintf(stderr, "\nqkv: the loss is %g at step %lld; try a lower --lr\n",
                        step_loss, (long long)step);
                goto done;
            }
            if (rc.clip > 0)
                qkv_clip_grad_norm(md.ps, (float)rc.clip);
            qkv_optim_step(opt);
            qkv_params_zero_grad(md.ps);
            loss_sum += step_loss;
            seen += B;
            snprintf(extra, sizeof extra, "loss %.4f %.0f img/s", loss_sum / (double)(s + 1),
                     (double)seen / (cli_now() - t0));
            qkv_progress_update(&bar, s + 1, extra);
        }
        qkv_progress_finish(&bar, extra);
        double t_train = cli_now() - t0;
        int64_t test_right = evaluate(ctx, &md.m, &te, n_test, NULL);
        if (test_right < 0) {
            fprintf(stderr, "qkv: %s\n", qkv_error());
            goto done;
        }
        double loss = loss_sum / (double)(steps_per_epoch > 0 ? steps_per_epoch : 1);
        double train_acc = seen ? (double)right / (double)seen : 0.0;
        double test_acc = (double)test_right / (double)n_test;
        double ips = (double)seen / t_train, elapsed = cli_now() - t_run;
        printf("epoch %lld/%lld  loss %.4f  train acc %.4f  test accuracy %.4f (%lld/%lld)  "
               "%.0f img/s  %.0f s\n",
               (long long)e + 1, (long long)epochs, loss, train_acc, test_acc,
               (long long)test_right, (long long)n_test, ips, elapsed);
        fflush(stdout);
        const char *names[] = {"loss", "train_acc", "test_acc", "images_per_s", "seconds",
                               "lr"};
        double vals[] = {loss, train_acc, test_acc, ips, elapsed, qkv_optim_lr(opt)};
        qkv_metrics_write(metrics, e + 1, 6, names, vals);
        cv.epoch[n_points] = (float)(e + 1);
        cv.loss[n_points] = (float)loss;
        cv.train_acc[n_points] = (float)train_acc;
        cv.test_acc[n_points++] = (float)test_acc;
        info.epoch = e + 1;
        info.step = step;
        join(path, sizeof path, o->out_dir, "model.safetensors");
        if (qkv_checkpoint_save(ckpt, md.ps, opt, &info) != QKV_OK ||
            save_model(path, md.ps, mc, test_acc) != QKV_OK) {
            fprintf(stderr, "qkv: %s\n", qkv_error());
            goto done;
        }
    }
    if (n_points > 0) {
        plot_curves(o->out_dir, &cv, n_points);
        printf("wrote %s/model.safetensors, checkpoint.safetensors, metrics.jsonl, "
               "curves.png\n", o->out_dir);
    }
    status = 0;
done:
    if (metrics)
        qkv_metrics_close(metrics);
    qkv_optim_free(opt);
    qkv_ctx_free(ctx);
    qkv_shards_free(sh);
    qkv_params_free(md.ps);
    qkv_mnist_free(&tr);
    qkv_mnist_free(&te);
    qkv_loader_free(loader);
    free(cv.loss);
    free(cv.train_acc);
    free(cv.test_acc);
    free(cv.epoch);
    return status;
}

int cmd_train_vit(int argc, char **argv)
{
    train_options o = {.preset = "default", .data = QKV_MNIST_DIR, .out_dir = "runs/vit",
                       .epochs = -1, .eval_limit = 0, .crop = -1, .plain_epochs = -1,
                       .seed = 0};
    arg_opt opts[] = {
        {.name = "preset", .kind = ARG_CHOICE, .value = &o.preset, .choices = "default|d2l",
         .help = "default: 28x28, patch 4, width 96, 4 blocks, AdamW, crops and flips, "
                 "34 epochs (the last 6 without crops); "
                 "d2l: the book's 96x96 ViT with SGD"},
        {.name = "data", .kind = ARG_STRING, .value = &o.data, .metavar = "DIR",
         .help = "Fashion-MNIST IDX files"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &o.out_dir, .metavar = "DIR",
         .help = "model, checkpoint, metrics.jsonl and curves.png go here"},
        {.name = "epochs", .kind = ARG_INT, .value = &o.epochs, .min = -1, .max = 10000,
         .help = "epochs (-1: the preset's, 34 or 10)"},
        {.name = "batch-size", .kind = ARG_INT, .value = &o.batch, .min = 0, .max = 65536,
         .help = "images per step (0: the preset's, 128)"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &o.lr, .min = 0, .max = 10,
         .help = "peak learning rate (0: the preset's, 2e-3 or 0.1)"},
        {.name = "limit", .kind = ARG_INT, .value = &o.limit, .min = 0, .max = 1e9,
         .help = "train on the first N images only (0: all 60000)"},
        {.name = "eval-limit", .kind = ARG_INT, .value = &o.eval_limit, .min = 0, .max = 1e9,
         .help = "test on the first N test images only (0: all 10000)"},
        {.name = "seed", .kind = ARG_U64, .value = &o.seed,
         .help = "seed of the initialisation, shuffling, augmentation and dropout"},
        {.name = "crop", .kind = ARG_INT, .value = &o.crop, .min = -1, .max = 64,
         .help = "random crops of the image padded by N pixels (-1: the preset's, 2 or 0)"},
        {.name = "plain-epochs", .kind = ARG_INT, .value = &o.plain_epochs, .min = -1,
         .max = 10000,
         .help = "the last N epochs without random crops (-1: the preset's, 6 or 0)"},
        {.name = "no-augment", .kind = ARG_FLAG, .value = &o.no_augment,
         .help = "no random crops and flips (the default preset has both)"},
        {.name = "resume", .kind = ARG_FLAG, .value = &o.resume,
         .help = "continue from OUT-DIR/checkpoint.safetensors (same options)"},
    };
    args_spec s = {
        .command = "train vit",
        .summary = "Trains a Vision Transformer (torchvision's VisionTransformer layout) on\n"
                   "Fashion-MNIST. Prints loss, images/s and test accuracy per epoch; writes\n"
                   "model.safetensors (a torchvision state dict), checkpoint.safetensors,\n"
                   "metrics.jsonl and curves.png into --out-dir.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    return rc != ARGS_CONTINUE ? rc : train(&o);
}

/* ---- eval ---- */

int cmd_eval_vit(int argc, char **argv)
{
    const char *path = "runs/vit", *data = QKV_MNIST_DIR;
    int64_t limit = 0, heads = 0;
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &path, .metavar = "FILE|DIR",
         .help = "a ViT state dict, or a training run's directory"},
        {.name = "data", .kind = ARG_STRING, .value = &data, .metavar = "DIR",
         .help = "Fashion-MNIST IDX files"},
        {.name = "limit", .kind = ARG_INT, .value = &limit, .min = 0, .max = 1e9,
         .help = "the first N test images only (0: all)"},
        {.name = "heads", .kind = ARG_INT, .value = &heads, .min = 0, .max = 4096,
         .help = "attention heads (0: from the file's metadata)"},
    };
    args_spec s = {.command = "eval vit",
                   .summary = "Accuracy and confusion matrix of a ViT on the Fashion-MNIST "
                              "test set.",
                   .opts = opts,
                   .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    model md;
    if (open_model(&md, path, heads))
        return 1;
    qkv_mnist te = {0};
    int64_t K = md.m.cfg.num_classes, *conf = calloc((size_t)(K * K), sizeof *conf);
    qkv_ctx *ctx = qkv_ctx_new();
    int status = 1;
    if (md.m.cfg.in_channels != 1) {
        fprintf(stderr, "qkv: %s takes %lld channels; Fashion-MNIST has 1\n", path,
                (long long)md.m.cfg.in_channels);
    } else if (qkv_mnist_load(&te, data, 0) != QKV_OK) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
    } else if (conf && ctx) {
        int64_t n = limit > 0 && limit < te.n ? limit : te.n;
        int64_t right = evaluate(ctx, &md.m, &te, n, conf);
        if (right < 0) {
            fprintf(stderr, "qkv: %s\n", qkv_error());
        } else {
            printf("accuracy %.4f (%lld/%lld)\n\nconfusion (rows: true class, columns: "
                   "predicted)\n%12s", (double)right / (double)n, (long long)right,
                   (long long)n, "");
            for (int64_t k = 0; k < K; k++)
                printf(" %5lld", (long long)k);
            printf("\n");
            for (int64_t t = 0; t < K; t++) {
                printf("%-12.12s", K == 10 ? class_names[t] : "");
                for (int64_t k = 0; k < K; k++)
                    printf(" %5lld", (long long)conf[t * K + k]);
                printf("\n");
            }
            status = 0;
        }
    }
    free(conf);
    qkv_ctx_free(ctx);
    qkv_mnist_free(&te);
    qkv_params_free(md.ps);
    return status;
}

/* ---- classify ---- */

/* Grey (PIL's convert("L") weights) at the model's size. */
static qkv_status grey_input(float *dst, const qkv_image *img, int64_t size)
{
    qkv_image g = {.c = 1, .h = img->h, .w = img->w};
    int64_t n = img->h * img->w;
    if (!(g.data = malloc((size_t)n * sizeof(float))))
        return qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        g.data[i] = img->c == 3 ? 0.299f * img->data[i] + 0.587f * img->data[n + i] +
                                      0.114f * img->data[2 * n + i]
                                : img->data[i];
    qkv_image r;
    qkv_status s = qkv_image_resize(&r, &g, size, size);
    free(g.data);
    if (s != QKV_OK)
        return s;
    memcpy(dst, r.data, (size_t)(size * size) * sizeof(float));
    qkv_image_free(&r);
    return QKV_OK;
}

/* The picture: the input on the left, the rollout map as a heat colour over
 * it on the right, each scaled up to at least 224 pixels. */
static qkv_status write_rollout(const char *path, const float *x, int64_t size,
                               const float *map, int64_t grid)
{
    int64_t up = size < 224 ? (224 + size - 1) / size : 1, S = size * up;
    qkv_image src = {.c = 1, .h = size, .w = size, .data = (float *)x};
    /* stretched to [0, 1]: rollout maps of a young model are nearly flat */
    float lo = map[0], hi = map[0], *stretched = malloc((size_t)(grid * grid) * sizeof(float));
    if (!stretched)
        return qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 1; i < grid * grid; i++) {
        lo = fminf(lo, map[i]);
        hi = fmaxf(hi, map[i]);
    }
    for (int64_t i = 0; i < grid * grid; i++)
        stretched[i] = hi > lo ? (map[i] - lo) / (hi - lo) : 0.0f;
    qkv_image m = {.c = 1, .h = grid, .w = grid, .data = stretched};
    qkv_image big = {0}, heat = {0};
    qkv_status s = qkv_image_resize(&big, &src, S, S);
    if (s == QKV_OK)
        s = qkv_image_resize(&heat, &m, S, S);
    qkv_image out = {.c = 3, .h = S, .w = 2 * S};
    if (s == QKV_OK && !(out.data = malloc((size_t)(3 * S * 2 * S) * sizeof(float))))
        s = qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t y = 0; s == QKV_OK && y < S; y++)
        for (int64_t xx = 0; xx < S; xx++) {
            float g = big.data[y * S + xx], a = heat.data[y * S + xx];
            float hc[3] = {fminf(1.0f, 3 * a), fminf(1.0f, fmaxf(0.0f, 3 * a - 1)),
                           fminf(1.0f, fmaxf(0.0f, 3 * a - 2))};
            for (int c = 0; c < 3; c++) {
                out.data[(c * S + y) * 2 * S + xx] = g;
                out.data[(c * S + y) * 2 * S + S + xx] = 0.4f * g + 0.6f * hc[c];
            }
        }
    if (s == QKV_OK)
        s = qkv_image_write_png(&out, path);
    free(out.data);
    free(stretched);
    qkv_image_free(&big);
    qkv_image_free(&heat);
    return s;
}

/* "out.png" for the first image, "out-2.png" for the second, .. */
static void nth_path(char *buf, size_t n, const char *path, int i)
{
    const char *dot = strrchr(path, '.');
    if (i == 0 || !dot)
        snprintf(buf, n, i == 0 ? "%s" : "%s-%d", path, i + 1);
    else
        snprintf(buf, n, "%.*s-%d%s", (int)(dot - path), path, i + 1, dot);
}

int cmd_classify(int argc, char **argv)
{
    const char *path = "runs/vit", *attention = NULL;
    int64_t top = 3, heads = 0;
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &path, .metavar = "FILE|DIR",
         .help = "a ViT state dict, or a training run's directory"},
        {.name = "top", .kind = ARG_INT, .value = &top, .min = 1, .max = 1000,
         .help = "classes printed per image"},
        {.name = "attention", .kind = ARG_STRING, .value = &attention, .metavar = "PNG",
         .help = "write the attention rollout over each image (out.png, out-2.png, ..)"},
        {.name = "heads", .kind = ARG_INT, .value = &heads, .min = 0, .max = 4096,
         .help = "attention heads (0: from the file's metadata)"},
    };
    args_spec s = {.command = "classify",
                   .summary = "Classifies PNG or JPEG images with a ViT: each is made grey and\n"
                              "resized to the model's size (Fashion-MNIST: light object on\n"
                              "black), then the top classes are printed with probabilities.",
                   .positional = "IMAGE",
                   .max_positional = 1000,
                   .opts = opts,
                   .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (s.n_pos < 1) {
        fprintf(stderr, "qkv classify: give at least one image\n");
        return 2;
    }
    model md;
    if (open_model(&md, path, heads))
        return 1;
    const qkv_vit_config *c = &md.m.cfg;
    int64_t size = c->image_size, K = c->num_classes, L = c->num_layers;
    int64_t grid = size / c->patch_size, N = grid * grid + 1;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_set_grad_enabled(ctx, 0);
    float *rollw = malloc((size_t)(L * N * N) * sizeof(float));
    float *map = malloc((size_t)(N - 1) * sizeof(float));
    qkv_tensor **w = calloc((size_t)L, sizeof *w);
    int status = ctx && rollw && map && w ? 0 : 1;
    if (c->in_channels != 1) {
        fprintf(stderr, "qkv: %s takes %lld channels; classify feeds grey images\n", path,
                (long long)c->in_channels);
        status = 1;
    }
    for (int i = 0; i < s.n_pos && status == 0; i++) {
        qkv_image img;
        if (qkv_image_read(&img, s.pos[i]) != QKV_OK) {
            fprintf(stderr, "qkv: %s\n", qkv_error());
            status = 1;
            break;
        }
        qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){1, 1, size, size});
        qkv_status st = x ? grey_input(x->data, &img, size) : qkv_error_status();
        qkv_image_free(&img);
        qkv_tensor *logits = st == QKV_OK ? qkv_vit_forward(ctx, &md.m, x, attention ? w : NULL)
                                          : NULL;
        qkv_tensor *p = logits ? qkv_softmax(ctx, logits) : NULL;
        if (!p) {
            fprintf(stderr, "qkv: %s: %s\n", s.pos[i], qkv_error());
            status = 1;
            break;
        }
        printf("%s\n", s.pos[i]);
        int64_t order[1024];
        int64_t nk = K < 1024 ? K : 1024;
        for (int64_t k = 0; k < nk; k++)
            order[k] = k;
        for (int64_t a = 0; a < nk && a < top; a++) /* selection: K is small */
            for (int64_t b = a + 1; b < nk; b++)
                if (p->data[order[b]] > p->data[order[a]]) {
                    int64_t t = order[a];
                    order[a] = order[b];
                    order[b] = t;
                }
        for (int64_t a = 0; a < nk && a < top; a++) {
            char nm[32];
            snprintf(nm, sizeof nm, "class %lld", (long long)order[a]);
            printf("  %-12s %.4f\n", K == 10 ? class_names[order[a]] : nm, p->data[order[a]]);
        }
        if (attention) {
            char out[4096];
            nth_path(out, sizeof out, attention, i);
            for (int64_t l = 0; l < L; l++)
                memcpy(rollw + l * N * N, w[l]->data, (size_t)(N * N) * sizeof(float));
            if (qkv_vit_rollout(map, rollw, L, N) != QKV_OK ||
                write_rollout(out, x->data, size, map, grid) != QKV_OK) {
                fprintf(stderr, "qkv: %s\n", qkv_error());
                status = 1;
            } else {
                printf("  attention rollout: %s\n", out);
            }
        }
        qkv_ctx_reset(ctx);
    }
    free(rollw);
    free(map);
    free(w);
    qkv_ctx_free(ctx);
    qkv_params_free(md.ps);
    return status;
}
