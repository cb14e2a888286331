/* forward.h - `qkv forward`: the architectures it can run, and the helpers
 * they share for reading named inputs and writing named outputs.
 *
 * An architecture is one function that reads its weights and inputs from a
 * forward_job, runs the module and adds its outputs to the job. To add one
 * (say `--arch vit`):
 *
 *   1. write tools/qkv/forward_vit.c with `int forward_vit(forward_job *job)`;
 *   2. add one line to FORWARD_ARCHS below:
 *          X(vit, "torchvision VisionTransformer: images -> logits")
 *
 * The line declares the function and lists the architecture in the table
 * that cmd_forward.c builds, in --help and in the "unknown arch" message.
 *
 * A run function returns the exit status: 0 done, 1 bad data (message
 * printed, through the helpers or forward_fail), 2 bad usage (forward_usage).
 * It runs in inference mode: gradients off, training off (no dropout). The
 * output file is written by cmd_forward.c after the run returns 0, so a
 * failed run leaves no file behind.
 */
#ifndef QKV_FORWARD_H
#define QKV_FORWARD_H

#include "qkv.h"

#include <stdbool.h>

#define FORWARD_ARCHS(X)                                                                    \
    X(mha, "torch.nn.MultiheadAttention: query, key, value -> attn_output, attn_weights")   \
    X(additive, "d2l AdditiveAttention: queries, keys, values -> output, attention_weights") \
    X(dot, "d2l DotProductAttention: queries, keys, values -> output, attention_weights") \
    X(transformer, "torch.nn.Transformer: src, tgt and PyTorch's masks (bool or float, mixed) -> output") \
    X(vit, "torchvision VisionTransformer: x (N, C, H, W) -> logits")                        \
    X(detr, "DETR, official or Hugging Face names: pixel_values, pixel_mask -> pred_logits, pred_boxes")

typedef struct {
    qkv_ctx *ctx;
    const qkv_st_file *weights; /* NULL when --weights was not given */
    const qkv_st_file *input;
    const char *weights_path, *input_path;
    const char *arch;           /* its name, for messages */
    qkv_st_writer *output;
    /* options shared by the architectures */
    int64_t heads;              /* --heads; 0 when not given */
    bool batch_first;           /* --batch-first */
    bool need_weights;          /* not --no-weights */
    bool per_head_weights;      /* --per-head-weights */
    const char *activation;     /* --activation (transformer): "relu", "gelu"; NULL not given */
    bool norm_first;            /* --norm-first (transformer) */
} forward_job;

typedef struct {
    const char *name, *help;
    int (*run)(forward_job *job);
} forward_arch;

#define FORWARD_DECLARE(name, help) int forward_##name(forward_job *job);
FORWARD_ARCHS(FORWARD_DECLARE)
#undef FORWARD_DECLARE

/* Prints "qkv forward: message" to stderr; return 1 (bad data). */
int forward_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same plus a pointer to --help; returns 2 (bad usage). */
int forward_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Input tensor `name` as float32 (bool and integer tensors give 0/1 and
 * their values). forward_input: absent is an error naming it and listing the
 * file's tensors; forward_optional: absent gives NULL with *failed unchanged.
 * Both set *failed (and print why) if the tensor cannot be read. */
qkv_tensor *forward_input(forward_job *job, const char *name, bool *failed);
qkv_tensor *forward_optional(forward_job *job, const char *name, bool *failed);
/* The names of f's tensors, comma-separated, into buf (cut with "..."), or
 * "no tensors"; for messages. */
const char *forward_names(const qkv_st_file *f, char *buf, size_t n);

/* Whether input `name` holds floats (a mask to add), not booleans or
 * integers (a mask to apply where nonzero). */
bool forward_input_is_float(const forward_job *job, const char *name);

/* Checks t's shape against want (ndim sizes, -1 for any size); on mismatch
 * prints e.g. "input 'key' has shape (5, 2, 6), expected (M, B=2, kdim=8)",
 * `axes` naming each axis ("M,B,kdim"), and returns false. */
bool forward_check_shape(const char *what, const qkv_tensor *t, int ndim, const int64_t *want,
                         const char *axes);

/* Loads every tensor of the weights file into ps by name, strictly: missing,
 * unexpected and misshapen keys are listed. 0, or 1 with a message. */
int forward_load_weights(forward_job *job, qkv_params *ps);

/* Adds output tensor t (NULL: the op failed, message from qkv_error()) under
 * name; 0 or 1. */
int forward_output(forward_job *job, const char *name, const qkv_tensor *t);

#endif
