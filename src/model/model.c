/* model.c -- models as sequences of layers (model.h): the spec, the
 * parameter blocks in one flat vector, and the passes over every layer:
 * forward, backward (loss deltas and the gradient) and the per-output
 * deltas tangent kernels need (MATH.md section 4). What a layer does is its
 * kind's business (dense.c, activation.c). */
#include "model/model.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------- spec */

/* Append a layer of `ops` mapping `in` values to `out`; its parameters, if
 * it has any, take the next n_w of the vector. */
static pk_layer *add_layer(pk_model *m, const pk_layer_ops *ops, size_t in, size_t out, size_t n_w)
{
    pk_layer *l = &m->layer[m->n_layers++];
    memset(l, 0, sizeof *l);
    l->ops = ops;
    l->in = in;
    l->out = out;
    l->n_w = n_w;
    l->w_off = m->n_params;
    if (n_w) m->weight[m->n_weight++] = m->n_layers - 1;
    m->n_params += n_w;
    return l;
}

static pk_status add_dense(pk_model *m, const char *spec, size_t in, size_t out)
{
    size_t wn = out * in;
    if (in && wn / in != out) return pk_fail(PK_ERR_INPUT, "model too large");
    if (m->n_params + wn + out > ((size_t)1 << 34))
        return pk_fail(PK_ERR_INPUT, "model '%s' has more than 2^34 parameters", spec);
    pk_layer *l = add_layer(m, &pk_dense_ops, in, out, wn + out);
    l->b_off = l->w_off + wn;
    l->param = m->param;
    l->sw = m->param == PK_PARAM_NTK ? m->sigma_w / sqrt((double)in) : 1.0;
    l->sb = m->param == PK_PARAM_NTK ? m->sigma_b : 1.0;
    return PK_OK;
}

static void add_act(pk_model *m, pk_act act, size_t d)
{
    pk_layer *l = add_layer(m, &pk_act_ops, d, d, 0);
    l->act = act;
    l->in_place = 1;
}

pk_status pk_model_new(const char *spec, size_t d_in, size_t d_out, pk_param param, double sigma_w, double sigma_b,
                       pk_model **out)
{
    *out = NULL;
    if (!d_in || !d_out) return pk_fail(PK_ERR_INPUT, "model needs at least one input and one output");
    if (param == PK_PARAM_NTK && !(sigma_w > 0 && isfinite(sigma_w) && sigma_b >= 0 && isfinite(sigma_b)))
        return pk_fail(PK_ERR_INPUT, "ntk parameterisation needs sigma_w > 0 and sigma_b >= 0");
    enum { MAX_HIDDEN = 15 };
    size_t hidden[MAX_HIDDEN], nh = 0;
    pk_act act = PK_ACT_IDENTITY;
    if (strcmp(spec, "linear") != 0) {
        if (strncmp(spec, "mlp:", 4) != 0)
            return pk_fail(PK_ERR_INPUT, "model '%s': expected mlp:H1,H2,...:ACT (e.g. mlp:64,64:tanh) or linear", spec);
        const char *p = spec + 4;
        const char *colon = strchr(p, ':');
        if (!colon)
            return pk_fail(PK_ERR_INPUT, "model '%s': missing ':ACT' after the widths (e.g. mlp:64:tanh)", spec);
        while (p < colon) {
            char *end;
            if (*p < '0' || *p > '9')
                return pk_fail(PK_ERR_INPUT, "model '%s': width at offset %zu is not a positive integer", spec, (size_t)(p - spec));
            unsigned long long h = strtoull(p, &end, 10);
            if (h == 0 || h > (1u << 24))
                return pk_fail(PK_ERR_INPUT, "model '%s': width %llu out of range 1..16777216", spec, h);
            if (nh == MAX_HIDDEN)
                return pk_fail(PK_ERR_INPUT, "model '%s': at most %d hidden layers", spec, MAX_HIDDEN);
            hidden[nh++] = (size_t)h;
            p = end;
            if (p < colon) {
                if (*p != ',') return pk_fail(PK_ERR_INPUT, "model '%s': widths must be separated by ','", spec);
                p++;
                if (p == colon) return pk_fail(PK_ERR_INPUT, "model '%s': trailing ',' in the widths", spec);
            }
        }
        pk_status s = pk_act_parse(colon + 1, &act);
        if (s) return pk_fail(s, "model '%s': %s", spec, pk_last_error());
    }
    pk_model *m = pk_calloc(1, sizeof *m);
    if (!m) return PK_ERR_NOMEM;
    m->param = param;
    m->sigma_w = sigma_w;
    m->sigma_b = sigma_b;
    m->act = act;
    m->n_in = d_in;
    m->n_out = d_out;
    size_t d = d_in;
    pk_status s = PK_OK;
    for (size_t i = 0; !s && i < nh; i++) {
        s = add_dense(m, spec, d, hidden[i]);
        if (!s) add_act(m, act, hidden[i]);
        d = hidden[i];
    }
    if (!s) s = add_dense(m, spec, d, d_out);
    if (s) { free(m); return s; }
    *out = m;
    return PK_OK;
}

void pk_model_free(pk_model *m) { free(m); }

size_t pk_model_widths(const pk_model *m)
{
    size_t s = m->n_in;
    for (size_t l = 0; l < m->n_weight; l++) s += pk_model_weight(m, l)->out;
    return s;
}
size_t pk_model_n_params(const pk_model *m) { return m->n_params; }
size_t pk_model_n_layers(const pk_model *m) { return m->n_layers; }
size_t pk_model_n_weight_layers(const pk_model *m) { return m->n_weight; }
size_t pk_model_n_inputs(const pk_model *m) { return m->n_in; }
size_t pk_model_n_outputs(const pk_model *m) { return m->n_out; }
pk_param pk_model_param(const pk_model *m) { return m->param; }
double pk_model_sigma_w(const pk_model *m) { return m->sigma_w; }
double pk_model_sigma_b(const pk_model *m) { return m->sigma_b; }

void pk_model_spec(const pk_model *m, char *buf, size_t len)
{
    if (m->n_layers == 1 && m->act == PK_ACT_IDENTITY) { snprintf(buf, len, "linear"); return; }
    size_t k = (size_t)snprintf(buf, len, "mlp:"), h = 0;
    for (size_t l = 0; l + 1 < m->n_weight && k < len; l++)
        k += (size_t)snprintf(buf + k, len - k, "%s%zu", h++ ? "," : "", pk_model_weight(m, l)->out);
    if (k < len) snprintf(buf + k, len - k, ":%s", pk_act_name(m->act));
}

int pk_model_mlp_act(const pk_model *m)
{
    /* dense, act, dense, act, ..., dense: every activation the same */
    if (!(m->n_layers % 2)) return -1;
    for (size_t k = 0; k < m->n_layers; k++) {
        const pk_layer *l = &m->layer[k];
        if (l->ops != (k % 2 ? &pk_act_ops : &pk_dense_ops)) return -1;
        if (k % 2 && l->act != m->act) return -1;
    }
    return (int)m->act;
}

void pk_model_init(const pk_model *m, uint64_t seed, double *w)
{
    pk_rng r;
    pk_rng_seed(&r, seed);
    for (size_t k = 0; k < m->n_layers; k++)
        if (m->layer[k].ops->init) m->layer[k].ops->init(&m->layer[k], &r, w);
}

/* ------------------------------------------------------------------ tape */

pk_tape *pk_tape_new(const pk_model *m, size_t cap)
{
    pk_tape *t = pk_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->cap = cap;
    for (size_t k = 0; k < m->n_layers; k++) {
        const pk_layer *l = &m->layer[k];
        t->y[k] = pk_alloc(cap, l->out * sizeof(double));
        /* an in-place layer's deltas overwrite its input's */
        t->g[k] = l->in_place && k ? t->g[k - 1] : pk_alloc(cap, l->out * sizeof(double));
        if (!t->y[k] || !t->g[k]) { pk_tape_free(t); return NULL; }
    }
    return t;
}

void pk_tape_free(pk_tape *t)
{
    if (!t) return;
    for (size_t k = 0; k < PK_MAX_MODEL_LAYERS; k++) {
        free(t->y[k]);
        if (!(k && t->g[k] == t->g[k - 1])) free(t->g[k]);
    }
    free(t);
}

/* --------------------------------------------------------------- passes */

static pk_gemm_mode tape_mode(const pk_tape *t) { return t->queries ? PK_GEMM_ROWS : PK_GEMM_SPLIT; }

void pk_model_forward_from(const pk_model *m, const double *w, pk_tape *t, size_t from)
{
    for (size_t k = from; k < m->n_layers; k++)
        m->layer[k].ops->forward(&m->layer[k], w, pk_tape_in(t, k), t->y[k], t->n, tape_mode(t));
}

void pk_model_forward(const pk_model *m, const double *w, const double *x, size_t n, pk_tape *t)
{
    t->n = n;
    t->x = x; /* the input is borrowed, never written */
    pk_model_forward_from(m, w, t, 0);
}

void pk_model_backward(const pk_model *m, const double *w, pk_tape *t, const double *R, double scale, double *grad)
{
    size_t last = m->n_layers - 1, n = t->n;
    memcpy(t->g[last], R, n * m->n_out * sizeof(double));
    for (size_t k = last + 1; k-- > 0;) {
        const pk_layer *l = &m->layer[k];
        if (grad && l->ops->grad) l->ops->grad(l, pk_tape_in(t, k), t->g[k], n, scale, grad + l->w_off);
        if (k > 0) l->ops->backward(l, w, pk_tape_in(t, k), t->y[k], t->g[k], t->g[k - 1], n, 1, tape_mode(t));
    }
}

/* Per-output deltas of examples i0..i0+ne, from the output layer down to
 * the first layer with parameters, each layer's product on the calling
 * thread while the piece's rows are in cache. buf[k]: layer k's output
 * deltas (n C, out_k) or, NULL, the piece's scratch sc[k] (ne C, out_k). */
static void output_deltas_piece(const pk_model *m, const double *w, const pk_tape *t, double *const *buf,
                                double *const *sc, size_t i0, size_t ne)
{
    size_t C = m->n_out, last = m->n_layers - 1, low = m->weight[0];
    pk_gemm_mode mode = t->queries ? PK_GEMM_ROWS : PK_GEMM_ONE;
    #define AT(k) (buf[k] ? buf[k] + i0 * C * m->layer[k].out : sc[k])
    const pk_layer *top = &m->layer[last];
    top->ops->backward_unit(top, w, AT(last - 1), ne); /* d f_c / d (its input): row c of its W */
    for (size_t k = last - 1; k > low; k--) {
        const pk_layer *l = &m->layer[k];
        l->ops->backward(l, w, pk_tape_in(t, k) + i0 * l->in, t->y[k] + i0 * l->out, AT(k), AT(k - 1), ne, C, mode);
    }
    #undef AT
}

pk_status pk_model_output_deltas(const pk_model *m, const double *w, const pk_tape *t, double *const *deltas)
{
    size_t n = t->n, C = m->n_out, last = m->n_layers - 1;
    double *top = deltas[m->n_weight - 1]; /* (n, C, C): d f_k / d z_out = e_k */
    if (top) {
        memset(top, 0, n * C * C * sizeof(double));
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < C; k++) top[(i * C + k) * C + k] = 1.0;
    }
    if (m->n_weight < 2 || !n) return PK_OK;
    /* where each layer's deltas go: a layer with parameters into its
     * deltas[] (or scratch), an in-place one into its input's */
    double *buf[PK_MAX_MODEL_LAYERS] = {0};
    size_t need[PK_MAX_MODEL_LAYERS] = {0}, wi = 0, wmax = 0; /* need: values per row of own scratch */
    for (size_t k = 0; k < last; k++) {
        const pk_layer *l = &m->layer[k];
        int shares = !l->n_w && l->in_place && k;
        if (l->n_w) buf[k] = deltas[wi++];
        else if (shares) buf[k] = buf[k - 1];
        need[k] = !buf[k] && !shares ? l->out : 0;
        wmax = l->out > wmax ? l->out : wmax;
    }
    /* pieces of a fixed number of examples (never of the thread count) */
    size_t E = PK_PIECE_ROWS / C ? PK_PIECE_ROWS / C : 1, pieces = (n + E - 1) / E, sc_len = 0;
    for (size_t k = 0; k < last; k++) sc_len += need[k] ? E * C * need[k] : 0;
    int fail = 0;
    #pragma omp parallel if (pieces > 1 && n * C * wmax >= PK_PAR_MIN)
    {
        double *scratch = sc_len ? pk_alloc(sc_len, sizeof(double)) : NULL, *sc[PK_MAX_MODEL_LAYERS] = {0};
        if (sc_len && !scratch) {
            #pragma omp atomic write
            fail = 1;
        }
        for (size_t k = 0, off = 0; scratch && k < last; k++) {
            if (need[k]) { sc[k] = scratch + off; off += E * C * need[k]; }
            else if (k) sc[k] = sc[k - 1]; /* in place: its input's */
        }
        #pragma omp for schedule(dynamic, 1)
        for (size_t p = 0; p < pieces; p++)
            if (scratch || !sc_len) output_deltas_piece(m, w, t, buf, sc, p * E, n - p * E < E ? n - p * E : E);
        free(scratch);
    }
    return fail ? PK_ERR_NOMEM : PK_OK;
}

pk_status pk_deltas_new(const pk_model *m, size_t cap, double **deltas)
{
    memset(deltas, 0, PK_MAX_MODEL_LAYERS * sizeof *deltas);
    for (size_t l = 0; l < m->n_weight; l++) {
        deltas[l] = pk_alloc(cap * m->n_out, pk_model_weight(m, l)->out * sizeof(double));
        if (!deltas[l]) { pk_deltas_free(m, deltas); return PK_ERR_NOMEM; }
    }
    return PK_OK;
}

void pk_deltas_free(const pk_model *m, double **deltas)
{
    for (size_t l = 0; l < m->n_weight; l++) { free(deltas[l]); deltas[l] = NULL; }
}

pk_status pk_model_predict(const pk_model *m, const double *w, const double *x, size_t n, double *f)
{
    size_t block = n < 1024 ? (n ? n : 1) : 1024, C = m->n_out;
    pk_tape *t = pk_tape_new(m, block);
    if (!t) return PK_ERR_NOMEM;
    t->queries = 1; /* a prediction never depends on the block it is in */
    for (size_t i = 0; i < n; i += block) {
        size_t b = n - i < block ? n - i : block;
        pk_model_forward(m, w, x + i * m->n_in, b, t);
        memcpy(f + i * C, pk_tape_out(m, t), b * C * sizeof(double));
    }
    pk_tape_free(t);
    return PK_OK;
}
