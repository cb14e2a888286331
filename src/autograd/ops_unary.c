/* ops_unary.c - elementwise unary ops: affine, scale, neg, exp, log, sqrt,
 * pow, abs, tanh, sigmoid, relu, leaky_relu, gelu, gelu_tanh, silu,
 * softplus. Each is one kernel call on a contiguous input; the backward
 * reads the input and the output kept by the node, nothing else is saved. */
#include "../kernels/unary.h"
#include "../qkv_internal.h"

static void unary_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = f(x): dx += g * f'(x); the kernel names each f' */
    qkv_tensor *x = n->in[0], *out = n->out;
    bool accumulate;
    float *dx = qkv__grad_for_write(ctx, x, &accumulate);
    if (!dx)
        return;
    qkv_k_unary_backward((qkv_unop)n->iarg[0], dx, out->grad, x->data, out->data,
                         qkv_numel(x), n->farg[0], n->farg[1], accumulate);
}

/* out (shape of x) = f(x), a and b the op's scalars (see unary.h). */
static qkv_tensor *unary(qkv_ctx *ctx, qkv_op op, qkv_unop k, qkv_tensor *x, float a, float b)
{
    QKV_INPUTS(qkv_op_names[op], x);
    qkv_tensor *xc = qkv_contiguous(ctx, x);
    if (!xc)
        return NULL;
    qkv_tensor *out = qkv__tensor(ctx, xc->ndim, xc->shape);
    if (!out)
        return NULL;
    qkv_k_unary(k, out->data, xc->data, qkv_numel(out), a, b);
    qkv_node *n = qkv__record(ctx, op, unary_backward, out, 1, &xc);
    if (n) {
        n->iarg[0] = k;
        n->farg[0] = a;
        n->farg[1] = b;
    }
    return qkv__done(ctx, op, out);
}

qkv_tensor *qkv_affine(qkv_ctx *ctx, qkv_tensor *x, float a, float b)
{
    return unary(ctx, QKV_OP_AFFINE, QKV_UN_AFFINE, x, a, b);
}

qkv_tensor *qkv_scale(qkv_ctx *ctx, qkv_tensor *x, float a)
{
    return unary(ctx, QKV_OP_AFFINE, QKV_UN_AFFINE, x, a, 0.0f);
}

qkv_tensor *qkv_neg(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_AFFINE, QKV_UN_AFFINE, x, -1.0f, 0.0f);
}

qkv_tensor *qkv_exp(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_EXP, QKV_UN_EXP, x, 0, 0);
}

qkv_tensor *qkv_log(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_LOG, QKV_UN_LOG, x, 0, 0);
}

qkv_tensor *qkv_sqrt(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_SQRT, QKV_UN_SQRT, x, 0, 0);
}

qkv_tensor *qkv_pow(qkv_ctx *ctx, qkv_tensor *x, float p)
{
    return unary(ctx, QKV_OP_POW, QKV_UN_POW, x, p, 0);
}

qkv_tensor *qkv_abs(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_ABS, QKV_UN_ABS, x, 0, 0);
}

qkv_tensor *qkv_tanh(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_TANH, QKV_UN_TANH, x, 0, 0);
}

qkv_tensor *qkv_sigmoid(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_SIGMOID, QKV_UN_SIGMOID, x, 0, 0);
}

qkv_tensor *qkv_relu(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_RELU, QKV_UN_RELU, x, 0, 0);
}

qkv_tensor *qkv__relu_inplace(qkv_ctx *ctx, qkv_tensor *x)
{
    /* out = max(x, 0) written over x; the backward reads only out (the
     * kernel's relu rule looks at y, not x), so x's values are not needed */
    QKV_INPUTS("relu", x);
    if (!qkv_is_contiguous(x))
        return qkv_relu(ctx, x);
    qkv_tensor *out = qkv__view(ctx, x, x->ndim, x->shape, x->stride, 0);
    if (!out)
        return NULL;
    qkv_k_unary(QKV_UN_RELU, out->data, x->data, qkv_numel(x), 0, 0);
    qkv_node *n = qkv__record(ctx, QKV_OP_RELU, unary_backward, out, 1, &x);
    if (n)
        n->iarg[0] = QKV_UN_RELU;
    return qkv__done(ctx, QKV_OP_RELU, out);
}

qkv_tensor *qkv__gelu_over(qkv_ctx *ctx, qkv_tensor *x)
{
    /* GELU's backward reads x, so with a tape it keeps its own output */
    QKV_INPUTS("gelu", x);
    if ((ctx->grad_enabled && x->requires_grad) || !qkv_is_contiguous(x))
        return qkv_gelu(ctx, x);
    qkv_k_unary(QKV_UN_GELU, x->data, x->data, qkv_numel(x), 0, 0);
    return qkv__done(ctx, QKV_OP_GELU, x);
}

qkv_tensor *qkv_leaky_relu(qkv_ctx *ctx, qkv_tensor *x, float slope)
{
    return unary(ctx, QKV_OP_LEAKY_RELU, QKV_UN_LEAKY_RELU, x, slope, 0);
}

qkv_tensor *qkv_gelu(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_GELU, QKV_UN_GELU, x, 0, 0);
}

qkv_tensor *qkv_gelu_tanh(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_GELU_TANH, QKV_UN_GELU_TANH, x, 0, 0);
}

qkv_tensor *qkv_silu(qkv_ctx *ctx, qkv_tensor *x)
{
    return unary(ctx, QKV_OP_SILU, QKV_UN_SILU, x, 0, 0);
}

qkv_tensor *qkv_softplus(qkv_ctx *ctx, qkv_tensor *x, float beta, float threshold)
{
    if (x && beta == 0.0f) {
        qkv_set_error(QKV_ERR_ARG, "softplus: beta must not be 0");
        return NULL;
    }
    return unary(ctx, QKV_OP_SOFTPLUS, QKV_UN_SOFTPLUS, x, beta, threshold);
}
