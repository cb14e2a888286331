/* det_plot.c - pictures of detections: the image with each box outlined in
 * its class's colour and "label score" on a tab above it, and DETR's
 * attention figure (the paper's Fig. 6 and the demo notebook): one panel per
 * kept query, its decoder cross-attention over the image's feature grid
 * laid over the image, with the query's box.
 *
 * The image is scaled up by an integer factor (nearest neighbour, so the
 * pixels stay sharp) until its shorter side is at least 384 pixels; boxes
 * and text are drawn at that scale. */
#include "canvas.h"

#include <math.h>
#include <stdio.h>

static const qkv_rgb WHITE = {255, 255, 255}, BLACK = {0, 0, 0};

/* tab10 (matplotlib's default cycle): one colour per class, cycling */
static qkv_rgb class_colour(int64_t k)
{
    static const qkv_rgb tab10[10] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},
                                      {214, 39, 40},   {148, 103, 189}, {140, 86, 75},
                                      {227, 119, 194}, {127, 127, 127}, {188, 189, 34},
                                      {23, 190, 207}};
    return tab10[(k % 10 + 10) % 10];
}

static int auto_scale(const qkv_image *img, int asked)
{
    if (asked > 0)
        return asked;
    int64_t s = img->h < img->w ? img->h : img->w;
    int k = (int)((384 + s - 1) / (s > 0 ? s : 1));
    return k < 1 ? 1 : k > 16 ? 16 : k;
}

/* The image (grey or RGB, values in [0, 1]) into the canvas at (x0, y0),
 * each pixel a k x k square; heat (h, w) or NULL blends in a colour map. */
static void draw_image(qkv_canvas *c, const qkv_image *img, int x0, int y0, int k,
                       const float *heat, int64_t hh, int64_t hw)
{
    int64_t H = img->h, W = img->w;
    for (int64_t y = 0; y < H * k; y++)
        for (int64_t x = 0; x < W * k; x++) {
            int64_t sy = y / k, sx = x / k;
            double v[3];
            for (int ch = 0; ch < 3; ch++) {
                int64_t cc = img->c == 3 ? ch : 0;
                double p = img->data[(cc * H + sy) * W + sx];
                v[ch] = p < 0 ? 0 : p > 1 ? 1 : p;
            }
            if (heat) { /* the map's cell under this pixel, nearest */
                int64_t gy = (int64_t)((double)y / (double)(H * k) * (double)hh);
                int64_t gx = (int64_t)((double)x / (double)(W * k) * (double)hw);
                double t = heat[(gy < hh ? gy : hh - 1) * hw + (gx < hw ? gx : hw - 1)];
                /* the image darkened, attention in yellow-orange over it */
                double grey = 0.5 * (v[0] + v[1] + v[2]) / 3.0, a = t * t;
                v[0] = grey * (1.0 - a) + a;
                v[1] = grey * (1.0 - a) + 0.75 * a;
                v[2] = grey * (1.0 - a);
            }
            int px = x0 + (int)x, py = y0 + (int)y;
            if (px < 0 || py < 0 || px >= c->w || py >= c->h)
                continue;
            uint8_t *d = c->px + ((size_t)py * (size_t)c->w + (size_t)px) * 3;
            for (int ch = 0; ch < 3; ch++)
                d[ch] = (uint8_t)lround(v[ch] * 255.0);
        }
}

/* A box (x0, y0, x1, y1 in image pixels) 2 pixels wide, with its tab. */
static void draw_box(qkv_canvas *c, const qkv_detection *d, const char *name, int ox, int oy,
                     int k, qkv_rgb col)
{
    int x0 = ox + (int)lround(d->box[0] * k), y0 = oy + (int)lround(d->box[1] * k);
    int x1 = ox + (int)lround(d->box[2] * k), y1 = oy + (int)lround(d->box[3] * k);
    for (int i = 0; i < 2; i++)
        qkv__stroke_rect(c, x0 - i, y0 - i, x1 + i, y1 + i, col);
    char label[96];
    if (name && *name)
        snprintf(label, sizeof label, "%s %.2f", name, (double)d->score);
    else
        snprintf(label, sizeof label, "%lld %.2f", (long long)d->label, (double)d->score);
    int tw = qkv__text_width(label, 1) + 4, th = qkv__text_height(1) + 4;
    int ty = y0 - th - 1 >= oy ? y0 - th - 1 : y0 + 2;
    qkv__fill_rect(c, x0 - 1, ty, x0 - 1 + tw, ty + th, col);
    qkv__text(c, x0 + 1, ty + 2, label, 1, WHITE);
}

static const char *name_of(const qkv_det_plot_opts *o, int64_t label)
{
    return o && o->class_names && label >= 0 && label < o->n_names ? o->class_names[label] : NULL;
}

qkv_status qkv_plot_detections(const char *path, const qkv_image *img, const qkv_detection *dets,
                               int64_t n, const qkv_det_plot_opts *o)
{
    if (!path || !img || !img->data || (n > 0 && !dets) || (img->c != 1 && img->c != 3))
        return qkv_set_error(QKV_ERR_ARG, "plot_detections: %s",
                             !path || !img || !img->data ? "NULL argument"
                                                         : "the image needs 1 or 3 channels");
    int k = auto_scale(img, o ? o->scale : 0), pad = 12;
    qkv_canvas c;
    qkv_status st = qkv__canvas_new(&c, (int)img->w * k + 2 * pad, (int)img->h * k + 2 * pad, WHITE);
    if (st)
        return st;
    draw_image(&c, img, pad, pad, k, NULL, 0, 0);
    for (int64_t i = 0; i < n; i++)
        draw_box(&c, &dets[i], name_of(o, dets[i].label), pad, pad, k,
                 class_colour(dets[i].label));
    st = qkv__canvas_write(&c, path);
    qkv__canvas_free(&c);
    return st;
}

qkv_status qkv_plot_detr_attention(const char *path, const qkv_image *img,
                                   const qkv_detection *dets, int64_t n, const float *attn,
                                   int64_t h, int64_t w, const qkv_det_plot_opts *o)
{
    if (!path || !img || !img->data || n < 1 || !dets || !attn || h < 1 || w < 1 ||
        (img->c != 1 && img->c != 3))
        return qkv_set_error(QKV_ERR_ARG, "plot_detr_attention: %s",
                             n < 1 ? "no detection to draw" : "bad arguments");
    /* panels of at most 256 pixels on the longer side, four to a row */
    int64_t longer = img->h > img->w ? img->h : img->w;
    int k = o && o->scale > 0 ? o->scale : (int)(256 / (longer > 0 ? longer : 1));
    k = k < 1 ? 1 : k;
    int pw = (int)img->w * k, ph = (int)img->h * k, gap = 10, title = qkv__text_height(2) + 8;
    int cols = n < 4 ? (int)n : 4, rows = (int)((n + cols - 1) / cols);
    qkv_canvas c;
    qkv_status st = qkv__canvas_new(&c, cols * pw + (cols + 1) * gap,
                                    rows * (ph + title) + (rows + 1) * gap, WHITE);
    if (st)
        return st;
    float *norm = qkv__malloc((size_t)(h * w) * sizeof *norm);
    if (!norm) {
        qkv__canvas_free(&c);
        return qkv_set_error(QKV_ERR_NOMEM, "plot_detr_attention: out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        const float *a = attn + i * h * w;
        float lo = a[0], hi = a[0];
        for (int64_t j = 0; j < h * w; j++)
            lo = a[j] < lo ? a[j] : lo, hi = a[j] > hi ? a[j] : hi;
        for (int64_t j = 0; j < h * w; j++) /* its range stretched to [0, 1] */
            norm[j] = hi > lo ? (a[j] - lo) / (hi - lo) : 0;
        int x0 = gap + (int)(i % cols) * (pw + gap);
        int y0 = gap + (int)(i / cols) * (ph + title + gap);
        const char *name = name_of(o, dets[i].label);
        char t[96];
        if (name && *name)
            snprintf(t, sizeof t, "query %lld: %s", (long long)dets[i].query, name);
        else
            snprintf(t, sizeof t, "query %lld: class %lld", (long long)dets[i].query,
                     (long long)dets[i].label);
        qkv__text(&c, x0, y0, t, 2, BLACK);
        draw_image(&c, img, x0, y0 + title, k, norm, h, w);
        draw_box(&c, &dets[i], name, x0, y0 + title, k, class_colour(dets[i].label));
    }
    qkv__free(norm);
    st = qkv__canvas_write(&c, path);
    qkv__canvas_free(&c);
    return st;
}
