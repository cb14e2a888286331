/*
 * model_file.c - a trained model in one safetensors file: the weights under
 * PyTorch's names, and in the metadata what the shapes do not tell (the
 * configuration, the vocabularies) and what kind of model it is, so that
 * qkv_model_open can rebuild it without being told.
 *
 * Metadata keys: "qkv.kind" ("seq2seq", "vit" or "detr"); "config" (JSON);
 * for a seq2seq model "src_vocab" and "tgt_vocab" (tokens in id order, one
 * per line); for a ViT "num_heads" and "format" (torchvision loads the file
 * as it is, see docs/vit.md); for a DETR "num_heads", "format" (the
 * official checkpoints' names) and "class_names" (one per line, label
 * order). Files written before "qkv.kind" existed are told apart by their
 * config ("model": "d2l-transformer") or their tensors ("conv_proj.weight");
 * DETR checkpoints that qkv did not write by theirs ("query_embed.weight",
 * or Hugging Face's "model.query_position_embeddings.weight").
 */
#include "io_internal.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>

#define MAX_META 16

struct qkv_model {
    qkv_model_kind kind;
    qkv_params *ps;
    qkv_seq2seq seq2seq;
    qkv_vocab *vocab[2]; /* source, target */
    int64_t num_steps;
    qkv_vit vit;
    qkv_detr detr;
    qkv_detr_input detr_in;
    int64_t n_names;
    char **names;       /* DETR: class names (n_names), "" where unnamed */
    char *key[MAX_META], *value[MAX_META];
    int n_meta;
};

const char *qkv_model_kind_name(qkv_model_kind k)
{
    switch (k) {
    case QKV_MODEL_SEQ2SEQ: return "seq2seq";
    case QKV_MODEL_VIT: return "vit";
    case QKV_MODEL_DETR: return "detr";
    }
    return "unknown";
}

void qkv_model_free(qkv_model *m)
{
    if (!m)
        return;
    qkv_params_free(m->ps);
    qkv_vocab_free(m->vocab[0]);
    qkv_vocab_free(m->vocab[1]);
    for (int64_t i = 0; i < m->n_names; i++)
        qkv__free(m->names[i]);
    qkv__free(m->names);
    for (int i = 0; i < m->n_meta; i++)
        qkv__free(m->key[i]), qkv__free(m->value[i]);
    qkv__free(m);
}

static qkv_model *model_alloc(qkv_model_kind kind)
{
    qkv_model *m = qkv__calloc(1, sizeof *m);
    if (m && !(m->ps = qkv_params_new())) {
        qkv__free(m);
        m = NULL;
    }
    if (m)
        m->kind = kind;
    return m;
}

/* Copies v token by token (a vocabulary is read-only once made). */
static qkv_vocab *vocab_copy(const qkv_vocab *v)
{
    int64_t n = qkv_vocab_size(v);
    const char **tok = qkv__malloc((size_t)(n > 0 ? n : 1) * sizeof *tok);
    if (!tok)
        return NULL;
    for (int64_t i = 0; i < n; i++)
        tok[i] = qkv_vocab_token(v, i);
    qkv_vocab *c = qkv_vocab_new(n, tok);
    qkv__free(tok);
    return c;
}

/* Opened for inference, a model has no gradient buffers. */
static qkv_status alloc_params(qkv_model *m, int trainable)
{
    return trainable ? qkv_params_alloc(m->ps) : qkv_params_alloc_inference(m->ps);
}

static qkv_status build_seq2seq(qkv_model *m, const qkv_tf_config *cfg, int trainable)
{
    qkv_status st = qkv_seq2seq_init(&m->seq2seq, m->ps, cfg, qkv_vocab_size(m->vocab[0]),
                                     qkv_vocab_size(m->vocab[1]));
    return st ? st : alloc_params(m, trainable);
}

qkv_model *qkv_model_new_seq2seq(const qkv_tf_config *cfg, const qkv_vocab *src,
                                 const qkv_vocab *tgt, int64_t num_steps)
{
    if (!cfg || !src || !tgt || num_steps < 1) {
        qkv_set_error(QKV_ERR_ARG, "model_new_seq2seq: %s",
                      num_steps < 1 ? "num_steps must be >= 1" : "NULL argument");
        return NULL;
    }
    qkv_model *m = model_alloc(QKV_MODEL_SEQ2SEQ);
    if (!m)
        return NULL;
    m->num_steps = num_steps;
    if (!(m->vocab[0] = vocab_copy(src)) || !(m->vocab[1] = vocab_copy(tgt)) ||
        build_seq2seq(m, cfg, 1) != QKV_OK) {
        qkv_model_free(m);
        return NULL;
    }
    return m;
}

qkv_model *qkv_model_new_vit(const qkv_vit_config *cfg)
{
    if (!cfg) {
        qkv_set_error(QKV_ERR_ARG, "model_new_vit: cfg is NULL");
        return NULL;
    }
    qkv_model *m = model_alloc(QKV_MODEL_VIT);
    if (m && (qkv_vit_init(&m->vit, m->ps, cfg) != QKV_OK || qkv_params_alloc(m->ps) != QKV_OK)) {
        qkv_model_free(m);
        return NULL;
    }
    return m;
}

/* DETR's input preparation for its checkpoints: 800, 1333, ImageNet's
 * statistics (grey: their mean) */
static qkv_detr_input detr_input_default(int64_t channels)
{
    qkv_detr_input in = {.size = 800, .max_size = 1333, .mean = {0.485f, 0.456f, 0.406f},
                         .std = {0.229f, 0.224f, 0.225f}};
    if (channels == 1)
        in.mean[0] = 0.449f, in.std[0] = 0.226f;
    return in;
}

static qkv_status set_names(qkv_model *m, int64_t n, const char *const *names)
{
    m->names = qkv__calloc((size_t)(n > 0 ? n : 1), sizeof *m->names);
    if (!m->names)
        return qkv_error_status();
    m->n_names = n;
    for (int64_t i = 0; i < n; i++) {
        if (!(m->names[i] = qkv__strdup(names && names[i] ? names[i] : "")))
            return qkv_error_status();
        for (char *c = m->names[i]; *c; c++) /* one line each in the file */
            if (*c == '\n' || *c == '\r')
                *c = ' ';
    }
    return QKV_OK;
}

qkv_model *qkv_model_new_detr(const qkv_detr_config *cfg, const qkv_detr_input *in,
                              int64_t n_names, const char *const *class_names)
{
    if (!cfg || n_names < 0) {
        qkv_set_error(QKV_ERR_ARG, "model_new_detr: %s", cfg ? "n_names < 0" : "cfg is NULL");
        return NULL;
    }
    qkv_model *m = model_alloc(QKV_MODEL_DETR);
    if (m && (qkv_detr_init(&m->detr, m->ps, cfg) != QKV_OK || qkv_params_alloc(m->ps) != QKV_OK ||
              set_names(m, n_names, class_names) != QKV_OK)) {
        qkv_model_free(m);
        return NULL;
    }
    if (m)
        m->detr_in = in ? *in : detr_input_default(m->detr.cfg.in_channels);
    return m;
}

qkv_detr *qkv_model_detr(qkv_model *m) { return m && m->kind == QKV_MODEL_DETR ? &m->detr : NULL; }
const qkv_detr_input *qkv_model_detr_input(const qkv_model *m)
{
    return m && m->kind == QKV_MODEL_DETR ? &m->detr_in : NULL;
}
const char *qkv_model_class_name(const qkv_model *m, int64_t k)
{
    if (!m || m->kind != QKV_MODEL_DETR || k < 0 || k >= m->n_names || !m->names[k][0])
        return NULL;
    return m->names[k];
}

qkv_model_kind qkv_model_kind_of(const qkv_model *m) { return m ? m->kind : 0; }
qkv_params *qkv_model_params(qkv_model *m) { return m ? m->ps : NULL; }
qkv_seq2seq *qkv_model_seq2seq(qkv_model *m)
{
    return m && m->kind == QKV_MODEL_SEQ2SEQ ? &m->seq2seq : NULL;
}
qkv_vit *qkv_model_vit(qkv_model *m) { return m && m->kind == QKV_MODEL_VIT ? &m->vit : NULL; }
const qkv_vocab *qkv_model_vocab(const qkv_model *m, int target)
{
    return m && m->kind == QKV_MODEL_SEQ2SEQ ? m->vocab[target ? 1 : 0] : NULL;
}
int64_t qkv_model_num_steps(const qkv_model *m)
{
    return m && m->kind == QKV_MODEL_SEQ2SEQ ? m->num_steps : 0;
}

const char *qkv_model_meta(const qkv_model *m, const char *key)
{
    for (int i = 0; m && key && i < m->n_meta; i++)
        if (!strcmp(m->key[i], key))
            return m->value[i];
    return NULL;
}

qkv_status qkv_model_set_meta(qkv_model *m, const char *key, const char *value)
{
    if (!m || !key || !value)
        return qkv_set_error(QKV_ERR_ARG, "model_set_meta: NULL argument");
    if (!strcmp(key, "qkv.kind") || !strcmp(key, "config") || !strcmp(key, "src_vocab") ||
        !strcmp(key, "tgt_vocab") || !strcmp(key, "num_heads") || !strcmp(key, "format") ||
        !strcmp(key, "class_names"))
        return qkv_set_error(QKV_ERR_ARG, "model_set_meta: '%s' is written by qkv_model_save",
                             key);
    int i = 0;
    while (i < m->n_meta && strcmp(m->key[i], key))
        i++;
    if (i == MAX_META)
        return qkv_set_error(QKV_ERR_ARG, "model_set_meta: more than %d keys", MAX_META);
    char *v = qkv__strdup(value), *k = i == m->n_meta ? qkv__strdup(key) : m->key[i];
    if (!v || !k) {
        qkv__free(v);
        if (i == m->n_meta)
            qkv__free(k);
        return qkv_set_error(QKV_ERR_NOMEM, "model_set_meta: out of memory");
    }
    if (i < m->n_meta)
        qkv__free(m->value[i]);
    m->key[i] = k, m->value[i] = v;
    m->n_meta += i == m->n_meta;
    return QKV_OK;
}

/* ---- saving ---- */

static void config_json(const qkv_model *m, char *buf, size_t n)
{
    if (m->kind == QKV_MODEL_SEQ2SEQ) {
        const qkv_tf_config *c = &m->seq2seq.tf.cfg;
        snprintf(buf, n,
                 "{\"model\": \"d2l-transformer\", \"d_model\": %lld, \"n_heads\": %lld, "
                 "\"d_ffn\": %lld, \"n_enc\": %lld, \"n_dec\": %lld, \"dropout\": %g, "
                 "\"norm_first\": %d, \"num_steps\": %lld, \"src_vocab\": %lld, "
                 "\"tgt_vocab\": %lld}",
                 (long long)c->d_model, (long long)c->n_heads, (long long)c->d_ffn,
                 (long long)c->n_enc, (long long)c->n_dec, (double)c->dropout, c->norm_first,
                 (long long)m->num_steps, (long long)m->seq2seq.src_vocab,
                 (long long)m->seq2seq.tgt_vocab);
    } else if (m->kind == QKV_MODEL_DETR) {
        const qkv_detr_config *c = &m->detr.cfg;
        const qkv_detr_input *in = &m->detr_in;
        snprintf(buf, n,
                 "{\"model\": \"detr\", \"backbone_depth\": %d, \"in_channels\": %lld, "
                 "\"backbone_bn\": %d, \"frozen_stages\": %d, \"backbone_width\": %lld, "
                 "\"hidden_dim\": %lld, \"num_heads\": %lld, \"dim_feedforward\": %lld, "
                 "\"enc_layers\": %lld, "
                 "\"dec_layers\": %lld, \"num_queries\": %lld, \"num_classes\": %lld, "
                 "\"dropout\": %g, \"pre_norm\": %d, \"image_size\": %lld, "
                 "\"max_size\": %lld, \"mean\": [%.9g, %.9g, %.9g], "
                 "\"std\": [%.9g, %.9g, %.9g]}",
                 c->backbone_depth, (long long)c->in_channels, c->backbone_bn, c->frozen_stages,
                 (long long)m->detr.backbone.cfg.width, (long long)c->hidden_dim,
                 (long long)c->num_heads,
                 (long long)c->dim_feedforward, (long long)c->enc_layers,
                 (long long)c->dec_layers, (long long)c->num_queries,
                 (long long)c->num_classes, (double)c->dropout, c->pre_norm,
                 (long long)in->size, (long long)in->max_size, (double)in->mean[0],
                 (double)in->mean[1], (double)in->mean[2], (double)in->std[0],
                 (double)in->std[1], (double)in->std[2]);
    } else {
        const qkv_vit_config *c = &m->vit.cfg;
        snprintf(buf, n,
                 "{\"model\": \"vit\", \"image_size\": %lld, \"patch_size\": %lld, "
                 "\"in_channels\": %lld, \"hidden_dim\": %lld, \"mlp_dim\": %lld, "
                 "\"num_heads\": %lld, \"num_layers\": %lld, \"num_classes\": %lld}",
                 (long long)c->image_size, (long long)c->patch_size, (long long)c->in_channels,
                 (long long)c->hidden_dim, (long long)c->mlp_dim, (long long)c->num_heads,
                 (long long)c->num_layers, (long long)c->num_classes);
    }
}

qkv_status qkv_model_save(qkv_model *m, const char *path)
{
    if (!m || !path)
        return qkv_set_error(QKV_ERR_ARG, "model_save: NULL argument");
    qkv_st_writer *w = qkv_st_writer_new();
    if (!w)
        return qkv_error_status();
    qkv_status st = QKV_OK;
    for (int64_t i = 0; i < qkv_params_count(m->ps) && !st; i++) {
        qkv_tensor *t = qkv_params_at(m->ps, i);
        st = qkv_st_add_tensor(w, t->name, t);
    }
    char cfg[1024];
    config_json(m, cfg, sizeof cfg);
    if (!st)
        st = qkv_st_set_meta(w, "qkv.kind", qkv_model_kind_name(m->kind));
    if (!st)
        st = qkv_st_set_meta(w, "config", cfg);
    if (!st && m->kind == QKV_MODEL_SEQ2SEQ) {
        for (int i = 0; i < 2 && !st; i++) {
            char *lines = qkv__vocab_lines(m->vocab[i]);
            st = lines ? qkv_st_set_meta(w, i ? "tgt_vocab" : "src_vocab", lines)
                       : qkv_set_error(QKV_ERR_NOMEM, "model_save: out of memory");
            qkv__free(lines);
        }
    } else if (!st && m->kind == QKV_MODEL_DETR) {
        char heads[32];
        snprintf(heads, sizeof heads, "%lld", (long long)m->detr.cfg.num_heads);
        st = qkv_st_set_meta(w, "num_heads", heads);
        size_t len = 1;
        for (int64_t i = 0; i < m->n_names; i++)
            len += strlen(m->names[i]) + 1;
        char *lines = qkv__malloc(len), *at = lines;
        if (!lines)
            st = qkv_error_status();
        for (int64_t i = 0; lines && i < m->n_names; i++)
            at += sprintf(at, "%s\n", m->names[i]);
        if (lines)
            *at = '\0';
        if (!st)
            st = qkv_st_set_meta(w, "class_names", lines);
        qkv__free(lines);
        if (!st)
            st = qkv_st_set_meta(w, "format", "facebookresearch/detr state_dict (official names)");
    } else if (!st) {
        char heads[32];
        snprintf(heads, sizeof heads, "%lld", (long long)m->vit.cfg.num_heads);
        st = qkv_st_set_meta(w, "num_heads", heads);
        if (!st)
            st = qkv_st_set_meta(w, "format", "torchvision.models.VisionTransformer state_dict");
    }
    for (int i = 0; i < m->n_meta && !st; i++)
        st = qkv_st_set_meta(w, m->key[i], m->value[i]);
    if (!st)
        st = qkv_st_write(w, path);
    qkv_st_writer_free(w);
    return st;
}

/* ---- opening ---- */

static int64_t json_int(const cJSON *c, const char *key)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(c, key);
    return cJSON_IsNumber(x) ? (int64_t)x->valuedouble : -1;
}

static qkv_status open_seq2seq(qkv_model *m, const qkv_st_file *f, const char *path,
                               int trainable)
{
    cJSON *c = cJSON_Parse(qkv_st_meta(f, "config") ? qkv_st_meta(f, "config") : "");
    if (!c)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: the \"config\" metadata is missing or not "
                             "JSON", path);
    qkv_tf_config cfg = {.layout = QKV_TF_D2L,
                         .d_model = json_int(c, "d_model"),
                         .n_heads = json_int(c, "n_heads"),
                         .d_ffn = json_int(c, "d_ffn"),
                         .n_enc = json_int(c, "n_enc"),
                         .n_dec = json_int(c, "n_dec"),
                         .norm_first = json_int(c, "norm_first") == 1};
    m->num_steps = json_int(c, "num_steps");
    cJSON_Delete(c);
    if (cfg.d_model < 1 || cfg.n_heads < 1 || cfg.d_ffn < 1 || cfg.n_enc < 1 || cfg.n_dec < 1 ||
        m->num_steps < 1)
        return qkv_set_error(QKV_ERR_FORMAT, "%s: the config lacks d_model, n_heads, d_ffn, "
                             "n_enc, n_dec or num_steps", path);
    for (int i = 0; i < 2; i++) {
        m->vocab[i] = qkv__vocab_from_lines(qkv_st_meta(f, i ? "tgt_vocab" : "src_vocab"));
        if (!m->vocab[i])
            return qkv_set_error(QKV_ERR_FORMAT, "%s: %s vocabulary: %s", path,
                                 i ? "target" : "source", qkv_error());
    }
    return build_seq2seq(m, &cfg, trainable);
}

static qkv_status open_vit(qkv_model *m, const qkv_st_file *f, int64_t heads, int trainable)
{
    qkv_vit_config cfg = {.num_heads = heads};
    qkv_status st = qkv_vit_config_from_file(&cfg, f);
    if (!st)
        st = qkv_vit_init(&m->vit, m->ps, &cfg);
    return st ? st : alloc_params(m, trainable);
}

static double json_num(const cJSON *c, const char *key, double dflt)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(c, key);
    return cJSON_IsNumber(x) ? x->valuedouble : dflt;
}

/* A DETR: its config from the metadata qkv wrote, else from the shapes;
 * the weights in the official names or Hugging Face's; the class names. */
static qkv_status open_detr(qkv_model *m, const qkv_st_file *f, const char *path, int64_t heads,
                            int trainable)
{
    qkv_detr_config cfg = {.num_heads = heads, .frozen_stages = 2};
    cJSON *c = qkv_st_meta(f, "config") ? cJSON_Parse(qkv_st_meta(f, "config")) : NULL;
    qkv_status st = qkv_detr_config_from_file(&cfg, f);
    if (st)
        goto done;
    if (c) { /* what the shapes cannot tell */
        cfg.dropout = (float)json_num(c, "dropout", cfg.dropout);
        cfg.frozen_stages = (int)json_num(c, "frozen_stages", cfg.frozen_stages);
        cfg.backbone_bn = (int)json_num(c, "backbone_bn", cfg.backbone_bn);
    }
    if ((st = qkv_detr_init(&m->detr, m->ps, &cfg)) || (st = alloc_params(m, trainable)))
        goto done;
    m->detr_in = detr_input_default(cfg.in_channels);
    if (c) {
        m->detr_in.size = (int64_t)json_num(c, "image_size", (double)m->detr_in.size);
        m->detr_in.max_size = (int64_t)json_num(c, "max_size", (double)m->detr_in.max_size);
        const char *keys[2] = {"mean", "std"};
        float *dst[2] = {m->detr_in.mean, m->detr_in.std};
        for (int k = 0; k < 2; k++) {
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(c, keys[k]);
            for (int i = 0; i < 3 && cJSON_IsArray(a) && i < cJSON_GetArraySize(a); i++)
                if (cJSON_IsNumber(cJSON_GetArrayItem(a, i)))
                    dst[k][i] = (float)cJSON_GetArrayItem(a, i)->valuedouble;
        }
    }
    /* class names, one per line */
    const char *names = qkv_st_meta(f, "class_names");
    int64_t n = 0;
    for (const char *p = names; p && *p; p++)
        n += *p == '\n';
    if ((st = set_names(m, 0, NULL)))
        goto done;
    qkv__free(m->names);
    m->names = qkv__calloc((size_t)(n > 0 ? n : 1), sizeof *m->names);
    if (!m->names) {
        st = qkv_error_status();
        goto done;
    }
    for (const char *p = names; p && *p && m->n_names < n;) {
        const char *e = strchr(p, '\n');
        size_t len = (size_t)(e - p);
        if (!(m->names[m->n_names] = qkv__malloc(len + 1))) {
            st = qkv_error_status();
            goto done;
        }
        memcpy(m->names[m->n_names], p, len);
        m->names[m->n_names++][len] = '\0';
        p = e + 1;
    }
    st = qkv_detr_load_file(m->ps, f, path, 1);
done:
    cJSON_Delete(c);
    return st;
}

static qkv_model_kind kind_of_file(const qkv_st_file *f)
{
    const char *k = qkv_st_meta(f, "qkv.kind");
    if (k)
        return !strcmp(k, "seq2seq") ? QKV_MODEL_SEQ2SEQ
               : !strcmp(k, "vit")   ? QKV_MODEL_VIT
               : !strcmp(k, "detr")  ? QKV_MODEL_DETR
                                     : 0;
    if (qkv_st_find(f, "query_embed.weight") >= 0 ||
        qkv_st_find(f, "model.query_position_embeddings.weight") >= 0)
        return QKV_MODEL_DETR;
    const char *cfg = qkv_st_meta(f, "config");
    if (cfg && strstr(cfg, "\"d2l-transformer\""))
        return QKV_MODEL_SEQ2SEQ;
    if (qkv_st_find(f, "conv_proj.weight") >= 0 && qkv_st_find(f, "class_token") >= 0)
        return QKV_MODEL_VIT;
    return 0;
}

/* Keeps the file's other metadata (e.g. "test_accuracy") with the model. */
static qkv_status keep_meta(qkv_model *m, const qkv_st_file *f)
{
    static const char *keys[] = {"test_accuracy", "trained_epochs", "preset", "AP", "AP50"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = qkv_st_meta(f, keys[i]);
        if (v && qkv_model_set_meta(m, keys[i], v) != QKV_OK)
            return qkv_error_status();
    }
    return QKV_OK;
}

qkv_model *qkv_model_open(const char *path, const qkv_model_opts *opts)
{
    if (!path) {
        qkv_set_error(QKV_ERR_ARG, "model_open: path is NULL");
        return NULL;
    }
    char buf[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(buf, sizeof buf, "%s/model.safetensors", path);
        path = buf;
    }
    qkv_st_file *f = qkv_st_open(path);
    if (!f)
        return NULL;
    qkv_model_kind kind = kind_of_file(f);
    qkv_model *m = kind ? model_alloc(kind) : NULL;
    qkv_status st = QKV_OK;
    if (!kind)
        st = qkv_set_error(QKV_ERR_FORMAT, "%s: not a qkv model: its metadata names no kind "
                           "(\"qkv.kind\": seq2seq, vit or detr) and its tensors are not a "
                           "ViT's or a DETR's", path);
    else if (!m)
        st = qkv_error_status();
    else if (kind == QKV_MODEL_SEQ2SEQ)
        st = open_seq2seq(m, f, path, opts && opts->trainable);
    else if (kind == QKV_MODEL_VIT)
        st = open_vit(m, f, opts ? opts->num_heads : 0, opts && opts->trainable);
    else
        st = open_detr(m, f, path, opts ? opts->num_heads : 0, opts && opts->trainable);
    if (!st && kind != QKV_MODEL_DETR) /* open_detr loads either layout itself */
        st = qkv_params_load_file(m->ps, f, path, 1);
    if (!st)
        st = keep_meta(m, f);
    qkv_st_close(f);
    if (st) {
        qkv_model_free(m);
        return NULL;
    }
    return m;
}

/* ---- using a translation model ---- */

int64_t qkv_model_translate(qkv_ctx *ctx, qkv_model *m, const char *text,
                            const qkv_translate_opts *o, char *out, size_t n)
{
    if (!ctx || !m || !text || !out || n == 0) {
        qkv_set_error(QKV_ERR_ARG, "model_translate: NULL argument");
        return -1;
    }
    if (m->kind != QKV_MODEL_SEQ2SEQ) {
        qkv_set_error(QKV_ERR_ARG, "model_translate: a %s model does not translate",
                      qkv_model_kind_name(m->kind));
        return -1;
    }
    qkv_translate_opts d = {.beam = 1, .alpha = 0.75f};
    if (!o)
        o = &d;
    int64_t S = m->num_steps, max_len = o->max_len > 0 ? o->max_len : S;
    int64_t *ids = qkv__malloc((size_t)(S + max_len) * sizeof *ids);
    if (!ids)
        return -1;
    const qkv_vocab *tv = m->vocab[1];
    int64_t valid = qkv_nmt_encode_text(m->vocab[0], text, S, ids);
    int64_t k = valid < 0 ? -1
                          : qkv_seq2seq_translate(ctx, &m->seq2seq, ids, S, valid,
                                                  qkv_vocab_id(tv, "<bos>"),
                                                  qkv_vocab_id(tv, "<eos>"), max_len,
                                                  o->beam > 0 ? o->beam : 1, o->alpha,
                                                  ids + S, o->attn);
    qkv_ctx_reset(ctx);
    if (o->src_valid)
        *o->src_valid = valid;
    size_t used = 0;
    out[0] = '\0';
    for (int64_t i = 0; i < k; i++) {
        const char *tok = qkv_vocab_token(tv, ids[S + i]);
        int w = snprintf(out + used, n - used, "%s%s", i ? " " : "", tok ? tok : "<?>");
        if (w < 0 || (size_t)w >= n - used) {
            out[used] = '\0';
            break;
        }
        used += (size_t)w;
    }
    qkv__free(ids);
    return k;
}

/* ---- using a DETR ---- */

int64_t qkv_model_detect(qkv_ctx *ctx, qkv_model *m, const qkv_image *img,
                         qkv_detection *dets, qkv_tensor **attn)
{
    if (attn)
        *attn = NULL;
    if (!ctx || !m || !img || !img->data || !dets) {
        qkv_set_error(QKV_ERR_ARG, "model_detect: NULL argument");
        return -1;
    }
    if (m->kind != QKV_MODEL_DETR) {
        qkv_set_error(QKV_ERR_ARG, "model_detect: a %s model does not detect",
                      qkv_model_kind_name(m->kind));
        return -1;
    }
    const qkv_detr *d = &m->detr;
    const qkv_detr_input *in = &m->detr_in;
    int64_t C = d->cfg.in_channels, Q = d->cfg.num_queries, K1 = d->cfg.num_classes + 1;
    if (img->c != 1 && img->c != 3) {
        qkv_set_error(QKV_ERR_SHAPE, "model_detect: an image of %lld channels (1 or 3)",
                      (long long)img->c);
        return -1;
    }
    /* the model's channels, then its resize and normalisation */
    qkv_image x = {0}, grey = {.c = C, .h = img->h, .w = img->w};
    const qkv_image *src = img;
    if (img->c != C) {
        int64_t hw = img->h * img->w;
        if (!(grey.data = qkv__malloc((size_t)(C * hw) * sizeof(float))))
            return -1;
        for (int64_t i = 0; i < hw; i++)
            for (int64_t c = 0; c < C; c++)
                grey.data[c * hw + i] =
                    C == 1 ? 0.299f * img->data[i] + 0.587f * img->data[hw + i] +
                                 0.114f * img->data[2 * hw + i]
                           : img->data[i];
        src = &grey;
    }
    int64_t oh = src->h, ow = src->w;
    if (in->size > 0)
        qkv_det_resized_size(src->h, src->w, in->size, in->max_size, &oh, &ow);
    qkv_status st = oh != src->h || ow != src->w ? qkv_image_resize(&x, src, oh, ow)
                                                 : qkv_image_crop(&x, src, 0, 0, oh, ow);
    qkv__free(grey.data);
    if (st)
        return -1;
    qkv_image_normalize(&x, in->mean, in->std);
    int was_training = qkv_set_training(ctx, 0), had_grad = qkv_set_grad_enabled(ctx, 0);
    qkv_tensor *px = qkv_new(ctx, 4, (int64_t[]){1, C, oh, ow});
    qkv_detr_output o;
    st = px ? QKV_OK : qkv_error_status();
    if (px) {
        memcpy(px->data, x.data, (size_t)(C * oh * ow) * sizeof(float));
        st = qkv_detr_forward(ctx, d, px, NULL, attn != NULL, &o);
    }
    qkv_image_free(&x);
    qkv_set_training(ctx, was_training);
    qkv_set_grad_enabled(ctx, had_grad);
    if (st)
        return -1;
    int64_t L = o.logits->shape[0];
    qkv_detr_postprocess(dets, o.logits->data + (L - 1) * Q * K1, o.boxes->data + (L - 1) * Q * 4,
                         Q, K1, (double)img->w, (double)img->h);
    if (attn)
        *attn = qkv_reshape(ctx, o.cross_attn, 3, (int64_t[]){Q, o.feat_h, o.feat_w});
    return Q;
}
