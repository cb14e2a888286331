/* test_io_safetensors.c - safetensors both ways with PyTorch, exact F16/BF16
 * rounding, and a malformed file for each rule of the validator. */
#include "test.h"

#include <unistd.h>

static const char *tmpdir(void)
{
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/qkv_test_io_XXXXXX");
        if (!mkdtemp(dir))
            snprintf(dir, sizeof dir, "/tmp");
    }
    return dir;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* lo + (k * (hi - lo)) // (n - 1), as cases_io.py's _ints (floor division,
 * exact in 128-bit because the products overflow int64) */
static int64_t spread(int64_t k, int64_t n, int64_t lo, int64_t hi)
{
    __int128 d = (__int128)k * ((__int128)hi - lo);
    __int128 q = d / (n - 1);
    if (d % (n - 1) != 0 && d < 0)
        q--;
    return (int64_t)(lo + q);
}

static float *read_all(qkv_st_file *f, const char *name, int64_t *n)
{
    int64_t i = qkv_st_find(f, name);
    if (i < 0)
        return NULL;
    *n = qkv_st_numel(f, i);
    float *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    if (qkv_st_read_f32(f, i, v) != QKV_OK) {
        free(v);
        return NULL;
    }
    return v;
}

/* PyTorch writes every dtype; qkv reads them. */
TEST(st_read_pytorch_dtypes)
{
    qkv_st_file *f = fixture_open("io_st_dtypes");
    REQUIRE(f, "no fixture");
    static const struct { const char *name; qkv_dtype dt; } want[] = {
        {"ref", QKV_DT_F64}, {"f32", QKV_DT_F32}, {"f16", QKV_DT_F16}, {"bf16", QKV_DT_BF16},
        {"i64", QKV_DT_I64}, {"i32", QKV_DT_I32}, {"i8", QKV_DT_I8}, {"u8", QKV_DT_U8},
        {"bool", QKV_DT_BOOL}, {"scalar", QKV_DT_F32}, {"empty", QKV_DT_F32},
    };
    CHECK(qkv_st_count(f) == 11, "count %lld", (long long)qkv_st_count(f));
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        int64_t i = qkv_st_find(f, want[k].name);
        CHECK(i >= 0 && qkv_st_dtype(f, i) == want[k].dt, "%s: dtype", want[k].name);
    }
    int64_t shape[QKV_MAX_DIMS];
    CHECK(qkv_st_shape(f, qkv_st_find(f, "ref"), shape) == 3 && shape[0] == 2 &&
          shape[1] == 3 && shape[2] == 4, "ref shape");
    CHECK(qkv_st_shape(f, qkv_st_find(f, "scalar"), shape) == 0, "scalar is 0-d");
    CHECK(qkv_st_shape(f, qkv_st_find(f, "empty"), shape) == 2 && shape[0] == 0, "empty");
    CHECK(qkv_st_numel(f, qkv_st_find(f, "empty")) == 0, "empty numel");

    int64_t n = 0, m = 0;
    float *ref = read_all(f, "ref", &n), *v32 = read_all(f, "f32", &m);
    REQUIRE(ref && v32 && n == 24 && m == 24, "ref/f32: %s", qkv_error());
    float *v16 = read_all(f, "f16", &m), *vb = read_all(f, "bf16", &m);
    REQUIRE(v16 && vb, "f16/bf16: %s", qkv_error());
    for (int64_t k = 0; k < n; k++) {
        /* F64 -> F32 rounds once, as torch's .float(); halves round from
         * double in torch, from float here: within half an ulp of each
         * (2^-11 |x| for F16, whose subnormals are 2^-24 apart; 2^-8 |x|
         * for BF16), plus the F32 rounding of ref (the 1.0001) */
        CHECK(bits(ref[k]) == bits(v32[k]), "f32[%lld] %g vs %g", (long long)k, v32[k], ref[k]);
        CHECK_SCALAR(v16[k], ref[k], 0x1p-25, 0x1p-11 * 1.0001);
        CHECK_SCALAR(vb[k], ref[k], 0, 0x1p-8 * 1.0001);
    }
    free(ref), free(v32), free(v16), free(vb);

    static const struct { const char *name; int64_t lo, hi; } ints[] = {
        {"i64", -(INT64_C(1) << 62), INT64_C(1) << 62}, {"i32", INT32_MIN, INT32_MAX},
        {"i8", -128, 127}, {"u8", 0, 255},
    };
    for (size_t k = 0; k < 4; k++) {
        int64_t i = qkv_st_find(f, ints[k].name), got[7];
        float gotf[7];
        REQUIRE(qkv_st_read_i64(f, i, got) == QKV_OK && qkv_st_read_f32(f, i, gotf) == QKV_OK,
                "%s: %s", ints[k].name, qkv_error());
        for (int j = 0; j < 7; j++) {
            int64_t w = spread(j, 7, ints[k].lo, ints[k].hi);
            CHECK(got[j] == w, "%s[%d] = %lld, want %lld", ints[k].name, j, (long long)got[j],
                  (long long)w);
            CHECK(gotf[j] == (float)w, "%s[%d] as float", ints[k].name, j);
        }
    }
    int64_t b[7];
    CHECK(qkv_st_read_i64(f, qkv_st_find(f, "bool"), b) == QKV_OK && b[0] == 1 && b[1] == 0 &&
          b[2] == 0 && b[3] == 1 && b[4] == 1 && b[5] == 0 && b[6] == 1, "bool values");
    float s;
    CHECK(qkv_st_read_f32(f, qkv_st_find(f, "scalar"), &s) == QKV_OK && s == 3.5f, "scalar");
    CHECK(qkv_st_read_i64(f, qkv_st_find(f, "f32"), b) == QKV_ERR_FORMAT &&
          strstr(qkv_error(), "'f32'") && strstr(qkv_error(), "not an integer"),
          "read_i64 of F32: %s", qkv_error());
    const char *note = qkv_st_meta(f, "note"), *u = qkv_st_meta(f, "\xc3\xbcn\xc3\xaf");
    CHECK(note && !strcmp(note, "qkv reads PyTorch"), "metadata note");
    CHECK(u && !strcmp(u, "c\xc3\xb4" "d\xc3\xa9"), "unicode metadata (\\u escapes in JSON)");
    CHECK(!qkv_st_meta(f, "absent"), "absent metadata key");

    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *t = qkv_st_load(ctx, f, "f16");
    CHECK(t && t->ndim == 3 && t->shape[2] == 4, "load f16 as a tensor");
    CHECK(!qkv_st_load(ctx, f, "nope") && strstr(qkv_error(), "nope"), "absent tensor");
    qkv_ctx_free(ctx);
    qkv_st_close(f);
}

/* Every F16/BF16 bit pattern widens as PyTorch does; float32 values narrow
 * (round half to even, subnormals, overflow) bit for bit as PyTorch. */
TEST(st_half_conversions_exact)
{
    qkv_st_file *f = fixture_open("io_st_halves");
    REQUIRE(f, "no fixture");
    const char *pairs[2][2] = {{"f16", "f16_f32"}, {"bf16", "bf16_f32"}};
    for (int p = 0; p < 2; p++) {
        int64_t n = 0, m = 0;
        float *got = read_all(f, pairs[p][0], &n), *want = read_all(f, pairs[p][1], &m);
        REQUIRE(got && want && n == 65536 && m == n, "%s", pairs[p][0]);
        int64_t bad = 0;
        for (int64_t k = 0; k < n; k++)
            if (isnan(want[k]) ? !isnan(got[k]) : bits(got[k]) != bits(want[k]))
                if (bad++ < 5)
                    test_fail(__FILE__, __LINE__, "%s pattern 0x%04llx: %a, want %a",
                              pairs[p][0], (long long)k, got[k], want[k]);
        CHECK(bad == 0, "%s: %lld patterns differ", pairs[p][0], (long long)bad);
        free(got), free(want);
    }
    int64_t n = 0, m = 0;
    float *x = read_all(f, "x", &n);
    REQUIRE(x, "x");
    char path[256];
    snprintf(path, sizeof path, "%s/halves.safetensors", tmpdir());
    qkv_st_writer *w = qkv_st_writer_new();
    REQUIRE(qkv_st_add_f32(w, "x_f16", QKV_DT_F16, 1, &n, x) == QKV_OK &&
            qkv_st_add_f32(w, "x_bf16", QKV_DT_BF16, 1, &n, x) == QKV_OK &&
            qkv_st_write(w, path) == QKV_OK, "write: %s", qkv_error());
    qkv_st_writer_free(w);
    qkv_st_file *g = qkv_st_open(path);
    REQUIRE(g, "reopen: %s", qkv_error());
    const char *names[2] = {"x_f16", "x_bf16"};
    for (int p = 0; p < 2; p++) {
        float *got = read_all(g, names[p], &m), *want = read_all(f, names[p], &m);
        REQUIRE(got && want && m == n, "%s", names[p]);
        int64_t bad = 0;
        for (int64_t k = 0; k < n; k++)
            if (bits(got[k]) != bits(want[k]) && bad++ < 5)
                test_fail(__FILE__, __LINE__, "%s of %a: %a, want %a", names[p], x[k], got[k],
                          want[k]);
        CHECK(bad == 0, "%s: %lld of %lld values round differently", names[p], (long long)bad,
              (long long)n);
        free(got), free(want);
    }
    qkv_st_close(g);
    qkv_st_close(f);
    free(x);
    unlink(path);
}

/* qkv writes every dtype and a strided view; qkv reads them back, then
 * PyTorch reads them (cases_io.py check-st compares them with torch's own
 * narrowing). */
TEST(st_write_read_by_pytorch)
{
    char path[256];
    snprintf(path, sizeof path, "%s/written.safetensors", tmpdir());
    float ref[12];
    qkv_rng r;
    qkv_rng_seed(&r, 5);
    for (int k = 0; k < 12; k++)
        ref[k] = (float)(qkv_rng_normal(&r) * 300.0);
    ref[0] = 1.0f + 0x1p-11f; /* an F16 tie: rounds to even */
    ref[1] = 1.0f + 0x3p-8f;  /* a BF16 tie: rounds up to even */
    int64_t shape[2] = {3, 4}, nine = 9;
    int64_t i64[9], i32[9], i8[9], u8[9], bl[9];
    for (int k = 0; k < 9; k++) {
        i64[k] = spread(k, 9, -(INT64_C(1) << 62), INT64_C(1) << 62);
        i32[k] = spread(k, 9, INT32_MIN, INT32_MAX);
        i8[k] = spread(k, 9, -128, 127);
        u8[k] = spread(k, 9, 0, 255);
        bl[k] = k % 3 == 0;
    }
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *t = qkv_from_data(ctx, 2, shape, ref);
    qkv_tensor *tt = qkv_transpose(ctx, t, 0, 1);
    REQUIRE(tt && !qkv_is_contiguous(tt), "a strided view");
    float scalar = -2.25f;
    qkv_st_writer *w = qkv_st_writer_new();
    REQUIRE(qkv_st_add_f32(w, "ref", QKV_DT_F32, 2, shape, ref) == QKV_OK &&
            qkv_st_add_f32(w, "f16", QKV_DT_F16, 2, shape, ref) == QKV_OK &&
            qkv_st_add_f32(w, "bf16", QKV_DT_BF16, 2, shape, ref) == QKV_OK &&
            qkv_st_add_tensor(w, "ref_t", tt) == QKV_OK &&
            qkv_st_add_i64(w, "i64", 1, &nine, i64) == QKV_OK &&
            qkv_st_add_int(w, "i32", QKV_DT_I32, 1, &nine, i32) == QKV_OK &&
            qkv_st_add_int(w, "i8", QKV_DT_I8, 1, &nine, i8) == QKV_OK &&
            qkv_st_add_int(w, "u8", QKV_DT_U8, 1, &nine, u8) == QKV_OK &&
            qkv_st_add_int(w, "bool", QKV_DT_BOOL, 1, &nine, bl) == QKV_OK &&
            qkv_st_add_f32(w, "scalar", QKV_DT_F32, 0, NULL, &scalar) == QKV_OK &&
            qkv_st_set_meta(w, "epoch", "6") == QKV_OK &&
            qkv_st_set_meta(w, "epoch", "7") == QKV_OK && /* replaces */
            qkv_st_set_meta(w, "model", "qkv \"test\"\n") == QKV_OK,
            "adding: %s", qkv_error());
    /* misuse adds nothing */
    int64_t big = 256;
    CHECK(qkv_st_add_int(w, "u8_bad", QKV_DT_U8, 1, (int64_t[]){1}, &big) == QKV_ERR_ARG &&
          strstr(qkv_error(), "u8_bad") && strstr(qkv_error(), "256"), "U8 range: %s",
          qkv_error());
    CHECK(qkv_st_add_f32(w, "ref", QKV_DT_F32, 2, shape, ref) == QKV_ERR_ARG, "duplicate name");
    CHECK(qkv_st_add_f32(w, "__metadata__", QKV_DT_F32, 2, shape, ref) == QKV_ERR_ARG,
          "reserved name");
    CHECK(qkv_st_add_f32(w, "neg", QKV_DT_F32, 1, (int64_t[]){-3}, ref) == QKV_ERR_ARG,
          "negative size");
    CHECK(qkv_st_add_f32(w, "i", QKV_DT_I32, 2, shape, ref) == QKV_ERR_ARG, "float as I32");
    CHECK(qkv_st_add_f32(w, "null", QKV_DT_F32, 2, shape, NULL) == QKV_ERR_ARG, "NULL data");
    REQUIRE(qkv_st_write(w, path) == QKV_OK, "write: %s", qkv_error());
    qkv_st_writer_free(w);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0, "the temporary file was renamed");

    qkv_st_file *f = qkv_st_open(path);
    REQUIRE(f, "reopen: %s", qkv_error());
    CHECK(qkv_st_count(f) == 10, "10 tensors, got %lld", (long long)qkv_st_count(f));
    int64_t n;
    float *back = read_all(f, "ref", &n), *back_t = read_all(f, "ref_t", &n);
    REQUIRE(back && back_t, "read back");
    for (int k = 0; k < 12; k++) {
        CHECK(bits(back[k]) == bits(ref[k]), "ref[%d]", k);
        CHECK(back_t[k] == ref[(k % 3) * 4 + k / 3], "ref_t[%d]", k);
    }
    float *h = read_all(f, "f16", &n), *b = read_all(f, "bf16", &n);
    REQUIRE(h && b, "halves");
    CHECK(h[0] == 1.0f && b[1] == 1.0f + 0x1p-6f, "ties to even: %a %a", h[0], b[1]);
    int64_t got[9];
    CHECK(qkv_st_read_i64(f, qkv_st_find(f, "i32"), got) == QKV_OK && got[0] == INT32_MIN &&
          got[8] == INT32_MAX, "i32 back");
    CHECK(qkv_st_read_i64(f, qkv_st_find(f, "bool"), got) == QKV_OK && got[3] == 1 &&
          got[4] == 0, "bool back");
    CHECK(qkv_st_meta(f, "epoch") && !strcmp(qkv_st_meta(f, "epoch"), "7"), "meta");
    free(back), free(back_t), free(h), free(b);
    qkv_st_close(f);
    qkv_ctx_free(ctx);

    char cmd[600];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/parity/cases_io.py check-st %s", path);
    int rc = system(cmd);
    CHECK(rc == 0, "PyTorch read of the qkv-written file failed (%d): %s", rc, cmd);
    unlink(path);
}

/* ---- malformed files ---- */

static void put_file(const char *path, uint64_t hlen, const char *json, size_t ndata)
{
    FILE *fp = fopen(path, "wb");
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(hlen >> (8 * i));
    fwrite(len, 1, 8, fp);
    fwrite(json, 1, strlen(json), fp);
    for (size_t i = 0; i < ndata; i++)
        fputc((int)(i * 7), fp);
    fclose(fp);
}

TEST(st_rejects_malformed_files)
{
    static const struct {
        const char *json;
        size_t ndata;
        const char *want; /* in the message, with the path */
        int64_t hlen;     /* -1: strlen(json) */
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, NULL, -1},
        {"{}", 0, NULL, -1},
        {"", 0, "header is not valid JSON", -1},
        {"{\"a\":1}", 0, "file of", 1000},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8,
         "after its JSON", -1},
        {"{\"a\":{\"dtype\":\"F32\",", 0, "not valid JSON", -1},
        {"[1, 2]", 0, "not a JSON object", -1},
        {"{\"a\":3}", 0, "'a': entry is not a JSON object", -1},
        {"{\"a\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
         "'a': unsupported dtype 'F8'", -1},
        {"{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'a': missing or "
         "non-string dtype", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "'a': missing or non-array "
         "shape", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "negative", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8, "fractional",
         -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "more dimensions", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets "
         "must be", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "end before",
         -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, "past the end",
         -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "'a': shape x F32 size is 12 bytes but data_offsets span 8", -1},
        /* 2^31 * 2^31 * 4 bytes wraps to 0 in 64 bits: must not pass as empty */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,0]}}",
         0, "'a': shape x F32 size is over 2^64 bytes", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":"
         "[0,0]}}", 0, "overflows", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
         "'b': data overlaps", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20, "'b': gap",
         -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
         "4 bytes of data follow", -1},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         "'a': appears twice", -1},
        {"{\"__metadata__\":{\"k\":3}}", 0, "value of 'k' is not a string", -1},
        {"{\"__metadata__\":[]}", 0, "__metadata__ is not an object", -1},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice", -1},
    };
    char path[256];
    snprintf(path, sizeof path, "%s/bad.safetensors", tmpdir());
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t jl = strlen(cases[k].json);
        put_file(path, cases[k].hlen < 0 ? jl : (uint64_t)cases[k].hlen, cases[k].json,
                 cases[k].ndata);
        qkv_clear_error();
        qkv_st_file *f = qkv_st_open(path);
        if (!cases[k].want) {
            CHECK(f, "case %zu should open: %s", k, qkv_error());
        } else {
            CHECK(!f && qkv_error_status() == QKV_ERR_FORMAT && strstr(qkv_error(), path) &&
                  strstr(qkv_error(), cases[k].want),
                  "case %zu: want \"%s\", got \"%s\"", k, cases[k].want, qkv_error());
        }
        qkv_st_close(f);
    }
    /* shorter than the length field itself */
    FILE *fp = fopen(path, "wb");
    fwrite("abc", 1, 3, fp);
    fclose(fp);
    CHECK(!qkv_st_open(path) && strstr(qkv_error(), "shorter than"), "%s", qkv_error());
    unlink(path);
    CHECK(!qkv_st_open(path) && qkv_error_status() == QKV_ERR_IO && strstr(qkv_error(), path),
          "missing file: %s", qkv_error());
    CHECK(!qkv_st_open(tmpdir()) && qkv_error_status() == QKV_ERR_IO, "a directory");
    CHECK(!qkv_st_open(NULL) && qkv_error_status() == QKV_ERR_ARG, "NULL path");
}

TEST(st_accessors_out_of_range)
{
    qkv_st_file *f = fixture_open("io_st_dtypes");
    REQUIRE(f, "no fixture");
    int64_t shape[QKV_MAX_DIMS];
    float x;
    CHECK(qkv_st_shape(f, 99, shape) == -1 && qkv_error_status() == QKV_ERR_ARG, "shape");
    CHECK(qkv_st_numel(f, -1) == -1, "numel");
    CHECK(qkv_st_name(f, 11) == NULL && qkv_st_find(f, NULL) == -1, "name, find");
    CHECK(qkv_st_read_f32(f, 11, &x) == QKV_ERR_ARG, "read_f32");
    CHECK(qkv_st_read_f32(f, 0, NULL) == QKV_ERR_ARG, "NULL output");
    CHECK(qkv_st_count(NULL) == 0 && qkv_st_meta(NULL, "k") == NULL, "NULL file");
    CHECK(qkv_st_load(NULL, f, "f32") == NULL && qkv_error_status() == QKV_ERR_ARG, "NULL ctx");
    qkv_st_close(f);
    qkv_st_close(NULL);
}
