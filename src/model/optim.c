/* optim.c -- gd, sgd, heavy-ball momentum, Adam and AdamW updates (with
 * PyTorch's weight decay), and the
 * learning-rate schedules. State is a flat (state_len, P) block. */
#include "model/model.h"

#include <math.h>
#include <string.h>

static const char *const optim_names[] = {"gd", "sgd", "momentum", "adam", "adamw"};
static const char *const sched_names[] = {"constant", "step", "cosine"};

pk_optim pk_optim_defaults(void)
{
    pk_optim o = {0};
    o.kind = PK_OPTIM_GD;
    o.lr = 0.1;
    o.momentum = 0.9;
    o.beta1 = 0.9;
    o.beta2 = 0.999;
    o.eps = 1e-8;
    o.schedule = PK_SCHED_CONSTANT;
    o.step_every = 100;
    o.gamma = 0.5;
    o.lr_min = 0.0;
    return o;
}

pk_status pk_optim_check(const pk_optim *o)
{
    if (!(o->lr > 0 && isfinite(o->lr)))
        return pk_fail(PK_ERR_INPUT, "learning rate (lr) must be a positive number, got %g", o->lr);
    if (!(o->weight_decay >= 0 && isfinite(o->weight_decay)))
        return pk_fail(PK_ERR_INPUT, "weight decay (weight_decay) must be a non-negative number, got %g", o->weight_decay);
    if ((o->kind == PK_OPTIM_ADAM || o->kind == PK_OPTIM_ADAMW) &&
        !(o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 && o->beta2 < 1 && o->eps > 0))
        return pk_fail(PK_ERR_INPUT, "adam and adamw need 0 <= beta1, beta2 < 1 and eps > 0");
    if (o->kind == PK_OPTIM_MOMENTUM && !(o->momentum >= 0 && o->momentum < 1))
        return pk_fail(PK_ERR_INPUT, "momentum must be in [0, 1), got %g", o->momentum);
    return PK_OK;
}

const char *pk_optim_name(pk_optim_kind k) { return k <= PK_OPTIM_ADAMW ? optim_names[k] : "?"; }
const char *pk_schedule_name(pk_schedule s) { return s <= PK_SCHED_COSINE ? sched_names[s] : "?"; }

pk_status pk_optim_parse(const char *s, pk_optim_kind *k)
{
    for (int i = 0; i <= PK_OPTIM_ADAMW; i++)
        if (!strcmp(s, optim_names[i])) { *k = (pk_optim_kind)i; return PK_OK; }
    return pk_fail(PK_ERR_INPUT, "unknown optimiser '%s' (use gd, sgd, momentum, adam or adamw)", s);
}

pk_status pk_schedule_parse(const char *s, pk_schedule *k)
{
    for (int i = 0; i <= PK_SCHED_COSINE; i++)
        if (!strcmp(s, sched_names[i])) { *k = (pk_schedule)i; return PK_OK; }
    return pk_fail(PK_ERR_INPUT, "unknown schedule '%s' (use constant, step or cosine)", s);
}

size_t pk_optim_state_len(const pk_optim *o)
{
    return o->kind == PK_OPTIM_MOMENTUM ? 1 : (o->kind == PK_OPTIM_ADAM || o->kind == PK_OPTIM_ADAMW) ? 2 : 0;
}

double pk_optim_lr(const pk_optim *o, size_t t, size_t T)
{
    switch (o->schedule) {
    case PK_SCHED_CONSTANT: return o->lr;
    case PK_SCHED_STEP: return o->lr * pow(o->gamma, (double)(o->step_every ? t / o->step_every : 0));
    case PK_SCHED_COSINE:
        return o->lr_min + 0.5 * (o->lr - o->lr_min) * (1.0 + cos(M_PI * (double)t / (double)(T ? T : 1)));
    }
    return o->lr;
}

void pk_optim_step(const pk_optim *o, size_t t, double lr, size_t P, double *w,
                   double *state, const double *G, double *D)
{
    /* L2 weight decay as torch.optim.SGD/Adam(weight_decay=lambda): the
     * gradient used is g = G + lambda w; adamw decays w itself instead. */
    double wd = o->kind == PK_OPTIM_ADAMW ? 0.0 : o->weight_decay;
    switch (o->kind) {
    case PK_OPTIM_GD:
    case PK_OPTIM_SGD:
        for (size_t j = 0; j < P; j++) {
            double g = wd != 0.0 ? G[j] + wd * w[j] : G[j];
            double d = -lr * g;
            w[j] += d;
            if (D) D[j] = d;
        }
        break;
    case PK_OPTIM_MOMENTUM: { /* v <- mu v + g ; D = -eta v (MATH.md section 5) */
        double *v = state;
        for (size_t j = 0; j < P; j++) {
            double g = wd != 0.0 ? G[j] + wd * w[j] : G[j];
            v[j] = o->momentum * v[j] + g;
            double d = -lr * v[j];
            w[j] += d;
            if (D) D[j] = d;
        }
        break;
    }
    case PK_OPTIM_ADAM:
    case PK_OPTIM_ADAMW: { /* PyTorch's Adam / AdamW, step t+1, in its order of operations */
        double *m = state, *v = state + P;
        double b1 = o->beta1, b2 = o->beta2;
        double bc1 = 1.0 - pow(b1, (double)(t + 1)), bc2 = sqrt(1.0 - pow(b2, (double)(t + 1)));
        double step = lr / bc1;
        double decay = o->kind == PK_OPTIM_ADAMW ? 1.0 - lr * o->weight_decay : 1.0;
        for (size_t j = 0; j < P; j++) {
            double w0 = w[j];
            double g = wd != 0.0 ? G[j] + wd * w0 : G[j];
            if (decay != 1.0) w[j] = w0 * decay;   /* AdamW: param.mul_(1 - lr * wd) first */
            m[j] = b1 * m[j] + (1.0 - b1) * g;
            v[j] = b2 * v[j] + (1.0 - b2) * g * g;
            double d = -step * (m[j] / (sqrt(v[j]) / bc2 + o->eps));
            w[j] += d;
            if (D) D[j] = decay != 1.0 ? w[j] - w0 : d;
        }
        break;
    }
    }
}

size_t pk_optim_batch(const pk_optim *o, size_t n) { return o->batch && o->batch < n ? o->batch : n; }
