/* augment.c - torchvision's random image transforms on float buffers, and
 * the view that MoCo trains on (include/qkv.h: Augmentations). Each
 * transform is written to agree with torchvision's tensor functional of the
 * same name (tests/parity/cases_augment.py); the random ones draw from the
 * caller's rng and allocate nothing, so that they run on the loader's
 * thread inside a training step. */
#include "io_internal.h"

#include <math.h>

/* Python's round(): halves to even (nearbyint in the default mode) */
static int64_t round_even(double v) { return (int64_t)nearbyint(v); }

static double uniform(qkv_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * qkv_rng_uniform(r);
}

qkv_crop_box qkv_random_resized_crop_box(qkv_rng *r, int64_t h, int64_t w, float scale_min,
                                         float scale_max, float ratio_min, float ratio_max)
{
    double area = (double)h * (double)w;
    double lr0 = log((double)ratio_min), lr1 = log((double)ratio_max);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * uniform(r, scale_min, scale_max);
        double aspect = exp(uniform(r, lr0, lr1));
        int64_t cw = round_even(sqrt(target * aspect)), ch = round_even(sqrt(target / aspect));
        if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
            int64_t top = (int64_t)qkv_rng_below(r, (uint64_t)(h - ch + 1));
            int64_t left = (int64_t)qkv_rng_below(r, (uint64_t)(w - cw + 1));
            return (qkv_crop_box){top, left, ch, cw};
        }
    }
    /* the central crop at the nearest allowed ratio */
    double in_ratio = (double)w / (double)h;
    int64_t cw = w, ch = h;
    if (in_ratio < ratio_min)
        ch = round_even((double)cw / ratio_min);
    else if (in_ratio > ratio_max)
        cw = round_even((double)ch * ratio_max);
    return (qkv_crop_box){(h - ch) / 2, (w - cw) / 2, ch, cw};
}

/* PyTorch's bilinear source position for align_corners=False along one
 * axis of `in` pixels resized to `out`: index i0, the next i1 (clamped) and
 * the weight of i1 */
static void tap(int64_t in, int64_t out, int64_t d, int64_t *i0, int64_t *i1, float *l1)
{
    float src = (float)((double)in / (double)out * ((double)d + 0.5) - 0.5);
    if (src < 0)
        src = 0;
    int64_t k = (int64_t)src;
    *i0 = k;
    *i1 = k < in - 1 ? k + 1 : k;
    *l1 = src - (float)k;
}

qkv_status qkv_resized_crop(float *dst, int64_t oh, int64_t ow, const float *src, int64_t C,
                            int64_t h, int64_t w, qkv_crop_box b)
{
    if (!dst || !src || oh < 1 || ow < 1 || C < 1 || b.top < 0 || b.left < 0 ||
        b.height < 1 || b.width < 1 || b.top + b.height > h || b.left + b.width > w)
        return qkv_set_error(QKV_ERR_ARG, "resized_crop: window (%lld, %lld) + (%lld x %lld) "
                             "is not inside the %lld x %lld image, or a size is below 1",
                             (long long)b.top, (long long)b.left, (long long)b.height,
                             (long long)b.width, (long long)h, (long long)w);
    for (int64_t y = 0; y < oh; y++) {
        int64_t y0, y1;
        float ly;
        tap(b.height, oh, y, &y0, &y1, &ly);
        for (int64_t x = 0; x < ow; x++) {
            int64_t x0, x1;
            float lx;
            tap(b.width, ow, x, &x0, &x1, &lx);
            for (int64_t c = 0; c < C; c++) {
                const float *s = src + (c * h + b.top) * w + b.left;
                const float *r0 = s + y0 * w, *r1 = s + y1 * w;
                /* across, then down, as PyTorch's upsample_bilinear2d */
                float t0 = r0[x0] * (1.0f - lx) + r0[x1] * lx;
                float t1 = r1[x0] * (1.0f - lx) + r1[x1] * lx;
                dst[(c * oh + y) * ow + x] = t0 * (1.0f - ly) + t1 * ly;
            }
        }
    }
    return QKV_OK;
}

void qkv_hflip(float *x, int64_t C, int64_t h, int64_t w)
{
    for (int64_t r = 0; x && r < C * h; r++) {
        float *row = x + r * w;
        for (int64_t a = 0, b = w - 1; a < b; a++, b--) {
            float t = row[a];
            row[a] = row[b];
            row[b] = t;
        }
    }
}

static float clamp01(float v) { return v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; }

void qkv_adjust_brightness(float *x, int64_t n, float f)
{
    /* torchvision's _blend(img, zeros, f): f img + (1 - f) 0 */
    for (int64_t i = 0; x && i < n; i++)
        x[i] = clamp01(f * x[i]);
}

qkv_status qkv_adjust_contrast(float *x, int64_t C, int64_t h, int64_t w, float f)
{
    if (!x || (C != 1 && C != 3) || h < 1 || w < 1)
        return qkv_set_error(QKV_ERR_ARG, "adjust_contrast: need a 1- or 3-channel image, got "
                             "%lld channels of %lld x %lld", (long long)C, (long long)h,
                             (long long)w);
    int64_t P = h * w;
    /* torchvision: the mean of rgb_to_grayscale(img) (float32 sums) */
    double sum = 0.0;
    for (int64_t i = 0; i < P; i++)
        sum += C == 1 ? x[i] : 0.2989f * x[i] + 0.587f * x[P + i] + 0.114f * x[2 * P + i];
    float mean = (float)(sum / (double)P);
    for (int64_t i = 0; i < C * P; i++)
        x[i] = clamp01(f * x[i] + (1.0f - f) * mean);
    return QKV_OK;
}

/* Reflect padding's source index for position p in [-pad, n + pad) */
static int64_t reflect(int64_t p, int64_t n)
{
    if (p < 0)
        return -p;
    if (p >= n)
        return 2 * (n - 1) - p;
    return p;
}

#define MAX_KERNEL 63

qkv_status qkv_gaussian_blur(float *x, int64_t C, int64_t h, int64_t w, int k, float sigma,
                             float *tmp)
{
    int half = k / 2;
    if (!x || !tmp || k < 1 || k % 2 == 0 || k > MAX_KERNEL || half >= h || half >= w ||
        !(sigma > 0.0f))
        return qkv_set_error(QKV_ERR_ARG, "gaussian_blur: kernel %d (odd, at most %d, half "
                             "below the %lld x %lld image's sides) and sigma %g (> 0)", k,
                             MAX_KERNEL, (long long)h, (long long)w, (double)sigma);
    /* torchvision's _get_gaussian_kernel1d: exp(-0.5 (t / sigma)^2) at
     * t = -(k-1)/2 .. (k-1)/2, divided by its sum */
    float kern[MAX_KERNEL];
    float sum = 0.0f;
    for (int i = 0; i < k; i++) {
        float t = (float)(i - half) / sigma;
        kern[i] = expf(-0.5f * t * t);
        sum += kern[i];
    }
    for (int i = 0; i < k; i++)
        kern[i] /= sum;
    /* the 2-D kernel is the outer product: rows, then columns */
    for (int64_t c = 0; c < C; c++) {
        float *img = x + c * h * w;
        for (int64_t y = 0; y < h; y++)
            for (int64_t xx = 0; xx < w; xx++) {
                float acc = 0.0f;
                for (int i = 0; i < k; i++)
                    acc += kern[i] * img[y * w + reflect(xx + i - half, w)];
                tmp[y * w + xx] = acc;
            }
        for (int64_t y = 0; y < h; y++)
            for (int64_t xx = 0; xx < w; xx++) {
                float acc = 0.0f;
                for (int i = 0; i < k; i++)
                    acc += kern[i] * tmp[reflect(y + i - half, h) * w + xx];
                img[y * w + xx] = acc;
            }
    }
    return QKV_OK;
}

qkv_status qkv_augment_view(float *dst, int64_t oh, int64_t ow, const float *src, int64_t C,
                            int64_t h, int64_t w, const qkv_view_aug *a, qkv_rng *r,
                            float *scratch)
{
    if (!dst || !src || !a || !r || !scratch || C < 1 || h < 1 || w < 1 || oh < 1 || ow < 1)
        return qkv_set_error(QKV_ERR_ARG, "augment_view: NULL buffer or a size below 1");
    qkv_crop_box box = {0, 0, h, w};
    if (a->crop_max > 0.0f)
        box = qkv_random_resized_crop_box(r, h, w, a->crop_min, a->crop_max, 3.0f / 4.0f,
                                          4.0f / 3.0f);
    qkv_status st = qkv_resized_crop(dst, oh, ow, src, C, h, w, box);
    if (st)
        return st;
    if (a->jitter > 0.0f && qkv_rng_uniform(r) < a->jitter) {
        /* ColorJitter: the factors, then the transforms in a random order */
        float fb = (float)uniform(r, fmax(0.0, 1.0 - a->brightness), 1.0 + a->brightness);
        float fc = (float)uniform(r, fmax(0.0, 1.0 - a->contrast), 1.0 + a->contrast);
        bool contrast_first = qkv_rng_below(r, 2) == 1;
        if (contrast_first && a->contrast > 0.0f && (st = qkv_adjust_contrast(dst, C, oh, ow, fc)))
            return st;
        if (a->brightness > 0.0f)
            qkv_adjust_brightness(dst, C * oh * ow, fb);
        if (!contrast_first && a->contrast > 0.0f &&
            (st = qkv_adjust_contrast(dst, C, oh, ow, fc)))
            return st;
    }
    if (a->blur > 0.0f && qkv_rng_uniform(r) < a->blur) {
        float sigma = (float)uniform(r, a->blur_sigma_min, a->blur_sigma_max);
        int64_t half = (int64_t)ceil(3.0 * sigma), most = (oh < ow ? oh : ow) - 1;
        if (half > most)
            half = most;
        if (half > MAX_KERNEL / 2)
            half = MAX_KERNEL / 2;
        if (half > 0 && (st = qkv_gaussian_blur(dst, C, oh, ow, (int)(2 * half + 1), sigma,
                                                scratch)))
            return st;
    }
    if (a->flip > 0.0f && qkv_rng_uniform(r) < a->flip)
        qkv_hflip(dst, C, oh, ow);
    return QKV_OK;
}
