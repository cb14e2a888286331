/* unary.c - elementwise unary kernels, forward and backward (PyTorch's
 * definitions, evaluated in the same order so that results round alike),
 * and a vectorisable erf for GELU. Arrays are contiguous, n elements. */
#include "unary.h"

#include <math.h>
#include <string.h>

/* Below this many elements one thread beats waking a second. */
#define PAR_MIN 8192

/* ---- exp(-c x^2) and erfc for GELU, written so that gcc vectorises them ----
 *
 * libm's erff and expf are calls gcc cannot vectorise; these are straight-line
 * float code (FMA, one division, a bit cast). Both polynomials were fitted for
 * qkv by weighted least squares with Lawson iterations (near-minimax relative
 * error) in double and rounded to float. */

#define LN2_HI 0x1.62e430p-1f      /* ln 2 rounded to float            */
#define LN2_LO (-0x1.05c610p-29f)  /* ln 2 - LN2_HI                    */
#define LOG2E 0x1.715476p+0f
#define SHIFTER 0x1.8p23f          /* adding it rounds to an integer    */
#define EXP_MIN (-87.0f)           /* 2^k stays a normal float above it */

#define EXP_MAX 88.0f             /* and below it                      */

/* e^v for v in [EXP_MIN, EXP_MAX]: e^v = 2^k e^r with k = round(v log2 e),
 * |r| <= ln2 / 2; e^r by a degree-6 polynomial, relative error 1.9e-9 before
 * rounding; 2^k built in the exponent bits. */
static inline float exp_core(float v)
{
    float k = fmaf(v, LOG2E, SHIFTER) - SHIFTER;
    float r = fmaf(k, -LN2_HI, v);
    r = fmaf(k, -LN2_LO, r);
    float p = 1.383684226e-03f;
    p = fmaf(p, r, 8.374815807e-03f);
    p = fmaf(p, r, 4.166822508e-02f);
    p = fmaf(p, r, 1.666641980e-01f);
    p = fmaf(p, r, 4.999999106e-01f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* e^v for v <= 0; 0 below EXP_MIN. NaN maps to a finite value: GELU, the
 * only caller, propagates NaN through its factor x. */
static inline float exp_nonpos(float v)
{
    float e = exp_core(v > EXP_MIN ? v : EXP_MIN);
    return v > EXP_MIN ? e : 0.0f;
}

/* e^v for any v: 0 below EXP_MIN, +inf above EXP_MAX (e^88.72 is the true
 * overflow; the values between do not matter where it is used), NaN kept. */
static inline float exp_any(float v)
{
    float vc = v > EXP_MIN ? v : EXP_MIN;
    vc = vc < EXP_MAX ? vc : EXP_MAX;
    float e = exp_core(vc);
    e = v > EXP_MIN ? e : 0.0f;
    e = v < EXP_MAX ? e : INFINITY;
    return v == v ? e : v;
}

/* exp(-c x^2) for c a power of two. x^2 is split into hi + lo exactly (FMA),
 * because rounding x^2 alone would cost e.g. 5e-6 relative error at x = 13. */
static inline float exp_neg_square(float x, float c)
{
    float hi = x * x, lo = fmaf(x, x, -hi);
    float e = exp_nonpos(-c * hi);
    return fmaf(-c * lo, e, e);
}

/* erfc(z) e^(z^2) for z >= 0, as t P(t) with t = 1 / (1 + 3z/8), which maps
 * [0, inf) onto (0, 1]. Degree 8: relative error 1.2e-8 on z in [0, 10]
 * before rounding. */
static inline float erfcx_nonneg(float z)
{
    float t = 1.0f / fmaf(0.375f, z, 1.0f);
    float p = 6.153857708e-02f;
    p = fmaf(p, t, -2.873300910e-01f);
    p = fmaf(p, t, 4.323986471e-01f);
    p = fmaf(p, t, -2.294133902e-01f);
    p = fmaf(p, t, 2.737247050e-01f);
    p = fmaf(p, t, 1.215049326e-01f);
    p = fmaf(p, t, 2.053134888e-01f);
    p = fmaf(p, t, 2.106496543e-01f);
    p = fmaf(p, t, 2.116134763e-01f);
    return t * p;
}

#define SQRT1_2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f /* M_2_SQRTPI * M_SQRT1_2 / 2, as PyTorch */

/* Phi(x) = erfc(-x / sqrt 2) / 2 through the tail Phi(-|x|), which keeps
 * full relative accuracy for negative x; *e receives exp(-x^2 / 2), which
 * the normal density phi(x) = e / sqrt(2 pi) reuses. */
static inline float normal_cdf(float x, float *e)
{
    *e = exp_neg_square(x, 0.5f);
    float tail = 0.5f * (*e * erfcx_nonneg(fabsf(x) * SQRT1_2));
    return x < 0 ? tail : 1.0f - tail;
}

void qkv_k_erf(float *y, const float *x, int64_t n)
{
    /* erf(z) = sign(z) (1 - erfc(|z|)) */
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float z = x[i];
        float c = exp_neg_square(z, 1.0f) * erfcx_nonneg(fabsf(z));
        y[i] = z < 0 ? c - 1.0f : 1.0f - c;
        y[i] = z != z ? z : y[i];
    }
}

void qkv_k_gelu(float *y, const float *x, int64_t n)
{
    /* y (n) = x Phi(x), x (n) */
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float e;
        y[i] = x[i] * normal_cdf(x[i], &e);
    }
}

void qkv_k_gelu_backward(float *dx, const float *g, const float *x, int64_t n,
                         bool accumulate)
{
    /* y = x Phi(x): dx (n) (+)= g (n) (Phi(x) + x phi(x)); Phi and phi share
     * one exp, so nothing was saved by the forward */
    if (accumulate) {
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float e, cdf = normal_cdf(x[i], &e);
            dx[i] += g[i] * fmaf(x[i], INV_SQRT_2PI * e, cdf);
        }
    } else {
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float e, cdf = normal_cdf(x[i], &e);
            dx[i] = g[i] * fmaf(x[i], INV_SQRT_2PI * e, cdf);
        }
    }
}

void qkv_k_gelu_ref(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(x[i] * 0.5 * erfc(-x[i] * M_SQRT1_2));
}

void qkv_k_gelu_backward_ref(float *dx, const float *g, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        double pdf = exp(-0.5 * v * v) / sqrt(2 * M_PI);
        dx[i] = (float)(g[i] * (0.5 * erfc(-v * M_SQRT1_2) + v * pdf));
    }
}

/* ---- the other ops: libm per element, except the sigmoid family ---- */

/* x^p with PyTorch's special cases (pow_tensor_scalar), so that e.g. x^2 is
 * x*x and x^0.5 is sqrt(x), exactly as there. */
static inline float pow_scalar(float v, float p)
{
    if (p == 0.0f) return 1.0f;
    if (p == 1.0f) return v;
    if (p == 2.0f) return v * v;
    if (p == 3.0f) return v * v * v;
    if (p == 0.5f) return sqrtf(v);
    if (p == -0.5f) return 1.0f / sqrtf(v);
    if (p == -1.0f) return 1.0f / v;
    if (p == -2.0f) return 1.0f / (v * v);
    return powf(v, p);
}

/* sigmoid(x) = 1 / (1 + e^-x) with the vectorised exp (within 2 ulp of
 * expf), so that sigmoid, SiLU and GELU-tanh vectorise. */
static inline float sigmoid(float v) { return 1.0f / (1.0f + exp_any(-v)); }

/* sqrt(2/pi) and the cubic's coefficient of GELU's tanh form */
#define GELU_BETA 0.79788456080286536f
#define GELU_KAPPA 0.044715f

/* 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) */
static inline float gelu_tanh(float v)
{
    float inner = GELU_BETA * (v + GELU_KAPPA * (v * v * v));
    return v * sigmoid(2.0f * inner);
}

static inline float gelu_tanh_grad(float v)
{
    /* y = x/2 (1 + tanh(u)) = x s, s = sigmoid(2u): with 1 + tanh = 2s and
     * 1 - tanh^2 = 4 s (1 - s), dy/dx = s + x/2 4 s (1 - s) du/dx,
     * du/dx = sqrt(2/pi) (1 + 3 0.044715 x^2) */
    float x_sq = v * v;
    float inner = GELU_BETA * (v + GELU_KAPPA * (x_sq * v));
    float s = sigmoid(2.0f * inner);
    return s + (0.5f * v) * ((4.0f * s * (1.0f - s)) *
                             (GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * x_sq)));
}

static inline float silu_grad(float d, float v)
{
    /* y = x s, s = sigmoid(x): dy s (1 + x (1 - s)) */
    float s = sigmoid(v);
    return d * s * (1.0f + v * (1.0f - s));
}

static inline float softplus_grad(float d, float v, float beta, float threshold)
{
    /* y = log1p(exp(beta x)) / beta: dy z / (z + 1), z = exp(beta x) */
    if (v * beta > threshold)
        return d;
    float z = expf(v * beta);
    return d * z / (z + 1.0f);
}

/* y[i] = EXPR of v = x[i] */
#define MAP(EXPR)                                                               \
    do {                                                                        \
        _Pragma("omp parallel for if (n > PAR_MIN) schedule(static)")          \
        for (int64_t i = 0; i < n; i++) {                                       \
            float v = x[i];                                                     \
            y[i] = (EXPR);                                                      \
        }                                                                       \
    } while (0)

void qkv_k_unary(qkv_unop op, float *y, const float *x, int64_t n, float a, float b)
{
    /* y (n) = f(x) (n) */
    switch (op) {
    case QKV_UN_AFFINE:
        if (b == 0.0f)
            MAP(a * v); /* keeps -0 for neg */
        else
            MAP(a * v + b);
        break;
    case QKV_UN_EXP: MAP(expf(v)); break;
    case QKV_UN_LOG: MAP(logf(v)); break;
    case QKV_UN_SQRT: MAP(sqrtf(v)); break;
    case QKV_UN_POW: MAP(pow_scalar(v, a)); break;
    case QKV_UN_ABS: MAP(fabsf(v)); break;
    case QKV_UN_TANH: MAP(tanhf(v)); break;
    case QKV_UN_SIGMOID: MAP(sigmoid(v)); break;
    case QKV_UN_RELU: MAP(v < 0.0f ? 0.0f : v); break; /* NaN stays NaN */
    case QKV_UN_LEAKY_RELU: MAP(v > 0.0f ? v : v * a); break;
    case QKV_UN_GELU: qkv_k_gelu(y, x, n); break;
    case QKV_UN_GELU_TANH: MAP(gelu_tanh(v)); break;
    case QKV_UN_SILU: MAP(v / (1.0f + exp_any(-v))); break;
    case QKV_UN_SOFTPLUS: MAP(v * a > b ? v : log1pf(expf(v * a)) / a); break;
    }
}
#undef MAP

/* dx[i] (+)= EXPR of v = x[i], o = y[i], d = g[i] */
#define GRAD(EXPR)                                                              \
    do {                                                                        \
        if (accumulate) {                                                       \
            _Pragma("omp parallel for if (n > PAR_MIN) schedule(static)")      \
            for (int64_t i = 0; i < n; i++) {                                   \
                float v = x[i], o = y[i], d = g[i];                             \
                (void)v, (void)o;                                               \
                dx[i] += (EXPR);                                                \
            }                                                                   \
        } else {                                                                \
            _Pragma("omp parallel for if (n > PAR_MIN) schedule(static)")      \
            for (int64_t i = 0; i < n; i++) {                                   \
                float v = x[i], o = y[i], d = g[i];                             \
                (void)v, (void)o;                                               \
                dx[i] = (EXPR);                                                 \
            }                                                                   \
        }                                                                       \
    } while (0)

void qkv_k_unary_backward(qkv_unop op, float *dx, const float *g, const float *x,
                          const float *y, int64_t n, float a, float b, bool accumulate)
{
    /* dx (n) (+)= g (n) * f'(x); x (n) the input, y (n) the output */
    switch (op) {
    case QKV_UN_AFFINE: GRAD(d * a); break;          /* y = a x + b        */
    case QKV_UN_EXP: GRAD(d * o); break;             /* y = exp(x)         */
    case QKV_UN_LOG: GRAD(d / v); break;             /* y = log(x)         */
    case QKV_UN_SQRT: GRAD(d / (2.0f * o)); break;   /* y = sqrt(x)        */
    case QKV_UN_POW:                                 /* y = x^a            */
        if (a == 0.0f)
            GRAD(0.0f * d);
        else
            GRAD(d * (a * pow_scalar(v, a - 1.0f)));
        break;
    case QKV_UN_ABS:                                 /* y = |x|, sign(0) = 0 */
        GRAD(v > 0.0f ? d : v < 0.0f ? -d : 0.0f);
        break;
    case QKV_UN_TANH: GRAD(d * (1.0f - o * o)); break;      /* y = tanh(x)    */
    case QKV_UN_SIGMOID: GRAD(d * (1.0f - o) * o); break;   /* y = sigmoid(x) */
    case QKV_UN_RELU: GRAD(o <= 0.0f ? 0.0f : d); break;    /* y = max(x, 0)  */
    case QKV_UN_LEAKY_RELU: GRAD(v > 0.0f ? d : d * a); break;
    case QKV_UN_GELU: qkv_k_gelu_backward(dx, g, x, n, accumulate); break;
    case QKV_UN_GELU_TANH: GRAD(d * gelu_tanh_grad(v)); break;
    case QKV_UN_SILU: GRAD(silu_grad(d, v)); break;
    case QKV_UN_SOFTPLUS: GRAD(softplus_grad(d, v, a, b)); break;
    }
}
#undef GRAD
