/* bench_util.h - what the model benchmarks (bench_mha.c, bench_transformer.c,
 * bench_vit.c) share: the clock, the median of timed steps, the memory a
 * step needs, and the "key value" lines that bench/table_models.py reads.
 * bench/peer_util.py is the PyTorch side's twin (bench/peer_ort.py follows
 * it too); all use the same method:
 *
 * - base: the resident memory once the runtime is up (threads set and one
 *   tiny step run, so that OpenMP's threads and BLAS exist), before the
 *   case builds anything; every byte after it is the case's, the GEMM
 *   workspaces included;
 * - `warmup` untimed steps; then the peak-RSS mark is reset
 *   (/proc/self/clear_refs) and `reps` steps are timed. The median step is
 *   this run's time, and the peak RSS of the timed steps (VmHWM) minus
 *   the base is the memory the case needs in its steady state.
 *
 * bench/run.sh runs each case in several rounds (fresh processes,
 * interleaved with the peers); the table takes the median and the range
 * of the rounds' figures. */
#ifndef QKV_BENCH_UTIL_H
#define QKV_BENCH_UTIL_H

#include "qkv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static inline double bench_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* CPU seconds the process has used, all its threads (user + sys): on a
 * loaded machine far steadier than the clock on the wall, at one thread;
 * at more it counts OpenMP's spinning waits too. */
static inline double bench_cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline int bench_by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static inline double bench_mib(double bytes) { return bytes / 1048576.0; }

/* ---- memory ---- */

/* Resident memory now (from /proc/self/statm), in MiB; 0 if unknown. */
static inline double bench_rss_now_mib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return bench_mib((double)resident * (double)sysconf(_SC_PAGESIZE));
}

/* The high-water mark of resident memory (VmHWM in /proc/self/status), in
 * MiB; 0 if unknown. */
static inline double bench_hwm_mib(void)
{
    double kib = 0;
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6))
            kib = atof(line + 6);
    if (f)
        fclose(f);
    return kib / 1024.0;
}

/* Resets VmHWM to the resident memory now ("5" to /proc/self/clear_refs,
 * Linux 4.0+), so that the next reading is the peak from here on. */
static inline void bench_reset_hwm(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

/* The whole process's peak RSS (getrusage), in MiB. */
static inline double bench_peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

/* ---- the command line ---- */

/* Thread count: --threads N, else $QKV_THREADS, else 2 (as bench/run.sh). */
static inline int bench_threads(int argc, char **argv)
{
    int threads = 2;
    const char *env = getenv("QKV_THREADS");
    if (env && atoi(env) > 0)
        threads = atoi(env);
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
    return threads;
}

/* The case named on the command line (the first argument not an option or
 * an option's value), or NULL. */
static inline const char *bench_case(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads")) {
            i++;
            continue;
        }
        if (argv[i][0] != '-')
            return argv[i];
    }
    return NULL;
}

/* Sets the thread count (bench_threads) and starts the runtime with one
 * tiny step, (8, 8) x (8, 8) forward and backward on a context of its own;
 * then takes the base, the resident memory before the case builds
 * anything, which the tables subtract from the peak on every side. */
static double bench_base_rss_mib;
static inline void bench_start(int argc, char **argv)
{
    qkv_set_threads(bench_threads(argc, argv));
    qkv_ctx *ctx = qkv_ctx_new();
    if (ctx) {
        qkv_tensor *a = qkv_requires_grad(qkv_full(ctx, 2, (int64_t[]){8, 8}, 0.5f));
        qkv_tensor *y = qkv_sum_all(ctx, qkv_matmul(ctx, a, a, 0, 0));
        if (!y || qkv_backward(ctx, y) != QKV_OK)
            fprintf(stderr, "bench: warm-up step: %s\n", qkv_error());
        qkv_ctx_free(ctx);
    }
    bench_base_rss_mib = bench_rss_now_mib();
    bench_reset_hwm();
}

/* ---- timing ---- */

/* One step of a benchmark: returns 0 on success. It leaves the step's
 * tensors in ctx, so that the arena's peak can be read before the reset. */
typedef int (*bench_step)(qkv_ctx *ctx, void *state);

typedef struct {
    double ms;          /* median milliseconds per step, -1 if a step failed */
    double cpu_ms;      /* median CPU milliseconds (user + sys, every thread) per step */
    size_t arena_peak;  /* the largest step arena of all steps, in bytes */
    double peak_mib;    /* VmHWM over the timed steps */
} bench_result;

#define BENCH_MAX_REPS 64

static inline bench_result bench_time(qkv_ctx *ctx, bench_step step, void *state, int warmup,
                                      int reps)
{
    bench_result r = {-1.0, -1.0, 0, 0.0};
    double ms[BENCH_MAX_REPS], cpu[BENCH_MAX_REPS];
    reps = reps > BENCH_MAX_REPS ? BENCH_MAX_REPS : reps;
    for (int i = 0; i < warmup + reps; i++) {
        double t0 = bench_now(), c0 = bench_cpu_now();
        if (step(ctx, state)) {
            fprintf(stderr, "bench: %s\n", qkv_error());
            return r;
        }
        double t = bench_now() - t0, c = bench_cpu_now() - c0;
        size_t peak = qkv_arena_peak(qkv_ctx_arena(ctx));
        r.arena_peak = peak > r.arena_peak ? peak : r.arena_peak;
        qkv_ctx_reset(ctx);
        if (i == warmup - 1)
            bench_reset_hwm(); /* the timed steps' peak from here */
        if (i >= warmup)
            ms[i - warmup] = 1e3 * t, cpu[i - warmup] = 1e3 * c;
    }
    qsort(ms, (size_t)reps, sizeof ms[0], bench_by_value);
    qsort(cpu, (size_t)reps, sizeof cpu[0], bench_by_value);
    r.ms = ms[reps / 2];
    r.cpu_ms = cpu[reps / 2];
    r.peak_mib = bench_hwm_mib();
    return r;
}

/* ---- the report ---- */

/* The key-value lines of one run of a case: time; memory as qkv accounts
 * it (step arena; parameters and their gradients, if the store has any;
 * optimizer moments; BLAS's own workspace is not in it, the RSS figures
 * are); and the process's memory as every side can report it: the timed
 * steps' peak RSS, the whole run's peak and the base. */
static inline void bench_report(const char *key, bench_result r, qkv_params *ps, qkv_optim *opt)
{
    int64_t values = 0, grads = 0, m1 = 0, m2 = 0;
    qkv_params_values(ps, &values);
    qkv_params_grads(ps, &grads);
    if (opt) {
        qkv_optim_state(opt, 0, &m1);
        qkv_optim_state(opt, 1, &m2);
    }
    if (r.ms < 0) {
        printf("%s_ms n/a\n", key);
    } else {
        printf("%s_ms %.3f\n", key, r.ms);
        printf("%s_cpu_ms %.3f\n", key, r.cpu_ms);
        printf("%s_arena_mib %.1f\n", key, bench_mib((double)r.arena_peak));
        printf("%s_peak_mib %.1f\n", key, r.peak_mib);
    }
    printf("%s_params_mib %.1f\n", key, bench_mib(4.0 * (double)(values + grads)));
    printf("%s_optim_mib %.1f\n", key, bench_mib(4.0 * (double)(m1 + m2)));
    printf("%s_rss_mib %.1f\n", key, bench_peak_rss_mib());
    printf("%s_base_mib %.1f\n", key, bench_base_rss_mib);
    fflush(stdout);
}

static inline float *bench_randn(qkv_rng *r, int64_t n)
{
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n && p; i++)
        p[i] = (float)qkv_rng_normal(r);
    return p;
}

#endif
