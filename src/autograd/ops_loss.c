/* ops_loss.c - cross entropy (PyTorch's F.cross_entropy with class
 * indices: class weights, ignore_index, label smoothing, reductions) and
 * the pointwise regression losses MSE, L1 and smooth L1. */
#include "../kernels/loss.h"
#include "../qkv_internal.h"

static bool check_reduction(const char *op, qkv_reduction r)
{
    if (r == QKV_REDUCE_MEAN || r == QKV_REDUCE_SUM || r == QKV_REDUCE_NONE)
        return true;
    qkv_set_error(QKV_ERR_ARG, "%s: unknown reduction %d", op, (int)r);
    return false;
}

/* The upstream gradient of a loss as the kernels read it: per element for
 * REDUCE_NONE, else one value (divided by the mean's denominator). */
static const float *upstream(qkv_ctx *ctx, qkv_node *n, float denom, int64_t *stride)
{
    qkv_reduction r = (qkv_reduction)n->iarg[0];
    *stride = r == QKV_REDUCE_NONE ? 1 : 0;
    if (r != QKV_REDUCE_MEAN)
        return n->out->grad;
    float *g = qkv__floats(ctx, 1);
    if (g)
        g[0] = n->out->grad[0] / denom;
    return g;
}

/* ---- cross entropy ---- */

/* logits (N, K) -> loss () or (N). saved: lse (N), target (N), weight (K)
 * or NULL; iarg: reduction, ignore_index; farg: smoothing, the mean's
 * denominator (the summed weight of the targets not ignored) */
static void cross_entropy_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *x = n->in[0];
    float *gx = qkv__grad(ctx, x);
    int64_t stride;
    const float *g = upstream(ctx, n, n->farg[1], &stride);
    if (!gx || !g)
        return;
    qkv_k_cross_entropy_backward(gx, g, stride, x->data, n->saved[0], n->saved[1], n->saved[2],
                                 n->iarg[1], n->farg[0], x->shape[0], x->shape[1]);
}

qkv_tensor *qkv_cross_entropy(qkv_ctx *ctx, qkv_tensor *logits, const int64_t *target,
                              const qkv_ce_opts *opts)
{
    QKV_INPUTS("cross_entropy", logits);
    qkv_ce_opts o = opts ? *opts
                         : (qkv_ce_opts){.ignore_index = QKV_NO_IGNORE,
                                         .reduction = QKV_REDUCE_MEAN};
    char s[128];
    if (logits->ndim != 2) {
        qkv_set_error(QKV_ERR_SHAPE, "cross_entropy: logits must be (N, K), has shape %s",
                      qkv_shape_str(logits, s, sizeof s));
        return NULL;
    }
    int64_t N = logits->shape[0], K = logits->shape[1];
    if (!check_reduction("cross_entropy", o.reduction))
        return NULL;
    if (!(o.label_smoothing >= 0.0f && o.label_smoothing <= 1.0f)) {
        qkv_set_error(QKV_ERR_ARG, "cross_entropy: label_smoothing %g is outside [0, 1]",
                      (double)o.label_smoothing);
        return NULL;
    }
    if (N > 0 && !target) {
        qkv_set_error(QKV_ERR_ARG, "cross_entropy: target is NULL");
        return NULL;
    }
    /* the denominator of the mean: PyTorch divides both the NLL and the
     * smoothing term by the summed weight of the targets not ignored */
    double denom = 0;
    for (int64_t i = 0; i < N; i++) {
        int64_t t = target[i];
        if (t == o.ignore_index)
            continue;
        if (t < 0 || t >= K) {
            qkv_set_error(QKV_ERR_ARG,
                          "cross_entropy: target[%lld] = %lld is out of range for %lld classes",
                          (long long)i, (long long)t, (long long)K);
            return NULL;
        }
        denom += o.class_weight ? o.class_weight[t] : 1.0;
    }
    logits = qkv_contiguous(ctx, logits);
    if (!logits)
        return NULL;
    /* the caller's target and weights may be gone by the backward */
    int64_t *tgt = qkv__alloc(ctx, (size_t)(N > 0 ? N : 1) * sizeof(int64_t));
    float *w = o.class_weight ? qkv__floats(ctx, K) : NULL;
    float *lse = qkv__floats(ctx, N), *rows = qkv__floats(ctx, N);
    qkv_tensor *out = o.reduction == QKV_REDUCE_NONE ? qkv__tensor(ctx, 1, &N)
                                                     : qkv__tensor(ctx, 0, NULL);
    if (!tgt || (o.class_weight && !w) || !lse || !rows || !out)
        return NULL;
    if (N > 0)
        memcpy(tgt, target, (size_t)N * sizeof(int64_t));
    if (w)
        memcpy(w, o.class_weight, (size_t)K * sizeof(float));
    qkv_k_cross_entropy_forward(rows, lse, logits->data, tgt, w, o.ignore_index,
                                o.label_smoothing, N, K);
    if (o.reduction == QKV_REDUCE_NONE)
        memcpy(out->data, rows, (size_t)N * sizeof(float));
    else {
        double sum = 0;
        for (int64_t i = 0; i < N; i++)
            sum += rows[i];
        /* all targets ignored: 0 / 0 = NaN, as PyTorch */
        out->data[0] = (float)(o.reduction == QKV_REDUCE_MEAN ? sum / denom : sum);
    }
    qkv_node *n = qkv__record(ctx, QKV_OP_CROSS_ENTROPY, cross_entropy_backward, out, 1, &logits);
    if (n) {
        n->saved[0] = lse;
        n->saved[1] = tgt;
        n->saved[2] = w;
        n->iarg[0] = o.reduction;
        n->iarg[1] = o.ignore_index;
        n->farg[0] = o.label_smoothing;
        n->farg[1] = (float)denom;
    }
    return qkv__done(ctx, QKV_OP_CROSS_ENTROPY, out);
}

/* ---- pointwise losses ---- */

/* pred -> loss () or pred's shape; target (saved[0], contiguous) gets no
 * gradient. iarg: reduction, kind; farg: beta */
static void pointwise_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *pred = n->in[0];
    int64_t m = qkv_numel(pred), stride;
    float *gp = qkv__grad(ctx, pred);
    const float *g = upstream(ctx, n, (float)m, &stride);
    if (!gp || !g)
        return;
    qkv_k_pointwise_loss_backward(gp, (qkv_k_loss)n->iarg[1], g, stride, pred->data,
                                  n->saved[0], n->farg[0], m);
}

static qkv_tensor *pointwise_loss(qkv_ctx *ctx, qkv_op op, qkv_k_loss kind, qkv_tensor *pred,
                                  qkv_tensor *target, float beta, qkv_reduction r)
{
    const char *name = qkv_op_names[op];
    if (!qkv_same_shape(pred, target))
        return qkv__shape_error(name, pred, target, "pred and target must have the same shape");
    if (!check_reduction(name, r))
        return NULL;
    pred = qkv_contiguous(ctx, pred);
    /* detached first, so that making it contiguous records nothing */
    target = qkv_contiguous(ctx, qkv_detach(ctx, target));
    if (!pred || !target)
        return NULL;
    int64_t m = qkv_numel(pred);
    qkv_tensor *out = r == QKV_REDUCE_NONE ? qkv__tensor(ctx, pred->ndim, pred->shape)
                                           : qkv__tensor(ctx, 0, NULL);
    if (!out)
        return NULL;
    if (r == QKV_REDUCE_NONE)
        qkv_k_pointwise_loss(out->data, kind, pred->data, target->data, beta, m);
    else {
        double sum = qkv_k_pointwise_loss_sum(kind, pred->data, target->data, beta, m);
        out->data[0] = (float)(r == QKV_REDUCE_MEAN ? sum / (double)m : sum);
    }
    qkv_node *n = qkv__record(ctx, op, pointwise_backward, out, 1, &pred);
    if (n) {
        n->saved[0] = target->data;
        n->iarg[0] = r;
        n->iarg[1] = kind;
        n->farg[0] = beta;
    }
    return qkv__done(ctx, op, out);
}

qkv_tensor *qkv_mse_loss(qkv_ctx *ctx, qkv_tensor *pred, qkv_tensor *target, qkv_reduction r)
{
    QKV_INPUTS("mse_loss", pred, target);
    return pointwise_loss(ctx, QKV_OP_MSE_LOSS, QKV_K_MSE, pred, target, 0.0f, r);
}

qkv_tensor *qkv_l1_loss(qkv_ctx *ctx, qkv_tensor *pred, qkv_tensor *target, qkv_reduction r)
{
    QKV_INPUTS("l1_loss", pred, target);
    return pointwise_loss(ctx, QKV_OP_L1_LOSS, QKV_K_L1, pred, target, 0.0f, r);
}

qkv_tensor *qkv_smooth_l1_loss(qkv_ctx *ctx, qkv_tensor *pred, qkv_tensor *target, float beta,
                               qkv_reduction r)
{
    QKV_INPUTS("smooth_l1_loss", pred, target);
    if (!(beta >= 0.0f)) {
        qkv_set_error(QKV_ERR_ARG, "smooth_l1_loss: beta %g is negative", (double)beta);
        return NULL;
    }
    /* beta = 0 is L1, as PyTorch (0.5 d^2 / beta would divide by zero) */
    return pointwise_loss(ctx, QKV_OP_SMOOTH_L1_LOSS, beta == 0.0f ? QKV_K_L1 : QKV_K_SMOOTH_L1,
                          pred, target, beta, r);
}
