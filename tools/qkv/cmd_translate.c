/*
 * cmd_translate.c - `qkv translate --model FILE "sentence" ...`: English to
 * French with a model.safetensors from `qkv train transformer` (weights,
 * configuration and vocabularies all in that file). Greedy as d2l's
 * predict_seq2seq, or beam search; --attention writes the encoder
 * self-attention, decoder self-attention and encoder-decoder attention of
 * every sentence's translation (greedy or the beam's choice) as heatmaps,
 * layers down and heads across: three pictures per sentence, the second
 * sentence's named with "-2" after the base name, and so on.
 */
#include "args.h"
#include "commands.h"
#include "qkv.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* A vocabulary from the model file: token i on line i. */
typedef struct {
    char *text;
    char **tok;
    int64_t n;
} vocab;

static int vocab_parse(vocab *v, const char *lines)
{
    v->text = strdup(lines ? lines : "");
    v->n = 1;
    for (const char *p = v->text ? v->text : ""; *p; p++)
        v->n += *p == '\n';
    v->tok = malloc((size_t)v->n * sizeof *v->tok);
    if (!v->text || !v->tok || !lines)
        return -1;
    int64_t i = 0;
    for (char *p = v->text, *start = p;; p++)
        if (*p == '\n' || !*p) {
            int end = !*p;
            *p = '\0';
            v->tok[i++] = start;
            start = p + 1;
            if (end)
                break;
        }
    return 0;
}

static int64_t vocab_id(const vocab *v, const char *tok, size_t len)
{
    for (int64_t i = 0; i < v->n; i++)
        if (strlen(v->tok[i]) == len && !memcmp(v->tok[i], tok, len))
            return i;
    return 0; /* <unk> */
}

/* The source line prepared as the training data was (fra_eng.c's
 * preprocessing): U+202F and U+00A0 become spaces, ASCII is lowercased, a
 * space goes before , . ! ? not preceded by one. Then ids, <eos>, padding
 * to num_steps; returns the valid length. */
static int64_t encode(const vocab *v, const char *s, int64_t num_steps, int64_t *ids)
{
    size_t n = strlen(s);
    char *t = malloc(2 * n + 1), *q = t;
    if (!t)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == 0xE2 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 &&
            (unsigned char)s[i + 2] == 0xAF) {
            *q++ = ' ';
            i += 2;
            continue;
        }
        if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] == 0xA0) {
            *q++ = ' ';
            i += 1;
            continue;
        }
        if (strchr(",.!?", c) && c && q > t && q[-1] != ' ')
            *q++ = ' ';
        *q++ = (char)tolower(c);
    }
    *q = '\0';
    int64_t k = 0;
    for (char *p = t, *start = t; k < num_steps; p++)
        if (*p == ' ' || !*p) {
            ids[k++] = vocab_id(v, start, (size_t)(p - start));
            start = p + 1;
            if (!*p)
                break;
        }
    free(t);
    if (k < num_steps)
        ids[k++] = vocab_id(v, "<eos>", 5);
    int64_t valid = k;
    int64_t pad = vocab_id(v, "<pad>", 5);
    for (; k < num_steps; k++)
        ids[k] = pad;
    return valid;
}

static int64_t json_int(const cJSON *c, const char *key, int64_t dflt)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(c, key);
    return cJSON_IsNumber(x) ? (int64_t)x->valuedouble : dflt;
}

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
    vocab src = {0}, tgt = {0};
    qkv_params *ps = NULL;
    qkv_ctx *ctx = NULL;
    cJSON *cfg_json = NULL;
    qkv_seq2seq_attn at = {0};
    qkv_st_file *f = qkv_st_open(o->model);
    if (!f)
        goto fail;
    const char *cfg_text = qkv_st_meta(f, "config");
    if (!cfg_text || !(cfg_json = cJSON_Parse(cfg_text)) ||
        vocab_parse(&src, qkv_st_meta(f, "src_vocab")) ||
        vocab_parse(&tgt, qkv_st_meta(f, "tgt_vocab"))) {
        qkv_set_error(QKV_ERR_FORMAT,
                      "%s: not a `qkv train transformer` model (config or vocabularies missing)",
                      o->model);
        goto fail;
    }
    qkv_tf_config cfg = {.layout = QKV_TF_D2L,
                         .d_model = json_int(cfg_json, "d_model", 0),
                         .n_heads = json_int(cfg_json, "n_heads", 0),
                         .d_ffn = json_int(cfg_json, "d_ffn", 0),
                         .n_enc = json_int(cfg_json, "n_enc", 0),
                         .n_dec = json_int(cfg_json, "n_dec", 0),
                         .norm_first = (int)json_int(cfg_json, "norm_first", 0)};
    int64_t num_steps = json_int(cfg_json, "num_steps", 10);
    int64_t max_len = o->max_len > 0 ? o->max_len : num_steps;
    qkv_seq2seq m;
    ps = qkv_params_new();
    if (!ps || qkv_seq2seq_init(&m, ps, &cfg, src.n, tgt.n) != QKV_OK ||
        qkv_params_alloc(ps) != QKV_OK || qkv_params_load_file(ps, f, o->model, 1) != QKV_OK)
        goto fail;
    ctx = qkv_ctx_new();
    int64_t *ids = malloc((size_t)(num_steps + max_len) * sizeof *ids);
    if (!ctx || !ids) {
        free(ids);
        qkv_set_error(QKV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    int64_t *out = ids + num_steps;
    int64_t bos = vocab_id(&tgt, "<bos>", 5), eos = vocab_id(&tgt, "<eos>", 5);
    if (o->attention) {
        int64_t h = cfg.n_heads;
        at.enc = malloc((size_t)(cfg.n_enc * h * num_steps * num_steps) * sizeof(float));
        at.dec_self = malloc((size_t)(cfg.n_dec * h * max_len * max_len) * sizeof(float));
        at.dec_cross = malloc((size_t)(cfg.n_dec * h * max_len * num_steps) * sizeof(float));
        if (!at.enc || !at.dec_self || !at.dec_cross) {
            free(ids);
            qkv_set_error(QKV_ERR_NOMEM, "out of memory");
            goto fail;
        }
    }
    for (int i = 0; i < n; i++) {
        int64_t valid = encode(&src, sentences[i], num_steps, ids);
        /* with a beam, qkv_seq2seq_translate records the weights of the
         * chosen hypothesis by decoding it again (teacher forcing) */
        int64_t k = valid < 0 ? -1
                              : qkv_seq2seq_translate(ctx, &m, ids, num_steps, valid, bos, eos,
                                                      max_len, (int)o->beam, (float)o->alpha, out,
                                                      o->attention ? &at : NULL);
        qkv_ctx_reset(ctx);
        if (k < 0) {
            free(ids);
            goto fail;
        }
        printf("%s => ", sentences[i]);
        for (int64_t j = 0; j < k; j++)
            printf("%s%s", j ? " " : "", out[j] < tgt.n ? tgt.tok[out[j]] : "<?>");
        printf("\n");
        if (o->attention &&
            heatmaps(o->attention, i, &m, &at, num_steps, valid, max_len, k) != QKV_OK) {
            free(ids);
            goto fail;
        }
    }
    free(ids);
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "qkv translate: %s\n", qkv_error());
    free(at.enc);
    free(at.dec_self);
    free(at.dec_cross);
    cJSON_Delete(cfg_json);
    free(src.text);
    free(src.tok);
    free(tgt.text);
    free(tgt.tok);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(f);
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
