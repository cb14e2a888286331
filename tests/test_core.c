/* test_core.c - arena, RNG, broadcasting arithmetic, matmul, linear, views:
 * gradient checks (central differences of float32 ops with the loss in
 * double) and PyTorch parity, each at the atol + rtol |want| it states. */
#include "test.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

TEST(arena_grows_and_settles)
{
    qkv_arena *a = qkv_arena_new(1024);
    REQUIRE(a, "arena_new");
    for (int i = 0; i < 10; i++)
        CHECK(qkv_arena_alloc(a, 700), "alloc");
    size_t peak = qkv_arena_peak(a);
    CHECK(peak >= 7000, "peak %zu", peak);
    qkv_arena_reset(a);
    uint64_t before = qkv_malloc_count();
    for (int i = 0; i < 10; i++)
        CHECK(qkv_arena_alloc(a, 700), "alloc after reset");
    CHECK(qkv_malloc_count() == before, "a second step of the same size allocated");
    qkv_arena_free(a);
}

/* rewind frees what came after the mark, across chunks too, and keeps
 * what came before */
TEST(arena_mark_rewind)
{
    qkv_arena *a = qkv_arena_new(1024);
    REQUIRE(a, "arena_new");
    int *kept = qkv_arena_alloc(a, 100);
    REQUIRE(kept, "alloc");
    *kept = 42;
    qkv_arena_pos m = qkv_arena_mark(a);
    size_t used = qkv_arena_used(a);
    for (int i = 0; i < 20; i++) /* several new chunks */
        CHECK(qkv_arena_alloc(a, 700), "alloc");
    qkv_arena_rewind(a, m);
    CHECK(qkv_arena_used(a) == used, "used %zu after rewind, %zu at the mark", qkv_arena_used(a),
          used);
    CHECK(*kept == 42, "memory from before the mark changed");
    void *again = qkv_arena_alloc(a, 64);
    CHECK(again == (char *)kept + 128, "the next allocation should follow the kept one");
    qkv_arena_free(a);
}

/* a released block is reused by the next allocation it holds (cut from its
 * tail, the rest kept), merges with released neighbours, and reset or
 * rewind forget the list; small blocks are not listed */
void qkv__arena_release(qkv_arena *a, void *p, size_t bytes);
TEST(arena_release_reuses_and_merges)
{
    qkv_arena *a = qkv_arena_new(1 << 20);
    REQUIRE(a, "arena_new");
    for (int pass = 0; pass < 2; pass++) {
        char *x = qkv_arena_alloc(a, 8192), *y = qkv_arena_alloc(a, 8192);
        char *z = qkv_arena_alloc(a, 8192), *small = qkv_arena_alloc(a, 1000);
        REQUIRE(x && y && z && small, "alloc");
        size_t used = qkv_arena_used(a), peak = qkv_arena_peak(a);
        qkv__arena_release(a, small, 1000); /* too small to list */
        CHECK(qkv_arena_used(a) == used, "a small block was listed");
        qkv__arena_release(a, y, 8192);
        qkv__arena_release(a, x, 8192); /* joins y */
        CHECK(qkv_arena_used(a) == used - 16384, "used %zu, want %zu", qkv_arena_used(a),
              used - 16384);
        CHECK(qkv_arena_alloc(a, 16384) == x, "the merged pair should hold 16 KiB");
        qkv__arena_release(a, x, 16384);
        qkv__arena_release(a, z, 8192); /* x, y and z: one block of 24 KiB */
        CHECK(qkv_arena_alloc(a, 4096) == z + 4096, "cut from the tail of the merged block");
        CHECK(qkv_arena_alloc(a, 20000) == x, "the rest, 20 KiB, was lost");
        CHECK(qkv_arena_peak(a) == peak, "reuse moved the peak");
        char *w = qkv_arena_alloc(a, 8192);
        CHECK(w == small + 1024, "no free block left: the bump pointer goes on");
        qkv__arena_release(a, w, 8192);
        int local[2048];
        qkv__arena_release(a, local, sizeof local); /* not the arena's: ignored */
        if (pass == 0)
            qkv_arena_reset(a);
        else {
            qkv_arena_pos m = qkv_arena_mark(a);
            qkv_arena_rewind(a, m);
        }
        CHECK(qkv_arena_alloc(a, 8192) != w || pass == 0, "rewind kept a free block");
    }
    qkv_arena_free(a);
}

/* After an op's backward its output's gradient goes back to the arena (a
 * chain of 16 tanh holds two gradients at a time, not 16); a leaf keeps
 * its gradient, an op's output has none afterwards; the result is the
 * chain rule's. */
TEST(backward_releases_used_gradients)
{
    qkv_ctx *ctx = qkv_ctx_new();
    enum { N = 64 * 64, DEPTH = 16 };
    qkv_tensor *x = qkv_requires_grad(qkv_full(ctx, 2, SHAPE(64, 64), 0.1f)), *h = x;
    qkv_tensor *mid = NULL;
    for (int i = 0; i < DEPTH; i++) {
        h = qkv_tanh(ctx, h);
        if (i == DEPTH / 2)
            mid = h;
    }
    qkv_tensor *loss = qkv_sum_all(ctx, h);
    REQUIRE(loss, "%s", qkv_error());
    qkv_arena *a = qkv_ctx_arena(ctx);
    size_t before = qkv_arena_peak(a);
    REQUIRE(qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
    double grew = (double)(qkv_arena_peak(a) - before) / (N * sizeof(float));
    CHECK(grew <= 3, "the backward took %.1f gradients' memory (a chain needs 2)", grew);
    CHECK(mid->grad == NULL && h->grad == NULL, "an op's output kept its gradient");
    double v = 0.1, d = 1;
    for (int i = 0; i < DEPTH; i++) {
        v = tanh(v);
        d *= 1 - v * v;
    }
    CHECK_CLOSE_GRAD(x, qkv_full(ctx, 2, SHAPE(64, 64), (float)d), 0, 1e-5);
    qkv_ctx_free(ctx);
}

/* n floats 0, 1, 2, ... made after whatever the arena holds */
static qkv_tensor *iota(qkv_ctx *ctx, int64_t rows, int64_t cols)
{
    qkv_tensor *t = qkv_new(ctx, 2, SHAPE(rows, cols));
    for (int64_t i = 0; t && i < rows * cols; i++)
        t->data[i] = (float)i;
    return t;
}

static bool is_iota(const qkv_tensor *t, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (t->data[i] != (float)i)
            return false;
    return true;
}

/* qkv_ctx_rewind_keep frees a block's intermediates and moves its output
 * down to the mark: within the mark's chunk (source and destination
 * overlapping), from a chunk begun after the mark, from a view; data older
 * than the mark stays put; with gradients on nothing happens; and once the
 * arena has settled, a second pass allocates nothing. */
TEST(ctx_rewind_keep_frees_all_but_the_output)
{
    qkv_ctx *ctx = qkv_ctx_new();
    REQUIRE(ctx, "ctx_new");
    qkv_set_grad_enabled(ctx, 0);
    qkv_arena *a = qkv_ctx_arena(ctx);
    size_t tensor_bytes = (sizeof(qkv_tensor) + 63) / 64 * 64;
    for (int pass = 0; pass < 2; pass++) {
        uint64_t mallocs = qkv_malloc_count();
        qkv_tensor *old = iota(ctx, 4, 4);
        /* in the mark's chunk: 1 KiB of intermediates, then 4 KiB of output
         * that overlaps where it moves to */
        qkv_arena_pos m = qkv_arena_mark(a);
        size_t at_mark = qkv_arena_used(a);
        CHECK(qkv_new(ctx, 1, SHAPE(256)), "alloc");
        qkv_tensor *y = qkv_ctx_rewind_keep(ctx, m, iota(ctx, 32, 32));
        REQUIRE(y && y->ndim == 2 && y->shape[0] == 32 && y->shape[1] == 32, "kept: %s",
                qkv_error());
        CHECK(is_iota(y, 1024), "pass %d: the output changed on its way down", pass);
        CHECK(qkv_arena_used(a) == at_mark + 4096 + tensor_bytes,
              "pass %d: %zu bytes in use, %zu at the mark + the output", pass, qkv_arena_used(a),
              at_mark);
        /* from chunks begun after the mark (the first pass; after the reset
         * one chunk holds the peak), and a transposed view of the output */
        m = qkv_arena_mark(a);
        at_mark = qkv_arena_used(a);
        CHECK(qkv_new(ctx, 1, SHAPE(1 << 19)), "a 2 MiB intermediate");
        qkv_tensor *big = iota(ctx, 600, 1000);
        qkv_tensor *z = qkv_ctx_rewind_keep(ctx, m, qkv_transpose(ctx, big, 0, 1));
        REQUIRE(z && z->shape[0] == 1000 && z->shape[1] == 600 && qkv_is_contiguous(z),
                "kept view: %s", qkv_error());
        CHECK(z->data[0] == 0 && z->data[1] == 1000 && z->data[600] == 1 &&
                  z->data[1000 * 600 - 1] == 600 * 1000 - 1,
              "pass %d: the transposed output is wrong", pass);
        CHECK(qkv_arena_used(a) == at_mark + 2400000 + tensor_bytes,
              "pass %d: %zu bytes in use after the keep, %zu at the mark", pass,
              qkv_arena_used(a), at_mark);
        /* data from before the mark is not moved; only the tensor is new */
        m = qkv_arena_mark(a);
        at_mark = qkv_arena_used(a);
        CHECK(qkv_new(ctx, 1, SHAPE(1000)), "alloc");
        qkv_tensor *o = qkv_ctx_rewind_keep(ctx, m, old);
        CHECK(o && o->data == old->data && is_iota(o, 16) &&
                  qkv_arena_used(a) == at_mark + tensor_bytes,
              "pass %d: older data moved or the arena kept more", pass);
        /* NULL: rewinds */
        m = qkv_arena_mark(a);
        at_mark = qkv_arena_used(a);
        CHECK(qkv_new(ctx, 1, SHAPE(1000)), "alloc");
        CHECK(!qkv_ctx_rewind_keep(ctx, m, NULL) && qkv_arena_used(a) == at_mark,
              "NULL output: the arena was not rewound");
        if (pass == 1)
            CHECK(qkv_malloc_count() == mallocs, "the settled arena allocated %llu times",
                  (unsigned long long)(qkv_malloc_count() - mallocs));
        qkv_ctx_reset(ctx);
    }
    /* gradients on: the backward needs the intermediates, nothing goes */
    qkv_set_grad_enabled(ctx, 1);
    qkv_arena_pos m = qkv_arena_mark(a);
    qkv_tensor *y = iota(ctx, 8, 8);
    size_t used = qkv_arena_used(a);
    CHECK(qkv_ctx_rewind_keep(ctx, m, y) == y && qkv_arena_used(a) == used,
          "with gradients on the arena was rewound");
    qkv_ctx_free(ctx);
}

TEST(rng_deterministic)
{
    qkv_rng a, b;
    qkv_rng_seed(&a, 7);
    qkv_rng_seed(&b, 7);
    for (int i = 0; i < 100; i++)
        CHECK(qkv_rng_u64(&a) == qkv_rng_u64(&b), "streams differ");
    double m = 0, v = 0;
    for (int i = 0; i < 100000; i++) {
        double x = qkv_rng_normal(&a);
        m += x;
        v += x * x;
    }
    /* 5 standard errors: sqrt(1 / n) for the mean, sqrt(2 / n) for E x^2 */
    CHECK_SCALAR(m / 1e5, 0.0, 5 * sqrt(1 / 1e5), 0);
    CHECK_SCALAR(v / 1e5, 1.0, 5 * sqrt(2 / 1e5), 0);
}

TEST(shape_errors_name_op_and_shapes)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_zeros(ctx, 2, SHAPE(2, 3)), *b = qkv_zeros(ctx, 2, SHAPE(4, 5));
    CHECK(qkv_add(ctx, a, b) == NULL, "add of (2,3) and (4,5) succeeded");
    CHECK(strstr(qkv_error(), "add") && strstr(qkv_error(), "(2, 3)") &&
              strstr(qkv_error(), "(4, 5)"),
          "message: %s", qkv_error());
    CHECK(qkv_matmul(ctx, a, b, 0, 0) == NULL, "matmul (2,3)x(4,5) succeeded");
    CHECK(strstr(qkv_error(), "matmul"), "message: %s", qkv_error());
    /* a chain with a failed op keeps the first message */
    qkv_tensor *c = qkv_mul(ctx, qkv_add(ctx, a, b), a);
    CHECK(c == NULL && strstr(qkv_error(), "add"), "chain: %s", qkv_error());
    qkv_ctx_free(ctx);
}

static qkv_tensor *f_add(qkv_ctx *c, qkv_tensor **t, void *u) { return qkv_add(c, t[0], t[1]); }
static qkv_tensor *f_sub(qkv_ctx *c, qkv_tensor **t, void *u) { return qkv_sub(c, t[0], t[1]); }
static qkv_tensor *f_mul(qkv_ctx *c, qkv_tensor **t, void *u) { return qkv_mul(c, t[0], t[1]); }
static qkv_tensor *f_div(qkv_ctx *c, qkv_tensor **t, void *u) { return qkv_div(c, t[0], t[1]); }

TEST(gradcheck_binary_broadcast)
{
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    gc_input in[2] = {gc_rand(&r, 3, SHAPE(2, 3, 4), -1, 1, true),
                      gc_rand(&r, 2, SHAPE(3, 1), 0.5f, 1.5f, true)};
    CHECK_GRAD(f_add, 2, in, NULL, 2e-5, 1e-3);
    CHECK_GRAD(f_sub, 2, in, NULL, 2e-6, 1e-3);
    CHECK_GRAD(f_mul, 2, in, NULL, 2e-6, 1e-4);
    CHECK_GRAD(f_div, 2, in, NULL, 5e-6, 2e-4);
    gc_free(2, in);
}

static qkv_tensor *f_matmul(qkv_ctx *c, qkv_tensor **t, void *u)
{
    int *fl = u;
    return qkv_matmul(c, t[0], t[1], fl[0], fl[1]);
}

TEST(gradcheck_matmul_flags)
{
    qkv_rng r;
    qkv_rng_seed(&r, 2);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int fl[2] = {ta, tb};
            gc_input in[2] = {gc_rand(&r, 3, ta ? SHAPE(2, 4, 3) : SHAPE(2, 3, 4), -1, 1, true),
                              gc_rand(&r, 2, tb ? SHAPE(5, 4) : SHAPE(4, 5), -1, 1, true)};
            CHECK_GRAD(f_matmul, 2, in, fl, 2e-5, 1e-3);
            gc_free(2, in);
        }
}

static qkv_tensor *f_matmul_views(qkv_ctx *c, qkv_tensor **t, void *u)
{
    /* a transposed view and a permuted view go to GEMM without copies */
    qkv_tensor *a = qkv_transpose(c, t[0], 1, 2);                 /* (2,3,4) */
    qkv_tensor *b = qkv_permute(c, t[1], (int[]){1, 0});          /* (4,5)   */
    return qkv_matmul(c, a, b, 0, 0);
}

TEST(gradcheck_matmul_views)
{
    qkv_rng r;
    qkv_rng_seed(&r, 3);
    gc_input in[2] = {gc_rand(&r, 3, SHAPE(2, 4, 3), -1, 1, true),
                      gc_rand(&r, 2, SHAPE(5, 4), -1, 1, true)};
    CHECK_GRAD(f_matmul_views, 2, in, NULL, 5e-5, 1e-3);
    gc_free(2, in);
}

static qkv_tensor *f_linear(qkv_ctx *c, qkv_tensor **t, void *u)
{
    return qkv_linear(c, t[0], t[1], t[2]);
}

TEST(gradcheck_linear)
{
    qkv_rng r;
    qkv_rng_seed(&r, 4);
    gc_input in[3] = {gc_rand(&r, 3, SHAPE(2, 3, 5), -1, 1, true),
                      gc_rand(&r, 2, SHAPE(4, 5), -1, 1, true),
                      gc_rand(&r, 1, SHAPE(4), -1, 1, true)};
    CHECK_GRAD(f_linear, 3, in, NULL, 5e-5, 1e-3);
    gc_free(3, in);
}

static qkv_tensor *f_reshape_permute(qkv_ctx *c, qkv_tensor **t, void *u)
{
    qkv_tensor *x = qkv_permute(c, t[0], (int[]){2, 0, 1});       /* (4,2,3) */
    x = qkv_reshape(c, x, 2, SHAPE(8, -1));                       /* copy, (8,3) */
    return qkv_mul(c, x, x);
}

TEST(gradcheck_views)
{
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    gc_input in[1] = {gc_rand(&r, 3, SHAPE(2, 3, 4), -1, 1, true)};
    CHECK_GRAD(f_reshape_permute, 1, in, NULL, 5e-7, 1e-4);
    gc_free(1, in);
}

TEST(views_share_data)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_randn(ctx, 2, SHAPE(3, 4), 0, 1);
    qkv_tensor *t = qkv_transpose(ctx, x, 0, 1);
    CHECK(t->data == x->data && !qkv_is_contiguous(t), "transpose copied");
    qkv_tensor *v = qkv_reshape(ctx, x, 1, SHAPE(12));
    CHECK(v->data == x->data, "reshape of contiguous copied");
    CHECK(qkv_get(t, 1) == x->data[4], "transposed element");
    qkv_ctx_free(ctx);
}

/* ---- parity with PyTorch ---- */

typedef qkv_tensor *(*bin_fn)(qkv_ctx *, qkv_tensor *, qkv_tensor *);

static void parity_binary(const char *name, bin_fn f)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *a = qkv_requires_grad(fixture_get(ctx, fx, "a"));
    qkv_tensor *b = qkv_requires_grad(fixture_get(ctx, fx, "b"));
    qkv_tensor *out = f(ctx, a, b);
    qkv_tensor *want = fixture_get(ctx, fx, "out"), *gout = fixture_get(ctx, fx, "gout");
    CHECK_CLOSE(out, want, 1e-7, 5e-7);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK) {
        CHECK_CLOSE_GRAD(a, fixture_get(ctx, fx, "grad_a"), 5e-7, 5e-7);
        CHECK_CLOSE_GRAD(b, fixture_get(ctx, fx, "grad_b"), 5e-6, 5e-7);
    } else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_binary_broadcast)
{
    parity_binary("add_broadcast", qkv_add);
    parity_binary("sub_broadcast", qkv_sub);
    parity_binary("mul_broadcast", qkv_mul);
    parity_binary("div_broadcast", qkv_div);
}

static qkv_tensor *mm_tt(qkv_ctx *c, qkv_tensor *a, qkv_tensor *b) { return qkv_matmul(c, a, b, 1, 1); }
static qkv_tensor *mm(qkv_ctx *c, qkv_tensor *a, qkv_tensor *b) { return qkv_matmul(c, a, b, 0, 0); }

TEST(parity_matmul)
{
    parity_binary("matmul_tt", mm_tt);
    parity_binary("matmul_batch_broadcast", mm);
}

TEST(parity_linear)
{
    qkv_st_file *fx = fixture_open("linear");
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(fixture_get(ctx, fx, "x"));
    qkv_tensor *w = qkv_requires_grad(fixture_get(ctx, fx, "w"));
    qkv_tensor *b = qkv_requires_grad(fixture_get(ctx, fx, "b"));
    qkv_tensor *out = qkv_linear(ctx, x, w, b);
    CHECK_CLOSE(out, fixture_get(ctx, fx, "out"), 0, 5e-7);
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    REQUIRE(out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK, "%s", qkv_error());
    CHECK_CLOSE_GRAD(x, fixture_get(ctx, fx, "grad_x"), 0, 5e-7);
    CHECK_CLOSE_GRAD(w, fixture_get(ctx, fx, "grad_w"), 0, 5e-7);
    CHECK_CLOSE_GRAD(b, fixture_get(ctx, fx, "grad_b"), 0, 5e-7);
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

/* ---- the gradient check itself must catch a wrong backward ---- */
#include "qkv_internal.h"

static void wrong_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = x * x, but claims dx += g * x (missing the factor 2) */
    float *gx = qkv__grad(ctx, n->in[0]);
    for (int64_t i = 0; i < qkv_numel(n->in[0]); i++)
        gx[i] += n->out->grad[i] * n->in[0]->data[i];
}

static qkv_tensor *f_wrong_square(qkv_ctx *c, qkv_tensor **t, void *u)
{
    qkv_tensor *x = t[0], *out = qkv_new(c, x->ndim, x->shape);
    for (int64_t i = 0; i < qkv_numel(x); i++)
        out->data[i] = x->data[i] * x->data[i];
    qkv__record(c, QKV_OP_CUSTOM, wrong_backward, out, 1, &x);
    return out;
}

TEST(gradcheck_catches_wrong_backward)
{
    qkv_rng r;
    qkv_rng_seed(&r, 6);
    gc_input in[1] = {gc_rand(&r, 1, SHAPE(5), 0.5f, 1.5f, true)};
    gc_result g = gradcheck_run(f_wrong_square, 1, in, NULL, 1e-3, 1e-5, 1e-3);
    CHECK(!g.ok && !g.vacuous && !g.op_failed && fabs(g.analytic * 2 - g.numeric) < 1e-3,
          "a backward off by a factor 2 passed (worst: analytic %g, numeric %g)", g.analytic,
          g.numeric);
    gc_free(1, in);
}

/* ---- errors: a stale one never fails backward, a kernel never erases one ---- */

TEST(backward_starts_from_a_clean_status)
{
    /* a failure the caller handled earlier (here: out of memory, which
     * backward also watches for between rules) must not leak into backward */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(qkv_full(ctx, 2, SHAPE(2, 3), 0.5f));
    qkv_tensor *w = qkv_requires_grad(qkv_full(ctx, 2, SHAPE(3, 4), 0.5f));
    qkv_tensor *loss = qkv_sum_all(ctx, qkv_tanh(ctx, qkv_matmul(ctx, x, w, 0, 0)));
    REQUIRE(loss, "%s", qkv_error());
    qkv_set_error(QKV_ERR_NOMEM, "an earlier failure, handled");
    CHECK(qkv_backward(ctx, loss) == QKV_OK, "backward failed: %s", qkv_error());
    CHECK(qkv_error_status() == QKV_OK && qkv_error()[0] == '\0', "status after: %s (%s)",
          qkv_status_name(qkv_error_status()), qkv_error());
    /* d/dw sum tanh(x w) = x^T (1 - tanh^2(x w)): every x w entry is 0.75 */
    double t = tanh(0.75), g = 2 * 0.5 * (1 - t * t);
    CHECK_CLOSE_GRAD(w, qkv_full(ctx, 2, SHAPE(3, 4), (float)g), 0, 1e-6);
    qkv_ctx_free(ctx);
}

TEST(kernels_keep_the_callers_error)
{
    /* the caller set an error and goes on; ops that succeed, their
     * backward and an optimizer step leave its message and status alone */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_params *ps = qkv_params_new();
    qkv_tensor *w = qkv_params_add(ps, "w", 2, SHAPE(96, 80), 0);
    REQUIRE(w && qkv_params_alloc(ps) == QKV_OK, "%s", qkv_error());
    qkv_init_constant(w, 0.01f);
    qkv_optim *opt = qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_ADAMW, .lr = 1e-3f});
    REQUIRE(opt, "%s", qkv_error());
    qkv_tensor *x = qkv_randn(ctx, 3, SHAPE(2, 40, 96), 0, 1);
    qkv_tensor *img = qkv_randn(ctx, 4, SHAPE(2, 3, 9, 9), 0, 1);
    qkv_tensor *k = qkv_randn(ctx, 4, SHAPE(4, 3, 3, 3), 0, 1);
    const char *msg = "the caller's own message";
    qkv_set_error(QKV_ERR_IO, "%s", msg);
    qkv_tensor *h = qkv_gelu(ctx, qkv_matmul(ctx, x, w, 0, 0));     /* GEMM, GELU */
    h = qkv_layer_norm(ctx, h, NULL, NULL, 1e-5f);                 /* (2, 40, 80) */
    qkv_tensor *q = qkv_reshape(ctx, h, 4, SHAPE(2, 40, 4, 20));
    q = qkv_transpose(ctx, q, 1, 2);                                /* (2, 4, 40, 20) */
    h = qkv_attention(ctx, q, q, q, &(qkv_attn_opts){.causal = 1}); /* fused attention */
    h = qkv_log_softmax(ctx, qkv_reshape(ctx, h, 2, SHAPE(320, 20)));
    qkv_tensor *c = qkv_max_pool2d(ctx, qkv_conv2d(ctx, img, k, NULL, NULL), 2, 2, 0, 0, 0, 0);
    int64_t target[320] = {0};
    qkv_tensor *loss = qkv_add(ctx, qkv_cross_entropy(ctx, h, target, NULL), qkv_mean_all(ctx, c));
    CHECK(loss && !strcmp(qkv_error(), msg) && qkv_error_status() == QKV_ERR_IO,
          "after the forward: %s (%s)", qkv_error(), qkv_status_name(qkv_error_status()));
    REQUIRE(loss && qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
    qkv_set_error(QKV_ERR_IO, "%s", msg);
    CHECK(qkv_optim_step(opt) == QKV_OK, "optimizer step");
    qkv_params_zero_grad(ps);
    CHECK(!strcmp(qkv_error(), msg) && qkv_error_status() == QKV_ERR_IO,
          "after the optimizer step: %s (%s)", qkv_error(), qkv_status_name(qkv_error_status()));
    qkv_optim_free(opt);
    qkv_params_free(ps);
    qkv_ctx_free(ctx);
}
