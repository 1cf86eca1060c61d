/* main.c -- the pathkernel command: dispatch to one file per command group. */
#include "cli.h"

#include <stdio.h>
#include <errno.h>
#include <string.h>

static const struct { const char *name; int (*fn)(int, char **); const char *what; } commands[] = {
    {"train", cmd_train, "train a network by gradient descent and record its path"},
    {"predict", cmd_predict, "outputs of a run's network at any recorded step"},
    {"weights", cmd_weights, "export a step's weights as W1.npy b1.npy ... (nn.Linear layout)"},
    {"info", cmd_info, "what a run is, in a few lines"},
    {"kernel", cmd_kernel, "tangent kernel (empirical NTK) at a recorded step"},
    {"explain", cmd_explain, "exact contribution of every training example to each query's prediction"},
    {"verify", cmd_verify, "check that the kernel representation reproduces the predictions"},
    {"convergence", cmd_convergence, "error of each quadrature rule as the learning rate shrinks"},
    {"ntk", cmd_ntk, "infinite-width NTK or NNGP of an architecture (relu, erf)"},
    {"compare", cmd_compare, "the network beside kernel machines on its kernels; kernel movement by width"},
    {"krr", cmd_krr, "kernel ridge regression on a kernel in .npy files"},
    {"export-libsvm", cmd_export_libsvm, "a run's kernels in LIBSVM's precomputed format (svm-train -t 4)"},
    {"attribute", cmd_attribute, "strongest proponents and opponents of each query's prediction"},
    {"selfinfluence", cmd_selfinfluence, "exact self-influence of every training example"},
    {"loo", cmd_loo, "leave-one-out residuals of kernel ridge regression on a run's own kernel"},
    {"mislabel", cmd_mislabel, "flip labels, train, and rank the flips by self-influence and baselines"},
    {"lds", cmd_lds, "does an attribution predict retraining? LDS of each method on retrained subsets"},
    {"report", cmd_report, "one self-contained HTML report of a run: loss, representation, kernels, attributions"},
    {"demo", cmd_demo, "the main job on the embedded 8x8 digits: train, verify, attribute, report"},
};

static void usage(FILE *f)
{
    fprintf(f, "pathkernel %s -- a trained network as an exact kernel machine over its training examples\n\n"
               "usage: pathkernel COMMAND [options]   (pathkernel COMMAND --help for its options)\n\ncommands:\n",
            PK_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].what);
    fprintf(f, "\nexit status: 0 success, 1 failure, 2 bad input or usage\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) { usage(stderr); return EXIT_BAD_INPUT; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "--version")) { printf("pathkernel %s\n", PK_VERSION); return 0; }
    pk_threads_set(0); /* all cores for BLAS and our loops alike, until --threads says otherwise */
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) {
            int rc = commands[i].fn(argc - 1, argv + 1);
            /* what went to stdout (a table, JSON) is output too: a full disk must not pass as success */
            errno = 0;
            if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "pathkernel %s: writing standard output failed: %s\n", argv[1],
                        strerror(errno ? errno : EIO));
                return rc ? rc : EXIT_FAIL;
            }
            return rc;
        }
    fprintf(stderr, "pathkernel: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return EXIT_BAD_INPUT;
}
