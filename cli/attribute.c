/* attribute.c -- `pathkernel attribute`, `selfinfluence` and `mislabel`:
 * training-data attribution from the exact path representation (MATH.md
 * section 3) and the self-influence ranking of mislabelled examples. */
#define _XOPEN_SOURCE 700
#include "cli.h"
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
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

typedef struct query_attr {
    size_t cls, n_pro, n_opp;
    double pred, bias, total, regularisation, residual, moved; /* regularisation: weight decay's share (MATH.md section 5) */
    size_t *pro, *opp;
} query_attr;

static double label_of(const pk_data *d, size_t i, size_t c)
{
    return d->y[i * d->ty + (d->ty > 1 ? c : 0)];
}

static pk_status write_attr_csv(const char *path, const pk_explain *e, const query_attr *qa, const pk_data *train)
{
    pk_atomic a;
    pk_status s = pk_atomic_open(&a, path);
    if (s) return s;
    fputs("query,class,rank,kind,index,label,contribution,share\n", a.f);
    for (size_t q = 0; q < e->Q; q++) {
        const query_attr *r = &qa[q];
        for (int kind = 0; kind < 2; kind++) {
            size_t n = kind ? r->n_opp : r->n_pro, *idx = kind ? r->opp : r->pro;
            for (size_t j = 0; j < n; j++) {
                double phi = e->contrib[(q * e->N + idx[j]) * e->C + r->cls];
                fprintf(a.f, "%zu,%zu,%zu,%s,%zu,", q, r->cls, j + 1, kind ? "opponent" : "proponent", idx[j]);
                put_num(a.f, label_of(train, idx[j], r->cls));
                fputc(',', a.f);
                put_num(a.f, phi);
                fputc(',', a.f);
                put_num(a.f, r->moved != 0 ? phi / r->moved : NAN);
                fputc('\n', a.f);
            }
        }
    }
    return pk_atomic_commit(&a);
}

static pk_status write_attr_json(const char *path, const pk_explain *e, const query_attr *qa, const pk_data *train,
                                 size_t top)
{
    cJSON *root = cJSON_CreateObject(), *qs = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "quad", e->quad);
    cJSON_AddNumberToObject(root, "top", (double)top);
    cJSON_AddNumberToObject(root, "n_train", (double)e->N);
    cJSON_AddNumberToObject(root, "n_outputs", (double)e->C);
    cJSON_AddNumberToObject(root, "steps", (double)e->steps);
    cJSON_AddItemToObject(root, "queries", qs);
    for (size_t q = 0; q < e->Q; q++) {
        const query_attr *r = &qa[q];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "query", (double)q);
        cJSON_AddNumberToObject(o, "class", (double)r->cls);
        cJSON_AddNumberToObject(o, "pred", r->pred);
        cJSON_AddNumberToObject(o, "bias", r->bias);
        cJSON_AddNumberToObject(o, "total", r->total);
        cJSON_AddNumberToObject(o, "regularisation", r->regularisation);
        cJSON_AddNumberToObject(o, "residual", r->residual);
        for (int kind = 0; kind < 2; kind++) {
            cJSON *list = cJSON_CreateArray();
            size_t n = kind ? r->n_opp : r->n_pro, *idx = kind ? r->opp : r->pro;
            for (size_t j = 0; j < n; j++) {
                double phi = e->contrib[(q * e->N + idx[j]) * e->C + r->cls];
                cJSON *it = cJSON_CreateObject();
                cJSON_AddNumberToObject(it, "rank", (double)(j + 1));
                cJSON_AddNumberToObject(it, "index", (double)idx[j]);
                cJSON_AddNumberToObject(it, "label", label_of(train, idx[j], r->cls));
                cJSON_AddNumberToObject(it, "contribution", phi);
                if (r->moved != 0) cJSON_AddNumberToObject(it, "share", phi / r->moved);
                else cJSON_AddNullToObject(it, "share");
                cJSON_AddItemToArray(list, it);
            }
            cJSON_AddItemToObject(o, kind ? "opponents" : "proponents", list);
        }
        cJSON_AddItemToArray(qs, o);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return PK_ERR_NOMEM;
    pk_status s = pk_write_file(path, text, strlen(text));
    free(text);
    return s;
}

static void print_attr_table(const pk_explain *e, const query_attr *qa, const pk_data *train)
{
    for (size_t q = 0; q < e->Q; q++) {
        const query_attr *r = &qa[q];
        printf("query %zu  output %zu: pred %.6g  bias %.6g  pred - bias %.6g  sum of all contributions %.6g  ",
               q, r->cls, r->pred, r->bias, r->moved, r->total);
        if (r->regularisation != 0.0) printf("weight decay %.6g  ", r->regularisation);
        printf("residual %.3g\n", r->residual);
        for (int kind = 0; kind < 2; kind++) {
            size_t n = kind ? r->n_opp : r->n_pro, *idx = kind ? r->opp : r->pro;
            printf("  %s (%zu)\n", kind ? "opponents" : "proponents", n);
            if (n) printf("    %4s %8s %8s %14s %10s\n", "rank", "index", "label", "contribution", "share");
            for (size_t j = 0; j < n; j++) {
                double phi = e->contrib[(q * e->N + idx[j]) * e->C + r->cls];
                printf("    %4zu %8zu %8.6g %14.6g %10.4g\n", j + 1, idx[j], label_of(train, idx[j], r->cls), phi,
                       r->moved != 0 ? phi / r->moved : NAN);
            }
        }
    }
}

int cmd_attribute(int argc, char **argv)
{
    const char *cmd = "attribute";
    static const char *help =
        "usage: pathkernel attribute RUN --query SPEC [--top K] [--class pred|label|C] [--quad R] [--out FILE]\n\n"
        "For every query x, the training examples that pushed the chosen output f_c(x) up most\n"
        "(proponents: largest phi_i(x)[c] > 0) and down most (opponents: most negative), from the exact\n"
        "contributions of `explain` (MATH.md section 3). share = phi_i(x)[c] / (pred - bias)[c];\n"
        "residual = pred - bias - sum over all training examples of phi_i(x)[c] - the part weight decay\n"
        "moved, which no example owns (the quadrature error).\n"
        "Exact ties are ranked by the smaller index.\n\n"
        "  --query SPEC      query inputs (the run's standardisation is applied)\n"
        "  --first N, --random N, --data-seed S   select queries [all]\n"
        "  --top K           proponents and opponents per query [10]\n"
        "  --class C         pred: the predicted class (argmax for softmax; output 0 for one output),\n"
        "                    label: the query's own target class, or an output index [pred]\n"
        "  --quad R          left, mid, gl1..gl8 [gl2]\n"
        "  --out FILE        FILE.csv (query,class,rank,kind,index,label,contribution,share) or FILE.json;\n"
        "                    without it, a table on stdout\n"
        "  --block N, --mem MIB   as for explain\n"
        "  --threads N       threads [all cores]\n";
    const char *query = NULL, *out = NULL, *cls = "pred", *dir;
    size_t top = 10, cls_num = 0;
    int cls_mode = CLASS_PRED;
    pk_load_opts lo = pk_load_opts_defaults();
    pk_explain_opts eo = pk_explain_opts_defaults();
    eo.want_kernel = 0;
    eo.want_contrib = 1;
    const cli_opt opts[] = {{"query", CLI_STR, &query, NULL}, {"top", CLI_SIZE, &top, NULL},
                            {"class", CLI_STR, &cls, NULL}, {"quad", CLI_QUAD, &eo.quad, NULL},
                            {"out", CLI_STR, &out, NULL}, CLI_SELECT(lo), {"block", CLI_SIZE, &eo.block, NULL},
                            {"mem", CLI_MIB, &eo.mem_limit, NULL}, {"threads", CLI_THREADS, NULL, NULL},
                            {NULL, 0, NULL, NULL}};
    int prc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (prc) return prc < 0 ? EXIT_OK : prc;
    if (!strcmp(cls, "pred")) cls_mode = CLASS_PRED;
    else if (!strcmp(cls, "label")) cls_mode = CLASS_LABEL;
    else if (!pk_parse_size(cls, &cls_num)) cls_mode = 0;
    else return cli_usage(cmd, "--class: '%s' is not pred, label or an output index", cls);
    if (!query) return cli_usage(cmd, "--query SPEC is required");
    if (!top) return cli_usage(cmd, "--top must be at least 1");
    if (out && !ends_with(out, ".csv") && !ends_with(out, ".json"))
        return cli_usage(cmd, "--out %s: the file name must end in .csv or .json (omit --out for a table)", out);

    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    const pk_mlp *m = pk_run_mlp(run);
    size_t C = m->dims[m->n_layers];
    pk_loss loss = pk_run_loss(run);
    if (cls_mode == 0 && cls_num >= C) {
        pk_run_close(run);
        return cli_usage(cmd, "--class %zu: the run's network has outputs 0..%zu", cls_num, C - 1);
    }
    if (cls_mode == CLASS_LABEL && loss == PK_LOSS_MSE && C > 1) {
        pk_run_close(run);
        return cli_usage(cmd, "--class label needs class targets (softmax or logistic); this run uses mse with %zu outputs", C);
    }
    pk_data q = {0};
    pk_explain e = {0};
    query_attr *qa = NULL;
    const pk_data *train = NULL;
    s = pk_run_load_data(run, query, &lo, &q);
    if (!s && !q.n) s = pk_fail(PK_ERR_INPUT, "%s: no queries", query);
    /* the class of every query, checked before the replay */
    if (!s && !(qa = calloc(q.n, sizeof *qa))) s = PK_ERR_NOMEM;
    if (!s && cls_mode == CLASS_LABEL)
        for (size_t i = 0; i < q.n && !s; i++) {
            double y = q.y[i * q.ty];
            if (loss == PK_LOSS_SOFTMAX) {
                if (!(y >= 0 && y == floor(y) && y < (double)C))
                    s = pk_fail(PK_ERR_INPUT, "%s: query %zu has target %g, not a class 0..%zu (--class label)", query, i, y, C - 1);
                else qa[i].cls = (size_t)y;
            } else {
                qa[i].cls = 0;  /* one output: the label's class is read from output 0 */
            }
        }
    if (!s) s = pk_explain_run(run, q.x, q.n, &eo, &e);
    if (!s) s = pk_run_train(run, &train);
    for (size_t i = 0; !s && i < e.Q; i++) {
        query_attr *r = &qa[i];
        const double *pred = e.pred + i * C;
        if (cls_mode == CLASS_PRED) {
            r->cls = 0;
            if (loss == PK_LOSS_SOFTMAX)
                for (size_t k = 1; k < C; k++) if (pred[k] > pred[r->cls]) r->cls = k;
        } else if (cls_mode >= 0) {
            r->cls = cls_num;
        }
        r->pred = pred[r->cls];
        r->bias = e.bias[i * C + r->cls];
        r->moved = r->pred - r->bias;
        double tot = 0;
        const double *phi = e.contrib + i * e.N * C + r->cls;
        for (size_t j = 0; j < e.N; j++) tot += phi[j * C];
        r->total = tot;
        r->regularisation = e.regularisation ? e.regularisation[i * C + r->cls] : 0.0;
        r->residual = r->moved - tot - r->regularisation;
        r->pro = pk_alloc(top, sizeof *r->pro);
        r->opp = pk_alloc(top, sizeof *r->opp);
        if (!r->pro || !r->opp) { s = PK_ERR_NOMEM; break; }
        s = pk_rank(phi, e.N, C, 1, top, r->pro, &r->n_pro);
        if (!s) s = pk_rank(phi, e.N, C, -1, top, r->opp, &r->n_opp);
    }
    if (!s) {
        if (!out) print_attr_table(&e, qa, train);
        else if (ends_with(out, ".csv")) s = write_attr_csv(out, &e, qa, train);
        else s = write_attr_json(out, &e, qa, train, top);
    }
    if (!s && out) {
        double worst = 0;
        for (size_t i = 0; i < e.Q; i++) worst = fmax(worst, fabs(qa[i].residual));
        printf("attributed %zu queries to %zu training examples (%s, top %zu): max |residual| = %.3g; wrote %s\n",
               e.Q, e.N, e.quad, top, worst, out);
    }
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    if (qa)
        for (size_t i = 0; i < q.n; i++) { free(qa[i].pro); free(qa[i].opp); }
    free(qa);
    pk_explain_free(&e);
    pk_data_free(&q);
    pk_run_close(run);
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

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

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

    char tmpl[] = "/tmp/pk-mislabel-XXXXXX";
    const char *base = outdir;
    pk_status s = PK_OK;
    if (outdir) s = pk_mkdirs(outdir);
    else if (!(base = mkdtemp(tmpl))) s = pk_fail(PK_ERR_IO, "cannot create a temporary directory: %s", strerror(errno));
    if (s) return cli_error(cmd, s);
    char *run_dir = pk_path_join(base, "run"), *xp = pk_path_join(base, "data_x.npy");
    char *yp = pk_path_join(base, "data_y.npy"), *csvp = pk_path_join(base, "mislabel.csv");
    char *jsonp = pk_path_join(base, "mislabel.json"), *spec = NULL;
    pk_data data = {0};
    pk_run *run = NULL;
    size_t C = 0, n_flip = 0, N = 0;
    unsigned char *flipped = NULL;
    double *orig = NULL, *mean = NULL, *sd = NULL, *scores[4] = {0}, *w = NULL;
    size_t *scratch = NULL;
    double acc = NAN, train_loss = NAN;
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
    if (!s) { /* the flipped data, raw, so that the run can be reopened alone */
        size_t sx[2] = {N, data.d}, sy[1] = {N};
        s = pk_npy_write(xp, data.x, 2, sx);
        if (!s) s = pk_npy_write(yp, data.y, 1, sy);
        size_t len = strlen(xp) + strlen(yp) + 8;
        if (!s && !(spec = malloc(len))) s = PK_ERR_NOMEM;
        if (!s) snprintf(spec, len, "npy:%s,%s", xp, yp);
    }
    if (!s) {
        size_t C2;
        s = pk_data_classes(&data, &C2);
        if (!s && C2 != C) s = pk_fail(PK_ERR_INPUT, "%s: after the flips no example has class %zu: use more data", data_spec, C - 1);
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
        const pk_mlp *m = pk_run_mlp(run);
        size_t Cm = m->dims[m->n_layers];
        w = pk_alloc(m->n_params, sizeof *w);
        double *f = pk_alloc(N, Cm * sizeof *f);
        if (!w || !f) s = PK_ERR_NOMEM;
        if (!s) s = pk_run_weights(run, pk_run_steps(run), w);
        if (!s) s = pk_predict(m, w, data.x, N, f);
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
    if (!outdir && base) nftw(base, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    pk_data_free(&data);
    free(run_dir); free(xp); free(yp); free(csvp); free(jsonp); free(spec);
    free(flipped); free(orig); free(mean); free(sd); free(scratch); free(w);
    for (int k = 0; k < 4; k++) free(scores[k]);
    return rc;
}
