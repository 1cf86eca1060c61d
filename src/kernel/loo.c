/* loo.c -- leave-one-out diagnostics of a run's own kernels (MATH.md
 * section 7, "Leave-one-out"): kernel ridge regression on the training set
 * with one of the run's kernels, the exact residual of every example on the
 * machine refitted without it (pk_krr_loo), and the ridge chosen by the
 * mean squared leave-one-out residual over a grid. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

/* Ridges tried by default, relative to the mean diagonal of the kernel. */
static const double default_grid[] = {1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0};

pk_loo_opts pk_loo_opts_defaults(void)
{
    pk_loo_opts o;
    memset(&o, 0, sizeof o);
    o.kernel = PK_KERNEL_TANGENT_FINAL;
    o.mode = PK_KMODE_TRACE;
    pk_quad_parse("gl2", &o.quad);
    o.ridge = NAN;
    return o;
}

void pk_loo_free(pk_loo *l)
{
    if (!l) return;
    free(l->grid); free(l->grid_err); free(l->grid_acc); free(l->grid_score);
    free(l->Y); free(l->alpha); free(l->resid); free(l->score); free(l->pred); free(l->K);
    memset(l, 0, sizeof *l);
}

/* The targets of the machine, Y (n, C), from the run's labels: one-hot
 * (softmax), the 0/1 label itself (logistic), the targets (mse). */
static void loo_targets(pk_loss loss, const pk_data *d, size_t C, double *Y)
{
    for (size_t i = 0; i < d->n; i++)
        for (size_t c = 0; c < C; c++)
            Y[i * C + c] = loss == PK_LOSS_SOFTMAX ? (double)(d->y[i * d->ty] == (double)c) : d->y[i * d->ty + c];
}

/* From the residuals: the score of every example (the residual of its own
 * class: softmax; |r_i|: logistic; |r_i|^2: mse), the leave-one-out
 * predicted class and the accuracy; returns the mean of |r_i|^2. */
static double loo_summarise(pk_loss loss, const pk_data *d, size_t C, const double *Y, const double *resid,
                            double *score, double *pred, double *acc)
{
    size_t n = d->n, right = 0;
    double err = 0;
    for (size_t i = 0; i < n; i++) {
        const double *r = resid + i * C, *y = Y + i * C;
        double e = 0;
        for (size_t c = 0; c < C; c++) e += r[c] * r[c];
        err += e;
        double p = NAN;
        if (loss == PK_LOSS_SOFTMAX) { /* yhat_{-i} = y_i - r_i; its largest output (the first on ties) */
            size_t best = 0;
            for (size_t c = 1; c < C; c++)
                if (y[c] - r[c] > y[best] - r[best]) best = c;
            p = (double)best;
            if (score) score[i] = r[(size_t)d->y[i * d->ty]];
        } else if (loss == PK_LOSS_LOGISTIC) {
            p = y[0] - r[0] > 0.5 ? 1.0 : 0.0;
            if (score) score[i] = fabs(r[0]);
        } else if (score) score[i] = e;
        if (pred) pred[i] = p;
        right += p == d->y[i * d->ty];
    }
    *acc = loss == PK_LOSS_MSE ? NAN : (double)right / (double)n;
    return err / (double)n;
}

pk_status pk_run_loo(pk_run *run, const pk_loo_opts *o, pk_loo *out)
{
    memset(out, 0, sizeof *out);
    const pk_data *train;
    pk_status s = pk_run_train_data(run, &train);
    if (s) return s;
    const pk_model *m = pk_run_model(run);
    pk_loss loss = pk_run_loss(run);
    size_t n = train->n, C = pk_model_n_outputs(m);
    int full = o->mode == PK_KMODE_FULL;
    if (o->kernel == PK_KERNEL_PATH_BATCH)
        return pk_fail(PK_ERR_INPUT, "leave-one-out needs a symmetric positive semi-definite kernel: the contribution "
                       "kernel (path-batch) is neither; use path (the paper's path kernel), tangent-final, "
                       "tangent-init or ntk");
    if (full && (o->kernel == PK_KERNEL_NTK || o->kernel == PK_KERNEL_RBF))
        return pk_fail(PK_ERR_INPUT, "the %s kernel is the same for every output (K times the identity): its C x C "
                       "blocks give the trace mode's residuals; use the trace mode (mode trace)",
                       pk_kernel_kind_name(o->kernel));
    if (n < 2) return pk_fail(PK_ERR_INPUT, "leave-one-out needs at least 2 training examples, the run has %zu", n);
    if (!isnan(o->ridge) && !(o->ridge > 0 && isfinite(o->ridge)))
        return pk_fail(PK_ERR_INPUT, "the ridge (ridge %g) must be > 0", o->ridge);
    for (size_t g = 0; g < o->n_grid; g++)
        if (!(o->grid[g] > 0 && isfinite(o->grid[g])))
            return pk_fail(PK_ERR_INPUT, "the ridge grid (ridge_grid) holds %g: every ridge must be > 0", o->grid[g]);
    /* one Cholesky of the whole (m, m) system, m = n or n C: the kernel and
     * the factor, both float64, must fit the budget (no approximation) */
    size_t one = pk_krr_loo_bytes(n, C, o->mode), budget = pk_memory_budget(o->mem_limit), m_rows = n * (full ? C : 1);
    if ((double)one * 2 > (double)budget)
        return pk_fail(PK_ERR_INPUT, "leave-one-out on %zu examples%s solves one %zu x %zu system exactly: the kernel is "
                       "%.3g GB of float64 and its factor as much again, %.3g GB in all, more than the budget of %.3g "
                       "GB (mem_limit) (by default 3/4 of free memory). 60,000 examples would take 28.8 GB for the "
                       "traced kernel alone. Train on fewer examples%s; nothing approximate is offered",
                       n, full ? " in C x C blocks" : "", m_rows, m_rows, one / 1e9, 2.0 * one / 1e9, budget / 1e9,
                       full ? " or use the trace mode (mode trace)" : "");
    out->n = n;
    out->C = C;
    out->kernel = o->kernel;
    out->mode = o->mode;
    out->K = pk_alloc_big(m_rows * m_rows, sizeof *out->K);       /* (n, n) or (n, n, C, C) */
    out->Y = pk_alloc(n, C * sizeof *out->Y);            /* (n, C) */
    out->alpha = pk_alloc(n, C * sizeof *out->alpha);    /* (n, C) */
    out->resid = pk_alloc(n, C * sizeof *out->resid);    /* (n, C) */
    out->score = pk_alloc(n, sizeof *out->score);        /* (n) */
    out->pred = pk_alloc(n, sizeof *out->pred);          /* (n) */
    size_t G = isnan(o->ridge) ? (o->n_grid ? o->n_grid : sizeof default_grid / sizeof *default_grid) : 1;
    out->grid = pk_alloc(G, sizeof *out->grid);          /* (G) relative ridges */
    out->grid_err = pk_alloc(G, sizeof *out->grid_err);  /* (G) mean |r_i|^2 */
    out->grid_acc = pk_alloc(G, sizeof *out->grid_acc);  /* (G) leave-one-out accuracy */
    out->grid_score = pk_alloc(G, n * sizeof *out->grid_score); /* (G, n) */
    if (!out->K || !out->Y || !out->alpha || !out->resid || !out->score || !out->pred || !out->grid ||
        !out->grid_err || !out->grid_acc || !out->grid_score) { pk_loo_free(out); return PK_ERR_NOMEM; }
    out->n_grid = G;
    double t0 = pk_seconds();
    if (!full) s = pk_run_kernel(run, o->kernel, train->x, n, &o->quad, out->K);
    else if (o->kernel == PK_KERNEL_PATH)
        s = pk_path_kernel_mem(run, train->x, n, train->x, n, PK_KMODE_FULL, &o->quad, NULL, NULL,
                               budget > 2 * one + 1 ? budget - 2 * one : 1, out->K);
    else {
        double *w = pk_alloc(pk_model_n_params(m), sizeof *w); /* (P) */
        s = w ? pk_run_weights(run, o->kernel == PK_KERNEL_TANGENT_INIT ? 0 : pk_run_steps(run), w) : PK_ERR_NOMEM;
        if (!s) s = pk_kernel_tangent(m, w, train->x, n, train->x, n, PK_KMODE_FULL, out->K);
        free(w);
    }
    out->seconds_kernel = pk_seconds() - t0;
    t0 = pk_seconds();
    if (!s) { /* the scale of the grid: the mean of the diagonal entries of the (m, m) system */
        double sum = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t c = 0; c < (full ? C : 1); c++) sum += full ? out->K[((i * n + i) * C + c) * C + c] : out->K[i * n + i];
        out->mean_diag = sum / (double)m_rows;
        if (!(out->mean_diag > 0) || !isfinite(out->mean_diag))
            s = pk_fail(PK_ERR_NUMERIC, "the %s kernel's diagonal has mean %g: no ridge can be scaled to it",
                        pk_kernel_kind_name(o->kernel), out->mean_diag);
    }
    if (!s) loo_targets(loss, train, C, out->Y);
    /* the grid: each ridge's mean squared residual; the least wins (the first on ties) */
    /* the grid: each ridge's mean squared residual; the least wins (the first
     * on ties); its alpha and residuals are kept (one factorisation a ridge) */
    size_t best = 0;
    double *ga = pk_alloc(n, C * sizeof *ga), *gr = pk_alloc(n, C * sizeof *gr); /* (n, C) each: the ridge in hand */
    if (!s && (!ga || !gr)) s = PK_ERR_NOMEM;
    for (size_t g = 0; !s && g < G; g++) {
        out->grid[g] = !isnan(o->ridge) ? o->ridge / out->mean_diag : o->n_grid ? o->grid[g] : default_grid[g];
        double lam = !isnan(o->ridge) ? o->ridge : out->grid[g] * out->mean_diag; /* a given ridge as given */
        s = pk_krr_loo(out->K, n, C, o->mode, out->Y, lam, ga, gr);
        if (!s) out->grid_err[g] = loo_summarise(loss, train, C, out->Y, gr, out->grid_score + g * n,
                                                 NULL, &out->grid_acc[g]);
        if (!s && (g == 0 || out->grid_err[g] < out->grid_err[best])) {
            best = g;
            memcpy(out->alpha, ga, n * C * sizeof *ga);
            memcpy(out->resid, gr, n * C * sizeof *gr);
        }
    }
    free(ga);
    free(gr);
    if (!s) {
        out->chosen = best;
        out->ridge = !isnan(o->ridge) ? o->ridge : out->grid[best] * out->mean_diag;
    }
    if (!s) out->err = loo_summarise(loss, train, C, out->Y, out->resid, out->score, out->pred, &out->accuracy);
    out->seconds_solve = pk_seconds() - t0;
    if (!s && !o->keep_kernel) { free(out->K); out->K = NULL; }
    if (s) pk_loo_free(out);
    return s;
}
