/* convergence.c -- `pathkernel convergence`: one run per learning rate at
 * a fixed eta*T, the error of each quadrature rule, and the fitted slope of
 * log(error) against log(eta) (MATH.md section 3). */
#define _XOPEN_SOURCE 700 /* mkdtemp */
#include "../cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const conv_help =
    "usage: pathkernel convergence --data SPEC --query SPEC --model SPEC --loss L --time TAU --lrs LIST [options]\n"
    "\n"
    "Trains once per learning rate eta in LIST for round(TAU/eta) steps (fixed eta*T), explains the\n"
    "queries with each quadrature rule, and fits the slope of log(error) against log(eta): the\n"
    "paper's \"exact as the learning rate goes to 0\" made measurable (MATH.md section 3: slopes\n"
    "near 1 for left, 2 for mid, 2K for glK on smooth activations).\n"
    "  --query SPEC    query inputs\n"
    "  --time TAU      eta * T, the same for every run\n"
    "  --lrs LIST      comma-separated learning rates, e.g. 0.4,0.2,0.1,0.05\n"
    "  --rules LIST    quadrature rules [left,mid,gl2]; exact for piecewise-linear networks (error at rounding)\n"
    "  --out DIR       keep the runs and write DIR/convergence.csv [runs in a temporary directory]\n"
    "  and the data, model and optimiser options of train (not --lr, --steps, --test)\n";

int cmd_convergence(int argc, char **argv)
{
    const char *cmd = "convergence";
    cli_train_args a;
    const char *query_spec = NULL, *lrs_list = NULL, *rules_list = "left,mid,gl2";
    double tau = 0;
    int quiet = 0; /* accepted as by train; convergence shows no progress */
    cli_train_args_init(&a, 0);
    const cli_opt opts[] = {CLI_INCLUDE(a.opts), {"query", CLI_STR, &query_spec, NULL},
                            {"time", CLI_DOUBLE, &tau, NULL}, {"lrs", CLI_STR, &lrs_list, NULL},
                            {"rules", CLI_STR, &rules_list, NULL}, {"threads", CLI_THREADS, NULL, NULL},
                            {"quiet", CLI_FLAG, &quiet, NULL}, {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, conv_help, argc, argv, opts, NULL, 0);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!a.data) return cli_usage(cmd, "--data SPEC is required");
    if (!query_spec || !lrs_list || !(tau > 0)) return cli_usage(cmd, "--query, --lrs and a positive --time are required");
    double lrs[32];
    size_t nl = 0;
    pk_quad rules[16];
    size_t nr = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", lrs_list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (nl == 32) return cli_usage(cmd, "--lrs: at most 32 learning rates");
        if (cli_double(cmd, "--lrs", tok, &lrs[nl])) return EXIT_BAD_INPUT;
        if (!(lrs[nl] > 0)) return cli_usage(cmd, "--lrs: learning rates must be positive");
        nl++;
    }
    if (nl < 2) return cli_usage(cmd, "--lrs: give at least two learning rates to fit a slope");
    qsort(lrs, nl, sizeof *lrs, pk_cmp_double);
    snprintf(buf, sizeof buf, "%s", rules_list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (nr == 16) return cli_usage(cmd, "--rules: at most 16 rules");
        if (pk_quad_parse(tok, &rules[nr++])) return cli_error(cmd, PK_ERR_INPUT);
    }
    char tmpl[] = "/tmp/pathkernel-convergence-XXXXXX";
    const char *base = a.to.out_dir;
    if (!base && !(base = mkdtemp(tmpl))) { perror("pathkernel convergence: mkdtemp"); return EXIT_FAIL; }
    /* A failure keeps nothing this command made in --out DIR: the run
     * directories it created are removed, and DIR too when it created DIR;
     * what was there before (an lr-* directory included) is left alone. */
    int existed = cli_dir_exists(base), made[32] = {0};
    pk_status ms = pk_mkdirs(base);
    if (ms) return cli_error(cmd, ms);
    pk_data train = {0}, test = {0}, query = {0};
    double *mean = NULL, *sd = NULL;
    double err[32][16], rel[32][16];
    size_t steps[32];
    char name[32][64];
    pk_status s = cli_load_train_data(&a, &train, &test, &mean, &sd);
    if (!s) {
        pk_load_opts ql = pk_load_opts_defaults();   /* the queries' labels are not needed */
        ql.class_names = (const char *const *)train.class_names;
        ql.n_class_names = train.n_class_names;
        ql.allow_unseen = 1;
        int csv = pk_data_spec_is_csv(query_spec);
        ql.sep = csv ? a.lo.sep : 0;
        ql.label_column = csv ? a.lo.label_column : NULL;
        s = pk_data_load(query_spec, &ql, &query);
        if (!s) cli_data_warning(cmd, &query);
        if (!s && query.d != train.d)
            s = pk_fail(PK_ERR_INPUT, "%s: %zu features per example, the training data have %zu", query_spec, query.d, train.d);
        if (!s && mean) pk_data_standardize(&query, mean, sd);
    }
    for (size_t i = 0; !s && i < nl; i++) {
        snprintf(name[i], sizeof name[i], "lr-%.6g", lrs[i]);
        char *dir = pk_path_join(base, name[i]);
        if (!dir) { s = PK_ERR_NOMEM; break; }
        made[i] = !cli_dir_exists(dir);
        pk_train_opts to = a.to;
        to.optim.lr = lrs[i];
        to.steps = steps[i] = (size_t)llround(tau / lrs[i]);
        if (!to.steps) s = pk_fail(PK_ERR_INPUT, "--time %g / lr %g rounds to 0 steps", tau, lrs[i]);
        to.out_dir = dir;
        to.keep = to.steps; /* only the ends are needed: explain replays */
        if (!s) s = pk_train(&train, &to, NULL, NULL);
        pk_run *run = NULL;
        if (!s) s = pk_run_open(dir, &run);
        if (!s) s = pk_run_attach_data(run, &train);
        for (size_t r = 0; !s && r < nr; r++) {
            pk_explain_opts eo = pk_explain_opts_defaults();
            eo.quad = rules[r];
            eo.want_contrib = 0;
            eo.want_kernel = 0;
            pk_explain e;
            s = pk_run_explain(run, query.x, query.n, &eo, &e);
            if (!s) { err[i][r] = e.max_abs_err; rel[i][r] = e.max_rel_err; pk_explain_free(&e); }
        }
        pk_run_close(run);
        free(dir);
    }
    if (!s) {
        /* least-squares slope of log(err) on log(lr), over the errors above the rounding floor */
        printf("%-10s %8s", "lr", "steps");
        for (size_t r = 0; r < nr; r++) printf("  %12s", rules[r].name);
        printf("   (max |pred - bias - sum contrib|)\n");
        for (size_t i = 0; i < nl; i++) {
            printf("%-10g %8zu", lrs[i], steps[i]);
            for (size_t r = 0; r < nr; r++) printf("  %12.4e", err[i][r]);
            printf("\n");
        }
        printf("%-19s", "slope");
        char *csvp = pk_path_join(base, "convergence.csv");
        pk_atomic f;
        s = csvp ? pk_atomic_open(&f, csvp) : PK_ERR_NOMEM;
        if (!s) {
            fprintf(f.f, "lr,steps,rule,max_abs_err,max_rel_err\n");
            for (size_t i = 0; i < nl; i++)
                for (size_t r = 0; r < nr; r++)
                    fprintf(f.f, "%.17g,%zu,%s,%.17g,%.17g\n", lrs[i], steps[i], rules[r].name, err[i][r], rel[i][r]);
        }
        for (size_t r = 0; r < nr; r++) {
            double sx = 0, sy = 0, sxx = 0, sxy = 0, n = 0;
            for (size_t i = 0; i < nl; i++) {
                if (!(err[i][r] > 1e-13)) continue; /* at the floating-point floor: no information */
                double x = log(lrs[i]), y = log(err[i][r]);
                sx += x; sy += y; sxx += x * x; sxy += x * y; n++;
            }
            double slope = n >= 2 ? (n * sxy - sx * sy) / (n * sxx - sx * sx) : NAN;
            printf("  %12.3f", slope);
            if (!s) fprintf(f.f, "slope,,%s,%.17g,\n", rules[r].name, slope);
        }
        printf("\n");
        if (!s) s = pk_atomic_commit(&f);
        if (!s && a.to.out_dir) printf("wrote %s\n", csvp);
        free(csvp);
    }
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    if (!a.to.out_dir) { /* temporary runs: remove them */
        if (cli_remove_tree(base) != 0) fprintf(stderr, "pathkernel %s: could not remove %s\n", cmd, base);
    } else if (s) {
        for (size_t i = 0; i < nl; i++) {
            char *dir = made[i] ? pk_path_join(base, name[i]) : NULL;
            if (dir) cli_remove_tree(dir);
            free(dir);
        }
        cli_drop_new_dir(base, existed);
    }
    pk_data_free(&train); pk_data_free(&test); pk_data_free(&query);
    free(mean); free(sd);
    cli_train_args_free(&a);
    return rc;
}
