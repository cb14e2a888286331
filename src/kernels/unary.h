/*
 * unary.h - elementwise unary kernels, forward and backward, and the
 * vectorised erf behind GELU.
 *
 * Every array is contiguous with n elements. A backward kernel takes the
 * forward's input x and output y (whichever its rule needs) and the upstream
 * gradient g; with `accumulate` it adds into dx (dx += ...), without it it
 * stores (dx = ...), which spares zeroing a fresh gradient buffer.
 */
#ifndef QKV_KERNELS_UNARY_H
#define QKV_KERNELS_UNARY_H

#include <stdbool.h>
#include <stdint.h>

/* The scalars a and b of each op are named beside it. Definitions are
 * PyTorch's, including its gradient at kinks. */
typedef enum {
    QKV_UN_AFFINE,     /* a x + b                                              */
    QKV_UN_EXP,
    QKV_UN_LOG,
    QKV_UN_SQRT,
    QKV_UN_POW,        /* x^a                                                  */
    QKV_UN_ABS,        /* gradient sign(x), 0 at 0                             */
    QKV_UN_TANH,
    QKV_UN_SIGMOID,
    QKV_UN_RELU,       /* gradient 0 at 0                                      */
    QKV_UN_LEAKY_RELU, /* x > 0 ? x : a x; gradient a at 0                     */
    QKV_UN_GELU,       /* x Phi(x), Phi the normal CDF (erf form)              */
    QKV_UN_GELU_TANH,  /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))      */
    QKV_UN_SILU,       /* x sigmoid(x)                                         */
    QKV_UN_SOFTPLUS,   /* a x > b ? x : log1p(exp(a x)) / a  (beta a, threshold b) */
} qkv_unop;

/* y (n) = f(x (n)). */
void qkv_k_unary(qkv_unop op, float *y, const float *x, int64_t n, float a, float b);
/* dx (n) (+)= g (n) * f'(x); x (n) the forward input, y (n) its output. */
void qkv_k_unary_backward(qkv_unop op, float *dx, const float *g, const float *x,
                          const float *y, int64_t n, float a, float b, bool accumulate);

/* GELU with the erf form, vectorised: y (n) = x Phi(x), x (n). Relative
 * error of Phi under 5e-7 wherever it is a normal float (tests/test_unary.c). */
void qkv_k_gelu(float *y, const float *x, int64_t n);
/* dx (n) (+)= g (n) * (Phi(x) + x phi(x)), x (n); phi the normal density. */
void qkv_k_gelu_backward(float *dx, const float *g, const float *x, int64_t n,
                         bool accumulate);
/* Plain references in double with libm's erf, for the tests. */
void qkv_k_gelu_ref(float *y, const float *x, int64_t n);
void qkv_k_gelu_backward_ref(float *dx, const float *g, const float *x, int64_t n);

/* y (n) = erf(x (n)) by the same approximation as GELU (absolute error
 * stated and checked against libm's erff in tests/test_unary.c). */
void qkv_k_erf(float *y, const float *x, int64_t n);

#endif
