/* coco_eval.c - COCO box evaluation as pycocotools' COCOeval (iouType
 * 'bbox', default Params) computes it: evaluate(), accumulate() and
 * summarize(), with every tie, threshold and rounding as there, so that the
 * numbers are equal, not close (docs/coco.md lists the rules).
 *
 * pycocotools evaluates each (image, category, area range) in Python; here
 * each category is one task for a thread: its detections and ground truths
 * come grouped by image, each group is matched once for all four area
 * ranges and ten thresholds, and the category's precision and recall are
 * accumulated from a single sort of its detections.
 *
 * Legend: T IoU thresholds, R recall points, K categories, A area ranges,
 * M detection limits, I images; ng ground truths and nd detections of one
 * (image, category). */
#include "../io/coco.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* pycocotools computes in plain double operations; a fused multiply-add
 * would round differently. (GCC does not contract in ISO C mode.) */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

enum { T = QKV_COCO_T, R = QKV_COCO_R, A = QKV_COCO_A, M = QKV_COCO_M };

/* Params.areaRng: [0^2, 1e5^2], [0^2, 32^2], [32^2, 96^2], [96^2, 1e5^2]. */
static const double AREA[A][2] = {{0, 1e10}, {0, 1024}, {1024, 9216}, {9216, 1e10}};
static const int64_t MAX_DETS[M] = {1, 10, 100};

/* np.linspace(.5, .95, 10) and np.linspace(0, 1, 101) as numpy computes
 * them: i * step + start, the last one set to stop. */
static void thresholds(double *iou, double *rec)
{
    double step = (0.95 - 0.5) / 9;
    for (int i = 0; i < T - 1; i++)
        iou[i] = i * step + 0.5;
    iou[T - 1] = 0.95;
    for (int i = 0; i < R - 1; i++)
        rec[i] = i * (1.0 / 100) + 0.0;
    rec[R - 1] = 1.0;
}

/* IoU of a detection box d with a ground-truth box g (x, y, w, h), as
 * maskApi.c's bbIou: no +1, and for a crowd the union is the detection's
 * area. */
static double min2(double a, double b) { return a < b ? a : b; }
static double max2(double a, double b) { return a > b ? a : b; }

/* fmin and fmax there; the values are finite, and where the two forms could
 * differ (a zero's sign) the difference makes w or h <= 0 either way. */
static double box_iou(const double *d, const double *g, int crowd)
{
    double w = min2(d[2] + d[0], g[2] + g[0]) - max2(d[0], g[0]);
    if (w <= 0)
        return 0;
    double h = min2(d[3] + d[1], g[3] + g[1]) - max2(d[1], g[1]);
    if (h <= 0)
        return 0;
    double i = w * h, da = d[2] * d[3], ga = g[2] * g[3];
    double u = crowd ? da : da + ga - i;
    return i / u;
}

/* Sorts idx[0..n) by key[idx] descending, keeping the order of equal keys
 * (numpy's argsort(-key, kind='mergesort') is stable); tmp holds n. */
static void sort_desc(int64_t *idx, int64_t n, const double *key, int64_t *tmp)
{
    const int64_t run = 16;
    for (int64_t lo = 0; lo < n; lo += run) { /* insertion sort of short runs */
        int64_t hi = lo + run < n ? lo + run : n;
        for (int64_t i = lo + 1; i < hi; i++) {
            int64_t v = idx[i], j = i;
            for (; j > lo && key[idx[j - 1]] < key[v]; j--)
                idx[j] = idx[j - 1];
            idx[j] = v;
        }
    }
    int64_t *src = idx, *dst = tmp;
    for (int64_t width = run; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n;
            int64_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t a = lo, b = mid, o = lo;
            while (a < mid && b < hi) /* the right one first only if greater */
                dst[o++] = key[src[b]] > key[src[a]] ? src[b++] : src[a++];
            while (a < mid)
                dst[o++] = src[a++];
            while (b < hi)
                dst[o++] = src[b++];
        }
        int64_t *s = src;
        src = dst;
        dst = s;
    }
    if (src != idx)
        memcpy(idx, src, (size_t)n * sizeof *idx);
}

/* Orders items 0..n-1 by (cat, img, position) with two stable counting
 * passes; cat_start (K + 1) receives where each category begins. */
static qkv_status group_by(int64_t *order, int64_t *cat_start, int64_t n, const int32_t *cat,
                           const int32_t *img, int64_t K, int64_t I)
{
    int64_t nb = (K > I ? K : I) + 1;
    int64_t *tmp = qkv__malloc((size_t)(n ? n : 1) * sizeof *tmp);
    int64_t *pos = qkv__calloc((size_t)nb, sizeof *pos);
    if (!tmp || !pos) {
        qkv__free(tmp);
        qkv__free(pos);
        return QKV_ERR_NOMEM;
    }
    for (int64_t i = 0; i < n; i++)
        pos[img[i] + 1]++;
    for (int64_t b = 1; b <= I; b++)
        pos[b] += pos[b - 1];
    for (int64_t i = 0; i < n; i++)
        tmp[pos[img[i]]++] = i;
    memset(pos, 0, (size_t)nb * sizeof *pos);
    for (int64_t i = 0; i < n; i++)
        pos[cat[i] + 1]++;
    for (int64_t b = 1; b <= K; b++)
        pos[b] += pos[b - 1];
    memcpy(cat_start, pos, (size_t)(K + 1) * sizeof *cat_start);
    for (int64_t j = 0; j < n; j++)
        order[pos[cat[tmp[j]]]++] = tmp[j];
    qkv__free(tmp);
    qkv__free(pos);
    return QKV_OK;
}

/* A kept detection of one category, as accumulate() sees it. */
typedef struct {
    double score;
    int32_t img;    /* image index: accumulate's tie order after the score */
    int32_t rank;   /* place in its image's score order, 0..99 */
    uint32_t flags[A]; /* per area range: bit t matched (dtMatches != 0),
                        * bit 16 + t ignored (dtIgnore) */
} det_entry;

#define IGNORED(t) (1u << (16 + (t)))

/* A thread's buffers for one (image, category) group, grown on demand. */
typedef struct {
    int64_t cap_d, cap_g;
    int64_t *d, *dtmp;       /* (cap_d) the group's detections, sorted */
    double *score;           /* (cap_d) their scores, by position in dets */
    double *iou;             /* (100, cap_g) */
    int64_t *go;             /* (cap_g) ground truths, not ignored first */
    unsigned char *ig, *taken; /* (cap_g) */
} scratch;

static void scratch_free(scratch *s)
{
    qkv__free(s->d);
    qkv__free(s->dtmp);
    qkv__free(s->score);
    qkv__free(s->iou);
    qkv__free(s->go);
    qkv__free(s->ig);
    qkv__free(s->taken);
    memset(s, 0, sizeof *s);
}

static int scratch_fit(scratch *s, int64_t nd, int64_t ng)
{
    if (nd > s->cap_d) {
        qkv__free(s->d);
        qkv__free(s->dtmp);
        qkv__free(s->score);
        s->cap_d = nd > 2 * s->cap_d ? nd : 2 * s->cap_d;
        s->d = qkv__malloc((size_t)s->cap_d * sizeof *s->d);
        s->dtmp = qkv__malloc((size_t)s->cap_d * sizeof *s->dtmp);
        s->score = qkv__malloc((size_t)s->cap_d * sizeof *s->score);
        if (!s->d || !s->dtmp || !s->score)
            return -1;
    }
    if (ng > s->cap_g || !s->iou) {
        qkv__free(s->iou);
        qkv__free(s->go);
        qkv__free(s->ig);
        qkv__free(s->taken);
        s->cap_g = ng > 2 * s->cap_g ? ng : 2 * s->cap_g;
        if (s->cap_g < 16)
            s->cap_g = 16;
        s->iou = qkv__malloc((size_t)(100 * s->cap_g) * sizeof *s->iou);
        s->go = qkv__malloc((size_t)s->cap_g * sizeof *s->go);
        s->ig = qkv__malloc((size_t)s->cap_g);
        s->taken = qkv__malloc((size_t)s->cap_g);
        if (!s->iou || !s->go || !s->ig || !s->taken)
            return -1;
    }
    return 0;
}

/* A detection as evaluation reads it, stored grouped by category and image
 * so that each category's work reads memory in order. */
typedef struct {
    double bbox[4];
    double score;
    int32_t img;
} grouped_det;

/* What evaluation of one category needs, shared read-only by the threads. */
typedef struct {
    const qkv_coco_gt *gt;
    const grouped_det *dets;        /* (nd) by category, image, file order */
    const int32_t *ann_img;
    const int64_t *g_order, *g_start, *d_start;
    int64_t K;
    double iou_thr[T], rec_thr[R];
    double *precision, *recall; /* (T, R, K, A, M), (T, K, A, M) */
} eval_job;

/* evaluateImg for one (image, category) at all area ranges and thresholds:
 * g (ng annotation indices, file order), dets s->d (nd <= 100, by score).
 * Appends the detections to out and adds the ground truths that count to
 * npig. */
static void match_group(const eval_job *job, scratch *s, const int64_t *g, int64_t ng,
                        int64_t nd, int32_t img, det_entry *out, int64_t *npig)
{
    const qkv_coco_ann *anns = job->gt->anns;
    const grouped_det *dets = job->dets;
    for (int64_t i = 0; i < nd; i++) {
        const grouped_det *d = &dets[s->d[i]];
        for (int64_t j = 0; j < ng; j++)
            s->iou[i * ng + j] = box_iou(d->bbox, anns[g[j]].bbox, anns[g[j]].iscrowd);
        out[i] = (det_entry){.score = d->score, .img = img, .rank = (int32_t)i};
    }
    if (ng == 0) { /* all unmatched: ignored where out of range, else false */
        for (int64_t i = 0; i < nd; i++) {
            const double *b = dets[s->d[i]].bbox;
            double area = b[2] * b[3];
            for (int a = 0; a < A; a++)
                out[i].flags[a] = area < AREA[a][0] || area > AREA[a][1] ? 0x3FFu << 16 : 0;
        }
        return;
    }
    for (int a = 0; a < A; a++) {
        /* ground truths outside the range or crowds are ignored, and sorted
         * last (stable) */
        int64_t n_ok = 0;
        for (int64_t j = 0; j < ng; j++) {
            const qkv_coco_ann *ga = &anns[g[j]];
            s->ig[j] = ga->iscrowd || ga->area < AREA[a][0] || ga->area > AREA[a][1];
            n_ok += !s->ig[j];
        }
        npig[a] += n_ok;
        for (int64_t j = 0, p = 0, q = n_ok; j < ng; j++)
            s->go[s->ig[j] ? q++ : p++] = j;
        for (int t = 0; t < T; t++) {
            memset(s->taken, 0, (size_t)ng);
            for (int64_t i = 0; i < nd; i++) {
                const double *row = &s->iou[i * ng];
                double best = min2(job->iou_thr[t], 1 - 1e-10);
                int64_t m = -1; /* position in go of the best match so far */
                for (int64_t p = 0; p < ng; p++) {
                    int64_t j = s->go[p];
                    if (s->taken[p] && !anns[g[j]].iscrowd)
                        continue;
                    /* matched to a counted one: stop at the ignored ones */
                    if (m > -1 && !s->ig[s->go[m]] && s->ig[j])
                        break;
                    if (row[j] < best)
                        continue;
                    best = row[j];
                    m = p;
                }
                int matched = 0, ignored = 0;
                if (m > -1) {
                    s->taken[m] = 1;
                    ignored = s->ig[s->go[m]];
                    /* dtMatches holds the ground truth's id: 0 reads as
                     * unmatched in accumulate() */
                    matched = anns[g[s->go[m]]].id != 0;
                }
                if (!matched) { /* unmatched ones outside the range are ignored */
                    const double *b = dets[s->d[i]].bbox;
                    double area = b[2] * b[3];
                    ignored |= area < AREA[a][0] || area > AREA[a][1];
                }
                out[i].flags[a] |= (uint32_t)matched << t | (uint32_t)ignored << (16 + t);
            }
        }
    }
}

/* accumulate() for one category k from its kept detections e[0..n) in
 * accumulate's order (by score, then image, then rank); npig[a] counted
 * ground truths in range a; ev scratch of T * max(npig).
 *
 * pycocotools walks the detections once per (a, m, t) computing recall
 * rc = tp / npig and precision pr = tp / (fp + tp + eps) at each, makes pr
 * monotone from the right and reads it at the first index where rc reaches
 * each recall point. The same numbers come from the true positives alone:
 * rc only grows at a true positive, so each recall point is first reached
 * at the true positive of level L* = min{L : L / npig >= point}; and a false
 * positive's (or an ignored detection's) pr never exceeds that of the true
 * positive before it (same tp, larger denominator), so the monotone pr at a
 * true positive is the largest pr among the true positives from there on.
 * Recall point 0 is reached at the first detection: its monotone pr is the
 * largest of all, 0 without true positives. */
static void accumulate(const eval_job *job, int64_t k, const det_entry *e, int64_t n,
                       const int64_t *npig, double *ev)
{
    const int64_t K = job->K;
    const double eps = 2.220446049250313e-16; /* np.spacing(1) */
    for (int a = 0; a < A; a++) {
        const int64_t np = npig[a];
        if (np == 0) /* nothing to find: stays -1 */
            continue;
        int64_t lstar[R]; /* np.searchsorted(rc, recThrs, 'left') in levels */
        for (int64_t r = 0, L = 0; r < R; r++) {
            while (L <= np && (double)L / (double)np < job->rec_thr[r])
                L++;
            lstar[r] = L > 1 ? L : 1;
        }
        for (int m = 0; m < M; m++) {
            int64_t tp[T] = {0}, fp[T] = {0};
            for (int64_t i = 0; i < n; i++) {
                if (e[i].rank >= MAX_DETS[m])
                    continue;
                uint32_t f = e[i].flags[a], counted = ~(f >> 16) & 0x3FFu;
                uint32_t tps = f & counted, fps = ~f & counted;
                for (int t = 0; t < T; t++)
                    fp[t] += fps >> t & 1;
                for (; tps; tps &= tps - 1) {
                    int t = __builtin_ctz(tps);
                    int64_t L = ++tp[t];
                    ev[t * np + L - 1] = (double)L / ((double)fp[t] + (double)L + eps);
                }
            }
            for (int t = 0; t < T; t++) {
                double *pr = ev + t * np;
                /* rc[-1], or 0 without detections (then tp is 0 too) */
                job->recall[((t * K + k) * A + a) * M + m] = (double)tp[t] / (double)np;
                for (int64_t i = tp[t] - 1; i > 0; i--)
                    if (pr[i] > pr[i - 1])
                        pr[i - 1] = pr[i];
                for (int r = 0; r < R; r++)
                    job->precision[(((t * R + r) * K + k) * A + a) * M + m] =
                        lstar[r] <= tp[t] ? pr[lstar[r] - 1] : 0;
            }
        }
    }
}

/* Evaluates category k: every image with ground truth or detections of k,
 * then accumulate. -1 when out of memory. */
static int eval_category(const eval_job *job, int64_t k, scratch *s)
{
    const int64_t *g = job->g_order + job->g_start[k];
    const int64_t dk = job->d_start[k];
    const grouped_det *d = job->dets + dk;
    int64_t ng_all = job->g_start[k + 1] - job->g_start[k];
    int64_t nd_all = job->d_start[k + 1] - job->d_start[k];
    size_t cap = (size_t)(nd_all ? nd_all : 1);
    det_entry *e = qkv__malloc(cap * sizeof *e), *sorted = qkv__malloc(cap * sizeof *sorted);
    int64_t *order = qkv__malloc(cap * sizeof *order), *tmp = qkv__malloc(cap * sizeof *tmp);
    double *key = qkv__malloc(cap * sizeof *key);
    double *ev = qkv__malloc((size_t)(T * (ng_all ? ng_all : 1)) * sizeof *ev);
    int rcode = -1;
    if (!e || !sorted || !order || !tmp || !key || !ev)
        goto done;
    int64_t npig[A] = {0}, n = 0;
    for (int64_t gi = 0, di = 0; gi < ng_all || di < nd_all;) {
        /* the next image of either list */
        int32_t img = INT32_MAX;
        if (gi < ng_all)
            img = job->ann_img[g[gi]];
        if (di < nd_all && d[di].img < img)
            img = d[di].img;
        int64_t g0 = gi, d0 = di;
        while (gi < ng_all && job->ann_img[g[gi]] == img)
            gi++;
        while (di < nd_all && d[di].img == img)
            di++;
        int64_t ng = gi - g0, nd = di - d0;
        if (scratch_fit(s, nd, ng))
            goto done;
        /* by score, file order among equals; then the first 100 */
        for (int64_t i = 0; i < nd; i++) {
            s->dtmp[i] = i;
            s->score[i] = d[d0 + i].score;
        }
        sort_desc(s->dtmp, nd, s->score, tmp);
        if (nd > 100)
            nd = 100;
        for (int64_t i = 0; i < nd; i++)
            s->d[i] = dk + d0 + s->dtmp[i];
        match_group(job, s, g + g0, ng, nd, img, e + n, npig);
        n += nd;
    }
    /* accumulate's order: by score, ties by image then rank, which is the
     * order the entries were appended in */
    for (int64_t i = 0; i < n; i++) {
        order[i] = i;
        key[i] = e[i].score;
    }
    sort_desc(order, n, key, tmp);
    for (int64_t i = 0; i < n; i++)
        sorted[i] = e[order[i]];
    accumulate(job, k, sorted, n, npig, ev);
    rcode = 0;
done:
    qkv__free(e);
    qkv__free(sorted);
    qkv__free(order);
    qkv__free(tmp);
    qkv__free(key);
    qkv__free(ev);
    return rcode;
}

void qkv_coco_result_free(qkv_coco_result *r)
{
    if (!r)
        return;
    qkv__free(r->category_ids);
    qkv__free(r->category_ap);
    qkv__free(r->precision);
    qkv__free(r->recall);
    memset(r, 0, sizeof *r);
}

/* numpy's pairwise sum of a float64 array (np.add.reduce, so np.mean):
 * blocks of up to 128 summed in 8 lanes, larger ones halved. */
static double pairwise_sum(const double *x, int64_t n)
{
    if (n < 8) {
        double s = 0;
        for (int64_t i = 0; i < n; i++)
            s += x[i];
        return s;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; j++)
            r[j] = x[j];
        int64_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (int j = 0; j < 8; j++)
                r[j] += x[i + j];
        double s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            s += x[i];
        return s;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(x, n2) + pairwise_sum(x + n2, n - n2);
}

/* summarize()'s 12 settings: AP (1) or AR (0), IoU threshold index (-1 all),
 * area range, detection limit. */
static const struct {
    int ap, t, a, m;
} SUMMARY[QKV_COCO_NSTATS] = {
    {1, -1, 0, 2}, {1, 0, 0, 2},  {1, 5, 0, 2},  {1, -1, 1, 2},
    {1, -1, 2, 2}, {1, -1, 3, 2}, {0, -1, 0, 0}, {0, -1, 0, 1},
    {0, -1, 0, 2}, {0, -1, 1, 2}, {0, -1, 2, 2}, {0, -1, 3, 2},
};

/* np.mean(s[s > -1]) of one setting over categories k0..k1-1, in numpy's
 * element order (t, r, k for precision; t, k for recall); -1 if empty.
 * buf holds T * R * (k1 - k0). */
static double summary_value(const qkv_coco_result *res, int i, int64_t k0, int64_t k1,
                            double *buf)
{
    const int64_t K = res->n_categories;
    int t0 = SUMMARY[i].t < 0 ? 0 : SUMMARY[i].t, t1 = SUMMARY[i].t < 0 ? T : SUMMARY[i].t + 1;
    int a = SUMMARY[i].a, m = SUMMARY[i].m;
    int64_t n = 0;
    for (int t = t0; t < t1; t++)
        if (SUMMARY[i].ap) {
            for (int r = 0; r < R; r++)
                for (int64_t k = k0; k < k1; k++) {
                    double v = res->precision[(((t * R + r) * K + k) * A + a) * M + m];
                    if (v > -1)
                        buf[n++] = v;
                }
        } else {
            for (int64_t k = k0; k < k1; k++) {
                double v = res->recall[((t * K + k) * A + a) * M + m];
                if (v > -1)
                    buf[n++] = v;
            }
        }
    return n ? pairwise_sum(buf, n) / (double)n : -1;
}

static void summarize_into(const qkv_coco_result *r, int64_t k, double *stats, double *buf)
{
    int64_t k0 = k < 0 ? 0 : k, k1 = k < 0 ? r->n_categories : k + 1;
    for (int i = 0; i < QKV_COCO_NSTATS; i++)
        stats[i] = summary_value(r, i, k0, k1, buf);
}

void qkv_coco_summarize(const qkv_coco_result *r, int64_t k, double stats[QKV_COCO_NSTATS])
{
    for (int i = 0; i < QKV_COCO_NSTATS; i++)
        stats[i] = -1;
    if (!r || !r->precision || k >= r->n_categories)
        return;
    int64_t nk = k < 0 ? r->n_categories : 1;
    double *buf = qkv__malloc((size_t)(T * R * (nk ? nk : 1)) * sizeof *buf);
    if (buf)
        summarize_into(r, k, stats, buf);
    qkv__free(buf);
}

int qkv_coco_stat_line(int i, double v, char *buf, size_t n)
{
    static const char *const area[A] = {"all", "small", "medium", "large"};
    if (i < 0 || i >= QKV_COCO_NSTATS)
        return snprintf(buf, n, "%s", "");
    char iou[16];
    if (SUMMARY[i].t < 0)
        snprintf(iou, sizeof iou, "%0.2f:%0.2f", 0.5, 0.95);
    else
        snprintf(iou, sizeof iou, "%0.2f", SUMMARY[i].t == 0 ? 0.5 : 0.75);
    /* ' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}' */
    return snprintf(buf, n, " %-18s %s @[ IoU=%-9s | area=%6s | maxDets=%3d ] = %0.3f",
                    SUMMARY[i].ap ? "Average Precision" : "Average Recall",
                    SUMMARY[i].ap ? "(AP)" : "(AR)", iou, area[SUMMARY[i].a],
                    (int)MAX_DETS[SUMMARY[i].m], v);
}

/* Positions of ids in an ascending list: a table over [ids[0], ids[n-1]]
 * when that range is small (COCO's ids are), else binary search. */
typedef struct {
    const int64_t *ids;
    int64_t n, lo;
    int32_t *table; /* (range) position or -1; NULL: search */
} id_map;

static int id_map_init(id_map *m, const int64_t *ids, int64_t n)
{
    *m = (id_map){.ids = ids, .n = n};
    if (n == 0)
        return 0;
    uint64_t range = (uint64_t)ids[n - 1] - (uint64_t)ids[0] + 1;
    if (range > (uint64_t)(8 * n + (1 << 20)))
        return 0;
    m->lo = ids[0];
    m->table = qkv__malloc((size_t)range * sizeof *m->table);
    if (!m->table)
        return -1;
    memset(m->table, 0xff, (size_t)range * sizeof *m->table);
    for (int64_t i = 0; i < n; i++)
        m->table[ids[i] - m->lo] = (int32_t)i;
    return 0;
}

static int32_t id_map_find(const id_map *m, int64_t id)
{
    if (!m->table)
        return (int32_t)qkv__coco_find(m->ids, m->n, id);
    uint64_t off = (uint64_t)id - (uint64_t)m->lo;
    return off <= (uint64_t)(m->ids[m->n - 1] - m->lo) ? m->table[off] : -1;
}

/* Each detection's image and category index; QKV_ERR_FORMAT naming the
 * first one whose image or category the ground truth does not have. */
static qkv_status map_dets(const qkv__coco_index *ix, const qkv_coco_gt *gt,
                           const qkv_coco_dets *dt, int32_t *img, int32_t *cat)
{
    const int64_t n = dt->n;
    id_map mi, mc;
    if (id_map_init(&mi, ix->image_ids, ix->n_images) ||
        id_map_init(&mc, ix->cat_ids, ix->n_cats)) {
        qkv__free(mi.table);
        return QKV_ERR_NOMEM;
    }
    int64_t first_bad = n;
#pragma omp parallel for if (n > 65536) schedule(static) reduction(min : first_bad)
    for (int64_t i = 0; i < n; i++) {
        img[i] = id_map_find(&mi, dt->d[i].image_id);
        cat[i] = id_map_find(&mc, dt->d[i].category_id);
        if ((img[i] < 0 || cat[i] < 0) && i < first_bad)
            first_bad = i;
    }
    qkv__free(mi.table);
    qkv__free(mc.table);
    if (first_bad == n)
        return QKV_OK;
    const qkv_coco_det *d = &dt->d[first_bad];
    if (img[first_bad] < 0)
        return qkv_set_error(QKV_ERR_FORMAT,
                             "%s: detection [%lld]: image_id %lld is not an image of the "
                             "ground truth %s (pycocotools: \"Results do not correspond to "
                             "current coco set\")",
                             dt->name, (long long)first_bad, (long long)d->image_id, gt->name);
    return qkv_set_error(QKV_ERR_FORMAT,
                         "%s: detection [%lld]: category_id %lld is not a category of the "
                         "ground truth %s",
                         dt->name, (long long)first_bad, (long long)d->category_id, gt->name);
}

qkv_status qkv_coco_evaluate(const qkv_coco_gt *gt, const qkv_coco_dets *dt,
                             qkv_coco_result *out)
{
    if (!out)
        return qkv_set_error(QKV_ERR_ARG, "qkv_coco_evaluate: out is NULL");
    memset(out, 0, sizeof *out);
    if (!gt || !dt)
        return qkv_set_error(QKV_ERR_ARG, "qkv_coco_evaluate: %s is NULL",
                             gt ? "the detection list" : "the ground truth");
    qkv__coco_index ix;
    if (qkv__coco_index_build(&ix, gt))
        return qkv_error_status();
    if (dt->n > INT32_MAX) {
        qkv__coco_index_free(&ix);
        return qkv_set_error(QKV_ERR_ARG, "%s: more than 2^31 detections", dt->name);
    }
    const int64_t K = ix.n_cats, I = ix.n_images, nd = dt->n, ng = gt->n_anns;
    qkv_status st = QKV_ERR_NOMEM;
    int32_t *det_img = qkv__malloc((size_t)(nd ? nd : 1) * sizeof *det_img);
    int32_t *det_cat = qkv__malloc((size_t)(nd ? nd : 1) * sizeof *det_cat);
    int64_t *d_order = qkv__malloc((size_t)(nd ? nd : 1) * sizeof *d_order);
    grouped_det *grouped = qkv__malloc((size_t)(nd ? nd : 1) * sizeof *grouped);
    int64_t *g_order = qkv__malloc((size_t)(ng ? ng : 1) * sizeof *g_order);
    int64_t *d_start = qkv__malloc((size_t)(K + 1) * sizeof *d_start);
    int64_t *g_start = qkv__malloc((size_t)(K + 1) * sizeof *g_start);
    size_t n_prec = (size_t)(T * R * K * A * M), n_rec = (size_t)(T * K * A * M);
    out->n_categories = K;
    out->category_ids = qkv__malloc((size_t)(K ? K : 1) * sizeof *out->category_ids);
    out->category_ap = qkv__malloc((size_t)(K ? K : 1) * sizeof *out->category_ap);
    out->precision = qkv__malloc((n_prec ? n_prec : 1) * sizeof *out->precision);
    out->recall = qkv__malloc((n_rec ? n_rec : 1) * sizeof *out->recall);
    double *buf = qkv__malloc((size_t)(T * R * (K ? K : 1)) * sizeof *buf);
    if (!det_img || !det_cat || !d_order || !grouped || !g_order || !d_start || !g_start ||
        !out->category_ids || !out->category_ap || !out->precision || !out->recall || !buf)
        goto done;
    if ((st = map_dets(&ix, gt, dt, det_img, det_cat)) != QKV_OK)
        goto done; /* QKV_ERR_NOMEM here has its message already */
    st = QKV_ERR_NOMEM;
    if (group_by(d_order, d_start, nd, det_cat, det_img, K, I) ||
        group_by(g_order, g_start, ng, ix.ann_cat, ix.ann_image, K, I))
        goto done;

    for (int64_t j = 0; j < nd; j++) {
        const qkv_coco_det *src = &dt->d[d_order[j]];
        memcpy(grouped[j].bbox, src->bbox, sizeof src->bbox);
        grouped[j].score = src->score;
        grouped[j].img = det_img[d_order[j]];
    }
    eval_job job = {.gt = gt, .dets = grouped, .ann_img = ix.ann_image,
                    .g_order = g_order, .g_start = g_start,
                    .d_start = d_start, .K = K, .precision = out->precision,
                    .recall = out->recall};
    thresholds(job.iou_thr, job.rec_thr);
    for (size_t i = 0; i < n_prec; i++)
        out->precision[i] = -1;
    for (size_t i = 0; i < n_rec; i++)
        out->recall[i] = -1;
    int failed = 0;
#pragma omp parallel num_threads(qkv_threads()) if (K > 1 && nd + ng > 4096)
    {
        scratch s = {0};
#pragma omp for schedule(dynamic, 1) reduction(| : failed)
        for (int64_t k = 0; k < K; k++)
            failed |= eval_category(&job, k, &s) != 0;
        scratch_free(&s);
    }
    if (failed)
        goto done;

    memcpy(out->category_ids, ix.cat_ids, (size_t)K * sizeof *out->category_ids);
    memcpy(out->iou_thresholds, job.iou_thr, sizeof job.iou_thr);
    memcpy(out->recall_thresholds, job.rec_thr, sizeof job.rec_thr);
    memcpy(out->area_ranges, AREA, sizeof AREA);
    memcpy(out->max_dets, MAX_DETS, sizeof MAX_DETS);
    summarize_into(out, -1, out->stats, buf);
    for (int64_t k = 0; k < K; k++)
        out->category_ap[k] = summary_value(out, 0, k, k + 1, buf);
    st = QKV_OK;
done:
    if (st == QKV_ERR_NOMEM && qkv_error_status() != QKV_ERR_NOMEM)
        qkv_set_error(QKV_ERR_NOMEM, "coco evaluation: out of memory");
    if (st != QKV_OK)
        qkv_coco_result_free(out);
    qkv__free(det_img);
    qkv__free(det_cat);
    qkv__free(d_order);
    qkv__free(grouped);
    qkv__free(g_order);
    qkv__free(d_start);
    qkv__free(g_start);
    qkv__free(buf);
    qkv__coco_index_free(&ix);
    return st;
}
