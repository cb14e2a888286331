/*
 * cmd_coco_eval.c - `qkv coco-eval --gt GT.json --dt DT.json`: COCO box
 * mAP as pycocotools' COCOeval computes it (the library's qkv_coco_*),
 * printed as its summarize() prints it; --json, --per-class, --pr-curves.
 */
#include "args.h"
#include "cli_util.h"
#include "commands.h"
#include "qkv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const STAT_NAMES[QKV_COCO_NSTATS] = {
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};

static void put_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void put_stats(FILE *f, const double *s)
{
    fputc('[', f);
    for (int i = 0; i < QKV_COCO_NSTATS; i++)
        fprintf(f, "%s%.17g", i ? ", " : "", s[i]);
    fputc(']', f);
}

/* {"stats": [12], "stats_names": [12], "images": n, "annotations": n,
 * "detections": n, "categories": [{"id", "name", "ap", "stats": [12]}]},
 * written to path.tmp and renamed. */
static int write_json(const char *path, const qkv_coco_result *r, const qkv_coco_gt *gt,
                      const qkv_coco_dets *dt)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        fprintf(stderr, "qkv coco-eval: --json: path too long\n");
        return 1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "qkv coco-eval: cannot create %s: %s\n", tmp, strerror(errno));
        return 1;
    }
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
        put_string(f, qkv_coco_gt_category_name(gt, r->category_ids[k]));
        fprintf(f, ", \"ap\": %.17g, \"stats\": ", r->category_ap[k]);
        put_stats(f, s);
        fputc('}', f);
    }
    fputs("]}\n", f);
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        fprintf(stderr, "qkv coco-eval: cannot write %s: %s\n", path, strerror(errno));
        remove(tmp);
        return 1;
    }
    return 0;
}

/* AP, AP50, AP75, APs, APm, APl per category, -1 shown as "-". */
static void print_per_class(const qkv_coco_result *r, const qkv_coco_gt *gt)
{
    printf("\n%8s  %-24s %7s %7s %7s %7s %7s %7s\n", "id", "category", "AP", "AP50", "AP75",
           "APs", "APm", "APl");
    for (int64_t k = 0; k < r->n_categories; k++) {
        double s[QKV_COCO_NSTATS];
        qkv_coco_summarize(r, k, s);
        printf("%8lld  %-24.24s", (long long)r->category_ids[k],
               qkv_coco_gt_category_name(gt, r->category_ids[k]));
        for (int i = 0; i < 6; i++)
            if (s[i] < 0)
                printf(" %7s", "-");
            else
                printf(" %7.3f", s[i]);
        printf("\n");
    }
}

/* Precision against recall (all areas, 100 detections) at IoU .50, .75 and
 * averaged over the ten thresholds: pr_all.png over the categories with
 * ground truth, pr_<id>.png for each of them. */
static int write_pr_curves(const char *dir, const qkv_coco_result *r, const qkv_coco_gt *gt)
{
    if (cli_make_dirs(dir) != 0) {
        fprintf(stderr, "qkv coco-eval: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    const int64_t K = r->n_categories, T = QKV_COCO_T, R = QKV_COCO_R;
    const int A = QKV_COCO_A, M = QKV_COCO_M, a = 0, m = M - 1;
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
                double p50 = r->precision[(((0 * R + i) * K + kk) * A + a) * M + m];
                if (p50 < 0)
                    continue;
                double p75 = r->precision[(((5 * R + i) * K + kk) * A + a) * M + m], pall = 0;
                for (int t = 0; t < T; t++)
                    pall += r->precision[(((t * R + i) * K + kk) * A + a) * M + m];
                sum[0] += p50;
                sum[1] += p75;
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
        if (qkv_plot_lines(path, 3, series, &po) != QKV_OK) {
            fprintf(stderr, "qkv coco-eval: %s\n", qkv_error());
            return 1;
        }
    }
    return 0;
}

int cmd_coco_eval(int argc, char **argv)
{
    const char *gt_path = NULL, *dt_path = NULL, *json = NULL, *curves = NULL;
    int per_class = 0;
    arg_opt opts[] = {
        {.name = "gt", .kind = ARG_STRING, .value = &gt_path, .metavar = "FILE",
         .help = "ground truth, COCO JSON (images, annotations, categories); required"},
        {.name = "dt", .kind = ARG_STRING, .value = &dt_path, .metavar = "FILE",
         .help = "detections, a COCO results list [{image_id, category_id, bbox, score}]; "
                 "required"},
        {.name = "json", .kind = ARG_STRING, .value = &json, .metavar = "FILE",
         .help = "also write {\"stats\": [12 numbers], \"categories\": [...]} here"},
        {.name = "per-class", .kind = ARG_FLAG, .value = &per_class,
         .help = "print AP, AP50, AP75, APs, APm, APl of every category"},
        {.name = "pr-curves", .kind = ARG_STRING, .value = &curves, .metavar = "DIR",
         .help = "write precision-recall pictures pr_all.png and pr_<id>.png here"},
    };
    args_spec s = {
        .command = "coco-eval",
        .summary = "COCO box detection mAP, equal to pycocotools' COCOeval (iouType bbox):\n"
                   "prints the 12 numbers as its summarize() does.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (!gt_path || !dt_path) {
        fprintf(stderr, "qkv coco-eval: --gt and --dt are both required\n"
                        "(see `qkv coco-eval --help`)\n");
        return 2;
    }
    qkv_coco_gt *gt = qkv_coco_gt_load(gt_path);
    qkv_coco_dets *dt = gt ? qkv_coco_dets_load(dt_path) : NULL;
    qkv_coco_result r = {0};
    if (!gt || !dt || qkv_coco_evaluate(gt, dt, &r) != QKV_OK) {
        fprintf(stderr, "qkv coco-eval: %s\n", qkv_error());
        qkv_coco_dets_free(dt);
        qkv_coco_gt_free(gt);
        return 1;
    }
    for (int i = 0; i < QKV_COCO_NSTATS; i++) {
        char line[160];
        qkv_coco_stat_line(i, r.stats[i], line, sizeof line);
        puts(line);
    }
    if (per_class)
        print_per_class(&r, gt);
    fflush(stdout);
    rc = 0;
    if (json && write_json(json, &r, gt, dt))
        rc = 1;
    if (curves && write_pr_curves(curves, &r, gt))
        rc = 1;
    qkv_coco_result_free(&r);
    qkv_coco_dets_free(dt);
    qkv_coco_gt_free(gt);
    return rc;
}
