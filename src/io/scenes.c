/*
 * scenes.c - a detection data set made from what every machine has
 * (`qkv data scenes`): Fashion-MNIST items scaled 0.5 to 2 times, several
 * per canvas, some overlapping, on textured backgrounds, written as PNG
 * images with COCO JSON annotations (train from the training items,
 * validation from the test items).
 *
 * An item is pasted with its own brightness as its opacity (Fashion-MNIST
 * draws light objects on black), so the background shows around and
 * through its dark parts. Its box is the tight box of its visible pixels
 * (value above 0.1 after scaling), not the 28x28 frame. A new item may
 * overlap those already placed up to an IoU of max_overlap; positions are
 * drawn again until it fits (20 tries, then the canvas has one fewer).
 */
#include "io_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char *const fashion_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                              "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                              "Bag",         "Ankle boot"};

const char *qkv_fashion_class_name(int64_t k)
{
    return k >= 0 && k < 10 ? fashion_names[k] : NULL;
}

typedef struct {
    double x, y, w, h;
} box;

static double iou(const box *a, const box *b)
{
    double ix = fmin(a->x + a->w, b->x + b->w) - fmax(a->x, b->x);
    double iy = fmin(a->y + a->h, b->y + b->h) - fmax(a->y, b->y);
    if (ix <= 0 || iy <= 0)
        return 0.0;
    double inter = ix * iy;
    return inter / (a->w * a->h + b->w * b->h - inter);
}

/* A smooth random field (a coarse grid of values, bilinear in between),
 * stripes at a random angle and frequency, and pixel noise, in [0, 0.45]. */
static qkv_status background(float *bg, int64_t S, qkv_rng *r)
{
    int64_t g = 3 + (int64_t)qkv_rng_below(r, 6);
    qkv_image coarse = {.c = 1, .h = g, .w = g, .data = qkv__malloc((size_t)(g * g) * sizeof(float))};
    if (!coarse.data)
        return QKV_ERR_NOMEM;
    double level = 0.05 + 0.2 * qkv_rng_uniform(r), spread = 0.2 * qkv_rng_uniform(r);
    for (int64_t i = 0; i < g * g; i++)
        coarse.data[i] = (float)(level + spread * qkv_rng_uniform(r));
    qkv_image fine;
    qkv_status st = qkv_image_resize(&fine, &coarse, S, S);
    qkv__free(coarse.data);
    if (st)
        return st;
    double angle = M_PI * qkv_rng_uniform(r), freq = 0.1 + 0.5 * qkv_rng_uniform(r);
    double amp = 0.08 * qkv_rng_uniform(r), noise = 0.04 * qkv_rng_uniform(r);
    double cx = cos(angle) * freq, cy = sin(angle) * freq;
    for (int64_t y = 0; y < S; y++)
        for (int64_t x = 0; x < S; x++) {
            double v = fine.data[y * S + x] + amp * sin(cx * (double)x + cy * (double)y) +
                       noise * (qkv_rng_uniform(r) - 0.5);
            bg[y * S + x] = (float)fmin(0.45, fmax(0.0, v));
        }
    qkv_image_free(&fine);
    return QKV_OK;
}

/* Item i of d scaled to s x s and pasted at (x, y) of the canvas (S x S);
 * its tight box in *b. False if it has no visible pixel. */
static qkv_status paste(float *canvas, int64_t S, const qkv_mnist *d, int64_t i, int64_t s,
                        int64_t x, int64_t y, box *b, bool *visible)
{
    float item[28 * 28];
    qkv_status st = qkv_mnist_image(item, d, i, 28, NULL, NULL);
    qkv_image src = {.c = 1, .h = 28, .w = 28, .data = item}, big;
    if (st || (st = qkv_image_resize(&big, &src, s, s)))
        return st;
    int64_t x0 = s, y0 = s, x1 = -1, y1 = -1;
    for (int64_t v = 0; v < s; v++)
        for (int64_t u = 0; u < s; u++) {
            float p = fminf(1.0f, fmaxf(0.0f, big.data[v * s + u]));
            if (p > 0.1f) {
                x0 = u < x0 ? u : x0, x1 = u > x1 ? u : x1;
                y0 = v < y0 ? v : y0, y1 = v > y1 ? v : y1;
            }
            float a = fminf(1.0f, 2.0f * p), *c = &canvas[(y + v) * S + x + u];
            *c = a * p + (1.0f - a) * *c;
        }
    qkv_image_free(&big);
    *visible = x1 >= 0;
    *b = (box){(double)(x + x0), (double)(y + y0), (double)(x1 - x0 + 1), (double)(y1 - y0 + 1)};
    return QKV_OK;
}

/* One split: n canvases from the items of d, PNGs into dir/split/, the COCO
 * JSON into dir/annotations/split.json. */
static qkv_status make_split(const qkv_scenes_config *c, const qkv_mnist *d, const char *split,
                             int64_t n, uint64_t seed, qkv_progress *bar, int64_t *done)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", c->out_dir, split);
    qkv_status st = qkv_make_dirs(path);
    if (st)
        return st;
    int64_t S = c->size;
    float *canvas = qkv__malloc((size_t)(S * S) * sizeof(float));
    cJSON *root = cJSON_CreateObject(), *images = cJSON_AddArrayToObject(root, "images");
    cJSON *anns = cJSON_AddArrayToObject(root, "annotations");
    cJSON *cats = cJSON_AddArrayToObject(root, "categories");
    if (!canvas || !root || !images || !anns || !cats) {
        qkv__free(canvas);
        cJSON_Delete(root);
        return qkv_set_error(QKV_ERR_NOMEM, "scenes: out of memory");
    }
    cJSON *info = cJSON_AddObjectToObject(root, "info");
    cJSON_AddStringToObject(info, "description", "qkv scenes: Fashion-MNIST items on textured "
                                                 "backgrounds (qkv data scenes)");
    for (int k = 0; k < 10; k++) {
        cJSON *cat = cJSON_CreateObject();
        cJSON_AddNumberToObject(cat, "id", k + 1);
        cJSON_AddStringToObject(cat, "name", fashion_names[k]);
        cJSON_AddItemToArray(cats, cat);
    }
    qkv_rng r;
    qkv_rng_seed(&r, seed);
    int64_t ann_id = 1;
    for (int64_t img = 0; img < n && !st; img++) {
        if ((st = background(canvas, S, &r)))
            break;
        int64_t want = c->min_objects + (int64_t)qkv_rng_below(&r, (uint64_t)(c->max_objects -
                                                                             c->min_objects + 1));
        box placed[64];
        int64_t np = 0;
        for (int64_t k = 0; k < want && k < 64 && !st; k++) {
            int64_t item = (int64_t)qkv_rng_below(&r, (uint64_t)d->n);
            double scale = c->min_scale + (c->max_scale - c->min_scale) * qkv_rng_uniform(&r);
            int64_t s = (int64_t)lround(28.0 * scale);
            if (s > S)
                s = S;
            for (int tries = 0; tries < 20; tries++) {
                int64_t x = (int64_t)qkv_rng_below(&r, (uint64_t)(S - s + 1));
                int64_t y = (int64_t)qkv_rng_below(&r, (uint64_t)(S - s + 1));
                box frame = {(double)x, (double)y, (double)s, (double)s};
                bool ok = true;
                for (int64_t j = 0; j < np && ok; j++)
                    ok = iou(&frame, &placed[j]) <= c->max_overlap;
                if (!ok)
                    continue;
                box b;
                bool visible;
                if ((st = paste(canvas, S, d, item, s, x, y, &b, &visible)) || !visible)
                    break;
                placed[np++] = frame;
                cJSON *a = cJSON_CreateObject();
                cJSON_AddNumberToObject(a, "id", (double)ann_id++);
                cJSON_AddNumberToObject(a, "image_id", (double)(img + 1));
                cJSON_AddNumberToObject(a, "category_id", d->labels[item] + 1);
                double bb[4] = {b.x, b.y, b.w, b.h};
                cJSON_AddItemToObject(a, "bbox", cJSON_CreateDoubleArray(bb, 4));
                cJSON_AddNumberToObject(a, "area", b.w * b.h);
                cJSON_AddNumberToObject(a, "iscrowd", 0);
                cJSON_AddItemToArray(anns, a);
                break;
            }
        }
        char file[64];
        snprintf(file, sizeof file, "%06lld.png", (long long)(img + 1));
        snprintf(path, sizeof path, "%s/%s/%s", c->out_dir, split, file);
        qkv_image im = {.c = 1, .h = S, .w = S, .data = canvas};
        if (!st)
            st = qkv_image_write_png(&im, path);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "id", (double)(img + 1));
        cJSON_AddStringToObject(e, "file_name", file);
        cJSON_AddNumberToObject(e, "width", (double)S);
        cJSON_AddNumberToObject(e, "height", (double)S);
        cJSON_AddItemToArray(images, e);
        qkv_progress_update(bar, ++*done, split);
    }
    qkv__free(canvas);
    char *text = st ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (st)
        return st;
    if (!text)
        return qkv_set_error(QKV_ERR_NOMEM, "scenes: out of memory writing JSON");
    snprintf(path, sizeof path, "%s/annotations", c->out_dir);
    if (!(st = qkv_make_dirs(path))) {
        char tmp[4500];
        snprintf(path, sizeof path, "%s/annotations/%s.json", c->out_dir, split);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *f = fopen(tmp, "wb");
        bool ok = f && fputs(text, f) >= 0;
        ok = f && fclose(f) == 0 && ok;
        if (!ok || rename(tmp, path) != 0) {
            st = qkv_set_error(QKV_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
            remove(tmp);
        }
    }
    free(text);
    return st;
}

qkv_status qkv_scenes_make(const qkv_scenes_config *cfg)
{
    if (!cfg || !cfg->out_dir)
        return qkv_set_error(QKV_ERR_ARG, "scenes: %s is NULL", cfg ? "out_dir" : "the config");
    qkv_scenes_config c = *cfg;
    if (c.size == 0)
        c.size = 128;
    if (c.min_scale == 0 && c.max_scale == 0)
        c.min_scale = 0.5, c.max_scale = 2.0;
    if (c.max_objects == 0)
        c.min_objects = 1, c.max_objects = 5;
    if (c.max_overlap == 0)
        c.max_overlap = 0.3;
    if (c.size < 16 || c.size > 4096 || !(c.min_scale > 0) || c.max_scale < c.min_scale ||
        c.min_objects < 0 || c.max_objects < c.min_objects || c.max_objects > 64 ||
        c.n_train < 0 || c.n_val < 0 || !(c.max_overlap >= 0 && c.max_overlap <= 1))
        return qkv_set_error(QKV_ERR_ARG, "scenes: need 16 <= size <= 4096, 0 < min_scale <= "
                             "max_scale, 0 <= min_objects <= max_objects <= 64, counts >= 0, "
                             "0 <= max_overlap <= 1");
    qkv_mnist tr = {0}, te = {0};
    qkv_status st = qkv_mnist_load(&tr, c.data_dir, 1);
    if (!st)
        st = qkv_mnist_load(&te, c.data_dir, 0);
    qkv_progress bar;
    qkv_progress_start(&bar, c.n_train + c.n_val, "scenes");
    int64_t done = 0;
    if (!st)
        st = make_split(&c, &tr, "train", c.n_train, c.seed * 2 + 1, &bar, &done);
    if (!st)
        st = make_split(&c, &te, "val", c.n_val, c.seed * 2 + 2, &bar, &done);
    qkv_progress_finish(&bar, NULL);
    qkv_mnist_free(&tr);
    qkv_mnist_free(&te);
    return st;
}
