/*
 * comm_mpi.c - the communicator over MPI (built when make finds mpicc:
 * -DQKV_MPI). Every collective is MPI's non-blocking one (MPI_Ibcast,
 * MPI_Iallreduce, MPI_Iallgather, MPI_Ibarrier) on a duplicate of
 * MPI_COMM_WORLD whose errors are returned, not fatal; comm.c polls it
 * with MPI_Test, so that a dead peer ends in a timeout or a signal rather
 * than a hang inside MPI_Wait.
 *
 * MPI is initialised by the first qkv_comm_open and finalised when the
 * last communicator closes cleanly (never twice: MPI cannot start again).
 * A program that initialised MPI itself keeps it.
 */
#include "comm_internal.h"

#ifdef QKV_MPI

#include <mpi.h>
#include <stdio.h>

const int qkv__comm_have_mpi = 1;

_Static_assert(sizeof(MPI_Request) <= 32, "an MPI_Request fits the request's handle");

static int n_open;        /* MPI communicators qkv holds */
static int we_initialised; /* qkv called MPI_Init_thread */

typedef struct {
    MPI_Comm comm;
} mpi_impl;

static qkv_status mpi_error(const char *what, int rc)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error %d", rc);
    return qkv_set_error(QKV_ERR_COMM, "%s: %s", what, msg);
}

static qkv_status mpi_open(qkv_comm *c)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (fin)
        return qkv_set_error(QKV_ERR_STATE, "comm_open: MPI was finalised (by an earlier "
                                            "qkv_comm_close); it cannot start again");
    if (!init) {
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS)
            return mpi_error("comm_open: MPI_Init_thread", rc);
        we_initialised = 1;
    }
    mpi_impl *m = qkv__calloc(1, sizeof *m);
    if (!m)
        return QKV_ERR_NOMEM;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm);
    if (rc != MPI_SUCCESS) {
        qkv__free(m);
        return mpi_error("comm_open: MPI_Comm_dup", rc);
    }
    MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(m->comm, &c->rank);
    MPI_Comm_size(m->comm, &c->size);
    MPI_Comm node;
    if (MPI_Comm_split_type(m->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_rank(node, &c->local_rank);
        MPI_Comm_size(node, &c->local_size);
        MPI_Comm_free(&node);
    } else {
        c->local_rank = c->rank, c->local_size = c->size;
    }
    c->impl = m;
    n_open++;
    return QKV_OK;
}

static void mpi_close(qkv_comm *c, int clean)
{
    mpi_impl *m = c->impl;
    if (!m)
        return;
    /* After a failure the other ranks may never come: freeing the
     * communicator or finalising would wait for them. */
    if (clean) {
        MPI_Comm_free(&m->comm);
        if (--n_open == 0 && we_initialised)
            MPI_Finalize();
    }
    qkv__free(m);
    c->impl = NULL;
}

static MPI_Datatype mpi_type(qkv_dtype dt)
{
    switch (dt) {
    case QKV_DT_F32: return MPI_FLOAT;
    case QKV_DT_F64: return MPI_DOUBLE;
    case QKV_DT_I64: return MPI_INT64_T;
    default: return MPI_BYTE;
    }
}

static qkv_status mpi_start(qkv_comm *c, qkv__comm_req *r)
{
    mpi_impl *m = c->impl;
    MPI_Request q = MPI_REQUEST_NULL;
    int n = (int)r->a.count, rc = MPI_SUCCESS;
    switch (r->a.op) {
    case QKV__BCAST:
        rc = MPI_Ibcast(r->a.buf, n, MPI_BYTE, r->a.root, m->comm, &q);
        break;
    case QKV__ALLREDUCE:
        rc = MPI_Iallreduce(MPI_IN_PLACE, r->a.buf, n, mpi_type(r->a.dtype), MPI_SUM, m->comm,
                            &q);
        break;
    case QKV__ALLGATHER:
        rc = MPI_Iallgather(r->a.send, n, MPI_BYTE, r->a.buf, n, MPI_BYTE, m->comm, &q);
        break;
    case QKV__BARRIER:
        rc = MPI_Ibarrier(m->comm, &q);
        break;
    }
    if (rc != MPI_SUCCESS)
        return mpi_error("MPI", rc);
    memcpy(r->handle, &q, sizeof q);
    return QKV_OK;
}

static qkv_status mpi_test(qkv_comm *c, qkv__comm_req *r, int *done)
{
    MPI_Request q;
    memcpy(&q, r->handle, sizeof q);
    int rc = MPI_Test(&q, done, MPI_STATUS_IGNORE);
    memcpy(r->handle, &q, sizeof q);
    (void)c;
    return rc == MPI_SUCCESS ? QKV_OK : mpi_error("MPI_Test", rc);
}

const qkv__comm_backend qkv__comm_mpi = {"mpi", mpi_open, mpi_close, mpi_start, mpi_test};

#else /* built without MPI: qkv_comm_open refuses the kind before using these */

const int qkv__comm_have_mpi = 0;

static qkv_status no_mpi(qkv_comm *c)
{
    (void)c;
    return qkv_set_error(QKV_ERR_STATE, "this qkv was built without MPI");
}
static void no_close(qkv_comm *c, int clean) { (void)c, (void)clean; }
static qkv_status no_start(qkv_comm *c, qkv__comm_req *r)
{
    (void)r;
    return no_mpi(c);
}
static qkv_status no_test(qkv_comm *c, qkv__comm_req *r, int *done)
{
    (void)r, (void)done;
    return no_mpi(c);
}
const qkv__comm_backend qkv__comm_mpi = {"mpi", no_mpi, no_close, no_start, no_test};

#endif
