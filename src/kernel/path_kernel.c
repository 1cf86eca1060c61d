/* path_kernel.c -- the paper's path kernel (MATH.md section 3, "The paper's
 * path kernel"): the tangent kernel integrated along the recorded path,
 *
 *     K^p(x, y) = sum_t eta_t sum_q c_q K^g_{w_t + s_q D_t}(x, y),
 *
 * the same quadrature node on both arguments and no batch indicator, so it
 * is symmetric and positive semi-definite (a positive sum of Gram
 * matrices). Per step and node, the tangent kernel comes from the layers'
 * own shares of the per-example gradient products (pk_side_product, MATH.md
 * section 4), block by block, and is added into K with the weight
 * eta_t c_q. The contribution kernel of path.c (with the batch indicator)
 * is the other kernel of section 3. */
#include "kernel/kernel.h"

#include <omp.h>
#include <string.h>

/* Examples per block of the x side and of the y side: fixed, so that an
 * element's bits depend neither on nx, ny nor on the thread count (the
 * products run with the x side as queries, pk_gemm_rows, and the y side's
 * blocks always start at multiples of Y_BLOCK). X_BLOCK is a multiple of
 * Y_BLOCK: the y blocks that start at or after an x block's first example
 * hold every pair (i, j >= i) of it (the upper triangle, when Y is X). The
 * y blocks are small so that one worker's memory stays small (explain
 * under a small --mem), the x side is kept for all of them. */
#define X_BLOCK 128
#define Y_BLOCK 32

/* The examples of one block at one node: a tape, its per-output deltas
 * and per-row gradients (pk_side_bufs), the side they make. */
typedef struct pside {
    pk_tape *t;
    pk_side_bufs b;
    pk_side s;
    int trace;
} pside;

static void pside_free(const pk_model *m, pside *p)
{
    pk_tape_free(p->t);
    pk_side_bufs_free(m, &p->b);
    p->t = NULL;
}

static pk_status pside_new(const pk_model *m, size_t cap, int trace, pside *p)
{
    memset(p, 0, sizeof *p);
    p->trace = trace;
    p->t = pk_tape_new(m, cap);
    if (!p->t || pk_side_bufs_new(m, cap, trace, &p->b)) { pside_free(m, p); return PK_ERR_NOMEM; }
    p->t->queries = 1; /* every row's bits independent of the block it is in */
    return PK_OK;
}

/* The side of the n examples X (n, d) at weights w. */
static pk_status pside_compute(const pk_model *m, const double *w, const double *X, size_t n, pside *p)
{
    pk_model_forward(m, w, X, n, p->t);
    return pk_side_form(m, w, p->t, &p->b, p->trace, &p->s);
}

/* Examples a block of B holds, for n examples. */
static size_t side_cap(size_t n, size_t B) { return n < B ? (n ? n : 1) : B; }

size_t pk_path_kernel_worker(const pk_model *m, size_t nx, size_t ny, pk_kmode mode)
{
    size_t C = m->n_out, r = mode == PK_KMODE_FULL ? C : 1, bx = side_cap(nx, X_BLOCK), by = side_cap(ny, Y_BLOCK);
    double sd = (double)pk_model_widths(m), per = 3 * sd + (double)pk_side_bufs_values(m, r == 1); /* tape, side */
    double b = (double)(bx + by) * per;                                     /* the two sides      */
    b += (double)bx * (double)by * (double)(r * r + 1 + r * r);             /* S, A, D            */
    b *= sizeof(double);
    return b > 1e18 ? (size_t)1e18 : (size_t)b;
}

/* The replay's own memory: weights, node, gradient, optimiser state and a batch. */
static size_t replay_bytes(const pk_run *run)
{
    const pk_model *m = pk_run_model(run);
    size_t B = pk_run_batch_cap(run);
    double b = (double)(5 + pk_optim_state_len(pk_run_optim(run))) * (double)m->n_params;
    b += (double)B * ((double)m->n_in + 3.0 * (double)pk_model_widths(m) + (double)m->n_out);
    return (size_t)(b * sizeof(double));
}

size_t pk_path_kernel_min_bytes(const pk_run *run, size_t nx, size_t ny, pk_kmode mode)
{
    return replay_bytes(run) + pk_path_kernel_worker(pk_run_model(run), nx, ny, mode);
}

size_t pk_run_path_kernel_bytes(const pk_run *run, size_t nx, size_t ny, pk_kmode mode)
{
    const pk_model *m = pk_run_model(run);
    size_t r = mode == PK_KMODE_FULL ? m->n_out : 1;
    size_t pairs = ((nx + X_BLOCK - 1) / X_BLOCK) * ((ny + Y_BLOCK - 1) / Y_BLOCK), workers = (size_t)pk_threads_get();
    if (workers > pairs) workers = pairs ? pairs : 1;
    double b = (double)nx * (double)ny * (double)(r * r) * sizeof(double) + (double)replay_bytes(run) +
               (double)workers * (double)pk_path_kernel_worker(m, nx, ny, mode);
    return b > 1e18 ? (size_t)1e18 : (size_t)b;
}

/* What a thread holds: the sides of its block pair (the x side kept while
 * its next pair has the same x block) and the scratch of the product. */
/* The exact rule (MATH.md section 12): a block's examples at their nodes,
 * k rows a piece, the examples with a kink first. */
typedef struct erows {
    size_t n, nk, cap, cap_e;       /* rows; the first nk are the examples' with a kink */
    pk_tape *t;
    pk_side_bufs bufs;              /* their per-output deltas and per-row gradients */
    pk_side s;                      /* the side of all n rows */
    double *X, *at, *a, *b;         /* (cap, d) the rows' examples; (cap) node, piece [a, b] */
    size_t *first;                  /* (2 examples): example i's rows first[i] .. first[i] + first[ne + i] */
} erows;

static void erows_free(const pk_model *m, erows *e)
{
    pk_tape_free(e->t);
    pk_side_bufs_free(m, &e->bufs);
    free(e->X); free(e->at); free(e->a); free(e->b); free(e->first);
    memset(e, 0, sizeof *e);
}

typedef struct pwork {
    pside x, y;
    size_t x_held;        /* the x block x.t holds, or (size_t)-1 */
    double *S, *A, *D;    /* S (bx, by, r, r), A (bx, by), D (bx r, by r) */
    erows ex, ey;         /* the exact rule's rows of the x and y blocks  */
    size_t ex_held;       /* the x block ex holds, or (size_t)-1           */
    double *eS, *eA, *eD; /* their products: (XR, rows of y, r, r), (XR, rows of y), (XR r, rows of y r) */
    size_t cap_s;         /* rows of y the three hold                     */
} pwork;

static void pwork_free(const pk_model *m, pwork *w)
{
    pside_free(m, &w->x);
    pside_free(m, &w->y);
    erows_free(m, &w->ex);
    erows_free(m, &w->ey);
    free(w->S); free(w->A); free(w->D); free(w->eS); free(w->eA); free(w->eD);
    memset(w, 0, sizeof *w);
}

/* For blocks of up to bx x by examples, r rows of deltas each. */
static pk_status pwork_new(const pk_model *m, size_t bx, size_t by, size_t r, pwork *w)
{
    memset(w, 0, sizeof *w);
    w->x_held = w->ex_held = (size_t)-1;
    w->S = pk_alloc(bx * by, r * r * sizeof *w->S);
    w->A = pk_alloc(bx, by * sizeof *w->A);
    w->D = pk_alloc(bx * r, by * r * sizeof *w->D);
    pk_status s = w->S && w->A && w->D ? PK_OK : PK_ERR_NOMEM;
    if (!s) s = pside_new(m, bx, r == 1, &w->x);
    if (!s) s = pside_new(m, by, r == 1, &w->y);
    if (s) pwork_free(m, w);
    return s;
}

/* One side's nodes of a step under the exact rule: kinked[i] when example
 * i has kinks (its rows nd.re.. from first[i]), else the shared nodes. */
typedef struct eside {
    pk_nodes nd;
    unsigned char *kinked; /* (n) */
    size_t *first;         /* (n + 1) */
} eside;

/* The job of one node: K += f K^g_{wn} over the pairs of blocks (under the
 * exact rule the pairs of examples without kinks only), or with wn NULL
 * the exact rule's pairs with a kink (f = eta_t; w, D the step). */
typedef struct pnode {
    const pk_model *m;
    const double *wn, *X, *Y;
    size_t nx, ny, r;
    double f;
    double *K;
    const eside *ex, *ey;  /* the exact rule's nodes, or NULL */
    const double *w, *D;
    const size_t *pairs;   /* (npairs, 2) block pairs                 */
    pwork *work;           /* (threads) each thread's                 */
} pnode;

/* Block pair (bx, by): S = K^g_{wn}(X block, Y block), then K += f S. */
static pk_status pair_add(const pnode *n, size_t bx, size_t by, pwork *w)
{
    const pk_model *m = n->m;
    size_t d = m->n_in, r = n->r, rr = r * r, x0 = bx * X_BLOCK, y0 = by * Y_BLOCK;
    size_t nbx = n->nx - x0 < X_BLOCK ? n->nx - x0 : X_BLOCK, nby = n->ny - y0 < Y_BLOCK ? n->ny - y0 : Y_BLOCK;
    pk_status s = PK_OK;
    if (w->x_held != bx) {
        w->x_held = (size_t)-1;
        if ((s = pside_compute(m, n->wn, n->X + x0 * d, nbx, &w->x))) return s;
        w->x_held = bx;
    }
    if ((s = pside_compute(m, n->wn, n->Y + y0 * d, nby, &w->y))) return s;
    /* S (nbx, nby, r, r) = K^g_{wn} on the block (MATH.md section 4) */
    pk_side_product(m, &w->x.s, &w->y.s, w->S, nby, 1, w->A, w->D);
    for (size_t i = 0; i < nbx; i++) {
        double *Ki = n->K + ((x0 + i) * n->ny + y0) * rr;
        const double *Si = w->S + i * nby * rr;
        if (!n->ex) {
            for (size_t k = 0; k < nby * rr; k++) Ki[k] += n->f * Si[k];
            continue;
        }
        if (n->ex->kinked[x0 + i]) continue; /* the exact rule's own pairs */
        for (size_t j = 0; j < nby; j++)
            if (!n->ey->kinked[y0 + j])
                for (size_t k = 0; k < rr; k++) Ki[j * rr + k] += n->f * Si[j * rr + k];
    }
    return PK_OK;
}

/* ---------------------------------------------------- the exact rule's pairs */

/* Grow a block's rows to hold `rows` rows of `ne` examples. */
static pk_status erows_reserve(const pk_model *m, erows *e, size_t rows, size_t ne, int trace)
{
    if (2 * ne > e->cap_e) {
        free(e->first);
        e->cap_e = 2 * ne;
        if (!(e->first = pk_alloc(e->cap_e, sizeof *e->first))) { e->cap_e = 0; return PK_ERR_NOMEM; }
    }
    if (rows <= e->cap) return PK_OK;
    size_t first_cap = e->cap_e;
    size_t *first = e->first;
    e->first = NULL;
    erows_free(m, e);
    e->first = first;
    e->cap_e = first_cap;
    e->cap = rows + rows / 2 + 16;
    e->t = pk_tape_new(m, e->cap);
    if (e->t) e->t->queries = 1;
    e->X = pk_alloc(e->cap, m->n_in * sizeof *e->X);
    e->at = pk_alloc(e->cap, sizeof *e->at);
    e->a = pk_alloc(e->cap, sizeof *e->a);
    e->b = pk_alloc(e->cap, sizeof *e->b);
    if (!e->t || !e->X || !e->at || !e->a || !e->b || pk_side_bufs_new(m, e->cap, trace, &e->bufs)) {
        erows_free(m, e);
        return PK_ERR_NOMEM;
    }
    return PK_OK;
}

/* The rows of examples e0 .. e0 + ne of a side at their nodes: the k shared
 * nodes on [0, 1] without a kink, the own nodes of every piece with; then
 * the forward pass and the per-output deltas at w + at D, row by row. */
static pk_status erows_build(const pk_model *m, const eside *es, const double *X, size_t e0, size_t ne,
                             const double *w, const double *D, int trace, erows *e)
{
    const pk_nodes *nd = &es->nd;
    size_t rows = 0, d = m->n_in, k = nd->k;
    for (size_t i = e0; i < e0 + ne; i++) rows += es->kinked[i] ? es->first[i + 1] - es->first[i] : k;
    pk_status s = erows_reserve(m, e, rows, ne, trace);
    if (s) return s;
    size_t n = 0;
    for (int pass = 1; pass >= 0; pass--) { /* the examples with a kink, then the others */
        for (size_t i = e0; i < e0 + ne; i++) {
            if (es->kinked[i] != pass) continue;
            e->first[i - e0] = n;
            if (pass)
                for (size_t r = es->first[i]; r < es->first[i + 1]; r++, n++) {
                    e->at[n] = nd->rs[r];
                    e->a[n] = nd->ra[r];
                    e->b[n] = nd->rb[r];
                    memcpy(e->X + n * d, X + i * d, d * sizeof *X);
                }
            else
                for (size_t j = 0; j < k; j++, n++) {
                    e->at[n] = nd->s[j];
                    e->a[n] = 0.0;
                    e->b[n] = 1.0;
                    memcpy(e->X + n * d, X + i * d, d * sizeof *X);
                }
            e->first[ne + i - e0] = n - e->first[i - e0];
        }
        if (pass) e->nk = n;
    }
    e->n = n;
    if ((s = pk_tape_along(e->t, m, D, e->at))) return s;
    pk_model_forward(m, w, e->X, n, e->t);
    s = pk_side_form(m, w, e->t, &e->bufs, trace, &e->s);
    pk_tape_along(e->t, m, NULL, NULL);
    return s;
}

/* A side of rows r0 .. r0 + n of a block's rows. */
static pk_side erows_side(const pk_model *m, const erows *e, size_t r0, size_t n)
{
    return pk_side_part(m, &e->s, r0, n);
}

/* Lagrange basis of the k nodes a + h s_j of piece [a, b] at x: L (k). */
static void lagrange(const double *sn, size_t k, double a, double b, double x, double *L)
{
    double t = (x - a) / (b - a);
    for (size_t j = 0; j < k; j++) {
        double v = 1.0;
        for (size_t i = 0; i < k; i++)
            if (i != j) v *= (t - sn[i]) / (sn[j] - sn[i]);
        L[j] = v;
    }
}

/* Rows of x per product of the exact rule's pairs (a fixed number). */
#define XR 128

/* K(x, y) += eta_t integral_0^1 J_x(s) J_y(s)^T ds for the pairs of the
 * block pair with a kink on either side: the k rows of a piece of x and
 * of a piece of y span polynomials of degree k - 1 (Lagrange at their
 * nodes), so on the overlap of two pieces the integral is sum_{m, m'}
 * W_{m m'} <J_x(s_m), J_y(s_m')> with W_{m m'} the integral over the
 * overlap of l_m l_m', Gauss-Legendre with k nodes (degree 2k - 2: exact). */
static pk_status pair_exact(const pnode *n, size_t bx, size_t by, pwork *w)
{
    const pk_model *m = n->m;
    const pk_nodes *ndx = &n->ex->nd;
    size_t d = m->n_in, r = n->r, rr = r * r, x0 = bx * X_BLOCK, y0 = by * Y_BLOCK, k = ndx->k;
    size_t nbx = n->nx - x0 < X_BLOCK ? n->nx - x0 : X_BLOCK, nby = n->ny - y0 < Y_BLOCK ? n->ny - y0 : Y_BLOCK;
    int kx = 0, ky = 0;
    for (size_t i = 0; i < nbx; i++) kx |= n->ex->kinked[x0 + i];
    for (size_t j = 0; j < nby; j++) ky |= n->ey->kinked[y0 + j];
    if (!kx && !ky) return PK_OK;
    pk_status s;
    if (w->ex_held != bx) {
        w->ex_held = (size_t)-1;
        if ((s = erows_build(m, n->ex, n->X, x0, nbx, n->w, n->D, r == 1, &w->ex))) return s;
        w->ex_held = bx;
    }
    if ((s = erows_build(m, n->ey, n->Y, y0, nby, n->w, n->D, r == 1, &w->ey))) return s;
    size_t ry = w->ey.n;
    if (ry > w->cap_s) {
        free(w->eS); free(w->eA); free(w->eD);
        w->cap_s = ry + ry / 2;
        w->eS = pk_alloc(XR * w->cap_s, rr * sizeof *w->eS);
        w->eA = pk_alloc(XR, w->cap_s * sizeof *w->eA);
        w->eD = pk_alloc(XR * r, w->cap_s * r * sizeof *w->eD);
        if (!w->eS || !w->eA || !w->eD) { w->cap_s = 0; return PK_ERR_NOMEM; }
    }
    double Lx[PK_PIECE_NODES], Ly[PK_PIECE_NODES], val[PK_PIECE_NODES * PK_PIECE_NODES];
    /* the x rows of the examples with a kink against every y row, the
     * others' against the y rows with a kink: a pair without a kink on
     * either side has no product here (the shared nodes did it); rows of x
     * xr at a time, whole pieces */
    size_t xr = XR / k * k, nkx = w->ex.nk;
    for (int part = 0; part < 2; part++) {
        size_t ra = part ? nkx : 0, rb = part ? w->ex.n : nkx, ryp = part ? w->ey.nk : ry;
        if (!ryp) continue;
        pk_side sy = erows_side(m, &w->ey, 0, ryp);
        for (size_t c0 = ra; c0 < rb; c0 += xr) {
            size_t nc = rb - c0 < xr ? rb - c0 : xr;
            pk_side sx = erows_side(m, &w->ex, c0, nc);
            /* eS (nc, ryp, r, r) = <J(x rows), J(y rows)> */
            pk_side_product(m, &sx, &sy, w->eS, ryp, 1, w->eA, w->eD);
            for (size_t i = 0; i < nbx; i++) {
                size_t fi = w->ex.first[i], ni = w->ex.first[nbx + i];
                if (fi + ni <= c0 || fi >= c0 + nc) continue; /* no row of i in this product */
                int ki = n->ex->kinked[x0 + i];
                double *Ki = n->K + ((x0 + i) * n->ny + y0) * rr;
                for (size_t j = 0; j < nby; j++) {
                    if (!ki && !n->ey->kinked[y0 + j]) continue;
                    double *Kij = Ki + j * rr;
                    size_t fj = w->ey.first[j], nj = w->ey.first[nby + j];
                    /* pieces of x (k rows each, those in this product) against pieces of y */
                    for (size_t px = fi; px < fi + ni; px += k) {
                        if (px < c0 || px >= c0 + nc) continue;
                        double a = w->ex.a[px], b = w->ex.b[px];
                        for (size_t py = fj; py < fj + nj; py += k) {
                            double c = w->ey.a[py], e = w->ey.b[py];
                            double lo = a > c ? a : c, hi = b < e ? b : e;
                            if (!(hi > lo)) continue;
                            /* val (k, k) = W_{m m'} over [lo, hi] */
                            memset(val, 0, k * k * sizeof *val);
                            for (size_t q = 0; q < k; q++) {
                                double xq = lo + (hi - lo) * ndx->s[q], cq = (hi - lo) * ndx->c[q];
                                lagrange(ndx->s, k, a, b, xq, Lx);
                                lagrange(ndx->s, k, c, e, xq, Ly);
                                for (size_t u = 0; u < k; u++)
                                    for (size_t v = 0; v < k; v++) val[u * k + v] += cq * Lx[u] * Ly[v];
                            }
                            for (size_t u = 0; u < k; u++)
                                for (size_t v = 0; v < k; v++) {
                                    const double *Suv = w->eS + ((px + u - c0) * ryp + py + v) * rr;
                                    double f = n->f * val[u * k + v];
                                    for (size_t t = 0; t < rr; t++) Kij[t] += f * Suv[t];
                                }
                        }
                    }
                }
            }
        }
    }
    (void)d;
    return PK_OK;
}

/* Block pair p of the node on its thread: the shared node's products, or
 * (no wn) the exact rule's pairs with a kink. */
static pk_status pair_task(void *ctx, size_t p, int thread)
{
    const pnode *n = ctx;
    size_t bx = n->pairs[2 * p], by = n->pairs[2 * p + 1];
    return n->wn ? pair_add(n, bx, by, &n->work[thread]) : pair_exact(n, bx, by, &n->work[thread]);
}

/* The exact rule's nodes of a side for a step: kinked flags and row starts. */

static pk_status eside_step(eside *e, const pk_model *m, const pk_quad *q, const double *w, const double *D,
                            const double *X, size_t n)
{
    pk_status s = pk_nodes_step(&e->nd, m, q, 1, w, D, X, n);
    if (s) return s;
    if (!e->kinked) {
        e->kinked = pk_alloc(n ? n : 1, 1);
        e->first = pk_alloc(n + 1, sizeof *e->first);
        if (!e->kinked || !e->first) return PK_ERR_NOMEM;
    }
    memset(e->kinked, 1, n);
    for (size_t i = 0; i < e->nd.nu; i++) e->kinked[e->nd.u[i]] = 0;
    for (size_t i = 0, r = 0; i <= n; i++) {
        while (r < e->nd.R && e->nd.re[r] < i) r++;
        e->first[i] = r;
    }
    return PK_OK;
}

static void eside_free(eside *e)
{
    pk_nodes_free(&e->nd);
    free(e->kinked);
    free(e->first);
    memset(e, 0, sizeof *e);
}

pk_status pk_run_path_kernel(pk_run *run, const double *X, size_t nx, const double *Y, size_t ny, pk_kmode mode,
                             const pk_quad *quad, pk_progress_fn progress, void *ctx, double *K)
{
    return pk_path_kernel_mem(run, X, nx, Y, ny, mode, quad, progress, ctx, 0, K);
}

pk_status pk_path_kernel_mem(pk_run *run, const double *X, size_t nx, const double *Y, size_t ny, pk_kmode mode,
                             const pk_quad *quad, pk_progress_fn progress, void *ctx, size_t mem, double *K)
{
    const pk_model *m = pk_run_model(run);
    size_t d = m->n_in, r = mode == PK_KMODE_FULL ? m->n_out : 1, rr = r * r;
    if (!pk_quad_given(quad)) return pk_fail(PK_ERR_INPUT, "no quadrature rule given (quad)");
    char why[512];
    if (quad->exact && pk_quad_exact_refusal(m, why, sizeof why))
        return pk_fail(PK_ERR_INPUT, "%s: the rule %s (quad): %s", pk_run_dir(run), quad->name, why);
    /* the same examples on both sides: the blocks of the upper triangle only,
     * mirrored at the end, so that K(y, x) is K(x, y)^T bit for bit */
    int same = nx == ny && (X == Y || (nx && !memcmp(X, Y, nx * d * sizeof *X)));
    size_t nbx = (nx + X_BLOCK - 1) / X_BLOCK, nby = (ny + Y_BLOCK - 1) / Y_BLOCK, npairs = 0;
    size_t *pairs = pk_alloc(nbx * nby + 1, 2 * sizeof *pairs); /* (npairs, 2) block pairs, x block major */
    if (!pairs) return PK_ERR_NOMEM;
    for (size_t bx = 0; bx < nbx; bx++)
        for (size_t by = same ? bx * X_BLOCK / Y_BLOCK : 0; by < nby; by++, npairs++) {
            pairs[2 * npairs] = bx;
            pairs[2 * npairs + 1] = by;
        }
    #pragma omp parallel for schedule(static) if (nx * ny * rr >= PK_PAR_MIN)
    for (size_t i = 0; i < nx; i++) memset(K + i * ny * rr, 0, ny * rr * sizeof *K);
    /* one worker per block pair: each owns its rows of K there (the pairs
     * are disjoint), so the sums do not depend on how many workers run;
     * as many as threads, pairs and (mem) memory allow */
    size_t one = pk_path_kernel_worker(m, nx, ny, mode), room = mem > replay_bytes(run) ? mem - replay_bytes(run) : 0;
    size_t workers = (size_t)pk_threads_get();
    if (workers > npairs) workers = npairs ? npairs : 1;
    if (mem && workers > room / one) workers = room / one ? room / one : 1;
    int threads = (int)workers;
    pwork *work = pk_calloc(workers, sizeof *work);
    pk_status s = work ? PK_OK : PK_ERR_NOMEM;
    for (int t = 0; !s && t < threads; t++) s = pwork_new(m, side_cap(nx, X_BLOCK), side_cap(ny, Y_BLOCK), r, &work[t]);
    pk_replay rp = {0};
    /* the exact rule: each side's nodes per step, D_t */
    eside ex, ey;
    memset(&ex, 0, sizeof ex);
    memset(&ey, 0, sizeof ey);
    double *Dt = quad->exact ? pk_alloc(m->n_params, sizeof *Dt) : NULL; /* (P) */
    if (!s && quad->exact && !Dt) s = PK_ERR_NOMEM;
    if (!s) s = pk_replay_begin(&rp, run, 0, progress, ctx);
    while (!s && pk_replay_next(&rp)) {
        pk_quad shared = *quad;
        if (quad->exact) {
            for (size_t j = 0; j < m->n_params; j++) Dt[j] = rp.w_next[j] - rp.w[j];
            if ((s = eside_step(&ex, m, quad, rp.w, Dt, X, nx))) break;
            if (!same && (s = eside_step(&ey, m, quad, rp.w, Dt, Y, ny))) break;
            shared.n = ex.nd.k;
            memcpy(shared.s, ex.nd.s, shared.n * sizeof *shared.s);
            memcpy(shared.c, ex.nd.c, shared.n * sizeof *shared.c);
        }
        /* the shared nodes, then (wn NULL) the exact rule's pairs with a kink */
        for (size_t q = 0; !s && q < shared.n + (quad->exact ? 1 : 0); q++) {
            /* the node w_t + s_q D_t, D_t the step the optimiser took; weight eta_t c_q */
            pnode job = {m, q < shared.n ? pk_replay_node(&rp, shared.s[q]) : NULL, X, Y, nx, ny, r,
                         rp.lr * (q < shared.n ? shared.c[q] : 1.0), K, quad->exact ? &ex : NULL,
                         quad->exact ? (same ? &ex : &ey) : NULL, rp.w, Dt, pairs, work};
            for (int t = 0; t < threads; t++) work[t].x_held = work[t].ex_held = (size_t)-1; /* new weights */
            /* a team per node only for enough pairs to share: waking it for
             * a few small products costs more, much more on a busy machine */
            s = pk_tasks(npairs, npairs >= 4 * workers ? threads : 1, pair_task, &job);
        }
    }
    s = pk_replay_end(&rp, s);
    if (!s && same) {
        /* K(x_j, x_i)[c, c'] = K(x_i, x_j)[c', c] for (j, c) after (i, c') */
        #pragma omp parallel for schedule(static) if (nx * nx * rr >= PK_PAR_MIN)
        for (size_t j = 0; j < nx; j++)
            for (size_t i = 0; i <= j; i++)
                for (size_t c = 0; c < r; c++)
                    for (size_t c2 = 0; c2 < r; c2++)
                        if (i < j || c > c2) K[((j * nx + i) * r + c) * r + c2] = K[((i * nx + j) * r + c2) * r + c];
    }
    for (int t = 0; work && t < threads; t++) pwork_free(m, &work[t]);
    free(work);
    free(pairs);
    eside_free(&ex);
    eside_free(&ey);
    free(Dt);
    return s;
}
