/* coco.c - COCO ground truth and detection results: the two sets, built in
 * memory or read from JSON, checked entry by entry with messages that name
 * the file and the entry. The evaluation is src/train/coco_eval.c.
 *
 * What the files hold is what pycocotools' COCO() and loadRes() read for
 * boxes: integer ids, bbox [x, y, w, h], the annotation's "area" (not w*h),
 * "iscrowd", a score per detection. Keys are matched exactly and the last of
 * a repeated key wins, as in Python's json.
 *
 * The readers stream the text with json_reader.c: a results file of 500,000
 * detections (78 MB) takes a tenth of what cJSON's tree takes (docs/coco.md).
 * coco_cjson.c reads the same through cJSON, as the reference that the tests
 * and the fuzz harnesses hold these readers to. */
#include "coco.h"
#include "io_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Integers beyond 2^53 do not survive a double (JSON's numbers). */
#define MAX_EXACT_INT 9007199254740992.0

/* ---- the sets, in memory --------------------------------------------- */

/* Makes room for one more element of `size` bytes in *arr (n used, *cap). */
static int grow(void **arr, int64_t n, int64_t *cap, size_t size)
{
    if (n < *cap)
        return 0;
    int64_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, (size_t)c * size);
    if (!p) {
        qkv_set_error(QKV_ERR_NOMEM, "coco: out of memory for %lld entries", (long long)c);
        return -1;
    }
    *arr = p;
    *cap = c;
    return 0;
}

static char *dup_name(const char *name, const char *fallback)
{
    return qkv__strdup(name ? name : fallback);
}

qkv_coco_gt *qkv_coco_gt_new(const char *name)
{
    qkv_coco_gt *gt = qkv__calloc(1, sizeof *gt);
    if (gt && !(gt->name = dup_name(name, "ground truth"))) {
        qkv__free(gt);
        return NULL;
    }
    return gt;
}

void qkv_coco_gt_free(qkv_coco_gt *gt)
{
    if (!gt)
        return;
    for (int64_t i = 0; i < gt->n_cats; i++)
        qkv__free(gt->cat_names[i]);
    free(gt->cat_names);
    free(gt->cat_ids);
    free(gt->image_ids);
    free(gt->anns);
    qkv__free(gt->name);
    qkv__free(gt);
}

static int id_ok(int64_t id) { return id >= -(int64_t)MAX_EXACT_INT && id <= (int64_t)MAX_EXACT_INT; }

qkv_status qkv_coco_gt_add_image(qkv_coco_gt *gt, int64_t image_id)
{
    if (!gt || !id_ok(image_id))
        return qkv_set_error(QKV_ERR_ARG, "qkv_coco_gt_add_image: %s",
                             gt ? "id beyond +-2^53" : "gt is NULL");
    if (grow((void **)&gt->image_ids, gt->n_images, &gt->cap_images, sizeof *gt->image_ids))
        return QKV_ERR_NOMEM;
    gt->image_ids[gt->n_images++] = image_id;
    return QKV_OK;
}

qkv_status qkv_coco_gt_add_category(qkv_coco_gt *gt, int64_t category_id, const char *name)
{
    if (!gt || !id_ok(category_id))
        return qkv_set_error(QKV_ERR_ARG, "qkv_coco_gt_add_category: %s",
                             gt ? "id beyond +-2^53" : "gt is NULL");
    int64_t cap = gt->cap_cats;
    if (grow((void **)&gt->cat_ids, gt->n_cats, &gt->cap_cats, sizeof *gt->cat_ids))
        return QKV_ERR_NOMEM;
    if (gt->cap_cats != cap) {
        char **p = realloc(gt->cat_names, (size_t)gt->cap_cats * sizeof *p);
        if (!p) {
            gt->cap_cats = cap; /* cat_ids grew; the names did not: keep them in step */
            return qkv_set_error(QKV_ERR_NOMEM, "coco: out of memory for category names");
        }
        gt->cat_names = p;
    }
    char *copy = qkv__strdup(name ? name : "");
    if (!copy)
        return QKV_ERR_NOMEM;
    gt->cat_ids[gt->n_cats] = category_id;
    gt->cat_names[gt->n_cats++] = copy;
    return QKV_OK;
}

/* Why a box is bad, or NULL: finite, w and h >= 0. */
static const char *box_problem(const double *b)
{
    for (int i = 0; i < 4; i++)
        if (!isfinite(b[i]))
            return "bbox holds a number that is not finite";
    if (b[2] < 0)
        return "bbox has a negative width";
    if (b[3] < 0)
        return "bbox has a negative height";
    return NULL;
}

qkv_status qkv_coco_gt_add_ann(qkv_coco_gt *gt, const qkv_coco_ann *ann)
{
    if (!gt || !ann)
        return qkv_set_error(QKV_ERR_ARG, "qkv_coco_gt_add_ann: %s is NULL", gt ? "ann" : "gt");
    const char *why = box_problem(ann->bbox);
    if (!why && !(isfinite(ann->area) && ann->area >= 0))
        why = "area is negative or not finite";
    if (!why && ann->iscrowd != 0 && ann->iscrowd != 1)
        why = "iscrowd is neither 0 nor 1";
    if (!why && !(id_ok(ann->id) && id_ok(ann->image_id) && id_ok(ann->category_id)))
        why = "an id is beyond +-2^53";
    if (why)
        return qkv_set_error(QKV_ERR_ARG, "%s: annotations[%lld] (id %lld): %s", gt->name,
                             (long long)gt->n_anns, (long long)ann->id, why);
    if (grow((void **)&gt->anns, gt->n_anns, &gt->cap_anns, sizeof *gt->anns))
        return QKV_ERR_NOMEM;
    gt->anns[gt->n_anns++] = *ann;
    return QKV_OK;
}

int64_t qkv_coco_gt_count_images(const qkv_coco_gt *gt) { return gt ? gt->n_images : 0; }
int64_t qkv_coco_gt_count_anns(const qkv_coco_gt *gt) { return gt ? gt->n_anns : 0; }

const char *qkv_coco_gt_category_name(const qkv_coco_gt *gt, int64_t category_id)
{
    const char *name = NULL;
    for (int64_t i = 0; gt && i < gt->n_cats; i++)
        if (gt->cat_ids[i] == category_id)
            name = gt->cat_names[i]; /* the last listing wins, as in pycocotools' dict */
    return name;
}

qkv_coco_dets *qkv_coco_dets_new(const char *name)
{
    qkv_coco_dets *dt = qkv__calloc(1, sizeof *dt);
    if (dt && !(dt->name = dup_name(name, "detections"))) {
        qkv__free(dt);
        return NULL;
    }
    return dt;
}

void qkv_coco_dets_free(qkv_coco_dets *dt)
{
    if (!dt)
        return;
    free(dt->d);
    qkv__free(dt->name);
    qkv__free(dt);
}

qkv_status qkv_coco_dets_add(qkv_coco_dets *dt, const qkv_coco_det *det)
{
    if (!dt || !det)
        return qkv_set_error(QKV_ERR_ARG, "qkv_coco_dets_add: %s is NULL", dt ? "det" : "dt");
    const char *why = box_problem(det->bbox);
    if (why)
        return qkv_set_error(QKV_ERR_ARG, "%s: detection [%lld]: %s", dt->name,
                             (long long)dt->n, why);
    if (!isfinite(det->score))
        return qkv_set_error(QKV_ERR_ARG, "%s: detection [%lld]: score is not finite",
                             dt->name, (long long)dt->n);
    if (!id_ok(det->image_id) || !id_ok(det->category_id))
        return qkv_set_error(QKV_ERR_ARG, "%s: detection [%lld]: an id is beyond +-2^53",
                             dt->name, (long long)dt->n);
    if (grow((void **)&dt->d, dt->n, &dt->cap, sizeof *dt->d))
        return QKV_ERR_NOMEM;
    dt->d[dt->n++] = *det;
    return QKV_OK;
}

int64_t qkv_coco_dets_count(const qkv_coco_dets *dt) { return dt ? dt->n : 0; }

/* ---- the index: sorted unique ids, each annotation's place -------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts ids[0..n) and drops repeats; returns the count kept. */
static int64_t sort_unique(int64_t *ids, int64_t n)
{
    qsort(ids, (size_t)n, sizeof *ids, cmp_i64);
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (k == 0 || ids[i] != ids[k - 1])
            ids[k++] = ids[i];
    return k;
}

int64_t qkv__coco_find(const int64_t *ids, int64_t n, int64_t id)
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

void qkv__coco_index_free(qkv__coco_index *ix)
{
    qkv__free(ix->image_ids);
    qkv__free(ix->cat_ids);
    qkv__free(ix->cat_names);
    qkv__free(ix->ann_image);
    qkv__free(ix->ann_cat);
    memset(ix, 0, sizeof *ix);
}

/* (id, position) pairs, to find a repeated annotation id and both entries. */
typedef struct {
    int64_t id, pos;
} id_pos;

static int cmp_id_pos(const void *a, const void *b)
{
    const id_pos *x = a, *y = b;
    if (x->id != y->id)
        return (x->id > y->id) - (x->id < y->id);
    return (x->pos > y->pos) - (x->pos < y->pos);
}

qkv_status qkv__coco_index_build(qkv__coco_index *ix, const qkv_coco_gt *gt)
{
    memset(ix, 0, sizeof *ix);
    if (!gt)
        return qkv_set_error(QKV_ERR_ARG, "coco: the ground truth is NULL");
    if (gt->n_images > INT32_MAX || gt->n_cats > INT32_MAX)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: more than 2^31 images or categories",
                             gt->name);
    size_t ni = (size_t)(gt->n_images ? gt->n_images : 1);
    size_t nc = (size_t)(gt->n_cats ? gt->n_cats : 1);
    size_t na = (size_t)(gt->n_anns ? gt->n_anns : 1);
    ix->image_ids = qkv__malloc(ni * sizeof *ix->image_ids);
    ix->cat_ids = qkv__malloc(nc * sizeof *ix->cat_ids);
    ix->cat_names = qkv__malloc(nc * sizeof *ix->cat_names);
    ix->ann_image = qkv__malloc(na * sizeof *ix->ann_image);
    ix->ann_cat = qkv__malloc(na * sizeof *ix->ann_cat);
    id_pos *ids = qkv__malloc(na * sizeof *ids);
    if (!ix->image_ids || !ix->cat_ids || !ix->cat_names || !ix->ann_image || !ix->ann_cat ||
        !ids) {
        qkv__free(ids);
        qkv__coco_index_free(ix);
        return QKV_ERR_NOMEM;
    }
    if (gt->n_images)
        memcpy(ix->image_ids, gt->image_ids, (size_t)gt->n_images * sizeof *ix->image_ids);
    ix->n_images = sort_unique(ix->image_ids, gt->n_images);
    if (gt->n_cats)
        memcpy(ix->cat_ids, gt->cat_ids, (size_t)gt->n_cats * sizeof *ix->cat_ids);
    ix->n_cats = sort_unique(ix->cat_ids, gt->n_cats);
    for (int64_t i = 0; i < gt->n_cats; i++) /* later listings win */
        ix->cat_names[qkv__coco_find(ix->cat_ids, ix->n_cats, gt->cat_ids[i])] =
            gt->cat_names[i];

    qkv_status st = QKV_OK;
    for (int64_t i = 0; i < gt->n_anns && st == QKV_OK; i++) {
        const qkv_coco_ann *a = &gt->anns[i];
        int64_t im = qkv__coco_find(ix->image_ids, ix->n_images, a->image_id);
        int64_t c = qkv__coco_find(ix->cat_ids, ix->n_cats, a->category_id);
        if (im < 0)
            st = qkv_set_error(QKV_ERR_FORMAT,
                               "%s: annotations[%lld] (id %lld): image_id %lld is not in "
                               "\"images\"",
                               gt->name, (long long)i, (long long)a->id,
                               (long long)a->image_id);
        else if (c < 0)
            st = qkv_set_error(QKV_ERR_FORMAT,
                               "%s: annotations[%lld] (id %lld): category_id %lld is not in "
                               "\"categories\"",
                               gt->name, (long long)i, (long long)a->id,
                               (long long)a->category_id);
        ix->ann_image[i] = (int32_t)im;
        ix->ann_cat[i] = (int32_t)c;
        ids[i] = (id_pos){a->id, i};
    }
    if (st == QKV_OK && gt->n_anns > 1) {
        qsort(ids, (size_t)gt->n_anns, sizeof *ids, cmp_id_pos);
        for (int64_t i = 1; i < gt->n_anns; i++)
            if (ids[i].id == ids[i - 1].id) {
                st = qkv_set_error(QKV_ERR_FORMAT,
                                   "%s: annotations[%lld] and annotations[%lld] have the same "
                                   "id %lld (pycocotools would keep only the last)",
                                   gt->name, (long long)ids[i - 1].pos, (long long)ids[i].pos,
                                   (long long)ids[i].id);
                break;
            }
    }
    qkv__free(ids);
    if (st != QKV_OK)
        qkv__coco_index_free(ix);
    return st;
}

/* ---- checking what a file says ------------------------------------------ */

static const char *const LIST_NAME[] = {"images", "categories", "annotations", "detection "};

/* Where an error is: "GT.json: annotations[17]". */
typedef struct {
    const char *file;
    qkv__coco_list list;
    int64_t i;
} where;

__attribute__((format(printf, 2, 3))) static qkv_status bad(const where *w, const char *fmt,
                                                            ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qkv_set_error(QKV_ERR_FORMAT, "%s: %s[%lld]: %s", w->file, LIST_NAME[w->list],
                         (long long)w->i, msg);
}

static qkv_status get_int(const where *w, const qkv__jv *v, const char *key, int64_t *out)
{
    if (v->kind == JR_NONE)
        return bad(w, "missing key \"%s\"", key);
    if (v->kind != JR_NUMBER)
        return bad(w, "\"%s\" must be an integer, got %s", key, jr_kind_name(v->kind));
    double d = v->num;
    if (!(d == floor(d)) || fabs(d) > MAX_EXACT_INT)
        return bad(w, "\"%s\" must be an integer (within +-2^53), got %.17g", key, d);
    *out = (int64_t)d;
    return QKV_OK;
}

static qkv_status get_number(const where *w, const qkv__jv *v, const char *key, double *out)
{
    if (v->kind == JR_NONE)
        return bad(w, "missing key \"%s\"", key);
    if (v->kind != JR_NUMBER)
        return bad(w, "\"%s\" must be a number, got %s", key, jr_kind_name(v->kind));
    if (!isfinite(v->num))
        return bad(w, "\"%s\" is out of range", key);
    *out = v->num;
    return QKV_OK;
}

/* A 0/1 flag: a number 0 or 1, or false/true. Absent: *out keeps its value. */
static qkv_status get_flag(const where *w, const qkv__jv *v, const char *key, int *out)
{
    if (v->kind == JR_NONE)
        return QKV_OK;
    if (v->kind == JR_TRUE || v->kind == JR_FALSE ||
        (v->kind == JR_NUMBER && (v->num == 0 || v->num == 1))) {
        *out = v->num == 1;
        return QKV_OK;
    }
    if (v->kind == JR_NUMBER)
        return bad(w, "\"%s\" must be 0 or 1, got %.17g", key, v->num);
    return bad(w, "\"%s\" must be 0 or 1, got %s", key, jr_kind_name(v->kind));
}

static qkv_status get_bbox(const where *w, const qkv__jbox *b, double *out)
{
    if (b->kind == JR_NONE)
        return bad(w, "missing key \"bbox\"");
    if (b->kind != JR_ARRAY)
        return bad(w, "\"bbox\" must be a list of 4 numbers [x, y, w, h], got %s",
                   jr_kind_name(b->kind));
    if (b->bad >= 0 && b->bad < 4)
        return bad(w, "\"bbox\"[%d] must be a number, got %s", b->bad,
                   jr_kind_name(b->bad_kind));
    if (b->n != 4)
        return bad(w, "\"bbox\" must be a list of 4 numbers [x, y, w, h], got %d", b->n);
    for (int k = 0; k < 4; k++)
        if (!isfinite(b->v[k]))
            return bad(w, "\"bbox\"[%d] is out of range", k);
    if (b->v[2] < 0 || b->v[3] < 0)
        return bad(w, "\"bbox\" has a negative %s (%.17g)", b->v[2] < 0 ? "width" : "height",
                   b->v[2] < 0 ? b->v[2] : b->v[3]);
    memcpy(out, b->v, sizeof b->v);
    return QKV_OK;
}

qkv_status qkv__coco_add_entry(void *set, qkv__coco_list list, int64_t i, jr_kind kind,
                               const qkv__coco_fields *f)
{
    qkv_coco_gt *gt = set;
    qkv_coco_dets *dt = set;
    const where w = {list == QKV__COCO_DETS ? dt->name : gt->name, list, i};
    if (kind != JR_OBJECT)
        return bad(&w, "must be an object, got %s", jr_kind_name(kind));
    int64_t id = 0;
    switch (list) {
    case QKV__COCO_IMAGES:
        if (get_int(&w, &f->id, "id", &id))
            return QKV_ERR_FORMAT;
        return qkv_coco_gt_add_image(gt, id);
    case QKV__COCO_CATEGORIES:
        if (get_int(&w, &f->id, "id", &id))
            return QKV_ERR_FORMAT;
        if (f->name_kind != JR_NONE && f->name_kind != JR_STRING)
            return bad(&w, "\"name\" must be a string, got %s", jr_kind_name(f->name_kind));
        return qkv_coco_gt_add_category(gt, id, f->name_kind == JR_STRING ? f->name : NULL);
    case QKV__COCO_ANNS: {
        qkv_coco_ann a = {0};
        int ignore = 0;
        if (get_int(&w, &f->id, "id", &a.id) || get_int(&w, &f->image_id, "image_id", &a.image_id) ||
            get_int(&w, &f->category_id, "category_id", &a.category_id) ||
            get_bbox(&w, &f->bbox, a.bbox) || get_number(&w, &f->area, "area", &a.area) ||
            get_flag(&w, &f->iscrowd, "iscrowd", &a.iscrowd) ||
            get_flag(&w, &f->ignore, "ignore", &ignore))
            return QKV_ERR_FORMAT;
        if (a.area < 0)
            return bad(&w, "\"area\" is negative (%.17g)", a.area);
        return qkv_coco_gt_add_ann(gt, &a);
    }
    case QKV__COCO_DETS: {
        qkv_coco_det d;
        if (get_int(&w, &f->image_id, "image_id", &d.image_id) ||
            get_int(&w, &f->category_id, "category_id", &d.category_id) ||
            get_bbox(&w, &f->bbox, d.bbox) || get_number(&w, &f->score, "score", &d.score))
            return QKV_ERR_FORMAT;
        return qkv_coco_dets_add(dt, &d);
    }
    }
    return qkv_set_error(QKV_ERR_ARG, "coco: unknown list %d", (int)list);
}

static const char *const ROOT_KEYS[3] = {"images", "categories", "annotations"};

qkv_status qkv__coco_check_root(const char *file, jr_kind root, const jr_kind kinds[3])
{
    if (root != JR_OBJECT)
        return qkv_set_error(QKV_ERR_FORMAT,
                             "%s: a COCO ground truth is an object with \"images\", "
                             "\"annotations\" and \"categories\", got %s%s",
                             file, jr_kind_name(root),
                             root == JR_ARRAY ? " (a results list? that goes to --dt)" : "");
    for (int k = 0; k < 3; k++) {
        if (kinds[k] == JR_NONE)
            return qkv_set_error(QKV_ERR_FORMAT,
                                 "%s: missing key \"%s\" (a COCO ground truth has \"images\", "
                                 "\"annotations\" and \"categories\")",
                                 file, ROOT_KEYS[k]);
        if (kinds[k] != JR_ARRAY)
            return qkv_set_error(QKV_ERR_FORMAT, "%s: \"%s\" must be a list, got %s", file,
                                 ROOT_KEYS[k], jr_kind_name(kinds[k]));
    }
    return QKV_OK;
}

qkv_status qkv__coco_check_results_root(const char *file, jr_kind root, int has_annotations)
{
    if (root == JR_ARRAY)
        return QKV_OK;
    return qkv_set_error(QKV_ERR_FORMAT,
                         "%s: COCO results are a list of {\"image_id\", \"category_id\", "
                         "\"bbox\", \"score\"}, got %s%s",
                         file, jr_kind_name(root),
                         has_annotations ? " (a ground truth? that goes to --gt)" : "");
}

/* ---- the fast readers ---------------------------------------------------- */

enum { KEY_CAP = 16, NAME_CAP = 256 };

/* A scalar field: a number's value, a boolean as 1/0, anything else only
 * its kind. */
static int read_scalar(jr *j, qkv__jv *v)
{
    v->kind = jr_peek(j);
    v->num = v->kind == JR_TRUE;
    if (v->kind == JR_NUMBER)
        return jr_number(j, &v->num);
    return jr_skip(j);
}

static int read_box(jr *j, qkv__jbox *b)
{
    b->kind = jr_peek(j);
    b->n = 0;
    b->bad = -1;
    if (b->kind != JR_ARRAY)
        return jr_skip(j);
    if (jr_array(j))
        return -1;
    int first = 1, r;
    while ((r = jr_next(j, &first)) == 1) {
        jr_kind k = jr_peek(j);
        double d;
        if (k == JR_NUMBER) {
            if (jr_number(j, &d))
                return -1;
            if (b->n < 4)
                b->v[b->n] = d;
        } else {
            if (b->bad < 0) {
                b->bad = b->n;
                b->bad_kind = k;
            }
            if (jr_skip(j))
                return -1;
        }
        if (b->n < INT32_MAX)
            b->n++;
    }
    return r;
}

/* One entry of a list into f (cleared first); name (cap *name_cap, grown
 * as needed) receives a category's name. */
static int read_entry(jr *j, qkv__coco_fields *f, char **name, size_t *name_cap)
{
    memset(f, 0, sizeof *f);
    if (jr_peek(j) != JR_OBJECT)
        return jr_skip(j);
    if (jr_object(j))
        return -1;
    char key[KEY_CAP];
    size_t len;
    int first = 1, r;
    while ((r = jr_key(j, key, sizeof key, &len, &first)) == 1) {
        qkv__jv *v = NULL;
        if (len >= sizeof key)
            v = NULL;
        else if (!strcmp(key, "id"))
            v = &f->id;
        else if (!strcmp(key, "image_id"))
            v = &f->image_id;
        else if (!strcmp(key, "category_id"))
            v = &f->category_id;
        else if (!strcmp(key, "score"))
            v = &f->score;
        else if (!strcmp(key, "area"))
            v = &f->area;
        else if (!strcmp(key, "iscrowd"))
            v = &f->iscrowd;
        else if (!strcmp(key, "ignore"))
            v = &f->ignore;
        else if (!strcmp(key, "bbox")) {
            if (read_box(j, &f->bbox))
                return -1;
            continue;
        } else if (!strcmp(key, "name") && name) {
            f->name_kind = jr_peek(j);
            if (f->name_kind != JR_STRING) {
                if (jr_skip(j))
                    return -1;
                continue;
            }
            const char *at = j->p;
            if (jr_string(j, *name, *name_cap, &len))
                return -1;
            if (len >= *name_cap) { /* longer than the buffer: again, in full */
                char *bigger = realloc(*name, len + 1);
                if (!bigger)
                    return jr_fail(j, "out of memory for a name of %zu bytes", len);
                *name = bigger;
                *name_cap = len + 1;
                j->p = at;
                if (jr_string(j, *name, *name_cap, &len))
                    return -1;
            }
            f->name = *name;
            continue;
        }
        if (v ? read_scalar(j, v) : jr_skip(j))
            return -1;
    }
    return r;
}

/* A list's first failing entry, kept until the whole text is known to be
 * JSON (a syntax error anywhere is reported first, as a parser that builds
 * the whole tree would) and dropped if the key comes again (the last one
 * counts). */
typedef struct {
    qkv_status status;
    char msg[1024];
} deferred;

static void defer(deferred *d)
{
    d->status = qkv_error_status();
    snprintf(d->msg, sizeof d->msg, "%s", qkv_error());
}

/* Reads the list at the cursor into set (entries through qkv__coco_add_entry;
 * the first failure goes to *err and the rest are only skipped). */
static int read_list(jr *j, void *set, qkv__coco_list list, deferred *err, char **name,
                     size_t *name_cap)
{
    if (jr_array(j))
        return -1;
    int first = 1, r;
    int64_t i = 0;
    qkv__coco_fields f;
    while ((r = jr_next(j, &first)) == 1) {
        if (err->status != QKV_OK) {
            if (jr_skip(j))
                return -1;
            continue;
        }
        jr_kind kind = jr_peek(j);
        if (read_entry(j, &f, name, name_cap))
            return -1;
        if (qkv__coco_add_entry(set, list, i++, kind, &f))
            defer(err);
    }
    return r;
}

static void gt_clear_list(qkv_coco_gt *gt, int k)
{
    if (k == 0)
        gt->n_images = 0;
    if (k == 1) {
        for (int64_t i = 0; i < gt->n_cats; i++)
            qkv__free(gt->cat_names[i]);
        gt->n_cats = 0;
    }
    if (k == 2)
        gt->n_anns = 0;
}

static qkv_status read_gt(qkv_coco_gt *gt, const char *text, size_t len, const char *name)
{
    jr j;
    jr_init(&j, text, len, name);
    jr_kind root = jr_peek(&j), kinds[3] = {JR_NONE, JR_NONE, JR_NONE};
    deferred errs[3];
    memset(errs, 0, sizeof errs);
    size_t name_cap = NAME_CAP;
    char *cat_name = malloc(name_cap);
    if (!cat_name)
        return qkv_set_error(QKV_ERR_NOMEM, "coco: out of memory");
    if (root == JR_OBJECT) {
        char key[KEY_CAP];
        size_t klen;
        int first = 1, r;
        jr_object(&j);
        while ((r = jr_key(&j, key, sizeof key, &klen, &first)) == 1) {
            int k = -1;
            for (int c = 0; c < 3 && klen < sizeof key; c++)
                if (!strcmp(key, ROOT_KEYS[c]))
                    k = c;
            if (k < 0) {
                if (jr_skip(&j))
                    break;
                continue;
            }
            kinds[k] = jr_peek(&j); /* again: the last one counts */
            gt_clear_list(gt, k);
            errs[k].status = QKV_OK;
            if (kinds[k] != JR_ARRAY ? jr_skip(&j)
                                     : read_list(&j, gt, (qkv__coco_list)k, &errs[k],
                                                 &cat_name, &name_cap))
                break;
        }
    } else {
        jr_skip(&j);
    }
    free(cat_name);
    if (jr_end(&j))
        return (qkv_status)jr_error(&j);
    if (qkv__coco_check_root(name, root, kinds))
        return QKV_ERR_FORMAT;
    for (int k = 0; k < 3; k++)
        if (errs[k].status != QKV_OK)
            return qkv_set_error(errs[k].status, "%s", errs[k].msg);
    return QKV_OK;
}

qkv_coco_gt *qkv__coco_gt_parse(const char *text, size_t len, const char *name)
{
    qkv_coco_gt *gt = qkv_coco_gt_new(name);
    qkv__coco_index ix;
    if (!gt || read_gt(gt, text, len, name) || qkv__coco_index_build(&ix, gt)) {
        qkv_coco_gt_free(gt);
        return NULL;
    }
    qkv__coco_index_free(&ix);
    return gt;
}

static qkv_status read_dets(qkv_coco_dets *dt, const char *text, size_t len, const char *name)
{
    jr j;
    jr_init(&j, text, len, name);
    jr_kind root = jr_peek(&j);
    deferred err = {0};
    int has_annotations = 0;
    if (root == JR_ARRAY) {
        /* about 60 bytes a detection: one allocation for most files */
        int64_t guess = (int64_t)(len / 60) + 16;
        dt->d = malloc((size_t)guess * sizeof *dt->d);
        dt->cap = dt->d ? guess : 0;
        read_list(&j, dt, QKV__COCO_DETS, &err, NULL, NULL);
    } else if (root == JR_OBJECT) { /* only to say what it looks like */
        char key[KEY_CAP];
        size_t klen;
        int first = 1;
        jr_object(&j);
        while (jr_key(&j, key, sizeof key, &klen, &first) == 1) {
            has_annotations |= klen < sizeof key && !strcmp(key, "annotations");
            if (jr_skip(&j))
                break;
        }
    } else {
        jr_skip(&j);
    }
    if (jr_end(&j))
        return (qkv_status)jr_error(&j);
    if (qkv__coco_check_results_root(name, root, has_annotations))
        return QKV_ERR_FORMAT;
    if (err.status != QKV_OK)
        return qkv_set_error(err.status, "%s", err.msg);
    return QKV_OK;
}

/* ---- a large results list, read on several threads -----------------------
 *
 * The text is cut near equal parts, each at the next "}, {" (an element's
 * start, if the guess is right), and each part is read on its own thread.
 * A guess is right when the part before it, read from a known element start,
 * ends exactly there; so part 0 (from the root) proves part 1's start, and so
 * on. Any doubt (a wrong guess, a syntax error, a bad entry) and the whole
 * text is read again on one thread, which also gives the message. */

static int is_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* The first "}" "," "{" (spaces between allowed) at or after from: the
 * offset of its "{" in *at, or 0 if there is none. */
static int next_element_start(const char *text, size_t len, size_t from, size_t *at)
{
    for (size_t i = from; i < len; i++) {
        if (text[i] != '}')
            continue;
        size_t k = i + 1;
        while (k < len && is_space(text[k]))
            k++;
        if (k >= len || text[k] != ',')
            continue;
        for (k++; k < len && is_space(text[k]);)
            k++;
        if (k < len && text[k] == '{') {
            *at = k;
            return 1;
        }
    }
    return 0;
}

/* Reads the list's elements from offset start (0: the root's "[") into dt,
 * up to offset stop (the next part's start) or, for the last part, to the
 * end. 0 only if all is well and the part ends exactly at stop. */
static int read_part(qkv_coco_dets *dt, const char *text, size_t len, size_t start, size_t stop,
                     int last)
{
    jr j;
    jr_init(&j, text, len, dt->name);
    if (start == 0) {
        if (jr_peek(&j) != JR_ARRAY || jr_array(&j))
            return -1;
    } else {
        j.p = text + start;
        j.depth = 1;
    }
    int first = 1, r;
    int64_t i = 0;
    qkv__coco_fields f;
    while ((r = jr_next(&j, &first)) == 1) {
        size_t at = (size_t)(j.p - text);
        if (!last && at >= stop)
            return at == stop ? 0 : -1;
        jr_kind kind = jr_peek(&j);
        if (read_entry(&j, &f, NULL, NULL) || qkv__coco_add_entry(dt, QKV__COCO_DETS, i++, kind, &f))
            return -1;
    }
    return r == 0 && last && jr_end(&j) == 0 ? 0 : -1;
}

/* 0 with dt filled, or -1 (dt untouched) if the parallel reading could not
 * vouch for its result. */
static int read_dets_parallel(qkv_coco_dets *dt, const char *text, size_t len, int parts)
{
    size_t cut[65];
    if (parts > 64)
        parts = 64;
    cut[0] = 0;
    int n = 1;
    for (int p = 1; p < parts; p++)
        if (next_element_start(text, len, len / (size_t)parts * (size_t)p, &cut[n]) &&
            cut[n] > cut[n - 1])
            n++;
    cut[n] = len;
    if (n < 2)
        return -1;
    qkv_coco_dets *part[64] = {0};
    int bad = 0;
    for (int p = 0; p < n; p++)
        bad |= !(part[p] = qkv_coco_dets_new(dt->name));
#pragma omp parallel for num_threads(n) schedule(static, 1) reduction(| : bad) if (!bad)
    for (int p = 0; p < n; p++) {
        int64_t guess = (int64_t)((cut[p + 1] - cut[p]) / 60) + 16;
        part[p]->d = malloc((size_t)guess * sizeof *part[p]->d);
        part[p]->cap = part[p]->d ? guess : 0;
        bad |= read_part(part[p], text, len, cut[p], cut[p + 1], p == n - 1) != 0;
    }
    int64_t total = 0;
    for (int p = 0; p < n && !bad; p++)
        total += part[p]->n;
    qkv_coco_det *all = bad ? NULL : malloc((size_t)(total ? total : 1) * sizeof *all);
    if (all) {
        int64_t at = 0;
        for (int p = 0; p < n; p++) {
            memcpy(all + at, part[p]->d, (size_t)part[p]->n * sizeof *all);
            at += part[p]->n;
        }
        free(dt->d);
        dt->d = all;
        dt->n = dt->cap = total;
    }
    for (int p = 0; p < n; p++)
        qkv_coco_dets_free(part[p]);
    return all ? 0 : -1;
}

/* Above this size a results file is read on several threads. */
#define PARALLEL_BYTES ((size_t)4 << 20)

qkv_coco_dets *qkv__coco_dets_parse(const char *text, size_t len, const char *name)
{
    return qkv__coco_dets_parse_parts(text, len, name,
                                      len >= PARALLEL_BYTES ? qkv_threads() : 1);
}

qkv_coco_dets *qkv__coco_dets_parse_parts(const char *text, size_t len, const char *name,
                                          int parts)
{
    qkv_coco_dets *dt = qkv_coco_dets_new(name);
    if (!dt)
        return NULL;
    if (parts > 1 && read_dets_parallel(dt, text, len, parts) == 0)
        return dt;
    if (read_dets(dt, text, len, name)) {
        qkv_coco_dets_free(dt);
        return NULL;
    }
    return dt;
}

/* Reads path whole and hands it to parse. */
static void *load(const char *path, const char *what,
                  void *(*parse)(const char *, size_t, const char *))
{
    if (!path) {
        qkv_set_error(QKV_ERR_ARG, "coco: %s: path is NULL", what);
        return NULL;
    }
    uint8_t *buf;
    size_t len;
    if (qkv__read_file(path, what, &buf, &len))
        return NULL;
    void *set = parse((const char *)buf, len, path);
    qkv__free(buf);
    return set;
}

static void *parse_gt(const char *t, size_t n, const char *name)
{
    return qkv__coco_gt_parse(t, n, name);
}

static void *parse_dets(const char *t, size_t n, const char *name)
{
    return qkv__coco_dets_parse(t, n, name);
}

qkv_coco_gt *qkv_coco_gt_load(const char *path)
{
    return load(path, "coco ground truth", parse_gt);
}

qkv_coco_dets *qkv_coco_dets_load(const char *path)
{
    return load(path, "coco detections", parse_dets);
}
