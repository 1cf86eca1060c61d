/* run_cmds.c -- commands that read a run: predict, weights, info. */
#include "cli.h"
#include "kernel/kernel.h"

#include <string.h>

/* Options shared by the commands that read a run. */
typedef struct run_args {
    const char *run, *data, *out, *step;
    pk_load_opts load;
} run_args;

static int parse_run_args(const char *cmd, const char *help, int argc, char **argv, run_args *a)
{
    memset(a, 0, sizeof *a);
    a->load = pk_load_opts_defaults();
    const cli_opt opts[] = {{"data", CLI_STR, &a->data, NULL}, {"out", CLI_STR, &a->out, NULL},
                            {"step", CLI_STR, &a->step, NULL}, CLI_SELECT(a->load),
                            {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    return cli_parse(cmd, help, argc, argv, opts, &a->run, 1);
}

/* Open the run and read the weights of the requested step (default: final). */
static int open_weights(const char *cmd, const run_args *a, pk_run **run, double **w, size_t *t)
{
    pk_status s = pk_run_open(a->run, run);
    if (s) return cli_error(cmd, s);
    *t = pk_run_steps(*run);
    if (a->step && cli_step(cmd, a->step, pk_run_steps(*run), t)) { pk_run_close(*run); return EXIT_BAD_INPUT; }
    *w = pk_alloc(pk_run_model(*run)->n_params, sizeof **w);
    s = *w ? pk_run_weights(*run, *t, *w) : PK_ERR_NOMEM;
    if (s) { free(*w); pk_run_close(*run); return cli_error(cmd, s); }
    return 0;
}

int cmd_predict(int argc, char **argv)
{
    const char *cmd = "predict";
    static const char *help =
        "usage: pathkernel predict RUN --data SPEC --out PRED.npy [options]\n\n"
        "  --data SPEC     inputs (any data spec; the run's standardisation is applied)\n"
        "  --first N, --random N, --data-seed S   select examples [all]\n"
        "  --step N        step whose weights to use: init, final or 0..T [final]\n"
        "  --out FILE      (N, C) float64 outputs f(x) (logits for softmax/logistic)\n"
        "  --threads N     threads [all cores]\n";
    run_args a;
    int rc = parse_run_args(cmd, help, argc, argv, &a);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!a.data || !a.out) return cli_usage(cmd, "--data and --out are required");
    pk_run *run;
    double *w;
    size_t t;
    if ((rc = open_weights(cmd, &a, &run, &w, &t))) return rc;
    pk_data d = {0};
    pk_status s = pk_run_load_data(run, a.data, &a.load, &d);
    const pk_model *m = pk_run_model(run);
    size_t C = pk_model_n_outputs(m);
    double *f = s ? NULL : pk_alloc(d.n, C * sizeof *f);
    if (!s && !f) s = PK_ERR_NOMEM;
    if (!s) s = pk_model_predict(m, w, d.x, d.n, f);
    if (!s) {
        size_t shape[2] = {d.n, C};
        s = pk_npy_write(a.out, f, 2, shape);
    }
    if (!s) printf("wrote %s: (%zu, %zu) outputs at step %zu\n", a.out, d.n, C, t);
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(f);
    free(w);
    pk_data_free(&d);
    pk_run_close(run);
    return rc;
}

int cmd_weights(int argc, char **argv)
{
    const char *cmd = "weights";
    static const char *help =
        "usage: pathkernel weights RUN --out DIR [--step N]\n\n"
        "  --step N   init, final or 0..T [final]\n"
        "  --out DIR  writes W1.npy b1.npy W2.npy ... as float64, nn.Linear layout (W is d_out x d_in),\n"
        "             the effective weights of the forward pass (ntk scales folded in)\n";
    run_args a;
    int rc = parse_run_args(cmd, help, argc, argv, &a);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!a.out) return cli_usage(cmd, "--out DIR is required");
    pk_run *run;
    double *w;
    size_t t;
    if ((rc = open_weights(cmd, &a, &run, &w, &t))) return rc;
    const pk_model *m = pk_run_model(run);
    int existed = cli_dir_exists(a.out);
    pk_group_begin(); /* all layers or none */
    pk_status s = pk_group_end(pk_weights_export(m, w, a.out));
    if (s) cli_drop_new_dir(a.out, existed);
    if (!s) printf("wrote %zu layers of step %zu to %s\n", m->n_layers, t, a.out);
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(w);
    pk_run_close(run);
    return rc;
}

int cmd_info(int argc, char **argv)
{
    const char *cmd = "info";
    static const char *help = "usage: pathkernel info RUN\n";
    run_args a;
    int rc = parse_run_args(cmd, help, argc, argv, &a);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    pk_run *run;
    pk_status s = pk_run_open(a.run, &run);
    if (s) return cli_error(cmd, s);
    const pk_model *m = pk_run_model(run);
    const pk_optim *op = pk_run_optim(run);
    char spec[256];
    pk_model_spec(m, spec, sizeof spec);
    size_t T = pk_run_steps(run);
    printf("run       %s\n", a.run);
    printf("model     %s, %zu -> %zu, %zu parameters, %s parameterisation", spec, pk_model_n_inputs(m),
           pk_model_n_outputs(m), pk_model_n_params(m), pk_model_param(m) == PK_PARAM_NTK ? "ntk" : "standard");
    if (m->param == PK_PARAM_NTK) printf(" (sigma_w %g, sigma_b %g)", m->sigma_w, m->sigma_b);
    printf("\nloss      %s\n", pk_loss_name(pk_run_loss(run)));
    printf("optimiser %s, lr %g (%s schedule)", pk_optim_name(op->kind), op->lr, pk_schedule_name(op->schedule));
    if (op->batch) printf(", batch %zu", op->batch);
    if (op->kind == PK_OPTIM_MOMENTUM) printf(", momentum %g", op->momentum);
    if (op->kind == PK_OPTIM_ADAM || op->kind == PK_OPTIM_ADAMW)
        printf(", beta1 %g beta2 %g eps %g", op->beta1, op->beta2, op->eps);
    if (op->weight_decay != 0.0)
        printf(", weight decay %g (%s)", op->weight_decay, op->kind == PK_OPTIM_ADAMW ? "decoupled" : "L2");
    printf("\ndata      %s: %zu examples, fingerprint %016llx%s\n", pk_run_data_spec(run), pk_run_n_train(run),
           (unsigned long long)pk_run_fingerprint(run), pk_run_mean(run) ? ", standardised" : "");
    printf("steps     %zu, weights stored every %zu", T, pk_run_keep(run));
    if (T) printf("; batch loss %.6g at step 1, %.6g at step %zu", pk_run_batch_loss(run, 0), pk_run_batch_loss(run, T - 1), T);
    printf("\n");
    pk_run_close(run);
    return EXIT_OK;
}
