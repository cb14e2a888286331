/* bench_vit.c - the Vision Transformer (qkv_vit, torchvision's layout):
 * the book's training step and ViT-B/16 inference. bench/peer_vit.py is the
 * PyTorch side (torchvision's VisionTransformer). One case per process:
 *
 *   bench_vit vit_train|vitb16_b1|vitb16_b8[_full] [--threads N]
 *
 * The *_full cases are the equal-work ones: the last block computes every
 * token's output, as torchvision does (qkv_vit_config.every_token). Without
 * _full only the class token's, which alone reaches the head: the same
 * logits and gradients for less work (about 40% less in the book's 2-block
 * ViT, 1/24 in ViT-B/16), a trick a PyTorch user could write too; the
 * tables show its gain beside the equal-work rows.
 *
 * vit_train: d2l v1.0.3's ViT on Fashion-MNIST resized to 96x96 (1 channel,
 * patch 16, width 512, MLP 2048, 8 heads, 2 blocks, dropout 0.1, 10
 * classes), batch 128: forward, cross-entropy, backward, SGD lr 0.1; one
 * shard of the batch per thread (qkv_shards), as `qkv train vit` trains.
 * vitb16_b*: ViT-B/16 (224x224, 3 channels, patch 16, width 768, MLP 3072,
 * 12 heads, 12 blocks, 1000 classes) with random weights in a store
 * without gradients (qkv_params_alloc_inference), gradients and dropout
 * off, batch 1 or 8. Images are random. */
#include "bench_util.h"

typedef struct {
    qkv_vit m;
    qkv_params *ps;
    qkv_optim *opt;  /* NULL: inference */
    qkv_shards *sh;  /* training */
    int64_t B, C, S, K;
    const float *images;
    const int64_t *labels;
} vit_state;

/* Shard i's images: forward, its part of the batch's mean cross-entropy,
 * backward. */
static qkv_status train_shard(qkv_ctx *ctx, int i, int n, void *p)
{
    vit_state *s = p;
    int64_t lo, hi, px = s->C * s->S * s->S;
    qkv_shard_rows(s->B, i, n, &lo, &hi);
    qkv_tensor *x =
        qkv_from_data(ctx, 4, (int64_t[]){hi - lo, s->C, s->S, s->S}, s->images + lo * px);
    qkv_tensor *loss = qkv_scale(
        ctx,
        qkv_cross_entropy(ctx, qkv_vit_forward(ctx, &s->m, x, NULL), s->labels + lo,
                          &(qkv_ce_opts){.ignore_index = QKV_NO_IGNORE,
                                         .reduction = QKV_REDUCE_SUM}),
        1.0f / (float)s->B);
    return loss ? qkv_backward(ctx, loss) : qkv_error_status();
}

static int vit_step(qkv_ctx *ctx, void *p)
{
    vit_state *s = p;
    if (!s->opt) {
        qkv_tensor *x = qkv_from_data(ctx, 4, (int64_t[]){s->B, s->C, s->S, s->S}, s->images);
        return qkv_vit_forward(ctx, &s->m, x, NULL) == NULL;
    }
    if (qkv_shards_run(s->sh, train_shard, s) != QKV_OK || qkv_optim_step(s->opt) != QKV_OK)
        return 1;
    qkv_params_zero_grad(s->ps);
    return 0;
}

int main(int argc, char **argv)
{
    bench_start(argc, argv);
    const char *name = bench_case(argc, argv);
    qkv_vit_config cfg;
    int64_t B;
    int train = 0, warmup = 2, reps;
    size_t len = name ? strlen(name) : 0;
    int full = len > 5 && !strcmp(name + len - 5, "_full");
    char base[32] = "";
    if (name && len - 5 * full < sizeof base)
        memcpy(base, name, len - 5 * full);
    if (!strcmp(base, "vit_train")) {
        cfg = (qkv_vit_config){.image_size = 96, .patch_size = 16, .in_channels = 1,
                               .hidden_dim = 512, .mlp_dim = 2048, .num_heads = 8,
                               .num_layers = 2, .num_classes = 10, .dropout = 0.1f,
                               .attention_dropout = 0.1f};
        B = 128, train = 1, warmup = 1, reps = 3;
    } else if (!strcmp(base, "vitb16_b1") || !strcmp(base, "vitb16_b8")) {
        cfg = (qkv_vit_config){.image_size = 224, .patch_size = 16, .in_channels = 3,
                               .hidden_dim = 768, .mlp_dim = 3072, .num_heads = 12,
                               .num_layers = 12, .num_classes = 1000};
        B = !strcmp(base, "vitb16_b1") ? 1 : 8;
        reps = B == 1 ? 7 : 3;
        warmup = B == 1 ? 2 : 1;
    } else {
        fprintf(stderr, "usage: bench_vit vit_train|vitb16_b1|vitb16_b8[_full] [--threads N]\n");
        return 2;
    }
    cfg.every_token = full;

    vit_state s = {.ps = qkv_params_new(), .B = B, .C = cfg.in_channels, .S = cfg.image_size,
                   .K = cfg.num_classes};
    if (qkv_vit_init(&s.m, s.ps, &cfg) != QKV_OK ||
        (train ? qkv_params_alloc(s.ps) : qkv_params_alloc_inference(s.ps)) != QKV_OK) {
        fprintf(stderr, "bench_vit: %s\n", qkv_error());
        return 1;
    }
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    qkv_vit_reset(&s.m, &r);
    int64_t n = B * s.C * s.S * s.S;
    float *images = malloc(sizeof(float) * (size_t)n);
    int64_t *labels = malloc(sizeof(int64_t) * (size_t)B);
    for (int64_t i = 0; i < n; i++)
        images[i] = (float)qkv_rng_uniform(&r);
    for (int64_t i = 0; i < B; i++)
        labels[i] = (int64_t)qkv_rng_below(&r, (uint64_t)s.K);
    s.images = images, s.labels = labels;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), 2);
    if (train) {
        s.opt = qkv_optim_new(s.ps, &(qkv_optim_config){.kind = QKV_SGD, .lr = 0.1f});
        s.sh = qkv_shards_new(s.ps, 0);
        if (!s.opt || !s.sh) {
            fprintf(stderr, "bench_vit: %s\n", qkv_error());
            return 1;
        }
        qkv_ctx_free(ctx); /* the shards have their own */
        ctx = qkv_shards_ctx(s.sh, 0);
    } else {
        qkv_set_grad_enabled(ctx, 0);
        qkv_set_training(ctx, 0);
    }

    printf("impl qkv %s\nthreads %d\n", QKV_VERSION, qkv_threads());
    bench_result res = bench_time(ctx, vit_step, &s, warmup, reps);
    if (s.sh) { /* all the shards' arenas */
        res.arena_peak = 0;
        for (int i = 0; i < qkv_shards_count(s.sh); i++)
            res.arena_peak += qkv_arena_peak(qkv_ctx_arena(qkv_shards_ctx(s.sh, i)));
    }
    bench_report(name, res, s.ps, s.opt);
    printf("%s_images %lld\n", name, (long long)B);
    free(images);
    free(labels);
    if (s.sh)
        qkv_shards_free(s.sh);
    else
        qkv_ctx_free(ctx);
    qkv_optim_free(s.opt);
    qkv_params_free(s.ps);
    return res.ms < 0;
}
