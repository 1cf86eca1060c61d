/* topk.c -- streaming attribution: for every query, the K training examples
 * with the largest positive and the K with the most negative exact
 * contribution phi_i(x)[c] (MATH.md section 3), and the sum over all
 * examples, without a dense queries x examples array.
 *
 * gd/sgd runs are replayed forward as in kernel/path.c, but the contraction of a
 * step touches only its batch, and an example's running contribution lives
 * in a slot only from the first step that uses it to the last one: then it
 * is final and goes into the query's two bounded heaps. One epoch of sgd
 * keeps a batch's worth of slots per query; gd keeps N. Runs that need the
 * backward sweep (momentum, Adam, weight decay: kernel/backward.c) are computed by
 * pk_run_explain for the group and ranked from its rows. */
#include "kernel/kernel.h"

#include <math.h>
#include <omp.h>
#include <string.h>

pk_topk_opts pk_topk_opts_defaults(void)
{
    pk_topk_opts o = {0};
    pk_quad_parse("gl2", &o.quad);
    o.top = 10;
    return o;
}

/* ------------------------------------------------------------------ heaps */

/* One candidate: its strength (phi for proponents, -phi for opponents) and
 * the example. a is better than b when stronger, or as strong with the
 * smaller index (pk_rank's order). */
typedef struct cand { double v; uint32_t i; } cand;

static int better(cand a, cand b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

/* A min-heap of at most k candidates whose root is the worst kept. */
static void heap_push(cand *h, size_t *n, size_t k, cand c)
{
    size_t j;
    if (*n < k) {
        j = (*n)++;
        while (j > 0 && better(h[(j - 1) / 2], c)) { h[j] = h[(j - 1) / 2]; j = (j - 1) / 2; }
        h[j] = c;
        return;
    }
    if (!better(c, h[0])) return;
    j = 0;
    for (;;) { /* sift c down from the root */
        size_t l = 2 * j + 1, w = j;
        cand worst = c;
        if (l < *n && better(worst, h[l])) { w = l; worst = h[l]; }
        if (l + 1 < *n && better(worst, h[l + 1])) w = l + 1;
        if (w == j) break;
        h[j] = h[w];
        j = w;
    }
    h[j] = c;
}

static int by_better(const void *pa, const void *pb)
{
    const cand *a = pa, *b = pb;
    return better(*a, *b) ? -1 : better(*b, *a);
}

/* Per query: proponents (phi > 0) and opponents (phi < 0) kept so far. */
typedef struct query_heaps { cand *pro, *opp; size_t n_pro, n_opp; } query_heaps;

static void offer(query_heaps *q, size_t k, double phi, uint32_t i)
{
    if (phi > 0) heap_push(q->pro, &q->n_pro, k, (cand){phi, i});
    else if (phi < 0) heap_push(q->opp, &q->n_opp, k, (cand){-phi, i});
}

/* Sorted strongest first into (k) rows, padded with -1 / NaN. */
static void emit(cand *h, size_t n, size_t k, int sign, int64_t *idx, double *val)
{
    qsort(h, n, sizeof *h, by_better);
    for (size_t j = 0; j < k; j++) {
        idx[j] = j < n ? (int64_t)h[j].i : -1;
        val[j] = j < n ? sign * h[j].v : NAN;
    }
}

/* --------------------------------------------------------------- the plan */

/* last[i]: the last step whose batch holds example i (SIZE_MAX: none);
 * returns the most examples open at once (used and to be used again, plus
 * the current batch). */
static size_t open_plan(const pk_run *run, size_t *last)
{
    size_t N = pk_run_n_train(run), T = pk_run_steps(run), open = 0, most = 0;
    for (size_t i = 0; i < N; i++) last[i] = SIZE_MAX;
    for (size_t t = 0; t < T; t++) {
        const uint32_t *idx;
        size_t nb;
        pk_run_batch(run, t, &idx, &nb);
        for (size_t j = 0; j < nb; j++) last[idx[j]] = t;
    }
    unsigned char *seen = pk_calloc(N ? N : 1, 1);
    if (!seen) return SIZE_MAX;
    for (size_t t = 0; t < T; t++) {
        const uint32_t *idx;
        size_t nb;
        pk_run_batch(run, t, &idx, &nb);
        for (size_t j = 0; j < nb; j++)
            if (!seen[idx[j]]) { seen[idx[j]] = 1; open++; }
        if (open > most) most = open;
        for (size_t j = 0; j < nb; j++)
            if (seen[idx[j]] == 1 && last[idx[j]] == t) { seen[idx[j]] = 2; open--; }
    }
    free(seen);
    return most;
}

static size_t batch_cap(const pk_run *run) { return pk_run_batch_cap(run); }

static size_t block_of(const pk_topk_opts *o, size_t n)
{
    size_t b = o->block ? o->block : 256;
    return b < n ? b : (n ? n : 1);
}

/* The target of the walk along an MLP's pieces (sweep.c): one column a
 * query, its output cls[x] for outputs, else the label's. */
static pk_target walk_target(const pk_topk_opts *o)
{
    return o->target.kind == PK_TARGET_OUTPUTS || o->target.kind == PK_TARGET_OUTPUT ? (pk_target){PK_TARGET_OUTPUT, 0}
                                                                                      : o->target;
}

/* Bytes of the forward method for n queries: fixed workspace + per query. */
static double forward_bytes(const pk_run *run, size_t n, size_t slots, const pk_topk_opts *o)
{
    const pk_model *m = pk_run_model(run);
    size_t C = m->n_out, B = batch_cap(run), Qb = block_of(o, n), sd = pk_model_widths(m);
    size_t Rb = pk_quad_rows(&o->quad, Qb);
    double b = 5.0 * (double)m->n_params + (double)pk_run_n_train(run);        /* w's, G, state; last */
    b += (double)B * (double)(m->n_in + 3 * sd + C);                           /* stepper          */
    size_t blocks = (n + Qb - 1) / Qb, nt = (size_t)omp_get_max_threads();
    if (nt > blocks) nt = blocks ? blocks : 1;
    b += (double)nt * ((double)Rb * (double)(3 * sd + C) + 3.0 * (double)Rb * (double)B); /* per thread: tape, R, S, D, A */
    b += (double)nt * (double)Rb * (double)m->layer[0].out;                           /* per thread: dZ1  */
    b += (double)(o->quad.exact ? pk_quad_piece_nodes(&o->quad, m, 0) + 1 : o->quad.n) * (double)m->n_params;                                    /* node weights     */
    b += (double)n * ((double)slots + 2.0 * (double)o->top * 2.0 + 4.0 + (double)m->layer[0].out); /* slots, heaps, Z1 */
    b += (double)nt * (double)pk_rowsum_values(m, Rb, 1, B);                          /* gradient rows summed */
    b *= sizeof(double);
    pk_target one = walk_target(o);
    if (pk_sweep_serves(m, &o->quad, &one, 0)) b += (double)nt * (double)pk_sweep_bytes(m, &one, Qb, B); /* walks */
    return b;
}

/* Runs that need the backward sweep, and the margin (whose steps are cut
 * where a query's runner-up changes: explain's pieces, MATH.md section 11),
 * go through pk_run_explain. */
static int dense_method(const pk_run *run, const pk_topk_opts *o)
{
    return pk_explain_needs_backward(pk_run_optim(run)) || o->target.kind == PK_TARGET_MARGIN;
}

size_t pk_run_attribute_group(pk_run *run, size_t Q, const pk_topk_opts *o, size_t *bytes)
{
    size_t limit = pk_memory_budget(o->mem_limit), n = Q ? Q : 1;
    if (dense_method(run, o)) {
        pk_explain_opts eo = pk_explain_opts_defaults();
        eo.quad = o->quad;
        eo.want_kernel = 0;
        eo.mem_limit = o->mem_limit;
        while (n > 1 && pk_run_explain_bytes(run, n, &eo) > limit) n = (n + 1) / 2;
        *bytes = pk_run_explain_bytes(run, n, &eo);
        return n;
    }
    size_t N = pk_run_n_train(run), *last = pk_alloc(N ? N : 1, sizeof *last);
    size_t slots = last ? open_plan(run, last) : SIZE_MAX;
    free(last);
    if (slots == SIZE_MAX) slots = N;
    while (n > 1 && forward_bytes(run, n, slots, o) > (double)limit) n = (n + 1) / 2;
    double b = forward_bytes(run, n, slots, o);
    *bytes = b > 1e18 ? (size_t)1e18 : (size_t)b;
    return n;
}

/* ------------------------------------------------------ backward optimisers */

static pk_status topk_dense(pk_run *run, const double *Xq, size_t n, const size_t *cls, const pk_topk_opts *o,
                            query_heaps *qh, pk_topk *out)
{
    pk_explain_opts eo = pk_explain_opts_defaults();
    eo.quad = o->quad;
    eo.want_kernel = 0;
    eo.block = o->block;
    eo.mem_limit = o->mem_limit;
    eo.progress = o->progress;
    eo.ctx = o->ctx;
    /* an output per query: all outputs, that one's column; any other target: its one column */
    int per_output = o->target.kind == PK_TARGET_OUTPUTS || o->target.kind == PK_TARGET_OUTPUT;
    if (!per_output) {
        eo.target = o->target;
        eo.y = o->y;
    }
    pk_explain e;
    pk_status s = pk_run_explain(run, Xq, n, &eo, &e);
    if (s) return s;
    size_t N = e.N, C = e.C;
    for (size_t x = 0; x < n; x++) {
        size_t c = per_output ? cls[x] : 0;
        for (size_t i = 0; i < N; i++) offer(&qh[x], o->top, e.contrib[(x * N + i) * C + c], (uint32_t)i);
        out->pred[x] = e.pred[x * C + c];
        out->bias[x] = e.bias[x * C + c];
        out->total[x] = e.contrib_sum[x * C + c];
        out->regularisation[x] = e.regularisation[x * C + c];
    }
    pk_explain_free(&e);
    return PK_OK;
}

/* ------------------------------------------------------ gd and sgd, forward */

/* What one thread needs for a block of queries at a step. */
typedef struct block_work {
    pk_tape *qt;   /* the block's tape at a node                          */
    double *R;     /* (Rb, C) dg/df at the node: e_c for the output c      */
    double *S;     /* (Rb, B) <J_{x,c}(node), g_i(w_t)>                   */
    double *D, *A; /* (Rb, B) side-product scratch; A: x . x_i first      */
    double *dZ1;   /* (Rb, d1) first-layer pre-activations' change        */
    /* the rows evaluated at once: their queries (in the block), nodes,
     * weights, inputs and first-layer pre-activations, gathered */
    pk_nodes nd;   /* the exact rule's nodes of the block at a step       */
    uint32_t *qi;  /* (Rb)                                                */
    double *at, *f;/* (Rb), (Rb)                                          */
    double *X, *Z; /* (Rb, d), (Rb, d1)                                   */
    pk_sweep *sp;  /* the exact rule of an MLP: each query's pieces walked */
    pk_rowsum rs; /* the gradient-row layers' nodes, summed              */
} block_work;

static void block_work_free(block_work *b)
{
    pk_tape_free(b->qt);
    free(b->R); free(b->S); free(b->D); free(b->A); free(b->dZ1);
    free(b->qi); free(b->at); free(b->f); free(b->X); free(b->Z);
    pk_rowsum_free(&b->rs);
    pk_nodes_free(&b->nd);
    pk_sweep_free(b->sp);
}

static int block_work_new(const pk_model *m, size_t Rb, size_t B, block_work *b)
{
    memset(b, 0, sizeof *b);
    size_t C = m->n_out, d1 = m->layer[0].out;
    b->qt = pk_tape_new(m, Rb);
    if (b->qt) b->qt->queries = 1;
    b->R = pk_calloc(Rb, C * sizeof *b->R);
    b->S = pk_alloc(Rb, B * sizeof *b->S);
    b->D = pk_alloc(Rb, B * sizeof *b->D);
    b->A = pk_alloc(Rb, B * sizeof *b->A);
    b->dZ1 = pk_alloc(Rb, d1 * sizeof *b->dZ1);
    b->qi = pk_alloc(Rb, sizeof *b->qi);
    b->at = pk_alloc(Rb, sizeof *b->at);
    b->f = pk_alloc(Rb, sizeof *b->f);
    b->X = pk_alloc(Rb, m->n_in * sizeof *b->X);
    b->Z = pk_alloc(Rb, d1 * sizeof *b->Z);
    if (pk_rowsum_init(&b->rs, m, Rb, 1, B)) return 0;
    return b->qt && b->R && b->S && b->D && b->A && b->dZ1 && b->qi && b->at && b->f && b->X && b->Z;
}

/* What the rows of a block share at a step. */
typedef struct step_rows {
    const pk_model *m;
    const double *Xq;        /* (n, d) queries                         */
    double *Z1;              /* (n, d1) their first-layer pre-activations at w_t (moved on block by block) */
    const size_t *cls;
    const pk_target *tg;     /* the target of each query (its output cls[x] for outputs) */
    pk_loss loss;
    const double *Y;         /* (n, ty) the queries' targets, or NULL  */
    size_t ty;
    const pk_side *train;    /* the batch at w_t, loss-weighted       */
    const uint32_t *idx;
    size_t nb, n_slots;
    const int32_t *slot_of;
    int lin1;                /* the first layer's pre-activations from Z1 + s dZ1 */
    double *acc, *total;     /* (n, n_slots), (n)                     */
    const double *Ut;        /* (nb, nV) the batch's gradient rows (pk_rowsum), or NULL */
} step_rows;

/* phi_i(x)[c] += k->f[x] S[x, i] for rows x < nr of block q0 (queries q0
 * + k->qi[x]) and the batch's examples i (S: k->S (nr, nb)). */
static void add_products(const step_rows *sr, block_work *k, size_t q0, size_t nr)
{
    size_t nb = sr->nb;
    for (size_t x = 0; x < nr; x++) {
        const double *Sr = k->S + x * nb;
        size_t q = q0 + k->qi[x];
        double *ax = sr->acc + q * sr->n_slots, sum = 0, f = k->f[x];
        for (size_t j = 0; j < nb; j++) sum += Sr[j];
        sr->total[q] += f * sum;
        for (size_t j = 0; j < nb; j++) ax[sr->slot_of[sr->idx[j]]] += f * Sr[j];
    }
}

/* The gradient-row layers' share of the step for the block's nq queries
 * (pk_rowsum), added as one row a query. */
static pk_status close_rows(const step_rows *sr, block_work *k, size_t q0, size_t nq)
{
    pk_status s = pk_rowsum_close(&k->rs, sr->m, sr->Xq + q0 * sr->m->n_in, nq, sr->Ut, sr->nb, k->S);
    if (s) return s;
    for (size_t x = 0; x < nq; x++) { k->qi[x] = (uint32_t)x; k->f[x] = 1.0; }
    add_products(sr, k, q0, nq);
    return PK_OK;
}

/* Rows x < nr of block q0 (queries q0 + k->qi[x]) at w, the weights of
 * their node k->at[x] (with k->qt->dir set: w + k->at[x] D each): the
 * forward pass (a first layer with parameters from Z1 + s dZ1), the
 * deltas of f_c, and phi_i(x)[c] += k->f[x] <J_{x,c}(node), g_i(w_t)>: the
 * products with the batch, but for the gradient-row layers their rows
 * summed (pk_rowsum, close_rows). */
static pk_status eval_rows(const step_rows *sr, block_work *k, size_t q0, size_t nr, const double *w)
{
    const pk_model *m = sr->m;
    size_t d = m->n_in, d1 = m->layer[0].out, C = m->n_out, nb = sr->nb;
    pk_tape *qt = k->qt;
    for (size_t x = 0; x < nr; x++) {
        size_t q = q0 + k->qi[x];
        memcpy(k->X + x * d, sr->Xq + q * d, d * sizeof *k->X);
    }
    if (sr->lin1) {
        qt->n = nr;
        qt->x = k->X;
        for (size_t x = 0; x < nr; x++) {
            const double *z = sr->Z1 + (q0 + k->qi[x]) * d1, *dz = k->dZ1 + k->qi[x] * d1;
            for (size_t j = 0; j < d1; j++) qt->y[0][x * d1 + j] = z[j] + k->at[x] * dz[j];
        }
        pk_model_forward_from(m, w, qt, 1);
    } else
        pk_model_forward(m, w, k->X, nr, qt);
    /* the deltas of the target: a backward pass seeded with dg/df at the node (e_c for f_c) */
    const double *fq = pk_tape_out(m, qt);
    for (size_t x = 0; x < nr; x++) {
        size_t q = q0 + k->qi[x];
        pk_target_row(sr->tg, sr->cls[q], sr->loss, fq + x * C, sr->Y ? sr->Y + q * sr->ty : NULL, C, k->R + x * C);
    }
    pk_model_backward(m, w, qt, k->R, 1.0, NULL);
    pk_side qs = pk_side_loss(m, qt);
    qs.by_rows = k->rs.nV > 0;
    /* S (nr, nb): <J_{x,c}(node), g_i(w_t)> */
    pk_side_product(m, &qs, sr->train, k->S, nb, 0, k->A, k->D);
    add_products(sr, k, q0, nr);
    return qs.by_rows ? pk_rowsum_add(&k->rs, m, &qs, nr, k->qi, 0, k->f) : PK_OK;
}

/* What the blocks of queries share at a step. */
typedef struct block_step {
    step_rows sr;
    const pk_topk_opts *o;
    const pk_target *one;       /* the walk's target                          */
    const pk_tape *bt;          /* the batch at w_t                           */
    const double *w, *Dt, *Wn;  /* (P) w_t, (P) D_t or NULL, (nodes, P) the nodes' weights */
    const double *qs, *qc;      /* (nodes) the shared nodes and weights on [0, 1] */
    size_t nodes;
    double scale;               /* eta_t / |B_t|                              */
    size_t n, Qb, Rb;           /* queries, queries a block, rows at once (pk_quad_rows) */
    int dense1, walk;           /* a dense first layer; the exact rule's walk */
    size_t nV;                  /* gradient-row values a row (pk_rowsum)      */
    block_work *bw;             /* (threads) each thread's                    */
} block_step;

/* Block b of the queries at the step: phi_i(x) += its share for every
 * query x of the block and example i of the batch, and the block's
 * first-layer pre-activations moved to w_{t+1}. */
static pk_status step_block(void *ctx, size_t b, int thread)
{
    const block_step *bs = ctx;
    block_work *k = &bs->bw[thread];
    const step_rows *sr = &bs->sr;
    const pk_topk_opts *o = bs->o;
    const pk_model *m = sr->m;
    size_t n = bs->n, Qb = bs->Qb, q0 = b * Qb, nq = n - q0 < Qb ? n - q0 : Qb, nb = sr->nb;
    size_t d = m->n_in, d1 = m->layer[0].out, P = m->n_params;
    const pk_tape *bt = bs->bt;
    double scale = bs->scale;
    pk_tape *qt = k->qt;
    pk_status fail = PK_OK;
    /* A gd/sgd step moves the first layer by a rank-|B| update, so its
     * pre-activations move by dZ1 = -(eta/|B|) (sw^2 x.x_i + sb^2) delta_i
     * summed over the batch (MATH.md section 4's layer-1 term): an
     * nq x |B| x d1 product instead of nq x d x d1 per node. */
    double *Zb = sr->Z1 + q0 * d1, sw = m->layer[0].sw, sb = m->layer[0].sb;
    if (bs->dense1 && !bs->walk) {
        pk_gemm_rows(0, 1, nq, nb, d, sw * sw, sr->Xq + q0 * d, d, bt->x, d, 0.0, k->A, nb);
        for (size_t j = 0; j < nq * nb; j++) k->A[j] += sb * sb;
        pk_gemm_rows(0, 0, nq, d1, nb, -scale, k->A, nb, bt->g[0], d1, 0.0, k->dZ1, d1);
    } else if (sr->lin1 && !bs->walk)
        m->layer[0].ops->forward(&m->layer[0], bs->Dt, sr->Xq + q0 * d, k->dZ1, nq, PK_GEMM_ROWS);
    /* the nodes: the rule's for every query, or under the exact rule
     * (MATH.md section 12) shared ones for the queries without a
     * kink and nodes of their own on every piece for the others */
    if (bs->walk) {
        double pc;
        const pk_target *tg = sr->tg;
        fail = pk_sweep_step(k->sp, m, bs->w, bs->Dt, sr->Xq + q0 * d, nq, sr->Y ? sr->Y + q0 * sr->ty : NULL, sr->ty,
                             bs->one, tg->kind == PK_TARGET_OUTPUTS ? sr->cls + q0 : NULL, sr->train, nb, k->S, &pc);
        for (size_t x = 0; !fail && x < nq; x++) {
            k->qi[x] = (uint32_t)x;
            k->f[x] = -scale;
        }
        if (!fail) add_products(sr, k, q0, nq); /* (the walk reads no Z1) */
        return fail;
    }
    if (o->quad.exact) {
        fail = pk_nodes_step(&k->nd, m, &o->quad, 0, bs->w, bs->Dt, sr->Xq + q0 * d, nq);
        if (fail) k->nd.nu = k->nd.R = 0;
    }
    if (!o->quad.exact) {
        k->nd.nu = nq;
        for (size_t x = 0; x < nq; x++) k->qi[x] = (uint32_t)x;
    } else
        for (size_t x = 0; x < k->nd.nu; x++) k->qi[x] = k->nd.u[x];
    for (size_t node = 0; node < bs->nodes && k->nd.nu; node++) {
        for (size_t x = 0; x < k->nd.nu; x++) { k->f[x] = -scale * bs->qc[node]; k->at[x] = bs->qs[node]; }
        /* the forward pass at the node, then the deltas of f_c: a
         * backward pass seeded with e_c */
        if (eval_rows(sr, k, q0, k->nd.nu, bs->Wn + node * P)) fail = PK_ERR_NOMEM;
    }
    for (size_t r0 = 0; o->quad.exact && r0 < k->nd.R; r0 += bs->Rb) {
        size_t nr = k->nd.R - r0 < bs->Rb ? k->nd.R - r0 : bs->Rb;
        for (size_t x = 0; x < nr; x++) {
            k->qi[x] = k->nd.re[r0 + x];
            k->at[x] = k->nd.rs[r0 + x];
            k->f[x] = -scale * k->nd.rc[r0 + x];
        }
        if (pk_tape_along(qt, m, bs->Dt, k->at)) {
            fail = PK_ERR_NOMEM;
            break;
        }
        pk_status f = eval_rows(sr, k, q0, nr, bs->w);
        pk_tape_along(qt, m, NULL, NULL);
        if (f) {
            fail = PK_ERR_NOMEM;
            break;
        }
    }
    if (bs->nV && close_rows(sr, k, q0, nq)) fail = PK_ERR_NOMEM;
    if (sr->lin1)
        for (size_t j = 0; j < nq * d1; j++) Zb[j] += k->dZ1[j];
    return fail;
}

static pk_status topk_forward(pk_run *run, const double *Xq, size_t n, const size_t *cls, const pk_topk_opts *o,
                              query_heaps *qh, pk_topk *out)
{
    const pk_model *m = pk_run_model(run);
    size_t N = pk_run_n_train(run), C = m->n_out, P = m->n_params;
    size_t d = m->n_in, B = batch_cap(run), Qb = block_of(o, n), Rb = pk_quad_rows(&o->quad, Qb), K = o->top;
    size_t nodes = o->quad.n;
    /* the shared nodes: the rule's, or the exact rule's on [0, 1] */
    double qs[PK_PIECE_NODES], qc[PK_PIECE_NODES];
    if (o->quad.exact) pk_gauss_legendre(nodes = pk_quad_piece_nodes(&o->quad, m, 0), qs, qc);
    else {
        memcpy(qs, o->quad.s, nodes * sizeof *qs);
        memcpy(qc, o->quad.c, nodes * sizeof *qc);
    }
    pk_status s = PK_OK;
    size_t *last = pk_alloc(N ? N : 1, sizeof *last);
    size_t n_slots = last ? open_plan(run, last) : SIZE_MAX;
    if (n_slots == SIZE_MAX) { free(last); return PK_ERR_NOMEM; }
    if (!n_slots) n_slots = 1;
    /* blocks of queries go to the threads whole (each query's products
     * have a fixed shape, so its result never depends on the thread) */
    size_t blocks = (n + Qb - 1) / Qb, nt = (size_t)omp_get_max_threads();
    if (nt > blocks) nt = blocks ? blocks : 1;
    int32_t *slot_of = pk_alloc(N ? N : 1, sizeof *slot_of);  /* (N) slot of an open example, -1 */
    int32_t *free_slots = pk_alloc(n_slots, sizeof *free_slots);
    size_t n_free = n_slots;
    double *acc = pk_calloc(n, n_slots * sizeof *acc);         /* (n, slots) running phi_i(x)[c] */
    double *w = pk_alloc(P, sizeof *w);                         /* (P) w_0, then w_T */
    double *F = pk_alloc(n ? n : 1, C * sizeof *F);             /* (n, C) f at w_0, then at w_T */
    double *Wn = pk_alloc(nodes, P * sizeof *Wn);               /* (nodes, P) the step's node weights */
    /* a first layer with parameters is linear in them, and its input is
     * fixed: its pre-activations at w_t + s D_t are Z1 + s dZ1, dZ1 its
     * forward pass with D_t (a dense one's by a rank-|B| update, below) */
    int dense1 = m->layer[0].ops == &pk_dense_ops, lin1 = m->layer[0].n_w > 0, want_dt = o->quad.exact || (lin1 && !dense1);
    double *Dt = want_dt ? pk_alloc(P, sizeof *Dt) : NULL; /* (P) D_t */
    size_t d1 = m->layer[0].out;
    double *Z1 = pk_alloc(n, d1 * sizeof *Z1);    /* (n, d1) first-layer pre-activations at w_t */
    block_work *bw = pk_calloc(nt, sizeof *bw);
    if (!slot_of || !free_slots || !acc || !w || !F || !Wn || !Z1 || !bw || (want_dt && !Dt))
        s = PK_ERR_NOMEM;
    for (size_t k = 0; !s && k < nt; k++)
        if (!block_work_new(m, Rb, B, &bw[k])) s = PK_ERR_NOMEM;
    /* gradient-row layers (pk_rowsum): the batch's rows once a step */
    size_t nV = s ? 0 : bw[0].rs.nV;
    double *Ut = nV ? pk_alloc(B, nV * sizeof *Ut) : NULL;             /* (B, nV) */
    if (nV && !Ut) s = PK_ERR_NOMEM;
    for (size_t i = 0; !s && i < N; i++) slot_of[i] = -1;
    for (size_t k = 0; !s && k < n_slots; k++) free_slots[k] = (int32_t)(n_slots - 1 - k);
    if (!s) s = pk_run_weights(run, 0, w);
    if (!s) s = pk_model_predict(m, w, Xq, n, F);
    for (size_t q0 = 0; !s && q0 < n; q0 += Qb) {
        size_t nq = n - q0 < Qb ? n - q0 : Qb;
        pk_model_forward(m, w, Xq + q0 * d, nq, bw[0].qt);
        memcpy(Z1 + q0 * d1, bw[0].qt->y[0], nq * d1 * sizeof *Z1);
    }
    /* the target of each query: its output cls[x] (outputs, output), else o->target (MATH.md section 11) */
    pk_target tg = o->target.kind == PK_TARGET_OUTPUT ? (pk_target){PK_TARGET_OUTPUTS, 0} : o->target;
    pk_target one = walk_target(o);
    int walk = pk_sweep_serves(m, &o->quad, &one, 0);
    for (size_t k = 0; !s && walk && k < nt; k++)
        if (!(bw[k].sp = pk_sweep_new(m, &one, Qb, B))) s = PK_ERR_NOMEM;
    pk_loss loss = pk_run_loss(run);
    size_t ty = loss == PK_LOSS_MSE ? C : 1;
    const double *Y = o->y;
    for (size_t x = 0; !s && x < n; x++) {
        out->bias[x] = pk_target_row(&tg, cls[x], loss, F + x * C, Y ? Y + x * ty : NULL, C, NULL);
        out->total[x] = 0;
        out->regularisation[x] = 0;
    }

    pk_replay r = {0};
    if (!s) s = pk_replay_begin(&r, run, 0, o->progress, o->ctx);
    while (!s && pk_replay_next(&r)) {
        const uint32_t *idx = r.idx;
        size_t nb = r.nb, t = r.t;
        const pk_tape *bt = r.st.tape;
        pk_side train_loss = pk_side_loss(m, bt);
        for (size_t j = 0; j < nb; j++) /* open the batch's new examples */
            if (slot_of[idx[j]] < 0) {
                int32_t k = free_slots[--n_free];
                slot_of[idx[j]] = k;
                for (size_t x = 0; x < n; x++) acc[x * n_slots + (size_t)k] = 0;
            }
        for (size_t node = 0; node < nodes; node++) memcpy(Wn + node * P, pk_replay_node(&r, qs[node]), P * sizeof *Wn);
        for (size_t j = 0; Dt && j < P; j++) Dt[j] = r.w_next[j] - r.w[j];
        double scale = r.lr / (double)nb;  /* eta_t / |B_t| */
        if (nV && (s = pk_rowsum_batch(&bw[0].rs, m, &train_loss, Ut))) break;
        block_step bs = {.sr = {m, Xq, Z1, cls, &tg, loss, Y, ty, &train_loss, idx, nb, n_slots, slot_of, lin1, acc,
                                out->total, Ut},
                         .o = o, .one = &one, .bt = bt, .w = r.w, .Dt = Dt, .Wn = Wn, .qs = qs, .qc = qc,
                         .nodes = nodes, .scale = scale, .n = n, .Qb = Qb, .Rb = Rb, .dense1 = dense1, .walk = walk,
                         .nV = nV, .bw = bw};
        pk_status fail = pk_tasks(blocks, (int)nt, step_block, &bs);
        if (fail) { s = fail; break; }
        /* close the examples this step used for the last time: their phi is final */
        #pragma omp parallel for schedule(static) if (n * nb >= PK_PAR_MIN)
        for (size_t x = 0; x < n; x++)
            for (size_t j = 0; j < nb; j++) {
                uint32_t i = idx[j];
                if (last[i] == t && slot_of[i] >= 0) offer(&qh[x], K, acc[x * n_slots + (size_t)slot_of[i]], i);
            }
        for (size_t j = 0; j < nb; j++)
            if (last[idx[j]] == t && slot_of[idx[j]] >= 0) {
                free_slots[n_free++] = slot_of[idx[j]];
                slot_of[idx[j]] = -1;
            }
    }
    s = pk_replay_end(&r, s);
    if (!s) s = pk_run_weights(run, pk_run_steps(run), w);
    if (!s) s = pk_model_predict(m, w, Xq, n, F);
    for (size_t x = 0; !s && x < n; x++)
        out->pred[x] = pk_target_row(&tg, cls[x], loss, F + x * C, Y ? Y + x * ty : NULL, C, NULL);
    for (size_t k = 0; bw && k < nt; k++) block_work_free(&bw[k]);
    free(bw);
    free(last); free(slot_of); free(free_slots); free(acc);
    free(w); free(F); free(Wn); free(Z1); free(Dt); free(Ut);
    return s;
}

pk_status pk_run_attribute(pk_run *run, const double *Xq, size_t n, const size_t *cls, const pk_topk_opts *o,
                           pk_topk *out)
{
    const pk_model *m = pk_run_model(run);
    size_t C = m->n_out, K = o->top;
    if (!pk_quad_given(&o->quad)) return pk_fail(PK_ERR_INPUT, "no quadrature rule given (quad)");
    char why[512];
    if (o->quad.exact && pk_quad_exact_refusal(m, why, sizeof why))
        return pk_fail(PK_ERR_INPUT, "%s: the rule %s (quad): %s", pk_run_dir(run), o->quad.name, why);
    if (!K) return pk_fail(PK_ERR_INPUT, "top-k attribution needs at least one example per side (top)");
    if (pk_run_n_train(run) > UINT32_MAX) return pk_fail(PK_ERR_INPUT, "more than 2^32 training examples");
    for (size_t x = 0; x < n; x++)
        if (cls[x] >= C) return pk_fail(PK_ERR_INPUT, "query %zu: output %zu does not exist (0..%zu)", x, cls[x], C - 1);
    pk_status ts = pk_target_check(&o->target, C, pk_run_loss(run), o->y, n);
    if (ts) return ts;
    query_heaps *qh = pk_calloc(n ? n : 1, sizeof *qh);
    cand *pool = pk_alloc(n ? n : 1, 2 * K * sizeof *pool);  /* (n, 2K) heap storage */
    pk_status s = qh && pool ? PK_OK : PK_ERR_NOMEM;
    for (size_t x = 0; !s && x < n; x++) {
        qh[x].pro = pool + x * 2 * K;
        qh[x].opp = qh[x].pro + K;
    }
    if (!s) s = dense_method(run, o) ? topk_dense(run, Xq, n, cls, o, qh, out) : topk_forward(run, Xq, n, cls, o, qh, out);
    for (size_t x = 0; !s && x < n; x++) {
        emit(qh[x].pro, qh[x].n_pro, K, 1, out->pro_idx + x * K, out->pro_val + x * K);
        emit(qh[x].opp, qh[x].n_opp, K, -1, out->opp_idx + x * K, out->opp_val + x * K);
    }
    free(qh);
    free(pool);
    return s;
}
