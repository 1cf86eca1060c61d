/* svg.c -- text buffer, SVG plot pieces and PNG data URIs for the HTML report
 * (report.c). The PNGs are encoded by libpng into memory, base64 is our own. */
#include "report/svg.h"
#include "base/base.h"

#include <math.h>
#include <png.h>
#include <stdarg.h>
#include <string.h>

/* ------------------------------------------------------------------ buffer */

static int sb_reserve(pk_sb *b, size_t extra)
{
    if (b->err) return -1;
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra + 1) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) { b->err = 1; return -1; }
    b->s = s;
    b->cap = cap;
    return 0;
}

void pk_sb_printf(pk_sb *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (k < 0 || sb_reserve(b, (size_t)k)) return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

void pk_sb_puts(pk_sb *b, const char *s)
{
    size_t k = strlen(s);
    if (sb_reserve(b, k)) return;
    memcpy(b->s + b->n, s, k + 1);
    b->n += k;
}

void pk_sb_esc(pk_sb *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': pk_sb_puts(b, "&amp;"); break;
        case '<': pk_sb_puts(b, "&lt;"); break;
        case '>': pk_sb_puts(b, "&gt;"); break;
        case '"': pk_sb_puts(b, "&quot;"); break;
        default: {
            char c[2] = {*s, 0};
            pk_sb_puts(b, c);
        }
        }
    }
}

void pk_sb_free(pk_sb *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

/* -------------------------------------------------------------------- PNG */

typedef struct membuf { unsigned char *p; size_t n, cap; int err; } membuf;

static void png_write_mem(png_structp png, png_bytep data, png_size_t len)
{
    membuf *m = png_get_io_ptr(png);
    if (m->err) return;
    if (m->n + len > m->cap) {
        size_t cap = m->cap ? m->cap : 1024;
        while (cap < m->n + len) cap *= 2;
        unsigned char *p = realloc(m->p, cap);
        if (!p) { m->err = 1; return; }
        m->p = p;
        m->cap = cap;
    }
    memcpy(m->p + m->n, data, len);
    m->n += len;
}

static void png_flush_mem(png_structp png) { (void)png; }

pk_status pk_png_encode(const unsigned char *pix, size_t h, size_t w, int channels, unsigned char **png_out,
                        size_t *len)
{
    *png_out = NULL;
    *len = 0;
    if (!h || !w || (channels != 1 && channels != 3 && channels != 4) || h > 0x7fffffff || w > 0x7fffffff / 4)
        return pk_fail(PK_ERR_INPUT, "PNG: bad image shape %zu x %zu x %d", h, w, channels);
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *rows = calloc(h, sizeof *rows);
    if (!png || !info || !rows) {
        png_destroy_write_struct(&png, &info);
        free(rows);
        return pk_fail(PK_ERR_NOMEM, "PNG: out of memory");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(rows);
        free(m.p);
        return pk_fail(PK_ERR_INTERNAL, "PNG: libpng failed to encode a %zu x %zu image", h, w);
    }
    int type = channels == 1 ? PNG_COLOR_TYPE_GRAY : channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGBA;
    png_set_write_fn(png, &m, png_write_mem, png_flush_mem);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (size_t i = 0; i < h; i++) rows[i] = (png_bytep)(pix + i * w * (size_t)channels);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    if (m.err) { free(m.p); return pk_fail(PK_ERR_NOMEM, "PNG: out of memory"); }
    *png_out = m.p;
    *len = m.n;
    return PK_OK;
}

char *pk_base64(const void *data, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = data;
    if (n > ((size_t)-1 / 4) * 3 - 3) { pk_fail(PK_ERR_NOMEM, "base64: input too large"); return NULL; }
    size_t out_n = (n + 2) / 3 * 4;
    char *s = pk_alloc(out_n + 1, 1), *o = s;
    if (!s) return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        *o++ = tab[v >> 18 & 63]; *o++ = tab[v >> 12 & 63]; *o++ = tab[v >> 6 & 63]; *o++ = tab[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = '=';
    }
    *o = 0;
    return s;
}

int pk_sb_png(pk_sb *b, const unsigned char *pix, size_t h, size_t w, int channels)
{
    unsigned char *png;
    size_t len;
    if (pk_png_encode(pix, h, w, channels, &png, &len)) return -1;
    char *s = pk_base64(png, len);
    free(png);
    if (!s) return -1;
    pk_sb_puts(b, "data:image/png;base64,");
    pk_sb_puts(b, s);
    free(s);
    return b->err ? -1 : 0;
}

/* ------------------------------------------------------------------- plots */

const char *pk_color(size_t i)
{
    static const char *const c[10] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    return c[i % 10];
}

void pk_fmt_num(char *buf, size_t len, double v)
{
    if (v == 0) { snprintf(buf, len, "0"); return; }
    snprintf(buf, len, "%.3g", v);
}

void pk_plot_range(double lo, double hi, int log, double *a0, double *a1)
{
    if (log) {
        lo = log10(lo);
        hi = log10(hi);
    }
    if (!isfinite(lo) || !isfinite(hi)) { lo = 0; hi = 1; }
    if (hi < lo) { double t = lo; lo = hi; hi = t; }
    if (hi - lo < 1e-12 * fmax(1, fabs(hi))) {
        double d = log ? 0.5 : (lo == 0 ? 1 : 0.1 * fabs(lo));
        lo -= d;
        hi += d;
    }
    double pad = 0.04 * (hi - lo);
    *a0 = lo - pad;
    *a1 = hi + pad;
}

double pk_plot_px(const pk_plot *p, double v)
{
    if (p->logx) v = log10(v);
    return p->x + (v - p->x0) / (p->x1 - p->x0) * p->w;
}

double pk_plot_py(const pk_plot *p, double v)
{
    if (p->logy) v = log10(v);
    return p->y + p->h - (v - p->y0) / (p->y1 - p->y0) * p->h;
}

/* Tick positions (in axis units) and whether they are decades of a log axis. */
static size_t ticks(double a0, double a1, int log, double *t, size_t max, int *decades)
{
    size_t n = 0;
    *decades = 0;
    if (log && a1 - a0 >= 3) {
        double first = ceil(a0), last = floor(a1);
        double stride = ceil((last - first + 1) / 7);
        if (stride < 1) stride = 1;
        for (double k = first; k <= last + 1e-9 && n < max; k += stride) t[n++] = k;
        *decades = 1;
        return n;
    }
    double lo = a0, hi = a1;
    if (log) {
        /* under 3 decades: 1, 2, 5 (under 1.5: 1, 2, 3, 4, 5) times the powers of ten in range */
        static const double mant[5] = {1, 2, 5, 3, 4};
        int nm = a1 - a0 >= 1.5 ? 3 : 5;
        for (double k = floor(a0); k <= ceil(a1) && n < max; k++)
            for (int j = 0; j < nm && n < max; j++) {
                double v = log10(mant[j]) + k;
                if (v >= a0 && v <= a1) t[n++] = v;
            }
        return n;
    }
    double raw = (hi - lo) / 5, mag = pow(10, floor(log10(raw))), norm = raw / mag;
    double step = (norm < 1.5 ? 1 : norm < 3.5 ? 2 : norm < 7.5 ? 5 : 10) * mag;
    for (double k = ceil(lo / step); k * step <= hi + 1e-9 * step && n < max; k++) {
        double v = k * step;
        if (fabs(v) < 1e-9 * step) v = 0;
        if (log) { if (v <= 0) continue; v = log10(v); }
        t[n++] = v;
    }
    return n;
}

void pk_plot_axes(pk_sb *b, const pk_plot *p, const char *xlabel, const char *ylabel)
{
    double t[64];
    int dec;
    char num[32];
    pk_sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#fff\" stroke=\"#333\"/>\n",
                 p->x, p->y, p->w, p->h);
    /* x ticks */
    size_t n = p->hide_x ? 0 : ticks(p->x0, p->x1, p->logx, t, 64, &dec);
    for (size_t i = 0; i < n; i++) {
        double X = p->x + (t[i] - p->x0) / (p->x1 - p->x0) * p->w;
        if (X < p->x - 0.5 || X > p->x + p->w + 0.5) continue;
        pk_sb_printf(b, "<path d=\"M%.1f %.1fV%.1f\" stroke=\"#ddd\"/><path d=\"M%.1f %.1fv5\" stroke=\"#333\"/>",
                     X, p->y, p->y + p->h, X, p->y + p->h);
        if (dec)
            pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">10<tspan dy=\"-5\" "
                            "font-size=\"8\">%.0f</tspan></text>\n", X, p->y + p->h + 18, t[i]);
        else {
            pk_fmt_num(num, sizeof num, p->logx ? pow(10, t[i]) : t[i]);
            pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n", X,
                         p->y + p->h + 17, num);
        }
    }
    /* y ticks */
    n = p->hide_y ? 0 : ticks(p->y0, p->y1, p->logy, t, 64, &dec);
    for (size_t i = 0; i < n; i++) {
        double Y = p->y + p->h - (t[i] - p->y0) / (p->y1 - p->y0) * p->h;
        if (Y < p->y - 0.5 || Y > p->y + p->h + 0.5) continue;
        pk_sb_printf(b, "<path d=\"M%.1f %.1fH%.1f\" stroke=\"#ddd\"/><path d=\"M%.1f %.1fh-5\" stroke=\"#333\"/>",
                     p->x, Y, p->x + p->w, p->x, Y);
        if (dec)
            pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">10<tspan dy=\"-5\" "
                            "font-size=\"8\">%.0f</tspan></text>\n", p->x - 8, Y + 6, t[i]);
        else {
            pk_fmt_num(num, sizeof num, p->logy ? pow(10, t[i]) : t[i]);
            pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">%s</text>\n", p->x - 8,
                         Y + 4, num);
        }
    }
    if (xlabel) {
        pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\">", p->x + p->w / 2,
                     p->y + p->h + 38);
        pk_sb_esc(b, xlabel);
        pk_sb_puts(b, "</text>\n");
    }
    if (ylabel) {
        double X = p->x - 62, Y = p->y + p->h / 2;
        pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\" "
                        "transform=\"rotate(-90 %.1f %.1f)\">", X, Y, X, Y);
        pk_sb_esc(b, ylabel);
        pk_sb_puts(b, "</text>\n");
    }
}

void pk_plot_xtick(pk_sb *b, const pk_plot *p, double v, const char *label)
{
    double X = pk_plot_px(p, v);
    if (!isfinite(X) || X < p->x - 0.5 || X > p->x + p->w + 0.5) return;
    pk_sb_printf(b, "<path d=\"M%.1f %.1fV%.1f\" stroke=\"#ddd\"/><path d=\"M%.1f %.1fv5\" stroke=\"#333\"/>", X, p->y,
                 p->y + p->h, X, p->y + p->h);
    pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">", X, p->y + p->h + 17);
    pk_sb_esc(b, label);
    pk_sb_puts(b, "</text>\n");
}

static int plot_ok(const pk_plot *p, double x, double y)
{
    if (!isfinite(x) || !isfinite(y)) return 0;
    if ((p->logx && !(x > 0)) || (p->logy && !(y > 0))) return 0;
    return 1;
}

void pk_plot_line(pk_sb *b, const pk_plot *p, const double *x, const double *y, size_t n, const char *color,
                  double width, const char *dash)
{
    pk_sb_printf(b, "<path fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\" stroke-linejoin=\"round\"%s%s%s d=\"",
                 color, width, dash ? " stroke-dasharray=\"" : "", dash ? dash : "", dash ? "\"" : "");
    int pen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!plot_ok(p, x[i], y[i])) { pen = 0; continue; }
        pk_sb_printf(b, "%c%.1f %.1f", pen ? 'L' : 'M', pk_plot_px(p, x[i]), pk_plot_py(p, y[i]));
        pen = 1;
    }
    pk_sb_puts(b, "\"/>\n");
}

void pk_plot_points(pk_sb *b, const pk_plot *p, const double *x, const double *y, size_t n, const char *color,
                    double r, double opacity)
{
    pk_sb_printf(b, "<g fill=\"%s\" fill-opacity=\"%.2f\">", color, opacity);
    for (size_t i = 0; i < n; i++)
        if (plot_ok(p, x[i], y[i]))
            pk_sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\"/>", pk_plot_px(p, x[i]), pk_plot_py(p, y[i]), r);
    pk_sb_puts(b, "</g>\n");
}

void pk_plot_legend(pk_sb *b, double x, double y, size_t n, const char *const *colors, const char *const *labels,
                    int dots)
{
    size_t longest = 0;
    for (size_t i = 0; i < n; i++) longest = strlen(labels[i]) > longest ? strlen(labels[i]) : longest;
    double w = 34 + 6.6 * (double)longest, h = 8 + 17 * (double)n;
    pk_sb_printf(b, "<g class=\"legend\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#fff\" "
                    "fill-opacity=\"0.9\" stroke=\"#999\"/>", x, y, w, h);
    for (size_t i = 0; i < n; i++) {
        double Y = y + 13 + 17 * (double)i;
        if (dots >> i & 1)
            pk_sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>", x + 15, Y - 4, colors[i]);
        else
            pk_sb_printf(b, "<path d=\"M%.1f %.1fh20\" stroke=\"%s\" stroke-width=\"2.5\"/>", x + 5, Y - 4, colors[i]);
        pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">", x + 30, Y);
        pk_sb_esc(b, labels[i]);
        pk_sb_puts(b, "</text>");
    }
    pk_sb_puts(b, "</g>\n");
}
