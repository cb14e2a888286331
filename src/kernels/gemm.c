/* gemm.c - C = alpha op(A) op(B) + beta C, through OpenBLAS's CBLAS when
 * built with it (BLAS=openblas), else through the built-in kernel of
 * gemm_builtin.c; and the plain reference both are tested against. */
#include "gemm.h"

#include "../qkv_internal.h"
#include "kernels.h"

#ifdef QKV_OPENBLAS
#include <cblas.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

void qkv_k_gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                    float *C, int64_t ldc)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++) {
                float a = trans_a ? A[k * lda + i] : A[i * lda + k];
                float b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
                acc += (double)a * b;
            }
            float c = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
            C[i * ldc + j] = c + alpha * (float)acc;
        }
}

#ifdef QKV_OPENBLAS
/* OpenBLAS runs single-threaded (threads.c sets it so) inside qkv's OpenMP
 * threads, each on its own band of C: the longer of M and N is cut into
 * one band per thread, 16 columns or rows at a time. Why not OpenBLAS's
 * own threads: on a machine with as many threads as cores, its pool spins
 * after every call while the next OpenMP kernel wants the cores, and
 * OpenMP's spinning workers slow the next GEMM in turn (BENCHMARKS.md has
 * the numbers). One pool for everything avoids both. */
static void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                  float *C, int64_t ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

static void openblas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, int64_t ldc)
{
    qkv__threads_init(); /* OpenBLAS single-threaded before the first call */
    int threads = 1;
#ifdef _OPENMP
    if ((double)M * N * K >= QKV_GEMM_PARALLEL_WORK && !omp_in_parallel())
        threads = omp_get_max_threads();
#endif
    bool by_rows = M >= N;
    int64_t len = by_rows ? M : N, band = (len + threads - 1) / threads;
    band = (band + 15) / 16 * 16;
    int bands = (int)((len + band - 1) / band);
    if (bands <= 1) {
        sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#pragma omp parallel for num_threads(bands) schedule(static)
    for (int t = 0; t < bands; t++) {
        int64_t lo = t * band, n = len - lo < band ? len - lo : band;
        if (by_rows) /* rows lo.. of op(A) and of C */
            sgemm(ta, tb, n, N, K, alpha, A + (ta ? lo : lo * lda), lda, B, ldb, beta,
                  C + lo * ldc, ldc);
        else /* columns lo.. of op(B) and of C */
            sgemm(ta, tb, M, n, K, alpha, A, lda, B + (tb ? lo * ldb : lo), ldb, beta, C + lo,
                  ldc);
    }
}
#endif

void qkv_k_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                int64_t ldc)
{
    if (M == 0 || N == 0)
        return;
#ifdef QKV_OPENBLAS
    openblas_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    qkv_k_gemm_builtin(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

const char *qkv_k_gemm_backend(void)
{
#ifdef QKV_OPENBLAS
    return "openblas";
#else
    return "builtin";
#endif
}
