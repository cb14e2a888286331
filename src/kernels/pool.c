/* pool.c - max, average and adaptive average pooling over planes. Planes
 * are independent, so the plane loop is the parallel one, backward too. */
#include "pool.h"

#include <math.h>
#include <stdbool.h>

/* A window's extent along one axis, clamped to the image: [*lo, *hi). */
static void window(int64_t o, int s, int p, int k, int64_t size, int64_t *lo, int64_t *hi)
{
    int64_t start = o * s - p, end = start + k;
    *lo = start < 0 ? 0 : start;
    *hi = end > size ? size : end;
}

/* The output columns o in [0, n) whose tap o s - p + t lies in [0, size):
 * [*lo, *hi). */
static void tap_range(int64_t n, int64_t size, int s, int p, int64_t t, int64_t *lo,
                      int64_t *hi)
{
    int64_t first = p - t, last = size - 1 + p - t;
    *lo = first <= 0 ? 0 : (first + s - 1) / s;
    *hi = last < 0 ? 0 : last / s + 1;
    if (*hi > n)
        *hi = n;
    if (*lo > *hi)
        *lo = *hi;
}

void qkv_k_max_pool2d(float *out, int64_t *arg, const float *x, int64_t N,
                      const qkv_pool_geom *g)
{
    /* out, arg (N, Ho, Wo), x (N, H, W). A whole output row is updated tap
     * by tap, in the window's row-major order (so the first maximum wins
     * as in PyTorch): the columns are independent, so the compare-and-keep
     * becomes selects rather than branches that random data mispredicts. */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo;
#pragma omp parallel for if (N * P * g->kh * g->kw > 65536) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xp = x + n * HW;
        for (int64_t oh = 0; oh < g->Ho; oh++) {
            float *best = out + n * P + oh * g->Wo;
            int64_t *at = arg + n * P + oh * g->Wo;
            int64_t h0, h1;
            window(oh, g->sh, g->ph, g->kh, g->H, &h0, &h1);
            for (int64_t ow = 0; ow < g->Wo; ow++) {
                int64_t w0 = ow * g->sw - g->pw;
                best[ow] = -INFINITY;
                at[ow] = h0 * g->W + (w0 < 0 ? 0 : w0);
            }
            for (int64_t ih = h0; ih < h1; ih++)
                for (int j = 0; j < g->kw; j++) {
                    int64_t lo, hi;
                    tap_range(g->Wo, g->W, g->sw, g->pw, j, &lo, &hi);
                    int64_t base = ih * g->W + j - g->pw; /* + ow sw: the tap's index */
                    for (int64_t ow = lo; ow < hi; ow++) {
                        float v = xp[base + ow * g->sw];
                        bool take = (v > best[ow]) | (v != v); /* v != v: NaN wins */
                        best[ow] = take ? v : best[ow];
                        at[ow] = take ? base + ow * g->sw : at[ow];
                    }
                }
        }
    }
}

void qkv_k_max_pool2d_backward(float *dx, const float *dout, const int64_t *arg, int64_t N,
                               const qkv_pool_geom *g)
{
    /* out = x[arg]: dx[arg] += dout. Windows overlap within a plane, so the
     * plane is the unit of parallel work. */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo;
#pragma omp parallel for if (N * P > 65536) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t p = 0; p < P; p++)
            dx[n * HW + arg[n * P + p]] += dout[n * P + p];
}

/* PyTorch's divisor with count_include_pad: the window clipped to the
 * padded image, before it is clipped to the image itself. */
static int64_t avg_divisor(int64_t oh, int64_t ow, const qkv_pool_geom *g)
{
    int64_t h0 = oh * g->sh - g->ph, w0 = ow * g->sw - g->pw;
    int64_t h1 = h0 + g->kh, w1 = w0 + g->kw;
    if (h1 > g->H + g->ph)
        h1 = g->H + g->ph;
    if (w1 > g->W + g->pw)
        w1 = g->W + g->pw;
    return (h1 - h0) * (w1 - w0);
}

void qkv_k_avg_pool2d(float *out, const float *x, int64_t N, const qkv_pool_geom *g)
{
    /* out (N, Ho, Wo), x (N, H, W) */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo;
#pragma omp parallel for if (N * P * g->kh * g->kw > 65536) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xp = x + n * HW;
        for (int64_t oh = 0; oh < g->Ho; oh++) {
            int64_t h0, h1;
            window(oh, g->sh, g->ph, g->kh, g->H, &h0, &h1);
            for (int64_t ow = 0; ow < g->Wo; ow++) {
                int64_t w0, w1;
                window(ow, g->sw, g->pw, g->kw, g->W, &w0, &w1);
                double acc = 0;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++)
                        acc += xp[ih * g->W + iw];
                out[n * P + oh * g->Wo + ow] = (float)(acc / (double)avg_divisor(oh, ow, g));
            }
        }
    }
}

void qkv_k_avg_pool2d_backward(float *dx, const float *dout, int64_t N,
                               const qkv_pool_geom *g)
{
    /* out = sum(window) / d: dx[window] += dout / d */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo;
#pragma omp parallel for if (N * P * g->kh * g->kw > 65536) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *dp = dx + n * HW;
        for (int64_t oh = 0; oh < g->Ho; oh++) {
            int64_t h0, h1;
            window(oh, g->sh, g->ph, g->kh, g->H, &h0, &h1);
            for (int64_t ow = 0; ow < g->Wo; ow++) {
                int64_t w0, w1;
                window(ow, g->sw, g->pw, g->kw, g->W, &w0, &w1);
                float v = dout[n * P + oh * g->Wo + ow] / (float)avg_divisor(oh, ow, g);
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++)
                        dp[ih * g->W + iw] += v;
            }
        }
    }
}

/* Bin i of n over size: [floor(i size / n), ceil((i + 1) size / n)). */
static void bin(int64_t i, int64_t n, int64_t size, int64_t *lo, int64_t *hi)
{
    *lo = i * size / n;
    *hi = ((i + 1) * size + n - 1) / n;
}

void qkv_k_adaptive_avg_pool2d(float *out, const float *x, int64_t N, int64_t H, int64_t W,
                               int64_t Ho, int64_t Wo)
{
    /* out (N, Ho, Wo), x (N, H, W) */
#pragma omp parallel for if (N * (H + Ho) * (W + Wo) > 65536) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xp = x + n * H * W;
        for (int64_t oh = 0; oh < Ho; oh++) {
            int64_t h0, h1;
            bin(oh, Ho, H, &h0, &h1);
            for (int64_t ow = 0; ow < Wo; ow++) {
                int64_t w0, w1;
                bin(ow, Wo, W, &w0, &w1);
                double acc = 0;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++)
                        acc += xp[ih * W + iw];
                out[(n * Ho + oh) * Wo + ow] = (float)(acc / (double)((h1 - h0) * (w1 - w0)));
            }
        }
    }
}

void qkv_k_adaptive_avg_pool2d_backward(float *dx, const float *dout, int64_t N, int64_t H,
                                        int64_t W, int64_t Ho, int64_t Wo)
{
    /* out = mean(bin): dx[bin] += dout / |bin| */
#pragma omp parallel for if (N * (H + Ho) * (W + Wo) > 65536) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *dp = dx + n * H * W;
        for (int64_t oh = 0; oh < Ho; oh++) {
            int64_t h0, h1;
            bin(oh, Ho, H, &h0, &h1);
            for (int64_t ow = 0; ow < Wo; ow++) {
                int64_t w0, w1;
                bin(ow, Wo, W, &w0, &w1);
                float v = dout[(n * Ho + oh) * Wo + ow] / (float)((h1 - h0) * (w1 - w0));
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++)
                        dp[ih * W + iw] += v;
            }
        }
    }
}
