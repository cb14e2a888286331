/* attention.c - d2l's two attention scorers as modules: DotProductAttention
 * (no parameters: qkv_attention on 3-D inputs) and AdditiveAttention (a
 * one-hidden-layer MLP scores every query-key pair). */
#include "../qkv_internal.h"

/* opts with the module's dropout in place of the caller's */
static qkv_attn_opts with_dropout(const qkv_attn_opts *opts, float p)
{
    qkv_attn_opts o = opts ? *opts : (qkv_attn_opts){0};
    o.dropout_p = p;
    return o;
}

qkv_tensor *qkv_nn_dot_attention_forward(qkv_ctx *ctx, const qkv_nn_dot_attention *m,
                                         qkv_tensor *queries, qkv_tensor *keys,
                                         qkv_tensor *values, const qkv_attn_opts *opts)
{
    qkv_attn_opts o = with_dropout(opts, m->dropout);
    return qkv_attention(ctx, queries, keys, values, &o);
}

qkv_status qkv_nn_additive_attention_init(qkv_nn_additive_attention *m, qkv_params *ps,
                                          const char *prefix, int64_t key_size,
                                          int64_t query_size, int64_t num_hiddens, float dropout)
{
    char name[512];
    memset(m, 0, sizeof *m);
    m->dropout = dropout;
    /* declared in d2l's order: W_k, W_q, w_v */
    qkv_status s = qkv_nn_linear_init(&m->W_k, ps, qkv_nn_name(name, sizeof name, prefix, "W_k"),
                                      key_size, num_hiddens, 0);
    if (s == QKV_OK)
        s = qkv_nn_linear_init(&m->W_q, ps, qkv_nn_name(name, sizeof name, prefix, "W_q"),
                               query_size, num_hiddens, 0);
    if (s == QKV_OK)
        s = qkv_nn_linear_init(&m->w_v, ps, qkv_nn_name(name, sizeof name, prefix, "w_v"),
                               num_hiddens, 1, 0);
    return s;
}

void qkv_nn_additive_attention_reset(qkv_nn_additive_attention *m, qkv_rng *r)
{
    qkv_nn_linear_reset(&m->W_k, r);
    qkv_nn_linear_reset(&m->W_q, r);
    qkv_nn_linear_reset(&m->w_v, r);
}

/* queries (B, N, q), keys (B, M, k), values (B, M, Dv) -> (B, N, Dv) */
qkv_tensor *qkv_nn_additive_attention_forward(qkv_ctx *ctx, const qkv_nn_additive_attention *m,
                                              qkv_tensor *queries, qkv_tensor *keys,
                                              qkv_tensor *values, const qkv_attn_opts *opts)
{
    QKV_INPUTS("additive_attention", queries, keys, values);
    if (queries->ndim != 3 || keys->ndim != 3 || values->ndim != 3)
        return qkv__shape_error("additive_attention", queries, keys,
                                "queries, keys and values must be (B, N, .) and (B, M, .)");
    int64_t B = queries->shape[0], N = queries->shape[1], M = keys->shape[1];
    int64_t h = m->W_q.out_features;
    /* features (B, N, M, h) = tanh(W_q q_i + W_k k_j), by broadcasting
     * (B, N, 1, h) against (B, 1, M, h) */
    qkv_tensor *qh = qkv_reshape(ctx, qkv_nn_linear_forward(ctx, &m->W_q, queries), 4,
                                 (int64_t[]){B, N, 1, h});
    qkv_tensor *kh = qkv_reshape(ctx, qkv_nn_linear_forward(ctx, &m->W_k, keys), 4,
                                 (int64_t[]){B, 1, M, h});
    qkv_tensor *features = qkv_tanh(ctx, qkv_add(ctx, qh, kh));
    qkv_tensor *scores = qkv_reshape(ctx, qkv_nn_linear_forward(ctx, &m->w_v, features), 3,
                                     (int64_t[]){B, N, M});
    qkv_tensor *w = qkv_masked_softmax(ctx, scores, opts);
    if (opts && opts->weights)
        *opts->weights = w;
    return qkv_matmul(ctx, qkv_dropout(ctx, w, m->dropout), values, 0, 0);
}
