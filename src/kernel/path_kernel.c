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

/* The examples of one block at one node: a tape and its per-output deltas. */
typedef struct pside {
    pk_tape *t;
    double *d[PK_MAX_MODEL_LAYERS]; /* d[l] (cap, C, out_l) */
} pside;

static void pside_free(const pk_model *m, pside *p)
{
    pk_tape_free(p->t);
    pk_deltas_free(m, p->d);
    p->t = NULL;
}

static pk_status pside_new(const pk_model *m, size_t cap, pside *p)
{
    memset(p, 0, sizeof *p);
    p->t = pk_tape_new(m, cap);
    if (!p->t || pk_deltas_new(m, cap, p->d)) { pside_free(m, p); return PK_ERR_NOMEM; }
    p->t->queries = 1; /* every row's bits independent of the block it is in */
    return PK_OK;
}

/* The side of the n examples X (n, d) at weights w. */
static pk_status pside_compute(const pk_model *m, const double *w, const double *X, size_t n, pside *p)
{
    pk_model_forward(m, w, X, n, p->t);
    return pk_model_output_deltas(m, w, p->t, p->d);
}

/* Examples a block of B holds, for n examples. */
static size_t side_cap(size_t n, size_t B) { return n < B ? (n ? n : 1) : B; }

size_t pk_path_kernel_worker(const pk_model *m, size_t nx, size_t ny, pk_kmode mode)
{
    size_t C = m->n_out, r = mode == PK_KMODE_FULL ? C : 1, bx = side_cap(nx, X_BLOCK), by = side_cap(ny, Y_BLOCK);
    double sd = (double)pk_model_widths(m), per = 3 * sd + (double)C * sd; /* tape and deltas per example */
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
typedef struct pwork {
    pside x, y;
    size_t x_held;        /* the x block x.t holds, or (size_t)-1 */
    double *S, *A, *D;    /* S (bx, by, r, r), A (bx, by), D (bx r, by r) */
} pwork;

static void pwork_free(const pk_model *m, pwork *w)
{
    pside_free(m, &w->x);
    pside_free(m, &w->y);
    free(w->S); free(w->A); free(w->D);
    memset(w, 0, sizeof *w);
}

/* For blocks of up to bx x by examples, r rows of deltas each. */
static pk_status pwork_new(const pk_model *m, size_t bx, size_t by, size_t r, pwork *w)
{
    memset(w, 0, sizeof *w);
    w->x_held = (size_t)-1;
    w->S = pk_alloc(bx * by, r * r * sizeof *w->S);
    w->A = pk_alloc(bx, by * sizeof *w->A);
    w->D = pk_alloc(bx * r, by * r * sizeof *w->D);
    pk_status s = w->S && w->A && w->D ? PK_OK : PK_ERR_NOMEM;
    if (!s) s = pside_new(m, bx, &w->x);
    if (!s) s = pside_new(m, by, &w->y);
    if (s) pwork_free(m, w);
    return s;
}

/* The job of one node: K += f K^g_{wn} over the pairs of blocks. */
typedef struct pnode {
    const pk_model *m;
    const double *wn, *X, *Y;
    size_t nx, ny, r;
    double f;
    double *K;
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
    pk_side sx = pk_side_outputs(m, w->x.t, w->x.d, r == 1), sy = pk_side_outputs(m, w->y.t, w->y.d, r == 1);
    /* S (nbx, nby, r, r) = K^g_{wn} on the block (MATH.md section 4) */
    pk_side_product(m, &sx, &sy, w->S, nby, 1, w->A, w->D);
    for (size_t i = 0; i < nbx; i++) {
        double *Ki = n->K + ((x0 + i) * n->ny + y0) * rr;
        const double *Si = w->S + i * nby * rr;
        for (size_t k = 0; k < nby * rr; k++) Ki[k] += n->f * Si[k];
    }
    return PK_OK;
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
    if (!quad || !quad->n) return pk_fail(PK_ERR_INPUT, "no quadrature rule given (quad)");
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
    if (!s) s = pk_replay_begin(&rp, run, 0, progress, ctx);
    while (!s && pk_replay_next(&rp)) {
        for (size_t q = 0; !s && q < quad->n; q++) {
            /* the node w_t + s_q D_t, D_t the step the optimiser took; weight eta_t c_q */
            pnode job = {m, pk_replay_node(&rp, quad->s[q]), X, Y, nx, ny, r, rp.lr * quad->c[q], K};
            pk_status fail = PK_OK;
            for (int t = 0; t < threads; t++) work[t].x_held = (size_t)-1; /* new weights */
            /* a team per node only for enough pairs to share: waking it for
             * a few small products costs more, much more on a busy machine */
            #pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && npairs >= 4 * workers)
            for (size_t p = 0; p < npairs; p++) {
                pk_status f;
                #pragma omp atomic read
                f = fail;
                if (f) continue;
                f = pair_add(&job, pairs[2 * p], pairs[2 * p + 1], &work[omp_get_thread_num()]);
                if (f) {
                    #pragma omp atomic write
                    fail = f;
                }
            }
            s = fail;
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
    return s;
}
