/* test_translate_cli.c - `qkv translate --attention` on a small model
 * trained by the CLI: three pictures per sentence, named per sentence, with
 * greedy decoding and with a beam, each picture the size of its weights
 * (layers x heads panels of the right number of rows and columns). */
#include "test.h"

#include <sys/wait.h>
#include <unistd.h>

enum { MAX_LEN = 6, MAX_SENT = 8 };

/* What `qkv translate` printed: per sentence, the output's token count and
 * the pictures it wrote after that line. */
typedef struct {
    int n;
    int64_t tokens[MAX_SENT];
    int n_files[MAX_SENT];
    char files[MAX_SENT][3][512];
} printed;

static int parse(char *text, printed *p)
{
    memset(p, 0, sizeof *p);
    for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n")) {
        char *arrow = strstr(l, " => ");
        if (arrow) {
            if (p->n == MAX_SENT)
                return -1;
            int64_t k = 0;
            for (char *t = arrow + 4; *t; t++)
                k += *t != ' ' && (t == arrow + 4 || t[-1] == ' ');
            p->tokens[p->n++] = k;
        } else if (!strncmp(l, "wrote ", 6) && p->n > 0 && p->n_files[p->n - 1] < 3) {
            int i = p->n - 1;
            snprintf(p->files[i][p->n_files[i]++], sizeof p->files[i][0], "%s", l + 6);
        } else
            return -1;
    }
    return 0;
}

/* The picture at path must have the size of a qkv_plot_heatmaps grid of
 * layers x heads panels of nq x nk with titles: the height exactly; the
 * width within half a key column (the colour bar's tick labels, which
 * depend on the values, may be a character wider or narrower). The
 * reference grid is drawn here from made-up weights of that shape. */
static void check_size(const char *path, const char *ref, int64_t layers, int64_t heads,
                       int64_t nq, int64_t nk)
{
    int64_t n = layers * heads * nq * nk;
    float *w = malloc((size_t)n * sizeof(float));
    const char **titles = malloc((size_t)(layers * heads) * sizeof *titles);
    REQUIRE(w && titles, "out of memory");
    for (int64_t i = 0; i < n; i++)
        w[i] = (float)(i % 11) / 10.0f;
    for (int64_t i = 0; i < layers * heads; i++)
        titles[i] = "L1 H1";
    qkv_heatmap_opts o = {.titles = titles};
    qkv_status st = qkv_plot_heatmaps(ref, w, layers, heads, nq, nk, &o);
    free(w);
    free(titles);
    REQUIRE(st == QKV_OK, "%s", qkv_error());
    qkv_image got = {0}, want = {0};
    REQUIRE(qkv_image_read(&got, path) == QKV_OK, "%s: %s", path, qkv_error());
    REQUIRE(qkv_image_read(&want, ref) == QKV_OK, "%s", qkv_error());
    /* at most 6 rows and columns: 32 pixels a cell */
    int64_t half_column = heads * 32 / 2;
    CHECK(got.h == want.h && llabs(got.w - want.w) < half_column,
          "%s: %lld x %lld pixels, a %lld x %lld grid of %lld x %lld panels is %lld x %lld",
          path, (long long)got.w, (long long)got.h, (long long)layers, (long long)heads,
          (long long)nq, (long long)nk, (long long)want.w, (long long)want.h);
    qkv_image_free(&got);
    qkv_image_free(&want);
}

/* Checks the pictures of every sentence: names (base, base-2, ..), sizes. */
static void check_pictures(const char *dir, const char *stem, printed *p, char **sentences,
                           int n, int64_t layers, int64_t heads)
{
    REQUIRE(p->n == n, "%d translations printed, %d sentences", p->n, n);
    static const char *kind[3] = {"encoder", "decoder-self", "decoder-cross"};
    char ref[600], want[600];
    snprintf(ref, sizeof ref, "%s/reference.png", dir);
    for (int i = 0; i < n; i++) {
        REQUIRE(p->n_files[i] == 3, "sentence %d: %d pictures", i + 1, p->n_files[i]);
        /* words + <eos>: the sentences are given tokenised */
        int64_t src = 1;
        for (const char *c = sentences[i]; *c; c++)
            src += *c != ' ' && (c == sentences[i] || c[-1] == ' ');
        /* one decoder row per step: the output's tokens and the eos step */
        int64_t rows = p->tokens[i] + 1 < MAX_LEN ? p->tokens[i] + 1 : MAX_LEN;
        int64_t shape[3][2] = {{src, src}, {rows, rows}, {rows, src}};
        for (int k = 0; k < 3; k++) {
            if (i == 0)
                snprintf(want, sizeof want, "%s/%s-%s.png", dir, stem, kind[k]);
            else
                snprintf(want, sizeof want, "%s/%s-%d-%s.png", dir, stem, i + 1, kind[k]);
            CHECK(!strcmp(p->files[i][k], want), "sentence %d: wrote %s, expected %s", i + 1,
                  p->files[i][k], want);
            check_size(want, ref, layers, heads, shape[k][0], shape[k][1]);
        }
    }
}

TEST(translate_cli_attention_every_sentence_and_beam)
{
    char dir[] = "/tmp/qkv_tr_XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    static char out[16384];
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "QKV_THREADS=1 QKV_PROGRESS=0 %s train transformer --examples 200 --epochs 12 "
             "--out-dir %s 2>&1",
             test_qkv_bin(), dir);
    int rc = test_run(cmd, out, sizeof out);
    REQUIRE(rc == 0, "train: exit %d\n%s", rc, out);
    long long layers = 0, heads = 0;
    const char *model = strstr(out, "d_model");
    REQUIRE(model && sscanf(model, "d_model %*d, %lld blocks, %lld heads", &layers, &heads) == 2,
            "no model line in:\n%s", out);

    /* greedy: four sentences of 3 to 5 source tokens */
    char *sentences[] = {"go .", "i lost .", "he's calm now .", "i won !"};
    snprintf(cmd, sizeof cmd,
             "QKV_THREADS=1 %s translate --model %s/model.safetensors --max-len %d "
             "\"%s\" \"%s\" \"%s\" \"%s\" --attention %s/g.png",
             test_qkv_bin(), dir, MAX_LEN, sentences[0], sentences[1], sentences[2], sentences[3],
             dir);
    rc = test_run(cmd, out, sizeof out);
    REQUIRE(rc == 0, "translate: exit %d\n%s", rc, out);
    fprintf(stderr, "    greedy:\n%s", out);
    printed greedy;
    REQUIRE(parse(out, &greedy) == 0, "unexpected output:\n%s", out);
    check_pictures(dir, "g", &greedy, sentences, 4, layers, heads);

    /* beam: the pictures of the hypothesis it chose (stderr kept: no note
     * that the pictures are greedy-only may come) */
    char *beam_sentences[] = {"i won !", "go ."};
    snprintf(cmd, sizeof cmd,
             "QKV_THREADS=1 %s translate --model %s/model.safetensors --max-len %d --beam 2 "
             "\"%s\" \"%s\" --attention %s/b.png 2>&1",
             test_qkv_bin(), dir, MAX_LEN, beam_sentences[0], beam_sentences[1], dir);
    rc = test_run(cmd, out, sizeof out);
    REQUIRE(rc == 0, "translate --beam 2: exit %d\n%s", rc, out);
    fprintf(stderr, "    beam 2:\n%s", out);
    printed beam;
    REQUIRE(parse(out, &beam) == 0, "unexpected output:\n%s", out);
    check_pictures(dir, "b", &beam, beam_sentences, 2, layers, heads);
    /* whether the beam's choice differs from greedy's depends on the
     * model's last bits (it has, with other kernels): for the record */
    fprintf(stderr, "    \"i won !\": greedy %lld tokens, beam %lld\n",
            (long long)greedy.tokens[3], (long long)beam.tokens[0]);

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}
