/* coco_cjson.c - the COCO readers again, on cJSON's tree: the reference that
 * the streaming readers of coco.c are tested and fuzzed against (they must
 * agree on every set both accept). Both reduce entries to the same
 * summaries and share one set of checks, so what this file holds is only
 * the walk of the tree. cJSON is more lenient than JSON (it takes "01" and
 * numbers it cuts at 63 characters); where it accepts a text the streaming
 * reader refuses, the streaming reader is the one that follows the RFC. */
#include "coco.h"

#include <cjson/cJSON.h>
#include <string.h>

static jr_kind kind_of(const cJSON *v)
{
    if (!v)
        return JR_NONE;
    if (cJSON_IsNumber(v))
        return JR_NUMBER;
    if (cJSON_IsString(v))
        return JR_STRING;
    if (cJSON_IsArray(v))
        return JR_ARRAY;
    if (cJSON_IsObject(v))
        return JR_OBJECT;
    if (cJSON_IsTrue(v))
        return JR_TRUE;
    if (cJSON_IsFalse(v))
        return JR_FALSE;
    return JR_NULL;
}

/* The value of `key` in object o (the last if repeated), or NULL. */
static const cJSON *field(const cJSON *o, const char *key)
{
    const cJSON *v = NULL;
    for (const cJSON *c = o->child; c; c = c->next)
        if (c->string && !strcmp(c->string, key))
            v = c;
    return v;
}

static qkv__jv scalar(const cJSON *o, const char *key)
{
    const cJSON *v = field(o, key);
    qkv__jv s = {kind_of(v), 0};
    s.num = s.kind == JR_NUMBER ? v->valuedouble : s.kind == JR_TRUE;
    return s;
}

static qkv__jbox box(const cJSON *o)
{
    const cJSON *v = field(o, "bbox");
    qkv__jbox b = {.kind = kind_of(v), .bad = -1};
    if (b.kind != JR_ARRAY)
        return b;
    for (const cJSON *c = v->child; c; c = c->next, b.n++) {
        if (cJSON_IsNumber(c)) {
            if (b.n < 4)
                b.v[b.n] = c->valuedouble;
        } else if (b.bad < 0) {
            b.bad = b.n;
            b.bad_kind = kind_of(c);
        }
    }
    return b;
}

static qkv_status read_list(void *set, qkv__coco_list list, const cJSON *arr)
{
    int64_t i = 0;
    for (const cJSON *c = arr->child; c; c = c->next, i++) {
        qkv__coco_fields f = {0};
        if (cJSON_IsObject(c)) {
            f.id = scalar(c, "id");
            f.image_id = scalar(c, "image_id");
            f.category_id = scalar(c, "category_id");
            f.area = scalar(c, "area");
            f.iscrowd = scalar(c, "iscrowd");
            f.ignore = scalar(c, "ignore");
            f.score = scalar(c, "score");
            f.bbox = box(c);
            const cJSON *name = field(c, "name");
            f.name_kind = kind_of(name);
            f.name = f.name_kind == JR_STRING ? name->valuestring : NULL;
        }
        if (qkv__coco_add_entry(set, list, i, kind_of(c), &f))
            return qkv_error_status();
    }
    return QKV_OK;
}

/* text[len] is a NUL: cJSON wants it inside the length to check that
 * nothing but whitespace follows the root. */
static cJSON *parse(const char *text, size_t len, const char *name)
{
    cJSON *root = cJSON_ParseWithLengthOpts(text, len + 1, NULL, true);
    if (!root)
        qkv_set_error(QKV_ERR_FORMAT, "%s: not valid JSON (cJSON)", name);
    return root;
}

qkv_coco_gt *qkv__coco_gt_parse_cjson(const char *text, size_t len, const char *name)
{
    cJSON *root = parse(text, len, name);
    if (!root)
        return NULL;
    static const char *const keys[3] = {"images", "categories", "annotations"};
    const cJSON *lists[3] = {NULL, NULL, NULL};
    jr_kind kinds[3] = {JR_NONE, JR_NONE, JR_NONE};
    for (int k = 0; k < 3 && cJSON_IsObject(root); k++)
        kinds[k] = kind_of(lists[k] = field(root, keys[k]));
    qkv_coco_gt *gt = qkv_coco_gt_new(name);
    qkv__coco_index ix;
    int failed = !gt || qkv__coco_check_root(name, kind_of(root), kinds);
    for (int k = 0; k < 3 && !failed; k++)
        failed = read_list(gt, (qkv__coco_list)k, lists[k]) != QKV_OK;
    if (!failed && qkv__coco_index_build(&ix, gt) == QKV_OK)
        qkv__coco_index_free(&ix);
    else
        failed = 1;
    cJSON_Delete(root);
    if (failed) {
        qkv_coco_gt_free(gt);
        return NULL;
    }
    return gt;
}

qkv_coco_dets *qkv__coco_dets_parse_cjson(const char *text, size_t len, const char *name)
{
    cJSON *root = parse(text, len, name);
    if (!root)
        return NULL;
    qkv_coco_dets *dt = qkv_coco_dets_new(name);
    int has_annotations = cJSON_IsObject(root) && field(root, "annotations");
    if (!dt || qkv__coco_check_results_root(name, kind_of(root), has_annotations) ||
        read_list(dt, QKV__COCO_DETS, root)) {
        qkv_coco_dets_free(dt);
        dt = NULL;
    }
    cJSON_Delete(root);
    return dt;
}
