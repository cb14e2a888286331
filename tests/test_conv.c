/* test_conv.c - conv2d, max_pool2d, avg_pool2d, adaptive_avg_pool2d.
 *   - im2col + GEMM against the direct reference kernel over many option
 *     combinations (float GEMM against double accumulation, at most 100
 *     terms);
 *   - gradient checks per option, by central differences;
 *   - PyTorch parity, forward and backward: conv within a few ulp (GEMM
 *     sums in another order than mkldnn), pooling's gradients exactly;
 *   - errors name the op and the shapes.
 * Tolerances: atol + rtol |want| as stated at each check, a few times the
 * worst error measured (docs/testing.md). */
#include "test.h"

#include "kernels/conv.h"

#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* ---- im2col + GEMM against the direct definition ---- */

typedef struct {
    int64_t B, Cin, H, W, Cout, kh, kw;
    qkv_conv2d_opts o;
    bool bias;
} conv_case;

static const conv_case conv_cases[] = {
    {2, 3, 7, 6, 4, 3, 3, {0}, true},
    {2, 3, 8, 7, 4, 3, 3, {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1}, true},
    {1, 2, 9, 9, 3, 3, 3, {.pad_h = 2, .pad_w = 2, .dil_h = 2, .dil_w = 2}, true},
    {2, 4, 6, 6, 6, 3, 3, {.stride_h = 2, .pad_h = 1, .pad_w = 1, .groups = 2}, true},
    {2, 3, 6, 5, 6, 3, 3, {.pad_h = 1, .pad_w = 1, .groups = 3}, true}, /* depthwise x2 */
    {2, 5, 4, 4, 3, 1, 1, {0}, false},                                    /* 1x1 direct */
    {2, 5, 5, 4, 3, 1, 1, {.stride_h = 2, .stride_w = 2}, true},          /* 1x1 strided */
    {1, 3, 8, 8, 5, 4, 4, {.stride_h = 4, .stride_w = 4}, true},          /* patches */
    {1, 2, 5, 9, 3, 2, 3, {.stride_w = 3, .pad_h = 1, .dil_w = 2}, false},
    {1, 1, 3, 3, 2, 5, 5, {.pad_h = 2, .pad_w = 2}, true}, /* window wider than the image */
    {1, 5, 4, 4, 3, 1, 1, {0}, true},                      /* 1x1 direct, one image */
    {2, 4, 7, 8, 4, 3, 3, {2, 2, 1, 2, 1, 2, 4}, false},   /* depthwise, strided, dilated */
    /* stride 1, as many out-channels as in or fewer (ResNet's blocks): one
     * image alone; two in a chunk; dilated; grouped */
    {1, 4, 6, 6, 4, 3, 3, {.pad_h = 1, .pad_w = 1}, true},
    {2, 4, 7, 6, 3, 3, 3, {.pad_h = 1, .pad_w = 1}, false},
    {1, 3, 9, 8, 2, 3, 3, {.pad_h = 2, .pad_w = 1, .dil_h = 2}, true},
    {2, 4, 6, 6, 4, 3, 3, {.pad_h = 1, .pad_w = 1, .groups = 2}, true},
    /* padded more than the kernel reaches: the input gradient by col2im,
     * not by the flipped convolution (its padding would be negative) */
    {2, 3, 5, 4, 2, 3, 3, {.pad_h = 3, .pad_w = 1}, true},
    /* 48 output pixels: GEMMs over chunks of 3 images, then 1 */
    {4, 2, 6, 8, 4, 3, 3, {.pad_h = 1, .pad_w = 1, .groups = 2}, true},
    /* more than 256 output pixels in one image: cut into tiles of output
     * rows (stride 1, its input gradient by tiles too; strided, by col2im
     * over the whole image; dilated; a 1x1 direct one) */
    {1, 1, 17, 16, 2, 3, 3, {.pad_h = 1, .pad_w = 1}, true},
    {1, 2, 40, 30, 2, 3, 3, {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1}, true},
    {1, 1, 18, 16, 2, 3, 3, {.pad_h = 2, .pad_w = 2, .dil_h = 2, .dil_w = 2}, false},
    {1, 2, 17, 16, 3, 1, 1, {0}, true},
    /* 576 and 529 output pixels: one image per chunk, the chunks shared out
     * to the threads, each thread's dw and dbias summed apart (too large
     * for a gradient check: conv2d_threads_share_chunks_exactly_as_one) */
    {3, 4, 24, 24, 6, 3, 3, {.pad_h = 1, .pad_w = 1, .groups = 2}, true},
    {3, 3, 23, 23, 4, 1, 1, {0}, true}, /* 1x1 direct over several chunks */
    {1, 4, 30, 30, 4, 3, 3, {.pad_h = 1, .pad_w = 1}, true}, /* one image, 4 tiles */
};
#define N_CONV_CASES (int)(sizeof conv_cases / sizeof conv_cases[0])
#define N_BIG_CASES 3 /* the last ones */

TEST(conv2d_matches_direct_reference)
{
    qkv_ctx *ctx = qkv_ctx_new();
    for (int i = 0; i < N_CONV_CASES; i++) {
        const conv_case *c = &conv_cases[i];
        int64_t groups = c->o.groups ? c->o.groups : 1;
        qkv_tensor *x = qkv_randn(ctx, 4, SHAPE(c->B, c->Cin, c->H, c->W), 0, 1);
        qkv_tensor *w = qkv_randn(ctx, 4, SHAPE(c->Cout, c->Cin / groups, c->kh, c->kw), 0, 1);
        qkv_tensor *b = c->bias ? qkv_randn(ctx, 1, SHAPE(c->Cout), 0, 1) : NULL;
        qkv_tensor *y = qkv_conv2d(ctx, x, w, b, &c->o);
        REQUIRE(y, "case %d: %s", i, qkv_error());
        qkv_conv_geom g = {
            .H = c->H, .W = c->W, .Ho = y->shape[2], .Wo = y->shape[3],
            .kh = (int)c->kh, .kw = (int)c->kw,
            .sh = c->o.stride_h ? c->o.stride_h : 1, .sw = c->o.stride_w ? c->o.stride_w : 1,
            .ph = c->o.pad_h, .pw = c->o.pad_w,
            .dh = c->o.dil_h ? c->o.dil_h : 1, .dw = c->o.dil_w ? c->o.dil_w : 1,
        };
        CHECK(g.Ho == (c->H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1 &&
                  g.Wo == (c->W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1,
              "case %d: output size %lldx%lld", i, (long long)g.Ho, (long long)g.Wo);
        qkv_tensor *ref = qkv_new(ctx, 4, y->shape);
        qkv_k_conv2d_ref(ref->data, x->data, w->data, b ? b->data : NULL, c->B, c->Cin,
                         c->Cout, groups, &g);
        test_note("case %d", i);
        CHECK_CLOSE(y, ref, 5e-6, 5e-7);
    }
    qkv_ctx_free(ctx);
}

/* ---- im2col and col2im against their definitions ---- */

/* col[(c taps + t) ld + oh Wo + ow] = x[c][oh sh - ph + i dh][ow sw - pw + j
 * dw], 0 outside the image */
static void im2col_def(float *col, int64_t ld, const float *x, int64_t C,
                       const qkv_conv_geom *g)
{
    int64_t taps = (int64_t)g->kh * g->kw;
    for (int64_t c = 0; c < C; c++)
        for (int64_t t = 0; t < taps; t++)
            for (int64_t oh = 0; oh < g->Ho; oh++)
                for (int64_t ow = 0; ow < g->Wo; ow++) {
                    int64_t ih = oh * g->sh - g->ph + t / g->kw * g->dh;
                    int64_t iw = ow * g->sw - g->pw + t % g->kw * g->dw;
                    bool in = ih >= 0 && ih < g->H && iw >= 0 && iw < g->W;
                    col[(c * taps + t) * ld + oh * g->Wo + ow] =
                        in ? x[(c * g->H + ih) * g->W + iw] : 0.0f;
                }
}

/* Every geometry the kernels tell apart: a tap's row as the shifted plane
 * (stride 1, output as wide as the input: 3x3 "same" on 28, 7, 4, 1 pixel
 * sides, dilated, a window wider than the image, a kernel taller than
 * wide, 9x9), and row by row (padding 0, stride 2 with 3x3, 7x7 and 1x1,
 * stride 3);
 * one image and two side by side (qkv_k_im2col_images). Values
 * are small integers, so that col2im's sums are exact in any order. */
TEST(im2col_and_col2im_match_their_definitions)
{
    static const struct {
        int64_t C, H, W;
        int kh, kw, sh, sw, ph, pw, dh, dw;
    } cases[] = {
        {3, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1}, {4, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1},
        {2, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1},   {2, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1},
        {2, 9, 8, 3, 3, 1, 1, 2, 2, 2, 2},   {1, 3, 3, 5, 5, 1, 1, 2, 2, 1, 1},
        {2, 6, 5, 5, 3, 1, 1, 0, 1, 1, 1},   {2, 6, 6, 3, 3, 1, 1, 0, 0, 1, 1},
        {2, 28, 28, 3, 3, 2, 2, 1, 1, 1, 1}, {1, 15, 13, 7, 7, 2, 2, 3, 3, 1, 1},
        {3, 7, 7, 1, 1, 2, 2, 0, 0, 1, 1},   {2, 8, 6, 3, 3, 1, 2, 1, 1, 1, 1},
        {1, 11, 10, 9, 9, 1, 1, 4, 4, 1, 1}, /* more taps than the stack's table */
        {1, 5, 40, 3, 3, 2, 2, 1, 1, 1, 1},  /* stride 2, rows of 20: 16 lanes and 4 */
        {1, 4, 67, 1, 3, 1, 3, 0, 1, 1, 1},  /* stride 3 */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        qkv_conv_geom g = {.H = cases[k].H, .W = cases[k].W, .kh = cases[k].kh,
                           .kw = cases[k].kw, .sh = cases[k].sh, .sw = cases[k].sw,
                           .ph = cases[k].ph, .pw = cases[k].pw, .dh = cases[k].dh,
                           .dw = cases[k].dw};
        g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
        g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
        /* two images side by side, rows 3 floats longer than their columns */
        int64_t C = cases[k].C, HW = g.H * g.W, P = g.Ho * g.Wo, ld = 2 * P + 3;
        int64_t rows = C * g.kh * g.kw, ncol = rows * ld, nx = 2 * C * HW;
        float *x = malloc(sizeof(float) * (size_t)nx);
        float *col = malloc(sizeof(float) * (size_t)ncol);
        float *want = malloc(sizeof(float) * (size_t)ncol);
        float *dx = malloc(sizeof(float) * (size_t)nx);
        float *dx_want = malloc(sizeof(float) * (size_t)nx);
        REQUIRE(x && col && want && dx && dx_want, "out of memory");
        for (int64_t i = 0; i < nx; i++) {
            x[i] = (float)(i % 13) - 6.0f;
            dx[i] = dx_want[i] = (float)(i % 5) - 2.0f;
        }
        for (int64_t i = 0; i < ncol; i++)
            col[i] = want[i] = 99.0f; /* the gaps between rows stay as they are */
        test_note("case %zu: %lldx%lld, kernel %dx%d, stride %d,%d, padding %d,%d", k,
                  (long long)g.H, (long long)g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw);
        for (int64_t n = 0; n < 2; n++)
            im2col_def(want + n * P, ld, x + n * C * HW, C, &g);
        qkv_k_im2col_images(col, ld, x, C * HW, 2, C, &g);
        CHECK_CLOSE_N(col, want, ncol, 0, 0);
        qkv_k_im2col(col, ld, x + C * HW, C, &g); /* one image alone */
        for (int64_t r = 0; r < rows; r++)
            CHECK_CLOSE_N(col + r * ld, want + r * ld + P, P, 0, 0);
        /* col2im: dx += every entry of col at the pixel im2col read it from */
        for (int64_t i = 0; i < ncol; i++)
            col[i] = (float)(i % 7) - 3.0f;
        int64_t taps = (int64_t)g.kh * g.kw;
        for (int64_t n = 0; n < 2; n++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t t = 0; t < taps; t++)
                    for (int64_t p = 0; p < P; p++) {
                        int64_t ih = p / g.Wo * g.sh - g.ph + t / g.kw * g.dh;
                        int64_t iw = p % g.Wo * g.sw - g.pw + t % g.kw * g.dw;
                        if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                            dx_want[((n * C + c) * g.H + ih) * g.W + iw] +=
                                col[(c * taps + t) * ld + n * P + p];
                    }
        qkv_k_col2im_images(dx, C * HW, col, ld, 2, C, &g);
        CHECK_CLOSE_N(dx, dx_want, nx, 0, 0);
        free(x), free(col), free(want), free(dx), free(dx_want);
    }
}

/* ---- gradient checks ---- */

static qkv_tensor *f_conv(qkv_ctx *c, qkv_tensor **t, void *u)
{
    const conv_case *cc = u;
    return qkv_conv2d(c, t[0], t[1], cc->bias ? t[2] : NULL, &cc->o);
}

/* x as a channels-last buffer seen through a permuted NCHW view */
static qkv_tensor *f_conv_nhwc(qkv_ctx *c, qkv_tensor **t, void *u)
{
    const conv_case *cc = u;
    qkv_tensor *x = qkv_permute(c, t[0], (int[]){0, 3, 1, 2});
    return qkv_conv2d(c, x, t[1], cc->bias ? t[2] : NULL, &cc->o);
}

TEST(gradcheck_conv2d_options)
{
    qkv_rng r;
    qkv_rng_seed(&r, 21);
    for (int i = 0; i < N_CONV_CASES; i++) {
        const conv_case *c = &conv_cases[i];
        int64_t groups = c->o.groups ? c->o.groups : 1;
        if (i >= N_CONV_CASES - N_BIG_CASES)
            continue;
        gc_input in[3] = {
            gc_rand(&r, 4, SHAPE(c->B, c->Cin, c->H, c->W), -1, 1, true),
            gc_rand(&r, 4, SHAPE(c->Cout, c->Cin / groups, c->kh, c->kw), -1, 1, true),
            gc_rand(&r, 1, SHAPE(c->Cout), -1, 1, true),
        };
        test_note("case %d", i);
        CHECK_GRAD(f_conv, c->bias ? 3 : 2, in, (void *)c, 2e-3, 1e-3);
        gc_free(3, in);
    }
    test_note("channels last");
    conv_case nhwc = {2, 3, 6, 5, 4, 2, 3, {.stride_w = 2, .pad_h = 1}, true};
    gc_input in[3] = {gc_rand(&r, 4, SHAPE(2, 6, 5, 3), -1, 1, true),
                      gc_rand(&r, 4, SHAPE(4, 3, 2, 3), -1, 1, true),
                      gc_rand(&r, 1, SHAPE(4), -1, 1, true)};
    CHECK_GRAD(f_conv_nhwc, 3, in, &nhwc, 5e-4, 1e-3);
    gc_free(3, in);
}

/* The chunks of a large batch shared out to 2 or 3 threads (each summing
 * its dw and dbias apart) give one thread's result: the same output and dx
 * (tol 0: the same GEMMs), dw and dbias to summation order (tol 1e-6 of
 * their scale); one thread is the path the gradient checks verify. */
TEST(conv2d_threads_share_chunks_exactly_as_one)
{
    int threads = qkv_threads();
    for (int i = 0; i < N_CONV_CASES; i++) {
        const conv_case *c = &conv_cases[i];
        if (i < N_CONV_CASES - N_BIG_CASES)
            continue;
        int64_t groups = c->o.groups ? c->o.groups : 1;
        qkv_tensor *got[3][4] = {{0}};
        qkv_ctx *ctx[3];
        for (int t = 0; t < 3; t++) {
            qkv_set_threads(t + 1);
            ctx[t] = qkv_ctx_new();
            qkv_rng_seed(qkv_ctx_rng(ctx[t]), 5);
            qkv_tensor *x = qkv_requires_grad(
                qkv_randn(ctx[t], 4, SHAPE(c->B, c->Cin, c->H, c->W), 0, 1));
            qkv_tensor *w = qkv_requires_grad(
                qkv_randn(ctx[t], 4, SHAPE(c->Cout, c->Cin / groups, c->kh, c->kw), 0, 1));
            qkv_tensor *b = qkv_requires_grad(qkv_randn(ctx[t], 1, SHAPE(c->Cout), 0, 1));
            qkv_tensor *y = qkv_conv2d(ctx[t], x, w, b, &c->o);
            REQUIRE(y, "%s", qkv_error());
            qkv_tensor *g = qkv_randn(ctx[t], 4, y->shape, 0, 1);
            REQUIRE(qkv_backward_with(ctx[t], y, g->data) == QKV_OK, "%s", qkv_error());
            got[t][0] = y;
            got[t][1] = qkv_wrap(ctx[t], 4, x->shape, x->grad);
            got[t][2] = qkv_wrap(ctx[t], 4, w->shape, w->grad);
            got[t][3] = qkv_wrap(ctx[t], 1, b->shape, b->grad);
        }
        for (int t = 1; t < 3; t++) {
            test_note("case %d, %d threads", i, t + 1);
            CHECK_CLOSE(got[t][0], got[0][0], 0, 0);
            CHECK_CLOSE(got[t][1], got[0][1], 0, 0);
            for (int k = 2; k < 4; k++) {
                double scale = test_max_abs(got[0][k]->data, qkv_numel(got[0][k]));
                CHECK_CLOSE(got[t][k], got[0][k], 1e-6 * scale, 1e-6);
            }
        }
        for (int t = 0; t < 3; t++)
            qkv_ctx_free(ctx[t]);
    }
    qkv_set_threads(threads);
}

typedef struct {
    int kind; /* 0 max, 1 avg, 2 adaptive */
    int k[2], s[2], p[2];
    bool nhwc;
} pool_case;

static qkv_tensor *f_pool(qkv_ctx *c, qkv_tensor **t, void *u)
{
    const pool_case *pc = u;
    qkv_tensor *x = pc->nhwc ? qkv_permute(c, t[0], (int[]){0, 3, 1, 2}) : t[0];
    switch (pc->kind) {
    case 0: return qkv_max_pool2d(c, x, pc->k[0], pc->k[1], pc->s[0], pc->s[1], pc->p[0], pc->p[1]);
    case 1: return qkv_avg_pool2d(c, x, pc->k[0], pc->k[1], pc->s[0], pc->s[1], pc->p[0], pc->p[1]);
    default: return qkv_adaptive_avg_pool2d(c, x, pc->k[0], pc->k[1]);
    }
}

TEST(gradcheck_pooling)
{
    static const pool_case cases[] = {
        {0, {3, 3}, {2, 2}, {1, 1}, false}, {0, {2, 3}, {0, 0}, {1, 0}, true},
        {0, {3, 2}, {1, 1}, {0, 1}, false}, {1, {3, 3}, {2, 2}, {1, 1}, false},
        {1, {2, 3}, {1, 2}, {1, 1}, true},  {2, {3, 4}, {0}, {0}, false},
        {2, {8, 2}, {0}, {0}, true},
    };
    qkv_rng r;
    qkv_rng_seed(&r, 22);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const pool_case *c = &cases[i];
        gc_input in[1] = {c->nhwc ? gc_rand(&r, 4, SHAPE(2, 7, 5, 2), -1, 1, true)
                                  : gc_rand(&r, 4, SHAPE(2, 2, 7, 5), -1, 1, true)};
        if (c->kind == 0) {
            /* distinct values 0.01 apart: the step of 1e-3 cannot move an argmax */
            int64_t perm[140];
            for (int j = 0; j < 140; j++)
                perm[j] = j;
            qkv_rng_shuffle(&r, perm, 140);
            for (int j = 0; j < 140; j++)
                in[0].data[j] = 0.01f * (float)perm[j] - 0.7f;
        }
        test_note("pool case %zu", i);
        CHECK_GRAD(f_pool, 1, in, (void *)c, 2e-5, 1e-3);
        gc_free(1, in);
    }
}

TEST(max_pool2d_ties_and_padding)
{
    /* all equal: the gradient goes to the first element of each window; the
     * -inf padding never wins */
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_requires_grad(qkv_full(ctx, 4, SHAPE(1, 1, 3, 4), -5.0f));
    qkv_tensor *y = qkv_max_pool2d(ctx, x, 2, 2, 2, 2, 1, 1); /* (1,1,2,3) */
    REQUIRE(y && y->shape[2] == 2 && y->shape[3] == 3, "%s", qkv_error());
    float ones[6] = {1, 1, 1, 1, 1, 1};
    REQUIRE(qkv_backward_with(ctx, y, ones) == QKV_OK, "%s", qkv_error());
    /* windows start at rows -1, 1 and columns -1, 1, 3 */
    float want[12] = {1, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0};
    for (int i = 0; i < 6; i++)
        CHECK(y->data[i] == -5.0f, "y[%d] = %g", i, y->data[i]);
    for (int i = 0; i < 12; i++)
        CHECK(x->grad[i] == want[i], "grad[%d] = %g, expected %g", i, x->grad[i], want[i]);
    /* a NaN wins its window, as in PyTorch, and takes the gradient */
    qkv_tensor *z = qkv_requires_grad(qkv_from_data(ctx, 4, SHAPE(1, 1, 2, 2),
                                                    (float[]){1, NAN, 3, 2}));
    y = qkv_max_pool2d(ctx, z, 2, 2, 0, 0, 0, 0);
    REQUIRE(y && qkv_backward_with(ctx, y, ones) == QKV_OK, "%s", qkv_error());
    CHECK(isnan(y->data[0]), "max of (1, nan, 3, 2) = %g", y->data[0]);
    CHECK(z->grad[1] == 1 && z->grad[0] + z->grad[2] + z->grad[3] == 0, "NaN's gradient");
    qkv_ctx_free(ctx);
}

TEST(conv_and_pool_errors)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_tensor *x = qkv_zeros(ctx, 4, SHAPE(1, 3, 8, 8));
    qkv_tensor *w = qkv_zeros(ctx, 4, SHAPE(4, 2, 3, 3));
    CHECK(!qkv_conv2d(ctx, x, w, NULL, NULL), "3 channels into a 2-channel weight");
    CHECK(strstr(qkv_error(), "conv2d") && strstr(qkv_error(), "(1, 3, 8, 8)") &&
              strstr(qkv_error(), "(4, 2, 3, 3)"),
          "message: %s", qkv_error());
    CHECK(!qkv_conv2d(ctx, x, w, NULL, &(qkv_conv2d_opts){.groups = 2}),
          "3 channels in 2 groups");
    CHECK(!qkv_conv2d(ctx, qkv_zeros(ctx, 4, SHAPE(1, 4, 8, 8)), w,
                      qkv_zeros(ctx, 1, SHAPE(3)), &(qkv_conv2d_opts){.groups = 2}) &&
              strstr(qkv_error(), "bias"),
          "bias of 3 for 4 outputs: %s", qkv_error());
    CHECK(!qkv_conv2d(ctx, qkv_zeros(ctx, 4, SHAPE(1, 2, 2, 2)), w, NULL, NULL) &&
              strstr(qkv_error(), "conv2d") && strstr(qkv_error(), "larger"),
          "3x3 kernel on 2x2: %s", qkv_error());
    CHECK(!qkv_conv2d(ctx, x, qkv_zeros(ctx, 3, SHAPE(4, 3, 3)), NULL, NULL), "3-D weight");
    CHECK(!qkv_conv2d(ctx, x, qkv_zeros(ctx, 4, SHAPE(4, 3, 3, 3)), NULL,
                      &(qkv_conv2d_opts){.pad_h = -1}) && strstr(qkv_error(), "conv2d"),
          "negative padding: %s", qkv_error());
    CHECK(!qkv_max_pool2d(ctx, x, 3, 3, 1, 1, 2, 2) && strstr(qkv_error(), "max_pool2d"),
          "padding over half the window: %s", qkv_error());
    CHECK(!qkv_avg_pool2d(ctx, qkv_zeros(ctx, 3, SHAPE(3, 8, 8)), 2, 2, 0, 0, 0, 0) &&
              strstr(qkv_error(), "avg_pool2d") && strstr(qkv_error(), "(3, 8, 8)"),
          "3-D input: %s", qkv_error());
    CHECK(!qkv_adaptive_avg_pool2d(ctx, x, 0, 2) && strstr(qkv_error(), "adaptive"),
          "output 0: %s", qkv_error());
    qkv_ctx_free(ctx);
}

/* ---- parity with PyTorch ---- */

/* "h,w" metadata of a fixture, or 0,0 if absent */
static void meta_pair(qkv_st_file *fx, const char *key, int *v)
{
    const char *s = qkv_st_meta(fx, key);
    v[0] = v[1] = 0;
    if (s)
        sscanf(s, "%d,%d", &v[0], &v[1]);
}

/* The fixture's x, or x_nhwc seen as an NCHW view. */
static qkv_tensor *fixture_x(qkv_ctx *ctx, qkv_st_file *fx, qkv_tensor **leaf, const char **name)
{
    *name = qkv_st_find(fx, "x_nhwc") >= 0 ? "x_nhwc" : "x";
    *leaf = qkv_requires_grad(fixture_get(ctx, fx, *name));
    if (!*leaf)
        return NULL;
    return strcmp(*name, "x") ? qkv_permute(ctx, *leaf, (int[]){0, 3, 1, 2}) : *leaf;
}

/* t's gradient against the fixture's grad_<input>; the fixture's inputs
 * are the leaves, so the shapes compare as stored */
static void check_grad(qkv_ctx *ctx, qkv_st_file *fx, const char *name, const char *input,
                       const qkv_tensor *t, double atol, double rtol)
{
    char key[64];
    snprintf(key, sizeof key, "grad_%s", input);
    test_note("%s: %s", name, key);
    CHECK_CLOSE_GRAD(t, fixture_get(ctx, fx, key), atol, rtol);
}

/* atol: of the gradients, which sum B Ho Wo or Cout kh kw products */
static void parity_conv(const char *name, double atol)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    int s[2], p[2], d[2];
    meta_pair(fx, "stride", s);
    meta_pair(fx, "pad", p);
    meta_pair(fx, "dil", d);
    const char *groups = qkv_st_meta(fx, "groups");
    qkv_conv2d_opts o = {s[0], s[1], p[0], p[1], d[0], d[1], groups ? atoi(groups) : 1};
    const char *xname;
    qkv_tensor *xleaf, *x = fixture_x(ctx, fx, &xleaf, &xname);
    qkv_tensor *w = qkv_requires_grad(fixture_get(ctx, fx, "w"));
    qkv_tensor *b = qkv_st_find(fx, "b") >= 0 ? qkv_requires_grad(fixture_get(ctx, fx, "b"))
                                               : NULL;
    qkv_tensor *out = qkv_conv2d(ctx, x, w, b, &o);
    qkv_tensor *want = fixture_get(ctx, fx, "out"), *gout = fixture_get(ctx, fx, "gout");
    test_note("%s", name);
    CHECK_CLOSE(out, want, 5e-6, 1e-6);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK) {
        check_grad(ctx, fx, name, xname, xleaf, atol, 1e-6);
        check_grad(ctx, fx, name, "w", w, atol, 1e-6);
        if (b)
            check_grad(ctx, fx, name, "b", b, atol, 1e-6);
    } else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_conv2d)
{
    parity_conv("conv2d_basic", 1e-5);
    parity_conv("conv2d_stride2_pad1", 1e-5);
    parity_conv("conv2d_dil2", 1e-5);
    parity_conv("conv2d_groups2", 1e-5);
    parity_conv("conv2d_depthwise", 1e-5);
    parity_conv("conv2d_depthwise_s2_dil2", 1e-5);
    parity_conv("conv2d_1x1_nobias", 1e-5);
    parity_conv("conv2d_1x1_stride2", 1e-5);
    parity_conv("conv2d_patch", 1e-5);
    parity_conv("conv2d_chunks", 1e-4); /* grad_w: 960 terms up to 97 */
    parity_conv("conv2d_nhwc", 1e-5);
}

static void parity_pool(const char *name, int kind)
{
    qkv_st_file *fx = fixture_open(name);
    if (!fx)
        return;
    qkv_ctx *ctx = qkv_ctx_new();
    pool_case pc = {.kind = kind};
    meta_pair(fx, kind == 2 ? "out" : "kernel", pc.k);
    meta_pair(fx, "stride", pc.s);
    meta_pair(fx, "pad", pc.p);
    const char *xname;
    qkv_tensor *xleaf, *x = fixture_x(ctx, fx, &xleaf, &xname);
    qkv_tensor *out = x ? f_pool(ctx, &x, &pc) : NULL;
    qkv_tensor *want = fixture_get(ctx, fx, "out"), *gout = fixture_get(ctx, fx, "gout");
    test_note("%s", name);
    CHECK_CLOSE(out, want, 2e-7, 5e-7);
    if (out && gout && qkv_backward_with(ctx, out, gout->data) == QKV_OK)
        check_grad(ctx, fx, name, xname, xleaf, 0, 5e-7);
    else
        CHECK(0, "%s: %s", name, qkv_error());
    qkv_ctx_free(ctx);
    qkv_st_close(fx);
}

TEST(parity_pooling)
{
    parity_pool("max_pool2d_k3s2p1", 0);
    parity_pool("max_pool2d_ties", 0);
    parity_pool("max_pool2d_nhwc", 0);
    parity_pool("avg_pool2d_k3s2p1", 1);
    parity_pool("avg_pool2d_rect_nhwc", 1);
    parity_pool("adaptive_avg_pool2d_down", 2);
    parity_pool("adaptive_avg_pool2d_up_nhwc", 2);
}

/* A convolution gives its im2col columns and GEMM scratch back to the arena
 * once done: after the forward the step holds the output (plus its node),
 * after the backward the gradients, not 9 times the input's columns. */
TEST(conv2d_gives_scratch_back)
{
    qkv_ctx *ctx = qkv_ctx_new();
    qkv_rng_seed(qkv_ctx_rng(ctx), 7);
    const int64_t B = 2, C = 16, H = 24, W = 24;
    qkv_tensor *x = qkv_requires_grad(qkv_randn(ctx, 4, SHAPE(B, C, H, W), 0, 1));
    qkv_tensor *w = qkv_requires_grad(qkv_randn(ctx, 4, SHAPE(C, C, 3, 3), 0, 1));
    qkv_tensor *g = qkv_randn(ctx, 4, SHAPE(B, C, H, W), 0, 1);
    REQUIRE(x && w && g, "%s", qkv_error());
    const size_t act = (size_t)(B * C * H * W) * sizeof(float); /* 73,728 bytes */
    const size_t cols = act * 9 / (size_t)B;                     /* one image's columns */
    qkv_conv2d_opts o = {.pad_h = 1, .pad_w = 1};
    size_t before = qkv_arena_used(qkv_ctx_arena(ctx));
    qkv_tensor *y = qkv_conv2d(ctx, x, w, NULL, &o);
    REQUIRE(y, "%s", qkv_error());
    size_t fwd = qkv_arena_used(qkv_ctx_arena(ctx)) - before;
    test_note("forward held %zu bytes, output %zu, columns %zu", fwd, act, cols);
    CHECK(fwd >= act && fwd < act + 8192, "forward held %zu bytes", fwd);
    REQUIRE(qkv_backward_with(ctx, y, g->data) == QKV_OK, "%s", qkv_error());
    size_t bwd = qkv_arena_used(qkv_ctx_arena(ctx)) - before;
    /* gradients of x and w (and of y, seeded) at most, with alignment */
    size_t grads = 2 * act + (size_t)(C * C * 9) * sizeof(float);
    test_note("after backward %zu bytes, gradients %zu", bwd, grads);
    CHECK(bwd < grads + act + 16384 && bwd < grads + cols, "backward held %zu bytes", bwd);
    qkv_ctx_free(ctx);
}
