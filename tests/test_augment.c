/* test_augment.c - MoCo's view transforms: each against torchvision 0.14's
 * tensor functional (atol 1e-6: float32 sums in another order), the
 * random crop's windows (inside the image, area and ratio in range, the
 * fallback), the whole view (deterministic per seed, in [0, 1], identity
 * when everything is off), and the errors. */
#include "test.h"

static void parse_ints(const char *s, int64_t *v, int n)
{
    for (int i = 0; i < n; i++) {
        char *end;
        v[i] = strtoll(s, &end, 10);
        s = *end == ',' ? end + 1 : end;
    }
}

static void parity_resized_crop(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = fixture_get(ctx, fx, "x"), *want = fixture_get(ctx, fx, "out");
    int64_t box[4], size[2];
    parse_ints(qkv_st_meta(fx, "box"), box, 4);
    parse_ints(qkv_st_meta(fx, "size"), size, 2);
    qkv_tensor *got = qkv_new(ctx, 3, (int64_t[]){x->shape[0], size[0], size[1]});
    qkv_status st = qkv_resized_crop(got->data, size[0], size[1], x->data, x->shape[0],
                                     x->shape[1], x->shape[2],
                                     (qkv_crop_box){box[0], box[1], box[2], box[3]});
    CHECK(st == QKV_OK, "%s: %s", name, qkv_error());
    CHECK_CLOSE(got, want, 1e-6, 0);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_resized_crop)
{
    parity_resized_crop("augment_resized_crop_up");
    parity_resized_crop("augment_resized_crop_whole");
    parity_resized_crop("augment_resized_crop_rgb");
}

static void parity_jitter(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = fixture_get(ctx, fx, "x");
    int64_t C = x->shape[0], H = x->shape[1], W = x->shape[2];
    float fb = strtof(qkv_st_meta(fx, "brightness"), NULL);
    float fc = strtof(qkv_st_meta(fx, "contrast"), NULL);
    qkv_tensor *b = qkv_from_data(ctx, 3, x->shape, x->data);
    qkv_tensor *c = qkv_from_data(ctx, 3, x->shape, x->data);
    qkv_adjust_brightness(b->data, C * H * W, fb);
    CHECK(qkv_adjust_contrast(c->data, C, H, W, fc) == QKV_OK, "%s", qkv_error());
    CHECK_CLOSE(b, fixture_get(ctx, fx, "brightness"), 1e-6, 0);
    CHECK_CLOSE(c, fixture_get(ctx, fx, "contrast"), 1e-6, 0);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_brightness_contrast)
{
    parity_jitter("augment_jitter_grey");
    parity_jitter("augment_jitter_rgb");
}

static void parity_blur(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = fixture_get(ctx, fx, "x");
    int64_t C = x->shape[0], H = x->shape[1], W = x->shape[2];
    int k = atoi(qkv_st_meta(fx, "k"));
    float sigma = strtof(qkv_st_meta(fx, "sigma"), NULL);
    qkv_tensor *y = qkv_from_data(ctx, 3, x->shape, x->data);
    qkv_tensor *f = qkv_from_data(ctx, 3, x->shape, x->data);
    float *tmp = qkv_new(ctx, 1, (int64_t[]){H * W})->data;
    CHECK(qkv_gaussian_blur(y->data, C, H, W, k, sigma, tmp) == QKV_OK, "%s", qkv_error());
    qkv_hflip(f->data, C, H, W);
    CHECK_CLOSE(y, fixture_get(ctx, fx, "out"), 1e-6, 0);
    CHECK_CLOSE(f, fixture_get(ctx, fx, "flip"), 0, 0);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_gaussian_blur_and_flip)
{
    parity_blur("augment_blur_small");
    parity_blur("augment_blur_wide");
}

TEST(random_resized_crop_windows_fit_and_cover_the_range)
{
    qkv_rng r;
    qkv_rng_seed(&r, 3);
    int64_t n = 20000, H = 28, W = 28;
    double sum_area = 0, min_area = 1, max_area = 0, min_ratio = 9, max_ratio = 0;
    int64_t left_edge = 0, right_edge = 0;
    for (int64_t i = 0; i < n; i++) {
        qkv_crop_box b = qkv_random_resized_crop_box(&r, H, W, 0.2f, 1.0f, 0.75f, 4.0f / 3.0f);
        REQUIRE(b.top >= 0 && b.left >= 0 && b.height >= 1 && b.width >= 1 &&
                    b.top + b.height <= H && b.left + b.width <= W,
                "window (%lld, %lld, %lld, %lld) outside the image", (long long)b.top,
                (long long)b.left, (long long)b.height, (long long)b.width);
        double area = (double)(b.height * b.width) / (double)(H * W);
        sum_area += area;
        min_area = fmin(min_area, area), max_area = fmax(max_area, area);
        double ratio = (double)b.width / (double)b.height;
        min_ratio = fmin(min_ratio, ratio), max_ratio = fmax(max_ratio, ratio);
        left_edge += b.left == 0, right_edge += b.left + b.width == W;
    }
    /* whole pixels: the area and ratio miss their bounds by a rounding */
    CHECK(min_area > 0.15 && min_area < 0.25, "smallest area %g", min_area);
    CHECK(max_area > 0.95, "largest area %g", max_area);
    CHECK(min_ratio > 0.65 && min_ratio < 0.8, "smallest ratio %g", min_ratio);
    CHECK(max_ratio < 1.5 && max_ratio > 1.25, "largest ratio %g", max_ratio);
    /* mostly the first draw fits: close to the mean of U(0.2, 1), lowered by
     * the large areas that miss and fall back to others */
    CHECK(sum_area / n > 0.5 && sum_area / n < 0.62, "mean area %g", sum_area / n);
    /* the position is uniform: both edges are reached about as often */
    CHECK(left_edge > n / 20 && right_edge > n / 20 &&
              fabs((double)(left_edge - right_edge)) < 0.1 * (double)n,
          "edges %lld and %lld", (long long)left_edge, (long long)right_edge);
    /* no draw can fit (an area over the image): the central crop, here of a
     * wide image narrowed to the largest ratio */
    qkv_crop_box c = qkv_random_resized_crop_box(&r, 10, 40, 1.5f, 2.0f, 0.75f, 4.0f / 3.0f);
    CHECK(c.height == 10 && c.width == 13 && c.top == 0 && c.left == 13,
          "fallback (%lld, %lld, %lld, %lld)", (long long)c.top, (long long)c.left,
          (long long)c.height, (long long)c.width);
}

TEST(augment_view_is_deterministic_and_in_range)
{
    qkv_rng r;
    qkv_rng_seed(&r, 11);
    float src[28 * 28], a[28 * 28], b[28 * 28], scratch[28 * 28];
    for (int i = 0; i < 28 * 28; i++)
        src[i] = (float)qkv_rng_uniform(&r);
    qkv_view_aug v2 = {.crop_min = 0.2f, .crop_max = 1.0f, .jitter = 0.8f, .brightness = 0.4f,
                       .contrast = 0.4f, .blur = 0.5f, .blur_sigma_min = 0.1f,
                       .blur_sigma_max = 2.0f, .flip = 0.5f};
    int differ = 0;
    for (int t = 0; t < 50; t++) {
        qkv_rng r1, r2;
        qkv_rng_seed(&r1, (uint64_t)t), qkv_rng_seed(&r2, (uint64_t)t);
        REQUIRE(qkv_augment_view(a, 28, 28, src, 1, 28, 28, &v2, &r1, scratch) == QKV_OK, "%s",
                qkv_error());
        REQUIRE(qkv_augment_view(b, 28, 28, src, 1, 28, 28, &v2, &r2, scratch) == QKV_OK, "%s",
                qkv_error());
        CHECK(!memcmp(a, b, sizeof a), "view %d differs for one seed", t);
        for (int i = 0; i < 28 * 28; i++)
            CHECK(a[i] >= 0.0f && a[i] <= 1.0f, "pixel %g outside [0, 1]", (double)a[i]);
        differ += memcmp(a, src, sizeof a) != 0;
        /* a second view from the stream that went on differs */
        REQUIRE(qkv_augment_view(b, 28, 28, src, 1, 28, 28, &v2, &r1, scratch) == QKV_OK, "%s",
                qkv_error());
        CHECK(memcmp(a, b, sizeof a) != 0, "two views of one image are equal");
    }
    CHECK(differ == 50, "%d of 50 views changed the image", differ);
    /* everything off: the image itself */
    qkv_view_aug none = {0};
    REQUIRE(qkv_augment_view(a, 28, 28, src, 1, 28, 28, &none, &r, scratch) == QKV_OK, "%s",
            qkv_error());
    CHECK(!memcmp(a, src, sizeof a), "no augmentation changed the image");
    /* flip alone, always: the mirror image */
    qkv_view_aug flip = {.flip = 1.0f};
    REQUIRE(qkv_augment_view(a, 28, 28, src, 1, 28, 28, &flip, &r, scratch) == QKV_OK, "%s",
            qkv_error());
    CHECK(a[0] == src[27] && a[28 * 28 - 1] == src[28 * 27], "not mirrored");
}

TEST(augment_errors)
{
    float x[16], tmp[16];
    memset(x, 0, sizeof x);
    CHECK(qkv_resized_crop(tmp, 4, 4, x, 1, 4, 4, (qkv_crop_box){2, 0, 3, 4}) == QKV_ERR_ARG,
          "a window past the bottom accepted");
    CHECK(strstr(qkv_error(), "resized_crop"), "message: %s", qkv_error());
    CHECK(qkv_gaussian_blur(x, 1, 4, 4, 4, 1.0f, tmp) == QKV_ERR_ARG, "even kernel accepted");
    CHECK(qkv_gaussian_blur(x, 1, 4, 4, 9, 1.0f, tmp) == QKV_ERR_ARG,
          "a kernel wider than reflect padding allows accepted");
    CHECK(qkv_gaussian_blur(x, 1, 4, 4, 3, 0.0f, tmp) == QKV_ERR_ARG, "sigma 0 accepted");
    CHECK(qkv_adjust_contrast(x, 2, 2, 4, 0.5f) == QKV_ERR_ARG, "2 channels accepted");
    CHECK(qkv_augment_view(tmp, 4, 4, NULL, 1, 4, 4, &(qkv_view_aug){0}, NULL, x) == QKV_ERR_ARG,
          "NULL source accepted");
}
