/* Recorded runs (pk_record_*, MATH.md section 10) without Python, so that the
 * sanitizer build runs them too: a pathkernel run's own steps recorded as if
 * another trainer had taken them give bit for bit the same explanation
 * (every recorded step is the optimiser's, the step residual is 0); a batch
 * of n examples with repeats is gathered; a tampered step is named; bad
 * recordings are refused. */
#include <pathkernel.h>

#include "run/run.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0, passes = 0;

static void check(const char *what, int ok, double value)
{
    printf("%-66s %.3e %s\n", what, value, ok ? "ok" : "FAIL");
    if (ok) passes++; else failures++;
}

#define TRY(call) do { pk_status s_ = (call); if (s_) { printf("%s: %s\n", #call, pk_last_error()); return 1; } } while (0)

/* Record the steps of `run` (weights and state read back) into dir; step
 * `bad` (1..T, 0: none) gets half a step more than the run took. */
static int record_copy(pk_run *run, const pk_data *train, const char *dir, size_t bad)
{
    const pk_model *m = pk_run_model(run);
    const pk_optim *op = pk_run_optim(run);
    size_t P = pk_model_n_params(m), S = pk_optim_state_len(op), T = pk_run_steps(run);
    double *w = malloc(P * sizeof *w), *prev = malloc(P * sizeof *prev), *state = calloc(S * P + 1, sizeof *state);
    char spec[256];
    pk_model_spec(m, spec, sizeof spec);
    pk_train_opts to = pk_train_opts_defaults();
    to.model = spec;
    to.loss = pk_run_loss(run);
    to.optim = *op;
    to.out_dir = dir;
    pk_record_opts ro = pk_record_opts_defaults();
    ro.origin = "test_record";
    pk_recorder *rec;
    TRY(pk_run_weights(run, 0, w));
    TRY(pk_record_begin(train, &to, &ro, w, &rec));
    for (size_t t = 0; t < T; t++) {
        memcpy(prev, w, P * sizeof *w);
        TRY(pk_replay_load(run, t + 1, w, state));
        if (t + 1 == bad)
            for (size_t j = 0; j < P; j++) w[j] += 0.5 * (w[j] - prev[j]);
        const uint32_t *idx;
        size_t nb;
        TRY(pk_run_batch(run, t, &idx, &nb));
        TRY(pk_record_step(rec, pk_run_lr(run, t), idx, nb, w, state));
    }
    TRY(pk_record_end(rec));
    free(w); free(prev); free(state);
    return 0;
}

int main(void)
{
    const size_t n = 36, d = 5, C = 3, Q = 4;
    double *x = malloc(n * d * sizeof *x), *y = malloc(n * sizeof *y);
    for (size_t i = 0; i < n * d; i++) x[i] = sin(0.7 * (double)i) + 0.3 * cos(1.9 * (double)(i % 7));
    for (size_t i = 0; i < n; i++) y[i] = (double)(i % C);
    pk_data train = {.n = n, .d = d, .ty = 1, .x = x, .y = y};
    char dir[] = "/tmp/pk-test-record-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char path[4][96];
    const char *names[4] = {"run", "rec", "bad", "rep"};
    for (int k = 0; k < 4; k++) snprintf(path[k], sizeof path[k], "%s/%s", dir, names[k]);

    pk_optim_kind kinds[2] = {PK_OPTIM_MOMENTUM, PK_OPTIM_ADAMW};
    for (int kk = 0; kk < 2; kk++) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf %s/run %s/rec %s/bad", dir, dir, dir);
        if (system(cmd)) return 1;
        pk_train_opts to = pk_train_opts_defaults();
        to.model = "mlp:7:tanh";
        to.optim.kind = kinds[kk];
        to.optim.lr = kinds[kk] == PK_OPTIM_ADAMW ? 0.01 : 0.1;
        to.optim.weight_decay = 0.01;
        to.optim.batch = 10;
        to.optim.schedule = PK_SCHED_STEP;
        to.optim.step_every = 4;
        to.steps = 9;
        to.out_dir = path[0];
        TRY(pk_train(&train, &to, NULL, NULL));
        pk_run *run, *rec;
        TRY(pk_run_open(path[0], &run));
        TRY(pk_run_attach_data(run, &train));
        if (record_copy(run, &train, path[1], 0)) return 1;
        TRY(pk_run_open(path[1], &rec));
        TRY(pk_run_attach_data(rec, &train));
        check("a recorded run says who took its steps",
              pk_run_recorded(rec) && !strcmp(pk_run_recorded(rec), "test_record float64") && !pk_run_recorded(run), 0);
        pk_explain_opts eo = pk_explain_opts_defaults();
        TRY(pk_quad_parse("gl2", &eo.quad));
        pk_explain a, b;
        TRY(pk_run_explain(run, x, Q, &eo, &a));
        TRY(pk_run_explain(rec, x, Q, &eo, &b));
        size_t at;
        double resid = pk_run_step_residual(rec, &at);
        check(kk ? "adamw: the recorded steps are the optimiser's, bit for bit" :
                   "momentum: the recorded steps are the optimiser's, bit for bit", resid == 0 && at >= 1, resid);
        int same = !memcmp(a.contrib, b.contrib, Q * n * C * sizeof *a.contrib) &&
                   !memcmp(a.kernel, b.kernel, Q * n * sizeof *a.kernel) &&
                   !memcmp(a.regularisation, b.regularisation, Q * C * sizeof *a.regularisation) &&
                   !memcmp(a.pred, b.pred, Q * C * sizeof *a.pred);
        check("the recorded run explains bit for bit as the run it copies", same, b.max_rel_err);
        pk_explain_free(&a);
        pk_explain_free(&b);
        pk_run_close(rec);

        /* a step half again as long as the optimiser's is named */
        if (record_copy(run, &train, path[2], 6)) return 1;
        TRY(pk_run_open(path[2], &rec));
        TRY(pk_run_attach_data(rec, &train));
        pk_status s = pk_run_explain(rec, x, Q, &eo, &b);
        check("a step that is not the optimiser's fails the replay, named",
              s == PK_ERR_STATE && strstr(pk_last_error(), "recorded step 6 does not follow"), (double)s);
        if (!s) pk_explain_free(&b);
        double *K = malloc(Q * Q * sizeof *K);
        s = pk_run_path_kernel(rec, x, Q, x, Q, PK_KMODE_TRACE, &eo.quad, NULL, NULL, K);
        check("... and the path kernel's replay", s == PK_ERR_STATE && strstr(pk_last_error(), "recorded step 6"),
              (double)s);
        free(K);
        pk_run_close(rec);
        pk_run_close(run);
    }

    /* full batches of any examples: repeats and another order, gathered */
    {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf %s/rep", dir);
        if (system(cmd)) return 1;
        pk_model *m;
        TRY(pk_model_new("mlp:4:tanh", d, C, PK_PARAM_STANDARD, 1.0, 0.0, &m));
        size_t P = pk_model_n_params(m);
        double *w = malloc(P * sizeof *w), *G = malloc(P * sizeof *G);
        pk_model_init(m, 11, w);
        pk_train_opts to = pk_train_opts_defaults();
        to.model = "mlp:4:tanh";
        to.optim.kind = PK_OPTIM_SGD;
        to.optim.lr = 0.3;
        to.out_dir = path[3];
        pk_record_opts ro = pk_record_opts_defaults();
        pk_recorder *rec;
        TRY(pk_record_begin(&train, &to, &ro, w, &rec));
        uint32_t *idx = malloc((n + 4) * sizeof *idx);
        pk_stepper st;
        TRY(pk_stepper_init(&st, m, PK_LOSS_SOFTMAX, &train, n + 4, 0));
        TRY(pk_stepper_gather(&st));
        for (size_t t = 0; t < 3; t++) {
            size_t nb = t == 1 ? n + 4 : n; /* n examples with repeats; n + 4; n reversed */
            for (size_t j = 0; j < nb; j++) idx[j] = t == 2 ? (uint32_t)(n - 1 - j) : (uint32_t)((j * 7) % n) / (t ? 1 : 2) * (t ? 1 : 2);
            pk_stepper_step(&st, &to.optim, t, 0.3, idx, nb, w, NULL, G);
            TRY(pk_record_step(rec, 0.3, idx, nb, w, NULL));
        }
        uint32_t big = (uint32_t)n;
        pk_status s = pk_record_step(rec, 0.3, &big, 1, w, NULL);
        check("a batch index out of range is refused", s == PK_ERR_INPUT && strstr(pk_last_error(), "out of range"), 0);
        TRY(pk_record_end(rec));
        pk_run *run;
        TRY(pk_run_open(path[3], &run));
        TRY(pk_run_attach_data(run, &train));
        pk_explain_opts eo = pk_explain_opts_defaults();
        TRY(pk_quad_parse("gl4", &eo.quad));
        pk_explain e;
        TRY(pk_run_explain(run, x, Q, &eo, &e));
        size_t at;
        double resid = pk_run_step_residual(run, &at);
        check("batches of n examples with repeats and in another order", resid == 0 && at >= 1 && e.max_rel_err < 1e-9,
              e.max_rel_err);
        pk_explain_free(&e);
        pk_run_close(run);
        pk_stepper_free(&st);
        pk_model_free(m);
        free(w); free(G); free(idx);

        pk_recorder *none;
        snprintf(cmd, sizeof cmd, "rm -rf %s/rep", dir);
        if (system(cmd)) return 1;
        TRY(pk_record_begin(&train, &to, &ro, x, &none));
        s = pk_record_end(none);
        check("a recording without steps is refused", s == PK_ERR_INPUT && strstr(pk_last_error(), "no steps"), 0);
        s = pk_run_open(path[3], &run);
        check("... and stays an unfinished recording", s == PK_ERR_INPUT && strstr(pk_last_error(), "recording did not finish"), 0);
        s = pk_train_resume(path[3], NULL, NULL, NULL);
        check("which pk_train_resume refuses", s == PK_ERR_INPUT && strstr(pk_last_error(), "recorded from"), 0);
    }

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    free(x); free(y);
    printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
