/*
 * comm.c - the communicator's front end (qkv_comm, include/qkv.h) and its
 * one-process backend.
 *
 * Every collective is started non-blocking by a backend and then waited
 * for here, by polling: the wait can give up after the timeout, notice a
 * signal (mpirun sends SIGTERM to the survivors when a rank dies), and
 * never sits inside a blocking MPI call that a dead peer would leave
 * hanging. The first failure breaks the communicator for good: collectives
 * must be entered by every rank in the same order, and after one rank has
 * left that order no later call can be trusted to match.
 *
 * $QKV_COMM_LINK="LATENCY_US:GBIT_S" injects a slower link for measuring
 * (docs/distributed.md, the cost model): a collective is not reported done
 * before the time a ring over such a link would take, one transfer at a
 * time on the link, even when the real transport was faster.
 */
#include "comm_internal.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

size_t qkv__comm_dtype_size(qkv_dtype dt)
{
    switch (dt) {
    case QKV_DT_F32: return 4;
    case QKV_DT_F64: return 8;
    case QKV_DT_I64: return 8;
    default: return 0;
    }
}

/* ---- the one-process backend: every collective is done when started ---- */

static qkv_status local_open(qkv_comm *c)
{
    c->rank = 0, c->size = 1, c->local_rank = 0, c->local_size = 1;
    return QKV_OK;
}

static void local_close(qkv_comm *c, int clean) { (void)c, (void)clean; }

static qkv_status local_start(qkv_comm *c, qkv__comm_req *r)
{
    if (r->a.op == QKV__ALLGATHER)
        memcpy(r->a.buf, r->a.send, (size_t)r->a.count);
    (void)c;
    return QKV_OK;
}

static qkv_status local_test(qkv_comm *c, qkv__comm_req *r, int *done)
{
    (void)c, (void)r;
    *done = 1;
    return QKV_OK;
}

static const qkv__comm_backend comm_local = {"local", local_open, local_close, local_start,
                                             local_test};

/* ---- opening and closing ---- */

const char *qkv_comm_backends(void)
{
    return qkv__comm_have_mpi && qkv__comm_have_nccl ? "local mpi nccl"
           : qkv__comm_have_mpi                      ? "local mpi"
                                                     : "local";
}

int qkv_comm_launched(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE",
                                       "SLURM_NTASKS", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 1)
            return 1;
    }
    /* PMIx launchers (OpenMPI 5, prrte) name the rank, not always the size */
    return getenv("PMIX_RANK") != NULL && getenv("OMPI_COMM_WORLD_RANK") != NULL;
}

/* "LATENCY_US:GBIT_S", e.g. "50:25" for 50 us and 25 Gb/s. */
static qkv_status parse_link(qkv_comm *c, const char *s)
{
    double lat_us, gbit;
    if (!s || !*s)
        return QKV_OK;
    if (sscanf(s, "%lf:%lf", &lat_us, &gbit) != 2 || !(lat_us >= 0) || !(gbit > 0))
        return qkv_set_error(QKV_ERR_ARG, "QKV_COMM_LINK='%s': expected LATENCY_US:GBIT_S, "
                             "e.g. 50:25 (50 microseconds, 25 Gb/s)", s);
    c->link_latency = lat_us * 1e-6;
    c->link_bytes_per_s = gbit * 1e9 / 8.0;
    return QKV_OK;
}

qkv_comm *qkv_comm_open(const qkv_comm_opts *o)
{
    qkv_comm_kind kind = o ? o->kind : QKV_COMM_AUTO;
    if (kind == QKV_COMM_AUTO)
        kind = qkv__comm_have_mpi && qkv_comm_launched() ? QKV_COMM_MPI : QKV_COMM_LOCAL;
    const qkv__comm_backend *be = kind == QKV_COMM_LOCAL ? &comm_local
                                  : kind == QKV_COMM_MPI ? &qkv__comm_mpi
                                  : kind == QKV_COMM_NCCL ? &qkv__comm_nccl
                                                          : NULL;
    if (!be) {
        qkv_set_error(QKV_ERR_ARG, "comm_open: unknown backend %d", (int)kind);
        return NULL;
    }
    if ((kind == QKV_COMM_MPI && !qkv__comm_have_mpi) ||
        (kind == QKV_COMM_NCCL && !qkv__comm_have_nccl)) {
        qkv_set_error(QKV_ERR_STATE, "comm_open: this qkv was built without %s (it has: %s); "
                      "%s", be->name, qkv_comm_backends(),
                      kind == QKV_COMM_MPI ? "install libopenmpi-dev and rebuild"
                                           : "rebuild with `make NCCL=1` where CUDA and NCCL "
                                             "are installed");
        return NULL;
    }
    double timeout = o ? o->timeout_s : 0;
    if (!(timeout >= 0)) {
        qkv_set_error(QKV_ERR_ARG, "comm_open: timeout %g s is negative", timeout);
        return NULL;
    }
    if (timeout == 0) {
        const char *env = getenv("QKV_COMM_TIMEOUT");
        timeout = env && atof(env) > 0 ? atof(env) : 600.0;
    }
    qkv_comm *c = qkv__calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->be = be;
    c->timeout = timeout;
    if (parse_link(c, getenv("QKV_COMM_LINK")) != QKV_OK || be->open(c) != QKV_OK) {
        qkv__free(c);
        return NULL;
    }
    return c;
}

qkv_status qkv_comm_close(qkv_comm *c)
{
    if (!c)
        return QKV_OK;
    qkv_status st = c->broken;
    /* requests still under way: the ranks are no longer in step */
    for (int i = 0; i < QKV_COMM_REQUESTS && !st; i++)
        if (c->req[i].used)
            st = qkv_set_error(QKV_ERR_COMM, "comm_close: a collective is still under way");
    if (st && st == c->broken)
        qkv_set_error(st, "%s", c->why);
    c->be->close(c, st == QKV_OK);
    qkv__free(c);
    return st;
}

void qkv_comm_abandon(qkv_comm *c)
{
    if (c && !c->broken) {
        c->broken = QKV_ERR_COMM;
        snprintf(c->why, sizeof c->why, "rank %d left the run (an error on this rank)", c->rank);
    }
}

void qkv__comm_set_cancel(qkv_comm *c, const volatile sig_atomic_t *flag)
{
    if (c)
        c->cancel = flag;
}

int qkv_comm_rank(const qkv_comm *c) { return c ? c->rank : 0; }
int qkv_comm_size(const qkv_comm *c) { return c ? c->size : 1; }
int qkv_comm_local_rank(const qkv_comm *c) { return c ? c->local_rank : 0; }
int qkv_comm_local_size(const qkv_comm *c) { return c ? c->local_size : 1; }
const char *qkv_comm_backend(const qkv_comm *c) { return c ? c->be->name : "local"; }

void qkv_comm_get_stats(const qkv_comm *c, qkv_comm_stats *s)
{
    if (s)
        *s = c ? c->stats : (qkv_comm_stats){0};
}

/* ---- requests ---- */

static const char *op_name(qkv__comm_op op)
{
    switch (op) {
    case QKV__BCAST: return "broadcast";
    case QKV__ALLREDUCE: return "all-reduce";
    case QKV__ALLGATHER: return "all-gather";
    case QKV__BARRIER: return "barrier";
    }
    return "collective";
}

/* Breaks c with a message naming the collective r; returns the status. */
static qkv_status fail(qkv_comm *c, const qkv__comm_req *r, qkv_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static qkv_status fail(qkv_comm *c, const qkv__comm_req *r, qkv_status st, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(c->why, sizeof c->why, "rank %d of %d (%s): %s of %lld bytes: %s", c->rank, c->size,
             c->be->name, r ? op_name(r->a.op) : "collective", r ? (long long)r->bytes : 0LL,
             what);
    c->broken = st;
    return qkv_set_error(st, "%s", c->why);
}

/* The injected link's time for r's transfer over c->size ranks: a ring for
 * all-reduce (2 (p - 1) steps of bytes / p) and all-gather (p - 1 steps of
 * bytes), a binomial tree of latencies for a broadcast. */
static double link_seconds(const qkv_comm *c, const qkv__comm_req *r)
{
    double p = c->size, a = c->link_latency, B = (double)r->bytes, bw = c->link_bytes_per_s;
    if (p <= 1)
        return 0.0;
    switch (r->a.op) {
    case QKV__ALLREDUCE: return 2 * (p - 1) * a + 2 * (p - 1) / p * B / bw;
    case QKV__ALLGATHER: return (p - 1) * a + (p - 1) * B / bw;
    case QKV__BCAST: return ceil(log2(p)) * a + B / bw;
    case QKV__BARRIER: return 2 * ceil(log2(p)) * a;
    }
    return 0.0;
}

static int start(qkv_comm *c, const qkv__comm_args *a, int64_t bytes)
{
    if (c->broken) {
        qkv_set_error(c->broken, "%s", c->why);
        return -1;
    }
    int id = 0;
    while (id < QKV_COMM_REQUESTS && c->req[id].used)
        id++;
    if (id == QKV_COMM_REQUESTS) {
        qkv_set_error(QKV_ERR_STATE, "comm: %d collectives under way at once; wait for some "
                      "first", QKV_COMM_REQUESTS);
        return -1;
    }
    qkv__comm_req *r = &c->req[id];
    memset(r, 0, sizeof *r);
    r->used = 1, r->a = *a, r->bytes = bytes, r->started = qkv_now();
    if (c->link_bytes_per_s > 0) {
        double from = c->link_free > r->started ? c->link_free : r->started;
        r->link_done = c->link_free = from + link_seconds(c, r);
    }
    qkv_status st = c->be->start(c, r);
    if (st != QKV_OK) {
        r->used = 0;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        fail(c, r, st, "could not start: %s", msg);
        return -1;
    }
    c->stats.bytes += bytes;
    c->stats.calls++;
    return id;
}

static qkv__comm_req *request(qkv_comm *c, int id)
{
    if (id < 0 || id >= QKV_COMM_REQUESTS || !c->req[id].used) {
        qkv_set_error(QKV_ERR_ARG, "comm: no collective under way with request %d", id);
        return NULL;
    }
    return &c->req[id];
}

/* One look at r: *done once the backend has finished it and the injected
 * link's time has passed. */
static qkv_status poll(qkv_comm *c, qkv__comm_req *r, int *done)
{
    *done = 0;
    if (c->broken)
        return qkv_set_error(c->broken, "%s", c->why);
    int fin = 0;
    qkv_status st = c->be->test(c, r, &fin);
    if (st != QKV_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        r->used = 0;
        return fail(c, r, st, "%s", msg);
    }
    if (fin && (r->link_done == 0 || qkv_now() >= r->link_done)) {
        r->used = 0;
        *done = 1;
    }
    return QKV_OK;
}

qkv_status qkv_comm_test(qkv_comm *c, int id, int *done)
{
    if (!done)
        return qkv_set_error(QKV_ERR_ARG, "comm_test: done is NULL");
    if (!c) {
        *done = 1;
        return QKV_OK;
    }
    qkv__comm_req *r = request(c, id);
    return r ? poll(c, r, done) : QKV_ERR_ARG;
}

/* Polls until done: yields the core for the first millisecond (an answer
 * is usually that close), then sleeps in growing steps up to a
 * millisecond, so that a rank waiting on a shared core leaves it to the
 * rank it waits for. Gives up after the timeout or on a signal. */
qkv_status qkv_comm_wait(qkv_comm *c, int id)
{
    if (!c)
        return QKV_OK;
    qkv__comm_req *r = request(c, id);
    if (!r)
        return QKV_ERR_ARG;
    double t0 = qkv_now(), nap = 2e-6;
    qkv_status st = QKV_OK;
    for (;;) {
        int done = 0;
        if ((st = poll(c, r, &done)) != QKV_OK || done)
            break;
        double now = qkv_now();
        if (c->cancel && *c->cancel) {
            int sig = (int)*c->cancel;
            r->used = 0;
            st = fail(c, r, QKV_ERR_COMM, "stopped by signal %d (%s) while waiting for the "
                      "other ranks (mpirun signals the survivors when a rank dies)", sig,
                      sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "a signal");
            break;
        }
        if (now - r->started > c->timeout) {
            r->used = 0;
            st = fail(c, r, QKV_ERR_COMM, "no answer from the other ranks after %.0f s (the "
                      "timeout, $QKV_COMM_TIMEOUT): a rank died, stalls, or took another path",
                      now - r->started);
            break;
        }
        if (now - t0 < 1e-3) {
            sched_yield();
        } else {
            struct timespec ts = {0, (long)(nap * 1e9)};
            nanosleep(&ts, NULL);
            nap = nap * 2 < 1e-3 ? nap * 2 : 1e-3;
        }
    }
    c->stats.wait_seconds += qkv_now() - t0;
    return st;
}

/* ---- the blocking collectives: start, then wait ---- */

static qkv_status run(qkv_comm *c, const qkv__comm_args *a, int64_t bytes)
{
    int id = start(c, a, bytes);
    return id < 0 ? qkv_error_status() : qkv_comm_wait(c, id);
}

/* MPI counts are int: larger buffers go in pieces of at most 2^30 elements. */
#define PIECE ((int64_t)1 << 30)

qkv_status qkv_comm_broadcast(qkv_comm *c, void *buf, size_t bytes, int root)
{
    if (bytes && !buf)
        return qkv_set_error(QKV_ERR_ARG, "comm_broadcast: buf is NULL");
    if (root < 0 || root >= qkv_comm_size(c))
        return qkv_set_error(QKV_ERR_ARG, "comm_broadcast: root %d is not a rank (0..%d)", root,
                             qkv_comm_size(c) - 1);
    if (!c || c->size == 1)
        return c && c->broken ? qkv_set_error(c->broken, "%s", c->why) : QKV_OK;
    for (size_t at = 0; at < bytes; at += (size_t)PIECE) {
        size_t n = bytes - at < (size_t)PIECE ? bytes - at : (size_t)PIECE;
        qkv__comm_args a = {.op = QKV__BCAST, .buf = (char *)buf + at, .count = (int64_t)n,
                            .dtype = QKV_DT_U8, .root = root};
        qkv_status st = run(c, &a, (int64_t)n);
        if (st)
            return st;
    }
    return QKV_OK;
}

static qkv_status check_reduce(const char *fn, const void *buf, int64_t n, qkv_dtype dt)
{
    if (n < 0 || (n > 0 && !buf))
        return qkv_set_error(QKV_ERR_ARG, "%s: %s", fn, n < 0 ? "n is negative" : "buf is NULL");
    if (!qkv__comm_dtype_size(dt))
        return qkv_set_error(QKV_ERR_ARG, "%s: dtype %d is not one of F32, F64, I64", fn,
                             (int)dt);
    return QKV_OK;
}

qkv_status qkv_comm_allreduce(qkv_comm *c, void *buf, int64_t n, qkv_dtype dtype)
{
    qkv_status st = check_reduce("comm_allreduce", buf, n, dtype);
    if (st || !c)
        return st;
    if (c->size == 1)
        return c->broken ? qkv_set_error(c->broken, "%s", c->why) : QKV_OK;
    size_t es = qkv__comm_dtype_size(dtype);
    for (int64_t at = 0; at < n && !st; at += PIECE) {
        int64_t k = n - at < PIECE ? n - at : PIECE;
        qkv__comm_args a = {.op = QKV__ALLREDUCE, .buf = (char *)buf + (size_t)at * es,
                            .count = k, .dtype = dtype};
        st = run(c, &a, k * (int64_t)es);
    }
    return st;
}

int qkv_comm_iallreduce(qkv_comm *c, void *buf, int64_t n, qkv_dtype dtype)
{
    if (check_reduce("comm_iallreduce", buf, n, dtype) != QKV_OK)
        return -1;
    if (n > PIECE) {
        qkv_set_error(QKV_ERR_ARG, "comm_iallreduce: %lld elements; at most 2^30 at once",
                      (long long)n);
        return -1;
    }
    if (!c) /* one process: nothing to add; a request that is done */
        return 0;
    qkv__comm_args a = {.op = QKV__ALLREDUCE, .buf = buf, .count = n, .dtype = dtype};
    return start(c, &a, n * (int64_t)qkv__comm_dtype_size(dtype));
}

qkv_status qkv_comm_allgather(qkv_comm *c, const void *send, size_t bytes, void *recv)
{
    if (bytes && (!send || !recv))
        return qkv_set_error(QKV_ERR_ARG, "comm_allgather: %s is NULL", send ? "recv" : "send");
    size_t p = (size_t)qkv_comm_size(c);
    const char *s = send, *r = recv;
    if (bytes && s < r + bytes * p && r < s + bytes)
        return qkv_set_error(QKV_ERR_ARG, "comm_allgather: send and recv overlap");
    if (bytes > (size_t)PIECE)
        return qkv_set_error(QKV_ERR_ARG, "comm_allgather: %zu bytes per rank; at most 2^30",
                             bytes);
    if (!c) {
        memcpy(recv, send, bytes);
        return QKV_OK;
    }
    qkv__comm_args a = {.op = QKV__ALLGATHER, .buf = recv, .send = send,
                        .count = (int64_t)bytes, .dtype = QKV_DT_U8};
    return run(c, &a, (int64_t)bytes);
}

qkv_status qkv_comm_barrier(qkv_comm *c)
{
    if (!c)
        return QKV_OK;
    qkv__comm_args a = {.op = QKV__BARRIER};
    return run(c, &a, 0);
}
