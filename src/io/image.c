/* image.c - PNG and JPEG to float (C, H, W) and back, and the transforms
 * torchvision applies before a vision model: bilinear resize, crop, flip,
 * normalise.
 *
 * Decoding follows PIL's convert("RGB") / convert("L") followed by
 * ToTensor: palettes are expanded, alpha is dropped (not composited), 8-bit
 * samples become v / 255 and 16-bit ones v / 65535. libpng and libjpeg
 * report errors through longjmp; each decoder keeps that inside itself and
 * returns a status. */
#include "io_internal.h"

#include <errno.h>
#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <unistd.h>

/* deflate expands at most ~1032:1; a PNG announcing more raw bytes than its
 * compressed data could hold is truncated, and is rejected before the
 * pixels are allocated */
#define DEFLATE_MAX_RATIO 1032

static qkv_status image_alloc(qkv_image *img, int64_t c, int64_t h, int64_t w)
{
    img->c = c, img->h = h, img->w = w;
    img->data = qkv__malloc((size_t)(c * h * w) * sizeof(float));
    return img->data ? QKV_OK : QKV_ERR_NOMEM;
}

void qkv_image_free(qkv_image *img)
{
    if (!img)
        return;
    qkv__free(img->data);
    memset(img, 0, sizeof *img);
}

/* ---- PNG ---- */

typedef struct {
    const uint8_t *p;
    size_t len, pos;
    char msg[200];
    jmp_buf jb;
} png_src;

static void png_read_mem(png_structp png, png_bytep out, size_t n)
{
    png_src *s = png_get_io_ptr(png);
    if (n > s->len - s->pos)
        png_error(png, "file ends early (truncated)");
    memcpy(out, s->p + s->pos, n);
    s->pos += n;
}

static void png_fail(png_structp png, png_const_charp msg)
{
    png_src *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    longjmp(s->jb, 1);
}

static void png_quiet(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static qkv_status decode_png(qkv_image *img, const uint8_t *bytes, size_t len,
                             int64_t max_pixels)
{
    png_src s = {.p = bytes, .len = len};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s, png_fail, png_quiet);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    /* volatile: assigned after setjmp, read after a longjmp */
    uint8_t *volatile raw = NULL;
    png_bytep *volatile rows = NULL;
    if (!info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        return qkv_set_error(QKV_ERR_NOMEM, "png: out of memory");
    }
    if (setjmp(s.jb)) {
        png_destroy_read_struct(&png, &info, NULL);
        qkv__free(raw);
        qkv__free(rows);
        qkv_image_free(img);
        return qkv_set_error(QKV_ERR_FORMAT, "png: %s", s.msg);
    }
    png_set_read_fn(png, &s, png_read_mem);
    png_set_user_limits(png, 1u << 16, 1u << 16);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int depth = png_get_bit_depth(png, info);
    /* the raw (filtered, 1 byte per row) size bounds what the data must hold */
    uint64_t raw_bytes = (uint64_t)h * (png_get_rowbytes(png, info) + 1);
    if (raw_bytes > (uint64_t)len * DEFLATE_MAX_RATIO)
        png_error(png, "image data cannot hold the announced size (truncated)");
    if ((int64_t)w * h > max_pixels)
        png_error(png, "image too large");
    png_set_expand(png); /* palette -> RGB, grey < 8 bits -> 8, tRNS -> alpha */
    png_set_strip_alpha(png);
    if (depth == 16)
        png_set_swap(png); /* host order (little-endian) for the uint16 reads */
    png_set_interlace_handling(png); /* png_read_image then runs every pass */
    png_read_update_info(png, info);
    int channels = png_get_channels(png, info);
    int out_depth = png_get_bit_depth(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (channels != 1 && channels != 3)
        png_error(png, "unexpected channel count after conversion");
    raw = qkv__malloc(rowbytes * h + 1);
    rows = qkv__malloc(sizeof(png_bytep) * (h + 1));
    if (!raw || !rows)
        png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = raw + y * rowbytes;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    if (image_alloc(img, channels, h, w) != QKV_OK)
        png_error(png, "out of memory");
    int64_t plane = (int64_t)h * w;
    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < w; x++)
            for (int c = 0; c < channels; c++) {
                int64_t k = x * channels + c;
                float v;
                if (out_depth == 16) {
                    uint16_t u;
                    memcpy(&u, raw + y * rowbytes + 2 * k, 2);
                    v = (float)u / 65535.0f;
                } else
                    v = (float)raw[y * rowbytes + k] / 255.0f;
                img->data[c * plane + y * w + x] = v;
            }
    png_destroy_read_struct(&png, &info, NULL);
    qkv__free(raw);
    qkv__free(rows);
    return QKV_OK;
}

/* ---- JPEG ---- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
} jpeg_err;

static void jpeg_fail(j_common_ptr cinfo)
{
    longjmp(((jpeg_err *)(void *)cinfo->err)->jb, 1);
}

static void jpeg_quiet(j_common_ptr cinfo) { (void)cinfo; }

static qkv_status decode_jpeg(qkv_image *img, const uint8_t *bytes, size_t len,
                              int64_t max_pixels)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    uint8_t *volatile row = NULL;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_fail;
    err.pub.output_message = jpeg_quiet;
    if (setjmp(err.jb)) {
        char msg[JMSG_LENGTH_MAX];
        err.pub.format_message((j_common_ptr)&cinfo, msg);
        jpeg_destroy_decompress(&cinfo);
        qkv__free(row);
        qkv_image_free(img);
        return qkv_set_error(QKV_ERR_FORMAT, "jpeg: %s", msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, bytes, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if ((int64_t)cinfo.image_width * cinfo.image_height > max_pixels) {
        jpeg_destroy_decompress(&cinfo);
        return qkv_set_error(QKV_ERR_FORMAT, "jpeg: image too large (%u x %u)",
                             cinfo.image_width, cinfo.image_height);
    }
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return qkv_set_error(QKV_ERR_FORMAT, "jpeg: CMYK images are not supported");
    }
    cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    int64_t c = cinfo.output_components, w = cinfo.output_width, h = cinfo.output_height;
    row = qkv__malloc((size_t)(w * c));
    if (!row || image_alloc(img, c, h, w) != QKV_OK) {
        jpeg_destroy_decompress(&cinfo);
        qkv__free(row);
        qkv_image_free(img);
        return QKV_ERR_NOMEM;
    }
    int64_t plane = h * w;
    while (cinfo.output_scanline < cinfo.output_height) {
        int64_t y = cinfo.output_scanline;
        JSAMPROW rp = row;
        jpeg_read_scanlines(&cinfo, &rp, 1);
        for (int64_t x = 0; x < w; x++)
            for (int64_t k = 0; k < c; k++)
                img->data[k * plane + y * w + x] = (float)row[x * c + k] / 255.0f;
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    qkv__free(row);
    return QKV_OK;
}

/* ---- reading and writing ---- */

qkv_status qkv__image_decode(qkv_image *img, const void *bytes, size_t len, int64_t max_pixels)
{
    const uint8_t *b = bytes;
    memset(img, 0, sizeof *img);
    if (len >= 8 && !png_sig_cmp(b, 0, 8))
        return decode_png(img, b, len, max_pixels);
    if (len >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        return decode_jpeg(img, b, len, max_pixels);
    return qkv_set_error(QKV_ERR_FORMAT, "image: neither PNG nor JPEG (first bytes %02x %02x)",
                         len > 0 ? b[0] : 0, len > 1 ? b[1] : 0);
}

qkv_status qkv_image_decode(qkv_image *img, const void *bytes, size_t len)
{
    if (!img || (!bytes && len))
        return qkv_set_error(QKV_ERR_ARG, "qkv_image_decode: NULL argument");
    return qkv__image_decode(img, bytes, len, QKV_IMAGE_MAX_PIXELS);
}

qkv_status qkv_image_read(qkv_image *img, const char *path)
{
    if (!img || !path)
        return qkv_set_error(QKV_ERR_ARG, "qkv_image_read: NULL argument");
    memset(img, 0, sizeof *img);
    uint8_t *buf;
    size_t len;
    qkv_status st = qkv__read_file(path, "image", &buf, &len);
    if (st)
        return st;
    st = qkv__image_decode(img, buf, len, QKV_IMAGE_MAX_PIXELS);
    qkv__free(buf);
    if (st) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", qkv_error());
        qkv_set_error(st, "%s: %s", path, msg);
    }
    return st;
}

qkv_status qkv__png_write(const char *path, const uint8_t *pixels, int64_t w, int64_t h,
                          int channels)
{
    if (w < 1 || h < 1 || w > (1 << 20) || h > (1 << 20) || (channels != 1 && channels != 3))
        return qkv_set_error(QKV_ERR_ARG, "png: cannot write a %lld x %lld image of %d "
                             "channels", (long long)w, (long long)h, channels);
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return qkv_set_error(QKV_ERR_ARG, "png: path too long");
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return qkv_set_error(QKV_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    im.width = (png_uint_32)w;
    im.height = (png_uint_32)h;
    im.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    int ok = png_image_write_to_stdio(&im, f, 0, pixels, 0, NULL);
    ok = fflush(f) == 0 && ok;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        unlink(tmp);
        return qkv_set_error(QKV_ERR_IO, "%s: cannot write PNG: %s", path,
                             im.message[0] ? im.message : strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return qkv_set_error(QKV_ERR_IO, "%s: cannot rename from %s: %s", path, tmp, strerror(e));
    }
    return QKV_OK;
}

qkv_status qkv_image_write_png(const qkv_image *img, const char *path)
{
    if (!img || !img->data || !path)
        return qkv_set_error(QKV_ERR_ARG, "qkv_image_write_png: NULL argument");
    if (img->c != 1 && img->c != 3)
        return qkv_set_error(QKV_ERR_ARG, "%s: PNG needs 1 or 3 channels, the image has %lld",
                             path, (long long)img->c);
    int64_t plane = img->h * img->w;
    uint8_t *pix = qkv__malloc((size_t)(plane * img->c));
    if (!pix)
        return QKV_ERR_NOMEM;
    for (int64_t i = 0; i < plane; i++)
        for (int64_t c = 0; c < img->c; c++) {
            float v = img->data[c * plane + i];
            v = v > 0 ? (v < 1 ? v : 1) : 0; /* NaN goes to 0 too */
            pix[i * img->c + c] = (uint8_t)(v * 255.0f + 0.5f);
        }
    qkv_status st = qkv__png_write(path, pix, img->w, img->h, (int)img->c);
    qkv__free(pix);
    return st;
}

/* ---- transforms ---- */

/* PyTorch's source index for align_corners=False: scale (dst + 0.5) - 0.5,
 * clamped at 0. (PyTorch's vectorised kernel rounds the weights a little
 * differently; results agree to a few ulps, see test_io_image.c.) */
static void linear_taps(int64_t in, int64_t out, int64_t *i0, int64_t *i1, float *l0, float *l1)
{
    double scale = (double)in / (double)out;
    for (int64_t d = 0; d < out; d++) {
        float src = (float)(scale * ((double)d + 0.5) - 0.5);
        if (src < 0)
            src = 0;
        int64_t k = (int64_t)src;
        i0[d] = k;
        i1[d] = k < in - 1 ? k + 1 : k;
        l1[d] = src - (float)k;
        l0[d] = 1.0f - l1[d];
    }
}

/* dst (C, oh, ow) <- src (C, h, w): bilinear, align_corners=False */
static void resize_bilinear(float *dst, const float *src, int64_t C, int64_t h, int64_t w,
                            int64_t oh, int64_t ow, int64_t *iy, float *ly, int64_t *ix,
                            float *lx)
{
    linear_taps(h, oh, iy, iy + oh, ly, ly + oh);
    linear_taps(w, ow, ix, ix + ow, lx, lx + ow);
    for (int64_t c = 0; c < C; c++) {
        const float *s = src + c * h * w;
        for (int64_t y = 0; y < oh; y++) {
            const float *r0 = s + iy[y] * w, *r1 = s + iy[oh + y] * w;
            for (int64_t x = 0; x < ow; x++) {
                int64_t a = ix[x], b = ix[ow + x];
                /* across, then down */
                float t0 = r0[a] * lx[x] + r0[b] * lx[ow + x];
                float t1 = r1[a] * lx[x] + r1[b] * lx[ow + x];
                dst[(c * oh + y) * ow + x] = t0 * ly[y] + t1 * ly[oh + y];
            }
        }
    }
}

qkv_status qkv_image_resize(qkv_image *dst, const qkv_image *src, int64_t h, int64_t w)
{
    if (!dst || !src || !src->data || h < 1 || w < 1 || h * w > QKV_IMAGE_MAX_PIXELS)
        return qkv_set_error(QKV_ERR_ARG, "qkv_image_resize: bad arguments (to %lld x %lld)",
                             (long long)h, (long long)w);
    memset(dst, 0, sizeof *dst);
    int64_t *idx = qkv__malloc((size_t)(2 * (h + w)) * sizeof *idx);
    float *lam = qkv__malloc((size_t)(2 * (h + w)) * sizeof *lam);
    qkv_status st = idx && lam ? image_alloc(dst, src->c, h, w) : QKV_ERR_NOMEM;
    if (st == QKV_OK)
        resize_bilinear(dst->data, src->data, src->c, src->h, src->w, h, w, idx, lam,
                        idx + 2 * h, lam + 2 * h);
    qkv__free(idx);
    qkv__free(lam);
    return st;
}

qkv_status qkv_image_crop(qkv_image *dst, const qkv_image *src, int64_t top, int64_t left,
                          int64_t h, int64_t w)
{
    if (!dst || !src || !src->data)
        return qkv_set_error(QKV_ERR_ARG, "qkv_image_crop: NULL argument");
    if (top < 0 || left < 0 || h < 1 || w < 1 || top + h > src->h || left + w > src->w)
        return qkv_set_error(QKV_ERR_ARG, "qkv_image_crop: window (%lld, %lld) + (%lld x %lld) "
                             "is not inside the %lld x %lld image", (long long)top,
                             (long long)left, (long long)h, (long long)w, (long long)src->h,
                             (long long)src->w);
    memset(dst, 0, sizeof *dst);
    if (image_alloc(dst, src->c, h, w) != QKV_OK)
        return QKV_ERR_NOMEM;
    for (int64_t c = 0; c < src->c; c++)
        for (int64_t y = 0; y < h; y++)
            memcpy(dst->data + (c * h + y) * w,
                   src->data + (c * src->h + top + y) * src->w + left, (size_t)w * sizeof(float));
    return QKV_OK;
}

void qkv_image_hflip(qkv_image *img)
{
    if (!img || !img->data)
        return;
    for (int64_t r = 0; r < img->c * img->h; r++) {
        float *row = img->data + r * img->w;
        for (int64_t a = 0, b = img->w - 1; a < b; a++, b--) {
            float t = row[a];
            row[a] = row[b];
            row[b] = t;
        }
    }
}

void qkv_image_normalize(qkv_image *img, const float *mean, const float *std)
{
    if (!img || !img->data || !mean || !std)
        return;
    int64_t plane = img->h * img->w;
    for (int64_t c = 0; c < img->c; c++)
        for (int64_t i = 0; i < plane; i++) /* as torchvision: sub, then div */
            img->data[c * plane + i] = (img->data[c * plane + i] - mean[c]) / std[c];
}
