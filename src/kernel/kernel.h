/* kernel.h -- structured kernel products (MATH.md section 4) and the backward sweep of momentum, Adam and weight decay (MATH.md section 5). Not installed. */
#ifndef PK_KERNEL_H
#define PK_KERNEL_H

#include "run/run.h"

/* One side of a structured kernel product (MATH.md section 4): the inputs
 * and output deltas of the layers with parameters (index l: the l-th such
 * layer) for n examples. Each example owns `rows` delta rows of length
 * out_l * fold: rows = C, fold = 1 for per-output deltas (full blocks);
 * rows = 1, fold = C for the same buffer read as one row (trace); rows = 1,
 * fold = 1 for loss-weighted deltas (contributions). */
typedef struct pk_side {
    size_t n, rows, fold;
    int unit;    /* per-output deltas: those of the output layer are e_k */
    int queries; /* the examples are queries (pk_tape.queries): fixed-shape products */
    const double *a[PK_MAX_MODEL_LAYERS];      /* (n, in_l)                */
    const double *delta[PK_MAX_MODEL_LAYERS];  /* (n * rows, out_l * fold) */
    int by_rows; /* leave out the layers a pk_rowsum contracts (their share is its) */
    /* a layer's per-row gradients in place of its deltas, for
     * pk_side_product (both sides or neither; pk_model_output_rows) */
    const double *grow[PK_MAX_MODEL_LAYERS];  /* (n rows, fold n_W)         */
    const double *gbias[PK_MAX_MODEL_LAYERS]; /* (n rows, fold (n_w - n_W)) */
} pk_side;

/* Examples i0 .. i0 + n of side s. */
pk_side pk_side_part(const pk_model *m, const pk_side *s, size_t i0, size_t n);

/* A side's own buffers for up to cap examples (pk_side_form): the
 * per-output deltas of the layers whose products take them, the per-row
 * gradients of those whose products go through them (pk_takes_rows). */
typedef struct pk_side_bufs {
    double *delta[PK_MAX_MODEL_LAYERS]; /* (cap C, out_l), or NULL         */
    double *rows[PK_MAX_MODEL_LAYERS];  /* (cap C, n_w of layer l), or NULL */
} pk_side_bufs;
pk_status pk_side_bufs_new(const pk_model *m, size_t cap, int trace, pk_side_bufs *b);
/* Doubles a pk_side_bufs holds per example. */
size_t pk_side_bufs_values(const pk_model *m, int trace);
void pk_side_bufs_free(const pk_model *m, pk_side_bufs *b);
/* The side (full blocks, or the trace) of the examples on tape t after a
 * forward pass at w: their deltas and rows formed into b
 * (pk_model_output_rows). */
pk_status pk_side_form(const pk_model *m, const double *w, const pk_tape *t, pk_side_bufs *b, int trace,
                       pk_side *s);

/* S = sum over the layers with parameters of their shares of the
 * per-example gradient inner products (pk_layer_ops.gram; for a dense layer
 * (sw^2 A + sb^2) o D with A = a_x a_y^T broadcast over the rows of an
 * example and D = delta_x delta_y^T). Layout of S: pairs = 0: ((x, kx), (y,
 * ky)) with ldy >= y.n examples per row; pairs = 1: (x, y, kx, ky) with ldy
 * >= y.n pairs per x (a block of a larger kernel). A (x.n, y.n) and
 * D (x.n * x.rows, y.n * y.rows) are scratch. */
void pk_side_product(const pk_model *m, const pk_side *x, const pk_side *y, double *S, size_t ldy, int pairs,
                     double *A, double *D);
/* out[j] = <J_j, J'_j> for the n examples the two sides share (the same
 * rows: x.n = y.n, x.rows = y.rows = 1), summed over the layers (their
 * shares, MATH.md section 4). */
void pk_side_diagonal(const pk_model *m, const pk_side *x, const pk_side *y, double *out);

/* A step's contributions through gradient rows (MATH.md section 8, form
 * A), summed over the nodes before they meet the batch: for a layer whose
 * products take per-row gradients (conv2d, where form A is chosen), the
 * rows of a query at its nodes, weighted, add up in parameter space, V_q =
 * sum f V_q(node), and one product a step gives <V_q, U_i> for the batch's
 * rows U_i. A first such layer reads the query itself, so its rows are
 * formed once a step from the summed deltas (V = s_w G^T P is linear in G).
 * Dense layers keep their products at every node (pk_side.by_rows). */
typedef struct pk_rowsum {
    size_t nV;                          /* the values of a row: the layers' parameters side by side */
    size_t voff[PK_MAX_MODEL_LAYERS];   /* layer l's offset in a row; SIZE_MAX: not summed */
    size_t wide, rows, cap, d1;         /* the widest layer's n_w; rows per query; queries; first layer's out */
    int sum1;                           /* the first layer sums its deltas */
    double *V;                          /* (cap rows, nV) the queries' summed rows */
    double *G1;                         /* (cap rows, d1) the first layer's summed deltas */
    double *Vr;                         /* (max(cap rows, B), wide) one layer's rows, scratch */
} pk_rowsum;

/* Does a pk_rowsum of `rows` rows per query sum layer l (the l-th with
 * parameters): a layer with per-row gradients whose products take form A
 * for those rows against one row per example. */
int pk_rowsum_takes(const pk_model *m, size_t l, size_t rows);
/* r for blocks of up to cap queries with `rows` delta rows each (1: one
 * target column; C: every output) and batches of up to B examples; r->nV
 * = 0 and nothing allocated when the model has no such layer. */
pk_status pk_rowsum_init(pk_rowsum *r, const pk_model *m, size_t cap, size_t rows, size_t B);
void pk_rowsum_free(pk_rowsum *r);
/* Values a pk_rowsum of cap queries x rows holds, and the batch's U. */
size_t pk_rowsum_values(const pk_model *m, size_t cap, size_t rows, size_t B);
/* U (s->n, r->nV) = the gradient rows of a side of one row per example
 * (the batch, loss-weighted), s->n <= B. */
pk_status pk_rowsum_batch(pk_rowsum *r, const pk_model *m, const pk_side *s, double *U);
/* Rows x < n of qs (at their nodes, r->rows each) added with weight f[x]
 * to the slot q[x] - q0 < cap of their query. */
pk_status pk_rowsum_add(pk_rowsum *r, const pk_model *m, const pk_side *qs, size_t n, const uint32_t *q, size_t q0,
                        const double *f);
/* The step's share for slots < nq (queries X (nq, n_in)): S (nq rows, nb)
 * = V U^T; then zeroed for the next step. */
pk_status pk_rowsum_close(pk_rowsum *r, const pk_model *m, const double *X, size_t nq, const double *U, size_t nb,
                          double *S);

/* The tangent kernel of any model by pk_side_product, block by block (K
 * (nx, ny, C, C) or (nx, ny), or row segments to sink when K is NULL):
 * what pk_kernel_tangent computes for models that are not multilayer
 * perceptrons; the same sum as its fused path, which tests compare. */
pk_status pk_kernel_tangent_generic(const pk_model *m, const double *w, const double *X, size_t nx, const double *Y,
                                    size_t ny, pk_kmode mode, double *K, pk_kernel_sink sink, void *ctx);

/* A side from a tape after pk_model_output_deltas into `deltas`. */
pk_side pk_side_outputs(const pk_model *m, const pk_tape *t, double *const *deltas, int trace);
/* A side from a tape after pk_model_backward (loss-weighted deltas). */
pk_side pk_side_loss(const pk_model *m, const pk_tape *t);

/* One row of a target (MATH.md section 11): g(f) of the outputs f (C)
 * with the row's targets y, and dg/df into r (C) when r is not NULL. `out`
 * is the output of a PK_TARGET_OUTPUTS row (one column of it). */
double pk_target_row(const pk_target *t, size_t out, pk_loss loss, const double *f, const double *y, size_t C,
                     double *r);
/* After a forward pass at w of the n rows on tape t (rows at weights of
 * their own included, pk_tape_along): the deltas of the target's columns
 * into deltas[l] (n, columns, out_l), caller-allocated as by pk_deltas_new:
 * the per-output deltas for PK_TARGET_OUTPUTS, else one backward pass
 * seeded with dg/df (R: (n, C) scratch; y (n, ty) the rows' targets). */
pk_status pk_target_deltas(const pk_model *m, const double *w, pk_tape *t, const pk_target *g, pk_loss loss,
                           const double *y, double *R, double *const *deltas);
/* The query side of those deltas: pk_side_outputs, one row per query for a
 * target of one column. */
pk_side pk_side_target(const pk_model *m, const pk_tape *t, double *const *deltas, const pk_target *g);

/* pk_run_path_kernel with as many workers (one block pair each) as fit
 * in mem bytes next to its replay, at least one (mem 0: one per thread). */
pk_status pk_path_kernel_mem(pk_run *run, const double *X, size_t nx, const double *Y, size_t ny, pk_kmode mode,
                             const pk_quad *q, pk_progress_fn progress, void *ctx, size_t mem, double *K);
/* Bytes of one worker of the path kernel for nx x ny examples, and the
 * least the whole computation needs (one worker and the replay; K aside). */
size_t pk_path_kernel_worker(const pk_model *m, size_t nx, size_t ny, pk_kmode mode);
size_t pk_path_kernel_min_bytes(const pk_run *run, size_t nx, size_t ny, pk_kmode mode);

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
                              size_t Qb, size_t seg, pk_explain *e, double *pieces);

/* ------------------------------------------------ the exact rule (kinks.c) */

/* The sign changes of the polynomial sum_j c[j] s^j (degree d) in (a, b),
 * ascending, into out (at most d); returns how many (MATH.md section 12). */
size_t pk_poly_sign_changes(const double *c, size_t d, double a, double b, double *out);
/* Gauss-Legendre nodes and weights on [0, 1] (path.c). */
void pk_gauss_legendre(size_t K, double *s, double *c);

/* The evaluations of one step w(s) = w + s D for n examples under a rule:
 * the examples u[0..nu) at the shared nodes (s[j], c[j]), j < k (all of
 * them unless the rule is exact); under the exact rule the examples with
 * kinks in (0, 1) at R nodes of their own, rows (re, rs, rc): example,
 * node, weight (the piece's length times its Gauss-Legendre weight), by
 * example and ascending in s. pieces: the pieces of all n examples. */
typedef struct pk_nodes {
    size_t k;
    double s[PK_PIECE_NODES], c[PK_PIECE_NODES];
    size_t nu, R, pieces;
    uint32_t *u, *re;     /* (nu), (R) */
    double *rs, *rc;      /* (R), (R)  */
    double *ra, *rb;      /* (R), (R): the piece [ra, rb] of the row (k rows a piece) */
    double *wz, *Dz;      /* (P) scratch: w and D without biases */
    size_t cap_u, cap_r, cap_rs, cap_rc, cap_ra, cap_rb;
} pk_nodes;
/* kernel: nodes per piece for a kernel (degree 2L - 2) rather than the
 * contributions (L - 1): pk_quad_piece_nodes. X (n, d). nd zeroed before
 * the first call, freed with pk_nodes_free. */
pk_status pk_nodes_step(pk_nodes *nd, const pk_model *m, const pk_quad *q, int kernel, const double *w,
                        const double *D, const double *X, size_t n);
void pk_nodes_free(pk_nodes *nd);
/* Rows a pass evaluates at once for blocks of Qb queries: Qb, and under the
 * exact rule at least PK_PIECE_ROWS, since its rows at nodes of their own
 * come many a query (cut Qb at a time, a few queries' rows ran in products
 * of a few rows each, padded to a whole row tile, on one thread). A row's
 * values never depend on the rows beside it, nor the sums on the cuts. */
size_t pk_quad_rows(const pk_quad *q, size_t Qb);
/* After pk_nodes_step for the n queries X (n, d) with targets y (n, ty):
 * for a target whose seed jumps along the step (margin: where the largest
 * other output changes, MATH.md section 11), each query's pieces are cut
 * again where it jumps, found by bisection, and a query with a jump gets
 * the rule's nodes on every piece of its own. D: the step (w_next - w);
 * t: a query tape (any capacity) for the forward passes. */
pk_status pk_nodes_target(pk_nodes *nd, const pk_model *m, const pk_target *g, const double *y, size_t ty,
                          const double *w, const double *D, const double *X, size_t n, pk_tape *t);

/* ------------------------------- the exact rule, piece after piece (sweep.c) */

/* The exact rule's contributions for a multilayer perceptron (MATH.md
 * section 12): the first piece of a block of queries by products, then each
 * query's walk along its pieces, changing at each kink what the flip
 * changes. */
typedef struct pk_sweep pk_sweep;
/* Whether it serves: the exact rule, an MLP of relu, leaky_relu or identity
 * with at least two layers, a target linear in the outputs (outputs,
 * output, label), no contribution kernel (batch_kernel). */
int pk_sweep_serves(const pk_model *m, const pk_quad *q, const pk_target *g, int batch_kernel);
/* For blocks of at most cap queries against batches of at most nb; NULL
 * when out of memory. */
pk_sweep *pk_sweep_new(const pk_model *m, const pk_target *g, size_t cap, size_t nb);
size_t pk_sweep_bytes(const pk_model *m, const pk_target *g, size_t cap, size_t nb);
void pk_sweep_free(pk_sweep *sp);
/* S (n, columns, nb) = integral over [0, 1] of <J_{x,k}(w + s D), g_i>
 * for the n queries X (n, d) (targets y (n, ty); or, cls not NULL, the
 * output cls[x] of each, one column) and the batch's examples on the loss
 * side tr (nb of them); *pieces: their pieces, all queries. */
pk_status pk_sweep_step(pk_sweep *sp, const pk_model *m, const double *w, const double *D, const double *X,
                        size_t n, const double *y, size_t ty, const pk_target *g, const size_t *cls,
                        const pk_side *tr, size_t nb, double *S, double *pieces);

#endif
