/* attribute.c -- `pathkernel attribute`, `selfinfluence` and `mislabel`:
 * training-data attribution from the exact path representation (MATH.md
 * section 3) and the self-influence ranking of mislabelled examples. */
#define _XOPEN_SOURCE 700
#include "cli.h"
#include "kernel/kernel.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* A number for CSV/tables: integral values without a fraction, NaN as "nan". */
static void put_num(FILE *f, double v)
{
    if (isnan(v)) fputs("nan", f);
    else fprintf(f, "%.17g", v);
}

/* ---------------------------------------------------------------- attribute */

enum { CLASS_PRED = -1, CLASS_LABEL = -2 };

/* The attribution of Q queries: pk_topk rows for all of them. */
typedef struct attribution {
    size_t Q, K, N, steps;
    const char *quad;
    size_t *cls;     /* (Q) the attributed output */
    pk_topk r;       /* rows for Q queries        */
    double *store;   /* backs r                   */
} attribution;

/* Packed rows of queries [q0, q0 + n): pred, bias, total, regularisation (n
 * each), then pro_idx, pro_val, opp_idx, opp_val (n K each), indices as
 * doubles (exact below 2^53). The unit of partial files and MPI messages. */
static size_t packed_len(size_t n, size_t K) { return 4 * n + 4 * n * K; }

static void pack(const attribution *a, size_t q0, size_t n, double *p)
{
    size_t K = a->K;
    const double *col[4] = {a->r.pred, a->r.bias, a->r.total, a->r.regularisation};
    for (int c = 0; c < 4; c++, p += n) memcpy(p, col[c] + q0, n * sizeof *p);
    const int64_t *ix[2] = {a->r.pro_idx, a->r.opp_idx};
    const double *vs[2] = {a->r.pro_val, a->r.opp_val};
    for (int k = 0; k < 2; k++) {
        for (size_t j = 0; j < n * K; j++) p[j] = (double)ix[k][q0 * K + j];
        p += n * K;
        memcpy(p, vs[k] + q0 * K, n * K * sizeof *p);
        p += n * K;
    }
}

static void unpack(attribution *a, size_t q0, size_t n, const double *p)
{
    size_t K = a->K;
    double *col[4] = {a->r.pred, a->r.bias, a->r.total, a->r.regularisation};
    for (int c = 0; c < 4; c++, p += n) memcpy(col[c] + q0, p, n * sizeof *p);
    int64_t *ix[2] = {a->r.pro_idx, a->r.opp_idx};
    double *vs[2] = {a->r.pro_val, a->r.opp_val};
    for (int k = 0; k < 2; k++) {
        for (size_t j = 0; j < n * K; j++) ix[k][q0 * K + j] = (int64_t)p[j];
        p += n * K;
        memcpy(vs[k] + q0 * K, p, n * K * sizeof *p);
        p += n * K;
    }
}

static pk_status attribution_alloc(attribution *a, size_t Q, size_t K)
{
    a->Q = Q;
    a->K = K;
    a->cls = calloc(Q ? Q : 1, sizeof *a->cls);
    a->store = pk_alloc(packed_len(Q, K) + 1, sizeof(double));
    int64_t *ix = pk_alloc(2 * Q * K + 1, sizeof *ix);
    if (!a->cls || !a->store || !ix) { free(ix); return PK_ERR_NOMEM; }
    double *p = a->store;
    a->r.pred = p; a->r.bias = p + Q; a->r.total = p + 2 * Q; a->r.regularisation = p + 3 * Q;
    a->r.pro_val = p + 4 * Q; a->r.opp_val = p + 4 * Q + Q * K;
    a->r.pro_idx = ix; a->r.opp_idx = ix + Q * K;
    return PK_OK;
}

static void attribution_free(attribution *a)
{
    free(a->cls);
    free(a->store);
    free(a->r.pro_idx);
    memset(a, 0, sizeof *a);
}

static pk_topk rows_at(const attribution *a, size_t q0)
{
    size_t K = a->K;
    pk_topk r = {a->r.pred + q0, a->r.bias + q0, a->r.total + q0, a->r.regularisation + q0,
                 a->r.pro_idx + q0 * K, a->r.pro_val + q0 * K, a->r.opp_idx + q0 * K, a->r.opp_val + q0 * K};
    return r;
}

static double label_of(const pk_data *d, size_t i, size_t c)
{
    return d->y[i * d->ty + (d->ty > 1 ? c : 0)];
}

static double residual(const attribution *a, size_t q)
{
    return a->r.pred[q] - a->r.bias[q] - a->r.total[q] - a->r.regularisation[q];
}

/* Entry j of query q's proponents (kind 0) or opponents (kind 1); 0 past the last. */
static int listed(const attribution *a, size_t q, int kind, size_t j, size_t *idx, double *phi)
{
    int64_t i = (kind ? a->r.opp_idx : a->r.pro_idx)[q * a->K + j];
    *phi = (kind ? a->r.opp_val : a->r.pro_val)[q * a->K + j];
    *idx = i >= 0 ? (size_t)i : 0;
    return i >= 0;
}

static pk_status write_attr_csv(const char *path, const attribution *a, const pk_data *train)
{
    pk_atomic at;
    pk_status s = pk_atomic_open(&at, path);
    if (s) return s;
    fputs("query,class,rank,kind,index,label,contribution,share\n", at.f);
    for (size_t q = 0; q < a->Q; q++) {
        double moved = a->r.pred[q] - a->r.bias[q];
        size_t idx;
        double phi;
        for (int kind = 0; kind < 2; kind++)
            for (size_t j = 0; j < a->K && listed(a, q, kind, j, &idx, &phi); j++) {
            fprintf(at.f, "%zu,%zu,%zu,%s,%zu,", q, a->cls[q], j + 1, kind ? "opponent" : "proponent", idx);
            put_num(at.f, label_of(train, idx, a->cls[q]));
            fputc(',', at.f);
            put_num(at.f, phi);
            fputc(',', at.f);
            put_num(at.f, moved != 0 ? phi / moved : NAN);
            fputc('\n', at.f);
        }
    }
    return pk_atomic_commit(&at);
}

static pk_status write_attr_json(const char *path, const attribution *a, const pk_data *train)
{
    cJSON *root = cJSON_CreateObject(), *qs = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "quad", a->quad);
    cJSON_AddNumberToObject(root, "top", (double)a->K);
    cJSON_AddNumberToObject(root, "n_train", (double)a->N);
    cJSON_AddNumberToObject(root, "steps", (double)a->steps);
    cJSON_AddItemToObject(root, "queries", qs);
    for (size_t q = 0; q < a->Q; q++) {
        double moved = a->r.pred[q] - a->r.bias[q];
        cJSON *o = cJSON_CreateObject(), *lists[2] = {cJSON_CreateArray(), cJSON_CreateArray()};
        cJSON_AddNumberToObject(o, "query", (double)q);
        cJSON_AddNumberToObject(o, "class", (double)a->cls[q]);
        cJSON_AddNumberToObject(o, "pred", a->r.pred[q]);
        cJSON_AddNumberToObject(o, "bias", a->r.bias[q]);
        cJSON_AddNumberToObject(o, "total", a->r.total[q]);
        cJSON_AddNumberToObject(o, "regularisation", a->r.regularisation[q]);
        cJSON_AddNumberToObject(o, "residual", residual(a, q));
        size_t idx;
        double phi;
        for (int kind = 0; kind < 2; kind++)
            for (size_t j = 0; j < a->K && listed(a, q, kind, j, &idx, &phi); j++) {
            cJSON *it = cJSON_CreateObject();
            cJSON_AddNumberToObject(it, "rank", (double)(j + 1));
            cJSON_AddNumberToObject(it, "index", (double)idx);
            cJSON_AddNumberToObject(it, "label", label_of(train, idx, a->cls[q]));
            cJSON_AddNumberToObject(it, "contribution", phi);
            if (moved != 0) cJSON_AddNumberToObject(it, "share", phi / moved);
            else cJSON_AddNullToObject(it, "share");
            cJSON_AddItemToArray(lists[kind], it);
        }
        cJSON_AddItemToObject(o, "proponents", lists[0]);
        cJSON_AddItemToObject(o, "opponents", lists[1]);
        cJSON_AddItemToArray(qs, o);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return PK_ERR_NOMEM;
    pk_status s = pk_write_file(path, text, strlen(text));
    free(text);
    return s;
}

static void print_attr_table(const attribution *a, const pk_data *train)
{
    for (size_t q = 0; q < a->Q; q++) {
        double moved = a->r.pred[q] - a->r.bias[q];
        printf("query %zu  output %zu: pred %.6g  bias %.6g  pred - bias %.6g  sum of all contributions %.6g  ",
               q, a->cls[q], a->r.pred[q], a->r.bias[q], moved, a->r.total[q]);
        if (a->r.regularisation[q] != 0.0) printf("weight decay %.6g  ", a->r.regularisation[q]);
        printf("residual %.3g\n", residual(a, q));
        size_t idx;
        double phi;
        for (int kind = 0; kind < 2; kind++) {
            size_t n = 0;
            while (n < a->K && listed(a, q, kind, n, &idx, &phi)) n++;
            printf("  %s (%zu)\n", kind ? "opponents" : "proponents", n);
            if (n) printf("    %4s %8s %8s %14s %10s\n", "rank", "index", "label", "contribution", "share");
            for (size_t j = 0; j < n && listed(a, q, kind, j, &idx, &phi); j++)
                printf("    %4zu %8zu %8.6g %14.6g %10.4g\n", j + 1, idx, label_of(train, idx, a->cls[q]), phi,
                       moved != 0 ? phi / moved : NAN);
        }
    }
}

/* DIR output: the top-k arrays as .npy, a CSV and a JSON summary. */
static pk_status write_attr_dir(const char *dir, const attribution *a, double seconds, int ranks)
{
    size_t shape[2] = {a->Q, a->K};
    const char *names[4] = {"proponents.npy", "proponent_values.npy", "opponents.npy", "opponent_values.npy"};
    const void *data[4] = {a->r.pro_idx, a->r.pro_val, a->r.opp_idx, a->r.opp_val};
    pk_status s = PK_OK;
    for (int k = 0; k < 4 && !s; k++) {
        char *p = pk_path_join(dir, names[k]);
        s = !p ? PK_ERR_NOMEM : k % 2 ? pk_npy_write(p, data[k], 2, shape) : pk_npy_write_i64(p, data[k], 2, shape);
        free(p);
    }
    char *p = s ? NULL : pk_path_join(dir, "summary.csv");
    pk_atomic at;
    if (!s && !p) s = PK_ERR_NOMEM;
    if (!s) s = pk_atomic_open(&at, p);
    free(p);
    double worst = 0;
    if (!s) {
        fputs("query,class,pred,bias,total,regularisation,residual\n", at.f);
        for (size_t q = 0; q < a->Q; q++) {
            double v[5] = {a->r.pred[q], a->r.bias[q], a->r.total[q], a->r.regularisation[q], residual(a, q)};
            fprintf(at.f, "%zu,%zu", q, a->cls[q]);
            for (int k = 0; k < 5; k++) { fputc(',', at.f); put_num(at.f, v[k]); }
            fputc('\n', at.f);
            worst = isnan(v[4]) || isnan(worst) ? NAN : fmax(worst, fabs(v[4]));
        }
        s = pk_atomic_commit(&at);
    }
    if (!s) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "quad", a->quad);
        cJSON_AddNumberToObject(r, "top", (double)a->K);
        cJSON_AddNumberToObject(r, "n_query", (double)a->Q);
        cJSON_AddNumberToObject(r, "n_train", (double)a->N);
        cJSON_AddNumberToObject(r, "steps", (double)a->steps);
        cJSON_AddNumberToObject(r, "max_abs_residual", worst);
        cJSON_AddNumberToObject(r, "ranks", ranks);
        cJSON_AddNumberToObject(r, "seconds", seconds);
        char *text = cJSON_Print(r), *jp = pk_path_join(dir, "summary.json");
        cJSON_Delete(r);
        s = text && jp ? pk_write_file(jp, text, strlen(text)) : PK_ERR_NOMEM;
        free(text);
        free(jp);
    }
    return s;
}

/* ------------------------------------------- groups: progress, resume, MPI */

/* A group is the queries of one replay of the trajectory: the unit that is
 * kept on disk as soon as it is done (DIR/.parts/group-G.bin: "PKTOPKG1",
 * u64 fingerprint of the job, u64 G, u64 doubles, the packed rows, crc32),
 * and that the MPI ranks share out (group G goes to rank G mod R). */
typedef struct attr_job {
    const char *parts;         /* DIR/.parts, or NULL (no resume) */
    uint64_t fingerprint;
    size_t group, n_groups, Q;
} attr_job;

static char *group_path(const attr_job *j, size_t g)
{
    char name[64];
    snprintf(name, sizeof name, "group-%06zu.bin", g);
    return pk_path_join(j->parts, name);
}

static size_t group_len(const attr_job *j, size_t g)
{
    size_t q0 = g * j->group;
    return j->Q - q0 < j->group ? j->Q - q0 : j->group;
}

static pk_status save_group(const attr_job *j, const attribution *a, size_t g)
{
    size_t n = group_len(j, g), len = packed_len(n, a->K);
    unsigned char *buf = pk_alloc(32 + 8 * len + 4, 1);
    char *p = group_path(j, g);
    pk_status s = buf && p ? PK_OK : PK_ERR_NOMEM;
    if (!s) {
        uint64_t head[3] = {j->fingerprint, g, len};
        memcpy(buf, "PKTOPKG1", 8);
        memcpy(buf + 8, head, sizeof head);
        pack(a, g * j->group, n, (double *)(void *)(buf + 32));
        uint32_t crc = pk_crc32(0, buf, 32 + 8 * len);
        memcpy(buf + 32 + 8 * len, &crc, 4);
        s = pk_write_file(p, buf, 32 + 8 * len + 4);
    }
    free(buf);
    free(p);
    return s;
}

/* A group finished by an earlier run of the same job, if its file is whole. */
static int load_group(const attr_job *j, attribution *a, size_t g)
{
    size_t n = group_len(j, g), len = packed_len(n, a->K), got;
    unsigned char *buf = NULL;
    char *p = group_path(j, g);
    int ok = 0;
    if (p && !access(p, F_OK) && !pk_read_file(p, 0, 32 + 8 * len + 4, &buf, &got) && got == 32 + 8 * len + 4) {
        uint64_t head[3];
        uint32_t crc;
        memcpy(head, buf + 8, sizeof head);
        memcpy(&crc, buf + 32 + 8 * len, 4);
        ok = !memcmp(buf, "PKTOPKG1", 8) && head[0] == j->fingerprint && head[1] == g && head[2] == len &&
             crc == pk_crc32(0, buf, 32 + 8 * len);
        if (ok) unpack(a, g * j->group, n, (const double *)(const void *)(buf + 32));
    }
    free(buf);
    free(p);
    return ok;
}

/* The job's identity: run, queries, classes, k, rule, group size. */
static uint64_t job_fingerprint(pk_run *run, const pk_data *q, const attribution *a, const pk_topk_opts *o,
                                size_t group)
{
    uint64_t h = pk_run_fingerprint(run);
    h = pk_hash_bytes(h, q->x, q->n * q->d * sizeof *q->x);
    h = pk_hash_bytes(h, a->cls, a->Q * sizeof *a->cls);
    h = pk_hash_bytes(h, &o->top, sizeof o->top);
    h = pk_hash_bytes(h, o->quad.name, sizeof o->quad.name);
    return pk_hash_bytes(h, &group, sizeof group);
}

/* The classes of every query: the prediction's, the label's or a fixed one. */
static pk_status choose_classes(pk_run *run, const pk_data *q, int mode, size_t fixed, const char *spec, size_t *cls)
{
    const pk_model *m = pk_run_model(run);
    size_t C = pk_model_n_outputs(m);
    pk_loss loss = pk_run_loss(run);
    if (mode >= 0 || (mode == CLASS_PRED && loss != PK_LOSS_SOFTMAX) || (mode == CLASS_LABEL && C == 1)) {
        for (size_t i = 0; i < q->n; i++) cls[i] = mode >= 0 ? fixed : 0;
        return PK_OK;
    }
    if (mode == CLASS_LABEL) {
        for (size_t i = 0; i < q->n; i++) {
            double y = q->y[i * q->ty];
            if (!(y >= 0 && y == floor(y) && y < (double)C))
                return pk_fail(PK_ERR_INPUT, "%s: query %zu has target %g, not a class 0..%zu (--class label)", spec,
                               i, y, C - 1);
            cls[i] = (size_t)y;
        }
        return PK_OK;
    }
    double *w = pk_alloc(pk_model_n_params(m), sizeof *w), *f = pk_alloc(q->n ? q->n : 1, C * sizeof *f);
    pk_status s = w && f ? pk_run_weights(run, pk_run_steps(run), w) : PK_ERR_NOMEM;
    if (!s) s = pk_model_predict(m, w, q->x, q->n, f);
    for (size_t i = 0; !s && i < q->n; i++) {
        cls[i] = 0;
        for (size_t k = 1; k < C; k++) if (f[i * C + k] > f[i * C + cls[i]]) cls[i] = k;
    }
    free(w);
    free(f);
    return s;
}

/* Rank 0 collects the groups of the other ranks. */
static pk_status gather(const attr_job *j, attribution *a, int rank, int ranks)
{
    if (ranks == 1) return PK_OK;
    double *buf = pk_alloc(packed_len(j->group, a->K), sizeof *buf);
    pk_status s = buf ? PK_OK : PK_ERR_NOMEM;
    for (size_t g = 0; !s && g < j->n_groups; g++) {
        int owner = (int)(g % (size_t)ranks);
        size_t n = group_len(j, g), len = packed_len(n, a->K);
        if (owner == rank && rank != 0) {
            pack(a, g * j->group, n, buf);
            if (cli_mpi_send(buf, len, (int)g)) s = pk_fail(PK_ERR_IO, "MPI: sending group %zu to rank 0 failed", g);
        } else if (rank == 0 && owner != 0) {
            if (cli_mpi_recv(buf, len, owner, (int)g)) s = pk_fail(PK_ERR_IO, "MPI: receiving group %zu from rank %d failed", g, owner);
            else unpack(a, g * j->group, n, buf);
        }
    }
    free(buf);
    return s;
}

int cmd_attribute(int argc, char **argv)
{
    const char *cmd = "attribute";
    static const char *help =
        "usage: pathkernel attribute RUN --query SPEC [--top K] [--class pred|label|C] [--quad R] [--out FILE|DIR]\n"
        "       mpirun -np R pathkernel attribute ...   (the queries split across R processes)\n\n"
        "For every query x, the training examples that pushed the chosen output f_c(x) up most\n"
        "(proponents: largest phi_i(x)[c] > 0) and down most (opponents: most negative), from the exact\n"
        "contributions of MATH.md section 3, kept in a bounded list per query while the trajectory is\n"
        "replayed batch by batch (no queries x examples array). share = phi_i(x)[c] / (pred - bias)[c];\n"
        "total = the sum over ALL training examples; residual = pred - bias - total - the part weight\n"
        "decay moved, which no example owns (the quadrature error). Exact ties: the smaller index first.\n\n"
        "  --query SPEC      query inputs (the run's standardisation is applied)\n"
        "  --first N, --random N, --data-seed S   select queries [all]\n"
        "  --top K           proponents and opponents per query [10]\n"
        "  --class C         pred: the predicted class (argmax for softmax; output 0 for one output),\n"
        "                    label: the query's own target class, or an output index [pred]\n"
        "  --quad R          left, mid, gl1..gl8 [gl2]\n"
        "  --out FILE.csv    query,class,rank,kind,index,label,contribution,share\n"
        "  --out FILE.json   the same with pred, bias, total, residual per query\n"
        "  --out DIR         proponents.npy, opponents.npy (Q, K) int64 indices (-1: none), proponent_values.npy,\n"
        "                    opponent_values.npy (Q, K) float64 (NaN: none), summary.csv\n"
        "                    (query,class,pred,bias,total,regularisation,residual), summary.json. Each group of\n"
        "                    queries is kept in DIR/.parts as it completes: the same command continues a stopped job\n"
        "                    without --out, a table on stdout\n"
        "  --group N         queries per replay of the trajectory [1024, fewer if --mem needs]\n"
        "  --block N         queries per block of products [256]\n"
        "  --mem MIB         memory budget [3/4 of free memory]\n"
        "  --progress        steps, queries, rate and ETA on stderr even when it is not a terminal\n"
        "  --quiet           no progress\n"
        "  --threads N       threads [all cores]\n";
    int rank, ranks;
    int rc = cli_mpi_start(cmd, &argc, &argv, &rank, &ranks);
    if (rc) return rc;
    const char *query = NULL, *out = NULL, *cls_spec = "pred", *dir;
    size_t top = 10, cls_num = 0, group_opt = 1024;
    int cls_mode = CLASS_PRED, want_progress = 0, quiet = 0;
    pk_load_opts lo = pk_load_opts_defaults();
    pk_topk_opts to = pk_topk_opts_defaults();
    const cli_opt opts[] = {{"query", CLI_STR, &query, NULL}, {"top", CLI_SIZE, &top, NULL},
                            {"class", CLI_STR, &cls_spec, NULL}, {"quad", CLI_QUAD, &to.quad, NULL},
                            {"out", CLI_STR, &out, NULL}, CLI_SELECT(lo), {"group", CLI_SIZE, &group_opt, NULL},
                            {"block", CLI_SIZE, &to.block, NULL}, {"mem", CLI_MIB, &to.mem_limit, NULL},
                            {"progress", CLI_FLAG, &want_progress, NULL}, {"quiet", CLI_FLAG, &quiet, NULL},
                            {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    rc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (rc) { cli_mpi_end(0); return rc < 0 ? EXIT_OK : rc; }
    if (!strcmp(cls_spec, "pred")) cls_mode = CLASS_PRED;
    else if (!strcmp(cls_spec, "label")) cls_mode = CLASS_LABEL;
    else if (!pk_parse_size(cls_spec, &cls_num)) cls_mode = 0;
    else rc = cli_usage(cmd, "--class: '%s' is not pred, label or an output index", cls_spec);
    if (!rc && !query) rc = cli_usage(cmd, "--query SPEC is required");
    if (!rc && !top) rc = cli_usage(cmd, "--top must be at least 1");
    if (!rc && !group_opt) rc = cli_usage(cmd, "--group must be at least 1");
    if (rc) { cli_mpi_end(rc); return rc; }
    int to_dir = out && !ends_with(out, ".csv") && !ends_with(out, ".json");
    const char *base = out ? strrchr(out, '/') : NULL;
    struct stat st;
    if (to_dir && strchr(base ? base + 1 : out, '.'))
        rc = cli_usage(cmd, "--out %s: name FILE.csv, FILE.json, or a directory (a name without an extension)", out);
    else if (to_dir && !stat(out, &st) && !S_ISDIR(st.st_mode))
        rc = cli_usage(cmd, "--out %s: that is a file, not a directory: name a directory (or FILE.csv, FILE.json)", out);
    if (rc) { cli_mpi_end(rc); return rc; }
    to.top = top;

    pk_run *run = NULL;
    pk_data q = {0};
    attribution a = {0};
    attr_job j = {0};
    cli_progress pr = cli_progress_start(cmd);
    char *parts = NULL;
    const pk_data *train = NULL;
    pk_status s = pk_run_open(dir, &run);
    const pk_model *m = s ? NULL : pk_run_model(run);
    size_t C = m ? pk_model_n_outputs(m) : 0;
    if (!s && cls_mode == 0 && cls_num >= C)
        s = pk_fail(PK_ERR_INPUT, "--class %zu: the run's network has outputs 0..%zu", cls_num, C - 1);
    if (!s && cls_mode == CLASS_LABEL && pk_run_loss(run) == PK_LOSS_MSE && C > 1)
        s = pk_fail(PK_ERR_INPUT, "--class label needs class targets (softmax or logistic); this run uses mse with %zu outputs", C);
    if (!s) s = pk_run_load_data(run, query, &lo, &q);
    if (!s && !q.n) s = pk_fail(PK_ERR_INPUT, "%s: no queries", query);
    if (!s) s = attribution_alloc(&a, q.n, top);
    if (!s) s = choose_classes(run, &q, cls_mode, cls_num, query, a.cls);
    if (!s) {
        size_t bytes;
        a.N = pk_run_n_train(run);
        a.steps = pk_run_steps(run);
        a.quad = to.quad.name;
        j.Q = q.n;
        j.group = pk_topk_group(run, q.n < group_opt ? q.n : group_opt, &to, &bytes);
        j.n_groups = (q.n + j.group - 1) / j.group;
        j.fingerprint = job_fingerprint(run, &q, &a, &to, j.group);
        pr.Q = q.n;
        pr.groups = (j.n_groups + (size_t)ranks - 1 - (size_t)rank) / (size_t)ranks;
        pr.show = !quiet && rank == 0 && (want_progress || pr.tty);
        if (bytes > pk_memory_budget(to.mem_limit))
            s = pk_fail(PK_ERR_INPUT, "attribute needs %.1f MiB for even one query of this run, more than the %.1f MiB allowed (--mem)",
                        (double)bytes / 1048576.0, (double)pk_memory_budget(to.mem_limit) / 1048576.0);
        else if (rank == 0 && !quiet && out) /* without --out, stdout is the table alone */
            printf("%s: %zu queries x %zu training examples, %zu steps, top %zu: %zu group%s of %zu queries, "
                   "%.1f MiB per process\n", cmd, q.n, a.N, a.steps, top, j.n_groups, j.n_groups == 1 ? "" : "s",
                   j.group, (double)bytes / 1048576.0);
        if (ranks > 1 && rank == 0 && !quiet && out) printf("%s: %d MPI ranks\n", cmd, ranks);
        fflush(stdout);
    }
    int existed = to_dir && cli_dir_exists(out);
    if (!s && to_dir) {
        s = pk_mkdirs(out);
        if (!s && !(parts = pk_path_join(out, ".parts"))) s = PK_ERR_NOMEM;
        if (!s) s = pk_mkdirs(parts);
        j.parts = parts;
    }
    to.progress = cli_progress_step;
    to.ctx = &pr;
    cli_catch_stop();
    size_t resumed = 0;
    for (size_t g = 0; !s && g < j.n_groups; g++) {
        if (g % (size_t)ranks != (size_t)rank) continue;
        size_t q0 = g * j.group, n = group_len(&j, g);
        if (j.parts && load_group(&j, &a, g)) resumed++;
        else {
            pk_topk rows = rows_at(&a, q0);
            s = pk_topk_run(run, q.x + q0 * q.d, n, a.cls + q0, &to, &rows);
            if (!s && j.parts) s = save_group(&j, &a, g);
        }
        if (s) break;
        cli_progress_group_done(&pr, n);
    }
    cli_progress_end(&pr);
    if (resumed && !quiet) printf("%s: %zu group%s kept from an earlier run of this job in %s\n", cmd, resumed,
                                   resumed == 1 ? " was" : "s were", parts);
    if (s == PK_ERR_STOPPED)
        s = j.parts ? pk_fail(PK_ERR_STOPPED, "stopped: %zu of %zu groups are kept in %s; the same command continues the job",
                              pr.groups_done, pr.groups, parts)
                    : pk_fail(PK_ERR_STOPPED, "stopped: nothing was written (with --out DIR a stopped job keeps its finished groups)");
    if (!s) s = gather(&j, &a, rank, ranks);
    if (!s && rank == 0) {
        s = pk_run_train(run, &train);
        if (!s) {
            if (!out) print_attr_table(&a, train);
            else if (to_dir) s = write_attr_dir(out, &a, cli_progress_seconds(&pr), ranks);
            else if (ends_with(out, ".csv")) s = write_attr_csv(out, &a, train);
            else s = write_attr_json(out, &a, train);
        }
        if (!s && to_dir) { /* the job is whole: its parts are not needed any more */
            for (size_t g = 0; g < j.n_groups; g++) {
                char *p = group_path(&j, g);
                if (p) remove(p);
                free(p);
            }
            rmdir(parts);
        }
        if (!s && out) {
            double worst = 0;
            for (size_t i = 0; i < a.Q; i++) worst = isnan(residual(&a, i)) ? NAN : fmax(worst, fabs(residual(&a, i)));
            printf("attributed %zu queries to %zu training examples (%s, top %zu) in %.1f s: max |residual| = %.3g; wrote %s\n",
                   a.Q, a.N, a.quad, top, cli_progress_seconds(&pr), worst, out);
        }
    }
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    if (s && to_dir && rank == 0) { /* a failed job leaves what it finished, or nothing */
        cli_drop_new_dir(parts, 0);
        cli_drop_new_dir(out, existed);
    }
    cli_mpi_end(rc);
    free(parts);
    attribution_free(&a);
    pk_data_free(&q);
    if (run) pk_run_close(run);
    return rc;
}

/* ------------------------------------------------------------ selfinfluence */

static pk_status write_si_csv(const char *path, const pk_data *train, const double *si)
{
    pk_atomic a;
    pk_status s = pk_atomic_open(&a, path);
    if (s) return s;
    fputs("index,label,self_influence\n", a.f);
    for (size_t i = 0; i < train->n; i++) {
        fprintf(a.f, "%zu,", i);
        put_num(a.f, train->y[i * train->ty]);
        fputc(',', a.f);
        put_num(a.f, si[i]);
        fputc('\n', a.f);
    }
    return pk_atomic_commit(&a);
}

int cmd_selfinfluence(int argc, char **argv)
{
    const char *cmd = "selfinfluence";
    static const char *help =
        "usage: pathkernel selfinfluence RUN --out FILE.csv [--form loss|kernel] [--quad R]\n\n"
        "Exact self-influence of every training example of a gd/sgd run (MATH.md section 3,\n"
        "\"Self-influence\"), one row per example in data order: index,label,self_influence.\n"
        "  --form loss     SI_i = sum_{t: i in B_t} (eta_t/|B_t|) <gbar_i(t), g_i(w_t)>: how much example i's\n"
        "                  own gradient lowered its own loss along the path (quadrature-integrated TracIn) [default]\n"
        "  --form kernel   SI_i = trace K^p(x_i, x_i), the path kernel's diagonal\n"
        "  --quad R        left, mid, gl1..gl8 [gl2]\n"
        "  --threads N     threads [all cores]\n";
    const char *out = NULL, *form_name = "loss", *dir;
    pk_si_form form;
    pk_quad quad;
    pk_quad_parse("gl2", &quad);
    const cli_opt opts[] = {{"out", CLI_STR, &out, NULL}, {"form", CLI_STR, &form_name, NULL},
                            {"quad", CLI_QUAD, &quad, NULL}, {"threads", CLI_THREADS, NULL, NULL},
                            {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (pk_si_form_parse(form_name, &form)) return cli_error(cmd, PK_ERR_INPUT);
    if (!out) return cli_usage(cmd, "--out FILE is required");
    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    const pk_data *train = NULL;
    size_t N = pk_run_n_train(run);
    double *si = pk_alloc(N ? N : 1, sizeof *si);
    s = si ? pk_self_influence(run, form, &quad, si) : PK_ERR_NOMEM;
    if (!s) s = pk_run_train(run, &train);
    if (!s) s = write_si_csv(out, train, si);
    if (!s) printf("wrote %s: %s self-influence of %zu training examples over %zu steps (%s)\n", out,
                   form == PK_SI_LOSS ? "loss-form" : "kernel-form", N, pk_run_steps(run), quad.name);
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(si);
    pk_run_close(run);
    return rc;
}

/* ----------------------------------------------------------------- mislabel */

/* Fraction of the positives among the first k of the ranking by score (descending, ties by index). */
static double found_in_top(const double *score, const unsigned char *pos, size_t n, size_t n_pos, double frac,
                           size_t *scratch)
{
    size_t k = (size_t)floor(frac * (double)n + 0.5), got;
    if (!k || !n_pos || pk_rank(score, n, 1, 0, k, scratch, &got)) return NAN;
    size_t hit = 0;
    for (size_t j = 0; j < got; j++) hit += pos[scratch[j]] != 0;
    return (double)hit / (double)n_pos;
}

/* Write a .npy file now and commit it later (pk_npy_stream_commit): the
 * flipped data, raw, before standardisation and training. A write error
 * already met (the buffer is flushed) stops the command before training. */
static pk_status stream_npy(pk_npy_stream *w, const char *path, const double *a, size_t ndim, const size_t *shape)
{
    pk_status s = pk_npy_stream_open(w, path, 0, ndim, shape);
    if (!s) s = pk_npy_stream_write(w, a, w->left);
    if (!s && !w->bad && fflush(w->at.f) != 0) { w->bad = 1; w->err = errno ? errno : EIO; }
    if (!s && w->bad) s = pk_write_error(path, w->err);
    return s;
}

int cmd_mislabel(int argc, char **argv)
{
    const char *cmd = "mislabel";
    static const char *help =
        "usage: pathkernel mislabel --data SPEC --flip FRAC --model M --loss softmax --optim sgd --lr X --steps T\n"
        "                           [--batch B] [--out DIR] [options]\n\n"
        "Flips a seeded fraction of the labels (each to a class drawn uniformly among the others), trains,\n"
        "and asks how well each score ranks the flipped examples first: ROC-AUC (flipped = positive, ties\n"
        "count 1/2) and the fraction of the flipped labels found in the top 5%, 10% and 20%.\n"
        "Scores: exact self-influence (loss form, MATH.md section 3), final loss, final gradient norm\n"
        "|g_i(w_T)|^2, TracIn with 5 evenly spaced checkpoints (sum_j eta |g_i(w_{t_j})|^2).\n\n"
        "  --data SPEC         labelled data (class targets)\n"
        "  --first N, --random N, --data-seed S   select examples [all]\n"
        "  --standardize       scale features by their mean/std [off]\n"
        "  --flip FRAC         fraction of labels to flip, in (0, 1) (required)\n"
        "  --flip-seed S       seed of the flips [0]\n"
        "  --model M --loss L --optim O --lr X --steps T --batch B --seed S   as for train\n"
        "                      [mlp:64:tanh, softmax, sgd, 0.1, 100, 64, 0]; loss softmax or logistic, optim gd or sgd\n"
        "  --keep K            store the run's weights every K steps [T/5]\n"
        "  --quad R            quadrature of the exact self-influence [gl2]\n"
        "  --out DIR           writes DIR/run, DIR/data_x.npy, DIR/data_y.npy (the flipped data),\n"
        "                      DIR/mislabel.csv and DIR/mislabel.json [a temporary directory, removed]\n"
        "  --threads N         threads [all cores]\n"
        "  --quiet             no progress lines\n";
    const char *data_spec = NULL, *outdir = NULL;
    double flip = NAN;
    uint64_t flip_seed = 0;
    int quiet = 0, have_batch = 0, have_keep = 0;
    pk_load_opts lo = pk_load_opts_defaults();
    pk_train_opts to = pk_train_opts_defaults();
    to.optim.kind = PK_OPTIM_SGD;
    to.optim.batch = 64;
    pk_quad quad;
    pk_quad_parse("gl2", &quad);
    const cli_opt opts[] = {
        {"data", CLI_STR, &data_spec, NULL}, CLI_SELECT(lo), {"standardize", CLI_FLAG, &to.standardize, NULL},
        {"flip", CLI_DOUBLE, &flip, NULL}, {"flip-seed", CLI_U64, &flip_seed, NULL}, {"model", CLI_STR, &to.model, NULL},
        {"loss", CLI_LOSS, &to.loss, NULL}, {"optim", CLI_OPTIM, &to.optim.kind, NULL},
        {"lr", CLI_DOUBLE, &to.optim.lr, NULL}, {"steps", CLI_SIZE, &to.steps, NULL},
        {"batch", CLI_SIZE, &to.optim.batch, &have_batch}, {"seed", CLI_U64, &to.seed, NULL},
        {"keep", CLI_SIZE, &to.keep, &have_keep}, {"quad", CLI_QUAD, &quad, NULL}, {"out", CLI_STR, &outdir, NULL},
        {"threads", CLI_THREADS, NULL, NULL}, {"quiet", CLI_FLAG, &quiet, NULL}, {NULL, 0, NULL, NULL}};
    int prc = cli_parse(cmd, help, argc, argv, opts, NULL, 0);
    if (prc) return prc < 0 ? EXIT_OK : prc;
    if (!data_spec) return cli_usage(cmd, "--data SPEC is required");
    if (isnan(flip)) return cli_usage(cmd, "--flip FRAC is required");
    if (!(flip > 0 && flip < 1)) return cli_usage(cmd, "--flip %g: the fraction must be in (0, 1)", flip);
    if (to.loss == PK_LOSS_MSE) return cli_usage(cmd, "--loss mse has no labels to flip: use softmax or logistic");
    if (to.optim.kind != PK_OPTIM_GD && to.optim.kind != PK_OPTIM_SGD)
        return cli_usage(cmd, "--optim %s: exact self-influence is not yet supported for it (use gd or sgd)",
                         pk_optim_name(to.optim.kind));
    if (to.optim.kind == PK_OPTIM_GD && !have_batch) to.optim.batch = 0;
    /* store the weights at TracIn's checkpoints j T / 5 (when 5 divides T), replay the rest */
    if (!have_keep) to.keep = to.steps >= 5 ? to.steps / 5 : 1;

    /* The run is trained into DIR/run first (a run's files are placed as
     * training goes); then data_x.npy, data_y.npy, mislabel.csv and
     * mislabel.json are written as one group. A failure removes DIR/run when
     * this command created it, and DIR when it created DIR; whatever DIR held
     * before is left as it was. */
    char tmpl[] = "/tmp/pk-mislabel-XXXXXX";
    const char *base = outdir;
    pk_status s = PK_OK;
    int existed = cli_dir_exists(outdir);
    if (outdir) s = pk_mkdirs(outdir);
    else if (!(base = mkdtemp(tmpl))) s = pk_fail(PK_ERR_IO, "cannot create a temporary directory: %s", strerror(errno));
    if (s) return cli_error(cmd, s);
    char *run_dir = pk_path_join(base, "run"), *xp = pk_path_join(base, "data_x.npy");
    char *yp = pk_path_join(base, "data_y.npy"), *csvp = pk_path_join(base, "mislabel.csv");
    char *jsonp = pk_path_join(base, "mislabel.json"), *spec = NULL;
    int run_existed = cli_dir_exists(run_dir);
    pk_data data = {0};
    pk_run *run = NULL;
    size_t C = 0, n_flip = 0, N = 0;
    unsigned char *flipped = NULL;
    double *orig = NULL, *mean = NULL, *sd = NULL, *scores[4] = {0}, *w = NULL;
    size_t *scratch = NULL;
    double acc = NAN, train_loss = NAN;
    pk_npy_stream xs = {0}, ys = {0};
    if (!run_dir || !xp || !yp || !csvp || !jsonp) s = PK_ERR_NOMEM;
    if (!s) s = pk_data_load(data_spec, &lo, &data);
    if (!s) s = pk_data_classes(&data, &C);
    if (!s && to.loss == PK_LOSS_LOGISTIC && C > 2)
        s = pk_fail(PK_ERR_INPUT, "%s: logistic loss needs labels 0/1, found %zu classes", data_spec, C);
    if (!s && C < 2) s = pk_fail(PK_ERR_INPUT, "%s: flipping labels needs at least 2 classes", data_spec);
    if (!s) {
        N = data.n;
        flipped = pk_alloc(N, 1);
        orig = pk_alloc(N, sizeof *orig);
        scratch = pk_alloc(N, sizeof *scratch);
        for (int k = 0; k < 4; k++) scores[k] = pk_alloc(N, sizeof(double));
        if (!flipped || !orig || !scratch || !scores[0] || !scores[1] || !scores[2] || !scores[3]) s = PK_ERR_NOMEM;
    }
    if (!s) {
        memcpy(orig, data.y, N * sizeof *orig);
        s = pk_flip_labels(&data, C, flip, flip_seed, flipped, &n_flip);
    }
    if (!s) {
        size_t C2;
        s = pk_data_classes(&data, &C2);
        if (!s && C2 != C) s = pk_fail(PK_ERR_INPUT, "%s: after the flips no example has class %zu: use more data", data_spec, C - 1);
    }
    if (!s) { /* the run's data: the flipped data, raw, written now and committed with the results */
        size_t sx[2] = {N, data.d}, sy[1] = {N}, len = strlen(xp) + strlen(yp) + 8;
        s = stream_npy(&xs, xp, data.x, 2, sx);
        if (!s) s = stream_npy(&ys, yp, data.y, 1, sy);
        if (!s && !(spec = malloc(len))) s = PK_ERR_NOMEM;
        if (!s) snprintf(spec, len, "npy:%s,%s", xp, yp);
    }
    if (!s && to.standardize) {
        mean = pk_alloc(data.d, sizeof *mean);
        sd = pk_alloc(data.d, sizeof *sd);
        if (!mean || !sd) s = PK_ERR_NOMEM;
        else {
            pk_data_moments(&data, mean, sd);
            pk_data_standardize(&data, mean, sd);
            to.mean = mean;
            to.std = sd;
        }
    }
    if (!s) {
        to.out_dir = run_dir;
        to.data_spec = spec;
        to.load = NULL;
        if (!quiet) fprintf(stderr, "mislabel: %zu examples, %zu classes, %zu labels flipped; training %zu steps\n",
                            N, C, n_flip, to.steps);
        s = pk_train(&data, &to, NULL, NULL);
    }
    if (!s) s = pk_run_open(run_dir, &run);
    if (!s) s = pk_run_attach_data(run, &data);
    if (!s) {
        const pk_model *m = pk_run_model(run);
        size_t Cm = pk_model_n_outputs(m);
        w = pk_alloc(pk_model_n_params(m), sizeof *w);
        double *f = pk_alloc(N, Cm * sizeof *f);
        if (!w || !f) s = PK_ERR_NOMEM;
        if (!s) s = pk_run_weights(run, pk_run_steps(run), w);
        if (!s) s = pk_model_predict(m, w, data.x, N, f);
        if (!s) {
            acc = pk_accuracy(to.loss, f, data.y, N, Cm);
            train_loss = pk_loss_eval(to.loss, f, data.y, N, Cm, 1, NULL);
        }
        free(f);
        if (!s && !quiet) fprintf(stderr, "mislabel: trained: loss %.4g, accuracy %.4f on the (flipped) labels; "
                                  "exact self-influence...\n", train_loss, acc);
        if (!s) s = pk_self_influence(run, PK_SI_LOSS, &quad, scores[0]);
        if (!s) s = pk_example_stats(m, to.loss, w, &data, scores[1], scores[2]);
        if (!s) s = pk_tracin_self(run, 5, scores[3]);
    }
    static const char *const names[4] = {"self_influence", "final_loss", "grad_norm2", "tracin5"};
    static const double tops[3] = {0.05, 0.10, 0.20};
    double auc[4], found[4][3];
    pk_group_begin(); /* the flipped data and the results, or none of them */
    if (!s) s = pk_npy_stream_commit(&xs);
    if (!s) s = pk_npy_stream_commit(&ys);
    if (!s) {
        for (int k = 0; k < 4; k++) {
            auc[k] = pk_auc(scores[k], flipped, N);
            for (int j = 0; j < 3; j++) found[k][j] = found_in_top(scores[k], flipped, N, n_flip, tops[j], scratch);
        }
        pk_atomic a;
        if (outdir && !(s = pk_atomic_open(&a, csvp))) {
            fprintf(a.f, "index,label,original_label,flipped,%s,%s,%s,%s\n", names[0], names[1], names[2], names[3]);
            for (size_t i = 0; i < N; i++) {
                fprintf(a.f, "%zu,%.17g,%.17g,%d", i, data.y[i], orig[i], flipped[i] ? 1 : 0);
                for (int k = 0; k < 4; k++) { fputc(',', a.f); put_num(a.f, scores[k][i]); }
                fputc('\n', a.f);
            }
            s = pk_atomic_commit(&a);
        }
    }
    if (!s && outdir) {
        cJSON *r = cJSON_CreateObject(), *sc = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "data", data_spec);
        cJSON_AddNumberToObject(r, "n", (double)N);
        cJSON_AddNumberToObject(r, "classes", (double)C);
        cJSON_AddNumberToObject(r, "flip", flip);
        cJSON_AddNumberToObject(r, "flip_seed", (double)flip_seed);
        cJSON_AddNumberToObject(r, "n_flipped", (double)n_flip);
        cJSON_AddNumberToObject(r, "steps", (double)to.steps);
        cJSON_AddStringToObject(r, "quad", quad.name);
        cJSON_AddNumberToObject(r, "train_loss", train_loss);
        cJSON_AddNumberToObject(r, "train_accuracy", acc);
        for (int k = 0; k < 4; k++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "auc", auc[k]);
            cJSON_AddNumberToObject(o, "found_top5", found[k][0]);
            cJSON_AddNumberToObject(o, "found_top10", found[k][1]);
            cJSON_AddNumberToObject(o, "found_top20", found[k][2]);
            cJSON_AddItemToObject(sc, names[k], o);
        }
        cJSON_AddItemToObject(r, "scores", sc);
        char *text = cJSON_Print(r);
        cJSON_Delete(r);
        s = text ? pk_write_file(jsonp, text, strlen(text)) : PK_ERR_NOMEM;
        free(text);
    }
    s = pk_group_end(s);
    pk_npy_stream_abort(&xs); /* no-ops once committed */
    pk_npy_stream_abort(&ys);
    if (!s) {
        printf("%zu examples, %zu flipped (%.3g), train accuracy %.4f on the flipped labels, %zu steps\n",
               N, n_flip, flip, acc, to.steps);
        printf("%-16s %8s %8s %8s %8s\n", "score", "auc", "top5%", "top10%", "top20%");
        for (int k = 0; k < 4; k++)
            printf("%-16s %8.4f %8.4f %8.4f %8.4f\n", names[k], auc[k], found[k][0], found[k][1], found[k][2]);
        if (outdir) printf("wrote %s and %s\n", csvp, jsonp);
    }
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    if (run) pk_run_close(run);
    if (!outdir && base) cli_remove_tree(base);
    else if (s) {
        if (!run_existed) cli_remove_tree(run_dir);
        cli_drop_new_dir(outdir, existed);
    }
    pk_data_free(&data);
    free(run_dir); free(xp); free(yp); free(csvp); free(jsonp); free(spec);
    free(flipped); free(orig); free(mean); free(sd); free(scratch); free(w);
    for (int k = 0; k < 4; k++) free(scores[k]);
    return rc;
}
