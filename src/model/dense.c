/* dense.c -- the dense layer z = sw W x + sb c (nn.Linear's layout: W (out,
 * in) row-major, then c (out)), sw = sb = 1 in the standard
 * parameterisation, sw = sigma_w / sqrt(in) and sb = sigma_b in the ntk one.
 * Its share of the tangent kernel is MATH.md section 4's
 * (delta . delta') (sw^2 a . a' + sb^2). */
#include "model/model.h"

#include <math.h>
#include <string.h>

static void dense_forward(const pk_layer *l, const double *w, const double *x, double *y, size_t n, pk_gemm_mode mode)
{
    size_t din = l->in, dout = l->out;
    const double *c = w + l->b_off;
    double sb = l->sb;
    /* y (n, dout) = sw x (n, din) W^T, then + sb c */
    pk_gemm_by(mode, 0, 1, n, dout, din, l->sw, x, din, w + l->w_off, din, 0.0, y, dout);
    #pragma omp parallel for schedule(static) if (n * dout >= PK_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        double *yi = y + i * dout;
        for (size_t j = 0; j < dout; j++) yi[j] += sb * c[j];
    }
}

/* gx (n per, din) = sw gy (n per, dout) W. */
static void dense_backward(const pk_layer *l, const double *w, const double *x, const double *y, const double *gy,
                           double *gx, size_t n, size_t per, pk_gemm_mode mode)
{
    size_t din = l->in, dout = l->out;
    pk_gemm_by(mode, 0, 0, n * per, din, dout, l->sw, gy, dout, w + l->w_off, din, 0.0, gx, din);
}

static void dense_grad(const pk_layer *l, const double *x, const double *gy, size_t n, double scale, double *g)
{
    size_t din = l->in, dout = l->out;
    /* dW (dout, din) = scale sw gy^T x ; dc = scale sb sum_i gy_i */
    pk_gemm(1, 0, dout, din, n, scale * l->sw, gy, dout, x, din, 0.0, g, din);
    double *gc = g + (l->b_off - l->w_off), sb = scale * l->sb;
    for (size_t j = 0; j < dout; j++) gc[j] = 0.0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < dout; j++) gc[j] += gy[i * dout + j];
    for (size_t j = 0; j < dout; j++) gc[j] *= sb;
}

/* The backward pass of e_k: row k of sw W, for every example. */
static void dense_backward_unit(const pk_layer *l, const double *w, double *gx, size_t n)
{
    size_t din = l->in, C = l->out;
    const double *W = w + l->w_off;
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < C; c++)
            for (size_t k = 0; k < din; k++) gx[(i * C + c) * din + k] = l->sw * W[c * din + k];
}

static void dense_gram(const pk_layer *l, size_t nx, size_t rx, const double *ax, const double *dx, size_t ny,
                       size_t ry, const double *ay, const double *dy, size_t fold, int unit, pk_gemm_mode mode,
                       double *A, double *D, double *S, size_t ldy, int pairs)
{
    size_t din = l->in, len = l->out * fold, cols = ny * ry;
    double sw2 = l->sw * l->sw, sb2 = l->sb * l->sb;
    /* A (nx, ny) = a_x a_y^T */
    pk_gemm_by(mode, 0, 1, nx, ny, din, 1.0, ax, din, ay, din, 0.0, A, ny);
    /* D (nx rx, ny ry) = delta_x delta_y^T; unit deltas (e_k on both sides):
     * D is 1 where k = k' (read as one row of C: the trace, C) */
    if (!unit) pk_gemm_by(mode, 0, 1, nx * rx, cols, len, 1.0, dx, len, dy, len, 0.0, D, cols);
    double diag = rx == 1 ? (double)fold : 1.0;
    #define S_AT(i, kx, j) (pairs ? S + (((i) * ldy + (j)) * rx + (kx)) * ry : S + (((i) * rx + (kx)) * ldy + (j)) * ry)
    #pragma omp parallel for schedule(static) if (nx * rx * cols >= PK_PAR_MIN)
    for (size_t i = 0; i < nx; i++)
        for (size_t kx = 0; kx < rx; kx++) {
            const double *Ai = A + i * ny, *Dr = D + (i * rx + kx) * cols;
            for (size_t j = 0; j < ny; j++) {
                double c = sw2 * Ai[j] + sb2, *dst = S_AT(i, kx, j);
                if (unit) dst[rx == 1 ? 0 : kx] += c * diag;
                else
                    for (size_t ky = 0; ky < ry; ky++) dst[ky] += c * Dr[j * ry + ky];
            }
        }
    #undef S_AT
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void dense_gram_diag(const pk_layer *l, size_t n, size_t fold, const double *ax, const double *dx,
                            const double *ay, const double *dy, double *out)
{
    size_t din = l->in, len = l->out * fold;
    double sw2 = l->sw * l->sw, sb2 = l->sb * l->sb;
    #pragma omp parallel for schedule(static) if (n * (din + len) >= PK_PAR_MIN)
    for (size_t j = 0; j < n; j++)
        out[j] += (sw2 * dot(ax + j * din, ay + j * din, din) + sb2) * dot(dx + j * len, dy + j * len, len);
}

/* PyTorch nn.Linear's default, U(-1/sqrt(in), 1/sqrt(in)) for W and c;
 * N(0, 1) in the ntk parameterisation. W then c: one contiguous block. */
static void dense_init(const pk_layer *l, pk_rng *r, double *w)
{
    size_t n = l->n_w;
    double *p = w + l->w_off;
    if (l->param == PK_PARAM_NTK) {
        for (size_t i = 0; i < n; i++) p[i] = pk_rng_normal(r);
    } else {
        double bound = 1.0 / sqrt((double)l->in);
        for (size_t i = 0; i < n; i++) p[i] = bound * (2.0 * pk_rng_uniform(r) - 1.0);
    }
}

const pk_layer_ops pk_dense_ops = {
    .kind = "dense",
    .forward = dense_forward,
    .backward = dense_backward,
    .grad = dense_grad,
    .backward_unit = dense_backward_unit,
    .gram = dense_gram,
    .gram_diag = dense_gram_diag,
    .init = dense_init,
};
