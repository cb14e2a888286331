/* conv.c - im2col and its adjoint col2im, and the direct convolution that
 * tests check them against. The GEMMs around them are in ops_conv.c. */
#include "conv.h"

#include <stdbool.h>
#include <string.h>

#ifdef __AVX512F__
#include "lanes512.h"
#endif

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

/* What one tap (i, j) reads, the same for every channel and image: output
 * rows [oh0, oh1) and columns [ow0, ow1) fall inside the image; output
 * pixel (oh, ow) there reads input pixel (oh sh + ih, ow sw + iw). */
typedef struct {
    int64_t oh0, oh1, ow0, ow1, ih, iw;
} tap_span;

/* Taps whose spans are computed once per call on the stack; a larger
 * kernel computes each tap's span as it goes. */
#define TAPS_MAX 64

static tap_span span_of(int64_t t, const qkv_conv_geom *g)
{
    tap_span s;
    int64_t i = t / g->kw, j = t % g->kw;
    valid_range(g->Ho, g->H, g->sh, g->ph, i * g->dh, &s.oh0, &s.oh1);
    valid_range(g->Wo, g->W, g->sw, g->pw, j * g->dw, &s.ow0, &s.ow1);
    s.ih = i * g->dh - g->ph;
    s.iw = j * g->dw - g->pw;
    return s;
}

/* Fills the spans of every tap if they fit on the stack; else returns NULL
 * and the loops call span_of per tap. */
static const tap_span *spans_of(tap_span *buf, const qkv_conv_geom *g)
{
    int64_t taps = (int64_t)g->kh * g->kw;
    if (taps > TAPS_MAX)
        return NULL;
    for (int64_t t = 0; t < taps; t++)
        buf[t] = span_of(t, g);
    return buf;
}

/* Whether a tap's whole row of col is the input plane shifted: stride 1
 * and an output as wide as the input ("same" padding across), so that
 * output pixel p = oh Wo + ow reads input pixel p + ih W + iw wherever that
 * pixel is inside the image. */
static bool shifted_plane(const qkv_conv_geom *g)
{
    return g->sh == 1 && g->sw == 1 && g->Wo == g->W;
}

/* Below this many floats a copy or fill is done inline (16 lanes at a time
 * with AVX-512), not by a call: the runs here are a row of a small image. */
#define SHORT_RUN 256

#ifdef __AVX512F__
static inline void zero_floats(float *p, int64_t n)
{
    if (n >= SHORT_RUN) {
        memset(p, 0, (size_t)n * sizeof(float));
        return;
    }
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)
        _mm512_storeu_ps(p + k, _mm512_setzero_ps());
    if (k < n)
        _mm512_mask_storeu_ps(p + k, qkv_lanes(n - k), _mm512_setzero_ps());
}

static inline void copy_floats(float *restrict d, const float *restrict s, int64_t n)
{
    if (n >= SHORT_RUN) {
        memcpy(d, s, (size_t)n * sizeof(float));
        return;
    }
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)
        _mm512_storeu_ps(d + k, _mm512_loadu_ps(s + k));
    if (k < n) {
        __mmask16 m = qkv_lanes(n - k);
        _mm512_mask_storeu_ps(d + k, m, _mm512_maskz_loadu_ps(m, s + k));
    }
}

/* d[k] = s[2 k], k < n: two loads of 16 and the even lanes of both */
static inline void copy_floats_stride2(float *restrict d, const float *restrict s, int64_t n)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    for (int64_t k = 0; k < n; k += 16) {
        int64_t left = n - k < 16 ? n - k : 16, reads = 2 * left - 1; /* s[2k .. 2k + reads) */
        __mmask16 lo = reads >= 16 ? QKV_ALL : qkv_lanes(reads);
        __mmask16 hi = reads > 16 ? (reads - 16 >= 16 ? QKV_ALL : qkv_lanes(reads - 16)) : 0;
        __m512 a = _mm512_maskz_loadu_ps(lo, s + 2 * k);
        __m512 b = _mm512_maskz_loadu_ps(hi, s + 2 * k + 16);
        __m512 v = _mm512_permutex2var_ps(a, even, b);
        _mm512_mask_storeu_ps(d + k, left == 16 ? QKV_ALL : qkv_lanes(left), v);
    }
}
#else
static inline void zero_floats(float *p, int64_t n)
{
    if (n > 0)
        memset(p, 0, (size_t)n * sizeof(float));
}

static inline void copy_floats(float *restrict d, const float *restrict s, int64_t n)
{
    if (n > 0)
        memcpy(d, s, (size_t)n * sizeof(float));
}

static inline void copy_floats_stride2(float *restrict d, const float *restrict s, int64_t n)
{
    for (int64_t k = 0; k < n; k++)
        d[k] = s[2 * k];
}
#endif

/* One tap's row of col (Ho Wo) from one channel's plane xc (H, W). */
static void im2col_row(float *row, const float *xc, const tap_span *s, bool plane,
                       const qkv_conv_geom *g)
{
    int64_t P = g->Ho * g->Wo, Wo = g->Wo;
    if (plane) {
        /* one copy of the valid rows, then the columns that fell off the
         * image's sides (they read a neighbouring row's pixel) zeroed */
        int64_t shift = s->ih * g->W + s->iw, HW = g->H * g->W;
        int64_t p0 = s->oh0 * Wo, p1 = s->oh1 * Wo;
        int64_t lo = p0 > -shift ? p0 : -shift, hi = p1 < HW - shift ? p1 : HW - shift;
        lo = lo < p1 ? lo : p1;
        hi = hi > lo ? hi : lo; /* p0 <= lo <= hi <= p1 */
        zero_floats(row, lo);
        copy_floats(row + lo, xc + lo + shift, hi - lo);
        zero_floats(row + hi, P - hi);
        if (s->ow0 > 0 || s->ow1 < Wo)
            for (int64_t oh = s->oh0; oh < s->oh1; oh++) {
                float *r = row + oh * Wo;
                zero_floats(r, s->ow0);
                zero_floats(r + s->ow1, Wo - s->ow1);
            }
        return;
    }
    zero_floats(row, s->oh0 * Wo);
    for (int64_t oh = s->oh0; oh < s->oh1; oh++) {
        float *r = row + oh * Wo;
        const float *xr = xc + (oh * g->sh + s->ih) * g->W + s->ow0 * g->sw + s->iw;
        int64_t len = s->ow1 - s->ow0;
        zero_floats(r, s->ow0);
        if (g->sw == 1)
            copy_floats(r + s->ow0, xr, len);
        else if (g->sw == 2)
            copy_floats_stride2(r + s->ow0, xr, len);
        else
            for (int64_t k = 0; k < len; k++)
                r[s->ow0 + k] = xr[k * g->sw];
        zero_floats(r + s->ow1, Wo - s->ow1);
    }
    zero_floats(row + s->oh1 * Wo, P - s->oh1 * Wo);
}

/* col (C kh kw, m Ho Wo) with row stride ld, image n's columns at n P;
 * image n is x + n image_stride, its channels cstride floats apart */
static void im2col(float *col, int64_t ld, const float *x, int64_t image_stride, int64_t m,
                   int64_t C, int64_t cstride, const qkv_conv_geom *g)
{
    int64_t P = g->Ho * g->Wo, taps = (int64_t)g->kh * g->kw;
    tap_span buf[TAPS_MAX];
    const tap_span *spans = spans_of(buf, g);
    bool plane = shifted_plane(g);
#pragma omp parallel for collapse(2) if (m * C * taps * P > 262144) schedule(static)
    for (int64_t n = 0; n < m; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t t = 0; t < taps; t++) {
                tap_span one = spans ? spans[t] : span_of(t, g);
                im2col_row(col + (c * taps + t) * ld + n * P,
                           x + n * image_stride + c * cstride, &one, plane, g);
            }
}

void qkv_k_im2col_images(float *col, int64_t ld, const float *x, int64_t image_stride,
                         int64_t m, int64_t C, const qkv_conv_geom *g)
{
    im2col(col, ld, x, image_stride, m, C, g->H * g->W, g);
}

void qkv_k_im2col_planes(float *col, int64_t ld, const float *x, int64_t plane, int64_t C,
                         const qkv_conv_geom *g)
{
    im2col(col, ld, x, 0, 1, C, plane, g);
}

void qkv_k_im2col(float *col, int64_t ld, const float *x, int64_t C, const qkv_conv_geom *g)
{
    qkv_k_im2col_images(col, ld, x, 0, 1, C, g);
}

void qkv_k_col2im_images(float *dx, int64_t image_stride, const float *col, int64_t ld,
                         int64_t m, int64_t C, const qkv_conv_geom *g)
{
    /* col = im2col_images(x): image n's dx (C, H, W) at dx + n image_stride
     * += every column entry at the pixel it was read from. Channels of
     * each image are disjoint, so they run in parallel. */
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo, taps = (int64_t)g->kh * g->kw;
    tap_span buf[TAPS_MAX];
    const tap_span *spans = spans_of(buf, g);
    bool plane = shifted_plane(g);
#pragma omp parallel for collapse(2) if (m * C * taps * P > 262144) schedule(static)
    for (int64_t n = 0; n < m; n++)
        for (int64_t c = 0; c < C; c++) {
            float *dc = dx + n * image_stride + c * HW;
            for (int64_t t = 0; t < taps; t++) {
                tap_span s = spans ? spans[t] : span_of(t, g);
                const float *row = col + (c * taps + t) * ld + n * P;
                if (plane && s.ow0 == 0 && s.ow1 == g->Wo) {
                    /* every column valid: the valid rows are one run of pixels */
                    float *d = dc + s.ih * g->W + s.iw;
                    for (int64_t p = s.oh0 * g->Wo; p < s.oh1 * g->Wo; p++)
                        d[p] += row[p];
                    continue;
                }
                for (int64_t oh = s.oh0; oh < s.oh1; oh++) {
                    const float *r = row + oh * g->Wo + s.ow0;
                    float *dr = dc + (oh * g->sh + s.ih) * g->W + s.ow0 * g->sw + s.iw;
                    int64_t len = s.ow1 - s.ow0;
                    if (g->sw == 1)
                        for (int64_t k = 0; k < len; k++)
                            dr[k] += r[k];
                    else
                        for (int64_t k = 0; k < len; k++)
                            dr[k * g->sw] += r[k];
                }
            }
        }
}

void qkv_k_col2im(float *dx, const float *col, int64_t ld, int64_t C, const qkv_conv_geom *g)
{
    qkv_k_col2im_images(dx, 0, col, ld, 1, C, g);
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
