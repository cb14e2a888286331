/* gemm_shapes.c - the GEMMs of the book Transformer's training step (640
 * tokens, width 32, FFN 64, 201 target words), through qkv_k_gemm (OpenBLAS,
 * one thread per call) and the built-in GEMM, one thread: how near the
 * core's peak the step's linear layers run. Not part of `make bench`;
 * BENCHMARKS.md shows what it measured. Build as bench/run.sh builds the
 * others, with -Isrc:
 *
 *   gemm_shapes          (QKV_THREADS=1 OMP_NUM_THREADS=1)
 *
 * fwd: y = x W^T (M tokens, N outputs, K inputs); dx = dy W; dW = dy^T x. */
#include "kernels/gemm.h"
#include "kernels/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef void (*gemm_fn)(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                        const float *, int64_t, float, float *, int64_t);

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* the best of 5 batches of 400 calls, in microseconds a call */
static double time_us(gemm_fn f, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                      const float *A, const float *B, float *C)
{
    int64_t lda = ta ? M : K, ldb = tb ? K : N;
    double best = 1e30;
    for (int b = 0; b < 5; b++) {
        double t0 = now();
        for (int r = 0; r < 400; r++)
            f(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C, N);
        double t = (now() - t0) / 400;
        best = t < best ? t : best;
    }
    return best * 1e6;
}

int main(void)
{
    size_t n = (size_t)1 << 20;
    float *A = aligned_alloc(64, n * sizeof(float)), *B = aligned_alloc(64, n * sizeof(float));
    float *C = aligned_alloc(64, n * sizeof(float));
    if (!A || !B || !C)
        return 1;
    for (size_t i = 0; i < n; i++)
        A[i] = (float)(i % 7) * 0.1f, B[i] = (float)(i % 5) * 0.1f, C[i] = 0.0f;
    static const struct {
        const char *name;
        bool ta, tb;
        int64_t M, N, K;
    } cs[] = {
        {"fwd 640x32, K 32", 0, 1, 640, 32, 32},   {"fwd 640x96, K 32", 0, 1, 640, 96, 32},
        {"fwd 640x64, K 32", 0, 1, 640, 64, 32},   {"fwd 640x32, K 64", 0, 1, 640, 32, 64},
        {"fwd 640x201, K 32", 0, 1, 640, 201, 32}, {"dx 640x32, K 32", 0, 0, 640, 32, 32},
        {"dx 640x32, K 96", 0, 0, 640, 32, 96},    {"dx 640x32, K 201", 0, 0, 640, 32, 201},
        {"dW 32x32, K 640", 1, 0, 32, 32, 640},    {"dW 96x32, K 640", 1, 0, 96, 32, 640},
        {"dW 64x32, K 640", 1, 0, 64, 32, 640},    {"dW 201x32, K 640", 1, 0, 201, 32, 640},
    };
    printf("%-18s %24s %24s\n", "shape", "qkv_k_gemm", "built-in");
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        double mflop = 2.0 * (double)(cs[i].M * cs[i].N * cs[i].K) / 1e3;
        double o = time_us(qkv_k_gemm, cs[i].ta, cs[i].tb, cs[i].M, cs[i].N, cs[i].K, A, B, C);
        double b = time_us(qkv_k_gemm_builtin, cs[i].ta, cs[i].tb, cs[i].M, cs[i].N, cs[i].K, A,
                           B, C);
        printf("%-18s %8.2f us %6.1f GFLOP/s %8.2f us %6.1f GFLOP/s\n", cs[i].name, o, mflop / o,
               b, mflop / b);
    }
    free(A), free(B), free(C);
    return 0;
}
