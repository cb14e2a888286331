/* test_detection_data.c - DETR's augmentations on an image and its boxes,
 * against a PyTorch re-creation of detr/datasets/transforms.py. */
#include "test.h"

/* hflip -> resize (80, max 110) -> crop -> normalize, each step's boxes and
 * the final image against the fixture; labels of the boxes the crop keeps. */
TEST(detection_transforms_match_detr)
{
    qkv_st_file *f = fixture_open("det_chain");
    REQUIRE(f, "no fixture");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *img = fixture_get(ctx, f, "image"), *boxes = fixture_get(ctx, f, "boxes");
    qkv_tensor *labels = fixture_get(ctx, f, "labels");
    REQUIRE(img && boxes && labels, "fixture tensors");
    int64_t n = boxes->shape[0];
    qkv_det_sample s = {.image = {.c = 3, .h = img->shape[1], .w = img->shape[2]}, .n = n};
    s.image.data = malloc((size_t)qkv_numel(img) * sizeof(float));
    s.boxes = malloc((size_t)(4 * n) * sizeof(float));
    s.labels = malloc((size_t)n * sizeof(int64_t));
    REQUIRE(s.image.data && s.boxes && s.labels, "malloc");
    memcpy(s.image.data, img->data, (size_t)qkv_numel(img) * sizeof(float));
    memcpy(s.boxes, boxes->data, (size_t)(4 * n) * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        s.labels[i] = (int64_t)qkv_get(labels, i);
    int64_t shape[2] = {n, 4};

    qkv_det_hflip(&s);
    CHECK_CLOSE(qkv_wrap(ctx, 2, shape, s.boxes), fixture_get(ctx, f, "boxes_flip"), 1e-5, 1e-6);
    REQUIRE(qkv_det_resize(&s, 80, 110) == QKV_OK, "%s", qkv_error());
    CHECK(s.image.h == 73 && s.image.w == 109, "resized to %lld x %lld", (long long)s.image.h,
          (long long)s.image.w);
    CHECK_CLOSE(qkv_wrap(ctx, 2, shape, s.boxes), fixture_get(ctx, f, "boxes_resize"), 1e-5,
                1e-6);
    REQUIRE(qkv_det_crop(&s, 5, 10, 50, 70) == QKV_OK, "%s", qkv_error());
    qkv_tensor *want_labels = fixture_get(ctx, f, "labels_crop");
    REQUIRE(want_labels && s.n == qkv_numel(want_labels), "kept %lld boxes, want %lld",
            (long long)s.n, want_labels ? (long long)qkv_numel(want_labels) : -1LL);
    shape[0] = s.n;
    CHECK_CLOSE(qkv_wrap(ctx, 2, shape, s.boxes), fixture_get(ctx, f, "boxes_crop"), 1e-5, 1e-6);
    for (int64_t i = 0; i < s.n; i++)
        CHECK(s.labels[i] == (int64_t)qkv_get(want_labels, i), "label %lld", (long long)i);
    const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    qkv_det_finish(&s, mean, std);
    CHECK_CLOSE(qkv_wrap(ctx, 2, shape, s.boxes), fixture_get(ctx, f, "boxes_final"), 1e-6, 1e-6);
    /* the normalisation divides by std ~0.22: 5e-5 here is 1e-5 of a pixel in
     * [0, 1], the bilinear weights' float rounding (measured 1.4e-5) */
    CHECK_CLOSE(qkv_wrap(ctx, 3, (int64_t[]){3, s.image.h, s.image.w}, s.image.data),
                fixture_get(ctx, f, "image_final"), 5e-5, 1e-5);
    qkv_det_sample_free(&s);
    qkv_ctx_free(ctx);
    qkv_st_close(f);
}

/* Padding a batch of two sizes: each image at the top left, zeros around,
 * the mask 1 on the image; a batch too small for an image is refused. */
TEST(detection_batches_pad_with_a_mask)
{
    float a[1 * 2 * 3], b[1 * 3 * 2];
    for (int i = 0; i < 6; i++)
        a[i] = (float)(i + 1), b[i] = (float)(10 + i);
    qkv_det_sample sa = {.image = {.c = 1, .h = 2, .w = 3, .data = a}},
                   sb = {.image = {.c = 1, .h = 3, .w = 2, .data = b}};
    const qkv_det_sample *batch[2] = {&sa, &sb};
    float px[2 * 3 * 3], mask[2 * 3 * 3];
    REQUIRE(qkv_det_pad_batch(px, mask, batch, 2, 1, 3, 3) == QKV_OK, "%s", qkv_error());
    const float want_px[18] = {1, 2, 3, 4, 5, 6, 0, 0, 0, 10, 11, 0, 12, 13, 0, 14, 15, 0};
    const float want_mask[18] = {1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0};
    CHECK(!memcmp(px, want_px, sizeof px) && !memcmp(mask, want_mask, sizeof mask),
          "padded batch");
    CHECK(qkv_det_pad_batch(px, mask, batch, 2, 1, 2, 3) == QKV_ERR_SHAPE &&
              strstr(qkv_error(), "image 1"),
          "too small a batch: %s", qkv_error());
}

/* DETR's sizes: the shorter side to the scale unless the longer would
 * pass max_size (COCO: 800 and 1333). */
TEST(detection_resize_sizes_follow_detr)
{
    int64_t oh, ow;
    qkv_det_resized_size(480, 640, 800, 1333, &oh, &ow);
    CHECK(oh == 800 && ow == 1066, "480x640 -> %lldx%lld", (long long)oh, (long long)ow);
    qkv_det_resized_size(400, 1200, 800, 1333, &oh, &ow); /* the longer side caps it */
    CHECK(oh == 444 && ow == 1332, "400x1200 -> %lldx%lld", (long long)oh, (long long)ow);
    qkv_det_resized_size(800, 600, 600, 0, &oh, &ow);
    CHECK(oh == 800 && ow == 600, "already there: %lldx%lld", (long long)oh, (long long)ow);
}

static qkv_det_sample sample_of(int64_t h, int64_t w, int64_t n, qkv_rng *r)
{
    qkv_det_sample s = {.image = {.c = 1, .h = h, .w = w}, .n = n};
    s.image.data = malloc((size_t)(h * w) * sizeof(float));
    s.boxes = malloc((size_t)(4 * n) * sizeof(float));
    s.labels = malloc((size_t)n * sizeof(int64_t));
    for (int64_t i = 0; i < h * w; i++)
        s.image.data[i] = (float)qkv_rng_uniform(r);
    for (int64_t i = 0; i < n; i++) {
        float x = (float)(qkv_rng_uniform(r) * (double)(w - 8)), y = (float)(qkv_rng_uniform(r) * (double)(h - 8));
        float bw = 4 + (float)(qkv_rng_uniform(r) * 30), bh = 4 + (float)(qkv_rng_uniform(r) * 30);
        float b[4] = {x, y, fminf((float)w, x + bw), fminf((float)h, y + bh)};
        memcpy(s.boxes + 4 * i, b, sizeof b);
        s.labels[i] = i;
    }
    return s;
}

/* The random augmentation: with the flip and no crop it is hflip then the
 * resize; with crops, every kept box stays inside the image, non-empty,
 * with its own label, and the shorter side is one of the scales. */
TEST(detection_augment_keeps_boxes_inside)
{
    qkv_rng r;
    qkv_rng_seed(&r, 9);
    const int64_t scales[] = {64, 72, 80}, crop_scales[] = {60, 70};
    qkv_det_sample a = sample_of(90, 120, 6, &r), b = sample_of(90, 120, 6, &r);
    memcpy(b.image.data, a.image.data, 90 * 120 * sizeof(float));
    memcpy(b.boxes, a.boxes, 24 * sizeof(float));
    qkv_det_augment_config only_flip = {.scales = scales, .n_scales = 1, .max_size = 1000,
                                        .flip_p = 1.0};
    REQUIRE(qkv_det_augment(&a, &only_flip, &r) == QKV_OK, "%s", qkv_error());
    qkv_det_hflip(&b);
    REQUIRE(qkv_det_resize(&b, 64, 1000) == QKV_OK, "%s", qkv_error());
    CHECK(a.image.h == b.image.h && a.image.w == b.image.w &&
              !memcmp(a.image.data, b.image.data, (size_t)(a.image.h * a.image.w) * sizeof(float)) &&
              !memcmp(a.boxes, b.boxes, 24 * sizeof(float)),
          "flip + resize differ from the augmentation");
    qkv_det_sample_free(&a);
    qkv_det_sample_free(&b);
    qkv_det_augment_config full = {.scales = scales, .n_scales = 3, .max_size = 100,
                                   .crop_scales = crop_scales, .n_crop_scales = 2,
                                   .crop_min = 30, .crop_max = 50, .flip_p = 0.5, .crop_p = 1.0};
    for (int trial = 0; trial < 20; trial++) {
        qkv_det_sample s = sample_of(90, 120, 6, &r);
        REQUIRE(qkv_det_augment(&s, &full, &r) == QKV_OK, "%s", qkv_error());
        int64_t shorter = s.image.h < s.image.w ? s.image.h : s.image.w;
        CHECK(shorter == 64 || shorter == 72 || shorter == 80 || s.image.h == 100 ||
                  s.image.w == 100 || s.image.h >= 99 || s.image.w >= 99,
              "trial %d: %lld x %lld", trial, (long long)s.image.h, (long long)s.image.w);
        for (int64_t i = 0; i < s.n; i++) {
            const float *bx = s.boxes + 4 * i;
            CHECK(bx[0] >= 0 && bx[1] >= 0 && bx[2] <= (float)s.image.w + 1e-3f &&
                      bx[3] <= (float)s.image.h + 1e-3f && bx[2] > bx[0] && bx[3] > bx[1] &&
                      s.labels[i] >= 0 && s.labels[i] < 6 && (i == 0 || s.labels[i] > s.labels[i - 1]),
                  "trial %d box %lld: %g %g %g %g label %lld", trial, (long long)i, bx[0], bx[1],
                  bx[2], bx[3], (long long)s.labels[i]);
        }
        qkv_det_sample_free(&s);
    }
}
