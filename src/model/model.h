/* model.h -- a model is a sequence of layers behind one interface (model.c
 * builds them from a spec; dense.c, activation.c and conv.c the kinds);
 * the passes over all of them (model.c); one gradient evaluation over a batch
 * (stepper.c). Not installed. */
#ifndef PK_MODEL_H
#define PK_MODEL_H

#include "io/io.h"

/* Layers of every kind in one model. */
#define PK_MAX_MODEL_LAYERS 64

/* Spatial layers (conv.c: conv2d, average and max pooling, flatten) see
 * an example's row as (C, H, W) values, NCHW as PyTorch stores them.
 * Residual blocks and dropout (block.c) keep the list flat: every layer
 * reads one slot of the tape (`src`: the input x or an earlier layer's
 * output), a merge layer adds a second (`skip`), and the backward passes
 * send each layer's deltas to the slots it read, summed where a slot has
 * more than one reader (MATH.md section 9). */

typedef struct pk_layer pk_layer;

/* Passes work on rows: an example's values, or for per-output deltas
 * (MATH.md section 4) `per` rows per example, one per output k. */
typedef struct pk_layer_ops {
    const char *kind;
    /* y (n, out) = the layer applied to x (n, in). mode: how its products
     * run (base.h; PK_GEMM_ROWS when the rows are independent queries). */
    void (*forward)(const pk_layer *l, const double *w, const double *x, double *y, size_t n, pk_gemm_mode mode);
    /* gx (n per, in) = dl/dx from gy (n per, out) = dl/dy, with x (n, in)
     * and y (n, out) from the forward pass. gx == gy for a layer that says
     * in_place. */
    void (*backward)(const pk_layer *l, const double *w, const double *x, const double *y, const double *gy,
                     double *gx, size_t n, size_t per, pk_gemm_mode mode);
    /* Layers with parameters: g (n_w) = scale sum_i (d l_i / d theta) from
     * x (n, in) and the loss deltas gy (n, out). */
    void (*grad)(const pk_layer *l, const double *x, const double *gy, size_t n, double scale, double *g);
    /* Layers with parameters: gx (n C, in) = the backward pass of the unit
     * seeds gy = e_k (k < C = out) of every example, without forming them. */
    void (*backward_unit)(const pk_layer *l, const double *w, double *gx, size_t n);
    /* Layers with parameters, their share of the per-example gradient inner
     * products (MATH.md section 4): for examples i of x and j of y, with
     * rows rx and ry of deltas each (read as `fold` rows of out values),
     * S_(i kx),(j ky) += <J_{x_i,kx}, J_{y_j,ky}>_theta. ax (nx, in), dx
     * (nx rx, out fold) and the same for y; A (nx, ny) and D (nx rx, ny ry)
     * are scratch; S at (i, kx, j, ky) is S + sat(i, kx, j). */
    void (*gram)(const pk_layer *l, size_t nx, size_t rx, const double *ax, const double *dx, size_t ny, size_t ry,
                 const double *ay, const double *dy, size_t fold, int unit, pk_gemm_mode mode, double *A,
                 double *D, double *S, size_t ldy, int pairs);
    /* Layers with parameters: out[j] += <J_{x_j}, J_{y_j}>_theta for j < n,
     * the same example on both sides (ax, ay (n, in); dx, dy (n, out fold):
     * fold rows of deltas summed, the trace). */
    void (*gram_diag)(const pk_layer *l, size_t n, size_t fold, const double *ax, const double *dx, const double *ay,
                      const double *dy, double *out);
    /* Layers with parameters that are not dense (the momentum/Adam sweep,
     * kernel/backward.c, contracts dense layers by structure): the
     * gradient of every row of deltas, V (n rows, n_W) for the weights and
     * Vb (n rows, n_w - n_W) for the bias (n_W = b_off - w_off), scales
     * included, from x (n, in) and deltas (n rows, out). Nonzero when out
     * of memory. */
    int (*grad_rows)(const pk_layer *l, size_t n, size_t rows, const double *x, const double *delta, double *V,
                     double *Vb);
    /* Seeded initialisation of the layer's parameters. */
    void (*init)(const pk_layer *l, pk_rng *r, double *w);
} pk_layer_ops;

struct pk_layer {
    const pk_layer_ops *ops;
    size_t in, out;       /* values per example                                */
    size_t w_off, n_w;    /* the parameter block [w_off, w_off + n_w), n_w = 0: none */
    int in_place;         /* backward may write gx over gy                       */
    /* dense: W (out, in) row-major at w_off, c (out) at b_off; z = sw W x + sb c */
    size_t b_off;
    double sw, sb;
    pk_param param;
    /* activations (leaky_relu: its slope for z <= 0) */
    pk_act act;
    double slope;
    /* spatial layers: input (c_in, h_in, w_in), output (c_out, h_out,
     * w_out); conv2d and pooling windows kh x kw, stride, zero padding
     * (conv2d: W (c_out, c_in, kh, kw) at w_off, as nn.Conv2d; then c) */
    size_t c_in, h_in, w_in, c_out, h_out, w_out;
    size_t kh, kw, stride, pad;
    /* the graph (model.c, graph_finish): slots are 0 = the input x, s = the
     * output of layer s - 1 */
    size_t src;           /* the slot it reads (k for a chain)                   */
    size_t skip;          /* add: the slot added to src's values                 */
    int acc, acc_skip;    /* backward adds into src / skip (a later reader wrote it) */
    int shares;           /* its deltas share its input's buffer (in place, sole reader) */
    double p;             /* dropout probability                                 */
};

extern const pk_layer_ops pk_dense_ops, pk_act_ops, pk_conv_ops, pk_avgpool_ops, pk_maxpool_ops, pk_flatten_ops,
    pk_add_ops, pk_dropout_ops;

/* mask (units) = the inverted-dropout mask of one example (block.c, MATH.md
 * section 9): 0 or 1 / (1 - p) per unit, a function of (seed, step,
 * example, layer index, unit) only. */
void pk_dropout_mask(double p, uint64_t seed, uint64_t step, uint64_t example, uint64_t layer, size_t units,
                     double *mask);

struct pk_model {
    size_t n_layers;                      /* layers of every kind               */
    pk_layer layer[PK_MAX_MODEL_LAYERS];
    size_t n_weight;                      /* layers with parameters             */
    size_t weight[PK_MAX_MODEL_LAYERS];   /* their indices in layer[], in order */
    size_t n_in, n_out, n_params;
    pk_param param;
    double sigma_w, sigma_b;
    pk_act act;                           /* the activation an mlp spec named   */
    double act_slope;                     /* its slope, leaky_relu               */
    size_t in_c, in_h, in_w;              /* the input's (C, H, W); (n_in, 1, 1) when flat */
    int layered;                          /* built from a layer sequence, not mlp:/linear */
    int graph;                            /* has residual blocks or dropout: spec kept in text */
    char text[1024];                      /* the spec as given, when graph   */
};

/* n_in plus the outputs of every layer with parameters: the values a tape
 * keeps per example and kind (memory plans). */
size_t pk_model_widths(const pk_model *m);
/* The l-th layer with parameters. */
static inline const pk_layer *pk_model_weight(const pk_model *m, size_t l) { return &m->layer[m->weight[l]]; }
/* A multilayer perceptron's activation: dense layers with one activation
 * between each two, the last dense: the kinds the dense fast paths of the
 * kernel take (tangent.c, ntk.c). PK_ACT_IDENTITY for one dense layer; -1
 * when the model is not such a stack. */
int pk_model_mlp_act(const pk_model *m);

/* Values a forward pass keeps, for backward passes and kernels: layer k's
 * output y[k] (n, out_k) and, after a backward pass, g[k] = dl/dy_k; an
 * in-place layer shares its input's g. Allocated for up to cap examples. */
typedef struct pk_tape {
    size_t cap, n;
    int queries;  /* rows are independent queries: a row's results never depend on the
                     others on the tape (fixed-shape products); 0 for a training batch */
    const double *x;                    /* (n, n_in) the input, borrowed  */
    double *y[PK_MAX_MODEL_LAYERS];
    double *g[PK_MAX_MODEL_LAYERS];
    size_t src[PK_MAX_MODEL_LAYERS];    /* the slot layer k reads (pk_layer.src) */
    double *acc;                        /* (cap, max in) deltas summed into a slot read twice */
    /* dropout: a training batch draws masks (t->train set by the stepper);
     * queries run the network as at test time, without masks */
    int train;
    uint64_t seed, step;                /* the run's seed, the step           */
    const uint32_t *idx;                /* (n) the rows' training examples; NULL: 0..n-1 */
    double *mask[PK_MAX_MODEL_LAYERS];  /* dropout layers: (cap, out) the masks drawn */
    /* rows at weights of their own (the exact rule's nodes, MATH.md section
     * 12): with dir set, row i runs at w + at[i] dir, every layer with
     * parameters as F_w + at[i] F_dir (each is linear in its parameters) */
    const double *dir;                  /* (P) or NULL                          */
    const double *at;                   /* (n)                                  */
    double *dtmp;                       /* (cap C, widest in or out) scratch of dir */
} pk_tape;

/* Rows of t at w + at[i] dir from now on (dir NULL: all at w); allocates
 * the scratch. */
pk_status pk_tape_along(pk_tape *t, const pk_model *m, const double *dir, const double *at);

pk_tape *pk_tape_new(const pk_model *m, size_t cap);
/* Values a tape keeps per example: every layer's output, and its deltas
 * where they are not shared (memory plans). */
size_t pk_tape_values(const pk_model *m);
void pk_tape_free(pk_tape *t);
/* The input of layer k on the tape (n, in_k). */
static inline const double *pk_tape_in(const pk_tape *t, size_t k) { return t->src[k] ? t->y[t->src[k] - 1] : t->x; }
/* The outputs f (n, C). */
static inline const double *pk_tape_out(const pk_model *m, const pk_tape *t) { return t->y[m->n_layers - 1]; }

/* f = model(x) for n <= cap examples: x (n, n_in); every layer's output on
 * the tape. */
void pk_model_forward(const pk_model *m, const double *w, const double *x, size_t n, pk_tape *t);
/* Layers from..n_layers-1, with the output of layer from-1 (and t->x, t->n)
 * already on the tape. */
void pk_model_forward_from(const pk_model *m, const double *w, pk_tape *t, size_t from);
/* After a forward pass: given R (n, C), the per-example dl/df, fill the
 * tape's g and, if grad is not NULL, set grad (P) = scale sum_i J_i^T R_i
 * (1/|B| for a mean loss). */
void pk_model_backward(const pk_model *m, const double *w, pk_tape *t, const double *R, double scale, double *grad);
/* After a forward pass: the per-output deltas d f_k / d z of every layer
 * with parameters into deltas[l] (n, C, out of the l-th such layer),
 * caller-allocated; a NULL entry is not kept (scratch of a piece of about
 * PK_PIECE_ROWS rows stands in where it is needed; the last layer's are e_k
 * and need none). PK_ERR_NOMEM only when that scratch cannot be had. */
pk_status pk_model_output_deltas(const pk_model *m, const double *w, const pk_tape *t, double *const *deltas);
/* The same, and for a layer l with rows[l] (rows may be NULL; deltas[l]
 * then NULL) its per-output gradient rows instead of its deltas, formed
 * piece by piece (grad_rows): rows[l] holds V (n C, n_W) then Vb (n C, n_w
 * - n_W). */
pk_status pk_model_output_rows(const pk_model *m, const double *w, const pk_tape *t, double *const *deltas,
                               double *const *rows);
/* Per-output delta buffers for up to cap examples: deltas[l] (cap, C, out_l)
 * for every layer with parameters. */
pk_status pk_deltas_new(const pk_model *m, size_t cap, double **deltas);
void pk_deltas_free(const pk_model *m, double **deltas);

/* Does a layer's share of the kernel products (its gram) go through its
 * per-row gradients (grad_rows; form A of MATH.md section 8) for rows rx
 * against ry, fold segments each: a layer with grad_rows unless its gram
 * takes another form for that shape (a conv2d layer's form B, the spatial
 * Gram). By the layer's shape and the rows only. */
int pk_takes_rows(const pk_layer *l, size_t rx, size_t ry, size_t fold);
/* S += V_x V_y^T + Vb_x Vb_y^T: a layer's share of the kernel products
 * from per-row gradients (form A), V (n rows, nW) and Vb (n rows, nb) a
 * side as grad_rows writes them (with fold segments a row: nW and nb fold
 * times the layer's); S in pk_layer_ops.gram's layout (pairs), D (nx rx,
 * ny ry) scratch when pairs. */
void pk_gram_rows(size_t nx, size_t rx, const double *Vx, const double *Bx, size_t ny, size_t ry, const double *Vy,
                  const double *By, size_t nW, size_t nb, pk_gemm_mode mode, double *D, double *S, size_t ldy,
                  int pairs);

/* out (n, out) = act'(x) for an activation layer, from its input x and
 * output y (n, out each) (activation.c). */
void pk_act_grad(const pk_layer *l, const double *x, const double *y, size_t n, double *out);

/* What one gradient evaluation needs: the model, the loss, the data and the
 * scratch buffers for a batch of up to `cap` examples. run/train.c owns it; the
 * run directory replays steps with it (run/replay.c). */
typedef struct pk_stepper {
    const pk_model *m;
    pk_loss loss;
    const pk_data *data;
    size_t cap;
    pk_tape *tape;
    double *xb;   /* (cap, d)   gathered batch features */
    double *yb;   /* (cap, ty)  gathered batch targets  */
    double *R;    /* (cap, C)   residuals dl/df         */
    const double *y; /* (nb, ty) the last batch's targets (its features: tape->x) */
    uint64_t seed;   /* the run's seed: dropout masks                   */
    size_t step;     /* the step pk_stepper_grad evaluates (masks); pk_stepper_step sets it */
} pk_stepper;

/* seed: the run's (dropout masks are drawn from it, the step and the example). */
pk_status pk_stepper_init(pk_stepper *s, const pk_model *m, pk_loss loss, const pk_data *data, size_t cap,
                          uint64_t seed);
void pk_stepper_free(pk_stepper *s);
/* Gather buffers for batches of any examples in any order, repeats included
 * (a recorded run's): pk_stepper_init allocates them only when cap < n,
 * where a batch of n examples is always 0..n-1 in order. */
pk_status pk_stepper_gather(pk_stepper *s);
/* Batch gradient G (P) of the mean loss over the examples idx[0..nb) at w,
 * with the dropout masks of step s->step; idx == NULL means all examples in
 * order. Returns the batch loss. */
double pk_stepper_grad(pk_stepper *s, const double *w, const uint32_t *idx, size_t nb, double *G);
/* The batch loss alone (a forward pass, no gradient), as pk_stepper_grad
 * returns it. */
double pk_stepper_loss(pk_stepper *s, const double *w, const uint32_t *idx, size_t nb);
/* Step t as training takes it: G at w as pk_stepper_grad, then the
 * optimiser's update w += D_t with its state (S, P) updated. Returns the
 * batch loss. */
double pk_stepper_step(pk_stepper *s, const pk_optim *o, size_t t, double lr, const uint32_t *idx, size_t nb,
                       double *w, double *state, double *G);

/* The defaults of pk_train_opts_defaults().optim (optim.c). */
pk_optim pk_optim_defaults(void);
/* The optimiser's hyperparameters are usable (lr > 0, weight decay >= 0,
 * momentum in [0, 1), Adam's betas in [0, 1) and eps > 0): PK_ERR_INPUT
 * naming the field otherwise. The batch is the caller's to check. */
pk_status pk_optim_check(const pk_optim *o);
/* Optimiser state vectors per parameter (momentum: 1, adam/adamw: 2, else 0). */
size_t pk_optim_state_len(const pk_optim *o);
/* Learning rate at step t of T. */
double pk_optim_lr(const pk_optim *o, size_t t, size_t T);
/* One update at step t (0-based) with batch gradient G (P):
 * w += D_t, state updated; D (P) receives the step if not NULL. */
void pk_optim_step(const pk_optim *o, size_t t, double lr, size_t P, double *w,
                   double *state, const double *G, double *D);

#endif
