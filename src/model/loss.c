/* loss.c -- mean losses over a batch and their per-example residuals
 * r_i = dl/df (MATH.md section 1). */
#include "model/model.h"

#include <math.h>
#include <string.h>

static const char *const loss_names[] = {"mse", "logistic", "softmax"};

const char *pk_loss_name(pk_loss l) { return l <= PK_LOSS_SOFTMAX ? loss_names[l] : "?"; }

pk_status pk_loss_parse(const char *s, pk_loss *l)
{
    for (int i = 0; i <= PK_LOSS_SOFTMAX; i++)
        if (!strcmp(s, loss_names[i])) { *l = (pk_loss)i; return PK_OK; }
    return pk_fail(PK_ERR_INPUT, "unknown loss '%s' (use mse, logistic or softmax)", s);
}

pk_status pk_loss_outputs(pk_loss l, const pk_data *data, size_t *n_out)
{
    const char *src = data->source ? data->source : "data";
    switch (l) {
    case PK_LOSS_MSE:
        *n_out = data->ty;
        return PK_OK;
    case PK_LOSS_LOGISTIC:
        if (data->ty != 1) return pk_fail(PK_ERR_INPUT, "%s: logistic loss needs one target column, found %zu", src, data->ty);
        for (size_t i = 0; i < data->n; i++)
            if (data->y[i] != 0.0 && data->y[i] != 1.0)
                return pk_fail(PK_ERR_INPUT, "%s: example %zu: logistic loss needs targets 0 or 1, found %g", src, i, data->y[i]);
        *n_out = 1;
        return PK_OK;
    case PK_LOSS_SOFTMAX: {
        pk_status s = pk_data_classes(data, n_out);
        if (s) return s;
        if (*n_out < 2) return pk_fail(PK_ERR_INPUT, "%s: softmax needs at least 2 classes, found %zu", src, *n_out);
        return PK_OK;
    }
    }
    return pk_fail(PK_ERR_INPUT, "unknown loss");
}

static inline double softplus(double z) { return z > 0 ? z + log1p(exp(-z)) : log1p(exp(z)); }

double pk_loss_eval(pk_loss l, const double *f, const double *y, size_t n, size_t C,
                    size_t ty, double *R)
{
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double *fi = f + i * C, *yi = y + i * ty;
        double *ri = R ? R + i * C : NULL;
        switch (l) {
        case PK_LOSS_MSE: /* 0.5 |f - y|^2 ; r = f - y */
            for (size_t k = 0; k < C; k++) {
                double e = fi[k] - yi[k];
                total += 0.5 * e * e;
                if (ri) ri[k] = e;
            }
            break;
        case PK_LOSS_LOGISTIC: /* softplus(f) - y f ; r = sigmoid(f) - y */
            total += softplus(fi[0]) - yi[0] * fi[0];
            if (ri) ri[0] = 1.0 / (1.0 + exp(-fi[0])) - yi[0];
            break;
        case PK_LOSS_SOFTMAX: { /* logsumexp(f) - f_y ; r = softmax(f) - onehot(y) */
            double mx = fi[0];
            for (size_t k = 1; k < C; k++) mx = fi[k] > mx ? fi[k] : mx;
            double s = 0.0;
            for (size_t k = 0; k < C; k++) s += exp(fi[k] - mx);
            size_t c = (size_t)yi[0];
            total += mx + log(s) - fi[c];
            if (ri) {
                for (size_t k = 0; k < C; k++) ri[k] = exp(fi[k] - mx) / s;
                ri[c] -= 1.0;
            }
            break;
        }
        }
    }
    return n ? total / (double)n : 0.0;
}

double pk_loss_accuracy(pk_loss l, const double *f, const double *y, size_t n, size_t C)
{
    if (l == PK_LOSS_MSE || !n) return NAN;
    size_t hit = 0;
    for (size_t i = 0; i < n; i++) {
        const double *fi = f + i * C;
        size_t pred = 0;
        if (l == PK_LOSS_LOGISTIC) pred = fi[0] > 0;
        else
            for (size_t k = 1; k < C; k++) if (fi[k] > fi[pred]) pred = k;
        hit += (double)pred == y[i];
    }
    return (double)hit / (double)n;
}
