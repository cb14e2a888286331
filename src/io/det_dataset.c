/*
 * det_dataset.c - a COCO-format detection data set read by path, and the
 * loader's fill that makes DETR's batches of it: each image read from its
 * file, its boxes taken as DETR's CocoDetection takes them (crowds out,
 * x, y, w, h -> x0, y0, x1, y1 clipped to the image, empty ones dropped),
 * augmented (qkv_det_augment) or resized, converted to the model's
 * channels, normalised, boxes as (cx, cy, w, h) / (w, h), and padded to the
 * batch's largest image with a pixel mask (DETR's nested_tensor_from_
 * tensor_list).
 *
 * The JSON is read once with cJSON (annotation files of detection sets are
 * megabytes, not the gigabytes of results files that coco.c reads fast);
 * images are decoded on the loader's thread when a batch asks for them.
 */
#include "io_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int64_t id, width, height;
    char *path;
    int64_t first, n; /* its annotations: anns[first .. first + n) */
} det_image;

typedef struct {
    int64_t id, image_id, category_id;
    double bbox[4], area;
    int iscrowd;
} det_ann;

struct qkv_det_dataset {
    char *name;
    int64_t n_images;
    det_image *images;
    int64_t n_anns;
    det_ann *anns;        /* grouped by image, in file order within each */
    int64_t n_cats;
    int64_t *cat_ids;
    char **cat_names;
    int64_t max_category, max_objects;
};

void qkv_det_dataset_free(qkv_det_dataset *d)
{
    if (!d)
        return;
    for (int64_t i = 0; i < d->n_images; i++)
        qkv__free(d->images[i].path);
    for (int64_t i = 0; i < d->n_cats; i++)
        qkv__free(d->cat_names[i]);
    qkv__free(d->images);
    qkv__free(d->anns);
    qkv__free(d->cat_ids);
    qkv__free(d->cat_names);
    qkv__free(d->name);
    qkv__free(d);
}

static bool get_int(const cJSON *o, const char *key, int64_t *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) ||
        fabs(x->valuedouble) > 9007199254740992.0)
        return false;
    *v = (int64_t)x->valuedouble;
    return true;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* index of id in the ascending ids[0..n), or -1 */
static int64_t find_id(const int64_t *ids, int64_t n, int64_t id)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && ids[lo] == id ? lo : -1;
}

/* Reads the three lists into d; QKV_ERR_FORMAT naming the entry. */
static qkv_status parse(qkv_det_dataset *d, const cJSON *root, const char *dir)
{
    const char *f = d->name;
    const cJSON *images = cJSON_GetObjectItemCaseSensitive(root, "images");
    const cJSON *anns = cJSON_GetObjectItemCaseSensitive(root, "annotations");
    const cJSON *cats = cJSON_GetObjectItemCaseSensitive(root, "categories");
    if (!cJSON_IsArray(images) || !cJSON_IsArray(anns) || !cJSON_IsArray(cats))
        return qkv_set_error(QKV_ERR_FORMAT, "%s: needs the lists \"images\", \"annotations\" "
                             "and \"categories\"", f);
    int64_t ni = cJSON_GetArraySize(images), na = cJSON_GetArraySize(anns);
    int64_t nc = cJSON_GetArraySize(cats);
    d->images = qkv__calloc((size_t)(ni > 0 ? ni : 1), sizeof *d->images);
    d->anns = qkv__calloc((size_t)(na > 0 ? na : 1), sizeof *d->anns);
    d->cat_ids = qkv__calloc((size_t)(nc > 0 ? nc : 1), sizeof *d->cat_ids);
    d->cat_names = qkv__calloc((size_t)(nc > 0 ? nc : 1), sizeof *d->cat_names);
    int64_t *img_ids = qkv__malloc((size_t)(ni > 0 ? ni : 1) * sizeof *img_ids);
    int64_t *order = qkv__malloc((size_t)(ni > 0 ? ni : 1) * sizeof *order);
    det_ann *tmp = qkv__malloc((size_t)(na > 0 ? na : 1) * sizeof *tmp);
    qkv_status st = QKV_OK;
    if (!d->images || !d->anns || !d->cat_ids || !d->cat_names || !img_ids || !order || !tmp) {
        st = qkv_set_error(QKV_ERR_NOMEM, "%s: out of memory", f);
        goto done;
    }
    int64_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cats) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
        if (!get_int(e, "id", &d->cat_ids[i])) {
            st = qkv_set_error(QKV_ERR_FORMAT, "%s: categories[%lld] has no integer \"id\"", f,
                               (long long)i);
            goto done;
        }
        d->cat_names[i] = qkv__strdup(cJSON_IsString(nm) ? nm->valuestring : "");
        if (!d->cat_names[i]) {
            st = qkv_set_error(QKV_ERR_NOMEM, "%s: out of memory", f);
            goto done;
        }
        if (d->cat_ids[i] > d->max_category)
            d->max_category = d->cat_ids[i];
        if (d->cat_ids[i] < 0) {
            st = qkv_set_error(QKV_ERR_FORMAT, "%s: categories[%lld] has a negative id", f,
                               (long long)i);
            goto done;
        }
        d->n_cats = ++i;
    }
    i = 0;
    cJSON_ArrayForEach(e, images) {
        det_image *im = &d->images[i];
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(e, "file_name");
        if (!get_int(e, "id", &im->id) || !cJSON_IsString(fn) ||
            !get_int(e, "width", &im->width) || !get_int(e, "height", &im->height) ||
            im->width < 1 || im->height < 1) {
            st = qkv_set_error(QKV_ERR_FORMAT, "%s: images[%lld] needs an integer \"id\", a "
                               "\"file_name\" and a positive \"width\" and \"height\"", f,
                               (long long)i);
            goto done;
        }
        size_t len = strlen(dir) + strlen(fn->valuestring) + 2;
        if (!(im->path = qkv__malloc(len))) {
            st = qkv_set_error(QKV_ERR_NOMEM, "%s: out of memory", f);
            goto done;
        }
        snprintf(im->path, len, "%s/%s", dir, fn->valuestring);
        img_ids[i] = im->id;
        d->n_images = ++i;
    }
    /* image ids sorted, to find each annotation's image */
    for (i = 0; i < ni; i++)
        order[i] = i;
    int64_t *sorted = qkv__malloc((size_t)(ni > 0 ? ni : 1) * sizeof *sorted);
    if (!sorted) {
        st = qkv_set_error(QKV_ERR_NOMEM, "%s: out of memory", f);
        goto done;
    }
    memcpy(sorted, img_ids, (size_t)ni * sizeof *sorted);
    qsort(sorted, (size_t)ni, sizeof *sorted, cmp_i64);
    for (i = 1; i < ni; i++)
        if (sorted[i] == sorted[i - 1]) {
            st = qkv_set_error(QKV_ERR_FORMAT, "%s: image id %lld is listed twice", f,
                               (long long)sorted[i]);
            qkv__free(sorted);
            goto done;
        }
    /* where each sorted id sits in the list */
    for (i = 0; i < ni; i++)
        order[find_id(sorted, ni, img_ids[i])] = i;
    int64_t *cat_sorted = qkv__malloc((size_t)(nc > 0 ? nc : 1) * sizeof *cat_sorted);
    if (!cat_sorted) {
        qkv__free(sorted);
        st = qkv_set_error(QKV_ERR_NOMEM, "%s: out of memory", f);
        goto done;
    }
    memcpy(cat_sorted, d->cat_ids, (size_t)nc * sizeof *cat_sorted);
    qsort(cat_sorted, (size_t)nc, sizeof *cat_sorted, cmp_i64);
    i = 0;
    cJSON_ArrayForEach(e, anns) {
        det_ann *a = &tmp[i];
        const cJSON *bb = cJSON_GetObjectItemCaseSensitive(e, "bbox");
        int64_t crowd = 0;
        bool ok = get_int(e, "image_id", &a->image_id) &&
                  get_int(e, "category_id", &a->category_id) && cJSON_IsArray(bb) &&
                  cJSON_GetArraySize(bb) == 4;
        if (!get_int(e, "id", &a->id))
            a->id = i + 1;
        for (int k = 0; ok && k < 4; k++) {
            const cJSON *v = cJSON_GetArrayItem(bb, k);
            ok = cJSON_IsNumber(v) && isfinite(v->valuedouble);
            a->bbox[k] = ok ? v->valuedouble : 0;
        }
        const cJSON *ar = cJSON_GetObjectItemCaseSensitive(e, "area");
        a->area = cJSON_IsNumber(ar) ? ar->valuedouble : a->bbox[2] * a->bbox[3];
        if (cJSON_GetObjectItemCaseSensitive(e, "iscrowd") && !get_int(e, "iscrowd", &crowd))
            ok = false;
        a->iscrowd = crowd != 0;
        int64_t where = ok ? find_id(sorted, ni, a->image_id) : -1;
        if (!ok || where < 0 || find_id(cat_sorted, nc, a->category_id) < 0 ||
            a->bbox[2] < 0 || a->bbox[3] < 0) {
            st = qkv_set_error(QKV_ERR_FORMAT, "%s: annotations[%lld]: %s", f, (long long)i,
                               !ok ? "needs integer \"image_id\" and \"category_id\" and a "
                                     "\"bbox\" of 4 numbers"
                               : where < 0 ? "its image is not listed"
                               : a->bbox[2] < 0 || a->bbox[3] < 0
                                   ? "its bbox has a negative size"
                                   : "its category is not listed");
            break;
        }
        d->images[order[where]].n++;
        i++;
    }
    d->n_anns = st ? 0 : na;
    if (!st) { /* group by image, file order kept within each */
        int64_t at = 0;
        for (int64_t k = 0; k < ni; k++) {
            d->images[k].first = at;
            at += d->images[k].n;
            d->images[k].n = 0;
        }
        for (int64_t k = 0; k < na; k++) {
            det_image *im = &d->images[order[find_id(sorted, ni, tmp[k].image_id)]];
            d->anns[im->first + im->n++] = tmp[k];
        }
        for (int64_t k = 0; k < ni; k++) {
            int64_t kept = 0;
            for (int64_t j = 0; j < d->images[k].n; j++)
                kept += !d->anns[d->images[k].first + j].iscrowd;
            if (kept > d->max_objects)
                d->max_objects = kept;
        }
    }
    qkv__free(sorted);
    qkv__free(cat_sorted);
done:
    qkv__free(img_ids);
    qkv__free(order);
    qkv__free(tmp);
    return st;
}

qkv_det_dataset *qkv_det_dataset_open(const char *ann_json, const char *image_dir)
{
    if (!ann_json || !image_dir) {
        qkv_set_error(QKV_ERR_ARG, "det_dataset_open: NULL path");
        return NULL;
    }
    uint8_t *text;
    size_t len;
    if (qkv__read_file(ann_json, "detection annotations", &text, &len) != QKV_OK)
        return NULL;
    cJSON *root = cJSON_ParseWithLength((const char *)text, len);
    qkv__free(text);
    qkv_det_dataset *d = qkv__calloc(1, sizeof *d);
    qkv_status st = QKV_OK;
    if (!d || !(d->name = qkv__strdup(ann_json)))
        st = qkv_set_error(QKV_ERR_NOMEM, "%s: out of memory", ann_json);
    else if (!cJSON_IsObject(root))
        st = qkv_set_error(QKV_ERR_FORMAT, "%s: not a JSON object", ann_json);
    else
        st = parse(d, root, image_dir);
    cJSON_Delete(root);
    if (st) {
        qkv_det_dataset_free(d);
        return NULL;
    }
    return d;
}

int64_t qkv_det_dataset_size(const qkv_det_dataset *d) { return d ? d->n_images : 0; }
int64_t qkv_det_dataset_image_id(const qkv_det_dataset *d, int64_t i)
{
    return d && i >= 0 && i < d->n_images ? d->images[i].id : -1;
}
const char *qkv_det_dataset_path(const qkv_det_dataset *d, int64_t i)
{
    return d && i >= 0 && i < d->n_images ? d->images[i].path : NULL;
}
void qkv_det_dataset_image_size(const qkv_det_dataset *d, int64_t i, int64_t *w, int64_t *h)
{
    bool ok = d && i >= 0 && i < d->n_images;
    *w = ok ? d->images[i].width : 0;
    *h = ok ? d->images[i].height : 0;
}
int64_t qkv_det_dataset_max_category(const qkv_det_dataset *d) { return d ? d->max_category : 0; }
int64_t qkv_det_dataset_max_objects(const qkv_det_dataset *d) { return d ? d->max_objects : 0; }
const char *qkv_det_dataset_category_name(const qkv_det_dataset *d, int64_t id)
{
    for (int64_t i = 0; d && i < d->n_cats; i++)
        if (d->cat_ids[i] == id)
            return d->cat_names[i];
    return NULL;
}

qkv_status qkv_det_dataset_read(const qkv_det_dataset *d, int64_t i, qkv_det_sample *s)
{
    if (!d || !s || i < 0 || i >= d->n_images)
        return qkv_set_error(QKV_ERR_ARG, "det_dataset_read: no image %lld", (long long)i);
    memset(s, 0, sizeof *s);
    const det_image *im = &d->images[i];
    qkv_status st = qkv_image_read(&s->image, im->path);
    if (st)
        return st;
    int64_t n = im->n > 0 ? im->n : 1;
    s->boxes = qkv__malloc((size_t)(4 * n) * sizeof *s->boxes);
    s->labels = qkv__malloc((size_t)n * sizeof *s->labels);
    if (!s->boxes || !s->labels) {
        qkv_det_sample_free(s);
        return qkv_set_error(QKV_ERR_NOMEM, "det_dataset_read: out of memory");
    }
    float W = (float)s->image.w, H = (float)s->image.h;
    for (int64_t j = 0; j < im->n; j++) {
        const det_ann *a = &d->anns[im->first + j];
        if (a->iscrowd)
            continue;
        /* ConvertCocoPolysToMask: xywh -> xyxy, clamped to the image, kept
         * if x1 > x0 and y1 > y0 */
        float b[4] = {(float)a->bbox[0], (float)a->bbox[1], (float)a->bbox[2],
                      (float)a->bbox[3]};
        b[2] += b[0], b[3] += b[1];
        for (int k = 0; k < 4; k++)
            b[k] = fminf(fmaxf(b[k], 0.0f), k % 2 ? H : W);
        if (!(b[2] > b[0] && b[3] > b[1]))
            continue;
        memcpy(s->boxes + 4 * s->n, b, sizeof b);
        s->labels[s->n++] = a->category_id;
    }
    return QKV_OK;
}

qkv_coco_gt *qkv_det_dataset_gt(const qkv_det_dataset *d, int64_t n)
{
    if (!d) {
        qkv_set_error(QKV_ERR_ARG, "det_dataset_gt: NULL data set");
        return NULL;
    }
    if (n <= 0 || n > d->n_images)
        n = d->n_images;
    qkv_coco_gt *gt = qkv_coco_gt_new(d->name);
    qkv_status st = gt ? QKV_OK : qkv_error_status();
    for (int64_t i = 0; i < d->n_cats && !st; i++)
        st = qkv_coco_gt_add_category(gt, d->cat_ids[i], d->cat_names[i]);
    for (int64_t i = 0; i < n && !st; i++) {
        const det_image *im = &d->images[i];
        st = qkv_coco_gt_add_image(gt, im->id);
        for (int64_t j = 0; j < im->n && !st; j++) {
            const det_ann *a = &d->anns[im->first + j];
            qkv_coco_ann c = {.id = a->id, .image_id = a->image_id,
                              .category_id = a->category_id, .area = a->area,
                              .iscrowd = a->iscrowd};
            memcpy(c.bbox, a->bbox, sizeof c.bbox);
            st = qkv_coco_gt_add_ann(gt, &c);
        }
    }
    if (st) {
        qkv_coco_gt_free(gt);
        return NULL;
    }
    return gt;
}

/* ---- batches for the loader ---- */

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)

typedef struct {
    size_t head, index, size, n_boxes, labels, boxes, mask, pixels, total;
} batch_layout;

static batch_layout layout_of(const qkv_det_fill_config *c)
{
    batch_layout L;
    size_t B = (size_t)c->batch_size, M = (size_t)c->max_objects, HW = (size_t)(c->max_h * c->max_w);
    L.head = 0;
    L.index = ALIGN64(4 * sizeof(int64_t));
    L.size = L.index + ALIGN64(B * sizeof(int64_t));
    L.n_boxes = L.size + ALIGN64(2 * B * sizeof(int64_t));
    L.labels = L.n_boxes + ALIGN64(B * sizeof(int64_t));
    L.boxes = L.labels + ALIGN64(B * (M ? M : 1) * sizeof(int64_t));
    L.mask = L.boxes + ALIGN64(4 * B * (M ? M : 1) * sizeof(float));
    L.pixels = L.mask + ALIGN64(B * HW * sizeof(float));
    L.total = L.pixels + ALIGN64(B * (size_t)c->channels * HW * sizeof(float));
    return L;
}

/* The largest (h, w) a resize to one of `scales` with max_size gives an
 * (h, w) image, into *mh, *mw. */
static void resize_bound(int64_t h, int64_t w, const int64_t *scales, int n, int64_t max_size,
                         int64_t *mh, int64_t *mw)
{
    for (int i = 0; i < n; i++) {
        int64_t oh, ow;
        qkv_det_resized_size(h, w, scales[i], max_size, &oh, &ow);
        *mh = oh > *mh ? oh : *mh;
        *mw = ow > *mw ? ow : *mw;
    }
}

size_t qkv_det_fill_prepare(qkv_det_fill_config *c)
{
    if (!c || !c->data || c->batch_size < 1 || (c->channels != 1 && c->channels != 3) ||
        c->size < 0 || c->max_size < 0) {
        qkv_set_error(QKV_ERR_ARG, "det_fill_prepare: %s",
                      !c || !c->data ? "no data set" : "need batch_size >= 1, 1 or 3 channels, "
                                                       "sizes >= 0");
        return 0;
    }
    const qkv_det_augment_config *a = c->aug;
    if (a && (a->n_scales < 1 || a->max_size < 1)) {
        qkv_set_error(QKV_ERR_ARG, "det_fill_prepare: an augmentation needs scales and a "
                      "max_size, which bound the batch's size");
        return 0;
    }
    if (c->max_objects <= 0)
        c->max_objects = qkv_det_dataset_max_objects(c->data);
    if (c->max_h <= 0 || c->max_w <= 0) {
        int64_t mh = 0, mw = 0;
        for (int64_t i = 0; i < c->data->n_images; i++) {
            const det_image *im = &c->data->images[i];
            if (a) {
                resize_bound(im->height, im->width, a->scales, a->n_scales, a->max_size, &mh, &mw);
            } else if (c->size > 0) {
                resize_bound(im->height, im->width, &c->size, 1, c->max_size, &mh, &mw);
            } else {
                mh = im->height > mh ? im->height : mh;
                mw = im->width > mw ? im->width : mw;
            }
        }
        if (a && a->n_crop_scales > 0) {
            /* after a crop the aspect is anything within the crop's sizes:
             * the shorter side is at most the largest scale, the longer at
             * most max_size plus the rounding of get_size_with_aspect_ratio
             * (half a pixel times the aspect ratio) */
            double aspect = a->crop_min > 0 ? (double)a->crop_max / (double)a->crop_min : 1.0;
            for (int64_t i = 0; i < c->data->n_images; i++) {
                const det_image *im = &c->data->images[i];
                double r = (double)(im->width > im->height ? im->width : im->height) /
                           (double)(im->width < im->height ? im->width : im->height);
                aspect = r > aspect ? r : aspect;
            }
            int64_t side = a->max_size + (int64_t)ceil(0.5 * aspect) + 1;
            mh = side > mh ? side : mh;
            mw = side > mw ? side : mw;
        }
        c->max_h = mh, c->max_w = mw;
    }
    return layout_of(c).total;
}

qkv_det_batch qkv_det_batch_view(const qkv_det_fill_config *c, const void *batch)
{
    batch_layout L = layout_of(c);
    char *p = (char *)(uintptr_t)batch;
    const int64_t *head = (const int64_t *)batch;
    return (qkv_det_batch){.n = head[0], .C = head[1], .H = head[2], .W = head[3],
                           .pixels = (float *)(void *)(p + L.pixels),
                           .mask = (float *)(void *)(p + L.mask),
                           .index = (int64_t *)(void *)(p + L.index),
                           .size = (int64_t *)(void *)(p + L.size),
                           .n_boxes = (int64_t *)(void *)(p + L.n_boxes),
                           .boxes = (float *)(void *)(p + L.boxes),
                           .labels = (int64_t *)(void *)(p + L.labels),
                           .max_objects = c->max_objects};
}

/* The image as `channels` channels: grey to RGB by copying, RGB to grey as
 * PIL's convert("L") (ITU-R 601-2 luma). */
static qkv_status to_channels(qkv_image *im, int64_t channels)
{
    if (im->c == channels)
        return QKV_OK;
    int64_t hw = im->h * im->w;
    float *d = qkv__malloc((size_t)(channels * hw) * sizeof *d);
    if (!d)
        return qkv_set_error(QKV_ERR_NOMEM, "det_fill: out of memory");
    if (channels == 3 && im->c == 1) {
        for (int c = 0; c < 3; c++)
            memcpy(d + c * hw, im->data, (size_t)hw * sizeof *d);
    } else if (channels == 1 && im->c == 3) {
        for (int64_t i = 0; i < hw; i++)
            d[i] = 0.299f * im->data[i] + 0.587f * im->data[hw + i] + 0.114f * im->data[2 * hw + i];
    } else {
        qkv__free(d);
        return qkv_set_error(QKV_ERR_SHAPE, "det_fill: an image of %lld channels for a model "
                             "of %lld", (long long)im->c, (long long)channels);
    }
    qkv__free(im->data);
    im->data = d;
    im->c = channels;
    return QKV_OK;
}

qkv_status qkv_det_fill(void *user, const int64_t *idx, int64_t n, qkv_rng *rng, void *batch)
{
    const qkv_det_fill_config *c = user;
    if (n > c->batch_size)
        return qkv_set_error(QKV_ERR_ARG, "det_fill: %lld images for batches of %lld",
                             (long long)n, (long long)c->batch_size);
    qkv_det_sample *s = qkv__calloc((size_t)(n > 0 ? n : 1), sizeof *s);
    const qkv_det_sample **ps = qkv__calloc((size_t)(n > 0 ? n : 1), sizeof *ps);
    qkv_det_batch b = qkv_det_batch_view(c, batch);
    qkv_status st = s && ps ? QKV_OK : qkv_set_error(QKV_ERR_NOMEM, "det_fill: out of memory");
    int64_t H = 0, W = 0;
    for (int64_t i = 0; i < n && !st; i++) {
        ps[i] = &s[i];
        st = qkv_det_dataset_read(c->data, idx[i], &s[i]);
        if (!st && c->aug)
            st = qkv_det_augment(&s[i], c->aug, rng);
        else if (!st && c->size > 0)
            st = qkv_det_resize(&s[i], c->size, c->max_size);
        if (!st)
            st = to_channels(&s[i].image, c->channels);
        if (st)
            break;
        if (s[i].n > c->max_objects) {
            st = qkv_set_error(QKV_ERR_ARG, "det_fill: %s has %lld boxes, the batch room for %lld",
                               c->data->images[idx[i]].path, (long long)s[i].n,
                               (long long)c->max_objects);
            break;
        }
        if (s[i].image.h > c->max_h || s[i].image.w > c->max_w) {
            st = qkv_set_error(QKV_ERR_SHAPE, "det_fill: %s is %lldx%lld after resizing, larger "
                               "than the batch's %lldx%lld", c->data->images[idx[i]].path,
                               (long long)s[i].image.h, (long long)s[i].image.w,
                               (long long)c->max_h, (long long)c->max_w);
            break;
        }
        qkv_det_finish(&s[i], c->mean, c->std);
        H = s[i].image.h > H ? s[i].image.h : H;
        W = s[i].image.w > W ? s[i].image.w : W;
        b.index[i] = idx[i];
        b.size[2 * i] = s[i].image.h, b.size[2 * i + 1] = s[i].image.w;
        b.n_boxes[i] = s[i].n;
        memcpy(b.boxes + 4 * i * c->max_objects, s[i].boxes, (size_t)(4 * s[i].n) * sizeof(float));
        memcpy(b.labels + i * c->max_objects, s[i].labels, (size_t)s[i].n * sizeof(int64_t));
    }
    if (!st)
        st = qkv_det_pad_batch(b.pixels, b.mask, ps, n, c->channels, H, W);
    if (!st) {
        int64_t *head = batch;
        head[0] = n, head[1] = c->channels, head[2] = H, head[3] = W;
    }
    for (int64_t i = 0; s && i < n; i++)
        qkv_det_sample_free(&s[i]);
    qkv__free(s);
    qkv__free(ps);
    return st;
}
