/* blas_threads.c - does OpenBLAS's own thread pool slow qkv's OpenMP
 * kernels, and the other way round? Alternates a square GEMM with an
 * OpenMP row softmax over (4096, 1024), timing each, against each alone.
 * Not part of `make bench`; BENCHMARKS.md shows how to run it and what
 * it measured.
 *
 *   blas_threads N [split]
 *     without split: cblas_sgemm on OpenBLAS's own threads (OpenBLAS's
 *                    default, and qkv's before it split GEMMs itself)
 *     split:         OpenBLAS single-threaded, one band of rows per OpenMP
 *                    thread (what qkv_k_gemm does)
 * With LD_LIBRARY_PATH pointing at Debian's openblas-openmp directory the
 * same binary runs on the OpenMP build of OpenBLAS. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

char *openblas_get_config(void);
void openblas_set_num_threads(int);

#define ROWS 4096
#define COLS 1024
#define REPEATS 15

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return 1e3 * (double)t.tv_sec + 1e-6 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return v[n / 2];
}

/* y (ROWS, COLS) = softmax of x over its last axis: a stand-in for any
 * OpenMP kernel that runs between two GEMMs */
static void softmax_rows(float *y, const float *x)
{
#pragma omp parallel for schedule(static)
    for (int r = 0; r < ROWS; r++) {
        const float *xr = x + (size_t)r * COLS;
        float *yr = y + (size_t)r * COLS, m = xr[0];
        for (int j = 1; j < COLS; j++)
            m = fmaxf(m, xr[j]);
        double s = 0;
        for (int j = 0; j < COLS; j++)
            s += yr[j] = expf(xr[j] - m);
        for (int j = 0; j < COLS; j++)
            yr[j] = (float)(yr[j] / s);
    }
}

static int split;

/* C (n, n) = A (n, n) B (n, n) */
static void gemm(int n, const float *A, const float *B, float *C)
{
    if (!split) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, A, n, B, n, 0, C, n);
        return;
    }
    int bands = omp_get_max_threads();
#pragma omp parallel for num_threads(bands)
    for (int t = 0; t < bands; t++) {
        int r0 = n * t / bands, r1 = n * (t + 1) / bands;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, n, n, 1,
                    A + (size_t)r0 * n, n, B, n, 0, C + (size_t)r0 * n, n);
    }
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1024;
    split = argc > 2 && !strcmp(argv[2], "split");
    if (split)
        openblas_set_num_threads(1);
    float *A = malloc(sizeof(float) * n * n), *B = malloc(sizeof(float) * n * n);
    float *C = malloc(sizeof(float) * n * n);
    float *x = malloc(sizeof(float) * ROWS * COLS), *y = malloc(sizeof(float) * ROWS * COLS);
    for (long i = 0; i < (long)n * n; i++)
        A[i] = B[i] = (float)rand() / RAND_MAX;
    for (long i = 0; i < (long)ROWS * COLS; i++)
        x[i] = (float)rand() / RAND_MAX;
    double g[REPEATS], k[REPEATS], g2[REPEATS], k2[REPEATS];
    for (int i = 0; i < 3; i++) {
        gemm(n, A, B, C);
        softmax_rows(y, x);
    }
    for (int i = 0; i < REPEATS; i++) {
        double t = now_ms();
        gemm(n, A, B, C);
        g[i] = now_ms() - t;
    }
    for (int i = 0; i < REPEATS; i++) {
        double t = now_ms();
        softmax_rows(y, x);
        k[i] = now_ms() - t;
    }
    for (int i = 0; i < REPEATS; i++) {
        double t0 = now_ms();
        gemm(n, A, B, C);
        double t1 = now_ms();
        softmax_rows(y, x);
        g2[i] = t1 - t0;
        k2[i] = now_ms() - t1;
    }
    double mg = median(g, REPEATS), mk = median(k, REPEATS);
    double mg2 = median(g2, REPEATS), mk2 = median(k2, REPEATS);
    double flop = 2.0 * n * n * n;
    printf("%-32s n=%-5d alone: gemm %7.2f ms (%3.0f GFLOP/s) softmax %6.2f ms | "
           "alternating: gemm %7.2f ms (%3.0f GFLOP/s) softmax %6.2f ms\n",
           split ? "split, OpenBLAS single-threaded"
                 : strstr(openblas_get_config(), "USE_OPENMP") ? "OpenBLAS openmp build"
                                                               : "OpenBLAS pthread pool",
           n, mg, flop / mg / 1e6, mk, mg2, flop / mg2 / 1e6, mk2);
    free(A), free(B), free(C), free(x), free(y);
    return 0;
}
