/* tangent.c -- the empirical tangent kernel by the structured per-layer
 * formula of MATH.md section 4: per layer, a Gram matrix of layer inputs and
 * one of deltas (two GEMMs) joined by a Hadamard product. Never forms a
 * P-long gradient. */
#include "internal.h"

#include <string.h>

pk_status pk_deltas_new(const pk_mlp *m, size_t cap, double **deltas)
{
    size_t C = m->dims[m->n_layers];
    memset(deltas, 0, PK_MAX_LAYERS * sizeof *deltas);
    for (size_t l = 0; l < m->n_layers; l++) {
        deltas[l] = pk_alloc(cap * C, m->dims[l + 1] * sizeof(double));
        if (!deltas[l]) { pk_deltas_free(m, deltas); return PK_ERR_NOMEM; }
    }
    return PK_OK;
}

void pk_deltas_free(const pk_mlp *m, double **deltas)
{
    for (size_t l = 0; l < m->n_layers; l++) { free(deltas[l]); deltas[l] = NULL; }
}

pk_side pk_side_outputs(const pk_mlp *m, const pk_tape *t, double *const *deltas, int trace)
{
    size_t C = m->dims[m->n_layers];
    pk_side s = {t->n, trace ? 1 : C, trace ? C : 1, 1, {0}, {0}};
    for (size_t l = 0; l < m->n_layers; l++) {
        s.a[l] = t->a[l];
        s.delta[l] = deltas[l];
    }
    return s;
}

pk_side pk_side_loss(const pk_mlp *m, const pk_tape *t)
{
    pk_side s = {t->n, 1, 1, 0, {0}, {0}};
    for (size_t l = 0; l < m->n_layers; l++) {
        s.a[l] = t->a[l];
        s.delta[l] = t->delta[l];
    }
    return s;
}

void pk_side_product(const pk_mlp *m, const pk_side *x, const pk_side *y, double *S, size_t ldy,
                     int pairs, double *A, double *D)
{
    size_t nx = x->n, ny = y->n, rx = x->rows, ry = y->rows, L = m->n_layers;
    size_t cols = ny * ry;
    /* where (x, kx, y, 0) lives in S */
    #define S_AT(i, kx, j) (pairs ? S + (((i) * ldy + (j)) * rx + (kx)) * ry : S + (((i) * rx + (kx)) * ldy + (j)) * ry)
    for (size_t i = 0; i < nx; i++)
        for (size_t kx = 0; kx < rx; kx++)
            if (!pairs) memset(S_AT(i, kx, 0), 0, cols * sizeof *S);
            else for (size_t j = 0; j < ny; j++) memset(S_AT(i, kx, j), 0, ry * sizeof *S);
    for (size_t l = 0; l < L; l++) {
        size_t din = m->dims[l], len = m->dims[l + 1] * x->fold;
        double sw = pk_mlp_wscale(m, l), sb = pk_mlp_bscale(m, l);
        double sw2 = sw * sw, sb2 = sb * sb;
        /* A (nx, ny) = a_x a_y^T */
        pk_gemm(0, 1, nx, ny, din, 1.0, x->a[l], din, y->a[l], din, 0.0, A, ny);
        /* Per-output deltas of the output layer are the unit vectors e_k:
         * D = delta_x delta_y^T is then 1 where k = k' (fold = C: the trace, C). */
        int unit = l + 1 == L && x->unit && y->unit;
        if (!unit) /* D (nx*rx, ny*ry) = delta_x delta_y^T */
            pk_gemm(0, 1, nx * rx, cols, len, 1.0, x->delta[l], len, y->delta[l], len, 0.0, D, cols);
        double diag = rx == 1 ? (double)x->fold : 1.0;
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
    }
    #undef S_AT
}

pk_status pk_kernel_tangent(const pk_mlp *m, const double *w, const double *X, size_t nx,
                            const double *Y, size_t ny, pk_kmode mode, double *K)
{
    size_t C = m->dims[m->n_layers], d = m->dims[0];
    int trace = mode == PK_KMODE_TRACE;
    size_t r = trace ? 1 : C;
    /* Blocks of B x B pairs keep the scratch D under 64 MiB: 256 x 256 pairs
     * with 10 x 10 blocks: a 200 x 200 kernel is one block, and no side is
     * computed twice. */
    size_t B = 64;
    while (B < 4096 && (2 * B) * (2 * B) * r * r * sizeof(double) <= ((size_t)64 << 20)) B *= 2;
    size_t bx = nx < B ? nx : B, by = ny < B ? ny : B;
    if (!bx || !by) return PK_OK;
    pk_tape *tx = pk_tape_new(m, bx), *ty = pk_tape_new(m, by);
    double *dx[PK_MAX_LAYERS], *dy[PK_MAX_LAYERS];
    int okx = !pk_deltas_new(m, bx, dx), oky = !pk_deltas_new(m, by, dy);
    double *D = pk_alloc(bx * r * by * r, sizeof *D), *A = pk_alloc(bx * by, sizeof *A);
    pk_status s = PK_OK;
    if (!tx || !ty || !okx || !oky || !D || !A) s = PK_ERR_NOMEM;
    for (size_t x0 = 0; !s && x0 < nx; x0 += bx) {
        size_t nbx = nx - x0 < bx ? nx - x0 : bx;
        pk_mlp_forward(m, w, X + x0 * d, nbx, tx);
        pk_mlp_output_deltas(m, w, tx, dx);
        pk_side sx = pk_side_outputs(m, tx, dx, trace);
        for (size_t y0 = 0; y0 < ny; y0 += by) {
            size_t nby = ny - y0 < by ? ny - y0 : by;
            pk_mlp_forward(m, w, Y + y0 * d, nby, ty);
            pk_mlp_output_deltas(m, w, ty, dy);
            pk_side sy = pk_side_outputs(m, ty, dy, trace);
            /* straight into the block of K (nx, ny[, C, C]) at (x0, y0) */
            pk_side_product(m, &sx, &sy, K + (x0 * ny + y0) * r * r, ny, 1, A, D);
        }
    }
    pk_tape_free(tx);
    pk_tape_free(ty);
    if (okx) pk_deltas_free(m, dx);
    if (oky) pk_deltas_free(m, dy);
    free(D); free(A);
    return s;
}
