/* gemm.c - C = alpha op(A) op(B) + beta C, through CBLAS when built with
 * OpenBLAS, else through the built-in blocked kernel. */
#include "kernels.h"

#include <stdlib.h>

#ifdef QKV_OPENBLAS
#include <cblas.h>
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

void qkv_k_gemm_builtin(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc);

void qkv_k_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                int64_t ldc)
{
    if (M == 0 || N == 0)
        return;
#ifdef QKV_OPENBLAS
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, A, (int)lda,
                B, (int)ldb, beta, C, (int)ldc);
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
