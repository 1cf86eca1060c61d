/* The C API end to end, with nothing but the public header: train a run,
 * reopen it, check tangent-kernel invariants (symmetry, K(x,x) = |J_x|^2,
 * trace = sum of the diagonal of the blocks, thread-count independence),
 * the completeness of the path-kernel representation and the symmetry of
 * the paper's path kernel. */
#include <pathkernel.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0, passes = 0;

static void check(const char *what, int ok, double value)
{
    printf("%-60s %.3e %s\n", what, value, ok ? "ok" : "FAIL");
    if (ok) passes++; else failures++;
}

/* The inputs: standard normals from a seeded generator of our own (the
 * library's is internal), the same numbers as the library's for a seed:
 * xoshiro256** seeded by splitmix64, Box-Muller's cosine branch. */
typedef struct rng { uint64_t s[4]; } rng;

static void rng_seed(rng *r, uint64_t x)
{
    for (int i = 0; i < 4; i++) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        r->s[i] = z ^ (z >> 31);
    }
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static double rng_uniform(rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return (double)(out >> 11) * 0x1.0p-53;
}

static double rng_normal(rng *r)
{
    double u1 = 1.0 - rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#define TRY(call) do { pk_status s_ = (call); if (s_) { printf("%s: %s\n", #call, pk_last_error()); return 1; } } while (0)

int main(void)
{
    const size_t n = 40, d = 6, C = 3, Q = 5;
    rng r;
    rng_seed(&r, 3);
    double *x = malloc(n * d * sizeof *x), *y = malloc(n * sizeof *y);
    for (size_t i = 0; i < n * d; i++) x[i] = rng_normal(&r);
    for (size_t i = 0; i < n; i++) y[i] = (double)(i % C);
    pk_data train = {.n = n, .d = d, .ty = 1, .x = x, .y = y};

    char dir[] = "/tmp/pk-test-api-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char run_dir[64];
    snprintf(run_dir, sizeof run_dir, "%s/run", dir);
    pk_train_opts to = pk_train_opts_defaults();
    to.model = "mlp:12,8:tanh";
    to.loss = PK_LOSS_SOFTMAX;
    to.optim.kind = PK_OPTIM_SGD;
    to.optim.batch = 16;
    to.optim.lr = 0.2;
    to.steps = 30;
    to.keep = 7;
    to.out_dir = run_dir;
    TRY(pk_train(&train, &to, NULL, NULL));

    pk_run *run;
    TRY(pk_run_open(run_dir, &run));
    TRY(pk_run_attach_data(run, &train));
    const pk_model *m = pk_run_model(run);
    size_t P = pk_model_n_params(m);
    double *w = malloc(P * sizeof *w);
    TRY(pk_run_weights(run, 17, w)); /* between checkpoints: replayed */

    /* tangent kernel invariants */
    double *K = malloc(n * n * C * C * sizeof *K), *Kt = malloc(n * n * sizeof *Kt);
    TRY(pk_kernel_tangent(m, w, x, n, x, n, PK_KMODE_FULL, K));
    TRY(pk_kernel_tangent(m, w, x, n, x, n, PK_KMODE_TRACE, Kt));
    double sym = 0, tr = 0, scale = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double t = 0;
            for (size_t k = 0; k < C; k++) {
                for (size_t k2 = 0; k2 < C; k2++) {
                    double a = K[((i * n + j) * C + k) * C + k2], b = K[((j * n + i) * C + k2) * C + k];
                    sym = fmax(sym, fabs(a - b));
                    scale = fmax(scale, fabs(a));
                }
                t += K[((i * n + j) * C + k) * C + k];
            }
            tr = fmax(tr, fabs(t - Kt[i * n + j]));
        }
    check("tangent kernel symmetric: K(x,y)_{kk'} = K(y,x)_{k'k}", sym <= 1e-13 * scale, sym / scale);
    check("trace mode = sum of the diagonal of the full blocks", tr <= 1e-13 * scale, tr / scale);

    /* thread-count independence of the kernel */
    double *K1 = malloc(n * n * C * C * sizeof *K1);
    pk_threads_set(1);
    TRY(pk_kernel_tangent(m, w, x, n, x, n, PK_KMODE_FULL, K1));
    pk_threads_set(2);
    TRY(pk_kernel_tangent(m, w, x, n, x, n, PK_KMODE_FULL, K));
    check("tangent kernel bit-identical with 1 and 2 threads", !memcmp(K, K1, n * n * C * C * sizeof *K), 0);

    /* completeness of the path-kernel representation, through the API */
    pk_explain_opts eo = pk_explain_opts_defaults();
    TRY(pk_quad_parse("gl4", &eo.quad));
    eo.mode = PK_KMODE_FULL;
    pk_explain e;
    TRY(pk_run_explain(run, x, Q, &eo, &e));
    double err = 0, den = 0, sum_err = 0;
    for (size_t q = 0; q < Q; q++)
        for (size_t k = 0; k < C; k++) {
            double s = 0;
            for (size_t i = 0; i < n; i++) s += e.contrib[(q * n + i) * C + k];
            err = fmax(err, fabs(e.pred[q * C + k] - e.bias[q * C + k] - s));
            den = fmax(den, fabs(e.pred[q * C + k] - e.bias[q * C + k]));
            sum_err = fmax(sum_err, fabs(s - e.contrib_sum[q * C + k]));
        }
    check("pred = bias + sum_i contrib (gl4)", err <= 1e-9 * den, err / den);
    check("contrib_sum = sum_i contrib", sum_err <= 1e-12 * den, sum_err / den);
    /* both are at the rounding floor: they may differ by rounding alone */
    check("summary max_rel_err agrees", fabs(e.max_rel_err - err / den) <= 1e-14, e.max_rel_err);
    /* the path kernel of an example never in a batch would be 0; here all
     * were: the diagonal blocks of K^p(x_i, x_i) are positive */
    double minpos = INFINITY;
    for (size_t q = 0; q < Q; q++)
        for (size_t k = 0; k < C; k++) minpos = fmin(minpos, e.kernel[((q * n + q) * C + k) * C + k]);
    check("path kernel K^p(x_i, x_i)_kk > 0", minpos > 0, minpos);
    double *pred = malloc(Q * C * sizeof *pred);
    TRY(pk_run_weights(run, pk_run_steps(run), w));
    TRY(pk_model_predict(m, w, x, Q, pred));
    check("explain pred = pk_model_predict at the final weights", !memcmp(pred, e.pred, Q * C * sizeof *pred), 0);

    /* the paper's path kernel: explain's kernel rows are pk_run_path_kernel's
     * (queries against the training set), and the training set against
     * itself is symmetric bit for bit */
    double *Kp = malloc(n * n * C * C * sizeof *Kp), *Kq = malloc(Q * n * C * C * sizeof *Kq);
    TRY(pk_run_path_kernel(run, x, Q, x, n, PK_KMODE_FULL, &eo.quad, NULL, NULL, Kq));
    check("explain's kernel = pk_run_path_kernel (bits)", !memcmp(Kq, e.kernel, Q * n * C * C * sizeof *Kq), 0);
    TRY(pk_run_path_kernel(run, x, n, x, n, PK_KMODE_FULL, &eo.quad, NULL, NULL, Kp));
    int mirror = 1;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            for (size_t k = 0; k < C; k++)
                for (size_t k2 = 0; k2 < C; k2++)
                    mirror &= Kp[((i * n + j) * C + k) * C + k2] == Kp[((j * n + i) * C + k2) * C + k];
    check("path kernel K^p(x, x') = K^p(x', x)^T bit for bit", mirror, 0);
    pk_explain_free(&e);
    free(Kp); free(Kq);

    pk_run_close(run);
    free(x); free(y); free(w); free(K); free(Kt); free(K1); free(pred);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
