/* transformer.c - the Transformer's encoder and decoder (Vaswani et al.;
 * d2l's "transformer" chapter; torch.nn.Transformer): layer norm and
 * AddNorm, the multi-head attention sublayer, encoder and decoder blocks,
 * post-norm or pre-norm, their stacks, and incremental decoding with cached
 * keys and values. One code path serves both parameter layouts; they differ
 * only in names, in the attention projections (d2l: four Linear without
 * bias; PyTorch: packed in_proj with bias) and in PyTorch's final norms.
 * Shapes are batch first: (B, S, E) sources, (B, T, E) targets. */
#include "../qkv_internal.h"

#include <math.h>
#include <stdio.h>

/* ---- layer norm and AddNorm ---- */

qkv_status qkv_nn_layer_norm_init(qkv_nn_layer_norm *m, qkv_params *ps, const char *prefix,
                                  int64_t c, float eps)
{
    char name[512];
    m->eps = eps > 0.0f ? eps : 1e-5f;
    m->weight = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "weight"), 1,
                               (int64_t[]){c}, 0);
    m->bias = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "bias"), 1,
                             (int64_t[]){c}, 0);
    return m->weight && m->bias ? QKV_OK : qkv_error_status();
}

void qkv_nn_layer_norm_reset(qkv_nn_layer_norm *m)
{
    qkv_init_constant(m->weight, 1.0f);
    qkv_init_constant(m->bias, 0.0f);
}

qkv_tensor *qkv_nn_layer_norm_forward(qkv_ctx *ctx, const qkv_nn_layer_norm *m, qkv_tensor *x)
{
    return qkv_layer_norm(ctx, x, m->weight, m->bias, m->eps);
}

/* x, y (..., C) -> LayerNorm(dropout(y) + x) */
qkv_tensor *qkv_nn_addnorm_forward(qkv_ctx *ctx, const qkv_nn_layer_norm *ln, qkv_tensor *x,
                                   qkv_tensor *y, float dropout)
{
    return qkv_nn_layer_norm_forward(ctx, ln, qkv_add(ctx, qkv_dropout(ctx, y, dropout), x));
}

/* ---- the attention sublayer ---- */

static qkv_status attn_init(qkv_tf_attn *a, qkv_params *ps, const char *prefix,
                            const qkv_tf_config *cfg)
{
    memset(a, 0, sizeof *a);
    int64_t e = cfg->d_model, h = cfg->n_heads;
    a->torch_layout = cfg->layout == QKV_TF_TORCH;
    if (a->torch_layout)
        return qkv_nn_mha_init(&a->torch, ps, prefix, e, h, cfg->dropout, 1, 0, 0, 1);
    return qkv_nn_d2l_mha_init(&a->d2l, ps, prefix, e, e, e, e, h, cfg->dropout, 0);
}

static void attn_reset(qkv_tf_attn *a, qkv_rng *r)
{
    if (a->torch_layout) {
        /* nn.Transformer redraws every matrix, out_proj's too, with xavier */
        qkv_nn_mha_reset(&a->torch, r);
        qkv_init_xavier_uniform(r, a->torch.out_proj.weight, 1.0f);
        return;
    }
    qkv_nn_d2l_mha_reset(&a->d2l, r);
    const qkv_nn_linear *l[4] = {&a->d2l.W_q, &a->d2l.W_k, &a->d2l.W_v, &a->d2l.W_o};
    for (int i = 0; i < 4; i++)
        qkv_init_xavier_uniform(r, l[i]->weight, 1.0f);
}

static int64_t attn_heads(const qkv_tf_attn *a)
{
    return a->torch_layout ? a->torch.num_heads : a->d2l.num_heads;
}

/* The incremental decoder projects by itself, to keep keys and values.
 * x (B, N, E) -> q, k or v (B, N, E) (which 0, 1, 2) */
static qkv_tensor *attn_project(qkv_ctx *ctx, const qkv_tf_attn *a, qkv_tensor *x, int which)
{
    if (a->torch_layout) {
        int64_t e = a->torch.embed_dim;
        qkv_tensor *w = qkv_slice(ctx, a->torch.in_proj_weight, 0, which * e, (which + 1) * e, 1);
        qkv_tensor *b = qkv_slice(ctx, a->torch.in_proj_bias, 0, which * e, (which + 1) * e, 1);
        return qkv_linear(ctx, x, w, b);
    }
    const qkv_nn_linear *l = which == 0 ? &a->d2l.W_q : which == 1 ? &a->d2l.W_k : &a->d2l.W_v;
    return qkv_nn_linear_forward(ctx, l, x);
}

static qkv_tensor *attn_out(qkv_ctx *ctx, const qkv_tf_attn *a, qkv_tensor *x)
{
    return qkv_nn_linear_forward(ctx, a->torch_layout ? &a->torch.out_proj : &a->d2l.W_o, x);
}

static float attn_dropout(const qkv_tf_attn *a)
{
    return a->torch_layout ? a->torch.dropout : a->d2l.dropout;
}

/* x (B, N, E) -> (B, H, N, D), a view */
static qkv_tensor *split_heads(qkv_ctx *ctx, qkv_tensor *x, int64_t h)
{
    if (!x)
        return NULL;
    int64_t b = x->shape[0], n = x->shape[1], e = x->shape[2];
    x = qkv_reshape(ctx, x, 4, (int64_t[]){b, n, h, e / h});
    return qkv_permute(ctx, x, (int[]){0, 2, 1, 3});
}

/* o (B, H, N, D) -> (B, N, H D) */
static qkv_tensor *merge_heads(qkv_ctx *ctx, qkv_tensor *o)
{
    if (!o)
        return NULL;
    int64_t b = o->shape[0], h = o->shape[1], n = o->shape[2], d = o->shape[3];
    o = qkv_contiguous(ctx, qkv_permute(ctx, o, (int[]){0, 2, 1, 3}));
    return qkv_reshape(ctx, o, 3, (int64_t[]){b, n, h * d});
}

/* xq (B, N, E), xkv (B, M, E) -> (B, N, E); o holds the masks. */
static qkv_tensor *attn_forward(qkv_ctx *ctx, const qkv_tf_attn *a, qkv_tensor *xq,
                                qkv_tensor *xkv, qkv_attn_opts *o)
{
    if (a->torch_layout)
        return qkv_nn_mha_forward(ctx, &a->torch, xq, xkv, xkv, o);
    /* d2l's module has no PyTorch 3-D masks: (B*H, N, M) becomes (B, H, N, M) */
    if (o->attn_mask && o->attn_mask->ndim == 3 && xq)
        o->attn_mask = qkv_reshape(ctx, o->attn_mask, 4,
                                   (int64_t[]){xq->shape[0], a->d2l.num_heads,
                                               o->attn_mask->shape[1], o->attn_mask->shape[2]});
    return qkv_nn_d2l_mha_forward(ctx, &a->d2l, xq, xkv, xkv, o);
}

/* ---- blocks ---- */

static qkv_status check_config(const qkv_tf_config *c)
{
    if (c->d_model <= 0 || c->n_heads <= 0 || c->d_model % c->n_heads || c->d_ffn <= 0 ||
        c->n_enc < 0 || c->n_enc > QKV_TF_MAX_LAYERS || c->n_dec < 0 ||
        c->n_dec > QKV_TF_MAX_LAYERS || c->dropout < 0.0f || c->dropout >= 1.0f)
        return qkv_set_error(QKV_ERR_ARG,
                             "transformer: bad config: d_model %lld, heads %lld (must divide "
                             "it), ffn %lld, blocks %lld + %lld (at most %d), dropout %g",
                             (long long)c->d_model, (long long)c->n_heads, (long long)c->d_ffn,
                             (long long)c->n_enc, (long long)c->n_dec, QKV_TF_MAX_LAYERS,
                             (double)c->dropout);
    return QKV_OK;
}

/* name = prefix + stack + ".{blks.block|layers.}i." + leaf */
static const char *block_name(char *buf, size_t n, const char *prefix, const qkv_tf_config *c,
                              const char *stack, int64_t i, const char *leaf)
{
    snprintf(buf, n, "%s%s%s.%s%lld.%s", prefix, *prefix ? "." : "", stack,
             c->layout == QKV_TF_TORCH ? "layers." : "blks.block", (long long)i, leaf);
    return buf;
}

static qkv_status enc_layer_init(qkv_tf_enc_layer *l, qkv_params *ps, const char *prefix,
                                 const qkv_tf_config *c, int64_t i)
{
    char a[512], b[512];
    int torch = c->layout == QKV_TF_TORCH;
    float eps = c->ln_eps;
    qkv_status s = attn_init(&l->self_attn, ps,
                             block_name(a, sizeof a, prefix, c, "encoder", i,
                                        torch ? "self_attn" : "attention"),
                             c);
    if (s == QKV_OK)
        s = qkv_nn_ffn_init(&l->ffn, ps,
                            block_name(a, sizeof a, prefix, c, "encoder", i,
                                       torch ? "linear1" : "ffn.dense1"),
                            block_name(b, sizeof b, prefix, c, "encoder", i,
                                       torch ? "linear2" : "ffn.dense2"),
                            c->d_model, c->d_ffn, c->activation, torch ? c->dropout : 0.0f);
    if (s == QKV_OK)
        s = qkv_nn_layer_norm_init(&l->norm1, ps,
                                   block_name(a, sizeof a, prefix, c, "encoder", i,
                                              torch ? "norm1" : "addnorm1.ln"),
                                   c->d_model, eps);
    if (s == QKV_OK)
        s = qkv_nn_layer_norm_init(&l->norm2, ps,
                                   block_name(a, sizeof a, prefix, c, "encoder", i,
                                              torch ? "norm2" : "addnorm2.ln"),
                                   c->d_model, eps);
    return s;
}

static qkv_status dec_layer_init(qkv_tf_dec_layer *l, qkv_params *ps, const char *prefix,
                                 const qkv_tf_config *c, int64_t i)
{
    char a[512], b[512];
    int torch = c->layout == QKV_TF_TORCH;
    static const char *const norms[2][3] = {{"addnorm1.ln", "addnorm2.ln", "addnorm3.ln"},
                                            {"norm1", "norm2", "norm3"}};
    qkv_nn_layer_norm *ln[3] = {&l->norm1, &l->norm2, &l->norm3};
    qkv_status s = attn_init(&l->self_attn, ps,
                             block_name(a, sizeof a, prefix, c, "decoder", i,
                                        torch ? "self_attn" : "attention1"),
                             c);
    if (s == QKV_OK)
        s = attn_init(&l->cross_attn, ps,
                      block_name(a, sizeof a, prefix, c, "decoder", i,
                                 torch ? "multihead_attn" : "attention2"),
                      c);
    if (s == QKV_OK)
        s = qkv_nn_ffn_init(&l->ffn, ps,
                            block_name(a, sizeof a, prefix, c, "decoder", i,
                                       torch ? "linear1" : "ffn.dense1"),
                            block_name(b, sizeof b, prefix, c, "decoder", i,
                                       torch ? "linear2" : "ffn.dense2"),
                            c->d_model, c->d_ffn, c->activation, torch ? c->dropout : 0.0f);
    for (int k = 0; k < 3 && s == QKV_OK; k++)
        s = qkv_nn_layer_norm_init(ln[k], ps,
                                   block_name(a, sizeof a, prefix, c, "decoder", i,
                                              norms[torch][k]),
                                   c->d_model, c->ln_eps);
    return s;
}

qkv_status qkv_transformer_init(qkv_transformer *m, qkv_params *ps, const char *prefix,
                                const qkv_tf_config *cfg)
{
    memset(m, 0, sizeof *m);
    if (!cfg || check_config(cfg) != QKV_OK)
        return cfg ? qkv_error_status()
                   : qkv_set_error(QKV_ERR_ARG, "qkv_transformer_init: no config");
    m->cfg = *cfg;
    prefix = prefix ? prefix : "";
    qkv_status s = QKV_OK;
    for (int64_t i = 0; i < cfg->n_enc && s == QKV_OK; i++)
        s = enc_layer_init(&m->enc[i], ps, prefix, cfg, i);
    for (int64_t i = 0; i < cfg->n_dec && s == QKV_OK; i++)
        s = dec_layer_init(&m->dec[i], ps, prefix, cfg, i);
    if (s == QKV_OK && cfg->layout == QKV_TF_TORCH) {
        char name[512];
        snprintf(name, sizeof name, "%s%sencoder.norm", prefix, *prefix ? "." : "");
        s = qkv_nn_layer_norm_init(&m->enc_norm, ps, name, cfg->d_model, cfg->ln_eps);
        snprintf(name, sizeof name, "%s%sdecoder.norm", prefix, *prefix ? "." : "");
        if (s == QKV_OK)
            s = qkv_nn_layer_norm_init(&m->dec_norm, ps, name, cfg->d_model, cfg->ln_eps);
    }
    return s;
}

/* d2l's xavier_init_weights touches Linear weights only; nn.Transformer's
 * _reset_parameters every matrix, after each module's own default. */
static void ffn_reset(qkv_nn_ffn *f, qkv_rng *r)
{
    qkv_nn_ffn_reset(f, r);
    qkv_init_xavier_uniform(r, f->dense1.weight, 1.0f);
    qkv_init_xavier_uniform(r, f->dense2.weight, 1.0f);
}

void qkv_transformer_reset(qkv_transformer *m, qkv_rng *r)
{
    for (int64_t i = 0; i < m->cfg.n_enc; i++) {
        attn_reset(&m->enc[i].self_attn, r);
        ffn_reset(&m->enc[i].ffn, r);
        qkv_nn_layer_norm_reset(&m->enc[i].norm1);
        qkv_nn_layer_norm_reset(&m->enc[i].norm2);
    }
    for (int64_t i = 0; i < m->cfg.n_dec; i++) {
        attn_reset(&m->dec[i].self_attn, r);
        attn_reset(&m->dec[i].cross_attn, r);
        ffn_reset(&m->dec[i].ffn, r);
        qkv_nn_layer_norm_reset(&m->dec[i].norm1);
        qkv_nn_layer_norm_reset(&m->dec[i].norm2);
        qkv_nn_layer_norm_reset(&m->dec[i].norm3);
    }
    if (m->cfg.layout == QKV_TF_TORCH) {
        qkv_nn_layer_norm_reset(&m->enc_norm);
        qkv_nn_layer_norm_reset(&m->dec_norm);
    }
}

/* One residual sublayer f: post-norm LN(x + dropout(f(x))), pre-norm
 * x + dropout(f(LN(x))) (PyTorch's norm_first). */
typedef qkv_tensor *(*sublayer_fn)(qkv_ctx *ctx, const void *self, qkv_tensor *x, void *arg);

static qkv_tensor *residual(qkv_ctx *ctx, const qkv_tf_config *c, const qkv_nn_layer_norm *ln,
                            qkv_tensor *x, sublayer_fn f, const void *self, void *arg)
{
    if (c->norm_first)
        return qkv_add(ctx, x,
                       qkv_dropout(ctx, f(ctx, self, qkv_nn_layer_norm_forward(ctx, ln, x), arg),
                                   c->dropout));
    return qkv_nn_addnorm_forward(ctx, ln, x, f(ctx, self, x, arg), c->dropout);
}

typedef struct {
    qkv_tensor *kv;     /* keys and values' input, NULL: self-attention */
    qkv_attn_opts opts;
} attn_arg;

static qkv_tensor *attn_sub(qkv_ctx *ctx, const void *self, qkv_tensor *x, void *arg)
{
    attn_arg *a = arg;
    return attn_forward(ctx, self, x, a->kv ? a->kv : x, &a->opts);
}

static qkv_tensor *ffn_sub(qkv_ctx *ctx, const void *self, qkv_tensor *x, void *arg)
{
    (void)arg;
    return qkv_nn_ffn_forward(ctx, self, x);
}

static const qkv_tf_masks no_masks;

/* src (B, S, E) -> memory (B, S, E) */
qkv_tensor *qkv_transformer_encode(qkv_ctx *ctx, const qkv_transformer *m, qkv_tensor *src,
                                   const qkv_tf_masks *masks)
{
    QKV_INPUTS("transformer encode", src);
    const qkv_tf_masks *mk = masks ? masks : &no_masks;
    const qkv_tf_config *c = &m->cfg;
    qkv_tensor *x = src;
    for (int64_t i = 0; i < c->n_enc && x; i++) {
        const qkv_tf_enc_layer *l = &m->enc[i];
        attn_arg sa = {.opts = {.attn_mask = mk->src_mask,
                                .attn_mask_bool = mk->bool_masks,
                                .key_padding_mask = mk->src_key_padding_mask,
                                .key_padding_bool = mk->bool_masks,
                                .valid_lens = mk->src_valid_lens,
                                .valid_lens_ndim = mk->src_valid_lens ? 1 : 0,
                                .weights = mk->enc_weights ? &mk->enc_weights[i] : NULL,
                                .q_rows = mk->src_rows,
                                .kv_rows = mk->src_rows}};
        x = residual(ctx, c, &l->norm1, x, attn_sub, &l->self_attn, &sa);
        x = residual(ctx, c, &l->norm2, x, ffn_sub, &l->ffn, NULL);
    }
    if (c->layout == QKV_TF_TORCH)
        x = qkv_nn_layer_norm_forward(ctx, &m->enc_norm, x);
    return x;
}

/* tgt (B, T, E), memory (B, S, E) -> (B, T, E) */
qkv_tensor *qkv_transformer_decode(qkv_ctx *ctx, const qkv_transformer *m, qkv_tensor *tgt,
                                   qkv_tensor *memory, const qkv_tf_masks *masks)
{
    QKV_INPUTS("transformer decode", tgt, memory);
    const qkv_tf_masks *mk = masks ? masks : &no_masks;
    const qkv_tf_config *c = &m->cfg;
    qkv_tensor *x = tgt;
    for (int64_t i = 0; i < c->n_dec && x; i++) {
        const qkv_tf_dec_layer *l = &m->dec[i];
        attn_arg sa = {.opts = {.attn_mask = mk->tgt_mask,
                                .attn_mask_bool = mk->bool_masks,
                                .key_padding_mask = mk->tgt_key_padding_mask,
                                .key_padding_bool = mk->bool_masks,
                                .causal = mk->tgt_causal,
                                .weights = mk->dec_self_weights ? &mk->dec_self_weights[i] : NULL,
                                .q_rows = mk->tgt_rows,
                                .kv_rows = mk->tgt_rows}};
        attn_arg ca = {.kv = memory,
                       .opts = {.attn_mask = mk->memory_mask,
                                .attn_mask_bool = mk->bool_masks,
                                .key_padding_mask = mk->memory_key_padding_mask,
                                .key_padding_bool = mk->bool_masks,
                                .valid_lens = mk->src_valid_lens,
                                .valid_lens_ndim = mk->src_valid_lens ? 1 : 0,
                                .weights = mk->dec_cross_weights ? &mk->dec_cross_weights[i]
                                                                 : NULL,
                                .q_rows = mk->tgt_rows,
                                .kv_rows = mk->src_rows}};
        x = residual(ctx, c, &l->norm1, x, attn_sub, &l->self_attn, &sa);
        x = residual(ctx, c, &l->norm2, x, attn_sub, &l->cross_attn, &ca);
        x = residual(ctx, c, &l->norm3, x, ffn_sub, &l->ffn, NULL);
    }
    if (c->layout == QKV_TF_TORCH)
        x = qkv_nn_layer_norm_forward(ctx, &m->dec_norm, x);
    return x;
}

qkv_tensor *qkv_transformer_forward(qkv_ctx *ctx, const qkv_transformer *m, qkv_tensor *src,
                                    qkv_tensor *tgt, const qkv_tf_masks *masks)
{
    return qkv_transformer_decode(ctx, m, tgt, qkv_transformer_encode(ctx, m, src, masks), masks);
}

/* ---- incremental decoding ---- */

qkv_status qkv_tf_cache_init(qkv_ctx *ctx, const qkv_transformer *m, qkv_tf_cache *c,
                             qkv_tensor *memory, int64_t max_len, const qkv_tf_masks *masks)
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
    int64_t b = memory->shape[0], h = cfg->n_heads, d = cfg->d_model / cfg->n_heads;
    c->batch = b;
    c->src_len = memory->shape[1];
    c->max_len = max_len;
    if (masks && masks->src_valid_lens) {
        c->src_valid_lens = qkv__alloc(ctx, (size_t)b * sizeof(int64_t));
        if (!c->src_valid_lens)
            return qkv_error_status();
        memcpy(c->src_valid_lens, masks->src_valid_lens, (size_t)b * sizeof(int64_t));
    }
    if (masks) {
        c->memory_key_padding_mask = masks->memory_key_padding_mask;
        c->bool_masks = masks->bool_masks;
    }
    int was = qkv_set_grad_enabled(ctx, 0);
    for (int64_t i = 0; i < cfg->n_dec; i++) {
        const qkv_tf_attn *a = &m->dec[i].cross_attn;
        c->k[i] = qkv_zeros(ctx, 4, (int64_t[]){b, h, max_len, d});
        c->v[i] = qkv_zeros(ctx, 4, (int64_t[]){b, h, max_len, d});
        c->mk[i] = qkv_contiguous(ctx, split_heads(ctx, attn_project(ctx, a, memory, 1), h));
        c->mv[i] = qkv_contiguous(ctx, split_heads(ctx, attn_project(ctx, a, memory, 2), h));
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
    int64_t b = cache->shape[0], h = cache->shape[1], tmax = cache->shape[2], d = cache->shape[3];
    for (int64_t i = 0; i < b; i++)
        for (int64_t j = 0; j < h; j++)
            memcpy(cache->data + ((i * h + j) * tmax + t) * d,
                   x->data + i * x->stride[0] + j * x->stride[1], (size_t)d * sizeof(float));
}

/* Copies weights w (B, H, 1, M) of batch row 0 into row t of dst (H, T, M). */
static void weights_put(float *dst, const qkv_tensor *w, int64_t t, int64_t tmax, int64_t mmax)
{
    if (!dst || !w)
        return;
    for (int64_t j = 0; j < w->shape[1]; j++)
        for (int64_t k = 0; k < w->shape[3]; k++)
            dst[(j * tmax + t) * mmax + k] = w->data[j * w->stride[1] + k * w->stride[3]];
}

/* Self-attention of one new position against the cached ones. */
static qkv_tensor *self_attn_step(qkv_ctx *ctx, const qkv_tf_attn *a, qkv_tf_cache *c, int64_t i,
                                  qkv_tensor *x)
{
    int64_t h = attn_heads(a), t = c->len;
    qkv_tensor *q = split_heads(ctx, attn_project(ctx, a, x, 0), h);
    qkv_tensor *k = split_heads(ctx, attn_project(ctx, a, x, 1), h);
    qkv_tensor *v = split_heads(ctx, attn_project(ctx, a, x, 2), h);
    if (!q || !k || !v)
        return NULL;
    cache_put(c->k[i], k, t);
    cache_put(c->v[i], v, t);
    qkv_tensor *w = NULL;
    qkv_attn_opts o = {.dropout_p = attn_dropout(a), .weights = c->self_weights ? &w : NULL};
    qkv_tensor *out = qkv_attention(ctx, q, qkv_slice(ctx, c->k[i], 2, 0, t + 1, 1),
                                    qkv_slice(ctx, c->v[i], 2, 0, t + 1, 1), &o);
    weights_put(c->self_weights ? c->self_weights + i * h * c->max_len * c->max_len : NULL, w, t,
                c->max_len, c->max_len);
    return attn_out(ctx, a, merge_heads(ctx, out));
}

static qkv_tensor *cross_attn_step(qkv_ctx *ctx, const qkv_tf_attn *a, qkv_tf_cache *c,
                                   int64_t i, qkv_tensor *x)
{
    int64_t h = attn_heads(a);
    qkv_tensor *w = NULL;
    qkv_attn_opts o = {.dropout_p = attn_dropout(a),
                       .key_padding_mask = c->memory_key_padding_mask,
                       .key_padding_bool = c->bool_masks,
                       .valid_lens = c->src_valid_lens,
                       .valid_lens_ndim = c->src_valid_lens ? 1 : 0,
                       .weights = c->cross_weights ? &w : NULL};
    qkv_tensor *q = split_heads(ctx, attn_project(ctx, a, x, 0), h);
    qkv_tensor *out = qkv_attention(ctx, q, c->mk[i], c->mv[i], &o);
    weights_put(c->cross_weights ? c->cross_weights + i * h * c->max_len * c->src_len : NULL, w,
                c->len, c->max_len, c->src_len);
    return attn_out(ctx, a, merge_heads(ctx, out));
}

static qkv_tensor *post_or_pre(qkv_ctx *ctx, const qkv_tf_config *cfg, const qkv_nn_layer_norm *ln,
                               qkv_tensor *x, qkv_tensor *y)
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
    if (x && cfg->layout == QKV_TF_TORCH)
        x = qkv_nn_layer_norm_forward(ctx, &m->dec_norm, x);
    qkv_set_grad_enabled(ctx, was);
    if (x)
        c->len++;
    return x;
}

/* Gathers batch rows of t (B, ...) in place: row i <- old row from[i]. */
static qkv_status gather_rows(qkv_ctx *ctx, qkv_tensor *t, const int64_t *from)
{
    int64_t b = t->shape[0], row = qkv_numel(t) / b;
    float *tmp = qkv__floats(ctx, b * row);
    if (!tmp)
        return qkv_error_status();
    for (int64_t i = 0; i < b; i++)
        memcpy(tmp + i * row, t->data + from[i] * row, (size_t)row * sizeof(float));
    memcpy(t->data, tmp, (size_t)(b * row) * sizeof(float));
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
