/* detr_matcher.c - DETR's Hungarian matcher (facebookresearch/detr
 * models/matcher.py): per image, the one-to-one assignment of queries to
 * ground-truth boxes of least cost
 *   C[q, t] = cost_bbox |b_q - b_t|_1 (cxcywh) - cost_class p_q[label_t]
 *             - cost_giou GIoU(xyxy(b_q), xyxy(b_t)),
 * p_q = softmax of query q's logits. It reads plain values (the matching is
 * data-dependent and has no gradient: DESIGN.md) and takes its scratch
 * memory from the context's arena, so a training step calls no malloc. */
#include "../kernels/assignment.h"
#include "../kernels/box.h"
#include "../qkv_internal.h"

#include <math.h>

qkv_detr_loss_opts qkv_detr_loss_defaults(void)
{
    return (qkv_detr_loss_opts){.cost_class = 1.0f,
                                .cost_bbox = 5.0f,
                                .cost_giou = 2.0f,
                                .weight_ce = 1.0f,
                                .weight_bbox = 5.0f,
                                .weight_giou = 2.0f,
                                .eos_coef = 0.1f,
                                .aux_loss = 1,
                                .num_boxes = 0.0f};
}

/* Targets of B images for C = K + 1 logits: labels in [0, K), boxes with
 * w, h >= 0 (DETR asserts valid boxes). */
static qkv_status check_targets(const char *op, const qkv_detr_target *targets, int64_t B,
                                int64_t C)
{
    if (B > 0 && !targets)
        return qkv_set_error(QKV_ERR_ARG, "%s: targets is NULL for %lld images", op,
                             (long long)B);
    for (int64_t b = 0; b < B; b++) {
        const qkv_detr_target *t = &targets[b];
        if (t->n < 0 || (t->n > 0 && (!t->labels || !t->boxes)))
            return qkv_set_error(QKV_ERR_ARG,
                                 "%s: image %lld: %lld targets with a NULL labels or boxes", op,
                                 (long long)b, (long long)t->n);
        for (int64_t i = 0; i < t->n; i++) {
            const float *x = t->boxes + 4 * i;
            if (t->labels[i] < 0 || t->labels[i] >= C - 1)
                return qkv_set_error(QKV_ERR_ARG,
                                     "%s: image %lld: label %lld of target %lld is outside "
                                     "[0, %lld) (the last of the %lld logits is no-object)",
                                     op, (long long)b, (long long)t->labels[i], (long long)i,
                                     (long long)(C - 1), (long long)C);
            if (!(isfinite(x[0]) && isfinite(x[1]) && x[2] >= 0 && x[3] >= 0 &&
                  isfinite(x[2]) && isfinite(x[3])))
                return qkv_set_error(QKV_ERR_ARG,
                                     "%s: image %lld: target box %lld = (%g, %g, %g, %g) is not "
                                     "a finite cxcywh box with w, h >= 0",
                                     op, (long long)b, (long long)i, (double)x[0], (double)x[1],
                                     (double)x[2], (double)x[3]);
        }
    }
    return QKV_OK;
}

/* The values of x (detached, so a copy records nothing), contiguous. */
static const float *values_of(qkv_ctx *ctx, qkv_tensor *x)
{
    qkv_tensor *c = qkv_contiguous(ctx, qkv_detach(ctx, x));
    return c ? c->data : NULL;
}

/* cost (Q, T) of one image: logits (Q, C), pred (Q, 4) cxcywh, its xyxy
 * form pxy (Q, 4), the target's xyxy form txy (T, 4); giou (Q, T) scratch */
static void image_cost(double *cost, float *giou, const float *logits, const float *pred,
                       const float *pxy, const qkv_detr_target *t, const float *txy, int64_t Q,
                       int64_t C, const qkv_detr_loss_opts *o)
{
    int64_t T = t->n;
    qkv_k_box_iou_pairwise(giou, pxy, txy, Q, T, true);
    for (int64_t q = 0; q < Q; q++) {
        const float *x = logits + q * C;
        double m = -INFINITY, s = 0;
        for (int64_t c = 0; c < C; c++)
            m = x[c] > m ? x[c] : m;
        for (int64_t c = 0; c < C; c++)
            s += exp((double)x[c] - m);
        double lse = m + log(s);
        const float *bq = pred + 4 * q;
        for (int64_t j = 0; j < T; j++) {
            const float *bt = t->boxes + 4 * j;
            double l1 = 0;
            for (int k = 0; k < 4; k++)
                l1 += fabs((double)bq[k] - bt[k]);
            double p = exp((double)x[t->labels[j]] - lse);
            cost[q * T + j] = (double)o->cost_bbox * l1 - (double)o->cost_class * p -
                              (double)o->cost_giou * giou[q * T + j];
        }
    }
}

qkv_status qkv_detr_match(qkv_ctx *ctx, qkv_tensor *logits, qkv_tensor *boxes,
                          const qkv_detr_target *targets, const qkv_detr_loss_opts *opts,
                          int64_t *match)
{
    const char *op = "detr_match";
    if (!ctx || !logits || !boxes || !match)
        return qkv_set_error(QKV_ERR_ARG, "%s: NULL argument", op);
    char s1[128], s2[128];
    if (logits->ndim != 3 || boxes->ndim != 3 || boxes->shape[0] != logits->shape[0] ||
        boxes->shape[1] != logits->shape[1] || boxes->shape[2] != 4 || logits->shape[2] < 1)
        return qkv_set_error(QKV_ERR_SHAPE,
                             "%s: pred_logits %s and pred_boxes %s should be (B, Q, K + 1) "
                             "and (B, Q, 4)",
                             op, qkv_shape_str(logits, s1, sizeof s1),
                             qkv_shape_str(boxes, s2, sizeof s2));
    qkv_detr_loss_opts o = opts ? *opts : qkv_detr_loss_defaults();
    int64_t B = logits->shape[0], Q = logits->shape[1], C = logits->shape[2];
    qkv_status st = check_targets(op, targets, B, C);
    if (st != QKV_OK)
        return st;
    const float *lg = values_of(ctx, logits), *bx = values_of(ctx, boxes);
    int64_t Tmax = 0;
    for (int64_t b = 0; b < B; b++)
        Tmax = targets[b].n > Tmax ? targets[b].n : Tmax;
    int64_t k = Q < Tmax ? Q : Tmax;
    float *pxy = qkv__floats(ctx, 4 * Q), *txy = qkv__floats(ctx, 4 * Tmax);
    float *giou = qkv__floats(ctx, Q * Tmax);
    double *cost = qkv__alloc(ctx, sizeof(double) * (size_t)(Q * Tmax > 0 ? Q * Tmax : 1));
    int64_t *rows = qkv__alloc(ctx, sizeof(int64_t) * (size_t)(k > 0 ? k : 1));
    int64_t *cols = qkv__alloc(ctx, sizeof(int64_t) * (size_t)(k > 0 ? k : 1));
    void *work = qkv__alloc(ctx, qkv_k_lsa_workspace(Q, Tmax) + 8);
    if (!lg || !bx)
        return qkv_error_status();
    if (!pxy || !txy || !giou || !cost || !rows || !cols || !work)
        return qkv_set_error(QKV_ERR_NOMEM, "%s: out of memory for %lld queries", op,
                             (long long)Q);
    for (int64_t b = 0; b < B; b++) {
        const qkv_detr_target *t = &targets[b];
        int64_t *mb = match + b * Q;
        for (int64_t q = 0; q < Q; q++)
            mb[q] = -1;
        if (t->n == 0 || Q == 0)
            continue;
        const float *pred = bx + b * Q * 4;
        qkv_k_box_cxcywh_to_xyxy(pxy, pred, Q);
        qkv_k_box_cxcywh_to_xyxy(txy, t->boxes, t->n);
        for (int64_t q = 0; q < Q; q++)
            if (!(pxy[4 * q + 2] >= pxy[4 * q] && pxy[4 * q + 3] >= pxy[4 * q + 1]))
                return qkv_set_error(QKV_ERR_ARG,
                                     "%s: image %lld: predicted box %lld = (%g, %g, %g, %g) "
                                     "is not a cxcywh box with w, h >= 0",
                                     op, (long long)b, (long long)q, (double)pred[4 * q],
                                     (double)pred[4 * q + 1], (double)pred[4 * q + 2],
                                     (double)pred[4 * q + 3]);
        image_cost(cost, giou, lg + b * Q * C, pred, pxy, t, txy, Q, C, &o);
        int64_t bad = -1;
        qkv_k_lsa_status ls =
            qkv_k_linear_sum_assignment(rows, cols, cost, Q, t->n, work, &bad);
        if (ls == QKV_K_LSA_INVALID)
            return qkv_set_error(QKV_ERR_NAN,
                                 "%s: image %lld: the cost of query %lld and target %lld is "
                                 "%g (pred_logits hold a NaN or infinity)",
                                 op, (long long)b, (long long)(bad / t->n),
                                 (long long)(bad % t->n), cost[bad]);
        if (ls != QKV_K_LSA_OK)
            return qkv_set_error(QKV_ERR_NAN, "%s: image %lld: no finite matching", op,
                                 (long long)b);
        int64_t kb = Q < t->n ? Q : t->n;
        for (int64_t p = 0; p < kb; p++)
            mb[rows[p]] = cols[p];
    }
    return QKV_OK;
}
