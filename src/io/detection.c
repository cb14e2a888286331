/*
 * detection.c - an image with its boxes, and DETR's augmentations that move
 * both (facebookresearch/detr datasets/transforms.py): horizontal flip,
 * resize of the shorter side with a cap on the longer, random size crop
 * (boxes clipped to the crop, those left empty dropped), and the last step
 * before the model: normalisation and boxes as (cx, cy, w, h) / (W, H).
 *
 * Boxes are (x0, y0, x1, y1) in pixels until qkv_det_finish. The image part
 * resizes bilinearly as torch.nn.functional.interpolate (qkv_image_resize);
 * DETR resizes PIL images, which antialias when shrinking: the boxes follow
 * DETR's arithmetic exactly, the pixels differ by that filter.
 */
#include "io_internal.h"

#include <math.h>
#include <stdlib.h>

void qkv_det_sample_free(qkv_det_sample *s)
{
    if (!s)
        return;
    qkv_image_free(&s->image);
    qkv__free(s->boxes);
    qkv__free(s->labels);
    memset(s, 0, sizeof *s);
}

void qkv_det_hflip(qkv_det_sample *s)
{
    qkv_image_hflip(&s->image);
    float w = (float)s->image.w;
    for (int64_t i = 0; i < s->n; i++) { /* boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [w, 0, w, 0] */
        float *b = s->boxes + 4 * i, x0 = b[0];
        b[0] = w - b[2];
        b[2] = w - x0;
    }
}

void qkv_det_resized_size(int64_t h, int64_t w, int64_t size, int64_t max_size, int64_t *oh,
                          int64_t *ow)
{
    /* DETR's get_size_with_aspect_ratio */
    if (max_size > 0) {
        double lo = (double)(h < w ? h : w), hi = (double)(h < w ? w : h);
        if (hi / lo * (double)size > (double)max_size)
            size = (int64_t)lround((double)max_size * lo / hi);
    }
    if ((w <= h && w == size) || (h <= w && h == size)) {
        *oh = h, *ow = w;
    } else if (w < h) {
        *ow = size, *oh = (int64_t)((double)size * (double)h / (double)w);
    } else {
        *oh = size, *ow = (int64_t)((double)size * (double)w / (double)h);
    }
}

qkv_status qkv_det_resize(qkv_det_sample *s, int64_t size, int64_t max_size)
{
    if (size < 1)
        return qkv_set_error(QKV_ERR_ARG, "det_resize: size %lld", (long long)size);
    int64_t oh, ow;
    qkv_det_resized_size(s->image.h, s->image.w, size, max_size, &oh, &ow);
    if (oh == s->image.h && ow == s->image.w)
        return QKV_OK;
    qkv_image r;
    qkv_status st = qkv_image_resize(&r, &s->image, oh, ow);
    if (st)
        return st;
    float rw = (float)((double)ow / (double)s->image.w), rh = (float)((double)oh / (double)s->image.h);
    qkv_image_free(&s->image);
    s->image = r;
    for (int64_t i = 0; i < s->n; i++) {
        float *b = s->boxes + 4 * i;
        b[0] *= rw, b[1] *= rh, b[2] *= rw, b[3] *= rh;
    }
    return QKV_OK;
}

qkv_status qkv_det_crop(qkv_det_sample *s, int64_t top, int64_t left, int64_t h, int64_t w)
{
    qkv_image c;
    qkv_status st = qkv_image_crop(&c, &s->image, top, left, h, w);
    if (st)
        return st;
    qkv_image_free(&s->image);
    s->image = c;
    int64_t kept = 0;
    for (int64_t i = 0; i < s->n; i++) {
        float b[4];
        for (int k = 0; k < 4; k++) { /* min(boxes - [j, i, j, i], [w, h]).clamp(min=0) */
            float v = s->boxes[4 * i + k] - (float)(k % 2 ? top : left);
            float cap = (float)(k % 2 ? h : w);
            b[k] = fmaxf(0.0f, fminf(v, cap));
        }
        if (!(b[2] > b[0] && b[3] > b[1])) /* nothing of it left in the crop */
            continue;
        memcpy(s->boxes + 4 * kept, b, sizeof b);
        s->labels[kept++] = s->labels[i];
    }
    s->n = kept;
    return QKV_OK;
}

/* random.randint(lo, hi), both ends included */
static int64_t randint(qkv_rng *r, int64_t lo, int64_t hi)
{
    return hi <= lo ? lo : lo + (int64_t)qkv_rng_below(r, (uint64_t)(hi - lo + 1));
}

qkv_status qkv_det_augment(qkv_det_sample *s, const qkv_det_augment_config *a, qkv_rng *r)
{
    if (!s || !a || !r || a->n_scales < 1)
        return qkv_set_error(QKV_ERR_ARG, "det_augment: %s",
                             s && a && r ? "no scales" : "NULL argument");
    if (qkv_rng_uniform(r) < a->flip_p)
        qkv_det_hflip(s);
    qkv_status st = QKV_OK;
    /* RandomSelect(RandomResize(scales), Compose([RandomResize(crop_scales),
     * RandomSizeCrop(crop_min, crop_max), RandomResize(scales)])) */
    if (a->n_crop_scales > 0 && qkv_rng_uniform(r) < a->crop_p) {
        st = qkv_det_resize(s, a->crop_scales[qkv_rng_below(r, (uint64_t)a->n_crop_scales)], 0);
        if (!st) {
            int64_t W = s->image.w, H = s->image.h;
            int64_t cw = randint(r, a->crop_min, W < a->crop_max ? W : a->crop_max);
            int64_t ch = randint(r, a->crop_min, H < a->crop_max ? H : a->crop_max);
            cw = cw < W ? cw : W, ch = ch < H ? ch : H;
            int64_t top = randint(r, 0, H - ch), left = randint(r, 0, W - cw);
            st = qkv_det_crop(s, top, left, ch, cw);
        }
    }
    if (!st)
        st = qkv_det_resize(s, a->scales[qkv_rng_below(r, (uint64_t)a->n_scales)], a->max_size);
    return st;
}

void qkv_det_finish(qkv_det_sample *s, const float *mean, const float *std)
{
    if (mean && std)
        qkv_image_normalize(&s->image, mean, std);
    float W = (float)s->image.w, H = (float)s->image.h;
    for (int64_t i = 0; i < s->n; i++) {
        float *b = s->boxes + 4 * i;
        float cx = 0.5f * (b[0] + b[2]), cy = 0.5f * (b[1] + b[3]), w = b[2] - b[0], h = b[3] - b[1];
        b[0] = cx / W, b[1] = cy / H, b[2] = w / W, b[3] = h / H;
    }
}

qkv_status qkv_det_pad_batch(float *pixels, float *mask, const qkv_det_sample *const *s,
                             int64_t B, int64_t C, int64_t H, int64_t W)
{
    for (int64_t b = 0; b < B; b++) {
        const qkv_image *im = &s[b]->image;
        if (im->c != C || im->h > H || im->w > W)
            return qkv_set_error(QKV_ERR_SHAPE, "det_pad_batch: image %lld is (%lld, %lld, %lld), "
                                 "the batch (%lld, %lld, %lld)", (long long)b, (long long)im->c,
                                 (long long)im->h, (long long)im->w, (long long)C, (long long)H,
                                 (long long)W);
        float *p = pixels + b * C * H * W, *m = mask ? mask + b * H * W : NULL;
        memset(p, 0, (size_t)(C * H * W) * sizeof *p);
        for (int64_t c = 0; c < C; c++)
            for (int64_t y = 0; y < im->h; y++)
                memcpy(p + (c * H + y) * W, im->data + (c * im->h + y) * im->w,
                       (size_t)im->w * sizeof *p);
        if (m)
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++)
                    m[y * W + x] = y < im->h && x < im->w ? 1.0f : 0.0f;
    }
    return QKV_OK;
}
