/* run.c -- the run handle: an opened run directory, read back. What a
 * training run leaves behind:
 *
 *   RUN/run.json            configuration, data fingerprint, status (cJSON)
 *   RUN/trajectory.bin      learning rate, batch loss and batch of every step
 *   RUN/steps.csv           the same, for people: step,lr,batch_size,loss
 *   RUN/standardize.npy     (2, d) feature mean and std, when standardised
 *   RUN/classes.txt         the classes' names, one a line, when the data have them
 *   RUN/features.txt        the features' names (d lines), from a CSV header
 *   RUN/weights/step-T.pkw  weights and optimiser state after step T
 *   RUN/journal.bin         one checksummed record per finished step, appended
 *                           while training (removed when the run completes)
 *
 * Binary files carry a magic, a version and a crc32; every file but the
 * journal is written atomically (temporary name, then rename). The journal
 * is what makes a killed run resumable (train.c, pk_train_resume). */
#include "run/run.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

struct pk_run {
    char *dir;
    pk_model *model;
    pk_loss loss;
    pk_optim optim;
    size_t steps, keep, n_train, d, ty;
    size_t steps_requested;  /* 0 when run.json does not say (older runs) */
    uint64_t seed;
    char status[16];         /* "" when run.json does not say */
    uint64_t fingerprint;
    char *data_spec;
    pk_load_opts load;       /* label_column and class_names point into the run */
    char *label_column;      /* run.json's data.label_column, or NULL */
    char **classes;          /* (n_classes) classes.txt, or NULL (one allocation) */
    size_t n_classes;
    char **features;         /* (d) features.txt, or NULL (one allocation) */
    double *mean, *std;      /* (d) each, or NULL */
    pk_traj traj;
    const pk_data *train;    /* attached training data (borrowed) or NULL */
    pk_data owned_train;     /* loaded by pk_run_weights when it must replay */
    /* runs recorded from another trainer (run.json's "recorded"; MATH.md section 10) */
    char *recorded;          /* "PyTorch 1.13.1 float32", or NULL                  */
    int float32;             /* the recorded weights were float32                  */
    double step_tol;         /* relative step difference allowed                   */
    double resid_max;        /* the largest relative step difference replayed      */
    size_t resid_step;       /* its step (1..T), 0 before a replay                 */
    size_t batch_cap;        /* the largest batch of any step                      */
};

static const cJSON *jget(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

static int jnum(const cJSON *o, const char *key, double *v)
{
    const cJSON *x = jget(o, key);
    if (!cJSON_IsNumber(x)) return -1;
    *v = x->valuedouble;
    return 0;
}

static int jsize(const cJSON *o, const char *key, size_t *v)
{
    double d;
    if (jnum(o, key, &d) || d < 0 || d != floor(d) || d > 9.007199254740992e15) return -1;
    *v = (size_t)d;
    return 0;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *x = jget(o, key);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int jhex(const cJSON *o, const char *key, uint64_t *v)
{
    const char *s = jstr(o, key);
    if (!s) return -1;
    char *end;
    *v = strtoull(s, &end, 16);
    return *end ? -1 : 0;
}

static pk_status parse_run_json(pk_run *run, const char *path, const cJSON *r)
{
#define BAD(what) pk_fail(PK_ERR_STATE, "%s: %s missing or invalid", path, what)
    const char *fmt = jstr(r, "format");
    if (!fmt || strcmp(fmt, "pathkernel-run") != 0) return pk_fail(PK_ERR_STATE, "%s: not a pathkernel run", path);
    double ver;
    if (jnum(r, "version", &ver) || ver != PK_RUN_VERSION) return pk_fail(PK_ERR_STATE, "%s: unsupported run version", path);
    if (jsize(r, "steps", &run->steps)) return BAD("steps");
    if (jsize(r, "keep", &run->keep) || !run->keep) return BAD("keep");
    /* what train --resume needs besides (optional for reading a finished run) */
    const char *st = jstr(r, "status");
    if (st) snprintf(run->status, sizeof run->status, "%s", st);
    if (jget(r, "steps_requested") && jsize(r, "steps_requested", &run->steps_requested)) return BAD("steps_requested");
    if (jget(r, "seed") && jhex(r, "seed", &run->seed)) return BAD("seed");
    const cJSON *rec = jget(r, "recorded");
    if (rec) { /* steps another trainer took: every step's weights are stored */
        const char *from = jstr(rec, "from"), *dt = jstr(rec, "dtype");
        if (!from || !dt || (strcmp(dt, "float64") && strcmp(dt, "float32")) || jnum(rec, "step_tolerance", &run->step_tol) ||
            !(run->step_tol > 0) || run->keep != 1)
            return BAD("recorded");
        size_t len = strlen(from) + strlen(dt) + 2;
        if (!(run->recorded = pk_alloc(len, 1))) return PK_ERR_NOMEM;
        snprintf(run->recorded, len, "%s %s", from, dt);
        run->float32 = !strcmp(dt, "float32");
    }
    const cJSON *mo = jget(r, "model"), *oo = jget(r, "optim"), *da = jget(r, "data");
    if (!cJSON_IsObject(mo) || !cJSON_IsObject(oo) || !cJSON_IsObject(da)) return BAD("model/optim/data");
    const char *spec = jstr(mo, "spec"), *param = jstr(mo, "param");
    size_t din, dout, P;
    double sw, sb;
    if (!spec || !param || jsize(mo, "inputs", &din) || jsize(mo, "outputs", &dout) || jsize(mo, "params", &P) ||
        jnum(mo, "sigma_w", &sw) || jnum(mo, "sigma_b", &sb))
        return BAD("model");
    pk_status s = pk_model_new(spec, din, dout, strcmp(param, "ntk") ? PK_PARAM_STANDARD : PK_PARAM_NTK, sw, sb, &run->model);
    if (s) return pk_fail(s == PK_ERR_NOMEM ? s : PK_ERR_STATE, "%s: %s", path, pk_last_error());
    if (run->model->n_params != P) return BAD("model.params");
    const char *ls = jstr(r, "loss");
    if (!ls || pk_loss_parse(ls, &run->loss)) return BAD("loss");
    pk_optim *op = &run->optim;
    *op = pk_optim_defaults();
    const char *ok = jstr(oo, "kind"), *sc = jstr(oo, "schedule");
    if (!ok || pk_optim_parse(ok, &op->kind) || !sc || pk_schedule_parse(sc, &op->schedule) ||
        jnum(oo, "lr", &op->lr) || jsize(oo, "batch", &op->batch) || jnum(oo, "momentum", &op->momentum) ||
        jnum(oo, "beta1", &op->beta1) || jnum(oo, "beta2", &op->beta2) || jnum(oo, "eps", &op->eps) ||
        jsize(oo, "step_every", &op->step_every) || jnum(oo, "gamma", &op->gamma) || jnum(oo, "lr_min", &op->lr_min))
        return BAD("optim");
    /* runs written before weight decay existed have no key: no decay */
    if (jget(oo, "weight_decay") && (jnum(oo, "weight_decay", &op->weight_decay) || !(op->weight_decay >= 0)))
        return BAD("optim.weight_decay");
    const char *ds = jstr(da, "spec");
    if (!ds || jsize(da, "n", &run->n_train) || jsize(da, "d", &run->d) || jsize(da, "ty", &run->ty) ||
        jhex(da, "fingerprint", &run->fingerprint) || jsize(da, "first", &run->load.first) ||
        jsize(da, "random", &run->load.random) || jhex(da, "seed", &run->load.seed))
        return BAD("data");
    run->data_spec = pk_strdup(ds);
    if (!run->data_spec) return PK_ERR_NOMEM;
    /* the CSV options and the names: only runs whose data have them */
    const cJSON *sep = jget(da, "sep"), *lcol = jget(da, "label_column");
    if (sep) {
        if (!cJSON_IsString(sep) || strlen(sep->valuestring) != 1) return BAD("data.sep");
        run->load.sep = sep->valuestring[0];
    }
    if (lcol) {
        if (!cJSON_IsString(lcol) || !(run->label_column = pk_strdup(lcol->valuestring))) return BAD("data.label_column");
        run->load.label_column = run->label_column;
    }
    char *cp = pk_path_join(run->dir, "classes.txt"), *fp = pk_path_join(run->dir, "features.txt");
    if (!cp || !fp) s = PK_ERR_NOMEM;
    if (!s && access(cp, F_OK) == 0) s = pk_names_load(cp, 1, &run->classes, &run->n_classes);
    if (!s && access(fp, F_OK) == 0) {
        size_t nf = 0;
        s = pk_names_load(fp, 0, &run->features, &nf);
        if (!s && nf != run->d) s = pk_fail(PK_ERR_STATE, "%s: %zu names for the run's %zu features", fp, nf, run->d);
    }
    free(cp);
    free(fp);
    if (s) return s == PK_ERR_NOMEM ? s : pk_fail(PK_ERR_STATE, "%s", pk_last_error());
    run->load.class_names = (const char *const *)run->classes;
    run->load.n_class_names = run->n_classes;
    if (cJSON_IsTrue(jget(da, "standardize"))) {
        char *p = pk_path_join(run->dir, "standardize.npy");
        double *ms = NULL;
        size_t nd, shape[8];
        s = p ? pk_npy_read(p, &ms, &nd, shape) : PK_ERR_NOMEM;
        free(p);
        if (s) return pk_fail(PK_ERR_STATE, "%s", pk_last_error());
        if (nd != 2 || shape[0] != 2 || shape[1] != run->d) { free(ms); return BAD("standardize.npy shape"); }
        run->mean = ms;
        run->std = ms + run->d;
    }
    return PK_OK;
#undef BAD
}

pk_status pk_run_open_config(const char *dir, pk_run **out)
{
    *out = NULL;
    pk_run *run = pk_calloc(1, sizeof *run);
    if (!run) return PK_ERR_NOMEM;
    run->dir = pk_strdup(dir);
    char *js = pk_path_join(dir, "run.json");
    unsigned char *text = NULL;
    size_t len;
    pk_status s = (!run->dir || !js) ? PK_ERR_NOMEM : PK_OK;
    if (!s) {
        s = pk_read_file(js, 0, 1 << 20, &text, &len);
        if (s == PK_ERR_INPUT) s = pk_fail(PK_ERR_INPUT, "%s: not a run directory (no readable run.json)", dir);
    }
    if (!s) {
        cJSON *r = cJSON_Parse((char *)text);
        if (!r) s = pk_fail(PK_ERR_STATE, "%s: not valid JSON near byte %zu", js,
                            (size_t)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - (char *)text : 0));
        else {
            s = parse_run_json(run, js, r);
            cJSON_Delete(r);
        }
    }
    free(text); free(js);
    if (s) { pk_run_close(run); return s; }
    *out = run;
    return PK_OK;
}

pk_status pk_run_open(const char *dir, pk_run **out)
{
    pk_run *run;
    pk_status s = pk_run_open_config(dir, &run);
    if (s) return s;
    if (!strcmp(run->status, "running") && run->recorded) {
        s = pk_fail(PK_ERR_INPUT, "%s: the recording did not finish (run.json says \"running\": the recorder was "
                    "not closed, or its process was killed); record the training loop again", dir);
        pk_run_close(run);
        return s;
    }
    if (!strcmp(run->status, "running")) { /* killed, or still training: no trajectory yet */
        s = pk_fail(PK_ERR_INPUT, "%s: training has not finished (run.json says \"running\": it was killed, or is "
                    "still training); run `pk_train_resume %s` to finish it", dir, dir);
        pk_run_close(run);
        return s;
    }
    char *tp = pk_path_join(dir, "trajectory.bin");
    size_t expect[2] = {run->steps, run->n_train};
    s = tp ? pk_traj_read_sized(tp, expect, &run->traj) : PK_ERR_NOMEM;
    free(tp);
    if (s) { pk_run_close(run); return s; }
    run->batch_cap = pk_optim_batch(&run->optim, run->n_train);
    if (run->recorded) { /* a recorded step's batch is whatever the trainer's was */
        run->batch_cap = 1;
        for (size_t t = 0; t < run->steps; t++) {
            size_t nb = run->traj.off[t + 1] - run->traj.off[t];
            nb = nb ? nb : run->n_train;
            if (nb > run->batch_cap) run->batch_cap = nb;
        }
    }
    *out = run;
    return PK_OK;
}

void pk_run_close(pk_run *run)
{
    if (!run) return;
    pk_model_free(run->model);
    pk_traj_free(&run->traj);
    pk_data_free(&run->owned_train);
    free(run->mean);
    free(run->data_spec);
    free(run->label_column);
    free(run->classes);
    free(run->features);
    free(run->recorded);
    free(run->dir);
    free(run);
}

const pk_model *pk_run_model(const pk_run *run) { return run->model; }
pk_loss pk_run_loss(const pk_run *run) { return run->loss; }
const pk_optim *pk_run_optim(const pk_run *run) { return &run->optim; }
size_t pk_run_steps(const pk_run *run) { return run->steps; }
size_t pk_run_keep(const pk_run *run) { return run->keep; }
size_t pk_run_n_train(const pk_run *run) { return run->n_train; }
uint64_t pk_run_fingerprint(const pk_run *run) { return run->fingerprint; }
const char *pk_run_data_spec(const pk_run *run) { return run->data_spec; }
const char *pk_run_dir(const pk_run *run) { return run->dir; }
size_t pk_run_steps_requested(const pk_run *run) { return run->steps_requested; }
uint64_t pk_run_seed(const pk_run *run) { return run->seed; }
const char *pk_run_status(const pk_run *run) { return run->status; }
size_t pk_run_batch_cap(const pk_run *run) { return run->batch_cap; }
const char *pk_run_recorded(const pk_run *run) { return run->recorded; }

double pk_run_step_residual(const pk_run *run, size_t *step)
{
    if (step) *step = run->resid_step;
    return run->resid_max;
}

pk_status pk_run_step_check(pk_run *run, size_t step, double diff, double norm, double wnorm)
{
    double rel = norm > 0 ? diff / norm : diff > 0 ? INFINITY : 0.0;
    if (!run->resid_step || rel > run->resid_max || isnan(rel)) {
        run->resid_max = rel;
        run->resid_step = step;
    }
    /* float32 weights carry their rounding, about u |w| with u = 2^-24 */
    double allowed = run->step_tol * norm + (run->float32 ? 4.0 * 0x1p-24 * wnorm : 0.0);
    if (diff <= allowed) return PK_OK;
    return pk_fail(PK_ERR_STATE, "%s: recorded step %zu does not follow from the recorded optimiser (%s, lr %g): its "
                   "weights differ from the step computed from the previous weights, the step's batch and learning "
                   "rate by %.3g of the step (allowed: %.3g). Was the gradient changed (clipped, scaled, accumulated "
                   "over several batches), an optimizer step taken without recording it, another loss used, or a "
                   "module in training mode with dropout? Record the loop again without that step's change",
                   run->dir, step, pk_optim_name(run->optim.kind), pk_run_lr(run, step - 1), rel,
                   norm > 0 ? allowed / norm : 0.0);
}

const double *pk_run_mean(const pk_run *run) { return run->mean; }
const double *pk_run_std(const pk_run *run) { return run->std; }
const char *const *pk_run_classes(const pk_run *run, size_t *n)
{
    if (n) *n = run->n_classes;
    return (const char *const *)run->classes;
}
const char *const *pk_run_features(const pk_run *run) { return (const char *const *)run->features; }

pk_status pk_run_batch(const pk_run *run, size_t t, const uint32_t **idx, size_t *n)
{
    if (t >= run->steps) return pk_fail(PK_ERR_INPUT, "%s: step %zu out of range (the run has %zu steps)", run->dir, t + 1, run->steps);
    const pk_traj *tr = &run->traj;
    size_t nb = tr->off[t + 1] - tr->off[t];
    *idx = nb ? tr->idx + tr->off[t] : tr->iota;
    *n = nb ? nb : tr->N;
    return PK_OK;
}

double pk_run_lr(const pk_run *run, size_t t) { return t < run->steps ? run->traj.lr[t] : NAN; }
double pk_run_batch_loss(const pk_run *run, size_t t) { return t < run->steps ? run->traj.loss[t] : NAN; }

pk_status pk_run_load_data(const pk_run *run, const char *spec, const pk_load_opts *o, pk_data *out)
{
    /* the run's classes and, for CSV files, its label column unless given */
    pk_load_opts lo = o ? *o : pk_load_opts_defaults();
    if (!lo.class_names) {
        lo.class_names = (const char *const *)run->classes;
        lo.n_class_names = run->n_classes;
    }
    if (!lo.label_column && pk_data_spec_is_csv(spec)) lo.label_column = run->label_column;
    pk_status s = pk_data_load(spec, &lo, out);
    if (s) return s;
    if (out->d != run->d) {
        s = pk_fail(PK_ERR_INPUT, "%s: %zu features per example, the run was trained on %zu", spec, out->d, run->d);
        pk_data_free(out);
        return s;
    }
    if (run->mean) pk_data_standardize(out, run->mean, run->std);
    return PK_OK;
}

pk_status pk_run_attach_data(pk_run *run, const pk_data *train)
{
    if (train->n != run->n_train || pk_data_fingerprint(train) != run->fingerprint)
        return pk_fail(PK_ERR_INPUT, "%s: the training data do not match the run's fingerprint (%zu examples given, %zu recorded): "
                       "pass the same data, selection and standardisation", run->dir, train->n, run->n_train);
    run->train = train;
    return PK_OK;
}

pk_status pk_run_load_train(pk_run *run, pk_data *train)
{
    pk_status s = pk_run_load_data(run, run->data_spec, &run->load, train);
    if (s) return s;
    if (train->n != run->n_train || pk_data_fingerprint(train) != run->fingerprint) {
        pk_data_free(train);
        return pk_fail(PK_ERR_STATE, "%s: the training data at %s changed since training (fingerprint mismatch)",
                       run->dir, run->data_spec);
    }
    return PK_OK;
}

pk_status pk_run_train_data(pk_run *run, const pk_data **train)
{
    if (!run->train) {
        pk_status s = pk_run_load_train(run, &run->owned_train);
        if (s) return s;
        run->train = &run->owned_train;
    }
    *train = run->train;
    return PK_OK;
}

