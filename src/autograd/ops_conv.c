/* ops_conv.c - conv2d (NCHW) with stride, padding, dilation and groups, as
 * im2col + GEMM per image and group. A 1x1, stride-1, unpadded convolution
 * is a GEMM on the image as it lies, so it skips the column buffer.
 *
 * Per image b and group gi, with K = Cin/groups kh kw and P = Ho Wo:
 *   col (K, P) = im2col(x[b, group's channels])
 *   out[b, group's outputs] (Cout/groups, P) = w_gi (Cout/groups, K) col + bias
 * The backward recomputes col instead of keeping B of them alive. */
#include "../kernels/conv.h"
#include "../kernels/kernels.h"
#include "../qkv_internal.h"

/* What the backward needs besides the tensors: saved[0] the geometry,
 * iarg[0] groups, iarg[1] whether the 1x1 direct path was taken. */
static bool is_direct(const qkv_conv_geom *g)
{
    return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

static void conv2d_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = w_gi col(x) + bias, per image and group:
     *   dw_gi (og, K) += g (og, P) col^T
     *   dcol (K, P)    = w_gi^T g,  dx += col2im(dcol)
     *   dbias (og)    += g summed over P */
    qkv_tensor *x = n->in[0], *w = n->in[1], *bias = n->in[2], *out = n->out;
    const qkv_conv_geom *g = n->saved[0];
    int64_t groups = n->iarg[0];
    bool direct = n->iarg[1];
    int64_t B = x->shape[0], Cin = x->shape[1], Cout = w->shape[0];
    int64_t cg = Cin / groups, og = Cout / groups, K = cg * g->kh * g->kw;
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo;
    float *gx = qkv__wants(n, 0) ? qkv__grad(ctx, x) : NULL;
    float *gw = qkv__wants(n, 1) ? qkv__grad(ctx, w) : NULL;
    float *gb = bias && qkv__wants(n, 2) ? qkv__grad(ctx, bias) : NULL;
    float *col = gw && !direct ? qkv__floats(ctx, K * P) : NULL;
    float *dcol = gx && !direct ? qkv__floats(ctx, K * P) : NULL;
    if ((qkv__wants(n, 0) && !gx) || (qkv__wants(n, 1) && !gw) ||
        (!direct && ((gw && !col) || (gx && !dcol))))
        return;
    for (int64_t b = 0; b < B; b++)
        for (int64_t gi = 0; gi < groups; gi++) {
            const float *G = out->grad + (b * Cout + gi * og) * P;
            const float *X = x->data + (b * Cin + gi * cg) * HW;
            const float *Wg = w->data + gi * og * K;
            if (gb)
                for (int64_t o = 0; o < og; o++) {
                    double acc = 0;
                    for (int64_t p = 0; p < P; p++)
                        acc += G[o * P + p];
                    gb[gi * og + o] += (float)acc;
                }
            if (gw) {
                if (!direct)
                    qkv_k_im2col(col, X, cg, g);
                qkv_k_gemm(false, true, og, K, P, 1.0f, G, P, direct ? X : col, P, 1.0f,
                           gw + gi * og * K, K);
            }
            if (gx) {
                float *dX = gx + (b * Cin + gi * cg) * HW;
                if (direct)
                    qkv_k_gemm(true, false, cg, P, og, 1.0f, Wg, K, G, P, 1.0f, dX, P);
                else {
                    qkv_k_gemm(true, false, K, P, og, 1.0f, Wg, K, G, P, 0.0f, dcol, P);
                    qkv_k_col2im(dX, dcol, cg, g);
                }
            }
        }
}

/* Checks the shapes and fills the geometry; false (with the error) if bad. */
static bool conv2d_check(const qkv_tensor *x, const qkv_tensor *w, const qkv_tensor *bias,
                         const qkv_conv2d_opts *o, int64_t groups, qkv_conv_geom *g)
{
    char why[160];
    if (x->ndim != 4 || w->ndim != 4) {
        qkv__shape_error("conv2d", x, w, "input must be (B, Cin, H, W) and weight "
                                         "(Cout, Cin/groups, kh, kw)");
        return false;
    }
    if (o->stride_h < 0 || o->stride_w < 0 || o->dil_h < 0 || o->dil_w < 0 || o->pad_h < 0 ||
        o->pad_w < 0 || groups < 1) {
        qkv_set_error(QKV_ERR_ARG, "conv2d: stride (%d, %d), padding (%d, %d), dilation "
                      "(%d, %d) and groups %lld must not be negative", o->stride_h,
                      o->stride_w, o->pad_h, o->pad_w, o->dil_h, o->dil_w, (long long)groups);
        return false;
    }
    int64_t Cin = x->shape[1], Cout = w->shape[0];
    if (Cin % groups || Cout % groups || w->shape[1] * groups != Cin) {
        snprintf(why, sizeof why,
                 "input channels must equal weight's in-channels times groups (%lld), and "
                 "out-channels must divide by groups", (long long)groups);
        qkv__shape_error("conv2d", x, w, why);
        return false;
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != Cout)) {
        qkv__shape_error("conv2d", w, bias, "bias must be (Cout)");
        return false;
    }
    *g = (qkv_conv_geom){
        .H = x->shape[2], .W = x->shape[3],
        .kh = (int)w->shape[2], .kw = (int)w->shape[3],
        .sh = o->stride_h ? o->stride_h : 1, .sw = o->stride_w ? o->stride_w : 1,
        .ph = o->pad_h, .pw = o->pad_w,
        .dh = o->dil_h ? o->dil_h : 1, .dw = o->dil_w ? o->dil_w : 1,
    };
    int64_t span_h = (int64_t)g->dh * (g->kh - 1) + 1, span_w = (int64_t)g->dw * (g->kw - 1) + 1;
    int64_t in_h = g->H + 2 * (int64_t)g->ph, in_w = g->W + 2 * (int64_t)g->pw;
    if (g->kh < 1 || g->kw < 1 || in_h < span_h || in_w < span_w) {
        snprintf(why, sizeof why, "the kernel (dilated to %lldx%lld) is larger than the padded "
                 "input (%lldx%lld)", (long long)span_h, (long long)span_w, (long long)in_h,
                 (long long)in_w);
        qkv__shape_error("conv2d", x, w, why);
        return false;
    }
    g->Ho = (in_h - span_h) / g->sh + 1;
    g->Wo = (in_w - span_w) / g->sw + 1;
    return true;
}

qkv_tensor *qkv_conv2d(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *w, qkv_tensor *bias,
                       const qkv_conv2d_opts *opts)
{
    QKV_INPUTS("conv2d", x, w);
    qkv_conv2d_opts o = opts ? *opts : (qkv_conv2d_opts){0};
    int64_t groups = o.groups ? o.groups : 1;
    qkv_conv_geom *g = qkv__alloc(ctx, sizeof *g);
    if (!g || !conv2d_check(x, w, bias, &o, groups, g))
        return NULL;
    bool has_bias = bias != NULL;
    x = qkv_contiguous(ctx, x);
    w = qkv_contiguous(ctx, w);
    bias = has_bias ? qkv_contiguous(ctx, bias) : NULL;
    if (!x || !w || (has_bias && !bias))
        return NULL;
    int64_t B = x->shape[0], Cin = x->shape[1], Cout = w->shape[0];
    int64_t cg = Cin / groups, og = Cout / groups, K = cg * g->kh * g->kw;
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo;
    bool direct = is_direct(g);
    float *col = direct ? NULL : qkv__floats(ctx, K * P);
    qkv_tensor *out = qkv__tensor(ctx, 4, (int64_t[]){B, Cout, g->Ho, g->Wo});
    if (!out || (!direct && !col))
        return NULL;
    for (int64_t b = 0; b < B; b++)
        for (int64_t gi = 0; gi < groups; gi++) {
            const float *X = x->data + (b * Cin + gi * cg) * HW;
            float *Y = out->data + (b * Cout + gi * og) * P;
            if (bias)
                for (int64_t oc = 0; oc < og; oc++)
                    for (int64_t p = 0; p < P; p++)
                        Y[oc * P + p] = bias->data[gi * og + oc];
            if (!direct)
                qkv_k_im2col(col, X, cg, g);
            qkv_k_gemm(false, false, og, P, K, 1.0f, w->data + gi * og * K, K,
                       direct ? X : col, P, bias ? 1.0f : 0.0f, Y, P);
        }
    qkv_node *n = qkv__record(ctx, QKV_OP_CONV2D, conv2d_backward, out, 3,
                              (qkv_tensor *[]){x, w, bias});
    if (n) {
        n->saved[0] = g;
        n->iarg[0] = groups;
        n->iarg[1] = direct;
    }
    return qkv__done(ctx, QKV_OP_CONV2D, out);
}
