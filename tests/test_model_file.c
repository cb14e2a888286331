/* test_model_file.c - model files opened by kind, vocabularies, the one
 * text preprocessing. */
#include "test.h"

#include <unistd.h>

static qkv_vocab *small_vocab(const char *text)
{
    const char *tok[64];
    char buf[512];
    snprintf(buf, sizeof buf, "%s", text);
    int n = 0;
    for (char *p = strtok(buf, " "); p && n < 64; p = strtok(NULL, " "))
        tok[n++] = p;
    return qkv_vocab_build(n, tok, 1);
}

/* A seq2seq model saved and opened again: the same kind, weights bit for
 * bit, vocabularies token for token, metadata, and the same translation as
 * the model it came from. */
TEST(model_file_reopens_a_translation_model_by_kind)
{
    qkv_vocab *src = small_vocab("go . i lost . he's calm . i'm home . go"),
              *tgt = small_vocab("va ! j'ai perdu . il est calme . je suis chez moi . à");
    REQUIRE(src && tgt, "%s", qkv_error());
    qkv_tf_config cfg = {.layout = QKV_TF_D2L, .d_model = 16, .n_heads = 2, .d_ffn = 32,
                         .n_enc = 1, .n_dec = 2, .dropout = 0.1f};
    qkv_model *m = qkv_model_new_seq2seq(&cfg, src, tgt, 8);
    REQUIRE(m, "%s", qkv_error());
    qkv_rng r;
    qkv_rng_seed(&r, 3);
    qkv_seq2seq_reset(qkv_model_seq2seq(m), &r);
    CHECK(qkv_model_set_meta(m, "test_accuracy", "0.5") == QKV_OK, "%s", qkv_error());
    CHECK(qkv_model_set_meta(m, "config", "{}") != QKV_OK, "config is the library's to write");
    char path[] = "/tmp/qkv_model_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    REQUIRE(qkv_model_save(m, path) == QKV_OK, "%s", qkv_error());
    qkv_model *o = qkv_model_open(path, NULL);
    REQUIRE(o, "%s", qkv_error());
    CHECK(qkv_model_kind_of(o) == QKV_MODEL_SEQ2SEQ && !qkv_model_vit(o), "kind %s",
          qkv_model_kind_name(qkv_model_kind_of(o)));
    CHECK(qkv_model_num_steps(o) == 8, "num_steps %lld", (long long)qkv_model_num_steps(o));
    int64_t na, nb;
    const float *va = qkv_params_values(qkv_model_params(m), &na);
    const float *vb = qkv_params_values(qkv_model_params(o), &nb);
    CHECK(na == nb && !memcmp(va, vb, (size_t)na * sizeof *va), "weights differ");
    for (int side = 0; side < 2; side++) {
        const qkv_vocab *a = qkv_model_vocab(m, side), *b = qkv_model_vocab(o, side);
        CHECK(qkv_vocab_size(a) == qkv_vocab_size(b), "vocab sizes");
        for (int64_t i = 0; i < qkv_vocab_size(a); i++)
            CHECK(!strcmp(qkv_vocab_token(a, i), qkv_vocab_token(b, i)), "token %lld",
                  (long long)i);
    }
    CHECK(qkv_model_meta(o, "test_accuracy") && !strcmp(qkv_model_meta(o, "test_accuracy"), "0.5"),
          "metadata lost");
    const qkv_tf_config *c = &qkv_model_seq2seq(o)->tf.cfg;
    CHECK(c->d_model == 16 && c->n_heads == 2 && c->d_ffn == 32 && c->n_enc == 1 && c->n_dec == 2,
          "config %lld %lld %lld %lld %lld", (long long)c->d_model, (long long)c->n_heads,
          (long long)c->d_ffn, (long long)c->n_enc, (long long)c->n_dec);
    /* the library's translation against the model's own decoding */
    qkv_ctx *ctx = qkv_ctx_new();
    char got[256], want[256] = "";
    int64_t valid = -1;
    qkv_translate_opts to = {.src_valid = &valid};
    int64_t k = qkv_model_translate(ctx, o, "I'm home.", &to, got, sizeof got);
    int64_t ids[8], out[8];
    int64_t v2 = qkv_nmt_encode(src, "i'm home .", 8, ids);
    int64_t k2 = qkv_seq2seq_translate(ctx, qkv_model_seq2seq(m), ids, 8, v2,
                                       qkv_vocab_id(tgt, "<bos>"), qkv_vocab_id(tgt, "<eos>"), 8,
                                       1, 0.75f, out, NULL);
    for (int64_t i = 0; i < k2; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s", i ? " " : "",
                 qkv_vocab_token(tgt, out[i]));
    CHECK(k == k2 && valid == v2 && !strcmp(got, want), "translate '%s' (%lld), want '%s' (%lld)",
          got, (long long)k, want, (long long)k2);
    qkv_ctx_free(ctx);
    qkv_model_free(o);
    qkv_model_free(m);
    qkv_vocab_free(src);
    qkv_vocab_free(tgt);
    unlink(path);
}

/* A ViT saved by the library opens as a ViT; a plain torchvision state dict
 * (no kind in its metadata) opens as one too, with the heads given. */
TEST(model_file_opens_vits_by_kind_and_by_tensors)
{
    qkv_vit_config cfg = {.image_size = 8, .patch_size = 4, .in_channels = 1, .hidden_dim = 8,
                          .mlp_dim = 16, .num_heads = 2, .num_layers = 1, .num_classes = 3};
    qkv_model *m = qkv_model_new_vit(&cfg);
    REQUIRE(m, "%s", qkv_error());
    char a[] = "/tmp/qkv_model_vitXXXXXX", b[] = "/tmp/qkv_model_sdXXXXXX";
    int fa = mkstemp(a), fb = mkstemp(b);
    REQUIRE(fa >= 0 && fb >= 0, "mkstemp");
    close(fa), close(fb);
    REQUIRE(qkv_model_save(m, a) == QKV_OK, "%s", qkv_error());
    REQUIRE(qkv_params_save(qkv_model_params(m), b, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    qkv_model *o = qkv_model_open(a, NULL);
    CHECK(o && qkv_model_vit(o) && qkv_model_vit(o)->cfg.num_heads == 2, "library file: %s",
          o ? "not a 2-head ViT" : qkv_error());
    qkv_model_free(o);
    o = qkv_model_open(b, &(qkv_model_opts){.num_heads = 2});
    CHECK(o && qkv_model_vit(o) && !qkv_model_seq2seq(o), "state dict: %s",
          o ? "not a ViT" : qkv_error());
    qkv_model_free(o);
    o = qkv_model_open(b, NULL);
    CHECK(!o && strstr(qkv_error(), "num_heads"), "no heads anywhere: %s", qkv_error());
    qkv_model_free(o);
    qkv_model_free(m);
    unlink(a);
    unlink(b);
}

/* Bad files: each message names the file and what is wrong. */
TEST(model_file_errors_name_the_file)
{
    qkv_model *m = qkv_model_open("/tmp/qkv_no_such_model.safetensors", NULL);
    CHECK(!m && strstr(qkv_error(), "/tmp/qkv_no_such_model.safetensors"), "missing: %s",
          qkv_error());
    /* a file of another kind (a bare parameter store) */
    qkv_params *ps = qkv_params_new();
    qkv_params_add(ps, "w", 1, (int64_t[]){3}, 0);
    qkv_params_alloc(ps);
    char path[] = "/tmp/qkv_model_badXXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    REQUIRE(qkv_params_save(ps, path, QKV_DT_F32) == QKV_OK, "%s", qkv_error());
    m = qkv_model_open(path, NULL);
    CHECK(!m && strstr(qkv_error(), path) && strstr(qkv_error(), "not a qkv model"),
          "no kind: %s", qkv_error());
    /* a truncated model */
    qkv_vit_config cfg = {.image_size = 8, .patch_size = 4, .in_channels = 1, .hidden_dim = 8,
                          .mlp_dim = 16, .num_heads = 2, .num_layers = 1, .num_classes = 3};
    qkv_model *v = qkv_model_new_vit(&cfg);
    REQUIRE(v && qkv_model_save(v, path) == QKV_OK, "%s", qkv_error());
    REQUIRE(truncate(path, 200) == 0, "truncate");
    m = qkv_model_open(path, NULL);
    CHECK(!m && strstr(qkv_error(), path), "truncated: %s", qkv_error());
    qkv_model_free(v);
    qkv_params_free(ps);
    unlink(path);
}

/* One preprocessing for training data and typed text: Unicode lowercasing
 * as Python's str.lower() ("À" -> "à", "É" -> "é"), spaces before , . ! ?,
 * and U+202F / U+00A0 as spaces. */
TEST(text_preprocessing_is_the_corpus_one)
{
    char out[128];
    int64_t n = qkv_nmt_preprocess(out, sizeof out, "\xc3\x80 LA MAISON, \xc3\x89lan!\xc2\xa0Ok",
                                   1);
    CHECK(n > 0 && !strcmp(out, "\xc3\xa0 la maison , \xc3\xa9lan ! ok"), "got '%s'", out);
    n = qkv_nmt_preprocess(out, sizeof out, "Go.", 0);
    CHECK(n == 3 && !strcmp(out, "go."), "without spaces: '%s'", out);
    CHECK(qkv_nmt_preprocess(out, 4, "Go.", 1) < 0, "a short buffer must be refused");
    /* typed text finds the corpus' tokens, capitals and accents included */
    const char *tok[] = {"<unk>", "<pad>", "<bos>", "<eos>", "\xc3\xa0", "la", "maison", "."};
    qkv_vocab *v = qkv_vocab_new(8, tok);
    REQUIRE(v, "%s", qkv_error());
    int64_t ids[6];
    int64_t valid = qkv_nmt_encode_text(v, "\xc3\x80 La maison.", 6, ids);
    int64_t want[6] = {4, 5, 6, 7, 3, 1};
    CHECK(valid == 5 && !memcmp(ids, want, sizeof want), "ids %lld %lld %lld %lld %lld %lld, "
          "valid %lld", (long long)ids[0], (long long)ids[1], (long long)ids[2], (long long)ids[3],
          (long long)ids[4], (long long)ids[5], (long long)valid);
    qkv_vocab_free(v);
}

/* A vocabulary from a list keeps its order and refuses repeats; one built
 * by counting is d2l's Vocab. */
TEST(vocab_from_tokens_and_by_counting)
{
    const char *tok[] = {"<unk>", "a", "b", "a"};
    qkv_vocab *v = qkv_vocab_new(3, tok);
    REQUIRE(v, "%s", qkv_error());
    CHECK(qkv_vocab_id(v, "b") == 2 && qkv_vocab_id(v, "zz") == 0 &&
          !strcmp(qkv_vocab_token(v, 1), "a") && !qkv_vocab_token(v, 3), "lookups");
    qkv_vocab_free(v);
    v = qkv_vocab_new(4, tok);
    CHECK(!v && strstr(qkv_error(), "'a' repeats token 1"), "repeat: %s", qkv_error());
    const char *stream[] = {"x", "y", "y", "z", "x", "y", "w"};
    v = qkv_vocab_build(7, stream, 2);
    REQUIRE(v, "%s", qkv_error());
    /* <unk> <pad> <bos> <eos>, then y (3), x (2); z and w are below min_freq */
    CHECK(qkv_vocab_size(v) == 6 && !strcmp(qkv_vocab_token(v, 4), "y") &&
          !strcmp(qkv_vocab_token(v, 5), "x") && qkv_vocab_id(v, "z") == 0,
          "size %lld", (long long)qkv_vocab_size(v));
    qkv_vocab_free(v);
}

/* Opened for inference (the default), a model has no gradient buffers;
 * asked for trainable, it has them and trains. */
TEST(model_file_opens_for_inference_without_gradients)
{
    qkv_vit_config cfg = {.image_size = 8, .patch_size = 4, .in_channels = 1, .hidden_dim = 8,
                          .mlp_dim = 16, .num_heads = 2, .num_layers = 1, .num_classes = 3};
    qkv_model *m = qkv_model_new_vit(&cfg);
    char path[] = "/tmp/qkv_model_infXXXXXX";
    int fd = mkstemp(path);
    REQUIRE(m && fd >= 0, "%s", qkv_error());
    close(fd);
    REQUIRE(qkv_model_save(m, path) == QKV_OK, "%s", qkv_error());
    qkv_model *o = qkv_model_open(path, NULL);
    REQUIRE(o, "%s", qkv_error());
    CHECK(!qkv_params_has_grads(qkv_model_params(o)), "inference model has gradient buffers");
    qkv_model_free(o);
    o = qkv_model_open(path, &(qkv_model_opts){.trainable = 1});
    REQUIRE(o, "%s", qkv_error());
    CHECK(qkv_params_has_grads(qkv_model_params(o)), "trainable model lacks gradient buffers");
    qkv_optim *opt = qkv_optim_new(qkv_model_params(o), &(qkv_optim_config){.kind = QKV_SGD, .lr = 0.1f});
    CHECK(opt, "a trainable model takes an optimizer: %s", qkv_error());
    qkv_optim_free(opt);
    qkv_model_free(o);
    qkv_model_free(m);
    unlink(path);
}
