/*
 * forward_transformer.c - `qkv forward --arch transformer`: torch.nn.Transformer
 * from its state_dict. Sizes come from the weights' shapes (d_model from
 * encoder.norm.weight, the FFN from linear1, the block counts from the keys
 * present); heads from --heads or __metadata__ num_heads; pre-norm from
 * --norm-first or __metadata__ norm_first ("1"/"true"), the activation from
 * --activation or __metadata__ activation ("relu"/"gelu").
 * Inputs src (S, B, E) and tgt (T, B, E), (B, ., E) with --batch-first, and
 * PyTorch's optional masks src_mask, tgt_mask, memory_mask (N, M) or
 * (B*H, N, M), src/tgt/memory_key_padding_mask (B, S|T), each bool (or
 * integer) or float as PyTorch takes them, kinds mixed as its tutorial
 * mixes them (a float causal tgt_mask, bool padding masks). Output
 * "output", laid out as tgt.
 */
#include "forward.h"

#include <stdlib.h>
#include <string.h>

static int64_t count_layers(const qkv_st_file *w, const char *stack)
{
    int64_t n = 0;
    char name[128];
    for (;; n++) {
        snprintf(name, sizeof name, "%s.layers.%lld.norm1.weight", stack, (long long)n);
        if (qkv_st_find(w, name) < 0)
            return n;
    }
}

static bool meta_true(const qkv_st_file *w, const char *key)
{
    const char *v = qkv_st_meta(w, key);
    return v && (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "True"));
}

static int config_from_weights(forward_job *job, qkv_tf_config *c)
{
    const qkv_st_file *w = job->weights;
    int64_t s[QKV_MAX_DIMS];
    int64_t i = qkv_st_find(w, "encoder.norm.weight");
    if (!w || i < 0 || qkv_st_shape(w, i, s) != 1)
        return forward_fail("%s: no encoder.norm.weight (E): not a torch.nn.Transformer "
                            "state_dict", job->weights_path ? job->weights_path : "--weights");
    c->layout = QKV_TF_TORCH;
    c->d_model = s[0];
    c->n_enc = count_layers(w, "encoder");
    c->n_dec = count_layers(w, "decoder");
    const char *lin = c->n_enc ? "encoder.layers.0.linear1.weight"
                               : "decoder.layers.0.linear1.weight";
    i = qkv_st_find(w, lin);
    if (i < 0 || qkv_st_shape(w, i, s) != 2)
        return forward_fail("%s: no %s (d_ffn, E)", job->weights_path, lin);
    c->d_ffn = s[0];
    c->norm_first = job->norm_first || meta_true(w, "norm_first");
    const char *act = job->activation ? job->activation : qkv_st_meta(w, "activation");
    if (act && strcmp(act, "relu") != 0 && strcmp(act, "gelu") != 0)
        return forward_fail("%s: __metadata__ activation '%s': qkv knows relu and gelu",
                            job->weights_path, act);
    c->activation = act && !strcmp(act, "gelu") ? QKV_ACT_GELU : QKV_ACT_RELU;
    c->n_heads = job->heads;
    const char *h = qkv_st_meta(w, "num_heads");
    if (!c->n_heads && h)
        c->n_heads = strtoll(h, NULL, 10);
    if (c->n_heads < 1)
        return forward_usage("--heads is required (the weights' __metadata__ has no num_heads)");
    if (c->d_model % c->n_heads)
        return forward_usage("d_model %lld is not divisible by %lld heads", (long long)c->d_model,
                             (long long)c->n_heads);
    if (c->n_enc > QKV_TF_MAX_LAYERS || c->n_dec > QKV_TF_MAX_LAYERS)
        return forward_fail("%s: %lld + %lld blocks, at most %d each", job->weights_path,
                            (long long)c->n_enc, (long long)c->n_dec, QKV_TF_MAX_LAYERS);
    return 0;
}

/* (S, B, E) or (B, S, E) -> a (B, S, E) view */
static qkv_tensor *batch_first(forward_job *job, qkv_tensor *x)
{
    return job->batch_first ? x : qkv_transpose(job->ctx, x, 0, 1);
}

int forward_transformer(forward_job *job)
{
    qkv_tf_config cfg = {0};
    int rc = config_from_weights(job, &cfg);
    if (rc)
        return rc;
    qkv_params *ps = qkv_params_new();
    qkv_transformer m;
    if (!ps || qkv_transformer_init(&m, ps, "", &cfg) != QKV_OK) {
        qkv_params_free(ps);
        return forward_fail("%s", qkv_error());
    }
    rc = forward_load_weights(job, ps); /* allocates the store too */
    bool failed = false;
    qkv_tensor *src = rc ? NULL : forward_input(job, "src", &failed);
    qkv_tensor *tgt = rc || failed ? NULL : forward_input(job, "tgt", &failed);
    int64_t e = cfg.d_model;
    if (!rc && !failed &&
        (!forward_check_shape("input 'src'", src, 3, (int64_t[]){-1, -1, e},
                              job->batch_first ? "B,S,E" : "S,B,E") ||
         !forward_check_shape("input 'tgt'", tgt, 3, (int64_t[]){-1, -1, e},
                              job->batch_first ? "B,T,E" : "T,B,E")))
        failed = true;
    static const char *const mask_names[6] = {
        "src_mask", "tgt_mask", "memory_mask", "src_key_padding_mask", "tgt_key_padding_mask",
        "memory_key_padding_mask"};
    qkv_tensor *mask[6] = {0};
    int is_bool[6] = {0}; /* each mask its own kind, as PyTorch reads them */
    for (int i = 0; i < 6 && !rc && !failed; i++) {
        mask[i] = forward_optional(job, mask_names[i], &failed);
        is_bool[i] = mask[i] && !forward_input_is_float(job, mask_names[i]);
    }
    if (!rc && failed)
        rc = 1;
    if (!rc) {
        qkv_tf_opts o = {.src_mask = mask[0], .tgt_mask = mask[1], .memory_mask = mask[2],
                         .src_key_padding_mask = mask[3], .tgt_key_padding_mask = mask[4],
                         .memory_key_padding_mask = mask[5],
                         .src_mask_bool = is_bool[0], .tgt_mask_bool = is_bool[1],
                         .memory_mask_bool = is_bool[2], .src_key_padding_bool = is_bool[3],
                         .tgt_key_padding_bool = is_bool[4],
                         .memory_key_padding_bool = is_bool[5]};
        qkv_tensor *out = qkv_transformer_forward(job->ctx, &m, batch_first(job, src),
                                                  batch_first(job, tgt), &o);
        if (out && !job->batch_first)
            out = qkv_contiguous(job->ctx, qkv_transpose(job->ctx, out, 0, 1));
        rc = forward_output(job, "output", out);
    }
    qkv_params_free(ps);
    return rc;
}
