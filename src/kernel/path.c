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

/* Gauss-Legendre nodes and weights on [0, 1] by Newton's method on P_K. */
static void gauss_legendre(size_t K, double *s, double *c)
{
    for (size_t i = 0; i < K; i++) {
        double x = cos(M_PI * ((double)i + 0.75) / ((double)K + 0.5)), dp = 1;
        for (int it = 0; it < 100; it++) {
            double p0 = 1, p1 = x;
            for (size_t k = 2; k <= K; k++) {
                double p2 = ((2.0 * (double)k - 1) * x * p1 - ((double)k - 1) * p0) / (double)k;
                p0 = p1;
                p1 = p2;
            }
            dp = (double)K * (x * p1 - p0) / (x * x - 1);
            double dx = p1 / dp;
            x -= dx;
            if (fabs(dx) < 1e-16) break;
        }
        s[K - 1 - i] = 0.5 * (x + 1);
        c[K - 1 - i] = 1.0 / ((1 - x * x) * dp * dp);  /* (2 / ((1-x^2) P'^2)) / 2 */
    }
}

pk_status pk_quad_parse(const char *name, pk_quad *q)
{
    memset(q, 0, sizeof *q);
    if (!strcmp(name, "left")) { q->n = 1; q->s[0] = 0; q->c[0] = 1; }
    else if (!strcmp(name, "mid")) { q->n = 1; q->s[0] = 0.5; q->c[0] = 1; }
    else if (!strncmp(name, "gl", 2) && name[2] >= '1' && name[2] <= '8' && !name[3]) {
        q->n = (size_t)(name[2] - '0');
        gauss_legendre(q->n, q->s, q->c);
    } else {
        return pk_fail(PK_ERR_INPUT, "unknown quadrature rule '%s' (use left, mid or gl1..gl8)", name);
    }
    snprintf(q->name, sizeof q->name, "%s", name);
    return PK_OK;
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
    size_t C = m->n_out, kr = kernel_rows(m, o), sd = pk_model_widths(m);
    int batch_kernel = o->want_kernel && o->batch_kernel;
    double b = 4.0 * (double)m->n_params;                        /* w, w_next, wq, G */
    b += (double)B * (double)(d + 3 * sd + C);                    /* stepper          */
    if (batch_kernel) b += (double)B * (double)(C * sd);          /* batch deltas     */
    b += (double)Qb * (double)(3 * sd) + (double)Qb * (double)(C * sd); /* query tape, deltas */
    b += 2.0 * (double)Qb * (double)C * (double)B + (double)Qb * (double)B; /* S, D, A */
    if (batch_kernel) b += 2.0 * (double)Qb * (double)kr * (double)B * (double)kr;
    b *= sizeof(double);
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

/* The forward sweep of gd and sgd runs (MATH.md section 3): the replay's
 * training side at w_t, shared by every block of Qb queries, against the
 * query side at each quadrature node. Adds to e's contributions, sums and
 * kernel (allocated and zeroed by the caller). */
static pk_status explain_forward(pk_run *run, const double *Xq, size_t Q, const pk_explain_opts *o, size_t Qb,
                                 pk_explain *e)
{
    const pk_model *m = pk_run_model(run);
    size_t N = e->N, C = e->C, d = m->n_in, B = batch_cap(run), kr = kernel_rows(m, o);
    pk_tape *qt = pk_tape_new(m, Qb);
    if (qt) qt->queries = 1;
    double *dq[PK_MAX_MODEL_LAYERS] = {0}, *dB[PK_MAX_MODEL_LAYERS] = {0};
    int have_dq = !pk_deltas_new(m, Qb, dq), have_dB = o->want_kernel ? !pk_deltas_new(m, B, dB) : 0;
    double *S = pk_alloc(Qb * C, B * sizeof *S), *D = pk_alloc(Qb * C, B * sizeof *D);
    double *A = pk_alloc(Qb, B * sizeof *A);
    double *R = pk_alloc(Qb, m->n_out * sizeof *R);  /* (Qb, outputs) the target's seeds dg/df */
    double *SK = o->want_kernel ? pk_alloc(Qb * kr, B * kr * sizeof *SK) : NULL;
    double *DK = o->want_kernel ? pk_alloc(Qb * kr, B * kr * sizeof *DK) : NULL;
    pk_status s = PK_OK;
    if ((o->want_kernel && (!have_dB || !SK || !DK)) || !qt || !have_dq || !S || !D || !A || !R) s = PK_ERR_NOMEM;
    size_t ty = pk_run_loss(run) == PK_LOSS_MSE ? m->n_out : 1;
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
        for (size_t q0 = 0; !s && q0 < Q; q0 += Qb) {
            size_t nq = Q - q0 < Qb ? Q - q0 : Qb;
            /* the rule, on the pieces of the step where the target's seed is smooth */
            pk_step_nodes sn;
            s = pk_target_nodes(m, &o->target, &o->quad, r.w, r.w_next, Xq + q0 * d, o->y ? o->y + q0 * ty : NULL, nq,
                                qt, r.node, &sn);
            for (size_t node = 0; !s && node < sn.n; node++) {
                double cq = sn.c[node];
                const double *wn = pk_replay_node(&r, sn.s[node]);
                pk_model_forward(m, wn, Xq + q0 * d, nq, qt);
                /* the target's deltas at the node (MATH.md section 11) */
                s = pk_target_deltas(m, wn, qt, &o->target, pk_run_loss(run), o->y ? o->y + q0 * ty : NULL, R, dq,
                                     &sn, node);
                if (s) break;
                /* phi_i(x)_k -= (eta/|B|) c_q <J_{x,k}(w_t + s_q D_t), g_i(t)> */
                pk_side qs = pk_side_target(m, qt, dq, &o->target);
                pk_side_product(m, &qs, &train_loss, S, nb, 0, A, D);
                double f = -scale * cq;
                #pragma omp parallel for schedule(static) if (nq * C * nb >= PK_PAR_MIN)
                for (size_t x = 0; x < nq; x++) {
                    double *sum = e->contrib_sum + (q0 + x) * C;
                    for (size_t k = 0; k < C; k++) {
                        const double *Sr = S + (x * C + k) * nb;
                        double acc = 0;
                        for (size_t j = 0; j < nb; j++) acc += Sr[j];
                        sum[k] += f * acc;
                        if (e->contrib) {
                            double *ph = e->contrib + (q0 + x) * N * C + k;
                            for (size_t j = 0; j < nb; j++) ph[(size_t)idx[j] * C] += f * Sr[j];
                        }
                    }
                }
                if (o->want_kernel) {
                    /* K^p(x, x_i) += (eta/|B|) c_q Jbar_x J_{x_i}(w_t)^T */
                    pk_side qk = pk_side_outputs(m, qt, dq, kr == 1);
                    pk_side_product(m, &qk, &train_out, SK, nb, 0, A, DK);
                    double fk = scale * cq;
                    #pragma omp parallel for schedule(static) if (nq * kr * nb * kr >= PK_PAR_MIN)
                    for (size_t x = 0; x < nq; x++)
                        for (size_t k = 0; k < kr; k++) {
                            const double *Sr = SK + (x * kr + k) * nb * kr;
                            double *Kx = e->kernel + (q0 + x) * N * kr * kr + k * kr;
                            for (size_t j = 0; j < nb; j++)
                                for (size_t k2 = 0; k2 < kr; k2++)
                                    Kx[(size_t)idx[j] * kr * kr + k2] += fk * Sr[j * kr + k2];
                        }
                }
            }
            pk_step_nodes_free(&sn);
        }
    }
    s = pk_replay_end(&r, s);
    pk_tape_free(qt);
    if (have_dq) pk_deltas_free(m, dq);
    if (have_dB) pk_deltas_free(m, dB);
    free(S); free(D); free(A); free(R); free(SK); free(DK);
    return s;
}

pk_status pk_run_explain(pk_run *run, const double *Xq, size_t Q, const pk_explain_opts *o,
                         pk_explain *e)
{
    memset(e, 0, sizeof *e);
    double t_start = pk_seconds();
    const pk_model *m = pk_run_model(run);
    const pk_optim *op = pk_run_optim(run);
    if (!o->quad.n) return pk_fail(PK_ERR_INPUT, "no quadrature rule given (quad)");
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
    if (!s) s = back ? pk_explain_backward(run, Xq, Q, &so, back_Qb, back_seg, e) : explain_forward(run, Xq, Q, &so, Qb, e);
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
