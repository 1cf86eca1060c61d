/* info.c -- `pathkernel info`: what a run is, in a few lines. */
#include "cli.h"

int cmd_info(int argc, char **argv)
{
    const char *cmd = "info";
    static const char *help = "usage: pathkernel info RUN\n";
    cli_run_args a;
    int rc = cli_run_args_parse(cmd, help, argc, argv, &a);
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
    if (pk_model_param(m) == PK_PARAM_NTK)
        printf(" (sigma_w %g, sigma_b %g)", pk_model_sigma_w(m), pk_model_sigma_b(m));
    printf("\nloss      %s\n", pk_loss_name(pk_run_loss(run)));
    if (pk_run_recorded(run))
        printf("optimiser %s, lr %g at step 1 (every step's recorded)", pk_optim_name(op->kind), op->lr);
    else
        printf("optimiser %s, lr %g (%s schedule)", pk_optim_name(op->kind), op->lr, pk_schedule_name(op->schedule));
    if (op->batch) printf(", batch %zu", op->batch);
    if (op->kind == PK_OPTIM_MOMENTUM) printf(", momentum %g", op->momentum);
    if (op->kind == PK_OPTIM_ADAM || op->kind == PK_OPTIM_ADAMW)
        printf(", beta1 %g beta2 %g eps %g", op->beta1, op->beta2, op->eps);
    if (op->weight_decay != 0.0)
        printf(", weight decay %g (%s)", op->weight_decay, op->kind == PK_OPTIM_ADAMW ? "decoupled" : "L2");
    printf("\ndata      %s: %zu examples, fingerprint %016llx%s\n", pk_run_data_spec(run), pk_run_n_train(run),
           (unsigned long long)pk_run_fingerprint(run), pk_run_mean(run) ? ", standardised" : "");
    if (pk_run_recorded(run))
        printf("recorded  steps taken by %s, every step's weights stored (the path kernel is computed between them)\n",
               pk_run_recorded(run));
    printf("steps     %zu, weights stored every %zu", T, pk_run_keep(run));
    if (T) printf("; batch loss %.6g at step 1, %.6g at step %zu", pk_run_batch_loss(run, 0), pk_run_batch_loss(run, T - 1), T);
    printf("\n");
    pk_run_close(run);
    return EXIT_OK;
}
