/*
 * kernels.h - plain numeric loops on raw pointers: no tensors, no graph.
 *
 * Legend (outermost first): B batch, N rows, C columns or channels, M, K
 * matrix sizes. Every function states its arguments' shapes. Arguments go
 * outputs, inputs, sizes. Backward kernels accumulate (+=) into gradients.
 */
#ifndef QKV_KERNELS_H
#define QKV_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

/* ---- binary elementwise with broadcast strides ---- */
typedef enum { QKV_BIN_ADD, QKV_BIN_SUB, QKV_BIN_MUL, QKV_BIN_DIV } qkv_binop;
/* out (shape, contiguous) = a op b, a and b read through strides (0 on
 * broadcast axes). */
void qkv_k_binary(qkv_binop op, float *out, const float *a, const int64_t *a_stride,
                  const float *b, const int64_t *b_stride, int ndim, const int64_t *shape);

/* ---- GEMM ----
 * C (M, N) = alpha * op(A) op(B) + beta * C, row-major.
 * op(A) (M, K): A is (M, K) with lda, or (K, M) if trans_a.
 * op(B) (K, N): B is (K, N) with ldb, or (N, K) if trans_b. */
void qkv_k_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                int64_t ldc);
/* The plain reference GEMM (triple loop, double accumulation) for tests. */
void qkv_k_gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                    float *C, int64_t ldc);
/* Name of the GEMM in use ("openblas" or "builtin"). */
const char *qkv_k_gemm_backend(void);

#endif
