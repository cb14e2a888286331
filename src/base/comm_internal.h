/*
 * comm_internal.h - what the communicator's backends (comm_local in comm.c,
 * comm_mpi.c, comm_nccl.c) share with the front end in comm.c.
 *
 * The front end owns the requests, the waiting (timeout, signals, the
 * injected link), the broken state and the statistics; a backend only
 * starts a collective and says whether it has finished.
 */
#ifndef QKV_COMM_INTERNAL_H
#define QKV_COMM_INTERNAL_H

#include "../qkv_internal.h"

#include <signal.h>

typedef enum { QKV__BCAST, QKV__ALLREDUCE, QKV__ALLGATHER, QKV__BARRIER } qkv__comm_op;

/* One collective: what it moves. */
typedef struct {
    qkv__comm_op op;
    void *buf;          /* bcast, allreduce: in place; allgather: recv */
    const void *send;   /* allgather */
    int64_t count;      /* elements of dtype (bcast, allgather: bytes) */
    qkv_dtype dtype;
    int root;           /* bcast */
} qkv__comm_args;

typedef struct {
    int used;
    qkv__comm_args a;
    int64_t bytes;      /* this rank's buffer, for messages and the link */
    double started;     /* qkv_now() at the start */
    double link_done;   /* the injected link's end of this transfer (0: none) */
    _Alignas(16) unsigned char handle[32]; /* the backend's (an MPI_Request) */
} qkv__comm_req;

typedef struct qkv__comm_backend qkv__comm_backend;

struct qkv_comm {
    const qkv__comm_backend *be;
    int rank, size, local_rank, local_size;
    double timeout;
    qkv_status broken;             /* QKV_OK, or the error that broke it */
    char why[768];                 /* its message */
    const volatile sig_atomic_t *cancel; /* a signal flag that stops waits */
    double link_latency, link_bytes_per_s; /* injected link ($QKV_COMM_LINK); 0: none */
    double link_free;              /* when the injected link is next idle */
    qkv_comm_stats stats;
    qkv__comm_req req[QKV_COMM_REQUESTS];
    void *impl;                    /* the backend's */
};

struct qkv__comm_backend {
    const char *name;
    /* fills rank, size, local_rank, local_size, impl */
    qkv_status (*open)(qkv_comm *c);
    /* frees impl; `clean`: every rank is closing too (else do not wait) */
    void (*close)(qkv_comm *c, int clean);
    qkv_status (*start)(qkv_comm *c, qkv__comm_req *r);
    qkv_status (*test)(qkv_comm *c, qkv__comm_req *r, int *done);
};

/* Built without MPI (or NCCL), the backend's every call refuses with "this qkv
 * was built without MPI" (qkv_comm_open checks the have_ flags first). */
extern const qkv__comm_backend qkv__comm_mpi;
extern const qkv__comm_backend qkv__comm_nccl;
/* Whether the two are real (built in). */
extern const int qkv__comm_have_mpi, qkv__comm_have_nccl;

/* Bytes in one element of dtype (F32, F64, I64), 0 for others. */
size_t qkv__comm_dtype_size(qkv_dtype dt);

#endif
