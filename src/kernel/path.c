/* path.c -- the exact path kernel and the contribution of every training
 * example to a prediction (MATH.md section 3), by replaying the recorded
 * trajectory step by step. Per step the training side (a forward and a
 * backward pass over the batch at w_t, as in training) is computed once and
 * shared by every query block; the query side is evaluated at the quadrature
 * nodes w_t + s_q D_t of Jbar. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

/* ------------------------------------------------------------- quadrature */

/* The rules themselves are in quad.c; why a rule's error is what it is: */
const char *pk_quad_why(const pk_quad *q, const pk_model *m, double pieces, char *buf, size_t len)
{
    size_t L = m->n_weight;
    char why[512];
    int pl = !pk_quad_exact_refusal(m, why, sizeof why); /* piecewise linear */
    if (q->exact)
        snprintf(buf, len, "rule exact: each step split at every query's kinks (%.3f pieces per query and step), "
                 "%zu Gauss-Legendre node(s) per piece integrate its polynomial of degree %zu (L = %zu layers with "
                 "parameters) exactly%s: what remains is rounding", pieces, pk_quad_piece_nodes(q, m, 0),
                 L ? L - 1 : 0, L, pk_model_mlp_act(m) >= 0 ? " (an MLP's contributions: from its coefficients, "
                 "walking the pieces, MATH.md section 12)" : "");
    else if (pl && L > 1)
        snprintf(buf, len, "rule %s: %zu node(s) on each whole step; the network is piecewise linear, so the "
                 "integrand jumps where a unit or a max-pool window changes inside a step and the error is set by "
                 "those kinks, not by the rule's order: the exact rule (quad exact) removes it", q->name, q->n);
    else if (pl)
        snprintf(buf, len, "rule %s: the network is linear in its parameters, every rule is exact", q->name);
    else
        snprintf(buf, len, "rule %s: %zu node(s) a step; smooth activations, error O(eta^%zu) over a fixed eta*T "
                 "(MATH.md section 3; the exact rule needs a piecewise-linear network)", q->name, q->n,
                 !strcmp(q->name, "left") ? (size_t)1 : 2 * q->n);
    return buf;
}

pk_explain_opts pk_explain_opts_defaults(void)
{
    pk_explain_opts o = {0};
    pk_quad_parse("gl2", &o.quad);
    o.want_contrib = 1;
    o.want_kernel = 1;
    o.mode = PK_KMODE_TRACE;
    return o;
}

void pk_explain_free(pk_explain *e)
{
    free(e->pred); free(e->bias); free(e->contrib); free(e->contrib_sum); free(e->kernel);
    free(e->regularisation);
    memset(e, 0, sizeof *e);
}

/* ---------------------------------------------------------------- memory */


/* Kernel rows per pair and per example: C in full mode with C > 1, else 1. */
static size_t kernel_rows(const pk_model *m, const pk_explain_opts *o)
{
    size_t C = m->n_out;
    return o->mode == PK_KMODE_FULL ? C : 1;
}

static size_t output_bytes(const pk_model *m, size_t Q, size_t N, const pk_explain_opts *o)
{
    size_t C = m->n_out, kr = kernel_rows(m, o);
    double b = 4.0 * (double)Q * (double)C;
    if (o->want_contrib) b += (double)Q * (double)N * (double)C;
    if (o->want_kernel) b += (double)Q * (double)N * (double)(kr * kr);
    b *= sizeof(double);
    return b > 1e18 ? (size_t)1e18 : (size_t)b;
}

/* The options of the sweeps: the contribution kernel only when it is the
 * kernel asked for; the paper's kernel is pk_run_path_kernel's, after them. */
static pk_explain_opts sweep_opts(const pk_explain_opts *o)
{
    pk_explain_opts t = *o;
    t.want_kernel = o->want_kernel && o->batch_kernel;
    return t;
}

/* The least workspace of the paper's path kernel, when it is the kernel
 * asked for (its output is in output_bytes). It runs after the sweep, whose
 * workspace is gone by then: a plan needs the larger of the two. */
static size_t paper_bytes(const pk_run *run, size_t Q, const pk_explain_opts *o)
{
    return o->want_kernel && !o->batch_kernel ? pk_path_kernel_min_bytes(run, Q, pk_run_n_train(run), o->mode) : 0;
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static size_t work_bytes(const pk_model *m, size_t d, size_t B, size_t Qb, const pk_explain_opts *o)
{
    size_t C = m->n_out, kr = kernel_rows(m, o), sd = pk_model_widths(m), Rb = pk_quad_rows(&o->quad, Qb);
    int batch_kernel = o->want_kernel && o->batch_kernel;
    double b = 4.0 * (double)m->n_params;                        /* w, w_next, wq, G */
    b += (double)B * (double)(d + 3 * sd + C);                    /* stepper          */
    if (batch_kernel) b += (double)B * (double)(C * sd);          /* batch deltas     */
    b += (double)Rb * (double)(3 * sd) + (double)Rb * (double)(C * sd); /* query tape, deltas */
    b += 2.0 * (double)Rb * (double)C * (double)B + (double)Rb * (double)B; /* S, D, A */
    b += (double)Rb * (double)(d + 2 * C + 4);                    /* rows: X, Y, R, at, f, q, grp */
    b += (double)Rb * (double)(C * sd);                           /* rows at their own nodes: dtmp */
    if (batch_kernel) b += 2.0 * (double)Rb * (double)kr * (double)B * (double)kr;
    b += (double)pk_rowsum_values(m, Rb, pk_target_columns(&o->target, C), B); /* gradient rows summed */
    b *= sizeof(double);
    if (pk_sweep_serves(m, &o->quad, &o->target, batch_kernel)) b += (double)pk_sweep_bytes(m, &o->target, Qb, B);
    return b > 1e18 ? (size_t)1e18 : (size_t)b;
}

static size_t batch_cap(const pk_run *run) { return pk_run_batch_cap(run); }

static size_t default_block(const pk_run *run, size_t Q, const pk_explain_opts *o, size_t limit)
{
    const pk_model *m = pk_run_model(run);
    size_t out = output_bytes(m, Q, pk_run_n_train(run), o), B = batch_cap(run);
    size_t Qb = o->block ? o->block : (Q < 256 ? Q : 256);
    if (!Qb) Qb = 1;
    while (!o->block && Qb > 1 && out + work_bytes(m, m->n_in, B, Qb, o) > limit) Qb /= 2;
    return Qb;
}

static size_t memory_limit(const pk_explain_opts *o)
{
    return pk_memory_budget(o->mem_limit);
}

size_t pk_run_explain_bytes(const pk_run *run, size_t Q, const pk_explain_opts *o)
{
    const pk_model *m = pk_run_model(run);
    if (pk_explain_needs_backward(pk_run_optim(run))) {
        size_t qb, seg;
        pk_explain_opts so = sweep_opts(o);
        size_t out = output_bytes(m, Q, pk_run_n_train(run), o);
        return max_size(pk_explain_backward_plan(run, Q, &so, memory_limit(o), out, &qb, &seg),
                        out + paper_bytes(run, Q, o));
    }
    size_t Qb = default_block(run, Q, o, memory_limit(o));
    return output_bytes(m, Q, pk_run_n_train(run), o) +
           max_size(work_bytes(m, m->n_in, batch_cap(run), Qb, o), paper_bytes(run, Q, o));
}

/* Say what does not fit, and which of the user's options would make it fit. */
static pk_status too_big(const pk_run *run, size_t Q, const pk_explain_opts *o, size_t need, size_t limit)
{
    const pk_model *m = pk_run_model(run);
    size_t N = pk_run_n_train(run), B = batch_cap(run);
    char hints[512] = "";
    size_t k = 0;
    pk_explain_opts t = *o;
    if (o->want_kernel && o->mode == PK_KMODE_FULL) {
        t.mode = PK_KMODE_TRACE;
        if (output_bytes(m, Q, N, &t) + work_bytes(m, m->n_in, B, 1, &t) <= limit)
            k += (size_t)snprintf(hints + k, sizeof hints - k, "; the trace mode (mode trace) fits");
    }
    t = *o;
    if (o->want_kernel) {
        t.want_kernel = 0;
        if (output_bytes(m, Q, N, &t) + work_bytes(m, m->n_in, B, 1, &t) <= limit)
            k += (size_t)snprintf(hints + k, sizeof hints - k, "; no path kernel (want_kernel 0) fits");
    }
    t = *o;
    size_t q = Q;
    while (q > 1 && output_bytes(m, q, N, &t) + work_bytes(m, m->n_in, B, 1, &t) > limit) q /= 2;
    if (q < Q && output_bytes(m, q, N, &t) + work_bytes(m, m->n_in, B, 1, &t) <= limit)
        k += (size_t)snprintf(hints + k, sizeof hints - k, "; at most %zu queries fit (Q %zu)", q, q);
    return pk_fail(PK_ERR_INPUT, "explain needs %.1f MiB for %zu queries x %zu training examples, "
                   "more than the %.1f MiB allowed (mem_limit)%s",
                   (double)need / 1048576.0, Q, N, (double)limit / 1048576.0, k ? hints : "; use fewer queries");
}

/* ---------------------------------------------------------------- explain */

/* What explain_forward adds per evaluated row: a tape of rows (a query at
 * a node), the deltas of its target, and for each row its query and its
 * weight f (-eta_t / |B_t| times the node's weight). */
typedef struct fwork {
    pk_tape *qt;                          /* rows at their nodes                       */
    double *dq[PK_MAX_MODEL_LAYERS];      /* their target's deltas (Rb, C, out_l)      */
    double *S, *D, *A, *SK, *DK;          /* side products (Rb C, B), (Rb, B), kernel  */
    double *X;                            /* (Rb, d) the rows' queries, gathered       */
    double *Y;                            /* (Rb, ty) their targets, gathered          */
    double *R;                            /* (Rb, outputs) the target's seeds dg/df    */
    double *at;                           /* (Rb) the rows' own nodes                  */
    double *f;                            /* (Rb) the rows' weights                    */
    uint32_t *q;                          /* (Rb) the rows' queries (in all Q)         */
    size_t *grp;                          /* (Rb + 1) runs of rows of one query        */
    pk_rowsum rs;                         /* gradient-row layers: the nodes summed     */
    double *U;                            /* (B, rs.nV) the batch's rows               */
} fwork;

/* phi_i(x)_k += f S for the rows of w's groups ng (S (rows, C, nb): the
 * rows' products with the batch idx): the rows of one query in order, the
 * queries in parallel. */
static void add_products(const fwork *w, size_t ng, const uint32_t *idx, size_t nb, pk_explain *e)
{
    size_t N = e->N, C = e->C, n = w->grp[ng];
    #pragma omp parallel for schedule(static) if (n * C * nb >= PK_PAR_MIN)
    for (size_t g = 0; g < ng; g++)
        for (size_t x = w->grp[g]; x < w->grp[g + 1]; x++) {
            double f = w->f[x], *sum = e->contrib_sum + (size_t)w->q[x] * C;
            for (size_t k = 0; k < C; k++) {
                const double *Sr = w->S + (x * C + k) * nb;
                double acc = 0;
                for (size_t j = 0; j < nb; j++) acc += Sr[j];
                sum[k] += f * acc;
                if (e->contrib) {
                    double *ph = e->contrib + (size_t)w->q[x] * N * C + k;
                    for (size_t j = 0; j < nb; j++) ph[(size_t)idx[j] * C] += f * Sr[j];
                }
            }
        }
}

/* phi_i(x)_k += f <J_{x,k}(node), g_i(t)> (and the contribution kernel)
 * for the n rows on w->qt of the block from query q0: the rows of one
 * query are consecutive and added in order, the queries in parallel; the
 * gradient-row layers' share waits in w->rs for the step's end (close_rows). */
static pk_status add_rows(const pk_model *m, const pk_explain_opts *o, fwork *w, size_t n, size_t q0,
                          const pk_side *train_loss, const pk_side *train_out, const uint32_t *idx, size_t nb,
                          pk_explain *e)
{
    size_t N = e->N, kr = kernel_rows(m, o), ng = 0;
    for (size_t x = 0; x < n; x++)
        if (!x || w->q[x] != w->q[x - 1]) w->grp[ng++] = x;
    w->grp[ng] = n;
    pk_side qs = pk_side_target(m, w->qt, w->dq, &o->target);
    qs.by_rows = w->rs.nV > 0;
    pk_side_product(m, &qs, train_loss, w->S, nb, 0, w->A, w->D);
    add_products(w, ng, idx, nb, e);
    pk_status s = qs.by_rows ? pk_rowsum_add(&w->rs, m, &qs, n, w->q, q0, w->f) : PK_OK;
    if (s || !o->want_kernel) return s;
    /* K^c(x, x_i) += (eta/|B|) c_q J_x(node) J_{x_i}(w_t)^T (the outputs' target) */
    pk_side qk = pk_side_outputs(m, w->qt, w->dq, kr == 1);
    pk_side_product(m, &qk, train_out, w->SK, nb, 0, w->A, w->DK);
    #pragma omp parallel for schedule(static) if (n * kr * nb * kr >= PK_PAR_MIN)
    for (size_t g = 0; g < ng; g++)
        for (size_t x = w->grp[g]; x < w->grp[g + 1]; x++)
            for (size_t k = 0; k < kr; k++) {
                const double *Sr = w->SK + (x * kr + k) * nb * kr;
                double *Kx = e->kernel + (size_t)w->q[x] * N * kr * kr + k * kr, fk = -w->f[x];
                for (size_t j = 0; j < nb; j++)
                    for (size_t k2 = 0; k2 < kr; k2++) Kx[(size_t)idx[j] * kr * kr + k2] += fk * Sr[j * kr + k2];
            }
    return PK_OK;
}

/* The step's share of the gradient-row layers for the nq queries of the
 * block from q0 (pk_rowsum), one run of rows a query. */
static pk_status close_rows(const pk_model *m, fwork *w, const double *Xq, size_t q0, size_t nq, const uint32_t *idx,
                            size_t nb, pk_explain *e)
{
    pk_status s = pk_rowsum_close(&w->rs, m, Xq + q0 * m->n_in, nq, w->U, nb, w->S);
    if (s) return s;
    for (size_t x = 0; x < nq; x++) {
        w->q[x] = (uint32_t)(q0 + x);
        w->f[x] = 1.0;
        w->grp[x] = x;
    }
    w->grp[nq] = nq;
    add_products(w, nq, idx, nb, e);
    return PK_OK;
}

/* The forward sweep of gd and sgd runs (MATH.md section 3): the replay's
 * training side at w_t, shared by every block of Qb queries, against the
 * query side at each node: shared nodes of the rule for the queries whose
 * integrand is smooth along the step, nodes of their own on every piece for
 * the others (under the exact rule split at their kinks, MATH.md section 12;
 * for the margin target also where their runner-up changes, section 11).
 * Every row is seeded by its target. Adds to e's contributions, sums and
 * kernel (allocated and zeroed by the caller); *pieces: the pieces of every
 * query and step. */
static pk_status explain_forward(pk_run *run, const double *Xq, size_t Q, const pk_explain_opts *o, size_t Qb,
                                 pk_explain *e, double *pieces)
{
    const pk_model *m = pk_run_model(run);
    size_t C = e->C, d = m->n_in, B = batch_cap(run), kr = kernel_rows(m, o), P = m->n_params;
    pk_loss loss = pk_run_loss(run);
    size_t ty = loss == PK_LOSS_MSE ? m->n_out : 1;
    fwork w;
    memset(&w, 0, sizeof w);
    size_t Rb = pk_quad_rows(&o->quad, Qb); /* rows at once: Qb, or more under the exact rule */
    w.qt = pk_tape_new(m, Rb);
    if (w.qt) w.qt->queries = 1;
    double *dB[PK_MAX_MODEL_LAYERS] = {0};
    int have_dq = !pk_deltas_new(m, Rb, w.dq), have_dB = o->want_kernel ? !pk_deltas_new(m, B, dB) : 0;
    w.S = pk_alloc(Rb * C, B * sizeof *w.S);
    w.D = pk_alloc(Rb * C, B * sizeof *w.D);
    w.A = pk_alloc(Rb, B * sizeof *w.A);
    w.SK = o->want_kernel ? pk_alloc(Rb * kr, B * kr * sizeof *w.SK) : NULL;
    w.DK = o->want_kernel ? pk_alloc(Rb * kr, B * kr * sizeof *w.DK) : NULL;
    w.X = pk_alloc(Rb, d * sizeof *w.X);
    w.Y = pk_alloc(Rb, ty * sizeof *w.Y);
    w.R = pk_alloc(Rb, m->n_out * sizeof *w.R);
    w.at = pk_alloc(Rb, sizeof *w.at);
    w.f = pk_alloc(Rb, sizeof *w.f);
    w.q = pk_alloc(Rb, sizeof *w.q);
    w.grp = pk_alloc(Rb + 1, sizeof *w.grp);
    double *Dt = pk_alloc(P, sizeof *Dt); /* (P) D_t */
    int have_rs = !pk_rowsum_init(&w.rs, m, Rb, C, B);
    w.U = w.rs.nV ? pk_alloc(B, w.rs.nV * sizeof *w.U) : NULL;
    /* the exact rule of an MLP: each query's pieces walked in order (sweep.c) */
    pk_sweep *sp = pk_sweep_serves(m, &o->quad, &o->target, o->want_kernel) ?
                   pk_sweep_new(m, &o->target, Qb, B) : NULL;
    pk_nodes nd;
    memset(&nd, 0, sizeof nd);
    pk_status s = PK_OK;
    if ((o->want_kernel && (!have_dB || !w.SK || !w.DK)) || !w.qt || !have_dq || !w.S || !w.D || !w.A || !w.X ||
        !w.Y || !w.R || !w.at || !w.f || !w.q || !w.grp || !Dt || !have_rs || (w.rs.nV && !w.U) ||
        (!sp && pk_sweep_serves(m, &o->quad, &o->target, o->want_kernel)))
        s = PK_ERR_NOMEM;
    *pieces = 0;
    pk_replay r = {0};
    if (!s) s = pk_replay_begin(&r, run, 0, o->progress, o->ctx);
    while (!s && pk_replay_next(&r)) {
        const uint32_t *idx = r.idx;
        size_t nb = r.nb;
        pk_side train_loss = pk_side_loss(m, r.st.tape), train_out = {0};
        if (o->want_kernel) {
            pk_model_output_deltas(m, r.w, r.st.tape, dB);
            train_out = pk_side_outputs(m, r.st.tape, dB, kr == 1);
        }
        double scale = r.lr / (double)nb;  /* eta_t / |B_t| */
        for (size_t j = 0; j < P; j++) Dt[j] = r.w_next[j] - r.w[j];
        if (w.rs.nV && (s = pk_rowsum_batch(&w.rs, m, &train_loss, w.U))) break;
        for (size_t q0 = 0; !s && q0 < Q; q0 += Qb) {
            size_t nq = Q - q0 < Qb ? Q - q0 : Qb;
            const double *yb = o->y ? o->y + q0 * ty : NULL;
            if (sp) {
                double pc = 0;
                if ((s = pk_sweep_step(sp, m, r.w, Dt, Xq + q0 * d, nq, yb, ty, &o->target, NULL, &train_loss, nb, w.S,
                                       &pc)))
                    break;
                *pieces += pc;
                for (size_t x = 0; x < nq; x++) {
                    w.q[x] = (uint32_t)(q0 + x);
                    w.f[x] = -scale;
                    w.grp[x] = x;
                }
                w.grp[nq] = nq;
                add_products(&w, nq, idx, nb, e);
                continue;
            }
            if ((s = pk_nodes_step(&nd, m, &o->quad, 0, r.w, Dt, Xq + q0 * d, nq))) break;
            if ((s = pk_nodes_target(&nd, m, &o->target, yb, ty, r.w, Dt, Xq + q0 * d, nq, w.qt))) break;
            *pieces += (double)nd.pieces;
            /* the shared nodes: the queries u, gathered (inputs and targets) */
            for (size_t x = 0; x < nd.nu; x++) {
                size_t q = q0 + nd.u[x];
                memcpy(w.X + x * d, Xq + q * d, d * sizeof *w.X);
                if (yb) memcpy(w.Y + x * ty, o->y + q * ty, ty * sizeof *w.Y);
                w.q[x] = (uint32_t)q;
            }
            for (size_t node = 0; !s && nd.nu && node < nd.k; node++) {
                /* phi_i(x)_k -= (eta/|B|) c_q <J_{x,k}(w_t + s_q D_t), g_i(t)> */
                const double *wn = pk_replay_node(&r, nd.s[node]);
                pk_model_forward(m, wn, w.X, nd.nu, w.qt);
                /* the target's deltas at the node (MATH.md section 11) */
                s = pk_target_deltas(m, wn, w.qt, &o->target, loss, yb ? w.Y : NULL, w.R, w.dq);
                for (size_t x = 0; x < nd.nu; x++) w.f[x] = -scale * nd.c[node];
                if (!s) s = add_rows(m, o, &w, nd.nu, q0, &train_loss, &train_out, idx, nb, e);
            }
            /* the rows at nodes of their own, Rb at a time at w_t + s D_t each */
            for (size_t r0 = 0; !s && r0 < nd.R; r0 += Rb) {
                size_t nr = nd.R - r0 < Rb ? nd.R - r0 : Rb;
                for (size_t x = 0; x < nr; x++) {
                    size_t q = q0 + nd.re[r0 + x];
                    memcpy(w.X + x * d, Xq + q * d, d * sizeof *w.X);
                    if (yb) memcpy(w.Y + x * ty, o->y + q * ty, ty * sizeof *w.Y);
                    w.at[x] = nd.rs[r0 + x];
                    w.q[x] = (uint32_t)q;
                    w.f[x] = -scale * nd.rc[r0 + x];
                }
                if ((s = pk_tape_along(w.qt, m, Dt, w.at))) break;
                pk_model_forward(m, r.w, w.X, nr, w.qt);
                s = pk_target_deltas(m, r.w, w.qt, &o->target, loss, yb ? w.Y : NULL, w.R, w.dq);
                pk_tape_along(w.qt, m, NULL, NULL);
                if (!s) s = add_rows(m, o, &w, nr, q0, &train_loss, &train_out, idx, nb, e);
            }
            if (!s && w.rs.nV) s = close_rows(m, &w, Xq, q0, nq, idx, nb, e);
        }
    }
    s = pk_replay_end(&r, s);
    pk_tape_free(w.qt);
    if (have_dq) pk_deltas_free(m, w.dq);
    if (have_dB) pk_deltas_free(m, dB);
    free(w.S); free(w.D); free(w.A); free(w.SK); free(w.DK); free(w.X); free(w.Y); free(w.R); free(w.at); free(w.f);
    free(w.q); free(w.grp); free(w.U);
    pk_rowsum_free(&w.rs);
    free(Dt);
    pk_nodes_free(&nd);
    pk_sweep_free(sp);
    return s;
}

pk_status pk_run_explain(pk_run *run, const double *Xq, size_t Q, const pk_explain_opts *o,
                         pk_explain *e)
{
    memset(e, 0, sizeof *e);
    double t_start = pk_seconds();
    const pk_model *m = pk_run_model(run);
    const pk_optim *op = pk_run_optim(run);
    if (!pk_quad_given(&o->quad)) return pk_fail(PK_ERR_INPUT, "no quadrature rule given (quad)");
    char why[512];
    if (o->quad.exact && pk_quad_exact_refusal(m, why, sizeof why))
        return pk_fail(PK_ERR_INPUT, "%s: the rule %s (quad): %s", pk_run_dir(run), o->quad.name, why);
    pk_status s = pk_target_check(&o->target, m->n_out, pk_run_loss(run), o->y, Q);
    if (s) return s;
    if (o->target.kind != PK_TARGET_OUTPUTS && o->want_kernel) {
        char name[32];
        return pk_fail(PK_ERR_INPUT, "target %s: the path kernel belongs to the outputs; ask for no kernel "
                       "(want_kernel 0) with any other target", pk_target_name(&o->target, name, sizeof name));
    }
    /* C: the target's columns (the network's outputs for the default target) */
    size_t N = pk_run_n_train(run), C = pk_target_columns(&o->target, m->n_out), T = pk_run_steps(run), P = m->n_params;
    size_t d = m->n_in, B = batch_cap(run), kr = kernel_rows(m, o);
    size_t limit = memory_limit(o), Qb = default_block(run, Q, o, limit);
    /* momentum, Adam, AdamW and weight decay: the backward sweep of backward.c */
    int back = pk_explain_needs_backward(op);
    size_t back_Qb = 0, back_seg = 0;
    pk_explain_opts so = sweep_opts(o);
    if (back) {
        size_t out = output_bytes(m, Q, N, o);
        size_t need = max_size(pk_explain_backward_plan(run, Q, &so, limit, out, &back_Qb, &back_seg),
                               out + paper_bytes(run, Q, o));
        if (need > limit) {
            pk_explain_opts one = so;
            one.block = 1;
            size_t qb1, seg1, out1 = output_bytes(m, 1, N, o);
            size_t need1 = max_size(pk_explain_backward_plan(run, 1, &one, limit, out1, &qb1, &seg1),
                                    out1 + paper_bytes(run, 1, o));
            const char *fits = need1 <= limit
                                   ? "; use fewer queries, no path kernel (want_kernel 0) or a larger memory budget "
                                     "(mem_limit)"
                                   : "";
            return pk_fail(PK_ERR_INPUT, "explain of a %s run%s keeps a dense %zu x %zu matrix per query: it needs %.1f MiB "
                           "for %zu queries (%zu per block, %zu steps per segment), more than the %.1f MiB allowed "
                           "(mem_limit); one query needs %.1f MiB%s",
                           pk_optim_name(op->kind), op->weight_decay != 0.0 ? " with weight decay" : "", C, P,
                           (double)need / 1048576.0, Q, back_Qb, back_seg, (double)limit / 1048576.0,
                           (double)need1 / 1048576.0, fits);
        }
    } else {
        size_t need = output_bytes(m, Q, N, o) + max_size(work_bytes(m, d, B, Qb, o), paper_bytes(run, Q, o));
        if (need > limit) return too_big(run, Q, o, need, limit);
    }

    const pk_data *train;
    s = pk_run_train_data(run, &train);
    if (s) return s;

    e->Q = Q; e->N = N; e->C = C; e->mode = kr > 1 ? PK_KMODE_FULL : PK_KMODE_TRACE;
    e->steps = T;
    snprintf(e->quad, sizeof e->quad, "%s", o->quad.name);
    e->pred = pk_alloc(Q * C, sizeof(double));
    e->bias = pk_alloc(Q * C, sizeof(double));
    e->contrib_sum = pk_calloc(Q * C, sizeof(double));
    e->regularisation = pk_calloc(Q * C, sizeof(double));
    if (o->want_contrib) e->contrib = pk_calloc(Q * N, C * sizeof(double));
    if (o->want_kernel) e->kernel = pk_calloc(Q * N, kr * kr * sizeof(double));
    double *w = pk_alloc(P, sizeof *w);
    double *F = pk_alloc(Q ? Q : 1, m->n_out * sizeof *F); /* (Q, outputs) the network's, then the target's */
    if (!e->pred || !e->bias || !e->contrib_sum || !e->regularisation || (o->want_contrib && !e->contrib) ||
        (o->want_kernel && !e->kernel) || !w || !F)
        s = PK_ERR_NOMEM;
    if (!s) s = pk_run_weights(run, 0, w);
    if (!s) s = pk_model_predict(m, w, Xq, Q, F);
    if (!s) pk_target_values(&o->target, pk_run_loss(run), F, o->y, Q, m->n_out, e->bias);
    /* each sweep ends with its own bit-for-bit check of the replay; the
     * sweeps add the contribution kernel (want_kernel and batch_kernel)
     * into e->kernel, the paper's kernel is computed after them */
    double *kernel = e->kernel;
    if (!so.want_kernel) e->kernel = NULL;
    double pieces = 0;
    if (!s) s = back ? pk_explain_backward(run, Xq, Q, &so, back_Qb, back_seg, e, &pieces)
                     : explain_forward(run, Xq, Q, &so, Qb, e, &pieces);
    if (!s && o->quad.exact) {
        e->pieces = Q && T ? pieces / ((double)Q * (double)T) : 1.0;
        e->piece_nodes = pk_quad_piece_nodes(&o->quad, m, 0);
    }
    e->kernel = kernel;
    if (!s && o->want_kernel && !o->batch_kernel)
        s = pk_path_kernel_mem(run, Xq, Q, train->x, N, e->mode, &o->quad, o->progress, o->ctx,
                               max_size(limit - output_bytes(m, Q, N, o), 1), e->kernel);
    if (!s) s = pk_run_weights(run, T, w);
    if (!s) s = pk_model_predict(m, w, Xq, Q, F);
    if (!s) pk_target_values(&o->target, pk_run_loss(run), F, o->y, Q, m->n_out, e->pred);
    if (!s) {
        double num = 0, den = 0;
        for (size_t i = 0; i < Q * C; i++) {
            double moved = e->pred[i] - e->bias[i];
            double gap = fabs(moved - e->contrib_sum[i] - e->regularisation[i]);
            /* fmax drops NaN: a non-finite gap must make the check fail */
            num = isnan(gap) || isnan(num) ? NAN : fmax(num, gap);
            den = fmax(den, fabs(moved));
        }
        e->max_abs_err = num;
        e->max_rel_err = den > 0 ? num / den : num;
    }
    free(w);
    free(F);
    e->seconds = pk_seconds() - t_start;
    if (s) pk_explain_free(e);
    return s;
}
