/*
 * detr_file.c - DETR's weights from a safetensors file in either of the two
 * layouts in use: the official checkpoints' state_dict names (what qkv
 * writes), or Hugging Face's DetrForObjectDetection (timm backbone), whose
 * hub checkpoints (transformers 4) and transformers 5 differ in a few
 * names. Hugging Face splits each packed in_proj into q_proj, k_proj and
 * v_proj; reading concatenates them (dim 0) into in_proj_weight and
 * in_proj_bias. The configuration comes from the shapes (and the heads
 * from the metadata, which no shape tells).
 *
 * official                                        Hugging Face 5 (4 where it differs)
 * backbone.0.body.X                               model.backbone.model.X
 *                                                 (model.backbone.conv_encoder.model.X)
 * input_proj.*                                    model.input_projection.*
 * query_embed.weight                              model.query_position_embeddings.weight
 * transformer.{encoder,decoder}.layers.N.
 *   self_attn.in_proj_{weight,bias}               ...self_attn.{q,k,v}_proj.{weight,bias}
 *   self_attn.out_proj.*                          ...self_attn.o_proj.* (out_proj.*)
 *   multihead_attn.* (decoder)                    ...encoder_attn.* (likewise)
 *   linear1.*, linear2.*                          ...mlp.fc1.*, mlp.fc2.* (fc1.*, fc2.*)
 *   norm1.*                                       ...self_attn_layer_norm.*
 *   norm2.* (encoder)                             ...final_layer_norm.*
 *   norm2.*, norm3.* (decoder)                    ...encoder_attn_layer_norm.*, final_layer_norm.*
 * transformer.decoder.norm.*                      model.decoder.layernorm.*
 * class_embed.*                                   class_labels_classifier.*
 * bbox_embed.layers.N.*                           bbox_predictor.layers.N.*
 */
#include "io_internal.h"

#include <stdio.h>
#include <stdlib.h>

/* copies the rest of s after prefix p into *rest, or returns false */
static bool after(const char *s, const char *p, const char **rest)
{
    size_t n = strlen(p);
    if (strncmp(s, p, n))
        return false;
    *rest = s + n;
    return true;
}

/* One sublayer's name inside a transformer layer: official -> Hugging Face. */
static bool layer_part(const char *part, bool decoder, int version, char *out, size_t n,
                       int qkv)
{
    const char *r;
    static const char *const proj[3] = {"q_proj", "k_proj", "v_proj"};
    const char *attn = NULL, *sub = NULL;
    if (after(part, "self_attn.", &r))
        attn = "self_attn";
    else if (decoder && after(part, "multihead_attn.", &r))
        attn = "encoder_attn";
    if (attn) {
        if (!strcmp(r, "in_proj_weight") || !strcmp(r, "in_proj_bias")) {
            if (qkv < 0)
                return false;
            snprintf(out, n, "%s.%s.%s", attn, proj[qkv], r[8] == 'w' ? "weight" : "bias");
            return true;
        }
        if (qkv >= 0 || !after(r, "out_proj.", &r))
            return false;
        snprintf(out, n, "%s.%s.%s", attn, version >= 5 ? "o_proj" : "out_proj", r);
        return true;
    }
    if (qkv >= 0)
        return false;
    if (after(part, "linear1.", &r))
        sub = version >= 5 ? "mlp.fc1" : "fc1";
    else if (after(part, "linear2.", &r))
        sub = version >= 5 ? "mlp.fc2" : "fc2";
    else if (after(part, "norm1.", &r))
        sub = "self_attn_layer_norm";
    else if (after(part, "norm2.", &r))
        sub = decoder ? "encoder_attn_layer_norm" : "final_layer_norm";
    else if (decoder && after(part, "norm3.", &r))
        sub = "final_layer_norm";
    if (!sub)
        return false;
    snprintf(out, n, "%s.%s", sub, r);
    return true;
}

int qkv_detr_hf_name(const char *official, int version, int part, char *out, size_t n)
{
    const char *r;
    char tmp[256];
    if (!official || !out || n == 0 || part < -1 || part > 2)
        return 0;
    bool packed = strstr(official, ".in_proj_") != NULL;
    if (packed != (part >= 0))
        return 0;
    if (after(official, "backbone.0.body.", &r))
        snprintf(out, n, "%s%s", version >= 5 ? "model.backbone.model." :
                 "model.backbone.conv_encoder.model.", r);
    else if (after(official, "input_proj.", &r))
        snprintf(out, n, "model.input_projection.%s", r);
    else if (!strcmp(official, "query_embed.weight"))
        snprintf(out, n, "model.query_position_embeddings.weight");
    else if (after(official, "transformer.decoder.norm.", &r))
        snprintf(out, n, "model.decoder.layernorm.%s", r);
    else if (after(official, "class_embed.", &r))
        snprintf(out, n, "class_labels_classifier.%s", r);
    else if (after(official, "bbox_embed.layers.", &r))
        snprintf(out, n, "bbox_predictor.layers.%s", r);
    else {
        bool dec = after(official, "transformer.decoder.layers.", &r);
        if (!dec && !after(official, "transformer.encoder.layers.", &r))
            return 0;
        char *end;
        long layer = strtol(r, &end, 10);
        if (end == r || *end != '.' || !layer_part(end + 1, dec, version, tmp, sizeof tmp, part))
            return 0;
        snprintf(out, n, "model.%s.layers.%ld.%s", dec ? "decoder" : "encoder", layer, tmp);
    }
    return 1;
}

/* Which layout a file holds: 0 official, 4 or 5 Hugging Face, -1 neither. */
static int layout_of(const qkv_st_file *f)
{
    if (qkv_st_find(f, "query_embed.weight") >= 0)
        return 0;
    if (qkv_st_find(f, "model.query_position_embeddings.weight") < 0)
        return -1;
    for (int64_t i = 0; i < qkv_st_count(f); i++)
        if (!strncmp(qkv_st_name(f, i), "model.backbone.conv_encoder.model.", 34))
            return 4;
    return 5;
}

/* The shape of `name` (official) in a file of the given layout; -1 if
 * absent. A packed in_proj is its three parts stacked. */
static int shape_of(const qkv_st_file *f, int layout, const char *name, int64_t *shape)
{
    char hf[256];
    if (layout == 0) {
        int64_t i = qkv_st_find(f, name);
        return i < 0 ? -1 : qkv_st_shape(f, i, shape);
    }
    bool packed = strstr(name, ".in_proj_") != NULL;
    if (!qkv_detr_hf_name(name, layout, packed ? 0 : -1, hf, sizeof hf))
        return -1;
    int64_t i = qkv_st_find(f, hf);
    if (i < 0)
        return -1;
    int nd = qkv_st_shape(f, i, shape);
    if (packed)
        shape[0] *= 3;
    return nd;
}

static int64_t count_layers(const qkv_st_file *f, int layout, const char *stack)
{
    char name[128];
    int64_t shape[QKV_MAX_DIMS], n = 0;
    for (;; n++) {
        snprintf(name, sizeof name, "transformer.%s.layers.%lld.norm1.weight", stack, (long long)n);
        if (shape_of(f, layout, name, shape) < 0)
            return n;
    }
}

qkv_status qkv_detr_config_from_file(qkv_detr_config *cfg, const qkv_st_file *f)
{
    if (!cfg || !f)
        return qkv_set_error(QKV_ERR_ARG, "detr_config_from_file: NULL argument");
    int layout = layout_of(f);
    if (layout < 0)
        return qkv_set_error(QKV_ERR_FORMAT, "detr: neither query_embed.weight (official "
                             "names) nor model.query_position_embeddings.weight (Hugging "
                             "Face's) is in the file");
    int64_t conv1[QKV_MAX_DIMS], proj[QKV_MAX_DIMS], q[QKV_MAX_DIMS], cls[QKV_MAX_DIMS];
    int64_t ffn[QKV_MAX_DIMS], s[QKV_MAX_DIMS];
    const char *need[] = {"backbone.0.body.conv1.weight", "input_proj.weight",
                          "query_embed.weight", "class_embed.weight",
                          "transformer.encoder.layers.0.linear1.weight"};
    int64_t *dst[] = {conv1, proj, q, cls, ffn};
    int64_t n_enc = count_layers(f, layout, "encoder"), n_dec = count_layers(f, layout, "decoder");
    for (int i = 0; i < 5; i++) {
        const char *name = need[i];
        if (i == 4 && n_enc == 0)
            name = "transformer.decoder.layers.0.linear1.weight";
        if (shape_of(f, layout, name, dst[i]) < 0)
            return qkv_set_error(QKV_ERR_FORMAT, "detr: %s is not in the file%s", name,
                                 layout ? " (under its Hugging Face name)" : "");
    }
    /* the backbone's depth from its blocks per layer and its block kind */
    int n[4] = {0};
    char name[128];
    for (int l = 0; l < 4; l++)
        for (;; n[l]++) {
            snprintf(name, sizeof name, "backbone.0.body.layer%d.%d.conv1.weight", l + 1, n[l]);
            if (shape_of(f, layout, name, s) < 0)
                break;
        }
    bool bottleneck = shape_of(f, layout, "backbone.0.body.layer1.0.conv3.weight", s) >= 0;
    static const struct {
        int depth, n[4], bottleneck;
    } depths[] = {{18, {2, 2, 2, 2}, 0},   {34, {3, 4, 6, 3}, 0},  {50, {3, 4, 6, 3}, 1},
                  {101, {3, 4, 23, 3}, 1}, {152, {3, 8, 36, 3}, 1}};
    int depth = 0;
    for (size_t i = 0; i < sizeof depths / sizeof depths[0]; i++)
        if (!memcmp(depths[i].n, n, sizeof n) && depths[i].bottleneck == bottleneck)
            depth = depths[i].depth;
    if (!depth)
        return qkv_set_error(QKV_ERR_FORMAT, "detr: the backbone has %d, %d, %d, %d %s blocks: "
                             "not a ResNet-18, 34, 50, 101 or 152", n[0], n[1], n[2], n[3],
                             bottleneck ? "bottleneck" : "basic");
    qkv_detr_config c = {.backbone_depth = depth, .in_channels = conv1[1],
                         .frozen_stages = cfg->frozen_stages, .backbone_width = conv1[0],
                         .hidden_dim = proj[0],
                         .num_heads = cfg->num_heads, .dim_feedforward = ffn[0],
                         .enc_layers = n_enc, .dec_layers = n_dec, .num_queries = q[0],
                         .num_classes = cls[0] - 1, .dropout = cfg->dropout};
    c.backbone_bn = shape_of(f, layout, "backbone.0.body.bn1.num_batches_tracked", s) >= 0;
    c.pre_norm = shape_of(f, layout, "transformer.encoder.norm.weight", s) >= 0;
    if (c.num_heads <= 0) {
        const char *h = qkv_st_meta(f, "num_heads");
        char *end = NULL;
        long long v = h ? strtoll(h, &end, 10) : 0;
        if (!h || *end || v < 1)
            return qkv_set_error(QKV_ERR_FORMAT, "detr: the number of heads is not in the "
                                 "file's metadata (\"num_heads\"); give it (--heads)");
        c.num_heads = v;
    }
    *cfg = c;
    return QKV_OK;
}

qkv_status qkv_detr_load_file(qkv_params *ps, const qkv_st_file *f, const char *what, int strict)
{
    if (!ps || !f)
        return qkv_set_error(QKV_ERR_ARG, "detr_load_file: NULL argument");
    int layout = layout_of(f);
    if (layout <= 0) /* official names: the store's own */
        return qkv_params_load_file(ps, f, what, strict);
    what = what ? what : "weights";
    int64_t nf = qkv_st_count(f), np = qkv_params_count(ps);
    bool *used = qkv__calloc((size_t)(nf > 0 ? nf : 1), sizeof *used);
    int64_t *src = qkv__malloc((size_t)(3 * (np > 0 ? np : 1)) * sizeof *src);
    char msg[1024] = "", hf[256];
    size_t at = 0;
    int bad = 0;
    if (!used || !src) {
        qkv__free(used);
        qkv__free(src);
        return qkv_set_error(QKV_ERR_NOMEM, "detr_load_file: out of memory");
    }
    /* every entry's source(s), checked before anything is written */
    for (int64_t i = 0; i < np; i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        bool packed = strstr(t->name, ".in_proj_") != NULL;
        int parts = packed ? 3 : 1;
        for (int p = 0; p < parts; p++) {
            src[3 * i + p] = qkv_detr_hf_name(t->name, layout, packed ? p : -1, hf, sizeof hf)
                                 ? qkv_st_find(f, hf)
                                 : -1;
            int64_t shape[QKV_MAX_DIMS];
            int nd = src[3 * i + p] >= 0 ? qkv_st_shape(f, src[3 * i + p], shape) : -1;
            if (nd >= 0 && packed)
                shape[0] *= 3;
            bool fits = nd == t->ndim;
            for (int k = 0; fits && k < nd; k++)
                fits = shape[k] == t->shape[k];
            if (src[3 * i + p] >= 0)
                used[src[3 * i + p]] = true;
            if (!fits && at < sizeof msg - 1 && bad++ < 8)
                at += (size_t)snprintf(msg + at, sizeof msg - at, "%s%s (%s) %s", bad > 1 ? ", " : "",
                                       t->name, src[3 * i + p] >= 0 ? hf : "no Hugging Face name",
                                       src[3 * i + p] >= 0 ? "has another shape" : "missing");
            if (!fits)
                break;
        }
    }
    for (int64_t j = 0; strict && j < nf; j++)
        if (!used[j] && strncmp(qkv_st_name(f, j), "__", 2) && at < sizeof msg - 1 && bad++ < 8)
            at += (size_t)snprintf(msg + at, sizeof msg - at, "%sunexpected %s", bad > 1 ? ", " : "",
                                   qkv_st_name(f, j));
    qkv_status st = QKV_OK;
    if (bad)
        st = qkv_set_error(QKV_ERR_FORMAT, "%s (Hugging Face DETR, transformers %d names): %d "
                           "problem%s: %s%s", what, layout, bad, bad > 1 ? "s" : "", msg,
                           bad > 8 ? ", ..." : "");
    for (int64_t i = 0; i < np && !st; i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        bool packed = strstr(t->name, ".in_proj_") != NULL;
        int64_t part = qkv_numel(t) / (packed ? 3 : 1);
        for (int p = 0; p < (packed ? 3 : 1) && !st; p++)
            st = qkv_st_read_f32(f, src[3 * i + p], t->data + p * part);
    }
    qkv__free(used);
    qkv__free(src);
    return st;
}
