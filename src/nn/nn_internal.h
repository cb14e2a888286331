/*
 * nn_internal.h - what the nn modules share with each other and with the
 * models above them, and users do not see: multi-head attention over
 * packed rows, its projections one at a time, the d2l layout of its
 * parameters inside the Transformer's blocks, and the blocks over packed
 * rows (qkv_seq2seq_loss).
 *
 * Legend: B batch, N queries, M keys, S source and T target lengths,
 * E model width, H heads, D = E / H; n the kept rows of a packed batch
 * (qkv_rows).
 */
#ifndef QKV_NN_INTERNAL_H
#define QKV_NN_INTERNAL_H

#include "../qkv_internal.h"

/* ---- multi-head attention (mha.c) ---- */

/* qkv_nn_mha_forward, with queries given packed as the kept rows q_rows of
 * a (B, N) batch, (n_q, E), and keys and values as those of kv_rows of
 * (B, M), (n_k, E) (m batch first). The projections run on the kept rows;
 * the attention on the padded batch with zero rows elsewhere, which the
 * masks must hide from every kept query; the output is packed as the
 * queries, (n_q, E). Both row maps NULL: qkv_nn_mha_forward. Weights
 * cannot be asked for. */
qkv_tensor *qkv__mha_forward_rows(qkv_ctx *ctx, const qkv_nn_mha *m, qkv_tensor *query,
                                  qkv_tensor *key, qkv_tensor *value, const qkv_attn_opts *opts,
                                  const qkv_rows *q_rows, const qkv_rows *kv_rows);
/* x (..., E) -> its projection `which` (0 q, 1 k, 2 v), (..., E), with its
 * bias: the incremental decoder projects by itself, to keep keys and
 * values. */
qkv_tensor *qkv__mha_project(qkv_ctx *ctx, const qkv_nn_mha *m, qkv_tensor *x, int which);
/* A batch-first qkv_nn_mha holding d2l's MultiHeadAttention parameters
 * under d2l's names: prefix.W_q.weight, W_k, W_v (as q_proj_weight,
 * k_proj_weight, v_proj_weight), W_o (as out_proj), all (E, E), no bias.
 * Registered in that order: W_q, W_k, W_v lie back to back in the store,
 * which lets self-attention project them with one GEMM. */
qkv_status qkv__mha_init_d2l(qkv_nn_mha *m, qkv_params *ps, const char *prefix, int64_t E,
                             int64_t H, float dropout);
/* x (B, N, H D) (batch first) or (N, B, H D) -> a (B, H, N, D) view, and
 * back: o (B, H, N, D) -> (B, N, H D) or (N, B, H D). */
qkv_tensor *qkv__split_heads(qkv_ctx *ctx, qkv_tensor *x, int64_t H, bool batch_first);
qkv_tensor *qkv__merge_heads(qkv_ctx *ctx, qkv_tensor *o, bool batch_first);

/* ---- the Transformer's blocks (transformer.c) ---- */

/* qkv_transformer_encode and _decode with the sequences given packed: src
 * as the kept rows src_rows of its (B, S) batch, (n_s, E), tgt as those of
 * tgt_rows, (n_t, E); memory as the encoder gave it. The outputs are packed
 * too. The kept rows must be all that the masks let a kept query see.
 * NULL row maps: the public functions. */
qkv_tensor *qkv__transformer_encode_rows(qkv_ctx *ctx, const qkv_transformer *m,
                                         qkv_tensor *src, const qkv_tf_opts *opts,
                                         const qkv_rows *src_rows);
qkv_tensor *qkv__transformer_decode_rows(qkv_ctx *ctx, const qkv_transformer *m,
                                         qkv_tensor *tgt, qkv_tensor *memory,
                                         const qkv_tf_opts *opts, const qkv_rows *tgt_rows,
                                         const qkv_rows *src_rows);

#endif
