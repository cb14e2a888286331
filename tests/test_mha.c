/* test_mha.c - multi-head attention modules, additive and dot-product
 * attention modules and positional encodings: the book's shape example and
 * deterministic check, PyTorch parity (nn.MultiheadAttention and d2l's
 * modules re-created in PyTorch; forward, weights and every gradient)
 * through both attention paths, and gradient checks (step 5e-3: see
 * test_attention.c). Each check states atol and rtol, a few times the worst
 * error measured (docs/testing.md). */
#include "test.h"

#include "qkv_internal.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

static int meta_int(qkv_st_file *f, const char *key)
{
    const char *s = qkv_st_meta(f, key);
    return s ? atoi(s) : 0;
}

static qkv_tensor *fixture_opt(qkv_ctx *ctx, qkv_st_file *f, const char *name)
{
    return qkv_st_find(f, name) >= 0 ? fixture_get(ctx, f, name) : NULL;
}

/* Copies every parameter of ps from the fixture (same names). */
static bool load_params(qkv_params *ps, qkv_st_file *f)
{
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *p = qkv_params_at(ps, i);
        int64_t j = qkv_st_find(f, p->name);
        if (j < 0 || qkv_st_numel(f, j) != qkv_numel(p) || qkv_st_read_f32(f, j, p->data))
            return false;
    }
    return true;
}

static void check_param_grads(qkv_ctx *ctx, qkv_params *ps, qkv_st_file *f, const char *what,
                              double atol, double rtol)
{
    char name[256];
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *p = qkv_params_at(ps, i);
        snprintf(name, sizeof name, "grad_%s", p->name);
        test_note("%s: %s", what, name);
        qkv_tensor *want = fixture_get(ctx, f, name);
        /* d2l's key bias shifts every score of a query by q b_k: the
         * softmax ignores it, its gradient is 0 and PyTorch's holds only
         * rounding (4e-8); qkv's must be as small */
        size_t len = strlen(p->name);
        if (want && len >= 8 && !strcmp(p->name + len - 8, "W_k.bias"))
            want = qkv_zeros(ctx, want->ndim, want->shape);
        CHECK_CLOSE_GRAD(p, want, atol, rtol);
    }
}

/* loss = sum(out gout) [+ sum(w gw)], as the fixture's */
static qkv_status backward_loss(qkv_ctx *ctx, qkv_st_file *f, qkv_tensor *out, qkv_tensor *w)
{
    qkv_tensor *loss = qkv_sum_all(ctx, qkv_mul(ctx, out, fixture_get(ctx, f, "gout")));
    if (w)
        loss = qkv_add(ctx, loss, qkv_sum_all(ctx, qkv_mul(ctx, w, fixture_get(ctx, f, "gw"))));
    return loss ? qkv_backward(ctx, loss) : qkv_error_status();
}

static void parity_torch_mha(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    for (int unfused = 0; unfused < 2; unfused++) {
        char what[128];
        snprintf(what, sizeof what, "%s (unfused %d)", name, unfused);
        qkv_params *ps = qkv_params_new();
        qkv_nn_mha m;
        REQUIRE(qkv_nn_mha_init(&m, ps, "", meta_int(fx, "E"), meta_int(fx, "H"), 0.1f,
                                meta_int(fx, "bias"), meta_int(fx, "kdim"), meta_int(fx, "vdim"),
                                meta_int(fx, "batch_first")) == QKV_OK &&
                    qkv_params_alloc(ps) == QKV_OK && load_params(ps, fx),
                "%s: %s", what, qkv_error());
        qkv_ctx *ctx = qkv_ctx_new();
        qkv_set_training(ctx, 0);
        bool self = meta_int(fx, "self_attn");
        qkv_tensor *q = qkv_requires_grad(fixture_get(ctx, fx, self ? "x" : "q"));
        qkv_tensor *k = self ? q : qkv_requires_grad(fixture_get(ctx, fx, "k"));
        qkv_tensor *v = self ? q : qkv_requires_grad(fixture_get(ctx, fx, "v"));
        qkv_tensor *w = NULL;
        qkv_attn_opts o = {
            .attn_mask = fixture_opt(ctx, fx, "attn_mask"),
            .attn_mask_bool = meta_int(fx, "mask_bool"),
            .key_padding_mask = fixture_opt(ctx, fx, "kpm"),
            .key_padding_bool = 1,
            .causal = meta_int(fx, "causal"),
            .weights = meta_int(fx, "need_weights") ? &w : NULL,
            .average_attn_weights = meta_int(fx, "average"),
        };
        ctx->unfused = unfused;
        qkv_tensor *out = qkv_nn_mha_forward(ctx, &m, q, k, v, &o);
        test_note("%s", what);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 5e-7, 1e-6);
        if (o.weights)
            CHECK_CLOSE(w, fixture_get(ctx, fx, "weights"), 2e-8, 1e-6);
        if (out && backward_loss(ctx, fx, out, w) == QKV_OK) {
            CHECK_CLOSE_GRAD(q, fixture_get(ctx, fx, self ? "grad_x" : "grad_q"), 2e-6, 1e-6);
            if (!self) {
                CHECK_CLOSE_GRAD(k, fixture_get(ctx, fx, "grad_k"), 2e-6, 1e-6);
                CHECK_CLOSE_GRAD(v, fixture_get(ctx, fx, "grad_v"), 2e-6, 1e-6);
            }
            /* atol: in_proj_bias's key third is 0, to rounding */
            check_param_grads(ctx, ps, fx, what, 5e-6, 1e-6);
        } else {
            CHECK(0, "%s: %s", what, qkv_error());
        }
        qkv_ctx_free(ctx);
        qkv_params_free(ps);
    }
    qkv_st_close(fx);
}

TEST(parity_torch_mha)
{
    parity_torch_mha("mha_self");
    parity_torch_mha("mha_cross_masks");
    parity_torch_mha("mha_kvdim_batch_first");
    parity_torch_mha("mha_nobias_causal");
    parity_torch_mha("mha_kpm_no_weights");
}

static int fixture_lens(qkv_st_file *f, int64_t *lens, int64_t cap)
{
    int64_t i = qkv_st_find(f, "lens"), shape[QKV_MAX_DIMS];
    if (i < 0)
        return 0;
    int nd = qkv_st_shape(f, i, shape);
    return qkv_st_numel(f, i) <= cap && qkv_st_read_i64(f, i, lens) == QKV_OK ? nd : -1;
}

/* d2l modules: MHA (mha_d2l_*) and additive attention (d2l_additive_*) */
static void parity_d2l(const char *name, bool additive)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    int64_t lens[16];
    int lnd = fixture_lens(fx, lens, 16);
    for (int unfused = 0; unfused < 2; unfused++) {
        qkv_params *ps = qkv_params_new();
        qkv_nn_d2l_mha m;
        qkv_nn_additive_attention a;
        qkv_status s = additive
                           ? qkv_nn_additive_attention_init(&a, ps, "", 3, 5, 8, 0.1f)
                           : qkv_nn_d2l_mha_init(&m, ps, "", 3, 5, 4, 8, 2, 0.1f,
                                                 meta_int(fx, "bias"));
        REQUIRE(s == QKV_OK && qkv_params_alloc(ps) == QKV_OK && load_params(ps, fx), "%s: %s",
                name, qkv_error());
        qkv_ctx *ctx = qkv_ctx_new();
        qkv_set_training(ctx, 0);
        qkv_tensor *q = qkv_requires_grad(fixture_get(ctx, fx, "q"));
        qkv_tensor *k = qkv_requires_grad(fixture_get(ctx, fx, "k"));
        qkv_tensor *v = qkv_requires_grad(fixture_get(ctx, fx, "v"));
        qkv_attn_opts o = {.valid_lens = lens, .valid_lens_ndim = lnd};
        ctx->unfused = unfused;
        qkv_tensor *out = additive ? qkv_nn_additive_attention_forward(ctx, &a, q, k, v, &o)
                                   : qkv_nn_d2l_mha_forward(ctx, &m, q, k, v, &o);
        test_note("%s, unfused %d", name, unfused);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 2e-7, 1e-6);
        if (out && backward_loss(ctx, fx, out, NULL) == QKV_OK) {
            CHECK_CLOSE_GRAD(q, fixture_get(ctx, fx, "grad_q"), 1e-6, 1e-6);
            CHECK_CLOSE_GRAD(k, fixture_get(ctx, fx, "grad_k"), 1e-6, 1e-6);
            CHECK_CLOSE_GRAD(v, fixture_get(ctx, fx, "grad_v"), 1e-6, 1e-6);
            check_param_grads(ctx, ps, fx, name, 1e-6, 1e-6);
        } else {
            CHECK(0, "%s: %s", name, qkv_error());
        }
        qkv_ctx_free(ctx);
        qkv_params_free(ps);
    }
    qkv_st_close(fx);
}

TEST(parity_d2l_modules)
{
    parity_d2l("mha_d2l_lens1", false);
    parity_d2l("mha_d2l_lens2_bias", false);
    parity_d2l("d2l_additive_attention", true);
    parity_d2l("d2l_additive_attention_lens2", true);
}

/* d2l's MHA on self-attention (queries = keys = values) stacks W_q, W_k,
 * W_v into one GEMM and attends the packed projection; the unfused path
 * (held to PyTorch above) splits them. Output and every gradient, input
 * and parameters, agree (tol 1e-5), with both kinds of valid lengths and
 * with dropout (the same hash on both paths). */
TEST(d2l_mha_self_attention_packed_matches_split)
{
    int64_t B = 3, N = 7, E = 16, H = 4;
    int64_t lens1[3] = {7, 2, 5}, lens2[21];
    for (int i = 0; i < 21; i++)
        lens2[i] = i % N + 1; /* causal, as the decoder's training lengths */
    for (int kind = 0; kind < 3; kind++) {
        float *res[2][6];
        for (int unfused = 0; unfused < 2; unfused++) {
            qkv_params *ps = qkv_params_new();
            qkv_nn_d2l_mha m;
            REQUIRE(qkv_nn_d2l_mha_init(&m, ps, "", E, E, E, E, H, kind == 2 ? 0.3f : 0.0f, 0) ==
                            QKV_OK &&
                        qkv_params_alloc(ps) == QKV_OK,
                    "%s", qkv_error());
            qkv_rng r;
            qkv_rng_seed(&r, 5);
            qkv_nn_d2l_mha_reset(&m, &r);
            qkv_ctx *ctx = qkv_ctx_new();
            qkv_rng_seed(qkv_ctx_rng(ctx), 11);
            qkv_set_training(ctx, kind == 2);
            qkv_tensor *x = qkv_requires_grad(qkv_randn(ctx, 3, SHAPE(B, N, E), 0, 1));
            qkv_rng_seed(qkv_ctx_rng(ctx), 12);
            qkv_attn_opts o = {.valid_lens = kind == 1 ? lens2 : lens1,
                               .valid_lens_ndim = kind == 1 ? 2 : 1};
            ctx->unfused = unfused;
            qkv_tensor *out = qkv_nn_d2l_mha_forward(ctx, &m, x, x, x, &o);
            REQUIRE(out && qkv_backward(ctx, qkv_sum_all(ctx, qkv_mul(ctx, out, out))) == QKV_OK,
                    "%s", qkv_error());
            const qkv_tensor *t[6] = {out, x, m.W_q.weight, m.W_k.weight, m.W_v.weight,
                                      m.W_o.weight};
            for (int i = 0; i < 6; i++) {
                int64_t n = qkv_numel(t[i]);
                res[unfused][i] = malloc((size_t)n * sizeof(float));
                memcpy(res[unfused][i], i == 0 ? t[i]->data : t[i]->grad,
                       (size_t)n * sizeof(float));
            }
            qkv_ctx_free(ctx);
            qkv_params_free(ps);
        }
        const char *names[6] = {"out", "dx", "dW_q", "dW_k", "dW_v", "dW_o"};
        int64_t sizes[6] = {B * N * E, B * N * E, E * E, E * E, E * E, E * E};
        for (int i = 0; i < 6; i++) {
            test_note("kind %d: packed vs split %s", kind, names[i]);
            CHECK_CLOSE_N(res[0][i], res[1][i], sizes[i], 2e-6, 1e-6);
            free(res[0][i]);
            free(res[1][i]);
        }
    }
}

/* SPEC section 3: num_hiddens 100, 5 heads, batch 2, 4 queries, 6 pairs,
 * valid_lens [3, 2] -> (2, 4, 100) */
TEST(d2l_mha_shape_example)
{
    qkv_params *ps = qkv_params_new();
    qkv_nn_d2l_mha m;
    REQUIRE(qkv_nn_d2l_mha_init(&m, ps, "", 100, 100, 100, 100, 5, 0.5f, 0) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 3);
    qkv_nn_d2l_mha_reset(&m, &r);
    CHECK(qkv_params_find(ps, "W_q.weight") && qkv_params_find(ps, "W_o.weight") &&
              !qkv_params_find(ps, "W_q.bias") && qkv_params_count(ps) == 4,
          "state_dict names");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_tensor *x = qkv_full(ctx, 3, SHAPE(2, 4, 100), 1.0f);
    qkv_tensor *y = qkv_full(ctx, 3, SHAPE(2, 6, 100), 1.0f);
    int64_t lens[] = {3, 2};
    qkv_tensor *w = NULL;
    qkv_tensor *out = qkv_nn_d2l_mha_forward(ctx, &m, x, y, y,
                                             &(qkv_attn_opts){.valid_lens = lens,
                                                              .valid_lens_ndim = 1,
                                                              .weights = &w});
    REQUIRE(out, "%s", qkv_error());
    CHECK(out->ndim == 3 && out->shape[0] == 2 && out->shape[1] == 4 && out->shape[2] == 100,
          "output shape");
    CHECK(w && w->ndim == 4 && w->shape[1] == 5 && w->shape[3] == 6, "weights shape");
    /* batch 1 attends to its first 2 keys only */
    CHECK(w && w->data[(1 * 5 * 4) * 6 + 2] == 0.0f && w->data[(1 * 5 * 4) * 6] > 0, "lengths");
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

/* SPEC section 2: both attentions give [[2,3,4,5]] and [[10,11,12,13]] */
TEST(d2l_attention_modules_deterministic)
{
    qkv_params *ps = qkv_params_new();
    qkv_nn_additive_attention a;
    REQUIRE(qkv_nn_additive_attention_init(&a, ps, "", 2, 20, 8, 0.1f) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 4);
    qkv_nn_additive_attention_reset(&a, &r);
    qkv_nn_dot_attention d = {.dropout = 0.5f};
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_tensor *keys = qkv_full(ctx, 3, SHAPE(2, 10, 2), 1.0f);
    qkv_tensor *values = qkv_new(ctx, 3, SHAPE(2, 10, 4));
    for (int i = 0; i < 80; i++)
        values->data[i] = (float)(i % 40);
    qkv_tensor *qa = qkv_randn(ctx, 3, SHAPE(2, 1, 20), 0, 1);
    qkv_tensor *qd = qkv_randn(ctx, 3, SHAPE(2, 1, 2), 0, 1);
    int64_t lens[] = {2, 6};
    qkv_attn_opts o = {.valid_lens = lens, .valid_lens_ndim = 1};
    qkv_tensor *outs[2] = {qkv_nn_additive_attention_forward(ctx, &a, qa, keys, values, &o),
                           qkv_nn_dot_attention_forward(ctx, &d, qd, keys, values, &o)};
    const float want[2][4] = {{2, 3, 4, 5}, {10, 11, 12, 13}};
    for (int i = 0; i < 2; i++) {
        REQUIRE(outs[i], "%s", qkv_error());
        for (int b = 0; b < 2; b++)
            for (int j = 0; j < 4; j++)
                CHECK_SCALAR(outs[i]->data[b * 4 + j], want[b][j], 0, 5e-7);
    }
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

TEST(torch_mha_init_and_names)
{
    qkv_params *ps = qkv_params_new();
    qkv_nn_mha m, m2;
    REQUIRE(qkv_nn_mha_init(&m, ps, "attn", 16, 4, 0.0f, 1, 0, 0, 0) == QKV_OK &&
                qkv_nn_mha_init(&m2, ps, "cross", 16, 4, 0.0f, 1, 8, 12, 1) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    const char *names[] = {"attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                           "attn.out_proj.bias", "cross.q_proj_weight", "cross.k_proj_weight",
                           "cross.v_proj_weight", "cross.in_proj_bias"};
    for (int i = 0; i < 8; i++)
        CHECK(qkv_params_find(ps, names[i]), "missing %s", names[i]);
    CHECK(qkv_params_find(ps, "cross.k_proj_weight")->shape[1] == 8, "k_proj_weight (E, kdim)");
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    qkv_nn_mha_reset(&m, &r);
    /* xavier_uniform on (48, 16): bound sqrt(6 / 64); biases zero */
    float bound = sqrtf(6.0f / 64.0f), lo = 0, hi = 0;
    for (int64_t i = 0; i < 48 * 16; i++) {
        lo = fminf(lo, m.in_proj_weight->data[i]);
        hi = fmaxf(hi, m.in_proj_weight->data[i]);
    }
    CHECK(lo >= -bound && hi <= bound && hi > 0.8f * bound, "xavier range %g %g", lo, hi);
    for (int i = 0; i < 16; i++)
        CHECK(m.in_proj_bias->data[i] == 0 && m.out_proj.bias->data[i] == 0, "bias not zero");
    CHECK(fabsf(m.out_proj.weight->data[3]) <= 0.25f, "out_proj bound 1/sqrt(16)");
    CHECK(qkv_nn_mha_init(&m, ps, "bad", 10, 3, 0, 1, 0, 0, 0) != QKV_OK, "10 / 3 heads accepted");
    qkv_params_free(ps);
}

/* ---- gradient checks: MHA and additive attention (unfused and fused) ---- */

typedef struct {
    qkv_nn_mha *mha;
    qkv_nn_additive_attention *add;
    qkv_params *ps;
    int unfused;
} gc_mods;

static qkv_tensor *f_mha(qkv_ctx *c, qkv_tensor **t, void *u)
{
    gc_mods *g = u;
    static const int64_t lens[] = {2, 3};
    c->unfused = g->unfused;
    qkv_tensor *out = qkv_nn_mha_forward(c, g->mha, t[0], t[1], t[1],
                                         &(qkv_attn_opts){.valid_lens = lens,
                                                          .valid_lens_ndim = 1});
    return out;
}

static qkv_tensor *f_additive(qkv_ctx *c, qkv_tensor **t, void *u)
{
    gc_mods *g = u;
    static const int64_t lens[] = {1, 3};
    return qkv_nn_additive_attention_forward(c, g->add, t[0], t[1], t[2],
                                             &(qkv_attn_opts){.valid_lens = lens,
                                                              .valid_lens_ndim = 1});
}

TEST(gradcheck_mha_and_additive)
{
    qkv_rng r;
    qkv_rng_seed(&r, 31);
    qkv_params *ps = qkv_params_new();
    qkv_nn_mha m;
    qkv_nn_additive_attention a;
    REQUIRE(qkv_nn_mha_init(&m, ps, "m", 4, 2, 0.0f, 1, 0, 0, 1) == QKV_OK &&
                qkv_nn_additive_attention_init(&a, ps, "a", 3, 2, 5, 0.0f) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_nn_mha_reset(&m, &r);
    qkv_nn_additive_attention_reset(&a, &r);
    gc_mods g = {&m, &a, ps, 0};
    /* query (2, 3, 4), key = value (2, 4, 4), batch first (parameter
     * gradients are held to PyTorch's by the parity tests) */
    gc_input in[2] = {gc_rand(&r, 3, SHAPE(2, 3, 4), -2, 2, true),
                      gc_rand(&r, 3, SHAPE(2, 4, 4), -2, 2, true)};
    for (int unfused = 0; unfused < 2; unfused++) {
        g.unfused = unfused;
        test_note("mha, unfused %d", unfused);
        CHECK_GRAD_STEP(f_mha, 2, in, &g, 5e-3, 5e-6, 1e-3);
    }
    gc_free(2, in);
    gc_input ia[3] = {gc_rand(&r, 3, SHAPE(2, 3, 2), -2, 2, true),
                      gc_rand(&r, 3, SHAPE(2, 4, 3), -2, 2, true),
                      gc_rand(&r, 3, SHAPE(2, 4, 2), -2, 2, true)};
    test_note("additive attention");
    CHECK_GRAD_STEP(f_additive, 3, ia, &g, 5e-3, 1e-5, 1e-3);
    gc_free(3, ia);
    qkv_params_free(ps);
}

/* ---- positional encodings ---- */

TEST(posenc_sinusoidal_and_learned)
{
    qkv_nn_posenc pe;
    REQUIRE(qkv_nn_posenc_sin_init(&pe, 6, 0.0f, 0) == QKV_OK && pe.max_len == 1000, "init");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 3, SHAPE(1, 60, 6));
    qkv_tensor *y = qkv_nn_posenc_forward(ctx, &pe, x);
    REQUIRE(y, "%s", qkv_error());
    for (int i = 0; i < 60; i += 7)
        for (int j = 0; j < 6; j += 2) {
            double a = i / pow(10000.0, j / 6.0);
            CHECK_SCALAR(y->data[i * 6 + j], sin(a), 5e-7, 1e-6);
            CHECK_SCALAR(y->data[i * 6 + j + 1], cos(a), 5e-7, 1e-6);
        }
    CHECK(!qkv_nn_posenc_forward(ctx, &pe, qkv_zeros(ctx, 3, SHAPE(1, 1001, 6))), "too long");
    /* learnable: x + P[:, :T], gradient reaches pos_embedding */
    qkv_params *ps = qkv_params_new();
    qkv_nn_posenc lp;
    REQUIRE(qkv_nn_posenc_learned_init(&lp, ps, "", 4, 0.0f, 10) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 6);
    qkv_nn_posenc_reset(&lp, &r);
    x = qkv_randn(ctx, 3, SHAPE(2, 3, 4), 0, 1);
    y = qkv_nn_posenc_forward(ctx, &lp, x);
    REQUIRE(y && qkv_backward(ctx, qkv_sum_all(ctx, y)) == QKV_OK, "%s", qkv_error());
    CHECK_SCALAR(y->data[4 + 1], x->data[4 + 1] + lp.pos_embedding->data[4 + 1], 0, 0);
    CHECK(lp.pos_embedding->grad[5] == 2.0f && lp.pos_embedding->grad[12] == 0.0f,
          "pos_embedding grad %g %g", lp.pos_embedding->grad[5], lp.pos_embedding->grad[12]);
    qkv_params_free(ps);
    qkv_ctx_free(ctx);
}
