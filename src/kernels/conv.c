/* conv.c - im2col and its adjoint col2im, and the direct convolution that
 * tests check them against. The GEMMs around them are in ops_conv.c. */
#include "conv.h"

#include <string.h>

/* The output positions o in [0, n) whose input coordinate o s - p + t lies
 * in [0, size): [*lo, *hi). Keeps the inner loops free of bounds tests. */
static void valid_range(int64_t n, int64_t size, int s, int p, int64_t t, int64_t *lo,
                        int64_t *hi)
{
    int64_t first = p - t; /* o s >= p - t */
    *lo = first <= 0 ? 0 : (first + s - 1) / s;
    int64_t last = size - 1 + p - t; /* o s <= size - 1 + p - t */
    *hi = last < 0 ? 0 : last / s + 1;
    if (*hi > n)
        *hi = n;
    if (*lo > *hi)
        *lo = *hi;
}

void qkv_k_im2col(float *col, int64_t ld, const float *x, int64_t C, const qkv_conv_geom *g)
{
    /* col (C kh kw, Ho Wo) with row stride ld, x (C, H, W) */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo, taps = (int64_t)g->kh * g->kw;
#pragma omp parallel for if (C * taps * P > 262144) schedule(static)
    for (int64_t c = 0; c < C; c++)
        for (int64_t t = 0; t < taps; t++) {
            int64_t i = t / g->kw, j = t % g->kw;
            float *row = col + (c * taps + t) * ld;
            const float *xc = x + c * HW;
            int64_t oh0, oh1, ow0, ow1;
            valid_range(g->Ho, g->H, g->sh, g->ph, i * g->dh, &oh0, &oh1);
            valid_range(g->Wo, g->W, g->sw, g->pw, j * g->dw, &ow0, &ow1);
            memset(row, 0, (size_t)(oh0 * g->Wo) * sizeof(float));
            for (int64_t oh = oh0; oh < oh1; oh++) {
                float *r = row + oh * g->Wo;
                const float *xr = xc + (oh * g->sh - g->ph + i * g->dh) * g->W;
                int64_t iw0 = ow0 * g->sw - g->pw + j * g->dw;
                for (int64_t ow = 0; ow < ow0; ow++)
                    r[ow] = 0;
                if (g->sw == 1 && ow1 > ow0)
                    memcpy(r + ow0, xr + iw0, (size_t)(ow1 - ow0) * sizeof(float));
                else if (g->sw != 1)
                    for (int64_t ow = ow0; ow < ow1; ow++)
                        r[ow] = xr[iw0 + (ow - ow0) * g->sw];
                for (int64_t ow = ow1; ow < g->Wo; ow++)
                    r[ow] = 0;
            }
            memset(row + oh1 * g->Wo, 0, (size_t)((g->Ho - oh1) * g->Wo) * sizeof(float));
        }
}

void qkv_k_col2im(float *dx, const float *col, int64_t ld, int64_t C, const qkv_conv_geom *g)
{
    /* col = im2col(x): dx (C, H, W) += col (C kh kw, Ho Wo; row stride ld)
     * at the pixels read. Channels are disjoint, so they run in parallel. */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo, taps = (int64_t)g->kh * g->kw;
#pragma omp parallel for if (C * taps * P > 262144) schedule(static)
    for (int64_t c = 0; c < C; c++)
        for (int64_t t = 0; t < taps; t++) {
            int64_t i = t / g->kw, j = t % g->kw;
            const float *row = col + (c * taps + t) * ld;
            float *dc = dx + c * HW;
            int64_t oh0, oh1, ow0, ow1;
            valid_range(g->Ho, g->H, g->sh, g->ph, i * g->dh, &oh0, &oh1);
            valid_range(g->Wo, g->W, g->sw, g->pw, j * g->dw, &ow0, &ow1);
            for (int64_t oh = oh0; oh < oh1; oh++) {
                const float *r = row + oh * g->Wo;
                float *dr = dc + (oh * g->sh - g->ph + i * g->dh) * g->W;
                int64_t iw0 = ow0 * g->sw - g->pw + j * g->dw;
                if (g->sw == 1)
                    for (int64_t ow = ow0; ow < ow1; ow++)
                        dr[iw0 + ow - ow0] += r[ow];
                else
                    for (int64_t ow = ow0; ow < ow1; ow++)
                        dr[iw0 + (ow - ow0) * g->sw] += r[ow];
            }
        }
}

void qkv_k_conv2d_depthwise(float *out, const float *x, const float *w, const float *bias,
                            int64_t B, int64_t C, int64_t m, const qkv_conv_geom *g)
{
    /* out (B, C m, Ho, Wo), x (B, C, H, W), w (C m, 1, kh, kw), bias (C m).
     * Each output row gathers its taps a whole row at a time. */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo, taps = (int64_t)g->kh * g->kw;
#pragma omp parallel for if (B * C * m * P * taps > 65536) schedule(static)
    for (int64_t bo = 0; bo < B * C * m; bo++) {
        int64_t oc = bo % (C * m), b = bo / (C * m);
        const float *xc = x + (b * C + oc / m) * HW, *wo = w + oc * taps;
        float *op = out + bo * P;
        for (int64_t p = 0; p < P; p++)
            op[p] = bias ? bias[oc] : 0.0f;
        for (int64_t t = 0; t < taps; t++) {
            int64_t i = t / g->kw, j = t % g->kw;
            int64_t oh0, oh1, ow0, ow1;
            valid_range(g->Ho, g->H, g->sh, g->ph, i * g->dh, &oh0, &oh1);
            valid_range(g->Wo, g->W, g->sw, g->pw, j * g->dw, &ow0, &ow1);
            for (int64_t oh = oh0; oh < oh1; oh++) {
                float *r = op + oh * g->Wo;
                int64_t base = (oh * g->sh - g->ph + i * g->dh) * g->W - g->pw + j * g->dw;
                for (int64_t ow = ow0; ow < ow1; ow++)
                    r[ow] += wo[t] * xc[base + ow * g->sw];
            }
        }
    }
}

void qkv_k_conv2d_depthwise_backward(float *dx, float *dw, float *dbias, const float *dout,
                                     const float *x, const float *w, int64_t B, int64_t C,
                                     int64_t m, const qkv_conv_geom *g)
{
    /* out[b, oc] = sum_t w[oc, t] x[b, c](tap t) + bias[oc], c = oc / m:
     *   dbias[oc] += sum g[b, oc];  dw[oc, t] += sum g[b, oc] x[b, c](tap t);
     *   dx[b, c](tap t) += w[oc, t] g[b, oc]
     * Everything channel c touches is its own, so channels run in parallel
     * and the batch loop inside them accumulates without races. */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo, taps = (int64_t)g->kh * g->kw;
#pragma omp parallel for if (B * C * m * P * taps > 65536) schedule(static)
    for (int64_t c = 0; c < C; c++)
        for (int64_t oc = c * m; oc < (c + 1) * m; oc++) {
            if (dbias) {
                double acc = 0;
                for (int64_t b = 0; b < B; b++)
                    for (int64_t p = 0; p < P; p++)
                        acc += dout[(b * C * m + oc) * P + p];
                dbias[oc] += (float)acc;
            }
            for (int64_t t = 0; t < taps && (dw || dx); t++) {
                int64_t i = t / g->kw, j = t % g->kw, oh0, oh1, ow0, ow1;
                valid_range(g->Ho, g->H, g->sh, g->ph, i * g->dh, &oh0, &oh1);
                valid_range(g->Wo, g->W, g->sw, g->pw, j * g->dw, &ow0, &ow1);
                double acc = 0;
                for (int64_t b = 0; b < B; b++) {
                    const float *gp = dout + (b * C * m + oc) * P, *xc = x + (b * C + c) * HW;
                    for (int64_t oh = oh0; oh < oh1; oh++) {
                        const float *gr = gp + oh * g->Wo;
                        int64_t base =
                            (oh * g->sh - g->ph + i * g->dh) * g->W - g->pw + j * g->dw;
                        if (dw)
                            for (int64_t ow = ow0; ow < ow1; ow++)
                                acc += (double)gr[ow] * xc[base + ow * g->sw];
                        if (dx) {
                            float *dxc = dx + (b * C + c) * HW;
                            for (int64_t ow = ow0; ow < ow1; ow++)
                                dxc[base + ow * g->sw] += w[oc * taps + t] * gr[ow];
                        }
                    }
                }
                if (dw)
                    dw[oc * taps + t] += (float)acc;
            }
        }
}

void qkv_k_conv2d_ref(float *out, const float *x, const float *w, const float *bias,
                      int64_t B, int64_t Cin, int64_t Cout, int64_t groups,
                      const qkv_conv_geom *g)
{
    /* out (B, Cout, Ho, Wo), x (B, Cin, H, W), w (Cout, Cin/groups, kh, kw),
     * bias (Cout) or NULL */
    int64_t cg = Cin / groups, og = Cout / groups;
    for (int64_t b = 0; b < B; b++)
        for (int64_t co = 0; co < Cout; co++)
            for (int64_t oh = 0; oh < g->Ho; oh++)
                for (int64_t ow = 0; ow < g->Wo; ow++) {
                    double acc = bias ? bias[co] : 0.0;
                    for (int64_t c = 0; c < cg; c++)
                        for (int i = 0; i < g->kh; i++)
                            for (int j = 0; j < g->kw; j++) {
                                int64_t ih = oh * g->sh - g->ph + (int64_t)i * g->dh;
                                int64_t iw = ow * g->sw - g->pw + (int64_t)j * g->dw;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W)
                                    continue;
                                int64_t ci = co / og * cg + c;
                                acc += (double)w[((co * cg + c) * g->kh + i) * g->kw + j] *
                                       x[((b * Cin + ci) * g->H + ih) * g->W + iw];
                            }
                    out[((b * Cout + co) * g->Ho + oh) * g->Wo + ow] = (float)acc;
                }
}
