/*
 * cmd_moco.c - MoCo from the command line (docs/moco.md):
 *   qkv train moco   self-supervised pretraining on Fashion-MNIST without
 *                    labels (v2 by default; --version 1|2|3), with a kNN
 *                    monitor on the test set after each epoch
 */
#include "args.h"
#include "cli_util.h"
#include "commands.h"
#include "qkv.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *version, *arch, *data, *out_dir;
    int64_t width;
    int64_t epochs, batch, limit, eval_limit, K, knn_bank, knn_every, stop_after;
    double lr, T, m, crop_min, blur;
    uint64_t seed;
    int resume, sync_bn;
} train_options;

static int train_on(const train_options *o, qkv_comm *comm);

/* Under mpirun each rank trains on its share of every batch
 * (docs/distributed.md); a rank that fails abandons the run. */
static int train(const train_options *o)
{
    qkv_comm *comm = cli_comm_open("train moco");
    if (!comm)
        return 1;
    int rc = train_on(o, comm);
    cli_comm_close(comm, rc != 0);
    return rc;
}

static int train_on(const train_options *o, qkv_comm *comm)
{
    qkv_moco_recipe r = {.data_dir = o->data, .out_dir = o->out_dir, .seed = o->seed,
                         .resume = o->resume, .limit = o->limit, .eval_limit = o->eval_limit,
                         .comm = comm, .sync_bn = o->sync_bn};
    char preset[32];
    bool demo = !strcmp(o->version, "demo"), resnet = !demo && !strcmp(o->arch, "resnet18");
    if (demo)
        snprintf(preset, sizeof preset, "demo");
    else
        snprintf(preset, sizeof preset, "v%s%s", o->version, resnet ? "-resnet" : "");
    if (qkv_moco_recipe_preset(&r, preset) != QKV_OK) {
        fprintf(stderr, "qkv train moco: %s\n", qkv_error());
        return 2;
    }
    if (o->width > 0)
        r.model.resnet.width = o->width;
    if (o->epochs >= 0)
        r.epochs = o->epochs;
    if (o->batch > 0)
        r.batch_size = o->batch;
    if (o->lr > 0)
        r.lr = o->lr;
    if (o->K > 0)
        r.model.K = o->K;
    if (o->T > 0)
        r.model.T = (float)o->T;
    if (o->m > 0)
        r.momentum = (float)o->m;
    if (o->crop_min > 0)
        r.aug.crop_min = (float)o->crop_min;
    if (o->blur >= 0)
        r.aug.blur = (float)o->blur;
    if (o->knn_bank > 0)
        r.knn_bank = o->knn_bank;
    r.stop_after = o->stop_after;
    if (o->knn_every != 0)
        r.knn_every = (int)o->knn_every;
    qkv_moco_result res;
    qkv_status st = qkv_moco_train(&r, &res);
    if (st != QKV_OK) {
        fprintf(stderr, "qkv train moco%s: %s\n", cli_rank_note(comm), qkv_error());
        return st == QKV_ERR_INTERRUPTED ? 130 : 1;
    }
    if (qkv_comm_rank(comm) != 0)
        return 0;
    if (isfinite(res.knn_accuracy))
        printf("kNN test accuracy %.4f\n", res.knn_accuracy);
    if (o->out_dir)
        printf("wrote %s/model.safetensors, checkpoint.safetensors, metrics.jsonl, curves.png\n",
               o->out_dir);
    return 0;
}

int cmd_train_moco(int argc, char **argv)
{
    train_options o = {.version = "2", .arch = "resnet18", .data = QKV_MNIST_DIR, .out_dir = "runs/moco",
                       .epochs = -1, .crop_min = 0, .blur = -1};
    arg_opt opts[] = {
        {.name = "version", .kind = ARG_CHOICE, .value = &o.version, .choices = "1|2|3|demo",
         .help = "MoCo v1 (linear head, T 0.07), v2 (MLP head, T 0.1 or 0.2, blur), v3 "
                 "(projector and predictor, symmetric loss, no queue); demo: v2 on the ViT for a "
                 "minute"},
        {.name = "arch", .kind = ARG_CHOICE, .value = &o.arch, .choices = "vit|resnet18",
         .help = "the encoder: resnet18 (3x3 stem, no max pool, --width planes in layer1; SGD "
                 "and shuffle BN as MoCo's CIFAR demo) or vit (28x28, patch 4, width 96, 4 "
                 "blocks)"},
        {.name = "width", .kind = ARG_INT, .value = &o.width, .min = 0, .max = 1024,
         .help = "resnet18: planes of layer1, doubled per layer (0: the preset's, 16)"},
        {.name = "data", .kind = ARG_STRING, .value = &o.data, .metavar = "DIR",
         .help = "Fashion-MNIST IDX files (the labels are read by the kNN monitor only)"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &o.out_dir, .metavar = "DIR",
         .help = "model, checkpoint, metrics.jsonl and curves.png go here"},
        {.name = "epochs", .kind = ARG_INT, .value = &o.epochs, .min = -1, .max = 10000,
         .help = "epochs (-1: the preset's)"},
        {.name = "batch-size", .kind = ARG_INT, .value = &o.batch, .min = 0, .max = 65536,
         .help = "images per step (0: the preset's, 256)"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &o.lr, .min = 0, .max = 100,
         .help = "peak learning rate (0: the preset's)"},
        {.name = "queue", .kind = ARG_INT, .value = &o.K, .min = 0, .max = 1e8,
         .help = "keys in the queue, a multiple of the batch (0: the preset's, 4096)"},
        {.name = "temperature", .kind = ARG_FLOAT, .value = &o.T, .min = 0, .max = 100,
         .help = "softmax temperature (0: the preset's: v1 0.07, v2 0.1 on the ResNet, 0.2 on "
                 "the ViT)"},
        {.name = "momentum", .kind = ARG_FLOAT, .value = &o.m, .min = 0, .max = 1,
         .help = "the key encoder's momentum m (0: the preset's, 0.99)"},
        {.name = "crop-min", .kind = ARG_FLOAT, .value = &o.crop_min, .min = 0, .max = 1,
         .help = "smallest area of the random resized crop (0: the preset's, 0.2)"},
        {.name = "blur", .kind = ARG_FLOAT, .value = &o.blur, .min = -1, .max = 1,
         .help = "probability of the Gaussian blur (-1: the preset's, 0.5; v1 0)"},
        {.name = "knn-bank", .kind = ARG_INT, .value = &o.knn_bank, .min = 0, .max = 1e9,
         .help = "the kNN monitor's bank: the first N training images (0: all)"},
        {.name = "knn-every", .kind = ARG_INT, .value = &o.knn_every, .min = -1, .max = 10000,
         .help = "epochs between kNN monitors, and after the last (0: 1; -1: none)"},
        {.name = "limit", .kind = ARG_INT, .value = &o.limit, .min = 0, .max = 1e9,
         .help = "train on the first N images only (0: all 60000)"},
        {.name = "eval-limit", .kind = ARG_INT, .value = &o.eval_limit, .min = 0, .max = 1e9,
         .help = "monitor on the first N test images only (0: all 10000)"},
        {.name = "seed", .kind = ARG_U64, .value = &o.seed,
         .help = "seed of the initialisation, shuffling and augmentation"},
        {.name = "stop-after", .kind = ARG_INT, .value = &o.stop_after, .min = 0, .max = 10000,
         .help = "stop with a checkpoint once N epochs are done, to go on with --resume (0: "
                 "never)"},
        {.name = "sync-bn", .kind = ARG_FLAG, .value = &o.sync_bn,
         .help = "under mpirun: batch norm synchronised over the ranks (SyncBatchNorm, as "
                 "moco-v3 trains) instead of shuffle BN; needs --threads 1"},
        {.name = "resume", .kind = ARG_FLAG, .value = &o.resume,
         .help = "continue from OUT-DIR/checkpoint.safetensors (same options)"},
    };
    args_spec s = {
        .command = "train moco",
        .summary = "Self-supervised MoCo pretraining on Fashion-MNIST's 60,000 training images\n"
                   "without their labels. Prints the loss and a kNN monitor's test accuracy\n"
                   "(k 200, T 0.1) per epoch; writes model.safetensors (the official state\n"
                   "dict layout), checkpoint.safetensors, metrics.jsonl and curves.png.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    return rc != ARGS_CONTINUE ? rc : train(&o);
}

/* ---- linear probe ---- */

int cmd_probe(int argc, char **argv)
{
    qkv_probe_recipe r = {.model = "runs/moco", .data_dir = QKV_MNIST_DIR};
    qkv_probe_recipe_default(&r);
    const char *out_dir = "runs/probe";
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &r.model, .metavar = "FILE|DIR",
         .help = "a MoCo model (model.safetensors of `qkv train moco`), or its run directory"},
        {.name = "data", .kind = ARG_STRING, .value = &r.data_dir, .metavar = "DIR",
         .help = "Fashion-MNIST IDX files"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &out_dir, .metavar = "DIR",
         .help = "metrics.jsonl and curves.png go here"},
        {.name = "epochs", .kind = ARG_INT, .value = &r.epochs, .min = 1, .max = 100000,
         .help = "epochs over the features"},
        {.name = "batch-size", .kind = ARG_INT, .value = &r.batch_size, .min = 1, .max = 1e6,
         .help = "features per step"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &r.lr, .min = 0, .max = 1e4,
         .help = "SGD's learning rate, cosine to 0 (0: MoCo's 30 for a ResNet, moco-v3's 3 "
                 "for a ViT, 0.1 with --standardize)"},
        {.name = "weight-decay", .kind = ARG_FLOAT, .value = &r.weight_decay, .min = 0, .max = 1,
         .help = "SGD's weight decay (MoCo's: none)"},
        {.name = "standardize", .kind = ARG_FLAG, .value = &r.standardize,
         .help = "scale the features to zero mean and unit variance first (a faster solver)"},
        {.name = "grid", .kind = ARG_INT, .value = &r.grid, .min = 0, .max = 64,
         .help = "a ResNet's last map average-pooled to N x N cells, F N^2 features (0 or 1: "
                 "the global pool, MoCo's)"},
        {.name = "limit", .kind = ARG_INT, .value = &r.limit, .min = 0, .max = 1e9,
         .help = "the first N training images only (0: all 60000)"},
        {.name = "eval-limit", .kind = ARG_INT, .value = &r.eval_limit, .min = 0, .max = 1e9,
         .help = "the first N test images only (0: all 10000)"},
        {.name = "seed", .kind = ARG_U64, .value = &r.seed,
         .help = "seed of the classifier's initialisation and the order"},
    };
    args_spec s = {
        .command = "probe",
        .summary = "Linear evaluation of a MoCo encoder: the encoder frozen, a linear classifier\n"
                   "trained on its features of the 60,000 labelled training images (MoCo's\n"
                   "recipe: SGD lr 30, momentum 0.9, no weight decay); prints the test accuracy.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    r.out_dir = out_dir;
    qkv_probe_result res;
    qkv_status st = qkv_probe_train(&r, &res);
    if (st != QKV_OK) {
        fprintf(stderr, "qkv probe: %s\n", qkv_error());
        return st == QKV_ERR_INTERRUPTED ? 130 : 1;
    }
    printf("linear probe: test accuracy %.4f (train %.4f)\n", res.test_accuracy,
           res.train_accuracy);
    return 0;
}

/* ---- fine-tuning ---- */

int cmd_finetune(int argc, char **argv)
{
    qkv_finetune_recipe r = {.model = "runs/moco", .data_dir = QKV_MNIST_DIR};
    qkv_finetune_recipe_default(&r);
    const char *labels = "both", *out_dir = "runs/finetune", *runs = "both";
    int64_t epochs = -1;
    double crop_min = 0;
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &r.model, .metavar = "FILE|DIR",
         .help = "a MoCo model (model.safetensors of `qkv train moco`), or its run directory"},
        {.name = "labels", .kind = ARG_CHOICE, .value = &labels, .choices = "1%|10%|both",
         .help = "the labelled part of each class"},
        {.name = "data", .kind = ARG_STRING, .value = &r.data_dir, .metavar = "DIR",
         .help = "Fashion-MNIST IDX files"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &out_dir, .metavar = "DIR",
         .help = "a directory per run (pretrained-1, scratch-1, pretrained-10, scratch-10)"},
        {.name = "epochs", .kind = ARG_INT, .value = &epochs, .min = -1, .max = 100000,
         .help = "epochs (-1: 100 on 1%, 30 on 10%)"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &r.lr, .min = 0, .max = 10,
         .help = "AdamW's peak learning rate"},
        {.name = "encoder-lr", .kind = ARG_FLOAT, .value = &r.encoder_lr, .min = 0, .max = 100,
         .help = "the pretrained encoder's lr as a multiple of --lr (the head's)"},
        {.name = "head-epochs", .kind = ARG_INT, .value = &r.head_epochs, .min = 0, .max = 100000,
         .help = "epochs of the head alone before the pretrained encoder trains too (LP-FT)"},
        {.name = "crop-min", .kind = ARG_FLOAT, .value = &crop_min, .min = 0, .max = 1,
         .help = "each training image a random resized crop of area crop-min..1 and a flip "
                 "(MoCo's crop, no jitter or blur) instead of 2-pixel shifts (0: the shifts)"},
        {.name = "runs", .kind = ARG_CHOICE, .value = &runs, .choices = "pretrained|scratch|both",
         .help = "which runs"},
        {.name = "eval-limit", .kind = ARG_INT, .value = &r.eval_limit, .min = 0, .max = 1e9,
         .help = "test on the first N test images only (0: all 10000)"},
        {.name = "seed", .kind = ARG_U64, .value = &r.seed,
         .help = "seed of the labelled subset, the head and the order"},
    };
    args_spec s = {
        .command = "finetune",
        .summary = "Transfer learning: the MoCo encoder with a new linear head, trained end to\n"
                   "end on 1% or 10% of Fashion-MNIST's labels; then the same network from a\n"
                   "random start on the same labels. Prints both test accuracies.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (crop_min > 0)
        r.view = (qkv_view_aug){.crop_min = (float)crop_min, .crop_max = 1, .flip = 0.5f};
    double fractions[2] = {0.01, 0.10}, acc[2][2] = {{NAN, NAN}, {NAN, NAN}};
    int64_t n_labels[2] = {0, 0};
    for (int f = 0; f < 2; f++) {
        if ((f == 0 && !strcmp(labels, "10%")) || (f == 1 && !strcmp(labels, "1%")))
            continue;
        for (int scratch = 0; scratch < 2; scratch++) {
            if ((scratch && !strcmp(runs, "pretrained")) || (!scratch && !strcmp(runs, "scratch")))
                continue;
            qkv_finetune_recipe run = r;
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/%s-%d", out_dir, scratch ? "scratch" : "pretrained",
                     f ? 10 : 1);
            run.fraction = fractions[f], run.scratch = scratch, run.out_dir = dir;
            run.epochs = epochs >= 0 ? epochs : f ? 30 : 100;
            run.eval_every = f ? 5 : 10;
            qkv_finetune_result res;
            qkv_status st = qkv_finetune_train(&run, &res);
            if (st != QKV_OK) {
                fprintf(stderr, "qkv finetune: %s\n", qkv_error());
                return st == QKV_ERR_INTERRUPTED ? 130 : 1;
            }
            acc[f][scratch] = res.test_accuracy;
            n_labels[f] = res.labels;
        }
    }
    printf("\nlabels  images  fine-tuned  from scratch  gain\n");
    for (int f = 0; f < 2; f++) {
        if (!n_labels[f])
            continue;
        char cell[3][32]; /* a run not asked for (--runs) prints as "-" */
        for (int c = 0; c < 3; c++) {
            double v = c < 2 ? acc[f][c] : acc[f][0] - acc[f][1];
            snprintf(cell[c], sizeof cell[c], isnan(v) ? "-" : c < 2 ? "%.4f" : "%+.4f", v);
        }
        printf("%3s%%    %6lld  %10s  %12s  %s\n", f ? "10" : "1", (long long)n_labels[f],
               cell[0], cell[1], cell[2]);
    }
    return 0;
}
