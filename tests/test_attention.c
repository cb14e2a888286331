/* test_attention.c - masked softmax and scaled dot-product attention: the
 * fused kernel against the unfused reference path (forward and every
 * gradient, each mask kind, dropout from the same seed: the two sum the
 * same terms in a different order), gradient checks by central
 * differences, the book's deterministic example, fully masked rows, and
 * PyTorch parity, forward and backward. Every check states its atol and
 * rtol (|got - want| <= atol + rtol |want|), a few times the worst error
 * measured (docs/testing.md). */
#include "test.h"

#include "kernels/attention.h"
#include "qkv_internal.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

static float *rand_floats(qkv_rng *r, int64_t n, float scale)
{
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(qkv_rng_normal(r) * scale);
    return x;
}

/* ---- fused against unfused ---- */

typedef struct {
    int64_t B, H, N, M, D, Dv;
    bool q_transposed; /* q handed over as a (B, N, H, D) buffer seen as (B, H, N, D) */
} attn_shape;

typedef struct {
    float *out, *dq, *dk, *dv;
} attn_result;

/* Runs attention on fixed inputs (seed 5) and a fixed upstream gradient;
 * the context RNG is seeded with 77 first, so both paths draw one seed. */
static attn_result run_attention(const attn_shape *s, qkv_attn_opts o, bool unfused,
                                 qkv_tensor *(*masks)(qkv_ctx *, const attn_shape *, qkv_attn_opts *))
{
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    int64_t nq = s->B * s->H * s->N * s->D, nk = s->B * s->H * s->M * s->D;
    int64_t nv = s->B * s->H * s->M * s->Dv, no = s->B * s->H * s->N * s->Dv;
    float *qd = rand_floats(&r, nq, 1), *kd = rand_floats(&r, nk, 1);
    float *vd = rand_floats(&r, nv, 1), *gd = rand_floats(&r, no, 1);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), 77);
    qkv_tensor *q0, *q;
    if (s->q_transposed) {
        q0 = qkv_requires_grad(qkv_from_data(ctx, 4, SHAPE(s->B, s->N, s->H, s->D), qd));
        q = qkv_transpose(ctx, q0, 1, 2);
    } else {
        q0 = q = qkv_requires_grad(qkv_from_data(ctx, 4, SHAPE(s->B, s->H, s->N, s->D), qd));
    }
    qkv_tensor *k = qkv_requires_grad(qkv_from_data(ctx, 4, SHAPE(s->B, s->H, s->M, s->D), kd));
    qkv_tensor *v = qkv_requires_grad(qkv_from_data(ctx, 4, SHAPE(s->B, s->H, s->M, s->Dv), vd));
    if (masks)
        masks(ctx, s, &o);
    ctx->unfused = unfused;
    qkv_tensor *out = qkv_attention(ctx, q, k, v, &o);
    attn_result res = {0};
    if (out && qkv_backward_with(ctx, out, gd) == QKV_OK) {
        res.out = malloc((size_t)no * sizeof(float));
        for (int64_t i = 0; i < no; i++)
            res.out[i] = qkv_get(out, i);
        res.dq = malloc((size_t)nq * sizeof(float));
        res.dk = malloc((size_t)nk * sizeof(float));
        res.dv = malloc((size_t)nv * sizeof(float));
        memcpy(res.dq, q0->grad, (size_t)nq * sizeof(float));
        memcpy(res.dk, k->grad, (size_t)nk * sizeof(float));
        memcpy(res.dv, v->grad, (size_t)nv * sizeof(float));
    }
    qkv_ctx_free(ctx);
    free(qd);
    free(kd);
    free(vd);
    free(gd);
    return res;
}

static void free_result(attn_result *r)
{
    free(r->out);
    free(r->dq);
    free(r->dk);
    free(r->dv);
}

static void check_fused(const char *what, const attn_shape *s, qkv_attn_opts o,
                        qkv_tensor *(*masks)(qkv_ctx *, const attn_shape *, qkv_attn_opts *))
{
    attn_result f = run_attention(s, o, false, masks), u = run_attention(s, o, true, masks);
    if (!f.out || !u.out) {
        CHECK(0, "%s: attention failed: %s", what, qkv_error());
    } else {
        int64_t nq = s->B * s->H * s->N * s->D, nk = s->B * s->H * s->M * s->D;
        int64_t nv = s->B * s->H * s->M * s->Dv, no = s->B * s->H * s->N * s->Dv;
        test_note("%s", what);
        CHECK_CLOSE_N(f.out, u.out, no, 5e-6, 5e-7);
        CHECK_CLOSE_N(f.dq, u.dq, nq, 1e-5, 5e-7);
        CHECK_CLOSE_N(f.dk, u.dk, nk, 5e-6, 5e-7);
        CHECK_CLOSE_N(f.dv, u.dv, nv, 5e-6, 5e-7);
    }
    free_result(&f);
    free_result(&u);
}

/* additive (B, 1, N, M) mask with some -inf, never a whole row */
static qkv_tensor *mask_additive(qkv_ctx *ctx, const attn_shape *s, qkv_attn_opts *o)
{
    qkv_tensor *m = qkv_new(ctx, 4, SHAPE(s->B, 1, s->N, s->M));
    qkv_rng r;
    qkv_rng_seed(&r, 8);
    for (int64_t i = 0; i < qkv_numel(m); i++)
        m->data[i] = i % s->M == 0 ? 0.0f
                     : qkv_rng_uniform(&r) < 0.2 ? -INFINITY
                                                 : (float)qkv_rng_normal(&r);
    o->attn_mask = m;
    return m;
}

/* boolean (N, M) mask: true above a shifted diagonal */
static qkv_tensor *mask_bool(qkv_ctx *ctx, const attn_shape *s, qkv_attn_opts *o)
{
    qkv_tensor *m = qkv_new(ctx, 2, SHAPE(s->N, s->M));
    for (int64_t i = 0; i < s->N; i++)
        for (int64_t j = 0; j < s->M; j++)
            m->data[i * s->M + j] = j > i + 3 ? 1.0f : 0.0f;
    o->attn_mask = m;
    o->attn_mask_bool = 1;
    return m;
}

/* key padding: batch b keeps its first M - 37 b keys (whole tiles drop) */
static qkv_tensor *mask_padding(qkv_ctx *ctx, const attn_shape *s, qkv_attn_opts *o)
{
    qkv_tensor *m = qkv_new(ctx, 2, SHAPE(s->B, s->M));
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t j = 0; j < s->M; j++)
            m->data[b * s->M + j] = j >= s->M - 37 * (b + 1) ? 1.0f : 0.0f;
    o->key_padding_mask = m;
    o->key_padding_bool = 1;
    return m;
}

/* boolean (B, M) key padding: the last quarter of the keys of batch 0,
 * the last half of batch 1's, ... (never all of them) */
static qkv_tensor *mask_padding_quarters(qkv_ctx *ctx, const attn_shape *s, qkv_attn_opts *o)
{
    qkv_tensor *m = qkv_new(ctx, 2, SHAPE(s->B, s->M));
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t j = 0; j < s->M; j++)
            m->data[b * s->M + j] = j >= s->M - s->M * (b % 3 + 1) / 4 ? 1.0f : 0.0f;
    o->key_padding_mask = m;
    o->key_padding_bool = 1;
    return m;
}

static const int64_t lens1[] = {3, 140};
static int64_t lens2[2 * 70];

TEST(attention_fused_matches_unfused)
{
    /* N and M cross the 64-query and 128-key tiles */
    attn_shape s = {2, 3, 70, 150, 8, 5, false};
    attn_shape st = s;
    st.q_transposed = true;
    check_fused("no mask", &s, (qkv_attn_opts){0}, NULL);
    check_fused("no mask, q transposed", &st, (qkv_attn_opts){.scale = 0.3f}, NULL);
    check_fused("additive mask", &s, (qkv_attn_opts){0}, mask_additive);
    check_fused("bool mask", &st, (qkv_attn_opts){0}, mask_bool);
    check_fused("key padding", &s, (qkv_attn_opts){0}, mask_padding);
    check_fused("causal", &s, (qkv_attn_opts){.causal = 1}, NULL);
    check_fused("causal + key padding", &st, (qkv_attn_opts){.causal = 1}, mask_padding);
    check_fused("valid lens (B)", &s, (qkv_attn_opts){.valid_lens = lens1, .valid_lens_ndim = 1},
                NULL);
    for (int64_t i = 0; i < 2 * 70; i++) /* zero lengths included: uniform rows */
        lens2[i] = (i * 37) % 160 - 5;
    check_fused("valid lens (B, N)", &s,
                (qkv_attn_opts){.valid_lens = lens2, .valid_lens_ndim = 2}, NULL);
    check_fused("dropout", &st, (qkv_attn_opts){.dropout_p = 0.3f}, NULL);
    check_fused("dropout + causal + additive", &s,
                (qkv_attn_opts){.dropout_p = 0.5f, .causal = 1}, mask_additive);
    /* Dv larger than D and a single short tile */
    attn_shape small = {1, 2, 5, 3, 4, 9, false};
    check_fused("small", &small, (qkv_attn_opts){.causal = 1}, NULL);
}

/* The short-row path (M <= QKV_ATTN_SHORT_M keys: one task per head, rows
 * in registers) against the unfused reference, every mask kind; then D and
 * Dv past 64 (more than one register block) at exactly 64 keys. */
TEST(attention_short_rows_match_unfused)
{
    attn_shape s = {2, 3, 37, 50, 24, 20, false};
    attn_shape st = s;
    st.q_transposed = true;
    check_fused("short: no mask", &s, (qkv_attn_opts){0}, NULL);
    check_fused("short: q transposed", &st, (qkv_attn_opts){.scale = 0.3f}, NULL);
    check_fused("short: additive mask", &s, (qkv_attn_opts){0}, mask_additive);
    check_fused("short: bool mask", &st, (qkv_attn_opts){0}, mask_bool);
    check_fused("short: causal", &s, (qkv_attn_opts){.causal = 1}, NULL);
    check_fused("short: valid lens (B)", &s,
                (qkv_attn_opts){.valid_lens = lens1, .valid_lens_ndim = 1}, NULL);
    for (int64_t i = 0; i < 2 * 70; i++) /* zero and negative lengths: uniform rows */
        lens2[i] = (i * 13) % 60 - 5;
    check_fused("short: valid lens (B, N)", &s,
                (qkv_attn_opts){.valid_lens = lens2, .valid_lens_ndim = 2}, NULL);
    check_fused("short: dropout", &st, (qkv_attn_opts){.dropout_p = 0.3f}, NULL);
    check_fused("short: dropout + causal + additive", &s,
                (qkv_attn_opts){.dropout_p = 0.5f, .causal = 1}, mask_additive);
    attn_shape wide = {1, 2, 9, 64, 80, 70, false};
    check_fused("short: D, Dv > 64", &wide, (qkv_attn_opts){.causal = 1}, NULL);
    attn_shape one = {3, 1, 1, 1, 3, 2, false};
    check_fused("short: one key", &one, (qkv_attn_opts){.dropout_p = 0.2f}, NULL);
    /* the query-block path (16 queries a vector, >= 8 queries, no
     * additive mask): key padding, and block edges at 8, 16, 17 queries */
    check_fused("short: key padding + dropout", &s, (qkv_attn_opts){.dropout_p = 0.2f},
                mask_padding_quarters);
    check_fused("short: dropout + valid lens (B, N) + causal", &s,
                (qkv_attn_opts){.dropout_p = 0.4f, .causal = 1, .valid_lens = lens2,
                                .valid_lens_ndim = 2},
                NULL);
    for (int64_t n = 8; n <= 17; n += n == 8 ? 8 : 1) {
        attn_shape e = {2, 2, n, 10, 8, 8, false};
        check_fused("short: block edge", &e,
                    (qkv_attn_opts){.dropout_p = 0.1f, .valid_lens = lens1,
                                    .valid_lens_ndim = 1},
                    NULL);
    }
}

/* Heads side by side (qkv__attention_heads, what multi-head attention
 * runs) against splitting the heads into (B, H, N, D) views, the unfused
 * path and merging: out and every gradient, both layouts (batch first and
 * sequence first), short and tiled key counts, masks and dropout. */
static void check_heads(const char *what, int64_t B, int64_t H, int64_t N, int64_t M, int64_t D,
                        int64_t Dv, bool bf, qkv_attn_opts o)
{
    qkv_rng r;
    qkv_rng_seed(&r, 9);
    int64_t nq = B * N * H * D, nk = B * M * H * D, nv = B * M * H * Dv, no = B * N * H * Dv;
    float *qd = rand_floats(&r, nq, 1), *kd = rand_floats(&r, nk, 1);
    float *vd = rand_floats(&r, nv, 1), *gd = rand_floats(&r, no, 1);
    float *res[2][4];
    for (int path = 0; path < 2; path++) {
        qkv_ctx *ctx = qkv_ctx_new();
        qkv_rng_seed(qkv_ctx_rng(ctx), 77);
        int64_t a = bf ? B : N, c = bf ? N : B, am = bf ? B : M, cm = bf ? M : B;
        qkv_tensor *q = qkv_requires_grad(qkv_from_data(ctx, 3, SHAPE(a, c, H * D), qd));
        qkv_tensor *k = qkv_requires_grad(qkv_from_data(ctx, 3, SHAPE(am, cm, H * D), kd));
        qkv_tensor *v = qkv_requires_grad(qkv_from_data(ctx, 3, SHAPE(am, cm, H * Dv), vd));
        qkv_tensor *out;
        if (path == 0) {
            out = qkv__attention_heads(ctx, q, k, v, H, bf, &o);
        } else { /* (a, c, H, D) -> (B, H, N, D) views, unfused, merged back */
            int perm[4] = {0, 2, 1, 3}, permsf[4] = {1, 2, 0, 3}, back[4] = {0, 2, 1, 3},
                backsf[4] = {2, 0, 1, 3};
            qkv_tensor *qs = qkv_permute(ctx, qkv_reshape(ctx, q, 4, SHAPE(a, c, H, D)),
                                         bf ? perm : permsf);
            qkv_tensor *ks = qkv_permute(ctx, qkv_reshape(ctx, k, 4, SHAPE(am, cm, H, D)),
                                         bf ? perm : permsf);
            qkv_tensor *vs = qkv_permute(ctx, qkv_reshape(ctx, v, 4, SHAPE(am, cm, H, Dv)),
                                         bf ? perm : permsf);
            ctx->unfused = 1;
            qkv_tensor *os = qkv_attention(ctx, qs, ks, vs, &o);
            out = qkv_reshape(ctx, qkv_permute(ctx, os, bf ? back : backsf), 3,
                              SHAPE(a, c, H * Dv));
        }
        REQUIRE(out && qkv_backward_with(ctx, out, gd) == QKV_OK, "%s: %s", what, qkv_error());
        res[path][0] = malloc((size_t)no * sizeof(float));
        for (int64_t i = 0; i < no; i++)
            res[path][0][i] = qkv_get(out, i);
        const float *g[3] = {q->grad, k->grad, v->grad};
        int64_t n[3] = {nq, nk, nv};
        for (int t = 0; t < 3; t++) {
            res[path][t + 1] = malloc((size_t)n[t] * sizeof(float));
            memcpy(res[path][t + 1], g[t], (size_t)n[t] * sizeof(float));
        }
        qkv_ctx_free(ctx);
    }
    int64_t n[4] = {no, nq, nk, nv};
    const char *names[4] = {"out", "dq", "dk", "dv"};
    for (int t = 0; t < 4; t++) {
        test_note("%s: %s", what, names[t]);
        CHECK_CLOSE_N(res[0][t], res[1][t], n[t], 2e-6, 5e-7);
        free(res[0][t]);
        free(res[1][t]);
    }
    free(qd), free(kd), free(vd), free(gd);
}

TEST(attention_heads_in_place_match_split)
{
    static const int64_t lens[3] = {5, 1, 9};
    check_heads("short, batch first", 3, 4, 7, 9, 8, 6, true, (qkv_attn_opts){0});
    check_heads("short, sequence first, causal, dropout", 3, 4, 9, 9, 8, 8, false,
                (qkv_attn_opts){.causal = 1, .dropout_p = 0.2f});
    check_heads("short, valid lens", 3, 2, 6, 9, 16, 16, true,
                (qkv_attn_opts){.valid_lens = lens, .valid_lens_ndim = 1});
    check_heads("tiled, batch first, dropout", 2, 3, 70, 150, 8, 5, true,
                (qkv_attn_opts){.dropout_p = 0.3f});
    check_heads("tiled, sequence first, causal", 2, 3, 70, 150, 8, 8, false,
                (qkv_attn_opts){.causal = 1});
}

TEST(attention_dropout_rate_and_eval)
{
    /* the hash keeps about 1 - p of the weights, scaled by 1 / (1 - p) */
    int64_t n = 1 << 16, kept = 0;
    float *keep = malloc((size_t)n * sizeof *keep);
    qkv_k_attn_dropout_row(keep, 12345, 0.3f, 1, 2, 0, n, 4, n);
    for (int64_t j = 0; j < n; j++) {
        CHECK(keep[j] == 0.0f || fabsf(keep[j] - 1 / 0.7f) < 1e-6f, "keep %g", keep[j]);
        kept += keep[j] != 0;
    }
    CHECK(fabs((double)kept / n - 0.7) < 0.01, "kept fraction %g", (double)kept / n);
    free(keep);
    /* eval mode: no dropout, so the output equals p = 0's */
    attn_shape s = {1, 1, 4, 6, 3, 3, false};
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *q = qkv_randn(ctx, 4, SHAPE(1, 1, 4, 3), 0, 1);
    qkv_tensor *k = qkv_randn(ctx, 4, SHAPE(1, 1, 6, 3), 0, 1);
    qkv_tensor *v = qkv_randn(ctx, 4, SHAPE(1, 1, 6, 3), 0, 1);
    qkv_set_training(ctx, 0);
    qkv_tensor *a = qkv_attention(ctx, q, k, v, &(qkv_attn_opts){.dropout_p = 0.9f});
    qkv_tensor *b = qkv_attention(ctx, q, k, v, NULL);
    REQUIRE(a && b, "%s", qkv_error());
    CHECK_CLOSE(a, b, 0, 0); /* eval mode drops nothing */
    qkv_ctx_free(ctx);
    (void)s;
}

TEST(attention_fully_masked_row_is_nan)
{
    /* PyTorch semantics: a row with every key masked gives NaN, in both
     * paths; the other rows are unaffected */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_grad_enabled(ctx, 0);
    qkv_tensor *q = qkv_randn(ctx, 4, SHAPE(2, 1, 3, 4), 0, 1);
    qkv_tensor *k = qkv_randn(ctx, 4, SHAPE(2, 1, 5, 4), 0, 1);
    qkv_tensor *v = qkv_randn(ctx, 4, SHAPE(2, 1, 5, 2), 0, 1);
    qkv_tensor *kpm = qkv_zeros(ctx, 2, SHAPE(2, 5));
    for (int j = 0; j < 5; j++)
        kpm->data[5 + j] = 1; /* batch 1: every key is padding */
    for (int unfused = 0; unfused < 2; unfused++) {
        ctx->unfused = unfused;
        qkv_tensor *out = qkv_attention(ctx, q, k, v,
                                        &(qkv_attn_opts){.key_padding_mask = kpm,
                                                         .key_padding_bool = 1});
        REQUIRE(out, "%s", qkv_error());
        for (int i = 0; i < 6; i++) {
            CHECK(isfinite(out->data[i]), "unfused %d: batch 0 entry %d = %g", unfused, i,
                  out->data[i]);
            CHECK(isnan(out->data[6 + i]), "unfused %d: batch 1 entry %d = %g", unfused, i,
                  out->data[6 + i]);
        }
    }
    qkv_ctx_free(ctx);
}

TEST(masked_softmax_d2l_semantics)
{
    /* d2l: keys past the length get -1e6, so length 0 is uniform, and the
     * softmax is over the first `len` keys exactly */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_randn(ctx, 3, SHAPE(2, 2, 4), 0, 1);
    int64_t lens[] = {2, 0, 3, 4};
    qkv_tensor *y = qkv_masked_softmax(ctx, x, &(qkv_attn_opts){.valid_lens = lens,
                                                                .valid_lens_ndim = 2});
    REQUIRE(y, "%s", qkv_error());
    for (int row = 0; row < 4; row++) {
        const float *xi = x->data + row * 4, *yi = y->data + row * 4;
        int64_t len = lens[row];
        double s = 0;
        for (int j = 0; j < len; j++)
            s += exp(xi[j]);
        for (int j = 0; j < 4; j++) {
            double want = len == 0 ? 0.25 : j < len ? exp(xi[j]) / s : 0.0;
            CHECK_SCALAR(yi[j], want, 1e-8, 5e-7);
        }
    }
    /* 1-D lengths repeat over the query rows */
    int64_t l1[] = {1, 3};
    y = qkv_masked_softmax(ctx, x, &(qkv_attn_opts){.valid_lens = l1, .valid_lens_ndim = 1});
    REQUIRE(y, "%s", qkv_error());
    CHECK(y->data[0] == 1.0f && y->data[4] == 1.0f && y->data[1] == 0.0f, "length 1 rows");
    CHECK(y->data[11] == 0.0f && y->data[15] == 0.0f && y->data[14] > 0, "length 3 rows");
    /* bad shapes are errors, not crashes */
    CHECK(!qkv_masked_softmax(ctx, qkv_randn(ctx, 2, SHAPE(2, 4), 0, 1), NULL), "2-D accepted");
    CHECK(!qkv_masked_softmax(ctx, x, &(qkv_attn_opts){.key_padding_mask = x}) &&
              strstr(qkv_error(), "key_padding_mask"),
          "%s", qkv_error());
    qkv_ctx_free(ctx);
}

/* the book's demo (SPEC section 2): keys ones(2, 10, 2), values
 * arange(40).reshape(1, 10, 4) repeated, valid_lens [2, 6] */
TEST(attention_d2l_deterministic)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_tensor *keys = qkv_full(ctx, 3, SHAPE(2, 10, 2), 1.0f);
    qkv_tensor *values = qkv_new(ctx, 3, SHAPE(2, 10, 4));
    for (int i = 0; i < 80; i++)
        values->data[i] = (float)(i % 40);
    qkv_tensor *queries = qkv_randn(ctx, 3, SHAPE(2, 1, 2), 0, 1);
    int64_t lens[] = {2, 6};
    const float want[2][4] = {{2, 3, 4, 5}, {10, 11, 12, 13}};
    for (int unfused = 0; unfused < 2; unfused++) {
        ctx->unfused = unfused;
        qkv_tensor *out = qkv_attention(ctx, queries, keys, values,
                                        &(qkv_attn_opts){.valid_lens = lens,
                                                         .valid_lens_ndim = 1,
                                                         .dropout_p = 0.5f});
        REQUIRE(out && out->ndim == 3 && out->shape[1] == 1 && out->shape[2] == 4, "%s",
                qkv_error());
        for (int b = 0; b < 2; b++)
            for (int j = 0; j < 4; j++)
                CHECK_SCALAR(out->data[b * 4 + j], want[b][j], 2e-7, 5e-7);
    }
    qkv_ctx_free(ctx);
}

/* ---- gradient checks ---- */

static qkv_tensor *f_msoftmax(qkv_ctx *c, qkv_tensor **t, void *u)
{
    static const int64_t lens[] = {2, 0, 3, 4, 1, 2};
    return qkv_masked_softmax(c, qkv_transpose(c, t[0], 1, 2),
                              &(qkv_attn_opts){.valid_lens = lens, .valid_lens_ndim = 2});
}

typedef struct {
    qkv_attn_opts o;
    int unfused;
} attn_case;

static qkv_tensor *f_attn(qkv_ctx *c, qkv_tensor **t, void *u)
{
    const attn_case *a = u;
    c->unfused = a->unfused;
    /* q handed over transposed: (B, N, H, D) seen as (B, H, N, D) */
    return qkv_attention(c, qkv_transpose(c, t[0], 1, 2), t[1], t[2], &a->o);
}

TEST(gradcheck_attention)
{
    qkv_rng r;
    qkv_rng_seed(&r, 21);
    gc_input x[1] = {gc_rand(&r, 3, SHAPE(2, 4, 3), -2, 2, true)};
    CHECK_GRAD(f_msoftmax, 1, x, NULL, 2e-6, 1e-3);
    gc_free(1, x);
    /* scores of a few units and a step of 5e-3: with 1e-3 the float32
     * rounding of the 80 outputs (~2e-4 once divided by 2h) is a few percent
     * of the small key gradients; the truncation error at 5e-3 is ~1e-5 */
    gc_input in[3] = {gc_rand(&r, 4, SHAPE(2, 5, 2, 3), -2, 2, true),
                      gc_rand(&r, 4, SHAPE(2, 2, 6, 3), -2, 2, true),
                      gc_rand(&r, 4, SHAPE(2, 2, 6, 4), -2, 2, true)};
    static const int64_t lens[] = {4, 2};
    attn_case cases[] = {
        {{0}, 0},
        {{0}, 1},
        {{.causal = 1}, 0},
        {{.causal = 1}, 1},
        {{.valid_lens = lens, .valid_lens_ndim = 1}, 0},
        {{.valid_lens = lens, .valid_lens_ndim = 1}, 1},
        {{.dropout_p = 0.4f}, 0},
        {{.dropout_p = 0.4f}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_note("attention case %zu", i);
        CHECK_GRAD_STEP(f_attn, 3, in, &cases[i], 5e-3, 1e-4, 1e-3);
    }
    gc_free(3, in);
}

/* ---- parity with PyTorch ---- */

/* The fixture's "lens" (I64) into lens; returns its ndim, 0 if absent. */
static int fixture_lens(qkv_st_file *f, int64_t *lens, int64_t cap)
{
    int64_t i = qkv_st_find(f, "lens");
    int64_t shape[QKV_MAX_DIMS];
    if (i < 0)
        return 0;
    int nd = qkv_st_shape(f, i, shape);
    if (qkv_st_numel(f, i) > cap || qkv_st_read_i64(f, i, lens) != QKV_OK)
        return -1;
    return nd;
}

static qkv_tensor *fixture_opt(qkv_ctx *ctx, qkv_st_file *f, const char *name)
{
    return qkv_st_find(f, name) >= 0 ? fixture_get(ctx, f, name) : NULL;
}

static int meta_int(qkv_st_file *f, const char *key)
{
    const char *s = qkv_st_meta(f, key);
    return s ? atoi(s) : 0;
}

/* q, k, v, masks and lens from the fixture, through both paths */
static void parity_attention(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    int64_t lens[64];
    int lnd = fixture_lens(fx, lens, 64);
    for (int unfused = 0; unfused < 2; unfused++) {
        test_note("%s, unfused %d", name, unfused);
        qkv_ctx *ctx = qkv_ctx_new();
        qkv_tensor *q = qkv_requires_grad(fixture_get(ctx, fx, "q"));
        qkv_tensor *k = qkv_requires_grad(fixture_get(ctx, fx, "k"));
        qkv_tensor *v = qkv_requires_grad(fixture_get(ctx, fx, "v"));
        qkv_tensor *madd = fixture_opt(ctx, fx, "mask_add"), *mbool = fixture_opt(ctx, fx, "mask_bool");
        const char *sc = qkv_st_meta(fx, "scale");
        qkv_attn_opts o = {
            .attn_mask = madd ? madd : mbool,
            .attn_mask_bool = mbool != NULL,
            .key_padding_mask = fixture_opt(ctx, fx, "kpm"),
            .key_padding_bool = 1,
            .causal = meta_int(fx, "causal"),
            .valid_lens = lnd > 0 ? lens : NULL,
            .valid_lens_ndim = lnd,
            .scale = sc ? (float)atof(sc) : 0.0f,
        };
        ctx->unfused = unfused;
        qkv_tensor *qq = meta_int(fx, "q_t") ? qkv_transpose(ctx, q, 1, 2) : q;
        qkv_tensor *out = qkv_attention(ctx, qq, k, v, &o), *gout = fixture_get(ctx, fx, "gout");
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 1e-6, 5e-7);
        if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK) {
            CHECK_CLOSE_GRAD(q, fixture_get(ctx, fx, "grad_q"), 5e-6, 5e-7);
            CHECK_CLOSE_GRAD(k, fixture_get(ctx, fx, "grad_k"), 5e-6, 5e-7);
            CHECK_CLOSE_GRAD(v, fixture_get(ctx, fx, "grad_v"), 5e-6, 5e-7);
        } else {
            CHECK(0, "%s (unfused %d): %s", name, unfused, qkv_error());
        }
        qkv_ctx_free(ctx);
    }
    qkv_st_close(fx);
}

TEST(parity_attention)
{
    const char *names[] = {"attn_plain", "attn_scale_contiguous", "attn_additive", "attn_bool",
                           "attn_padding_causal", "attn_lens1", "attn_lens2", "attn_long_causal",
                           "d2l_dot_attention"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        parity_attention(names[i]);
}

TEST(parity_masked_softmax)
{
    const char *names[] = {"masked_softmax_lens1", "masked_softmax_lens2"};
    for (size_t i = 0; i < 2; i++) {
        qkv_st_file *fx = fixture_open(names[i]);
        if (!fx)
            continue;
        test_note("%s", names[i]);
        int64_t lens[16];
        int lnd = fixture_lens(fx, lens, 16);
        qkv_ctx *ctx = qkv_ctx_new();
        qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
        qkv_tensor *y = qkv_masked_softmax(ctx, x, &(qkv_attn_opts){.valid_lens = lens,
                                                                    .valid_lens_ndim = lnd});
        qkv_tensor *gout = fixture_get(ctx, fx, "gout");
        CHECK_CLOSE(y, fixture_get(ctx, fx, "out"), 1e-8, 5e-7);
        if (y && gout && qkv_backward_with(ctx, y, gout->data) == QKV_OK)
            CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 5e-8, 5e-7);
        else
            CHECK(0, "%s: %s", names[i], qkv_error());
        qkv_ctx_free(ctx);
        qkv_st_close(fx);
    }
}
