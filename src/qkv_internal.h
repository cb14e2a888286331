/*
 * qkv_internal.h - what the layers of qkv share and users do not see:
 * the context, the tape node, allocation helpers and the op enum.
 */
#ifndef QKV_INTERNAL_H
#define QKV_INTERNAL_H

#include "qkv.h"

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* ---- allocation (counted, for the no-malloc test) ---- */
void *qkv__malloc(size_t bytes);
void *qkv__calloc(size_t n, size_t size);
void *qkv__aligned_alloc(size_t bytes); /* 64-byte aligned */
/* The same, setting no error on failure: for a caller that has a fallback
 * and must leave the thread's error as its own caller set it. */
void *qkv__aligned_alloc_quiet(size_t bytes);
void qkv__free(void *p);
/* Large blocks of their own pages (page-aligned, zero): once freed they go
 * back to the system at once, whatever malloc's heap holds around them.
 * qkv__pages_free takes the size given to qkv__pages_alloc. */
void *qkv__pages_alloc(size_t bytes);
void qkv__pages_free(void *p, size_t bytes);
char *qkv__strdup(const char *s);

/* ---- ops: one enum, one name table ---- */
#define QKV_OP_LIST(X)                                                          \
    X(LEAF, "leaf") X(ADD, "add") X(SUB, "sub") X(MUL, "mul") X(DIV, "div")     \
    X(AFFINE, "affine") X(EXP, "exp") X(LOG, "log") X(SQRT, "sqrt")             \
    X(POW, "pow") X(ABS, "abs") X(TANH, "tanh") X(SIGMOID, "sigmoid")           \
    X(RELU, "relu") X(LEAKY_RELU, "leaky_relu") X(GELU, "gelu")                 \
    X(GELU_TANH, "gelu_tanh") X(SILU, "silu") X(SOFTPLUS, "softplus")           \
    X(SUM, "sum") X(MEAN, "mean") X(MAX, "max") X(MATMUL, "matmul")             \
    X(LINEAR, "linear") X(RESHAPE, "reshape") X(TRANSPOSE, "transpose")         \
    X(PERMUTE, "permute") X(CONTIGUOUS, "contiguous") X(CONCAT, "concat")       \
    X(SLICE, "slice") X(INDEX_SELECT, "index_select")                           \
    X(EMBEDDING, "embedding") X(MASKED_FILL, "masked_fill") X(WHERE, "where")   \
    X(SOFTMAX, "softmax") X(LOG_SOFTMAX, "log_softmax")                         \
    X(LAYER_NORM, "layer_norm") X(BATCH_NORM, "batch_norm")                     \
    X(DROPOUT, "dropout") X(CONV2D, "conv2d") X(MAX_POOL2D, "max_pool2d")       \
    X(AVG_POOL2D, "avg_pool2d") X(ADAPTIVE_AVG_POOL2D, "adaptive_avg_pool2d")   \
    X(CROSS_ENTROPY, "cross_entropy") X(MSE_LOSS, "mse_loss")                   \
    X(LINEAR_CROSS_ENTROPY, "linear_cross_entropy")                             \
    X(L1_LOSS, "l1_loss") X(SMOOTH_L1_LOSS, "smooth_l1_loss")                   \
    X(MASKED_SOFTMAX, "masked_softmax") X(ATTENTION, "attention")               \
    X(ROWS_PACK, "rows_pack") X(ROWS_UNPACK, "rows_unpack")                     \
    X(L2_NORMALIZE, "l2_normalize") X(GELU_LINEAR, "gelu_linear")               \
    X(BOX_CXCYWH_TO_XYXY, "box_cxcywh_to_xyxy")                                 \
    X(BOX_XYXY_TO_CXCYWH, "box_xyxy_to_cxcywh") X(BOX_IOU, "box_iou")           \
    X(GENERALIZED_BOX_IOU, "generalized_box_iou") X(GIOU_LOSS, "giou_loss")     \
    X(CUSTOM, "custom")

#define QKV__ENUM(e, s) QKV_OP_##e,
typedef enum { QKV_OP_LIST(QKV__ENUM) QKV_OP_COUNT } qkv_op;
#undef QKV__ENUM
extern const char *const qkv_op_names[QKV_OP_COUNT];

/* ---- the tape ---- */
#define QKV_MAX_INPUTS 4

typedef struct qkv_node qkv_node;
/* Reads n->out->grad and accumulates (+=) into the grads of n->in[i] that
 * need one (qkv__grad allocates them). */
typedef void (*qkv_backward_fn)(qkv_ctx *ctx, qkv_node *n);

struct qkv_node {
    qkv_op op;
    qkv_backward_fn backward;
    qkv_tensor *out;
    qkv_tensor *in[QKV_MAX_INPUTS];
    int n_in;
    void *saved[4];     /* arena memory the backward needs */
    int64_t iarg[8];    /* integer arguments of the op */
    float farg[4];      /* float arguments of the op */
    int grad_lent;      /* out->grad became an input's gradient (qkv__pass_grad) */
    int first_of_out;   /* out had no node before this one: the last of out's
                           nodes to run backward (concat records one per input) */
    qkv_node *prev;     /* the tape is a list, newest first */
};

/* A batch norm's running-statistics update, kept in the arena by a context
 * that defers them (a shard's, qkv_shards) until every shard is done:
 * qkv__bn_apply_deferred combines the shards' moments and applies each
 * update once, as one context over the whole batch would. */
typedef struct qkv__bn_update {
    float *running_mean, *running_var, *num_batches_tracked; /* each may be NULL */
    int64_t C, groups, count;    /* count: values per channel in each group */
    double momentum;
    double *mean, *m2;           /* (groups, C): moments of each group */
    struct qkv__bn_update *next; /* in call order */
} qkv__bn_update;

struct qkv_ctx {
    qkv_arena *arena;
    qkv_node *tape;
    int64_t n_nodes;
    int grad_enabled;
    int training;
    int check_nan;
    /* Attention always takes its unfused reference path (scores
     * materialised, masked softmax, dropout, matmul), as when weights are
     * asked for: a switch for the tests, which hold the fused kernel to it,
     * and for bench_mha --unfused. */
    int unfused;
    qkv_rng rng;
    struct qkv_profile *prof; /* QKV_PROFILE set: time per op (ctx.c), else NULL */
    const float *seed_grad;   /* the caller's buffer qkv_backward_with lends, or NULL */
    /* Gradient redirection (qkv_shards): a tensor whose grad points into
     * [grad_lo, grad_lo + grad_n) (a parameter store's gradients) has its
     * gradient accumulated at the same offset in grad_to instead, so that
     * contexts running on different threads never write the same memory. */
    const float *grad_lo;
    int64_t grad_n;
    float *grad_to;
    /* Batch norm in training mode: with bn_defer, running statistics are not
     * written but listed here (call order) for qkv__bn_apply_deferred (1:
     * one of several shards) or qkv__bn_apply_deferred_ranks (2: the one
     * shard of a rank; a synchronised batch norm, whose moments are every
     * rank's already, updates at once). */
    int bn_defer;
    qkv__bn_update *bn_first, *bn_last;
    /* The deferred updates and their moments live here, not in the step's
     * arena, so that a forward without gradients may rewind the arena past
     * them (ResNet's lean trunk, MoCo's key encoder); made on first use,
     * emptied with the lists (qkv__bn_clear). */
    qkv_arena *bn_arena;
    /* Called after each node's backward with the node's place on the tape,
     * 0 the newest (the trainer starts the all-reduce of gradients that no
     * later backward will touch); NULL: none. */
    void (*after_node)(void *user, int64_t k);
    void *after_user;
};

/* Sends this context's gradients of the buffer [lo, lo + n) to `to` (same
 * offsets), or back where they point if to is NULL. */
void qkv__ctx_redirect_grads(qkv_ctx *ctx, const float *lo, int64_t n, float *to);
/* Combines the deferred batch-norm updates of n contexts that ran the same
 * model on the shards of one batch (the k-th update of each context belongs
 * to the same call) and applies them in call order: for a call of one
 * group, the shards' moments merged into the whole batch's, one update; for
 * a grouped call, every group's update in shard order. Clears the lists.
 * An error (nothing applied) if the contexts' calls differ. */
qkv_status qkv__bn_apply_deferred(qkv_ctx *const *ctx, int n);
/* The same over ranks: every rank's n contexts' updates gathered (two
 * all-gathers through c, called by every rank) and applied on each in rank
 * order, as one process of (ranks x n) shards would; so the ranks' running
 * statistics stay equal and equal one process's. Scratch in ctx[0]'s
 * arena. Clears the lists. An error (nothing applied) if the ranks' calls
 * differ, or the communicator's. */
qkv_status qkv__bn_apply_deferred_ranks(qkv_ctx *const *ctx, int n, qkv_comm *c);
/* Empties ctx's list of deferred batch-norm updates (and their arena). */
void qkv__bn_clear(qkv_ctx *ctx);
/* Sets ctx->after_node and its argument (fn NULL: none). */
void qkv__ctx_set_backward_hook(qkv_ctx *ctx, void (*fn)(void *user, int64_t k), void *user);
/* Where a backward adds t's gradient: t->grad, redirected (see qkv_ctx). */
static inline float *qkv__grad_target(const qkv_ctx *ctx, const qkv_tensor *t)
{
    float *g = t->grad;
    if (ctx->grad_to && g) {
        uintptr_t a = (uintptr_t)g, lo = (uintptr_t)ctx->grad_lo;
        if (a >= lo && a < lo + (uintptr_t)ctx->grad_n * sizeof(float))
            return ctx->grad_to + (g - ctx->grad_lo);
    }
    return g;
}

/* Rewinds arena a to m, keeping the `bytes` at src: returns where they lie
 * now (moved down to the mark, or src itself if rewinding does not free
 * them), NULL with an error if out of memory. */
void *qkv__arena_rewind_keep(qkv_arena *a, qkv_arena_pos m, const void *src, size_t bytes);
/* Gives back `bytes` at p (from qkv_arena_alloc; nothing if p is not the
 * arena's or the block is small) before the reset: a later allocation
 * may reuse them. p must not be read or written afterwards. */
void qkv__arena_release(qkv_arena *a, void *p, size_t bytes);
/* The bytes of logits qkv_linear_cross_entropy makes at a time (32 MiB;
 * tests lower it to cross blocks with small inputs). */
extern size_t qkv__lce_block_bytes;
/* A flag (the trainer's signal flag) that makes the communicator's waits
 * give up as soon as it is non-zero; NULL: none. */
void qkv__comm_set_cancel(qkv_comm *c, const volatile sig_atomic_t *flag);

/* Arena memory of the step; NULL with an error if out of memory. */
void *qkv__alloc(qkv_ctx *ctx, size_t bytes);
float *qkv__floats(qkv_ctx *ctx, int64_t n);
/* Gives back n floats at p (from qkv__floats; NULL: nothing), a scratch
 * buffer the op has finished with, for the step's later allocations to
 * reuse (an im2col buffer, a kernel's workspace): without it every
 * convolution's columns would stay held until the step's reset. */
void qkv__floats_done(qkv_ctx *ctx, float *p, int64_t n);
/* A new contiguous arena tensor, uninitialised. */
qkv_tensor *qkv__tensor(qkv_ctx *ctx, int ndim, const int64_t *shape);
/* relu(x) written over x's values (PyTorch's ReLU(inplace=True)), a
 * tensor of its own for autograd: for a contiguous x whose values no later
 * op and no backward rule reads (batch norm's and add's outputs: their
 * backward rules read their inputs), it spares a copy of the activation. */
qkv_tensor *qkv__relu_inplace(qkv_ctx *ctx, qkv_tensor *x);
/* Dropout's mask (ops_dropout.c): element i kept, as keep = 1 / (1 - p),
 * when hash(seed, i) clears the threshold; nothing but these is stored. */
typedef struct {
    uint64_t seed, threshold;
    float keep; /* 1 / (1 - p), 0 when p == 1 */
} qkv__dropout_mask;
/* a mask for probability p, its seed one draw of the context's RNG */
qkv__dropout_mask qkv__dropout_draw(qkv_ctx *ctx, float p);
/* y (n) = x * mask, or y += x * mask if accumulate; and y *= mask */
void qkv__dropout_apply(float *y, const float *x, int64_t n, const qkv__dropout_mask *d,
                        bool accumulate);
void qkv__dropout_apply_inplace(float *y, int64_t n, const qkv__dropout_mask *d);
/* A linear layer's weight and bias gradients (ops_matmul.c): dW (out, in)
 * += G^T (out, R) X (R, in), db (out) += the sum of G's rows; either NULL
 * when not wanted. */
void qkv__linear_dw(const float *G, const float *X, float *gw, float *gb, int64_t R, int64_t in,
                    int64_t outf);
/* GELU written over x when nothing is recorded (gradients off, or x needs
 * none) and x is contiguous: for a caller that reads x no more, as an
 * inference MLP's hidden layer; else qkv_gelu. Returns x or the new output. */
qkv_tensor *qkv__gelu_over(qkv_ctx *ctx, qkv_tensor *x);
/* A view of x's data with the given shape and strides (no node). */
qkv_tensor *qkv__view(qkv_ctx *ctx, qkv_tensor *x, int ndim, const int64_t *shape,
                      const int64_t *stride, int64_t offset);
/* Records op `op` producing `out` from in[0..n_in) if gradients are on and an
 * input needs one; returns the node (fill saved/iarg/farg) or NULL if nothing
 * is recorded. Sets out->requires_grad. */
qkv_node *qkv__record(qkv_ctx *ctx, qkv_op op, qkv_backward_fn backward, qkv_tensor *out,
                      int n_in, qkv_tensor *const *in);
/* The gradient buffer of t (contiguous in t's shape), allocated zeroed from
 * the arena on first use, unless t is a parameter (it already has one). */
float *qkv__grad(qkv_ctx *ctx, qkv_tensor *t);
/* The gradient buffer of t for a backward that sets every element: a buffer
 * made here is left unzeroed and *accumulate is false (store); an existing
 * one is added to (*accumulate true). Spares zeroing and re-reading it. */
float *qkv__grad_for_write(qkv_ctx *ctx, qkv_tensor *t, bool *accumulate);
/* dt += g, where g = n->out->grad holds exactly t's elements in t's
 * contiguous order (a reshape, a contiguous copy, one side of a same-shape
 * add). When t has no gradient yet, g itself becomes it, no copy: g is the
 * step's own memory that only n's backward reads, and at most one input
 * of a node gets it (n->grad_lent). */
void qkv__pass_grad(qkv_ctx *ctx, qkv_node *n, qkv_tensor *t);

/* Fused attention over heads side by side, as multi-head attention projects
 * them: q (B, N, H D), k (B, M, H D), v (B, M, H Dv) (or sequence first,
 * (N, B, .), if !batch_first) -> out (B, N, H Dv) in q's layout. The same
 * as splitting heads, qkv_attention and merging, without the transposes
 * and their copies. o: masks, scale, dropout (weights unused). */
qkv_tensor *qkv__attention_heads(qkv_ctx *ctx, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v,
                                 int64_t H, bool batch_first, const qkv_attn_opts *o);
/* Self-attention of one packed projection x (B, N, 3 H D): q, k and v are
 * its column blocks [0, E), [E, 2E), [2E, 3E) (E = H D), batch first; out
 * (B, N, E). The gradient of all three lands in x's one buffer. */
qkv_tensor *qkv__attention_packed(qkv_ctx *ctx, qkv_tensor *x, int64_t H, const qkv_attn_opts *o);
/* Whether input i of node n wants a gradient. */
static inline bool qkv__wants(const qkv_node *n, int i)
{
    return n->in[i] && n->in[i]->requires_grad;
}
/* Finishes an op: NaN trap when enabled. Returns out (or NULL). */
qkv_tensor *qkv__done(qkv_ctx *ctx, qkv_op op, qkv_tensor *out);
/* Error for shape mismatch naming the op and both shapes. Returns NULL. */
qkv_tensor *qkv__shape_error(const char *op, const qkv_tensor *a, const qkv_tensor *b,
                             const char *why);
/* Null-input check for ops: returns true if any is NULL (error already set,
 * or set now). */
bool qkv__null_input(const char *op, int n, qkv_tensor *const *in);
#define QKV_INPUTS(op, ...)                                                     \
    do {                                                                        \
        qkv_tensor *const qkv__in_[] = {__VA_ARGS__};                           \
        if (qkv__null_input(op, (int)(sizeof qkv__in_ / sizeof qkv__in_[0]),    \
                            qkv__in_))                                          \
            return NULL;                                                        \
    } while (0)

/* Contiguous strides for a shape; returns numel. */
int64_t qkv__contig_strides(int ndim, const int64_t *shape, int64_t *stride);
int64_t qkv__shape_numel(int ndim, const int64_t *shape);

/* Strided copy / accumulate: dst[i] (=|+=) src[i] over a shape, both with
 * their own strides (in elements). */
void qkv__strided_copy(float *dst, const int64_t *dst_stride, const float *src,
                       const int64_t *src_stride, int ndim, const int64_t *shape,
                       bool accumulate);

/* Broadcasting: the output shape of a and b (NumPy rules). Returns ndim or -1. */
int qkv__broadcast_shape(const qkv_tensor *a, const qkv_tensor *b, int64_t *shape);
/* Strides of t seen as the broadcast shape (0 on broadcast axes). */
void qkv__broadcast_strides(const qkv_tensor *t, int ndim, const int64_t *shape,
                            int64_t *stride);
/* Sums g (contiguous, shape `shape`) into dst (contiguous, shape of t), which
 * broadcasts to `shape`: the backward of broadcasting. */
void qkv__reduce_to(float *dst, const qkv_tensor *t, const float *g, int ndim,
                    const int64_t *shape);

/* ---- JSON output (io/metrics.c) ---- */
/* s as a JSON string: quotes, backslashes and control characters escaped. */
void qkv__json_string(FILE *f, const char *s);

/* ---- threads ---- */
void qkv__threads_init(void);

#endif
