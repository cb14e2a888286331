/*
 * assignment.h - the linear sum assignment problem (min-cost bipartite
 * matching) by shortest augmenting paths, on a plain cost matrix.
 *
 * Shapes: cost (n, m) row-major doubles; k = min(n, m) pairs come out.
 */
#ifndef QKV_KERNELS_ASSIGNMENT_H
#define QKV_KERNELS_ASSIGNMENT_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    QKV_K_LSA_OK = 0,
    QKV_K_LSA_INVALID,    /* an entry is NaN or -inf; *bad is its flat index */
    QKV_K_LSA_INFEASIBLE, /* every complete assignment uses a +inf entry     */
} qkv_k_lsa_status;

/* Bytes of workspace qkv_k_linear_sum_assignment needs for (n, m). */
size_t qkv_k_lsa_workspace(int64_t n, int64_t m);

/* rows (k), cols (k): the k = min(n, m) pairs (rows[p], cols[p]) of least
 * total cost sum_p cost[rows[p], cols[p]], every row and every column used
 * at most once, rows strictly increasing (scipy's linear_sum_assignment
 * contract). cost (n, m); work: qkv_k_lsa_workspace(n, m) bytes, 8-byte
 * aligned. +inf entries are forbidden pairs. On an error rows and cols are
 * unspecified and *bad (may be NULL) gets the offending flat index. */
qkv_k_lsa_status qkv_k_linear_sum_assignment(int64_t *rows, int64_t *cols, const double *cost,
                                             int64_t n, int64_t m, void *work, int64_t *bad);

#endif
