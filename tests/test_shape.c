/* test_shape.c - concat, slice, index_select, embedding, masked_fill, where:
 * gradient checks (central differences with the loss in double: for a copy
 * the difference quotient is exact to ~1e-13, so most state atol 1e-12 or
 * rtol 1e-6), exact checks of bounds and errors, and PyTorch parity,
 * forward and backward, exactly (atol = rtol = 0): these ops copy or add
 * single floats, so anything looser would hide a wrong index. */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* ---- gradient checks ---- */

static qkv_tensor *f_concat(qkv_ctx *c, qkv_tensor **t, void *u)
{
    /* t[1] (2,4,2) enters as a transposed view (2,2,4) */
    qkv_tensor *xs[3] = {t[0], qkv_transpose(c, t[1], 1, 2), t[2]};
    return qkv_concat(c, 3, xs, *(int *)u);
}

TEST(gradcheck_concat)
{
    qkv_rng r;
    qkv_rng_seed(&r, 11);
    gc_input in[3] = {gc_rand(&r, 3, SHAPE(2, 3, 4), -1, 1, true),
                      gc_rand(&r, 3, SHAPE(2, 4, 2), -1, 1, true),
                      gc_rand(&r, 3, SHAPE(2, 1, 4), -1, 1, true)};
    int axis = 1;
    CHECK_GRAD(f_concat, 3, in, &axis, 1e-12, 0);
    axis = -2;
    CHECK_GRAD(f_concat, 3, in, &axis, 1e-12, 0);
    gc_free(3, in);
}

/* More inputs than a tape node has slots, one of them twice. */
static qkv_tensor *f_concat_many(qkv_ctx *c, qkv_tensor **t, void *u)
{
    qkv_tensor *xs[7] = {t[0], t[1], t[2], t[3], t[4], t[5], t[0]};
    return qkv_concat(c, 7, xs, 0);
}

TEST(gradcheck_concat_many_inputs)
{
    qkv_rng r;
    qkv_rng_seed(&r, 12);
    gc_input in[6];
    for (int i = 0; i < 6; i++)
        in[i] = gc_rand(&r, 2, SHAPE(i % 3 + 1, 3), -1, 1, i != 4);
    CHECK_GRAD(f_concat_many, 6, in, NULL, 1e-8, 1e-7);
    gc_free(6, in);
}

static qkv_tensor *f_slice(qkv_ctx *c, qkv_tensor **t, void *u)
{
    /* x[:, -6:100:2, :] then, on a transposed view of that, [1::2] */
    qkv_tensor *s = qkv_slice(c, t[0], 1, -6, 100, 2);       /* (4,3,3) */
    s = qkv_slice(c, qkv_transpose(c, s, 0, 2), 0, 1, INT64_MAX, 2); /* (1,3,4) */
    return qkv_mul(c, s, s);
}

TEST(gradcheck_slice)
{
    qkv_rng r;
    qkv_rng_seed(&r, 13);
    gc_input in[1] = {gc_rand(&r, 3, SHAPE(4, 7, 3), -1, 1, true)};
    CHECK_GRAD(f_slice, 1, in, NULL, 2e-6, 1e-4);
    gc_free(1, in);
}

TEST(slice_bounds_follow_python)
{
    qkv_ctx *ctx = qkv_ctx_new();
    float v[10];
    for (int i = 0; i < 10; i++)
        v[i] = (float)i;
    qkv_tensor *x = qkv_from_data(ctx, 1, SHAPE(10), v);
    struct { int64_t start, end, step, len, first; } cases[] = {
        {-3, INT64_MAX, 1, 3, 7}, {5, 2, 1, 0, -1}, {-100, 3, 1, 3, 0},
        {1, -1, 3, 3, 1},         {0, 10, 4, 3, 0}, {9, 100, 5, 1, 9},
        {10, 12, 1, 0, -1},       {-1, -100, 1, 0, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qkv_tensor *s = qkv_slice(ctx, x, 0, cases[i].start, cases[i].end, cases[i].step);
        REQUIRE(s, "slice %zu: %s", i, qkv_error());
        CHECK(s->shape[0] == cases[i].len, "slice %zu: length %lld, expected %lld", i,
              (long long)s->shape[0], (long long)cases[i].len);
        if (cases[i].len > 0) {
            CHECK(qkv_get(s, 0) == cases[i].first, "slice %zu: first %g", i, qkv_get(s, 0));
            CHECK(qkv_get(s, s->shape[0] - 1) ==
                      cases[i].first + (cases[i].len - 1) * cases[i].step,
                  "slice %zu: last element", i);
            CHECK(s->data >= x->data && s->data < x->data + 10, "slice %zu copied", i);
        }
    }
    CHECK(!qkv_slice(ctx, x, 0, 0, 5, 0) && strstr(qkv_error(), "slice"), "step 0: %s",
          qkv_error());
    CHECK(!qkv_slice(ctx, x, 1, 0, 5, 1) && strstr(qkv_error(), "slice"), "axis 1: %s",
          qkv_error());
    qkv_ctx_free(ctx);
}

typedef struct {
    int axis;
    const int64_t *idx;
    int64_t n;
} gather_args;

static qkv_tensor *f_index_select(qkv_ctx *c, qkv_tensor **t, void *u)
{
    gather_args *a = u;
    qkv_tensor *x = qkv_permute(c, t[0], (int[]){1, 2, 0}); /* (3,4,2) */
    return qkv_index_select(c, x, a->axis, a->idx, a->n);
}

static qkv_tensor *f_embedding(qkv_ctx *c, qkv_tensor **t, void *u)
{
    gather_args *a = u;
    return qkv_embedding(c, t[0], a->idx, a->n);
}

static const int64_t kept_rows[] = {1, 2, 3, 6, 7}; /* of a (2, 4) batch */

/* u non-NULL: the op twice on the same contiguous input, so that the second
 * backward adds to the gradient the first one wrote */
static qkv_tensor *f_rows_pack(qkv_ctx *c, qkv_tensor **t, void *u)
{
    qkv_rows r = {.B = 2, .T = 4, .n = 5, .at = kept_rows};
    if (u) /* t[0] (8, 3) */
        return qkv_add(c, qkv_rows_pack(c, t[0], &r),
                       qkv_scale(c, qkv_rows_pack(c, t[0], &r), 0.5f));
    /* t[0] (4, 2, 3) seen as (B, T, C) = (2, 4, 3) */
    return qkv_rows_pack(c, qkv_permute(c, t[0], (int[]){1, 0, 2}), &r);
}

static qkv_tensor *f_rows_unpack(qkv_ctx *c, qkv_tensor **t, void *u)
{
    /* t[0] (5, 3) -> (2, 4, 3) */
    qkv_rows r = {.B = 2, .T = 4, .n = 5, .at = kept_rows};
    if (u)
        return qkv_add(c, qkv_rows_unpack(c, t[0], &r),
                       qkv_scale(c, qkv_rows_unpack(c, t[0], &r), -2.0f));
    return qkv_rows_unpack(c, t[0], &r);
}

TEST(gradcheck_rows_pack_and_unpack)
{
    qkv_rng r;
    qkv_rng_seed(&r, 15);
    int twice = 1;
    gc_input in[1] = {gc_rand(&r, 3, SHAPE(4, 2, 3), -1, 1, true)};
    CHECK_GRAD(f_rows_pack, 1, in, NULL, 1e-13, 0);
    gc_free(1, in);
    gc_input flat[1] = {gc_rand(&r, 2, SHAPE(8, 3), -1, 1, true)};
    CHECK_GRAD(f_rows_pack, 1, flat, &twice, 5e-6, 1e-4);
    gc_free(1, flat);
    gc_input x[1] = {gc_rand(&r, 2, SHAPE(5, 3), -1, 1, true)};
    CHECK_GRAD(f_rows_unpack, 1, x, NULL, 1e-12, 0);
    CHECK_GRAD(f_rows_unpack, 1, x, &twice, 1e-12, 0);
    gc_free(1, x);
    /* bad maps and shapes: messages that name them */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_zeros(ctx, 2, (int64_t[]){5, 3});
    qkv_rows down = {.B = 2, .T = 4, .n = 2, .at = (int64_t[]){3, 1}};
    CHECK(!qkv_rows_unpack(ctx, a, &down) && strstr(qkv_error(), "rows must increase"), "%s",
          qkv_error());
    qkv_rows far = {.B = 2, .T = 4, .n = 1, .at = (int64_t[]){8}};
    CHECK(!qkv_rows_pack(ctx, qkv_zeros(ctx, 3, (int64_t[]){2, 4, 3}), &far) &&
              strstr(qkv_error(), "[0, B T = 8)"),
          "%s", qkv_error());
    qkv_rows ok = {.B = 2, .T = 4, .n = 5, .at = kept_rows};
    CHECK(!qkv_rows_pack(ctx, qkv_zeros(ctx, 3, (int64_t[]){2, 5, 3}), &ok) &&
              strstr(qkv_error(), "rows_pack") && strstr(qkv_error(), "(2, 4, C)"),
          "%s", qkv_error());
    CHECK(!qkv_rows_unpack(ctx, qkv_zeros(ctx, 2, (int64_t[]){4, 3}), &ok) &&
              strstr(qkv_error(), "one row per kept row"),
          "%s", qkv_error());
    qkv_ctx_free(ctx);
}

TEST(gradcheck_index_select_and_embedding)
{
    qkv_rng r;
    qkv_rng_seed(&r, 14);
    /* the permuted view is (3,4,2): rows of each axis, with repeats */
    static const int64_t i0[] = {2, 2, 0}, i1[] = {3, 0, 3, 1, 3}, i2[] = {1, 1};
    gather_args args[] = {{0, i0, 3}, {1, i1, 5}, {-1, i2, 2}};
    gc_input in[1] = {gc_rand(&r, 3, SHAPE(2, 3, 4), -1, 1, true)};
    for (int i = 0; i < 3; i++) {
        test_note("index_select axis %d", args[i].axis);
        CHECK_GRAD(f_index_select, 1, in, &args[i], 1e-7, 1e-6);
    }
    test_note("embedding");
    gc_free(1, in);
    gc_input w[1] = {gc_rand(&r, 2, SHAPE(5, 3), -1, 1, true)};
    gather_args e = {0, (int64_t[]){4, 0, 4, 4, 2, 0}, 6};
    CHECK_GRAD(f_embedding, 1, w, &e, 1e-7, 1e-6);
    gc_free(1, w);
}

static qkv_tensor *f_masked_fill(qkv_ctx *c, qkv_tensor **t, void *u)
{
    /* x (2,3,4) as a permuted view of (4,2,3); mask (3,1) broadcasts */
    qkv_tensor *x = qkv_permute(c, t[0], (int[]){1, 2, 0});
    return qkv_masked_fill(c, x, t[1], 2.5f);
}

static qkv_tensor *f_where(qkv_ctx *c, qkv_tensor **t, void *u)
{
    /* cond (2,1,4), a (3,4) transposed from (4,3), b (2,3,1) */
    return qkv_where(c, t[0], qkv_transpose(c, t[1], 0, 1), t[2]);
}

TEST(gradcheck_masked_fill_and_where)
{
    qkv_rng r;
    qkv_rng_seed(&r, 15);
    gc_input mf[2] = {gc_rand(&r, 3, SHAPE(4, 2, 3), -1, 1, true),
                      gc_rand(&r, 2, SHAPE(3, 1), 0, 1, false)};
    mf[1].data[0] = 1, mf[1].data[1] = 0, mf[1].data[2] = 1;
    CHECK_GRAD(f_masked_fill, 2, mf, NULL, 1e-12, 0);
    gc_free(2, mf);
    gc_input wh[3] = {gc_rand(&r, 3, SHAPE(2, 1, 4), 0, 1, false),
                      gc_rand(&r, 2, SHAPE(4, 3), -1, 1, true),
                      gc_rand(&r, 3, SHAPE(2, 3, 1), -1, 1, true)};
    for (int i = 0; i < 8; i++)
        wh[0].data[i] = (float)(i % 3 == 0); /* 1 0 0 1 0 0 1 0 */
    CHECK_GRAD(f_where, 3, wh, NULL, 1e-7, 1e-6);
    gc_free(3, wh);
}

TEST(masked_fill_zero_gradient_where_filled)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(qkv_randn(ctx, 2, SHAPE(2, 3), 0, 1));
    qkv_tensor *mask = qkv_from_data(ctx, 1, SHAPE(3), (float[]){0, -2, 1});
    qkv_tensor *y = qkv_masked_fill(ctx, x, mask, -7.0f);
    REQUIRE(y, "%s", qkv_error());
    float ones[6] = {1, 1, 1, 1, 1, 1};
    REQUIRE(qkv_backward_with(ctx, y, ones) == QKV_OK, "%s", qkv_error());
    for (int i = 0; i < 6; i++) {
        bool filled = i % 3 != 0;
        CHECK(qkv_get(y, i) == (filled ? -7.0f : x->data[i]), "value %d", i);
        CHECK(x->grad[i] == (filled ? 0.0f : 1.0f), "grad %d = %g", i, x->grad[i]);
    }
    qkv_ctx_free(ctx);
}

TEST(shape_op_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_zeros(ctx, 2, SHAPE(2, 3)), *b = qkv_zeros(ctx, 2, SHAPE(4, 5));
    CHECK(!qkv_concat(ctx, 2, (qkv_tensor *[]){a, b}, 0), "concat (2,3) (4,5) on axis 0");
    CHECK(strstr(qkv_error(), "concat") && strstr(qkv_error(), "(2, 3)") &&
              strstr(qkv_error(), "(4, 5)"),
          "message: %s", qkv_error());
    CHECK(qkv_concat(ctx, 2, (qkv_tensor *[]){a, qkv_zeros(ctx, 2, SHAPE(5, 3))}, 0),
          "concat (2,3) (5,3) on axis 0: %s", qkv_error());
    CHECK(!qkv_concat(ctx, 0, NULL, 0), "concat of nothing");

    CHECK(!qkv_index_select(ctx, a, 1, (int64_t[]){0, 3}, 2), "index 3 of size 3");
    CHECK(strstr(qkv_error(), "index_select") && strstr(qkv_error(), "index 3") &&
              strstr(qkv_error(), "position 1"),
          "message: %s", qkv_error());
    CHECK(!qkv_index_select(ctx, a, 0, (int64_t[]){-1}, 1), "negative index");

    qkv_tensor *w = qkv_zeros(ctx, 2, SHAPE(10, 4));
    CHECK(!qkv_embedding(ctx, w, (int64_t[]){1, 2, 10, 3}, 4), "id 10 of vocabulary 10");
    CHECK(strstr(qkv_error(), "embedding") && strstr(qkv_error(), "id 10") &&
              strstr(qkv_error(), "position 2"),
          "message: %s", qkv_error());
    CHECK(!qkv_embedding(ctx, w, (int64_t[]){-1}, 1) && strstr(qkv_error(), "id -1"),
          "message: %s", qkv_error());

    /* the mask may broadcast to x, not x to the mask */
    CHECK(!qkv_masked_fill(ctx, qkv_zeros(ctx, 1, SHAPE(3)), a, 0), "mask (2,3) on x (3)");
    CHECK(strstr(qkv_error(), "masked_fill") && strstr(qkv_error(), "(2, 3)"), "message: %s",
          qkv_error());
    CHECK(!qkv_where(ctx, a, a, b) && strstr(qkv_error(), "where"), "where: %s", qkv_error());
    qkv_ctx_free(ctx);
}

/* ---- parity with PyTorch ---- */

/* The int64 tensor `name` of a fixture, malloc'd; NULL (test failed) if absent. */
static int64_t *fixture_i64(qkv_st_file *fx, const char *name, int64_t *n)
{
    int64_t i = fx ? qkv_st_find(fx, name) : -1;
    if (i < 0) {
        test_fail(__FILE__, __LINE__, "fixture tensor %s missing", name);
        return NULL;
    }
    *n = qkv_st_numel(fx, i);
    int64_t *v = malloc((size_t)(*n ? *n : 1) * sizeof(int64_t));
    if (qkv_st_read_i64(fx, i, v) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "fixture tensor %s: %s", name, qkv_error());
        free(v);
        return NULL;
    }
    return v;
}

/* Backward with the fixture's gout and compare grad_<name> of each input. */
static void check_grads(qkv_ctx *ctx, qkv_st_file *fx, qkv_tensor *out, int n,
                        const char *const *names, qkv_tensor *const *ins)
{
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    if (!out || !gout || qkv_backward_with(ctx, out, gout->data) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "backward: %s", qkv_error());
        return;
    }
    for (int i = 0; i < n; i++) {
        char key[64];
        snprintf(key, sizeof key, "grad_%s", names[i]);
        CHECK_CLOSE_GRAD(ins[i], fixture_get(ctx, fx, key), 0, 0);
    }
}

TEST(parity_concat)
{
    qkv_st_file *fx = fixture_open("concat_axis1");
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_requires_grad(fixture_get(ctx, fx, "a"));
    qkv_tensor *bt = qkv_requires_grad(fixture_get(ctx, fx, "b_t"));
    qkv_tensor *c = qkv_requires_grad(fixture_get(ctx, fx, "c"));
    qkv_tensor *out = qkv_concat(ctx, 3, (qkv_tensor *[]){a, qkv_transpose(ctx, bt, 1, 2), c}, 1);
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
    check_grads(ctx, fx, out, 3, (const char *[]){"a", "b_t", "c"}, (qkv_tensor *[]){a, bt, c});
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_slice)
{
    qkv_st_file *fx = fixture_open("slice_neg_step");
    qkv_ctx *ctx = qkv_ctx_new();
    if (fx) {
        qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
        qkv_tensor *out = qkv_slice(ctx, x, 1, -6, 100, 2);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
        check_grads(ctx, fx, out, 1, (const char *[]){"x"}, &x);
        qkv_st_close(fx);
    }
    fx = fixture_open("slice_view");
    if (fx) {
        qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x_t"));
        qkv_tensor *out = qkv_slice(ctx, qkv_transpose(ctx, x, 0, 1), 0, 1, -1, 3);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
        check_grads(ctx, fx, out, 1, (const char *[]){"x_t"}, &x);
        qkv_st_close(fx);
    }
    qkv_ctx_free(ctx);
}

TEST(parity_index_select_and_embedding)
{
    qkv_ctx *ctx = qkv_ctx_new();
    int64_t n = 0;
    qkv_st_file *fx = fixture_open("index_select_dup");
    int64_t *idx = fixture_i64(fx, "idx", &n);
    if (idx) {
        qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x_p"));
        qkv_tensor *out =
            qkv_index_select(ctx, qkv_permute(ctx, x, (int[]){1, 2, 0}), 1, idx, n);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
        check_grads(ctx, fx, out, 1, (const char *[]){"x_p"}, &x);
        free(idx);
    }
    if (fx)
        qkv_st_close(fx);
    fx = fixture_open("embedding_dup");
    idx = fixture_i64(fx, "idx", &n);
    if (idx) {
        qkv_tensor *w = qkv_requires_grad(fixture_get(ctx, fx, "w"));
        qkv_tensor *out = qkv_embedding(ctx, w, idx, n);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
        check_grads(ctx, fx, out, 1, (const char *[]){"w"}, &w);
        free(idx);
    }
    if (fx)
        qkv_st_close(fx);
    qkv_ctx_free(ctx);
}

/* packed rows: the kept rows of a (3, 4) batch and back (rows_pack on a
 * permuted view); exact, both ways */
TEST(parity_rows_pack_and_unpack)
{
    qkv_ctx *ctx = qkv_ctx_new();
    int64_t n = 0;
    qkv_st_file *fx = fixture_open("rows_pack");
    int64_t *idx = fixture_i64(fx, "idx", &n);
    if (idx) {
        qkv_rows r = {.B = 3, .T = 4, .n = n, .at = idx};
        qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x_p"));
        qkv_tensor *out = qkv_rows_pack(ctx, qkv_permute(ctx, x, (int[]){1, 0, 2}), &r);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
        check_grads(ctx, fx, out, 1, (const char *[]){"x_p"}, &x);
        free(idx);
    }
    if (fx)
        qkv_st_close(fx);
    fx = fixture_open("rows_unpack");
    idx = fixture_i64(fx, "idx", &n);
    if (idx) {
        qkv_rows r = {.B = 3, .T = 4, .n = n, .at = idx};
        qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
        qkv_tensor *out = qkv_rows_unpack(ctx, x, &r);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
        check_grads(ctx, fx, out, 1, (const char *[]){"x"}, &x);
        free(idx);
    }
    if (fx)
        qkv_st_close(fx);
    qkv_ctx_free(ctx);
}

TEST(parity_masked_fill_and_where)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_st_file *fx = fixture_open("masked_fill_broadcast");
    if (fx) {
        qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x_p"));
        qkv_tensor *mask = fixture_get(ctx, fx, "mask");
        qkv_tensor *out =
            qkv_masked_fill(ctx, qkv_permute(ctx, x, (int[]){2, 1, 0}), mask, -1.5f);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
        check_grads(ctx, fx, out, 1, (const char *[]){"x_p"}, &x);
        qkv_st_close(fx);
    }
    fx = fixture_open("where_broadcast");
    if (fx) {
        qkv_tensor *cond = fixture_get(ctx, fx, "cond");
        qkv_tensor *a = qkv_requires_grad(fixture_get(ctx, fx, "a_t"));
        qkv_tensor *b = qkv_requires_grad(fixture_get(ctx, fx, "b"));
        qkv_tensor *out = qkv_where(ctx, cond, qkv_transpose(ctx, a, 0, 1), b);
        CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 0);
        check_grads(ctx, fx, out, 2, (const char *[]){"a_t", "b"}, (qkv_tensor *[]){a, b});
        qkv_st_close(fx);
    }
    qkv_ctx_free(ctx);
}
