/* compare.c -- `pathkernel compare`: the network beside fixed-kernel
 * machines on its own kernels (MATH.md section 7), and how far the tangent
 * kernel moves during training as the width grows. */
#define _XOPEN_SOURCE 700
#include "cli.h"
#include "internal.h"

#include <math.h>
#include <spawn.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>

extern char **environ;

static double now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

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

/* svm-train -t 4 and svm-predict on precomputed kernels; accuracy, or NaN
 * (with *why set) when LIBSVM is missing or fails. */
static double libsvm_accuracy(const char *dir, const double *Ktr, const pk_data *train, const double *Kte,
                              const pk_data *test, double cost, const char **why)
{
    char *trp = pk_path_join(dir, "path-train.svm"), *tep = pk_path_join(dir, "path-test.svm");
    char *mp = pk_path_join(dir, "path.model"), *pp = pk_path_join(dir, "path.pred");
    double acc = NAN;
    char cbuf[32];
    snprintf(cbuf, sizeof cbuf, "%g", cost);
    *why = "could not write the LIBSVM files";
    if (trp && tep && mp && pp && !pk_libsvm_write(trp, Ktr, train->n, train->n, train->y) &&
        !pk_libsvm_write(tep, Kte, test->n, train->n, test->y)) {
        char *targv[] = {"svm-train", "-q", "-t", "4", "-c", cbuf, trp, mp, NULL};
        char *pargv[] = {"svm-predict", "-q", tep, mp, pp, NULL};
        pid_t pid;
        int st = -1;
        *why = "svm-train/svm-predict not found or failed: apt-get install libsvm-tools";
        if (posix_spawnp(&pid, "svm-train", NULL, NULL, targv, environ) == 0 && waitpid(pid, &st, 0) == pid &&
            WIFEXITED(st) && WEXITSTATUS(st) == 0 &&
            posix_spawnp(&pid, "svm-predict", NULL, NULL, pargv, environ) == 0 && waitpid(pid, &st, 0) == pid &&
            WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            FILE *f = fopen(pp, "r");
            size_t hit = 0, n = 0;
            double v;
            while (f && n < test->n && fscanf(f, "%lf", &v) == 1) hit += v == test->y[n++];
            if (f) fclose(f);
            if (n == test->n) { acc = (double)hit / (double)n; *why = NULL; }
        }
    }
    free(trp); free(tep); free(mp); free(pp);
    return acc;
}

/* The architecture of m with every hidden width replaced by `width`. */
static void widen(const pk_mlp *m, size_t width, char *buf, size_t len)
{
    size_t k = (size_t)snprintf(buf, len, "mlp:");
    for (size_t l = 1; l < m->n_layers && k < len; l++) k += (size_t)snprintf(buf + k, len - k, "%s%zu", l > 1 ? "," : "", width);
    if (k < len) snprintf(buf + k, len - k, ":%s", pk_act_name(m->act));
}

int cli_compare(const char *cmd, const pk_train_opts *to_in, const pk_data *train, const pk_data *test,
                const char *widths, double ridge, double svm_c, const char *base)
{
    pk_train_opts to = *to_in;
    char *rundir = pk_path_join(base, "run"), *csvp = pk_path_join(base, "compare.csv");
    pk_run *run = NULL;
    pk_status s = (!rundir || !csvp) ? PK_ERR_NOMEM : PK_OK;
    size_t N = train->n, M = test->n;
    double t0 = now();
    to.out_dir = rundir;
    if (!s) s = pk_train(train, &to, NULL, NULL);
    if (!s) s = pk_run_open(rundir, &run);
    if (!s) s = pk_run_attach_data(run, train);
    if (s) { free(rundir); free(csvp); pk_run_close(run); return cli_error(cmd, s); }
    const pk_mlp *m = pk_run_mlp(run);
    size_t C = m->dims[m->n_layers];
    pk_loss loss = pk_run_loss(run);
    const char *mname = loss == PK_LOSS_MSE ? "test mse" : "test accuracy";
    double *w = pk_alloc(m->n_params, sizeof *w), *f = pk_alloc(M, C * sizeof *f);
    double *Ktr = pk_alloc(N, N * sizeof *Ktr), *Kte = pk_alloc(M, N * sizeof *Kte);
    double *Y = krr_targets(loss, train, C), *alpha = pk_alloc(N, C * sizeof *alpha);
    double *Kpath_tr = NULL, *Kpath_te = NULL;
    pk_atomic csv;
    if (!w || !f || !Ktr || !Kte || !Y || !alpha) s = PK_ERR_NOMEM;
    if (!s) s = pk_run_weights(run, pk_run_steps(run), w);
    if (!s) s = pk_predict(m, w, test->x, M, f);
    if (!s) s = pk_atomic_open(&csv, csvp);
    if (s) goto done;
    fprintf(csv.f, "machine,kernel,%s,seconds\n", loss == PK_LOSS_MSE ? "test_mse" : "test_accuracy");
    printf("%-34s %14s %10s\n", "machine", mname, "seconds");
    printf("%-34s %14.4f %10.2f\n", "network (trained)", metric(loss, f, test, C, 1), now() - t0);
    fprintf(csv.f, "network,,%.17g,%.6g\n", metric(loss, f, test, C, 1), now() - t0);
    for (int k = PK_KERNEL_PATH; k <= PK_KERNEL_NTK; k++) {
        double t1 = now();
        char name[64];
        snprintf(name, sizeof name, "KRR on %s kernel", pk_kernel_kind_name((pk_kernel_kind)k));
        double used = ridge;
        pk_status ks = pk_run_kernel(run, (pk_kernel_kind)k, train->x, N, NULL, Ktr);
        if (!ks) ks = pk_run_kernel(run, (pk_kernel_kind)k, test->x, M, NULL, Kte);
        if (!ks) {
            /* the discrete path kernel is not symmetric (MATH.md section 3): KRR uses (K + K^T)/2;
             * the ridge is relative to the kernel's mean diagonal */
            double tr = 0;
            for (size_t i = 0; i < N; i++)
                for (size_t j = i + 1; j < N; j++) Ktr[i * N + j] = Ktr[j * N + i] = 0.5 * (Ktr[i * N + j] + Ktr[j * N + i]);
            for (size_t i = 0; i < N; i++) tr += Ktr[i * N + i];
            if (k == PK_KERNEL_PATH) { /* the SVM gets the same symmetrised kernel */
                Kpath_tr = pk_alloc(N, N * sizeof *Kpath_tr);
                Kpath_te = pk_alloc(M, N * sizeof *Kpath_te);
                if (!Kpath_tr || !Kpath_te) ks = PK_ERR_NOMEM;
                else { memcpy(Kpath_tr, Ktr, N * N * sizeof *Ktr); memcpy(Kpath_te, Kte, M * N * sizeof *Kte); }
            }
            /* a symmetrised path kernel need not be positive definite: raise
             * the ridge tenfold until Cholesky succeeds (at most 6 times) */
            for (int tries = 0; !ks; tries++) {
                ks = pk_krr_fit(Ktr, N, Y, C, used * tr / (double)N, alpha);
                if (ks != PK_ERR_NUMERIC || tries == 6) break;
                ks = PK_OK;
                used *= 10;
            }
        }
        if (!ks) {
            pk_gemm(0, 0, M, C, N, 1.0, Kte, N, alpha, C, 0.0, f, C);
            double v = metric(loss, f, test, C, 0);
            printf("%-34s %14.4f %10.2f", name, v, now() - t1);
            if (used != ridge) printf("   (ridge raised to %g to make K positive definite)", used);
            printf("\n");
            fprintf(csv.f, "krr,%s,%.17g,%.6g\n", pk_kernel_kind_name((pk_kernel_kind)k), v, now() - t1);
        } else {
            printf("%-34s %14s %10.2f   (%s)\n", name, "n/a", now() - t1, pk_last_error());
            fprintf(csv.f, "krr,%s,,%.6g\n", pk_kernel_kind_name((pk_kernel_kind)k), now() - t1);
        }
    }
    if (loss != PK_LOSS_MSE && Kpath_tr) {
        double t1 = now();
        const char *why;
        double acc = libsvm_accuracy(base, Kpath_tr, train, Kpath_te, test, svm_c, &why);
        if (why) printf("%-34s %14s %10.2f   (%s)\n", "SVM (LIBSVM) on path kernel", "n/a", now() - t1, why);
        else printf("%-34s %14.4f %10.2f\n", "SVM (LIBSVM) on path kernel", acc, now() - t1);
        fprintf(csv.f, "svm,path,%.17g,%.6g\n", acc, now() - t1);
    }
    /* the lazy regime: how far the tangent kernel moves, by width */
    if (widths && *widths) {
        printf("\n%8s %10s %14s %14s %12s %12s %10s\n", "width", "params", mname, "|K_T-K_0|/|K_0|",
               "align K_0", "align K_T", "seconds");
        fprintf(csv.f, "\nwidth,params,%s,kernel_change,alignment_init,alignment_final,seconds\n",
                loss == PK_LOSS_MSE ? "test_mse" : "test_accuracy");
        double *KT = pk_alloc(N, N * sizeof *KT);  /* (N, N) tangent kernel at the end */
        if (!KT) s = PK_ERR_NOMEM;
        char buf[256];
        snprintf(buf, sizeof buf, "%s", widths);
        for (char *tok = strtok(buf, ","); tok && !s; tok = strtok(NULL, ",")) {
            double t1 = now();
            size_t width;
            if (pk_parse_size(tok, &width) || !width) { s = pk_fail(PK_ERR_INPUT, "--widths: '%s' is not a positive integer", tok); break; }
            char spec[128], name[64];
            widen(m, width, spec, sizeof spec);
            snprintf(name, sizeof name, "width-%zu", width);
            char *wd = pk_path_join(base, name);
            pk_train_opts tw = to;
            tw.model = spec;
            tw.out_dir = wd;
            tw.keep = to.steps;
            pk_run *rw = NULL;
            s = wd ? pk_train(train, &tw, NULL, NULL) : PK_ERR_NOMEM;
            if (!s) s = pk_run_open(wd, &rw);
            if (!s) s = pk_run_attach_data(rw, train);
            double *ww = s ? NULL : pk_alloc(pk_run_mlp(rw)->n_params, sizeof *ww);
            if (!s && !ww) s = PK_ERR_NOMEM;
            if (!s) s = pk_run_kernel(rw, PK_KERNEL_TANGENT_INIT, train->x, N, NULL, Ktr);
            if (!s) s = pk_run_kernel(rw, PK_KERNEL_TANGENT_FINAL, train->x, N, NULL, KT);
            if (!s) s = pk_run_weights(rw, pk_run_steps(rw), ww);
            if (!s) s = pk_predict(pk_run_mlp(rw), ww, test->x, M, f);
            if (!s) {
                double dn = 0, n0 = 0;
                for (size_t i = 0; i < N * N; i++) {
                    dn += (KT[i] - Ktr[i]) * (KT[i] - Ktr[i]);
                    n0 += Ktr[i] * Ktr[i];
                }
                double v = metric(loss, f, test, C, 1), a0 = alignment(Ktr, Y, N, C), a1 = alignment(KT, Y, N, C);
                printf("%8zu %10zu %14.4f %14.4f %12.4f %12.4f %10.2f\n", width, pk_run_mlp(rw)->n_params, v,
                       sqrt(dn / n0), a0, a1, now() - t1);
                fprintf(csv.f, "%zu,%zu,%.17g,%.17g,%.17g,%.17g,%.6g\n", width, pk_run_mlp(rw)->n_params, v,
                        sqrt(dn / n0), a0, a1, now() - t1);
            }
            free(ww);
            pk_run_close(rw);
            free(wd);
        }
        free(KT);
    }
    if (!s) s = pk_atomic_commit(&csv);
    else pk_atomic_abort(&csv);
    if (!s) printf("wrote %s\n", csvp);
done:
    free(w); free(f); free(Ktr); free(Kte); free(Y); free(alpha); free(Kpath_tr); free(Kpath_te);
    free(rundir); free(csvp);
    pk_run_close(run);
    return s ? cli_error(cmd, s) : EXIT_OK;
}
