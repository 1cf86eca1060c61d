/* ntk.c -- `pathkernel ntk`: the infinite-width NTK or NNGP of an
 * architecture (MATH.md section 6), no training involved. */
#include "cli.h"
#include "internal.h"

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
    enum { O_MODEL = 256, O_SW, O_SB, O_X, O_Y, O_FIRST, O_GET, O_OUT, O_THREADS, O_HELP };
    static const struct option opts[] = {
        {"model", 1, 0, O_MODEL}, {"sigma-w", 1, 0, O_SW}, {"sigma-b", 1, 0, O_SB}, {"x", 1, 0, O_X},
        {"y", 1, 0, O_Y}, {"first", 1, 0, O_FIRST}, {"get", 1, 0, O_GET}, {"out", 1, 0, O_OUT},
        {"threads", 1, 0, O_THREADS}, {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    const char *model = NULL, *xs = NULL, *ys = NULL, *out = NULL;
    double sw = 1.0, sb = 0.0;
    int nngp = 0;
    pk_load_opts lo = pk_load_opts_defaults();
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_MODEL: model = optarg; break;
        case O_SW: bad = cli_double(cmd, "--sigma-w", optarg, &sw); break;
        case O_SB: bad = cli_double(cmd, "--sigma-b", optarg, &sb); break;
        case O_X: xs = optarg; break;
        case O_Y: ys = optarg; break;
        case O_FIRST: bad = cli_size(cmd, "--first", optarg, &lo.first); break;
        case O_GET:
            if (!strcmp(optarg, "nngp")) nngp = 1;
            else if (!strcmp(optarg, "ntk")) nngp = 0;
            else return cli_usage(cmd, "--get: '%s' is not ntk or nngp", optarg);
            break;
        case O_OUT: out = optarg; break;
        case O_THREADS: bad = cli_threads(cmd, optarg); break;
        case O_HELP: fputs(help, stdout); return EXIT_OK;
        default: return cli_usage(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
        if (bad) return EXIT_BAD_INPUT;
    }
    if (optind < argc) return cli_usage(cmd, "unexpected argument '%s'", argv[optind]);
    if (!model || !xs || !out) return cli_usage(cmd, "--model, --x and --out are required");
    pk_data X = {0}, Y = {0};
    pk_mlp m;
    double *K = NULL;
    pk_status s = pk_data_load(xs, &lo, &X);
    if (!s && ys) s = pk_data_load(ys, &lo, &Y);
    const pk_data *Yd = ys ? &Y : &X;
    if (!s && Yd->d != X.d) s = pk_fail(PK_ERR_INPUT, "%s: %zu features per example, --x has %zu", ys, Yd->d, X.d);
    if (!s) s = pk_mlp_parse(model, X.d, 1, PK_PARAM_NTK, sw, sb, &m);
    if (!s && !(K = pk_alloc(X.n * Yd->n, sizeof *K)))
        s = pk_fail(PK_ERR_INPUT, "a %zu x %zu kernel does not fit in memory: use fewer inputs (--first N)", X.n, Yd->n);
    if (!s) s = pk_kernel_infinite(&m, X.x, X.n, Yd->x, Yd->n, nngp, K);
    if (!s) {
        size_t shape[2] = {X.n, Yd->n};
        s = pk_npy_write(out, K, 2, shape);
    }
    if (!s) printf("wrote %s: infinite-width %s of %s (sigma_w %g, sigma_b %g), %zu x %zu\n", out,
                   nngp ? "NNGP" : "NTK", model, sw, sb, X.n, Yd->n);
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(K);
    pk_data_free(&X);
    pk_data_free(&Y);
    return rc;
}
