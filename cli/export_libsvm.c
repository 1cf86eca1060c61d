/* export_libsvm.c -- `pathkernel export-libsvm`: a run's kernels in
 * LIBSVM's precomputed format, for the fixed-kernel machines of MATH.md
 * section 7. */
#include "cli.h"

int cmd_export_libsvm(int argc, char **argv)
{
    const char *cmd = "export-libsvm";
    static const char *help =
        "usage: pathkernel export-libsvm RUN --kernel KIND [--query SPEC] --out DIR\n\n"
        "Writes a run's kernel in LIBSVM's precomputed format, for `svm-train -t 4` and `svm-predict`:\n"
        "DIR/train.svm (training x training) and, with --query, DIR/query.svm (queries x training).\n"
        "  --kernel KIND   path (the paper's path kernel, traced over outputs; symmetric, positive\n"
        "                  semi-definite), tangent-init, tangent-final, rbf (median heuristic), ntk (infinite\n"
        "                  width; relu or erf runs), path-batch (explain's contribution kernel, with the\n"
        "                  batch indicator: neither symmetric nor positive semi-definite)\n"
        "  --query SPEC    queries (the run's standardisation is applied); their targets are the labels\n"
        "  --first N       use the first N queries [all]\n"
        "  --quad R        quadrature rule of the path kernels [gl2]\n"
        "  --threads N     threads [all cores]\n";
    const char *query = NULL, *out = NULL, *kind_name = NULL, *dir;
    pk_quad quad;
    pk_quad_parse("gl2", &quad);
    pk_load_opts lo = pk_load_opts_defaults();
    const cli_opt opts[] = {{"kernel", CLI_STR, &kind_name, NULL}, {"query", CLI_STR, &query, NULL},
                            {"first", CLI_SIZE, &lo.first, NULL}, {"quad", CLI_QUAD, &quad, NULL},
                            {"out", CLI_STR, &out, NULL}, {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    pk_kernel_kind kind;
    int have_kind = kind_name != NULL;
    if (have_kind && pk_kernel_kind_parse(kind_name, &kind)) return cli_error(cmd, PK_ERR_INPUT);
    if (!have_kind || !out) return cli_usage(cmd, "--kernel and --out are required");
    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    const pk_data *train = NULL;
    pk_data q = {0};
    double *K = NULL;
    s = pk_run_train_data(run, &train);
    if (!s && train->ty != 1) s = pk_fail(PK_ERR_INPUT, "%s: LIBSVM needs one target column, the run has %zu", dir, train->ty);
    int existed = cli_dir_exists(out);
    if (!s) s = pk_mkdirs(out);
    pk_group_begin(); /* train.svm and query.svm, or neither */
    size_t N = train ? train->n : 0, rows[2] = {0, 0};
    for (int part = 0; !s && part < (query ? 2 : 1); part++) {
        if (part) s = pk_run_load_data(run, query, &lo, &q);
        const pk_data *X = part ? &q : train;
        if (!s && !(K = pk_alloc(X->n, N * sizeof *K))) s = PK_ERR_NOMEM;
        if (!s) s = pk_run_kernel(run, kind, X->x, X->n, &quad, K);
        char *p = s ? NULL : pk_path_join(out, part ? "query.svm" : "train.svm");
        if (!s) s = p ? pk_libsvm_write(p, K, X->n, N, X->y) : PK_ERR_NOMEM;
        if (!s) rows[part] = X->n;
        free(p);
        free(K);
        K = NULL;
    }
    s = pk_group_end(s);
    if (s) cli_drop_new_dir(out, existed);
    for (int part = 0; !s && part < (query ? 2 : 1); part++) /* once both are in place */
        printf("wrote %s/%s: %s kernel, %zu x %zu\n", out, part ? "query.svm" : "train.svm", pk_kernel_kind_name(kind),
               rows[part], N);
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    pk_data_free(&q);
    pk_run_close(run);
    return rc;
}
