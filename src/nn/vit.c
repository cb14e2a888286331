/* vit.c - the Vision Transformer (d2l v1.0.3 "vision-transformer") with
 * torchvision 0.14's VisionTransformer parameter names, so that its state
 * dicts load here and ours load there.
 *
 * The model: a strided convolution cuts the image into patches, a class
 * token is put in front, learned positions are added, pre-norm encoder
 * blocks (x + attn(ln_1(x)), x + mlp(ln_2(x))) follow, and the head reads
 * the class token after a final norm. */
#include "../qkv_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define VIT_LN_EPS 1e-6f /* torchvision's partial(nn.LayerNorm, eps=1e-6) */

static qkv_tensor *add_param(qkv_params *ps, const char *name, int ndim, const int64_t *shape)
{
    return qkv_params_add(ps, name, ndim, shape, 0);
}

static qkv_status vit_check_config(const qkv_vit_config *c)
{
    if (c->patch_size < 1 || c->image_size < c->patch_size || c->image_size % c->patch_size)
        return qkv_set_error(QKV_ERR_ARG, "vit: image size %lld is not a multiple of patch "
                             "size %lld", (long long)c->image_size, (long long)c->patch_size);
    if (c->num_layers < 1 || c->num_layers > QKV_VIT_MAX_LAYERS)
        return qkv_set_error(QKV_ERR_ARG, "vit: %lld layers (1 to %d supported)",
                             (long long)c->num_layers, QKV_VIT_MAX_LAYERS);
    if (c->in_channels < 1 || c->hidden_dim < 1 || c->mlp_dim < 1 || c->num_classes < 0)
        return qkv_set_error(QKV_ERR_ARG, "vit: channels %lld, width %lld and MLP %lld must be "
                             "positive, classes %lld not negative", (long long)c->in_channels,
                             (long long)c->hidden_dim, (long long)c->mlp_dim,
                             (long long)c->num_classes);
    if (c->num_heads < 1 || c->hidden_dim % c->num_heads)
        return qkv_set_error(QKV_ERR_ARG, "vit: width %lld is not a multiple of %lld heads",
                             (long long)c->hidden_dim, (long long)c->num_heads);
    return QKV_OK;
}

qkv_status qkv_vit_init(qkv_vit *m, qkv_params *ps, const qkv_vit_config *cfg)
{
    memset(m, 0, sizeof *m);
    qkv_status s = vit_check_config(cfg);
    if (s != QKV_OK)
        return s;
    m->cfg = *cfg;
    if (m->cfg.ln_eps <= 0.0f)
        m->cfg.ln_eps = VIT_LN_EPS;
    int64_t C = cfg->hidden_dim, p = cfg->patch_size, g = cfg->image_size / p;
    char name[512], pre[256];
    /* torchvision's state_dict order: its own parameters, then modules */
    m->class_token = add_param(ps, "class_token", 3, (int64_t[]){1, 1, C});
    m->conv_proj_weight = add_param(ps, "conv_proj.weight", 4,
                                    (int64_t[]){C, cfg->in_channels, p, p});
    m->conv_proj_bias = add_param(ps, "conv_proj.bias", 1, (int64_t[]){C});
    m->pos_embedding = add_param(ps, "encoder.pos_embedding", 3, (int64_t[]){1, g * g + 1, C});
    if (!m->class_token || !m->conv_proj_weight || !m->conv_proj_bias || !m->pos_embedding)
        return qkv_error_status();
    for (int64_t l = 0; l < cfg->num_layers; l++) {
        qkv_vit_block *b = &m->layers[l];
        snprintf(pre, sizeof pre, "encoder.layers.encoder_layer_%lld", (long long)l);
        b->ln_1_weight = add_param(ps, qkv_nn_name(name, sizeof name, pre, "ln_1.weight"), 1, &C);
        b->ln_1_bias = add_param(ps, qkv_nn_name(name, sizeof name, pre, "ln_1.bias"), 1, &C);
        if (!b->ln_1_weight || !b->ln_1_bias)
            return qkv_error_status();
        s = qkv_nn_mha_init(&b->self_attention, ps,
                            qkv_nn_name(name, sizeof name, pre, "self_attention"), C,
                            cfg->num_heads, cfg->attention_dropout, 1, 0, 0, 1);
        if (s != QKV_OK)
            return s;
        b->ln_2_weight = add_param(ps, qkv_nn_name(name, sizeof name, pre, "ln_2.weight"), 1, &C);
        b->ln_2_bias = add_param(ps, qkv_nn_name(name, sizeof name, pre, "ln_2.bias"), 1, &C);
        if (!b->ln_2_weight || !b->ln_2_bias)
            return qkv_error_status();
        s = qkv_nn_linear_init(&b->mlp_0, ps, qkv_nn_name(name, sizeof name, pre, "mlp.0"), C,
                               cfg->mlp_dim, 1);
        if (s == QKV_OK)
            s = qkv_nn_linear_init(&b->mlp_3, ps, qkv_nn_name(name, sizeof name, pre, "mlp.3"),
                                   cfg->mlp_dim, C, 1);
        if (s != QKV_OK)
            return s;
    }
    m->ln_weight = add_param(ps, "encoder.ln.weight", 1, &C);
    m->ln_bias = add_param(ps, "encoder.ln.bias", 1, &C);
    if (!m->ln_weight || !m->ln_bias)
        return qkv_error_status();
    if (cfg->num_classes == 0) /* a backbone: the features are the output */
        return QKV_OK;
    return qkv_nn_linear_init(&m->head, ps, "heads.head", C, cfg->num_classes, 1);
}

void qkv_vit_reset(qkv_vit *m, qkv_rng *r)
{
    const qkv_vit_config *c = &m->cfg;
    float fan_in = (float)(c->in_channels * c->patch_size * c->patch_size);
    qkv_init_trunc_normal(r, m->conv_proj_weight, 0.0f, sqrtf(1.0f / fan_in), -2.0f, 2.0f);
    qkv_init_constant(m->conv_proj_bias, 0.0f);
    qkv_init_constant(m->class_token, 0.0f);
    qkv_init_normal(r, m->pos_embedding, 0.0f, 0.02f);
    for (int64_t l = 0; l < c->num_layers; l++) {
        qkv_vit_block *b = &m->layers[l];
        qkv_init_constant(b->ln_1_weight, 1.0f);
        qkv_init_constant(b->ln_1_bias, 0.0f);
        qkv_nn_mha_reset(&b->self_attention, r);
        qkv_init_constant(b->ln_2_weight, 1.0f);
        qkv_init_constant(b->ln_2_bias, 0.0f);
        qkv_init_xavier_uniform(r, b->mlp_0.weight, 1.0f);
        qkv_init_normal(r, b->mlp_0.bias, 0.0f, 1e-6f);
        qkv_init_xavier_uniform(r, b->mlp_3.weight, 1.0f);
        qkv_init_normal(r, b->mlp_3.bias, 0.0f, 1e-6f);
    }
    qkv_init_constant(m->ln_weight, 1.0f);
    qkv_init_constant(m->ln_bias, 0.0f);
    /* torchvision zeroes the head: every class starts equally likely */
    if (m->head.weight) {
        qkv_init_constant(m->head.weight, 0.0f);
        qkv_init_constant(m->head.bias, 0.0f);
    }
}

/* ---- configuration from a state dict ---- */

/* Shape of `name` in f into shape; its ndim, or -1 with an error. */
static int st_shape(const qkv_st_file *f, const char *name, int want_ndim, int64_t *shape)
{
    int64_t i = qkv_st_find(f, name);
    if (i < 0) {
        qkv_set_error(QKV_ERR_FORMAT, "vit: the state dict has no '%s'", name);
        return -1;
    }
    int nd = qkv_st_shape(f, i, shape);
    if (nd != want_ndim) {
        qkv_set_error(QKV_ERR_FORMAT, "vit: '%s' has %d dimensions, expected %d", name, nd,
                      want_ndim);
        return -1;
    }
    return nd;
}

qkv_status qkv_vit_config_from_file(qkv_vit_config *cfg, const qkv_st_file *f)
{
    int64_t w[QKV_MAX_DIMS], pos[QKV_MAX_DIMS], mlp[QKV_MAX_DIMS], head[QKV_MAX_DIMS];
    if (st_shape(f, "conv_proj.weight", 4, w) < 0 ||
        st_shape(f, "encoder.pos_embedding", 3, pos) < 0 ||
        st_shape(f, "encoder.layers.encoder_layer_0.mlp.0.weight", 2, mlp) < 0 ||
        st_shape(f, "heads.head.weight", 2, head) < 0)
        return qkv_error_status();
    if (w[2] != w[3])
        return qkv_set_error(QKV_ERR_FORMAT, "vit: conv_proj.weight has a non-square %lldx%lld "
                             "patch", (long long)w[2], (long long)w[3]);
    /* pos_embedding holds the class token and a square grid of patches */
    int64_t S = pos[1] - 1, g = (int64_t)llround(sqrt((double)(S > 0 ? S : 0)));
    if (S < 1 || g * g != S)
        return qkv_set_error(QKV_ERR_FORMAT, "vit: encoder.pos_embedding has %lld positions, "
                             "not 1 + a square number of patches", (long long)pos[1]);
    int64_t L = 0;
    char name[128];
    for (;; L++) {
        snprintf(name, sizeof name, "encoder.layers.encoder_layer_%lld.ln_1.weight", (long long)L);
        if (qkv_st_find(f, name) < 0)
            break;
    }
    cfg->hidden_dim = w[0];
    cfg->in_channels = w[1];
    cfg->patch_size = w[2];
    cfg->image_size = g * w[2];
    cfg->mlp_dim = mlp[0];
    cfg->num_classes = head[0];
    cfg->num_layers = L;
    if (cfg->num_heads <= 0) {
        const char *h = qkv_st_meta(f, "num_heads");
        char *end = NULL;
        long long v = h ? strtoll(h, &end, 10) : 0;
        if (!h || *end || v < 1)
            return qkv_set_error(QKV_ERR_FORMAT, "vit: the number of heads is not in the "
                                 "file's metadata (\"num_heads\"); give it");
        cfg->num_heads = v;
    }
    return vit_check_config(cfg);
}

/* ---- forward ---- */

static qkv_tensor *ln(qkv_ctx *ctx, const qkv_vit *m, qkv_tensor *x, qkv_tensor *w,
                      qkv_tensor *b)
{
    return qkv_layer_norm(ctx, x, w, b, m->cfg.ln_eps);
}

/* x (B, T, C) -> (B, T, C): one pre-norm encoder block; with cls_only,
 * -> (B, 1, C), the class token's output alone: every token is still a key
 * and a value, but only the class token queries, and only it goes through
 * the residual and the MLP. */
static qkv_tensor *block_forward(qkv_ctx *ctx, const qkv_vit *m, const qkv_vit_block *b,
                                 qkv_tensor *x, qkv_tensor **attn, bool cls_only)
{
    float p = m->cfg.dropout;
    /* with gradients off (and no maps wanted), the attention half's
     * intermediates go once the residual sum exists, and GELU overwrites
     * its input: one block's peak is its input, the sum and the MLP's */
    qkv_arena_pos half = qkv_arena_mark(qkv_ctx_arena(ctx));
    qkv_tensor *h = ln(ctx, m, x, b->ln_1_weight, b->ln_1_bias);
    qkv_tensor *q = h;
    if (cls_only) {
        q = qkv_slice(ctx, h, 1, 0, 1, 1);
        x = qkv_slice(ctx, x, 1, 0, 1, 1);
    }
    qkv_attn_opts o = {.weights = attn, .average_attn_weights = 1};
    /* each dropout's input is read by nothing else: in place */
    h = qkv_dropout_inplace(ctx, qkv_nn_mha_forward(ctx, &b->self_attention, q, h, h, &o), p);
    x = qkv_add(ctx, x, h);
    if (!attn)
        x = qkv_ctx_rewind_keep(ctx, half, x);
    h = ln(ctx, m, x, b->ln_2_weight, b->ln_2_bias);
    h = qkv_nn_linear_forward(ctx, &b->mlp_0, h);
    /* training: the hidden layer GELU(h) is recomputed in the backward, not
     * kept; inference: GELU overwrites h */
    if (qkv_grad_enabled(ctx))
        h = qkv_gelu_linear(ctx, h, p, b->mlp_3.weight, b->mlp_3.bias);
    else
        h = qkv_nn_linear_forward(ctx, &b->mlp_3,
                                  qkv_dropout_inplace(ctx, qkv__gelu_over(ctx, h), p));
    return qkv_add(ctx, x, qkv_dropout_inplace(ctx, h, p));
}

/* x (B, Cin, image, image) -> logits (B, K), or features (B, C) without a
 * head; attn: L tensors (B, S + 1, S + 1) */
qkv_tensor *qkv_vit_forward(qkv_ctx *ctx, const qkv_vit *m, qkv_tensor *x, qkv_tensor **attn)
{
    QKV_INPUTS("vit", x);
    const qkv_vit_config *c = &m->cfg;
    if (x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[2] != c->image_size ||
        x->shape[3] != c->image_size) {
        char a[96];
        qkv_set_error(QKV_ERR_SHAPE, "vit: input %s, expected (B, %lld, %lld, %lld)",
                      qkv_shape_str(x, a, sizeof a), (long long)c->in_channels,
                      (long long)c->image_size, (long long)c->image_size);
        return NULL;
    }
    int64_t B = x->shape[0], C = c->hidden_dim, p = c->patch_size, Cin = c->in_channels;
    int64_t g = c->image_size / p, S = g * g, K = Cin * p * p;
    /* conv_proj as a linear map: its kernel equals its stride, so output
     * (s, o) is row o of the weight (C, Cin p p) against patch s. The
     * patches (B, g, g, Cin, p, p) are a reshuffle of the image, and the
     * product comes out token-major (B, S, C), as the encoder wants it (a
     * convolution gives (B, C, S), one transpose away). */
    qkv_arena *ar = qkv_ctx_arena(ctx);
    qkv_arena_pos at = qkv_arena_mark(ar);
    qkv_tensor *t = qkv_reshape(ctx, x, 6, (int64_t[]){B, Cin, g, p, g, p});
    t = qkv_permute(ctx, t, (int[]){0, 2, 4, 1, 3, 5});
    t = qkv_reshape(ctx, t, 3, (int64_t[]){B, S, K});
    t = qkv_linear(ctx, t, qkv_reshape(ctx, m->conv_proj_weight, 2, (int64_t[]){C, K}),
                   m->conv_proj_bias);
    /* class_token.expand(B, -1, -1): broadcasting onto zeros sums its
     * gradient over the batch in the backward */
    qkv_tensor *cls = qkv_add(ctx, qkv_zeros(ctx, 3, (int64_t[]){B, 1, C}), m->class_token);
    t = qkv_concat(ctx, 2, (qkv_tensor *[]){cls, t}, 1);
    t = qkv_dropout_inplace(ctx, qkv_add(ctx, t, m->pos_embedding), c->dropout);
    /* the patches' copies go; then each block's output takes the place of
     * its input, at the same mark */
    t = qkv_ctx_rewind_keep(ctx, at, t);
    /* Only the class token's output reaches the head, so the last block
     * computes only it (all tokens stay its keys and values): the same
     * logits and gradients as torchvision's, which computes every token's,
     * for about half the work of that block. Not when the attention maps
     * are wanted, which need every query, nor when cfg.every_token asks for
     * torchvision's work. With gradients off each block's intermediates go
     * once its output exists (qkv_ctx_rewind_keep); the attention maps, when
     * wanted, live in the arena and so keep everything. */
    int64_t L = c->num_layers;
    for (int64_t l = 0; l < L && t; l++) {
        bool cls_only = !attn && !c->every_token && l == L - 1;
        t = block_forward(ctx, m, &m->layers[l], t, attn ? &attn[l] : NULL, cls_only);
        if (!attn)
            t = qkv_ctx_rewind_keep(ctx, at, t);
    }
    if (!t)
        return NULL;
    /* The final norm acts per token, so normalising only the class token
     * gives torchvision's ln(x)[:, 0] exactly */
    if (t->shape[1] != 1)
        t = qkv_slice(ctx, t, 1, 0, 1, 1);
    t = qkv_reshape(ctx, t, 2, (int64_t[]){B, C});
    t = ln(ctx, m, t, m->ln_weight, m->ln_bias);
    return m->head.weight ? qkv_nn_linear_forward(ctx, &m->head, t) : t;
}

/* ---- attention rollout ---- */

/* map (N - 1) <- w (L, N, N) */
qkv_status qkv_vit_rollout(float *map, const float *w, int64_t L, int64_t N)
{
    if (!map || !w || L < 1 || N < 2)
        return qkv_set_error(QKV_ERR_ARG, "vit_rollout: need weights of L >= 1 blocks and "
                             "N >= 2 tokens (got L %lld, N %lld)", (long long)L, (long long)N);
    /* Only the class token's row of the product is wanted, so carry that
     * row through the blocks: r <- r (0.5 W_l + 0.5 I), rows renormalised */
    double *r = qkv__calloc((size_t)(2 * N), sizeof *r);
    if (!r)
        return qkv_set_error(QKV_ERR_NOMEM, "vit_rollout: out of memory");
    double *next = r + N;
    r[0] = 1.0;
    for (int64_t l = 0; l < L; l++) {
        const float *W = w + l * N * N;
        for (int64_t j = 0; j < N; j++)
            next[j] = 0.0;
        for (int64_t i = 0; i < N; i++) {
            if (r[i] == 0.0)
                continue;
            double s = 0.0;
            for (int64_t j = 0; j < N; j++)
                s += W[i * N + j];
            double row = 0.5 * s + 0.5; /* the sum of row i of 0.5 W + 0.5 I */
            for (int64_t j = 0; j < N; j++)
                next[j] += r[i] * (0.5 * W[i * N + j] + (i == j ? 0.5 : 0.0)) / row;
        }
        for (int64_t j = 0; j < N; j++)
            r[j] = next[j];
    }
    double mx = 0.0;
    for (int64_t j = 1; j < N; j++)
        mx = fmax(mx, r[j]);
    for (int64_t j = 1; j < N; j++)
        map[j - 1] = mx > 0.0 ? (float)(r[j] / mx) : 0.0f;
    qkv__free(r);
    return QKV_OK;
}
