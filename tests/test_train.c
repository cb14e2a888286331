/* test_train.c - parameters, initialisers, optimizers, clipping, schedules,
 * and the two training-loop guarantees (no malloc in a steady-state step,
 * bit-identical runs).
 *
 * Tolerances: optimizer steps match PyTorch within 5e-7 + 1e-6 |want|
 * (float updates computed in the same order as torch.optim's, so only
 * rounding of the double coefficients differs: measured 5e-9 + 1e-6 |want|
 * with gcc, 1.1e-7 with clang, which fuses multiply-adds),
 * clipping and schedules within 2 ulp (2.5e-7 relative). Initialisers are
 * checked statistically on ~10^5 draws: mean within 5 standard errors, std
 * within 2%, and the exact bounds. There is no gradient check here: nothing
 * in this area is differentiated. */
#include "test.h"

#include <stdint.h>

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* ---- parameters ---- */

TEST(params_layout_and_flags)
{
    qkv_params *ps = qkv_params_new();
    REQUIRE(ps, "params_new: %s", qkv_error());
    char name[16] = "w";
    qkv_tensor *w = qkv_params_add(ps, name, 2, SHAPE(3, 4), 0);
    strcpy(name, "changed"); /* the store keeps its own copy */
    qkv_tensor *b = qkv_params_add(ps, "b", 1, SHAPE(4), 0);
    qkv_tensor *rm = qkv_params_add(ps, "running_mean", 1, SHAPE(4), QKV_PARAM_BUFFER);
    qkv_tensor *k = qkv_params_add(ps, "k", 3, SHAPE(2, 3, 5), 0);
    qkv_tensor *s = qkv_params_add(ps, "scalar", 0, NULL, QKV_PARAM_FROZEN);
    REQUIRE(w && b && rm && k && s, "params_add: %s", qkv_error());
    CHECK(w->data == NULL && w->grad == NULL, "memory before alloc");
    CHECK(qkv_params_add(ps, "b", 1, SHAPE(2), 0) == NULL && strstr(qkv_error(), "'b'"),
          "a duplicate name was accepted: %s", qkv_error());
    CHECK(qkv_params_add(ps, "neg", 1, SHAPE(-1), 0) == NULL, "negative size accepted");

    uint64_t before = qkv_malloc_count();
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "alloc: %s", qkv_error());
    CHECK(qkv_malloc_count() - before == 2, "alloc made %llu allocations, not 2",
          (unsigned long long)(qkv_malloc_count() - before));
    CHECK(qkv_params_add(ps, "late", 1, SHAPE(2), 0) == NULL &&
              qkv_error_status() == QKV_ERR_STATE,
          "add after alloc: %s", qkv_error());

    int64_t nv = 0, ng = 0;
    float *values = qkv_params_values(ps, &nv), *grads = qkv_params_grads(ps, &ng);
    /* 12, 4, 4, 30, 1 floats, each padded to 16 */
    CHECK(nv == 16 + 16 + 16 + 32 + 16 && ng == nv, "flat buffers of %lld and %lld floats",
          (long long)nv, (long long)ng);
    qkv_tensor *all[] = {w, b, rm, k, s};
    int64_t offset[] = {0, 16, 32, 48, 80};
    for (int i = 0; i < 5; i++) {
        CHECK(all[i]->data == values + offset[i] && all[i]->grad == grads + offset[i],
              "entry %d not at offset %lld", i, (long long)offset[i]);
        CHECK((uintptr_t)all[i]->data % 64 == 0, "entry %d not 64-byte aligned", i);
        CHECK(qkv_params_at(ps, i) == all[i], "params_at(%d)", i);
    }
    for (int64_t i = 0; i < nv; i++)
        CHECK(values[i] == 0 && grads[i] == 0, "flat buffers not zeroed at %lld", (long long)i);
    CHECK(w->requires_grad && b->requires_grad && k->requires_grad, "trainable: no grad");
    CHECK(!rm->requires_grad && !s->requires_grad, "buffer or frozen entry needs a grad");
    CHECK(qkv_params_count(ps) == 5, "count %lld", (long long)qkv_params_count(ps));
    CHECK(qkv_params_numel(ps) == 12 + 4 + 30 + 1, "numel %lld", (long long)qkv_params_numel(ps));
    CHECK(qkv_params_find(ps, "w") == w && qkv_params_find(ps, "k") == k, "find");
    CHECK(qkv_params_find(ps, "changed") == NULL && qkv_params_find(ps, "x") == NULL,
          "find of an unknown name");
    CHECK(strcmp(w->name, "w") == 0, "name %s", w->name);
    CHECK(qkv_params_flags(ps, 2) == QKV_PARAM_BUFFER, "flags");

    qkv_params_set_flags(ps, 1, QKV_PARAM_FROZEN);
    CHECK(!b->requires_grad, "frozen entry still needs a gradient");
    qkv_params_set_flags(ps, 1, 0);
    CHECK(b->requires_grad, "unfrozen entry needs no gradient");
    qkv_params_set_group(ps, 3, 2);
    CHECK(qkv_params_group(ps, 3) == 2 && qkv_params_group(ps, 0) == 0, "groups");
    CHECK(qkv_params_at(ps, 5) == NULL && strstr(qkv_error(), "5"), "entry 5: %s", qkv_error());

    for (int64_t i = 0; i < nv; i++)
        grads[i] = 1.0f + (float)i;
    qkv_params_zero_grad(ps);
    for (int64_t i = 0; i < nv; i++)
        CHECK(grads[i] == 0, "zero_grad left %g at %lld", grads[i], (long long)i);
    qkv_params_free(ps);
}

/* A store opened for inference has values only: no gradient buffer, no
 * grad pointers, nothing requires a gradient, and what trains refuses it
 * with a message that names why; a forward (and a backward to an input)
 * works as with qkv_params_alloc. */
TEST(params_alloc_inference_has_no_gradients)
{
    qkv_params *ps = qkv_params_new();
    qkv_tensor *w = qkv_params_add(ps, "w", 2, SHAPE(3, 4), 0);
    qkv_tensor *rm = qkv_params_add(ps, "running_mean", 1, SHAPE(4), QKV_PARAM_BUFFER);
    REQUIRE(w && rm, "params_add: %s", qkv_error());
    CHECK(!qkv_params_has_grads(ps), "an unallocated store has gradients");
    uint64_t before = qkv_malloc_count();
    REQUIRE(qkv_params_alloc_inference(ps) == QKV_OK, "alloc_inference: %s", qkv_error());
    CHECK(qkv_malloc_count() - before == 1, "alloc_inference made %llu allocations, not 1",
          (unsigned long long)(qkv_malloc_count() - before));
    int64_t nv = 0, ng = -1;
    CHECK(qkv_params_values(ps, &nv) == w->data && nv == 32, "values: %lld floats",
          (long long)nv);
    CHECK(qkv_params_grads(ps, &ng) == NULL && ng == 0, "grads: %lld floats", (long long)ng);
    CHECK(!qkv_params_has_grads(ps), "has_grads");
    CHECK(w->grad == NULL && rm->grad == NULL, "an entry has a grad pointer");
    CHECK(!w->requires_grad && !rm->requires_grad, "an entry requires a gradient");
    qkv_params_set_flags(ps, 0, 0); /* unfreezing gives it no gradient to receive */
    CHECK(!w->requires_grad, "set_flags made an entry require a gradient");
    qkv_params_zero_grad(ps); /* nothing to zero: no crash */
    CHECK(qkv_params_alloc_inference(ps) == QKV_ERR_STATE && strstr(qkv_error(), "already"),
          "a second alloc: %s", qkv_error());

    CHECK(!qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_SGD, .lr = 1}) &&
              qkv_error_status() == QKV_ERR_STATE &&
              strstr(qkv_error(), "qkv_params_alloc_inference"),
          "optim_new: %s", qkv_error());
    CHECK(!qkv_shards_new(ps, 1) && strstr(qkv_error(), "qkv_params_alloc_inference"),
          "shards_new: %s", qkv_error());
    CHECK(isnan(qkv_clip_grad_norm(ps, 1.0f)) && strstr(qkv_error(), "qkv_params_alloc_inference"),
          "clip_grad_norm: %s", qkv_error());

    /* y = x w: the forward as usual; a backward reaches x, not w */
    for (int i = 0; i < 12; i++)
        w->data[i] = 0.5f * (float)i;
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(qkv_full(ctx, 2, SHAPE(2, 3), 1.0f));
    qkv_tensor *y = qkv_matmul(ctx, x, w, 0, 0);
    REQUIRE(y && qkv_backward(ctx, qkv_sum_all(ctx, y)) == QKV_OK, "%s", qkv_error());
    CHECK_SCALAR(y->data[0], 0.5 * (0 + 4 + 8), 0, 0);
    CHECK_SCALAR(x->grad[0], 0.5 * (0 + 1 + 2 + 3), 0, 0); /* row 0 of w summed */
    CHECK(w->grad == NULL, "the backward wrote a gradient for an inference store");
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

/* ---- initialisers ---- */

typedef struct {
    double mean, std, lo, hi;
} stats;

static stats stats_of(const qkv_tensor *t)
{
    int64_t n = qkv_numel(t);
    double s = 0, ss = 0, lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double x = t->data[i];
        s += x;
        ss += x * x;
        lo = fmin(lo, x);
        hi = fmax(hi, x);
    }
    double mean = s / n;
    return (stats){mean, sqrt(ss / n - mean * mean), lo, hi};
}

/* mean within 5 standard errors, std within 2% */
static void check_stats(const char *what, const qkv_tensor *t, double mean, double std)
{
    stats st = stats_of(t);
    double se = std / sqrt((double)qkv_numel(t));
    test_note("%s", what);
    CHECK_SCALAR(st.mean, mean, 5 * se, 0);
    CHECK_SCALAR(st.std, std, 0, 0.02);
}

TEST(init_distributions)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    qkv_tensor *t = qkv_new(ctx, 2, SHAPE(300, 400));

    REQUIRE(qkv_init_uniform(&r, t, -2, 3) == QKV_OK, "uniform: %s", qkv_error());
    check_stats("uniform(-2, 3)", t, 0.5, 5 / sqrt(12.0));
    stats st = stats_of(t);
    CHECK(st.lo >= -2 && st.hi < 3 && st.lo < -1.99 && st.hi > 2.99, "uniform range [%g, %g]",
          st.lo, st.hi);

    REQUIRE(qkv_init_normal(&r, t, 1, 2) == QKV_OK, "normal: %s", qkv_error());
    check_stats("normal(1, 2)", t, 1, 2);

    /* std of a standard normal cut to [-2, 2]: 1 - 2 * 2 phi(2) / (Phi(2) - Phi(-2)) */
    REQUIRE(qkv_init_trunc_normal(&r, t, 0, 1, -2, 2) == QKV_OK, "trunc: %s", qkv_error());
    double phi2 = exp(-2.0) / sqrt(2 * M_PI), mass = erf(2 / sqrt(2.0));
    check_stats("trunc_normal(0, 1, -2, 2)", t, 0, sqrt(1 - 4 * phi2 / mass));
    st = stats_of(t);
    CHECK(st.lo >= -2 && st.hi <= 2 && st.lo < -1.99 && st.hi > 1.99, "trunc range [%g, %g]",
          st.lo, st.hi);
    CHECK(qkv_init_trunc_normal(&r, t, 0, 0.1f, 5, 6) == QKV_ERR_ARG, "a hopeless interval");

    /* xavier on a Linear weight (out 300, in 400) */
    double a = sqrt(6.0 / 700);
    REQUIRE(qkv_init_xavier_uniform(&r, t, 1) == QKV_OK, "xavier_uniform: %s", qkv_error());
    check_stats("xavier_uniform", t, 0, a / sqrt(3.0));
    st = stats_of(t);
    CHECK(st.lo >= -a && st.hi <= a && st.hi > 0.999 * a, "xavier range [%g, %g], bound %g",
          st.lo, st.hi, a);
    REQUIRE(qkv_init_xavier_normal(&r, t, 2) == QKV_OK, "xavier_normal: %s", qkv_error());
    check_stats("xavier_normal gain 2", t, 0, 2 * sqrt(2.0 / 700));

    /* kaiming_normal fan_out on (300, 400): std sqrt(2) / sqrt(300) */
    REQUIRE(qkv_init_kaiming_normal(&r, t, 0, QKV_FAN_OUT) == QKV_OK, "%s", qkv_error());
    check_stats("kaiming_normal fan_out", t, 0, sqrt(2.0 / 300));

    /* nn.Conv2d(16, 64, 3, groups=2)'s default: kaiming_uniform(a = sqrt(5))
     * on (64, 8, 3, 3), fan_in 72, so the bound is 1 / sqrt(72) */
    qkv_tensor *conv = qkv_new(ctx, 4, SHAPE(64, 8, 3, 3));
    qkv_tensor *big = qkv_new(ctx, 4, SHAPE(64 * 32, 8, 3, 3)); /* same fan_in, more draws */
    REQUIRE(qkv_init_kaiming_uniform(&r, conv, sqrtf(5), QKV_FAN_IN) == QKV_OK, "%s",
            qkv_error());
    REQUIRE(qkv_init_kaiming_uniform(&r, big, sqrtf(5), QKV_FAN_IN) == QKV_OK, "%s",
            qkv_error());
    double bound = 1 / sqrt(72.0);
    check_stats("kaiming_uniform conv", big, 0, bound / sqrt(3.0));
    st = stats_of(conv);
    CHECK(st.lo >= -bound && st.hi <= bound && st.hi > 0.99 * bound, "conv range [%g, %g] %g",
          st.lo, st.hi, bound);

    /* errors, and the tensor left as it was */
    qkv_tensor *v = qkv_full(ctx, 1, SHAPE(8), 7);
    CHECK(qkv_init_xavier_uniform(&r, v, 1) == QKV_ERR_SHAPE && strstr(qkv_error(), "(8)"),
          "xavier on 1-D: %s", qkv_error());
    CHECK(qkv_init_kaiming_normal(&r, v, 0, QKV_FAN_IN) == QKV_ERR_SHAPE, "kaiming on 1-D");
    CHECK(qkv_init_uniform(&r, v, 1, 0) == QKV_ERR_ARG, "uniform with lo > hi");
    CHECK(qkv_init_normal(&r, NULL, 0, 1) == QKV_ERR_ARG, "normal of NULL");
    CHECK(v->data[0] == 7 && v->data[7] == 7, "a failed init wrote");
    qkv_ctx_free(ctx);
}

TEST(init_view_and_constant)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *m = qkv_zeros(ctx, 2, SHAPE(4, 6));
    /* the transposed view of the rows 1 and 3: only those are written */
    qkv_tensor *rows = qkv_slice(ctx, m, 0, 1, 4, 2);
    REQUIRE(rows, "slice: %s", qkv_error());
    qkv_tensor *view = qkv_transpose(ctx, rows, 0, 1);
    REQUIRE(view && !qkv_is_contiguous(view), "transpose: %s", qkv_error());
    REQUIRE(qkv_init_constant(view, 2.5f) == QKV_OK, "constant: %s", qkv_error());
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 6; j++)
            CHECK(m->data[i * 6 + j] == (i % 2 ? 2.5f : 0.0f), "m[%d][%d] = %g", i, j,
                  m->data[i * 6 + j]);
    qkv_rng r;
    qkv_rng_seed(&r, 3);
    REQUIRE(qkv_init_uniform(&r, view, 10, 11) == QKV_OK, "uniform: %s", qkv_error());
    for (int j = 0; j < 6; j++)
        CHECK(m->data[j] == 0 && m->data[6 + j] >= 10 && m->data[6 + j] < 11, "view fill");
    /* the same draws in the same (logical) order as a contiguous tensor */
    qkv_tensor *c = qkv_new(ctx, 2, SHAPE(6, 2));
    qkv_rng_seed(&r, 3);
    qkv_init_uniform(&r, c, 10, 11);
    CHECK_CLOSE(view, c, 0, 0); /* a view fills in the same order */
    qkv_ctx_free(ctx);
}

/* ---- optimizers against torch.optim ---- */

static double meta_num(qkv_st_file *f, const char *key, double dflt)
{
    const char *s = qkv_st_meta(f, key);
    return s ? atof(s) : dflt;
}

static const char *const NAMES[] = {"w", "b", "k"};

static void check_optim_case(const char *fixture)
{
    qkv_st_file *f = fixture_open(fixture);
    REQUIRE(f, "fixture");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_params *ps = qkv_params_new();
    qkv_tensor *p[3];
    for (int i = 0; i < 3; i++) {
        qkv_tensor *init = fixture_get(ctx, f, NAMES[i]);
        REQUIRE(init, "fixture %s", NAMES[i]);
        p[i] = qkv_params_add(ps, NAMES[i], init->ndim, init->shape, 0);
    }
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "alloc: %s", qkv_error());
    for (int i = 0; i < 3; i++)
        memcpy(p[i]->data, fixture_get(ctx, f, NAMES[i])->data,
               (size_t)qkv_numel(p[i]) * sizeof(float));
    qkv_params_set_group(ps, 1, 1); /* b, in its own torch param group */

    const char *kind = qkv_st_meta(f, "kind");
    REQUIRE(kind, "fixture %s has no kind", fixture);
    qkv_optim_config cfg = {
        .kind = !strcmp(kind, "sgd") ? QKV_SGD : !strcmp(kind, "adam") ? QKV_ADAM : QKV_ADAMW,
        .lr = (float)meta_num(f, "lr", 0),
        .momentum = (float)meta_num(f, "momentum", 0),
        .dampening = (float)meta_num(f, "dampening", 0),
        .nesterov = (int)meta_num(f, "nesterov", 0),
        .beta1 = (float)meta_num(f, "beta1", 0),
        .beta2 = (float)meta_num(f, "beta2", 0),
        .eps = (float)meta_num(f, "eps", 0),
        .weight_decay = (float)meta_num(f, "weight_decay", 0),
    };
    qkv_optim *o = qkv_optim_new(ps, &cfg);
    REQUIRE(o, "optim_new: %s", qkv_error());
    qkv_optim_set_group_scale(o, 1, (float)meta_num(f, "scale_b", 1));
    for (int step = 0; step < 5; step++) {
        char key[32];
        for (int i = 0; i < 3; i++) {
            snprintf(key, sizeof key, "g%d_%s", step, NAMES[i]);
            qkv_tensor *g = fixture_get(ctx, f, key);
            REQUIRE(g, "%s", key);
            memcpy(p[i]->grad, g->data, (size_t)qkv_numel(g) * sizeof(float));
        }
        REQUIRE(qkv_optim_step(o) == QKV_OK, "step: %s", qkv_error());
        for (int i = 0; i < 3; i++) {
            snprintf(key, sizeof key, "p%d_%s", step, NAMES[i]);
            test_note("%s step %d %s", fixture, step, NAMES[i]);
            CHECK_CLOSE(p[i], fixture_get(ctx, f, key), 5e-7, 1e-6);
        }
        qkv_params_zero_grad(ps);
        qkv_ctx_reset(ctx);
    }
    CHECK(qkv_optim_steps(o) == 5, "steps %lld", (long long)qkv_optim_steps(o));
    qkv_optim_free(o);
    qkv_params_free(ps);
    qkv_ctx_free(ctx);
    qkv_st_close(f);
}

TEST(parity_sgd) { check_optim_case("train_sgd"); }
TEST(parity_sgd_nesterov_weight_decay) { check_optim_case("train_sgd_nesterov"); }
TEST(parity_sgd_dampening_group_lr) { check_optim_case("train_sgd_dampening"); }
TEST(parity_adam_weight_decay) { check_optim_case("train_adam"); }
TEST(parity_adamw_group_lr) { check_optim_case("train_adamw"); }

/* ---- the vector Adam kernel against a plain loop ---- */

/* torch.optim.Adam(W)'s rule one element at a time, in the operation order
 * of optim.c's scalar loop */
static void adam_ref(float *p, const float *g, float *m, float *v, int64_t n,
                     const qkv_optim_config *c, int64_t t)
{
    bool decoupled = c->kind == QKV_ADAMW;
    double lr = c->lr, bc1 = 1 - pow(c->beta1, (double)t), bc2 = 1 - pow(c->beta2, (double)t);
    float shrink = (float)(1 - lr * (decoupled ? c->weight_decay : 0.0f));
    float l2 = decoupled ? 0.0f : c->weight_decay;
    float one_b1 = (float)(1.0 - c->beta1), one_b2 = (float)(1.0 - c->beta2);
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i] * shrink;
        float gi = g[i] + l2 * pi;
        m[i] = m[i] * c->beta1 + gi * one_b1;
        v[i] = v[i] * c->beta2 + one_b2 * gi * gi;
        float denom = sqrtf(v[i]) / (float)sqrt(bc2) + c->eps;
        p[i] = pi + (float)(-lr / bc1) * m[i] / denom;
    }
}

TEST(adam_vector_kernel_matches_plain_loop)
{
    /* 40000 elements: one range per thread; 37: a vector tail */
    enum { N = 40000, TAIL = 37 };
    for (int kind = QKV_ADAM; kind <= QKV_ADAMW; kind++) {
        qkv_params *ps = qkv_params_new();
        qkv_tensor *a = qkv_params_add(ps, "a", 1, SHAPE(N), 0);
        qkv_tensor *b = qkv_params_add(ps, "b", 1, SHAPE(TAIL), 0);
        REQUIRE(qkv_params_alloc(ps) == QKV_OK, "alloc: %s", qkv_error());
        qkv_optim_config cfg = {.kind = kind, .lr = 3e-2f, .beta1 = 0.85f, .beta2 = 0.98f,
                                .eps = 1e-6f, .weight_decay = 0.05f};
        qkv_optim *o = qkv_optim_new(ps, &cfg);
        REQUIRE(o, "optim_new: %s", qkv_error());
        int64_t total = 0;
        float *val = qkv_params_values(ps, &total), *grad = qkv_params_grads(ps, NULL);
        float *p = calloc((size_t)total, sizeof(float));
        float *m = calloc((size_t)total, sizeof(float));
        float *v = calloc((size_t)total, sizeof(float));
        qkv_rng r;
        qkv_rng_seed(&r, 11);
        qkv_init_normal(&r, a, 0, 1);
        qkv_init_normal(&r, b, 0, 1);
        memcpy(p, val, (size_t)total * sizeof(float));
        qkv_tensor *entry[2] = {a, b};
        for (int t = 1; t <= 3; t++) {
            for (int e = 0; e < 2; e++)
                for (int64_t i = 0; i < qkv_numel(entry[e]); i++)
                    entry[e]->grad[i] = (float)qkv_rng_normal(&r) * (i % 7 ? 1.0f : 1e-4f);
            qkv_optim_step(o);
            for (int e = 0; e < 2; e++) {
                int64_t off = entry[e]->data - val;
                adam_ref(p + off, grad + off, m + off, v + off, qkv_numel(entry[e]), &cfg, t);
            }
        }
        CHECK(memcmp(p, val, (size_t)total * sizeof(float)) == 0 &&
                  memcmp(m, qkv_optim_state(o, 0, NULL), (size_t)total * sizeof(float)) == 0 &&
                  memcmp(v, qkv_optim_state(o, 1, NULL), (size_t)total * sizeof(float)) == 0,
              "%s: the kernel's bits differ from the plain loop's",
              kind == QKV_ADAM ? "Adam" : "AdamW");
        free(p), free(m), free(v);
        qkv_optim_free(o);
        qkv_params_free(ps);
    }
}

/* ---- optimizer semantics that torch.optim has no fixture for ---- */

TEST(optim_skips_frozen_and_buffers)
{
    qkv_params *ps = qkv_params_new();
    qkv_tensor *a = qkv_params_add(ps, "a", 1, SHAPE(5), 0);
    qkv_tensor *fr = qkv_params_add(ps, "frozen", 1, SHAPE(5), QKV_PARAM_FROZEN);
    qkv_tensor *bu = qkv_params_add(ps, "buffer", 1, SHAPE(5), QKV_PARAM_BUFFER);
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "alloc: %s", qkv_error());
    for (int i = 0; i < 5; i++) {
        a->data[i] = fr->data[i] = bu->data[i] = 1;
        a->grad[i] = fr->grad[i] = bu->grad[i] = 0.5f;
    }
    qkv_optim *o = qkv_optim_new(ps, &(qkv_optim_config){
        .kind = QKV_ADAMW, .lr = 0.1f, .weight_decay = 0.1f});
    REQUIRE(o, "optim_new: %s", qkv_error());
    CHECK(qkv_optim_step(o) == QKV_OK, "step");
    /* Adam's first step moves by lr * sign(grad), plus the decay lr*wd*p */
    CHECK_SCALAR(a->data[0], 1 * (1 - 0.01) - 0.1, 0, 1e-7); /* float rounding 1.6e-8 */
    for (int i = 0; i < 5; i++)
        CHECK(fr->data[i] == 1 && bu->data[i] == 1, "frozen or buffer entry moved");
    /* moments are flat, parallel to the values: a's first moment is at 0 */
    int64_t n = 0;
    float *m = qkv_optim_state(o, 0, &n), *v = qkv_optim_state(o, 1, NULL);
    CHECK(m && v && n == 48, "state: %p %p %lld", (void *)m, (void *)v, (long long)n);
    CHECK_SCALAR(m[0], 0.1 * 0.5, 0, 1e-6); /* (1 - beta1) in float: 2.4e-7 */
    CHECK(m && m[16] == 0, "the frozen entry's moment changed");
    CHECK(qkv_optim_state(o, 2, &n) == NULL && n == 0, "a third moment");

    /* the lr setter, and a resumed step count drives bias correction */
    qkv_optim_set_lr(o, 0.2f);
    CHECK(qkv_optim_lr(o) == 0.2f, "lr");
    qkv_optim_set_steps(o, 1000);
    CHECK(qkv_optim_steps(o) == 1000, "set_steps");
    qkv_optim_free(o);

    /* SGD without momentum keeps no state */
    o = qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_SGD, .lr = 1});
    REQUIRE(o, "sgd: %s", qkv_error());
    CHECK(qkv_optim_state(o, 0, &n) == NULL && n == 0, "SGD state");
    qkv_optim_free(o);
    CHECK(qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_SGD, .lr = 1, .nesterov = 1}) ==
                  NULL &&
              strstr(qkv_error(), "nesterov"),
          "nesterov without momentum: %s", qkv_error());
    CHECK(qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_ADAM, .lr = -1}) == NULL,
          "negative lr");
    qkv_params_free(ps);

    ps = qkv_params_new();
    qkv_params_add(ps, "x", 1, SHAPE(2), 0);
    CHECK(qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_SGD}) == NULL &&
              qkv_error_status() == QKV_ERR_STATE,
          "optim on an unallocated store: %s", qkv_error());
    qkv_params_free(ps);
}

/* ---- clipping ---- */

TEST(parity_clip_grad_norm)
{
    qkv_st_file *f = fixture_open("train_clip_grad_norm");
    REQUIRE(f, "fixture");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_params *ps = qkv_params_new();
    qkv_tensor *p[3];
    for (int i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof key, "g_%s", NAMES[i]);
        qkv_tensor *g = fixture_get(ctx, f, key);
        REQUIRE(g, "%s", key);
        p[i] = qkv_params_add(ps, NAMES[i], g->ndim, g->shape, 0);
    }
    /* a buffer and a frozen entry with huge gradients count for nothing */
    qkv_tensor *bu = qkv_params_add(ps, "buffer", 1, SHAPE(3), QKV_PARAM_BUFFER);
    qkv_tensor *fr = qkv_params_add(ps, "frozen", 1, SHAPE(3), QKV_PARAM_FROZEN);
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "alloc: %s", qkv_error());
    for (int i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof key, "g_%s", NAMES[i]);
        memcpy(p[i]->grad, fixture_get(ctx, f, key)->data,
               (size_t)qkv_numel(p[i]) * sizeof(float));
        bu->grad[i] = fr->grad[i] = 100;
    }
    float max_norm = (float)meta_num(f, "max_norm", 0);
    float norm = qkv_clip_grad_norm(ps, max_norm);
    qkv_tensor *want = fixture_get(ctx, f, "norm");
    REQUIRE(want, "norm");
    CHECK_SCALAR(norm, want->data[0], 0, 2.5e-7); /* 2 ulp; measured: equal */
    CHECK(want->data[0] > max_norm, "the fixture does not clip (norm %g)", want->data[0]);
    for (int i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof key, "clipped_%s", NAMES[i]);
        CHECK_CLOSE_GRAD(p[i], fixture_get(ctx, f, key), 0, 2.5e-7); /* measured: equal */
    }
    CHECK(bu->grad[0] == 100 && fr->grad[0] == 100, "a buffer or frozen gradient was scaled");

    /* under the limit: the norm is returned and nothing changes */
    float before = p[0]->grad[0];
    float n2 = qkv_clip_grad_norm(ps, 10 * max_norm);
    CHECK_SCALAR(n2, max_norm, 0, 5e-7); /* measured 1.6e-7 */
    CHECK(p[0]->grad[0] == before, "clipping under the limit changed a gradient");
    CHECK(isnan(qkv_clip_grad_norm(ps, -1)) && qkv_error_status() == QKV_ERR_ARG,
          "negative max_norm: %s", qkv_error());
    qkv_params_free(ps);
    qkv_ctx_free(ctx);
    qkv_st_close(f);
}

/* ---- schedules against torch.optim.lr_scheduler ---- */

static void check_lrs(const char *what, const qkv_tensor *want, const float *got, int n)
{
    REQUIRE(want && qkv_numel(want) == n, "%s: %lld values in the fixture", what,
            want ? (long long)qkv_numel(want) : -1LL);
    test_note("%s", what);
    CHECK_CLOSE_N(got, want->data, n, 0, 2.5e-7); /* 2 ulp */
}

TEST(parity_lr_schedules)
{
    qkv_st_file *f = fixture_open("train_schedules");
    REQUIRE(f, "fixture");
    qkv_ctx *ctx = qkv_ctx_new();
    float got[32];
    for (int s = 0; s < 20; s++)
        got[s] = qkv_lr_step_decay(0.1f, s, (int64_t)meta_num(f, "step_size", 0),
                                   (float)meta_num(f, "gamma", 0));
    check_lrs("StepLR", fixture_get(ctx, f, "step_decay"), got, 20);

    float base = (float)meta_num(f, "base", 0), min_lr = (float)meta_num(f, "min_lr", 0);
    int64_t warmup = (int64_t)meta_num(f, "warmup", 0), total = (int64_t)meta_num(f, "total", 0);
    for (int s = 0; s < 25; s++)
        got[s] = qkv_lr_cosine(base, s, warmup, total, min_lr);
    CHECK(qkv_lr_cosine(base, 0, warmup, total, min_lr) == 0, "warmup does not start at 0");
    check_lrs("warmup-cosine", fixture_get(ctx, f, "cosine"), got, 25);

    for (int s = 0; s < 30; s++)
        got[s] = qkv_lr_inverse_sqrt((int64_t)meta_num(f, "d_model", 0), s,
                                     (int64_t)meta_num(f, "noam_warmup", 0));
    check_lrs("inverse sqrt", fixture_get(ctx, f, "inverse_sqrt"), got, 30);
    qkv_ctx_free(ctx);
    qkv_st_close(f);
}

/* ---- the training-loop guarantees ---- */

enum { B = 16, IN = 4, HID = 8 };

typedef struct {
    qkv_params *ps;
    qkv_tensor *w1, *b1, *w2, *b2;
    qkv_optim *opt;
    float x[B * IN], y[B];
} mlp;

static bool mlp_new(mlp *m, uint64_t seed)
{
    m->ps = qkv_params_new();
    m->w1 = qkv_params_add(m->ps, "0.weight", 2, SHAPE(HID, IN), 0);
    m->b1 = qkv_params_add(m->ps, "0.bias", 1, SHAPE(HID), 0);
    m->w2 = qkv_params_add(m->ps, "2.weight", 2, SHAPE(1, HID), 0);
    m->b2 = qkv_params_add(m->ps, "2.bias", 1, SHAPE(1), 0);
    if (!m->b2 || qkv_params_alloc(m->ps) != QKV_OK)
        return false;
    qkv_rng r;
    qkv_rng_seed(&r, seed);
    qkv_init_kaiming_uniform(&r, m->w1, sqrtf(5), QKV_FAN_IN);
    qkv_init_uniform(&r, m->b1, -0.5f, 0.5f);
    qkv_init_kaiming_uniform(&r, m->w2, sqrtf(5), QKV_FAN_IN);
    qkv_init_constant(m->b2, 0);
    for (int i = 0; i < B; i++) {
        float *xi = m->x + i * IN;
        for (int j = 0; j < IN; j++)
            xi[j] = (float)(qkv_rng_uniform(&r) * 2 - 1);
        m->y[i] = xi[0] * xi[1] - xi[2] + 0.5f * xi[3];
    }
    m->opt = qkv_optim_new(m->ps, &(qkv_optim_config){
        .kind = QKV_ADAMW, .lr = 1e-2f, .weight_decay = 0.01f});
    return m->opt != NULL;
}

static void mlp_free(mlp *m)
{
    qkv_optim_free(m->opt);
    qkv_params_free(m->ps);
}

/* linear -> relu -> linear -> mean squared error, backward, clip, AdamW,
 * zero_grad, reset; returns the loss, NaN on error. */
static double mlp_step(qkv_ctx *ctx, mlp *m)
{
    qkv_tensor *x = qkv_from_data(ctx, 2, SHAPE(B, IN), m->x);
    qkv_tensor *y = qkv_from_data(ctx, 2, SHAPE(B, 1), m->y);
    qkv_tensor *h = qkv_relu(ctx, qkv_linear(ctx, x, m->w1, m->b1));
    qkv_tensor *loss = qkv_mse_loss(ctx, qkv_linear(ctx, h, m->w2, m->b2), y, QKV_REDUCE_MEAN);
    if (!loss || qkv_backward(ctx, loss) != QKV_OK)
        return NAN;
    double l = loss->data[0];
    qkv_clip_grad_norm(m->ps, 1.0f);
    qkv_optim_step(m->opt);
    qkv_params_zero_grad(m->ps);
    qkv_ctx_reset(ctx);
    return l;
}

TEST(training_step_makes_no_malloc)
{
    qkv_ctx *ctx = qkv_ctx_new();
    mlp m = {0};
    REQUIRE(ctx && mlp_new(&m, 1), "setup: %s", qkv_error());
    double first = 0, last = 0;
    for (int s = 0; s < 3; s++) {
        double l = mlp_step(ctx, &m);
        REQUIRE(!isnan(l), "warm-up step %d: %s", s, qkv_error());
        if (s == 0)
            first = l;
    }
    uint64_t before = qkv_malloc_count();
    for (int s = 0; s < 20; s++)
        last = mlp_step(ctx, &m);
    CHECK(qkv_malloc_count() == before, "20 steady steps made %llu allocations",
          (unsigned long long)(qkv_malloc_count() - before));
    CHECK(last < first, "the loss did not fall: %g -> %g", first, last);
    mlp_free(&m);
    qkv_ctx_free(ctx);
}

/* 50 steps; the flat values buffer at the end, copied into out */
static bool train_run(uint64_t seed, float *out, int64_t cap, int64_t *n)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), seed);
    mlp m = {0};
    bool ok = ctx && mlp_new(&m, seed);
    for (int s = 0; ok && s < 50; s++)
        ok = !isnan(mlp_step(ctx, &m));
    if (ok) {
        float *v = qkv_params_values(m.ps, n);
        ok = *n <= cap;
        if (ok)
            memcpy(out, v, (size_t)*n * sizeof(float));
    }
    mlp_free(&m);
    qkv_ctx_free(ctx);
    return ok;
}

TEST(training_is_bit_identical)
{
    float a[256], b[256], c[256];
    int64_t na = 0, nb = 0, nc = 0;
    REQUIRE(train_run(7, a, 256, &na), "run 1: %s", qkv_error());
    REQUIRE(train_run(7, b, 256, &nb), "run 2: %s", qkv_error());
    REQUIRE(train_run(8, c, 256, &nc), "run 3: %s", qkv_error());
    CHECK(na == nb && memcmp(a, b, (size_t)na * sizeof(float)) == 0,
          "two runs with the same seed differ");
    CHECK(memcmp(a, c, (size_t)na * sizeof(float)) != 0, "the seed changes nothing");
}
