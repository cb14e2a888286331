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
#include "kernels.h"
#include "softmax.h"

#include <math.h>
#ifdef __AVX512F__
#include "lanes512.h"
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

/* The tile products: the linked BLAS when there is one (single-threaded
 * inside the parallel region), else the built-in GEMM. */
#ifdef QKV_OPENBLAS
#define TILE_GEMM qkv_k_gemm
#else
#define TILE_GEMM qkv_k_gemm_builtin
#endif

#define BR 64  /* queries per tile */
#define BC 128 /* keys per tile */

/* Below this many score elements (B H N M) attention stays on one thread;
 * the short-row path, with more work per score, splits from SHORT_PAR_WORK. */
#define PAR_WORK 65536
#define SHORT_PAR_WORK 4096

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

/* rows of the outputs: out/dout (o_), dq, dk, dv */
#define O_ROW(a, b, h, i) ((b) * (a)->o_sb + (h) * (a)->o_sh + (i) * (a)->o_sn)
#define DQ_ROW(a, b, h, i) ((b) * (a)->dq_sb + (h) * (a)->dq_sh + (i) * (a)->dq_sn)
#define DK_ROW(a, b, h, j) ((b) * (a)->dk_sb + (h) * (a)->dk_sh + (j) * (a)->dk_sn)
#define DV_ROW(a, b, h, j) ((b) * (a)->dv_sb + (h) * (a)->dv_sh + (j) * (a)->dv_sn)

void qkv_k_attn_contiguous_outputs(qkv_k_attn *a)
{
    a->o_sn = a->Dv, a->o_sh = a->N * a->Dv, a->o_sb = a->H * a->N * a->Dv;
    a->dq_sn = a->D, a->dq_sh = a->N * a->D, a->dq_sb = a->H * a->N * a->D;
    a->dk_sn = a->D, a->dk_sh = a->M * a->D, a->dk_sb = a->H * a->M * a->D;
    a->dv_sn = a->Dv, a->dv_sh = a->M * a->Dv, a->dv_sb = a->H * a->M * a->Dv;
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

static bool short_rows(const qkv_k_attn *a) { return a->M <= QKV_ATTN_SHORT_M; }

/* the short-row path's per-thread floats: K^T and V^T (D, 64), (Dv, 64),
 * and four rows of 64 (a multiple of 16: each thread's block stays
 * 64-byte aligned, as the aligned vector loads need) */
static size_t short_floats(const qkv_k_attn *a)
{
    return (size_t)QKV_ATTN_SHORT_M * ((size_t)a->D + (size_t)a->Dv + 4);
}

static size_t block_floats(const qkv_k_attn *a); /* the query-block path's */

static size_t fwd_floats(const qkv_k_attn *a)
{
    if (short_rows(a))
        return round16(short_floats(a) > block_floats(a) ? short_floats(a) : block_floats(a));
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

/* s[c] = exp(s[c] - m) for c < n, m the row maximum (so the argument is
 * <= 0, or NaN); returns their sum. Sixteen lanes at a time where AVX-512
 * is (the compiler leaves the plain loop scalar: a float-to-double sum
 * and the integer exponent work defeat it), each lane's sum in float. */
static double exp_row(float *s, int64_t n, float m)
{
#ifdef __AVX512F__
    __m512 vm = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
    for (int64_t c = 0; c < n; c += 16) {
        __mmask16 k = n - c >= 16 ? QKV_ALL : qkv_lanes(n - c);
        __m512 e = exp16_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + c), vm));
        qkv_store16(s + c, k, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
    }
    return (double)_mm512_reduce_add_ps(sum);
#else
    double sum = 0;
    for (int64_t c = 0; c < n; c++) {
        float e = qkv_k_expf(s[c] - m);
        s[c] = e;
        sum += e;
    }
    return sum;
#endif
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
        TILE_GEMM(false, true, br, bc, D, a->scale, q, a->q_sn, k + j0 * a->k_sn,
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
            w.l[r] = w.l[r] * alpha + exp_row(s, bc, mnew);
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
        TILE_GEMM(false, false, br, Dv, bc, 1.0f, w.s, BC, v + j0 * a->v_sn, a->v_sn,
                           1.0f, w.acc, Dv);
    }
    for (int64_t r = 0; r < br; r++) {
        float *o = out + r * a->o_sn;
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

/* ---- the short-row path (M <= QKV_ATTN_SHORT_M) ----
 *
 * With few keys (the book's 10-token sentences, ViT's 50 patches) the tiles
 * above are mostly padding and bookkeeping. Here one task takes a whole
 * (batch, head): K and V are transposed once into (D, 64) and (Dv, 64)
 * blocks, zero past M, so that a query's row of scores is D vector FMAs
 * over the keys, and the softmax runs on full vectors of 16. Keys past M
 * are -inf and weigh exactly 0. The arithmetic is the tiled path's with
 * one tile: the same masks, exp, statistics and dropout hash. */

#define SM QKV_ATTN_SHORT_M

typedef struct {
    float *kt, *vt, *s, *e, *keep, *g; /* (D, SM), (Dv, SM), then rows of SM */
} short_work;

static short_work short_split(const qkv_k_attn *a, float *w)
{
    short_work r;
    r.kt = w;
    r.vt = r.kt + (size_t)a->D * SM;
    r.s = r.vt + (size_t)a->Dv * SM;
    r.e = r.s + SM;
    r.keep = r.e + SM;
    r.g = r.keep + SM;
    return r;
}

/* dst (d, SM) = src (M, d) with row stride sn, transposed; columns M to the
 * next multiple of 16 are 0 (the rest is never read) */
static void transpose_rows(float *dst, const float *src, int64_t sn, int64_t M, int64_t d)
{
    int64_t mp = (M + 15) / 16 * 16;
    for (int64_t c = 0; c < d; c++)
        for (int64_t j = M; j < mp; j++)
            dst[c * SM + j] = 0.0f;
    for (int64_t j = 0; j < M; j++) {
        const float *r = src + j * sn;
        for (int64_t c = 0; c < d; c++)
            dst[c * SM + j] = r[c];
    }
}

static bool any_mask(const qkv_k_attn_mask *mk)
{
    return mk->add || mk->kpm || mk->causal || mk->valid_lens;
}

#ifdef __AVX512F__
/* out[j] = sum_d x[d] xt[d][j] for j < mp (a multiple of 16, at most 64):
 * a row against the transposed block, the row in up to 4 registers */
static void short_dots(const float *x, const float *xt, int64_t D, int64_t mp, float *out)
{
    int64_t nv = mp / 16;
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    for (int64_t d = 0; d < D; d++) {
        __m512 b = _mm512_set1_ps(x[d]);
        const float *r = xt + d * SM;
        c0 = _mm512_fmadd_ps(b, _mm512_load_ps(r), c0);
        if (nv > 1)
            c1 = _mm512_fmadd_ps(b, _mm512_load_ps(r + 16), c1);
        if (nv > 2)
            c2 = _mm512_fmadd_ps(b, _mm512_load_ps(r + 32), c2);
        if (nv > 3)
            c3 = _mm512_fmadd_ps(b, _mm512_load_ps(r + 48), c3);
    }
    __m512 c[4] = {c0, c1, c2, c3};
    for (int64_t v = 0; v < nv; v++)
        _mm512_store_ps(out + 16 * v, c[v]);
}

/* s (SM) = scale q . k_j over the keys, masked; -inf past M; returns the
 * row maximum */
static float short_scores(const qkv_k_attn *a, int64_t b, int64_t h, int64_t i, const float *q,
                          const float *kt, int64_t mp, float *s)
{
    int64_t M = a->M;
    short_dots(q, kt, a->D, mp, s);
    __m512 sc = _mm512_set1_ps(a->scale), ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t v = 0; 16 * v < mp; v++) {
        int64_t left = M - 16 * v;
        __mmask16 k = left >= 16 ? QKV_ALL : qkv_lanes(left);
        _mm512_store_ps(s + 16 * v, _mm512_mask_mul_ps(ninf, k, _mm512_load_ps(s + 16 * v), sc));
    }
    if (any_mask(&a->mask))
        qkv_k_attn_mask_row(&a->mask, a->N, M, b, h, i, 0, M, s);
    __m512 m = ninf;
    for (int64_t v = 0; 16 * v < mp; v++) /* s second: a NaN is skipped, as row_max */
        m = _mm512_max_ps(_mm512_load_ps(s + 16 * v), m);
    return _mm512_reduce_max_ps(m);
}

/* s[j] = exp((s[j] - m) - ll) over the mp (a multiple of 16) lanes; returns
 * their sum. The argument is <= 0 (or NaN): m is the row maximum and ll
 * the log of a sum that holds exp(0). */
static float short_exp(float *s, int64_t mp, float m, float ll)
{
    __m512 vm = _mm512_set1_ps(m), vl = _mm512_set1_ps(ll), sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < mp; j += 16) {
        __m512 e = exp16_nonpositive(
            _mm512_sub_ps(_mm512_sub_ps(_mm512_load_ps(s + j), vm), vl));
        _mm512_store_ps(s + j, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}
#else
static void short_dots(const float *x, const float *xt, int64_t D, int64_t mp, float *out)
{
    for (int64_t j = 0; j < mp; j++)
        out[j] = 0.0f;
    for (int64_t d = 0; d < D; d++) {
        float b = x[d];
        const float *r = xt + d * SM;
#pragma omp simd
        for (int64_t j = 0; j < mp; j++)
            out[j] += b * r[j];
    }
}

static float short_scores(const qkv_k_attn *a, int64_t b, int64_t h, int64_t i, const float *q,
                          const float *kt, int64_t mp, float *s)
{
    int64_t M = a->M;
    short_dots(q, kt, a->D, mp, s);
    for (int64_t j = 0; j < mp; j++)
        s[j] = j < M ? s[j] * a->scale : -INFINITY;
    if (any_mask(&a->mask))
        qkv_k_attn_mask_row(&a->mask, a->N, M, b, h, i, 0, M, s);
    return row_max(s, mp);
}

static float short_exp(float *s, int64_t mp, float m, float ll)
{
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < mp; j++) {
        s[j] = qkv_k_expf((s[j] - m) - ll);
        sum += s[j];
    }
    return sum;
}
#endif

/* o[0..n) = scale sum_j w[j] rows_j[0..n) (+ o if acc) over j < M, rows_j =
 * rows + j * stride: the weighted sum of value rows (or key rows) */
static inline void short_combo(float *o, bool acc, const float *w, const float *rows,
                               int64_t stride, int64_t M, int64_t n, float scale)
{
    qkv_k_gemv_rows(M, n, scale, w, 1, rows, stride, acc ? 1.0f : 0.0f, o);
}

static void short_forward_head(const qkv_k_attn *a, int64_t bh, float *out, float *lse,
                               short_work w)
{
    int64_t H = a->H, N = a->N, M = a->M, Dv = a->Dv, b = bh / H, h = bh % H;
    int64_t mp = (M + 15) / 16 * 16;
    const float *q = a->q + b * a->q_sb + h * a->q_sh;
    const float *v = a->v + b * a->v_sb + h * a->v_sh;
    transpose_rows(w.kt, a->k + b * a->k_sb + h * a->k_sh, a->k_sn, M, a->D);
    float *logl = lse + a->B * H * N;
    for (int64_t i = 0; i < N; i++) {
        float *o = out + O_ROW(a, b, h, i), *s = w.s;
        float m = short_scores(a, b, h, i, q + i * a->q_sn, w.kt, mp, s);
        if (m == -INFINITY || m != m) { /* every key masked: NaN, as softmax of all -inf */
            for (int64_t d = 0; d < Dv; d++)
                o[d] = NAN;
            lse[bh * N + i] = logl[bh * N + i] = NAN;
            continue;
        }
        float sum = short_exp(s, mp, m, 0.0f); /* <= 64 terms in (0, 1]: float will do */
        if (a->dropout_p > 0) {
            qkv_k_attn_dropout_row(w.keep, a->seed, a->dropout_p, bh, i, 0, M, N, M);
            for (int64_t j = 0; j < M; j++)
                s[j] *= w.keep[j];
        }
        short_combo(o, false, s, v, a->v_sn, M, Dv, 1.0f / sum);
        lse[bh * N + i] = m;
        logl[bh * N + i] = logf(sum);
    }
}

/* The backward of one (batch, head), row by row: P recomputed from the
 * saved statistics, then dV += P^T dO, dP = dO V^T, dS = P (dP Z - Delta),
 * dQ += scale dS K, dK += scale dS^T Q. */
static void short_backward_head(const qkv_k_attn *a, int64_t bh, const float *out,
                                const float *lse, const float *dout, float *dq, float *dk,
                                float *dv, short_work w)
{
    const qkv_k_attn_mask *mk = &a->mask;
    int64_t H = a->H, N = a->N, M = a->M, D = a->D, Dv = a->Dv, b = bh / H, h = bh % H;
    int64_t mp = (M + 15) / 16 * 16;
    const float *q = a->q + b * a->q_sb + h * a->q_sh;
    const float *k = a->k + b * a->k_sb + h * a->k_sh;
    transpose_rows(w.kt, k, a->k_sn, M, D);
    transpose_rows(w.vt, a->v + b * a->v_sb + h * a->v_sh, a->v_sn, M, Dv);
    const float *logl = lse + a->B * H * N;
    bool drop = a->dropout_p > 0;
    float *pt = w.g + SM, *st = pt + M * N; /* (M, N) each */
    for (int64_t i = 0; i < N; i++) {
        const float *qi = q + i * a->q_sn, *doi = dout + O_ROW(a, b, h, i);
        const float *oi = out + O_ROW(a, b, h, i);
        float *p = w.s, *g = w.g, *z = w.keep, *pd = w.e;
        short_scores(a, b, h, i, qi, w.kt, mp, p);
        short_exp(p, mp, lse[bh * N + i], logl[bh * N + i]);
        if (drop) {
            qkv_k_attn_dropout_row(z, a->seed, a->dropout_p, bh, i, 0, M, N, M);
            for (int64_t j = 0; j < M; j++)
                pd[j] = p[j] * z[j];
        }
        const float *pw = drop ? pd : p;
        for (int64_t j = 0; j < M && dv; j++) /* column i of (P o Z)^T */
            pt[j * N + i] = pw[j];
        if (!dq && !dk)
            continue;
        /* Delta_i = dO_i . out_i; dP_j = dO_i . v_j */
        float delta = 0.0f;
#pragma omp simd reduction(+ : delta)
        for (int64_t d = 0; d < Dv; d++)
            delta += doi[d] * oi[d];
        short_dots(doi, w.vt, Dv, mp, g);
        float dl = delta;
        if (drop) {
            for (int64_t j = 0; j < M; j++)
                p[j] = p[j] * (g[j] * z[j] - dl);
        } else {
#pragma omp simd
            for (int64_t j = 0; j < M; j++)
                p[j] = p[j] * (g[j] - dl);
        }
        if (mk->valid_lens) /* nothing where a valid length replaced s */
            for (int64_t j = max64(qkv_k_attn_valid_len(mk, N, M, b, i), 0); j < M; j++)
                p[j] = 0.0f;
        if (dq)
            short_combo(dq + DQ_ROW(a, b, h, i), true, p, k, a->k_sn, M, D, a->scale);
        for (int64_t j = 0; j < M && dk; j++) /* column i of dS^T */
            st[j * N + i] = p[j];
    }
    /* dV (M, Dv) += (P o Z)^T dO and dK (M, D) += scale dS^T Q, a key's row
     * at a time with the row in registers */
    for (int64_t j = 0; j < M && dv; j++)
        short_combo(dv + DV_ROW(a, b, h, j), true, pt + j * N, dout + O_ROW(a, b, h, 0),
                    a->o_sn, N, Dv, 1.0f);
    for (int64_t j = 0; j < M && dk; j++)
        short_combo(dk + DK_ROW(a, b, h, j), true, st + j * N, q, a->q_sn, N, D, a->scale);
}

/* ---- the query-block path (AVX-512): lanes are 16 queries ----
 *
 * The short-row path still reduces across lanes twice a row (maximum and
 * sum) and hashes dropout a key at a time; with the book's 10 keys that is
 * most of its work. Here a vector holds one key's scores for 16 queries:
 * S^T (M, 16) is M columns of D FMAs (Q^T (D, 16) against a key's entries
 * broadcast), the maximum and the sum are lane-wise over the M columns,
 * exp, masks and the dropout hash run on 16 queries at once, and
 * O^T (Dv, 16) += P_j v_j is again broadcasts. The backward mirrors it:
 * dP_j = dO^T . v_j, dS_j = P_j (dP_j Z_j - Delta), dQ^T += dS_j k_j, and
 * dK, dV take a key's row at a time from the stored columns of dS and
 * P o Z. Same masks, exp, statistics and dropout decisions as the other
 * paths. Additive masks and fewer than QB_MIN queries take the short-row
 * path (a block of one query would be 15 lanes of padding). */

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define QB 16
#define QB_MIN 8

static bool block_path(const qkv_k_attn *a)
{
    return short_rows(a) && !a->mask.add && a->N >= QB_MIN;
}

/* the block path's per-thread floats: Q^T, dQ^T (D, 16), O^T, dO^T
 * (Dv, 16), S^T and P^T (SM, 16), and 16 lengths */
static size_t block_floats(const qkv_k_attn *a)
{
    return (size_t)QB * (2 * (size_t)a->D + 2 * (size_t)a->Dv + 2 * SM + 1);
}

/* v[0..8) transposed in place: v[i][j] <-> v[j][i] */
static inline void transpose8(__m256 v[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* xt (d, 16) = rows r < nr of x (row stride sn) transposed, 0 past nr:
 * 8 x 8 blocks through registers, the columns past a multiple of 8 one by
 * one */
static void block_transpose(float *xt, const float *x, int64_t sn, int64_t nr, int64_t d)
{
    int64_t c0 = 0;
    for (; c0 + 8 <= d; c0 += 8)
        for (int64_t r0 = 0; r0 < QB; r0 += 8) {
            __m256 v[8];
            for (int64_t r = 0; r < 8; r++)
                v[r] = r0 + r < nr ? _mm256_loadu_ps(x + (r0 + r) * sn + c0)
                                   : _mm256_setzero_ps();
            transpose8(v);
            for (int64_t c = 0; c < 8; c++)
                _mm256_store_ps(xt + (c0 + c) * QB + r0, v[c]);
        }
    for (int64_t c = c0; c < d; c++)
        for (int64_t r = 0; r < QB; r++)
            xt[c * QB + r] = r < nr ? x[r * sn + c] : 0.0f;
}

/* The dropout decisions of 16 queries (lanes) for one key: SplitMix64 of
 * seed + index * golden, index = ((bh N + i) M + j), eight 64-bit lanes a
 * half. z0 holds seed + index * golden of key j; the caller adds golden
 * per key. Kept where the top 32 bits are >= thr. */
static inline __mmask16 block_keep(__m512i zlo, __m512i zhi, __m512i thr)
{
    const __m512i c1 = _mm512_set1_epi64((long long)0xbf58476d1ce4e5b9ull);
    const __m512i c2 = _mm512_set1_epi64((long long)0x94d049bb133111ebull);
    __m512i z[2] = {zlo, zhi};
    __mmask8 k[2];
    for (int x = 0; x < 2; x++) {
        __m512i t = z[x];
        t = _mm512_mullo_epi64(_mm512_xor_si512(t, _mm512_srli_epi64(t, 30)), c1);
        t = _mm512_mullo_epi64(_mm512_xor_si512(t, _mm512_srli_epi64(t, 27)), c2);
        t = _mm512_xor_si512(t, _mm512_srli_epi64(t, 31));
        k[x] = _mm512_cmpge_epu64_mask(_mm512_srli_epi64(t, 32), thr);
    }
    return (__mmask16)((unsigned)k[0] | ((unsigned)k[1] << 8));
}

typedef struct {
    __m512i zlo, zhi, thr, step;
    __m512 scale;
} block_drop;

/* the hash state of queries i0 .. i0+16 of head bh at key 0 */
static block_drop block_drop_init(const qkv_k_attn *a, int64_t bh, int64_t i0)
{
    block_drop d;
    uint64_t g = 0x9e3779b97f4a7c15ull, base = ((uint64_t)bh * (uint64_t)a->N + (uint64_t)i0) *
                                                   (uint64_t)a->M;
    uint64_t lo[8], hi[8];
    for (int r = 0; r < 8; r++) {
        lo[r] = a->seed + (base + (uint64_t)r * (uint64_t)a->M) * g;
        hi[r] = a->seed + (base + (uint64_t)(r + 8) * (uint64_t)a->M) * g;
    }
    d.zlo = _mm512_loadu_si512(lo);
    d.zhi = _mm512_loadu_si512(hi);
    d.thr = _mm512_set1_epi64((long long)qkv_k_attn_threshold(a->dropout_p));
    d.step = _mm512_set1_epi64((long long)g);
    d.scale = _mm512_set1_ps(a->dropout_p < 1.0f ? 1.0f / (1.0f - a->dropout_p) : 0.0f);
    return d;
}

/* Z_j (16 queries) for the current key; moves the state to the next key */
static inline __m512 block_drop_next(block_drop *d)
{
    __m512 z = _mm512_maskz_mov_ps(block_keep(d->zlo, d->zhi, d->thr), d->scale);
    d->zlo = _mm512_add_epi64(d->zlo, d->step);
    d->zhi = _mm512_add_epi64(d->zhi, d->step);
    return z;
}

/* column j of out (M, 16) = sum_c xt[c] y_j[c] (xt (d, 16), y_j = y + j ys):
 * four columns at a time, so that each load of xt feeds four FMAs */
static void block_dots(float *out, const float *xt, int64_t d, const float *y, int64_t ys,
                       int64_t M)
{
    int64_t j = 0;
    for (; j + 3 < M; j += 4) {
        const float *y0 = y + j * ys, *y1 = y0 + ys, *y2 = y1 + ys, *y3 = y2 + ys;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t c = 0; c < d; c++) {
            __m512 x = _mm512_load_ps(xt + c * QB);
            a0 = _mm512_fmadd_ps(x, _mm512_set1_ps(y0[c]), a0);
            a1 = _mm512_fmadd_ps(x, _mm512_set1_ps(y1[c]), a1);
            a2 = _mm512_fmadd_ps(x, _mm512_set1_ps(y2[c]), a2);
            a3 = _mm512_fmadd_ps(x, _mm512_set1_ps(y3[c]), a3);
        }
        _mm512_store_ps(out + j * QB, a0);
        _mm512_store_ps(out + (j + 1) * QB, a1);
        _mm512_store_ps(out + (j + 2) * QB, a2);
        _mm512_store_ps(out + (j + 3) * QB, a3);
    }
    for (; j < M; j++) {
        const float *y0 = y + j * ys;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        int64_t c = 0;
        for (; c + 1 < d; c += 2) {
            a0 = _mm512_fmadd_ps(_mm512_load_ps(xt + c * QB), _mm512_set1_ps(y0[c]), a0);
            a1 = _mm512_fmadd_ps(_mm512_load_ps(xt + (c + 1) * QB), _mm512_set1_ps(y0[c + 1]),
                                 a1);
        }
        if (c < d)
            a0 = _mm512_fmadd_ps(_mm512_load_ps(xt + c * QB), _mm512_set1_ps(y0[c]), a0);
        _mm512_store_ps(out + j * QB, _mm512_add_ps(a0, a1));
    }
}

/* st (M, 16): column j = the masked scores of queries i0 .. i0+16 (qt is
 * their Q^T) against key j; returns the lane-wise maxima */
static __m512 block_scores(const qkv_k_attn *a, int64_t b, int64_t i0, int64_t nr,
                           const float *qt, const float *k, int32_t *lens, float *st)
{
    const qkv_k_attn_mask *mk = &a->mask;
    int64_t M = a->M, D = a->D;
    __m512 sc = _mm512_set1_ps(a->scale), ninf = _mm512_set1_ps(-INFINITY);
    __m512 fill = _mm512_set1_ps(QKV_ATTN_VALID_FILL), m = ninf;
    __m512i iv = _mm512_add_epi32(_mm512_set1_epi32((int)i0),
                                  _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                                    13, 14, 15));
    __m512i lv = _mm512_setzero_si512();
    if (mk->valid_lens) {
        for (int64_t r = 0; r < QB; r++) /* clamped to [-1, M]: same decisions */
            lens[r] = r < nr ? (int32_t)max64(-1, min64(M, qkv_k_attn_valid_len(
                                                               mk, a->N, M, b, i0 + r)))
                             : 0;
        lv = _mm512_loadu_si512(lens);
    }
    block_dots(st, qt, D, k, a->k_sn, M);
    for (int64_t j = 0; j < M; j++) {
        __m512 s = _mm512_mul_ps(_mm512_load_ps(st + j * QB), sc);
        if (mk->kpm)
            s = _mm512_add_ps(s, _mm512_set1_ps(mk->kpm[b * M + j]));
        __m512i jv = _mm512_set1_epi32((int)j);
        if (mk->causal) /* key j is after query i */
            s = _mm512_mask_mov_ps(s, _mm512_cmplt_epi32_mask(iv, jv), ninf);
        if (mk->valid_lens) /* key j is past the length */
            s = _mm512_mask_mov_ps(s, _mm512_cmple_epi32_mask(lv, jv), fill);
        _mm512_store_ps(st + j * QB, s);
        m = _mm512_max_ps(s, m); /* s first: a NaN is skipped, as row_max */
    }
    return m;
}

/* rows r < nr of x (row stride sn) += alpha xt (d, 16) transposed, or = when
 * !acc */
static void block_store(float *x, int64_t sn, const float *xt, int64_t nr, int64_t d,
                        float alpha, bool acc)
{
    const __m256 al = _mm256_set1_ps(alpha);
    int64_t c0 = 0;
    for (; c0 + 8 <= d; c0 += 8)
        for (int64_t r0 = 0; r0 < nr; r0 += 8) {
            __m256 v[8];
            for (int64_t c = 0; c < 8; c++)
                v[c] = _mm256_load_ps(xt + (c0 + c) * QB + r0);
            transpose8(v); /* v[r]: row r0 + r, columns c0 .. c0 + 8 */
            for (int64_t r = 0; r < 8 && r0 + r < nr; r++) {
                float *row = x + (r0 + r) * sn + c0;
                __m256 old = acc ? _mm256_loadu_ps(row) : _mm256_setzero_ps();
                _mm256_storeu_ps(row, _mm256_add_ps(old, _mm256_mul_ps(al, v[r])));
            }
        }
    for (int64_t r = 0; r < nr; r++)
        for (int64_t c = c0; c < d; c++)
            x[r * sn + c] = (acc ? x[r * sn + c] : 0.0f) + alpha * xt[c * QB + r];
}

/* log x on 16 lanes for x >= 1 (a sum of exps that holds exp(0)):
 * x = 2^e m, m in [1, 2), log m = 2 atanh(f), f = (m - 1) / (m + 1) in
 * [0, 1/3), the odd series to f^15 (its next term is below float's
 * rounding) */
static inline __m512 log16_from_one(__m512 x)
{
    __m512 e = _mm512_getexp_ps(x);
    __m512 mt = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 f = _mm512_div_ps(_mm512_sub_ps(mt, one), _mm512_add_ps(mt, one));
    __m512 f2 = _mm512_mul_ps(f, f);
    __m512 p = _mm512_set1_ps(1.0f / 15);
    p = _mm512_fmadd_ps(p, f2, _mm512_set1_ps(1.0f / 13));
    p = _mm512_fmadd_ps(p, f2, _mm512_set1_ps(1.0f / 11));
    p = _mm512_fmadd_ps(p, f2, _mm512_set1_ps(1.0f / 9));
    p = _mm512_fmadd_ps(p, f2, _mm512_set1_ps(1.0f / 7));
    p = _mm512_fmadd_ps(p, f2, _mm512_set1_ps(1.0f / 5));
    p = _mm512_fmadd_ps(p, f2, _mm512_set1_ps(1.0f / 3));
    p = _mm512_fmadd_ps(p, f2, one);
    __m512 lm = _mm512_mul_ps(_mm512_add_ps(f, f), p);
    return _mm512_fmadd_ps(e, _mm512_set1_ps(0x1.62e430p-1f), lm);
}

/* xt (d, 16) = sum over the M columns c_j (16 lanes) of c_j y_j[k], y_j =
 * y + j ys: a (16, M) by (M, d) product, four columns of xt at a time with
 * the sums in registers, so that each load of c_j feeds four FMAs */
static void block_mix(float *xt, const float *c, const float *y, int64_t ys, int64_t M,
                      int64_t d)
{
    int64_t k = 0;
    for (; k + 3 < d; k += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < M; j++) {
            __m512 cj = _mm512_load_ps(c + j * QB);
            const float *yj = y + j * ys + k;
            a0 = _mm512_fmadd_ps(cj, _mm512_set1_ps(yj[0]), a0);
            a1 = _mm512_fmadd_ps(cj, _mm512_set1_ps(yj[1]), a1);
            a2 = _mm512_fmadd_ps(cj, _mm512_set1_ps(yj[2]), a2);
            a3 = _mm512_fmadd_ps(cj, _mm512_set1_ps(yj[3]), a3);
        }
        _mm512_store_ps(xt + k * QB, a0);
        _mm512_store_ps(xt + (k + 1) * QB, a1);
        _mm512_store_ps(xt + (k + 2) * QB, a2);
        _mm512_store_ps(xt + (k + 3) * QB, a3);
    }
    for (; k < d; k++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        int64_t j = 0;
        for (; j + 1 < M; j += 2) {
            a0 = _mm512_fmadd_ps(_mm512_load_ps(c + j * QB), _mm512_set1_ps(y[j * ys + k]), a0);
            a1 = _mm512_fmadd_ps(_mm512_load_ps(c + (j + 1) * QB),
                                 _mm512_set1_ps(y[(j + 1) * ys + k]), a1);
        }
        if (j < M)
            a0 = _mm512_fmadd_ps(_mm512_load_ps(c + j * QB), _mm512_set1_ps(y[j * ys + k]), a0);
        _mm512_store_ps(xt + k * QB, _mm512_add_ps(a0, a1));
    }
}

/* the first n (<= 16) floats at p, the rest 0; and their store. Masked
 * stores are slow on some CPUs (Zen 4): 16 and 8 lanes go unmasked. */
static inline __m512 block_load_n(const float *p, int64_t n)
{
    if (n == 16)
        return _mm512_loadu_ps(p);
    if (n == 8)
        return _mm512_castps256_ps512(_mm256_loadu_ps(p)); /* upper lanes unused */
    return _mm512_maskz_loadu_ps(qkv_lanes(n), p);
}

static inline void block_store_n(float *p, int64_t n, __m512 v)
{
    if (n == 16)
        _mm512_storeu_ps(p, v);
    else if (n == 8)
        _mm256_storeu_ps(p, _mm512_castps512_ps256(v));
    else
        _mm512_mask_storeu_ps(p, qkv_lanes(n), v);
}

/* the cache lines of p[0 .. n) into L1, for writing */
static inline void block_prefetch(const float *p, int64_t n)
{
    for (int64_t c = 0; c < n; c += 16)
        _mm_prefetch((const char *)(p + c), _MM_HINT_T0);
    _mm_prefetch((const char *)(p + n - 1), _MM_HINT_T0);
}

/* row j of dst (row stride ds) += alpha sum_{r < nr} c_j[r] x_r for j < M,
 * x_r = x + r xs of n floats: (M, 16) columns by (16, n) rows, four
 * destination rows at a time in registers */
static void block_rows(float *dst, int64_t ds, const float *c, const float *x, int64_t xs,
                       int64_t nr, int64_t M, int64_t n, float alpha)
{
    __m512 al = _mm512_set1_ps(alpha);
    for (int64_t c0 = 0; c0 < n; c0 += 16) {
        int64_t w = n - c0 < 16 ? n - c0 : 16;
        int64_t j = 0;
        for (; j + 3 < M; j += 4) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t r = 0; r < nr; r++) {
                __m512 xr = block_load_n(x + r * xs + c0, w);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(c[j * QB + r]), xr, a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(c[(j + 1) * QB + r]), xr, a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(c[(j + 2) * QB + r]), xr, a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(c[(j + 3) * QB + r]), xr, a3);
            }
            __m512 acc[4] = {a0, a1, a2, a3};
            for (int t = 0; t < 4; t++) {
                float *dj = dst + (j + t) * ds + c0;
                block_store_n(dj, w, _mm512_fmadd_ps(acc[t], al, block_load_n(dj, w)));
            }
        }
        for (; j < M; j++) {
            __m512 a0 = _mm512_setzero_ps();
            for (int64_t r = 0; r < nr; r++)
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(c[j * QB + r]),
                                     block_load_n(x + r * xs + c0, w), a0);
            float *dj = dst + j * ds + c0;
            block_store_n(dj, w, _mm512_fmadd_ps(a0, al, block_load_n(dj, w)));
        }
    }
}

static void block_forward_head(const qkv_k_attn *a, int64_t bh, float *out, float *lse,
                               float *w)
{
    int64_t H = a->H, N = a->N, M = a->M, D = a->D, Dv = a->Dv, b = bh / H, h = bh % H;
    const float *q = a->q + b * a->q_sb + h * a->q_sh;
    const float *k = a->k + b * a->k_sb + h * a->k_sh;
    const float *v = a->v + b * a->v_sb + h * a->v_sh;
    float *qt = w, *ot = qt + D * QB, *st = ot + Dv * QB;
    int32_t *lens = (int32_t *)(st + SM * QB);
    float *logl = lse + a->B * H * N;
    bool drop = a->dropout_p > 0;
    for (int64_t i0 = 0; i0 < N; i0 += QB) {
        int64_t nr = min64(QB, N - i0);
        __mmask16 kr = nr == QB ? QKV_ALL : qkv_lanes(nr);
        block_transpose(qt, q + i0 * a->q_sn, a->q_sn, nr, D);
        __m512 m = block_scores(a, b, i0, nr, qt, k, lens, st);
        /* P_j = exp(s_j - m), summed before dropout, kept in place */
        __m512 sum = _mm512_setzero_ps();
        block_drop dr;
        if (drop)
            dr = block_drop_init(a, bh, i0);
        for (int64_t j = 0; j < M; j++) {
            __m512 e = exp16_nonpositive(_mm512_sub_ps(_mm512_load_ps(st + j * QB), m));
            sum = _mm512_add_ps(sum, e);
            _mm512_store_ps(st + j * QB, drop ? _mm512_mul_ps(e, block_drop_next(&dr)) : e);
        }
        block_mix(ot, st, v, a->v_sn, M, Dv); /* O^T = (P o Z) V, unnormalised */
        /* every key masked (maximum -inf): NaN, as softmax of all -inf */
        __mmask16 bad = _mm512_cmp_ps_mask(m, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
        __m512 nan = _mm512_set1_ps(NAN);
        __m512 inv = _mm512_mask_mov_ps(_mm512_div_ps(_mm512_set1_ps(1.0f), sum), bad, nan);
        for (int64_t d = 0; d < Dv; d++)
            _mm512_store_ps(ot + d * QB, _mm512_mul_ps(_mm512_load_ps(ot + d * QB), inv));
        block_store(out + O_ROW(a, b, h, i0), a->o_sn, ot, nr, Dv, 1.0f, false);
        _mm512_mask_storeu_ps(lse + bh * N + i0, kr, _mm512_mask_mov_ps(m, bad, nan));
        /* <= 64 terms in (0, 1], one of them 1 */
        _mm512_mask_storeu_ps(logl + bh * N + i0, kr,
                              _mm512_mask_mov_ps(log16_from_one(sum), bad, nan));
    }
}

static void block_backward_head(const qkv_k_attn *a, int64_t bh, const float *out,
                                const float *lse, const float *dout, float *dq, float *dk,
                                float *dv, float *w)
{
    int64_t H = a->H, N = a->N, M = a->M, D = a->D, Dv = a->Dv, b = bh / H, h = bh % H;
    const float *q = a->q + b * a->q_sb + h * a->q_sh;
    const float *k = a->k + b * a->k_sb + h * a->k_sh;
    const float *v = a->v + b * a->v_sb + h * a->v_sh;
    float *qt = w, *dqt = qt + D * QB, *ot = dqt + D * QB, *dot = ot + Dv * QB;
    float *st = dot + Dv * QB, *pt = st + SM * QB;
    int32_t *lens = (int32_t *)(pt + SM * QB);
    const float *logl = lse + a->B * H * N;
    bool drop = a->dropout_p > 0, grad_s = dq || dk;
    __m512 zero = _mm512_setzero_ps();
    /* dK and dV rows are read, added to and written: ask for them now,
     * while the scores are worked out */
    for (int64_t j = 0; j < M; j++) {
        if (dv)
            block_prefetch(dv + DV_ROW(a, b, h, j), Dv);
        if (dk)
            block_prefetch(dk + DK_ROW(a, b, h, j), D);
    }
    for (int64_t i0 = 0; i0 < N; i0 += QB) {
        int64_t nr = min64(QB, N - i0);
        __mmask16 kr = nr == QB ? QKV_ALL : qkv_lanes(nr);
        const float *oi = out + O_ROW(a, b, h, i0), *doi = dout + O_ROW(a, b, h, i0);
        const float *qi = q + i0 * a->q_sn;
        block_transpose(qt, qi, a->q_sn, nr, D);
        __m512 m = _mm512_maskz_loadu_ps(kr, lse + bh * N + i0);
        __m512 ll = _mm512_maskz_loadu_ps(kr, logl + bh * N + i0);
        block_scores(a, b, i0, nr, qt, k, lens, st);
        /* P_j, and P_j o Z_j into pt */
        block_drop dr;
        if (drop)
            dr = block_drop_init(a, bh, i0);
        for (int64_t j = 0; j < M; j++) {
            __m512 p = exp16_nonpositive(
                _mm512_sub_ps(_mm512_sub_ps(_mm512_load_ps(st + j * QB), m), ll));
            _mm512_store_ps(st + j * QB, p);
            _mm512_store_ps(pt + j * QB, drop ? _mm512_mul_ps(p, block_drop_next(&dr)) : p);
        }
        /* dV (M, Dv) += (P o Z)^T dO */
        if (dv)
            block_rows(dv + DV_ROW(a, b, h, 0), a->dv_sn, pt, doi, a->o_sn, nr, M, Dv, 1.0f);
        if (!grad_s)
            continue;
        block_transpose(ot, oi, a->o_sn, nr, Dv);
        block_transpose(dot, doi, a->o_sn, nr, Dv);
        __m512 delta = zero; /* Delta_i = dO_i . out_i */
        for (int64_t d = 0; d < Dv; d++)
            delta = _mm512_fmadd_ps(_mm512_load_ps(dot + d * QB), _mm512_load_ps(ot + d * QB),
                                    delta);
        __m512i lv = a->mask.valid_lens ? _mm512_loadu_si512(lens) : _mm512_setzero_si512();
        /* dS_j = P_j (dP_j Z_j - Delta), dP_j = dO v_j; Z_j = (P_j o Z_j) / P_j
         * is not divided back: the hash is rerun */
        if (drop)
            dr = block_drop_init(a, bh, i0);
        block_dots(pt, dot, Dv, v, a->v_sn, M); /* dP (pt is free: dV is done) */
        for (int64_t j = 0; j < M; j++) {
            __m512 g = _mm512_load_ps(pt + j * QB);
            if (drop)
                g = _mm512_mul_ps(g, block_drop_next(&dr));
            __m512 ds = _mm512_mul_ps(_mm512_load_ps(st + j * QB), _mm512_sub_ps(g, delta));
            if (a->mask.valid_lens) /* nothing where a valid length replaced s */
                ds = _mm512_mask_mov_ps(
                    ds, _mm512_cmple_epi32_mask(lv, _mm512_set1_epi32((int)j)), zero);
            _mm512_store_ps(st + j * QB, ds);
        }
        /* dQ += scale dS K, dK += scale dS^T Q */
        if (dq) {
            block_mix(dqt, st, k, a->k_sn, M, D);
            block_store(dq + DQ_ROW(a, b, h, i0), a->dq_sn, dqt, nr, D, a->scale, true);
        }
        if (dk)
            block_rows(dk + DK_ROW(a, b, h, 0), a->dk_sn, st, qi, a->q_sn, nr, M, D, a->scale);
    }
}
#else /* no AVX-512: the row path only */
static size_t block_floats(const qkv_k_attn *a)
{
    (void)a;
    return 0;
}
#endif

/* one (batch, head) of the short rows, by the block or the row path */
static void short_forward(const qkv_k_attn *a, int64_t bh, float *out, float *lse, float *w)
{
#ifdef QB
    if (block_path(a)) {
        block_forward_head(a, bh, out, lse, w);
        return;
    }
#endif
    short_forward_head(a, bh, out, lse, short_split(a, w));
}

static void short_backward(const qkv_k_attn *a, int64_t bh, const float *out, const float *lse,
                           const float *dout, float *dq, float *dk, float *dv, float *w)
{
#ifdef QB
    if (block_path(a)) {
        block_backward_head(a, bh, out, lse, dout, dq, dk, dv, w);
        return;
    }
#endif
    short_backward_head(a, bh, out, lse, dout, dq, dk, dv, short_split(a, w));
}

void qkv_k_attn_forward(const qkv_k_attn *a, float *out, float *lse, float *work, int threads)
{
    int64_t BH = a->B * a->H, nt = (a->N + BR - 1) / BR;
    size_t per = fwd_floats(a);
    double work_size = (double)BH * a->N * a->M;
    if (short_rows(a)) {
        if (threads <= 1 || work_size <= SHORT_PAR_WORK) { /* no OpenMP region at all */
            for (int64_t bh = 0; bh < BH; bh++)
                short_forward(a, bh, out, lse, work);
            return;
        }
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t bh = 0; bh < BH; bh++)
            short_forward(a, bh, out, lse, work + per * (size_t)thread_id());
        return;
    }
#pragma omp parallel for schedule(dynamic) num_threads(threads) \
    if (threads > 1 && work_size > PAR_WORK)
    for (int64_t t = 0; t < BH * nt; t++) {
        int64_t bh = t / nt, i0 = (t % nt) * BR;
        fwd_work w = fwd_split(a, work + per * (size_t)thread_id());
        forward_tile(a, bh, i0, out + O_ROW(a, bh / a->H, bh % a->H, i0), lse + bh * a->N + i0,
                     BH * a->N, w);
    }
}

/* ---- backward ---- */

static size_t bwd_floats(const qkv_k_attn *a)
{
    if (short_rows(a)) /* and P^T, dS^T (M, N) of the head; 64-byte blocks */
    {
        size_t row = short_floats(a) + 2 * (size_t)a->M * (size_t)a->N;
        return round16(row > block_floats(a) ? row : block_floats(a));
    }
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
    out += O_ROW(a, b, h, 0);
    dout += O_ROW(a, b, h, 0);
    lse += bh * N;
    int64_t os = a->o_sn;
    /* Delta_i = sum_j P_ij dP_ij = dout_i . out_i */
    for (int64_t i = 0; i < N; i++) {
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < Dv; d++)
            s += dout[i * os + d] * out[i * os + d];
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
            const float *qi = q + i0 * a->q_sn, *doi = dout + i0 * os;
            TILE_GEMM(false, true, br, bc, D, a->scale, qi, a->q_sn, kj, a->k_sn, 0.0f,
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
                TILE_GEMM(true, false, bc, Dv, br, 1.0f, drop ? dP : P, BC, doi, os, 1.0f,
                          dv + DV_ROW(a, b, h, j0), a->dv_sn);
            if (!dq && !dk)
                continue;
            /* dP (br, bc) = dO V^T, then through dropout and softmax:
             * dS = P (dP Z - Delta), nothing where a valid length replaced s */
            TILE_GEMM(false, true, br, bc, Dv, 1.0f, doi, os, vj, a->v_sn, 0.0f, dP,
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
                TILE_GEMM(false, false, br, D, bc, a->scale, P, BC, kj, a->k_sn, 1.0f,
                          dq + DQ_ROW(a, b, h, i0), a->dq_sn);
            if (dk)
                TILE_GEMM(true, false, bc, D, br, a->scale, P, BC, qi, a->q_sn, 1.0f,
                          dk + DK_ROW(a, b, h, j0), a->dk_sn);
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
    if (short_rows(a)) {
        if (threads <= 1 || work_size <= SHORT_PAR_WORK) {
            for (int64_t bh = 0; bh < BH; bh++)
                short_backward(a, bh, out, lse, dout, dq, dk, dv, work);
            return;
        }
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t bh = 0; bh < BH; bh++)
            short_backward(a, bh, out, lse, dout, dq, dk, dv, work + per * (size_t)thread_id());
        return;
    }
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
