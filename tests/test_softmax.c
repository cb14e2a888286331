/* test_softmax.c - softmax and log-softmax: the fast exp against libm, the
 * row kernels (forward and backward) against scalar references within an
 * error bound per element, gradient checks (central differences of float32
 * ops, loss in double) and PyTorch parity, forward and backward, each at
 * its stated atol and rtol. */
#include "test.h"

#include "kernels/softmax.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* distance in units in the last place, for finite floats of either sign */
static int64_t ulp_distance(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    int64_t la = ia < 0 ? (int64_t)INT32_MIN - ia : ia;
    int64_t lb = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return la > lb ? la - lb : lb - la;
}

TEST(expf_within_2ulp_of_libm)
{
    /* every 251st float bit pattern: 17 million values spread over the
     * whole range, subnormal results, overflow and underflow included */
    int64_t worst = 0;
    float worst_x = 0;
    for (uint64_t u = 0; u <= 0xffffffffu; u += 251) {
        uint32_t bits = (uint32_t)u;
        float x;
        memcpy(&x, &bits, sizeof x);
        if (isnan(x))
            continue;
        float got = qkv_k_expf(x), want = expf(x);
        int64_t d = isinf(want) || isinf(got) ? (got == want ? 0 : INT64_MAX)
                                              : ulp_distance(got, want);
        if (d > worst) {
            worst = d;
            worst_x = x;
        }
    }
    CHECK(worst <= 2, "qkv_k_expf(%a) = %a, expf = %a: %lld ulp", worst_x, qkv_k_expf(worst_x),
          expf(worst_x), (long long)worst);
    /* denser where softmax lives: every 61st float in [-1, 0] */
    float one = 1.0f;
    uint32_t hi;
    memcpy(&hi, &one, sizeof hi);
    worst = 0;
    for (uint32_t b = 0; b <= hi; b += 61) {
        float x;
        memcpy(&x, &b, sizeof x);
        int64_t d = ulp_distance(qkv_k_expf(-x), expf(-x));
        worst = d > worst ? d : worst;
    }
    CHECK(worst <= 2, "[-1, 0]: %lld ulp", (long long)worst);
    CHECK(qkv_k_expf(0.0f) == 1.0f, "exp(0) = %a", qkv_k_expf(0.0f));
    CHECK(qkv_k_expf(-INFINITY) == 0.0f, "exp(-inf) = %a", qkv_k_expf(-INFINITY));
    CHECK(isinf(qkv_k_expf(INFINITY)), "exp(inf) = %a", qkv_k_expf(INFINITY));
    CHECK(isnan(qkv_k_expf(NAN)), "exp(nan) = %a", qkv_k_expf(NAN));
    CHECK(isinf(qkv_k_expf(nextafterf(QKV_EXPF_MAX, INFINITY))) &&
              !isinf(qkv_k_expf(QKV_EXPF_MAX)),
          "overflow threshold");
}

TEST(softmax_kernels_match_reference)
{
    /* row lengths around the vector width, and one long row */
    const int64_t Cs[] = {1, 3, 15, 16, 17, 64, 1000};
    qkv_rng r;
    qkv_rng_seed(&r, 11);
    for (size_t k = 0; k < sizeof Cs / sizeof Cs[0]; k++) {
        int64_t N = 5, C = Cs[k], n = N * C;
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *ref = malloc(n * sizeof *ref);
        for (int64_t i = 0; i < n; i++)
            x[i] = (float)(qkv_rng_normal(&r) * 8);
        /* softmax: relative error; float rounding of x - max costs up to
         * |x - max| 2^-24 of it (so in every float softmax, PyTorch's too),
         * the exp 2 ulp and the sum and scale a few more */
        double worst = 0;
        qkv_k_softmax_forward(y, x, N, C);
        qkv_k_softmax_forward_ref(ref, x, N, C);
        for (int64_t i = 0; i < N; i++) {
            float m = -INFINITY;
            for (int64_t j = 0; j < C; j++)
                m = fmaxf(m, x[i * C + j]);
            for (int64_t j = 0; j < C; j++) {
                int64_t e = i * C + j;
                double tol = 1e-6 + (m - x[e]) * 0x1p-24;
                worst = fmax(worst, fabs(y[e] - ref[e]) / fmax(ref[e], 1e-30) / tol);
            }
        }
        CHECK(worst <= 1, "softmax C=%lld: error %.3g times the bound", (long long)C, worst);
        /* log_softmax: x - max - log(sum), each rounded once or twice */
        qkv_k_log_softmax_forward(y, x, N, C);
        qkv_k_log_softmax_forward_ref(ref, x, N, C);
        test_note("log_softmax C=%lld", (long long)C);
        CHECK_CLOSE_N(y, ref, n, 5e-6, 5e-7);
        free(x);
        free(y);
        free(ref);
    }
}

TEST(softmax_backward_kernels_match_reference)
{
    /* the vector kernels against the formulas in double, for row lengths
     * around the vector width, writing a fresh dx (filled with NaN first,
     * so an element left unwritten shows) and adding to one. Bounds: the
     * float row sum costs ~1e-7 of sum |terms|, the exp 2 ulp. */
    const int64_t Cs[] = {1, 3, 15, 16, 17, 64, 100, 1000};
    qkv_rng r;
    qkv_rng_seed(&r, 12);
    for (size_t k = 0; k < sizeof Cs / sizeof Cs[0]; k++) {
        int64_t N = 3, C = Cs[k], n = N * C;
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *ly = malloc(n * sizeof *ly);
        float *dy = malloc(n * sizeof *dy), *dx = malloc(n * sizeof *dx);
        for (int64_t i = 0; i < n; i++) {
            x[i] = (float)(qkv_rng_normal(&r) * 3);
            dy[i] = (float)qkv_rng_normal(&r);
        }
        qkv_k_softmax_forward_ref(y, x, N, C);
        qkv_k_log_softmax_forward_ref(ly, x, N, C);
        double worst = 0, worst_log = 0;
        for (int acc = 0; acc < 2; acc++) {
            float base = acc ? 0.5f : 0.0f;
            for (int64_t i = 0; i < n; i++)
                dx[i] = acc ? base : NAN;
            qkv_k_softmax_backward(dx, y, dy, N, C, acc);
            for (int64_t i = 0; i < N; i++) {
                double d = 0, mag = 0;
                for (int64_t j = 0; j < C; j++) {
                    d += (double)dy[i * C + j] * y[i * C + j];
                    mag += fabs((double)dy[i * C + j] * y[i * C + j]);
                }
                for (int64_t j = 0; j < C; j++) {
                    int64_t e = i * C + j;
                    double ref = base + y[e] * (dy[e] - d);
                    double tol = 1e-6 * (fabs(ref) + y[e] * (fabs(dy[e]) + mag)) + 1e-30;
                    double err = fabs(dx[e] - ref) / tol;
                    worst = fmax(worst, isnan(err) ? INFINITY : err); /* fmax drops NaN */
                }
            }
            for (int64_t i = 0; i < n; i++)
                dx[i] = acc ? base : NAN;
            qkv_k_log_softmax_backward(dx, ly, dy, N, C, acc);
            for (int64_t i = 0; i < N; i++) {
                double s = 0, mag = 0;
                for (int64_t j = 0; j < C; j++) {
                    s += dy[i * C + j];
                    mag += fabs(dy[i * C + j]);
                }
                for (int64_t j = 0; j < C; j++) {
                    int64_t e = i * C + j;
                    double p = exp((double)ly[e]), ref = base + dy[e] - p * s;
                    double tol = 1e-6 * (fabs(ref) + fabs(dy[e]) + p * mag) + 1e-30;
                    double err = fabs(dx[e] - ref) / tol;
                    worst_log = fmax(worst_log, isnan(err) ? INFINITY : err);
                }
            }
        }
        CHECK(worst <= 1, "softmax backward C=%lld: error %.3g times the bound", (long long)C,
              worst);
        CHECK(worst_log <= 1, "log_softmax backward C=%lld: error %.3g times the bound",
              (long long)C, worst_log);
        free(x);
        free(y);
        free(ly);
        free(dy);
        free(dx);
    }
}

static qkv_tensor *f_softmax(qkv_ctx *c, qkv_tensor **t, void *u) { return qkv_softmax(c, t[0]); }
static qkv_tensor *f_log_softmax(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_log_softmax(c, t[0]);
}
static qkv_tensor *f_softmax_t(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_softmax(c, qkv_transpose(c, t[0], 0, 2));
}
static qkv_tensor *f_log_softmax_t(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_log_softmax(c, qkv_transpose(c, t[0], 0, 2));
}

TEST(gradcheck_softmax)
{
    qkv_rng r;
    qkv_rng_seed(&r, 12);
    gc_input in[1] = {gc_rand(&r, 3, SHAPE(2, 3, 7), -3, 3, true)};
    CHECK_GRAD(f_softmax, 1, in, NULL, 5e-5, 1e-3);
    CHECK_GRAD(f_log_softmax, 1, in, NULL, 5e-4, 1e-3);
    /* through a transposed view: rows strided in memory */
    CHECK_GRAD(f_softmax_t, 1, in, NULL, 5e-5, 1e-3);
    CHECK_GRAD(f_log_softmax_t, 1, in, NULL, 2e-5, 1e-3);
    gc_free(1, in);
}

TEST(softmax_rows_of_neg_inf)
{
    /* row 0 all -inf (NaN, as PyTorch), row 1 partly -inf (exact zeros
     * there, the rest a softmax of the finite entries) */
    qkv_ctx *ctx = qkv_ctx_new();
    float ni = -INFINITY;
    qkv_tensor *x = qkv_from_data(ctx, 2, SHAPE(2, 4),
                                  (float[]){ni, ni, ni, ni, 0.5f, ni, -1.0f, ni});
    qkv_tensor *y = qkv_softmax(ctx, x), *ly = qkv_log_softmax(ctx, x);
    REQUIRE(y && ly, "%s", qkv_error());
    for (int j = 0; j < 4; j++)
        CHECK(isnan(y->data[j]) && isnan(ly->data[j]), "all -inf row, entry %d: %g %g", j,
              y->data[j], ly->data[j]);
    double e = exp(-1.5), p0 = 1 / (1 + e);
    CHECK(y->data[5] == 0.0f && y->data[7] == 0.0f, "masked entries %g %g", y->data[5],
          y->data[7]);
    CHECK_SCALAR(y->data[4], p0, 1e-8, 5e-7);
    CHECK_SCALAR(y->data[6], 1 - p0, 2e-9, 5e-7);
    CHECK(isinf(ly->data[5]) && ly->data[5] < 0, "log_softmax masked entry %g", ly->data[5]);
    CHECK_SCALAR(ly->data[4], log(p0), 2e-7, 5e-7);
    qkv_ctx_free(ctx);
}

TEST(softmax_rejects_scalars)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *s = qkv_full(ctx, 0, NULL, 1.0f);
    CHECK(!qkv_softmax(ctx, s) && strstr(qkv_error(), "softmax"), "%s", qkv_error());
    CHECK(!qkv_log_softmax(ctx, NULL) && qkv_error()[0], "NULL input accepted");
    qkv_ctx_free(ctx);
}

/* ---- parity with PyTorch ---- */

typedef qkv_tensor *(*unary_fn)(qkv_ctx *, qkv_tensor *);

/* fixture x -> fn(x, or x transposed) compared with out and grad_x */
static void parity_rows(const char *name, unary_fn fn, bool transposed, double atol, double rtol)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *in = transposed ? qkv_transpose(ctx, x, 0, 1) : x;
    qkv_tensor *out = fn(ctx, in), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), atol, rtol);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK)
        CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), atol, rtol);
    else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_softmax)
{
    parity_rows("softmax_lastdim", qkv_softmax, false, 1e-7, 1e-6);
    parity_rows("softmax_transposed", qkv_softmax, true, 1e-7, 1e-6);
    parity_rows("softmax_neg_inf", qkv_softmax, false, 1e-7, 1e-6);
    parity_rows("softmax_large", qkv_softmax, false, 1e-7, 1e-6);
}

TEST(parity_log_softmax)
{
    parity_rows("log_softmax_lastdim", qkv_log_softmax, false, 2e-6, 1e-6);
    parity_rows("log_softmax_transposed", qkv_log_softmax, true, 2e-6, 1e-6);
    parity_rows("log_softmax_large", qkv_log_softmax, false, 2e-6, 1e-6);
}
