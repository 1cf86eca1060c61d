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
#include <omp.h>
#include <string.h>

static size_t positions(const pk_layer *l) { return l->h_out * l->w_out; } /* T */
static size_t patch_len(const pk_layer *l) { return l->c_in * l->kh * l->kw; } /* d */

/* The output positions [*lo, *hi) of a row whose window element at offset
 * j reads inside an input row of n values (the others read padding). */
static void inside(const pk_layer *l, size_t j, size_t n, size_t n_out, size_t *lo, size_t *hi)
{
    size_t s = l->stride, a = l->pad > j ? (l->pad - j + s - 1) / s : 0; /* first o with o s + j >= pad */
    size_t b = n + l->pad > j ? (n + l->pad - j + s - 1) / s : 0;      /* first o with o s + j - pad >= n */
    *lo = a < n_out ? a : n_out;
    *hi = b < n_out ? b : n_out;
    if (*hi < *lo) *hi = *lo;
}

/* col (d, T), leading dimension ld >= T: the im2col patches of one example
 * x (c_in, h_in, w_in), transposed: row q = (c, i, j) of W's layout holds,
 * for every output position t, the input value under weight (c, i, j); 0
 * in the padding. */
static void im2col(const pk_layer *l, const double *x, double *col, size_t ld)
{
    size_t kh = l->kh, kw = l->kw, H = l->h_in, W = l->w_in, ho = l->h_out, wo = l->w_out, s = l->stride;
    for (size_t c = 0; c < l->c_in; c++)
        for (size_t i = 0; i < kh; i++) {
            size_t r0, r1;
            inside(l, i, H, ho, &r0, &r1);
            for (size_t j = 0; j < kw; j++) {
                double *row = col + ((c * kh + i) * kw + j) * ld;
                size_t c0, c1;
                inside(l, j, W, wo, &c0, &c1);
                memset(row, 0, r0 * wo * sizeof *row);
                for (size_t oh = r0; oh < r1; oh++) {
                    const double *xr = x + (c * H + oh * s + i - l->pad) * W; /* the input row */
                    double *o = row + oh * wo;
                    for (size_t ow = 0; ow < c0; ow++) o[ow] = 0.0;
                    if (s == 1) memcpy(o + c0, xr + c0 + j - l->pad, (c1 - c0) * sizeof *o);
                    else
                        for (size_t ow = c0; ow < c1; ow++) o[ow] = xr[ow * s + j - l->pad];
                    for (size_t ow = c1; ow < wo; ow++) o[ow] = 0.0;
                }
                memset(row + r1 * wo, 0, (ho - r1) * wo * sizeof *row);
            }
        }
}

/* gx (c_in, h_in, w_in) += dcol (d, T) added back where each patch value came from. */
static void col2im(const pk_layer *l, const double *dcol, double *gx)
{
    size_t kh = l->kh, kw = l->kw, H = l->h_in, W = l->w_in, ho = l->h_out, wo = l->w_out, s = l->stride;
    for (size_t c = 0; c < l->c_in; c++)
        for (size_t i = 0; i < kh; i++) {
            size_t r0, r1;
            inside(l, i, H, ho, &r0, &r1);
            for (size_t j = 0; j < kw; j++) {
                const double *row = dcol + ((c * kh + i) * kw + j) * ho * wo;
                size_t c0, c1;
                inside(l, j, W, wo, &c0, &c1);
                for (size_t oh = r0; oh < r1; oh++) {
                    double *g = gx + (c * H + oh * s + i - l->pad) * W; /* the input row */
                    const double *o = row + oh * wo;
                    if (s == 1) {
                        double *gr = g + c0 + j - l->pad;
                        for (size_t ow = 0; ow < c1 - c0; ow++) gr[ow] += o[c0 + ow];
                    } else
                        for (size_t ow = c0; ow < c1; ow++) g[ow * s + j - l->pad] += o[ow];
                }
            }
        }
}

/* ---------------------------------------------------------------- conv2d */

/* A row no result could be computed for (its scratch could not be had):
 * NaN, so that nothing downstream takes it for a value; returns 1. */
static int nan_row(double *row, size_t n)
{
    for (size_t k = 0; k < n; k++) row[k] = NAN;
    return 1;
}

/* y_i (c_out, T) = sw W col_i + sb c for every example: one product of a
 * fixed shape per example, so an example's result never depends on the
 * others in the call (whatever the mode), written straight in NCHW. */
static void conv_forward(const pk_layer *l, const double *w, const double *x, double *y, size_t n, pk_gemm_mode mode)
{
    (void)mode;
    size_t T = positions(l), d = patch_len(l), p = l->c_out;
    const double *W = w + l->w_off, *c = w + l->b_off;
    int fail = 0;
    #pragma omp parallel if (n > 1 && n * T * d * p >= PK_PAR_MIN)
    {
        double *col = pk_scratch(0, d * T); /* (d, T) */
        #pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            double *yi = y + i * l->out;
            if (!col) { fail = nan_row(yi, l->out); continue; } /* out of memory */
            im2col(l, x + i * l->in, col, T);
            pk_gemm_tile(0, 0, p, T, d, l->sw, W, d, col, T, 0.0, yi, T);
            for (size_t k = 0; k < p; k++)
                for (size_t t = 0; t < T; t++) yi[k * T + t] += l->sb * c[k];
        }
    }
    if (fail) pk_fail(PK_ERR_NOMEM, "out of memory in a conv2d layer's forward pass");
}

/* gx_r (c_in h_in w_in) from gy_r (c_out, T) for every row: dcol = sw W^T
 * gy_r (d, T), added back through col2im; a product of a fixed shape per row. */
static void conv_backward(const pk_layer *l, const double *w, const double *x, const double *y, const double *gy,
                          double *gx, size_t n, size_t per, pk_gemm_mode mode)
{
    (void)x; (void)y; (void)mode;
    size_t T = positions(l), d = patch_len(l), p = l->c_out, rows = n * per;
    const double *W = w + l->w_off;
    int fail = 0;
    #pragma omp parallel if (rows > 1 && rows * T * d * p >= PK_PAR_MIN)
    {
        double *dcol = pk_scratch(0, d * T); /* (d, T) */
        #pragma omp for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            double *g = gx + r * l->in;
            if (!dcol) { fail = nan_row(g, l->in); continue; } /* out of memory */
            pk_gemm_tile(1, 0, d, T, p, l->sw, W, d, gy + r * l->out, T, 0.0, dcol, T);
            memset(g, 0, l->in * sizeof *g);
            col2im(l, dcol, g);
        }
    }
    if (fail) pk_fail(PK_ERR_NOMEM, "out of memory in a conv2d layer's backward pass");
}

/* Examples per chunk of the gradient's product: about 1 MB of patches (a
 * fixed number, so the sum's order never depends on the thread count). */
static size_t chunk_examples(const pk_layer *l)
{
    size_t per = positions(l) * patch_len(l);
    return per >= ((size_t)1 << 17) ? 1 : ((size_t)1 << 17) / per;
}

/* dW (c_out, d) = scale sw sum_i gy_i (c_out, T) col_i^T (T, d); dc = scale
 * sb sum_i sum_t gy_i: per chunk its patches side by side (d, E T) and its
 * deltas (c_out, E T), one product per chunk; the chunks go to the threads
 * whole and their products are added in chunk order. */
static void conv_grad(const pk_layer *l, const double *x, const double *gy, size_t n, double scale, double *g)
{
    size_t T = positions(l), d = patch_len(l), p = l->c_out, E = chunk_examples(l), chunks = (n + E - 1) / E;
    size_t nw = p * d;
    double *gc = g + (l->b_off - l->w_off);
    double *part = pk_alloc(chunks ? chunks : 1, nw * sizeof *part); /* (chunks, c_out d) */
    int fail = !part;
    #pragma omp parallel if (!fail && chunks > 1 && n * T * d * p >= PK_PAR_MIN)
    {
        double *col = pk_scratch(1, d * E * T), *G = pk_scratch(2, p * E * T); /* (d, E T), (p, E T) */
        if (!col || !G) {
            #pragma omp atomic write
            fail = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (size_t c = 0; c < chunks; c++) {
            if (!col || !G) continue;
            size_t i0 = c * E, ne = n - i0 < E ? n - i0 : E;
            for (size_t i = 0; i < ne; i++) {
                im2col(l, x + (i0 + i) * l->in, col + i * T, ne * T);
                for (size_t k = 0; k < p; k++)
                    memcpy(G + k * ne * T + i * T, gy + (i0 + i) * l->out + k * T, T * sizeof *G);
            }
            pk_gemm_tile(0, 1, p, d, ne * T, scale * l->sw, G, ne * T, col, ne * T, 0.0, part + c * nw, d);
        }
    }
    if (fail) {
        free(part);
        for (size_t k = 0; k < l->n_w; k++) g[k] = NAN;
        pk_fail(PK_ERR_NOMEM, "out of memory in a conv2d layer's gradient");
        return;
    }
    memset(g, 0, nw * sizeof *g);
    for (size_t c = 0; c < chunks; c++)
        for (size_t k = 0; k < nw; k++) g[k] += part[c * nw + k];
    free(part);
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
static int form_b(const pk_layer *l, size_t rx, size_t ry, size_t fold)
{
    double T = (double)positions(l), d = (double)patch_len(l), p = (double)l->c_out, f = (double)fold;
    double a = (double)rx * ry * f * (p * d + p) + (double)(rx + ry) * f * p * d * T / 64.0;
    double b = T * T * d + (double)rx * f * p * T * T + (double)rx * ry * f * p * T;
    return b < a;
}

int pk_takes_rows(const pk_layer *l, size_t rx, size_t ry, size_t fold)
{
    if (!l->ops->grad_rows) return 0;
    return l->ops != &pk_conv_ops || !form_b(l, rx, ry, fold);
}

/* V (n rows, fold c_out d) = sw G^T P for every row of deltas, and Vb (n
 * rows, fold c_out) = sb 1^T G. P: scratch (d, T) per thread. */
static int row_gradients(const pk_layer *l, size_t n, size_t rows, const double *a, const double *delta,
                         size_t fold, double *V, double *Vb)
{
    size_t T = positions(l), d = patch_len(l), p = l->c_out, segs = rows * fold;
    int fail = 0;
    #pragma omp parallel if (n * segs * p * d * T >= PK_PAR_MIN)
    {
        double *P = pk_scratch(3, T * d); /* (d, T) */
        if (!P) {
            #pragma omp atomic write
            fail = 1;
        }
        #pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            if (!P) continue;
            im2col(l, a + i * l->in, P, T);
            /* (segs p, T) deltas of example i times its patches (T, d) */
            pk_gemm_tile(0, 1, segs * p, d, T, l->sw, delta + i * segs * p * T, T, P, T, 0.0, V + i * segs * p * d, d);
            for (size_t s = 0; s < segs * p; s++) {
                const double *g = delta + (i * segs * p + s) * T;
                double sum = 0;
                for (size_t t = 0; t < T; t++) sum += g[t];
                Vb[i * segs * p + s] = l->sb * sum;
            }
        }
    }
    return fail;
}

/* Form B for example i of x against every example of y: S (its rx rows, ny
 * ry) += sum_f [sw^2 <G_x, G_y (P_x P_y^T)^T> + sb^2 (1^T G_x)(1^T G_y)].
 * Py (d, ny T) the patches of y side by side; Px (d, T), PP (T, ny T), U
 * (c_out, ny T) and bx (c_out) scratch. */
static void gram_pairs_row(const pk_layer *l, size_t i, size_t rx, const double *ax, const double *dx, size_t ny,
                           size_t ry, const double *Py, const double *dy, size_t fold, double *Px, double *PP,
                           double *U, double *bx, double *S, size_t ldy, int pairs)
{
    size_t T = positions(l), d = patch_len(l), p = l->c_out, len = l->out * fold;
    double sw2 = l->sw * l->sw, sb2 = l->sb * l->sb;
    im2col(l, ax + i * l->in, Px, T);
    pk_gemm_tile(1, 0, T, ny * T, d, 1.0, Px, T, Py, ny * T, 0.0, PP, ny * T);
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
    if (form_b(l, rx, ry, fold)) {
        double *Py = pk_scratch(5, ny * T * d); /* (d, ny T) */
        int fail = !Py;
        if (fail) { out_of_memory(nx, rx, ny, ry, S, ldy, pairs); return; }
        #pragma omp parallel for schedule(static) if (!fail && ny * T * d >= PK_PAR_MIN)
        for (size_t j = 0; j < ny; j++)
            if (Py) im2col(l, ay + j * l->in, Py + j * T, ny * T);
        #pragma omp parallel if (!fail && nx * cols * p * T * T >= PK_PAR_MIN)
        {
            double *Px = pk_scratch(6, T * d + T * ny * T + p * ny * T + p);
            if (!Px) {
                #pragma omp atomic write
                fail = 1;
            }
            #pragma omp for schedule(dynamic, 1)
            for (size_t i = 0; i < nx; i++)
                if (Px)
                    gram_pairs_row(l, i, rx, ax, dx, ny, ry, Py, dy, fold, Px, Px + T * d, Px + T * d + T * ny * T,
                                   Px + T * d + T * ny * T + p * ny * T, S, ldy, pairs);
        }
        if (fail) out_of_memory(nx, rx, ny, ry, S, ldy, pairs);
        return;
    }
    /* form A: S += V_x V_y^T + Vb_x Vb_y^T */
    size_t vl = fold * p * d, bl = fold * p;
    double *Vx = pk_scratch(4, nx * rx * (vl + bl)), *Vy = pk_scratch(7, ny * ry * (vl + bl));
    if (!Vx || !Vy || row_gradients(l, nx, rx, ax, dx, fold, Vx, Vx + nx * rx * vl) ||
        row_gradients(l, ny, ry, ay, dy, fold, Vy, Vy + ny * ry * vl)) {
        out_of_memory(nx, rx, ny, ry, S, ldy, pairs);
        return;
    }
    pk_gram_rows(nx, rx, Vx, Vx + nx * rx * vl, ny, ry, Vy, Vy + ny * ry * vl, vl, bl, mode, D, S, ldy, pairs);
    (void)A;
}

/* The diagonal K(x_j, y_j), one example j a task. */
typedef struct diag_job {
    const pk_layer *l;
    size_t fold, len;  /* rows of deltas an example, values a row */
    const double *ax, *dx, *ay, *dy;
    double *out;
} diag_job;

static pk_status diag_one(void *ctx, size_t j, int thread)
{
    (void)thread;
    const diag_job *b = ctx;
    double D;
    conv_gram(b->l, 1, 1, b->ax + j * b->l->in, b->dx + j * b->len, 1, 1, b->ay + j * b->l->in, b->dy + j * b->len,
              b->fold, 0, PK_GEMM_ONE, NULL, &D, b->out + j, 1, 1);
    return PK_OK;
}

static void conv_gram_diag(const pk_layer *l, size_t n, size_t fold, const double *ax, const double *dx,
                           const double *ay, const double *dy, double *out)
{
    diag_job b = {l, fold, l->out * fold, ax, dx, ay, dy, out};
    int threads = n > 1 && n * b.len * patch_len(l) >= PK_PAR_MIN ? omp_get_max_threads() : 1;
    pk_tasks(n, threads, diag_one, &b);
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
    size_t H = l->h_in, W = l->w_in, ho = l->h_out, wo = l->w_out, s = l->stride, planes = n * l->c_in;
    double inv = 1.0 / (double)(l->kh * l->kw);
    #pragma omp parallel for schedule(static) if (planes * H * W >= PK_PAR_MIN)
    for (size_t pl = 0; pl < planes; pl++) { /* example i, channel c: plane i c_in + c */
        const double *xp = x + pl * H * W;
        double *yp = y + pl * ho * wo;
        for (size_t oh = 0; oh < ho; oh++)
            for (size_t ow = 0; ow < wo; ow++) {
                const double *win = xp + oh * s * W + ow * s;
                double v = max ? -INFINITY : 0.0;
                for (size_t a = 0; a < l->kh; a++)
                    for (size_t b = 0; b < l->kw; b++) {
                        double u = win[a * W + b];
                        if (max) v = u > v || isnan(u) ? u : v;
                        else v += u;
                    }
                yp[oh * wo + ow] = max ? v : v * inv;
            }
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
    size_t H = l->h_in, W = l->w_in, ho = l->h_out, wo = l->w_out, s = l->stride, C = l->c_in, rows = n * per;
    double inv = 1.0 / (double)(l->kh * l->kw);
    #pragma omp parallel for schedule(static) if (rows * l->in >= PK_PAR_MIN)
    for (size_t r = 0; r < rows; r++) {
        memset(gx + r * l->in, 0, l->in * sizeof *gx); /* each thread first touches its own rows */
        for (size_t c = 0; c < C; c++) {
            const double *xp = x + (r / per * C + c) * H * W, *gp = gy + (r * C + c) * ho * wo;
            double *g = gx + (r * C + c) * H * W;
            for (size_t oh = 0; oh < ho; oh++)
                for (size_t ow = 0; ow < wo; ow++) {
                    size_t at = oh * s * W + ow * s; /* the window's corner */
                    double v = gp[oh * wo + ow];
                    if (max) {
                        size_t best = at;
                        for (size_t a = 0; a < l->kh; a++)
                            for (size_t b = 0; b < l->kw; b++) {
                                size_t k = at + a * W + b;
                                if (xp[k] > xp[best] || isnan(xp[k])) best = k;
                            }
                        g[best] += v;
                    } else
                        for (size_t a = 0; a < l->kh; a++)
                            for (size_t b = 0; b < l->kw; b++) g[at + a * W + b] += v * inv;
                }
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
