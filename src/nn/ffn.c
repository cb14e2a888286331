/* ffn.c - the position-wise feed-forward network of the Transformer's
 * blocks: the same two-layer MLP applied to every position. */
#include "../qkv_internal.h"

qkv_status qkv_nn_ffn_init(qkv_nn_ffn *m, qkv_params *ps, const char *name1, const char *name2,
                           int64_t d_model, int64_t d_ffn, qkv_activation act, float dropout)
{
    memset(m, 0, sizeof *m);
    m->activation = act;
    m->dropout = dropout;
    qkv_status s = qkv_nn_linear_init(&m->dense1, ps, name1, d_model, d_ffn, 1);
    if (s == QKV_OK)
        s = qkv_nn_linear_init(&m->dense2, ps, name2, d_ffn, d_model, 1);
    return s;
}

void qkv_nn_ffn_reset(qkv_nn_ffn *m, qkv_rng *r)
{
    qkv_nn_linear_reset(&m->dense1, r);
    qkv_nn_linear_reset(&m->dense2, r);
}

/* x (..., d_model) -> (..., d_model) */
qkv_tensor *qkv_nn_ffn_forward(qkv_ctx *ctx, const qkv_nn_ffn *m, qkv_tensor *x)
{
    qkv_tensor *h = qkv_nn_linear_forward(ctx, &m->dense1, x);
    h = m->activation == QKV_ACT_GELU ? qkv_gelu(ctx, h) : qkv_relu(ctx, h);
    /* d2l's PositionWiseFFN has no dropout inside; PyTorch's layers do */
    if (m->dropout > 0.0f)
        h = qkv_dropout(ctx, h, m->dropout);
    return qkv_nn_linear_forward(ctx, &m->dense2, h);
}
