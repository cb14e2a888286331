/* bench_ops.c - qkv's side of `make bench`: milliseconds per iteration of
 * matmul (grads off) and of softmax, layer norm and GELU forward+backward,
 * printed as "key value" lines for bench/table.py. bench/peer_ops.py does
 * the same with PyTorch; the method is the same on both sides: warm-up
 * iterations, then the median of REPEATS timed batches.
 *
 *   bench_ops [--threads N]     (default: $QKV_THREADS, else 2)
 */
#include "qkv.h"

#include "kernels/gemm.h"
#include "kernels/kernels.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define WARMUP 3
#define REPEATS 7
#define BATCH_SECONDS 0.15 /* each timed batch runs about this long */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One benchmark: run(state) does one iteration and returns 0 if the op is
 * there (non-zero: not implemented or failed). */
typedef int (*bench_fn)(void *state);

/* Median milliseconds per iteration, or -1 if the op failed. */
static double time_ms(bench_fn run, void *state)
{
    double t0 = now();
    for (int i = 0; i < WARMUP; i++)
        if (run(state))
            return -1;
    double per = (now() - t0) / WARMUP;
    int iters = per > 0 ? (int)(BATCH_SECONDS / per) : 1;
    iters = iters < 1 ? 1 : iters;
    double ms[REPEATS];
    for (int r = 0; r < REPEATS; r++) {
        double t = now();
        for (int i = 0; i < iters; i++)
            if (run(state))
                return -1;
        ms[r] = 1e3 * (now() - t) / iters;
    }
    qsort(ms, REPEATS, sizeof ms[0], by_value);
    return ms[REPEATS / 2];
}

static void report(const char *key, double ms)
{
    if (ms < 0)
        printf("%s n/a\n", key);
    else
        printf("%s %.4f\n", key, ms);
    fflush(stdout);
}

/* ---- matmul (n, n) @ (n, n), gradients off ---- */

typedef struct {
    qkv_ctx *ctx;
    float *a, *b, *c;
    int64_t n;
} mm_state;

static int run_matmul(void *p)
{
    mm_state *s = p;
    qkv_ctx_reset(s->ctx);
    int64_t shape[2] = {s->n, s->n};
    qkv_tensor *a = qkv_wrap(s->ctx, 2, shape, s->a), *b = qkv_wrap(s->ctx, 2, shape, s->b);
    return qkv_matmul(s->ctx, a, b, 0, 0) == NULL;
}

static int run_gemm_builtin(void *p)
{
    mm_state *s = p;
    qkv_k_gemm_builtin(false, false, s->n, s->n, s->n, 1.0f, s->a, s->n, s->b, s->n, 0.0f,
                       s->c, s->n);
    return 0;
}

/* ---- row ops on x (ROWS, COLS), forward then backward ---- */

#define ROWS 4096
#define COLS 1024

typedef enum { OP_SOFTMAX, OP_LAYER_NORM, OP_GELU } row_op;

typedef struct {
    qkv_ctx *ctx;
    row_op op;
    float *x, *gout, *w, *b;
} row_state;

static int run_row_op(void *p)
{
    row_state *s = p;
    qkv_ctx_reset(s->ctx);
    qkv_tensor *x = qkv_requires_grad(qkv_wrap(s->ctx, 2, (int64_t[]){ROWS, COLS}, s->x));
    qkv_tensor *y = NULL;
    if (s->op == OP_SOFTMAX) {
        y = qkv_softmax(s->ctx, x);
    } else if (s->op == OP_GELU) {
        y = qkv_gelu(s->ctx, x);
    } else {
        qkv_tensor *w = qkv_requires_grad(qkv_wrap(s->ctx, 1, (int64_t[]){COLS}, s->w));
        qkv_tensor *b = qkv_requires_grad(qkv_wrap(s->ctx, 1, (int64_t[]){COLS}, s->b));
        y = qkv_layer_norm(s->ctx, x, w, b, 1e-5f);
    }
    return !y || qkv_backward_with(s->ctx, y, s->gout) != QKV_OK;
}

static float *randn(qkv_rng *r, int64_t n)
{
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n && p; i++)
        p[i] = (float)qkv_rng_normal(r);
    return p;
}

int main(int argc, char **argv)
{
    int threads = 2;
    const char *env = getenv("QKV_THREADS");
    if (env && atoi(env) > 0)
        threads = atoi(env);
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
    qkv_set_threads(threads);
    printf("impl qkv %s (GEMM: %s; built-in kernel: %s)\n", QKV_VERSION, qkv_k_gemm_backend(),
           qkv_k_gemm_builtin_isa());
    printf("threads %d\n", qkv_threads());

    qkv_rng rng;
    qkv_rng_seed(&rng, 1);
    qkv_ctx *ctx = qkv_ctx_new();
    if (!ctx) {
        fprintf(stderr, "bench_ops: %s\n", qkv_error());
        return 1;
    }

    qkv_set_grad_enabled(ctx, 0);
    static const int64_t sizes[] = {256, 1024, 2048};
    for (int i = 0; i < 3; i++) {
        int64_t n = sizes[i];
        mm_state s = {ctx, randn(&rng, n * n), randn(&rng, n * n), randn(&rng, n * n), n};
        char key[64];
        snprintf(key, sizeof key, "matmul_%lld", (long long)n);
        report(key, time_ms(run_matmul, &s));
        snprintf(key, sizeof key, "gemm_builtin_%lld", (long long)n);
        report(key, time_ms(run_gemm_builtin, &s));
        free(s.a), free(s.b), free(s.c);
    }

    qkv_set_grad_enabled(ctx, 1);
    row_state s = {ctx, OP_SOFTMAX, randn(&rng, ROWS * COLS), randn(&rng, ROWS * COLS),
                   randn(&rng, COLS), randn(&rng, COLS)};
    static const char *const names[] = {"softmax", "layer_norm", "gelu"};
    for (int op = OP_SOFTMAX; op <= OP_GELU; op++) {
        s.op = (row_op)op;
        report(names[op], time_ms(run_row_op, &s));
        qkv_clear_error();
    }
    free(s.x), free(s.gout), free(s.w), free(s.b);
    qkv_ctx_free(ctx);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak_rss_mb %.1f\n", ru.ru_maxrss / 1024.0);
    return 0;
}
