/* conv.c -- the spatial layers, as PyTorch computes them on NCHW values:
 * conv2d (nn.Conv2d: W (c_out, c_in, kh, kw) row-major, then c (c_out);
 * z = sw W * x + sb c with the scales of dense.c, fan_in = c_in kh kw),
 * average and max pooling (nn.AvgPool2d, nn.MaxPool2d: no padding, floor
 * sizes, the first maximum of a window in row-major order) and flatten.
 * A conv2d layer is a dense layer applied to every patch: with P (T, d) the
 * im2col patches of an example (T = h_out w_out positions, d = c_in kh kw)
 * its output is sw W P^T + sb c, and its share of the tangent kernel is
 * MATH.md section 8's, computed in whichever of the two forms there costs
 * fewer operations. */
#include "model/model.h"

#include <math.h>
#include <string.h>

static size_t positions(const pk_layer *l) { return l->h_out * l->w_out; } /* T */
static size_t patch_len(const pk_layer *l) { return l->c_in * l->kh * l->kw; } /* d */

/* The input value under window element (c, i, j) at output position (oh,
 * ow); -1 in the zero padding. */
static inline long source(const pk_layer *l, size_t c, size_t oh, size_t ow, size_t i, size_t j)
{
    long ih = (long)(oh * l->stride + i) - (long)l->pad, iw = (long)(ow * l->stride + j) - (long)l->pad;
    if (ih < 0 || iw < 0 || ih >= (long)l->h_in || iw >= (long)l->w_in) return -1;
    return (long)((c * l->h_in + (size_t)ih) * l->w_in + (size_t)iw);
}

/* P (T, d): the patches of one example x (c_in, h_in, w_in), row t the
 * window of output position t, column (c, i, j) as W's; 0 in the padding. */
static void im2col(const pk_layer *l, const double *x, double *P)
{
    for (size_t oh = 0; oh < l->h_out; oh++)
        for (size_t ow = 0; ow < l->w_out; ow++)
            for (size_t c = 0; c < l->c_in; c++)
                for (size_t i = 0; i < l->kh; i++)
                    for (size_t j = 0; j < l->kw; j++) {
                        long s = source(l, c, oh, ow, i, j);
                        *P++ = s < 0 ? 0.0 : x[s];
                    }
}

/* gx (c_in, h_in, w_in) += dP (T, d) added back where each patch value came from. */
static void col2im(const pk_layer *l, const double *dP, double *gx)
{
    for (size_t oh = 0; oh < l->h_out; oh++)
        for (size_t ow = 0; ow < l->w_out; ow++)
            for (size_t c = 0; c < l->c_in; c++)
                for (size_t i = 0; i < l->kh; i++)
                    for (size_t j = 0; j < l->kw; j++, dP++) {
                        long s = source(l, c, oh, ow, i, j);
                        if (s >= 0) gx[s] += *dP;
                    }
}

/* Rows of patches per chunk of work: about 4 MB of them, a whole number of
 * examples (so a chunk never depends on the thread count). */
static size_t chunk_examples(const pk_layer *l, size_t per)
{
    size_t rows = positions(l) * patch_len(l) * per;
    return rows >= ((size_t)1 << 19) ? 1 : ((size_t)1 << 19) / rows;
}

/* ---------------------------------------------------------------- conv2d */

/* y (n, c_out T) = sw W P^T + sb c per example: the patches of a chunk of
 * examples (E T, d) times W^T in one product, then back to NCHW. */
static void conv_forward(const pk_layer *l, const double *w, const double *x, double *y, size_t n, pk_gemm_mode mode)
{
    size_t T = positions(l), d = patch_len(l), p = l->c_out, E = chunk_examples(l, 1);
    const double *W = w + l->w_off, *c = w + l->b_off;
    double *P = pk_alloc(E * T, d * sizeof *P), *Z = pk_alloc(E * T, p * sizeof *Z); /* (E T, d), (E T, p) */
    if (!P || !Z) E = 0; /* out of memory: the direct sums below */
    for (size_t i0 = 0; E && i0 < n; i0 += E) {
        size_t ne = n - i0 < E ? n - i0 : E;
        #pragma omp parallel for schedule(static) if (ne * T * d >= PK_PAR_MIN)
        for (size_t i = 0; i < ne; i++) im2col(l, x + (i0 + i) * l->in, P + i * T * d);
        pk_gemm_by(mode, 0, 1, ne * T, p, d, l->sw, P, d, W, d, 0.0, Z, p);
        #pragma omp parallel for schedule(static) if (ne * T * p >= PK_PAR_MIN)
        for (size_t i = 0; i < ne; i++)
            for (size_t k = 0; k < p; k++)
                for (size_t t = 0; t < T; t++) y[(i0 + i) * l->out + k * T + t] = Z[(i * T + t) * p + k] + l->sb * c[k];
    }
    if (!E)
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < p; k++)
                for (size_t t = 0; t < T; t++) {
                    double z = 0;
                    for (size_t q = 0; q < d; q++) {
                        long s = source(l, q / (l->kh * l->kw), t / l->w_out, t % l->w_out, q / l->kw % l->kh, q % l->kw);
                        if (s >= 0) z += W[k * d + q] * x[i * l->in + s];
                    }
                    y[i * l->out + k * T + t] = l->sw * z + l->sb * c[k];
                }
    free(P);
    free(Z);
}

/* gx (n per, c_in h_in w_in) from gy (n per, c_out T): dP = sw gy^T W per
 * row (rows of a chunk in one product), added back through col2im. */
static void conv_backward(const pk_layer *l, const double *w, const double *x, const double *y, const double *gy,
                          double *gx, size_t n, size_t per, pk_gemm_mode mode)
{
    size_t T = positions(l), d = patch_len(l), p = l->c_out, rows = n * per, E = chunk_examples(l, 1);
    const double *W = w + l->w_off;
    double *G = pk_alloc(E * T, p * sizeof *G), *dP = pk_alloc(E * T, d * sizeof *dP); /* (E T, p), (E T, d) */
    if (!G || !dP) E = 0;
    memset(gx, 0, rows * l->in * sizeof *gx);
    for (size_t r0 = 0; E && r0 < rows; r0 += E) {
        size_t nr = rows - r0 < E ? rows - r0 : E;
        for (size_t r = 0; r < nr; r++) /* each row's deltas as (T, p) */
            for (size_t k = 0; k < p; k++)
                for (size_t t = 0; t < T; t++) G[(r * T + t) * p + k] = gy[(r0 + r) * l->out + k * T + t];
        pk_gemm_by(mode, 0, 0, nr * T, d, p, l->sw, G, p, W, d, 0.0, dP, d);
        #pragma omp parallel for schedule(static) if (nr * T * d >= PK_PAR_MIN)
        for (size_t r = 0; r < nr; r++) col2im(l, dP + r * T * d, gx + (r0 + r) * l->in);
    }
    if (!E)
        for (size_t r = 0; r < rows; r++)
            for (size_t k = 0; k < p; k++)
                for (size_t t = 0; t < T; t++)
                    for (size_t q = 0; q < d; q++) {
                        long s = source(l, q / (l->kh * l->kw), t / l->w_out, t % l->w_out, q / l->kw % l->kh, q % l->kw);
                        if (s >= 0) gx[r * l->in + s] += l->sw * W[k * d + q] * gy[r * l->out + k * T + t];
                    }
}

/* dW (c_out, d) = scale sw sum_i gy_i (c_out, T) P_i (T, d); dc = scale sb
 * sum_i sum_t gy_i: the deltas of a chunk side by side (c_out, E T), one
 * product per chunk, chunks added in order. */
static void conv_grad(const pk_layer *l, const double *x, const double *gy, size_t n, double scale, double *g)
{
    size_t T = positions(l), d = patch_len(l), p = l->c_out, E = chunk_examples(l, 1);
    double *gc = g + (l->b_off - l->w_off);
    double *P = pk_alloc(E * T, d * sizeof *P), *G = pk_alloc(p, E * T * sizeof *G); /* (E T, d), (p, E T) */
    if (!P || !G) E = 0;
    memset(g, 0, l->n_w * sizeof *g);
    for (size_t i0 = 0; E && i0 < n; i0 += E) {
        size_t ne = n - i0 < E ? n - i0 : E;
        #pragma omp parallel for schedule(static) if (ne * T * d >= PK_PAR_MIN)
        for (size_t i = 0; i < ne; i++) im2col(l, x + (i0 + i) * l->in, P + i * T * d);
        for (size_t k = 0; k < p; k++)
            for (size_t i = 0; i < ne; i++) memcpy(G + k * ne * T + i * T, gy + (i0 + i) * l->out + k * T, T * sizeof *G);
        pk_gemm(0, 0, p, d, ne * T, scale * l->sw, G, ne * T, P, d, 1.0, g, d);
    }
    if (!E)
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < p; k++)
                for (size_t t = 0; t < T; t++)
                    for (size_t q = 0; q < d; q++) {
                        long s = source(l, q / (l->kh * l->kw), t / l->w_out, t % l->w_out, q / l->kw % l->kh, q % l->kw);
                        if (s >= 0) g[k * d + q] += scale * l->sw * gy[i * l->out + k * T + t] * x[i * l->in + s];
                    }
    for (size_t k = 0; k < p; k++) {
        double sum = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t t = 0; t < T; t++) sum += gy[i * l->out + k * T + t];
        gc[k] = scale * l->sb * sum;
    }
}

/* The tangent kernel's share (MATH.md section 8). Each row of deltas is
 * `fold` segments of (c_out, T) values, G_f^T in the section's notation.
 * Form A: the per-example gradients V = G^T P of every row (fold c_out d
 * values each) and one product of them over all pairs; form B: per pair the
 * spatial Gram P_x P_y^T (T x T) against every pair of delta rows. A wins
 * when T is large against the channels (a first layer), B when the map is
 * small and the channels many; the choice depends on the shape and the
 * rows only, never on the number of examples in a call. */
static int gram_by_pairs(const pk_layer *l, size_t rx, size_t ry, size_t fold)
{
    double T = (double)positions(l), d = (double)patch_len(l), p = (double)l->c_out, f = (double)fold;
    double a = (double)rx * ry * f * (p * d + p) + (double)(rx + ry) * f * p * d * T / 64.0;
    double b = T * T * d + (double)rx * f * p * T * T + (double)rx * ry * f * p * T;
    return b < a;
}

/* V (n rows, fold c_out d) = sw G^T P for every row of deltas, and Vb (n
 * rows, fold c_out) = sb 1^T G. P: scratch (T, d) per thread. */
static int row_gradients(const pk_layer *l, size_t n, size_t rows, const double *a, const double *delta,
                         size_t fold, double *V, double *Vb)
{
    size_t T = positions(l), d = patch_len(l), p = l->c_out, segs = rows * fold;
    int fail = 0;
    #pragma omp parallel if (n * segs * p * d * T >= PK_PAR_MIN)
    {
        double *P = pk_alloc(T, d * sizeof *P);
        if (!P) {
            #pragma omp atomic write
            fail = 1;
        }
        #pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            if (!P) continue;
            im2col(l, a + i * l->in, P);
            /* (segs p, T) deltas of example i times (T, d) */
            pk_gemm_tile(0, 0, segs * p, d, T, l->sw, delta + i * segs * p * T, T, P, d, 0.0, V + i * segs * p * d, d);
            for (size_t s = 0; s < segs * p; s++) {
                const double *g = delta + (i * segs * p + s) * T;
                double sum = 0;
                for (size_t t = 0; t < T; t++) sum += g[t];
                Vb[i * segs * p + s] = l->sb * sum;
            }
        }
        free(P);
    }
    return fail;
}

/* Form B for example i of x against every example of y: S (its rx rows, ny
 * ry) += sum_f [sw^2 <G_x, G_y (P_x P_y^T)^T> + sb^2 (1^T G_x)(1^T G_y)].
 * Py (ny T, d) the patches of y; Px (T, d), PP (T, ny T), U (c_out, ny T)
 * and bx (c_out) scratch. */
static void gram_pairs_row(const pk_layer *l, size_t i, size_t rx, const double *ax, const double *dx, size_t ny,
                           size_t ry, const double *Py, const double *dy, size_t fold, double *Px, double *PP,
                           double *U, double *bx, double *S, size_t ldy, int pairs)
{
    size_t T = positions(l), d = patch_len(l), p = l->c_out, len = l->out * fold;
    double sw2 = l->sw * l->sw, sb2 = l->sb * l->sb;
    im2col(l, ax + i * l->in, Px);
    pk_gemm_tile(0, 1, T, ny * T, d, 1.0, Px, d, Py, d, 0.0, PP, ny * T);
    for (size_t kx = 0; kx < rx; kx++)
        for (size_t f = 0; f < fold; f++) {
            const double *Gx = dx + (i * rx + kx) * len + f * p * T; /* (p, T) */
            pk_gemm_tile(0, 0, p, ny * T, T, 1.0, Gx, T, PP, ny * T, 0.0, U, ny * T);
            for (size_t k = 0; k < p; k++) {
                bx[k] = 0;
                for (size_t t = 0; t < T; t++) bx[k] += Gx[k * T + t];
            }
            for (size_t j = 0; j < ny; j++)
                for (size_t ky = 0; ky < ry; ky++) {
                    const double *Gy = dy + (j * ry + ky) * len + f * p * T;
                    double v = 0, b = 0;
                    for (size_t k = 0; k < p; k++) {
                        const double *u = U + k * ny * T + j * T, *g = Gy + k * T;
                        double sy = 0;
                        for (size_t t = 0; t < T; t++) { v += u[t] * g[t]; sy += g[t]; }
                        b += bx[k] * sy;
                    }
                    S[pairs ? ((i * ldy + j) * rx + kx) * ry + ky : ((i * rx + kx) * ldy + j) * ry + ky] +=
                        sw2 * v + sb2 * b;
                }
        }
}

/* The products could not have their scratch: NaN in every entry they
 * would have added to, so that no result looks valid (checks downstream
 * refuse non-finite values), and the reason for pk_last_error. */
static void out_of_memory(size_t nx, size_t rx, size_t ny, size_t ry, double *S, size_t ldy, int pairs)
{
    pk_fail(PK_ERR_NOMEM, "out of memory in a conv2d layer's kernel products");
    for (size_t i = 0; i < nx; i++)
        for (size_t kx = 0; kx < rx; kx++)
            for (size_t j = 0; j < ny; j++)
                for (size_t ky = 0; ky < ry; ky++)
                    S[pairs ? ((i * ldy + j) * rx + kx) * ry + ky : ((i * rx + kx) * ldy + j) * ry + ky] = NAN;
}

static void conv_gram(const pk_layer *l, size_t nx, size_t rx, const double *ax, const double *dx, size_t ny,
                      size_t ry, const double *ay, const double *dy, size_t fold, int unit, pk_gemm_mode mode,
                      double *A, double *D, double *S, size_t ldy, int pairs)
{
    (void)unit; /* a conv2d layer is never the output layer (model.c) */
    size_t T = positions(l), d = patch_len(l), p = l->c_out, cols = ny * ry;
    if (gram_by_pairs(l, rx, ry, fold)) {
        double *Py = pk_alloc(ny * T, d * sizeof *Py); /* (ny T, d) */
        int fail = !Py;
        if (fail) { out_of_memory(nx, rx, ny, ry, S, ldy, pairs); return; }
        #pragma omp parallel for schedule(static) if (!fail && ny * T * d >= PK_PAR_MIN)
        for (size_t j = 0; j < ny; j++)
            if (Py) im2col(l, ay + j * l->in, Py + j * T * d);
        #pragma omp parallel if (!fail && nx * cols * p * T * T >= PK_PAR_MIN)
        {
            double *Px = pk_alloc(T * d + T * ny * T + p * ny * T + p, sizeof *Px);
            if (!Px) {
                #pragma omp atomic write
                fail = 1;
            }
            #pragma omp for schedule(dynamic, 1)
            for (size_t i = 0; i < nx; i++)
                if (Px)
                    gram_pairs_row(l, i, rx, ax, dx, ny, ry, Py, dy, fold, Px, Px + T * d, Px + T * d + T * ny * T,
                                   Px + T * d + T * ny * T + p * ny * T, S, ldy, pairs);
            free(Px);
        }
        free(Py);
        if (fail) out_of_memory(nx, rx, ny, ry, S, ldy, pairs);
        return;
    }
    /* form A: D (nx rx, ny ry) = V_x V_y^T + Vb_x Vb_y^T */
    size_t vl = fold * p * d, bl = fold * p;
    double *Vx = pk_alloc(nx * rx, (vl + bl) * sizeof *Vx), *Vy = pk_alloc(ny * ry, (vl + bl) * sizeof *Vy);
    if (!Vx || !Vy || row_gradients(l, nx, rx, ax, dx, fold, Vx, Vx + nx * rx * vl) ||
        row_gradients(l, ny, ry, ay, dy, fold, Vy, Vy + ny * ry * vl)) {
        free(Vx); free(Vy);
        out_of_memory(nx, rx, ny, ry, S, ldy, pairs);
        return;
    }
    pk_gemm_by(mode, 0, 1, nx * rx, cols, vl, 1.0, Vx, vl, Vy, vl, 0.0, D, cols);
    pk_gemm_by(mode, 0, 1, nx * rx, cols, bl, 1.0, Vx + nx * rx * vl, bl, Vy + ny * ry * vl, bl, 1.0, D, cols);
    #pragma omp parallel for schedule(static) if (nx * rx * cols >= PK_PAR_MIN)
    for (size_t i = 0; i < nx; i++)
        for (size_t kx = 0; kx < rx; kx++)
            for (size_t j = 0; j < ny; j++) {
                double *dst = pairs ? S + ((i * ldy + j) * rx + kx) * ry : S + ((i * rx + kx) * ldy + j) * ry;
                const double *src = D + (i * rx + kx) * cols + j * ry;
                for (size_t ky = 0; ky < ry; ky++) dst[ky] += src[ky];
            }
    free(Vx);
    free(Vy);
    (void)A;
}

static void conv_gram_diag(const pk_layer *l, size_t n, size_t fold, const double *ax, const double *dx,
                           const double *ay, const double *dy, double *out)
{
    size_t len = l->out * fold;
    #pragma omp parallel for schedule(dynamic, 1) if (n > 1 && n * len * patch_len(l) >= PK_PAR_MIN)
    for (size_t j = 0; j < n; j++) {
        double D;
        conv_gram(l, 1, 1, ax + j * l->in, dx + j * len, 1, 1, ay + j * l->in, dy + j * len, fold, 0, PK_GEMM_ONE,
                  NULL, &D, out + j, 1, 1);
    }
}

/* nn.Conv2d's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and c with
 * fan_in = c_in kh kw (kaiming_uniform with a = sqrt(5)); N(0, 1) in the ntk
 * parameterisation: dense.c's rule, whose `in` is the fan-in. */
static void conv_init(const pk_layer *l, pk_rng *r, double *w)
{
    pk_layer as_dense = *l;
    as_dense.in = patch_len(l);
    pk_dense_ops.init(&as_dense, r, w);
}

static int conv_grad_rows(const pk_layer *l, size_t n, size_t rows, const double *x, const double *delta, double *V,
                          double *Vb)
{
    return row_gradients(l, n, rows, x, delta, 1, V, Vb);
}

const pk_layer_ops pk_conv_ops = {
    .kind = "conv2d",
    .forward = conv_forward,
    .backward = conv_backward,
    .grad = conv_grad,
    .gram = conv_gram,
    .gram_diag = conv_gram_diag,
    .grad_rows = conv_grad_rows,
    .init = conv_init,
};

/* --------------------------------------------------------------- pooling */

/* y (n, c h_out w_out): the mean or the maximum of each window. */
static void pool_forward(const pk_layer *l, const double *w, const double *x, double *y, size_t n, pk_gemm_mode mode)
{
    (void)w; (void)mode;
    int max = l->ops == &pk_maxpool_ops;
    double inv = 1.0 / (double)(l->kh * l->kw);
    #pragma omp parallel for schedule(static) if (n * l->in >= PK_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < l->c_in; c++)
            for (size_t oh = 0; oh < l->h_out; oh++)
                for (size_t ow = 0; ow < l->w_out; ow++) {
                    double v = max ? -INFINITY : 0.0;
                    for (size_t a = 0; a < l->kh; a++)
                        for (size_t b = 0; b < l->kw; b++) {
                            double u = x[i * l->in + source(l, c, oh, ow, a, b)];
                            if (max) v = u > v || isnan(u) ? u : v;
                            else v += u;
                        }
                    y[i * l->out + (c * l->h_out + oh) * l->w_out + ow] = max ? v : v * inv;
                }
}

/* gx (n per, c h_in w_in): average pooling spreads each delta over its
 * window; max pooling routes it to the window's first maximum, found again
 * from x. */
static void pool_backward(const pk_layer *l, const double *w, const double *x, const double *y, const double *gy,
                          double *gx, size_t n, size_t per, pk_gemm_mode mode)
{
    (void)w; (void)y; (void)mode;
    int max = l->ops == &pk_maxpool_ops;
    size_t rows = n * per;
    double inv = 1.0 / (double)(l->kh * l->kw);
    memset(gx, 0, rows * l->in * sizeof *gx);
    #pragma omp parallel for schedule(static) if (rows * l->in >= PK_PAR_MIN)
    for (size_t r = 0; r < rows; r++) {
        const double *xi = x + r / per * l->in;
        for (size_t c = 0; c < l->c_in; c++)
            for (size_t oh = 0; oh < l->h_out; oh++)
                for (size_t ow = 0; ow < l->w_out; ow++) {
                    double g = gy[r * l->out + (c * l->h_out + oh) * l->w_out + ow];
                    if (max) {
                        long at = source(l, c, oh, ow, 0, 0);
                        for (size_t a = 0; a < l->kh; a++)
                            for (size_t b = 0; b < l->kw; b++) {
                                long s = source(l, c, oh, ow, a, b);
                                if (xi[s] > xi[at] || isnan(xi[s])) at = s;
                            }
                        gx[r * l->in + at] += g;
                    } else
                        for (size_t a = 0; a < l->kh; a++)
                            for (size_t b = 0; b < l->kw; b++) gx[r * l->in + source(l, c, oh, ow, a, b)] += g * inv;
                }
    }
}

const pk_layer_ops pk_avgpool_ops = {.kind = "avgpool", .forward = pool_forward, .backward = pool_backward};
const pk_layer_ops pk_maxpool_ops = {.kind = "maxpool", .forward = pool_forward, .backward = pool_backward};

/* --------------------------------------------------------------- flatten */

/* (c, h, w) values read as one row: the same values, as nn.Flatten. */
static void flatten_forward(const pk_layer *l, const double *w, const double *x, double *y, size_t n,
                            pk_gemm_mode mode)
{
    (void)w; (void)mode;
    memcpy(y, x, n * l->out * sizeof *y);
}

static void flatten_backward(const pk_layer *l, const double *w, const double *x, const double *y,
                             const double *gy, double *gx, size_t n, size_t per, pk_gemm_mode mode)
{
    (void)w; (void)x; (void)y; (void)mode;
    if (gx != gy) memmove(gx, gy, n * per * l->out * sizeof *gx);
}

const pk_layer_ops pk_flatten_ops = {.kind = "flatten", .forward = flatten_forward, .backward = flatten_backward};
