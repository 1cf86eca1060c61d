/* explain.c -- `pathkernel explain` and `verify`: the path-kernel
 * representation of a run, written out (explain) or only checked (verify). */
#include "cli.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

/* Options of explain and verify. */
typedef struct explain_args {
    const char *run, *query, *out;
    pk_load_opts load;
    pk_explain_opts opts;
    double tol;
    int json;
} explain_args;

static int parse_explain(const char *cmd, const char *help, int argc, char **argv, explain_args *a)
{
    memset(a, 0, sizeof *a);
    a->load = pk_load_opts_defaults();
    a->opts = pk_explain_opts_defaults();
    a->tol = 1e-8;
    int no_kernel = 0;
    const char *kernel = "path", *target = "outputs";
    const cli_opt opts[] = {{"query", CLI_STR, &a->query, NULL}, {"quad", CLI_QUAD, &a->opts.quad, NULL},
                            {"kernel", CLI_STR, &kernel, NULL}, {"target", CLI_STR, &target, NULL},
                            {"mode", CLI_KMODE, &a->opts.mode, NULL}, {"no-kernel", CLI_FLAG, &no_kernel, NULL},
                            {"block", CLI_SIZE, &a->opts.block, NULL}, {"mem", CLI_MIB, &a->opts.mem_limit, NULL},
                            {"out", CLI_STR, &a->out, NULL}, {"tol", CLI_DOUBLE, &a->tol, NULL},
                            {"json", CLI_FLAG, &a->json, NULL}, CLI_SELECT(a->load),
                            {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, &a->run, 1);
    if (rc) return rc;
    if (pk_target_parse(target, &a->opts.target)) return cli_usage(cmd, "--target %s: %s", target, pk_last_error());
    /* the kernel belongs to the outputs: any other target writes none */
    if (no_kernel || a->opts.target.kind != PK_TARGET_OUTPUTS) a->opts.want_kernel = 0;
    if (!strcmp(kernel, "path-batch")) a->opts.batch_kernel = 1;
    else if (strcmp(kernel, "path")) return cli_usage(cmd, "--kernel %s: use path or path-batch", kernel);
    if (!a->query) return cli_usage(cmd, "--query SPEC is required");
    return 0;
}

/* explain's outputs, written group after group into .npy files. */
typedef struct explain_files {
    pk_npy_stream f[6];   /* pred, bias, regularisation, contrib, kernel, coef */
    int open[6];
} explain_files;

static const char *const explain_names[6] = {"pred.npy", "bias.npy", "regularisation.npy", "contrib.npy", "kernel.npy", "coef.npy"};

static pk_status explain_files_open(explain_files *w, const char *dir, pk_run *run, size_t Q, const pk_explain_opts *o)
{
    memset(w, 0, sizeof *w);
    const pk_model *m = pk_run_model(run);
    size_t N = pk_run_n_train(run), C = pk_target_columns(&o->target, pk_model_n_outputs(m));
    int full = o->want_kernel && o->mode == PK_KMODE_FULL && C > 1;
    size_t s2[2] = {Q, C}, s3[3] = {Q, N, C}, s4[4] = {Q, N, C, C};
    const size_t *shape[6] = {s2, s2, s2, s3, full ? s4 : s3, s3};
    size_t ndim[6] = {2, 2, 2, 3, full ? 4 : 2, 2};
    int want[6] = {1, 1, 1, o->want_contrib, o->want_kernel, o->want_kernel && o->want_contrib && C == 1};
    pk_status s = PK_OK;
    for (int k = 0; k < 6 && !s; k++) {
        if (!want[k]) continue;
        char *p = pk_path_join(dir, explain_names[k]);
        s = p ? pk_npy_stream_open(&w->f[k], p, 0, ndim[k], shape[k]) : PK_ERR_NOMEM;
        free(p);
        w->open[k] = !s;
    }
    return s;
}

static pk_status explain_files_write(explain_files *w, const pk_explain *e)
{
    size_t Q = e->Q, N = e->N, C = e->C, kr = e->mode == PK_KMODE_FULL && C > 1 ? C : 1;
    const double *rows[5] = {e->pred, e->bias, e->regularisation, e->contrib, e->kernel};
    size_t len[5] = {Q * C, Q * C, Q * C, Q * N * C, Q * N * kr * kr};
    for (int k = 0; k < 5; k++)
        if (w->open[k]) pk_npy_stream_write(&w->f[k], rows[k], len[k]);
    if (w->open[5]) {
        double *coef = pk_alloc(Q * N, sizeof *coef);
        if (!coef) return PK_ERR_NOMEM;
        for (size_t i = 0; i < Q * N; i++) coef[i] = e->kernel[i] != 0.0 ? e->contrib[i] / e->kernel[i] : NAN;
        pk_npy_stream_write(&w->f[5], coef, Q * N);
        free(coef);
    }
    return PK_OK;
}

/* Commit every file, or (on failure, or when one fails) abort the rest. */
static pk_status explain_files_close(explain_files *w, pk_status s)
{
    for (int k = 0; k < 6; k++) {
        if (!w->open[k]) continue;
        if (!s) s = pk_npy_stream_commit(&w->f[k]);
        else pk_npy_stream_abort(&w->f[k]);
        w->open[k] = 0;
    }
    return s;
}

/* Open the run, load the queries, and compute in groups of queries small
 * enough for the memory budget (one group when everything fits): each group
 * is one replay of the trajectory, its rows written to the files `w` (explain;
 * NULL for verify) and freed. *sum gets the totals (no arrays), *max_reg the
 * largest |regularisation|. */
static int run_explain(const char *cmd, explain_args *a, pk_run **run, explain_files *w, pk_explain *sum,
                       double *max_reg)
{
    memset(sum, 0, sizeof *sum);
    if (w) memset(w, 0, sizeof *w);
    *max_reg = 0;
    pk_status s = pk_run_open(a->run, run);
    if (s) return cli_error(cmd, s);
    pk_data q = {0};
    cli_progress pr = cli_progress_start(cmd);
    int labels = pk_target_needs_labels(&a->opts.target);
    a->load.allow_unseen = !labels;   /* labels are needed by the label, margin and loss targets only */
    s = pk_run_load_data(*run, a->query, &a->load, &q);
    if (!s) cli_data_warning(cmd, &q);
    if (!s && labels) s = cli_query_labels(*run, a->query, &q, &a->opts.target);
    size_t group = q.n ? q.n : 1, limit = pk_memory_budget(a->opts.mem_limit);
    while (!s && group > 1 && pk_run_explain_bytes(*run, group, &a->opts) > limit) group = (group + 1) / 2;
    if (!s && !a->json) { /* the plan, before the work (too large a plan is refused by pk_run_explain) */
        printf("%s: %s run, %zu queries x %zu training examples: planned memory %.1f MiB", cmd,
               pk_optim_name(pk_run_optim(*run)->kind), q.n, pk_run_n_train(*run),
               (double)pk_run_explain_bytes(*run, group, &a->opts) / 1048576.0);
        if (group < q.n) printf(" in %zu groups of %zu queries, each a replay of the run, written as they finish",
                                (q.n + group - 1) / group, group);
        printf("\n");
    }
    fflush(stdout);
    if (!s && w) s = explain_files_open(w, a->out, *run, q.n, &a->opts);
    pr.Q = q.n;
    pr.groups = (q.n + group - 1) / group;
    pr.show = !a->json && isatty(2);
    a->opts.progress = cli_progress_step;
    a->opts.ctx = &pr;
    cli_catch_stop();
    double den = 0, pieces = 0;
    for (size_t q0 = 0; !s && q0 < q.n; q0 += group) {
        size_t n = q.n - q0 < group ? q.n - q0 : group;
        pk_explain e;
        a->opts.y = labels ? q.y + q0 * q.ty : NULL;
        s = pk_run_explain(*run, q.x + q0 * q.d, n, &a->opts, &e);
        if (s) break;
        if (w) s = explain_files_write(w, &e);
        for (size_t i = 0; i < n * e.C; i++) den = fmax(den, fabs(e.pred[i] - e.bias[i]));
        sum->max_abs_err = isnan(e.max_abs_err) || isnan(sum->max_abs_err) ? NAN : fmax(sum->max_abs_err, e.max_abs_err);
        *max_reg = fmax(*max_reg, cli_max_abs(e.regularisation, n * e.C));
        sum->N = e.N; sum->C = e.C; sum->mode = e.mode; sum->steps = e.steps;
        pieces += e.pieces * (double)n;
        sum->piece_nodes = e.piece_nodes;
        memcpy(sum->quad, e.quad, sizeof sum->quad);
        pk_explain_free(&e);
        cli_progress_group_done(&pr, n);
    }
    cli_progress_end(&pr);
    sum->Q = q.n;
    sum->pieces = q.n ? pieces / (double)q.n : 0;
    sum->max_rel_err = den > 0 ? sum->max_abs_err / den : sum->max_abs_err;
    sum->seconds = cli_progress_seconds(&pr);
    pk_data_free(&q);
    if (w) s = explain_files_close(w, s);
    if (s == PK_ERR_STOPPED) {
        char why[256];
        snprintf(why, sizeof why, "%s", pk_last_error());
        s = pk_fail(s, "%s; nothing was written", why);
    }
    if (s) { pk_run_close(*run); *run = NULL; return cli_error(cmd, s); }
    return 0;
}

int cmd_explain(int argc, char **argv)
{
    const char *cmd = "explain";
    static const char *help =
        "usage: pathkernel explain RUN --query SPEC --out DIR [options]\n\n"
        "Replays the run and writes, for every query x and training example i (MATH.md section 3):\n"
        "  pred.npy (Q, C)       f(x; w_T)            bias.npy (Q, C)   b(x) = f(x; w_0)\n"
        "  contrib.npy (Q, N, C) phi_i(x), exact contributions: pred = bias + sum_i contrib + quadrature error\n"
        "                        (with --target other than outputs, C = 1 and pred, bias, contrib are the target's;\n"
        "                        no kernel or coef)\n"
        "  kernel.npy            path kernel K^p(x, x_i): (Q, N) for one output or --mode trace, (Q, N, C, C) full\n"
        "  coef.npy (Q, N)       a_i(x) = phi_i(x) / K^p(x, x_i) (one output only; NaN where the kernel is 0),\n"
        "                        so that pred = bias + sum_i a_i(x) K^p(x, x_i) + quadrature error\n"
        "  regularisation.npy (Q, C)  what weight decay moved, owned by no example (MATH.md section 5):\n"
        "                        pred = bias + sum_i contrib + regularisation + quadrature error (0 without decay)\n"
        "  summary.json          max_abs_err, max_rel_err, max_abs_regularisation, quad, steps, n_train,\n"
        "                        n_query, seconds\n"
        "Runs of every optimiser are exact: gd, sgd, momentum, adam, adamw, with or without weight decay\n"
        "(momentum/adam/adamw/decay keep a dense C x P matrix per query in a backward sweep).\n\n"
        "  --query SPEC      query inputs (the run's standardisation is applied)\n"
        "  --first N, --random N, --data-seed S   select queries [all]\n"
        CLI_CSV_HELP_RUN
        "  --quad R          left (the paper's kernel), mid, gl1..gl8 (Gauss-Legendre), exact (relu,\n"
        "                    leaky_relu, identity, pooling: each step split at the kinks, exact to rounding;\n"
        "                    exact:K for K nodes a piece) [gl2]\n"
        "  --target T        what is decomposed (MATH.md section 11): outputs (every output), output:C,\n"
        "                    label (the logit of the query's label), margin (label logit minus the largest\n"
        "                    other), loss (the query's loss under the run's loss); every query-side backward\n"
        "                    pass is seeded with dg/df at its quadrature node [outputs]\n"
        "  --mode M          kernel as trace over outputs or full C x C blocks [trace]\n"
        "  --kernel K        path: the paper's path kernel, sum_t eta_t sum_q c_q K^g at w_t + s_q D_t\n"
        "                    (symmetric, positive semi-definite; a_i(x) carries the batch indicator);\n"
        "                    path-batch: the contribution kernel, the batch indicator inside the kernel\n"
        "                    (MATH.md section 3) [path]\n"
        "  --no-kernel       skip the path kernel (and coef)\n"
        "  --block N         queries per block [chosen to fit --mem]\n"
        "  --mem MIB         memory budget for outputs and workspace [3/4 of free memory]\n"
        "  --threads N       threads [all cores]\n";
    explain_args a;
    int rc = parse_explain(cmd, help, argc, argv, &a);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!a.out) return cli_usage(cmd, "--out DIR is required");
    int existed = cli_dir_exists(a.out);
    pk_status ms = pk_mkdirs(a.out);
    if (ms) return cli_error(cmd, ms);
    pk_run *run;
    pk_explain e;
    double max_reg;
    explain_files w;
    pk_group_begin(); /* every file or none: all are renamed into place after summary.json */
    if ((rc = run_explain(cmd, &a, &run, &w, &e, &max_reg))) {
        pk_group_end(PK_ERR_IO);
        cli_drop_new_dir(a.out, existed);
        return rc;
    }
    char *text = cli_summary_json(&e, max_reg), *p = pk_path_join(a.out, "summary.json");
    pk_status s = text && p ? pk_file_write(p, text, strlen(text)) : PK_ERR_NOMEM;
    free(text);
    free(p);
    s = pk_group_end(s);
    if (s) cli_drop_new_dir(a.out, existed);
    if (!s)
        printf("explained %zu queries by %zu training examples over %zu steps (%s) in %.2f s: "
               "max |pred - bias - sum contrib - regularisation| = %.3g (relative %.3g); wrote %s\n",
               e.Q, e.N, e.steps, e.quad, e.seconds, e.max_abs_err, e.max_rel_err, a.out);
    if (!s && e.piece_nodes) {
        char why[768];
        printf("%s\n", pk_quad_why(&a.opts.quad, pk_run_model(run), e.pieces, why, sizeof why));
    }
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    pk_run_close(run);
    return rc;
}

int cmd_verify(int argc, char **argv)
{
    const char *cmd = "verify";
    static const char *help =
        "usage: pathkernel verify RUN --query SPEC [--quad R] [--tol X] [--json]\n\n"
        "Computes what explain computes without writing it, prints the summary, and exits 0 when\n"
        "max_rel_err <= tol, 1 otherwise.\n"
        "  --quad R    left, mid, gl1..gl8, exact (piecewise-linear networks: split at the kinks) [gl2]\n"
        "  --tol X     tolerance on max_rel_err [1e-8]\n"
        "  --json      print the summary as JSON (the keys of summary.json)\n"
        "  --first N, --random N, --data-seed S, --block N, --mem MIB, --threads N   as for explain\n";
    explain_args a;
    int rc = parse_explain(cmd, help, argc, argv, &a);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    a.opts.want_contrib = 0;
    a.opts.want_kernel = 0;
    pk_run *run;
    pk_explain e;
    double max_reg;
    if ((rc = run_explain(cmd, &a, &run, NULL, &e, &max_reg))) return rc;
    int ok = e.max_rel_err <= a.tol;
    if (a.json) {
        char *text = cli_summary_json(&e, max_reg);
        if (text) puts(text);
        free(text);
    } else {
        char why[768];
        printf("%s: %zu queries, %zu training examples, %zu steps, %s: max_abs_err %.3g, max_rel_err %.3g "
               "(tol %g): %s\n%s\n", a.run, e.Q, e.N, e.steps, e.quad, e.max_abs_err, e.max_rel_err, a.tol,
               ok ? "ok" : "FAILED", pk_quad_why(&a.opts.quad, pk_run_model(run), e.pieces, why, sizeof why));
        size_t at;
        double step_rel = pk_run_step_residual(run, &at);
        if (pk_run_recorded(run))
            printf("recorded from %s: pathkernel's optimiser reproduces every recorded step to %.3g of the step "
                   "(largest at step %zu); max_rel_err includes what the recorded steps differ by\n",
                   pk_run_recorded(run), step_rel, at);
    }
    pk_run_close(run);
    return ok ? EXIT_OK : EXIT_FAIL;
}
