/* threads.c - one thread count for OpenMP kernels and for BLAS. */
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
    openblas_set_num_threads(n);
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

int qkv_threads(void)
{
    qkv__threads_init();
    return n_threads;
}
