/* coco_report.c - what an evaluation leaves behind: the numbers as JSON (for
 * scripts and for comparing runs) and precision-recall pictures (for people).
 * `qkv coco-eval --json/--pr-curves` and any C program call these. */
#include "../qkv_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *const STAT_NAMES[QKV_COCO_NSTATS] = {
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};

/* [12 numbers] in full double precision (-1 kept: nothing counted) */
static void put_stats(FILE *f, const double *s)
{
    fputc('[', f);
    for (int i = 0; i < QKV_COCO_NSTATS; i++)
        fprintf(f, "%s%.17g", i ? ", " : "", s[i]);
    fputc(']', f);
}

qkv_status qkv_coco_save_json(const char *path, const qkv_coco_result *r, const qkv_coco_gt *gt,
                              const qkv_coco_dets *dt)
{
    if (!path || !r || !gt || !dt)
        return qkv_set_error(QKV_ERR_ARG, "coco_save_json: NULL argument");
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return qkv_set_error(QKV_ERR_ARG, "coco_save_json: path too long");
    FILE *f = fopen(tmp, "w");
    if (!f)
        return qkv_set_error(QKV_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    fputs("{\"stats\": ", f);
    put_stats(f, r->stats);
    fputs(",\n \"stats_names\": [", f);
    for (int i = 0; i < QKV_COCO_NSTATS; i++)
        fprintf(f, "%s\"%s\"", i ? ", " : "", STAT_NAMES[i]);
    fprintf(f, "],\n \"images\": %lld, \"annotations\": %lld, \"detections\": %lld,\n",
            (long long)qkv_coco_gt_count_images(gt), (long long)qkv_coco_gt_count_anns(gt),
            (long long)qkv_coco_dets_count(dt));
    fputs(" \"categories\": [", f);
    for (int64_t k = 0; k < r->n_categories; k++) {
        double s[QKV_COCO_NSTATS];
        qkv_coco_summarize(r, k, s);
        fprintf(f, "%s\n  {\"id\": %lld, \"name\": ", k ? "," : "", (long long)r->category_ids[k]);
        qkv__json_string(f, qkv_coco_gt_category_name(gt, r->category_ids[k]));
        fprintf(f, ", \"ap\": %.17g, \"stats\": ", r->category_ap[k]);
        put_stats(f, s);
        fputc('}', f);
    }
    fputs("]}\n", f);
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return qkv_set_error(QKV_ERR_IO, "cannot write %s: %s", path, strerror(e));
    }
    return QKV_OK;
}

/* precision[t, i, k, a, m] of the result's (T, R, K, A, M) array */
static double precision_at(const qkv_coco_result *r, int t, int i, int64_t k, int a, int m)
{
    const int64_t K = r->n_categories, R = QKV_COCO_R, A = QKV_COCO_A, M = QKV_COCO_M;
    return r->precision[(((t * R + i) * K + k) * A + a) * M + m];
}

qkv_status qkv_coco_plot_pr(const char *dir, const qkv_coco_result *r, const qkv_coco_gt *gt)
{
    if (!dir || !r || !gt)
        return qkv_set_error(QKV_ERR_ARG, "coco_plot_pr: NULL argument");
    qkv_status st = qkv_make_dirs(dir);
    if (st != QKV_OK)
        return st;
    const int64_t K = r->n_categories;
    const int T = QKV_COCO_T, R = QKV_COCO_R, a = 0, m = QKV_COCO_M - 1; /* all areas, 100 */
    float x[QKV_COCO_R], y[3][QKV_COCO_R];
    for (int i = 0; i < R; i++)
        x[i] = (float)r->recall_thresholds[i];
    for (int64_t k = -1; k < K; k++) {
        /* k = -1: the mean over the categories that have ground truth */
        int64_t k0 = k < 0 ? 0 : k, k1 = k < 0 ? K : k + 1;
        int any = 0;
        for (int i = 0; i < R; i++) {
            double sum[3] = {0}, n = 0;
            for (int64_t kk = k0; kk < k1; kk++) {
                double p50 = precision_at(r, 0, i, kk, a, m);
                if (p50 < 0) /* no ground truth in this category */
                    continue;
                double pall = 0;
                for (int t = 0; t < T; t++)
                    pall += precision_at(r, t, i, kk, a, m);
                sum[0] += p50;
                sum[1] += precision_at(r, 5, i, kk, a, m); /* IoU 0.75 */
                sum[2] += pall / T;
                n++;
            }
            any |= n > 0;
            for (int s = 0; s < 3; s++)
                y[s][i] = n ? (float)(sum[s] / n) : 0.0f;
        }
        if (!any)
            continue;
        qkv_series series[3] = {
            {.name = "IoU 0.50", .x = x, .y = y[0], .n = R},
            {.name = "IoU 0.75", .x = x, .y = y[1], .n = R},
            {.name = "IoU 0.50:0.95", .x = x, .y = y[2], .n = R},
        };
        char path[4200], title[256];
        if (k < 0) {
            snprintf(path, sizeof path, "%s/pr_all.png", dir);
            snprintf(title, sizeof title, "all categories: AP %.3f", r->stats[0]);
        } else {
            snprintf(path, sizeof path, "%s/pr_%lld.png", dir, (long long)r->category_ids[k]);
            snprintf(title, sizeof title, "%.120s (id %lld): AP %.3f",
                     qkv_coco_gt_category_name(gt, r->category_ids[k]),
                     (long long)r->category_ids[k], r->category_ap[k]);
        }
        qkv_plot_opts po = {.xlabel = "recall", .ylabel = "precision", .title = title};
        if ((st = qkv_plot_lines(path, 3, series, &po)) != QKV_OK)
            return st;
    }
    return QKV_OK;
}
