/* Finite-difference checks of the backward pass: every activation x every
 * loss x both parameterisations, and of the per-output deltas that tangent
 * kernels use (relative error 1e-7); the tangent kernel's diagonal against
 * the squared norm of backward-pass gradients, and the fused tangent kernel
 * against the layer-by-layer one (1e-12). Fails (exit 1) on any miss. */
#include "kernel/kernel.h"

#include <math.h>
#include <string.h>

static int failures = 0, checks = 0;

static void check(const char *what, double err, double tol)
{
    int ok = err < tol;
    checks++;
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
    const pk_model *m = st->m;
    pk_model_forward(m, w, st->data->x, n, st->tape);
    return pk_loss_eval(st->loss, pk_tape_out(m, st->tape), st->data->y, n, m->n_out, st->data->ty, NULL);
}

/* Gfd (P) = central differences (step 1e-6) of the mean loss over the
 * stepper's n examples. */
static void fd_gradient(pk_stepper *st, double *w, size_t P, size_t n, double *Gfd)
{
    const double h = 1e-6;
    for (size_t j = 0; j < P; j++) {
        double w0 = w[j];
        w[j] = w0 + h;
        double lp = mean_loss(st, w, n);
        w[j] = w0 - h;
        double lm = mean_loss(st, w, n);
        w[j] = w0;
        Gfd[j] = (lp - lm) / (2 * h);
    }
}

/* K(x, x)_kk = |J_{x,k}|^2 with J from a backward pass seeded with e_k, and
 * the fused tangent kernel = the layer-by-layer one, full and trace. */
static void kernel_checks(const pk_model *m, const double *w, const double *x, size_t n, const char *name)
{
    size_t C = m->n_out, P = m->n_params;
    double *K = malloc(n * n * C * C * sizeof *K), *Kg = malloc(n * n * C * C * sizeof *K);
    double *J = malloc(P * sizeof *J), *R = calloc(C, sizeof *R), worst = 0;
    pk_tape *t = pk_tape_new(m, 1);
    char what[128];
    if (pk_kernel_tangent(m, w, x, n, x, n, PK_KMODE_FULL, K)) { puts(pk_last_error()); failures++; return; }
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < C; k++) {
            for (size_t c = 0; c < C; c++) R[c] = c == k;
            pk_model_forward(m, w, x + i * m->n_in, 1, t);
            pk_model_backward(m, w, t, R, 1.0, J);
            double nrm = 0;
            for (size_t p = 0; p < P; p++) nrm += J[p] * J[p];
            worst = fmax(worst, fabs(nrm - K[((i * n + i) * C + k) * C + k]) / nrm);
        }
    snprintf(what, sizeof what, "K(x,x)_kk = |grad f_k|^2 %s", name);
    check(what, worst, 1e-12);
    if (pk_model_mlp_act(m) < 0) {
        /* one path for any model: its trace (rows read as one, MATH.md
         * section 4) against the sum of its full blocks' diagonals */
        double *Kt = malloc(n * n * sizeof *Kt);
        if (pk_kernel_tangent(m, w, x, n, x, n, PK_KMODE_TRACE, Kt)) { puts(pk_last_error()); failures++; return; }
        for (size_t ij = 0; ij < n * n; ij++) {
            Kg[ij] = 0;
            for (size_t k = 0; k < C; k++) Kg[ij] += K[(ij * C + k) * C + k];
        }
        snprintf(what, sizeof what, "trace kernel = sum of full diagonals %s", name);
        check(what, rel_err(Kt, Kg, n * n), 1e-12);
        free(Kt);
    }
    for (int trace = 0; pk_model_mlp_act(m) >= 0 && trace < 2; trace++) {
        pk_kmode mode = trace ? PK_KMODE_TRACE : PK_KMODE_FULL;
        size_t len = n * n * (trace ? 1 : C * C);
        if (pk_kernel_tangent(m, w, x, n, x, n, mode, K) ||
            pk_kernel_tangent_generic(m, w, x, n, x, n, mode, Kg, NULL, NULL)) { puts(pk_last_error()); failures++; return; }
        snprintf(what, sizeof what, "fused = layer-by-layer kernel, %s %s", trace ? "trace" : "full", name);
        check(what, rel_err(K, Kg, len), 1e-12);
    }
    pk_tape_free(t);
    free(K); free(Kg); free(J); free(R);
}

/* Convolutional models on 2 x 7 x 7 images: the loss gradient (softmax,
 * both parameterisations) against central differences, and the kernel
 * checks above; the shapes take conv2d with stride 1 and 2, padding 0 and
 * 2, both poolings, flatten, and both forms of the conv2d kernel (MATH.md
 * section 8: the last spec's second conv2d takes form B). */
static void conv_checks(void)
{
    static const char *const specs[] = {
        "in:2,7,7;conv:3,3;tanh;flatten;dense",
        "in:2,7,7;conv:3,3,stride=2,pad=2;tanh;avgpool:2;flatten;dense",
        "in:2,7,7;conv:4,3,pad=2;softplus;maxpool:2,stride=1;conv:5,2,stride=2;tanh;flatten;dense:6;tanh;dense",
        "in:2,7,7;conv:8,3,stride=2;tanh;conv:16,2;tanh;flatten;dense",
        /* residual blocks (MATH.md section 9): same shape, a 1x1 conv projection
         * with stride 2, a dense projection, a block whose first layer is an
         * activation, nested blocks; dropout with the stepper's masks (fixed:
         * the same seed, step and examples in every evaluation) */
        "in:2,7,7;conv:3,3,pad=1;tanh;res(conv:3,3,pad=1;tanh;conv:3,3,pad=1);tanh;flatten;dense",
        "in:2,7,7;conv:4,3;tanh;res(conv:6,3,stride=2,pad=1;tanh;conv:6,3,pad=1;proj);tanh;flatten;dense",
        "in:2,7,7;flatten;dense:8;tanh;res(tanh;dense:5;proj);res(dense:5);dense",
        "in:2,7,7;flatten;dense:6;res(res(dense:6;tanh;dense:6);tanh;dense:6);tanh;dense",
        "in:2,7,7;conv:3,3;dropout:0.5;tanh;flatten;dense:6;tanh;res(dense:6;tanh;dropout:0.3;dense:6);dense",
        "in:2,7,7;flatten;dense:8;tanh;dropout:0.5;res(dense:8;tanh;dense:8);tanh;dense",
    };
    const size_t n = 5, d = 98, C = 3;
    pk_rng r;
    pk_rng_seed(&r, 7);
    double x[5 * 98], y[5];
    for (size_t i = 0; i < n * d; i++) x[i] = pk_rng_normal(&r);
    for (size_t i = 0; i < n; i++) y[i] = (double)(i % C);
    pk_data data = {.n = n, .d = d, .ty = 1, .x = x, .y = y};
    for (size_t k = 0; k < sizeof specs / sizeof *specs; k++)
        for (int param = 0; param < 2; param++) {
            pk_model *m;
            if (pk_model_new(specs[k], d, C, (pk_param)param, 1.3, 0.4, &m)) { puts(pk_last_error()); failures++; return; }
            size_t P = m->n_params;
            double *w = malloc(P * sizeof *w), *G = malloc(P * sizeof *G), *Gfd = malloc(P * sizeof *G);
            pk_model_init(m, 5 + k, w);
            pk_stepper st;
            pk_stepper_init(&st, m, PK_LOSS_SOFTMAX, &data, n, 0x5eed);
            st.step = 3;
            pk_stepper_grad(&st, w, NULL, n, G);
            fd_gradient(&st, w, P, n, Gfd);
            char what[160];
            snprintf(what, sizeof what, "loss gradient %s %s", specs[k] + 9, param ? "ntk" : "standard");
            check(what, rel_err(G, Gfd, P), 1e-7);
            snprintf(what, sizeof what, "%s %s", specs[k] + 9, param ? "ntk" : "std");
            kernel_checks(m, w, x, n, what);
            /* the training side (the stepper's tape, dropout masks drawn):
             * per-output deltas against backward passes seeded with e_k */
            double *dl[PK_MAX_MODEL_LAYERS], *R = calloc(n * C, sizeof *R), diag[5], want[5] = {0};
            pk_deltas_new(m, n, dl);
            pk_model_output_deltas(m, w, st.tape, dl);
            pk_side side = pk_side_outputs(m, st.tape, dl, 1);
            pk_side_diagonal(m, &side, &side, diag);
            for (size_t i = 0; i < n; i++)
                for (size_t c = 0; c < C; c++) {
                    memset(R, 0, n * C * sizeof *R);
                    R[i * C + c] = 1.0;
                    pk_model_backward(m, w, st.tape, R, 1.0, G);
                    for (size_t j = 0; j < P; j++) want[i] += G[j] * G[j];
                }
            snprintf(what, sizeof what, "training-side |grad f|^2 %s %s", specs[k] + 9, param ? "ntk" : "std");
            check(what, rel_err(diag, want, n), 1e-12);
            pk_deltas_free(m, dl);
            free(R);
            pk_stepper_free(&st);
            pk_model_free(m);
            free(w); free(G); free(Gfd);
        }
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
                pk_data data = {.n = n, .d = d, .ty = loss == PK_LOSS_MSE ? C : 1, .x = x,
                                .y = loss == PK_LOSS_MSE ? ym : loss == PK_LOSS_LOGISTIC ? yb : yc};
                char spec[64];
                snprintf(spec, sizeof spec, "mlp:6,4:%s", pk_act_name((pk_act)act));
                pk_model *m;
                if (pk_model_new(spec, d, out, (pk_param)param, 1.3, 0.4, &m)) { puts(pk_last_error()); return 1; }
                size_t P = m->n_params;
                double *w = malloc(P * sizeof *w), *G = malloc(P * sizeof *G), *Gfd = malloc(P * sizeof *G);
                pk_model_init(m, 7 + (uint64_t)act, w);
                pk_stepper st;
                pk_stepper_init(&st, m, (pk_loss)loss, &data, n, 0);
                pk_stepper_grad(&st, w, NULL, n, G);
                const double h = 1e-6; /* the output Jacobian's step below */
                fd_gradient(&st, w, P, n, Gfd);
                char what[128];
                snprintf(what, sizeof what, "loss gradient %-8s %-9s %s", pk_loss_name((pk_loss)loss),
                         pk_act_name((pk_act)act), param ? "ntk" : "standard");
                check(what, rel_err(G, Gfd, P), 1e-7);

                /* Per-output deltas: J_k of one example, assembled from the
                 * structured form (MATH.md section 4), against central differences
                 * of f_k. */
                if (loss == PK_LOSS_MSE) {
                    double *dl[PK_MAX_MODEL_LAYERS];
                    if (pk_deltas_new(m, n, dl)) { puts(pk_last_error()); return 1; }
                    pk_model_forward(m, w, x, n, st.tape);
                    pk_model_output_deltas(m, w, st.tape, dl);
                    double *J = malloc(P * sizeof *J), *Jfd = malloc(P * sizeof *J);
                    size_t i = 3, k = 1;
                    for (size_t l = 0; l < m->n_weight; l++) {
                        const pk_layer *lw = pk_model_weight(m, l);
                        size_t din = lw->in, dout = lw->out;
                        const double *del = dl[l] + (i * C + k) * dout, *a = pk_tape_in(st.tape, m->weight[l]) + i * din;
                        for (size_t o = 0; o < dout; o++) {
                            for (size_t q = 0; q < din; q++) J[lw->w_off + o * din + q] = lw->sw * del[o] * a[q];
                            J[lw->b_off + o] = lw->sb * del[o];
                        }
                    }
                    for (size_t j = 0; j < P; j++) {
                        double w0 = w[j], f[2];
                        for (int s = 0; s < 2; s++) {
                            w[j] = w0 + (s ? -h : h);
                            pk_model_forward(m, w, x, n, st.tape);
                            f[s] = pk_tape_out(m, st.tape)[i * C + k];
                        }
                        w[j] = w0;
                        Jfd[j] = (f[0] - f[1]) / (2 * h);
                    }
                    snprintf(what, sizeof what, "output Jacobian %-9s %s", pk_act_name((pk_act)act), param ? "ntk" : "standard");
                    check(what, rel_err(J, Jfd, P), 1e-7);
                    pk_deltas_free(m, dl);
                    free(J); free(Jfd);
                    snprintf(what, sizeof what, "%-9s %s", pk_act_name((pk_act)act), param ? "ntk" : "standard");
                    kernel_checks(m, w, x, n, what);
                }
                pk_stepper_free(&st);
                pk_model_free(m);
                free(w); free(G); free(Gfd);
            }
    /* one and three layers: the fused kernel's edge cases */
    for (int depth = 0; depth < 2; depth++) {
        pk_model *m;
        if (pk_model_new(depth ? "mlp:6,5,4:tanh" : "linear", d, C, PK_PARAM_STANDARD, 1, 0, &m)) return 1;
        double *w = malloc(m->n_params * sizeof *w);
        pk_model_init(m, 11, w);
        kernel_checks(m, w, x, n, depth ? "mlp:6,5,4:tanh" : "linear");
        pk_model_free(m);
        free(w);
    }
    conv_checks();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
