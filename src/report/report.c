/* report.c -- pk_report_write: one self-contained HTML file about a run, with
 * inline SVG figures and PNG data URIs (svg.c); nothing in it is fetched. */
#define _POSIX_C_SOURCE 200809L
#include "kernel/kernel.h"
#include "report/svg.h"

#include <math.h>
#include <string.h>
#include <time.h>

pk_report_opts pk_report_opts_defaults(void)
{
    pk_report_opts o;
    memset(&o, 0, sizeof o);
    o.load = pk_load_opts_defaults();
    o.load.first = 10;
    pk_quad_parse("gl4", &o.quad);
    o.show = 3;
    o.top = 5;
    o.heat_train = 60;
    o.heat_query = 60;
    o.move_train = 100;
    o.move_steps = 10;
    o.loo_top = 12;
    o.loo_kernel = PK_KERNEL_TANGENT_FINAL;
    return o;
}

/* ----------------------------------------------------------------- helpers */

/* The class of example i (an integral single target in 0..ncls-1), else -1. */
static long class_of(const pk_data *d, size_t i, size_t ncls)
{
    if (!ncls || d->ty != 1) return -1;
    double y = d->y[i];
    return y >= 0 && y == floor(y) && y < (double)ncls ? (long)y : -1;
}

typedef struct strat_item { long cls; double key; size_t idx; } strat_item;

static int cmp_strat(const void *a, const void *b)
{
    const strat_item *x = a, *y = b;
    if (x->cls != y->cls) return x->cls < y->cls ? -1 : 1;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Up to k of n examples, as evenly over the classes as they allow (the
 * earliest of each class first), then sorted by class (and key, then index);
 * without classes (cls[i] < 0 for all), evenly spaced and sorted by key.
 * Returns how many; idx (k) and, if not NULL, their classes out_cls (k). */
static size_t stratified(const long *cls, const double *key, size_t n, size_t k, size_t *idx, long *out_cls)
{
    if (k > n) k = n;
    strat_item *it = pk_alloc(k ? k : 1, sizeof *it);
    size_t *taken = pk_calloc(n ? n : 1, sizeof *taken);
    if (!it || !taken) { free(it); free(taken); return 0; }
    long maxc = -1;
    for (size_t i = 0; i < n; i++) maxc = cls[i] > maxc ? cls[i] : maxc;
    size_t m = 0;
    if (maxc >= 0) {
        /* round robin over the classes: the r-th example of each class in round r */
        size_t nc = (size_t)maxc + 1;
        size_t *next = pk_calloc(nc, sizeof *next);
        if (!next) { free(it); free(taken); return 0; }
        int progress = 1;
        while (m < k && progress) {
            progress = 0;
            for (size_t c = 0; c < nc && m < k; c++) {
                size_t i = next[c];
                while (i < n && cls[i] != (long)c) i++;
                next[c] = i + 1;
                if (i < n) { it[m++] = (strat_item){(long)c, key ? key[i] : 0, i}; taken[i] = 1; progress = 1; }
            }
        }
        free(next);
        /* examples without a class, if room is left */
        for (size_t i = 0; i < n && m < k; i++)
            if (!taken[i] && cls[i] < 0) it[m++] = (strat_item){0x7fffffff, key ? key[i] : 0, i};
    } else {
        for (size_t j = 0; j < k; j++) {
            size_t i = (size_t)((double)j * (double)n / (double)k);
            it[m++] = (strat_item){-1, key ? key[i] : 0, i};
        }
    }
    qsort(it, m, sizeof *it, cmp_strat);
    for (size_t j = 0; j < m; j++) {
        idx[j] = it[j].idx;
        if (out_cls) out_cls[j] = it[j].cls == 0x7fffffff ? -1 : it[j].cls;
    }
    free(it);
    free(taken);
    return m;
}

/* Image shape (c, h, w) of the data: the model's input shape when it has
 * one (a conv net's), else the data's, or 1 x 8 x 8 for 64 features. */
static int image_shape(const pk_model *m, const pk_data *d, size_t *c, size_t *h, size_t *w)
{
    *c = 1;
    if (m->in_h > 1 && m->in_c * m->in_h * m->in_w == d->d) { *c = m->in_c; *h = m->in_h; *w = m->in_w; return 1; }
    size_t dc = d->img_c ? d->img_c : 1;
    if (d->img_h && d->img_w && dc * d->img_h * d->img_w == d->d) { *c = dc; *h = d->img_h; *w = d->img_w; return 1; }
    if (d->d == 64) { *h = 8; *w = 8; return 1; }
    return 0;
}

/* What the image drawing needs: the transform to undo and the value range. */
typedef struct imgctx {
    int on;
    size_t c, h, w, d;
    const double *mean, *std;
    double lo, hi;
} imgctx;

/* PNG channels of an image: RGB for 3 channels, else grey. */
static int png_channels(const imgctx *ic) { return ic->c == 3 ? 3 : 1; }

/* Pixels (h * w, png_channels) of a feature row (c, h, w) in the run's
 * space, back to raw values and scaled by the range: 3 channels as RGB;
 * one (or the mean of any other number) as grey 255 - 255 (v - lo) / (hi -
 * lo), ink dark on white. */
static void image_pixels(const imgctx *ic, const double *x, unsigned char *pix)
{
    size_t hw = ic->h * ic->w, pc = (size_t)png_channels(ic);
    for (size_t p = 0; p < hw; p++)
        for (size_t k = 0; k < pc; k++) {
            double v = 0;
            for (size_t ch = pc == 3 ? k : 0; ch < (pc == 3 ? k + 1 : ic->c); ch++) {
                size_t j = ch * hw + p;
                v += ic->std ? x[j] * ic->std[j] + ic->mean[j] : x[j];
            }
            if (pc == 1) v /= (double)ic->c;
            double t = ic->hi > ic->lo ? (v - ic->lo) / (ic->hi - ic->lo) : 0;
            double g = pc == 3 ? floor(255.0 * t + 0.5) : 255.0 - floor(255.0 * t + 0.5);
            pix[p * pc + k] = (unsigned char)(g < 0 ? 0 : g > 255 ? 255 : g);
        }
}

/* An <image> of one example at (x, y), size s. */
static int draw_example(pk_sb *b, const imgctx *ic, const double *row, const char *kind, size_t index, double x,
                        double y, double s)
{
    unsigned char *pix = pk_alloc(ic->h * ic->w, (size_t)png_channels(ic));
    if (!pix) return -1;
    image_pixels(ic, row, pix);
    pk_sb_printf(b, "<image class=\"example\" data-kind=\"%s\" data-index=\"%zu\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
                    "height=\"%.1f\" preserveAspectRatio=\"none\" style=\"image-rendering:pixelated\" href=\"",
                 kind, index, x, y, s * (double)ic->w / (double)(ic->h > ic->w ? ic->h : ic->w),
                 s * (double)ic->h / (double)(ic->h > ic->w ? ic->h : ic->w));
    int rc = pk_sb_png(b, pix, ic->h, ic->w, png_channels(ic));
    pk_sb_printf(b, "\"/><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\" "
                    "stroke-width=\"0.5\"/>", x, y, s * (double)ic->w / (double)(ic->h > ic->w ? ic->h : ic->w),
                 s * (double)ic->h / (double)(ic->h > ic->w ? ic->h : ic->w));
    free(pix);
    return rc;
}

static void figure_open(pk_sb *b, const char *id, const char *title, double w, double h)
{
    pk_sb_printf(b, "<figure id=\"%s\">\n<h2>", id);
    pk_sb_esc(b, title);
    pk_sb_printf(b, "</h2>\n<svg width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" "
                    "role=\"img\">\n", w, h, w, h);
}

static void figure_close(pk_sb *b, const char *caption_html)
{
    pk_sb_puts(b, "</svg>\n<figcaption>");
    pk_sb_puts(b, caption_html);
    pk_sb_puts(b, "</figcaption>\n</figure>\n");
}

/* figure_close with the caption "From <code>DIR</code>" and rest_html. */
static void figure_close_from(pk_sb *b, const char *dir, const char *rest_html)
{
    pk_sb cap = {0};
    pk_sb_puts(&cap, "From <code>");
    pk_sb_esc(&cap, dir);
    pk_sb_puts(&cap, rest_html ? rest_html : "");
    figure_close(b, cap.s ? cap.s : "");
    pk_sb_free(&cap);
}

static void text(pk_sb *b, double x, double y, const char *anchor, double size, const char *s)
{
    pk_sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" font-size=\"%.0f\">", x, y, anchor, size);
    pk_sb_esc(b, s);
    pk_sb_puts(b, "</text>\n");
}

/* --------------------------------------------------------- (a) loss curve */

static void fig_loss(pk_sb *b, pk_run *run)
{
    size_t T = pk_run_steps(run);
    double *x = pk_alloc(2 * T + 2, sizeof *x), *y = pk_alloc(2 * T + 2, sizeof *y);
    double *ma = pk_alloc(T + 1, sizeof *ma), *mx = pk_alloc(T + 1, sizeof *mx);
    if (!x || !y || !ma || !mx || !T) {
        figure_open(b, "fig-loss", "(a) Training loss", 900, 60);
        text(b, 20, 30, "start", 13, T ? "out of memory" : "the run has no steps");
        figure_close(b, "No loss to draw.");
        free(x); free(y); free(ma); free(mx);
        return;
    }
    double lo = INFINITY, hi = -INFINITY;
    for (size_t t = 0; t < T; t++) {
        double l = pk_run_batch_loss(run, t);
        if (isfinite(l)) { lo = fmin(lo, l); hi = fmax(hi, l); }
    }
    int logy = lo > 0 && hi / lo > 20;
    /* the batch losses, at most ~2,000 buckets of (min, max) in step order */
    size_t nb = T < 2000 ? T : 2000, n = 0;
    for (size_t k = 0; k < nb; k++) {
        size_t a = k * T / nb, e = (k + 1) * T / nb, imin = a, imax = a;
        for (size_t t = a; t < e; t++) {
            double l = pk_run_batch_loss(run, t);
            if (l < pk_run_batch_loss(run, imin)) imin = t;
            if (l > pk_run_batch_loss(run, imax)) imax = t;
        }
        size_t f = imin < imax ? imin : imax, s = imin < imax ? imax : imin;
        x[n] = (double)(f + 1); y[n++] = pk_run_batch_loss(run, f);
        if (s != f) { x[n] = (double)(s + 1); y[n++] = pk_run_batch_loss(run, s); }
    }
    /* moving average over a window of ~T/50 steps */
    size_t win = T / 50 ? T / 50 : 1, nm = 0;
    double acc = 0;
    for (size_t t = 0; t < T; t++) {
        acc += pk_run_batch_loss(run, t);
        if (t >= win) acc -= pk_run_batch_loss(run, t - win);
        if (t + 1 >= win && (T <= 2000 || t % (T / 2000) == 0 || t + 1 == T)) {
            mx[nm] = (double)(t + 1);
            ma[nm++] = acc / (double)win;
        }
    }
    figure_open(b, "fig-loss", "(a) Training loss", 900, 330);
    pk_plot p = {90, 20, 780, 250, 0, 0, 0, 0, 0, logy, 0, 0};
    pk_plot_range(1, (double)T, 0, &p.x0, &p.x1);
    if (!isfinite(lo)) { lo = 0; hi = 1; logy = p.logy = 0; }
    pk_plot_range(lo, hi, logy, &p.y0, &p.y1);
    pk_plot_axes(b, &p, "step t", pk_run_loss(run) == PK_LOSS_MSE ? "mean batch loss (half squared error)"
                                                                  : "mean batch loss (nats)");
    pk_plot_line(b, &p, x, y, n, "#9ecae1", 1.0, NULL);
    pk_plot_line(b, &p, mx, ma, nm, "#08519c", 2.0, NULL);
    char l2[64];
    snprintf(l2, sizeof l2, "moving average (%zu steps)", win);
    const char *cols[2] = {"#9ecae1", "#08519c"}, *labs[2] = {"batch loss of step t", l2};
    pk_plot_legend(b, 660, 28, 2, cols, labs, 0);
    pk_sb cap = {0};
    pk_sb_printf(&cap, "Loss of the batch each of the %zu steps used (%s loss, %s y axis): from %.4g at step 1 "
                       "to %.4g at step %zu.", T, pk_loss_name(pk_run_loss(run)), logy ? "logarithmic" : "linear",
                 pk_run_batch_loss(run, 0), pk_run_batch_loss(run, T - 1), T);
    figure_close(b, cap.s ? cap.s : "");
    pk_sb_free(&cap);
    free(x); free(y); free(ma); free(mx);
}

/* ------------------------------------------------ (b) representation check */

static void fig_representation(pk_sb *b, const pk_explain *e, const pk_quad *quad, const pk_model *m)
{
    size_t n = e->Q * e->C;
    double *x = pk_alloc(n ? n : 1, sizeof *x), *y = pk_alloc(n ? n : 1, sizeof *y), *r = pk_alloc(n ? n : 1, sizeof *r);
    if (!x || !y || !r) { free(x); free(y); free(r); return; }
    double lo = INFINITY, hi = -INFINITY, rmax = 0, reg = 0;
    for (size_t i = 0; i < n; i++) {
        if (e->regularisation) reg = fmax(reg, fabs(e->regularisation[i]));
        x[i] = e->pred[i];
        y[i] = e->bias[i] + e->contrib_sum[i] + (e->regularisation ? e->regularisation[i] : 0);
        r[i] = x[i] - y[i];
        lo = fmin(lo, fmin(x[i], y[i]));
        hi = fmax(hi, fmax(x[i], y[i]));
        rmax = fmax(rmax, fabs(r[i]));
    }
    figure_open(b, "fig-representation", "(b) The kernel representation reproduces the predictions", 900, 380);
    pk_plot p = {90, 20, 330, 290, 0, 0, 0, 0, 0, 0, 0, 0};
    pk_plot_range(lo, hi, 0, &p.x0, &p.x1);
    p.y0 = p.x0; p.y1 = p.x1;
    pk_plot_axes(b, &p, "prediction f(x; w_T)", "b(x) + \u03a3\u1d62 \u03c6\u1d62(x)");
    double d[2] = {p.x0, p.x1};
    pk_plot_line(b, &p, d, d, 2, "#d62728", 1.2, "5 4");
    pk_plot_points(b, &p, x, y, n, "#1f77b4", 3, 0.6);
    char l1[64];
    snprintf(l1, sizeof l1, "%zu queries x %zu outputs", e->Q, e->C);
    const char *cols[2] = {"#1f77b4", "#d62728"}, *labs[2] = {l1, "y = x"};
    pk_plot_legend(b, 100, 28, 2, cols, labs, 1);
    pk_plot q = {560, 20, 320, 290, 0, 0, 0, 0, 0, 0, 0, 0};
    pk_plot_range(lo, hi, 0, &q.x0, &q.x1);
    double rr = rmax > 0 ? rmax : 1e-300;
    q.y0 = -1.15 * rr; q.y1 = 1.15 * rr;
    pk_plot_axes(b, &q, "prediction f(x; w_T)", "residual f - b - \u03a3 \u03c6\u1d62");
    double zx[2] = {q.x0, q.x1}, zy[2] = {0, 0};
    pk_plot_line(b, &q, zx, zy, 2, "#777", 1, NULL);
    pk_plot_points(b, &q, x, r, n, "#ff7f0e", 3, 0.7);
    char t[160];
    snprintf(t, sizeof t, "max |residual| = %.3g   relative = %.3g   (%s)", e->max_abs_err, e->max_rel_err, quad->name);
    text(b, 450, 370, "middle", 14, t);
    pk_sb cap = {0};
    char why[768];
    pk_sb_printf(&cap, "Left: each point is one output of one query: the network's prediction against the kernel "
                       "machine's, the prediction at initialisation b(x) plus the exact contributions "
                       "&phi;<sub>i</sub>(x) of all %zu training examples%s, integrated along the %zu steps with the "
                       "<b>%s</b> rule. Right: their difference (the quadrature error; units of the outputs). "
                       "<b>max abs error %.3g, relative %.3g</b> (relative to max |f(x; w_T) - b(x)|). Why: %s.",
                 e->N, reg > 0 ? " and the weight-decay term" : "",
                 e->steps, quad->name, e->max_abs_err, e->max_rel_err, pk_quad_why(quad, m, e->pieces, why, sizeof why));
    figure_close(b, cap.s ? cap.s : "");
    pk_sb_free(&cap);
    free(x); free(y); free(r);
}

/* -------------------------------------------------------- (c) convergence */

#define CONV_RULES 16
#define CONV_LRS 64

typedef struct conv_table {
    size_t nr;
    char rule[CONV_RULES][16];
    size_t n[CONV_RULES];
    double lr[CONV_RULES][CONV_LRS], err[CONV_RULES][CONV_LRS];
    double slope[CONV_RULES];
    size_t steps_lo, steps_hi;
} conv_table;

static size_t conv_rule(conv_table *c, const char *name)
{
    for (size_t r = 0; r < c->nr; r++)
        if (!strcmp(c->rule[r], name)) return r;
    if (c->nr == CONV_RULES) return CONV_RULES;
    snprintf(c->rule[c->nr], sizeof c->rule[0], "%s", name);
    c->slope[c->nr] = NAN;
    c->n[c->nr] = 0;
    return c->nr++;
}

/* DIR/NAME read whole and its first line checked against `header` (its
 * first hlen characters): *path and *buf for the caller to free (also on
 * failure); the next lines by strtok_r(NULL, "\n", save). */
static pk_status open_table(const char *dir, const char *name, const char *header, size_t hlen, char **path,
                            unsigned char **buf, char **save)
{
    *buf = NULL;
    *save = NULL;
    if (!(*path = pk_path_join(dir, name))) return PK_ERR_NOMEM;
    size_t len;
    pk_status s = pk_read_file(*path, 0, 16u << 20, buf, &len);
    if (s) return s;
    char *line = strtok_r((char *)*buf, "\n", save);
    if (!line || strncmp(line, header, hlen) != 0)
        return pk_fail(PK_ERR_INPUT, "%s: line 1 is not the header %s", *path, header);
    return PK_OK;
}

static pk_status read_convergence(const char *dir, conv_table *c)
{
    memset(c, 0, sizeof *c);
    char *path, *save, *line;
    unsigned char *buf;
    pk_status s = open_table(dir, "convergence.csv", "lr,steps,rule,max_abs_err,max_rel_err", 25, &path, &buf, &save);
    size_t lineno = 1;
    c->steps_lo = (size_t)-1;
    while (!s && (line = strtok_r(NULL, "\n", &save))) {
        lineno++;
        char *f[5] = {0}, *p = line;
        size_t nf = 0;
        while (nf < 5) {
            f[nf++] = p;
            char *comma = strchr(p, ',');
            if (!comma) break;
            *comma = 0;
            p = comma + 1;
        }
        if (nf < 4) { s = pk_fail(PK_ERR_INPUT, "%s: line %zu: expected 5 fields", path, lineno); break; }
        size_t r = conv_rule(c, f[2]);
        if (r == CONV_RULES) { s = pk_fail(PK_ERR_INPUT, "%s: more than %d rules", path, CONV_RULES); break; }
        double v;
        if (!strcmp(f[0], "slope")) {
            if (!pk_parse_double(f[3], &v)) c->slope[r] = v;
            continue;
        }
        double lr, err;
        size_t st;
        if (pk_parse_double(f[0], &lr) || pk_parse_double(f[3], &err) || pk_parse_size(f[1], &st)) {
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu: lr, steps or max_abs_err is not a number", path, lineno);
            break;
        }
        if (c->n[r] == CONV_LRS) continue;
        c->lr[r][c->n[r]] = lr;
        c->err[r][c->n[r]++] = err;
        if (st < c->steps_lo) c->steps_lo = st;
        if (st > c->steps_hi) c->steps_hi = st;
    }
    if (!s && !c->nr) s = pk_fail(PK_ERR_INPUT, "%s: no rows", path);
    free(buf);
    free(path);
    return s;
}

static void fig_convergence(pk_sb *b, const conv_table *c, const char *dir)
{
    double xlo = INFINITY, xhi = 0, ylo = INFINITY, yhi = 0;
    for (size_t r = 0; r < c->nr; r++)
        for (size_t i = 0; i < c->n[r]; i++) {
            if (c->lr[r][i] > 0) { xlo = fmin(xlo, c->lr[r][i]); xhi = fmax(xhi, c->lr[r][i]); }
            if (c->err[r][i] > 0) { ylo = fmin(ylo, c->err[r][i]); yhi = fmax(yhi, c->err[r][i]); }
        }
    if (!(xhi > 0)) { xlo = 0.01; xhi = 1; }
    if (!(yhi > 0)) { ylo = 1e-16; yhi = 1; }
    figure_open(b, "fig-convergence", "(c) Quadrature error against the learning rate", 900, 380);
    pk_plot p = {90, 20, 600, 300, 0, 0, 0, 0, 1, 1, 0, 0};
    pk_plot_range(xlo, xhi, 1, &p.x0, &p.x1);
    pk_plot_range(ylo, yhi, 1, &p.y0, &p.y1);
    pk_plot_axes(b, &p, "learning rate \u03b7 (\u03b7 T fixed)", "max |f - b - \u03a3 \u03c6\u1d62| (output units)");
    const char *cols[CONV_RULES];
    char labs_buf[CONV_RULES][64];
    const char *labs[CONV_RULES];
    for (size_t r = 0; r < c->nr; r++) {
        cols[r] = pk_color(r);
        pk_plot_line(b, &p, c->lr[r], c->err[r], c->n[r], cols[r], 2, NULL);
        pk_plot_points(b, &p, c->lr[r], c->err[r], c->n[r], cols[r], 4, 1);
        if (isfinite(c->slope[r])) snprintf(labs_buf[r], sizeof labs_buf[r], "%s: slope %.2f", c->rule[r], c->slope[r]);
        else snprintf(labs_buf[r], sizeof labs_buf[r], "%s: slope n/a (rounding floor)", c->rule[r]);
        labs[r] = labs_buf[r];
    }
    pk_plot_legend(b, 700, 20, c->nr, cols, labs, 0);
    pk_sb rest = {0};
    pk_sb_printf(&rest, "/convergence.csv</code>: one training run per learning rate at fixed &eta;T (%zu to %zu steps); "
                       "the error of the representation for each quadrature rule, on log-log axes. The legend gives the "
                       "least-squares slope of log error on log &eta; (errors at the rounding floor, below 1e-13, are "
                       "left out of the fit): about 1 for the paper's left rule, 2 for mid, 2K for glK on smooth "
                       "activations.", c->steps_lo == (size_t)-1 ? 0 : c->steps_lo, c->steps_hi);
    figure_close_from(b, dir, rest.s);
    pk_sb_free(&rest);
}

/* ------------------------------------------- (g) kernel machines side by side */

#define CMP_ROWS 32
#define CMP_WIDTHS 64

typedef struct cmp_table {
    int mse;                                    /* test_mse rather than test_accuracy */
    size_t nm;                                  /* rows of the first block */
    char machine[CMP_ROWS][24], kernel[CMP_ROWS][32];
    double metric[CMP_ROWS], seconds[CMP_ROWS];
    size_t nw;                                  /* rows of the widths block (0: none) */
    double width[CMP_WIDTHS], params[CMP_WIDTHS], wmetric[CMP_WIDTHS], change[CMP_WIDTHS];
    double align0[CMP_WIDTHS], align1[CMP_WIDTHS], wsec[CMP_WIDTHS];
} cmp_table;

/* A value of compare.csv: a finite number, or empty / nan (not available: NaN). */
static int cmp_value(const char *s, int may_be_missing, double *v)
{
    if (may_be_missing && (!*s || !strcmp(s, "nan") || !strcmp(s, "-nan"))) { *v = NAN; return 0; }
    return pk_parse_double(s, v);
}

/* Split a line at commas into at most max fields; returns the number of fields
 * (max + 1 when there are more). */
static size_t cmp_split(char *line, char **f, size_t max)
{
    size_t nf = 0;
    for (char *p = line;;) {
        if (nf == max) return max + 1;
        f[nf++] = p;
        char *comma = strchr(p, ',');
        if (!comma) return nf;
        *comma = 0;
        p = comma + 1;
    }
}

static pk_status read_compare(const char *dir, cmp_table *c)
{
    memset(c, 0, sizeof *c);
    char *path = pk_path_join(dir, "compare.csv");
    if (!path) return PK_ERR_NOMEM;
    unsigned char *buf;
    size_t len;
    pk_status s = pk_read_file(path, 0, 16u << 20, &buf, &len);
    if (s) { free(path); return s; }
    char *text = (char *)buf;   /* pk_read_file NUL-terminates */
    int block = 0;              /* 0: header, 1: machines, 2: blank seen, 3: widths */
    size_t lineno = 0;
    for (char *line = text, *next; !s && line && line < text + len; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        lineno++;
        size_t k = strlen(line);
        if (k && line[k - 1] == '\r') line[--k] = 0;
        char *f[8];
        size_t nf;
        if (block == 0) {
            if (!strcmp(line, "machine,kernel,test_accuracy,seconds")) c->mse = 0;
            else if (!strcmp(line, "machine,kernel,test_mse,seconds")) c->mse = 1;
            else {
                s = pk_fail(PK_ERR_INPUT, "%s: line 1 is not the header machine,kernel,test_accuracy,seconds "
                                          "(or test_mse)", path);
                break;
            }
            block = 1;
        } else if (!k) {
            if (block == 1) {
                if (!c->nm) s = pk_fail(PK_ERR_INPUT, "%s: line %zu: a blank line before any machine", path, lineno);
                block = 2;
            } else if (block == 3) {
                block = 4;
            }
        } else if (block == 1) {
            nf = cmp_split(line, f, 4);
            if (nf != 4) { s = pk_fail(PK_ERR_INPUT, "%s: line %zu: expected 4 fields, got %s%zu", path, lineno,
                                       nf > 4 ? "more than " : "", nf > 4 ? (size_t)4 : nf); break; }
            if (!*f[0]) { s = pk_fail(PK_ERR_INPUT, "%s: line %zu: the machine is empty", path, lineno); break; }
            if (c->nm == CMP_ROWS) { s = pk_fail(PK_ERR_INPUT, "%s: more than %d machines", path, CMP_ROWS); break; }
            if (strlen(f[0]) >= sizeof c->machine[0] || strlen(f[1]) >= sizeof c->kernel[0]) {
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: machine or kernel name too long", path, lineno);
                break;
            }
            double v, sec;
            if (cmp_value(f[2], 1, &v) || cmp_value(f[3], 0, &sec)) {
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: %s or seconds is not a number", path, lineno,
                            c->mse ? "test_mse" : "test_accuracy");
                break;
            }
            snprintf(c->machine[c->nm], sizeof c->machine[0], "%s", f[0]);
            snprintf(c->kernel[c->nm], sizeof c->kernel[0], "%s", f[1]);
            c->metric[c->nm] = v;
            c->seconds[c->nm++] = sec;
        } else if (block == 2) {
            const char *want = c->mse ? "width,params,test_mse,kernel_change,alignment_init,alignment_final,seconds"
                                      : "width,params,test_accuracy,kernel_change,alignment_init,alignment_final,seconds";
            if (strcmp(line, want)) { s = pk_fail(PK_ERR_INPUT, "%s: line %zu is not the header %s", path, lineno, want); break; }
            block = 3;
        } else if (block == 3) {
            nf = cmp_split(line, f, 7);
            if (nf != 7) { s = pk_fail(PK_ERR_INPUT, "%s: line %zu: expected 7 fields, got %s%zu", path, lineno,
                                       nf > 7 ? "more than " : "", nf > 7 ? (size_t)7 : nf); break; }
            if (c->nw == CMP_WIDTHS) { s = pk_fail(PK_ERR_INPUT, "%s: more than %d widths", path, CMP_WIDTHS); break; }
            size_t wd, np;
            double v[5];
            if (pk_parse_size(f[0], &wd) || !wd || pk_parse_size(f[1], &np)) {
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: width or params is not a positive integer", path, lineno);
                break;
            }
            int bad = 0;
            for (int j = 0; j < 4; j++) bad |= cmp_value(f[2 + j], 1, &v[j]);
            bad |= cmp_value(f[6], 0, &v[4]);
            if (bad) {
                s = pk_fail(PK_ERR_INPUT, "%s: line %zu: a metric, kernel_change, alignment or seconds is not a number",
                            path, lineno);
                break;
            }
            size_t i = c->nw++;
            c->width[i] = (double)wd; c->params[i] = (double)np;
            c->wmetric[i] = v[0]; c->change[i] = v[1]; c->align0[i] = v[2]; c->align1[i] = v[3]; c->wsec[i] = v[4];
        } else {
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu: text after the widths block", path, lineno);
        }
    }
    if (!s && block == 0) s = pk_fail(PK_ERR_INPUT, "%s: empty file", path);
    if (!s && !c->nm) s = pk_fail(PK_ERR_INPUT, "%s: no machines", path);
    if (!s && block == 3 && !c->nw) s = pk_fail(PK_ERR_INPUT, "%s: line %zu: the widths block has no rows", path, lineno);
    /* the widths in increasing order (compare keeps the order of --widths) */
    for (size_t i = 1; !s && i < c->nw; i++)
        for (size_t j = i; j > 0 && c->width[j - 1] > c->width[j]; j--) {
            double *col[7] = {c->width, c->params, c->wmetric, c->change, c->align0, c->align1, c->wsec};
            for (int k = 0; k < 7; k++) { double t = col[k][j]; col[k][j] = col[k][j - 1]; col[k][j - 1] = t; }
        }
    free(buf);
    free(path);
    return s;
}

static const char *cmp_machine_name(const char *m)
{
    if (!strcmp(m, "network")) return "network (trained)";
    if (!strcmp(m, "krr")) return "kernel ridge regression";
    if (!strcmp(m, "svm")) return "SVM (LIBSVM)";
    return NULL;
}

static void fig_widths(pk_sb *b, const cmp_table *c)
{
    size_t n = c->nw;
    double xlo = INFINITY, xhi = 0, lo = INFINITY, hi = -INFINITY, alo = INFINITY, ahi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        xlo = fmin(xlo, c->width[i]); xhi = fmax(xhi, c->width[i]);
        if (isfinite(c->change[i])) { lo = fmin(lo, c->change[i]); hi = fmax(hi, c->change[i]); }
        if (isfinite(c->align0[i])) { alo = fmin(alo, c->align0[i]); ahi = fmax(ahi, c->align0[i]); }
        if (isfinite(c->align1[i])) { alo = fmin(alo, c->align1[i]); ahi = fmax(ahi, c->align1[i]); }
    }
    if (!isfinite(lo)) { lo = 0; hi = 1; }
    if (!isfinite(alo)) { alo = 0; ahi = 1; }
    figure_open(b, "fig-widths", "(h) The tangent kernel against hidden width", 900, 370);
    /* x ticks at the widths themselves (labels that would collide are left out) */
    pk_plot p = {90, 56, 330, 250, 0, 0, 0, 0, 1, 0, 0, 1};
    pk_plot_range(xlo, xhi, 1, &p.x0, &p.x1);
    pk_plot q = {560, 56, 320, 250, 0, 0, 0, 0, 1, 0, 0, 1};
    q.x0 = p.x0; q.x1 = p.x1;
    pk_plot_range(fmin(lo, 0), hi, 0, &p.y0, &p.y1);
    pk_plot_range(alo, ahi, 0, &q.y0, &q.y1);
    const char *xl = "hidden width (units per hidden layer, log scale)";
    pk_plot_axes(b, &p, xl, "|K_T - K_0|_F / |K_0|_F");
    pk_plot_axes(b, &q, xl, "alignment <K, YY\u1d40> / (|K| |YY\u1d40|)");
    double last = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double X = pk_plot_px(&p, c->width[i]);
        if (X - last < 30) continue;
        last = X;
        char lab[32];
        snprintf(lab, sizeof lab, "%.0f", c->width[i]);
        pk_plot_xtick(b, &p, c->width[i], lab);
        pk_plot_xtick(b, &q, c->width[i], lab);
    }
    pk_plot_line(b, &p, c->width, c->change, n, "#1f77b4", 2, NULL);
    pk_plot_points(b, &p, c->width, c->change, n, "#1f77b4", 4, 1);
    pk_plot_line(b, &q, c->width, c->align0, n, "#9467bd", 2, "6 4");
    pk_plot_points(b, &q, c->width, c->align0, n, "#9467bd", 4, 1);
    pk_plot_line(b, &q, c->width, c->align1, n, "#2ca02c", 2, NULL);
    pk_plot_points(b, &q, c->width, c->align1, n, "#2ca02c", 4, 1);
    const char *c1[1] = {"#1f77b4"}, *l1[1] = {"relative change of the kernel"};
    const char *c2[2] = {"#9467bd", "#2ca02c"}, *l2[2] = {"before training (K_0)", "after training (K_T)"};
    pk_plot_legend(b, p.x, 4, 1, c1, l1, 0);
    pk_plot_legend(b, q.x + q.w - 190, 4, 2, c2, l2, 0);
    pk_sb cap = {0};
    pk_sb_printf(&cap, "The same network at %zu hidden width%s (", n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++)
        pk_sb_printf(&cap, "%s%.0f: %.0f parameters", i ? ", " : "", c->width[i], c->params[i]);
    char v0[32] = "n/a", v1[32] = "n/a";
    if (isfinite(c->change[0])) snprintf(v0, sizeof v0, "%.3g", c->change[0]);
    if (isfinite(c->change[n - 1])) snprintf(v1, sizeof v1, "%.3g", c->change[n - 1]);
    pk_sb_puts(&cap, "), each trained with the same options; the tangent kernel K = J J<sup>T</sup> on the training "
                     "examples at initialisation (K<sub>0</sub>) and after training (K<sub>T</sub>). Left: its "
                     "relative change (dimensionless), ");
    if (n > 1) pk_sb_printf(&cap, "from %s at width %.0f to %s at width %.0f", v0, c->width[0], v1, c->width[n - 1]);
    else pk_sb_printf(&cap, "%s at width %.0f", v0, c->width[0]);
    pk_sb_puts(&cap, "; the lazy regime is where it goes to 0. Right: its alignment with the labels (cosine of the "
                     "angle between K and YY<sup>T</sup>, dimensionless) before and after training. Log-scaled width "
                     "axes.");
    figure_close(b, cap.s ? cap.s : "");
    pk_sb_free(&cap);
}

static void section_compare(pk_sb *b, const cmp_table *c, const char *dir)
{
    const char *metric = c->mse ? "test mse" : "test accuracy";
    pk_sb_puts(b, "<section id=\"compare\">\n<h2>(g) Kernel machines side by side</h2>\n<table id=\"compare-table\">\n");
    pk_sb_printf(b, "<tr><th>machine</th><th>kernel</th><th>%s</th><th>seconds</th></tr>\n", metric);
    for (size_t i = 0; i < c->nm; i++) {
        const char *name = cmp_machine_name(c->machine[i]);
        pk_sb_puts(b, "<tr data-machine=\"");
        pk_sb_esc(b, c->machine[i]);
        pk_sb_puts(b, "\" data-kernel=\"");
        pk_sb_esc(b, c->kernel[i]);
        pk_sb_puts(b, "\"><td>");
        pk_sb_esc(b, name ? name : c->machine[i]);
        pk_sb_puts(b, "</td><td>");
        pk_sb_esc(b, *c->kernel[i] ? c->kernel[i] : "\u2014");
        if (isfinite(c->metric[i])) pk_sb_printf(b, "</td><td class=\"num\">%.4f", c->metric[i]);
        else pk_sb_puts(b, "</td><td class=\"num\">n/a");
        pk_sb_printf(b, "</td><td class=\"num\">%.2f</td></tr>\n", c->seconds[i]);
    }
    pk_sb_puts(b, "</table>\n<p class=\"caption\">From <code>");
    pk_sb_esc(b, dir);
    pk_sb_printf(b, "/compare.csv</code> (<code>pathkernel compare</code>): the trained network beside kernel ridge "
                    "regression on its path, tangent (at initialisation and after training), RBF and infinite-width "
                    "(ntk) kernels, and an SVM on the path kernel, all fitted to the same training examples and scored "
                    "on the same test set (%s; n/a: the fit failed). Seconds are wall-clock time of each fit.</p>\n",
                 c->mse ? "mean squared error, lower is better" : "fraction classified correctly, higher is better");
    if (c->nw) fig_widths(b, c);
    pk_sb_puts(b, "</section>\n");
}

/* -------------------------------------------------------- (d) heat map */

static void diverging(double t, unsigned char *rgb)
{
    static const double anchor[5][3] = {{33, 102, 172}, {146, 197, 222}, {247, 247, 247}, {244, 165, 130}, {178, 24, 43}};
    if (!isfinite(t)) t = 0;
    t = t < -1 ? -1 : t > 1 ? 1 : t;
    double u = (t + 1) * 2;   /* 0..4 */
    int k = (int)floor(u);
    if (k > 3) k = 3;
    double f = u - k;
    for (int c = 0; c < 3; c++) rgb[c] = (unsigned char)floor(anchor[k][c] * (1 - f) + anchor[k + 1][c] * f + 0.5);
}

/* "6 (Shirt)" for a label that has a class name in `named`, else "6". */
static void class_text(char *buf, size_t cap, const pk_data *named, double label)
{
    const char *nm = pk_data_class_name(named, label);
    if (nm) snprintf(buf, cap, "%g (%s)", label, nm);
    else snprintf(buf, cap, "%g", label);
}

/* Class blocks along one axis of n sorted entries: boundary lines and labels
 * (the class's name when `named` has one, else its index). */
static void class_marks(pk_sb *b, const long *cls, size_t n, double start, double cell, int vertical, double other0,
                        double other1, double label_at, const pk_data *named)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && cls[j] == cls[i]) j++;
        if (cls[i] >= 0) {
            double mid = start + cell * (double)(i + j) / 2;
            char s[48];
            const char *nm = pk_data_class_name(named, (double)cls[i]);
            if (nm) snprintf(s, sizeof s, "%s", nm);
            else snprintf(s, sizeof s, "%ld", cls[i]);
            if (vertical) text(b, label_at, mid + 4, "end", 11, s);
            else text(b, mid, label_at, "middle", 11, s);
        }
        if (j < n) {
            double at = start + cell * (double)j;
            if (vertical)
                pk_sb_printf(b, "<path d=\"M%.1f %.1fH%.1f\" stroke=\"#000\" stroke-width=\"0.8\"/>", other0, at, other1);
            else
                pk_sb_printf(b, "<path d=\"M%.1f %.1fV%.1f\" stroke=\"#000\" stroke-width=\"0.8\"/>", at, other0, other1);
        }
        i = j;
    }
}

/* The paper's path kernel (pk_run_path_kernel, traced) between the sampled
 * training examples and queries only: the heat map shows no more. */
static pk_status fig_kernel(pk_sb *b, pk_run *run, const pk_quad *quad, const pk_explain *e, const pk_data *train,
                            const pk_data *q, size_t ncls, const long *qcls, size_t heat_train, size_t heat_query)
{
    size_t N = e->N, Q = e->Q, d = train->d;
    double *xs = NULL, *ys = NULL, *K = NULL; /* xs (nc, d) queries, ys (nr, d) training examples, K (nc, nr) */
    long *tc = pk_alloc(N, sizeof *tc), *rc = pk_alloc(heat_train ? heat_train : 1, sizeof *rc);
    long *cc = pk_alloc(heat_query ? heat_query : 1, sizeof *cc);
    size_t *ri = pk_alloc(heat_train ? heat_train : 1, sizeof *ri), *ci = pk_alloc(heat_query ? heat_query : 1, sizeof *ci);
    double *key = pk_alloc(N > Q ? N : Q, sizeof *key);
    unsigned char *pix = NULL, *bar = NULL;
    pk_status s = tc && rc && cc && ri && ci && key ? PK_OK : PK_ERR_NOMEM;
    size_t nr = 0, nc = 0;
    if (!s) {
        for (size_t i = 0; i < N; i++) { tc[i] = class_of(train, i, ncls); key[i] = train->y[i * train->ty]; }
        nr = stratified(tc, key, N, heat_train, ri, rc);
        for (size_t i = 0; i < Q; i++) key[i] = q->y ? q->y[i * q->ty] : 0;
        nc = stratified(qcls, key, Q, heat_query, ci, cc);
        if (!nr || !nc) s = pk_fail(PK_ERR_NOMEM, "report: no heat-map sample");
    }
    if (!s && !(pix = pk_alloc(nr * nc, 3)) ) s = PK_ERR_NOMEM;
    if (!s && !(bar = pk_alloc(256, 3))) s = PK_ERR_NOMEM;
    if (!s && (!(xs = pk_alloc(nc, d * sizeof *xs)) || !(ys = pk_alloc(nr, d * sizeof *ys)) ||
               !(K = pk_alloc(nc, nr * sizeof *K))))
        s = PK_ERR_NOMEM;
    if (s) goto done;
    for (size_t c = 0; c < nc; c++) memcpy(xs + c * d, q->x + ci[c] * d, d * sizeof *xs);
    for (size_t r = 0; r < nr; r++) memcpy(ys + r * d, train->x + ri[r] * d, d * sizeof *ys);
    if ((s = pk_run_path_kernel(run, xs, nc, ys, nr, PK_KMODE_TRACE, quad, NULL, NULL, K))) goto done;
    /* colour limit: the 99th percentile of |K| (the few larger cells saturate) */
    double m = 0, kmax = 0;
    {
        double *v = pk_alloc(nr * nc, sizeof *v);
        if (!v) { s = PK_ERR_NOMEM; goto done; }
        for (size_t r = 0; r < nr; r++)
            for (size_t c = 0; c < nc; c++) v[r * nc + c] = fabs(K[c * nr + r]);
        qsort(v, nr * nc, sizeof *v, pk_cmp_double);
        kmax = v[nr * nc - 1];
        m = v[(size_t)floor(0.99 * (double)(nr * nc - 1))];
        free(v);
    }
    if (!(m > 0)) m = kmax > 0 ? kmax : 1;
    for (size_t r = 0; r < nr; r++)
        for (size_t c = 0; c < nc; c++) diverging(K[c * nr + r] / m, pix + 3 * (r * nc + c));
    for (size_t k = 0; k < 256; k++) diverging(1 - 2 * (double)k / 255, bar + 3 * k);
    /* room on the left for the longest class name (about 6.5 px a
     * character at 11 px) and the rotated axis title beside it */
    size_t longest = 2;
    for (size_t r = 0; r < nr; r++) {
        const char *nm = rc[r] >= 0 ? pk_data_class_name(train, (double)rc[r]) : NULL;
        size_t len = nm ? strlen(nm) : 3;
        longest = len > longest ? len : longest;
    }
    double label_w = 6.5 * (double)longest, X = 60 + label_w > 110 ? 60 + label_w : 110, Y = 20, W = 440, H = 440;
    figure_open(b, "fig-kernel", "(d) The path kernel between training examples and queries", 900, 530);
    pk_sb_printf(b, "<image id=\"kernel-heatmap\" x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" "
                    "preserveAspectRatio=\"none\" style=\"image-rendering:pixelated\" href=\"", X, Y, W, H);
    if (pk_sb_png(b, pix, nr, nc, 3)) { s = PK_ERR_NOMEM; goto done; }
    pk_sb_puts(b, "\"/>\n");
    pk_sb_printf(b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", X, Y, W, H);
    class_marks(b, rc, nr, Y, H / (double)nr, 1, X, X + W, X - 6, train);
    class_marks(b, cc, nc, X, W / (double)nc, 0, Y, Y + H, Y + H + 16, train);
    char s1[96];
    const char *by = ncls ? "class" : "target";
    snprintf(s1, sizeof s1, "%zu queries (sorted by %s)", nc, by);
    text(b, X + W / 2, Y + H + 40, "middle", 13, s1);
    snprintf(s1, sizeof s1, "%zu training examples (sorted by %s)", nr, by);
    double ax = X - 18 - label_w; /* the axis title, left of the class names */
    pk_sb_printf(b, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\" font-size=\"13\" transform=\"rotate(-90 %.0f %.0f)\">",
                 ax, Y + H / 2, ax, Y + H / 2);
    pk_sb_esc(b, s1);
    pk_sb_puts(b, "</text>\n");
    /* colour bar */
    double BX = X + W + 70, BW = 22;
    pk_sb_printf(b, "<image id=\"kernel-colorbar\" x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" "
                    "preserveAspectRatio=\"none\" href=\"", BX, Y, BW, H);
    if (pk_sb_png(b, bar, 256, 1, 3)) { s = PK_ERR_NOMEM; goto done; }
    pk_sb_puts(b, "\"/>\n");
    pk_sb_printf(b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", BX, Y, BW, H);
    for (int k = 0; k <= 4; k++) {
        double v = m * (1 - 0.5 * k), yy = Y + H * k / 4.0;
        char num[32];
        pk_fmt_num(num, sizeof num, fabs(v) < 1e-12 * m ? 0 : v);
        pk_sb_printf(b, "<path d=\"M%.0f %.1fh5\" stroke=\"#333\"/>", BX + BW, yy);
        text(b, BX + BW + 8, yy + 4, "start", 11, num);
    }
    double lx = BX + BW + 70, ly = Y + H / 2;
    pk_sb_printf(b, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\" font-size=\"13\" transform=\"rotate(-90 %.0f %.0f)\">"
                    "path kernel K\u1d56(x, x\u1d62), trace over outputs</text>\n", lx, ly, lx, ly);
    char cnum[24];
    snprintf(cnum, sizeof cnum, "%zu", e->C);
    pk_sb cap = {0};
    pk_sb_printf(&cap, "The paper's path kernel K<sup>p</sup>(x, x<sub>i</sub>) = &Sigma;<sub>t</sub> &eta;<sub>t</sub> "
                       "&Sigma;<sub>q</sub> c<sub>q</sub> K<sup>g</sup><sub>w<sub>t</sub> + s<sub>q</sub> D<sub>t</sub></sub>"
                       "(x, x<sub>i</sub>), the tangent kernel integrated along the training path, the same weights on "
                       "both sides and no batch indicator, so symmetric and positive semi-definite (MATH.md section 3; "
                       "%s%s) between %zu training examples (rows, %s) "
                       "and %zu queries (columns), both sorted by %s. Colour scale "
                       "symmetric about 0 up to the 99th percentile of |K|, %.3g (the largest, %.3g, saturates).",
                 e->C > 1 ? "traced over the outputs, C = " : "one output", e->C > 1 ? cnum : "", nr,
                 ncls ? "a class-stratified sample" : "evenly spaced", nc,
                 ncls ? "class; black lines separate the classes" : "target value", m, kmax);
    figure_close(b, cap.s ? cap.s : "");
    pk_sb_free(&cap);
done:
    free(tc); free(rc); free(cc); free(ri); free(ci); free(key); free(pix); free(bar);
    free(xs); free(ys); free(K);
    return s;
}

/* ----------------------------------------------------- (e) kernel movement */

static pk_status fig_movement(pk_sb *b, pk_run *run, const pk_data *train, size_t ncls, size_t ntrain, size_t nsteps)
{
    const pk_model *m = pk_run_model(run);
    size_t T = pk_run_steps(run), keep = pk_run_keep(run) ? pk_run_keep(run) : 1, N = train->n, d = train->d;
    size_t ncand = T / keep + 1 + (T % keep != 0);
    size_t ns = nsteps + 1 < ncand ? nsteps + 1 : ncand;
    size_t *steps = pk_alloc(ns, sizeof *steps), *idx = pk_alloc(ntrain ? ntrain : 1, sizeof *idx);
    long *tc = pk_alloc(N, sizeof *tc), *sc = pk_alloc(ntrain ? ntrain : 1, sizeof *sc);
    double *key = pk_alloc(N, sizeof *key);
    double *X = NULL, *w = pk_alloc(m->n_params, sizeof *w), *K = NULL, *K0 = NULL, *YY = NULL;
    double *st = pk_alloc(ns, sizeof *st), *rel = pk_alloc(ns, sizeof *rel), *al = pk_alloc(ns, sizeof *al);
    pk_status s = steps && idx && tc && sc && key && w && st && rel && al ? PK_OK : PK_ERR_NOMEM;
    size_t n = 0;
    if (!s) {
        for (size_t i = 0; i < N; i++) { tc[i] = class_of(train, i, ncls); key[i] = train->y[i * train->ty]; }
        n = stratified(tc, key, N, ntrain, idx, sc);
        X = pk_alloc(n * d, sizeof *X);
        K = pk_alloc(n * n, sizeof *K);
        K0 = pk_alloc(n * n, sizeof *K0);
        YY = pk_alloc(n * n, sizeof *YY);
        if (!X || !K || !K0 || !YY || !n) s = PK_ERR_NOMEM;
    }
    if (s) goto done;
    for (size_t i = 0; i < n; i++) memcpy(X + i * d, train->x + idx[i] * d, d * sizeof *X);
    /* Y Y^T: one-hot classes, or the (centred) targets for regression */
    double yy2 = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double v = 0;
            if (ncls) v = sc[i] >= 0 && sc[i] == sc[j];
            else
                for (size_t k = 0; k < train->ty; k++) {
                    double mi = 0;
                    for (size_t r = 0; r < n; r++) mi += train->y[idx[r] * train->ty + k];
                    mi /= (double)n;
                    v += (train->y[idx[i] * train->ty + k] - mi) * (train->y[idx[j] * train->ty + k] - mi);
                }
            YY[i * n + j] = v;
            yy2 += v * v;
        }
    for (size_t j = 0; j < ns; j++) {
        size_t c = ns > 1 ? (size_t)llround((double)j * (double)(ncand - 1) / (double)(ns - 1)) : 0;
        steps[j] = c * keep > T ? T : c * keep;
    }
    double k0n = 0;
    for (size_t j = 0; j < ns && !s; j++) {
        s = pk_run_weights(run, steps[j], w);
        if (!s) s = pk_kernel_tangent(m, w, X, n, X, n, PK_KMODE_TRACE, j ? K : K0);
        if (s) break;
        const double *Kj = j ? K : K0;
        double diff = 0, kn = 0, dot = 0;
        for (size_t i = 0; i < n * n; i++) {
            diff += (Kj[i] - K0[i]) * (Kj[i] - K0[i]);
            kn += Kj[i] * Kj[i];
            dot += Kj[i] * YY[i];
        }
        if (!j) k0n = sqrt(kn);
        st[j] = (double)steps[j];
        rel[j] = k0n > 0 ? sqrt(diff) / k0n : NAN;
        al[j] = kn > 0 && yy2 > 0 ? dot / (sqrt(kn) * sqrt(yy2)) : NAN;
    }
    if (s) goto done;
    figure_open(b, "fig-movement", "(e) How far the tangent kernel moves during training", 900, 360);
    pk_plot p = {90, 40, 330, 260, 0, 0, 0, 0, 0, 0, 0, 0};
    double lo = INFINITY, hi = -INFINITY;
    for (size_t j = 0; j < ns; j++) if (isfinite(rel[j])) { lo = fmin(lo, rel[j]); hi = fmax(hi, rel[j]); }
    if (!isfinite(lo)) { lo = 0; hi = 1; }
    pk_plot_range(0, (double)T, 0, &p.x0, &p.x1);
    pk_plot_range(fmin(lo, 0), hi, 0, &p.y0, &p.y1);
    pk_plot_axes(b, &p, "step t", "|K_t - K_0|_F / |K_0|_F");
    pk_plot_line(b, &p, st, rel, ns, "#1f77b4", 2, NULL);
    pk_plot_points(b, &p, st, rel, ns, "#1f77b4", 4, 1);
    pk_plot q = {560, 40, 320, 260, 0, 0, 0, 0, 0, 0, 0, 0};
    lo = INFINITY; hi = -INFINITY;
    for (size_t j = 0; j < ns; j++) if (isfinite(al[j])) { lo = fmin(lo, al[j]); hi = fmax(hi, al[j]); }
    if (!isfinite(lo)) { lo = 0; hi = 1; }
    pk_plot_range(0, (double)T, 0, &q.x0, &q.x1);
    pk_plot_range(lo, hi, 0, &q.y0, &q.y1);
    pk_plot_axes(b, &q, "step t", "alignment <K_t, YY\u1d40> / (|K_t| |YY\u1d40|)");
    pk_plot_line(b, &q, st, al, ns, "#2ca02c", 2, NULL);
    pk_plot_points(b, &q, st, al, ns, "#2ca02c", 4, 1);
    const char *c1[1] = {"#1f77b4"}, *l1[1] = {"relative change"};
    const char *c2[1] = {"#2ca02c"}, *l2[1] = {"kernel-label alignment"};
    pk_plot_legend(b, p.x, 6, 1, c1, l1, 0);
    pk_plot_legend(b, q.x, 6, 1, c2, l2, 0);
    pk_sb cap = {0};
    pk_sb_printf(&cap, "The tangent kernel K<sub>t</sub> = J(w<sub>t</sub>) J(w<sub>t</sub>)<sup>T</sup> (traced over "
                       "outputs) on %zu training examples (%s), at %zu recorded steps from 0 to %zu. Left: its "
                       "relative change from initialisation (dimensionless); it ends at %.3g. Right: its alignment with "
                       "the labels, %s (cosine of the angle between the matrices), from %.3f to %.3f. A kernel "
                       "machine with a fixed kernel would show flat lines.",
                 n, ncls ? "a class-stratified sample" : "evenly spaced", ns, T, rel[ns - 1],
                 ncls ? "Y one-hot" : "Y the centred targets", al[0], al[ns - 1]);
    figure_close(b, cap.s ? cap.s : "");
    pk_sb_free(&cap);
done:
    free(steps); free(idx); free(tc); free(sc); free(key); free(X); free(w); free(K); free(K0); free(YY);
    free(st); free(rel); free(al);
    return s;
}

/* ---------------------------------------------------- (f) query attribution */

/* The k features of x (d) largest in magnitude, by name (names, else
 * "x[j]"), as "name = value" lines drawn at (x0, y0) down. */
static void largest_features(pk_sb *b, const double *x, size_t d, const char *const *names, size_t k, double x0,
                               double y0)
{
    size_t shown = 0;
    unsigned char *used = pk_calloc(d ? d : 1, 1);   /* (d) already listed */
    if (!used) return;   /* the lines are left out, nothing else */
    for (; shown < k && shown < d; shown++) {
        size_t best = d;
        for (size_t j = 0; j < d; j++)
            if (!used[j] && (best == d || fabs(x[j]) > fabs(x[best]))) best = j;
        used[best] = 1;
        char line[160], nm[24];
        if (names) snprintf(line, sizeof line, "%.60s = %.4g", names[best], x[best]);
        else {
            snprintf(nm, sizeof nm, "x[%zu]", best);
            snprintf(line, sizeof line, "%s = %.4g", nm, x[best]);
        }
        text(b, x0, y0 + 16 * (double)shown, "start", 11, line);
    }
    free(used);
}

static pk_status fig_query(pk_sb *b, size_t qi, const pk_explain *e, const pk_data *train, const pk_data *q,
                           const imgctx *ic, pk_loss loss, size_t top, const char *const *feature_names,
                           int standardised)
{
    size_t N = e->N, C = e->C, cls = 0;
    const double *pred = e->pred + qi * C;
    if (loss == PK_LOSS_SOFTMAX)
        for (size_t k = 1; k < C; k++) if (pred[k] > pred[cls]) cls = k;
    const double *phi = e->contrib + qi * N * C + cls;
    size_t *pro = pk_alloc(top, sizeof *pro), *opp = pk_alloc(top, sizeof *opp), np = 0, no = 0;
    pk_status s = pro && opp ? PK_OK : PK_ERR_NOMEM;
    if (!s) s = pk_rank(phi, N, C, 1, top, pro, &np);
    if (!s) s = pk_rank(phi, N, C, -1, top, opp, &no);
    if (s) { free(pro); free(opp); return s; }
    double total = 0;
    for (size_t i = 0; i < N; i++) total += phi[i * C];
    double R = 0;
    for (size_t j = 0; j < np; j++) R = fmax(R, fabs(phi[pro[j] * C]));
    for (size_t j = 0; j < no; j++) R = fmax(R, fabs(phi[opp[j] * C]));
    if (!(R > 0)) R = 1;
    double rowh = ic->on ? 30 : 20, top_y = 52, gap = 14;
    size_t rows = np + no;
    double H = top_y + (double)rows * rowh + gap + 60;
    if (H < 260) H = 260;
    char id[48], title[96];
    snprintf(id, sizeof id, "fig-query-%zu", qi);
    snprintf(title, sizeof title, "(f) Query %zu: its strongest proponents and opponents", qi);
    figure_open(b, id, title, 900, H);
    /* the query */
    char line[160];
    double ty = 30;
    if (ic->on) {
        if (draw_example(b, ic, q->x + qi * q->d, "query", qi, 20, 30, 120)) { s = PK_ERR_NOMEM; goto done; }
        ty = 170;
    }
    snprintf(line, sizeof line, "query %zu", qi);
    text(b, 20, ty, "start", 14, line);
    char cname[96];
    if (q->y) {
        double y = q->y[qi * q->ty];
        class_text(cname, sizeof cname, train, y);
        snprintf(line, sizeof line, isnan(y) ? "label: none of the run's classes" : "label %s", cname);
        text(b, 20, ty + 18, "start", 12, line);
    }
    class_text(cname, sizeof cname, train, (double)cls);
    if (loss == PK_LOSS_SOFTMAX) snprintf(line, sizeof line, "predicted class %s", cname);
    else snprintf(line, sizeof line, "output %zu", cls);
    text(b, 20, ty + 36, "start", 12, line);
    snprintf(line, sizeof line, "f(x) = %.4g", pred[cls]);
    text(b, 20, ty + 54, "start", 12, line);
    snprintf(line, sizeof line, "b(x) = %.4g", e->bias[qi * C + cls]);
    text(b, 20, ty + 72, "start", 12, line);
    snprintf(line, sizeof line, "\u03a3 \u03c6\u1d62 = %.4g", total);
    text(b, 20, ty + 90, "start", 12, line);
    if (!ic->on) {   /* not an image: the query's largest features, by name (the least height, 260, holds them) */
        text(b, 20, ty + 116, "start", 12, standardised ? "largest features (standardised):" : "largest features:");
        largest_features(b, q->x + qi * q->d, q->d, feature_names, 5, 28, ty + 134);
    }
    /* the bars */
    pk_plot p = {430, top_y, 440, (double)rows * rowh + gap, -1.3 * R, 1.3 * R, 0, 1, 0, 0, 1, 0};
    const char *xl = loss == PK_LOSS_SOFTMAX ? "contribution \u03c6\u1d62(x) to the logit of the predicted class"
                                             : "contribution \u03c6\u1d62(x) to the output (output units)";
    pk_plot_axes(b, &p, xl, NULL);
    double x0 = pk_plot_px(&p, 0);
    pk_sb_printf(b, "<path d=\"M%.1f %.1fV%.1f\" stroke=\"#333\"/>\n", x0, p.y, p.y + p.h);
    text(b, 200, top_y - 12, "start", 12, np ? "proponents (push the output up)" : "no proponents");
    for (size_t r = 0; r < rows; r++) {
        int is_opp = r >= np;
        size_t i = is_opp ? opp[r - np] : pro[r];
        double v = phi[i * C];
        double y = top_y + (double)r * rowh + (is_opp ? gap : 0);
        if (is_opp && r == np)
            text(b, 200, y + 2, "start", 12, "opponents (push it down)");
        double cy = y + rowh / 2 + (is_opp ? 6 : 0);
        double x1 = pk_plot_px(&p, v);
        pk_sb_printf(b, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>",
                     fmin(x0, x1), cy - rowh * 0.35, fabs(x1 - x0) > 0.5 ? fabs(x1 - x0) : 0.5, rowh * 0.7,
                     is_opp ? "#d6604d" : "#4393c3");
        char num[32];
        snprintf(num, sizeof num, "%.3g", v);
        text(b, is_opp ? x1 - 4 : x1 + 4, cy + 4, is_opp ? "end" : "start", 11, num);
        if (ic->on && draw_example(b, ic, train->x + i * train->d, "train", i, 200, cy - 13, 26)) {
            s = PK_ERR_NOMEM;
            goto done;
        }
        class_text(cname, sizeof cname, train, train->y[i * train->ty]);
        snprintf(line, sizeof line, "#%zu  label %s", i, cname);
        text(b, ic->on ? 232 : 200, cy + 4, "start", 12, line);
    }
    const char *cols[2] = {"#4393c3", "#d6604d"}, *labs[2] = {"proponent", "opponent"};
    pk_plot_legend(b, 770, 4, 2, cols, labs, 3);
    pk_sb cap = {0};
    pk_sb_printf(&cap, "The %zu training examples with the largest positive and the %zu with the most negative exact "
                       "contributions &phi;<sub>i</sub>(x) to output %zu", np, no, cls);
    const char *cls_name = pk_data_class_name(train, (double)cls);
    if (cls_name && loss == PK_LOSS_SOFTMAX) {
        pk_sb_puts(&cap, " (class ");
        pk_sb_esc(&cap, cls_name);
        pk_sb_puts(&cap, ")");
    }
    pk_sb_printf(&cap, " of query %zu (of %zu training examples; "
                       "f(x) = b(x) + &Sigma;<sub>i</sub> &phi;<sub>i</sub>(x)). Labels are the training targets%s%s.",
                 qi, N, train->class_names ? ", with their class names" : "",
                 ic->on ? "; images in the data's raw pixel scale, ink dark"
                        : "; the query's five largest features in magnitude are listed under it");
    figure_close(b, cap.s ? cap.s : "");
    pk_sb_free(&cap);
done:
    free(pro); free(opp);
    return s;
}

/* ------------------------------------- (h) the labels the others do not support */

/* The training examples with the largest leave-one-out residuals of their
 * own class (pk_run_loo, MATH.md section 7, "Leave-one-out"): as images with
 * their given label and the one the kernel machine refitted without them
 * predicts, or as a table for data that are not images. */
static pk_status section_loo(pk_sb *b, pk_run *run, const pk_data *train, const imgctx *ic, const pk_report_opts *o)
{
    pk_loo_opts lo = pk_loo_opts_defaults();
    lo.kernel = o->loo_kernel;
    lo.quad = o->quad;
    lo.mem_limit = o->mem_limit;
    size_t N = train->n, need = 2 * pk_krr_loo_bytes(N, 1, PK_KMODE_TRACE), budget = pk_memory_budget(o->mem_limit);
    pk_sb_puts(b, "<section id=\"loo\">\n<h2>(h) The training labels the other examples do not support</h2>\n");
    if (need > budget) {
        pk_sb_printf(b, "<p class=\"caption\">Not drawn: leave-one-out on %zu training examples solves one %zu x %zu "
                        "system exactly, %.3g GB of float64 for the kernel and its factor, more than the %.3g GB "
                        "memory budget.</p>\n</section>\n", N, N, N, need / 1e9, budget / 1e9);
        return PK_OK;
    }
    pk_loo l;
    pk_status s = pk_run_loo(run, &lo, &l);
    if (s) return s;
    size_t k = o->loo_top < N ? o->loo_top : N, got = 0, *idx = pk_alloc(k ? k : 1, sizeof *idx);
    if (!idx) { pk_loo_free(&l); return PK_ERR_NOMEM; }
    s = pk_rank(l.score, N, 1, 0, k, idx, &got);
    size_t per_row = 6, rows = (got + per_row - 1) / per_row;
    double cw = 148, ch = ic->on ? 176 : 70;
    char line[160], cname[96];
    if (!s) {
        pk_sb_printf(b, "<svg width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" "
                        "role=\"img\">\n", cw * (double)per_row, ch * (double)rows + 8, cw * (double)per_row,
                     ch * (double)rows + 8);
        for (size_t j = 0; j < got && !s; j++) {
            size_t i = idx[j];
            double x = 10 + cw * (double)(j % per_row), y = 8 + ch * (double)(j / per_row), ty = y + 14;
            pk_sb_printf(b, "<g class=\"loo-example\" data-index=\"%zu\" data-score=\"%.17g\">", i, l.score[i]);
            if (ic->on) {
                if (draw_example(b, ic, train->x + i * train->d, "train", i, x, y, 100)) s = PK_ERR_NOMEM;
                ty = y + 118;
            }
            snprintf(line, sizeof line, "#%zu", i);
            text(b, x, ty, "start", 12, line);
            class_text(cname, sizeof cname, train, train->y[i * train->ty]);
            snprintf(line, sizeof line, "given %s", cname);
            text(b, x, ty + 15, "start", 11, line);
            class_text(cname, sizeof cname, train, l.pred[i]);
            snprintf(line, sizeof line, "predicted %s", cname);
            text(b, x, ty + 30, "start", 11, line);
            snprintf(line, sizeof line, "residual %.3f", l.score[i]);
            text(b, x, ty + 45, "start", 11, line);
            pk_sb_puts(b, "</g>\n");
        }
        pk_sb_puts(b, "</svg>\n");
        pk_sb_printf(b, "<p class=\"caption\">The %zu training examples whose own label has the largest leave-one-out "
                        "residual y<sub>i</sub> &minus; &#375;<sub>&minus;i</sub> = &alpha;<sub>i</sub> / "
                        "[(K + &lambda;I)<sup>&minus;1</sup>]<sub>ii</sub> under kernel ridge regression on the %s "
                        "kernel (traced over outputs, one-hot targets or the 0/1 label; MATH.md section 7, \"Leave-one-out\"), each with "
                        "its given label and the class the machine refitted without it predicts. &lambda; = %.4g "
                        "(%.3g times the kernel's mean diagonal, chosen by leave-one-out error over %zu ridges); "
                        "leave-one-out accuracy %.4f over %zu examples. Labels like these are the first to check: "
                        "the rest of the training data does not support them (<code>pathkernel loo</code> writes every "
                        "example's residual).</p>\n", got, pk_kernel_kind_name(l.kernel), l.ridge, l.ridge / l.mean_diag,
                     l.n_grid, l.accuracy, N);
        pk_sb_puts(b, "</section>\n");
    }
    free(idx);
    pk_loo_free(&l);
    return s;
}

/* ----------------------------------------------------------------- report */

/* ------------------------------------------- (i) does attribution predict retraining */

#define LDS_METHODS 16

typedef struct lds_table {
    size_t nm;
    char method[LDS_METHODS][32];
    double lds[LDS_METHODS], se[LDS_METHODS], seconds[LDS_METHODS];
    size_t valid[LDS_METHODS];
    double *retrained, *predicted, *per_query; /* (M, Q), (nm, M, Q), (nm, Q) from the .npy files */
    size_t M, Q;
} lds_table;

static void lds_table_free(lds_table *t)
{
    free(t->retrained);
    free(t->predicted);
    free(t->per_query);
}

/* An .npy of `dir` with the shape wanted (ndim dims; 0 in want: any). */
static pk_status lds_npy(const char *dir, const char *name, size_t ndim, const size_t *want, double **a, size_t *shape)
{
    char *path = pk_path_join(dir, name);
    size_t nd;
    pk_status s = path ? pk_npy_read(path, a, &nd, shape) : PK_ERR_NOMEM;
    for (size_t k = 0; !s && k < ndim; k++)
        if (nd != ndim || (want[k] && shape[k] != want[k]))
            s = pk_fail(PK_ERR_INPUT, "%s: not the shape an LDS evaluation (pk_lds_run) writes", path);
    free(path);
    return s;
}

static pk_status read_lds(const char *dir, lds_table *t)
{
    memset(t, 0, sizeof *t);
    static const char header[] = "method,lds,stderr,valid,seconds";
    char *path, *save, *line;
    unsigned char *buf;
    pk_status s = open_table(dir, "lds.csv", header, sizeof header, &path, &buf, &save);
    size_t lineno = 1;
    while (!s && (line = strtok_r(NULL, "\n", &save))) {
        lineno++;
        char *f[6];
        size_t nf = cmp_split(line, f, 5);
        if (nf != 5 || t->nm == LDS_METHODS || strlen(f[0]) >= sizeof t->method[0] || cmp_value(f[1], 1, &t->lds[t->nm]) ||
            cmp_value(f[2], 1, &t->se[t->nm]) || pk_parse_size(f[3], &t->valid[t->nm]) ||
            cmp_value(f[4], 0, &t->seconds[t->nm])) {
            s = pk_fail(PK_ERR_INPUT, "%s: line %zu: expected method,lds,stderr,valid,seconds", path, lineno);
            break;
        }
        snprintf(t->method[t->nm++], sizeof t->method[0], "%s", f[0]);
    }
    if (!s && !t->nm) s = pk_fail(PK_ERR_INPUT, "%s: no methods", path);
    free(buf);
    free(path);
    size_t sh[8], any2[2] = {0, 0}, w3[3] = {t->nm, 0, 0}, w2[2] = {t->nm, 0};
    if (!s) s = lds_npy(dir, "retrained.npy", 2, any2, &t->retrained, sh);
    if (!s) { t->M = sh[0]; t->Q = sh[1]; w3[1] = t->M; w3[2] = t->Q; w2[1] = t->Q; }
    if (!s) s = lds_npy(dir, "predicted.npy", 3, w3, &t->predicted, sh);
    if (!s) s = lds_npy(dir, "per_query.npy", 2, w2, &t->per_query, sh);
    if (s) lds_table_free(t);
    return s;
}

static void section_lds(pk_sb *b, const lds_table *t, const char *dir, size_t show)
{
    /* LDS per method, one row each, with +- 1 standard error */
    double h = 40.0 + 28.0 * (double)t->nm, lo = 0, hi = 0;
    for (size_t k = 0; k < t->nm; k++)
        if (isfinite(t->lds[k])) {
            double e = isfinite(t->se[k]) ? t->se[k] : 0;
            lo = fmin(lo, t->lds[k] - e);
            hi = fmax(hi, t->lds[k] + e);
        }
    figure_open(b, "fig-lds", "(i) Does the attribution predict retraining? LDS per method", 900, h + 50);
    pk_plot p = {160, 10, 560, h, 0, 0, -0.5, (double)t->nm - 0.5, 0, 0, 1, 0};
    pk_plot_range(lo, hi > lo ? hi : lo + 0.1, 0, &p.x0, &p.x1);
    pk_plot_axes(b, &p, "LDS: mean Spearman correlation over the test points (\u00b1 1 standard error)", "");
    for (size_t k = 0; k < t->nm; k++) {
        double y = pk_plot_py(&p, (double)(t->nm - 1 - k));
        text(b, p.x - 8, y + 4, "end", 12, t->method[k]);
        if (!isfinite(t->lds[k])) continue;
        double e = isfinite(t->se[k]) ? t->se[k] : 0;
        pk_sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\" stroke-width=\"1.5\"/>\n",
                     pk_plot_px(&p, t->lds[k] - e), y, pk_plot_px(&p, t->lds[k] + e), y);
        pk_sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"/>\n", pk_plot_px(&p, t->lds[k]), y,
                     pk_color(k));
        char num[64];
        snprintf(num, sizeof num, "%.3f \u00b1 %.3f  (%.0f s)", t->lds[k], e, t->seconds[k]);
        text(b, p.x + p.w + 8, y + 4, "start", 11, num);
    }
    pk_sb rest = {0};
    pk_sb_printf(&rest, "</code> (<code>pathkernel lds</code>): %zu subsets retrained, %zu test points. For every test "
                       "point, the Spearman correlation over the subsets between a method's scores summed over the "
                       "subset and the target after retraining on it; the mean over the test points, &plusmn; one "
                       "standard error; the seconds each method took (training of the runs it needs and its scoring). "
                       "The exact contributions explain the recorded trajectory exactly; retraining on a subset follows "
                       "another one, which is what this measures (docs/ATTRIBUTION.md, \"LDS\").", t->M, t->Q);
    figure_close_from(b, dir, rest.s);
    pk_sb_free(&rest);
    /* predicted against retrained, for the first test points, with the first method's scores */
    size_t n = show < t->Q ? show : t->Q;
    if (!n) return;
    figure_open(b, "fig-lds-points", "(i) Predicted against retrained target, first test points", 900, 300);
    double pw = 820.0 / (double)n - 80;
    for (size_t q = 0; q < n; q++) {
        double *x = pk_alloc(t->M, sizeof *x), *y = pk_alloc(t->M, sizeof *y);
        if (!x || !y) { free(x); free(y); b->err = 1; return; }
        double xl = INFINITY, xh = -INFINITY, yl = INFINITY, yh = -INFINITY;
        for (size_t m = 0; m < t->M; m++) {
            x[m] = t->predicted[m * t->Q + q];
            y[m] = t->retrained[m * t->Q + q];
            xl = fmin(xl, x[m]); xh = fmax(xh, x[m]); yl = fmin(yl, y[m]); yh = fmax(yh, y[m]);
        }
        pk_plot pp = {80 + (double)q * (pw + 80), 30, pw, 200, 0, 0, 0, 0, 0, 0, 0, 0};
        pk_plot_range(xl, xh, 0, &pp.x0, &pp.x1);
        pk_plot_range(yl, yh, 0, &pp.y0, &pp.y1);
        pk_plot_axes(b, &pp, "sum of scores over the subset", q ? "" : "retrained target");
        pk_plot_points(b, &pp, x, y, t->M, pk_color(0), 3, 0.7);
        char title[96];
        snprintf(title, sizeof title, "test point %zu: Spearman %.3f", q, t->per_query[q]);
        text(b, pp.x + pp.w / 2, 20, "middle", 12, title);
        free(x);
        free(y);
    }
    pk_sb cap2 = {0};
    pk_sb_printf(&cap2, "Each dot a subset: the %s scores of the training examples in it, summed (x), against the "
                        "target at the test point after retraining on it (y).", t->method[0]);
    figure_close(b, cap2.s ? cap2.s : "");
    pk_sb_free(&cap2);
}

static const char *const css =
    "body{font-family:sans-serif;max-width:940px;margin:20px auto;color:#222;line-height:1.4}"
    "h1{font-size:24px}h2{font-size:17px;margin:6px 0}figure{margin:28px 0;padding:8px;border:1px solid #ddd}"
    "figcaption{font-size:13px;color:#333;margin-top:6px}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}td.num{text-align:right}code{font-size:12px}"
    "section{margin:28px 0;padding:8px;border:1px solid #ddd}section figure{margin:20px 0 0;padding:0;border:none}"
    "p.caption{font-size:13px;color:#333;margin:6px 0 0}";

/* The titles above letter each figure and section by its place when all are
 * drawn; here, in the page, they become (a), (b), ... in the order they
 * appear, so that one not drawn (no --convergence, no --compare...) leaves
 * no gap. The query figures, one section, share their letter. */
static void reletter(pk_sb *b)
{
    char was = 0, letter = 'a' - 1;
    for (char *p = b->s; p && (p = strstr(p, "<h2>(")); p += 5)
        if (p[5] >= 'a' && p[5] <= 'z' && p[6] == ')') {
            if (p[5] != was) letter++;
            was = p[5];
            p[5] = letter;
        }
}

pk_status pk_report_write(pk_run *run, const pk_report_opts *o, const char *path, pk_report_info *info)
{
    double t0 = pk_seconds();
    pk_report_opts def = pk_report_opts_defaults();
    if (!o) o = &def;
    const pk_model *m = pk_run_model(run);
    size_t C = m->n_out, T = pk_run_steps(run);
    pk_loss loss = pk_run_loss(run);
    const pk_data *train = NULL;
    pk_data q = {0};
    pk_explain e;
    memset(&e, 0, sizeof e);
    pk_sb b = {0};
    long *qcls = NULL;
    conv_table *conv = NULL;
    cmp_table *cmp = NULL;
    lds_table *lds = NULL;
    const char *spec = o->query ? o->query : pk_run_data_spec(run);
    pk_status s = pk_run_train_data(run, &train);
    if (!s && !spec) s = pk_fail(PK_ERR_INPUT, "report: the run records no data spec; give the queries (query)");
    if (!s && o->convergence) {
        conv = malloc(sizeof *conv);
        s = conv ? read_convergence(o->convergence, conv) : PK_ERR_NOMEM;
    }
    if (!s && o->compare) {
        cmp = malloc(sizeof *cmp);
        s = cmp ? read_compare(o->compare, cmp) : PK_ERR_NOMEM;
    }
    if (!s && o->lds) {
        lds = malloc(sizeof *lds);
        s = lds ? read_lds(o->lds, lds) : PK_ERR_NOMEM;
        if (s) { free(lds); lds = NULL; }
    }
    if (!s) s = pk_run_load_data(run, spec, &o->load, &q);
    if (!s && !q.n) s = pk_fail(PK_ERR_INPUT, "%s: no queries", spec);
    if (!s) {
        pk_explain_opts eo = pk_explain_opts_defaults();
        eo.quad = o->quad;
        eo.want_contrib = 1;
        eo.want_kernel = 0; /* the heat map computes the kernel for its sample only (fig_kernel) */
        eo.mode = PK_KMODE_TRACE;
        eo.mem_limit = o->mem_limit;
        s = pk_run_explain(run, q.x, q.n, &eo, &e);
    }
    if (s) goto done;
    size_t ncls = loss == PK_LOSS_SOFTMAX ? C : loss == PK_LOSS_LOGISTIC ? 2 : 0;
    if (!(qcls = pk_alloc(q.n, sizeof *qcls))) { s = PK_ERR_NOMEM; goto done; }
    for (size_t i = 0; i < q.n; i++) {
        qcls[i] = q.y ? class_of(&q, i, ncls) : -1;
        if (qcls[i] < 0 && loss == PK_LOSS_SOFTMAX) {
            size_t c = 0;
            for (size_t k = 1; k < C; k++) if (e.pred[i * C + k] > e.pred[i * C + c]) c = k;
            qcls[i] = (long)c;
        }
    }
    /* images */
    imgctx ic = {0};
    ic.on = image_shape(m, train, &ic.c, &ic.h, &ic.w) && q.d == train->d;
    ic.d = train->d;
    ic.mean = pk_run_mean(run);
    ic.std = pk_run_std(run);
    if (ic.on) {
        ic.lo = INFINITY; ic.hi = -INFINITY;
        for (size_t i = 0; i < train->n; i++)
            for (size_t j = 0; j < train->d; j++) {
                double v = train->x[i * train->d + j];
                if (ic.std) v = v * ic.std[j] + ic.mean[j];
                ic.lo = fmin(ic.lo, v);
                ic.hi = fmax(ic.hi, v);
            }
    }

    char spec_m[256];
    pk_model_spec(m, spec_m, sizeof spec_m);
    const pk_optim *op = pk_run_optim(run);
    pk_sb_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>pathkernel report: ");
    pk_sb_esc(&b, pk_run_dir(run));
    pk_sb_printf(&b, "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>pathkernel report</h1>\n", css);
    pk_sb_puts(&b, "<p>A network trained by gradient descent is exactly a kernel machine over its training examples: "
                   "f(x; w<sub>T</sub>) = b(x) + &Sigma;<sub>i</sub> &phi;<sub>i</sub>(x), with b(x) = f(x; w<sub>0</sub>) "
                   "and &phi;<sub>i</sub>(x) the contribution of training example i, integrated along the recorded "
                   "path (docs/MATH.md). This page was written by <code>pathkernel report</code> " PK_VERSION
                   "; it is self-contained.</p>\n<table id=\"run-summary\">\n");
    pk_sb_puts(&b, "<tr><th>run</th><td><code>");
    pk_sb_esc(&b, pk_run_dir(run));
    pk_sb_printf(&b, "</code></td></tr>\n<tr><th>model</th><td>%s, %zu parameters, %s parameterisation</td></tr>\n",
                 spec_m, m->n_params, m->param == PK_PARAM_NTK ? "ntk" : "standard");
    pk_sb_printf(&b, "<tr><th>training</th><td>%s loss, %s, learning rate %g", pk_loss_name(loss),
                 pk_optim_name(op->kind), op->lr);
    if (pk_optim_batch(op, train->n) < train->n) pk_sb_printf(&b, ", batch %zu", op->batch);
    if (op->weight_decay != 0) pk_sb_printf(&b, ", weight decay %g", op->weight_decay);
    pk_sb_printf(&b, ", %zu steps (weights stored every %zu)", T, pk_run_keep(run));
    if (pk_run_recorded(run)) { /* MATH.md section 10 */
        pk_sb_puts(&b, "; steps taken by ");
        pk_sb_esc(&b, pk_run_recorded(run));
        pk_sb_puts(&b, " and recorded, the learning rate of each as recorded");
    }
    pk_sb_puts(&b, "</td></tr>\n");
    pk_sb_puts(&b, "<tr><th>training data</th><td><code>");
    pk_sb_esc(&b, pk_run_data_spec(run) ? pk_run_data_spec(run) : "(not recorded)");
    pk_sb_printf(&b, "</code>: %zu examples x %zu features%s</td></tr>\n", train->n, train->d,
                 pk_run_std(run) ? ", standardised" : "");
    size_t n_names;
    const char *const *names = pk_run_classes(run, &n_names);
    if (names) {
        pk_sb_puts(&b, "<tr><th>classes</th><td id=\"classes\">");
        for (size_t c = 0; c < n_names; c++) {
            pk_sb_printf(&b, "%s%zu&nbsp;", c ? ", " : "", c);
            pk_sb_esc(&b, names[c]);
        }
        pk_sb_puts(&b, "</td></tr>\n");
    }
    pk_sb_puts(&b, "<tr><th>queries</th><td><code>");
    pk_sb_esc(&b, spec);
    pk_sb_printf(&b, "</code>");
    if (o->load.first) pk_sb_printf(&b, " (first %zu)", o->load.first);
    else if (o->load.random) pk_sb_printf(&b, " (random %zu, seed %llu)", o->load.random, (unsigned long long)o->load.seed);
    pk_sb_printf(&b, ": %zu queries, %s quadrature, explained in %.2f s</td></tr>\n</table>\n", q.n, o->quad.name,
                 e.seconds);

    fig_loss(&b, run);
    fig_representation(&b, &e, &o->quad, pk_run_model(run));
    if (conv) fig_convergence(&b, conv, o->convergence);
    if (!s) s = fig_kernel(&b, run, &o->quad, &e, train, &q, ncls, qcls, o->heat_train ? o->heat_train : 1,
                           o->heat_query ? o->heat_query : 1);
    if (!s) s = fig_movement(&b, run, train, ncls, o->move_train ? o->move_train : 2, o->move_steps);
    const char *const *fnames = pk_run_features(run) ? pk_run_features(run) : (const char *const *)q.feature_names;
    for (size_t i = 0; !s && i < o->show && i < e.Q; i++)
        s = fig_query(&b, i, &e, train, &q, &ic, loss, o->top ? o->top : 1, fnames, pk_run_std(run) != NULL);
    if (!s && cmp) section_compare(&b, cmp, o->compare);
    if (!s && o->loo_top && ncls) s = section_loo(&b, run, train, &ic, o);
    if (!s && lds) section_lds(&b, lds, o->lds, o->show);
    pk_sb_printf(&b, "<p style=\"font-size:12px;color:#666\">Written in %.2f s.</p>\n</body>\n</html>\n", pk_seconds() - t0);
    if (!s && b.err) s = pk_fail(PK_ERR_NOMEM, "report: out of memory");
    if (!s) reletter(&b);
    if (!s) s = pk_file_write(path, b.s, b.n);
    if (!s && info) {
        info->Q = e.Q; info->N = e.N; info->C = e.C; info->steps = e.steps;
        info->max_abs_err = e.max_abs_err;
        info->max_rel_err = e.max_rel_err;
        info->seconds = pk_seconds() - t0;
    }
done:
    pk_sb_free(&b);
    pk_explain_free(&e);
    pk_data_free(&q);
    free(qcls);
    free(conv);
    free(cmp);
    if (lds) lds_table_free(lds);
    free(lds);
    return s;
}
