/* bench_moco.c - a MoCo v2 training step, as `qkv train moco` runs it by
 * default: the ViT encoder of `qkv train vit` (28x28x1, patch 4, width 96,
 * 4 blocks, 4 heads, MLP 192) with v2's MLP head (96 -> 96 -> 128), batch
 * 256, a queue of 4096 keys, T 0.2, AdamW. bench/peer_moco.py is the
 * PyTorch side (moco/builder.py over torchvision's VisionTransformer). One
 * case per process:
 *
 *   bench_moco moco_v2|moco_v2_full [--threads N]
 *
 * A step: the key encoder on the whole batch without gradients (one shard
 * per thread), the query encoder's loss and backward (one shard per
 * thread), AdamW, the momentum update, the enqueue. moco_v2_full is the
 * equal-work case: the ViT's last block computes every token, as
 * torchvision's does; moco_v2 only the class token's, the one the head
 * reads. Images are random (the views' augmentation is the loader's, on
 * its own thread, in neither side's step). */
#include "bench_util.h"

typedef struct {
    qkv_moco m;
    qkv_optim *opt;
    qkv_shards *sh, *sh_k;
    qkv_moco_batch b;
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
    if (!name || (strcmp(name, "moco_v2") && strcmp(name, "moco_v2_full"))) {
        fprintf(stderr, "usage: bench_moco moco_v2|moco_v2_full [--threads N]\n");
        return 2;
    }
    int64_t B = 256, S = 28;
    qkv_moco_config cfg = {.version = 2, .arch = QKV_MOCO_VIT, .dim = 128, .K = 4096, .T = 0.2f,
                           .bn_splits = 1,
                           .vit = {.image_size = S, .patch_size = 4, .in_channels = 1,
                                   .hidden_dim = 96, .mlp_dim = 192, .num_heads = 4,
                                   .num_layers = 4, .every_token = !strcmp(name, "moco_v2_full")}};
    moco_state s;
    if (qkv_moco_init(&s.m, &cfg) != QKV_OK) {
        fprintf(stderr, "bench_moco: %s\n", qkv_error());
        return 1;
    }
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    qkv_moco_reset(&s.m, &r);
    float *x = bench_randn(&r, 2 * B * S * S);
    float *k = malloc(sizeof(float) * (size_t)(B * cfg.dim));
    s.b = (qkv_moco_batch){.x1 = x, .x2 = x + B * S * S, .B = B, .k2 = k, .groups = 1};
    s.opt = qkv_optim_new(s.m.ps, &(qkv_optim_config){.kind = QKV_ADAMW, .lr = 1e-3f,
                                                      .weight_decay = 0.05f});
    s.sh = qkv_shards_new(s.m.ps, 0);
    s.sh_k = qkv_shards_new(s.m.ps_k, qkv_shards_count(s.sh));
    if (!x || !k || !s.opt || !s.sh || !s.sh_k) {
        fprintf(stderr, "bench_moco: %s\n", qkv_error());
        return 1;
    }
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
    qkv_shards_free(s.sh);
    qkv_shards_free(s.sh_k);
    qkv_optim_free(s.opt);
    qkv_moco_free(&s.m);
    return res.ms < 0;
}
