// quickstart.c: train a small network, then explain one of its predictions
// exactly by the training examples (pred = bias + sum of contributions).
//
//     quickstart [DATA] [RUN]    DATA: a data spec [data/digits.csv.gz]
//                                RUN: the run directory to write [quickstart-run]
#include <pathkernel.h>

#include <stdio.h>
#include <stdlib.h>

static int fail(const char *what)
{
    fprintf(stderr, "quickstart: %s: %s\n", what, pk_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    const char *data = argc > 1 ? argv[1] : "data/digits.csv.gz";
    const char *dir = argc > 2 ? argv[2] : "quickstart-run";

    // Train on the first 1,000 examples, standardised; the path (and the
    // transform) is recorded in the run directory `dir`.
    pk_load_opts lo = pk_load_opts_defaults();
    lo.first = 1000;
    pk_data train;
    if (pk_data_load(data, &lo, &train) != PK_OK) return fail("load");
    double *mean = malloc(train.d * sizeof *mean), *std = malloc(train.d * sizeof *std);
    if (!mean || !std) {
        fputs("quickstart: out of memory\n", stderr);
        return 1;
    }
    pk_data_moments(&train, mean, std);
    pk_data_standardize(&train, mean, std);
    pk_train_opts to = pk_train_opts_defaults();
    to.model = "mlp:32:tanh";
    to.loss = PK_LOSS_SOFTMAX;
    to.optim.kind = PK_OPTIM_SGD;
    to.optim.lr = 0.1;
    to.optim.batch = 50;
    to.steps = 100;
    to.out_dir = dir;
    to.data_spec = data;
    to.load = &lo;
    to.standardize = 1;
    to.mean = mean;
    to.std = std;
    if (pk_train(&train, &to, NULL, NULL) != PK_OK) return fail("train");

    // Open the run, give it its training data, and take the last example of
    // the data set (not trained on) as the query, in the run's feature space.
    pk_run *run;
    if (pk_run_open(dir, &run) != PK_OK) return fail("open");
    if (pk_run_attach_data(run, &train) != PK_OK) return fail("attach");
    pk_data all;
    if (pk_run_load_data(run, data, NULL, &all) != PK_OK) return fail("load query");
    const double *x = all.x + (all.n - 1) * all.d;
    printf("trained %s: %zu parameters, %zu sgd steps on %zu examples, last batch loss %.4f\n",
           to.model, pk_model_n_params(pk_run_model(run)), pk_run_steps(run), train.n,
           pk_run_batch_loss(run, pk_run_steps(run) - 1));

    // The exact contribution of every training example to the prediction.
    pk_explain_opts eo = pk_explain_opts_defaults();
    if (pk_quad_parse("gl4", &eo.quad) != PK_OK) return fail("quad");
    pk_explain e;
    if (pk_run_explain(run, x, 1, &eo, &e) != PK_OK) return fail("explain");
    size_t C = e.C, c = 0;                     // c: the predicted class
    for (size_t k = 1; k < C; k++)
        if (e.pred[k] > e.pred[c]) c = k;
    printf("query: example %zu (label %g), predicted class %zu\n", all.n - 1, all.y[all.n - 1], c);

    // Its strongest proponents and opponents among the training examples.
    size_t idx[5], n;
    for (int sign = 1; sign >= -1; sign -= 2) {
        if (pk_rank(e.contrib + c, e.N, C, sign, 5, idx, &n) != PK_OK) return fail("rank");
        printf("  %s:\n", sign > 0 ? "proponents" : "opponents");
        for (size_t j = 0; j < n; j++)
            printf("    example %4zu  label %g  contribution %+.6f\n", idx[j], train.y[idx[j]],
                   e.contrib[idx[j] * C + c]);
    }

    // The check: the prediction is the bias plus the sum of the contributions.
    double sum = 0;
    for (size_t i = 0; i < e.N; i++) sum += e.contrib[i * C + c];
    double change = e.pred[c] - e.bias[c], err = change - sum;
    double rel = (err < 0 ? -err : err) / (change < 0 ? -change : change);
    printf("check: pred %.6f = bias %.6f + sum of %zu contributions %.6f, relative error %.1e\n",
           e.pred[c], e.bias[c], e.N, sum, rel);

    pk_explain_free(&e);
    pk_data_free(&all);
    pk_run_close(run);
    pk_data_free(&train);
    free(mean);
    free(std);
    return rel <= 1e-8 ? 0 : 1;
}
