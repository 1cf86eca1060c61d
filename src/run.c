/* run.c -- the run directory: what a training run leaves behind, and how it
 * is read back.
 *
 *   RUN/run.json            configuration, data fingerprint, status (cJSON)
 *   RUN/trajectory.bin      learning rate, batch loss and batch of every step
 *   RUN/steps.csv           the same, for people: step,lr,batch_size,loss
 *   RUN/standardize.npy     (2, d) feature mean and std, when standardised
 *   RUN/weights/step-T.pkw  weights and optimiser state after step T
 *
 * Binary files carry a magic, a version and a crc32; every file is written
 * atomically (temporary name, then rename). */
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* --------------------------------------------------------- binary helpers */

/* A binary file written straight through to its temporary name, with the
 * crc32 of everything written kept on the way; put_finish appends it and
 * renames the file into place. */
typedef struct bytes { pk_atomic a; uLong crc; pk_status s; } bytes;

static pk_status put_open(bytes *b, const char *path)
{
    b->crc = crc32(0L, Z_NULL, 0);
    b->s = pk_atomic_open(&b->a, path);
    return b->s;
}

static void put(bytes *b, const void *src, size_t n)
{
    if (b->s) return;
    const unsigned char *p = src;
    for (size_t o = 0; o < n; o += 1u << 30) { /* crc32 takes 32-bit lengths */
        size_t len = n - o < (1u << 30) ? n - o : (1u << 30);
        b->crc = crc32(b->crc, p + o, (uInt)len);
    }
    if (n && fwrite(src, 1, n, b->a.f) != n) b->s = pk_fail(PK_ERR_IO, "%s: write failed: %s", b->a.path, strerror(errno));
}
static void put_u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytes *b, uint64_t v) { put(b, &v, 8); }

static pk_status put_finish(bytes *b)
{
    put_u32(b, (uint32_t)b->crc);
    if (b->s) { pk_atomic_abort(&b->a); return b->s; }
    return pk_atomic_commit(&b->a);
}

/* Read a whole binary file and check its magic, version and crc32. */
static pk_status get_checked(const char *path, const char magic[8], unsigned char **buf, size_t *len)
{
    pk_status s = pk_read_file(path, 0, 0, buf, len);
    if (s) return s;
    if (*len < 20 || memcmp(*buf, magic, 8) != 0) {
        free(*buf);
        return pk_fail(PK_ERR_STATE, "%s: not a pathkernel %.6s file (wrong magic or too short)", path, magic);
    }
    uint32_t ver, crc, want;
    memcpy(&ver, *buf + 8, 4);
    if (ver != PK_RUN_VERSION) {
        free(*buf);
        return pk_fail(PK_ERR_STATE, "%s: format version %u, this build reads version %d", path, ver, PK_RUN_VERSION);
    }
    memcpy(&want, *buf + *len - 4, 4);
    crc = (uint32_t)crc32(0L, NULL, 0);
    for (size_t o = 0; o < *len - 4; o += 1u << 30) {
        size_t n = *len - 4 - o < (1u << 30) ? *len - 4 - o : (1u << 30);
        crc = (uint32_t)crc32(crc, *buf + o, (uInt)n);
    }
    if (crc != want) {
        free(*buf);
        return pk_fail(PK_ERR_STATE, "%s: checksum mismatch (file damaged or truncated)", path);
    }
    *len -= 4;
    return PK_OK;
}

/* ------------------------------------------------------------ checkpoints */

static const char CKPT_MAGIC[8] = {'P', 'K', 'W', 'E', 'I', 'G', 'H', 'T'};
static const char TRAJ_MAGIC[8] = {'P', 'K', 'T', 'R', 'A', 'J', 0, 0};

char *pk_ckpt_path(const char *dir, size_t t)
{
    char name[64];
    snprintf(name, sizeof name, "weights/step-%08zu.pkw", t);
    return pk_path_join(dir, name);
}

pk_status pk_ckpt_write(const char *path, size_t step, size_t P, const double *w, size_t S, const double *state)
{
    bytes b;
    if (put_open(&b, path)) return b.s;
    put(&b, CKPT_MAGIC, 8);
    put_u32(&b, PK_RUN_VERSION);
    put_u32(&b, 0);
    put_u64(&b, step);
    put_u64(&b, P);
    put_u64(&b, S);
    put(&b, w, P * sizeof *w);
    if (S) put(&b, state, S * P * sizeof *state);
    return put_finish(&b);
}

pk_status pk_ckpt_read(const char *path, size_t step, size_t P, double *w, size_t S, double *state)
{
    unsigned char *buf;
    size_t len;
    pk_status s = get_checked(path, CKPT_MAGIC, &buf, &len);
    if (s) return s;
    uint64_t hdr[3];
    if (len < 40) { free(buf); return pk_fail(PK_ERR_STATE, "%s: truncated header", path); }
    memcpy(hdr, buf + 16, 24);
    if (hdr[0] != step || hdr[1] != P || hdr[2] != S || len != 40 + (P + S * P) * sizeof(double)) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: holds step %llu with %llu parameters and %llu state vectors; expected step %zu, %zu and %zu",
                       path, (unsigned long long)hdr[0], (unsigned long long)hdr[1], (unsigned long long)hdr[2], step, P, S);
    }
    memcpy(w, buf + 40, P * sizeof *w);
    if (S && state) memcpy(state, buf + 40 + P * sizeof *w, S * P * sizeof *state);
    free(buf);
    return PK_OK;
}

/* ------------------------------------------------------------- trajectory */

pk_status pk_traj_write(const char *path, const pk_traj *tr)
{
    bytes b;
    size_t total = tr->off[tr->T];
    if (put_open(&b, path)) return b.s;
    put(&b, TRAJ_MAGIC, 8);
    put_u32(&b, PK_RUN_VERSION);
    put_u32(&b, 0);
    put_u64(&b, tr->T);
    put_u64(&b, tr->N);
    put_u64(&b, total);
    put(&b, tr->lr, tr->T * sizeof(double));
    put(&b, tr->loss, tr->T * sizeof(double));
    put(&b, tr->off, (tr->T + 1) * sizeof(uint64_t));
    if (total) put(&b, tr->idx, total * sizeof(uint32_t));
    return put_finish(&b);
}

pk_status pk_traj_read(const char *path, pk_traj *tr)
{
    memset(tr, 0, sizeof *tr);
    unsigned char *buf;
    size_t len;
    pk_status s = get_checked(path, TRAJ_MAGIC, &buf, &len);
    if (s) return s;
    uint64_t h[3];
    if (len < 40) { free(buf); return pk_fail(PK_ERR_STATE, "%s: truncated header", path); }
    memcpy(h, buf + 16, 24);
    uint64_t T = h[0], N = h[1], total = h[2];
    if (T > (len / 24) || total > len / 4 || N > UINT32_MAX ||
        len != 40 + T * 16 + (T + 1) * 8 + total * 4) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: sizes in the header do not match the file", path);
    }
    tr->T = T;
    tr->N = N;
    tr->lr = pk_alloc(T + 1, sizeof(double));
    tr->loss = pk_alloc(T + 1, sizeof(double));
    tr->off = pk_alloc(T + 1, sizeof(uint64_t));
    tr->idx = pk_alloc(total + 1, sizeof(uint32_t));
    tr->iota = pk_alloc(N + 1, sizeof(uint32_t));
    if (!tr->lr || !tr->loss || !tr->off || !tr->idx || !tr->iota) { free(buf); pk_traj_free(tr); return PK_ERR_NOMEM; }
    const unsigned char *p = buf + 40;
    memcpy(tr->lr, p, T * 8); p += T * 8;
    memcpy(tr->loss, p, T * 8); p += T * 8;
    memcpy(tr->off, p, (T + 1) * 8); p += (T + 1) * 8;
    memcpy(tr->idx, p, total * 4);
    free(buf);
    for (size_t i = 0; i < N; i++) tr->iota[i] = (uint32_t)i;
    for (size_t t = 0; t < T; t++)
        if (tr->off[t + 1] < tr->off[t] || tr->off[t + 1] > total) { pk_traj_free(tr); return pk_fail(PK_ERR_STATE, "%s: batch offsets out of order at step %zu", path, t); }
    for (size_t k = 0; k < total; k++)
        if (tr->idx[k] >= N) {
            /* Fuzzing (fuzz_traj) found: the message read tr->idx[k] after
             * pk_traj_free had set tr->idx to NULL (a crash on any trajectory
             * with an out-of-range batch index). Keep the value first. */
            uint32_t bad = tr->idx[k];
            pk_traj_free(tr);
            return pk_fail(PK_ERR_STATE, "%s: batch index %u out of range", path, bad);
        }
    return PK_OK;
}

void pk_traj_free(pk_traj *tr)
{
    free(tr->lr); free(tr->loss); free(tr->off); free(tr->idx); free(tr->iota);
    memset(tr, 0, sizeof *tr);
}

/* ----------------------------------------------------------------- run.json */

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
    pk_status s = pk_write_file(path, text, n + 1);
    free(text);
    return s;
}

static char *hex64(char buf[17], uint64_t v)
{
    snprintf(buf, 17, "%016llx", (unsigned long long)v);
    return buf;
}

pk_status pk_run_create(const char *dir, const pk_data *train, const pk_train_opts *o, const pk_mlp *m)
{
    char *js = pk_path_join(dir, "run.json");
    if (!js) return PK_ERR_NOMEM;
    if (access(js, F_OK) == 0) {
        free(js);
        return pk_fail(PK_ERR_INPUT, "%s already holds a run: remove it or choose another --out", dir);
    }
    pk_status ms = pk_mkdirs(dir);
    if (ms) { free(js); return ms; }
    char *wd = pk_path_join(dir, "weights");
    if (!wd || (mkdir(wd, 0777) != 0 && errno != EEXIST)) {
        pk_status s = pk_fail(PK_ERR_IO, "%s: cannot create directory: %s", wd ? wd : dir, strerror(errno));
        free(wd); free(js);
        return s;
    }
    free(wd);

    char spec[256], hex[17];
    pk_mlp_spec(m, spec, sizeof spec);
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
    cJSON *mo = cJSON_AddObjectToObject(r, "model");
    cJSON_AddStringToObject(mo, "spec", spec);
    cJSON_AddStringToObject(mo, "param", m->param == PK_PARAM_NTK ? "ntk" : "standard");
    cJSON_AddNumberToObject(mo, "sigma_w", m->sigma_w);
    cJSON_AddNumberToObject(mo, "sigma_b", m->sigma_b);
    cJSON_AddNumberToObject(mo, "inputs", (double)m->dims[0]);
    cJSON_AddNumberToObject(mo, "outputs", (double)m->dims[m->n_layers]);
    cJSON_AddNumberToObject(mo, "params", (double)m->n_params);
    cJSON_AddStringToObject(mo, "init", o->init_dir ? o->init_dir : "seeded");
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
    cJSON_AddBoolToObject(da, "standardize", o->standardize);
    cJSON_AddNumberToObject(da, "n", (double)train->n);
    cJSON_AddNumberToObject(da, "d", (double)train->d);
    cJSON_AddNumberToObject(da, "ty", (double)train->ty);
    cJSON_AddNumberToObject(da, "img_h", (double)train->img_h);
    cJSON_AddNumberToObject(da, "img_w", (double)train->img_w);
    cJSON_AddStringToObject(da, "fingerprint", hex64(hex, pk_data_fingerprint(train)));

    pk_status s = PK_OK;
    if (o->standardize) {
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
    if (!s) s = json_write(js, r);
    cJSON_Delete(r);
    free(js);
    return s;
}

pk_status pk_run_finish(const char *dir, const pk_traj *tr, size_t steps_done, const char *status)
{
    pk_traj done = *tr;
    done.T = steps_done;
    char *tp = pk_path_join(dir, "trajectory.bin"), *cp = pk_path_join(dir, "steps.csv");
    char *js = pk_path_join(dir, "run.json");
    pk_status s = (!tp || !cp || !js) ? PK_ERR_NOMEM : pk_traj_write(tp, &done);
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
    if (!s) {
        unsigned char *text;
        size_t len;
        s = pk_read_file(js, 0, 1 << 20, &text, &len);
        if (!s) {
            cJSON *r = cJSON_Parse((char *)text);
            free(text);
            if (!r) s = pk_fail(PK_ERR_STATE, "%s: not valid JSON", js);
            else {
                cJSON_ReplaceItemInObject(r, "status", cJSON_CreateString(status));
                cJSON_ReplaceItemInObject(r, "steps", cJSON_CreateNumber((double)steps_done));
                s = json_write(js, r);
                cJSON_Delete(r);
            }
        }
    }
    free(tp); free(cp); free(js);
    return s;
}

/* ------------------------------------------------------------- reading */

struct pk_run {
    char *dir;
    pk_mlp mlp;
    pk_loss loss;
    pk_optim optim;
    size_t steps, keep, n_train, d, ty;
    uint64_t fingerprint;
    char *data_spec;
    pk_load_opts load;
    double *mean, *std;      /* (d) each, or NULL */
    pk_traj traj;
    const pk_data *train;    /* attached training data (borrowed) or NULL */
    pk_data owned_train;     /* loaded by pk_run_weights when it must replay */
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
    const cJSON *mo = jget(r, "model"), *oo = jget(r, "optim"), *da = jget(r, "data");
    if (!cJSON_IsObject(mo) || !cJSON_IsObject(oo) || !cJSON_IsObject(da)) return BAD("model/optim/data");
    const char *spec = jstr(mo, "spec"), *param = jstr(mo, "param");
    size_t din, dout, P;
    double sw, sb;
    if (!spec || !param || jsize(mo, "inputs", &din) || jsize(mo, "outputs", &dout) || jsize(mo, "params", &P) ||
        jnum(mo, "sigma_w", &sw) || jnum(mo, "sigma_b", &sb))
        return BAD("model");
    pk_status s = pk_mlp_parse(spec, din, dout, strcmp(param, "ntk") ? PK_PARAM_STANDARD : PK_PARAM_NTK, sw, sb, &run->mlp);
    if (s) return pk_fail(PK_ERR_STATE, "%s: %s", path, pk_last_error());
    if (run->mlp.n_params != P) return BAD("model.params");
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

pk_status pk_run_open(const char *dir, pk_run **out)
{
    *out = NULL;
    pk_run *run = pk_calloc(1, sizeof *run);
    if (!run) return PK_ERR_NOMEM;
    run->dir = pk_strdup(dir);
    char *js = pk_path_join(dir, "run.json"), *tp = pk_path_join(dir, "trajectory.bin");
    unsigned char *text = NULL;
    size_t len;
    pk_status s = (!run->dir || !js || !tp) ? PK_ERR_NOMEM : PK_OK;
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
    if (!s) {
        s = pk_traj_read(tp, &run->traj);
        if (!s && (run->traj.T != run->steps || run->traj.N != run->n_train))
            s = pk_fail(PK_ERR_STATE, "%s: records %zu steps of %zu examples, run.json says %zu and %zu",
                        tp, run->traj.T, run->traj.N, run->steps, run->n_train);
    }
    free(text); free(js); free(tp);
    if (s) { pk_run_close(run); return s; }
    *out = run;
    return PK_OK;
}

void pk_run_close(pk_run *run)
{
    if (!run) return;
    pk_traj_free(&run->traj);
    pk_data_free(&run->owned_train);
    free(run->mean);
    free(run->data_spec);
    free(run->dir);
    free(run);
}

const pk_mlp *pk_run_mlp(const pk_run *run) { return &run->mlp; }
pk_loss pk_run_loss(const pk_run *run) { return run->loss; }
const pk_optim *pk_run_optim(const pk_run *run) { return &run->optim; }
size_t pk_run_steps(const pk_run *run) { return run->steps; }
size_t pk_run_keep(const pk_run *run) { return run->keep; }
size_t pk_run_n_train(const pk_run *run) { return run->n_train; }
uint64_t pk_run_fingerprint(const pk_run *run) { return run->fingerprint; }
const char *pk_run_data_spec(const pk_run *run) { return run->data_spec; }
const char *pk_run_dir(const pk_run *run) { return run->dir; }
const double *pk_run_mean(const pk_run *run) { return run->mean; }
const double *pk_run_std(const pk_run *run) { return run->std; }

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
    pk_status s = pk_data_load(spec, o, out);
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

pk_status pk_run_train(pk_run *run, const pk_data **train)
{
    if (!run->train) {
        pk_status s = pk_run_load_train(run, &run->owned_train);
        if (s) return s;
        run->train = &run->owned_train;
    }
    *train = run->train;
    return PK_OK;
}

pk_status pk_run_weights(pk_run *run, size_t t, double *w)
{
    if (t > run->steps) return pk_fail(PK_ERR_INPUT, "%s: step %zu out of range (the run has steps 0..%zu)", run->dir, t, run->steps);
    size_t c = t == run->steps ? t : t / run->keep * run->keep;
    const pk_mlp *m = &run->mlp;
    size_t P = m->n_params, S = pk_optim_state_len(&run->optim);
    double *state = pk_calloc(S * P + 1, sizeof *state);
    char *path = pk_ckpt_path(run->dir, c);
    pk_status s = (!state || !path) ? PK_ERR_NOMEM : pk_ckpt_read(path, c, P, w, S, state);
    free(path);
    if (!s && c < t) { /* replay the recorded steps c..t-1 exactly */
        const pk_data *train = NULL;
        s = pk_run_train(run, &train);
        double *G = s ? NULL : pk_alloc(P, sizeof *G);
        pk_stepper st = {0};
        if (!s && !G) s = PK_ERR_NOMEM;
        size_t B = run->optim.batch && run->optim.batch < run->n_train ? run->optim.batch : run->n_train;
        if (!s) s = pk_stepper_init(&st, m, run->loss, run->train, B);
        for (size_t k = c; !s && k < t; k++) {
            const uint32_t *idx;
            size_t nb;
            pk_run_batch(run, k, &idx, &nb);
            pk_stepper_grad(&st, w, idx, nb, G);
            pk_optim_step(&run->optim, k, run->traj.lr[k], P, w, state, G, NULL);
        }
        pk_stepper_free(&st);
        free(G);
    }
    free(state);
    return s;
}

/* --------------------------------------------------------- weight export */

pk_status pk_weights_export(const pk_mlp *m, const double *w, const char *dir)
{
    pk_status s = pk_mkdirs(dir);
    for (size_t l = 0; l < m->n_layers && !s; l++) {
        size_t dout = m->dims[l + 1], din = m->dims[l];
        double sw = pk_mlp_wscale(m, l), sb = pk_mlp_bscale(m, l);
        double *buf = pk_alloc(dout * din, sizeof *buf);
        if (!buf) return PK_ERR_NOMEM;
        char name[32];
        for (int part = 0; part < 2 && !s; part++) {
            size_t n = part ? dout : dout * din;
            const double *src = w + (part ? m->b_off[l] : m->w_off[l]);
            double sc = part ? sb : sw;
            for (size_t i = 0; i < n; i++) buf[i] = sc * src[i];
            snprintf(name, sizeof name, "%c%zu.npy", part ? 'b' : 'W', l + 1);
            char *p = pk_path_join(dir, name);
            size_t shape[2] = {dout, din};
            s = p ? pk_npy_write(p, buf, part ? 1 : 2, shape) : PK_ERR_NOMEM;
            free(p);
        }
        free(buf);
    }
    return s;
}

pk_status pk_weights_import(const pk_mlp *m, const char *dir, double *w)
{
    for (size_t l = 0; l < m->n_layers; l++) {
        size_t dout = m->dims[l + 1], din = m->dims[l];
        double sw = pk_mlp_wscale(m, l), sb = pk_mlp_bscale(m, l);
        for (int part = 0; part < 2; part++) {
            char name[32];
            snprintf(name, sizeof name, "%c%zu.npy", part ? 'b' : 'W', l + 1);
            char *p = pk_path_join(dir, name);
            if (!p) return PK_ERR_NOMEM;
            double *a;
            size_t nd, shape[8];
            pk_status s = pk_npy_read(p, &a, &nd, shape);
            if (s) { free(p); return s; }
            int ok = part ? (nd == 1 && shape[0] == dout) : (nd == 2 && shape[0] == dout && shape[1] == din);
            if (!ok) {
                if (!part) s = pk_fail(PK_ERR_INPUT, "%s: expected shape (%zu, %zu), as nn.Linear(%zu, %zu).weight", p, dout, din, din, dout);
                else s = pk_fail(PK_ERR_INPUT, "%s: expected shape (%zu,), as nn.Linear(%zu, %zu).bias", p, dout, din, dout);
                free(a); free(p);
                return s;
            }
            size_t n = part ? dout : dout * din;
            double sc = part ? sb : sw;
            double *dst = w + (part ? m->b_off[l] : m->w_off[l]);
            for (size_t i = 0; i < n; i++) {
                if (!isfinite(a[i])) {
                    s = pk_fail(PK_ERR_INPUT, "%s: element %zu is not finite", p, i);
                    free(a); free(p);
                    return s;
                }
                if (sc == 0.0 && a[i] != 0.0) {
                    s = pk_fail(PK_ERR_INPUT, "%s: sigma_b is 0, so the biases must be 0", p);
                    free(a); free(p);
                    return s;
                }
                dst[i] = sc == 0.0 ? 0.0 : a[i] / sc;
            }
            free(a); free(p);
        }
    }
    return PK_OK;
}
