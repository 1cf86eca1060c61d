/* tangent.c -- the empirical tangent kernel by the structured per-layer
 * formula of MATH.md section 4: per layer, a Gram matrix of layer inputs and
 * one of deltas (two GEMMs) joined by a Hadamard product. Never forms a
 * P-long gradient. pk_side_* serve path.c, backward.c and attribution/; pk_kernel_tangent has its own
 * fused, tiled version (below). */
#include "kernel/kernel.h"

#include <omp.h>
#include <string.h>

pk_side pk_side_outputs(const pk_model *m, const pk_tape *t, double *const *deltas, int trace)
{
    size_t C = m->n_out;
    pk_side s = {t->n, trace ? 1 : C, trace ? C : 1, 1, t->queries, {0}, {0}, 0, {0}, {0}};
    for (size_t l = 0; l < m->n_weight; l++) {
        s.a[l] = pk_tape_in(t, m->weight[l]);
        s.delta[l] = deltas[l];
    }
    return s;
}

pk_side pk_side_loss(const pk_model *m, const pk_tape *t)
{
    pk_side s = {t->n, 1, 1, 0, t->queries, {0}, {0}, 0, {0}, {0}};
    for (size_t l = 0; l < m->n_weight; l++) {
        s.a[l] = pk_tape_in(t, m->weight[l]);
        s.delta[l] = t->g[m->weight[l]];
    }
    return s;
}

void pk_side_product(const pk_model *m, const pk_side *x, const pk_side *y, double *S, size_t ldy, int pairs,
                     double *A, double *D)
{
    size_t nx = x->n, ny = y->n, rx = x->rows, ry = y->rows, L = m->n_weight, cols = ny * ry;
    /* zeroed by the threads: large blocks are first touched here */
    #pragma omp parallel for schedule(static) if (nx * rx * cols >= PK_PAR_MIN && !omp_in_parallel())
    for (size_t i = 0; i < nx; i++)
        for (size_t kx = 0; kx < rx; kx++)
            if (!pairs) memset(S + ((i * rx + kx) * ldy) * ry, 0, cols * sizeof *S);
            else
                for (size_t j = 0; j < ny; j++) memset(S + ((i * ldy + j) * rx + kx) * ry, 0, ry * sizeof *S);
    pk_gemm_mode mode = x->queries ? PK_GEMM_ROWS : PK_GEMM_SPLIT;
    for (size_t l = 0; l < L; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        if (x->by_rows && pk_rowsum_takes(m, l, x->rows)) continue;
        if (x->grow[l]) {
            size_t nW = lw->b_off - lw->w_off;
            pk_gram_rows(nx, rx, x->grow[l], x->gbias[l], ny, ry, y->grow[l], y->gbias[l], x->fold * nW,
                         x->fold * (lw->n_w - nW), mode, D, S, ldy, pairs);
            continue;
        }
        /* the output layer's per-output deltas are the unit vectors e_k */
        int unit = l + 1 == L && x->unit && y->unit;
        lw->ops->gram(lw, nx, rx, x->a[l], x->delta[l], ny, ry, y->a[l], y->delta[l], x->fold, unit, mode, A, D, S,
                      ldy, pairs);
    }
}

pk_side pk_side_part(const pk_model *m, const pk_side *s, size_t i0, size_t n)
{
    pk_side p = *s;
    size_t r = s->rows * s->fold;
    p.n = n;
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        size_t nW = lw->b_off - lw->w_off;
        if (p.a[l]) p.a[l] += i0 * lw->in;
        if (p.delta[l]) p.delta[l] += i0 * r * lw->out;
        if (p.grow[l]) p.grow[l] += i0 * r * nW;
        if (p.gbias[l]) p.gbias[l] += i0 * r * (lw->n_w - nW);
    }
    return p;
}

void pk_side_diagonal(const pk_model *m, const pk_side *x, const pk_side *y, double *out)
{
    memset(out, 0, x->n * sizeof *out);
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        lw->ops->gram_diag(lw, x->n, x->fold, x->a[l], x->delta[l], y->a[l], y->delta[l], out);
    }
}

/* The fused path is for multilayer perceptrons (pk_model_mlp_act >= 0):
 * L dense layers; layer l maps dim(l) to dim(l + 1) values (dim(L) = C). */
static size_t dim(const pk_model *m, size_t l) { return l < m->n_weight ? pk_model_weight(m, l)->in : m->n_out; }
/* The input of dense layer l on a tape. */
static const double *tape_a(const pk_model *m, const pk_tape *t, size_t l) { return pk_tape_in(t, m->weight[l]); }
/* out (n, dim(l + 1)) = act'(z_l), z_l the output of dense layer l. */
static void act_grad(const pk_model *m, const pk_tape *t, size_t l, double *out)
{
    size_t k = m->weight[l] + 1; /* its activation */
    pk_act_grad(&m->layer[k], t->y[k - 1], t->y[k], t->n, out);
}

/* One side of a block of pk_kernel_tangent: the tape, the per-output deltas
 * of layers 0..L-3 (the last hidden layer's come from s and the output
 * weights, the output layer's are e_k; the x side may keep none, each tile
 * then computes its own) and s = act'(z_{L-2}). */
typedef struct kside {
    pk_tape *t;
    double *d[PK_MAX_MODEL_LAYERS];   /* d[l] (cap, C, dim(l + 1)) for l <= L-3, else NULL */
    double *s;                  /* (cap, dim(L - 1)) */
} kside;

static void kside_free(const pk_model *m, kside *k)
{
    pk_tape_free(k->t);
    pk_deltas_free(m, k->d);
    free(k->s);
}

static pk_status kside_new(const pk_model *m, size_t cap, int keep_deltas, kside *k)
{
    size_t L = m->n_weight;
    memset(k, 0, sizeof *k);
    k->t = pk_tape_new(m, cap);
    int ok = k->t != NULL;
    for (size_t l = 0; ok && keep_deltas && l + 3 <= L; l++)
        ok = (k->d[l] = pk_alloc_big(cap * dim(m, L), dim(m, l + 1) * sizeof(double))) != NULL;
    if (ok && L >= 2) ok = (k->s = pk_alloc(cap, dim(m, L - 1) * sizeof(double))) != NULL;
    if (!ok) { kside_free(m, k); memset(k, 0, sizeof *k); return PK_ERR_NOMEM; }
    return PK_OK;
}

static pk_status kside_compute(const pk_model *m, const double *w, const double *X, size_t n, kside *k)
{
    size_t L = m->n_weight;
    pk_model_forward(m, w, X, n, k->t);
    if (L >= 2) act_grad(m, k->t, L - 2, k->s);
    return L >= 3 && k->d[0] ? pk_model_output_deltas(m, w, k->t, k->d) : PK_OK;
}

/* What the tiles of a block share. Layers: 0..nr-1 regular (a delta Gram
 * per layer), nr = L-2 the last hidden layer (if L >= 2), L-1 the output. */
typedef struct kblock {
    const pk_model *m;
    const double *w;
    size_t C, P, nr, x0, y0, nbx, nby;
    const kside *x, *y;
    const double *Wp;     /* (P, d): sw^2 W[c,:] W[c',:] for c <= c' (last hidden layer) */
    const size_t *pair;   /* (C, C): index of {c, c'} in Wp */
    int gram;             /* a trace Gram's block: 1 above the diagonal (also K(y, x)
                           * = K(x, y)^T), 2 on it (its upper triangle, mirrored)    */
    pk_kernel_sink sink;  /* where the row segments go                              */
    void *ctx;
} kblock;

/* coef (L, n, nby) = sw_l^2 a_x . a_y + sb_l^2 for the x examples i0..i0+n
 * of the block against its y. */
static void coef_rows(const kblock *b, size_t i0, size_t n, double *coef)
{
    const pk_model *m = b->m;
    for (size_t l = 0; l < m->n_weight; l++) {
        size_t din = dim(m, l);
        double sw = pk_model_weight(m, l)->sw, sb = pk_model_weight(m, l)->sb, sw2 = sw * sw, sb2 = sb * sb;
        double *A = coef + l * n * b->nby;
        pk_gemm(0, 1, n, b->nby, din, 1.0, tape_a(m, b->x->t, l) + i0 * din, din, tape_a(m, b->y->t, l), din, 0.0, A, b->nby);
        for (size_t k = 0; k < n * b->nby; k++) A[k] = sw2 * A[k] + sb2;
    }
}

/* Scratch of one thread: Dt (nr, kt*C, nby*C), Et (nby, es*P), Ex (es*P, d),
 * coef (L, kt, nby), one row of K (nby, C, C), the tile's own x deltas
 * (kt*C, dim(l + 1)) for l < nr when x keeps none. */
static size_t tile_scratch(const pk_model *m, size_t nby, size_t kt, size_t es, int x_local)
{
    size_t L = m->n_weight, C = dim(m, L), P = C * (C + 1) / 2, d = L >= 2 ? dim(m, L - 1) : 0;
    size_t nr = L >= 2 ? L - 2 : 0, own = 0;
    for (size_t l = 0; x_local && l < nr; l++) own += kt * C * dim(m, l + 1);
    return nr * kt * C * nby * C + (L >= 2 ? nby * es * P + es * P * d : 0) + L * kt * nby +
           nby * C * C + own;
}

/* x examples per tile, and per GEMM of the last hidden layer's Gram: a
 * fixed number of rows (PK_PIECE_ROWS), never the thread count */
static size_t tile_examples(size_t C) { return PK_PIECE_ROWS / C ? PK_PIECE_ROWS / C : 1; }
static size_t tile_pairs(size_t C) { size_t P = C * (C + 1) / 2; return PK_PIECE_ROWS / P ? PK_PIECE_ROWS / P : 1; }

/* Blocks of B x B pairs (B^2 r^2 doubles under 64 MiB: 256 with 10 x 10
 * blocks, one block for a 200 x 200 kernel): the sides of a block are
 * computed once each, and once only when Y is X. */
static size_t block_size(size_t r)
{
    size_t B = 64;
    while (B < 4096 && (2 * B) * (2 * B) * r * r * sizeof(double) <= ((size_t)64 << 20)) B *= 2;
    return B;
}

/* Bytes kernel_tangent allocates for blocks of bx x by examples (an upper
 * bound: both sides keep their deltas, rows go to a sink). */
static size_t block_bytes(const pk_model *m, size_t bx, size_t by, int trace)
{
    size_t L = m->n_weight, C = dim(m, L), dh = L >= 2 ? dim(m, L - 1) : 0;
    size_t per_ex = dh, threads = (size_t)pk_threads_get(), kt = tile_examples(C);
    for (size_t l = 0; l < L; l++) per_ex += (l + 1 < L ? 3 : 2) * dim(m, l + 1) + (l + 3 <= L ? C * dim(m, l + 1) : 0);
    size_t doubles = (bx + by) * per_ex + threads * kt * C * dh + C * (C + 1) / 2 * dh;
    if (trace) doubles += bx * (L + 2) * by + bx * dh;
    else doubles += threads * tile_scratch(m, by, kt < bx ? kt : bx, tile_pairs(C), 1);
    return doubles * sizeof(double);
}

/* The smallest blocks a memory budget may bring: below, the sides would be
 * computed again for too few pairs to be worth it. */
#define MIN_BLOCK 16

/* The block size: the default, halved while it needs more than mem bytes
 * (mem 0: no limit), down to MIN_BLOCK. */
static size_t choose_block(const pk_model *m, size_t nx, size_t ny, int trace, size_t mem)
{
    size_t B = block_size(trace ? 1 : dim(m, m->n_weight));
    while (mem && B > MIN_BLOCK && block_bytes(m, nx < B ? nx : B, ny < B ? ny : B, trace) > mem) B /= 2;
    return B;
}

/* K for the x examples i0..i0+kt of the block against all its y, every
 * element written once:
 *   K(i, j, c, c') = sum_{l < nr} coef_l(i, j) delta_x^l(i, c) . delta_y^l(j, c')
 *                  + coef_nr(i, j) sum_k Wp({c, c'}, k) s_x(i, k) s_y(j, k)
 *                  + coef_{L-1}(i, j) [c == c']
 * (MATH.md section 4; the last hidden layer's deltas are sw W_L[c,:] o s,
 * so its Gram is symmetric in (c, c'): P = C (C + 1) / 2 products, not C^2). */
static pk_status kernel_tile(const kblock *b, size_t i0, size_t kt, size_t es, double *scratch)
{
    const pk_model *m = b->m;
    size_t L = m->n_weight, C = b->C, P = b->P, nr = b->nr, nby = b->nby, cols = nby * C;
    size_t d = L >= 2 ? dim(m, L - 1) : 0;
    double *Dt = scratch, *Et = Dt + nr * kt * C * cols, *Ex = Et + (L >= 2 ? nby * es * P : 0);
    double *cf = Ex + (L >= 2 ? es * P * d : 0), *row = cf + L * kt * nby, *own = row + nby * C * C;
    coef_rows(b, i0, kt, cf);
    const double *dx[PK_MAX_MODEL_LAYERS] = {0}; /* the tile's x deltas of layer l: (kt*C, dim(l + 1)) */
    if (nr && !b->x->d[0]) { /* x keeps none: computed here, from the tile's rows of the x tape */
        pk_tape rows = *b->x->t;
        double *keep[PK_MAX_MODEL_LAYERS] = {0};
        rows.n = kt;
        rows.x += i0 * m->n_in;
        for (size_t k = 0; k < m->n_layers; k++) rows.y[k] += i0 * m->layer[k].out;
        for (size_t l = 0; l < nr; l++) {
            dx[l] = keep[l] = own;
            own += kt * C * dim(m, l + 1);
        }
        pk_status s = pk_model_output_deltas(m, b->w, &rows, keep);
        if (s) return s;
    } else
        for (size_t l = 0; l < nr; l++) dx[l] = b->x->d[l] + i0 * C * dim(m, l + 1);
    for (size_t l = 0; l < nr; l++) {
        size_t len = dim(m, l + 1);
        pk_gemm_tile(0, 1, kt * C, cols, len, 1.0, dx[l], len, b->y->d[l], len, 0.0, Dt + l * kt * C * cols, cols);
    }
    /* groups of es examples: the last hidden layer's Gram, then their rows */
    for (size_t e0 = 0; e0 < kt; e0 += es) {
        size_t ne = kt - e0 < es ? kt - e0 : es;
        if (L >= 2) {
            for (size_t e = 0; e < ne; e++) {
                const double *sx = b->x->s + (i0 + e0 + e) * d;
                for (size_t p = 0; p < P; p++) {
                    const double *wp = b->Wp + p * d;
                    double *ex = Ex + (e * P + p) * d;
                    for (size_t k = 0; k < d; k++) ex[k] = wp[k] * sx[k];
                }
            }
            /* Et (nby, ne*P) = s_y Ex^T */
            pk_gemm_tile(0, 1, nby, ne * P, d, 1.0, b->y->s, d, Ex, d, 0.0, Et, ne * P);
        }
        for (size_t i = e0; i < e0 + ne; i++) {
            for (size_t j = 0; j < nby; j++) {
                double *dst = row + j * C * C;
                const double *c_ij = cf + i * nby + j, *et = Et + (j * ne + i - e0) * P;
                double cs = L >= 2 ? c_ij[(L - 2) * kt * nby] : 0.0, cu = c_ij[(L - 1) * kt * nby];
                /* the sum in layer order, as pk_side_product adds it up */
                for (size_t kx = 0; kx < C; kx++) {
                    double *o = dst + kx * C;
                    const size_t *pr = b->pair + kx * C;
                    for (size_t ky = 0; ky < C; ky++) o[ky] = 0.0;
                    for (size_t l = 0; l < nr; l++) {
                        const double *dl = Dt + l * kt * C * cols + (i * C + kx) * cols + j * C;
                        double c = c_ij[l * kt * nby];
                        for (size_t ky = 0; ky < C; ky++) o[ky] += c * dl[ky];
                    }
                    if (L >= 2)
                        for (size_t ky = 0; ky < C; ky++) o[ky] += cs * et[pr[ky]];
                    o[kx] += cu;
                }
            }
            pk_status s = b->sink(b->ctx, b->x0 + i0 + i, b->y0, nby, row);
            if (s) return s;
        }
    }
    return PK_OK;
}

/* The full (nbx, nby, C, C) block, in tiles of PK_PIECE_ROWS delta rows
 * (a fixed number of x examples) over the threads, each with its scratch. */
typedef struct full_tiles {
    const kblock *b;
    size_t kt, es;     /* x examples a tile, pairs a step of it */
    double **scratch;  /* (threads) each thread's               */
} full_tiles;

static pk_status full_tile(void *ctx, size_t t, int thread)
{
    const full_tiles *ft = ctx;
    size_t i0 = t * ft->kt, nbx = ft->b->nbx;
    return kernel_tile(ft->b, i0, nbx - i0 < ft->kt ? nbx - i0 : ft->kt, ft->es, ft->scratch[thread]);
}

static pk_status kernel_block_full(const kblock *b)
{
    size_t kt = tile_examples(b->C), es = tile_pairs(b->C);
    if (kt > b->nbx) kt = b->nbx;
    size_t tiles = (b->nbx + kt - 1) / kt, per = tile_scratch(b->m, b->nby, kt, es, !b->x->d[0]);
    int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    if ((size_t)threads > tiles) threads = (int)tiles;
    double **scratch = pk_calloc(threads > 0 ? (size_t)threads : 1, sizeof *scratch);
    pk_status fail = scratch ? PK_OK : PK_ERR_NOMEM;
    for (int k = 0; scratch && k < threads; k++)
        if (!(scratch[k] = pk_alloc_big(per, sizeof(double)))) fail = PK_ERR_NOMEM;
    full_tiles ft = {b, kt, es, scratch};
    if (!fail) fail = pk_tasks(tiles, threads, full_tile, &ft);
    for (int k = 0; scratch && k < threads; k++) free(scratch[k]);
    free(scratch);
    return fail;
}

/* The trace (nbx, nby) block, layer by layer:
 * K = sum_l coef_l o G_l with G_l = sum_c delta_x^l(., c) . delta_y^l(., c)
 * (one GEMM over the C delta rows read as one), the last hidden layer's
 * G = (s_x o q) s_y^T with q = sw^2 sum_c W_L[c,:]^2, the output's G = C.
 * Into K (nbx, nby), then row by row to the sink. */
static pk_status kernel_block_trace(const kblock *b, const double *q, double *coef, double *G, double *Ex,
                                    double *K)
{
    const pk_model *m = b->m;
    size_t L = m->n_weight, C = b->C, nbx = b->nbx, nby = b->nby, nxy = nbx * nby;
    coef_rows(b, 0, nbx, coef);
    memset(K, 0, nxy * sizeof *K);
    for (size_t l = 0; l < L; l++) {
        if (l < b->nr) {
            size_t len = dim(m, l + 1) * C;
            pk_gemm(0, 1, nbx, nby, len, 1.0, b->x->d[l], len, b->y->d[l], len, 0.0, G, nby);
        } else if (l + 2 == L) {
            size_t d = dim(m, l + 1);
            for (size_t i = 0; i < nbx; i++)
                for (size_t k = 0; k < d; k++) Ex[i * d + k] = q[k] * b->x->s[i * d + k];
            pk_gemm(0, 1, nbx, nby, d, 1.0, Ex, d, b->y->s, d, 0.0, G, nby);
        }
        const double *cf = coef + l * nxy;
        #pragma omp parallel for schedule(static) if (nxy >= PK_PAR_MIN)
        for (size_t i = 0; i < nbx; i++)
            for (size_t j = 0; j < nby; j++)
                K[i * nby + j] += cf[i * nby + j] * (l + 1 == L ? (double)C : G[i * nby + j]);
    }
    if (b->gram == 2) /* on a Gram's diagonal: the upper triangle mirrored */
        for (size_t i = 0; i < nbx; i++)
            for (size_t j = 0; j < i; j++) K[i * nby + j] = K[j * nby + i];
    pk_status s = PK_OK;
    for (size_t i = 0; !s && i < nbx; i++) s = b->sink(b->ctx, b->x0 + i, b->y0, nby, K + i * nby);
    /* above a Gram's diagonal: K(y, x) = K(x, y), a column of this block a
     * row there (gathered in G, free by now) */
    for (size_t j = 0; b->gram == 1 && !s && j < nby; j++) {
        for (size_t i = 0; i < nbx; i++) G[i] = K[i * nby + j];
        s = b->sink(b->ctx, b->y0 + j, b->x0, nbx, G);
    }
    return s;
}

/* pk_kernel_tangent and pk_kernel_tangent_rows: the kernel's row segments
 * to sink. */
static pk_status kernel_tangent(const pk_model *m, const double *w, const double *X, size_t nx, const double *Y,
                                size_t ny, pk_kmode mode, size_t mem, pk_kernel_sink sink, void *ctx)
{
    size_t L = m->n_weight, C = dim(m, L), d = dim(m, 0), dh = L >= 2 ? dim(m, L - 1) : 0;
    int trace = mode == PK_KMODE_TRACE;
    size_t B = choose_block(m, nx, ny, trace, mem), bx = nx < B ? nx : B, by = ny < B ? ny : B;
    if (!bx || !by) return PK_OK;
    int same = X == Y && nx == ny;
    kside sx, sy;
    memset(&sy, 0, sizeof sy);
    /* the x side keeps its deltas when they serve as y's too, when several
     * y blocks would make the tiles compute them again, and for the trace;
     * else each tile computes its own, in cache */
    pk_status s = kside_new(m, bx, same || trace || ny > by, &sx);
    if (!s && !same) s = kside_new(m, by, 1, &sy);
    size_t P = C * (C + 1) / 2;
    /* last hidden layer: Wp (P, dh) for blocks, q (dh) for the trace */
    double *Wp = L >= 2 ? pk_alloc(trace ? 1 : P, dh * sizeof(double)) : NULL;
    size_t *pair = pk_alloc(C * C, sizeof *pair);
    /* the trace: coef (L, bx, by), G (bx, by), Ex (bx, dh), out (bx, by) */
    double *tr = trace ? pk_alloc(bx * (L + 2) * by + bx * dh, sizeof(double)) : NULL;
    if (!s && ((L >= 2 && !Wp) || !pair || (trace && !tr))) s = PK_ERR_NOMEM;
    if (!s && L >= 2) {
        const double *W = w + pk_model_weight(m, L - 1)->w_off;
        double sw = pk_model_weight(m, L - 1)->sw, sw2 = sw * sw;
        for (size_t c = 0, p = 0; c < C; c++)
            for (size_t c2 = c; c2 < C; c2++, p++) {
                pair[c * C + c2] = pair[c2 * C + c] = p;
                for (size_t k = 0; !trace && k < dh; k++) Wp[p * dh + k] = sw2 * (W[c * dh + k] * W[c2 * dh + k]);
            }
        for (size_t k = 0; trace && k < dh; k++) {
            double v = 0.0;
            for (size_t c = 0; c < C; c++) v += W[c * dh + k] * W[c * dh + k];
            Wp[k] = sw2 * v;
        }
    }
    size_t y_held = (size_t)-1; /* the block of Y that sy holds */
    for (size_t x0 = 0; !s && x0 < nx; x0 += bx) {
        size_t nbx = nx - x0 < bx ? nx - x0 : bx;
        s = kside_compute(m, w, X + x0 * d, nbx, &sx);
        /* a trace Gram (Y is X) takes the blocks at y0 >= x0 and mirrors
         * those above the diagonal (bx == by then); a full one takes every
         * block (mirrored rows would need a tile's columns of every y row
         * kept: scratch that would shrink the blocks under --mem) */
        for (size_t y0 = same && trace ? x0 : 0; !s && y0 < ny; y0 += by) {
            size_t nby = ny - y0 < by ? ny - y0 : by;
            const kside *py = &sy;
            if (same && y0 == x0) py = &sx;
            else if (y_held != y0) {
                if (!sy.t && (s = kside_new(m, by, 1, &sy))) break; /* Y is X: off-diagonal blocks */
                if ((s = kside_compute(m, w, Y + y0 * d, nby, &sy))) break;
                y_held = y0;
            }
            kblock b = {m, w, C, P, L >= 2 ? L - 2 : 0, x0, y0, nbx, nby, &sx, py, Wp, pair,
                        same && trace ? (y0 == x0 ? 2 : 1) : 0, sink, ctx};
            if (trace) s = kernel_block_trace(&b, Wp, tr, tr + L * bx * by, tr + (L + 1) * bx * by,
                                              tr + (L + 1) * bx * by + bx * dh);
            else s = kernel_block_full(&b);
        }
    }
    kside_free(m, &sx);
    kside_free(m, &sy);
    free(Wp); free(pair); free(tr);
    return s;
}

/* y examples a product takes: two pieces of pk_model_output_rows
 * (PK_PIECE_ROWS / C examples each). Fixed, never of the thread count: the
 * products' columns follow from it, and on some BLAS kernels their bits. */
static size_t y_step(size_t C) { return 2 * (PK_PIECE_ROWS / C ? PK_PIECE_ROWS / C : 1); }

/* y examples a side is formed for at once: a y_step for every two threads,
 * a piece each (a side's values do not depend on its block). */
static size_t y_block(size_t C)
{
    size_t t = (size_t)omp_get_max_threads();
    return y_step(C) * ((t + 1) / 2);
}

/* Doubles the generic path holds for x blocks of bx and y sides of by
 * examples: each side's tape and its deltas or rows, and A, D and S
 * against a y step. */
static double generic_values(const pk_model *m, size_t bx, size_t by, int trace)
{
    size_t C = m->n_out, r = trace ? 1 : C;
    double per = (double)pk_tape_values(m) + (double)pk_side_bufs_values(m, trace);
    double pair = (1.0 + (double)C * (double)C + (double)r * (double)r) * (double)y_step(C);
    return per * (double)(bx + by) + pair * (double)bx;
}

/* Any model: blocks of examples a side, each side's per-output deltas, and
 * every layer's own share of the products (pk_side_product); the fused path
 * above is the same sum for multilayer perceptrons, arranged for speed. A
 * layer whose share goes through per-row gradients (pk_takes_rows: a
 * convolution in form A) keeps those rows, formed piece by piece as its
 * deltas are, instead of the deltas: 156 values an output instead of 4,704
 * for LeNet-5's first convolution. x blocks are as large as a quarter of
 * the memory budget allows (at most 512 examples): every y side is formed
 * once per x block, so fewer, larger x blocks repeat less of that work. y
 * sides are small (y_block), so that they and the products' scratch stay
 * small and are reused. */
static size_t generic_block(const pk_model *m, size_t nx, size_t By, int trace, size_t mem)
{
    double budget = (double)pk_memory_budget(mem) / 4.0 / sizeof(double);
    size_t B = 16;
    while (B < 512 && B < nx && generic_values(m, 2 * B, By, trace) <= budget) B *= 2;
    return B;
}

void pk_side_bufs_free(const pk_model *m, pk_side_bufs *b)
{
    for (size_t l = 0; l < m->n_weight; l++) {
        free(b->delta[l]); free(b->rows[l]);
        b->delta[l] = b->rows[l] = NULL;
    }
}

/* Does a side keep layer l's per-row gradients (else its deltas)? */
static int side_rows(const pk_model *m, size_t l, int trace)
{
    size_t C = m->n_out;
    return pk_takes_rows(pk_model_weight(m, l), trace ? 1 : C, trace ? 1 : C, trace ? C : 1);
}

/* Values per example and output a side keeps of layer l. */
static size_t side_len(const pk_model *m, size_t l, int trace)
{
    return side_rows(m, l, trace) ? pk_model_weight(m, l)->n_w : pk_model_weight(m, l)->out;
}

size_t pk_side_bufs_values(const pk_model *m, int trace)
{
    size_t kept = 0;
    for (size_t l = 0; l < m->n_weight; l++) kept += side_len(m, l, trace);
    return m->n_out * kept;
}

pk_status pk_side_bufs_new(const pk_model *m, size_t cap, int trace, pk_side_bufs *b)
{
    memset(b, 0, sizeof *b);
    for (size_t l = 0; l < m->n_weight; l++) {
        double *p = pk_alloc_big(cap * m->n_out, side_len(m, l, trace) * sizeof(double));
        if (!p) { pk_side_bufs_free(m, b); return PK_ERR_NOMEM; }
        (side_rows(m, l, trace) ? b->rows : b->delta)[l] = p;
    }
    return PK_OK;
}

pk_status pk_side_form(const pk_model *m, const double *w, const pk_tape *t, pk_side_bufs *b, int trace,
                       pk_side *s)
{
    pk_status st = pk_model_output_rows(m, w, t, b->delta, b->rows);
    *s = pk_side_outputs(m, t, b->delta, trace);
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        s->grow[l] = b->rows[l];
        s->gbias[l] = b->rows[l] ? b->rows[l] + t->n * m->n_out * (lw->b_off - lw->w_off) : NULL;
    }
    return st;
}

/* S (nbx r, nby r), rows (x, kx) = x0 + i and columns (y, ky) = y0 + j,
 * in K's layout: row segments into K (ny per row) or to the sink, by the
 * threads. For a Gram (x and y the same examples) S holds the pairs taken
 * where x <= y, each written twice, K(x, y) as it is and K(y, x) = K(x,
 * y)^T (blocks transposed), so that every pair is computed once and K is
 * exactly symmetric (K(x, x) from its upper triangle): x's row from y = x
 * on, then y's row over the x < y. */
static pk_status to_layout(const double *S, size_t nbx, size_t nby, size_t r, size_t x0, size_t y0, size_t ny,
                           int gram, double *K, pk_kernel_sink sink, void *ctx)
{
    pk_status st = PK_OK;
    size_t most = gram && nbx > nby ? nbx : nby, segs = nbx + (gram ? nby : 0); /* a row's segment at most */
    #pragma omp parallel if (nbx * nby * r * r >= PK_PAR_MIN)
    {
        double *row = K ? NULL : pk_alloc(most, r * r * sizeof *row); /* (most, r, r) */
        if (!K && !row) {
            #pragma omp atomic write
            st = PK_ERR_NOMEM;
        }
        #pragma omp for schedule(dynamic, 1)
        for (size_t k = 0; k < segs; k++) {
            pk_status now;
            #pragma omp atomic read
            now = st;
            if (now) continue;
            pk_status si = PK_OK;
            if (k < nbx) { /* row x = x0 + k: its y (for a Gram, from y = x on) */
                size_t x = x0 + k, j0 = gram && x > y0 ? x - y0 : 0;
                if (j0 >= nby) continue;
                double *dst = K ? K + (x * ny + y0 + j0) * r * r : row;
                for (size_t j = j0; j < nby; j++)
                    for (size_t kx = 0; kx < r; kx++)
                        memcpy(dst + ((j - j0) * r + kx) * r, S + (k * r + kx) * nby * r + j * r, r * sizeof *S);
                if (gram && y0 + j0 == x) /* K(x, x): its upper triangle mirrored */
                    for (size_t kx = 1; kx < r; kx++)
                        for (size_t ky = 0; ky < kx; ky++) dst[kx * r + ky] = dst[ky * r + kx];
                if (!K) si = sink(ctx, x, y0 + j0, nby - j0, row);
            } else { /* a Gram's row y = y0 + j over x < y: K(y, x)_(ky, kx) = K(x, y)_(kx, ky) */
                size_t j = k - nbx, y = y0 + j, ni = y > x0 ? y - x0 : 0;
                if (ni > nbx) ni = nbx;
                if (!ni) continue;
                double *dst = K ? K + (y * ny + x0) * r * r : row;
                for (size_t i = 0; i < ni; i++)
                    for (size_t ky = 0; ky < r; ky++)
                        for (size_t kx = 0; kx < r; kx++)
                            dst[(i * r + ky) * r + kx] = S[(i * r + kx) * nby * r + j * r + ky];
                if (!K) si = sink(ctx, y, x0, ni, row);
            }
            if (si) {
                #pragma omp atomic write
                st = si;
            }
        }
        free(row);
    }
    return st;
}

static pk_status kernel_generic(const pk_model *m, const double *w, const double *X, size_t nx, const double *Y,
                                size_t ny, pk_kmode mode, size_t mem, double *K, pk_kernel_sink sink, void *ctx);

pk_status pk_kernel_tangent_generic(const pk_model *m, const double *w, const double *X, size_t nx, const double *Y,
                                    size_t ny, pk_kmode mode, double *K, pk_kernel_sink sink, void *ctx)
{
    return kernel_generic(m, w, X, nx, Y, ny, mode, 0, K, sink, ctx);
}

static pk_status kernel_generic(const pk_model *m, const double *w, const double *X, size_t nx, const double *Y,
                                size_t ny, pk_kmode mode, size_t mem, double *K, pk_kernel_sink sink, void *ctx)
{
    size_t C = m->n_out, d = m->n_in;
    int trace = mode == PK_KMODE_TRACE;
    size_t r = trace ? 1 : C, By = y_block(C), step = y_step(C), B = generic_block(m, nx, By, trace, mem);
    pk_tape *tx = pk_tape_new(m, B), *ty = pk_tape_new(m, By);
    if (tx) tx->queries = 1;
    if (ty) ty->queries = 1;
    pk_side_bufs bufx, bufy;
    int have = !pk_side_bufs_new(m, B, trace, &bufx);
    if (have && pk_side_bufs_new(m, By, trace, &bufy)) { pk_side_bufs_free(m, &bufx); have = 0; }
    double *A = pk_alloc(B, step * sizeof *A);             /* (B, step)                                  */
    double *D = pk_alloc_big(B * C, step * C * sizeof *D); /* (B C, step C)                              */
    double *S = pk_alloc_big(B * r, step * r * sizeof *S); /* (B r, step r): rows (x, kx), cols (y, ky) */
    pk_status s = tx && ty && have && A && D && S ? PK_OK : PK_ERR_NOMEM;
    /* a Gram (Y is X) takes each pair once, at x <= y: a y step's products
     * with the x rows up to its last example, none with x blocks past it
     * (each row's values never depend on the rows beside it in a product,
     * so K(x, y), x <= y, has the bits it has against a copy of X) */
    int gram = Y == X && ny == nx;
    for (size_t x0 = 0; !s && x0 < nx; x0 += B) {
        size_t nbx = nx - x0 < B ? nx - x0 : B;
        pk_side sx, sy;
        pk_model_forward(m, w, X + x0 * d, nbx, tx);
        s = pk_side_form(m, w, tx, &bufx, trace, &sx);
        for (size_t y0 = gram ? x0 / By * By : 0; !s && y0 < ny; y0 += By) {
            size_t nby = ny - y0 < By ? ny - y0 : By;
            if (Y == X && x0 <= y0 && y0 + nby <= x0 + nbx) /* within the x block: no second pass */
                sy = pk_side_part(m, &sx, y0 - x0, nby);
            else {
                pk_model_forward(m, w, Y + y0 * d, nby, ty);
                if ((s = pk_side_form(m, w, ty, &bufy, trace, &sy))) break;
            }
            for (size_t j0 = 0; !s && j0 < nby; j0 += step) {
                size_t nj = nby - j0 < step ? nby - j0 : step, end = y0 + j0 + nj;
                if (gram && end <= x0) continue; /* taken with an earlier x block */
                size_t rows = gram && end - x0 < nbx ? end - x0 : nbx;
                pk_side xs = pk_side_part(m, &sx, 0, rows), part = pk_side_part(m, &sy, j0, nj);
                pk_side_product(m, &xs, &part, S, nj, 0, A, D);
                s = to_layout(S, rows, nj, r, x0, y0 + j0, ny, gram, K, sink, ctx);
            }
        }
    }
    pk_tape_free(tx);
    pk_tape_free(ty);
    if (have) { pk_side_bufs_free(m, &bufx); pk_side_bufs_free(m, &bufy); }
    free(A); free(D); free(S);
    return s;
}

size_t pk_kernel_tangent_memory(const pk_model *m, size_t nx, size_t ny, pk_kmode mode, size_t mem)
{
    int trace = mode == PK_KMODE_TRACE;
    if (pk_model_mlp_act(m) < 0) { /* the generic path's blocks */
        size_t By = y_block(m->n_out), B = generic_block(m, nx, By, trace, mem);
        return (size_t)generic_values(m, nx < B ? nx : B, ny < By ? ny : By, trace) * sizeof(double);
    }
    size_t B = choose_block(m, nx, ny, trace, mem);
    return block_bytes(m, nx < B ? nx : B, ny < B ? ny : B, trace);
}

/* A sink into K (nx, ny, r, r). */
typedef struct into_array { double *K; size_t ny, rr; } into_array;

static pk_status to_array(void *ctx, size_t i, size_t j0, size_t n, const double *k)
{
    const into_array *a = ctx;
    memcpy(a->K + (i * a->ny + j0) * a->rr, k, n * a->rr * sizeof *k);
    return PK_OK;
}

pk_status pk_kernel_tangent(const pk_model *m, const double *w, const double *X, size_t nx,
                            const double *Y, size_t ny, pk_kmode mode, double *K)
{
    if (pk_model_mlp_act(m) < 0) return pk_kernel_tangent_generic(m, w, X, nx, Y, ny, mode, K, NULL, NULL);
    size_t r = mode == PK_KMODE_TRACE ? 1 : m->n_out;
    into_array a = {K, ny, r * r};
    return kernel_tangent(m, w, X, nx, Y, ny, mode, 0, to_array, &a);
}

pk_status pk_kernel_tangent_rows(const pk_model *m, const double *w, const double *X, size_t nx,
                                 const double *Y, size_t ny, pk_kmode mode, size_t mem, pk_kernel_sink sink,
                                 void *ctx)
{
    if (pk_model_mlp_act(m) < 0) return kernel_generic(m, w, X, nx, Y, ny, mode, mem, NULL, sink, ctx);
    return kernel_tangent(m, w, X, nx, Y, ny, mode, mem, sink, ctx);
}
