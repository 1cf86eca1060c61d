/* recorder.c -- a run whose steps another trainer took (a PyTorch loop):
 * the weights and optimiser state of every step as the trainer reports
 * them, its batches and learning rates, written as a run directory whose
 * replays read every w_{t+1} from the record (replay.c, MATH.md section 10). */
#include "run/run.h"

#include <math.h>
#include <string.h>

struct pk_recorder {
    char *dir, *model, *data_spec, *origin; /* owned copies of the caller's strings */
    const pk_data *train;  /* borrowed until pk_record_end                    */
    pk_train_opts o;       /* its strings point at the copies above           */
    pk_record_opts ro;
    pk_model *m;
    pk_stepper st;         /* the batch loss of each step (grown with the batch) */
    pk_traj tr;            /* lr, loss (T), off (T+1), idx: grown step by step */
    size_t cap_t, cap_idx; /* room in tr's arrays                              */
    size_t P, S, max_nb;
    double *w;             /* (P) the weights before the next step            */
};

pk_record_opts pk_record_opts_defaults(void)
{
    pk_record_opts r = {NULL, 0, 1e-6};
    return r;
}

void pk_record_free(pk_recorder *r)
{
    if (!r) return;
    pk_stepper_free(&r->st);
    pk_traj_free(&r->tr);
    pk_model_free(r->m);
    free(r->w);
    free(r->dir); free(r->model); free(r->data_spec); free(r->origin);
    free(r);
}

static int finite_all(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

pk_status pk_record_begin(const pk_data *train, const pk_train_opts *o, const pk_record_opts *ro, const double *w0,
                          pk_recorder **out)
{
    *out = NULL;
    if (!o->out_dir) return pk_fail(PK_ERR_INPUT, "a recording needs a run directory (out_dir)");
    if (!train->n) return pk_fail(PK_ERR_INPUT, "training set is empty");
    if (train->n > UINT32_MAX) return pk_fail(PK_ERR_INPUT, "training sets are limited to 2^32-1 examples");
    if (o->param != PK_PARAM_STANDARD)
        return pk_fail(PK_ERR_INPUT, "a recording takes the standard parameterisation (param), as PyTorch's layers are");
    if (!(ro->step_tol > 0 && isfinite(ro->step_tol)))
        return pk_fail(PK_ERR_INPUT, "the step tolerance (step_tol) must be a positive number, got %g", ro->step_tol);
    pk_status s = pk_optim_check(&o->optim);
    size_t C;
    if (!s) s = pk_loss_outputs(o->loss, train, &C);
    if (s) return s;
    pk_recorder *r = pk_calloc(1, sizeof *r);
    if (!r) return PK_ERR_NOMEM;
    r->train = train;
    r->o = *o;
    r->ro = *ro;
    r->dir = pk_strdup(o->out_dir);
    r->model = pk_strdup(o->model ? o->model : "");
    r->data_spec = o->data_spec ? pk_strdup(o->data_spec) : NULL;
    r->origin = ro->origin ? pk_strdup(ro->origin) : NULL;
    if (!r->dir || !r->model || (o->data_spec && !r->data_spec) || (ro->origin && !r->origin)) s = PK_ERR_NOMEM;
    r->o.out_dir = r->dir;
    r->o.model = r->model;
    r->o.data_spec = r->data_spec;
    r->ro.origin = r->origin;
    r->o.keep = 1;              /* every step's weights: nothing is replayed */
    r->o.steps = 0;
    r->o.seed = 0;
    r->o.init_dir = NULL;
    r->o.optim.batch = 0;       /* set when the recording ends */
    r->o.optim.schedule = PK_SCHED_CONSTANT; /* the steps' learning rates are in the trajectory */
    if (!s) s = pk_model_for_data(r->model, train, C, PK_PARAM_STANDARD, 1.0, 0.0, &r->m);
    for (size_t k = 0; !s && k < r->m->n_layers; k++)
        if (r->m->layer[k].ops == &pk_dropout_ops)
            s = pk_fail(PK_ERR_INPUT, "model '%s': a recorded model cannot have dropout (the trainer's masks are not "
                        "pathkernel's)", r->model);
    if (!s) {
        r->P = r->m->n_params;
        r->S = pk_optim_state_len(&r->o.optim);
        if (!finite_all(w0, r->P)) s = pk_fail(PK_ERR_INPUT, "the initial weights (w0) hold NaN or Inf");
    }
    double *state0 = s ? NULL : pk_calloc(r->S * r->P + 1, sizeof *state0); /* (S, P) zeros */
    r->w = s ? NULL : pk_alloc(r->P, sizeof *r->w);
    if (!s && (!state0 || !r->w)) s = PK_ERR_NOMEM;
    if (!s) {
        memcpy(r->w, w0, r->P * sizeof *w0);
        r->tr.N = train->n;
        r->tr.off = pk_calloc(1, sizeof *r->tr.off);
        if (!r->tr.off) s = PK_ERR_NOMEM;
    }
    if (!s) s = pk_run_create(r->dir, train, &r->o, r->m, w0, state0, NULL, &r->ro);
    free(state0);
    if (s) { pk_record_free(r); return s; }
    *out = r;
    return PK_OK;
}

/* Room for one more step of nb examples in the trajectory's arrays. */
static pk_status grow(pk_recorder *r, size_t nb)
{
    pk_traj *tr = &r->tr;
    if (tr->T + 1 >= r->cap_t) {
        size_t cap = r->cap_t ? 2 * r->cap_t : 64;
        double *lr = realloc(tr->lr, cap * sizeof *lr);
        if (lr) tr->lr = lr;
        double *loss = realloc(tr->loss, cap * sizeof *loss);
        if (loss) tr->loss = loss;
        uint64_t *off = realloc(tr->off, (cap + 1) * sizeof *off);
        if (off) tr->off = off;
        if (!lr || !loss || !off) return pk_fail(PK_ERR_NOMEM, "out of memory for the trajectory of %zu steps", cap);
        r->cap_t = cap;
    }
    size_t need = tr->off[tr->T] + nb;
    if (need > r->cap_idx) {
        size_t cap = need > 2 * r->cap_idx ? need : 2 * r->cap_idx;
        uint32_t *idx = realloc(tr->idx, cap * sizeof *idx);
        if (!idx) return pk_fail(PK_ERR_NOMEM, "out of memory for the batches of %zu steps", tr->T + 1);
        tr->idx = idx;
        r->cap_idx = cap;
    }
    if (nb > r->st.cap) { /* a larger batch than any before: a stepper for it */
        pk_stepper_free(&r->st);
        pk_status s = pk_stepper_init(&r->st, r->m, r->o.loss, r->train, nb, 0);
        if (!s) s = pk_stepper_gather(&r->st);
        if (s) return s;
    }
    return PK_OK;
}

pk_status pk_record_step(pk_recorder *r, double lr, const uint32_t *idx, size_t nb, const double *w,
                         const double *state)
{
    pk_traj *tr = &r->tr;
    size_t t1 = tr->T + 1, N = r->train->n;
    if (!(lr > 0 && isfinite(lr)))
        return pk_fail(PK_ERR_INPUT, "step %zu: the learning rate (lr) must be a positive number, got %g", t1, lr);
    if (!nb) return pk_fail(PK_ERR_INPUT, "step %zu: the batch (idx) is empty", t1);
    for (size_t j = 0; j < nb; j++)
        if (idx[j] >= N)
            return pk_fail(PK_ERR_INPUT, "step %zu: batch index %u out of range (the training data has %zu examples)",
                           t1, idx[j], N);
    if (!finite_all(w, r->P))
        return pk_fail(PK_ERR_NUMERIC, "step %zu: the weights are NaN or Inf (the training diverged); the recording "
                       "keeps steps 0..%zu", t1, t1 - 1);
    if (r->S && !finite_all(state, r->S * r->P))
        return pk_fail(PK_ERR_NUMERIC, "step %zu: the optimiser state is NaN or Inf", t1);
    pk_status s = grow(r, nb);
    if (s) return s;
    r->st.step = tr->T;
    double loss = pk_stepper_loss(&r->st, r->w, idx, nb);
    char *path = pk_ckpt_path(r->dir, t1);
    s = path ? pk_ckpt_write(path, t1, r->P, w, r->S, state) : PK_ERR_NOMEM;
    free(path);
    if (s) return s;
    size_t at = tr->off[tr->T];
    memcpy(tr->idx + at, idx, nb * sizeof *idx);
    tr->lr[tr->T] = lr;
    tr->loss[tr->T] = loss;
    tr->off[tr->T + 1] = at + nb;
    tr->T = t1;
    if (nb > r->max_nb) r->max_nb = nb;
    memcpy(r->w, w, r->P * sizeof *w);
    return PK_OK;
}

pk_status pk_record_end(pk_recorder *r)
{
    pk_status s = PK_OK;
    if (!r->tr.T) s = pk_fail(PK_ERR_INPUT, "%s: no steps were recorded", r->dir);
    r->o.optim.batch = r->max_nb;
    r->o.steps = r->tr.T;
    if (!s) s = pk_run_json_write(r->dir, r->train, &r->o, r->m, &r->ro);
    if (!s) s = pk_run_finish(r->dir, &r->tr, r->tr.T, "complete");
    pk_record_free(r);
    return s;
}
