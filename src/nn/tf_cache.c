/* tf_cache.c - incremental decoding with the Transformer's decoder: each
 * decoder block keeps the projected keys and values of the positions
 * decoded so far and the projected memory, so that a step costs one query
 * against the cache instead of recomputing the prefix. A step equals the
 * last row of the causal full decode (transformer.c). Beam search reorders
 * the cache's batch rows. Nothing here is recorded on the tape.
 *
 * Legend: B batch, S source length, E model width, H heads, D = E / H,
 * T the positions the cache holds (max_len). */
#include "nn_internal.h"

#include <stdio.h>

qkv_status qkv_tf_cache_init(qkv_ctx *ctx, const qkv_transformer *m, qkv_tf_cache *c,
                             qkv_tensor *memory, int64_t max_len, const qkv_tf_opts *opts)
{
    const qkv_tf_config *cfg = &m->cfg;
    memset(c, 0, sizeof *c);
    if (!memory)
        return qkv_error_status() ? qkv_error_status()
                                  : qkv_set_error(QKV_ERR_ARG, "qkv_tf_cache_init: no memory");
    if (memory->ndim != 3 || memory->shape[2] != cfg->d_model || max_len <= 0) {
        char s[64];
        return qkv_set_error(QKV_ERR_SHAPE,
                             "qkv_tf_cache_init: memory %s should be (B, S, %lld), "
                             "max_len %lld > 0",
                             qkv_shape_str(memory, s, sizeof s), (long long)cfg->d_model,
                             (long long)max_len);
    }
    if (opts && (opts->src_pos || opts->tgt_pos))
        return qkv_set_error(QKV_ERR_ARG, "qkv_tf_cache_init: incremental decoding takes no "
                             "positional terms (src_pos, tgt_pos)");
    int64_t B = memory->shape[0], H = cfg->n_heads, D = cfg->d_model / cfg->n_heads;
    c->batch = B;
    c->src_len = memory->shape[1];
    c->max_len = max_len;
    if (opts && opts->src_valid_lens) {
        c->src_valid_lens = qkv__alloc(ctx, (size_t)B * sizeof(int64_t));
        if (!c->src_valid_lens)
            return qkv_error_status();
        memcpy(c->src_valid_lens, opts->src_valid_lens, (size_t)B * sizeof(int64_t));
    }
    if (opts) {
        c->memory_key_padding_mask = opts->memory_key_padding_mask;
        c->memory_key_padding_bool = opts->memory_key_padding_bool;
    }
    int was = qkv_set_grad_enabled(ctx, 0);
    for (int64_t i = 0; i < cfg->n_dec; i++) {
        const qkv_nn_mha *a = &m->dec[i].cross_attn;
        c->k[i] = qkv_zeros(ctx, 4, (int64_t[]){B, H, max_len, D});
        c->v[i] = qkv_zeros(ctx, 4, (int64_t[]){B, H, max_len, D});
        c->mk[i] = qkv_contiguous(
            ctx, qkv__split_heads(ctx, qkv__mha_project(ctx, a, memory, 1), H, true));
        c->mv[i] = qkv_contiguous(
            ctx, qkv__split_heads(ctx, qkv__mha_project(ctx, a, memory, 2), H, true));
        if (!c->k[i] || !c->v[i] || !c->mk[i] || !c->mv[i]) {
            qkv_set_grad_enabled(ctx, was);
            return qkv_error_status();
        }
    }
    qkv_set_grad_enabled(ctx, was);
    return QKV_OK;
}

/* Writes x (B, H, 1, D), a view, into row `t` of cache (B, H, T, D). */
static void cache_put(qkv_tensor *cache, const qkv_tensor *x, int64_t t)
{
    int64_t B = cache->shape[0], H = cache->shape[1], T = cache->shape[2], D = cache->shape[3];
    for (int64_t i = 0; i < B; i++)
        for (int64_t j = 0; j < H; j++)
            memcpy(cache->data + ((i * H + j) * T + t) * D,
                   x->data + i * x->stride[0] + j * x->stride[1], (size_t)D * sizeof(float));
}

/* Copies weights w (B, H, 1, M) of batch row 0 into row t of dst (H, T, M). */
static void weights_put(float *dst, const qkv_tensor *w, int64_t t, int64_t T, int64_t M)
{
    if (!dst || !w)
        return;
    for (int64_t j = 0; j < w->shape[1]; j++)
        for (int64_t k = 0; k < w->shape[3]; k++)
            dst[(j * T + t) * M + k] = w->data[j * w->stride[1] + k * w->stride[3]];
}

/* Self-attention of one new position x (B, 1, E) against the cached ones
 * -> (B, 1, E). */
static qkv_tensor *self_attn_step(qkv_ctx *ctx, const qkv_nn_mha *a, qkv_tf_cache *c, int64_t i,
                                  qkv_tensor *x)
{
    int64_t H = a->num_heads, t = c->len;
    qkv_tensor *q = qkv__split_heads(ctx, qkv__mha_project(ctx, a, x, 0), H, true);
    qkv_tensor *k = qkv__split_heads(ctx, qkv__mha_project(ctx, a, x, 1), H, true);
    qkv_tensor *v = qkv__split_heads(ctx, qkv__mha_project(ctx, a, x, 2), H, true);
    if (!q || !k || !v)
        return NULL;
    cache_put(c->k[i], k, t);
    cache_put(c->v[i], v, t);
    qkv_tensor *w = NULL;
    qkv_attn_opts o = {.dropout_p = a->dropout, .weights = c->self_weights ? &w : NULL};
    qkv_tensor *out = qkv_attention(ctx, q, qkv_slice(ctx, c->k[i], 2, 0, t + 1, 1),
                                    qkv_slice(ctx, c->v[i], 2, 0, t + 1, 1), &o);
    weights_put(c->self_weights ? c->self_weights + i * H * c->max_len * c->max_len : NULL, w, t,
                c->max_len, c->max_len);
    return qkv_nn_linear_forward(ctx, &a->out_proj, qkv__merge_heads(ctx, out, true));
}

/* Cross-attention of x (B, 1, E) over the projected memory -> (B, 1, E). */
static qkv_tensor *cross_attn_step(qkv_ctx *ctx, const qkv_nn_mha *a, qkv_tf_cache *c,
                                   int64_t i, qkv_tensor *x)
{
    int64_t H = a->num_heads;
    qkv_tensor *w = NULL;
    qkv_attn_opts o = {.dropout_p = a->dropout,
                       .key_padding_mask = c->memory_key_padding_mask,
                       .key_padding_bool = c->memory_key_padding_bool,
                       .valid_lens = c->src_valid_lens,
                       .valid_lens_ndim = c->src_valid_lens ? 1 : 0,
                       .weights = c->cross_weights ? &w : NULL};
    qkv_tensor *q = qkv__split_heads(ctx, qkv__mha_project(ctx, a, x, 0), H, true);
    qkv_tensor *out = qkv_attention(ctx, q, c->mk[i], c->mv[i], &o);
    weights_put(c->cross_weights ? c->cross_weights + i * H * c->max_len * c->src_len : NULL, w,
                c->len, c->max_len, c->src_len);
    return qkv_nn_linear_forward(ctx, &a->out_proj, qkv__merge_heads(ctx, out, true));
}

/* x + dropout(y) in pre-norm (y computed on LN(x)), LN(x + dropout(y)) in
 * post-norm */
static qkv_tensor *post_or_pre(qkv_ctx *ctx, const qkv_tf_config *cfg,
                               const qkv_nn_layer_norm *ln, qkv_tensor *x, qkv_tensor *y)
{
    if (cfg->norm_first)
        return qkv_add(ctx, x, qkv_dropout(ctx, y, cfg->dropout));
    return qkv_nn_addnorm_forward(ctx, ln, x, y, cfg->dropout);
}

/* x (B, 1, E) at position c->len -> (B, 1, E). Records nothing on the tape:
 * the cache holds plain copies. */
qkv_tensor *qkv_transformer_decode_step(qkv_ctx *ctx, const qkv_transformer *m, qkv_tf_cache *c,
                                        qkv_tensor *x)
{
    QKV_INPUTS("transformer decode step", x);
    const qkv_tf_config *cfg = &m->cfg;
    if (x->ndim != 3 || x->shape[0] != c->batch || x->shape[1] != 1 ||
        x->shape[2] != cfg->d_model) {
        char s[64];
        qkv_set_error(QKV_ERR_SHAPE, "transformer decode step: x %s should be (%lld, 1, %lld)",
                      qkv_shape_str(x, s, sizeof s), (long long)c->batch,
                      (long long)cfg->d_model);
        return NULL;
    }
    if (c->len >= c->max_len) {
        qkv_set_error(QKV_ERR_STATE, "transformer decode step: cache full (%lld positions)",
                      (long long)c->max_len);
        return NULL;
    }
    int was = qkv_set_grad_enabled(ctx, 0);
    for (int64_t i = 0; i < cfg->n_dec && x; i++) {
        const qkv_tf_dec_layer *l = &m->dec[i];
        const qkv_nn_layer_norm *ln[3] = {&l->norm1, &l->norm2, &l->norm3};
        qkv_tensor *in = cfg->norm_first ? qkv_nn_layer_norm_forward(ctx, ln[0], x) : x;
        x = post_or_pre(ctx, cfg, ln[0], x, self_attn_step(ctx, &l->self_attn, c, i, in));
        in = cfg->norm_first ? qkv_nn_layer_norm_forward(ctx, ln[1], x) : x;
        x = post_or_pre(ctx, cfg, ln[1], x, cross_attn_step(ctx, &l->cross_attn, c, i, in));
        in = cfg->norm_first ? qkv_nn_layer_norm_forward(ctx, ln[2], x) : x;
        x = post_or_pre(ctx, cfg, ln[2], x, qkv_nn_ffn_forward(ctx, &l->ffn, in));
    }
    if (x && m->has_dec_norm)
        x = qkv_nn_layer_norm_forward(ctx, &m->dec_norm, x);
    qkv_set_grad_enabled(ctx, was);
    if (x)
        c->len++;
    return x;
}

/* Gathers batch rows of t (B, ...) in place: row i <- old row from[i]. */
static qkv_status gather_rows(qkv_ctx *ctx, qkv_tensor *t, const int64_t *from)
{
    int64_t B = t->shape[0], row = qkv_numel(t) / B;
    float *tmp = qkv__floats(ctx, B * row);
    if (!tmp)
        return qkv_error_status();
    for (int64_t i = 0; i < B; i++)
        memcpy(tmp + i * row, t->data + from[i] * row, (size_t)row * sizeof(float));
    memcpy(t->data, tmp, (size_t)(B * row) * sizeof(float));
    return QKV_OK;
}

qkv_status qkv_tf_cache_reorder(qkv_ctx *ctx, qkv_tf_cache *c, const int64_t *from)
{
    for (int64_t i = 0; i < c->batch; i++)
        if (from[i] < 0 || from[i] >= c->batch)
            return qkv_set_error(QKV_ERR_ARG, "qkv_tf_cache_reorder: row %lld out of [0, %lld)",
                                 (long long)from[i], (long long)c->batch);
    for (int64_t i = 0; i < QKV_TF_MAX_LAYERS && c->k[i]; i++)
        if (gather_rows(ctx, c->k[i], from) != QKV_OK ||
            gather_rows(ctx, c->v[i], from) != QKV_OK ||
            gather_rows(ctx, c->mk[i], from) != QKV_OK ||
            gather_rows(ctx, c->mv[i], from) != QKV_OK)
            return qkv_error_status();
    if (c->src_valid_lens) {
        int64_t *lens = qkv__alloc(ctx, (size_t)c->batch * sizeof(int64_t));
        if (!lens)
            return qkv_error_status();
        for (int64_t i = 0; i < c->batch; i++)
            lens[i] = c->src_valid_lens[from[i]];
        c->src_valid_lens = lens;
    }
    return QKV_OK;
}
