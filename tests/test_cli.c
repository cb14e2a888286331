/* test_cli.c - the `qkv` command line, run as a user would run it: the
 * binary named by $QKV_BIN (make test sets it; else build/qkv), its exit
 * statuses, its messages, the files it writes; and the progress bar's line. */
#include "test.h"

#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs `qkv ARGS` with stdout and stderr into out (NUL-terminated, cut at
 * n - 1); returns the exit status, or -1 if it could not run. */
static int run_qkv(const char *args, char *out, size_t n)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", test_qkv_bin(), args);
    return test_run(cmd, out, n);
}

static int count_lines_starting(const char *text, const char *prefix)
{
    int n = 0;
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        n += !strncmp(l, prefix, strlen(prefix));
    return n;
}

TEST(cli_binary_exists)
{
    CHECK(access(test_qkv_bin(), X_OK) == 0, "no executable at %s (set QKV_BIN)", test_qkv_bin());
}

TEST(cli_help_lists_commands)
{
    static char out[8192];
    int rc = run_qkv("--help", out, sizeof out);
    CHECK(rc == 0, "qkv --help: exit %d", rc);
    CHECK(strstr(out, "\n  kernel-regression ") && strstr(out, "\n  version "),
          "qkv --help does not list the commands:\n%s", out);
    rc = run_qkv("", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "usage:"), "qkv alone: exit %d\n%s", rc, out);
}

TEST(cli_unknown_command_and_option)
{
    static char out[8192];
    int rc = run_qkv("frobnicate", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "unknown command 'frobnicate'"), "exit %d:\n%s", rc, out);
    rc = run_qkv("kernel-regression --bogus 3", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "unknown option '--bogus'"), "exit %d:\n%s", rc, out);
    rc = run_qkv("--bogus kernel-regression", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "'--bogus'"), "exit %d:\n%s", rc, out);
    rc = run_qkv("kernel-regression stray", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "unexpected argument 'stray'"), "exit %d:\n%s", rc, out);
}

TEST(cli_bad_values_name_the_option)
{
    static char out[8192];
    const struct {
        const char *args, *want;
    } cases[] = {
        {"kernel-regression --epochs -1", "--epochs: expected an integer in [0, 100000], got '-1'"},
        {"kernel-regression --epochs 2x", "--epochs: expected an integer"},
        {"kernel-regression --sigma=abc", "--sigma: expected a number"},
        {"kernel-regression --sigma nan", "--sigma: expected a number"},
        {"kernel-regression --kernel cosine", "--kernel: expected one of gaussian|"},
        {"kernel-regression --seed -3", "--seed: expected a non-negative integer"},
        {"kernel-regression --lr", "--lr needs a value"},
        {"kernel-regression --threads 0", "--threads: expected a thread count"},
        {"--threads=many version", "--threads: expected a thread count"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = run_qkv(cases[i].args, out, sizeof out);
        CHECK(rc == 2 && strstr(out, cases[i].want), "qkv %s: exit %d, want '%s' in:\n%s",
              cases[i].args, rc, cases[i].want, out);
    }
}

TEST(cli_command_help_shows_defaults)
{
    static char out[8192];
    int rc = run_qkv("kernel-regression --help", out, sizeof out);
    CHECK(rc == 0, "exit %d", rc);
    const char *want[] = {"--n-train N", "(default: 50)", "--noise X", "(default: 0.5)",
                          "--epochs N", "(default: 5)", "--lr X", "--kernel NAME",
                          "(default: gaussian)", "--sigma X", "--seed N", "--out-dir DIR",
                          "(default: runs/kernel-regression)", "--threads N", "--help"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(strstr(out, want[i]), "'%s' missing from kernel-regression --help", want[i]);
}

TEST(cli_version_and_threads)
{
    static char out[4096];
    int rc = run_qkv("--threads 1 version", out, sizeof out);
    CHECK(rc == 0 && strstr(out, "qkv " QKV_VERSION) && strstr(out, "threads 1") &&
              (strstr(out, "backend openblas") || strstr(out, "backend builtin")),
          "exit %d:\n%s", rc, out);
    rc = run_qkv("version --threads=2", out, sizeof out);
    CHECK(rc == 0 && strstr(out, "threads 2"), "exit %d:\n%s", rc, out);
}

/* A PNG starts with its 8-byte signature; a picture of 50 x 50 weights or of
 * five curves is well over 1 KiB. */
static void check_png(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    CHECK(f, "%s not written", path);
    if (!f)
        return;
    unsigned char sig[8] = {0};
    size_t got = fread(sig, 1, 8, f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    CHECK(got == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8), "%s: not a PNG", path);
    CHECK(size > 1024, "%s: only %ld bytes", path, size);
    remove(path);
}

TEST(cli_kernel_regression_runs)
{
    static char out[16384];
    char dir[] = "/tmp/qkv-cli-XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp failed");
    char args[256];
    snprintf(args, sizeof args, "kernel-regression --epochs 5 --out-dir %s/pics", dir);
    int rc = run_qkv(args, out, sizeof out);
    CHECK(rc == 0, "exit %d:\n%s", rc, out);
    CHECK(count_lines_starting(out, "epoch ") == 5, "want 5 epoch lines:\n%s", out);
    CHECK(strstr(out, "epoch 5, loss ") && strstr(out, "\nw: ") &&
              strstr(out, "average pooling") && strstr(out, "gaussian, sigma 0.1") &&
              strstr(out, "epanechnikov") && strstr(out, "boxcar") && strstr(out, "parametric"),
          "report incomplete:\n%s", out);
    /* Not a terminal: the progress bar must stay out of the output. */
    CHECK(!strchr(out, '\r'), "progress bar drawn into a pipe:\n%s", out);
    char pics[300];
    snprintf(pics, sizeof pics, "%s/pics", dir);
    check_png(pics, "fit.png");
    check_png(pics, "attention-nonparametric.png");
    check_png(pics, "attention-parametric.png");
    char metrics[400];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", pics);
    FILE *mf = fopen(metrics, "r");
    int lines = 0;
    char line[256];
    while (mf && fgets(line, sizeof line, mf))
        lines += !strncmp(line, "{\"epoch\": ", 10) && strstr(line, "\"loss\": ");
    if (mf)
        fclose(mf);
    CHECK(lines == 5, "%s: %d epoch lines, want 5", metrics, lines);
    remove(metrics);
    rmdir(pics);
    rmdir(dir);
    snprintf(args, sizeof args, "kernel-regression --epochs 2 --kernel boxcar --sigma 0.5 "
                                "--out-dir /proc/no/such/dir");
    rc = run_qkv(args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "/proc/no/such/dir") && strstr(out, "boxcar, sigma 0.5"),
          "unwritable --out-dir: exit %d:\n%s", rc, out);
}

/* docs/cli.md must mention every option that --help prints. */
TEST(cli_docs_in_step_with_help)
{
    FILE *f = fopen("docs/cli.md", "r");
    REQUIRE(f, "docs/cli.md not found (run from the repository root)");
    static char doc[65536], out[8192];
    doc[fread(doc, 1, sizeof doc - 1, f)] = '\0';
    fclose(f);
    const char *cmds[] = {"kernel-regression", "version"};
    for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
        char args[64], heading[64];
        snprintf(heading, sizeof heading, "qkv %s", cmds[c]);
        CHECK(strstr(doc, heading), "docs/cli.md lacks '%s'", heading);
        snprintf(args, sizeof args, "%s --help", cmds[c]);
        REQUIRE(run_qkv(args, out, sizeof out) == 0, "qkv %s failed", args);
        for (const char *o = strstr(out, "  --"); o; o = strstr(o + 1, "  --")) {
            char name[64];
            size_t len = strcspn(o + 2, " =\n");
            snprintf(name, sizeof name, "%.*s", (int)(len < 63 ? len : 63), o + 2);
            CHECK(strstr(doc, name), "docs/cli.md does not describe %s of %s", name, cmds[c]);
        }
    }
}

TEST(progress_line)
{
    qkv_progress p;
    qkv_progress_start(&p, 50, "training");
    p.done = 0;
    char line[256];
    qkv_progress_format(&p, 0.0, NULL, line, sizeof line);
    CHECK(!strcmp(line, "training   0% [                    ] 0/50 00:00<--:--"), "'%s'", line);
    p.done = 20;
    qkv_progress_format(&p, 4.0, "loss 0.25", line, sizeof line);
    /* 20 of 50 in 4 s: 5/s, 30 left take 6 s */
    CHECK(!strcmp(line, "training  40% [========>           ] 20/50 00:04<00:06 5/s loss 0.25"),
          "'%s'", line);
    p.done = 50;
    qkv_progress_format(&p, 3725.0, NULL, line, sizeof line);
    CHECK(strstr(line, " 100% [====================] 50/50 1:02:05<00:00"), "'%s'", line);
    qkv_progress_start(&p, 0, "reading");
    p.done = 7;
    qkv_progress_format(&p, 2.0, NULL, line, sizeof line);
    CHECK(!strcmp(line, "reading 7 00:02 3.5/s"), "'%s'", line);
}

/* Forced on through $QKV_PROGRESS, the bar goes to stderr (here a file) as
 * carriage-return redraws, rate-limited, and ends its line at finish. */
TEST(progress_draws_when_forced)
{
    char path[] = "/tmp/qkv-progress-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp failed");
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    setenv("QKV_PROGRESS", "1", 1);
    qkv_progress p;
    qkv_progress_start(&p, 1000, "steps");
    for (int i = 1; i <= 1000; i++)
        qkv_progress_update(&p, i, NULL);
    qkv_progress_finish(&p, "done");
    setenv("QKV_PROGRESS", "0", 1);
    qkv_progress_start(&p, 10, "silent");
    qkv_progress_update(&p, 5, NULL);
    qkv_progress_finish(&p, NULL);
    unsetenv("QKV_PROGRESS");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    static char text[65536];
    FILE *f = fdopen(fd, "r");
    rewind(f);
    text[fread(text, 1, sizeof text - 1, f)] = '\0';
    fclose(f);
    remove(path);
    int draws = 0;
    for (const char *c = text; *c; c++)
        draws += *c == '\r';
    /* 1000 updates within far less than 0.1 s: the first and the final draw */
    CHECK(draws >= 2 && draws <= 4, "%d draws:\n%s", draws, text);
    CHECK(strstr(text, "steps 100% [====================] 1000/1000") && strstr(text, "done\n"),
          "final line missing:\n%s", text);
    CHECK(!strstr(text, "silent"), "QKV_PROGRESS=0 still drew:\n%s", text);
}
