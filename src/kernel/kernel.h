/* kernel.h -- structured kernel products (MATH.md section 4) and the backward sweep of momentum, Adam and weight decay (MATH.md section 5). Not installed. */
#ifndef PK_KERNEL_H
#define PK_KERNEL_H

#include "run/run.h"

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

/* A side from a tape after pk_mlp_output_deltas into `deltas`. */
pk_side pk_side_outputs(const pk_mlp *m, const pk_tape *t, double *const *deltas, int trace);
/* A side from a tape after pk_mlp_backward (loss-weighted deltas). */
pk_side pk_side_loss(const pk_mlp *m, const pk_tape *t);
/* Per-output delta buffers for up to `cap` examples: deltas[l] (cap, C, dims[l+1]). */
pk_status pk_deltas_new(const pk_mlp *m, size_t cap, double **deltas);
void pk_deltas_free(const pk_mlp *m, double **deltas);

/* Whether explain needs backward.c's sweep (momentum, adam, adamw,
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

#endif
