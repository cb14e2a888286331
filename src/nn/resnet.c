/* resnet.c - torchvision's ResNet (18, 34, 50, 101, 152) under its
 * state_dict names, with the options DETR's backbone (frozen batch norm,
 * frozen stem and layer1, C5 out, the padding mask resized to C5) and
 * MoCo's encoders (a small-image stem, grey input, an MLP head or none,
 * shuffle-BN groups) need.
 *
 * The network: a stem (conv1 7x7 stride 2, bn1, ReLU, max pool 3x3 stride
 * 2; or conv1 3x3 stride 1 and no pool), four layers of blocks with 64,
 * 128, 256, 512 planes (cfg.width times 1, 2, 4, 8; layer1 stride 1, the others stride 2 in their first
 * block), a global average pool and fc. A basic block is
 *   relu(bn2(conv2(relu(bn1(conv1 3x3 (x))))) + identity)
 * and a bottleneck (width = planes, out = 4 planes)
 *   relu(bn3(conv3 1x1 (relu(bn2(conv2 3x3 (relu(bn1(conv1 1x1 (x)))))))) + identity)
 * with the stride on its 3x3 conv (torchvision's "v1.5"); identity is x, or
 * downsample = bn(conv 1x1 stride s (x)) when the shape changes. */
#include "../qkv_internal.h"

#include <math.h>
#include <stdio.h>

/* blocks per layer and block kind by depth */
static bool depth_layout(int depth, int n[4], int *bottleneck)
{
    static const struct {
        int depth, n[4], bottleneck;
    } table[] = {{18, {2, 2, 2, 2}, 0},
                 {34, {3, 4, 6, 3}, 0},
                 {50, {3, 4, 6, 3}, 1},
                 {101, {3, 4, 23, 3}, 1},
                 {152, {3, 8, 36, 3}, 1}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].depth == depth) {
            memcpy(n, table[i].n, sizeof table[i].n);
            *bottleneck = table[i].bottleneck;
            return true;
        }
    return false;
}

static qkv_status bn_init(qkv_nn_batch_norm *bn, qkv_params *ps, const char *prefix,
                          const char *leaf, int64_t C, const qkv_resnet_config *cfg)
{
    char name[512];
    qkv_status s = qkv_nn_batch_norm_init(bn, ps, qkv_nn_name(name, sizeof name, prefix, leaf),
                                          C, cfg->frozen_bn);
    bn->eps = cfg->bn_eps;
    bn->momentum = cfg->bn_momentum;
    bn->sync = cfg->sync_bn;
    return s;
}

static qkv_status conv_init(qkv_nn_conv2d *c, qkv_params *ps, const char *prefix,
                            const char *leaf, int64_t in, int64_t out, int k, int stride)
{
    char name[512];
    qkv_conv2d_opts o = {.stride_h = stride, .stride_w = stride, .pad_h = k / 2,
                         .pad_w = k / 2};
    return qkv_nn_conv2d_init(c, ps, qkv_nn_name(name, sizeof name, prefix, leaf), in, out, k,
                              k, &o, 0);
}

/* Block `pre` ("layer2.0") from `in` channels, `planes` wide, stride s. */
static qkv_status block_init(qkv_resnet_block *b, qkv_params *ps, const char *pre, int64_t in,
                             int64_t planes, int stride, int bottleneck,
                             const qkv_resnet_config *cfg)
{
    int64_t out = bottleneck ? 4 * planes : planes;
    qkv_status s;
    if (bottleneck) {
        if ((s = conv_init(&b->conv1, ps, pre, "conv1", in, planes, 1, 1)) ||
            (s = bn_init(&b->bn1, ps, pre, "bn1", planes, cfg)) ||
            (s = conv_init(&b->conv2, ps, pre, "conv2", planes, planes, 3, stride)) ||
            (s = bn_init(&b->bn2, ps, pre, "bn2", planes, cfg)) ||
            (s = conv_init(&b->conv3, ps, pre, "conv3", planes, out, 1, 1)) ||
            (s = bn_init(&b->bn3, ps, pre, "bn3", out, cfg)))
            return s;
    } else if ((s = conv_init(&b->conv1, ps, pre, "conv1", in, planes, 3, stride)) ||
               (s = bn_init(&b->bn1, ps, pre, "bn1", planes, cfg)) ||
               (s = conv_init(&b->conv2, ps, pre, "conv2", planes, planes, 3, 1)) ||
               (s = bn_init(&b->bn2, ps, pre, "bn2", planes, cfg)))
        return s;
    if (stride != 1 || in != out) {
        if ((s = conv_init(&b->downsample_conv, ps, pre, "downsample.0", in, out, 1, stride)) ||
            (s = bn_init(&b->downsample_bn, ps, pre, "downsample.1", out, cfg)))
            return s;
    }
    return QKV_OK;
}

/* Entries [from, count) of the store become frozen (buffers stay buffers). */
static void freeze_from(qkv_params *ps, int64_t from)
{
    for (int64_t i = from; i < qkv_params_count(ps); i++) {
        int f = qkv_params_flags(ps, i);
        if (!(f & QKV_PARAM_BUFFER))
            qkv_params_set_flags(ps, i, f | QKV_PARAM_FROZEN);
    }
}

qkv_status qkv_resnet_init(qkv_resnet *m, qkv_params *ps, const char *prefix,
                           const qkv_resnet_config *cfg)
{
    memset(m, 0, sizeof *m);
    if (!ps || !cfg)
        return qkv_set_error(QKV_ERR_ARG, "resnet_init: %s is NULL", ps ? "cfg" : "the store");
    if (!depth_layout(cfg->depth, m->n_blocks, &m->bottleneck))
        return qkv_set_error(QKV_ERR_ARG, "resnet_init: depth %d (18, 34, 50, 101 or 152)",
                             cfg->depth);
    if (cfg->in_channels < 0 || cfg->num_classes < 0 || cfg->fc_hidden < 0 || cfg->width < 0 ||
        (cfg->fc_hidden > 0 && cfg->num_classes == 0) || cfg->frozen_stages < 0 ||
        cfg->frozen_stages > 5)
        return qkv_set_error(QKV_ERR_ARG, "resnet_init: in_channels %lld, num_classes %lld, "
                             "fc_hidden %lld (needs num_classes), frozen_stages %d (0 to 5)",
                             (long long)cfg->in_channels, (long long)cfg->num_classes,
                             (long long)cfg->fc_hidden, cfg->frozen_stages);
    m->cfg = *cfg;
    qkv_resnet_config *c = &m->cfg;
    if (c->in_channels == 0)
        c->in_channels = 3;
    if (c->bn_eps <= 0.0f)
        c->bn_eps = 1e-5f;
    if (c->bn_momentum <= 0.0)
        c->bn_momentum = 0.1;
    if (c->width == 0)
        c->width = 64;
    m->features = c->width * (m->bottleneck ? 32 : 8);
    char pre[512], name[512];
    const char *p = prefix ? prefix : "";
    int64_t first = qkv_params_count(ps);
    qkv_status s;
    if ((s = conv_init(&m->conv1, ps, p, "conv1", c->in_channels, c->width,
                       c->small_stem ? 3 : 7, c->small_stem ? 1 : 2)) ||
        (s = bn_init(&m->bn1, ps, p, "bn1", c->width, c)))
        return s;
    m->maxpool = (qkv_nn_max_pool2d){.kernel = c->small_stem ? 0 : 3, .stride = 2, .padding = 1};
    if (c->frozen_stages >= 1)
        freeze_from(ps, first);
    int64_t in = c->width;
    for (int l = 0, k = 0; l < 4; l++) {
        int64_t layer_first = qkv_params_count(ps), planes = c->width << l;
        for (int j = 0; j < m->n_blocks[l]; j++, k++) {
            snprintf(name, sizeof name, "layer%d.%d", l + 1, j);
            s = block_init(&m->blocks[k], ps, qkv_nn_name(pre, sizeof pre, p, name), in, planes,
                           j == 0 && l > 0 ? 2 : 1, m->bottleneck, c);
            if (s)
                return s;
            in = m->bottleneck ? 4 * planes : planes;
        }
        if (c->frozen_stages >= l + 2)
            freeze_from(ps, layer_first);
    }
    if (c->num_classes > 0) {
        int64_t hidden = c->fc_hidden;
        s = qkv_nn_linear_init(&m->fc, ps, qkv_nn_name(pre, sizeof pre, p, hidden ? "fc.0" : "fc"),
                               m->features, hidden ? hidden : c->num_classes, 1);
        if (!s && hidden)
            s = qkv_nn_linear_init(&m->fc_out, ps, qkv_nn_name(pre, sizeof pre, p, "fc.2"),
                                   hidden, c->num_classes, 1);
        if (s)
            return s;
    }
    return QKV_OK;
}

static int64_t blocks_total(const qkv_resnet *m)
{
    return m->n_blocks[0] + m->n_blocks[1] + m->n_blocks[2] + m->n_blocks[3];
}

void qkv_resnet_reset(qkv_resnet *m, qkv_rng *r)
{
    /* torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") on
     * every conv, batch norms 1 and 0, fc as nn.Linear's default */
    qkv_nn_conv2d *convs[4];
    qkv_init_kaiming_normal(r, m->conv1.weight, 0.0f, QKV_FAN_OUT);
    qkv_nn_batch_norm_reset(&m->bn1);
    for (int64_t k = 0; k < blocks_total(m); k++) {
        qkv_resnet_block *b = &m->blocks[k];
        convs[0] = &b->conv1, convs[1] = &b->conv2, convs[2] = &b->conv3;
        convs[3] = &b->downsample_conv;
        for (int i = 0; i < 4; i++)
            if (convs[i]->weight)
                qkv_init_kaiming_normal(r, convs[i]->weight, 0.0f, QKV_FAN_OUT);
        qkv_nn_batch_norm *bns[4] = {&b->bn1, &b->bn2, &b->bn3, &b->downsample_bn};
        for (int i = 0; i < 4; i++)
            if (bns[i]->weight)
                qkv_nn_batch_norm_reset(bns[i]);
        if (m->cfg.zero_init_residual)
            qkv_init_constant(m->bottleneck ? b->bn3.weight : b->bn2.weight, 0.0f);
    }
    if (m->fc.weight)
        qkv_nn_linear_reset(&m->fc, r);
    if (m->fc_out.weight)
        qkv_nn_linear_reset(&m->fc_out, r);
}

/* ---- forward ---- */

static qkv_tensor *conv_bn(qkv_ctx *ctx, const qkv_nn_conv2d *c, const qkv_nn_batch_norm *bn,
                           qkv_tensor *x, int64_t groups)
{
    return qkv_nn_batch_norm_forward(ctx, bn, qkv_nn_conv2d_forward(ctx, c, x), groups);
}

static qkv_tensor *stem_forward(qkv_ctx *ctx, const qkv_resnet *m, qkv_tensor *x, int64_t g)
{
    x = qkv__relu_inplace(ctx, conv_bn(ctx, &m->conv1, &m->bn1, x, g));
    return m->maxpool.kernel ? qkv_nn_max_pool2d_forward(ctx, &m->maxpool, x) : x;
}

static qkv_tensor *block_forward(qkv_ctx *ctx, const qkv_resnet *m, const qkv_resnet_block *b,
                                 qkv_tensor *x, int64_t g)
{
    /* every relu here overwrites a batch norm's or add's output, which
     * nothing else reads (as torchvision's ReLU(inplace=True)) */
    qkv_tensor *y = qkv__relu_inplace(ctx, conv_bn(ctx, &b->conv1, &b->bn1, x, g));
    y = conv_bn(ctx, &b->conv2, &b->bn2, y, g);
    if (m->bottleneck)
        y = conv_bn(ctx, &b->conv3, &b->bn3, qkv__relu_inplace(ctx, y), g);
    qkv_tensor *id = b->downsample_conv.weight
                         ? conv_bn(ctx, &b->downsample_conv, &b->downsample_bn, x, g)
                         : x;
    return qkv__relu_inplace(ctx, qkv_add(ctx, y, id));
}

/* out size of a k x k window, stride s, padding p */
static int64_t out_size(int64_t n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; }

/* The (C, h, w) after the stem and after each block, for an (H, W) input;
 * returns the largest C h w. */
static int64_t stage_sizes(const qkv_resnet *m, int64_t H, int64_t W, int64_t *h_out,
                           int64_t *w_out)
{
    int64_t h = H, w = W, most;
    if (m->cfg.small_stem) {
        h = out_size(h, 3, 1, 1), w = out_size(w, 3, 1, 1);
    } else {
        h = out_size(out_size(h, 7, 2, 3), 3, 2, 1);
        w = out_size(out_size(w, 7, 2, 3), 3, 2, 1);
    }
    most = m->cfg.width * h * w;
    for (int l = 0; l < 4; l++) {
        if (l > 0)
            h = out_size(h, 3, 2, 1), w = out_size(w, 3, 2, 1);
        int64_t C = (m->cfg.width << l) * (m->bottleneck ? 4 : 1);
        if (C * h * w > most)
            most = C * h * w;
    }
    if (h_out)
        *h_out = h, *w_out = w;
    return most;
}

void qkv_resnet_c5_size(const qkv_resnet *m, int64_t H, int64_t W, int64_t *h, int64_t *w)
{
    stage_sizes(m, H, W, h, w);
}

/* Runs the stem and every block. Lean (no gradients recorded): each
 * stage's output is copied into one of two buffers and the arena rewound
 * to before the stage, so its intermediates are gone. */
static qkv_tensor *trunk_forward(qkv_ctx *ctx, const qkv_resnet *m, qkv_tensor *x, int64_t g,
                                 bool lean)
{
    int64_t nb = blocks_total(m);
    if (!lean) {
        x = stem_forward(ctx, m, x, g);
        for (int64_t k = 0; k < nb && x; k++)
            x = block_forward(ctx, m, &m->blocks[k], x, g);
        return x;
    }
    int64_t most = x->shape[0] * stage_sizes(m, x->shape[2], x->shape[3], NULL, NULL);
    float *buf[2] = {qkv__floats(ctx, most), qkv__floats(ctx, most)};
    if (!buf[0] || !buf[1])
        return NULL;
    qkv_arena *ar = qkv_ctx_arena(ctx);
    for (int64_t k = -1; k < nb && x; k++) {
        qkv_arena_pos at = qkv_arena_mark(ar);
        qkv_tensor *y = k < 0 ? stem_forward(ctx, m, x, g)
                              : block_forward(ctx, m, &m->blocks[k], x, g);
        y = qkv_contiguous(ctx, y);
        if (!y)
            return NULL;
        float *dst = buf[(k + 1) % 2];
        int64_t shape[4] = {y->shape[0], y->shape[1], y->shape[2], y->shape[3]};
        memcpy(dst, y->data, (size_t)qkv_numel(y) * sizeof(float));
        qkv_arena_rewind(ar, at); /* y and the stage's intermediates are gone */
        x = qkv_wrap(ctx, 4, shape, dst);
    }
    return x;
}

qkv_tensor *qkv_resnet_forward(qkv_ctx *ctx, const qkv_resnet *m, qkv_tensor *x,
                               qkv_resnet_output output, int64_t bn_groups)
{
    QKV_INPUTS("resnet", x);
    char s[128];
    if (x->ndim != 4 || x->shape[1] != m->cfg.in_channels) {
        qkv_set_error(QKV_ERR_SHAPE, "resnet: input must be (B, %lld, H, W), has shape %s",
                      (long long)m->cfg.in_channels, qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    if (output < QKV_RESNET_LOGITS || output > QKV_RESNET_C5) {
        qkv_set_error(QKV_ERR_ARG, "resnet: unknown output %d", (int)output);
        return NULL;
    }
    /* nothing recorded: intermediates can go (batch norm's running statistics,
     * written at once or deferred, keep nothing in the arena) */
    bool lean = !qkv_grad_enabled(ctx);
    x = trunk_forward(ctx, m, x, bn_groups, lean);
    if (!x || output == QKV_RESNET_C5)
        return x;
    int64_t B = x->shape[0];
    x = qkv_reshape(ctx, qkv_adaptive_avg_pool2d(ctx, x, 1, 1), 2,
                    (int64_t[]){B, m->features});
    if (output == QKV_RESNET_POOLED || !m->fc.weight)
        return x;
    x = qkv_nn_linear_forward(ctx, &m->fc, x);
    if (m->fc_out.weight)
        x = qkv_nn_linear_forward(ctx, &m->fc_out, qkv_relu(ctx, x));
    return x;
}

/* ---- DETR's mask ---- */

/* F.interpolate(mode="nearest")'s source index (PyTorch's nearest_idx):
 * the same index for equal sizes, half for a doubling, else
 * min(floor(i s), n_in - 1) with the scale s = n_in / n_out in float */
static int64_t nearest_index(int64_t i, int64_t n_in, int64_t n_out)
{
    if (n_out == n_in)
        return i;
    if (n_out == 2 * n_in)
        return i >> 1;
    float scale = (float)n_in / (float)n_out;
    int64_t src = (int64_t)floorf((float)i * scale);
    return src < n_in - 1 ? src : n_in - 1;
}

qkv_status qkv_mask_resize_nearest(uint8_t *out, const uint8_t *mask, int64_t B, int64_t H,
                                   int64_t W, int64_t h, int64_t w)
{
    if (!out || !mask)
        return qkv_set_error(QKV_ERR_ARG, "mask_resize_nearest: %s is NULL",
                             out ? "mask" : "out");
    if (B < 1 || H < 1 || W < 1 || h < 1 || w < 1)
        return qkv_set_error(QKV_ERR_ARG, "mask_resize_nearest: (%lld, %lld, %lld) to "
                             "(%lld, %lld): sizes must be positive", (long long)B,
                             (long long)H, (long long)W, (long long)h, (long long)w);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < h; i++) {
            const uint8_t *row = mask + (b * H + nearest_index(i, H, h)) * W;
            for (int64_t j = 0; j < w; j++)
                out[(b * h + i) * w + j] = row[nearest_index(j, W, w)] != 0;
        }
    return QKV_OK;
}
