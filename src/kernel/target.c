/* target.c -- the targets g(f(x)) that a decomposition explains (MATH.md
 * section 11): their values, their gradients dg/df, and the query-side
 * deltas of a backward pass seeded with dg/df at a quadrature node, which
 * the sweeps of path.c, backward.c and attribution/topk.c use in place of
 * the per-output deltas. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

pk_status pk_target_parse(const char *s, pk_target *t)
{
    memset(t, 0, sizeof *t);
    if (!strcmp(s, "outputs")) t->kind = PK_TARGET_OUTPUTS;
    else if (!strcmp(s, "label")) t->kind = PK_TARGET_LABEL;
    else if (!strcmp(s, "margin")) t->kind = PK_TARGET_MARGIN;
    else if (!strcmp(s, "loss")) t->kind = PK_TARGET_LOSS;
    else if (!strncmp(s, "output:", 7)) {
        const char *v = s + 7;
        char *end;
        if (*v < '0' || *v > '9') goto bad;
        unsigned long long c = strtoull(v, &end, 10);
        if (*end) goto bad;
        t->kind = PK_TARGET_OUTPUT;
        t->output = (size_t)c;
    } else
        goto bad;
    return PK_OK;
bad:
    return pk_fail(PK_ERR_INPUT, "unknown target '%s' (use outputs, output:C with C an output index, label, margin "
                   "or loss)", s);
}

const char *pk_target_name(const pk_target *t, char *buf, size_t len)
{
    static const char *const names[] = {"outputs", "output", "label", "margin", "loss"};
    if (t->kind == PK_TARGET_OUTPUT) snprintf(buf, len, "output:%zu", t->output);
    else snprintf(buf, len, "%s", t->kind <= PK_TARGET_LOSS ? names[t->kind] : "?");
    return buf;
}

size_t pk_target_columns(const pk_target *t, size_t C) { return t->kind == PK_TARGET_OUTPUTS ? C : 1; }

int pk_target_needs_labels(const pk_target *t)
{
    return t->kind == PK_TARGET_LABEL || t->kind == PK_TARGET_MARGIN || t->kind == PK_TARGET_LOSS;
}

pk_status pk_target_check(const pk_target *t, size_t C, pk_loss loss, const double *y, size_t n)
{
    char name[32];
    pk_target_name(t, name, sizeof name);
    if (t->kind == PK_TARGET_OUTPUT && t->output >= C)
        return pk_fail(PK_ERR_INPUT, "target %s: the network has outputs 0..%zu", name, C - 1);
    if ((t->kind == PK_TARGET_LABEL || t->kind == PK_TARGET_MARGIN) && (loss != PK_LOSS_SOFTMAX || C < 2))
        return pk_fail(PK_ERR_INPUT, "target %s needs class labels and one output per class (softmax); this run has "
                       "%s loss with %zu output%s: use output:C or loss", name, pk_loss_name(loss), C, C == 1 ? "" : "s");
    if (!pk_target_needs_labels(t)) return PK_OK;
    if (!y && n) return pk_fail(PK_ERR_INPUT, "target %s needs the queries' labels (y)", name);
    size_t ty = loss == PK_LOSS_MSE ? C : 1;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < ty; k++) {
            double v = y[i * ty + k];
            int ok = loss == PK_LOSS_SOFTMAX    ? v >= 0 && v < (double)C && v == floor(v)
                     : loss == PK_LOSS_LOGISTIC ? v == 0.0 || v == 1.0
                                                : isfinite(v);
            if (!ok)
                return pk_fail(PK_ERR_INPUT, "target %s: query %zu has label %g, not %s", name, i, v,
                               loss == PK_LOSS_SOFTMAX    ? "a class of the run"
                               : loss == PK_LOSS_LOGISTIC ? "0 or 1 (logistic)"
                                                          : "a finite number");
        }
    return PK_OK;
}

double pk_target_row(const pk_target *t, size_t out, pk_loss loss, const double *f, const double *y, size_t C,
                     double *r)
{
    if (t->kind == PK_TARGET_LOSS) return pk_loss_eval(loss, f, y, 1, C, loss == PK_LOSS_MSE ? C : 1, r);
    size_t c = t->kind == PK_TARGET_OUTPUT ? t->output : t->kind == PK_TARGET_OUTPUTS ? out : (size_t)y[0];
    if (r) {
        memset(r, 0, C * sizeof *r);
        r[c] = 1.0;
    }
    if (t->kind != PK_TARGET_MARGIN) return f[c];
    size_t o = c == 0 ? 1 : 0; /* the largest other output, the first on ties */
    for (size_t k = o + 1; k < C; k++)
        if (k != c && f[k] > f[o]) o = k;
    if (r) r[o] = -1.0;
    return f[c] - f[o];
}

void pk_target_values(const pk_target *t, pk_loss loss, const double *f, const double *y, size_t n, size_t C,
                      double *g)
{
    if (t->kind == PK_TARGET_OUTPUTS) {
        memmove(g, f, n * C * sizeof *g);
        return;
    }
    size_t ty = loss == PK_LOSS_MSE ? C : 1;
    for (size_t i = 0; i < n; i++) g[i] = pk_target_row(t, 0, loss, f + i * C, y ? y + i * ty : NULL, C, NULL);
}

pk_status pk_target_deltas(const pk_model *m, const double *w, pk_tape *t, const pk_target *g, pk_loss loss,
                           const double *y, double *R, double *const *deltas, const pk_step_nodes *sn, size_t k)
{
    if (g->kind == PK_TARGET_OUTPUTS) return pk_model_output_deltas(m, w, t, deltas);
    size_t n = t->n, C = m->n_out, ty = loss == PK_LOSS_MSE ? C : 1;
    const double *f = pk_tape_out(m, t);
    for (size_t i = 0; i < n; i++) {
        int mine = !sn || (sn->owner[k] < 0 ? !sn->kinked[i] : (size_t)sn->owner[k] == i);
        if (mine) pk_target_row(g, 0, loss, f + i * C, y ? y + i * ty : NULL, C, R + i * C);
        else memset(R + i * C, 0, C * sizeof *R);
    }
    pk_model_backward(m, w, t, R, 1.0, NULL);
    for (size_t l = 0; l < m->n_weight; l++)
        memcpy(deltas[l], t->g[m->weight[l]], n * pk_model_weight(m, l)->out * sizeof(double));
    return PK_OK;
}

pk_side pk_side_target(const pk_model *m, const pk_tape *t, double *const *deltas, const pk_target *g)
{
    pk_side s = pk_side_outputs(m, t, deltas, 0);
    if (g->kind != PK_TARGET_OUTPUTS) {
        s.rows = 1;
        s.unit = 0;
    }
    return s;
}

/* The largest output other than c, the first on ties (the margin's). */
static size_t runner_up(const double *f, size_t C, size_t c)
{
    size_t o = c == 0 ? 1 : 0;
    for (size_t k = o + 1; k < C; k++)
        if (k != c && f[k] > f[o]) o = k;
    return o;
}

/* A bracket [l, r] of the step with the runner-up at both ends. */
typedef struct bracket { double l, r; size_t kl, kr; } bracket;

static int by_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Bisection stops when the bracket of a change is this short (a step is
 * [0, 1]): the integrand on the wrong side of it is O(its length) small. */
#define KINK_TOL 1e-10

void pk_step_nodes_free(pk_step_nodes *sn)
{
    free(sn->s); free(sn->c); free(sn->owner); free(sn->kinked);
    memset(sn, 0, sizeof *sn);
}

/* Append the rule on the pieces of [0, 1] between the (sorted) cuts, for owner. */
static int add_pieces(pk_step_nodes *o, size_t *cap, const pk_quad *q, const double *cut, size_t ncut, long owner)
{
    for (size_t p = 0; p <= ncut; p++) {
        double a = p ? cut[p - 1] : 0.0, b = p < ncut ? cut[p] : 1.0;
        if (!(b > a)) continue;
        if (o->n + q->n > *cap) {
            size_t nc = 2 * *cap + q->n;
            double *s = realloc(o->s, nc * sizeof *s);
            if (!s) return 1;
            o->s = s;
            double *c = realloc(o->c, nc * sizeof *c);
            if (!c) return 1;
            o->c = c;
            long *ow = realloc(o->owner, nc * sizeof *ow);
            if (!ow) return 1;
            o->owner = ow;
            *cap = nc;
        }
        for (size_t j = 0; j < q->n; j++, o->n++) {
            o->s[o->n] = a + (b - a) * q->s[j];
            o->c[o->n] = (b - a) * q->c[j];
            o->owner[o->n] = owner;
        }
    }
    return 0;
}

pk_status pk_target_nodes(const pk_model *m, const pk_target *g, const pk_quad *q, const double *w,
                          const double *w_next, const double *X, const double *y, size_t n, pk_tape *t,
                          double *scratch, pk_step_nodes *out)
{
    size_t C = m->n_out, d = m->n_in, P = m->n_params, cap = 0, ccap = 16, ncut = 0;
    memset(out, 0, sizeof *out);
    out->kinked = pk_calloc(n ? n : 1, 1);
    double *cut = pk_alloc(ccap, sizeof *cut);
    size_t *r0 = pk_alloc(n ? n : 1, sizeof *r0), *r1 = pk_alloc(n ? n : 1, sizeof *r1); /* (n) runner-ups */
    pk_status st = out->kinked && cut && r0 && r1 ? PK_OK : PK_ERR_NOMEM;
    int margin = g->kind == PK_TARGET_MARGIN && n;
    /* the runner-up of every query at both ends of the step */
    for (int end = 0; !st && margin && end < 2; end++) {
        pk_model_forward(m, end ? w_next : w, X, n, t);
        const double *f = pk_tape_out(m, t);
        for (size_t i = 0; i < n; i++) (end ? r1 : r0)[i] = runner_up(f + i * C, C, (size_t)y[i]);
    }
    for (size_t i = 0; !st && margin && i < n; i++) out->kinked[i] = r0[i] != r1[i];
    /* the queries without a change share the rule on the whole step */
    if (!st && add_pieces(out, &cap, q, NULL, 0, -1)) st = PK_ERR_NOMEM;
    /* each query with one: where it changes, by bisection on the identity of
     * the runner-up, and the rule on its own pieces */
    for (size_t i = 0; !st && margin && i < n; i++) {
        if (!out->kinked[i]) continue;
        bracket stack[64];
        size_t top = 0;
        ncut = 0;
        stack[top++] = (bracket){0.0, 1.0, r0[i], r1[i]};
        while (!st && top) {
            bracket b = stack[--top];
            if (b.kl == b.kr) continue;
            if (b.r - b.l <= KINK_TOL || top + 2 > 64) {
                if (ncut == ccap) {
                    double *more = realloc(cut, 2 * ccap * sizeof *cut);
                    if (!more) { st = PK_ERR_NOMEM; break; }
                    cut = more;
                    ccap *= 2;
                }
                cut[ncut++] = 0.5 * (b.l + b.r);
                continue;
            }
            double mid = 0.5 * (b.l + b.r);
            pk_model_forward(m, pk_node_weights(w, w_next, P, mid, scratch), X + i * d, 1, t);
            size_t km = runner_up(pk_tape_out(m, t), C, (size_t)y[i]);
            stack[top++] = (bracket){mid, b.r, km, b.kr};
            stack[top++] = (bracket){b.l, mid, b.kl, km};
        }
        qsort(cut, ncut, sizeof *cut, by_double);
        if (!st && add_pieces(out, &cap, q, cut, ncut, (long)i)) st = PK_ERR_NOMEM;
    }
    free(cut); free(r0); free(r1);
    if (st) pk_step_nodes_free(out);
    return st;
}
