/* run.c -- the run directory: what a training run leaves behind, and how it
 * is read back.
 *
 *   RUN/run.json            configuration, data fingerprint, status (cJSON)
 *   RUN/trajectory.bin      learning rate, batch loss and batch of every step
 *   RUN/steps.csv           the same, for people: step,lr,batch_size,loss
 *   RUN/standardize.npy     (2, d) feature mean and std, when standardised
 *   RUN/weights/step-T.pkw  weights and optimiser state after step T
 *   RUN/journal.bin         one checksummed record per finished step, appended
 *                           while training (removed when the run completes)
 *
 * Binary files carry a magic, a version and a crc32; every file but the
 * journal is written atomically (temporary name, then rename). The journal
 * is what makes a killed run resumable (train.c, pk_train_resume). */
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* --------------------------------------------------------- binary helpers */

/* A binary file written straight through to its temporary name, with the
 * crc32 of everything written kept on the way; put_finish appends it and
 * renames the file into place. */
typedef struct bytes { pk_atomic a; uint32_t crc; pk_status s; } bytes;

static pk_status put_open(bytes *b, const char *path)
{
    b->crc = 0;
    b->s = pk_atomic_open(&b->a, path);
    return b->s;
}

static void put(bytes *b, const void *src, size_t n)
{
    if (b->s) return;
    b->crc = pk_crc32(b->crc, src, n);
    if (n && fwrite(src, 1, n, b->a.f) != n) b->s = pk_write_error(b->a.path, errno);
}
static void put_u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytes *b, uint64_t v) { put(b, &v, 8); }

static pk_status put_finish(bytes *b)
{
    put_u32(b, b->crc);
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
    crc = pk_crc32(0, *buf, *len - 4);
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

/* Read exactly n bytes of fd into dst (NULL: read and drop them), adding
 * them to *crc. Returns 0, or -1 with errno set (0 for a short file). */
static int read_crc(int fd, void *dst, size_t n, uint32_t *crc)
{
    unsigned char drop[1 << 16], *p = dst;
    while (n) {
        size_t want = !p ? (n < sizeof drop ? n : sizeof drop) : n < (1u << 30) ? n : (1u << 30);
        ssize_t r = read(fd, p ? p : drop, want);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { if (r == 0) errno = 0; return -1; }
        *crc = pk_crc32(*crc, p ? p : drop, (size_t)r);
        if (p) p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* A checkpoint of the expected size and header, read straight into w and
 * state (no copy of the file in memory). 1: the file is not of that shape,
 * read it the slow way for the precise reason. */
static int ckpt_read_direct(const char *path, size_t step, size_t P, double *w, size_t S, double *state,
                            pk_status *s)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 1;
    struct stat st;
    uint64_t hdr[5], want_hdr[5];
    uint32_t ver = PK_RUN_VERSION, zero = 0, want;
    memcpy(want_hdr, CKPT_MAGIC, 8);
    memcpy((char *)want_hdr + 8, &ver, 4);
    memcpy((char *)want_hdr + 12, &zero, 4);
    want_hdr[2] = step; want_hdr[3] = P; want_hdr[4] = S;
    uint32_t crc = 0;
    int slow = fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
               (uint64_t)st.st_size != sizeof hdr + (P + S * P) * sizeof(double) + 4 ||
               read_crc(fd, hdr, sizeof hdr, &crc) || memcmp(hdr, want_hdr, sizeof hdr) != 0;
    if (!slow) {
        uint32_t none = 0;
        if (read_crc(fd, w, P * sizeof *w, &crc) || read_crc(fd, state, S * P * sizeof *state, &crc) ||
            read_crc(fd, &want, 4, &none))
            *s = errno ? pk_fail(PK_ERR_IO, "%s: read error: %s", path, strerror(errno))
                       : pk_fail(PK_ERR_STATE, "%s: truncated while reading", path);
        else if (crc != want)
            *s = pk_fail(PK_ERR_STATE, "%s: checksum mismatch (file damaged or truncated)", path);
        else *s = PK_OK;
    }
    close(fd);
    return slow;
}

pk_status pk_ckpt_read(const char *path, size_t step, size_t P, double *w, size_t S, double *state)
{
    pk_status direct;
    if (!ckpt_read_direct(path, step, P, w, S, state, &direct)) return direct;
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

/* The trajectory reader. With `expect` (T and N from run.json), the header
 * must declare exactly those sizes; in every case they must fit the file's
 * length before anything is allocated, and iota (N) is allocated only when a
 * step used the full batch. */
static pk_status traj_read(const char *path, const size_t *expect, pk_traj *tr)
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
    if (expect && (T != expect[0] || N != expect[1])) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: records %llu steps of %llu examples, run.json says %zu and %zu", path,
                       (unsigned long long)T, (unsigned long long)N, expect[0], expect[1]);
    }
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
    if (!tr->lr || !tr->loss || !tr->off || !tr->idx) { free(buf); pk_traj_free(tr); return PK_ERR_NOMEM; }
    const unsigned char *p = buf + 40;
    memcpy(tr->lr, p, T * 8); p += T * 8;
    memcpy(tr->loss, p, T * 8); p += T * 8;
    memcpy(tr->off, p, (T + 1) * 8); p += (T + 1) * 8;
    memcpy(tr->idx, p, total * 4);
    free(buf);
    int full = 0;
    for (size_t t = 0; t < T; t++) {
        if (tr->off[t + 1] < tr->off[t] || tr->off[t + 1] > total) { pk_traj_free(tr); return pk_fail(PK_ERR_STATE, "%s: batch offsets out of order at step %zu", path, t); }
        full |= tr->off[t + 1] == tr->off[t];
    }
    for (size_t k = 0; k < total; k++)
        if (tr->idx[k] >= N) {
            /* Fuzzing (fuzz_traj) found: the message read tr->idx[k] after
             * pk_traj_free had set tr->idx to NULL (a crash on any trajectory
             * with an out-of-range batch index). Keep the value first. */
            uint32_t bad = tr->idx[k];
            pk_traj_free(tr);
            return pk_fail(PK_ERR_STATE, "%s: batch index %u out of range", path, bad);
        }
    if (full) { /* only full-batch steps read iota: N of them */
        tr->iota = pk_alloc(N + 1, sizeof(uint32_t));
        if (!tr->iota) { pk_traj_free(tr); return PK_ERR_NOMEM; }
        for (size_t i = 0; i < N; i++) tr->iota[i] = (uint32_t)i;
    }
    return PK_OK;
}

pk_status pk_traj_read(const char *path, pk_traj *tr) { return traj_read(path, NULL, tr); }

void pk_traj_free(pk_traj *tr)
{
    free(tr->lr); free(tr->loss); free(tr->off); free(tr->idx); free(tr->iota);
    memset(tr, 0, sizeof *tr);
}

/* ---------------------------------------------------------------- journal */

static const char JOURNAL_MAGIC[8] = {'P', 'K', 'J', 'O', 'U', 'R', 'N', 'L'};

char *pk_journal_path(const char *dir) { return pk_path_join(dir, "journal.bin"); }

pk_status pk_journal_create(pk_journal *j, const char *dir)
{
    j->fd = -1;
    j->path = pk_journal_path(dir);
    if (!j->path) return PK_ERR_NOMEM;
    bytes b; /* the header, written atomically: a journal never lacks one */
    if (put_open(&b, j->path)) return b.s;
    put(&b, JOURNAL_MAGIC, 8);
    put_u32(&b, PK_RUN_VERSION);
    put_u32(&b, 0);
    uint64_t sizes[5] = {j->T, j->N, j->P, j->S, j->keep};
    put(&b, sizes, sizeof sizes);
    pk_status s = put_finish(&b);
    if (s) return s;
    j->fd = open(j->path, O_WRONLY | O_APPEND);
    if (j->fd < 0) return pk_fail(PK_ERR_IO, "%s: cannot open for appending: %s", j->path, strerror(errno));
    return PK_OK;
}

/* write(2) all n bytes, through signals and short writes. */
static pk_status write_all(int fd, const char *path, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return pk_fail(PK_ERR_IO, "%s: write failed: %s", path, strerror(w < 0 ? errno : EIO));
        p += w;
        n -= (size_t)w;
    }
    return PK_OK;
}

pk_status pk_journal_append(pk_journal *j, size_t step, double lr, double loss, uint64_t batch)
{
    unsigned char rec[PK_JOURNAL_REC]; /* step, lr, loss, batch hash, crc32 */
    uint64_t st = step;
    memcpy(rec, &st, 8);
    memcpy(rec + 8, &lr, 8);
    memcpy(rec + 16, &loss, 8);
    memcpy(rec + 24, &batch, 8);
    uint32_t crc = pk_crc32(0, rec, PK_JOURNAL_REC - 4);
    memcpy(rec + 32, &crc, 4);
    return write_all(j->fd, j->path, rec, sizeof rec); /* one write: in the kernel's hands once it returns */
}

pk_status pk_journal_open(pk_journal *j, const char *dir, size_t *k, size_t *ignored, double *lr, double *loss,
                          uint64_t *batch)
{
    j->fd = -1;
    *k = *ignored = 0;
    j->path = pk_journal_path(dir);
    if (!j->path) return PK_ERR_NOMEM;
    const size_t H = PK_JOURNAL_HDR, R = PK_JOURNAL_REC;
    size_t want = j->T < (SIZE_MAX - H) / R ? H + j->T * R : SIZE_MAX; /* no more than T records are read */
    unsigned char *buf;
    size_t len;
    pk_status s = pk_read_prefix(j->path, 0, want, &buf, &len);
    if (s) return s;
    uint64_t sizes[5], mine[5] = {j->T, j->N, j->P, j->S, j->keep};
    uint32_t ver, crc;
    if (len >= H) { memcpy(&ver, buf + 8, 4); memcpy(sizes, buf + 16, 40); memcpy(&crc, buf + H - 4, 4); }
    if (len < H || memcmp(buf, JOURNAL_MAGIC, 8) != 0 || crc != pk_crc32(0, buf, H - 4)) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: not a journal or its header (bytes 0..%zu) is damaged", j->path, H - 1);
    }
    if (ver != PK_RUN_VERSION || memcmp(sizes, mine, sizeof mine) != 0) {
        free(buf);
        return pk_fail(PK_ERR_STATE, "%s: header (version %u, %llu steps, %llu examples, %llu parameters) does not "
                       "match run.json (version %d, %zu steps, %zu examples, %zu parameters)", j->path, ver,
                       (unsigned long long)sizes[0], (unsigned long long)sizes[1], (unsigned long long)sizes[2],
                       PK_RUN_VERSION, j->T, j->N, j->P);
    }
    /* the complete records: each whole, its crc32 right and its step next in order */
    size_t n = 0;
    for (size_t o = H; o + R <= len; o += R, n++) {
        const unsigned char *rec = buf + o;
        uint64_t st;
        memcpy(&st, rec, 8);
        memcpy(&crc, rec + 32, 4);
        if (crc != pk_crc32(0, rec, R - 4) || st != n + 1) break;
        memcpy(&lr[n], rec + 8, 8);
        memcpy(&loss[n], rec + 16, 8);
        memcpy(&batch[n], rec + 24, 8);
    }
    struct stat sb;
    *k = n;
    *ignored = stat(j->path, &sb) == 0 && (size_t)sb.st_size > H + n * R ? (size_t)sb.st_size - H - n * R : 0;
    free(buf);
    j->fd = open(j->path, O_WRONLY | O_APPEND);
    if (j->fd < 0) return pk_fail(PK_ERR_IO, "%s: cannot open for appending: %s", j->path, strerror(errno));
    return PK_OK;
}

pk_status pk_journal_truncate(pk_journal *j, size_t k)
{
    if (ftruncate(j->fd, (off_t)(PK_JOURNAL_HDR + k * PK_JOURNAL_REC)) != 0)
        return pk_fail(PK_ERR_IO, "%s: cannot truncate: %s", j->path, strerror(errno));
    return PK_OK;
}

void pk_journal_close(pk_journal *j)
{
    if (j->fd >= 0) close(j->fd);
    j->fd = -1;
    free(j->path);
    j->path = NULL;
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

pk_status pk_run_create(const char *dir, const pk_data *train, const pk_train_opts *o, const pk_mlp *m,
                        const double *w, const double *state, pk_journal *j)
{
    char *js = pk_path_join(dir, "run.json");
    if (!js) return PK_ERR_NOMEM;
    if (access(js, F_OK) == 0) {
        free(js);
        return pk_fail(PK_ERR_INPUT, "%s already holds a run: remove it or choose another --out "
                       "(an interrupted run continues with `pathkernel train --resume %s`)", dir, dir);
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
    /* step 0 and the journal before run.json: a directory with run.json
     * always holds what a resume starts from */
    char *cp = s ? NULL : pk_ckpt_path(dir, 0);
    if (!s) s = cp ? pk_ckpt_write(cp, 0, m->n_params, w, pk_optim_state_len(op), state) : PK_ERR_NOMEM;
    free(cp);
    if (!s) s = pk_journal_create(j, dir);
    if (!s) s = json_write(js, r);
    cJSON_Delete(r);
    free(js);
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

/* ------------------------------------------------------------- reading */

struct pk_run {
    char *dir;
    pk_mlp mlp;
    pk_loss loss;
    pk_optim optim;
    size_t steps, keep, n_train, d, ty;
    size_t steps_requested;  /* 0 when run.json does not say (older runs) */
    uint64_t seed;
    char status[16];         /* "" when run.json does not say */
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
    /* what train --resume needs besides (optional for reading a finished run) */
    const char *st = jstr(r, "status");
    if (st) snprintf(run->status, sizeof run->status, "%s", st);
    if (jget(r, "steps_requested") && jsize(r, "steps_requested", &run->steps_requested)) return BAD("steps_requested");
    if (jget(r, "seed") && jhex(r, "seed", &run->seed)) return BAD("seed");
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
    if (!strcmp(run->status, "running")) { /* killed, or still training: no trajectory yet */
        s = pk_fail(PK_ERR_INPUT, "%s: training has not finished (run.json says \"running\": it was killed, or is "
                    "still training); run `pathkernel train --resume %s` to finish it", dir, dir);
        pk_run_close(run);
        return s;
    }
    char *tp = pk_path_join(dir, "trajectory.bin");
    size_t expect[2] = {run->steps, run->n_train};
    s = tp ? traj_read(tp, expect, &run->traj) : PK_ERR_NOMEM;
    free(tp);
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
size_t pk_run_steps_requested(const pk_run *run) { return run->steps_requested; }
uint64_t pk_run_seed(const pk_run *run) { return run->seed; }
const char *pk_run_status(const pk_run *run) { return run->status; }
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
