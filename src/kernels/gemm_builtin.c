/* gemm_builtin.c - the portable GEMM used when qkv is built without BLAS:
 * packs panels of A and B and runs a register-blocked micro-kernel that the
 * compiler vectorises; OpenMP over blocks of rows. */
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

#define MR 8
#define NR 32
#define KC 256
#define MC 128
#define NC 1024

static inline float at(const float *X, int64_t ld, bool trans, int64_t r, int64_t c)
{
    return trans ? X[c * ld + r] : X[r * ld + c];
}

/* Ap (MR x kc per micro-panel, k-major) from op(A)[i0.., k0..] */
static void pack_a(float *Ap, const float *A, int64_t lda, bool ta, int64_t i0, int64_t mc,
                   int64_t k0, int64_t kc)
{
    for (int64_t i = 0; i < mc; i += MR)
        for (int64_t k = 0; k < kc; k++)
            for (int64_t r = 0; r < MR; r++)
                *Ap++ = (i + r < mc) ? at(A, lda, ta, i0 + i + r, k0 + k) : 0.0f;
}

static void pack_b(float *Bp, const float *B, int64_t ldb, bool tb, int64_t k0, int64_t kc,
                   int64_t j0, int64_t nc)
{
    for (int64_t j = 0; j < nc; j += NR)
        for (int64_t k = 0; k < kc; k++)
            for (int64_t c = 0; c < NR; c++)
                *Bp++ = (j + c < nc) ? at(B, ldb, tb, k0 + k, j0 + j + c) : 0.0f;
}

static void micro(int64_t kc, const float *restrict a, const float *restrict b,
                  float *restrict acc)
{
    float c[MR][NR];
    memset(c, 0, sizeof c);
    for (int64_t k = 0; k < kc; k++) {
        for (int r = 0; r < MR; r++) {
            float av = a[k * MR + r];
            for (int j = 0; j < NR; j++)
                c[r][j] += av * b[k * NR + j];
        }
    }
    memcpy(acc, c, sizeof c);
}

void qkv_k_gemm_builtin(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc)
{
    /* C = beta C first, then accumulate alpha op(A) op(B) block by block */
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    if (K == 0)
        return;
    for (int64_t j0 = 0; j0 < N; j0 += NC) {
        int64_t nc = N - j0 < NC ? N - j0 : NC;
        int64_t ncp = (nc + NR - 1) / NR * NR;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int64_t kc = K - k0 < KC ? K - k0 : KC;
            float *Bp = aligned_alloc(64, (size_t)((ncp * kc * 4 + 63) / 64 * 64));
            if (!Bp)
                return;
            pack_b(Bp, B, ldb, trans_b, k0, kc, j0, nc);
#pragma omp parallel for schedule(dynamic)
            for (int64_t i0 = 0; i0 < M; i0 += MC) {
                int64_t mc = M - i0 < MC ? M - i0 : MC;
                int64_t mcp = (mc + MR - 1) / MR * MR;
                float Ap[MC * KC];
                float acc[MR * NR];
                pack_a(Ap, A, lda, trans_a, i0, mc, k0, kc);
                for (int64_t i = 0; i < mcp; i += MR)
                    for (int64_t j = 0; j < ncp; j += NR) {
                        micro(kc, Ap + i * kc, Bp + j * kc, acc);
                        for (int r = 0; r < MR && i + r < mc; r++)
                            for (int c = 0; c < NR && j + c < nc; c++)
                                C[(i0 + i + r) * ldc + j0 + j + c] += alpha * acc[r * NR + c];
                    }
            }
            free(Bp);
        }
    }
}
