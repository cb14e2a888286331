/* bench_resnet.c - ResNet (qkv_resnet, torchvision's layout) for DETR's and
 * MoCo's uses. bench/peer_resnet.py is the PyTorch side (torchvision's
 * resnet18/50). One case per process:
 *
 *   bench_resnet r50_detr_infer|r18_train|r18_moco_train [--threads N]
 *
 * r50_detr_infer: ResNet-50 with frozen batch norm, eval mode, gradients
 * off, one 3x800x1066 image (DETR's inference size) to C5 (2048x25x34).
 * r18_train: ResNet-18, 1000 classes, batch 32 of 3x224x224: forward,
 * cross-entropy, backward, SGD with momentum 0.9 and weight decay 1e-4.
 * r18_moco_train: MoCo's grey encoder, ResNet-18 with a 3x3 stride-1 stem
 * and no max pool, 1x28x28 images, batch 64, MLP head to 128: the same
 * step. Random weights and images; training mode uses batch statistics. */
#include "bench_util.h"

typedef struct {
    qkv_resnet m;
    qkv_params *ps;
    qkv_optim *opt; /* NULL: inference */
    int64_t B, C, H, W;
    float *images;
    int64_t *labels;
} rn_state;

static int rn_step(qkv_ctx *ctx, void *p)
{
    rn_state *s = p;
    qkv_tensor *x = qkv_wrap(ctx, 4, (int64_t[]){s->B, s->C, s->H, s->W}, s->images);
    if (!s->opt)
        return qkv_resnet_forward(ctx, &s->m, x, QKV_RESNET_C5, 1) == NULL;
    qkv_tensor *loss = qkv_cross_entropy(ctx, qkv_resnet_forward(ctx, &s->m, x,
                                                                 QKV_RESNET_LOGITS, 1),
                                         s->labels, NULL);
    if (!loss || qkv_backward(ctx, loss) != QKV_OK || qkv_optim_step(s->opt) != QKV_OK)
        return 1;
    qkv_params_zero_grad(s->ps);
    return 0;
}

int main(int argc, char **argv)
{
    bench_start();
    qkv_set_threads(bench_threads(argc, argv));
    const char *c = bench_case(argc, argv);
    rn_state s = {0};
    qkv_resnet_config cfg = {0};
    int warmup = 1, reps = 5;
    if (c && !strcmp(c, "r50_detr_infer")) {
        cfg = (qkv_resnet_config){.depth = 50, .frozen_bn = 1, .frozen_stages = 2};
        s.B = 1, s.C = 3, s.H = 800, s.W = 1066;
        reps = 3;
    } else if (c && !strcmp(c, "r18_train")) {
        cfg = (qkv_resnet_config){.depth = 18, .num_classes = 1000};
        s.B = 32, s.C = 3, s.H = s.W = 224;
        reps = 3;
    } else if (c && !strcmp(c, "r18_moco_train")) {
        cfg = (qkv_resnet_config){.depth = 18, .in_channels = 1, .small_stem = 1,
                                  .num_classes = 128, .fc_hidden = 512};
        s.B = 64, s.C = 1, s.H = s.W = 28;
    } else {
        fprintf(stderr, "usage: bench_resnet r50_detr_infer|r18_train|r18_moco_train "
                        "[--threads N]\n");
        return 2;
    }
    s.ps = qkv_params_new();
    if (qkv_resnet_init(&s.m, s.ps, "", &cfg) != QKV_OK || qkv_params_alloc(s.ps) != QKV_OK) {
        fprintf(stderr, "%s\n", qkv_error());
        return 1;
    }
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    qkv_resnet_reset(&s.m, &r);
    s.images = bench_randn(&r, s.B * s.C * s.H * s.W);
    s.labels = malloc((size_t)s.B * sizeof *s.labels);
    for (int64_t i = 0; i < s.B; i++)
        s.labels[i] = (int64_t)qkv_rng_below(&r, (uint64_t)cfg.num_classes + 1) %
                      (cfg.num_classes ? cfg.num_classes : 1);
    qkv_ctx *ctx = qkv_ctx_new();
    if (cfg.num_classes) {
        s.opt = qkv_optim_new(s.ps, &(qkv_optim_config){.kind = QKV_SGD, .lr = 0.03f,
                                                        .momentum = 0.9f,
                                                        .weight_decay = 1e-4f});
    } else {
        qkv_set_training(ctx, 0);
        qkv_set_grad_enabled(ctx, 0);
    }
    printf("impl qkv %s (%s)\nthreads %d\n", QKV_VERSION, qkv_backend(), qkv_threads());
    bench_report(c, bench_time(ctx, rn_step, &s, warmup, reps), s.ps, s.opt);
    printf("%s_images %lld\n", c, (long long)s.B);
    qkv_ctx_free(ctx);
    qkv_optim_free(s.opt);
    qkv_params_free(s.ps);
    free(s.images);
    free(s.labels);
    return 0;
}
