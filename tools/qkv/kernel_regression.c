/*
 * kernel_regression.c - `qkv kernel-regression`: d2l's attention-pooling
 * experiment (r0.17 "nadaraya-watson"). Draws the book's data, fits the
 * average, the nonparametric (several kernels and widths) and the parametric
 * estimators, prints the training loss per epoch, the learned w and every
 * estimator's test MSE, and writes the fitted curves and the attention
 * weights as PNG pictures.
 */
#include "args.h"
#include "commands.h"
#include "qkv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Widths of the Gaussian kernel that v1.0.3 compares. */
static const float gaussian_sigmas[] = {0.1f, 0.2f, 0.5f, 1.0f};
#define N_SIGMAS (int)(sizeof gaussian_sigmas / sizeof gaussian_sigmas[0])

static double mse(const float *a, const float *b, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return s / (double)n;
}

typedef struct {
    int64_t n_train, epochs;
    double noise, sigma, lr;
    uint64_t seed;
    const char *kernel, *out_dir;
} options;

/* Test MSE of one nonparametric estimator; its predictions go to y_hat. */
static int report_pool(const qkv_kreg_data *d, float *y_hat, float *weights, qkv_kernel k,
                       float sigma, int chosen)
{
    if (qkv_kreg_pool(y_hat, weights, d->x_test, d->n_test, d->x_train, d->y_train,
                      d->n_train, k, sigma) != QKV_OK)
        return 1;
    char name[64];
    if (k == QKV_KERNEL_CONSTANT)
        snprintf(name, sizeof name, "%s", qkv_kernel_name(k));
    else
        snprintf(name, sizeof name, "%s, sigma %g", qkv_kernel_name(k), (double)sigma);
    printf("  %-30s %10.6f%s\n", name, mse(y_hat, d->y_truth, d->n_test),
           chosen ? "  (--kernel, --sigma)" : "");
    return 0;
}

static int run(const options *o)
{
    int rc = 1;
    qkv_kreg_data d = {0};
    float *buf = NULL;
    qkv_kernel kernel = (qkv_kernel)qkv_kernel_parse(o->kernel);
    qkv_rng rng;
    qkv_rng_seed(&rng, o->seed);
    if (qkv_kreg_data_make(&d, &rng, o->n_train, (float)o->noise) != QKV_OK)
        goto fail;
    const int64_t nq = d.n_test, nk = d.n_train;
    buf = malloc(((size_t)(2 * nq * nk) + 4 * (size_t)nq + (size_t)o->epochs) * sizeof(float));
    if (!buf) {
        qkv_set_error(QKV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    float *attn_np = buf, *attn_p = attn_np + nq * nk, *y_avg = attn_p + nq * nk,
          *y_np = y_avg + nq, *y_p = y_np + nq, *y_tmp = y_p + nq, *losses = y_tmp + nq;

    printf("Nadaraya-Watson kernel regression (d2l r0.17): %lld training points, noise %g, "
           "seed %llu\n",
           (long long)nk, o->noise, (unsigned long long)o->seed);

    /* Parametric pooling: w ~ U[0,1) as nn.Parameter(torch.rand(1)), drawn
     * after the data as in the book. */
    float w0 = (float)qkv_rng_uniform(&rng), w = w0;
    qkv_progress bar;
    qkv_progress_start(&bar, o->epochs, "training");
    /* Plain SGD keeps no state between steps, so training one epoch per call
     * is the same as one call for all of them, and lets the bar move. */
    for (int64_t e = 0; e < o->epochs; e++) {
        if (qkv_kreg_train(&w, d.x_train, d.y_train, nk, 1, (float)o->lr, &losses[e]) !=
            QKV_OK)
            goto fail;
        char extra[64];
        snprintf(extra, sizeof extra, "loss %.6f", (double)losses[e]);
        qkv_progress_update(&bar, e + 1, extra);
    }
    qkv_progress_finish(&bar, NULL);
    for (int64_t e = 0; e < o->epochs; e++)
        printf("epoch %lld, loss %.6f\n", (long long)e + 1, (double)losses[e]);
    printf("w: %.6f (initial %.6f)\n", (double)w, (double)w0);

    /* Test MSE against the noise-free f(x_test). */
    double sum_y = 0.0;
    for (int64_t j = 0; j < nk; j++)
        sum_y += d.y_train[j];
    for (int64_t i = 0; i < nq; i++)
        y_avg[i] = (float)(sum_y / (double)nk);
    printf("test MSE against f(x) = 2 sin x + x^0.8:\n");
    printf("  %-30s %10.6f\n", "average pooling", mse(y_avg, d.y_truth, nq));
    int shown = 0;
    for (int k = 0; k < N_SIGMAS; k++) {
        int chosen = kernel == QKV_KERNEL_GAUSSIAN && gaussian_sigmas[k] == (float)o->sigma;
        shown |= chosen;
        if (report_pool(&d, y_tmp, NULL, QKV_KERNEL_GAUSSIAN, gaussian_sigmas[k], chosen))
            goto fail;
    }
    const qkv_kernel others[] = {QKV_KERNEL_BOXCAR, QKV_KERNEL_EPANECHNIKOV, QKV_KERNEL_CONSTANT};
    for (int k = 0; k < 3; k++) {
        int chosen = kernel == others[k] && (kernel == QKV_KERNEL_CONSTANT || o->sigma == 1.0);
        shown |= chosen;
        if (report_pool(&d, y_tmp, NULL, others[k], 1.0f, chosen))
            goto fail;
    }
    if (!shown && report_pool(&d, y_tmp, NULL, kernel, (float)o->sigma, 1))
        goto fail;
    if (qkv_kreg_pool(y_np, attn_np, d.x_test, nq, d.x_train, d.y_train, nk, kernel,
                      (float)o->sigma) != QKV_OK ||
        qkv_kreg_predict(y_p, attn_p, d.x_test, nq, d.x_train, d.y_train, nk, w) != QKV_OK)
        goto fail;
    char name[64];
    snprintf(name, sizeof name, "parametric, w %.4g", (double)w);
    printf("  %-30s %10.6f\n", name, mse(y_p, d.y_truth, nq));

    if (qkv_make_dirs(o->out_dir) != QKV_OK)
        goto fail;
    char path[4200], np_name[64];
    snprintf(np_name, sizeof np_name, "%s, sigma %g", qkv_kernel_name(kernel), o->sigma);
    const qkv_series series[] = {
        {.name = "truth", .x = d.x_test, .y = d.y_truth, .n = nq},
        {.name = "training data", .x = d.x_train, .y = d.y_train, .n = nk, .points = 1},
        {.name = "average", .x = d.x_test, .y = y_avg, .n = nq},
        {.name = np_name, .x = d.x_test, .y = y_np, .n = nq},
        {.name = "parametric", .x = d.x_test, .y = y_p, .n = nq},
    };
    snprintf(path, sizeof path, "%s/fit.png", o->out_dir);
    if (qkv_plot_lines(path, 5, series,
                       &(qkv_plot_opts){.xlabel = "x", .ylabel = "y",
                                        .title = "Nadaraya-Watson kernel regression"}) !=
        QKV_OK)
        goto fail;
    printf("wrote %s\n", path);
    /* every training run leaves its metrics: one JSON line per epoch */
    snprintf(path, sizeof path, "%s/metrics.jsonl", o->out_dir);
    qkv_metrics *mf = qkv_metrics_open(path);
    if (!mf)
        goto fail;
    for (int64_t e = 0; e < o->epochs; e++) {
        const char *const names[] = {"loss"};
        const double values[] = {losses[e]};
        if (qkv_metrics_write(mf, e + 1, 1, names, values) != QKV_OK) {
            qkv_metrics_close(mf);
            goto fail;
        }
    }
    if (qkv_metrics_close(mf) != QKV_OK)
        goto fail;
    printf("wrote %s\n", path);
    /* queries down, keys across, as the book's show_heatmaps */
    const char *const np_title[] = {np_name}, *const p_title[] = {"parametric"};
    struct {
        const char *file;
        const float *w;
        const char *const *title;
    } maps[] = {{"attention-nonparametric.png", attn_np, np_title},
                {"attention-parametric.png", attn_p, p_title}};
    for (int m = 0; m < 2; m++) {
        snprintf(path, sizeof path, "%s/%s", o->out_dir, maps[m].file);
        if (qkv_plot_heatmaps(path, maps[m].w, 1, 1, nq, nk,
                              &(qkv_heatmap_opts){.xlabel = "Sorted training inputs",
                                                  .ylabel = "Sorted testing inputs",
                                                  .titles = maps[m].title}) != QKV_OK)
            goto fail;
        printf("wrote %s\n", path);
    }
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "qkv kernel-regression: %s\n", qkv_error());
    free(buf);
    qkv_kreg_data_free(&d);
    return rc;
}

int cmd_kernel_regression(int argc, char **argv)
{
    options o = {.n_train = 50, .epochs = 5, .noise = 0.5, .sigma = 1.0, .lr = 0.5,
                 .seed = 0, .kernel = "gaussian", .out_dir = "runs/kernel-regression"};
    arg_opt opts[] = {
        {.name = "n-train", .kind = ARG_INT, .value = &o.n_train, .min = 2, .max = 2000,
         .help = "training points x ~ sort(U[0,1) * 5)"},
        {.name = "noise", .kind = ARG_FLOAT, .value = &o.noise, .min = 0, .max = 100,
         .help = "std of the Gaussian noise on y"},
        {.name = "seed", .kind = ARG_U64, .value = &o.seed,
         .help = "seed of the data and of w's initial value"},
        {.name = "kernel", .kind = ARG_CHOICE, .value = &o.kernel,
         .choices = "gaussian|boxcar|epanechnikov|constant",
         .help = "kernel of the nonparametric model drawn"},
        {.name = "sigma", .kind = ARG_FLOAT, .value = &o.sigma, .min = 1e-3, .max = 1e3,
         .help = "width of that kernel: K((x - x_i) / sigma)"},
        {.name = "epochs", .kind = ARG_INT, .value = &o.epochs, .min = 0, .max = 100000,
         .help = "full-batch SGD steps on w"},
        {.name = "lr", .kind = ARG_FLOAT, .value = &o.lr, .min = 0, .max = 1e3,
         .help = "SGD learning rate (loss = summed squared error)"},
        {.name = "out-dir", .kind = ARG_STRING, .value = &o.out_dir, .metavar = "DIR",
         .help = "where fit.png and the attention heatmaps go"},
    };
    args_spec s = {
        .command = "kernel-regression",
        .summary =
            "Attention pooling as Nadaraya-Watson kernel regression, d2l r0.17: queries are\n"
            "x_test = 0, 0.1, .., 4.9; keys and values the training pairs (x_i, y_i), y_i =\n"
            "2 sin x_i + x_i^0.8 + noise. Prints the training loss of the parametric model\n"
            "(one learned width w, leave-one-out, SGD) per epoch, the learned w and the\n"
            "test MSE of every estimator; writes fit.png, attention-nonparametric.png and\n"
            "attention-parametric.png into --out-dir.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    return rc != ARGS_CONTINUE ? rc : run(&o);
}
