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

pk_status pk_stepper_gather(pk_stepper *s)
{
    if (s->xb) return PK_OK;
    s->xb = pk_alloc(s->cap, s->data->d * sizeof(double));
    s->yb = pk_alloc(s->cap, s->data->ty * sizeof(double));
    if (s->xb && s->yb) return PK_OK;
    pk_stepper_free(s);
    return PK_ERR_NOMEM;
}

void pk_stepper_free(pk_stepper *s)
{
    pk_tape_free(s->tape);
    free(s->xb);
    free(s->yb);
    free(s->R);
    memset(s, 0, sizeof *s);
}

/* The batch's features and targets, gathered into scratch unless the batch
 * is the whole data set in order; the tape set up for step s->step. */
static const double *batch_rows(pk_stepper *s, const uint32_t **idx, size_t nb)
{
    const pk_data *D = s->data;
    const double *x = D->x, *y = D->y;
    /* the indices 0, 1, ..., n-1 are the whole data set in order (a
     * recorded batch may repeat an example: all of them are checked) */
    if (*idx && nb == D->n) {
        size_t i = 0;
        while (i < nb && (*idx)[i] == i) i++;
        if (i == nb) *idx = NULL;
    }
    if (*idx) { /* gather the batch rows */
        for (size_t b = 0; b < nb; b++) {
            memcpy(s->xb + b * D->d, D->x + (size_t)(*idx)[b] * D->d, D->d * sizeof(double));
            memcpy(s->yb + b * D->ty, D->y + (size_t)(*idx)[b] * D->ty, D->ty * sizeof(double));
        }
        x = s->xb;
        y = s->yb;
    }
    s->y = y;
    pk_tape *t = s->tape;
    t->train = 1; /* dropout masks of (seed, step, example) */
    t->seed = s->seed;
    t->step = s->step;
    t->idx = *idx;
    return x;
}

double pk_stepper_grad(pk_stepper *s, const double *w, const uint32_t *idx, size_t nb, double *G)
{
    const double *x = batch_rows(s, &idx, nb);
    const pk_model *m = s->m;
    pk_model_forward(m, w, x, nb, s->tape);
    double loss = pk_loss_eval(s->loss, pk_tape_out(m, s->tape), s->y, nb, m->n_out, s->data->ty, s->R);
    pk_model_backward(m, w, s->tape, s->R, 1.0 / (double)nb, G);
    return loss;
}

double pk_stepper_loss(pk_stepper *s, const double *w, const uint32_t *idx, size_t nb)
{
    const double *x = batch_rows(s, &idx, nb);
    pk_model_forward(s->m, w, x, nb, s->tape);
    return pk_loss_eval(s->loss, pk_tape_out(s->m, s->tape), s->y, nb, s->m->n_out, s->data->ty, NULL);
}

double pk_stepper_step(pk_stepper *s, const pk_optim *o, size_t t, double lr, const uint32_t *idx, size_t nb,
                       double *w, double *state, double *G)
{
    s->step = t;
    double loss = pk_stepper_grad(s, w, idx, nb, G);
    pk_optim_step(o, t, lr, s->m->n_params, w, state, G, NULL);
    return loss;
}
