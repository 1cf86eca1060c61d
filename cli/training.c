/* training.c -- the options of training and the loading of its data, shared
 * by train, convergence and compare (each adds options of its own). */
#include "cli.h"

#include <stdio.h>
#include <string.h>

void cli_train_args_init(cli_train_args *a, int held_out)
{
    memset(a, 0, sizeof *a);
    a->to = pk_train_opts_defaults();
    a->lo = pk_load_opts_defaults();
    a->test_lo = pk_load_opts_defaults();
    pk_train_opts *to = &a->to;
    pk_optim *op = &to->optim;
    const cli_opt opts[] = {
        {"data", CLI_STR, &a->data, NULL}, CLI_SELECT(a->lo), {"class-names", CLI_STR, &a->class_names, NULL},
        {"standardize", CLI_FLAG, &to->standardize, NULL}, {"input-shape", CLI_STR, &a->input_shape, NULL},
        {"model", CLI_STR, &to->model, NULL}, {"param", CLI_PARAM, &to->param, NULL},
        {"sigma-w", CLI_DOUBLE, &to->sigma_w, NULL}, {"sigma-b", CLI_DOUBLE, &to->sigma_b, NULL},
        {"init", CLI_STR, &to->init_dir, NULL}, {"loss", CLI_LOSS, &to->loss, NULL},
        {"optim", CLI_OPTIM, &op->kind, NULL}, {"batch", CLI_SIZE, &op->batch, NULL},
        {"momentum", CLI_DOUBLE, &op->momentum, NULL}, {"beta1", CLI_DOUBLE, &op->beta1, NULL},
        {"beta2", CLI_DOUBLE, &op->beta2, NULL}, {"eps", CLI_DOUBLE, &op->eps, NULL},
        {"weight-decay", CLI_DOUBLE, &op->weight_decay, NULL}, {"schedule", CLI_SCHEDULE, &op->schedule, NULL},
        {"step-every", CLI_SIZE, &op->step_every, NULL}, {"gamma", CLI_DOUBLE, &op->gamma, NULL},
        {"lr-min", CLI_DOUBLE, &op->lr_min, NULL}, {"seed", CLI_U64, &to->seed, NULL},
        {"keep", CLI_SIZE, &to->keep, NULL}, {"out", CLI_STR, &to->out_dir, NULL},
        /* held_out only: the last four */
        {"test", CLI_STR, &a->test, NULL}, {"test-first", CLI_SIZE, &a->test_lo.first, NULL},
        {"lr", CLI_DOUBLE, &op->lr, NULL}, {"steps", CLI_SIZE, &to->steps, NULL}};
    size_t n = sizeof opts / sizeof *opts - (held_out ? 0 : 4);
    _Static_assert(sizeof opts / sizeof *opts <= CLI_TRAIN_OPTS, "CLI_TRAIN_OPTS is too small");
    for (size_t i = 0; i < n; i++) {
        a->opts[i] = opts[i];
        a->opts[i].seen = &a->given[i];
    }
    a->opts[n] = (cli_opt){NULL, 0, NULL, NULL};
}

/* --input-shape C,H,W: the rows of `data` read as C x H x W images. */
static pk_status input_shape(const char *arg, pk_data *data)
{
    size_t c, h, w;
    char extra;
    if (sscanf(arg, "%zu,%zu,%zu%c", &c, &h, &w, &extra) != 3 || !c || !h || !w)
        return pk_fail(PK_ERR_INPUT, "--input-shape '%s': expected C,H,W, three positive integers (e.g. 1,28,28)", arg);
    if (c * h * w != data->d)
        return pk_fail(PK_ERR_INPUT, "--input-shape %zu,%zu,%zu is %zu values per example, but %s has %zu", c, h, w,
                       c * h * w, data->source ? data->source : "the data", data->d);
    data->img_c = c;
    data->img_h = h;
    data->img_w = w;
    return PK_OK;
}

pk_status cli_load_train_data(cli_train_args *a, pk_data *train, pk_data *test, double **mean, double **sd)
{
    pk_status s = PK_OK;
    if (a->class_names && !a->names && (s = pk_names_read(a->class_names, &a->names, &a->lo.n_class_names)))
        return s;
    if (a->names) a->lo.class_names = (const char *const *)a->names;
    s = pk_data_load(a->data, &a->lo, train);
    if (!s && a->test) {
        /* the test data alike: the same CSV options, mapped through the training classes */
        int csv = pk_data_spec_is_csv(a->test);
        a->test_lo.sep = csv ? a->lo.sep : 0;
        a->test_lo.label_column = csv ? a->lo.label_column : NULL;
        a->test_lo.class_names = (const char *const *)train->class_names;
        a->test_lo.n_class_names = train->n_class_names;
        s = pk_data_load(a->test, &a->test_lo, test);
    }
    if (!s && a->test && test->d != train->d)
        s = pk_fail(PK_ERR_INPUT, "%s: %zu features per example, the training data have %zu", a->test, test->d, train->d);
    if (!s && a->input_shape) s = input_shape(a->input_shape, train);
    if (!s && a->input_shape && a->test) s = input_shape(a->input_shape, test);
    if (!s && a->to.standardize) {
        *mean = pk_alloc(train->d, sizeof **mean);
        *sd = pk_alloc(train->d, sizeof **sd);
        if (!*mean || !*sd) s = PK_ERR_NOMEM;
        else {
            pk_data_moments(train, *mean, *sd);
            pk_data_standardize(train, *mean, *sd);
            if (a->test) pk_data_standardize(test, *mean, *sd);
        }
    }
    a->to.data_spec = a->data;
    a->to.load = &a->lo;
    a->to.mean = *mean;
    a->to.std = *sd;
    return s;
}

void cli_train_args_free(cli_train_args *a)
{
    free(a->names);
    a->names = NULL;
}
