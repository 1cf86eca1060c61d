/* model.h -- the model's internals: one gradient evaluation over a batch (stepper.c) and the activation derivatives kernels need. Not installed. */
#ifndef PK_MODEL_H
#define PK_MODEL_H

#include "io/io.h"

/* What one gradient evaluation needs: the model, the loss, the data and the
 * scratch buffers for a batch of up to `cap` examples. run/train.c owns it; the
 * run directory replays steps with it (pk_run_weights). */
typedef struct pk_stepper {
    const pk_mlp *m;
    pk_loss loss;
    const pk_data *data;
    size_t cap;
    pk_tape *tape;
    double *xb;   /* (cap, d)   gathered batch features */
    double *yb;   /* (cap, ty)  gathered batch targets  */
    double *R;    /* (cap, C)   residuals dl/df         */
    const double *y; /* (nb, ty) the last batch's targets (its features: tape->a[0]) */
} pk_stepper;

pk_status pk_stepper_init(pk_stepper *s, const pk_mlp *m, pk_loss loss, const pk_data *data, size_t cap);
void pk_stepper_free(pk_stepper *s);
/* Batch gradient G (P) of the mean loss over the examples idx[0..nb) at w;
 * idx == NULL means all examples in order. Returns the batch loss. */
double pk_stepper_grad(pk_stepper *s, const double *w, const uint32_t *idx, size_t nb, double *G);
/* Step t as training takes it: G at w as pk_stepper_grad, then the
 * optimiser's update w += D_t with its state (S, P) updated. Returns the
 * batch loss. */
double pk_stepper_step(pk_stepper *s, const pk_optim *o, size_t t, double lr, const uint32_t *idx, size_t nb,
                       double *w, double *state, double *G);

/* Examples in one step's batch at most, for n training examples: the
 * optimiser's batch size, or n for full batches. */
size_t pk_optim_batch(const pk_optim *o, size_t n);

/* out (n, dims[l+1]) = act'(z_l) for the n examples on the tape (model.c). */
void pk_mlp_act_grad(const pk_mlp *m, const pk_tape *t, size_t l, double *out);

#endif
