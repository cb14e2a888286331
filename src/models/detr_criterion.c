/* detr_criterion.c - DETR's set criterion (facebookresearch/detr
 * models/detr.py, SetCriterion with the losses labels, boxes and
 * cardinality): for each decoder layer, match the queries to the targets
 * anew (qkv_detr_match), then
 *   loss_ce   = cross entropy of every query against its matched label or
 *               no-object, class weights 1 with eos_coef for no-object,
 *               as a weighted mean,
 *   loss_bbox = sum over matched pairs of |b_q - b_t|_1 (cxcywh) / num_boxes,
 *   loss_giou = sum over matched pairs of 1 - GIoU(xyxy) / num_boxes,
 * and the layer adds weight_ce loss_ce + weight_bbox loss_bbox +
 * weight_giou loss_giou to the total. The losses are ops on the tape; the
 * matching and the logged errors are plain values. */
#include "../qkv_internal.h"

#include <math.h>

/* The loss of one layer: logits (B Q, C), boxes (B Q, 4) on the tape,
 * match (B Q) as qkv_detr_match gives it. Writes the three unweighted terms
 * into terms[3] and returns the weighted sum (a scalar on the tape). */
static qkv_tensor *layer_loss(qkv_ctx *ctx, qkv_tensor *logits, qkv_tensor *boxes,
                              const int64_t *match, const qkv_detr_target *targets, int64_t B,
                              int64_t Q, const float *class_weight, float num_boxes,
                              const qkv_detr_loss_opts *o, float *terms)
{
    int64_t C = logits->shape[1], n = 0;
    int64_t *classes = qkv__alloc(ctx, sizeof(int64_t) * (size_t)(B * Q > 0 ? B * Q : 1));
    int64_t *rows = qkv__alloc(ctx, sizeof(int64_t) * (size_t)(B * Q > 0 ? B * Q : 1));
    if (!classes || !rows)
        return NULL;
    for (int64_t b = 0; b < B; b++)
        for (int64_t q = 0; q < Q; q++) {
            int64_t t = match[b * Q + q];
            classes[b * Q + q] = t < 0 ? C - 1 : targets[b].labels[t];
            if (t >= 0)
                rows[n++] = b * Q + q;
        }
    /* matched pairs in image order, then query order (DETR's
     * _get_src_permutation_idx): the summation order of PyTorch */
    qkv_tensor *ce = qkv_cross_entropy(ctx, logits, classes,
                                       &(qkv_ce_opts){.class_weight = class_weight,
                                                      .ignore_index = QKV_NO_IGNORE,
                                                      .reduction = QKV_REDUCE_MEAN});
    qkv_tensor *l1, *giou;
    if (n > 0) {
        qkv_tensor *tgt = qkv__tensor(ctx, 2, (int64_t[]){n, 4});
        if (!tgt)
            return NULL;
        for (int64_t p = 0; p < n; p++) {
            int64_t b = rows[p] / Q;
            memcpy(tgt->data + 4 * p, targets[b].boxes + 4 * match[rows[p]], 4 * sizeof(float));
        }
        qkv_tensor *src = qkv_index_select(ctx, boxes, 0, rows, n);
        l1 = qkv_scale(ctx, qkv_l1_loss(ctx, src, tgt, QKV_REDUCE_SUM), 1.0f / num_boxes);
        giou = qkv_scale(ctx,
                         qkv_giou_loss(ctx, qkv_box_cxcywh_to_xyxy(ctx, src),
                                       qkv_box_cxcywh_to_xyxy(ctx, tgt), 0.0f, QKV_REDUCE_SUM),
                         1.0f / num_boxes);
    } else { /* no target in the batch: both box losses are 0 */
        l1 = qkv_zeros(ctx, 0, NULL);
        giou = qkv_zeros(ctx, 0, NULL);
    }
    if (!ce || !l1 || !giou)
        return NULL;
    terms[0] = ce->data[0];
    terms[1] = l1->data[0];
    terms[2] = giou->data[0];
    return qkv_add(ctx,
                   qkv_add(ctx, qkv_scale(ctx, ce, o->weight_ce),
                           qkv_scale(ctx, l1, o->weight_bbox)),
                   qkv_scale(ctx, giou, o->weight_giou));
}

/* DETR's logged errors of the last layer: class_error (100 - top-1
 * accuracy of the matched queries, 100 when none is matched) and
 * cardinality_error (mean over images of |queries whose argmax is not
 * no-object - targets|). logits (B, Q, C) values. */
static void log_errors(qkv_detr_loss_log *log, const float *logits, const int64_t *match,
                       const qkv_detr_target *targets, int64_t B, int64_t Q, int64_t C)
{
    int64_t matched = 0, correct = 0;
    double card = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t nonempty = 0;
        for (int64_t q = 0; q < Q; q++) {
            const float *x = logits + (b * Q + q) * C;
            int64_t arg = 0; /* the first maximum, as torch.argmax */
            for (int64_t c = 1; c < C; c++)
                if (x[c] > x[arg])
                    arg = c;
            nonempty += arg != C - 1;
            int64_t t = match[b * Q + q];
            if (t >= 0) {
                matched++;
                correct += arg == targets[b].labels[t];
            }
        }
        card += fabs((double)(nonempty - targets[b].n));
    }
    log->class_error = (float)(matched ? 100.0 - 100.0 * (double)correct / (double)matched : 100.0);
    log->cardinality_error = (float)(B ? card / (double)B : 0.0);
}

qkv_tensor *qkv_detr_loss(qkv_ctx *ctx, qkv_tensor *logits, qkv_tensor *boxes,
                          const qkv_detr_target *targets, const qkv_detr_loss_opts *opts,
                          qkv_detr_loss_log *log)
{
    QKV_INPUTS("detr_loss", logits, boxes);
    char s1[128], s2[128];
    bool stacked = logits->ndim == 4;
    if ((logits->ndim != 3 && logits->ndim != 4) || boxes->ndim != logits->ndim ||
        boxes->shape[boxes->ndim - 1] != 4 || logits->shape[logits->ndim - 1] < 2 ||
        boxes->shape[0] != logits->shape[0] || boxes->shape[1] != logits->shape[1] ||
        (stacked && (boxes->shape[2] != logits->shape[2] || logits->shape[0] < 1))) {
        qkv_set_error(QKV_ERR_SHAPE,
                      "detr_loss: pred_logits %s and pred_boxes %s should be (L, B, Q, K + 1) "
                      "and (L, B, Q, 4), or (B, Q, K + 1) and (B, Q, 4), K >= 1",
                      qkv_shape_str(logits, s1, sizeof s1), qkv_shape_str(boxes, s2, sizeof s2));
        return NULL;
    }
    qkv_detr_loss_opts o = opts ? *opts : qkv_detr_loss_defaults();
    int64_t L = stacked ? logits->shape[0] : 1, B = logits->shape[stacked];
    int64_t Q = logits->shape[stacked + 1], C = logits->shape[logits->ndim - 1];
    if (!(o.eos_coef >= 0.0f) || !(o.num_boxes >= 0.0f)) {
        qkv_set_error(QKV_ERR_ARG, "detr_loss: eos_coef %g and num_boxes %g must be >= 0",
                      (double)o.eos_coef, (double)o.num_boxes);
        return NULL;
    }
    /* the normaliser: the batch's boxes (one process), at least 1 */
    double count = 0;
    for (int64_t b = 0; b < B && targets; b++)
        count += (double)targets[b].n;
    float num_boxes = o.num_boxes > 0.0f ? o.num_boxes : (float)(count > 1 ? count : 1);
    float *cw = qkv__floats(ctx, C);
    int64_t *match = qkv__alloc(ctx, sizeof(int64_t) * (size_t)(B * Q > 0 ? B * Q : 1));
    int64_t first = o.aux_loss ? 0 : L - 1;
    float *terms = qkv__floats(ctx, 3 * (L - first));
    logits = qkv_contiguous(ctx, logits);
    boxes = qkv_contiguous(ctx, boxes);
    if (!cw || !match || !terms || !logits || !boxes)
        return NULL;
    for (int64_t c = 0; c < C; c++)
        cw[c] = c == C - 1 ? o.eos_coef : 1.0f;
    qkv_tensor *total = NULL;
    for (int64_t l = first; l < L; l++) {
        qkv_tensor *lg = stacked ? qkv_slice(ctx, logits, 0, l, l + 1, 1) : logits;
        qkv_tensor *bx = stacked ? qkv_slice(ctx, boxes, 0, l, l + 1, 1) : boxes;
        lg = qkv_reshape(ctx, lg, 3, (int64_t[]){B, Q, C});
        bx = qkv_reshape(ctx, bx, 3, (int64_t[]){B, Q, 4});
        if (!lg || !bx || qkv_detr_match(ctx, lg, bx, targets, &o, match) != QKV_OK)
            return NULL;
        if (log && l == L - 1)
            log_errors(log, lg->data, match, targets, B, Q, C);
        qkv_tensor *lg2 = qkv_reshape(ctx, lg, 2, (int64_t[]){B * Q, C});
        qkv_tensor *bx2 = qkv_reshape(ctx, bx, 2, (int64_t[]){B * Q, 4});
        qkv_tensor *one = lg2 && bx2 ? layer_loss(ctx, lg2, bx2, match, targets, B, Q, cw,
                                                  num_boxes, &o, terms + 3 * (l - first))
                                     : NULL;
        if (!one)
            return NULL;
        total = total ? qkv_add(ctx, total, one) : one;
        if (!total)
            return NULL;
    }
    if (log) {
        const float *last = terms + 3 * (L - 1 - first);
        log->loss_ce = last[0];
        log->loss_bbox = last[1];
        log->loss_giou = last[2];
        log->num_boxes = num_boxes;
        log->n_layers = L - first;
        log->layers = terms;
    }
    return total;
}
