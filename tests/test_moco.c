/* test_moco.c - MoCo v1, v2, v3: two training steps against a PyTorch
 * re-creation of the official builders (tests/parity/cases_moco.py): the
 * losses, every gradient of the query encoder, the parameters after the
 * optimizer, the key encoder after its momentum updates, the batch-norm
 * buffers, the queue and queue_ptr after the enqueues (against PyTorch in
 * double: v1, v2 on a ViT atol 1e-6, rtol 1e-5; with batch norms, v3 and
 * every version on a ResNet, 1e-5 and 1e-4); the official
 * names on save and open; the momentum schedule; the errors. */
#include "test.h"

static int64_t meta_int(qkv_st_file *f, const char *key)
{
    const char *v = qkv_st_meta(f, key);
    return v ? strtoll(v, NULL, 10) : -1;
}

static float meta_float(qkv_st_file *f, const char *key)
{
    const char *v = qkv_st_meta(f, key);
    return v ? strtof(v, NULL) : NAN;
}

static qkv_moco_config config_of(qkv_st_file *f)
{
    int version = (int)meta_int(f, "version");
    const char *arch = qkv_st_meta(f, "arch");
    if (arch && !strcmp(arch, "resnet"))
        return (qkv_moco_config){
            .version = version, .arch = QKV_MOCO_RESNET, .dim = meta_int(f, "dim"),
            .mlp_dim = version == 3 ? meta_int(f, "mlp_dim") : 0,
            .K = version == 3 ? 0 : meta_int(f, "K"), .T = meta_float(f, "T"), .bn_splits = 1,
            .image_size = meta_int(f, "image"),
            .resnet = {.depth = (int)meta_int(f, "depth"), .width = meta_int(f, "width"),
                       .in_channels = 1, .small_stem = 1}};
    return (qkv_moco_config){
        .version = version, .arch = QKV_MOCO_VIT, .dim = meta_int(f, "dim"),
        .mlp_dim = version == 3 ? meta_int(f, "mlp_dim") : 0,
        .K = version == 3 ? 0 : meta_int(f, "K"), .T = meta_float(f, "T"), .bn_splits = 1,
        .vit_v3_init = version == 3,
        .vit = {.image_size = meta_int(f, "image"), .patch_size = meta_int(f, "patch"),
                .in_channels = 1, .hidden_dim = meta_int(f, "hidden"),
                .mlp_dim = meta_int(f, "mlp"), .num_heads = meta_int(f, "heads"),
                .num_layers = meta_int(f, "layers")}};
}

/* got (want's numel) against want. A tensor that is zero in exact
 * arithmetic (the gradient of a bias before a batch norm, the key part of
 * a qkv bias, a running mean of normalised values) comes from PyTorch as
 * rounding noise far below atol: then got must be as small, |got| <= atol. */
static void check_entry(int line, const char *what, const float *got, const qkv_tensor *want,
                        double atol, double rtol)
{
    double largest = 0, got_largest = 0;
    for (int64_t i = 0; i < qkv_numel(want); i++) {
        largest = fmax(largest, fabs(qkv_get(want, i)));
        got_largest = fmax(got_largest, fabs(got[i]));
    }
    if (largest * (1 - rtol) > atol)
        check_close_buf(__FILE__, line, what, got, want, atol, rtol);
    else if (!(got_largest <= atol))
        test_fail(__FILE__, line, "%s: zero in PyTorch (largest |want| %.3g), got %.3g > atol %g",
                  what, largest, got_largest, atol);
}

/* Compares every entry of ps with the fixture's "<prefix><file name>" */
static void check_store(qkv_ctx *ctx, qkv_st_file *fx, const qkv_moco *m, qkv_params *ps,
                        const char *prefix, double atol, double rtol, int *checked)
{
    char name[600], file[512];
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        qkv_moco_file_name(file, sizeof file, m, t->name);
        snprintf(name, sizeof name, "%s%s", prefix, file);
        qkv_tensor *want = qkv_st_load(ctx, fx, name);
        if (!want) {
            CHECK(0, "fixture has no %s", name);
            continue;
        }
        /* PyTorch's 0-d num_batches_tracked against qkv's 0-d entry */
        check_entry(__LINE__, name, t->data, want, atol, rtol);
        (*checked)++;
    }
}

static void step_parity(const char *name)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_moco_config cfg = config_of(fx);
    qkv_moco m;
    REQUIRE(qkv_moco_init(&m, &cfg) == QKV_OK, "%s: %s", name, qkv_error());
    REQUIRE(qkv_moco_load_state(&m, fx, name) == QKV_OK, "%s: %s", name, qkv_error());
    bool v3 = cfg.version == 3;
    /* batch norms over few values (v3's heads over 4 rows, a ResNet's last
     * layer over 8) amplify float32 rounding to about a tenth of a per
     * mille of the largest gradients */
    bool bn = v3 || cfg.arch == QKV_MOCO_RESNET;
    double atol = bn ? 1e-5 : 1e-6, rtol = bn ? 1e-4 : 1e-5;
    float lr = meta_float(fx, "lr");
    qkv_optim *opt = qkv_optim_new(m.ps, &(qkv_optim_config){.kind = QKV_SGD, .lr = lr,
                                                             .momentum = 0.9f,
                                                             .weight_decay = 1e-4f});
    qkv_ctx *ctx = qkv_ctx_new(), *kctx = qkv_ctx_new(), *fctx = qkv_ctx_new();
    int64_t B = meta_int(fx, "B"), D = cfg.dim;
    float *k1 = calloc((size_t)(B * D), sizeof(float)), *k2 = calloc((size_t)(B * D), sizeof(float));
    char key[600];
    for (int step = 0; step < 2; step++) {
        qkv_ctx_reset(fctx);
        snprintf(key, sizeof key, "x1_%d", step);
        qkv_tensor *x1 = fixture_get(fctx, fx, key);
        snprintf(key, sizeof key, "x2_%d", step);
        qkv_tensor *x2 = fixture_get(fctx, fx, key);
        REQUIRE(x1 && x2, "no views");
        /* the official order: the key encoder's update, keys, loss, enqueue */
        snprintf(key, sizeof key, "m%d", step);
        qkv_moco_momentum_update(&m, v3 ? meta_float(fx, key) : meta_float(fx, "m"));
        qkv_moco_batch b = {.x1 = x1->data, .x2 = x2->data, .B = B, .k1 = k1, .k2 = k2,
                            .groups = 1};
        qkv_ctx_reset(kctx);
        REQUIRE(qkv_moco_keys(kctx, &m, &b, 0, B) == QKV_OK, "%s", qkv_error());
        qkv_ctx_reset(ctx);
        qkv_tensor *loss = qkv_scale(ctx, qkv_moco_loss(ctx, &m, &b, 0, B), 1.0f / (float)B);
        REQUIRE(loss && qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
        snprintf(key, sizeof key, "loss_%d", step);
        CHECK_SCALAR(qkv_get(loss, 0), qkv_get(fixture_get(fctx, fx, key), 0), bn ? 1e-5 : 1e-6,
                     1e-6);
        /* every gradient PyTorch gave (frozen entries have none) */
        int grads = 0;
        for (int64_t i = 0; i < qkv_params_count(m.ps); i++) {
            qkv_tensor *t = qkv_params_at(m.ps, i);
            char file[512];
            qkv_moco_file_name(file, sizeof file, &m, t->name);
            snprintf(key, sizeof key, "grad%d.%s", step, file);
            qkv_tensor *want = qkv_st_load(fctx, fx, key);
            CHECK(!want == !t->requires_grad, "%s: gradient %s in one and not the other", name,
                  key);
            if (want) {
                check_entry(__LINE__, key, t->grad, want, atol, rtol);
                grads++;
            }
        }
        CHECK(grads > 20, "%s: only %d gradients compared", name, grads);
        if (!v3)
            CHECK(qkv_moco_enqueue(&m, k2, B) == QKV_OK, "%s", qkv_error());
        qkv_optim_step(opt);
        qkv_params_zero_grad(m.ps);
    }
    int checked = 0;
    qkv_ctx_reset(fctx);
    check_store(fctx, fx, &m, m.ps, "after.", atol, rtol, &checked);
    check_store(fctx, fx, &m, m.ps_k, "after.", atol, rtol, &checked);
    check_store(fctx, fx, &m, m.ps_queue, "after.", atol, rtol, &checked);
    CHECK(checked == qkv_params_count(m.ps) + qkv_params_count(m.ps_k) +
                         qkv_params_count(m.ps_queue),
          "%d entries compared", checked);
    free(k1);
    free(k2);
    qkv_ctx_free(ctx);
    qkv_ctx_free(kctx);
    qkv_ctx_free(fctx);
    qkv_optim_free(opt);
    qkv_moco_free(&m);
    qkv_st_close(fx);
}

/* On one thread: these tiny tensors would spend their time waking a
 * second one (the trainer runs a shard per thread, each on one). */
static void moco_step_parity(const char *name)
{
    int threads = qkv_threads();
    qkv_set_threads(1);
    step_parity(name);
    qkv_set_threads(threads);
}

TEST(moco_v1_step_matches_builder)
{
    moco_step_parity("moco_v1_step");
}

TEST(moco_v2_step_matches_builder)
{
    moco_step_parity("moco_v2_step");
}

TEST(moco_v3_step_matches_builder)
{
    moco_step_parity("moco_v3_step");
}

TEST(moco_v1_resnet_step_matches_builder)
{
    moco_step_parity("moco_v1_resnet_step");
}

TEST(moco_v2_resnet_step_matches_builder)
{
    moco_step_parity("moco_v2_resnet_step");
}

TEST(moco_v3_resnet_step_matches_builder)
{
    moco_step_parity("moco_v3_resnet_step");
}

TEST(moco_momentum_schedule)
{
    /* moco-v3: from the base at the start to 1 at the end, half way at half */
    CHECK_SCALAR(qkv_moco_momentum_at(0.99f, 0, 100), 0.99, 1e-7, 0);
    CHECK_SCALAR(qkv_moco_momentum_at(0.99f, 50, 100), 0.995, 1e-7, 0);
    CHECK_SCALAR(qkv_moco_momentum_at(0.99f, 100, 100), 1.0, 1e-7, 0);
}

static qkv_moco_config small(int version)
{
    return (qkv_moco_config){.version = version, .arch = QKV_MOCO_VIT, .dim = 8,
                             .mlp_dim = version == 3 ? 16 : 0, .K = 16, .T = 0.2f,
                             .vit_v3_init = version == 3,
                             .vit = {.image_size = 8, .patch_size = 4, .in_channels = 1,
                                     .hidden_dim = 8, .mlp_dim = 12, .num_heads = 2,
                                     .num_layers = 1}};
}

TEST(moco_save_open_keeps_official_names)
{
    for (int version = 1; version <= 3; version++) {
        qkv_moco m, back;
        qkv_moco_config c = small(version);
        REQUIRE(qkv_moco_init(&m, &c) == QKV_OK, "%s", qkv_error());
        qkv_rng r;
        qkv_rng_seed(&r, 7);
        qkv_moco_reset(&m, &r);
        if (version < 3) { /* a queue_ptr that is not 0 */
            float keys[4 * 8] = {0};
            CHECK(qkv_moco_enqueue(&m, keys, 4) == QKV_OK, "%s", qkv_error());
        }
        const char *path = "build/test-moco.safetensors";
        REQUIRE(qkv_moco_save(&m, path) == QKV_OK, "%s", qkv_error());
        qkv_st_file *f = qkv_st_open(path);
        REQUIRE(f, "%s", qkv_error());
        const char *want[3][4] = {
            {"encoder_q.heads.head.weight", "encoder_k.conv_proj.weight", "queue", "queue_ptr"},
            {"encoder_q.heads.head.0.weight", "encoder_k.heads.head.2.bias",
             "encoder_q.encoder.layers.encoder_layer_0.ln_1.weight", "queue"},
            {"base_encoder.blocks.0.attn.qkv.weight", "momentum_encoder.patch_embed.proj.weight",
             "predictor.3.weight", "base_encoder.head.7.running_var"}};
        for (int i = 0; i < 4; i++)
            CHECK(qkv_st_find(f, want[version - 1][i]) >= 0, "v%d: no %s", version,
                  want[version - 1][i]);
        if (version < 3) {
            int64_t ptr = -1, k = qkv_st_find(f, "queue_ptr");
            CHECK(k >= 0 && qkv_st_dtype(f, k) == QKV_DT_I64 &&
                      qkv_st_read_i64(f, k, &ptr) == QKV_OK && ptr == 4,
                  "queue_ptr %lld, not an int64 4", (long long)ptr);
        }
        qkv_st_close(f);
        REQUIRE(qkv_moco_open(&back, path) == QKV_OK, "%s", qkv_error());
        int64_t n1, n2;
        float *a = qkv_params_values(m.ps_k, &n1), *b = qkv_params_values(back.ps_k, &n2);
        CHECK(n1 == n2 && !memcmp(a, b, (size_t)n1 * sizeof(float)), "v%d: key encoder differs",
              version);
        a = qkv_params_values(m.ps, &n1), b = qkv_params_values(back.ps, &n2);
        CHECK(n1 == n2 && !memcmp(a, b, (size_t)n1 * sizeof(float)), "v%d: query side differs",
              version);
        CHECK(back.cfg.version == version && back.cfg.K == c.K && back.cfg.T == c.T,
              "v%d: config not restored", version);
        qkv_moco_free(&back);
        qkv_moco_free(&m);
        remove(path);
    }
}

TEST(moco_reset_copies_query_to_key_and_normalises_queue)
{
    qkv_moco m;
    qkv_moco_config c = small(2);
    REQUIRE(qkv_moco_init(&m, &c) == QKV_OK, "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 1);
    qkv_moco_reset(&m, &r);
    int64_t nk;
    float *k = qkv_params_values(m.ps_k, &nk);
    CHECK(!memcmp(k, qkv_params_values(m.ps, NULL), (size_t)nk * sizeof(float)),
          "key encoder is not a copy");
    for (int64_t j = 0; j < c.K; j++) {
        double s = 0;
        for (int64_t d = 0; d < c.dim; d++)
            s += (double)m.queue->data[d * c.K + j] * m.queue->data[d * c.K + j];
        CHECK_SCALAR(s, 1.0, 1e-5, 0);
    }
    /* the key encoder gets no gradient */
    for (int64_t i = 0; i < qkv_params_count(m.ps_k); i++)
        CHECK(!qkv_params_at(m.ps_k, i)->requires_grad, "key entry %lld wants a gradient",
              (long long)i);
    qkv_moco_free(&m);
}

TEST(moco_errors)
{
    qkv_moco m;
    qkv_moco_config c = small(2);
    c.version = 4;
    CHECK(qkv_moco_init(&m, &c) == QKV_ERR_ARG && strstr(qkv_error(), "version"),
          "version 4 accepted: %s", qkv_error());
    c = small(2);
    c.K = 0;
    CHECK(qkv_moco_init(&m, &c) == QKV_ERR_ARG, "K 0 accepted");
    c = small(2);
    REQUIRE(qkv_moco_init(&m, &c) == QKV_OK, "%s", qkv_error());
    float keys[3 * 8] = {0};
    CHECK(qkv_moco_enqueue(&m, keys, 3) == QKV_ERR_SHAPE && strstr(qkv_error(), "divide"),
          "a batch of 3 into a queue of 16 accepted: %s", qkv_error());
    qkv_moco_free(&m);
    qkv_moco other;
    CHECK(qkv_moco_open(&other, "build/no-such-moco.safetensors") != QKV_OK,
          "a missing file opened");
}

/* The probe's grid features: grid 1 is qkv_moco_features; grid 2 on a 4x4
 * last map is each channel's four 2x2 blocks averaged, row-major, channels
 * in order; a ViT or a grid larger than the map is an error. */
TEST(moco_features_grid_pools_the_last_map)
{
    qkv_moco m;
    qkv_moco_config c = {.version = 2, .arch = QKV_MOCO_RESNET, .dim = 8, .K = 16, .T = 0.2f,
                         .bn_splits = 1, .image_size = 32,
                         .resnet = {.depth = 18, .width = 4, .in_channels = 1,
                                    .small_stem = 1}};
    REQUIRE(qkv_moco_init(&m, &c) == QKV_OK, "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 3);
    qkv_moco_reset(&m, &r);
    qkv_ctx *ctx = qkv_ctx_new();
    REQUIRE(ctx, "%s", qkv_error());
    qkv_set_training(ctx, 0);
    qkv_set_grad_enabled(ctx, 0);
    qkv_tensor *x = qkv_randn(ctx, 4, (int64_t[]){3, 1, 32, 32}, 0, 1);
    REQUIRE(x, "%s", qkv_error());
    qkv_tensor *c5 = qkv_resnet_forward(ctx, &m.q.resnet, x, QKV_RESNET_C5, 1);
    qkv_tensor *g1 = qkv_moco_features_grid(ctx, &m, x, 1);
    qkv_tensor *f = qkv_moco_features(ctx, &m, x);
    qkv_tensor *g2 = qkv_moco_features_grid(ctx, &m, x, 2);
    REQUIRE(c5 && g1 && f && g2, "%s", qkv_error());
    REQUIRE(c5->ndim == 4 && c5->shape[2] == 4 && c5->shape[3] == 4, "C5 is not 4x4");
    int64_t B = 3, F = c5->shape[1];
    CHECK(g1->ndim == 2 && g1->shape[0] == B && g1->shape[1] == F, "grid 1 shape");
    CHECK(g2->ndim == 2 && g2->shape[0] == B && g2->shape[1] == F * 4,
          "grid 2 shape (%lld, %lld), want (%lld, %lld)", (long long)g2->shape[0],
          (long long)g2->shape[1], (long long)B, (long long)(F * 4));
    for (int64_t i = 0; i < B * F; i++)
        CHECK_SCALAR(g1->data[i], f->data[i], 0, 0);
    for (int64_t b = 0; b < B; b++)
        for (int64_t ch = 0; ch < F; ch++)
            for (int gy = 0; gy < 2; gy++)
                for (int gx = 0; gx < 2; gx++) {
                    const float *map = c5->data + (b * F + ch) * 16;
                    double s = 0;
                    for (int y = 2 * gy; y < 2 * gy + 2; y++)
                        for (int xx = 2 * gx; xx < 2 * gx + 2; xx++)
                            s += map[y * 4 + xx];
                    float got = g2->data[b * F * 4 + ch * 4 + gy * 2 + gx];
                    CHECK_SCALAR(got, s / 4, 1e-6, 1e-6);
                }
    CHECK(!qkv_moco_features_grid(ctx, &m, x, 5) && strstr(qkv_error(), "larger"),
          "a grid of 5 on a 4x4 map accepted: %s", qkv_error());
    CHECK(!qkv_moco_features_grid(ctx, &m, x, 0), "a grid of 0 accepted");
    qkv_ctx_free(ctx);
    qkv_moco_free(&m);
    qkv_moco vit;
    c = small(2);
    REQUIRE(qkv_moco_init(&vit, &c) == QKV_OK, "%s", qkv_error());
    ctx = qkv_ctx_new();
    qkv_tensor *xv = qkv_randn(ctx, 4, (int64_t[]){1, 1, 8, 8}, 0, 1);
    CHECK(!qkv_moco_features_grid(ctx, &vit, xv, 2) && strstr(qkv_error(), "ResNet"),
          "a grid on a ViT accepted: %s", qkv_error());
    qkv_ctx_free(ctx);
    qkv_moco_free(&vit);
}
