/* norm.c - layer norm (rows) and batch norm (channels), forward and
 * backward. Means and variances are taken in two passes over data that is
 * in cache (a row; a channel of a small batch); batch norm sums in double,
 * layer norm as its row primitives below say. */
#include "norm.h"

#include <math.h>
#include <string.h>

/* Below this many elements in total a kernel stays on one thread. */
#define PAR_WORK 4096

/* ---- layer norm ----
 *
 * The passes over a row are row primitives, written twice: with AVX-512
 * intrinsics (16 lanes, a masked tail, sums in float over 16 or 32 lanes of
 * at most C / 16 values each, then added as a tree) and as plain loops
 * summing in double for other machines. Rows run in parallel, one static
 * share per thread; the backward's dw and db are summed per share in a
 * fixed order (see qkv_k_layer_norm_backward). */

#ifdef __AVX512F__
#include "lanes512.h"

/* mean (x) and sum (x - mean)^2 of a row, two passes over it in L1 */
static void row_moments(float *mean, double *ss, const float *x, int64_t C)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    int64_t j = 0;
    for (; j + 32 <= C; j += 32) {
        s0 = _mm512_add_ps(s0, qkv_load16(x + j, QKV_ALL));
        s1 = _mm512_add_ps(s1, qkv_load16(x + j + 16, QKV_ALL));
    }
    for (; j < C; j += 16)
        s0 = _mm512_add_ps(s0, qkv_load16(x + j, C - j >= 16 ? QKV_ALL : qkv_lanes(C - j)));
    float mu = (float)(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / (double)C);
    __m512 vmu = _mm512_set1_ps(mu), v0 = _mm512_setzero_ps(), v1 = v0;
    for (j = 0; j + 32 <= C; j += 32) {
        __m512 d0 = _mm512_sub_ps(qkv_load16(x + j, QKV_ALL), vmu);
        __m512 d1 = _mm512_sub_ps(qkv_load16(x + j + 16, QKV_ALL), vmu);
        v0 = _mm512_fmadd_ps(d0, d0, v0);
        v1 = _mm512_fmadd_ps(d1, d1, v1);
    }
    for (; j < C; j += 16) {
        __mmask16 k = C - j >= 16 ? QKV_ALL : qkv_lanes(C - j);
        __m512 d = _mm512_maskz_sub_ps(k, qkv_load16(x + j, k), vmu);
        v0 = _mm512_fmadd_ps(d, d, v0);
    }
    *mean = mu;
    *ss = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
}

/* 16 lanes of row_affine */
static inline void affine16(float *y, const float *x, __m512 rs, __m512 shift, const float *w,
                            const float *b, __mmask16 k)
{
    __m512 xh = _mm512_fmadd_ps(qkv_load16(x, k), rs, shift);
    qkv_store16(y, k, _mm512_fmadd_ps(xh, qkv_load16(w, k), qkv_load16(b, k)));
}

/* y (C) = (x rs + shift) w + b */
static void row_affine(float *y, const float *x, float rs, float shift, const float *w,
                       const float *b, int64_t C)
{
    __m512 vrs = _mm512_set1_ps(rs), vsh = _mm512_set1_ps(shift);
    int64_t j = 0;
    for (; j + 16 <= C; j += 16)
        affine16(y + j, x + j, vrs, vsh, w + j, b + j, QKV_ALL);
    if (j < C)
        affine16(y + j, x + j, vrs, vsh, w + j, b + j, qkv_lanes(C - j));
}

/* 16 lanes of row_backward_sums */
static inline void sums16(__m512 *sa, __m512 *sb, float *fw, float *fb, const float *dy,
                          const float *x, __m512 mu, __m512 rs, const float *w, __mmask16 k)
{
    __m512 g = qkv_load16(dy, k), xh = _mm512_mul_ps(_mm512_sub_ps(qkv_load16(x, k), mu), rs);
    __m512 gw = _mm512_mul_ps(g, qkv_load16(w, k));
    *sa = _mm512_add_ps(*sa, gw);
    *sb = _mm512_fmadd_ps(gw, xh, *sb);
    if (fw) {
        qkv_store16(fw, k, _mm512_fmadd_ps(g, xh, qkv_load16(fw, k)));
        qkv_store16(fb, k, _mm512_add_ps(g, qkv_load16(fb, k)));
    }
}

/* a = sum dy w and b = sum dy w xhat of a row, xhat = (x - mu) rs; and
 * fw (C) += dy xhat, fb (C) += dy unless fw is NULL */
static void row_backward_sums(double *a, double *b, float *fw, float *fb, const float *dy,
                              const float *x, float mu, float rs, const float *w, int64_t C)
{
    __m512 vmu = _mm512_set1_ps(mu), vrs = _mm512_set1_ps(rs);
    __m512 sa = _mm512_setzero_ps(), sb = sa;
    int64_t j = 0;
    if (fw) {
        for (; j + 16 <= C; j += 16)
            sums16(&sa, &sb, fw + j, fb + j, dy + j, x + j, vmu, vrs, w + j, QKV_ALL);
    } else {
        for (; j + 16 <= C; j += 16)
            sums16(&sa, &sb, NULL, NULL, dy + j, x + j, vmu, vrs, w + j, QKV_ALL);
    }
    if (j < C)
        sums16(&sa, &sb, fw ? fw + j : NULL, fw ? fb + j : NULL, dy + j, x + j, vmu, vrs, w + j,
               qkv_lanes(C - j));
    *a = _mm512_reduce_add_ps(sa);
    *b = _mm512_reduce_add_ps(sb);
}

/* 16 lanes of row_backward_dx */
static inline void dx16(float *dx, bool accumulate, const float *dy, const float *x,
                        const float *w, __m512 mu, __m512 rs, __m512 rsbm, __m512 am,
                        __mmask16 k)
{
    /* rs (dy w - am - (x - mu) rs bm), in that order: folding rs into the
     * terms would leave rounding errors of rs dy w where they cancel, and
     * rs is large for rows of almost equal values */
    __m512 t = _mm512_sub_ps(_mm512_mul_ps(qkv_load16(dy, k), qkv_load16(w, k)), am);
    __m512 v = _mm512_mul_ps(rs, _mm512_fnmadd_ps(_mm512_sub_ps(qkv_load16(x, k), mu), rsbm, t));
    qkv_store16(dx, k, accumulate ? _mm512_add_ps(v, qkv_load16(dx, k)) : v);
}

/* dx (C) (+)= rs (dy w - am - xhat bm), xhat = (x - mu) rs */
static void row_backward_dx(float *dx, bool accumulate, const float *dy, const float *x,
                            float mu, float rs, const float *w, float am, float bm, int64_t C)
{
    __m512 vmu = _mm512_set1_ps(mu), vrs = _mm512_set1_ps(rs);
    __m512 rsbm = _mm512_set1_ps(rs * bm), vam = _mm512_set1_ps(am);
    int64_t j = 0;
    if (accumulate) {
        for (; j + 16 <= C; j += 16)
            dx16(dx + j, true, dy + j, x + j, w + j, vmu, vrs, rsbm, vam, QKV_ALL);
    } else {
        for (; j + 16 <= C; j += 16)
            dx16(dx + j, false, dy + j, x + j, w + j, vmu, vrs, rsbm, vam, QKV_ALL);
    }
    if (j < C)
        dx16(dx + j, accumulate, dy + j, x + j, w + j, vmu, vrs, rsbm, vam, qkv_lanes(C - j));
}

#else /* portable row primitives */

static void row_moments(float *mean, double *ss, const float *x, int64_t C)
{
    double s = 0, v = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < C; j++)
        s += x[j];
    float mu = (float)(s / (double)C);
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < C; j++) {
        float d = x[j] - mu;
        v += d * d;
    }
    *mean = mu;
    *ss = v;
}

static void row_affine(float *y, const float *x, float rs, float shift, const float *w,
                       const float *b, int64_t C)
{
#pragma omp simd
    for (int64_t j = 0; j < C; j++)
        y[j] = fmaf(x[j], rs, shift) * w[j] + b[j];
}

static void row_backward_sums(double *a, double *b, float *fw, float *fb, const float *dy,
                              const float *x, float mu, float rs, const float *w, int64_t C)
{
    double sa = 0, sb = 0;
    if (fw) {
#pragma omp simd reduction(+ : sa, sb)
        for (int64_t j = 0; j < C; j++) {
            float xh = (x[j] - mu) * rs, dxh = dy[j] * w[j];
            sa += dxh;
            sb += dxh * xh;
            fw[j] += dy[j] * xh;
            fb[j] += dy[j];
        }
    } else {
#pragma omp simd reduction(+ : sa, sb)
        for (int64_t j = 0; j < C; j++) {
            float xh = (x[j] - mu) * rs, dxh = dy[j] * w[j];
            sa += dxh;
            sb += dxh * xh;
        }
    }
    *a = sa;
    *b = sb;
}

static void row_backward_dx(float *dx, bool accumulate, const float *dy, const float *x,
                            float mu, float rs, const float *w, float am, float bm, int64_t C)
{
    if (accumulate) {
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dx[j] += rs * (dy[j] * w[j] - am - (x[j] - mu) * rs * bm);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dx[j] = rs * (dy[j] * w[j] - am - (x[j] - mu) * rs * bm);
    }
}

#endif

/* y (N, C) = (x - mean) * rstd * w + b; x (N, C), w (C), b (C);
 * mean (N), rstd (N) out */
void qkv_k_layer_norm_forward(float *y, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int64_t N, int64_t C, float eps)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        float mu;
        double ss;
        row_moments(&mu, &ss, x + i * C, C);
        float rs = (float)(1.0 / sqrt(ss / (double)C + eps));
        mean[i] = mu;
        rstd[i] = rs;
        /* (x - mu) rs = x rs + shift: one fma per element, as PyTorch */
        row_affine(y + i * C, x + i * C, rs, -mu * rs, w, b, C);
    }
}

/* dw and db are summed in float over this many rows, then added into the
 * block's double sums: float keeps the row loop fast, double keeps a long
 * column of rows exact. */
#define FLUSH_ROWS 16

/* y (N, C) = layer_norm(x (N, C)) * w (C) + b (C): dx (N, C), dw (C), db (C)
 * from dy (N, C), mean (N), rstd (N); scratch of QKV_K_LAYER_NORM_SCRATCH.
 * Per row, with xhat = (x - mu) rs and dxhat = dy w:
 *   dx (+)= rs (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
 *   dw += dy xhat, db += dy */
void qkv_k_layer_norm_backward(float *dx, float *dw, float *db, double *scratch, int nblocks,
                               const float *dy, const float *x, const float *mean,
                               const float *rstd, const float *w, int64_t N, int64_t C,
                               bool accumulate)
{
    if (N <= 0 || C <= 0)
        return;
    if (nblocks < 1)
        nblocks = 1;
    if (nblocks > N)
        nblocks = (int)N;
    bool params = dw || db;
    /* a block's sums as laid out in QKV_K_LAYER_NORM_SCRATCH */
    int64_t Cd = QKV_K_LN_DOUBLES(C), Cf = QKV_K_LN_FLOATS(C), stride = 2 * Cd + Cf;
    if (params)
        memset(scratch, 0, (size_t)QKV_K_LAYER_NORM_SCRATCH(nblocks, C) * sizeof(double));
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        /* this block's dw and db: double sums pw, pb and float parts fw, fb */
        double *pw = scratch + blk * stride, *pb = pw + Cd;
        float *fw = params ? (float *)(pb + Cd) : NULL, *fb = params ? fw + Cf : NULL;
        int64_t i0 = N * blk / nblocks, i1 = N * (blk + 1) / nblocks;
        for (int64_t i = i0; i < i1; i++) {
            /* one pass for the sums and the parts of dw, db while the row
             * comes in from memory, one for dx from L1 */
            double a, b;
            row_backward_sums(&a, &b, fw, fb, dy + i * C, x + i * C, mean[i], rstd[i], w, C);
            if (dx)
                row_backward_dx(dx + i * C, accumulate, dy + i * C, x + i * C, mean[i], rstd[i],
                                w, (float)(a / (double)C), (float)(b / (double)C), C);
            if (params && ((i - i0) % FLUSH_ROWS == FLUSH_ROWS - 1 || i == i1 - 1)) {
#pragma omp simd
                for (int64_t j = 0; j < C; j++) {
                    pw[j] += fw[j];
                    pb[j] += fb[j];
                    fw[j] = fb[j] = 0.0f;
                }
            }
        }
    }
    if (!params)
        return;
    for (int64_t j = 0; j < C; j++) {
        double sw = 0, sb = 0;
        for (int blk = 0; blk < nblocks; blk++) {
            sw += scratch[blk * stride + j];
            sb += scratch[blk * stride + Cd + j];
        }
        if (dw)
            dw[j] += (float)sw;
        if (db)
            db[j] += (float)sb;
    }
}

/* ---- batch norm ---- */

/* mean (G, C), m2 (G, C) of x (B, C, S) in G groups of B / G rows */
void qkv_k_batch_norm_moments(double *mean, double *m2, const float *x, int64_t B, int64_t C,
                              int64_t S, int64_t G)
{
    int64_t rows = B / G;
    double n = (double)(rows * S);
#pragma omp parallel for if (B * C * S > PAR_WORK) schedule(static)
    for (int64_t gc = 0; gc < G * C; gc++) {
        int64_t g = gc / C, c = gc % C;
        double s = 0, v = 0;
        for (int64_t b = g * rows; b < (g + 1) * rows; b++) {
            const float *xb = x + (b * C + c) * S;
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < S; k++)
                s += xb[k];
        }
        double mu = s / n;
        for (int64_t b = g * rows; b < (g + 1) * rows; b++) {
            const float *xb = x + (b * C + c) * S;
#pragma omp simd reduction(+ : v)
            for (int64_t k = 0; k < S; k++) {
                double d = xb[k] - mu;
                v += d * d;
            }
        }
        mean[gc] = mu;
        m2[gc] = v;
    }
}

void qkv_k_moments_merge(double *mean_a, double *m2_a, int64_t na, const double *mean_b,
                         const double *m2_b, int64_t nb, int64_t C)
{
    /* (na, mean_a, m2_a) and (nb, mean_b, m2_b) -> moments of all na + nb */
    double n = (double)(na + nb), fb = (double)nb / n, fab = (double)na * (double)nb / n;
    for (int64_t c = 0; c < C; c++) {
        double d = mean_b[c] - mean_a[c];
        mean_a[c] += d * fb;
        m2_a[c] += m2_b[c] + d * d * fab;
    }
}

void qkv_k_batch_norm_update(float *rm, float *rv, const double *mean, const double *m2,
                             int64_t n, int64_t C, double momentum)
{
    /* rm, rv (C) from the moments (C) of n values per channel */
    double unbiased = 1.0 / (double)(n - 1);
    for (int64_t c = 0; c < C; c++) {
        if (rm)
            rm[c] = (float)((1.0 - momentum) * rm[c] + momentum * mean[c]);
        if (rv)
            rv[c] = (float)((1.0 - momentum) * rv[c] + momentum * m2[c] * unbiased);
    }
}

/* y (B, C, S) = x (B, C, S) * scale (C) + shift (C) */
void qkv_k_channel_affine(float *y, const float *x, const float *scale, const float *shift,
                          int64_t B, int64_t C, int64_t S)
{
#pragma omp parallel for if (B * C * S > PAR_WORK) schedule(static)
    for (int64_t bc = 0; bc < B * C; bc++) {
        float a = scale[bc % C], t = shift[bc % C];
        const float *xr = x + bc * S;
        float *yr = y + bc * S;
#pragma omp simd
        for (int64_t k = 0; k < S; k++)
            yr[k] = fmaf(xr[k], a, t);
    }
}

/* y = (x - mean) rstd w + b, x (B, C, S): dx (B, C, S), dw (C), db (C) from
 * dy (B, C, S), mean (C), rstd (C), w (C) or NULL */
void qkv_k_batch_norm_backward(float *dx, float *dw, float *db, const float *dy,
                               const float *x, const float *mean, const float *rstd,
                               const float *w, int64_t B, int64_t C, int64_t S,
                               bool batch_stats)
{
    double n = (double)(B * S);
#pragma omp parallel for if (B * C * S > PAR_WORK) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        float mu = mean[c], rs = rstd[c];
        double sg = 0, sgx = 0;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + (b * C + c) * S, *gb = dy + (b * C + c) * S;
#pragma omp simd reduction(+ : sg, sgx)
            for (int64_t k = 0; k < S; k++) {
                sg += gb[k];
                sgx += gb[k] * ((xb[k] - mu) * rs);
            }
        }
        if (dw)
            dw[c] += (float)sgx;
        if (db)
            db[c] += (float)sg;
        if (!dx)
            continue;
        float scale = (w ? w[c] : 1.0f) * rs;
        /* with batch statistics the mean and variance depend on x too */
        float gm = batch_stats ? (float)(sg / n) : 0.0f;
        float gxm = batch_stats ? (float)(sgx / n) : 0.0f;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + (b * C + c) * S, *gb = dy + (b * C + c) * S;
            float *dxb = dx + (b * C + c) * S;
#pragma omp simd
            for (int64_t k = 0; k < S; k++)
                dxb[k] += scale * (gb[k] - gm - (xb[k] - mu) * rs * gxm);
        }
    }
}

void qkv_k_batch_norm_grad_sums(double *sg, double *sgx, const float *dy, const float *x,
                                const float *mean, const float *rstd, int64_t B, int64_t C,
                                int64_t S)
{
#pragma omp parallel for if (B * C * S > PAR_WORK) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        float mu = mean[c], rs = rstd[c];
        double g = 0, gx = 0;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + (b * C + c) * S, *gb = dy + (b * C + c) * S;
#pragma omp simd reduction(+ : g, gx)
            for (int64_t k = 0; k < S; k++) {
                g += gb[k];
                gx += gb[k] * ((xb[k] - mu) * rs);
            }
        }
        sg[c] = g, sgx[c] = gx;
    }
}

void qkv_k_batch_norm_backward_dx(float *dx, const float *dy, const float *x, const float *mean,
                                  const float *rstd, const float *w, const double *gm,
                                  const double *gxm, int64_t B, int64_t C, int64_t S)
{
#pragma omp parallel for if (B * C * S > PAR_WORK) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        float mu = mean[c], rs = rstd[c], scale = (w ? w[c] : 1.0f) * rs;
        float m = (float)gm[c], mx = (float)gxm[c];
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + (b * C + c) * S, *gb = dy + (b * C + c) * S;
            float *dxb = dx + (b * C + c) * S;
#pragma omp simd
            for (int64_t k = 0; k < S; k++)
                dxb[k] += scale * (gb[k] - m - (xb[k] - mu) * rs * mx);
        }
    }
}
