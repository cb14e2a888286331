/* ops_l2norm.c - L2 normalisation along one axis (F.normalize, p = 2):
 * MoCo's queries and keys, cosine similarities. */
#include "../kernels/l2norm.h"
#include "../qkv_internal.h"

/* y = x / max(||x||, eps) along axis; x and y (R, C, S), saved: the
 * divisor (R, S) and whether it was clamped to eps (R, S) */
static void l2_normalize_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *x = n->in[0], *y = n->out;
    float *dx = qkv__grad(ctx, x);
    if (dx)
        qkv_k_l2_normalize_backward(dx, y->grad, y->data, n->saved[0], n->saved[1], n->iarg[0],
                                    n->iarg[1], n->iarg[2]);
}

qkv_tensor *qkv_l2_normalize(qkv_ctx *ctx, qkv_tensor *x, int axis, float eps)
{
    QKV_INPUTS("l2_normalize", x);
    int a = qkv_axis(x, axis, "l2_normalize");
    if (a < 0)
        return NULL;
    if (!(eps >= 0.0f)) {
        qkv_set_error(QKV_ERR_ARG, "l2_normalize: eps must be >= 0, got %g", (double)eps);
        return NULL;
    }
    int64_t R = 1, C = x->shape[a], S = 1;
    for (int d = 0; d < a; d++)
        R *= x->shape[d];
    for (int d = a + 1; d < x->ndim; d++)
        S *= x->shape[d];
    x = qkv_contiguous(ctx, x);
    qkv_tensor *y = x ? qkv__tensor(ctx, x->ndim, x->shape) : NULL;
    float *norm = qkv__floats(ctx, R * S);
    unsigned char *clamped = qkv__alloc(ctx, (size_t)(R * S) + 1);
    if (!y || !norm || !clamped)
        return NULL;
    qkv_k_l2_normalize_forward(y->data, norm, clamped, x->data, R, C, S, eps);
    qkv_node *n = qkv__record(ctx, QKV_OP_L2_NORMALIZE, l2_normalize_backward, y, 1,
                              (qkv_tensor *[]){x});
    if (n) {
        n->saved[0] = norm;
        n->saved[1] = clamped;
        n->iarg[0] = R, n->iarg[1] = C, n->iarg[2] = S;
    }
    return qkv__done(ctx, QKV_OP_L2_NORMALIZE, y);
}
