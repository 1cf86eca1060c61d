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
                           const double *y, double *R, double *const *deltas)
{
    if (g->kind == PK_TARGET_OUTPUTS) return pk_model_output_deltas(m, w, t, deltas);
    size_t n = t->n, C = m->n_out, ty = loss == PK_LOSS_MSE ? C : 1;
    const double *f = pk_tape_out(m, t);
    for (size_t i = 0; i < n; i++) pk_target_row(g, 0, loss, f + i * C, y ? y + i * ty : NULL, C, R + i * C);
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
