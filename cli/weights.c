/* weights.c -- `pathkernel weights`: a step's weights as W1.npy b1.npy ...
 * (nn.Linear layout). */
#include "cli.h"

int cmd_weights(int argc, char **argv)
{
    const char *cmd = "weights";
    static const char *help =
        "usage: pathkernel weights RUN --out DIR [--step N]\n\n"
        "  --step N   init, final or 0..T [final]\n"
        "  --out DIR  writes W1.npy b1.npy W2.npy ... as float64, nn.Linear layout (W is d_out x d_in),\n"
        "             the effective weights of the forward pass (ntk scales folded in)\n";
    cli_run_args a;
    int rc = cli_run_args_parse(cmd, help, argc, argv, &a);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!a.out) return cli_usage(cmd, "--out DIR is required");
    pk_run *run;
    double *w;
    size_t t;
    if ((rc = cli_run_weights(cmd, &a, &run, &w, &t))) return rc;
    const pk_model *m = pk_run_model(run);
    int existed = cli_dir_exists(a.out);
    pk_group_begin(); /* all layers or none */
    pk_status s = pk_group_end(pk_model_weights_write(m, w, a.out));
    if (s) cli_drop_new_dir(a.out, existed);
    if (!s) printf("wrote %zu layers of step %zu to %s\n", pk_model_n_weight_layers(m), t, a.out);
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(w);
    pk_run_close(run);
    return rc;
}
