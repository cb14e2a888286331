/* test_transformer.c - the Transformer: parity with torch.nn.Transformer
 * (post- and pre-norm, bool and float masks, key padding; outputs, input
 * and parameter gradients) and with the book's translation model, both
 * evaluated by PyTorch in float64 at qkv's float32 inputs and weights, so
 * that what is measured is qkv's own rounding: the models' gradient check
 * (docs/testing.md); central differences for the layouts PyTorch lacks,
 * incremental decoding against full recomputation, and a few training
 * steps on the real corpus; the attention weights recorded while
 * translating (greedy and beam). */
#include "test.h"

#include <sys/wait.h>
#include <unistd.h>

static const qkv_tf_config tiny_torch = {.layout = QKV_TF_TORCH, .d_model = 8, .n_heads = 2,
                                         .d_ffn = 16, .n_enc = 2, .n_dec = 2};

/* A fixture tensor as a mask, or NULL when the case has none. */
static qkv_tensor *opt_get(qkv_ctx *ctx, qkv_st_file *f, const char *name)
{
    return qkv_st_find(f, name) >= 0 ? qkv_st_load(ctx, f, name) : NULL;
}

/* Every parameter's gradient against grad.<name> (float64, tests/parity/
 * cases_transformer.py). */
static void check_param_grads(qkv_ctx *ctx, qkv_params *ps, qkv_st_file *f, const char *what,
                              double atol, double rtol)
{
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *p = qkv_params_at(ps, i);
        char name[600];
        snprintf(name, sizeof name, "grad.%s", p->name);
        test_note("%s: %s", what, name);
        CHECK_CLOSE_GRAD(p, fixture_get(ctx, f, name), atol, rtol);
    }
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
    qkv_tf_opts mk = {.src_mask = opt_get(ctx, f, "src_mask"),
                       .tgt_mask = opt_get(ctx, f, "tgt_mask"),
                       .memory_mask = opt_get(ctx, f, "memory_mask"),
                       .src_key_padding_mask = opt_get(ctx, f, "src_key_padding_mask"),
                       .tgt_key_padding_mask = opt_get(ctx, f, "tgt_key_padding_mask"),
                       .memory_key_padding_mask = opt_get(ctx, f, "memory_key_padding_mask"),
                       .src_mask_bool = !float_masks,
                       .tgt_mask_bool = !float_masks,
                       .memory_mask_bool = !float_masks,
                       .src_key_padding_bool = !float_masks,
                       .tgt_key_padding_bool = !float_masks,
                       .memory_key_padding_bool = !float_masks};
    qkv_tensor *out = qkv_transformer_forward(ctx, &m, src, tgt, &mk);
    qkv_tensor *gout = fixture_get(ctx, f, "gout");
    REQUIRE(out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK, "%s", qkv_error());
    /* against float64: a few float32 roundings per sublayer over 4 blocks;
     * backward through 4 blocks and 2 final norms, whose gradient divides by
     * the standard deviation, which amplifies rounding */
    CHECK_CLOSE(out, fixture_get(ctx, f, "out"), 2e-6, 1e-6);
    CHECK_CLOSE_GRAD(src_sbe, fixture_get(ctx, f, "grad_src_sbe"), 2e-6, 1e-6);
    CHECK_CLOSE_GRAD(tgt, fixture_get(ctx, f, "grad_tgt"), 2e-6, 1e-6);
    check_param_grads(ctx, ps, f, fixture, 1e-5, 1e-6);
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
    CHECK_CLOSE(out, fixture_get(ctx, f, "out"), 5e-6, 1e-6);
    check_param_grads(ctx, ps, f, "book", 2e-5, 1e-6);
    free(src);
    free(valid);
    free(dec);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(f);
}

/* ---- DETR's transformer ---- */

/* The largest |got - want| over a buffer laid out as want (for the report). */
static double max_abs_diff_buf(const float *got, const qkv_tensor *want)
{
    double worst = 0.0;
    for (int64_t i = 0; got && want && i < qkv_numel(want); i++)
        worst = fmax(worst, fabs((double)got[i] - qkv_get(want, i)));
    return worst;
}

/* qkv_detr_transformer_forward on DETR's names (layout QKV_TF_DETR, prefix
 * "transformer") against a PyTorch re-creation of facebookresearch/detr's
 * Transformer (tests/parity/cases_transformer.py; it gives detr's own
 * module's numbers bit for bit, checked outside the suite against detr's
 * models/transformer.py): 2 + 3 layers, E 16, 4 heads, FFN 32, the second
 * image padded, post- or pre-norm. Checked: hs (every decoder layer through
 * decoder.norm), the memory, and the gradients of src, pos, query_embed and
 * every parameter of sum(hs gout) + sum(memory gmem). */
static void detr_parity(const char *fixture)
{
    qkv_st_file *f = fixture_open(fixture);
    REQUIRE(f, "no fixture %s", fixture);
    int pre = atoi(qkv_st_meta(f, "norm_first"));
    qkv_tf_config cfg = {.layout = QKV_TF_DETR, .d_model = atoi(qkv_st_meta(f, "d_model")),
                         .n_heads = atoi(qkv_st_meta(f, "n_heads")),
                         .d_ffn = atoi(qkv_st_meta(f, "d_ffn")),
                         .n_enc = atoi(qkv_st_meta(f, "n_enc")),
                         .n_dec = atoi(qkv_st_meta(f, "n_dec")), .norm_first = pre};
    qkv_params *ps = qkv_params_new();
    qkv_transformer m;
    REQUIRE(qkv_transformer_init(&m, ps, "transformer", &cfg) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    /* every model key is in the file (which also holds the inputs) */
    REQUIRE(qkv_params_load_file(ps, f, fixture, 0) == QKV_OK, "%s", qkv_error());
    CHECK((qkv_params_find(ps, "transformer.encoder.norm.weight") != NULL) == pre &&
              qkv_params_find(ps, "transformer.decoder.norm.weight") &&
              qkv_params_find(ps, "transformer.decoder.layers.2.multihead_attn.in_proj_weight"),
          "DETR's names: encoder.norm only in pre-norm, decoder.norm always");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *src = qkv_requires_grad(fixture_get(ctx, f, "src"));
    qkv_tensor *pos = qkv_requires_grad(fixture_get(ctx, f, "pos"));
    qkv_tensor *qe = qkv_requires_grad(fixture_get(ctx, f, "query_embed"));
    qkv_tensor *memory = NULL;
    qkv_tensor *hs = qkv_detr_transformer_forward(ctx, &m, src, pos, fixture_get(ctx, f, "mask"),
                                                  qe, &memory);
    qkv_tensor *loss = qkv_add(
        ctx, qkv_sum_all(ctx, qkv_mul(ctx, hs, fixture_get(ctx, f, "gout"))),
        qkv_sum_all(ctx, qkv_mul(ctx, memory, fixture_get(ctx, f, "gmem"))));
    REQUIRE(loss && qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
    qkv_tensor *want_hs = fixture_get(ctx, f, "hs");
    /* forward: five layers of float32 rounding, ~1e-6 */
    CHECK_CLOSE(hs, want_hs, 1e-5, 1e-5);
    CHECK_CLOSE(memory, fixture_get(ctx, f, "memory"), 1e-5, 1e-5);
    /* backward through five layers of layer norms: ~1e-5 */
    double worst = 0.0;
    const char *in_names[3] = {"grad_src", "grad_pos", "grad_query_embed"};
    qkv_tensor *in[3] = {src, pos, qe};
    for (int i = 0; i < 3; i++) {
        qkv_tensor *want = fixture_get(ctx, f, in_names[i]);
        CHECK_CLOSE_BUF(in[i]->grad, want, 1e-4, 1e-4);
        worst = fmax(worst, max_abs_diff_buf(in[i]->grad, want));
    }
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *p = qkv_params_at(ps, i);
        char name[600];
        snprintf(name, sizeof name, "grad.%s", p->name);
        qkv_tensor *want = fixture_get(ctx, f, name);
        double want_max = 0.0, got_max = 0.0;
        for (int64_t k = 0; want && k < qkv_numel(want); k++) {
            want_max = fmax(want_max, fabs(qkv_get(want, k)));
            got_max = fmax(got_max, fabs(p->grad[k]));
        }
        if (want_max < 1e-5) {
            /* zero in exact arithmetic: post-norm, the first decoder layer's
             * self-attention has all-zero values (tgt = 0), so its output is
             * the value bias whatever in_proj_weight holds; PyTorch's 1e-7
             * is rounding. qkv's must be as small. */
            CHECK_SCALAR(got_max, 0.0, 1e-5, 0.0);
            continue;
        }
        if (!check_close_buf(__FILE__, __LINE__, name, p->grad, want, 1e-4, 1e-4))
            break;
        worst = fmax(worst, max_abs_diff_buf(p->grad, want));
    }
    double hs_max = 0.0;
    for (int64_t i = 0; i < qkv_numel(want_hs); i++)
        hs_max = fmax(hs_max, fabs(qkv_get(want_hs, i)));
    fprintf(stderr, "    hs max |diff| %.2g (max |hs| %.2g), gradients max |diff| %.2g\n",
            max_abs_diff_buf(hs->data, want_hs), hs_max, worst);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(f);
}

TEST(transformer_detr_parity_post_norm) { detr_parity("transformer_detr_post"); }
TEST(transformer_detr_parity_pre_norm) { detr_parity("transformer_detr_pre"); }

/* Intermediate outputs: layer i's entry is what a decoder cut after layer
 * i gives (the same parameters, through the final norm when the layout has
 * one), bit for bit, and the last is the output; for the torch layout
 * (final norm) and d2l's (none). */
static void intermediates_are_shorter_decoders(qkv_tf_layout layout)
{
    qkv_params *ps = qkv_params_new();
    qkv_transformer m;
    qkv_tf_config cfg = tiny_torch;
    cfg.layout = layout;
    cfg.n_dec = 3;
    REQUIRE(qkv_transformer_init(&m, ps, "", &cfg) == QKV_OK && qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    qkv_transformer_reset(&m, &r);
    /* layer norms away from 1 and 0, so that a missing final norm shows */
    for (int64_t i = 0; i < qkv_params_count(ps); i++)
        if (strstr(qkv_params_at(ps, i)->name, "norm"))
            qkv_init_uniform(&r, qkv_params_at(ps, i), 0.5f, 1.5f);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *src = qkv_randn(ctx, 3, (int64_t[]){2, 5, 8}, 0, 1);
    qkv_tensor *tgt = qkv_randn(ctx, 3, (int64_t[]){2, 4, 8}, 0, 1);
    qkv_tensor *inter = NULL;
    qkv_tf_opts o = {.tgt_causal = 1, .dec_intermediate = &inter};
    qkv_tensor *memory = qkv_transformer_encode(ctx, &m, src, &o);
    qkv_tensor *out = qkv_transformer_decode(ctx, &m, tgt, memory, &o);
    REQUIRE(out && inter, "%s", qkv_error());
    CHECK(inter->ndim == 4 && inter->shape[0] == 3 && inter->shape[1] == 2 &&
              inter->shape[2] == 4 && inter->shape[3] == 8,
          "intermediate outputs should be (3, 2, 4, 8)");
    for (int64_t k = 1; k <= 3; k++) {
        qkv_transformer cut = m;
        cut.cfg.n_dec = k;
        qkv_tensor *want = qkv_transformer_decode(ctx, &cut, tgt, memory, &(qkv_tf_opts){.tgt_causal = 1});
        qkv_tensor *got = qkv_reshape(ctx, qkv_slice(ctx, inter, 0, k - 1, k, 1), 3,
                                      (int64_t[]){2, 4, 8});
        CHECK_CLOSE(got, want, 0.0, 0.0);
    }
    CHECK_CLOSE(qkv_reshape(ctx, qkv_slice(ctx, inter, 0, 2, 3, 1), 3, (int64_t[]){2, 4, 8}),
                out, 0.0, 0.0);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

TEST(transformer_intermediate_outputs_torch) { intermediates_are_shorter_decoders(QKV_TF_TORCH); }
TEST(transformer_intermediate_outputs_d2l) { intermediates_are_shorter_decoders(QKV_TF_D2L); }

/* ---- gradient check ---- */

typedef struct {
    qkv_transformer m;
    qkv_tf_opts mk;
} gc_model;

static qkv_tensor *forward_gc(qkv_ctx *ctx, qkv_tensor **in, void *ud)
{
    gc_model *g = ud;
    /* the source arrives (S, B, E): a transposed view, as in the parity test */
    qkv_tensor *src = qkv_transpose(ctx, in[0], 0, 1);
    qkv_tf_opts mk = g->mk;
    mk.src_key_padding_mask = qkv_from_data(
        ctx, 2, (int64_t[]){2, 3}, (float[]){0, 0, 0, 0, 0, 1});
    return qkv_transformer_forward(ctx, &g->m, src, in[1], &mk);
}

static void gradcheck_layout(qkv_tf_layout layout, int norm_first)
{
    qkv_params *ps = qkv_params_new();
    gc_model g = {.mk = {.src_key_padding_bool = 1, .tgt_causal = 1}};
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
    /* d2l's pre-norm blocks and GELU have no PyTorch reference: central
     * differences, whose float32 noise through two blocks of layer norms
     * is 8e-4 on gradients of 1 to 5 (measured; the parity tests above
     * hold the other layouts to 1e-5) */
    CHECK_GRAD(forward_gc, 2, in, &g, 2e-3, 1e-3);
    gc_free(2, in);
    qkv_params_free(ps);
}

/* DETR: the positional terms and every intermediate output carry
 * gradients; src (B 2, S 3, E 8), pos (2, 3, 8), query_pos (T 2, E 8), the
 * second image padded, 1 + 2 layers, hs (2, 2, 2, 8). */
static qkv_tensor *forward_detr_gc(qkv_ctx *ctx, qkv_tensor **in, void *ud)
{
    qkv_tensor *mask = qkv_from_data(ctx, 2, (int64_t[]){2, 3}, (float[]){0, 0, 0, 0, 0, 1});
    return qkv_detr_transformer_forward(ctx, ud, in[0], in[1], mask, in[2], NULL);
}

static void gradcheck_detr(int norm_first)
{
    qkv_params *ps = qkv_params_new();
    qkv_transformer m;
    qkv_tf_config cfg = tiny_torch;
    cfg.layout = QKV_TF_DETR;
    cfg.norm_first = norm_first;
    cfg.n_enc = 1;
    cfg.activation = QKV_ACT_GELU; /* ReLU's kink would meet the steps */
    REQUIRE(qkv_transformer_init(&m, ps, "transformer", &cfg) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 13);
    qkv_transformer_reset(&m, &r);
    gc_input in[3] = {gc_rand(&r, 3, (int64_t[]){2, 3, 8}, -1, 1, true),
                      gc_rand(&r, 3, (int64_t[]){2, 3, 8}, -1, 1, true),
                      gc_rand(&r, 2, (int64_t[]){2, 8}, -1, 1, true)};
    /* a step of 3e-3: three layers and three final norms deep, float32
     * rounding dominates at 1e-3 (worst |analytic - numeric| 1.6e-3 on
     * gradients up to ~1) and truncation from 1e-2 on (2.2e-3, growing as
     * the step squared); at 3e-3 the worst is 0.38 of atol 1e-3 + rtol 1e-3
     * (measured). A wrong gradient is off by order 1. */
    CHECK_GRAD_STEP(forward_detr_gc, 3, in, &m, 3e-3, 1e-3, 1e-3);
    gc_free(3, in);
    qkv_params_free(ps);
}

TEST(transformer_gradcheck_detr_post) { gradcheck_detr(0); }
TEST(transformer_gradcheck_detr_pre) { gradcheck_detr(1); }

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
    qkv_tf_opts mk = {.src_valid_lens = valid, .tgt_causal = 1};
    qkv_tensor *memory = qkv_transformer_encode(ctx, &m, src, &mk);
    qkv_tensor *full = qkv_transformer_decode(ctx, &m, tgt, memory, &mk);
    qkv_tf_cache c;
    REQUIRE(full && qkv_tf_cache_init(ctx, &m, &c, memory, t, &mk) == QKV_OK, "%s", qkv_error());
    for (int64_t i = 0; i < t; i++) {
        qkv_tensor *x = qkv_contiguous(ctx, qkv_slice(ctx, tgt, 1, i, i + 1, 1));
        qkv_tensor *y = qkv_transformer_decode_step(ctx, &m, &c, x);
        REQUIRE(y, "%s", qkv_error());
        /* the same sums in other orders (one query against a cache): the
         * outputs are layer-normed, of size 1, so rounding is absolute
         * (1.8e-7 with OpenBLAS's Haswell kernels, their FMAs) */
        test_note("step %lld", (long long)i);
        CHECK_CLOSE(y, qkv_slice(ctx, full, 1, i, i + 1, 1), 1e-6, 1e-6);
    }
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

/* ---- training on the real corpus ---- */

/* A few Adam steps of the book's model on fra.txt's first pairs: the masked
 * cross-entropy falls, as in train_seq2seq's first epochs. */
TEST(transformer_training_loss_falls)
{
    qkv_nmt_data d = {0};
    qkv_seq2seq m;
    qkv_params *ps;
    if (!test_book_seq2seq(&d, &m, &ps, 0.1f, 3))
        return;
    int64_t bos = qkv_vocab_id(d.tgt_vocab, "<bos>"), pad = qkv_vocab_id(d.tgt_vocab, "<pad>");
    qkv_optim *opt = qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_ADAM, .lr = 0.005f});
    qkv_ctx *ctx = qkv_ctx_new();
    /* the book's model is too small to gain from threads */
    int threads = qkv_threads();
    qkv_set_threads(1);
    enum { B = 64, T = 10, STEPS = 16 };
    static int64_t dec_in[B * T];
    qkv_ce_opts ce = {.ignore_index = pad, .reduction = QKV_REDUCE_SUM};
    double first = 0, last = 0;
    for (int s = 0; s < STEPS; s++) {
        int64_t row0 = (s % 4) * B; /* four batches in turn */
        const int64_t *src = d.src + row0 * T, *tgt = d.tgt + row0 * T;
        for (int i = 0; i < B; i++) {
            dec_in[i * T] = bos;
            memcpy(dec_in + i * T + 1, tgt + i * T, (T - 1) * sizeof(int64_t));
        }
        qkv_tensor *logits = qkv_seq2seq_forward(ctx, &m, src, d.src_valid + row0, B, T, dec_in,
                                                 T, NULL);
        qkv_tensor *loss = qkv_cross_entropy(
            ctx, qkv_reshape(ctx, logits, 2, (int64_t[]){B * T, m.tgt_vocab}), tgt, &ce);
        REQUIRE(loss && qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
        if (s < 4)
            first += loss->data[0];
        if (s >= STEPS - 4)
            last += loss->data[0];
        qkv_clip_grad_norm(ps, 1.0f);
        qkv_optim_step(opt);
        qkv_params_zero_grad(ps);
        qkv_ctx_reset(ctx);
    }
    /* d2l's run goes from 0.44 to 0.18 (its loss) in ten epochs; four passes
     * over four batches already take off a third */
    CHECK(last < 0.67 * first, "loss of the four batches: %.1f at first, %.1f after %d steps",
          first, last, STEPS);
    fprintf(stderr, "    loss of four batches: %.1f, after %d steps %.1f\n", first, STEPS, last);
    qkv_set_threads(threads);
    qkv_ctx_free(ctx);
    qkv_optim_free(opt);
    qkv_params_free(ps);
    qkv_nmt_free(&d);
}

/* ---- the command line and the PyTorch export ---- */

/* A short `qkv train transformer`, then `qkv translate` and the PyTorch
 * model that scripts/export_transformer.py builds from the same file must
 * print the same translations of the book's sentences. */
TEST(transformer_cli_train_translate_export)
{
    char dir[] = "/tmp/qkv_tf_XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    static char out[16384], want[4096], got[4096];
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "QKV_THREADS=1 QKV_PROGRESS=0 %s train transformer --examples 200 --epochs 12 "
             "--out-dir %s 2>&1",
             test_qkv_bin(), dir);
    int rc = test_run(cmd, out, sizeof out);
    REQUIRE(rc == 0, "train: exit %d\n%s", rc, out);
    CHECK(strstr(out, "epoch 10/12: loss") && strstr(out, "go . => "), "train output:\n%s", out);
    snprintf(cmd, sizeof cmd, "%s/metrics.jsonl", dir);
    CHECK(access(cmd, R_OK) == 0, "no metrics.jsonl");
    snprintf(cmd, sizeof cmd,
             "QKV_THREADS=1 %s translate --model %s/model.safetensors \"go .\" \"i lost .\" "
             "\"he's calm .\" \"i'm home .\" --attention %s/a.png 2>&1",
             test_qkv_bin(), dir, dir);
    rc = test_run(cmd, got, sizeof got);
    CHECK(rc == 0, "translate: exit %d\n%s", rc, got);
    snprintf(cmd, sizeof cmd, "%s/a-decoder-cross.png", dir);
    CHECK(access(cmd, R_OK) == 0, "no heatmap");
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 scripts/export_transformer.py %s/model.safetensors 2>&1", dir);
    rc = test_run(cmd, want, sizeof want);
    REQUIRE(rc == 0, "export_transformer.py: exit %d\n%s", rc, want);
    /* translate also prints the heatmaps it wrote: compare the "=>" lines */
    char *lines[2][8];
    int nl[2] = {0, 0};
    char *texts[2] = {want, got};
    for (int k = 0; k < 2; k++)
        for (char *l = strtok(texts[k], "\n"); l && nl[k] < 8; l = strtok(NULL, "\n"))
            if (strstr(l, " => "))
                lines[k][nl[k]++] = l;
    REQUIRE(nl[0] == 4 && nl[1] == 4, "4 translations each: %d, %d", nl[0], nl[1]);
    for (int i = 0; i < 4; i++)
        CHECK(!strcmp(lines[0][i], lines[1][i]), "PyTorch '%s' vs qkv '%s'", lines[0][i],
              lines[1][i]);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

/* ---- decoding ---- */

/* log p(y) by teacher forcing, full recomputation (no cache). */
static double seq_logprob(qkv_ctx *ctx, const qkv_seq2seq *m, const int64_t *src, int64_t s,
                          int64_t valid, const int64_t *y, int64_t n, int64_t bos)
{
    int64_t dec[8] = {bos};
    for (int64_t i = 1; i < n; i++)
        dec[i] = y[i - 1];
    qkv_tensor *lp = qkv_log_softmax(ctx, qkv_seq2seq_forward(ctx, m, src, &valid, 1, s, dec, n,
                                                              NULL));
    double sum = 0.0;
    for (int64_t i = 0; lp && i < n; i++)
        sum += lp->data[i * m->tgt_vocab + y[i]];
    qkv_ctx_reset(ctx);
    return lp ? sum : NAN;
}

/* A beam as wide as every sequence is exhaustive search: with alpha 1 it
 * must return the sequence (ended by eos, or max_len long) of highest
 * log-probability per token,
 * found here by enumerating all of them. Greedy must match its own
 * step-by-step argmax. Seeds 9 and 20 are models whose greedy output is
 * not the best sequence (2 and 3 tokens best; greedy finds 3 and 0). */
static void beam_exact(uint64_t seed)
{
    enum { V = 5, S = 4, L = 3, BOS = 2, EOS = 3 };
    qkv_tf_config cfg = {.layout = QKV_TF_D2L, .d_model = 8, .n_heads = 2, .d_ffn = 16,
                         .n_enc = 1, .n_dec = 1};
    qkv_params *ps = qkv_params_new();
    qkv_seq2seq m;
    REQUIRE(qkv_seq2seq_init(&m, ps, &cfg, 6, V) == QKV_OK && qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, seed);
    qkv_seq2seq_reset(&m, &r);
    /* logits of order 1, so that sequences differ clearly */
    qkv_init_normal(&r, m.dense.weight, 0.0f, 0.5f);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_set_grad_enabled(ctx, 0);
    int64_t src[S] = {4, 5, 3, 1}, valid = 3;
    double best = -INFINITY;
    int64_t best_y[L], best_n = 0;
    for (int64_t code = 0; code < V * V * V; code++) {
        int64_t y[L] = {code % V, code / V % V, code / (V * V)}, n = L;
        for (int64_t i = 0; i < L; i++)
            if (y[i] == EOS) {
                n = i + 1;
                break;
            }
        /* a sequence ended early comes back with other trailing digits:
         * the same score again, harmless to the maximum */
        /* alpha 1: log-probability per token (eos counted) */
        double lp = seq_logprob(ctx, &m, src, S, valid, y, n, BOS) / (double)n;
        if (lp > best) {
            best = lp;
            best_n = y[n - 1] == EOS ? n - 1 : n;
            memcpy(best_y, y, sizeof y);
        }
    }
    int64_t out[L];
    int64_t k = qkv_seq2seq_translate(ctx, &m, src, S, valid, BOS, EOS, L, V * V * V, 1.0f, out,
                                      NULL);
    REQUIRE(k >= 0, "%s", qkv_error());
    fprintf(stderr, "    exhaustive best: %lld tokens, log p per token %.4f\n", (long long)best_n,
            best);
    CHECK(k == best_n && !memcmp(out, best_y, (size_t)k * sizeof(int64_t)),
          "beam: %lld tokens, exhaustive best %lld tokens (log p %.4f)", (long long)k,
          (long long)best_n, best);
    /* greedy: at every step the argmax given its own prefix */
    k = qkv_seq2seq_translate(ctx, &m, src, S, valid, BOS, EOS, L, 1, 0.0f, out, NULL);
    REQUIRE(k >= 0, "%s", qkv_error());
    int64_t ye[L + 1];
    memcpy(ye, out, (size_t)k * sizeof(int64_t));
    ye[k] = EOS;
    fprintf(stderr, "    greedy: %lld tokens, log p %.4f\n", (long long)k,
            seq_logprob(ctx, &m, src, S, valid, ye, k < L ? k + 1 : L, BOS));
    for (int64_t t = 0; t <= k && t < L; t++) {
        int64_t dec[L + 1] = {BOS};
        for (int64_t i = 0; i < t; i++)
            dec[i + 1] = out[i];
        qkv_tensor *lg = qkv_seq2seq_forward(ctx, &m, src, &valid, 1, S, dec, t + 1, NULL);
        REQUIRE(lg, "%s", qkv_error());
        int64_t arg = 0;
        for (int64_t v = 1; v < V; v++)
            if (lg->data[t * V + v] > lg->data[t * V + arg])
                arg = v;
        CHECK(arg == (t < k ? out[t] : EOS), "greedy step %lld: %lld, full forward says %lld",
              (long long)t, (long long)(t < k ? out[t] : EOS), (long long)arg);
        qkv_ctx_reset(ctx);
    }
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

TEST(transformer_beam_search_is_exact_when_wide)
{
    beam_exact(9);
    beam_exact(20);
}

/* `qkv forward --arch transformer` on a pre-norm nn.Transformer's
 * state_dict, sequence-first inputs and bool masks. */
TEST(transformer_cli_forward)
{
    const char *dir = getenv("QKV_FIXTURES");
    REQUIRE(dir, "QKV_FIXTURES is not set");
    char out_path[] = "/tmp/qkv_tf_fw_XXXXXX";
    int fd = mkstemp(out_path);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    char cmd[4096];
    static char out[8192];
    snprintf(cmd, sizeof cmd,
             "%s forward --arch transformer --weights %s/transformer_forward_weights.safetensors "
             "--input %s/transformer_forward_input.safetensors --output %s 2>&1",
             test_qkv_bin(), dir, dir, out_path);
    int rc = test_run(cmd, out, sizeof out);
    REQUIRE(rc == 0, "qkv forward: exit %d\n%s", rc, out);
    qkv_st_file *got = qkv_st_open(out_path), *want = fixture_open("transformer_forward_input");
    REQUIRE(got && want, "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    CHECK_CLOSE(qkv_st_load(ctx, got, "output"), fixture_get(ctx, want, "want_output"), 1e-6, 1e-6);
    qkv_ctx_free(ctx);
    qkv_st_close(got);
    qkv_st_close(want);
    unlink(out_path);
}

/* --resume continues bit for bit: 3 epochs straight, or 2 and then 1 more
 * from the checkpoint, write the same model file (on 101 pairs: two
 * batches an epoch, the second partial). */
TEST(transformer_cli_resume_is_exact)
{
    char dir[] = "/tmp/qkv_tf_res_XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    static char out[16384];
    char cmd[2048];
    const char *env = "QKV_THREADS=1 QKV_PROGRESS=0";
    snprintf(cmd, sizeof cmd,
             "%s %s train transformer --examples 100 --epochs 3 --out-dir %s/a >/dev/null 2>&1 && "
             "%s %s train transformer --examples 100 --epochs 2 --out-dir %s/b >/dev/null 2>&1 && "
             "%s %s train transformer --examples 100 --epochs 3 --resume --out-dir %s/b 2>&1",
             env, test_qkv_bin(), dir, env, test_qkv_bin(), dir, env, test_qkv_bin(), dir);
    int rc = test_run(cmd, out, sizeof out);
    REQUIRE(rc == 0, "train: exit %d\n%s", rc, out);
    CHECK(strstr(out, "resumed at epoch 2"), "resume output:\n%s", out);
    snprintf(cmd, sizeof cmd, "cmp -s %s/a/model.safetensors %s/b/model.safetensors", dir, dir);
    CHECK(system(cmd) == 0, "resumed model differs from the straight run");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

/* ---- the attention weights of a translation ---- */

/* Rows [0, t) x columns [0, k) of one (H, qmax, kmax) block of recorded
 * weights, as a (1, H, t, k) tensor to compare with the full forward's. */
static qkv_tensor *attn_rows(qkv_ctx *ctx, const float *got, int64_t h, int64_t qmax,
                             int64_t kmax, int64_t t, int64_t k)
{
    qkv_tensor *r = qkv_new(ctx, 4, (int64_t[]){1, h, t, k});
    for (int64_t i = 0; r && i < h; i++)
        for (int64_t a = 0; a < t; a++)
            for (int64_t b = 0; b < k; b++)
                r->data[(i * t + a) * k + b] = got[(i * qmax + a) * kmax + b];
    return r;
}

/* Nonzero entries of rows [t, qmax) of each of n (qmax, kmax) blocks. */
static int64_t nonzero_rows_from(const float *w, int64_t n, int64_t qmax, int64_t kmax, int64_t t)
{
    int64_t nz = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t a = t; a < qmax; a++)
            for (int64_t b = 0; b < kmax; b++)
                nz += w[(i * qmax + a) * kmax + b] != 0.0f;
    return nz;
}

/* The weights qkv_seq2seq_translate records, greedy and beam (which decodes
 * the chosen hypothesis again, teacher-forced), equal those of a full
 * causal forward on bos + its output (1e-5), one decoder row per step, the
 * eos step included, and zeros below; qkv_seq2seq_attention on greedy's
 * output gives greedy's weights bit for bit. 2 + 2 blocks, 2 heads; with
 * seed 19 greedy says 2 tokens and the beam 1, both ended by eos (3 and 2
 * decoder rows of 4), though the checks hold whatever they say. */
TEST(transformer_translate_attention_greedy_and_beam)
{
    enum { V = 7, S = 5, L = 4, H = 2, NL = 2, BOS = 2, EOS = 3 };
    qkv_tf_config cfg = {.layout = QKV_TF_D2L, .d_model = 8, .n_heads = H, .d_ffn = 16,
                         .n_enc = NL, .n_dec = NL};
    qkv_params *ps = qkv_params_new();
    qkv_seq2seq m;
    REQUIRE(qkv_seq2seq_init(&m, ps, &cfg, 6, V) == QKV_OK && qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 19);
    qkv_seq2seq_reset(&m, &r);
    qkv_init_normal(&r, m.dense.weight, 0.0f, 0.5f);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_set_grad_enabled(ctx, 0);
    int64_t src[S] = {4, 5, 1, 3, 1}, valid = 4;
    static struct {
        float enc[NL * H * S * S], self[NL * H * L * L], cross[NL * H * L * S];
    } buf[3]; /* greedy, beam, qkv_seq2seq_attention */
    qkv_seq2seq_attn at[3];
    for (int i = 0; i < 3; i++)
        at[i] = (qkv_seq2seq_attn){buf[i].enc, buf[i].self, buf[i].cross};
    int64_t out[2][L], k[2];
    for (int b = 0; b < 2; b++) {
        int beam = b ? 4 : 1;
        /* garbage in the buffers: rows beyond the output must come back 0 */
        memset(&buf[b], 0xff, sizeof buf[b]);
        k[b] = qkv_seq2seq_translate(ctx, &m, src, S, valid, BOS, EOS, L, beam, 0.75f, out[b],
                                     &at[b]);
        REQUIRE(k[b] >= 0, "beam %d: %s", beam, qkv_error());
        int64_t t = k[b] + 1 < L ? k[b] + 1 : L;
        int64_t dec_in[L] = {BOS};
        for (int64_t i = 1; i < t; i++)
            dec_in[i] = out[b][i - 1];
        qkv_tensor *ew[QKV_TF_MAX_LAYERS] = {0}, *sw[QKV_TF_MAX_LAYERS] = {0},
                   *cw[QKV_TF_MAX_LAYERS] = {0};
        qkv_tf_opts mk = {.enc_weights = ew, .dec_self_weights = sw, .dec_cross_weights = cw};
        REQUIRE(qkv_seq2seq_forward(ctx, &m, src, &valid, 1, S, dec_in, t, &mk), "%s",
                qkv_error());
        for (int l = 0; l < NL; l++) {
            test_note("beam %d, layer %d", beam, l);
            CHECK_CLOSE(attn_rows(ctx, at[b].enc + l * H * S * S, H, S, S, S, S), ew[l], 0, 1e-6);
            CHECK_CLOSE(attn_rows(ctx, at[b].dec_self + l * H * L * L, H, L, L, t, t), sw[l], 0,
                        1e-6);
            CHECK_CLOSE(attn_rows(ctx, at[b].dec_cross + l * H * L * S, H, L, S, t, S), cw[l],
                        0, 1e-6);
        }
        CHECK(nonzero_rows_from(at[b].dec_self, NL * H, L, L, t) == 0 &&
                  nonzero_rows_from(at[b].dec_cross, NL * H, L, S, t) == 0,
              "beam %d: rows beyond %lld are not zero", beam, (long long)t);
        qkv_ctx_reset(ctx);
    }
    /* the same rows again from the ids alone */
    memset(&buf[2], 0xff, sizeof buf[2]);
    int64_t t = qkv_seq2seq_attention(ctx, &m, src, S, valid, BOS, out[0], k[0], L, &at[2]);
    CHECK(t == (k[0] + 1 < L ? k[0] + 1 : L), "qkv_seq2seq_attention: %lld rows: %s",
          (long long)t, qkv_error());
    CHECK(!memcmp(&buf[2], &buf[0], sizeof buf[0]),
          "qkv_seq2seq_attention differs from greedy's recorded weights");
    qkv_ctx_reset(ctx);
    CHECK(qkv_seq2seq_attention(ctx, &m, src, S, valid, BOS, out[0], L + 1, L, &at[2]) == -1 &&
              strstr(qkv_error(), "qkv_seq2seq_attention"),
          "n > max_len accepted");
    CHECK(qkv_seq2seq_attention(ctx, &m, src, S, valid, BOS, out[0], k[0], L, NULL) == -1,
          "no buffers accepted");
    int64_t bad = V;
    CHECK(qkv_seq2seq_attention(ctx, &m, src, S, valid, BOS, &bad, 1, L, &at[2]) == -1 &&
              strstr(qkv_error(), "out of range"),
          "a token outside the vocabulary accepted: %s", qkv_error());
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

/* qkv_seq2seq_loss skips padding: the same loss and gradients as the
 * forward's logits through the masked cross-entropy (dropout off), also
 * with a source of valid length 0 (all its positions kept) and a row of
 * padding only (none kept). Tolerance 1e-5 of the largest gradient: sums
 * over fewer rows round differently. */
TEST(transformer_seq2seq_loss_skips_padding_exactly)
{
    enum { B = 12, T = 10 };
    qkv_nmt_data d = {0};
    qkv_seq2seq m;
    qkv_params *ps;
    if (!test_book_seq2seq(&d, &m, &ps, 0.0f, 9))
        return;
    test_seq2seq_gelu(&m);
    int64_t bos = qkv_vocab_id(d.tgt_vocab, "<bos>"), pad = qkv_vocab_id(d.tgt_vocab, "<pad>");
    int64_t src[B * T], valid[B], tgt[B * T], dec_in[B * T];
    for (int i = 0; i < B; i++) { /* every 40th pair: short and long ones */
        int64_t row = 40 * i;
        memcpy(src + i * T, d.src + row * T, T * sizeof(int64_t));
        memcpy(tgt + i * T, d.tgt + row * T, T * sizeof(int64_t));
        valid[i] = d.src_valid[row];
    }
    valid[3] = 0;                        /* a source of valid length 0 */
    for (int t = 0; t < T; t++)          /* a target of padding only */
        tgt[5 * T + t] = pad;
    for (int i = 0; i < B; i++) {
        dec_in[i * T] = bos;
        memcpy(dec_in + i * T + 1, tgt + i * T, (T - 1) * sizeof(int64_t));
    }
    int64_t n;
    float *g = qkv_params_grads(ps, &n);
    float *want = malloc((size_t)n * sizeof *want);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_ce_opts ce = {.ignore_index = pad, .reduction = QKV_REDUCE_SUM};
    qkv_tensor *logits = qkv_seq2seq_forward(ctx, &m, src, valid, B, T, dec_in, T, NULL);
    qkv_tensor *full = qkv_cross_entropy(
        ctx, qkv_reshape(ctx, logits, 2, (int64_t[]){B * T, m.tgt_vocab}), tgt, &ce);
    REQUIRE(full && qkv_backward(ctx, full) == QKV_OK, "%s", qkv_error());
    double want_loss = full->data[0];
    memcpy(want, g, (size_t)n * sizeof *want);
    qkv_ctx_reset(ctx);
    qkv_params_zero_grad(ps);
    qkv_tensor *loss = qkv_seq2seq_loss(ctx, &m, src, valid, B, T, dec_in, tgt, T, pad);
    REQUIRE(loss && qkv_numel(loss) == 1 && qkv_backward(ctx, loss) == QKV_OK, "%s",
            qkv_error());
    CHECK_SCALAR(loss->data[0], want_loss, 0, 1e-6);
    double scale = test_max_abs(want, n);
    test_note("largest gradient %.3g", scale);
    CHECK_CLOSE_N(g, want, n, 1e-5 * scale, 1e-6);
    /* all targets padding: zero, with a graph */
    qkv_ctx_reset(ctx);
    for (int i = 0; i < B * T; i++)
        tgt[i] = pad;
    loss = qkv_seq2seq_loss(ctx, &m, src, valid, B, T, dec_in, tgt, T, pad);
    CHECK(loss && loss->data[0] == 0.0f, "no target counts: %s", loss ? "nonzero" : qkv_error());
    CHECK(!qkv_seq2seq_loss(ctx, &m, src, NULL, B, T, dec_in, tgt, T, pad) &&
              strstr(qkv_error(), "seq2seq_loss"),
          "%s", qkv_error());
    free(want);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_nmt_free(&d);
}
