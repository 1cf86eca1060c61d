/* train.c -- `pathkernel train`: load data, train, print what happened. */
#include "cli.h"
#include "internal.h"

#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static const char *const train_help =
    "usage: pathkernel train --data SPEC --model SPEC --loss L --optim O --lr X --steps T --out RUN [options]\n"
    "\n"
    "data:\n"
    "  --data SPEC         training data: FILE.csv[.gz] | npy:X.npy,Y.npy | FILE.svm | idx:IMAGES,LABELS\n"
    "                      | fashion-mnist:train | fashion-mnist:test\n"
    "  --test SPEC         held-out data, evaluated at the end [none]\n"
    "  --first N           keep the first N training examples [all]\n"
    "  --random N          keep a seeded random N training examples [all]\n"
    "  --data-seed S       seed for --random [0]\n"
    "  --standardize       scale features by the training mean/std (recorded, applied to all later data) [off]\n"
    "model:\n"
    "  --model SPEC        mlp:H1,H2,...:ACT (ACT: identity tanh relu sigmoid softplus gelu) or linear [mlp:64:tanh]\n"
    "  --param P           standard (nn.Linear init) or ntk [standard]\n"
    "  --sigma-w S         ntk weight scale [1]\n"
    "  --sigma-b S         ntk bias scale [0]\n"
    "  --init DIR          start from W1.npy b1.npy ... (nn.Linear layout) [seeded init]\n"
    "loss and optimiser:\n"
    "  --loss L            mse (half squared error), logistic (binary 0/1), softmax (classes) [softmax]\n"
    "  --optim O           gd (full batch), sgd, momentum, adam [gd]\n"
    "  --lr X              learning rate [0.1]\n"
    "  --steps T           optimiser steps [100]\n"
    "  --batch B           mini-batch size (sgd; optional for momentum/adam) [full batch]\n"
    "  --momentum MU       heavy-ball momentum [0.9]\n"
    "  --beta1 B --beta2 B --eps E   Adam [0.9, 0.999, 1e-8]\n"
    "  --schedule S        constant, step, cosine [constant]\n"
    "  --step-every K --gamma G      step schedule: lr *= G every K steps [100, 0.5]\n"
    "  --lr-min X          cosine schedule's final rate [0]\n"
    "run:\n"
    "  --seed S            seed of initialisation and batch order [0]\n"
    "  --keep K            store the weights every K steps, replay the rest exactly [1]\n"
    "  --out RUN           run directory to create (required)\n"
    "  --threads N         threads [all cores]; results do not depend on it\n"
    "  --quiet             no progress bar\n";

static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static double now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

typedef struct progress { int bar; double t0, last; } progress;

static int on_step(void *ctx, size_t step, size_t steps, double loss)
{
    progress *p = ctx;
    if (p->bar) {
        double t = now();
        if (t - p->last > 0.1 || step == steps) {
            p->last = t;
            double eta = (t - p->t0) / (double)step * (double)(steps - step);
            int width = 30, fill = (int)((double)width * (double)step / (double)steps);
            fprintf(stderr, "\r  step %zu/%zu [%.*s%*s] loss %.5g  ETA %.0fs   ", step, steps, fill,
                    "==============================", width - fill, "", loss, eta);
            if (step == steps) fputc('\n', stderr);
        }
    }
    return stop_requested;
}

static void report(const char *name, pk_loss loss, const pk_mlp *m, const double *w, const pk_data *d)
{
    size_t C = m->dims[m->n_layers];
    double *f = pk_alloc(d->n, C * sizeof *f);
    if (!f || pk_predict(m, w, d->x, d->n, f)) { free(f); return; }
    double l = pk_loss_eval(loss, f, d->y, d->n, C, d->ty, NULL);
    double acc = pk_accuracy(loss, f, d->y, d->n, C);
    if (isnan(acc)) printf("final %-5s loss %.6g (%zu examples)\n", name, l, d->n);
    else printf("final %-5s loss %.6g  accuracy %.4f (%zu examples)\n", name, l, acc, d->n);
    free(f);
}

int cmd_train(int argc, char **argv)
{
    const char *cmd = "train";
    enum { O_DATA = 256, O_TEST, O_FIRST, O_RANDOM, O_DSEED, O_STD, O_MODEL, O_PARAM, O_SW, O_SB, O_INIT, O_LOSS,
           O_OPTIM, O_LR, O_STEPS, O_BATCH, O_MOM, O_B1, O_B2, O_EPS, O_SCHED, O_EVERY, O_GAMMA, O_LRMIN,
           O_SEED, O_KEEP, O_OUT, O_THREADS, O_QUIET, O_HELP };
    static const struct option opts[] = {
        {"data", 1, 0, O_DATA}, {"test", 1, 0, O_TEST}, {"first", 1, 0, O_FIRST}, {"random", 1, 0, O_RANDOM},
        {"data-seed", 1, 0, O_DSEED}, {"standardize", 0, 0, O_STD}, {"model", 1, 0, O_MODEL},
        {"param", 1, 0, O_PARAM}, {"sigma-w", 1, 0, O_SW}, {"sigma-b", 1, 0, O_SB}, {"init", 1, 0, O_INIT},
        {"loss", 1, 0, O_LOSS}, {"optim", 1, 0, O_OPTIM}, {"lr", 1, 0, O_LR}, {"steps", 1, 0, O_STEPS},
        {"batch", 1, 0, O_BATCH}, {"momentum", 1, 0, O_MOM}, {"beta1", 1, 0, O_B1}, {"beta2", 1, 0, O_B2},
        {"eps", 1, 0, O_EPS}, {"schedule", 1, 0, O_SCHED}, {"step-every", 1, 0, O_EVERY},
        {"gamma", 1, 0, O_GAMMA}, {"lr-min", 1, 0, O_LRMIN}, {"seed", 1, 0, O_SEED}, {"keep", 1, 0, O_KEEP},
        {"out", 1, 0, O_OUT}, {"threads", 1, 0, O_THREADS}, {"quiet", 0, 0, O_QUIET}, {"help", 0, 0, O_HELP},
        {0, 0, 0, 0}};
    pk_train_opts to = pk_train_opts_defaults();
    pk_load_opts lo = pk_load_opts_defaults();
    const char *data_spec = NULL, *test_spec = NULL;
    int quiet = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_DATA: data_spec = optarg; break;
        case O_TEST: test_spec = optarg; break;
        case O_FIRST: bad = cli_size(cmd, "--first", optarg, &lo.first); break;
        case O_RANDOM: bad = cli_size(cmd, "--random", optarg, &lo.random); break;
        case O_DSEED: bad = cli_u64(cmd, "--data-seed", optarg, &lo.seed); break;
        case O_STD: to.standardize = 1; break;
        case O_MODEL: to.model = optarg; break;
        case O_PARAM:
            if (!strcmp(optarg, "ntk")) to.param = PK_PARAM_NTK;
            else if (!strcmp(optarg, "standard")) to.param = PK_PARAM_STANDARD;
            else return cli_usage(cmd, "--param: '%s' is not standard or ntk", optarg);
            break;
        case O_SW: bad = cli_double(cmd, "--sigma-w", optarg, &to.sigma_w); break;
        case O_SB: bad = cli_double(cmd, "--sigma-b", optarg, &to.sigma_b); break;
        case O_INIT: to.init_dir = optarg; break;
        case O_LOSS: if (pk_loss_parse(optarg, &to.loss)) return cli_error(cmd, PK_ERR_INPUT); break;
        case O_OPTIM: if (pk_optim_parse(optarg, &to.optim.kind)) return cli_error(cmd, PK_ERR_INPUT); break;
        case O_LR: bad = cli_double(cmd, "--lr", optarg, &to.optim.lr); break;
        case O_STEPS: bad = cli_size(cmd, "--steps", optarg, &to.steps); break;
        case O_BATCH: bad = cli_size(cmd, "--batch", optarg, &to.optim.batch); break;
        case O_MOM: bad = cli_double(cmd, "--momentum", optarg, &to.optim.momentum); break;
        case O_B1: bad = cli_double(cmd, "--beta1", optarg, &to.optim.beta1); break;
        case O_B2: bad = cli_double(cmd, "--beta2", optarg, &to.optim.beta2); break;
        case O_EPS: bad = cli_double(cmd, "--eps", optarg, &to.optim.eps); break;
        case O_SCHED: if (pk_schedule_parse(optarg, &to.optim.schedule)) return cli_error(cmd, PK_ERR_INPUT); break;
        case O_EVERY: bad = cli_size(cmd, "--step-every", optarg, &to.optim.step_every); break;
        case O_GAMMA: bad = cli_double(cmd, "--gamma", optarg, &to.optim.gamma); break;
        case O_LRMIN: bad = cli_double(cmd, "--lr-min", optarg, &to.optim.lr_min); break;
        case O_SEED: bad = cli_u64(cmd, "--seed", optarg, &to.seed); break;
        case O_KEEP: bad = cli_size(cmd, "--keep", optarg, &to.keep); break;
        case O_OUT: to.out_dir = optarg; break;
        case O_THREADS: bad = cli_threads(cmd, optarg); break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: fputs(train_help, stdout); return EXIT_OK;
        default: return cli_usage(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
        if (bad) return EXIT_BAD_INPUT;
    }
    if (optind < argc) return cli_usage(cmd, "unexpected argument '%s'", argv[optind]);
    if (!data_spec) return cli_usage(cmd, "--data SPEC is required");
    if (!to.out_dir) return cli_usage(cmd, "--out RUN is required");

    pk_data train = {0}, test = {0};
    double *mean = NULL, *sd = NULL;
    pk_status s = pk_data_load(data_spec, &lo, &train);
    if (!s && test_spec) s = pk_data_load(test_spec, NULL, &test);
    if (!s && test_spec && test.d != train.d)
        s = pk_fail(PK_ERR_INPUT, "%s: %zu features per example, the training data have %zu", test_spec, test.d, train.d);
    if (!s && to.standardize) {
        mean = pk_alloc(train.d, sizeof *mean);
        sd = pk_alloc(train.d, sizeof *sd);
        if (!mean || !sd) s = PK_ERR_NOMEM;
        else {
            pk_data_moments(&train, mean, sd);
            pk_data_standardize(&train, mean, sd);
            if (test_spec) pk_data_standardize(&test, mean, sd);
        }
    }
    to.data_spec = data_spec;
    to.load = &lo;
    to.mean = mean;
    to.std = sd;

    progress pr = {isatty(2) && !quiet, now(), 0};
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    double t0 = now();
    if (!s) s = pk_train(&train, &to, on_step, &pr);
    double secs = now() - t0;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);

    int rc = EXIT_OK;
    pk_run *run = NULL;
    if (s == PK_OK || s == PK_ERR_NUMERIC) {
        if (s) rc = cli_error(cmd, s);
        pk_status os = pk_run_open(to.out_dir, &run);
        if (os) rc = cli_error(cmd, os);
    } else {
        rc = cli_error(cmd, s);
    }
    if (run) {
        const pk_mlp *m = pk_run_mlp(run);
        const pk_optim *op = pk_run_optim(run);
        char spec[256];
        pk_mlp_spec(m, spec, sizeof spec);
        size_t T = pk_run_steps(run);
        printf("trained %s (%zu parameters, %s) on %zu examples x %zu features: %s loss, %s lr %g",
               spec, m->n_params, m->param == PK_PARAM_NTK ? "ntk" : "standard", train.n, train.d,
               pk_loss_name(to.loss), pk_optim_name(op->kind), op->lr);
        if (op->batch && op->batch < train.n) printf(" batch %zu", op->batch);
        printf(", %zu steps in %.2f s\n", T, secs);
        double *w = pk_alloc(m->n_params, sizeof *w);
        if (w && !pk_run_weights(run, T, w)) {
            report("train", to.loss, m, w, &train);
            if (test_spec) report("test", to.loss, m, w, &test);
        }
        free(w);
        printf("run written to %s\n", to.out_dir);
        pk_run_close(run);
        if (stop_requested) {
            fprintf(stderr, "pathkernel train: interrupted after step %zu; the run is valid up to there\n", T);
            rc = EXIT_FAIL;
        }
    }
    pk_data_free(&train);
    pk_data_free(&test);
    free(mean);
    free(sd);
    return rc;
}
