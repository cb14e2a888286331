/* detr.c - DETR (facebookresearch/detr models/detr.py, backbone.py): a
 * ResNet's C5, a 1x1 input projection, the sine encoding of the padding
 * mask, the transformer (nn/detr_transformer.c's blocks, layout
 * QKV_TF_DETR) over the flattened features with learned object queries,
 * and two heads on every decoder layer's output: classes (K + 1, the last
 * no-object) and a 3-layer box MLP with a sigmoid.
 *
 * Legend: B images, (H, W) padded image size, F backbone features, (h, w)
 * C5's size, S = h w, E model width, Q queries, K + 1 classes, L decoder
 * layers. */
#include "../qkv_internal.h"

#include <math.h>
#include <stdio.h>

qkv_detr_config qkv_detr_config_r50(void)
{
    return (qkv_detr_config){.backbone_depth = 50, .in_channels = 3, .frozen_stages = 2,
                             .hidden_dim = 256, .num_heads = 8, .dim_feedforward = 2048,
                             .enc_layers = 6, .dec_layers = 6, .num_queries = 100,
                             .num_classes = 91, .dropout = 0.1f};
}

qkv_status qkv_detr_init(qkv_detr *m, qkv_params *ps, const qkv_detr_config *cfg)
{
    if (!m || !ps || !cfg)
        return qkv_set_error(QKV_ERR_ARG, "detr_init: NULL argument");
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    qkv_detr_config *c = &m->cfg;
    if (c->in_channels == 0)
        c->in_channels = 3;
    int64_t E = c->hidden_dim;
    if (E < 2 || E % 2 || c->num_heads < 1 || E % c->num_heads || c->dim_feedforward < 1 ||
        c->enc_layers < 0 || c->dec_layers < 1 || c->enc_layers > QKV_TF_MAX_LAYERS ||
        c->dec_layers > QKV_TF_MAX_LAYERS || c->num_queries < 1 || c->num_classes < 1 ||
        c->in_channels < 1 || !(c->dropout >= 0.0f && c->dropout < 1.0f))
        return qkv_set_error(QKV_ERR_ARG,
                             "detr_init: hidden_dim %lld (even, divisible by num_heads %lld), "
                             "dim_feedforward %lld, layers %lld + %lld (at most %d each, a "
                             "decoder), queries %lld, classes %lld, channels %lld must be "
                             "positive; dropout %g in [0, 1)",
                             (long long)E, (long long)c->num_heads,
                             (long long)c->dim_feedforward, (long long)c->enc_layers,
                             (long long)c->dec_layers, QKV_TF_MAX_LAYERS,
                             (long long)c->num_queries, (long long)c->num_classes,
                             (long long)c->in_channels, (double)c->dropout);
    qkv_resnet_config rc = {.depth = c->backbone_depth, .in_channels = c->in_channels,
                            .frozen_bn = !c->backbone_bn, .frozen_stages = c->frozen_stages,
                            .width = c->backbone_width};
    qkv_status st = qkv_resnet_init(&m->backbone, ps, "backbone.0.body", &rc);
    if (st)
        return st;
    qkv_tf_config tc = {.layout = QKV_TF_DETR, .d_model = E, .n_heads = c->num_heads,
                        .d_ffn = c->dim_feedforward, .n_enc = c->enc_layers,
                        .n_dec = c->dec_layers, .dropout = c->dropout,
                        .norm_first = c->pre_norm, .activation = QKV_ACT_RELU};
    char name[64];
    if ((st = qkv_nn_conv2d_init(&m->input_proj, ps, "input_proj", m->backbone.features, E, 1, 1,
                                 NULL, 1)) ||
        (st = qkv_transformer_init(&m->transformer, ps, "transformer", &tc)))
        return st;
    if (!(m->query_embed = qkv_params_add(ps, "query_embed.weight", 2,
                                          (int64_t[]){c->num_queries, E}, 0)))
        return qkv_error_status();
    if ((st = qkv_nn_linear_init(&m->class_embed, ps, "class_embed", E, c->num_classes + 1, 1)))
        return st;
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "bbox_embed.layers.%d", i);
        if ((st = qkv_nn_linear_init(&m->bbox_embed[i], ps, name, E, i == 2 ? 4 : E, 1)))
            return st;
    }
    return QKV_OK;
}

void qkv_detr_reset(qkv_detr *m, qkv_rng *r)
{
    qkv_resnet_reset(&m->backbone, r);
    qkv_nn_conv2d_reset(&m->input_proj, r);
    qkv_transformer_reset(&m->transformer, r);
    qkv_init_normal(r, m->query_embed, 0.0f, 1.0f);
    qkv_nn_linear_reset(&m->class_embed, r);
    for (int i = 0; i < 3; i++)
        qkv_nn_linear_reset(&m->bbox_embed[i], r);
}

/* x (B, C, h, w) -> (B, h w, C), as DETR's flatten(2).permute(2, 0, 1),
 * batch first */
static qkv_tensor *flatten_hw(qkv_ctx *ctx, qkv_tensor *x)
{
    if (!x)
        return NULL;
    int64_t B = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3];
    return qkv_transpose(ctx, qkv_reshape(ctx, x, 3, (int64_t[]){B, C, S}), 1, 2);
}

/* The padding mask at C5: (B, h, w) 1.0 on padding, from pixel_mask (B, H, W)
 * 1 on pixels, by nearest interpolation (DETR's backbone Joiner). */
static qkv_tensor *c5_mask(qkv_ctx *ctx, const float *pixel_mask, int64_t B, int64_t H,
                           int64_t W, int64_t h, int64_t w, bool *any)
{
    qkv_tensor *mask = qkv_zeros(ctx, 3, (int64_t[]){B, h, w});
    *any = false;
    if (!mask || !pixel_mask)
        return mask;
    uint8_t *pad = qkv__alloc(ctx, (size_t)(B * H * W)), *small = qkv__alloc(ctx, (size_t)(B * h * w));
    if (!pad || !small)
        return NULL;
    for (int64_t i = 0; i < B * H * W; i++)
        pad[i] = pixel_mask[i] == 0.0f;
    if (qkv_mask_resize_nearest(small, pad, B, H, W, h, w) != QKV_OK)
        return NULL;
    for (int64_t i = 0; i < B * h * w; i++) {
        mask->data[i] = small[i] ? 1.0f : 0.0f;
        *any |= small[i] != 0;
    }
    return mask;
}

qkv_status qkv_detr_forward(qkv_ctx *ctx, const qkv_detr *m, qkv_tensor *pixels,
                            const float *pixel_mask, int want_attn, qkv_detr_output *out)
{
    if (!ctx || !m || !out)
        return qkv_set_error(QKV_ERR_ARG, "detr_forward: NULL argument");
    memset(out, 0, sizeof *out);
    if (!pixels)
        return qkv_error_status() ? qkv_error_status()
                                  : qkv_set_error(QKV_ERR_ARG, "detr_forward: pixels is NULL");
    const qkv_detr_config *c = &m->cfg;
    char s[128];
    if (pixels->ndim != 4 || pixels->shape[1] != c->in_channels)
        return qkv_set_error(QKV_ERR_SHAPE, "detr: pixel_values must be (B, %lld, H, W), has "
                             "shape %s", (long long)c->in_channels,
                             qkv_shape_str(pixels, s, sizeof s));
    int64_t B = pixels->shape[0], H = pixels->shape[2], W = pixels->shape[3], h, w;
    int64_t E = c->hidden_dim, L = c->dec_layers, Q = c->num_queries;
    qkv_resnet_c5_size(&m->backbone, H, W, &h, &w);
    if (h < 1 || w < 1)
        return qkv_set_error(QKV_ERR_SHAPE, "detr: a %lldx%lld image is too small for the "
                             "backbone's stride 32", (long long)H, (long long)W);
    int64_t S = h * w;
    bool padded;
    qkv_tensor *mask = c5_mask(ctx, pixel_mask, B, H, W, h, w, &padded);
    /* pos (B, E, h, w): E/2 features per axis, temperature 10000, normalised
     * to 2 pi (DETR's PositionEmbeddingSine) */
    qkv_tensor *pos = mask ? qkv_nn_posenc_sine2d(ctx, mask, E / 2, 10000.0f, 1, 0.0f) : NULL;
    qkv_tensor *feat = qkv_resnet_forward(ctx, &m->backbone, pixels, QKV_RESNET_C5, 0);
    qkv_tensor *src = flatten_hw(ctx, qkv_nn_conv2d_forward(ctx, &m->input_proj, feat));
    pos = flatten_hw(ctx, pos);
    qkv_tensor *key_mask = padded ? qkv_reshape(ctx, mask, 2, (int64_t[]){B, S}) : NULL;
    if (!src || !pos || (padded && !key_mask))
        return qkv_error_status();
    /* DETR's Transformer.forward: the encoder with pos on its queries and
     * keys; the decoder from zeros with query_embed as query_pos, pos on
     * the cross-attention's keys; hs (L, B, Q, E) through decoder.norm */
    qkv_tensor *hs = NULL, *cross[QKV_TF_MAX_LAYERS] = {0};
    qkv_tf_opts o = {.src_key_padding_mask = key_mask, .src_key_padding_bool = 1,
                     .memory_key_padding_mask = key_mask, .memory_key_padding_bool = 1,
                     .src_pos = pos, .tgt_pos = m->query_embed, .dec_intermediate = &hs,
                     .dec_cross_weights = want_attn ? cross : NULL};
    qkv_tensor *tgt = qkv_zeros(ctx, 3, (int64_t[]){B, Q, E});
    qkv_tensor *memory = tgt ? qkv_transformer_encode(ctx, &m->transformer, src, &o) : NULL;
    if (!memory || !qkv_transformer_decode(ctx, &m->transformer, tgt, memory, &o) || !hs)
        return qkv_error_status();
    qkv_tensor *logits = qkv_nn_linear_forward(ctx, &m->class_embed, hs);
    qkv_tensor *b = hs;
    for (int i = 0; i < 3; i++) {
        b = qkv_nn_linear_forward(ctx, &m->bbox_embed[i], b);
        b = i < 2 ? qkv_relu(ctx, b) : qkv_sigmoid(ctx, b);
    }
    if (!logits || !b)
        return qkv_error_status();
    out->logits = logits;
    out->boxes = b;
    out->feat_h = h, out->feat_w = w;
    if (want_attn) { /* (B, H, Q, S) -> (B, Q, S), the mean over heads */
        out->cross_attn = qkv_mean(ctx, cross[L - 1], 1, 0);
        if (!out->cross_attn)
            return qkv_error_status();
    }
    return QKV_OK;
}

void qkv_detr_postprocess(qkv_detection *dets, const float *logits, const float *boxes,
                          int64_t Q, int64_t K1, double width, double height)
{
    for (int64_t q = 0; q < Q; q++) {
        const float *x = logits + q * K1, *b = boxes + 4 * q;
        /* softmax over the K + 1 classes, in double; the best of the first K */
        double mx = x[0], sum = 0;
        for (int64_t k = 1; k < K1; k++)
            mx = x[k] > mx ? x[k] : mx;
        for (int64_t k = 0; k < K1; k++)
            sum += exp((double)x[k] - mx);
        int64_t best = 0;
        for (int64_t k = 1; k < K1 - 1; k++)
            if (x[k] > x[best])
                best = k;
        dets[q].query = q;
        dets[q].label = best;
        dets[q].score = (float)(exp((double)x[best] - mx) / sum);
        /* box_cxcywh_to_xyxy, times (w, h, w, h) */
        double cx = b[0], cy = b[1], bw = b[2], bh = b[3];
        dets[q].box[0] = (float)((cx - 0.5 * bw) * width);
        dets[q].box[1] = (float)((cy - 0.5 * bh) * height);
        dets[q].box[2] = (float)((cx + 0.5 * bw) * width);
        dets[q].box[3] = (float)((cy + 0.5 * bh) * height);
    }
}
