/* compare.c -- `pathkernel compare`: the network beside fixed-kernel
 * machines on its own kernels (MATH.md section 7), and how far the tangent
 * kernel moves during training as the width grows. */
#define _XOPEN_SOURCE 700
#include "../cli.h"

#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

/* Targets as KRR regression targets (n, C): one-hot for classes. */
static double *krr_targets(pk_loss loss, const pk_data *d, size_t C)
{
    double *Y = pk_calloc(d->n, C * sizeof *Y);
    if (!Y) return NULL;
    for (size_t i = 0; i < d->n; i++)
        for (size_t c = 0; c < C; c++)
            Y[i * C + c] = loss == PK_LOSS_MSE ? d->y[i * d->ty + c]
                           : loss == PK_LOSS_LOGISTIC ? d->y[i]
                           : (size_t)d->y[i] == c;
    return Y;
}

/* Test metric of outputs f (n, C): accuracy for classes (logistic: f > 1/2
 * for KRR outputs fitted to 0/1, f > 0 for logits), mean squared error else. */
static double metric(pk_loss loss, const double *f, const pk_data *d, size_t C, int logits)
{
    if (loss == PK_LOSS_MSE) {
        double s = 0;
        for (size_t i = 0; i < d->n * C; i++) s += (f[i] - d->y[i]) * (f[i] - d->y[i]);
        return s / (double)(d->n * C);
    }
    size_t hit = 0;
    for (size_t i = 0; i < d->n; i++) {
        size_t pred = 0;
        if (loss == PK_LOSS_LOGISTIC) pred = f[i] > (logits ? 0.0 : 0.5);
        else
            for (size_t c = 1; c < C; c++) if (f[i * C + c] > f[i * C + pred]) pred = c;
        hit += (double)pred == d->y[i * d->ty];
    }
    return (double)hit / (double)d->n;
}

/* Kernel-target alignment <K, Y Y^T>_F / (|K|_F |Y Y^T|_F), Y (n, C). */
static double alignment(const double *K, const double *Y, size_t n, size_t C)
{
    double kyy = 0, kk = 0, yy = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double t = 0;
            for (size_t c = 0; c < C; c++) t += Y[i * C + c] * Y[j * C + c];
            kyy += K[i * n + j] * t;
            kk += K[i * n + j] * K[i * n + j];
            yy += t * t;
        }
    return kyy / sqrt(kk * yy);
}

/* Run svm-train or svm-predict with stdout and stderr on /dev/null (a
 * failure shows as n/a in the table; a failed command's stderr stays its one
 * line); 1 when it ran and exited 0. */
static int run_libsvm(char *const argv[])
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int st = -1, ok = 0;
    if (posix_spawn_file_actions_init(&fa)) return 0;
    if (!posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0) &&
        !posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0) &&
        posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ) == 0)
        ok = waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    posix_spawn_file_actions_destroy(&fa);
    return ok;
}

/* svm-train -t 4 and svm-predict on precomputed kernels, inside the caller's
 * output group: DIR/path-train.svm, path-test.svm, path.model and path.pred
 * appear with compare.csv or not at all. Returns the status of the command's
 * own writes (a failure of the command); *acc is NaN, with *why set, when
 * LIBSVM is missing or fails (the row is n/a). */
static pk_status libsvm_accuracy(const char *dir, const double *Ktr, const pk_data *train, const double *Kte,
                                 const pk_data *test, double cost, double *acc, const char **why)
{
    char *trp = pk_path_join(dir, "path-train.svm"), *tep = pk_path_join(dir, "path-test.svm");
    char *mp = pk_path_join(dir, "path.model"), *pp = pk_path_join(dir, "path.pred");
    pk_atomic model = {0}, pred = {0};
    char cbuf[32];
    snprintf(cbuf, sizeof cbuf, "%g", cost);
    *acc = NAN;
    *why = "svm-train/svm-predict not found or failed: apt-get install libsvm-tools";
    pk_status s = trp && tep && mp && pp ? PK_OK : PK_ERR_NOMEM;
    if (!s) s = pk_libsvm_write(trp, Ktr, train->n, train->n, train->y);
    if (!s) s = pk_libsvm_write(tep, Kte, test->n, train->n, test->y);
    /* the kernels wait under their temporary names until the group ends */
    const char *trt = s ? NULL : pk_group_pending(trp), *tet = s ? NULL : pk_group_pending(tep);
    if (!s && (!trt || !tet)) s = pk_fail(PK_ERR_INTERNAL, "%s: the LIBSVM files are not in an output group", dir);
    /* svm-train and svm-predict write the model and the predictions into the
     * temporary files of pk_atomic_open (nothing goes through model.f and
     * pred.f), and the commits put them into the group with the rest */
    if (!s) s = pk_atomic_open(&model, mp);
    if (!s) s = pk_atomic_open(&pred, pp);
    if (!s) {
        char *targv[] = {"svm-train", "-q", "-t", "4", "-c", cbuf, (char *)trt, model.tmp, NULL};
        char *pargv[] = {"svm-predict", "-q", (char *)tet, model.tmp, pred.tmp, NULL};
        if (run_libsvm(targv) && run_libsvm(pargv)) {
            FILE *f = fopen(pred.tmp, "r");
            size_t hit = 0, n = 0;
            double v;
            while (f && n < test->n && fscanf(f, "%lf", &v) == 1) hit += v == test->y[n++];
            if (f) fclose(f);
            if (n == test->n) { *acc = (double)hit / (double)n; *why = NULL; }
        }
        if (!*why) s = pk_atomic_commit(&model);
        if (!*why && !s) s = pk_atomic_commit(&pred);
    }
    pk_atomic_abort(&model); /* no-ops once committed */
    pk_atomic_abort(&pred);
    free(trp); free(tep); free(mp); free(pp);
    return s;
}

/* The architecture of m with every hidden width replaced by `width`:
 * mlp:64,32:tanh becomes mlp:W,W:tanh. */
static void widen(const pk_model *m, size_t width, char *buf, size_t len)
{
    char spec[256];
    pk_model_spec(m, spec, sizeof spec);
    const char *widths = !strncmp(spec, "mlp:", 4) ? spec + 4 : "", *act = strchr(widths, ':');
    size_t k = (size_t)snprintf(buf, len, "mlp:");
    for (const char *p = widths; act && p < act && k < len; p = strchr(p, ',') ? strchr(p, ',') + 1 : act)
        k += (size_t)snprintf(buf + k, len - k, "%s%zu", p > widths ? "," : "", width);
    if (k < len) snprintf(buf + k, len - k, ":%s", act ? act + 1 : "identity");
}

/* pk_train into to->out_dir, noted in made[] when this creates it; the
 * training time in *secs. */
static pk_status train_run(const pk_data *train, const pk_train_opts *to, char **made, size_t *nmade, double *secs)
{
    double t0 = pk_seconds();
    if (!cli_dir_exists(to->out_dir)) {
        size_t len = strlen(to->out_dir) + 1;
        if (!(made[*nmade] = pk_alloc(len, 1))) return PK_ERR_NOMEM;
        memcpy(made[*nmade], to->out_dir, len);
        (*nmade)++;
    }
    pk_status s = pk_train(train, to, NULL, NULL);
    *secs = pk_seconds() - t0;
    return s;
}

/* The work of `compare` once its data are loaded: the runs and compare.csv
 * (and the LIBSVM files) in base. */
static int compare(const char *cmd, const pk_train_opts *to_in, const pk_data *train, const pk_data *test,
                   const char *widths, double ridge, double svm_c, const char *base)
{
    /* The runs (base/run, base/width-W) are trained first: a run's files are
     * placed as training goes, so they cannot join an output group. Then
     * compare.csv and the LIBSVM files are written as one group. A failure
     * removes the run directories this command created; whatever base held
     * before is left as it was. */
    enum { MAXW = 64 };
    pk_train_opts to = *to_in;
    char *rundir = pk_path_join(base, "run"), *csvp = pk_path_join(base, "compare.csv");
    char *made[MAXW + 1];
    size_t nmade = 0, wl[MAXW], nw = 0, N = train->n, M = test->n;
    double net_secs = 0, wsecs[MAXW];
    pk_run *run = NULL;
    pk_status s = (!rundir || !csvp) ? PK_ERR_NOMEM : PK_OK;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", widths ? widths : "");
    for (char *tok = strtok(buf, ","); tok && !s; tok = strtok(NULL, ",")) {
        if (nw == MAXW) s = pk_fail(PK_ERR_INPUT, "--widths: at most %d widths", MAXW);
        else if (cli_parse_size(tok, &wl[nw]) || !wl[nw]) s = pk_fail(PK_ERR_INPUT, "--widths: '%s' is not a positive integer", tok);
        else nw++;
    }
    to.out_dir = rundir;
    if (!s) s = train_run(train, &to, made, &nmade, &net_secs);
    if (!s) s = pk_run_open(rundir, &run);
    if (!s) s = pk_run_attach_data(run, train);
    const pk_model *m = s ? NULL : pk_run_model(run);
    for (size_t k = 0; !s && k < nw; k++) {
        char spec[128], name[64];
        widen(m, wl[k], spec, sizeof spec);
        snprintf(name, sizeof name, "width-%zu", wl[k]);
        char *wd = pk_path_join(base, name);
        pk_train_opts tw = to;
        tw.model = spec;
        tw.out_dir = wd;
        tw.keep = to.steps;
        s = wd ? train_run(train, &tw, made, &nmade, &wsecs[k]) : PK_ERR_NOMEM;
        free(wd);
    }
    if (s) goto done;
    size_t C = pk_model_n_outputs(m);
    pk_loss loss = pk_run_loss(run);
    const char *mname = loss == PK_LOSS_MSE ? "test mse" : "test accuracy";
    double *w = pk_alloc(pk_model_n_params(m), sizeof *w), *f = pk_alloc(M, C * sizeof *f);
    double *Ktr = pk_alloc(N, N * sizeof *Ktr), *Kte = pk_alloc(M, N * sizeof *Kte);
    double *Y = krr_targets(loss, train, C), *alpha = pk_alloc(N, C * sizeof *alpha);
    double *Kpath_tr = NULL, *Kpath_te = NULL, *KT = NULL;
    pk_atomic csv = {0};
    pk_group_begin(); /* compare.csv and the LIBSVM files, or none of them */
    double t0 = pk_seconds();
    if (!w || !f || !Ktr || !Kte || !Y || !alpha) s = PK_ERR_NOMEM;
    if (!s) s = pk_run_weights(run, pk_run_steps(run), w);
    if (!s) s = pk_model_predict(m, w, test->x, M, f);
    if (!s) s = pk_atomic_open(&csv, csvp);
    if (s) goto free_all;
    net_secs += pk_seconds() - t0;
    fprintf(csv.f, "machine,kernel,%s,seconds\n", loss == PK_LOSS_MSE ? "test_mse" : "test_accuracy");
    printf("%-34s %14s %10s\n", "machine", mname, "seconds");
    printf("%-34s %14.4f %10.2f\n", "network (trained)", metric(loss, f, test, C, 1), net_secs);
    fprintf(csv.f, "network,,%.17g,%.6g\n", metric(loss, f, test, C, 1), net_secs);
    for (int k = PK_KERNEL_PATH; k <= PK_KERNEL_NTK; k++) {
        double t1 = pk_seconds();
        char name[64];
        snprintf(name, sizeof name, "KRR on %s kernel", pk_kernel_kind_name((pk_kernel_kind)k));
        pk_status ks = pk_run_kernel(run, (pk_kernel_kind)k, train->x, N, NULL, Ktr);
        if (!ks) ks = pk_run_kernel(run, (pk_kernel_kind)k, test->x, M, NULL, Kte);
        if (ks) { /* a kernel the run does not have (the NTK of tanh): n/a */
            printf("%-34s %14s %10.2f   (%s)\n", name, "n/a", pk_seconds() - t1, cli_message(cmd, ks));
            fprintf(csv.f, "krr,%s,,%.6g\n", pk_kernel_kind_name((pk_kernel_kind)k), pk_seconds() - t1);
            continue;
        }
        if (k == PK_KERNEL_PATH) { /* the SVM gets the same kernel */
            Kpath_tr = pk_alloc(N, N * sizeof *Kpath_tr);
            Kpath_te = pk_alloc(M, N * sizeof *Kpath_te);
            if (!Kpath_tr || !Kpath_te) { s = PK_ERR_NOMEM; goto free_all; }
            memcpy(Kpath_tr, Ktr, N * N * sizeof *Ktr);
            memcpy(Kpath_te, Kte, M * N * sizeof *Kte);
        }
        /* every kernel here is positive semi-definite (the path kernel too,
         * MATH.md section 3): a failed Cholesky with the ridge, relative to
         * the mean diagonal, is an error, not something to work around */
        double tr = 0;
        for (size_t i = 0; i < N; i++) tr += Ktr[i * N + i];
        s = pk_krr_fit(Ktr, N, Y, C, ridge * tr / (double)N, alpha);
        if (s) {
            char why[512];
            snprintf(why, sizeof why, "%s", pk_last_error());
            s = pk_fail(s, "kernel ridge regression on the %s kernel, which is positive semi-definite: %s "
                        "(--ridge %g of the mean diagonal %g)", pk_kernel_kind_name((pk_kernel_kind)k), why, ridge,
                        tr / (double)N);
            goto free_all;
        }
        pk_krr_predict(Kte, M, N, alpha, C, f);
        double v = metric(loss, f, test, C, 0);
        printf("%-34s %14.4f %10.2f\n", name, v, pk_seconds() - t1);
        fprintf(csv.f, "krr,%s,%.17g,%.6g\n", pk_kernel_kind_name((pk_kernel_kind)k), v, pk_seconds() - t1);
    }
    if (loss != PK_LOSS_MSE && Kpath_tr) {
        double t1 = pk_seconds(), acc;
        const char *why;
        s = libsvm_accuracy(base, Kpath_tr, train, Kpath_te, test, svm_c, &acc, &why);
        if (s) goto free_all;
        if (why) printf("%-34s %14s %10.2f   (%s)\n", "SVM (LIBSVM) on path kernel", "n/a", pk_seconds() - t1, why);
        else printf("%-34s %14.4f %10.2f\n", "SVM (LIBSVM) on path kernel", acc, pk_seconds() - t1);
        fprintf(csv.f, "svm,path,%.17g,%.6g\n", acc, pk_seconds() - t1);
    }
    /* the lazy regime: how far the tangent kernel moves, by width */
    if (nw) {
        printf("\n%8s %10s %14s %14s %12s %12s %10s\n", "width", "params", mname, "|K_T-K_0|/|K_0|",
               "align K_0", "align K_T", "seconds");
        fprintf(csv.f, "\nwidth,params,%s,kernel_change,alignment_init,alignment_final,seconds\n",
                loss == PK_LOSS_MSE ? "test_mse" : "test_accuracy");
        KT = pk_alloc(N, N * sizeof *KT);  /* (N, N) tangent kernel at the end */
        if (!KT) s = PK_ERR_NOMEM;
    }
    for (size_t k = 0; !s && k < nw; k++) {
        double t1 = pk_seconds();
        char name[64];
        snprintf(name, sizeof name, "width-%zu", wl[k]);
        char *wd = pk_path_join(base, name);
        pk_run *rw = NULL;
        s = wd ? pk_run_open(wd, &rw) : PK_ERR_NOMEM;
        if (!s) s = pk_run_attach_data(rw, train);
        double *ww = s ? NULL : pk_alloc(pk_model_n_params(pk_run_model(rw)), sizeof *ww);
        if (!s && !ww) s = PK_ERR_NOMEM;
        if (!s) s = pk_run_kernel(rw, PK_KERNEL_TANGENT_INIT, train->x, N, NULL, Ktr);
        if (!s) s = pk_run_kernel(rw, PK_KERNEL_TANGENT_FINAL, train->x, N, NULL, KT);
        if (!s) s = pk_run_weights(rw, pk_run_steps(rw), ww);
        if (!s) s = pk_model_predict(pk_run_model(rw), ww, test->x, M, f);
        if (!s) {
            double dn = 0, n0 = 0;
            for (size_t i = 0; i < N * N; i++) {
                dn += (KT[i] - Ktr[i]) * (KT[i] - Ktr[i]);
                n0 += Ktr[i] * Ktr[i];
            }
            double v = metric(loss, f, test, C, 1), a0 = alignment(Ktr, Y, N, C), a1 = alignment(KT, Y, N, C);
            double secs = wsecs[k] + pk_seconds() - t1; /* training included */
            printf("%8zu %10zu %14.4f %14.4f %12.4f %12.4f %10.2f\n", wl[k], pk_model_n_params(pk_run_model(rw)), v,
                   sqrt(dn / n0), a0, a1, secs);
            fprintf(csv.f, "%zu,%zu,%.17g,%.17g,%.17g,%.17g,%.6g\n", wl[k], pk_model_n_params(pk_run_model(rw)), v,
                    sqrt(dn / n0), a0, a1, secs);
        }
        free(ww);
        pk_run_close(rw);
        free(wd);
    }
    if (!s) s = pk_atomic_commit(&csv);
free_all:
    pk_atomic_abort(&csv); /* a no-op once committed */
    s = pk_group_end(s);
    if (!s) printf("wrote %s\n", csvp);
    free(w); free(f); free(Ktr); free(Kte); free(Y); free(alpha); free(Kpath_tr); free(Kpath_te); free(KT);
done:;
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    pk_run_close(run);
    for (size_t i = 0; i < nmade; i++) {
        if (s) cli_remove_tree(made[i]);
        free(made[i]);
    }
    free(rundir); free(csvp);
    return rc;
}

static const char *const compare_help =
    "usage: pathkernel compare --data SPEC --test SPEC --model SPEC --loss L --optim O --lr X --steps T [options]\n"
    "\n"
    "Trains the network, then puts beside its test accuracy (or mse) kernel ridge regression on the RBF\n"
    "kernel (median heuristic), the tangent kernel at init and at the end, the paper's path kernel (gl2;\n"
    "symmetric, positive semi-definite) and the infinite-width NTK (relu/erf), and an SVM (LIBSVM,\n"
    "svm-train -t 4) on the path kernel; a failed Cholesky is an error (exit 1); with\n"
    "--widths, trains the same architecture at each hidden width and reports how far the tangent kernel\n"
    "moved, |K_T - K_0|_F / |K_0|_F, and its alignment with the labels before and after (MATH.md section 7).\n"
    "  --test SPEC     held-out data (required); --test-first N keeps its first N\n"
    "  --widths LIST   hidden widths for the kernel-movement table, e.g. 64,256,1024 [none]\n"
    "  --ridge R       KRR ridge, relative to the kernel's mean diagonal [1e-3]\n"
    "  --svm-c C       LIBSVM's C [1]\n"
    "  --out DIR       keep the runs, compare.csv and the LIBSVM files [a temporary directory]\n"
    "  and the data, model and optimiser options of train\n";

int cmd_compare(int argc, char **argv)
{
    const char *cmd = "compare";
    cli_train_args a;
    const char *widths = NULL;
    double ridge = 1e-3, svm_c = 1.0;
    int quiet = 0; /* accepted as by train; compare shows no progress */
    cli_train_args_init(&a, 1);
    const cli_opt opts[] = {CLI_INCLUDE(a.opts), {"widths", CLI_STR, &widths, NULL},
                            {"ridge", CLI_DOUBLE, &ridge, NULL}, {"svm-c", CLI_DOUBLE, &svm_c, NULL},
                            {"threads", CLI_THREADS, NULL, NULL}, {"quiet", CLI_FLAG, &quiet, NULL},
                            {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, compare_help, argc, argv, opts, NULL, 0);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!a.data) return cli_usage(cmd, "--data SPEC is required");
    if (!a.test) return cli_usage(cmd, "--test SPEC is required");
    if (!(ridge >= 0)) return cli_usage(cmd, "--ridge must be >= 0");
    char tmpl[] = "/tmp/pathkernel-compare-XXXXXX";
    const char *base = a.to.out_dir;
    if (!base && !(base = mkdtemp(tmpl))) { perror("pathkernel compare: mkdtemp"); return EXIT_FAIL; }
    int existed = cli_dir_exists(base);
    pk_status ms = pk_mkdirs(base);
    if (ms) return cli_error(cmd, ms);
    pk_data train = {0}, test = {0};
    double *mean = NULL, *sd = NULL;
    pk_status s = cli_load_train_data(&a, &train, &test, &mean, &sd);
    rc = s ? cli_error(cmd, s) : compare(cmd, &a.to, &train, &test, widths, ridge, svm_c, base);
    if (!a.to.out_dir) {
        if (cli_remove_tree(base) != 0) fprintf(stderr, "pathkernel %s: could not remove %s\n", cmd, base);
    } else if (rc) {
        cli_drop_new_dir(base, existed); /* compare removed what it made in it */
    }
    pk_data_free(&train); pk_data_free(&test);
    free(mean); free(sd);
    cli_train_args_free(&a);
    return rc;
}
