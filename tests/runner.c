/* runner.c - runs every registered test (or those whose name contains one
 * of the arguments) and prints "N passed, N failed". */
#include "test.h"

#include <stdarg.h>
#include <time.h>

typedef struct {
    const char *name, *file;
    test_fn fn;
} entry;

static entry tests[4096];
static int n_tests;
static int cur_failures;
static char note[256];
static int expecting = -1; /* >= 0: failures recorded inside EXPECT_FAIL */

void test_register(const char *name, const char *file, test_fn fn)
{
    if (n_tests < (int)(sizeof tests / sizeof tests[0]))
        tests[n_tests++] = (entry){name, file, fn};
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s%s:%d: %s%s", expecting >= 0 ? "    (expected) " : "    ", file, line,
            note, note[0] ? ": " : "");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (expecting >= 0)
        expecting++;
    else
        cur_failures++;
}

void test_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(note, sizeof note, fmt, ap);
    va_end(ap);
}

const char *test_current_note(void) { return note; }

void test_expect_begin(void) { expecting = 0; }

int test_expect_end(void)
{
    int n = expecting;
    expecting = -1;
    return n;
}

static int by_file_then_name(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv)
{
    qsort(tests, (size_t)n_tests, sizeof tests[0], by_file_then_name);
    int passed = 0, failed = 0;
    for (int i = 0; i < n_tests; i++) {
        bool run = argc < 2;
        for (int a = 1; a < argc; a++)
            if (strstr(tests[i].name, argv[a]) || strstr(tests[i].file, argv[a]))
                run = true;
        if (!run)
            continue;
        cur_failures = 0;
        note[0] = '\0';
        expecting = -1;
        qkv_clear_error();
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        tests[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (cur_failures) {
            failed++;
            printf("FAIL %-40s (%s, %.0f ms)\n", tests[i].name, tests[i].file, ms);
        } else {
            passed++;
            printf("ok   %-40s (%.0f ms)\n", tests[i].name, ms);
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
