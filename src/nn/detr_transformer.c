/* detr_transformer.c - DETR's transformer (facebookresearch/detr
 * models/transformer.py, Transformer.forward with return_intermediate_dec):
 * the encoder over the image features with the image's positional
 * encoding added to queries and keys, and the decoder from zeros with the
 * object queries' embedding (query_pos) added to its queries and keys,
 * attending to the memory with the image's padding mask; every decoder
 * layer's output goes through the decoder's final norm, for the auxiliary
 * losses. The blocks are transformer.c's (layout QKV_TF_DETR).
 *
 * Legend: B batch, S = h w flattened feature positions, T object queries,
 * E model width, L decoder layers. Batch first, where DETR is (S, B, E). */
#include "nn_internal.h"

#include <stdio.h>

/* t (B, len, E) with the given B (or any B when b < 0) and len */
static bool fits(const qkv_tensor *t, int64_t b, int64_t len, int64_t e)
{
    return t->ndim == 3 && (b < 0 || t->shape[0] == b) && t->shape[1] == len && t->shape[2] == e;
}

qkv_tensor *qkv_detr_transformer_forward(qkv_ctx *ctx, const qkv_transformer *m,
                                         qkv_tensor *src, qkv_tensor *pos, qkv_tensor *mask,
                                         qkv_tensor *query_pos, qkv_tensor **memory)
{
    if (memory)
        *memory = NULL;
    QKV_INPUTS("detr transformer", src, pos, query_pos);
    int64_t E = m->cfg.d_model;
    char a[64], b[64];
    if (src->ndim != 3 || src->shape[2] != E || !qkv_same_shape(src, pos)) {
        qkv_set_error(QKV_ERR_SHAPE, "detr transformer: src %s and pos %s should both be "
                      "(B, S, E = %lld)", qkv_shape_str(src, a, sizeof a),
                      qkv_shape_str(pos, b, sizeof b), (long long)E);
        return NULL;
    }
    int64_t B = src->shape[0], S = src->shape[1];
    int64_t T = query_pos->ndim >= 2 ? query_pos->shape[query_pos->ndim - 2] : 0;
    if (!(query_pos->ndim == 2 && query_pos->shape[1] == E) && !fits(query_pos, B, T, E)) {
        qkv_set_error(QKV_ERR_SHAPE, "detr transformer: query_pos %s should be (T, E = %lld) or "
                      "(B = %lld, T, E)", qkv_shape_str(query_pos, a, sizeof a), (long long)E,
                      (long long)B);
        return NULL;
    }
    if (mask && (mask->ndim != 2 || mask->shape[0] != B || mask->shape[1] != S)) {
        qkv_set_error(QKV_ERR_SHAPE, "detr transformer: mask %s should be (B = %lld, S = %lld)",
                      qkv_shape_str(mask, a, sizeof a), (long long)B, (long long)S);
        return NULL;
    }
    if (m->cfg.n_dec < 1) {
        qkv_set_error(QKV_ERR_ARG, "detr transformer: the model has no decoder blocks");
        return NULL;
    }
    qkv_tensor *hs = NULL;
    qkv_tf_opts o = {.src_key_padding_mask = mask,
                     .src_key_padding_bool = 1,
                     .memory_key_padding_mask = mask,
                     .memory_key_padding_bool = 1,
                     .src_pos = pos,
                     .tgt_pos = query_pos,
                     .dec_intermediate = &hs};
    /* tgt = zeros_like(query_embed), batch first */
    qkv_tensor *tgt = qkv_zeros(ctx, 3, (int64_t[]){B, T, E});
    qkv_tensor *mem = qkv_transformer_encode(ctx, m, src, &o);
    if (!tgt || !qkv_transformer_decode(ctx, m, tgt, mem, &o))
        return NULL;
    if (memory)
        *memory = mem;
    return hs;
}
