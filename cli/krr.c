/* krr.c -- `pathkernel krr`: kernel ridge regression on a kernel in .npy
 * files, one of the fixed-kernel machines of MATH.md section 7. */
#include "cli.h"

#include <math.h>

int cmd_krr(int argc, char **argv)
{
    const char *cmd = "krr";
    static const char *help =
        "usage: pathkernel krr --kernel K.npy --targets Y.npy [--ridge R] [--query-kernel KQ.npy] --out DIR\n\n"
        "Kernel ridge regression alpha = (K + R I)^-1 Y by Cholesky (LAPACK). A K + R I that is not\n"
        "positive definite is a failure (exit 1), never worked around.\n"
        "  --kernel FILE        (N, N) symmetric training kernel (to 1e-10 of its largest entry)\n"
        "  --targets FILE       (N,) or (N, C) targets (one-hot columns for classes)\n"
        "  --ridge R            ridge [1e-8]\n"
        "  --query-kernel FILE  (Q, N) kernel of queries against the training set: writes pred.npy (Q, C)\n"
        "  --out DIR            alpha.npy (N, C) [, pred.npy]\n";
    const char *kp = NULL, *yp = NULL, *kqp = NULL, *out = NULL;
    double ridge = 1e-8;
    const cli_opt opts[] = {{"kernel", CLI_STR, &kp, NULL}, {"targets", CLI_STR, &yp, NULL},
                            {"ridge", CLI_DOUBLE, &ridge, NULL}, {"query-kernel", CLI_STR, &kqp, NULL},
                            {"out", CLI_STR, &out, NULL}, {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, NULL, 0);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!kp || !yp || !out) return cli_usage(cmd, "--kernel, --targets and --out are required");
    double *K = NULL, *Y = NULL, *KQ = NULL, *alpha = NULL, *pred = NULL;
    size_t kn, ks[8], yn, ys[8], qn, qs[8];
    pk_status s = pk_npy_read(kp, &K, &kn, ks);
    if (!s && (kn != 2 || ks[0] != ks[1])) s = pk_fail(PK_ERR_INPUT, "%s: expected a square (N, N) kernel", kp);
    if (!s) { /* Cholesky reads one triangle: a kernel that is not symmetric would be fitted as another one */
        size_t n = ks[0], bi = 0, bj = 0;
        double big = 0, gap = 0;
        for (size_t i = 0; i < n * n; i++) big = fmax(big, fabs(K[i]));
        for (size_t i = 0; i < n; i++)
            for (size_t j = i + 1; j < n; j++)
                if (!(fabs(K[i * n + j] - K[j * n + i]) <= gap)) { gap = fabs(K[i * n + j] - K[j * n + i]); bi = i; bj = j; }
        if (!(gap <= 1e-10 * big))
            s = pk_fail(PK_ERR_INPUT, "%s: the kernel is not symmetric (K[%zu,%zu] - K[%zu,%zu] = %.3g, largest |K| %.3g); "
                        "kernel ridge regression needs a symmetric one (`pathkernel kernel --at path` writes the "
                        "path kernel, which is; --at path-batch is not)", kp, bi, bj, bj, bi, gap, big);
    }
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
    int existed = cli_dir_exists(out);
    if (!s) s = pk_mkdirs(out);
    pk_group_begin(); /* alpha.npy and pred.npy, or neither */
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
            pk_krr_predict(KQ, qs[0], N, alpha, C, pred);
            char *p = pk_path_join(out, "pred.npy");
            size_t shape[2] = {qs[0], C};
            s = p ? pk_npy_write(p, pred, 2, shape) : PK_ERR_NOMEM;
            free(p);
        }
    }
    s = pk_group_end(s);
    if (s) cli_drop_new_dir(out, existed);
    if (!s) printf("kernel ridge regression on %zu examples, %zu outputs, ridge %g: wrote %s\n", N, C, ridge, out);
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(K); free(Y); free(KQ); free(alpha); free(pred);
    return rc;
}
