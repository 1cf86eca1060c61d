/* Finite-difference checks of the backward pass: every activation x every
 * loss x both parameterisations, and of the per-output deltas that tangent
 * kernels use. Fails (exit 1) when any relative error exceeds 1e-7. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

static int failures = 0;

static void check(const char *what, double err, double tol)
{
    int ok = err < tol;
    printf("%-58s rel err %.3e %s\n", what, err, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

/* max |a - b| / max |b| */
static double rel_err(const double *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs(a[i] - b[i]));
        den = fmax(den, fabs(b[i]));
    }
    return num / (den > 0 ? den : 1);
}

static double mean_loss(pk_stepper *st, const double *w, size_t n)
{
    const pk_mlp *m = st->m;
    pk_mlp_forward(m, w, st->data->x, n, st->tape);
    return pk_loss_eval(st->loss, st->tape->a[m->n_layers], st->data->y, n, m->dims[m->n_layers], st->data->ty, NULL);
}

int main(void)
{
    const size_t n = 7, d = 5, C = 3;
    pk_rng r;
    pk_rng_seed(&r, 42);
    double x[7 * 5], yc[7], yb[7], ym[7 * 3];
    for (size_t i = 0; i < n * d; i++) x[i] = pk_rng_normal(&r);
    for (size_t i = 0; i < n; i++) {
        yc[i] = (double)(i % C);
        yb[i] = (double)(i % 2);
        for (size_t k = 0; k < C; k++) ym[i * C + k] = pk_rng_normal(&r);
    }
    for (int param = 0; param < 2; param++)
        for (int act = PK_ACT_IDENTITY; act <= PK_ACT_ERF; act++)
            for (int loss = PK_LOSS_MSE; loss <= PK_LOSS_SOFTMAX; loss++) {
                size_t out = loss == PK_LOSS_LOGISTIC ? 1 : C;
                pk_data data = {n, d, loss == PK_LOSS_MSE ? C : 1, x,
                                loss == PK_LOSS_MSE ? ym : loss == PK_LOSS_LOGISTIC ? yb : yc, 0, 0, NULL};
                char spec[64];
                snprintf(spec, sizeof spec, "mlp:6,4:%s", pk_act_name((pk_act)act));
                pk_mlp m;
                if (pk_mlp_parse(spec, d, out, (pk_param)param, 1.3, 0.4, &m)) { puts(pk_last_error()); return 1; }
                size_t P = m.n_params;
                double *w = malloc(P * sizeof *w), *G = malloc(P * sizeof *G), *Gfd = malloc(P * sizeof *G);
                pk_mlp_init(&m, 7 + (uint64_t)act, w);
                pk_stepper st;
                pk_stepper_init(&st, &m, (pk_loss)loss, &data, n);
                pk_stepper_grad(&st, w, NULL, n, G);
                const double h = 1e-6;
                for (size_t j = 0; j < P; j++) {
                    double w0 = w[j];
                    w[j] = w0 + h;
                    double lp = mean_loss(&st, w, n);
                    w[j] = w0 - h;
                    double lm = mean_loss(&st, w, n);
                    w[j] = w0;
                    Gfd[j] = (lp - lm) / (2 * h);
                }
                char what[128];
                snprintf(what, sizeof what, "loss gradient %-8s %-9s %s", pk_loss_name((pk_loss)loss),
                         pk_act_name((pk_act)act), param ? "ntk" : "standard");
                check(what, rel_err(G, Gfd, P), 1e-7);

                /* Per-output deltas: J_k of one example, assembled from the
                 * structured form (MATH.md section 4), against central differences
                 * of f_k. */
                if (loss == PK_LOSS_MSE) {
                    double *dl[PK_MAX_LAYERS];
                    for (size_t l = 0; l < m.n_layers; l++) dl[l] = malloc(n * C * m.dims[l + 1] * sizeof(double));
                    pk_mlp_forward(&m, w, x, n, st.tape);
                    pk_mlp_output_deltas(&m, w, st.tape, dl);
                    double *J = malloc(P * sizeof *J), *Jfd = malloc(P * sizeof *J);
                    size_t i = 3, k = 1;
                    for (size_t l = 0; l < m.n_layers; l++) {
                        size_t din = m.dims[l], dout = m.dims[l + 1];
                        const double *del = dl[l] + (i * C + k) * dout, *a = st.tape->a[l] + i * din;
                        for (size_t o = 0; o < dout; o++) {
                            for (size_t q = 0; q < din; q++)
                                J[m.w_off[l] + o * din + q] = pk_mlp_wscale(&m, l) * del[o] * a[q];
                            J[m.b_off[l] + o] = pk_mlp_bscale(&m, l) * del[o];
                        }
                    }
                    for (size_t j = 0; j < P; j++) {
                        double w0 = w[j], f[2];
                        for (int s = 0; s < 2; s++) {
                            w[j] = w0 + (s ? -h : h);
                            pk_mlp_forward(&m, w, x, n, st.tape);
                            f[s] = st.tape->a[m.n_layers][i * C + k];
                        }
                        w[j] = w0;
                        Jfd[j] = (f[0] - f[1]) / (2 * h);
                    }
                    snprintf(what, sizeof what, "output Jacobian %-9s %s", pk_act_name((pk_act)act), param ? "ntk" : "standard");
                    check(what, rel_err(J, Jfd, P), 1e-7);
                    for (size_t l = 0; l < m.n_layers; l++) free(dl[l]);
                    free(J); free(Jfd);
                }
                pk_stepper_free(&st);
                free(w); free(G); free(Gfd);
            }
    printf("%d passed, %d failed\n", 2 * 7 * 3 + 2 * 7 - failures, failures);
    return failures ? 1 : 0;
}
