/*
 * forward_attention.c - the attention modules of `qkv forward`:
 *   mha       torch.nn.MultiheadAttention (state_dict names, sizes inferred
 *             from the weights' shapes; batched and unbatched inputs);
 *   additive  d2l's AdditiveAttention (W_q, W_k, w_v without biases);
 *   dot       d2l's DotProductAttention (no parameters).
 * Inputs and outputs carry the names the PyTorch modules give them.
 */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared ---- */

static bool check_input(const char *name, const qkv_tensor *t, int ndim, const int64_t *want,
                        const char *axes)
{
    char what[96];
    snprintf(what, sizeof what, "input '%s'", name);
    return forward_check_shape(what, t, ndim, want, axes);
}

/* Shape of weight `name` into shape; its ndim, or -1 if the file lacks it. */
static int weight_shape(const forward_job *job, const char *name, int64_t *shape)
{
    int64_t i = qkv_st_find(job->weights, name);
    return i < 0 ? -1 : qkv_st_shape(job->weights, i, shape);
}

static int weight_shape_error(const forward_job *job, const char *name, int ndim,
                              const int64_t *shape, const char *expected)
{
    qkv_tensor t = {.ndim = ndim};
    memcpy(t.shape, shape, sizeof(int64_t) * (size_t)ndim);
    char got[128];
    return forward_fail("%s: '%s' has shape %s, expected %s", job->weights_path, name,
                        qkv_shape_str(&t, got, sizeof got), expected);
}

/* ---- torch.nn.MultiheadAttention ---- */

typedef struct {
    int64_t E, kdim, vdim, heads;
    bool bias;
} mha_config;

/* embed_dim, kdim, vdim and bias from the shapes PyTorch saves: in_proj_weight
 * (3E, E) when kdim == vdim == E, else q_proj_weight (E, E), k_proj_weight
 * (E, kdim), v_proj_weight (E, vdim); in_proj_bias only with bias. */
static int mha_config_from_weights(const forward_job *job, mha_config *c)
{
    int64_t s[QKV_MAX_DIMS], sk[QKV_MAX_DIMS], sv[QKV_MAX_DIMS];
    int nd = weight_shape(job, "in_proj_weight", s);
    if (nd >= 0) {
        if (nd != 2 || s[0] != 3 * s[1] || s[1] < 1)
            return weight_shape_error(job, "in_proj_weight", nd, s, "(3*E, E)");
        c->E = c->kdim = c->vdim = s[1];
    } else {
        nd = weight_shape(job, "q_proj_weight", s);
        int ndk = weight_shape(job, "k_proj_weight", sk);
        int ndv = weight_shape(job, "v_proj_weight", sv);
        if (nd < 0 || ndk < 0 || ndv < 0) {
            char names[1024];
            return forward_fail("%s: no in_proj_weight, nor q_proj_weight, k_proj_weight and "
                                "v_proj_weight: not a MultiheadAttention state_dict (the file "
                                "has: %s)", job->weights_path,
                                forward_names(job->weights, names, sizeof names));
        }
        if (nd != 2 || s[0] != s[1] || s[0] < 1)
            return weight_shape_error(job, "q_proj_weight", nd, s, "(E, E)");
        c->E = s[0];
        char want[64];
        snprintf(want, sizeof want, "(E=%lld, kdim)", (long long)c->E);
        if (ndk != 2 || sk[0] != c->E || sk[1] < 1)
            return weight_shape_error(job, "k_proj_weight", ndk, sk, want);
        snprintf(want, sizeof want, "(E=%lld, vdim)", (long long)c->E);
        if (ndv != 2 || sv[0] != c->E || sv[1] < 1)
            return weight_shape_error(job, "v_proj_weight", ndv, sv, want);
        c->kdim = sk[1];
        c->vdim = sv[1];
    }
    c->bias = qkv_st_find(job->weights, "in_proj_bias") >= 0;
    if (qkv_st_find(job->weights, "bias_k") >= 0 || qkv_st_find(job->weights, "bias_v") >= 0)
        return forward_fail("%s: has bias_k/bias_v: add_bias_kv=True is not supported",
                            job->weights_path);
    return 0;
}

/* --heads, else __metadata__ num_heads; 0, 1 (bad metadata) or 2 (neither). */
static int mha_heads(const forward_job *job, mha_config *c)
{
    bool given = job->heads > 0;
    c->heads = job->heads;
    if (!given) {
        const char *meta = qkv_st_meta(job->weights, "num_heads");
        if (!meta)
            return forward_usage("--heads is required (the weights' __metadata__ has no "
                                 "num_heads)");
        char *end;
        long long h = strtoll(meta, &end, 10);
        if (end == meta || *end || h < 1)
            return forward_fail("%s: __metadata__ num_heads is '%s', not a positive integer",
                                job->weights_path, meta);
        c->heads = h;
    }
    if (c->E % c->heads == 0)
        return 0;
    const char *fmt = "embed_dim %lld (from the weights) is not divisible by %s %lld";
    if (given)
        return forward_usage(fmt, (long long)c->E, "--heads", (long long)c->heads);
    return forward_fail(fmt, (long long)c->E, "num_heads", (long long)c->heads);
}

/* query (N, B, E), key (M, B, kdim), value (M, B, vdim) (batch first: B
 * leading), or unbatched (N, E), (M, kdim), (M, vdim); checked, and made
 * batched with B = 1. Sets *B, *N, *M and *batched. */
static bool mha_inputs(forward_job *job, const mha_config *c, qkv_tensor **qkv, int64_t *B,
                       int64_t *N, int64_t *M, bool *batched)
{
    qkv_tensor *q = qkv[0], *k = qkv[1], *v = qkv[2];
    bool bf = job->batch_first;
    *batched = q->ndim != 2;
    if (!*batched) {
        *B = 1;
        *N = q->shape[0];
        *M = k->shape[0];
        if (!check_input("query", q, 2, (int64_t[]){-1, c->E}, "N,E") ||
            !check_input("key", k, 2, (int64_t[]){-1, c->kdim}, "M,kdim") ||
            !check_input("value", v, 2, (int64_t[]){*M, c->vdim}, "M,vdim"))
            return false;
        for (int i = 0; i < 3; i++) {
            int64_t n = qkv[i]->shape[0], e = qkv[i]->shape[1];
            qkv[i] = qkv_reshape(job->ctx, qkv[i], 3,
                                 bf ? (int64_t[]){1, n, e} : (int64_t[]){n, 1, e});
        }
        return true;
    }
    const char *qa = bf ? "B,N,E" : "N,B,E";
    if (!check_input("query", q, 3, (int64_t[]){-1, -1, c->E}, qa))
        return false;
    *B = q->shape[bf ? 0 : 1];
    *N = q->shape[bf ? 1 : 0];
    /* key sets M, value must agree */
    int64_t kw[3] = {-1, *B, c->kdim};
    if (bf)
        kw[0] = *B, kw[1] = -1;
    if (!check_input("key", k, 3, kw, bf ? "B,M,kdim" : "M,B,kdim"))
        return false;
    *M = k->shape[bf ? 1 : 0];
    int64_t vw[3] = {*M, *B, c->vdim};
    if (bf)
        vw[0] = *B, vw[1] = *M;
    return check_input("value", v, 3, vw, bf ? "B,M,vdim" : "M,B,vdim");
}

/* key_padding_mask (B, M) ((M) unbatched) and attn_mask (N, M) or
 * (B*H, N, M) into o: bool or integer tensors mask where nonzero, float
 * ones are added. */
static bool mha_masks(forward_job *job, const mha_config *c, int64_t B, int64_t N, int64_t M,
                      bool batched, qkv_attn_opts *o, bool *failed)
{
    qkv_tensor *kpm = forward_optional(job, "key_padding_mask", failed);
    if (kpm) {
        if (batched ? !check_input("key_padding_mask", kpm, 2, (int64_t[]){B, M}, "B,M")
                    : !check_input("key_padding_mask", kpm, 1, (int64_t[]){M}, "M"))
            return false;
        o->key_padding_mask = batched ? kpm : qkv_reshape(job->ctx, kpm, 2, (int64_t[]){1, M});
        o->key_padding_bool = !forward_input_is_float(job, "key_padding_mask");
    }
    qkv_tensor *am = forward_optional(job, "attn_mask", failed);
    if (am) {
        int64_t BH = B * c->heads;
        bool ok = (am->ndim == 2 && am->shape[0] == N && am->shape[1] == M) ||
                  (am->ndim == 3 && am->shape[0] == BH && am->shape[1] == N &&
                   am->shape[2] == M);
        if (!ok) {
            char got[128];
            forward_fail("input 'attn_mask' has shape %s, expected (N=%lld, M=%lld) or "
                         "(%s=%lld, N=%lld, M=%lld)",
                         qkv_shape_str(am, got, sizeof got), (long long)N, (long long)M,
                         batched ? "B*heads" : "heads", (long long)BH, (long long)N,
                         (long long)M);
            return false;
        }
        o->attn_mask = am;
        o->attn_mask_bool = !forward_input_is_float(job, "attn_mask");
    }
    return !*failed;
}

int forward_mha(forward_job *job)
{
    if (!job->weights)
        return forward_usage("--arch mha needs --weights");
    mha_config c = {0};
    int rc = mha_config_from_weights(job, &c);
    if (rc == 0)
        rc = mha_heads(job, &c);
    if (rc)
        return rc;
    qkv_params *ps = qkv_params_new();
    qkv_nn_mha m;
    if (!ps || qkv_nn_mha_init(&m, ps, "", c.E, c.heads, 0.0f, c.bias, c.kdim, c.vdim,
                               job->batch_first) != QKV_OK) {
        rc = forward_fail("%s", qkv_error());
        goto done;
    }
    if ((rc = forward_load_weights(job, ps)))
        goto done;

    bool failed = false;
    qkv_tensor *in[3] = {forward_input(job, "query", &failed), forward_input(job, "key", &failed),
                         forward_input(job, "value", &failed)};
    int64_t B, N, M;
    bool batched;
    qkv_attn_opts o = {.average_attn_weights = !job->per_head_weights};
    qkv_tensor *weights = NULL;
    o.weights = job->need_weights ? &weights : NULL;
    rc = 1;
    if (failed || !mha_inputs(job, &c, in, &B, &N, &M, &batched) ||
        !mha_masks(job, &c, B, N, M, batched, &o, &failed))
        goto done;
    qkv_tensor *out = qkv_nn_mha_forward(job->ctx, &m, in[0], in[1], in[2], &o);
    if (out && !batched)
        out = qkv_reshape(job->ctx, out, 2, (int64_t[]){N, c.E});
    if (forward_output(job, "attn_output", out))
        goto done;
    if (job->need_weights) {
        /* unbatched: (N, M) averaged, else (H, N, M) */
        if (!batched)
            weights = job->per_head_weights
                          ? qkv_reshape(job->ctx, weights, 3, (int64_t[]){c.heads, N, M})
                          : qkv_reshape(job->ctx, weights, 2, (int64_t[]){N, M});
        if (forward_output(job, "attn_weights", weights))
            goto done;
    }
    rc = 0;
done:
    qkv_params_free(ps);
    return rc;
}

/* ---- d2l's AdditiveAttention and DotProductAttention ---- */

/* valid_lens (B) or (B, N), integers or floats, as int64 lengths in
 * [0, M]. d2l masks key j when !(j < valid_len), so a fractional length
 * counts as its ceiling and anything below 0 (or NaN) as 0. */
static bool read_valid_lens(forward_job *job, int64_t B, int64_t N, int64_t M,
                            qkv_attn_opts *o, bool *failed)
{
    int64_t i = qkv_st_find(job->input, "valid_lens");
    if (i < 0)
        return true;
    int64_t shape[QKV_MAX_DIMS];
    int nd = qkv_st_shape(job->input, i, shape);
    if (!((nd == 1 && shape[0] == B) || (nd == 2 && shape[0] == B && shape[1] == N))) {
        qkv_tensor t = {.ndim = nd};
        memcpy(t.shape, shape, sizeof(int64_t) * (size_t)nd);
        char got[128];
        forward_fail("input 'valid_lens' has shape %s, expected (B=%lld) or (B=%lld, N=%lld)",
                     qkv_shape_str(&t, got, sizeof got), (long long)B, (long long)B,
                     (long long)N);
        return false;
    }
    int64_t n = qkv_st_numel(job->input, i);
    qkv_arena *a = qkv_ctx_arena(job->ctx);
    int64_t *lens = qkv_arena_alloc(a, (size_t)n * sizeof *lens);
    float *f = qkv_arena_alloc(a, (size_t)n * sizeof *f);
    bool is_float = forward_input_is_float(job, "valid_lens");
    qkv_status s = !lens || !f ? QKV_ERR_NOMEM
                   : is_float  ? qkv_st_read_f32(job->input, i, f)
                               : qkv_st_read_i64(job->input, i, lens);
    if (s != QKV_OK) {
        *failed = true;
        forward_fail("%s: input 'valid_lens': %s", job->input_path, qkv_error());
        return false;
    }
    for (int64_t k = 0; k < n; k++) {
        double v = is_float ? ceil((double)f[k]) : (double)lens[k];
        lens[k] = !(v > 0) ? 0 : v > (double)M ? M : (int64_t)v;
    }
    o->valid_lens = lens;
    o->valid_lens_ndim = nd;
    return true;
}

/* queries (B, N, query_size), keys (B, M, key_size), values (B, M, Dv);
 * for dot, query_size = key_size = D. additive NULL runs dot. */
static int run_d2l(forward_job *job, const qkv_nn_additive_attention *additive)
{
    bool failed = false;
    qkv_tensor *q = forward_input(job, "queries", &failed);
    qkv_tensor *k = forward_input(job, "keys", &failed);
    qkv_tensor *v = forward_input(job, "values", &failed);
    if (failed)
        return 1;
    int64_t qs = additive ? additive->W_q.in_features : -1;
    if (!check_input("queries", q, 3, (int64_t[]){-1, -1, qs}, "B,N,query_size"))
        return 1;
    int64_t B = q->shape[0], N = q->shape[1];
    int64_t ks = additive ? additive->W_k.in_features : q->shape[2];
    if (!check_input("keys", k, 3, (int64_t[]){B, -1, ks}, additive ? "B,M,key_size" : "B,M,D"))
        return 1;
    int64_t M = k->shape[1];
    if (!check_input("values", v, 3, (int64_t[]){B, M, -1}, "B,M,Dv"))
        return 1;
    qkv_tensor *weights = NULL;
    qkv_attn_opts o = {.weights = job->need_weights ? &weights : NULL};
    if (!read_valid_lens(job, B, N, M, &o, &failed))
        return 1;
    qkv_tensor *out =
        additive ? qkv_nn_additive_attention_forward(job->ctx, additive, q, k, v, &o)
                 : qkv_nn_dot_attention_forward(job->ctx, &(qkv_nn_dot_attention){0}, q, k, v,
                                                &o);
    if (forward_output(job, "output", out))
        return 1;
    return job->need_weights ? forward_output(job, "attention_weights", weights) : 0;
}

/* 2 with a message if an option of mha's was given, else 0 */
static int d2l_options(const forward_job *job)
{
    if (job->heads || job->batch_first || job->per_head_weights)
        return forward_usage("--arch %s takes none of --heads, --batch-first, "
                             "--per-head-weights (d2l's modules are batch first, one head)",
                             job->arch);
    return 0;
}

int forward_additive(forward_job *job)
{
    if (d2l_options(job))
        return 2;
    if (!job->weights)
        return forward_usage("--arch additive needs --weights");
    /* W_q.weight (h, query_size), W_k.weight (h, key_size); w_v.weight
     * (1, h) is checked by the strict load */
    int64_t sq[QKV_MAX_DIMS], sk[QKV_MAX_DIMS];
    int ndq = weight_shape(job, "W_q.weight", sq), ndk = weight_shape(job, "W_k.weight", sk);
    if (ndq != 2 || ndk != 2) {
        const char *name = ndq != 2 ? "W_q.weight" : "W_k.weight";
        if ((ndq != 2 ? ndq : ndk) >= 0)
            return weight_shape_error(job, name, ndq != 2 ? ndq : ndk, ndq != 2 ? sq : sk,
                                      ndq != 2 ? "(num_hiddens, query_size)"
                                               : "(num_hiddens, key_size)");
        return forward_fail("%s: no '%s': not an AdditiveAttention state_dict",
                            job->weights_path, name);
    }
    if (sq[0] != sk[0])
        return forward_fail("%s: W_q.weight has %lld rows and W_k.weight %lld: num_hiddens "
                            "differ", job->weights_path, (long long)sq[0], (long long)sk[0]);
    qkv_params *ps = qkv_params_new();
    qkv_nn_additive_attention m;
    int rc;
    if (!ps || qkv_nn_additive_attention_init(&m, ps, "", sk[1], sq[1], sq[0], 0.0f) != QKV_OK)
        rc = forward_fail("%s", qkv_error());
    else if ((rc = forward_load_weights(job, ps)) == 0)
        rc = run_d2l(job, &m);
    qkv_params_free(ps);
    return rc;
}

int forward_dot(forward_job *job)
{
    if (d2l_options(job))
        return 2;
    /* no parameters: a weights file, if given, must hold none */
    for (int64_t i = 0; job->weights && i < qkv_st_count(job->weights); i++)
        if (strncmp(qkv_st_name(job->weights, i), "__", 2) != 0)
            return forward_fail("%s: DotProductAttention has no parameters, but the file has "
                                "'%s'", job->weights_path, qkv_st_name(job->weights, i));
    return run_d2l(job, NULL);
}
