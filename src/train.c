/* train.c -- the training loop: seeded initialisation, the batch schedule,
 * one gradient evaluation per step (pk_stepper), the optimiser update, and
 * the record of every step in the run directory (run.c). */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

pk_train_opts pk_train_opts_defaults(void)
{
    pk_train_opts o = {0};
    o.model = "mlp:64:tanh";
    o.param = PK_PARAM_STANDARD;
    o.sigma_w = 1.0;
    o.sigma_b = 0.0;
    o.loss = PK_LOSS_SOFTMAX;
    o.optim = pk_optim_defaults();
    o.steps = 100;
    o.seed = 0;
    o.keep = 1;
    return o;
}

/* ----------------------------------------------------------------- stepper */

pk_status pk_stepper_init(pk_stepper *s, const pk_mlp *m, pk_loss loss, const pk_data *data, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->m = m;
    s->loss = loss;
    s->data = data;
    s->cap = cap;
    s->tape = pk_tape_new(m, cap);
    s->R = pk_alloc(cap, m->dims[m->n_layers] * sizeof(double));
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
    const pk_mlp *m = s->m;
    size_t C = m->dims[m->n_layers];
    pk_mlp_forward(m, w, x, nb, s->tape);
    double loss = pk_loss_eval(s->loss, s->tape->a[m->n_layers], y, nb, C, D->ty, s->R);
    pk_mlp_backward(m, w, s->tape, s->R, 1.0 / (double)nb, G);
    return loss;
}

/* ---------------------------------------------------------- batch schedule */

/* Fill tr->off / tr->idx for T steps: full batches (empty ranges) for gd or
 * when the batch covers the data, else consecutive slices of a seeded
 * permutation drawn anew every epoch (the last slice may be shorter). */
static pk_status make_schedule(pk_traj *tr, size_t N, size_t T, size_t B, uint64_t seed)
{
    tr->off = pk_calloc(T + 1, sizeof *tr->off);
    if (!tr->off) return PK_ERR_NOMEM;
    if (!B || B >= N) return PK_OK;
    size_t per_epoch = (N + B - 1) / B, total = 0;
    for (size_t t = 0; t < T; t++) {
        size_t k = t % per_epoch;
        total += k + 1 < per_epoch ? B : N - k * B;
        tr->off[t + 1] = total;
    }
    tr->idx = pk_alloc(total ? total : 1, sizeof *tr->idx);
    uint32_t *perm = pk_alloc(N, sizeof *perm);
    if (!tr->idx || !perm) { free(perm); return PK_ERR_NOMEM; }
    pk_rng r;
    pk_rng_seed(&r, seed ^ 0x6261746368657321ULL); /* a stream apart from the init's */
    for (size_t t = 0; t < T; t++) {
        size_t k = t % per_epoch;
        if (k == 0) {
            for (size_t i = 0; i < N; i++) perm[i] = (uint32_t)i;
            pk_rng_shuffle(&r, perm, N);
        }
        memcpy(tr->idx + tr->off[t], perm + k * B, (tr->off[t + 1] - tr->off[t]) * sizeof *perm);
    }
    free(perm);
    return PK_OK;
}

/* ------------------------------------------------------------------- train */

static int all_finite(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}


pk_status pk_train(const pk_data *train, const pk_train_opts *o, pk_progress_fn progress, void *ctx)
{
    if (!o->out_dir) return pk_fail(PK_ERR_INPUT, "training needs an output directory (--out RUN)");
    if (!train->n) return pk_fail(PK_ERR_INPUT, "training set is empty");
    if (train->n > UINT32_MAX) return pk_fail(PK_ERR_INPUT, "training sets are limited to 2^32-1 examples");
    const pk_optim *opt = &o->optim;
    if (!(opt->lr > 0 && isfinite(opt->lr)))
        return pk_fail(PK_ERR_INPUT, "learning rate must be a positive number, got %g", opt->lr);
    if (opt->kind == PK_OPTIM_SGD && !opt->batch)
        return pk_fail(PK_ERR_INPUT, "sgd needs a mini-batch size (--batch B); use gd for full batches");
    if (opt->kind == PK_OPTIM_GD && opt->batch && opt->batch < train->n)
        return pk_fail(PK_ERR_INPUT, "gd is full-batch: drop --batch or use --optim sgd");
    if (!o->steps) return pk_fail(PK_ERR_INPUT, "number of steps must be at least 1");
    if (!o->keep) return pk_fail(PK_ERR_INPUT, "--keep must be at least 1");
    if (!(opt->weight_decay >= 0 && isfinite(opt->weight_decay)))
        return pk_fail(PK_ERR_INPUT, "weight decay must be a non-negative number, got %g", opt->weight_decay);
    if ((opt->kind == PK_OPTIM_ADAM || opt->kind == PK_OPTIM_ADAMW) &&
        !(opt->beta1 >= 0 && opt->beta1 < 1 && opt->beta2 >= 0 && opt->beta2 < 1 && opt->eps > 0))
        return pk_fail(PK_ERR_INPUT, "adam and adamw need 0 <= beta1, beta2 < 1 and eps > 0");
    if (opt->kind == PK_OPTIM_MOMENTUM && !(opt->momentum >= 0 && opt->momentum < 1))
        return pk_fail(PK_ERR_INPUT, "momentum must be in [0, 1), got %g", opt->momentum);

    size_t C;
    pk_status s = pk_loss_outputs(o->loss, train, &C);
    if (s) return s;
    pk_mlp m;
    s = pk_mlp_parse(o->model, train->d, C, o->param, o->sigma_w, o->sigma_b, &m);
    if (s) return s;

    size_t P = m.n_params, S = pk_optim_state_len(opt), T = o->steps, N = train->n;
    size_t B = opt->batch && opt->batch < N ? opt->batch : N;
    double *w = pk_alloc(P, sizeof *w), *G = pk_alloc(P, sizeof *G);
    double *w_prev = pk_alloc(P, sizeof *w), *state = pk_calloc(S * P + 1, sizeof *state);
    double *state_prev = pk_alloc(S * P + 1, sizeof *state);
    pk_traj tr = {0};
    pk_stepper st = {0};
    tr.T = T;
    tr.N = N;
    tr.lr = pk_alloc(T, sizeof(double));
    tr.loss = pk_alloc(T, sizeof(double));
    if (!w || !G || !w_prev || !state || !state_prev || !tr.lr || !tr.loss) { s = PK_ERR_NOMEM; goto done; }
    if ((s = make_schedule(&tr, N, T, opt->batch, o->seed))) goto done;
    if ((s = pk_stepper_init(&st, &m, o->loss, train, B))) goto done;
    if (o->init_dir) {
        if ((s = pk_weights_import(&m, o->init_dir, w))) goto done;
    } else {
        pk_mlp_init(&m, o->seed, w);
    }
    if ((s = pk_run_create(o->out_dir, train, o, &m))) goto done;
    char *path = pk_ckpt_path(o->out_dir, 0);
    s = path ? pk_ckpt_write(path, 0, P, w, S, state) : PK_ERR_NOMEM;
    free(path);
    if (s) goto done;

    size_t t = 0;
    const char *status = "complete";
    for (; t < T; t++) {
        size_t nb = tr.off[t + 1] - tr.off[t];
        const uint32_t *idx = nb ? tr.idx + tr.off[t] : NULL;
        if (!nb) nb = N;
        double lr = pk_optim_lr(opt, t, T);
        double loss = pk_stepper_grad(&st, w, idx, nb, G);
        memcpy(w_prev, w, P * sizeof *w);
        memcpy(state_prev, state, S * P * sizeof *state);
        pk_optim_step(opt, t, lr, P, w, state, G, NULL);
        if (!isfinite(loss) || !all_finite(w, P)) {
            memcpy(w, w_prev, P * sizeof *w);
            memcpy(state, state_prev, S * P * sizeof *state);
            status = "diverged";
            s = pk_fail(PK_ERR_NUMERIC,
                        "training diverged at step %zu (the %s became NaN/Inf with learning rate %g); "
                        "the run keeps steps 0..%zu: try a smaller --lr, e.g. %g",
                        t + 1, isfinite(loss) ? "weights" : "loss", lr, t, lr / 10);
            break;
        }
        tr.lr[t] = lr;
        tr.loss[t] = loss;
        if ((t + 1) % o->keep == 0 || t + 1 == T) {
            path = pk_ckpt_path(o->out_dir, t + 1);
            pk_status ws = path ? pk_ckpt_write(path, t + 1, P, w, S, state) : PK_ERR_NOMEM;
            free(path);
            if (ws) { s = ws; status = "failed"; break; }
        }
        if (progress && progress(ctx, t + 1, T, loss)) { t++; status = "stopped"; break; }
    }
    if (t < T && t % o->keep != 0 && strcmp(status, "failed") != 0) {
        /* stopped between stored checkpoints: store the last good weights */
        path = pk_ckpt_path(o->out_dir, t);
        pk_status ws = path ? pk_ckpt_write(path, t, P, w, S, state) : PK_ERR_NOMEM;
        free(path);
        if (ws && !s) s = ws;
    }
    pk_status fs = pk_run_finish(o->out_dir, &tr, t, status);
    if (fs && !s) s = fs;
done:
    pk_stepper_free(&st);
    pk_traj_free(&tr);
    free(w); free(G); free(w_prev); free(state); free(state_prev);
    return s;
}
