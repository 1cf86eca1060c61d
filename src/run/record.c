/* record.c -- writing a run directory: run.json, its status, the end of a
 * run and the pruning of what a resumed run must not keep. */
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

/* Each file path in a data spec made absolute, so that a run can be used
 * from any working directory. */
static char *spec_absolute(const char *spec)
{
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return pk_strdup(spec);
    const char *body = spec;
    size_t prefix = 0;
    if (!strncmp(spec, "fashion-mnist:", 14)) return pk_strdup(spec);
    if (!strncmp(spec, "npy:", 4) || !strncmp(spec, "idx:", 4)) { prefix = 4; body = spec + 4; }
    size_t cap = strlen(spec) + 2 * strlen(cwd) + 8;
    char *out = pk_alloc(cap, 1);
    if (!out) return NULL;
    memcpy(out, spec, prefix);
    size_t k = prefix;
    while (*body) {
        const char *comma = prefix ? strchr(body, ',') : NULL;
        size_t len = comma ? (size_t)(comma - body) : strlen(body);
        if (body[0] != '/') k += (size_t)snprintf(out + k, cap - k, "%s/", cwd);
        memcpy(out + k, body, len);
        k += len;
        body += len;
        if (*body == ',') out[k++] = *body++;
    }
    out[k] = 0;
    return out;
}

static pk_status json_write(const char *path, cJSON *root)
{
    char *text = cJSON_Print(root);
    if (!text) return pk_fail(PK_ERR_NOMEM, "%s: out of memory", path);
    size_t n = strlen(text);
    text[n] = '\n'; /* cJSON_Print's buffer has room for the NUL we overwrite */
    pk_status s = pk_file_write(path, text, n + 1);
    free(text);
    return s;
}

/* A names file, one name a line (a name holds no line break: data.c
 * makes sure), written atomically. */
static pk_status names_write(const char *dir, const char *file, char *const *names, size_t n)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += strlen(names[i]) + 1;
    char *p = pk_path_join(dir, file), *text = pk_alloc(bytes + 1, 1);
    pk_status s = p && text ? PK_OK : PK_ERR_NOMEM;
    if (!s) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            size_t len = strlen(names[i]);
            memcpy(text + k, names[i], len);
            text[k + len] = '\n';
            k += len + 1;
        }
        s = pk_file_write(p, text, bytes);
    }
    free(p);
    free(text);
    return s;
}

static char *hex64(char buf[17], uint64_t v)
{
    snprintf(buf, 17, "%016llx", (unsigned long long)v);
    return buf;
}

/* run.json of a run: status "running", no steps yet (pk_run_finish sets
 * both); a recorded run's "recorded" says who took its steps. */
static cJSON *run_json(const pk_data *train, const pk_train_opts *o, const pk_model *m, const pk_record_opts *rec)
{
    char spec[256], hex[17];
    pk_model_spec(m, spec, sizeof spec);
    const pk_optim *op = &o->optim;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "format", "pathkernel-run");
    cJSON_AddNumberToObject(r, "version", PK_RUN_VERSION);
    cJSON_AddStringToObject(r, "pathkernel", PK_VERSION);
    cJSON_AddStringToObject(r, "status", "running");
    cJSON_AddNumberToObject(r, "steps", 0);
    cJSON_AddNumberToObject(r, "steps_requested", (double)o->steps);
    cJSON_AddNumberToObject(r, "keep", (double)o->keep);
    cJSON_AddStringToObject(r, "seed", hex64(hex, o->seed));
    if (rec) {
        cJSON *ro = cJSON_AddObjectToObject(r, "recorded");
        cJSON_AddStringToObject(ro, "from", rec->origin ? rec->origin : "another trainer");
        cJSON_AddStringToObject(ro, "dtype", rec->float32 ? "float32" : "float64");
        cJSON_AddNumberToObject(ro, "step_tolerance", rec->step_tol);
    }
    cJSON *mo = cJSON_AddObjectToObject(r, "model");
    cJSON_AddStringToObject(mo, "spec", spec);
    cJSON_AddStringToObject(mo, "param", m->param == PK_PARAM_NTK ? "ntk" : "standard");
    cJSON_AddNumberToObject(mo, "sigma_w", m->sigma_w);
    cJSON_AddNumberToObject(mo, "sigma_b", m->sigma_b);
    cJSON_AddNumberToObject(mo, "inputs", (double)m->n_in);
    cJSON_AddNumberToObject(mo, "outputs", (double)m->n_out);
    cJSON_AddNumberToObject(mo, "params", (double)m->n_params);
    cJSON_AddStringToObject(mo, "init", rec ? "recorded" : o->init_dir ? o->init_dir : "seeded");
    cJSON_AddStringToObject(r, "loss", pk_loss_name(o->loss));
    cJSON *oo = cJSON_AddObjectToObject(r, "optim");
    cJSON_AddStringToObject(oo, "kind", pk_optim_name(op->kind));
    cJSON_AddNumberToObject(oo, "lr", op->lr);
    cJSON_AddNumberToObject(oo, "batch", (double)op->batch);
    cJSON_AddNumberToObject(oo, "momentum", op->momentum);
    cJSON_AddNumberToObject(oo, "beta1", op->beta1);
    cJSON_AddNumberToObject(oo, "beta2", op->beta2);
    cJSON_AddNumberToObject(oo, "eps", op->eps);
    cJSON_AddNumberToObject(oo, "weight_decay", op->weight_decay);
    cJSON_AddStringToObject(oo, "schedule", pk_schedule_name(op->schedule));
    cJSON_AddNumberToObject(oo, "step_every", (double)op->step_every);
    cJSON_AddNumberToObject(oo, "gamma", op->gamma);
    cJSON_AddNumberToObject(oo, "lr_min", op->lr_min);
    cJSON *da = cJSON_AddObjectToObject(r, "data");
    char *abs = o->data_spec ? spec_absolute(o->data_spec) : NULL;
    cJSON_AddStringToObject(da, "spec", abs ? abs : "");
    free(abs);
    const pk_load_opts *lo = o->load;
    cJSON_AddNumberToObject(da, "first", lo ? (double)lo->first : 0);
    cJSON_AddNumberToObject(da, "random", lo ? (double)lo->random : 0);
    cJSON_AddStringToObject(da, "seed", hex64(hex, lo ? lo->seed : 0));
    /* the CSV options, only when given: runs of other data read as before */
    if (lo && lo->sep) {
        char sep[2] = {lo->sep, 0};
        cJSON_AddStringToObject(da, "sep", sep);
    }
    if (lo && lo->label_column) cJSON_AddStringToObject(da, "label_column", lo->label_column);
    cJSON_AddBoolToObject(da, "standardize", o->standardize);
    cJSON_AddNumberToObject(da, "n", (double)train->n);
    cJSON_AddNumberToObject(da, "d", (double)train->d);
    cJSON_AddNumberToObject(da, "ty", (double)train->ty);
    cJSON_AddNumberToObject(da, "img_h", (double)train->img_h);
    cJSON_AddNumberToObject(da, "img_w", (double)train->img_w);
    cJSON_AddStringToObject(da, "fingerprint", hex64(hex, pk_data_fingerprint(train)));
    return r;
}

pk_status pk_run_json_write(const char *dir, const pk_data *train, const pk_train_opts *o, const pk_model *m,
                            const pk_record_opts *rec)
{
    char *js = pk_path_join(dir, "run.json");
    cJSON *r = js ? run_json(train, o, m, rec) : NULL;
    pk_status s = r ? json_write(js, r) : PK_ERR_NOMEM;
    cJSON_Delete(r);
    free(js);
    return s;
}

pk_status pk_run_create(const char *dir, const pk_data *train, const pk_train_opts *o, const pk_model *m,
                        const double *w, const double *state, pk_journal *j, const pk_record_opts *rec)
{
    char *js = pk_path_join(dir, "run.json");
    if (!js) return PK_ERR_NOMEM;
    if (access(js, F_OK) == 0) {
        free(js);
        return pk_fail(PK_ERR_INPUT, "%s already holds a run: remove it or choose another run directory (out_dir); "
                       "an interrupted run continues with `pk_train_resume %s`", dir, dir);
    }
    free(js);
    pk_status ms = pk_mkdirs(dir);
    if (ms) return ms;
    char *wd = pk_path_join(dir, "weights");
    if (!wd || (mkdir(wd, 0777) != 0 && errno != EEXIST)) {
        pk_status s = pk_fail(PK_ERR_IO, "%s: cannot create directory: %s", wd ? wd : dir, strerror(errno));
        free(wd);
        return s;
    }
    free(wd);

    /* the names, only when the data have them (classes.txt, features.txt) */
    pk_status s = PK_OK;
    if (train->class_names) s = names_write(dir, "classes.txt", train->class_names, train->n_class_names);
    if (!s && train->feature_names) s = names_write(dir, "features.txt", train->feature_names, train->d);
    if (!s && o->standardize) {
        double *ms = pk_alloc(2 * train->d, sizeof(double));
        char *p = pk_path_join(dir, "standardize.npy");
        if (!ms || !p) s = PK_ERR_NOMEM;
        else {
            memcpy(ms, o->mean, train->d * sizeof(double));
            memcpy(ms + train->d, o->std, train->d * sizeof(double));
            size_t shape[2] = {2, train->d};
            s = pk_npy_write(p, ms, 2, shape);
        }
        free(ms);
        free(p);
    }
    /* step 0 and the journal (a recording has none) before run.json: a
     * directory with run.json always holds what a resume starts from */
    char *cp = s ? NULL : pk_ckpt_path(dir, 0);
    if (!s) s = cp ? pk_ckpt_write(cp, 0, m->n_params, w, pk_optim_state_len(&o->optim), state) : PK_ERR_NOMEM;
    free(cp);
    if (!s && j) s = pk_journal_create(j, dir);
    if (!s) s = pk_run_json_write(dir, train, o, m, rec);
    return s;
}

pk_status pk_run_set_status(const char *dir, const char *status, size_t steps)
{
    char *js = pk_path_join(dir, "run.json");
    unsigned char *text;
    size_t len;
    pk_status s = js ? pk_read_file(js, 0, 1 << 20, &text, &len) : PK_ERR_NOMEM;
    if (!s) {
        cJSON *r = cJSON_Parse((char *)text);
        free(text);
        if (!r) s = pk_fail(PK_ERR_STATE, "%s: not valid JSON", js);
        else {
            cJSON_ReplaceItemInObject(r, "status", cJSON_CreateString(status));
            cJSON_ReplaceItemInObject(r, "steps", cJSON_CreateNumber((double)steps));
            s = json_write(js, r);
            cJSON_Delete(r);
        }
    }
    free(js);
    return s;
}

pk_status pk_run_finish(const char *dir, const pk_traj *tr, size_t steps_done, const char *status)
{
    pk_traj done = *tr;
    done.T = steps_done;
    char *tp = pk_path_join(dir, "trajectory.bin"), *cp = pk_path_join(dir, "steps.csv");
    pk_status s = (!tp || !cp) ? PK_ERR_NOMEM : pk_traj_write(tp, &done);
    if (!s) { /* steps.csv: %.17g round-trips every double */
        pk_atomic a;
        s = pk_atomic_open(&a, cp);
        if (!s) {
            fprintf(a.f, "step,lr,batch_size,loss\n");
            for (size_t t = 0; t < steps_done; t++) {
                size_t nb = tr->off[t + 1] - tr->off[t];
                fprintf(a.f, "%zu,%.17g,%zu,%.17g\n", t + 1, tr->lr[t], nb ? nb : tr->N, tr->loss[t]);
            }
            s = pk_atomic_commit(&a);
        }
    }
    if (!s) s = pk_run_set_status(dir, status, steps_done);
    if (!s && !strcmp(status, "complete")) { /* nothing left to resume: the journal goes */
        char *jp = pk_journal_path(dir);
        if (!jp) s = PK_ERR_NOMEM;
        else if (unlink(jp) != 0 && errno != ENOENT) s = pk_fail(PK_ERR_IO, "%s: cannot remove: %s", jp, strerror(errno));
        free(jp);
    }
    free(tp); free(cp);
    return s;
}

/* unlink(2) where a missing file is no failure. */
static pk_status remove_file(const char *dir, const char *name)
{
    char *p = pk_path_join(dir, name);
    if (!p) return PK_ERR_NOMEM;
    pk_status s = unlink(p) != 0 && errno != ENOENT ? pk_fail(PK_ERR_IO, "%s: cannot remove: %s", p, strerror(errno)) : PK_OK;
    free(p);
    return s;
}

/* Step number of a checkpoint's name "step-N.pkw"; -1 for other names. */
static int ckpt_step(const char *name, size_t *t)
{
    if (strncmp(name, "step-", 5) != 0 || name[5] < '0' || name[5] > '9') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(name + 5, &end, 10);
    if (errno || strcmp(end, ".pkw") != 0) return -1;
    *t = (size_t)v;
    return 0;
}

/* Remove, in dir, the temporary files of killed atomic writes and (with
 * keep) the checkpoints that pk_run_prune names. */
static pk_status prune_dir(const char *dir, size_t from, size_t T, size_t keep)
{
    DIR *d = opendir(dir);
    if (!d) return pk_fail(PK_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    pk_status s = PK_OK;
    struct dirent *de;
    while (!s && (de = readdir(d))) {
        size_t t;
        int stale = strstr(de->d_name, ".tmp.") != NULL ||
                    (keep && ckpt_step(de->d_name, &t) == 0 && (t > from || (t % keep != 0 && t != T)));
        if (stale) s = remove_file(dir, de->d_name);
    }
    closedir(d);
    return s;
}

pk_status pk_run_prune(const char *dir, size_t from, size_t T, size_t keep)
{
    pk_status s = remove_file(dir, "trajectory.bin");
    if (!s) s = remove_file(dir, "steps.csv");
    if (!s) s = prune_dir(dir, from, T, 0);
    char *wd = s ? NULL : pk_path_join(dir, "weights");
    if (!s) s = wd ? prune_dir(wd, from, T, keep) : PK_ERR_NOMEM;
    free(wd);
    return s;
}
