/* test_resnet.c - ResNet against torchvision (tests/parity/cases_resnet.py):
 * each fixture is a torchvision state_dict that qkv loads strictly, with
 * the input, outputs and gradients under "__" keys. Checked: the logits (or
 * C5) in training and eval mode, the input gradient and every parameter
 * gradient, the running statistics and batch counts after a training
 * forward, DETR's frozen backbone (no gradient reaches the frozen stages),
 * MoCo's grey small-stem encoder with an MLP head and shuffle BN, the
 * nearest mask resize, inference without gradients (same logits, less
 * memory), a state_dict that torchvision's load_state_dict(strict=True)
 * accepts, a short training run whose loss falls, the modules' inits, and
 * errors.
 *
 * Tolerances (|got - want| <= atol + rtol |want|): a ResNet is 20 to 50
 * float32 convolutions deep, each summing hundreds to thousands of products
 * in another order than PyTorch's, and in training mode every batch norm
 * divides by a batch standard deviation. Each atol is taken relative to the
 * scale of the tensor checked (atol = tol max|want|, rtol = tol), so that
 * its near-zero elements are held to it too: outputs tol 1e-5, gradients
 * 1e-4, running statistics 1e-5. Measured worst (2026-12-03): outputs
 * 9e-7, gradients 1.7e-5 (ResNet-50, training), running statistics 1.4e-6.
 * The fixtures keep every ReLU input and max-pool lead clear of its kink
 * (cases_resnet.py says why and how); otherwise one element on the other
 * side of a kink moves a gradient by percents. */
#include "test.h"

#include <unistd.h>

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

static int64_t meta_int(qkv_st_file *f, const char *key, int64_t dflt)
{
    const char *v = qkv_st_meta(f, key);
    return v ? strtoll(v, NULL, 10) : dflt;
}

static double max_abs(const qkv_tensor *t)
{
    double m = 0;
    for (int64_t i = 0; t && i < qkv_numel(t); i++)
        m = fmax(m, fabs(qkv_get(t, i)));
    return m;
}

/* got vs want with atol = rel * max|want| and rtol = rel: the scale of a
 * whole tensor, so that its near-zero elements are held to it too */
static bool close_scaled(const char *what, const qkv_tensor *got, const qkv_tensor *want,
                         double rel)
{
    return check_close(__FILE__, __LINE__, what, got, want, rel * max_abs(want), rel);
}

static bool close_scaled_buf(const char *what, const float *got, const qkv_tensor *want,
                             double rel)
{
    return check_close_buf(__FILE__, __LINE__, what, got, want, rel * max_abs(want), rel);
}

typedef struct {
    qkv_st_file *fx;
    qkv_params *ps;
    qkv_resnet m;
    int64_t groups;
    qkv_resnet_output output;
} rcase;

static bool rcase_open(rcase *c, const char *name)
{
    memset(c, 0, sizeof *c);
    c->fx = fixture_open(name);
    if (!c->fx)
        return false;
    qkv_resnet_config cfg = {
        .depth = (int)meta_int(c->fx, "depth", 18),
        .in_channels = meta_int(c->fx, "in_channels", 3),
        .num_classes = meta_int(c->fx, "num_classes", 0),
        .fc_hidden = meta_int(c->fx, "fc_hidden", 0),
        .small_stem = (int)meta_int(c->fx, "small_stem", 0),
        .frozen_bn = (int)meta_int(c->fx, "frozen_bn", 0),
        .frozen_stages = (int)meta_int(c->fx, "frozen_stages", 0),
    };
    c->groups = meta_int(c->fx, "groups", 1);
    c->output = cfg.num_classes ? QKV_RESNET_LOGITS : QKV_RESNET_C5;
    c->ps = qkv_params_new();
    if (qkv_resnet_init(&c->m, c->ps, "", &cfg) != QKV_OK || qkv_params_alloc(c->ps) != QKV_OK ||
        qkv_params_load_file(c->ps, c->fx, name, 1) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "%s: %s", name, qkv_error());
        return false;
    }
    /* strict both ways: every file key that is not "__" is a model key */
    int64_t model_keys = 0;
    for (int64_t i = 0; i < qkv_st_count(c->fx); i++)
        model_keys += strncmp(qkv_st_name(c->fx, i), "__", 2) != 0;
    CHECK(model_keys == qkv_params_count(c->ps), "%s: %lld keys in the file, %lld in qkv", name,
          (long long)model_keys, (long long)qkv_params_count(c->ps));
    return true;
}

static void rcase_close(rcase *c)
{
    qkv_params_free(c->ps);
    qkv_st_close(c->fx);
}

/* Forward (x from __x, with a gradient if the fixture has __<p>grad_x),
 * backward with __<p>gout; checks __<p>out, __<p>grad_x and, when
 * param_grads, __<p>grad.<name> of every trainable entry, and that frozen
 * entries got none. tol: see the top of the file. */
static void run_and_check(rcase *c, const char *name, const char *p, bool param_grads,
                          double tol_out, double tol_grad)
{
    char key[600];
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, strcmp(p, "eval_") != 0);
    qkv_params_zero_grad(c->ps);
    snprintf(key, sizeof key, "__%sgrad_x", p);
    bool want_gx = qkv_st_find(c->fx, key) >= 0;
    qkv_tensor *x = fixture_get(ctx, c->fx, "__x");
    if (want_gx)
        qkv_requires_grad(x);
    qkv_tensor *out = qkv_resnet_forward(ctx, &c->m, x, c->output, c->groups);
    snprintf(key, sizeof key, "__%sout", p);
    CHECK(close_scaled(key, out, fixture_get(ctx, c->fx, key), tol_out), "%s: %s", name, key);
    snprintf(key, sizeof key, "__%sgout", p);
    if (qkv_st_find(c->fx, key) < 0) { /* a forward-only case */
        qkv_ctx_free(ctx);
        return;
    }
    qkv_tensor *gout = fixture_get(ctx, c->fx, key);
    if (!out || !gout || qkv_backward_with(ctx, out, gout->data) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "%s: %s", name, qkv_error());
        qkv_ctx_free(ctx);
        return;
    }
    if (want_gx) {
        snprintf(key, sizeof key, "__%sgrad_x", p);
        CHECK(close_scaled_buf(key, x->grad, fixture_get(ctx, c->fx, key), tol_grad), "%s", name);
    }
    /* G: the largest parameter gradient of the case. A gradient that is
     * zero in exact arithmetic (a bias in front of a training-mode batch
     * norm, through a ReLU that the fixture keeps on: the batch norm
     * removes any constant) holds float32 noise, below 1e-6 G on both
     * sides, and is checked as such; the others with an atol of tol
     * max(their largest |want|, 1e-3 G). */
    double G = 0;
    for (int64_t i = 0; param_grads && i < qkv_params_count(c->ps); i++) {
        snprintf(key, sizeof key, "__%sgrad.%s", p, qkv_params_at(c->ps, i)->name);
        if (qkv_st_find(c->fx, key) >= 0)
            G = fmax(G, max_abs(fixture_get(ctx, c->fx, key)));
    }
    int64_t checked = 0, frozen = 0;
    for (int64_t i = 0; param_grads && i < qkv_params_count(c->ps); i++) {
        qkv_tensor *t = qkv_params_at(c->ps, i);
        int flags = qkv_params_flags(c->ps, i);
        snprintf(key, sizeof key, "__%sgrad.%s", p, t->name);
        bool in_file = qkv_st_find(c->fx, key) >= 0;
        if (flags & QKV_PARAM_BUFFER) {
            CHECK(!in_file, "%s: %s is a buffer in qkv", name, key);
            continue;
        }
        if (flags & QKV_PARAM_FROZEN) {
            CHECK(!in_file, "%s: %s is frozen in qkv, trained in PyTorch", name, t->name);
            bool zero = true;
            for (int64_t j = 0; j < qkv_numel(t); j++)
                zero = zero && t->grad[j] == 0.0f;
            CHECK(zero, "%s: frozen %s got a gradient", name, t->name);
            frozen++;
            continue;
        }
        CHECK(in_file, "%s: no %s in the fixture (trained in qkv, frozen in PyTorch?)", name,
              key);
        qkv_tensor *want = in_file ? fixture_get(ctx, c->fx, key) : NULL;
        double largest = max_abs(want);
        if (want && largest <= 1e-6 * G) {
            /* zero in exact arithmetic: qkv's must be float32 noise too */
            double got_largest = 0;
            for (int64_t j = 0; j < qkv_numel(t); j++)
                got_largest = fmax(got_largest, fabs(t->grad[j]));
            CHECK(got_largest <= 1e-6 * G, "%s: %s is zero to float32 rounding in PyTorch "
                  "(%.3g), qkv's reaches %.3g (largest gradient %.3g)", name, key, largest,
                  got_largest, G);
        } else if (want) {
            double scale = fmax(largest, 1e-3 * G);
            CHECK(check_close_buf(__FILE__, __LINE__, key, t->grad, want, tol_grad * scale,
                                  tol_grad),
                  "%s: %s", name, key);
        }
        checked++;
    }
    CHECK(!param_grads || checked > 0, "%s: no parameter gradient checked", name);
    qkv_ctx_free(ctx);
}

/* The running statistics and batch counts after the training forward. */
static void check_after(rcase *c, const char *name, double tol)
{
    qkv_ctx *ctx = qkv_ctx_new();
    int64_t checked = 0;
    for (int64_t i = 0; i < qkv_params_count(c->ps); i++) {
        qkv_tensor *t = qkv_params_at(c->ps, i);
        char key[600];
        snprintf(key, sizeof key, "__after.%s", t->name);
        if (qkv_st_find(c->fx, key) < 0)
            continue;
        qkv_tensor *want = fixture_get(ctx, c->fx, key);
        if (strstr(t->name, "num_batches_tracked"))
            CHECK(want && t->data[0] == want->data[0], "%s: %s = %g, want %g", name, t->name,
                  t->data[0], want ? want->data[0] : -1.0f);
        else
            CHECK(close_scaled(key, t, want, tol), "%s: %s", name, key);
        checked++;
    }
    CHECK(checked > 0, "%s: no running statistics checked", name);
    qkv_ctx_free(ctx);
}

/* reload the state (the training forward moved the running statistics) */
static void reload(rcase *c, const char *name)
{
    CHECK(qkv_params_load_file(c->ps, c->fx, name, 1) == QKV_OK, "%s", qkv_error());
}

TEST(resnet18_matches_torchvision_train_and_eval)
{
    rcase c;
    if (!rcase_open(&c, "resnet18"))
        return;
    CHECK(qkv_params_numel(c.ps) == 11181642, "resnet18 (10 classes): %lld parameters",
          (long long)qkv_params_numel(c.ps));
    run_and_check(&c, "resnet18", "", true, 1e-5, 1e-4);
    check_after(&c, "resnet18", 1e-5);
    reload(&c, "resnet18");
    run_and_check(&c, "resnet18", "eval_", false, 1e-5, 0); /* forward only */
    rcase_close(&c);
    if (!rcase_open(&c, "resnet18_eval"))
        return;
    run_and_check(&c, "resnet18_eval", "eval_", true, 1e-5, 1e-4);
    rcase_close(&c);
}

TEST(resnet50_matches_torchvision_train_and_eval)
{
    rcase c;
    if (!rcase_open(&c, "resnet50"))
        return;
    CHECK(qkv_params_numel(c.ps) == 23528522, "resnet50 (10 classes): %lld parameters",
          (long long)qkv_params_numel(c.ps));
    run_and_check(&c, "resnet50", "", true, 1e-5, 1e-4);
    check_after(&c, "resnet50", 1e-5);
    reload(&c, "resnet50");
    run_and_check(&c, "resnet50", "eval_", false, 1e-5, 0); /* forward only */
    rcase_close(&c);
}

/* DETR's backbone: frozen batch norm (buffers, no batch count), stem and
 * layer1 frozen, C5 out; the gradient reaches layer2..4 only. */
TEST(resnet50_detr_backbone_matches_frozen_batchnorm)
{
    rcase c;
    if (!rcase_open(&c, "resnet50_detr"))
        return;
    CHECK(!qkv_params_find(c.ps, "bn1.num_batches_tracked"), "a frozen batch norm counts batches");
    run_and_check(&c, "resnet50_detr", "", true, 1e-5, 1e-4);
    /* training mode left the frozen statistics alone */
    qkv_tensor *rm = qkv_params_find(c.ps, "layer3.1.bn2.running_mean");
    qkv_ctx *ctx = qkv_ctx_new();
    CHECK(rm && CHECK_CLOSE(rm, fixture_get(ctx, c.fx, "layer3.1.bn2.running_mean"), 0, 0),
          "frozen running statistics moved");
    /* trainable: the conv weights of layer2..4 only */
    int64_t trainable = 0;
    for (int64_t i = 0; i < qkv_params_count(c.ps); i++)
        if (!(qkv_params_flags(c.ps, i) & (QKV_PARAM_BUFFER | QKV_PARAM_FROZEN)))
            trainable += qkv_numel(qkv_params_at(c.ps, i));
    CHECK(trainable == 23232512, "%lld trainable", (long long)trainable);
    /* C5 of an 800x1066 image, and its mask */
    int64_t h, w;
    qkv_resnet_c5_size(&c.m, 800, 1066, &h, &w);
    CHECK(h == 25 && w == 34, "C5 of 800x1066: %lldx%lld", (long long)h, (long long)w);
    qkv_ctx_free(ctx);
    rcase_close(&c);
}

TEST(resnet18_moco_gray_small_stem_mlp_head_shuffle_bn)
{
    rcase c;
    if (!rcase_open(&c, "resnet18_moco_gray"))
        return;
    CHECK(c.groups == 2 && c.m.fc_out.weight && !c.m.maxpool.kernel, "the MoCo configuration");
    run_and_check(&c, "resnet18_moco_gray", "", true, 1e-5, 1e-4);
    check_after(&c, "resnet18_moco_gray", 1e-5);
    rcase_close(&c);
}

TEST(resnet_mask_nearest_matches_interpolate)
{
    qkv_st_file *fx = fixture_open("resnet_mask_nearest");
    REQUIRE(fx, "no fixture");
    for (int64_t k = 0; k < meta_int(fx, "count", 0); k++) {
        char mk[32], ok[32];
        snprintf(mk, sizeof mk, "mask%lld", (long long)k);
        snprintf(ok, sizeof ok, "out%lld", (long long)k);
        int64_t ms[QKV_MAX_DIMS], os[QKV_MAX_DIMS];
        int64_t mi = qkv_st_find(fx, mk), oi = qkv_st_find(fx, ok);
        REQUIRE(mi >= 0 && oi >= 0, "no %s", mk);
        qkv_st_shape(fx, mi, ms);
        qkv_st_shape(fx, oi, os);
        int64_t nm = qkv_st_numel(fx, mi), no = qkv_st_numel(fx, oi);
        int64_t *m64 = malloc((size_t)(nm + no) * sizeof *m64), *o64 = m64 + nm;
        uint8_t *mask = malloc((size_t)(nm + no)), *got = mask + nm;
        REQUIRE(m64 && mask && qkv_st_read_i64(fx, mi, m64) == QKV_OK &&
                    qkv_st_read_i64(fx, oi, o64) == QKV_OK, "%s", qkv_error());
        for (int64_t i = 0; i < nm; i++)
            mask[i] = (uint8_t)m64[i];
        CHECK(qkv_mask_resize_nearest(got, mask, ms[0], ms[1], ms[2], os[1], os[2]) == QKV_OK,
              "%s", qkv_error());
        int64_t bad = 0;
        for (int64_t i = 0; i < no; i++)
            bad += got[i] != o64[i];
        CHECK(bad == 0, "(%lld, %lld) -> (%lld, %lld): %lld of %lld differ", (long long)ms[1],
              (long long)ms[2], (long long)os[1], (long long)os[2], (long long)bad, (long long)no);
        free(m64);
        free(mask);
    }
    uint8_t one = 1, out[4];
    CHECK(qkv_mask_resize_nearest(out, &one, 1, 1, 1, 0, 2) == QKV_ERR_ARG &&
              strstr(qkv_error(), "positive"),
          "%s", qkv_error());
    qkv_st_close(fx);
}

/* Inference (eval, gradients off) drops each stage's intermediates: the
 * same logits as with gradients on, bit for bit, in a fraction of the
 * memory. */
TEST(resnet50_inference_keeps_one_block)
{
    rcase c;
    if (!rcase_open(&c, "resnet50"))
        return;
    qkv_ctx *a = qkv_ctx_new(), *b = qkv_ctx_new();
    qkv_set_training(a, 0);
    qkv_set_training(b, 0);
    qkv_set_grad_enabled(b, 0);
    qkv_tensor *x = qkv_requires_grad(fixture_get(a, c.fx, "__x"));
    qkv_tensor *ya = qkv_resnet_forward(a, &c.m, x, QKV_RESNET_LOGITS, 1);
    qkv_tensor *yb = qkv_resnet_forward(b, &c.m, fixture_get(b, c.fx, "__x"), QKV_RESNET_LOGITS, 1);
    CHECK_CLOSE(yb, ya, 0, 0);
    size_t pa = qkv_arena_peak(qkv_ctx_arena(a)), pb = qkv_arena_peak(qkv_ctx_arena(b));
    CHECK(pb * 4 < pa, "inference peak %zu bytes, with gradients %zu", pb, pa);
    qkv_ctx_free(a);
    qkv_ctx_free(b);
    rcase_close(&c);
}

/* ---- state dicts both ways ---- */

/* qkv's ResNet with torchvision's init saves a file that torchvision's
 * load_state_dict(strict=True) takes; the logits (or C5) agree (1e-4 of
 * their scale, tests/parity/resnet_state_dict.py). */
static void saved_loads_in_torchvision(const qkv_resnet_config *cfg, qkv_resnet_output output,
                                       int64_t H, const char *what)
{
    qkv_params *ps = qkv_params_new();
    qkv_resnet m;
    REQUIRE(qkv_resnet_init(&m, ps, "", cfg) == QKV_OK && qkv_params_alloc(ps) == QKV_OK, "%s",
            qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 8);
    qkv_resnet_reset(&m, &r);
    /* running statistics away from 0 and 1, so that loading them matters */
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        if (strstr(t->name, "running_mean"))
            qkv_init_uniform(&r, t, -0.1f, 0.1f);
        if (strstr(t->name, "running_var"))
            qkv_init_uniform(&r, t, 0.8f, 1.2f);
    }
    char model[128], probe[128], cmd[600];
    snprintf(model, sizeof model, "/tmp/qkv-test-%d-%s.safetensors", (int)getpid(), what);
    snprintf(probe, sizeof probe, "/tmp/qkv-test-%d-%s-probe.safetensors", (int)getpid(), what);
    REQUIRE(qkv_params_save(ps, model, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_set_grad_enabled(ctx, 0);
    qkv_tensor *x = qkv_randn(ctx, 4, SHAPE(2, 3, H, H), 0, 1);
    qkv_tensor *y = qkv_resnet_forward(ctx, &m, x, output, 1);
    REQUIRE(y, "%s", qkv_error());
    qkv_st_writer *w = qkv_st_writer_new();
    REQUIRE(qkv_st_add_tensor(w, "__x", x) == QKV_OK && qkv_st_add_tensor(w, "__out", y) == QKV_OK &&
                qkv_st_write(w, probe) == QKV_OK,
            "%s", qkv_error());
    qkv_st_writer_free(w);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 tests/parity/resnet_state_dict.py %s %s %d %lld %d", model, probe,
             cfg->depth, (long long)cfg->num_classes, cfg->frozen_bn);
    char out[512];
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "loaded strictly"), "%s: torchvision refused qkv's file: %s",
          what, out);
    unlink(model);
    unlink(probe);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

TEST(resnet_state_dict_loads_in_torchvision_strictly)
{
    saved_loads_in_torchvision(&(qkv_resnet_config){.depth = 18, .num_classes = 10},
                               QKV_RESNET_LOGITS, 48, "resnet18");
    /* DETR's backbone: frozen batch norm without batch counts, no fc */
    saved_loads_in_torchvision(&(qkv_resnet_config){.depth = 50, .frozen_bn = 1,
                                                    .frozen_stages = 2},
                               QKV_RESNET_C5, 64, "resnet50_detr");
}

/* A torchvision checkpoint (with batch counts and fc) into DETR's frozen
 * backbone: refused strictly, naming what is unexpected; taken otherwise. */
TEST(resnet_torchvision_checkpoint_into_detr_backbone)
{
    qkv_st_file *fx = fixture_open("resnet50");
    REQUIRE(fx, "no fixture");
    qkv_params *ps = qkv_params_new();
    qkv_resnet m;
    REQUIRE(qkv_resnet_init(&m, ps, "", &(qkv_resnet_config){.depth = 50, .frozen_bn = 1,
                                                             .frozen_stages = 2}) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    CHECK(qkv_params_load_file(ps, fx, "resnet50", 1) == QKV_ERR_FORMAT &&
              strstr(qkv_error(), "unexpected key(s) (55)") &&
              strstr(qkv_error(), "bn1.num_batches_tracked") && strstr(qkv_error(), "fc.weight"),
          "%s", qkv_error());
    CHECK(qkv_params_load_file(ps, fx, "resnet50", 0) == QKV_OK, "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    CHECK(CHECK_CLOSE(qkv_params_find(ps, "layer4.2.bn3.running_var"),
                      fixture_get(ctx, fx, "layer4.2.bn3.running_var"), 0, 0),
          "loaded values");
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(fx);
}

/* ---- initialisation ---- */

static double mean_of(const qkv_tensor *t, double *std)
{
    double s = 0, ss = 0;
    int64_t n = qkv_numel(t);
    for (int64_t i = 0; i < n; i++)
        s += t->data[i], ss += (double)t->data[i] * t->data[i];
    *std = sqrt(ss / (double)n - (s / (double)n) * (s / (double)n));
    return s / (double)n;
}

TEST(resnet_init_names_flags_and_torchvision_init)
{
    qkv_params *ps = qkv_params_new();
    qkv_resnet m;
    qkv_resnet_config cfg = {.depth = 50, .num_classes = 7, .zero_init_residual = 1,
                             .frozen_stages = 2};
    REQUIRE(qkv_resnet_init(&m, ps, "backbone.0.body", &cfg) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    /* torchvision's state_dict order, under the prefix */
    const char *first[] = {"backbone.0.body.conv1.weight", "backbone.0.body.bn1.weight",
                           "backbone.0.body.bn1.bias", "backbone.0.body.bn1.running_mean",
                           "backbone.0.body.bn1.running_var",
                           "backbone.0.body.bn1.num_batches_tracked",
                           "backbone.0.body.layer1.0.conv1.weight"};
    for (int i = 0; i < 7; i++)
        CHECK(!strcmp(qkv_params_at(ps, i)->name, first[i]), "entry %d: %s, want %s", i,
              qkv_params_at(ps, i)->name, first[i]);
    int64_t n = qkv_params_count(ps);
    CHECK(!strcmp(qkv_params_at(ps, n - 1)->name, "backbone.0.body.fc.bias"), "last: %s",
          qkv_params_at(ps, n - 1)->name);
    qkv_tensor *ds = qkv_params_find(ps, "backbone.0.body.layer2.0.downsample.0.weight");
    CHECK(ds && ds->shape[0] == 512 && ds->shape[1] == 256 && ds->shape[2] == 1,
          "layer2's downsample conv");
    /* frozen: the stem and layer1, not layer2; buffers stay buffers */
    for (int64_t i = 0; i < n; i++) {
        const char *name = qkv_params_at(ps, i)->name;
        int f = qkv_params_flags(ps, i);
        bool buffer = strstr(name, "running") || strstr(name, "num_batches");
        bool early = !strstr(name, "layer2") && !strstr(name, "layer3") &&
                     !strstr(name, "layer4") && !strstr(name, "fc.");
        CHECK(buffer ? f == QKV_PARAM_BUFFER : f == (early ? QKV_PARAM_FROZEN : 0),
              "%s: flags %d", name, f);
    }
    qkv_rng r;
    qkv_rng_seed(&r, 3);
    qkv_resnet_reset(&m, &r);
    /* kaiming_normal, fan_out, ReLU gain: conv1 std sqrt(2 / (64 * 49)) */
    double std, mean = mean_of(m.conv1.weight, &std);
    CHECK_SCALAR(std, sqrt(2.0 / (64 * 49)), 0, 0.05);
    CHECK_SCALAR(mean, 0.0, 3.0 * std / sqrt(9408.0), 0);
    mean = mean_of(m.blocks[3].conv2.weight, &std); /* layer2.0.conv2: 128 out, 3x3 */
    CHECK_SCALAR(std, sqrt(2.0 / (128 * 9)), 0, 0.02);
    CHECK(m.blocks[0].bn1.weight->data[5] == 1.0f && m.blocks[0].bn1.bias->data[5] == 0.0f &&
              m.blocks[0].bn1.running_var->data[5] == 1.0f,
          "batch norm reset");
    /* zero_init_residual: each bottleneck's bn3 weight is zero, not bn2's */
    CHECK(m.blocks[15].bn3.weight->data[0] == 0.0f && m.blocks[15].bn2.weight->data[0] == 1.0f,
          "zero_init_residual");
    /* fc as nn.Linear: U(+-1/sqrt(2048)) */
    float bound = 1.0f / sqrtf(2048.0f), most = 0;
    for (int64_t i = 0; i < qkv_numel(m.fc.weight); i++)
        most = fmaxf(most, fabsf(m.fc.weight->data[i]));
    CHECK(most <= bound && most > 0.95f * bound, "fc weight within +-%g: %g", bound, most);
    qkv_params_free(ps);
}

TEST(nn_conv2d_and_batch_norm_modules)
{
    qkv_params *ps = qkv_params_new();
    qkv_nn_conv2d conv;
    qkv_nn_batch_norm bn, fbn;
    qkv_conv2d_opts o = {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .groups = 2};
    REQUIRE(qkv_nn_conv2d_init(&conv, ps, "c", 4, 6, 3, 3, &o, 1) == QKV_OK &&
                qkv_nn_batch_norm_init(&bn, ps, "bn", 6, 0) == QKV_OK &&
                qkv_nn_batch_norm_init(&fbn, ps, "fbn", 6, 1) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    CHECK(conv.weight->shape[1] == 2 && conv.bias && !strcmp(conv.bias->name, "c.bias"),
          "grouped conv weight (6, 2, 3, 3) and its bias");
    CHECK(qkv_params_count(ps) == 2 + 5 + 4 && !fbn.num_batches_tracked &&
              bn.num_batches_tracked && bn.num_batches_tracked->ndim == 0,
          "BatchNorm2d has 5 entries, FrozenBatchNorm2d 4");
    CHECK(qkv_params_numel(ps) == 6 * 2 * 9 + 6 + 12, "trainable: conv and bn's weight, bias");
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    qkv_nn_conv2d_reset(&conv, &r);
    qkv_nn_batch_norm_reset(&bn);
    qkv_nn_batch_norm_reset(&fbn);
    float bound = 1.0f / sqrtf(2 * 9), most = 0;
    for (int64_t i = 0; i < qkv_numel(conv.weight); i++)
        most = fmaxf(most, fabsf(conv.weight->data[i]));
    CHECK(most <= bound && most > 0.8f * bound, "conv weight within +-1/sqrt(fan_in): %g", most);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_randn(ctx, 4, SHAPE(3, 4, 5, 5), 0, 1);
    qkv_tensor *y = qkv_nn_batch_norm_forward(ctx, &bn, qkv_nn_conv2d_forward(ctx, &conv, x), 0);
    CHECK(y && y->shape[1] == 6 && y->shape[2] == 3 && bn.num_batches_tracked->data[0] == 1.0f,
          "a training forward counts one batch: %s", qkv_error());
    qkv_tensor *z = qkv_nn_batch_norm_forward(ctx, &fbn, y, 0);
    CHECK(z && !z->requires_grad == !y->requires_grad, "frozen: %s", qkv_error());
    qkv_nn_max_pool2d mp = {.kernel = 3, .stride = 2, .padding = 1};
    qkv_tensor *p = qkv_nn_max_pool2d_forward(ctx, &mp, y);
    CHECK(p && p->shape[2] == 2 && p->shape[3] == 2, "max pool 3/2/1 of 3x3: 2x2");
    CHECK(qkv_nn_conv2d_init(&conv, ps, "bad", 3, 6, 3, 3, &o, 0) == QKV_ERR_ARG &&
              strstr(qkv_error(), "groups"),
          "3 channels in 2 groups: %s", qkv_error());
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

TEST(resnet_errors)
{
    qkv_params *ps = qkv_params_new();
    qkv_resnet m;
    CHECK(qkv_resnet_init(&m, ps, "", &(qkv_resnet_config){.depth = 20}) == QKV_ERR_ARG &&
              strstr(qkv_error(), "depth 20"),
          "%s", qkv_error());
    CHECK(qkv_resnet_init(&m, ps, "", &(qkv_resnet_config){.depth = 18, .fc_hidden = 8}) ==
                  QKV_ERR_ARG && strstr(qkv_error(), "fc_hidden"),
          "%s", qkv_error());
    qkv_params_free(ps);
    ps = qkv_params_new();
    REQUIRE(qkv_resnet_init(&m, ps, "", &(qkv_resnet_config){.depth = 18, .in_channels = 1,
                                                             .small_stem = 1}) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 4, SHAPE(2, 3, 8, 8));
    CHECK(!qkv_resnet_forward(ctx, &m, x, QKV_RESNET_LOGITS, 1) &&
              strstr(qkv_error(), "(B, 1, H, W)") && strstr(qkv_error(), "(2, 3, 8, 8)"),
          "%s", qkv_error());
    x = qkv_zeros(ctx, 4, SHAPE(3, 1, 8, 8));
    CHECK(!qkv_resnet_forward(ctx, &m, x, QKV_RESNET_POOLED, 2) && strstr(qkv_error(), "groups"),
          "3 rows in 2 shuffle-BN groups: %s", qkv_error());
    qkv_tensor *c5 = qkv_resnet_forward(ctx, &m, x, QKV_RESNET_C5, 1);
    int64_t h, w;
    qkv_resnet_c5_size(&m, 8, 8, &h, &w);
    CHECK(c5 && c5->shape[1] == 512 && c5->shape[2] == h && h == 1 && w == 1,
          "small stem: 8x8 -> C5 1x1: %s", qkv_error());
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

/* ---- training ---- */

/* MoCo's grey encoder, small, learns three fixed images' classes: the loss
 * falls within a few SGD steps, and warm steps allocate nothing. */
TEST(resnet_training_loss_falls_without_malloc)
{
    qkv_params *ps = qkv_params_new();
    qkv_resnet m;
    REQUIRE(qkv_resnet_init(&m, ps, "", &(qkv_resnet_config){.depth = 18, .in_channels = 1,
                                                             .small_stem = 1,
                                                             .num_classes = 3}) == QKV_OK &&
                qkv_params_alloc(ps) == QKV_OK,
            "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 11);
    qkv_resnet_reset(&m, &r);
    /* lr 0.01: at 0.05 the loss leapt about (1.37, 2.79, 6.8, 0.0001, 1.63)
     * and whether the last step's was below half the first's turned on
     * the GEMMs' rounding */
    qkv_optim *opt = qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_SGD, .lr = 0.01f,
                                                          .momentum = 0.9f});
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x0 = qkv_randn(ctx, 4, SHAPE(6, 1, 8, 8), 0, 1);
    float xs[6 * 64];
    memcpy(xs, x0->data, sizeof xs);
    int64_t y[6] = {0, 1, 2, 0, 1, 2};
    float first = 0, last = 0;
    uint64_t before = 0;
    for (int step = 0; step < 8; step++) {
        qkv_ctx_reset(ctx);
        if (step == 6)
            before = qkv_malloc_count();
        qkv_tensor *x = qkv_from_data(ctx, 4, SHAPE(6, 1, 8, 8), xs);
        qkv_tensor *loss = qkv_cross_entropy(
            ctx, qkv_resnet_forward(ctx, &m, x, QKV_RESNET_LOGITS, 2), y, NULL);
        REQUIRE(loss && qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
        REQUIRE(qkv_optim_step(opt) == QKV_OK, "%s", qkv_error());
        qkv_params_zero_grad(ps);
        if (step == 0)
            first = loss->data[0];
        last = loss->data[0];
    }
    CHECK(qkv_malloc_count() == before, "%llu allocations in two warm steps",
          (unsigned long long)(qkv_malloc_count() - before));
    CHECK(last < 0.5f * first, "loss %g -> %g", first, last);
    CHECK(qkv_params_find(ps, "bn1.num_batches_tracked")->data[0] == 16.0f,
          "8 steps of 2 shuffle-BN groups count 16 batches");
    qkv_ctx_free(ctx);
    qkv_optim_free(opt);
    qkv_params_free(ps);
}
