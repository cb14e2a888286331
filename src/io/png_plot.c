/* png_plot.c - the pictures of the book's figures, written as PNG: grids of
 * attention heatmaps (d2l's show_heatmaps) and training curves (d2l's
 * Animator: one line per metric, a legend, a grid).
 *
 * Everything is laid out in pixels on a qkv_canvas; text uses the bitmap
 * font of canvas.c at scale 2 (10 x 14 pixel glyphs), which reads well at
 * the sizes below without a font library. */
#include "canvas.h"

#include <math.h>
#include <stdio.h>

#define TEXT 2 /* font scale */
#define TICK 4 /* tick mark length */

static const qkv_rgb WHITE = {255, 255, 255}, BLACK = {0, 0, 0}, GRID = {224, 224, 224},
                     GREY = {128, 128, 128};

/* ---- ticks ---- */

/* A round step (1, 2 or 5 times a power of ten) giving about `want` ticks
 * over `range`. */
static double nice_step(double range, int want)
{
    double raw = range / want, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
}

/* Tick label of v for ticks `step` apart: as many decimals as the step
 * needs, so that 0.25 is not written 0.2500 and 1e-05 not 0.00. */
static void tick_label(char *buf, size_t n, double v, double step)
{
    if (fabs(v) < step * 1e-9)
        v = 0; /* no "-0" */
    if (step >= 1e-4 && fabs(v) < 1e6) {
        int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
        snprintf(buf, n, "%.*f", dec, v);
    } else
        snprintf(buf, n, "%.3g", v);
}

/* ---- heatmaps ---- */

/* ColorBrewer's 9-class Reds (matplotlib's 'Reds', d2l's default cmap). */
static qkv_rgb reds(double t)
{
    static const qkv_rgb stops[9] = {
        {255, 245, 240}, {254, 224, 210}, {252, 187, 161}, {252, 146, 114}, {251, 106, 74},
        {239, 59, 44},   {203, 24, 29},   {165, 15, 21},   {103, 0, 13},
    };
    if (!(t == t))
        return GREY;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double f = t * 8;
    int i = f >= 8 ? 7 : (int)f;
    f -= i;
    qkv_rgb a = stops[i], b = stops[i + 1];
    return (qkv_rgb){(uint8_t)lround(a.r + (b.r - a.r) * f),
                     (uint8_t)lround(a.g + (b.g - a.g) * f),
                     (uint8_t)lround(a.b + (b.b - a.b) * f)};
}

/* Index ticks of a matrix axis of n entries: 0, step, 2 step, .. */
static int64_t index_step(int64_t n)
{
    return n <= 6 ? 1 : (int64_t)nice_step((double)n, 5);
}

typedef struct {
    int64_t rows, cols, nq, nk;
    int cell, pw, ph, gap_x, gap_y;  /* panel size and gaps, pixels */
    int left, top, bar_x, width, height;
    double vmin, vmax;
} heat_layout;

static void heat_layout_make(heat_layout *L, const float *w, int64_t n_all,
                             const qkv_heatmap_opts *o)
{
    int64_t longest = L->nq > L->nk ? L->nq : L->nk;
    L->cell = o && o->cell > 0 ? o->cell : (int)(longest >= 100 ? 2 : 200 / longest);
    if (L->cell > 32)
        L->cell = 32;
    L->pw = (int)L->nk * L->cell;
    L->ph = (int)L->nq * L->cell;
    bool titles = o && o->titles;
    L->gap_x = 16;
    L->gap_y = 16 + (titles ? qkv__text_height(TEXT) + 6 : 0);
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)(L->nq - 1));
    /* ylabel, gap, tick labels, tick */
    L->left = 10 + qkv__text_height(TEXT) + 8 + qkv__text_width(buf, TEXT) + 4 + TICK;
    L->top = 10 + (titles ? qkv__text_height(TEXT) + 6 : 0);
    int grid_w = (int)L->cols * L->pw + (int)(L->cols - 1) * L->gap_x;
    int grid_h = (int)L->rows * L->ph + (int)(L->rows - 1) * L->gap_y;
    L->bar_x = L->left + grid_w + 20;
    L->vmin = INFINITY, L->vmax = -INFINITY;
    for (int64_t i = 0; i < n_all; i++)
        if (isfinite(w[i])) {
            L->vmin = fmin(L->vmin, w[i]);
            L->vmax = fmax(L->vmax, w[i]);
        }
    if (!(L->vmin <= L->vmax))
        L->vmin = 0, L->vmax = 1;
    if (L->vmax == L->vmin)
        L->vmax = L->vmin + 1;
    double step = nice_step(L->vmax - L->vmin, 5);
    int label_w = 0;
    for (double v = ceil(L->vmin / step) * step; v <= L->vmax + step * 1e-9; v += step) {
        tick_label(buf, sizeof buf, v, step);
        int tw = qkv__text_width(buf, TEXT);
        label_w = tw > label_w ? tw : label_w;
    }
    L->width = L->bar_x + 16 + TICK + 4 + label_w + 12;
    L->height = L->top + grid_h + TICK + 4 + qkv__text_height(TEXT) + 8 +
                qkv__text_height(TEXT) + 12;
}

/* One panel: the matrix, its frame, and its ticks where the grid wants them. */
static void heat_panel(qkv_canvas *c, const heat_layout *L, const float *m, int px, int py,
                       bool x_ticks, bool y_ticks)
{
    for (int64_t q = 0; q < L->nq; q++)
        for (int64_t k = 0; k < L->nk; k++) {
            double t = (m[q * L->nk + k] - L->vmin) / (L->vmax - L->vmin);
            int x = px + (int)k * L->cell, y = py + (int)q * L->cell;
            qkv__fill_rect(c, x, y, x + L->cell, y + L->cell, reds(t));
        }
    qkv__stroke_rect(c, px - 1, py - 1, px + L->pw + 1, py + L->ph + 1, BLACK);
    char buf[32];
    int64_t sx = index_step(L->nk), sy = index_step(L->nq);
    for (int64_t k = 0; x_ticks && k < L->nk; k += sx) {
        int x = px + (int)k * L->cell + L->cell / 2;
        qkv__fill_rect(c, x, py + L->ph + 1, x + 1, py + L->ph + 1 + TICK, BLACK);
        snprintf(buf, sizeof buf, "%lld", (long long)k);
        qkv__text(c, x - qkv__text_width(buf, TEXT) / 2, py + L->ph + 1 + TICK + 4, buf, TEXT,
                  BLACK);
    }
    for (int64_t q = 0; y_ticks && q < L->nq; q += sy) {
        int y = py + (int)q * L->cell + L->cell / 2;
        qkv__fill_rect(c, px - 1 - TICK, y, px - 1, y + 1, BLACK);
        snprintf(buf, sizeof buf, "%lld", (long long)q);
        qkv__text(c, px - 1 - TICK - 4 - qkv__text_width(buf, TEXT),
                  y - qkv__text_height(TEXT) / 2, buf, TEXT, BLACK);
    }
}

/* The colour bar beside the grid, from vmin (bottom) to vmax (top). */
static void heat_bar(qkv_canvas *c, const heat_layout *L, int y0, int y1)
{
    int x = L->bar_x, h = y1 - y0;
    for (int y = y0; y < y1; y++)
        qkv__fill_rect(c, x, y, x + 16, y + 1, reds((double)(y1 - 1 - y) / (h > 1 ? h - 1 : 1)));
    qkv__stroke_rect(c, x - 1, y0 - 1, x + 17, y1 + 1, BLACK);
    double step = nice_step(L->vmax - L->vmin, 5);
    char buf[32];
    for (double v = ceil(L->vmin / step) * step; v <= L->vmax + step * 1e-9; v += step) {
        int y = y1 - 1 - (int)lround((v - L->vmin) / (L->vmax - L->vmin) * (h - 1));
        qkv__fill_rect(c, x + 17, y, x + 17 + TICK, y + 1, BLACK);
        tick_label(buf, sizeof buf, v, step);
        qkv__text(c, x + 17 + TICK + 4, y - qkv__text_height(TEXT) / 2, buf, TEXT, BLACK);
    }
}

qkv_status qkv_plot_heatmaps(const char *path, const float *w, int64_t rows, int64_t cols,
                             int64_t nq, int64_t nk, const qkv_heatmap_opts *opts)
{
    if (!path || !w || rows < 1 || cols < 1 || nq < 1 || nk < 1 || rows * cols > 256 ||
        nq > 4096 || nk > 4096)
        return qkv_set_error(QKV_ERR_ARG, "qkv_plot_heatmaps: bad arguments (%lld x %lld "
                             "panels of %lld x %lld)", (long long)rows, (long long)cols,
                             (long long)nq, (long long)nk);
    heat_layout L = {.rows = rows, .cols = cols, .nq = nq, .nk = nk};
    heat_layout_make(&L, w, rows * cols * nq * nk, opts);
    if ((int64_t)L.width * L.height > QKV_IMAGE_MAX_PIXELS)
        return qkv_set_error(QKV_ERR_ARG, "qkv_plot_heatmaps: %s: a %d x %d picture is too "
                             "large; set opts.cell smaller", path, L.width, L.height);
    qkv_canvas c;
    if (qkv__canvas_new(&c, L.width, L.height, WHITE) != QKV_OK)
        return QKV_ERR_NOMEM;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++) {
            int px = L.left + (int)k * (L.pw + L.gap_x), py = L.top + (int)r * (L.ph + L.gap_y);
            heat_panel(&c, &L, w + (r * cols + k) * nq * nk, px, py, r == rows - 1, k == 0);
            const char *title = opts && opts->titles ? opts->titles[r * cols + k] : NULL;
            if (title)
                qkv__text(&c, px + (L.pw - qkv__text_width(title, TEXT)) / 2,
                          py - 6 - qkv__text_height(TEXT), title, TEXT, BLACK);
        }
    int grid_w = (int)cols * L.pw + (int)(cols - 1) * L.gap_x;
    int grid_h = (int)rows * L.ph + (int)(rows - 1) * L.gap_y;
    heat_bar(&c, &L, L.top, L.top + grid_h);
    const char *xl = opts && opts->xlabel ? opts->xlabel : "Keys";
    const char *yl = opts && opts->ylabel ? opts->ylabel : "Queries";
    qkv__text(&c, L.left + (grid_w - qkv__text_width(xl, TEXT)) / 2,
              L.height - 12 - qkv__text_height(TEXT), xl, TEXT, BLACK);
    qkv__text_up(&c, 10, L.top + (grid_h - qkv__text_width(yl, TEXT)) / 2, yl, TEXT, BLACK);
    qkv_status st = qkv__canvas_write(&c, path);
    qkv__canvas_free(&c);
    return st;
}

/* ---- training curves ---- */

typedef struct {
    int x0, y0, x1, y1;          /* plot area, pixels */
    double xmin, xmax, ymin, ymax; /* data range (log10 of y if log_y) */
    int log_y;
} frame;

static double series_x(const qkv_series *s, int64_t i)
{
    return s->x ? s->x[i] : (double)(i + 1);
}

static double fy(const frame *f, double y)
{
    return f->log_y ? (y > 0 ? log10(y) : NAN) : y;
}

static double to_px(const frame *f, double x) /* data x -> pixel x */
{
    return f->x0 + (x - f->xmin) / (f->xmax - f->xmin) * (f->x1 - f->x0);
}

static double to_py(const frame *f, double y) /* data y (log10 if log) -> pixel y */
{
    return f->y1 - (y - f->ymin) / (f->ymax - f->ymin) * (f->y1 - f->y0);
}

static void data_range(frame *f, int n, const qkv_series *s)
{
    f->xmin = f->ymin = INFINITY;
    f->xmax = f->ymax = -INFINITY;
    for (int k = 0; k < n; k++)
        for (int64_t i = 0; i < s[k].n; i++) {
            double x = series_x(&s[k], i), y = fy(f, s[k].y[i]);
            if (!isfinite(x) || !isfinite(y))
                continue;
            f->xmin = fmin(f->xmin, x), f->xmax = fmax(f->xmax, x);
            f->ymin = fmin(f->ymin, y), f->ymax = fmax(f->ymax, y);
        }
    if (!(f->xmin <= f->xmax))
        f->xmin = 0, f->xmax = 1;
    if (!(f->ymin <= f->ymax))
        f->ymin = 0, f->ymax = 1;
    if (f->xmax == f->xmin)
        f->xmin -= 0.5, f->xmax += 0.5;
    if (f->ymax == f->ymin)
        f->ymin -= 0.5, f->ymax += 0.5;
    double pad = (f->ymax - f->ymin) * 0.05; /* as matplotlib's margins */
    f->ymin -= pad, f->ymax += pad;
}

/* y tick values: round steps, or whole powers of ten on a log axis */
static int y_ticks(const frame *f, double *v, double *step)
{
    int n = 0;
    if (f->log_y) {
        *step = 1;
        double s = ceil((f->ymax - f->ymin) / 6);
        for (double e = ceil(f->ymin); e <= f->ymax && n < 16; e += s)
            v[n++] = e;
        return n;
    }
    *step = nice_step(f->ymax - f->ymin, 5);
    for (double y = ceil(f->ymin / *step) * *step; y <= f->ymax + *step * 1e-9 && n < 16;
         y += *step)
        v[n++] = y;
    return n;
}

static void y_label_of(const frame *f, char *buf, size_t len, double v, double step)
{
    if (f->log_y)
        snprintf(buf, len, "%g", pow(10, v));
    else
        tick_label(buf, len, v, step);
}

static void axes(qkv_canvas *c, const frame *f, const qkv_plot_opts *o)
{
    char buf[32];
    double xs = nice_step(f->xmax - f->xmin, 6), yv[16], ys;
    if (xs < 1 && f->xmax - f->xmin >= 2)
        xs = 1;
    int ny = y_ticks(f, yv, &ys);
    for (double x = ceil(f->xmin / xs) * xs; x <= f->xmax + xs * 1e-9; x += xs) {
        int px = (int)lround(to_px(f, x));
        qkv__fill_rect(c, px, f->y0, px + 1, f->y1, GRID);
        qkv__fill_rect(c, px, f->y1, px + 1, f->y1 + TICK, BLACK);
        tick_label(buf, sizeof buf, x, xs);
        qkv__text(c, px - qkv__text_width(buf, TEXT) / 2, f->y1 + TICK + 4, buf, TEXT, BLACK);
    }
    for (int i = 0; i < ny; i++) {
        int py = (int)lround(to_py(f, yv[i]));
        qkv__fill_rect(c, f->x0, py, f->x1, py + 1, GRID);
        qkv__fill_rect(c, f->x0 - TICK, py, f->x0, py + 1, BLACK);
        y_label_of(f, buf, sizeof buf, yv[i], ys);
        qkv__text(c, f->x0 - TICK - 4 - qkv__text_width(buf, TEXT),
                  py - qkv__text_height(TEXT) / 2, buf, TEXT, BLACK);
    }
    qkv__stroke_rect(c, f->x0 - 1, f->y0 - 1, f->x1 + 1, f->y1 + 1, BLACK);
    const char *xl = o && o->xlabel ? o->xlabel : "epoch";
    qkv__text(c, (f->x0 + f->x1 - qkv__text_width(xl, TEXT)) / 2, c->h - 10 -
              qkv__text_height(TEXT), xl, TEXT, BLACK);
    if (o && o->ylabel)
        qkv__text_up(c, 10, (f->y0 + f->y1 - qkv__text_width(o->ylabel, TEXT)) / 2, o->ylabel,
                     TEXT, BLACK);
    if (o && o->title)
        qkv__text(c, (f->x0 + f->x1 - qkv__text_width(o->title, TEXT)) / 2, 10, o->title, TEXT,
                  BLACK);
}

/* d2l's default formats '-', 'm--', 'g-.', 'r:', then matplotlib's cycle
 * (ten colours, so that ten classes of points differ). */
static void style(int k, qkv_rgb *col, qkv_dash *dash)
{
    static const qkv_rgb cols[10] = {
        {31, 119, 180}, {191, 0, 191}, {0, 128, 0}, {255, 0, 0},
        {255, 127, 14}, {148, 103, 189}, {140, 86, 75}, {23, 190, 207},
        {127, 127, 127}, {188, 189, 34},
    };
    static const qkv_dash dashes[4] = {QKV_SOLID, QKV_DASHED, QKV_DASHDOT, QKV_DOTTED};
    *col = cols[k % 10];
    *dash = k < 4 ? dashes[k] : QKV_SOLID;
}

static int legend_width(int n, const qkv_series *s)
{
    int wmax = 0;
    for (int k = 0; k < n; k++) {
        int tw = qkv__text_width(s[k].name ? s[k].name : "", TEXT);
        wmax = tw > wmax ? tw : wmax;
    }
    return 10 + 36 + 8 + wmax + 10;
}

/* The legend's box with its top-left corner at (bx, by). */
static void legend(qkv_canvas *c, int bx, int by, int n, const qkv_series *s)
{
    int row = qkv__text_height(TEXT) + 8;
    int bw = legend_width(n, s), bh = 6 + n * row + 2;
    qkv__fill_rect(c, bx, by, bx + bw, by + bh, WHITE);
    qkv__stroke_rect(c, bx, by, bx + bw, by + bh, (qkv_rgb){200, 200, 200});
    for (int k = 0; k < n; k++) {
        qkv_rgb col;
        qkv_dash dash;
        style(k, &col, &dash);
        double y = by + 6 + k * row + qkv__text_height(TEXT) / 2.0;
        double lx[2] = {bx + 10, bx + 46}, ly[2] = {y, y};
        if (s[k].points) /* a dot in the middle of the sample */
            lx[0] = lx[1] = (lx[0] + lx[1]) / 2;
        qkv__polyline(c, lx, ly, 2, s[k].points ? 6.0 : 2.0, col, s[k].points ? QKV_SOLID : dash);
        qkv__text(c, bx + 54, by + 6 + k * row, s[k].name ? s[k].name : "", TEXT, BLACK);
    }
}

qkv_status qkv_plot_lines(const char *path, int nseries, const qkv_series *series,
                          const qkv_plot_opts *opts)
{
    if (!path || nseries < 1 || nseries > 32 || !series)
        return qkv_set_error(QKV_ERR_ARG, "qkv_plot_lines: bad arguments (%d series)",
                             nseries);
    for (int k = 0; k < nseries; k++)
        if (series[k].n < 0 || (series[k].n > 0 && !series[k].y))
            return qkv_set_error(QKV_ERR_ARG, "qkv_plot_lines: series %d ('%s') has no data",
                                 k, series[k].name ? series[k].name : "");
    frame f = {.log_y = opts && opts->log_y};
    data_range(&f, nseries, series);
    /* the left margin fits the widest y tick label */
    double yv[16], ys;
    int ny = y_ticks(&f, yv, &ys), label_w = 0;
    char buf[32];
    for (int i = 0; i < ny; i++) {
        y_label_of(&f, buf, sizeof buf, yv[i], ys);
        int tw = qkv__text_width(buf, TEXT);
        label_w = tw > label_w ? tw : label_w;
    }
    /* a scatter (every series dots, as an embedding's classes) fills its
     * frame: its legend goes to the right of it, where it hides no point */
    bool outside = true;
    for (int k = 0; k < nseries; k++)
        outside = outside && series[k].points;
    const int lw = legend_width(nseries, series), W = 640 + (outside ? lw + 16 : 0), H = 440;
    f.x0 = 10 + (opts && opts->ylabel ? qkv__text_height(TEXT) + 10 : 0) + label_w + 4 + TICK;
    f.x1 = 640 - 24;
    f.y0 = 14 + (opts && opts->title ? qkv__text_height(TEXT) + 10 : 0);
    f.y1 = H - (10 + qkv__text_height(TEXT) + 10 + qkv__text_height(TEXT) + 4 + TICK);
    qkv_canvas c;
    if (qkv__canvas_new(&c, W, H, WHITE) != QKV_OK)
        return QKV_ERR_NOMEM;
    axes(&c, &f, opts);
    for (int k = 0; k < nseries; k++) {
        const qkv_series *s = &series[k];
        double *px = qkv__malloc((size_t)(s->n + 1) * 2 * sizeof(double));
        if (!px) {
            qkv__canvas_free(&c);
            return QKV_ERR_NOMEM;
        }
        double *py = px + s->n + 1;
        for (int64_t i = 0; i < s->n; i++) {
            px[i] = to_px(&f, series_x(s, i));
            py[i] = to_py(&f, fy(&f, s->y[i]));
        }
        if (s->n == 1) /* a single point: a dot */
            px[1] = px[0], py[1] = py[0];
        qkv_rgb col;
        qkv_dash dash;
        style(k, &col, &dash);
        if (s->points) /* each point a dot: a zero-length stroke with round ends */
            for (int64_t i = 0; i < s->n; i++) {
                double dx[2] = {px[i], px[i]}, dy[2] = {py[i], py[i]};
                qkv__polyline(&c, dx, dy, 2, 6.0, col, QKV_SOLID);
            }
        else
            qkv__polyline(&c, px, py, s->n == 1 ? 2 : (int)s->n, s->n == 1 ? 5.0 : 2.0, col,
                          s->n == 1 ? QKV_SOLID : dash);
        qkv__free(px);
    }
    legend(&c, outside ? f.x1 + 16 : f.x1 - 10 - lw, outside ? f.y0 : f.y0 + 10, nseries,
           series);
    qkv_status st = qkv__canvas_write(&c, path);
    qkv__canvas_free(&c);
    return st;
}
