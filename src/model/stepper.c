/* stepper.c -- one gradient evaluation: the mean loss over a batch of
 * training examples and its gradient (a forward and a backward pass), with
 * the batch gathered into scratch. Training takes its steps with it, and
 * every replay of a recorded step (run/replay.c) repeats them bit for bit. */
#include "model/model.h"

#include <string.h>

pk_status pk_stepper_init(pk_stepper *s, const pk_model *m, pk_loss loss, const pk_data *data, size_t cap,
                          uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->seed = seed;
    s->m = m;
    s->loss = loss;
    s->data = data;
    s->cap = cap;
    s->tape = pk_tape_new(m, cap);
    s->R = pk_alloc(cap, m->n_out * sizeof(double));
    if (cap < data->n) { /* batches smaller than the data are gathered */
        s->xb = pk_alloc(cap, data->d * sizeof(double));
        s->yb = pk_alloc(cap, data->ty * sizeof(double));
        if (!s->xb || !s->yb) { pk_stepper_free(s); return PK_ERR_NOMEM; }
    }
    if (!s->tape || !s->R) { pk_stepper_free(s); return PK_ERR_NOMEM; }
    return PK_OK;
}

void pk_stepper_free(pk_stepper *s)
{
    pk_tape_free(s->tape);
    free(s->xb);
    free(s->yb);
    free(s->R);
    memset(s, 0, sizeof *s);
}

double pk_stepper_grad(pk_stepper *s, const double *w, const uint32_t *idx, size_t nb, double *G)
{
    const pk_data *D = s->data;
    const double *x = D->x, *y = D->y;
    /* sorted distinct indices from 0 to n-1 are the whole data set in order */
    if (idx && nb == D->n && idx[0] == 0 && idx[nb - 1] == nb - 1) idx = NULL;
    if (idx) { /* gather the batch rows */
        for (size_t b = 0; b < nb; b++) {
            memcpy(s->xb + b * D->d, D->x + (size_t)idx[b] * D->d, D->d * sizeof(double));
            memcpy(s->yb + b * D->ty, D->y + (size_t)idx[b] * D->ty, D->ty * sizeof(double));
        }
        x = s->xb;
        y = s->yb;
    }
    const pk_model *m = s->m;
    size_t C = m->n_out;
    s->y = y;
    pk_tape *t = s->tape;
    t->train = 1; /* dropout masks of (seed, step, example) */
    t->seed = s->seed;
    t->step = s->step;
    t->idx = idx;
    pk_model_forward(m, w, x, nb, t);
    double loss = pk_loss_eval(s->loss, pk_tape_out(m, s->tape), y, nb, C, D->ty, s->R);
    pk_model_backward(m, w, s->tape, s->R, 1.0 / (double)nb, G);
    return loss;
}


double pk_stepper_step(pk_stepper *s, const pk_optim *o, size_t t, double lr, const uint32_t *idx, size_t nb,
                       double *w, double *state, double *G)
{
    s->step = t;
    double loss = pk_stepper_grad(s, w, idx, nb, G);
    pk_optim_step(o, t, lr, s->m->n_params, w, state, G, NULL);
    return loss;
}
