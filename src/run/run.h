/* run.h -- the run directory's files and their formats, and the replay of a recorded run. Not installed. */
#ifndef PK_RUN_H
#define PK_RUN_H

#include "model/model.h"

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
 * zero optimiser state (S, P)), the journal (j's sizes set; left open; none
 * when j is NULL) and, last, run.json with status "running"; refuses a
 * directory that already holds a run. */
pk_status pk_run_create(const char *dir, const pk_data *train, const pk_train_opts *o, const pk_model *m,
                        const double *w, const double *state, pk_journal *j, const pk_record_opts *rec);
/* run.json (status "running", steps 0), written atomically; rec: the run
 * is a recording (pk_record_begin), else NULL. pk_run_create writes it last;
 * a recording rewrites it when it ends (its batch size and steps known). */
pk_status pk_run_json_write(const char *dir, const pk_data *train, const pk_train_opts *o, const pk_model *m,
                            const pk_record_opts *rec);
/* The end of training: trajectory.bin, steps.csv, and run.json's status and
 * steps; a complete run's journal is removed. */
pk_status pk_run_finish(const char *dir, const pk_traj *tr, size_t steps_done, const char *status);
/* Rewrite run.json's status and steps (atomically). */
pk_status pk_run_set_status(const char *dir, const char *status, size_t steps);
/* Remove what an uninterrupted run would not hold at step `from`:
 * trajectory.bin and steps.csv, temporary files of killed writes, and the
 * checkpoints after `from` or off the every-keep-th-and-T grid (a stop's). */
pk_status pk_run_prune(const char *dir, size_t from, size_t T, size_t keep);
/* The largest batch of any step of the run: the batch size (n for full
 * batches), or for a recorded run the largest batch it recorded. */
size_t pk_run_batch_cap(const pk_run *run);
/* A recorded run's step `step` (1..T) against the step pathkernel's
 * optimiser takes from the recorded w_{step-1}: diff = |recorded w_step -
 * computed w_step|, norm = |computed w_step - w_{step-1}|, wnorm = |recorded
 * w_step| (2-norms). Keeps the largest diff / norm for pk_run_step_residual;
 * PK_ERR_STATE naming the step when the difference is beyond the run's
 * tolerance (MATH.md section 10). */
pk_status pk_run_step_check(pk_run *run, size_t step, double diff, double norm, double wnorm);
/* The stepper of a run's replays: its model, loss, training data (attached
 * or loaded), seed and the capacity of its largest batch. */
pk_status pk_run_stepper(pk_run *run, pk_stepper *st);

/* run.json alone (any status, no trajectory): what train --resume reads. */
pk_status pk_run_open_config(const char *dir, pk_run **out);
size_t pk_run_steps_requested(const pk_run *run);
uint64_t pk_run_seed(const pk_run *run);
const char *pk_run_status(const pk_run *run);
pk_status pk_traj_read(const char *path, pk_traj *tr);
/* The same, refusing a file whose sizes differ from expect[0..1] (T, N),
 * when expect is not NULL. */
pk_status pk_traj_read_sized(const char *path, const size_t *expect, pk_traj *tr);
void pk_traj_free(pk_traj *tr);

/* A binary file of the run directory, written straight through to its
 * temporary name with the crc32 of everything written kept on the way
 * (binfile.c); pk_bin_finish appends the crc32 and renames it into place.
 * Errors are kept in s and returned by pk_bin_finish. */
typedef struct pk_bin { pk_atomic a; uint32_t crc; pk_status s; } pk_bin;
pk_status pk_bin_open(pk_bin *b, const char *path);
void pk_bin_put(pk_bin *b, const void *src, size_t n);
void pk_bin_u32(pk_bin *b, uint32_t v);
void pk_bin_u64(pk_bin *b, uint64_t v);
pk_status pk_bin_finish(pk_bin *b);
/* Read a whole binary file and check its magic, version (PK_RUN_VERSION)
 * and crc32; *len excludes the crc32. */
pk_status pk_bin_read(const char *path, const char magic[8], unsigned char **buf, size_t *len);

/* The one walk over a recorded run (replay.c). At step t it holds w_t, the
 * batch B_t and eta_t, the training side at w_t as training computed it (the
 * stepper's tape: the batch's activations and loss-weighted deltas, and the
 * batch gradient G), and w_{t+1} with the optimiser state after the step;
 * pk_replay_node gives the weights at a quadrature node between the two.
 * Every analysis that walks the path forward goes through it:
 *
 *     pk_replay r;
 *     pk_status s = pk_replay_begin(&r, run, 0, progress, ctx);
 *     while (!s && pk_replay_next(&r)) { ... r.t, r.idx, r.nb, r.lr, r.st.tape ... }
 *     s = pk_replay_end(&r, s);   // the walk landed on the stored final weights?
 *
 * The fields are for reading. */
typedef struct pk_replay {
    pk_run *run;
    const pk_optim *op;
    size_t T, P, S;
    size_t t;              /* the step held (valid after pk_replay_next returned 1) */
    size_t end;            /* the walk stops before step end (T unless the caller sets it) */
    const uint32_t *idx;   /* (nb) its batch                                   */
    size_t nb;
    double lr;             /* eta_t                                             */
    double *w, *w_next;    /* (P) w_t and w_{t+1}                               */
    double *state;         /* (S, P) optimiser state after step t               */
    double *G;             /* (P) batch gradient at w_t                          */
    pk_stepper st;         /* the batch at w_t: st.tape (activations, deltas)    */
    double *node;          /* (P) scratch of pk_replay_node                      */
    pk_progress_fn progress;
    void *ctx;
    double *rec;           /* (P) recorded runs: scratch for the recorded w_{t+1} */
    double *rec_state;     /* (S, P) and its optimiser state                     */
    int started;           /* a step was taken: the next call moves on from it   */
    pk_status s;           /* a failure of the walk itself (a stop)              */
} pk_replay;

/* Start at step `from` (0..T): w_from and the optimiser state from the
 * stored checkpoint at or before it, the steps between replayed. progress
 * (may be NULL) is called after every step; non-zero stops the walk with
 * PK_ERR_STOPPED. Needs the training data (pk_run_train_data). */
pk_status pk_replay_begin(pk_replay *r, pk_run *run, size_t from, pk_progress_fn progress, void *ctx);
/* Move to the next step and take it: 1 when step r->t is ready, 0 at the
 * end of the run or when the walk stopped. */
int pk_replay_next(pk_replay *r);
/* The weights w_t + s (w_{t+1} - w_t) of the step held (w_t itself for s = 0). */
const double *pk_replay_node(pk_replay *r, double s);
/* The same for any step: w + s (w_next - w) into scratch (P), or w for s = 0. */
const double *pk_node_weights(const double *w, const double *w_next, size_t P, double s, double *scratch);
/* Does w equal the run's stored weights of step t bit for bit? PK_ERR_STATE
 * with the reason when not (scratch: P doubles). */
pk_status pk_replay_check(pk_run *run, size_t t, const double *w, double *scratch);
/* The failure of a replay that missed the weights of step t. */
pk_status pk_replay_mismatch(const pk_run *run, size_t t);
/* Free the walk. s: the caller's status. When s is PK_OK and the walk went
 * to the end, checks that it landed on the stored final weights. */
pk_status pk_replay_end(pk_replay *r, pk_status s);
/* w (P) and state (S, P) after step t: the stored checkpoint at or before t,
 * then the recorded steps up to t (with the training data, loaded if needed). */
pk_status pk_replay_load(pk_run *run, size_t t, double *w, double *state);


#endif
