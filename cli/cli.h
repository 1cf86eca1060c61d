/* cli.h -- what the pathkernel commands share: number parsing that names the
 * option, exit codes, data loading with the common options, the library's
 * messages in the commands' terms. The commands use the public API
 * (pathkernel.h) alone, except common.c (the library's strict number
 * parsing) and attribute.c (checksums and file reading for its job's
 * parts), which include base/base.h. */
#ifndef PK_CLI_H
#define PK_CLI_H

#include "pathkernel.h"
#include <stdio.h>
#include <stdlib.h>

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_BAD_INPUT = 2 };

/* The library's last message (pk_last_error(), or the status's name when
 * it is empty) in the command's terms: the API's parameter names rewritten
 * into the command's flags (the table in common.c). Valid until the next call. */
const char *cli_message(const char *cmd, pk_status s);
/* Print "pathkernel CMD: message" (cli_message) and return the exit code for status s. */
int cli_error(const char *cmd, pk_status s);
/* Usage error: print the message and a pointer to --help; returns 2. */
int cli_usage(const char *cmd, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Strict numbers for option `opt`: 0 on success, else an error printed. */
int cli_double(const char *cmd, const char *opt, const char *arg, double *v);
int cli_size(const char *cmd, const char *opt, const char *arg, size_t *v);
int cli_u64(const char *cmd, const char *opt, const char *arg, uint64_t *v);
/* A whole string as a non-negative integer, silently (0 on success): for
 * a value among alternatives or in a list, which the caller reports. */
int cli_parse_size(const char *s, size_t *v);
/* --threads N, applied at once. */
int cli_threads(const char *cmd, const char *arg);

/* Declarative options: each names its type and where the value goes
 * (CLI_FLAG: an int set to 1; CLI_MIB: a size_t in bytes from MiB;
 * CLI_THREADS: applied at once; CLI_QUAD/LOSS/OPTIM/SCHEDULE: parsed into
 * pk_quad, pk_loss, pk_optim_kind, pk_schedule; CLI_KMODE: full or trace into
 * a pk_kmode; CLI_PARAM: standard or ntk into a pk_param; CLI_SEP: a CSV
 * separator, one character or comma, semicolon, tab, into a char), and optionally an
 * int `seen` that is set, the first time the option is given, to its place
 * among the options given (1 for the first). CLI_TABLE (CLI_INCLUDE) stands
 * for the entries of another table, ended by a NULL name, in its place. */
typedef enum cli_type {
    CLI_STR, CLI_SIZE, CLI_U64, CLI_DOUBLE, CLI_FLAG, CLI_MIB, CLI_THREADS, CLI_QUAD, CLI_LOSS, CLI_OPTIM,
    CLI_KMODE, CLI_PARAM, CLI_SCHEDULE, CLI_SEP, CLI_TABLE
} cli_type;
typedef struct cli_opt { const char *name; cli_type type; void *dst; int *seen; } cli_opt;
#define CLI_INCLUDE(table) {"", CLI_TABLE, (void *)(table), NULL}
/* Parse argv against opts (ended by a NULL name; --help is implied and
 * prints `help`) and take exactly npos positional arguments into pos. Long
 * options only, as --name VALUE or --name=VALUE, or any unambiguous prefix of
 * the name; options and positional arguments in any order, and everything
 * after "--" positional. Returns 0, -1 after --help, or the exit status of a
 * usage error. */
int cli_parse(const char *cmd, const char *help, int argc, char **argv, const cli_opt *opts,
              const char **pos, int npos);
/* Of the options of opts (those of included tables too) that have a `seen`,
 * the one given first; NULL when none was given. */
const cli_opt *cli_first_given(const cli_opt *opts);
/* --first N, --random N, --data-seed S, and the CSV options --sep C and
 * --label-column NAME|INDEX, into a pk_load_opts. */
#define CLI_SELECT(lo) {"first", CLI_SIZE, &(lo).first, NULL}, {"random", CLI_SIZE, &(lo).random, NULL}, \
                       {"data-seed", CLI_U64, &(lo).seed, NULL}, CLI_CSV(lo)
#define CLI_CSV(lo) {"sep", CLI_SEP, &(lo).sep, NULL}, {"label-column", CLI_STR, &(lo).label_column, NULL}
/* Their help: for training data, and for data read through a run. */
#define CLI_CSV_HELP_TRAIN \
    "  --sep C             CSV field separator: comma, semicolon, tab or a character [detected]\n" \
    "  --label-column L    CSV label column: a header name, or an index (0-based, -1 the last) [the last]\n"
#define CLI_CSV_HELP_RUN \
    "  --sep C, --label-column L   CSV separator [detected] and label column, a name or an index\n" \
    "                      (0-based, -1 the last) [the run's, else the last]\n"
/* Read --class-names FILE (one name a line) into lo: *names holds them
 * (free it after the load). 0, or the exit status of an error, reported. */
int cli_class_names(const char *cmd, const char *file, pk_load_opts *lo, char ***names);
/* Print the warning loading left in d (unseen labels), if any. */
void cli_data_warning(const char *cmd, const pk_data *d);

/* A number for CSV files and tables: %.17g, NaN as "nan". */
void cli_put_num(FILE *f, double v);
/* A text field of a CSV file: quoted (RFC 4180) when it holds a comma, a
 * quote or a line break; nothing for NULL. */
void cli_put_text(FILE *f, const char *s);

/* The options of the commands that read a run (predict, weights, info):
 * RUN, --data, --out, --step, --first, --random, --data-seed, --threads. */
typedef struct cli_run_args {
    const char *run, *data, *out, *step;
    pk_load_opts load;
} cli_run_args;
int cli_run_args_parse(const char *cmd, const char *help, int argc, char **argv, cli_run_args *a);
/* Open a->run and read the weights of step a->step (default: the final
 * one) into *w (the caller frees it and closes *run): 0, or the exit status
 * of the failure, reported. */
int cli_run_weights(const char *cmd, const cli_run_args *a, pk_run **run, double **w, size_t *t);

/* The options of training (training.c), shared by train, convergence and
 * compare, each of which adds its own: --data, --first, --random,
 * --data-seed, --standardize, the model, loss and optimiser options, --seed,
 * --keep and --out; with held_out, also --test, --test-first, --lr and
 * --steps (convergence chooses the learning rates and steps itself).
 * cli_train_args_init sets the defaults and fills `opts`, which points into
 * *a (include it with CLI_INCLUDE(a.opts)); `given` notes the order in which
 * they were given. */
enum { CLI_TRAIN_OPTS = 40 };
typedef struct cli_train_args {
    pk_train_opts to;
    pk_load_opts lo, test_lo;
    const char *data, *test, *class_names;
    const char *input_shape; /* --input-shape C,H,W, or NULL */
    char **names;   /* the --class-names read, or NULL (cli_train_args_free) */
    int given[CLI_TRAIN_OPTS];
    cli_opt opts[CLI_TRAIN_OPTS + 1];
} cli_train_args;
void cli_train_args_init(cli_train_args *a, int held_out);
/* Load the training data (and the --test data), standardising both with the
 * training moments when asked (*mean and *sd, the caller frees them); the
 * data and the transform go into a->to. */
pk_status cli_load_train_data(cli_train_args *a, pk_data *train, pk_data *test, double **mean, double **sd);
void cli_train_args_free(cli_train_args *a);

/* SIGINT/SIGTERM set a flag (the second one kills as usual) that long
 * commands poll between steps to stop cleanly. */
void cli_catch_stop(void);
int cli_stop_requested(void);

/* Progress of a long replay on stderr: groups of queries, each a replay of
 * T steps. cli_progress_step is a pk_progress_fn: it polls the stop flag
 * (cli_catch_stop) and redraws steps done, queries done, rate and ETA every
 * second on a terminal (a line every 10 s otherwise) when `show` is set. */
typedef struct cli_progress {
    const char *cmd;
    size_t groups, groups_done, Q, queries_done;
    double t0, last, steps_done;
    int show, tty;
} cli_progress;
cli_progress cli_progress_start(const char *cmd);
int cli_progress_step(void *ctx, size_t step, size_t steps, double loss);
void cli_progress_group_done(cli_progress *p, size_t queries);
void cli_progress_end(cli_progress *p);
double cli_progress_seconds(const cli_progress *p);

/* An --out directory a command makes: note whether it existed before
 * (cli_dir_exists), and after a failure cli_drop_new_dir removes it again
 * when it is new and still empty, so that a failed command leaves nothing. */
int cli_dir_exists(const char *dir);
/* Bytes free to this user on the file system where `path` would be
 * created, or -1 when unknown. */
double cli_disk_free(const char *path);
void cli_drop_new_dir(const char *dir, int existed);
/* Remove a directory tree the command made itself (a temporary directory, or
 * a run it trained into a directory that did not exist before, after a
 * failure): 0, or -1 when something could not be removed. */
int cli_remove_tree(const char *dir);

/* MPI (mpi.c): started only under mpirun, through the module
 * libpathkernel-mpi.so loaded then; else rank 0 of 1. cli_mpi_start returns
 * an exit status, non-zero (after one line on stderr) when launched by
 * mpirun without the module. cli_mpi_end aborts the other ranks when
 * rc != 0. Send/recv return non-zero on failure. */
int cli_mpi_start(const char *cmd, int *argc, char ***argv, int *rank, int *size);
void cli_mpi_end(int rc);
int cli_mpi_send(const double *buf, size_t n, int tag);
int cli_mpi_recv(double *buf, size_t n, int from, int tag);

/* The directory of the running executable (from /proc/self/exe), into buf:
 * 0, or -1 when it cannot be read. What the installed CLI finds beside
 * itself (its data, the MPI module) is looked for from there. */
int cli_exe_dir(char *buf, size_t len);

/* The step a user names: "init" (0), "final" (T) or a number 0..T. */
int cli_step(const char *cmd, const char *arg, size_t T, size_t *t);

/* The commands, one file each named after it (cli/train.c, cli/predict.c...;
 * verify with explain, the same computation; the studies that train several
 * runs, compare, convergence and mislabel, in cli/studies/). */
int cmd_train(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_weights(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_kernel(int argc, char **argv);
int cmd_explain(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_convergence(int argc, char **argv);
int cmd_ntk(int argc, char **argv);
int cmd_krr(int argc, char **argv);
int cmd_loo(int argc, char **argv);
struct cJSON;
/* root printed as JSON into path (atomically), then deleted. */
pk_status cli_write_json(const char *path, struct cJSON *root);
/* loo's summary (loo.json) as JSON text, malloc'ed; NULL when out of memory (mislabel writes it too). */
char *cli_loo_json(const pk_loo *l, const pk_quad *quad);
int cmd_compare(int argc, char **argv);
int cmd_export_libsvm(int argc, char **argv);
int cmd_attribute(int argc, char **argv);
int cmd_selfinfluence(int argc, char **argv);
int cmd_mislabel(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_lds(int argc, char **argv);

/* The labels of queries loaded through a run, for a target that reads them
 * (pk_target_check; their columns those of the run's loss). */
pk_status cli_query_labels(pk_run *run, const char *spec, const pk_data *q, const pk_target *t);

/* Write the explain summary as JSON (summary.json, verify --json); max_reg:
 * the largest |regularisation|. */
char *cli_summary_json(const pk_explain *e, double max_reg);
/* max_i |v_i| (NaN when any is NaN; 0 for v = NULL). */
double cli_max_abs(const double *v, size_t n);

#endif
