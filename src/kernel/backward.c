/* backward.c -- the exact representation for optimisers with memory and for
 * weight decay (MATH.md section 5): heavy-ball momentum, Adam, AdamW, and L2
 * decay for any of them, gd and sgd included.
 *
 * The sum over steps of Jbar_x(t) D_t is regrouped by the batch gradient G_s
 * that each update carries, backwards in time:
 *
 *   momentum: H_x(s) = eta_s Jbar_x(s) + mu H_x(s+1)
 *   adam(w):  H_x(s) = c_s Jbar_x(s) P_s + beta1 H_x(s+1),
 *             c_s = eta_s (1-beta1) / (1-beta1^(s+1)),
 *             P_s = diag(1 / (sqrt(v_{s+1}) / sqrt(1-beta2^(s+1)) + eps))
 *             (the same expression as optim.c's step)
 *   gd/sgd:   H_x(s) = eta_s Jbar_x(s)                   (with L2 decay)
 *
 * and phi_i(x) = -sum_s (1/|B_s|) 1[i in B_s] H_x(s) g_i(s). H_x(s) is kept
 * densely, C x P per query, in a layer-major layout: for layer l the block of
 * W_l holds rows (q, k, o) of length d_in, so H_W g_i = s_w (H_W a_i) . deltã_i
 * is one GEMM of the whole block by the batch's layer inputs, followed by a
 * Hadamard product with the loss-weighted deltas; no P-long per-example
 * gradient is ever formed. Weight decay is a term that no example owns:
 *
 *   L2 (decay inside G_s):   regularisation(x) = -sum_s H_x(s) (lambda w_s)
 *   adamw (decoupled):       regularisation(x) += Jbar_x(s) (-eta_s lambda w_s)
 *
 * The trajectory is walked backwards in segments: each segment's weights
 * (and Adam preconditioners) are replayed forward from the nearest stored
 * checkpoint (weights and optimiser state), held in memory, and swept
 * backwards; consecutive segments must meet bit for bit, and the last one
 * must land on the stored final weights. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

int pk_explain_needs_backward(const pk_optim *op)
{
    return op->kind == PK_OPTIM_MOMENTUM || op->kind == PK_OPTIM_ADAM || op->kind == PK_OPTIM_ADAMW ||
           op->weight_decay != 0.0;
}

static int is_adam(const pk_optim *op) { return op->kind == PK_OPTIM_ADAM || op->kind == PK_OPTIM_ADAMW; }


static size_t max_dout(const pk_model *m)
{
    size_t s = 1;
    for (size_t l = 0; l < m->n_weight; l++) s = pk_model_weight(m, l)->out > s ? pk_model_weight(m, l)->out : s;
    return s;
}

/* The parameters of the largest layer the sweep contracts through its
 * per-row gradients (pk_layer_ops.grad_rows: every kind but dense). */
static size_t max_rows_params(const pk_model *m)
{
    size_t s = 0;
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        if (lw->ops != &pk_dense_ops && lw->n_w > s) s = lw->n_w;
    }
    return s;
}

/* Queries per GEMM chunk: the product of a chunk of H by the batch inputs
 * stays near 4 Mi doubles. */
static size_t chunk_queries(const pk_model *m, size_t Qb, size_t B)
{
    size_t C = m->n_out, per = C * max_dout(m) * (B ? B : 1);
    size_t g = ((size_t)1 << 22) / (per ? per : 1);
    if (g < 1) g = 1;
    return g < Qb ? g : Qb;
}

/* Doubles of workspace for a block of Qb queries whose rows go Rb at a
 * time (pk_quad_rows), without the segment store. */
static double block_doubles(const pk_model *m, size_t B, size_t Qb, size_t Rb, int kernel, size_t nodes)
{
    size_t C = m->n_out, P = m->n_params, sd = pk_model_widths(m), md = max_dout(m);
    double b = (double)Qb * (double)C * (double)P;                        /* H               */
    b += (double)nodes * ((double)Qb * (double)(3 * sd) + (double)Qb * (double)(C * sd)); /* tapes, dq per node */
    b += (double)Rb * (double)(3 * sd) + (double)Rb * (double)(C * sd);   /* own rows: tape, deltas */
    b += (double)Rb * (double)(md + m->n_in + 2 * C + 3);                 /* adamw: U a; rows: X, Y, R, at, of, oq */
    b += (double)chunk_queries(m, Qb, B) * (double)C * (double)md * (double)B; /* GEMM chunk  */
    b += (double)Qb * (double)C * (double)B * (double)(kernel ? C : 1);   /* bias GEMM       */
    b += (double)Rb * (double)C * (double)max_rows_params(m);             /* rows' gradients */
    return b;
}

/* Doubles that do not depend on the block: weights, state, stepper. */
static double fixed_doubles(const pk_model *m, const pk_optim *op, size_t d, size_t B, int kernel)
{
    size_t C = m->n_out, P = m->n_params, sd = pk_model_widths(m), md = max_dout(m);
    double b = (4.0 + (double)pk_optim_state_len(op)) * (double)P;       /* G, wq, prev, final, state */
    b += (double)B * (double)(d + 3 * sd + C + md);                       /* stepper, deltas^T */
    if (kernel) b += 2.0 * (double)B * (double)(C * sd);                  /* batch deltas (+^T) */
    b += (double)B * (double)(kernel ? C : 1) * (double)max_rows_params(m); /* batch gradients */
    return b;
}

/* Doubles stored per step of a segment: w_{s+1}, and P_s for Adam. */
static double seg_doubles_per_step(const pk_model *m, const pk_optim *op)
{
    return (double)m->n_params * (is_adam(op) ? 2.0 : 1.0);
}

size_t pk_explain_backward_plan(const pk_run *run, size_t Q, const pk_explain_opts *o, size_t limit,
                                size_t out_bytes, size_t *Qb_out, size_t *seg_out)
{
    const pk_model *m = pk_run_model(run);
    const pk_optim *op = pk_run_optim(run);
    size_t T = pk_run_steps(run);
    size_t B = pk_run_batch_cap(run);
    int kernel = o->want_kernel;
    double fixed = fixed_doubles(m, op, m->n_in, B, kernel) + (double)m->n_params; /* w_a */
    double per = seg_doubles_per_step(m, op);
    size_t Qb = o->block ? (o->block < Q ? o->block : Q) : Q;
    if (!Qb) Qb = 1;
    double avail = (double)limit / sizeof(double) - (double)out_bytes / sizeof(double);
    /* at least a two-step segment next to the block */
    /* tapes: one per node, and one of the rows at nodes of their own */
    size_t nodes = o->quad.exact ? pk_quad_piece_nodes(&o->quad, m, 0) : o->quad.n ? o->quad.n : 1;
    while (!o->block && Qb > 1 &&
           fixed + block_doubles(m, B, Qb, pk_quad_rows(&o->quad, Qb), kernel, nodes) + 2 * per > avail)
        Qb = (Qb + 1) / 2;
    double used = fixed + block_doubles(m, B, Qb, pk_quad_rows(&o->quad, Qb), kernel, nodes);
    double left = avail - used;
    size_t seg = left > per ? (size_t)(left / per) : 1;
    if (seg > T) seg = T;
    if (!seg) seg = 1;
    if (seg > 4096 && seg < T) seg = 4096;
    *Qb_out = Qb;
    *seg_out = seg;
    double need = ((double)out_bytes / sizeof(double) + used + (double)seg * per) * sizeof(double);
    return need > 1e18 ? (size_t)1e18 : (size_t)need;
}

/* ----------------------------------------------------------------- sweep */

typedef struct sweep {
    pk_run *run;
    const pk_model *m;
    const pk_optim *op;
    const pk_explain_opts *o;
    pk_explain *e;
    size_t P, C, N, T, S, Qb, Rb, seg, kr; /* Rb: rows at once (pk_quad_rows) */
    pk_stepper st;
    double *G, *wq, *prev, *fin;
    double *W;       /* (seg + 1, P) weights w_a .. w_b of the segment      */
    double *Pre;     /* (seg, P) Adam preconditioners P_s, or NULL          */
    double *H;       /* (Qb, C, P) layer-major                               */
    pk_tape *qt[8];  /* query tapes and per-output deltas at every quadrature node */
    double *dq[8][PK_MAX_MODEL_LAYERS];
    double *dB[PK_MAX_MODEL_LAYERS];
    double *dBT;     /* (C, dout, B) transposed batch per-output deltas      */
    double *dtT;     /* (dout, B) transposed loss-weighted deltas            */
    double *M;       /* GEMM chunk                                           */
    double *Mb;      /* bias GEMM (Qb*C, B[*C])                              */
    double *U;       /* (Qb, dout) adamw: U_l a_x                            */
    double *VQ;      /* (Qb C, n_w) queries' per-output gradients of a layer (grad_rows) */
    double *VB;      /* (B [C], n_w) the batch's gradients of a layer (grad_rows)        */
    double *R;       /* (Rb, outputs) the target's seeds dg/df at a node (MATH.md section 11) */
    size_t gq;       /* queries per GEMM chunk                               */
    /* the nodes of a step (MATH.md sections 11 and 12), the shared nodes'
     * rows (pos[q]: query q's row on qt[n], -1 when it has pieces of its
     * own), and rows at nodes of their own, Rb at a time on ot */
    pk_nodes nd;
    int32_t *pos;    /* (Qb)                                                 */
    double *Dt;      /* (P) D_t                                              */
    double *X;       /* (Rb, d) gathered queries                             */
    double *Y;       /* (Rb, ty) their targets, gathered                     */
    pk_tape *ot;     /* own rows' tape                                       */
    double *od[PK_MAX_MODEL_LAYERS];
    double *at, *of; /* (Rb) their nodes and weights                         */
    uint32_t *oq;    /* (Rb) their queries (in the block)                    */
    double pieces;   /* pieces of every query and step                       */
} sweep;

/* A layer's weights and bias: n_W and n_w - n_W parameters. */
static size_t n_weights(const pk_layer *l) { return l->b_off - l->w_off; }
static size_t n_bias(const pk_layer *l) { return l->n_w - n_weights(l); }

/* H block of layer l for a block of nq queries. */
static double *Hw(const sweep *sw, size_t nq, size_t l) { return sw->H + nq * sw->C * pk_model_weight(sw->m, l)->w_off; }
static double *Hb(const sweep *sw, size_t nq, size_t l) { return sw->H + nq * sw->C * pk_model_weight(sw->m, l)->b_off; }

/* Replay steps a..b-1 into the segment store (W, Pre). */
static pk_status replay_segment(sweep *sw, size_t a, size_t b)
{
    const pk_optim *op = sw->op;
    size_t P = sw->P;
    pk_replay r = {0};
    pk_status s = pk_replay_begin(&r, sw->run, a, NULL, NULL);
    r.end = b;
    if (!s) memcpy(sw->W, r.w, P * sizeof *r.w);
    while (!s && pk_replay_next(&r)) {
        size_t t = r.t;
        memcpy(sw->W + (t - a + 1) * P, r.w_next, P * sizeof *r.w_next);
        if (sw->Pre) { /* P_s exactly as optim.c forms the denominator of step t */
            const double *v = r.state + P;
            double bc2 = sqrt(1.0 - pow(op->beta2, (double)(t + 1)));
            double *pr = sw->Pre + (t - a) * P;
            for (size_t j = 0; j < P; j++) pr[j] = 1.0 / (sqrt(v[j]) / bc2 + op->eps);
        }
    }
    return pk_replay_end(&r, s);
}

/* H(s) = decay H(s+1) + coef sum_q c_q J_x(w_s + s_q D_s) [P_s], in one pass
 * over H: every node's tape (sw->qt[n], sw->dq[n]) is ready. */
static pk_status update_h(sweep *sw, size_t nq, double decay, const double *cn, size_t nn, const double *pre)
{
    const pk_model *m = sw->m;
    size_t C = sw->C, L = m->n_weight;
    for (size_t l = 0; l < L; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        size_t din = lw->in, dout = lw->out;
        double swl = lw->sw, sbl = lw->sb;
        double *hw = Hw(sw, nq, l), *hb = Hb(sw, nq, l);
        const double *pw = pre ? pre + lw->w_off : NULL, *pb = pre ? pre + lw->b_off : NULL;
        if (lw->ops != &pk_dense_ops) { /* by the rows' gradients: H_{x,k} rows of n_W, then of n_b */
            size_t nW = n_weights(lw), nB = n_bias(lw), len = nq * C * nW, blen = nq * C * nB, nt = sw->qt[0]->n;
            double *V = sw->VQ, *Vb = sw->VQ + nt * C * nW;
            for (size_t i = 0; i < len; i++) hw[i] = decay == 0.0 ? 0.0 : decay * hw[i];
            for (size_t i = 0; i < blen; i++) hb[i] = decay == 0.0 ? 0.0 : decay * hb[i];
            for (size_t n = 0; n < nn && nt; n++) {
                if (lw->ops->grad_rows(lw, nt, C, pk_tape_in(sw->qt[n], m->weight[l]), sw->dq[n][l], V, Vb))
                    return pk_fail(PK_ERR_NOMEM, "explain: out of memory for a %s layer's gradients", lw->ops->kind);
                #pragma omp parallel for schedule(static) if (len >= PK_PAR_MIN)
                for (size_t i = 0; i < len; i++) {
                    int32_t at = sw->pos[i / (C * nW)];
                    if (at >= 0) hw[i] += cn[n] * V[(size_t)at * C * nW + i % (C * nW)] * (pw ? pw[i % nW] : 1.0);
                }
                for (size_t i = 0; i < blen; i++) {
                    int32_t at = sw->pos[i / (C * nB)];
                    if (at >= 0) hb[i] += cn[n] * Vb[(size_t)at * C * nB + i % (C * nB)] * (pb ? pb[i % nB] : 1.0);
                }
            }
            continue;
        }
        size_t rows = nq * C * dout;
        #pragma omp parallel for schedule(static) if (rows * din >= PK_PAR_MIN)
        for (size_t r = 0; r < rows; r++) {
            size_t q = r / (C * dout), o = r % dout;
            double f[8], fb = 0;
            const double *a[8];
            size_t k = 0;
            int32_t at = sw->pos[q]; /* the query's row on the shared nodes' tapes, or none */
            size_t rt = at < 0 ? 0 : (size_t)at * C * dout + r % (C * dout);
            for (size_t n = 0; at >= 0 && n < nn; n++) {
                double dv = sw->dq[n][l][rt];
                fb += cn[n] * dv;
                if (dv == 0.0) continue;
                f[k] = cn[n] * swl * dv;
                a[k++] = pk_tape_in(sw->qt[n], m->weight[l]) + (size_t)at * din;
            }
            double *h = hw + r * din;
            const double *p = pw ? pw + o * din : NULL;
            if (k == 0) {
                if (decay == 0.0) memset(h, 0, din * sizeof *h);
                else if (decay != 1.0) for (size_t i = 0; i < din; i++) h[i] *= decay;
            } else if (k == 1) {
                const double *a0 = a[0];
                double f0 = f[0];
                if (p) for (size_t i = 0; i < din; i++) h[i] = decay * h[i] + f0 * a0[i] * p[i];
                else for (size_t i = 0; i < din; i++) h[i] = decay * h[i] + f0 * a0[i];
            } else if (k == 2) {
                const double *a0 = a[0], *a1 = a[1];
                double f0 = f[0], f1 = f[1];
                if (p) for (size_t i = 0; i < din; i++) h[i] = decay * h[i] + (f0 * a0[i] + f1 * a1[i]) * p[i];
                else for (size_t i = 0; i < din; i++) h[i] = decay * h[i] + (f0 * a0[i] + f1 * a1[i]);
            } else {
                for (size_t i = 0; i < din; i++) {
                    double acc = 0;
                    for (size_t j = 0; j < k; j++) acc += f[j] * a[j][i];
                    h[i] = decay * h[i] + (p ? acc * p[i] : acc);
                }
            }
            hb[r] = decay * hb[r] + sbl * fb * (pb ? pb[o] : 1.0);
        }
    }
    return PK_OK;
}

/* H(s) += sum over the exact rule's own rows x of f_x J_{q(x)}(w_s + s_x D_s) [P_s]:
 * the nr rows on sw->ot (queries sw->oq in the block, weights sw->of), the
 * rows of one query in order; entries of H in parallel. */
static pk_status add_h_rows(sweep *sw, size_t nq, size_t nr, const double *pre)
{
    const pk_model *m = sw->m;
    size_t C = sw->C;
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        size_t din = lw->in, dout = lw->out;
        double *hw = Hw(sw, nq, l), *hb = Hb(sw, nq, l);
        const double *pw = pre ? pre + lw->w_off : NULL, *pb = pre ? pre + lw->b_off : NULL;
        const double *a = pk_tape_in(sw->ot, m->weight[l]), *dl = sw->od[l];
        if (lw->ops != &pk_dense_ops) {
            size_t nW = n_weights(lw), nB = n_bias(lw);
            double *V = sw->VQ, *Vb = sw->VQ + nr * C * nW;
            if (lw->ops->grad_rows(lw, nr, C, a, dl, V, Vb))
                return pk_fail(PK_ERR_NOMEM, "explain: out of memory for a %s layer's gradients", lw->ops->kind);
            #pragma omp parallel for schedule(static) if (C * nW * nr >= PK_PAR_MIN)
            for (size_t i = 0; i < C * nW; i++)
                for (size_t x = 0; x < nr; x++)
                    hw[(size_t)sw->oq[x] * C * nW + i] += sw->of[x] * V[x * C * nW + i] * (pw ? pw[i % nW] : 1.0);
            for (size_t i = 0; i < C * nB; i++)
                for (size_t x = 0; x < nr; x++)
                    hb[(size_t)sw->oq[x] * C * nB + i] += sw->of[x] * Vb[x * C * nB + i] * (pb ? pb[i % nB] : 1.0);
            continue;
        }
        double swl = lw->sw, sbl = lw->sb;
        #pragma omp parallel for schedule(static) if (C * dout * din * nr >= PK_PAR_MIN)
        for (size_t ko = 0; ko < C * dout; ko++) {
            size_t o = ko % dout;
            const double *p = pw ? pw + o * din : NULL;
            for (size_t x = 0; x < nr; x++) {
                double dv = dl[x * C * dout + ko];
                size_t r = (size_t)sw->oq[x] * C * dout + ko;
                hb[r] += sbl * sw->of[x] * dv * (pb ? pb[o] : 1.0);
                if (dv == 0.0) continue;
                double f = sw->of[x] * swl * dv, *h = hw + r * din;
                const double *ax = a + x * din;
                if (p) for (size_t i = 0; i < din; i++) h[i] += f * ax[i] * p[i];
                else for (size_t i = 0; i < din; i++) h[i] += f * ax[i];
            }
        }
    }
    return PK_OK;
}

/* adamw: regularisation(x)_k += coef_j J_{x,k}(node) . w_s for the n rows
 * of tape t (deltas dq; row j: query q0 + qrow[j], coef[j]), structured:
 * s_w delta_k . (W_s,l a_x) + s_b delta_k . c_s,l per layer. */
static pk_status adamw_term(sweep *sw, size_t q0, const pk_tape *t, double *const *dq, size_t n, const uint32_t *qrow,
                            const double *coef, const double *ws)
{
    const pk_model *m = sw->m;
    size_t C = sw->C;
    for (size_t l = 0; l < m->n_weight; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        if (lw->ops != &pk_dense_ops) { /* J_{x,k} . w_s from the rows' gradients */
            size_t nW = n_weights(lw), nB = n_bias(lw);
            double *V = sw->VQ, *Vb = sw->VQ + n * C * nW;
            if (lw->ops->grad_rows(lw, n, C, pk_tape_in(t, m->weight[l]), dq[l], V, Vb))
                return pk_fail(PK_ERR_NOMEM, "explain: out of memory for a %s layer's gradients", lw->ops->kind);
            for (size_t qk = 0; qk < n * C; qk++) {
                double acc = 0;
                for (size_t i = 0; i < nW; i++) acc += V[qk * nW + i] * ws[lw->w_off + i];
                for (size_t i = 0; i < nB; i++) acc += Vb[qk * nB + i] * ws[lw->b_off + i];
                sw->e->regularisation[(q0 + qrow[qk / C]) * C + qk % C] += coef[qk / C] * acc;
            }
            continue;
        }
        size_t din = lw->in, dout = lw->out;
        double swl = lw->sw, sbl = lw->sb;
        const double *dl = dq[l], *ub = ws + lw->b_off;
        pk_gemm_rows(0, 1, n, dout, din, 1.0, pk_tape_in(t, m->weight[l]), din, ws + lw->w_off, din, 0.0, sw->U, dout);
        for (size_t q = 0; q < n; q++)
            for (size_t k = 0; k < C; k++) {
                const double *d = dl + (q * C + k) * dout, *ua = sw->U + q * dout;
                double acc = 0;
                for (size_t o = 0; o < dout; o++) acc += d[o] * (swl * ua[o] + sbl * ub[o]);
                sw->e->regularisation[(q0 + qrow[q]) * C + k] += coef[q] * acc;
            }
    }
    return PK_OK;
}

/* One pass of dot products with the rows H_{x,k}(s):
 *   regularisation(x)_k -= lambda H_{x,k}(s) . w_s   (L2 decay inside G_s), if lambda != 0
 *   sum_i phi_i(x)_k   -= H_{x,k}(s) . G_s          (G the batch's mean data gradient), if G
 * The second is what verify needs: sum_i of (1/|B|) H g_i is H G, no per-example work. */
static void dot_terms(sweep *sw, size_t q0, size_t nq, double lambda, const double *ws, const double *G)
{
    const pk_model *m = sw->m;
    size_t C = sw->C;
    #pragma omp parallel for schedule(static) if (nq * C * sw->P >= PK_PAR_MIN)
    for (size_t qk = 0; qk < nq * C; qk++) {
        double accw = 0, accg = 0;
        for (size_t l = 0; l < m->n_weight; l++) {
            const pk_layer *lw = pk_model_weight(m, l);
            size_t nW = n_weights(lw), nB = n_bias(lw);
            const double *hw = Hw(sw, nq, l) + qk * nW, *hb = Hb(sw, nq, l) + qk * nB;
            const double *w = ws + lw->w_off, *b = ws + lw->b_off;
            const double *gw = G ? G + lw->w_off : NULL, *gb = G ? G + lw->b_off : NULL;
            double aw = 0, ab = 0, cw = 0, cb = 0;
            if (lambda != 0.0) {
                for (size_t i = 0; i < nW; i++) aw += hw[i] * w[i];
                for (size_t o = 0; o < nB; o++) ab += hb[o] * b[o];
            }
            if (G) {
                for (size_t i = 0; i < nW; i++) cw += hw[i] * gw[i];
                for (size_t o = 0; o < nB; o++) cb += hb[o] * gb[o];
            }
            accw += aw + ab;
            accg += cw + cb;
        }
        size_t at = (q0 + qk / C) * C + qk % C;
        if (lambda != 0.0) sw->e->regularisation[at] -= lambda * accw;
        if (G) sw->e->contrib_sum[at] -= accg;
    }
}

/* phi_i(x) -= (1/|B|) H_x(s) g_i(s) and K^p(x, x_i) += (1/|B|) H_x(s) J_{x_i}(w_s)^T
 * for the batch on the stepper's tape (at w_s). */
/* The same for a layer contracted through gradients (grad_rows): Mb ((q,k),
 * j) = H_{x,k} . g_j from the batch's loss-weighted gradients, and for the
 * kernel ((q,k), (j,k2)) = H_{x,k} . J_{x_j,k2} from its per-output ones. */
static pk_status batch_products_rows(sweep *sw, const pk_layer *lw, size_t l, size_t q0, size_t nq,
                                     const uint32_t *idx, size_t nb)
{
    const pk_model *m = sw->m;
    size_t C = sw->C, N = sw->N, kr = sw->kr, nW = n_weights(lw), nB = n_bias(lw);
    pk_explain *e = sw->e;
    double inv = 1.0 / (double)nb;
    const pk_tape *bt = sw->st.tape;
    const double *aB = pk_tape_in(bt, m->weight[l]), *hw = Hw(sw, nq, l), *hb = Hb(sw, nq, l);
    for (int part = 0; part < (e->kernel ? 2 : 1); part++) {
        size_t rows = part ? C : 1, cols = nb * rows;
        const double *delta = part ? sw->dB[l] : bt->g[m->weight[l]];
        if (lw->ops->grad_rows(lw, nb, rows, aB, delta, sw->VB, sw->VB + cols * nW))
            return pk_fail(PK_ERR_NOMEM, "explain: out of memory for a %s layer's gradients", lw->ops->kind);
        pk_gemm_rows(0, 1, nq * C, cols, nW, 1.0, hw, nW, sw->VB, nW, 0.0, sw->Mb, cols);
        pk_gemm_rows(0, 1, nq * C, cols, nB, 1.0, hb, nB, sw->VB + cols * nW, nB, 1.0, sw->Mb, cols);
        #pragma omp parallel for schedule(static) if (nq * C * cols >= PK_PAR_MIN)
        for (size_t x = 0; x < nq; x++) {
            size_t q = q0 + x;
            for (size_t k = 0; k < C; k++) {
                const double *r = sw->Mb + (x * C + k) * cols;
                if (!part) {
                    double sum = 0;
                    for (size_t j = 0; j < nb; j++) {
                        sum += r[j];
                        if (e->contrib) e->contrib[(q * N + idx[j]) * C + k] -= inv * r[j];
                    }
                    e->contrib_sum[q * C + k] -= inv * sum;
                    continue;
                }
                for (size_t j = 0; j < nb; j++)
                    for (size_t k2 = 0; k2 < C; k2++) {
                        if (kr == 1 && k2 != k) continue;
                        size_t i = idx[j];
                        if (kr == 1) e->kernel[q * N + i] += inv * r[j * C + k2];
                        else e->kernel[((q * N + i) * C + k) * C + k2] += inv * r[j * C + k2];
                    }
            }
        }
    }
    return PK_OK;
}

static pk_status batch_products(sweep *sw, size_t q0, size_t nq, const uint32_t *idx, size_t nb)
{
    const pk_model *m = sw->m;
    size_t C = sw->C, N = sw->N, kr = sw->kr, L = m->n_weight;
    pk_explain *e = sw->e;
    int kernel = e->kernel != NULL;
    double inv = 1.0 / (double)nb;
    const pk_tape *bt = sw->st.tape;
    for (size_t l = 0; l < L; l++) {
        const pk_layer *lw = pk_model_weight(m, l);
        if (lw->ops != &pk_dense_ops) {
            pk_status s = batch_products_rows(sw, lw, l, q0, nq, idx, nb);
            if (s) return s;
            continue;
        }
        size_t din = lw->in, dout = lw->out;
        double swl = lw->sw, sbl = lw->sb;
        const double *dt = bt->g[m->weight[l]], *aB = pk_tape_in(bt, m->weight[l]);
        for (size_t j = 0; j < nb; j++)
            for (size_t o = 0; o < dout; o++) sw->dtT[o * nb + j] = dt[j * dout + o];
        if (kernel) {
            const double *dB = sw->dB[l];
            for (size_t j = 0; j < nb; j++)
                for (size_t k = 0; k < C; k++)
                    for (size_t o = 0; o < dout; o++) sw->dBT[(k * dout + o) * nb + j] = dB[(j * C + k) * dout + o];
        }
        double *hw = Hw(sw, nq, l), *hb = Hb(sw, nq, l);
        /* weights: M ((q,k,o), j) = H_W a_j, then contracted with the deltas over o */
        for (size_t c0 = 0; c0 < nq; c0 += sw->gq) {
            size_t nc = nq - c0 < sw->gq ? nq - c0 : sw->gq;
            pk_gemm_rows(0, 1, nc * C * dout, nb, din, 1.0, hw + c0 * C * dout * din, din, aB, din, 0.0, sw->M, nb);
            #pragma omp parallel for schedule(static) if (nc * C * dout * nb >= PK_PAR_MIN)
            for (size_t x = 0; x < nc; x++) {
                size_t q = q0 + c0 + x;
                double acc[256];
                for (size_t k = 0; k < C; k++) {
                    const double *Mk = sw->M + (x * C + k) * dout * nb;
                    for (size_t j0 = 0; j0 < nb; j0 += 256) {
                        size_t nj = nb - j0 < 256 ? nb - j0 : 256;
                        /* contributions: deltã */
                        for (size_t j = 0; j < nj; j++) acc[j] = 0;
                        for (size_t o = 0; o < dout; o++) {
                            const double *Mr = Mk + o * nb + j0, *d = sw->dtT + o * nb + j0;
                            for (size_t j = 0; j < nj; j++) acc[j] += Mr[j] * d[j];
                        }
                        double f = -inv * swl, sum = 0;
                        for (size_t j = 0; j < nj; j++) {
                            sum += acc[j];
                            if (e->contrib) e->contrib[(q * N + idx[j0 + j]) * C + k] += f * acc[j];
                        }
                        e->contrib_sum[q * C + k] += f * sum;
                        if (!kernel) continue;
                        for (size_t k2 = 0; k2 < C; k2++) {
                            if (kr == 1 && k2 != k) continue;
                            for (size_t j = 0; j < nj; j++) acc[j] = 0;
                            for (size_t o = 0; o < dout; o++) {
                                const double *Mr = Mk + o * nb + j0, *d = sw->dBT + (k2 * dout + o) * nb + j0;
                                for (size_t j = 0; j < nj; j++) acc[j] += Mr[j] * d[j];
                            }
                            double fk = inv * swl;
                            for (size_t j = 0; j < nj; j++) {
                                size_t i = idx[j0 + j];
                                if (kr == 1) e->kernel[q * N + i] += fk * acc[j];
                                else e->kernel[((q * N + i) * C + k) * C + k2] += fk * acc[j];
                            }
                        }
                    }
                }
            }
        }
        /* biases: Mb ((q,k), j) = H_b deltã_j; kernel: ((q,k), (j,k2)) = H_b delta_{j,k2} */
        pk_gemm_rows(0, 1, nq * C, nb, dout, 1.0, hb, dout, dt, dout, 0.0, sw->Mb, nb);
        #pragma omp parallel for schedule(static) if (nq * C * nb >= PK_PAR_MIN)
        for (size_t x = 0; x < nq; x++) {
            size_t q = q0 + x;
            for (size_t k = 0; k < C; k++) {
                const double *r = sw->Mb + (x * C + k) * nb;
                double f = -inv * sbl, sum = 0;
                for (size_t j = 0; j < nb; j++) {
                    sum += r[j];
                    if (e->contrib) e->contrib[(q * N + idx[j]) * C + k] += f * r[j];
                }
                e->contrib_sum[q * C + k] += f * sum;
            }
        }
        if (kernel && sbl != 0.0) {
            pk_gemm_rows(0, 1, nq * C, nb * C, dout, 1.0, hb, dout, sw->dB[l], dout, 0.0, sw->Mb, nb * C);
            double fk = inv * sbl;
            #pragma omp parallel for schedule(static) if (nq * C * nb * C >= PK_PAR_MIN)
            for (size_t x = 0; x < nq; x++) {
                size_t q = q0 + x;
                for (size_t k = 0; k < C; k++) {
                    const double *r = sw->Mb + (x * C + k) * nb * C;
                    for (size_t j = 0; j < nb; j++)
                        for (size_t k2 = 0; k2 < C; k2++) {
                            if (kr == 1 && k2 != k) continue;
                            size_t i = idx[j];
                            if (kr == 1) e->kernel[q * N + i] += fk * r[j * C + k2];
                            else e->kernel[((q * N + i) * C + k) * C + k2] += fk * r[j * C + k2];
                        }
                }
            }
        }
    }
    return PK_OK;
}

/* One block of queries: the whole backward sweep. */
static pk_status sweep_block(sweep *sw, const double *Xq, size_t q0, size_t nq)
{
    const pk_model *m = sw->m;
    const pk_optim *op = sw->op;
    const pk_quad *quad = &sw->o->quad;
    size_t P = sw->P, C = sw->C, T = sw->T, d = m->n_in;
    int adam = is_adam(op), adamw = op->kind == PK_OPTIM_ADAMW;
    double lambda = op->weight_decay;
    double decay = op->kind == PK_OPTIM_MOMENTUM ? op->momentum : adam ? op->beta1 : 0.0;
    memset(sw->H, 0, nq * C * P * sizeof *sw->H);  /* H_x(T) = 0 */
    (void)C;
    pk_status s = PK_OK;
    for (size_t b = T; !s && b > 0;) {
        size_t a = b > sw->seg ? b - sw->seg : 0;
        s = replay_segment(sw, a, b);
        if (s) break;
        /* the segments meet bit for bit; the last one ends on the stored final weights */
        const double *want = b == T ? sw->fin : sw->prev;
        if (memcmp(sw->W + (b - a) * P, want, P * sizeof *want) != 0) {
            s = pk_replay_mismatch(sw->run, b);
            break;
        }
        memcpy(sw->prev, sw->W, P * sizeof *sw->W);
        for (size_t t = b; t-- > a;) {
            const double *ws = sw->W + (t - a) * P, *wn1 = ws + P;
            const double *pre = adam ? sw->Pre + (t - a) * P : NULL;
            double lr = pk_run_lr(sw->run, t);
            double coef = adam ? lr * (1.0 - op->beta1) / (1.0 - pow(op->beta1, (double)(t + 1))) : lr;
            /* H(s) = coef Jbar P + decay H(s+1): the shared nodes of the rule,
             * for the queries whose integrand is smooth along the step, all in
             * one pass over H; then the rows at nodes of their own (MATH.md
             * sections 11 and 12). Every row is seeded by its target. */
            pk_nodes *nd = &sw->nd;
            pk_loss loss = pk_run_loss(sw->run);
            size_t ty = loss == PK_LOSS_MSE ? m->n_out : 1;
            const double *yq = sw->o->y ? sw->o->y + q0 * ty : NULL;
            for (size_t j = 0; j < P; j++) sw->Dt[j] = wn1[j] - ws[j];
            if ((s = pk_nodes_step(nd, m, quad, 0, ws, sw->Dt, Xq + q0 * d, nq))) break;
            if ((s = pk_nodes_target(nd, m, &sw->o->target, yq, ty, ws, sw->Dt, Xq + q0 * d, nq, sw->ot))) break;
            sw->pieces += (double)nd->pieces;
            for (size_t x = 0; x < nq; x++) sw->pos[x] = -1;
            for (size_t x = 0; x < nd->nu; x++) {
                sw->pos[nd->u[x]] = (int32_t)x;
                memcpy(sw->X + x * d, Xq + (q0 + nd->u[x]) * d, d * sizeof *sw->X);
                if (yq) memcpy(sw->Y + x * ty, yq + nd->u[x] * ty, ty * sizeof *sw->Y);
            }
            double cn[PK_PIECE_NODES];
            for (size_t node = 0; !s && node < nd->k; node++) {
                double cq = nd->c[node];
                const double *wn = pk_node_weights(ws, wn1, P, nd->s[node], sw->wq);
                pk_model_forward(m, wn, sw->X, nd->nu, sw->qt[node]);
                /* C rows per query: the target's columns */
                if (nd->nu) s = pk_target_deltas(m, wn, sw->qt[node], &sw->o->target, loss, yq ? sw->Y : NULL, sw->R,
                                                 sw->dq[node]);
                cn[node] = cq * coef;
                for (size_t x = 0; x < nd->nu; x++) sw->of[x] = -cq * lr * lambda;
                if (!s && adamw && lambda != 0.0 && nd->nu)
                    s = adamw_term(sw, q0, sw->qt[node], sw->dq[node], nd->nu, nd->u, sw->of, ws);
            }
            if (!s) s = update_h(sw, nq, decay, cn, nd->k, pre);
            for (size_t r0 = 0; !s && r0 < nd->R; r0 += sw->Rb) {
                size_t nr = nd->R - r0 < sw->Rb ? nd->R - r0 : sw->Rb;
                for (size_t x = 0; x < nr; x++) {
                    memcpy(sw->X + x * d, Xq + (q0 + nd->re[r0 + x]) * d, d * sizeof *sw->X);
                    if (yq) memcpy(sw->Y + x * ty, yq + nd->re[r0 + x] * ty, ty * sizeof *sw->Y);
                    sw->at[x] = nd->rs[r0 + x];
                    sw->oq[x] = nd->re[r0 + x];
                    sw->of[x] = -nd->rc[r0 + x] * lr * lambda;
                }
                if ((s = pk_tape_along(sw->ot, m, sw->Dt, sw->at))) break;
                pk_model_forward(m, ws, sw->X, nr, sw->ot);
                s = pk_target_deltas(m, ws, sw->ot, &sw->o->target, loss, yq ? sw->Y : NULL, sw->R, sw->od);
                pk_tape_along(sw->ot, m, NULL, NULL);
                if (s) break;
                if (adamw && lambda != 0.0 && (s = adamw_term(sw, q0, sw->ot, sw->od, nr, sw->oq, sw->of, ws))) break;
                for (size_t x = 0; x < nr; x++) sw->of[x] = nd->rc[r0 + x] * coef;
                s = add_h_rows(sw, nq, nr, pre);
            }
            if (s) break;
            const uint32_t *idx;
            size_t nb;
            pk_run_batch(sw->run, t, &idx, &nb);
            sw->st.step = t;
            pk_stepper_grad(&sw->st, ws, idx, nb, sw->G);
            /* without per-example outputs (verify) the sum over the batch is H_x(s) G_s */
            int per_example = sw->e->contrib || sw->e->kernel;
            double l2 = adamw ? 0.0 : lambda;
            if (l2 != 0.0 || !per_example) dot_terms(sw, q0, nq, l2, ws, per_example ? NULL : sw->G);
            if (per_example) {
                if (sw->e->kernel) pk_model_output_deltas(m, ws, sw->st.tape, sw->dB);
                if ((s = batch_products(sw, q0, nq, idx, nb))) break;
            }
            /* the sweep runs backward: T - t steps of this block are done */
            if (sw->o->progress && sw->o->progress(sw->o->ctx, T - t, T, pk_run_batch_loss(sw->run, t))) {
                s = pk_fail(PK_ERR_STOPPED, "stopped with %zu of %zu steps of the backward sweep done", T - t, T);
                break;
            }
        }
        b = a;
    }
    return s;
}

pk_status pk_explain_backward(pk_run *run, const double *Xq, size_t Q, const pk_explain_opts *o,
                              size_t Qb, size_t seg, pk_explain *e, double *pieces)
{
    sweep sw;
    memset(&sw, 0, sizeof sw);
    sw.run = run;
    sw.m = pk_run_model(run);
    sw.op = pk_run_optim(run);
    sw.o = o;
    sw.e = e;
    const pk_model *m = sw.m;
    /* H_x is kept in the parameters' layout: dense layers contracted by
     * structure, every other kind through its rows' gradients */
    for (size_t l = 0; l < m->n_weight; l++)
        if (pk_model_weight(m, l)->ops != &pk_dense_ops && !pk_model_weight(m, l)->ops->grad_rows)
            return pk_fail(PK_ERR_INPUT, "%s: the backward sweep of momentum, Adam and weight decay cannot take "
                           "a %s layer", pk_run_dir(run), pk_model_weight(m, l)->ops->kind);
    sw.P = m->n_params;
    sw.C = pk_target_columns(&o->target, m->n_out); /* rows of H_x per query */
    sw.N = pk_run_n_train(run);
    sw.T = pk_run_steps(run);
    sw.S = pk_optim_state_len(sw.op);
    sw.Qb = Qb;
    sw.Rb = pk_quad_rows(&o->quad, Qb);
    sw.seg = seg;
    sw.kr = o->mode == PK_KMODE_FULL ? sw.C : 1;
    size_t P = sw.P, C = sw.C;
    size_t B = pk_run_batch_cap(run), md = max_dout(m);
    sw.gq = chunk_queries(m, Qb, B);
    const pk_data *train;
    pk_status s = pk_run_train_data(run, &train);
    if (s) return s;
    sw.G = pk_alloc(P, sizeof(double));
    sw.wq = pk_alloc(P, sizeof(double));
    sw.prev = pk_alloc(P, sizeof(double));
    sw.fin = pk_alloc(P, sizeof(double));
    sw.W = pk_alloc(seg + 1, P * sizeof(double));
    sw.Pre = is_adam(sw.op) ? pk_alloc(seg, P * sizeof(double)) : NULL;
    sw.H = pk_alloc(Qb * C, P * sizeof(double));
    sw.R = pk_alloc(sw.Rb, m->n_out * sizeof(double));
    int have_dq = 1;
    size_t nodes = o->quad.exact ? pk_quad_piece_nodes(&o->quad, m, 0) : o->quad.n; /* at most 8 (path.c) */
    for (size_t n = 0; n < nodes; n++) {
        sw.qt[n] = pk_tape_new(m, Qb);
        if (sw.qt[n]) sw.qt[n]->queries = 1;
        if (!sw.qt[n] || pk_deltas_new(m, Qb, sw.dq[n])) have_dq = 0;
    }
    sw.pos = pk_alloc(Qb, sizeof *sw.pos);
    sw.X = pk_alloc(sw.Rb, m->n_in * sizeof *sw.X);
    sw.at = pk_alloc(sw.Rb, sizeof *sw.at);
    sw.of = pk_alloc(sw.Rb, sizeof *sw.of);
    sw.oq = pk_alloc(sw.Rb, sizeof *sw.oq);
    sw.Y = pk_alloc(sw.Rb, (pk_run_loss(run) == PK_LOSS_MSE ? m->n_out : 1) * sizeof *sw.Y);
    if (!sw.pos || !sw.X || !sw.Y || !sw.at || !sw.of || !sw.oq) have_dq = 0;
    sw.Dt = pk_alloc(P, sizeof *sw.Dt);
    sw.ot = pk_tape_new(m, sw.Rb);
    if (sw.ot) sw.ot->queries = 1;
    if (!sw.Dt || !sw.ot || pk_deltas_new(m, sw.Rb, sw.od)) have_dq = 0;
    int have_dB = e->kernel ? !pk_deltas_new(m, B, sw.dB) : 1;
    sw.dBT = e->kernel ? pk_alloc(C * md, B * sizeof(double)) : NULL;
    sw.dtT = pk_alloc(md, B * sizeof(double));
    sw.M = pk_alloc(sw.gq * C * md, B * sizeof(double));
    sw.Mb = pk_alloc(Qb * C, B * (e->kernel ? C : 1) * sizeof(double));
    sw.U = pk_alloc(sw.Rb, md * sizeof(double));
    size_t nr = max_rows_params(m);
    sw.VQ = nr ? pk_alloc(sw.Rb * C, nr * sizeof(double)) : NULL;
    sw.VB = nr ? pk_alloc(B * (e->kernel ? C : 1), nr * sizeof(double)) : NULL;
    if ((nr && (!sw.VQ || !sw.VB)) || !sw.G || !sw.wq || !sw.prev || !sw.fin || !sw.W || (is_adam(sw.op) && !sw.Pre) || !sw.H || !sw.R ||
        !have_dq || !have_dB || (e->kernel && !sw.dBT) || !sw.dtT || !sw.M || !sw.Mb || !sw.U)
        s = pk_fail(PK_ERR_NOMEM, "explain: out of memory for the backward sweep (%zu queries per block, "
                    "%zu steps per segment)", Qb, seg);
    if (!s) s = pk_run_stepper(run, &sw.st);
    if (!s) s = pk_run_weights(run, sw.T, sw.fin);
    for (size_t q0 = 0; !s && q0 < Q; q0 += Qb) {
        size_t nq = Q - q0 < Qb ? Q - q0 : Qb;
        s = sweep_block(&sw, Xq, q0, nq);
    }
    pk_stepper_free(&sw.st);
    for (size_t n = 0; n < nodes; n++) {
        pk_tape_free(sw.qt[n]);
        if (sw.dq[n][0]) pk_deltas_free(m, sw.dq[n]);
    }
    pk_tape_free(sw.ot);
    if (sw.od[0]) pk_deltas_free(m, sw.od);
    pk_nodes_free(&sw.nd);
    free(sw.pos); free(sw.X); free(sw.Y); free(sw.at); free(sw.of); free(sw.oq); free(sw.Dt);
    *pieces = sw.pieces;
    if (e->kernel && have_dB) pk_deltas_free(m, sw.dB);
    free(sw.G); free(sw.wq); free(sw.prev); free(sw.fin); free(sw.W); free(sw.Pre);
    free(sw.H); free(sw.R); free(sw.dBT); free(sw.dtT); free(sw.M); free(sw.Mb); free(sw.U); free(sw.VQ); free(sw.VB);
    return s;
}
