/* transformer.c - the Transformer's encoder and decoder blocks and their
 * stacks (Vaswani et al.; d2l's "transformer" chapter; torch.nn.Transformer;
 * DETR's transformer), post-norm or pre-norm.
 *
 * One implementation serves the three state_dict layouts. A layout is a row
 * of the table below: the names of the parameters and which of them exist
 * (d2l's attention has no biases and its FFN no dropout; PyTorch's stacks
 * end in a norm, DETR's encoder only in pre-norm). The attention sublayers
 * are qkv_nn_mha (mha.c) in every layout, so the code below never asks
 * which layout it runs. Positional terms (DETR) are added to queries and
 * keys, not values. Incremental decoding is tf_cache.c; DETR's composition
 * of the stacks is detr_transformer.c.
 *
 * Legend: B batch, S source length, T target length, E model width, L
 * decoder layers; n the kept rows of a packed batch (qkv_rows). Shapes are
 * batch first. */
#include "nn_internal.h"

#include <math.h>
#include <stdio.h>

/* ---- layouts: names, and which parameters exist ---- */

enum { FINAL_NONE, FINAL_ALWAYS, FINAL_PRE_NORM_ONLY };

typedef struct {
    const char *layer;       /* the block index follows: "layers." 0, "blks.block" 0 */
    const char *enc_attn, *dec_self_attn, *dec_cross_attn;
    const char *linear1, *linear2;
    const char *norm[3];     /* norm1, norm2 (encoder); norm1, norm2, norm3 (decoder) */
    bool packed_attn;        /* in_proj and out_proj with biases; else W_q, W_k, W_v, W_o */
    bool ffn_dropout;        /* dropout between the FFN's two linears */
    int enc_norm, dec_norm;  /* the stacks' final norms, FINAL_* */
} tf_layout;

/* the names and habits of PyTorch's nn.Transformer layers (and DETR's) */
#define TORCH_NAMES                                                                    \
    .layer = "layers.", .enc_attn = "self_attn", .dec_self_attn = "self_attn",         \
    .dec_cross_attn = "multihead_attn", .linear1 = "linear1", .linear2 = "linear2",    \
    .norm = {"norm1", "norm2", "norm3"}, .packed_attn = true, .ffn_dropout = true,     \
    .dec_norm = FINAL_ALWAYS

static const tf_layout layouts[] = {
    [QKV_TF_D2L] = {.layer = "blks.block",
                    .enc_attn = "attention",
                    .dec_self_attn = "attention1",
                    .dec_cross_attn = "attention2",
                    .linear1 = "ffn.dense1",
                    .linear2 = "ffn.dense2",
                    .norm = {"addnorm1.ln", "addnorm2.ln", "addnorm3.ln"},
                    .enc_norm = FINAL_NONE,
                    .dec_norm = FINAL_NONE},
    /* nn.Transformer's names; DETR's transformer has the same, but its
     * encoder ends in a norm only when the layers are pre-norm */
    [QKV_TF_TORCH] = {TORCH_NAMES, .enc_norm = FINAL_ALWAYS},
    [QKV_TF_DETR] = {TORCH_NAMES, .enc_norm = FINAL_PRE_NORM_ONLY},
};

static qkv_status check_config(const qkv_tf_config *c)
{
    if ((unsigned)c->layout >= sizeof layouts / sizeof layouts[0])
        return qkv_set_error(QKV_ERR_ARG, "transformer: unknown layout %d", (int)c->layout);
    if (c->d_model <= 0 || c->n_heads <= 0 || c->d_model % c->n_heads || c->d_ffn <= 0 ||
        c->n_enc < 0 || c->n_enc > QKV_TF_MAX_LAYERS || c->n_dec < 0 ||
        c->n_dec > QKV_TF_MAX_LAYERS || !(c->dropout >= 0.0f && c->dropout < 1.0f))
        return qkv_set_error(QKV_ERR_ARG,
                             "transformer: bad config: d_model %lld, heads %lld (must divide "
                             "it), ffn %lld, blocks %lld + %lld (at most %d), dropout %g",
                             (long long)c->d_model, (long long)c->n_heads, (long long)c->d_ffn,
                             (long long)c->n_enc, (long long)c->n_dec, QKV_TF_MAX_LAYERS,
                             (double)c->dropout);
    return QKV_OK;
}

static bool has_final_norm(int rule, const qkv_tf_config *c)
{
    return rule == FINAL_ALWAYS || (rule == FINAL_PRE_NORM_ONLY && c->norm_first);
}

/* name = prefix + stack + "." + layer + i + "." + leaf */
static const char *block_name(char *buf, size_t n, const char *prefix, const tf_layout *L,
                              const char *stack, int64_t i, const char *leaf)
{
    snprintf(buf, n, "%s%s%s.%s%lld.%s", prefix, *prefix ? "." : "", stack, L->layer,
             (long long)i, leaf);
    return buf;
}

/* ---- init and reset ---- */

static qkv_status attn_init(qkv_nn_mha *a, qkv_params *ps, const char *name, const tf_layout *L,
                            const qkv_tf_config *c)
{
    if (L->packed_attn)
        return qkv_nn_mha_init(a, ps, name, c->d_model, c->n_heads, c->dropout, 1, 0, 0, 1);
    return qkv__mha_init_d2l(a, ps, name, c->d_model, c->n_heads, c->dropout);
}

static qkv_status enc_layer_init(qkv_tf_enc_layer *l, qkv_params *ps, const char *prefix,
                                 const tf_layout *L, const qkv_tf_config *c, int64_t i)
{
    char a[512], b[512];
    qkv_status s =
        attn_init(&l->self_attn, ps, block_name(a, sizeof a, prefix, L, "encoder", i, L->enc_attn),
                  L, c);
    if (s == QKV_OK)
        s = qkv_nn_ffn_init(&l->ffn, ps, block_name(a, sizeof a, prefix, L, "encoder", i, L->linear1),
                            block_name(b, sizeof b, prefix, L, "encoder", i, L->linear2),
                            c->d_model, c->d_ffn, c->activation, L->ffn_dropout ? c->dropout : 0.0f);
    qkv_nn_layer_norm *ln[2] = {&l->norm1, &l->norm2};
    for (int k = 0; k < 2 && s == QKV_OK; k++)
        s = qkv_nn_layer_norm_init(ln[k], ps,
                                   block_name(a, sizeof a, prefix, L, "encoder", i, L->norm[k]),
                                   c->d_model, c->ln_eps);
    return s;
}

static qkv_status dec_layer_init(qkv_tf_dec_layer *l, qkv_params *ps, const char *prefix,
                                 const tf_layout *L, const qkv_tf_config *c, int64_t i)
{
    char a[512], b[512];
    qkv_status s = attn_init(&l->self_attn, ps,
                             block_name(a, sizeof a, prefix, L, "decoder", i, L->dec_self_attn),
                             L, c);
    if (s == QKV_OK)
        s = attn_init(&l->cross_attn, ps,
                      block_name(a, sizeof a, prefix, L, "decoder", i, L->dec_cross_attn), L, c);
    if (s == QKV_OK)
        s = qkv_nn_ffn_init(&l->ffn, ps, block_name(a, sizeof a, prefix, L, "decoder", i, L->linear1),
                            block_name(b, sizeof b, prefix, L, "decoder", i, L->linear2),
                            c->d_model, c->d_ffn, c->activation, L->ffn_dropout ? c->dropout : 0.0f);
    qkv_nn_layer_norm *ln[3] = {&l->norm1, &l->norm2, &l->norm3};
    for (int k = 0; k < 3 && s == QKV_OK; k++)
        s = qkv_nn_layer_norm_init(ln[k], ps,
                                   block_name(a, sizeof a, prefix, L, "decoder", i, L->norm[k]),
                                   c->d_model, c->ln_eps);
    return s;
}

qkv_status qkv_transformer_init(qkv_transformer *m, qkv_params *ps, const char *prefix,
                                const qkv_tf_config *cfg)
{
    memset(m, 0, sizeof *m);
    if (!cfg)
        return qkv_set_error(QKV_ERR_ARG, "qkv_transformer_init: no config");
    if (check_config(cfg) != QKV_OK)
        return qkv_error_status();
    m->cfg = *cfg;
    prefix = prefix ? prefix : "";
    const tf_layout *L = &layouts[cfg->layout];
    qkv_status s = QKV_OK;
    for (int64_t i = 0; i < cfg->n_enc && s == QKV_OK; i++)
        s = enc_layer_init(&m->enc[i], ps, prefix, L, cfg, i);
    for (int64_t i = 0; i < cfg->n_dec && s == QKV_OK; i++)
        s = dec_layer_init(&m->dec[i], ps, prefix, L, cfg, i);
    m->has_enc_norm = has_final_norm(L->enc_norm, cfg);
    m->has_dec_norm = has_final_norm(L->dec_norm, cfg);
    char name[512];
    if (s == QKV_OK && m->has_enc_norm) {
        snprintf(name, sizeof name, "%s%sencoder.norm", prefix, *prefix ? "." : "");
        s = qkv_nn_layer_norm_init(&m->enc_norm, ps, name, cfg->d_model, cfg->ln_eps);
    }
    if (s == QKV_OK && m->has_dec_norm) {
        snprintf(name, sizeof name, "%s%sdecoder.norm", prefix, *prefix ? "." : "");
        s = qkv_nn_layer_norm_init(&m->dec_norm, ps, name, cfg->d_model, cfg->ln_eps);
    }
    return s;
}

/* nn.Transformer and DETR redraw every matrix with xavier after each
 * module's own default (out_proj's too); d2l's xavier_init_weights touches
 * Linear weights only, after their defaults U(+-1/sqrt(E)). */
static void attn_reset(qkv_nn_mha *a, qkv_rng *r)
{
    if (a->in_proj_weight) {
        qkv_nn_mha_reset(a, r);
        qkv_init_xavier_uniform(r, a->out_proj.weight, 1.0f);
        return;
    }
    qkv_tensor *w[4] = {a->q_proj_weight, a->k_proj_weight, a->v_proj_weight, a->out_proj.weight};
    float bound = 1.0f / sqrtf((float)a->embed_dim);
    for (int i = 0; i < 3; i++)
        qkv_init_uniform(r, w[i], -bound, bound);
    qkv_nn_linear_reset(&a->out_proj, r);
    for (int i = 0; i < 4; i++)
        qkv_init_xavier_uniform(r, w[i], 1.0f);
}

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
    if (m->has_enc_norm)
        qkv_nn_layer_norm_reset(&m->enc_norm);
    if (m->has_dec_norm)
        qkv_nn_layer_norm_reset(&m->dec_norm);
}

/* ---- sublayers ---- */

/* One residual sublayer f: post-norm LN(x + dropout(f(x))), pre-norm
 * x + dropout(f(LN(x))) (PyTorch's norm_first, DETR's normalize_before). */
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
    qkv_tensor *pos;      /* added to the queries; in self-attention to the keys too */
    qkv_tensor *memory;   /* cross-attention: the values; NULL in self-attention */
    qkv_tensor *keys;     /* cross-attention: memory + its positional term */
    qkv_attn_opts opts;
    const qkv_rows *q_rows, *kv_rows;
} attn_arg;

/* x (B, N, E) -> attention of x + pos over itself (values x) or over the
 * memory (keys memory + pos, values memory), (B, N, E) */
static qkv_tensor *attn_sub(qkv_ctx *ctx, const void *self, qkv_tensor *x, void *arg)
{
    const attn_arg *a = arg;
    qkv_tensor *q = a->pos ? qkv_add(ctx, x, a->pos) : x;
    return qkv__mha_forward_rows(ctx, self, q, a->memory ? a->keys : q, a->memory ? a->memory : x,
                                 &a->opts, a->q_rows, a->kv_rows);
}

static qkv_tensor *ffn_sub(qkv_ctx *ctx, const void *self, qkv_tensor *x, void *arg)
{
    (void)arg;
    return qkv_nn_ffn_forward(ctx, self, x);
}

/* ---- the stacks ---- */

static const qkv_tf_opts no_opts;

/* x should be (B, len, E), or (n, E) when packed */
static bool check_seq(const char *op, const char *what, const qkv_tensor *x, int64_t e,
                      const qkv_rows *rows)
{
    int nd = rows ? 2 : 3;
    if (x->ndim == nd && x->shape[nd - 1] == e && (!rows || x->shape[0] == rows->n))
        return true;
    char s[64];
    qkv_set_error(QKV_ERR_SHAPE, "%s: %s %s should be %s, E = %lld", op, what,
                  qkv_shape_str(x, s, sizeof s), rows ? "(kept rows, E)" : "(B, length, E)",
                  (long long)e);
    return false;
}

/* n tensors of one shape -> (n, shape...) */
static qkv_tensor *stack(qkv_ctx *ctx, int64_t n, qkv_tensor **xs)
{
    qkv_tensor *parts[QKV_TF_MAX_LAYERS];
    for (int64_t i = 0; i < n; i++) {
        if (!xs[i])
            return NULL;
        int64_t shape[QKV_MAX_DIMS] = {1};
        memcpy(shape + 1, xs[i]->shape, (size_t)xs[i]->ndim * sizeof(int64_t));
        parts[i] = qkv_reshape(ctx, xs[i], xs[i]->ndim + 1, shape);
    }
    return qkv_concat(ctx, (int)n, parts, 0);
}

qkv_tensor *qkv__transformer_encode_rows(qkv_ctx *ctx, const qkv_transformer *m,
                                         qkv_tensor *src, const qkv_tf_opts *opts,
                                         const qkv_rows *rows)
{
    QKV_INPUTS("transformer encode", src);
    const qkv_tf_opts *o = opts ? opts : &no_opts;
    const qkv_tf_config *c = &m->cfg;
    if (!check_seq("transformer encode", "src", src, c->d_model, rows))
        return NULL;
    qkv_tensor *x = src;
    for (int64_t i = 0; i < c->n_enc && x; i++) {
        const qkv_tf_enc_layer *l = &m->enc[i];
        attn_arg sa = {.pos = o->src_pos,
                       .opts = {.attn_mask = o->src_mask,
                                .attn_mask_bool = o->src_mask_bool,
                                .key_padding_mask = o->src_key_padding_mask,
                                .key_padding_bool = o->src_key_padding_bool,
                                .valid_lens = o->src_valid_lens,
                                .valid_lens_ndim = o->src_valid_lens ? 1 : 0,
                                .weights = o->enc_weights ? &o->enc_weights[i] : NULL},
                       .q_rows = rows,
                       .kv_rows = rows};
        x = residual(ctx, c, &l->norm1, x, attn_sub, &l->self_attn, &sa);
        x = residual(ctx, c, &l->norm2, x, ffn_sub, &l->ffn, NULL);
    }
    return m->has_enc_norm ? qkv_nn_layer_norm_forward(ctx, &m->enc_norm, x) : x;
}

qkv_tensor *qkv__transformer_decode_rows(qkv_ctx *ctx, const qkv_transformer *m,
                                         qkv_tensor *tgt, qkv_tensor *memory,
                                         const qkv_tf_opts *opts, const qkv_rows *tgt_rows,
                                         const qkv_rows *src_rows)
{
    const qkv_tf_opts *o = opts ? opts : &no_opts;
    if (o->dec_intermediate)
        *o->dec_intermediate = NULL;
    QKV_INPUTS("transformer decode", tgt, memory);
    const qkv_tf_config *c = &m->cfg;
    if (!check_seq("transformer decode", "tgt", tgt, c->d_model, tgt_rows) ||
        !check_seq("transformer decode", "memory", memory, c->d_model, src_rows))
        return NULL;
    qkv_tensor *keys = o->src_pos ? qkv_add(ctx, memory, o->src_pos) : memory;
    qkv_tensor *x = tgt, *layer_out[QKV_TF_MAX_LAYERS] = {0};
    for (int64_t i = 0; i < c->n_dec && x; i++) {
        const qkv_tf_dec_layer *l = &m->dec[i];
        attn_arg sa = {.pos = o->tgt_pos,
                       .opts = {.attn_mask = o->tgt_mask,
                                .attn_mask_bool = o->tgt_mask_bool,
                                .key_padding_mask = o->tgt_key_padding_mask,
                                .key_padding_bool = o->tgt_key_padding_bool,
                                .causal = o->tgt_causal,
                                .weights = o->dec_self_weights ? &o->dec_self_weights[i] : NULL},
                       .q_rows = tgt_rows,
                       .kv_rows = tgt_rows};
        attn_arg ca = {.pos = o->tgt_pos,
                       .memory = memory,
                       .keys = keys,
                       .opts = {.attn_mask = o->memory_mask,
                                .attn_mask_bool = o->memory_mask_bool,
                                .key_padding_mask = o->memory_key_padding_mask,
                                .key_padding_bool = o->memory_key_padding_bool,
                                .valid_lens = o->src_valid_lens,
                                .valid_lens_ndim = o->src_valid_lens ? 1 : 0,
                                .weights = o->dec_cross_weights ? &o->dec_cross_weights[i] : NULL},
                       .q_rows = tgt_rows,
                       .kv_rows = src_rows};
        x = residual(ctx, c, &l->norm1, x, attn_sub, &l->self_attn, &sa);
        x = residual(ctx, c, &l->norm2, x, attn_sub, &l->cross_attn, &ca);
        x = residual(ctx, c, &l->norm3, x, ffn_sub, &l->ffn, NULL);
        /* DETR's intermediate outputs go through the final norm; the last
         * one is the output itself, normalised once below */
        if (o->dec_intermediate && i + 1 < c->n_dec)
            layer_out[i] = m->has_dec_norm ? qkv_nn_layer_norm_forward(ctx, &m->dec_norm, x) : x;
    }
    x = m->has_dec_norm ? qkv_nn_layer_norm_forward(ctx, &m->dec_norm, x) : x;
    if (x && o->dec_intermediate && c->n_dec > 0) {
        layer_out[c->n_dec - 1] = x;
        *o->dec_intermediate = stack(ctx, c->n_dec, layer_out);
        if (!*o->dec_intermediate)
            return NULL;
    }
    return x;
}

qkv_tensor *qkv_transformer_encode(qkv_ctx *ctx, const qkv_transformer *m, qkv_tensor *src,
                                   const qkv_tf_opts *opts)
{
    return qkv__transformer_encode_rows(ctx, m, src, opts, NULL);
}

qkv_tensor *qkv_transformer_decode(qkv_ctx *ctx, const qkv_transformer *m, qkv_tensor *tgt,
                                   qkv_tensor *memory, const qkv_tf_opts *opts)
{
    return qkv__transformer_decode_rows(ctx, m, tgt, memory, opts, NULL, NULL);
}

qkv_tensor *qkv_transformer_forward(qkv_ctx *ctx, const qkv_transformer *m, qkv_tensor *src,
                                    qkv_tensor *tgt, const qkv_tf_opts *opts)
{
    return qkv_transformer_decode(ctx, m, tgt, qkv_transformer_encode(ctx, m, src, opts), opts);
}
