/* test_forward_cli.c - `qkv forward`, run as a user runs it (the binary
 * named by $QKV_BIN, else build/qkv): its outputs against PyTorch's
 * (tests/parity/forward_cli.py), and its errors: the exit status (1 bad
 * data, 2 bad usage), a message naming what was wrong, and no output file. */
#include "test.h"

#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs the shell command with stdout and stderr into out (cut at n - 1);
 * returns the exit status, or -1 if it could not run. */
static int run(const char *cmd, char *out, size_t n)
{
    char full[4096];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    return test_run(full, out, n);
}

TEST(forward_cli_matches_pytorch)
{
    /* 19 cases, each output within its (atol, rtol) of forward_cli.py: a
     * handful of float32 GEMMs and softmaxes, or a few layers of them (the
     * Transformers, with float and bool masks mixed as PyTorch's tutorial
     * mixes them; ViT), rounding near 1e-7 */
    static char out[16384];
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/parity/forward_cli.py %s", test_qkv_bin());
    int rc = run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, " 0 failed"), "%s: exit %d\n%s", cmd, rc, out);
    CHECK(!strstr(out, "FAIL"), "%s", out);
}

/* ---- errors ---- */

typedef struct {
    char dir[64];
    char weights[128], input[128], output[128], tmp[160];
} paths;

static void add(qkv_st_writer *w, const char *name, int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    float *data = calloc((size_t)n, sizeof *data);
    for (int64_t i = 0; i < n; i++)
        data[i] = (float)((i * 7) % 11) * 0.1f - 0.5f;
    CHECK(qkv_st_add_f32(w, name, QKV_DT_F32, ndim, shape, data) == QKV_OK, "%s", qkv_error());
    free(data);
}

static void write_file(qkv_st_writer *w, const char *path)
{
    CHECK(qkv_st_write(w, path) == QKV_OK, "%s", qkv_error());
    qkv_st_writer_free(w);
}

/* MHA weights, E = 8 (in_proj), and inputs query (5, 2, 8), key and value
 * (6, 2, 8) unless the caller overrides them. */
static void make_files(paths *p)
{
    snprintf(p->dir, sizeof p->dir, "/tmp/qkv-forward-XXXXXX");
    REQUIRE(mkdtemp(p->dir), "mkdtemp");
    snprintf(p->weights, sizeof p->weights, "%s/w.safetensors", p->dir);
    snprintf(p->input, sizeof p->input, "%s/in.safetensors", p->dir);
    snprintf(p->output, sizeof p->output, "%s/out.safetensors", p->dir);
    snprintf(p->tmp, sizeof p->tmp, "%s.tmp", p->output);
    qkv_st_writer *w = qkv_st_writer_new();
    add(w, "in_proj_weight", 2, (int64_t[]){24, 8});
    add(w, "in_proj_bias", 1, (int64_t[]){24});
    add(w, "out_proj.weight", 2, (int64_t[]){8, 8});
    add(w, "out_proj.bias", 1, (int64_t[]){8});
    write_file(w, p->weights);
}

static void write_input(const paths *p, int with_key, int64_t kdim)
{
    qkv_st_writer *w = qkv_st_writer_new();
    add(w, "query", 3, (int64_t[]){5, 2, 8});
    if (with_key)
        add(w, "key", 3, (int64_t[]){6, 2, kdim});
    add(w, "value", 3, (int64_t[]){6, 2, 8});
    write_file(w, p->input);
}

static void remove_files(const paths *p)
{
    unlink(p->weights);
    unlink(p->input);
    unlink(p->output);
    rmdir(p->dir);
}

/* Runs `qkv forward ARGS` (%W %I %O in args stand for the paths) and checks
 * the exit status, that the message holds `want`, and that no output file
 * (nor its temporary) is left. */
static void expect_error(const paths *p, const char *args, int status, const char *want)
{
    char cmd[2048], expanded[1536], out[8192];
    size_t len = 0;
    for (const char *a = args; *a && len < sizeof expanded - 200; a++) {
        if (a[0] == '%' && (a[1] == 'W' || a[1] == 'I' || a[1] == 'O')) {
            const char *s = a[1] == 'W' ? p->weights : a[1] == 'I' ? p->input : p->output;
            len += (size_t)snprintf(expanded + len, sizeof expanded - len, "%s", s);
            a++;
        } else {
            expanded[len++] = *a;
        }
    }
    expanded[len] = '\0';
    snprintf(cmd, sizeof cmd, "%s forward %s", test_qkv_bin(), expanded);
    int rc = run(cmd, out, sizeof out);
    CHECK(rc == status, "%s: exit %d, expected %d\n%s", cmd, rc, status, out);
    CHECK(strstr(out, want), "%s: message lacks \"%s\":\n%s", cmd, want, out);
    CHECK(access(p->output, F_OK) != 0 && access(p->tmp, F_OK) != 0,
          "%s: an output file was left behind", cmd);
}

TEST(forward_cli_usage_errors)
{
    paths p;
    make_files(&p);
    write_input(&p, 1, 8);
    expect_error(&p, "--arch transformr --weights %W --input %I --output %O", 2,
                 "unknown --arch 'transformr' (known: mha, additive, dot");
    expect_error(&p, "--weights %W --input %I --output %O", 2, "--arch is required");
    expect_error(&p, "--arch mha --weights %W --input %I", 2, "--input and --output are required");
    expect_error(&p, "--arch mha --weights %W --input %I --output %O", 2,
                 "--heads is required (the weights' __metadata__ has no num_heads)");
    expect_error(&p, "--arch mha --heads 3 --weights %W --input %I --output %O", 2,
                 "embed_dim 8 (from the weights) is not divisible by --heads 3");
    expect_error(&p, "--arch mha --heads 2 --input %I --output %O", 2,
                 "--arch mha needs --weights");
    expect_error(&p, "--arch additive --input %I --output %O", 2,
                 "--arch additive needs --weights");
    expect_error(&p, "--arch mha --heads 0 --weights %W --input %I --output %O", 2,
                 "--heads: expected an integer in [1, 4096], got '0'");
    expect_error(&p, "--arch mha --bogus --input %I --output %O", 2, "unknown option '--bogus'");
    expect_error(&p, "--arch dot --heads 2 --input %I --output %O", 2,
                 "--arch dot takes none of --heads, --batch-first, --per-head-weights");
    expect_error(&p, "--arch mha --heads 2 --norm-first --weights %W --input %I --output %O", 2,
                 "--activation and --norm-first are options of --arch transformer");
    expect_error(&p, "--arch transformer --activation tanh --weights %W --input %I --output %O",
                 2, "--activation: expected one of relu|gelu, got 'tanh'");

    char out[8192], cmd[512];
    snprintf(cmd, sizeof cmd, "%s forward --help", test_qkv_bin());
    int rc = run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "  mha ") && strstr(out, "  additive ") &&
              strstr(out, "  dot ") && strstr(out, "--per-head-weights") &&
              strstr(out, "--activation") && strstr(out, "--norm-first") &&
              strstr(out, "transformer: inputs and outputs are (B, N, E)"),
          "forward --help: exit %d\n%s", rc, out);
    remove_files(&p);
}

TEST(forward_cli_data_errors)
{
    paths p;
    make_files(&p);
    const char *mha = "--arch mha --heads 2 --weights %W --input %I --output %O";

    write_input(&p, 0, 8);
    expect_error(&p, mha, 1, "no input tensor 'key' (the file has: ");
    expect_error(&p, mha, 1, "query");

    write_input(&p, 1, 6);
    expect_error(&p, mha, 1, "input 'key' has shape (6, 2, 6), expected (M, B=2, kdim=8)");
    expect_error(&p, "--arch mha --batch-first --heads 2 --weights %W --input %I --output %O",
                 1, "input 'key' has shape (6, 2, 6), expected (B=5, M, kdim=8)");

    /* masks of the wrong size */
    qkv_st_writer *w = qkv_st_writer_new();
    add(w, "query", 3, (int64_t[]){5, 2, 8});
    add(w, "key", 3, (int64_t[]){6, 2, 8});
    add(w, "value", 3, (int64_t[]){6, 2, 8});
    add(w, "attn_mask", 2, (int64_t[]){5, 5});
    add(w, "key_padding_mask", 2, (int64_t[]){2, 6});
    write_file(w, p.input);
    expect_error(&p, mha, 1,
                 "input 'attn_mask' has shape (5, 5), expected (N=5, M=6) or "
                 "(B*heads=4, N=5, M=6)");

    /* weights that are not a MultiheadAttention state_dict, or misshapen */
    w = qkv_st_writer_new();
    add(w, "W_q.weight", 2, (int64_t[]){4, 3});
    write_file(w, p.weights);
    expect_error(&p, mha, 1, "not a MultiheadAttention state_dict (the file has: W_q.weight)");
    w = qkv_st_writer_new();
    add(w, "in_proj_weight", 2, (int64_t[]){24, 8});
    add(w, "out_proj.weight", 2, (int64_t[]){8, 4});
    write_file(w, p.weights);
    expect_error(&p, mha, 1, "out_proj.weight: file (8, 4), model (8, 8)");
    w = qkv_st_writer_new();
    add(w, "in_proj_weight", 2, (int64_t[]){20, 8});
    write_file(w, p.weights);
    expect_error(&p, mha, 1, "'in_proj_weight' has shape (20, 8), expected (3*E, E)");

    /* d2l modules: valid_lens of the wrong shape, keys of the wrong size */
    w = qkv_st_writer_new();
    add(w, "W_q.weight", 2, (int64_t[]){7, 5});
    add(w, "W_k.weight", 2, (int64_t[]){7, 3});
    add(w, "w_v.weight", 2, (int64_t[]){1, 7});
    write_file(w, p.weights);
    w = qkv_st_writer_new();
    add(w, "queries", 3, (int64_t[]){2, 4, 5});
    add(w, "keys", 3, (int64_t[]){2, 6, 3});
    add(w, "values", 3, (int64_t[]){2, 6, 4});
    CHECK(qkv_st_add_int(w, "valid_lens", QKV_DT_I64, 1, (int64_t[]){3},
                         (int64_t[]){1, 2, 3}) == QKV_OK, "%s", qkv_error());
    write_file(w, p.input);
    expect_error(&p, "--arch additive --weights %W --input %I --output %O", 1,
                 "input 'valid_lens' has shape (3), expected (B=2) or (B=2, N=4)");
    expect_error(&p, "--arch dot --input %I --output %O", 1,
                 "input 'keys' has shape (2, 6, 3), expected (B=2, M, D=5)");
    expect_error(&p, "--arch dot --weights %W --input %I --output %O", 1,
                 "DotProductAttention has no parameters, but the file has 'W_q.weight'");

    /* a file that is not there is named */
    expect_error(&p, "--arch dot --input %O.missing --output %O", 1, "out.safetensors.missing");

    /* and the same files with a valid_lens that fits run, writing the file */
    w = qkv_st_writer_new();
    add(w, "queries", 3, (int64_t[]){2, 4, 5});
    add(w, "keys", 3, (int64_t[]){2, 6, 3});
    add(w, "values", 3, (int64_t[]){2, 6, 4});
    CHECK(qkv_st_add_int(w, "valid_lens", QKV_DT_BOOL, 1, (int64_t[]){2},
                         (int64_t[]){1, 0}) == QKV_OK, "%s", qkv_error());
    write_file(w, p.input);
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "%s forward --arch additive --weights %s --input %s --output %s",
             test_qkv_bin(), p.weights, p.input, p.output);
    int rc = run(cmd, out, sizeof out);
    CHECK(rc == 0, "%s: exit %d\n%s", cmd, rc, out);
    qkv_st_file *f = qkv_st_open(p.output);
    CHECK(f && qkv_st_count(f) == 2 && qkv_st_find(f, "output") >= 0 &&
              qkv_st_find(f, "attention_weights") >= 0,
          "%s: outputs missing (%s)", p.output, f ? "" : qkv_error());
    if (f) {
        /* batch 1 has valid length 0: d2l's -1e6 fill makes its weights
         * uniform over the 6 keys */
        int64_t i = qkv_st_find(f, "attention_weights");
        float wts[48];
        CHECK(i >= 0 && qkv_st_numel(f, i) == 48 && qkv_st_read_f32(f, i, wts) == QKV_OK,
              "attention_weights (2, 4, 6)");
        for (int k = 24; k < 48; k++)
            CHECK_SCALAR(wts[k], 1.0 / 6.0, 2e-9, 5e-7);
        CHECK(wts[0] == 1.0f && wts[1] == 0.0f, "valid length 1: weights %g %g", wts[0],
              wts[1]);
        qkv_st_close(f);
    }
    remove_files(&p);
}
