/*
 * coco.h - what the COCO readers (src/io/coco.c) share with the evaluator
 * (src/train/coco_eval.c) and the fuzz harnesses: the two sets as plain
 * growable arrays in the order they were read or added, and the index that
 * checks a ground truth against itself.
 */
#ifndef QKV_IO_COCO_H
#define QKV_IO_COCO_H

#include "../qkv_internal.h"
#include "json_reader.h"

struct qkv_coco_gt {
    char *name;             /* the file, or the caller's name for the set */
    int64_t n_images, cap_images;
    int64_t *image_ids;     /* (n_images) as listed, repeats included */
    int64_t n_cats, cap_cats;
    int64_t *cat_ids;       /* (n_cats) as listed, repeats included */
    char **cat_names;       /* (n_cats) each qkv__malloc'd, "" when unnamed */
    int64_t n_anns, cap_anns;
    qkv_coco_ann *anns;     /* (n_anns) in file order */
};

struct qkv_coco_dets {
    char *name;
    int64_t n, cap;
    qkv_coco_det *d;        /* (n) in file order */
};

/* A ground truth's ids sorted and made unique, and each annotation's place
 * in them: what evaluation runs on. */
typedef struct {
    int64_t n_images;
    int64_t *image_ids;     /* (n_images) ascending, unique */
    int64_t n_cats;
    int64_t *cat_ids;       /* (n_cats) ascending, unique */
    const char **cat_names; /* (n_cats) the last name listed for the id */
    int32_t *ann_image;     /* (n_anns) index into image_ids */
    int32_t *ann_cat;       /* (n_anns) index into cat_ids */
} qkv__coco_index;

/* Builds the index; QKV_ERR_FORMAT naming gt->name and the annotation when
 * an annotation's image or category is not listed or an annotation id is
 * repeated; QKV_ERR_NOMEM. On error ix holds nothing to free. */
qkv_status qkv__coco_index_build(qkv__coco_index *ix, const qkv_coco_gt *gt);
void qkv__coco_index_free(qkv__coco_index *ix);
/* The position of id in the ascending ids[0..n), or -1. */
int64_t qkv__coco_find(const int64_t *ids, int64_t n, int64_t id);

/* ---- reading: what a file says about one entry, before it is checked ----
 *
 * Both readers (the fast one in coco.c, the cJSON one in coco_cjson.c that
 * tests and fuzzing hold it against) reduce each entry to these summaries;
 * one set of checks (coco.c) turns them into entries or into messages. A
 * field's kind is JR_NONE when the key is absent; for a repeated key the
 * last one counts, as in Python's json. */
typedef struct {
    jr_kind kind;
    double num;             /* JR_NUMBER: its value; JR_TRUE 1, JR_FALSE 0 */
} qkv__jv;

typedef struct {
    jr_kind kind;           /* JR_ARRAY for a list */
    int n;                  /* its length */
    double v[4];            /* its first four numbers */
    int bad;                /* the first element that is not a number, -1 */
    jr_kind bad_kind;
} qkv__jbox;

typedef struct {
    qkv__jv id, image_id, category_id, area, iscrowd, ignore, score;
    qkv__jbox bbox;
    jr_kind name_kind;      /* categories */
    const char *name;       /* JR_STRING: NUL-terminated, owned by the reader */
} qkv__coco_fields;

/* Where an entry is, for messages: list "annotations", index i. */
typedef enum { QKV__COCO_IMAGES, QKV__COCO_CATEGORIES, QKV__COCO_ANNS, QKV__COCO_DETS } qkv__coco_list;

/* Checks one entry of a list and adds it (kind: the entry's JSON kind). */
qkv_status qkv__coco_add_entry(void *set, qkv__coco_list list, int64_t i, jr_kind kind,
                               const qkv__coco_fields *f);
/* The ground truth's root: `kinds` of "images", "categories", "annotations"
 * (JR_NONE if absent); QKV_ERR_FORMAT unless all three are lists. */
qkv_status qkv__coco_check_root(const char *file, jr_kind root, const jr_kind kinds[3]);
/* The results' root must be a list; `has_annotations`: it is an object with
 * that key (a ground truth given as results). */
qkv_status qkv__coco_check_results_root(const char *file, jr_kind root, int has_annotations);

/* The readers on a JSON text held in memory (text[len] must be readable and
 * NUL, as qkv__read_file leaves it); `name` stands for the file in messages.
 * The ground truth is also indexed, so a set that loads is consistent. */
qkv_coco_gt *qkv__coco_gt_parse(const char *text, size_t len, const char *name);
qkv_coco_dets *qkv__coco_dets_parse(const char *text, size_t len, const char *name);
/* The results reader cut into `parts` read on as many threads (1: one);
 * qkv__coco_dets_parse takes qkv_threads() parts for texts of 4 MiB and more. */
qkv_coco_dets *qkv__coco_dets_parse_parts(const char *text, size_t len, const char *name,
                                          int parts);
/* The same on cJSON: the reference the fast readers are tested against. */
qkv_coco_gt *qkv__coco_gt_parse_cjson(const char *text, size_t len, const char *name);
qkv_coco_dets *qkv__coco_dets_parse_cjson(const char *text, size_t len, const char *name);

#endif
