/* gemm_shapes.c - the GEMMs of three model steps, through qkv_k_gemm
 * (OpenBLAS, one thread per call, when built with it) and the built-in
 * GEMM, one thread: how near the core's peak each product runs. Not part of
 * `make bench`; BENCHMARKS.md shows what it measured. Build as bench/run.sh
 * builds the others, with -Isrc:
 *
 *   gemm_shapes [book|vit|large|conv]   (QKV_THREADS=1 OMP_NUM_THREADS=1)
 *
 * book: the book Transformer's training step (640 tokens, width 32, FFN
 * 64, 201 target words). vit: ViT-B/16 inference (197 tokens a image at
 * batch 1, 1576 at batch 8; width 768, MLP 3072) and the book ViT's
 * training step (one shard of 2368 tokens at two threads; width 512, MLP
 * 2048). large: the large Transformer's step (a shard of 2240 tokens,
 * width 256, FFN 1024; the output layer 17851 wide, 469 rows at a time as
 * qkv_linear_cross_entropy runs it). conv: the forward GEMMs of the 3x3
 * convolutions of ResNet-18 on 28x28 images, w (og, K) times the column
 * buffer (K, columns), one image a GEMM at 28x28 and 14x14, 3 and 8 at 7x7
 * and 4x4, as ops_conv.c chunks them: at `qkv train moco`'s width 16
 * (16 .. 128 planes), and at 4 times that. For vit and large, B (the weight)
 * moves through copies of itself (up to 40, 256 MiB in all) from call to
 * call, so that it comes from memory as in a model step, not from cache.
 *
 * fwd: y = x W^T (M tokens, N outputs, K inputs); dx = dy W; dW = dy^T x.
 * Time is CPU time (user + sys), the best of 3 batches: on a loaded machine
 * far steadier than the wall clock at one thread. */
#include "kernels/gemm.h"
#include "kernels/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*gemm_fn)(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                        const float *, int64_t, float, float *, int64_t);

typedef struct {
    const char *name;
    bool ta, tb;
    int64_t M, N, K;
} shape;

static const shape book[] = {
    {"fwd 640x32, K 32", 0, 1, 640, 32, 32},   {"fwd 640x96, K 32", 0, 1, 640, 96, 32},
    {"fwd 640x64, K 32", 0, 1, 640, 64, 32},   {"fwd 640x32, K 64", 0, 1, 640, 32, 64},
    {"fwd 640x201, K 32", 0, 1, 640, 201, 32}, {"dx 640x32, K 32", 0, 0, 640, 32, 32},
    {"dx 640x32, K 96", 0, 0, 640, 32, 96},    {"dx 640x32, K 201", 0, 0, 640, 32, 201},
    {"dW 32x32, K 640", 1, 0, 32, 32, 640},    {"dW 96x32, K 640", 1, 0, 96, 32, 640},
    {"dW 64x32, K 640", 1, 0, 64, 32, 640},    {"dW 201x32, K 640", 1, 0, 201, 32, 640},
    {NULL, 0, 0, 0, 0, 0},
};
static const shape vit[] = {
    {"b1 qkv 197x2304, K 768", 0, 1, 197, 2304, 768},
    {"b1 proj 197x768, K 768", 0, 1, 197, 768, 768},
    {"b1 mlp 197x3072, K 768", 0, 1, 197, 3072, 768},
    {"b1 mlp 197x768, K 3072", 0, 1, 197, 768, 3072},
    {"b8 qkv 1576x2304, K 768", 0, 1, 1576, 2304, 768},
    {"b8 mlp 1576x3072, K 768", 0, 1, 1576, 3072, 768},
    {"b8 mlp 1576x768, K 3072", 0, 1, 1576, 768, 3072},
    {"book fwd 2368x2048, K 512", 0, 1, 2368, 2048, 512},
    {"book fwd 2368x512, K 2048", 0, 1, 2368, 512, 2048},
    {"book dx 2368x512, K 2048", 0, 0, 2368, 512, 2048},
    {"book dW 2048x512, K 2368", 1, 0, 2048, 512, 2368},
    {NULL, 0, 0, 0, 0, 0},
};
static const shape large[] = {
    {"fwd 2240x1024, K 256", 0, 1, 2240, 1024, 256},
    {"fwd 2240x256, K 1024", 0, 1, 2240, 256, 1024},
    {"dx 2240x256, K 1024", 0, 0, 2240, 256, 1024},
    {"dW 1024x256, K 2240", 1, 0, 1024, 256, 2240},
    {"out fwd 469x17851, K 256", 0, 1, 469, 17851, 256},
    {"out dx 469x256, K 17851", 0, 0, 469, 256, 17851},
    {"out dW 17851x256, K 469", 1, 0, 17851, 256, 469},
    {NULL, 0, 0, 0, 0, 0},
};

static const shape conv[] = {
    {"w16 layer1 16x784, K 144", 0, 0, 16, 784, 144},
    {"w16 layer2 32x196, K 288", 0, 0, 32, 196, 288},
    {"w16 layer3 64x147, K 576", 0, 0, 64, 147, 576},
    {"w16 layer4 128x128, K 1152", 0, 0, 128, 128, 1152},
    {"layer1 64x784, K 576", 0, 0, 64, 784, 576},
    {"layer2 128x196, K 1152", 0, 0, 128, 196, 1152},
    {"layer3 256x147, K 2304", 0, 0, 256, 147, 2304},
    {"layer4 512x128, K 4608", 0, 0, 512, 128, 4608},
    {NULL, 0, 0, 0, 0, 0},
};

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* copies of a shape's weight: 1 for the book's (cached, as in its step),
 * else as many as 256 MiB hold, at most 40 */
#define MAX_B ((size_t)64 << 20)
static int copies_of(const shape *s, bool cold)
{
    size_t w = (size_t)(s->N * s->K), n = MAX_B / w;
    return !cold ? 1 : n > 40 ? 40 : n < 1 ? 1 : (int)n;
}

/* the best of 3 batches of calls (about 2 GFLOP each), in microseconds a
 * call; B is copy (call % copies) of the weight */
static double time_us(gemm_fn f, const shape *s, const float *A, const float *B, int copies,
                      float *C)
{
    int64_t lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    double flop = 2.0 * (double)s->M * (double)s->N * (double)s->K, best = 1e30;
    int calls = flop > 2e9 ? 1 : (int)(2e9 / flop);
    for (int b = 0, i = 0; b < 3; b++) {
        double t0 = cpu_now();
        for (int r = 0; r < calls; r++, i++)
            f(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B + (size_t)(i % copies) * s->N * s->K,
              ldb, 1.0f, C, s->N);
        double t = (cpu_now() - t0) / calls;
        best = t < best ? t : best;
    }
    return best * 1e6;
}

int main(int argc, char **argv)
{
    const char *set = argc > 1 ? argv[1] : "book";
    const shape *cs = !strcmp(set, "book") ? book : !strcmp(set, "vit") ? vit
                                                : !strcmp(set, "large") ? large
                                                : !strcmp(set, "conv") ? conv : NULL;
    if (!cs) {
        fprintf(stderr, "usage: gemm_shapes [book|vit|large|conv]\n");
        return 2;
    }
    bool cold = cs != book && cs != conv;
    size_t na = 0, nb = 0, nc = 0;
    for (const shape *s = cs; s->name; s++) {
        size_t a = (size_t)(s->M * s->K), b = (size_t)(s->N * s->K) * copies_of(s, cold);
        size_t c = (size_t)(s->M * s->N);
        na = a > na ? a : na, nb = b > nb ? b : nb, nc = c > nc ? c : nc;
    }
    float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
    float *C = malloc(nc * sizeof(float));
    if (!A || !B || !C)
        return 1;
    for (size_t i = 0; i < na; i++)
        A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < nb; i++)
        B[i] = (float)(i % 5) * 0.1f;
    memset(C, 0, nc * sizeof(float));
    printf("%-26s %24s %24s\n", "shape", "qkv_k_gemm", "built-in");
    for (const shape *s = cs; s->name; s++) {
        double mflop = 2.0 * (double)(s->M * s->N * s->K) / 1e3;
        double o = time_us(qkv_k_gemm, s, A, B, copies_of(s, cold), C);
        double b = time_us(qkv_k_gemm_builtin, s, A, B, copies_of(s, cold), C);
        printf("%-26s %8.0f us %6.1f GFLOP/s %8.0f us %6.1f GFLOP/s\n", s->name, o, mflop / o,
               b, mflop / b);
        fflush(stdout);
    }
    free(A), free(B), free(C);
    return 0;
}
