/* threads.c - one thread count for every parallel loop of qkv, GEMM
 * included.
 *
 * OpenMP gets the count. OpenBLAS (when linked) is kept single-threaded:
 * qkv_k_gemm cuts a large GEMM into one band per OpenMP thread and calls
 * OpenBLAS on each band, so that one pool of threads serves every kernel.
 * OpenBLAS's own pthread pool would spin after each call and fight the
 * OpenMP workers for the cores (measured in BENCHMARKS.md). */
#include "../qkv_internal.h"

#include <stdlib.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef QKV_OPENBLAS
void openblas_set_num_threads(int);
#endif

static int n_threads; /* 0: not yet decided */

static void apply(int n)
{
    n_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
#ifdef QKV_OPENBLAS
    openblas_set_num_threads(1);
#endif
}

void qkv__threads_init(void)
{
    if (n_threads)
        return;
    int n = 0;
    const char *env = getenv("QKV_THREADS");
    if (env && *env)
        n = atoi(env);
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    apply(n);
}

void qkv_set_threads(int n) { apply(n >= 1 ? n : 1); }

/* Inside an active parallel region (qkv_shards runs one shard per thread)
 * a kernel has its thread to itself: 1. */
int qkv_threads(void)
{
    qkv__threads_init();
#ifdef _OPENMP
    if (omp_in_parallel())
        return 1;
#endif
    return n_threads;
}
