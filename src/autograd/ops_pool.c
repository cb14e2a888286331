/* ops_pool.c - max_pool2d, avg_pool2d, adaptive_avg_pool2d on NCHW tensors:
 * shape checks, then the plane kernels of kernels/pool.c over the B C
 * planes. */
#include "../kernels/pool.h"
#include "../qkv_internal.h"

/* Fills the geometry of a k, s, p pool over x (B, C, H, W) as PyTorch
 * (floor division, padding at most half the window); false with the error. */
static bool pool_geom(const char *op, const qkv_tensor *x, int kh, int kw, int sh, int sw,
                      int ph, int pw, qkv_pool_geom *g)
{
    char s[128];
    if (x->ndim != 4) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: input must be (B, C, H, W), has shape %s", op,
                      qkv_shape_str(x, s, sizeof s));
        return false;
    }
    if (kh < 1 || kw < 1 || sh < 0 || sw < 0 || ph < 0 || pw < 0 || 2 * ph > kh ||
        2 * pw > kw) {
        qkv_set_error(QKV_ERR_ARG,
                      "%s: window (%d, %d) must be positive, stride (%d, %d) and padding "
                      "(%d, %d) not negative, padding at most half the window",
                      op, kh, kw, sh, sw, ph, pw);
        return false;
    }
    *g = (qkv_pool_geom){.H = x->shape[2], .W = x->shape[3], .kh = kh, .kw = kw,
                         .sh = sh ? sh : kh, .sw = sw ? sw : kw, .ph = ph, .pw = pw};
    if (g->H + 2 * ph < kh || g->W + 2 * pw < kw) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: window (%d, %d) is larger than the padded input %s",
                      op, kh, kw, qkv_shape_str(x, s, sizeof s));
        return false;
    }
    g->Ho = (g->H + 2 * ph - kh) / g->sh + 1;
    g->Wo = (g->W + 2 * pw - kw) / g->sw + 1;
    return true;
}

/* max_pool2d: saved[0] the geometry, saved[1] the argmax (B C Ho Wo) */
static void max_pool2d_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = x at the first maximum of each window: dx[argmax] += g */
    qkv_tensor *x = n->in[0];
    float *gx = qkv__grad(ctx, x);
    if (gx)
        qkv_k_max_pool2d_backward(gx, n->out->grad, n->saved[1], x->shape[0] * x->shape[1],
                                  n->saved[0]);
}

qkv_tensor *qkv_max_pool2d(qkv_ctx *ctx, qkv_tensor *x, int kh, int kw, int sh, int sw,
                           int ph, int pw)
{
    QKV_INPUTS("max_pool2d", x);
    qkv_pool_geom *g = qkv__alloc(ctx, sizeof *g);
    if (!g || !pool_geom("max_pool2d", x, kh, kw, sh, sw, ph, pw, g))
        return NULL;
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    int64_t N = x->shape[0] * x->shape[1];
    qkv_tensor *out = qkv__tensor(ctx, 4, (int64_t[]){x->shape[0], x->shape[1], g->Ho, g->Wo});
    int64_t *arg = qkv__alloc(ctx, (size_t)(N * g->Ho * g->Wo + 1) * sizeof(int64_t));
    if (!out || !arg)
        return NULL;
    qkv_k_max_pool2d(out->data, arg, x->data, N, g);
    qkv_node *n = qkv__record(ctx, QKV_OP_MAX_POOL2D, max_pool2d_backward, out, 1, &x);
    if (n) {
        n->saved[0] = g;
        n->saved[1] = arg;
    }
    return qkv__done(ctx, QKV_OP_MAX_POOL2D, out);
}

/* avg_pool2d: saved[0] the geometry */
static void avg_pool2d_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = sum(window) / divisor: dx[window] += g / divisor */
    qkv_tensor *x = n->in[0];
    float *gx = qkv__grad(ctx, x);
    if (gx)
        qkv_k_avg_pool2d_backward(gx, n->out->grad, x->shape[0] * x->shape[1], n->saved[0]);
}

qkv_tensor *qkv_avg_pool2d(qkv_ctx *ctx, qkv_tensor *x, int kh, int kw, int sh, int sw,
                           int ph, int pw)
{
    QKV_INPUTS("avg_pool2d", x);
    qkv_pool_geom *g = qkv__alloc(ctx, sizeof *g);
    if (!g || !pool_geom("avg_pool2d", x, kh, kw, sh, sw, ph, pw, g))
        return NULL;
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    qkv_tensor *out = qkv__tensor(ctx, 4, (int64_t[]){x->shape[0], x->shape[1], g->Ho, g->Wo});
    if (!out)
        return NULL;
    qkv_k_avg_pool2d(out->data, x->data, x->shape[0] * x->shape[1], g);
    qkv_node *n = qkv__record(ctx, QKV_OP_AVG_POOL2D, avg_pool2d_backward, out, 1, &x);
    if (n)
        n->saved[0] = g;
    return qkv__done(ctx, QKV_OP_AVG_POOL2D, out);
}

static void adaptive_avg_pool2d_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = mean(bin): dx[bin] += g / |bin| */
    qkv_tensor *x = n->in[0], *out = n->out;
    float *gx = qkv__grad(ctx, x);
    if (gx)
        qkv_k_adaptive_avg_pool2d_backward(gx, out->grad, x->shape[0] * x->shape[1],
                                           x->shape[2], x->shape[3], out->shape[2],
                                           out->shape[3]);
}

qkv_tensor *qkv_adaptive_avg_pool2d(qkv_ctx *ctx, qkv_tensor *x, int oh, int ow)
{
    QKV_INPUTS("adaptive_avg_pool2d", x);
    char s[128];
    if (x->ndim != 4 || x->shape[2] < 1 || x->shape[3] < 1) {
        qkv_set_error(QKV_ERR_SHAPE,
                      "adaptive_avg_pool2d: input must be (B, C, H, W) with H, W >= 1, has "
                      "shape %s", qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    if (oh < 1 || ow < 1) {
        qkv_set_error(QKV_ERR_ARG, "adaptive_avg_pool2d: output size (%d, %d) must be positive",
                      oh, ow);
        return NULL;
    }
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    qkv_tensor *out = qkv__tensor(ctx, 4, (int64_t[]){x->shape[0], x->shape[1], oh, ow});
    if (!out)
        return NULL;
    qkv_k_adaptive_avg_pool2d(out->data, x->data, x->shape[0] * x->shape[1], x->shape[2],
                              x->shape[3], oh, ow);
    qkv__record(ctx, QKV_OP_ADAPTIVE_AVG_POOL2D, adaptive_avg_pool2d_backward, out, 1, &x);
    return qkv__done(ctx, QKV_OP_ADAPTIVE_AVG_POOL2D, out);
}
