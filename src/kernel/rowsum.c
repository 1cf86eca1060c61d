/* rowsum.c -- a step's contributions through gradient rows, summed over
 * the nodes (kernel.h, pk_rowsum; MATH.md section 8, form A): a query's
 * rows at every node of a step add up in parameter space before one
 * product with the batch's rows, instead of one product per node. */
#include "kernel/kernel.h"

#include <string.h>

int pk_rowsum_takes(const pk_model *m, size_t l, size_t rows)
{
    return pk_takes_rows(pk_model_weight(m, l), rows, 1, 1);
}

/* The layout of a row: nV values, voff per layer, the widest layer. */
static size_t layout(const pk_model *m, size_t rows, size_t *voff, size_t *wide)
{
    size_t nV = 0;
    *wide = 0;
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        voff[l] = SIZE_MAX;
        if (!pk_rowsum_takes(m, l, rows)) continue;
        voff[l] = nV;
        nV += lw->n_w;
        if (lw->n_w > *wide) *wide = lw->n_w;
    }
    return nV;
}

size_t pk_rowsum_values(const pk_model *m, size_t cap, size_t rows, size_t B)
{
    size_t voff[PK_MAX_MODEL_LAYERS], wide, nV = layout(m, rows, voff, &wide);
    if (!nV) return 0;
    size_t most = cap * rows > B ? cap * rows : B;
    return cap * rows * (nV + m->layer[0].out) + most * wide + B * nV;
}

pk_status pk_rowsum_init(pk_rowsum *r, const pk_model *m, size_t cap, size_t rows, size_t B)
{
    memset(r, 0, sizeof *r);
    r->nV = layout(m, rows, r->voff, &r->wide);
    r->rows = rows;
    r->cap = cap;
    r->d1 = m->layer[0].out;
    if (!r->nV) return PK_OK;
    r->sum1 = m->weight[0] == 0 && r->voff[0] != SIZE_MAX; /* the first layer reads the query */
    r->V = pk_calloc(cap * rows, r->nV * sizeof *r->V);
    r->G1 = r->sum1 ? pk_calloc(cap * rows, r->d1 * sizeof *r->G1) : NULL;
    r->Vr = pk_alloc(cap * rows > B ? cap * rows : B, r->wide * sizeof *r->Vr);
    if (!r->V || !r->Vr || (r->sum1 && !r->G1)) {
        pk_rowsum_free(r);
        return PK_ERR_NOMEM;
    }
    return PK_OK;
}

void pk_rowsum_free(pk_rowsum *r)
{
    free(r->V); free(r->G1); free(r->Vr);
    memset(r, 0, sizeof *r);
}

/* dst[(slot x, k)] += f[x] g for the gradient rows g of layer l (weights,
 * then bias: grad_rows) of examples x < n with `rows` delta rows each (a
 * (n, in), delta (n rows, out)): slot x is q[x] - q0 (x when q is NULL),
 * f[x] 1 when f is NULL; dst rows of r->nV values, the layer's from its
 * offset. r->Vr is the scratch. */
static pk_status add_layer_rows(pk_rowsum *r, const pk_model *m, size_t l, size_t n, size_t rows, const double *a,
                                const double *delta, double *dst, const uint32_t *q, size_t q0, const double *f)
{
    const pk_layer *lw = pk_model_weight(m, l);
    size_t nW = lw->b_off - lw->w_off, nc = lw->n_w - nW;
    if (lw->ops->grad_rows(lw, n, rows, a, delta, r->Vr, r->Vr + n * rows * nW))
        return pk_fail(PK_ERR_NOMEM, "out of memory in a layer's gradient rows");
    for (size_t x = 0; x < n; x++)
        for (size_t k = 0; k < rows; k++) {
            double w = f ? f[x] : 1.0, *v = dst + ((q ? q[x] - q0 : x) * rows + k) * r->nV + r->voff[l];
            const double *g = r->Vr + (x * rows + k) * nW, *gc = r->Vr + n * rows * nW + (x * rows + k) * nc;
            for (size_t j = 0; j < nW; j++) v[j] += w * g[j];
            for (size_t j = 0; j < nc; j++) v[nW + j] += w * gc[j];
        }
    return PK_OK;
}

pk_status pk_rowsum_batch(pk_rowsum *r, const pk_model *m, const pk_side *s, double *U)
{
    memset(U, 0, s->n * r->nV * sizeof *U);
    for (size_t l = 0; l < m->n_weight; l++) {
        if (r->voff[l] == SIZE_MAX) continue;
        pk_status st = add_layer_rows(r, m, l, s->n, 1, s->a[l], s->delta[l], U, NULL, 0, NULL);
        if (st) return st;
    }
    return PK_OK;
}

pk_status pk_rowsum_add(pk_rowsum *r, const pk_model *m, const pk_side *qs, size_t n, const uint32_t *q, size_t q0,
                        const double *f)
{
    size_t R = r->rows;
    for (size_t l = 0; l < m->n_weight; l++) {
        if (r->voff[l] == SIZE_MAX) continue;
        if (l == 0 && r->sum1) { /* the deltas, summed: the rows are formed at the close */
            for (size_t x = 0; x < n; x++)
                for (size_t k = 0; k < R; k++) {
                    double *g = r->G1 + ((q[x] - q0) * R + k) * r->d1;
                    const double *dx = qs->delta[0] + (x * R + k) * r->d1;
                    for (size_t j = 0; j < r->d1; j++) g[j] += f[x] * dx[j];
                }
            continue;
        }
        pk_status st = add_layer_rows(r, m, l, n, R, qs->a[l], qs->delta[l], r->V, q, q0, f);
        if (st) return st;
    }
    return PK_OK;
}

pk_status pk_rowsum_close(pk_rowsum *r, const pk_model *m, const double *X, size_t nq, const double *U, size_t nb,
                          double *S)
{
    size_t R = r->rows;
    if (r->sum1) { /* the first layer's part of V is zero until now */
        pk_status st = add_layer_rows(r, m, 0, nq, R, X, r->G1, r->V, NULL, 0, NULL);
        if (st) return st;
        memset(r->G1, 0, nq * R * r->d1 * sizeof *r->G1);
    }
    pk_gemm_rows(0, 1, nq * R, nb, r->nV, 1.0, r->V, r->nV, U, r->nV, 0.0, S, nb);
    memset(r->V, 0, nq * R * r->nV * sizeof *r->V);
    return PK_OK;
}
