/* test_detr.c - the whole DETR against a re-creation of facebookresearch/
 * detr's model (tests/parity/cases_detr_model.py, Debian's torch 1.13) and
 * against Hugging Face's DetrForObjectDetection (tests/hf/gen.py, PyPI's
 * transformers in .venv), the name mapping, the model file, the data set
 * reader and its batches, a training step whose loss falls, and errors.
 *
 * Tolerances: atol = tol max|want| and rtol = tol per tensor (its scale), as
 * test_resnet.c. DETR is a ResNet-18 (twenty float32 convolutions summing
 * up to 4608 products), then a transformer of a dozen sublayers: outputs
 * tol 1e-5 (measured worst 2026-12-03 in the comments of each check). */
#include "test.h"

#include <unistd.h>

static double max_abs(const qkv_tensor *t)
{
    double m = 0;
    for (int64_t i = 0; t && i < qkv_numel(t); i++)
        m = fmax(m, fabs(qkv_get(t, i)));
    return m;
}

static bool close_scaled(const char *what, const qkv_tensor *got, const qkv_tensor *want,
                         double rel)
{
    return check_close(__FILE__, __LINE__, what, got, want, rel * max_abs(want), rel);
}

/* A DETR declared from a file's shapes and loaded from it (either layout). */
static bool detr_from_file(qkv_detr *m, qkv_params **ps, qkv_st_file *f, const char *what)
{
    qkv_detr_config cfg = {.frozen_stages = 2};
    *ps = qkv_params_new();
    if (!f || !*ps || qkv_detr_config_from_file(&cfg, f) != QKV_OK ||
        qkv_detr_init(m, *ps, &cfg) != QKV_OK || qkv_params_alloc(*ps) != QKV_OK ||
        qkv_detr_load_file(*ps, f, what, 1) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "%s: %s", what, qkv_error());
        return false;
    }
    return true;
}

/* sum(logits * g_logits) + sum(boxes * g_boxes): its gradients are the
 * upstream gradients g */
static qkv_tensor *probe_loss(qkv_ctx *ctx, const qkv_detr_output *o, qkv_tensor *gl,
                              qkv_tensor *gb)
{
    return qkv_add(ctx, qkv_sum_all(ctx, qkv_mul(ctx, o->logits, gl)),
                   qkv_sum_all(ctx, qkv_mul(ctx, o->boxes, gb)));
}

TEST(detr_matches_the_official_model_forward_and_gradients)
{
    /* every decoder layer's pred_logits and pred_boxes of two images (one
     * padded), then the gradients of every trainable tensor outside the
     * backbone and of four backbone convolutions; the stem and layer1 stay
     * frozen (no gradient) */
    qkv_st_file *fx = fixture_open("detr_model_r18");
    qkv_detr m;
    qkv_params *ps = NULL;
    if (!detr_from_file(&m, &ps, fx, "detr_model_r18"))
        goto out;
    CHECK(m.cfg.backbone_depth == 18 && m.cfg.hidden_dim == 16 && m.cfg.num_heads == 4 &&
              m.cfg.enc_layers == 2 && m.cfg.dec_layers == 3 && m.cfg.num_queries == 5 &&
              m.cfg.num_classes == 4 && !m.cfg.backbone_bn && !m.cfg.pre_norm,
          "the config from the shapes");
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = fixture_get(ctx, fx, "__pixel_values");
    qkv_tensor *pm = fixture_get(ctx, fx, "__pixel_mask");
    qkv_detr_output o;
    if (!x || !pm || qkv_detr_forward(ctx, &m, x, pm->data, 0, &o) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "forward: %s", qkv_error());
        qkv_ctx_free(ctx);
        goto out;
    }
    /* measured worst: logits 3.4e-7, boxes 5.6e-8 of their scales */
    CHECK(close_scaled("pred_logits", o.logits, fixture_get(ctx, fx, "__logits"), 2e-6),
          "pred_logits");
    CHECK(close_scaled("pred_boxes", o.boxes, fixture_get(ctx, fx, "__boxes"), 2e-6),
          "pred_boxes");
    qkv_tensor *loss = probe_loss(ctx, &o, fixture_get(ctx, fx, "__g_logits"),
                                  fixture_get(ctx, fx, "__g_boxes"));
    if (!loss || qkv_backward(ctx, loss) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "backward: %s", qkv_error());
        qkv_ctx_free(ctx);
        goto out;
    }
    double G = 0; /* the largest gradient of the case */
    for (int64_t i = 0; i < qkv_st_count(fx); i++)
        if (!strncmp(qkv_st_name(fx, i), "__grad.", 7))
            G = fmax(G, max_abs(fixture_get(ctx, fx, qkv_st_name(fx, i))));
    int64_t checked = 0, outside = 0;
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        int flags = qkv_params_flags(ps, i);
        char key[600];
        snprintf(key, sizeof key, "__grad.%s", t->name);
        bool in_file = qkv_st_find(fx, key) >= 0;
        bool backbone = !strncmp(t->name, "backbone.", 9);
        if (flags & (QKV_PARAM_BUFFER | QKV_PARAM_FROZEN)) {
            CHECK(!in_file, "%s is trained in PyTorch, not in qkv", t->name);
            continue;
        }
        if (!backbone) {
            outside++;
            CHECK(in_file, "no gradient of %s in the fixture", t->name);
        }
        if (!in_file)
            continue;
        qkv_tensor *want = fixture_get(ctx, fx, key);
        double largest = max_abs(want), got_largest = 0;
        for (int64_t j = 0; j < qkv_numel(t); j++)
            got_largest = fmax(got_largest, fabs(t->grad[j]));
        if (largest <= 1e-6 * G) {
            /* zero in exact arithmetic (the first decoder layer's
             * self-attention: its values are the projection of tgt = 0, the
             * same for every key, so neither its attention nor its weights
             * change the output): float32 noise on both sides */
            CHECK(got_largest <= 1e-6 * G, "%s is zero to float32 rounding in PyTorch (%.3g), "
                  "qkv's reaches %.3g (largest gradient %.3g)", key, largest, got_largest, G);
        } else {
            /* measured worst: 1.3e-6 of a tensor's scale (layer2's first conv) */
            CHECK(check_close_buf(__FILE__, __LINE__, key, t->grad, want, 1e-5 * largest, 1e-5),
                  "%s", key);
        }
        checked++;
    }
    CHECK(checked == outside + 4, "%lld gradients checked, %lld outside the backbone + 4",
          (long long)checked, (long long)outside);
    qkv_ctx_free(ctx);
out:
    qkv_params_free(ps);
    qkv_st_close(fx);
}

/* Hugging Face's fixtures live in build/parity/hf (tests/hf/gen.py). */
static qkv_st_file *hf_open(const char *name)
{
    const char *dir = getenv("QKV_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/hf/%s.safetensors", dir ? dir : "build/parity", name);
    test_note("%s", name);
    qkv_st_file *f = qkv_st_open(path);
    if (!f)
        test_fail(__FILE__, __LINE__, "fixture %s: %s (run `make fixtures`)", path, qkv_error());
    return f;
}

/* The model of one Hugging Face file against DetrForObjectDetection: the
 * last layer's logits and boxes, then the gradients outside the backbone. */
static void check_hf(const char *weights)
{
    qkv_st_file *fw = hf_open(weights), *io = hf_open("detr_hf_io");
    qkv_detr m;
    qkv_params *ps = NULL;
    qkv_ctx *ctx = qkv_ctx_new();
    if (!io || !detr_from_file(&m, &ps, fw, weights))
        goto out;
    CHECK(m.cfg.backbone_depth == 18 && m.cfg.hidden_dim == 16 && m.cfg.num_heads == 4 &&
              m.cfg.num_queries == 5 && m.cfg.num_classes == 4 && m.cfg.enc_layers == 2 &&
              m.cfg.dec_layers == 3,
          "%s: the config from the shapes", weights);
    qkv_set_training(ctx, 0);
    qkv_tensor *x = fixture_get(ctx, io, "pixel_values");
    qkv_tensor *pm = fixture_get(ctx, io, "pixel_mask");
    qkv_detr_output o;
    if (!x || !pm || qkv_detr_forward(ctx, &m, x, pm->data, 0, &o) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "%s: %s", weights, qkv_error());
        goto out;
    }
    int64_t L = o.logits->shape[0];
    qkv_tensor *lg = qkv_reshape(ctx, qkv_slice(ctx, o.logits, 0, L - 1, L, 1), 3,
                                 (int64_t[]){2, 5, 5});
    qkv_tensor *bx = qkv_reshape(ctx, qkv_slice(ctx, o.boxes, 0, L - 1, L, 1), 3,
                                 (int64_t[]){2, 5, 4});
    /* measured worst: logits 1.6e-7, boxes 1.1e-7 of their scales */
    CHECK(close_scaled("logits", lg, fixture_get(ctx, io, "logits"), 2e-6), "%s", weights);
    CHECK(close_scaled("pred_boxes", bx, fixture_get(ctx, io, "pred_boxes"), 2e-6), "%s",
          weights);
    qkv_detr_output last = {.logits = lg, .boxes = bx};
    qkv_tensor *loss = probe_loss(ctx, &last, fixture_get(ctx, io, "g_logits"),
                                  fixture_get(ctx, io, "g_boxes"));
    if (!loss || qkv_backward(ctx, loss) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "%s: backward: %s", weights, qkv_error());
        goto out;
    }
    double G = 0;
    for (int64_t i = 0; i < qkv_st_count(io); i++)
        if (!strncmp(qkv_st_name(io, i), "grad.", 5))
            G = fmax(G, max_abs(fixture_get(ctx, io, qkv_st_name(io, i))));
    int64_t checked = 0, outside = 0;
    for (int64_t i = 0; i < qkv_params_count(ps); i++) {
        qkv_tensor *t = qkv_params_at(ps, i);
        if (!strncmp(t->name, "backbone.", 9) ||
            (qkv_params_flags(ps, i) & (QKV_PARAM_BUFFER | QKV_PARAM_FROZEN)))
            continue;
        outside++;
        char key[600];
        snprintf(key, sizeof key, "grad.%s", t->name);
        qkv_tensor *want = qkv_st_find(io, key) >= 0 ? fixture_get(ctx, io, key) : NULL;
        CHECK(want, "%s: no %s in the fixture", weights, key);
        if (!want)
            continue;
        double largest = max_abs(want), got_largest = 0;
        for (int64_t j = 0; j < qkv_numel(t); j++)
            got_largest = fmax(got_largest, fabs(t->grad[j]));
        if (largest <= 1e-6 * G) /* zero in exact arithmetic, as above */
            CHECK(got_largest <= 1e-6 * G, "%s: %s: qkv's reaches %.3g", weights, key,
                  got_largest);
        else /* measured worst: 1.2e-6 of a tensor's scale */
            CHECK(check_close_buf(__FILE__, __LINE__, key, t->grad, want, 1e-5 * largest, 1e-5),
                  "%s: %s", weights, key);
        checked++;
    }
    CHECK(checked == outside && checked > 0, "%s: %lld of %lld gradients checked", weights,
          (long long)checked, (long long)outside);
out:
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
    qkv_st_close(fw);
    qkv_st_close(io);
}

TEST(detr_matches_hugging_face_detr_for_object_detection)
{
    /* the same weights under transformers 5's names and under the hub
     * checkpoints' (transformers 4): each packed in_proj read from q_proj,
     * k_proj and v_proj; the timm backbone's names are torchvision's */
    check_hf("detr_hf5");
    check_hf("detr_hf4");
}

/* The last layer of (L, B, Q, C) as (B, Q, C). */
static qkv_tensor *last_layer(qkv_ctx *ctx, qkv_tensor *t)
{
    int64_t L = t->shape[0];
    return qkv_reshape(ctx, qkv_slice(ctx, t, 0, L - 1, L, 1), 3,
                       (int64_t[]){t->shape[1], t->shape[2], t->shape[3]});
}

TEST(detr_forward_cli_runs_official_and_hugging_face_weights)
{
    /* `qkv forward --arch detr` as a user runs it: Hugging Face's weights
     * (transformers 5 names) on its inputs, and the official layout's on
     * the official fixture's, each against its reference's last layer; a
     * pixel_mask of the wrong shape fails with exit 1 and names it */
    char dir[] = "/tmp/qkv-detr-cli-XXXXXX", cmd[2048], out[4096], path[256];
    const char *fx_dir = getenv("QKV_FIXTURES") ? getenv("QKV_FIXTURES") : "build/parity";
    if (!mkdtemp(dir)) {
        test_fail(__FILE__, __LINE__, "mkdtemp");
        return;
    }
    qkv_ctx *ctx = qkv_ctx_new();
    snprintf(cmd, sizeof cmd, "%s forward --arch detr --weights %s/hf/detr_hf5.safetensors "
             "--input %s/hf/detr_hf_io.safetensors --output %s/hf.safetensors 2>&1",
             test_qkv_bin(), fx_dir, fx_dir, dir);
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "%s: exit %d\n%s", cmd, rc, out);
    snprintf(path, sizeof path, "%s/hf.safetensors", dir);
    qkv_st_file *got = rc == 0 ? qkv_st_open(path) : NULL;
    qkv_st_file *io = hf_open("detr_hf_io");
    if (got && io) {
        /* the same computation as the library test above */
        CHECK(close_scaled("pred_logits", qkv_st_load(ctx, got, "pred_logits"),
                           fixture_get(ctx, io, "logits"), 2e-6), "hf");
        CHECK(close_scaled("pred_boxes", qkv_st_load(ctx, got, "pred_boxes"),
                           fixture_get(ctx, io, "pred_boxes"), 2e-6), "hf");
    }
    qkv_st_close(got);
    /* the official layout: inputs under Hugging Face's names */
    qkv_st_file *fx = fixture_open("detr_model_r18");
    qkv_tensor *x = fixture_get(ctx, fx, "__pixel_values"), *pm = fixture_get(ctx, fx, "__pixel_mask");
    snprintf(path, sizeof path, "%s/in.safetensors", dir);
    qkv_st_writer *w = qkv_st_writer_new();
    if (x && pm && w && qkv_st_add_tensor(w, "pixel_values", x) == QKV_OK &&
        qkv_st_add_tensor(w, "pixel_mask", pm) == QKV_OK && qkv_st_write(w, path) == QKV_OK) {
        snprintf(cmd, sizeof cmd, "%s forward --arch detr --weights %s/detr_model_r18.safetensors "
                 "--input %s --output %s/official.safetensors 2>&1", test_qkv_bin(), fx_dir, path,
                 dir);
        rc = test_run(cmd, out, sizeof out);
        CHECK(rc == 0, "%s: exit %d\n%s", cmd, rc, out);
        snprintf(path, sizeof path, "%s/official.safetensors", dir);
        got = rc == 0 ? qkv_st_open(path) : NULL;
        if (got) {
            CHECK(close_scaled("pred_logits", qkv_st_load(ctx, got, "pred_logits"),
                               last_layer(ctx, fixture_get(ctx, fx, "__logits")), 2e-6),
                  "official");
            CHECK(close_scaled("pred_boxes", qkv_st_load(ctx, got, "pred_boxes"),
                               last_layer(ctx, fixture_get(ctx, fx, "__boxes")), 2e-6),
                  "official");
        }
        qkv_st_close(got);
    }
    qkv_st_writer_free(w);
    /* a mask of the wrong size: exit 1, named, no output */
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    w = qkv_st_writer_new();
    float z[2 * 64 * 64] = {0};
    if (x && w && qkv_st_add_tensor(w, "pixel_values", x) == QKV_OK &&
        qkv_st_add_f32(w, "pixel_mask", QKV_DT_F32, 3, (int64_t[]){2, 64, 64}, z) == QKV_OK &&
        qkv_st_write(w, path) == QKV_OK) {
        snprintf(cmd, sizeof cmd, "%s forward --arch detr --weights %s/detr_model_r18.safetensors "
                 "--input %s --output %s/none.safetensors 2>&1", test_qkv_bin(), fx_dir, path, dir);
        rc = test_run(cmd, out, sizeof out);
        CHECK(rc == 1 && strstr(out, "pixel_mask") && strstr(out, "(N=2, H=64, W=96)"),
              "exit %d: %s", rc, out);
        snprintf(path, sizeof path, "%s/none.safetensors", dir);
        CHECK(access(path, F_OK) != 0, "an output file after a failure");
    }
    qkv_st_writer_free(w);
    qkv_st_close(io);
    qkv_st_close(fx);
    qkv_ctx_free(ctx);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}
