/* kernel.c -- `pathkernel kernel`: the tangent kernel (empirical NTK) at a
 * recorded step, streamed into a .npy file. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

/* kernel's rows into the .npy file as the threads finish them */
typedef struct kernel_out { pk_npy_stream f; size_t ny, rr; } kernel_out;

static pk_status kernel_sink(void *ctx, size_t i, size_t j0, size_t n, const double *k)
{
    kernel_out *o = ctx;
    pk_npy_stream_write_at(&o->f, (i * o->ny + j0) * o->rr, k, n * o->rr);
    return pk_npy_stream_failed(&o->f) ? PK_ERR_IO : PK_OK;
}

/* `--at path` and `--at path-batch`: the kernel summed over the replayed
 * steps in memory (refused before any work when it does not fit --mem),
 * then written atomically. */
static int path_kernel(const char *cmd, const char *dir, const char *xs, const char *ys, int batch,
                       const pk_quad *quad, pk_kmode mode, size_t mem, const char *out)
{
    pk_run *run;
    pk_status s = pk_run_open(dir, &run);
    if (s) return cli_error(cmd, s);
    const pk_model *m = pk_run_model(run);
    size_t C = pk_model_n_outputs(m), r = mode == PK_KMODE_FULL ? C : 1;
    pk_data X = {0}, Y = {0};
    const pk_data *Yd = &X;
    double *K = NULL;
    s = pk_run_load_data(run, xs, NULL, &X);
    if (!s && ys) { s = pk_run_load_data(run, ys, NULL, &Y); Yd = &Y; }
    if (!s && batch) s = pk_run_train_data(run, &Yd);
    pk_explain_opts eo = pk_explain_opts_defaults();
    eo.quad = *quad;
    eo.want_contrib = 0;
    eo.mode = mode;
    eo.mem_limit = mem;
    eo.batch_kernel = 1;
    size_t budget = pk_memory_budget(mem);
    size_t need = s ? 0 : batch ? pk_run_explain_bytes(run, X.n, &eo) : pk_run_path_kernel_bytes(run, X.n, Yd->n, mode);
    if (!s && need > budget)
        s = pk_fail(PK_ERR_INPUT, "the %s kernel of %zu x %zu examples%s is summed over the steps in memory: it needs "
                    "%.1f MiB, more than the %.1f MiB budget (--mem; default 3/4 of free memory): use %sfewer --x "
                    "inputs or --mem %.0f", batch ? "path-batch" : "path", X.n, Yd->n, r > 1 ? " in C x C blocks" : "",
                    need / 1048576.0, budget / 1048576.0, r > 1 ? "--mode trace, " : "", need / 1048576.0 + 1);
    if (!s && !(K = pk_alloc_big(X.n * Yd->n, r * r * sizeof *K))) s = PK_ERR_NOMEM;
    cli_progress pr = cli_progress_start(cmd);
    pr.Q = X.n;
    pr.show = isatty(2);
    cli_catch_stop();
    if (!s && batch) {
        pk_explain e;
        eo.progress = cli_progress_step;
        eo.ctx = &pr;
        s = pk_run_explain(run, X.x, X.n, &eo, &e);
        if (!s) memcpy(K, e.kernel, X.n * Yd->n * r * r * sizeof *K);
        pk_explain_free(&e);
    } else if (!s) {
        s = pk_run_path_kernel(run, X.x, X.n, Yd->x, Yd->n, mode, quad, cli_progress_step, &pr, K);
    }
    cli_progress_end(&pr);
    size_t shape[4] = {X.n, Yd->n, C, C};
    if (!s) s = pk_npy_write(out, K, mode == PK_KMODE_FULL ? 4 : 2, shape);
    if (!s) printf("wrote %s: %s kernel over %zu steps (%s), %zu x %zu%s\n", out, batch ? "path-batch" : "path",
                   pk_run_steps(run), quad->name, X.n, Yd->n, mode == PK_KMODE_FULL ? " x C x C" : " (trace)");
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    free(K);
    pk_data_free(&X); pk_data_free(&Y);
    pk_run_close(run);
    return rc;
}

int cmd_kernel(int argc, char **argv)
{
    const char *cmd = "kernel";
    static const char *help =
        "usage: pathkernel kernel RUN --x SPEC [--y SPEC] [--at init|final|STEP|path|path-batch] [--quad R]\n"
        "                         [--mode full|trace] --out K.npy\n\n"
        "Tangent kernel K(x, y) = J_x(w) J_y(w)^T at the weights of one step (MATH.md sections 2, 4), or\n"
        "a path kernel (MATH.md section 3). A tangent kernel goes to K.npy as it is computed (it never\n"
        "needs to fit in memory); a path kernel is summed over the steps in memory, then written.\n"
        "  --x SPEC, --y SPEC   inputs (the run's standardisation is applied) [--y: same as --x]\n"
        "  --at S               init, final or a step number: the tangent kernel there;\n"
        "                       path: the paper's path kernel sum_t eta_t sum_q c_q K^g at w_t + s_q D_t,\n"
        "                       symmetric and positive semi-definite;\n"
        "                       path-batch: the contribution kernel of explain (batch indicator, Jbar on\n"
        "                       the x side), against the training examples (no --y) [final]\n"
        "  --quad R             quadrature rule of the path kernels: left, mid, gl1..gl8, exact (relu, leaky_relu,\n"
        "                       pooling: each step split at the kinks of both arguments) [gl2]\n"
        "  --mode M             full: (N_x, N_y, C, C) blocks; trace: (N_x, N_y) sum over outputs [full]\n"
        "  --out FILE           float64 .npy\n"
        "  --mem MIB            memory budget for the computation: smaller blocks under a smaller one\n"
        "                       [3/4 of free memory]\n"
        "  --threads N          threads [all cores]\n";
    const char *xs = NULL, *ys = NULL, *at = "final", *out = NULL, *dir;
    size_t mem = 0, budget = 0;
    pk_kmode mode = PK_KMODE_FULL;
    pk_quad quad;
    pk_quad_parse("gl2", &quad);
    const cli_opt opts[] = {{"x", CLI_STR, &xs, NULL}, {"y", CLI_STR, &ys, NULL}, {"at", CLI_STR, &at, NULL},
                            {"quad", CLI_QUAD, &quad, NULL},
                            {"mode", CLI_KMODE, &mode, NULL}, {"out", CLI_STR, &out, NULL},
                            {"mem", CLI_MIB, &mem, NULL}, {"threads", CLI_THREADS, NULL, NULL},
                            {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, help, argc, argv, opts, &dir, 1);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    if (!xs || !out) return cli_usage(cmd, "--x SPEC and --out FILE are required");
    int batch = !strcmp(at, "path-batch");
    if (batch && ys) return cli_usage(cmd, "--at path-batch is a kernel against the training examples: drop --y");
    if (batch || !strcmp(at, "path")) return path_kernel(cmd, dir, xs, ys, batch, &quad, mode, mem, out);
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
