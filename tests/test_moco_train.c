/* test_moco_train.c - MoCo through the trainer on a few Fashion-MNIST
 * images with a tiny ViT: a run writes its model (reopened with the
 * official names), metrics with the kNN monitor and the embedding; a run
 * stopped after its first epoch and resumed ends bit for bit where an
 * uninterrupted one does (the key encoder and the queue are in the
 * checkpoint); shuffle BN gives the keys in the batch's order; the probe
 * and fine-tuning run on the result; the labelled subsets. */
#include "test.h"

#include <sys/stat.h>

static qkv_moco_recipe tiny(int version, const char *out_dir)
{
    qkv_moco_recipe r = {.out_dir = out_dir, .quiet = 1, .threads = 2};
    qkv_moco_recipe_preset(&r, version == 3 ? "v3" : version == 1 ? "v1" : "v2");
    r.model.vit = (qkv_vit_config){.image_size = 28, .patch_size = 7, .in_channels = 1,
                                   .hidden_dim = 16, .mlp_dim = 24, .num_heads = 2,
                                   .num_layers = 1};
    r.model.dim = 8, r.model.K = 32, r.model.mlp_dim = version == 3 ? 24 : 0;
    r.epochs = 2, r.batch_size = 16, r.limit = 64, r.eval_limit = 100, r.knn_bank = 64;
    r.knn_k = 10, r.warmup_epochs = 0.5;
    return r;
}

static bool same_file_tensors(const char *a, const char *b, const char *skip_prefix)
{
    qkv_st_file *fa = qkv_st_open(a), *fb = qkv_st_open(b);
    bool same = fa && fb && qkv_st_count(fa) == qkv_st_count(fb);
    for (int64_t i = 0; same && i < qkv_st_count(fa); i++) {
        const char *name = qkv_st_name(fa, i);
        if (skip_prefix && !strncmp(name, skip_prefix, strlen(skip_prefix)))
            continue;
        int64_t j = qkv_st_find(fb, name), n = qkv_st_numel(fa, i);
        float *x = malloc((size_t)(n + 1) * sizeof(float)), *y = malloc((size_t)(n + 1) * sizeof(float));
        same = j >= 0 && qkv_st_numel(fb, j) == n && qkv_st_read_f32(fa, i, x) == QKV_OK &&
               qkv_st_read_f32(fb, j, y) == QKV_OK && !memcmp(x, y, (size_t)n * sizeof(float));
        if (!same)
            fprintf(stderr, "    %s differs\n", name);
        free(x), free(y);
    }
    qkv_st_close(fa), qkv_st_close(fb);
    return same;
}

static void run_and_resume(int version)
{
    char d1[64], d2[64], p1[96], p2[96];
    snprintf(d1, sizeof d1, "build/test-moco-v%d-a", version);
    snprintf(d2, sizeof d2, "build/test-moco-v%d-b", version);
    qkv_moco_recipe r = tiny(version, d1);
    qkv_moco_result res;
    REQUIRE(qkv_moco_train(&r, &res) == QKV_OK, "v%d: %s", version, qkv_error());
    CHECK(res.knn_accuracy > 0.15 && res.knn_accuracy <= 1.0, "v%d: kNN accuracy %g", version,
          res.knn_accuracy);
    snprintf(p1, sizeof p1, "%s/model.safetensors", d1);
    qkv_moco m;
    REQUIRE(qkv_moco_open(&m, d1) == QKV_OK, "%s", qkv_error());
    CHECK(m.cfg.version == version, "reopened as v%d", m.cfg.version);
    qkv_moco_free(&m);
    snprintf(p2, sizeof p2, "%s/embedding.png", d1);
    struct stat sb;
    CHECK(stat(p2, &sb) == 0 && sb.st_size > 1000, "no embedding.png");
    snprintf(p2, sizeof p2, "%s/metrics.jsonl", d1);
    char line[4096] = "";
    FILE *f = fopen(p2, "r");
    CHECK(f && fgets(line, sizeof line, f) && strstr(line, "\"knn_acc\"") &&
              strstr(line, "\"loss\""),
          "metrics.jsonl's first line: %s", line);
    if (f)
        fclose(f);
    /* the same run in two parts: one epoch, then a resumed second */
    r = tiny(version, d2);
    r.stop_after = 1; /* as Ctrl-C after the first epoch: a checkpoint */
    REQUIRE(qkv_moco_train(&r, NULL) == QKV_ERR_INTERRUPTED, "%s", qkv_error());
    r = tiny(version, d2);
    r.resume = 1;
    REQUIRE(qkv_moco_train(&r, NULL) == QKV_OK, "%s", qkv_error());
    snprintf(p2, sizeof p2, "%s/model.safetensors", d2);
    CHECK(same_file_tensors(p1, p2, NULL), "v%d: the resumed run's model differs", version);
}

TEST(moco_v2_trains_and_resumes_bit_for_bit) { run_and_resume(2); }
TEST(moco_v3_trains_and_resumes_bit_for_bit) { run_and_resume(3); }

TEST(moco_shuffle_bn_puts_keys_back_in_order)
{
    /* a ViT has no batch norm: shuffled keys, put back, are the keys */
    qkv_moco_recipe r = tiny(2, NULL);
    qkv_moco m;
    REQUIRE(qkv_moco_init(&m, &r.model) == QKV_OK, "%s", qkv_error());
    qkv_rng rng;
    qkv_rng_seed(&rng, 3);
    qkv_moco_reset(&m, &rng);
    int64_t B = 12, P = 28 * 28, D = r.model.dim;
    float *x = malloc((size_t)(B * P) * sizeof(float));
    float *k_in = malloc((size_t)(B * D) * sizeof(float)), *k_sh = malloc((size_t)(B * D) * sizeof(float));
    for (int64_t i = 0; i < B * P; i++)
        x[i] = (float)qkv_rng_uniform(&rng);
    int64_t perm[12];
    for (int64_t i = 0; i < B; i++)
        perm[i] = i;
    qkv_rng_shuffle(&rng, perm, B);
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_moco_batch a = {.x1 = x, .x2 = x, .B = B, .k2 = k_in, .groups = 1};
    qkv_moco_batch b = {.x1 = x, .x2 = x, .B = B, .k2 = k_sh, .perm = perm, .groups = 3};
    /* in two calls, as two shards would */
    REQUIRE(qkv_moco_keys(ctx, &m, &a, 0, B) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_moco_keys(ctx, &m, &b, 0, 5) == QKV_OK && qkv_moco_keys(ctx, &m, &b, 5, B) == QKV_OK,
            "%s", qkv_error());
    qkv_tensor *ta = qkv_wrap(ctx, 2, (int64_t[]){B, D}, k_in);
    qkv_tensor *tb = qkv_wrap(ctx, 2, (int64_t[]){B, D}, k_sh);
    CHECK_CLOSE(tb, ta, 1e-6, 1e-5);
    perm[0] = B; /* not a row */
    CHECK(qkv_moco_keys(ctx, &m, &b, 0, 5) == QKV_ERR_ARG, "a bad permutation accepted");
    qkv_ctx_free(ctx);
    free(x), free(k_in), free(k_sh);
    qkv_moco_free(&m);
}

TEST(moco_probe_and_finetune_run_on_a_trained_model)
{
    qkv_moco_recipe r = tiny(2, "build/test-moco-probe");
    r.epochs = 1;
    REQUIRE(qkv_moco_train(&r, NULL) == QKV_OK, "%s", qkv_error());
    qkv_probe_recipe p = {.model = "build/test-moco-probe", .quiet = 1, .limit = 500,
                          .eval_limit = 200};
    qkv_probe_recipe_default(&p);
    p.epochs = 3, p.lr = 0.5, p.standardize = 1;
    qkv_probe_result pr;
    REQUIRE(qkv_probe_train(&p, &pr) == QKV_OK, "%s", qkv_error());
    /* ten classes: a linear classifier on any features beats chance */
    CHECK(pr.test_accuracy > 0.3 && pr.test_accuracy <= 1.0, "probe accuracy %g",
          pr.test_accuracy);
    qkv_finetune_recipe ft = {.model = "build/test-moco-probe", .quiet = 1, .eval_limit = 200,
                              .threads = 2};
    qkv_finetune_recipe_default(&ft);
    ft.epochs = 2, ft.fraction = 0.005, ft.warmup_epochs = 0;
    qkv_finetune_result fr;
    REQUIRE(qkv_finetune_train(&ft, &fr) == QKV_OK, "%s", qkv_error());
    CHECK(fr.labels == 300 && fr.test_accuracy > 0.0, "%lld labels, accuracy %g",
          (long long)fr.labels, fr.test_accuracy);
    /* LP-FT: with every epoch the head's alone, the encoder leaves as it came;
     * with none, it moves */
    ft.epochs = 1, ft.eval_every = 1;
    for (int head = 1; head >= 0; head--) {
        ft.head_epochs = head, ft.encoder_lr = 0.5, ft.out_dir = "build/test-moco-finetune";
        REQUIRE(qkv_finetune_train(&ft, &fr) == QKV_OK, "%s", qkv_error());
        qkv_st_file *a = qkv_st_open("build/test-moco-probe/model.safetensors");
        qkv_st_file *b = qkv_st_open("build/test-moco-finetune/model.safetensors");
        REQUIRE(a && b, "%s", qkv_error());
        const char *names[][2] = {
            {"encoder_q.conv_proj.weight", "conv_proj.weight"},
            {"encoder_q.encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
             "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"}};
        for (int k = 0; k < 2; k++) {
            int64_t i = qkv_st_find(a, names[k][0]), j = qkv_st_find(b, names[k][1]);
            REQUIRE(i >= 0 && j >= 0 && qkv_st_numel(a, i) == qkv_st_numel(b, j), "%s",
                    names[k][1]);
            int64_t n = qkv_st_numel(a, i);
            float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
            REQUIRE(x && y && !qkv_st_read_f32(a, i, x) && !qkv_st_read_f32(b, j, y), "read");
            test_note("head epochs %d, %s", head, names[k][1]);
            CHECK(head ? !memcmp(x, y, (size_t)n * sizeof(float))
                       : memcmp(x, y, (size_t)n * sizeof(float)) != 0,
                  "the encoder %s", head ? "moved while frozen" : "did not move");
            free(x), free(y);
        }
        qkv_st_close(a), qkv_st_close(b);
    }
    /* random resized crops instead of shifts: the same run otherwise, so the
     * encoder must come out different from the last one (shifts, head 0) */
    ft.view = (qkv_view_aug){.crop_min = 0.5f, .crop_max = 1, .flip = 0.5f};
    ft.out_dir = "build/test-moco-finetune-view";
    REQUIRE(qkv_finetune_train(&ft, &fr) == QKV_OK, "%s", qkv_error());
    CHECK(fr.test_accuracy > 0.0, "accuracy %g with views", fr.test_accuracy);
    qkv_st_file *a = qkv_st_open("build/test-moco-finetune/model.safetensors");
    qkv_st_file *b = qkv_st_open("build/test-moco-finetune-view/model.safetensors");
    REQUIRE(a && b, "%s", qkv_error());
    int64_t i = qkv_st_find(a, "conv_proj.weight"), j = qkv_st_find(b, "conv_proj.weight");
    REQUIRE(i >= 0 && j >= 0 && qkv_st_numel(a, i) == qkv_st_numel(b, j), "conv_proj.weight");
    int64_t n = qkv_st_numel(a, i);
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    REQUIRE(x && y && !qkv_st_read_f32(a, i, x) && !qkv_st_read_f32(b, j, y), "read");
    test_note("random resized crops");
    CHECK(memcmp(x, y, (size_t)n * sizeof(float)) != 0, "the views changed nothing");
    free(x), free(y);
    qkv_st_close(a), qkv_st_close(b);
}

TEST(label_subsets_take_each_class_alike)
{
    int64_t n = 1000, out[1000];
    uint8_t labels[1000];
    for (int64_t i = 0; i < n; i++)
        labels[i] = (uint8_t)(i % 7 == 0 ? 9 : i % 9); /* uneven classes */
    int64_t m = qkv_label_subset(out, labels, n, 10, 0.1, 5);
    int64_t counts[10] = {0}, total[10] = {0};
    for (int64_t i = 0; i < n; i++)
        total[labels[i]]++;
    for (int64_t i = 0; i < m; i++) {
        counts[labels[out[i]]]++;
        CHECK(i == 0 || out[i] > out[i - 1], "not increasing at %lld", (long long)i);
    }
    for (int c = 0; c < 10; c++)
        CHECK(counts[c] == (int64_t)floor(0.1 * (double)total[c] + 0.5),
              "class %d: %lld of %lld", c, (long long)counts[c], (long long)total[c]);
    int64_t again[1000];
    CHECK(qkv_label_subset(again, labels, n, 10, 0.1, 5) == m && !memcmp(out, again, (size_t)m * 8),
          "the same seed gave another subset");
    CHECK(qkv_label_subset(again, labels, n, 10, 0.0, 5) == -1, "fraction 0 accepted");
}
