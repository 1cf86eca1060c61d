/* train.c -- the training loop: seeded initialisation, the batch schedule,
 * one gradient evaluation per step (pk_stepper), the optimiser update, and
 * the record of every step in the run directory (run/). */
#include "run/run.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* FNV-1a of step t's batch as the journal records it: the range length
 * (u64), then the indices (u32 each). */
static uint64_t batch_hash(const pk_traj *tr, size_t t)
{
    uint64_t nb = tr->off[t + 1] - tr->off[t];
    uint64_t h = pk_hash_bytes(PK_HASH_INIT, &nb, sizeof nb);
    return nb ? pk_hash_bytes(h, tr->idx + tr->off[t], nb * sizeof *tr->idx) : h;
}

/* One training session, fresh or resumed: what the loop reads and writes. */
typedef struct trainer {
    const pk_model *m;
    pk_loss loss;
    const pk_optim *opt;
    const pk_data *data;
    const char *dir;
    size_t T, N, P, S, keep;
    pk_traj tr;          /* lr, loss (T); the batch schedule off (T+1), idx */
    pk_stepper st;
    pk_journal j;
    double *w, *G, *w_prev;      /* (P) each                                 */
    double *state, *state_prev;  /* (S, P) each, one spare entry when S = 0   */
} trainer;

static void trainer_free(trainer *k)
{
    pk_journal_close(&k->j);
    pk_stepper_free(&k->st);
    pk_traj_free(&k->tr);
    free(k->w); free(k->G); free(k->w_prev); free(k->state); free(k->state_prev);
}

static pk_status trainer_init(trainer *k, const pk_model *m, pk_loss loss, const pk_optim *opt, const pk_data *data,
                              size_t T, size_t keep, uint64_t seed, const char *dir)
{
    size_t S = pk_optim_state_len(opt);
    *k = (trainer){.m = m, .loss = loss, .opt = opt, .data = data, .dir = dir, .T = T, .N = data->n,
                   .P = m->n_params, .S = S, .keep = keep, .j = {-1, NULL, T, data->n, m->n_params, S, keep}};
    size_t P = k->P, SP = k->S * P + 1, N = k->N;
    size_t B = pk_optim_batch(opt, N);
    k->w = pk_alloc(P, sizeof *k->w);
    k->G = pk_alloc(P, sizeof *k->G);
    k->w_prev = pk_alloc(P, sizeof *k->w_prev);
    k->state = pk_calloc(SP, sizeof *k->state);
    k->state_prev = pk_alloc(SP, sizeof *k->state_prev);
    k->tr.T = T;
    k->tr.N = N;
    k->tr.lr = pk_alloc(T, sizeof(double));
    k->tr.loss = pk_alloc(T, sizeof(double));
    pk_status s = PK_OK;
    if (!k->w || !k->G || !k->w_prev || !k->state || !k->state_prev || !k->tr.lr || !k->tr.loss) s = PK_ERR_NOMEM;
    if (!s) s = make_schedule(&k->tr, N, T, opt->batch, seed);
    if (!s) s = pk_stepper_init(&k->st, m, loss, data, B, seed);
    if (s) trainer_free(k);
    return s;
}

static pk_status write_ckpt(const trainer *k, size_t t)
{
    char *path = pk_ckpt_path(k->dir, t);
    pk_status s = path ? pk_ckpt_write(path, t, k->P, k->w, k->S, k->state) : PK_ERR_NOMEM;
    free(path);
    return s;
}

/* Steps t0..T-1 from w_t0 and its optimiser state, then the end of the run.
 * Each finished step is checkpointed (every keep-th and the last), then
 * journaled. Steps before `journaled` were recorded by an earlier session:
 * their loss (in tr.loss) must come out again, bit for bit. */
static pk_status trainer_run(trainer *k, size_t t0, size_t journaled, pk_progress_fn progress, void *ctx)
{
    const pk_optim *opt = k->opt;
    size_t T = k->T, P = k->P, SP = k->S * P;
    double *w = k->w, *state = k->state;
    pk_status s = PK_OK;
    size_t t = t0;
    const char *status = "complete";
    for (; t < T; t++) {
        size_t nb = k->tr.off[t + 1] - k->tr.off[t];
        const uint32_t *idx = nb ? k->tr.idx + k->tr.off[t] : NULL;
        if (!nb) nb = k->N;
        double lr = pk_optim_lr(opt, t, T);
        memcpy(k->w_prev, w, P * sizeof *w);
        memcpy(k->state_prev, state, SP * sizeof *state);
        double loss = pk_stepper_step(&k->st, opt, t, lr, idx, nb, w, state, k->G);
        if (!isfinite(loss) || !all_finite(w, P)) {
            memcpy(w, k->w_prev, P * sizeof *w);
            memcpy(state, k->state_prev, SP * sizeof *state);
            status = "diverged";
            s = pk_fail(PK_ERR_NUMERIC,
                        "training diverged at step %zu (the %s became NaN/Inf with learning rate %g); "
                        "the run keeps steps 0..%zu: try a smaller learning rate (lr), e.g. %g",
                        t + 1, isfinite(loss) ? "weights" : "loss", lr, t, lr / 10);
            break;
        }
        if (t < journaled && memcmp(&loss, &k->tr.loss[t], sizeof loss) != 0) {
            status = "failed";
            s = pk_fail(PK_ERR_STATE, "%s: step %zu gave batch loss %.17g, the journal recorded %.17g: this build "
                        "does not reproduce the run (was pathkernel or its BLAS changed since it started?)",
                        k->j.path, t + 1, loss, k->tr.loss[t]);
            break;
        }
        k->tr.lr[t] = lr;
        k->tr.loss[t] = loss;
        /* without a directory (pk_train_weights) nothing is recorded */
        pk_status ws = k->dir && ((t + 1) % k->keep == 0 || t + 1 == T) ? write_ckpt(k, t + 1) : PK_OK;
        if (!ws && k->dir) ws = pk_journal_append(&k->j, t + 1, lr, loss, batch_hash(&k->tr, t));
        if (ws) { s = ws; status = "failed"; break; }
        if (progress && progress(ctx, t + 1, T, loss)) { t++; status = "stopped"; break; }
    }
    if (!k->dir) return s;
    if (t < T && t % k->keep != 0 && strcmp(status, "failed") != 0) {
        /* stopped between stored checkpoints: store the last good weights */
        pk_status ws = write_ckpt(k, t);
        if (ws && !s) s = ws;
    }
    pk_journal_close(&k->j);
    pk_status fs = pk_run_finish(k->dir, &k->tr, t, status);
    if (fs && !s) s = fs;
    return s;
}

/* The options pk_train and pk_train_weights refuse. */
static pk_status check_opts(const pk_data *train, const pk_train_opts *o)
{
    if (!train->n) return pk_fail(PK_ERR_INPUT, "training set is empty");
    if (train->n > UINT32_MAX) return pk_fail(PK_ERR_INPUT, "training sets are limited to 2^32-1 examples");
    const pk_optim *opt = &o->optim;
    pk_status s = pk_optim_check(opt);
    if (s) return s;
    if (opt->kind == PK_OPTIM_SGD && !opt->batch)
        return pk_fail(PK_ERR_INPUT, "sgd needs a mini-batch size (batch); use gd for full batches");
    if (opt->kind == PK_OPTIM_GD && pk_optim_batch(opt, train->n) < train->n)
        return pk_fail(PK_ERR_INPUT, "gd is full-batch: use no mini-batch size (batch 0) or sgd (optim sgd)");
    if (!o->steps) return pk_fail(PK_ERR_INPUT, "number of steps (steps) must be at least 1");
    return PK_OK;
}

pk_status pk_train(const pk_data *train, const pk_train_opts *o, pk_progress_fn progress, void *ctx)
{
    if (!o->out_dir) return pk_fail(PK_ERR_INPUT, "training needs a run directory (out_dir)");
    const pk_optim *opt = &o->optim;
    if (o->steps && !o->keep) return pk_fail(PK_ERR_INPUT, "checkpoint interval (keep) must be at least 1");
    pk_status s = check_opts(train, o);
    if (s) return s;
    size_t C;
    s = pk_loss_outputs(o->loss, train, &C);
    if (s) return s;
    pk_model *m;
    if ((s = pk_model_for_data(o->model, train, C, o->param, o->sigma_w, o->sigma_b, &m))) return s;
    trainer k;
    if ((s = trainer_init(&k, m, o->loss, opt, train, o->steps, o->keep, o->seed, o->out_dir))) {
        pk_model_free(m);
        return s;
    }
    if (o->init_dir) s = pk_model_weights_read(m, o->init_dir, k.w);
    else pk_model_init(m, o->seed, k.w);
    if (!s) s = pk_run_create(o->out_dir, train, o, m, k.w, k.state, &k.j, NULL);
    if (!s) s = trainer_run(&k, 0, 0, progress, ctx);
    trainer_free(&k);
    pk_model_free(m);
    return s;
}

pk_status pk_train_weights(const pk_data *train, const pk_train_opts *o, double *w)
{
    pk_status s = check_opts(train, o);
    size_t C;
    if (!s) s = pk_loss_outputs(o->loss, train, &C);
    if (s) return s;
    pk_model *m;
    if ((s = pk_model_for_data(o->model, train, C, o->param, o->sigma_w, o->sigma_b, &m))) return s;
    trainer k;
    if ((s = trainer_init(&k, m, o->loss, &o->optim, train, o->steps, 1, o->seed, NULL))) {
        pk_model_free(m);
        return s;
    }
    if (o->init_dir) s = pk_model_weights_read(m, o->init_dir, k.w);
    else pk_model_init(m, o->seed, k.w);
    if (!s) s = trainer_run(&k, 0, 0, NULL, NULL);
    if (!s) memcpy(w, k.w, m->n_params * sizeof *w);
    trainer_free(&k);
    pk_model_free(m);
    return s;
}

/* ------------------------------------------------------------------ resume */

/* The newest checkpoint at or before step n that reads back whole (n itself
 * when a stop left one there, then every keep-th down to 0) into k->w and
 * k->state; SIZE_MAX when none does. */
static size_t last_checkpoint(trainer *k, size_t n)
{
    for (size_t c = n;;) {
        char *path = pk_ckpt_path(k->dir, c);
        pk_status s = path ? pk_ckpt_read(path, c, k->P, k->w, k->S, k->state) : PK_ERR_NOMEM;
        free(path);
        if (!s) return c;
        if (!c) return SIZE_MAX;
        c = c % k->keep ? c / k->keep * k->keep : c - k->keep;
    }
}

/* Check the run and its journal, load the checkpoint to continue from and
 * put the directory back in the state an uninterrupted run had at that step. */
static pk_status resume_prepare(trainer *k, pk_resume_info *info)
{
    const char *dir = k->dir;
    uint64_t *hash = pk_alloc(k->T, sizeof *hash);   /* (T) batch hash of each journaled step */
    if (!hash) return PK_ERR_NOMEM;
    pk_status s = pk_journal_open(&k->j, dir, &info->journaled, &info->ignored, k->tr.lr, k->tr.loss, hash);
    for (size_t t = 0; !s && t < info->journaled; t++) {
        double lr = pk_optim_lr(k->opt, t, k->T);
        if (memcmp(&lr, &k->tr.lr[t], sizeof lr) != 0 || hash[t] != batch_hash(&k->tr, t))
            s = pk_fail(PK_ERR_STATE, "%s: the record of step %zu (byte %zu) does not follow from run.json (another "
                        "learning rate or batch): run.json or the journal was changed, the run cannot be resumed",
                        k->j.path, t + 1, (size_t)PK_JOURNAL_HDR + t * PK_JOURNAL_REC);
    }
    free(hash);
    if (s) return s;
    size_t c = last_checkpoint(k, info->journaled);
    if (c == SIZE_MAX)
        return pk_fail(PK_ERR_STATE, "%s: no checkpoint at or before step %zu reads back whole (last: %s): the run "
                       "cannot be resumed", dir, info->journaled, pk_last_error());
    info->from = c;
    /* run.json first: until the run finishes again nothing reads a half state */
    s = pk_run_set_status(dir, "running", 0);
    if (!s) s = pk_journal_truncate(&k->j, c);
    if (!s) s = pk_run_prune(dir, c, k->T, k->keep);
    return s;
}

pk_status pk_train_resume(const char *dir, pk_progress_fn progress, void *ctx, pk_resume_info *info)
{
    pk_resume_info mine;
    if (!info) info = &mine;
    memset(info, 0, sizeof *info);
    pk_run *run = NULL;
    pk_status s = pk_run_open_config(dir, &run);
    const char *st = s ? "" : pk_run_status(run);
    if (!s) info->steps = pk_run_steps_requested(run);
    if (s) {
        /* reported below as bad input */
    } else if (!strcmp(st, "complete")) {
        info->complete = 1;
        info->journaled = info->from = pk_run_steps(run);
        char *jp = pk_journal_path(dir); /* a kill between finishing and removing it */
        if (jp) unlink(jp);
        free(jp);
        pk_run_close(run);
        return PK_OK;
    } else if (pk_run_recorded(run)) {
        s = pk_fail(PK_ERR_INPUT, "%s: recorded from %s: only the trainer that took its steps can continue it; "
                    "record the training loop again", dir, pk_run_recorded(run));
    } else if (!strcmp(st, "diverged")) {
        s = pk_fail(PK_ERR_INPUT, "%s: the run diverged after step %zu; resuming would diverge again: train anew "
                    "with a smaller learning rate (lr)", dir, pk_run_steps(run));
    } else if (strcmp(st, "running") && strcmp(st, "stopped") && strcmp(st, "failed")) {
        s = pk_fail(PK_ERR_INPUT, "%s/run.json: status \"%s\" is not one that `pk_train_resume` continues "
                    "(running, stopped or failed)", dir, st);
    } else if (!info->steps) {
        s = pk_fail(PK_ERR_INPUT, "%s/run.json: no steps_requested: the run was written before `pk_train_resume` existed",
                    dir);
    }
    const pk_data *train = NULL;
    if (!s) s = pk_run_train_data(run, &train);
    trainer k;
    int ready = 0;
    if (!s) {
        s = trainer_init(&k, pk_run_model(run), pk_run_loss(run), pk_run_optim(run), train, info->steps,
                         pk_run_keep(run), pk_run_seed(run), dir);
        ready = !s;
    }
    if (!s) s = resume_prepare(&k, info);
    /* everything up to here is about the directory the caller named */
    if (s == PK_ERR_STATE) s = PK_ERR_INPUT;
    if (!s) s = trainer_run(&k, info->from, info->journaled, progress, ctx);
    if (ready) trainer_free(&k);
    pk_run_close(run);
    return s;
}
