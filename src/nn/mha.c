/* mha.c - multi-head attention in two layouts, with one forward: d2l's
 * MultiHeadAttention (W_q, W_k, W_v, W_o, batch first) and
 * torch.nn.MultiheadAttention (packed in_proj_weight, out_proj, sequence
 * first unless batch_first). The Transformer's blocks (transformer.c) run
 * the same forward, over packed rows when qkv_seq2seq_loss skips padding.
 *
 * Legend: B batch, N queries, M keys, E = H D model width, H heads, D head
 * size; n_q, n_k kept rows of a packed batch (qkv_rows).
 *
 * Both layouts project and attend with the heads side by side in the
 * projection's last axis (qkv__attention_heads): the kernel reads and
 * writes each head through strides, so neither a split nor a merge of
 * heads copies. When the attention weights are wanted, heads are split
 * into (B, H, N, D) views and merged after the unfused path. */
#include "nn_internal.h"

#include <math.h>

/* ---- split and merge heads ---- */

qkv_tensor *qkv__split_heads(qkv_ctx *ctx, qkv_tensor *x, int64_t H, bool batch_first)
{
    if (!x)
        return NULL;
    int64_t s0 = x->shape[0], s1 = x->shape[1], E = x->shape[2];
    qkv_tensor *r = qkv_reshape(ctx, x, 4, (int64_t[]){s0, s1, H, E / H});
    return batch_first ? qkv_transpose(ctx, r, 1, 2) : qkv_permute(ctx, r, (int[]){1, 2, 0, 3});
}

qkv_tensor *qkv__merge_heads(qkv_ctx *ctx, qkv_tensor *o, bool batch_first)
{
    if (!o)
        return NULL;
    int64_t B = o->shape[0], H = o->shape[1], N = o->shape[2], D = o->shape[3];
    qkv_tensor *p = batch_first ? qkv_transpose(ctx, o, 1, 2)
                                : qkv_permute(ctx, o, (int[]){2, 0, 1, 3});
    return batch_first ? qkv_reshape(ctx, p, 3, (int64_t[]){B, N, H * D})
                       : qkv_reshape(ctx, p, 3, (int64_t[]){N, B, H * D});
}

/* ---- one forward for both layouts ---- */

/* A module's parameters as the forward sees them. */
typedef struct {
    qkv_tensor *w[3], *b[3]; /* q, k, v weights (E, in) and biases (E), or NULL */
    qkv_tensor *w3, *b3;     /* or packed (PyTorch's in_proj): (3E, E), (3E)   */
    const qkv_nn_linear *out;
    int64_t H;
    float dropout;
    bool batch_first;
} mha_parts;

static mha_parts parts_of_mha(const qkv_nn_mha *m)
{
    return (mha_parts){.w = {m->q_proj_weight, m->k_proj_weight, m->v_proj_weight},
                       .w3 = m->in_proj_weight,
                       .b3 = m->in_proj_bias,
                       .out = &m->out_proj,
                       .H = m->num_heads,
                       .dropout = m->dropout,
                       .batch_first = m->batch_first};
}

static mha_parts parts_of_d2l(const qkv_nn_d2l_mha *m)
{
    return (mha_parts){.w = {m->W_q.weight, m->W_k.weight, m->W_v.weight},
                       .b = {m->W_q.bias, m->W_k.bias, m->W_v.bias},
                       .out = &m->W_o,
                       .H = m->num_heads,
                       .dropout = m->dropout,
                       .batch_first = true};
}

/* x (..., in) -> projection `which` (0 q, 1 k, 2 v) (..., E). Rows of a
 * packed weight and bias are views, so gradients land in the packed
 * parameters. */
static qkv_tensor *project(qkv_ctx *ctx, const mha_parts *p, qkv_tensor *x, int which)
{
    qkv_tensor *w = p->w[which], *b = p->b[which];
    if (p->w3) {
        int64_t E = p->w3->shape[0] / 3;
        w = qkv_slice(ctx, p->w3, 0, which * E, (which + 1) * E, 1);
    }
    if (p->b3) {
        int64_t E = p->b3->shape[0] / 3;
        b = qkv_slice(ctx, p->b3, 0, which * E, (which + 1) * E, 1);
    }
    return qkv_linear(ctx, x, w, b);
}

/* The separate q, k, v weights as one (3 E, in) leaf tensor over their own
 * values and gradients, when they lie back to back in the parameter store
 * (qkv_params allocates in registration order, aligned) and have no
 * biases; else NULL. d2l's layout, whose self-attention then projects with
 * one GEMM. */
static qkv_tensor *stacked_qkv(qkv_ctx *ctx, const mha_parts *p)
{
    const qkv_tensor *wq = p->w[0], *wk = p->w[1], *wv = p->w[2];
    if (p->w3 || p->b3 || p->b[0] || p->b[1] || p->b[2] || !wq || !wk || !wv || !wq->grad ||
        !wk->grad || !wv->grad)
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

/* Attention of projections q (B, N, H D) (batch_first) or (N, B, H D), k,
 * v alike: heads in place by default; split into (B, H, N, D) views,
 * attended and merged when the weights are wanted or the unfused path is
 * forced. */
static qkv_tensor *attend(qkv_ctx *ctx, qkv_tensor *q, qkv_tensor *k, qkv_tensor *v, int64_t H,
                          bool batch_first, const qkv_attn_opts *o)
{
    if (!q || !k || !v)
        return NULL;
    if (!o->weights && !ctx->unfused)
        return qkv__attention_heads(ctx, q, k, v, H, batch_first, o);
    return qkv__merge_heads(ctx,
                            qkv_attention(ctx, qkv__split_heads(ctx, q, H, batch_first),
                                          qkv__split_heads(ctx, k, H, batch_first),
                                          qkv__split_heads(ctx, v, H, batch_first), o),
                            batch_first);
}

/* Queries, keys and values fit: 3-D, or 2-D kept rows of the row maps. */
static bool check_inputs(const char *op, const mha_parts *p, qkv_tensor *q, qkv_tensor *k,
                         qkv_tensor *v, const qkv_attn_opts *o, const qkv_rows *qr,
                         const qkv_rows *kr)
{
    if (!qr && !kr) {
        if (q->ndim == 3 && k->ndim == 3 && v->ndim == 3)
            return true;
        qkv__shape_error(op, q, k, "query, key and value must be 3-D");
        return false;
    }
    if (!qr || !kr || !p->batch_first || (o && o->weights) || q->ndim != 2 || k->ndim != 2 ||
        v->ndim != 2 || q->shape[0] != qr->n || k->shape[0] != kr->n || v->shape[0] != kr->n ||
        qr->B != kr->B) {
        qkv_set_error(QKV_ERR_ARG, "%s: packed rows need both row maps (same batch), batch "
                      "first, 2-D queries, keys and values of their kept rows, and no weights",
                      op);
        return false;
    }
    return true;
}

/* query (B, N, q_in), key (B, M, k_in), value (B, M, v_in), or sequence
 * first, or packed rows (n_q, q_in), (n_k, k_in), (n_k, v_in) ->
 * (B, N, E) in the query's layout. */
static qkv_tensor *mha_forward(qkv_ctx *ctx, const char *op, const mha_parts *p,
                               qkv_tensor *query, qkv_tensor *key, qkv_tensor *value,
                               const qkv_attn_opts *opts, const qkv_rows *qr,
                               const qkv_rows *kr)
{
    QKV_INPUTS(op, query, key, value);
    if (!check_inputs(op, p, query, key, value, opts, qr, kr))
        return NULL;
    bool bf = p->batch_first, packed = qr != NULL;
    int64_t H = p->H;
    int64_t B = packed ? qr->B : query->shape[bf ? 0 : 1];
    int64_t N = packed ? qr->T : query->shape[bf ? 1 : 0];
    int64_t M = packed ? kr->T : key->shape[bf ? 1 : 0];
    qkv_attn_opts o = opts ? *opts : (qkv_attn_opts){0};
    o.dropout_p = p->dropout;
    /* PyTorch's 3-D mask (B*H, N, M) is (B, H, N, M) flattened */
    if (o.attn_mask && o.attn_mask->ndim == 3 && o.attn_mask->shape[0] == B * H) {
        o.attn_mask = qkv_reshape(ctx, o.attn_mask, 4, (int64_t[]){B, H, N, M});
        if (!o.attn_mask)
            return NULL;
    }
    qkv_tensor *weights = NULL;
    o.weights = opts && opts->weights ? &weights : NULL;
    /* self-attention: one GEMM against W_q, W_k and W_v stacked, one
     * packed attention, when the three weights lie back to back */
    bool self = query == key && key == value && qr == kr;
    qkv_tensor *w3 = self && bf && !o.weights && !ctx->unfused ? stacked_qkv(ctx, p) : NULL;
    qkv_tensor *out;
    if (w3) {
        qkv_tensor *x = qkv_linear(ctx, query, w3, NULL);
        x = packed ? qkv_rows_unpack(ctx, x, qr) : x;
        out = x ? qkv__attention_packed(ctx, x, H, &o) : NULL;
    } else {
        qkv_tensor *q = project(ctx, p, query, 0);
        qkv_tensor *k = project(ctx, p, key, 1);
        qkv_tensor *v = project(ctx, p, value, 2);
        if (packed) {
            q = qkv_rows_unpack(ctx, q, qr);
            k = qkv_rows_unpack(ctx, k, kr);
            v = qkv_rows_unpack(ctx, v, kr);
        }
        out = attend(ctx, q, k, v, H, bf, &o);
    }
    out = out && packed ? qkv_rows_pack(ctx, out, qr) : out;
    if (!out)
        return NULL;
    if (opts && opts->weights)
        *opts->weights = opts->average_attn_weights ? qkv_mean(ctx, weights, 1, 0) : weights;
    return qkv_nn_linear_forward(ctx, p->out, out);
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

qkv_tensor *qkv_nn_d2l_mha_forward(qkv_ctx *ctx, const qkv_nn_d2l_mha *m, qkv_tensor *queries,
                                   qkv_tensor *keys, qkv_tensor *values,
                                   const qkv_attn_opts *opts)
{
    mha_parts p = parts_of_d2l(m);
    return mha_forward(ctx, "d2l_mha", &p, queries, keys, values, opts, NULL, NULL);
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

qkv_status qkv__mha_init_d2l(qkv_nn_mha *m, qkv_params *ps, const char *prefix, int64_t E,
                             int64_t H, float dropout)
{
    char name[512];
    memset(m, 0, sizeof *m);
    if (H < 1 || E % H != 0)
        return qkv_set_error(QKV_ERR_ARG, "d2l_mha: num_hiddens %lld is not a multiple of "
                             "num_heads %lld", (long long)E, (long long)H);
    *m = (qkv_nn_mha){.embed_dim = E, .num_heads = H, .kdim = E, .vdim = E, .dropout = dropout,
                      .batch_first = 1};
    qkv_tensor **w[3] = {&m->q_proj_weight, &m->k_proj_weight, &m->v_proj_weight};
    static const char *const names[3] = {"W_q.weight", "W_k.weight", "W_v.weight"};
    for (int i = 0; i < 3; i++) {
        *w[i] = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, names[i]), 2,
                               (int64_t[]){E, E}, 0);
        if (!*w[i])
            return qkv_error_status();
    }
    return qkv_nn_linear_init(&m->out_proj, ps, qkv_nn_name(name, sizeof name, prefix, "W_o"), E,
                              E, 0);
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

qkv_tensor *qkv__mha_project(qkv_ctx *ctx, const qkv_nn_mha *m, qkv_tensor *x, int which)
{
    mha_parts p = parts_of_mha(m);
    return project(ctx, &p, x, which);
}

qkv_tensor *qkv_nn_mha_forward(qkv_ctx *ctx, const qkv_nn_mha *m, qkv_tensor *query,
                               qkv_tensor *key, qkv_tensor *value, const qkv_attn_opts *opts)
{
    mha_parts p = parts_of_mha(m);
    return mha_forward(ctx, "mha", &p, query, key, value, opts, NULL, NULL);
}

qkv_tensor *qkv__mha_forward_rows(qkv_ctx *ctx, const qkv_nn_mha *m, qkv_tensor *query,
                                  qkv_tensor *key, qkv_tensor *value, const qkv_attn_opts *opts,
                                  const qkv_rows *q_rows, const qkv_rows *kv_rows)
{
    mha_parts p = parts_of_mha(m);
    return mha_forward(ctx, "mha", &p, query, key, value, opts, q_rows, kv_rows);
}
