/* ops_loss.c - cross entropy (PyTorch's F.cross_entropy with class
 * indices: class weights, ignore_index, label smoothing, reductions) and
 * the pointwise regression losses MSE, L1 and smooth L1. */
#include "../kernels/kernels.h"
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

/* Checks the options and targets of a cross entropy over K classes and
 * N rows; *denom = the mean's denominator, the summed weight of the
 * targets not ignored (PyTorch divides both the NLL and the smoothing term
 * by it). false with the error set. */
static bool ce_check(const char *op, const qkv_ce_opts *o, const int64_t *target, int64_t N,
                     int64_t K, double *denom)
{
    if (!check_reduction(op, o->reduction))
        return false;
    if (!(o->label_smoothing >= 0.0f && o->label_smoothing <= 1.0f)) {
        qkv_set_error(QKV_ERR_ARG, "%s: label_smoothing %g is outside [0, 1]", op,
                      (double)o->label_smoothing);
        return false;
    }
    if (N > 0 && !target) {
        qkv_set_error(QKV_ERR_ARG, "%s: target is NULL", op);
        return false;
    }
    *denom = 0;
    for (int64_t i = 0; i < N; i++) {
        int64_t t = target[i];
        if (t == o->ignore_index)
            continue;
        if (t < 0 || t >= K) {
            qkv_set_error(QKV_ERR_ARG, "%s: target[%lld] = %lld is out of range for %lld classes",
                          op, (long long)i, (long long)t, (long long)K);
            return false;
        }
        *denom += o->class_weight ? o->class_weight[t] : 1.0;
    }
    return true;
}

static const qkv_ce_opts ce_defaults = {.ignore_index = QKV_NO_IGNORE,
                                        .reduction = QKV_REDUCE_MEAN};

qkv_tensor *qkv_cross_entropy(qkv_ctx *ctx, qkv_tensor *logits, const int64_t *target,
                              const qkv_ce_opts *opts)
{
    QKV_INPUTS("cross_entropy", logits);
    qkv_ce_opts o = opts ? *opts : ce_defaults;
    char s[128];
    if (logits->ndim != 2) {
        qkv_set_error(QKV_ERR_SHAPE, "cross_entropy: logits must be (N, K), has shape %s",
                      qkv_shape_str(logits, s, sizeof s));
        return NULL;
    }
    int64_t N = logits->shape[0], K = logits->shape[1];
    double denom;
    if (!ce_check("cross_entropy", &o, target, N, K, &denom))
        return NULL;
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

/* ---- the output layer and its cross entropy, fused ---- */

/* The logits are made this many bytes of rows at a time (at least a row):
 * large enough that the weight's gradient, accumulated block by block, is
 * not read and written too often (the large Transformer's step, one
 * thread, loaded machine: 13.3 s of CPU with 8 MiB, 12.0-12.2 with 32 or
 * 96, 11.5-12.3 for the two ops), small beside the logits. */
size_t qkv__lce_block_bytes = (size_t)32 << 20;

/* x (R, in), w (K, in), bias (K) -> loss (). saved: the gradients of x, w
 * and bias for an upstream gradient of 1 (any of them NULL when not
 * wanted), made by the forward; the backward scales them by the upstream
 * gradient. */
static void linear_ce_backward(qkv_ctx *ctx, qkv_node *n)
{
    float s = n->out->grad[0];
    for (int i = 0; i < 3; i++) {
        const float *unit = n->saved[i];
        if (!unit || !qkv__wants(n, i))
            continue;
        bool acc = true;
        float *g = i == 0 ? qkv__grad_for_write(ctx, n->in[0], &acc) : qkv__grad(ctx, n->in[i]);
        if (!g)
            return;
        int64_t m = qkv_numel(n->in[i]);
        if (acc) {
#pragma omp parallel for simd if (m > 65536) schedule(static)
            for (int64_t k = 0; k < m; k++)
                g[k] += s * unit[k];
        } else {
#pragma omp parallel for simd if (m > 65536) schedule(static)
            for (int64_t k = 0; k < m; k++)
                g[k] = s * unit[k];
        }
    }
}

/* db (K) += the sum of the c rows of G (c, K) */
static void add_row_sums(float *db, const float *G, int64_t c, int64_t K)
{
#pragma omp parallel for if (c * K > (1 << 18)) schedule(static)
    for (int64_t j0 = 0; j0 < K; j0 += 256) {
        int64_t j1 = j0 + 256 < K ? j0 + 256 : K;
        for (int64_t r = 0; r < c; r++) {
            const float *g = G + r * K;
#pragma omp simd
            for (int64_t j = j0; j < j1; j++)
                db[j] += g[j];
        }
    }
}

qkv_tensor *qkv_linear_cross_entropy(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *w,
                                     qkv_tensor *bias, const int64_t *target,
                                     const qkv_ce_opts *opts)
{
    static const char op[] = "linear_cross_entropy";
    QKV_INPUTS(op, x, w);
    qkv_ce_opts o = opts ? *opts : ce_defaults;
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
        return qkv__shape_error(op, x, w, "input's last size must equal weight's (K, in) in");
    if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0]))
        return qkv__shape_error(op, w, bias, "bias must be (K)");
    if (o.reduction == QKV_REDUCE_NONE) {
        /* a loss per row takes an upstream gradient per row, which cannot
         * scale gradients summed over the rows: the two ops */
        qkv_tensor *in = x->ndim == 2 ? x : qkv_reshape(ctx, x, 2, (int64_t[]){-1, w->shape[1]});
        return qkv_cross_entropy(ctx, qkv_linear(ctx, in, w, bias), target, &o);
    }
    if (!qkv_is_contiguous(w) || (bias && !qkv_is_contiguous(bias))) {
        qkv_set_error(QKV_ERR_ARG, "%s: weight and bias must be contiguous", op);
        return NULL;
    }
    int64_t in = w->shape[1], K = w->shape[0], R = in ? qkv_numel(x) / in : 0;
    double denom;
    if (!ce_check(op, &o, target, R, K, &denom))
        return NULL;
    x = qkv_contiguous(ctx, x);
    if (!x)
        return NULL;
    bool grad = qkv_grad_enabled(ctx) &&
                (x->requires_grad || w->requires_grad || (bias && bias->requires_grad));
    int64_t rows = (int64_t)(qkv__lce_block_bytes / sizeof(float) / (size_t)(K > 0 ? K : 1));
    rows = rows < 1 ? 1 : rows > R ? (R > 0 ? R : 1) : rows;
    float *L = qkv__floats(ctx, rows * K), *loss = qkv__floats(ctx, rows);
    float *lse = qkv__floats(ctx, rows);
    float *dx = grad && x->requires_grad ? qkv__floats(ctx, R * in) : NULL;
    float *dw = grad && w->requires_grad ? qkv__floats(ctx, K * in) : NULL;
    float *db = grad && bias && bias->requires_grad ? qkv__floats(ctx, K) : NULL;
    qkv_tensor *out = qkv__tensor(ctx, 0, NULL);
    if (!L || !loss || !lse || !out || (grad && x->requires_grad && !dx) ||
        (grad && w->requires_grad && !dw) || (grad && bias && bias->requires_grad && !db))
        return NULL;
    if (db)
        memset(db, 0, (size_t)K * sizeof(float));
    if (dw && R == 0)
        memset(dw, 0, (size_t)(K * in) * sizeof(float));
    /* the upstream gradient 1, through the mean's denominator */
    float unit = o.reduction == QKV_REDUCE_MEAN ? (float)(1.0 / denom) : 1.0f;
    double sum = 0;
    for (int64_t r0 = 0; r0 < R; r0 += rows) {
        int64_t c = R - r0 < rows ? R - r0 : rows;
        const float *xr = x->data + r0 * in;
        const int64_t *tr = target + r0;
        /* L (c, K) = x_r w^T + bias */
        if (bias)
            for (int64_t r = 0; r < c; r++)
                memcpy(L + r * K, bias->data, (size_t)K * sizeof(float));
        qkv_k_gemm(false, true, c, K, in, 1.0f, xr, in, w->data, in, bias ? 1.0f : 0.0f, L, K);
        qkv_k_cross_entropy_forward(loss, lse, L, tr, o.class_weight, o.ignore_index,
                                    o.label_smoothing, c, K);
        for (int64_t r = 0; r < c; r++)
            sum += loss[r];
        if (!grad)
            continue;
        /* the logits become their gradient G (c, K) in place; then
         * dx_r = G w, dw += G^T x_r, db += G's row sums */
        qkv_k_cross_entropy_grad(L, unit, L, lse, tr, o.class_weight, o.ignore_index,
                                 o.label_smoothing, c, K);
        if (dx)
            qkv_k_gemm(false, false, c, in, K, 1.0f, L, K, w->data, in, 0.0f, dx + r0 * in, in);
        if (dw)
            qkv_k_gemm(true, false, K, in, c, 1.0f, L, K, xr, in, r0 ? 1.0f : 0.0f, dw, in);
        if (db)
            add_row_sums(db, L, c, K);
    }
    /* all targets ignored: 0 / 0 = NaN, as PyTorch */
    out->data[0] = (float)(o.reduction == QKV_REDUCE_MEAN ? sum / denom : sum);
    /* the block of logits is dead: later tensors may reuse it */
    qkv__arena_release(ctx->arena, L, (size_t)(rows * K) * sizeof(float));
    qkv_node *n = grad ? qkv__record(ctx, QKV_OP_LINEAR_CROSS_ENTROPY, linear_ce_backward, out,
                                     3, (qkv_tensor *[]){x, w, bias})
                       : NULL;
    if (n) {
        n->saved[0] = dx;
        n->saved[1] = dw;
        n->saved[2] = db;
    }
    return qkv__done(ctx, QKV_OP_LINEAR_CROSS_ENTROPY, out);
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
