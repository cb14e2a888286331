/* test_vit.c - the Vision Transformer: the logits and the gradients of the
 * input and of every parameter against a small random torchvision
 * VisionTransformer evaluated in float64 at qkv's float32 inputs and
 * weights (tests/parity/cases_vit.py), so that the only error measured is
 * qkv's own float32 rounding; with the forward equal to PyTorch's, this is
 * the model's gradient check, far sharper than central differences of a
 * float32 forward (docs/testing.md). Also: the configuration read from a
 * state dict, the attention rollout against a hand computation, a short
 * training run whose loss falls, and the CLI: the accuracy `qkv eval vit`
 * computes from the checkpoint equals the one `qkv train vit` printed. */
#include "test.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* ---- parity with torchvision ---- */

/* every_token: the last block computes every token, as torchvision does,
 * instead of the class token alone: the same logits and gradients. */
static void parity_case(const char *name, int every_token)
{
    qkv_st_file *fx = fixture_open(name);
    REQUIRE(fx, "no fixture %s", name);
    qkv_vit_config cfg = {0};
    REQUIRE(qkv_vit_config_from_file(&cfg, fx) == QKV_OK, "%s: %s", name, qkv_error());
    cfg.every_token = every_token;
    qkv_params *ps = qkv_params_new();
    qkv_vit m;
    REQUIRE(qkv_vit_init(&m, ps, &cfg) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_params_alloc(ps) == QKV_OK, "%s", qkv_error());
    /* not strict: the fixture also holds inputs, outputs and gradients */
    REQUIRE(qkv_params_load_file(ps, fx, name, 0) == QKV_OK, "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    const char *tr = qkv_st_meta(fx, "transposed");
    bool transposed = tr && !strcmp(tr, "1");
    qkv_tensor *x0 = qkv_requires_grad(fixture_get(ctx, fx, transposed ? "x_t" : "x"));
    REQUIRE(x0, "no input");
    /* (B, C, W, H) storage seen as (B, C, H, W): a non-contiguous input */
    qkv_tensor *x = transposed ? qkv_transpose(ctx, x0, 2, 3) : x0;
    CHECK(!transposed || !qkv_is_contiguous(x), "the transposed input should be a view");
    qkv_tensor *out = qkv_vit_forward(ctx, &m, x, NULL);
    qkv_tensor *want = fixture_get(ctx, fx, "out");
    /* float32 against float64: a dozen ops deep, ~1e-7 of the logits */
    CHECK_CLOSE(out, want, 2e-7, 1e-6);
    qkv_tensor *gout = fixture_get(ctx, fx, "gout");
    REQUIRE(out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK, "%s", qkv_error());
    CHECK_CLOSE_GRAD(x0, fixture_get(ctx, fx, transposed ? "grad_x_t" : "grad_x"), 1e-8, 1e-6);
    int64_t checked = 0;
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *p = qkv_params_at(ps, i);
        char key[600];
        snprintf(key, sizeof key, "grad_%s", p->name);
        test_note("%s: %s", name, key);
        CHECK_CLOSE_GRAD(p, fixture_get(ctx, fx, key), 5e-7, 1e-6);
        checked++;
    }
    /* 4 top-level, 12 per block, 2 final norm, 2 head */
    CHECK(checked == 8 + 12 * cfg.num_layers, "%s: %lld parameters", name, (long long)checked);
    /* inference: the weights in a store without gradients, gradients off,
     * each block's intermediates dropped once its output exists: the same
     * logits, in less memory */
    size_t train_peak = qkv_arena_peak(qkv_ctx_arena(ctx));
    qkv_ctx_reset(ctx);
    qkv_params *ips = qkv_params_new();
    qkv_vit im;
    REQUIRE(qkv_vit_init(&im, ips, &cfg) == QKV_OK && qkv_params_alloc_inference(ips) == QKV_OK &&
                qkv_params_load_file(ips, fx, name, 0) == QKV_OK,
            "%s", qkv_error());
    qkv_ctx *ictx = qkv_ctx_new();
    qkv_set_training(ictx, 0);
    qkv_set_grad_enabled(ictx, 0);
    qkv_tensor *xi = fixture_get(ictx, fx, transposed ? "x_t" : "x");
    qkv_tensor *yi = qkv_vit_forward(ictx, &im, transposed ? qkv_transpose(ictx, xi, 2, 3) : xi,
                                     NULL);
    CHECK_CLOSE(yi, fixture_get(ictx, fx, "out"), 2e-7, 1e-6);
    size_t infer_peak = qkv_arena_peak(qkv_ctx_arena(ictx));
    CHECK(infer_peak < train_peak, "%s: inference peak %zu bytes, training %zu", name, infer_peak,
          train_peak);
    qkv_ctx_free(ictx);
    qkv_ctx_free(ctx);
    qkv_params_free(ips);
    qkv_params_free(ps);
    qkv_st_close(fx);
}

TEST(vit_parity_rgb) { parity_case("vit_rgb", 0); }
TEST(vit_parity_gray_transposed) { parity_case("vit_gray_transposed", 0); }
TEST(vit_parity_every_token_in_the_last_block) { parity_case("vit_rgb", 1); }

/* Inference keeps one block's intermediates at a time (qkv_ctx_rewind_keep
 * after each block), so its arena peak does not grow with the depth: 2 and
 * 6 blocks of the same width peak alike, and their weights sit in stores
 * without gradients. */
TEST(vit_inference_memory_does_not_grow_with_depth)
{
    size_t peak[2];
    int64_t depth[2] = {2, 6};
    for (int i = 0; i < 2; i++) {
        qkv_vit_config cfg = {.image_size = 32, .patch_size = 4, .in_channels = 3,
                              .hidden_dim = 32, .mlp_dim = 512, .num_heads = 4,
                              .num_layers = depth[i], .num_classes = 10, .every_token = 1};
        qkv_params *ps = qkv_params_new();
        qkv_vit m;
        REQUIRE(qkv_vit_init(&m, ps, &cfg) == QKV_OK && qkv_params_alloc_inference(ps) == QKV_OK,
                "%s", qkv_error());
        qkv_rng r;
        qkv_rng_seed(&r, 1);
        qkv_vit_reset(&m, &r);
        qkv_ctx *ctx = qkv_ctx_new();
        qkv_set_grad_enabled(ctx, 0);
        qkv_set_training(ctx, 0);
        qkv_tensor *x = qkv_randn(ctx, 4, SHAPE(4, 3, 32, 32), 0, 1);
        size_t before = qkv_arena_used(qkv_ctx_arena(ctx));
        REQUIRE(qkv_vit_forward(ctx, &m, x, NULL), "%s", qkv_error());
        peak[i] = qkv_arena_peak(qkv_ctx_arena(ctx)) - before;
        qkv_ctx_free(ctx);
        qkv_params_free(ps);
    }
    CHECK(peak[1] == peak[0], "inference peak %zu bytes with 2 blocks, %zu with 6", peak[0],
          peak[1]);
    /* and one block's worth: the MLP's hidden layer (65 tokens x 4 images x
     * 512 floats) once (GELU overwrites it), beside a dozen (65 x 4 x 32)
     * activations at most (the block's input and residual sum, the norm,
     * the MLP's output; the attention half's intermediates have gone) */
    size_t hidden = 65 * 4 * 512 * sizeof(float), act = 65 * 4 * 32 * sizeof(float);
    CHECK(peak[0] <= hidden + 12 * act, "inference peak %zu bytes, more than the hidden layer "
          "(%zu) and 12 activations (%zu each)", peak[0], hidden, act);
}

/* ---- a tiny model built here ---- */

typedef struct {
    qkv_params *ps;
    qkv_vit m;
} tiny_vit;

static bool tiny_make(tiny_vit *t, uint64_t seed, float dropout)
{
    qkv_vit_config cfg = {.image_size = 8, .patch_size = 4, .in_channels = 1, .hidden_dim = 8,
                          .mlp_dim = 16, .num_heads = 2, .num_layers = 2, .num_classes = 3,
                          .dropout = dropout};
    t->ps = qkv_params_new();
    if (qkv_vit_init(&t->m, t->ps, &cfg) != QKV_OK || qkv_params_alloc(t->ps) != QKV_OK)
        return false;
    qkv_rng r;
    qkv_rng_seed(&r, seed);
    qkv_vit_reset(&t->m, &r);
    /* a non-zero head, so the check sees the whole network */
    qkv_init_uniform(&r, t->m.head.weight, -0.5f, 0.5f);
    qkv_init_uniform(&r, t->m.class_token, -0.5f, 0.5f);
    return true;
}

TEST(vit_shape_errors)
{
    tiny_vit t;
    REQUIRE(tiny_make(&t, 3, 0.0f), "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 4, SHAPE(2, 3, 8, 8));
    CHECK(!qkv_vit_forward(ctx, &t.m, x, NULL) && strstr(qkv_error(), "(2, 3, 8, 8)"),
          "3 channels into a 1-channel model: %s", qkv_error());
    qkv_vit bad;
    qkv_params *ps = qkv_params_new();
    qkv_vit_config c = t.m.cfg;
    c.image_size = 10;
    CHECK(qkv_vit_init(&bad, ps, &c) != QKV_OK && strstr(qkv_error(), "multiple"),
          "image 10 patch 4 accepted");
    c = t.m.cfg;
    c.num_heads = 3;
    CHECK(qkv_vit_init(&bad, ps, &c) != QKV_OK && strstr(qkv_error(), "heads"),
          "width 8 with 3 heads accepted");
    qkv_params_free(ps);
    qkv_ctx_free(ctx);
    qkv_params_free(t.ps);
}

/* What a saved state dict gives back: every size, heads from metadata. */
TEST(vit_config_from_file)
{
    tiny_vit t;
    REQUIRE(tiny_make(&t, 3, 0.0f), "%s", qkv_error());
    char path[] = "/tmp/qkv_vit_cfgXXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    REQUIRE(qkv_params_save(t.ps, path, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    qkv_st_file *f = qkv_st_open(path);
    REQUIRE(f, "%s", qkv_error());
    qkv_vit_config c = {0};
    CHECK(qkv_vit_config_from_file(&c, f) != QKV_OK && strstr(qkv_error(), "num_heads"),
          "no heads in metadata should be an error naming it: %s", qkv_error());
    c.num_heads = 2;
    REQUIRE(qkv_vit_config_from_file(&c, f) == QKV_OK, "%s", qkv_error());
    CHECK(c.image_size == 8 && c.patch_size == 4 && c.in_channels == 1 && c.hidden_dim == 8 &&
              c.mlp_dim == 16 && c.num_layers == 2 && c.num_classes == 3,
          "config %lld %lld %lld %lld %lld %lld %lld", (long long)c.image_size,
          (long long)c.patch_size, (long long)c.in_channels, (long long)c.hidden_dim,
          (long long)c.mlp_dim, (long long)c.num_layers, (long long)c.num_classes);
    qkv_st_close(f);
    /* a loaded copy gives the same logits */
    qkv_params *ps2 = qkv_params_new();
    qkv_vit m2;
    REQUIRE(qkv_vit_init(&m2, ps2, &c) == QKV_OK && qkv_params_alloc(ps2) == QKV_OK, "init");
    CHECK(qkv_params_load(ps2, path, 1) == QKV_OK, "strict load: %s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng r;
    qkv_rng_seed(&r, 9);
    qkv_tensor *x = qkv_randn(ctx, 4, SHAPE(2, 1, 8, 8), 0, 1);
    qkv_tensor *a = qkv_vit_forward(ctx, &t.m, x, NULL), *b = qkv_vit_forward(ctx, &m2, x, NULL);
    CHECK_CLOSE(a, b, 0, 0);
    qkv_ctx_free(ctx);
    qkv_params_free(ps2);
    qkv_params_free(t.ps);
    unlink(path);
}

/* ---- attention rollout ---- */

TEST(vit_rollout_by_hand)
{
    /* N = 3, two blocks. Block 1 W1, block 2 W2 (rows sum to 1); the class
     * row of (0.5 W1 + 0.5 I)(0.5 W2 + 0.5 I) worked out below. */
    const float w[18] = {0.2f, 0.5f, 0.3f, 0.1f, 0.8f, 0.1f, 0.4f, 0.4f, 0.2f,
                         0.6f, 0.2f, 0.2f, 0.3f, 0.3f, 0.4f, 0.0f, 0.5f, 0.5f};
    double a1[3][3], a2[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            a1[i][j] = 0.5 * w[i * 3 + j] + (i == j ? 0.5 : 0);
            a2[i][j] = 0.5 * w[9 + i * 3 + j] + (i == j ? 0.5 : 0);
        }
    double r[3] = {0};
    for (int j = 0; j < 3; j++)
        for (int k = 0; k < 3; k++)
            r[j] += a1[0][k] * a2[k][j];
    double mx = fmax(r[1], r[2]);
    float map[2];
    REQUIRE(qkv_vit_rollout(map, w, 2, 3) == QKV_OK, "%s", qkv_error());
    CHECK_SCALAR(map[0], r[1] / mx, 0, 5e-7);
    CHECK_SCALAR(map[1], r[2] / mx, 1e-8, 5e-7);
    CHECK(qkv_vit_rollout(map, w, 0, 3) != QKV_OK, "L = 0 accepted");
}

/* Attention weights come out of the forward, one (B, N, N) per block,
 * rows summing to 1. */
TEST(vit_forward_weights)
{
    tiny_vit t;
    REQUIRE(tiny_make(&t, 5, 0.0f), "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_grad_enabled(ctx, 0);
    qkv_tensor *x = qkv_randn(ctx, 4, SHAPE(2, 1, 8, 8), 0, 1);
    qkv_tensor *w[2] = {0};
    qkv_tensor *a = qkv_vit_forward(ctx, &t.m, x, w);
    qkv_tensor *b = qkv_vit_forward(ctx, &t.m, x, NULL);
    REQUIRE(a && w[0] && w[1], "%s", qkv_error());
    CHECK_CLOSE(a, b, 5e-7, 5e-7); /* the unfused path rounds differently */
    CHECK(w[1]->ndim == 3 && w[1]->shape[0] == 2 && w[1]->shape[1] == 5 && w[1]->shape[2] == 5,
          "weights shape");
    double s = 0;
    for (int j = 0; j < 5; j++)
        s += qkv_get(w[1], 5 * 3 + j);
    CHECK_SCALAR(s, 1.0, 1e-8, 5e-7);
    qkv_ctx_free(ctx);
    qkv_params_free(t.ps);
}

/* ---- training ---- */

/* 64 Fashion-MNIST test images of classes 0-2, every third pixel of the
 * centre (8x8), learnt for 40 AdamW steps with dropout: the loss must fall
 * well below its start, log(3). */
TEST(vit_training_loss_falls)
{
    qkv_mnist d;
    REQUIRE(qkv_mnist_load(&d, getenv("QKV_MNIST") ? getenv("QKV_MNIST") : NULL, 0) == QKV_OK,
            "%s", qkv_error());
    tiny_vit t;
    REQUIRE(tiny_make(&t, 11, 0.1f), "%s", qkv_error());
    qkv_init_constant(t.m.head.weight, 0.0f);
    qkv_optim *opt = qkv_optim_new(t.ps, &(qkv_optim_config){.kind = QKV_ADAMW, .lr = 1e-2f,
                                                            .weight_decay = 0.01f});
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), 1);
    enum { B = 64 };
    static float xs[B * 64];
    int64_t ys[B];
    /* classes 0, 1, 2 only (3 outputs), an 8x8 subsample of each image */
    int n = 0;
    for (int64_t i = 0; i < d.n && n < B; i++) {
        if (d.labels[i] > 2)
            continue;
        for (int r = 0; r < 8; r++)
            for (int c = 0; c < 8; c++)
                xs[n * 64 + r * 8 + c] = d.images[i * 784 + (r * 3 + 3) * 28 + c * 3 + 3] / 255.0f;
        ys[n++] = d.labels[i];
    }
    REQUIRE(n == B, "only %d images of classes 0-2", n);
    double first = 0, last = 0;
    for (int step = 0; step < 40; step++) {
        qkv_tensor *x = qkv_from_data(ctx, 4, SHAPE(B, 1, 8, 8), xs);
        qkv_tensor *loss = qkv_cross_entropy(ctx, qkv_vit_forward(ctx, &t.m, x, NULL), ys, NULL);
        REQUIRE(loss && qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
        if (step == 0)
            first = loss->data[0];
        last = loss->data[0];
        qkv_optim_step(opt);
        qkv_params_zero_grad(t.ps);
        qkv_ctx_reset(ctx);
    }
    CHECK_SCALAR(first, log(3.0), 2e-8, 5e-7); /* the zero head: uniform predictions */
    CHECK(last < 0.6 * first, "loss %.4f -> %.4f did not fall enough", first, last);
    qkv_ctx_free(ctx);
    qkv_optim_free(opt);
    qkv_params_free(t.ps);
    qkv_mnist_free(&d);
}

/* ---- the command line ---- */

/* Runs `qkv ARGS`, output into out; returns the exit status or -1. */
static int run_qkv(const char *args, char *out, size_t n)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", test_qkv_bin(), args);
    return test_run(cmd, out, n);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* The last "(right/total)" after `key` in text; 0 if absent. */
static int last_count(const char *text, const char *key, long *right, long *total)
{
    const char *at = NULL;
    for (const char *p = strstr(text, key); p; p = strstr(p + 1, key))
        at = p;
    return at && sscanf(strchr(at, '(') ? strchr(at, '(') : "", "(%ld/%ld)", right, total) == 2;
}

/* Two short epochs, the second without crops; the accuracy `eval vit` computes from the saved model
 * is the one training printed, image for image. Then classify and its
 * rollout picture. */
TEST(vit_cli_train_eval_classify)
{
    static char out[65536];
    char dir[] = "/tmp/qkv_vit_cliXXXXXX", args[2048];
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(args, sizeof args,
             "train vit --limit 256 --epochs 2 --plain-epochs 1 --eval-limit 300 --batch-size 64 "
             "--out-dir %s",
             dir);
    int rc = run_qkv(args, out, sizeof out);
    REQUIRE(rc == 0, "train vit: exit %d\n%s", rc, out);
    CHECK(strstr(out, "no random crops from epoch 2 on"), "crops not switched off:\n%s", out);
    long r1 = 0, t1 = 0, r2 = -1, t2 = -1;
    CHECK(last_count(out, "test accuracy", &r1, &t1) && t1 == 300,
          "no test accuracy in:\n%s", out);
    snprintf(args, sizeof args, "eval vit --model %s --limit 300", dir);
    rc = run_qkv(args, out, sizeof out);
    CHECK(rc == 0 && last_count(out, "accuracy", &r2, &t2), "eval vit: exit %d\n%s", rc, out);
    CHECK(r1 == r2 && t1 == t2, "training printed %ld/%ld, eval %ld/%ld", r1, t1, r2, t2);
    CHECK(strstr(out, "Ankle boot"), "no confusion matrix:\n%s", out);
    /* a test image as a PNG */
    qkv_mnist d;
    REQUIRE(qkv_mnist_load(&d, NULL, 0) == QKV_OK, "%s", qkv_error());
    qkv_image img = {.c = 1, .h = 28, .w = 28, .data = malloc(784 * sizeof(float))};
    for (int i = 0; i < 784; i++)
        img.data[i] = d.images[i] / 255.0f;
    char png[600], att[600];
    snprintf(png, sizeof png, "%s/boot.png", dir);
    snprintf(att, sizeof att, "%s/att.png", dir);
    REQUIRE(qkv_image_write_png(&img, png) == QKV_OK, "%s", qkv_error());
    snprintf(args, sizeof args, "classify --model %s/model.safetensors --top 2 --attention %s %s",
             dir, att, png);
    rc = run_qkv(args, out, sizeof out);
    CHECK(rc == 0 && count_lines(out) == 4, "classify: exit %d\n%s", rc, out);
    struct stat st;
    CHECK(stat(att, &st) == 0 && st.st_size > 1000, "no rollout picture %s", att);
    snprintf(args, sizeof args, "classify --model %s/missing.safetensors %s", dir, png);
    CHECK(run_qkv(args, out, sizeof out) == 1, "a missing model should exit 1:\n%s", out);
    free(img.data);
    qkv_mnist_free(&d);
    snprintf(args, sizeof args, "rm -rf '%s'", dir);
    CHECK(system(args) == 0, "rm");
}

/* A torchvision state dict as torchvision saves it loads strictly (no key
 * missing, none unexpected) and gives torchvision's logits. */
TEST(vit_torchvision_state_dict_strict)
{
    qkv_st_file *fx = fixture_open("vit_torchvision_strict");
    REQUIRE(fx, "no fixture");
    qkv_vit_config cfg = {0};
    REQUIRE(qkv_vit_config_from_file(&cfg, fx) == QKV_OK, "%s", qkv_error());
    CHECK(cfg.in_channels == 3 && cfg.image_size == 16 && cfg.num_heads == 4, "config");
    qkv_params *ps = qkv_params_new();
    qkv_vit m;
    REQUIRE(qkv_vit_init(&m, ps, &cfg) == QKV_OK && qkv_params_alloc(ps) == QKV_OK, "%s",
            qkv_error());
    REQUIRE(qkv_params_load_file(ps, fx, "vit_torchvision_strict", 1) == QKV_OK, "%s",
            qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_set_training(ctx, 0);
    qkv_tensor *out = qkv_vit_forward(ctx, &m, fixture_get(ctx, fx, "__x"), NULL);
    CHECK_CLOSE(out, fixture_get(ctx, fx, "__out"), 1e-5, 5e-6);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(fx);
}
