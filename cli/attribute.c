/* attribute.c -- `pathkernel attribute`: the strongest proponents and
 * opponents of each query's prediction, from the exact path representation
 * (MATH.md section 3), resumable and split across MPI ranks. */
#define _XOPEN_SOURCE 700
#include "cli.h"
#include "base/base.h" /* pk_crc32, pk_hash_bytes, pk_read_file: the job's part files */

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

enum { CLASS_PRED = -1, CLASS_LABEL = -2 };

/* The attribution of Q queries: pk_topk rows for all of them. */
typedef struct attribution {
    size_t Q, K, N, steps;
    const char *quad;
    const char *target;  /* "margin" or "loss": the rows' target (NULL: their output) */
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

/* The name of that label (NULL: the data have no class names). */
static const char *label_name_of(const pk_data *d, size_t i, size_t c)
{
    return pk_data_class_name(d, label_of(d, i, c));
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
    fputs("query,class,class_name,rank,kind,index,label,label_name,contribution,share\n", at.f);
    for (size_t q = 0; q < a->Q; q++) {
        double moved = a->r.pred[q] - a->r.bias[q];
        size_t idx;
        double phi;
        for (int kind = 0; kind < 2; kind++)
            for (size_t j = 0; j < a->K && listed(a, q, kind, j, &idx, &phi); j++) {
            fprintf(at.f, "%zu,%zu,", q, a->cls[q]);
            cli_put_text(at.f, pk_data_class_name(train, (double)a->cls[q]));
            fprintf(at.f, ",%zu,%s,%zu,", j + 1, kind ? "opponent" : "proponent", idx);
            cli_put_num(at.f, label_of(train, idx, a->cls[q]));
            fputc(',', at.f);
            cli_put_text(at.f, label_name_of(train, idx, a->cls[q]));
            fputc(',', at.f);
            cli_put_num(at.f, phi);
            fputc(',', at.f);
            cli_put_num(at.f, moved != 0 ? phi / moved : NAN);
            fputc('\n', at.f);
        }
    }
    return pk_atomic_commit(&at);
}

static pk_status write_attr_json(const char *path, const attribution *a, const pk_data *train)
{
    cJSON *root = cJSON_CreateObject(), *qs = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "quad", a->quad);
    cJSON_AddStringToObject(root, "target", a->target ? a->target : "output");
    cJSON_AddNumberToObject(root, "top", (double)a->K);
    cJSON_AddNumberToObject(root, "n_train", (double)a->N);
    cJSON_AddNumberToObject(root, "steps", (double)a->steps);
    cJSON_AddItemToObject(root, "queries", qs);
    for (size_t q = 0; q < a->Q; q++) {
        double moved = a->r.pred[q] - a->r.bias[q];
        cJSON *o = cJSON_CreateObject(), *lists[2] = {cJSON_CreateArray(), cJSON_CreateArray()};
        cJSON_AddNumberToObject(o, "query", (double)q);
        cJSON_AddNumberToObject(o, "class", (double)a->cls[q]);
        const char *cname = pk_data_class_name(train, (double)a->cls[q]);
        if (cname) cJSON_AddStringToObject(o, "class_name", cname);
        else cJSON_AddNullToObject(o, "class_name");
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
            const char *lname = label_name_of(train, idx, a->cls[q]);
            if (lname) cJSON_AddStringToObject(it, "label_name", lname);
            else cJSON_AddNullToObject(it, "label_name");
            cJSON_AddNumberToObject(it, "contribution", phi);
            if (moved != 0) cJSON_AddNumberToObject(it, "share", phi / moved);
            else cJSON_AddNullToObject(it, "share");
            cJSON_AddItemToArray(lists[kind], it);
        }
        cJSON_AddItemToObject(o, "proponents", lists[0]);
        cJSON_AddItemToObject(o, "opponents", lists[1]);
        cJSON_AddItemToArray(qs, o);
    }
    return cli_write_json(path, root);
}

static void print_attr_table(const attribution *a, const pk_data *train)
{
    for (size_t q = 0; q < a->Q; q++) {
        double moved = a->r.pred[q] - a->r.bias[q];
        const char *cname = pk_data_class_name(train, (double)a->cls[q]);
        printf("query %zu  %s%s%zu%s%s%s: pred %.6g  bias %.6g  pred - bias %.6g  sum of all contributions %.6g  ",
               q, a->target ? a->target : "output", a->target ? " of label " : " ", a->cls[q], cname ? " (" : "",
               cname ? cname : "", cname ? ")" : "", a->r.pred[q], a->r.bias[q], moved, a->r.total[q]);
        if (a->r.regularisation[q] != 0.0) printf("weight decay %.6g  ", a->r.regularisation[q]);
        printf("residual %.3g\n", residual(a, q));
        size_t idx;
        double phi;
        for (int kind = 0; kind < 2; kind++) {
            size_t n = 0;
            while (n < a->K && listed(a, q, kind, n, &idx, &phi)) n++;
            printf("  %s (%zu)\n", kind ? "opponents" : "proponents", n);
            int named = train->class_names != NULL;   /* then the label's name follows its index */
            if (n) printf("    %4s %8s %8s%s %14s %10s\n", "rank", "index", "label", named ? "  name        " : "",
                          "contribution", "share");
            for (size_t j = 0; j < n && listed(a, q, kind, j, &idx, &phi); j++) {
                printf("    %4zu %8zu %8.6g", j + 1, idx, label_of(train, idx, a->cls[q]));
                if (named) {
                    const char *nm = label_name_of(train, idx, a->cls[q]);
                    printf("  %-12s", nm ? nm : "");
                }
                printf(" %14.6g %10.4g\n", phi, moved != 0 ? phi / moved : NAN);
            }
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
            for (int k = 0; k < 5; k++) { fputc(',', at.f); cli_put_num(at.f, v[k]); }
            fputc('\n', at.f);
            worst = isnan(v[4]) || isnan(worst) ? NAN : fmax(worst, fabs(v[4]));
        }
        s = pk_atomic_commit(&at);
    }
    if (!s) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "quad", a->quad);
        cJSON_AddStringToObject(r, "target", a->target ? a->target : "output");
        cJSON_AddNumberToObject(r, "top", (double)a->K);
        cJSON_AddNumberToObject(r, "n_query", (double)a->Q);
        cJSON_AddNumberToObject(r, "n_train", (double)a->N);
        cJSON_AddNumberToObject(r, "steps", (double)a->steps);
        cJSON_AddNumberToObject(r, "max_abs_residual", worst);
        cJSON_AddNumberToObject(r, "ranks", ranks);
        cJSON_AddNumberToObject(r, "seconds", seconds);
        char *jp = pk_path_join(dir, "summary.json");
        s = cli_write_json(jp, r);
        free(jp);
    }
    return s;
}

/* ------------------------------------------- groups: progress, resume, MPI */

/* The most queries a group takes unless --group says otherwise. */
#define DEFAULT_GROUP 4096

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
        s = pk_file_write(p, buf, 32 + 8 * len + 4);
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
    h = pk_hash_bytes(h, &o->target.kind, sizeof o->target.kind);
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
        CLI_CSV_HELP_RUN
        "  --top K           proponents and opponents per query [10]\n"
        "  --class C         pred: the predicted class (argmax for softmax; output 0 for one output),\n"
        "                    label: the query's own target class, or an output index [pred]\n"
        "  --target T        instead of --class: output:C (= --class C), label (= --class label), margin\n"
        "                    (label logit minus the largest other) or loss (the query's loss under the run's\n"
        "                    loss): the backward pass at every quadrature node is seeded with dg/df there, so\n"
        "                    pred - bias = total + residual holds for the target (MATH.md section 11)\n"
        "  --quad R          left, mid, gl1..gl8, exact (piecewise-linear networks: exact to rounding) [gl2]\n"
        "  --out FILE.csv    query,class,rank,kind,index,label,contribution,share\n"
        "  --out FILE.json   the same with pred, bias, total, residual per query\n"
        "  --out DIR         proponents.npy, opponents.npy (Q, K) int64 indices (-1: none), proponent_values.npy,\n"
        "                    opponent_values.npy (Q, K) float64 (NaN: none), summary.csv\n"
        "                    (query,class,pred,bias,total,regularisation,residual), summary.json. Each group of\n"
        "                    queries is kept in DIR/.parts as it completes: the same command continues a stopped job\n"
        "                    without --out, a table on stdout\n"
        "  --group N         queries per replay of the trajectory [equal groups of at most 4096, the same\n"
        "                    number on every MPI rank; smaller if --mem needs]\n"
        "  --block N         queries per block of products [256]\n"
        "  --mem MIB         memory budget [3/4 of free memory]\n"
        "  --progress        steps, queries, rate and ETA on stderr even when it is not a terminal\n"
        "  --quiet           no progress\n"
        "  --threads N       threads [all cores]\n";
    int rank, ranks;
    int rc = cli_mpi_start(cmd, &argc, &argv, &rank, &ranks);
    if (rc) return rc;
    const char *query = NULL, *out = NULL, *cls_spec = NULL, *target = NULL, *dir;
    size_t top = 10, cls_num = 0, group_opt = SIZE_MAX; /* SIZE_MAX: not given */
    int cls_mode = CLASS_PRED, want_progress = 0, quiet = 0;
    pk_load_opts lo = pk_load_opts_defaults();
    pk_topk_opts to = pk_topk_opts_defaults();
    const cli_opt opts[] = {{"query", CLI_STR, &query, NULL}, {"top", CLI_SIZE, &top, NULL},
                            {"class", CLI_STR, &cls_spec, NULL}, {"target", CLI_STR, &target, NULL},
                            {"quad", CLI_QUAD, &to.quad, NULL},
                            {"out", CLI_STR, &out, NULL}, CLI_SELECT(lo), {"group", CLI_SIZE, &group_opt, NULL},
                            {"block", CLI_SIZE, &to.block, NULL}, {"mem", CLI_MIB, &to.mem_limit, NULL},
                            {"progress", CLI_FLAG, &want_progress, NULL}, {"quiet", CLI_FLAG, &quiet, NULL},
                            {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    rc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (rc) { cli_mpi_end(0); return rc < 0 ? EXIT_OK : rc; }
    if (cls_spec && target) rc = cli_usage(cmd, "--class and --target: give one of them");
    else if (target) { /* output:C and label are --class C and --class label; margin and loss their own */
        if (pk_target_parse(target, &to.target) || to.target.kind == PK_TARGET_OUTPUTS)
            rc = cli_usage(cmd, "--target %s: use output:C, label, margin or loss", target);
        else if (to.target.kind == PK_TARGET_OUTPUT) { cls_mode = 0; cls_num = to.target.output; to.target.kind = PK_TARGET_OUTPUTS; }
        else if (to.target.kind == PK_TARGET_LABEL) { cls_mode = CLASS_LABEL; to.target.kind = PK_TARGET_OUTPUTS; }
        else cls_mode = CLASS_LABEL;
    } else if (!cls_spec || !strcmp(cls_spec, "pred")) cls_mode = CLASS_PRED;
    else if (!strcmp(cls_spec, "label")) cls_mode = CLASS_LABEL;
    else if (!cli_parse_size(cls_spec, &cls_num)) cls_mode = 0;
    else rc = cli_usage(cmd, "--class: '%s' is not pred, label or an output index", cls_spec);
    /* margin and loss attribute a target of the label; the rows' class is the label's */
    int by_target = to.target.kind == PK_TARGET_MARGIN || to.target.kind == PK_TARGET_LOSS;
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
    if (!s && !by_target && cls_mode == CLASS_LABEL && pk_run_loss(run) == PK_LOSS_MSE && C > 1)
        s = pk_fail(PK_ERR_INPUT, "--class label needs class targets (softmax or logistic); this run uses mse with %zu outputs", C);
    if (!s && by_target) s = pk_target_check(&to.target, C, pk_run_loss(run), NULL, 0);
    if (!s && by_target && pk_run_loss(run) != PK_LOSS_SOFTMAX) cls_mode = 0; /* one output (logistic) or mse: output 0 */
    lo.allow_unseen = cls_mode != CLASS_LABEL && !by_target;   /* labels needed for label, margin and loss */
    if (!s) s = pk_run_load_data(run, query, &lo, &q);
    if (!s) cli_data_warning(cmd, &q);
    if (!s && by_target) s = cli_query_labels(run, query, &q, &to.target);
    if (!s && !q.n) s = pk_fail(PK_ERR_INPUT, "%s: no queries", query);
    if (!s) s = attribution_alloc(&a, q.n, top);
    if (!s) s = choose_classes(run, &q, cls_mode, cls_num, query, a.cls);
    if (!s) {
        size_t bytes;
        a.N = pk_run_n_train(run);
        a.steps = pk_run_steps(run);
        a.quad = to.quad.name;
        a.target = by_target ? target : NULL;
        j.Q = q.n;
        /* every group replays the whole trajectory once: by default as few
         * as groups of at most DEFAULT_GROUP make, the same number on every
         * rank, of equal sizes */
        if (group_opt == SIZE_MAX) {
            size_t per_rank = (q.n + (size_t)ranks * DEFAULT_GROUP - 1) / ((size_t)ranks * DEFAULT_GROUP);
            size_t parts = (size_t)ranks * (per_rank ? per_rank : 1);
            group_opt = (q.n + parts - 1) / parts;
        }
        j.group = pk_run_attribute_group(run, q.n < group_opt ? q.n : group_opt, &to, &bytes);
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
            to.y = by_target ? q.y + q0 * q.ty : NULL;
            s = pk_run_attribute(run, q.x + q0 * q.d, n, a.cls + q0, &to, &rows);
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
        s = pk_run_train_data(run, &train);
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
