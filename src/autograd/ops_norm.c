/* ops_norm.c - layer norm over the last axis; batch norm over the channel
 * axis in training, eval and frozen form. Each saves its mean and rstd
 * (1 / sqrt(var + eps)) for the backward. */
#include "../kernels/norm.h"
#include "../qkv_internal.h"

#include <math.h>

/* A 1-D parameter of size C, or NULL. Returns false (error set) if the
 * shape is wrong. */
static bool check_vec(const char *op, const char *what, qkv_tensor *x, qkv_tensor *v, int64_t C)
{
    if (!v || (v->ndim == 1 && v->shape[0] == C))
        return true;
    char sx[128], sv[128];
    qkv_set_error(QKV_ERR_SHAPE, "%s: %s must be (%lld) for input %s, has shape %s", op, what,
                  (long long)C, qkv_shape_str(x, sx, sizeof sx), qkv_shape_str(v, sv, sizeof sv));
    return false;
}

/* x, weight and bias made contiguous (weight and bias may be NULL); false
 * if out of memory */
static bool contiguous_inputs(qkv_ctx *ctx, qkv_tensor **x, qkv_tensor **weight,
                              qkv_tensor **bias)
{
    *x = qkv_contiguous(ctx, *x);
    if (*weight && !(*weight = qkv_contiguous(ctx, *weight)))
        return false;
    if (*bias && !(*bias = qkv_contiguous(ctx, *bias)))
        return false;
    return *x != NULL;
}

/* ---- layer norm ---- */

/* y (R, C) = layer_norm(x (R, C)) * w (C) + b (C); saved: mean (R),
 * rstd (R), the w the forward used (ones when weight is NULL) */
static void layer_norm_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* y = (x - mean) rstd w + b: the kernel's dx, dw, db */
    qkv_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2], *y = n->out;
    int64_t C = y->shape[y->ndim - 1], R = C ? qkv_numel(y) / C : 0;
    bool acc = true;
    float *dx = qkv__wants(n, 0) ? qkv__grad_for_write(ctx, x, &acc) : NULL;
    float *dw = w && qkv__wants(n, 1) ? qkv__grad(ctx, w) : NULL;
    float *db = b && qkv__wants(n, 2) ? qkv__grad(ctx, b) : NULL;
    int nblocks = qkv_threads();
    double *scratch = NULL;
    if (dw || db) {
        scratch = qkv__alloc(ctx, (size_t)QKV_K_LAYER_NORM_SCRATCH(nblocks, C) * sizeof(double));
        if (!scratch)
            return;
    }
    if ((qkv__wants(n, 0) && !dx) || (w && qkv__wants(n, 1) && !dw) ||
        (b && qkv__wants(n, 2) && !db))
        return; /* out of memory, error set */
    qkv_k_layer_norm_backward(dx, dw, db, scratch, nblocks, y->grad, x->data, n->saved[0],
                              n->saved[1], n->saved[2], R, C, acc);
}

qkv_tensor *qkv_layer_norm(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight, qkv_tensor *bias,
                           float eps)
{
    QKV_INPUTS("layer_norm", x);
    if (x->ndim < 1) {
        char s[64];
        qkv_set_error(QKV_ERR_SHAPE, "layer_norm: input must have at least one dimension, "
                      "has shape %s", qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    int64_t C = x->shape[x->ndim - 1], R = C ? qkv_numel(x) / C : 0;
    if (!check_vec("layer_norm", "weight", x, weight, C) ||
        !check_vec("layer_norm", "bias", x, bias, C))
        return NULL;
    if (!contiguous_inputs(ctx, &x, &weight, &bias))
        return NULL;
    qkv_tensor *y = qkv__tensor(ctx, x->ndim, x->shape);
    float *mean = qkv__floats(ctx, R), *rstd = qkv__floats(ctx, R);
    float *w = weight ? weight->data : qkv__floats(ctx, C);
    float *b = bias ? bias->data : qkv__floats(ctx, C);
    if (!y || !mean || !rstd || !w || !b)
        return NULL;
    /* the kernel always scales and shifts: by one and zero without params */
    if (!weight)
        for (int64_t j = 0; j < C; j++)
            w[j] = 1.0f;
    if (!bias)
        memset(b, 0, (size_t)C * sizeof(float));
    qkv_k_layer_norm_forward(y->data, mean, rstd, x->data, w, b, R, C, eps);
    qkv_node *n = qkv__record(ctx, QKV_OP_LAYER_NORM, layer_norm_backward, y, 3,
                              (qkv_tensor *[]){x, weight, bias});
    if (n) {
        n->saved[0] = mean;
        n->saved[1] = rstd;
        n->saved[2] = w;
    }
    return qkv__done(ctx, QKV_OP_LAYER_NORM, y);
}

/* ---- batch norm ---- */

/* x (B, C, S..) -> y, normalised per channel with mean (C), rstd (C):
 * y = (x - mean) rstd w + b. iarg[0]: whether mean and rstd are x's own
 * batch statistics (then they depend on x). saved: mean, rstd, w (or NULL) */
static void batch_norm_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *x = n->in[0], *y = n->out;
    qkv_tensor *w = n->n_in > 1 ? n->in[1] : NULL, *b = n->n_in > 2 ? n->in[2] : NULL;
    int64_t B = x->shape[0], C = x->shape[1], S = B * C != 0 ? qkv_numel(x) / (B * C) : 0;
    float *dx = qkv__wants(n, 0) ? qkv__grad(ctx, x) : NULL;
    float *dw = w && qkv__wants(n, 1) ? qkv__grad(ctx, w) : NULL;
    float *db = b && qkv__wants(n, 2) ? qkv__grad(ctx, b) : NULL;
    qkv_k_batch_norm_backward(dx, dw, db, y->grad, x->data, n->saved[0], n->saved[1],
                              n->saved[2], B, C, S, n->iarg[0] != 0);
}

/* batch_stats: normalise with x's statistics (and update the running ones
 * if given); otherwise with the running ones. frozen: record x only. */
static qkv_tensor *batch_norm(qkv_ctx *ctx, const char *op, qkv_tensor *x, qkv_tensor *weight,
                              qkv_tensor *bias, qkv_tensor *running_mean,
                              qkv_tensor *running_var, float momentum, float eps,
                              bool batch_stats, bool frozen)
{
    char s[128];
    if (x->ndim < 2) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: input must be (B, C, ...), has shape %s", op,
                      qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    int64_t B = x->shape[0], C = x->shape[1], S = B * C != 0 ? qkv_numel(x) / (B * C) : 0;
    if (!check_vec(op, "weight", x, weight, C) || !check_vec(op, "bias", x, bias, C) ||
        !check_vec(op, "running_mean", x, running_mean, C) ||
        !check_vec(op, "running_var", x, running_var, C))
        return NULL;
    if (!batch_stats && (!running_mean || !running_var)) {
        qkv_set_error(QKV_ERR_ARG, "%s: running_mean and running_var are needed outside "
                      "training mode", op);
        return NULL;
    }
    if ((running_mean && running_mean->stride[0] != 1) ||
        (running_var && running_var->stride[0] != 1)) {
        qkv_set_error(QKV_ERR_ARG, "%s: running statistics must be contiguous", op);
        return NULL;
    }
    int64_t count = B * S;
    if (batch_stats && count <= 1) {
        qkv_set_error(QKV_ERR_SHAPE, "%s: expected more than 1 value per channel when "
                      "training, got input of shape %s", op, qkv_shape_str(x, s, sizeof s));
        return NULL;
    }
    if (!contiguous_inputs(ctx, &x, &weight, &bias))
        return NULL;
    qkv_tensor *y = qkv__tensor(ctx, x->ndim, x->shape);
    float *mean = qkv__floats(ctx, C), *rstd = qkv__floats(ctx, C);
    float *scale = qkv__floats(ctx, C), *shift = qkv__floats(ctx, C);
    if (!y || !mean || !rstd || !scale || !shift)
        return NULL;
    if (batch_stats) {
        float *var = rstd; /* becomes rstd below */
        qkv_k_batch_norm_stats(mean, var, x->data, B, C, S);
        /* PyTorch's update: new = (1 - m) old + m batch, with the unbiased
         * variance for the running one */
        double unbias = (double)count / (double)(count - 1);
        for (int64_t c = 0; c < C; c++) {
            if (running_mean)
                running_mean->data[c] =
                    (float)((1.0 - momentum) * running_mean->data[c] + momentum * (double)mean[c]);
            if (running_var)
                running_var->data[c] = (float)((1.0 - momentum) * running_var->data[c] +
                                               momentum * (double)var[c] * unbias);
            rstd[c] = (float)(1.0 / sqrt((double)var[c] + eps));
        }
    } else
        for (int64_t c = 0; c < C; c++) {
            mean[c] = running_mean->data[c];
            rstd[c] = (float)(1.0 / sqrt((double)running_var->data[c] + eps));
        }
    /* y = x scale + shift with scale = w rstd and shift = b - mean scale:
     * one fma per element, as PyTorch and DETR's FrozenBatchNorm2d */
    for (int64_t c = 0; c < C; c++) {
        scale[c] = (weight ? weight->data[c] : 1.0f) * rstd[c];
        shift[c] = (bias ? bias->data[c] : 0.0f) - mean[c] * scale[c];
    }
    qkv_k_channel_affine(y->data, x->data, scale, shift, B, C, S);
    qkv_node *nd = qkv__record(ctx, QKV_OP_BATCH_NORM, batch_norm_backward, y, frozen ? 1 : 3,
                               (qkv_tensor *[]){x, weight, bias});
    if (nd) {
        nd->saved[0] = mean;
        nd->saved[1] = rstd;
        nd->saved[2] = weight ? weight->data : NULL;
        nd->iarg[0] = batch_stats;
    }
    return qkv__done(ctx, QKV_OP_BATCH_NORM, y);
}

qkv_tensor *qkv_batch_norm(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight, qkv_tensor *bias,
                           qkv_tensor *running_mean, qkv_tensor *running_var, float momentum,
                           float eps)
{
    QKV_INPUTS("batch_norm", x);
    return batch_norm(ctx, "batch_norm", x, weight, bias, running_mean, running_var, momentum,
                      eps, qkv_training(ctx), false);
}

qkv_tensor *qkv_batch_norm_frozen(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *weight,
                                  qkv_tensor *bias, qkv_tensor *running_mean,
                                  qkv_tensor *running_var, float eps)
{
    QKV_INPUTS("batch_norm_frozen", x);
    return batch_norm(ctx, "batch_norm_frozen", x, weight, bias, running_mean, running_var,
                      0.0f, eps, false, true);
}
