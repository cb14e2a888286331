/* ops_binary.c - add, sub, mul, div with broadcasting; affine with scalars. */
#include "../kernels/kernels.h"
#include "../qkv_internal.h"

/* out = a op b. Saved: nothing (inputs are kept by the node). */
static qkv_tensor *binary_forward(qkv_ctx *ctx, qkv_op op, qkv_binop k, qkv_tensor *a,
                                  qkv_tensor *b, qkv_backward_fn backward)
{
    int64_t shape[QKV_MAX_DIMS], sa[QKV_MAX_DIMS], sb[QKV_MAX_DIMS];
    int nd = qkv__broadcast_shape(a, b, shape);
    if (nd < 0)
        return qkv__shape_error(qkv_op_names[op], a, b, "cannot broadcast");
    qkv_tensor *out = qkv__tensor(ctx, nd, shape);
    if (!out)
        return NULL;
    qkv__broadcast_strides(a, nd, shape, sa);
    qkv__broadcast_strides(b, nd, shape, sb);
    qkv_k_binary(k, out->data, a->data, sa, b->data, sb, nd, shape);
    qkv__record(ctx, op, backward, out, 2, (qkv_tensor *[]){a, b});
    return qkv__done(ctx, op, out);
}

/* g (out shape) scaled elementwise by f(a, b) and reduced to input i's shape.
 * which: 0 -> g * 1, 1 -> g * other, 2 -> g / b, 3 -> -g a / b^2 */
static void accumulate(qkv_ctx *ctx, qkv_node *n, int i, qkv_binop k, qkv_tensor *x,
                       qkv_tensor *y, float sign)
{
    qkv_tensor *in = n->in[i], *out = n->out;
    float *gi = qkv__grad(ctx, in);
    if (!gi)
        return;
    int nd = out->ndim;
    int64_t total = qkv_numel(out);
    const float *g = out->grad;
    float *tmp = NULL;
    if (x) {
        /* tmp = g (k) x [(k) y] */
        int64_t cs[QKV_MAX_DIMS], sx[QKV_MAX_DIMS];
        tmp = qkv__floats(ctx, total);
        if (!tmp)
            return;
        qkv__contig_strides(nd, out->shape, cs);
        qkv__broadcast_strides(x, nd, out->shape, sx);
        qkv_k_binary(k, tmp, g, cs, x->data, sx, nd, out->shape);
        if (y) {
            int64_t sy[QKV_MAX_DIMS];
            qkv__broadcast_strides(y, nd, out->shape, sy);
            qkv_k_binary(QKV_BIN_DIV, tmp, tmp, cs, y->data, sy, nd, out->shape);
        }
        g = tmp;
    }
    if (sign < 0) {
        if (!tmp) {
            tmp = qkv__floats(ctx, total);
            if (!tmp)
                return;
            for (int64_t j = 0; j < total; j++)
                tmp[j] = -g[j];
        } else
            for (int64_t j = 0; j < total; j++)
                tmp[j] = -tmp[j];
        g = tmp;
    }
    qkv__reduce_to(gi, in, g, nd, out->shape);
    qkv__floats_done(ctx, tmp, total);
}

static void add_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = a + b: da += g, db += g (reduced over broadcast axes; an input
     * of the output's own shape takes g as it is) */
    for (int i = 0; i < 2; i++) {
        if (!qkv__wants(n, i))
            continue;
        if (qkv_numel(n->in[i]) == qkv_numel(n->out))
            qkv__pass_grad(ctx, n, n->in[i]);
        else
            accumulate(ctx, n, i, QKV_BIN_MUL, NULL, NULL, 1);
    }
}

static void sub_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = a - b: da += g, db -= g */
    if (qkv__wants(n, 0))
        accumulate(ctx, n, 0, QKV_BIN_MUL, NULL, NULL, 1);
    if (qkv__wants(n, 1))
        accumulate(ctx, n, 1, QKV_BIN_MUL, NULL, NULL, -1);
}

static void mul_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = a * b: da += g * b, db += g * a */
    if (qkv__wants(n, 0))
        accumulate(ctx, n, 0, QKV_BIN_MUL, n->in[1], NULL, 1);
    if (qkv__wants(n, 1))
        accumulate(ctx, n, 1, QKV_BIN_MUL, n->in[0], NULL, 1);
}

static void div_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = a / b: da += g / b, db -= g * a / b^2 = g * out / b */
    if (qkv__wants(n, 0))
        accumulate(ctx, n, 0, QKV_BIN_DIV, n->in[1], NULL, 1);
    if (qkv__wants(n, 1))
        accumulate(ctx, n, 1, QKV_BIN_MUL, n->out, n->in[1], -1);
}

qkv_tensor *qkv_add(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b)
{
    QKV_INPUTS("add", a, b);
    return binary_forward(ctx, QKV_OP_ADD, QKV_BIN_ADD, a, b, add_backward);
}

qkv_tensor *qkv_sub(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b)
{
    QKV_INPUTS("sub", a, b);
    return binary_forward(ctx, QKV_OP_SUB, QKV_BIN_SUB, a, b, sub_backward);
}

qkv_tensor *qkv_mul(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b)
{
    QKV_INPUTS("mul", a, b);
    return binary_forward(ctx, QKV_OP_MUL, QKV_BIN_MUL, a, b, mul_backward);
}

qkv_tensor *qkv_div(qkv_ctx *ctx, qkv_tensor *a, qkv_tensor *b)
{
    QKV_INPUTS("div", a, b);
    return binary_forward(ctx, QKV_OP_DIV, QKV_BIN_DIV, a, b, div_backward);
}
