/* box.c - box coordinate forms, IoU and GIoU, forward and backward. Each
 * pair is computed in double from the float corners; the backward
 * recomputes the pair's intermediates instead of saving them. */
#include "box.h"

/* Below this many pairs a kernel stays on one thread. */
#define PAR_PAIRS 4096

/* ---- coordinate forms ---- */

void qkv_k_box_cxcywh_to_xyxy(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float *b = x + 4 * i;
        float *o = y + 4 * i;
        o[0] = b[0] - 0.5f * b[2];
        o[1] = b[1] - 0.5f * b[3];
        o[2] = b[0] + 0.5f * b[2];
        o[3] = b[1] + 0.5f * b[3];
    }
}

void qkv_k_box_cxcywh_to_xyxy_backward(float *dx, const float *dy, int64_t n)
{
    /* x0 = cx - w/2, x1 = cx + w/2: dcx = dx0 + dx1, dw = (dx1 - dx0) / 2 */
    for (int64_t i = 0; i < n; i++) {
        const float *g = dy + 4 * i;
        float *d = dx + 4 * i;
        d[0] += g[0] + g[2];
        d[1] += g[1] + g[3];
        d[2] += 0.5f * (g[2] - g[0]);
        d[3] += 0.5f * (g[3] - g[1]);
    }
}

void qkv_k_box_xyxy_to_cxcywh(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float *b = x + 4 * i;
        float *o = y + 4 * i;
        o[0] = (b[0] + b[2]) / 2;
        o[1] = (b[1] + b[3]) / 2;
        o[2] = b[2] - b[0];
        o[3] = b[3] - b[1];
    }
}

void qkv_k_box_xyxy_to_cxcywh_backward(float *dx, const float *dy, int64_t n)
{
    /* cx = (x0 + x1) / 2, w = x1 - x0: dx0 = dcx/2 - dw, dx1 = dcx/2 + dw */
    for (int64_t i = 0; i < n; i++) {
        const float *g = dy + 4 * i;
        float *d = dx + 4 * i;
        d[0] += 0.5f * g[0] - g[2];
        d[1] += 0.5f * g[1] - g[3];
        d[2] += 0.5f * g[0] + g[2];
        d[3] += 0.5f * g[1] + g[3];
    }
}

/* ---- one pair ---- */

typedef struct {
    double aw, ah, bw, bh; /* sides of a and b                      */
    double iw, ih;         /* intersection sides before the clamp   */
    double ew, eh;         /* enclosing sides before the clamp      */
    double inter, uni, enc;
} pair;

static inline double maxd(double x, double y) { return x > y ? x : y; }
static inline double mind(double x, double y) { return x < y ? x : y; }
static inline double clamp0(double x) { return x >= 0 ? x : 0; }

static inline void pair_parts(pair *p, const float *a, const float *b)
{
    p->aw = (double)a[2] - a[0];
    p->ah = (double)a[3] - a[1];
    p->bw = (double)b[2] - b[0];
    p->bh = (double)b[3] - b[1];
    p->iw = mind(a[2], b[2]) - maxd(a[0], b[0]);
    p->ih = mind(a[3], b[3]) - maxd(a[1], b[1]);
    p->ew = maxd(a[2], b[2]) - mind(a[0], b[0]);
    p->eh = maxd(a[3], b[3]) - mind(a[1], b[1]);
    p->inter = clamp0(p->iw) * clamp0(p->ih);
    p->uni = p->aw * p->ah + p->bw * p->bh - p->inter;
    p->enc = clamp0(p->ew) * clamp0(p->eh);
}

static inline double pair_value(const pair *p, bool generalized, double eps)
{
    double iou = p->inter / (p->uni + eps);
    return generalized ? iou - (p->enc - p->uni) / (p->enc + eps) : iou;
}

/* g d max(x, y): all to the larger, half each on a tie (PyTorch) */
static inline void dmax(double g, float x, float y, double *dx, double *dy)
{
    if (x > y)
        *dx += g;
    else if (x < y)
        *dy += g;
    else {
        *dx += 0.5 * g;
        *dy += 0.5 * g;
    }
}

/* g d min(x, y): all to the smaller, half each on a tie */
static inline void dmin(double g, float x, float y, double *dx, double *dy)
{
    if (x < y)
        *dx += g;
    else if (x > y)
        *dy += g;
    else {
        *dx += 0.5 * g;
        *dy += 0.5 * g;
    }
}

/* da, db (4) += g d value / d a, d b */
static void pair_backward(double g, const float *a, const float *b, bool generalized, double eps,
                          double *da, double *db)
{
    pair p;
    pair_parts(&p, a, b);
    double ue = p.uni + eps, dinter = 0, duni = 0, denc = 0;
    /* value = I / (U + eps) [- (E - U) / (E + eps)] */
    dinter += g / ue;
    duni -= g * p.inter / (ue * ue);
    if (generalized) {
        double ee = p.enc + eps;
        duni += g / ee;
        denc -= g * ue / (ee * ee);
    }
    /* U = area(a) + area(b) - I */
    dinter -= duni;
    da[2] += duni * p.ah, da[0] -= duni * p.ah, da[3] += duni * p.aw, da[1] -= duni * p.aw;
    db[2] += duni * p.bh, db[0] -= duni * p.bh, db[3] += duni * p.bw, db[1] -= duni * p.bw;
    /* I = clamp(iw) clamp(ih), iw = min(a2, b2) - max(a0, b0) */
    double diw = p.iw >= 0 ? dinter * clamp0(p.ih) : 0;
    double dih = p.ih >= 0 ? dinter * clamp0(p.iw) : 0;
    dmin(diw, a[2], b[2], &da[2], &db[2]);
    dmax(-diw, a[0], b[0], &da[0], &db[0]);
    dmin(dih, a[3], b[3], &da[3], &db[3]);
    dmax(-dih, a[1], b[1], &da[1], &db[1]);
    if (generalized) {
        /* E = clamp(ew) clamp(eh), ew = max(a2, b2) - min(a0, b0) */
        double dew = p.ew >= 0 ? denc * clamp0(p.eh) : 0;
        double deh = p.eh >= 0 ? denc * clamp0(p.ew) : 0;
        dmax(dew, a[2], b[2], &da[2], &db[2]);
        dmin(-dew, a[0], b[0], &da[0], &db[0]);
        dmax(deh, a[3], b[3], &da[3], &db[3]);
        dmin(-deh, a[1], b[1], &da[1], &db[1]);
    }
}

/* ---- pairwise ---- */

void qkv_k_box_iou_pairwise(float *out, const float *a, const float *b, int64_t N, int64_t M,
                            bool generalized)
{
#pragma omp parallel for if (N * M > PAR_PAIRS) schedule(static)
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < M; j++) {
            pair p;
            pair_parts(&p, a + 4 * i, b + 4 * j);
            out[i * M + j] = (float)pair_value(&p, generalized, 0.0);
        }
}

void qkv_k_box_iou_pairwise_backward(float *da, float *db, const float *g, const float *a,
                                     const float *b, int64_t N, int64_t M, bool generalized)
{
    /* one pass per side, each summing its row's pairs in double */
    if (da) {
#pragma omp parallel for if (N * M > PAR_PAIRS) schedule(static)
        for (int64_t i = 0; i < N; i++) {
            double sa[4] = {0}, sb[4] = {0};
            for (int64_t j = 0; j < M; j++)
                pair_backward(g[i * M + j], a + 4 * i, b + 4 * j, generalized, 0.0, sa, sb);
            for (int k = 0; k < 4; k++)
                da[4 * i + k] += (float)sa[k];
        }
    }
    if (db) {
#pragma omp parallel for if (N * M > PAR_PAIRS) schedule(static)
        for (int64_t j = 0; j < M; j++) {
            double sa[4] = {0}, sb[4] = {0};
            for (int64_t i = 0; i < N; i++)
                pair_backward(g[i * M + j], a + 4 * i, b + 4 * j, generalized, 0.0, sa, sb);
            for (int k = 0; k < 4; k++)
                db[4 * j + k] += (float)sb[k];
        }
    }
}

/* ---- row by row: the GIoU loss ---- */

void qkv_k_giou_loss(float *out, const float *a, const float *b, int64_t n, float eps)
{
    for (int64_t i = 0; i < n; i++) {
        pair p;
        pair_parts(&p, a + 4 * i, b + 4 * i);
        out[i] = (float)(1.0 - pair_value(&p, true, eps));
    }
}

double qkv_k_giou_loss_sum(const float *a, const float *b, int64_t n, float eps)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        pair p;
        pair_parts(&p, a + 4 * i, b + 4 * i);
        s += 1.0 - pair_value(&p, true, eps);
    }
    return s;
}

void qkv_k_giou_loss_backward(float *da, float *db, const float *g, int64_t stride,
                              const float *a, const float *b, int64_t n, float eps)
{
    for (int64_t i = 0; i < n; i++) {
        double sa[4] = {0}, sb[4] = {0};
        /* loss = 1 - GIoU */
        pair_backward(-(double)g[i * stride], a + 4 * i, b + 4 * i, true, eps, sa, sb);
        for (int k = 0; k < 4; k++) {
            if (da)
                da[4 * i + k] += (float)sa[k];
            if (db)
                db[4 * i + k] += (float)sb[k];
        }
    }
}
