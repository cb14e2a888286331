/*
 * moco.c - MoCo v1, v2 and v3: momentum contrast (include/qkv.h, section
 * "Models: MoCo"; docs/moco.md).
 *
 * Re-derived from facebookresearch/moco moco/builder.py (v1, v2) and
 * facebookresearch/moco-v3 moco/builder.py and vits.py (v3). The model is
 * three parameter stores: the query encoder (trained), the key encoder
 * (its moving average) and the queue. A step's parts are separate calls
 * (keys, loss, momentum update, enqueue) so that the trainer's hooks and
 * shards can run them where they belong; nothing here allocates outside a
 * context's arena after qkv_moco_init.
 *
 * Legend: B batch, N a shard's rows, F encoder features, D output dim
 * (cfg.dim), K queue length, H hidden width of an MLP.
 */
#include "../qkv_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f

/* ---- v3's MLPs (moco-v3 builder.py _build_mlp) ---- */

/* Declares layers fc.0, bn.1, fc.3, bn.4, .. under the store's prefix +
 * `name` ("head" or "predictor"): layer l's Linear is number 3 l and its
 * BatchNorm1d 3 l + 1 (a ReLU, which has no state, is 3 l + 2). */
static qkv_status mlp_init(qkv_moco_mlp *p, qkv_params *ps, const char *name, int layers,
                           int64_t in, int64_t hidden, int64_t out, bool last_bn,
                           qkv_comm *sync)
{
    memset(p, 0, sizeof *p);
    p->n = layers;
    p->sync = sync;
    char pre[160], buf[200];
    for (int l = 0; l < layers; l++) {
        int64_t d1 = l == 0 ? in : hidden, d2 = l == layers - 1 ? out : hidden;
        snprintf(pre, sizeof pre, "%s.%d", name, 3 * l);
        qkv_status st = qkv_nn_linear_init(&p->fc[l], ps, pre, d1, d2, 0);
        if (st)
            return st;
        bool bn = l < layers - 1 || last_bn, affine = l < layers - 1;
        if (!bn)
            continue;
        snprintf(pre, sizeof pre, "%s.%d", name, 3 * l + 1);
        if (affine) {
            p->bn_weight[l] = qkv_params_add(ps, qkv_nn_name(buf, sizeof buf, pre, "weight"), 1,
                                             &d2, 0);
            p->bn_bias[l] = qkv_params_add(ps, qkv_nn_name(buf, sizeof buf, pre, "bias"), 1,
                                           &d2, 0);
            if (!p->bn_weight[l] || !p->bn_bias[l])
                return qkv_error_status();
        }
        p->bn_mean[l] = qkv_params_add(ps, qkv_nn_name(buf, sizeof buf, pre, "running_mean"), 1,
                                       &d2, QKV_PARAM_BUFFER);
        p->bn_var[l] = qkv_params_add(ps, qkv_nn_name(buf, sizeof buf, pre, "running_var"), 1,
                                      &d2, QKV_PARAM_BUFFER);
        p->bn_count[l] = qkv_params_add(ps, qkv_nn_name(buf, sizeof buf, pre,
                                                        "num_batches_tracked"),
                                        0, NULL, QKV_PARAM_BUFFER);
        if (!p->bn_mean[l] || !p->bn_var[l] || !p->bn_count[l])
            return qkv_error_status();
    }
    return QKV_OK;
}

/* nn.Linear's default initialisation and BatchNorm1d's (1, 0, 0, 1, 0). */
static void mlp_reset(qkv_moco_mlp *p, qkv_rng *r)
{
    for (int l = 0; l < p->n; l++) {
        qkv_nn_linear_reset(&p->fc[l], r);
        if (p->bn_weight[l]) {
            qkv_init_constant(p->bn_weight[l], 1.0f);
            qkv_init_constant(p->bn_bias[l], 0.0f);
        }
        if (p->bn_count[l]) {
            qkv_init_constant(p->bn_mean[l], 0.0f);
            qkv_init_constant(p->bn_var[l], 1.0f);
            qkv_init_constant(p->bn_count[l], 0.0f);
        }
    }
}

/* x (N, in) -> (N, out). The batch norms use the batch's statistics in
 * training mode, in `groups` groups of rows (shuffle BN), and update their
 * running statistics (deferred to the end of the step on shards). */
static qkv_tensor *mlp_forward(qkv_ctx *ctx, const qkv_moco_mlp *p, qkv_tensor *x,
                               int64_t groups)
{
    for (int l = 0; l < p->n && x; l++) {
        x = qkv_nn_linear_forward(ctx, &p->fc[l], x);
        if (p->bn_count[l])
            x = qkv_batch_norm_ext(ctx, x, p->bn_weight[l], p->bn_bias[l],
                                   &(qkv_bn_opts){.running_mean = p->bn_mean[l],
                                                  .running_var = p->bn_var[l],
                                                  .num_batches_tracked = p->bn_count[l],
                                                  .momentum = BN_MOMENTUM, .eps = BN_EPS,
                                                  .groups = groups, .sync = p->sync});
        if (l < p->n - 1)
            x = qkv_relu(ctx, x);
    }
    return x;
}

/* ---- a branch: encoder and head ---- */

static qkv_status net_init(qkv_moco_net *n, qkv_params *ps, const qkv_moco_config *c,
                           int64_t F)
{
    memset(n, 0, sizeof *n);
    qkv_status st = QKV_ERR_ARG;
    if (c->arch == QKV_MOCO_VIT) {
        qkv_vit_config vc = c->vit;
        vc.num_classes = 0;
        st = qkv_vit_init(&n->vit, ps, &vc);
        if (st)
            return st;
        if (c->version == 1)
            return qkv_nn_linear_init(&n->fc0, ps, "heads.head", F, c->dim, 1);
        if (c->version == 2) {
            int64_t H = c->mlp_dim > 0 ? c->mlp_dim : F;
            st = qkv_nn_linear_init(&n->fc0, ps, "heads.head.0", F, H, 1);
            return st ? st : qkv_nn_linear_init(&n->fc2, ps, "heads.head.2", H, c->dim, 1);
        }
        return mlp_init(&n->projector, ps, "head", 3, F, c->mlp_dim, c->dim, true, c->sync_bn);
    }
    /* a ResNet: v1's fc, v2's fc.0 and fc.2 (moco's mlp=True); v3 drops fc
     * for moco-v3's 2-layer projector under the same name */
    qkv_resnet_config rc = c->resnet;
    rc.num_classes = c->version < 3 ? c->dim : 0;
    rc.fc_hidden = c->version == 2 ? (c->mlp_dim > 0 ? c->mlp_dim : F) : 0;
    rc.sync_bn = c->sync_bn;
    st = qkv_resnet_init(&n->resnet, ps, "", &rc);
    if (st || c->version < 3)
        return st;
    return mlp_init(&n->projector, ps, "fc", 2, F, c->mlp_dim, c->dim, true, c->sync_bn);
}

/* x (N, Cin, H, W) -> the encoder's features (N, F); batch norms in
 * `groups` groups of rows */
static qkv_tensor *net_features(qkv_ctx *ctx, const qkv_moco *m, const qkv_moco_net *n,
                                qkv_tensor *x, int64_t groups)
{
    if (m->cfg.arch == QKV_MOCO_VIT)
        return qkv_vit_forward(ctx, &n->vit, x, NULL);
    return qkv_resnet_forward(ctx, &n->resnet, x, QKV_RESNET_POOLED, groups);
}

/* x (N, Cin, H, W) -> (N, D), not normalised */
static qkv_tensor *net_forward(qkv_ctx *ctx, const qkv_moco *m, const qkv_moco_net *n,
                               qkv_tensor *x, int64_t groups)
{
    if (m->cfg.arch == QKV_MOCO_RESNET && m->cfg.version < 3) /* fc is the ResNet's */
        return qkv_resnet_forward(ctx, &n->resnet, x, QKV_RESNET_LOGITS, groups);
    qkv_tensor *h = net_features(ctx, m, n, x, groups);
    switch (m->cfg.version) {
    case 1:
        return qkv_nn_linear_forward(ctx, &n->fc0, h);
    case 2:
        return qkv_nn_linear_forward(ctx, &n->fc2,
                                     qkv_relu(ctx, qkv_nn_linear_forward(ctx, &n->fc0, h)));
    default:
        return mlp_forward(ctx, &n->projector, h, groups);
    }
}

/* ---- making the model ---- */

static qkv_status check_config(const qkv_moco_config *c)
{
    if (c->version < 1 || c->version > 3)
        return qkv_set_error(QKV_ERR_ARG, "moco: version %d (1, 2 or 3)", c->version);
    if (c->arch != QKV_MOCO_VIT && c->arch != QKV_MOCO_RESNET)
        return qkv_set_error(QKV_ERR_ARG, "moco: unknown encoder arch %d", (int)c->arch);
    if (c->dim < 1 || !(c->T > 0.0f) || (c->version < 3 && c->K < 1) ||
        (c->version == 3 && c->mlp_dim < 1) || c->mlp_dim < 0 || c->bn_splits < 0)
        return qkv_set_error(QKV_ERR_ARG, "moco: need dim >= 1 (got %lld), T > 0 (%g), K >= 1 "
                             "for v1 and v2 (%lld), an MLP width >= 1 for v3 (%lld) and "
                             "bn_splits >= 0 (%lld)", (long long)c->dim, (double)c->T,
                             (long long)c->K, (long long)c->mlp_dim, (long long)c->bn_splits);
    if (c->sync_bn && c->bn_splits > 1)
        return qkv_set_error(QKV_ERR_ARG, "moco: shuffle BN (bn_splits %lld) and batch norm "
                             "synchronised over ranks (sync_bn) at once", (long long)c->bn_splits);
    return QKV_OK;
}

void qkv_moco_free(qkv_moco *m)
{
    if (!m)
        return;
    qkv_params_free(m->ps);
    qkv_params_free(m->ps_k);
    qkv_params_free(m->ps_queue);
    m->ps = m->ps_k = m->ps_queue = NULL;
}

qkv_status qkv_moco_init(qkv_moco *m, const qkv_moco_config *cfg)
{
    if (!m || !cfg)
        return qkv_set_error(QKV_ERR_ARG, "moco_init: NULL argument");
    memset(m, 0, sizeof *m);
    qkv_status st = check_config(cfg);
    if (st)
        return st;
    m->cfg = *cfg;
    if (cfg->arch == QKV_MOCO_RESNET) {
        if (m->cfg.image_size <= 0)
            m->cfg.image_size = 28;
        if (m->cfg.resnet.in_channels <= 0)
            m->cfg.resnet.in_channels = 1;
        int64_t w = cfg->resnet.width > 0 ? cfg->resnet.width : 64;
        m->features = w * (cfg->resnet.depth >= 50 ? 32 : 8);
    } else
        m->features = cfg->vit.hidden_dim;
    bool v3 = cfg->version == 3;
    if (!(m->ps = qkv_params_new()) || !(m->ps_k = qkv_params_new()) ||
        !(m->ps_queue = qkv_params_new())) {
        qkv_moco_free(m);
        return qkv_set_error(QKV_ERR_NOMEM, "moco_init: out of memory");
    }
    if ((st = qkv_params_set_prefix(m->ps, v3 ? "base_encoder." : "encoder_q.")) ||
        (st = net_init(&m->q, m->ps, &m->cfg, m->features)) ||
        (st = qkv_params_set_prefix(m->ps_k, v3 ? "momentum_encoder." : "encoder_k.")) ||
        (st = net_init(&m->k, m->ps_k, &m->cfg, m->features)))
        goto fail;
    if (v3 && ((st = qkv_params_set_prefix(m->ps, "")) ||
               (st = mlp_init(&m->predictor, m->ps, "predictor", 2, cfg->dim, cfg->mlp_dim,
                              cfg->dim, false, cfg->sync_bn))))
        goto fail;
    if (!v3) {
        m->queue = qkv_params_add(m->ps_queue, "queue", 2, (int64_t[]){cfg->dim, cfg->K},
                                  QKV_PARAM_BUFFER);
        m->queue_ptr = qkv_params_add(m->ps_queue, "queue_ptr", 1, (int64_t[]){1},
                                      QKV_PARAM_BUFFER);
        if (!m->queue || !m->queue_ptr) {
            st = qkv_error_status();
            goto fail;
        }
    }
    if ((st = qkv_params_alloc(m->ps)) || (st = qkv_params_alloc(m->ps_k)) ||
        (st = qkv_params_alloc(m->ps_queue)))
        goto fail;
    /* the key encoder's parameters have no gradient (requires_grad False) */
    for (int64_t i = 0; i < qkv_params_count(m->ps_k); i++)
        qkv_params_at(m->ps_k, i)->requires_grad = 0;
    if (cfg->arch == QKV_MOCO_VIT && cfg->vit_v3_init) /* patch projection and positions fixed */
        for (int64_t i = 0; i < qkv_params_count(m->ps); i++) {
            const char *name = qkv_params_at(m->ps, i)->name;
            if (strstr(name, "conv_proj.") || strstr(name, "pos_embedding"))
                qkv_params_set_flags(m->ps, i, QKV_PARAM_FROZEN);
        }
    return QKV_OK;
fail:
    qkv_moco_free(m);
    return st ? st : QKV_ERR_NOMEM;
}

/* moco-v3 vits.py build_2d_sincos_position_embedding: pos (1 + g g, C), the
 * class token's row zero; patch p = a g + b gets [sin(a w), cos(a w),
 * sin(b w), cos(b w)], w_i = 10000^(-i / (C / 4)) (a is the row: the
 * meshgrid there calls it w) */
static void sincos_positions(float *pos, int64_t g, int64_t C)
{
    int64_t q = C / 4;
    memset(pos, 0, (size_t)C * sizeof(float));
    for (int64_t p = 0; p < g * g; p++) {
        float *row = pos + (1 + p) * C;
        float a = (float)(p / g), b = (float)(p % g);
        for (int64_t i = 0; i < q; i++) {
            float omega = 1.0f / powf(10000.0f, (float)i / (float)q);
            row[i] = sinf(a * omega);
            row[q + i] = cosf(a * omega);
            row[2 * q + i] = sinf(b * omega);
            row[3 * q + i] = cosf(b * omega);
        }
    }
}

/* moco-v3's VisionTransformerMoCo initialisation: Linear weights
 * xavier_uniform (qkv: the bound of one of its three parts) with zero
 * biases, the patch projection U(+-sqrt(6 / (Cin p p + C))), the class token
 * N(0, 1e-6), sin-cos positions. */
static void vit_v3_reset(qkv_vit *v, qkv_rng *r)
{
    const qkv_vit_config *c = &v->cfg;
    int64_t C = c->hidden_dim, g = c->image_size / c->patch_size;
    for (int64_t l = 0; l < c->num_layers; l++) {
        qkv_vit_block *b = &v->layers[l];
        qkv_init_constant(b->ln_1_weight, 1.0f);
        qkv_init_constant(b->ln_1_bias, 0.0f);
        qkv_init_constant(b->ln_2_weight, 1.0f);
        qkv_init_constant(b->ln_2_bias, 0.0f);
        float val = sqrtf(6.0f / (float)(C + C)); /* qkv: (3C, C) as three (C, C) */
        qkv_init_uniform(r, b->self_attention.in_proj_weight, -val, val);
        qkv_init_constant(b->self_attention.in_proj_bias, 0.0f);
        qkv_init_xavier_uniform(r, b->self_attention.out_proj.weight, 1.0f);
        qkv_init_constant(b->self_attention.out_proj.bias, 0.0f);
        qkv_init_xavier_uniform(r, b->mlp_0.weight, 1.0f);
        qkv_init_constant(b->mlp_0.bias, 0.0f);
        qkv_init_xavier_uniform(r, b->mlp_3.weight, 1.0f);
        qkv_init_constant(b->mlp_3.bias, 0.0f);
    }
    qkv_init_constant(v->ln_weight, 1.0f);
    qkv_init_constant(v->ln_bias, 0.0f);
    float val = sqrtf(6.0f / (float)(c->in_channels * c->patch_size * c->patch_size + C));
    qkv_init_uniform(r, v->conv_proj_weight, -val, val);
    qkv_init_constant(v->conv_proj_bias, 0.0f);
    qkv_init_normal(r, v->class_token, 0.0f, 1e-6f);
    sincos_positions(v->pos_embedding->data, g, C);
}

void qkv_moco_reset(qkv_moco *m, qkv_rng *r)
{
    const qkv_moco_config *c = &m->cfg;
    if (c->arch == QKV_MOCO_RESNET)
        qkv_resnet_reset(&m->q.resnet, r); /* its fc too */
    else if (c->vit_v3_init)
        vit_v3_reset(&m->q.vit, r);
    else
        qkv_vit_reset(&m->q.vit, r);
    if (c->version == 3) {
        mlp_reset(&m->q.projector, r);
        mlp_reset(&m->predictor, r);
    } else if (c->arch == QKV_MOCO_VIT) {
        qkv_nn_linear_reset(&m->q.fc0, r);
        if (c->version == 2)
            qkv_nn_linear_reset(&m->q.fc2, r);
    }
    /* the key encoder starts as a copy (the stores are laid out alike) */
    int64_t nk;
    float *vk = qkv_params_values(m->ps_k, &nk);
    memcpy(vk, qkv_params_values(m->ps, NULL), (size_t)nk * sizeof(float));
    if (m->queue) { /* random unit columns */
        int64_t D = c->dim, K = c->K;
        float *q = m->queue->data;
        for (int64_t i = 0; i < D * K; i++)
            q[i] = (float)qkv_rng_normal(r);
        for (int64_t k = 0; k < K; k++) {
            double s = 0.0;
            for (int64_t d = 0; d < D; d++)
                s += (double)q[d * K + k] * q[d * K + k];
            float inv = 1.0f / fmaxf((float)sqrt(s), 1e-12f);
            for (int64_t d = 0; d < D; d++)
                q[d * K + k] *= inv;
        }
        m->queue_ptr->data[0] = 0.0f;
    }
}

/* ---- a step ---- */

static int64_t in_channels(const qkv_moco *m)
{
    return m->cfg.arch == QKV_MOCO_VIT ? m->cfg.vit.in_channels : m->cfg.resnet.in_channels;
}

int64_t qkv_moco_image_size(const qkv_moco *m)
{
    return m->cfg.arch == QKV_MOCO_VIT ? m->cfg.vit.image_size : m->cfg.image_size;
}

static qkv_tensor *view_rows(qkv_ctx *ctx, const qkv_moco *m, const float *x, int64_t lo,
                             int64_t hi)
{
    int64_t Cin = in_channels(m), S = qkv_moco_image_size(m);
    return qkv_wrap(ctx, 4, (int64_t[]){hi - lo, Cin, S, S}, (float *)x + lo * Cin * S * S);
}

/* out (N, D) <- normalize(f_k(x)) */
static qkv_status key_rows(qkv_ctx *ctx, qkv_moco *m, qkv_tensor *x, int64_t groups,
                           float *const *rows)
{
    qkv_tensor *k = qkv_l2_normalize(ctx, net_forward(ctx, m, &m->k, x, groups), 1, 1e-12f);
    if (!k)
        return qkv_error_status();
    int64_t D = m->cfg.dim;
    for (int64_t r = 0; r < k->shape[0]; r++)
        memcpy(rows[r], k->data + r * D, (size_t)D * sizeof(float));
    return QKV_OK;
}

qkv_status qkv_moco_keys(qkv_ctx *ctx, qkv_moco *m, const qkv_moco_batch *b, int64_t lo,
                         int64_t hi)
{
    if (!ctx || !m || !b || !b->x2 || !b->k2 || lo < 0 || hi > b->B || lo > hi ||
        (m->cfg.version == 3 && (!b->x1 || !b->k1)) || b->row0 < 0 ||
        (b->n_keys > 0 && b->row0 + b->B > b->n_keys))
        return qkv_set_error(QKV_ERR_ARG, "moco_keys: bad arguments (rows %lld..%lld of %lld, "
                             "keys from row %lld of %lld)", (long long)lo, (long long)hi,
                             b ? (long long)b->B : 0LL, b ? (long long)b->row0 : 0LL,
                             b ? (long long)b->n_keys : 0LL);
    if (hi == lo)
        return QKV_OK;
    int had = qkv_set_grad_enabled(ctx, 0);
    int64_t n = hi - lo, D = m->cfg.dim;
    float **rows = qkv__alloc(ctx, (size_t)n * sizeof *rows);
    qkv_status st = rows ? QKV_OK : QKV_ERR_NOMEM;
    if (!st && m->cfg.version == 3) {
        for (int64_t r = 0; r < n; r++)
            rows[r] = b->k1 + (b->row0 + lo + r) * D;
        st = key_rows(ctx, m, view_rows(ctx, m, b->x1, lo, hi), b->groups, rows);
        for (int64_t r = 0; !st && r < n; r++)
            rows[r] = b->k2 + (b->row0 + lo + r) * D;
        if (!st)
            st = key_rows(ctx, m, view_rows(ctx, m, b->x2, lo, hi), b->groups, rows);
    } else if (!st) {
        /* shuffle BN: the rows perm[lo..hi) gathered, their keys put back */
        int64_t Cin = in_channels(m), S = qkv_moco_image_size(m), P = Cin * S * S;
        qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){n, Cin, S, S});
        if (!x)
            st = qkv_error_status();
        for (int64_t r = 0; !st && r < n; r++) {
            int64_t src = b->perm ? b->perm[lo + r] : lo + r;
            if (src < 0 || src >= b->B)
                st = qkv_set_error(QKV_ERR_ARG, "moco_keys: perm[%lld] = %lld is not a row of "
                                   "the batch of %lld", (long long)(lo + r), (long long)src,
                                   (long long)b->B);
            else {
                memcpy(x->data + r * P, b->x2 + src * P, (size_t)P * sizeof(float));
                rows[r] = b->k2 + (b->row0 + src) * D;
            }
        }
        if (!st)
            st = key_rows(ctx, m, x, b->groups, rows);
    }
    qkv_set_grad_enabled(ctx, had);
    return st;
}

/* The cross-entropy summed over rows of logits (N, M) for targets t (N) */
static qkv_tensor *ce_sum(qkv_ctx *ctx, qkv_tensor *logits, const int64_t *t)
{
    return qkv_cross_entropy(ctx, logits, t, &(qkv_ce_opts){.ignore_index = QKV_NO_IGNORE,
                                                            .reduction = QKV_REDUCE_SUM});
}

/* v3's ctr(q, k) summed over q's rows: 2 T CE(q k^T / T, lo + row); q (N, D)
 * normalised here, k (B, D) already (B: every key, the global batch's) */
static qkv_tensor *ctr_sum(qkv_ctx *ctx, const qkv_moco *m, qkv_tensor *q, const float *k,
                           int64_t B, int64_t lo)
{
    int64_t n = q ? q->shape[0] : 0;
    int64_t *t = qkv__alloc(ctx, (size_t)(n + 1) * sizeof *t);
    qkv_tensor *kt = qkv_wrap(ctx, 2, (int64_t[]){B, m->cfg.dim}, (float *)k);
    if (!q || !t || !kt)
        return NULL;
    for (int64_t r = 0; r < n; r++)
        t[r] = lo + r;
    float T = m->cfg.T;
    qkv_tensor *logits = qkv_scale(ctx, qkv_matmul(ctx, qkv_l2_normalize(ctx, q, 1, 1e-12f), kt,
                                                   0, 1), 1.0f / T);
    return qkv_scale(ctx, ce_sum(ctx, logits, t), 2.0f * T);
}

qkv_tensor *qkv_moco_loss(qkv_ctx *ctx, qkv_moco *m, const qkv_moco_batch *b, int64_t lo,
                          int64_t hi)
{
    if (!ctx || !m || !b || !b->x1 || !b->k2 || lo < 0 || hi > b->B || lo >= hi ||
        (m->cfg.version == 3 && (!b->x2 || !b->k1)) || b->row0 < 0 ||
        (b->n_keys > 0 && b->row0 + b->B > b->n_keys)) {
        qkv_set_error(QKV_ERR_ARG, "moco_loss: bad arguments (rows %lld..%lld of %lld, keys "
                      "from row %lld of %lld)", (long long)lo, (long long)hi,
                      b ? (long long)b->B : 0LL, b ? (long long)b->row0 : 0LL,
                      b ? (long long)b->n_keys : 0LL);
        return NULL;
    }
    int64_t n = hi - lo, D = m->cfg.dim, n_keys = b->n_keys > 0 ? b->n_keys : b->B;
    if (m->cfg.version == 3) {
        int64_t g = b->groups;
        qkv_tensor *q1 = mlp_forward(
            ctx, &m->predictor, net_forward(ctx, m, &m->q, view_rows(ctx, m, b->x1, lo, hi), g), g);
        qkv_tensor *q2 = mlp_forward(
            ctx, &m->predictor, net_forward(ctx, m, &m->q, view_rows(ctx, m, b->x2, lo, hi), g), g);
        return qkv_add(ctx, ctr_sum(ctx, m, q1, b->k2, n_keys, b->row0 + lo),
                       ctr_sum(ctx, m, q2, b->k1, n_keys, b->row0 + lo));
    }
    /* logits = [q.k+, q queue] / T, label 0 */
    qkv_tensor *q = qkv_l2_normalize(
        ctx, net_forward(ctx, m, &m->q, view_rows(ctx, m, b->x1, lo, hi), b->groups), 1, 1e-12f);
    qkv_tensor *k = qkv_wrap(ctx, 2, (int64_t[]){n, D}, b->k2 + (b->row0 + lo) * D);
    qkv_tensor *queue = qkv_wrap(ctx, 2, m->queue->shape, m->queue->data);
    qkv_tensor *l_pos = qkv_sum(ctx, qkv_mul(ctx, q, k), 1, 1);  /* (N, 1) */
    qkv_tensor *l_neg = qkv_matmul(ctx, q, queue, 0, 0);          /* (N, K) */
    qkv_tensor *logits = qkv_scale(ctx, qkv_concat(ctx, 2, (qkv_tensor *[]){l_pos, l_neg}, 1),
                                   1.0f / m->cfg.T);
    int64_t *zeros = qkv__alloc(ctx, (size_t)n * sizeof *zeros);
    if (!zeros)
        return NULL;
    memset(zeros, 0, (size_t)n * sizeof *zeros);
    return ce_sum(ctx, logits, zeros);
}

void qkv_moco_momentum_update(qkv_moco *m, float mom)
{
    /* the key store is laid out as the query store's first entries */
    int64_t n = qkv_params_count(m->ps_k);
    for (int64_t i = 0; i < n; i++) {
        if (qkv_params_flags(m->ps_k, i) & QKV_PARAM_BUFFER)
            continue;
        qkv_tensor *k = qkv_params_at(m->ps_k, i), *q = qkv_params_at(m->ps, i);
        int64_t len = qkv_numel(k);
        float a = mom, b = 1.0f - mom;
#pragma omp simd
        for (int64_t j = 0; j < len; j++)
            k->data[j] = k->data[j] * a + q->data[j] * b;
    }
}

float qkv_moco_momentum_at(float base, int64_t step, int64_t total_steps)
{
    double t = total_steps > 0 ? (double)step / (double)total_steps : 0.0;
    return (float)(1.0 - 0.5 * (1.0 + cos(M_PI * t)) * (1.0 - (double)base));
}

qkv_status qkv_moco_enqueue(qkv_moco *m, const float *keys, int64_t n)
{
    if (!m || !m->queue || !keys || n < 1)
        return qkv_set_error(QKV_ERR_ARG, "moco_enqueue: %s", m && !m->queue ? "v3 has no queue"
                                                                              : "bad arguments");
    int64_t D = m->cfg.dim, K = m->cfg.K, ptr = (int64_t)m->queue_ptr->data[0];
    if (K % n)
        return qkv_set_error(QKV_ERR_SHAPE, "moco_enqueue: a batch of %lld keys does not divide "
                             "the queue of %lld", (long long)n, (long long)K);
    float *q = m->queue->data;
    for (int64_t d = 0; d < D; d++)
        for (int64_t i = 0; i < n; i++)
            q[d * K + ptr + i] = keys[i * D + d];
    m->queue_ptr->data[0] = (float)((ptr + n) % K);
    return QKV_OK;
}

qkv_tensor *qkv_moco_features(qkv_ctx *ctx, const qkv_moco *m, qkv_tensor *x)
{
    if (!m) {
        qkv_set_error(QKV_ERR_ARG, "moco_features: the model is NULL");
        return NULL;
    }
    return net_features(ctx, m, &m->q, x, 1);
}

qkv_tensor *qkv_moco_features_grid(qkv_ctx *ctx, const qkv_moco *m, qkv_tensor *x,
                                   int64_t grid)
{
    if (!m || grid < 1) {
        qkv_set_error(QKV_ERR_ARG, "moco_features_grid: %s",
                      !m ? "the model is NULL" : "the grid must be at least 1");
        return NULL;
    }
    if (grid == 1)
        return qkv_moco_features(ctx, m, x);
    if (m->cfg.arch != QKV_MOCO_RESNET) {
        qkv_set_error(QKV_ERR_ARG, "moco_features_grid: a grid of %lld cells needs a ResNet "
                      "encoder (a ViT's features are its class token)", (long long)grid);
        return NULL;
    }
    /* layer4's map (B, F, h, w) -> (B, F, grid, grid) -> (B, F grid^2) */
    qkv_tensor *c5 = qkv_resnet_forward(ctx, &m->q.resnet, x, QKV_RESNET_C5, 1);
    if (!c5)
        return NULL;
    if (grid > c5->shape[2] || grid > c5->shape[3]) {
        qkv_set_error(QKV_ERR_ARG, "moco_features_grid: a grid of %lld cells is larger than "
                      "the encoder's last map (%lldx%lld)", (long long)grid,
                      (long long)c5->shape[2], (long long)c5->shape[3]);
        return NULL;
    }
    qkv_tensor *p = qkv_adaptive_avg_pool2d(ctx, c5, (int)grid, (int)grid);
    return p ? qkv_reshape(ctx, p, 2, (int64_t[]){p->shape[0], p->shape[1] * grid * grid})
             : NULL;
}

/* ---- the model file ---- */

/* moco-v3's ViT is timm's: its names for qkv's (torchvision's), the part
 * after the store's prefix */
static const struct {
    const char *tv, *timm;
} vit_timm[] = {
    {"class_token", "cls_token"},
    {"encoder.pos_embedding", "pos_embed"},
    {"conv_proj.", "patch_embed.proj."},
    {"encoder.ln.", "norm."},
    {"encoder.layers.encoder_layer_", "blocks."},
    {"ln_1.", "norm1."},
    {"self_attention.in_proj_weight", "attn.qkv.weight"},
    {"self_attention.in_proj_bias", "attn.qkv.bias"},
    {"self_attention.out_proj.", "attn.proj."},
    {"ln_2.", "norm2."},
    {"mlp.0.", "mlp.fc1."},
    {"mlp.3.", "mlp.fc2."},
};

/* The file's name of a store entry: as it is, or for a v3 ViT with each
 * torchvision part replaced by timm's (the parts occur in this order) */
void qkv_moco_file_name(char *out, size_t n, const qkv_moco *m, const char *name)
{
    if (m->cfg.version != 3 || m->cfg.arch != QKV_MOCO_VIT) {
        snprintf(out, n, "%s", name);
        return;
    }
    size_t k = 0;
    const char *p = name;
    while (*p && k + 1 < n) {
        bool hit = false;
        for (size_t i = 0; i < sizeof vit_timm / sizeof vit_timm[0] && !hit; i++) {
            size_t len = strlen(vit_timm[i].tv);
            if (!strncmp(p, vit_timm[i].tv, len)) {
                k += (size_t)snprintf(out + k, n - k, "%s", vit_timm[i].timm);
                p += len;
                hit = true;
            }
        }
        if (!hit)
            out[k++] = *p++;
    }
    out[k < n ? k : n - 1] = 0;
}

static bool is_int_buffer(const char *name)
{
    size_t n = strlen(name), t = strlen("num_batches_tracked");
    return !strcmp(name, "queue_ptr") || (n >= t && !strcmp(name + n - t, "num_batches_tracked"));
}

static char *config_json(const qkv_moco *m)
{
    const qkv_moco_config *c = &m->cfg;
    cJSON *o = cJSON_CreateObject(), *v = cJSON_CreateObject();
    if (!o || !v) {
        cJSON_Delete(o);
        cJSON_Delete(v);
        return NULL;
    }
    cJSON_AddNumberToObject(o, "version", c->version);
    cJSON_AddStringToObject(o, "arch", c->arch == QKV_MOCO_VIT ? "vit" : "resnet");
    cJSON_AddNumberToObject(o, "dim", (double)c->dim);
    cJSON_AddNumberToObject(o, "mlp_dim", (double)c->mlp_dim);
    cJSON_AddNumberToObject(o, "K", (double)c->K);
    cJSON_AddNumberToObject(o, "T", c->T);
    cJSON_AddNumberToObject(o, "bn_splits", (double)c->bn_splits);
    cJSON_AddNumberToObject(o, "vit_v3_init", c->vit_v3_init);
    cJSON_AddNumberToObject(v, "image_size", (double)c->vit.image_size);
    cJSON_AddNumberToObject(v, "patch_size", (double)c->vit.patch_size);
    cJSON_AddNumberToObject(v, "in_channels", (double)c->vit.in_channels);
    cJSON_AddNumberToObject(v, "hidden_dim", (double)c->vit.hidden_dim);
    cJSON_AddNumberToObject(v, "mlp_dim", (double)c->vit.mlp_dim);
    cJSON_AddNumberToObject(v, "num_heads", (double)c->vit.num_heads);
    cJSON_AddNumberToObject(v, "num_layers", (double)c->vit.num_layers);
    if (c->arch == QKV_MOCO_VIT)
        cJSON_AddItemToObject(o, "vit", v);
    else {
        cJSON_Delete(v);
        cJSON *rn = cJSON_AddObjectToObject(o, "resnet");
        cJSON_AddNumberToObject(o, "image_size", (double)c->image_size);
        cJSON_AddNumberToObject(rn, "depth", c->resnet.depth);
        cJSON_AddNumberToObject(rn, "width", (double)c->resnet.width);
        cJSON_AddNumberToObject(rn, "in_channels", (double)c->resnet.in_channels);
        cJSON_AddNumberToObject(rn, "small_stem", c->resnet.small_stem);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static qkv_status add_store(qkv_st_writer *w, const qkv_moco *m, qkv_params *ps)
{
    char name[512];
    qkv_status st = QKV_OK;
    for (int64_t i = 0; i < qkv_params_count(ps) && !st; i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        qkv_moco_file_name(name, sizeof name, m, t->name);
        if (is_int_buffer(t->name)) { /* PyTorch keeps these as int64 */
            int64_t v = (int64_t)t->data[0];
            st = qkv_st_add_int(w, name, QKV_DT_I64, t->ndim, t->shape, &v);
        } else
            st = qkv_st_add_tensor(w, name, t);
    }
    return st;
}

qkv_status qkv_moco_save(qkv_moco *m, const char *path)
{
    if (!m || !path)
        return qkv_set_error(QKV_ERR_ARG, "moco_save: NULL argument");
    qkv_st_writer *w = qkv_st_writer_new();
    char *cfg = config_json(m);
    qkv_status st = w && cfg ? QKV_OK : qkv_set_error(QKV_ERR_NOMEM, "moco_save: out of memory");
    if (!st)
        st = add_store(w, m, m->ps);
    if (!st)
        st = add_store(w, m, m->ps_k);
    if (!st)
        st = add_store(w, m, m->ps_queue);
    if (!st)
        st = qkv_st_set_meta(w, "qkv.kind", "moco");
    if (!st)
        st = qkv_st_set_meta(w, "config", cfg);
    if (!st)
        st = qkv_st_write(w, path);
    cJSON_free(cfg);
    qkv_st_writer_free(w);
    return st;
}

static double num(const cJSON *o, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static qkv_status parse_config(qkv_moco_config *c, const char *json, const char *path)
{
    cJSON *o = json ? cJSON_Parse(json) : NULL;
    if (!o)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: no MoCo configuration in the metadata "
                             "(\"config\")", path);
    memset(c, 0, sizeof *c);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(o, "arch");
    c->version = (int)num(o, "version", 0);
    c->arch = cJSON_IsString(arch) && !strcmp(arch->valuestring, "vit") ? QKV_MOCO_VIT
                                                                         : QKV_MOCO_RESNET;
    c->dim = (int64_t)num(o, "dim", 0);
    c->mlp_dim = (int64_t)num(o, "mlp_dim", 0);
    c->K = (int64_t)num(o, "K", 0);
    c->T = (float)num(o, "T", 0);
    c->bn_splits = (int64_t)num(o, "bn_splits", 1);
    c->vit_v3_init = (int)num(o, "vit_v3_init", 0);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "vit");
    if (c->arch == QKV_MOCO_VIT)
        c->vit = (qkv_vit_config){.image_size = (int64_t)num(v, "image_size", 0),
                                  .patch_size = (int64_t)num(v, "patch_size", 0),
                                  .in_channels = (int64_t)num(v, "in_channels", 0),
                                  .hidden_dim = (int64_t)num(v, "hidden_dim", 0),
                                  .mlp_dim = (int64_t)num(v, "mlp_dim", 0),
                                  .num_heads = (int64_t)num(v, "num_heads", 0),
                                  .num_layers = (int64_t)num(v, "num_layers", 0)};
    const cJSON *rn = cJSON_GetObjectItemCaseSensitive(o, "resnet");
    if (c->arch == QKV_MOCO_RESNET) {
        c->image_size = (int64_t)num(o, "image_size", 28);
        c->resnet = (qkv_resnet_config){.depth = (int)num(rn, "depth", 0),
                                        .width = (int64_t)num(rn, "width", 0),
                                        .in_channels = (int64_t)num(rn, "in_channels", 1),
                                        .small_stem = (int)num(rn, "small_stem", 0)};
    }
    cJSON_Delete(o);
    return QKV_OK;
}

/* Reads every entry of ps from f under its file name; all must be there
 * with their shapes */
static qkv_status load_store(qkv_moco *m, qkv_params *ps, const qkv_st_file *f,
                             const char *path)
{
    char name[512];
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        qkv_moco_file_name(name, sizeof name, m, t->name);
        int64_t k = qkv_st_find(f, name), shape[QKV_MAX_DIMS];
        if (k < 0)
            return qkv_set_error(QKV_ERR_FORMAT, "%s: '%s' is missing", path, name);
        int nd = qkv_st_shape(f, k, shape);
        bool same = nd == t->ndim || (qkv_numel(t) == 1 && qkv_st_numel(f, k) == 1);
        for (int d = 0; same && nd == t->ndim && d < nd; d++)
            same = shape[d] == t->shape[d];
        if (!same) {
            char s[96];
            return qkv_set_error(QKV_ERR_FORMAT, "%s: '%s' has another shape than the model's "
                                 "%s", path, name, qkv_shape_str(t, s, sizeof s));
        }
        qkv_status st = qkv_st_read_f32(f, k, t->data);
        if (st)
            return st;
    }
    return QKV_OK;
}

qkv_status qkv_moco_load_state(qkv_moco *m, const qkv_st_file *f, const char *what)
{
    if (!m || !f || !what)
        return qkv_set_error(QKV_ERR_ARG, "moco_load_state: NULL argument");
    qkv_status st = load_store(m, m->ps, f, what);
    if (!st)
        st = load_store(m, m->ps_k, f, what);
    return st ? st : load_store(m, m->ps_queue, f, what);
}

qkv_status qkv_moco_open(qkv_moco *m, const char *path)
{
    if (!m || !path)
        return qkv_set_error(QKV_ERR_ARG, "moco_open: NULL argument");
    memset(m, 0, sizeof *m);
    char file[4200];
    struct stat sb;
    snprintf(file, sizeof file, "%s%s", path,
             stat(path, &sb) == 0 && S_ISDIR(sb.st_mode) ? "/model.safetensors" : "");
    qkv_st_file *f = qkv_st_open(file);
    if (!f)
        return qkv_error_status();
    const char *kind = qkv_st_meta(f, "qkv.kind");
    qkv_moco_config cfg;
    qkv_status st = kind && strcmp(kind, "moco")
                        ? qkv_set_error(QKV_ERR_FORMAT, "%s: a %s model, not a MoCo one", file,
                                        kind)
                        : parse_config(&cfg, qkv_st_meta(f, "config"), file);
    if (!st)
        st = qkv_moco_init(m, &cfg);
    if (!st && (st = qkv_moco_load_state(m, f, file)))
        qkv_moco_free(m);
    qkv_st_close(f);
    return st;
}
