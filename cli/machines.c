/* machines.c -- `pathkernel krr` and `pathkernel export-libsvm`: the
 * fixed-kernel machines of MATH.md section 7. */
#include "cli.h"
#include "internal.h"

#include <string.h>

int cmd_krr(int argc, char **argv)
{
    const char *cmd = "krr";
    static const char *help =
        "usage: pathkernel krr --kernel K.npy --targets Y.npy [--ridge R] [--query-kernel KQ.npy] --out DIR\n\n"
        "Kernel ridge regression alpha = (K + R I)^-1 Y by Cholesky (LAPACK).\n"
        "  --kernel FILE        (N, N) symmetric training kernel\n"
        "  --targets FILE       (N,) or (N, C) targets (one-hot columns for classes)\n"
        "  --ridge R            ridge [1e-8]\n"
        "  --query-kernel FILE  (Q, N) kernel of queries against the training set: writes pred.npy (Q, C)\n"
        "  --out DIR            alpha.npy (N, C) [, pred.npy]\n";
    enum { O_K = 256, O_Y, O_RIDGE, O_KQ, O_OUT, O_THREADS, O_HELP };
    static const struct option opts[] = {{"kernel", 1, 0, O_K}, {"targets", 1, 0, O_Y}, {"ridge", 1, 0, O_RIDGE},
                                         {"query-kernel", 1, 0, O_KQ}, {"out", 1, 0, O_OUT},
                                         {"threads", 1, 0, O_THREADS}, {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    const char *kp = NULL, *yp = NULL, *kqp = NULL, *out = NULL;
    double ridge = 1e-8;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_K: kp = optarg; break;
        case O_Y: yp = optarg; break;
        case O_RIDGE: bad = cli_double(cmd, "--ridge", optarg, &ridge); break;
        case O_KQ: kqp = optarg; break;
        case O_OUT: out = optarg; break;
        case O_THREADS: bad = cli_threads(cmd, optarg); break;
        case O_HELP: fputs(help, stdout); return EXIT_OK;
        default: return cli_usage(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
        if (bad) return EXIT_BAD_INPUT;
    }
    if (optind < argc) return cli_usage(cmd, "unexpected argument '%s'", argv[optind]);
    if (!kp || !yp || !out) return cli_usage(cmd, "--kernel, --targets and --out are required");
    double *K = NULL, *Y = NULL, *KQ = NULL, *alpha = NULL, *pred = NULL;
    size_t kn, ks[8], yn, ys[8], qn, qs[8];
    pk_status s = pk_npy_read(kp, &K, &kn, ks);
    if (!s && (kn != 2 || ks[0] != ks[1])) s = pk_fail(PK_ERR_INPUT, "%s: expected a square (N, N) kernel", kp);
    if (!s) s = pk_npy_read(yp, &Y, &yn, ys);
    size_t N = s ? 0 : ks[0], C = !s && yn == 2 ? ys[1] : 1;
    if (!s && (yn < 1 || yn > 2 || ys[0] != N))
        s = pk_fail(PK_ERR_INPUT, "%s: expected (%zu,) or (%zu, C) targets", yp, N, N);
    if (!s && kqp) {
        s = pk_npy_read(kqp, &KQ, &qn, qs);
        if (!s && (qn != 2 || qs[1] != N)) s = pk_fail(PK_ERR_INPUT, "%s: expected a (Q, %zu) query kernel", kqp, N);
    }
    if (!s && !(alpha = pk_alloc(N, C * sizeof *alpha))) s = PK_ERR_NOMEM;
    if (!s) s = pk_krr_fit(K, N, Y, C, ridge, alpha);
    if (!s) s = pk_mkdirs(out);
    if (!s) {
        char *p = pk_path_join(out, "alpha.npy");
        size_t shape[2] = {N, C};
        s = p ? pk_npy_write(p, alpha, 2, shape) : PK_ERR_NOMEM;
        free(p);
    }
    if (!s && KQ) {
        pred = pk_alloc(qs[0], C * sizeof *pred);
        if (!pred) s = PK_ERR_NOMEM;
        else {
            pk_gemm(0, 0, qs[0], C, N, 1.0, KQ, N, alpha, C, 0.0, pred, C);
            char *p = pk_path_join(out, "pred.npy");
            size_t shape[2] = {qs[0], C};
            s = p ? pk_npy_write(p, pred, 2, shape) : PK_ERR_NOMEM;
            free(p);
        }
    }
    if (!s) printf("kernel ridge regression on %zu examples, %zu outputs, ridge %g: wrote %s\n", N, C, ridge, out);
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(K); free(Y); free(KQ); free(alpha); free(pred);
    return rc;
}

int cmd_export_libsvm(int argc, char **argv)
{
    const char *cmd = "export-libsvm";
    static const char *help =
        "usage: pathkernel export-libsvm RUN --kernel KIND [--query SPEC] --out DIR\n\n"
        "Writes a run's kernel in LIBSVM's precomputed format, for `svm-train -t 4` and `svm-predict`:\n"
        "DIR/train.svm (training x training) and, with --query, DIR/query.svm (queries x training).\n"
        "  --kernel KIND   path (traced over outputs), tangent-init, tangent-final, rbf (median heuristic),\n"
        "                  ntk (infinite width; relu or erf runs)\n"
        "  --query SPEC    queries (the run's standardisation is applied); their targets are the labels\n"
        "  --first N       use the first N queries [all]\n"
        "  --quad R        quadrature rule of the path kernel [gl2]\n"
        "  --threads N     threads [all cores]\n";
    enum { O_KIND = 256, O_QUERY, O_FIRST, O_QUAD, O_OUT, O_THREADS, O_HELP };
    static const struct option opts[] = {{"kernel", 1, 0, O_KIND}, {"query", 1, 0, O_QUERY}, {"first", 1, 0, O_FIRST},
                                         {"quad", 1, 0, O_QUAD}, {"out", 1, 0, O_OUT},
                                         {"threads", 1, 0, O_THREADS}, {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    const char *query = NULL, *out = NULL;
    pk_kernel_kind kind = PK_KERNEL_PATH;
    int have_kind = 0;
    pk_quad quad;
    pk_quad_parse("gl2", &quad);
    pk_load_opts lo = pk_load_opts_defaults();
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_KIND: if (pk_kernel_kind_parse(optarg, &kind)) return cli_error(cmd, PK_ERR_INPUT); have_kind = 1; break;
        case O_QUERY: query = optarg; break;
        case O_FIRST: bad = cli_size(cmd, "--first", optarg, &lo.first); break;
        case O_QUAD: if (pk_quad_parse(optarg, &quad)) return cli_error(cmd, PK_ERR_INPUT); break;
        case O_OUT: out = optarg; break;
        case O_THREADS: bad = cli_threads(cmd, optarg); break;
        case O_HELP: fputs(help, stdout); return EXIT_OK;
        default: return cli_usage(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
        if (bad) return EXIT_BAD_INPUT;
    }
    if (optind >= argc) return cli_usage(cmd, "the run directory is required");
    const char *dir = argv[optind++];
    if (optind < argc) return cli_usage(cmd, "unexpected argument '%s'", argv[optind]);
    if (!have_kind || !out) return cli_usage(cmd, "--kernel and --out are required");
    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    const pk_data *train = NULL;
    pk_data q = {0};
    double *K = NULL;
    s = pk_run_train(run, &train);
    if (!s && train->ty != 1) s = pk_fail(PK_ERR_INPUT, "%s: LIBSVM needs one target column, the run has %zu", dir, train->ty);
    if (!s) s = pk_mkdirs(out);
    size_t N = train ? train->n : 0;
    for (int part = 0; !s && part < (query ? 2 : 1); part++) {
        if (part) s = pk_run_load_data(run, query, &lo, &q);
        const pk_data *X = part ? &q : train;
        if (!s && !(K = pk_alloc(X->n, N * sizeof *K))) s = PK_ERR_NOMEM;
        if (!s) s = pk_run_kernel(run, kind, X->x, X->n, &quad, K);
        char *p = s ? NULL : pk_path_join(out, part ? "query.svm" : "train.svm");
        if (!s) s = p ? pk_libsvm_write(p, K, X->n, N, X->y) : PK_ERR_NOMEM;
        if (!s) printf("wrote %s: %s kernel, %zu x %zu\n", p, pk_kernel_kind_name(kind), X->n, N);
        free(p);
        free(K);
        K = NULL;
    }
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    pk_data_free(&q);
    pk_run_close(run);
    return rc;
}
