/* test_transformer.c - the Transformer: parity with torch.nn.Transformer
 * (post- and pre-norm, bool and float masks, key padding; outputs, input
 * and parameter gradients), parity of the book's translation model, a
 * gradient check, incremental decoding against full recomputation, and a
 * few training steps on the real corpus. */
#include "test.h"

#include <unistd.h>

static const qkv_tf_config tiny_torch = {.layout = QKV_TF_TORCH, .d_model = 8, .n_heads = 2,
                                         .d_ffn = 16, .n_enc = 2, .n_dec = 2};

/* A fixture tensor as a mask, or NULL when the case has none. */
static qkv_tensor *opt_get(qkv_ctx *ctx, qkv_st_file *f, const char *name)
{
    return qkv_st_find(f, name) >= 0 ? qkv_st_load(ctx, f, name) : NULL;
}

/* Every parameter's gradient against grad.<name>; returns the worst. */
static double param_grads_diff(qkv_ctx *ctx, qkv_params *ps, qkv_st_file *f)
{
    double worst = 0.0;
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *p = qkv_params_at(ps, i);
        char name[600];
        snprintf(name, sizeof name, "grad.%s", p->name);
        qkv_tensor *want = qkv_st_load(ctx, f, name);
        double d = want ? max_rel_diff_buf(p->grad, want) : INFINITY;
        if (!(d <= worst) && d > 2e-5)
            fprintf(stderr, "  %s: max rel diff %.3g\n", name, d);
        worst = fmax(worst, d);
    }
    return worst;
}

static void torch_parity(const char *fixture)
{
    qkv_st_file *f = fixture_open(fixture);
    REQUIRE(f, "no fixture %s", fixture);
    qkv_tf_config cfg = tiny_torch;
    cfg.norm_first = atoi(qkv_st_meta(f, "norm_first"));
    int float_masks = atoi(qkv_st_meta(f, "float_masks"));
    qkv_params *ps = qkv_params_new();
    qkv_transformer m;
    REQUIRE(qkv_transformer_init(&m, ps, "", &cfg) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_params_load_file(ps, f, fixture, 0) == QKV_OK, "%s", qkv_error());

    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *src_sbe = qkv_requires_grad(fixture_get(ctx, f, "src_sbe"));
    qkv_tensor *tgt = qkv_requires_grad(fixture_get(ctx, f, "tgt"));
    /* (S, B, E) read through a permuted, non-contiguous view */
    qkv_tensor *src = qkv_permute(ctx, src_sbe, (int[]){1, 0, 2});
    CHECK(src && !qkv_is_contiguous(src), "src should be a strided view");
    qkv_tf_masks mk = {.src_mask = opt_get(ctx, f, "src_mask"),
                       .tgt_mask = opt_get(ctx, f, "tgt_mask"),
                       .memory_mask = opt_get(ctx, f, "memory_mask"),
                       .src_key_padding_mask = opt_get(ctx, f, "src_key_padding_mask"),
                       .tgt_key_padding_mask = opt_get(ctx, f, "tgt_key_padding_mask"),
                       .memory_key_padding_mask = opt_get(ctx, f, "memory_key_padding_mask"),
                       .bool_masks = !float_masks};
    qkv_tensor *out = qkv_transformer_forward(ctx, &m, src, tgt, &mk);
    qkv_tensor *gout = fixture_get(ctx, f, "gout");
    REQUIRE(out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK, "%s", qkv_error());
    /* forward: a few float32 roundings per sublayer over 4 blocks */
    CHECK_TENSOR(out, fixture_get(ctx, f, "out"), 1e-5);
    /* backward through 4 blocks and 2 final norms: layer norm's gradient
     * divides by the standard deviation, which amplifies rounding */
    CHECK_GRADBUF(src_sbe->grad, fixture_get(ctx, f, "grad_src_sbe"), 5e-5);
    CHECK_GRADBUF(tgt->grad, fixture_get(ctx, f, "grad_tgt"), 5e-5);
    double d = param_grads_diff(ctx, ps, f);
    CHECK(d <= 5e-5, "%s: parameter gradients: max rel diff %.3g > 5e-5", fixture, d);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(f);
}

TEST(transformer_parity_post_bool_masks) { torch_parity("transformer_post_bool_masks"); }
TEST(transformer_parity_post_float_masks) { torch_parity("transformer_post_float_masks"); }
TEST(transformer_parity_pre_bool_masks) { torch_parity("transformer_pre_bool_masks"); }
TEST(transformer_parity_pre_float_masks) { torch_parity("transformer_pre_float_masks"); }

static int64_t *fixture_ids(qkv_st_file *f, const char *name, int64_t *n)
{
    int64_t i = qkv_st_find(f, name);
    if (i < 0)
        return NULL;
    *n = qkv_st_numel(f, i);
    int64_t *ids = malloc((size_t)*n * sizeof *ids);
    if (ids && qkv_st_read_i64(f, i, ids) != QKV_OK) {
        free(ids);
        return NULL;
    }
    return ids;
}

/* The book's model (d2l names, valid lengths, sqrt(E), positions) against
 * a PyTorch version written from d2l's definitions. */
TEST(transformer_parity_book_seq2seq)
{
    qkv_st_file *f = fixture_open("transformer_book_seq2seq");
    REQUIRE(f, "no fixture");
    qkv_tf_config cfg = {.layout = QKV_TF_D2L, .d_model = 8, .n_heads = 2, .d_ffn = 16,
                         .n_enc = 2, .n_dec = 2};
    qkv_params *ps = qkv_params_new();
    qkv_seq2seq m;
    REQUIRE(qkv_seq2seq_init(&m, ps, &cfg, 11, 13) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "%s", qkv_error());
    /* strict apart from the fixture's own tensors: every model key exists */
    REQUIRE(qkv_params_load_file(ps, f, "book", 0) == QKV_OK, "%s", qkv_error());
    CHECK(qkv_params_find(ps, "encoder.blks.block1.attention.W_q.weight") &&
              qkv_params_find(ps, "decoder.blks.block0.addnorm3.ln.bias") &&
              qkv_params_find(ps, "decoder.dense.weight"),
          "d2l's state_dict names");
    int64_t ns = 0, nv = 0, nd = 0;
    int64_t *src = fixture_ids(f, "src", &ns), *valid = fixture_ids(f, "src_valid", &nv);
    int64_t *dec = fixture_ids(f, "dec_in", &nd);
    REQUIRE(src && valid && dec && nv == 3, "ids");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *out = qkv_seq2seq_forward(ctx, &m, src, valid, 3, ns / 3, dec, nd / 3, NULL);
    qkv_tensor *gout = fixture_get(ctx, f, "gout");
    REQUIRE(out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK, "%s", qkv_error());
    CHECK_TENSOR(out, fixture_get(ctx, f, "out"), 1e-5);
    double d = param_grads_diff(ctx, ps, f);
    CHECK(d <= 5e-5, "parameter gradients: max rel diff %.3g > 5e-5", d);
    free(src);
    free(valid);
    free(dec);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(f);
}

/* ---- gradient check ---- */

typedef struct {
    qkv_transformer m;
    qkv_tf_masks mk;
} gc_model;

static qkv_tensor *forward_gc(qkv_ctx *ctx, qkv_tensor **in, void *ud)
{
    gc_model *g = ud;
    /* the source arrives (S, B, E): a transposed view, as in the parity test */
    qkv_tensor *src = qkv_transpose(ctx, in[0], 0, 1);
    qkv_tf_masks mk = g->mk;
    mk.src_key_padding_mask = qkv_from_data(
        ctx, 2, (int64_t[]){2, 3}, (float[]){0, 0, 0, 0, 0, 1});
    return qkv_transformer_forward(ctx, &g->m, src, in[1], &mk);
}

static void gradcheck_layout(qkv_tf_layout layout, int norm_first)
{
    qkv_params *ps = qkv_params_new();
    gc_model g = {.mk = {.bool_masks = 1, .tgt_causal = 1}};
    qkv_tf_config cfg = tiny_torch;
    cfg.layout = layout;
    cfg.norm_first = norm_first;
    cfg.n_enc = cfg.n_dec = 1;
    /* GELU: ReLU's kink would meet the finite differences' steps */
    cfg.activation = QKV_ACT_GELU;
    REQUIRE(qkv_transformer_init(&g.m, ps, "", &cfg) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 7);
    qkv_transformer_reset(&g.m, &r);
    gc_input in[2] = {gc_rand(&r, 3, (int64_t[]){3, 2, 8}, -1, 1, true),
                      gc_rand(&r, 3, (int64_t[]){2, 4, 8}, -1, 1, true)};
    /* float32 central differences through layer norms: 1e-2 is the usual
     * bound; a wrong backward gives errors of order 1 */
    CHECK_GRAD(forward_gc, 2, in, &g, 2e-2);
    gc_free(2, in);
    qkv_params_free(ps);
}

TEST(transformer_gradcheck_torch_post) { gradcheck_layout(QKV_TF_TORCH, 0); }
TEST(transformer_gradcheck_torch_pre) { gradcheck_layout(QKV_TF_TORCH, 1); }
TEST(transformer_gradcheck_d2l_post) { gradcheck_layout(QKV_TF_D2L, 0); }
TEST(transformer_gradcheck_d2l_pre) { gradcheck_layout(QKV_TF_D2L, 1); }

/* ---- incremental decoding ---- */

static void incremental_equals_full(qkv_tf_layout layout, int norm_first)
{
    qkv_params *ps = qkv_params_new();
    qkv_transformer m;
    qkv_tf_config cfg = tiny_torch;
    cfg.layout = layout;
    cfg.norm_first = norm_first;
    REQUIRE(qkv_transformer_init(&m, ps, "", &cfg) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 11);
    qkv_transformer_reset(&m, &r);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_grad_enabled(ctx, 0);
    qkv_set_training(ctx, 0);
    int64_t b = 2, s = 5, t = 6, valid[2] = {5, 2};
    qkv_tensor *src = qkv_randn(ctx, 3, (int64_t[]){b, s, 8}, 0, 1);
    qkv_tensor *tgt = qkv_randn(ctx, 3, (int64_t[]){b, t, 8}, 0, 1);
    qkv_tf_masks mk = {.src_valid_lens = valid, .tgt_causal = 1};
    qkv_tensor *memory = qkv_transformer_encode(ctx, &m, src, &mk);
    qkv_tensor *full = qkv_transformer_decode(ctx, &m, tgt, memory, &mk);
    qkv_tf_cache c;
    REQUIRE(full && qkv_tf_cache_init(ctx, &m, &c, memory, t, &mk) == QKV_OK, "%s", qkv_error());
    double worst = 0.0;
    for (int64_t i = 0; i < t; i++) {
        qkv_tensor *x = qkv_contiguous(ctx, qkv_slice(ctx, tgt, 1, i, i + 1, 1));
        qkv_tensor *y = qkv_transformer_decode_step(ctx, &m, &c, x);
        REQUIRE(y, "%s", qkv_error());
        worst = fmax(worst, max_rel_diff(y, qkv_slice(ctx, full, 1, i, i + 1, 1)));
    }
    /* the same sums in other orders (one query against a cache) */
    CHECK(worst <= 1e-5, "incremental vs full: max rel diff %.3g", worst);
    CHECK(c.len == t && !qkv_transformer_decode_step(ctx, &m, &c, qkv_slice(ctx, tgt, 1, 0, 1, 1)),
          "a full cache is an error");
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

TEST(transformer_incremental_d2l_post) { incremental_equals_full(QKV_TF_D2L, 0); }
TEST(transformer_incremental_torch_pre) { incremental_equals_full(QKV_TF_TORCH, 1); }

TEST(transformer_bad_config)
{
    qkv_params *ps = qkv_params_new();
    qkv_transformer m;
    qkv_tf_config cfg = tiny_torch;
    cfg.n_heads = 3;
    CHECK(qkv_transformer_init(&m, ps, "", &cfg) == QKV_ERR_ARG, "heads must divide d_model");
    CHECK(strstr(qkv_error(), "heads 3"), "message: %s", qkv_error());
    qkv_params_free(ps);
}
