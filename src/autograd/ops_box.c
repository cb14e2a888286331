/* ops_box.c - bounding-box ops with gradients: the cxcywh <-> xyxy forms,
 * pairwise IoU and generalized IoU (torchvision's box_iou, DETR's
 * generalized_box_iou) and the GIoU loss of paired rows (DETR's
 * 1 - diag(generalized_box_iou), torchvision's generalized_box_iou_loss
 * with its eps). The backward rules recompute each pair from the inputs,
 * which the node keeps (contiguous); nothing else is saved. */
#include "../kernels/box.h"
#include "../qkv_internal.h"

#include <math.h>

/* x (..., 4), or (N, 4) when `pairwise` */
static bool check_boxes_shape(const char *op, const char *what, const qkv_tensor *x,
                              bool pairwise)
{
    if (x->ndim >= 1 && x->shape[x->ndim - 1] == 4 && (!pairwise || x->ndim == 2))
        return true;
    char s[128];
    qkv_set_error(QKV_ERR_SHAPE, "%s: %s must be %s, has shape %s", op, what,
                  pairwise ? "(N, 4)" : "(..., 4)", qkv_shape_str(x, s, sizeof s));
    return false;
}

/* GIoU divides by the enclosing area: DETR asserts x1 >= x0 and y1 >= y0
 * (a NaN corner fails it too); qkv says which box broke it */
static bool check_boxes_valid(const char *op, const char *what, const qkv_tensor *x)
{
    int64_t n = qkv_numel(x) / 4;
    for (int64_t i = 0; i < n; i++) {
        const float *b = x->data + 4 * i;
        if (!(b[2] >= b[0] && b[3] >= b[1])) {
            qkv_set_error(QKV_ERR_ARG,
                          "%s: %s box %lld = (%g, %g, %g, %g) is degenerate (needs x1 >= x0 "
                          "and y1 >= y0, xyxy)",
                          op, what, (long long)i, (double)b[0], (double)b[1], (double)b[2],
                          (double)b[3]);
            return false;
        }
    }
    return true;
}

/* ---- coordinate forms ---- */

static void convert_backward(qkv_ctx *ctx, qkv_node *n)
{
    float *dx = qkv__grad(ctx, n->in[0]);
    if (!dx)
        return;
    int64_t nb = qkv_numel(n->out) / 4;
    if (n->op == QKV_OP_BOX_CXCYWH_TO_XYXY)
        qkv_k_box_cxcywh_to_xyxy_backward(dx, n->out->grad, nb);
    else
        qkv_k_box_xyxy_to_cxcywh_backward(dx, n->out->grad, nb);
}

/* x (..., 4) -> (..., 4) */
static qkv_tensor *convert(qkv_ctx *ctx, qkv_op op, qkv_tensor *x)
{
    const char *name = qkv_op_names[op];
    QKV_INPUTS(name, x);
    if (!check_boxes_shape(name, "boxes", x, false))
        return NULL;
    x = qkv_contiguous(ctx, x);
    qkv_tensor *out = x ? qkv__tensor(ctx, x->ndim, x->shape) : NULL;
    if (!out)
        return NULL;
    int64_t nb = qkv_numel(x) / 4;
    if (op == QKV_OP_BOX_CXCYWH_TO_XYXY)
        qkv_k_box_cxcywh_to_xyxy(out->data, x->data, nb);
    else
        qkv_k_box_xyxy_to_cxcywh(out->data, x->data, nb);
    qkv__record(ctx, op, convert_backward, out, 1, &x);
    return qkv__done(ctx, op, out);
}

qkv_tensor *qkv_box_cxcywh_to_xyxy(qkv_ctx *ctx, qkv_tensor *x)
{
    return convert(ctx, QKV_OP_BOX_CXCYWH_TO_XYXY, x);
}

qkv_tensor *qkv_box_xyxy_to_cxcywh(qkv_ctx *ctx, qkv_tensor *x)
{
    return convert(ctx, QKV_OP_BOX_XYXY_TO_CXCYWH, x);
}

/* ---- pairwise IoU, GIoU ---- */

/* a (N, 4), b (M, 4) -> out (N, M); iarg[0]: generalized */
static void pairwise_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *a = n->in[0], *b = n->in[1];
    float *da = qkv__wants(n, 0) ? qkv__grad(ctx, a) : NULL;
    float *db = qkv__wants(n, 1) ? qkv__grad(ctx, b) : NULL;
    if ((qkv__wants(n, 0) && !da) || (qkv__wants(n, 1) && !db))
        return;
    qkv_k_box_iou_pairwise_backward(da, db, n->out->grad, a->data, b->data, a->shape[0],
                                    b->shape[0], n->iarg[0] != 0);
}

static qkv_tensor *pairwise(qkv_ctx *ctx, qkv_op op, qkv_tensor *a, qkv_tensor *b)
{
    const char *name = qkv_op_names[op];
    QKV_INPUTS(name, a, b);
    bool generalized = op == QKV_OP_GENERALIZED_BOX_IOU;
    if (!check_boxes_shape(name, "boxes1", a, true) || !check_boxes_shape(name, "boxes2", b, true))
        return NULL;
    a = qkv_contiguous(ctx, a);
    b = a ? qkv_contiguous(ctx, b) : NULL;
    if (!b)
        return NULL;
    if (generalized &&
        (!check_boxes_valid(name, "boxes1", a) || !check_boxes_valid(name, "boxes2", b)))
        return NULL;
    int64_t N = a->shape[0], M = b->shape[0];
    qkv_tensor *out = qkv__tensor(ctx, 2, (int64_t[]){N, M});
    if (!out)
        return NULL;
    qkv_k_box_iou_pairwise(out->data, a->data, b->data, N, M, generalized);
    qkv_node *n = qkv__record(ctx, op, pairwise_backward, out, 2, (qkv_tensor *[]){a, b});
    if (n)
        n->iarg[0] = generalized;
    return qkv__done(ctx, op, out);
}

qkv_tensor *qkv_box_iou(qkv_ctx *ctx, qkv_tensor *boxes1, qkv_tensor *boxes2)
{
    return pairwise(ctx, QKV_OP_BOX_IOU, boxes1, boxes2);
}

qkv_tensor *qkv_generalized_box_iou(qkv_ctx *ctx, qkv_tensor *boxes1, qkv_tensor *boxes2)
{
    return pairwise(ctx, QKV_OP_GENERALIZED_BOX_IOU, boxes1, boxes2);
}

/* ---- GIoU loss of paired rows ---- */

/* a, b (..., 4) -> () or (...); iarg[0]: reduction; farg[0]: eps */
static void giou_loss_backward(qkv_ctx *ctx, qkv_node *n)
{
    qkv_tensor *a = n->in[0], *b = n->in[1];
    int64_t nb = qkv_numel(a) / 4, stride = 1;
    float *da = qkv__wants(n, 0) ? qkv__grad(ctx, a) : NULL;
    float *db = qkv__wants(n, 1) ? qkv__grad(ctx, b) : NULL;
    if ((qkv__wants(n, 0) && !da) || (qkv__wants(n, 1) && !db))
        return;
    const float *g = n->out->grad;
    float gm;
    if (n->iarg[0] != QKV_REDUCE_NONE) {
        stride = 0;
        if (n->iarg[0] == QKV_REDUCE_MEAN) {
            gm = nb > 0 ? g[0] / (float)nb : 0.0f;
            g = &gm;
        }
    }
    qkv_k_giou_loss_backward(da, db, g, stride, a->data, b->data, nb, n->farg[0]);
}

qkv_tensor *qkv_giou_loss(qkv_ctx *ctx, qkv_tensor *boxes1, qkv_tensor *boxes2, float eps,
                          qkv_reduction r)
{
    const char *name = "giou_loss";
    QKV_INPUTS(name, boxes1, boxes2);
    if (!check_boxes_shape(name, "boxes1", boxes1, false))
        return NULL;
    if (!qkv_same_shape(boxes1, boxes2))
        return qkv__shape_error(name, boxes1, boxes2, "boxes1 and boxes2 must have the same shape");
    if (r != QKV_REDUCE_MEAN && r != QKV_REDUCE_SUM && r != QKV_REDUCE_NONE) {
        qkv_set_error(QKV_ERR_ARG, "%s: unknown reduction %d", name, (int)r);
        return NULL;
    }
    if (!(eps >= 0.0f)) {
        qkv_set_error(QKV_ERR_ARG, "%s: eps %g is negative", name, (double)eps);
        return NULL;
    }
    qkv_tensor *a = qkv_contiguous(ctx, boxes1);
    qkv_tensor *b = a ? qkv_contiguous(ctx, boxes2) : NULL;
    if (!b || !check_boxes_valid(name, "boxes1", a) || !check_boxes_valid(name, "boxes2", b))
        return NULL;
    int64_t nb = qkv_numel(a) / 4;
    qkv_tensor *out = r == QKV_REDUCE_NONE ? qkv__tensor(ctx, a->ndim - 1, a->shape)
                                           : qkv__tensor(ctx, 0, NULL);
    if (!out)
        return NULL;
    if (r == QKV_REDUCE_NONE)
        qkv_k_giou_loss(out->data, a->data, b->data, nb, eps);
    else {
        double s = qkv_k_giou_loss_sum(a->data, b->data, nb, eps);
        /* the mean of no rows is 0, as torchvision's (0 * sum) */
        out->data[0] = (float)(r == QKV_REDUCE_SUM ? s : nb > 0 ? s / (double)nb : 0.0);
    }
    qkv_node *n = qkv__record(ctx, QKV_OP_GIOU_LOSS, giou_loss_backward, out, 2,
                              (qkv_tensor *[]){a, b});
    if (n) {
        n->iarg[0] = r;
        n->farg[0] = eps;
    }
    return qkv__done(ctx, QKV_OP_GIOU_LOSS, out);
}
