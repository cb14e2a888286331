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
/* Set by a test that cannot run its real check: counts as a failure. */

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

/* |got - want| <= tol * max(1, |want|) */
#define CHECK_NEAR(got, want, tol)                                              \
    do {                                                                        \
        double g_ = (got), w_ = (want), t_ = (tol);                             \
        if (!(fabs(g_ - w_) <= t_ * fmax(1.0, fabs(w_))))                       \
            test_fail(__FILE__, __LINE__, "%s = %.7g, expected %.7g (tol %g)",  \
                      #got, g_, w_, t_);                                        \
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

/* Returns the worst error over all checked elements, scored as
 * |analytic - numeric| / max(scale, |numeric|) where scale is the largest
 * |numeric| of that input times 1e-2 (so that tiny gradients do not divide by
 * zero). Loss = sum(out * R) with a fixed random R. Reports NaN if the op
 * fails. Step h is relative: h = eps * max(1, |x|). */
double gradcheck(gc_fn f, int n, gc_input *in, void *ud, double eps);

#define CHECK_GRAD(f, n, in, ud, tol)                                           \
    do {                                                                        \
        double e_ = gradcheck((f), (n), (in), (ud), 1e-3);                      \
        if (!(e_ <= (tol)))                                                     \
            test_fail(__FILE__, __LINE__, "gradcheck %s: error %.3g > tol %g",  \
                      #f, e_, (double)(tol));                                   \
    } while (0)

/* ---- PyTorch parity fixtures (written by tests/parity/gen.py) ---- */

/* Opens $QKV_FIXTURES/<name>.safetensors; fails the test if absent. */
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

qkv_st_file *fixture_open(const char *name);
/* Loads a named tensor of the fixture into ctx (fails the test if absent). */
qkv_tensor *fixture_get(qkv_ctx *ctx, qkv_st_file *f, const char *name);
/* Largest |got - want| / max(1, max|want|) over all elements; shapes must
 * match (else +inf). `got` may be a strided view; data is read logically. */
double max_rel_diff(const qkv_tensor *got, const qkv_tensor *want);
/* Same for a contiguous float buffer of want's numel (gradients). */
double max_rel_diff_buf(const float *got, const qkv_tensor *want);

#define CHECK_TENSOR(got, want, tol)                                            \
    do {                                                                        \
        double d_ = (got) && (want) ? max_rel_diff((got), (want)) : INFINITY;  \
        if (!(d_ <= (tol)))                                                     \
            test_fail(__FILE__, __LINE__, "%s vs %s: max rel diff %.3g > %g (%s)", \
                      #got, #want, d_, (double)(tol), qkv_error());             \
    } while (0)

#define CHECK_GRADBUF(got, want, tol)                                           \
    do {                                                                        \
        double d_ = (got) && (want) ? max_rel_diff_buf((got), (want)) : INFINITY; \
        if (!(d_ <= (tol)))                                                     \
            test_fail(__FILE__, __LINE__, "%s vs %s: max rel diff %.3g > %g",    \
                      #got, #want, d_, (double)(tol));                          \
    } while (0)

/* ---- closeness, as every new test states it ----
 *
 * Element by element |got - want| <= atol + rtol * |want|, both tolerances
 * stated by the test; the shapes must be equal (not only the counts). A
 * failure names the worst element (flat index), both values and both
 * shapes. NaN anywhere fails. */
bool check_close(const char *file, int line, const char *what, const qkv_tensor *got,
                 const qkv_tensor *want, double atol, double rtol);
/* got: a contiguous float buffer laid out as want (a gradient buffer). */
bool check_close_buf(const char *file, int line, const char *what, const float *got,
                     const qkv_tensor *want, double atol, double rtol);
bool check_close_scalar(const char *file, int line, const char *what, double got, double want,
                        double atol, double rtol);

#define CHECK_CLOSE(got, want, atol, rtol)                                      \
    check_close(__FILE__, __LINE__, #got " vs " #want, (got), (want), (atol), (rtol))
#define CHECK_CLOSE_BUF(got, want, atol, rtol)                                  \
    check_close_buf(__FILE__, __LINE__, #got " vs " #want, (got), (want), (atol), (rtol))
#define CHECK_SCALAR(got, want, atol, rtol)                                     \
    check_close_scalar(__FILE__, __LINE__, #got, (got), (want), (atol), (rtol))

#endif
