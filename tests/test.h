/*
 * test.h - the test harness: TEST(name) registers a test; CHECK records a
 * failure and goes on; the runner prints "N passed, N failed" and exits
 * non-zero when anything failed.
 */
#ifndef QKV_TEST_H
#define QKV_TEST_H

#include "qkv.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define TEST(name)                                                              \
    static void test_##name(void);                                              \
    __attribute__((constructor)) static void register_##name(void)              \
    {                                                                           \
        test_register(#name, __FILE__, test_##name);                            \
    }                                                                           \
    static void test_##name(void)

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond))                                                            \
            test_fail(__FILE__, __LINE__, __VA_ARGS__);                         \
    } while (0)

/* Fails the test and returns from it when cond is false. */
#define REQUIRE(cond, ...)                                                      \
    do {                                                                        \
        if (!(cond)) {                                                          \
            test_fail(__FILE__, __LINE__, __VA_ARGS__);                         \
            return;                                                             \
        }                                                                       \
    } while (0)

/* Names the case that the next failures are about (in a loop over cases):
 * printed after file:line of every failure until the next call or the end
 * of the test. */
void test_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *test_current_note(void);

/* For tests of the harness itself: runs `stmt`, which must record at least
 * one failure; those failures are not counted (their messages are printed,
 * indented) and the test fails if there were none. */
void test_expect_begin(void);
int test_expect_end(void);
#define EXPECT_FAIL(stmt)                                                       \
    do {                                                                        \
        test_expect_begin();                                                    \
        stmt;                                                                   \
        if (test_expect_end() == 0)                                             \
            test_fail(__FILE__, __LINE__, "expected a failure from %s", #stmt); \
    } while (0)

/* ---- gradient check by central differences, loss accumulated in double ---- */

typedef struct {
    int ndim;
    int64_t shape[QKV_MAX_DIMS];
    float *data;   /* malloc'd by gc_rand; freed by gc_free */
    bool grad;     /* check the gradient of this input */
} gc_input;

/* Builds the op's output from the inputs (wrapped as tensors in ctx). */
typedef qkv_tensor *(*gc_fn)(qkv_ctx *ctx, qkv_tensor **in, void *ud);

/* An input of the given shape, uniform in [lo, hi). */
gc_input gc_rand(qkv_rng *r, int ndim, const int64_t *shape, float lo, float hi, bool grad);
void gc_free(int n, gc_input *in);

/* What a gradient check found: the element furthest outside the tolerance
 * (or, when all pass, the one closest to its bound). */
typedef struct {
    bool ok;          /* every checked element within atol + rtol * |numeric| */
    bool op_failed;   /* the op or its backward returned an error */
    bool vacuous;     /* an input's numeric gradient lies within the tolerance
                         of zero everywhere: zeros would pass, so it fails */
    int input;        /* the worst element: its input and flat index */
    int64_t index;
    double analytic, numeric;
    double ratio;     /* max |analytic - numeric| / (atol + rtol * |numeric|) */
} gc_result;

/* Central differences on every element of every input marked `grad`: with
 * loss = sum(out * R) (R fixed, random in [-1, 1), accumulated in double)
 * the numeric gradient is (loss(x + h) - loss(x - h)) / 2h, h = step *
 * max(1, |x|) rounded to what float32 can represent; each element must
 * satisfy |analytic - numeric| <= atol + rtol * |numeric|. An input whose
 * numeric gradient is within atol + rtol * |numeric| of zero everywhere
 * (so that an all-zero analytic gradient would pass) fails as vacuous:
 * choose atol below the gradient's scale. */
gc_result gradcheck_run(gc_fn f, int n, gc_input *in, void *ud, double step, double atol,
                        double rtol);
/* gradcheck_run, failing the test (with the worst element named) if not ok. */
bool test_gradcheck(const char *file, int line, const char *what, gc_fn f, int n, gc_input *in,
                    void *ud, double step, double atol, double rtol);

#define CHECK_GRAD(f, n, in, ud, atol, rtol)                                    \
    test_gradcheck(__FILE__, __LINE__, #f, (f), (n), (in), (ud), 1e-3, (atol), (rtol))
/* The same with a stated relative step h (1e-3 in CHECK_GRAD). */
#define CHECK_GRAD_STEP(f, n, in, ud, step, atol, rtol)                         \
    test_gradcheck(__FILE__, __LINE__, #f, (f), (n), (in), (ud), (step), (atol), (rtol))

/* ---- PyTorch parity fixtures (written by tests/parity/gen.py) ---- */

/* The qkv CLI under test: $QKV_BIN (the Makefile sets it), else build/qkv. */
const char *test_qkv_bin(void);
/* Runs a shell command with its stdout into out (NUL-terminated, cut at
 * n - 1; the rest is read and dropped, so the child never blocks on a full
 * pipe). Returns the exit status, or -1 if it could not run. */
int test_run(const char *cmd, char *out, size_t n);

/* The book's Transformer (r0.17: E 32, 4 heads, FFN 64, 2 + 2 blocks) on
 * fra.txt's first 600 pairs at num_steps 10, weights from seed: loads d,
 * makes *ps (the caller frees both). False, with the test failed, on error. */
bool test_book_seq2seq(qkv_nmt_data *d, qkv_seq2seq *m, qkv_params **ps, float dropout,
                       uint64_t seed);
/* Makes m's FFNs GELU, for tests that compare two orders of summation of
 * the same gradients: with ReLU, a hidden unit whose input lies within
 * rounding of 0 (one in a few thousand, seen with OpenBLAS's Haswell
 * kernels) is on in one order and off in the other, and the gradients
 * through it differ by its whole contribution, not by rounding. */
void test_seq2seq_gelu(qkv_seq2seq *m);
/* max |x[i]| over i < n (0 for none): the scale of a tolerance */
double test_max_abs(const float *x, int64_t n);

/* Opens $QKV_FIXTURES/<name>.safetensors (and notes the name, test_note);
 * fails the test if absent. */
qkv_st_file *fixture_open(const char *name);
/* Loads a named tensor of the fixture into ctx (fails the test if absent). */
qkv_tensor *fixture_get(qkv_ctx *ctx, qkv_st_file *f, const char *name);
/* ---- closeness, as every test states it ----
 *
 * Element by element |got - want| <= atol + rtol * |want|, both tolerances
 * stated by the test (atol >= 0, 0 <= rtol < 1); the shapes must be equal
 * (not only the counts). A failure names the worst element (flat index),
 * both values and both shapes. NaN anywhere fails. A check that an all-zero
 * `got` would pass fails too, unless want is exactly zero everywhere: the
 * tolerance is then too loose for the values (state atol below their
 * scale). With QKV_TEST_SLACK=1 in the environment every check also prints
 * its slack line "slack FILE:LINE R ...": R = max |got - want| / (atol +
 * rtol * |want|), so R near 1 is a tight tolerance, R = 1e-3 a loose one;
 * then the atol each rtol from 0 to 1e-3 would need (docs/testing.md). */
bool check_close(const char *file, int line, const char *what, const qkv_tensor *got,
                 const qkv_tensor *want, double atol, double rtol);
/* got: a contiguous float buffer laid out as want (no shape to compare). */
bool check_close_buf(const char *file, int line, const char *what, const float *got,
                     const qkv_tensor *want, double atol, double rtol);
/* t->grad against want: t's shape must equal want's. */
bool check_close_grad(const char *file, int line, const char *what, const qkv_tensor *t,
                      const qkv_tensor *want, double atol, double rtol);
/* n elements of two arrays, each float or double (dt: 4 or 8 bytes). */
bool check_close_arrays(const char *file, int line, const char *what, const void *got,
                        int got_size, const void *want, int want_size, int64_t n, double atol,
                        double rtol);
bool check_close_scalar(const char *file, int line, const char *what, double got, double want,
                        double atol, double rtol);

#define CHECK_CLOSE(got, want, atol, rtol)                                      \
    check_close(__FILE__, __LINE__, #got " vs " #want, (got), (want), (atol), (rtol))
#define CHECK_CLOSE_BUF(got, want, atol, rtol)                                  \
    check_close_buf(__FILE__, __LINE__, #got " vs " #want, (got), (want), (atol), (rtol))
#define CHECK_CLOSE_GRAD(t, want, atol, rtol)                                   \
    check_close_grad(__FILE__, __LINE__, #t "->grad vs " #want, (t), (want), (atol), (rtol))
/* got and want: float * or double * (each its own), n elements */
#define TEST_FLOAT_SIZE(p)                                                      \
    _Generic((p), float *: 4, const float *: 4, double *: 8, const double *: 8)
#define CHECK_CLOSE_N(got, want, n, atol, rtol)                                 \
    check_close_arrays(__FILE__, __LINE__, #got " vs " #want, (got), TEST_FLOAT_SIZE(got),  \
                       (want), TEST_FLOAT_SIZE(want), (n), (atol), (rtol))
#define CHECK_SCALAR(got, want, atol, rtol)                                     \
    check_close_scalar(__FILE__, __LINE__, #got, (got), (want), (atol), (rtol))

#endif
