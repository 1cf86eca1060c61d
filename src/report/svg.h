/* svg.h -- a growable text buffer and the few pieces of an SVG plot that the
 * HTML report draws (report.c): axes with ticks on linear or log scales,
 * lines, points, legends, PNG images as data URIs. Not installed. */
#ifndef PK_SVG_H
#define PK_SVG_H

#include "pathkernel.h"

#include <stddef.h>

/* A growable NUL-terminated string; err is set (and further output dropped)
 * when an allocation fails. */
typedef struct pk_sb { char *s; size_t n, cap; int err; } pk_sb;

void pk_sb_printf(pk_sb *b, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void pk_sb_puts(pk_sb *b, const char *s);
/* Text with &, <, >, " escaped. */
void pk_sb_esc(pk_sb *b, const char *s);
void pk_sb_free(pk_sb *b);

/* A plot area: pixels (x, y, w, h) inside the SVG and the data range
 * [x0, x1] x [y0, y1]; on a log axis the range is in log10 units. */
typedef struct pk_plot {
    double x, y, w, h;
    double x0, x1, y0, y1;
    int logx, logy;
    int hide_y;   /* no y ticks or grid (bar charts with their own row labels) */
    int hide_x;   /* no x ticks or grid (the caller draws its own, pk_plot_xtick) */
} pk_plot;

/* Set the range of one axis from data lo..hi (positive on a log axis),
 * padded a little and widened when lo == hi. */
void pk_plot_range(double lo, double hi, int log, double *a0, double *a1);
/* Pixel coordinates of a data value (log axes take the value itself). */
double pk_plot_px(const pk_plot *p, double v);
double pk_plot_py(const pk_plot *p, double v);
/* Frame, grid, ticks with labels, axis labels (x below, y rotated). */
void pk_plot_axes(pk_sb *b, const pk_plot *p, const char *xlabel, const char *ylabel);
/* One x tick with grid line and label at data value v (for hide_x plots). */
void pk_plot_xtick(pk_sb *b, const pk_plot *p, double v, const char *label);
/* A polyline through n points (NaN and, on log axes, non-positive values break it). */
void pk_plot_line(pk_sb *b, const pk_plot *p, const double *x, const double *y, size_t n, const char *color,
                  double width, const char *dash);
/* Circles of radius r at n points. */
void pk_plot_points(pk_sb *b, const pk_plot *p, const double *x, const double *y, size_t n, const char *color,
                    double r, double opacity);
/* A legend box at (x, y) (pixels): n entries, each a colour swatch (a dot
 * where bit i of `dots` is set, else a line) and a label. */
void pk_plot_legend(pk_sb *b, double x, double y, size_t n, const char *const *colors, const char *const *labels,
                    int dots);
/* A number for an axis or a caption: %g with 3 significant digits. */
void pk_fmt_num(char *buf, size_t len, double v);

/* A PNG (grey: channels 1, RGB: 3) of h x w 8-bit pixels, row-major, as a
 * data URI appended to b (base64). Returns 0 on success. */
int pk_sb_png(pk_sb *b, const unsigned char *pix, size_t h, size_t w, int channels);
/* PNG of an h x w image with 1 (grey), 3 (RGB) or 4 (RGBA) 8-bit channels,
 * row-major, encoded by libpng into *png (malloc'ed; free() it). */
pk_status pk_png_encode(const unsigned char *pix, size_t h, size_t w, int channels, unsigned char **png, size_t *len);
/* Standard base64 (RFC 4648, padded) of n bytes, malloc'ed and NUL-terminated; NULL when out of memory. */
char *pk_base64(const void *data, size_t n);

/* The categorical colours of the report (10, cycling). */
const char *pk_color(size_t i);

#endif
