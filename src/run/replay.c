/* replay.c -- the one walk over a recorded run: from the stored checkpoint
 * at or before a step, the recorded steps taken again exactly as training
 * took them (pk_stepper_step), and the check that the walk lands on the
 * stored weights bit for bit. A run whose steps another trainer took
 * (pk_record_*) takes every w_{t+1} from its record instead, after checking
 * the step against pathkernel's (MATH.md section 10). */
#include "run/run.h"

#include <math.h>
#include <string.h>

/* w and state after step c's checkpoint, then steps c..t-1 with st. */
static pk_status load(pk_run *run, size_t t, double *w, double *state, pk_stepper *st, double *G)
{
    size_t T = pk_run_steps(run), keep = pk_run_keep(run), P = pk_run_model(run)->n_params;
    size_t S = pk_optim_state_len(pk_run_optim(run));
    if (t > T) return pk_fail(PK_ERR_INPUT, "%s: step %zu out of range (the run has steps 0..%zu)", pk_run_dir(run), t, T);
    size_t c = t == T ? t : t / keep * keep;
    char *path = pk_ckpt_path(pk_run_dir(run), c);
    if (!path) return PK_ERR_NOMEM;
    if (S) memset(state, 0, S * P * sizeof *state);
    pk_status s = pk_ckpt_read(path, c, P, w, S, state);
    free(path);
    for (size_t k = c; !s && k < t; k++) {
        const uint32_t *idx;
        size_t nb;
        pk_run_batch(run, k, &idx, &nb);
        pk_stepper_step(st, pk_run_optim(run), k, pk_run_lr(run, k), idx, nb, w, state, G);
    }
    return s;
}

pk_status pk_run_stepper(pk_run *run, pk_stepper *st)
{
    const pk_data *train;
    pk_status s = pk_run_train_data(run, &train);
    size_t cap = pk_run_batch_cap(run);
    if (!s) s = pk_stepper_init(st, pk_run_model(run), pk_run_loss(run), train, cap, pk_run_seed(run));
    if (!s && pk_run_recorded(run)) s = pk_stepper_gather(st); /* a recorded batch: any examples */
    return s;
}

pk_status pk_replay_load(pk_run *run, size_t t, double *w, double *state)
{
    size_t T = pk_run_steps(run), keep = pk_run_keep(run), P = pk_run_model(run)->n_params;
    size_t c = t == T ? t : t / keep * keep;
    pk_stepper st = {0};
    double *G = NULL;
    pk_status s = PK_OK;
    if (t <= T && c < t) { /* steps to replay: the training data and a gradient */
        s = pk_run_stepper(run, &st);
        if (!s && !(G = pk_alloc(P, sizeof *G))) s = PK_ERR_NOMEM;
    }
    if (!s) s = load(run, t, w, state, &st, G);
    pk_stepper_free(&st);
    free(G);
    return s;
}

/* The weights of any step: pk_replay_load without the optimiser state. */
pk_status pk_run_weights(pk_run *run, size_t t, double *w)
{
    size_t S = pk_optim_state_len(pk_run_optim(run));
    double *state = pk_calloc(S * pk_run_model(run)->n_params + 1, sizeof *state);
    pk_status s = state ? pk_replay_load(run, t, w, state) : PK_ERR_NOMEM;
    free(state);
    return s;
}

pk_status pk_replay_begin(pk_replay *r, pk_run *run, size_t from, pk_progress_fn progress, void *ctx)
{
    memset(r, 0, sizeof *r);
    r->run = run;
    r->op = pk_run_optim(run);
    r->T = pk_run_steps(run);
    r->P = pk_run_model(run)->n_params;
    r->S = pk_optim_state_len(r->op);
    r->t = from;
    r->end = r->T;
    r->progress = progress;
    r->ctx = ctx;
    size_t P = r->P;
    r->w = pk_alloc(P, sizeof *r->w);
    r->w_next = pk_alloc(P, sizeof *r->w_next);
    r->node = pk_alloc(P, sizeof *r->node);
    r->G = pk_alloc(P, sizeof *r->G);
    r->state = pk_calloc(r->S * P + 1, sizeof *r->state);
    if (pk_run_recorded(run)) { /* the recorded w_{t+1} and state, read step by step */
        r->rec = pk_alloc(P, sizeof *r->rec);
        r->rec_state = pk_calloc(r->S * P + 1, sizeof *r->rec_state);
    }
    pk_status s = r->w && r->w_next && r->node && r->G && r->state ? PK_OK : PK_ERR_NOMEM;
    if (pk_run_recorded(run) && (!r->rec || !r->rec_state)) s = PK_ERR_NOMEM;
    if (!s) s = pk_run_stepper(run, &r->st);
    if (!s) s = load(run, from, r->w, r->state, &r->st, r->G);
    if (s) pk_replay_end(r, s);
    return s;
}

/* A recorded run (MATH.md section 10): w_{t+1} and the optimiser state
 * after step t are the recorded ones; the step just computed from w_t (in
 * w_next) is checked against them. */
static pk_status take_recorded(pk_replay *r)
{
    size_t P = r->P, t1 = r->t + 1;
    char *path = pk_ckpt_path(pk_run_dir(r->run), t1);
    pk_status s = path ? pk_ckpt_read(path, t1, P, r->rec, r->S, r->rec_state) : PK_ERR_NOMEM;
    free(path);
    if (s) return s;
    double diff = 0, norm = 0, wnorm = 0;
    for (size_t j = 0; j < P; j++) {
        double e = r->rec[j] - r->w_next[j], d = r->w_next[j] - r->w[j];
        diff += e * e;
        norm += d * d;
        wnorm += r->rec[j] * r->rec[j];
    }
    s = pk_run_step_check(r->run, t1, sqrt(diff), sqrt(norm), sqrt(wnorm));
    double *tmp = r->w_next; /* the recorded weights and state go on */
    r->w_next = r->rec;
    r->rec = tmp;
    tmp = r->state;
    r->state = r->rec_state;
    r->rec_state = tmp;
    return s;
}

int pk_replay_next(pk_replay *r)
{
    if (r->s) return 0;
    if (r->started) { /* the step held is done: w_{t+1} becomes the current weights */
        double *tmp = r->w;
        r->w = r->w_next;
        r->w_next = tmp;
        r->t++;
        if (r->progress && r->progress(r->ctx, r->t, r->T, pk_run_batch_loss(r->run, r->t - 1))) {
            r->s = pk_fail(PK_ERR_STOPPED, "stopped after step %zu of %zu", r->t, r->T);
            return 0;
        }
    }
    if (r->t >= r->end) return 0;
    r->started = 1;
    r->lr = pk_run_lr(r->run, r->t);
    pk_run_batch(r->run, r->t, &r->idx, &r->nb);
    memcpy(r->w_next, r->w, r->P * sizeof *r->w);
    pk_stepper_step(&r->st, r->op, r->t, r->lr, r->idx, r->nb, r->w_next, r->state, r->G);
    if (r->rec && (r->s = take_recorded(r))) return 0;
    return 1;
}

const double *pk_node_weights(const double *w, const double *w_next, size_t P, double s, double *scratch)
{
    if (s == 0.0) return w;
    for (size_t j = 0; j < P; j++) scratch[j] = w[j] + s * (w_next[j] - w[j]);
    return scratch;
}

const double *pk_replay_node(pk_replay *r, double s) { return pk_node_weights(r->w, r->w_next, r->P, s, r->node); }

pk_status pk_replay_mismatch(const pk_run *run, size_t t)
{
    return pk_fail(PK_ERR_STATE, "%s: replaying the trajectory did not reproduce the stored weights of step %zu "
                   "(a different BLAS, OpenBLAS kernel or build than the run's?)", pk_run_dir(run), t);
}

pk_status pk_replay_check(pk_run *run, size_t t, const double *w, double *scratch)
{
    size_t P = pk_run_model(run)->n_params;
    pk_status s = pk_run_weights(run, t, scratch);
    if (!s && memcmp(w, scratch, P * sizeof *w) != 0) s = pk_replay_mismatch(run, t);
    return s;
}

pk_status pk_replay_end(pk_replay *r, pk_status s)
{
    if (!s) s = r->s;
    if (!s && r->t == r->T && r->w) s = pk_replay_check(r->run, r->T, r->w, r->node);
    pk_stepper_free(&r->st);
    free(r->w); free(r->w_next); free(r->node); free(r->G); free(r->state); free(r->rec); free(r->rec_state);
    memset(r, 0, sizeof *r);
    return s;
}
