/*
 * comm_nccl.c - the communicator over NCCL (built with `make NCCL=1`:
 * -DQKV_NCCL, CUDA's runtime and NCCL; needs the MPI backend to start).
 *
 * MPI starts the ranks and carries NCCL's unique id from rank 0 to the
 * others; each rank then takes GPU local_rank (mod the GPUs it sees). qkv
 * computes on the CPU, so a collective copies its host buffer into a
 * device staging area, runs NCCL's collective there and copies the result
 * back, all queued on one stream; a CUDA event marks its end, which
 * comm.c polls (cudaEventQuery), with NCCL's asynchronous error checked on
 * every poll. A failure aborts the NCCL communicator (ncclCommAbort) so
 * that nothing waits on a dead peer.
 *
 * Not run in qkv's CI: the machines have no GPU (docs/distributed.md).
 * `make test` compiles this file with QKV_NCCL defined whenever nccl.h is
 * present, so that it keeps building.
 */
#include "comm_internal.h"

#if defined(QKV_NCCL) && defined(QKV_MPI)

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>

const int qkv__comm_have_nccl = 1;

typedef struct {
    void *mpi_impl;      /* the MPI backend's, which started the ranks */
    ncclComm_t nccl;
    cudaStream_t stream;
    char *dev;           /* staging area on the GPU */
    size_t cap, used;    /* its bytes, and those handed to requests under way */
    int in_flight;
} nccl_impl;

typedef struct {
    size_t offset, bytes;
    cudaEvent_t done;
} nccl_req;

_Static_assert(sizeof(nccl_req) <= 32, "a request's handle holds an nccl_req");

static qkv_status cuda_error(const char *what, cudaError_t e)
{
    return qkv_set_error(QKV_ERR_COMM, "%s: %s", what, cudaGetErrorString(e));
}

static qkv_status nccl_error(const char *what, ncclResult_t r)
{
    return qkv_set_error(QKV_ERR_COMM, "%s: %s", what, ncclGetErrorString(r));
}

static qkv_status nccl_open(qkv_comm *c)
{
    qkv_status st = qkv__comm_mpi.open(c);
    if (st)
        return st;
    nccl_impl *n = qkv__calloc(1, sizeof *n);
    if (!n) {
        qkv__comm_mpi.close(c, 0);
        return QKV_ERR_NOMEM;
    }
    n->mpi_impl = c->impl;
    c->impl = n;
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev < 1) {
        st = e != cudaSuccess ? cuda_error("comm_open (nccl): cudaGetDeviceCount", e)
                              : qkv_set_error(QKV_ERR_STATE, "comm_open (nccl): no GPU");
        goto fail;
    }
    if ((e = cudaSetDevice(c->local_rank % ndev)) != cudaSuccess) {
        st = cuda_error("comm_open (nccl): cudaSetDevice", e);
        goto fail;
    }
    ncclUniqueId id;
    ncclResult_t r = ncclSuccess;
    if (c->rank == 0 && (r = ncclGetUniqueId(&id)) != ncclSuccess) {
        st = nccl_error("comm_open (nccl): ncclGetUniqueId", r);
        goto fail;
    }
    /* the bootstrap: a blocking broadcast, once, before any training */
    if (MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
        st = qkv_set_error(QKV_ERR_COMM, "comm_open (nccl): broadcasting NCCL's id failed");
        goto fail;
    }
    if ((r = ncclCommInitRank(&n->nccl, c->size, id, c->rank)) != ncclSuccess) {
        st = nccl_error("comm_open (nccl): ncclCommInitRank", r);
        goto fail;
    }
    const char *mb = getenv("QKV_NCCL_STAGING_MB");
    n->cap = (size_t)(mb && atoi(mb) > 0 ? atoi(mb) : 256) << 20;
    if ((e = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaMalloc((void **)&n->dev, n->cap)) != cudaSuccess) {
        st = cuda_error("comm_open (nccl): the staging area", e);
        goto fail;
    }
    return QKV_OK;
fail:
    if (n->nccl)
        ncclCommAbort(n->nccl);
    c->impl = n->mpi_impl;
    qkv__free(n);
    qkv__comm_mpi.close(c, 0);
    return st;
}

static void nccl_close(qkv_comm *c, int clean)
{
    nccl_impl *n = c->impl;
    if (!n)
        return;
    if (clean) {
        cudaStreamSynchronize(n->stream);
        ncclCommDestroy(n->nccl);
    } else {
        ncclCommAbort(n->nccl);
    }
    cudaFree(n->dev);
    cudaStreamDestroy(n->stream);
    c->impl = n->mpi_impl;
    qkv__free(n);
    qkv__comm_mpi.close(c, clean);
}

static ncclDataType_t nccl_type(qkv_dtype dt)
{
    switch (dt) {
    case QKV_DT_F32: return ncclFloat32;
    case QKV_DT_F64: return ncclFloat64;
    case QKV_DT_I64: return ncclInt64;
    default: return ncclUint8;
    }
}

static qkv_status nccl_start(qkv_comm *c, qkv__comm_req *r)
{
    nccl_impl *n = c->impl;
    const qkv__comm_args *a = &r->a;
    size_t es = a->op == QKV__ALLREDUCE ? qkv__comm_dtype_size(a->dtype) : 1;
    size_t in = a->op == QKV__BARRIER ? 8 : (size_t)a->count * es;
    size_t total = a->op == QKV__ALLGATHER ? in * (size_t)(c->size + 1) : in;
    size_t off = (n->used + 255) & ~(size_t)255;
    if (off + total > n->cap)
        return qkv_set_error(QKV_ERR_NOMEM, "nccl: %zu bytes under way exceed the %zu MiB "
                             "staging area ($QKV_NCCL_STAGING_MB)", off + total, n->cap >> 20);
    nccl_req q = {.offset = off, .bytes = total};
    char *d = n->dev + off;
    const void *host_in = a->op == QKV__ALLGATHER ? a->send : a->buf;
    cudaError_t e = cudaSuccess;
    ncclResult_t res = ncclSuccess;
    if (a->op == QKV__BARRIER)
        e = cudaMemsetAsync(d, 0, 8, n->stream);
    else
        e = cudaMemcpyAsync(d, host_in, in, cudaMemcpyHostToDevice, n->stream);
    if (e != cudaSuccess)
        return cuda_error("nccl: copy to the GPU", e);
    switch (a->op) {
    case QKV__BCAST:
        res = ncclBroadcast(d, d, in, ncclUint8, a->root, n->nccl, n->stream);
        break;
    case QKV__ALLREDUCE:
        res = ncclAllReduce(d, d, (size_t)a->count, nccl_type(a->dtype), ncclSum, n->nccl,
                            n->stream);
        break;
    case QKV__ALLGATHER:
        res = ncclAllGather(d, d + in, in, ncclUint8, n->nccl, n->stream);
        break;
    case QKV__BARRIER:
        res = ncclAllReduce(d, d, 1, ncclInt64, ncclSum, n->nccl, n->stream);
        break;
    }
    if (res != ncclSuccess)
        return nccl_error("nccl: collective", res);
    if (a->op != QKV__BARRIER) {
        const char *from = a->op == QKV__ALLGATHER ? d + in : d;
        size_t out = a->op == QKV__ALLGATHER ? in * (size_t)c->size : in;
        if ((e = cudaMemcpyAsync(a->buf, from, out, cudaMemcpyDeviceToHost, n->stream)) !=
            cudaSuccess)
            return cuda_error("nccl: copy from the GPU", e);
    }
    if ((e = cudaEventCreateWithFlags(&q.done, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventRecord(q.done, n->stream)) != cudaSuccess)
        return cuda_error("nccl: event", e);
    memcpy(r->handle, &q, sizeof q);
    n->used = off + total;
    n->in_flight++;
    return QKV_OK;
}

static qkv_status nccl_test(qkv_comm *c, qkv__comm_req *r, int *done)
{
    nccl_impl *n = c->impl;
    nccl_req q;
    memcpy(&q, r->handle, sizeof q);
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(n->nccl, &async) == ncclSuccess && async != ncclSuccess &&
        async != ncclInProgress)
        return nccl_error("nccl", async);
    cudaError_t e = cudaEventQuery(q.done);
    if (e == cudaErrorNotReady) {
        *done = 0;
        return QKV_OK;
    }
    if (e != cudaSuccess)
        return cuda_error("nccl: cudaEventQuery", e);
    cudaEventDestroy(q.done);
    *done = 1;
    if (--n->in_flight == 0)
        n->used = 0;
    return QKV_OK;
}

const qkv__comm_backend qkv__comm_nccl = {"nccl", nccl_open, nccl_close, nccl_start,
                                          nccl_test};

#else /* built without NCCL */

const int qkv__comm_have_nccl = 0;

static qkv_status no_nccl(qkv_comm *c)
{
    (void)c;
    return qkv_set_error(QKV_ERR_STATE, "this qkv was built without NCCL (make NCCL=1)");
}
static void no_close(qkv_comm *c, int clean) { (void)c, (void)clean; }
static qkv_status no_start(qkv_comm *c, qkv__comm_req *r)
{
    (void)r;
    return no_nccl(c);
}
static qkv_status no_test(qkv_comm *c, qkv__comm_req *r, int *done)
{
    (void)r, (void)done;
    return no_nccl(c);
}
const qkv__comm_backend qkv__comm_nccl = {"nccl", no_nccl, no_close, no_start, no_test};

#endif
