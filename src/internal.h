/* internal.h -- helpers shared by the library's files; not installed. */
#ifndef PK_INTERNAL_H
#define PK_INTERNAL_H

#include "pathkernel.h"
#include <stdio.h>
#include <stdlib.h>

/* Loops with fewer element operations than this run on one thread: waking
 * a team costs more than it saves. Results never depend on it (each thread
 * owns whole output rows). */
#define PK_PAR_MIN ((size_t)1 << 16)

/* C (M, N) = alpha op(A) op(B) + beta C, row-major, op = transpose when
 * trans_* is set: cblas_dgemm tiled so that the result never depends on the
 * number of threads (gemm.c). */
void pk_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
             size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc);

/* LAPACK, from the OpenBLAS the library links (Fortran interface; column-
 * major, so a row-major symmetric matrix is passed as it is). */
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
             double *work, const int *lwork, int *iwork, const int *liwork, int *info);
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotrs_(const char *uplo, const int *n, const int *nrhs, const double *a, const int *lda, double *b,
             const int *ldb, int *info);

/* Checked allocation of n * size bytes; NULL (with pk_last_error set) when
 * the product overflows or memory is short. */
void *pk_alloc(size_t n, size_t size);
void *pk_calloc(size_t n, size_t size);

/* Atomic output: write into "PATH.tmp.PID", then pk_atomic_commit renames
 * it over PATH (after fflush, write errors checked); pk_atomic_abort removes it. */
typedef struct pk_atomic { FILE *f; char *path; char *tmp; } pk_atomic;
pk_status pk_atomic_open(pk_atomic *a, const char *path);
pk_status pk_atomic_commit(pk_atomic *a);
void pk_atomic_abort(pk_atomic *a);
/* Write a whole buffer atomically. */
pk_status pk_write_file(const char *path, const void *buf, size_t len);
/* Read a whole file (plain or gzip) into memory; *buf is malloc'ed and
 * NUL-terminated (len excludes the NUL). `max` bounds the size (0 = 4 GiB). */
pk_status pk_read_file(const char *path, int gunzip, size_t max, unsigned char **buf, size_t *len);

/* The first n bytes of a file (plain or gzip), fewer when it is shorter. */
pk_status pk_read_prefix(const char *path, int gunzip, size_t n, unsigned char **buf, size_t *len);

/* "a/b" joined into a malloc'ed string. */
char *pk_path_join(const char *dir, const char *name);
char *pk_strdup(const char *s);
/* mkdir -p */
pk_status pk_mkdirs(const char *dir);
/* Parse a whole string as a finite double / size_t; 0 on success. */
int pk_parse_double(const char *s, double *v);
int pk_parse_size(const char *s, size_t *v);

/* 64-bit FNV-1a over bytes, chained from h (start with PK_HASH_INIT). */
#define PK_HASH_INIT 0xcbf29ce484222325ULL
uint64_t pk_hash_bytes(uint64_t h, const void *p, size_t n);

#endif

/* ------------------------------------------------------------ training step */

/* What one gradient evaluation needs: the model, the loss, the data and the
 * scratch buffers for a batch of up to `cap` examples. train.c owns it; the
 * run directory replays steps with it (pk_run_weights). */
typedef struct pk_stepper {
    const pk_mlp *m;
    pk_loss loss;
    const pk_data *data;
    size_t cap;
    pk_tape *tape;
    double *xb;   /* (cap, d)   gathered batch features */
    double *yb;   /* (cap, ty)  gathered batch targets  */
    double *R;    /* (cap, C)   residuals dl/df         */
} pk_stepper;

pk_status pk_stepper_init(pk_stepper *s, const pk_mlp *m, pk_loss loss, const pk_data *data, size_t cap);
void pk_stepper_free(pk_stepper *s);
/* Batch gradient G (P) of the mean loss over the examples idx[0..nb) at w;
 * idx == NULL means all examples in order. Returns the batch loss. */
double pk_stepper_grad(pk_stepper *s, const double *w, const uint32_t *idx, size_t nb, double *G);

/* ------------------------------------------------------------ run directory */

#define PK_RUN_VERSION 1
/* Weights checkpoint: "PKWEIGHT" u32 version u32 0 u64 step u64 P u64 S,
 * then w (P) and optimiser state (S, P) as float64, then crc32 (u32) of all
 * bytes before it. Little-endian. */
pk_status pk_ckpt_write(const char *path, size_t step, size_t P, const double *w, size_t S, const double *state);
pk_status pk_ckpt_read(const char *path, size_t step, size_t P, double *w, size_t S, double *state);
/* Name of the checkpoint of step t inside a run: malloc'ed "DIR/weights/step-%08zu.pkw". */
char *pk_ckpt_path(const char *dir, size_t t);

/* The recorded path: learning rate, batch loss and batch of every step.
 * "PKTRAJ\0\0" u32 version u32 0 u64 T u64 N u64 total, then lr (T) and
 * loss (T) float64, off (T+1) u64, idx (total) u32, then crc32. A step with
 * an empty range used the full batch 0..N-1 in order. */
typedef struct pk_traj {
    size_t T, N;
    double *lr;      /* (T) */
    double *loss;    /* (T) */
    uint64_t *off;   /* (T+1) */
    uint32_t *idx;   /* (off[T]) */
    uint32_t *iota;  /* (N) 0..N-1, for full batches */
} pk_traj;

pk_status pk_traj_write(const char *path, const pk_traj *tr);
/* A new run directory (run.json with status "running", standardize.npy);
 * refuses a directory that already holds a run. */
pk_status pk_run_create(const char *dir, const pk_data *train, const pk_train_opts *o, const pk_mlp *m);
/* The end of training: trajectory.bin, steps.csv, and run.json's status and steps. */
pk_status pk_run_finish(const char *dir, const pk_traj *tr, size_t steps_done, const char *status);
pk_status pk_traj_read(const char *path, pk_traj *tr);
void pk_traj_free(pk_traj *tr);
/* The run's training data: attached, or loaded once from the recorded spec. */
pk_status pk_run_train(pk_run *run, const pk_data **train);

/* ------------------------------------------------------------ kernel sides */

/* One side of a structured kernel product (MATH.md section 4): layer inputs
 * and deltas of n examples. Each example owns `rows` delta rows of length
 * dims[l+1] * fold: rows = C, fold = 1 for per-output deltas (full blocks);
 * rows = 1, fold = C for the same buffer read as one row (trace); rows = 1,
 * fold = 1 for loss-weighted deltas (contributions). */
typedef struct pk_side {
    size_t n, rows, fold;
    int unit;   /* per-output deltas: those of the output layer are e_k */
    const double *a[PK_MAX_LAYERS];      /* (n, dims[l])                   */
    const double *delta[PK_MAX_LAYERS];  /* (n * rows, dims[l+1] * fold)   */
} pk_side;

/* S = sum_l (sw_l^2 A_l + sb_l^2) o D_l over the pairs of the
 * two sides, with A_l = a_x a_y^T (broadcast over the rows of an example) and
 * D_l = delta_x delta_y^T. Layout of S: pairs = 0: ((x, kx), (y, ky)) with
 * ldy >= y.n examples per row; pairs = 1: (x, y, kx, ky) with ldy >= y.n
 * pairs per x (a block of a larger kernel). A (x.n, y.n) and
 * D (x.n * x.rows, y.n * y.rows) are scratch. */
void pk_side_product(const pk_mlp *m, const pk_side *x, const pk_side *y, double *S, size_t ldy,
                     int pairs, double *A, double *D);

/* A side from a tape after pk_mlp_output_deltas into `deltas`. */
pk_side pk_side_outputs(const pk_mlp *m, const pk_tape *t, double *const *deltas, int trace);
/* A side from a tape after pk_mlp_backward (loss-weighted deltas). */
pk_side pk_side_loss(const pk_mlp *m, const pk_tape *t);
/* Per-output delta buffers for up to `cap` examples: deltas[l] (cap, C, dims[l+1]). */
pk_status pk_deltas_new(const pk_mlp *m, size_t cap, double **deltas);
void pk_deltas_free(const pk_mlp *m, double **deltas);

/* ------------------------------------------- momentum, Adam, weight decay */

/* Whether explain needs momentum.c's backward sweep (momentum, adam, adamw,
 * or any weight decay) instead of path.c's forward sweep. */
int pk_explain_needs_backward(const pk_optim *op);
/* Memory plan of the backward sweep: queries per block and steps per
 * segment that fit `limit` next to `out_bytes` of outputs; returns the bytes
 * that plan needs (more than limit when even one query does not fit). */
size_t pk_explain_backward_plan(const pk_run *run, size_t Q, const pk_explain_opts *o, size_t limit,
                                size_t out_bytes, size_t *Qb, size_t *seg);
/* The backward sweep: adds to e->contrib, contrib_sum, kernel and
 * regularisation (allocated and zeroed by the caller). */
pk_status pk_explain_backward(pk_run *run, const double *Xq, size_t Q, const pk_explain_opts *o,
                              size_t Qb, size_t seg, pk_explain *e);
