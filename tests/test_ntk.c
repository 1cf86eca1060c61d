/* The infinite-width gradient-flow prediction against an independent
 * integration of its differential equation, and the analytic kernels
 * against their own definition: symmetric, NNGP diagonal by the recursion
 * done by hand, one hidden layer. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

static int failures = 0, passes = 0;

static void check(const char *what, int ok, double v)
{
    printf("%-64s %.3e %s\n", what, v, ok ? "ok" : "FAIL");
    if (ok) passes++; else failures++;
}

int main(void)
{
    const size_t n = 12, d = 4, C = 2;
    pk_rng r;
    pk_rng_seed(&r, 11);
    double X[12 * 4], Y[12 * 2];
    for (size_t i = 0; i < n * d; i++) X[i] = pk_rng_normal(&r);
    for (size_t i = 0; i < n * C; i++) Y[i] = pk_rng_normal(&r);
    for (int act = 0; act < 2; act++) {
        pk_model *m, *m1;
        if (pk_model_new(act ? "mlp:8,8:erf" : "mlp:8,8:relu", d, C, PK_PARAM_NTK, 1.4, 0.3, &m) ||
            pk_model_new(act ? "mlp:8:erf" : "mlp:8:relu", d, 1, PK_PARAM_NTK, 1.4, 0.3, &m1)) {
            puts(pk_last_error());
            return 1;
        }
        double K[144], S1[144];
        pk_kernel_infinite(m, X, n, X, n, 0, K);
        double asym = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++) asym = fmax(asym, fabs(K[i * n + j] - K[j * n + i]));
        check(act ? "erf NTK symmetric" : "relu NTK symmetric", asym < 1e-14, asym);

        /* flow: f' = -(1/n) Theta (f - y) from f = 0, by RK4 with small steps */
        const double t = 3.0;
        double f[24] = {0}, k1[24], k2[24], k3[24], k4[24], tmp[24], pred[24];
        const int steps = 3000;
        double h = t / steps;
        for (int s = 0; s < steps; s++) {
            double *ks[4] = {k1, k2, k3, k4};
            for (int stage = 0; stage < 4; stage++) {
                double a = stage == 0 ? 0 : stage == 3 ? h : h / 2;
                for (size_t i = 0; i < n * C; i++) tmp[i] = f[i] + (stage ? a * ks[stage - 1][i] : 0) - Y[i];
                for (size_t i = 0; i < n; i++)
                    for (size_t c = 0; c < C; c++) {
                        double acc = 0;
                        for (size_t j = 0; j < n; j++) acc += K[i * n + j] * tmp[j * C + c];
                        ks[stage][i * C + c] = -acc / (double)n;
                    }
            }
            for (size_t i = 0; i < n * C; i++) f[i] += h / 6 * (k1[i] + 2 * k2[i] + 2 * k3[i] + k4[i]);
        }
        if (pk_kernel_infinite_flow(m, X, Y, n, C, X, n, t, pred)) { puts(pk_last_error()); return 1; }
        double err = 0, scale = 0;
        for (size_t i = 0; i < n * C; i++) { err = fmax(err, fabs(pred[i] - f[i])); scale = fmax(scale, fabs(f[i])); }
        check(act ? "erf flow closed form = RK4 integration" : "relu flow closed form = RK4 integration",
              err < 1e-9 * scale, err / scale);

        /* NNGP with one hidden layer by hand: Sigma^2 = sw^2 E[phi phi] + sb^2 */
        pk_kernel_infinite(m1, X, n, X, n, 1, S1);
        double worst = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++) {
                double q[3] = {0, 0, 0};
                for (size_t k = 0; k < d; k++) {
                    q[0] += X[i * d + k] * X[i * d + k];
                    q[1] += X[j * d + k] * X[j * d + k];
                    q[2] += X[i * d + k] * X[j * d + k];
                }
                double a = 1.96 * q[0] / d + 0.09, b = 1.96 * q[1] / d + 0.09, c = 1.96 * q[2] / d + 0.09, e;
                if (act) e = 2 / M_PI * asin(2 * c / sqrt((1 + 2 * a) * (1 + 2 * b)));
                else {
                    double th = acos(fmin(1, fmax(-1, c / sqrt(a * b))));
                    e = sqrt(a * b) / (2 * M_PI) * (sin(th) + (M_PI - th) * cos(th));
                }
                worst = fmax(worst, fabs(S1[i * n + j] - (1.96 * e + 0.09)));
            }
        check(act ? "erf NNGP, one hidden layer, by hand" : "relu NNGP, one hidden layer, by hand", worst < 1e-13, worst);
        pk_model_free(m);
        pk_model_free(m1);
    }
    pk_model *mt;
    if (pk_model_new("mlp:8:tanh", d, 1, PK_PARAM_NTK, 1, 0, &mt)) return 1;
    double K1[144];
    check("tanh has no closed form: refused with PK_ERR_INPUT", pk_kernel_infinite(mt, X, n, X, n, 0, K1) == PK_ERR_INPUT, 0);
    pk_model_free(mt);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
