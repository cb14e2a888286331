/* coco_check.h - what the two COCO fuzz harnesses share: set equality, and
 * an evaluation whose every number must be -1 or within [0, 1]. */
#ifndef QKV_FUZZ_COCO_CHECK_H
#define QKV_FUZZ_COCO_CHECK_H

#include "io/coco.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The bytes as a NUL-terminated text (the readers need the NUL). */
static char *fuzz_text(const uint8_t *data, size_t size)
{
    char *t = malloc(size + 1);
    if (t) {
        memcpy(t, data, size);
        t[size] = '\0';
    }
    return t;
}

static int same_number(double a, double b) { return a == b || (isnan(a) && isnan(b)); }

static void fuzz_same_gt(const qkv_coco_gt *a, const qkv_coco_gt *b)
{
    if (a->n_images != b->n_images || a->n_cats != b->n_cats || a->n_anns != b->n_anns)
        abort();
    for (int64_t i = 0; i < a->n_images; i++)
        if (a->image_ids[i] != b->image_ids[i])
            abort();
    for (int64_t i = 0; i < a->n_cats; i++)
        if (a->cat_ids[i] != b->cat_ids[i] || strcmp(a->cat_names[i], b->cat_names[i]))
            abort();
    for (int64_t i = 0; i < a->n_anns; i++) {
        const qkv_coco_ann *x = &a->anns[i], *y = &b->anns[i];
        if (x->id != y->id || x->image_id != y->image_id || x->category_id != y->category_id ||
            x->iscrowd != y->iscrowd || !same_number(x->area, y->area))
            abort();
        for (int k = 0; k < 4; k++)
            if (!same_number(x->bbox[k], y->bbox[k]))
                abort();
    }
}

static void fuzz_same_dets(const qkv_coco_dets *a, const qkv_coco_dets *b)
{
    if (a->n != b->n)
        abort();
    for (int64_t i = 0; i < a->n; i++) {
        const qkv_coco_det *x = &a->d[i], *y = &b->d[i];
        if (x->image_id != y->image_id || x->category_id != y->category_id ||
            !same_number(x->score, y->score))
            abort();
        for (int k = 0; k < 4; k++)
            if (!same_number(x->bbox[k], y->bbox[k]))
                abort();
    }
}

static int in_range(double v) { return v == -1 || (v >= 0 && v <= 1); }

/* Evaluates; an error is allowed only for a detection outside gt. */
static void fuzz_evaluate(const qkv_coco_gt *gt, const qkv_coco_dets *dt)
{
    qkv_coco_result r;
    if (qkv_coco_evaluate(gt, dt, &r) != QKV_OK) {
        if (qkv_error_status() != QKV_ERR_FORMAT || !strstr(qkv_error(), "detection ["))
            abort();
        return;
    }
    int64_t K = r.n_categories;
    for (int i = 0; i < QKV_COCO_NSTATS; i++)
        if (!in_range(r.stats[i]))
            abort();
    for (int64_t i = 0; i < (int64_t)QKV_COCO_T * QKV_COCO_R * K * QKV_COCO_A * QKV_COCO_M; i++)
        if (!in_range(r.precision[i]))
            abort();
    for (int64_t i = 0; i < (int64_t)QKV_COCO_T * K * QKV_COCO_A * QKV_COCO_M; i++)
        if (!in_range(r.recall[i]))
            abort();
    qkv_coco_result_free(&r);
}

#endif
