/* demo.c -- `pathkernel demo`: the main job on the embedded 8x8 digits:
 * train, verify, explain, attribute, report. */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The embedded data, digits.csv.gz, looked for in this order: $PATHKERNEL_DATA
 * (the file, or a directory holding it); beside the executable,
 * EXE_DIR/../share/pathkernel (installed) and EXE_DIR/share/pathkernel (the
 * build tree's copy); ./data. Returns the first readable file (in a static
 * buffer), else NULL with the places looked at in `looked`. */
static const char *demo_data(char *looked, size_t len)
{
    static const char name[] = "digits.csv.gz";
    static char found[PATH_MAX], cand[4][PATH_MAX + 64];
    size_t n = 0;
    const char *env = getenv("PATHKERNEL_DATA");
    struct stat st;
    if (env && *env)
        snprintf(cand[n++], sizeof *cand, stat(env, &st) == 0 && S_ISDIR(st.st_mode) ? "%s/%s" : "%s", env, name);
    char exe[PATH_MAX];
    if (!cli_exe_dir(exe, sizeof exe)) {
        snprintf(cand[n++], sizeof *cand, "%s/../share/pathkernel/%s", exe, name);
        snprintf(cand[n++], sizeof *cand, "%s/share/pathkernel/%s", exe, name);
    }
    snprintf(cand[n++], sizeof *cand, "./data/%s", name);
    size_t used = 0;
    looked[0] = 0;
    for (size_t i = 0; i < n; i++) {
        if (access(cand[i], R_OK) == 0 && stat(cand[i], &st) == 0 && S_ISREG(st.st_mode))
            return realpath(cand[i], found) ? found : cand[i];
        int w = snprintf(looked + used, len - used, "%s%s%s", i ? ", " : "", cand[i],
                         env && *env && i == 0 ? " ($PATHKERNEL_DATA)" : "");
        if (w > 0) used = (size_t)w < len - used ? used + (size_t)w : len - 1;
    }
    return NULL;
}

/* Move one file of a run from one directory to another, or remove it when
 * `to` is NULL; a file that is not there is fine (standardize.npy). */
static pk_status run_file(const char *from, const char *to, const char *name)
{
    char *p = pk_path_join(from, name), *q = to ? pk_path_join(to, name) : NULL;
    pk_status s = !p || (to && !q) ? PK_ERR_NOMEM : PK_OK;
    if (!s && (to ? rename(p, q) : unlink(p)) != 0 && errno != ENOENT)
        s = pk_fail(PK_ERR_IO, "%s: cannot %s: %s", p, to ? "move it" : "remove it", strerror(errno));
    free(p);
    free(q);
    return s;
}

/* The files of a run in `from` (only the names a run writes): moved into
 * `to` (made when missing), or removed when `to` is NULL; then `from` and
 * its weights/ are removed when that leaves them empty. Renames only:
 * nothing is copied, nothing needs disk space. */
static pk_status run_files(const char *from, const char *to)
{
    static const char *const files[] = {"run.json", "steps.csv", "trajectory.bin", "standardize.npy"};
    char *wf = pk_path_join(from, "weights"), *wt = to ? pk_path_join(to, "weights") : NULL;
    pk_status s = wf && (wt || !to) ? PK_OK : PK_ERR_NOMEM;
    if (!s && to) s = pk_mkdirs(to);
    for (size_t i = 0; !s && i < sizeof files / sizeof *files; i++) s = run_file(from, to, files[i]);
    DIR *d = s ? NULL : opendir(wf);
    struct dirent *de;
    int made = 0;
    while (d && !s && (de = readdir(d))) {
        if (strncmp(de->d_name, "step-", 5) || !strstr(de->d_name, ".pkw")) continue;
        if (to && !made++) s = pk_mkdirs(wt);
        if (!s) s = run_file(wf, wt, de->d_name);
    }
    if (d) closedir(d);
    if (wf) rmdir(wf);
    rmdir(from);
    free(wf);
    free(wt);
    return s;
}

static pk_status write_npy(const char *dir, const char *name, const double *a, size_t ndim, const size_t *shape)
{
    char *p = pk_path_join(dir, name);
    pk_status s = p ? pk_npy_write(p, a, ndim, shape) : PK_ERR_NOMEM;
    free(p);
    return s;
}

/* pred, bias, contrib, the kernel (trace) if computed, and summary.json, as `explain --out DIR`. */
static pk_status write_explain(const char *dir, const pk_explain *e)
{
    size_t s2[2] = {e->Q, e->C}, s3[3] = {e->Q, e->N, e->C}, sk[2] = {e->Q, e->N};
    pk_status s = write_npy(dir, "pred.npy", e->pred, 2, s2);
    if (!s) s = write_npy(dir, "bias.npy", e->bias, 2, s2);
    if (!s) s = write_npy(dir, "contrib.npy", e->contrib, 3, s3);
    if (!s && e->kernel) s = write_npy(dir, "kernel.npy", e->kernel, 2, sk);
    if (!s) {
        char *text = cli_summary_json(e, cli_max_abs(e->regularisation, e->Q * e->C)), *p = pk_path_join(dir, "summary.json");
        s = text && p ? pk_file_write(p, text, strlen(text)) : PK_ERR_NOMEM;
        free(text);
        free(p);
    }
    return s;
}

int cmd_demo(int argc, char **argv)
{
    const char *cmd = "demo";
    static const char *help =
        "usage: pathkernel demo [--out DIR] [--threads N]\n\n"
        "The main job on the embedded data (data/digits.csv.gz: the UCI/scikit-learn 8x8 digits, 1,797\n"
        "images, 64 pixels, 10 classes): trains mlp:64:tanh (softmax, sgd batch 64, lr 0.1, 300 steps,\n"
        "standardised, seed 1) into DIR/run, checks the exact representation f = b + sum_i phi_i on 100\n"
        "queries with each quadrature rule (left, mid, gl2, gl4), explains 10 queries into DIR/explain (as\n"
        "pathkernel explain), prints the strongest proponents and opponents of the first, and writes\n"
        "DIR/report.html (pathkernel report on the first 60 examples).\n"
        "  --out DIR     output directory [demo-run]\n"
        "  --threads N   threads [all cores]\n";
    const char *out = "demo-run";
    const cli_opt opts[] = {{"out", CLI_STR, &out, NULL}, {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    int prc = cli_parse(cmd, help, argc, argv, opts, NULL, 0);
    if (prc) return prc < 0 ? EXIT_OK : prc;
    char looked[4 * PATH_MAX + 256];
    const char *data = demo_data(looked, sizeof looked);
    if (!data) {
        fprintf(stderr, "pathkernel demo: cannot find the embedded data digits.csv.gz; looked at %s "
                "(set PATHKERNEL_DATA to the file or its directory)\n", looked);
        return EXIT_BAD_INPUT;
    }
    double t_start = pk_seconds();
    /* The run is trained under a temporary name beside DIR/run and takes its
     * place just before the report, the files of an earlier run put aside
     * until the end; explain/ and report.html are one output group. A
     * failure puts the earlier run back, keeps no new file and removes the
     * directories the demo made: an earlier demo in DIR stays as it was. */
    char tmpname[2][64];
    snprintf(tmpname[0], sizeof tmpname[0], "run.tmp.%ld", (long)getpid());
    snprintf(tmpname[1], sizeof tmpname[1], "run.old.tmp.%ld", (long)getpid());
    char *rundir = pk_path_join(out, "run"), *html = pk_path_join(out, "report.html");
    char *exdir = pk_path_join(out, "explain"), *stage = pk_path_join(out, tmpname[0]);
    char *aside = pk_path_join(out, tmpname[1]);
    char *abs = realpath(data, NULL);
    pk_data train = {0}, q = {0};
    double *mean = NULL, *sd = NULL, *w = NULL, *f = NULL;
    pk_run *run = NULL;
    pk_explain e;
    memset(&e, 0, sizeof e);
    pk_report_info info;
    size_t *pro = NULL, *opp = NULL;
    int existed = cli_dir_exists(out), ex_existed = cli_dir_exists(exdir), grouped = 0, moved_old = 0, moved_new = 0;
    pk_status s = rundir && html && exdir && stage && aside && abs ? PK_OK : PK_ERR_NOMEM;
    if (!s) s = pk_mkdirs(exdir);
    if (s) goto done;

    /* 1. train */
    pk_load_opts lo = pk_load_opts_defaults();
    s = pk_data_load(abs, &lo, &train);
    if (s) goto done;
    printf("== train: mlp:64:tanh on %s (%zu images of 8x8 pixels, 10 classes)\n", data, train.n);
    mean = pk_alloc(train.d, sizeof *mean);
    sd = pk_alloc(train.d, sizeof *sd);
    if (!mean || !sd) { s = PK_ERR_NOMEM; goto done; }
    pk_data_moments(&train, mean, sd);
    pk_data_standardize(&train, mean, sd);
    pk_train_opts to = pk_train_opts_defaults();
    to.model = "mlp:64:tanh";
    to.loss = PK_LOSS_SOFTMAX;
    to.optim.kind = PK_OPTIM_SGD;
    to.optim.lr = 0.1;
    to.optim.batch = 64;
    to.steps = 300;
    to.seed = 1;
    to.out_dir = stage;
    to.data_spec = abs;
    to.load = &lo;
    to.standardize = 1;
    to.mean = mean;
    to.std = sd;
    double t0 = pk_seconds();
    s = pk_train(&train, &to, NULL, NULL);
    if (!s) s = pk_run_open(stage, &run);
    if (!s) s = pk_run_attach_data(run, &train);
    if (s) goto done;
    const pk_model *m = pk_run_model(run);
    size_t C = pk_model_n_outputs(m);
    w = pk_alloc(pk_model_n_params(m), sizeof *w);
    f = pk_alloc(train.n, C * sizeof *f);
    if (!w || !f) { s = PK_ERR_NOMEM; goto done; }
    s = pk_run_weights(run, pk_run_steps(run), w);
    if (!s) s = pk_model_predict(m, w, train.x, train.n, f);
    if (s) goto done;
    printf("trained %zu parameters, softmax loss, sgd lr 0.1 batch 64, %zu steps in %.2f s: final train loss %.4g, "
           "accuracy %.4f; run written to %s\n", pk_model_n_params(m), pk_run_steps(run), pk_seconds() - t0,
           pk_loss_eval(PK_LOSS_SOFTMAX, f, train.y, train.n, C, train.ty, NULL),
           pk_loss_accuracy(PK_LOSS_SOFTMAX, f, train.y, train.n, C), rundir);

    /* 2. the representation, rule by rule */
    pk_load_opts ql = pk_load_opts_defaults();
    ql.first = 100;
    s = pk_run_load_data(run, abs, &ql, &q);
    if (s) goto done;
    printf("\n== verify: f(x; w_T) = b(x) + sum_i phi_i(x) on %zu queries x %zu outputs, %zu training examples\n",
           q.n, C, train.n);
    printf("%-6s %14s %14s %9s\n", "rule", "max_abs_err", "max_rel_err", "seconds");
    static const char *const rules[] = {"left", "mid", "gl2", "gl4"};
    for (size_t r = 0; r < 4 && !s; r++) {
        pk_explain_opts eo = pk_explain_opts_defaults();
        pk_quad_parse(rules[r], &eo.quad);
        eo.want_contrib = 0;
        eo.want_kernel = 0;
        s = pk_run_explain(run, q.x, q.n, &eo, &e);
        if (s) break;
        printf("%-6s %14.3e %14.3e %9.2f\n", rules[r], e.max_abs_err, e.max_rel_err, e.seconds);
        pk_explain_free(&e);
    }
    if (s) goto done;
    printf("(left is the paper's kernel, first-order in the learning rate; Gauss-Legendre gl4 is exact to rounding)\n");

    /* 3. ten queries explained (DIR/explain, as `pathkernel explain` writes it) and
     *    the first one's proponents and opponents */
    {
        pk_explain_opts eo = pk_explain_opts_defaults();
        pk_quad_parse("gl4", &eo.quad);
        /* not the path kernel: between 10 queries and every training example
         * it costs 1,200 tangent kernels, 10x all the rest of the demo */
        eo.want_kernel = 0;
        s = pk_run_explain(run, q.x, q.n < 10 ? q.n : 10, &eo, &e);
        pk_group_begin(); /* explain/ and report.html, or none of them */
        grouped = 1;
        if (!s) s = write_explain(exdir, &e);
        if (s) goto done;
        printf("\n== explain: %zu queries, every training example's exact contribution to each of the %zu outputs "
               "(gl4): max relative error %.3g; wrote %s (pred, bias, contrib .npy, summary.json; `pathkernel explain` "
               "adds the path kernel)\n",
               e.Q, C, e.max_rel_err, exdir);
        size_t cls = 0, top = 5, np = 0, no = 0;
        for (size_t k = 1; k < C; k++) if (e.pred[k] > e.pred[cls]) cls = k;
        const double *phi = e.contrib + cls;
        double tot = 0, moved = e.pred[cls] - e.bias[cls];
        for (size_t i = 0; i < e.N; i++) tot += phi[i * C];
        pro = pk_alloc(top, sizeof *pro);
        opp = pk_alloc(top, sizeof *opp);
        if (!pro || !opp) { s = PK_ERR_NOMEM; goto done; }
        s = pk_rank(phi, e.N, C, 1, top, pro, &np);
        if (!s) s = pk_rank(phi, e.N, C, -1, top, opp, &no);
        if (s) goto done;
        printf("\n== attribute: query 0 (label %g), output %zu (the predicted class)\n", q.y[0], cls);
        printf("pred %.6g  bias %.6g  pred - bias %.6g  sum of all %zu contributions %.6g  residual %.3g\n",
               e.pred[cls], e.bias[cls], moved, e.N, tot, moved - tot);
        for (int kind = 0; kind < 2; kind++) {
            size_t n = kind ? no : np, *idx = kind ? opp : pro;
            printf("  %s (%zu)\n", kind ? "opponents" : "proponents", n);
            if (n) printf("    %4s %8s %8s %14s %10s\n", "rank", "index", "label", "contribution", "share");
            for (size_t j = 0; j < n; j++) {
                double v = phi[idx[j] * C];
                printf("    %4zu %8zu %8.6g %14.6g %10.4g\n", j + 1, idx[j], train.y[idx[j] * train.ty], v,
                       moved != 0 ? v / moved : NAN);
            }
        }
        pk_explain_free(&e);
    }

    /* 4. the new run in DIR/run (the report names it), then the report */
    pk_run_close(run);
    run = NULL;
    if (cli_dir_exists(rundir)) { moved_old = 1; s = run_files(rundir, aside); }
    if (!s) { moved_new = 1; s = run_files(stage, rundir); }
    if (!s) s = pk_run_open(rundir, &run);
    if (!s) s = pk_run_attach_data(run, &train);
    if (s) goto done;
    printf("\n== report\n");
    pk_report_opts ro = pk_report_opts_defaults();
    ro.query = abs;
    ro.load.first = 60;   /* six or so of each class: the heat map shows the kernel's class blocks */
    s = pk_report_write(run, &ro, html, &info);
    if (s) goto done;
    printf("wrote %s (%zu queries, max relative error %.3g, %.2f s): open it in a browser\n", html, info.Q,
           info.max_rel_err, info.seconds);
done:
    if (grouped) s = pk_group_end(s);
    if (!s) printf("\ndemo done in %.1f s: %s (the recorded training path), %s\n", pk_seconds() - t_start, rundir, html);
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    if (run) pk_run_close(run);
    if (s) { /* the new run out, the earlier one back, the directories the demo made removed */
        if (moved_new) run_files(rundir, NULL);
        if (moved_old) run_files(aside, rundir);
        cli_remove_tree(stage);
        cli_drop_new_dir(exdir, ex_existed);
        cli_drop_new_dir(out, existed);
    } else if (moved_old) {
        run_files(aside, NULL);
    }
    pk_explain_free(&e);
    pk_data_free(&train);
    pk_data_free(&q);
    free(mean); free(sd); free(w); free(f); free(pro); free(opp);
    free(rundir); free(html); free(exdir); free(stage); free(aside); free(abs);
    return rc;
}
