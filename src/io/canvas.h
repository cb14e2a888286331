/*
 * canvas.h - an 8-bit RGB canvas for the PNG pictures (png_plot.c):
 * rectangles, anti-aliased lines with dash patterns, and text in a built-in
 * 5 x 7 bitmap font (printable ASCII) drawn at an integer scale, across or
 * up the page.
 */
#ifndef QKV_IO_CANVAS_H
#define QKV_IO_CANVAS_H

#include "io_internal.h"

typedef struct {
    uint8_t r, g, b;
} qkv_rgb;

typedef struct {
    int w, h;
    uint8_t *px; /* (h, w, 3) */
} qkv_canvas;

/* Dash patterns of lines, as matplotlib's '-', '--', '-.', ':'. */
typedef enum { QKV_SOLID = 0, QKV_DASHED, QKV_DASHDOT, QKV_DOTTED } qkv_dash;

#define QKV_GLYPH_W 5
#define QKV_GLYPH_H 7

/* A canvas filled with `bg`; NULL px with an error if out of memory. */
qkv_status qkv__canvas_new(qkv_canvas *c, int w, int h, qkv_rgb bg);
void qkv__canvas_free(qkv_canvas *c);
/* Writes the canvas as an RGB PNG. */
qkv_status qkv__canvas_write(const qkv_canvas *c, const char *path);

/* Pixels x in [x0, x1), y in [y0, y1), clipped. */
void qkv__fill_rect(qkv_canvas *c, int x0, int y0, int x1, int y1, qkv_rgb col);
/* A one-pixel outline of the same rectangle. */
void qkv__stroke_rect(qkv_canvas *c, int x0, int y0, int x1, int y1, qkv_rgb col);
/* A polyline through (xs[i], ys[i]) (pixel centres at .5), `width` pixels
 * wide, anti-aliased; the dash pattern runs on along the whole line. */
void qkv__polyline(qkv_canvas *c, const double *xs, const double *ys, int n, double width,
                   qkv_rgb col, qkv_dash dash);

/* Text extent in pixels at `scale` (one line, 1 pixel between glyphs). */
int qkv__text_width(const char *s, int scale);
int qkv__text_height(int scale);
/* Draws s with its top-left corner at (x, y). Characters outside printable
 * ASCII are drawn as '?'. */
void qkv__text(qkv_canvas *c, int x, int y, const char *s, int scale, qkv_rgb col);
/* Draws s rotated a quarter turn counter-clockwise (reading upwards), its
 * bounding box's top-left corner at (x, y). */
void qkv__text_up(qkv_canvas *c, int x, int y, const char *s, int scale, qkv_rgb col);

#endif
