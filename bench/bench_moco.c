/* bench_moco.c - a MoCo v2 training step. bench/peer_moco.py is the
 * PyTorch side. One case per process:
 *
 *   bench_moco moco_v2_full|moco_vit_full|moco_vit [--threads N]
 *
 * moco_v2_full: the step of `qkv train moco` with no options (docs/moco.md
 * "The default run"): a ResNet-18 with the small-image stem (3x3 stride-1
 * conv1, no max pool), width 16 (16/32/64/128 planes), grey 28x28 input,
 * v2's MLP head (128 -> 128 -> 128), batch 256, K 4096, T 0.2, shuffle BN
 * in 8 groups, SGD lr 0.03 (momentum 0.9, weight decay 5e-4), m 0.99. A
 * step as the trainer runs it: the key encoder on the whole batch in a
 * shuffled order without gradients (one shard per thread, each shard's
 * rows in 8 / shards batch-norm groups), the query encoder's loss and
 * backward (one shard per thread, the same groups), the running
 * statistics merged, SGD, the momentum update, the enqueue. The ResNet
 * has no trick: this is equal work.
 *
 * moco_vit_full / moco_vit: the same step over the ViT encoder of `qkv
 * train moco --arch vit` (28x28x1, patch 4, width 96, 4 blocks, 4 heads,
 * MLP 192; AdamW, no batch norm); moco_vit_full computes every token in the
 * last block, as torchvision does (equal work), moco_vit only the class
 * token's, the one the head reads (qkv's trick).
 *
 * Images are random (the views' augmentation is the loader's, on its own
 * thread, in neither side's step). */
#include "bench_util.h"

#include <stdbool.h>

typedef struct {
    qkv_moco m;
    qkv_optim *opt;
    qkv_shards *sh, *sh_k;
    qkv_moco_batch b;
    int64_t *perm;    /* shuffle BN's order (NULL: none) */
    int64_t splits;   /* shuffle BN's groups over the whole batch */
    qkv_rng r;
} moco_state;

static qkv_status key_shard(qkv_ctx *ctx, int i, int n, void *p)
{
    moco_state *s = p;
    int64_t lo, hi;
    qkv_shard_rows(s->b.B, i, n, &lo, &hi);
    return qkv_moco_keys(ctx, &s->m, &s->b, lo, hi);
}

static qkv_status loss_shard(qkv_ctx *ctx, int i, int n, void *p)
{
    moco_state *s = p;
    int64_t lo, hi;
    qkv_shard_rows(s->b.B, i, n, &lo, &hi);
    qkv_tensor *loss =
        qkv_scale(ctx, qkv_moco_loss(ctx, &s->m, &s->b, lo, hi), 1.0f / (float)s->b.B);
    return loss ? qkv_backward(ctx, loss) : qkv_error_status();
}

static int moco_step(qkv_ctx *ctx, void *p)
{
    moco_state *s = p;
    (void)ctx;
    if (s->perm) { /* a fresh shuffle every step, as the trainer's pre_step */
        for (int64_t i = 0; i < s->b.B; i++)
            s->perm[i] = i;
        qkv_rng_shuffle(&s->r, s->perm, s->b.B);
    }
    if (qkv_shards_run(s->sh_k, key_shard, s) != QKV_OK ||
        qkv_shards_run(s->sh, loss_shard, s) != QKV_OK || qkv_optim_step(s->opt) != QKV_OK)
        return 1;
    qkv_params_zero_grad(s->m.ps);
    qkv_moco_momentum_update(&s->m, 0.99f);
    return qkv_moco_enqueue(&s->m, s->b.k2, s->b.B) != QKV_OK;
}

int main(int argc, char **argv)
{
    bench_start(argc, argv);
    const char *name = bench_case(argc, argv);
    bool resnet = name && !strcmp(name, "moco_v2_full");
    if (!name || (!resnet && strcmp(name, "moco_vit") && strcmp(name, "moco_vit_full"))) {
        fprintf(stderr, "usage: bench_moco moco_v2_full|moco_vit_full|moco_vit [--threads N]\n");
        return 2;
    }
    int64_t B = 256, S = 28;
    qkv_moco_config cfg;
    qkv_optim_config oc;
    if (resnet) {
        cfg = (qkv_moco_config){.version = 2, .arch = QKV_MOCO_RESNET, .image_size = S,
                                .resnet = {.depth = 18, .width = 16, .in_channels = 1,
                                           .small_stem = 1},
                                .dim = 128, .K = 4096, .T = 0.2f, .bn_splits = 8};
        oc = (qkv_optim_config){.kind = QKV_SGD, .lr = 0.03f, .momentum = 0.9f,
                                .weight_decay = 5e-4f};
    } else {
        cfg = (qkv_moco_config){.version = 2, .arch = QKV_MOCO_VIT, .dim = 128, .K = 4096,
                                .T = 0.2f, .bn_splits = 1,
                                .vit = {.image_size = S, .patch_size = 4, .in_channels = 1,
                                        .hidden_dim = 96, .mlp_dim = 192, .num_heads = 4,
                                        .num_layers = 4,
                                        .every_token = !strcmp(name, "moco_vit_full")}};
        oc = (qkv_optim_config){.kind = QKV_ADAMW, .lr = 1e-3f, .weight_decay = 0.05f};
    }
    moco_state s = {.splits = cfg.bn_splits};
    if (qkv_moco_init(&s.m, &cfg) != QKV_OK) {
        fprintf(stderr, "bench_moco: %s\n", qkv_error());
        return 1;
    }
    qkv_rng_seed(&s.r, 1);
    qkv_moco_reset(&s.m, &s.r);
    float *x = bench_randn(&s.r, 2 * B * S * S);
    float *k = malloc(sizeof(float) * (size_t)(B * cfg.dim));
    s.perm = resnet ? malloc(sizeof(int64_t) * (size_t)B) : NULL;
    s.opt = qkv_optim_new(s.m.ps, &oc);
    s.sh = qkv_shards_new(s.m.ps, 0);
    s.sh_k = s.sh ? qkv_shards_new(s.m.ps_k, qkv_shards_count(s.sh)) : NULL;
    if (!x || !k || (resnet && !s.perm) || !s.opt || !s.sh || !s.sh_k) {
        fprintf(stderr, "bench_moco: %s\n", qkv_error());
        return 1;
    }
    /* each shard's rows in splits / shards groups, as the trainer's */
    int64_t per = s.splits / qkv_shards_count(s.sh);
    s.b = (qkv_moco_batch){.x1 = x, .x2 = x + B * S * S, .B = B, .k2 = k, .perm = s.perm,
                           .groups = per > 1 ? per : 1};
    printf("impl qkv %s\nthreads %d\n", QKV_VERSION, qkv_threads());
    qkv_ctx *ctx = qkv_shards_ctx(s.sh, 0);
    bench_result res = bench_time(ctx, moco_step, &s, 2, 5);
    res.arena_peak = 0; /* every shard's arena, of both sets */
    for (int i = 0; i < qkv_shards_count(s.sh); i++)
        res.arena_peak += qkv_arena_peak(qkv_ctx_arena(qkv_shards_ctx(s.sh, i))) +
                          qkv_arena_peak(qkv_ctx_arena(qkv_shards_ctx(s.sh_k, i)));
    bench_report(name, res, s.m.ps, s.opt);
    printf("%s_images %lld\n", name, (long long)B);
    free(x);
    free(k);
    free(s.perm);
    qkv_shards_free(s.sh);
    qkv_shards_free(s.sh_k);
    qkv_optim_free(s.opt);
    qkv_moco_free(&s.m);
    return res.ms < 0;
}
