/* report.c -- `pathkernel report`: one self-contained HTML file about a run. */
#include "cli.h"

#include <string.h>
#include <sys/stat.h>

int cmd_report(int argc, char **argv)
{
    const char *cmd = "report";
    static const char *help =
        "usage: pathkernel report RUN --out REPORT.html [options]\n\n"
        "Writes one self-contained HTML file (inline SVG, images as PNG data URIs; nothing is fetched),\n"
        "its sections lettered (a), (b), ... in this order (one that is not drawn takes no letter):\n"
        "  the batch loss of every step; the representation check: pred against bias + sum of the\n"
        "  contributions over queries x outputs, and its residual; with --convergence, the error of each\n"
        "  quadrature rule against the learning rate (log-log, fitted slopes); a heat map of the path\n"
        "  kernel between a class-stratified sample of training examples and the queries; the tangent\n"
        "  kernel's relative movement and label alignment at evenly spread checkpoints; for the first\n"
        "  queries, their strongest proponents and opponents (one letter for all; as images for image\n"
        "  data and 64 features); with --compare, the table of the network beside its kernel machines\n"
        "  and, when the compare run had --widths, the tangent kernel's change and label alignment\n"
        "  against hidden width; for runs with classes, the training examples with the largest\n"
        "  leave-one-out residuals of their own label under kernel ridge regression on the run's kernel\n"
        "  (`pathkernel loo`), drawn with their given and predicted labels; with --lds, the LDS of each\n"
        "  attribution method with error bars and the predicted against the retrained target.\n\n"
        "  --query SPEC        query inputs [the run's training data]\n"
        "  --first N, --random N, --data-seed S   select queries [first 10]\n"
        CLI_CSV_HELP_RUN
        "  --quad R            quadrature rule: left, mid, gl1..gl8, exact (piecewise-linear networks) [gl4]\n"
        "  --convergence DIR   a directory written by `pathkernel convergence --out DIR` [none]\n"
        "  --compare DIR       a directory written by `pathkernel compare --out DIR` [none]\n"
        "  --lds DIR           a directory written by `pathkernel lds --out DIR`: LDS per method with error\n"
        "                      bars, and for the first --show test points the predicted against the\n"
        "                      retrained target [none]\n"
        "  --show N            queries drawn with their proponents and opponents [3]\n"
        "  --top K             proponents and opponents per query [5]\n"
        "  --heat N            training examples and queries (each) in the heat map [60]\n"
        "  --movement N        training examples for the kernel movement [100]\n"
        "  --checkpoints N     checkpoints after step 0 for the kernel movement [10]\n"
        "  --loo KERNEL        the leave-one-out section's kernel: tangent-final, tangent-init, path, ntk,\n"
        "                      rbf, or none (no section) [tangent-final]\n"
        "  --loo-top K         training examples drawn there [12]\n"
        "  --mem MIB           memory budget of the explanation [3/4 of free memory]\n"
        "  --out FILE          the HTML file (required)\n"
        "  --threads N         threads [all cores]\n";
    pk_report_opts ro = pk_report_opts_defaults();
    const char *out = NULL, *dir, *loo = NULL;
    int sel = 0, have_heat = 0;
    size_t first = 0, heat = 0;
    const cli_opt opts[] = {
        {"query", CLI_STR, &ro.query, NULL}, {"first", CLI_SIZE, &first, &sel},
        {"random", CLI_SIZE, &ro.load.random, &sel}, {"data-seed", CLI_U64, &ro.load.seed, NULL}, CLI_CSV(ro.load),
        {"quad", CLI_QUAD, &ro.quad, NULL}, {"convergence", CLI_STR, &ro.convergence, NULL},
        {"compare", CLI_STR, &ro.compare, NULL}, {"lds", CLI_STR, &ro.lds, NULL}, {"show", CLI_SIZE, &ro.show, NULL}, {"top", CLI_SIZE, &ro.top, NULL},
        {"heat", CLI_SIZE, &heat, &have_heat}, {"movement", CLI_SIZE, &ro.move_train, NULL},
        {"checkpoints", CLI_SIZE, &ro.move_steps, NULL}, {"mem", CLI_MIB, &ro.mem_limit, NULL},
        {"loo", CLI_STR, &loo, NULL}, {"loo-top", CLI_SIZE, &ro.loo_top, NULL}, {"out", CLI_STR, &out, NULL}, {"threads", CLI_THREADS, NULL, NULL}, {NULL, 0, NULL, NULL}};
    int prc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (prc) return prc < 0 ? EXIT_OK : prc;
    if (have_heat) ro.heat_train = ro.heat_query = heat;
    if (!out) return cli_usage(cmd, "--out FILE.html is required");
    if (sel) ro.load.first = first;   /* --first 0 (or --random alone): no first-N cut */
    if (!ro.top) return cli_usage(cmd, "--top must be at least 1");
    if (loo && !strcmp(loo, "none")) ro.loo_top = 0;
    else if (loo && (pk_kernel_kind_parse(loo, &ro.loo_kernel) || ro.loo_kernel == PK_KERNEL_PATH_BATCH))
        return cli_usage(cmd, "--loo %s: use tangent-final, tangent-init, path, ntk, rbf or none (path-batch is not "
                         "positive semi-definite)", loo);
    if (!ro.heat_train) return cli_usage(cmd, "--heat must be at least 1");
    if (ro.move_train < 2) return cli_usage(cmd, "--movement must be at least 2");
    const char *dirs[3][2] = {{"convergence", ro.convergence}, {"compare", ro.compare}, {"lds", ro.lds}};
    for (int i = 0; i < 3; i++) {
        struct stat st;
        if (dirs[i][1] && (stat(dirs[i][1], &st) != 0 || !S_ISDIR(st.st_mode)))
            return cli_usage(cmd, "--%s %s: not a directory (write one with pathkernel %s --out DIR)", dirs[i][0],
                             dirs[i][1], dirs[i][0]);
    }
    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    pk_report_info info;
    s = pk_report_write(run, &ro, out, &info);
    pk_run_close(run);
    if (s) return cli_error(cmd, s);
    printf("wrote %s: %zu queries x %zu outputs explained by %zu training examples over %zu steps (%s); "
           "max |pred - bias - sum contrib| = %.3g (relative %.3g); %.2f s\n",
           out, info.Q, info.C, info.N, info.steps, ro.quad.name, info.max_abs_err, info.max_rel_err, info.seconds);
    return EXIT_OK;
}
