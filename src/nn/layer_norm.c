/* layer_norm.c - nn.LayerNorm as a module (weight, bias, eps) and d2l's
 * AddNorm, LayerNorm(dropout(y) + x): the normalisation of the
 * Transformer's sublayers. The op itself is qkv_layer_norm. */
#include "../qkv_internal.h"

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

/* x (..., C) -> (..., C) */
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
