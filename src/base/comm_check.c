/*
 * comm_check.c - the communicator checked and timed (`qkv comm`): every
 * collective against values each rank can compute alone, and the time of
 * an all-reduce by size, from which docs/distributed.md's cost model takes
 * its latency and bandwidth.
 */
#include "comm_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Rank r's value at i: exact in float, so that sums are exact too. */
static double value(int r, int64_t i) { return (double)((r + 1) * 1000 + (i % 997)); }

static qkv_status wrong(const char *what, int64_t i, double got, double want)
{
    return qkv_set_error(QKV_ERR_COMM, "comm_check: %s: element %lld is %.17g, expected %.17g",
                         what, (long long)i, got, want);
}

qkv_status qkv_comm_check(qkv_comm *c)
{
    int p = qkv_comm_size(c), me = qkv_comm_rank(c);
    enum { N = 4099 }; /* not a multiple of anything a ring cuts by */
    float *f = qkv__malloc(N * sizeof *f);
    double *d = qkv__malloc(N * sizeof *d);
    int64_t *q = qkv__malloc(N * sizeof *q);
    uint8_t *g = qkv__malloc((size_t)p * 64 + 64);
    qkv_status st = f && d && q && g ? QKV_OK : QKV_ERR_NOMEM;
    double sum_ranks = 0.0; /* sum over r of (r + 1) * 1000 */
    for (int r = 0; r < p; r++)
        sum_ranks += (r + 1) * 1000.0;
    /* all-reduce in three types */
    for (int64_t i = 0; !st && i < N; i++)
        f[i] = (float)value(me, i), d[i] = value(me, i) + 0.25, q[i] = (int64_t)value(me, i);
    if (!st)
        st = qkv_comm_allreduce(c, f, N, QKV_DT_F32);
    if (!st)
        st = qkv_comm_allreduce(c, d, N, QKV_DT_F64);
    if (!st)
        st = qkv_comm_allreduce(c, q, N, QKV_DT_I64);
    for (int64_t i = 0; !st && i < N; i++) {
        double want = sum_ranks + (double)p * (double)(i % 997);
        if (f[i] != (float)want)
            st = wrong("all-reduce (F32)", i, f[i], want);
        else if (d[i] != want + 0.25 * p)
            st = wrong("all-reduce (F64)", i, d[i], want + 0.25 * p);
        else if (q[i] != (int64_t)want)
            st = wrong("all-reduce (I64)", i, (double)q[i], want);
    }
    /* a non-blocking all-reduce, tested until done */
    for (int64_t i = 0; !st && i < N; i++)
        f[i] = (float)value(me, i);
    int req = st ? -1 : qkv_comm_iallreduce(c, f, N, QKV_DT_F32);
    if (!st && req < 0)
        st = qkv_error_status();
    for (int done = 0; !st && !done;)
        st = qkv_comm_test(c, req, &done);
    for (int64_t i = 0; !st && i < N; i++)
        if (f[i] != (float)(sum_ranks + (double)p * (double)(i % 997)))
            st = wrong("non-blocking all-reduce", i, f[i], sum_ranks + p * (double)(i % 997));
    /* broadcast from the last rank */
    for (int64_t i = 0; !st && i < N; i++)
        d[i] = value(me, i);
    if (!st)
        st = qkv_comm_broadcast(c, d, N * sizeof *d, p - 1);
    for (int64_t i = 0; !st && i < N; i++)
        if (d[i] != value(p - 1, i))
            st = wrong("broadcast", i, d[i], value(p - 1, i));
    /* all-gather of 64 bytes per rank */
    uint8_t mine[64];
    for (int i = 0; i < 64; i++)
        mine[i] = (uint8_t)(me * 64 + i);
    if (!st)
        st = qkv_comm_allgather(c, mine, 64, g);
    for (int64_t i = 0; !st && i < (int64_t)p * 64; i++)
        if (g[i] != (uint8_t)i)
            st = wrong("all-gather", i, g[i], (uint8_t)i);
    if (!st)
        st = qkv_comm_barrier(c);
    qkv__free(f);
    qkv__free(d);
    qkv__free(q);
    qkv__free(g);
    return st;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double qkv_comm_time_allreduce(qkv_comm *c, int64_t n, int iters)
{
    if (n < 1 || iters < 1) {
        qkv_set_error(QKV_ERR_ARG, "comm_time_allreduce: need n >= 1 and iters >= 1");
        return NAN;
    }
    float *buf = qkv__aligned_alloc((size_t)n * sizeof(float));
    double *t = qkv__malloc((size_t)iters * sizeof *t);
    double median = NAN;
    if (!buf || !t)
        goto done;
    memset(buf, 0, (size_t)n * sizeof(float));
    /* one untimed round, then each timed round starts together */
    if (qkv_comm_allreduce(c, buf, n, QKV_DT_F32) != QKV_OK)
        goto done;
    for (int i = 0; i < iters; i++) {
        if (qkv_comm_barrier(c) != QKV_OK)
            goto done;
        double t0 = qkv_now();
        if (qkv_comm_allreduce(c, buf, n, QKV_DT_F32) != QKV_OK)
            goto done;
        t[i] = qkv_now() - t0;
    }
    /* every rank reports rank 0's times */
    if (qkv_comm_broadcast(c, t, (size_t)iters * sizeof *t, 0) != QKV_OK)
        goto done;
    qsort(t, (size_t)iters, sizeof *t, by_value);
    median = t[iters / 2];
done:
    qkv__free(buf);
    qkv__free(t);
    return median;
}
