/*
 * cmd_translate.c - `qkv translate --model FILE "sentence" ...`: English to
 * French with a model.safetensors from `qkv train transformer`, opened and
 * run by the library (qkv_model_open, qkv_model_translate). Greedy as d2l's
 * predict_seq2seq, or beam search; --attention writes the encoder
 * self-attention, decoder self-attention and encoder-decoder attention of
 * every sentence's translation (greedy or the beam's choice) as heatmaps,
 * layers down and heads across: three pictures per sentence, the second
 * sentence's named with "-2" after the base name, and so on.
 */
#include "args.h"
#include "commands.h"
#include "qkv.h"

#include <stdlib.h>
#include <string.h>

/* Crops (L, H, Qmax, Kmax) to (L, H, q, k) into dst. */
static void crop(float *dst, const float *src, int64_t lh, int64_t qmax, int64_t kmax, int64_t q,
                 int64_t k)
{
    for (int64_t i = 0; i < lh; i++)
        for (int64_t a = 0; a < q; a++)
            memcpy(dst + (i * q + a) * k, src + (i * qmax + a) * kmax, (size_t)k * sizeof(float));
}

/* The three pictures of sentence `index` (0-based): PATH-encoder.png, ..
 * for the first, PATH-2-encoder.png, .. for the second (PATH without its
 * .png). */
static int heatmaps(const char *path, int index, const qkv_seq2seq *m,
                    const qkv_seq2seq_attn *at, int64_t s, int64_t src_valid, int64_t max_len,
                    int64_t out_len)
{
    const qkv_tf_config *c = &m->tf.cfg;
    int64_t h = c->n_heads, q = out_len + 1 <= max_len ? out_len + 1 : max_len;
    int64_t l = c->n_enc > c->n_dec ? c->n_enc : c->n_dec, big = s > max_len ? s : max_len;
    float *w = malloc((size_t)(l * h * big * big) * sizeof(float));
    char **titles = malloc((size_t)(l * h) * sizeof *titles);
    char *tbuf = malloc((size_t)(l * h) * 48);
    if (!w || !titles || !tbuf) {
        free(w);
        free(titles);
        free(tbuf);
        return qkv_set_error(QKV_ERR_NOMEM, "out of memory");
    }
    for (int64_t i = 0; i < l * h; i++) {
        titles[i] = tbuf + i * 48;
        snprintf(titles[i], 48, "L%lld H%lld", (long long)(i / h + 1),
                 (long long)(i % h + 1));
    }
    char base[4096], file[4300];
    snprintf(base, sizeof base, "%s", path);
    char *dot = strrchr(base, '.');
    if (dot && !strcmp(dot, ".png"))
        *dot = '\0';
    if (index > 0) {
        size_t len = strlen(base);
        snprintf(base + len, sizeof base - len, "-%d", index + 1);
    }
    struct {
        const char *suffix, *xlabel, *ylabel;
        const float *src;
        int64_t layers, qmax, kmax, nq, nk;
    } maps[3] = {
        {"encoder", "Key positions", "Query positions", at->enc, c->n_enc, s, s, src_valid,
         src_valid},
        {"decoder-self", "Key positions", "Query positions", at->dec_self, c->n_dec, max_len,
         max_len, q, q},
        {"decoder-cross", "Source positions", "Target positions", at->dec_cross, c->n_dec,
         max_len, s, q, src_valid},
    };
    qkv_status st = QKV_OK;
    for (int i = 0; i < 3 && st == QKV_OK; i++) {
        crop(w, maps[i].src, maps[i].layers * h, maps[i].qmax, maps[i].kmax, maps[i].nq,
             maps[i].nk);
        snprintf(file, sizeof file, "%s-%s.png", base, maps[i].suffix);
        qkv_heatmap_opts o = {.xlabel = maps[i].xlabel, .ylabel = maps[i].ylabel,
                              .titles = (const char *const *)titles};
        st = qkv_plot_heatmaps(file, w, maps[i].layers, h, maps[i].nq, maps[i].nk, &o);
        if (st == QKV_OK)
            printf("wrote %s\n", file);
    }
    free(w);
    free(titles);
    free(tbuf);
    return st;
}

typedef struct {
    const char *model, *attention;
    int64_t beam, max_len;
    double alpha;
} options;

static int run(const options *o, char **sentences, int n)
{
    int rc = 1;
    qkv_ctx *ctx = NULL;
    qkv_seq2seq_attn at = {0};
    qkv_model *model = qkv_model_open(o->model, NULL);
    qkv_seq2seq *m = qkv_model_seq2seq(model);
    if (model && !m) {
        qkv_set_error(QKV_ERR_FORMAT, "%s is a %s model; translate needs one from `qkv train "
                      "transformer`", o->model, qkv_model_kind_name(qkv_model_kind_of(model)));
        goto fail;
    }
    if (!m)
        goto fail;
    const qkv_tf_config *cfg = &m->tf.cfg;
    int64_t num_steps = qkv_model_num_steps(model);
    int64_t max_len = o->max_len > 0 ? o->max_len : num_steps;
    if (!(ctx = qkv_ctx_new()))
        goto fail;
    if (o->attention) {
        int64_t h = cfg->n_heads;
        at.enc = malloc((size_t)(cfg->n_enc * h * num_steps * num_steps) * sizeof(float));
        at.dec_self = malloc((size_t)(cfg->n_dec * h * max_len * max_len) * sizeof(float));
        at.dec_cross = malloc((size_t)(cfg->n_dec * h * max_len * num_steps) * sizeof(float));
        if (!at.enc || !at.dec_self || !at.dec_cross) {
            qkv_set_error(QKV_ERR_NOMEM, "out of memory");
            goto fail;
        }
    }
    for (int i = 0; i < n; i++) {
        /* with a beam, the weights are those of the chosen hypothesis,
         * decoded again with teacher forcing */
        char out[4096];
        int64_t valid = 0;
        qkv_translate_opts to = {.beam = (int)o->beam, .alpha = (float)o->alpha,
                                 .max_len = max_len, .attn = o->attention ? &at : NULL,
                                 .src_valid = &valid};
        int64_t k = qkv_model_translate(ctx, model, sentences[i], &to, out, sizeof out);
        if (k < 0)
            goto fail;
        printf("%s => %s\n", sentences[i], out);
        if (o->attention &&
            heatmaps(o->attention, i, m, &at, num_steps, valid < num_steps ? valid : num_steps,
                     max_len, k) != QKV_OK)
            goto fail;
    }
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "qkv translate: %s\n", qkv_error());
    free(at.enc);
    free(at.dec_self);
    free(at.dec_cross);
    qkv_ctx_free(ctx);
    qkv_model_free(model);
    return rc;
}

int cmd_translate(int argc, char **argv)
{
    options o = {.model = "runs/transformer/model.safetensors", .beam = 1, .alpha = 0.75};
    arg_opt opts[] = {
        {.name = "model", .kind = ARG_STRING, .value = &o.model, .metavar = "FILE",
         .help = "model.safetensors written by `qkv train transformer`"},
        {.name = "beam", .kind = ARG_INT, .value = &o.beam, .min = 1, .max = 64,
         .help = "beam width (1: greedy, as d2l's predict_seq2seq)"},
        {.name = "alpha", .kind = ARG_FLOAT, .value = &o.alpha, .min = 0, .max = 10,
         .help = "beam length penalty: log-probability / length^alpha"},
        {.name = "max-len", .kind = ARG_INT, .value = &o.max_len, .min = 0, .max = 1000,
         .help = "most output tokens (0: the model's num_steps)"},
        {.name = "attention", .kind = ARG_STRING, .value = &o.attention, .metavar = "PNG",
         .help = "attention heatmaps of each translation (greedy or the beam's): "
                 "P-encoder.png, P-decoder-self.png, P-decoder-cross.png (P: PNG less .png) "
                 "for the first sentence, P-2-*.png for the second, .."},
    };
    args_spec s = {
        .command = "translate",
        .positional = "SENTENCE...",
        .max_positional = 1000,
        .summary = "Translates English sentences to French with a model trained by `qkv train\n"
                   "transformer`.",
        .opts = opts,
        .n_opts = (int)(sizeof opts / sizeof opts[0]),
    };
    int rc = args_parse(&s, argc, argv);
    if (rc != ARGS_CONTINUE)
        return rc;
    if (s.n_pos == 0) {
        fprintf(stderr, "qkv translate: give at least one sentence\n");
        return 2;
    }
    return run(&o, s.pos, s.n_pos);
}
