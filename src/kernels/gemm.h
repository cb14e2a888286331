/*
 * gemm.h - the built-in GEMM, callable whichever backend qkv_k_gemm uses, so
 * that tests and benchmarks can reach it when qkv is linked with OpenBLAS.
 * Shapes and argument order as qkv_k_gemm in kernels.h.
 */
#ifndef QKV_GEMM_H
#define QKV_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* Below this many multiply-adds (M N K) a GEMM runs on one thread: waking a
 * second costs more than it saves. (1 << 18: the book Transformer's
 * 640 x 32 x 32 projections split in two, 2.47 -> 2.42 ms a step at two
 * threads; 1 << 20 kept them whole.) */
#define QKV_GEMM_PARALLEL_WORK (1 << 18)

/* C (M, N) = alpha * op(A) (M, K) op(B) (K, N) + beta * C, row-major; with
 * beta == 0, C is written without being read (NaN in C does not survive).
 * Packs A and B into per-thread buffers grown once (no allocation once warm)
 * and runs an AVX-512, AVX2 or scalar micro-kernel, by build flags. */
void qkv_k_gemm_builtin(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc);

/* y (n) = beta y + alpha sum_k x[k xs] B[k ldb + 0..n) over k < K: one row
 * of a product, accumulated in registers 64 columns at a time, without
 * packing (the built-in GEMM's path for tiny products, and attention's
 * weighted sums of value and key rows). beta == 0 does not read y. */
void qkv_k_gemv_rows(int64_t K, int64_t n, float alpha, const float *x, int64_t xs,
                     const float *B, int64_t ldb, float beta, float *y);

/* The micro-kernel the built-in GEMM was compiled with ("avx512", "avx2"
 * or "scalar"). */
const char *qkv_k_gemm_builtin_isa(void);

#endif
