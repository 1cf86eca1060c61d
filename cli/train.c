/* train.c -- `pathkernel train`: train a network by gradient descent and
 * record its path; `train --resume` finishes an interrupted run. */
#include "cli.h"

#include <math.h>
#include <unistd.h>

static const char *const train_help =
    "usage: pathkernel train --data SPEC --model SPEC --loss L --optim O --lr X --steps T --out RUN [options]\n"
    "\n"
    "data:\n"
    "  --data SPEC         training data: FILE.csv[.gz] | npy:X.npy,Y.npy | FILE.svm | idx:IMAGES,LABELS\n"
    "                      | fashion-mnist:train | fashion-mnist:test\n"
    "  --test SPEC         held-out data, evaluated at the end [none]\n"
    "  --test-first N      keep the first N test examples [all]\n"
    "  --first N           keep the first N training examples [all]\n"
    "  --random N          keep a seeded random N training examples [all]\n"
    "  --data-seed S       seed for --random [0]\n"
    CLI_CSV_HELP_TRAIN
    "                      (--test alike: its labels are mapped through the training data's classes)\n"
    "  --class-names FILE  the classes' names, one a line, in class order: names integer labels (IDX,\n"
    "                      npy, CSV), or orders text labels [text labels: their sorted distinct values;\n"
    "                      fashion-mnist: its ten names]\n"
    "  --standardize       scale features by the training mean/std (recorded, applied to all later data) [off]\n"
    "  --input-shape C,H,W read each row as a C x H x W image (CSV, flat npy) [IDX and fashion-mnist: 1,28,28;\n"
    "                      npy (n, c, h, w): its own]\n"
    "model:\n"
    "  --model SPEC        mlp:H1,H2,...:ACT (ACT: identity tanh relu leaky_relu[:A] sigmoid softplus gelu\n"
    "                      erf), linear, lenet5,\n"
    "                      or layers separated by ';' as nn.Sequential runs them: conv:OUT,K[,stride=S][,pad=P]\n"
    "                      avgpool:K[,stride=S] maxpool:K[,stride=S] flatten dense:N ACT ... dense\n"
    "                      (e.g. conv:6,5,pad=2;tanh;avgpool:2;flatten;dense:84;tanh;dense) [mlp:64:tanh];\n"
    "                      res(LAYERS) a residual block x + F(x), res(LAYERS;proj) P x + F(x) with P a dense\n"
    "                      layer or 1x1 conv where the shape changes, dropout:P inverted dropout (masks from\n"
    "                      seed, step, example; none at test time), e.g. dense:64;tanh;res(dense:64;tanh;\n"
    "                      dense:64);tanh;dropout:0.5;dense (docs/MATH.md section 9)\n"
    "  --param P           standard (nn.Linear init) or ntk [standard]\n"
    "  --sigma-w S         ntk weight scale [1]\n"
    "  --sigma-b S         ntk bias scale [0]\n"
    "  --init DIR          start from W1.npy b1.npy ... (nn.Linear / nn.Conv2d layout) [seeded init]\n"
    "loss and optimiser:\n"
    "  --loss L            mse (half squared error), logistic (binary 0/1), softmax (classes) [softmax]\n"
    "  --optim O           gd (full batch), sgd, momentum, adam, adamw [gd]\n"
    "  --lr X              learning rate [0.1]\n"
    "  --steps T           optimiser steps [100]\n"
    "  --batch B           mini-batch size (sgd; optional for momentum/adam/adamw) [full batch]\n"
    "  --momentum MU       heavy-ball momentum [0.9]\n"
    "  --beta1 B --beta2 B --eps E   Adam and AdamW [0.9, 0.999, 1e-8]\n"
    "  --weight-decay X    lambda: L2 (g = G + lambda w) for gd/sgd/momentum/adam, decoupled\n"
    "                      (w -= lr lambda w) for adamw, as in PyTorch [0]\n"
    "  --schedule S        constant, step, cosine [constant]\n"
    "  --step-every K --gamma G      step schedule: lr *= G every K steps [100, 0.5]\n"
    "  --lr-min X          cosine schedule's final rate [0]\n"
    "run:\n"
    "  --seed S            seed of initialisation and batch order [0]\n"
    "  --keep K            store the weights every K steps, replay the rest exactly [1]\n"
    "  --out RUN           run directory to create (required)\n"
    "  --threads N         threads [all cores]; results do not depend on it\n"
    "  --quiet             no progress bar\n"
    "\n"
    "usage: pathkernel train --resume RUN [--threads N] [--quiet]\n"
    "\n"
    "  --resume RUN        finish a run that was interrupted (killed, even by SIGKILL, or stopped by\n"
    "                      Ctrl-C/SIGTERM) with the options and data recorded in RUN/run.json (no other\n"
    "                      training option may be given): training continues from the last checkpoint\n"
    "                      that RUN/journal.bin's complete records reach, and RUN ends up byte for byte\n"
    "                      as an uninterrupted run would have left it. A complete RUN is left alone\n"
    "                      (exit 0); a diverged or damaged one is refused (exit 2). --test is not recorded:\n"
    "                      evaluate held-out data afterwards with `pathkernel predict`.\n";

typedef struct progress { int bar; double t0, last; size_t first; /* step of the first callback */ } progress;

static int on_step(void *ctx, size_t step, size_t steps, double loss)
{
    progress *p = ctx;
    if (p->bar) {
        double t = pk_seconds();
        if (!p->first) p->first = step; /* a resumed run starts past 1 */
        if (t - p->last > 0.1 || step == steps) {
            p->last = t;
            double eta = (t - p->t0) / (double)(step - p->first + 1) * (double)(steps - step);
            int width = 30, fill = (int)((double)width * (double)step / (double)steps);
            fprintf(stderr, "\r  step %zu/%zu [%.*s%*s] loss %.5g  ETA %.0fs   ", step, steps, fill,
                    "==============================", width - fill, "", loss, eta);
            if (step == steps) fputc('\n', stderr);
        }
    }
    return cli_stop_requested(); /* SIGINT, SIGTERM: stop after this step (cli_catch_stop) */
}

static void report(const char *name, pk_loss loss, const pk_model *m, const double *w, const pk_data *d)
{
    size_t C = pk_model_n_outputs(m);
    double *f = pk_alloc(d->n, C * sizeof *f);
    if (!f || pk_model_predict(m, w, d->x, d->n, f)) { free(f); return; }
    double l = pk_loss_eval(loss, f, d->y, d->n, C, d->ty, NULL);
    double acc = pk_loss_accuracy(loss, f, d->y, d->n, C);
    if (isnan(acc)) printf("final %-5s loss %.6g (%zu examples)\n", name, l, d->n);
    else printf("final %-5s loss %.6g  accuracy %.4f (%zu examples)\n", name, l, acc, d->n);
    free(f);
}

/* What train prints once the run is written: the run, the final losses on
 * the training data (train; NULL: the run's own, loaded) and on test. */
static int summarise(const char *cmd, const char *dir, const pk_data *train, const pk_data *test, double secs)
{
    pk_run *run = NULL;
    pk_status s = pk_run_open(dir, &run);
    pk_data own = {0};
    if (!s && !train) {
        s = pk_run_load_train(run, &own);
        train = &own;
    }
    if (s) { pk_run_close(run); return cli_error(cmd, s); }
    const pk_model *m = pk_run_model(run);
    const pk_optim *op = pk_run_optim(run);
    char spec[256];
    pk_model_spec(m, spec, sizeof spec);
    size_t T = pk_run_steps(run);
    printf("trained %s (%zu parameters, %s) on %zu examples x %zu features: %s loss, %s lr %g",
           spec, pk_model_n_params(m), pk_model_param(m) == PK_PARAM_NTK ? "ntk" : "standard", train->n, train->d,
           pk_loss_name(pk_run_loss(run)), pk_optim_name(op->kind), op->lr);
    if (pk_optim_batch(op, train->n) < train->n) printf(" batch %zu", op->batch);
    if (op->weight_decay != 0.0) printf(" weight decay %g", op->weight_decay);
    printf(", %zu steps in %.2f s\n", T, secs);
    size_t nc;
    const char *const *classes = pk_run_classes(run, &nc);
    if (classes) {
        printf("%zu classes:", nc);
        for (size_t c = 0; c < nc && c < 20; c++) printf("%s %zu %s", c ? "," : "", c, classes[c]);
        printf(nc > 20 ? ", ...\n" : "\n");
    }
    double *w = pk_alloc(pk_model_n_params(m), sizeof *w);
    if (w && !pk_run_weights(run, T, w)) {
        report("train", pk_run_loss(run), m, w, train);
        if (test) report("test", pk_run_loss(run), m, w, test);
    }
    free(w);
    printf("run written to %s\n", dir);
    pk_run_close(run);
    pk_data_free(&own);
    if (cli_stop_requested()) {
        fprintf(stderr, "pathkernel train: interrupted after step %zu; the run is valid up to there "
                "(continue it with `pathkernel train --resume %s`)\n", T, dir);
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

/* train --resume RUN */
static int train_resume(const char *cmd, const char *dir, int quiet)
{
    progress pr = {isatty(2) && !quiet, pk_seconds(), 0, 0};
    cli_catch_stop();
    pk_resume_info info;
    double t0 = pk_seconds();
    pk_status s = pk_train_resume(dir, on_step, &pr, &info);
    double secs = pk_seconds() - t0;
    if (!s && info.complete) {
        printf("%s is already complete (%zu steps): nothing to resume\n", dir, info.journaled);
        return EXIT_OK;
    }
    if (s && s != PK_ERR_NUMERIC) return cli_error(cmd, s);
    printf("resumed %s at step %zu of %zu (its journal held %zu complete steps", dir, info.from, info.steps,
           info.journaled);
    if (info.ignored) printf("; %zu bytes of a torn or damaged record after them were dropped", info.ignored);
    printf(")\n");
    int rc = s ? cli_error(cmd, s) : EXIT_OK;
    int rs = summarise(cmd, dir, NULL, NULL, secs);
    return rc ? rc : rs;
}

int cmd_train(int argc, char **argv)
{
    const char *cmd = "train";
    cli_train_args a;
    const char *resume = NULL;
    int quiet = 0;
    cli_train_args_init(&a, 1);
    const cli_opt opts[] = {CLI_INCLUDE(a.opts), {"resume", CLI_STR, &resume, NULL},
                            {"threads", CLI_THREADS, NULL, NULL}, {"quiet", CLI_FLAG, &quiet, NULL},
                            {NULL, 0, NULL, NULL}};
    int rc = cli_parse(cmd, train_help, argc, argv, opts, NULL, 0);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    const cli_opt *training = cli_first_given(a.opts); /* the first option --resume cannot be combined with */
    if (resume && training)
        return cli_usage(cmd, "--resume RUN takes every training option from RUN/run.json: drop --%s", training->name);
    if (resume) return train_resume(cmd, resume, quiet);
    if (!a.data) return cli_usage(cmd, "--data SPEC is required");
    if (!a.to.out_dir) return cli_usage(cmd, "--out RUN is required");
    pk_train_opts *to = &a.to;
    pk_data train = {0}, test = {0};
    double *mean = NULL, *sd = NULL;
    pk_status s = cli_load_train_data(&a, &train, &test, &mean, &sd);

    progress pr = {isatty(2) && !quiet, pk_seconds(), 0, 0};
    cli_catch_stop();
    double t0 = pk_seconds();
    if (!s) s = pk_train(&train, to, on_step, &pr);
    double secs = pk_seconds() - t0;

    if (s == PK_OK || s == PK_ERR_NUMERIC) {
        rc = s ? cli_error(cmd, s) : EXIT_OK;
        int rs = summarise(cmd, to->out_dir, &train, a.test ? &test : NULL, secs);
        if (!rc) rc = rs;
    } else {
        rc = cli_error(cmd, s);
    }
    pk_data_free(&train);
    pk_data_free(&test);
    free(mean);
    free(sd);
    cli_train_args_free(&a);
    return rc;
}
