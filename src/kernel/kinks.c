/* kinks.c -- the exact rule's pieces (MATH.md section 12): along a step
 * w(s) = w + s D of a piecewise-linear network, where each example's
 * activation pattern changes. Between two such points every pre-activation
 * is a polynomial in s whose coefficients follow from the fixed pattern, so
 * the pattern of layer k is found from the polynomials of its input, layer
 * by layer: the rows (an example on an interval of s where the layers so far
 * keep their pattern) are split where a unit's polynomial changes sign, and
 * each new row takes the pattern of its midpoint. A kink is a root of a
 * polynomial, found from its coefficients (pk_poly_sign_changes), never by
 * sampling. Then the rule's nodes: shared Gauss-Legendre nodes for the
 * examples without a kink, nodes of their own on every piece for the others
 * (pk_nodes_step). */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- roots */

/* Value at v of r (degree d). */
static double horner(const double *r, size_t d, double v)
{
    double y = r[d];
    for (size_t k = d; k-- > 0;) y = y * v + r[k];
    return y;
}

/* The roots of r (degree d >= 1, coefficients in v) in (-1, 1) where r
 * changes sign, ascending, into out (at most d); returns how many. Degree 1
 * and 2 in closed form; above, the roots of r' split (-1, 1) into pieces
 * where r is monotone, and a sign change on one is bracketed and bisected
 * to the last bit. A root where r touches 0 without crossing is no kink. */
static size_t unit_roots(const double *r, size_t d, double *out)
{
    while (d > 0 && r[d] == 0.0) d--;
    if (d == 0) return 0;
    if (d == 1) {
        double v = -r[0] / r[1];
        if (v > -1.0 && v < 1.0) { out[0] = v; return 1; }
        return 0;
    }
    if (d == 2) {
        double disc = r[1] * r[1] - 4.0 * r[2] * r[0];
        if (!(disc > 0.0)) return 0; /* a double root (touching) or none */
        double q = -0.5 * (r[1] + copysign(sqrt(disc), r[1]));
        double v1 = q / r[2], v2 = q != 0.0 ? r[0] / q : v1;
        if (v1 > v2) { double t = v1; v1 = v2; v2 = t; }
        size_t k = 0;
        if (v1 > -1.0 && v1 < 1.0) out[k++] = v1;
        if (v2 > -1.0 && v2 < 1.0 && v2 != v1) out[k++] = v2;
        return k;
    }
    double dr[PK_MAX_MODEL_LAYERS + 1], crit[PK_MAX_MODEL_LAYERS + 2]; /* r' (d), its sign changes */
    for (size_t k = 0; k < d; k++) dr[k] = (double)(k + 1) * r[k + 1];
    size_t nc = unit_roots(dr, d - 1, crit + 1), k = 0;
    crit[0] = -1.0;
    crit[nc + 1] = 1.0;
    for (size_t i = 0; i <= nc; i++) {
        double lo = crit[i], hi = crit[i + 1], flo = horner(r, d, lo), fhi = horner(r, d, hi);
        if (!((flo < 0 && fhi > 0) || (flo > 0 && fhi < 0))) continue;
        for (int it = 0; it < 200; it++) { /* bisection: r is monotone on [lo, hi] */
            double mid = 0.5 * (lo + hi);
            if (mid <= lo || mid >= hi) break;
            double fm = horner(r, d, mid);
            if (fm == 0.0) { lo = hi = mid; break; }
            if ((fm < 0) == (flo < 0)) { lo = mid; flo = fm; }
            else hi = mid;
        }
        out[k++] = 0.5 * (lo + hi);
    }
    return k;
}

size_t pk_poly_sign_changes(const double *c, size_t d, double a, double b, double *out)
{
    /* p(m + h v), v in [-1, 1]: Taylor shift to the midpoint, then scaled,
     * so that the roots are found where the polynomial is well conditioned */
    double m = 0.5 * (a + b), h = 0.5 * (b - a), r[PK_MAX_MODEL_LAYERS + 1];
    if (d > PK_MAX_MODEL_LAYERS) d = PK_MAX_MODEL_LAYERS;
    memcpy(r, c, (d + 1) * sizeof *r);
    for (size_t i = 0; i < d; i++)
        for (size_t j = d; j-- > i;) r[j] += m * r[j + 1];
    double hk = 1.0, rest = 0.0;
    for (size_t k = 1; k <= d; k++) {
        hk *= h;
        r[k] *= hk;
        rest += fabs(r[k]);
    }
    /* |r(v) - r(0)| <= rest on [-1, 1]: no sign change when |r(0)| is larger */
    if (!(rest > 0.0) || fabs(r[0]) > rest * (1.0 + 1e-12)) return 0;
    size_t n = unit_roots(r, d, out);
    for (size_t i = 0; i < n; i++) out[i] = m + h * out[i];
    return n;
}

/* ------------------------------------------------------------ the model */

/* Does layer k make kinks: relu and leaky_relu, max pooling. */
static int kink_layer(const pk_layer *l)
{
    return (l->ops == &pk_act_ops && (l->act == PK_ACT_RELU || l->act == PK_ACT_LEAKY_RELU)) ||
           l->ops == &pk_maxpool_ops;
}

const char *pk_quad_exact_refusal(const pk_model *m, char *buf, size_t len)
{
    for (size_t k = 0; k < m->n_layers; k++) {
        const pk_layer *l = &m->layer[k];
        if (l->ops != &pk_act_ops || l->act == PK_ACT_IDENTITY || kink_layer(l)) continue;
        snprintf(buf, len, "the exact rule needs a piecewise-linear network (identity, relu, leaky_relu, "
                 "max and average pooling), where f(x; w_t + s D_t) is a polynomial in s between kinks; layer %zu "
                 "is %s, smooth but not piecewise polynomial, so no rule is exact: use gl4 (or gl8), whose error "
                 "falls as eta^8 (eta^16) over a fixed eta*T (verify prints what it reaches)", k + 1,
                 pk_act_name(l->act));
        return buf;
    }
    if (m->n_weight > 16) {
        snprintf(buf, len, "the exact rule needs ceil(L/2) nodes per piece for the contributions and L for a "
                 "kernel; this network has L = %zu layers with parameters, more than the 16 it takes", m->n_weight);
        return buf;
    }
    return NULL;
}

/* ------------------------------------------------------------ refinement */

/* Polynomial values of every slot a later layer reads: for slot s (0 the
 * input, k + 1 layer k's output) coefficients (deg[s] + 1, R, width) of s^j,
 * coefficient-major so that a layer runs on all of them as (deg+1) R rows. */
typedef struct kstate {
    size_t R, cap;             /* rows, rows allocated                     */
    uint32_t *e;               /* (cap) the example of a row               */
    double *a, *b;             /* (cap) its interval                       */
    double *c[PK_MAX_MODEL_LAYERS + 1];
    size_t deg[PK_MAX_MODEL_LAYERS + 1];
} kstate;

static size_t slot_width(const pk_model *m, size_t s) { return s ? m->layer[s - 1].out : m->n_in; }

static void kstate_free(kstate *k)
{
    free(k->e); free(k->a); free(k->b);
    for (size_t s = 0; s <= PK_MAX_MODEL_LAYERS; s++) free(k->c[s]);
    memset(k, 0, sizeof *k);
}

/* The last layer that reads slot s (its src or its skip), or 0 when none after k. */
static int slot_read_after(const pk_model *m, size_t s, size_t k)
{
    for (size_t j = k + 1; j < m->n_layers; j++)
        if (m->layer[j].src == s || (m->layer[j].ops == &pk_add_ops && m->layer[j].skip == s)) return 1;
    return 0;
}

/* out (.., R, out) = the layer applied to each of `rows` blocks of R rows. */
static void layer_rows(const pk_layer *l, const double *w, const double *in, double *out, size_t rows)
{
    l->ops->forward(l, w, in, out, rows, PK_GEMM_ROWS);
}

/* Slot k + 1 from its input through layer k, a layer without kinks. */
static pk_status linear_layer(const pk_model *m, size_t k, const double *w, const double *wz, const double *D,
                              const double *Dz, kstate *st)
{
    const pk_layer *l = &m->layer[k];
    size_t R = st->R, src = l->src, din = l->in, dout = l->out, dg = st->deg[src];
    const double *in = st->c[src];
    size_t og = dg + (l->n_w ? 1 : 0);
    if (l->ops == &pk_add_ops) og = dg > st->deg[l->skip] ? dg : st->deg[l->skip];
    double *out = pk_alloc((og + 1) * R, dout * sizeof *out); /* (og + 1, R, dout) */
    if (!out) return PK_ERR_NOMEM;
    if (l->n_w) {
        /* z_0 = F_w(a_0); z_j = F_wz(a_j) + F_Dz(a_{j-1}), with D's bias in z_1
         * (wz, Dz: w and D with the biases zero; F linear in both) */
        double *tmp = pk_alloc((dg ? dg : 1) * R, dout * sizeof *tmp); /* (max(dg, 1), R, dout) */
        if (!tmp) { free(out); return PK_ERR_NOMEM; }
        layer_rows(l, w, in, out, R);
        if (dg) layer_rows(l, wz, in + R * din, out + R * dout, dg * R);
        else memset(out + R * dout, 0, R * dout * sizeof *out);
        layer_rows(l, D, in, tmp, R);
        for (size_t i = 0; i < R * dout; i++) out[R * dout + i] += tmp[i];
        if (dg) {
            memset(out + (og) * R * dout, 0, R * dout * sizeof *out);
            layer_rows(l, Dz, in + R * din, tmp, dg * R);
            for (size_t i = 0; i < dg * R * dout; i++) out[2 * R * dout + i] += tmp[i];
        }
        free(tmp);
    } else {
        /* linear without parameters (pooling, flatten, identity, dropout at
         * test time, the merge's copy): coefficient by coefficient */
        layer_rows(l, w, in, out, (dg + 1) * R);
        if (og > dg) memset(out + (dg + 1) * R * dout, 0, (og - dg) * R * dout * sizeof *out);
        if (l->ops == &pk_add_ops) {
            const double *sk = st->c[l->skip];
            for (size_t i = 0; i < (st->deg[l->skip] + 1) * R * dout; i++) out[i] += sk[i];
        }
    }
    free(st->c[k + 1]);
    st->c[k + 1] = out;
    st->deg[k + 1] = og;
    return PK_OK;
}

/* The coefficients of unit u of row r in a slot of degree d: p[j] = c[(j, r, u)]. */
static void unit_poly(const double *c, size_t d, size_t R, size_t width, size_t r, size_t u, double *p)
{
    for (size_t j = 0; j <= d; j++) p[j] = c[(j * R + r) * width + u];
}

/* Append the sign changes of p (degree d) in (a, b) to *out (n held, *cap
 * allocated); returns the new count, (size_t)-1 when out of memory. */
static size_t add_roots(const double *p, size_t d, double a, double b, double **out, size_t n, size_t *cap)
{
    double roots[PK_MAX_MODEL_LAYERS];
    size_t nr = pk_poly_sign_changes(p, d, a, b, roots);
    if (!nr) return n;
    if (n + nr > *cap) {
        size_t nc = 2 * (n + nr) + 16;
        double *g = realloc(*out, nc * sizeof *g);
        if (!g) return (size_t)-1;
        *out = g;
        *cap = nc;
    }
    memcpy(*out + n, roots, nr * sizeof *roots);
    return n + nr;
}

/* Cuts of row r at layer l (a kink layer reading slot coefficients c of
 * degree d): the sign changes in (a, b) of every unit (relu, leaky_relu),
 * or of the difference of every two values of a window (max pooling: the
 * first maximum can only change where two values cross). Returns the count,
 * (size_t)-1 when out of memory; *out grows as needed (the caller frees it). */
static size_t row_cuts(const pk_layer *l, const double *c, size_t d, size_t R, size_t r, double a, double b,
                       double **out, size_t *cap)
{
    size_t n = 0, width = l->in;
    double p[PK_MAX_MODEL_LAYERS + 1], q[PK_MAX_MODEL_LAYERS + 1];
    if (l->ops != &pk_maxpool_ops) {
        for (size_t u = 0; u < width && n != (size_t)-1; u++) {
            unit_poly(c, d, R, width, r, u, p);
            n = add_roots(p, d, a, b, out, n, cap);
        }
        return n;
    }
    size_t ho = l->h_out, wo = l->w_out;
    for (size_t u = 0; u < l->out && n != (size_t)-1; u++) { /* the window of output u = (c, oh, ow) */
        size_t ch = u / (ho * wo), oh = u / wo % ho, ow = u % wo;
        size_t at = ch * l->h_in * l->w_in + oh * l->stride * l->w_in + ow * l->stride, kk = l->kh * l->kw;
        for (size_t i = 0; i < kk && n != (size_t)-1; i++)
            for (size_t j = i + 1; j < kk && n != (size_t)-1; j++) {
                unit_poly(c, d, R, width, r, at + i / l->kw * l->w_in + i % l->kw, p);
                unit_poly(c, d, R, width, r, at + j / l->kw * l->w_in + j % l->kw, q);
                for (size_t k = 0; k <= d; k++) p[k] -= q[k];
                n = add_roots(p, d, a, b, out, n, cap);
            }
    }
    return n;
}

/* Breakpoints closer than this are one (a piece thinner than it moves an
 * integral by that width times the jump of the integrand, below rounding). */
#define CUT_TOL 1e-14

/* Split the rows at layer l's kinks (l a kink layer reading slot src) and
 * give each new row the layer's pattern at its midpoint: slot k + 1 is the
 * input's coefficients times the relu slope, or the window's maximum. */
static pk_status kink_split(const pk_model *m, size_t k, kstate *st)
{
    const pk_layer *l = &m->layer[k];
    size_t R = st->R, src = l->src, d = st->deg[src];
    double **cuts = pk_calloc(R ? R : 1, sizeof *cuts);
    size_t *nc = pk_calloc(R ? R : 1, sizeof *nc);
    if (!cuts || !nc) { free(cuts); free(nc); return PK_ERR_NOMEM; }
    int fail = 0;
    #pragma omp parallel for schedule(dynamic, 4) if (R * l->in * (d + 1) >= PK_PAR_MIN)
    for (size_t r = 0; r < R; r++) {
        size_t cap = 0;
        double *c = NULL;
        size_t n = row_cuts(l, st->c[src], d, R, r, st->a[r], st->b[r], &c, &cap);
        if (n == (size_t)-1) {
            #pragma omp atomic write
            fail = 1;
            n = 0;
        }
        /* ascending, without repeats or cuts at the ends */
        if (n) qsort(c, n, sizeof *c, pk_cmp_double);
        size_t u = 0;
        double last = st->a[r];
        for (size_t i = 0; i < n; i++)
            if (c[i] - last > CUT_TOL && st->b[r] - c[i] > CUT_TOL) last = c[u++] = c[i];
        cuts[r] = c;
        nc[r] = u;
    }
    size_t R2 = 0;
    for (size_t r = 0; r < R; r++) R2 += nc[r] + 1;
    pk_status s = fail ? PK_ERR_NOMEM : PK_OK;
    /* the new rows: (e, a, b) and a gather of every live slot */
    uint32_t *e = pk_alloc(R2, sizeof *e);
    double *a = pk_alloc(R2, sizeof *a), *b = pk_alloc(R2, sizeof *b);
    size_t *from = pk_alloc(R2, sizeof *from);
    if (!e || !a || !b || !from) s = PK_ERR_NOMEM;
    for (size_t r = 0, j = 0; !s && r < R; r++)
        for (size_t i = 0; i <= nc[r]; i++, j++) {
            e[j] = st->e[r];
            a[j] = i ? cuts[r][i - 1] : st->a[r];
            b[j] = i < nc[r] ? cuts[r][i] : st->b[r];
            from[j] = r;
        }
    for (size_t r = 0; r < R; r++) free(cuts[r]);
    free(cuts);
    free(nc);
    for (size_t sl = 0; !s && R2 != R && sl <= m->n_layers; sl++) {
        if (!st->c[sl]) continue;
        size_t w = slot_width(m, sl), dg = st->deg[sl];
        double *g = pk_alloc((dg + 1) * R2, w * sizeof *g); /* (dg + 1, R2, w) */
        if (!g) { s = PK_ERR_NOMEM; break; }
        for (size_t j = 0; j <= dg; j++)
            for (size_t r = 0; r < R2; r++)
                memcpy(g + (j * R2 + r) * w, st->c[sl] + (j * R + from[r]) * w, w * sizeof *g);
        free(st->c[sl]);
        st->c[sl] = g;
    }
    free(from);
    if (s) { free(e); free(a); free(b); return s; }
    free(st->e); free(st->a); free(st->b);
    st->e = e; st->a = a; st->b = b;
    st->R = st->cap = R = R2;
    /* slot k + 1: the pattern at each row's midpoint */
    size_t dout = l->out, din = l->in;
    double *out = pk_alloc((d + 1) * R, dout * sizeof *out); /* (d + 1, R, dout) */
    if (!out) return PK_ERR_NOMEM;
    const double *in = st->c[src];
    #pragma omp parallel for schedule(static) if (R * din * (d + 1) >= PK_PAR_MIN)
    for (size_t r = 0; r < R; r++) {
        double mid = 0.5 * (st->a[r] + st->b[r]), p[PK_MAX_MODEL_LAYERS + 1];
        if (l->ops == &pk_maxpool_ops) {
            size_t ho = l->h_out, wo = l->w_out;
            for (size_t u = 0; u < dout; u++) {
                size_t ch = u / (ho * wo), oh = u / wo % ho, ow = u % wo, best = 0;
                size_t at = ch * l->h_in * l->w_in + oh * l->stride * l->w_in + ow * l->stride;
                double vb = -INFINITY;
                for (size_t i = 0; i < l->kh; i++)
                    for (size_t j = 0; j < l->kw; j++) { /* the first maximum, as the forward pass */
                        size_t x = at + i * l->w_in + j;
                        unit_poly(in, d, R, din, r, x, p);
                        double v = horner(p, d, mid);
                        if (v > vb || (i == 0 && j == 0)) { vb = v; best = x; }
                    }
                for (size_t j = 0; j <= d; j++) out[(j * R + r) * dout + u] = in[(j * R + r) * din + best];
            }
        } else {
            for (size_t u = 0; u < dout; u++) {
                unit_poly(in, d, R, din, r, u, p);
                double f = horner(p, d, mid) > 0 ? 1.0 : l->act == PK_ACT_LEAKY_RELU ? l->slope : 0.0;
                for (size_t j = 0; j <= d; j++) out[(j * R + r) * dout + u] = f * p[j];
            }
        }
    }
    free(st->c[k + 1]);
    st->c[k + 1] = out;
    st->deg[k + 1] = d;
    return PK_OK;
}

/* The pieces of n examples X (n, d) along w + s D: rows of the state when
 * every kink layer is done (by example, ascending in s). */
static pk_status refine(const pk_model *m, const double *w, const double *wz, const double *D, const double *Dz,
                        const double *X, size_t n, kstate *st)
{
    memset(st, 0, sizeof *st);
    size_t last = 0; /* layers after the last kink layer make no cut */
    for (size_t k = 0; k < m->n_layers; k++)
        if (kink_layer(&m->layer[k])) last = k + 1;
    st->R = st->cap = n;
    st->e = pk_alloc(n ? n : 1, sizeof *st->e);
    st->a = pk_alloc(n ? n : 1, sizeof *st->a);
    st->b = pk_alloc(n ? n : 1, sizeof *st->b);
    st->c[0] = pk_alloc(n ? n : 1, m->n_in * sizeof(double));
    if (!st->e || !st->a || !st->b || !st->c[0]) return PK_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) { st->e[i] = (uint32_t)i; st->a[i] = 0.0; st->b[i] = 1.0; }
    memcpy(st->c[0], X, n * m->n_in * sizeof *X);
    pk_status s = PK_OK;
    for (size_t k = 0; !s && k < last; k++) {
        s = kink_layer(&m->layer[k]) ? kink_split(m, k, st) : linear_layer(m, k, w, wz, D, Dz, st);
        for (size_t sl = 0; sl <= k + 1; sl++) /* drop what no later layer reads */
            if (st->c[sl] && !slot_read_after(m, sl, k)) {
                free(st->c[sl]);
                st->c[sl] = NULL;
            }
    }
    return s;
}

/* ---------------------------------------------------------------- nodes */

void pk_nodes_free(pk_nodes *nd)
{
    free(nd->u); free(nd->re); free(nd->rs); free(nd->rc); free(nd->ra); free(nd->rb); free(nd->wz); free(nd->Dz);
    memset(nd, 0, sizeof *nd);
}

/* Grow an array to hold n. */
static int grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n <= *cap) return 1;
    size_t c = 2 * n + 64;
    void *q = realloc(*p, c * size);
    if (!q) return 0;
    *p = q;
    *cap = c;
    return 1;
}

/* Examples per refinement: about 32 Mi doubles of coefficients at the widest slot. */
static size_t refine_chunk(const pk_model *m)
{
    size_t wmax = m->n_in;
    for (size_t k = 0; k < m->n_layers; k++) wmax = m->layer[k].out > wmax ? m->layer[k].out : wmax;
    size_t per = wmax * (m->n_weight + 2) * 3, c = ((size_t)1 << 22) / (per ? per : 1);
    return c < 1 ? 1 : c > 256 ? 256 : c;
}

pk_status pk_nodes_step(pk_nodes *nd, const pk_model *m, const pk_quad *q, int kernel, const double *w,
                        const double *D, const double *X, size_t n)
{
    nd->nu = nd->R = 0;
    nd->pieces = n;
    if (!grow((void **)&nd->u, &nd->cap_u, n ? n : 1, sizeof *nd->u)) return PK_ERR_NOMEM;
    if (!q->exact) { /* every example at the rule's nodes */
        nd->k = q->n;
        memcpy(nd->s, q->s, q->n * sizeof *q->s);
        memcpy(nd->c, q->c, q->n * sizeof *q->c);
        for (size_t i = 0; i < n; i++) nd->u[i] = (uint32_t)i;
        nd->nu = n;
        return PK_OK;
    }
    size_t K = pk_quad_piece_nodes(q, m, kernel), P = m->n_params;
    if (K != nd->k) {
        nd->k = K;
        pk_gauss_legendre(K, nd->s, nd->c);
    }
    if (!nd->wz) {
        nd->wz = pk_alloc(P, sizeof *nd->wz);
        nd->Dz = pk_alloc(P, sizeof *nd->Dz);
        if (!nd->wz || !nd->Dz) return PK_ERR_NOMEM;
    }
    /* w and D with every bias zero: the parts of a layer linear in its input */
    memcpy(nd->wz, w, P * sizeof *w);
    memcpy(nd->Dz, D, P * sizeof *D);
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        size_t b0 = lw->b_off, b1 = lw->w_off + lw->n_w;
        memset(nd->wz + b0, 0, (b1 - b0) * sizeof *w);
        memset(nd->Dz + b0, 0, (b1 - b0) * sizeof *w);
    }
    nd->pieces = 0;
    size_t chunk = refine_chunk(m);
    pk_status s = PK_OK;
    for (size_t i0 = 0; !s && i0 < n; i0 += chunk) {
        size_t nc = n - i0 < chunk ? n - i0 : chunk;
        kstate st;
        s = refine(m, w, nd->wz, D, nd->Dz, X + i0 * m->n_in, nc, &st);
        for (size_t r = 0; !s && r < st.R;) {
            size_t r1 = r + 1, e = i0 + st.e[r];
            while (r1 < st.R && st.e[r1] == st.e[r]) r1++;
            nd->pieces += r1 - r;
            if (r1 == r + 1) nd->u[nd->nu++] = (uint32_t)e; /* one piece: the shared nodes */
            else {
                size_t need = nd->R + (r1 - r) * K;
                if (!grow((void **)&nd->re, &nd->cap_r, need, sizeof *nd->re) ||
                    !grow((void **)&nd->rs, &nd->cap_rs, need, sizeof *nd->rs) ||
                    !grow((void **)&nd->rc, &nd->cap_rc, need, sizeof *nd->rc) ||
                    !grow((void **)&nd->ra, &nd->cap_ra, need, sizeof *nd->ra) ||
                    !grow((void **)&nd->rb, &nd->cap_rb, need, sizeof *nd->rb)) { s = PK_ERR_NOMEM; break; }
                for (size_t p = r; p < r1; p++) {
                    double a = st.a[p], h = st.b[p] - st.a[p];
                    for (size_t j = 0; j < K; j++) {
                        nd->re[nd->R] = (uint32_t)e;
                        nd->rs[nd->R] = a + h * nd->s[j];
                        nd->rc[nd->R] = h * nd->c[j];
                        nd->ra[nd->R] = a;
                        nd->rb[nd->R] = st.b[p];
                        nd->R++;
                    }
                }
            }
            r = r1;
        }
        kstate_free(&st);
    }
    return s;
}

/* ------------------------------------------------------- target's cuts */

/* The largest output other than c, the first on ties (the margin's). */
static size_t runner_up(const double *f, size_t C, size_t c)
{
    size_t o = c == 0 ? 1 : 0;
    for (size_t k = o + 1; k < C; k++)
        if (k != c && f[k] > f[o]) o = k;
    return o;
}

/* The runner-ups of rows (query ex[i], at w + at[i] D), i < n, on tape t
 * (t->cap rows at a time; X: the block's queries, Xg: (t->cap, d) scratch). */
static pk_status runner_ups(const pk_model *m, pk_tape *t, const double *w, const double *D, const double *X,
                            const double *y, size_t ty, const uint32_t *ex, const double *at, size_t n, double *Xg,
                            size_t *out)
{
    size_t d = m->n_in, C = m->n_out;
    for (size_t i0 = 0; i0 < n; i0 += t->cap) {
        size_t nc = n - i0 < t->cap ? n - i0 : t->cap;
        for (size_t i = 0; i < nc; i++) memcpy(Xg + i * d, X + (size_t)ex[i0 + i] * d, d * sizeof *Xg);
        pk_status s = pk_tape_along(t, m, D, at + i0);
        if (s) return s;
        pk_model_forward(m, w, Xg, nc, t);
        pk_tape_along(t, m, NULL, NULL);
        const double *f = pk_tape_out(m, t);
        for (size_t i = 0; i < nc; i++)
            out[i0 + i] = runner_up(f + i * C, C, (size_t)y[(size_t)ex[i0 + i] * ty]);
    }
    return PK_OK;
}

/* Bisection stops when the bracket of a change is this short (a step is
 * [0, 1]): the integrand on the wrong side of it is O(its length) small. */
#define RUNNER_TOL 1e-15

pk_status pk_nodes_target(pk_nodes *nd, const pk_model *m, const pk_target *g, const double *y, size_t ty,
                          const double *w, const double *D, const double *X, size_t n, pk_tape *t)
{
    if (g->kind != PK_TARGET_MARGIN || !n) return PK_OK;
    size_t d = m->n_in, K = nd->k;
    /* every query's pieces: [0, 1] for the shared ones, those of its rows for the others */
    size_t *first = pk_calloc(n + 1, sizeof *first); /* (n + 1) a query's pieces in pa/pb */
    unsigned char *own = pk_calloc(n, 1);            /* (n) rows of its own              */
    size_t np = 0, cap = n + nd->R / (K ? K : 1) + 1;
    double *pa = pk_alloc(cap, sizeof *pa), *pb = pk_alloc(cap, sizeof *pb); /* (pieces) */
    uint32_t *pe = pk_alloc(cap + n, sizeof *pe);                           /* (pieces + n) */
    double *ps = pk_alloc(cap + n, sizeof *ps);                             /* (pieces + n) */
    size_t *ru = pk_alloc(cap + n, sizeof *ru);                             /* (pieces + n) */
    double *Xg = pk_alloc(t->cap, d * sizeof *Xg);                          /* (cap, d)     */
    double *cut = NULL;                                                     /* (ncap) one query's cuts */
    size_t ncap = 0;
    pk_nodes nw;                                                            /* the new nodes */
    memset(&nw, 0, sizeof nw);
    pk_status s = first && own && pa && pb && pe && ps && ru && Xg ? PK_OK : PK_ERR_NOMEM;
    for (size_t r = 0; !s && r < nd->R; r += K) own[nd->re[r]] = 1;
    for (size_t i = 0, r = 0; !s && i < n; i++) {
        first[i] = np;
        if (!own[i]) { pa[np] = 0.0; pb[np++] = 1.0; continue; }
        while (r < nd->R && nd->re[r] < i) r += K;
        for (; r < nd->R && nd->re[r] == i; r += K) { pa[np] = nd->ra[r]; pb[np++] = nd->rb[r]; }
    }
    if (!s) first[n] = np;
    /* the runner-up at every piece's ends */
    size_t nb = 0;
    for (size_t i = 0; !s && i < n; i++)
        for (size_t p = first[i]; p <= first[i + 1]; p++) {
            pe[nb] = (uint32_t)i;
            ps[nb++] = p < first[i + 1] ? pa[p] : pb[p - 1];
        }
    if (!s) s = runner_ups(m, t, w, D, X, y, ty, pe, ps, nb, Xg, ru);
    /* the new nodes: a query without a change keeps its own; one with a change
     * gets the rule on every piece between its kinks and its changes */
    nw.k = K;
    memcpy(nw.s, nd->s, K * sizeof *nd->s);
    memcpy(nw.c, nd->c, K * sizeof *nd->c);
    nw.pieces = nd->pieces;
    if (!s && !grow((void **)&nw.u, &nw.cap_u, n, sizeof *nw.u)) s = PK_ERR_NOMEM;
    for (size_t i = 0, b = 0; !s && i < n; i++) {
        size_t nc = 0, b0 = b;
        b += first[i + 1] - first[i] + 1;
        for (size_t p = first[i]; !s && p < first[i + 1]; p++) {
            size_t k0 = ru[b0 + p - first[i]], k1 = ru[b0 + p - first[i] + 1];
            if (k0 == k1) continue;
            /* where it changes in the piece, by bisection on its identity */
            struct { double l, r; size_t kl, kr; } stack[64], br;
            size_t top = 0;
            stack[top].l = pa[p]; stack[top].r = pb[p]; stack[top].kl = k0; stack[top++].kr = k1;
            while (!s && top) {
                br = stack[--top];
                if (br.kl == br.kr) continue;
                double mid = 0.5 * (br.l + br.r);
                if (br.r - br.l <= RUNNER_TOL || top + 2 > 64) {
                    if (!grow((void **)&cut, &ncap, nc + 1, sizeof *cut)) { s = PK_ERR_NOMEM; break; }
                    cut[nc++] = mid;
                    continue;
                }
                uint32_t e1 = (uint32_t)i;
                size_t km;
                if ((s = runner_ups(m, t, w, D, X, y, ty, &e1, &mid, 1, Xg, &km))) break;
                stack[top].l = mid; stack[top].r = br.r; stack[top].kl = km; stack[top++].kr = br.kr;
                stack[top].l = br.l; stack[top].r = mid; stack[top].kl = br.kl; stack[top++].kr = km;
            }
        }
        if (s) break;
        /* the rows of a query without a change, as they were */
        if (!nc && !own[i]) { nw.u[nw.nu++] = (uint32_t)i; continue; }
        if (nc) qsort(cut, nc, sizeof *cut, pk_cmp_double);
        nw.pieces += nc;
        size_t need = nw.R + (first[i + 1] - first[i] + nc) * K;
        if (!grow((void **)&nw.re, &nw.cap_r, need, sizeof *nw.re) ||
            !grow((void **)&nw.rs, &nw.cap_rs, need, sizeof *nw.rs) ||
            !grow((void **)&nw.rc, &nw.cap_rc, need, sizeof *nw.rc) ||
            !grow((void **)&nw.ra, &nw.cap_ra, need, sizeof *nw.ra) ||
            !grow((void **)&nw.rb, &nw.cap_rb, need, sizeof *nw.rb)) { s = PK_ERR_NOMEM; break; }
        /* the pieces between the kinks, each split at the changes inside it (cuts ascending) */
        size_t c = 0;
        for (size_t p = first[i]; p < first[i + 1]; p++) {
            double a = pa[p];
            for (;; c++) {
                double b1 = c < nc && cut[c] < pb[p] ? cut[c] : pb[p], h = b1 - a;
                for (size_t j = 0; h > 0 && j < K; j++, nw.R++) {
                    nw.re[nw.R] = (uint32_t)i;
                    nw.rs[nw.R] = a + h * nd->s[j];
                    nw.rc[nw.R] = h * nd->c[j];
                    nw.ra[nw.R] = a;
                    nw.rb[nw.R] = b1;
                }
                a = b1;
                if (b1 == pb[p]) break;
            }
        }
    }
    free(first); free(own); free(pa); free(pb); free(pe); free(ps); free(ru); free(Xg); free(cut);
    if (s) { pk_nodes_free(&nw); return s; }
    /* the scratch stays with nd */
    nw.wz = nd->wz;
    nw.Dz = nd->Dz;
    nd->wz = nd->Dz = NULL;
    pk_nodes_free(nd);
    *nd = nw;
    return PK_OK;
}
