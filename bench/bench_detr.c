/* bench_detr.c - DETR (qkv_detr, the official layout): DETR-R50 inference
 * and the training step of `qkv train detr`'s default preset.
 * bench/peer_detr.py is the PyTorch side (a re-creation of
 * facebookresearch/detr's model and set criterion). One case per process:
 *
 *   bench_detr detr_r50_full|detr_train_full [--threads N]
 *
 * detr_r50: DETR-R50 (ResNet-50 with frozen batch norm, width 256, 8 heads,
 * 6 + 6 layers, FFN 2048, 100 queries, 91 classes), random weights in a
 * store without gradients, one 800x1066 image (DETR's evaluation size for a
 * 4:3 image), eval mode, no gradients: every decoder layer's logits and
 * boxes, as DETR's forward computes them (its aux outputs).
 * detr_train: the default preset's step: 16 grey 128x128 images with 1-5
 * random boxes each, ResNet-18 of width 32 with batch statistics (stem and
 * layer1 frozen), width 128, 8 heads, 3 + 3 layers, FFN 512, 20 queries, 11
 * classes, no dropout (as the preset); forward, Hungarian matching and the set criterion on every
 * decoder layer, backward, clipping to 0.1, AdamW with the backbone at a
 * quarter of the rate; one shard of the batch per thread, as the trainer
 * runs it. Every "_full" name is equal work (DETR has no trick case). */
#include "bench_util.h"

#define MAX_BOXES 5

typedef struct {
    qkv_detr m;
    qkv_params *ps;
    qkv_optim *opt;  /* NULL: inference */
    qkv_shards *sh;  /* training */
    int64_t B, C, H, W;
    const float *images;
    qkv_detr_target targets[64];
    double w_total, boxes;
} detr_state;

/* Shard i's images: forward, its share of the batch's set loss (as
 * src/train/detr_recipe.c computes it), backward. */
static qkv_status train_shard(qkv_ctx *ctx, int i, int n, void *p)
{
    detr_state *s = p;
    int64_t lo, hi, px = s->C * s->H * s->W, Q = s->m.cfg.num_queries;
    qkv_shard_rows(s->B, i, n, &lo, &hi);
    qkv_detr_loss_opts o = qkv_detr_loss_defaults();
    double w = 0;
    for (int64_t b = lo; b < hi; b++) {
        int64_t k = s->targets[b].n < Q ? s->targets[b].n : Q;
        w += (double)k + (double)o.eos_coef * (double)(Q - k);
    }
    o.num_boxes = (float)s->boxes;
    o.weight_ce = (float)(w / s->w_total);
    qkv_tensor *x = qkv_from_data(ctx, 4, (int64_t[]){hi - lo, s->C, s->H, s->W},
                                  s->images + lo * px);
    qkv_detr_output out;
    if (!x || qkv_detr_forward(ctx, &s->m, x, NULL, 0, &out) != QKV_OK)
        return qkv_error_status();
    qkv_tensor *loss = qkv_detr_loss(ctx, out.logits, out.boxes, s->targets + lo, &o, NULL);
    return loss ? qkv_backward(ctx, loss) : qkv_error_status();
}

static int detr_step(qkv_ctx *ctx, void *p)
{
    detr_state *s = p;
    if (!s->opt) {
        qkv_tensor *x = qkv_from_data(ctx, 4, (int64_t[]){s->B, s->C, s->H, s->W}, s->images);
        qkv_detr_output out;
        return !x || qkv_detr_forward(ctx, &s->m, x, NULL, 0, &out) != QKV_OK;
    }
    if (qkv_shards_run(s->sh, train_shard, s) != QKV_OK)
        return 1;
    qkv_clip_grad_norm(s->ps, 0.1f);
    if (qkv_optim_step(s->opt) != QKV_OK)
        return 1;
    qkv_params_zero_grad(s->ps);
    return 0;
}

int main(int argc, char **argv)
{
    bench_start(argc, argv);
    const char *name = bench_case(argc, argv);
    qkv_detr_config cfg;
    detr_state s = {.ps = qkv_params_new()};
    int train = 0, warmup = 1, reps = 3;
    if (name && !strcmp(name, "detr_r50_full")) {
        cfg = qkv_detr_config_r50();
        s.B = 1, s.C = 3, s.H = 800, s.W = 1066;
    } else if (name && !strcmp(name, "detr_train_full")) {
        cfg = (qkv_detr_config){.backbone_depth = 18, .in_channels = 1, .backbone_bn = 1,
                                .frozen_stages = 2, .backbone_width = 32, .hidden_dim = 128,
                                .num_heads = 8, .dim_feedforward = 512, .enc_layers = 3, .dec_layers = 3,
                                .num_queries = 20, .num_classes = 11};
        s.B = 16, s.C = 1, s.H = 128, s.W = 128;
        train = 1, reps = 5;
    } else {
        fprintf(stderr, "usage: bench_detr detr_r50_full|detr_train_full [--threads N]\n");
        return 2;
    }
    if (qkv_detr_init(&s.m, s.ps, &cfg) != QKV_OK ||
        (train ? qkv_params_alloc(s.ps) : qkv_params_alloc_inference(s.ps)) != QKV_OK) {
        fprintf(stderr, "bench_detr: %s\n", qkv_error());
        return 1;
    }
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    qkv_detr_reset(&s.m, &r);
    int64_t n = s.B * s.C * s.H * s.W;
    float *images = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        images[i] = (float)qkv_rng_normal(&r);
    s.images = images;
    static float boxes[64 * MAX_BOXES * 4];
    static int64_t labels[64 * MAX_BOXES];
    for (int64_t b = 0; b < s.B && train; b++) {
        int64_t k = 1 + (int64_t)qkv_rng_below(&r, MAX_BOXES);
        for (int64_t j = 0; j < k; j++) {
            float *bx = boxes + 4 * (b * MAX_BOXES + j);
            bx[2] = 0.1f + 0.3f * (float)qkv_rng_uniform(&r);
            bx[3] = 0.1f + 0.3f * (float)qkv_rng_uniform(&r);
            bx[0] = bx[2] / 2 + (1 - bx[2]) * (float)qkv_rng_uniform(&r);
            bx[1] = bx[3] / 2 + (1 - bx[3]) * (float)qkv_rng_uniform(&r);
            labels[b * MAX_BOXES + j] = 1 + (int64_t)qkv_rng_below(&r, 10);
        }
        s.targets[b] = (qkv_detr_target){.n = k, .labels = labels + b * MAX_BOXES,
                                         .boxes = boxes + 4 * b * MAX_BOXES};
        int64_t m = k < cfg.num_queries ? k : cfg.num_queries;
        s.w_total += (double)m + 0.1 * (double)(cfg.num_queries - m);
        s.boxes += (double)k;
    }
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), 2);
    if (train) {
        s.opt = qkv_optim_new(s.ps, &(qkv_optim_config){.kind = QKV_ADAMW, .lr = 2e-4f,
                                                         .weight_decay = 1e-4f});
        s.sh = qkv_shards_new(s.ps, 0);
        if (!s.opt || !s.sh) {
            fprintf(stderr, "bench_detr: %s\n", qkv_error());
            return 1;
        }
        for (int64_t i = 0; i < qkv_params_count(s.ps); i++)
            if (!strncmp(qkv_params_at(s.ps, i)->name, "backbone.", 9))
                qkv_params_set_group(s.ps, i, 1);
        qkv_optim_set_group_scale(s.opt, 1, 0.25f);
        qkv_ctx_free(ctx); /* the shards have their own */
        ctx = qkv_shards_ctx(s.sh, 0);
    } else {
        qkv_set_grad_enabled(ctx, 0);
        qkv_set_training(ctx, 0);
    }

    printf("impl qkv %s\nthreads %d\n", QKV_VERSION, qkv_threads());
    bench_result res = bench_time(ctx, detr_step, &s, warmup, reps);
    if (s.sh) { /* all the shards' arenas */
        res.arena_peak = 0;
        for (int i = 0; i < qkv_shards_count(s.sh); i++)
            res.arena_peak += qkv_arena_peak(qkv_ctx_arena(qkv_shards_ctx(s.sh, i)));
    }
    bench_report(name, res, s.ps, s.opt);
    printf("%s_images %lld\n", name, (long long)s.B);
    free(images);
    if (s.sh)
        qkv_shards_free(s.sh);
    else
        qkv_ctx_free(ctx);
    qkv_optim_free(s.opt);
    qkv_params_free(s.ps);
    return res.ms < 0;
}
