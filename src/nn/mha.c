/* mha.c - multi-head attention in two layouts: d2l's MultiHeadAttention
 * (W_q, W_k, W_v, W_o, batch first) and torch.nn.MultiheadAttention (packed
 * in_proj_weight, out_proj, sequence first unless batch_first).
 *
 * Both project and attend with the heads side by side in the projection's
 * last axis (qkv__attention_heads): the kernel reads and writes each head
 * through strides, so neither a split nor a merge of heads copies. When
 * the attention weights are wanted, heads are split into (B, H, N, D) views
 * and merged after the unfused path. */
#include "../qkv_internal.h"

#include <math.h>

/* ---- shared: split and merge heads ---- */

/* x (B, N, H*D) (batch_first) or (N, B, H*D) -> a (B, H, N, D) view */
static qkv_tensor *split_heads(qkv_ctx *ctx, qkv_tensor *x, int64_t H, bool batch_first)
{
    if (!x)
        return NULL;
    int64_t s0 = x->shape[0], s1 = x->shape[1], E = x->shape[2];
    qkv_tensor *r = qkv_reshape(ctx, x, 4, (int64_t[]){s0, s1, H, E / H});
    return batch_first ? qkv_transpose(ctx, r, 1, 2) : qkv_permute(ctx, r, (int[]){1, 2, 0, 3});
}

/* o (B, H, N, D) -> (B, N, H*D) (batch_first) or (N, B, H*D) */
static qkv_tensor *merge_heads(qkv_ctx *ctx, qkv_tensor *o, bool batch_first)
{
    if (!o)
        return NULL;
    int64_t B = o->shape[0], H = o->shape[1], N = o->shape[2], D = o->shape[3];
    qkv_tensor *p = batch_first ? qkv_transpose(ctx, o, 1, 2)
                                : qkv_permute(ctx, o, (int[]){2, 0, 1, 3});
    return batch_first ? qkv_reshape(ctx, p, 3, (int64_t[]){B, N, H * D})
                       : qkv_reshape(ctx, p, 3, (int64_t[]){N, B, H * D});
}

/* Attention of projections q (B, N, H D) (batch_first) or (N, B, H D), k,
 * v alike: heads in place by default; split into (B, H, N, D) views,
 * attended and merged when the weights are wanted or the unfused path is
 * asked for. */
static qkv_tensor *attend(qkv_ctx *ctx, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v, int64_t H,
                          bool batch_first, const qkv_attn_opts *o)
{
    if (!q || !k || !v)
        return NULL;
    if (!o->weights && !o->unfused)
        return qkv__attention_heads(ctx, q, k, v, H, batch_first, o);
    return merge_heads(ctx,
                       qkv_attention(ctx, split_heads(ctx, q, H, batch_first),
                                     split_heads(ctx, k, H, batch_first),
                                     split_heads(ctx, v, H, batch_first), o),
                       batch_first);
}

static bool check_3d(const char *op, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v)
{
    if (q->ndim == 3 && k->ndim == 3 && v->ndim == 3)
        return true;
    qkv__shape_error(op, q, k, "query, key and value must be 3-D");
    return false;
}

/* ---- d2l ---- */

qkv_status qkv_nn_d2l_mha_init(qkv_nn_d2l_mha *m, qkv_params *ps, const char *prefix,
                               int64_t key_size, int64_t query_size, int64_t value_size,
                               int64_t num_hiddens, int64_t num_heads, float dropout, int bias)
{
    char name[512];
    memset(m, 0, sizeof *m);
    if (num_heads < 1 || num_hiddens % num_heads != 0)
        return qkv_set_error(QKV_ERR_ARG, "d2l_mha: num_hiddens %lld is not a multiple of "
                             "num_heads %lld", (long long)num_hiddens, (long long)num_heads);
    m->num_hiddens = num_hiddens;
    m->num_heads = num_heads;
    m->dropout = dropout;
    qkv_status s = qkv_nn_linear_init(&m->W_q, ps, qkv_nn_name(name, sizeof name, prefix, "W_q"),
                                      query_size, num_hiddens, bias);
    if (s == QKV_OK)
        s = qkv_nn_linear_init(&m->W_k, ps, qkv_nn_name(name, sizeof name, prefix, "W_k"),
                               key_size, num_hiddens, bias);
    if (s == QKV_OK)
        s = qkv_nn_linear_init(&m->W_v, ps, qkv_nn_name(name, sizeof name, prefix, "W_v"),
                               value_size, num_hiddens, bias);
    if (s == QKV_OK)
        s = qkv_nn_linear_init(&m->W_o, ps, qkv_nn_name(name, sizeof name, prefix, "W_o"),
                               num_hiddens, num_hiddens, bias);
    return s;
}

void qkv_nn_d2l_mha_reset(qkv_nn_d2l_mha *m, qkv_rng *r)
{
    qkv_nn_linear_reset(&m->W_q, r);
    qkv_nn_linear_reset(&m->W_k, r);
    qkv_nn_linear_reset(&m->W_v, r);
    qkv_nn_linear_reset(&m->W_o, r);
}

/* W_q, W_k, W_v as one (3 E, in) leaf tensor over their own values and
 * gradients, when they are adjacent in the parameter store (qkv_params
 * allocates in registration order, aligned) and have no biases; else NULL. */
static qkv_tensor *stacked_qkv(qkv_ctx *ctx, const qkv_nn_d2l_mha *m)
{
    const qkv_tensor *wq = m->W_q.weight, *wk = m->W_k.weight, *wv = m->W_v.weight;
    if (m->W_q.bias || m->W_k.bias || m->W_v.bias || !wq->grad || !wk->grad || !wv->grad)
        return NULL;
    int64_t n = qkv_numel(wq);
    if (!qkv_same_shape(wq, wk) || !qkv_same_shape(wq, wv) || wk->data != wq->data + n ||
        wv->data != wk->data + n || wk->grad != wq->grad + n || wv->grad != wk->grad + n ||
        wq->requires_grad != wk->requires_grad || wq->requires_grad != wv->requires_grad)
        return NULL;
    qkv_tensor *w = qkv_wrap(ctx, 2, (int64_t[]){3 * wq->shape[0], wq->shape[1]}, wq->data);
    if (!w)
        return NULL;
    w->grad = wq->grad;
    w->requires_grad = wq->requires_grad;
    return w;
}

/* Packed queries (nq, E) and keys, values (nk, E) (o->q_rows, o->kv_rows):
 * projections on the kept rows, attention on the padded batch. */
static qkv_tensor *packed_forward(qkv_ctx *ctx, const qkv_nn_d2l_mha *m, qkv_tensor *queries,
                                  qkv_tensor *keys, qkv_tensor *values, qkv_attn_opts *o)
{
    const qkv_rows *qr = o->q_rows, *kr = o->kv_rows;
    if (!qr || !kr || o->weights || o->unfused || queries->ndim != 2 || keys->ndim != 2 ||
        values->ndim != 2 || queries->shape[0] != qr->n || keys->shape[0] != kr->n ||
        values->shape[0] != kr->n || qr->B != kr->B) {
        qkv_set_error(QKV_ERR_ARG, "d2l_mha: packed rows need both row maps (same batch), "
                                   "2-D queries, keys and values of their kept rows, and "
                                   "neither weights nor the unfused path");
        return NULL;
    }
    int64_t H = m->num_heads;
    qkv_attn_opts a = *o;
    a.q_rows = a.kv_rows = NULL;
    qkv_tensor *w3 = queries == keys && keys == values && qr == kr ? stacked_qkv(ctx, m) : NULL;
    qkv_tensor *out;
    if (w3) {
        qkv_tensor *x = qkv_rows_unpack(ctx, qkv_linear(ctx, queries, w3, NULL), qr);
        out = x ? qkv__attention_packed(ctx, x, H, &a) : NULL;
    } else {
        qkv_tensor *q = qkv_rows_unpack(ctx, qkv_nn_linear_forward(ctx, &m->W_q, queries), qr);
        qkv_tensor *k = qkv_rows_unpack(ctx, qkv_nn_linear_forward(ctx, &m->W_k, keys), kr);
        qkv_tensor *v = qkv_rows_unpack(ctx, qkv_nn_linear_forward(ctx, &m->W_v, values), kr);
        out = attend(ctx, q, k, v, H, true, &a);
    }
    out = out ? qkv_rows_pack(ctx, out, qr) : NULL;
    return out ? qkv_nn_linear_forward(ctx, &m->W_o, out) : NULL;
}

qkv_tensor *qkv_nn_d2l_mha_forward(qkv_ctx *ctx, const qkv_nn_d2l_mha *m, qkv_tensor *queries,
                                   qkv_tensor *keys, qkv_tensor *values,
                                   const qkv_attn_opts *opts)
{
    QKV_INPUTS("d2l_mha", queries, keys, values);
    qkv_attn_opts o = opts ? *opts : (qkv_attn_opts){0};
    o.dropout_p = m->dropout;
    int64_t H = m->num_heads;
    if (o.q_rows || o.kv_rows)
        return packed_forward(ctx, m, queries, keys, values, &o);
    if (!check_3d("d2l_mha", queries, keys, values))
        return NULL;
    /* self-attention: one GEMM against W_q, W_k and W_v stacked, one
     * packed attention, when the three weights lie back to back */
    qkv_tensor *w3 = queries == keys && keys == values && !o.weights && !o.unfused
                         ? stacked_qkv(ctx, m)
                         : NULL;
    if (w3) {
        qkv_tensor *out = qkv__attention_packed(ctx, qkv_linear(ctx, queries, w3, NULL), H, &o);
        return out ? qkv_nn_linear_forward(ctx, &m->W_o, out) : NULL;
    }
    qkv_tensor *q = qkv_nn_linear_forward(ctx, &m->W_q, queries);
    qkv_tensor *k = qkv_nn_linear_forward(ctx, &m->W_k, keys);
    qkv_tensor *v = qkv_nn_linear_forward(ctx, &m->W_v, values);
    qkv_tensor *out = attend(ctx, q, k, v, H, true, &o);
    return out ? qkv_nn_linear_forward(ctx, &m->W_o, out) : NULL;
}

/* ---- torch.nn.MultiheadAttention ---- */

qkv_status qkv_nn_mha_init(qkv_nn_mha *m, qkv_params *ps, const char *prefix, int64_t embed_dim,
                           int64_t num_heads, float dropout, int bias, int64_t kdim, int64_t vdim,
                           int batch_first)
{
    char name[512];
    memset(m, 0, sizeof *m);
    int64_t E = embed_dim;
    if (num_heads < 1 || E % num_heads != 0)
        return qkv_set_error(QKV_ERR_ARG, "mha: embed_dim %lld is not a multiple of num_heads "
                             "%lld", (long long)E, (long long)num_heads);
    m->embed_dim = E;
    m->num_heads = num_heads;
    m->kdim = kdim > 0 ? kdim : E;
    m->vdim = vdim > 0 ? vdim : E;
    m->dropout = dropout;
    m->batch_first = batch_first != 0;
    /* PyTorch's registration order: in-projection weight(s), in_proj_bias,
     * then out_proj */
    if (m->kdim == E && m->vdim == E) {
        m->in_proj_weight = qkv_params_add(
            ps, qkv_nn_name(name, sizeof name, prefix, "in_proj_weight"), 2, (int64_t[]){3 * E, E}, 0);
        if (!m->in_proj_weight)
            return qkv_error_status();
    } else {
        m->q_proj_weight = qkv_params_add(
            ps, qkv_nn_name(name, sizeof name, prefix, "q_proj_weight"), 2, (int64_t[]){E, E}, 0);
        m->k_proj_weight = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "k_proj_weight"),
                                          2, (int64_t[]){E, m->kdim}, 0);
        m->v_proj_weight = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "v_proj_weight"),
                                          2, (int64_t[]){E, m->vdim}, 0);
        if (!m->q_proj_weight || !m->k_proj_weight || !m->v_proj_weight)
            return qkv_error_status();
    }
    if (bias) {
        m->in_proj_bias = qkv_params_add(
            ps, qkv_nn_name(name, sizeof name, prefix, "in_proj_bias"), 1, (int64_t[]){3 * E}, 0);
        if (!m->in_proj_bias)
            return qkv_error_status();
    }
    return qkv_nn_linear_init(&m->out_proj, ps, qkv_nn_name(name, sizeof name, prefix, "out_proj"),
                              E, E, bias);
}

void qkv_nn_mha_reset(qkv_nn_mha *m, qkv_rng *r)
{
    /* out_proj is a Linear (its constructor draws weight and bias), then
     * _reset_parameters: xavier_uniform on the in-projection, biases 0 */
    qkv_nn_linear_reset(&m->out_proj, r);
    if (m->in_proj_weight) {
        qkv_init_xavier_uniform(r, m->in_proj_weight, 1.0f);
    } else {
        qkv_init_xavier_uniform(r, m->q_proj_weight, 1.0f);
        qkv_init_xavier_uniform(r, m->k_proj_weight, 1.0f);
        qkv_init_xavier_uniform(r, m->v_proj_weight, 1.0f);
    }
    if (m->in_proj_bias) {
        qkv_init_constant(m->in_proj_bias, 0.0f);
        qkv_init_constant(m->out_proj.bias, 0.0f);
    }
}

/* projection `which` (0 q, 1 k, 2 v) of x: rows of the packed weight and
 * bias are views, so gradients land in the packed parameters */
static qkv_tensor *in_project(qkv_ctx *ctx, const qkv_nn_mha *m, qkv_tensor *x, int which)
{
    int64_t E = m->embed_dim;
    qkv_tensor *w = m->in_proj_weight
                        ? qkv_slice(ctx, m->in_proj_weight, 0, which * E, (which + 1) * E, 1)
                        : which == 0 ? m->q_proj_weight
                        : which == 1 ? m->k_proj_weight
                                     : m->v_proj_weight;
    qkv_tensor *b = m->in_proj_bias
                        ? qkv_slice(ctx, m->in_proj_bias, 0, which * E, (which + 1) * E, 1)
                        : NULL;
    return qkv_linear(ctx, x, w, b);
}

qkv_tensor *qkv_nn_mha_forward(qkv_ctx *ctx, const qkv_nn_mha *m, qkv_tensor *query,
                               qkv_tensor *key, qkv_tensor *value, const qkv_attn_opts *opts)
{
    QKV_INPUTS("mha", query, key, value);
    if (opts && (opts->q_rows || opts->kv_rows)) {
        qkv_set_error(QKV_ERR_ARG, "mha: packed rows are for the d2l module only");
        return NULL;
    }
    if (!check_3d("mha", query, key, value))
        return NULL;
    bool bf = m->batch_first;
    int64_t H = m->num_heads, B = query->shape[bf ? 0 : 1];
    int64_t N = query->shape[bf ? 1 : 0], M = key->shape[bf ? 1 : 0];
    qkv_attn_opts o = opts ? *opts : (qkv_attn_opts){0};
    o.dropout_p = m->dropout;
    /* PyTorch's 3-D mask (B*H, N, M) is (B, H, N, M) flattened */
    if (o.attn_mask && o.attn_mask->ndim == 3 && o.attn_mask->shape[0] == B * H) {
        o.attn_mask = qkv_reshape(ctx, o.attn_mask, 4, (int64_t[]){B, H, N, M});
        if (!o.attn_mask)
            return NULL;
    }
    qkv_tensor *weights = NULL;
    o.weights = opts && opts->weights ? &weights : NULL;
    qkv_tensor *q = in_project(ctx, m, query, 0);
    qkv_tensor *k = in_project(ctx, m, key, 1);
    qkv_tensor *v = in_project(ctx, m, value, 2);
    qkv_tensor *out = attend(ctx, q, k, v, H, bf, &o);
    if (!out)
        return NULL;
    if (opts && opts->weights)
        *opts->weights = opts->average_attn_weights ? qkv_mean(ctx, weights, 1, 0) : weights;
    return qkv_nn_linear_forward(ctx, &m->out_proj, out);
}
