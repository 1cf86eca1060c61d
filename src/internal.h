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
/* C (M, N) = op(A) op(B) in one BLAS call on the calling thread, for callers
 * that split their work into pieces of a fixed size themselves (tangent.c). */
void pk_gemm_tile(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
                  size_t lda, const double *B, size_t ldb, double *C, size_t ldc);
/* pk_gemm for products whose rows are independent items (queries): every
 * BLAS call has the same shape (tiles of a fixed number of rows, the last
 * one padded), so that a row's bits never depend on how many rows share the
 * call, on any OpenBLAS kernel (gemm.c). */
void pk_gemm_rows(int trans_a, int trans_b, size_t M, size_t N, size_t K, double alpha, const double *A,
                  size_t lda, const double *B, size_t ldb, double beta, double *C, size_t ldc);
/* CRC-32 (zlib's and gzip's) of n bytes, continuing from crc (0 to
 * start), by ISA-L (util.c). */
uint32_t pk_crc32(uint32_t crc, const void *p, size_t n);
/* The fixed piece size, in rows, of work split over threads (gemm.c,
 * pk_mlp_output_deltas, pk_kernel_tangent): never the thread count, so that
 * results are bit-identical whatever the number of threads. */
#define PK_PIECE_ROWS 256
/* pk_alloc for large matrices, on transparent huge pages where the system
 * allows (gemm.c); free() releases it. */
void *pk_alloc_big(size_t n, size_t size);

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
/* Bytes an operation may use: `limit` (a --mem option, bytes) if non-zero,
 * else 3/4 of the memory now available. */
size_t pk_memory_budget(size_t limit);

/* Atomic output: write into "PATH.tmp.PID", then pk_atomic_commit renames
 * it over PATH (after fflush, write errors checked); pk_atomic_abort removes it. */
typedef struct pk_atomic { FILE *f; char *path; char *tmp; } pk_atomic;
pk_status pk_atomic_open(pk_atomic *a, const char *path);
pk_status pk_atomic_commit(pk_atomic *a);
void pk_atomic_abort(pk_atomic *a);
/* A group of outputs written as one: between pk_group_begin() and
 * pk_group_end(s), committed files keep their temporary names; pk_group_end
 * renames them all into place when s is PK_OK (returning the first rename
 * error), else removes them, and returns the resulting status. Nests. */
void pk_group_begin(void);
pk_status pk_group_end(pk_status s);
/* Where a file committed in the open group waits for pk_group_end (its
 * temporary name), for a program that must read it before; NULL if none. */
const char *pk_group_pending(const char *path);
/* "PATH: write failed: <strerror(err)> (nothing was written under that name;
 * what to do)", PK_ERR_IO; err 0 counts as EIO. */
pk_status pk_write_error(const char *path, int err);
/* Write a whole buffer atomically. */
pk_status pk_write_file(const char *path, const void *buf, size_t len);
/* Read a whole file (plain or gzip) into memory; *buf is malloc'ed and
 * NUL-terminated (len excludes the NUL). `max` bounds the size (0 = 4 GiB). */
pk_status pk_read_file(const char *path, int gunzip, size_t max, unsigned char **buf, size_t *len);

/* The first n bytes of a file (plain or gzip), fewer when it is shorter. */
pk_status pk_read_prefix(const char *path, int gunzip, size_t n, unsigned char **buf, size_t *len);

/* A .npy file written in pieces (float64 or int64, C order), atomically:
 * open with the whole shape, write the elements in order (any number per
 * call), commit (renames; refuses if elements are missing) or abort. Write
 * errors are kept and reported by commit. */
typedef struct pk_npy_stream { pk_atomic at; size_t left, data; int bad, err; } pk_npy_stream;
pk_status pk_npy_stream_open(pk_npy_stream *w, const char *path, int int64, size_t ndim, const size_t *shape);
pk_status pk_npy_stream_write(pk_npy_stream *w, const void *a, size_t count);
/* count elements at element `at` of the data, from any thread, in any order
 * (pwrite); every element must be written once before the commit. */
void pk_npy_stream_write_at(pk_npy_stream *w, size_t at, const void *a, size_t count);
pk_status pk_npy_stream_commit(pk_npy_stream *w);
void pk_npy_stream_abort(pk_npy_stream *w);
/* int64 C-order .npy, atomically (pk_npy_write's twin). */
pk_status pk_npy_write_i64(const char *path, const int64_t *a, size_t ndim, const size_t *shape);

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
    uint32_t *iota;  /* (N) 0..N-1, for full batches; NULL when no step used one */
} pk_traj;

pk_status pk_traj_write(const char *path, const pk_traj *tr);

/* The journal, RUN/journal.bin: what makes a killed run resumable. Header
 * "PKJOURNL" u32 version u32 0 u64 T N P S keep, then crc32 (u32) of those
 * 56 bytes (written atomically); then one record per finished step t =
 * 1, 2, ...: u64 t, f64 lr, f64 batch loss, u64 batch hash (FNV-1a of u64
 * range length, then the u32 indices), crc32 (u32) of those 32 bytes, each
 * appended by one write(2) after the step's checkpoint (if any) is renamed
 * into place. Little-endian. No fsync: it survives the process being
 * killed at any instant, as the checkpoints do, not power loss. */
#define PK_JOURNAL_HDR 60
#define PK_JOURNAL_REC 36
typedef struct pk_journal {
    int fd;              /* -1 when closed */
    char *path;
    size_t T, N, P, S, keep;   /* the sizes the header holds: set before create/open */
} pk_journal;
char *pk_journal_path(const char *dir);
pk_status pk_journal_create(pk_journal *j, const char *dir);
pk_status pk_journal_append(pk_journal *j, size_t step, double lr, double loss, uint64_t batch);
/* Check the header against j's sizes (PK_ERR_STATE when damaged or
 * different) and read the complete records from the start up to the first
 * one that is short, fails its crc32 or is out of order: their count *k,
 * lr, loss and batch hash (T each, caller's), and *ignored, the bytes after
 * them. Leaves the journal open for appending. */
pk_status pk_journal_open(pk_journal *j, const char *dir, size_t *k, size_t *ignored, double *lr, double *loss,
                          uint64_t *batch);
/* Keep the first k records only. */
pk_status pk_journal_truncate(pk_journal *j, size_t k);
void pk_journal_close(pk_journal *j);

/* A new run directory: standardize.npy, weights/step-0 (w (P) and the
 * zero optimiser state (S, P)), the journal (j's sizes set; left open)
 * and, last, run.json with status "running"; refuses a directory that
 * already holds a run. */
pk_status pk_run_create(const char *dir, const pk_data *train, const pk_train_opts *o, const pk_mlp *m,
                        const double *w, const double *state, pk_journal *j);
/* The end of training: trajectory.bin, steps.csv, and run.json's status and
 * steps; a complete run's journal is removed. */
pk_status pk_run_finish(const char *dir, const pk_traj *tr, size_t steps_done, const char *status);
/* Rewrite run.json's status and steps (atomically). */
pk_status pk_run_set_status(const char *dir, const char *status, size_t steps);
/* Remove what an uninterrupted run would not hold at step `from`:
 * trajectory.bin and steps.csv, temporary files of killed writes, and the
 * checkpoints after `from` or off the every-keep-th-and-T grid (a stop's). */
pk_status pk_run_prune(const char *dir, size_t from, size_t T, size_t keep);
/* run.json alone (any status, no trajectory): what train --resume reads. */
pk_status pk_run_open_config(const char *dir, pk_run **out);
size_t pk_run_steps_requested(const pk_run *run);
uint64_t pk_run_seed(const pk_run *run);
const char *pk_run_status(const pk_run *run);
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
    int queries; /* the examples are queries (pk_tape.queries): fixed-shape products */
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

/* out (n, dims[l+1]) = act'(z_l) for the n examples on the tape (model.c). */
void pk_mlp_act_grad(const pk_mlp *m, const pk_tape *t, size_t l, double *out);
/* A side from a tape after pk_mlp_output_deltas into `deltas`. */
pk_side pk_side_outputs(const pk_mlp *m, const pk_tape *t, double *const *deltas, int trace);
/* A side from a tape after pk_mlp_backward (loss-weighted deltas). */
pk_side pk_side_loss(const pk_mlp *m, const pk_tape *t);
/* Per-output delta buffers for up to `cap` examples: deltas[l] (cap, C, dims[l+1]). */
pk_status pk_deltas_new(const pk_mlp *m, size_t cap, double **deltas);
void pk_deltas_free(const pk_mlp *m, double **deltas);

/* ------------------------------------------- momentum, Adam, weight decay */

/* Replayed step t of a gd/sgd run: the batch (*idx, *nb), the training side
 * on st->tape and the batch gradient G at w, w_next = w after the optimiser
 * step (state updated). Returns the step's learning rate. */
double pk_replay_step(pk_run *run, pk_stepper *st, size_t t, const double *w, double *w_next, double *state,
                      double *G, const uint32_t **idx, size_t *nb);
/* The end of a forward replay (path.c, topk.c, attribution.c): w must equal
 * the stored final weights bit for bit (scratch: P doubles). */
pk_status pk_replay_landed(pk_run *run, const double *w, double *scratch);
/* After replayed step t: the caller's progress callback; PK_ERR_STOPPED
 * (with a message) when it asks to stop. */
pk_status pk_replay_progress(pk_run *run, size_t t, pk_progress_fn progress, void *ctx);

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
