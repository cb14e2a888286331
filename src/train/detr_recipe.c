/*
 * detr_recipe.c - DETR trained on a COCO-format detection set through the
 * library's trainer: what `qkv train detr` runs (docs/detr.md).
 *
 * The model's part: the batch (qkv_det_fill on the loader's thread: images
 * read by path, augmented, padded with a pixel mask), the loss callback
 * (DETR's set criterion on a shard's images, as its share of the batch's
 * loss), the evaluation callback (COCO's 12 numbers on the validation
 * images) and the presets. AdamW with the backbone in a parameter group of
 * its own learning rate, clipping and StepLR are the trainer's.
 *
 * Shares. DETR's loss over a batch is ce + 5 bbox + 2 giou per decoder
 * layer, where bbox and giou are sums over matched pairs divided by the
 * batch's box count, and ce is a weighted mean over every query of the
 * batch (weight 1 for a query matched to an object, eos_coef for one that
 * is not). A shard's bbox and giou are shares when divided by the batch's
 * box count (qkv_detr_loss_opts.num_boxes). Its ce is the mean over its own
 * queries; times W_shard / W_batch (the weights' sums, known before
 * matching: an image with n objects has min(Q, n) matched queries) it is
 * the share, so the shards' terms add up to the loss of the whole batch.
 *
 * Over several ranks the batch's box count and its queries' weights are
 * summed over ranks before the shards run (DETR's all-reduced num_boxes:
 * official DETR divides each GPU's loss by max(boxes / p, 1) and averages
 * the GPUs' gradients, which is dividing by max(boxes, p) and summing them,
 * as qkv's trainer sums), and the validation images are split between the
 * ranks by whole batches, their detections gathered.
 */
#include "train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Images per forward when evaluating. */
#define EVAL_BATCH 8

static void set_scales(int64_t *dst, int *n, const int64_t *src, int count)
{
    for (int i = 0; i < count; i++)
        dst[i] = src[i];
    *n = count;
}

qkv_status qkv_detr_recipe_preset(qkv_detr_recipe *r, const char *name)
{
    if (!r || !name)
        return qkv_set_error(QKV_ERR_ARG, "detr_recipe_preset: NULL argument");
    qkv_detr_recipe keep = *r;
    if (!strcmp(name, "detr-r50")) {
        /* the paper's: ResNet-50 (frozen BN, stem and layer1 frozen), 6 + 6
         * layers of width 256, 100 queries, AdamW 1e-4 / 1e-5, weight decay
         * 1e-4, clip 0.1, batch 2 per GPU, 500 epochs with the drop at 400,
         * COCO's multi-scale augmentation */
        static const int64_t scales[] = {480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800};
        static const int64_t crops[] = {400, 500, 600};
        *r = (qkv_detr_recipe){.model = qkv_detr_config_r50(), .epochs = 500, .batch_size = 2,
                               .lr = 1e-4, .lr_backbone = 1e-5, .weight_decay = 1e-4,
                               .clip = 0.1, .lr_drop = 400, .max_size = 1333, .crop_min = 384,
                               .crop_max = 600, .flip_p = 0.5, .crop_p = 0.5, .eval_size = 800,
                               .eval_max_size = 1333, .mean = {0.485f, 0.456f, 0.406f},
                               .std = {0.229f, 0.224f, 0.225f}};
        r->model.num_classes = 0;
        set_scales(r->scales, &r->n_scales, scales, 11);
        set_scales(r->crop_scales, &r->n_crop_scales, crops, 3);
    } else if (!strcmp(name, "default") || !strcmp(name, "demo")) {
        /* two cores, an hour: 128x128 grey scenes (`qkv data scenes`), a
         * ResNet-18 of width 32 (a quarter of the work of torchvision's 64)
         * with batch statistics, pretrained on Fashion-MNIST first; a
         * transformer of width 128 with 3 + 3 layers, 20 queries for at most
         * 5 objects; the backbone at a quarter of the transformer's rate;
         * flips and mild multi-scale resizing; 20 epochs of the 10000
         * scenes (docs/detr.md has the run). Evaluation at the largest
         * training scale, as DETR's (train 480-800, evaluate at 800): a
         * batch of 16 is nearly always padded to 144 (5 x 5 C5 cells), and
         * at 128 (4 x 4) the default run's model scored AP 0.011 against
         * 0.147 at 144 */
        static const int64_t scales[] = {112, 128, 144};
        *r = (qkv_detr_recipe){.model = {.backbone_depth = 18, .in_channels = 1,
                                         .backbone_bn = 1, .frozen_stages = 2,
                                         .backbone_width = 32, .hidden_dim = 128, .num_heads = 8,
                                         .dim_feedforward = 512, .enc_layers = 3,
                                         .dec_layers = 3, .num_queries = 20},
                               .epochs = 20, .batch_size = 16, .lr = 2e-4, .lr_backbone = 5e-5,
                               .weight_decay = 1e-4, .clip = 0.1, .lr_drop = 15,
                               .max_size = 144, .flip_p = 0.5, .eval_size = 144,
                               .eval_max_size = 144, .mean = {0.449f}, .std = {0.226f},
                               .pretrain_epochs = 2, .pretrain_size = 32,
                               .pretrain_batch = 128, .pretrain_lr = 2e-3};
        set_scales(r->scales, &r->n_scales, scales, 3);
        if (!strcmp(name, "demo")) { /* a few minutes: the pipeline, not a detector */
            r->epochs = 3, r->lr_drop = 0;
            r->limit = 1000, r->eval_limit = 200;
            r->pretrain_epochs = 1, r->pretrain_limit = 10000;
        }
    } else {
        return qkv_set_error(QKV_ERR_ARG, "detr: unknown preset '%s' (default, detr-r50, demo)",
                             name);
    }
    r->data_dir = keep.data_dir, r->out_dir = keep.out_dir, r->seed = keep.seed;
    r->mnist_dir = keep.mnist_dir;
    r->resume = keep.resume, r->threads = keep.threads, r->quiet = keep.quiet;
    r->comm = keep.comm;
    if (keep.limit)
        r->limit = keep.limit;
    if (keep.eval_limit)
        r->eval_limit = keep.eval_limit;
    return QKV_OK;
}

/* ---- evaluation ---- */

qkv_status qkv_detr_evaluate(qkv_ctx *ctx, const qkv_detr *m, const qkv_det_dataset *d,
                             int64_t n, const qkv_detr_input *in, int64_t batch,
                             qkv_coco_result *res)
{
    return qkv_detr_evaluate_ranks(ctx, m, d, n, in, batch, NULL, res);
}

/* Every rank's detections (mine, n_mine of them) into dt, in rank order */
static qkv_status gather_dets(qkv_comm *c, const qkv_coco_det *mine, int64_t n_mine,
                              qkv_coco_dets *dt)
{
    int p = qkv_comm_size(c);
    int64_t *counts = qkv__malloc((size_t)p * sizeof *counts), most = 0;
    qkv_status st = counts ? qkv_comm_allgather(c, &n_mine, sizeof n_mine, counts)
                           : qkv_error_status();
    for (int r = 0; r < p && !st; r++)
        most = counts[r] > most ? counts[r] : most;
    qkv_coco_det *send = st ? NULL : qkv__calloc((size_t)most + 1, sizeof *send);
    qkv_coco_det *all = st ? NULL : qkv__calloc((size_t)(p * most) + 1, sizeof *all);
    if (!st && (!send || !all))
        st = qkv_set_error(QKV_ERR_NOMEM, "detr_evaluate: out of memory for %lld detections",
                           (long long)(p * most));
    if (!st && n_mine)
        memcpy(send, mine, (size_t)n_mine * sizeof *send);
    if (!st && most)
        st = qkv_comm_allgather(c, send, (size_t)most * sizeof *send, all);
    for (int r = 0; r < p && !st; r++)
        for (int64_t i = 0; i < counts[r] && !st; i++)
            st = qkv_coco_dets_add(dt, &all[r * most + i]);
    qkv__free(counts);
    qkv__free(send);
    qkv__free(all);
    return st;
}

qkv_status qkv_detr_evaluate_ranks(qkv_ctx *ctx, const qkv_detr *m, const qkv_det_dataset *d,
                                   int64_t n, const qkv_detr_input *in, int64_t batch,
                                   qkv_comm *c, qkv_coco_result *res)
{
    if (!ctx || !m || !d || !in || !res)
        return qkv_set_error(QKV_ERR_ARG, "detr_evaluate: NULL argument");
    memset(res, 0, sizeof *res);
    int64_t total = qkv_det_dataset_size(d);
    n = n <= 0 || n > total ? total : n;
    batch = batch < 1 ? EVAL_BATCH : batch;
    qkv_det_fill_config fc = {.data = d, .size = in->size, .max_size = in->max_size,
                              .channels = m->cfg.in_channels, .mean = in->mean, .std = in->std,
                              .batch_size = batch};
    size_t bytes = qkv_det_fill_prepare(&fc);
    void *buf = bytes ? qkv__aligned_alloc(bytes) : NULL;
    int64_t *idx = qkv__malloc((size_t)batch * sizeof *idx);
    qkv_coco_gt *gt = qkv_det_dataset_gt(d, n);
    qkv_coco_dets *dt = qkv_coco_dets_new("detections");
    int64_t Q = m->cfg.num_queries, K1 = m->cfg.num_classes + 1;
    qkv_detection *dets = qkv__malloc((size_t)Q * sizeof *dets);
    /* this rank's batches [c_lo, c_hi) of the n_batches; with several
     * ranks its detections are kept in `mine` until they are gathered */
    int p = qkv_comm_size(c);
    int64_t n_batches = (n + batch - 1) / batch, c_lo, c_hi, n_mine = 0;
    qkv_shard_rows(n_batches, qkv_comm_rank(c), p, &c_lo, &c_hi);
    qkv_coco_det *mine = p > 1 ? qkv__malloc((size_t)((c_hi - c_lo) * batch * Q + 1) *
                                             sizeof *mine)
                               : NULL;
    qkv_status st = buf && idx && gt && dt && dets ? QKV_OK : qkv_error_status();
    if (!st && !(buf && idx && dets && (p == 1 || mine)))
        st = qkv_set_error(QKV_ERR_NOMEM, "detr_evaluate: out of memory");
    int was_training = qkv_set_training(ctx, 0), had_grad = qkv_set_grad_enabled(ctx, 0);
    for (int64_t at = c_lo * batch; at < n && at < c_hi * batch && !st; at += batch) {
        int64_t b = n - at < batch ? n - at : batch;
        for (int64_t i = 0; i < b; i++)
            idx[i] = at + i;
        if ((st = qkv_det_fill(&fc, idx, b, NULL, buf)))
            break;
        qkv_det_batch v = qkv_det_batch_view(&fc, buf);
        qkv_tensor *x = qkv_wrap(ctx, 4, (int64_t[]){b, v.C, v.H, v.W}, v.pixels);
        qkv_detr_output out;
        if ((st = qkv_detr_forward(ctx, m, x, v.mask, 0, &out)))
            break;
        int64_t L = out.logits->shape[0];
        const float *lg = out.logits->data + (L - 1) * b * Q * K1;
        const float *bx = out.boxes->data + (L - 1) * b * Q * 4;
        for (int64_t i = 0; i < b && !st; i++) {
            int64_t w, h;
            qkv_det_dataset_image_size(d, at + i, &w, &h);
            qkv_detr_postprocess(dets, lg + i * Q * K1, bx + i * Q * 4, Q, K1, (double)w,
                                 (double)h);
            for (int64_t q = 0; q < Q && !st; q++) {
                const float *xy = dets[q].box;
                qkv_coco_det det = {.image_id = qkv_det_dataset_image_id(d, at + i),
                                    .category_id = dets[q].label, .score = dets[q].score,
                                    .bbox = {xy[0], xy[1], xy[2] - xy[0], xy[3] - xy[1]}};
                /* a box the sigmoid made inside-out cannot be (w, h < 0): DETR's
                 * boxes never are, since w, h > 0; keep the check for NaN */
                if (!(det.bbox[2] >= 0 && det.bbox[3] >= 0 && isfinite(det.score)))
                    st = qkv_set_error(QKV_ERR_NAN, "detr_evaluate: image %lld query %lld "
                                       "has a box or score that is not finite",
                                       (long long)det.image_id, (long long)q);
                else if (qkv_coco_gt_category_name(gt, det.category_id)) {
                    if (mine)
                        mine[n_mine++] = det;
                    else
                        st = qkv_coco_dets_add(dt, &det);
                }
            }
        }
        qkv_ctx_reset(ctx);
    }
    qkv_set_training(ctx, was_training);
    qkv_set_grad_enabled(ctx, had_grad);
    if (p > 1) { /* a rank that failed leaves the others' gather to time out */
        if (st)
            qkv_comm_abandon(c);
        else
            st = gather_dets(c, mine, n_mine, dt);
    }
    if (!st)
        st = qkv_coco_evaluate(gt, dt, res);
    qkv__free(mine);
    qkv__free(buf);
    qkv__free(idx);
    qkv__free(dets);
    qkv_coco_gt_free(gt);
    qkv_coco_dets_free(dt);
    return st;
}

/* ---- the model's part ---- */

typedef struct {
    const qkv_detr_recipe *r;
    qkv_model *model;
    qkv_detr *m;
    qkv_det_dataset *train, *val;
    qkv_det_augment_config aug;
    qkv_det_fill_config fill;
    qkv_detr_input in;
    qkv_detr_loss_opts loss;
    int64_t n_train, n_val;
    double stats[QKV_COCO_NSTATS], last_loss;
    int evaluated;
    qkv_comm *comm;     /* NULL: one process */
    double boxes, w_all; /* the step's global batch: boxes, queries' CE weights, */
    double matched;      /* queries matched (min(Q, boxes) an image) */
} detr_run;

/* The weight sum of image b's queries in the cross entropy. */
static double ce_weight(int64_t Q, int64_t n, float eos)
{
    int64_t matched = n < Q ? n : Q;
    return (double)matched + (double)eos * (double)(Q - matched);
}

/* The global batch's box count and CE weight sum (this rank's images'
 * summed over ranks: DETR's all-reduce of num_boxes), before the shards */
static qkv_status pre_step(qkv_trainer *t, void *user)
{
    detr_run *v = user;
    int64_t n;
    qkv_det_batch bt = qkv_det_batch_view(&v->fill, qkv_trainer_batch(t, &n, NULL));
    double sums[3] = {0, 0, 0};
    int64_t Q = v->m->cfg.num_queries;
    for (int64_t i = 0; i < bt.n; i++) {
        sums[0] += (double)bt.n_boxes[i];
        sums[1] += ce_weight(Q, bt.n_boxes[i], v->loss.eos_coef);
        sums[2] += (double)(bt.n_boxes[i] < Q ? bt.n_boxes[i] : Q);
    }
    qkv_status st = qkv_comm_allreduce(v->comm, sums, 3, QKV_DT_F64);
    if (st) {
        char msg[900];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        return qkv_set_error(st, "step %lld, summing the batch's boxes over ranks: %s",
                             (long long)qkv_trainer_step(t) + 1, msg);
    }
    v->boxes = sums[0], v->w_all = sums[1], v->matched = sums[2];
    return QKV_OK;
}

/* DETR's loss of images [lo, hi) as their share of the batch's; stats:
 * ce, bbox, giou and class_error shares. */
static qkv_tensor *loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user)
{
    const detr_run *v = user;
    qkv_det_batch bt = qkv_det_batch_view(&v->fill, b->batch);
    int64_t n = b->hi - b->lo, Q = v->m->cfg.num_queries, M = bt.max_objects;
    int64_t px = bt.C * bt.H * bt.W;
    double w_all = v->w_all, w_mine = 0, m_mine = 0;
    /* official DETR: max(boxes / p, 1) per GPU, gradients averaged */
    double p = (double)qkv_comm_size(v->comm), boxes = v->boxes > p ? v->boxes : p;
    for (int64_t i = b->lo; i < b->hi; i++) {
        w_mine += ce_weight(Q, bt.n_boxes[i], v->loss.eos_coef);
        m_mine += (double)(bt.n_boxes[i] < Q ? bt.n_boxes[i] : Q);
    }
    qkv_detr_target *tg = qkv__alloc(ctx, (size_t)n * sizeof *tg);
    if (!tg)
        return NULL;
    for (int64_t i = 0; i < n; i++)
        tg[i] = (qkv_detr_target){.n = bt.n_boxes[b->lo + i], .labels = bt.labels + (b->lo + i) * M,
                                  .boxes = bt.boxes + 4 * (b->lo + i) * M};
    qkv_detr_loss_opts o = v->loss;
    o.num_boxes = (float)boxes;
    o.weight_ce = (float)(v->loss.weight_ce * w_mine / w_all);
    qkv_tensor *x = qkv_wrap(ctx, 4, (int64_t[]){n, bt.C, bt.H, bt.W}, bt.pixels + b->lo * px);
    qkv_detr_output out;
    if (!x || qkv_detr_forward(ctx, v->m, x, bt.mask + b->lo * bt.H * bt.W, 0, &out) != QKV_OK)
        return NULL;
    qkv_detr_loss_log log;
    qkv_tensor *l = qkv_detr_loss(ctx, out.logits, out.boxes, tg, &o, &log);
    if (!l)
        return NULL;
    b->stats[0] += log.loss_ce * w_mine / w_all;
    b->stats[1] += log.loss_bbox;
    b->stats[2] += log.loss_giou;
    if (v->matched > 0) /* a % of this shard's matched queries: its share */
        b->stats[3] += log.class_error * m_mine / v->matched;
    return l;
}

static qkv_status evaluate(qkv_trainer *t, qkv_train_epoch *e, void *user)
{
    detr_run *v = user;
    qkv_coco_result res;
    qkv_status st = qkv_detr_evaluate_ranks(qkv_trainer_eval_ctx(t), v->m, v->val, v->n_val,
                                            &v->in, EVAL_BATCH, v->comm, &res);
    if (st)
        return st;
    memcpy(v->stats, res.stats, sizeof v->stats);
    qkv_coco_result_free(&res);
    v->evaluated = 1;
    v->last_loss = e->loss;
    double steps = (double)qkv_trainer_steps_per_epoch(t);
    /* class_error: DETR's, 100 - the top-1 accuracy in % of the last
     * layer's matched queries (as a mean of steps; a step matching none
     * counts 0) */
    static const char *const names[4] = {"loss_ce", "loss_bbox", "loss_giou", "class_error"};
    for (int i = 0; i < 4 && !st; i++)
        st = qkv_train_epoch_put(e, names[i], e->stats[i] / (steps > 0 ? steps : 1));
    static const char *const coco[6] = {"AP", "AP50", "AP75", "APs", "APm", "APl"};
    for (int i = 0; i < 6 && !st; i++)
        st = qkv_train_epoch_put(e, coco[i], v->stats[i]);
    return st ? st : qkv_train_epoch_put(e, "AR100", v->stats[8]);
}

static qkv_status save_model(qkv_trainer *t, const char *dir, void *user)
{
    detr_run *v = user;
    char path[4200], num[32];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    qkv_status st = QKV_OK;
    if (v->evaluated) {
        snprintf(num, sizeof num, "%.4f", v->stats[0]);
        st = qkv_model_set_meta(v->model, "AP", num);
        snprintf(num, sizeof num, "%.4f", v->stats[1]);
        if (!st)
            st = qkv_model_set_meta(v->model, "AP50", num);
    }
    (void)t;
    return st ? st : qkv_model_save(v->model, path);
}

/* ---- the backbone's pretraining ---- */

typedef struct {
    qkv_resnet net;
    qkv_mnist data;
    int64_t size, channels, B;
    qkv_augment aug;
    qkv_ce_opts ce;
} pretrain_run;

/* images (B, channels, size, size), then labels (B) */
static qkv_status pretrain_fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng,
                                void *batch)
{
    const pretrain_run *p = user;
    int64_t px = p->size * p->size;
    int64_t *y = (int64_t *)(void *)((float *)batch + p->B * p->channels * px);
    for (int64_t i = 0; i < n; i++) {
        float *img = (float *)batch + i * p->channels * px;
        qkv_status st = qkv_mnist_image(img, &p->data, idx[i], p->size, rng, &p->aug);
        if (st)
            return st;
        for (int64_t c = 1; c < p->channels; c++) /* grey into every channel */
            memcpy(img + c * px, img, (size_t)px * sizeof(float));
        y[i] = p->data.labels[idx[i]];
    }
    return QKV_OK;
}

static qkv_tensor *pretrain_loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user)
{
    const pretrain_run *p = user;
    int64_t px = p->size * p->size, n = b->hi - b->lo;
    const int64_t *y = (const int64_t *)(const void *)((const float *)b->batch +
                                                      p->B * p->channels * px) + b->lo;
    qkv_tensor *x = qkv_wrap(ctx, 4, (int64_t[]){n, p->channels, p->size, p->size},
                             (float *)b->batch + b->lo * p->channels * px);
    qkv_tensor *logits = x ? qkv_resnet_forward(ctx, &p->net, x, QKV_RESNET_LOGITS, 0) : NULL;
    qkv_tensor *l = logits ? qkv_cross_entropy(ctx, logits, y, &p->ce) : NULL;
    if (!l)
        return NULL;
    for (int64_t r = 0; r < n; r++) {
        const float *row = logits->data + r * 10;
        int64_t best = 0;
        for (int64_t k = 1; k < 10; k++)
            best = row[k] > row[best] ? k : best;
        b->stats[0] += best == y[r];
    }
    return qkv_scale(ctx, l, 1.0f / (float)b->n_global);
}

static qkv_status pretrain_evaluate(qkv_trainer *t, qkv_train_epoch *e, void *user)
{
    (void)t, (void)user;
    return qkv_train_epoch_put(e, "train_acc", e->examples ? e->stats[0] / (double)e->examples
                                                           : NAN);
}

/* Trains the backbone as a Fashion-MNIST classifier and copies its weights
 * and batch-norm statistics into DETR's (the same names, fc left out). */
static qkv_status pretrain_backbone(const qkv_detr_recipe *r, qkv_detr *m, qkv_params *dst,
                                    bool quiet)
{
    pretrain_run p = {.size = r->pretrain_size > 0 ? r->pretrain_size : 32,
                      .channels = m->cfg.in_channels,
                      .aug = {.crop = 4, .flip = 1},
                      .ce = {.ignore_index = QKV_NO_IGNORE, .reduction = QKV_REDUCE_SUM}};
    qkv_params *ps = qkv_params_new();
    qkv_trainer *t = NULL;
    qkv_resnet_config rc = {.depth = m->cfg.backbone_depth, .in_channels = m->cfg.in_channels,
                            .width = m->cfg.backbone_width, .num_classes = 10};
    qkv_status st = ps ? qkv_mnist_load(&p.data, r->mnist_dir, 1) : qkv_error_status();
    if (!st)
        st = qkv_resnet_init(&p.net, ps, "backbone.0.body", &rc);
    if (!st)
        st = qkv_params_alloc(ps);
    if (st)
        goto done;
    qkv_rng init;
    qkv_rng_seed(&init, r->seed + 3);
    qkv_resnet_reset(&p.net, &init);
    p.B = r->pretrain_batch > 0 ? r->pretrain_batch : 128;
    if (r->pretrain_limit > 0 && p.B > r->pretrain_limit)
        p.B = r->pretrain_limit;
    size_t bytes = (size_t)(p.B * p.channels * p.size * p.size) * sizeof(float) +
                   (size_t)p.B * sizeof(int64_t);
    if (!quiet) {
        printf("pretraining the backbone: ResNet-%d classifying Fashion-MNIST at %lldx%lld, "
               "%lld epochs\n", m->cfg.backbone_depth, (long long)p.size, (long long)p.size,
               (long long)r->pretrain_epochs);
        fflush(stdout);
    }
    static const char *const curves[] = {"loss", "train_acc", NULL};
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = ps, .loss = pretrain_loss, .user = &p, .epochs = r->pretrain_epochs,
        .data = {.n_examples = r->pretrain_limit > 0 && r->pretrain_limit < p.data.n
                                   ? r->pretrain_limit
                                   : p.data.n,
                 .batch_size = p.B, .shuffle = 1, .drop_last = 1,
                 .seed = r->seed + 4, .batch_bytes = bytes, .fill = pretrain_fill, .user = &p},
        .optim = {.kind = QKV_ADAMW, .lr = (float)(r->pretrain_lr > 0 ? r->pretrain_lr : 2e-3),
                  .weight_decay = 0.05f},
        .schedule = {.kind = QKV_LR_COSINE, .warmup_epochs = 0.2},
        .threads = r->threads, .seed = r->seed + 5, .comm = r->comm,
        .evaluate = pretrain_evaluate, .label = "pretrain", .print_every = quiet ? -1 : 1,
        .curves = curves});
    if (!t || (st = qkv_trainer_run(t)) != QKV_OK) {
        st = t ? st : qkv_error_status();
        goto done;
    }
    /* into DETR's backbone by name (fc is the classifier's alone) */
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *a = qkv_params_at(ps, i), *b = qkv_params_find(dst, a->name);
        if (b && qkv_numel(a) == qkv_numel(b))
            memcpy(b->data, a->data, (size_t)qkv_numel(a) * sizeof(float));
    }
done:
    qkv_trainer_free(t);
    qkv_params_free(ps);
    qkv_mnist_free(&p.data);
    return st;
}

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Opens dir's split; makes the scenes set first when dir is the default
 * and has none (rank 0 alone, the others wait for it). */
static qkv_status open_data(detr_run *v, const char *dir, bool make, bool quiet)
{
    char ann[4200], img[4200];
    snprintf(ann, sizeof ann, "%s/annotations/train.json", dir);
    bool lead = qkv_comm_rank(v->comm) == 0;
    if (make && lead && !exists(ann)) {
        if (!quiet) {
            printf("no data set in %s: making it (qkv data scenes --out %s)\n", dir, dir);
            fflush(stdout);
        }
        qkv_scenes_config sc = {.out_dir = dir, .n_train = 10000, .n_val = 1000,
                                .seed = 0};
        qkv_status st = qkv_scenes_make(&sc);
        if (st) {
            if (qkv_comm_size(v->comm) > 1)
                qkv_comm_abandon(v->comm);
            return st;
        }
    }
    qkv_status st = make && qkv_comm_size(v->comm) > 1 ? qkv_comm_barrier(v->comm) : QKV_OK;
    if (st)
        return st;
    snprintf(img, sizeof img, "%s/train", dir);
    if (!(v->train = qkv_det_dataset_open(ann, img)))
        return qkv_error_status();
    snprintf(ann, sizeof ann, "%s/annotations/val.json", dir);
    snprintf(img, sizeof img, "%s/val", dir);
    if (!(v->val = qkv_det_dataset_open(ann, img)))
        return qkv_error_status();
    return QKV_OK;
}

qkv_status qkv_detr_train(const qkv_detr_recipe *r, qkv_detr_result *res)
{
    if (!r || r->epochs < 0 || r->batch_size < 1 || r->n_scales < 0 ||
        r->n_scales > QKV_DETR_MAX_SCALES || r->n_crop_scales < 0 ||
        r->n_crop_scales > QKV_DETR_MAX_SCALES)
        return qkv_set_error(QKV_ERR_ARG, "detr_train: %s", r ? "need epochs >= 0, a batch "
                             "size >= 1 and at most 16 scales" : "the recipe is NULL");
    detr_run v = {.r = r, .comm = r->comm};
    bool quiet = r->quiet || qkv_comm_rank(r->comm) != 0;
    qkv_trainer *t = NULL;
    const char *dir = r->data_dir ? r->data_dir : "data/scenes";
    qkv_status st = open_data(&v, dir, r->data_dir == NULL, quiet);
    if (st)
        goto done;
    v.n_train = qkv_det_dataset_size(v.train);
    v.n_val = qkv_det_dataset_size(v.val);
    if (r->limit > 0 && r->limit < v.n_train)
        v.n_train = r->limit;
    if (r->eval_limit > 0 && r->eval_limit < v.n_val)
        v.n_val = r->eval_limit;
    if (v.n_train < 1) {
        st = qkv_set_error(QKV_ERR_ARG, "detr_train: %s/annotations/train.json has no images",
                           dir);
        goto done;
    }
    qkv_detr_config mc = r->model;
    if (mc.num_classes <= 0)
        mc.num_classes = qkv_det_dataset_max_category(v.train) + 1;
    if (mc.in_channels == 0)
        mc.in_channels = 3;
    v.in = (qkv_detr_input){.size = r->eval_size, .max_size = r->eval_max_size};
    for (int c = 0; c < 3; c++) {
        v.in.mean[c] = r->mean[c];
        v.in.std[c] = r->std[c] > 0 ? r->std[c] : 1.0f;
    }
    /* class names by label (= category id) */
    const char **names = qkv__calloc((size_t)mc.num_classes, sizeof *names);
    if (!names) {
        st = qkv_error_status();
        goto done;
    }
    for (int64_t k = 0; k < mc.num_classes; k++)
        names[k] = qkv_det_dataset_category_name(v.train, k);
    v.model = qkv_model_new_detr(&mc, &v.in, mc.num_classes, names);
    qkv__free(names);
    if (!v.model) {
        st = qkv_error_status();
        goto done;
    }
    v.m = qkv_model_detr(v.model);
    qkv_rng init;
    qkv_rng_seed(&init, r->seed + 2);
    qkv_detr_reset(v.m, &init);
    if (r->pretrain_epochs > 0 && !r->resume &&
        (st = pretrain_backbone(r, v.m, qkv_model_params(v.model), quiet)))
        goto done;
    /* the loss: DETR's unless the recipe says otherwise */
    v.loss = qkv_detr_loss_defaults();
    if (r->loss.cost_class || r->loss.cost_bbox || r->loss.cost_giou || r->loss.weight_ce ||
        r->loss.weight_bbox || r->loss.weight_giou || r->loss.eos_coef)
        v.loss = r->loss;
    /* the data */
    v.aug = (qkv_det_augment_config){.scales = r->scales, .n_scales = r->n_scales,
                                     .max_size = r->max_size, .crop_scales = r->crop_scales,
                                     .n_crop_scales = r->n_crop_scales, .crop_min = r->crop_min,
                                     .crop_max = r->crop_max, .flip_p = r->flip_p,
                                     .crop_p = r->crop_p};
    int64_t B = r->batch_size < v.n_train ? r->batch_size : v.n_train;
    v.fill = (qkv_det_fill_config){.data = v.train, .aug = r->n_scales > 0 ? &v.aug : NULL,
                                   .size = r->eval_size, .max_size = r->eval_max_size,
                                   .channels = mc.in_channels, .mean = v.in.mean,
                                   .std = v.in.std, .batch_size = B};
    size_t bytes = qkv_det_fill_prepare(&v.fill);
    if (!bytes) {
        st = qkv_error_status();
        goto done;
    }
    /* the backbone in group 1, at lr_backbone / lr of the others' rate */
    qkv_params *ps = qkv_model_params(v.model);
    for (int64_t i = 0; i < qkv_params_count(ps); i++)
        if (!strncmp(qkv_params_at(ps, i)->name, "backbone.", 9))
            qkv_params_set_group(ps, i, 1);
    char cfg[768];
    snprintf(cfg, sizeof cfg,
             "{\"epochs\": %lld, \"batch\": %lld, \"lr\": %g, \"lr_backbone\": %g, "
             "\"limit\": %lld, \"seed\": %llu, \"data\": \"%s\"}",
             (long long)r->epochs, (long long)B, r->lr, r->lr_backbone, (long long)v.n_train,
             (unsigned long long)r->seed, dir);
    /* the three loss terms and AP share a scale (0 to about 2); the total,
     * 5 to 15 with the auxiliary layers, would flatten AP to a line at 0 */
    static const char *const curves[] = {"loss_ce", "loss_bbox", "loss_giou", "AP", "AP50",
                                         NULL};
    t = qkv_trainer_new(&(qkv_trainer_config){
        .params = ps, .loss = loss, .user = &v, .epochs = r->epochs,
        .data = {.n_examples = v.n_train, .batch_size = B, .shuffle = 1, .drop_last = 1,
                 .seed = r->seed + 1, .batch_bytes = bytes, .fill = qkv_det_fill,
                 .user = &v.fill},
        .optim = {.kind = QKV_ADAMW, .lr = (float)r->lr, .weight_decay = (float)r->weight_decay},
        .schedule = {.kind = r->lr_drop > 0 ? QKV_LR_STEP : QKV_LR_CONSTANT,
                     .step_epochs = r->lr_drop},
        .clip = (float)r->clip, .threads = r->threads, .seed = r->seed, .comm = r->comm,
        .pre_step = pre_step, .evaluate = evaluate, .save_model = save_model,
        .out_dir = r->out_dir, .config_json = cfg, .resume = r->resume, .label = "epoch",
        .print_every = quiet ? -1 : 1, .curves = curves, .title = "DETR"});
    if (!t) {
        st = qkv_error_status();
        goto done;
    }
    qkv_optim_set_group_scale(qkv_trainer_optim(t), 1, (float)(r->lr > 0 ? r->lr_backbone / r->lr
                                                                          : 0.0));
    if (!quiet) {
        printf("DETR: ResNet-%d of width %lld (%s), transformer width %lld, %lld heads, "
               "%lld + %lld layers, %lld queries, "
               "%lld classes: %lld parameters\n"
               "training on %lld images (%s), %lld steps of %lld, AdamW lr %g (backbone %g), "
               "%d threads%s\n",
               mc.backbone_depth, (long long)v.m->backbone.cfg.width,
               mc.backbone_bn ? "batch norm" : "frozen batch norm",
               (long long)mc.hidden_dim, (long long)mc.num_heads, (long long)mc.enc_layers,
               (long long)mc.dec_layers, (long long)mc.num_queries, (long long)mc.num_classes,
               (long long)qkv_params_numel(ps), (long long)v.n_train, dir,
               (long long)qkv_trainer_steps_per_epoch(t), (long long)B, r->lr, r->lr_backbone,
               qkv_shards_count(qkv_trainer_shards(t)), qkv__ranks_note(r->comm));
        if (r->resume)
            printf("resumed at epoch %lld, step %lld\n", (long long)qkv_trainer_epoch(t),
                   (long long)qkv_trainer_step(t));
        fflush(stdout);
    }
    int64_t first = qkv_trainer_epoch(t);
    if ((st = qkv_trainer_run(t)) != QKV_OK)
        goto done;
    if (!quiet)
        qkv__print_comm_summary(t);
    if (!v.evaluated) { /* nothing left to train: the model as it stands */
        qkv_coco_result cr;
        if ((st = qkv_detr_evaluate_ranks(qkv_trainer_eval_ctx(t), v.m, v.val, v.n_val, &v.in,
                                          EVAL_BATCH, v.comm, &cr)))
            goto done;
        memcpy(v.stats, cr.stats, sizeof v.stats);
        qkv_coco_result_free(&cr);
    }
    if (res) {
        memcpy(res->stats, v.stats, sizeof res->stats);
        res->loss = v.last_loss;
        res->epochs = qkv_trainer_epoch(t) - first;
    }
done:
    qkv_trainer_free(t);
    qkv_model_free(v.model);
    qkv_det_dataset_free(v.train);
    qkv_det_dataset_free(v.val);
    return st;
}
