/* test_io_data.c - the dataset loaders: Fashion-MNIST (IDX) and the d2l
 * English-French arrays. */
#include "test.h"

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static const char *tmpdir(void)
{
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/qkv_test_data_XXXXXX");
        if (!mkdtemp(dir))
            snprintf(dir, sizeof dir, "/tmp");
    }
    return dir;
}

/* ---- Fashion-MNIST ---- */

/* Reference numbers from Python's gzip + numpy on the same Debian files:
 * first labels, class counts, pixel sum and CRC-32 of all image bytes. */
TEST(mnist_loads_debian_fashion_mnist)
{
    static const struct {
        int train;
        int64_t n;
        uint8_t first[10];
        uint64_t sum;
        uint32_t crc;
    } want[] = {
        {0, 10000, {9, 2, 1, 1, 6, 1, 4, 6, 5, 7}, 573469082u, 309494841u},
        {1, 60000, {9, 0, 0, 3, 0, 2, 7, 2, 5, 5}, 3431114169u, 2925911245u},
    };
    if (access(QKV_MNIST_DIR "/t10k-labels-idx1-ubyte.gz", R_OK) != 0) {
        test_fail(__FILE__, __LINE__, "%s missing: apt install dataset-fashion-mnist",
                  QKV_MNIST_DIR);
        return;
    }
    for (int k = 0; k < 2; k++) {
        qkv_mnist m;
        REQUIRE(qkv_mnist_load(&m, NULL, want[k].train) == QKV_OK, "%s", qkv_error());
        CHECK(m.n == want[k].n && m.rows == 28 && m.cols == 28, "sizes %lld %lld %lld",
              (long long)m.n, (long long)m.rows, (long long)m.cols);
        int64_t count[10] = {0};
        uint64_t sum = 0;
        for (int64_t i = 0; i < m.n; i++)
            count[m.labels[i]]++;
        for (int64_t i = 0; i < m.n * 784; i++)
            sum += m.images[i];
        for (int c = 0; c < 10; c++) {
            CHECK(count[c] == m.n / 10, "class %d: %lld", c, (long long)count[c]);
            CHECK(m.labels[c] == want[k].first[c], "label %d", c);
        }
        CHECK(sum == want[k].sum, "pixel sum %llu", (unsigned long long)sum);
        uLong crc = crc32(0, m.images, (uInt)(m.n * 784));
        CHECK(crc == want[k].crc, "crc %lu", (unsigned long)crc);
        qkv_mnist_free(&m);
        CHECK(m.images == NULL && m.n == 0, "free clears");
    }
}

static void write_bytes(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

static void write_gz(const char *path, const void *b, size_t n)
{
    gzFile g = gzopen(path, "wb");
    gzwrite(g, b, (unsigned)n);
    gzclose(g);
}

/* A small IDX pair in a folder: 2 images of 3 x 2, labels 4 and 7. */
static void small_set(const char *dir, int gz, int nlabels)
{
    uint8_t im[16 + 12] = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 2};
    for (int i = 0; i < 12; i++)
        im[16 + i] = (uint8_t)(i * 20);
    uint8_t lb[8 + 3] = {0, 0, 8, 1, 0, 0, 0, (uint8_t)nlabels, 4, 7, 9};
    char p[512];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte%s", dir, gz ? ".gz" : "");
    gz ? write_gz(p, im, sizeof im) : write_bytes(p, im, sizeof im);
    snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte%s", dir, gz ? ".gz" : "");
    gz ? write_gz(p, lb, 8 + (size_t)nlabels) : write_bytes(p, lb, 8 + (size_t)nlabels);
}

static void clear_set(const char *dir)
{
    char p[512];
    const char *names[] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
        snprintf(p, sizeof p, "%s/%s.gz", dir, names[i]);
        unlink(p);
    }
}

TEST(mnist_small_files_raw_and_gzip)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/mnist", tmpdir());
    mkdir(dir, 0755);
    for (int gz = 0; gz < 2; gz++) {
        clear_set(dir);
        small_set(dir, gz, 2);
        qkv_mnist m;
        REQUIRE(qkv_mnist_load(&m, dir, 1) == QKV_OK, "gz=%d: %s", gz, qkv_error());
        CHECK(m.n == 2 && m.rows == 3 && m.cols == 2 && m.labels[0] == 4 && m.labels[1] == 7 &&
              m.images[11] == 220, "gz=%d: contents", gz);
        qkv_mnist_free(&m);
    }
    clear_set(dir);
    rmdir(dir);
}

TEST(mnist_errors_name_the_file)
{
    char dir[256], p[512];
    snprintf(dir, sizeof dir, "%s/bad", tmpdir());
    mkdir(dir, 0755);
    qkv_mnist m;

    CHECK(qkv_mnist_load(&m, dir, 0) == QKV_ERR_IO && strstr(qkv_error(), "t10k-images") &&
          strstr(qkv_error(), "not found"), "missing: %s", qkv_error());

    /* labels announce 3 but hold 2 (raw), then the same gzipped */
    for (int gz = 0; gz < 2; gz++) {
        clear_set(dir);
        small_set(dir, gz, 2);
        uint8_t lb[10] = {0, 0, 8, 1, 0, 0, 0, 3, 4, 7};
        snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte%s", dir, gz ? ".gz" : "");
        gz ? write_gz(p, lb, sizeof lb) : write_bytes(p, lb, sizeof lb);
        CHECK(qkv_mnist_load(&m, dir, 1) == QKV_ERR_FORMAT && strstr(qkv_error(), p) &&
              strstr(qkv_error(), "3"), "short labels gz=%d: %s", gz, qkv_error());
    }
    /* a gzip file cut in the middle of its stream */
    clear_set(dir);
    small_set(dir, 0, 2);
    {
        uint8_t big[16 + 4000] = {0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 20, 0, 0, 0, 40};
        qkv_rng r;
        qkv_rng_seed(&r, 1);
        for (int i = 16; i < (int)sizeof big; i++)
            big[i] = (uint8_t)qkv_rng_below(&r, 256); /* incompressible */
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", dir);
        write_gz(p, big, sizeof big);
        FILE *f = fopen(p, "rb");
        uint8_t buf[8192];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        write_bytes(p, buf, n / 2);
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", dir);
        unlink(p);
        CHECK(qkv_mnist_load(&m, dir, 1) == QKV_ERR_FORMAT && strstr(qkv_error(), ".gz") &&
              strstr(qkv_error(), "truncated"), "cut gzip: %s", qkv_error());
    }
    /* labels where the images belong: wrong magic */
    clear_set(dir);
    small_set(dir, 0, 2);
    {
        uint8_t lb[10] = {0, 0, 8, 1, 0, 0, 0, 2, 4, 7};
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", dir);
        write_bytes(p, lb, sizeof lb);
        CHECK(qkv_mnist_load(&m, dir, 1) == QKV_ERR_FORMAT && strstr(qkv_error(), p) &&
              strstr(qkv_error(), "magic") && strstr(qkv_error(), "0x00000801"),
              "wrong magic: %s", qkv_error());
    }
    /* too many bytes; a label of 10; labels and images disagree */
    clear_set(dir);
    small_set(dir, 0, 2);
    {
        uint8_t lb[11] = {0, 0, 8, 1, 0, 0, 0, 2, 4, 7, 9};
        snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte", dir);
        write_bytes(p, lb, sizeof lb);
        CHECK(qkv_mnist_load(&m, dir, 1) == QKV_ERR_FORMAT && strstr(qkv_error(), "3 bytes of "
              "data, the header announces 2"), "long: %s", qkv_error());
        lb[9] = 10;
        write_bytes(p, lb, 10);
        CHECK(qkv_mnist_load(&m, dir, 1) == QKV_ERR_FORMAT && strstr(qkv_error(), "label 1 is "
              "10"), "label 10: %s", qkv_error());
        uint8_t lb1[9] = {0, 0, 8, 1, 0, 0, 0, 1, 4};
        write_bytes(p, lb1, sizeof lb1);
        CHECK(qkv_mnist_load(&m, dir, 1) == QKV_ERR_FORMAT && strstr(qkv_error(), "2 images "
              "but 1 labels"), "count: %s", qkv_error());
    }
    CHECK(m.images == NULL && m.labels == NULL, "nothing left allocated after an error");
    CHECK(qkv_mnist_load(NULL, dir, 1) == QKV_ERR_ARG, "NULL out");
    clear_set(dir);
    rmdir(dir);
}

/* ---- English-French (d2l r0.17 load_data_nmt) ---- */

/* Compares qkv's arrays and vocabularies with the fixture that cases_io.py
 * computed the book's way (rows every `every`-th). Exact: these are ids. */
static void check_nmt(const char *fixture, int64_t num_examples, int64_t num_steps)
{
    qkv_st_file *f = fixture_open(fixture);
    REQUIRE(f, "no fixture");
    qkv_nmt_data d;
    REQUIRE(qkv_nmt_load(&d, NULL, num_examples, num_steps) == QKV_OK, "%s", qkv_error());
    int64_t every = atoll(qkv_st_meta(f, "every")), n = atoll(qkv_st_meta(f, "n"));
    CHECK(d.n == n, "%lld pairs, want %lld", (long long)d.n, (long long)n);
    CHECK(qkv_vocab_size(d.src_vocab) == atoll(qkv_st_meta(f, "src_vocab_size")) &&
          qkv_vocab_size(d.tgt_vocab) == atoll(qkv_st_meta(f, "tgt_vocab_size")),
          "vocab sizes %lld %lld, want %s %s", (long long)qkv_vocab_size(d.src_vocab),
          (long long)qkv_vocab_size(d.tgt_vocab), qkv_st_meta(f, "src_vocab_size"),
          qkv_st_meta(f, "tgt_vocab_size"));
    static const char *arrays[4] = {"src", "tgt", "src_valid", "tgt_valid"};
    const int64_t *ours[4] = {d.src, d.tgt, d.src_valid, d.tgt_valid};
    for (int a = 0; a < 4; a++) {
        int64_t i = qkv_st_find(f, arrays[a]), m = qkv_st_numel(f, i);
        int64_t width = a < 2 ? num_steps : 1, bad = 0;
        int64_t *want = malloc((size_t)m * sizeof *want);
        REQUIRE(qkv_st_read_i64(f, i, want) == QKV_OK, "%s", qkv_error());
        for (int64_t k = 0; k < m; k++) {
            int64_t row = k / width * every, col = k % width;
            if (row >= d.n || ours[a][row * width + col] != want[k])
                if (bad++ < 3)
                    test_fail(__FILE__, __LINE__, "%s row %lld col %lld: %lld, want %lld",
                              arrays[a], (long long)row, (long long)col,
                              (long long)(row < d.n ? ours[a][row * width + col] : -1),
                              (long long)want[k]);
        }
        CHECK(bad == 0, "%s: %lld ids differ", arrays[a], (long long)bad);
        free(want);
    }
    /* every token of both vocabularies, in order */
    const char *names[2] = {"src_vocab", "tgt_vocab"};
    const qkv_vocab *v[2] = {d.src_vocab, d.tgt_vocab};
    for (int k = 0; k < 2; k++) {
        int64_t i = qkv_st_find(f, names[k]), m = qkv_st_numel(f, i);
        int64_t *bytes = malloc((size_t)(m + 1) * sizeof *bytes);
        char *s = malloc((size_t)m + 1);
        REQUIRE(qkv_st_read_i64(f, i, bytes) == QKV_OK, "%s", qkv_error());
        for (int64_t b = 0; b < m; b++)
            s[b] = (char)bytes[b];
        s[m] = 0;
        int64_t id = 0, bad = 0;
        for (const char *t = s; t <= s + m; t += strlen(t) + 1, id++) {
            const char *got = qkv_vocab_token(v[k], id);
            if ((!got || strcmp(got, t)) && bad++ < 3)
                test_fail(__FILE__, __LINE__, "%s[%lld] = '%s', want '%s'", names[k],
                          (long long)id, got ? got : "(none)", t);
            if (got && qkv_vocab_id(v[k], got) != id && bad++ < 3)
                test_fail(__FILE__, __LINE__, "%s: id of '%s'", names[k], got);
        }
        CHECK(bad == 0 && id == qkv_vocab_size(v[k]), "%s: %lld tokens differ", names[k],
              (long long)bad);
        free(bytes);
        free(s);
    }
    qkv_nmt_free(&d);
    qkv_st_close(f);
}

TEST(nmt_600_matches_d2l)
{
    check_nmt("io_nmt_600", 600, 8);
}

/* The whole file: 167130 pairs, vocabularies of 10012 and 17851 tokens as in
 * the book (accents, U+202F, Cyrillic lowercased as Python does). */
TEST(nmt_whole_file_matches_d2l)
{
    check_nmt("io_nmt_all", 0, 10);
}

TEST(nmt_preprocessing_and_encode)
{
    const char *text = "Go.\tVa !\n"
                       "\xc3\x89T\xc3\x89, \xc3\x80 Paris!\t\xc3\x87" "a va\xe2\x80\xaf?\n"
                       "no tab here\n"
                       "a\tb\tc\n"
                       "Go.\tVa !\n"
                       "Go  now.\tVa !";
    char path[256];
    snprintf(path, sizeof path, "%s/mini.txt", tmpdir());
    FILE *fp = fopen(path, "w");
    fputs(text, fp);
    fclose(fp);
    qkv_nmt_data d;
    REQUIRE(qkv_nmt_load(&d, path, 0, 6) == QKV_OK, "%s", qkv_error());
    CHECK(d.n == 4, "pairs with exactly one tab: %lld", (long long)d.n);
    /* counts: go 3, . 3, then "été" "," "à" "paris" "!" "" "now" once:
     * only go and . make min_freq 2 */
    CHECK(qkv_vocab_size(d.src_vocab) == 6 && !strcmp(qkv_vocab_token(d.src_vocab, 4), "go") &&
          !strcmp(qkv_vocab_token(d.src_vocab, 5), "."), "source vocab");
    CHECK(qkv_vocab_size(d.tgt_vocab) == 6 && !strcmp(qkv_vocab_token(d.tgt_vocab, 4), "va") &&
          !strcmp(qkv_vocab_token(d.tgt_vocab, 5), "!"), "target vocab");
    /* row 3, "go  now ." : go, '' (unk), now (unk), ., <eos>, <pad> */
    int64_t want[6] = {4, 0, 0, 5, 3, 1};
    for (int k = 0; k < 6; k++)
        CHECK(d.src[3 * 6 + k] == want[k], "row 3 id %d = %lld", k, (long long)d.src[18 + k]);
    CHECK(d.src_valid[3] == 5 && d.src_valid[0] == 3, "valid lengths");
    int64_t ids[4];
    CHECK(qkv_nmt_encode(d.src_vocab, "GO .", 4, ids) == 3 && ids[0] == 4 && ids[1] == 5 &&
          ids[2] == 3 && ids[3] == 1, "encode");
    CHECK(qkv_nmt_encode(d.src_vocab, "go go go go go", 4, ids) == 6 && ids[3] == 4,
          "encode truncates; the valid length is d2l's, before truncation");
    qkv_nmt_free(&d);

    /* a line limit: num_examples 1 reads lines 0 and 1 (d2l's bound) */
    REQUIRE(qkv_nmt_load(&d, path, 1, 6) == QKV_OK, "%s", qkv_error());
    CHECK(d.n == 2, "num_examples 1 gives %lld pairs", (long long)d.n);
    qkv_nmt_free(&d);

    fp = fopen(path, "w");
    fputs("no pairs\nat all\n", fp);
    fclose(fp);
    CHECK(qkv_nmt_load(&d, path, 0, 6) == QKV_ERR_FORMAT && strstr(qkv_error(), path),
          "no pairs: %s", qkv_error());
    unlink(path);
    CHECK(qkv_nmt_load(&d, path, 0, 6) == QKV_ERR_IO && strstr(qkv_error(), path),
          "missing: %s", qkv_error());
    CHECK(qkv_nmt_load(&d, NULL, 10, 0) == QKV_ERR_ARG, "num_steps 0");
}
