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

/* Under a launcher (mpirun sets OMPI_COMM_WORLD_SIZE), a command that does
 * not train data-parallel refuses rather than run as N copies writing the
 * same files; the data-parallel ones go on. */
TEST(cli_single_process_commands_refuse_ranks)
{
    static char out[8192];
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "OMPI_COMM_WORLD_SIZE=2 %s kernel-regression --epochs 0 2>&1",
             test_qkv_bin());
    int rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 2 &&
              strstr(out, "qkv kernel-regression: started by a launcher as one of several "
                          "ranks") &&
              strstr(out, "train vit") && strstr(out, "train moco") && strstr(out, "train detr"),
          "exit %d:\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "OMPI_COMM_WORLD_SIZE=2 %s version 2>&1", test_qkv_bin());
    rc = test_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "communicators"), "exit %d:\n%s", rc, out);
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

/* ---- docs/cli.md against --help ---- */

enum { MAX_CMDS = 64, MAX_OPTS = 64 };

typedef struct {
    char name[48];              /* "kernel-regression", "train vit" */
    char opts[MAX_OPTS][32];    /* "--epochs", as its --help prints them */
    int n_opts;
} cli_cmd;

static bool is_opt_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* The option token at p ("--name" followed by anything but a name
 * character) into buf; its length, 0 if p does not start one. */
static size_t opt_token(const char *p, char *buf, size_t n)
{
    if (p[0] != '-' || p[1] != '-' || !(p[2] >= 'a' && p[2] <= 'z'))
        return 0;
    size_t len = 2;
    while (is_opt_char(p[len]))
        len++;
    snprintf(buf, n, "%.*s", (int)len, p);
    return len;
}

static bool cmd_has(const cli_cmd *c, const char *opt)
{
    for (int i = 0; i < c->n_opts; i++)
        if (!strcmp(c->opts[i], opt))
            return true;
    return false;
}

/* The commands under "commands:" in `qkv --help`, each with the options
 * its own --help prints (lines that start with spaces and "--"). */
static int cli_commands(cli_cmd *cmds)
{
    static char out[16384], help[16384];
    if (run_qkv("--help", out, sizeof out) != 0)
        return 0;
    const char *l = strstr(out, "\ncommands:\n");
    int n = 0;
    for (l = l ? l + 11 : NULL; l && l[0] == ' ' && l[1] == ' ' && n < MAX_CMDS;
         l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        const char *name = l + 2, *end = strstr(name, "  "), *eol = strchr(name, '\n');
        if (!end || (eol && end > eol))
            continue;
        cli_cmd *c = &cmds[n++];
        snprintf(c->name, sizeof c->name, "%.*s", (int)(end - name), name);
        c->n_opts = 0;
        char args[96];
        snprintf(args, sizeof args, "%s --help", c->name);
        if (run_qkv(args, help, sizeof help) != 0)
            continue; /* no options: the caller's check fails */
        for (const char *h = help; h && *h; h = strchr(h, '\n') ? strchr(h, '\n') + 1 : NULL) {
            const char *t = h + strspn(h, " ");
            if (t > h && c->n_opts < MAX_OPTS &&
                opt_token(t, c->opts[c->n_opts], sizeof c->opts[0]))
                c->n_opts++;
        }
    }
    return n;
}

/* The command named right after the last "qkv " before p on p's line, if
 * any (the longest known name), else def. */
static const cli_cmd *owner(const char *line, const char *p, const cli_cmd *cmds, int n,
                            const cli_cmd *def)
{
    const cli_cmd *who = def;
    for (const char *q = line; (q = strstr(q, "qkv ")) && q < p; q += 4) {
        const cli_cmd *best = NULL;
        for (int i = 0; i < n; i++) {
            size_t len = strlen(cmds[i].name);
            if (!strncmp(q + 4, cmds[i].name, len) && !is_opt_char(q[4 + len]) &&
                (!best || len > strlen(best->name)))
                best = &cmds[i];
        }
        if (best)
            who = best;
    }
    return who;
}

/* The section "## qkv NAME" (or "## `qkv NAME`") of doc, up to the next
 * "## " heading; NULL if there is none. *len is its length. */
static const char *doc_section(const char *doc, const char *name, size_t *len)
{
    char h1[80], h2[80];
    snprintf(h1, sizeof h1, "\n## qkv %.60s", name);
    snprintf(h2, sizeof h2, "\n## `qkv %.60s`", name);
    for (const char *h = doc; (h = strstr(h, "\n## ")); h++) {
        size_t n1 = strlen(h1), n2 = strlen(h2);
        if ((!strncmp(h, h1, n1) && strchr("\n ", h[n1])) ||
            (!strncmp(h, h2, n2) && strchr("\n ", h[n2]))) {
            const char *end = strstr(h + 1, "\n## ");
            *len = end ? (size_t)(end - h) : strlen(h);
            return h;
        }
    }
    return NULL;
}

/* Every command that `qkv --help` lists, found there and not from a list of
 * our own, has a row in docs/cli.md's table of commands and a section
 * "## qkv NAME" that names every option its --help prints; --help and
 * --threads, which every command takes, are named before the first
 * section. And docs/cli.md names no option that does not exist: every
 * "--name" in a command's section is one of that command's options (or of
 * the command named by "qkv OTHER" before it on the line), and every
 * command in the table is one that qkv lists. */
TEST(cli_docs_in_step_with_help)
{
    FILE *f = fopen("docs/cli.md", "r");
    REQUIRE(f, "docs/cli.md not found (run from the repository root)");
    static char doc[262144];
    size_t got = fread(doc, 1, sizeof doc - 1, f);
    doc[got] = '\0';
    fclose(f);
    REQUIRE(got < sizeof doc - 1, "docs/cli.md is larger than the test reads");
    static cli_cmd cmds[MAX_CMDS];
    int n = cli_commands(cmds);
    REQUIRE(n >= 2, "qkv --help lists %d commands", n);

    const char *first = strstr(doc, "\n## ");
    size_t pre = first ? (size_t)(first - doc) : strlen(doc);
    CHECK(memmem(doc, pre, "`--help`", 8) && memmem(doc, pre, "`--threads N`", 13),
          "docs/cli.md: --help and --threads are not described for every command");
    for (int c = 0; c < n; c++) {
        test_note("qkv %s", cmds[c].name);
        CHECK(cmds[c].n_opts >= 2, "its --help prints %d options", cmds[c].n_opts);
        char row[80];
        snprintf(row, sizeof row, "\n| `%.47s` |", cmds[c].name);
        CHECK(strstr(doc, row), "docs/cli.md: no row in the table of commands");
        size_t len;
        const char *sec = doc_section(doc, cmds[c].name, &len);
        CHECK(sec, "docs/cli.md: no section \"## qkv %s\"", cmds[c].name);
        if (!sec)
            continue;
        for (int o = 0; o < cmds[c].n_opts; o++) {
            const char *opt = cmds[c].opts[o];
            if (!strcmp(opt, "--help") || !strcmp(opt, "--threads"))
                continue;
            bool named = false;
            size_t ol = strlen(opt);
            for (const char *p = sec; !named && (p = memmem(p, len - (size_t)(p - sec), opt, ol));
                 p += ol)
                named = !is_opt_char(p[ol]);
            CHECK(named, "its section does not describe %s", opt);
        }
        /* every option the section names exists */
        const char *line = sec;
        for (const char *p = sec; p < sec + len; p++) {
            if (*p == '\n')
                line = p + 1;
            char tok[64];
            size_t tl = p > sec && is_opt_char(p[-1]) ? 0 : opt_token(p, tok, sizeof tok);
            if (!tl)
                continue;
            const cli_cmd *who = owner(line, p, cmds, n, &cmds[c]);
            CHECK(cmd_has(who, tok), "its section names %s, which `qkv %s --help` lacks", tok,
                  who->name);
            p += tl - 1;
        }
    }
    /* and the table names no command that qkv lacks */
    test_note("docs/cli.md's table of commands");
    const char *table = strstr(doc, "| command | what it does |");
    CHECK(table, "docs/cli.md: no table of commands");
    for (const char *r = table ? strchr(table, '\n') : NULL; r && !strncmp(r, "\n|", 2);
         r = strchr(r + 1, '\n')) {
        if (strncmp(r, "\n| `", 4))
            continue;
        const char *name = r + 4, *end = strchr(name, '`');
        bool known = false;
        for (int c = 0; c < n && end; c++)
            known |= strlen(cmds[c].name) == (size_t)(end - name) &&
                     !strncmp(cmds[c].name, name, (size_t)(end - name));
        CHECK(known, "the table names `%.*s`, which qkv --help does not list",
              end ? (int)(end - name) : 10, name);
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
 * carriage-return redraws, at most one per 0.1 s, and ends its line at
 * finish. The rate limit is checked without timing anything: the struct's
 * t_drawn, the time of the last draw, is set so that the updates come
 * within 0.1 s of it, then 0.1 s after it. */
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
    qkv_progress_update(&p, 1, NULL); /* the first update draws */
    p.t_drawn = qkv_now() + 3600;     /* then each comes "0 s" after a draw */
    for (int i = 2; i < 1000; i++)
        qkv_progress_update(&p, i, NULL);
    p.t_drawn = qkv_now() - 0.1; /* 0.1 s after the last draw: one more */
    qkv_progress_update(&p, 1000, NULL);
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
    /* the first update, the one 0.1 s after it, and finish */
    CHECK(draws == 3, "%d draws:\n%s", draws, text);
    CHECK(strstr(text, "steps 100% [====================] 1000/1000") && strstr(text, "done\n"),
          "final line missing:\n%s", text);
    CHECK(!strstr(text, "silent"), "QKV_PROGRESS=0 still drew:\n%s", text);
}
