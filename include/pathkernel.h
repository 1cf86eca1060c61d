/*
 * pathkernel.h -- the one public header of libpathkernel.
 *
 * pathkernel trains dense networks by gradient descent, records the whole
 * path, and (see docs/MATH.md, shared/docs/MATH.md in the project) turns the
 * trained network into its exact kernel machine over the training examples.
 *
 * A complete program, examples/quickstart.c (CTest builds and runs it, and
 * checks that this copy is the same text):
 *
 *     // quickstart.c: train a small network, then explain one of its predictions
 *     // exactly by the training examples (pred = bias + sum of contributions).
 *     //
 *     //     quickstart [DATA] [RUN]    DATA: a data spec [data/digits.csv.gz]
 *     //                                RUN: the run directory to write [quickstart-run]
 *     #include <pathkernel.h>
 *
 *     #include <stdio.h>
 *     #include <stdlib.h>
 *
 *     static int fail(const char *what)
 *     {
 *         fprintf(stderr, "quickstart: %s: %s\n", what, pk_last_error());
 *         return 1;
 *     }
 *
 *     int main(int argc, char **argv)
 *     {
 *         const char *data = argc > 1 ? argv[1] : "data/digits.csv.gz";
 *         const char *dir = argc > 2 ? argv[2] : "quickstart-run";
 *
 *         // Train on the first 1,000 examples, standardised; the path (and the
 *         // transform) is recorded in the run directory `dir`.
 *         pk_load_opts lo = pk_load_opts_defaults();
 *         lo.first = 1000;
 *         pk_data train;
 *         if (pk_data_load(data, &lo, &train) != PK_OK) return fail("load");
 *         double *mean = malloc(train.d * sizeof *mean), *std = malloc(train.d * sizeof *std);
 *         if (!mean || !std) {
 *             fputs("quickstart: out of memory\n", stderr);
 *             return 1;
 *         }
 *         pk_data_moments(&train, mean, std);
 *         pk_data_standardize(&train, mean, std);
 *         pk_train_opts to = pk_train_opts_defaults();
 *         to.model = "mlp:32:tanh";
 *         to.loss = PK_LOSS_SOFTMAX;
 *         to.optim.kind = PK_OPTIM_SGD;
 *         to.optim.lr = 0.1;
 *         to.optim.batch = 50;
 *         to.steps = 100;
 *         to.out_dir = dir;
 *         to.data_spec = data;
 *         to.load = &lo;
 *         to.standardize = 1;
 *         to.mean = mean;
 *         to.std = std;
 *         if (pk_train(&train, &to, NULL, NULL) != PK_OK) return fail("train");
 *
 *         // Open the run, give it its training data, and take the last example of
 *         // the data set (not trained on) as the query, in the run's feature space.
 *         pk_run *run;
 *         if (pk_run_open(dir, &run) != PK_OK) return fail("open");
 *         if (pk_run_attach_data(run, &train) != PK_OK) return fail("attach");
 *         pk_data all;
 *         if (pk_run_load_data(run, data, NULL, &all) != PK_OK) return fail("load query");
 *         const double *x = all.x + (all.n - 1) * all.d;
 *         printf("trained %s: %zu parameters, %zu sgd steps on %zu examples, last batch loss %.4f\n",
 *                to.model, pk_model_n_params(pk_run_model(run)), pk_run_steps(run), train.n,
 *                pk_run_batch_loss(run, pk_run_steps(run) - 1));
 *
 *         // The exact contribution of every training example to the prediction.
 *         pk_explain_opts eo = pk_explain_opts_defaults();
 *         if (pk_quad_parse("gl4", &eo.quad) != PK_OK) return fail("quad");
 *         pk_explain e;
 *         if (pk_run_explain(run, x, 1, &eo, &e) != PK_OK) return fail("explain");
 *         size_t C = e.C, c = 0;                     // c: the predicted class
 *         for (size_t k = 1; k < C; k++)
 *             if (e.pred[k] > e.pred[c]) c = k;
 *         printf("query: example %zu (label %g), predicted class %zu\n", all.n - 1, all.y[all.n - 1], c);
 *
 *         // Its strongest proponents and opponents among the training examples.
 *         size_t idx[5], n;
 *         for (int sign = 1; sign >= -1; sign -= 2) {
 *             if (pk_rank(e.contrib + c, e.N, C, sign, 5, idx, &n) != PK_OK) return fail("rank");
 *             printf("  %s:\n", sign > 0 ? "proponents" : "opponents");
 *             for (size_t j = 0; j < n; j++)
 *                 printf("    example %4zu  label %g  contribution %+.6f\n", idx[j], train.y[idx[j]],
 *                        e.contrib[idx[j] * C + c]);
 *         }
 *
 *         // The check: the prediction is the bias plus the sum of the contributions.
 *         double sum = 0;
 *         for (size_t i = 0; i < e.N; i++) sum += e.contrib[i * C + c];
 *         double change = e.pred[c] - e.bias[c], err = change - sum;
 *         double rel = (err < 0 ? -err : err) / (change < 0 ? -change : change);
 *         printf("check: pred %.6f = bias %.6f + sum of %zu contributions %.6f, relative error %.1e\n",
 *                e.pred[c], e.bias[c], e.N, sum, rel);
 *
 *         pk_explain_free(&e);
 *         pk_data_free(&all);
 *         pk_run_close(run);
 *         pk_data_free(&train);
 *         free(mean);
 *         free(std);
 *         return rel <= 1e-8 ? 0 : 1;
 *     }
 *
 * With the library installed (README.md, "Install"), build it with
 *
 *     cc quickstart.c $(pkg-config --cflags --libs pathkernel)
 *
 * Conventions: every function that can fail returns pk_status and leaves a
 * one-line message in pk_last_error() (per thread); the library never exits
 * or prints. Sizes are size_t, numbers are double, matrices are row-major
 * with their shape in a comment. The caller owns what it passes in;
 * functions that return memory say how to free it.
 */
#ifndef PATHKERNEL_H
#define PATHKERNEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PK_VERSION "0.1.0"

/* ------------------------------------------------------------------ errors */

typedef enum pk_status {
    PK_OK = 0,
    PK_ERR_INPUT = 2,   /* malformed input file, spec or argument (CLI exit 2) */
    PK_ERR_IO,          /* cannot read or write a file                         */
    PK_ERR_NOMEM,       /* allocation failed or request too large              */
    PK_ERR_NUMERIC,     /* NaN/Inf appeared (divergence)                       */
    PK_ERR_STATE,       /* run directory inconsistent, checksum mismatch, ...  */
    PK_ERR_INTERNAL,
    PK_ERR_STOPPED      /* a progress callback asked to stop (CLI exit 1)      */
} pk_status;

const char *pk_status_str(pk_status s);
/* The message of the last failure in this thread ("" if none): one line
 * that names the file or argument, what is wrong and how to fix it. It names
 * a parameter by its name in this header (a field or an argument), in
 * parentheses after the words that say what it is, with a value where it
 * advises one: "try a smaller learning rate (lr), e.g. 0.01", "the trace
 * mode (mode trace) fits"; and a function by its name in backquotes, with
 * its argument: "`pk_train_resume RUN`". (The pathkernel commands print
 * these messages with their flags in place of the names.) */
const char *pk_last_error(void);
/* Set the message (printf-style) and return `s`; for use by callers that
 * extend the library, and by the library itself. */
pk_status pk_fail(pk_status s, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Threads used by BLAS and by the library's own loops (0 = all cores).
 * Results never depend on it. */
void pk_threads_set(int n);
int pk_threads_get(void);
/* Seconds on a monotonic clock, for durations. */
double pk_seconds(void);
/* qsort comparison of doubles, ascending. */
int pk_cmp_double(const void *a, const void *b);

/* ------------------------------------------------------------------ memory */

/* Checked allocation of n * size bytes (malloc; pk_calloc: zeroed); NULL,
 * with the message set, when the product overflows or memory is short.
 * free() releases it. */
void *pk_alloc(size_t n, size_t size);
void *pk_calloc(size_t n, size_t size);
/* pk_alloc for large arrays: on transparent huge pages where the system
 * allows (fewer page faults for a large kernel); free() releases it. */
void *pk_alloc_big(size_t n, size_t size);
/* Bytes an operation may use: `limit` if non-zero, else 3/4 of the memory
 * available now (within a container's limit): what a mem_limit of 0 means. */
size_t pk_memory_budget(size_t limit);

/* -------------------------------------------------------------------- data */

/* A data set in memory. Plain data: the caller may build one by hand. */
typedef struct pk_data {
    size_t n;          /* examples                                        */
    size_t d;          /* features per example                            */
    size_t ty;         /* target columns (1 for class labels)             */
    double *x;         /* (n, d) row-major features                       */
    double *y;         /* (n, ty) targets: class index (integral) or real */
    size_t img_h, img_w; /* image shape when the source has one, else 0   */
    size_t img_c;      /* its channels (d = img_c img_h img_w), else 0   */
    char *source;      /* the spec it was loaded from (owned)             */
    /* Names, when the source has them (else NULL and 0). Each list is one
     * allocation, the pointers then the strings: free(list) frees it all. */
    char **class_names;   /* (n_class_names) the names of classes 0, 1, ...: the
                           * sorted distinct text labels of a CSV file, the
                           * names given (pk_load_opts.class_names), or
                           * Fashion-MNIST's own                           */
    size_t n_class_names;
    char **feature_names; /* (d) the CSV header's names of the feature columns */
    char *warning;     /* what loading let pass and the caller should tell its
                        * user (labels not among the classes, with
                        * allow_unseen), or NULL (owned)                   */
} pk_data;

typedef struct pk_load_opts {
    size_t first;       /* keep the first N examples (0 = all)             */
    size_t random;      /* keep a seeded random N examples, in data order (0 = all) */
    uint64_t seed;      /* seed for `random`                               */
    /* CSV and TSV files only (an error with other formats): */
    char sep;           /* field separator; 0 detects comma, semicolon or tab [0] */
    const char *label_column; /* the target column: a header name, or an
                         * index, 0-based, negative from the end [NULL: the last] */
    /* Any format with class labels: */
    const char *const *class_names; /* (n_class_names) the classes in index
                         * order: text labels are mapped through them (a
                         * label equal to a name, else an integer index
                         * below n_class_names), integer labels are named by
                         * them; NULL: the classes of text labels are their
                         * sorted distinct values                         */
    size_t n_class_names;
    int allow_unseen;   /* a label not among class_names: 0 an error; 1 its
                         * target is NaN (no label) and data.warning says so */
} pk_load_opts;

pk_load_opts pk_load_opts_defaults(void);

/* Load from a spec:
 *   PATH.csv | PATH.csv.gz | PATH.tsv | PATH.tsv.gz
 *                                 CSV (RFC 4180 quoting, CRLF or LF): separator
 *                                 detected or given (sep), the target in the last
 *                                 column or the one named (label_column), numbers
 *                                 or text class labels, optional header
 *   npy:FEATURES.npy,TARGETS.npy  float64/float32/int64/int32/uint8, C order;
 *                                 features (n, d), (n, h, w) or (n, c, h, w)
 *   PATH.svm | PATH.libsvm        svmlight `label idx:val ...`, 1-based ascending
 *   idx:IMAGES,LABELS             IDX files, gzipped or not (pixels / 255)
 *   fashion-mnist:train|test      Debian's dataset-fashion-mnist
 * Errors name the file, the line or byte offset, and what is wrong. */
pk_status pk_data_load(const char *spec, const pk_load_opts *opts, pk_data *out);
void pk_data_free(pk_data *data);
/* Whether a spec names a CSV or TSV file (PATH.csv, .csv.gz, .tsv, .tsv.gz):
 * the formats that take a separator and a label column. */
int pk_data_spec_is_csv(const char *spec);

/* Mean and standard deviation of every feature ((d) each); a feature with
 * zero spread gets std 1 so that the transform is defined. */
void pk_data_moments(const pk_data *data, double *mean, double *std);
/* x <- (x - mean) / std, in place. */
void pk_data_standardize(pk_data *data, const double *mean, const double *std);
/* 64-bit fingerprint of (n, d, ty, x, y): the run directory records it. */
uint64_t pk_data_fingerprint(const pk_data *data);
/* Number of classes implied by integral targets 0..C-1 (checks them). */
pk_status pk_data_classes(const pk_data *data, size_t *n_classes);
/* Read a names file, one name a line (LF or CRLF; trailing blank lines
 * ignored; an empty or repeated name is an error naming the line) into
 * *names (one allocation: free(*names)) and *n. */
pk_status pk_names_read(const char *path, char ***names, size_t *n);
/* The name of the class whose index is `label` (a target of `data`) when
 * data has class names and label is one of their indices, else NULL. */
const char *pk_data_class_name(const pk_data *data, double label);

/* ------------------------------------------------------------ output files */

/* The library writes each of its files atomically (the journal of a run in
 * training, which grows step by step, aside): into a temporary name beside
 * it, then renamed over it, so that a killed process or a full disk never
 * leaves a half file under the final name. Programs that write their own
 * outputs can do the same with these functions, as the commands do. */

/* An atomic file: pk_atomic_open creates "PATH.tmp.PID"; write into f;
 * pk_atomic_commit flushes, checks for write errors and renames it over
 * PATH (in an output group: see below); pk_atomic_abort removes it. The
 * message of a failed write names PATH, the error and what to do. */
typedef struct pk_atomic { FILE *f; char *path; char *tmp; } pk_atomic;
pk_status pk_atomic_open(pk_atomic *a, const char *path);
pk_status pk_atomic_commit(pk_atomic *a);
void pk_atomic_abort(pk_atomic *a);
/* A whole buffer into PATH, atomically. */
pk_status pk_file_write(const char *path, const void *buf, size_t len);

/* An output group: files that must appear together or not at all. Between
 * pk_group_begin() and pk_group_end(s), files committed in this thread keep
 * their temporary names; pk_group_end renames them all into place when s is
 * PK_OK (and returns the first rename error), else removes them, and
 * returns the resulting status. Groups nest: the outermost end decides. */
void pk_group_begin(void);
pk_status pk_group_end(pk_status s);
/* The temporary name under which a file committed in the open group waits
 * for pk_group_end, for a program that must read it before; NULL if none. */
const char *pk_group_pending(const char *path);

/* "DIR/NAME", malloc'ed (NULL, with the message set, when out of memory). */
char *pk_path_join(const char *dir, const char *name);
/* Make a directory and its missing parents (mkdir -p). */
pk_status pk_mkdirs(const char *dir);

/* Read any supported .npy (float64/float32/int64/int32/uint8, C order, up to
 * 8 dims) as double. *a is malloc'ed; free() it. */
pk_status pk_npy_read(const char *path, double **a, size_t *ndim, size_t shape[8]);
/* Write a float64 (pk_npy_write) or int64 (pk_npy_write_i64) C-order .npy,
 * atomically. */
pk_status pk_npy_write(const char *path, const double *a, size_t ndim, const size_t *shape);
pk_status pk_npy_write_i64(const char *path, const int64_t *a, size_t ndim, const size_t *shape);

/* A .npy file written in pieces (float64, or int64 when int64 is set; C
 * order; at most 8 dims), for arrays larger than memory: open it with the
 * whole shape, write the elements in order (any number per call) or at
 * their places (from any thread), then commit (atomic as above; refused if
 * an element is missing) or abort. A failed write is kept and reported by
 * pk_npy_stream_flush or pk_npy_stream_commit. The fields are private. */
typedef struct pk_npy_stream { pk_atomic at; size_t left, data; int bad, err; } pk_npy_stream;
pk_status pk_npy_stream_open(pk_npy_stream *w, const char *path, int int64, size_t ndim, const size_t *shape);
/* The next `count` elements (8 bytes each: double or int64_t). */
pk_status pk_npy_stream_write(pk_npy_stream *w, const void *a, size_t count);
/* `count` elements from element `at` on, by positioned writes: from any
 * thread, in any order; every element must be written once. */
void pk_npy_stream_write_at(pk_npy_stream *w, size_t at, const void *a, size_t count);
/* Non-zero once a write has failed (safe to call from any thread): a
 * program that streams a long computation stops it then. */
int pk_npy_stream_failed(const pk_npy_stream *w);
/* Flush what was written, and report a failed write now (its message names
 * the file and what to do), not only at the commit. */
pk_status pk_npy_stream_flush(pk_npy_stream *w);
pk_status pk_npy_stream_commit(pk_npy_stream *w);
void pk_npy_stream_abort(pk_npy_stream *w);

/* ------------------------------------------------------------------- model */

typedef enum pk_act {
    PK_ACT_IDENTITY, PK_ACT_TANH, PK_ACT_RELU, PK_ACT_SIGMOID,
    PK_ACT_SOFTPLUS, PK_ACT_GELU, PK_ACT_ERF,
    PK_ACT_LEAKY_RELU  /* leaky_relu:a, y = z for z > 0, a z otherwise (a = 0.01 unless given) */
} pk_act;

typedef enum pk_param { PK_PARAM_STANDARD, PK_PARAM_NTK } pk_param;

const char *pk_act_name(pk_act a);
pk_status pk_act_parse(const char *s, pk_act *a);
/* pk_act_parse that also reads leaky_relu's slope ("leaky_relu:0.1"; 0.01
 * when not given; 0 for the other activations). */
pk_status pk_act_parse_slope(const char *s, pk_act *a, double *slope);

/* A network: a sequence of layers, and the layout of its parameters in one
 * flat vector of pk_model_n_params doubles (owned by the caller). Opaque;
 * pk_model_new makes one, pk_model_free frees it. */
typedef struct pk_model pk_model;

/* The model a spec describes, for d_in inputs and d_out outputs:
 *   mlp:H1,H2,...:ACT   dense layers of widths H1, H2, ..., each followed by
 *                       the activation ACT, then a dense output layer
 *   linear (or mlp::)   one dense layer
 *   lenet5              conv:6,5,pad=2;tanh;avgpool:2;conv:16,5;tanh;
 *                       avgpool:2;flatten;dense:120;tanh;dense:84;tanh;dense
 *   a layer sequence    elements separated by ';', as nn.Sequential runs them:
 *     in:C,H,W            the input's shape (first; d_in = C H W)
 *     conv:OUT,K[,stride=S][,pad=P]   nn.Conv2d(C, OUT, K, S, P)
 *     avgpool:K[,stride=S], maxpool:K[,stride=S]   (stride K unless given)
 *     flatten, dense:N, an activation name, and last a plain `dense` (d_out)
 * A dense layer computes z = s_w W a + s_b c with W (out, in) row-major (the
 * nn.Linear layout) and then c (out) in the vector; a conv2d layer the same
 * on every patch, W (OUT, C, K, K) as nn.Conv2d's. s_w = s_b = 1 in the
 * standard parameterisation, s_w = sigma_w / sqrt(fan_in) and s_b = sigma_b
 * in the ntk one (fan_in = in, or C K K). Shapes that do not fit are
 * refused with the shapes layer by layer. */
pk_status pk_model_new(const char *spec, size_t d_in, size_t d_out, pk_param param, double sigma_w, double sigma_b,
                       pk_model **out);
/* pk_model_new for a layer sequence on data's image shape (img_c, img_h,
 * img_w) unless the spec gives its own in:; the same as pk_model_new for
 * mlp:, linear and data without a shape. */
pk_status pk_model_for_data(const char *spec, const pk_data *data, size_t d_out, pk_param param, double sigma_w,
                            double sigma_b, pk_model **out);
void pk_model_free(pk_model *m);
size_t pk_model_n_params(const pk_model *m);  /* P */
/* Layers of every kind, in order (mlp:64:tanh has three: dense, tanh, dense). */
size_t pk_model_n_layers(const pk_model *m);
/* Layers with parameters (mlp:64:tanh has two): one W, b file pair each in
 * pk_model_weights_write. */
size_t pk_model_n_weight_layers(const pk_model *m);
size_t pk_model_n_inputs(const pk_model *m);
size_t pk_model_n_outputs(const pk_model *m); /* C */
pk_param pk_model_param(const pk_model *m);
double pk_model_sigma_w(const pk_model *m);  /* the ntk parameterisation's scales */
double pk_model_sigma_b(const pk_model *m);
/* The spec string back ("mlp:64,64:tanh"); writes at most len bytes. */
void pk_model_spec(const pk_model *m, char *buf, size_t len);
/* Seeded initialisation of w (P): PyTorch's default for nn.Linear,
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)), in the standard parameterisation;
 * N(0, 1) in the ntk one. */
void pk_model_init(const pk_model *m, uint64_t seed, double *w);
/* Outputs f (n, C) of weights w (P) on x (n, inputs). */
pk_status pk_model_predict(const pk_model *m, const double *w, const double *x, size_t n, double *f);
/* Write `w` (P) as W1.npy b1.npy ... (effective forward weights, nn.Linear
 * layout) into dir; read the same layout back into raw parameters. */
pk_status pk_model_weights_write(const pk_model *m, const double *w, const char *dir);
pk_status pk_model_weights_read(const pk_model *m, const char *dir, double *w);

/* -------------------------------------------------------------------- loss */

typedef enum pk_loss { PK_LOSS_MSE, PK_LOSS_LOGISTIC, PK_LOSS_SOFTMAX } pk_loss;

const char *pk_loss_name(pk_loss l);
pk_status pk_loss_parse(const char *s, pk_loss *l);
/* Outputs the model needs for this loss and data (softmax: classes, logistic: 1,
 * mse: target columns); checks the targets (class range, 0/1). */
pk_status pk_loss_outputs(pk_loss l, const pk_data *data, size_t *n_out);
/* Mean loss over the n rows of f (n, C) with targets y (n, ty); if R is not
 * NULL it receives the per-example residual dl_i/df (n, C) (MATH.md s.1). */
double pk_loss_eval(pk_loss l, const double *f, const double *y, size_t n, size_t C,
                    size_t ty, double *R);
/* Fraction of rows whose predicted class matches the target (classification). */
double pk_loss_accuracy(pk_loss l, const double *f, const double *y, size_t n, size_t C);

/* --------------------------------------------------------------- optimiser */

/* PK_OPTIM_ADAMW: Adam with decoupled weight decay (torch.optim.AdamW). */
typedef enum pk_optim_kind { PK_OPTIM_GD, PK_OPTIM_SGD, PK_OPTIM_MOMENTUM, PK_OPTIM_ADAM, PK_OPTIM_ADAMW } pk_optim_kind;
typedef enum pk_schedule { PK_SCHED_CONSTANT, PK_SCHED_STEP, PK_SCHED_COSINE } pk_schedule;

typedef struct pk_optim {
    pk_optim_kind kind;
    double lr;             /* learning rate eta                            */
    size_t batch;          /* mini-batch size (0 = full batch; sgd needs one) */
    double momentum;       /* mu, heavy ball                               */
    double beta1, beta2, eps; /* Adam                                      */
    double weight_decay;   /* lambda: gd/sgd/momentum/adam add lambda w to the
                              batch gradient (L2, torch's weight_decay); adamw
                              first does w <- w - eta lambda w (decoupled)    */
    pk_schedule schedule;
    size_t step_every;     /* PK_SCHED_STEP: multiply by gamma every k steps */
    double gamma;
    double lr_min;         /* PK_SCHED_COSINE: final learning rate         */
} pk_optim;

const char *pk_optim_name(pk_optim_kind k);
pk_status pk_optim_parse(const char *s, pk_optim_kind *k);
const char *pk_schedule_name(pk_schedule s);
pk_status pk_schedule_parse(const char *s, pk_schedule *k);
/* Examples in one step's batch at most, for n training examples: the
 * batch size, or n for full batches (gd, or a batch size of n or more). */
size_t pk_optim_batch(const pk_optim *o, size_t n);

/* ---------------------------------------------------------------- training */

typedef struct pk_train_opts {
    const char *model;       /* "mlp:64:tanh"                                */
    pk_param param;
    double sigma_w, sigma_b; /* ntk parameterisation                         */
    pk_loss loss;
    pk_optim optim;
    size_t steps;            /* T                                            */
    uint64_t seed;           /* initialisation and batch order               */
    size_t keep;             /* store weights every `keep` steps (1 = all)   */
    const char *init_dir;    /* start from W1.npy b1.npy ... (NULL: seeded init) */
    const char *out_dir;     /* run directory (required)                     */
    const char *data_spec;   /* recorded in the run (may be NULL)            */
    const pk_load_opts *load;/* recorded in the run (may be NULL)            */
    int standardize;         /* record that x was standardised with `mean/std` */
    const double *mean, *std;/* (d) each, when standardize                   */
} pk_train_opts;

pk_train_opts pk_train_opts_defaults(void);

/* Called after every step with the step just finished (1..T) and its batch
 * loss; return non-zero to stop early (the run stays valid up to there). */
typedef int (*pk_progress_fn)(void *ctx, size_t step, size_t steps, double loss);

/* Train on `train` and write the run directory opts->out_dir. The data must
 * already be standardised if opts->standardize (the transform is recorded). */
pk_status pk_train(const pk_data *train, const pk_train_opts *opts,
                   pk_progress_fn progress, void *ctx);

/* Train as pk_train does (bit-identical final weights) without a run
 * directory: nothing is recorded (out_dir, keep and the data spec are
 * ignored); w (P, the model's parameters) receives the final weights. */
pk_status pk_train_weights(const pk_data *train, const pk_train_opts *opts, double *w);

/* What pk_train_resume found and did. */
typedef struct pk_resume_info {
    size_t steps;        /* steps the run asked for (T)                        */
    size_t journaled;    /* complete steps in the journal                      */
    size_t ignored;      /* bytes after them dropped (a torn or damaged tail)  */
    size_t from;         /* the checkpoint training continued from             */
    int complete;        /* the run was already complete: nothing was done     */
} pk_resume_info;

/* Continue the interrupted run in `dir` (killed, even by SIGKILL, or
 * stopped) with the options in its run.json and the training data it
 * records, from the last checkpoint that its journal's complete records
 * reach, and finish it: the directory ends up as an uninterrupted run would
 * have left it, byte for byte. A complete run is left alone (info->complete);
 * a run that is not resumable (not a run, damaged, diverged, data changed)
 * is PK_ERR_INPUT. info may be NULL. */
pk_status pk_train_resume(const char *dir, pk_progress_fn progress, void *ctx, pk_resume_info *info);

/* ------------------------------------------------- runs recorded elsewhere */

/* A run whose steps another trainer took (a PyTorch loop: the Python
 * package's pathkernel.torch.Recorder). pathkernel cannot repeat that
 * trainer's arithmetic bit for bit, so such a run stores the weights and the
 * optimiser state after every step, and every replay takes w_{t+1} from the
 * record instead of computing it: the path kernel and the contributions are
 * computed between the recorded weights (MATH.md section 10). The step
 * pathkernel's optimiser computes from w_t, the step's batch and learning
 * rate is compared with the recorded one; a step that differs by more than
 * the run's tolerance (a clipped or scaled gradient, an optimizer.step()
 * that was not recorded, another loss, dropout in training mode) fails the
 * replay with an error that names it. */
typedef struct pk_record_opts {
    const char *origin;  /* who took the steps, e.g. "PyTorch 1.13.1" (run.json) */
    int float32;         /* the trainer's weights were float32 (recorded as float64
                            copies): a step may differ from pathkernel's by their
                            rounding, 4 u |w_{t+1}| with u = 2^-24, besides step_tol */
    double step_tol;     /* |w_{t+1} - step(w_t)| <= step_tol |step(w_t) - w_t| (+ the
                            float32 rounding), 2-norms over all parameters [1e-6] */
} pk_record_opts;

pk_record_opts pk_record_opts_defaults(void);

typedef struct pk_recorder pk_recorder;  /* opaque: a recording in progress */

/* Start recording into o->out_dir (a new run directory, as pk_train makes
 * one; keep is 1): o gives the model spec, the loss, the optimiser's kind
 * and hyperparameters (lr: the first step's; batch is not needed) and the
 * data spec to record; w0 (P) the initial weights (raw parameters, the
 * standard parameterisation). The training data must stay alive until
 * pk_record_end. */
pk_status pk_record_begin(const pk_data *train, const pk_train_opts *o, const pk_record_opts *ro, const double *w0,
                          pk_recorder **out);
/* One step the trainer took: its learning rate, its batch idx (nb, indices
 * into the training data), and the weights w (P) and optimiser state (S, P)
 * after it (S = 0 for sgd, 1 for momentum: the momentum buffer, 2 for
 * adam/adamw: the first then the second moment). Writes the checkpoint of
 * the step; the batch loss at the previous weights is computed for the
 * record. */
pk_status pk_record_step(pk_recorder *r, double lr, const uint32_t *idx, size_t nb, const double *w,
                         const double *state);
/* Finish the run (trajectory, steps.csv, status complete) and free r,
 * whatever the result. */
pk_status pk_record_end(pk_recorder *r);
/* Free r without finishing: the directory stays an unfinished recording. */
void pk_record_free(pk_recorder *r);

/* ---------------------------------------------------------- run directory */

typedef struct pk_run pk_run;   /* opaque: an opened run directory */

pk_status pk_run_open(const char *dir, pk_run **out);
void pk_run_close(pk_run *run);
const pk_model *pk_run_model(const pk_run *run);
pk_loss pk_run_loss(const pk_run *run);
const pk_optim *pk_run_optim(const pk_run *run);
size_t pk_run_steps(const pk_run *run);       /* T: steps completed        */
size_t pk_run_keep(const pk_run *run);        /* checkpoint every k steps  */
const char *pk_run_dir(const pk_run *run);
size_t pk_run_n_train(const pk_run *run);
uint64_t pk_run_fingerprint(const pk_run *run);
const char *pk_run_data_spec(const pk_run *run);
/* Feature transform recorded at training time (NULL when none): (d) each. */
const double *pk_run_mean(const pk_run *run);
const double *pk_run_std(const pk_run *run);
/* The names of the classes recorded at training (RUN/classes.txt: text
 * labels, Fashion-MNIST's, or class_names given), *n of them; NULL and 0
 * when the training data had none. */
const char *const *pk_run_classes(const pk_run *run, size_t *n);
/* The names of the d features (RUN/features.txt: the training CSV's
 * header), or NULL. */
const char *const *pk_run_features(const pk_run *run);
/* Weights w_t (P) after step t (0 = initial), replaying from the nearest
 * stored checkpoint when `keep` > 1 (this needs the training data: see
 * pk_run_attach_data). */
pk_status pk_run_weights(pk_run *run, size_t t, double *w);
/* Batch of step t (0-based): *idx points into the run (count *n). */
pk_status pk_run_batch(const pk_run *run, size_t t, const uint32_t **idx, size_t *n);
double pk_run_lr(const pk_run *run, size_t t);
double pk_run_batch_loss(const pk_run *run, size_t t);
/* Give the run its training data (checked against the fingerprint). */
pk_status pk_run_attach_data(pk_run *run, const pk_data *train);
/* The run's training data: the attached data, or else loaded once from the
 * recorded spec (as pk_run_load_train) and kept until pk_run_close. */
pk_status pk_run_train_data(pk_run *run, const pk_data **train);
/* Load the training data from the recorded spec, options and transform
 * into *train (the caller's: pk_data_free). */
pk_status pk_run_load_train(pk_run *run, pk_data *train);
/* Load any data spec with the run's feature transform applied, its labels
 * mapped through the run's classes and, for a CSV file, the run's label
 * column (o's own class_names and label_column, when given, instead). */
pk_status pk_run_load_data(const pk_run *run, const char *spec, const pk_load_opts *o,
                           pk_data *out);
/* Runs recorded from another trainer (pk_record_begin): who took the steps
 * ("PyTorch 1.13.1 float32"), or NULL for runs pathkernel trained. */
const char *pk_run_recorded(const pk_run *run);
/* Of a recorded run, after a replay: the largest relative difference
 * |w_{t+1} - step(w_t)| / |step(w_t) - w_t| between a recorded step and the
 * step pathkernel's optimiser takes from w_t, over the steps replayed so far,
 * and the step it was at (1..T; *step 0 before any replay). step may be NULL. */
double pk_run_step_residual(const pk_run *run, size_t *step);

/* ----------------------------------------------------------- tangent kernel */

typedef enum pk_kmode {
    PK_KMODE_FULL,    /* C x C blocks per pair                              */
    PK_KMODE_TRACE    /* sum over outputs k of <J_{x,k}, J_{y,k}> per pair   */
} pk_kmode;

/* Empirical tangent kernel K^g_w(x, y) = J_x(w) J_y(w)^T (MATH.md sections 2
 * and 4) between X (nx, d) and Y (ny, d), by the structured per-layer formula
 * (GEMMs and Hadamard products, blocked so that the workspace stays bounded).
 * K is (nx, ny, C, C) in full mode, (nx, ny) in trace mode (caller-allocated). */
pk_status pk_kernel_tangent(const pk_model *m, const double *w, const double *X, size_t nx,
                            const double *Y, size_t ny, pk_kmode mode, double *K);
/* The same kernel streamed: sink(ctx, i, j0, n, k) receives K(i, j0..j0+n)
 * as n C^2 doubles (n in trace mode) once the row segment is computed, from
 * any of the threads, several at once, in no particular order; it returns
 * PK_OK to go on, anything else stops the computation and is returned. No
 * nx x ny array is ever held: memory stays that of the blocks, which shrink
 * to keep it under `mem` bytes where they can (0: the default blocks; see
 * pk_kernel_tangent_memory). */
typedef pk_status (*pk_kernel_sink)(void *ctx, size_t i, size_t j0, size_t n, const double *k);
pk_status pk_kernel_tangent_rows(const pk_model *m, const double *w, const double *X, size_t nx,
                                 const double *Y, size_t ny, pk_kmode mode, size_t mem, pk_kernel_sink sink,
                                 void *ctx);
/* Bytes pk_kernel_tangent_rows allocates under `mem` with the current thread
 * count (an upper bound): above mem when even its smallest blocks need more. */
size_t pk_kernel_tangent_memory(const pk_model *m, size_t nx, size_t ny, pk_kmode mode, size_t mem);

/* Infinite-width kernels of the architecture m in the ntk parameterisation
 * (MATH.md section 6; relu or erf; widths are ignored, depth and sigma_w,
 * sigma_b count): NTK Theta (nngp = 0) or NNGP Sigma (nngp = 1) of the
 * outputs between X (nx, d) and Y (ny, d) into K (nx, ny); the same for
 * every output, 0 between different outputs. */
pk_status pk_kernel_infinite(const pk_model *m, const double *X, size_t nx, const double *Y, size_t ny,
                             int nngp, double *K);
/* Mean prediction (nq, C) at Xq of an infinitely wide network trained by
 * gradient flow for time t on the mean half squared error with targets
 * Yt (n, C) (eigendecomposition of the NTK, LAPACK), from f_0 = 0. */
pk_status pk_kernel_infinite_flow(const pk_model *m, const double *X, const double *Yt, size_t n, size_t C,
                                  const double *Xq, size_t nq, double t, double *pred);

/* ------------------------------------------------------ fixed-kernel machines */

/* Kernel ridge regression (MATH.md section 7): alpha (n, C) = (K + ridge I)^-1 Y
 * for a symmetric K (n, n), by Cholesky (LAPACK); a K + ridge I that is not
 * positive definite is PK_ERR_NUMERIC, with the advice to raise the ridge.
 * Predictions are K(x, X) alpha (pk_krr_predict). */
pk_status pk_krr_fit(const double *K, size_t n, const double *Y, size_t C, double ridge, double *alpha);
/* The predictions pred (nq, C) = Kq alpha of kernel ridge regression, from
 * the kernel Kq (nq, n) between queries and the n training examples. */
void pk_krr_predict(const double *Kq, size_t nq, size_t n, const double *alpha, size_t C, double *pred);
/* RBF kernel exp(-|x - y|^2 / (2 h^2)) between X (nx, d) and Y (ny, d) into K (nx, ny). */
void pk_kernel_rbf(const double *X, size_t nx, const double *Y, size_t ny, size_t d, double h, double *K);
/* The median heuristic for h: the median distance between (up to 1,000) examples. */
double pk_kernel_rbf_bandwidth(const double *X, size_t n, size_t d);
/* LIBSVM's precomputed-kernel text: "label 0:i 1:K(i,1) ... ncols:K(i,ncols)" per row
 * (i 1-based), for `svm-train -t 4` and `svm-predict`; written atomically. */
pk_status pk_libsvm_write(const char *path, const double *K, size_t n, size_t ncols, const double *labels);

/* The kernels a run offers between inputs X (nx, d, in the run's feature
 * space) and its training examples, as (nx, N), traced over outputs: the
 * paper's path kernel (pk_run_path_kernel; quadrature rule `quad`, NULL =
 * gl2; symmetric bit for bit when X holds the training examples), the
 * tangent kernel at init or at the end, RBF (median heuristic), the
 * infinite-width NTK of the run's architecture (relu/erf; sigma_w =
 * sigma_b = 1 unless the run used the ntk parameterisation), and the
 * contribution kernel of explain (path-batch: the batch indicator, Jbar on
 * the x side; neither symmetric nor positive semi-definite). */
typedef enum pk_kernel_kind {
    PK_KERNEL_PATH, PK_KERNEL_TANGENT_INIT, PK_KERNEL_TANGENT_FINAL, PK_KERNEL_RBF, PK_KERNEL_NTK,
    PK_KERNEL_PATH_BATCH
} pk_kernel_kind;
typedef struct pk_quad pk_quad;
pk_status pk_kernel_kind_parse(const char *s, pk_kernel_kind *k);
const char *pk_kernel_kind_name(pk_kernel_kind k);
pk_status pk_run_kernel(pk_run *run, pk_kernel_kind kind, const double *X, size_t nx, const pk_quad *quad, double *K);

/* -------------------------------------------------------------- path kernel */

/* Quadrature rule for Jbar (MATH.md section 3): nodes s_q on [0, 1] and
 * weights c_q summing to 1. The exact rule (MATH.md section 12) splits each
 * step of a piecewise-linear network (identity, relu, leaky_relu, pooling)
 * at the kinks of every example, w(s) = w_t + s D_t, and puts Gauss-Legendre
 * nodes on each piece: per_piece of them, or (0) as many as make the
 * integral exact, ceil(L/2) for the contributions and L for a kernel (L
 * the layers with parameters); n is 0 then. */
typedef struct pk_quad {
    char name[8];          /* "left", "mid", "gl1".."gl8", "exact", "exact:K" */
    size_t n;
    double s[8], c[8];
    int exact;             /* split at the kinks                              */
    size_t per_piece;      /* exact: nodes per piece (0: by the degree)       */
} pk_quad;

/* Largest number of Gauss-Legendre nodes on a piece of the exact rule. */
#define PK_PIECE_NODES 32

pk_status pk_quad_parse(const char *name, pk_quad *q);
/* Whether a rule was given (its nodes, or the exact rule). */
int pk_quad_given(const pk_quad *q);
/* The exact rule's nodes per piece for a model: per_piece, or the least that
 * integrates a polynomial of degree deg_per_layer * L - deg_less exactly
 * (contributions: 1 and 1, degree L - 1; a kernel: 2 and 2, degree 2L - 2).
 * 0 for any other rule. */
size_t pk_quad_piece_nodes(const pk_quad *q, const pk_model *m, int kernel);
/* Why the exact rule cannot take a model: NULL when it can (every layer
 * piecewise linear), else the first layer it cannot and what to use. */
const char *pk_quad_exact_refusal(const pk_model *m, char *buf, size_t len);
/* One sentence on the rule q for model m: what it integrates exactly and
 * why its error is what it is (pieces: the mean pieces per query and step
 * the exact rule found, pk_explain.pieces). Into buf, returned. */
const char *pk_quad_why(const pk_quad *q, const pk_model *m, double pieces, char *buf, size_t len);

/* The paper's path kernel (MATH.md section 3, "The paper's path kernel"):
 * the tangent kernel integrated along the recorded path with the rule q on
 * every step, the same node on both arguments and no batch indicator,
 *   K^p(x, y) = sum_t eta_t sum_q c_q K^g_{w_t + s_q D_t}(x, y),
 * D_t = w_{t+1} - w_t the step the optimiser took and eta_t its learning
 * rate (for every optimiser: the path's time is measured in learning rate).
 * Between X (nx, d) and Y (ny, d), in the run's feature space, into K
 * (nx, ny, C, C) in full mode or (nx, ny) in trace mode (caller-allocated).
 * Symmetric and positive semi-definite; when Y holds the same examples as X
 * (the same values), K(y, x) is K(x, y)^T bit for bit. A row's bits do not
 * depend on the other rows of X nor on the thread count. Replays the run
 * (the training data attached or loadable) and checks that the replay
 * lands on the stored final weights; progress (may be NULL) as for
 * pk_run_explain. */
pk_status pk_run_path_kernel(pk_run *run, const double *X, size_t nx, const double *Y, size_t ny, pk_kmode mode,
                             const pk_quad *q, pk_progress_fn progress, void *ctx, double *K);
/* Bytes pk_run_path_kernel needs: K itself and its workspace. */
size_t pk_run_path_kernel_bytes(const pk_run *run, size_t nx, size_t ny, pk_kmode mode);

/* Leave-one-out residuals of kernel ridge regression (MATH.md section 7,
 * "Leave-one-out"), exact, by one Cholesky (LAPACK dpotrf, dpotrs, dpotri):
 * with H = (K + ridge I)^-1 and alpha = H Y, r_i = y_i - yhat_{-i}, the
 * residual of example i on the machine refitted without it. Trace mode: K
 * (n, n), one machine per output column on the same kernel,
 * r_ic = alpha_ic / H_ii. Full mode: K (n, n, C, C) (pk_kernel_tangent's
 * layout), one machine on the (nC, nC) system of rows (i, c), example i
 * left out with all its outputs: r_i = [H]_ii^-1 alpha_i, [H]_ii the C x C
 * diagonal block. Y, alpha and resid are (n, C). Allocates one (m, m)
 * float64 matrix, m = n (trace) or n C (full): pk_krr_loo_bytes. */
pk_status pk_krr_loo(const double *K, size_t n, size_t C, pk_kmode mode, const double *Y, double ridge,
                     double *alpha, double *resid);
size_t pk_krr_loo_bytes(size_t n, size_t C, pk_kmode mode);

/* Leave-one-out diagnostics of a run's own kernel on its training set
 * (pk_run_loo): which kernel, the ridge (given, or chosen over a grid by the
 * mean squared leave-one-out residual), the memory budget. */
typedef struct pk_loo_opts {
    pk_kernel_kind kernel; /* path, tangent-init, tangent-final, ntk or rbf; not path-batch [tangent-final] */
    pk_kmode mode;         /* trace [default] or full (C x C blocks; path and tangent kernels only) */
    pk_quad quad;          /* the path kernel's quadrature [gl2] */
    double ridge;          /* > 0: this ridge, absolute; NAN: chosen over the grid [NAN] */
    const double *grid;    /* (n_grid) ridges relative to the mean diagonal of K; NULL: 1e-4 .. 10 */
    size_t n_grid;
    size_t mem_limit;      /* bytes (0 = 3/4 of free memory): the kernel and its factor must fit */
    int keep_kernel;       /* return the kernel in pk_loo.K */
} pk_loo_opts;
pk_loo_opts pk_loo_opts_defaults(void);

/* What pk_run_loo found (free with pk_loo_free). C is the model's outputs;
 * the targets Y are one-hot (softmax), the 0/1 label (logistic) or the
 * targets (mse). score_i, the mislabel score: the residual of the example's
 * own class r_{i,y_i} = 1 - yhat_{-i,y_i} (softmax), |r_i| (logistic),
 * |r_i|^2 (mse); larger = less supported by the other examples. */
typedef struct pk_loo {
    size_t n, C;
    pk_kernel_kind kernel;
    pk_kmode mode;
    double ridge;          /* the ridge used, absolute                                   */
    double mean_diag;      /* mean diagonal entry of the (m, m) system (the grid's unit) */
    size_t n_grid, chosen; /* ridges tried; the index of the least mean |r_i|^2           */
    double *grid;          /* (n_grid) ridges tried, relative to mean_diag               */
    double *grid_err;      /* (n_grid) mean |r_i|^2 at each                               */
    double *grid_acc;      /* (n_grid) leave-one-out accuracy at each (NAN for mse)      */
    double *grid_score;    /* (n_grid, n) the mislabel score at each ridge               */
    double *Y;             /* (n, C) targets                                             */
    double *alpha;         /* (n, C) dual coefficients (K + ridge I)^-1 Y                */
    double *resid;         /* (n, C) r_i = y_i - yhat_{-i}                               */
    double *score;         /* (n) the mislabel score                                     */
    double *pred;          /* (n) leave-one-out predicted class (NAN for mse)            */
    double accuracy;       /* fraction with pred_i = y_i (NAN for mse)                   */
    double err;            /* mean |r_i|^2 at the ridge                                  */
    double *K;             /* (n, n) or (n, n, C, C) when keep_kernel, else NULL         */
    double seconds_kernel, seconds_solve;
} pk_loo;
/* The kernel on the training set (in memory: pk_krr_loo_bytes, twice, must
 * fit mem_limit, else PK_ERR_INPUT with the numbers), then pk_krr_loo at
 * each ridge of the grid and at the one chosen. */
pk_status pk_run_loo(pk_run *run, const pk_loo_opts *o, pk_loo *out);
void pk_loo_free(pk_loo *l);

/* ------------------------------------------------------------------ targets */

/* What a decomposition explains (MATH.md section 11): a target g(f(x)) of
 * the network's outputs f at a query x with label y. Every query-side
 * backward pass at a quadrature node is seeded with dg/df at that node, so
 * g(f(x; w_T)) - g(f(x; w_0)) = sum_i phi_i^g(x) to the quadrature error. */
typedef enum pk_target_kind {
    PK_TARGET_OUTPUTS,     /* every output f_k: C columns (explain's default)    */
    PK_TARGET_OUTPUT,      /* f_c, c = output                                    */
    PK_TARGET_LABEL,       /* f_y, the logit of the query's label                */
    PK_TARGET_MARGIN,      /* f_y - max_{k != y} f_k                             */
    PK_TARGET_LOSS         /* l(f, y), the run's loss on the query               */
} pk_target_kind;

typedef struct pk_target {
    pk_target_kind kind;
    size_t output;         /* PK_TARGET_OUTPUT: the output c                     */
} pk_target;

/* "outputs", "output:C", "label", "margin" or "loss". */
pk_status pk_target_parse(const char *s, pk_target *t);
/* Its spelling, as parsed (into buf; returns buf). */
const char *pk_target_name(const pk_target *t, char *buf, size_t len);
/* Columns of the target for a network with C outputs: C for outputs, else 1. */
size_t pk_target_columns(const pk_target *t, size_t C);
/* Whether the target reads the queries' labels (label, margin, loss). */
int pk_target_needs_labels(const pk_target *t);
/* Check the target against a network with C outputs trained with `loss`
 * and, when it reads labels, the n queries' targets y (n, ty: ty = C for
 * mse, else 1): PK_ERR_INPUT naming the query and what is wrong. */
pk_status pk_target_check(const pk_target *t, size_t C, pk_loss loss, const double *y, size_t n);
/* g (n, columns) of the outputs f (n, C) with the targets y (n, ty). */
void pk_target_values(const pk_target *t, pk_loss loss, const double *f, const double *y, size_t n, size_t C,
                      double *g);

typedef struct pk_explain_opts {
    pk_quad quad;          /* default gl2                                     */
    int want_contrib;      /* keep phi_i(x) (Q, N, C) [1]; 0: only its sum   */
    int want_kernel;       /* compute the path kernel [1]                     */
    pk_kmode mode;         /* kernel blocks or trace [trace]                   */
    size_t block;          /* queries per block (0 = chosen from mem_limit)   */
    size_t mem_limit;      /* bytes the outputs and workspace may use (0 = 3/4 of free memory) */
    pk_progress_fn progress; /* after every replayed step; non-zero stops (PK_ERR_STOPPED) */
    void *ctx;
    int batch_kernel;      /* the kernel is the contribution kernel (MATH.md section 3,
                              batch indicator, Jbar on the query side) instead of the
                              paper's path kernel (pk_run_path_kernel) [0]         */
    pk_target target;      /* what is decomposed [outputs]; any other target has
                              one column and no kernel (want_kernel 0)             */
    const double *y;       /* (Q, ty) the queries' targets, for label, margin and
                              loss (ty = C for mse, else 1); NULL otherwise        */
} pk_explain_opts;

pk_explain_opts pk_explain_opts_defaults(void);

/* Everything `explain` computes for Q queries of a run with N training
 * examples and C outputs. Free with pk_explain_free. */
typedef struct pk_explain {
    size_t Q, N, C;
    pk_kmode mode;
    double *pred;          /* (Q, C)  f(x; w_T), or the target g(f(x; w_T)):
                              C is the target's columns (pk_target_columns)    */
    double *bias;          /* (Q, C)  b(x) = f(x; w_0) (the target's)          */
    double *contrib;       /* (Q, N, C) phi_i(x), or NULL                      */
    double *contrib_sum;   /* (Q, C)  sum_i phi_i(x)                           */
    double *kernel;        /* path kernel K^p(x, x_i) (the paper's, or with batch_kernel the
                              contribution kernel): (Q, N) trace or C = 1; (Q, N, C, C) full; or NULL */
    double *regularisation;/* (Q, C) the part of pred - bias that weight decay
                              moved (MATH.md section 5); zeros without decay  */
    double max_abs_err;    /* max_{q,c} |pred - bias - sum_i contrib - regularisation| */
    double max_rel_err;    /* max_abs_err / max_{q,c} |pred - bias|            */
    double seconds;
    size_t steps;
    char quad[8];
    double pieces;         /* exact rule: pieces per query and step, mean (1: no kink); 0 otherwise */
    size_t piece_nodes;    /* exact rule: Gauss-Legendre nodes per piece; 0 otherwise */
} pk_explain;

/* Bytes that pk_run_explain would allocate for its outputs, and for its
 * workspace with the chosen block size. */
size_t pk_run_explain_bytes(const pk_run *run, size_t Q, const pk_explain_opts *o);

/* Replay the run's trajectory and compute the exact contributions of every
 * training example to the predictions at the queries Xq (Q, d), already in
 * the run's feature space (pk_run_load_data). The training data must be
 * attached (pk_run_attach_data) or loadable from the recorded spec. */
pk_status pk_run_explain(pk_run *run, const double *Xq, size_t Q, const pk_explain_opts *o,
                         pk_explain *out);
void pk_explain_free(pk_explain *e);

/* ------------------------------------------------------------- attribution */

/* Self-influence of training example i (MATH.md section 3, "Self-influence"):
 *   loss form    SI_i = sum_{t: i in B_t} (eta_t/|B_t|) sum_q c_q <g_i(w_t + s_q D_t), g_i(w_t)>,
 *                the exact (quadrature-integrated) share of example i's own
 *                gradient in the change of its own loss, with the sign flipped;
 *   kernel form  SI_i = trace K^p(x_i, x_i), the path kernel's diagonal. */
typedef enum pk_si_form { PK_SI_LOSS, PK_SI_KERNEL } pk_si_form;

pk_status pk_si_form_parse(const char *s, pk_si_form *f);
/* Replay a gd/sgd run and fill si (N), in data order; checks that the replay
 * lands on the stored final weights bit for bit. Needs the training data
 * (attached or loadable, as for pk_run_explain). */
pk_status pk_run_self_influence(pk_run *run, pk_si_form form, const pk_quad *q, double *si);
/* Per-example loss l(f(x_i; w), y_i) and squared gradient norm |g_i(w)|^2
 * (either may be NULL) of every example of `data` at weights w: (n) each. */
pk_status pk_model_example_stats(const pk_model *m, pk_loss loss, const double *w, const pk_data *data,
                                 double *loss_i, double *gnorm2);
/* TracIn self-influence with n_ckpt evenly spaced checkpoints t_j = (j+1) T / n_ckpt
 * (the last is the final weights): score_i = sum_j eta_{t_j} |g_i(w_{t_j})|^2,
 * eta the learning rate of step min(t_j, T-1). score is (N). */
pk_status pk_run_tracin(pk_run *run, size_t n_ckpt, double *score);
/* Indices of the (at most) k entries v[i * stride], i < n, with sign * v > 0
 * (sign 0: all non-NaN entries, by value), strongest first, exact ties by the
 * smaller index; *n_out receives how many. */
pk_status pk_rank(const double *v, size_t n, size_t stride, int sign, size_t k, size_t *idx, size_t *n_out);
/* Streaming top-k attribution (src/attribution/topk.c): for each of n queries, the K training
 * examples with the largest positive and the K with the most negative exact
 * contribution phi_i(x)[c] to one output c (MATH.md section 3), exact ties by
 * the smaller index, and the sum over all examples -- without a dense
 * queries x examples array. gd/sgd runs are replayed batch by batch (the
 * per-step work is queries x batch, and a contribution is ranked as soon as
 * its example's last step is done); momentum/adam/weight-decay runs go
 * through pk_run_explain for the group. */
typedef struct pk_topk_opts {
    pk_quad quad;            /* default gl2                                     */
    size_t top;              /* K, proponents and opponents per query [10]      */
    size_t block;            /* queries per block of products (0 = 256)         */
    size_t mem_limit;        /* bytes (0 = 3/4 of free memory)                  */
    pk_progress_fn progress; /* after every replayed step; non-zero stops (PK_ERR_STOPPED) */
    void *ctx;
    pk_target target;        /* outputs or output (the default): the output cls[x] of
                                each query; label, margin or loss: that target (one
                                column; cls only labels the rows)                 */
    const double *y;         /* (n, ty) the queries' targets for label, margin, loss */
} pk_topk_opts;

pk_topk_opts pk_topk_opts_defaults(void);

/* Rows for n queries, allocated by the caller. */
typedef struct pk_topk {
    double *pred, *bias;     /* (n) f_c(x; w_T), f_c(x; w_0) (or the target's)   */
    double *total;           /* (n) sum over all training examples of phi_i(x)[c] */
    double *regularisation;  /* (n) weight decay's share (MATH.md section 5)    */
    int64_t *pro_idx;        /* (n, K) strongest first; -1 after the last        */
    double *pro_val;         /* (n, K) phi_i(x)[c] > 0; NaN after the last       */
    int64_t *opp_idx;        /* (n, K) most negative first; -1 after the last    */
    double *opp_val;         /* (n, K) phi_i(x)[c] < 0; NaN after the last       */
} pk_topk;

/* Queries that one pass over the trajectory can take within the memory
 * budget (at most Q), and the bytes that pass needs. */
size_t pk_run_attribute_group(pk_run *run, size_t Q, const pk_topk_opts *o, size_t *bytes);
/* One pass: the queries Xq (n, d) in the run's feature space, attributed
 * output cls (n). Checks that the replay lands on the stored final weights. */
pk_status pk_run_attribute(pk_run *run, const double *Xq, size_t n, const size_t *cls, const pk_topk_opts *o,
                           pk_topk *out);
/* ROC-AUC of `score` for the examples marked positive (Mann-Whitney U, ties
 * count 1/2); NaN when either class is empty. */
double pk_auc(const double *score, const unsigned char *positive, size_t n);
/* Flip round(frac * n) seeded labels (class targets 0..C-1) to a class drawn
 * uniformly among the other C-1; flipped (n) marks them. frac in (0, 1). */
pk_status pk_data_flip_labels(pk_data *data, size_t C, double frac, uint64_t seed, unsigned char *flipped,
                              size_t *n_flipped);

/* -------------------------------------------- linear datamodeling score */

/* Does an attribution predict retraining? (docs/ATTRIBUTION.md, "LDS";
 * src/attribution/lds.c.) M seeded subsets S_m of round(alpha N) training
 * examples are retrained with the run's configuration; for every test point
 * x the Spearman correlation over m between the predicted sum_{i in S_m}
 * score_i(x) and the retrained target g(f(x; w^m)) is its LDS; a method's
 * LDS is the mean over the test points, with the standard error
 * sd / sqrt(count) (test points where either side is constant have no
 * correlation and are left out; `valid` counts the others). */

/* Spearman's rank correlation of a (n, stride sa) and b (n, stride sb):
 * Pearson's of their ranks, ties sharing the mean rank (as scipy's
 * spearmanr); NaN when either is constant or n < 2. */
double pk_spearman(const double *a, size_t sa, const double *b, size_t sb, size_t n);
/* LDS of `scores` (Q, N) over the subsets `mask` (M, N; 1 = in the subset)
 * against the retrained targets (M, Q): predicted (M, Q) receives the sums
 * when not NULL, per_query (Q) the correlations (NaN where undefined),
 * *mean, *se and *valid the summary. */
pk_status pk_lds_score(const double *scores, const unsigned char *mask, const double *retrained, size_t M, size_t N,
                       size_t Q, double *predicted, double *per_query, double *mean, double *se, size_t *valid);
/* The subsets: mask (M, N), subset m the first round(alpha N) of a
 * permutation of 0..N-1 seeded by (seed, m) (so subset m does not depend on M). */
pk_status pk_lds_subsets(size_t N, size_t M, double alpha, uint64_t seed, unsigned char *mask);

/* Progress of pk_lds_run: what it is doing (a phase name), done of total
 * units (steps of a replay or training, subsets retrained); non-zero stops
 * (PK_ERR_STOPPED; what is finished stays in the work directory). Called
 * from one thread at a time. */
typedef int (*pk_lds_progress_fn)(void *ctx, const char *phase, size_t done, size_t total);

enum { PK_LDS_MAX_ENSEMBLES = 8 };

typedef struct pk_lds_opts {
    pk_train_opts train;     /* the configuration: model, loss, optimiser, steps, seed
                                (out_dir ignored; keep: of the runs kept [their steps]) */
    size_t epochs;           /* > 0: each training set, whole or subset, trains for
                                epochs * ceil(n / batch) steps (train.steps ignored) [0] */
    pk_target target;        /* a target of one column [loss]                        */
    size_t subsets;          /* M [100]                                              */
    double alpha;            /* fraction of the training set in a subset [0.5]       */
    uint64_t subset_seed;    /* [0]                                                  */
    int reseed;              /* subset m trains from seed train.seed + 1 + m (fresh
                                initial weights and batch order) [0: train.seed]     */
    pk_quad quad;            /* the exact method's rule [gl2]                        */
    size_t ensembles[PK_LDS_MAX_ENSEMBLES]; /* K of the ensembles: the mean of the exact
                                contributions of the runs of seeds train.seed .. + K-1 */
    size_t n_ensembles;      /* [3: 1, 5, 20]                                        */
    const char *dir;         /* work directory (required): DIR/runs (the runs),
                                DIR/retrain (each subset's retrained targets), DIR/scores
                                (each method's scores): kept, so that a stopped job, or
                                one asking for more methods or subsets, continues      */
    size_t mem_limit;        /* explain's memory budget, bytes (0 = default)        */
    pk_lds_progress_fn progress;
    void *ctx;
} pk_lds_opts;

pk_lds_opts pk_lds_opts_defaults(void);

typedef struct pk_lds {
    size_t M, Q, N, n_methods;
    char (*name)[32];        /* (n_methods) exact:RULE, left, grad-dot, grad-cos, ensemble:K */
    double *lds, *se;        /* (n_methods)                                          */
    size_t *valid;           /* (n_methods) test points with a correlation           */
    double *seconds;         /* (n_methods) training of the runs it needs + scoring   */
    double *per_query;       /* (n_methods, Q) Spearman per test point (NaN: none)    */
    double *predicted;       /* (n_methods, M, Q) sum of the scores over subset m     */
    double *retrained;       /* (M, Q) target after retraining on subset m            */
    double *full;            /* (Q) target of the run on the whole training set       */
    unsigned char *mask;     /* (M, N) the subsets                                    */
    double seconds_retrain;  /* the subsets' training, summed over them               */
    double seconds_total;    /* this call                                             */
    size_t steps;            /* steps of the whole run                                */
    size_t subset_steps;     /* steps of a subset's                                   */
} pk_lds;

/* The whole evaluation on `train` (standardised already when train.standardize)
 * and the test points (test, labels in the loss's format): the runs, the
 * retraining, every method's scores and LDS. Work already in o->dir is used,
 * not redone (a directory of another job -- other data, configuration or
 * target -- is refused). Free with pk_lds_free. */
pk_status pk_lds_run(const pk_data *train, const pk_data *test, const pk_lds_opts *o, pk_lds *out);
void pk_lds_free(pk_lds *l);

/* ------------------------------------------------------------------ report */

/* One self-contained HTML file about a run (inline SVG figures, images as
 * PNG data URIs; nothing is fetched): (a) the batch loss per step; (b) the
 * representation check pred = bias + sum_i phi_i (+ regularisation) over
 * queries x outputs, with its residual; (c) with `convergence`, the error of
 * each quadrature rule against the learning rate (a `convergence --out`
 * directory); (d) a heat map of the path kernel (trace) between a class-
 * stratified sample of training examples and the queries; (e) the tangent
 * kernel's movement |K_t - K_0|_F / |K_0|_F and its label alignment
 * <K, YY^T> / (|K|_F |YY^T|_F) at evenly spread checkpoints; (f) for the first
 * queries, their strongest proponents and opponents (images when the data
 * are images: img_h x img_w, or 8 x 8 for 64 features); (g) with `compare`,
 * the table of a `compare --out` directory's compare.csv and, when it has a
 * widths block, (h) the tangent kernel's change and alignment against width. */
typedef struct pk_report_opts {
    const char *query;        /* query spec; NULL: the run's training data spec */
    pk_load_opts load;        /* selection of the queries [first 10]            */
    const char *convergence;  /* a `convergence --out` directory, or NULL       */
    const char *compare;      /* a `compare --out` directory, or NULL           */
    pk_quad quad;             /* quadrature rule of the explanation [gl4]       */
    size_t show;              /* queries drawn with their proponents [3]        */
    size_t top;               /* proponents and opponents of each [5]           */
    size_t heat_train;        /* training examples in the heat map [60]         */
    size_t heat_query;        /* queries in the heat map [60]                   */
    size_t move_train;        /* training examples for the kernel movement [100] */
    size_t move_steps;        /* checkpoints after step 0 for the movement [10]  */
    size_t mem_limit;         /* explain's memory budget, bytes (0 = default)   */
    size_t loo_top;           /* training examples with the largest leave-one-out
                                 residuals drawn (pk_run_loo; classes only) [12]; 0: none */
    pk_kernel_kind loo_kernel; /* their kernel [tangent-final]                  */
    const char *lds;          /* a `lds --out` directory: LDS per method with error
                                 bars, predicted against retrained targets (NULL: none) */
} pk_report_opts;

/* What the report found, for a caller that prints a summary. */
typedef struct pk_report_info {
    size_t Q, N, C, steps;
    double max_abs_err, max_rel_err; /* of the representation check            */
    double seconds;
} pk_report_info;

pk_report_opts pk_report_opts_defaults(void);
/* Compute everything and write the HTML file `path` atomically; info may be NULL. */
pk_status pk_report_write(pk_run *run, const pk_report_opts *o, const char *path, pk_report_info *info);

#ifdef __cplusplus
}
#endif
#endif /* PATHKERNEL_H */
