/* test_io_image.c - PNG/JPEG decoding against PIL + ToTensor, bilinear
 * resize against torch.nn.functional.interpolate, crop/flip/normalise, PNG
 * writing. */
#include "test.h"

#include <unistd.h>

static qkv_tensor *as_tensor(qkv_ctx *ctx, qkv_image *im)
{
    return qkv_wrap(ctx, 3, (int64_t[]){im->c, im->h, im->w}, im->data);
}

/* Decoding is exact: the same libjpeg-turbo as PIL, and v / 255 in float as
 * ToTensor (tolerance 0). */
TEST(image_decode_matches_pil)
{
    static const char *files[] = {"rgb.png", "rgba.png", "palette.png", "interlaced.png",
                                  "rgb.jpg", "gray.png", "gray.jpg", "bits.png", "gray16.png"};
    qkv_st_file *f = fixture_open("io_images");
    REQUIRE(f, "no fixture");
    qkv_ctx *ctx = qkv_ctx_new();
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
        char path[256], key[64];
        snprintf(path, sizeof path, "tests/data/%s", files[k]);
        snprintf(key, sizeof key, "%s", files[k]);
        *strchr(key, '.') = '_';
        qkv_image im;
        if (qkv_image_read(&im, path) != QKV_OK) {
            test_fail(__FILE__, __LINE__, "%s: %s", path, qkv_error());
            continue;
        }
        qkv_tensor *want = fixture_get(ctx, f, key);
        REQUIRE(want, "%s", key);
        CHECK(im.c == want->shape[0] && im.h == want->shape[1] && im.w == want->shape[2],
              "%s: %lld x %lld x %lld", files[k], (long long)im.c, (long long)im.h,
              (long long)im.w);
        qkv_tensor *got = as_tensor(ctx, &im);
        CHECK_CLOSE(got, want, 0, 0);
        qkv_image_free(&im);
    }
    qkv_ctx_free(ctx);
    qkv_st_close(f);
}

TEST(image_decode_rejects_bad_bytes)
{
    qkv_image im;
    CHECK(qkv_image_decode(&im, "GIF89a", 6) == QKV_ERR_FORMAT &&
          strstr(qkv_error(), "neither PNG nor JPEG"), "%s", qkv_error());
    CHECK(qkv_image_decode(&im, NULL, 0) == QKV_ERR_FORMAT, "empty");
    CHECK(qkv_image_read(&im, "tests/data/absent.png") == QKV_ERR_IO &&
          strstr(qkv_error(), "absent.png"), "missing: %s", qkv_error());
    /* every truncation of a PNG and a JPEG fails cleanly (or, for JPEG,
     * decodes: libjpeg pads a cut scan with grey and only warns) */
    const char *files[] = {"tests/data/rgb.png", "tests/data/rgb.jpg",
                           "tests/data/interlaced.png"};
    for (int k = 0; k < 3; k++) {
        FILE *fp = fopen(files[k], "rb");
        REQUIRE(fp, "%s", files[k]);
        uint8_t buf[4096];
        size_t n = fread(buf, 1, sizeof buf, fp);
        fclose(fp);
        int failures = 0;
        for (size_t cut = 0; cut < n; cut += 7) {
            qkv_status st = qkv_image_decode(&im, buf, cut);
            if (st == QKV_OK)
                qkv_image_free(&im);
            else {
                failures++;
                CHECK(st == QKV_ERR_FORMAT && im.data == NULL, "%s cut at %zu: %s", files[k],
                      cut, qkv_error());
            }
        }
        CHECK(failures > 0, "%s: no truncation was noticed", files[k]);
        if (k != 1)
            CHECK(failures == (int)((n + 6) / 7), "%s: a truncated PNG decoded", files[k]);
    }
    /* a header announcing 60000 x 60000 in a 60-byte file */
    FILE *fp = fopen("tests/data/gray.png", "rb");
    uint8_t b[256];
    size_t n = fread(b, 1, sizeof b, fp);
    fclose(fp);
    b[16] = 0, b[17] = 0, b[18] = 0xea, b[19] = 0x60; /* width in IHDR */
    b[20] = 0, b[21] = 0, b[22] = 0xea, b[23] = 0x60; /* height */
    CHECK(qkv_image_decode(&im, b, n) == QKV_ERR_FORMAT, "huge header: decoded");
}

static void check_resize(const char *name, double tol)
{
    qkv_st_file *f = fixture_open(name);
    REQUIRE(f, "no fixture");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = fixture_get(ctx, f, "x"), *want = fixture_get(ctx, f, "out");
    REQUIRE(x && want, "tensors");
    qkv_image src = {x->shape[0], x->shape[1], x->shape[2], x->data}, dst;
    REQUIRE(qkv_image_resize(&dst, &src, want->shape[1], want->shape[2]) == QKV_OK, "%s",
            qkv_error());
    CHECK_CLOSE(as_tensor(ctx, &dst), want, 2e-6, 5e-6);
    qkv_image_free(&dst);
    qkv_ctx_free(ctx);
    qkv_st_close(f);
}

/* The same taps as PyTorch's CPU kernel; its weights round differently in
 * the last bits (measured: up to 6.6e-7 on values in [0, 1], about 5 ulps),
 * so 1e-6. A wrong tap (e.g. no clamp at the left edge) gives 0.3. */
TEST(image_resize_matches_interpolate)
{
    check_resize("io_resize_down", 1e-6);
    check_resize("io_resize_up", 1e-6);
    check_resize("io_resize_mixed", 1e-6);
    qkv_image src = {1, 2, 2, (float[]){1, 2, 3, 4}}, dst;
    CHECK(qkv_image_resize(&dst, &src, 0, 3) == QKV_ERR_ARG, "zero height");
    REQUIRE(qkv_image_resize(&dst, &src, 2, 2) == QKV_OK, "identity");
    CHECK(dst.data[0] == 1 && dst.data[3] == 4, "same size is the identity");
    qkv_image_free(&dst);
}

TEST(image_crop_flip_normalize)
{
    float px[2 * 3 * 4];
    for (int i = 0; i < 24; i++)
        px[i] = (float)i;
    qkv_image src = {2, 3, 4, px}, dst;
    REQUIRE(qkv_image_crop(&dst, &src, 1, 2, 2, 2) == QKV_OK, "%s", qkv_error());
    CHECK(dst.c == 2 && dst.h == 2 && dst.w == 2 && dst.data[0] == 6 && dst.data[1] == 7 &&
          dst.data[2] == 10 && dst.data[4] == 18 && dst.data[7] == 23, "crop values");
    qkv_image_hflip(&dst);
    CHECK(dst.data[0] == 7 && dst.data[1] == 6 && dst.data[7] == 22, "flip values");
    float mean[2] = {6, 20}, std[2] = {2, 0.5f};
    qkv_image_normalize(&dst, mean, std);
    CHECK(dst.data[0] == 0.5f && dst.data[7] == 4.0f, "normalize: %g %g", dst.data[0],
          dst.data[7]);
    qkv_image_free(&dst);
    CHECK(qkv_image_crop(&dst, &src, 2, 0, 2, 4) == QKV_ERR_ARG &&
          strstr(qkv_error(), "not inside"), "crop outside: %s", qkv_error());
    /* odd width: the middle column stays */
    float row[3] = {1, 2, 3};
    qkv_image r = {1, 1, 3, row};
    qkv_image_hflip(&r);
    CHECK(row[0] == 3 && row[1] == 2 && row[2] == 1, "odd flip");
}

TEST(image_png_write_round_trip)
{
    char path[] = "/tmp/qkv_test_png_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    float px[3 * 4 * 5];
    for (int i = 0; i < 60; i++)
        px[i] = (float)i / 59.0f * 1.2f - 0.1f; /* some values outside [0, 1] */
    for (int c = 1; c <= 3; c += 2) {
        qkv_image src = {c, 4, 5, px}, back;
        REQUIRE(qkv_image_write_png(&src, path) == QKV_OK, "%s", qkv_error());
        REQUIRE(qkv_image_read(&back, path) == QKV_OK, "%s", qkv_error());
        CHECK(back.c == c && back.h == 4 && back.w == 5, "shape");
        for (int i = 0; i < c * 20; i++) {
            float v = px[i] < 0 ? 0 : px[i] > 1 ? 1 : px[i];
            float want = (float)(int)(v * 255.0f + 0.5f) / 255.0f;
            CHECK(back.data[i] == want, "c=%d px %d: %g, want %g", c, i, back.data[i], want);
        }
        qkv_image_free(&back);
    }
    qkv_image two = {2, 4, 5, px};
    CHECK(qkv_image_write_png(&two, path) == QKV_ERR_ARG, "2 channels");
    CHECK(qkv_image_write_png(&two, "/nonexistent/dir/x.png") != QKV_OK, "bad dir");
    unlink(path);
}
