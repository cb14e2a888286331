/*
 * cmd_detr.c - DETR from the command line:
 *   qkv train detr    trains (the default preset on `qkv data scenes`, made
 *                     if absent; --preset detr-r50 the paper's model)
 *   qkv eval detr     the 12 COCO numbers of a model on a data set
 *   qkv detect        boxes, labels and scores drawn on images; with
 *                     --attention each kept query's decoder cross-attention
 * Models are DETR state dicts in the official names (docs/detr.md); the
 * official checkpoints and Hugging Face's open too.
 */
#include "args.h"
#include "cli_util.h"
#include "commands.h"
#include "qkv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int open_detr(qkv_model **out, const char *cmd, const char *path, int64_t heads)
{
    *out = qkv_model_open(path, &(qkv_model_opts){.num_heads = heads});
    if (*out && !qkv_model_detr(*out)) {
        fprintf(stderr, "qkv %s: %s is a %s model, not a DETR\n", cmd, path,
                qkv_model_kind_name(qkv_model_kind_of(*out)));
        qkv_model_free(*out);
        return 1;
    }
    if (!*out) {
        fprintf(stderr, "qkv %s: %s\n", cmd, qkv_error());
        return 1;
    }
    return 0;
}

static void print_stats(const double *stats)
{
    char line[160];
    for (int i = 0; i < QKV_COCO_NSTATS; i++) {
        qkv_coco_stat_line(i, stats[i], line, sizeof line);
        printf("%s\n", line);
    }
}

/* ---- training ---- */

typedef struct {
    const char *preset, *data, *out_dir;
    int64_t epochs, batch, limit, eval_limit, pretrain_epochs;
    double lr, lr_backbone;
    uint64_t seed;
    int resume, no_augment;
} train_options;

static int train_on(const train_options *o, qkv_comm *comm);

/* Under mpirun each rank trains on its share of every batch
 * (docs/distributed.md); a rank that fails abandons the run. */
static int train(const train_options *o)
{
    qkv_comm *comm = cli_comm_open("train detr");
    if (!comm)
        return 1;
    int rc = train_on(o, comm);
    cli_comm_close(comm, rc != 0);
    return rc;
}

static int train_on(const train_options *o, qkv_comm *comm)
{
    qkv_detr_recipe r = {.data_dir = o->data, .out_dir = o->out_dir, .seed = o->seed,
                         .resume = o->resume, .limit = o->limit, .eval_limit = o->eval_limit,
                         .comm = comm};
    if (qkv_detr_recipe_preset(&r, o->preset) != QKV_OK) {
        fprintf(stderr, "qkv train detr: %s\n", qkv_error());
        return 2;
    }
    if (o->epochs >= 0)
        r.epochs = o->epochs;
    if (o->batch > 0)
        r.batch_size = o->batch;
    if (o->lr > 0)
        r.lr = o->lr;
    if (o->lr_backbone >= 0)
        r.lr_backbone = o->lr_backbone;
    if (o->pretrain_epochs >= 0)
        r.pretrain_epochs = o->pretrain_epochs;
    if (o->no_augment)
        r.n_scales = r.n_crop_scales = 0;
    qkv_detr_result res;
    double t0 = qkv_now();
    qkv_status st = qkv_detr_train(&r, &res);
    if (st != QKV_OK) {
        fprintf(stderr, "qkv train detr%s: %s\n", cli_rank_note(comm), qkv_error());
        return st == QKV_ERR_INTERRUPTED ? 130 : 1;
    }
    if (qkv_comm_rank(comm) != 0)
        return 0;
    printf("validation (%s):\n", r.data_dir ? r.data_dir : "data/scenes");
    print_stats(res.stats);
    printf("%.1f minutes; wrote %s/model.safetensors, checkpoint.safetensors, metrics.jsonl, "
           "curves.png\n", (qkv_now() - t0) / 60.0, o->out_dir);
    return 0;
}

int cmd_train_detr(int argc, char **argv)
{
    train_options o = {.preset = "default", .out_dir = "runs/detr", .epochs = -1,
                       .lr_backbone = -1, .pretrain_epochs = -1};
    arg_opt opts[] = {
        {.name = "preset", .kind = ARG_CHOICE, .value = &o.preset,
         .choices = "default|detr-r50|demo",
         .help = "default: 128x128 scenes, a ResNet-18 of width 32 pretrained on Fashion-MNIST "
                 "first, transformer width 128, 3 + 3 layers, 20 queries, 20 epochs, sized "
                 "for an hour on two cores; detr-r50: the "
                 "paper's model and schedule; demo: the default model, pretrained on 10000 "
                 "items, 3 epochs on 1000 scenes"},
        {.name = "data", .kind = ARG_STRING, .value = &o.data, .metavar = "DIR",
         .help = "a COCO-format set: train/, val/, annotations/{train,val}.json (default: "
                 "data/scenes, made by `qkv data scenes` if absent)"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &o.out_dir, .metavar = "DIR",
         .help = "model, checkpoint, metrics.jsonl and curves.png go here"},
        {.name = "epochs", .kind = ARG_INT, .value = &o.epochs, .min = -1, .max = 100000,
         .help = "epochs (-1: the preset's)"},
        {.name = "batch-size", .kind = ARG_INT, .value = &o.batch, .min = 0, .max = 65536,
         .help = "images per step (0: the preset's)"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &o.lr, .min = 0, .max = 10,
         .help = "AdamW learning rate (0: the preset's)"},
        {.name = "lr-backbone", .kind = ARG_FLOAT, .value = &o.lr_backbone, .min = -1, .max = 10,
         .help = "the backbone's learning rate (-1: the preset's; 0 freezes it)"},
        {.name = "pretrain-epochs", .kind = ARG_INT, .value = &o.pretrain_epochs, .min = -1,
         .max = 1000,
         .help = "epochs of the backbone's Fashion-MNIST pretraining (-1: the preset's; 0: "
                 "none, the backbone starts from scratch)"},
        {.name = "limit", .kind = ARG_INT, .value = &o.limit, .min = 0, .max = 1e9,
         .help = "train on the first N images only (0: all)"},
        {.name = "eval-limit", .kind = ARG_INT, .value = &o.eval_limit, .min = 0, .max = 1e9,
         .help = "evaluate on the first N validation images only (0: all)"},
        {.name = "seed", .kind = ARG_U64, .value = &o.seed,
         .help = "seed of the initialisation, shuffling, augmentation and dropout"},
        {.name = "no-augment", .kind = ARG_FLAG, .value = &o.no_augment,
         .help = "no flips, rescaling or crops: every image at the evaluation size"},
        {.name = "resume", .kind = ARG_FLAG, .value = &o.resume,
         .help = "continue from OUT-DIR/checkpoint.safetensors (same options)"},
    };
    args_spec s = {
        .command = "train detr",
        .summary = "Trains DETR (facebookresearch/detr) on a COCO-format detection set: the\n"
                   "set criterion with Hungarian matching and auxiliary losses, AdamW with\n"
                   "the backbone at its own rate, clipping, StepLR. Evaluates the validation\n"
                   "images with COCO's 12 numbers after every epoch; writes model.safetensors\n"
                   "(the official state_dict names), checkpoint.safetensors, metrics.jsonl\n"
                   "and curves.png into --out-dir.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    return rc != ARGS_CONTINUE ? rc : train(&o);
}

/* ---- eval ---- */

int cmd_eval_detr(int argc, char **argv)
{
    const char *model = "runs/detr", *data = "data/scenes", *ann = NULL, *images = NULL;
    int64_t limit = 0, heads = 0, batch = 8, size = -1, max_size = -1;
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &model, .metavar = "PATH",
         .help = "a model file, or a directory holding model.safetensors"},
        {.name = "data", .kind = ARG_STRING, .value = &data, .metavar = "DIR",
         .help = "a COCO-format set: its val/ and annotations/val.json"},
        {.name = "ann", .kind = ARG_STRING, .value = &ann, .metavar = "JSON",
         .help = "an annotation file instead of DIR's (with --images)"},
        {.name = "images", .kind = ARG_STRING, .value = &images, .metavar = "DIR",
         .help = "the folder of --ann's file names"},
        {.name = "limit", .kind = ARG_INT, .value = &limit, .min = 0, .max = 1e9,
         .help = "the first N images only (0: all)"},
        {.name = "batch-size", .kind = ARG_INT, .value = &batch, .min = 1, .max = 4096,
         .help = "images per forward"},
        {.name = "size", .kind = ARG_INT, .value = &size, .min = -1, .max = 100000,
         .help = "resize the shorter side to N first (-1: the model's; 0: none)"},
        {.name = "max-size", .kind = ARG_INT, .value = &max_size, .min = -1, .max = 100000,
         .help = "with the longer side at most N (-1: the model's)"},
        {.name = "heads", .kind = ARG_INT, .value = &heads, .min = 0, .max = 4096,
         .help = "attention heads, for a file whose metadata does not say (0: from the file)"},
    };
    args_spec s = {
        .command = "eval detr",
        .summary = "COCO evaluation of a DETR: runs the model on a data set's images and\n"
                   "prints the 12 numbers of pycocotools' COCOeval (AP, AP50, .., ARl).",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (!ann != !images) {
        fprintf(stderr, "qkv eval detr: --ann and --images go together\n");
        return 2;
    }
    qkv_model *m;
    if (open_detr(&m, "eval detr", model, heads))
        return 1;
    char ann_buf[4200], img_buf[4200];
    if (!ann) {
        snprintf(ann_buf, sizeof ann_buf, "%s/annotations/val.json", data);
        snprintf(img_buf, sizeof img_buf, "%s/val", data);
        ann = ann_buf, images = img_buf;
    }
    qkv_det_dataset *d = qkv_det_dataset_open(ann, images);
    qkv_detr_input in = *qkv_model_detr_input(m);
    if (size >= 0)
        in.size = size;
    if (max_size >= 0)
        in.max_size = max_size;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_coco_result r;
    int code = 0;
    if (!d || !ctx || qkv_detr_evaluate(ctx, qkv_model_detr(m), d, limit, &in, batch, &r)) {
        fprintf(stderr, "qkv eval detr: %s\n", qkv_error());
        code = 1;
    } else {
        print_stats(r.stats);
        qkv_coco_result_free(&r);
    }
    qkv_ctx_free(ctx);
    qkv_det_dataset_free(d);
    qkv_model_free(m);
    return code;
}

/* ---- detect ---- */

/* out with "-N" before its extension, for the N-th of several images */
static void numbered(char *buf, size_t n, const char *out, int i, int count)
{
    if (count == 1) {
        snprintf(buf, n, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash))
        dot = out + strlen(out);
    snprintf(buf, n, "%.*s-%d%s", (int)(dot - out), out, i + 1, dot);
}

int cmd_detect(int argc, char **argv)
{
    const char *model = "runs/detr", *out = "boxes.png", *attention = NULL;
    double threshold = 0.7;
    int64_t heads = 0;
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &model, .metavar = "PATH",
         .help = "a model file, or a directory holding model.safetensors (official or "
                 "Hugging Face DETR checkpoints too)"},
        {.name = "out", .kind = ARG_STRING, .value = &out, .metavar = "PNG",
         .help = "the picture with boxes, labels and scores (several images: PNG-1.png, ..)"},
        {.name = "attention", .kind = ARG_STRING, .value = &attention, .metavar = "PNG",
         .help = "also draw each kept query's decoder cross-attention over the image"},
        {.name = "threshold", .kind = ARG_FLOAT, .value = &threshold, .min = 0, .max = 1,
         .help = "keep detections scoring above this (DETR's demo: 0.7)"},
        {.name = "heads", .kind = ARG_INT, .value = &heads, .min = 0, .max = 4096,
         .help = "attention heads, for a file whose metadata does not say (0: from the file)"},
    };
    args_spec s = {
        .command = "detect",
        .summary = "Detects objects in PNG or JPEG images with a DETR: prints each kept\n"
                   "detection (class, score, box x0 y0 x1 y1 in pixels) and draws them;\n"
                   "--attention draws what each kept query looks at, as the DETR paper's\n"
                   "figures do.",
        .positional = "IMAGE",
        .max_positional = 1000,
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (s.n_pos < 1) {
        fprintf(stderr, "qkv detect: give one or more images (qkv detect --help)\n");
        return 2;
    }
    qkv_model *m;
    if (open_detr(&m, "detect", model, heads))
        return 1;
    qkv_detr *d = qkv_model_detr(m);
    int64_t Q = d->cfg.num_queries, K = d->cfg.num_classes;
    const char **names = calloc((size_t)K, sizeof *names);
    qkv_detection *dets = calloc((size_t)Q, sizeof *dets), *kept = calloc((size_t)Q, sizeof *kept);
    float *maps = NULL;
    qkv_ctx *ctx = qkv_ctx_new();
    int code = names && dets && kept && ctx ? 0 : 1;
    if (code)
        fprintf(stderr, "qkv detect: out of memory\n");
    for (int64_t k = 0; names && k < K; k++)
        names[k] = qkv_model_class_name(m, k);
    qkv_det_plot_opts po = {.class_names = names, .n_names = K};
    for (int i = 0; i < s.n_pos && !code; i++) {
        qkv_image img;
        qkv_tensor *attn = NULL;
        if (qkv_image_read(&img, s.pos[i]) != QKV_OK) {
            fprintf(stderr, "qkv detect: %s\n", qkv_error());
            code = 1;
            break;
        }
        if (qkv_model_detect(ctx, m, &img, dets, attention ? &attn : NULL) < 0) {
            fprintf(stderr, "qkv detect: %s: %s\n", s.pos[i], qkv_error());
            qkv_image_free(&img);
            code = 1;
            break;
        }
        int64_t n = 0, hw = attn ? attn->shape[1] * attn->shape[2] : 0;
        free(maps);
        maps = attn ? malloc((size_t)(Q * hw) * sizeof *maps) : NULL;
        printf("%s:\n", s.pos[i]);
        for (int64_t q = 0; q < Q; q++) {
            if (!(dets[q].score > threshold))
                continue;
            if (maps)
                memcpy(maps + n * hw, attn->data + q * hw, (size_t)hw * sizeof *maps);
            kept[n++] = dets[q];
            const char *name = names[dets[q].label];
            printf("  %-14s %.3f  %7.1f %7.1f %7.1f %7.1f  (query %lld)\n",
                   name ? name : "?", (double)dets[q].score, (double)dets[q].box[0],
                   (double)dets[q].box[1], (double)dets[q].box[2], (double)dets[q].box[3],
                   (long long)q);
        }
        if (n == 0)
            printf("  nothing above %.2f\n", threshold);
        char path[4200];
        numbered(path, sizeof path, out, i, s.n_pos);
        if (qkv_plot_detections(path, &img, kept, n, &po) != QKV_OK) {
            fprintf(stderr, "qkv detect: %s\n", qkv_error());
            code = 1;
        } else {
            printf("  wrote %s\n", path);
        }
        if (!code && attention && n > 0) {
            numbered(path, sizeof path, attention, i, s.n_pos);
            if (!maps || qkv_plot_detr_attention(path, &img, kept, n, maps, attn->shape[1],
                                                 attn->shape[2], &po) != QKV_OK) {
                fprintf(stderr, "qkv detect: %s\n", maps ? qkv_error() : "out of memory");
                code = 1;
            } else {
                printf("  wrote %s\n", path);
            }
        }
        qkv_ctx_reset(ctx);
        qkv_image_free(&img);
    }
    free(maps);
    free(names);
    free(dets);
    free(kept);
    qkv_ctx_free(ctx);
    qkv_model_free(m);
    return code;
}
