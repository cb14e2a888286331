/* ops_conv.c - conv2d (NCHW) with stride, padding, dilation and groups, as
 * im2col + GEMM. With K = Cin/groups kh kw and P = Ho Wo, per group gi and
 * chunk of m images:
 *   col (K, m P)          = im2col of each image's group channels, side by side
 *   out[chunk, gi's outputs] (og, m P) = w_gi (og, K) col + bias
 * One image per chunk when P is wide enough for GEMM to run well; several
 * when it is not (ResNet's late stages, small images), so the column buffer
 * stays below K (CONV_COLS + P) floats. A large image is cut the other
 * way, into tiles of whole output rows (TILE_COLS), each with its own
 * im2col and GEMM written where the rows lie in out. A 1x1, stride-1,
 * unpadded convolution over one image is a GEMM on the image as it lies and
 * skips im2col. The backward recomputes col rather than keeping B of them,
 * and both directions give their column buffers back to the arena when done.
 * The input gradient of a stride-1 convolution is a convolution of the
 * output gradient by the flipped weights (flip_geom), one more im2col and a
 * GEMM into dx; other strides take col2im of w^T G.
 * Depthwise convolutions (one input channel per group) would make GEMMs of
 * one row; they go to a direct kernel instead.
 *
 * Threads: when the batch makes at least two units of work (chunks, or
 * images times tiles), the units are the parallel loop (each thread its own
 * column buffer, its GEMMs on one thread; the backward sums each thread's
 * dw and dbias in thread order; tiles write disjoint rows of out and dx).
 * One parallel region per convolution instead of several per image: with a
 * thread descheduled by a busy machine every region waits for it (layer1's
 * 3x3 conv of ResNet-18 on 28x28 images, batch 64, 2 threads, loaded
 * machine: forward 2270 -> 159 ms, backward 2240 -> 360 ms; PyTorch 2.15
 * 187 and 484 ms). DETR-R50's one 800x1066 image, 2 threads: 2160 ms
 * with one GEMM cut across the threads after a parallel im2col of the whole
 * image, 1570-1590 ms by tiles of 256 columns (128: 1660, 512: 1570, 1024:
 * 1620-1710). A single unit cuts its GEMM across the threads. */
#ifdef _OPENMP
#include <omp.h>
#endif
#include "../kernels/conv.h"
#include "../kernels/kernels.h"
#include "../qkv_internal.h"

/* The GEMM width a chunk of images aims at. Small: the column buffer of a
 * chunk should stay in L2 between im2col and the GEMM that reads it (MoCo's
 * ResNet-18 on 28x28 images, batch 128 a thread, two processes at once,
 * fwd + bwd of its convolutions: 512 columns 443 ms, 128 columns 406 ms;
 * the MoCo step 780 -> 733 ms with the flipped backward below). */
#define CONV_COLS 128

/* An image of more output pixels than TILE_COLS is cut into tiles of whole
 * output rows, each tile a unit of work with a column buffer of its own
 * (TILE_COLS columns or so), when it is alone in its batch or its column
 * buffer would be larger than TILE_FLOATS (half a Zen 4 core's L2): the
 * buffer stays in cache, and one large image (DETR's) is shared out to the
 * threads tile by tile, with no barrier between im2col and its GEMM. Not
 * below: MoCo's 28x28 images (K P = 144 x 784) ran 2-3% slower by tiles. */
#define TILE_COLS 256
#define TILE_FLOATS 131072

typedef struct {
    qkv_conv_geom g;
    int64_t groups;
    int64_t nb;         /* images per chunk */
    int64_t rows;       /* output rows per tile (nb = 1), else Ho */
    int64_t tiles;      /* tiles per image (1: whole chunks) */
    bool direct;        /* 1x1 GEMM on x itself */
    bool depthwise;     /* direct kernel, no GEMM */
} conv_plan;

static conv_plan plan_of(const qkv_conv_geom *g, int64_t B, int64_t Cin, int64_t groups)
{
    int64_t P = g->Ho * g->Wo, nb = (CONV_COLS + P - 1) / P;
    /* depthwise: one input channel per group, several groups. A single-channel
     * input (Cin = groups = 1, e.g. a grey image's patch embedding) is an
     * ordinary convolution and goes to GEMM, which spreads over the threads. */
    conv_plan p = {*g, groups, nb < B ? nb : B, g->Ho, 1, false, Cin == groups && groups > 1};
    p.direct = p.nb == 1 && g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 &&
               g->ph == 0 && g->pw == 0;
    int64_t K = Cin / groups * g->kh * g->kw;
    if (p.nb == 1 && P > TILE_COLS && g->Ho > 1 && (B == 1 || K * P > TILE_FLOATS)) {
        int64_t t = (P + TILE_COLS - 1) / TILE_COLS;
        p.rows = (g->Ho + (t < g->Ho ? t : g->Ho) - 1) / (t < g->Ho ? t : g->Ho);
        p.tiles = (g->Ho + p.rows - 1) / p.rows;
    }
    return p;
}

/* Output rows [a, b) of g as a convolution of their own: tg's input starts
 * at the returned input row, padded above only where the tile reaches above
 * the image; rows below tg's input read zeros as the image's padding does. */
static int64_t tile_geom(const qkv_conv_geom *g, int64_t a, int64_t b, qkv_conv_geom *tg)
{
    int64_t r0 = a * g->sh - g->ph; /* the first input row the tile's taps reach */
    int64_t off = r0 < 0 ? 0 : r0 < g->H ? r0 : g->H;
    *tg = *g;
    tg->Ho = b - a;
    tg->H = g->H - off;
    tg->ph = (int)(off - r0);
    return off;
}

/* Output rows r of image b (all groups): out where it lies (rows P apart)
 * = w_gi im2col(the tile) + bias; col the thread's buffer. */
static void forward_tile(const conv_plan *pl, const float *x, const float *w,
                         const float *bias, float *out, int64_t Cin, int64_t Cout, int64_t b,
                         int64_t r, float *col)
{
    const qkv_conv_geom *g = &pl->g;
    int64_t cg = Cin / pl->groups, og = Cout / pl->groups, K = cg * g->kh * g->kw;
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo;
    int64_t a = r * pl->rows, e = a + pl->rows < g->Ho ? a + pl->rows : g->Ho;
    int64_t p0 = a * g->Wo, cols = (e - a) * g->Wo;
    qkv_conv_geom tg;
    int64_t off = tile_geom(g, a, e, &tg);
    for (int64_t gi = 0; gi < pl->groups; gi++) {
        const float *X = x + (b * Cin + gi * cg) * HW;
        float *Y = out + (b * Cout + gi * og) * P + p0;
        if (pl->direct) { /* stride 1, no padding: the tile's pixels are x's */
            qkv_k_gemm(false, false, og, cols, K, 1.0f, w + gi * og * K, K, X + p0, P, 0.0f, Y,
                       P);
        } else {
            qkv_k_im2col_planes(col, cols, X + off * g->W, HW, cg, &tg);
            qkv_k_gemm(false, false, og, cols, K, 1.0f, w + gi * og * K, K, col, cols, 0.0f, Y,
                       P);
        }
        for (int64_t oc = 0; bias && oc < og; oc++)
            for (int64_t p = 0; p < cols; p++)
                Y[oc * P + p] += bias[gi * og + oc];
    }
}

/* col (K, m P) = im2col of images x_0 .. x_{m-1}, each x_i (cg, H, W) at
 * x + i image_stride */
static void im2col_chunk(float *col, const float *x, int64_t image_stride, int64_t m,
                         int64_t cg, const qkv_conv_geom *g)
{
    qkv_k_im2col_images(col, m * g->Ho * g->Wo, x, image_stride, m, cg, g);
}

/* Threads for a convolution over `chunks` chunks of images: qkv_threads()
 * when there are at least two chunks (the chunk loop is the parallel one),
 * else 1 (the GEMMs cut themselves across the threads). */
static int chunk_threads(int64_t chunks)
{
    int t = qkv_threads();
    if (chunks < 2 || t < 2)
        return 1;
    return chunks < t ? (int)chunks : t;
}

static int thread_id(int threads)
{
#ifdef _OPENMP
    return threads > 1 ? omp_get_thread_num() : 0;
#else
    (void)threads;
    return 0;
#endif
}

/* The input gradient of a stride-1 convolution is itself a stride-1
 * convolution: of G (og, Ho, Wo) by the weights flipped in both axes with
 * in- and out-channels swapped, padded (k - 1) d - p, to (cg, H, W):
 *   dx[c, y, x] = sum over o, i, j of w[o, c, i, j] G[o, y + p - i d, x + p - j d]
 * So dx = wf (cg, og kh kw) im2col(G): a GEMM as well shaped as the
 * forward's, added into dx where it lies, instead of a GEMM of inner size og
 * to a column buffer kh kw times dx's size and col2im. flip_geom fills that
 * convolution's geometry; false if the padding would be negative (then the
 * column buffer and col2im). */
static bool flip_geom(const qkv_conv_geom *g, qkv_conv_geom *f)
{
    int ph = (g->kh - 1) * g->dh - g->ph, pw = (g->kw - 1) * g->dw - g->pw;
    if (g->sh != 1 || g->sw != 1 || ph < 0 || pw < 0)
        return false;
    *f = (qkv_conv_geom){.H = g->Ho, .W = g->Wo, .Ho = g->H, .Wo = g->W, .kh = g->kh,
                         .kw = g->kw, .sh = 1, .sw = 1, .ph = ph, .pw = pw, .dh = g->dh,
                         .dw = g->dw};
    return true;
}

/* wf (groups, cg, og kh kw): wf[gi, c, (o kh + i) kw + j] = w[gi og + o, c, kh-1-i, kw-1-j] */
static void flip_weights(float *wf, const float *w, int64_t groups, int64_t og, int64_t cg,
                         int kh, int kw)
{
    int64_t taps = (int64_t)kh * kw;
    for (int64_t gi = 0; gi < groups; gi++)
        for (int64_t o = 0; o < og; o++)
            for (int64_t c = 0; c < cg; c++)
                for (int64_t t = 0; t < taps; t++)
                    wf[(gi * cg + c) * og * taps + o * taps + t] =
                        w[((gi * og + o) * cg + c) * taps + taps - 1 - t];
}

/* One chunk's backward (images b0 .. b0 + m): dx of its images, and its
 * share of dw, dbias added into gw, gb; col, dcol, gtmp, xtmp its thread's;
 * wf and fg the flipped weights and geometry (NULL: col2im). */
static void backward_chunk(const conv_plan *pl, const qkv_tensor *x, const qkv_tensor *w,
                           const float *gout, int64_t b0, int64_t m, float *gx, float *gw,
                           float *gb, float *col, float *dcol, float *gtmp, const float *wf,
                           const qkv_conv_geom *fg, float *xtmp)
{
    const qkv_conv_geom *g = &pl->g;
    int64_t Cin = x->shape[1], Cout = w->shape[0], nb = pl->nb;
    int64_t cg = Cin / pl->groups, og = Cout / pl->groups, K = cg * g->kh * g->kw;
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo, cols = m * P;
    for (int64_t gi = 0; gi < pl->groups; gi++) {
        const float *G = gout + (b0 * Cout + gi * og) * P;
        const float *X = x->data + (b0 * Cin + gi * cg) * HW;
        const float *Wg = w->data + gi * og * K;
        int64_t ldg = P;
        if (nb > 1) { /* gather the chunk's gradient rows side by side */
            for (int64_t o = 0; o < og; o++)
                for (int64_t i = 0; i < m; i++)
                    memcpy(gtmp + o * cols + i * P, G + (i * Cout + o) * P,
                           (size_t)P * sizeof(float));
            G = gtmp;
            ldg = cols;
        }
        if (gb)
            for (int64_t o = 0; o < og; o++) {
                double acc = 0;
                for (int64_t c = 0; c < cols; c++)
                    acc += G[o * ldg + c];
                gb[gi * og + o] += (float)acc;
            }
        if (gw) {
            if (!pl->direct)
                im2col_chunk(col, X, Cin * HW, m, cg, g);
            qkv_k_gemm(false, true, og, K, cols, 1.0f, G, ldg, pl->direct ? X : col, cols, 1.0f,
                       gw + gi * og * K, K);
        }
        if (gx && wf) {
            /* dx (cg, m H W) += wf_gi (cg, og kh kw) im2col(G) (og kh kw, m H W) */
            float *dX = gx + (b0 * Cin + gi * cg) * HW;
            const float *Gi = gout + (b0 * Cout + gi * og) * P;
            int64_t K2 = og * g->kh * g->kw, cols2 = m * HW;
            qkv_k_im2col_images(dcol, cols2, Gi, Cout * P, m, og, fg);
            if (m == 1) {
                qkv_k_gemm(false, false, cg, HW, K2, 1.0f, wf + gi * cg * K2, K2, dcol, HW, 1.0f,
                           dX, HW);
                continue;
            }
            qkv_k_gemm(false, false, cg, cols2, K2, 1.0f, wf + gi * cg * K2, K2, dcol, cols2,
                       0.0f, xtmp, cols2);
            for (int64_t i = 0; i < m; i++)
                for (int64_t c = 0; c < cg; c++) {
                    float *d = dX + i * Cin * HW + c * HW;
                    const float *r = xtmp + c * cols2 + i * HW;
                    for (int64_t p = 0; p < HW; p++)
                        d[p] += r[p];
                }
        } else if (gx) {
            float *dX = gx + (b0 * Cin + gi * cg) * HW;
            if (pl->direct) {
                qkv_k_gemm(true, false, cg, P, og, 1.0f, Wg, K, G, ldg, 1.0f, dX, P);
                continue;
            }
            qkv_k_gemm(true, false, K, cols, og, 1.0f, Wg, K, G, ldg, 0.0f, dcol, cols);
            qkv_k_col2im_images(dX, Cin * HW, dcol, cols, m, cg, g);
        }
    }
}

/* One tile's backward (output rows r of image b, all groups): its share of
 * dw and dbias added into gw, gb (the thread's), and the rows of dx it owns:
 * for a 1x1 direct convolution the tile's own pixels (w^T G), else tile r of
 * the flipped convolution (wf, fg; rx rows of dx a tile). col, dcol the
 * thread's buffers. */
static void backward_tile(const conv_plan *pl, const qkv_tensor *x, const qkv_tensor *w,
                          const float *gout, int64_t b, int64_t r, float *gx, float *gw,
                          float *gb, float *col, float *dcol, const float *wf,
                          const qkv_conv_geom *fg, int64_t rx)
{
    const qkv_conv_geom *g = &pl->g;
    int64_t Cin = x->shape[1], Cout = w->shape[0];
    int64_t cg = Cin / pl->groups, og = Cout / pl->groups, K = cg * g->kh * g->kw;
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo, K2 = og * g->kh * g->kw;
    int64_t a = r * pl->rows, e = a + pl->rows < g->Ho ? a + pl->rows : g->Ho;
    int64_t p0 = a * g->Wo, cols = (e - a) * g->Wo;
    int64_t ax = r * rx, ex = ax + rx < g->H ? ax + rx : g->H;
    qkv_conv_geom tg, tf;
    int64_t off = tile_geom(g, a, e, &tg), offg = wf && ax < ex ? tile_geom(fg, ax, ex, &tf) : 0;
    for (int64_t gi = 0; gi < pl->groups; gi++) {
        const float *G = gout + (b * Cout + gi * og) * P; /* (og, Ho Wo) */
        const float *X = x->data + (b * Cin + gi * cg) * HW;
        float *dX = gx ? gx + (b * Cin + gi * cg) * HW : NULL;
        for (int64_t o = 0; gb && o < og; o++) {
            double acc = 0;
            for (int64_t c = 0; c < cols; c++)
                acc += G[o * P + p0 + c];
            gb[gi * og + o] += (float)acc;
        }
        if (gw && pl->direct) /* dw_gi (og, cg) += G_tile x_tile^T */
            qkv_k_gemm(false, true, og, K, cols, 1.0f, G + p0, P, X + p0, P, 1.0f,
                       gw + gi * og * K, K);
        else if (gw) {
            qkv_k_im2col_planes(col, cols, X + off * g->W, HW, cg, &tg);
            qkv_k_gemm(false, true, og, K, cols, 1.0f, G + p0, P, col, cols, 1.0f,
                       gw + gi * og * K, K);
        }
        if (dX && pl->direct)
            qkv_k_gemm(true, false, cg, cols, og, 1.0f, w->data + gi * og * K, K, G + p0, P,
                       1.0f, dX + p0, HW);
        else if (dX && ax < ex) { /* dx rows [ax, ex) += wf_gi im2col(G's tile) */
            int64_t colsx = (ex - ax) * g->W;
            qkv_k_im2col_planes(dcol, colsx, G + offg * fg->W, P, og, &tf);
            qkv_k_gemm(false, false, cg, colsx, K2, 1.0f, wf + gi * cg * K2, K2, dcol, colsx,
                       1.0f, dX + ax * g->W, HW);
        }
    }
}

static void conv2d_backward(qkv_ctx *ctx, qkv_node *n)
{
    /* out = w_gi col(x) + bias, per chunk and group (G = out's gradient):
     *   dbias (og)    += G summed over columns
     *   dw_gi (og, K) += G col^T
     *   dcol (K, m P)  = w_gi^T G,  dx += col2im(dcol) */
    qkv_tensor *x = n->in[0], *w = n->in[1], *bias = n->in[2], *out = n->out;
    const conv_plan *pl = n->saved[0];
    const qkv_conv_geom *g = &pl->g;
    int64_t B = x->shape[0], Cin = x->shape[1], Cout = w->shape[0], nb = pl->nb;
    int64_t cg = Cin / pl->groups, og = Cout / pl->groups, K = cg * g->kh * g->kw;
    int64_t P = g->Ho * g->Wo, chunks = (B + nb - 1) / nb, nw = qkv_numel(w);
    float *gx = qkv__wants(n, 0) ? qkv__grad(ctx, x) : NULL;
    float *gw = qkv__wants(n, 1) ? qkv__grad(ctx, w) : NULL;
    float *gb = bias && qkv__wants(n, 2) ? qkv__grad(ctx, bias) : NULL;
    if (pl->depthwise) {
        qkv_k_conv2d_depthwise_backward(gx, gw, gb, out->grad, x->data, w->data, B, Cin, og, g);
        return;
    }
    qkv_conv_geom fg;
    bool flip = gx && !pl->direct && flip_geom(g, &fg);
    /* tiles unless dx comes by col2im, whose tiles would overlap */
    int64_t tiles = !gx || pl->direct || flip ? pl->tiles : 1, units = chunks * tiles;
    int64_t HW = g->H * g->W, rx = (g->H + tiles - 1) / tiles;
    int T = chunk_threads(units);
    int64_t ncol = K * (tiles > 1 ? pl->rows * g->Wo : nb * P);
    int64_t ndcol = flip ? og * g->kh * g->kw * (tiles > 1 ? rx * g->W : nb * HW) : ncol;
    int64_t nx = nb > 1 ? cg * nb * HW : 0;
    float *col = gw && !pl->direct ? qkv__floats(ctx, T * ncol) : NULL;
    float *dcol = gx && !pl->direct ? qkv__floats(ctx, T * ndcol) : NULL;
    float *gtmp = nb > 1 ? qkv__floats(ctx, T * og * nb * P) : NULL;
    float *wf = flip ? qkv__floats(ctx, nw) : NULL;
    float *xtmp = flip && nx ? qkv__floats(ctx, T * nx) : NULL;
    /* threads after the first sum their dw and dbias apart, added in order */
    float *part = T > 1 && (gw || gb) ? qkv__floats(ctx, (T - 1) * (nw + Cout)) : NULL;
    if ((qkv__wants(n, 0) && !gx) || (qkv__wants(n, 1) && !gw) || (nb > 1 && !gtmp) ||
        (!pl->direct && ((gw && !col) || (gx && !dcol))) || (T > 1 && (gw || gb) && !part) ||
        (flip && (!wf || (nx && !xtmp))))
        return;
    if (wf)
        flip_weights(wf, w->data, pl->groups, og, cg, g->kh, g->kw);
    if (part)
        memset(part, 0, (size_t)((T - 1) * (nw + Cout)) * sizeof(float));
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
    for (int64_t u = 0; u < units; u++) {
        int t = thread_id(T);
        float *pw = t ? part + (t - 1) * (nw + Cout) : NULL;
        int64_t c = u / tiles, b0 = c * nb, m = B - b0 < nb ? B - b0 : nb;
        if (tiles > 1) {
            backward_tile(pl, x, w, out->grad, c, u % tiles, gx, gw ? (t ? pw : gw) : NULL,
                          gb ? (t ? pw + nw : gb) : NULL, col ? col + t * ncol : NULL,
                          dcol ? dcol + t * ndcol : NULL, wf, &fg, rx);
            continue;
        }
        backward_chunk(pl, x, w, out->grad, b0, m, gx, gw ? (t ? pw : gw) : NULL,
                       gb ? (t ? pw + nw : gb) : NULL, col ? col + t * ncol : NULL,
                       dcol ? dcol + t * ndcol : NULL, gtmp ? gtmp + t * og * nb * P : NULL, wf,
                       &fg, xtmp ? xtmp + t * nx : NULL);
    }
    for (int t = 1; t < T; t++) {
        const float *pw = part ? part + (t - 1) * (nw + Cout) : NULL;
        for (int64_t i = 0; gw && i < nw; i++)
            gw[i] += pw[i];
        for (int64_t i = 0; gb && i < Cout; i++)
            gb[i] += pw[nw + i];
    }
    qkv__floats_done(ctx, part, (T - 1) * (nw + Cout));
    qkv__floats_done(ctx, xtmp, T * nx);
    qkv__floats_done(ctx, wf, nw);
    qkv__floats_done(ctx, gtmp, T * og * nb * P);
    qkv__floats_done(ctx, dcol, T * ndcol);
    qkv__floats_done(ctx, col, T * ncol);
}

/* Checks the shapes and fills the geometry; false (with the error) if bad. */
static bool conv2d_check(const qkv_tensor *x, const qkv_tensor *w, const qkv_tensor *bias,
                         const qkv_conv2d_opts *o, int64_t groups, qkv_conv_geom *g)
{
    char why[160];
    if (x->ndim != 4 || w->ndim != 4) {
        qkv__shape_error("conv2d", x, w, "input must be (B, Cin, H, W) and weight "
                                         "(Cout, Cin/groups, kh, kw)");
        return false;
    }
    if (o->stride_h < 0 || o->stride_w < 0 || o->dil_h < 0 || o->dil_w < 0 || o->pad_h < 0 ||
        o->pad_w < 0 || groups < 1) {
        qkv_set_error(QKV_ERR_ARG, "conv2d: stride (%d, %d), padding (%d, %d), dilation "
                      "(%d, %d) and groups %lld must not be negative", o->stride_h,
                      o->stride_w, o->pad_h, o->pad_w, o->dil_h, o->dil_w, (long long)groups);
        return false;
    }
    int64_t Cin = x->shape[1], Cout = w->shape[0];
    if (Cin % groups || Cout % groups || w->shape[1] * groups != Cin) {
        snprintf(why, sizeof why,
                 "input channels must equal weight's in-channels times groups (%lld), and "
                 "out-channels must divide by groups", (long long)groups);
        qkv__shape_error("conv2d", x, w, why);
        return false;
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != Cout)) {
        qkv__shape_error("conv2d", w, bias, "bias must be (Cout)");
        return false;
    }
    *g = (qkv_conv_geom){
        .H = x->shape[2], .W = x->shape[3],
        .kh = (int)w->shape[2], .kw = (int)w->shape[3],
        .sh = o->stride_h ? o->stride_h : 1, .sw = o->stride_w ? o->stride_w : 1,
        .ph = o->pad_h, .pw = o->pad_w,
        .dh = o->dil_h ? o->dil_h : 1, .dw = o->dil_w ? o->dil_w : 1,
    };
    int64_t span_h = (int64_t)g->dh * (g->kh - 1) + 1, span_w = (int64_t)g->dw * (g->kw - 1) + 1;
    int64_t in_h = g->H + 2 * (int64_t)g->ph, in_w = g->W + 2 * (int64_t)g->pw;
    if (g->kh < 1 || g->kw < 1 || in_h < span_h || in_w < span_w) {
        snprintf(why, sizeof why, "the kernel (dilated to %lldx%lld) is larger than the padded "
                 "input (%lldx%lld)", (long long)span_h, (long long)span_w, (long long)in_h,
                 (long long)in_w);
        qkv__shape_error("conv2d", x, w, why);
        return false;
    }
    g->Ho = (in_h - span_h) / g->sh + 1;
    g->Wo = (in_w - span_w) / g->sw + 1;
    return true;
}

qkv_tensor *qkv_conv2d(qkv_ctx *ctx, qkv_tensor *x, qkv_tensor *w, qkv_tensor *bias,
                       const qkv_conv2d_opts *opts)
{
    QKV_INPUTS("conv2d", x, w);
    qkv_conv2d_opts o = opts ? *opts : (qkv_conv2d_opts){0};
    int64_t groups = o.groups ? o.groups : 1;
    qkv_conv_geom geom;
    if (!conv2d_check(x, w, bias, &o, groups, &geom))
        return NULL;
    bool has_bias = bias != NULL;
    x = qkv_contiguous(ctx, x);
    w = qkv_contiguous(ctx, w);
    bias = has_bias ? qkv_contiguous(ctx, bias) : NULL;
    conv_plan *pl = qkv__alloc(ctx, sizeof *pl);
    if (!x || !w || (has_bias && !bias) || !pl)
        return NULL;
    int64_t B = x->shape[0], Cin = x->shape[1], Cout = w->shape[0];
    *pl = plan_of(&geom, B, Cin, groups);
    const qkv_conv_geom *g = &pl->g;
    int64_t cg = Cin / groups, og = Cout / groups, K = cg * g->kh * g->kw;
    int64_t HW = g->H * g->W, P = g->Ho * g->Wo, nb = pl->nb;
    qkv_tensor *out = qkv__tensor(ctx, 4, (int64_t[]){B, Cout, g->Ho, g->Wo});
    if (!out)
        return NULL;
    bool gemm = !pl->depthwise;
    int64_t chunks = (B + nb - 1) / nb, tiles = pl->tiles, units = chunks * tiles;
    int64_t ncol = K * (tiles > 1 ? pl->rows * g->Wo : nb * P), ny = og * nb * P;
    int T = gemm ? chunk_threads(units) : 1;
    float *col = gemm && !pl->direct ? qkv__floats(ctx, T * ncol) : NULL;
    float *ytmp = gemm && nb > 1 ? qkv__floats(ctx, T * ny) : NULL;
    if (gemm && ((!pl->direct && !col) || (nb > 1 && !ytmp)))
        return NULL;
    if (pl->depthwise)
        qkv_k_conv2d_depthwise(out->data, x->data, w->data, bias ? bias->data : NULL, B, Cin,
                               og, g);
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
    for (int64_t u = 0; u < (gemm ? units : 0); u++) {
        int t = thread_id(T);
        int64_t c = u / tiles, b0 = c * nb, m = B - b0 < nb ? B - b0 : nb, cols = m * P;
        float *colt = col ? col + t * ncol : NULL, *yt = ytmp ? ytmp + t * ny : NULL;
        if (tiles > 1) {
            forward_tile(pl, x->data, w->data, bias ? bias->data : NULL, out->data, Cin, Cout, c,
                         u % tiles, colt);
            continue;
        }
        for (int64_t gi = 0; gi < groups; gi++) {
            const float *X = x->data + (b0 * Cin + gi * cg) * HW;
            float *Y = out->data + (b0 * Cout + gi * og) * P;
            float *R = nb > 1 ? yt : Y; /* GEMM result (og, cols) */
            if (!pl->direct)
                im2col_chunk(colt, X, Cin * HW, m, cg, g);
            qkv_k_gemm(false, false, og, cols, K, 1.0f, w->data + gi * og * K, K,
                       pl->direct ? X : colt, cols, 0.0f, R, cols);
            /* out[b0 + i, gi's outputs] = R[:, i P : (i + 1) P] + bias */
            for (int64_t oc = 0; oc < og; oc++)
                for (int64_t i = 0; i < m; i++) {
                    float *dst = Y + (i * Cout + oc) * P;
                    const float *src = R + oc * cols + i * P;
                    float bo = bias ? bias->data[gi * og + oc] : 0.0f;
                    if (dst != src || bias)
                        for (int64_t p = 0; p < P; p++)
                            dst[p] = src[p] + bo;
                }
        }
    }
    qkv__floats_done(ctx, ytmp, T * ny);
    qkv__floats_done(ctx, col, T * ncol);
    qkv_node *n = qkv__record(ctx, QKV_OP_CONV2D, conv2d_backward, out, 3,
                              (qkv_tensor *[]){x, w, bias});
    if (n)
        n->saved[0] = pl;
    return qkv__done(ctx, QKV_OP_CONV2D, out);
}
