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
    /* measured worst: logits 4.6e-7, boxes 1.1e-7 of their scales */
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
    /* measured worst: logits 2.9e-7 of their scale, boxes equal */
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
        else /* measured worst: 8.5e-7 of a tensor's scale */
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

/* ---- a tiny COCO-format set on disk ---- */

/* dir/img/1.png .. n.png (h x w grey, each pixel (y + x + id) / 200) and
 * dir/ann.json: image i has its boxes as listed; one crowd box on image 1,
 * one box half outside image 2. */
static bool write_set(const char *dir, int n, int64_t h, int64_t w)
{
    char path[512];
    snprintf(path, sizeof path, "%s/img", dir);
    if (qkv_make_dirs(path) != QKV_OK)
        return false;
    for (int i = 1; i <= n; i++) {
        qkv_image im = {.c = 1, .h = h, .w = w, .data = calloc((size_t)(h * w), sizeof(float))};
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++)
                im.data[y * w + x] = (float)(y + x + i) / 200.0f;
        snprintf(path, sizeof path, "%s/img/%d.png", dir, i);
        bool ok = qkv_image_write_png(&im, path) == QKV_OK;
        free(im.data);
        if (!ok)
            return false;
    }
    snprintf(path, sizeof path, "%s/ann.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    fprintf(f, "{\"images\": [");
    for (int i = 1; i <= n; i++)
        fprintf(f, "%s{\"id\": %d, \"file_name\": \"%d.png\", \"width\": %lld, \"height\": %lld}",
                i > 1 ? ", " : "", i * 10, i, (long long)w, (long long)h);
    fprintf(f, "], \"categories\": [{\"id\": 1, \"name\": \"cat\"}, {\"id\": 3, \"name\": \"dog\"}],"
               " \"annotations\": [");
    int id = 1;
    for (int i = 1; i <= n; i++) {
        fprintf(f, "%s{\"id\": %d, \"image_id\": %d, \"category_id\": %d, \"bbox\": [4, 6, 20, 10], "
                   "\"area\": 200, \"iscrowd\": 0}",
                i > 1 ? ", " : "", id++, i * 10, i % 2 ? 1 : 3);
        fprintf(f, ", {\"id\": %d, \"image_id\": %d, \"category_id\": 3, \"bbox\": [%d, 30, 12, 16], "
                   "\"area\": 192, \"iscrowd\": 0}", id++, i * 10, 2 * i);
        if (i == 1)
            fprintf(f, ", {\"id\": %d, \"image_id\": 10, \"category_id\": 1, \"bbox\": [0, 0, 8, 8], "
                       "\"area\": 64, \"iscrowd\": 1}", id++);
        if (i == 2)
            fprintf(f, ", {\"id\": %d, \"image_id\": 20, \"category_id\": 1, \"bbox\": [%lld, 40, 30, 10], "
                       "\"area\": 300, \"iscrowd\": 0}", id++, (long long)(w - 10));
    }
    fprintf(f, "]}");
    return fclose(f) == 0;
}

TEST(det_dataset_reads_boxes_as_detr_does)
{
    /* crowds left out of the targets (kept in the ground truth), boxes
     * clipped to the image, labels = category ids, sizes and paths */
    char dir[] = "/tmp/qkv-detset-XXXXXX", ann[128], img[128], cmd[160];
    REQUIRE(mkdtemp(dir), "mkdtemp failed");
    REQUIRE(write_set(dir, 3, 48, 64), "writing the set");
    snprintf(ann, sizeof ann, "%s/ann.json", dir);
    snprintf(img, sizeof img, "%s/img", dir);
    qkv_det_dataset *d = qkv_det_dataset_open(ann, img);
    REQUIRE(d, "%s", qkv_error());
    CHECK(qkv_det_dataset_size(d) == 3 && qkv_det_dataset_image_id(d, 1) == 20, "size, ids");
    CHECK(qkv_det_dataset_max_category(d) == 3 && qkv_det_dataset_max_objects(d) == 3,
          "max category %lld, objects %lld", (long long)qkv_det_dataset_max_category(d),
          (long long)qkv_det_dataset_max_objects(d));
    CHECK(!strcmp(qkv_det_dataset_category_name(d, 3), "dog") &&
              !qkv_det_dataset_category_name(d, 2), "names");
    int64_t w, h;
    qkv_det_dataset_image_size(d, 0, &w, &h);
    CHECK(w == 64 && h == 48, "size %lldx%lld", (long long)w, (long long)h);
    qkv_det_sample s;
    REQUIRE(qkv_det_dataset_read(d, 0, &s) == QKV_OK, "%s", qkv_error());
    CHECK(s.n == 2 && s.labels[0] == 1 && s.labels[1] == 3, "image 1: %lld boxes", (long long)s.n);
    CHECK_CLOSE_N(s.boxes, ((float[]){4, 6, 24, 16, 2, 30, 14, 46}), 8, 0, 0);
    CHECK(s.image.h == 48 && s.image.w == 64 && s.image.c == 1, "the image");
    CHECK_SCALAR(s.image.data[5 * 64 + 7], (5 + 7 + 1) / 200.0, 0.5 / 255, 0);
    qkv_det_sample_free(&s);
    REQUIRE(qkv_det_dataset_read(d, 1, &s) == QKV_OK, "%s", qkv_error());
    CHECK(s.n == 3, "image 2: %lld boxes", (long long)s.n);
    CHECK_CLOSE_N(s.boxes + 8, ((float[]){54, 40, 64, 48}), 4, 0, 0); /* clipped to 64x48 */
    qkv_det_sample_free(&s);
    qkv_coco_gt *gt = qkv_det_dataset_gt(d, 2);
    CHECK(gt && qkv_coco_gt_count_images(gt) == 2 && qkv_coco_gt_count_anns(gt) == 6,
          "the ground truth of the first two images (the crowd too)");
    qkv_coco_gt_free(gt);
    qkv_det_dataset_free(d);
    /* errors name the file and the entry */
    snprintf(cmd, sizeof cmd, "%s/bad.json", dir);
    FILE *f = fopen(cmd, "w");
    fprintf(f, "{\"images\": [{\"id\": 1, \"file_name\": \"1.png\", \"width\": 4, \"height\": 4}], "
               "\"categories\": [{\"id\": 1}], \"annotations\": [{\"image_id\": 2, "
               "\"category_id\": 1, \"bbox\": [0, 0, 1, 1]}]}");
    fclose(f);
    CHECK(!qkv_det_dataset_open(cmd, img) && strstr(qkv_error(), "annotations[0]") &&
              strstr(qkv_error(), "image is not listed"), "%s", qkv_error());
    CHECK(!qkv_det_dataset_open("/nonexistent/ann.json", img) &&
              strstr(qkv_error(), "/nonexistent/ann.json"), "%s", qkv_error());
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}

TEST(det_fill_pads_a_batch_with_its_mask_and_detr_targets)
{
    /* two images resized to shorter side 24 (max 40): 24x32 each; boxes as
     * (cx, cy, w, h) / (w, h); grey to 3 channels; mean and std applied;
     * a batch of three through the loader's fill with flips and scales */
    char dir[] = "/tmp/qkv-detfill-XXXXXX", ann[128], img[128], cmd[160];
    REQUIRE(mkdtemp(dir), "mkdtemp failed");
    REQUIRE(write_set(dir, 3, 48, 64), "writing the set");
    snprintf(ann, sizeof ann, "%s/ann.json", dir);
    snprintf(img, sizeof img, "%s/img", dir);
    qkv_det_dataset *d = qkv_det_dataset_open(ann, img);
    REQUIRE(d, "%s", qkv_error());
    float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.25f, 0.25f, 0.25f};
    qkv_det_fill_config c = {.data = d, .size = 24, .max_size = 40, .channels = 3, .mean = mean,
                             .std = std, .batch_size = 2};
    size_t bytes = qkv_det_fill_prepare(&c);
    REQUIRE(bytes > 0, "%s", qkv_error());
    CHECK(c.max_h == 24 && c.max_w == 32 && c.max_objects == 3, "bounds %lldx%lld, %lld",
          (long long)c.max_h, (long long)c.max_w, (long long)c.max_objects);
    void *buf = aligned_alloc(64, (bytes + 63) / 64 * 64);
    REQUIRE(qkv_det_fill(&c, (int64_t[]){0, 1}, 2, NULL, buf) == QKV_OK, "%s", qkv_error());
    qkv_det_batch b = qkv_det_batch_view(&c, buf);
    CHECK(b.n == 2 && b.C == 3 && b.H == 24 && b.W == 32, "batch (%lld, %lld, %lld, %lld)",
          (long long)b.n, (long long)b.C, (long long)b.H, (long long)b.W);
    CHECK(b.n_boxes[0] == 2 && b.n_boxes[1] == 3 && b.labels[0] == 1 && b.labels[3] == 3,
          "targets");
    /* image 1's first box (4, 6, 24, 16) scaled by 1/2: (2, 3, 12, 8) in a
     * 32x24 image: cx 7/32, cy 5.5/24, w 10/32, h 5/24 */
    CHECK_CLOSE_N(b.boxes, ((float[]){7.f / 32, 5.5f / 24, 10.f / 32, 5.f / 24}), 4, 1e-7, 1e-6);
    bool ones = true;
    for (int64_t i = 0; i < 2 * 24 * 32; i++)
        ones = ones && b.mask[i] == 1.0f;
    CHECK(ones, "no padding: the mask is all ones");
    /* channel 2 equals channel 0 (grey copied), normalised */
    CHECK_SCALAR(b.pixels[2 * 24 * 32 + 5], b.pixels[5], 0, 0);
    CHECK(b.pixels[0] < -1.5f, "(x - 0.5) / 0.25 of a dark pixel: %g", (double)b.pixels[0]);
    free(buf);
    /* training: flips and two scales; a batch pads to its largest image */
    qkv_det_augment_config aug = {.scales = (int64_t[]){16, 24}, .n_scales = 2, .max_size = 40,
                                  .flip_p = 0.5};
    c = (qkv_det_fill_config){.data = d, .aug = &aug, .channels = 1, .batch_size = 3};
    bytes = qkv_det_fill_prepare(&c);
    REQUIRE(bytes > 0, "%s", qkv_error());
    buf = aligned_alloc(64, (bytes + 63) / 64 * 64);
    qkv_rng r;
    bool padded_seen = false;
    for (uint64_t seed = 0; seed < 20; seed++) {
        qkv_rng_seed(&r, seed);
        REQUIRE(qkv_det_fill(&c, (int64_t[]){0, 1, 2}, 3, &r, buf) == QKV_OK, "%s", qkv_error());
        b = qkv_det_batch_view(&c, buf);
        for (int64_t i = 0; i < 3; i++) {
            int64_t ih = b.size[2 * i], iw = b.size[2 * i + 1];
            int64_t want_h, want_w;
            qkv_det_resized_size(48, 64, ih, 40, &want_h, &want_w);
            CHECK((ih == 16 || ih == 24) && iw == want_w && ih <= b.H && iw <= b.W,
                  "image %lld is %lldx%lld in a %lldx%lld batch", (long long)i, (long long)ih,
                  (long long)iw, (long long)b.H, (long long)b.W);
            /* mask 1 exactly on the image's rows and columns */
            CHECK(b.mask[(i * b.H + ih - 1) * b.W + iw - 1] == 1.0f &&
                      (iw == b.W || b.mask[(i * b.H) * b.W + iw] == 0.0f),
                  "the mask of image %lld", (long long)i);
            padded_seen |= iw < b.W;
            for (int64_t k = 0; k < b.n_boxes[i]; k++) {
                const float *bx = b.boxes + 4 * (i * b.max_objects + k);
                CHECK(bx[0] > 0 && bx[0] < 1 && bx[2] > 0 && bx[2] <= 1, "box in (0, 1)");
            }
        }
    }
    CHECK(padded_seen, "twenty batches and never one of two sizes");
    free(buf);
    qkv_det_dataset_free(d);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}

TEST(detr_hugging_face_names)
{
    /* official -> transformers 5 and the hub's (4); q, k, v pieces */
    char out[256];
    static const struct {
        const char *official;
        int version, part;
        const char *hf;
    } cases[] = {
        {"backbone.0.body.layer1.0.conv1.weight", 5, -1, "model.backbone.model.layer1.0.conv1.weight"},
        {"backbone.0.body.bn1.running_var", 4, -1, "model.backbone.conv_encoder.model.bn1.running_var"},
        {"input_proj.bias", 5, -1, "model.input_projection.bias"},
        {"query_embed.weight", 4, -1, "model.query_position_embeddings.weight"},
        {"transformer.encoder.layers.0.self_attn.in_proj_weight", 5, 1,
         "model.encoder.layers.0.self_attn.k_proj.weight"},
        {"transformer.decoder.layers.5.multihead_attn.in_proj_bias", 4, 2,
         "model.decoder.layers.5.encoder_attn.v_proj.bias"},
        {"transformer.decoder.layers.1.multihead_attn.out_proj.weight", 5, -1,
         "model.decoder.layers.1.encoder_attn.o_proj.weight"},
        {"transformer.encoder.layers.2.self_attn.out_proj.bias", 4, -1,
         "model.encoder.layers.2.self_attn.out_proj.bias"},
        {"transformer.encoder.layers.0.linear1.weight", 5, -1, "model.encoder.layers.0.mlp.fc1.weight"},
        {"transformer.decoder.layers.0.linear2.bias", 4, -1, "model.decoder.layers.0.fc2.bias"},
        {"transformer.encoder.layers.0.norm2.weight", 5, -1,
         "model.encoder.layers.0.final_layer_norm.weight"},
        {"transformer.decoder.layers.0.norm2.weight", 5, -1,
         "model.decoder.layers.0.encoder_attn_layer_norm.weight"},
        {"transformer.decoder.layers.0.norm3.bias", 4, -1,
         "model.decoder.layers.0.final_layer_norm.bias"},
        {"transformer.decoder.norm.weight", 5, -1, "model.decoder.layernorm.weight"},
        {"class_embed.weight", 5, -1, "class_labels_classifier.weight"},
        {"bbox_embed.layers.2.bias", 4, -1, "bbox_predictor.layers.2.bias"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int ok = qkv_detr_hf_name(cases[i].official, cases[i].version, cases[i].part, out,
                                  sizeof out);
        CHECK(ok && !strcmp(out, cases[i].hf), "%s (%d, %d): got %s, want %s", cases[i].official,
              cases[i].version, cases[i].part, ok ? out : "nothing", cases[i].hf);
    }
    /* no counterpart: the pre-norm encoder's final norm, a packed tensor
     * without its part, a whole tensor with one */
    CHECK(!qkv_detr_hf_name("transformer.encoder.norm.weight", 5, -1, out, sizeof out), "norm");
    CHECK(!qkv_detr_hf_name("transformer.encoder.layers.0.self_attn.in_proj_weight", 5, -1, out,
                            sizeof out), "packed without a part");
    CHECK(!qkv_detr_hf_name("class_embed.weight", 5, 0, out, sizeof out), "a part of a whole");
}

/* A tiny DETR (ResNet-18, width 16, 1 + 2 layers, 4 queries), reset;
 * frozen_stages 5 freezes the whole backbone. */
static bool tiny_detr(qkv_detr *m, qkv_params **ps, int64_t channels, int64_t classes,
                      int frozen_stages)
{
    qkv_detr_config cfg = {.backbone_depth = 18, .in_channels = channels, .backbone_bn = 1,
                           .frozen_stages = frozen_stages,
                           .hidden_dim = 16, .num_heads = 2, .dim_feedforward = 32,
                           .enc_layers = 1, .dec_layers = 2, .num_queries = 4,
                           .num_classes = classes};
    *ps = qkv_params_new();
    if (!*ps || qkv_detr_init(m, *ps, &cfg) != QKV_OK || qkv_params_alloc(*ps) != QKV_OK) {
        test_fail(__FILE__, __LINE__, "%s", qkv_error());
        return false;
    }
    qkv_rng r;
    qkv_rng_seed(&r, 7);
    qkv_detr_reset(m, &r);
    return true;
}

TEST(detr_training_steps_lower_the_set_loss)
{
    /* two images, their boxes; DETR's set criterion with auxiliary losses,
     * AdamW on everything after the (frozen) backbone: the loss falls, and a
     * step once warm calls no malloc */
    qkv_detr m;
    qkv_params *ps;
    if (!tiny_detr(&m, &ps, 1, 3, 5))
        return;
    qkv_optim *opt = qkv_optim_new(ps, &(qkv_optim_config){.kind = QKV_ADAMW, .lr = 3e-3f,
                                                          .weight_decay = 1e-4f});
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){2, 1, 64, 64});
    for (int64_t i = 0; i < qkv_numel(x); i++)
        x->data[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    float mask[2 * 64 * 64];
    for (int64_t i = 0; i < 2 * 64 * 64; i++)
        mask[i] = i < 64 * 64 || (i % 64) < 48; /* the second image is 64x48 */
    int64_t labels[3] = {1, 2, 0};
    float boxes[12] = {0.3f, 0.3f, 0.2f, 0.2f, 0.7f, 0.6f, 0.3f, 0.4f, 0.5f, 0.5f, 0.6f, 0.5f};
    qkv_detr_target tg[2] = {{.n = 2, .labels = labels, .boxes = boxes},
                             {.n = 1, .labels = labels + 2, .boxes = boxes + 8}};
    float first = 0, last = 0;
    size_t mallocs = 0;
    float *xs = malloc(sizeof(float) * 2 * 64 * 64);
    memcpy(xs, x->data, sizeof(float) * 2 * 64 * 64);
    qkv_ctx_reset(ctx);
    for (int step = 0; step < 30; step++) {
        if (step == 4)
            mallocs = qkv_malloc_count();
        qkv_tensor *px = qkv_wrap(ctx, 4, (int64_t[]){2, 1, 64, 64}, xs);
        qkv_detr_output o;
        REQUIRE(qkv_detr_forward(ctx, &m, px, mask, 0, &o) == QKV_OK, "%s", qkv_error());
        qkv_tensor *loss = qkv_detr_loss(ctx, o.logits, o.boxes, tg, NULL, NULL);
        REQUIRE(loss && qkv_backward(ctx, loss) == QKV_OK, "%s", qkv_error());
        if (step == 0)
            first = loss->data[0];
        last = loss->data[0];
        qkv_optim_step(opt);
        qkv_params_zero_grad(ps);
        qkv_ctx_reset(ctx);
    }
    /* measured: 12.25 -> 8.24 */
    CHECK(last < 0.8f * first, "loss %g -> %g in 30 steps", (double)first, (double)last);
    CHECK(qkv_malloc_count() == mallocs, "%lld mallocs in 26 warm steps",
          (long long)(qkv_malloc_count() - mallocs));
    free(xs);
    qkv_optim_free(opt);
    qkv_ctx_free(ctx);
    qkv_params_free(ps);
}

TEST(detr_loss_shares_of_a_split_batch_add_up)
{
    /* what the recipe does for each shard: num_boxes the whole batch's,
     * weight_ce scaled by the shard's share of the cross entropy's weights
     * (matched queries 1, the others eos_coef): the shards' losses add up to
     * the batch's, as the trainer's shards need */
    qkv_ctx *ctx = qkv_ctx_new();
    int64_t L = 2, B = 3, Q = 4, K1 = 3;
    qkv_tensor *lg = qkv_new(ctx, 4, (int64_t[]){L, B, Q, K1});
    qkv_tensor *bx = qkv_new(ctx, 4, (int64_t[]){L, B, Q, 4});
    qkv_rng r;
    qkv_rng_seed(&r, 3);
    for (int64_t i = 0; i < qkv_numel(lg); i++)
        lg->data[i] = (float)qkv_rng_normal(&r);
    for (int64_t i = 0; i < qkv_numel(bx); i++)
        bx->data[i] = 0.2f + 0.5f * (float)qkv_rng_uniform(&r);
    int64_t labels[7] = {0, 1, 1, 0, 1, 0, 1};
    float boxes[28];
    for (int i = 0; i < 28; i++)
        boxes[i] = 0.15f + 0.6f * (float)qkv_rng_uniform(&r);
    qkv_detr_target tg[3] = {{.n = 1, .labels = labels, .boxes = boxes},
                             {.n = 5, .labels = labels + 1, .boxes = boxes + 4}, /* > Q */
                             {.n = 1, .labels = labels + 6, .boxes = boxes + 24}};
    qkv_detr_loss_opts o = qkv_detr_loss_defaults();
    qkv_tensor *whole = qkv_detr_loss(ctx, lg, bx, tg, &o, NULL);
    double w[3], total = 0;
    for (int b = 0; b < 3; b++) {
        int64_t k = tg[b].n < Q ? tg[b].n : Q;
        w[b] = (double)k + (double)o.eos_coef * (double)(Q - k);
        total += w[b];
    }
    double sum = 0;
    for (int b = 0; b < 3; b++) {
        qkv_detr_loss_opts s = o;
        s.num_boxes = 7;
        s.weight_ce = (float)(o.weight_ce * w[b] / total);
        qkv_tensor *l = qkv_detr_loss(ctx, qkv_slice(ctx, lg, 1, b, b + 1, 1),
                                      qkv_slice(ctx, bx, 1, b, b + 1, 1), tg + b, &s, NULL);
        REQUIRE(l, "%s", qkv_error());
        sum += l->data[0];
    }
    REQUIRE(whole, "%s", qkv_error());
    CHECK_SCALAR(sum, whole->data[0], 0, 1e-6);
    qkv_ctx_free(ctx);
}

TEST(detr_recipe_trains_saves_and_the_file_runs_everywhere)
{
    /* qkv_detr_train end to end on a tiny COCO-format set (the backbone
     * pretrained on 256 Fashion-MNIST images first), then: the model file
     * reopens as a DETR with its class names and input size; qkv_model_detect;
     * `qkv eval detr` prints the 12 numbers; `qkv detect` draws both
     * pictures; and PyTorch's DETR loads the file strictly
     * (tests/parity/detr_export.py) and gives qkv's outputs */
    char dir[] = "/tmp/qkv-detr-run-XXXXXX", path[256], path2[256], cmd[2048];
    static char out[16384];
    REQUIRE(mkdtemp(dir), "mkdtemp failed");
    snprintf(path, sizeof path, "%s/set", dir);
    REQUIRE(write_set(path, 4, 48, 64), "writing the set");
    snprintf(path, sizeof path, "%s/annotations", dir);
    REQUIRE(qkv_make_dirs(path) == QKV_OK, "%s", qkv_error());
    static const char *links[4][2] = {{"set/img", "train"}, {"set/img", "val"},
                                      {"../set/ann.json", "annotations/train.json"},
                                      {"../set/ann.json", "annotations/val.json"}};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, links[i][1]);
        REQUIRE(symlink(links[i][0], path) == 0, "symlink %s", path);
    }
    snprintf(path, sizeof path, "%s/run", dir);
    qkv_detr_recipe r = {.data_dir = dir, .out_dir = path, .quiet = 1};
    REQUIRE(qkv_detr_recipe_preset(&r, "default") == QKV_OK, "%s", qkv_error());
    r.model.hidden_dim = 16, r.model.num_heads = 2, r.model.dim_feedforward = 32;
    r.model.enc_layers = 1, r.model.dec_layers = 2, r.model.num_queries = 4;
    r.epochs = 2, r.batch_size = 2, r.n_scales = 1, r.scales[0] = 48, r.max_size = 64;
    r.eval_size = 48, r.eval_max_size = 64;
    r.pretrain_epochs = 1, r.pretrain_limit = 256;
    qkv_detr_result res;
    REQUIRE(qkv_detr_train(&r, &res) == QKV_OK, "%s", qkv_error());
    CHECK(res.epochs == 2 && isfinite(res.loss), "epochs %lld, loss %g", (long long)res.epochs,
          res.loss);
    for (int i = 0; i < 12; i++)
        CHECK(res.stats[i] == -1 || (res.stats[i] >= 0 && res.stats[i] <= 1), "stat %d: %g", i,
              res.stats[i]);
    qkv_model *m = qkv_model_open(path, NULL);
    REQUIRE(m && qkv_model_detr(m), "%s", m ? "not a DETR" : qkv_error());
    qkv_detr *d = qkv_model_detr(m);
    CHECK(d->cfg.num_classes == 4 && d->cfg.backbone_bn && d->cfg.hidden_dim == 16 &&
              d->cfg.backbone_width == 32 && d->backbone.features == 256,
          "config: %lld classes, backbone width %lld", (long long)d->cfg.num_classes,
          (long long)d->cfg.backbone_width);
    CHECK(!strcmp(qkv_model_class_name(m, 3), "dog") && !strcmp(qkv_model_class_name(m, 1), "cat") &&
              !qkv_model_class_name(m, 2) && !qkv_model_class_name(m, 0), "class names");
    CHECK(qkv_model_detr_input(m)->size == 48 && qkv_model_detr_input(m)->max_size == 64 &&
              qkv_model_detr_input(m)->mean[0] == 0.449f, "input preparation");
    qkv_image img;
    snprintf(path2, sizeof path2, "%s/set/img/1.png", dir);
    REQUIRE(qkv_image_read(&img, path2) == QKV_OK, "%s", qkv_error());
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_detection dets[4];
    qkv_tensor *attn;
    CHECK(qkv_model_detect(ctx, m, &img, dets, &attn) == 4, "%s", qkv_error());
    CHECK(attn && attn->shape[0] == 4 && attn->shape[1] == 2 && attn->shape[2] == 2,
          "attention (4, 2, 2) for a 48x64 image at stride 32");
    for (int q = 0; q < 4; q++)
        CHECK(isfinite(dets[q].box[0]) && dets[q].score > 0 && dets[q].score < 1 &&
                  dets[q].label >= 0 && dets[q].label < 4, "query %d", q);
    qkv_image_free(&img);
    /* the CLI on the run's model */
    snprintf(cmd, sizeof cmd, "%s eval detr --model %s --data %s 2>&1", test_qkv_bin(), path, dir);
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all") &&
              strstr(out, "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large"),
          "%s: exit %d\n%s", cmd, rc, out);
    snprintf(cmd, sizeof cmd, "%s detect --model %s --threshold 0 --out %s/b.png --attention "
             "%s/a.png %s 2>&1", test_qkv_bin(), path, dir, dir, path2);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "(query 3)"), "%s: exit %d\n%s", cmd, rc, out);
    qkv_image pic;
    snprintf(path2, sizeof path2, "%s/b.png", dir);
    CHECK(qkv_image_read(&pic, path2) == QKV_OK && pic.c == 3 && pic.w >= 384,
          "%s: %s", path2, qkv_error());
    qkv_image_free(&pic);
    snprintf(path2, sizeof path2, "%s/a.png", dir);
    CHECK(qkv_image_read(&pic, path2) == QKV_OK && pic.c == 3, "%s: %s", path2, qkv_error());
    qkv_image_free(&pic);
    /* PyTorch's DETR on the same two padded images */
    qkv_tensor *x = qkv_new(ctx, 4, (int64_t[]){2, 1, 48, 64});
    qkv_tensor *pm = qkv_new(ctx, 3, (int64_t[]){2, 48, 64});
    for (int64_t i = 0; i < qkv_numel(x); i++)
        x->data[i] = (float)((i * 13) % 29) / 10.0f - 1.4f;
    for (int64_t i = 0; i < qkv_numel(pm); i++)
        pm->data[i] = i < 48 * 64 || (i % 64) < 40;
    snprintf(path2, sizeof path2, "%s/in.safetensors", dir);
    qkv_st_writer *w = qkv_st_writer_new();
    REQUIRE(w && qkv_st_add_tensor(w, "pixel_values", x) == QKV_OK &&
                qkv_st_add_tensor(w, "pixel_mask", pm) == QKV_OK && qkv_st_write(w, path2) == QKV_OK,
            "%s", qkv_error());
    qkv_st_writer_free(w);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/parity/detr_export.py %s/model.safetensors "
             "%s %s/torch.safetensors 2>&1", path, path2, dir);
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "%s: exit %d\n%s", cmd, rc, out);
    snprintf(path2, sizeof path2, "%s/torch.safetensors", dir);
    qkv_st_file *tf = rc == 0 ? qkv_st_open(path2) : NULL;
    qkv_detr_output o;
    qkv_set_training(ctx, 0);
    qkv_set_grad_enabled(ctx, 0);
    if (tf && qkv_detr_forward(ctx, d, x, pm->data, 0, &o) == QKV_OK) {
        /* a trained model, the same float32 computation in another order:
         * measured worst 2.1e-6 of the logits' scale */
        CHECK(close_scaled("exported logits", o.logits, qkv_st_load(ctx, tf, "logits"), 1e-5),
              "export");
        CHECK(close_scaled("exported boxes", o.boxes, qkv_st_load(ctx, tf, "boxes"), 1e-5),
              "export");
    } else {
        test_fail(__FILE__, __LINE__, "%s", qkv_error());
    }
    qkv_st_close(tf);
    qkv_ctx_free(ctx);
    qkv_model_free(m);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}
