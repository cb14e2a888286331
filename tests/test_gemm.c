/* test_gemm.c - the built-in GEMM (whichever backend qkv_k_gemm uses) and
 * the linked one, against the double-accumulating reference, for the four
 * transpose combinations and sizes that cut every block and tile; plus
 * thread-count invariance, no allocation once warm, and qkv_set_threads
 * reaching OpenMP (and keeping OpenBLAS's own pool at one thread).
 *
 * Tolerance: the classic bound for a float dot product of length K is
 * |error| <= K u sum|a b| (u = 2^-24); we allow (K + 4) FLT_EPSILON (= 2u)
 * times sum |alpha a b| + |beta c|, elementwise. A kernel that drops or
 * doubles one product misses by about sum|a b| / K, far outside it. */
#include "test.h"

#include "kernels/gemm.h"
#include "kernels/kernels.h"

#include <float.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef QKV_OPENBLAS
int openblas_get_num_threads(void);
#endif

typedef void (*gemm_fn)(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                        const float *, int64_t, float, float *, int64_t);

typedef struct {
    int64_t M, N, K, pad; /* pad: extra floats per row (lda > cols) */
    float alpha, beta;
} gemm_case;

static float *rand_buf(qkv_rng *r, int64_t n)
{
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++)
        p[i] = (float)(2 * qkv_rng_uniform(r) - 1);
    return p;
}

/* Runs one case through `fn` and checks every element against the bound;
 * returns the worst error measured in units of the bound (<= 1 passes). */
static double run_case(gemm_fn fn, bool ta, bool tb, gemm_case c, uint64_t seed)
{
    qkv_rng r;
    qkv_rng_seed(&r, seed);
    int64_t arows = ta ? c.K : c.M, acols = ta ? c.M : c.K;
    int64_t brows = tb ? c.N : c.K, bcols = tb ? c.K : c.N;
    int64_t lda = acols + c.pad, ldb = bcols + c.pad, ldc = c.N + c.pad;
    float *A = rand_buf(&r, arows * lda), *B = rand_buf(&r, brows * ldb);
    float *C0 = rand_buf(&r, c.M * ldc);
    if (c.beta == 0.0f) /* beta = 0 must not read C: NaN would survive */
        for (int64_t i = 0; i < c.M * ldc; i++)
            C0[i] = NAN;
    float *got = malloc((size_t)(c.M * ldc) * sizeof *got);
    float *want = malloc((size_t)(c.M * ldc) * sizeof *want);
    float *bound = malloc((size_t)(c.M * ldc) * sizeof *bound);
    float *absA = malloc((size_t)(arows * lda) * sizeof *absA);
    float *absB = malloc((size_t)(brows * ldb) * sizeof *absB);
    for (int64_t i = 0; i < arows * lda; i++)
        absA[i] = fabsf(A[i]);
    for (int64_t i = 0; i < brows * ldb; i++)
        absB[i] = fabsf(B[i]);
    memcpy(got, C0, (size_t)(c.M * ldc) * sizeof *got);
    memcpy(want, C0, (size_t)(c.M * ldc) * sizeof *want);
    fn(ta, tb, c.M, c.N, c.K, c.alpha, A, lda, B, ldb, c.beta, got, ldc);
    qkv_k_gemm_ref(ta, tb, c.M, c.N, c.K, c.alpha, A, lda, B, ldb, c.beta, want, ldc);
    qkv_k_gemm_ref(ta, tb, c.M, c.N, c.K, 1.0f, absA, lda, absB, ldb, 0.0f, bound, ldc);
    double worst = 0;
    for (int64_t i = 0; i < c.M; i++)
        for (int64_t j = 0; j < c.N; j++) {
            int64_t at = i * ldc + j;
            double cb = c.beta == 0.0f ? 0.0 : fabs(c.beta * C0[at]);
            double tol = (c.K + 4) * FLT_EPSILON * (fabs(c.alpha) * bound[at] + cb) + 1e-30;
            double e = fabs((double)got[at] - want[at]) / tol;
            if (!(e <= worst)) /* NaN sticks */
                worst = e;
        }
    /* the padding between rows of C is not the GEMM's to touch */
    for (int64_t i = 0; i < c.M && c.pad; i++)
        for (int64_t j = c.N; j < ldc; j++)
            if (memcmp(&got[i * ldc + j], &C0[i * ldc + j], sizeof(float)))
                worst = INFINITY;
    free(A), free(B), free(C0), free(got), free(want), free(bound), free(absA), free(absB);
    return worst;
}

static const gemm_case cases[] = {
    {1, 1, 1, 0, 1.0f, 0.0f},       {7, 7, 7, 0, 1.0f, 0.0f},
    {33, 33, 33, 3, 1.0f, 1.0f},    {257, 257, 257, 0, 1.0f, 0.0f},
    {1, 257, 33, 5, 0.5f, -1.5f},   {257, 1, 7, 0, 1.0f, 0.0f},
    {33, 7, 257, 1, -2.0f, 0.25f},  {7, 1100, 33, 0, 1.0f, 0.0f},
    {7, 1025, 257, 2, 1.0f, 1.0f},  {200, 65, 300, 0, 1.0f, 0.0f},
    {65, 129, 0, 1, 1.0f, 0.5f},    {13, 31, 5, 0, 0.0f, 2.0f},
    /* the unpacked path for tiny products (attention's per-head blocks):
     * one vector, several, more than 64 columns, a transposed B too big
     * to copy (dot products) */
    {10, 10, 8, 1, 1.0f, 0.5f},     {9, 17, 24, 0, 0.5f, 0.0f},
    {5, 200, 30, 3, 1.0f, 1.0f},    {2, 100, 64, 0, -1.0f, 0.0f},
};

static void check_all(gemm_fn fn, const char *name)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int t = 0; t < 4; t++) {
            bool ta = t & 1, tb = t & 2;
            gemm_case c = cases[i];
            double e = run_case(fn, ta, tb, c, 100 + i);
            CHECK(e <= 1.0,
                  "%s ta=%d tb=%d M=%lld N=%lld K=%lld pad=%lld alpha=%g beta=%g: error %.3g "
                  "bounds",
                  name, ta, tb, (long long)c.M, (long long)c.N, (long long)c.K,
                  (long long)c.pad, c.alpha, c.beta, e);
        }
}

TEST(gemm_builtin_matches_reference)
{
    check_all(qkv_k_gemm_builtin, qkv_k_gemm_builtin_isa());
}

TEST(gemm_backend_matches_reference) { check_all(qkv_k_gemm, qkv_k_gemm_backend()); }

/* The checker itself: a GEMM that loses one product must fail it. */
static void gemm_drops_last_k(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                              const float *A, int64_t lda, const float *B, int64_t ldb,
                              float beta, float *C, int64_t ldc)
{
    qkv_k_gemm_ref(ta, tb, M, N, K > 1 ? K - 1 : K, alpha, A, lda, B, ldb, beta, C, ldc);
}

TEST(gemm_check_catches_a_dropped_product)
{
    double e = run_case(gemm_drops_last_k, false, true, (gemm_case){33, 33, 257, 0, 1, 0}, 9);
    CHECK(e > 1.0, "a GEMM missing k = K-1 passed (error %.3g bounds)", e);
}

/* Each element's sum runs in the same order whatever the split among
 * threads, so 1 and 2 threads agree to the bit. */
TEST(gemm_builtin_same_bits_any_thread_count)
{
    int saved = qkv_threads();
    int64_t M = 300, N = 200, K = 300;
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    float *A = rand_buf(&r, M * K), *B = rand_buf(&r, K * N);
    float *C1 = malloc((size_t)(M * N) * sizeof *C1), *C2 = malloc((size_t)(M * N) * sizeof *C2);
    qkv_set_threads(1);
    qkv_k_gemm_builtin(false, false, M, N, K, 1.0f, A, K, B, N, 0.0f, C1, N);
    qkv_set_threads(2);
    qkv_k_gemm_builtin(false, false, M, N, K, 1.0f, A, K, B, N, 0.0f, C2, N);
    CHECK(memcmp(C1, C2, (size_t)(M * N) * sizeof *C1) == 0, "1 and 2 threads differ");
    qkv_set_threads(saved);
    free(A), free(B), free(C1), free(C2);
}

TEST(gemm_builtin_allocates_nothing_once_warm)
{
    int64_t M = 300, N = 300, K = 300;
    qkv_rng r;
    qkv_rng_seed(&r, 6);
    float *A = rand_buf(&r, M * K), *B = rand_buf(&r, K * N), *C = rand_buf(&r, M * N);
    qkv_k_gemm_builtin(false, true, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
    uint64_t before = qkv_malloc_count();
    for (int i = 0; i < 3; i++)
        qkv_k_gemm_builtin(i & 1, false, M, N, K, 1.0f, A, K, B, N, 1.0f, C, N);
    CHECK(qkv_malloc_count() == before, "%llu allocations in warm GEMMs",
          (unsigned long long)(qkv_malloc_count() - before));
    free(A), free(B), free(C);
}

TEST(set_threads_reaches_openmp_and_blas)
{
    int saved = qkv_threads();
    for (int n = 1; n <= 3; n++) {
        qkv_set_threads(n);
        CHECK(qkv_threads() == n, "qkv_threads() = %d after qkv_set_threads(%d)",
              qkv_threads(), n);
#ifdef _OPENMP
        CHECK(omp_get_max_threads() == n, "OpenMP has %d threads, want %d",
              omp_get_max_threads(), n);
#endif
#ifdef QKV_OPENBLAS /* one band per OpenMP thread, each OpenBLAS call serial */
        CHECK(openblas_get_num_threads() == 1, "OpenBLAS has %d threads of its own, want 1",
              openblas_get_num_threads());
#endif
    }
    qkv_set_threads(0); /* clamps to 1 */
    CHECK(qkv_threads() == 1, "qkv_set_threads(0) gave %d", qkv_threads());
    qkv_set_threads(saved);
}
