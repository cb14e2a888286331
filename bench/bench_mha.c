/* bench_mha.c - multi-head self-attention, forward + backward, as
 * torch.nn.MultiheadAttention (sequence first, bias, no dropout, no weights
 * returned), at the two shapes of the brief. Prints per shape the median
 * time of a training step and the step arena's peak (every tensor of the
 * step, activations and gradients of activations; parameters excluded).
 *
 *   make build/libqkv.a
 *   cc -O3 -march=native -fopenmp -Iinclude bench/bench_mha.c build/libqkv.a \
 *      $(pkg-config --libs openblas) -lcjson -lpng -ljpeg -lz -lm -o build/bench_mha
 *   QKV_THREADS=2 build/bench_mha [unfused]
 *
 * Compare with bench/peer_mha.py (PyTorch, same shapes, same threads). */
#include "qkv.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void run(int64_t B, int64_t N, int64_t E, int64_t H, int reps, int unfused)
{
    qkv_params *ps = qkv_params_new();
    qkv_nn_mha m;
    if (qkv_nn_mha_init(&m, ps, "", E, H, 0.0f, 1, 0, 0, 0) != QKV_OK ||
        qkv_params_alloc(ps) != QKV_OK) {
        fprintf(stderr, "%s\n", qkv_error());
        exit(1);
    }
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    qkv_nn_mha_reset(&m, &r);
    qkv_ctx *ctx = qkv_ctx_new();
    float *xs = malloc(sizeof(float) * (size_t)(N * B * E));
    for (int64_t i = 0; i < N * B * E; i++)
        xs[i] = (float)qkv_rng_normal(&r);
    double t[64];
    size_t peak = 0;
    for (int it = 0; it < reps + 1; it++) {
        double t0 = now();
        qkv_tensor *x = qkv_requires_grad(qkv_from_data(ctx, 3, (int64_t[]){N, B, E}, xs));
        qkv_tensor *y = qkv_nn_mha_forward(ctx, &m, x, x, x, &(qkv_attn_opts){.unfused = unfused});
        /* loss = mean(y): one cheap reduction, as in the PyTorch script */
        qkv_tensor *loss = qkv_mean_all(ctx, y);
        if (!loss || qkv_backward(ctx, loss) != QKV_OK) {
            fprintf(stderr, "%s\n", qkv_error());
            exit(1);
        }
        double dt = now() - t0;
        peak = qkv_arena_peak(qkv_ctx_arena(ctx));
        qkv_ctx_reset(ctx);
        qkv_params_zero_grad(ps);
        if (it > 0)
            t[it - 1] = dt;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp);
    printf("qkv mha%s B=%lld N=%lld E=%lld H=%lld threads=%d: %.2f ms/step, arena peak %.1f MiB\n",
           unfused ? " (unfused)" : "", (long long)B, (long long)N, (long long)E, (long long)H,
           qkv_threads(), t[reps / 2] * 1e3, peak / 1048576.0);
    free(xs);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

int main(int argc, char **argv)
{
    int unfused = argc > 1 && strcmp(argv[1], "unfused") == 0;
    run(32, 128, 256, 8, 10, unfused);
    run(4, 1024, 512, 8, 5, unfused);
    return 0;
}
