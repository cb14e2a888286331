/*
 * train_internal.h - what the trainer shares with checkpoint.c: a
 * checkpoint's part of a safetensors file, written into an open writer and
 * read from an open file, so that the trainer can add its own state to the
 * same file.
 */
#ifndef QKV_TRAIN_INTERNAL_H
#define QKV_TRAIN_INTERNAL_H

#include "params.h"

/* Adds the parameters, the optimizer's moments and step count (opt may be
 * NULL) and info to w, as qkv_checkpoint_save writes them. */
qkv_status qkv__checkpoint_add(qkv_st_writer *w, qkv_params *ps, qkv_optim *opt,
                               const qkv_checkpoint_info *info);
/* Restores them from f (`path` names it in messages); opt and info may be
 * NULL. */
qkv_status qkv__checkpoint_read(const qkv_st_file *f, const char *path, qkv_params *ps,
                                qkv_optim *opt, qkv_checkpoint_info *info);

/* ---- data parallelism over processes (ddp.c) ---- */

typedef struct qkv__ddp qkv__ddp;
/* Buckets over ps's trainable gradients, each at most bucket_bytes (an
 * entry larger than that alone), all-reduced through comm. NULL if out of
 * memory. */
qkv__ddp *qkv__ddp_new(qkv_params *ps, qkv_comm *comm, size_t bucket_bytes);
void qkv__ddp_free(qkv__ddp *d);
/* A step begins: no bucket started. */
void qkv__ddp_begin(qkv__ddp *d);
/* ctx's tape is built and its backward about to run into the store's
 * gradients: learns after which node each bucket is final and hooks the
 * backward so that each bucket's all-reduce starts then. */
void qkv__ddp_watch(qkv__ddp *d, qkv_ctx *ctx);
/* After backward (ctx: the watched context, or NULL): starts the buckets
 * not started yet and an all-reduce of scalars (n doubles, summed in
 * place), then waits for every one. skew_first (with no bucket started
 * yet): a barrier first, timed apart as the wait for the slowest rank. The
 * first failure, with the communicator's message. */
qkv_status qkv__ddp_finish(qkv__ddp *d, qkv_ctx *ctx, double *scalars, int n_scalars,
                           int skew_first);
qkv_train_comm_stats *qkv__ddp_stats(qkv__ddp *d);
/* " on each of 2 ranks (mpi)" for the recipes' first line; "" for one
 * process. A buffer of the calling thread's. */
const char *qkv__ranks_note(const qkv_comm *c);
/* One line on stdout: the all-reduce's buckets and the time waited for
 * them after backward (nothing without a communicator of several ranks). */
void qkv__print_comm_summary(qkv_trainer *t);
/* Batch norm's running statistics over ranks (shards.c): with c of several
 * ranks, the shards' contexts defer their updates past qkv_shards_run (which
 * no longer applies them) to qkv__shards_merge_bn_ranks, which every rank
 * calls after the same runs: the updates of every rank's shards merged in
 * rank order (qkv__bn_apply_deferred_ranks), so that N ranks of S shards
 * keep the running statistics of one process of N S shards, on every rank.
 * c NULL or of one rank: back to the join's update. */
void qkv__shards_defer_bn_to_ranks(qkv_shards *s, qkv_comm *c);
qkv_status qkv__shards_merge_bn_ranks(qkv_shards *s);
/* Forgets the deferred updates (a step run again to find a NaN). */
void qkv__shards_drop_bn(qkv_shards *s);
/* The trainer's buckets (trainer.c), NULL for one process. */
qkv__ddp *qkv__trainer_ddp(qkv_trainer *t);

#endif
