/* bench_mha.c - multi-head self-attention, forward + backward, as
 * torch.nn.MultiheadAttention (sequence first, bias, no dropout, no weights
 * returned); bench/peer_mha.py is the PyTorch side. One shape per process,
 * so that the peak RSS is the shape's own:
 *
 *   bench_mha mha_small|mha_large [--threads N] [--unfused]
 *
 * mha_small: batch 32, length 128, width 256, 8 heads; mha_large: batch 4,
 * length 1024, width 512, 8 heads. The loss is mean(y), one cheap reduction,
 * as on the PyTorch side. Prints "key value" lines (bench_util.h). */
#include "bench_util.h"
#include "qkv_internal.h" /* ctx->unfused, --unfused */

typedef struct {
    qkv_nn_mha m;
    qkv_params *ps;
    int64_t B, N, E;
    const float *xs;
    int unfused;
} mha_state;

static int mha_step(qkv_ctx *ctx, void *p)
{
    mha_state *s = p;
    qkv_params_zero_grad(s->ps);
    qkv_tensor *x = qkv_requires_grad(qkv_from_data(ctx, 3, (int64_t[]){s->N, s->B, s->E}, s->xs));
    ctx->unfused = s->unfused; /* the reference path, scores materialised */
    qkv_tensor *y = qkv_nn_mha_forward(ctx, &s->m, x, x, x, NULL);
    qkv_tensor *loss = qkv_mean_all(ctx, y);
    return !loss || qkv_backward(ctx, loss) != QKV_OK;
}

int main(int argc, char **argv)
{
    bench_start(argc, argv);
    const char *name = bench_case(argc, argv);
    int unfused = 0;
    for (int i = 1; i < argc; i++)
        unfused |= !strcmp(argv[i], "--unfused");
    int64_t B, N, E, H = 8;
    int reps;
    if (name && !strcmp(name, "mha_small")) {
        B = 32, N = 128, E = 256, reps = 9;
    } else if (name && !strcmp(name, "mha_large")) {
        B = 4, N = 1024, E = 512, reps = 5;
    } else {
        fprintf(stderr, "usage: bench_mha mha_small|mha_large [--threads N] [--unfused]\n");
        return 2;
    }

    qkv_params *ps = qkv_params_new();
    mha_state s = {.ps = ps, .B = B, .N = N, .E = E, .unfused = unfused};
    if (qkv_nn_mha_init(&s.m, ps, "", E, H, 0.0f, 1, 0, 0, 0) != QKV_OK ||
        qkv_params_alloc(ps) != QKV_OK) {
        fprintf(stderr, "bench_mha: %s\n", qkv_error());
        return 1;
    }
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    qkv_nn_mha_reset(&s.m, &r);
    float *xs = bench_randn(&r, N * B * E);
    s.xs = xs;
    qkv_ctx *ctx = qkv_ctx_new();

    printf("impl qkv %s\nthreads %d\n", QKV_VERSION, qkv_threads());
    bench_result res = bench_time(ctx, mha_step, &s, 2, reps);
    bench_report(name, res, ps, NULL);
    free(xs);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    return res.ms < 0;
}
