/* mislabel.c -- `pathkernel mislabel`: flip a fraction of the labels, train,
 * and rank the flipped examples by exact self-influence and by baselines. */
#define _XOPEN_SOURCE 700 /* mkdtemp */
#include "../cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    size_t count = 1;
    for (size_t i = 0; i < ndim; i++) count *= shape[i];
    pk_status s = pk_npy_stream_open(w, path, 0, ndim, shape);
    if (!s) s = pk_npy_stream_write(w, a, count);
    if (!s) s = pk_npy_stream_flush(w);
    return s;
}

/* The four scores before the leave-one-out ones, and at most this many of those. */
#define BASE_SCORES 4
#define MAX_LOO 5

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
        "|g_i(w_T)|^2, TracIn with 5 evenly spaced checkpoints (sum_j eta |g_i(w_{t_j})|^2), and for each\n"
        "kernel of --loo the leave-one-out residual of the example's own class under kernel ridge regression\n"
        "on that kernel (MATH.md section 7, \"Leave-one-out\"; `pathkernel loo`), ridge chosen by\n"
        "leave-one-out error.\n\n"
        "  --data SPEC         labelled data (class targets)\n"
        "  --first N, --random N, --data-seed S   select examples [all]\n"
        CLI_CSV_HELP_TRAIN
        "  --class-names FILE  the classes' names, one a line, as for train\n"
        "  --standardize       scale features by their mean/std [off]\n"
        "  --flip FRAC         fraction of labels to flip, in (0, 1) (required)\n"
        "  --flip-seed S       seed of the flips [0]\n"
        "  --model M --loss L --optim O --lr X --steps T --batch B --seed S   as for train\n"
        "                      [mlp:64:tanh, softmax, sgd, 0.1, 100, 64, 0]; loss softmax or logistic, optim gd or sgd\n"
        "  --keep K            store the run's weights every K steps [T/5]\n"
        "  --quad R            quadrature of the exact self-influence and the path kernel [gl2]\n"
        "  --loo LIST          kernels of the leave-one-out scores, comma-separated: path, tangent-final,\n"
        "                      tangent-init, ntk, rbf, or none [tangent-final,tangent-init; path costs\n"
        "                      steps x nodes tangent kernels of N x N]\n"
        "  --mem MIB           memory budget of each leave-one-out kernel and its factor [3/4 of free memory]\n"
        "  --out DIR           writes DIR/run, DIR/data_x.npy, DIR/data_y.npy (the flipped data),\n"
        "                      DIR/mislabel.csv (a row per example: its label and the original's, their\n"
        "                      names when the classes have names, the flip and the scores) and\n"
        "                      DIR/mislabel.json (with each score's seconds and, per leave-one-out\n"
        "                      kernel, its ridge grid and the AUC at every ridge) [a temporary directory,\n"
        "                      removed]\n"
        "  --threads N         threads [all cores]\n"
        "  --quiet             no progress lines\n";
    const char *data_spec = NULL, *outdir = NULL, *class_file = NULL, *loo_arg = "tangent-final,tangent-init";
    char **class_names = NULL;
    double flip = NAN;
    uint64_t flip_seed = 0;
    int quiet = 0, have_batch = 0, have_keep = 0;
    size_t loo_mem = 0; /* bytes: the leave-one-out kernels and their factors (0: 3/4 of free memory) */
    pk_load_opts lo = pk_load_opts_defaults();
    pk_train_opts to = pk_train_opts_defaults();
    to.optim.kind = PK_OPTIM_SGD;
    to.optim.batch = 64;
    pk_quad quad;
    pk_quad_parse("gl2", &quad);
    const cli_opt opts[] = {
        {"data", CLI_STR, &data_spec, NULL}, CLI_SELECT(lo), {"class-names", CLI_STR, &class_file, NULL},
        {"standardize", CLI_FLAG, &to.standardize, NULL},
        {"flip", CLI_DOUBLE, &flip, NULL}, {"flip-seed", CLI_U64, &flip_seed, NULL}, {"model", CLI_STR, &to.model, NULL},
        {"loss", CLI_LOSS, &to.loss, NULL}, {"optim", CLI_OPTIM, &to.optim.kind, NULL},
        {"lr", CLI_DOUBLE, &to.optim.lr, NULL}, {"steps", CLI_SIZE, &to.steps, NULL},
        {"batch", CLI_SIZE, &to.optim.batch, &have_batch}, {"seed", CLI_U64, &to.seed, NULL},
        {"keep", CLI_SIZE, &to.keep, &have_keep}, {"quad", CLI_QUAD, &quad, NULL}, {"out", CLI_STR, &outdir, NULL},
        {"loo", CLI_STR, &loo_arg, NULL}, {"mem", CLI_MIB, &loo_mem, NULL},
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
    /* the leave-one-out kernels, checked before training */
    pk_kernel_kind loo_k[MAX_LOO];
    size_t n_loo = 0;
    for (const char *p = loo_arg; strcmp(loo_arg, "none") && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char name[32];
        if (len >= sizeof name || n_loo == MAX_LOO)
            return cli_usage(cmd, "--loo %s: at most %d kernels, comma-separated", loo_arg, MAX_LOO);
        memcpy(name, p, len);
        name[len] = 0;
        if (pk_kernel_kind_parse(name, &loo_k[n_loo]) || loo_k[n_loo] == PK_KERNEL_PATH_BATCH)
            return cli_usage(cmd, "--loo %s: '%s' is not one of path, tangent-final, tangent-init, ntk, rbf (path-batch "
                             "is not positive semi-definite), or none", loo_arg, name);
        n_loo++;
        p = e ? e + 1 : p + len;
    }
    size_t NS = BASE_SCORES + n_loo;
    if ((prc = cli_class_names(cmd, class_file, &lo, &class_names))) return prc;
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
    double *orig = NULL, *mean = NULL, *sd = NULL, *scores[BASE_SCORES + MAX_LOO] = {0}, *w = NULL;
    double secs[BASE_SCORES + MAX_LOO] = {0}; /* seconds of each score (final loss and gradient norm: one pass, halved) */
    pk_loo loos[MAX_LOO] = {{0}};
    char names[BASE_SCORES + MAX_LOO][32] = {"self_influence", "final_loss", "grad_norm2", "tracin5"};
    size_t *scratch = NULL;
    double acc = NAN, train_loss = NAN;
    pk_npy_stream xs = {0}, ys = {0};
    if (!run_dir || !xp || !yp || !csvp || !jsonp) s = PK_ERR_NOMEM;
    if (!s) s = pk_data_load(data_spec, &lo, &data);
    free(class_names);
    if (!s) s = pk_data_classes(&data, &C);
    if (!s && to.loss == PK_LOSS_LOGISTIC && C > 2)
        s = pk_fail(PK_ERR_INPUT, "%s: logistic loss needs labels 0/1, found %zu classes", data_spec, C);
    if (!s && C < 2) s = pk_fail(PK_ERR_INPUT, "%s: flipping labels needs at least 2 classes", data_spec);
    if (!s) {
        N = data.n;
        flipped = pk_alloc(N, 1);
        orig = pk_alloc(N, sizeof *orig);
        scratch = pk_alloc(N, sizeof *scratch);
        if (!flipped || !orig || !scratch) s = PK_ERR_NOMEM;
        for (size_t k = 0; k < NS; k++) /* (N) each */
            if (!(scores[k] = pk_alloc(N, sizeof(double)))) s = PK_ERR_NOMEM;
    }
    if (!s) {
        memcpy(orig, data.y, N * sizeof *orig);
        s = pk_data_flip_labels(&data, C, flip, flip_seed, flipped, &n_flip);
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
        if (!quiet) {
            fprintf(stderr, "mislabel: %zu examples, %zu classes", N, C);
            for (size_t c = 0; c < C && c < 20; c++) {
                const char *nm = pk_data_class_name(&data, (double)c);
                if (nm) fprintf(stderr, "%s %zu %s", c ? "," : " (", c, nm);
                if (nm && (c + 1 == C || c + 1 == 20)) fprintf(stderr, "%s)", C > 20 ? ", ..." : "");
            }
            fprintf(stderr, ", %zu labels flipped; training %zu steps\n", n_flip, to.steps);
        }
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
            acc = pk_loss_accuracy(to.loss, f, data.y, N, Cm);
            train_loss = pk_loss_eval(to.loss, f, data.y, N, Cm, 1, NULL);
        }
        free(f);
        if (!s && !quiet) fprintf(stderr, "mislabel: trained: loss %.4g, accuracy %.4f on the (flipped) labels; "
                                  "exact self-influence...\n", train_loss, acc);
        double t0 = pk_seconds();
        if (!s) s = pk_run_self_influence(run, PK_SI_LOSS, &quad, scores[0]);
        secs[0] = pk_seconds() - t0;
        t0 = pk_seconds();
        if (!s) s = pk_model_example_stats(m, to.loss, w, &data, scores[1], scores[2]);
        secs[1] = secs[2] = 0.5 * (pk_seconds() - t0);
        t0 = pk_seconds();
        if (!s) s = pk_run_tracin(run, 5, scores[3]);
        secs[3] = pk_seconds() - t0;
        for (size_t j = 0; !s && j < n_loo; j++) {
            pk_loo_opts lo2 = pk_loo_opts_defaults();
            lo2.kernel = loo_k[j];
            lo2.quad = quad;
            lo2.mem_limit = loo_mem;
            if (!quiet) fprintf(stderr, "mislabel: leave-one-out on the %s kernel...\n", pk_kernel_kind_name(loo_k[j]));
            s = pk_run_loo(run, &lo2, &loos[j]);
            if (!s) {
                memcpy(scores[BASE_SCORES + j], loos[j].score, N * sizeof *scores[0]);
                secs[BASE_SCORES + j] = loos[j].seconds_kernel + loos[j].seconds_solve;
                snprintf(names[BASE_SCORES + j], sizeof names[0], "loo_%s", pk_kernel_kind_name(loo_k[j]));
                for (char *c = names[BASE_SCORES + j]; *c; c++)
                    if (*c == '-') *c = '_';
            }
        }
    }
    static const double tops[3] = {0.05, 0.10, 0.20};
    double auc[BASE_SCORES + MAX_LOO], found[BASE_SCORES + MAX_LOO][3];
    pk_group_begin(); /* the flipped data and the results, or none of them */
    if (!s) s = pk_npy_stream_commit(&xs);
    if (!s) s = pk_npy_stream_commit(&ys);
    if (!s) {
        for (size_t k = 0; k < NS; k++) {
            auc[k] = pk_auc(scores[k], flipped, N);
            for (int j = 0; j < 3; j++) found[k][j] = found_in_top(scores[k], flipped, N, n_flip, tops[j], scratch);
        }
        pk_atomic a;
        if (outdir && !(s = pk_atomic_open(&a, csvp))) {
            fputs("index,label,label_name,original_label,original_label_name,flipped", a.f);
            for (size_t k = 0; k < NS; k++) fprintf(a.f, ",%s", names[k]);
            fputc('\n', a.f);
            for (size_t i = 0; i < N; i++) {
                fprintf(a.f, "%zu,%.17g,", i, data.y[i]);
                cli_put_text(a.f, pk_data_class_name(&data, data.y[i]));
                fprintf(a.f, ",%.17g,", orig[i]);
                cli_put_text(a.f, pk_data_class_name(&data, orig[i]));
                fprintf(a.f, ",%d", flipped[i] ? 1 : 0);
                for (size_t k = 0; k < NS; k++) { fputc(',', a.f); cli_put_num(a.f, scores[k][i]); }
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
        if (data.class_names) {
            cJSON *cn = cJSON_AddArrayToObject(r, "class_names");
            for (size_t c = 0; c < data.n_class_names; c++) cJSON_AddItemToArray(cn, cJSON_CreateString(data.class_names[c]));
        }
        cJSON_AddNumberToObject(r, "flip", flip);
        cJSON_AddNumberToObject(r, "flip_seed", (double)flip_seed);
        cJSON_AddNumberToObject(r, "n_flipped", (double)n_flip);
        cJSON_AddNumberToObject(r, "steps", (double)to.steps);
        cJSON_AddStringToObject(r, "quad", quad.name);
        cJSON_AddNumberToObject(r, "train_loss", train_loss);
        cJSON_AddNumberToObject(r, "train_accuracy", acc);
        for (size_t k = 0; k < NS; k++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "auc", auc[k]);
            cJSON_AddNumberToObject(o, "found_top5", found[k][0]);
            cJSON_AddNumberToObject(o, "found_top10", found[k][1]);
            cJSON_AddNumberToObject(o, "found_top20", found[k][2]);
            cJSON_AddNumberToObject(o, "seconds", secs[k]);
            if (k >= BASE_SCORES) { /* the machine: its ridge grid, and the AUC and top 10% at every ridge */
                const pk_loo *l = &loos[k - BASE_SCORES];
                char *text = cli_loo_json(l, &quad);
                cJSON *lj = text ? cJSON_Parse(text) : NULL, *g = cJSON_GetObjectItem(lj, "grid");
                free(text);
                for (size_t r = 0; g && r < l->n_grid; r++) {
                    cJSON *e = cJSON_GetArrayItem(g, (int)r);
                    cJSON_AddNumberToObject(e, "auc", pk_auc(l->grid_score + r * N, flipped, N));
                    cJSON_AddNumberToObject(e, "found_top10",
                                            found_in_top(l->grid_score + r * N, flipped, N, n_flip, 0.10, scratch));
                }
                if (lj) cJSON_AddItemToObject(o, "loo", lj);
            }
            cJSON_AddItemToObject(sc, names[k], o);
        }
        cJSON_AddItemToObject(r, "scores", sc);
        s = cli_write_json(jsonp, r);
    }
    s = pk_group_end(s);
    pk_npy_stream_abort(&xs); /* no-ops once committed */
    pk_npy_stream_abort(&ys);
    if (!s) {
        printf("%zu examples, %zu flipped (%.3g), train accuracy %.4f on the flipped labels, %zu steps\n",
               N, n_flip, flip, acc, to.steps);
        printf("%-18s %8s %8s %8s %8s %9s\n", "score", "auc", "top5%", "top10%", "top20%", "seconds");
        for (size_t k = 0; k < NS; k++)
            printf("%-18s %8.4f %8.4f %8.4f %8.4f %9.3g\n", names[k], auc[k], found[k][0], found[k][1], found[k][2],
                   secs[k]);
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
    for (size_t k = 0; k < NS; k++) free(scores[k]);
    for (size_t j = 0; j < n_loo; j++) pk_loo_free(&loos[j]);
    return rc;
}
