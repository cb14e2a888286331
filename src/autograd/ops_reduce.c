/* ops_reduce.c - sum and mean over one axis, several axes or everything,
 * and max over one axis, with keepdim. The input is read through its strides
 * (no copy of a view); the output is contiguous. */
#include "../kernels/reduce.h"
#include "../qkv_internal.h"

/* Marks the reduced axes; naxes == 0 means every axis, as PyTorch's
 * sum(dim=[]). False with an error naming op and shape if an axis is out of
 * range or repeated. */
static bool axes_mask(const qkv_tensor *x, int naxes, const int *axes, bool *mask,
                      const char *op)
{
    char s[128];
    if (naxes < 0 || naxes > x->ndim || (naxes > 0 && !axes)) {
        qkv_set_error(QKV_ERR_ARG, "%s: %d axes for shape %s", op, naxes,
                      qkv_shape_str(x, s, sizeof s));
        return false;
    }
    for (int d = 0; d < x->ndim; d++)
        mask[d] = naxes == 0;
    for (int i = 0; i < naxes; i++) {
        int a = qkv_axis(x, axes[i], op);
        if (a < 0)
            return false;
        if (mask[a]) {
            qkv_set_error(QKV_ERR_ARG, "%s: axis %d appears twice for shape %s", op, a,
                          qkv_shape_str(x, s, sizeof s));
            return false;
        }
        mask[a] = true;
    }
    return true;
}

/* The output shape: reduced axes dropped, or kept with size 1. */
static int reduced_shape(const qkv_tensor *x, const bool *mask, bool keepdim, int64_t *shape)
{
    int nd = 0;
    for (int d = 0; d < x->ndim; d++)
        if (!mask[d])
            shape[nd++] = x->shape[d];
        else if (keepdim)
            shape[nd++] = 1;
    return nd;
}

static void sum_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = sum(x over the masked axes) / divisor: dx += g / divisor, g
     * broadcast back over the masked axes (stride 0 there). The output is
     * laid out as the keepdim shape whether or not it kept the axes. */
    qkv_tensor *x = n->in[0];
    int64_t kshape[QKV_MAX_DIMS], gstride[QKV_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++)
        kshape[d] = (n->iarg[0] >> d) & 1 ? 1 : x->shape[d];
    qkv__contig_strides(x->ndim, kshape, gstride);
    for (int d = 0; d < x->ndim; d++)
        if ((n->iarg[0] >> d) & 1)
            gstride[d] = 0;
    bool accumulate;
    float *dx = qkv__grad_for_write(ctx, x, &accumulate);
    if (dx)
        qkv_k_sum_backward(dx, n->out->grad, gstride, x->ndim, x->shape, (double)n->iarg[1],
                           accumulate);
}

/* out = sum of x over the masked axes, divided by their element count if
 * mean. */
static qkv_tensor *sum_mask(qkv_ctx *ctx, qkv_op op, qkv_tensor *x, const bool *mask,
                            bool keepdim, bool mean)
{
    int64_t shape[QKV_MAX_DIMS], count = 1, bits = 0;
    int nd = reduced_shape(x, mask, keepdim, shape);
    for (int d = 0; d < x->ndim; d++)
        if (mask[d]) {
            count *= x->shape[d];
            bits |= (int64_t)1 << d;
        }
    qkv_tensor *out = qkv__tensor(ctx, nd, shape);
    if (!out)
        return NULL;
    int64_t divisor = mean ? count : 1;
    qkv_k_sum(out->data, x->data, x->stride, x->ndim, x->shape, mask, (double)divisor);
    qkv_node *n = qkv__record(ctx, op, sum_backward, out, 1, &x);
    if (n) {
        n->iarg[0] = bits;
        n->iarg[1] = divisor;
    }
    return qkv__done(ctx, op, out);
}

static qkv_tensor *sum_axes(qkv_ctx *ctx, qkv_op op, qkv_tensor *x, int naxes, const int *axes,
                            int keepdim)
{
    QKV_INPUTS(qkv_op_names[op], x);
    bool mask[QKV_MAX_DIMS];
    if (!axes_mask(x, naxes, axes, mask, qkv_op_names[op]))
        return NULL;
    return sum_mask(ctx, op, x, mask, keepdim, op == QKV_OP_MEAN);
}

qkv_tensor *qkv_sum(qkv_ctx *ctx, qkv_tensor *x, int axis, int keepdim)
{
    return sum_axes(ctx, QKV_OP_SUM, x, 1, &axis, keepdim);
}

qkv_tensor *qkv_mean(qkv_ctx *ctx, qkv_tensor *x, int axis, int keepdim)
{
    return sum_axes(ctx, QKV_OP_MEAN, x, 1, &axis, keepdim);
}

qkv_tensor *qkv_sum_axes(qkv_ctx *ctx, qkv_tensor *x, int naxes, const int *axes, int keepdim)
{
    return sum_axes(ctx, QKV_OP_SUM, x, naxes, axes, keepdim);
}

qkv_tensor *qkv_mean_axes(qkv_ctx *ctx, qkv_tensor *x, int naxes, const int *axes,
                          int keepdim)
{
    return sum_axes(ctx, QKV_OP_MEAN, x, naxes, axes, keepdim);
}

qkv_tensor *qkv_sum_all(qkv_ctx *ctx, qkv_tensor *x)
{
    return sum_axes(ctx, QKV_OP_SUM, x, 0, NULL, 0);
}

qkv_tensor *qkv_mean_all(qkv_ctx *ctx, qkv_tensor *x)
{
    return sum_axes(ctx, QKV_OP_MEAN, x, 0, NULL, 0);
}

static void max_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = x[.., argmax, ..]: dx[.., argmax, ..] += g, zero elsewhere */
    qkv_tensor *x = n->in[0];
    float *dx = qkv__grad(ctx, x);
    if (dx)
        qkv_k_max_backward(dx, n->out->grad, n->saved[0], x->ndim, x->shape, (int)n->iarg[0]);
}

qkv_tensor *qkv_max(qkv_ctx *ctx, qkv_tensor *x, int axis, int keepdim, int64_t *argmax)
{
    QKV_INPUTS("max", x);
    int a = qkv_axis(x, axis, "max");
    if (a < 0)
        return NULL;
    if (x->shape[a] == 0) {
        char s[128];
        qkv_set_error(QKV_ERR_SHAPE, "max: axis %d of shape %s is empty", a,
                      qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    bool mask[QKV_MAX_DIMS] = {false};
    mask[a] = true;
    int64_t shape[QKV_MAX_DIMS];
    int nd = reduced_shape(x, mask, keepdim, shape);
    qkv_tensor *out = qkv__tensor(ctx, nd, shape);
    if (!out)
        return NULL;
    int64_t m = qkv_numel(out);
    int64_t *arg = qkv__alloc(ctx, (size_t)(m > 0 ? m : 1) * sizeof *arg);
    if (!arg)
        return NULL;
    qkv_k_max(out->data, arg, x->data, x->stride, x->ndim, x->shape, a);
    if (argmax)
        memcpy(argmax, arg, (size_t)m * sizeof *arg);
    qkv_node *n = qkv__record(ctx, QKV_OP_MAX, max_backward, out, 1, &x);
    if (n) {
        n->saved[0] = arg;
        n->iarg[0] = a;
    }
    return qkv__done(ctx, QKV_OP_MAX, out);
}
