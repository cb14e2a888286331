/* attention.c - fused scaled dot-product attention (FlashAttention-2 on a
 * CPU) and the masked softmax of the unfused path.
 *
 * Forward, for each (batch, head) and each tile of BR queries: walk the keys
 * in tiles of BC, computing the BR x BC scores with a small GEMM, and keep
 * per query a running maximum m, a running sum l of exp(s - m) and an
 * unnormalised output acc. When a new tile raises the maximum from m to m',
 * everything gathered so far is worth exp(m - m') of what it was, so l and
 * acc are rescaled by that factor before the tile is added (the "online
 * softmax"). At the end out = acc / l, and m and log l are saved: N (Dv + 2)
 * floats per head reach memory instead of the N M weights. (m and log l
 * stay apart because their float sum would round a score of -1e6, d2l's
 * fill, to a multiple of 1/16.)
 *
 * Backward, for each (batch, head) and each key tile, over the query tiles:
 * the weights are recomputed exactly as P = exp(s - m - log l),
 * and with Delta_i = sum_d dout_id out_id (which equals sum_j P_ij dP_ij)
 *   dV += P^T dO,  dP = dO V^T,  dS = P (dP - Delta),
 *   dQ += scale dS K,  dK += scale dS^T Q.
 * Each (batch, head) is one task, so that dK, dV and dQ have one writer.
 *
 * Dropout is regenerated from a hash of the element's index (attention.h),
 * so the kept/dropped pattern costs no memory and is the same in the
 * backward and in the unfused path. Tile products go through the built-in
 * GEMM, which packs its operands per thread and runs on the calling thread
 * inside a parallel region. */
#include "attention.h"

#include "gemm.h"
#include "softmax.h"

#include <math.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define BR 64  /* queries per tile */
#define BC 128 /* keys per tile */

/* Below this many score elements (B H N M) attention stays on one thread. */
#define PAR_WORK 65536

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

static inline int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int64_t qkv_k_attn_valid_len(const qkv_k_attn_mask *mk, int64_t N, int64_t M, int64_t b,
                             int64_t i)
{
    if (!mk->valid_lens)
        return M;
    return mk->valid_ndim == 2 ? mk->valid_lens[b * N + i] : mk->valid_lens[b];
}

/* s (n): scores of query i against keys j0 .. j0+n of (b, h) */
void qkv_k_attn_mask_row(const qkv_k_attn_mask *mk, int64_t N, int64_t M, int64_t b, int64_t h,
                         int64_t i, int64_t j0, int64_t n, float *s)
{
    if (mk->add) {
        const float *a = mk->add + b * mk->add_sb + h * mk->add_sh + i * M + j0;
#pragma omp simd
        for (int64_t c = 0; c < n; c++)
            s[c] += a[c];
    }
    if (mk->kpm) {
        const float *a = mk->kpm + b * M + j0;
#pragma omp simd
        for (int64_t c = 0; c < n; c++)
            s[c] += a[c];
    }
    if (mk->causal)
        for (int64_t c = max64(i + 1 - j0, 0); c < n; c++)
            s[c] = -INFINITY;
    if (mk->valid_lens) {
        int64_t len = qkv_k_attn_valid_len(mk, N, M, b, i);
        for (int64_t c = max64(len - j0, 0); c < n; c++)
            s[c] = QKV_ATTN_VALID_FILL;
    }
}

/* keep (n) of row (bh, i), keys j0 .. j0+n */
void qkv_k_attn_dropout_row(float *keep, uint64_t seed, float p, int64_t bh, int64_t i,
                            int64_t j0, int64_t n, int64_t N, int64_t M)
{
    uint64_t thr = qkv_k_attn_threshold(p), base = ((uint64_t)bh * N + i) * M + j0;
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp simd
    for (int64_t c = 0; c < n; c++)
        keep[c] = (qkv_k_attn_hash(seed, base + c) >> 32) >= thr ? scale : 0.0f;
}

/* Whether the key padding mask removes all of keys j0 .. j0+n of batch b,
 * so that the tile can be skipped. */
static bool kpm_tile_masked(const qkv_k_attn_mask *mk, int64_t M, int64_t b, int64_t j0,
                            int64_t n)
{
    if (!mk->kpm)
        return false;
    const float *a = mk->kpm + b * M + j0;
    for (int64_t c = 0; c < n; c++)
        if (a[c] != -INFINITY)
            return false;
    return true;
}

/* The first key from which every key is past the valid length of each of
 * queries i0 .. i0+br of batch b, or M. Keys past a length score -1e6, and
 * exp(-1e6 - max) is exactly 0 beside any real score, so tiles from there
 * on add nothing, unless a row has length <= 0 (all keys at -1e6, uniform). */
static int64_t valid_key_end(const qkv_k_attn_mask *mk, int64_t N, int64_t M, int64_t b,
                             int64_t i0, int64_t br)
{
    if (!mk->valid_lens)
        return M;
    int64_t lo = INT64_MAX, hi = 0;
    for (int64_t r = 0; r < br; r++) {
        int64_t len = qkv_k_attn_valid_len(mk, N, M, b, i0 + r);
        lo = min64(lo, len);
        hi = max64(hi, len);
    }
    return lo > 0 ? min64(hi, M) : M;
}

static float row_max(const float *x, int64_t n)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

/* ---- forward ---- */

typedef struct {
    float *s, *acc, *keep, *m;
    double *l;
} fwd_work;

static size_t fwd_floats(const qkv_k_attn *a)
{
    return round16(BR * BC) + round16((size_t)BR * a->Dv) + round16(BC) + round16(BR) +
           round16(2 * BR);
}

size_t qkv_k_attn_forward_work(const qkv_k_attn *a, int threads)
{
    return fwd_floats(a) * (size_t)threads;
}

static fwd_work fwd_split(const qkv_k_attn *a, float *w)
{
    fwd_work f;
    f.s = w;
    f.acc = f.s + round16(BR * BC);
    f.keep = f.acc + round16((size_t)BR * a->Dv);
    f.m = f.keep + round16(BC);
    f.l = (double *)(f.m + round16(BR));
    return f;
}

/* queries i0 .. i0+br of head bh: out (br, Dv), lse (br) the row maxima
 * and lse + stats_stride (br) the logs of the sums */
static void forward_tile(const qkv_k_attn *a, int64_t bh, int64_t i0, float *out, float *lse,
                         int64_t stats_stride, fwd_work w)
{
    const qkv_k_attn_mask *mk = &a->mask;
    int64_t H = a->H, N = a->N, M = a->M, D = a->D, Dv = a->Dv;
    int64_t b = bh / H, h = bh % H, br = min64(BR, N - i0);
    const float *q = a->q + b * a->q_sb + h * a->q_sh + i0 * a->q_sn;
    const float *k = a->k + b * a->k_sb + h * a->k_sh;
    const float *v = a->v + b * a->v_sb + h * a->v_sh;
    for (int64_t r = 0; r < br; r++) {
        w.m[r] = -INFINITY;
        w.l[r] = 0;
    }
    memset(w.acc, 0, (size_t)(br * Dv) * sizeof(float));
    /* causal: query i sees keys j <= i, so no key past the tile's last query */
    int64_t jend = mk->causal ? min64(M, i0 + br) : M;
    jend = min64(jend, valid_key_end(mk, N, M, b, i0, br));
    for (int64_t j0 = 0; j0 < jend; j0 += BC) {
        int64_t bc = min64(BC, jend - j0);
        if (kpm_tile_masked(mk, M, b, j0, bc))
            continue;
        qkv_k_gemm_builtin(false, true, br, bc, D, a->scale, q, a->q_sn, k + j0 * a->k_sn,
                           a->k_sn, 0.0f, w.s, BC);
        for (int64_t r = 0; r < br; r++) {
            float *s = w.s + r * BC;
            qkv_k_attn_mask_row(mk, N, M, b, h, i0 + r, j0, bc, s);
            float mnew = fmaxf(w.m[r], row_max(s, bc));
            if (mnew == -INFINITY) { /* nothing unmasked yet in this row */
                memset(s, 0, (size_t)bc * sizeof(float));
                continue;
            }
            float alpha = qkv_k_expf(w.m[r] - mnew); /* 0 when m was -inf */
            double sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int64_t c = 0; c < bc; c++) {
                float e = qkv_k_expf(s[c] - mnew);
                s[c] = e;
                sum += e;
            }
            w.l[r] = w.l[r] * alpha + sum;
            w.m[r] = mnew;
            if (a->dropout_p > 0) {
                qkv_k_attn_dropout_row(w.keep, a->seed, a->dropout_p, bh, i0 + r, j0, bc, N, M);
#pragma omp simd
                for (int64_t c = 0; c < bc; c++)
                    s[c] *= w.keep[c];
            }
            if (alpha != 1.0f) {
                float *o = w.acc + r * Dv;
#pragma omp simd
                for (int64_t d = 0; d < Dv; d++)
                    o[d] *= alpha;
            }
        }
        qkv_k_gemm_builtin(false, false, br, Dv, bc, 1.0f, w.s, BC, v + j0 * a->v_sn, a->v_sn,
                           1.0f, w.acc, Dv);
    }
    for (int64_t r = 0; r < br; r++) {
        float *o = out + r * Dv;
        const float *acc = w.acc + r * Dv;
        if (w.l[r] == 0) { /* every key masked: NaN, as softmax of all -inf */
            for (int64_t d = 0; d < Dv; d++)
                o[d] = NAN;
            lse[r] = lse[r + stats_stride] = NAN;
            continue;
        }
        float inv = (float)(1.0 / w.l[r]);
#pragma omp simd
        for (int64_t d = 0; d < Dv; d++)
            o[d] = acc[d] * inv;
        lse[r] = w.m[r];
        lse[r + stats_stride] = (float)log(w.l[r]);
    }
}

void qkv_k_attn_forward(const qkv_k_attn *a, float *out, float *lse, float *work, int threads)
{
    int64_t BH = a->B * a->H, nt = (a->N + BR - 1) / BR;
    size_t per = fwd_floats(a);
    double work_size = (double)BH * a->N * a->M;
#pragma omp parallel for schedule(dynamic) num_threads(threads) \
    if (threads > 1 && work_size > PAR_WORK)
    for (int64_t t = 0; t < BH * nt; t++) {
        int64_t bh = t / nt, i0 = (t % nt) * BR;
        fwd_work w = fwd_split(a, work + per * (size_t)thread_id());
        forward_tile(a, bh, i0, out + (bh * a->N + i0) * a->Dv, lse + bh * a->N + i0,
                     BH * a->N, w);
    }
}

/* ---- backward ---- */

static size_t bwd_floats(const qkv_k_attn *a)
{
    return 3 * round16(BR * BC) + round16(BC) + round16((size_t)a->N);
}

size_t qkv_k_attn_backward_work(const qkv_k_attn *a, int threads)
{
    return bwd_floats(a) * (size_t)threads;
}

/* One (batch, head): its slices of dq, dk, dv have no other writer. */
static void backward_head(const qkv_k_attn *a, int64_t bh, const float *out, const float *lse,
                          const float *dout, float *dq, float *dk, float *dv, float *work)
{
    const qkv_k_attn_mask *mk = &a->mask;
    int64_t H = a->H, N = a->N, M = a->M, D = a->D, Dv = a->Dv;
    int64_t b = bh / H, h = bh % H;
    const float *q = a->q + b * a->q_sb + h * a->q_sh;
    const float *k = a->k + b * a->k_sb + h * a->k_sh;
    const float *v = a->v + b * a->v_sb + h * a->v_sh;
    float *P = work, *dP = P + round16(BR * BC), *Z = dP + round16(BR * BC);
    float *keep = Z + round16(BR * BC), *delta = keep + round16(BC);
    bool drop = a->dropout_p > 0;
    const float *logl = lse + a->B * H * N + bh * N;
    out += bh * N * Dv;
    dout += bh * N * Dv;
    lse += bh * N;
    /* Delta_i = sum_j P_ij dP_ij = dout_i . out_i */
    for (int64_t i = 0; i < N; i++) {
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < Dv; d++)
            s += dout[i * Dv + d] * out[i * Dv + d];
        delta[i] = (float)s;
    }
    for (int64_t j0 = 0; j0 < M; j0 += BC) {
        int64_t bc = min64(BC, M - j0);
        if (kpm_tile_masked(mk, M, b, j0, bc))
            continue;
        const float *kj = k + j0 * a->k_sn, *vj = v + j0 * a->v_sn;
        /* causal: only queries i >= j0 see this tile */
        int64_t istart = mk->causal ? (j0 / BR) * BR : 0;
        for (int64_t i0 = istart; i0 < N; i0 += BR) {
            int64_t br = min64(BR, N - i0);
            if (j0 >= valid_key_end(mk, N, M, b, i0, br))
                continue;
            const float *qi = q + i0 * a->q_sn, *doi = dout + i0 * Dv;
            qkv_k_gemm_builtin(false, true, br, bc, D, a->scale, qi, a->q_sn, kj, a->k_sn, 0.0f,
                               P, BC);
            for (int64_t r = 0; r < br; r++) {
                float *p = P + r * BC;
                qkv_k_attn_mask_row(mk, N, M, b, h, i0 + r, j0, bc, p);
                float m = lse[i0 + r], ll = logl[i0 + r];
#pragma omp simd
                for (int64_t c = 0; c < bc; c++)
                    p[c] = qkv_k_expf((p[c] - m) - ll);
                if (drop) {
                    float *z = Z + r * BC, *pd = dP + r * BC;
                    qkv_k_attn_dropout_row(z, a->seed, a->dropout_p, bh, i0 + r, j0, bc, N, M);
#pragma omp simd
                    for (int64_t c = 0; c < bc; c++)
                        pd[c] = p[c] * z[c];
                }
            }
            /* out = (P o Z) V: dV (bc, Dv) += (P o Z)^T dO */
            if (dv)
                qkv_k_gemm_builtin(true, false, bc, Dv, br, 1.0f, drop ? dP : P, BC, doi, Dv,
                                   1.0f, dv + (bh * M + j0) * Dv, Dv);
            if (!dq && !dk)
                continue;
            /* dP (br, bc) = dO V^T, then through dropout and softmax:
             * dS = P (dP Z - Delta), nothing where a valid length replaced s */
            qkv_k_gemm_builtin(false, true, br, bc, Dv, 1.0f, doi, Dv, vj, a->v_sn, 0.0f, dP,
                               BC);
            for (int64_t r = 0; r < br; r++) {
                float *p = P + r * BC, *g = dP + r * BC, *z = Z + r * BC;
                float dl = delta[i0 + r];
                if (drop) {
#pragma omp simd
                    for (int64_t c = 0; c < bc; c++)
                        p[c] = p[c] * (g[c] * z[c] - dl);
                } else {
#pragma omp simd
                    for (int64_t c = 0; c < bc; c++)
                        p[c] = p[c] * (g[c] - dl);
                }
                if (mk->valid_lens) {
                    int64_t len = qkv_k_attn_valid_len(mk, N, M, b, i0 + r);
                    for (int64_t c = max64(len - j0, 0); c < bc; c++)
                        p[c] = 0.0f;
                }
            }
            /* s = scale q k^T: dQ += scale dS K, dK += scale dS^T Q */
            if (dq)
                qkv_k_gemm_builtin(false, false, br, D, bc, a->scale, P, BC, kj, a->k_sn, 1.0f,
                                   dq + (bh * N + i0) * D, D);
            if (dk)
                qkv_k_gemm_builtin(true, false, bc, D, br, a->scale, P, BC, qi, a->q_sn, 1.0f,
                                   dk + (bh * M + j0) * D, D);
        }
    }
}

void qkv_k_attn_backward(const qkv_k_attn *a, const float *out, const float *lse,
                         const float *dout, float *dq, float *dk, float *dv, float *work,
                         int threads)
{
    int64_t BH = a->B * a->H;
    size_t per = bwd_floats(a);
    double work_size = (double)BH * a->N * a->M;
#pragma omp parallel for schedule(dynamic) num_threads(threads) \
    if (threads > 1 && work_size > PAR_WORK)
    for (int64_t bh = 0; bh < BH; bh++)
        backward_head(a, bh, out, lse, dout, dq, dk, dv, work + per * (size_t)thread_id());
}

/* ---- masked softmax (the unfused path) ---- */

void qkv_k_masked_softmax_forward(float *y, const float *x, const qkv_k_attn_mask *mk,
                                  int64_t B, int64_t H, int64_t N, int64_t M)
{
    int64_t rows = B * H * N;
#pragma omp parallel for schedule(static) if (rows * M > PAR_WORK)
    for (int64_t row = 0; row < rows; row++) {
        int64_t i = row % N, bh = row / N;
        float *yi = y + row * M;
        memcpy(yi, x + row * M, (size_t)M * sizeof(float));
        qkv_k_attn_mask_row(mk, N, M, bh / H, bh % H, i, 0, M, yi);
        /* a row of -inf has max -inf and gives NaN, as PyTorch */
        float m = row_max(yi, M);
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < M; j++) {
            float e = qkv_k_expf(yi[j] - m);
            yi[j] = e;
            s += e;
        }
        float inv = (float)(1.0 / s);
#pragma omp simd
        for (int64_t j = 0; j < M; j++)
            yi[j] *= inv;
    }
}

void qkv_k_masked_softmax_backward(float *dx, const float *y, const float *dy,
                                   const qkv_k_attn_mask *mk, int64_t B, int64_t H, int64_t N,
                                   int64_t M)
{
    int64_t rows = B * H * N;
#pragma omp parallel for schedule(static) if (rows * M > PAR_WORK)
    for (int64_t row = 0; row < rows; row++) {
        const float *yi = y + row * M, *gi = dy + row * M;
        float *di = dx + row * M;
        double dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < M; j++)
            dot += gi[j] * yi[j];
        float d = (float)dot;
        /* keys past a valid length had their score replaced: no gradient */
        int64_t end = min64(M, max64(0, qkv_k_attn_valid_len(mk, N, M, row / N / H, row % N)));
#pragma omp simd
        for (int64_t j = 0; j < end; j++)
            di[j] += yi[j] * (gi[j] - d);
    }
}
