/* ntk.c -- the infinite-width limit (MATH.md section 6): NNGP and NTK of a
 * fully connected network in the ntk parameterisation with relu or erf
 * activations, by the layer recursion with closed-form Gaussian expectations,
 * and the mean prediction of an infinitely wide network trained by gradient
 * flow on the mean half squared error. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

/* E[phi(u) phi(v)] and E[phi'(u) phi'(v)] for (u, v) ~ N(0, [[a, c], [c, b]]). */
static void gauss_moments(pk_act act, double a, double b, double c, double *e, double *edot)
{
    if (act == PK_ACT_RELU) { /* arc-cosine kernels of degree 1 and 0 */
        double s = sqrt(a * b), rho = s > 0 ? c / s : 0;
        rho = rho > 1 ? 1 : rho < -1 ? -1 : rho;
        double th = acos(rho);
        *e = s / (2 * M_PI) * (sin(th) + (M_PI - th) * rho);
        *edot = (M_PI - th) / (2 * M_PI);
    } else { /* erf */
        double da = 1 + 2 * a, db = 1 + 2 * b;
        double r = 2 * c / sqrt(da * db);
        r = r > 1 ? 1 : r < -1 ? -1 : r;
        *e = 2 / M_PI * asin(r);
        *edot = 4 / M_PI / sqrt(da * db - 4 * c * c);
    }
}

pk_status pk_kernel_infinite(const pk_model *m, const double *X, size_t nx, const double *Y, size_t ny,
                             int nngp, double *K)
{
    int mlp = pk_model_mlp_act(m);
    if (mlp < 0) return pk_fail(PK_ERR_INPUT, "infinite-width kernels are those of multilayer perceptrons (mlp:...)");
    pk_act act = (pk_act)mlp;
    if (act != PK_ACT_RELU && act != PK_ACT_ERF)
        return pk_fail(PK_ERR_INPUT, "infinite-width kernels have closed forms for relu and erf only, not %s",
                       pk_act_name(act));
    size_t d = m->n_in, H = m->n_weight - 1; /* hidden layers */
    double sw2 = m->sigma_w * m->sigma_w, sb2 = m->sigma_b * m->sigma_b;
    /* Diagonal recursions: Sigma^l(x, x) of every input, for every layer. */
    double *dx = pk_alloc(nx * (H + 1), sizeof *dx), *dy = pk_alloc(ny * (H + 1), sizeof *dy);
    if (!dx || !dy) { free(dx); free(dy); return PK_ERR_NOMEM; }
    for (int side = 0; side < 2; side++) {
        const double *Z = side ? Y : X;
        size_t n = side ? ny : nx;
        double *dg = side ? dy : dx;
        for (size_t i = 0; i < n; i++) {
            double q = 0;
            for (size_t k = 0; k < d; k++) q += Z[i * d + k] * Z[i * d + k];
            dg[i * (H + 1)] = sw2 * q / (double)d + sb2;
            for (size_t l = 0; l < H; l++) {
                double s = dg[i * (H + 1) + l], e, edot;
                gauss_moments(act, s, s, s, &e, &edot);
                dg[i * (H + 1) + l + 1] = sw2 * e + sb2;
            }
        }
    }
    /* Sigma^1 = sigma_w^2 x.x'/d_0 + sigma_b^2 as one GEMM. */
    pk_gemm(0, 1, nx, ny, d, sw2 / (double)d, X, d, Y, d, 0.0, K, ny);
    #pragma omp parallel for schedule(static) if (nx * ny * (H + 1) >= PK_PAR_MIN)
    for (size_t i = 0; i < nx; i++)
        for (size_t j = 0; j < ny; j++) {
            double sig = K[i * ny + j] + sb2, theta = sig;
            for (size_t l = 0; l < H; l++) {
                double e, edot;
                gauss_moments(act, dx[i * (H + 1) + l], dy[j * (H + 1) + l], sig, &e, &edot);
                sig = sw2 * e + sb2;                 /* Sigma^{l+1}              */
                theta = theta * sw2 * edot + sig;    /* Theta^l Sigmadot^{l+1} + Sigma^{l+1} */
            }
            K[i * ny + j] = nngp ? sig : theta;
        }
    free(dx);
    free(dy);
    return PK_OK;
}

pk_status pk_kernel_infinite_flow(const pk_model *m, const double *X, const double *Yt, size_t n, size_t C,
                                  const double *Xq, size_t nq, double t, double *pred)
{
    double *K = pk_alloc(n * n, sizeof *K), *Kq = pk_alloc(nq * n, sizeof *Kq);
    double *ev = pk_alloc(n, sizeof *ev), *coef = pk_alloc(n * C, sizeof *coef), *tmp = pk_alloc(n * C, sizeof *tmp);
    pk_status s = (!K || !Kq || !ev || !coef || !tmp) ? PK_ERR_NOMEM : PK_OK;
    if (!s) s = pk_kernel_infinite(m, X, n, X, n, 0, K);
    if (!s) s = pk_kernel_infinite(m, Xq, nq, X, n, 0, Kq);
    /* Theta = V diag(ev) V^T; the mean of the flow df/dt = -(1/n) Theta (f - y)
     * from f = 0 is f_t(x) = Theta(x, X) V diag((1 - exp(-ev t / n)) / ev) V^T y. */
    if (!s && n > 1u << 30) s = pk_fail(PK_ERR_INPUT, "%zu training examples: too many for an eigendecomposition", n);
    if (!s) { /* Theta is symmetric: row- and column-major agree; V comes back column-major */
        int nn = (int)n, lwork = -1, liwork = -1, iw, info;
        double wq;
        dsyevd_("V", "U", &nn, K, &nn, ev, &wq, &lwork, &iw, &liwork, &info);
        lwork = (int)wq;
        liwork = iw;
        double *work = pk_alloc((size_t)lwork, sizeof *work);
        int *iwork = pk_alloc((size_t)liwork, sizeof *iwork);
        if (!work || !iwork) s = PK_ERR_NOMEM;
        else dsyevd_("V", "U", &nn, K, &nn, ev, work, &lwork, iwork, &liwork, &info);
        free(work);
        free(iwork);
        if (!s && info != 0)
            s = pk_fail(PK_ERR_NUMERIC, "eigendecomposition of the %zu x %zu infinite-width NTK failed (LAPACK info %d)", n, n, info);
    }
    if (!s) {
        /* column-major V read row-major is V^T: row k is eigenvector k */
        pk_gemm(0, 0, n, C, n, 1.0, K, n, Yt, C, 0.0, tmp, C);        /* V^T y */
        for (size_t k = 0; k < n; k++) {
            double g = ev[k] > 0 ? -expm1(-ev[k] * t / (double)n) / ev[k] : t / (double)n;
            for (size_t c = 0; c < C; c++) tmp[k * C + c] *= g;
        }
        pk_gemm(1, 0, n, C, n, 1.0, K, n, tmp, C, 0.0, coef, C);       /* V (.) */
        pk_gemm(0, 0, nq, C, n, 1.0, Kq, n, coef, C, 0.0, pred, C);    /* Theta(x, X) (.) */
    }
    free(K); free(Kq); free(ev); free(coef); free(tmp);
    return s;
}
