/*
 * cmd_vit.c - the Vision Transformer on Fashion-MNIST from the command line:
 *   qkv train vit     trains (d2l v1.0.3's config with --preset d2l, else a
 *                     small ViT for 28x28 sized for 2 cores: 0.91 in 25 min)
 *   qkv eval vit      accuracy and confusion matrix of a saved model
 *   qkv classify      top classes of PNG/JPEG images, attention rollout map
 * Models are torchvision VisionTransformer state dicts (docs/vit.md).
 */
#include "args.h"
#include "cli_util.h"
#include "commands.h"
#include "qkv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char *const class_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                            "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                            "Bag",         "Ankle boot"};

static int open_model(qkv_model **out, const char *path, int64_t heads)
{
    *out = qkv_model_open(path, &(qkv_model_opts){.num_heads = heads});
    if (*out && !qkv_model_vit(*out)) {
        fprintf(stderr, "qkv: %s is a %s model, not a ViT\n", path,
                qkv_model_kind_name(qkv_model_kind_of(*out)));
        qkv_model_free(*out);
        return 1;
    }
    if (!*out) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
        return 1;
    }
    return 0;
}

/* ---- training ---- */

typedef struct {
    const char *preset, *data, *out_dir;
    int64_t epochs, batch, limit, eval_limit, crop, plain_epochs;
    double lr;
    uint64_t seed;
    int resume, no_augment;
} train_options;

static int train_on(const train_options *o, qkv_comm *comm);

static int train(const train_options *o)
{
    qkv_comm *comm = cli_comm_open("train vit");
    if (!comm)
        return 1;
    int rc = train_on(o, comm);
    cli_comm_close(comm, rc != 0);
    return rc;
}

static int train_on(const train_options *o, qkv_comm *comm)
{
    qkv_vit_recipe r = {.data_dir = o->data, .out_dir = o->out_dir, .seed = o->seed,
                        .resume = o->resume, .limit = o->limit, .eval_limit = o->eval_limit,
                        .comm = comm};
    if (qkv_vit_recipe_preset(&r, o->preset) != QKV_OK) {
        fprintf(stderr, "qkv train vit: %s\n", qkv_error());
        return 2;
    }
    if (o->crop >= 0)
        r.aug.crop = o->crop;
    if (o->plain_epochs >= 0)
        r.plain_epochs = o->plain_epochs;
    if (o->no_augment)
        r.aug = (qkv_augment){0};
    if (o->epochs >= 0)
        r.epochs = o->epochs;
    if (o->batch > 0)
        r.batch_size = o->batch;
    if (o->lr > 0)
        r.lr = o->lr;
    qkv_vit_result res;
    qkv_status st = qkv_vit_train(&r, &res);
    if (st != QKV_OK) {
        fprintf(stderr, "qkv train vit%s: %s\n", cli_rank_note(comm), qkv_error());
        return st == QKV_ERR_INTERRUPTED ? 130 : 1;
    }
    if (qkv_comm_rank(comm) == 0)
        printf("test accuracy %.4f (%lld/%lld)\nwrote %s/model.safetensors, "
               "checkpoint.safetensors, metrics.jsonl, curves.png\n",
               res.test_accuracy, (long long)res.test_right, (long long)res.test_n, o->out_dir);
    return 0;
}

int cmd_train_vit(int argc, char **argv)
{
    train_options o = {.preset = "default", .data = QKV_MNIST_DIR, .out_dir = "runs/vit",
                       .epochs = -1, .eval_limit = 0, .crop = -1, .plain_epochs = -1,
                       .seed = 0};
    arg_opt opts[] = {
        {.name = "preset", .kind = ARG_CHOICE, .value = &o.preset,
         .choices = "default|d2l|demo",
         .help = "default: 28x28, patch 4, width 96, 4 blocks, AdamW, crops and flips, "
                 "34 epochs (the last 6 without crops); "
                 "d2l: the book's 96x96 ViT with SGD; demo: the default model for 3 epochs on "
                 "12000 images (about a minute)"},
        {.name = "data", .kind = ARG_STRING, .value = &o.data, .metavar = "DIR",
         .help = "Fashion-MNIST IDX files"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &o.out_dir, .metavar = "DIR",
         .help = "model, checkpoint, metrics.jsonl and curves.png go here"},
        {.name = "epochs", .kind = ARG_INT, .value = &o.epochs, .min = -1, .max = 10000,
         .help = "epochs (-1: the preset's, 34 or 10)"},
        {.name = "batch-size", .kind = ARG_INT, .value = &o.batch, .min = 0, .max = 65536,
         .help = "images per step (0: the preset's, 128)"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &o.lr, .min = 0, .max = 10,
         .help = "peak learning rate (0: the preset's, 2e-3 or 0.1)"},
        {.name = "limit", .kind = ARG_INT, .value = &o.limit, .min = 0, .max = 1e9,
         .help = "train on the first N images only (0: all 60000)"},
        {.name = "eval-limit", .kind = ARG_INT, .value = &o.eval_limit, .min = 0, .max = 1e9,
         .help = "test on the first N test images only (0: all 10000)"},
        {.name = "seed", .kind = ARG_U64, .value = &o.seed,
         .help = "seed of the initialisation, shuffling, augmentation and dropout"},
        {.name = "crop", .kind = ARG_INT, .value = &o.crop, .min = -1, .max = 64,
         .help = "random crops of the image padded by N pixels (-1: the preset's, 2 or 0)"},
        {.name = "plain-epochs", .kind = ARG_INT, .value = &o.plain_epochs, .min = -1,
         .max = 10000,
         .help = "the last N epochs without random crops (-1: the preset's, 6 or 0)"},
        {.name = "no-augment", .kind = ARG_FLAG, .value = &o.no_augment,
         .help = "no random crops and flips (the default preset has both)"},
        {.name = "resume", .kind = ARG_FLAG, .value = &o.resume,
         .help = "continue from OUT-DIR/checkpoint.safetensors (same options)"},
    };
    args_spec s = {
        .command = "train vit",
        .summary = "Trains a Vision Transformer (torchvision's VisionTransformer layout) on\n"
                   "Fashion-MNIST. Prints loss, images/s and test accuracy per epoch; writes\n"
                   "model.safetensors (a torchvision state dict), checkpoint.safetensors,\n"
                   "metrics.jsonl and curves.png into --out-dir.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    return rc != ARGS_CONTINUE ? rc : train(&o);
}

/* ---- eval ---- */

int cmd_eval_vit(int argc, char **argv)
{
    const char *path = "runs/vit", *data = QKV_MNIST_DIR;
    int64_t limit = 0, heads = 0;
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &path, .metavar = "FILE|DIR",
         .help = "a ViT state dict, or a training run's directory"},
        {.name = "data", .kind = ARG_STRING, .value = &data, .metavar = "DIR",
         .help = "Fashion-MNIST IDX files"},
        {.name = "limit", .kind = ARG_INT, .value = &limit, .min = 0, .max = 1e9,
         .help = "the first N test images only (0: all)"},
        {.name = "heads", .kind = ARG_INT, .value = &heads, .min = 0, .max = 4096,
         .help = "attention heads (0: from the file's metadata)"},
    };
    args_spec s = {.command = "eval vit",
                   .summary = "Accuracy and confusion matrix of a ViT on the Fashion-MNIST "
                              "test set.",
                   .opts = opts,
                   .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    qkv_model *md;
    if (open_model(&md, path, heads))
        return 1;
    const qkv_vit *vit = qkv_model_vit(md);
    qkv_mnist te = {0};
    int64_t K = vit->cfg.num_classes, *conf = calloc((size_t)(K * K), sizeof *conf);
    qkv_ctx *ctx = qkv_ctx_new();
    int status = 1;
    if (vit->cfg.in_channels != 1) {
        fprintf(stderr, "qkv: %s takes %lld channels; Fashion-MNIST has 1\n", path,
                (long long)vit->cfg.in_channels);
    } else if (qkv_mnist_load(&te, data, 0) != QKV_OK) {
        fprintf(stderr, "qkv: %s\n", qkv_error());
    } else if (conf && ctx) {
        int64_t n = limit > 0 && limit < te.n ? limit : te.n;
        int64_t right = qkv_vit_evaluate(ctx, vit, &te, n, conf);
        if (right < 0) {
            fprintf(stderr, "qkv: %s\n", qkv_error());
        } else {
            printf("accuracy %.4f (%lld/%lld)\n\nconfusion (rows: true class, columns: "
                   "predicted)\n%12s", (double)right / (double)n, (long long)right,
                   (long long)n, "");
            for (int64_t k = 0; k < K; k++)
                printf(" %5lld", (long long)k);
            printf("\n");
            for (int64_t t = 0; t < K; t++) {
                printf("%-12.12s", K == 10 ? class_names[t] : "");
                for (int64_t k = 0; k < K; k++)
                    printf(" %5lld", (long long)conf[t * K + k]);
                printf("\n");
            }
            status = 0;
        }
    }
    free(conf);
    qkv_ctx_free(ctx);
    qkv_mnist_free(&te);
    qkv_model_free(md);
    return status;
}

/* ---- classify ---- */

/* Grey (PIL's convert("L") weights) at the model's size. */
static qkv_status grey_input(float *dst, const qkv_image *img, int64_t size)
{
    qkv_image g = {.c = 1, .h = img->h, .w = img->w};
    int64_t n = img->h * img->w;
    if (!(g.data = malloc((size_t)n * sizeof(float))))
        return qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        g.data[i] = img->c == 3 ? 0.299f * img->data[i] + 0.587f * img->data[n + i] +
                                      0.114f * img->data[2 * n + i]
                                : img->data[i];
    qkv_image r;
    qkv_status s = qkv_image_resize(&r, &g, size, size);
    free(g.data);
    if (s != QKV_OK)
        return s;
    memcpy(dst, r.data, (size_t)(size * size) * sizeof(float));
    qkv_image_free(&r);
    return QKV_OK;
}

/* The picture: the input on the left, the rollout map as a heat colour over
 * it on the right, each scaled up to at least 224 pixels. */
static qkv_status write_rollout(const char *path, const float *x, int64_t size,
                               const float *map, int64_t grid)
{
    int64_t up = size < 224 ? (224 + size - 1) / size : 1, S = size * up;
    qkv_image src = {.c = 1, .h = size, .w = size, .data = (float *)x};
    /* stretched to [0, 1]: rollout maps of a young model are nearly flat */
    float lo = map[0], hi = map[0], *stretched = malloc((size_t)(grid * grid) * sizeof(float));
    if (!stretched)
        return qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 1; i < grid * grid; i++) {
        lo = fminf(lo, map[i]);
        hi = fmaxf(hi, map[i]);
    }
    for (int64_t i = 0; i < grid * grid; i++)
        stretched[i] = hi > lo ? (map[i] - lo) / (hi - lo) : 0.0f;
    qkv_image m = {.c = 1, .h = grid, .w = grid, .data = stretched};
    qkv_image big = {0}, heat = {0};
    qkv_status s = qkv_image_resize(&big, &src, S, S);
    if (s == QKV_OK)
        s = qkv_image_resize(&heat, &m, S, S);
    qkv_image out = {.c = 3, .h = S, .w = 2 * S};
    if (s == QKV_OK && !(out.data = malloc((size_t)(3 * S * 2 * S) * sizeof(float))))
        s = qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    for (int64_t y = 0; s == QKV_OK && y < S; y++)
        for (int64_t xx = 0; xx < S; xx++) {
            float g = big.data[y * S + xx], a = heat.data[y * S + xx];
            float hc[3] = {fminf(1.0f, 3 * a), fminf(1.0f, fmaxf(0.0f, 3 * a - 1)),
                           fminf(1.0f, fmaxf(0.0f, 3 * a - 2))};
            for (int c = 0; c < 3; c++) {
                out.data[(c * S + y) * 2 * S + xx] = g;
                out.data[(c * S + y) * 2 * S + S + xx] = 0.4f * g + 0.6f * hc[c];
            }
        }
    if (s == QKV_OK)
        s = qkv_image_write_png(&out, path);
    free(out.data);
    free(stretched);
    qkv_image_free(&big);
    qkv_image_free(&heat);
    return s;
}

/* "out.png" for the first image, "out-2.png" for the second, .. */
static void nth_path(char *buf, size_t n, const char *path, int i)
{
    const char *dot = strrchr(path, '.');
    if (i == 0 || !dot)
        snprintf(buf, n, i == 0 ? "%s" : "%s-%d", path, i + 1);
    else
        snprintf(buf, n, "%.*s-%d%s", (int)(dot - path), path, i + 1, dot);
}

int cmd_classify(int argc, char **argv)
{
    const char *path = "runs/vit", *attention = NULL;
    int64_t top = 3, heads = 0;
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &path, .metavar = "FILE|DIR",
         .help = "a ViT state dict, or a training run's directory"},
        {.name = "top", .kind = ARG_INT, .value = &top, .min = 1, .max = 1000,
         .help = "classes printed per image"},
        {.name = "attention", .kind = ARG_STRING, .value = &attention, .metavar = "PNG",
         .help = "write the attention rollout over each image (out.png, out-2.png, ..)"},
        {.name = "heads", .kind = ARG_INT, .value = &heads, .min = 0, .max = 4096,
         .help = "attention heads (0: from the file's metadata)"},
    };
    args_spec s = {.command = "classify",
                   .summary = "Classifies PNG or JPEG images with a ViT: each is made grey and\n"
                              "resized to the model's size (Fashion-MNIST: light object on\n"
                              "black), then the top classes are printed with probabilities.",
                   .positional = "IMAGE",
                   .max_positional = 1000,
                   .opts = opts,
                   .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (s.n_pos < 1) {
        fprintf(stderr, "qkv classify: give at least one image\n");
        return 2;
    }
    qkv_model *md;
    if (open_model(&md, path, heads))
        return 1;
    const qkv_vit *vit = qkv_model_vit(md);
    const qkv_vit_config *c = &vit->cfg;
    int64_t size = c->image_size, K = c->num_classes, L = c->num_layers;
    int64_t grid = size / c->patch_size, N = grid * grid + 1;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_set_grad_enabled(ctx, 0);
    float *rollw = malloc((size_t)(L * N * N) * sizeof(float));
    float *map = malloc((size_t)(N - 1) * sizeof(float));
    qkv_tensor **w = calloc((size_t)L, sizeof *w);
    int status = ctx && rollw && map && w ? 0 : 1;
    if (c->in_channels != 1) {
        fprintf(stderr, "qkv: %s takes %lld channels; classify feeds grey images\n", path,
                (long long)c->in_channels);
        status = 1;
    }
    for (int i = 0; i < s.n_pos && status == 0; i++) {
        qkv_image img;
        if (qkv_image_read(&img, s.pos[i]) != QKV_OK) {
            fprintf(stderr, "qkv: %s\n", qkv_error());
            status = 1;
            break;
        }
        qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){1, 1, size, size});
        qkv_status st = x ? grey_input(x->data, &img, size) : qkv_error_status();
        qkv_image_free(&img);
        qkv_tensor *logits = st == QKV_OK ? qkv_vit_forward(ctx, vit, x, attention ? w : NULL)
                                          : NULL;
        qkv_tensor *p = logits ? qkv_softmax(ctx, logits) : NULL;
        if (!p) {
            fprintf(stderr, "qkv: %s: %s\n", s.pos[i], qkv_error());
            status = 1;
            break;
        }
        printf("%s\n", s.pos[i]);
        int64_t order[1024];
        int64_t nk = K < 1024 ? K : 1024;
        for (int64_t k = 0; k < nk; k++)
            order[k] = k;
        for (int64_t a = 0; a < nk && a < top; a++) /* selection: K is small */
            for (int64_t b = a + 1; b < nk; b++)
                if (p->data[order[b]] > p->data[order[a]]) {
                    int64_t t = order[a];
                    order[a] = order[b];
                    order[b] = t;
                }
        for (int64_t a = 0; a < nk && a < top; a++) {
            char nm[32];
            snprintf(nm, sizeof nm, "class %lld", (long long)order[a]);
            printf("  %-12s %.4f\n", K == 10 ? class_names[order[a]] : nm, p->data[order[a]]);
        }
        if (attention) {
            char out[4096];
            nth_path(out, sizeof out, attention, i);
            for (int64_t l = 0; l < L; l++)
                memcpy(rollw + l * N * N, w[l]->data, (size_t)(N * N) * sizeof(float));
            if (qkv_vit_rollout(map, rollw, L, N) != QKV_OK ||
                write_rollout(out, x->data, size, map, grid) != QKV_OK) {
                fprintf(stderr, "qkv: %s\n", qkv_error());
                status = 1;
            } else {
                printf("  attention rollout: %s\n", out);
            }
        }
        qkv_ctx_reset(ctx);
    }
    free(rollw);
    free(map);
    free(w);
    qkv_ctx_free(ctx);
    qkv_model_free(md);
    return status;
}
