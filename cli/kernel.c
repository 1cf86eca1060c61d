/* kernel.c -- `pathkernel kernel`: the tangent kernel (empirical NTK) at a
 * recorded step, streamed into a .npy file. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* kernel's rows into the .npy file as the threads finish them */
typedef struct kernel_out { pk_npy_stream f; size_t ny, rr; } kernel_out;

static pk_status kernel_sink(void *ctx, size_t i, size_t j0, size_t n, const double *k)
{
    kernel_out *o = ctx;
    pk_npy_stream_write_at(&o->f, (i * o->ny + j0) * o->rr, k, n * o->rr);
    return pk_npy_stream_failed(&o->f) ? PK_ERR_IO : PK_OK;
}

int cmd_kernel(int argc, char **argv)
{
    const char *cmd = "kernel";
    static const char *help =
        "usage: pathkernel kernel RUN --x SPEC [--y SPEC] [--at init|final|STEP] [--mode full|trace] --out K.npy\n\n"
        "Tangent kernel K(x, y) = J_x(w) J_y(w)^T at the weights of one step (MATH.md sections 2, 4).\n"
        "The kernel goes to K.npy as it is computed (it never needs to fit in memory).\n"
        "  --x SPEC, --y SPEC   inputs (the run's standardisation is applied) [--y: same as --x]\n"
        "  --at S               init, final or a step number [final]\n"
        "  --mode M             full: (N_x, N_y, C, C) blocks; trace: (N_x, N_y) sum over outputs [full]\n"
        "  --out FILE           float64 .npy\n"
        "  --mem MIB            memory budget for the computation: smaller blocks under a smaller one\n"
        "                       [3/4 of free memory]\n"
        "  --threads N          threads [all cores]\n";
    const char *xs = NULL, *ys = NULL, *at = "final", *out = NULL, *dir;
    size_t mem = 0, budget = 0;
    pk_kmode mode = PK_KMODE_FULL;
    const cli_opt opts[] = {{"x", CLI_STR, &xs, NULL}, {"y", CLI_STR, &ys, NULL}, {"at", CLI_STR, &at, NULL},
                            {"mode", CLI_KMODE, &mode, NULL}, {"out", CLI_STR, &out, NULL},
                            {"mem", CLI_MIB, &mem, NULL}, {"threads", CLI_THREADS, NULL, NULL},
                            {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!xs || !out) return cli_usage(cmd, "--x SPEC and --out FILE are required");
    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    size_t t;
    if (cli_step(cmd, at, pk_run_steps(run), &t)) { pk_run_close(run); return EXIT_BAD_INPUT; }
    const pk_model *m = pk_run_model(run);
    size_t C = pk_model_n_outputs(m);
    pk_data X = {0}, Y = {0};
    double *w = pk_alloc_big(pk_model_n_params(m), sizeof *w);
    pk_load_opts lo = pk_load_opts_defaults();
    lo.allow_unseen = 1;   /* labels are not needed */
    s = w ? pk_run_load_data(run, xs, &lo, &X) : PK_ERR_NOMEM;
    if (!s && ys) s = pk_run_load_data(run, ys, &lo, &Y);
    if (!s) cli_data_warning(cmd, &X);
    if (!s && ys) cli_data_warning(cmd, &Y);
    const pk_data *Yd = ys ? &Y : &X;
    size_t r = mode == PK_KMODE_FULL ? C : 1;
    if (!s) { /* memory and disk against what the job needs, before any work */
        double mib = 1048576.0, cells = (double)X.n * (double)Yd->n, need = cells * (double)(r * r) * 8.0;
        budget = pk_memory_budget(mem);
        size_t work = pk_kernel_tangent_memory(m, X.n, Yd->n, mode, budget);
        double room = cli_disk_free(out);
        char trace[96] = "", blocks[64] = "";
        if (r > 1) snprintf(trace, sizeof trace, "--mode trace (%.1f MiB), ", cells * 8.0 / mib);
        if (r > 1) snprintf(blocks, sizeof blocks, " of %zu x %zu blocks", r, r);
        if (work > budget)
            s = pk_fail(PK_ERR_INPUT, "computing the kernel takes at least %.1f MiB of memory (its smallest blocks), "
                        "more than the %.1f MiB budget (--mem; default 3/4 of free memory): use --mem %.0f or more",
                        work / mib, budget / mib, ceil(work / mib));
        else if (room >= 0 && need > room) /* ENOSPC now, not after the work */
            s = pk_fail(PK_ERR_IO, "%s: %s: a %zu x %zu kernel%s is %.1f MiB, and %.1f MiB are free there "
                        "(nothing was written): use %sat most %.0f --x inputs against these --y, or another --out",
                        out, strerror(ENOSPC), X.n, Yd->n, blocks, need / mib, room / mib, trace,
                        floor(room / ((double)Yd->n * (double)(r * r) * 8.0)));
    }
    if (!s) s = pk_run_weights(run, t, w);
    kernel_out ko = {.ny = Yd->n, .rr = r * r};
    size_t shape[4] = {X.n, Yd->n, C, C};
    if (!s) s = pk_npy_stream_open(&ko.f, out, 0, mode == PK_KMODE_FULL ? 4 : 2, shape);
    if (!s) {
        s = pk_kernel_tangent_rows(m, w, X.x, X.n, Yd->x, Yd->n, mode, budget, kernel_sink, &ko);
        if (!s || pk_npy_stream_failed(&ko.f)) s = pk_npy_stream_commit(&ko.f); /* reports a failed write, and removes the file */
        else pk_npy_stream_abort(&ko.f);
    }
    if (!s) printf("wrote %s: tangent kernel at step %zu, %zu x %zu%s\n", out, t, X.n, Yd->n,
                   mode == PK_KMODE_FULL ? " x C x C" : " (trace)");
    rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(w);
    pk_data_free(&X); pk_data_free(&Y);
    pk_run_close(run);
    return rc;
}
