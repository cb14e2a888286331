/* test_coco.c - COCO box evaluation against pycocotools: the 12 numbers, the
 * precision and recall arrays, AP per category and the printed lines, on
 * random sets written and scored by tests/coco/gen.py (PyPI pycocotools);
 * the readers (streaming and cJSON agree; bad files are refused with the
 * file and the entry named); the JSON number conversion against strtod;
 * and `qkv coco-eval` as a user runs it. */
#include "test.h"

#include "io/coco.h"
#include "io/json_reader.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPREC ((int64_t)QKV_COCO_T * QKV_COCO_R * QKV_COCO_A * QKV_COCO_M)
#define NREC ((int64_t)QKV_COCO_T * QKV_COCO_A * QKV_COCO_M)

/* The cases' directory: $QKV_COCO_CASES (other seeds), else
 * $QKV_FIXTURES/coco (make test). */
static const char *cases_dir(void)
{
    static char dir[1024];
    const char *env = getenv("QKV_COCO_CASES");
    if (env && *env)
        return env;
    const char *fx = getenv("QKV_FIXTURES");
    snprintf(dir, sizeof dir, "%s/coco", fx ? fx : "build/parity");
    return dir;
}

/* The sorted case names ("case_007") found in dir; returns the count. */
static int list_cases(const char *dir, char names[][32], int max)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        size_t len = strlen(e->d_name);
        if (len > 8 && len < 32 && !strcmp(e->d_name + len - 8, ".gt.json")) {
            snprintf(names[n], 32, "%.*s", (int)(len - 8), e->d_name);
            n++;
        }
    }
    closedir(d);
    qsort(names, (size_t)n, 32, (int (*)(const void *, const void *))strcmp);
    return n;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = '\0';
        if (len)
            *len = (size_t)n;
    }
    return b;
}

/* pycocotools' answer for one case. */
typedef struct {
    double stats[QKV_COCO_NSTATS];
    char lines[QKV_COCO_NSTATS][160];
    int64_t K, cat_ids[64];
    double cat_ap[64];
    double *prec, *rec; /* (T, R, K, A, M), (T, K, A, M) */
} want_t;

static bool want_load(want_t *w, const char *base)
{
    char path[1200];
    snprintf(path, sizeof path, "%s.want.json", base);
    char *text = read_all(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!j)
        return false;
    cJSON *stats = cJSON_GetObjectItem(j, "stats"), *lines = cJSON_GetObjectItem(j, "lines");
    cJSON *ids = cJSON_GetObjectItem(j, "category_ids");
    cJSON *ap = cJSON_GetObjectItem(j, "category_ap");
    w->K = cJSON_GetArraySize(ids);
    bool ok = cJSON_GetArraySize(stats) == QKV_COCO_NSTATS &&
              cJSON_GetArraySize(lines) == QKV_COCO_NSTATS && w->K <= 64 &&
              cJSON_GetArraySize(ap) == w->K;
    for (int i = 0; ok && i < QKV_COCO_NSTATS; i++) {
        w->stats[i] = cJSON_GetArrayItem(stats, i)->valuedouble;
        snprintf(w->lines[i], sizeof w->lines[i], "%s", cJSON_GetArrayItem(lines, i)->valuestring);
    }
    for (int64_t k = 0; ok && k < w->K; k++) {
        w->cat_ids[k] = (int64_t)cJSON_GetArrayItem(ids, (int)k)->valuedouble;
        w->cat_ap[k] = cJSON_GetArrayItem(ap, (int)k)->valuedouble;
    }
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s.want.f64", base);
    size_t len = 0;
    char *raw = ok ? read_all(path, &len) : NULL;
    size_t want_len = (size_t)((NPREC + NREC) * w->K) * sizeof(double);
    if (!raw || len != want_len) {
        free(raw);
        return false;
    }
    w->prec = (double *)raw;
    w->rec = w->prec + NPREC * w->K;
    return true;
}

/* Largest |a - b| over n doubles (NaN anywhere: infinity). */
static double max_abs_diff(const double *a, const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* What the random cases must contain for the comparison to mean something:
 * counted over all cases from the sets themselves. */
typedef struct {
    int64_t crowds, area_not_wh, small, medium, large, over_100, score_ties, images_without_gt,
        cats_without_gt, zero_ids;
} coverage;

static void count_coverage(coverage *c, const qkv_coco_gt *gt, const qkv_coco_dets *dt,
                           const qkv_coco_result *r)
{
    qkv__coco_index ix;
    if (qkv__coco_index_build(&ix, gt))
        return;
    int64_t I = ix.n_images, K = ix.n_cats;
    int64_t *per = calloc((size_t)(I * K + 1), sizeof *per);
    char *has_gt = calloc((size_t)I + 1, 1);
    for (int64_t i = 0; i < gt->n_anns; i++) {
        const qkv_coco_ann *a = &gt->anns[i];
        c->crowds += a->iscrowd;
        c->area_not_wh += a->area != a->bbox[2] * a->bbox[3];
        c->small += a->area < 1024;
        c->medium += a->area >= 1024 && a->area <= 9216;
        c->large += a->area > 9216;
        c->zero_ids += a->id == 0;
        has_gt[ix.ann_image[i]] = 1;
    }
    for (int64_t i = 0; i < dt->n; i++) {
        int64_t im = qkv__coco_find(ix.image_ids, I, dt->d[i].image_id);
        int64_t k = qkv__coco_find(ix.cat_ids, K, dt->d[i].category_id);
        if (im >= 0 && k >= 0 && ++per[im * K + k] == 101)
            c->over_100++;
        for (int64_t j = i + 1; j < dt->n && j < i + 50; j++)
            c->score_ties += dt->d[j].score == dt->d[i].score;
    }
    for (int64_t i = 0; i < I; i++)
        c->images_without_gt += !has_gt[i];
    for (int64_t k = 0; k < r->n_categories; k++)
        c->cats_without_gt += r->category_ap[k] == -1;
    free(per);
    free(has_gt);
    qkv__coco_index_free(&ix);
}

TEST(coco_eval_equals_pycocotools_on_random_sets)
{
    static char names[2000][32];
    const char *dir = cases_dir();
    int n = list_cases(dir, names, 2000);
    REQUIRE(n > 0, "no cases in %s (tests/coco/gen.py writes them)", dir);
    double worst_stats = 0, worst_prec = 0, worst_rec = 0, worst_ap = 0;
    int bad_lines = 0;
    coverage cov = {0};
    for (int c = 0; c < n; c++) {
        char base[1100], gpath[1200], dpath[1200];
        snprintf(base, sizeof base, "%.900s/%.31s", dir, names[c]);
        snprintf(gpath, sizeof gpath, "%s.gt.json", base);
        snprintf(dpath, sizeof dpath, "%s.dt.json", base);
        want_t w = {0};
        REQUIRE(want_load(&w, base), "%s: cannot read pycocotools' answer", base);
        qkv_coco_gt *gt = qkv_coco_gt_load(gpath);
        qkv_coco_dets *dt = qkv_coco_dets_load(dpath);
        qkv_coco_result r = {0};
        CHECK(gt && dt && qkv_coco_evaluate(gt, dt, &r) == QKV_OK, "%s: %s", base, qkv_error());
        if (r.precision && r.n_categories == w.K) {
            worst_stats = fmax(worst_stats, max_abs_diff(r.stats, w.stats, QKV_COCO_NSTATS));
            worst_prec = fmax(worst_prec, max_abs_diff(r.precision, w.prec, NPREC * w.K));
            worst_rec = fmax(worst_rec, max_abs_diff(r.recall, w.rec, NREC * w.K));
            worst_ap = fmax(worst_ap, max_abs_diff(r.category_ap, w.cat_ap, w.K));
            for (int64_t k = 0; k < w.K; k++)
                CHECK(r.category_ids[k] == w.cat_ids[k], "%s: category %lld: id %lld, want %lld",
                      base, (long long)k, (long long)r.category_ids[k], (long long)w.cat_ids[k]);
            for (int i = 0; i < QKV_COCO_NSTATS; i++) {
                char line[160];
                qkv_coco_stat_line(i, r.stats[i], line, sizeof line);
                if (strcmp(line, w.lines[i]) && bad_lines++ < 3)
                    CHECK(0, "%s: line %d:\n  got  '%s'\n  want '%s'", base, i, line, w.lines[i]);
            }
            count_coverage(&cov, gt, dt, &r);
        } else {
            CHECK(0, "%s: %lld categories, pycocotools %lld", base, (long long)r.n_categories,
                  (long long)w.K);
        }
        qkv_coco_result_free(&r);
        qkv_coco_dets_free(dt);
        qkv_coco_gt_free(gt);
        free(w.prec);
    }
    /* the bar is 1e-9; the arithmetic is pycocotools' own, so the
     * differences are 0 in practice */
    CHECK_SCALAR(worst_stats, 0.0, 1e-9, 0);
    CHECK_SCALAR(worst_prec, 0.0, 1e-9, 0);
    CHECK_SCALAR(worst_rec, 0.0, 1e-9, 0);
    CHECK_SCALAR(worst_ap, 0.0, 1e-9, 0);
    CHECK(bad_lines == 0, "%d printed lines differ from pycocotools'", bad_lines);
    /* and, beyond the bar, the same doubles */
    CHECK(worst_stats == 0 && worst_prec == 0 && worst_rec == 0 && worst_ap == 0,
          "not bit-equal to pycocotools");
    printf("    %d cases: max |diff| stats %.3g, precision %.3g, recall %.3g, category AP %.3g\n",
           n, worst_stats, worst_prec, worst_rec, worst_ap);
    const struct {
        const char *what;
        int64_t n;
    } need[] = {{"crowds", cov.crowds},
                {"areas differing from w*h", cov.area_not_wh},
                {"small boxes", cov.small},
                {"medium boxes", cov.medium},
                {"large boxes", cov.large},
                {"over 100 detections on an (image, category)", cov.over_100},
                {"score ties", cov.score_ties},
                {"images without ground truth", cov.images_without_gt},
                {"categories without ground truth", cov.cats_without_gt},
                {"annotations of id 0", cov.zero_ids}};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        CHECK(need[i].n > 0, "the random cases hold no %s", need[i].what);
}

/* Both readers on every case file: equal sets, entry by entry. */
static bool same_gt(const qkv_coco_gt *a, const qkv_coco_gt *b)
{
    if (a->n_images != b->n_images || a->n_cats != b->n_cats || a->n_anns != b->n_anns)
        return false;
    for (int64_t i = 0; i < a->n_cats; i++)
        if (a->cat_ids[i] != b->cat_ids[i] || strcmp(a->cat_names[i], b->cat_names[i]))
            return false;
    for (int64_t i = 0; i < a->n_anns; i++) {
        const qkv_coco_ann *x = &a->anns[i], *y = &b->anns[i];
        if (x->id != y->id || x->image_id != y->image_id || x->category_id != y->category_id ||
            memcmp(x->bbox, y->bbox, sizeof x->bbox) || x->area != y->area ||
            x->iscrowd != y->iscrowd)
            return false;
    }
    return !memcmp(a->image_ids, b->image_ids, (size_t)a->n_images * sizeof *a->image_ids);
}

static bool same_dets(const qkv_coco_dets *a, const qkv_coco_dets *b)
{
    return a->n == b->n && !memcmp(a->d, b->d, (size_t)a->n * sizeof *a->d);
}

TEST(coco_streaming_readers_equal_cjson)
{
    static char names[2000][32];
    const char *dir = cases_dir();
    int n = list_cases(dir, names, 2000);
    REQUIRE(n > 0, "no cases in %s", dir);
    for (int c = 0; c < n && c < 20; c++) {
        char path[1200];
        size_t len;
        snprintf(path, sizeof path, "%.900s/%.31s.gt.json", dir, names[c]);
        char *text = read_all(path, &len);
        REQUIRE(text, "cannot read %s", path);
        qkv_coco_gt *g1 = qkv__coco_gt_parse(text, len, path);
        qkv_coco_gt *g2 = qkv__coco_gt_parse_cjson(text, len, path);
        CHECK(g1 && g2 && same_gt(g1, g2), "%s: the readers disagree", path);
        qkv_coco_gt_free(g1);
        qkv_coco_gt_free(g2);
        free(text);
        snprintf(path, sizeof path, "%.900s/%.31s.dt.json", dir, names[c]);
        text = read_all(path, &len);
        REQUIRE(text, "cannot read %s", path);
        qkv_coco_dets *d1 = qkv__coco_dets_parse(text, len, path);
        qkv_coco_dets *d2 = qkv__coco_dets_parse_cjson(text, len, path);
        CHECK(d1 && d2 && same_dets(d1, d2), "%s: the readers disagree", path);
        qkv_coco_dets_free(d1);
        qkv_coco_dets_free(d2);
        free(text);
    }
}

/* The results reader cut into parts on threads: the same set as on one
 * thread, whatever the cut points meet ("}, {" inside a string, a bad entry
 * in a later part: then one thread reads again and names the entry). */
TEST(coco_results_read_in_parts_equal_one_thread)
{
    static char names[2000][32];
    const char *dir = cases_dir();
    int n = list_cases(dir, names, 2000);
    REQUIRE(n > 0, "no cases in %s", dir);
    for (int c = 0; c < n && c < 10; c++) {
        char path[1200];
        size_t len;
        snprintf(path, sizeof path, "%.900s/%.31s.dt.json", dir, names[c]);
        char *text = read_all(path, &len);
        REQUIRE(text, "cannot read %s", path);
        qkv_coco_dets *one = qkv__coco_dets_parse_parts(text, len, path, 1);
        for (int parts = 2; parts <= 7; parts += 5) {
            qkv_coco_dets *many = qkv__coco_dets_parse_parts(text, len, path, parts);
            CHECK(one && many && same_dets(one, many), "%s in %d parts differs", path, parts);
            qkv_coco_dets_free(many);
        }
        qkv_coco_dets_free(one);
        free(text);
    }
    /* strings that look like element boundaries, and a bad entry at the end */
    static char big[200000];
    size_t at = 0;
    at += (size_t)snprintf(big + at, sizeof big - at, "[");
    for (int i = 0; i < 1500; i++)
        at += (size_t)snprintf(big + at, sizeof big - at,
                               "%s{\"image_id\": %d, \"note\": \"}, {\", \"category_id\": 2, "
                               "\"bbox\": [%d.5, 2, 3, 4], \"score\": 0.%d}",
                               i ? ", " : "", i, i, i % 10);
    snprintf(big + at, sizeof big - at, "]");
    qkv_coco_dets *one = qkv__coco_dets_parse_parts(big, strlen(big), "b.json", 1);
    qkv_coco_dets *many = qkv__coco_dets_parse_parts(big, strlen(big), "b.json", 5);
    CHECK(one && many && one->n == 1500 && same_dets(one, many), "strings with \"}, {\": %s",
          qkv_error());
    qkv_coco_dets_free(one);
    qkv_coco_dets_free(many);
    char *tail = strstr(big + strlen(big) - 100, "\"score\"");
    REQUIRE(tail, "no score in the last entry");
    memcpy(tail, "\"scorf\"", 7);
    many = qkv__coco_dets_parse_parts(big, strlen(big), "b.json", 5);
    CHECK(!many && strstr(qkv_error(), "b.json: detection [1499]: missing key \"score\""),
          "got: %s", many ? "(accepted)" : qkv_error());
    qkv_coco_dets_free(many);
}

/* ---- a small set built in memory ----------------------------------------- */

/* Two images, two categories (ids 7 and 3), five annotations (one crowd),
 * and detections with a tie. */
static void small_set(qkv_coco_gt **gtp, qkv_coco_dets **dtp)
{
    qkv_coco_gt *gt = qkv_coco_gt_new("mem-gt");
    qkv_coco_dets *dt = qkv_coco_dets_new("mem-dt");
    qkv_coco_gt_add_image(gt, 42);
    qkv_coco_gt_add_image(gt, 5);
    qkv_coco_gt_add_category(gt, 7, "cat seven");
    qkv_coco_gt_add_category(gt, 3, "three");
    const qkv_coco_ann anns[] = {
        {1, 42, 7, {10, 10, 20, 20}, 400, 0},  {2, 42, 7, {50, 50, 100, 100}, 9000, 0},
        {3, 42, 3, {0, 0, 200, 200}, 30000, 1}, {4, 5, 3, {5, 5, 30, 40}, 1100, 0},
        {5, 5, 7, {100, 100, 10, 10}, 100, 0},
    };
    for (size_t i = 0; i < sizeof anns / sizeof anns[0]; i++)
        qkv_coco_gt_add_ann(gt, &anns[i]);
    const qkv_coco_det dets[] = {
        {42, 7, {11, 11, 20, 20}, 0.9}, {42, 7, {52, 48, 100, 100}, 0.8},
        {42, 3, {10, 10, 50, 50}, 0.8}, {5, 3, {5, 5, 30, 30}, 0.7},
        {5, 7, {0, 0, 5, 5}, 0.9},      {5, 7, {100, 100, 10, 10}, 0.3},
    };
    for (size_t i = 0; i < sizeof dets / sizeof dets[0]; i++)
        qkv_coco_dets_add(dt, &dets[i]);
    *gtp = gt;
    *dtp = dt;
}

TEST(coco_eval_same_numbers_on_any_thread_count)
{
    const char *dir = cases_dir();
    static char names[2000][32];
    int n = list_cases(dir, names, 2000);
    REQUIRE(n > 0, "no cases in %s", dir);
    char gpath[1200], dpath[1200];
    /* the largest case */
    int best = 0;
    off_t best_size = -1;
    for (int c = 0; c < n; c++) {
        struct stat st;
        snprintf(dpath, sizeof dpath, "%.900s/%.31s.dt.json", dir, names[c]);
        if (stat(dpath, &st) == 0 && st.st_size > best_size) {
            best_size = st.st_size;
            best = c;
        }
    }
    snprintf(gpath, sizeof gpath, "%.900s/%.31s.gt.json", dir, names[best]);
    snprintf(dpath, sizeof dpath, "%.900s/%.31s.dt.json", dir, names[best]);
    qkv_coco_gt *gt = qkv_coco_gt_load(gpath);
    qkv_coco_dets *dt = qkv_coco_dets_load(dpath);
    REQUIRE(gt && dt, "%s", qkv_error());
    int saved = qkv_threads();
    qkv_coco_result r1 = {0}, r4 = {0};
    qkv_set_threads(1);
    CHECK(qkv_coco_evaluate(gt, dt, &r1) == QKV_OK, "%s", qkv_error());
    qkv_set_threads(4);
    CHECK(qkv_coco_evaluate(gt, dt, &r4) == QKV_OK, "%s", qkv_error());
    qkv_set_threads(saved);
    int64_t K = r1.n_categories;
    CHECK(r4.n_categories == K && !memcmp(r1.stats, r4.stats, sizeof r1.stats) &&
              !memcmp(r1.precision, r4.precision, (size_t)(NPREC * K) * sizeof(double)) &&
              !memcmp(r1.recall, r4.recall, (size_t)(NREC * K) * sizeof(double)),
          "1 and 4 threads differ");
    qkv_coco_result_free(&r1);
    qkv_coco_result_free(&r4);
    qkv_coco_dets_free(dt);
    qkv_coco_gt_free(gt);
}

TEST(coco_eval_in_memory_small_set)
{
    qkv_coco_gt *gt;
    qkv_coco_dets *dt;
    small_set(&gt, &dt);
    qkv_coco_result r = {0};
    REQUIRE(qkv_coco_evaluate(gt, dt, &r) == QKV_OK, "%s", qkv_error());
    CHECK(r.n_categories == 2 && r.category_ids[0] == 3 && r.category_ids[1] == 7,
          "categories not sorted by id");
    CHECK(!strcmp(qkv_coco_gt_category_name(gt, 7), "cat seven") &&
              qkv_coco_gt_category_name(gt, 99) == NULL,
          "category names");
    /* category 7, IoU .5: image 42: 0.9 matches ann 1 (IoU 361/439 = .82),
     * 0.8 matches ann 2 (IoU 9212/10788 = .85...), image 5: 0.9 misses,
     * 0.3 matches ann 5 exactly. Order 0.9 (img 5, FP: image 5 sorts
     * first), 0.9 (img 42, TP), 0.8 TP, 0.3 TP: recall 1, precision at
     * recall points up to 2/3: 2/3 (monotone), then 3/4. */
    int64_t k7 = 1, K = 2;
    double p_first = r.precision[(((0 * QKV_COCO_R + 0) * K + k7) * QKV_COCO_A + 0) *
                                     QKV_COCO_M + 2];
    double p_last = r.precision[(((0 * QKV_COCO_R + 100) * K + k7) * QKV_COCO_A + 0) *
                                    QKV_COCO_M + 2];
    double rec = r.recall[((0 * K + k7) * QKV_COCO_A + 0) * QKV_COCO_M + 2];
    CHECK_SCALAR(rec, 1.0, 0, 0);
    CHECK_SCALAR(p_last, 3.0 / (4.0 + 2.220446049250313e-16), 0, 1e-15);
    CHECK_SCALAR(p_first, 3.0 / (4.0 + 2.220446049250313e-16), 0, 1e-15);
    /* category 3 has one counted annotation (the crowd is ignored) */
    double s3[QKV_COCO_NSTATS];
    qkv_coco_summarize(&r, 0, s3);
    CHECK(s3[0] >= 0 && s3[0] <= 1, "category AP %g", s3[0]);
    CHECK_SCALAR(r.category_ap[0], s3[0], 0, 0);
    qkv_coco_result_free(&r);
    qkv_coco_result_free(&r); /* twice is harmless */
    qkv_coco_dets_free(dt);
    qkv_coco_gt_free(gt);
}

TEST(coco_eval_refuses_detections_outside_the_ground_truth)
{
    qkv_coco_gt *gt;
    qkv_coco_dets *dt;
    small_set(&gt, &dt);
    qkv_coco_det d = {77, 7, {1, 1, 2, 2}, 0.5};
    qkv_coco_dets_add(dt, &d);
    qkv_coco_result r;
    CHECK(qkv_coco_evaluate(gt, dt, &r) == QKV_ERR_FORMAT &&
              strstr(qkv_error(), "mem-dt: detection [6]: image_id 77 is not an image of the "
                                  "ground truth mem-gt"),
          "got: %s", qkv_error());
    CHECK(r.precision == NULL && r.n_categories == 0, "result not zeroed on error");
    dt->d[6].image_id = 5;
    dt->d[6].category_id = 8;
    CHECK(qkv_coco_evaluate(gt, dt, &r) == QKV_ERR_FORMAT &&
              strstr(qkv_error(), "detection [6]: category_id 8 is not a category"),
          "got: %s", qkv_error());
    qkv_coco_ann a = {9, 6, 7, {0, 0, 1, 1}, 1, 0};
    qkv_coco_gt_add_ann(gt, &a);
    CHECK(qkv_coco_evaluate(gt, dt, &r) == QKV_ERR_FORMAT &&
              strstr(qkv_error(), "mem-gt: annotations[5] (id 9): image_id 6 is not in"),
          "got: %s", qkv_error());
    a = (qkv_coco_ann){1, 5, 7, {0, 0, 1, 1}, 1, 0};
    gt->anns[5] = a;
    CHECK(qkv_coco_evaluate(gt, dt, &r) == QKV_ERR_FORMAT &&
              strstr(qkv_error(), "annotations[0] and annotations[5] have the same id 1"),
          "got: %s", qkv_error());
    a.bbox[2] = -1;
    CHECK(qkv_coco_gt_add_ann(gt, &a) == QKV_ERR_ARG && strstr(qkv_error(), "negative width"),
          "got: %s", qkv_error());
    a.bbox[2] = 1;
    a.iscrowd = 2;
    CHECK(qkv_coco_gt_add_ann(gt, &a) == QKV_ERR_ARG && strstr(qkv_error(), "iscrowd"),
          "got: %s", qkv_error());
    d.score = NAN;
    CHECK(qkv_coco_dets_add(dt, &d) == QKV_ERR_ARG && strstr(qkv_error(), "score"),
          "got: %s", qkv_error());
    CHECK(qkv_coco_evaluate(NULL, dt, &r) == QKV_ERR_ARG, "NULL gt accepted");
    qkv_coco_dets_free(dt);
    qkv_coco_gt_free(gt);
}

/* ---- bad files ------------------------------------------------------------ */

static const char GT_OK[] =
    "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2, \"name\": \"x\"}], "
    "\"annotations\": [{\"id\": 5, \"image_id\": 1, \"category_id\": 2, "
    "\"bbox\": [1, 2, 3, 4], \"area\": 12, \"iscrowd\": 0}]}";

TEST(coco_readers_name_the_file_and_the_entry)
{
    const struct {
        int dets; /* 0: ground truth, 1: detections */
        const char *text, *want;
    } cases[] = {
        {0, "", "gt.json: not valid JSON: expected a value at the end of the file (empty)"},
        {0, "{\"images\": [", "gt.json: not valid JSON"},
        {0, "{\"images\": []]", "gt.json: not valid JSON at byte 13 (line 1, column 14): expected ',' or '}'"},
        {0, "{\"images\": [],\n \"categories\": [], \"annotations\": [1,]}",
         "byte 52 (line 2, column 38): expected a value"},
        {0, "[]", "a COCO ground truth is an object with"},
        {0, "{\"images\": [], \"categories\": []}", "gt.json: missing key \"annotations\""},
        {0, "{\"images\": {}, \"categories\": [], \"annotations\": []}",
         "\"images\" must be a list, got an object"},
        {0, "{\"images\": [{\"id\": \"1\"}], \"categories\": [], \"annotations\": []}",
         "gt.json: images[0]: \"id\" must be an integer, got a string"},
        {0, "{\"images\": [{\"id\": 1.5}], \"categories\": [], \"annotations\": []}",
         "images[0]: \"id\" must be an integer (within +-2^53), got 1.5"},
        {0, "{\"images\": [{}], \"categories\": [], \"annotations\": []}",
         "images[0]: missing key \"id\""},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [7], \"annotations\": []}",
         "categories[0]: must be an object, got a number"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 1, \"name\": 3}], "
            "\"annotations\": []}",
         "categories[0]: \"name\" must be a string"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, -3, 4], "
            "\"area\": 1}]}",
         "annotations[0]: \"bbox\" has a negative width (-3)"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], "
            "\"area\": -1}]}",
         "annotations[0]: \"area\" is negative (-1)"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3], "
            "\"area\": 1}]}",
         "\"bbox\" must be a list of 4 numbers [x, y, w, h], got 3"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, null, 3, 4], "
            "\"area\": 1}]}",
         "\"bbox\"[1] must be a number, got null"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], "
            "\"area\": 1, \"iscrowd\": 2}]}",
         "\"iscrowd\" must be 0 or 1, got 2"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4]}]}",
         "annotations[0]: missing key \"area\""},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 9, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], "
            "\"area\": 1}]}",
         "annotations[0] (id 5): image_id 9 is not in \"images\""},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 3, \"bbox\": [1, 2, 3, 4], "
            "\"area\": 1}]}",
         "annotations[0] (id 5): category_id 3 is not in \"categories\""},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], "
            "\"area\": 1}, {\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, "
            "3, 4], \"area\": 1}]}",
         "annotations[0] and annotations[1] have the same id 5"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 2}], \"annotations\": "
            "[{\"id\": 5, \"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 1e999], "
            "\"area\": 1}]}",
         "\"bbox\"[3] is out of range"},
        {0, "{\"images\": [{\"id\": 1}], \"categories\": [], \"annotations\": [NaN]}",
         "not valid JSON"},
        {1, "{\"annotations\": []}", "det.json: COCO results are a list of"},
        {1, "{\"annotations\": []}", "(a ground truth? that goes to --gt)"},
        {1, "[{\"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4]}]",
         "det.json: detection [0]: missing key \"score\""},
        {1, "[{\"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], \"score\": 1}, "
            "{\"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], \"score\": \"hi\"}]",
         "det.json: detection [1]: \"score\" must be a number, got a string"},
        {1, "[{\"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, -4], \"score\": 1}]",
         "detection [0]: \"bbox\" has a negative height (-4)"},
        {1, "[{\"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], \"score\": 1},]",
         "det.json: not valid JSON at byte 69"},
        {1, "[{\"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], \"score\": 1}] x",
         "more text after the end"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *t = cases[i].text;
        void *set = cases[i].dets ? (void *)qkv__coco_dets_parse(t, strlen(t), "det.json")
                                  : (void *)qkv__coco_gt_parse(t, strlen(t), "gt.json");
        CHECK(!set && qkv_error_status() == QKV_ERR_FORMAT && strstr(qkv_error(), cases[i].want),
              "case %zu: want '%s', got '%s'", i, cases[i].want, set ? "(accepted)" : qkv_error());
        if (cases[i].dets)
            qkv_coco_dets_free(set);
        else
            qkv_coco_gt_free(set);
    }
    /* a repeated key: the last one counts, as in Python's json */
    const char *rep = "{\"images\": [{\"id\": \"no\"}], \"categories\": [], \"annotations\": [],"
                      " \"images\": [{\"id\": 4, \"id\": 3}]}";
    qkv_coco_gt *gt = qkv__coco_gt_parse(rep, strlen(rep), "rep.json");
    CHECK(gt && gt->n_images == 1 && gt->image_ids[0] == 3, "repeated keys: %s",
          gt ? "wrong value" : qkv_error());
    qkv_coco_gt_free(gt);
    gt = qkv__coco_gt_parse(GT_OK, strlen(GT_OK), "ok.json");
    CHECK(gt && gt->n_anns == 1 && gt->anns[0].area == 12, "%s", qkv_error());
    qkv_coco_gt_free(gt);
    CHECK(!qkv_coco_gt_load("/no/such/file.json") && qkv_error_status() == QKV_ERR_IO &&
              strstr(qkv_error(), "/no/such/file.json"),
          "missing file: %s", qkv_error());
}

/* ---- JSON ------------------------------------------------------------------ */

/* Accepts text iff JSON: skip the root value, then nothing but space. */
static bool json_ok(const char *text)
{
    jr j;
    jr_init(&j, text, strlen(text), "t");
    return jr_skip(&j) == 0 && jr_end(&j) == 0;
}

TEST(json_reader_follows_the_rfc)
{
    const char *good[] = {"[]", " {} ", "[1, -0, 0.5, 1e5, 1E-5, -2.5e+3]", "\"\\u00e9\\ud83d\\ude00\"",
                          "{\"a\": [true, false, null, {\"b\": \"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}]}",
                          "\xEF\xBB\xBF[1]", "\"\\ud800\""};
    const char *bad[] = {"",       "[01]",     "[1,]",    "{\"a\": 1,}", "[1.]",   "[-]",
                         "[1e]",   "[.5]",     "[+1]",    "[\"\\x\"]",   "[\"a\tb\"]",
                         "[] x",   "[NaN]",    "[Infinity]", "{a: 1}",  "[\"abc",  "{\"a\" 1}",
                         "[1 2]",  "[tru]",    "[\"\\u12\"]", "'a'"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK(json_ok(good[i]), "refused valid JSON %s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(!json_ok(bad[i]), "accepted invalid JSON '%s'", bad[i]);
    /* nesting: deep is fine up to the limit, then refused */
    char deep[2 * JR_MAX_DEPTH + 8];
    for (int lim = JR_MAX_DEPTH; lim <= JR_MAX_DEPTH + 1; lim++) {
        memset(deep, '[', (size_t)lim);
        memset(deep + lim, ']', (size_t)lim);
        deep[2 * lim] = '\0';
        CHECK(json_ok(deep) == (lim <= JR_MAX_DEPTH), "depth %d", lim);
    }
    jr j;
    char buf[8];
    size_t len;
    const char *s = "\"h\\u00e9llo w\"";
    jr_init(&j, s, strlen(s), "t");
    CHECK(jr_string(&j, buf, sizeof buf, &len) == 0 && len == 8 && !strcmp(buf, "h\xc3\xa9llo "),
          "string cut to the buffer: '%s' (%zu)", buf, len);
}

TEST(json_numbers_round_like_strtod)
{
    qkv_rng r;
    qkv_rng_seed(&r, 7);
    const char *fixed[] = {"0", "-0", "1", "9007199254740993", "9007199254740995",
                           "0.1", "0.30000000000000004", "1e22", "1e23", "123456789012345678901234567890",
                           "2.2250738585072014e-308", "4.9406564584124654e-324", "1.7976931348623157e308",
                           "0.000000000000000000000000000000000000001", "18446744073709551615",
                           "18446744073709551616", "9223372036854775808.5", "5e-324", "1e-400", "1e400",
                           "0.1000000000000000055511151231257827021181583404541015625",
                           "329.8163757324219", "0.0011052340269088745", "591.5067138671875",
                           "2.00000000000000011102230246251565404236316680908203125",
                           "2.00000000000000011102230246251565404236316680908203124",
                           /* 19 digits within half a 64-bit ulp of a midpoint
                            * between two doubles: long double lands on it */
                           "847433.8895034958259", "93860.49291464812268",
                           "835765.2681547657703", "762280.3201778595685"};
    int bad = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        double got = jr_decimal(fixed[i], strlen(fixed[i])), want = strtod(fixed[i], NULL);
        if (memcmp(&got, &want, sizeof got) && bad++ < 5)
            CHECK(0, "%s: got %.17g, strtod %.17g", fixed[i], got, want);
    }
    /* random doubles and float32 values in the ways Python and C write them,
     * and random 19-digit decimals (one in ~2000 lies where rounding twice
     * would go wrong) */
    char text[64];
    for (int i = 0; i < 240000; i++) {
        uint64_t bits = qkv_rng_u64(&r);
        double v;
        int kind = i % 6;
        if (kind == 5) {
            int point = 1 + (int)qkv_rng_below(&r, 18);
            char *t = text;
            *t++ = (char)('1' + qkv_rng_below(&r, 9));
            for (int k = 1; k < 19; k++) {
                if (k == point)
                    *t++ = '.';
                *t++ = (char)('0' + qkv_rng_below(&r, 10));
            }
            *t = '\0';
        } else {
            if (kind == 0) { /* any finite double */
                memcpy(&v, &bits, sizeof v);
                if (!isfinite(v))
                    continue;
            } else {
                v = (double)(float)(qkv_rng_uniform(&r) * 1000.0);
            }
            static const char *const fmts[] = {"%.17g", "%.16g", "%.15g", "%.9g", "%.3e"};
            snprintf(text, sizeof text, fmts[(i / 6) % 5], v);
        }
        double got = jr_decimal(text, strlen(text)), want = strtod(text, NULL);
        if (memcmp(&got, &want, sizeof got) && bad++ < 5)
            CHECK(0, "%s: got %.17g, strtod %.17g", text, got, want);
    }
    CHECK(bad == 0, "%d numbers differ from strtod", bad);
}

/* ---- the command ------------------------------------------------------------ */

static int run_qkv(const char *args, char *out, size_t n)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", test_qkv_bin(), args);
    return test_run(cmd, out, n);
}

TEST(cli_coco_eval)
{
    static char names[2000][32], out[65536];
    const char *dir = cases_dir();
    int n = list_cases(dir, names, 2000);
    REQUIRE(n > 0, "no cases in %s", dir);
    char base[1100], args[4096], tmp[] = "/tmp/qkv-coco-XXXXXX";
    REQUIRE(mkdtemp(tmp), "mkdtemp failed");
    int c = n > 1 ? 1 : 0;
    snprintf(base, sizeof base, "%.900s/%.31s", dir, names[c]);
    want_t w = {0};
    REQUIRE(want_load(&w, base), "%s: no answer", base);
    snprintf(args, sizeof args,
             "coco-eval --gt %s.gt.json --dt %s.dt.json --json %s/out.json --per-class "
             "--pr-curves %s/pr",
             base, base, tmp, tmp);
    int rc = run_qkv(args, out, sizeof out);
    CHECK(rc == 0, "exit %d:\n%s", rc, out);
    /* the 12 lines, as pycocotools printed them, first */
    const char *p = out;
    for (int i = 0; i < QKV_COCO_NSTATS; i++) {
        size_t len = strlen(w.lines[i]);
        CHECK(!strncmp(p, w.lines[i], len) && p[len] == '\n', "line %d:\n%.*s\nwant\n%s", i,
              (int)len, p, w.lines[i]);
        p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p);
    }
    CHECK(strstr(out, "category") && strstr(out, "AP50"), "no per-class table:\n%s", out);
    /* --json: the 12 numbers in full precision */
    char path[1200];
    snprintf(path, sizeof path, "%s/out.json", tmp);
    char *text = read_all(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    cJSON *stats = j ? cJSON_GetObjectItem(j, "stats") : NULL;
    CHECK(cJSON_GetArraySize(stats) == QKV_COCO_NSTATS, "%s: no stats", path);
    for (int i = 0; i < cJSON_GetArraySize(stats); i++)
        CHECK_SCALAR(cJSON_GetArrayItem(stats, i)->valuedouble, w.stats[i], 0, 0);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(j, "categories")) == w.K, "categories");
    cJSON_Delete(j);
    free(text);
    remove(path);
    /* --pr-curves: pr_all.png and one per category with ground truth */
    snprintf(path, sizeof path, "%s/pr/pr_all.png", tmp);
    CHECK(access(path, R_OK) == 0, "%s not written", path);
    snprintf(base, sizeof base, "%s/pr", tmp);
    DIR *d = opendir(base);
    int pngs = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char f[1400];
        snprintf(f, sizeof f, "%s/%s", base, e->d_name);
        pngs += strstr(e->d_name, ".png") != NULL;
        remove(f);
    }
    if (d)
        closedir(d);
    int with_gt = 0;
    for (int64_t k = 0; k < w.K; k++)
        with_gt += w.cat_ap[k] > -1;
    CHECK(pngs == with_gt + (with_gt > 0), "%d pictures for %d categories with ground truth",
          pngs, with_gt);
    rmdir(base);
    rmdir(tmp);
    free(w.prec);

    /* bad input: named, exit 1; usage: exit 2 */
    snprintf(base, sizeof base, "%.900s/%.31s", dir, names[c]);
    snprintf(args, sizeof args, "coco-eval --gt %s.dt.json --dt %s.dt.json", base, base);
    rc = run_qkv(args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, ".dt.json: a COCO ground truth is an object"), "exit %d:\n%s",
          rc, out);
    snprintf(args, sizeof args, "coco-eval --gt %s.gt.json --dt /no/such.json", base);
    rc = run_qkv(args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "/no/such.json"), "exit %d:\n%s", rc, out);
    /* an output that cannot be written: named, exit 1, nothing left behind */
    snprintf(args, sizeof args, "coco-eval --gt %s.gt.json --dt %s.dt.json --json /no/such/o.json",
             base, base);
    rc = run_qkv(args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "cannot create /no/such/o.json.tmp"), "exit %d:\n%s", rc, out);
    rc = run_qkv("coco-eval --gt x.json", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "--gt and --dt are both required"), "exit %d:\n%s", rc, out);
}

TEST(cli_coco_eval_refuses_an_unknown_image)
{
    static char out[8192];
    char tmp[] = "/tmp/qkv-coco-XXXXXX", gt[64], dt[64], args[512];
    REQUIRE(mkdtemp(tmp), "mkdtemp failed");
    snprintf(gt, sizeof gt, "%s/gt.json", tmp);
    snprintf(dt, sizeof dt, "%s/dt.json", tmp);
    FILE *f = fopen(gt, "w");
    REQUIRE(f, "cannot write %s", gt);
    fputs(GT_OK, f);
    fclose(f);
    f = fopen(dt, "w");
    REQUIRE(f, "cannot write %s", dt);
    fputs("[{\"image_id\": 1, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], \"score\": 0.5},\n"
          " {\"image_id\": 3, \"category_id\": 2, \"bbox\": [1, 2, 3, 4], \"score\": 0.5}]\n",
          f);
    fclose(f);
    snprintf(args, sizeof args, "coco-eval --gt %s --dt %s", gt, dt);
    int rc = run_qkv(args, out, sizeof out);
    char want[256];
    snprintf(want, sizeof want, "%s: detection [1]: image_id 3 is not an image of the ground "
                                "truth %s",
             dt, gt);
    CHECK(rc == 1 && strstr(out, want), "exit %d, want '%s' in:\n%s", rc, want, out);
    remove(gt);
    remove(dt);
    rmdir(tmp);
}
