/* binary.c - elementwise add, sub, mul, div with broadcasting. */
#include "kernels.h"

#include <string.h>

static inline float apply(qkv_binop op, float x, float y)
{
    switch (op) {
    case QKV_BIN_ADD: return x + y;
    case QKV_BIN_SUB: return x - y;
    case QKV_BIN_MUL: return x * y;
    default: return x / y;
    }
}

/* one row of the innermost axis: n elements, strides sa and sb (0 or other) */
static void row(qkv_binop op, float *o, const float *a, int64_t sa, const float *b, int64_t sb,
                int64_t n)
{
#define ROW(EXPR)                                                              \
    if (sa == 1 && sb == 1)                                                    \
        for (int64_t j = 0; j < n; j++) { float x = a[j], y = b[j]; o[j] = EXPR; } \
    else if (sa == 1 && sb == 0)                                               \
        for (int64_t j = 0; j < n; j++) { float x = a[j], y = b[0]; o[j] = EXPR; } \
    else if (sa == 0 && sb == 1)                                               \
        for (int64_t j = 0; j < n; j++) { float x = a[0], y = b[j]; o[j] = EXPR; } \
    else                                                                       \
        for (int64_t j = 0; j < n; j++) { float x = a[j * sa], y = b[j * sb]; o[j] = EXPR; }
    switch (op) {
    case QKV_BIN_ADD: ROW(x + y) break;
    case QKV_BIN_SUB: ROW(x - y) break;
    case QKV_BIN_MUL: ROW(x * y) break;
    case QKV_BIN_DIV: ROW(x / y) break;
    }
#undef ROW
    (void)apply;
}

void qkv_k_binary(qkv_binop op, float *out, const float *a, const int64_t *a_stride,
                  const float *b, const int64_t *b_stride, int ndim, const int64_t *shape)
{
    if (ndim == 0) {
        out[0] = apply(op, a[0], b[0]);
        return;
    }
    /* merge the axes into (outer, inner) rows; rows of a large tensor run in
     * parallel */
    int64_t inner = shape[ndim - 1], outer = 1;
    for (int i = 0; i < ndim - 1; i++)
        outer *= shape[i];
    if (inner == 0 || outer == 0)
        return;
#pragma omp parallel for if (outer * inner > 8192) schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        int64_t ao = 0, bo = 0, r = o;
        for (int i = ndim - 2; i >= 0; i--) {
            int64_t k = r % shape[i];
            r /= shape[i];
            ao += k * a_stride[i];
            bo += k * b_stride[i];
        }
        row(op, out + o * inner, a + ao, a_stride[ndim - 1], b + bo, b_stride[ndim - 1], inner);
    }
}
