/* ntk.c -- `pathkernel ntk`: the infinite-width NTK or NNGP of an
 * architecture (MATH.md section 6), no training involved. */
#include "cli.h"

#include <string.h>

int cmd_ntk(int argc, char **argv)
{
    const char *cmd = "ntk";
    static const char *help =
        "usage: pathkernel ntk --model mlp:H1,...:relu|erf --x SPEC [--y SPEC] --out K.npy [options]\n\n"
        "Infinite-width kernel of a fully connected network in the ntk parameterisation\n"
        "(MATH.md section 6); the widths in --model are ignored, the depth counts.\n"
        "  --model SPEC       mlp:H1,H2,...:relu or ...:erf (hidden layers; linear = no hidden layer)\n"
        "  --sigma-w S        weight scale [1]\n"
        "  --sigma-b S        bias scale [0]\n"
        "  --x SPEC, --y SPEC inputs, any data spec [--y: same as --x]\n"
        "  --first N          use the first N examples of --x and --y [all]\n"
        "  --get K            ntk or nngp [ntk]\n"
        "  --out FILE         (N_x, N_y) float64 .npy, the kernel of each output (outputs are independent)\n"
        "  --threads N        threads [all cores]\n";
    const char *model = NULL, *xs = NULL, *ys = NULL, *out = NULL, *get = "ntk";
    double sw = 1.0, sb = 0.0;
    pk_load_opts lo = pk_load_opts_defaults();
    const cli_opt opts[] = {{"model", CLI_STR, &model, NULL}, {"sigma-w", CLI_DOUBLE, &sw, NULL},
                            {"sigma-b", CLI_DOUBLE, &sb, NULL}, {"x", CLI_STR, &xs, NULL}, {"y", CLI_STR, &ys, NULL},
                            {"first", CLI_SIZE, &lo.first, NULL}, {"get", CLI_STR, &get, NULL},
                            {"out", CLI_STR, &out, NULL}, {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, NULL, 0);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    int nngp = !strcmp(get, "nngp");
    if (!nngp && strcmp(get, "ntk")) return cli_usage(cmd, "--get: '%s' is not ntk or nngp", get);
    if (!model || !xs || !out) return cli_usage(cmd, "--model, --x and --out are required");
    pk_data X = {0}, Y = {0};
    pk_model *m = NULL;
    double *K = NULL;
    pk_status s = pk_data_load(xs, &lo, &X);
    if (!s && ys) s = pk_data_load(ys, &lo, &Y);
    const pk_data *Yd = ys ? &Y : &X;
    if (!s && Yd->d != X.d) s = pk_fail(PK_ERR_INPUT, "%s: %zu features per example, --x has %zu", ys, Yd->d, X.d);
    if (!s) s = pk_model_new(model, X.d, 1, PK_PARAM_NTK, sw, sb, &m);
    if (!s && !(K = pk_alloc(X.n * Yd->n, sizeof *K)))
        s = pk_fail(PK_ERR_INPUT, "a %zu x %zu kernel does not fit in memory: use fewer inputs (--first N)", X.n, Yd->n);
    if (!s) s = pk_kernel_infinite(m, X.x, X.n, Yd->x, Yd->n, nngp, K);
    if (!s) {
        size_t shape[2] = {X.n, Yd->n};
        s = pk_npy_write(out, K, 2, shape);
    }
    if (!s) printf("wrote %s: infinite-width %s of %s (sigma_w %g, sigma_b %g), %zu x %zu\n", out,
                   nngp ? "NNGP" : "NTK", model, sw, sb, X.n, Yd->n);
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(K);
    pk_model_free(m);
    pk_data_free(&X);
    pk_data_free(&Y);
    return rc;
}
