/* ops_softmax.c - softmax and log-softmax over the last axis. Both save
 * their output: the backward of each needs only y and dy. */
#include "../kernels/softmax.h"
#include "../qkv_internal.h"

typedef void (*row_fn)(float *y, const float *x, int64_t N, int64_t C);

/* x (..., C) -> y (..., C); rows are every leading axis merged */
static qkv_tensor *rows_forward(qkv_ctx *ctx, qkv_op op, row_fn k, qkv_backward_fn backward,
                                qkv_tensor *x)
{
    if (x->ndim < 1) {
        char s[64];
        qkv_set_error(QKV_ERR_SHAPE, "%s: input must have at least one dimension, has shape %s",
                      qkv_op_names[op], qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    qkv_tensor *y = qkv__tensor(ctx, x->ndim, x->shape);
    if (!y)
        return NULL;
    int64_t C = x->shape[x->ndim - 1], N = C ? qkv_numel(x) / C : 0;
    k(y->data, x->data, N, C);
    qkv__record(ctx, op, backward, y, 1, &x);
    return qkv__done(ctx, op, y);
}

static void softmax_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* y = softmax(x): dx += y * (dy - sum(dy * y)) */
    qkv_tensor *y = n->out;
    bool acc;
    float *gx = qkv__grad_for_write(ctx, n->in[0], &acc);
    if (!gx)
        return;
    int64_t C = y->shape[y->ndim - 1], N = C ? qkv_numel(y) / C : 0;
    qkv_k_softmax_backward(gx, y->data, y->grad, N, C, acc);
}

static void log_softmax_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* y = log_softmax(x): dx += dy - exp(y) * sum(dy) */
    qkv_tensor *y = n->out;
    bool acc;
    float *gx = qkv__grad_for_write(ctx, n->in[0], &acc);
    if (!gx)
        return;
    int64_t C = y->shape[y->ndim - 1], N = C ? qkv_numel(y) / C : 0;
    qkv_k_log_softmax_backward(gx, y->data, y->grad, N, C, acc);
}

qkv_tensor *qkv_softmax(qkv_ctx *ctx, qkv_tensor *x)
{
    QKV_INPUTS("softmax", x);
    return rows_forward(ctx, QKV_OP_SOFTMAX, qkv_k_softmax_forward, softmax_backward, x);
}

qkv_tensor *qkv_log_softmax(qkv_ctx *ctx, qkv_tensor *x)
{
    QKV_INPUTS("log_softmax", x);
    return rows_forward(ctx, QKV_OP_LOG_SOFTMAX, qkv_k_log_softmax_forward, log_softmax_backward,
                        x);
}
