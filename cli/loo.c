/* loo.c -- `pathkernel loo`: leave-one-out residuals of kernel ridge
 * regression on a run's own kernel over its training set (MATH.md section
 * 7, "Leave-one-out"): which training labels the other examples do not
 * support. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* "a,b,c" into grid (at most max values); 0 on success. */
static int parse_grid(const char *cmd, const char *arg, double *grid, size_t max, size_t *n)
{
    *n = 0;
    const char *p = arg;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char buf[64];
        double v;
        if (len >= sizeof buf || *n == max) return cli_usage(cmd, "--ridge-grid %s: at most %zu numbers, comma-separated", arg, max);
        memcpy(buf, p, len);
        buf[len] = 0;
        char *end;
        v = strtod(buf, &end);
        if (!len || *end || !(v > 0) || !isfinite(v))
            return cli_usage(cmd, "--ridge-grid %s: '%s' is not a number > 0 (ridges relative to the kernel's mean "
                             "diagonal, e.g. 0.01,0.1,1)", arg, buf);
        grid[(*n)++] = v;
        p = e ? e + 1 : p + len;
    }
    return *n ? 0 : cli_usage(cmd, "--ridge-grid: no ridge given");
}

static pk_status write_csv(const char *path, const pk_data *train, const pk_loo *l)
{
    pk_atomic a;
    pk_status s = pk_atomic_open(&a, path);
    if (s) return s;
    fputs("index,label,label_name,loo_pred,loo_pred_name,score,resid_norm\n", a.f);
    for (size_t i = 0; i < l->n; i++) {
        double e = 0, y = train->y[i * train->ty];
        for (size_t c = 0; c < l->C; c++) e += l->resid[i * l->C + c] * l->resid[i * l->C + c];
        fprintf(a.f, "%zu,", i);
        cli_put_num(a.f, y);
        fputc(',', a.f);
        cli_put_text(a.f, pk_data_class_name(train, y));
        fputc(',', a.f);
        cli_put_num(a.f, l->pred[i]);
        fputc(',', a.f);
        cli_put_text(a.f, isnan(l->pred[i]) ? NULL : pk_data_class_name(train, l->pred[i]));
        fputc(',', a.f);
        cli_put_num(a.f, l->score[i]);
        fputc(',', a.f);
        cli_put_num(a.f, sqrt(e));
        fputc('\n', a.f);
    }
    return pk_atomic_commit(&a);
}

/* The summary as JSON text (malloc'ed), NULL when out of memory. */
char *cli_loo_json(const pk_loo *l, const pk_quad *quad)
{
    cJSON *r = cJSON_CreateObject(), *g = cJSON_AddArrayToObject(r, "grid");
    cJSON_AddStringToObject(r, "kernel", pk_kernel_kind_name(l->kernel));
    cJSON_AddStringToObject(r, "mode", l->mode == PK_KMODE_FULL ? "full" : "trace");
    if (l->kernel == PK_KERNEL_PATH) cJSON_AddStringToObject(r, "quad", quad->name);
    cJSON_AddNumberToObject(r, "n", (double)l->n);
    cJSON_AddNumberToObject(r, "outputs", (double)l->C);
    cJSON_AddNumberToObject(r, "mean_diag", l->mean_diag);
    cJSON_AddNumberToObject(r, "ridge", l->ridge);
    cJSON_AddNumberToObject(r, "ridge_relative", l->ridge / l->mean_diag);
    cJSON_AddBoolToObject(r, "ridge_chosen", l->n_grid > 1);
    cJSON_AddNumberToObject(r, "mean_sq_resid", l->err);
    if (!isnan(l->accuracy)) cJSON_AddNumberToObject(r, "loo_accuracy", l->accuracy);
    for (size_t k = 0; k < l->n_grid; k++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "ridge_relative", l->grid[k]);
        cJSON_AddNumberToObject(o, "ridge", l->grid[k] * l->mean_diag);
        cJSON_AddNumberToObject(o, "mean_sq_resid", l->grid_err[k]);
        if (!isnan(l->grid_acc[k])) cJSON_AddNumberToObject(o, "loo_accuracy", l->grid_acc[k]);
        cJSON_AddItemToArray(g, o);
    }
    cJSON_AddNumberToObject(r, "seconds_kernel", l->seconds_kernel);
    cJSON_AddNumberToObject(r, "seconds_solve", l->seconds_solve);
    char *text = cJSON_Print(r);
    cJSON_Delete(r);
    return text;
}

int cmd_loo(int argc, char **argv)
{
    const char *cmd = "loo";
    static const char *help =
        "usage: pathkernel loo RUN --out DIR [--kernel K] [--mode trace|full] [--ridge X | --ridge-grid LIST]\n\n"
        "Leave-one-out diagnostics of the network's own kernel (MATH.md section 7, \"Leave-one-out\"):\n"
        "kernel ridge regression alpha = (K + lambda I)^-1 Y on the run's training set (one-hot targets\n"
        "for softmax, the 0/1 label for logistic, the targets for mse), and for every training example\n"
        "the exact residual on the machine refitted without it, y_i - yhat_{-i} = alpha_i / H_ii with\n"
        "H = (K + lambda I)^-1 (trace; full: the C x C diagonal block of H solved against alpha_i), by\n"
        "one Cholesky (LAPACK) of the whole system, in float64, no approximation. A training label the\n"
        "other examples do not support has a large residual for its own class.\n"
        "  --kernel K        path (the paper's path kernel), tangent-final, tangent-init, ntk or rbf\n"
        "                    [tangent-final]; not path-batch (not positive semi-definite)\n"
        "  --mode M          trace (one machine per output on the traced kernel) or full (C x C blocks,\n"
        "                    one machine on the N C x N C system; path and tangent kernels) [trace]\n"
        "  --ridge X         the ridge lambda, absolute [chosen: the least mean squared leave-one-out\n"
        "                    residual over the grid]\n"
        "  --ridge-grid L    ridges to try, relative to the kernel's mean diagonal, comma-separated\n"
        "                    [1e-4,1e-3,1e-2,3e-2,0.1,0.3,1,3,10]\n"
        "  --quad R          the path kernel's quadrature [gl2]\n"
        "  --mem MIB         memory budget: the kernel and its factor must fit [3/4 of free memory]\n"
        "  --save-kernel     also write DIR/kernel.npy, the kernel the machine used\n"
        "  --top K           print the K examples with the largest scores [10]\n"
        "  --out DIR         writes DIR/loo.csv (index, label, label_name, loo_pred, loo_pred_name, score =\n"
        "                    the residual of the example's own class, resid_norm = |y_i - yhat_{-i}|),\n"
        "                    DIR/alpha.npy (N, C), DIR/resid.npy (N, C) and DIR/loo.json (the ridge, the\n"
        "                    grid with each ridge's mean squared residual and accuracy, seconds)\n"
        "  --threads N       threads [all cores]\n";
    const char *out = NULL, *kname = "tangent-final", *grid_arg = NULL, *dir;
    pk_loo_opts o = pk_loo_opts_defaults();
    double grid[64];
    size_t top = 10;
    int have_ridge = 0, save_kernel = 0;
    const cli_opt opts[] = {{"out", CLI_STR, &out, NULL}, {"kernel", CLI_STR, &kname, NULL},
                            {"mode", CLI_KMODE, &o.mode, NULL}, {"ridge", CLI_DOUBLE, &o.ridge, &have_ridge},
                            {"ridge-grid", CLI_STR, &grid_arg, NULL}, {"quad", CLI_QUAD, &o.quad, NULL},
                            {"mem", CLI_MIB, &o.mem_limit, NULL}, {"save-kernel", CLI_FLAG, &save_kernel, NULL},
                            {"top", CLI_SIZE, &top, NULL}, {"threads", CLI_THREADS, NULL, NULL},
                            {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!out) return cli_usage(cmd, "--out DIR is required");
    if (have_ridge && grid_arg) return cli_usage(cmd, "--ridge and --ridge-grid exclude each other: give one");
    if (have_ridge && !(o.ridge > 0)) return cli_usage(cmd, "--ridge %g: the ridge must be > 0", o.ridge);
    if (grid_arg && (rc = parse_grid(cmd, grid_arg, grid, sizeof grid / sizeof *grid, &o.n_grid))) return rc;
    if (grid_arg) o.grid = grid;
    if (pk_kernel_kind_parse(kname, &o.kernel)) return cli_error(cmd, PK_ERR_INPUT);
    o.keep_kernel = save_kernel;
    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    const pk_data *train = NULL;
    pk_loo l = {0};
    s = pk_run_train_data(run, &train);
    if (!s) s = pk_run_loo(run, &o, &l);
    int existed = cli_dir_exists(out);
    if (!s) s = pk_mkdirs(out);
    char *csvp = pk_path_join(out, "loo.csv"), *ap = pk_path_join(out, "alpha.npy");
    char *rp = pk_path_join(out, "resid.npy"), *jp = pk_path_join(out, "loo.json"), *kp = pk_path_join(out, "kernel.npy");
    if (!s && (!csvp || !ap || !rp || !jp || !kp)) s = PK_ERR_NOMEM;
    pk_group_begin(); /* every file of DIR, or none */
    size_t shape[4] = {l.n, l.C, l.C, l.C};
    if (!s) s = write_csv(csvp, train, &l);
    if (!s) s = pk_npy_write(ap, l.alpha, 2, shape);
    if (!s) s = pk_npy_write(rp, l.resid, 2, shape);
    if (!s && save_kernel) {
        size_t ks[4] = {l.n, l.n, l.C, l.C};
        s = pk_npy_write(kp, l.K, l.mode == PK_KMODE_FULL ? 4 : 2, ks);
    }
    if (!s) {
        char *text = cli_loo_json(&l, &o.quad);
        s = text ? pk_file_write(jp, text, strlen(text)) : PK_ERR_NOMEM;
        free(text);
    }
    s = pk_group_end(s);
    if (s) cli_drop_new_dir(out, existed);
    if (!s) {
        printf("leave-one-out on the %s kernel (%s) of %zu training examples, %zu outputs: ridge %.4g (%.3g x the "
               "mean diagonal, %s)\n", pk_kernel_kind_name(l.kernel), l.mode == PK_KMODE_FULL ? "full" : "trace",
               l.n, l.C, l.ridge, l.ridge / l.mean_diag, l.n_grid > 1 ? "chosen by leave-one-out error" : "given");
        if (l.n_grid > 1) {
            printf("%12s %14s %12s\n", "ridge/diag", "mean |r|^2", "loo acc");
            for (size_t k = 0; k < l.n_grid; k++)
                printf("%12.4g %14.6g %12.4f%s\n", l.grid[k], l.grid_err[k], l.grid_acc[k], k == l.chosen ? "  <-" : "");
        }
        if (!isnan(l.accuracy)) printf("leave-one-out accuracy %.4f\n", l.accuracy);
        size_t *idx = pk_alloc(l.n, sizeof *idx), got = 0;
        if (idx && top && !pk_rank(l.score, l.n, 1, 0, top < l.n ? top : l.n, idx, &got)) {
            printf("largest scores (index label -> leave-one-out prediction: score):\n");
            for (size_t j = 0; j < got; j++)
                printf("  %zu %g -> %g: %.4g\n", idx[j], train->y[idx[j] * train->ty], l.pred[idx[j]], l.score[idx[j]]);
        }
        free(idx);
        printf("wrote %s\n", out);
    }
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    pk_loo_free(&l);
    free(csvp); free(ap); free(rp); free(jp); free(kp);
    pk_run_close(run);
    return rc;
}
