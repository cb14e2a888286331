/* conv.c - the convolutional network's modules: nn.Conv2d, nn.BatchNorm2d
 * (training, eval, and DETR's FrozenBatchNorm2d) and nn.MaxPool2d, in the
 * module convention of linear.c (init declares, reset initialises as
 * PyTorch, forward runs). ReLU has no state: it is the op qkv_relu. */
#include "../qkv_internal.h"

#include <math.h>
#include <stdio.h>

/* ---- Conv2d ---- */

qkv_status qkv_nn_conv2d_init(qkv_nn_conv2d *m, qkv_params *ps, const char *prefix,
                              int64_t in_channels, int64_t out_channels, int kernel_h,
                              int kernel_w, const qkv_conv2d_opts *opts, int bias)
{
    char name[512];
    memset(m, 0, sizeof *m);
    m->opts = opts ? *opts : (qkv_conv2d_opts){0};
    int64_t groups = m->opts.groups > 0 ? m->opts.groups : 1;
    if (in_channels < 1 || out_channels < 1 || kernel_h < 1 || kernel_w < 1 ||
        in_channels % groups || out_channels % groups)
        return qkv_set_error(QKV_ERR_ARG, "conv2d '%s': %lld -> %lld channels, kernel %dx%d, "
                             "groups %lld: sizes must be positive and channels divisible by "
                             "groups", prefix ? prefix : "", (long long)in_channels,
                             (long long)out_channels, kernel_h, kernel_w, (long long)groups);
    m->in_channels = in_channels;
    m->out_channels = out_channels;
    m->weight = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "weight"), 4,
                               (int64_t[]){out_channels, in_channels / groups, kernel_h,
                                           kernel_w}, 0);
    if (!m->weight)
        return qkv_error_status();
    if (bias) {
        m->bias = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, "bias"), 1,
                                 &out_channels, 0);
        if (!m->bias)
            return qkv_error_status();
    }
    return QKV_OK;
}

void qkv_nn_conv2d_reset(qkv_nn_conv2d *m, qkv_rng *r)
{
    /* PyTorch: kaiming_uniform(a = sqrt(5)) on the weight, which is
     * U(+-1/sqrt(fan_in)), fan_in = in/groups kh kw; the bias from the
     * same range */
    const int64_t *s = m->weight->shape;
    float bound = 1.0f / sqrtf((float)(s[1] * s[2] * s[3]));
    qkv_init_uniform(r, m->weight, -bound, bound);
    if (m->bias)
        qkv_init_uniform(r, m->bias, -bound, bound);
}

qkv_tensor *qkv_nn_conv2d_forward(qkv_ctx *ctx, const qkv_nn_conv2d *m, qkv_tensor *x)
{
    return qkv_conv2d(ctx, x, m->weight, m->bias, &m->opts);
}

/* ---- BatchNorm2d ---- */

qkv_status qkv_nn_batch_norm_init(qkv_nn_batch_norm *m, qkv_params *ps, const char *prefix,
                                  int64_t num_features, int frozen)
{
    char name[512];
    memset(m, 0, sizeof *m);
    if (num_features < 1)
        return qkv_set_error(QKV_ERR_ARG, "batch_norm '%s': %lld features",
                             prefix ? prefix : "", (long long)num_features);
    m->num_features = num_features;
    m->momentum = 0.1;
    m->eps = 1e-5f;
    m->frozen = frozen != 0;
    /* nn.BatchNorm2d: parameters weight, bias, then the buffers; DETR's
     * FrozenBatchNorm2d: all four are buffers, and no batch count */
    int pflag = frozen ? QKV_PARAM_BUFFER : 0, bflag = QKV_PARAM_BUFFER;
    const char *leaf[4] = {"weight", "bias", "running_mean", "running_var"};
    qkv_tensor **at[4] = {&m->weight, &m->bias, &m->running_mean, &m->running_var};
    for (int i = 0; i < 4; i++) {
        *at[i] = qkv_params_add(ps, qkv_nn_name(name, sizeof name, prefix, leaf[i]), 1,
                                &num_features, i < 2 ? pflag : bflag);
        if (!*at[i])
            return qkv_error_status();
    }
    if (!frozen) {
        m->num_batches_tracked = qkv_params_add(
            ps, qkv_nn_name(name, sizeof name, prefix, "num_batches_tracked"), 0, NULL, bflag);
        if (!m->num_batches_tracked)
            return qkv_error_status();
    }
    return QKV_OK;
}

void qkv_nn_batch_norm_reset(qkv_nn_batch_norm *m)
{
    qkv_init_constant(m->weight, 1.0f);
    qkv_init_constant(m->bias, 0.0f);
    qkv_init_constant(m->running_mean, 0.0f);
    qkv_init_constant(m->running_var, 1.0f);
    if (m->num_batches_tracked)
        qkv_init_constant(m->num_batches_tracked, 0.0f);
}

qkv_tensor *qkv_nn_batch_norm_forward(qkv_ctx *ctx, const qkv_nn_batch_norm *m, qkv_tensor *x,
                                      int64_t groups)
{
    qkv_bn_opts o = {.running_mean = m->running_mean, .running_var = m->running_var,
                     .num_batches_tracked = m->num_batches_tracked, .momentum = m->momentum,
                     .eps = m->eps, .groups = groups, .frozen = m->frozen, .sync = m->sync};
    /* frozen: weight and bias are buffers, so no gradient reaches them */
    return qkv_batch_norm_ext(ctx, x, m->weight, m->bias, &o);
}

/* ---- MaxPool2d ---- */

qkv_tensor *qkv_nn_max_pool2d_forward(qkv_ctx *ctx, const qkv_nn_max_pool2d *m, qkv_tensor *x)
{
    return qkv_max_pool2d(ctx, x, m->kernel, m->kernel, m->stride, m->stride, m->padding,
                          m->padding);
}
