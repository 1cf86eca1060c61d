/* machines.c -- fixed-kernel machines (MATH.md section 7): kernel ridge
 * regression by Cholesky (LAPACK), the RBF kernel with the median
 * heuristic, and LIBSVM's precomputed-kernel text format. */
#include "kernel/kernel.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* LAPACK on one thread. OpenBLAS's OpenMP build runs dpotrf, dpotrs and
 * dpotri on omp_get_max_threads() threads, and their blocking (so the bits
 * of the result) depends on that number; on one thread the factor, alpha
 * and the inverse are the same bits whatever --threads says, at the price
 * of a serial factorisation (N^3 / 3 flops: seconds for 5,000 examples). */
static int lapack_serial_begin(void)
{
    int t = omp_get_max_threads();
    omp_set_num_threads(1);
    return t;
}

static void lapack_serial_end(int t) { omp_set_num_threads(t); }

/* The Cholesky factor of K + ridge I, in place: L (n, n) holds K on entry
 * and its lower factor (column-major, the upper triangle of the row-major
 * view) on return. Shared by pk_krr_fit and pk_krr_loo. */
static pk_status krr_factor(double *L, size_t n, double ridge)
{
    if (n > INT_MAX) return pk_fail(PK_ERR_INPUT, "kernel ridge regression: %zu rows is too many for LAPACK", n);
    if (!(ridge >= 0) || !isfinite(ridge))
        return pk_fail(PK_ERR_INPUT, "kernel ridge regression: the ridge (ridge) must be >= 0");
    for (size_t i = 0; i < n; i++) L[i * n + i] += ridge;
    int nn = (int)n, info = 0, t = lapack_serial_begin();
    dpotrf_("L", &nn, L, &nn, &info); /* symmetric: row-major K is its own column-major */
    lapack_serial_end(t);
    if (info > 0)
        return pk_fail(PK_ERR_NUMERIC, "kernel ridge regression: K + %g I is not positive definite (leading minor %d); "
                       "use a larger ridge (ridge), e.g. %g", ridge, info, ridge > 0 ? ridge * 100 : 1e-8);
    if (info < 0) return pk_fail(PK_ERR_INTERNAL, "dpotrf: argument %d invalid", -info);
    return PK_OK;
}

/* B (C, n) column-major: the C right-hand sides overwritten by (K + ridge I)^-1 B, from the factor L (n, n). */
static pk_status krr_solve(const double *L, size_t n, size_t C, double *B)
{
    int nn = (int)n, nc = (int)C, info = 0, t = lapack_serial_begin();
    dpotrs_("L", &nn, &nc, L, &nn, B, &nn, &info);
    lapack_serial_end(t);
    return info ? pk_fail(PK_ERR_INTERNAL, "dpotrs: argument %d invalid", -info) : PK_OK;
}

pk_status pk_krr_fit(const double *K, size_t n, const double *Y, size_t C, double ridge, double *alpha)
{
    if (n > 1u << 30 || C > 1u << 30) return pk_fail(PK_ERR_INPUT, "kernel ridge regression: %zu examples is too many", n);
    double *L = pk_alloc(n * n, sizeof *L), *B = pk_alloc(n * C, sizeof *B); /* L (n, n), B (C, n) */
    if (!L || !B) { free(L); free(B); return PK_ERR_NOMEM; }
    memcpy(L, K, n * n * sizeof *L);
    /* B is Y in column-major (n, C): what dpotrs expects */
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < C; c++) B[c * n + i] = Y[i * C + c];
    pk_status s = krr_factor(L, n, ridge);
    if (!s) s = krr_solve(L, n, C, B);
    if (!s)
        for (size_t i = 0; i < n; i++)
            for (size_t c = 0; c < C; c++) alpha[i * C + c] = B[c * n + i];
    free(L);
    free(B);
    return s;
}

size_t pk_krr_loo_bytes(size_t n, size_t C, pk_kmode mode)
{
    double m = (double)n * (double)(mode == PK_KMODE_FULL ? C : 1), b = m * m * sizeof(double);
    return b > 1e18 ? (size_t)1e18 : (size_t)b;
}

pk_status pk_krr_loo(const double *K, size_t n, size_t C, pk_kmode mode, const double *Y, double ridge,
                     double *alpha, double *resid)
{
    /* MATH.md section 7, "Leave-one-out": with H = (K + ridge I)^-1 and
     * alpha = H Y, the residual of example i on the machine refitted without
     * it is y_i - yhat_{-i} = H_ii^-1 alpha_i: a number per output (trace:
     * H_ii a scalar, the C outputs independent machines on one kernel) or
     * the C x C diagonal block of H on the vector alpha_i (full). */
    int full = mode == PK_KMODE_FULL;
    size_t r = full ? C : 1, m = n * r; /* rows of the system: (example, output) pairs in full mode */
    if (!n || !C || n > 1u << 30 || C > 1u << 16) return pk_fail(PK_ERR_INPUT, "leave-one-out: %zu examples, %zu outputs", n, C);
    double *L = pk_alloc_big(m * m, sizeof *L); /* L (m, m): K + ridge I, then its factor, then its inverse */
    double *B = pk_alloc(n * C, sizeof *B);     /* B: Y column-major, (C, n) in trace mode, (1, nC) in full */
    double *Hb = pk_alloc(r * r + r, sizeof *Hb); /* one C x C diagonal block of H and its right-hand side */
    if (!L || !B || !Hb) { free(L); free(B); free(Hb); return PK_ERR_NOMEM; }
    if (!full) memcpy(L, K, m * m * sizeof *L);
    else /* K (n, n, C, C) as the (nC, nC) matrix of rows (i, c), columns (j, c') */
        #pragma omp parallel for schedule(static) if (m * m >= PK_PAR_MIN)
        for (size_t i = 0; i < n; i++)
            for (size_t c = 0; c < C; c++)
                for (size_t j = 0; j < n; j++)
                    memcpy(L + (i * C + c) * m + j * C, K + ((i * n + j) * C + c) * C, C * sizeof *L);
    if (full) memcpy(B, Y, n * C * sizeof *B); /* vec Y, rows (i, c): already column-major (m, 1) */
    else
        for (size_t i = 0; i < n; i++)
            for (size_t c = 0; c < C; c++) B[c * n + i] = Y[i * C + c];
    pk_status s = krr_factor(L, m, ridge);
    if (!s) s = krr_solve(L, m, full ? 1 : C, B);
    if (!s) {
        int mm = (int)m, info = 0, t = lapack_serial_begin();
        dpotri_("L", &mm, L, &mm, &info);
        lapack_serial_end(t); /* H's lower triangle (column-major): row-major L[j * m + i], i >= j */
        if (info) s = pk_fail(PK_ERR_NUMERIC, "leave-one-out: (K + %g I) could not be inverted (dpotri %d); "
                              "use a larger ridge (ridge)", ridge, info);
    }
    int threads = lapack_serial_begin(); /* the C x C blocks too */
    for (size_t i = 0; !s && i < n; i++) {
        for (size_t c = 0; c < C; c++) alpha[i * C + c] = full ? B[i * C + c] : B[c * n + i];
        if (!full) {
            double h = L[i * m + i];
            for (size_t c = 0; c < C; c++) resid[i * C + c] = alpha[i * C + c] / h;
            continue;
        }
        /* the block H_ii (C, C), symmetric, filled from the stored triangle; solve H_ii r_i = alpha_i */
        double *h = Hb, *v = Hb + r * r;
        for (size_t a = 0; a < C; a++)
            for (size_t b = 0; b <= a; b++) h[a * C + b] = h[b * C + a] = L[(i * C + b) * m + i * C + a];
        memcpy(v, alpha + i * C, C * sizeof *v);
        int nc = (int)C, one = 1, info = 0;
        dpotrf_("L", &nc, h, &nc, &info);
        if (!info) dpotrs_("L", &nc, &one, h, &nc, v, &nc, &info);
        if (info) s = pk_fail(PK_ERR_NUMERIC, "leave-one-out: the diagonal block of example %zu of (K + %g I)^-1 is "
                              "not positive definite (%d); use a larger ridge (ridge)", i, ridge, info);
        else memcpy(resid + i * C, v, C * sizeof *v);
    }
    lapack_serial_end(threads);
    free(L);
    free(B);
    free(Hb);
    return s;
}

void pk_krr_predict(const double *Kq, size_t nq, size_t n, const double *alpha, size_t C, double *pred)
{
    pk_gemm(0, 0, nq, C, n, 1.0, Kq, n, alpha, C, 0.0, pred, C);
}

double pk_kernel_rbf_bandwidth(const double *X, size_t n, size_t d)
{
    /* median of the pairwise distances over at most 1,000 examples (evenly spaced) */
    size_t m = n < 1000 ? n : 1000, k = 0;
    double *dist = pk_alloc(m * (m - 1) / 2 + 1, sizeof *dist);
    if (!dist || m < 2) { free(dist); return 1.0; }
    for (size_t a = 0; a < m; a++)
        for (size_t b = a + 1; b < m; b++) {
            const double *p = X + (a * n / m) * d, *q = X + (b * n / m) * d;
            double s = 0;
            for (size_t j = 0; j < d; j++) s += (p[j] - q[j]) * (p[j] - q[j]);
            dist[k++] = sqrt(s);
        }
    qsort(dist, k, sizeof *dist, pk_cmp_double);
    double med = k % 2 ? dist[k / 2] : 0.5 * (dist[k / 2 - 1] + dist[k / 2]);
    free(dist);
    return med > 0 ? med : 1.0;
}

void pk_kernel_rbf(const double *X, size_t nx, const double *Y, size_t ny, size_t d, double bandwidth, double *K)
{
    /* exp(-|x - y|^2 / (2 h^2)), |x - y|^2 = |x|^2 + |y|^2 - 2 x.y */
    pk_gemm(0, 1, nx, ny, d, -2.0, X, d, Y, d, 0.0, K, ny);
    double g = 1.0 / (2 * bandwidth * bandwidth);
    #pragma omp parallel for schedule(static) if (nx * ny >= PK_PAR_MIN)
    for (size_t i = 0; i < nx; i++) {
        double xi = 0;
        for (size_t j = 0; j < d; j++) xi += X[i * d + j] * X[i * d + j];
        for (size_t k = 0; k < ny; k++) {
            double yk = 0;
            for (size_t j = 0; j < d; j++) yk += Y[k * d + j] * Y[k * d + j];
            double sq = xi + yk + K[i * ny + k];
            K[i * ny + k] = exp(-g * (sq > 0 ? sq : 0));
        }
    }
}

pk_status pk_libsvm_write(const char *path, const double *K, size_t n, size_t ncols, const double *labels)
{
    pk_atomic a;
    pk_status s = pk_atomic_open(&a, path);
    if (s) return s;
    for (size_t i = 0; i < n; i++) {
        /* LIBSVM's precomputed format: label 0:ID 1:K(i,1) ... ; IDs are 1-based */
        fprintf(a.f, "%.17g 0:%zu", labels[i], i + 1);
        for (size_t j = 0; j < ncols; j++) fprintf(a.f, " %zu:%.17g", j + 1, K[i * ncols + j]);
        fputc('\n', a.f);
    }
    return pk_atomic_commit(&a);
}

static const char *const kernel_names[] = {"path", "tangent-init", "tangent-final", "rbf", "ntk", "path-batch"};

pk_status pk_kernel_kind_parse(const char *s, pk_kernel_kind *k)
{
    for (int i = 0; i <= PK_KERNEL_PATH_BATCH; i++)
        if (!strcmp(s, kernel_names[i])) { *k = (pk_kernel_kind)i; return PK_OK; }
    return pk_fail(PK_ERR_INPUT, "unknown kernel '%s' (use path, path-batch, tangent-init, tangent-final, rbf or ntk)", s);
}

const char *pk_kernel_kind_name(pk_kernel_kind k) { return k <= PK_KERNEL_PATH_BATCH ? kernel_names[k] : "?"; }

pk_status pk_run_kernel(pk_run *run, pk_kernel_kind kind, const double *X, size_t nx, const pk_quad *quad, double *K)
{
    const pk_data *train;
    pk_status s = pk_run_train_data(run, &train);
    if (s) return s;
    const pk_model *m = pk_run_model(run);
    size_t N = train->n, d = train->d;
    switch (kind) {
    case PK_KERNEL_PATH: { /* the paper's path kernel, traced over outputs (MATH.md section 3) */
        pk_quad q;
        if (!quad) pk_quad_parse("gl2", &q);
        return pk_run_path_kernel(run, X, nx, train->x, N, PK_KMODE_TRACE, quad ? quad : &q, NULL, NULL, K);
    }
    case PK_KERNEL_PATH_BATCH: { /* the contribution kernel, traced over outputs (MATH.md section 3) */
        pk_explain_opts o = pk_explain_opts_defaults();
        if (quad) o.quad = *quad;
        o.want_contrib = 0;
        o.batch_kernel = 1;
        o.mode = PK_KMODE_TRACE;
        pk_explain e;
        if ((s = pk_run_explain(run, X, nx, &o, &e))) return s;
        memcpy(K, e.kernel, nx * N * sizeof *K);
        pk_explain_free(&e);
        return PK_OK;
    }
    case PK_KERNEL_TANGENT_INIT:
    case PK_KERNEL_TANGENT_FINAL: {
        double *w = pk_alloc(m->n_params, sizeof *w);
        if (!w) return PK_ERR_NOMEM;
        s = pk_run_weights(run, kind == PK_KERNEL_TANGENT_INIT ? 0 : pk_run_steps(run), w);
        if (!s) s = pk_kernel_tangent(m, w, X, nx, train->x, N, PK_KMODE_TRACE, K);
        free(w);
        return s;
    }
    case PK_KERNEL_RBF:
        pk_kernel_rbf(X, nx, train->x, N, d, pk_kernel_rbf_bandwidth(train->x, N, d), K);
        return PK_OK;
    case PK_KERNEL_NTK: {
        pk_model *inf = NULL; /* the run's architecture in the ntk parameterisation */
        if (m->param != PK_PARAM_NTK) {
            char spec[256];
            pk_model_spec(m, spec, sizeof spec);
            if ((s = pk_model_new(spec, m->n_in, m->n_out, PK_PARAM_NTK, 1, 1, &inf))) return s;
        }
        s = pk_kernel_infinite(inf ? inf : m, X, nx, train->x, N, 0, K);
        pk_model_free(inf);
        return s;
    }
    }
    return pk_fail(PK_ERR_INPUT, "unknown kernel kind");
}
