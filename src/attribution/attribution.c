/* attribution.c -- what the attribution commands compute on top of the exact
 * path representation (MATH.md section 3, "Self-influence"): exact
 * self-influence by replaying the trajectory, per-example losses and
 * gradient norms, TracIn's checkpoint self-influence, rankings, ROC-AUC and
 * seeded label flips. The inner products of one example's gradients at two
 * weights are the layers' shares restricted to the diagonal
 * (pk_side_diagonal; for a dense layer MATH.md section 4's
 * (s_w^2 a'.a + s_b^2) (delta'.delta)). */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

pk_status pk_si_form_parse(const char *s, pk_si_form *f)
{
    if (!strcmp(s, "loss")) *f = PK_SI_LOSS;
    else if (!strcmp(s, "kernel")) *f = PK_SI_KERNEL;
    else return pk_fail(PK_ERR_INPUT, "unknown self-influence form '%s' (use loss or kernel)", s);
    return PK_OK;
}

/* The side `at` of the batch at w_t gathered to the rows of a node tape:
 * row x is example ex[x] of the batch; g holds per layer (n, in_l) inputs
 * and (n, len_l) deltas. */
static pk_side gather_side(const pk_model *m, const pk_side *at, const uint32_t *ex, size_t n, double *const *ga,
                           double *const *gd)
{
    pk_side g = *at;
    g.n = n;
    for (size_t l = 0; l < m->n_weight; l++) {
        size_t in = pk_model_weight(m, l)->in, len = pk_model_weight(m, l)->out * at->rows * at->fold;
        for (size_t x = 0; x < n; x++) {
            memcpy(ga[l] + x * in, at->a[l] + (size_t)ex[x] * in, in * sizeof(double));
            memcpy(gd[l] + x * len, at->delta[l] + (size_t)ex[x] * len, len * sizeof(double));
        }
        g.a[l] = ga[l];
        g.delta[l] = gd[l];
    }
    return g;
}

pk_status pk_run_self_influence(pk_run *run, pk_si_form form, const pk_quad *q, double *si)
{
    const pk_model *m = pk_run_model(run);
    const pk_optim *op = pk_run_optim(run);
    if (op->kind != PK_OPTIM_GD && op->kind != PK_OPTIM_SGD)
        return pk_fail(PK_ERR_INPUT, "%s: self-influence of %s runs is not yet supported (gd and sgd only)",
                       pk_run_dir(run), pk_optim_name(op->kind));
    if (!pk_quad_given(q)) return pk_fail(PK_ERR_INPUT, "no quadrature rule given (quad)");
    char why[512];
    if (q->exact && pk_quad_exact_refusal(m, why, sizeof why))
        return pk_fail(PK_ERR_INPUT, "%s: the rule %s (quad): %s", pk_run_dir(run), q->name, why);
    const pk_data *train;
    pk_status s = pk_run_train_data(run, &train);
    if (s) return s;
    size_t N = pk_run_n_train(run), C = m->n_out, ty = train->ty, d = m->n_in, P = m->n_params;
    size_t B = pk_run_batch_cap(run);
    memset(si, 0, N * sizeof *si);

    double *Rn = pk_alloc(B, C * sizeof *Rn), *diag = pk_alloc(B, sizeof *diag);
    pk_tape *nt = pk_tape_new(m, B);
    double *dB[PK_MAX_MODEL_LAYERS] = {0}, *dN[PK_MAX_MODEL_LAYERS] = {0};
    int have_d = 0;
    if (form == PK_SI_KERNEL) {
        have_d = !pk_deltas_new(m, B, dB);
        if (have_d && pk_deltas_new(m, B, dN)) { pk_deltas_free(m, dB); have_d = 0; }
    }
    /* the exact rule (MATH.md section 12): the batch's nodes, D_t, the rows
     * at their own nodes gathered (inputs, targets, the side at w_t); the
     * loss form integrates a gradient of the loss (degree 2L - 1 for mse):
     * a kernel's nodes per piece */
    pk_nodes nd;
    memset(&nd, 0, sizeof nd);
    double *Dt = NULL, *Xg = NULL, *Yg = NULL, *at = NULL, *ga[PK_MAX_MODEL_LAYERS] = {0}, *gd[PK_MAX_MODEL_LAYERS] = {0};
    uint32_t *ex = pk_alloc(B, sizeof *ex); /* (B) rows' examples in the batch */
    int ok = ex != NULL;
    if (q->exact) {
        Dt = pk_alloc(P, sizeof *Dt);
        Xg = pk_alloc(B, d * sizeof *Xg);
        Yg = pk_alloc(B, (ty ? ty : 1) * sizeof *Yg);
        at = pk_alloc(B, sizeof *at);
        ok = ok && Dt && Xg && Yg && at;
        for (size_t l = 0; ok && l < m->n_weight; l++) {
            size_t len = pk_model_weight(m, l)->out * (form == PK_SI_KERNEL ? C : 1);
            ga[l] = pk_alloc(B, pk_model_weight(m, l)->in * sizeof(double));
            gd[l] = pk_alloc(B, len * sizeof(double));
            ok = ga[l] && gd[l];
        }
    }
    if (!ok || !Rn || !diag || !nt || (form == PK_SI_KERNEL && !have_d)) s = PK_ERR_NOMEM;
    pk_replay r = {0};
    if (!s) s = pk_replay_begin(&r, run, 0, NULL, NULL);
    while (!s && pk_replay_next(&r)) {
        const uint32_t *idx = r.idx;
        size_t nb = r.nb;
        /* the training side at w_t: activations and loss-weighted deltas, as in training */
        const double *xb = r.st.tape->x, *yb = r.st.y;
        if (form == PK_SI_KERNEL) pk_model_output_deltas(m, r.w, r.st.tape, dB);
        pk_side at_t = form == PK_SI_KERNEL ? pk_side_outputs(m, r.st.tape, dB, 1) : pk_side_loss(m, r.st.tape);
        double scale = r.lr / (double)nb;
        for (size_t j = 0; Dt && j < P; j++) Dt[j] = r.w_next[j] - r.w[j];
        if ((s = pk_nodes_step(&nd, m, q, form == PK_SI_LOSS, r.w, Dt, xb, nb))) break;
        int all = nd.nu == nb;
        /* shared nodes: every example of the batch evaluated, those with a kink not added */
        for (size_t node = 0; node < nd.k + (nd.R ? (nd.R + B - 1) / B : 0); node++) {
            size_t n = nb, r0 = (node - nd.k) * B;
            const double *wn = r.w, *xs = xb, *ys = yb;
            pk_side side_t = at_t;
            if (node < nd.k) wn = pk_replay_node(&r, nd.s[node]);
            else { /* the exact rule's own rows, B at a time at w_t + s D_t */
                n = nd.R - r0 < B ? nd.R - r0 : B;
                for (size_t x = 0; x < n; x++) {
                    ex[x] = nd.re[r0 + x];
                    at[x] = nd.rs[r0 + x];
                    memcpy(Xg + x * d, xb + (size_t)ex[x] * d, d * sizeof *Xg);
                    memcpy(Yg + x * ty, yb + (size_t)ex[x] * ty, ty * sizeof *Yg);
                }
                xs = Xg;
                ys = Yg;
                side_t = gather_side(m, &at_t, ex, n, ga, gd);
                if ((s = pk_tape_along(nt, m, Dt, at))) break;
            }
            pk_model_forward(m, wn, xs, n, nt);
            if (form == PK_SI_KERNEL) {
                pk_model_output_deltas(m, wn, nt, dN);
                pk_side at_node = pk_side_outputs(m, nt, dN, 1);
                pk_side_diagonal(m, &at_node, &side_t, diag);
            } else {
                /* the example's own loss gradient at the node */
                pk_loss_eval(pk_run_loss(run), pk_tape_out(m, nt), ys, n, C, ty, Rn);
                pk_model_backward(m, wn, nt, Rn, 1.0, NULL);
                pk_side at_node = pk_side_loss(m, nt);
                pk_side_diagonal(m, &at_node, &side_t, diag);
            }
            pk_tape_along(nt, m, NULL, NULL);
            if (node < nd.k) {
                for (size_t b = 0, u = 0; b < nb; b++) {
                    if (!all && (u >= nd.nu || nd.u[u] != b)) continue; /* a kink: its own rows */
                    u++;
                    si[idx[b]] += scale * nd.c[node] * diag[b];
                }
            } else
                for (size_t x = 0; x < n; x++) si[idx[ex[x]]] += scale * nd.rc[r0 + x] * diag[x];
        }
    }
    s = pk_replay_end(&r, s);
    pk_tape_free(nt);
    if (have_d) { pk_deltas_free(m, dB); pk_deltas_free(m, dN); }
    for (size_t l = 0; l < m->n_weight; l++) { free(ga[l]); free(gd[l]); }
    free(Rn); free(diag); free(Dt); free(Xg); free(Yg); free(at); free(ex);
    pk_nodes_free(&nd);
    return s;
}

pk_status pk_model_example_stats(const pk_model *m, pk_loss loss, const double *w, const pk_data *data,
                                 double *loss_i, double *gnorm2)
{
    size_t n = data->n, C = m->n_out, d = data->d, ty = data->ty;
    size_t block = n < 1024 ? (n ? n : 1) : 1024;
    pk_tape *t = pk_tape_new(m, block);
    double *R = pk_alloc(block, C * sizeof *R);
    if (!t || !R) { pk_tape_free(t); free(R); return PK_ERR_NOMEM; }
    for (size_t i0 = 0; i0 < n; i0 += block) {
        size_t nb = n - i0 < block ? n - i0 : block;
        pk_model_forward(m, w, data->x + i0 * d, nb, t);
        for (size_t j = 0; j < nb; j++) {
            double l = pk_loss_eval(loss, pk_tape_out(m, t) + j * C, data->y + (i0 + j) * ty, 1, C, ty, R + j * C);
            if (loss_i) loss_i[i0 + j] = l;
        }
        if (gnorm2) {
            pk_model_backward(m, w, t, R, 1.0, NULL);
            pk_side at = pk_side_loss(m, t);
            pk_side_diagonal(m, &at, &at, gnorm2 + i0);
        }
    }
    pk_tape_free(t);
    free(R);
    return PK_OK;
}

pk_status pk_run_tracin(pk_run *run, size_t n_ckpt, double *score)
{
    if (!n_ckpt) return pk_fail(PK_ERR_INPUT, "TracIn needs at least one checkpoint (n_ckpt)");
    const pk_model *m = pk_run_model(run);
    const pk_data *train;
    pk_status s = pk_run_train_data(run, &train);
    if (s) return s;
    size_t N = train->n, T = pk_run_steps(run);
    if (!T) return pk_fail(PK_ERR_INPUT, "%s: the run has no steps", pk_run_dir(run));
    double *w = pk_alloc(m->n_params, sizeof *w), *g2 = pk_alloc(N ? N : 1, sizeof *g2);
    if (!w || !g2) s = PK_ERR_NOMEM;
    memset(score, 0, N * sizeof *score);
    for (size_t j = 0; !s && j < n_ckpt; j++) {
        size_t t = (j + 1) * T / n_ckpt;           /* evenly spaced, the last one the final weights */
        double lr = pk_run_lr(run, t < T ? t : T - 1);
        s = pk_run_weights(run, t, w);
        if (!s) s = pk_model_example_stats(m, pk_run_loss(run), w, train, NULL, g2);
        for (size_t i = 0; !s && i < N; i++) score[i] += lr * g2[i];
    }
    free(w);
    free(g2);
    return s;
}

/* --------------------------------------------------------------- ranking */

typedef struct rank_item { double v; size_t i; } rank_item;

static int by_value_desc(const void *pa, const void *pb)
{
    const rank_item *a = pa, *b = pb;
    if (a->v > b->v) return -1;
    if (a->v < b->v) return 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

pk_status pk_rank(const double *v, size_t n, size_t stride, int sign, size_t k, size_t *idx, size_t *n_out)
{
    rank_item *it = pk_alloc(n ? n : 1, sizeof *it);
    if (!it) return PK_ERR_NOMEM;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        double x = v[i * stride];
        if (sign > 0 ? x > 0 : sign < 0 ? x < 0 : !isnan(x)) {
            it[m].v = sign < 0 ? -x : x;
            it[m].i = i;
            m++;
        }
    }
    qsort(it, m, sizeof *it, by_value_desc);
    size_t out = k < m ? k : m;
    for (size_t j = 0; j < out; j++) idx[j] = it[j].i;
    *n_out = out;
    free(it);
    return PK_OK;
}

static int by_value_asc(const void *pa, const void *pb)
{
    const rank_item *a = pa, *b = pb;
    return a->v < b->v ? -1 : a->v > b->v;
}

double pk_auc(const double *score, const unsigned char *positive, size_t n)
{
    rank_item *it = malloc((n ? n : 1) * sizeof *it);
    if (!it) return NAN;
    size_t npos = 0;
    for (size_t i = 0; i < n; i++) {
        it[i].v = score[i];
        it[i].i = i;
        npos += positive[i] != 0;
    }
    if (!npos || npos == n) { free(it); return NAN; }
    qsort(it, n, sizeof *it, by_value_asc);
    double rank_sum = 0;  /* 1-based ranks, ties get the average rank */
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b + 1 < n && it[b + 1].v == it[a].v) b++;
        double r = 0.5 * ((double)a + (double)b) + 1.0;
        for (size_t j = a; j <= b; j++)
            if (positive[it[j].i]) rank_sum += r;
        a = b + 1;
    }
    free(it);
    double P = (double)npos, Nn = (double)(n - npos);
    return (rank_sum - P * (P + 1) / 2) / (P * Nn);
}

pk_status pk_data_flip_labels(pk_data *data, size_t C, double frac, uint64_t seed, unsigned char *flipped,
                              size_t *n_flipped)
{
    if (!(frac > 0 && frac < 1))
        return pk_fail(PK_ERR_INPUT, "the fraction of labels to flip (frac) must be in (0, 1), got %g", frac);
    if (C < 2) return pk_fail(PK_ERR_INPUT, "flipping labels needs at least 2 classes");
    if (data->ty != 1) return pk_fail(PK_ERR_INPUT, "flipping labels needs one target column of class labels");
    size_t n = data->n, k = (size_t)floor(frac * (double)n + 0.5);
    if (!k) return pk_fail(PK_ERR_INPUT, "flipping %g of %zu examples flips none", frac, n);
    if (n > UINT32_MAX) return pk_fail(PK_ERR_INPUT, "too many examples");
    uint32_t *perm = pk_alloc(n, sizeof *perm);
    if (!perm) return PK_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    pk_rng r;
    pk_rng_seed(&r, seed ^ 0x666c69706c61626cULL);
    pk_rng_shuffle(&r, perm, n);
    memset(flipped, 0, n);
    for (size_t j = 0; j < k; j++) {
        size_t i = perm[j], y = (size_t)data->y[i];
        data->y[i] = (double)((y + 1 + pk_rng_below(&r, C - 1)) % C);  /* uniform among the others */
        flipped[i] = 1;
    }
    free(perm);
    *n_flipped = k;
    return PK_OK;
}
