/*
 * cmd_coco_eval.c - `qkv coco-eval --gt GT.json --dt DT.json`: COCO box
 * mAP as pycocotools' COCOeval computes it (the library's qkv_coco_*),
 * printed as its summarize() prints it; --json, --per-class, --pr-curves.
 */
#include "args.h"
#include "commands.h"
#include "qkv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if ((json && qkv_coco_save_json(json, &r, gt, dt) != QKV_OK) ||
        (curves && qkv_coco_plot_pr(curves, &r, gt) != QKV_OK)) {
        fprintf(stderr, "qkv coco-eval: %s\n", qkv_error());
        rc = 1;
    }
    qkv_coco_result_free(&r);
    qkv_coco_dets_free(dt);
    qkv_coco_gt_free(gt);
    return rc;
}
