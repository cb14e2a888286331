/* norm.c - layer norm (rows) and batch norm (channels), forward and
 * backward. Means and variances are taken in two passes over data that is
 * in cache (a row; a channel of a small batch) and summed in double. */
#include "norm.h"

#include <math.h>
#include <string.h>

/* Below this many elements in total a kernel stays on one thread. */
#define PAR_WORK 32768

/* ---- layer norm ---- */

/* y (N, C) = (x - mean) * rstd * w + b; x (N, C), w (C), b (C);
 * mean (N), rstd (N) out */
void qkv_k_layer_norm_forward(float *y, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int64_t N, int64_t C, float eps)
{
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C;
        float *yi = y + i * C;
        double s = 0, v = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < C; j++)
            s += xi[j];
        float mu = (float)(s / (double)C);
#pragma omp simd reduction(+ : v)
        for (int64_t j = 0; j < C; j++) {
            float d = xi[j] - mu;
            v += d * d;
        }
        float rs = (float)(1.0 / sqrt(v / (double)C + eps));
        mean[i] = mu;
        rstd[i] = rs;
        /* (x - mu) rs = x rs + shift: one fma per element, as PyTorch */
        float shift = -mu * rs;
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            yi[j] = fmaf(xi[j], rs, shift) * w[j] + b[j];
    }
}

/* dw and db are summed in float over this many rows, then added into the
 * block's double sums: float keeps the row loop fast, double keeps a long
 * column of rows exact. */
#define FLUSH_ROWS 16

/* One row of y = xhat * w + b, xhat = (x - mu) rs:
 *   dxhat = dy * w
 *   dx (+)= rs (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
 *   fw += dy * xhat, fb += dy   (the running parts of dw, db; or NULL) */
static void layer_norm_row_backward(float *dx, bool accumulate, float *fw, float *fb,
                                    const float *dy, const float *x, float mu, float rs,
                                    const float *w, int64_t C)
{
    /* one pass for the sums and the parts of dw, db, while the row comes
     * in from memory */
    double a = 0, b = 0;
    if (fw) {
#pragma omp simd reduction(+ : a, b)
        for (int64_t j = 0; j < C; j++) {
            float xh = (x[j] - mu) * rs, dxh = dy[j] * w[j];
            a += dxh;
            b += dxh * xh;
            fw[j] += dy[j] * xh;
            fb[j] += dy[j];
        }
    } else {
#pragma omp simd reduction(+ : a, b)
        for (int64_t j = 0; j < C; j++) {
            float xh = (x[j] - mu) * rs, dxh = dy[j] * w[j];
            a += dxh;
            b += dxh * xh;
        }
    }
    if (!dx)
        return;
    float am = (float)(a / (double)C), bm = (float)(b / (double)C);
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

/* y (N, C) = layer_norm(x (N, C)) * w (C) + b (C): dx (N, C), dw (C), db (C)
 * from dy (N, C), mean (N), rstd (N); scratch of QKV_K_LAYER_NORM_SCRATCH */
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
    /* the four sums of a block are padded apart: arrays a multiple of
     * 4 KiB apart make the CPU stall on false store-to-load conflicts */
    int64_t Cp = C + 16;
    if (params)
        memset(scratch, 0, (size_t)QKV_K_LAYER_NORM_SCRATCH(nblocks, C) * sizeof(double));
#pragma omp parallel for if (N * C > PAR_WORK) schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        /* this block's dw and db: double sums pw, pb and float parts fw, fb */
        double *pw = scratch + 3 * (int64_t)blk * Cp, *pb = pw + Cp;
        float *fw = params ? (float *)(pb + Cp) : NULL, *fb = params ? fw + Cp : NULL;
        int64_t i0 = N * blk / nblocks, i1 = N * (blk + 1) / nblocks;
        for (int64_t i = i0; i < i1; i++) {
            layer_norm_row_backward(dx ? dx + i * C : NULL, accumulate, fw, fb, dy + i * C,
                                    x + i * C, mean[i], rstd[i], w, C);
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
            sw += scratch[3 * (int64_t)blk * Cp + j];
            sb += scratch[3 * (int64_t)blk * Cp + Cp + j];
        }
        if (dw)
            dw[j] += (float)sw;
        if (db)
            db[j] += (float)sb;
    }
}

/* ---- batch norm ---- */

/* mean (C), var (C) of x (B, C, S) over B and S; var biased */
void qkv_k_batch_norm_stats(float *mean, float *var, const float *x, int64_t B, int64_t C,
                            int64_t S)
{
    double n = (double)(B * S);
#pragma omp parallel for if (B * C * S > PAR_WORK) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        double s = 0, v = 0;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + (b * C + c) * S;
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < S; k++)
                s += xb[k];
        }
        double mu = s / n;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + (b * C + c) * S;
#pragma omp simd reduction(+ : v)
            for (int64_t k = 0; k < S; k++) {
                double d = xb[k] - mu;
                v += d * d;
            }
        }
        mean[c] = (float)mu;
        var[c] = (float)(v / n);
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
