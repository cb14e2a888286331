/* test_box.c - the box ops: cxcywh <-> xyxy, pairwise IoU and GIoU, the
 * GIoU loss. Gradient checks by central differences (boxes kept away from
 * the kinks, where a difference quotient straddles two rules), PyTorch
 * parity against torchvision and DETR's box_ops (forward and backward, with
 * shared corners so that PyTorch's half-and-half rule at max/min ties is
 * checked too), the math by hand, and the errors. Tolerances are 2-5 times
 * the worst error measured with QKV_TEST_SLACK=1 (docs/testing.md). */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* n xyxy boxes with random corners: x0 in [0, 0.6), w in [0.1, 0.8) */
static gc_input boxes_xyxy(qkv_rng *r, int64_t n, bool grad)
{
    gc_input in = gc_rand(r, 2, SHAPE(n, 4), 0, 1, grad);
    for (int64_t i = 0; i < n; i++) {
        float *b = in.data + 4 * i;
        b[0] = 0.6f * b[0];
        b[1] = 0.6f * b[1];
        b[2] = b[0] + 0.1f + 0.7f * b[2];
        b[3] = b[1] + 0.1f + 0.7f * b[3];
    }
    return in;
}

/* ---- coordinate forms ---- */

static qkv_tensor *f_to_xyxy(qkv_ctx *c, qkv_tensor **t, void *u)
{
    /* stored (4, n), used as its (n, 4) transpose: a strided input */
    return qkv_box_cxcywh_to_xyxy(c, qkv_transpose(c, t[0], 0, 1));
}

static qkv_tensor *f_to_cxcywh(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_box_xyxy_to_cxcywh(c, t[0]);
}

TEST(gradcheck_box_conversions)
{
    qkv_rng r;
    qkv_rng_seed(&r, 51);
    gc_input a[1] = {gc_rand(&r, 2, SHAPE(4, 5), -1, 1, true)};
    CHECK_GRAD(f_to_xyxy, 1, a, NULL, 1e-5, 1e-3);
    gc_free(1, a);
    gc_input b[1] = {gc_rand(&r, 3, SHAPE(2, 3, 4), -1, 1, true)};
    CHECK_GRAD(f_to_cxcywh, 1, b, NULL, 1e-5, 1e-3);
    gc_free(1, b);
}

TEST(box_conversions_invert_each_other)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_from_data(ctx, 2, SHAPE(2, 4),
                                  (float[]){0.5f, 0.25f, 0.5f, 0.25f, 0.1f, 0.9f, 0.2f, 0.1f});
    qkv_tensor *y = qkv_box_cxcywh_to_xyxy(ctx, x);
    qkv_tensor *want = qkv_from_data(ctx, 2, SHAPE(2, 4),
                                     (float[]){0.25f, 0.125f, 0.75f, 0.375f, 0.0f, 0.85f, 0.2f,
                                               0.95f});
    CHECK_CLOSE(y, want, 0, 5e-7);
    CHECK_CLOSE(qkv_box_xyxy_to_cxcywh(ctx, y), x, 0, 1e-6);
    qkv_ctx_free(ctx);
}

/* ---- IoU, GIoU ---- */

static qkv_tensor *f_iou(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return *(int *)u ? qkv_generalized_box_iou(c, t[0], t[1]) : qkv_box_iou(c, t[0], t[1]);
}

TEST(gradcheck_box_iou_and_giou)
{
    qkv_rng r;
    qkv_rng_seed(&r, 52);
    gc_input in[2] = {boxes_xyxy(&r, 5, true), boxes_xyxy(&r, 4, true)};
    /* one pair apart: IoU 0 (its gradient too), GIoU still pulls */
    float far[4] = {2.0f, 2.0f, 2.4f, 2.7f};
    memcpy(in[1].data + 4, far, sizeof far);
    for (int generalized = 0; generalized < 2; generalized++)
        CHECK_GRAD(f_iou, 2, in, &generalized, 1e-5, 1e-3);
    gc_free(2, in);
}

TEST(box_iou_by_hand)
{
    /* a = [0,0,2,2], b = [1,1,3,4]: I = 1, U = 4 + 6 - 1 = 9, E = 3 x 4 = 12 */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_from_data(ctx, 2, SHAPE(1, 4), (float[]){0, 0, 2, 2});
    qkv_tensor *b = qkv_from_data(ctx, 2, SHAPE(2, 4), (float[]){1, 1, 3, 4, 0, 0, 2, 2});
    qkv_tensor *iou = qkv_box_iou(ctx, a, b), *giou = qkv_generalized_box_iou(ctx, a, b);
    REQUIRE(iou && giou, "%s", qkv_error());
    CHECK(iou->shape[0] == 1 && iou->shape[1] == 2, "shape");
    CHECK_SCALAR(iou->data[0], 1.0 / 9, 0, 1e-7);
    CHECK_SCALAR(iou->data[1], 1.0, 0, 1e-7);
    CHECK_SCALAR(giou->data[0], 1.0 / 9 - (12.0 - 9) / 12, 0, 1e-7);
    CHECK_SCALAR(giou->data[1], 1.0, 0, 1e-7);
    /* the loss of the two pairs, with torchvision's eps */
    qkv_tensor *bb = qkv_slice(ctx, b, 0, 0, 1, 1);
    qkv_tensor *l = qkv_giou_loss(ctx, a, bb, 1e-7f, QKV_REDUCE_NONE);
    REQUIRE(l && l->ndim == 1 && l->shape[0] == 1, "%s", qkv_error());
    CHECK_SCALAR(l->data[0], 1 - (1.0 / (9 + 1e-7) - (12.0 - 9) / (12 + 1e-7)), 0, 1e-7);
    qkv_ctx_free(ctx);
}

typedef struct {
    float eps;
    qkv_reduction r;
    bool cxcywh; /* inputs cxcywh, converted first (DETR's loss) */
} giou_args;

static qkv_tensor *f_giou_loss(qkv_ctx *c, qkv_tensor **t, void *u)
{
    giou_args *a = u;
    qkv_tensor *x = t[0], *y = t[1];
    if (a->cxcywh) {
        x = qkv_box_cxcywh_to_xyxy(c, x);
        y = qkv_box_cxcywh_to_xyxy(c, y);
    }
    return qkv_giou_loss(c, x, y, a->eps, a->r);
}

TEST(gradcheck_giou_loss)
{
    qkv_rng r;
    qkv_rng_seed(&r, 53);
    gc_input in[2] = {boxes_xyxy(&r, 6, true), boxes_xyxy(&r, 6, true)};
    float far[4] = {2.0f, 2.0f, 2.4f, 2.7f};
    memcpy(in[1].data + 8, far, sizeof far);
    for (int red = QKV_REDUCE_MEAN; red <= QKV_REDUCE_NONE; red++) {
        giou_args a = {1e-7f, (qkv_reduction)red, false};
        CHECK_GRAD(f_giou_loss, 2, in, &a, 5e-5, 1e-3);
    }
    gc_free(2, in);
    /* cxcywh centres in [0.2, 0.8), sides in [0.1, 0.5) */
    gc_input cx[2];
    for (int k = 0; k < 2; k++) {
        cx[k] = gc_rand(&r, 2, SHAPE(5, 4), 0, 1, true);
        for (int64_t i = 0; i < 20; i++)
            cx[k].data[i] = i % 4 < 2 ? 0.2f + 0.6f * cx[k].data[i] : 0.1f + 0.4f * cx[k].data[i];
    }
    giou_args d = {0.0f, QKV_REDUCE_SUM, true};
    CHECK_GRAD(f_giou_loss, 2, cx, &d, 1e-4, 1e-3);
    gc_free(2, cx);
}

TEST(giou_loss_of_no_rows_is_zero)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_requires_grad(qkv_zeros(ctx, 2, SHAPE(0, 4)));
    qkv_tensor *l = qkv_giou_loss(ctx, a, qkv_zeros(ctx, 2, SHAPE(0, 4)), 0, QKV_REDUCE_MEAN);
    REQUIRE(l, "%s", qkv_error());
    CHECK(l->data[0] == 0.0f, "mean of no rows: %g", l->data[0]);
    CHECK(qkv_backward(ctx, l) == QKV_OK, "%s", qkv_error());
    qkv_ctx_free(ctx);
}

TEST(box_op_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *ok = qkv_from_data(ctx, 2, SHAPE(2, 4), (float[]){0, 0, 1, 1, 0.5f, 0, 1, 2});
    qkv_tensor *bad = qkv_from_data(ctx, 2, SHAPE(2, 4), (float[]){0, 0, 1, 1, 0.5f, 0, 0.2f, 2});
    CHECK(!qkv_generalized_box_iou(ctx, ok, bad) && strstr(qkv_error(), "generalized_box_iou") &&
              strstr(qkv_error(), "boxes2 box 1") && strstr(qkv_error(), "degenerate"),
          "%s", qkv_error());
    CHECK(!qkv_giou_loss(ctx, bad, ok, 0, QKV_REDUCE_SUM) && strstr(qkv_error(), "boxes1 box 1"),
          "%s", qkv_error());
    qkv_tensor *nan = qkv_from_data(ctx, 2, SHAPE(1, 4), (float[]){0, NAN, 1, 1});
    CHECK(!qkv_generalized_box_iou(ctx, nan, ok) && strstr(qkv_error(), "nan"), "%s",
          qkv_error());
    /* IoU has no such check (torchvision's box_iou has none) */
    CHECK(qkv_box_iou(ctx, ok, bad), "%s", qkv_error());
    qkv_tensor *three = qkv_zeros(ctx, 2, SHAPE(2, 3));
    CHECK(!qkv_box_iou(ctx, three, ok) && strstr(qkv_error(), "(N, 4)") &&
              strstr(qkv_error(), "(2, 3)"),
          "%s", qkv_error());
    CHECK(!qkv_box_cxcywh_to_xyxy(ctx, three) && strstr(qkv_error(), "(..., 4)"), "%s",
          qkv_error());
    CHECK(!qkv_giou_loss(ctx, ok, qkv_zeros(ctx, 2, SHAPE(1, 4)), 0, QKV_REDUCE_SUM) &&
              strstr(qkv_error(), "giou_loss") && strstr(qkv_error(), "(1, 4)"),
          "%s", qkv_error());
    CHECK(!qkv_giou_loss(ctx, ok, ok, -1, QKV_REDUCE_SUM) && strstr(qkv_error(), "eps"), "%s",
          qkv_error());
    qkv_ctx_free(ctx);
}

/* ---- parity with PyTorch ---- */

static void parity_unary(const char *name, qkv_tensor *(*f)(qkv_ctx *, qkv_tensor *))
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *out = f(ctx, x), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 2e-7);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK)
        CHECK_CLOSE_BUF(x->grad, fixture_get(ctx, fx, "grad_x"), 0, 2e-7);
    else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_box_conversions)
{
    parity_unary("box_cxcywh_to_xyxy", qkv_box_cxcywh_to_xyxy);
    parity_unary("box_xyxy_to_cxcywh", qkv_box_xyxy_to_cxcywh);
}

/* kind 0 box_iou, 1 generalized_box_iou, 2 giou_loss (meta eps, reduction) */
static void parity_pair(const char *name, int kind)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_requires_grad(fixture_get(ctx, fx, "a"));
    qkv_tensor *b = qkv_requires_grad(fixture_get(ctx, fx, "b"));
    qkv_tensor *out = NULL;
    if (kind == 0)
        out = qkv_box_iou(ctx, a, b);
    else if (kind == 1)
        out = qkv_generalized_box_iou(ctx, a, b);
    else {
        const char *red = qkv_st_meta(fx, "reduction"), *eps = qkv_st_meta(fx, "eps");
        REQUIRE(red && eps, "%s: meta", name);
        qkv_reduction r = !strcmp(red, "mean")  ? QKV_REDUCE_MEAN
                          : !strcmp(red, "sum") ? QKV_REDUCE_SUM
                                                : QKV_REDUCE_NONE;
        out = qkv_giou_loss(ctx, a, b, strtof(eps, NULL), r);
    }
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 2e-7, 1e-6);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK) {
        CHECK_CLOSE_BUF(a->grad, fixture_get(ctx, fx, "grad_a"), 2e-6, 1e-6);
        CHECK_CLOSE_BUF(b->grad, fixture_get(ctx, fx, "grad_b"), 2e-6, 1e-6);
    } else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_box_iou_giou_and_loss)
{
    parity_pair("box_iou", 0);
    parity_pair("box_giou_pairwise", 1);
    parity_pair("giou_loss_detr", 2);
    parity_pair("giou_loss_tv_none", 2);
    parity_pair("giou_loss_tv_sum", 2);
    parity_pair("giou_loss_tv_mean", 2);
}
