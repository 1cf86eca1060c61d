/* predict.c -- `pathkernel predict`: the outputs of a run's network at any
 * recorded step. */
#include "cli.h"

int cmd_predict(int argc, char **argv)
{
    const char *cmd = "predict";
    static const char *help =
        "usage: pathkernel predict RUN --data SPEC --out PRED.npy [options]\n\n"
        "  --data SPEC     inputs (any data spec; the run's standardisation is applied)\n"
        "  --first N, --random N, --data-seed S   select examples [all]\n"
        CLI_CSV_HELP_RUN
        "  --step N        step whose weights to use: init, final or 0..T [final]\n"
        "  --out FILE      (N, C) float64 outputs f(x) (logits for softmax/logistic)\n"
        "  --threads N     threads [all cores]\n";
    cli_run_args a;
    int rc = cli_run_args_parse(cmd, help, argc, argv, &a);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!a.data || !a.out) return cli_usage(cmd, "--data and --out are required");
    pk_run *run;
    double *w;
    size_t t;
    if ((rc = cli_run_weights(cmd, &a, &run, &w, &t))) return rc;
    pk_data d = {0};
    a.load.allow_unseen = 1;   /* labels are not needed */
    pk_status s = pk_run_load_data(run, a.data, &a.load, &d);
    if (!s) cli_data_warning(cmd, &d);
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
