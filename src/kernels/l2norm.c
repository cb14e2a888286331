/* l2norm.c - L2 normalisation along one axis, forward and backward (the
 * shapes are in l2norm.h). */
#include "l2norm.h"

#include <math.h>

void qkv_k_l2_normalize_forward(float *y, float *norm, unsigned char *clamped, const float *x,
                                int64_t R, int64_t C, int64_t S, float eps)
{
    /* y (R, C, S), norm (R, S), clamped (R, S) <- x (R, C, S) */
#pragma omp parallel for if (R * C * S > 262144) schedule(static)
    for (int64_t r = 0; r < R; r++)
        for (int64_t s = 0; s < S; s++) {
            const float *v = x + r * C * S + s;
            double ss = 0.0;
            for (int64_t c = 0; c < C; c++)
                ss += (double)v[c * S] * v[c * S];
            double n = sqrt(ss);
            float d = n > (double)eps ? (float)n : eps;
            norm[r * S + s] = d;
            clamped[r * S + s] = !(n > (double)eps);
            float inv = 1.0f / d;
            float *o = y + r * C * S + s;
            for (int64_t c = 0; c < C; c++)
                o[c * S] = v[c * S] * inv;
        }
}

void qkv_k_l2_normalize_backward(float *dx, const float *dy, const float *y, const float *norm,
                                 const unsigned char *clamped, int64_t R, int64_t C, int64_t S)
{
    /* dx (R, C, S) += d(x / max(||x||, eps)) from dy, y (R, C, S), norm (R, S):
     * y = x / n with n = ||x|| gives dx = (dy - y (y . dy)) / n */
#pragma omp parallel for if (R * C * S > 262144) schedule(static)
    for (int64_t r = 0; r < R; r++)
        for (int64_t s = 0; s < S; s++) {
            int64_t at = r * C * S + s;
            const float *g = dy + at, *v = y + at;
            float *o = dx + at;
            float inv = 1.0f / norm[r * S + s];
            if (clamped[r * S + s]) { /* y = x / eps: eps is a constant */
                for (int64_t c = 0; c < C; c++)
                    o[c * S] += g[c * S] * inv;
                continue;
            }
            double dot = 0.0;
            for (int64_t c = 0; c < C; c++)
                dot += (double)v[c * S] * g[c * S];
            float d = (float)dot;
            for (int64_t c = 0; c < C; c++)
                o[c * S] += (g[c * S] - v[c * S] * d) * inv;
        }
}
