/* sweep.c -- the exact rule for a multilayer perceptron, one piece after
 * another (MATH.md section 12, "A multilayer perceptron: one piece after
 * another"). Along a step w(s) = w + s D a query's neighbouring pieces
 * differ in the slope of a unit or a few, so instead of evaluating each
 * piece afresh, the polynomials of the first piece are formed for a block of
 * queries by products, and each query then walks its pieces in order,
 * changing what a flip changes: a column of the next layer's pre-activations,
 * a row of the backward product, a column of the per-example inner
 * products. The first and the last layer's shares need no per-example work
 * along the walk: their other factor is constant in s, so the walk only
 * integrates the query's delta_0 and a_{L-1}, and the products with the
 * batch follow once per step. Serves the contributions of targets linear in
 * the outputs (every output, one output, the label's) under gd and sgd. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

/* Breakpoints closer than this are one, as in kinks.c. */
#define CUT_TOL 1e-14
/* No next kink. */
#define NO_ROOT 2.0

/* Block arrays are coefficient-major: slab j (the coefficient of s^j) holds
 * every query of the block, so that a product runs on one slab at a time
 * and the coefficients a polynomial does not have cost nothing. */
struct pk_sweep {
    size_t L, Ce, cap, nb, nb_cap;        /* weight layers, target columns, queries, batch (its most)        */
    size_t n[PK_MAX_MODEL_LAYERS + 1];    /* n[0] inputs, n[l + 1] outputs of weight layer l                 */
    double slope;                         /* an inactive unit's slope (0 for relu)                            */
    int kinks;                            /* relu or leaky_relu (identity makes none)                         */
    double *z[PK_MAX_MODEL_LAYERS];       /* (L, cap, n[l + 1]) pre-activations of weight layer l < L - 1    */
    double *a[PK_MAX_MODEL_LAYERS];       /* (L, cap, n[l]) inputs of the middle layers 1 <= l <= L - 2      */
    double *sig[PK_MAX_MODEL_LAYERS];     /* (cap, n[l + 1]) slopes of the units after layer l < L - 1       */
    double *g[PK_MAX_MODEL_LAYERS];       /* (L, cap, Ce, n[l + 1]) sw W_{l+1}(s)^T delta_{l+1}, l < L - 1    */
    double *P[PK_MAX_MODEL_LAYERS];       /* (L, cap, Ce, nb) delta_l . delta_l^i, middle layers             */
    double *Q[PK_MAX_MODEL_LAYERS];       /* (L, cap, nb) sw^2 a_l . a_l^i + sb^2, middle layers             */
    double *Q0;                           /* (cap, nb) the same for layer 0: constant                         */
    double *dbar;                         /* (cap, Ce, n[1]) integral of delta_0                              */
    double *abar;                         /* (cap, n[L - 1]) integral of a_{L-1}                              */
    int implicit;                         /* L = 3: g_0 never formed (MATH.md section 12)                     */
    double *R0, *R1;                      /* (cap, Ce, n[2]) implicit: integrals of delta_1, s delta_1        */
    double *W1T, *D1T;                    /* (n[1], n[2]) implicit: W_1, D_1 transposed                       */
    double *t1;                           /* (L, cap, Ce, max(width, nb)) product scratch                     */
    size_t *out;                          /* (cap, Ce) the output each target column seeds                    */
    double *nr[PK_MAX_MODEL_LAYERS];      /* (cap, n[l + 1]) the next kink of each unit, 1 <= l < L - 1       */
    double *r0;                           /* (cap, n[1]) layer 0's kinks, ascending                           */
    size_t *n0, *at0;                     /* (cap) how many, the next one                                     */
    double *b0;                           /* (cap) the end of the first piece                                 */
    double *aT[PK_MAX_MODEL_LAYERS];      /* (n[l], nb) the batch's inputs of the middle layers, transposed   */
    double *dT[PK_MAX_MODEL_LAYERS];      /* (n[l + 1], nb) its deltas of the middle layers, transposed       */
    /* the step: weight layer l's W and D (n[l + 1], n[l]), sw, sb; the batch */
    const double *W[PK_MAX_MODEL_LAYERS], *DW[PK_MAX_MODEL_LAYERS];
    double sw[PK_MAX_MODEL_LAYERS], sb[PK_MAX_MODEL_LAYERS];
    const pk_side *tr;
};

/* Is weight layer l a middle one (its share varies in s on both sides)? */
static int middle(const pk_sweep *sp, size_t l) { return l >= 1 && l + 2 <= sp->L; }

void pk_sweep_free(pk_sweep *sp)
{
    if (!sp) return;
    for (size_t l = 0; l < PK_MAX_MODEL_LAYERS; l++) {
        free(sp->z[l]); free(sp->a[l]); free(sp->sig[l]); free(sp->g[l]); free(sp->P[l]); free(sp->Q[l]);
        free(sp->nr[l]); free(sp->aT[l]); free(sp->dT[l]);
    }
    free(sp->R0); free(sp->R1); free(sp->W1T); free(sp->D1T);
    free(sp->Q0); free(sp->dbar); free(sp->abar); free(sp->t1); free(sp->out); free(sp->r0); free(sp->n0);
    free(sp->at0); free(sp->b0);
    free(sp);
}

int pk_sweep_serves(const pk_model *m, const pk_quad *q, const pk_target *g, int batch_kernel)
{
    int act = pk_model_mlp_act(m);
    return q->exact && !q->per_piece && !batch_kernel && m->n_weight >= 2 && m->n_weight <= PK_MAX_MODEL_LAYERS &&
           (act == PK_ACT_RELU || act == PK_ACT_LEAKY_RELU || act == PK_ACT_IDENTITY) &&
           (g->kind == PK_TARGET_OUTPUTS || g->kind == PK_TARGET_OUTPUT || g->kind == PK_TARGET_LABEL);
}

/* The doubles of each array (alloc: allocate them into sp; else count). */
static size_t arrays(pk_sweep *sp, int alloc)
{
    size_t L = sp->L, Ce = sp->Ce, cap = sp->cap, nb = sp->nb_cap, wmax = nb, total = 0;
    for (size_t l = 0; l <= L; l++) wmax = sp->n[l] > wmax ? sp->n[l] : wmax;
    int ok = 1;
#define ARR(p, count) do { size_t c_ = (count); total += c_; if (alloc) ok &= !!((p) = pk_alloc(c_ ? c_ : 1, sizeof *(p))); } while (0)
    for (size_t l = 0; l + 1 < L; l++) {
        size_t o = sp->n[l + 1];
        ARR(sp->z[l], L * cap * o);
        ARR(sp->sig[l], cap * o);
        if (!(sp->implicit && l == 0)) ARR(sp->g[l], L * cap * Ce * o);
        if (l) ARR(sp->nr[l], cap * o);
        if (middle(sp, l)) {
            ARR(sp->a[l], L * cap * sp->n[l]);
            ARR(sp->P[l], L * cap * Ce * nb);
            ARR(sp->Q[l], L * cap * nb);
            ARR(sp->aT[l], sp->n[l] * nb);
            ARR(sp->dT[l], o * nb);
        }
    }
    ARR(sp->Q0, cap * nb);
    ARR(sp->dbar, cap * Ce * sp->n[1]);
    if (sp->implicit) {
        ARR(sp->R0, cap * Ce * sp->n[2]);
        ARR(sp->R1, cap * Ce * sp->n[2]);
        ARR(sp->W1T, sp->n[1] * sp->n[2]);
        ARR(sp->D1T, sp->n[1] * sp->n[2]);
    }
    ARR(sp->abar, cap * sp->n[L - 1]);
    ARR(sp->t1, L * cap * Ce * wmax);
    ARR(sp->out, cap * Ce);
    ARR(sp->r0, cap * sp->n[1]);
    ARR(sp->n0, cap);
    ARR(sp->at0, cap);
    ARR(sp->b0, cap);
#undef ARR
    return ok ? total : 0;
}

static void shape(pk_sweep *sp, const pk_model *m, const pk_target *g, size_t cap, size_t nb)
{
    size_t L = m->n_weight;
    sp->L = L;
    sp->Ce = g->kind == PK_TARGET_OUTPUTS ? m->n_out : 1;
    sp->cap = cap ? cap : 1;
    sp->nb = sp->nb_cap = nb ? nb : 1;
    sp->kinks = m->act != PK_ACT_IDENTITY;
    sp->implicit = L == 3;
    sp->slope = m->act == PK_ACT_LEAKY_RELU ? m->act_slope : 0.0;
    for (size_t l = 0; l < L; l++) {
        sp->n[l] = pk_model_weight(m, l)->in;
        sp->n[l + 1] = pk_model_weight(m, l)->out;
    }
}

pk_sweep *pk_sweep_new(const pk_model *m, const pk_target *g, size_t cap, size_t nb)
{
    pk_sweep *sp = pk_calloc(1, sizeof *sp);
    if (!sp) return NULL;
    shape(sp, m, g, cap, nb);
    if (!arrays(sp, 1)) { pk_sweep_free(sp); return NULL; }
    return sp;
}

size_t pk_sweep_bytes(const pk_model *m, const pk_target *g, size_t cap, size_t nb)
{
    pk_sweep sp;
    memset(&sp, 0, sizeof sp);
    shape(&sp, m, g, cap, nb);
    return arrays(&sp, 0) * sizeof(double);
}

/* ------------------------------------------------------------- helpers */

/* sum_k x[k] y[k] in eight fixed lanes (the same bits on any thread). */
static double dot(const double *x, const double *y, size_t n)
{
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        a0 += x[k] * y[k]; a1 += x[k + 1] * y[k + 1]; a2 += x[k + 2] * y[k + 2]; a3 += x[k + 3] * y[k + 3];
        a4 += x[k + 4] * y[k + 4]; a5 += x[k + 5] * y[k + 5]; a6 += x[k + 6] * y[k + 6]; a7 += x[k + 7] * y[k + 7];
    }
    double s = ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7));
    for (; k < n; k++) s += x[k] * y[k];
    return s;
}

/* Value at s of the polynomial of degree d with coefficients c[j * st]. */
static double poly_at(const double *c, size_t d, size_t st, double s)
{
    double y = c[d * st];
    for (size_t j = d; j-- > 0;) y = y * s + c[j * st];
    return y;
}

/* The first kink in (s0, 1) of the polynomial of degree d with
 * coefficients c[j * st], NO_ROOT when none: a sign change from the
 * coefficients (pk_poly_sign_changes), never a sample. */
static double next_root(const double *c, size_t d, size_t st, double s0)
{
    double p[PK_MAX_MODEL_LAYERS + 1], r[PK_MAX_MODEL_LAYERS];
    for (size_t j = 0; j <= d; j++) p[j] = c[j * st];
    size_t k = pk_poly_sign_changes(p, d, s0, 1.0, r);
    for (size_t i = 0; i < k; i++)
        if (r[i] - s0 > CUT_TOL && 1.0 - r[i] > CUT_TOL) return r[i];
    return NO_ROOT;
}

/* C (M, N) = alpha A (M, K) op(B) + beta C over rows that are queries
 * (pk_gemm_rows: a query's bits never depend on the block). */
static void rows(int tb, size_t M, size_t N, size_t K, double alpha, const double *A, const double *B, double beta,
                 double *C)
{
    if (M) pk_gemm_rows(0, tb, M, N, K, alpha, A, K, B, tb ? K : N, beta, C, N);
}

/* ------------------------------------------------------- one query's walk */

/* The units of a layer whose slope changed at a breakpoint, and by how much. */
typedef struct flips {
    size_t n;
    size_t *u;     /* (width) */
    double *ds;    /* (width) */
} flips;

/* One thread's scratch. */
typedef struct walk {
    flips f[PK_MAX_MODEL_LAYERS];
    double *da;                        /* (L, width) a change of a middle layer's input */
    double *al, *be;                   /* (nb), (nb)                                    */
    double *tw;                        /* (width)                                       */
    double *M;                         /* (L, nb) the moments' products                 */
    double *off;                       /* (2, Ce, n[2]) implicit: the flips' offsets    */
    double *rv;                        /* (2, n[2]) implicit: R0, R1 of one column      */
    double ta, td;                     /* abar, dbar hold their integrals up to these   */
    double s0;                         /* the breakpoint being crossed                  */
} walk;

static void walk_free(walk *k)
{
    for (size_t l = 0; l < PK_MAX_MODEL_LAYERS; l++) { free(k->f[l].u); free(k->f[l].ds); }
    free(k->da); free(k->al); free(k->be); free(k->tw); free(k->M); free(k->off); free(k->rv);
}

static int walk_new(const pk_sweep *sp, walk *k)
{
    memset(k, 0, sizeof *k);
    size_t L = sp->L, wmax = 1, nb = sp->nb_cap;
    for (size_t l = 0; l <= L; l++) wmax = sp->n[l] > wmax ? sp->n[l] : wmax;
    int ok = 1;
    for (size_t l = 0; l + 1 < L; l++) {
        ok &= !!(k->f[l].u = pk_alloc(sp->n[l + 1], sizeof(size_t)));
        ok &= !!(k->f[l].ds = pk_alloc(sp->n[l + 1], sizeof(double)));
    }
    ok &= !!(k->da = pk_alloc(L, wmax * sizeof(double)));
    ok &= !!(k->al = pk_alloc(nb, sizeof(double)));
    ok &= !!(k->be = pk_alloc(nb, sizeof(double)));
    ok &= !!(k->tw = pk_alloc(wmax, sizeof(double)));
    ok &= !!(k->M = pk_alloc(L, nb * sizeof(double)));
    ok &= !!(k->off = pk_alloc(2 * sp->Ce, wmax * sizeof(double)));
    ok &= !!(k->rv = pk_alloc(2, wmax * sizeof(double)));
    if (!ok) walk_free(k);
    return ok;
}

/* The slope of a unit whose pre-activation is v on a piece (its midpoint). */
static double slope_of(const pk_sweep *sp, double v) { return v > 0 || !sp->kinks ? 1.0 : sp->slope; }

/* Layer 0's kinks, all of them (its polynomials never change in a step). */
static void layer0_roots(const pk_sweep *sp, size_t q)
{
    size_t n1 = sp->n[1], n = 0;
    const double *z = sp->z[0] + q * n1;
    double *r0 = sp->r0 + q * n1;
    sp->at0[q] = 0;
    if (sp->kinks)
        for (size_t u = 0; u < n1; u++) {
            double r = next_root(z + u, 1, sp->cap * n1, 0.0);
            if (r < NO_ROOT) r0[n++] = r;
        }
    qsort(r0, n, sizeof *r0, pk_cmp_double);
    sp->n0[q] = n;
}

/* Layer l's next breakpoint after s0, at most b (the layers below keep
 * their slopes until b); fresh: its polynomials changed at s0. */
static double layer_next(const pk_sweep *sp, size_t q, size_t l, double s0, double b, int fresh)
{
    if (!sp->kinks) return b;
    size_t nl = sp->n[l + 1];
    if (l == 0) {
        const double *r0 = sp->r0 + q * nl;
        size_t *at = sp->at0 + q;
        while (*at < sp->n0[q] && r0[*at] - s0 <= CUT_TOL) (*at)++;
        return *at < sp->n0[q] && r0[*at] < b ? r0[*at] : b;
    }
    const double *z = sp->z[l] + q * nl;
    double *nr = sp->nr[l] + q * nl, m = b;
    for (size_t u = 0; u < nl; u++) {
        if (fresh || nr[u] - s0 <= CUT_TOL) nr[u] = next_root(z + u, l + 1, sp->cap * nl, s0);
        if (nr[u] < m) m = nr[u];
    }
    return m;
}

/* Layer l's slopes on (s0, b), at the midpoint; the flips into f. */
static void layer_slopes(const pk_sweep *sp, flips *f, size_t q, size_t l, double s0, double b)
{
    size_t nl = sp->n[l + 1], st = sp->cap * nl;
    const double *z = sp->z[l] + q * nl;
    double *sg = sp->sig[l] + q * nl, mid = 0.5 * (s0 + b);
    f->n = 0;
    for (size_t u = 0; u < nl; u++) {
        double v = slope_of(sp, poly_at(z + u, l + 1, st, mid));
        if (v != sg[u]) { f->u[f->n] = u; f->ds[f->n++] = v - sg[u]; sg[u] = v; }
    }
}

/* mu[m] = integral over [a, b] of s^m, m < n (from sum_r a^r b^(m-r): no
 * cancellation). */
static void moments(double a, double b, size_t n, double *mu)
{
    for (size_t m = 0; m < n; m++) {
        double t = 0, pa = 1.0;
        for (size_t r = 0; r <= m; r++, pa *= a) {
            double pb = 1.0;
            for (size_t x = r; x < m; x++) pb *= b;
            t += pa * pb;
        }
        mu[m] = (b - a) * t / (double)(m + 1);
    }
}

/* The middle layers' share of the piece [s0, b]: sum_l integral P_l Q_l
 * into S (Ce, nb), with the moments mu, M_{l,j} = sum_x Q_{l,x} mu_{j+x}
 * and sum_j P_{l,j} M_{l,j}; exact for the piece's polynomials. */
static void integrate(const pk_sweep *sp, walk *k, size_t q, double s0, double b, double *S)
{
    size_t L = sp->L, nb = sp->nb, Ce = sp->Ce, cap = sp->cap;
    if (L < 3) return;
    double mu[PK_MAX_MODEL_LAYERS];
    moments(s0, b, L, mu);
    for (size_t l = 1; l + 2 <= L; l++) { /* P_l: degree L - 1 - l; Q_l: degree l */
        size_t dq = cap * nb, dp = cap * Ce * nb;
        const double *Ql = sp->Q[l] + q * nb;
        for (size_t j = 0; j + l < L; j++) {
            double *restrict M = k->M + j * nb;
            const double *restrict Q0 = Ql;
            for (size_t i = 0; i < nb; i++) M[i] = Q0[i] * mu[j];
            for (size_t x = 1; x <= l; x++) {
                double v = mu[j + x];
                const double *restrict Qx = Ql + x * dq;
                for (size_t i = 0; i < nb; i++) M[i] += Qx[i] * v;
            }
        }
        for (size_t c = 0; c < Ce; c++) {
            double *restrict Sc = S + c * nb;
            const double *Pc = sp->P[l] + (q * Ce + c) * nb;
            for (size_t j = 0; j + l < L; j++) {
                const double *restrict Pj = Pc + j * dp, *restrict M = k->M + j * nb;
                for (size_t i = 0; i < nb; i++) Sc[i] += Pj[i] * M[i];
            }
        }
    }
}

/* The integrals of a_{L-1} = sig_{L-2} o z_{L-2} (abar) and delta_0 =
 * sig_0 o g_0 (dbar) are kept lazily: each holds the integral up to its
 * time t (k->ta, k->td) but for the current polynomials' share, so a flip
 * costs one unit (flip_share) and only a change of z_{L-2} or g_0 brings
 * every unit up to date (flush). n values of slope sg of polynomials c
 * (degree L - 1, slab stride st) into acc, from t0 to t1. */
static void flush_into(const pk_sweep *sp, walk *k, const double *c, size_t st, const double *sg, size_t n,
                       double *acc, double t0, double t1)
{
    size_t L = sp->L;
    double mu[PK_MAX_MODEL_LAYERS], *restrict t = k->tw;
    moments(t0, t1, L, mu);
    for (size_t u = 0; u < n; u++) t[u] = mu[0] * c[u];
    for (size_t j = 1; j < L; j++) {
        const double *restrict cj = c + j * st;
        for (size_t u = 0; u < n; u++) t[u] += mu[j] * cj[u];
    }
    for (size_t u = 0; u < n; u++) acc[u] += sg[u] * t[u];
}

static void flush_abar(const pk_sweep *sp, walk *k, size_t q, double t1)
{
    size_t L = sp->L, nl = sp->n[L - 1];
    if (t1 > k->ta)
        flush_into(sp, k, sp->z[L - 2] + q * nl, sp->cap * nl, sp->sig[L - 2] + q * nl, nl, sp->abar + q * nl,
                   k->ta, t1);
    k->ta = t1;
}

static void flush_dbar(const pk_sweep *sp, walk *k, size_t q, double t1)
{
    size_t nl = sp->n[1], Ce = sp->Ce;
    if (t1 > k->td)
        for (size_t c = 0; c < Ce; c++)
            flush_into(sp, k, sp->g[0] + (q * Ce + c) * nl, sp->cap * Ce * nl, sp->sig[0] + q * nl, nl,
                       sp->dbar + (q * Ce + c) * nl, k->td, t1);
    k->td = t1;
}

/* A unit's slope changed by ds at t1: its accumulator takes the old
 * slope's share since t0 (c: its polynomial, degree L - 1, stride st). */
static void flip_share(const pk_sweep *sp, const double *c, size_t st, double ds, double *acc, double t0, double t1)
{
    if (!(t1 > t0)) return;
    double mu[PK_MAX_MODEL_LAYERS], v = 0;
    moments(t0, t1, sp->L, mu);
    for (size_t j = 0; j < sp->L; j++) v += mu[j] * c[j * st];
    *acc -= ds * v;
}

/* The implicit first layer (L = 3, MATH.md section 12): delta_1 = sig_1 o
 * g_1 with g_1 = sw_2 (W_2 + s D_2)^T e_o fixed in the step, so R_k(t) =
 * integral_0^t s^k delta_1 = sig_1(t) Phi_k(t) - off_k, Phi_k(t) = sw_2
 * (W_2[o] t^(k+1) / (k+1) + D_2[o] t^(k+2) / (k+2)), off_k taking each flip
 * of layer 1 (ds Phi_k at its time). Into rv (2, n[2]) for column c at t. */
static void implicit_R(const pk_sweep *sp, walk *k, size_t q, size_t c, double t)
{
    size_t n2 = sp->n[2], o = sp->out[q * sp->Ce + c];
    const double *restrict W = sp->W[2] + o * n2, *restrict Dw = sp->DW[2] + o * n2, *restrict sg = sp->sig[1] + q * n2;
    const double *restrict f0 = k->off + c * n2, *restrict f1 = k->off + (sp->Ce + c) * n2;
    double *restrict r0 = k->rv, *restrict r1 = k->rv + n2, sw = sp->sw[2];
    double a0 = sw * t, b0 = sw * t * t / 2, a1 = sw * t * t / 2, b1 = sw * t * t * t / 3;
    for (size_t u = 0; u < n2; u++) {
        r0[u] = sg[u] * (a0 * W[u] + b0 * Dw[u]) - f0[u];
        r1[u] = sg[u] * (a1 * W[u] + b1 * Dw[u]) - f1[u];
    }
}

/* A flip of layer-1 unit u by ds at t: off_k += ds Phi_k(t). */
static void implicit_flip1(const pk_sweep *sp, walk *k, size_t q, size_t u, double ds, double t)
{
    size_t n2 = sp->n[2], Ce = sp->Ce;
    double sw = sp->sw[2];
    for (size_t c = 0; c < Ce; c++) {
        size_t o = sp->out[q * Ce + c];
        double w = sp->W[2][o * n2 + u], d = sp->DW[2][o * n2 + u];
        k->off[c * n2 + u] += ds * sw * (w * t + d * t * t / 2);
        k->off[(Ce + c) * n2 + u] += ds * sw * (w * t * t / 2 + d * t * t * t / 3);
    }
}

/* A flip of layer-0 unit u by ds at t: dbar_u takes -ds integral_0^t
 * g_{0,u}, g_0 = sw_1 (W_1 + s D_1)^T delta_1: -ds sw_1 (W_1[:, u] . R_0(t)
 * + D_1[:, u] . R_1(t)). */
static void implicit_flip0(const pk_sweep *sp, walk *k, size_t q, size_t u, double ds, double t)
{
    size_t n1 = sp->n[1], n2 = sp->n[2], Ce = sp->Ce;
    for (size_t c = 0; c < Ce; c++) {
        implicit_R(sp, k, q, c, t);
        double v = dot(sp->W1T + u * n2, k->rv, n2) + dot(sp->D1T + u * n2, k->rv + n2, n2);
        sp->dbar[(q * Ce + c) * n1 + u] -= ds * sp->sw[1] * v;
    }
}

/* The forward changes at a breakpoint s0 > 0: through the layers, each
 * layer's next breakpoint, its slopes at the new piece's midpoint, and, for
 * a middle layer's input a_{l+1}, what its change does to Q_{l+1} and
 * z_{l+1} (a column of the next layer per flip; the whole product when z_l
 * itself changed). Returns the piece's end. */
static double forward_at(const pk_sweep *sp, walk *k, size_t q, double s0)
{
    size_t L = sp->L, nb = sp->nb, cap = sp->cap;
    double b = 1.0;
    int fresh = 0; /* z_l changed at s0, every unit of it */
    for (size_t l = 0; l + 1 < L; l++) {
        size_t nl = sp->n[l + 1], dg = l + 1; /* z_l and a_{l+1}: degree l + 1 */
        b = layer_next(sp, q, l, s0, b, fresh);
        layer_slopes(sp, &k->f[l], q, l, s0, b);
        const flips *f = &k->f[l];
        if (l == 0 && sp->implicit)
            for (size_t x = 0; x < f->n; x++) implicit_flip0(sp, k, q, f->u[x], f->ds[x], s0);
        if (l == 1 && sp->implicit)
            for (size_t x = 0; x < f->n; x++) implicit_flip1(sp, k, q, f->u[x], f->ds[x], s0);
        if (l == 0 && !sp->implicit) /* delta_0 = sig_0 o g_0: the flipped units' old share */
            for (size_t x = 0; x < f->n; x++)
                for (size_t c = 0; c < sp->Ce; c++)
                    flip_share(sp, sp->g[0] + (q * sp->Ce + c) * nl + f->u[x], cap * sp->Ce * nl, f->ds[x],
                               sp->dbar + (q * sp->Ce + c) * nl + f->u[x], k->td, s0);
        if (l + 2 == L) /* a_{L-1} = sig_{L-2} o z_{L-2} */
            for (size_t x = 0; x < f->n; x++)
                flip_share(sp, sp->z[l] + q * nl + f->u[x], cap * nl, f->ds[x], sp->abar + q * nl + f->u[x], k->ta,
                           s0);
        if ((!fresh && !f->n) || !middle(sp, l + 1)) continue;
        if (l + 3 == L) flush_abar(sp, k, q, s0); /* z_{L-2} is about to change */
        size_t st = cap * nl, no = sp->n[l + 2], sto = cap * no, sq = cap * nb;
        const double *z = sp->z[l] + q * nl, *sg = sp->sig[l] + q * nl;
        double *a = sp->a[l + 1] + q * nl, *da = k->da, *Ql = sp->Q[l + 1] + q * nb;
        double *zn = sp->z[l + 1] + q * no, s2 = sp->sw[l + 1] * sp->sw[l + 1], swn = sp->sw[l + 1];
        const double *W = sp->W[l + 1], *DW = sp->DW[l + 1], *ai = sp->tr->a[l + 1]; /* (nb, nl) */
        if (fresh) { /* da = sig z - a, every unit */
            for (size_t j = 0; j <= dg; j++)
                for (size_t u = 0; u < nl; u++) {
                    double v = sg[u] * z[j * st + u];
                    da[j * nl + u] = v - a[j * st + u];
                    a[j * st + u] = v;
                }
            for (size_t j = 0; j <= dg; j++)
                for (size_t i = 0; i < nb; i++) Ql[j * sq + i] += s2 * dot(da + j * nl, ai + i * nl, nl);
            for (size_t o = 0; o < no; o++)
                for (size_t j = 0; j <= dg; j++) {
                    zn[j * sto + o] += swn * dot(W + o * nl, da + j * nl, nl);
                    zn[(j + 1) * sto + o] += swn * dot(DW + o * nl, da + j * nl, nl);
                }
        } else { /* the flipped units only: da_u = ds z_u */
            for (size_t x = 0; x < f->n; x++) {
                size_t u = f->u[x];
                double dz[PK_MAX_MODEL_LAYERS + 1];
                for (size_t j = 0; j <= dg; j++) {
                    dz[j] = f->ds[x] * z[j * st + u];
                    a[j * st + u] += dz[j];
                }
                const double *restrict au = sp->aT[l + 1] + u * nb;
                for (size_t j = 0; j <= dg; j++) {
                    double v = s2 * dz[j], *restrict Qj = Ql + j * sq;
                    for (size_t i = 0; i < nb; i++) Qj[i] += v * au[i];
                }
                for (size_t j = 0; j <= dg; j++) {
                    double v = swn * dz[j], *z0 = zn + j * sto, *z1 = zn + (j + 1) * sto;
                    for (size_t o = 0; o < no; o++) {
                        z0[o] += v * W[o * nl + u];
                        z1[o] += v * DW[o * nl + u];
                    }
                }
            }
        }
        fresh = 1;
    }
    return b;
}

/* P_l (a middle layer) = (sig_l o g_l) . delta_l^i afresh. */
static void p_afresh(const pk_sweep *sp, walk *k, size_t q, size_t l)
{
    size_t nl = sp->n[l + 1], nb = sp->nb, Ce = sp->Ce, dg = sp->L - 1 - l, cap = sp->cap;
    const double *sg = sp->sig[l] + q * nl, *di = sp->tr->delta[l];
    for (size_t c = 0; c < Ce; c++)
        for (size_t j = 0; j <= dg; j++) {
            const double *G = sp->g[l] + ((j * cap + q) * Ce + c) * nl;
            double *P = sp->P[l] + ((j * cap + q) * Ce + c) * nb;
            for (size_t v = 0; v < nl; v++) k->tw[v] = sg[v] * G[v];
            for (size_t i = 0; i < nb; i++) P[i] = dot(k->tw, di + i * nl, nl);
        }
}

/* The backward changes at a breakpoint, from the output down: delta_l =
 * sig_l o g_l, g_l = sw W_{l+1}(s)^T delta_{l+1}. A flip of layer l
 * changes delta_l at its unit (a middle P_l by a column of the batch's
 * deltas); a flip of layer l + 1 changes g_l by a row of W_{l+1}(s) (and a
 * middle P_l by that row's products with the batch's deltas, alpha + s
 * beta); below that, delta changed everywhere and g, P are formed afresh
 * (networks of four layers and more). */
static void backward_at(const pk_sweep *sp, walk *k, size_t q)
{
    size_t L = sp->L, nb = sp->nb, Ce = sp->Ce, cap = sp->cap;
    int kind = 0; /* delta_{l+1} changed: 0 not, 1 at layer l + 1's flips only, 2 everywhere */
    for (size_t l = L - 1; l-- > 0;) {
        size_t nl = sp->n[l + 1], dg = L - 1 - l, stg = cap * Ce * nl, stp = cap * Ce * nb; /* degree of g_l */
        double *G = sp->g[l] + q * Ce * nl, *sg = sp->sig[l] + q * nl;
        double *P = middle(sp, l) ? sp->P[l] + q * Ce * nb : NULL;
        const flips *f = &k->f[l];
        if (l == 0 && sp->implicit) break; /* g_0 is never formed */
        int gch = 0;
        if (kind && l == 0) flush_dbar(sp, k, q, k->s0); /* g_0 is about to change */
        if (kind) {
            size_t nu = sp->n[l + 2], stu = cap * Ce * nu;
            const double *Gu = sp->g[l + 1] + q * Ce * nu, *sgu = sp->sig[l + 1] + q * nu;
            const double *W = sp->W[l + 1], *DW = sp->DW[l + 1], *di = sp->tr->delta[l];
            double swn = sp->sw[l + 1];
            const flips *fu = &k->f[l + 1];
            if (kind == 1) {
                if (P) /* alpha, beta with layer l's slopes before this breakpoint */
                    for (size_t x = 0; x < f->n; x++) sg[f->u[x]] -= f->ds[x];
                for (size_t y = 0; y < fu->n; y++) {
                    size_t u = fu->u[y];
                    const double *restrict Wu = W + u * nl, *restrict Du = DW + u * nl;
                    if (P) {
                        for (size_t v = 0; v < nl; v++) k->tw[v] = sg[v] * Wu[v];
                        for (size_t i = 0; i < nb; i++) k->al[i] = swn * dot(k->tw, di + i * nl, nl);
                        for (size_t v = 0; v < nl; v++) k->tw[v] = sg[v] * Du[v];
                        for (size_t i = 0; i < nb; i++) k->be[i] = swn * dot(k->tw, di + i * nl, nl);
                    }
                    const double *restrict al = k->al, *restrict be = k->be;
                    for (size_t c = 0; c < Ce; c++)
                        for (size_t j = 0; j < dg; j++) { /* d delta_{l+1,u}: degree dg - 1 */
                            double dd = fu->ds[y] * Gu[j * stu + c * nu + u], v = swn * dd;
                            double *restrict G0 = G + j * stg + c * nl, *restrict G1 = G0 + stg;
                            for (size_t x = 0; x < nl; x++) G0[x] += v * Wu[x];
                            for (size_t x = 0; x < nl; x++) G1[x] += v * Du[x];
                            if (!P) continue;
                            double *restrict P0 = P + j * stp + c * nb, *restrict P1 = P0 + stp;
                            for (size_t i = 0; i < nb; i++) P0[i] += dd * al[i];
                            for (size_t i = 0; i < nb; i++) P1[i] += dd * be[i];
                        }
                }
                if (P)
                    for (size_t x = 0; x < f->n; x++) sg[f->u[x]] += f->ds[x];
                gch = 1;
            } else {
                for (size_t c = 0; c < Ce; c++) {
                    for (size_t j = 0; j <= dg; j++) memset(G + j * stg + c * nl, 0, nl * sizeof *G);
                    for (size_t o = 0; o < nu; o++)
                        for (size_t j = 0; j < dg; j++) {
                            double v = swn * sgu[o] * Gu[j * stu + c * nu + o];
                            if (v == 0.0) continue;
                            double *restrict G0 = G + j * stg + c * nl, *restrict G1 = G0 + stg;
                            const double *restrict Wo = W + o * nl, *restrict Do = DW + o * nl;
                            for (size_t x = 0; x < nl; x++) G0[x] += v * Wo[x];
                            for (size_t x = 0; x < nl; x++) G1[x] += v * Do[x];
                        }
                }
                if (P) p_afresh(sp, k, q, l);
                gch = 2;
            }
        }
        if (P && gch != 2) /* layer l's flips: delta_l changes at their units by ds g_l */
            for (size_t x = 0; x < f->n; x++) {
                size_t u = f->u[x];
                const double *restrict du = sp->dT[l] + u * nb;
                for (size_t c = 0; c < Ce; c++)
                    for (size_t j = 0; j <= dg; j++) {
                        double v = f->ds[x] * G[j * stg + c * nl + u];
                        double *restrict Pj = P + j * stp + c * nb;
                        for (size_t i = 0; i < nb; i++) Pj[i] += v * du[i];
                    }
            }
        kind = gch ? 2 : f->n ? 1 : 0;
    }
}

/* ---------------------------------------------------------------- a step */

pk_status pk_sweep_step(pk_sweep *sp, const pk_model *m, const double *w, const double *D, const double *X,
                        size_t n, const double *y, size_t ty, const pk_target *g, const size_t *cls,
                        const pk_side *tr, size_t nb, double *S, double *pieces)
{
    size_t L = sp->L, Ce = sp->Ce, C = m->n_out, cap = sp->cap;
    if (n > cap || nb > sp->nb_cap) return pk_fail(PK_ERR_INTERNAL, "sweep: %zu queries, %zu examples", n, nb);
    sp->nb = nb;
    sp->tr = tr;
    const double *bias[PK_MAX_MODEL_LAYERS], *dbias[PK_MAX_MODEL_LAYERS];
    for (size_t l = 0; l < L; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        sp->W[l] = w + lw->w_off;
        sp->DW[l] = D + lw->w_off;
        bias[l] = w + lw->b_off;
        dbias[l] = D + lw->b_off;
        sp->sw[l] = lw->sw;
        sp->sb[l] = lw->sb;
    }
    for (size_t l = 1; l + 2 <= L; l++) /* the batch's side, transposed for the walks' columns */
        for (size_t i = 0; i < nb; i++) {
            for (size_t u = 0; u < sp->n[l]; u++) sp->aT[l][u * nb + i] = tr->a[l][i * sp->n[l] + u];
            for (size_t u = 0; u < sp->n[l + 1]; u++) sp->dT[l][u * nb + i] = tr->delta[l][i * sp->n[l + 1] + u];
        }
    if (sp->implicit)
        for (size_t o = 0; o < sp->n[2]; o++)
            for (size_t u = 0; u < sp->n[1]; u++) {
                sp->W1T[u * sp->n[2] + o] = sp->W[1][o * sp->n[1] + u];
                sp->D1T[u * sp->n[2] + o] = sp->DW[1][o * sp->n[1] + u];
            }
    for (size_t q = 0; q < n; q++)
        for (size_t c = 0; c < Ce; c++)
            sp->out[q * Ce + c] = cls ? cls[q] : g->kind == PK_TARGET_OUTPUTS ? c
                                  : g->kind == PK_TARGET_OUTPUT ? g->output : (size_t)y[q * ty];
    /* the first piece, every query at once: z_0 (degree 1), Q_0 (constant) */
    size_t n0 = sp->n[0], n1 = sp->n[1];
    double *z0 = sp->z[0];
    rows(1, n, n1, n0, sp->sw[0], X, sp->W[0], 0.0, z0);
    rows(1, n, n1, n0, sp->sw[0], X, sp->DW[0], 0.0, z0 + cap * n1);
    rows(1, n, nb, n0, sp->sw[0] * sp->sw[0], X, tr->a[0], 0.0, sp->Q0);
    for (size_t q = 0; q < n; q++) {
        for (size_t u = 0; u < n1; u++) {
            z0[q * n1 + u] += sp->sb[0] * bias[0][u];
            z0[(cap + q) * n1 + u] += sp->sb[0] * dbias[0][u];
        }
        for (size_t i = 0; i < nb; i++) sp->Q0[q * nb + i] += sp->sb[0] * sp->sb[0];
        sp->b0[q] = 1.0;
    }
    int fail = 0;
    for (size_t l = 0; l + 1 < L; l++) {
        size_t nl = sp->n[l + 1], st = cap * nl, dg = l + 1;
        /* each query's slopes of layer l on its first piece; a middle a_{l+1} = sig z_l */
        #pragma omp parallel for schedule(static) if (n * nl * (l + 2) >= PK_PAR_MIN / 16)
        for (size_t q = 0; q < n; q++) {
            if (l == 0) layer0_roots(sp, q);
            double b = layer_next(sp, q, l, 0.0, sp->b0[q], 1), mid = 0.5 * b;
            const double *z = sp->z[l] + q * nl;
            double *sg = sp->sig[l] + q * nl;
            sp->b0[q] = b;
            for (size_t u = 0; u < nl; u++) sg[u] = slope_of(sp, poly_at(z + u, dg, st, mid));
            if (!middle(sp, l + 1)) continue;
            double *a = sp->a[l + 1] + q * nl;
            for (size_t j = 0; j <= dg; j++)
                for (size_t u = 0; u < nl; u++) a[j * st + u] = sg[u] * z[j * st + u];
        }
        if (!middle(sp, l + 1)) continue;
        /* Q_{l+1} and z_{l+1} = sw (W a_j + D a_{j-1}) + sb (c, dc) */
        size_t no = sp->n[l + 2], sto = cap * no, sq = cap * nb;
        double s2 = sp->sw[l + 1] * sp->sw[l + 1], sb2 = sp->sb[l + 1] * sp->sb[l + 1];
        const double *a = sp->a[l + 1];
        double *Q = sp->Q[l + 1], *z = sp->z[l + 1];
        for (size_t j = 0; j <= dg; j++) {
            rows(1, n, nb, nl, s2, a + j * st, tr->a[l + 1], 0.0, Q + j * sq);
            rows(1, n, no, nl, sp->sw[l + 1], a + j * st, sp->W[l + 1], j ? 1.0 : 0.0, z + j * sto);
            if (j == 0) memset(z + (dg + 1) * sto, 0, n * no * sizeof *z);
            rows(1, n, no, nl, sp->sw[l + 1], a + j * st, sp->DW[l + 1], j < dg ? 0.0 : 1.0, z + (j + 1) * sto);
        }
        /* (the W product of slab j lands on the D product of slab j - 1: added, not overwritten) */
        for (size_t q = 0; q < n; q++) {
            for (size_t i = 0; i < nb; i++) Q[q * nb + i] += sb2;
            for (size_t o = 0; o < no; o++) {
                z[q * no + o] += sp->sb[l + 1] * bias[l + 1][o];
                z[sto + q * no + o] += sp->sb[l + 1] * dbias[l + 1][o];
            }
        }
    }
    /* the backward: g_{L-2} = sw (W + s D)^T e_o, then by products; middle P_l */
    for (size_t l = L - 1; l-- > 0;) {
        size_t nl = sp->n[l + 1], dg = L - 1 - l, stg = cap * Ce * nl, rws = n * Ce;
        double *G = sp->g[l];
        if (l == 0 && sp->implicit) break;
        if (l + 2 == L) {
            for (size_t q = 0; q < n; q++)
                for (size_t c = 0; c < Ce; c++) {
                    size_t o = sp->out[q * Ce + c];
                    for (size_t v = 0; v < nl; v++) {
                        G[(q * Ce + c) * nl + v] = sp->sw[l + 1] * sp->W[l + 1][o * nl + v];
                        G[stg + (q * Ce + c) * nl + v] = sp->sw[l + 1] * sp->DW[l + 1][o * nl + v];
                    }
                }
        } else {
            size_t nu = sp->n[l + 2], stu = cap * Ce * nu;
            for (size_t j = 0; j < dg; j++) /* delta_{l+1} = sig_{l+1} o g_{l+1}, degree dg - 1 */
                for (size_t r = 0; r < rws; r++) {
                    const double *sg = sp->sig[l + 1] + r / Ce * nu, *Gu = sp->g[l + 1] + j * stu + r * nu;
                    for (size_t u = 0; u < nu; u++) sp->t1[j * stu + r * nu + u] = sg[u] * Gu[u];
                }
            memset(G + (dg)*stg, 0, rws * nl * sizeof *G);
            for (size_t j = 0; j < dg; j++) {
                rows(0, rws, nl, nu, sp->sw[l + 1], sp->t1 + j * stu, sp->W[l + 1], j ? 1.0 : 0.0, G + j * stg);
                rows(0, rws, nl, nu, sp->sw[l + 1], sp->t1 + j * stu, sp->DW[l + 1], j + 1 < dg ? 0.0 : 1.0,
                     G + (j + 1) * stg);
            }
        }
        if (!middle(sp, l)) continue;
        for (size_t j = 0; j <= dg; j++) { /* P_l = delta_l . delta_l^i */
            for (size_t r = 0; r < rws; r++) {
                const double *sg = sp->sig[l] + r / Ce * nl, *Gl = G + j * stg + r * nl;
                for (size_t u = 0; u < nl; u++) sp->t1[r * nl + u] = sg[u] * Gl[u];
            }
            rows(1, rws, nb, nl, 1.0, sp->t1, tr->delta[l], 0.0, sp->P[l] + j * cap * Ce * nb);
        }
    }
    memset(sp->dbar, 0, n * Ce * n1 * sizeof *sp->dbar);
    memset(sp->abar, 0, n * sp->n[L - 1] * sizeof *sp->abar);
    /* each query's walk along its pieces */
    double total = 0;
    #pragma omp parallel reduction(+ : total)
    {
        walk k;
        int ok = walk_new(sp, &k);
        if (!ok) {
            #pragma omp atomic write
            fail = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (size_t q = 0; q < n; q++) {
            if (!ok) continue;
            double *Sq = S + q * Ce * nb, s0 = 0.0, b = sp->b0[q];
            if (sp->implicit) memset(k.off, 0, 2 * Ce * sp->n[2] * sizeof *k.off);
            memset(Sq, 0, Ce * nb * sizeof *Sq);
            k.ta = k.td = 0.0;
            for (;;) {
                integrate(sp, &k, q, s0, b, Sq);
                total += 1.0;
                if (b >= 1.0) break;
                k.s0 = s0 = b;
                b = forward_at(sp, &k, q, s0);
                backward_at(sp, &k, q);
            }
            flush_abar(sp, &k, q, 1.0);
            if (!sp->implicit) flush_dbar(sp, &k, q, 1.0);
            else
                for (size_t c = 0; c < Ce; c++) {
                    implicit_R(sp, &k, q, c, 1.0);
                    memcpy(sp->R0 + (q * Ce + c) * sp->n[2], k.rv, sp->n[2] * sizeof *k.rv);
                    memcpy(sp->R1 + (q * Ce + c) * sp->n[2], k.rv + sp->n[2], sp->n[2] * sizeof *k.rv);
                }
        }
        if (ok) walk_free(&k);
    }
    if (fail) return PK_ERR_NOMEM;
    if (sp->implicit) { /* dbar += sig_0(1) o sw_1 (W_1^T R_0(1) + D_1^T R_1(1)) */
        size_t n2 = sp->n[2];
        double *I = sp->t1;
        rows(0, n * Ce, n1, n2, sp->sw[1], sp->R0, sp->W[1], 0.0, I);
        rows(0, n * Ce, n1, n2, sp->sw[1], sp->R1, sp->DW[1], 1.0, I);
        for (size_t q = 0; q < n; q++)
            for (size_t c = 0; c < Ce; c++) {
                const double *sg = sp->sig[0] + q * n1, *Ic = I + (q * Ce + c) * n1;
                double *db = sp->dbar + (q * Ce + c) * n1;
                for (size_t u = 0; u < n1; u++) db[u] += sg[u] * Ic[u];
            }
    }
    /* the first layer's share Q_0 (dbar . delta_0^i), the last's
     * delta_{L-1,o}^i (sw^2 abar . a_{L-1}^i + sb^2) */
    size_t nL = sp->n[L - 1];
    double *T = sp->t1, *T2 = sp->t1 + n * Ce * nb, s2 = sp->sw[L - 1] * sp->sw[L - 1];
    double sb2 = sp->sb[L - 1] * sp->sb[L - 1];
    rows(1, n * Ce, nb, n1, 1.0, sp->dbar, tr->delta[0], 0.0, T);
    rows(1, n, nb, nL, s2, sp->abar, tr->a[L - 1], 0.0, T2);
    const double *dL = tr->delta[L - 1]; /* (nb, C) */
    for (size_t q = 0; q < n; q++)
        for (size_t c = 0; c < Ce; c++) {
            size_t o = sp->out[q * Ce + c];
            double *Sc = S + (q * Ce + c) * nb;
            const double *Tc = T + (q * Ce + c) * nb, *T2q = T2 + q * nb, *Q0 = sp->Q0 + q * nb;
            for (size_t i = 0; i < nb; i++) Sc[i] += Q0[i] * Tc[i] + dL[i * C + o] * (T2q[i] + sb2);
        }
    *pieces = total;
    return PK_OK;
}
