/* selfinfluence.c -- `pathkernel selfinfluence`: the exact self-influence
 * of every training example of a run (MATH.md section 3). */
#include "cli.h"

static pk_status write_si_csv(const char *path, const pk_data *train, const double *si)
{
    pk_atomic a;
    pk_status s = pk_atomic_open(&a, path);
    if (s) return s;
    fputs("index,label,self_influence\n", a.f);
    for (size_t i = 0; i < train->n; i++) {
        fprintf(a.f, "%zu,", i);
        cli_put_num(a.f, train->y[i * train->ty]);
        fputc(',', a.f);
        cli_put_num(a.f, si[i]);
        fputc('\n', a.f);
    }
    return pk_atomic_commit(&a);
}

int cmd_selfinfluence(int argc, char **argv)
{
    const char *cmd = "selfinfluence";
    static const char *help =
        "usage: pathkernel selfinfluence RUN --out FILE.csv [--form loss|kernel] [--quad R]\n\n"
        "Exact self-influence of every training example of a gd/sgd run (MATH.md section 3,\n"
        "\"Self-influence\"), one row per example in data order: index,label,self_influence.\n"
        "  --form loss     SI_i = sum_{t: i in B_t} (eta_t/|B_t|) <gbar_i(t), g_i(w_t)>: how much example i's\n"
        "                  own gradient lowered its own loss along the path (quadrature-integrated TracIn) [default]\n"
        "  --form kernel   SI_i = trace K^p(x_i, x_i), the path kernel's diagonal\n"
        "  --quad R        left, mid, gl1..gl8, exact (piecewise-linear networks; the loss form is exact for mse) [gl2]\n"
        "  --threads N     threads [all cores]\n";
    const char *out = NULL, *form_name = "loss", *dir;
    pk_si_form form;
    pk_quad quad;
    pk_quad_parse("gl2", &quad);
    const cli_opt opts[] = {{"out", CLI_STR, &out, NULL}, {"form", CLI_STR, &form_name, NULL},
                            {"quad", CLI_QUAD, &quad, NULL}, {"threads", CLI_THREADS, NULL, NULL},
                            {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (pk_si_form_parse(form_name, &form)) return cli_error(cmd, PK_ERR_INPUT);
    if (!out) return cli_usage(cmd, "--out FILE is required");
    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    const pk_data *train = NULL;
    size_t N = pk_run_n_train(run);
    double *si = pk_alloc(N ? N : 1, sizeof *si);
    s = si ? pk_run_self_influence(run, form, &quad, si) : PK_ERR_NOMEM;
    if (!s) s = pk_run_train_data(run, &train);
    if (!s) s = write_si_csv(out, train, si);
    if (!s) printf("wrote %s: %s self-influence of %zu training examples over %zu steps (%s)\n", out,
                   form == PK_SI_LOSS ? "loss-form" : "kernel-form", N, pk_run_steps(run), quad.name);
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(si);
    pk_run_close(run);
    return rc;
}
