/* ops_gelu_linear.c - y = linear(dropout(gelu(x), p), w, b) with the
 * hidden layer h = dropout(gelu(x)) recomputed in the backward instead of
 * kept: a transformer MLP's second half, whose h is as large as x (the MLP's
 * widest tensor) and, kept, would double what the block holds for its
 * backward. The recomputation is one GELU and one mask per element, small
 * beside the two products that read h.
 *
 * The same arithmetic as the composition qkv_linear(qkv_dropout(qkv_gelu(x),
 * p), w, b): the same kernels in the same order, and the mask drawn from the
 * context's RNG at the same point, so a model switching to it trains the
 * same weights. */
#include "../kernels/kernels.h"
#include "../kernels/unary.h"
#include "../qkv_internal.h"

/* h (R, in) = dropout(gelu(x)), the mask d when it has one */
static void hidden(float *h, const float *x, int64_t n, const qkv__dropout_mask *d)
{
    qkv_k_gelu(h, x, n);
    if (d)
        qkv__dropout_apply_inplace(h, n, d);
}

static void gelu_linear_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* y = h W^T + b, h = mask gelu(x):
     *   dW (out, in) += G^T (out, R) h (R, in), db += the rows of G summed,
     *   dh (R, in) = G (R, out) W (out, in), dx (+)= dh mask gelu'(x) */
    qkv_tensor *x = n->in[0], *w = n->in[1], *bias = n->in[2], *y = n->out;
    const qkv__dropout_mask *d = n->saved[0];
    int64_t in = w->shape[1], outf = w->shape[0], R = qkv_numel(x) / (in ? in : 1);
    int64_t nh = R * in;
    const float *G = y->grad;
    float *h = qkv__floats(ctx, nh);
    if (!h)
        return;
    float *gw = qkv__wants(n, 1) ? qkv__grad(ctx, w) : NULL;
    float *gb = bias && qkv__wants(n, 2) ? qkv__grad(ctx, bias) : NULL;
    if (gw)
        hidden(h, x->data, nh, d);
    qkv__linear_dw(G, h, gw, gb, R, in, outf);
    if (qkv__wants(n, 0)) {
        bool acc;
        float *dx = qkv__grad_for_write(ctx, x, &acc);
        if (dx) {
            qkv_k_gemm(false, false, R, in, outf, 1.0f, G, outf, w->data, in, 0.0f, h, in);
            if (d)
                qkv__dropout_apply_inplace(h, nh, d);
            qkv_k_gelu_backward(dx, h, x->data, nh, acc);
        }
    }
    qkv__floats_done(ctx, h, nh);
}

qkv_tensor *qkv_gelu_linear(qkv_ctx *ctx, qkv_tensor *x, float p, qkv_tensor *w,
                            qkv_tensor *bias)
{
    QKV_INPUTS("gelu_linear", x, w);
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
        return qkv__shape_error("gelu_linear", x, w,
                                "input's last size must equal weight's (out, in) in");
    if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0]))
        return qkv__shape_error("gelu_linear", w, bias, "bias must be (out)");
    if (!(p >= 0.0f && p <= 1.0f)) {
        qkv_set_error(QKV_ERR_ARG, "gelu_linear: dropout probability %g is outside [0, 1]",
                      (double)p);
        return NULL;
    }
    if (!qkv_is_contiguous(w) || (bias && !qkv_is_contiguous(bias))) {
        qkv_set_error(QKV_ERR_ARG, "gelu_linear: weight and bias must be contiguous");
        return NULL;
    }
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    int64_t in = w->shape[1], outf = w->shape[0], R = qkv_numel(x) / (in ? in : 1);
    int64_t nh = R * in, shape[QKV_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = outf;
    qkv__dropout_mask *d = NULL;
    if (ctx->training && p > 0.0f) { /* as qkv_dropout: one draw, after GELU */
        if (!(d = qkv__alloc(ctx, sizeof *d)))
            return NULL;
        *d = qkv__dropout_draw(ctx, p);
    }
    float *h = qkv__floats(ctx, nh);
    qkv_tensor *y = h ? qkv__tensor(ctx, x->ndim, shape) : NULL;
    if (!y)
        return NULL;
    hidden(h, x->data, nh, d);
    if (bias)
        for (int64_t r = 0; r < R; r++)
            memcpy(y->data + r * outf, bias->data, (size_t)outf * sizeof(float));
    qkv_k_gemm(false, true, R, outf, in, 1.0f, h, in, w->data, in, bias ? 1.0f : 0.0f, y->data,
               outf);
    qkv__floats_done(ctx, h, nh);
    qkv_node *n = qkv__record(ctx, QKV_OP_GELU_LINEAR, gelu_linear_backward, y, 3,
                              (qkv_tensor *[]){x, w, bias});
    if (n)
        n->saved[0] = d;
    return qkv__done(ctx, QKV_OP_GELU_LINEAR, y);
}
