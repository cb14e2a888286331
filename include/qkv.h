/*
 * qkv.h - attention mechanisms and Transformer-family models in C.
 *
 * This one header is the whole public API. Read it top to bottom.
 *
 * OVERVIEW
 *
 *   A qkv_ctx holds a step arena and a tape. Every tensor made by an op comes
 *   from the arena; with gradients enabled each op also appends a node to the
 *   tape. qkv_backward(ctx, loss) walks the tape backwards and accumulates into
 *   each tensor's grad. qkv_ctx_reset(ctx) frees every step tensor at once, so a
 *   steady-state training step calls no malloc.
 *
 *   Parameters live in a qkv_params store, one flat buffer for values and one
 *   for gradients, named with the keys PyTorch's state_dict uses.
 *
 *   Worked example (tests/example.c, compiled and run by `make test`): fit
 *   y = x w^T + b by AdamW on four rows xs (4, 3) and targets ys (4, 1).
 *
 *     qkv_ctx *ctx = qkv_ctx_new();
 *     qkv_params *ps = qkv_params_new();
 *     qkv_tensor *w = qkv_params_add(ps, "weight", 2, (int64_t[]){1, 3}, 0);
 *     qkv_tensor *b = qkv_params_add(ps, "bias", 1, (int64_t[]){1}, 0);
 *     qkv_params_alloc(ps);                     // one allocation for all
 *     qkv_rng rng;
 *     qkv_rng_seed(&rng, 42);
 *     qkv_init_normal(&rng, w, 0.0f, 0.1f);
 *     qkv_init_constant(b, 0.0f);
 *     qkv_optim *opt = qkv_optim_new(ps, &(qkv_optim_config){
 *         .kind = QKV_ADAMW, .lr = 1e-1f, .beta1 = 0.9f, .beta2 = 0.999f,
 *         .eps = 1e-8f, .weight_decay = 0.0f});
 *     for (int step = 0; step < 300; step++) {
 *         qkv_tensor *x = qkv_from_data(ctx, 2, (int64_t[]){4, 3}, xs);
 *         qkv_tensor *y = qkv_from_data(ctx, 2, (int64_t[]){4, 1}, ys);
 *         qkv_tensor *p = qkv_add(ctx, qkv_matmul(ctx, x, w, 0, 1), b);
 *         qkv_tensor *loss = qkv_mse_loss(ctx, p, y, QKV_REDUCE_MEAN);
 *         if (!loss || qkv_backward(ctx, loss) != QKV_OK) {
 *             fprintf(stderr, "%s\n", qkv_error());
 *             return 1;
 *         }
 *         qkv_optim_step(opt);
 *         qkv_params_zero_grad(ps);
 *         qkv_ctx_reset(ctx);                   // frees the step's tensors
 *     }
 *     qkv_optim_free(opt);
 *     qkv_params_free(ps);
 *     qkv_ctx_free(ctx);
 *
 * CONTENTS (in this order)
 *
 *   base         errors, threads, progress bar, random numbers, arena
 *   tensors      the tensor type; the context (step arena, tape, modes)
 *   ops          arithmetic, unary, reductions, matmul, shape ops, softmax,
 *                norms, dropout, convolution, pooling, losses; attention;
 *                boxes (IoU, GIoU) and linear sum assignment
 *   training     parameters, initialisers, optimizers, clipping, shards
 *                (data parallelism inside a step), schedules
 *   io           safetensors, state dicts and checkpoints, datasets, the
 *                data loader, images, augmentations, pictures and metrics;
 *                COCO detection evaluation (mAP)
 *   nn           modules: Linear, attention, multi-head attention, positional
 *                encodings (DETR's 2-D sine too), the Transformer's blocks;
 *                Conv2d, BatchNorm2d, MaxPool2d, ResNet
 *   models       kernel regression, the translation Transformer, ViT, DETR's
 *                matcher and set criterion, MoCo
 *   model files  a trained model with its config and vocabularies, opened by
 *                kind (qkv_model_open), translation in one call
 *   trainer      qkv_trainer, the one training loop: a model brings a loss
 *                callback and hooks
 *   recipes      the CLI's experiments as library calls (qkv_vit_train,
 *                qkv_seq2seq_train, qkv_kreg_train, qkv_moco_train, the
 *                probe and fine-tuning), the kNN monitor, PCA
 *
 * SHAPES
 *
 *   Shapes are written outermost first, as PyTorch writes them. Legend used in
 *   the comments below (each letter means one thing):
 *     B batch, N queries and M keys (attention), S source and T target
 *     lengths (the Transformer), E model width, C channels or width,
 *     H heads, D head size, V vocabulary, K classes, R rows of a 2-D operand
 *     (a loss's samples), (H,W) image height, width.
 *   Tensors are float32 with up to QKV_MAX_DIMS dimensions. Sizes, counts and
 *   offsets are int64_t. An axis argument may be negative (counted from the end).
 *
 * ERRORS
 *
 *   No qkv function exits or aborts on bad input. Functions returning a pointer
 *   return NULL on error; functions returning qkv_status return non-zero. In
 *   both cases qkv_error() gives a message naming what was wrong (the op and
 *   both shapes, or the file, the tensor and the byte offset). An op given a
 *   NULL input returns NULL and keeps the first message, so a chain of ops can
 *   be checked once at its end. A function that succeeds leaves the thread's
 *   error as it found it (it never erases the caller's message); the
 *   exceptions say so: qkv_backward starts from a clean status, and
 *   qkv_loader_next clears it at the end of an epoch.
 *
 * THREADS
 *
 *   Kernels use OpenMP. The thread count comes from QKV_THREADS, else from
 *   the number of cores; qkv_set_threads() changes it. Inside a parallel
 *   region (qkv_shards runs one shard of a batch per thread) kernels run on
 *   their one thread. The same seed, machine and thread count give
 *   bit-identical training.
 */
#ifndef QKV_H
#define QKV_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(QKV_BUILD_SHARED)
#define QKV_API __declspec(dllexport)
#elif defined(__GNUC__)
#define QKV_API __attribute__((visibility("default")))
#else
#define QKV_API
#endif

#define QKV_VERSION "0.1.0"
#define QKV_MAX_DIMS 6

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum {
    QKV_OK = 0,
    QKV_ERR_ARG,    /* invalid argument (NULL, out of range, unknown name)  */
    QKV_ERR_SHAPE,  /* shapes do not fit the op                            */
    QKV_ERR_NOMEM,  /* an allocation failed                                */
    QKV_ERR_IO,     /* a file could not be opened, read or written         */
    QKV_ERR_FORMAT, /* a file is malformed, truncated or of the wrong kind */
    QKV_ERR_NAN,    /* a NaN or infinity appeared where it must not        */
    QKV_ERR_STATE,  /* a call made in the wrong state (e.g. no grad)       */
    QKV_ERR_INTERRUPTED, /* stopped by SIGINT or SIGTERM (after saving)   */
    QKV_ERR_COMM,   /* another process failed, died or did not answer in time */
} qkv_status;

/* The last error message set on this thread ("" if none). */
QKV_API const char *qkv_error(void);
/* The status of the last error on this thread (QKV_OK if none). */
QKV_API qkv_status qkv_error_status(void);
/* Sets the message (printf format) and returns `status`. */
QKV_API qkv_status qkv_set_error(qkv_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
QKV_API void qkv_clear_error(void);
QKV_API const char *qkv_status_name(qkv_status s);

/* ------------------------------------------------------------------------ */
/* Threads, memory accounting                                               */
/* ------------------------------------------------------------------------ */

/* Sets the number of threads used by kernels and BLAS (n >= 1). */
QKV_API void qkv_set_threads(int n);
/* The thread count in force: qkv_set_threads, else $QKV_THREADS, else cores. */
QKV_API int qkv_threads(void);
/* Number of heap allocations qkv has made since start (for the no-malloc
 * test: a steady-state training step leaves it unchanged). */
QKV_API uint64_t qkv_malloc_count(void);
/* The GEMM behind matmul and linear: "openblas" or "builtin". */
QKV_API const char *qkv_backend(void);
/* Seconds on a monotonic clock (for rates and elapsed times). */
QKV_API double qkv_now(void);

/* ------------------------------------------------------------------------ */
/* Progress: a one-line bar on stderr for long work, drawn only when stderr */
/* is a terminal ($QKV_PROGRESS=1 forces it on, =0 off), at most ten times  */
/* a second: "label  42% [=====     ] 21/50 00:03<00:04 7.0/s extra".       */
/* The struct lives with the caller; nothing is allocated.                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    int64_t total, done;
    char label[32];
    double t_start, t_drawn; /* seconds, monotonic clock */
    int enabled;             /* drawing at all */
    int width;               /* last line's length, for clearing it */
} qkv_progress;

/* total <= 0: no percent, bar or ETA, only the count. */
QKV_API void qkv_progress_start(qkv_progress *p, int64_t total, const char *label);
/* done items so far; extra (may be NULL) is appended, e.g. "loss 0.251". */
QKV_API void qkv_progress_update(qkv_progress *p, int64_t done, const char *extra);
/* Draws the last state and ends the line (if drawing). */
QKV_API void qkv_progress_finish(qkv_progress *p, const char *extra);
/* The line qkv_progress_update would draw `elapsed` seconds after start,
 * written into buf (no carriage return); returns buf. */
QKV_API char *qkv_progress_format(const qkv_progress *p, double elapsed, const char *extra,
                                  char *buf, size_t n);

/* ------------------------------------------------------------------------ */
/* Random numbers: xoshiro256** seeded through splitmix64. Deterministic      */
/* across machines; normal() uses Box-Muller in double precision.            */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint64_t s[4];
    int has_spare; /* Box-Muller keeps its second value */
    double spare;
} qkv_rng;

QKV_API void qkv_rng_seed(qkv_rng *r, uint64_t seed);
QKV_API uint64_t qkv_rng_u64(qkv_rng *r);
/* Uniform in [0, 1). */
QKV_API double qkv_rng_uniform(qkv_rng *r);
/* Standard normal. */
QKV_API double qkv_rng_normal(qkv_rng *r);
/* Uniform integer in [0, n). */
QKV_API uint64_t qkv_rng_below(qkv_rng *r, uint64_t n);
/* Fisher-Yates shuffle of idx[0..n). */
QKV_API void qkv_rng_shuffle(qkv_rng *r, int64_t *idx, int64_t n);
/* *out = a stream of its own for `key` (e.g. an example's index), seeded
 * from r's state and key; r does not advance. Streams split from equal rngs
 * with equal keys are equal, wherever and in whatever order they are made. */
QKV_API void qkv_rng_split(qkv_rng *out, const qkv_rng *r, uint64_t key);

/* ------------------------------------------------------------------------ */
/* Arena: a bump allocator that grows by chunks. Reset frees everything at   */
/* once; after a reset it keeps one chunk as large as the peak, so that the  */
/* next step of the same shape allocates nothing.                            */
/* ------------------------------------------------------------------------ */

typedef struct qkv_arena qkv_arena;

/* chunk_bytes: size of the first chunk (0: 1 MiB). NULL if out of memory. */
QKV_API qkv_arena *qkv_arena_new(size_t chunk_bytes);
QKV_API void qkv_arena_free(qkv_arena *a);
/* 64-byte aligned; NULL (with qkv_error) if out of memory. */
QKV_API void *qkv_arena_alloc(qkv_arena *a, size_t bytes);
QKV_API void qkv_arena_reset(qkv_arena *a);
/* Bytes in use now (blocks the backward gave back excluded), and the most
 * the arena's memory ever reached between two resets. */
QKV_API size_t qkv_arena_used(const qkv_arena *a);
QKV_API size_t qkv_arena_peak(const qkv_arena *a);
/* A point to come back to: qkv_arena_rewind(a, m) frees everything
 * allocated since qkv_arena_mark returned m (memory from before stays).
 * Inference uses it to drop a layer's intermediates once its output is
 * copied out, so that memory holds one layer, not the whole network. */
typedef struct {
    void *chunk;
    size_t chunk_used, used;
} qkv_arena_pos;
QKV_API qkv_arena_pos qkv_arena_mark(const qkv_arena *a);
QKV_API void qkv_arena_rewind(qkv_arena *a, qkv_arena_pos m);

/* ------------------------------------------------------------------------ */
/* Tensors                                                                   */
/* ------------------------------------------------------------------------ */

struct qkv_node;

typedef struct qkv_tensor {
    float *data;                   /* element [i0,i1,..] at sum(i_k*stride[k]) */
    float *grad;                   /* NULL until a gradient reaches it;
                                      always contiguous in `shape`            */
    int64_t shape[QKV_MAX_DIMS];
    int64_t stride[QKV_MAX_DIMS];  /* in elements */
    int ndim;
    int requires_grad;
    struct qkv_node *node;         /* the op that made it (NULL for leaves)   */
    const char *name;              /* parameters: the state_dict key          */
} qkv_tensor;

QKV_API int64_t qkv_numel(const qkv_tensor *t);
QKV_API int qkv_is_contiguous(const qkv_tensor *t);
/* Writes "(2, 3, 4)" into buf; returns buf. */
QKV_API char *qkv_shape_str(const qkv_tensor *t, char *buf, size_t n);
/* Same shape (ndim and every size). */
QKV_API int qkv_same_shape(const qkv_tensor *a, const qkv_tensor *b);
/* Normalises a possibly negative axis; -1 (with qkv_error) if out of range. */
QKV_API int qkv_axis(const qkv_tensor *t, int axis, const char *op);
/* Element at a flat index of the logical (row-major) order, for views too. */
QKV_API float qkv_get(const qkv_tensor *t, int64_t flat_index);

/* ------------------------------------------------------------------------ */
/* Context: step arena, tape, mode                                           */
/* ------------------------------------------------------------------------ */

typedef struct qkv_ctx qkv_ctx;

QKV_API qkv_ctx *qkv_ctx_new(void);
QKV_API void qkv_ctx_free(qkv_ctx *ctx);
/* Frees every tensor made since the last reset and clears the tape. */
QKV_API void qkv_ctx_reset(qkv_ctx *ctx);
QKV_API qkv_arena *qkv_ctx_arena(qkv_ctx *ctx);
/* With gradients off (inference) nothing is recorded on the tape. Returns the
 * previous setting. Default: on. */
QKV_API int qkv_set_grad_enabled(qkv_ctx *ctx, int enabled);
QKV_API int qkv_grad_enabled(const qkv_ctx *ctx);
/* Training mode: dropout active, batch norm uses batch statistics. Returns
 * the previous setting. Default: on. */
QKV_API int qkv_set_training(qkv_ctx *ctx, int training);
QKV_API int qkv_training(const qkv_ctx *ctx);
/* The context's RNG (dropout). Seed it for reproducible runs. */
QKV_API qkv_rng *qkv_ctx_rng(qkv_ctx *ctx);
/* Debug: trap the first op whose output holds a NaN or infinity (error
 * QKV_ERR_NAN naming the op). Off by default; on when $QKV_CHECK_NAN is set. */
QKV_API void qkv_set_check_nan(qkv_ctx *ctx, int on);

/* Inference memory: with gradients off, frees every tensor made since mark
 * (qkv_arena_mark(qkv_ctx_arena(ctx)), taken before a block of ops) except
 * y, the block's output, which is returned as a contiguous tensor of y's
 * shape, its data moved down to the mark (data older than the mark, such
 * as a parameter's, stays where it is). A model calls it after each of
 * its blocks with one mark taken before the first: each block's output
 * then takes the place of its input, and memory holds the weights, one
 * activation and one block's intermediates, not the whole network's.
 * Tensors made since the mark other than y must not be used afterwards. With gradients on it does
 * nothing and returns y (the backward needs the intermediates). y NULL:
 * rewinds and returns NULL (the error that made y NULL stands); NULL with
 * an error if out of memory. */
QKV_API qkv_tensor *qkv_ctx_rewind_keep(qkv_ctx *ctx, qkv_arena_pos mark, qkv_tensor *y);

/* Tensors in the step arena (freed by qkv_ctx_reset). */
QKV_API qkv_tensor *qkv_new(qkv_ctx *ctx, int ndim, const int64_t *shape);
QKV_API qkv_tensor *qkv_zeros(qkv_ctx *ctx, int ndim, const int64_t *shape);
QKV_API qkv_tensor *qkv_full(qkv_ctx *ctx, int ndim, const int64_t *shape, float value);
/* Copies n = prod(shape) floats from data. */
QKV_API qkv_tensor *qkv_from_data(qkv_ctx *ctx, int ndim, const int64_t *shape,
                                  const float *data);
/* Wraps caller-owned memory without copying (contiguous). */
QKV_API qkv_tensor *qkv_wrap(qkv_ctx *ctx, int ndim, const int64_t *shape, float *data);
/* Uniform [lo, hi) or normal(mean, std) from the context's RNG. */
QKV_API qkv_tensor *qkv_rand(qkv_ctx *ctx, int ndim, const int64_t *shape, float lo, float hi);
QKV_API qkv_tensor *qkv_randn(qkv_ctx *ctx, int ndim, const int64_t *shape, float mean,
                              float std);
/* Marks a leaf as needing a gradient (its grad is allocated and zeroed when
 * the first gradient reaches it). Returns t. */
QKV_API qkv_tensor *qkv_requires_grad(qkv_tensor *t);
/* A view sharing data with t, cut off from the tape (no gradient flows). */
QKV_API qkv_tensor *qkv_detach(qkv_ctx *ctx, qkv_tensor *t);

/* Runs backward from a scalar (one-element) tensor: seeds its grad with 1 and
 * accumulates (+=) into every tensor of the tape that needs a gradient.
 * Leaves (tensors no recorded op made, parameters among them) keep their
 * gradients; an op's output's gradient is given back to the arena once its
 * op's backward rule has run (its grad is NULL afterwards), so that the
 * backward needs memory for the gradients in flight only, as PyTorch frees
 * a non-leaf's .grad.
 * Starts from a clean status: the thread's error is cleared first, so an
 * earlier failure the caller handled cannot fail it; after it the status
 * and message are its own. A NULL loss returns the error of the op that
 * failed to make it (QKV_ERR_ARG if none is set). */
QKV_API qkv_status qkv_backward(qkv_ctx *ctx, qkv_tensor *loss);
/* As qkv_backward, seeding the output's gradient with `grad` (same shape).
 * `grad` is only read; when `out` is the newest op's output it is used in
 * place (no copy) and out->grad is NULL again afterwards. */
QKV_API qkv_status qkv_backward_with(qkv_ctx *ctx, qkv_tensor *out, const float *grad);

/* ------------------------------------------------------------------------ */
/* Ops. Each returns a new tensor (NULL on error) and, when gradients are on  */
/* and an input needs one, records its backward rule.                        */
/* ------------------------------------------------------------------------ */

/* Elementwise with NumPy broadcasting: a (..), b (..) -> broadcast shape. */
QKV_API qkv_tensor *qkv_add(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b);
QKV_API qkv_tensor *qkv_sub(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b);
QKV_API qkv_tensor *qkv_mul(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b);
QKV_API qkv_tensor *qkv_div(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b);
/* y = a*x + b elementwise with scalars (covers add/mul by a scalar, neg). */
QKV_API qkv_tensor *qkv_affine(qkv_ctx *ctx, qkv_tensor *x, float a, float b);
QKV_API qkv_tensor *qkv_scale(qkv_ctx *ctx, qkv_tensor *x, float a);
QKV_API qkv_tensor *qkv_neg(qkv_ctx *ctx, qkv_tensor *x);

/* Unary, elementwise. */
QKV_API qkv_tensor *qkv_exp(qkv_ctx *ctx, qkv_tensor *x);
QKV_API qkv_tensor *qkv_log(qkv_ctx *ctx, qkv_tensor *x);
QKV_API qkv_tensor *qkv_sqrt(qkv_ctx *ctx, qkv_tensor *x);
/* x^p for a scalar exponent p. */
QKV_API qkv_tensor *qkv_pow(qkv_ctx *ctx, qkv_tensor *x, float p);
/* |x|; gradient sign(x), 0 at 0 (as PyTorch). */
QKV_API qkv_tensor *qkv_abs(qkv_ctx *ctx, qkv_tensor *x);
QKV_API qkv_tensor *qkv_tanh(qkv_ctx *ctx, qkv_tensor *x);
QKV_API qkv_tensor *qkv_sigmoid(qkv_ctx *ctx, qkv_tensor *x);
QKV_API qkv_tensor *qkv_relu(qkv_ctx *ctx, qkv_tensor *x);
/* max(x, 0) + slope * min(x, 0). */
QKV_API qkv_tensor *qkv_leaky_relu(qkv_ctx *ctx, qkv_tensor *x, float slope);
/* x * Phi(x) with the erf (exact) form. */
QKV_API qkv_tensor *qkv_gelu(qkv_ctx *ctx, qkv_tensor *x);
/* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), PyTorch approximate='tanh'. */
QKV_API qkv_tensor *qkv_gelu_tanh(qkv_ctx *ctx, qkv_tensor *x);
/* x * sigmoid(x). */
QKV_API qkv_tensor *qkv_silu(qkv_ctx *ctx, qkv_tensor *x);
/* log(1 + exp(beta x)) / beta, linear where beta x > threshold (PyTorch: 1, 20). */
QKV_API qkv_tensor *qkv_softplus(qkv_ctx *ctx, qkv_tensor *x, float beta, float threshold);

/* Reductions over one axis (keepdim keeps it with size 1). */
QKV_API qkv_tensor *qkv_sum(qkv_ctx *ctx, qkv_tensor *x, int axis, int keepdim);
QKV_API qkv_tensor *qkv_mean(qkv_ctx *ctx, qkv_tensor *x, int axis, int keepdim);
/* Max over an axis; the gradient goes to the first maximal element (as
 * torch.max(x, dim)). If argmax is not NULL it receives the indices
 * (numel of the output, row-major). */
QKV_API qkv_tensor *qkv_max(qkv_ctx *ctx, qkv_tensor *x, int axis, int keepdim,
                            int64_t *argmax);
/* Reductions over several axes (naxes, axes may repeat sign conventions). */
QKV_API qkv_tensor *qkv_sum_axes(qkv_ctx *ctx, qkv_tensor *x, int naxes, const int *axes,
                                 int keepdim);
QKV_API qkv_tensor *qkv_mean_axes(qkv_ctx *ctx, qkv_tensor *x, int naxes, const int *axes,
                                  int keepdim);
/* Over all elements: shape (). */
QKV_API qkv_tensor *qkv_sum_all(qkv_ctx *ctx, qkv_tensor *x);
QKV_API qkv_tensor *qkv_mean_all(qkv_ctx *ctx, qkv_tensor *x);

/* Matrix product with transpose flags.
 * a (..., n, k) [or (..., k, n) if trans_a], b (..., k, m) [or (..., m, k) if
 * trans_b] -> (..., n, m). Leading (batch) dims broadcast; a 1-D b is not
 * promoted (use reshape). */
QKV_API qkv_tensor *qkv_matmul(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b, int trans_a,
                               int trans_b);
/* x (..., in) @ w^T (out, in) + bias (out) -> (..., out): nn.Linear. bias may
 * be NULL. */
QKV_API qkv_tensor *qkv_linear(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *w, qkv_tensor *bias);

/* Shape ops. Reshape and transpose return views when no copy is needed. */
/* One size may be -1 (inferred). */
QKV_API qkv_tensor *qkv_reshape(qkv_ctx *ctx, qkv_tensor *x, int ndim, const int64_t *shape);
QKV_API qkv_tensor *qkv_transpose(qkv_ctx *ctx, qkv_tensor *x, int axis0, int axis1);
/* perm[i] = which input axis becomes output axis i. */
QKV_API qkv_tensor *qkv_permute(qkv_ctx *ctx, qkv_tensor *x, const int *perm);
/* A contiguous copy (or x itself if already contiguous). */
QKV_API qkv_tensor *qkv_contiguous(qkv_ctx *ctx, qkv_tensor *x);
/* Concatenation of n tensors along axis (all other sizes equal). */
QKV_API qkv_tensor *qkv_concat(qkv_ctx *ctx, int n, qkv_tensor *const *xs, int axis);
/* Elements start, start+step, .. < end along axis (a view). */
QKV_API qkv_tensor *qkv_slice(qkv_ctx *ctx, qkv_tensor *x, int axis, int64_t start,
                              int64_t end, int64_t step);
/* Rows of x along axis picked by idx[0..n): x.index_select(axis, idx).
 * Embedding lookup is qkv_embedding. Indices out of range: error. */
QKV_API qkv_tensor *qkv_index_select(qkv_ctx *ctx, qkv_tensor *x, int axis,
                                     const int64_t *idx, int64_t n);
/* Packed rows: the n rows of a padded (B, T) batch that a model keeps,
 * at[r] = b T + t, strictly increasing. Per-token work (projections,
 * norms, the FFN, the loss) then runs on (n, C) instead of (B T, C); the
 * Transformer's padding is dead work when the masks hide it (qkv_seq2seq_loss). */
typedef struct {
    int64_t B, T, n;
    const int64_t *at;
} qkv_rows;
/* x (B, T, C) or (B T, C) -> (n, C): the kept rows. */
QKV_API qkv_tensor *qkv_rows_pack(qkv_ctx *ctx, qkv_tensor *x, const qkv_rows *r);
/* x (n, C) -> (B, T, C): the kept rows in place, zeros elsewhere. */
QKV_API qkv_tensor *qkv_rows_unpack(qkv_ctx *ctx, qkv_tensor *x, const qkv_rows *r);
/* weight (V, C), ids (n) -> (n, C); reshape the result for (B, T, C). */
QKV_API qkv_tensor *qkv_embedding(qkv_ctx *ctx, qkv_tensor *weight, const int64_t *ids,
                                  int64_t n);
/* Where mask != 0, value; else x. mask broadcasts to x; no gradient to mask. */
QKV_API qkv_tensor *qkv_masked_fill(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *mask, float value);
/* cond != 0 ? a : b, all three broadcast. */
QKV_API qkv_tensor *qkv_where(qkv_ctx *ctx, qkv_tensor *cond, qkv_tensor *a, qkv_tensor *b);

/* Normalisation and activations over the last axis. */
/* exp(x - max) / sum exp(x - max) along the last axis. -inf entries (masks)
 * get exactly 0 and no gradient; a row that is all -inf gives NaN, as
 * PyTorch. */
QKV_API qkv_tensor *qkv_softmax(qkv_ctx *ctx, qkv_tensor *x);
/* x - max - log(sum exp(x - max)): -inf entries stay -inf; an all -inf row
 * gives NaN, as PyTorch. */
QKV_API qkv_tensor *qkv_log_softmax(qkv_ctx *ctx, qkv_tensor *x);
/* Over the last axis of size C: (x - mean) / sqrt(var + eps) * weight + bias;
 * weight, bias (C) may be NULL. */
QKV_API qkv_tensor *qkv_layer_norm(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight,
                                   qkv_tensor *bias, float eps);
/* x / max(||x||, eps), the L2 norm taken along `axis` (F.normalize(x, p=2,
 * dim=axis, eps); PyTorch's eps is 1e-12): each vector along the axis
 * becomes a unit vector (MoCo's queries and keys). Gradient (dy - y (y . dy))
 * / ||x||, and dy / eps where the norm was clamped to eps. Errors: an axis
 * out of range, eps < 0. */
QKV_API qkv_tensor *qkv_l2_normalize(qkv_ctx *ctx, qkv_tensor *x, int axis, float eps);
/* x (B, C, ...) normalised per channel. In training mode (and not frozen) it
 * uses batch statistics and updates running_mean/var (unbiased variance) with
 * `momentum` (PyTorch's convention: new = (1-m) old + m batch); otherwise the
 * running statistics. running_* may be NULL in training mode. weight, bias (C)
 * may be NULL. */
QKV_API qkv_tensor *qkv_batch_norm(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight,
                                   qkv_tensor *bias, qkv_tensor *running_mean,
                                   qkv_tensor *running_var, float momentum, float eps);
/* Frozen batch norm (DETR's backbone): always running statistics, no update,
 * gradients flow to x only. */
QKV_API qkv_tensor *qkv_batch_norm_frozen(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight,
                                          qkv_tensor *bias, qkv_tensor *running_mean,
                                          qkv_tensor *running_var, float eps);
/* Batch norm with every option; the two above are this. x (B, C, ...) is
 * normalised per channel, y = (x - mean) / sqrt(var + eps) * weight + bias
 * (weight, bias (C) may be NULL):
 *   - training mode, not frozen: mean and the biased var of the batch. With
 *     groups G > 1 the batch is cut into G runs of B/G rows, each
 *     normalised with its own statistics (MoCo's shuffle BN on one machine:
 *     each group stands for one GPU's batch). The running statistics are
 *     updated once per group, in group order, as G calls on the groups
 *     would: new = (1 - momentum) old + momentum stat, with the unbiased
 *     variance for running_var; num_batches_tracked += 1 per group.
 *   - otherwise (eval mode or frozen): running_mean and running_var, which
 *     must be given; groups are ignored.
 *   - frozen (DETR's FrozenBatchNorm2d): never updates, and the gradient
 *     reaches x only, as scale = w rsqrt(rv + eps), shift = b - rm scale.
 * In a shard's context (qkv_shards with n > 1) each shard normalises its
 * rows with their own statistics, as each process of DistributedDataParallel
 * without SyncBatchNorm; the running statistics are written once, when
 * qkv_shards_run has joined the shards, from the whole batch's statistics
 * (the shards' means and sums of squares merged exactly): equal to one
 * context's update over the whole batch. opts NULL: training statistics
 * only, eps 1e-5. Errors: shapes (weight, bias, running (C); one value in
 * num_batches_tracked; B divisible by groups), no running statistics where
 * needed, one value per channel (or group) in training. */
typedef struct qkv_comm qkv_comm; /* processes training together (Communicator, below) */
typedef struct {
    qkv_tensor *running_mean, *running_var; /* (C) contiguous, or NULL */
    qkv_tensor *num_batches_tracked;        /* one value, or NULL      */
    double momentum;                        /* PyTorch's default: 0.1  */
    float eps;                              /* PyTorch's default: 1e-5 */
    int64_t groups;                         /* 0 or 1: the whole batch */
    int frozen;
    /* SyncBatchNorm: in training, the statistics of every rank's rows of c
     * (each rank's count, mean and sum of squares all-gathered and merged
     * in rank order, so every rank normalises and updates its running
     * statistics alike), and in backward the sums of dy and dy xhat over
     * every rank; the parameters' gradients stay this rank's (the trainer
     * sums them). NULL: this process's batch. With one rank it equals
     * plain batch norm. Needs groups 0 or 1 and one shard per rank (a
     * shard's context under qkv_shards with n > 1 is an error): the ranks
     * must call it in the same order, forward and backward. */
    qkv_comm *sync;
} qkv_bn_opts;
QKV_API qkv_tensor *qkv_batch_norm_ext(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight,
                                       qkv_tensor *bias, const qkv_bn_opts *opts);
/* Inverted dropout with probability p from the context RNG; identity when
 * not training or p == 0. */
QKV_API qkv_tensor *qkv_dropout(qkv_ctx *ctx, qkv_tensor *x, float p);
/* The same with x's memory reused for the result (PyTorch's inplace=True),
 * when x is an op's output that no op has read yet and whose op's
 * backward does not read it (linear, GELU, add, gelu_linear): x's values become the
 * result's, so the caller must not read x afterwards. Otherwise (a leaf, a
 * view, another op's output, an x already read) a copy, as qkv_dropout.
 * The same values and gradients as qkv_dropout, one tensor fewer. */
QKV_API qkv_tensor *qkv_dropout_inplace(qkv_ctx *ctx, qkv_tensor *x, float p);
/* y (..., out) = linear(dropout(gelu(x), p), w (out, in), bias (out) or
 * NULL), x (..., in): a transformer MLP's second half. The same values and
 * gradients as composing qkv_gelu, qkv_dropout and qkv_linear (the mask is
 * drawn at the same point of the context's RNG), but the hidden layer
 * dropout(gelu(x)) is recomputed in the backward instead of kept: one
 * tensor of x's size less held per call in training. */
QKV_API qkv_tensor *qkv_gelu_linear(qkv_ctx *ctx, qkv_tensor *x, float p, qkv_tensor *w,
                                    qkv_tensor *bias);

/* Convolution and pooling, NCHW.
 * x (B, Cin, H, W), w (Cout, Cin/groups, kh, kw), bias (Cout) or NULL
 * -> (B, Cout, Ho, Wo), Ho = (H + 2 pad_h - dil_h (kh - 1) - 1) / stride_h + 1. */
typedef struct {
    int stride_h, stride_w;   /* 0 means 1 */
    int pad_h, pad_w;
    int dil_h, dil_w;         /* 0 means 1 */
    int groups;               /* 0 means 1 */
} qkv_conv2d_opts;
QKV_API qkv_tensor *qkv_conv2d(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *w, qkv_tensor *bias,
                               const qkv_conv2d_opts *opts);
/* Pooling windows k, stride s (0 means k), padding pad (max pools pad with -inf,
 * average pools count padding as PyTorch's default count_include_pad=True). */
QKV_API qkv_tensor *qkv_max_pool2d(qkv_ctx *ctx, qkv_tensor *x, int kh, int kw, int sh,
                                   int sw, int ph, int pw);
QKV_API qkv_tensor *qkv_avg_pool2d(qkv_ctx *ctx, qkv_tensor *x, int kh, int kw, int sh,
                                   int sw, int ph, int pw);
/* x (B, C, H, W) -> (B, C, oh, ow), bins as torch's adaptive_avg_pool2d. */
QKV_API qkv_tensor *qkv_adaptive_avg_pool2d(qkv_ctx *ctx, qkv_tensor *x, int oh, int ow);

/* Losses. */
typedef enum { QKV_REDUCE_MEAN = 0, QKV_REDUCE_SUM, QKV_REDUCE_NONE } qkv_reduction;
typedef struct {
    const float *class_weight;  /* K weights or NULL                          */
    int64_t ignore_index;       /* targets equal to it count for nothing;
                                   use QKV_NO_IGNORE for none                 */
    float label_smoothing;      /* 0..1                                        */
    qkv_reduction reduction;    /* mean divides by the sum of target weights,
                                   as PyTorch                                  */
} qkv_ce_opts;
#define QKV_NO_IGNORE INT64_MIN
/* logits (R, K), target (R) class indices -> () or (R) with REDUCE_NONE.
 * opts may be NULL (mean, no weights, no ignore, no smoothing). */
QKV_API qkv_tensor *qkv_cross_entropy(qkv_ctx *ctx, qkv_tensor *logits, const int64_t *target,
                                      const qkv_ce_opts *opts);
/* An output layer and its loss in one op: qkv_cross_entropy(qkv_linear(x,
 * w, bias), target, opts) without the (R, K) logits. x (..., in) [R rows =
 * all leading axes], w (K, in), bias (K) or NULL (both contiguous), target
 * (R) -> (). The logits are made about 32 MiB of rows at a time and their
 * loss taken; when a gradient is wanted (gradients on and x, w or bias
 * requiring one) the same block of logits becomes its gradient, whose
 * products give x's, w's and bias's gradients for an upstream gradient of
 * 1, kept until the backward scales them: the arithmetic of the two ops,
 * the same result to rounding, with memory for x's and w's gradients in
 * place of the logits and theirs (the large Transformer's output layer:
 * 2 x 305 MiB). Its forward does the backward's products too, so without
 * a later qkv_backward it is the dearer way. opts as qkv_cross_entropy (NULL:
 * mean, nothing ignored); REDUCE_NONE is the two ops (an upstream gradient
 * per row cannot scale gradients summed over the rows). */
QKV_API qkv_tensor *qkv_linear_cross_entropy(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *w,
                                             qkv_tensor *bias, const int64_t *target,
                                             const qkv_ce_opts *opts);
/* pred, target same shape; target gets no gradient. */
QKV_API qkv_tensor *qkv_mse_loss(qkv_ctx *ctx, qkv_tensor *pred, qkv_tensor *target,
                                 qkv_reduction r);
QKV_API qkv_tensor *qkv_l1_loss(qkv_ctx *ctx, qkv_tensor *pred, qkv_tensor *target,
                                qkv_reduction r);
/* 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta (PyTorch, beta = 1). */
QKV_API qkv_tensor *qkv_smooth_l1_loss(qkv_ctx *ctx, qkv_tensor *pred, qkv_tensor *target,
                                       float beta, qkv_reduction r);

/* ------------------------------------------------------------------------ */
/* Attention                                                                 */
/* ------------------------------------------------------------------------ */

/* Masks and switches for qkv_masked_softmax, qkv_attention and the attention
 * modules. A zeroed struct (or NULL) means: no mask, no dropout, scale
 * 1/sqrt(D), fused kernel. Scores are s = scale q.k; the masks act on s in
 * this order (all that are given):
 *   s += attn_mask                     PyTorch's attn_mask
 *   s += key_padding_mask              PyTorch's key_padding_mask
 *   s  = -inf where key j > query i    causal (top-left aligned, as PyTorch's
 *                                      is_causal and tril masks)
 *   s  = -1e6 where j >= valid length  d2l's masked_softmax: the score is
 *                                      replaced (no gradient), so a row of
 *                                      length 0 is uniform over all keys
 * then weights = softmax(s), out = dropout(weights) v.
 *
 * A row where every score is -inf (all keys masked by the PyTorch-style
 * masks) gives NaN in its weights and output, as PyTorch 1.13's softmax and
 * nn.MultiheadAttention do; its gradients are not meaningful (NaN). d2l
 * valid lengths never produce such a row. */
typedef struct {
    /* Broadcasts (right-aligned) to (B, H, N, M); e.g. (N, M) for every
     * batch and head, (B, 1, N, M) per batch. With attn_mask_bool, nonzero
     * entries are masked out (PyTorch's bool True); else it is added (may
     * hold -inf). The MHA modules also take PyTorch's (B*H, N, M). */
    qkv_tensor *attn_mask;
    int attn_mask_bool;
    /* (B, M): nonzero = that key is padding (bool), or added (float). */
    qkv_tensor *key_padding_mask;
    int key_padding_bool;
    int causal;
    /* d2l valid lengths: valid_lens_ndim 1 gives (B), one length for all
     * queries of a batch item; 2 gives (B, N), one per query. Copied. */
    const int64_t *valid_lens;
    int valid_lens_ndim;
    /* Dropout on the weights, in training mode only, drawn from a per-call
     * seed taken from the context RNG. */
    float dropout_p;
    float scale;                /* 0: 1 / sqrt(D)                            */
    /* If not NULL, receives the weights (B, H, N, M) before dropout, as d2l
     * stores them (PyTorch 1.13 returns them after dropout). Asking for them
     * materialises the (B, H, N, M) scores, so that the weights carry
     * gradients. MHA modules: (B, N, M) averaged over heads if
     * average_attn_weights, else (B, H, N, M). */
    qkv_tensor **weights;
    int average_attn_weights;
} qkv_attn_opts;

/* Softmax over the last axis of x (B, N, M) or (B, H, N, M) after the masks
 * of opts (its dropout, scale and weights are ignored). d2l's
 * masked_softmax(X, valid_lens) is opts = {.valid_lens = lens,
 * .valid_lens_ndim = 1 or 2}. */
QKV_API qkv_tensor *qkv_masked_softmax(qkv_ctx *ctx, qkv_tensor *x, const qkv_attn_opts *opts);

/* Scaled dot-product attention: q (B, H, N, D), k (B, H, M, D),
 * v (B, H, M, Dv) -> (B, H, N, Dv) = dropout(softmax(masks(scale q k^T))) v.
 * 3-D inputs (B, N, D) are d2l's layout (one head) and give (B, N, Dv).
 * Inputs may be views whose last axis is contiguous (no copy is made).
 *
 * By default a fused kernel (FlashAttention-2 style, docs/attention.md) runs:
 * it never stores the (B, H, N, M) weights, only the output and one
 * log-sum-exp per query, and recomputes the weights in the backward; with
 * causal or key-padding masks it skips key tiles that are fully masked.
 * Dropout masks come from a hash of (seed, b, h, i, j), so the backward
 * regenerates them; the path that materialises the weights (opts->weights)
 * uses the same hash, so both give the same result from the same context
 * seed. */
QKV_API qkv_tensor *qkv_attention(qkv_ctx *ctx, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v,
                                  const qkv_attn_opts *opts);

/* ------------------------------------------------------------------------ */
/* Boxes and assignment (DETR; docs/detr.md)                                 */
/* ------------------------------------------------------------------------ */

/* A box is 4 floats on the last axis: xyxy = (x0, y0, x1, y1) corners or
 * cxcywh = (cx, cy, w, h). For boxes a, b (xyxy):
 *   I    = clamp(min(a.x1, b.x1) - max(a.x0, b.x0), 0) * (the same in y)
 *   U    = area(a) + area(b) - I,   area(a) = (a.x1 - a.x0)(a.y1 - a.y0)
 *   IoU  = I / U
 *   GIoU = IoU - (E - U) / E,   E the area of the smallest box holding both.
 * Gradients follow PyTorch at the kinks: a max or min of two equal values
 * sends half the gradient to each, the clamp passes it where the difference
 * is >= 0. The GIoU ops reject a box with x1 < x0 or y1 < y0 (or a NaN
 * corner), naming it, where DETR asserts. */

/* x (..., 4) cxcywh -> (..., 4) xyxy = (cx - w/2, cy - h/2, cx + w/2, cy + h/2). */
QKV_API qkv_tensor *qkv_box_cxcywh_to_xyxy(qkv_ctx *ctx, qkv_tensor *x);
/* x (..., 4) xyxy -> (..., 4) cxcywh = ((x0 + x1)/2, (y0 + y1)/2, x1 - x0, y1 - y0). */
QKV_API qkv_tensor *qkv_box_xyxy_to_cxcywh(qkv_ctx *ctx, qkv_tensor *x);
/* boxes1 (N, 4), boxes2 (M, 4) xyxy -> (N, M) IoU of every pair
 * (torchvision.ops.box_iou); gradients to both. */
QKV_API qkv_tensor *qkv_box_iou(qkv_ctx *ctx, qkv_tensor *boxes1, qkv_tensor *boxes2);
/* boxes1 (N, 4), boxes2 (M, 4) xyxy -> (N, M) GIoU of every pair (DETR's
 * util/box_ops.generalized_box_iou, torchvision's). */
QKV_API qkv_tensor *qkv_generalized_box_iou(qkv_ctx *ctx, qkv_tensor *boxes1,
                                            qkv_tensor *boxes2);
/* boxes1, boxes2 (..., 4) xyxy, same shape -> 1 - GIoU of each pair of rows,
 * reduced: () or (...) with REDUCE_NONE; the mean of no rows is 0. eps is
 * added to U and E where they divide (torchvision's
 * generalized_box_iou_loss: 1e-7); eps 0 is DETR's 1 - diag(GIoU). */
QKV_API qkv_tensor *qkv_giou_loss(qkv_ctx *ctx, qkv_tensor *boxes1, qkv_tensor *boxes2,
                                  float eps, qkv_reduction r);

/* Linear sum assignment (the assignment problem that the Hungarian method
 * solves), scipy.optimize.linear_sum_assignment's contract: cost (n, m)
 * row-major, either side longer; rows (k), cols (k) get the k = min(n, m)
 * pairs of least total sum_p cost[rows[p], cols[p]], each row and column at
 * most once, rows increasing. Ties are broken some way (the total is the
 * minimum; the pairs may differ from scipy's). +inf marks a forbidden pair.
 * Shortest augmenting paths (Jonker-Volgenant, Crouse 2016), O(k^2 max(n, m)),
 * on a workspace it mallocs and frees. Errors: QKV_ERR_NAN for a NaN or -inf
 * entry (named), QKV_ERR_ARG when every complete assignment needs a +inf
 * entry, or for a NULL array while n, m > 0. n or m = 0: nothing to do. */
QKV_API qkv_status qkv_linear_sum_assignment(int64_t *rows, int64_t *cols, const double *cost,
                                             int64_t n, int64_t m);

/* ------------------------------------------------------------------------ */
/* Parameters: named tensors in flat buffers                                 */
/* ------------------------------------------------------------------------ */

typedef struct qkv_params qkv_params;

enum {
    QKV_PARAM_BUFFER = 1, /* not trained (BatchNorm running statistics) */
    QKV_PARAM_FROZEN = 2, /* a parameter the optimizer leaves alone      */
};

QKV_API qkv_params *qkv_params_new(void);
QKV_API void qkv_params_free(qkv_params *ps);
/* Declares a tensor under `name` (copied). Values and grads get memory at
 * qkv_params_alloc; until then data and grad are NULL. flags: QKV_PARAM_*. */
QKV_API qkv_tensor *qkv_params_add(qkv_params *ps, const char *name, int ndim,
                                   const int64_t *shape, int flags);
/* Puts `prefix` (copied; NULL or "" for none) in front of every name
 * declared from now on, so that a module declared after
 * qkv_params_set_prefix(ps, "encoder_q.") has the keys of a PyTorch module
 * held in an attribute encoder_q (MoCo's). QKV_ERR_ARG if longer than 127
 * bytes. */
QKV_API qkv_status qkv_params_set_prefix(qkv_params *ps, const char *prefix);
/* One allocation for every value, one for every gradient (zeroed); both
 * zero. QKV_ERR_STATE if the store is already allocated, QKV_ERR_NOMEM. */
QKV_API qkv_status qkv_params_alloc(qkv_params *ps);
/* For inference (a model opened to run forward only): the values alone,
 * zero, and no gradient buffer: every entry's grad is NULL and its
 * requires_grad 0, so that backward never writes into the store, and the
 * store's memory is its values' bytes. qkv_params_grads gives NULL (count
 * 0); qkv_params_zero_grad does nothing; qkv_optim_new, qkv_shards_new and
 * qkv_clip_grad_norm refuse the store with an error. Loading, saving and
 * every forward work as after qkv_params_alloc. Errors as qkv_params_alloc. */
QKV_API qkv_status qkv_params_alloc_inference(qkv_params *ps);
/* 1 if the store has gradient buffers (qkv_params_alloc), 0 if not (not
 * allocated, qkv_params_alloc_inference, or NULL). */
QKV_API int qkv_params_has_grads(const qkv_params *ps);
QKV_API int64_t qkv_params_count(const qkv_params *ps);
QKV_API qkv_tensor *qkv_params_at(qkv_params *ps, int64_t i);
QKV_API int qkv_params_flags(const qkv_params *ps, int64_t i);
/* Sets flags of entry i (e.g. freeze a backbone). */
QKV_API void qkv_params_set_flags(qkv_params *ps, int64_t i, int flags);
/* Optimizer group of entry i (default 0); groups have their own lr scale. */
QKV_API void qkv_params_set_group(qkv_params *ps, int64_t i, int group);
QKV_API int qkv_params_group(const qkv_params *ps, int64_t i);
QKV_API qkv_tensor *qkv_params_find(qkv_params *ps, const char *name);
/* Total trainable elements (excludes buffers). */
QKV_API int64_t qkv_params_numel(const qkv_params *ps);
/* The flat buffers behind every entry (for checkpoints), NULL before
 * qkv_params_alloc. Entries lie in declaration order, each starting on a
 * 64-byte boundary; the gaps between them are zero. *count (if not NULL)
 * receives the length in floats, gaps included. The store owns them. */
QKV_API float *qkv_params_values(qkv_params *ps, int64_t *count);
/* qkv_params_grads: NULL (count 0) for a store without gradients. */
QKV_API float *qkv_params_grads(qkv_params *ps, int64_t *count);
QKV_API void qkv_params_zero_grad(qkv_params *ps);

/* ------------------------------------------------------------------------ */
/* Initialisers (PyTorch's definitions; fan_in/fan_out as torch.nn.init)      */
/* ------------------------------------------------------------------------ */

/* Each fills t (a view too) in row-major order from r and returns QKV_OK, or
 * an error leaving t untouched: t NULL or without data, lo > hi, std < 0, or
 * fewer than 2 dimensions for the fan-based ones. fan_in = size(1) * r and
 * fan_out = size(0) * r, r the product of the sizes after the second (a
 * Linear weight (out, in), a Conv weight (out, in/groups, kh, kw)). */
QKV_API qkv_status qkv_init_constant(qkv_tensor *t, float v);
/* Uniform in [lo, hi). */
QKV_API qkv_status qkv_init_uniform(qkv_rng *r, qkv_tensor *t, float lo, float hi);
QKV_API qkv_status qkv_init_normal(qkv_rng *r, qkv_tensor *t, float mean, float std);
/* Normal(mean, std) redrawn until inside [lo, hi] (lo, hi absolute, as
 * torch.nn.init.trunc_normal_'s a, b). An error if [lo, hi] holds less than
 * 1e-4 of the mass, where redrawing would take too long. */
QKV_API qkv_status qkv_init_trunc_normal(qkv_rng *r, qkv_tensor *t, float mean, float std,
                                         float lo, float hi);
/* Uniform in +-gain sqrt(6 / (fan_in + fan_out)); normal with std
 * gain sqrt(2 / (fan_in + fan_out)). */
QKV_API qkv_status qkv_init_xavier_uniform(qkv_rng *r, qkv_tensor *t, float gain);
QKV_API qkv_status qkv_init_xavier_normal(qkv_rng *r, qkv_tensor *t, float gain);
typedef enum { QKV_FAN_IN = 0, QKV_FAN_OUT } qkv_fan_mode;
/* std = gain / sqrt(fan), gain = sqrt(2 / (1 + a^2)) (leaky_relu with slope
 * a; a = 0 for relu): uniform in +-sqrt(3) std, or normal. nn.Linear and
 * nn.Conv2d initialise their weights with kaiming_uniform, a = sqrt(5). */
QKV_API qkv_status qkv_init_kaiming_uniform(qkv_rng *r, qkv_tensor *t, float a,
                                            qkv_fan_mode mode);
QKV_API qkv_status qkv_init_kaiming_normal(qkv_rng *r, qkv_tensor *t, float a,
                                           qkv_fan_mode mode);

/* ------------------------------------------------------------------------ */
/* Optimizers, gradient clipping, learning-rate schedules                    */
/* ------------------------------------------------------------------------ */

typedef enum { QKV_SGD = 0, QKV_ADAM, QKV_ADAMW } qkv_optim_kind;

typedef struct {
    qkv_optim_kind kind;
    float lr;
    float momentum;      /* SGD */
    float dampening;     /* SGD */
    int nesterov;        /* SGD */
    float beta1, beta2;  /* Adam(W); 0 and 0 mean 0.9 and 0.999 */
    float eps;           /* Adam(W); 0 means 1e-8 */
    float weight_decay;  /* SGD/Adam: added to the gradient; AdamW: decoupled */
} qkv_optim_config;

typedef struct qkv_optim qkv_optim;

/* Moments are allocated here, once, as flat buffers. */
QKV_API qkv_optim *qkv_optim_new(qkv_params *ps, const qkv_optim_config *cfg);
QKV_API void qkv_optim_free(qkv_optim *o);
/* One update of every trainable, unfrozen parameter with lr * group scale.
 * Every such entry is updated, also one no gradient reached this step (its
 * gradient is zero, yet momentum and weight decay still move it); PyTorch
 * skips parameters whose .grad is None: freeze an entry to skip it. Frozen
 * entries and buffers get no gradient (requires_grad 0) and are not clipped. */
QKV_API qkv_status qkv_optim_step(qkv_optim *o);
QKV_API void qkv_optim_set_lr(qkv_optim *o, float lr);
QKV_API float qkv_optim_lr(const qkv_optim *o);
/* lr multiplier of a parameter group (default 1). */
QKV_API void qkv_optim_set_group_scale(qkv_optim *o, int group, float scale);
QKV_API int64_t qkv_optim_steps(const qkv_optim *o);
/* Moments as flat buffers (for checkpoints): which 0 is SGD's momentum
 * buffer or Adam's exp_avg, 1 Adam's exp_avg_sq; count floats each, laid out
 * as qkv_params_values. NULL (count 0) if the optimizer has none. */
QKV_API float *qkv_optim_state(qkv_optim *o, int which, int64_t *count);
/* Restores the number of steps taken: Adam's bias correction uses it, and
 * SGD fills its momentum buffer with the gradient itself only at step 0. */
QKV_API void qkv_optim_set_steps(qkv_optim *o, int64_t steps);

/* Scales all gradients so that their global L2 norm is at most max_norm;
 * returns the norm before clipping (as torch.nn.utils.clip_grad_norm_:
 * scale max_norm / (norm + 1e-6) when below 1). A NaN or infinite norm is
 * returned with the gradients untouched; NaN with an error if max_norm < 0. */
QKV_API float qkv_clip_grad_norm(qkv_params *ps, float max_norm);

/* Data parallelism inside a step: the batch cut into shards, one per
 * thread, each run forward and backward on a context of its own, at the
 * same time; their parameter gradients are summed into the store (shard 0
 * adds into it directly, the others into buffers of their own that
 * qkv_shards_run adds in shard order, so runs repeat bit for bit). A small
 * model's kernels are too short to split across threads without waiting
 * on each other; whole shards are not. Kernels inside a shard run on its
 * one thread. With one thread there is one shard, run on the caller's.
 *
 *     qkv_shards *sh = qkv_shards_new(ps, 0);   // qkv_threads() shards
 *     // each step: fn(ctx, i, n, arg) computes shard i's loss of the batch
 *     // (rows [i B / n, (i + 1) B / n)) and calls qkv_backward
 *     if (qkv_shards_run(sh, fn, &batch) != QKV_OK) ...
 *     qkv_clip_grad_norm(ps, 1.0f);
 *     qkv_optim_step(opt);
 *     qkv_params_zero_grad(ps);
 *
 * Each shard's context is reset before fn runs and keeps its tensors until
 * the next run; shard i's random numbers come from its own context (seeded
 * i + 1 by qkv_shards_new; reseed them through qkv_shards_ctx). fn returns
 * QKV_OK or a status with the error set; the first failing shard's message
 * reaches the caller, prefixed with its number. Memory: n arenas of a
 * shard's size each, and n - 1 gradient buffers as large as the store's.
 * Batch norm in training mode normalises each shard with its own batch
 * statistics; the running statistics are written once, after the shards
 * join, from the whole batch's (qkv_batch_norm_ext); if a shard fails, or
 * the shards' batch-norm calls differ, they are not written. */
typedef struct qkv_shards qkv_shards;
typedef qkv_status (*qkv_shard_fn)(qkv_ctx *ctx, int shard, int n_shards, void *arg);
/* n <= 0: qkv_threads(). NULL if out of memory or ps is not allocated. */
QKV_API qkv_shards *qkv_shards_new(qkv_params *ps, int n);
QKV_API void qkv_shards_free(qkv_shards *s);
QKV_API int qkv_shards_count(const qkv_shards *s);
QKV_API qkv_ctx *qkv_shards_ctx(qkv_shards *s, int i);
/* Sets the training flag of every shard's context (qkv_set_training). */
QKV_API void qkv_shards_set_training(qkv_shards *s, int training);
QKV_API qkv_status qkv_shards_run(qkv_shards *s, qkv_shard_fn fn, void *arg);
/* Rows [lo, hi) of a batch of B that shard i of n takes: B cut as evenly as
 * it goes, the larger pieces first. */
QKV_API void qkv_shard_rows(int64_t B, int i, int n, int64_t *lo, int64_t *hi);

/* Schedules: the learning rate at `step` (0-based). */
QKV_API float qkv_lr_step_decay(float base, int64_t step, int64_t step_size, float gamma);
/* Linear warmup from 0 over `warmup` steps, then cosine from base to min_lr
 * at `total`. */
QKV_API float qkv_lr_cosine(float base, int64_t step, int64_t warmup, int64_t total,
                            float min_lr);
/* Transformer: d_model^-0.5 * min(s^-0.5, s * warmup^-1.5), s = step + 1. */
QKV_API float qkv_lr_inverse_sqrt(int64_t d_model, int64_t step, int64_t warmup);

/* ------------------------------------------------------------------------ */
/* safetensors                                                               */
/* ------------------------------------------------------------------------ */

typedef enum {
    QKV_DT_F32 = 0, QKV_DT_F16, QKV_DT_BF16, QKV_DT_F64, QKV_DT_I64, QKV_DT_I32,
    QKV_DT_U8, QKV_DT_I8, QKV_DT_BOOL
} qkv_dtype;

typedef struct qkv_st_file qkv_st_file;

/* Opens (memory-maps) and validates a file: header length, JSON, dtypes,
 * shapes against byte ranges, ranges inside the file, no overlaps. NULL with
 * a message naming the file, the tensor and the problem. */
QKV_API qkv_st_file *qkv_st_open(const char *path);
QKV_API void qkv_st_close(qkv_st_file *f);
QKV_API int64_t qkv_st_count(const qkv_st_file *f);
QKV_API const char *qkv_st_name(const qkv_st_file *f, int64_t i);
/* Index of a tensor by name, or -1. */
QKV_API int64_t qkv_st_find(const qkv_st_file *f, const char *name);
QKV_API qkv_dtype qkv_st_dtype(const qkv_st_file *f, int64_t i);
/* Returns ndim; fills shape (QKV_MAX_DIMS entries). */
QKV_API int qkv_st_shape(const qkv_st_file *f, int64_t i, int64_t *shape);
QKV_API int64_t qkv_st_numel(const qkv_st_file *f, int64_t i);
/* Converts tensor i to float32 into out (numel floats). */
QKV_API qkv_status qkv_st_read_f32(const qkv_st_file *f, int64_t i, float *out);
/* Converts an integer or bool tensor to int64 into out. */
QKV_API qkv_status qkv_st_read_i64(const qkv_st_file *f, int64_t i, int64_t *out);
/* __metadata__ value for key, or NULL. */
QKV_API const char *qkv_st_meta(const qkv_st_file *f, const char *key);
/* Loads tensor `name` into a new arena tensor (float32). NULL if absent. */
QKV_API qkv_tensor *qkv_st_load(qkv_ctx *ctx, const qkv_st_file *f, const char *name);

typedef struct qkv_st_writer qkv_st_writer;
QKV_API qkv_st_writer *qkv_st_writer_new(void);
QKV_API void qkv_st_writer_free(qkv_st_writer *w);
/* Adds a tensor; the data is copied, converted from float32 to `dtype`
 * (F32, F16 or BF16). */
QKV_API qkv_status qkv_st_add_f32(qkv_st_writer *w, const char *name, qkv_dtype dtype,
                                  int ndim, const int64_t *shape, const float *data);
QKV_API qkv_status qkv_st_add_i64(qkv_st_writer *w, const char *name, int ndim,
                                  const int64_t *shape, const int64_t *data);
/* Adds integers stored as `dtype` (I64, I32, I8, U8 or BOOL); a value
 * outside the dtype's range is an error and adds nothing. */
QKV_API qkv_status qkv_st_add_int(qkv_st_writer *w, const char *name, qkv_dtype dtype,
                                  int ndim, const int64_t *shape, const int64_t *data);
/* Adds a contiguous or strided tensor as F32. */
QKV_API qkv_status qkv_st_add_tensor(qkv_st_writer *w, const char *name, const qkv_tensor *t);
QKV_API qkv_status qkv_st_set_meta(qkv_st_writer *w, const char *key, const char *value);
/* Writes to path.tmp, flushes, fsyncs and renames to path. */
QKV_API qkv_status qkv_st_write(qkv_st_writer *w, const char *path);

/* ------------------------------------------------------------------------ */
/* State dicts and checkpoints                                               */
/* ------------------------------------------------------------------------ */

/* Saves every parameter and buffer under its name, as `dtype` (F32, F16 or
 * BF16): a file PyTorch's load_state_dict accepts. Atomic. */
QKV_API qkv_status qkv_params_save(qkv_params *ps, const char *path, qkv_dtype dtype);
/* Loads every parameter and buffer by name. Any missing key or shape
 * mismatch is an error listing them all by name; with `strict`, so is any
 * unexpected key (keys starting with "__" are never model keys). Nothing is
 * changed unless everything fits. */
QKV_API qkv_status qkv_params_load(qkv_params *ps, const char *path, int strict);
/* Same from an open file; `what` names it in messages. */
QKV_API qkv_status qkv_params_load_file(qkv_params *ps, const qkv_st_file *f, const char *what,
                                        int strict);

#define QKV_CKPT_RNGS 2
typedef struct {
    int64_t step, epoch;          /* where the run stands                      */
    qkv_rng rng[QKV_CKPT_RNGS];   /* e.g. the ctx RNG (dropout), the data RNG  */
    const char *config;           /* the run's configuration (JSON), or NULL   */
    char config_buf[4096];        /* load: holds the configuration text        */
} qkv_checkpoint_info;

/* Writes model, optimizer moments and step count (opt may be NULL), and
 * info, to `path` atomically: the previous file stays intact until the new
 * one is complete on disk. */
QKV_API qkv_status qkv_checkpoint_save(const char *path, qkv_params *ps, qkv_optim *opt,
                                       const qkv_checkpoint_info *info);
/* Restores what qkv_checkpoint_save wrote, strictly; opt and info may be NULL. */
QKV_API qkv_status qkv_checkpoint_load(const char *path, qkv_params *ps, qkv_optim *opt,
                                       qkv_checkpoint_info *info);

/* ------------------------------------------------------------------------ */
/* Datasets                                                                  */
/* ------------------------------------------------------------------------ */

/* Fashion-MNIST (or MNIST) from IDX files, gzip-compressed or not:
 * dir/{train,t10k}-images-idx3-ubyte[.gz] and -labels-idx1-ubyte[.gz]. dir
 * NULL means QKV_MNIST_DIR (Debian's dataset-fashion-mnist). train: 1 for
 * the training set (60000), 0 for the test set (10000). images (n, rows,
 * cols) and labels (n) are malloc'd; qkv_mnist_free releases them. A missing
 * or truncated file, a wrong magic number or a label above 9 is an error
 * naming the file. */
typedef struct {
    int64_t n, rows, cols;
    uint8_t *images; /* (n, rows, cols), 0..255, row-major */
    uint8_t *labels; /* (n), 0..9 */
} qkv_mnist;
#define QKV_MNIST_DIR "/usr/share/datasets/fashion-mnist"
QKV_API qkv_status qkv_mnist_load(qkv_mnist *out, const char *dir, int train);
QKV_API void qkv_mnist_free(qkv_mnist *m);
/* How a training image is augmented: a random crop of the image padded by
 * `crop` zero pixels (a shift of up to crop pixels each way), and with
 * `flip` a mirror image half the time. */
typedef struct {
    int64_t crop;
    int flip;
} qkv_augment;
/* Image i of d as floats in [0, 1] (torchvision's ToTensor) into dst
 * (size * size floats), resized bilinearly (as F.interpolate) when size is
 * not the data's. aug NULL or all off: as it is; else the image takes three
 * draws of rng (shift y, shift x, flip) whichever of crop and flip is on. */
QKV_API qkv_status qkv_mnist_image(float *dst, const qkv_mnist *d, int64_t i, int64_t size,
                                   qkv_rng *rng, const qkv_augment *aug);

/* The name of Fashion-MNIST class k (0..9: "T-shirt/top" .. "Ankle boot"),
 * or NULL. */
QKV_API const char *qkv_fashion_class_name(int64_t k);

/* A detection data set from Fashion-MNIST (`qkv data scenes`): canvases of
 * size x size with min_objects..max_objects items each, scaled min_scale to
 * max_scale times (28 pixels at 1), placed at random with at most
 * max_overlap IoU between their frames, pasted with their brightness as
 * opacity on textured backgrounds. Writes out_dir/train/NNNNNN.png (from
 * the training items), out_dir/val/NNNNNN.png (from the test items) and
 * out_dir/annotations/{train,val}.json in COCO's format: images (id,
 * file_name, width, height), annotations (bbox x, y, w, h: the tight box of
 * the item's visible pixels; area w * h; iscrowd 0), categories 1..10 with
 * the class names. Zero fields take the defaults in brackets. */
typedef struct {
    const char *out_dir;
    const char *data_dir;            /* Fashion-MNIST; NULL: QKV_MNIST_DIR        */
    int64_t n_train, n_val;          /* images in each split                     */
    int64_t size;                    /* [128]                                    */
    double min_scale, max_scale;     /* [0.5, 2]                                 */
    int64_t min_objects, max_objects;/* [1, 5] (both 0 for the default)         */
    double max_overlap;              /* [0.3]                                    */
    uint64_t seed;
} qkv_scenes_config;
QKV_API qkv_status qkv_scenes_make(const qkv_scenes_config *cfg);

/* A vocabulary: tokens (strings) <-> ids 0 .. size - 1. */
typedef struct qkv_vocab qkv_vocab;
/* d2l's Vocab over a token stream: id 0 is "<unk>", then the reserved
 * "<pad>" "<bos>" "<eos>", then every token seen at least min_freq times,
 * most frequent first (ties in order of first appearance). The tokens are
 * copied. NULL with the error set if out of memory or a token is NULL. */
QKV_API qkv_vocab *qkv_vocab_build(int64_t n, const char *const *tokens, int64_t min_freq);
/* The vocabulary whose id i is tokens[i] (copied), as a model file lists
 * them. A repeated or NULL token is an error (QKV_ERR_ARG, naming it). */
QKV_API qkv_vocab *qkv_vocab_new(int64_t n, const char *const *tokens);
/* NULL does nothing. */
QKV_API void qkv_vocab_free(qkv_vocab *v);
QKV_API int64_t qkv_vocab_size(const qkv_vocab *v);
/* The token of an id, or NULL if out of range. */
QKV_API const char *qkv_vocab_token(const qkv_vocab *v, int64_t id);
/* The id of a token, 0 ("<unk>") if unknown. */
QKV_API int64_t qkv_vocab_id(const qkv_vocab *v, const char *token);

/* English-French pairs (one "english TAB french" per line) prepared as d2l
 * r0.17's load_data_nmt: U+202F and U+00A0 become spaces, text is lowercased,
 * a space goes before , . ! ? not preceded by one; tokens split on single
 * spaces; vocabularies with min_freq 2 and reserved <pad> <bos> <eos>; each
 * sentence gets <eos>, then is truncated or padded with <pad> to num_steps;
 * valid lengths count the non-pad ids. As d2l's tokenize_nmt, lines 0 to
 * num_examples inclusive are read (so 600 gives 601 pairs); num_examples 0
 * reads every line. path NULL means $QKV_FRA_ENG, else QKV_FRA_ENG_PATH. */
typedef struct {
    int64_t n, num_steps;
    int64_t *src, *tgt;             /* (n, num_steps) token ids         */
    int64_t *src_valid, *tgt_valid; /* (n) ids before the padding       */
    qkv_vocab *src_vocab, *tgt_vocab;
} qkv_nmt_data;
#define QKV_FRA_ENG_PATH "../shared/data/fra-eng/fra.txt"
QKV_API qkv_status qkv_nmt_load(qkv_nmt_data *out, const char *path, int64_t num_examples,
                                int64_t num_steps);
QKV_API void qkv_nmt_free(qkv_nmt_data *d);
/* One sentence for inference as d2l's predict_seq2seq: lowercased, split on
 * spaces (no space is inserted before punctuation), ids (num_steps) get its
 * ids, <eos>, then <pad> or truncation. Returns d2l's enc_valid_len, the
 * token count + 1 before truncation; -1 on bad arguments. */
QKV_API int64_t qkv_nmt_encode(const qkv_vocab *v, const char *sentence, int64_t num_steps,
                               int64_t *ids);
/* The same for text as a person types it ("Go."): prepared as the corpus
 * was (qkv_nmt_preprocess with insert_spaces 1), so "Go." and "go ." give
 * the same ids. */
QKV_API int64_t qkv_nmt_encode_text(const qkv_vocab *v, const char *text, int64_t num_steps,
                                    int64_t *ids);
/* d2l's preprocess_nmt on one string: U+202F and U+00A0 become spaces,
 * letters are lowercased as Python's str.lower() does for Latin-1, Latin
 * Extended-A, Greek and Cyrillic ("À" -> "à"), and with insert_spaces a
 * space goes before , . ! ? when none is there. out receives at most
 * 2 strlen(in) + 1 bytes (NUL included); returns the length written, or -1
 * (QKV_ERR_ARG) if out_size is smaller than that bound. */
QKV_API int64_t qkv_nmt_preprocess(char *out, size_t out_size, const char *in,
                                   int insert_spaces);

/* ------------------------------------------------------------------------ */
/* Data loader: mini-batches of a shuffled order, each prepared by a worker */
/* thread while the caller trains on the one before.                        */
/* ------------------------------------------------------------------------ */

/* Writes the examples idx[0..n) (n <= batch_size) into `batch` (batch_bytes
 * bytes, 64-byte aligned). rng is this batch's own stream, for augmentation.
 * Runs on the loader's thread: it must not touch the caller's qkv_ctx. On
 * failure it returns non-zero, with a message set by qkv_set_error. */
typedef qkv_status (*qkv_loader_fill_fn)(void *user, const int64_t *idx, int64_t n,
                                         qkv_rng *rng, void *batch);
typedef struct {
    int64_t n_examples;     /* > 0 */
    int64_t batch_size;     /* > 0 */
    int shuffle;            /* 0: examples in order 0, 1, .., n_examples - 1 */
    int drop_last;          /* 1: no last partial batch */
    uint64_t seed;
    size_t batch_bytes;     /* > 0: the size of one prepared batch */
    qkv_loader_fill_fn fill;
    void *user;             /* passed to fill */
    int rank, world;        /* data parallelism over processes: batch_size is
                               the global batch; rank r of world (0 <= r <
                               world) prepares rows qkv_shard_rows(n, r, world)
                               of each global batch of n, so that the ranks
                               together see what one process would. 0 and 0
                               mean rank 0 of 1. */
    int rng_per_example;    /* 1: the fill's rng is the global batch's on every
                               rank (else mixed with the rank), for a fill that
                               draws each example from a stream of its own
                               (qkv_rng_split(&r, rng, idx[i])): then the ranks'
                               examples are what one process's would be */
} qkv_loader_config;
typedef struct qkv_loader qkv_loader;

/* Allocates the order and two batch buffers and starts the thread; nothing
 * is allocated after this. NULL (with qkv_error) on a bad config. One thread
 * at a time calls the functions below on a loader. */
QKV_API qkv_loader *qkv_loader_new(const qkv_loader_config *cfg);
/* Begins epoch `epoch` (>= 0) and has batch 0 prepared. The order is a
 * Fisher-Yates shuffle seeded from (seed, epoch) and batch b's rng from
 * (seed, epoch, b), nothing else: a run resumed at epoch e sees the batches
 * an uninterrupted one would. Ends the epoch under way, if any. */
QKV_API qkv_status qkv_loader_start_epoch(qkv_loader *l, int64_t epoch);
/* The same, starting at batch `first` (0 <= first <= batches): a run
 * resumed in the middle of an epoch sees the batches an uninterrupted one
 * would have seen from there on. */
QKV_API qkv_status qkv_loader_start_epoch_at(qkv_loader *l, int64_t epoch, int64_t first);
/* The next batch of the epoch (*n_out examples), waiting until it is ready;
 * it stays valid until the next call. NULL at the end of the epoch (then
 * *n_out = 0 and qkv_error_status() is QKV_OK) or on error: the fill's status
 * and message, or QKV_ERR_STATE before qkv_loader_start_epoch. */
QKV_API const void *qkv_loader_next(qkv_loader *l, int64_t *n_out);
/* Batches per epoch. */
QKV_API int64_t qkv_loader_batches(const qkv_loader *l);
/* Waits for a fill under way to return, stops the thread, frees all. */
QKV_API void qkv_loader_free(qkv_loader *l);

/* ------------------------------------------------------------------------ */
/* Images                                                                    */
/* ------------------------------------------------------------------------ */

/* A float image (C, H, W) with values in [0, 1] as torchvision's ToTensor;
 * data is malloc'd and released by qkv_image_free. */
typedef struct {
    int64_t c, h, w;
    float *data;
} qkv_image;

/* Reads a PNG or JPEG file (told apart by content). Grey images give C = 1,
 * colour ones C = 3; alpha is dropped, 16-bit samples are scaled to [0, 1].
 * Images of more than 2^26 pixels are refused (QKV_ERR_FORMAT). */
QKV_API qkv_status qkv_image_read(qkv_image *img, const char *path);
/* The same from bytes in memory. */
QKV_API qkv_status qkv_image_decode(qkv_image *img, const void *bytes, size_t len);
/* mkdir -p: creates path and its missing parents (0777 less the umask).
 * QKV_ERR_IO naming path and, if it was a parent that failed, that parent. */
QKV_API qkv_status qkv_make_dirs(const char *path);
/* Writes an 8-bit PNG (C 1 or 3), values clamped to [0, 1] and rounded. */
QKV_API qkv_status qkv_image_write_png(const qkv_image *img, const char *path);
QKV_API void qkv_image_free(qkv_image *img);
/* Bilinear resize to (h, w) as torch.nn.functional.interpolate(mode=
 * 'bilinear', align_corners=False, antialias=False). dst is a new image. */
QKV_API qkv_status qkv_image_resize(qkv_image *dst, const qkv_image *src, int64_t h, int64_t w);
/* The (h, w) window at (top, left), which must lie inside src. */
QKV_API qkv_status qkv_image_crop(qkv_image *dst, const qkv_image *src, int64_t top,
                                  int64_t left, int64_t h, int64_t w);
/* Mirrors left to right, in place. */
QKV_API void qkv_image_hflip(qkv_image *img);
/* (x - mean[c]) / std[c] per channel, in place (torchvision Normalize). */
QKV_API void qkv_image_normalize(qkv_image *img, const float *mean, const float *std);

/* ------------------------------------------------------------------------ */
/* Detection samples: an image with its boxes, and DETR's augmentations     */
/* (facebookresearch/detr datasets/transforms.py), which move both           */
/* ------------------------------------------------------------------------ */

/* Boxes (n, 4) are (x0, y0, x1, y1) in pixels until qkv_det_finish makes
 * them (cx, cy, w, h) / (W, H) as DETR's targets. boxes and labels are
 * qkv-allocated (room for the n boxes at least); qkv_det_sample_free frees
 * all three parts. */
typedef struct {
    qkv_image image;
    int64_t n;
    float *boxes;     /* (n, 4) */
    int64_t *labels;  /* (n) */
} qkv_det_sample;
QKV_API void qkv_det_sample_free(qkv_det_sample *s);
/* Mirrors the image and the boxes left to right. */
QKV_API void qkv_det_hflip(qkv_det_sample *s);
/* DETR's resize: the shorter side to `size`, unless the longer would then
 * exceed max_size (> 0), in which case the longer becomes max_size (sizes
 * rounded as DETR's get_size_with_aspect_ratio); boxes scaled by the
 * ratios of the new to the old width and height. The image is resized
 * bilinearly as F.interpolate (DETR's PIL resize antialiases when it
 * shrinks; the boxes are the same). */
QKV_API qkv_status qkv_det_resize(qkv_det_sample *s, int64_t size, int64_t max_size);
/* The (oh, ow) qkv_det_resize gives an (h, w) image. */
QKV_API void qkv_det_resized_size(int64_t h, int64_t w, int64_t size, int64_t max_size,
                                  int64_t *oh, int64_t *ow);
/* The (h, w) window at (top, left), which must lie inside the image; boxes
 * shifted and clipped to it, those with nothing left inside dropped (with
 * their labels), as DETR's crop. */
QKV_API qkv_status qkv_det_crop(qkv_det_sample *s, int64_t top, int64_t left, int64_t h,
                                int64_t w);
/* DETR's training augmentation: a flip with probability flip_p; then with
 * probability crop_p a resize to one of crop_scales, a crop of random size
 * in [crop_min, crop_max] (capped at the image) at a random place; then a
 * resize to one of scales with max_size. COCO's: scales 480..800 step 32,
 * max_size 1333, crop_scales {400, 500, 600}, crop 384..600, both p 0.5. */
typedef struct {
    const int64_t *scales;
    int n_scales;
    int64_t max_size;
    const int64_t *crop_scales;     /* NULL (n 0): no crop branch */
    int n_crop_scales;
    int64_t crop_min, crop_max;
    double flip_p, crop_p;
} qkv_det_augment_config;
QKV_API qkv_status qkv_det_augment(qkv_det_sample *s, const qkv_det_augment_config *a,
                                   qkv_rng *r);
/* The last step: (x - mean[c]) / std[c] per channel (if mean and std are
 * not NULL), boxes to (cx, cy, w, h) / (W, H). */
QKV_API void qkv_det_finish(qkv_det_sample *s, const float *mean, const float *std);
/* Images of different sizes into one batch: pixels (B, C, H, W) with each
 * image at the top left and zeros around it; mask (B, H, W) (may be NULL) 1
 * on image pixels and 0 on padding (Hugging Face's pixel_mask; DETR's own
 * mask is its negation). An image larger than (H, W) is an error. */
QKV_API qkv_status qkv_det_pad_batch(float *pixels, float *mask, const qkv_det_sample *const *s,
                                     int64_t B, int64_t C, int64_t H, int64_t W);

/* A COCO-format detection data set read by path: the annotation JSON
 * (images with "id", "file_name", "width", "height"; annotations with
 * "image_id", "category_id", "bbox" (x, y, w, h), "iscrowd"; categories with
 * "id" and "name") and the folder the file names are relative to. Images
 * are read when asked for (PNG or JPEG), not at open. */
typedef struct qkv_det_dataset qkv_det_dataset;
typedef struct qkv_coco_gt qkv_coco_gt; /* COCO evaluation, below */
/* NULL with QKV_ERR_IO or QKV_ERR_FORMAT naming the file and the entry (a
 * missing key, an annotation of an unlisted image or category). */
QKV_API qkv_det_dataset *qkv_det_dataset_open(const char *ann_json, const char *image_dir);
QKV_API void qkv_det_dataset_free(qkv_det_dataset *d);
QKV_API int64_t qkv_det_dataset_size(const qkv_det_dataset *d);
/* Image i's id, file path, and (width, height) as the JSON lists them. */
QKV_API int64_t qkv_det_dataset_image_id(const qkv_det_dataset *d, int64_t i);
QKV_API const char *qkv_det_dataset_path(const qkv_det_dataset *d, int64_t i);
QKV_API void qkv_det_dataset_image_size(const qkv_det_dataset *d, int64_t i, int64_t *w,
                                        int64_t *h);
/* The largest category id (DETR's num_classes is it + 1, as COCO's 91), the
 * name of category id (NULL for an unlisted id), and the most non-crowd
 * boxes any image has. */
QKV_API int64_t qkv_det_dataset_max_category(const qkv_det_dataset *d);
QKV_API const char *qkv_det_dataset_category_name(const qkv_det_dataset *d, int64_t id);
QKV_API int64_t qkv_det_dataset_max_objects(const qkv_det_dataset *d);
/* Image i as DETR's CocoDetection gives it: the image (C 1 or 3 as the file
 * has it), its non-crowd boxes as (x0, y0, x1, y1) clipped to the image,
 * those with no area left out, labels the category ids. */
QKV_API qkv_status qkv_det_dataset_read(const qkv_det_dataset *d, int64_t i,
                                        qkv_det_sample *s);
/* The ground truth of the first n images (n <= 0: all), crowds included, as
 * qkv_coco_evaluate takes it; the caller frees it. */
QKV_API qkv_coco_gt *qkv_det_dataset_gt(const qkv_det_dataset *d, int64_t n);

/* Batches of a detection data set for qkv_loader: qkv_det_fill reads each
 * image by path, augments it (on the loader's thread, from the batch's own
 * rng), converts it to `channels` (grey <-> RGB), normalises it, and pads
 * the batch to its largest image, with a pixel mask (qkv_det_pad_batch). */
typedef struct {
    const qkv_det_dataset *data;
    const qkv_det_augment_config *aug; /* training; NULL: no augmentation   */
    int64_t size, max_size;     /* without aug: resize as qkv_det_resize
                                   (size 0: as the images are)              */
    int64_t channels;           /* the model's (1 or 3)                     */
    const float *mean, *std;    /* (channels) each, or NULL: no normalising */
    int64_t batch_size;
    int64_t max_h, max_w;       /* the largest padded batch; 0: computed by
                                   qkv_det_fill_prepare                     */
    int64_t max_objects;        /* 0: the data set's most                   */
} qkv_det_fill_config;
/* Fills in max_h, max_w and max_objects from the data set and the resizes
 * (an augmentation with scales needs max_size > 0, which bounds both sides)
 * and returns the bytes of one batch (0 with the error on a bad config). */
QKV_API size_t qkv_det_fill_prepare(qkv_det_fill_config *c);
/* A qkv_loader_fill_fn: user is the qkv_det_fill_config. */
QKV_API qkv_status qkv_det_fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng,
                                void *batch);
/* A filled batch seen through its parts. */
typedef struct {
    int64_t n, C, H, W;          /* images, channels, padded size             */
    float *pixels;               /* (n, C, H, W)                              */
    float *mask;                 /* (n, H, W) 1 on pixels, 0 on padding       */
    int64_t *index;              /* (n) each image's index in the data set    */
    int64_t *size;               /* (n, 2) each image's (h, w) after resizing */
    int64_t *n_boxes;            /* (n)                                       */
    float *boxes;                /* (n, max_objects, 4) cxcywh / (w, h)       */
    int64_t *labels;             /* (n, max_objects) category ids             */
    int64_t max_objects;
} qkv_det_batch;
QKV_API qkv_det_batch qkv_det_batch_view(const qkv_det_fill_config *c, const void *batch);

/* ------------------------------------------------------------------------ */
/* Augmentations: torchvision's random transforms on float images (C, H, W)  */
/* in [0, 1] held in plain buffers, for the two views of self-supervised    */
/* training (MoCo). Each random one draws from the rng it is given (on the  */
/* loader's thread, a batch's own stream) and allocates nothing.            */
/* ------------------------------------------------------------------------ */

/* A window of an image: rows [top, top + height), columns [left, left +
 * width). */
typedef struct {
    int64_t top, left, height, width;
} qkv_crop_box;
/* RandomResizedCrop's window (torchvision's get_params) for an h x w image:
 * up to ten draws of an area fraction U(scale_min, scale_max) and a log-
 * uniform aspect ratio in [ratio_min, ratio_max] (width / height), sides
 * rounded half to even as Python's round, kept when the window fits, at a
 * uniform position; after ten misses the central crop at the nearest
 * allowed ratio. */
QKV_API qkv_crop_box qkv_random_resized_crop_box(qkv_rng *r, int64_t h, int64_t w,
                                                 float scale_min, float scale_max,
                                                 float ratio_min, float ratio_max);
/* F.resized_crop with bilinear interpolation and no antialiasing: the box of
 * src (C, h, w) resized to dst (C, oh, ow) as F.interpolate(align_corners=
 * False). QKV_ERR_ARG if the box is not inside the image. */
QKV_API qkv_status qkv_resized_crop(float *dst, int64_t oh, int64_t ow, const float *src,
                                    int64_t C, int64_t h, int64_t w, qkv_crop_box box);
/* F.hflip in place: x (C, h, w) mirrored left to right. */
QKV_API void qkv_hflip(float *x, int64_t C, int64_t h, int64_t w);
/* F.adjust_brightness: x (n) = clamp(x f, 0, 1) in place. */
QKV_API void qkv_adjust_brightness(float *x, int64_t n, float f);
/* F.adjust_contrast in place: x = clamp(f x + (1 - f) m, 0, 1), m the mean of
 * the image's grey version (the mean of x for C = 1; for C = 3 the mean of
 * 0.299 R + 0.587 G + 0.114 B). C must be 1 or 3. */
QKV_API qkv_status qkv_adjust_contrast(float *x, int64_t C, int64_t h, int64_t w, float f);
/* F.gaussian_blur in place: a k x k kernel (k odd) of the normal density
 * with std sigma at the offsets -(k-1)/2 .. (k-1)/2, normalised to sum 1,
 * applied with reflect padding (so k/2 < h and k/2 < w); tmp holds h w
 * floats. QKV_ERR_ARG on an even k, a kernel wider than the image allows or
 * sigma <= 0. */
QKV_API qkv_status qkv_gaussian_blur(float *x, int64_t C, int64_t h, int64_t w, int k,
                                     float sigma, float *tmp);

/* A view as MoCo makes one (moco/main_moco.py's augmentation, grey images):
 * RandomResizedCrop(area crop_min..crop_max, ratio 3/4..4/3) to the output
 * size, with probability `jitter` ColorJitter's brightness and contrast
 * (factors U(max(0, 1 - s), 1 + s), in random order; saturation and hue do
 * nothing to grey pixels, nor does RandomGrayscale), with probability `blur`
 * a Gaussian blur of sigma U(blur_sigma_min, blur_sigma_max) (kernel
 * 2 ceil(3 sigma) + 1, at most the image allows), and with probability
 * `flip` a mirror image. MoCo v2's: crop 0.2..1, jitter 0.8 of strength
 * 0.4, blur 0.5 of sigma 0.1..2 (at 224 pixels), flip 0.5; v1 has no blur. */
typedef struct {
    float crop_min, crop_max;          /* area fractions; crop_max 0: no crop */
    float jitter, brightness, contrast;
    float blur, blur_sigma_min, blur_sigma_max;
    float flip;
} qkv_view_aug;
/* dst (C, oh, ow) <- a random view of src (C, h, w); scratch holds
 * C max(h w, oh ow) floats. */
QKV_API qkv_status qkv_augment_view(float *dst, int64_t oh, int64_t ow, const float *src,
                                    int64_t C, int64_t h, int64_t w, const qkv_view_aug *a,
                                    qkv_rng *r, float *scratch);

/* ------------------------------------------------------------------------ */
/* Pictures and metrics                                                      */
/* ------------------------------------------------------------------------ */

/* Attention weights as d2l's show_heatmaps: w (rows, cols, Q, K), one panel
 * per (row, col) (e.g. layer x head) with queries down and keys across, one
 * colour scale for all panels with a bar, and axis labels. Writes a PNG. */
typedef struct {
    const char *xlabel;          /* NULL: "Keys"    */
    const char *ylabel;          /* NULL: "Queries" */
    const char *const *titles;   /* rows*cols panel titles, or NULL */
    int cell;                    /* pixels per weight; 0 chooses */
} qkv_heatmap_opts;
QKV_API qkv_status qkv_plot_heatmaps(const char *path, const float *w, int64_t rows,
                                     int64_t cols, int64_t nq, int64_t nk,
                                     const qkv_heatmap_opts *opts);

/* Training curves: one line per series, y against x (x NULL: 1, 2, .., n),
 * with ticks, labels and a legend. Writes a PNG. */
typedef struct {
    const char *name;
    const float *x, *y;
    int64_t n;
    int points;   /* nonzero: draw the points as dots, not joined (data) */
} qkv_series;
typedef struct {
    const char *xlabel, *ylabel, *title; /* NULL: "epoch", none, none */
    int log_y;                           /* logarithmic y axis */
} qkv_plot_opts;
QKV_API qkv_status qkv_plot_lines(const char *path, int nseries, const qkv_series *series,
                                  const qkv_plot_opts *opts);

/* Metrics as JSON lines, one object per epoch: {"epoch": 3, "loss": 0.25}.
 * Each line is flushed when written; NaN and infinities are written as null. */
typedef struct qkv_metrics qkv_metrics;
/* Creates (truncates) path. NULL with an error if it cannot. */
QKV_API qkv_metrics *qkv_metrics_open(const char *path);
/* Opens path to add lines after those it has (a resumed run). */
QKV_API qkv_metrics *qkv_metrics_append(const char *path);
QKV_API qkv_status qkv_metrics_write(qkv_metrics *m, int64_t epoch, int n,
                                     const char *const *names, const double *values);
QKV_API qkv_status qkv_metrics_close(qkv_metrics *m);

/* ------------------------------------------------------------------------ */
/* COCO detection evaluation (mAP): pycocotools' COCOeval for boxes        */
/* ------------------------------------------------------------------------ */

/* A ground truth (images, categories, annotations) and a list of detections,
 * read from COCO JSON or built in memory, evaluated as pycocotools' COCOeval
 * evaluates boxes: the 12 summary numbers, AP per category and the precision
 * and recall arrays, equal to pycocotools' (docs/coco.md).
 *
 *     qkv_coco_gt *gt = qkv_coco_gt_load("instances_val2017.json");
 *     qkv_coco_dets *dt = gt ? qkv_coco_dets_load("detections.json") : NULL;
 *     qkv_coco_result r = {0};
 *     if (!dt || qkv_coco_evaluate(gt, dt, &r) != QKV_OK)
 *         fprintf(stderr, "%s\n", qkv_error());
 *     else
 *         printf("AP %.3f\n", r.stats[0]);
 *     qkv_coco_result_free(&r);      // zeroed on error: always safe
 *     qkv_coco_dets_free(dt);
 *     qkv_coco_gt_free(gt);
 *
 * Legend: T 10 IoU thresholds .50:.05:.95, R 101 recall points 0:.01:1,
 * K categories (the ground truth's, ids ascending), A 4 area ranges (all,
 * small, medium, large), M 3 detection limits per image (1, 10, 100). */

#define QKV_COCO_T 10
#define QKV_COCO_R 101
#define QKV_COCO_A 4
#define QKV_COCO_M 3
#define QKV_COCO_NSTATS 12

/* One ground-truth box. */
typedef struct {
    int64_t id;          /* unique in the set; as in pycocotools, a detection
                          * matched to an annotation of id 0 counts as a false
                          * positive (pycocotools stores the id as "matched") */
    int64_t image_id, category_id;
    double bbox[4];      /* x, y, w, h; w, h >= 0 */
    double area;         /* >= 0: the area ranges test this (COCO: the mask's
                          * area), not w * h */
    int iscrowd;         /* 0 or 1: a crowd region is never missed, and any
                          * number of detections inside it are ignored */
} qkv_coco_ann;

/* One detection. Its area is w * h. */
typedef struct {
    int64_t image_id, category_id;
    double bbox[4];      /* x, y, w, h; w, h >= 0 */
    double score;        /* finite; higher first, ties in list order */
} qkv_coco_det;

typedef struct qkv_coco_gt qkv_coco_gt;
typedef struct qkv_coco_dets qkv_coco_dets;

/* Reads a COCO ground-truth file: an object with "images" ([{"id"}]),
 * "categories" ([{"id", "name"?}]) and "annotations" ([{"id", "image_id",
 * "category_id", "bbox", "area", "iscrowd"? (default 0), "ignore"?}]); other
 * keys are skipped. Ids are integers; image and category ids may be listed
 * twice (once counts), annotation ids may not. "ignore" is read and checked
 * but, as in pycocotools (which overwrites it with iscrowd), changes nothing.
 * NULL with QKV_ERR_IO (cannot read) or QKV_ERR_FORMAT, the message naming
 * the file and the entry: not JSON, a missing or mistyped key, a negative
 * width, height or area, an annotation whose image or category is not
 * listed, a repeated annotation id. Free with qkv_coco_gt_free. */
QKV_API qkv_coco_gt *qkv_coco_gt_load(const char *path);
/* Reads a COCO results file: a JSON list of {"image_id", "category_id",
 * "bbox", "score"} (other keys skipped). NULL with QKV_ERR_IO or
 * QKV_ERR_FORMAT naming the file and the entry (its index in the list). An
 * image or category missing from the ground truth is reported by
 * qkv_coco_evaluate, which sees both. A file of 4 MiB or more is read on
 * qkv_threads() threads (the same set). Free with qkv_coco_dets_free. */
QKV_API qkv_coco_dets *qkv_coco_dets_load(const char *path);

/* In memory (a training loop evaluating its own predictions). `name` stands
 * for a file in messages (NULL: "ground truth", "detections"). Each add
 * copies its argument and returns QKV_ERR_ARG on a bad value (negative size,
 * non-finite number, iscrowd not 0/1, an id beyond +-2^53) or QKV_ERR_NOMEM;
 * NULL gt or dt gives QKV_ERR_ARG. Entries are checked
 * against each other (unknown image or category, repeated annotation id)
 * when evaluated. */
QKV_API qkv_coco_gt *qkv_coco_gt_new(const char *name);
QKV_API qkv_status qkv_coco_gt_add_image(qkv_coco_gt *gt, int64_t image_id);
/* name: NULL or a label kept for tables and pictures. */
QKV_API qkv_status qkv_coco_gt_add_category(qkv_coco_gt *gt, int64_t category_id,
                                            const char *name);
QKV_API qkv_status qkv_coco_gt_add_ann(qkv_coco_gt *gt, const qkv_coco_ann *ann);
/* Counts as added (repeated image and category ids included). */
QKV_API int64_t qkv_coco_gt_count_images(const qkv_coco_gt *gt);
QKV_API int64_t qkv_coco_gt_count_anns(const qkv_coco_gt *gt);
/* The category's name, "" if it has none, NULL if no category has this id. */
QKV_API const char *qkv_coco_gt_category_name(const qkv_coco_gt *gt, int64_t category_id);
QKV_API void qkv_coco_gt_free(qkv_coco_gt *gt);

QKV_API qkv_coco_dets *qkv_coco_dets_new(const char *name);
QKV_API qkv_status qkv_coco_dets_add(qkv_coco_dets *dt, const qkv_coco_det *det);
QKV_API int64_t qkv_coco_dets_count(const qkv_coco_dets *dt);
QKV_API void qkv_coco_dets_free(qkv_coco_dets *dt);

/* What qkv_coco_evaluate returns; every array is owned by the result. */
typedef struct {
    double stats[QKV_COCO_NSTATS]; /* AP, AP50, AP75, APs, APm, APl, AR1, AR10,
                                    * AR100, ARs, ARm, ARl, as pycocotools'
                                    * COCOeval.stats; -1 where nothing counts */
    int64_t n_categories;          /* K */
    int64_t *category_ids;         /* (K) ascending */
    double *category_ap;           /* (K) AP at IoU .50:.95, all areas, 100
                                    * detections; -1 for a category without
                                    * ground truth */
    double *precision;             /* (T, R, K, A, M), -1 where a category has
                                    * no ground truth in that area range */
    double *recall;                /* (T, K, A, M), likewise */
    double iou_thresholds[QKV_COCO_T];
    double recall_thresholds[QKV_COCO_R];
    double area_ranges[QKV_COCO_A][2]; /* inclusive, on the annotation's area */
    int64_t max_dets[QKV_COCO_M];
} qkv_coco_result;

/* pycocotools' evaluate(), accumulate() and summarize() for iouType 'bbox'
 * with default parameters: on every image of gt and every category of gt,
 * detections sorted by score (stable) and cut to 100, greedy matching at each
 * IoU threshold to the unmatched ground truth of highest IoU (crowds and
 * boxes outside the area range ignored, not missed; IoU with a crowd is
 * intersection over the detection's area), precision made monotone and read
 * at the recall points. Runs on qkv_threads() threads; same numbers on any
 * count. QKV_ERR_FORMAT naming the entry (and both files) when a detection's
 * image or category is not in gt, or when gt contradicts itself;
 * QKV_ERR_NOMEM. On error *out is zeroed (qkv_coco_result_free is safe). */
QKV_API qkv_status qkv_coco_evaluate(const qkv_coco_gt *gt, const qkv_coco_dets *dt,
                                     qkv_coco_result *out);
/* The 12 numbers over one category (category index k in [0, K)), as
 * summarize() would give for a ground truth of that category alone; k = -1
 * gives r->stats. */
QKV_API void qkv_coco_summarize(const qkv_coco_result *r, int64_t k,
                                double stats[QKV_COCO_NSTATS]);
/* Line i (0..11) of summarize()'s printout for value v, without the newline:
 * " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.412".
 * Writes at most n bytes (NUL included); returns the length it needs. */
QKV_API int qkv_coco_stat_line(int i, double v, char *buf, size_t n);
/* Frees the arrays and zeroes r; NULL is a no-op. */
QKV_API void qkv_coco_result_free(qkv_coco_result *r);
/* Writes {"stats": [12], "stats_names": [12], "images", "annotations",
 * "detections", "categories": [{"id", "name", "ap", "stats": [12]}]} to path
 * (numbers in full double precision; through path.tmp and a rename, so a
 * failure leaves nothing half-written). QKV_ERR_IO naming the file. */
QKV_API qkv_status qkv_coco_save_json(const char *path, const qkv_coco_result *r,
                                      const qkv_coco_gt *gt, const qkv_coco_dets *dt);
/* Precision against recall (all areas, 100 detections) at IoU 0.50, 0.75 and
 * the mean over the ten thresholds: dir/pr_all.png (the mean over categories
 * with ground truth) and dir/pr_<id>.png for each such category; dir is
 * created. QKV_ERR_IO naming the file or directory. */
QKV_API qkv_status qkv_coco_plot_pr(const char *dir, const qkv_coco_result *r,
                                    const qkv_coco_gt *gt);

/* ------------------------------------------------------------------------ */
/* Modules (nn). A module is a struct of parameter pointers with three steps: */
/*   qkv_nn_X_init(m, ps, prefix, ...)  declares its parameters in a store    */
/*                                      under PyTorch's state_dict names;     */
/*   qkv_params_alloc(ps)               gives all of them memory at once;     */
/*   qkv_nn_X_reset(m, rng)             PyTorch's default initialisation;     */
/* then qkv_nn_X_forward(ctx, m, ...) as often as needed.                     */
/* ------------------------------------------------------------------------ */

/* Writes "prefix.leaf" (or "leaf" for an empty prefix) into buf. */
QKV_API char *qkv_nn_name(char *buf, size_t n, const char *prefix, const char *leaf);

/* nn.Linear: weight (out, in), bias (out) or NULL. */
typedef struct {
    qkv_tensor *weight, *bias;
    int64_t in_features, out_features;
} qkv_nn_linear;
QKV_API qkv_status qkv_nn_linear_init(qkv_nn_linear *m, qkv_params *ps, const char *prefix,
                                      int64_t in_features, int64_t out_features, int bias);
/* weight and bias U(-1/sqrt(in), 1/sqrt(in)), as PyTorch. */
QKV_API void qkv_nn_linear_reset(qkv_nn_linear *m, qkv_rng *r);
/* x (..., in) -> (..., out) */
QKV_API qkv_tensor *qkv_nn_linear_forward(qkv_ctx *ctx, const qkv_nn_linear *m, qkv_tensor *x);

/* Attention modules. Each forward takes a qkv_attn_opts (may be NULL) for
 * masks, valid lengths and the weights out-pointer; the dropout probability
 * is the module's own (opts->dropout_p is ignored). */

/* d2l's DotProductAttention: queries (B, N, D), keys (B, M, D), values
 * (B, M, Dv) -> (B, N, Dv). No parameters. */
typedef struct {
    float dropout;
} qkv_nn_dot_attention;
QKV_API qkv_tensor *qkv_nn_dot_attention_forward(qkv_ctx *ctx, const qkv_nn_dot_attention *m,
                                                 qkv_tensor *queries, qkv_tensor *keys,
                                                 qkv_tensor *values, const qkv_attn_opts *opts);

/* d2l's AdditiveAttention: W_k.weight (h, key_size), W_q.weight
 * (h, query_size), w_v.weight (1, h), no biases; scores
 * w_v tanh(W_q q_i + W_k k_j), masked softmax, dropout, times values.
 * queries (B, N, query_size), keys (B, M, key_size), values (B, M, Dv)
 * -> (B, N, Dv). opts->weights receives (B, N, M). */
typedef struct {
    qkv_nn_linear W_k, W_q, w_v;
    float dropout;
} qkv_nn_additive_attention;
QKV_API qkv_status qkv_nn_additive_attention_init(qkv_nn_additive_attention *m, qkv_params *ps,
                                                  const char *prefix, int64_t key_size,
                                                  int64_t query_size, int64_t num_hiddens,
                                                  float dropout);
QKV_API void qkv_nn_additive_attention_reset(qkv_nn_additive_attention *m, qkv_rng *r);
QKV_API qkv_tensor *qkv_nn_additive_attention_forward(qkv_ctx *ctx,
                                                      const qkv_nn_additive_attention *m,
                                                      qkv_tensor *queries, qkv_tensor *keys,
                                                      qkv_tensor *values,
                                                      const qkv_attn_opts *opts);

/* d2l's MultiHeadAttention: W_q (num_hiddens, query_size), W_k, W_v, W_o
 * (num_hiddens, num_hiddens) as nn.Linear (state_dict "W_q.weight", ...;
 * biases only with `bias`, d2l's default being none). queries (B, N,
 * query_size), keys (B, M, key_size), values (B, M, value_size) ->
 * (B, N, num_hiddens). Heads split num_hiddens; valid lengths (B) or
 * (B, N) apply to every head (d2l repeats them per head). opts->weights
 * receives (B, H, N, M). */
typedef struct {
    qkv_nn_linear W_q, W_k, W_v, W_o;
    int64_t num_hiddens, num_heads;
    float dropout;
} qkv_nn_d2l_mha;
QKV_API qkv_status qkv_nn_d2l_mha_init(qkv_nn_d2l_mha *m, qkv_params *ps, const char *prefix,
                                       int64_t key_size, int64_t query_size, int64_t value_size,
                                       int64_t num_hiddens, int64_t num_heads, float dropout,
                                       int bias);
QKV_API void qkv_nn_d2l_mha_reset(qkv_nn_d2l_mha *m, qkv_rng *r);
QKV_API qkv_tensor *qkv_nn_d2l_mha_forward(qkv_ctx *ctx, const qkv_nn_d2l_mha *m,
                                           qkv_tensor *queries, qkv_tensor *keys,
                                           qkv_tensor *values, const qkv_attn_opts *opts);

/* torch.nn.MultiheadAttention(embed_dim E, num_heads, dropout, bias, kdim,
 * vdim, batch_first). Parameters under PyTorch's names: in_proj_weight
 * (3E, E) when kdim == vdim == E, else q_proj_weight (E, E), k_proj_weight
 * (E, kdim), v_proj_weight (E, vdim); in_proj_bias (3E) and out_proj.bias
 * (E) with `bias`; out_proj.weight (E, E). (add_bias_kv and add_zero_attn
 * are not supported.) kdim, vdim 0 mean E. (The Transformer's d2l layout
 * fills q_proj_weight, k_proj_weight, v_proj_weight with d2l's W_q, W_k,
 * W_v, kdim == vdim == E, and no bias.)
 * reset: xavier_uniform on the in-projection weight(s), the out_proj
 * weight as nn.Linear (U(+-1/sqrt(E))), biases zero, as PyTorch.
 * forward: query (N, B, E), key (M, B, kdim), value (M, B, vdim) -> (N, B, E),
 * or (B, N, E) etc. with batch_first. opts->attn_mask is (N, M) or PyTorch's
 * (B*H, N, M) (or anything broadcasting to (B, H, N, M)); key_padding_mask
 * (B, M). With opts->weights (need_weights) it receives (B, N, M) averaged
 * over heads if opts->average_attn_weights, else (B, H, N, M); those are
 * taken before dropout (PyTorch 1.13 returns them after). */
typedef struct {
    qkv_tensor *in_proj_weight, *in_proj_bias;
    qkv_tensor *q_proj_weight, *k_proj_weight, *v_proj_weight;
    qkv_nn_linear out_proj;
    int64_t embed_dim, num_heads, kdim, vdim;
    float dropout;
    int batch_first;
} qkv_nn_mha;
QKV_API qkv_status qkv_nn_mha_init(qkv_nn_mha *m, qkv_params *ps, const char *prefix,
                                   int64_t embed_dim, int64_t num_heads, float dropout, int bias,
                                   int64_t kdim, int64_t vdim, int batch_first);
QKV_API void qkv_nn_mha_reset(qkv_nn_mha *m, qkv_rng *r);
QKV_API qkv_tensor *qkv_nn_mha_forward(qkv_ctx *ctx, const qkv_nn_mha *m, qkv_tensor *query,
                                       qkv_tensor *key, qkv_tensor *value,
                                       const qkv_attn_opts *opts);

/* Positional encodings, x (B, T, C) -> dropout(x + P[:T]), T <= max_len.
 * Sinusoidal (d2l): P[i, 2j] = sin(i / 10000^(2j/C)), P[i, 2j+1] =
 * cos(i / 10000^(2j/C)), computed in float32 as d2l does; no parameters.
 * Learnable: parameter "pos_embedding" (1, max_len, C), reset to
 * normal(0, 0.02) (d2l's ViT: randn * 0.02). */
typedef struct {
    qkv_tensor *pos_embedding; /* NULL for the sinusoidal one */
    int64_t num_hiddens, max_len;
    float dropout;
} qkv_nn_posenc;
/* max_len 0 means 1000. */
QKV_API qkv_status qkv_nn_posenc_sin_init(qkv_nn_posenc *m, int64_t num_hiddens, float dropout,
                                          int64_t max_len);
QKV_API qkv_status qkv_nn_posenc_learned_init(qkv_nn_posenc *m, qkv_params *ps,
                                              const char *prefix, int64_t num_hiddens,
                                              float dropout, int64_t max_len);
QKV_API void qkv_nn_posenc_reset(qkv_nn_posenc *m, qkv_rng *r);
QKV_API qkv_tensor *qkv_nn_posenc_forward(qkv_ctx *ctx, const qkv_nn_posenc *m, qkv_tensor *x);

/* DETR's 2-D sine encoding of an image batch (models/position_encoding.py,
 * PositionEmbeddingSine): mask (B, H, W), nonzero on padding (the official
 * mask, True on padding) -> pos (B, 2F, H, W), F = num_pos_feats (even;
 * DETR: 128 = hidden_dim / 2). With y, x the running counts of non-padding
 * pixels down each column and along each row (1-based), and with
 * `normalize`, y = y / (y at the last row + 1e-6) * scale (x likewise along
 * the row; scale 0 means 2 pi, DETR's), dim_t[i] = temperature^(2 floor(i/2)
 * / F), channel i < F is sin(y / dim_t[i]) for even i, cos for odd, and
 * channel F + i the same of x. Every step in float32 as PyTorch. A constant:
 * no gradient, nothing recorded. DETR: (mask, 128, 10000, 1, 0). */
QKV_API qkv_tensor *qkv_nn_posenc_sine2d(qkv_ctx *ctx, qkv_tensor *mask, int64_t num_pos_feats,
                                         float temperature, int normalize, float scale);

/* ------------------------------------------------------------------------ */
/* Transformer: position-wise FFN, layer norm, encoder and decoder blocks    */
/* and their stacks, post-norm or pre-norm (norm_first), in the state_dict   */
/* layouts of d2l, torch.nn.Transformer and DETR (docs/transformer.md).      */
/* Shapes: B batch, S source length, T target length, E = d_model.          */
/* ------------------------------------------------------------------------ */

typedef enum { QKV_ACT_RELU = 0, QKV_ACT_GELU } qkv_activation;

/* dense2(dropout(act(dense1(x)))): d2l's PositionWiseFFN (dropout 0, names
 * "ffn.dense1", "ffn.dense2") or the FFN inside PyTorch's Transformer layers
 * (names "linear1", "linear2", dropout between them). */
typedef struct {
    qkv_nn_linear dense1, dense2;
    qkv_activation activation;
    float dropout;
} qkv_nn_ffn;
QKV_API qkv_status qkv_nn_ffn_init(qkv_nn_ffn *m, qkv_params *ps, const char *name1,
                                   const char *name2, int64_t d_model, int64_t d_ffn,
                                   qkv_activation act, float dropout);
QKV_API void qkv_nn_ffn_reset(qkv_nn_ffn *m, qkv_rng *r);
/* x (..., d_model) -> (..., d_model) */
QKV_API qkv_tensor *qkv_nn_ffn_forward(qkv_ctx *ctx, const qkv_nn_ffn *m, qkv_tensor *x);

/* nn.LayerNorm over the last axis: weight, bias (C), named prefix.weight. */
typedef struct {
    qkv_tensor *weight, *bias;
    float eps;
} qkv_nn_layer_norm;
QKV_API qkv_status qkv_nn_layer_norm_init(qkv_nn_layer_norm *m, qkv_params *ps,
                                          const char *prefix, int64_t c, float eps);
/* Ones and zeros, as PyTorch. */
QKV_API void qkv_nn_layer_norm_reset(qkv_nn_layer_norm *m);
QKV_API qkv_tensor *qkv_nn_layer_norm_forward(qkv_ctx *ctx, const qkv_nn_layer_norm *m,
                                              qkv_tensor *x);
/* d2l's AddNorm: LayerNorm(dropout(y) + x), x and y (..., C). */
QKV_API qkv_tensor *qkv_nn_addnorm_forward(qkv_ctx *ctx, const qkv_nn_layer_norm *ln,
                                           qkv_tensor *x, qkv_tensor *y, float dropout);

/* The blocks' state_dict layouts. One implementation serves all three; a
 * layout only names the parameters and says which of them exist:
 *   QKV_TF_D2L    d2l's TransformerEncoder/Decoder blocks: attention with
 *                 W_q, W_k, W_v, W_o and no bias, "addnorm1.ln",
 *                 "ffn.dense1" (no dropout inside the FFN), no final norms;
 *   QKV_TF_TORCH  torch.nn.Transformer: packed in_proj_weight (3E, E) and
 *                 in_proj_bias, out_proj with bias, "linear1", "norm1", and
 *                 the stacks' final norms "encoder.norm", "decoder.norm";
 *   QKV_TF_DETR   facebookresearch/detr's Transformer: TORCH's names,
 *                 "decoder.norm" always, "encoder.norm" only with norm_first
 *                 (DETR removes it in post-norm). */
typedef enum { QKV_TF_D2L = 0, QKV_TF_TORCH, QKV_TF_DETR } qkv_tf_layout;

typedef struct {
    qkv_tf_layout layout;
    int64_t d_model, n_heads, d_ffn;
    int64_t n_enc, n_dec;      /* blocks, at most QKV_TF_MAX_LAYERS each */
    float dropout;
    float ln_eps;              /* 0 means 1e-5 */
    int norm_first;            /* pre-norm: x + sublayer(norm(x)) */
    qkv_activation activation;
} qkv_tf_config;
#define QKV_TF_MAX_LAYERS 12
/* The attention sublayers are qkv_nn_mha modules, batch first, in every
 * layout: TORCH and DETR fill in_proj_weight, in_proj_bias and out_proj;
 * D2L's W_q, W_k, W_v are q_proj_weight, k_proj_weight, v_proj_weight
 * (E, E) and W_o is out_proj, all without bias. */
typedef struct {
    qkv_nn_mha self_attn;
    qkv_nn_ffn ffn;
    qkv_nn_layer_norm norm1, norm2;
} qkv_tf_enc_layer;
typedef struct {
    qkv_nn_mha self_attn, cross_attn;
    qkv_nn_ffn ffn;
    qkv_nn_layer_norm norm1, norm2, norm3;
} qkv_tf_dec_layer;
/* Names (prefix "" here; DETR's model file uses "transformer"):
 *   TORCH, DETR  "encoder.layers.0.self_attn.in_proj_weight",
 *                "encoder.layers.0.linear1.weight", "encoder.layers.0.norm2.bias",
 *                "decoder.layers.1.multihead_attn.out_proj.weight",
 *                "decoder.layers.1.norm3.weight", "encoder.norm.weight",
 *                "decoder.norm.bias";
 *   D2L          "encoder.blks.block0.attention.W_q.weight",
 *                "encoder.blks.block0.addnorm1.ln.weight",
 *                "decoder.blks.block0.attention2.W_k.weight",
 *                "decoder.blks.block0.ffn.dense1.bias". */
typedef struct {
    qkv_tf_config cfg;
    qkv_tf_enc_layer enc[QKV_TF_MAX_LAYERS];
    qkv_tf_dec_layer dec[QKV_TF_MAX_LAYERS];
    qkv_nn_layer_norm enc_norm, dec_norm; /* the stacks' final norms */
    int has_enc_norm, has_dec_norm;       /* which of them the layout holds */
} qkv_transformer;

/* prefix is prepended to every name ("" or NULL for none). Errors: a bad
 * config (heads not dividing d_model, more than QKV_TF_MAX_LAYERS blocks, a
 * dropout outside [0, 1), an unknown layout), named in the message. */
QKV_API qkv_status qkv_transformer_init(qkv_transformer *m, qkv_params *ps, const char *prefix,
                                        const qkv_tf_config *cfg);
/* TORCH and DETR: xavier_uniform on every matrix, zero attention biases,
 * Linear's default biases (nn.Transformer's and DETR's _reset_parameters);
 * D2L: xavier_uniform on Linear weights (train_seq2seq's
 * xavier_init_weights). Layer norms ones and zeros. */
QKV_API void qkv_transformer_reset(qkv_transformer *m, qkv_rng *r);

/* What one forward takes besides its sequences, and what else it gives
 * back; all optional (a zeroed struct, or NULL: none). Masks as
 * qkv_attn_opts's, under PyTorch's names. */
typedef struct {
    const int64_t *src_valid_lens; /* (B) d2l: source keys at or beyond are masked (-1e6) */
    qkv_tensor *src_mask;          /* (S, S) or (B*H, S, S) */
    qkv_tensor *tgt_mask;          /* (T, T) or (B*H, T, T) */
    qkv_tensor *memory_mask;       /* (T, S) or (B*H, T, S) */
    /* (B, S), (B, T), (B, S) */
    qkv_tensor *src_key_padding_mask, *tgt_key_padding_mask, *memory_key_padding_mask;
    /* Each mask is bool when its flag is set (nonzero = masked, PyTorch's
     * True), else float and added (0 or -inf, or any bias). Kinds may mix:
     * PyTorch's tutorial passes a float causal tgt_mask
     * (generate_square_subsequent_mask) with bool padding masks. */
    int src_mask_bool, tgt_mask_bool, memory_mask_bool;
    int src_key_padding_bool, tgt_key_padding_bool, memory_key_padding_bool;
    int tgt_causal;                /* causal decoder self-attention (d2l training) */
    /* Positional terms, DETR's pos and query_pos, broadcasting to (B, S, E)
     * and (B, T, E). Every layer adds them to queries and keys, never to
     * values: src_pos to the encoder self-attention's queries and keys and
     * to the cross-attention's keys (memory + src_pos); tgt_pos to the
     * decoder self-attention's queries and keys and to the cross-attention's
     * queries. Pre-norm layers add them to the normalised input, as DETR's
     * forward_pre. NULL: none. */
    qkv_tensor *src_pos, *tgt_pos;
    /* If not NULL, arrays of n_enc (n_dec) pointers receiving each block's
     * attention weights (B, H, N, M), taken before dropout. */
    qkv_tensor **enc_weights, **dec_self_weights, **dec_cross_weights;
    /* If not NULL, receives (n_dec, B, T, E): each decoder layer's output
     * through the decoder's final norm (when the layout has one), stacked,
     * for auxiliary losses (DETR's return_intermediate); the last equals the
     * decoder's output. */
    qkv_tensor **dec_intermediate;
} qkv_tf_opts;

/* src (B, S, E), tgt (B, T, E), embedded, batch first -> memory (B, S, E),
 * output (B, T, E), each through its stack's final norm when the layout
 * has one. NULL with the message on a shape or mask that does not fit. */
QKV_API qkv_tensor *qkv_transformer_encode(qkv_ctx *ctx, const qkv_transformer *m,
                                           qkv_tensor *src, const qkv_tf_opts *opts);
QKV_API qkv_tensor *qkv_transformer_decode(qkv_ctx *ctx, const qkv_transformer *m,
                                           qkv_tensor *tgt, qkv_tensor *memory,
                                           const qkv_tf_opts *opts);
QKV_API qkv_tensor *qkv_transformer_forward(qkv_ctx *ctx, const qkv_transformer *m,
                                            qkv_tensor *src, qkv_tensor *tgt,
                                            const qkv_tf_opts *opts);

/* DETR's transformer (facebookresearch/detr models/transformer.py,
 * Transformer.forward with return_intermediate_dec) on m, of layout
 * QKV_TF_DETR for DETR's model (init with prefix "transformer" for its
 * names). src (B, S, E): the flattened image features (DETR's (S, B, E),
 * batch first); pos (B, S, E): their positional encoding; mask (B, S) bool,
 * nonzero on padding, or NULL; query_pos (T, E) (query_embed.weight, shared
 * by the batch) or (B, T, E). The decoder starts from zeros (B, T, E); the
 * encoder's self-attention and the cross-attention ignore the padded keys;
 * pos and query_pos act as qkv_tf_opts's src_pos and tgt_pos. Returns hs
 * (n_dec, B, T, E): every decoder layer's output through decoder.norm, as
 * DETR's hs (its (L, B, T, E) after the transpose); *memory, if memory is not
 * NULL, receives the encoder's output (B, S, E). NULL on bad shapes (named)
 * or a model without decoder blocks. */
QKV_API qkv_tensor *qkv_detr_transformer_forward(qkv_ctx *ctx, const qkv_transformer *m,
                                                 qkv_tensor *src, qkv_tensor *pos,
                                                 qkv_tensor *mask, qkv_tensor *query_pos,
                                                 qkv_tensor **memory);

/* Incremental decoding: each decoder block keeps the keys and values of the
 * positions decoded so far, and the projected memory, in arena memory of the
 * ctx given to qkv_tf_cache_init (do not reset it while decoding). A step
 * equals the last row of the causal full decode. */
typedef struct {
    int64_t batch, src_len, max_len, len;   /* len: positions decoded so far */
    qkv_tensor *k[QKV_TF_MAX_LAYERS], *v[QKV_TF_MAX_LAYERS];   /* (B, H, max_len, D) */
    qkv_tensor *mk[QKV_TF_MAX_LAYERS], *mv[QKV_TF_MAX_LAYERS]; /* (B, H, S, D)       */
    int64_t *src_valid_lens;                /* (B) or NULL */
    qkv_tensor *memory_key_padding_mask;    /* (B, S) or NULL */
    int memory_key_padding_bool;
    /* If not NULL: each step writes its weights, batch row 0, into row len of
     * (n_dec, H, max_len, max_len) and (n_dec, H, max_len, S). */
    float *self_weights, *cross_weights;
} qkv_tf_cache;
/* memory (B, S, E); opts: src_valid_lens, memory_key_padding_mask and its
 * flag (others are ignored, but positional terms are refused: the steps
 * have none). */
QKV_API qkv_status qkv_tf_cache_init(qkv_ctx *ctx, const qkv_transformer *m, qkv_tf_cache *c,
                                     qkv_tensor *memory, int64_t max_len,
                                     const qkv_tf_opts *opts);
/* x (B, 1, E), the embedded token at position c->len -> (B, 1, E). */
QKV_API qkv_tensor *qkv_transformer_decode_step(qkv_ctx *ctx, const qkv_transformer *m,
                                                qkv_tf_cache *c, qkv_tensor *x);
/* Beam search: batch row i takes the cache of row from[i] (B entries), the
 * memory and valid lengths too (a memory_key_padding_mask is not moved). */
QKV_API qkv_status qkv_tf_cache_reorder(qkv_ctx *ctx, qkv_tf_cache *c, const int64_t *from);

/* ------------------------------------------------------------------------ */
/* Convolutional networks: Conv2d, BatchNorm2d, MaxPool2d and ResNet         */
/* (torchvision's, with DETR's and MoCo's options; docs/resnet.md). ReLU has  */
/* no state: it is the op qkv_relu.                                          */
/* ------------------------------------------------------------------------ */

/* nn.Conv2d: weight (out, in/groups, kh, kw) and bias (out) or NULL, named
 * prefix.weight, prefix.bias; opts (copied, may be NULL) gives stride,
 * padding, dilation and groups. x (B, in, H, W) -> (B, out, Ho, Wo).
 * Errors: sizes not positive, channels not divisible by groups. */
typedef struct {
    qkv_tensor *weight, *bias;
    int64_t in_channels, out_channels;
    qkv_conv2d_opts opts;
} qkv_nn_conv2d;
QKV_API qkv_status qkv_nn_conv2d_init(qkv_nn_conv2d *m, qkv_params *ps, const char *prefix,
                                      int64_t in_channels, int64_t out_channels, int kernel_h,
                                      int kernel_w, const qkv_conv2d_opts *opts, int bias);
/* PyTorch's: weight and bias U(+-1/sqrt(fan_in)), fan_in = in/groups kh kw
 * (kaiming_uniform with a = sqrt(5)). */
QKV_API void qkv_nn_conv2d_reset(qkv_nn_conv2d *m, qkv_rng *r);
QKV_API qkv_tensor *qkv_nn_conv2d_forward(qkv_ctx *ctx, const qkv_nn_conv2d *m, qkv_tensor *x);

/* nn.BatchNorm2d (any x (B, C, ...)): parameters prefix.weight, .bias (C),
 * buffers .running_mean, .running_var (C) and .num_batches_tracked (a
 * single value, stored as float; PyTorch's is int64, and load_state_dict
 * copies either into the other). frozen: DETR's FrozenBatchNorm2d, whose
 * weight, bias, running_mean and running_var are all buffers (no gradient,
 * not counted by qkv_params_numel) and which has no num_batches_tracked.
 * init sets eps 1e-5 and momentum 0.1 (change the fields after it). */
typedef struct {
    qkv_tensor *weight, *bias, *running_mean, *running_var;
    qkv_tensor *num_batches_tracked; /* NULL when frozen */
    int64_t num_features;
    double momentum;
    float eps;
    int frozen;
    qkv_comm *sync;                  /* SyncBatchNorm over these ranks (qkv_bn_opts) */
} qkv_nn_batch_norm;
QKV_API qkv_status qkv_nn_batch_norm_init(qkv_nn_batch_norm *m, qkv_params *ps,
                                          const char *prefix, int64_t num_features, int frozen);
/* weight 1, bias 0, running_mean 0, running_var 1, num_batches_tracked 0. */
QKV_API void qkv_nn_batch_norm_reset(qkv_nn_batch_norm *m);
/* qkv_batch_norm_ext with the module's tensors: batch statistics in
 * training mode (in `groups` groups of rows, 0 or 1 for the whole batch;
 * shuffle BN), running statistics in eval mode or when frozen. */
QKV_API qkv_tensor *qkv_nn_batch_norm_forward(qkv_ctx *ctx, const qkv_nn_batch_norm *m,
                                              qkv_tensor *x, int64_t groups);

/* nn.MaxPool2d(kernel, stride, padding), square: no parameters. */
typedef struct {
    int kernel, stride, padding; /* stride 0 means kernel */
} qkv_nn_max_pool2d;
QKV_API qkv_tensor *qkv_nn_max_pool2d_forward(qkv_ctx *ctx, const qkv_nn_max_pool2d *m,
                                              qkv_tensor *x);

/* torchvision's ResNet (v1.5: a bottleneck's stride on its 3x3 conv), depth
 * 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks), under torchvision's
 * state_dict names: conv1, bn1, layer1.0.conv1, layer1.0.bn1, ..,
 * layer2.0.downsample.0 (the 1x1 conv), layer2.0.downsample.1 (its batch
 * norm), .., fc; each name after `prefix` (DETR's backbone:
 * "backbone.0.body"). Options:
 *   in_channels   the image's channels (0 means 3; 1 for grey images);
 *   num_classes   fc's outputs; 0: no fc (a backbone, as DETR's body);
 *   fc_hidden     > 0: fc is MoCo v2's MLP head, fc.0 Linear(F, fc_hidden),
 *                 ReLU, fc.2 Linear(fc_hidden, num_classes);
 *   small_stem    conv1 3x3 stride 1 padding 1 and no max pool (the CIFAR
 *                 variant of MoCo's demo, for 28x28 or 32x32 images);
 *   frozen_bn     every batch norm is DETR's FrozenBatchNorm2d;
 *   frozen_stages the first stages' parameters are QKV_PARAM_FROZEN: 1 the
 *                 stem (conv1, bn1), 2 also layer1 (DETR), .., 5 all but fc;
 *   zero_init_residual  reset zeroes each block's last BN weight.
 *   bn_eps, bn_momentum 0 mean 1e-5 and 0.1;
 *   width         the stem's channels and layer1's planes, doubled at each
 *                 layer (0 means torchvision's 64; MoCo's small models on
 *                 28x28 images use fewer: the names stay torchvision's).
 * F = 8 width (basic) or 32 width (bottleneck) features come out of layer4:
 * 512 or 2048 at torchvision's width. */
typedef struct {
    int depth;
    int64_t in_channels, num_classes, fc_hidden;
    int64_t width;
    int small_stem, frozen_bn, frozen_stages, zero_init_residual;
    float bn_eps;
    double bn_momentum;
    qkv_comm *sync_bn;  /* every batch norm synchronised over these ranks
                           (SyncBatchNorm, docs/distributed.md); NULL: none */
} qkv_resnet_config;

#define QKV_RESNET_MAX_BLOCKS 50
typedef struct {
    qkv_nn_conv2d conv1, conv2, conv3;          /* conv3: bottlenecks only */
    qkv_nn_batch_norm bn1, bn2, bn3;
    qkv_nn_conv2d downsample_conv;              /* weight NULL: identity   */
    qkv_nn_batch_norm downsample_bn;
} qkv_resnet_block;
typedef struct {
    qkv_resnet_config cfg;
    int bottleneck;
    int64_t features;                           /* F */
    int n_blocks[4];                            /* per layer */
    qkv_nn_conv2d conv1;
    qkv_nn_batch_norm bn1;
    qkv_nn_max_pool2d maxpool;
    qkv_resnet_block blocks[QKV_RESNET_MAX_BLOCKS]; /* layer1's, then layer2's, .. */
    qkv_nn_linear fc, fc_out;   /* fc (or fc.0 and fc.2 with fc_hidden) */
} qkv_resnet;

/* Declares every parameter and buffer in torchvision's state_dict order.
 * Errors: a depth not in the list, channels or classes negative. */
QKV_API qkv_status qkv_resnet_init(qkv_resnet *m, qkv_params *ps, const char *prefix,
                                   const qkv_resnet_config *cfg);
/* torchvision's initialisation: convolutions kaiming_normal (fan_out,
 * ReLU gain), batch norms weight 1, bias 0 (and the last of each block 0
 * with zero_init_residual), running statistics 0 and 1, fc as nn.Linear. */
QKV_API void qkv_resnet_reset(qkv_resnet *m, qkv_rng *r);

typedef enum {
    QKV_RESNET_LOGITS = 0, /* fc's output (B, num_classes); the pooled
                              features without fc */
    QKV_RESNET_POOLED,     /* global average pool (B, F): before fc */
    QKV_RESNET_C5,         /* layer4's map (B, F, h, w), stride 32 (8 with
                              small_stem) */
} qkv_resnet_output;
/* x (B, in_channels, H, W) -> the output asked for. Batch norms use batch
 * statistics in training mode, in bn_groups groups of rows (0 or 1: the
 * whole batch; shuffle BN), running statistics in eval mode or frozen.
 * With gradients off and no running statistics to update (eval mode, or
 * frozen_bn), each stage's intermediates are dropped once its output is
 * copied out, so memory holds about one block (ResNet-50 at 800x1066,
 * DETR's inference size). NULL with an error on a wrong shape. */
QKV_API qkv_tensor *qkv_resnet_forward(qkv_ctx *ctx, const qkv_resnet *m, qkv_tensor *x,
                                       qkv_resnet_output output, int64_t bn_groups);
/* The (h, w) of C5 for an (H, W) input, as the convolutions compute it. */
QKV_API void qkv_resnet_c5_size(const qkv_resnet *m, int64_t H, int64_t W, int64_t *h,
                                int64_t *w);
/* DETR's backbone mask: mask (B, H, W), nonzero on padding, resized to
 * out (B, h, w) by nearest interpolation as F.interpolate(mask[None].float(),
 * size=(h, w)).bool()[0] does: source row min(floor(i s), H - 1) with the
 * float scale s = H / h (row i itself when h = H, i / 2 when h = 2 H), the
 * same for columns. Errors: a size < 1, NULL buffers. */
QKV_API qkv_status qkv_mask_resize_nearest(uint8_t *out, const uint8_t *mask, int64_t B,
                                           int64_t H, int64_t W, int64_t h, int64_t w);

/* ------------------------------------------------------------------------ */
/* Models: kernel regression (Nadaraya-Watson attention pooling, d2l r0.17   */
/* "nadaraya-watson", kernels from v1.0.3 "attention-pooling")               */
/* ------------------------------------------------------------------------ */

/* The book's data: x_train = sort(U[0,1) * 5) (n_train), y_train = f(x) +
 * N(0, noise^2), x_test = 0, 0.1, .., 4.9 (50 points), y_truth = f(x_test),
 * f(x) = 2 sin x + x^0.8. Arrays are malloc'd; qkv_kreg_data_free. */
typedef struct {
    int64_t n_train, n_test;
    float *x_train, *y_train; /* (n_train), x ascending */
    float *x_test, *y_truth;  /* (n_test)               */
} qkv_kreg_data;
QKV_API float qkv_kreg_f(float x);
QKV_API qkv_status qkv_kreg_data_make(qkv_kreg_data *d, qkv_rng *r, int64_t n_train,
                                      float noise);
QKV_API void qkv_kreg_data_free(qkv_kreg_data *d);

typedef enum {
    QKV_KERNEL_GAUSSIAN = 0, /* exp(-u^2 / 2)       */
    QKV_KERNEL_BOXCAR,       /* [|u| < 1]           */
    QKV_KERNEL_CONSTANT,     /* 1                   */
    QKV_KERNEL_EPANECHNIKOV, /* max(0, 1 - |u|)     */
} qkv_kernel;
/* "gaussian", "boxcar", "constant", "epanechnikov"; and back (-1 if unknown). */
QKV_API const char *qkv_kernel_name(qkv_kernel k);
QKV_API int qkv_kernel_parse(const char *name);

/* Nonparametric pooling: weights[i][j] = K((q_i - k_j) / sigma) / sum_j K(..),
 * y_hat[i] = sum_j weights[i][j] v_j. queries (n_q), keys and values (n_k),
 * shared by every query; y_hat (n_q); weights (n_q, n_k) or NULL. The
 * Gaussian is computed as a softmax, so far queries do not underflow; a query
 * that no key reaches (boxcar, Epanechnikov) gets NaN, as in PyTorch. */
QKV_API qkv_status qkv_kreg_pool(float *y_hat, float *weights, const float *queries,
                                 int64_t n_q, const float *keys, const float *values,
                                 int64_t n_k, qkv_kernel kernel, float sigma);

/* Parametric pooling (d2l's NWKernelRegression), recorded for autograd:
 * queries (N), keys (N, M), values (N, M), w (1) -> y_hat (N) with
 * y_hat_i = sum_j softmax_j(-((q_i - k_ij) w)^2 / 2) v_ij. If attention is not
 * NULL it receives the weights (N, M). */
QKV_API qkv_tensor *qkv_kreg_forward(qkv_ctx *ctx, qkv_tensor *queries, qkv_tensor *keys,
                                     qkv_tensor *values, qkv_tensor *w,
                                     qkv_tensor **attention);

/* The book's training keys and values (n, n - 1) from x, y (n): row i
 * holds every pair except pair i (the `1 - eye` mask). */
QKV_API void qkv_kreg_leave_one_out(float *keys, float *values, const float *x, const float *y,
                                    int64_t n);

/* Evaluates the parametric model with every training pair as keys/values:
 * y_hat (n_q), weights (n_q, n_k) or NULL. */
QKV_API qkv_status qkv_kreg_predict(float *y_hat, float *weights, const float *queries,
                                    int64_t n_q, const float *keys, const float *values,
                                    int64_t n_k, float w);

/* ------------------------------------------------------------------------ */
/* Models: the book's Transformer for translation (d2l r0.17 / v1.0.3)       */
/* ------------------------------------------------------------------------ */

/* Embedding * sqrt(E) + sinusoidal positions, dropout, the blocks, and for
 * the decoder a Linear to the target vocabulary. Names as d2l's
 * EncoderDecoder: "encoder.embedding.weight", .., "decoder.dense.weight". */
typedef struct {
    qkv_transformer tf;
    qkv_tensor *src_embedding, *tgt_embedding; /* (V_src, E), (V_tgt, E) */
    qkv_nn_linear dense;                       /* (V_tgt, E) */
    int64_t src_vocab, tgt_vocab;
} qkv_seq2seq;
/* cfg->layout must be QKV_TF_D2L. */
QKV_API qkv_status qkv_seq2seq_init(qkv_seq2seq *m, qkv_params *ps, const qkv_tf_config *cfg,
                                    int64_t src_vocab, int64_t tgt_vocab);
/* Embeddings N(0, 1), Linear weights xavier_uniform (train_seq2seq). */
QKV_API void qkv_seq2seq_reset(qkv_seq2seq *m, qkv_rng *r);
/* Teacher forcing: src (B, S) ids with src_valid (B), dec_in (B, T) ids ->
 * logits (B, T, V_tgt). opts (may be NULL) only collects weights and
 * intermediate outputs; its masks and positional terms are ignored. */
QKV_API qkv_tensor *qkv_seq2seq_forward(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                                        const int64_t *src_valid, int64_t batch, int64_t src_len,
                                        const int64_t *dec_in, int64_t tgt_len,
                                        const qkv_tf_opts *opts);
/* The same without the dense layer: the decoder's output (B, T, E), as
 * for qkv_linear_cross_entropy(ctx, h, m->dense.weight, m->dense.bias, ..),
 * which takes the loss of every position without the (B T, V_tgt) logits. */
QKV_API qkv_tensor *qkv_seq2seq_hidden(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                                       const int64_t *src_valid, int64_t batch, int64_t src_len,
                                       const int64_t *dec_in, int64_t tgt_len,
                                       const qkv_tf_opts *opts);
/* Teacher forcing and the loss in one step: the cross-entropy summed over
 * the target tokens that are not `pad` (qkv_cross_entropy of the forward's
 * logits with ignore_index pad and QKV_REDUCE_SUM), a scalar. Equal to
 * that, to rounding, and faster: padding is dead work, so it is skipped
 * (qkv_rows). Source positions at or past src_valid are hidden from every
 * query (valid lengths), target positions after a row's last non-pad
 * target from every earlier one (causal); only the rest are computed, and
 * the loss only where a target counts, through qkv_linear_cross_entropy
 * (no logits tensor). A source of valid length <= 0 keeps
 * all its positions (its queries see all keys, uniformly). */
QKV_API qkv_tensor *qkv_seq2seq_loss(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                                     const int64_t *src_valid, int64_t batch, int64_t src_len,
                                     const int64_t *dec_in, const int64_t *target,
                                     int64_t tgt_len, int64_t pad);
/* Translation of one source (src_len ids, valid length src_valid) in eval
 * mode without gradients, at most max_len tokens, stopping at eos (not
 * written). beam <= 1: greedy, as d2l's predict_seq2seq; else beam search
 * keeping `beam` hypotheses, ranked by log-probability / length^alpha
 * (length counts the eos). out receives the ids; returns their count or -1.
 * attn (may be NULL): encoder self-attention (n_enc, H, S, S), decoder self
 * (n_dec, H, max_len, max_len) and cross (n_dec, H, max_len, S) weights of
 * the output, one decoder row per step (the eos step included, so
 * min(count + 1, max_len) rows), rows beyond zero; with a beam, those of
 * qkv_seq2seq_attention on the chosen ids. Uses ctx's arena (reset after). */
typedef struct {
    float *enc, *dec_self, *dec_cross;
} qkv_seq2seq_attn;
QKV_API int64_t qkv_seq2seq_translate(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                                      int64_t src_len, int64_t src_valid, int64_t bos,
                                      int64_t eos, int64_t max_len, int beam, float alpha,
                                      int64_t *out, qkv_seq2seq_attn *attn);
/* The attention weights of a given translation tgt (n <= max_len ids, no
 * eos): the cached decoder run step by step on bos, tgt[0], .. (teacher
 * forcing, as greedy decoding records them), min(n + 1, max_len) steps, in
 * eval mode without gradients. attn as qkv_seq2seq_translate's (all three
 * buffers). Returns the decoder rows written or -1. Uses ctx's arena. */
QKV_API int64_t qkv_seq2seq_attention(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src,
                                      int64_t src_len, int64_t src_valid, int64_t bos,
                                      const int64_t *tgt, int64_t n, int64_t max_len,
                                      qkv_seq2seq_attn *attn);

/* BLEU as d2l's bleu(): tokens split on single spaces, n-grams 1..k,
 * exp(min(0, 1 - len_label / len_pred)) * prod_n p_n^(1/2^n). 0 when the
 * prediction has fewer than k tokens. */
QKV_API double qkv_bleu(const char *pred, const char *label, int k);
/* Corpus BLEU as sacrebleu (tokenize "none": split on spaces): clipped
 * n-gram matches summed over the corpus, n = 1..4, geometric mean, brevity
 * penalty exp(1 - r/c) over the total lengths, sacrebleu's default "exp"
 * smoothing of zero counts. In [0, 1] (sacrebleu prints 100x). */
QKV_API double qkv_corpus_bleu(int64_t n, const char *const *preds, const char *const *refs);

/* ------------------------------------------------------------------------ */
/* Models: Vision Transformer (d2l v1.0.3 "vision-transformer") in the      */
/* state_dict layout of torchvision 0.14's VisionTransformer (docs/vit.md)   */
/* ------------------------------------------------------------------------ */

/* Names: "conv_proj.weight" (C, Cin, p, p), "conv_proj.bias", "class_token"
 * (1, 1, C), "encoder.pos_embedding" (1, S + 1, C) with S = (image/p)^2,
 * "encoder.layers.encoder_layer_N.{ln_1, self_attention.in_proj_weight,
 * self_attention.in_proj_bias, self_attention.out_proj, ln_2, mlp.0,
 * mlp.3}", "encoder.ln", "heads.head". torchvision fixes Cin = 3; qkv also
 * takes Cin = 1 (Fashion-MNIST), which torchvision loads after its
 * conv_proj is replaced by a Conv2d(1, C, p, p). */
typedef struct {
    int64_t image_size, patch_size, in_channels;
    int64_t hidden_dim, mlp_dim, num_heads, num_layers;
    int64_t num_classes;     /* 0: no head (a backbone: the output is the features) */
    float dropout;           /* after the embedding, attention and in the MLP */
    float attention_dropout; /* on the attention weights */
    float ln_eps;            /* 0 means 1e-6, torchvision's */
    /* Only the class token's output reaches the head, so by default (0)
     * the last block computes only it (every token is still its keys and
     * values): the same logits and gradients for less work. 1: it
     * computes every token's, as torchvision does (benchmarks on equal
     * work). Attention maps (qkv_vit_forward's attn) need every token. */
    int every_token;
} qkv_vit_config;

#define QKV_VIT_MAX_LAYERS 32
typedef struct {
    qkv_tensor *ln_1_weight, *ln_1_bias, *ln_2_weight, *ln_2_bias;
    qkv_nn_mha self_attention;     /* batch first */
    qkv_nn_linear mlp_0, mlp_3;    /* (mlp_dim, C), (C, mlp_dim) */
} qkv_vit_block;
typedef struct {
    qkv_vit_config cfg;
    qkv_tensor *conv_proj_weight, *conv_proj_bias, *class_token, *pos_embedding;
    qkv_vit_block layers[QKV_VIT_MAX_LAYERS];
    qkv_tensor *ln_weight, *ln_bias;
    qkv_nn_linear head;
} qkv_vit;

QKV_API qkv_status qkv_vit_init(qkv_vit *m, qkv_params *ps, const qkv_vit_config *cfg);
/* torchvision's initialisation: conv_proj trunc_normal(std sqrt(1/fan_in)),
 * class token 0, positions N(0, 0.02), attention as nn.MultiheadAttention,
 * MLP xavier_uniform with N(0, 1e-6) biases, head zero. */
QKV_API void qkv_vit_reset(qkv_vit *m, qkv_rng *r);
/* The configuration a state dict implies: image, patch, channels, width,
 * depth, MLP and classes from the shapes; num_heads from the metadata key
 * "num_heads" unless cfg->num_heads is already set (> 0). Dropouts are left
 * as cfg has them. */
QKV_API qkv_status qkv_vit_config_from_file(qkv_vit_config *cfg, const qkv_st_file *f);
/* x (B, Cin, image, image) -> logits (B, K); with num_classes 0 (no head,
 * heads.head is not declared) the features (B, C): the class token after
 * the final norm, what the head would read. attn (NULL, or num_layers
 * pointers) receives each block's head-averaged attention weights
 * (B, S + 1, S + 1), taken before dropout (they cost the materialised scores). */
QKV_API qkv_tensor *qkv_vit_forward(qkv_ctx *ctx, const qkv_vit *m, qkv_tensor *x,
                                    qkv_tensor **attn);
/* Attention rollout (Abnar & Zuidema 2020) of one image: w holds L
 * head-averaged weight matrices (N, N) back to back; each becomes
 * 0.5 W + 0.5 I with rows renormalised, and their product from the first
 * block to the last gives the class token's row, of which map receives the
 * N - 1 patch entries, scaled to a maximum of 1. */
QKV_API qkv_status qkv_vit_rollout(float *map, const float *w, int64_t L, int64_t N);

/* ------------------------------------------------------------------------ */
/* Models: DETR's matcher and set criterion (facebookresearch/detr           */
/* models/matcher.py, models/detr.py SetCriterion; docs/detr.md)             */
/* ------------------------------------------------------------------------ */

/* One image's ground truth: n objects, labels (n) in [0, K), boxes (n, 4)
 * cxcywh normalised by the image size (w, h >= 0). Caller-owned; read
 * during the call only. */
typedef struct {
    int64_t n;
    const int64_t *labels;
    const float *boxes;
} qkv_detr_target;

/* The matcher's cost weights and the loss weights (DETR's defaults from
 * qkv_detr_loss_defaults() in brackets; NULL opts means those). */
typedef struct {
    float cost_class, cost_bbox, cost_giou;    /* matching cost [1, 5, 2]       */
    float weight_ce, weight_bbox, weight_giou; /* loss weights [1, 5, 2]        */
    float eos_coef;   /* class weight of no-object in the cross entropy [0.1]  */
    int aux_loss;     /* every decoder layer (1) or the last only [1]          */
    float num_boxes;  /* the box losses' divisor; 0: the batch's target count,
                         at least 1 [0]. Set it to the global average count
                         when a batch is split (ranks, shards), as DETR
                         all-reduces it. */
} qkv_detr_loss_opts;
QKV_API qkv_detr_loss_opts qkv_detr_loss_defaults(void);

/* DETR's Hungarian matcher, on values (no gradient, nothing recorded):
 * logits (B, Q, K + 1) (the last class is no-object), boxes (B, Q, 4)
 * cxcywh, targets[B] -> match (B, Q): the target index matched to each
 * query, or -1. Per image, the assignment of least total cost
 *   C[q, t] = cost_bbox |box_q - box_t|_1 - cost_class softmax(logits_q)[label_t]
 *             - cost_giou GIoU(xyxy(box_q), xyxy(box_t))
 * (qkv_linear_sum_assignment): min(Q, n) queries get a target. Scratch
 * comes from ctx's arena (no malloc). Errors: shapes (QKV_ERR_SHAPE), a
 * label outside [0, K) or a bad box, naming image and index (QKV_ERR_ARG),
 * a NaN cost (QKV_ERR_NAN). */
QKV_API qkv_status qkv_detr_match(qkv_ctx *ctx, qkv_tensor *logits, qkv_tensor *boxes,
                                  const qkv_detr_target *targets,
                                  const qkv_detr_loss_opts *opts, int64_t *match);

/* What qkv_detr_loss measured, for logging (DETR's loss dict): the last
 * layer's unweighted terms, its class_error (100 - top-1 accuracy in % of
 * the matched queries; 100 when none) and cardinality_error (mean over
 * images of |queries whose argmax is not no-object - targets|), the divisor
 * num_boxes, and layers (n_layers, 3): ce, bbox, giou of every layer
 * computed, first to last, in ctx's arena (valid until qkv_ctx_reset). */
typedef struct {
    float loss_ce, loss_bbox, loss_giou;
    float class_error, cardinality_error;
    float num_boxes;
    int64_t n_layers;
    const float *layers;
} qkv_detr_loss_log;

/* DETR's set criterion: logits (L, B, Q, K + 1) and boxes (L, B, Q, 4)
 * cxcywh, one entry per decoder layer, last = the final one (or (B, Q, .)
 * for one layer), on the tape -> the loss () to call qkv_backward on. For
 * each layer (the last only without aux_loss) the queries are matched anew
 * (qkv_detr_match), then
 *   ce   = cross entropy of every query against its target's label, or
 *          no-object (class K) if unmatched, class weights 1 and eos_coef
 *          for no-object, as a weighted mean (qkv_cross_entropy),
 *   bbox = sum over matched pairs of |box_q - box_t|_1 / num_boxes,
 *   giou = sum over matched pairs of (1 - GIoU) / num_boxes,
 * and loss = sum over layers of weight_ce ce + weight_bbox bbox +
 * weight_giou giou. Gradients reach logits and boxes. log may be NULL.
 * Everything, matching included, comes from ctx's arena. Errors as
 * qkv_detr_match's; NULL returned. */
QKV_API qkv_tensor *qkv_detr_loss(qkv_ctx *ctx, qkv_tensor *logits, qkv_tensor *boxes,
                                  const qkv_detr_target *targets,
                                  const qkv_detr_loss_opts *opts, qkv_detr_loss_log *log);

/* ------------------------------------------------------------------------ */
/* Models: MoCo, momentum contrast (facebookresearch/moco builder.py for v1 */
/* and v2, facebookresearch/moco-v3 moco/builder.py for v3; docs/moco.md)   */
/* ------------------------------------------------------------------------ */

/* Self-supervised instance discrimination. A query encoder f_q learns by
 * gradient; a key encoder f_k is its moving average, updated after each
 * step as theta_k = m theta_k + (1 - m) theta_q over the parameters (not
 * the batch norms' running statistics). Both give dim outputs, L2-
 * normalised.
 *   v1, v2: two views of each image, x1 the query's, x2 the key's:
 *     q = f_q(x1), k = f_k(x2), logits [q.k, q.queue] / T (N, 1 + K), the
 *     cross-entropy with label 0; then the batch's keys replace the oldest
 *     ones of the queue (dim, K) (queue_ptr advances by N; K a multiple of
 *     N). v1: f = encoder + Linear(F, dim), T 0.07; v2: an MLP head
 *     Linear(F, F), ReLU, Linear(F, dim) and T 0.2. Shuffle BN: the key
 *     encoder sees the batch in a random order, cut into bn_splits groups
 *     that each normalise with their own statistics (each group a GPU of
 *     the original), and its outputs are put back in order; the queries
 *     see the batch in order, cut the same way. bn_splits 1: off.
 *   v3: no queue. f = encoder + projector (3-layer MLP with batch norms)
 *     for both, and a predictor (2-layer MLP) after the query encoder's:
 *     q1 = pred(f_q(x1)), q2 = pred(f_q(x2)), k1 = f_k(x1), k2 = f_k(x2);
 *     loss = ctr(q1, k2) + ctr(q2, k1), ctr(q, k) = 2 T CE(q k^T / T,
 *     labels 0..N-1) over the whole batch's keys; m follows a cosine from
 *     m_base to 1 over the run (qkv_moco_momentum_at).
 *
 * The state dict has the official names: v1, v2: "encoder_q.*",
 * "encoder_k.*" (the encoder's own names; a ResNet's v2 head is fc.0 and
 * fc.2, a ViT's heads.head.0 and heads.head.2), "queue" (dim, K),
 * "queue_ptr" (1, int64); v3: "base_encoder.*", "momentum_encoder.*",
 * "predictor.*", the ViT under timm's names as moco-v3's vits.py has them
 * (patch_embed.proj, cls_token, pos_embed, blocks.N.{norm1, attn.qkv,
 * attn.proj, norm2, mlp.fc1, mlp.fc2}, norm), the projector "head.0" ..
 * "head.7" and the predictor "predictor.0" .. "predictor.3" as its
 * _build_mlp numbers them.
 *
 * A training step, as qkv_moco_train runs it on qkv_trainer:
 *   pre_step    qkv_moco_keys on the whole batch (sharded, no gradients)
 *   each shard  qkv_moco_loss of its rows, / N, backward
 *   optimizer
 *   post_step   qkv_moco_momentum_update, qkv_moco_enqueue (v1, v2)
 * (MoCo updates the key encoder just before its forward; after the step
 * before is the same, as nothing changes in between.) Over several ranks
 * pre_step also gathers what the global batch needs: the second views
 * (shuffle BN over every rank's images) and the keys, so that every rank
 * holds the global batch's keys (qkv_moco_batch row0, n_keys) and enqueues
 * them all. */
typedef enum { QKV_MOCO_RESNET = 0, QKV_MOCO_VIT = 1 } qkv_moco_arch;
typedef struct {
    int version;              /* 1, 2 or 3                                         */
    qkv_moco_arch arch;       /* the encoder                                       */
    qkv_vit_config vit;       /* arch VIT: the ViT (num_classes is ignored)        */
    qkv_resnet_config resnet; /* arch RESNET: depth, width, small_stem, in_channels
                                 (0: 1); its fc is set from version and dim        */
    int64_t image_size;       /* arch RESNET: the images' side (0: 28)             */
    int64_t dim;              /* outputs: 128 (v1, v2), 256 (v3)                   */
    int64_t mlp_dim;          /* v2: the head's hidden width (0: F, as MoCo v2);
                                 v3: the projector's and predictor's (4096)        */
    int64_t K;                /* v1, v2: keys in the queue (65536)                 */
    float T;                  /* temperature: 0.07 (v1), 0.2 (v2, v3 ViT)           */
    int64_t bn_splits;        /* v1, v2 shuffle BN groups (0 or 1: off)            */
    int vit_v3_init;          /* a ViT as moco-v3's: fixed 2-D sin-cos positions,
                                 a random patch projection kept frozen, its init   */
    qkv_comm *sync_bn;        /* every batch norm (the ResNet's, v3's MLPs')
                                 synchronised over these ranks, as moco-v3 trains
                                 (SyncBatchNorm; qkv_bn_opts.sync): not with
                                 shuffle BN (bn_splits > 1), one shard per rank.
                                 NULL: each process's (or shard's) batch. Not
                                 kept in the model file                            */
} qkv_moco_config;

/* v3's MLPs: Linear without bias, then (but after the last, only with
 * last_bn) BatchNorm1d, ReLU between layers; the last batch norm has no
 * weight and bias (SimCLR's). */
#define QKV_MOCO_MLP_MAX 3
typedef struct {
    int n;                            /* layers */
    qkv_nn_linear fc[QKV_MOCO_MLP_MAX];
    qkv_tensor *bn_weight[QKV_MOCO_MLP_MAX], *bn_bias[QKV_MOCO_MLP_MAX];
    qkv_tensor *bn_mean[QKV_MOCO_MLP_MAX], *bn_var[QKV_MOCO_MLP_MAX];
    qkv_tensor *bn_count[QKV_MOCO_MLP_MAX]; /* num_batches_tracked; NULL: no BN */
    qkv_comm *sync;                   /* the config's sync_bn */
} qkv_moco_mlp;

/* One branch: the encoder and its head. */
typedef struct {
    qkv_vit vit;              /* arch VIT: the ViT, no head of its own            */
    qkv_resnet resnet;        /* arch RESNET, its fc the v1/v2 head               */
    qkv_nn_linear fc0, fc2;   /* v1: fc0 = Linear(F, dim); v2: the MLP head       */
    qkv_moco_mlp projector;   /* v3                                              */
} qkv_moco_net;

typedef struct {
    qkv_moco_config cfg;
    int64_t features;         /* F: the encoder's output width                    */
    qkv_params *ps;           /* trained: the query encoder (and v3's predictor)  */
    qkv_params *ps_k;         /* the key (momentum) encoder                       */
    qkv_params *ps_queue;     /* v1, v2: "queue" (dim, K), "queue_ptr" (1)          */
    qkv_moco_net q, k;
    qkv_moco_mlp predictor;   /* v3                                              */
    qkv_tensor *queue, *queue_ptr;
} qkv_moco;

/* Declares and allocates the three stores. Errors: a version or arch
 * unknown, a size not positive, K < 1 (v1, v2), the ViT's config. */
QKV_API qkv_status qkv_moco_init(qkv_moco *m, const qkv_moco_config *cfg);
/* Frees the stores (m itself is the caller's). NULL does nothing. */
QKV_API void qkv_moco_free(qkv_moco *m);
/* The official initialisation: the query encoder as its module's reset
 * (with vit_v3_init moco-v3's), heads as nn.Linear, batch norms 1 and 0;
 * the key encoder a copy of the query encoder; the queue columns random
 * unit vectors (normalize(randn(dim, K), dim 0)) and queue_ptr 0. */
QKV_API void qkv_moco_reset(qkv_moco *m, qkv_rng *r);

/* A batch as the loss and keys see it: the two views of B images, the
 * keys written by qkv_moco_keys, and the shuffle-BN order. Over several
 * ranks the keys are the global batch's: image i of x1, x2 has key row
 * row0 + i of k1, k2 (n_keys rows). */
typedef struct {
    const float *x1, *x2;     /* (B, Cin, H, W): the views                       */
    int64_t B;
    float *k1, *k2;           /* (n_keys, dim): normalised keys of x1 (v3) and x2 */
    const int64_t *perm;      /* (B): the key encoder's order (NULL: in order)   */
    int64_t groups;           /* batch-norm groups per call (shuffle BN)         */
    int64_t row0;             /* key row of image 0 (0: one process; rank r of
                                 equal shares: r B)                              */
    int64_t n_keys;           /* rows of k1, k2 (0: B); v3's negatives are all   */
} qkv_moco_batch;
/* Rows [lo, hi) of the key encoder's batch, without gradients: v1, v2
 * f_k(x2[perm[lo..hi)]) normalised into k2 at rows row0 + perm[lo..hi)
 * (shuffled in, put back out); v3 f_k(x1) and f_k(x2) of rows lo..hi into
 * k1 and k2 at rows row0 + lo... Shards may write their rows of one batch
 * at once. Uses ctx (its training flag: batch statistics). */
QKV_API qkv_status qkv_moco_keys(qkv_ctx *ctx, qkv_moco *m, const qkv_moco_batch *b,
                                 int64_t lo, int64_t hi);
/* The loss of rows [lo, hi), summed over them (divide by B for the batch's
 * mean): v1, v2 the InfoNCE of q = f_q(x1) against its key (k2 row row0 +
 * i) and the queue; v3 ctr(q1, k2) + ctr(q2, k1) against all n_keys keys
 * (the global batch's: moco-v3's concat_all_gather), image i's own at row
 * row0 + i. A scalar. */
QKV_API qkv_tensor *qkv_moco_loss(qkv_ctx *ctx, qkv_moco *m, const qkv_moco_batch *b,
                                  int64_t lo, int64_t hi);
/* theta_k = m theta_k + (1 - m) theta_q over the key encoder's parameters
 * (buffers stay as the key encoder's own forwards left them). */
QKV_API void qkv_moco_momentum_update(qkv_moco *m, float momentum);
/* moco-v3's schedule: 1 - (1 + cos(pi t)) (1 - base) / 2 at t = step /
 * total_steps. */
QKV_API float qkv_moco_momentum_at(float base, int64_t step, int64_t total_steps);
/* queue[:, ptr .. ptr + n) = keys^T (keys (n, dim)), ptr = (ptr + n) % K.
 * QKV_ERR_SHAPE if n does not divide K (the official assert). */
QKV_API qkv_status qkv_moco_enqueue(qkv_moco *m, const float *keys, int64_t n);
/* The query encoder's features (B, F) of x (B, Cin, H, W), before the head:
 * what a linear probe reads. Uses ctx as it is (set eval mode for frozen
 * batch norms). */
QKV_API qkv_tensor *qkv_moco_features(qkv_ctx *ctx, const qkv_moco *m, qkv_tensor *x);
/* The same with the ResNet's last map (B, F, h, w) average-pooled to
 * grid x grid cells (torch's adaptive_avg_pool2d bins) instead of one:
 * (B, F grid^2), each channel's cells row-major, channels in order. grid 1
 * is qkv_moco_features; QKV_ERR_ARG for a ViT encoder (its features are a
 * token, not a map) or a grid larger than the map. */
QKV_API qkv_tensor *qkv_moco_features_grid(qkv_ctx *ctx, const qkv_moco *m, qkv_tensor *x,
                                           int64_t grid);

/* The side of the square images the encoder takes. */
QKV_API int64_t qkv_moco_image_size(const qkv_moco *m);
/* The model file: every store under the official names (above), the
 * configuration in the metadata ("qkv.kind" "moco", "config"). Atomic. */
QKV_API qkv_status qkv_moco_save(qkv_moco *m, const char *path);
/* Builds the model a file describes and loads it: every entry must be there
 * with its shape. A path to a directory means its model.safetensors. m is
 * the caller's (qkv_moco_free). */
QKV_API qkv_status qkv_moco_open(qkv_moco *m, const char *path);
/* Loads every entry of an initialised model from an open state dict under
 * the official names (other tensors are ignored); `what` names the file in
 * messages. Nothing is guaranteed about m's values after an error. */
QKV_API qkv_status qkv_moco_load_state(qkv_moco *m, const qkv_st_file *f, const char *what);
/* The name a store entry has in the file (a v3 ViT's in timm's words). */
QKV_API void qkv_moco_file_name(char *out, size_t n, const qkv_moco *m, const char *name);

/* ------------------------------------------------------------------------ */
/* Models: DETR (facebookresearch/detr models/detr.py, backbone.py,          */
/* transformer.py; docs/detr.md): a ResNet, input_proj, the transformer,    */
/* learned object queries, a class head with no-object and a box MLP         */
/* ------------------------------------------------------------------------ */

/* Shapes: B images, (H, W) their padded size, (h, w) C5's, S = h w, Q object
 * queries, K classes (K + 1 logits, the last no-object), L decoder layers,
 * E = hidden_dim. Names are the official checkpoints' (detr-r50-e632da11.pth
 * converted to safetensors loads strictly):
 *   backbone.0.body.{conv1, bn1, layer1.0.conv1, ..}   the ResNet (no fc)
 *   input_proj.{weight, bias}                          1x1 conv F -> E
 *   transformer.encoder.layers.N.{self_attn.in_proj_weight, ..}, transformer.decoder.norm
 *   query_embed.weight (Q, E)
 *   class_embed.{weight, bias} (K + 1, E)
 *   bbox_embed.layers.{0, 1, 2}.{weight, bias}        E-E-E-4, ReLU between
 * qkv_detr_load_file also reads Hugging Face's DetrForObjectDetection names
 * (docs/detr.md has the table). */
typedef struct {
    int backbone_depth;        /* ResNet 18, 34, 50 (DETR's), 101 or 152 */
    int64_t in_channels;       /* image channels; 0 means 3 (1: grey images) */
    int backbone_bn;           /* 0: DETR's FrozenBatchNorm2d; 1: batch norm
                                  trained with batch statistics (a backbone
                                  trained from scratch) */
    int frozen_stages;         /* backbone stages frozen as qkv_resnet_config's
                                  (DETR: 2, the stem and layer1) */
    int64_t backbone_width;    /* the ResNet's width as qkv_resnet_config's
                                  (0: torchvision's 64) */
    int64_t hidden_dim;        /* E (DETR: 256) */
    int64_t num_heads;         /* (8) */
    int64_t dim_feedforward;   /* (2048) */
    int64_t enc_layers, dec_layers; /* (6, 6) */
    int64_t num_queries;       /* Q (100) */
    int64_t num_classes;       /* K: class_embed has K + 1 outputs (COCO: 91) */
    float dropout;             /* (0.1) */
    int pre_norm;              /* (0) */
} qkv_detr_config;

typedef struct {
    qkv_detr_config cfg;
    qkv_resnet backbone;
    qkv_nn_conv2d input_proj;
    qkv_transformer transformer;   /* layout QKV_TF_DETR */
    qkv_tensor *query_embed;       /* (Q, E) */
    qkv_nn_linear class_embed;     /* (K + 1, E) */
    qkv_nn_linear bbox_embed[3];   /* (E, E), (E, E), (4, E) */
} qkv_detr;

/* DETR-R50 as the paper trains it on COCO (num_classes 91). */
QKV_API qkv_detr_config qkv_detr_config_r50(void);
/* Declares every parameter and buffer under the official names. Errors: a
 * backbone depth qkv_resnet does not have, E not divisible by the heads or
 * odd (the sine encoding takes E / 2 per axis), sizes below 1, more than
 * QKV_TF_MAX_LAYERS layers; named in the message. */
QKV_API qkv_status qkv_detr_init(qkv_detr *m, qkv_params *ps, const qkv_detr_config *cfg);
/* DETR's initialisation from scratch: the ResNet as torchvision's, the
 * transformer's matrices xavier_uniform, every other layer PyTorch's
 * default (query_embed N(0, 1)). */
QKV_API void qkv_detr_reset(qkv_detr *m, qkv_rng *r);

/* What a forward gives. */
typedef struct {
    qkv_tensor *logits;   /* (L, B, Q, K + 1): every decoder layer's classes,
                             the last the model's pred_logits */
    qkv_tensor *boxes;    /* (L, B, Q, 4): sigmoid boxes (cx, cy, w, h) as
                             fractions of the image's (unpadded) size */
    qkv_tensor *cross_attn; /* with want_attn: the last decoder layer's cross
                             attention (B, Q, S) averaged over heads, taken
                             before dropout; else NULL */
    int64_t feat_h, feat_w; /* (h, w) */
} qkv_detr_output;

/* pixels (B, in_channels, H, W), normalised; pixel_mask (B, H, W) 1 on image
 * pixels and 0 on padding (Hugging Face's pixel_mask; DETR's own mask is its
 * negation), or NULL for no padding. The padding mask goes to C5 by nearest
 * interpolation, gives the sine encoding and hides the padded positions
 * from the encoder's self-attention and the decoder's cross-attention.
 * Batch norms and dropout follow the context's training flag. Returns
 * QKV_OK and fills *out, or an error naming the shape. */
QKV_API qkv_status qkv_detr_forward(qkv_ctx *ctx, const qkv_detr *m, qkv_tensor *pixels,
                                    const float *pixel_mask, int want_attn,
                                    qkv_detr_output *out);

/* One detection: DETR's PostProcess of one query. */
typedef struct {
    int64_t query;        /* which query                                  */
    int64_t label;        /* the most probable class other than no-object */
    float score;          /* its softmax probability                      */
    float box[4];         /* (x0, y0, x1, y1) in pixels of the image      */
} qkv_detection;
/* DETR's PostProcess for one image: logits (Q, K + 1), boxes (Q, 4) cxcywh
 * fractions, the image's (width, height) in pixels -> dets (Q), one per
 * query in query order: softmax, the best of the first K classes, the box
 * scaled to pixels. Keep those with score above a threshold (DETR's demo:
 * 0.7) or the best 100 for COCO evaluation. */
QKV_API void qkv_detr_postprocess(qkv_detection *dets, const float *logits, const float *boxes,
                                  int64_t Q, int64_t K1, double width, double height);

/* Pictures of detections (PNG). The image (grey or RGB, values in [0, 1])
 * is scaled up by an integer factor, `scale` (0: until its shorter side is
 * 384 pixels or more); each box is outlined in its class's colour with
 * "name score" (or "label score") on a tab. class_names[label] for labels
 * below n_names; NULL: numbers. */
typedef struct {
    const char *const *class_names;
    int64_t n_names;
    int scale;
} qkv_det_plot_opts;
QKV_API qkv_status qkv_plot_detections(const char *path, const qkv_image *img,
                                       const qkv_detection *dets, int64_t n,
                                       const qkv_det_plot_opts *o);
/* DETR's attention figure: one panel per detection (four to a row), its
 * query's decoder cross-attention attn (n, h, w) over the feature grid
 * (its range stretched to [0, 1] in each panel) laid over the image, with the
 * box; `scale` 0 makes each panel about 256 pixels wide. */
QKV_API qkv_status qkv_plot_detr_attention(const char *path, const qkv_image *img,
                                           const qkv_detection *dets, int64_t n,
                                           const float *attn, int64_t h, int64_t w,
                                           const qkv_det_plot_opts *o);

/* The configuration a state dict implies, in the official names or Hugging
 * Face's: backbone depth and input channels, width, feed-forward size,
 * layers, queries and classes from the shapes; pre_norm when
 * transformer.encoder.norm is there; backbone_bn when the batch norms
 * have num_batches_tracked (a backbone qkv trained with batch statistics);
 * num_heads from the metadata key "num_heads" unless cfg->num_heads is
 * already set (> 0). frozen_stages and dropout are kept as cfg has them.
 * QKV_ERR_FORMAT naming what is missing. */
QKV_API qkv_status qkv_detr_config_from_file(qkv_detr_config *cfg, const qkv_st_file *f);
/* Loads a DETR's store (declared by qkv_detr_init) from f: official names
 * as qkv_params_load_file does, or Hugging Face's (hub checkpoints of
 * transformers 4, or transformers 5), each packed in_proj the concatenation
 * of q_proj, k_proj and v_proj. With `strict`, a tensor of f that maps to
 * nothing is an error. Nothing is written unless everything fits; the
 * message names each missing or misshapen tensor. */
QKV_API qkv_status qkv_detr_load_file(qkv_params *ps, const qkv_st_file *f, const char *what,
                                      int strict);
/* The Hugging Face name of an official one (version 4: the hub's
 * checkpoints, 5: transformers 5) into out; part 0, 1, 2 for the q, k, v
 * pieces of a packed in_proj_weight or in_proj_bias, -1 for any other
 * tensor. Returns 1, or 0 if the name has no counterpart. */
QKV_API int qkv_detr_hf_name(const char *official, int version, int part, char *out, size_t n);

/* ------------------------------------------------------------------------ */
/* Model files: a trained model with its configuration and vocabularies     */
/* ------------------------------------------------------------------------ */

/* One safetensors file holds a model: its weights under PyTorch's names
 * (a ViT's load in torchvision as they are) and, in the metadata, its kind,
 * its configuration and its vocabularies. qkv_model_open rebuilds it from
 * the file alone. Reloading a translation model that `qkv train
 * transformer` made (docs/example_translate.c, built and run by make test):
 *
 *     qkv_model *m = qkv_model_open("runs/transformer", NULL);
 *     qkv_ctx *ctx = qkv_ctx_new();
 *     char fr[256];
 *     if (!m || !ctx || qkv_model_translate(ctx, m, "I'm home.", NULL, fr, sizeof fr) < 0)
 *         fprintf(stderr, "%s\n", qkv_error());
 *     else
 *         printf("%s\n", fr);                  // je suis chez moi .
 *     qkv_ctx_free(ctx);
 *     qkv_model_free(m);
 */
typedef enum { QKV_MODEL_SEQ2SEQ = 1, QKV_MODEL_VIT = 2, QKV_MODEL_DETR = 3 } qkv_model_kind;
typedef struct qkv_model qkv_model;
typedef struct {
    int64_t num_heads; /* ViT, DETR: heads, when the file does not say (0: from the file) */
    int trainable;     /* 1: with gradient buffers, to train further (fine-tuning);
                          0: for inference, values only (qkv_params_alloc_inference) */
} qkv_model_opts;

/* How a DETR's images are prepared before the model, kept in its file:
 * qkv_det_resize(size, max_size) (size 0: as they are), then (x - mean[c])
 * / std[c] for each of the model's channels. A file without it (an
 * official or Hugging Face checkpoint) gets DETR's: 800, 1333 and
 * ImageNet's mean and std. */
typedef struct {
    int64_t size, max_size;
    float mean[3], std[3];
} qkv_detr_input;

/* "seq2seq", "vit", "detr". */
QKV_API const char *qkv_model_kind_name(qkv_model_kind k);
/* A new model with its parameters declared and allocated (zero; reset them
 * with qkv_seq2seq_reset / qkv_vit_reset). The vocabularies are copied. */
QKV_API qkv_model *qkv_model_new_seq2seq(const qkv_tf_config *cfg, const qkv_vocab *src,
                                         const qkv_vocab *tgt, int64_t num_steps);
QKV_API qkv_model *qkv_model_new_vit(const qkv_vit_config *cfg);
/* A DETR with its input preparation and the names of its classes
 * (class_names[k] for label k < n_names; NULL or "" where unnamed). */
QKV_API qkv_model *qkv_model_new_detr(const qkv_detr_config *cfg, const qkv_detr_input *in,
                                      int64_t n_names, const char *const *class_names);
/* Opens a model file, or a directory holding model.safetensors (a training
 * run's out_dir), by the kind its metadata names; older files without one
 * are recognised by their config or tensors (a DETR checkpoint in the
 * official or Hugging Face's names opens too, qkv_detr_load_file). Every
 * tensor must be there with its shape and no other (strict). Unless
 * opts->trainable, the model is opened for inference: no gradient buffers.
 * NULL with a message naming the file and what was wrong; opts may be NULL. */
QKV_API qkv_model *qkv_model_open(const char *path, const qkv_model_opts *opts);
/* Writes the model to path atomically (temporary file, then rename). */
QKV_API qkv_status qkv_model_save(qkv_model *m, const char *path);
/* NULL does nothing. */
QKV_API void qkv_model_free(qkv_model *m);
QKV_API qkv_model_kind qkv_model_kind_of(const qkv_model *m);
QKV_API qkv_params *qkv_model_params(qkv_model *m);
/* The model of the kind asked, NULL if m is of another kind. */
QKV_API qkv_seq2seq *qkv_model_seq2seq(qkv_model *m);
QKV_API qkv_vit *qkv_model_vit(qkv_model *m);
QKV_API qkv_detr *qkv_model_detr(qkv_model *m);
/* A DETR's input preparation; NULL for other kinds. */
QKV_API const qkv_detr_input *qkv_model_detr_input(const qkv_model *m);
/* The name of a DETR's class k, or NULL if it has none. */
QKV_API const char *qkv_model_class_name(const qkv_model *m, int64_t k);
/* A seq2seq model's vocabularies (target 0: source, 1: target) and the
 * sentence length it was trained at; NULL and 0 for other kinds. */
QKV_API const qkv_vocab *qkv_model_vocab(const qkv_model *m, int target);
QKV_API int64_t qkv_model_num_steps(const qkv_model *m);
/* Free-form metadata saved with the model ("test_accuracy", ..): the value,
 * or NULL. Keys that qkv_model_save writes itself are refused. */
QKV_API const char *qkv_model_meta(const qkv_model *m, const char *key);
QKV_API qkv_status qkv_model_set_meta(qkv_model *m, const char *key, const char *value);

typedef struct {
    int beam;               /* <= 1: greedy (d2l's predict_seq2seq)            */
    float alpha;            /* beam length penalty                              */
    int64_t max_len;        /* most output tokens; 0: the model's num_steps     */
    qkv_seq2seq_attn *attn; /* attention weights of the output, or NULL        */
    int64_t *src_valid;     /* if not NULL, receives the source's valid length */
} qkv_translate_opts;
/* Translates text as a person types it (prepared as the training corpus
 * was: qkv_nmt_encode_text) into out (n bytes, the tokens joined by single
 * spaces, cut at n - 1), with a seq2seq model. Returns the number of output
 * tokens, or -1 with the error set. o may be NULL (greedy). */
QKV_API int64_t qkv_model_translate(qkv_ctx *ctx, qkv_model *m, const char *text,
                                    const qkv_translate_opts *o, char *out, size_t n);

/* Runs a DETR on one image as a person gives it (any size, grey or RGB,
 * values in [0, 1]): converted to the model's channels, resized and
 * normalised as qkv_model_detr_input says, then DETR's PostProcess: dets
 * (room for num_queries) receive every query's best class, its score and
 * its box in the image's pixels, in query order. attn (may be NULL)
 * receives the last decoder layer's cross-attention averaged over heads,
 * (num_queries, h, w) over C5's grid, in ctx's arena (valid until
 * qkv_ctx_reset). Returns the number of queries, or -1 with the error set.
 * Eval mode, no gradients; ctx is not reset. */
QKV_API int64_t qkv_model_detect(qkv_ctx *ctx, qkv_model *m, const qkv_image *img,
                                 qkv_detection *dets, qkv_tensor **attn);

/* ------------------------------------------------------------------------ */
/* Communicator: the processes that train together (docs/distributed.md)    */
/* ------------------------------------------------------------------------ */

/* A communicator joins the processes of one training run: `world` ranks,
 * this one `rank`. Three backends sit behind one API:
 *
 *   local   one process (rank 0 of 1): every collective is a copy or
 *           nothing. Always built; what a NULL communicator means.
 *   mpi     the ranks mpirun (or srun) started, through MPI (OpenMPI,
 *           MPICH); built when `make` finds mpicc (qkv_comm_backends()).
 *   nccl    NVIDIA's collectives between GPUs, bootstrapped through MPI;
 *           built with `make NCCL=1` where CUDA and NCCL are installed.
 *           qkv computes on the CPU, so each collective stages its host
 *           buffer through the GPU: for trying NCCL's transport only.
 *
 * Collectives are called by every rank in the same order with the same
 * sizes. Each waits at most the communicator's timeout for the others; a
 * rank that died, stalled or failed makes the call return QKV_ERR_COMM
 * with a message saying what was awaited, never hang. After such an error
 * the communicator is broken: every later call returns the first error at
 * once, and qkv_comm_close does not wait for the other ranks (a process
 * that stops then should exit non-zero, so that mpirun ends the rest).
 *
 *     qkv_comm *c = qkv_comm_open(NULL);      // MPI under mpirun, else local
 *     float g[3] = {1, 2, 3};
 *     if (!c || qkv_comm_allreduce(c, g, 3, QKV_DT_F32) != QKV_OK) ...
 *     // g = the sum over ranks; rank qkv_comm_rank(c) of qkv_comm_size(c)
 *     qkv_comm_close(c);
 *
 * A communicator is used by one thread at a time (MPI_THREAD_FUNNELED: the
 * thread that opened it). Every function accepts c == NULL as a world of
 * one process. Nothing is allocated after qkv_comm_open. */
typedef struct qkv_comm qkv_comm;
typedef enum {
    QKV_COMM_AUTO = 0, /* mpi when started by mpirun/srun and built with MPI, else local */
    QKV_COMM_LOCAL,
    QKV_COMM_MPI,
    QKV_COMM_NCCL,
} qkv_comm_kind;
typedef struct {
    qkv_comm_kind kind;
    double timeout_s;  /* the longest wait for the other ranks in one collective;
                          0: $QKV_COMM_TIMEOUT, else 600 s */
} qkv_comm_opts;
/* Opens (and with MPI initialises) the communicator; o NULL: AUTO, default
 * timeout. NULL with a message if the backend is not built, MPI fails to
 * start, or MPI was finalised by an earlier qkv_comm_close. */
QKV_API qkv_comm *qkv_comm_open(const qkv_comm_opts *o);
/* Frees c; the last MPI communicator qkv opened finalises MPI (unless the
 * program initialised MPI itself). Returns the error that broke c, if any. */
QKV_API qkv_status qkv_comm_close(qkv_comm *c);
/* Marks c broken from this rank's side: it will enter no more collectives
 * (it failed on its own), so qkv_comm_close must not wait for the others.
 * The trainer calls it when a run stops on an error. */
QKV_API void qkv_comm_abandon(qkv_comm *c);
/* This process's rank and the number of ranks (NULL: 0 and 1); the ranks
 * on this machine and this one's place among them (to share its cores). */
QKV_API int qkv_comm_rank(const qkv_comm *c);
QKV_API int qkv_comm_size(const qkv_comm *c);
QKV_API int qkv_comm_local_rank(const qkv_comm *c);
QKV_API int qkv_comm_local_size(const qkv_comm *c);
/* "local", "mpi" or "nccl". */
QKV_API const char *qkv_comm_backend(const qkv_comm *c);
/* The backends this build has, e.g. "local mpi". */
QKV_API const char *qkv_comm_backends(void);
/* Whether a launcher started this process as one of several ranks
 * ($OMPI_COMM_WORLD_SIZE, $PMI_SIZE, $PMIX_RANK or $SLURM_NTASKS > 1). */
QKV_API int qkv_comm_launched(void);

/* buf (bytes) of rank `root` copied to every rank's buf. */
QKV_API qkv_status qkv_comm_broadcast(qkv_comm *c, void *buf, size_t bytes, int root);
/* buf[i] = the sum over ranks of buf[i], i < n, on every rank, in place;
 * dtype QKV_DT_F32, QKV_DT_F64 or QKV_DT_I64. Every rank gets the same
 * values, bit for bit. */
QKV_API qkv_status qkv_comm_allreduce(qkv_comm *c, void *buf, int64_t n, qkv_dtype dtype);
/* recv (size * bytes) = every rank's send (bytes), in rank order. send
 * and recv must not overlap. */
QKV_API qkv_status qkv_comm_allgather(qkv_comm *c, const void *send, size_t bytes, void *recv);
/* Returns once every rank has called it. */
QKV_API qkv_status qkv_comm_barrier(qkv_comm *c);
/* The non-blocking all-reduce the trainer overlaps with backward: starts
 * it and returns a request (>= 0), or -1 with the error set. Until the
 * request completes buf must stay untouched. At most QKV_COMM_REQUESTS
 * requests are under way at once. qkv_comm_test polls (*done 1 when
 * finished, the request then freed) and moves the transfer on: MPI
 * progresses a collective only inside its calls, so a caller busy with
 * other work should test now and then. qkv_comm_wait waits (up to the
 * timeout) and frees it. */
#define QKV_COMM_REQUESTS 64
QKV_API int qkv_comm_iallreduce(qkv_comm *c, void *buf, int64_t n, qkv_dtype dtype);
QKV_API qkv_status qkv_comm_test(qkv_comm *c, int request, int *done);
QKV_API qkv_status qkv_comm_wait(qkv_comm *c, int request);
/* Time and bytes so far: seconds spent waiting inside qkv_comm calls (the
 * communication nothing hid) and bytes given to collectives by this rank. */
typedef struct {
    double wait_seconds;
    int64_t bytes, calls;
} qkv_comm_stats;
QKV_API void qkv_comm_get_stats(const qkv_comm *c, qkv_comm_stats *s);
/* Every collective against values each rank knows alone (all-reduce in
 * F32, F64 and I64, blocking and not; broadcast; all-gather; barrier), on
 * every rank at once. QKV_OK, or QKV_ERR_COMM naming the collective, the
 * element and both values. */
QKV_API qkv_status qkv_comm_check(qkv_comm *c);
/* The median over iters rounds of one all-reduce of n floats, each round
 * begun together after a barrier, as rank 0 timed it (every rank returns
 * the same). NaN with the error set on failure. */
QKV_API double qkv_comm_time_allreduce(qkv_comm *c, int64_t n, int iters);

/* ------------------------------------------------------------------------ */
/* The trainer: the one training loop of every model                        */
/* ------------------------------------------------------------------------ */

/* A model trains by giving qkv_trainer a loss callback and a few hooks; the
 * trainer owns everything else. Each step:
 *
 *   batch        the loader's next batch (prepared on its thread)
 *   pre_step     the whole batch, before the shards (e.g. a forward without
 *                gradients whose outputs every shard reads: MoCo's keys)
 *   shards       the batch's rows cut into one shard per thread; each shard
 *                calls loss() on a context of its own, then backward
 *   all-reduce   with a communicator of several ranks, every rank's
 *                gradients summed (started bucket by bucket while backward
 *                still runs; docs/distributed.md)
 *   grad_hook    the gradients of the whole batch are in the store
 *   clip         the gradients' global norm clipped to `clip`
 *   step         the schedule's learning rate, the optimizer's update
 *   post_step    after the update (e.g. an EMA of a second store, a queue)
 *   zero         the gradients
 *
 * and after each epoch: evaluate() adds metrics, a line goes to stdout (every
 * `print_every` epochs) and metrics.jsonl gets a line; every `save_every`
 * epochs and after the last, curves.png is redrawn, and a checkpoint and
 * save_model() write into out_dir.
 *
 * The trainer also watches for trouble. A step whose loss or gradient norm is
 * not finite stops the run with QKV_ERR_NAN and a message naming the step and
 * the first op whose output (or gradient) held the NaN or infinity, found by
 * running that step again with NaN checks on; the last good checkpoint stays.
 * SIGINT or SIGTERM during qkv_trainer_run ends the step under way, writes a
 * checkpoint of that point and returns QKV_ERR_INTERRUPTED.
 *
 * Over several processes (`comm`, e.g. under mpirun) each rank trains on
 * its rows of every global batch (the loader cuts them) with the same
 * weights: at the start rank 0's parameters, optimizer state, position and
 * extra stores are broadcast to all; each step the gradients, the loss and
 * the stats are summed over ranks, so every rank takes the same update and
 * prints, logs and checkpoints (rank 0 alone writes) what one process with
 * the whole batch would. Batch norm's running statistics are updated after
 * each step from every rank's batch statistics, merged in rank order as
 * one process's shards' are (so they are equal on every rank, and equal
 * one process's; PyTorch's DDP keeps rank 0's); buffers are then rank 0's,
 * broadcast after every step. A rank that fails abandons the
 * communicator (qkv_comm_abandon); the others then fail in their next
 * collective within its timeout, or stop on mpirun's SIGTERM.
 *
 * Resuming (resume = 1, out_dir's checkpoint.safetensors) restores the
 * parameters, the optimizer, the step, the epoch, the position in the epoch,
 * the epoch's running sums and every extra state (qkv_trainer_add_state): the
 * run goes on bit for bit as if it had not stopped, given the same options
 * and thread count (a run may also go on with other counts of ranks and
 * threads, not bit for bit). Random numbers never carry state across steps:
 * shard i of rank r (of S shards per rank) in step s draws from a stream
 * seeded by (seed, s, r S + i), so that 2 ranks of 1 thread draw as 1
 * process of 2 threads; the loader's order and augmentation come from
 * (data seed, epoch, batch) and with several ranks also the rank.
 *
 * Sketch (a classifier; tests/test_trainer.c has complete ones):
 *
 *     static qkv_tensor *loss(qkv_ctx *ctx, const qkv_train_batch *b, void *user) {
 *         const my_batch *mb = b->batch;           // what fill() wrote
 *         qkv_tensor *x = qkv_wrap(ctx, 2, (int64_t[]){b->hi - b->lo, 784},
 *                                  mb->x + b->lo * 784);
 *         qkv_tensor *l = qkv_cross_entropy(ctx, my_forward(ctx, user, x),
 *                                           mb->y + b->lo, &sum_opts);
 *         return qkv_scale(ctx, l, 1.0f / (float)b->n_global);   // shares add up
 *     }
 *     qkv_trainer *t = qkv_trainer_new(&(qkv_trainer_config){
 *         .params = ps, .loss = loss, .user = &model, .epochs = 10,
 *         .data = {.n_examples = n, .batch_size = 64, .shuffle = 1,
 *                  .batch_bytes = sizeof(my_batch), .fill = fill, .user = &data},
 *         .optim = {.kind = QKV_ADAMW, .lr = 1e-3f}, .out_dir = "runs/mine"});
 *     if (!t || qkv_trainer_run(t) != QKV_OK) fprintf(stderr, "%s\n", qkv_error());
 *     qkv_trainer_free(t);
 */

#define QKV_TRAIN_STATS 4    /* sums a loss callback may count per epoch */
#define QKV_TRAIN_METRICS 24 /* metrics of one epoch */

typedef struct qkv_trainer qkv_trainer;

/* What the loss callback of one shard sees. */
typedef struct {
    const void *batch;     /* the batch as the loader's fill wrote it          */
    int64_t n;             /* rows in it (this process's part of the batch)    */
    int64_t n_global;      /* rows of the whole batch over every process       */
    int64_t lo, hi;        /* this shard's rows of `batch`: [lo, hi)           */
    double weight_global;  /* batch_weight summed over every process (0 without
                              that callback): e.g. the batch's target tokens */
    int shard, n_shards;
    int64_t step;          /* optimizer steps before this one                  */
    int64_t epoch;         /* 0-based                                          */
    double *stats;         /* QKV_TRAIN_STATS sums this shard adds to (e.g.
                              examples classified right, tokens); the trainer
                              adds them over shards and steps of an epoch      */
} qkv_train_batch;

/* Returns the shard's term of the batch's loss: the loss of rows [lo, hi)
 * scaled so that the terms of every shard of every process add up to the
 * batch's loss (a mean over the batch: a sum over the shard's rows divided
 * by n_global). The trainer calls backward on it. NULL with the error set
 * on failure. Runs on the shard's thread, at the same time as the others:
 * it may write only to its own context, to stats and to memory that belongs
 * to its rows (e.g. a buffer of keys that a post-step hook enqueues). */
typedef qkv_tensor *(*qkv_train_loss_fn)(qkv_ctx *ctx, const qkv_train_batch *b, void *user);

/* An epoch's results, as the evaluation callback receives them. */
typedef struct {
    int64_t epoch, epochs;          /* 1-based: the epoch just trained, of how many */
    int64_t step;                   /* optimizer steps so far                       */
    int64_t examples;               /* examples trained on (by every rank)          */
    double loss;                    /* the mean of the epoch's step losses          */
    double stats[QKV_TRAIN_STATS];  /* the loss callback's sums over the epoch
                                       (and over ranks)                             */
    double seconds;                 /* training time, evaluation excluded           */
    int n_metrics;                  /* name = value pairs for stdout, metrics.jsonl */
    const char *names[QKV_TRAIN_METRICS];
    double values[QKV_TRAIN_METRICS];
} qkv_train_epoch;

/* Adds (or replaces) metric `name` (a string that outlives the run: a
 * literal). QKV_ERR_ARG when QKV_TRAIN_METRICS are taken. */
QKV_API qkv_status qkv_train_epoch_put(qkv_train_epoch *e, const char *name, double value);
/* The value of metric `name`, NaN if absent. */
QKV_API double qkv_train_epoch_get(const qkv_train_epoch *e, const char *name);

/* Learning-rate schedules, evaluated at every step. Lengths in epochs
 * (fractions allowed); the trainer converts them to steps. */
typedef enum {
    QKV_LR_CONSTANT = 0,
    QKV_LR_COSINE,       /* linear warmup from 0, then cosine down to min_lr      */
    QKV_LR_STEP,         /* lr * gamma^floor(epoch / step_epochs) (StepLR)        */
    QKV_LR_INVERSE_SQRT, /* the Transformer paper's, with d_model and warmup      */
} qkv_lr_kind;
typedef struct {
    qkv_lr_kind kind;
    double warmup_epochs;  /* COSINE, INVERSE_SQRT */
    float min_lr;          /* COSINE */
    double step_epochs;    /* STEP */
    float gamma;           /* STEP; 0 means 0.1 */
    int64_t d_model;       /* INVERSE_SQRT */
} qkv_lr_schedule;

typedef qkv_status (*qkv_train_hook)(qkv_trainer *t, void *user);

typedef struct {
    /* the model */
    qkv_params *params;         /* trained; allocated (qkv_params_alloc)           */
    qkv_train_loss_fn loss;
    void *user;                 /* passed to every callback below                  */
    /* the data: a loader config (its rank and world are set by the trainer
     * from `rank` and `world` below) */
    qkv_loader_config data;
    int64_t epochs;
    /* the update */
    qkv_optim_config optim;
    qkv_lr_schedule schedule;
    float clip;                 /* max global gradient norm; 0: no clipping        */
    int threads;                /* shards per step; 0: qkv_threads()               */
    uint64_t seed;              /* the shards' random streams (dropout)            */
    /* data parallelism over processes */
    qkv_comm *comm;             /* the ranks training together (qkv_comm_open);
                                   NULL: one process, or `rank` of `world` with
                                   the gradients summed by grad_hook            */
    int rank, world;            /* without comm: this process of world (0 and 0:
                                   one process); with comm: taken from it         */
    size_t bucket_bytes;        /* gradients per all-reduce; 0: $QKV_BUCKET_KB,
                                   else 256 KiB                                  */
    int no_overlap;             /* 1: all-reduce only after backward (to measure
                                   what the overlap hides)                       */
    /* this process's part of the batch's normaliser (e.g. the target tokens of
     * rows [0, n) of batch), summed over ranks into weight_global before the
     * shards run, so that a loss can be a mean over the global batch; NULL:
     * none */
    double (*batch_weight)(const void *batch, int64_t n, void *user);
    /* hooks: each may be NULL; a non-OK status stops the run with it */
    qkv_status (*epoch_start)(qkv_trainer *t, int64_t epoch, void *user); /* 0-based;
                                   the loader is idle: its fill's data may change  */
    qkv_train_hook pre_step;    /* the batch is in (qkv_trainer_batch), the shards
                                   have not run (collectives may run here)         */
    qkv_train_hook grad_hook;   /* after the gradients are summed (shards, ranks)  */
    qkv_train_hook post_step;   /* after the optimizer's update                    */
    qkv_status (*evaluate)(qkv_trainer *t, qkv_train_epoch *e, void *user);
    /* writes the model file(s) into dir; called after each epoch's checkpoint
     * and at the end, on rank 0 only */
    qkv_status (*save_model)(qkv_trainer *t, const char *dir, void *user);
    /* output */
    const char *out_dir;        /* checkpoint.safetensors, metrics.jsonl,
                                   curves.png; NULL: nothing is written            */
    int64_t save_every;         /* epochs between checkpoints (and the last); 0: 1 */
    const char *config_json;    /* the run's options, kept in the checkpoint       */
    int resume;                 /* continue from out_dir's checkpoint              */
    const char *label;          /* the progress bar's, e.g. "vit"; NULL "training" */
    int print_every;            /* an epoch line every N epochs (and the first and
                                   last); 0: 1; < 0: no lines                      */
    const char *const *curves;  /* metric names drawn in curves.png (NULL-ended);
                                   NULL: "loss" alone                              */
    const char *title;          /* of curves.png                                   */
    const char *stat_names[QKV_TRAIN_STATS]; /* name stats[i] in metrics.jsonl, or
                                   NULL to leave it out                            */
} qkv_trainer_config;

/* Checks the config, makes the optimizer, the shards and the loader, and
 * with `resume` restores the checkpoint. NULL with a message on error (a bad
 * config, a missing or mismatched checkpoint). */
QKV_API qkv_trainer *qkv_trainer_new(const qkv_trainer_config *cfg);
/* Stops the loader's thread and frees everything the trainer made. */
QKV_API void qkv_trainer_free(qkv_trainer *t);
/* Trains from where the trainer stands to cfg.epochs (epochs 0: only
 * save_model runs, writing the model as initialised). QKV_OK, or the first
 * error: a hook's status, QKV_ERR_NAN, QKV_ERR_INTERRUPTED (a checkpoint of
 * the step reached was written), a loader or I/O error. */
QKV_API qkv_status qkv_trainer_run(qkv_trainer *t);
/* Registers another store whose values the checkpoint keeps under
 * "prefix.name" (e.g. an EMA copy, a queue), restored on resume. Call before
 * qkv_trainer_run; with resume, qkv_trainer_new has already loaded the
 * checkpoint, so the trainer reads these stores' values from it here. */
QKV_API qkv_status qkv_trainer_add_state(qkv_trainer *t, const char *prefix, qkv_params *ps);

QKV_API qkv_optim *qkv_trainer_optim(qkv_trainer *t);
QKV_API qkv_params *qkv_trainer_params(qkv_trainer *t);
/* A context for evaluation (gradients and training mode off); the callback
 * resets it as it likes. */
QKV_API qkv_ctx *qkv_trainer_eval_ctx(qkv_trainer *t);
/* The shards' contexts (e.g. to set the training flag). */
QKV_API qkv_shards *qkv_trainer_shards(qkv_trainer *t);
/* The batch of the step under way as the loader's fill wrote it, *n its
 * rows here and *n_global over every process (each may be NULL); NULL
 * before the first step. For the hooks of a step. */
QKV_API const void *qkv_trainer_batch(const qkv_trainer *t, int64_t *n, int64_t *n_global);
/* Where the run stands: epochs done, optimizer steps done, steps per epoch. */
QKV_API int64_t qkv_trainer_epoch(const qkv_trainer *t);
QKV_API int64_t qkv_trainer_step(const qkv_trainer *t);
QKV_API int64_t qkv_trainer_steps_per_epoch(const qkv_trainer *t);
/* The schedule's learning rate at a step. */
QKV_API float qkv_trainer_lr_at(const qkv_trainer *t, int64_t step);
/* The all-reduce across ranks so far (all zero without a communicator of
 * several ranks). A run with no_overlap first waits at a barrier for the
 * slowest rank (skew_seconds), then for the all-reduces alone
 * (exposed_seconds: the whole communication); with overlap,
 * exposed_seconds holds the skew and what backward did not hide, so the
 * share hidden is 1 - (exposed - skew) / comm, skew and comm per step
 * taken from a no_overlap run (docs/distributed.md). */
typedef struct {
    int64_t steps;               /* steps whose gradients were all-reduced         */
    int buckets;                 /* all-reduces of gradients per step              */
    int64_t bytes;               /* gradient bytes each step sums                  */
    int64_t started_in_backward; /* buckets started while backward ran, all steps  */
    double backward_seconds;     /* in backward (with the starts and polls)        */
    double exposed_seconds;      /* waiting after backward for the all-reduces     */
    double skew_seconds;         /* no_overlap: waiting for the slowest rank       */
    int64_t skew_steps;          /* steps that measured it                         */
} qkv_train_comm_stats;
QKV_API void qkv_trainer_comm_stats(qkv_trainer *t, qkv_train_comm_stats *s);
/* The trainer's communicator (cfg.comm), NULL for one process. */
QKV_API qkv_comm *qkv_trainer_comm(const qkv_trainer *t);
/* Makes the next step act as if SIGINT had come (for tests and embedders). */
QKV_API void qkv_trainer_interrupt(qkv_trainer *t);

/* ------------------------------------------------------------------------ */
/* Recipes: the experiments of the `qkv` commands as library calls. Each is  */
/* a loss callback and hooks on qkv_trainer (src/train/NAME_recipe.c), and  */
/* prints what the command prints (unless quiet).                            */
/* ------------------------------------------------------------------------ */

/* ViT on Fashion-MNIST (`qkv train vit`, docs/vit.md). */
typedef struct {
    qkv_vit_config model;
    int64_t epochs, batch_size;
    double lr, weight_decay, label_smoothing;
    double warmup_epochs;           /* with cosine */
    double clip;                    /* max gradient norm, 0: none */
    qkv_optim_kind optimizer;
    int cosine;                     /* warmup then cosine decay; else constant */
    qkv_augment aug;                /* of the training images */
    int64_t plain_epochs;           /* the last epochs without random crops (flips stay) */
    /* the run */
    const char *data_dir;           /* Fashion-MNIST; NULL: QKV_MNIST_DIR */
    int64_t limit, eval_limit;      /* the first N training / test images (0: all) */
    uint64_t seed;                  /* init seed + 2, data order seed + 1, dropout seed */
    const char *out_dir;            /* model.safetensors, checkpoint.safetensors,
                                       metrics.jsonl, curves.png; NULL: none */
    int resume, threads, quiet;
    qkv_comm *comm;                 /* ranks training together (NULL: one process);
                                       rank 0 alone prints and writes, and the
                                       ranks share the test set's evaluation */
} qkv_vit_recipe;
/* Sets the model and training fields of a preset, keeping the run's (data
 * and out_dir, limits, seed, resume, threads, quiet): "default" (28x28,
 * patch 4, width 96, 4 blocks, AdamW, crops and flips, 34 epochs: 0.918),
 * "d2l" (the book's 96x96 ViT, SGD 0.1, 10 epochs), "demo" (the default
 * model, 3 epochs on 12000 images: about a minute). */
QKV_API qkv_status qkv_vit_recipe_preset(qkv_vit_recipe *r, const char *name);
/* Trains, evaluating the test set after every epoch; res (may be NULL)
 * receives the last epoch's accuracies. */
typedef struct {
    double test_accuracy, train_accuracy; /* the last epoch's               */
    int64_t test_right, test_n;           /* test images right, of how many */
} qkv_vit_result;
QKV_API qkv_status qkv_vit_train(const qkv_vit_recipe *r, qkv_vit_result *res);
/* Images of the first n of d classified right by m (eval mode, no
 * gradients, 500 at a time), or -1. confusion (K * K, rows the true class)
 * is filled if not NULL. Uses and resets ctx. */
QKV_API int64_t qkv_vit_evaluate(qkv_ctx *ctx, const qkv_vit *m, const qkv_mnist *d, int64_t n,
                                 int64_t *confusion);

/* The book's Transformer translating English to French on fra.txt (`qkv
 * train transformer`, docs/transformer.md). */
typedef struct {
    int64_t examples;           /* pairs read (d2l's num_examples; 0: all)           */
    int64_t held_out;           /* pairs kept out for the loss and corpus BLEU        */
    int split_tail;             /* held out: 0 a fixed random choice, 1 the last ones */
    int64_t num_steps;          /* tokens per sentence                                */
    int64_t hidden, blocks, heads, ffn;
    double dropout;
    int norm_first;             /* pre-norm blocks                                    */
    int loss_mean;              /* 0: r0.17's masked CE / num_steps summed over the
                                   batch; 1: v1.0.3's mean over the target tokens     */
    int64_t batch_size, epochs;
    double lr, clip;            /* Adam; clip 0: none                                 */
    int64_t beam;               /* of the final translations (1: greedy)              */
    int64_t save_every;         /* epochs between checkpoints                         */
    /* the run */
    const char *data;           /* fra.txt; NULL: $QKV_FRA_ENG, else QKV_FRA_ENG_PATH */
    uint64_t seed;              /* init seed, dropout seed + 1, order seed ^ const    */
    const char *out_dir;        /* model.safetensors (for qkv_model_open), checkpoint,
                                   metrics.jsonl, curves.png; NULL: none              */
    int resume, threads, quiet;
    qkv_comm *comm;             /* ranks training together (NULL: one process); rank
                                   0 alone prints and writes                          */
} qkv_seq2seq_recipe;
typedef struct {
    double loss;                /* the last epoch's, as d2l prints it                 */
    double held_out_loss;       /* NaN without held-out pairs                         */
    double book_bleu[4];        /* "go .", "i lost .", "he's calm .", "i'm home ."    */
    double book_bleu_mean;
    double held_out_bleu;       /* corpus BLEU in [0, 1]; NaN without held-out pairs  */
} qkv_seq2seq_result;
/* "book" (d2l r0.17: 600 pairs, E 32, 200 epochs), "v1" (d2l v1.0.3's
 * config), "large" (40001 pairs, 2000 held out); keeps the run's fields. */
QKV_API qkv_status qkv_seq2seq_recipe_preset(qkv_seq2seq_recipe *r, const char *name);
/* Loads the data, trains, saves the model, translates the book's four
 * sentences (and the held-out pairs); res (may be NULL) receives the scores. */
QKV_API qkv_status qkv_seq2seq_train(const qkv_seq2seq_recipe *r, qkv_seq2seq_result *res);

/* MoCo pretraining on Fashion-MNIST's training images without their labels
 * (`qkv train moco`, docs/moco.md), with a kNN monitor on the test set. */
typedef struct {
    qkv_moco_config model;
    int64_t epochs, batch_size;
    qkv_optim_kind optimizer;
    double lr, weight_decay;
    float sgd_momentum;             /* SGD's (0.9 in MoCo) */
    double warmup_epochs;           /* with cosine */
    int cosine;                     /* warmup then cosine decay; else constant */
    float momentum;                 /* the key encoder's m (v3: its start) */
    int momentum_cosine;            /* m rises to 1 on a cosine (moco-v3) */
    qkv_view_aug aug;               /* of both views */
    int64_t knn_k;                  /* the monitor: k neighbours (200)... */
    float knn_t;                    /* ...weighted exp(sim / T) (0.1) */
    int64_t knn_bank;               /* its bank: the first N training images (0: all) */
    int knn_every;                  /* epochs between kNN runs (and the last); < 0: none */
    /* the run */
    int64_t stop_after;             /* stop once this many epochs are done, as after
                                       Ctrl-C (a checkpoint, QKV_ERR_INTERRUPTED), for a
                                       run in parts; 0: never */
    const char *data_dir;           /* Fashion-MNIST; NULL: QKV_MNIST_DIR */
    int64_t limit, eval_limit;      /* the first N training / test images (0: all) */
    uint64_t seed;                  /* init seed + 2, data order seed + 1, shuffle BN + 3 */
    const char *out_dir;            /* model.safetensors (qkv_moco_open), checkpoint,
                                       metrics.jsonl, curves.png; NULL: none */
    int resume, threads, quiet;
    int sync_bn;                    /* 1: every batch norm synchronised over comm's
                                       ranks (moco-v3's SyncBatchNorm) instead of
                                       shuffle BN; one thread per rank */
    qkv_comm *comm;                 /* ranks training together (NULL: one process):
                                       each takes batch_size / ranks images of every
                                       batch (a multiple of the ranks); the keys are
                                       all-gathered (shuffle BN over the global
                                       batch, every rank's keys into the queue, v3's
                                       negatives), the kNN monitor's work is split;
                                       rank 0 alone prints and writes */
} qkv_moco_recipe;
typedef struct {
    double knn_accuracy;            /* the last kNN monitor's test accuracy (NaN: none) */
} qkv_moco_result;
/* Sets the model and training fields of a preset, keeping the run's: on the
 * ViT "v1", "v2", "v3", "demo" (v2 for a minute); on a ResNet-18 "v1-resnet",
 * "v2-resnet", "v3-resnet"; "default" is "v2-resnet" (`qkv train moco`). */
QKV_API qkv_status qkv_moco_recipe_preset(qkv_moco_recipe *r, const char *name);
QKV_API qkv_status qkv_moco_train(const qkv_moco_recipe *r, qkv_moco_result *res);
/* The query encoder's features of the first n images of d into out (n, F),
 * L2-normalised if `normalize` (the kNN monitor's) or as they are (the
 * probe's): eval mode, no gradients, pixels in [0, 1] as in training. On
 * the shards sh, each taking a part of the images (their contexts' flags
 * are restored after), or with sh NULL on ctx. Resets the contexts. */
QKV_API qkv_status qkv_moco_embed(qkv_ctx *ctx, qkv_shards *sh, const qkv_moco *m,
                                  const qkv_mnist *d, int64_t n, int normalize, float *out);
/* The same through qkv_moco_features_grid: out (n, F grid^2). */
QKV_API qkv_status qkv_moco_embed_grid(qkv_ctx *ctx, qkv_shards *sh, const qkv_moco *m,
                                       const qkv_mnist *d, int64_t n, int normalize,
                                       int64_t grid, float *out);
/* Weighted k-nearest neighbours (Wu et al. 2018; MoCo's monitor): for each
 * query row (nq, dim) the k bank rows (nb, dim) of highest dot product (the
 * cosine for unit rows) vote for their labels (nb, in 0..classes-1) with
 * weight exp(sim / T); pred (nq) gets the class of most weight, scores
 * (nq, classes; may be NULL) the weights. k > nb means nb. */
QKV_API qkv_status qkv_knn_predict(int64_t *pred, float *scores, const float *queries, int64_t nq,
                                   const float *bank, const int64_t *labels, int64_t nb,
                                   int64_t dim, int64_t k, float T, int64_t classes);

/* The first k principal components of the rows of x (n, d): out (n, k) =
 * (x - mean) V, V (d, k) the leading eigenvectors of the covariance (power
 * iteration in double, deflated one by one; each signed so that its
 * largest entry is positive), copied to components (k, d) if not NULL. */
QKV_API qkv_status qkv_pca(float *out, float *components, const float *x, int64_t n, int64_t d,
                           int64_t k);

/* A picture of an embedding: the rows of features (n, F) projected on their
 * first two principal components (qkv_pca), one colour per Fashion-MNIST
 * class of labels (n, 0..9), with a legend. Writes a PNG. */
QKV_API qkv_status qkv_plot_embedding(const char *path, const float *features,
                                      const int64_t *labels, int64_t n, int64_t F,
                                      const char *title);

/* Linear evaluation of a MoCo encoder (`qkv probe`, MoCo's main_lincls.py):
 * the encoder frozen in eval mode, a new classifier fc (F -> 10; weight
 * N(0, 0.01), bias 0) trained with SGD (lr 30; moco-v3's 3 for a ViT;
 * momentum 0.9, no weight decay, batch 256, 100 epochs, cosine) on the
 * training images' features,
 * computed once without augmentation (MoCo crops and flips each epoch):
 * an epoch costs one (n, F) x (F, 10) product. With standardize the
 * features are first scaled to zero mean and unit variance per dimension
 * (the training set's statistics), a better-conditioned problem on which
 * a lower lr converges in fewer epochs (docs/moco.md). */
typedef struct {
    const char *model;              /* a MoCo model file or run directory */
    int64_t epochs, batch_size;
    double lr, weight_decay;        /* lr 0: 30 (ResNet), 3 (ViT), 0.1 standardised */
    float momentum;
    int standardize;
    int64_t grid;                   /* 0 or 1: the global average pool (MoCo's); g: a
                                       ResNet's last map pooled to g x g cells, F g^2
                                       features (qkv_moco_features_grid) */
    /* the run */
    const char *data_dir;
    int64_t limit, eval_limit;      /* the first N training / test images (0: all) */
    uint64_t seed;
    const char *out_dir;            /* metrics.jsonl, curves.png, checkpoint; NULL: none */
    int threads, quiet;
} qkv_probe_recipe;
typedef struct {
    double test_accuracy, train_accuracy;
} qkv_probe_result;
/* MoCo's training fields (above), keeping the run's, standardize and grid. */
QKV_API void qkv_probe_recipe_default(qkv_probe_recipe *r);
QKV_API qkv_status qkv_probe_train(const qkv_probe_recipe *r, qkv_probe_result *res);

/* Transfer learning (`qkv finetune`): a classifier made of a MoCo model's
 * query encoder and a new head (the encoder's own layout: a ViT's
 * heads.head), trained end to end on `fraction` of each class's training
 * images, or with scratch the same network from a random start on the
 * same images. The test accuracy every eval_every epochs and after the
 * last. */
typedef struct {
    const char *model;              /* a MoCo model file or run directory */
    int scratch;                    /* random initialisation, for comparison */
    double fraction;                /* of each class's labels (0.01: 600 images) */
    int64_t epochs, batch_size;
    qkv_optim_kind optimizer;
    double lr, weight_decay, warmup_epochs, label_smoothing;
    qkv_augment aug;
    /* view.crop_max > 0: each training image a random view (qkv_augment_view:
     * MoCo's random resized crop, jitter, blur, flip, as set) instead of aug's
     * shifts; both runs alike */
    qkv_view_aug view;
    int eval_every;
    /* the pretrained run only (scratch trains every layer at lr from the
     * start): the encoder's lr as a multiple of lr (1: all alike), and
     * head_epochs epochs of the head alone first, the encoder frozen (a
     * linear probe before fine-tuning: LP-FT) */
    double encoder_lr;
    int64_t head_epochs;
    /* the run */
    const char *data_dir;
    int64_t eval_limit;
    uint64_t seed;                  /* the subset's seed + 5, as both runs draw it */
    const char *out_dir;            /* model.safetensors (a ViT: qkv eval vit reads it),
                                       metrics.jsonl, curves.png; NULL: none */
    int threads, quiet;
} qkv_finetune_recipe;
typedef struct {
    double test_accuracy, train_accuracy;
    int64_t labels;                 /* labelled images trained on */
} qkv_finetune_result;
/* The supervised ViT's recipe for 100 epochs (AdamW 1e-3, warmup 5, cosine,
 * label smoothing 0.1, 2-pixel crops, flips), keeping the run's fields and
 * a fraction already set (else 0.01). */
QKV_API void qkv_finetune_recipe_default(qkv_finetune_recipe *r);
QKV_API qkv_status qkv_finetune_train(const qkv_finetune_recipe *r, qkv_finetune_result *res);
/* A labelled subset: round(fraction * count) images of each class (at least
 * one), chosen by a shuffle seeded with seed, into out (n) in increasing
 * order; returns how many, -1 on bad arguments. */
QKV_API int64_t qkv_label_subset(int64_t *out, const uint8_t *labels, int64_t n, int64_t classes,
                                 double fraction, uint64_t seed);

/* DETR on a COCO-format detection set (`qkv train detr`, docs/detr.md):
 * AdamW, the backbone at its own learning rate, gradient clipping, StepLR,
 * DETR's set criterion with auxiliary losses, COCO evaluation (the 12
 * numbers) of the validation images after every epoch. */
#define QKV_DETR_MAX_SCALES 16
typedef struct {
    qkv_detr_config model;          /* num_classes 0: the data set's largest
                                       category id + 1, as DETR's 91 for COCO */
    int64_t epochs, batch_size;
    double lr, lr_backbone;         /* AdamW; the backbone's (0: frozen) */
    double weight_decay, clip;      /* clip: max gradient norm, 0: none */
    double lr_drop;                 /* StepLR: x0.1 every lr_drop epochs (0: never) */
    qkv_detr_loss_opts loss;        /* matcher costs and loss weights (zeroes: DETR's) */
    /* images: training augmentation (flip, then resize to one of scales
     * with max_size, or with crop_p a resize to a crop scale, a random
     * crop and the resize); evaluation resizes to eval_size, eval_max_size */
    int64_t scales[QKV_DETR_MAX_SCALES];
    int n_scales;
    int64_t max_size;
    int64_t crop_scales[QKV_DETR_MAX_SCALES];
    int n_crop_scales;
    int64_t crop_min, crop_max;
    double flip_p, crop_p;
    int64_t eval_size, eval_max_size;
    float mean[3], std[3];          /* normalisation, per model channel */
    /* the backbone pretrained first, as DETR's is on ImageNet, here on the
     * items the scenes are made of: the ResNet with a 10-way fc classifies
     * Fashion-MNIST's training images at pretrain_size pixels (random
     * shifts and flips; AdamW, pretrain_lr, cosine) for pretrain_epochs,
     * then its weights and statistics start DETR's backbone */
    int64_t pretrain_epochs, pretrain_size, pretrain_batch;
    int64_t pretrain_limit;         /* the first N training images (0: all 60000) */
    double pretrain_lr;
    const char *mnist_dir;          /* NULL: QKV_MNIST_DIR */
    /* the run */
    const char *data_dir;           /* train/, val/, annotations/{train,val}.json;
                                       NULL: "data/scenes", made (qkv_scenes_make,
                                       the defaults of `qkv data scenes`) if absent */
    int64_t limit, eval_limit;      /* the first N training / validation images (0: all) */
    uint64_t seed;                  /* init seed + 2, data order seed + 1, dropout seed */
    const char *out_dir;            /* model.safetensors, checkpoint, metrics.jsonl,
                                       curves.png; NULL: none */
    int resume, threads, quiet;
    qkv_comm *comm;                 /* ranks training together (NULL: one process):
                                       each takes its share of every batch's images
                                       (and of the pretraining's); the box count and
                                       the class loss's weights are summed over
                                       ranks (DETR's all-reduced num_boxes); each
                                       evaluates its part of the validation images
                                       and the detections are gathered; rank 0
                                       alone prints and writes */
} qkv_detr_recipe;
/* "default" (sized for an hour on two cores on `qkv data scenes`: a
 * ResNet-18 of width 32 pretrained on Fashion-MNIST, a small transformer,
 * 20 epochs), "detr-r50" (the paper's model and
 * schedule on COCO-sized images), "demo" (the default, a few minutes).
 * Keeps the run's fields. */
QKV_API qkv_status qkv_detr_recipe_preset(qkv_detr_recipe *r, const char *name);
typedef struct {
    double stats[12];               /* the last evaluation's COCO numbers */
    double loss;                    /* the last epoch's mean training loss */
    int64_t epochs;                 /* epochs trained in this run */
} qkv_detr_result;
QKV_API qkv_status qkv_detr_train(const qkv_detr_recipe *r, qkv_detr_result *res);
/* COCO evaluation of a DETR on the first n images of d (n <= 0: all): each
 * image resized as `in` says (in->size 0: as it is), in batches of `batch`
 * padded as DETR's, DETR's PostProcess, every query's detection with its
 * box in the original image's pixels; res as qkv_coco_evaluate's (free it
 * with qkv_coco_result_free). Eval mode, no gradients; uses and resets ctx. */
QKV_API qkv_status qkv_detr_evaluate(qkv_ctx *ctx, const qkv_detr *m, const qkv_det_dataset *d,
                                     int64_t n, const qkv_detr_input *in, int64_t batch,
                                     qkv_coco_result *res);
/* The same over the ranks of c (every rank calls it): rank r runs its
 * part of the batches (qkv_shard_rows of them, so each batch is padded as
 * in one process), the detections are all-gathered in image order, and
 * every rank returns the numbers of qkv_detr_evaluate. c NULL: that. */
QKV_API qkv_status qkv_detr_evaluate_ranks(qkv_ctx *ctx, const qkv_detr *m,
                                           const qkv_det_dataset *d, int64_t n,
                                           const qkv_detr_input *in, int64_t batch,
                                           qkv_comm *c, qkv_coco_result *res);

/* Kernel regression (`qkv kernel-regression`): trains *w (in place) as the
 * book, through qkv_trainer: leave-one-out keys and values (n, n - 1), loss
 * = the sum of squared errors over the n training points, SGD with lr,
 * full batch, one step an epoch. losses (epochs, or NULL) receives each
 * epoch's loss before its update, as the book prints it. */
QKV_API qkv_status qkv_kreg_train(float *w, const float *x_train, const float *y_train,
                                  int64_t n, int epochs, float lr, float *losses);

#ifdef __cplusplus
}
#endif
#endif /* QKV_H */
