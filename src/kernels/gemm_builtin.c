/* gemm_builtin.c - the GEMM used when qkv is built without BLAS, and tested
 * against qkv_k_gemm_ref whatever the backend.
 *
 * Layout (the Goto/BLIS scheme): for each block of NC columns and KC of the
 * inner axis, op(B) is packed into NR-wide panels (k-major, zero-padded) that
 * all threads share; each thread packs MC rows of op(A) into MR-tall panels
 * and runs the MR x NR register-tile micro-kernel over them: for each B
 * panel, down all the A panels. What stays where (AVX-512 sizes):
 *   B micro-panel  KC x NR = 64 KiB    L1 and L2, reused by every A panel
 *   A block        MC x KC = 192 KiB   L2 (1 MiB per core on the bench host)
 *   packed B block KC x NC = 1 MiB     L2 and L3, reused by every A block
 * C is read and written once per KC block: the first block applies beta, the
 * others add. OpenMP splits the blocks of rows (and, when there are fewer row
 * blocks than threads, the columns too).
 *
 * Memory: a workspace per call running at once (packed B plus one A block
 * per OpenMP thread), from a pool that grows on first use and is kept, so
 * that a training step of unchanged shapes allocates nothing. If none can be
 * had, the plain reference GEMM runs instead (slow, but never wrong).
 */
#include "gemm.h"

#include "../qkv_internal.h"

#include <stdatomic.h>
#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* MR x NR is the register tile: MR * NR / (floats per vector) accumulators
 * plus NR / (floats per vector) B vectors and one broadcast must fit in the
 * vector registers (32 with AVX-512, 16 with AVX2). */
#if defined(__AVX512F__)
#define MR 6
#define NR 64
#define ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define MR 6
#define NR 16
#define ISA "avx2"
#else
#define MR 4
#define NR 16
#define ISA "scalar"
#endif
#define KC 256
#define MC 192 /* a multiple of MR */
#define NC 1024 /* a multiple of NR */
/* products at most this many multiply-adds, with N at most SMALL_MAX_N,
 * skip packing (gemm_small) */
#define SMALL_WORK 32768
#define SMALL_MAX_N 256
#define SMALL_BT 4096 /* floats of a transposed B on the stack */

const char *qkv_k_gemm_builtin_isa(void) { return ISA; }

/* ---- packing ---- */

/* Ap (ceil(mc / MR), kc, MR) <- op(A)[i0 : i0 + mc, k0 : k0 + kc], rows past
 * mc zero. A is (M, K) with lda, or (K, M) if ta. */
static void pack_a(float *restrict Ap, const float *A, int64_t lda, bool ta, int64_t i0,
                   int64_t mc, int64_t k0, int64_t kc)
{
    for (int64_t p = 0; p < mc; p += MR, Ap += kc * MR) {
        int64_t m = mc - p < MR ? mc - p : MR;
        if (ta) { /* rows of the panel are adjacent in memory */
            for (int64_t k = 0; k < kc; k++) {
                const float *src = A + (k0 + k) * lda + i0 + p;
                for (int64_t r = 0; r < MR; r++)
                    Ap[k * MR + r] = r < m ? src[r] : 0.0f;
            }
        } else if (m == MR) { /* each row is contiguous along k: MR streams */
            const float *src = A + (i0 + p) * lda + k0;
            for (int64_t k = 0; k < kc; k++)
                for (int64_t r = 0; r < MR; r++)
                    Ap[k * MR + r] = src[r * lda + k];
        } else {
            for (int64_t r = 0; r < MR; r++) {
                const float *src = A + (i0 + p + r) * lda + k0;
                for (int64_t k = 0; k < kc; k++)
                    Ap[k * MR + r] = r < m ? src[k] : 0.0f;
            }
        }
    }
}

#if defined(__AVX512F__)
/* Bp[k * NR + c] <- src[c * ld + k] for c, k < 16: the 16 x 16 block at
 * src, transposed into 16 rows of a packed panel. Pairs of rows interleave
 * by 32 and 64 bits, then 128-bit lanes gather, twice. */
static inline void transpose16(float *restrict Bp, const float *src, int64_t ld)
{
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_ps(src + i * ld);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* r[4q + j] holds, in each 128-bit lane l, column 4l + j of rows
     * 4q .. 4q + 3; gather lanes: rows 0-7, then all 16 */
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 8; j++) {
        _mm512_store_ps(Bp + j * NR, _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88));
        _mm512_store_ps(Bp + (j + 8) * NR, _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd));
    }
}
#endif

/* One NR-wide panel: Bp (kc, NR) <- op(B)[k0 : k0 + kc, j0 : j0 + n], columns
 * past n zero. B is (K, N) with ldb, or (N, K) if tb. */
static void pack_b_panel(float *restrict Bp, const float *B, int64_t ldb, bool tb, int64_t k0,
                         int64_t kc, int64_t j0, int64_t n)
{
#if defined(__AVX512F__)
    if (tb && n == NR) { /* a whole panel of rows of B: 16 x 16 transposes */
        int64_t k16 = kc / 16 * 16;
        /* 16 rows at a time, along k: 16 streams for the prefetchers */
        for (int64_t c = 0; c < NR; c += 16)
            for (int64_t k = 0; k < k16; k += 16)
                transpose16(Bp + k * NR + c, B + (j0 + c) * ldb + k0 + k, ldb);
        for (int64_t c = 0; c < NR; c++) { /* the last kc % 16 */
            const float *src = B + (j0 + c) * ldb + k0;
            for (int64_t k = k16; k < kc; k++)
                Bp[k * NR + c] = src[k];
        }
        return;
    }
#endif
    if (tb) {
        for (int64_t c = 0; c < NR; c++) {
            const float *src = B + (j0 + c) * ldb + k0;
            for (int64_t k = 0; k < kc; k++)
                Bp[k * NR + c] = c < n ? src[k] : 0.0f;
        }
    } else {
        for (int64_t k = 0; k < kc; k++) {
            const float *src = B + (k0 + k) * ldb + j0;
            for (int64_t c = 0; c < NR; c++)
                Bp[k * NR + c] = c < n ? src[c] : 0.0f;
        }
    }
}

/* ---- micro-kernels: C (MR, NR) with ldc = beta C + alpha a b, where
 * a (kc, MR) and b (kc, NR) are packed panels, written to C's first m rows
 * (m <= MR: a panel cut by the matrix's last rows is zero-padded, its
 * extra rows computed and dropped). beta == 0 does not read C. ---- */

#if defined(__AVX512F__)
#define NV (NR / 16)
static void micro(int64_t kc, const float *restrict a, const float *restrict b, float *C,
                  int64_t ldc, int m, float alpha, float beta)
{
    __m512 acc[MR][NV];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = _mm512_setzero_ps();
    /* C is needed only after the loop; ask for it now so that it is there */
    for (int r = 0; r < m; r++)
        for (int v = 0; v < NV; v++)
            _mm_prefetch((const char *)(C + r * ldc + 16 * v), _MM_HINT_T0);
    for (int64_t k = 0; k < kc; k++, a += MR, b += NR) {
        __m512 bv[NV];
        for (int v = 0; v < NV; v++)
            bv[v] = _mm512_load_ps(b + 16 * v);
        for (int r = 0; r < MR; r++) {
            __m512 av = _mm512_set1_ps(a[r]);
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < m; r++)
        for (int v = 0; v < NV; v++) {
            float *c = C + r * ldc + 16 * v;
            __m512 x = _mm512_mul_ps(va, acc[r][v]);
            if (beta != 0.0f)
                x = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c), x);
            _mm512_storeu_ps(c, x);
        }
}
#elif defined(__AVX2__) && defined(__FMA__)
/* The 12 accumulators are named variables: as an array indexed by a loop
 * bounded by m, GCC 12 kept them in memory and stored all 12 on every k
 * (41 GFLOP/s on one Zen 2 core; OpenBLAS 76). */
#define ROW(r) __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = _mm256_setzero_ps()
#define FMA(r)                                                                                 \
    do {                                                                                       \
        __m256 av = _mm256_broadcast_ss(a + r);                                                \
        c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                                            \
        c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);                                            \
    } while (0)
#define STORE(r)                                                                               \
    do {                                                                                       \
        if (r >= m)                                                                            \
            return;                                                                            \
        float *c = C + r * ldc;                                                                \
        __m256 x0 = _mm256_mul_ps(va, c##r##0), x1 = _mm256_mul_ps(va, c##r##1);               \
        if (beta != 0.0f) {                                                                    \
            x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), x0);                                  \
            x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), x1);                              \
        }                                                                                      \
        _mm256_storeu_ps(c, x0);                                                               \
        _mm256_storeu_ps(c + 8, x1);                                                           \
    } while (0)
static void micro(int64_t kc, const float *restrict a, const float *restrict b, float *C,
                  int64_t ldc, int m, float alpha, float beta)
{
    ROW(0); ROW(1); ROW(2); ROW(3); ROW(4); ROW(5);
    for (int64_t k = 0; k < kc; k++, a += MR, b += NR) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        FMA(0); FMA(1); FMA(2); FMA(3); FMA(4); FMA(5);
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    STORE(0); STORE(1); STORE(2); STORE(3); STORE(4); STORE(5);
}
#undef ROW
#undef FMA
#undef STORE
#else
static void micro(int64_t kc, const float *restrict a, const float *restrict b, float *C,
                  int64_t ldc, int m, float alpha, float beta)
{
    float acc[MR][NR] = {{0}};
    for (int64_t k = 0; k < kc; k++, a += MR, b += NR)
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                acc[r][c] += a[r] * b[c];
    for (int r = 0; r < m; r++)
        for (int c = 0; c < NR; c++) {
            float x = alpha * acc[r][c];
            C[r * ldc + c] = beta != 0.0f ? beta * C[r * ldc + c] + x : x;
        }
}
#endif

/* A tile cut by the matrix's last columns (m <= MR rows, n < NR columns):
 * the kernel writes a whole tile to the stack and the valid part is merged
 * into C. */
static void micro_edge(int64_t kc, const float *a, const float *b, float *C, int64_t ldc,
                       int64_t m, int64_t n, float alpha, float beta)
{
    _Alignas(64) float tile[MR * NR];
    micro(kc, a, b, tile, NR, MR, alpha, 0.0f);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < n; c++) {
            float *y = C + r * ldc + c;
            *y = beta != 0.0f ? beta * *y + tile[r * NR + c] : tile[r * NR + c];
        }
}

/* ---- workspace ---- */

/* A pool of workspaces, each packed B (KC x NC) then one packed A block
 * (MC x KC) per OpenMP thread of the call. A call claims the first free one
 * and gives it back when done, so the calls that run at once (at most one
 * per thread of the loops around them) use the first few, which grow to the
 * largest call they have served and are kept: a training step of unchanged
 * shapes allocates nothing, whichever threads call (a workspace per thread
 * would not do: a team nested in another, even in an inactive one, is made
 * of new threads each time). */
#define WS_SLOTS 64
static struct {
    atomic_int busy;
    int threads;
    float *p;
} ws[WS_SLOTS];

/* A free workspace for `threads` threads, claimed (*slot), or NULL when all
 * are taken or it cannot grow. */
static float *workspace_claim(int threads, int *slot)
{
    for (int i = 0; i < WS_SLOTS; i++) {
        if (atomic_load_explicit(&ws[i].busy, memory_order_relaxed) ||
            atomic_exchange_explicit(&ws[i].busy, 1, memory_order_acquire))
            continue;
        if (ws[i].threads < threads) {
            /* quiet: the slow path answers instead, and a kernel leaves the
             * thread's error as its caller set it */
            float *p = qkv__aligned_alloc_quiet(sizeof(float) * ((size_t)KC * NC +
                                                                 (size_t)threads * MC * KC));
            if (!p) {
                atomic_store_explicit(&ws[i].busy, 0, memory_order_release);
                return NULL;
            }
            qkv__free(ws[i].p);
            ws[i].p = p;
            ws[i].threads = threads;
        }
        *slot = i;
        return ws[i].p;
    }
    return NULL;
}

static void workspace_release(int slot)
{
    atomic_store_explicit(&ws[slot].busy, 0, memory_order_release);
}

/* ---- driver ---- */

static void scale_c(float *C, int64_t ldc, int64_t M, int64_t N, float beta)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* One KC x NC block of the product: pack panels [p_lo, p_hi) of op(B), or
 * run tasks [t_lo, t_hi) (a block of rows by a chunk of panels) against the
 * packed B. The serial path calls both over their whole ranges; the
 * parallel path splits them among threads, with a barrier between. */
typedef struct {
    bool ta, tb;
    int64_t M, N, K, lda, ldb, ldc, j0, nc, k0, kc, mc, n_chunks, chunk, n_panels;
    float alpha, beta;
    const float *A, *B;
    float *C, *Bp;
} gemm_block;

static void pack_panels(const gemm_block *g, int64_t p_lo, int64_t p_hi)
{
    for (int64_t p = p_lo; p < p_hi; p++)
        pack_b_panel(g->Bp + p * g->kc * NR, g->B, g->ldb, g->tb, g->k0, g->kc, g->j0 + p * NR,
                     min64(NR, g->nc - p * NR));
}

static void run_tasks(const gemm_block *g, float *Ap, int64_t t_lo, int64_t t_hi)
{
    for (int64_t task = t_lo; task < t_hi; task++) {
        int64_t i0 = task / g->n_chunks * g->mc, m_blk = min64(g->mc, g->M - i0);
        int64_t p_lo = task % g->n_chunks * g->chunk, p_hi = min64(p_lo + g->chunk, g->n_panels);
        pack_a(Ap, g->A, g->lda, g->ta, i0, m_blk, g->k0, g->kc);
        for (int64_t p = p_lo; p < p_hi; p++) {
            int64_t j = g->j0 + p * NR, n = min64(NR, g->N - j);
            for (int64_t i = 0; i < m_blk; i += MR) {
                int64_t m = min64(MR, m_blk - i);
                float *c = g->C + (i0 + i) * g->ldc + j;
                const float *a = Ap + i * g->kc, *b = g->Bp + p * g->kc * NR;
                if (n == NR)
                    micro(g->kc, a, b, c, g->ldc, (int)m, g->alpha, g->beta);
                else
                    micro_edge(g->kc, a, b, c, g->ldc, m, n, g->alpha, g->beta);
            }
        }
    }
}

/* C (M, N) = beta C + alpha op(A) op(B) directly, for products too small to
 * repay packing (the per-head blocks of attention at small head sizes): one
 * row of C at a time, as K axpys of rows of B into accumulators held in
 * registers. A transposed B is first copied to (K, N) rows when it fits. */
#if defined(__AVX512F__)
/* row i of C, columns j0 .. j0+n (n <= 64): four masked vectors */
static inline void small_row(const float *a, int64_t as, const float *B, int64_t ldb, int64_t K,
                             int64_t n, float alpha, float beta, float *c)
{
    __mmask16 mk[4];
    for (int v = 0; v < 4; v++) {
        int64_t left = n - 16 * v;
        mk[v] = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t k = 0; k < K; k++) {
        __m512 av = _mm512_set1_ps(a[k * as]);
        const float *b = B + k * ldb;
        acc0 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk[0], b), acc0);
        if (n > 16)
            acc1 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk[1], b + 16), acc1);
        if (n > 32)
            acc2 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk[2], b + 32), acc2);
        if (n > 48)
            acc3 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk[3], b + 48), acc3);
    }
    __m512 acc[4] = {acc0, acc1, acc2, acc3};
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int v = 0; v < 4 && 16 * v < n; v++) {
        __m512 x = _mm512_mul_ps(va, acc[v]);
        if (beta != 0.0f)
            x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk[v], c + 16 * v), x);
        _mm512_mask_storeu_ps(c + 16 * v, mk[v], x);
    }
}
#else
static inline void small_row(const float *a, int64_t as, const float *B, int64_t ldb, int64_t K,
                             int64_t n, float alpha, float beta, float *c)
{
    float acc[64] = {0};
    for (int64_t k = 0; k < K; k++) {
        float x = a[k * as];
        const float *b = B + k * ldb;
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            acc[j] += x * b[j];
    }
    for (int64_t j = 0; j < n; j++)
        c[j] = beta == 0.0f ? alpha * acc[j] : beta * c[j] + alpha * acc[j];
}
#endif

void qkv_k_gemv_rows(int64_t K, int64_t n, float alpha, const float *x, int64_t xs,
                     const float *B, int64_t ldb, float beta, float *y)
{
    for (int64_t j0 = 0; j0 < n; j0 += 64)
        small_row(x, xs, B + j0, ldb, K, n - j0 < 64 ? n - j0 : 64, alpha, beta, y + j0);
}

static void gemm_small(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                       float *C, int64_t ldc)
{
    float bt[SMALL_BT];
    if (tb && K * N <= SMALL_BT) { /* B^T into (K, N) rows */
        for (int64_t j = 0; j < N; j++)
            for (int64_t k = 0; k < K; k++)
                bt[k * N + j] = B[j * ldb + k];
        B = bt, ldb = N, tb = false;
    }
    if (tb) { /* too large to copy: dot products */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                float acc = 0.0f;
                for (int64_t k = 0; k < K; k++)
                    acc += (ta ? A[k * lda + i] : A[i * lda + k]) * B[j * ldb + k];
                float *c = C + i * ldc + j;
                *c = beta == 0.0f ? alpha * acc : beta * *c + alpha * acc;
            }
        return;
    }
    /* row i of op(A) is A + i*lda with stride 1, or A + i with stride lda */
    int64_t as = ta ? lda : 1, ai = ta ? 1 : lda;
    for (int64_t i = 0; i < M; i++)
        qkv_k_gemv_rows(K, N, alpha, A + i * ai, as, B, ldb, beta, C + i * ldc);
}

void qkv_k_gemm_builtin(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(C, ldc, M, N, beta);
        return;
    }
    if (N <= SMALL_MAX_N && (double)M * N * K <= SMALL_WORK) {
        gemm_small(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int threads = 1;
#ifdef _OPENMP
    if ((double)M * N * K >= QKV_GEMM_PARALLEL_WORK && !omp_in_parallel())
        threads = omp_get_max_threads();
#endif
    int slot;
    float *Bp = workspace_claim(threads, &slot);
    if (!Bp) { /* an answer is still given, through the slow path */
        qkv_k_gemm_ref(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    gemm_block g = {.ta = trans_a, .tb = trans_b, .M = M, .N = N, .K = K, .lda = lda,
                    .ldb = ldb, .ldc = ldc, .alpha = alpha, .A = A, .B = B, .C = C, .Bp = Bp};
    /* rows per task: MC, or fewer so that every thread gets some */
    g.mc = min64(MC, ceil_div(ceil_div(M, threads), MR) * MR);
    int64_t m_blocks = ceil_div(M, g.mc);
    for (g.j0 = 0; g.j0 < N; g.j0 += NC) {
        g.nc = min64(NC, N - g.j0), g.n_panels = ceil_div(g.nc, NR);
        /* too few row blocks: split the columns among threads as well */
        g.n_chunks = m_blocks >= threads ? 1 : min64(threads, g.n_panels);
        g.chunk = ceil_div(g.n_panels, g.n_chunks);
        int64_t tasks = m_blocks * g.n_chunks;
        for (g.k0 = 0; g.k0 < K; g.k0 += KC) {
            g.kc = min64(KC, K - g.k0);
            g.beta = g.k0 == 0 ? beta : 1.0f;
            if (threads == 1) { /* no OpenMP region: even an idle one costs a syscall */
                pack_panels(&g, 0, g.n_panels);
                run_tasks(&g, Bp + (size_t)KC * NC, 0, tasks);
                continue;
            }
#pragma omp parallel num_threads(threads)
            {
                int t = 0;
#ifdef _OPENMP
                t = omp_get_thread_num();
#endif
#pragma omp for schedule(static)
                for (int64_t p = 0; p < g.n_panels; p++)
                    pack_panels(&g, p, p + 1);
                float *Ap = Bp + (size_t)KC * NC + (size_t)t * MC * KC;
#pragma omp for schedule(static)
                for (int64_t task = 0; task < tasks; task++)
                    run_tasks(&g, Ap, task, task + 1);
            }
        }
    }
    workspace_release(slot);
}
